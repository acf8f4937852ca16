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

/// An EndpointSlice `name` of Service `service` in `default` (port `http` 8080) with
/// `endpoints` (YAML flow items), ending its document.
pub(crate) fn endpoint_slice(name: &str, service: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{endpoints}]\n---\n"
    )
}
