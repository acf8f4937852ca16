//! istio.io task "Mutual TLS Migration" (docs/tasks/security/authentication/mtls-migration):
//! `httpbin` and `sleep` with sidecars in namespaces `foo` and `bar`, and `sleep` without a
//! sidecar in `legacy`. With no PeerAuthentication (PERMISSIVE) all six client/server pairs
//! get 200, sidecar to sidecar over mTLS; a namespace-wide STRICT policy in `foo` refuses
//! only the legacy client's requests to `httpbin.foo` (curl's `000`); a mesh-wide STRICT
//! policy in the root namespace refuses the legacy client everywhere, while both sidecar
//! clients keep getting 200; removing both policies lets it back in.

use std::time::Duration;

use crate::harness::*;
use crate::secure_mesh::*;

const HTTPBIN_BAR: Workload = Workload {
    pod: "httpbin-bar",
    namespace: "bar",
    ip: "127.0.0.22",
    ..HTTPBIN_FOO
};

/// The task's PeerAuthentication `default` (namespace `foo`, then `istio-system`).
fn strict(ns: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: {ns}\nspec:\n  mtls:\n    mode: STRICT\n"
    )
}

fn server(to: &str) -> &'static Workload {
    match to {
        "foo" => &HTTPBIN_FOO,
        _ => &HTTPBIN_BAR,
    }
}

/// `curl http://httpbin.TO:8000/ip` from `sleep` in `from`. The sidecar clients send it
/// to their sidecar's egress listener; the legacy client has no sidecar, so it reaches the
/// pod's port in plaintext, as kube-proxy delivers it.
fn curl(from: &str, to: &str) -> std::io::Result<HttpResponse> {
    let host = format!("httpbin.{to}:8000");
    let addr = match from {
        "foo" => egress_addr(SLEEP_FOO.ip, 8000),
        "bar" => egress_addr(SLEEP_BAR.ip, 8000),
        _ => format!("{}:8080", server(to).ip),
    };
    request(&addr, "GET", "/ip", &[("Host", &host)])
}

/// The task's loop: `sleep.FROM to httpbin.TO: CODE` for every pair.
fn matrix() -> Vec<String> {
    let mut out = Vec::new();
    for from in ["foo", "bar", "legacy"] {
        for to in ["foo", "bar"] {
            out.push(format!(
                "sleep.{from} to httpbin.{to}: {:03}",
                status(curl(from, to))
            ));
        }
    }
    out
}

fn expected(legacy_foo: u16, legacy_bar: u16) -> Vec<String> {
    [
        "sleep.foo to httpbin.foo: 200".to_string(),
        "sleep.foo to httpbin.bar: 200".to_string(),
        "sleep.bar to httpbin.foo: 200".to_string(),
        "sleep.bar to httpbin.bar: 200".to_string(),
        format!("sleep.legacy to httpbin.foo: {legacy_foo:03}"),
        format!("sleep.legacy to httpbin.bar: {legacy_bar:03}"),
    ]
    .to_vec()
}

/// The client certificate the application behind the server's sidecar was told about.
fn client_cert(r: &HttpResponse) -> String {
    r.headers
        .iter()
        .find(|(k, _)| k == "x-seen-x-forwarded-client-cert")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The sidecar clients' requests crossed mTLS with their own identity; none from legacy.
fn assert_identities() {
    for (from, client) in [("foo", &SLEEP_FOO), ("bar", &SLEEP_BAR)] {
        for to in ["foo", "bar"] {
            let r = curl(from, to).expect("an answer");
            assert_eq!(r.body, format!("httpbin.{to}"), "served by httpbin.{to}");
            let xfcc = client_cert(&r);
            assert!(
                xfcc.contains(&format!("URI={}", client.spiffe_id())),
                "sleep.{from} to httpbin.{to} carried its identity over mTLS: {xfcc:?}"
            );
        }
    }
}

#[test]
fn mutual_tls_migration() {
    let services = format!("{}---\n{}", httpbin_service("foo"), httpbin_service("bar"));
    let Some(mesh) = Mesh::start(
        "mtls-migration",
        &[&HTTPBIN_FOO, &HTTPBIN_BAR, &SLEEP_FOO, &SLEEP_BAR],
        &[("httpbin.yaml", &services)],
        false,
    ) else {
        return;
    };
    // httpbin in foo and bar: each answers with its name and the headers it got.
    let (foo, bar) = (app_ip(HTTPBIN_FOO.ip), app_ip(HTTPBIN_BAR.ip));
    let _apps = Backends::start(&[("httpbin.foo", &foo), ("httpbin.bar", &bar)], 8080);

    // Set up the cluster: no PeerAuthentication, every pair gets 200.
    wait_for("every pair answered", Duration::from_secs(20), || {
        (matrix() == expected(200, 200)).then_some(())
    });
    assert_eq!(matrix(), expected(200, 200));
    // Sidecar to sidecar is mTLS already (auto mTLS); the legacy client is plaintext.
    assert_identities();
    let r = curl("legacy", "foo").expect("an answer");
    assert_eq!(client_cert(&r), "", "the legacy client has no certificate");

    // Lock down to mutual TLS by namespace: STRICT in foo.
    mesh.config
        .write("peer-authentication-foo.yaml", &strict("foo"));
    wait_for(
        "httpbin.foo to refuse plaintext",
        Duration::from_secs(20),
        || (status(curl("legacy", "foo")) == 0).then_some(()),
    );
    assert_eq!(matrix(), expected(0, 200));
    // Not an HTTP refusal: the connection is closed without an answer, every time.
    for _ in 0..10 {
        let r = curl("legacy", "foo");
        assert!(r.is_err(), "a plaintext request got through: {r:?}");
    }
    assert_identities();

    // Lock down mutual TLS for the entire mesh: STRICT in the root namespace.
    mesh.config
        .write("peer-authentication-mesh.yaml", &strict("istio-system"));
    wait_for(
        "httpbin.bar to refuse plaintext",
        Duration::from_secs(20),
        || (status(curl("legacy", "bar")) == 0).then_some(()),
    );
    assert_eq!(matrix(), expected(0, 0));
    assert_identities();

    // Clean up the example: without the policies the legacy client is served again.
    for f in [
        "peer-authentication-foo.yaml",
        "peer-authentication-mesh.yaml",
    ] {
        std::fs::remove_file(mesh.config.path().join(f)).expect("remove");
    }
    wait_for("plaintext accepted again", Duration::from_secs(20), || {
        (matrix() == expected(200, 200)).then_some(())
    });
    mesh.assert_accepted();
}
