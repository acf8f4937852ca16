//! Istio's "TCP traffic shifting" task through a real sidecar: a VirtualService `tcp`
//! route sends every connection to v1, then 80/20 between v1 and v2, edited live.

use std::time::Duration;

use crate::harness::*;

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: tcp-echo, namespace: default}
spec:
  selector: {app: tcp-echo}
  ports: [{name: tcp, port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: tcp-echo-v1, namespace: default, labels: {app: tcp-echo, version: v1}}
spec: {containers: [{name: tcp-echo, image: tcp-echo}]}
status: {phase: Running, podIP: 127.0.0.30}
---
apiVersion: v1
kind: Pod
metadata: {name: tcp-echo-v2, namespace: default, labels: {app: tcp-echo, version: v2}}
spec: {containers: [{name: tcp-echo, image: tcp-echo}]}
status: {phase: Running, podIP: 127.0.0.31}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default, labels: {app: sleep}}
spec: {containers: [{name: sleep, image: curl}]}
status: {phase: Running, podIP: 127.0.0.40}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: sleep, namespace: default}
spec:
  workloadSelector: {labels: {app: sleep}}
  egress:
  - port: {number: 9000, protocol: TCP, name: tcp}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: ["./tcp-echo.default.svc.cluster.local"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo, namespace: default}
spec:
  host: tcp-echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

fn virtual_service(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: tcp-echo, namespace: default}}\nspec:\n  hosts: [tcp-echo]\n  tcp:\n  - match: [{{port: 9000}}]\n    route:\n    - destination: {{host: tcp-echo, subset: v1, port: {{number: 9000}}}}\n      weight: {v1}\n    - destination: {{host: tcp-echo, subset: v2, port: {{number: 9000}}}}\n      weight: {v2}\n"
    )
}

#[test]
fn tcp_traffic_shifting() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("tcp");
    let config = TempDir::new("tcp-config");
    config.write("workloads.yaml", WORKLOADS);
    config.write("vs.yaml", &virtual_service(100, 0));
    let _backends = Backends::start(
        &[("tcp-echo-v1", "127.0.0.30"), ("tcp-echo-v2", "127.0.0.31")],
        9000,
    );
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    let envoy = Envoy::start(
        &NodeSpec {
            kind: "sidecar",
            ip: "127.0.0.40",
            pod: "sleep",
            namespace: "default",
            labels: &[("app", "sleep")],
            service_account: "sleep",
        },
        Ads::Delta,
        15000,
        dir.path(),
    );
    wait_for("TCP through the sidecar", Duration::from_secs(20), || {
        http_get("127.0.0.1:9000", "/", &[])
            .ok()
            .filter(|r| r.status == 200)
    });
    let d = tcp_distribution("127.0.0.1:9000", 100);
    assert_eq!(d.get("tcp-echo-v1"), Some(&100), "all to v1: {d:?}");

    config.write("vs.yaml", &virtual_service(80, 20));
    wait_for("v2 gets connections", Duration::from_secs(20), || {
        tcp_distribution("127.0.0.1:9000", 20)
            .contains_key("tcp-echo-v2")
            .then_some(())
    });
    let d = tcp_distribution("127.0.0.1:9000", 400);
    let v1 = d.get("tcp-echo-v1").copied().unwrap_or(0);
    let v2 = d.get("tcp-echo-v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 400, "every connection answered: {d:?}");
    assert!((320 - 40..=320 + 40).contains(&v1), "80% ±10 to v1: {d:?}");
    assert!(
        envoy.stats("update_rejected").iter().all(|(_, v)| *v == 0),
        "{}",
        envoy.proc.log_text()
    );
    drop(meshd);
}

const TLS_EGRESS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: default}
spec:
  hosts: [a.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 8443, name: tls, protocol: TLS}]
  endpoints: [{address: 127.0.1.60}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: default}
spec:
  hosts: [b.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 8443, name: tls, protocol: TLS}]
  endpoints: [{address: 127.0.1.61}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy.example.com]
  tls:
  - match: [{sniHosts: [legacy.example.com], port: 8443}]
    route:
    - destination: {host: b.example.com, port: {number: 8443}}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default, labels: {app: sleep}}
spec: {containers: [{name: sleep, image: curl}]}
status: {phase: Running, podIP: 127.0.0.40}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: sleep, namespace: default}
spec:
  workloadSelector: {labels: {app: sleep}}
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
  egress:
  - port: {number: 8443, protocol: TLS, name: tls}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: ["./*"]
"#;

/// Egress TLS chosen by SNI on one port: each ServiceEntry host reaches its own server
/// with the TLS session untouched, a `tls` route sends another name elsewhere, and an
/// unknown name goes nowhere under REGISTRY_ONLY.
#[test]
fn tls_routes_by_sni_through_a_sidecar() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("sni");
    let config = TempDir::new("sni-config");
    config.write("egress.yaml", TLS_EGRESS);
    let ca = TestCa::new("outside-ca");
    let (a_cert, a_key) = ca.leaf("server-a", &["a.example.com", "unknown.example.com"]);
    let (b_cert, b_key) = ca.leaf("server-b", &["b.example.com", "legacy.example.com"]);
    let _servers = [
        TlsBackend::start("127.0.1.60:8443", &a_cert, &a_key, &ca.pem, false),
        TlsBackend::start("127.0.1.61:8443", &b_cert, &b_key, &ca.pem, false),
    ];
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    let envoy = Envoy::start(
        &NodeSpec {
            kind: "sidecar",
            ip: "127.0.0.40",
            pod: "sleep",
            namespace: "default",
            labels: &[("app", "sleep")],
            service_account: "sleep",
        },
        Ads::Delta,
        15000,
        dir.path(),
    );
    let get = |sni: &str| https_get("127.0.0.1:8443", sni, "/", &ca.pem, None);
    let r = wait_for("TLS through the sidecar", Duration::from_secs(20), || {
        get("a.example.com").ok()
    });
    assert_eq!(
        (r.server_cn.as_str(), r.body.as_str()),
        ("server-a", "sni=a.example.com client=none")
    );
    let r = get("b.example.com").expect("b");
    assert_eq!(
        (r.server_cn.as_str(), r.body.as_str()),
        ("server-b", "sni=b.example.com client=none")
    );
    let r = get("legacy.example.com").expect("legacy");
    assert_eq!(
        (r.server_cn.as_str(), r.body.as_str()),
        ("server-b", "sni=legacy.example.com client=none"),
        "the tls route sends legacy.example.com to b"
    );
    assert!(
        get("unknown.example.com").is_err(),
        "REGISTRY_ONLY: no way out for an unknown name"
    );
    assert!(
        envoy.stats("update_rejected").iter().all(|(_, v)| *v == 0),
        "{}",
        envoy.proc.log_text()
    );
    drop(meshd);
}

const EXTERNAL_NAME: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  type: ExternalName
  externalName: localhost
  ports: [{name: http, port: 9500}]
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default, labels: {app: sleep}}
spec: {containers: [{name: sleep, image: curl}]}
status: {phase: Running, podIP: 127.0.0.40}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: sleep, namespace: default}
spec:
  workloadSelector: {labels: {app: sleep}}
  egress:
  - port: {number: 9500, protocol: HTTP, name: http}
    bind: 127.0.0.2
    captureMode: NONE
    hosts: ["./*"]
"#;

/// A Kubernetes ExternalName Service: the sidecar resolves the external name itself
/// (STRICT_DNS) and routes `ext` there.
#[test]
fn external_name_service_is_resolved_by_the_proxy() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("extname");
    let config = TempDir::new("extname-config");
    config.write("ext.yaml", EXTERNAL_NAME);
    let _backend = Backends::start(&[("external-backend", "127.0.0.1")], 9500);
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    let envoy = Envoy::start(
        &NodeSpec {
            kind: "sidecar",
            ip: "127.0.0.40",
            pod: "sleep",
            namespace: "default",
            labels: &[("app", "sleep")],
            service_account: "sleep",
        },
        Ads::Delta,
        15000,
        dir.path(),
    );
    let r = wait_for("the external name", Duration::from_secs(20), || {
        http_get("127.0.0.2:9500", "/", &[("Host", "ext")])
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(r.body, "external-backend");
    let r = http_get(
        "127.0.0.2:9500",
        "/",
        &[("Host", "ext.default.svc.cluster.local:9500")],
    )
    .expect("answer");
    assert_eq!((r.status, r.body.as_str()), (200, "external-backend"));
    assert!(
        envoy.stats("update_rejected").iter().all(|(_, v)| *v == 0),
        "{}",
        envoy.proc.log_text()
    );
    drop(meshd);
}
