//! Manifests as the file source reads them: YAML documents → objects (with their
//! diagnostics) → a snapshot → everything a sidecar and a gateway are sent.
//!
//! Beyond not crashing, it checks that a build which keeps stages from the previous
//! snapshot generates exactly what a build from scratch does, and that nothing generated
//! breaks Envoy's validation rules (which would have Envoy reject the update).

use std::collections::BTreeMap;

use crate::envoy::{pb, rules};
use crate::model::diagnostic::Origin;
use crate::model::object::Object;
use crate::model::proxy::Proxy;
use crate::model::snapshot::{ConfigSet, Snapshot};
use crate::sources::yaml::parse_documents;
use envoy_types::pb::google::protobuf as gpb;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut set = ConfigSet::default();
    for doc in parse_documents(text).into_iter().flatten() {
        let (objs, _diags) = Object::from_value(doc.value, doc.lines, Origin::default(), "default");
        for o in objs {
            set.objects.insert(o.key.clone(), o);
        }
    }
    let first = Snapshot::build(&set, None, "cluster.local", "istio-system");
    let again = Snapshot::build(&set, Some(&first), "cluster.local", "istio-system");
    for proxy in proxies() {
        let a = encoded(&first, &proxy);
        let b = encoded(&again, &proxy);
        for (type_name, bytes) in &a {
            let broken = rules::check_bytes(type_name, bytes, rules::Scope::Whole);
            assert!(
                broken.is_empty(),
                "meshd generated a {type_name} that Envoy would reject: {}",
                broken[0]
            );
        }
        assert!(
            a == b,
            "a build keeping stages generated other resources than one from scratch for {}",
            proxy.id
        );
    }
}

/// A sidecar of `reviews` in `default` and an ingress gateway in `istio-system`.
fn proxies() -> Vec<Proxy> {
    let node = |id: &str, meta: serde_json::Value| {
        let meta: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(meta).unwrap_or_default();
        Proxy::from_node(id, meta).ok()
    };
    [
        node(
            "sidecar~10.0.0.1~reviews-v1.default~default.svc.cluster.local",
            serde_json::json!({"NAMESPACE": "default", "LABELS": {"app": "reviews", "version": "v1"}}),
        ),
        node(
            "router~10.0.0.9~ingressgateway.istio-system~istio-system.svc.cluster.local",
            serde_json::json!({"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}}),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Every generated resource as meshd sends it (canonical bytes, which its versions
/// hash), in order.
fn encoded(snap: &Snapshot, proxy: &Proxy) -> Vec<(String, Vec<u8>)> {
    let r = crate::translate::generate(snap, proxy);
    let mut out: Vec<gpb::Any> = Vec::new();
    out.extend(r.clusters.into_iter().map(pb::cluster_resource));
    out.extend(r.endpoints.iter().map(pb::resource));
    out.extend(r.listeners.iter().map(pb::resource));
    out.extend(r.routes.iter().map(pb::resource));
    out.into_iter()
        .map(|a| {
            let name = a
                .type_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            (name, a.value)
        })
        .collect()
}
