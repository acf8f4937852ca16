//! Mesh mTLS with two real Envoys: both authenticate to meshd on 15012 with service-account
//! tokens, get their certificates over SDS, and talk mTLS; PeerAuthentication decides what
//! the server accepts.

use std::time::Duration;

use crate::ca::TokenIssuer;
use crate::harness::*;

const PODS: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: productpage-v1, labels: {app: productpage, version: v1, security.istio.io/tlsMode: istio}}
  spec: {serviceAccountName: bookinfo-productpage, containers: [{name: app, image: x}]}
  status: {podIP: 127.0.0.10}
- apiVersion: v1
  kind: Pod
  metadata: {name: reviews-v1, labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}}
  spec: {serviceAccountName: bookinfo-reviews, containers: [{name: app, image: x}]}
  status: {podIP: 127.0.0.12}
"#;

/// reviews-v1's sidecar runs without iptables: it owns the pod address on 9080 and hands
/// requests to the application on another loopback address.
const REVIEWS_SIDECAR: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews-v1}
spec:
  workloadSelector: {labels: {app: reviews, version: v1}}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    captureMode: NONE
    defaultEndpoint: 127.0.1.12:9080
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: 127.0.1.99
    captureMode: NONE
    hosts: ["./*"]
"#;

fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: reviews}}\nspec:\n  selector: {{matchLabels: {{app: reviews}}}}\n  mtls: {{mode: {mode}}}\n"
    )
}

// Fields drop in order: processes first, then the folders holding their logs.
struct Mesh {
    meshd: Meshd,
    client: Envoy,
    server: Envoy,
    _backends: Backends,
    issuer: TokenIssuer,
    _config: TempDir,
    _dir: TempDir,
}

impl Mesh {
    fn start(mode: &str) -> Option<Mesh> {
        Mesh::start_with(mode, &[])
    }

    /// With extra configuration files (name, text) in the watched folder.
    fn start_with(mode: &str, extra: &[(&str, &str)]) -> Option<Mesh> {
        Mesh::start_with_args(mode, extra, &[])
    }

    /// meshd's arguments besides the folder, the CA directory and the JWKS.
    fn meshd_args(dir: &TempDir, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--ca-jwks".to_string(),
            dir.path().join("jwks.json").display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    fn start_with_args(mode: &str, extra: &[(&str, &str)], args: &[&str]) -> Option<Mesh> {
        if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
            return None;
        }
        if !isolate() {
            return None;
        }
        let dir = TempDir::new("mtls");
        let config = TempDir::new("mtls-config");
        config.copy_from(
            &repo().join("examples/bookinfo/services.yaml"),
            "services.yaml",
        );
        config.copy_from(
            &repo().join("examples/bookinfo/sidecar-productpage.yaml"),
            "sidecar-productpage.yaml",
        );
        config.write("pods.yaml", PODS);
        config.write("sidecar-reviews.yaml", REVIEWS_SIDECAR);
        config.write("peer-authentication.yaml", &peer_authentication(mode));
        for (name, text) in extra {
            config.write(name, text);
        }
        let issuer = TokenIssuer::new("k1");
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, &issuer.jwks).expect("jwks");
        let backends = Backends::start(&[("reviews-v1", "127.0.1.12")], 9080);
        let meshd_args = Mesh::meshd_args(&dir, args);
        let meshd_args: Vec<&str> = meshd_args.iter().map(String::as_str).collect();
        let meshd = Meshd::start(config.path(), dir.path(), &meshd_args);
        let root = dir.path().join("ca/root-cert.pem");
        let client = Envoy::start_with(
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
                    root: root.clone(),
                    token: issuer.token("default", "bookinfo-productpage", "istio-ca", 3600, "k1"),
                },
                ..Default::default()
            },
            dir.path(),
        );
        let server = Envoy::start_with(
            &REVIEWS_V1,
            &EnvoyOpts {
                admin_port: 15100,
                interception: "NONE",
                xds: Xds::Tls {
                    root,
                    token: issuer.token("default", "bookinfo-reviews", "istio-ca", 3600, "k1"),
                },
                ..Default::default()
            },
            dir.path(),
        );
        Some(Mesh {
            issuer,
            _dir: dir,
            _config: config,
            meshd,
            client,
            server,
            _backends: backends,
        })
    }

    /// Through the client sidecar: (status, the client identity the server saw).
    fn via_mesh(&self) -> Option<(u16, String)> {
        self.get_via_mesh("/").map(|(s, x, _)| (s, x))
    }

    /// Through the client sidecar: (status, client identity the server saw, body).
    fn get_via_mesh(&self, path: &str) -> Option<(u16, String, String)> {
        let r = http_get("127.0.0.1:9080", path, &[("Host", "reviews")]).ok()?;
        let xfcc = r
            .headers
            .iter()
            .find(|(k, _)| k == "x-seen-x-forwarded-client-cert")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Some((r.status, xfcc, r.body))
    }

    /// Straight to the server sidecar in plaintext, as a workload without a sidecar would.
    fn plaintext_direct(&self) -> std::io::Result<HttpResponse> {
        self.plaintext_direct_path("/")
    }

    fn plaintext_direct_path(&self, path: &str) -> std::io::Result<HttpResponse> {
        http_get("127.0.0.12:9080", path, &[("Host", "reviews")])
    }

    fn handshakes(&self) -> u64 {
        self.server
            .stats("ssl.handshake")
            .iter()
            .filter(|(k, _)| k.starts_with("listener.127.0.0.12_9080"))
            .map(|(_, v)| *v)
            .sum()
    }

    fn assert_no_rejections(&self) {
        for e in [&self.client, &self.server] {
            let bad: Vec<_> = e
                .stats("update_rejected")
                .into_iter()
                .filter(|(_, v)| *v > 0)
                .collect();
            assert!(bad.is_empty(), "{bad:?}");
        }
        let syncz = self.meshd.get_json("/debug/syncz");
        for conn in syncz.as_array().expect("list") {
            let sds = &conn["types"]["type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"];
            assert_eq!(
                sds["sent_nonce"], sds["acked_nonce"],
                "secrets ACKed: {conn}"
            );
            assert!(!sds["sent_nonce"].is_null(), "secrets were sent: {conn}");
        }
    }
}

const CLIENT_ID: &str = "URI=spiffe://cluster.local/ns/default/sa/bookinfo-productpage";

/// Serial numbers of an Envoy's leaf certificates (the first of each chain in its admin
/// `/certs`; intermediates and roots never count).
fn leaf_serials(e: &Envoy) -> Vec<String> {
    let Ok(r) = http_get(&e.admin, "/certs", &[]) else {
        return vec![];
    };
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    v["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["cert_chain"][0]["serial_number"].as_str())
        .map(str::to_string)
        .collect()
}

/// STRICT mTLS between two sidecars with 20 s workload certificates, traffic every 50 ms
/// for 35 s: the certificates are renewed before they expire, and meshd (the CA) is
/// killed and restarted in the middle. Not one request fails; the restarted CA keeps its
/// root (the root file and the roots Envoy trusts are unchanged) and issues the new
/// certificates under it.
#[test]
fn certificates_rotate_and_survive_a_ca_restart_without_a_failed_request() {
    let Some(mut m) = Mesh::start_with_args("STRICT", &[], &["--workload-cert-ttl", "20s"]) else {
        return;
    };
    let (_, xfcc) = wait_mesh(&m);
    assert!(xfcc.contains(CLIENT_ID), "{xfcc:?}");
    let root_file = m._dir.path().join("ca/root-cert.pem");
    let root_before = std::fs::read_to_string(&root_file).expect("root");
    // Each leaf serial seen on the server sidecar, and whether first seen after the restart.
    let mut serials: Vec<(String, bool)> = Vec::new();
    let note = |e: &Envoy, serials: &mut Vec<(String, bool)>, restarted: bool| {
        for s in leaf_serials(e) {
            if !serials.iter().any(|(seen, _)| *seen == s) {
                serials.push((s, restarted));
            }
        }
    };
    note(&m.server, &mut serials, false);
    assert!(!serials.is_empty(), "the server sidecar has a certificate");

    let start = std::time::Instant::now();
    let (mut sent, mut failed) = (0, Vec::new());
    let mut restarted = false;
    let mut killed = false;
    // At least 35 s; longer (up to 50 s) until a renewal after the restart was seen: when
    // Envoy reconnects to the restarted meshd depends on its retry backoff.
    let renewed = |serials: &[(String, bool)]| serials.iter().filter(|(_, r)| *r).count() >= 2;
    while start.elapsed() < Duration::from_secs(35)
        || (!renewed(&serials) && start.elapsed() < Duration::from_secs(50))
    {
        let t = start.elapsed();
        if !killed && t > Duration::from_secs(8) {
            let _ = m.meshd.proc.child.kill();
            let _ = m.meshd.proc.child.wait();
            killed = true;
        }
        if killed && !restarted && t > Duration::from_secs(11) {
            let args = Mesh::meshd_args(&m._dir, &["--workload-cert-ttl", "20s"]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            m.meshd = Meshd::start(m._config.path(), m._dir.path(), &args);
            restarted = true;
        }
        sent += 1;
        match m.via_mesh() {
            Some((200, _)) => {}
            other => failed.push((t, other)),
        }
        note(&m.server, &mut serials, restarted);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sent > 300, "only {sent} requests");
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}",
        failed.len()
    );
    // After the restart: the restarted CA's certificate, and at least one renewal of it
    // before its 20 s ran out (the run lasts 24 s past the restart).
    assert!(
        renewed(&serials),
        "leaf certificates seen on the server sidecar: {serials:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&root_file).expect("root"),
        root_before,
        "the restarted CA kept its root"
    );
    let (_, xfcc) = wait_mesh(&m);
    assert!(xfcc.contains(CLIENT_ID), "{xfcc:?}");
    m.assert_no_rejections();
}

fn wait_mesh(m: &Mesh) -> (u16, String) {
    let start = std::time::Instant::now();
    loop {
        if let Some(ok) = m.via_mesh().filter(|(s, _)| *s == 200) {
            return ok;
        }
        if start.elapsed() > Duration::from_secs(20) {
            // Say why: TLS and connection counters of both sides.
            let pick = |e: &Envoy| -> Vec<(String, u64)> {
                e.stats("")
                    .into_iter()
                    .filter(|(k, v)| {
                        *v > 0
                            && (k.contains("ssl")
                                || k.contains("cx_connect_fail")
                                || k.contains("upstream_rq_")
                                || k.contains("no_filter_chain")
                                || k.contains("sds")
                                || k.contains("init_fetch_timeout"))
                    })
                    .collect()
            };
            panic!(
                "no request made it through both sidecars: last answer {:?}\nclient: {:?}\nserver: {:?}",
                m.via_mesh(),
                pick(&m.client),
                pick(&m.server)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn permissive_mtls_between_sidecars_carries_the_client_identity() {
    let Some(m) = Mesh::start("PERMISSIVE") else {
        return;
    };
    let (_, xfcc) = wait_mesh(&m);
    assert!(
        xfcc.contains(CLIENT_ID),
        "server saw the client's SPIFFE identity: {xfcc:?}"
    );
    assert!(m.handshakes() > 0, "the request crossed mTLS");
    // Between sidecars the handshake is TLS 1.3 (istiod's client and server TLS
    // parameters allow it; Envoy's own server default would stop at 1.2).
    let versions: Vec<(String, u64)> = m
        .server
        .stats("ssl.versions")
        .into_iter()
        .filter(|(k, v)| k.starts_with("listener.") && *v > 0)
        .collect();
    assert!(
        !versions.is_empty() && versions.iter().all(|(k, _)| k.ends_with("TLSv1.3")),
        "the server side negotiated TLS 1.3 only: {versions:?}"
    );
    // PERMISSIVE: a plaintext client is served too, with no identity.
    let r = m.plaintext_direct().expect("plaintext accepted");
    assert_eq!((r.status, r.body.as_str()), (200, "reviews-v1"));
    assert!(
        !r.headers
            .iter()
            .any(|(k, _)| k == "x-seen-x-forwarded-client-cert")
    );
    // Each proxy got its own certificate over SDS.
    let certs = http_get(&m.client.admin, "/certs", &[])
        .expect("certs")
        .body;
    assert!(
        certs.contains("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        "{certs}"
    );
    assert!(!certs.contains("bookinfo-reviews"), "only its own: {certs}");
    let certs = http_get(&m.server.admin, "/certs", &[])
        .expect("certs")
        .body;
    assert!(
        certs.contains("spiffe://cluster.local/ns/default/sa/bookinfo-reviews"),
        "{certs}"
    );
    m.assert_no_rejections();
}

#[test]
fn strict_refuses_plaintext() {
    let Some(m) = Mesh::start("STRICT") else {
        return;
    };
    let (_, xfcc) = wait_mesh(&m);
    assert!(xfcc.contains(CLIENT_ID), "{xfcc:?}");
    // Closed without an HTTP answer.
    if let Ok(r) = m.plaintext_direct() {
        panic!("STRICT served a plaintext client: {} {}", r.status, r.body);
    }
    m.assert_no_rejections();
}

#[test]
fn disable_means_plaintext_only() {
    let Some(m) = Mesh::start("DISABLE") else {
        return;
    };
    let (_, xfcc) = wait_mesh(&m);
    assert!(
        xfcc.is_empty(),
        "no mTLS, so no client certificate: {xfcc:?}"
    );
    assert_eq!(
        m.handshakes(),
        0,
        "auto mTLS saw DISABLE and sent plaintext"
    );
    let r = m.plaintext_direct().expect("plaintext accepted");
    assert_eq!(r.status, 200);
    m.assert_no_rejections();
}

const AUTHZ: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-allow}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]}
    to:
    - operation: {paths: ["/public*", "/admin*"], methods: ["GET"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-deny-admin}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin*"]}
"#;

#[test]
fn authorization_policy_allows_the_right_principal_and_path_only() {
    let Some(m) = Mesh::start_with("PERMISSIVE", &[("authz.yaml", AUTHZ)]) else {
        return;
    };
    let (status, xfcc, body) = wait_for("the allowed request", Duration::from_secs(20), || {
        m.get_via_mesh("/public/page").filter(|(s, _, _)| *s == 200)
    });
    assert_eq!((status, body.as_str()), (200, "reviews-v1"));
    assert!(xfcc.contains(CLIENT_ID), "{xfcc}");
    let (status, _, body) = m.get_via_mesh("/private").expect("answer");
    assert_eq!(
        (status, body.as_str()),
        (403, "RBAC: access denied"),
        "a path no rule allows"
    );
    let (status, _, body) = m.get_via_mesh("/admin/users").expect("answer");
    assert_eq!(
        (status, body.as_str()),
        (403, "RBAC: access denied"),
        "DENY wins over ALLOW"
    );
    // Without mTLS there is no principal: the ALLOW rule cannot match.
    let r = m.plaintext_direct_path("/public/page").expect("answer");
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "RBAC: access denied"),
        "no identity, no access"
    );
    let denied: u64 = m
        .server
        .stats("rbac")
        .iter()
        .filter(|(k, _)| k.ends_with("rbac.denied"))
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(
        denied, 3,
        "Envoy's RBAC filter denied exactly the three refused requests"
    );
    m.assert_no_rejections();
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn request_authentication(jwks_source: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: reviews-jwt}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules:
  - issuer: https://issuer.example
    audiences: [bookinfo]
    {jwks_source}
    outputClaimToHeaders:
    - {{header: x-jwt-sub, claim: sub}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews-require-jwt}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules:
  - from:
    - source: {{requestPrincipals: ["https://issuer.example/*"]}}
"#
    )
}

fn get_with_token(token: Option<&str>) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Host", "reviews")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    http_get("127.0.0.1:9080", "/", &headers).expect("answer")
}

fn check_jwt_outcomes(issuer: &TokenIssuer) {
    let claims = |iss: &str, aud: &str, exp: i64| serde_json::json!({"iss": iss, "sub": "user-1", "aud": [aud], "exp": exp, "iat": now()});
    let good = issuer.sign(
        &claims("https://issuer.example", "bookinfo", now() + 600),
        "jwt-key",
    );
    let r = wait_for("a valid token accepted", Duration::from_secs(20), || {
        Some(get_with_token(Some(&good))).filter(|r| r.status == 200)
    });
    assert_eq!(r.body, "reviews-v1");
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "x-seen-x-jwt-sub" && v == "user-1"),
        "outputClaimToHeaders: {:?}",
        r.headers
    );
    let none = get_with_token(None);
    assert_eq!(
        (none.status, none.body.as_str()),
        (403, "RBAC: access denied"),
        "no token"
    );
    let forged = TokenIssuer::new("jwt-key").sign(
        &claims("https://issuer.example", "bookinfo", now() + 600),
        "jwt-key",
    );
    assert_eq!(
        get_with_token(Some(&forged)).status,
        401,
        "a token signed by another key"
    );
    let expired = issuer.sign(
        &claims("https://issuer.example", "bookinfo", now() - 600),
        "jwt-key",
    );
    assert_eq!(
        get_with_token(Some(&expired)).status,
        401,
        "an expired token"
    );
    let wrong_aud = issuer.sign(
        &claims("https://issuer.example", "other", now() + 600),
        "jwt-key",
    );
    // A token for another audience is forbidden, not unauthenticated: Envoy answers 403
    // (from jwt_authn, "Audiences in Jwt are not allowed", or from RBAC when it treats the
    // token as not this provider's).
    let r = get_with_token(Some(&wrong_aud));
    assert_eq!(r.status, 403, "a token for another audience: {}", r.body);
}

#[test]
fn request_authentication_with_inline_jwks() {
    let issuer = TokenIssuer::new("jwt-key");
    let jwks = format!("jwks: '{}'", issuer.jwks);
    let Some(m) = Mesh::start_with(
        "PERMISSIVE",
        &[("jwt.yaml", &request_authentication(&jwks))],
    ) else {
        return;
    };
    check_jwt_outcomes(&issuer);
    m.assert_no_rejections();
}

#[test]
fn request_authentication_with_jwks_uri_through_a_generated_cluster() {
    let issuer = TokenIssuer::new("jwt-key");
    let source = "jwksUri: http://127.0.1.50:8000/.well-known/jwks.json";
    let Some(m) = Mesh::start_with(
        "PERMISSIVE",
        &[("jwt.yaml", &request_authentication(source))],
    ) else {
        return;
    };
    let _jwks_server = StaticServer::start("127.0.1.50", 8000, &issuer.jwks);
    check_jwt_outcomes(&issuer);
    let fetched: u64 = m
        .server
        .stats("outbound|8000||127.0.1.50")
        .iter()
        .filter(|(k, _)| k.ends_with("upstream_rq_200"))
        .map(|(_, v)| *v)
        .sum();
    assert!(
        fetched >= 1,
        "the JWKS was fetched through the generated cluster"
    );
    m.assert_no_rejections();
}

const EXT_AUTHZ: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: sample-ext-authz-http
      envoyExtAuthzHttp:
        service: ext-authz.local
        port: 8000
        includeRequestHeadersInCheck: [x-ext-authz]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext-authz}
spec:
  hosts: [ext-authz.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8000, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.1.70}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-ext-authz}
spec:
  selector: {matchLabels: {app: reviews}}
  action: CUSTOM
  provider: {name: sample-ext-authz-http}
  rules:
  - to:
    - operation: {paths: ["/guarded/*"]}
"#;

/// A real external authorizer (Istio's sample ext-authz contract): it allows a request
/// whose `x-ext-authz` header is `allow` and denies anything else with 403 and a body of
/// its own. It counts the checks it answered.
struct ExtAuthz {
    checks: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ExtAuthz {
    fn start(addr: &str) -> ExtAuthz {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind(addr).expect("ext-authz listener");
        l.set_nonblocking(true).expect("nonblocking");
        let checks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c2, s2) = (checks.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        // Envoy keeps the connection open: answer each request on it.
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        loop {
                            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                                match s.read(&mut chunk) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                                break;
                            };
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            buf.drain(..end + 4);
                            c2.fetch_add(1, Ordering::Relaxed);
                            let allowed = head.lines().any(|l| l.trim() == "x-ext-authz: allow");
                            let resp = if allowed {
                                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_string()
                            } else {
                                let body = "denied by ext-authz";
                                format!(
                                    "HTTP/1.1 403 Forbidden\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
                                    body.len()
                                )
                            };
                            if s.write_all(resp.as_bytes()).is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        ExtAuthz {
            checks,
            stop,
            thread: Some(thread),
        }
    }

    fn checks(&self) -> usize {
        self.checks.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for ExtAuthz {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CUSTOM: requests the policy selects are decided by the external authorizer named in
/// mesh config; the others never reach it.
#[test]
fn custom_action_asks_the_external_authorizer() {
    let Some(m) = Mesh::start_with("PERMISSIVE", &[("ext-authz.yaml", EXT_AUTHZ)]) else {
        return;
    };
    let authz = ExtAuthz::start("127.0.1.70:8000");
    let get = |path: &str, allow: bool| -> Option<HttpResponse> {
        let mut h = vec![("Host", "reviews")];
        if allow {
            h.push(("x-ext-authz", "allow"));
        }
        http_get("127.0.0.1:9080", path, &h).ok()
    };
    let r = wait_for("the authorizer's verdict", Duration::from_secs(20), || {
        get("/guarded/a", false).filter(|r| r.status == 403)
    });
    assert_eq!(r.body, "denied by ext-authz", "the authorizer's own answer");
    let before = authz.checks();
    assert!(before >= 1);
    let r = get("/guarded/a", true).expect("answer");
    assert_eq!((r.status, r.body.as_str()), (200, "reviews-v1"));
    let r = get("/open", false).expect("answer");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "reviews-v1"),
        "not selected by the policy"
    );
    assert_eq!(
        authz.checks(),
        before + 1,
        "only the selected request was checked"
    );
    m.assert_no_rejections();
}

/// `istioctl proxy-status` asks istiod over ADS (`istio.io/debug/syncz`, on 15012 with a
/// token): the connected proxies and, per type, whether what was sent was acknowledged.
#[test]
fn proxy_status_over_ads_like_istioctl() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DiscoveryRequest, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    };
    use envoy_types::pb::envoy::service::status::v3::{ClientConfig, ConfigStatus};
    use prost::Message;
    let Some(m) = Mesh::start("PERMISSIVE") else {
        return;
    };
    wait_mesh(&m);
    let root = std::fs::read_to_string(m._dir.path().join("ca/root-cert.pem")).expect("root");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    // What istioctl's ADS client sends: a node with GENERATOR=event.
    let ask = |addr: &'static str, ns: &'static str, token: Option<String>| {
        let root = root.clone();
        async move {
            let ch = if addr.ends_with("15012") {
                crate::ca::tls_channel(addr, &root, None).await
            } else {
                tonic::transport::Endpoint::try_from(format!("http://{addr}"))
                    .expect("endpoint")
                    .connect()
                    .await
                    .expect("connect")
            };
            let mut client = AggregatedDiscoveryServiceClient::new(ch);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(DiscoveryRequest {
                node: Some(Node {
                    id: format!("sidecar~127.0.0.99~istioctl.{ns}~{ns}.svc.cluster.local"),
                    metadata: Some(meshd::envoy::pb::to_struct(&serde_json::json!({
                        "GENERATOR": "event", "NAMESPACE": ns
                    }))),
                    ..Default::default()
                }),
                type_url: "istio.io/debug/syncz".into(),
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
            let r = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .expect("an answer");
            drop(tx);
            r.map(|r| {
                r.map(|r| {
                    r.resources
                        .iter()
                        .map(|a| ClientConfig::decode(a.value.as_slice()).expect("ClientConfig"))
                        .collect::<Vec<_>>()
                })
            })
        }
    };
    rt.block_on(async {
        let system = m
            .issuer
            .token("istio-system", "istioctl", "istio-ca", 600, "k1");
        let configs = ask("127.0.0.1:15012", "istio-system", Some(system))
            .await
            .expect("answered")
            .expect("a response");
        let ids: Vec<&str> = configs
            .iter()
            .filter_map(|c| c.node.as_ref().map(|n| n.id.as_str()))
            .collect();
        assert_eq!(
            ids.len(),
            2,
            "the two sidecars, not istioctl itself: {ids:?}"
        );
        for c in &configs {
            let status = |t: &str| {
                c.generic_xds_configs
                    .iter()
                    .find(|g| g.type_url.ends_with(t))
                    .map(|g| g.config_status)
            };
            for t in ["Cluster", "Listener", "ClusterLoadAssignment", "Secret"] {
                assert_eq!(status(t), Some(ConfigStatus::Synced as i32), "{t}: {c:?}");
            }
        }
        // Another namespace sees only its own proxies.
        let other = m.issuer.token("team-b", "tools", "istio-ca", 600, "k1");
        let configs = ask("127.0.0.1:15012", "team-b", Some(other))
            .await
            .expect("ok")
            .expect("r");
        assert!(configs.is_empty(), "no proxies of team-b: {configs:?}");
        // Plaintext (`istioctl proxy-status --plaintext`, as istiod answers it): every
        // proxy, as the HTTP debug port shows them too; no secret is involved.
        let all = ask("127.0.0.1:15010", "istio-system", None)
            .await
            .expect("answered")
            .expect("r");
        assert_eq!(all.len(), 2, "both proxies: {all:?}");
    });
}

/// istio_requests_total and its histograms with upstream Envoy: each request between the
/// two sidecars is counted once by the client (reporter="source") and once by the server
/// (reporter="destination", over mTLS, with the client's identity), with the workloads,
/// service and response Kiali reads; meshd learns them from the proxies' access logs.
#[test]
fn mesh_metrics_count_each_request_from_both_sides() {
    let Some(m) = Mesh::start("PERMISSIVE") else {
        return;
    };
    // Every answered request is counted, including the first ones that got through.
    let mut ok = 0;
    let start = std::time::Instant::now();
    while ok == 0 {
        if m.via_mesh().is_some_and(|(s, _)| s == 200) {
            ok += 1;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no request got through"
        );
    }
    for _ in 0..7 {
        let (status, _) = m.via_mesh().expect("answer");
        assert_eq!(status, 200);
        ok += 1;
    }
    let source = [
        ("reporter", "source"),
        ("source_workload", "productpage-v1"),
        ("source_workload_namespace", "default"),
        ("source_app", "productpage"),
        ("source_canonical_service", "productpage"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        ),
        ("destination_workload", "reviews-v1"),
        ("destination_version", "v1"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "default"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
        ),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    let destination = [
        ("reporter", "destination"),
        ("source_workload", "productpage-v1"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        ),
        ("destination_workload", "reviews-v1"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("response_code", "200"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let want = f64::from(ok);
    let text = wait_for(
        "both sides' counts at meshd",
        Duration::from_secs(20),
        || {
            let text = http_get("127.0.0.1:15014", "/metrics", &[]).ok()?.body;
            let counted = |l: &[(&str, &str)]| {
                metric_value(&text, "istio_requests_total", l).is_some_and(|v| v >= want)
            };
            (counted(&source) && counted(&destination)).then_some(text)
        },
    );
    for (side, labels) in [("source", &source[..]), ("destination", &destination[..])] {
        assert_eq!(
            metric_value(&text, "istio_requests_total", labels),
            Some(want),
            "{side}: one count per request\n{text}"
        );
        assert_eq!(
            metric_value(&text, "istio_request_duration_milliseconds_count", labels),
            Some(want),
            "{side}"
        );
        let mut inf = labels.to_vec();
        inf.push(("le", "+Inf"));
        assert_eq!(
            metric_value(&text, "istio_response_bytes_bucket", &inf),
            Some(want),
            "{side}"
        );
        // The backend's answer ("reviews-v1") and its headers: more than 10 bytes each.
        let mut small = labels.to_vec();
        small.push(("le", "10"));
        assert_eq!(
            metric_value(&text, "istio_response_bytes_bucket", &small),
            Some(0.0),
            "{side}"
        );
    }

    // Telemetry turns productpage's client-side metrics off: its requests are still
    // counted by reviews (the server side), no longer by productpage.
    m._config.write(
        "telemetry.yaml",
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: productpage, namespace: default}\nspec:\n  selector: {matchLabels: {app: productpage}}\n  metrics:\n  - providers: [{name: prometheus}]\n    overrides:\n    - match: {metric: ALL_METRICS, mode: CLIENT}\n      disabled: true\n",
    );
    wait_for(
        "productpage's listeners without the metrics log",
        Duration::from_secs(20),
        || {
            let dump: serde_json::Value = serde_json::from_str(
                &http_get(
                    &m.client.admin,
                    "/config_dump?resource=dynamic_listeners",
                    &[],
                )
                .ok()?
                .body,
            )
            .ok()?;
            // Active listeners only (old ones may drain beside them), none warming.
            let listeners = dump["configs"].as_array()?;
            let done = listeners.iter().all(|l| {
                l["warming_state"].is_null()
                    && !l["active_state"]
                        .to_string()
                        .contains("meshd-metrics-source")
            });
            done.then_some(())
        },
    );
    let count = |labels: &[(&str, &str)]| {
        http_get("127.0.0.1:15014", "/metrics", &[])
            .ok()
            .and_then(|r| metric_value(&r.body, "istio_requests_total", labels))
    };
    // (Records sent before the change may still be on their way: wait for both sides to
    // agree first.)
    let settled = wait_for("both sides counted alike", Duration::from_secs(20), || {
        let (a, b) = (count(&source)?, count(&destination)?);
        (a == b).then_some(a)
    });
    for _ in 0..5 {
        let (status, _) = m.via_mesh().expect("answer");
        assert_eq!(status, 200);
    }
    wait_for("reviews counts 5 more", Duration::from_secs(20), || {
        (count(&destination)? == settled + 5.0).then_some(())
    });
    assert_eq!(
        count(&source),
        Some(settled),
        "productpage no longer counts"
    );
    m.assert_no_rejections();
}

/// Telemetry metric overrides on meshd's own series (upstream Envoy): reviews' server
/// side drops one metric, removes a label, computes two from the request (its host and a
/// header, which its access log then carries) and sets one to a literal; the other
/// metrics and productpage's client side keep istio-proxy's labels.
#[test]
fn mesh_metrics_follow_telemetry_overrides() {
    let Some(m) = Mesh::start("PERMISSIVE") else {
        return;
    };
    // Every request answered 200 through productpage is one record from each side; the
    // counts settle when meshd holds exactly that many (records arrive up to a flush
    // interval late, from two Envoys independently).
    let answered = std::cell::Cell::new(0.0);
    wait_for(
        "a request through the mesh",
        Duration::from_secs(20),
        || {
            let r = m.via_mesh().filter(|(s, _)| *s == 200)?;
            answered.set(answered.get() + 1.0);
            Some(r)
        },
    );
    m._config.write(
        "telemetry.yaml",
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT, mode: SERVER}
      tagOverrides:
        response_flags: {operation: REMOVE}
        request_host: {value: "request.host"}
        tenant: {value: "request.headers['x-tenant']"}
        source_app: {value: "'overridden'"}
    - match: {metric: REQUEST_SIZE, mode: SERVER}
      disabled: true
"#,
    );
    wait_for(
        "reviews' access log carrying x-tenant",
        Duration::from_secs(20),
        || {
            let dump = http_get(
                &m.server.admin,
                "/config_dump?resource=dynamic_listeners",
                &[],
            )
            .ok()?
            .body;
            let v: serde_json::Value = serde_json::from_str(&dump).ok()?;
            let listeners = v["configs"].as_array()?;
            listeners
                .iter()
                .all(|l| l["warming_state"].is_null())
                .then_some(())
                .filter(|_| dump.contains("x-tenant"))
        },
    );
    let scrape = || {
        http_get("127.0.0.1:15014", "/metrics", &[])
            .expect("metrics")
            .body
    };
    let base_destination = [
        ("reporter", "destination"),
        ("source_workload", "productpage-v1"),
        ("source_app", "productpage"),
        ("destination_workload", "reviews-v1"),
        ("response_code", "200"),
    ];
    // The requests counted are tagged `t1`; those that only wait for the change, `t0`.
    let overridden = |tenant| {
        [
            ("reporter", "destination"),
            ("source_workload", "productpage-v1"),
            ("source_app", "overridden"),
            ("response_flags", ""),
            ("request_host", "reviews"),
            ("tenant", tenant),
        ]
    };
    let source = [
        ("reporter", "source"),
        ("source_app", "productpage"),
        ("destination_workload", "reviews-v1"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    let send = |tenant: &str| {
        let r = http_get(
            "127.0.0.1:9080",
            "/",
            &[("Host", "reviews"), ("x-tenant", tenant)],
        )
        .expect("answer");
        assert_eq!(r.status, 200);
        answered.set(answered.get() + 1.0);
    };
    // A connection opened before the change keeps its old access log (without the
    // header) until it closes, which the draining listener asks for: wait for a request
    // counted under the new labels.
    wait_for(
        "a request under the new labels",
        Duration::from_secs(20),
        || {
            send("t0");
            metric_value(&scrape(), "istio_requests_total", &overridden("t0")).map(|_| ())
        },
    );
    let read = |text: &str| {
        (
            metric_value(text, "istio_requests_total", &overridden("t1")).unwrap_or(0.0),
            metric_value(
                text,
                "istio_request_duration_milliseconds_count",
                &base_destination,
            )
            .unwrap_or(0.0),
            metric_value(text, "istio_request_bytes_count", &base_destination).unwrap_or(0.0),
            metric_value(text, "istio_requests_total", &source).unwrap_or(0.0),
        )
    };
    // Every request reviews answered, under whatever labels: whether the records have
    // arrived, apart from what the overrides do to them.
    let served = |text: &str| {
        metric_sum(
            text,
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("destination_workload", "reviews-v1"),
                ("response_code", "200"),
            ],
        )
    };
    // Records already sent may still be arriving: until both sides hold every request.
    let before = wait_for("settled counts", Duration::from_secs(20), || {
        let text = scrape();
        let c = read(&text);
        (served(&text) == answered.get() && c.3 == answered.get()).then_some(c)
    });
    assert_eq!(before.0, 0.0, "no request was tagged t1 yet");
    let n = 6.0;
    for _ in 0..6 {
        send("t1");
    }
    // Every record in, then each family held to what the overrides say.
    let text = wait_for("every record in", Duration::from_secs(20), || {
        let text = scrape();
        (served(&text) == answered.get() && read(&text).3 == answered.get()).then_some(text)
    });
    let (counted, duration, size, client) = read(&text);
    assert_eq!(
        counted,
        before.0 + n,
        "requests under the overridden labels\n{text}"
    );
    assert_eq!(
        duration,
        before.1 + n,
        "durations keep the standard labels\n{text}"
    );
    assert_eq!(
        client,
        before.3 + n,
        "productpage's side is unchanged\n{text}"
    );
    assert_eq!(
        size, before.2,
        "request sizes are dropped on reviews' side\n{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("istio_request_bytes") && l.contains("tenant=")),
        "no size series with the overridden labels\n{text}"
    );
    m.assert_no_rejections();
}
