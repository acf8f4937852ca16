//! Kubernetes mode end to end: meshd watches the API stand-in (no config folder), a real
//! Envoy authenticates on 15012 with a token the API server reviews, gets its certificate
//! over SDS and its routes from objects applied to the "cluster", and follows edits.

use std::time::Duration;

use serde_json::{Value, json};

use crate::apiserver::ApiServer;
use crate::harness::*;

fn yaml_file(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read");
    let mut out = Vec::new();
    for doc in meshd::sources::yaml::parse_documents(&text) {
        let v = doc.expect("YAML").value;
        match v.get("items").and_then(Value::as_array) {
            Some(items) if v["kind"] == "List" => out.extend(items.iter().cloned()),
            _ => out.push(v),
        }
    }
    out
}

const PODS: [(&str, &str); 6] = [
    ("productpage-v1", "127.0.0.10"),
    ("details-v1", "127.0.0.11"),
    ("reviews-v1", "127.0.0.12"),
    ("reviews-v2", "127.0.0.13"),
    ("reviews-v3", "127.0.0.14"),
    ("ratings-v1", "127.0.0.15"),
];

#[test]
fn kubernetes_mode_serves_bookinfo_with_token_review_and_follows_edits() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("kube");
    let api = ApiServer::start("127.0.0.1:6443", Duration::from_secs(1));
    for ns in ["default", "istio-system"] {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    let bookinfo = repo().join("examples/bookinfo");
    for f in [
        "services.yaml",
        "pods.yaml",
        "sidecar-productpage.yaml",
        "destination-rules.yaml",
        "virtual-services.yaml",
        "reviews.yaml",
    ] {
        api.apply_all(yaml_file(&bookinfo.join(f)));
    }
    api.add_token(
        "productpage-token",
        "default",
        "bookinfo-productpage",
        &["istio-ca"],
    );
    let kubeconfig = dir.write("kubeconfig.yaml", &api.kubeconfig());
    let backends = Backends::start(&PODS, 9080);
    let meshd = Meshd::start_kube(&kubeconfig, dir.path(), &["--pod-name", "meshd-0"]);
    let envoy = Envoy::start_with(
        &NodeSpec {
            kind: "sidecar",
            ip: "127.0.0.10",
            pod: "productpage-v1",
            namespace: "default",
            labels: &[("app", "productpage"), ("version", "v1")],
            service_account: "bookinfo-productpage",
        },
        &EnvoyOpts {
            xds: Xds::Tls {
                root: dir.path().join("ca/root-cert.pem"),
                // Not a JWT meshd could check itself: only TokenReview knows it.
                token: "productpage-token".into(),
            },
            ..Default::default()
        },
        dir.path(),
    );
    let get = |host: &str| http_get("127.0.0.1:9080", "/", &[("Host", host)]).ok();
    wait_for(
        "reviews through the sidecar",
        Duration::from_secs(20),
        || get("reviews").filter(|r| r.status == 200),
    );
    for _ in 0..20 {
        let r = get("reviews").expect("request");
        assert_eq!((r.status, r.body.as_str()), (200, "reviews-v1"));
    }
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews")),
        "the token was reviewed by the API server"
    );
    // The proxy got its identity's certificate over SDS.
    let certs = http_get(&envoy.admin, "/certs", &[]).expect("admin /certs");
    assert!(
        certs
            .body
            .contains("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        "{}",
        certs.body
    );

    // An edit in the cluster reaches the proxy.
    api.apply(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": "v3"}}]}]},
    }));
    wait_for("reviews-v3 after the edit", Duration::from_secs(10), || {
        get("reviews").filter(|r| r.body == "reviews-v3")
    });
    for _ in 0..20 {
        assert_eq!(
            get("reviews").map(|r| r.body).as_deref(),
            Some("reviews-v3")
        );
    }

    // A Pod going away takes its endpoint with it: reviews-v3 has no other pod.
    assert!(api.delete("Pod", "default", "reviews-v3"));
    wait_for("no healthy upstream", Duration::from_secs(10), || {
        get("reviews").filter(|r| r.status == 503)
    });

    // The root is in the CA Secret and published in every namespace.
    let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).expect("root");
    let secret = api
        .get("Secret", "istio-system", "istio-ca-secret")
        .expect("CA Secret");
    use base64::Engine;
    let stored = base64::engine::general_purpose::STANDARD
        .decode(
            secret["data"]["root-cert.pem"]
                .as_str()
                .expect("root-cert.pem"),
        )
        .expect("base64");
    assert_eq!(String::from_utf8_lossy(&stored), root);
    wait_for(
        "istio-ca-root-cert in default",
        Duration::from_secs(10),
        || {
            api.get("ConfigMap", "default", "istio-ca-root-cert")
                .filter(|c| c["data"]["root-cert.pem"] == json!(root))
        },
    );
    let lease = api
        .get("Lease", "istio-system", "meshd-leader")
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "meshd-0");

    // Nothing was rejected on the way.
    let rejected: Vec<_> = envoy
        .stats("update_rejected")
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .collect();
    assert!(rejected.is_empty(), "{rejected:?}");
    drop(envoy);
    drop(meshd);
    drop(backends);
}

#[test]
fn a_token_the_api_server_rejects_gets_no_certificate() {
    if !isolate() {
        return;
    }
    let dir = TempDir::new("kube-refused");
    let api = ApiServer::start("127.0.0.1:6443", Duration::from_secs(1));
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}));
    api.add_token("vault-token", "default", "bookinfo-reviews", &["vault"]);
    api.add_token("good-token", "default", "bookinfo-reviews", &["istio-ca"]);
    let kubeconfig = dir.write("kubeconfig.yaml", &api.kubeconfig());
    let meshd = Meshd::start_kube(&kubeconfig, dir.path(), &[]);
    let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).expect("root");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let me = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews";
        for (token, why) in [
            ("forged", "not authenticated"),
            ("vault-token", "not authenticated"),
        ] {
            let (csr, _) = crate::ca::csr_for(me);
            let e = crate::ca::create_certificate(
                crate::ca::tls_channel("127.0.0.1:15012", &root, None).await,
                &csr,
                Some(token),
            )
            .await
            .expect_err("refused");
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
            assert!(e.message().contains(why), "{}", e.message());
        }
        let (csr, _) = crate::ca::csr_for(me);
        let chain = crate::ca::create_certificate(
            crate::ca::tls_channel("127.0.0.1:15012", &root, None).await,
            &csr,
            Some("good-token"),
        )
        .await
        .expect("a reviewed token gets its certificate");
        assert_eq!(chain.last(), Some(&root));
    });
    drop(meshd);
}
