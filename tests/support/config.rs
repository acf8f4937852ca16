//! Configuration from manifest text, and what meshd generates from it for a proxy, for
//! tests that drive meshd's library directly.

#![allow(dead_code)]

use meshd::model::diagnostic::Origin;
use meshd::model::object::Object;
use meshd::model::proxy::Proxy;
use meshd::model::snapshot::{ConfigSet, Snapshot};
use meshd::sources::yaml::parse_documents;
use meshd::translate::Resources;

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

/// Everything meshd generates for the proxy with node `id` and `metadata` (as JSON).
pub fn generate(snap: &Snapshot, id: &str, metadata: serde_json::Value) -> Resources {
    let meta = serde_json::from_value(metadata).expect("node metadata");
    let proxy = Proxy::from_node(id, meta).expect("proxy");
    meshd::translate::generate(snap, &proxy)
}

/// A generated cluster by name.
pub fn cluster<'a>(
    r: &'a Resources,
    name: &str,
) -> &'a envoy_types::pb::envoy::config::cluster::v3::Cluster {
    r.clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}
