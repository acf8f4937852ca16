//! Configuration from manifest text, for tests that drive meshd's library directly.

#![allow(dead_code)]

use meshd::model::diagnostic::Origin;
use meshd::model::object::Object;
use meshd::model::snapshot::{ConfigSet, Snapshot};
use meshd::sources::yaml::parse_documents;

/// The objects of `text` (multi-document YAML). Panics on a document meshd refuses, so
/// a test never runs on less configuration than it wrote.
pub fn config_set(text: &str) -> ConfigSet {
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

/// A snapshot of `text` with the usual domain and istio namespace.
pub fn snapshot(text: &str) -> Snapshot {
    Snapshot::build(&config_set(text), None, "cluster.local", "istio-system")
}
