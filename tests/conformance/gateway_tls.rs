//! Gateway servers beyond plain HTTP, through a real Envoy router: HTTPS terminated with
//! a certificate from a Secret over SDS (`credentialName`, rotated live), MUTUAL client
//! verification, `httpsRedirect`, TLS PASSTHROUGH chosen by SNI (`tls` routes), and TCP
//! servers with weighted `tcp` routes.

use std::time::Duration;

use crate::ca::TokenIssuer;
use crate::harness::*;

const PODS: [(&str, &str); 3] = [
    ("productpage-v1", "127.0.0.10"),
    ("reviews-v1", "127.0.0.12"),
    ("reviews-v2", "127.0.0.13"),
];

const GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*/bookinfo.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["bookinfo.example.com"]
    tls: {mode: SIMPLE, credentialName: bookinfo-cert}
  - port: {number: 443, name: https-mtls, protocol: HTTPS}
    hosts: ["mtls.example.com"]
    tls: {mode: MUTUAL, credentialName: mtls-cert}
  - port: {number: 9443, name: tls, protocol: TLS}
    hosts: ["secure.example.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 9000, name: tcp, protocol: TCP}
    hosts: ["*"]
  - port: {number: 8081, name: http-bound, protocol: HTTP}
    bind: 127.0.0.20
    hosts: ["bookinfo.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: [bookinfo.example.com, mtls.example.com]
  gateways: [istio-system/edge]
  http:
  - route:
    - destination: {host: productpage, port: {number: 9080}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secure, namespace: default}
spec:
  hosts: [secure.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 8443, name: tls, protocol: TLS}]
  endpoints: [{address: 127.0.1.60}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: default}
spec:
  hosts: [secure.example.com]
  gateways: [istio-system/edge]
  tls:
  - match: [{sniHosts: [secure.example.com], port: 9443}]
    route:
    - destination: {host: secure.example.com, port: {number: 8443}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-tcp, namespace: default}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  tcp:
  - match: [{port: 9000}]
    route:
    - destination: {host: reviews, subset: v1, port: {number: 9080}}
      weight: 75
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      weight: 25
"#;

fn secret(name: &str, cert: &str, key: &str, ca: &str) -> String {
    tls_secret_yaml(name, "istio-system", cert, key, ca, None)
}

/// The serial number of the client certificate the mTLS server's CRL revokes.
const REVOKED: u64 = 0x5eed;

// Fields drop in order: processes first, then the folders.
struct Setup {
    meshd: Meshd,
    gateway: Envoy,
    _backends: Backends,
    _tls_backend: TlsBackend,
    config: TempDir,
    _dir: TempDir,
    ca: TestCa,
    issuer: TokenIssuer,
}

impl Setup {
    fn start() -> Option<Setup> {
        let (dir, config) = envoy_test("gwtls")?;
        for f in ["services.yaml", "pods.yaml", "destination-rules.yaml"] {
            config.copy_from(&repo().join("examples/bookinfo").join(f), f);
        }
        config.write("gateway.yaml", GATEWAY);
        let ca = TestCa::new("edge-ca");
        let (cert, key) = ca.leaf("bookinfo-1", &["bookinfo.example.com"]);
        config.write(
            "bookinfo-cert.yaml",
            &secret("bookinfo-cert", &cert, &key, &ca.pem),
        );
        let (cert, key) = ca.leaf("mtls-1", &["mtls.example.com"]);
        let crl = ca.crl(&[REVOKED]);
        config.write(
            "mtls-cert.yaml",
            &tls_secret_yaml(
                "mtls-cert",
                "istio-system",
                &cert,
                &key,
                &ca.pem,
                Some(&crl),
            ),
        );
        let (cert, key) = ca.leaf("secure-backend", &["secure.example.com"]);
        let tls_backend = TlsBackend::start("127.0.1.60:8443", &cert, &key, &ca.pem, false);
        let backends = Backends::start(&PODS, 9080);
        // The gateway wants 8080: meshd's debug port moves.
        let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 18080);
        // Credentials come over SDS, only to an authenticated gateway.
        let gateway = start_ingress_gateway(&dir, &issuer);
        Some(Setup {
            meshd,
            gateway,
            _backends: backends,
            _tls_backend: tls_backend,
            config,
            _dir: dir,
            ca,
            issuer,
        })
    }

    fn https(
        &self,
        port: u16,
        sni: &str,
        client: Option<(&str, &str)>,
    ) -> std::io::Result<HttpsResponse> {
        https_get(
            &format!("127.0.0.1:{port}"),
            sni,
            "/productpage",
            &self.ca.pem,
            client,
        )
    }

    fn assert_no_rejections(&self) {
        let bad: Vec<_> = self
            .gateway
            .stats("update_rejected")
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect();
        assert!(bad.is_empty(), "{bad:?}\n{}", self.gateway.proc.log_text());
        self.meshd.assert_no_nacks();
    }
}

#[test]
fn https_simple_and_mutual_with_credentials_from_secrets() {
    let Some(s) = Setup::start() else { return };
    let r = wait_for("HTTPS through the gateway", Duration::from_secs(20), || {
        s.https(443, "bookinfo.example.com", None).ok()
    });
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "productpage-v1");
    assert_eq!(
        r.server_cn, "bookinfo-1",
        "the certificate of Secret bookinfo-cert"
    );

    // MUTUAL: no client certificate, no response; one from the Secret's CA, 200.
    let (cert, key) = s.ca.leaf("client-1", &["client.example.com"]);
    let r = wait_for("mTLS through the gateway", Duration::from_secs(20), || {
        s.https(443, "mtls.example.com", Some((&cert, &key))).ok()
    });
    assert_eq!((r.status, r.body.as_str()), (200, "productpage-v1"));
    assert_eq!(r.server_cn, "mtls-1");
    let refused = s.https(443, "mtls.example.com", None);
    assert!(
        refused.is_err(),
        "MUTUAL without a client certificate: {refused:?}"
    );
    let other_ca = TestCa::new("someone-else");
    let (cert2, key2) = other_ca.leaf("client-2", &["client.example.com"]);
    let refused = s.https(443, "mtls.example.com", Some((&cert2, &key2)));
    assert!(
        refused.is_err(),
        "a client certificate from another CA: {refused:?}"
    );
    // A client certificate the Secret's ca.crl revokes is refused.
    let (cert3, key3) =
        s.ca.leaf_with_serial("client-3", &["client.example.com"], Some(REVOKED));
    let refused = s.https(443, "mtls.example.com", Some((&cert3, &key3)));
    assert!(
        refused.is_err(),
        "a revoked client certificate: {refused:?}"
    );
    let ok = s.https(443, "mtls.example.com", Some((&cert, &key)));
    assert_eq!(ok.map(|r| r.status).ok(), Some(200), "not revoked");
    // SIMPLE does not ask for one.
    assert_eq!(
        s.https(443, "bookinfo.example.com", None)
            .expect("simple")
            .status,
        200
    );

    // Rotation: a new certificate in the Secret is served without a restart.
    let (cert, key) = s.ca.leaf("bookinfo-2", &["bookinfo.example.com"]);
    s.config.write(
        "bookinfo-cert.yaml",
        &secret("bookinfo-cert", &cert, &key, &s.ca.pem),
    );
    let r = wait_for("the rotated certificate", Duration::from_secs(20), || {
        s.https(443, "bookinfo.example.com", None)
            .ok()
            .filter(|r| r.server_cn == "bookinfo-2")
    });
    assert_eq!(r.status, 200);
    s.assert_no_rejections();
}

#[test]
fn https_redirect_passthrough_and_weighted_tcp() {
    let Some(s) = Setup::start() else { return };
    // httpsRedirect: plain HTTP gets a 301 to https://.
    let r = wait_for("the HTTPS redirect", Duration::from_secs(20), || {
        http_get(
            "127.0.0.1:8080",
            "/productpage",
            &[("Host", "bookinfo.example.com")],
        )
        .ok()
        .filter(|r| r.status == 301)
    });
    let location = r
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert_eq!(location, "https://bookinfo.example.com/productpage");

    // bind: that server listens on its own address only.
    let r = wait_for("the bound server", Duration::from_secs(20), || {
        http_get(
            "127.0.0.20:8081",
            "/productpage",
            &[("Host", "bookinfo.example.com")],
        )
        .ok()
        .filter(|r| r.status == 200)
    });
    assert_eq!(r.body, "productpage-v1");
    assert!(
        http_get(
            "127.0.0.1:8081",
            "/productpage",
            &[("Host", "bookinfo.example.com")]
        )
        .is_err(),
        "not on other addresses"
    );

    // PASSTHROUGH: the TLS session reaches the backend untouched (its certificate, the
    // SNI the client sent); an SNI no route takes is not proxied.
    let r = wait_for("TLS passthrough", Duration::from_secs(20), || {
        s.https(9443, "secure.example.com", None).ok()
    });
    assert_eq!(r.status, 200);
    assert_eq!(r.server_cn, "secure-backend");
    assert_eq!(r.body, "sni=secure.example.com client=none");
    assert!(s.https(9443, "bookinfo.example.com", None).is_err());

    // TCP: 75/25 between reviews v1 and v2 over 400 connections.
    wait_for("TCP through the gateway", Duration::from_secs(20), || {
        http_get("127.0.0.1:9000", "/", &[])
            .ok()
            .filter(|r| r.status == 200)
    });
    let d = tcp_distribution("127.0.0.1:9000", 400);
    let v1 = d.get("reviews-v1").copied().unwrap_or(0);
    let v2 = d.get("reviews-v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 400, "every connection reached reviews: {d:?}");
    assert!((300 - 40..=300 + 40).contains(&v1), "75% ±10 to v1: {d:?}");
    s.assert_no_rejections();
}

/// Sidecar `ingress[].tls`: the workload's sidecar terminates TLS for clients outside the
/// mesh with a certificate from files, instead of mesh mTLS; plaintext is refused.
#[test]
fn sidecar_ingress_terminates_tls() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("ingress-tls");
    let config = TempDir::new("ingress-tls-config");
    let ca = TestCa::new("ingress-ca");
    let (cert, key) = ca.leaf("reviews-ingress", &["reviews.default.svc"]);
    let cert_path = dir.write("cert.pem", &cert);
    let key_path = dir.write("key.pem", &key);
    config.copy_from(
        &repo().join("examples/bookinfo/services.yaml"),
        "services.yaml",
    );
    config.write(
        "reviews.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v1, namespace: default, labels: {{app: reviews, version: v1}}}}
spec: {{serviceAccountName: bookinfo-reviews, containers: [{{name: app, image: x}}]}}
status: {{podIP: 127.0.0.12}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: reviews, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: reviews}}}}
  ingress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    captureMode: NONE
    defaultEndpoint: 127.0.1.12:9080
    tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}
"#,
            cert_path.display(),
            key_path.display()
        ),
    );
    let _backend = Backends::start(&[("reviews-v1", "127.0.1.12")], 9080);
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    let _envoy = Envoy::start_with(
        &REVIEWS_V1,
        &EnvoyOpts {
            interception: "NONE",
            ..Default::default()
        },
        dir.path(),
    );
    let r = wait_for("TLS at the sidecar", Duration::from_secs(20), || {
        https_get("127.0.0.12:9080", "reviews.default.svc", "/", &ca.pem, None).ok()
    });
    assert_eq!((r.status, r.body.as_str()), (200, "reviews-v1"));
    assert_eq!(r.server_cn, "reviews-ingress");
    let plain = http_get("127.0.0.12:9080", "/", &[("Host", "reviews")]);
    assert!(
        plain.as_ref().map_or(true, |r| r.status != 200),
        "plaintext is not served: {plain:?}"
    );
    drop(meshd);
}

/// AuthorizationPolicy and RequestAuthentication selecting the ingress gateway apply at
/// the edge: a denied path gets `RBAC: access denied`, a JWT is required and checked.
#[test]
fn authorization_and_jwt_at_the_ingress_gateway() {
    let Some(s) = Setup::start() else { return };
    let get = |path: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut h = vec![("Host", "bookinfo.example.com")];
        if let Some(a) = &auth {
            h.push(("authorization", a.as_str()));
        }
        http_get("127.0.0.20:8081", path, &h).ok()
    };
    wait_for("the gateway", Duration::from_secs(20), || {
        get("/productpage", None).filter(|r| r.status == 200)
    });
    let jwks = s.issuer.jwks.replace('"', "\\\"");
    s.config.write(
        "ingress-security.yaml",
        &format!(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ingress-deny-admin, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin*"]}}}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: ingress-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: https://issuer.example
    jwks: "{jwks}"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ingress-require-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["https://issuer.example/*"]}}}}]
"#
        ),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let good = s.issuer.sign(
        &serde_json::json!({"iss": "https://issuer.example", "sub": "alice", "exp": now + 600}),
        "k1",
    );
    let r = wait_for(
        "the policies at the gateway",
        Duration::from_secs(20),
        || get("/productpage", None).filter(|r| r.status == 403),
    );
    assert_eq!(r.body, "RBAC: access denied", "no token, no principal");
    let r = get("/productpage", Some(&good)).expect("answer");
    assert_eq!((r.status, r.body.as_str()), (200, "productpage-v1"));
    let r = get("/productpage", Some("not.a.jwt")).expect("answer");
    assert_eq!(r.status, 401, "a bad token is refused by jwt_authn");
    let r = get("/admin/x", Some(&good)).expect("answer");
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "RBAC: access denied"),
        "DENY wins"
    );
    s.assert_no_rejections();
}

/// An AUTO_PASSTHROUGH server (an east-west gateway): the SNI of mesh TLS names the
/// cluster (`outbound_.PORT_._.HOST`), and the session passes through to a workload with
/// a sidecar; a connection without mesh ALPN, or naming no cluster of the mesh, is not
/// proxied, and a workload without a sidecar is not reachable this way.
#[test]
fn auto_passthrough_routes_mesh_tls_by_the_sni_naming_the_cluster() {
    use std::io::{Read, Write};
    let Some((dir, config)) = envoy_test("eastwest") else {
        return;
    };
    config.write(
        "eastwest.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: cross-network, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 15443, name: tls, protocol: TLS}
    tls: {mode: AUTO_PASSTHROUGH}
    hosts: ["*.local"]
---
apiVersion: v1
kind: Service
metadata: {name: vault, namespace: default}
spec:
  selector: {app: vault}
  ports: [{name: tls, port: 8443}]
---
apiVersion: v1
kind: Pod
metadata: {name: vault-1, namespace: default, labels: {app: vault, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: vault, containers: [{name: vault, image: vault}]}
status: {phase: Running, podIP: 127.0.1.70}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: default}
spec:
  selector: {app: plain}
  ports: [{name: tls, port: 8443}]
---
apiVersion: v1
kind: Pod
metadata: {name: plain-1, namespace: default, labels: {app: plain}}
spec: {serviceAccountName: plain, containers: [{name: plain, image: plain}]}
status: {phase: Running, podIP: 127.0.1.71}
"#,
    );
    let ca = TestCa::new("mesh-ca");
    let vault_sni = "outbound_.8443_._.vault.default.svc.cluster.local";
    let plain_sni = "outbound_.8443_._.plain.default.svc.cluster.local";
    let (cert, key) = ca.leaf("vault-1", &[vault_sni]);
    let _vault = TlsBackend::start("127.0.1.70:8443", &cert, &key, &ca.pem, false);
    let (cert, key) = ca.leaf("plain-1", &[plain_sni]);
    let _plain = TlsBackend::start("127.0.1.71:8443", &cert, &key, &ca.pem, false);
    let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 18080);
    let gateway = start_ingress_gateway(&dir, &issuer);
    let get = |sni: &str, alpn: &[&str]| -> std::io::Result<String> {
        let mut tls = crate::https::connect_alpn(
            "127.0.0.1:15443".parse().expect("address"),
            sni,
            &ca.pem,
            None,
            Duration::from_secs(5),
            alpn,
        )?;
        tls.write_all(
            format!("GET / HTTP/1.1\r\nHost: {sni}\r\nconnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw);
        if raw.is_empty() {
            return Err(std::io::Error::other("no answer"));
        }
        Ok(String::from_utf8_lossy(&raw).to_string())
    };
    let mesh_alpn = ["istio-peer-exchange", "istio"];
    let answer = wait_for(
        "mesh TLS through the gateway",
        Duration::from_secs(20),
        || get(vault_sni, &mesh_alpn).ok(),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("sni={vault_sni} client=none")),
        "the backend's own TLS, with the client's SNI: {answer}"
    );
    assert!(get(vault_sni, &[]).is_err(), "no mesh ALPN: not proxied");
    assert!(
        get(plain_sni, &mesh_alpn).is_err(),
        "a workload without a sidecar is not reached around mTLS"
    );
    assert!(
        get(
            "outbound_.8443_._.nothing.default.svc.cluster.local",
            &mesh_alpn
        )
        .is_err(),
        "no such cluster: not proxied"
    );
    let bad: Vec<_> = gateway
        .stats("update_rejected")
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
    meshd.assert_no_nacks();
}

/// Istio's egress gateway task, mTLS variant: the sidecar sends traffic for an external
/// host to the egress gateway over ISTIO_MUTUAL (subset `cnn`, SNI the external host), and
/// the gateway alone reaches the external service.
const EGRESS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cnn, namespace: default}
spec:
  hosts: [edition.cnn.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP, targetPort: 8090}]
  endpoints: [{address: 127.0.1.70}]
---
apiVersion: v1
kind: Service
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  ports: [{name: http2, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: istio-egressgateway-1
  namespace: istio-system
  labels: {istio: egressgateway, app: istio-egressgateway, security.istio.io/tlsMode: istio}
spec: {serviceAccountName: istio-egressgateway-service-account, containers: [{name: istio-proxy, image: proxyv2}]}
status: {phase: Running, podIP: 127.0.0.21}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: https, protocol: HTTPS}
    hosts: [edition.cnn.com]
    tls: {mode: ISTIO_MUTUAL}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: egressgateway-for-cnn, namespace: default}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
      portLevelSettings:
      - port: {number: 80}
        tls: {mode: ISTIO_MUTUAL, sni: edition.cnn.com}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: direct-cnn-through-egress-gateway, namespace: default}
spec:
  hosts: [edition.cnn.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{gateways: [mesh], port: 9080}]
    route:
    - destination: {host: istio-egressgateway.istio-system.svc.cluster.local, subset: cnn, port: {number: 80}}
      weight: 100
  - match: [{gateways: [istio-egressgateway], port: 80}]
    route:
    - destination: {host: edition.cnn.com, port: {number: 9080}}
      weight: 100
"#;

#[test]
fn egress_gateway_with_istio_mutual_reaches_the_external_service() {
    let Some((dir, config)) = envoy_test("egress") else {
        return;
    };
    // productpage's calls go to 127.0.0.1:9080 (no iptables here); it sees the gateway's
    // Service in istio-system as well as its own namespace.
    config.write(
        "sidecar.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: productpage, namespace: default}
spec:
  workloadSelector: {labels: {app: productpage}}
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: ["./*", "istio-system/*"]
"#,
    );
    config.write("egress.yaml", EGRESS);
    let external = HttpApp::start("127.0.1.70:8090", |r| Answer {
        status: 200,
        headers: vec![],
        body: format!("cnn host={}", r.header("host").unwrap_or("")),
    });
    let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 18080);
    let node = NodeSpec {
        kind: "router",
        ip: "127.0.0.21",
        pod: "istio-egressgateway-1",
        namespace: "istio-system",
        labels: &[("istio", "egressgateway"), ("app", "istio-egressgateway")],
        service_account: "istio-egressgateway-service-account",
    };
    let gateway = Envoy::start_with(
        &node,
        &EnvoyOpts {
            admin_port: 15200,
            xds: Xds::Tls {
                root: dir.path().join("ca/root-cert.pem"),
                token: issuer.token(node.namespace, node.service_account, "istio-ca", 3600, "k1"),
            },
            ..Default::default()
        },
        dir.path(),
    );
    let sidecar = Envoy::start_with(
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
                token: issuer.token("default", "bookinfo-productpage", "istio-ca", 3600, "k1"),
            },
            ..Default::default()
        },
        dir.path(),
    );
    let get = || http_get("127.0.0.1:9080", "/", &[("Host", "edition.cnn.com")]).ok();
    let r = wait_for(
        "the external service through the egress gateway",
        Duration::from_secs(30),
        || get().filter(|r| r.status == 200),
    );
    assert_eq!(r.body, "cnn host=edition.cnn.com");
    for _ in 0..9 {
        assert_eq!(get().map(|r| r.status), Some(200));
    }
    let stat = |envoy: &Envoy, name: &str| -> u64 {
        envoy
            .stats(name)
            .into_iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .sum()
    };
    // The sidecar sent every request to the gateway, in mesh TLS; none went out directly.
    let to_gateway = "cluster.outbound|80|cnn|istio-egressgateway.istio-system.svc.cluster.local";
    assert!(stat(&sidecar, &format!("{to_gateway}.upstream_rq_total")) >= 10);
    assert!(stat(&sidecar, &format!("{to_gateway}.ssl.handshake")) >= 1);
    assert_eq!(
        stat(
            &sidecar,
            "cluster.outbound|9080||edition.cnn.com.upstream_rq_total"
        ),
        0,
        "the sidecar reached the external service directly"
    );
    // The gateway did, after terminating the sidecar's mTLS.
    assert!(
        stat(
            &gateway,
            "cluster.outbound|9080||edition.cnn.com.upstream_rq_total"
        ) >= 10
    );
    assert_eq!(
        external.requests().len(),
        stat(
            &gateway,
            "cluster.outbound|9080||edition.cnn.com.upstream_rq_total"
        ) as usize
    );
    // Without a mesh certificate the gateway answers nothing.
    assert!(
        http_get("127.0.0.21:8080", "/", &[("Host", "edition.cnn.com")])
            .map(|r| r.status != 200)
            .unwrap_or(true),
        "plaintext through an ISTIO_MUTUAL server"
    );
    assert_envoy_accepted(&gateway);
    assert_envoy_accepted(&sidecar);
    meshd.assert_no_nacks();
}

/// A gateway server bound to a Unix domain socket (`bind: unix:///PATH`): Envoy listens on
/// the socket, named as istiod names it, and routes what arrives there.
#[test]
fn gateway_server_bound_to_a_unix_socket() {
    use std::io::{Read, Write};
    let Some((dir, config)) = envoy_test("gw-unix") else {
        return;
    };
    for f in ["services.yaml", "pods.yaml"] {
        config.copy_from(&repo().join("examples/bookinfo").join(f), f);
    }
    let socket = dir.path().join("gateway.sock");
    config.write(
        "gateway.yaml",
        &format!(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: local, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    bind: unix://{path}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pages, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [istio-system/local]
  http: [{{route: [{{destination: {{host: productpage}}}}]}}]
"#,
            path = socket.display()
        ),
    );
    let _backends = Backends::start(&PODS, 9080);
    let meshd = Meshd::start_on(config.path(), dir.path(), 18080, &[]);
    let gateway = Envoy::start(&INGRESS_GATEWAY, Ads::Delta, 15000, dir.path());
    let get = || -> std::io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(&socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: bookinfo.example\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let answer = wait_for(
        "HTTP over the gateway's Unix socket",
        Duration::from_secs(20),
        || get().ok().filter(|a| a.starts_with("HTTP/1.1 200")),
    );
    assert!(answer.ends_with("productpage-v1"), "{answer}");
    let listeners = http_get("127.0.0.1:15000", "/listeners", &[]).expect("listeners");
    assert!(
        listeners
            .body
            .contains(&format!("unix://{}_8080", socket.display())),
        "the listener keeps istiod's name: {}",
        listeners.body
    );
    // Nothing listens on the port itself.
    assert!(std::net::TcpStream::connect("127.0.0.20:8080").is_err());
    assert_envoy_accepted(&gateway);
    meshd.assert_no_nacks();
}
