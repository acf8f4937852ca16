//! Not an istio.io task, but what one takes for granted: a rollout that changes a
//! service's service account. Clients verify a service's pods over mTLS by the
//! identities its endpoints run as (auto mTLS); when the new pods run as a new account,
//! the clients' clusters must learn it, not only the new endpoints, or every request to
//! the new pods fails the certificate check (503).

use std::time::Duration;

use crate::harness::*;
use crate::secure_mesh::*;

/// httpbin's next version, under a service account of its own.
const HTTPBIN_V2: Workload = Workload {
    pod: "httpbin-foo-v2",
    ip: "127.0.0.23",
    labels: &[("app", "httpbin"), ("version", "v2")],
    service_account: "httpbin-v2",
    ..HTTPBIN_FOO
};

/// From `sleep` in `bar`, another namespace than httpbin's: a pod change in `foo` alone
/// does not make its proxy start over, so only what the change means for httpbin
/// reaches it.
fn curl() -> std::io::Result<HttpResponse> {
    request(
        &egress_addr(SLEEP_BAR.ip, 8000),
        "GET",
        "/ip",
        &[("Host", "httpbin.foo:8000")],
    )
}

fn pods(list: &[&Workload]) -> String {
    list.iter()
        .map(|w| w.pod_yaml())
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn a_new_service_account_reaches_the_clients_clusters() {
    let Some(mesh) = Mesh::start(
        "sa-rollout",
        &[&HTTPBIN_FOO, &SLEEP_BAR],
        &[
            ("httpbin.yaml", &httpbin_service("foo")),
            // The new version's Sidecar is there from the start; its pod is not.
            ("sidecar-v2.yaml", &HTTPBIN_V2.sidecar_yaml()),
        ],
        false,
    ) else {
        return;
    };
    let (v1, v2) = (app_ip(HTTPBIN_FOO.ip), app_ip(HTTPBIN_V2.ip));
    let _apps = Backends::start(&[("httpbin-v1", &v1), ("httpbin-v2", &v2)], 8080);
    let body = || curl().ok().filter(|r| r.status == 200).map(|r| r.body);
    wait_for("httpbin v1 answered", Duration::from_secs(20), || {
        body().filter(|b| b == "httpbin-v1")
    });

    // The new version's proxy starts, with its certificate for the new account.
    let labels = HTTPBIN_V2.pod_labels();
    let root = mesh.dir.path().join("ca/root-cert.pem");
    let _v2 = Envoy::start_with(
        &NodeSpec {
            kind: "sidecar",
            ip: HTTPBIN_V2.ip,
            pod: HTTPBIN_V2.pod,
            namespace: HTTPBIN_V2.namespace,
            labels: &labels,
            service_account: HTTPBIN_V2.service_account,
        },
        &EnvoyOpts {
            admin_port: 15900,
            interception: "NONE",
            xds: Xds::Tls {
                root,
                token: mesh.issuer.token(
                    HTTPBIN_V2.namespace,
                    HTTPBIN_V2.service_account,
                    "istio-ca",
                    3600,
                    "k1",
                ),
            },
            ..Default::default()
        },
        mesh.dir.path(),
    );

    // The rollout: the new pod in, the old one out.
    mesh.config
        .write("pods.yaml", &pods(&[&HTTPBIN_V2, &SLEEP_BAR]));
    wait_for("httpbin v2 answered", Duration::from_secs(20), || {
        body().filter(|b| b == "httpbin-v2")
    });
    // Every request now, none refused by the certificate check.
    let mut ok = 0;
    for _ in 0..20 {
        if body().as_deref() == Some("httpbin-v2") {
            ok += 1;
        }
    }
    assert_eq!(ok, 20, "requests to the new pods over mTLS");
    mesh.assert_accepted();
}
