//! Ports no Service declares, through a real sidecar with istio-iptables-style
//! interception (nftables in the test's namespace): the application still gets the
//! connection, but mTLS mode and AuthorizationPolicy apply there as on every declared
//! port — a plaintext client cannot reach around STRICT or a deny-all policy.

use std::time::Duration;

use crate::harness::*;

const WORKLOAD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: web, containers: [{name: web, image: web}]}
status: {phase: Running, podIP: 127.0.0.20}
"#;

const POD: &str = "127.0.0.20";

/// A plaintext GET to the pod on `port` from outside the mesh: the body, or why not.
fn plaintext(port: u16) -> Result<String, String> {
    match http_get(&format!("{POD}:{port}"), "/", &[("Host", "web")]) {
        Ok(r) if r.status == 200 => Ok(r.body),
        Ok(r) => Err(format!("status {}", r.status)),
        Err(e) => Err(e.to_string()),
    }
}

// Fields drop in order: processes first, then their folders.
struct Pod {
    envoy: Envoy,
    _meshd: Meshd,
    _apps: Backends,
    config: TempDir,
    _dir: TempDir,
}

impl Pod {
    fn start() -> Option<Pod> {
        let (dir, config) = intercepting_test("passthrough")?;
        config.write("workload.yaml", WORKLOAD);
        // The application on a port its Service does not declare.
        let apps = Backends::start(&[("web-app", POD)], 7070);
        let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 8080);
        let envoy = Envoy::start_with(
            &NodeSpec {
                kind: "sidecar",
                ip: POD,
                pod: "web",
                namespace: "default",
                labels: &[("app", "web"), ("security.istio.io/tlsMode", "istio")],
                service_account: "web",
            },
            &EnvoyOpts {
                xds: Xds::Tls {
                    root: dir.path().join("ca/root-cert.pem"),
                    token: issuer.token("default", "web", "istio-ca", 3600, "k1"),
                },
                gid: Some(PROXY_GID),
                ..Default::default()
            },
            dir.path(),
        );
        intercept_inbound(POD);
        Some(Pod {
            envoy,
            _meshd: meshd,
            _apps: apps,
            config,
            _dir: dir,
        })
    }

    fn assert_accepted(&self) {
        let bad: Vec<_> = self
            .envoy
            .stats("update_rejected")
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect();
        assert!(bad.is_empty(), "Envoy rejected config: {bad:?}");
    }
}

/// Waits until plaintext to `port` is refused, then checks it stays refused.
fn assert_refused(port: u16, why: &str) {
    wait_for(why, Duration::from_secs(20), || plaintext(port).err());
    for _ in 0..10 {
        let r = plaintext(port);
        assert!(r.is_err(), "{why}: a plaintext request got through: {r:?}");
    }
}

#[test]
fn undeclared_ports_follow_authorization_policy() {
    let Some(pod) = Pod::start() else {
        return;
    };
    // PERMISSIVE and no policy: the undeclared port passes through to the application
    // (the interception works).
    let body = wait_for("passthrough to 7070", Duration::from_secs(20), || {
        plaintext(7070).ok()
    });
    assert_eq!(body, "web-app");
    // A policy that allows nothing covers every port of the workload.
    pod.config.write(
        "deny.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: default}\nspec:\n  selector: {matchLabels: {app: web}}\n",
    );
    assert_refused(7070, "allow-nothing refuses the undeclared port");
    pod.assert_accepted();
}

#[test]
fn strict_mtls_covers_undeclared_ports() {
    let Some(pod) = Pod::start() else {
        return;
    };
    wait_for("passthrough to 7070", Duration::from_secs(20), || {
        plaintext(7070).ok()
    });
    pod.config.write(
        "strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n",
    );
    assert_refused(7070, "STRICT refuses plaintext on an undeclared port");
    pod.assert_accepted();
}
