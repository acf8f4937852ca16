//! WorkloadEntries (VMs) as endpoints, through a real sidecar: selected by a Kubernetes
//! Service (next to its Pods, even when the Service's endpoints are listed by hand, as
//! EndpointSlices always are in a cluster) and by a ServiceEntry's workloadSelector, on
//! the port the entry names.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::*;

const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews}}
spec: {containers: [{name: reviews, image: reviews}]}
status: {phase: Running, podIP: 127.0.0.51}
---
apiVersion: v1
kind: Endpoints
metadata: {name: reviews, namespace: default}
subsets:
- addresses: [{ip: 127.0.0.51, targetRef: {kind: Pod, name: reviews-v1}}]
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-vm, namespace: default}
spec:
  address: 127.0.0.52
  labels: {app: reviews}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy.example.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: legacy}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: legacy-1, namespace: default}
spec:
  address: 127.0.0.53
  labels: {app: legacy}
  ports: {http: 9081}
"#;

fn answers(host: &str, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let key = match http_get("127.0.0.1:9080", "/", &[("Host", host)]) {
            Ok(r) if r.status == 200 => r.body,
            Ok(r) => format!("status {}", r.status),
            Err(e) => format!("error {e}"),
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

#[test]
fn workload_entries_are_endpoints_of_services_and_service_entries() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("workload-entries");
    let config = TempDir::new("workload-entries-config");
    config.write("config.yaml", CONFIG);
    config.write(
        "sleep.yaml",
        &crate::scripted::sleep("", 9080, "HTTP", "127.0.0.1", "*/*", ""),
    );
    let _pods = Backends::start(
        &[("reviews-v1", "127.0.0.51"), ("reviews-vm", "127.0.0.52")],
        9080,
    );
    let _vm = Backends::start(&[("legacy-1", "127.0.0.53")], 9081);
    let _meshd = Meshd::start(config.path(), dir.path(), &[]);
    let client = crate::scripted::start_sleep(&dir, &[("app", "sleep")]);
    wait_for(
        "the VM behind the ServiceEntry",
        Duration::from_secs(20),
        || (answers("legacy.example.internal", 1).get("legacy-1") == Some(&1)).then_some(()),
    );
    let legacy = answers("legacy.example.internal", 10);
    assert_eq!(
        legacy.get("legacy-1"),
        Some(&10),
        "the ServiceEntry's WorkloadEntry on its named port 9081: {legacy:?}"
    );
    let reviews = answers("reviews.default.svc.cluster.local", 60);
    assert_eq!(
        reviews.values().sum::<usize>(),
        reviews.get("reviews-v1").copied().unwrap_or(0)
            + reviews.get("reviews-vm").copied().unwrap_or(0),
        "every request answered by the pod or the VM: {reviews:?}"
    );
    assert!(
        reviews.get("reviews-vm").copied().unwrap_or(0) >= 10
            && reviews.get("reviews-v1").copied().unwrap_or(0) >= 10,
        "the Service balances over its Pod and its WorkloadEntry: {reviews:?}"
    );
    assert_envoy_accepted(&client);
}
