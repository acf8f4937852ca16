//! The certificate authority on 15012: real TLS, real CSRs, `openssl verify` on what it
//! issues, and every way a caller can be refused.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use meshd::ca::server::{CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse};
use rcgen::{CertificateParams, KeyPair, SanType};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::harness::*;

pub use crate::tokens::TokenIssuer;

/// A gRPC channel over TLS to meshd's 15012, trusting `root_pem`, optionally presenting
/// a client certificate.
pub async fn tls_channel(
    addr: &str,
    root_pem: &str,
    client: Option<(Vec<String>, String)>,
) -> Channel {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for p in pem::parse_many(root_pem.as_bytes()).expect("pem") {
        roots
            .add(CertificateDer::from(p.contents().to_vec()))
            .expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut cfg = match client {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => {
            let certs = chain
                .iter()
                .map(|c| CertificateDer::from(pem::parse(c).expect("pem").contents().to_vec()))
                .collect();
            let key = PrivateKeyDer::try_from(pem::parse(&key).expect("pem").contents().to_vec())
                .expect("key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client cert")
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let addr = addr.to_string();
    Endpoint::try_from("http://istiod.istio-system.svc:15012")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let addr = addr.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let name = ServerName::try_from("istiod.istio-system.svc").expect("name");
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .expect("TLS channel to 15012")
}

pub async fn create_certificate(
    channel: Channel,
    csr: &str,
    token: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_string(),
        validity_duration: 3600,
        metadata: None,
    });
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE);
    let codec: tonic_prost::ProstCodec<IstioCertificateRequest, IstioCertificateResponse> =
        tonic_prost::ProstCodec::default();
    grpc.unary(req, path, codec)
        .await
        .map(|r| r.into_inner().cert_chain)
}

pub fn csr_for(uri: &str) -> (String, KeyPair) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
    (
        p.serialize_request(&key).expect("csr").pem().expect("pem"),
        key,
    )
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn csr_api_issues_verifiable_certificates_and_refuses_impostors() {
    if !isolate() {
        return;
    }
    let dir = TempDir::new("ca");
    let config = TempDir::new("ca-config");
    config.copy_from(
        &repo().join("examples/bookinfo/services.yaml"),
        "services.yaml",
    );
    let issuer = TokenIssuer::new("k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &issuer.jwks).expect("jwks");
    let meshd = Meshd::start(
        config.path(),
        dir.path(),
        &["--ca-jwks", jwks.to_str().expect("utf8")],
    );
    let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem"))
        .expect("root published as a file");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let me = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews";
        let good = issuer.token("default", "bookinfo-reviews", "istio-ca", 600, "k1");

        // A CSR for the caller's own identity: a chain that openssl verifies.
        let (csr, key) = csr_for(me);
        let chain = create_certificate(
            tls_channel("127.0.0.1:15012", &root, None).await,
            &csr,
            Some(&good),
        )
        .await
        .expect("issued");
        assert_eq!(chain.len(), 2, "leaf, root");
        assert_eq!(chain[1], root, "the root is last");
        let leaf = dir.path().join("leaf.pem");
        std::fs::write(&leaf, &chain[0]).expect("write");
        let root_file = dir.path().join("ca/root-cert.pem");
        let (ok, out) = openssl(&[
            "verify",
            "-CAfile",
            root_file.to_str().expect("utf8"),
            leaf.to_str().expect("utf8"),
        ]);
        assert!(ok && out.contains("OK"), "openssl verify: {out}");
        let (_, text) = openssl(&[
            "x509",
            "-in",
            leaf.to_str().expect("utf8"),
            "-noout",
            "-text",
        ]);
        assert!(text.contains(&format!("URI:{me}")), "{text}");
        assert!(
            text.contains("Digital Signature, Key Encipherment"),
            "{text}"
        );
        assert!(
            text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
            "{text}"
        );
        assert!(text.contains("CA:FALSE"), "{text}");
        let (_, dates) = openssl(&[
            "x509",
            "-in",
            leaf.to_str().expect("utf8"),
            "-noout",
            "-startdate",
            "-enddate",
        ]);
        assert!(dates.contains("notAfter"), "{dates}");

        // The issued certificate authenticates its holder: no token needed any more.
        let (csr2, _) = csr_for(me);
        let with_cert = tls_channel(
            "127.0.0.1:15012",
            &root,
            Some((chain.clone(), key.serialize_pem())),
        )
        .await;
        create_certificate(with_cert, &csr2, None)
            .await
            .expect("client certificate authenticates");

        // Refusals, each with its reason.
        let ch = || tls_channel("127.0.0.1:15012", &root, None);
        let (other, _) = csr_for("spiffe://cluster.local/ns/default/sa/bookinfo-ratings");
        let e = create_certificate(ch().await, &other, Some(&good))
            .await
            .expect_err("another identity");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(
            e.message().contains("does not match caller identity"),
            "{e}"
        );
        let e = create_certificate(ch().await, &csr, None)
            .await
            .expect_err("unauthenticated");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
        let expired = issuer.token("default", "bookinfo-reviews", "istio-ca", -600, "k1");
        let e = create_certificate(ch().await, &csr, Some(&expired))
            .await
            .expect_err("expired");
        assert!(e.message().contains("expired"), "{e}");
        let forger = TokenIssuer::new("k1");
        let forged = forger.token("default", "bookinfo-reviews", "istio-ca", 600, "k1");
        let e = create_certificate(ch().await, &csr, Some(&forged))
            .await
            .expect_err("wrongly signed");
        assert!(e.message().contains("signature"), "{e}");
        let wrong_aud = issuer.token("default", "bookinfo-reviews", "kubernetes", 600, "k1");
        let e = create_certificate(ch().await, &csr, Some(&wrong_aud))
            .await
            .expect_err("audience");
        assert!(e.message().contains("audience"), "{e}");

        // Never on the plaintext port.
        let plain = Endpoint::try_from("http://127.0.0.1:15010")
            .expect("e")
            .connect()
            .await
            .expect("connect");
        let e = create_certificate(plain, &csr, Some(&good))
            .await
            .expect_err("not on 15010");
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{e}");
    });
    // Counted.
    let m = http_get("127.0.0.1:15014", "/metrics", &[])
        .expect("metrics")
        .body;
    let value = |name: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{m}"))
    };
    assert_eq!(value("citadel_server_csr_count"), 7, "{m}");
    assert_eq!(value("citadel_server_success_cert_issuance_count"), 2);
    assert_eq!(value("citadel_server_authentication_failure_count"), 4);
    assert_eq!(value("citadel_server_csr_sign_error_count"), 1);
    assert!(value("citadel_server_root_cert_expiry_timestamp") > 0);
    drop(meshd);
    let _ = Duration::ZERO;
}

/// SDS on 15012 gives a proxy its own secrets and nothing else; a Gateway API
/// certificate of another namespace (`kubernetes-gateway://NS/NAME`) only to proxies of
/// a namespace a ReferenceGrant there names.
#[test]
fn sds_serves_only_the_callers_own_secrets() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    use envoy_types::pb::envoy::service::discovery::v3::{
        DiscoveryRequest, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    };
    use prost::Message;
    if !isolate() {
        return;
    }
    let dir = TempDir::new("sds");
    let config = TempDir::new("sds-config");
    config.copy_from(
        &repo().join("examples/bookinfo/services.yaml"),
        "services.yaml",
    );
    let edge_ca = TestCa::new("edge-ca");
    let (cert, key) = edge_ca.leaf("edge-1", &["edge.example.com"]);
    config.write(
        "edge-cert.yaml",
        &format!(
            "{}---\n{}",
            tls_secret_yaml("edge-cert", "certs", &cert, &key, &edge_ca.pem, None),
            "apiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\nmetadata: {name: edge, namespace: certs}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: granted}]\n  to: [{group: \"\", kind: Secret, name: edge-cert}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: granted}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: https, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: edge-cert, namespace: certs}]}}]\n"
        ),
    );
    let issuer = TokenIssuer::new("k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &issuer.jwks).expect("jwks");
    let _meshd = Meshd::start(
        config.path(),
        dir.path(),
        &["--ca-jwks", jwks.to_str().expect("utf8")],
    );
    let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).expect("root");
    let token = issuer.token("default", "bookinfo-reviews", "istio-ca", 600, "k1");
    let node = |ns: &str| Node {
        id: format!("sidecar~127.0.0.12~reviews-v1.{ns}~{ns}.svc.cluster.local"),
        metadata: Some(meshd::envoy::pb::to_struct(
            &serde_json::json!({"NAMESPACE": ns}),
        )),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let open = |node: Node, token: Option<String>| {
            let root = root.clone();
            async move {
                let ch = tls_channel("127.0.0.1:15012", &root, None).await;
                let mut client = AggregatedDiscoveryServiceClient::new(ch);
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tx.send(DiscoveryRequest {
                    node: Some(node),
                    type_url: meshd::envoy::type_url::SECRET.into(),
                    resource_names: vec![
                        "default".into(),
                        "ROOTCA".into(),
                        "kubernetes://ratings-credential".into(),
                        "spiffe://cluster.local/ns/default/sa/bookinfo-ratings".into(),
                        "kubernetes-gateway://certs/edge-cert".into(),
                    ],
                    ..Default::default()
                })
                .await
                .expect("send");
                let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                if let Some(t) = token {
                    req.metadata_mut()
                        .insert("authorization", format!("Bearer {t}").parse().expect("h"));
                }
                let mut stream = client
                    .stream_aggregated_resources(req)
                    .await
                    .expect("stream")
                    .into_inner();
                let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
                    .await
                    .expect("answer");
                (first, tx)
            }
        };
        // Authenticated as default/bookinfo-reviews: its own certificate and the root only.
        let (first, _tx) = open(node("default"), Some(token.clone())).await;
        let resp = first.expect("ok").expect("a response");
        let secrets: Vec<Secret> = resp
            .resources
            .iter()
            .map(|a| Secret::decode(a.value.as_slice()).expect("secret"))
            .collect();
        let names: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ROOTCA", "default"], "only its own secrets");
        let Some(secret::Type::TlsCertificate(tls)) = &secrets[1].r#type else {
            panic!("default is a certificate")
        };
        let Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(
            chain,
        )) = tls
            .certificate_chain
            .as_ref()
            .and_then(|d| d.specifier.clone())
        else {
            panic!("inline chain")
        };
        let leaf = pem::parse(&chain).expect("pem");
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.contents()).expect("x509");
        let san = cert.subject_alternative_name().expect("ok").expect("san");
        assert_eq!(
            format!("{:?}", san.value.general_names),
            "[URI(\"spiffe://cluster.local/ns/default/sa/bookinfo-reviews\")]"
        );
        let leaf_file = dir.path().join("sds-leaf.pem");
        std::fs::write(&leaf_file, &chain).expect("write");
        let root_file = dir.path().join("ca/root-cert.pem");
        let (ok, out) = openssl(&[
            "verify",
            "-CAfile",
            root_file.to_str().expect("utf8"),
            leaf_file.to_str().expect("utf8"),
        ]);
        assert!(
            ok && out.contains("OK"),
            "openssl verify of the SDS certificate: {out}"
        );

        // The gateway proxy of the namespace the ReferenceGrant names, whose Gateway uses
        // the certificate, gets it too.
        let granted = issuer.token("granted", "edge-istio", "istio-ca", 600, "k1");
        let router = Node {
            id: "router~127.0.0.30~edge-istio-1.granted~granted.svc.cluster.local".into(),
            metadata: Some(meshd::envoy::pb::to_struct(&serde_json::json!({
                "NAMESPACE": "granted",
                "LABELS": {"gateway.networking.k8s.io/gateway-name": "edge"},
            }))),
            ..Default::default()
        };
        let (first, _tx) = open(router, Some(granted.clone())).await;
        let resp = first.expect("ok").expect("a response");
        let names: Vec<String> = resp
            .resources
            .iter()
            .map(|a| Secret::decode(a.value.as_slice()).expect("secret").name)
            .collect();
        assert_eq!(
            names,
            ["ROOTCA", "default", "kubernetes-gateway://certs/edge-cert"],
            "its own and the granted certificate"
        );
        // Another workload of that namespace (no Gateway of its own uses it): refused.
        let (first, _tx) = open(node("granted"), Some(granted)).await;
        let resp = first.expect("ok").expect("a response");
        let names: Vec<String> = resp
            .resources
            .iter()
            .map(|a| Secret::decode(a.value.as_slice()).expect("secret").name)
            .collect();
        assert_eq!(
            names,
            ["ROOTCA", "default"],
            "not a gateway's key to hand out"
        );

        // A node claiming another namespace than its credentials: refused.
        let (first, _tx) = open(node("other"), Some(token.clone())).await;
        let e = first.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(e.message().contains("claims namespace other"), "{e}");

        // No credentials at all: refused.
        let (first, _tx) = open(node("default"), None).await;
        let e = first.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    });
    let m = http_get("127.0.0.1:15014", "/metrics", &[])
        .expect("metrics")
        .body;
    assert!(
        m.contains("meshd_sds_refusals 8\n"),
        "the three foreign secrets of default, two of the gateway, three of the sidecar beside it, counted:\n{m}"
    );
}
