//! Manifests as the file source reads them: YAML documents → objects (with their
//! diagnostics) → a snapshot → everything a sidecar and a gateway are sent.
//!
//! Beyond not crashing, it checks that a build which keeps stages from the previous
//! snapshot generates exactly what a build from scratch does, and that nothing generated
//! breaks Envoy's validation rules (which would have Envoy reject the update).

use super::{config_set, encoded, proxies};
use crate::envoy::rules;
use crate::model::snapshot::Snapshot;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let set = config_set(&[text]);
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
