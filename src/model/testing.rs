//! Helpers for the crate's unit tests.

use super::diagnostic::Origin;
use super::object::Object;
use super::snapshot::{ConfigSet, Snapshot};
use crate::sources::yaml::parse_documents;

/// The objects of a YAML text (documents separated by `---`), each of which must be
/// accepted as it is read.
pub(crate) fn config_set(text: &str) -> ConfigSet {
    let mut set = ConfigSet::default();
    for doc in parse_documents(text) {
        let doc = doc.expect("yaml");
        let (objs, diags) = Object::from_value(doc.value, doc.lines, Origin::default(), "default");
        assert!(diags.is_empty(), "{diags:?}");
        for o in objs {
            set.objects.insert(o.key.clone(), o);
        }
    }
    set
}

/// A snapshot of a YAML text ([`config_set`]), built on `previous` if given.
pub(crate) fn snapshot(text: &str, previous: Option<&Snapshot>) -> Snapshot {
    Snapshot::build(&config_set(text), previous, "cluster.local", "istio-system")
}
