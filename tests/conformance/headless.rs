//! Headless Services (StatefulSets) through a real sidecar with iptables-style
//! interception, under REGISTRY_ONLY: a pod addressed by its own name reaches exactly
//! that pod, TCP to a pod reaches it, and an address outside the registry on the same
//! port is refused.

use std::time::Duration;

use crate::harness::*;
use crate::scripted::{Dual, raw_line};

const REGISTRY_ONLY: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#;

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}, {name: tcp, port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: default, labels: {app: web}}
spec: {hostname: web-0, subdomain: web, containers: [{name: web, image: web}]}
status: {phase: Running, podIP: 127.0.0.30}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: default, labels: {app: web}}
spec: {hostname: web-1, subdomain: web, containers: [{name: web, image: web}]}
status: {phase: Running, podIP: 127.0.0.31}
"#;

#[test]
fn headless_pods_by_name_and_registry_only_on_their_ports() {
    let Some((dir, config)) = intercepting_test("headless") else {
        return;
    };
    config.write("mesh.yaml", REGISTRY_ONLY);
    config.write("web.yaml", WEB);
    let _apps = [
        Dual::start("web-0", "127.0.0.30:8080"),
        Dual::start("web-1", "127.0.0.31:8080"),
        Dual::start("web-0", "127.0.0.30:9000"),
        Dual::start("web-1", "127.0.0.31:9000"),
        // Not in the registry.
        Dual::start("stranger", "127.0.0.29:9000"),
    ];
    let _meshd = Meshd::start(config.path(), dir.path(), &[]);
    let client = intercepted_sidecar(&dir, "127.0.0.40", "sleep", &[("app", "sleep")]);
    intercept_outbound("127.0.0.24/29");
    let by_name = |ip: &str, pod: &str| {
        http_get(
            &format!("{ip}:8080"),
            "/",
            &[("Host", &format!("{pod}.web.default.svc.cluster.local"))],
        )
        .map(|r| (r.status, r.body))
        .map_err(|e| e.to_string())
    };
    wait_for("web-1 by its name", Duration::from_secs(20), || {
        by_name("127.0.0.31", "web-1")
            .ok()
            .filter(|(s, _)| *s == 200)
    });
    for _ in 0..10 {
        assert_eq!(by_name("127.0.0.31", "web-1"), Ok((200, "web-1".into())));
        assert_eq!(by_name("127.0.0.30", "web-0"), Ok((200, "web-0".into())));
    }
    // TCP to each pod reaches that pod.
    assert_eq!(raw_line("127.0.0.30:9000", "a").as_deref(), Ok("web-0: a"));
    assert_eq!(raw_line("127.0.0.31:9000", "b").as_deref(), Ok("web-1: b"));
    // An address outside the registry on the same port: refused (REGISTRY_ONLY).
    for _ in 0..5 {
        let r = raw_line("127.0.0.29:9000", "c");
        assert!(r.is_err(), "an unknown destination is refused: {r:?}");
    }
    assert_envoy_accepted(&client);
}

const SHARED: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  selector: {app: db}
  ports: [{name: tcp, port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: default, labels: {app: db}}
spec: {containers: [{name: db, image: db}]}
status: {phase: Running, podIP: 127.0.0.30}
"#;

/// A Service without a cluster IP shares `0.0.0.0_PORT`: under REGISTRY_ONLY a
/// connection on that port to an address outside the registry goes to the service, as
/// istiod routes it, never out to the unknown address.
#[test]
fn registry_only_keeps_unknown_destinations_off_shared_ports() {
    let Some((dir, config)) = intercepting_test("shared-port") else {
        return;
    };
    config.write("mesh.yaml", REGISTRY_ONLY);
    config.write("db.yaml", SHARED);
    let _apps = [
        Dual::start("db", "127.0.0.30:9000"),
        Dual::start("stranger", "127.0.0.29:9000"),
    ];
    let _meshd = Meshd::start(config.path(), dir.path(), &[]);
    let client = intercepted_sidecar(&dir, "127.0.0.40", "sleep", &[("app", "sleep")]);
    intercept_outbound("127.0.0.24/29");
    wait_for("db through the sidecar", Duration::from_secs(20), || {
        raw_line("127.0.0.30:9000", "x").ok()
    });
    for _ in 0..5 {
        let r = raw_line("127.0.0.29:9000", "hello");
        assert!(
            !matches!(&r, Ok(a) if a.starts_with("stranger")),
            "REGISTRY_ONLY: nothing reaches an address outside the registry: {r:?}"
        );
        // It goes where istiod sends it: the port's TCP service.
        assert_eq!(r.as_deref(), Ok("db: hello"), "the shared port's service");
    }
    assert_envoy_accepted(&client);
}
