//! RateLimitPolicy (policy.meshd.io) through real Envoys: a token bucket refusing exactly
//! what it should, buckets per header value and per client identity (mTLS between
//! sidecars), a global limit asked of a real gRPC rate limit service (and what happens
//! when it is down), shadow mode, and Istio's EnvoyFilter recipe working beside a policy.
//!
//! reviews-v1's sidecar owns 127.0.0.12:9080 (no iptables) and hands requests to the
//! application on 127.0.1.12:9080; productpage's and details' sidecars are the mTLS
//! clients (their egress bound on 127.0.0.1:9080 and 127.0.1.98:9080).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

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
  metadata: {name: details-v1, labels: {app: details, version: v1, security.istio.io/tlsMode: istio}}
  spec: {serviceAccountName: bookinfo-details, containers: [{name: app, image: x}]}
  status: {podIP: 127.0.0.11}
- apiVersion: v1
  kind: Pod
  metadata: {name: reviews-v1, labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}}
  spec: {serviceAccountName: bookinfo-reviews, containers: [{name: app, image: x}]}
  status: {podIP: 127.0.0.12}
"#;

const SIDECARS: &str = r#"
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
  # Bound apart from the clients' egress (127.0.0.1:9080), which it would share.
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: 127.0.1.99
    captureMode: NONE
    hosts: ["./*"]
  - hosts: ["./*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: details}
spec:
  workloadSelector: {labels: {app: details}}
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: 127.0.1.98
    captureMode: NONE
    hosts: ["./*"]
"#;

// Fields drop in order: processes first, then the folders holding their logs.
struct Mesh {
    meshd: Meshd,
    server: Envoy,
    clients: Vec<Envoy>,
    _backends: Backends,
    config: TempDir,
    dir: TempDir,
}

impl Mesh {
    /// meshd, reviews' sidecar and (with `clients`) productpage's and details' sidecars,
    /// all authenticated on 15012; `extra` configuration files beside Bookinfo's.
    fn start(extra: &[(&str, &str)], clients: bool) -> Option<Mesh> {
        if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
            return None;
        }
        if !isolate() {
            return None;
        }
        let dir = TempDir::new("ratelimit");
        let config = TempDir::new("ratelimit-config");
        config.copy_from(
            &repo().join("examples/bookinfo/services.yaml"),
            "services.yaml",
        );
        config.copy_from(
            &repo().join("examples/bookinfo/sidecar-productpage.yaml"),
            "sidecar-productpage.yaml",
        );
        config.write("pods.yaml", PODS);
        config.write("sidecars.yaml", SIDECARS);
        for (name, text) in extra {
            config.write(name, text);
        }
        let issuer = TokenIssuer::new("k1");
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, &issuer.jwks).expect("jwks");
        let backends = Backends::start(&[("reviews-v1", "127.0.1.12")], 9080);
        let meshd = Meshd::start(
            config.path(),
            dir.path(),
            &["--ca-jwks", &jwks.display().to_string()],
        );
        let root = dir.path().join("ca/root-cert.pem");
        let sidecar = |ip: &str, pod: &str, app: &str, sa: &str, admin: u16| {
            Envoy::start_with(
                &NodeSpec {
                    kind: "sidecar",
                    ip,
                    pod,
                    namespace: "default",
                    labels: &[("app", app), ("version", "v1")],
                    service_account: sa,
                },
                &EnvoyOpts {
                    admin_port: admin,
                    interception: "NONE",
                    xds: Xds::Tls {
                        root: root.clone(),
                        token: issuer.token("default", sa, "istio-ca", 3600, "k1"),
                    },
                    ..Default::default()
                },
                dir.path(),
            )
        };
        let server = sidecar(
            "127.0.0.12",
            "reviews-v1",
            "reviews",
            "bookinfo-reviews",
            15100,
        );
        let clients = if clients {
            vec![
                sidecar(
                    "127.0.0.10",
                    "productpage-v1",
                    "productpage",
                    "bookinfo-productpage",
                    15000,
                ),
                sidecar(
                    "127.0.0.11",
                    "details-v1",
                    "details",
                    "bookinfo-details",
                    15101,
                ),
            ]
        } else {
            Vec::new()
        };
        Some(Mesh {
            meshd,
            server,
            clients,
            _backends: backends,
            config,
            dir,
        })
    }

    /// Straight to reviews' sidecar, in plaintext (None while it does not answer:
    /// for waits).
    fn try_get(&self, path: &str, headers: &[(&str, &str)]) -> Option<HttpResponse> {
        let mut h = vec![("Host", "reviews")];
        h.extend_from_slice(headers);
        http_get("127.0.0.12:9080", path, &h).ok()
    }

    /// Straight to reviews' sidecar, in plaintext.
    fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.try_get(path, headers)
            .expect("an answer from reviews' sidecar")
    }

    /// Statuses of `n` requests, one after the other.
    fn statuses(&self, n: usize, headers: &[(&str, &str)]) -> Vec<u16> {
        (0..n).map(|_| self.get("/", headers).status).collect()
    }

    /// A stat of reviews' sidecar (summed over names ending in `suffix`).
    fn server_stat(&self, filter: &str, suffix: &str) -> u64 {
        self.server
            .stats(filter)
            .iter()
            .filter(|(k, _)| k.ends_with(suffix))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Waits until a request shows the policy in force (`pred` on a fresh answer).
    fn wait_policy(
        &self,
        what: &str,
        headers: &[(&str, &str)],
        pred: impl Fn(&HttpResponse) -> bool,
    ) {
        wait_for(what, Duration::from_secs(20), || {
            let r = self.try_get("/", headers)?;
            pred(&r).then_some(())
        });
    }

    fn assert_no_rejections(&self) {
        for e in std::iter::once(&self.server).chain(&self.clients) {
            let bad: Vec<_> = e
                .stats("update_rejected")
                .into_iter()
                .filter(|(_, v)| *v > 0)
                .collect();
            assert!(bad.is_empty(), "{bad:?}");
        }
        self.meshd.assert_no_nacks();
    }
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// A status and the response headers.
type Reply = (u16, Vec<(String, String)>);

/// The status and headers of `n` requests sent at the same instant (connections opened
/// first, then every request written at once), and how long the burst took from the
/// first write to the last answer.
fn burst(n: usize) -> (Vec<Reply>, Duration) {
    let mut conns: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect("127.0.0.12:9080").expect("connect"))
        .collect();
    for c in &conns {
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = c.set_nodelay(true);
    }
    let req = b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n";
    let start = Instant::now();
    for c in &mut conns {
        c.write_all(req).expect("write");
    }
    // Each answer read to its end by its length (Envoy holds a connection open a while
    // after a local reply, so waiting for the close would time the hold, not the answer).
    let answers: Vec<Reply> = conns
        .into_iter()
        .map(|mut c| {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let (status, headers) = parse_head(&head).unwrap_or((0, Vec::new()));
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        return (status, headers);
                    }
                }
                match c.read(&mut chunk) {
                    Ok(0) | Err(_) => return (0, Vec::new()),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .collect();
    (answers, start.elapsed())
}

const LOCAL: &str = r#"
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: reviews-local, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  local: {requests: 10, unit: SECOND, burst: 10}
  response:
    rateLimitHeaders: true
    headers: {x-limited-by: meshd}
"#;

/// 10 requests a second with a burst of 10: of 30 sent at once exactly 10 pass, the other
/// 20 are refused with 429 and the headers asked for; a second later the bucket is full
/// again.
#[test]
fn local_bucket_admits_its_burst_and_refills() {
    let Some(m) = Mesh::start(&[("ratelimit.yaml", LOCAL)], false) else {
        return;
    };
    m.wait_policy("the policy in force", &[], |r| {
        r.header("x-ratelimit-limit").is_some()
    });
    // Envoy refills continuously (10 tokens a second): a burst counts exactly when it
    // ends within a tenth of a second of its start, before one more token can come. A
    // slower one (a loaded machine) may admit one more per tenth; it is measured again.
    let mut clean = None;
    for _ in 0..10 {
        // A full bucket: a second at 10 a second refills all 10.
        std::thread::sleep(Duration::from_millis(1100));
        let (answers, took) = burst(30);
        let passed = answers.iter().filter(|(s, _)| *s == 200).count();
        let refused = answers.iter().filter(|(s, _)| *s == 429).count();
        assert_eq!(
            passed + refused,
            30,
            "every request answered 200 or 429: {answers:?}"
        );
        let extra = (took.as_millis() / 100) as usize;
        assert!(
            (10..=10 + extra + 1).contains(&passed),
            "{passed} passed in a burst of {took:?}"
        );
        if took < Duration::from_millis(90) {
            clean = Some(answers);
            break;
        }
    }
    let answers = clean.expect("a burst of 30 requests answered within 90 ms");
    let passed = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(passed, 10, "exactly the burst passes");
    let refused: Vec<&Vec<(String, String)>> = answers
        .iter()
        .filter(|(s, _)| *s == 429)
        .map(|(_, h)| h)
        .collect();
    assert_eq!(refused.len(), 20);
    for h in refused {
        let get = |name: &str| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("x-limited-by"), Some("meshd"), "{h:?}");
        assert_eq!(get("x-ratelimit-remaining"), Some("0"), "{h:?}");
        assert!(
            get("x-ratelimit-limit").is_some_and(|v| v.starts_with("10")),
            "{h:?}"
        );
        assert!(get("x-ratelimit-reset").is_some(), "{h:?}");
    }
    // A second later: 10 tokens again.
    std::thread::sleep(Duration::from_millis(1100));
    let after = m.statuses(10, &[]);
    assert_eq!(count(&after, 200), 10, "refilled: {after:?}");
    assert!(m.server_stat("ratelimit_default_reviews-local", "rate_limited") >= 20);
    m.assert_no_rejections();
}

const PER_USER: &str = r#"
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: per-user, namespace: default}
spec:
  targetRefs: [{group: "", kind: Service, name: reviews}]
  local: {requests: 5, unit: HOUR}
  descriptors: [{header: x-user}]
"#;

/// A bucket per value of a header: two users each get their own 5 (an hour), and
/// requests without the header share one more.
#[test]
fn header_descriptors_give_each_user_a_budget() {
    let Some(m) = Mesh::start(&[("ratelimit.yaml", PER_USER)], false) else {
        return;
    };
    m.wait_policy("the policy in force", &[("x-user", "probe")], |r| {
        r.status == 429
    });
    let alice = m.statuses(8, &[("x-user", "alice")]);
    let bob = m.statuses(8, &[("x-user", "bob")]);
    let nobody = m.statuses(8, &[]);
    for (who, s) in [("alice", &alice), ("bob", &bob), ("no header", &nobody)] {
        assert_eq!(count(s, 200), 5, "{who}: {s:?}");
        assert_eq!(count(s, 429), 3, "{who}: {s:?}");
        // First the budget, then refusals.
        assert_eq!(&s[..5], &[200; 5], "{who}: {s:?}");
    }
    m.assert_no_rejections();
}

const PER_PRINCIPAL: &str = r#"
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: per-client, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  local: {requests: 3, unit: HOUR}
  descriptors: [{principal: {}}]
  response: {rateLimitHeaders: true}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: STRICT}
"#;

/// Per client identity, over mTLS between sidecars: productpage and details each get 3
/// (an hour) at reviews, whichever connection they come on.
#[test]
fn principal_descriptors_follow_the_client_identity() {
    let Some(m) = Mesh::start(&[("ratelimit.yaml", PER_PRINCIPAL)], true) else {
        return;
    };
    let via = |egress: &str| -> HttpResponse {
        http_get(egress, "/", &[("Host", "reviews")]).expect("an answer through the mesh")
    };
    // The first answer through each client sidecar proves mTLS and the identity.
    for (egress, sa) in [
        ("127.0.0.1:9080", "bookinfo-productpage"),
        ("127.0.1.98:9080", "bookinfo-details"),
    ] {
        let r = wait_for(
            "mTLS through the client sidecar",
            Duration::from_secs(20),
            || {
                http_get(egress, "/", &[("Host", "reviews")])
                    .ok()
                    .filter(|r| r.status == 200)
            },
        );
        let xfcc = r
            .header("x-seen-x-forwarded-client-cert")
            .unwrap_or_default();
        assert!(
            xfcc.contains(&format!("spiffe://cluster.local/ns/default/sa/{sa}")),
            "{xfcc}"
        );
    }
    // Each has spent one of 3: two more pass, then refusals.
    let pp: Vec<u16> = (0..4).map(|_| via("127.0.0.1:9080").status).collect();
    let details: Vec<u16> = (0..4).map(|_| via("127.0.1.98:9080").status).collect();
    assert_eq!(pp, vec![200, 200, 429, 429], "productpage");
    assert_eq!(details, vec![200, 200, 429, 429], "details");
    m.assert_no_rejections();
}

const SHADOW: &str = r#"
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: shadow, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  local: {requests: 2, unit: MINUTE}
  shadow: true
"#;

/// Shadow mode refuses nothing and counts what it would have refused.
#[test]
fn shadow_mode_counts_without_refusing() {
    let Some(m) = Mesh::start(&[("ratelimit.yaml", SHADOW)], false) else {
        return;
    };
    wait_for("the policy in force", Duration::from_secs(20), || {
        let r = http_get("127.0.0.12:9080", "/", &[("Host", "reviews")]).ok()?;
        (r.status == 200
            && m.server_stat("ratelimit_default_shadow", "http_local_rate_limit.enabled") > 0)
            .then_some(())
    });
    let before = m.server_stat(
        "ratelimit_default_shadow",
        "http_local_rate_limit.rate_limited",
    );
    let s = m.statuses(6, &[]);
    assert_eq!(count(&s, 200), 6, "nothing refused: {s:?}");
    let after = m.server_stat(
        "ratelimit_default_shadow",
        "http_local_rate_limit.rate_limited",
    );
    assert!(after >= before + 4, "the counter rose: {before} -> {after}");
    assert!(after >= 4, "{after}");
    m.assert_no_rejections();
}

const GLOBAL: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: ratelimit
      envoyRateLimit:
        service: ratelimit.local
        port: 8081
        domain: bookinfo
        timeout: 2s
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratelimit}
spec:
  hosts: [ratelimit.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8081, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.1.80}]
"#;

/// A VirtualService route whose policy asks the same service from the client side.
const ROUTE_GLOBAL: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: api
    match: [{uri: {prefix: /v2api}}]
    route: [{destination: {host: reviews}}]
  - name: rest
    route: [{destination: {host: reviews}}]
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: v2api, namespace: default}
spec:
  targetRefs: [{group: networking.istio.io, kind: VirtualService, name: reviews, sectionName: api}]
  global: {provider: ratelimit, domain: routes}
  descriptors: [{header: x-user}]
"#;

fn global_policy(mode: &str) -> String {
    format!(
        r#"
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: global, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  global: {{provider: ratelimit, failureMode: {mode}}}
  descriptors: [{{header: x-user}}, {{pathPrefix: [/api]}}]
"#
    )
}

/// The rate limit service is asked with the policy's descriptors (domain, the user's
/// header, the path prefix) and its OVER_LIMIT answers become 429s; when it is down,
/// failure mode ALLOW lets requests through and DENY refuses them.
#[test]
fn global_limit_asks_the_rate_limit_service() {
    let Some(py) = crate::grpc::python() else {
        assert!(
            !skip_or_fail("python with grpcio is not installed"),
            "grpcio missing"
        );
        return;
    };
    let Some(m) = Mesh::start(
        &[
            ("global.yaml", GLOBAL),
            ("policy.yaml", &global_policy("ALLOW")),
            ("route.yaml", ROUTE_GLOBAL),
        ],
        true,
    ) else {
        return;
    };
    let log = m.dir.path().join("ratelimit-requests.jsonl");
    let service = Proc::spawn(
        "ratelimit-service",
        Command::new(&py)
            .arg(repo().join("tests/support/ratelimit_service.py"))
            .args(["127.0.1.80:8081", "2"])
            .arg(&log),
        m.dir.path(),
    );
    wait_for("the rate limit service", Duration::from_secs(20), || {
        service.log_text().contains("ready").then_some(())
    });
    let seen = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    // The policy is in force once the service hears of a request.
    wait_for("the service asked", Duration::from_secs(20), || {
        let r = m.try_get("/api/probe", &[("x-user", "probe")])?;
        (r.status == 200 && !seen().is_empty()).then_some(())
    });
    let alice: Vec<u16> = (0..4)
        .map(|_| m.get("/api/items", &[("x-user", "alice")]).status)
        .collect();
    assert_eq!(alice, vec![200, 200, 429, 429], "the service's verdicts");
    // Outside the prefix no descriptor is complete: the service is not asked.
    let asked = seen().len();
    let other = m.get("/other", &[("x-user", "alice")]);
    assert_eq!(other.status, 200);
    assert_eq!(seen().len(), asked, "nothing to ask outside /api");
    let last = seen().pop().expect("a request");
    assert_eq!(last["domain"], "bookinfo");
    assert_eq!(
        last["descriptors"],
        serde_json::json!([[["x-user", "alice"], ["path_prefix", "/api"]]]),
        "{last}"
    );
    assert_eq!(last["code"], "OVER_LIMIT");

    // A route's policy, in productpage's sidecar: only the VirtualService rule it names
    // asks the service, with its own domain and descriptors.
    let via = |path: &str, user: &str| -> u16 {
        http_get(
            "127.0.0.1:9080",
            path,
            &[("Host", "reviews"), ("x-user", user)],
        )
        .map(|r| r.status)
        .unwrap_or(0)
    };
    wait_for("the route's policy", Duration::from_secs(20), || {
        (via("/v2api/probe", "probe") == 200 && seen().iter().any(|r| r["domain"] == "routes"))
            .then_some(())
    });
    let erin: Vec<u16> = (0..3).map(|_| via("/v2api/x", "erin")).collect();
    assert_eq!(
        erin,
        vec![200, 200, 429],
        "the service's verdicts at the client"
    );
    let last = seen().pop().expect("a request");
    assert_eq!(last["domain"], "routes");
    assert_eq!(
        last["descriptors"],
        serde_json::json!([[["x-user", "erin"]]])
    );
    let asked = seen().len();
    assert_eq!(via("/other", "erin"), 200, "the other rule");
    assert_eq!(seen().len(), asked, "the other rule asks nothing");

    // The service goes away: ALLOW lets requests through.
    drop(service);
    let r = wait_for(
        "requests pass without the service",
        Duration::from_secs(20),
        || {
            m.try_get("/api/items", &[("x-user", "carol")])
                .filter(|r| r.status == 200)
        },
    );
    assert_eq!(r.body, "reviews-v1");
    // DENY: refused while the service cannot answer.
    m.config.write("policy.yaml", &global_policy("DENY"));
    wait_for("DENY in force", Duration::from_secs(20), || {
        m.try_get("/api/items", &[("x-user", "carol")])
            .filter(|r| r.status == 500)
    });
    let s: Vec<u16> = (0..3)
        .map(|_| m.get("/api/items", &[("x-user", "dave")]).status)
        .collect();
    assert_eq!(s, vec![500, 500, 500]);
    m.assert_no_rejections();
}

/// Istio's local rate limit recipe (an EnvoyFilter on the inbound HTTP connection
/// manager, its own header on refusals), beside a policy on the same sidecar.
const ENVOY_FILTER: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: filter-local-ratelimit-svc, namespace: default}
spec:
  workloadSelector: {labels: {app: reviews}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: {max_tokens: 4, tokens_per_fill: 4, fill_interval: 60s}
            filter_enabled:
              runtime_key: local_rate_limit_enabled
              default_value: {numerator: 100, denominator: HUNDRED}
            filter_enforced:
              runtime_key: local_rate_limit_enforced
              default_value: {numerator: 100, denominator: HUNDRED}
            response_headers_to_add:
            - append_action: APPEND_IF_EXISTS_OR_ADD
              header: {key: x-local-rate-limit, value: "true"}
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  local: {requests: 2, unit: MINUTE}
  response: {headers: {x-limited-by: meshd}}
"#;

#[test]
fn envoy_filter_recipe_still_works_beside_a_policy() {
    let Some(m) = Mesh::start(&[("ratelimit.yaml", ENVOY_FILTER)], false) else {
        return;
    };
    // Both in force: the EnvoyFilter's counter moves and the policy's filter is there.
    // (In the active listener, not one still warming.)
    wait_for("both filters in force", Duration::from_secs(20), || {
        let dump: serde_json::Value = serde_json::from_str(
            &http_get(
                &m.server.admin,
                "/config_dump?resource=dynamic_listeners",
                &[],
            )
            .ok()?
            .body,
        )
        .ok()?;
        dump["configs"]
            .as_array()?
            .iter()
            .filter(|c| c["warming_state"].is_null())
            .map(|c| c["active_state"]["listener"].to_string())
            .any(|l| l.contains("http_local_rate_limiter") && l.contains("meshd.local_ratelimit"))
            .then_some(())
    });
    let answers: Vec<HttpResponse> = (0..10).map(|_| m.get("/", &[])).collect();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    // The EnvoyFilter's filter is inserted first (4 a minute, as Istio's docs set it),
    // the policy's after it (2 a minute): 2 pass, the next 2 are refused by the policy
    // (its header), the last 6 by the EnvoyFilter (its header) before the policy sees
    // them.
    assert_eq!(
        statuses,
        vec![200, 200, 429, 429, 429, 429, 429, 429, 429, 429],
        "{statuses:?}"
    );
    for r in &answers[2..4] {
        assert_eq!(
            r.header("x-limited-by"),
            Some("meshd"),
            "the policy's refusal"
        );
        assert_eq!(r.header("x-local-rate-limit"), None);
    }
    for r in &answers[4..] {
        assert_eq!(
            r.header("x-local-rate-limit"),
            Some("true"),
            "EnvoyFilter's refusal"
        );
        assert_eq!(r.header("x-limited-by"), None);
    }
    assert_eq!(
        m.server_stat("http_local_rate_limiter", "http_local_rate_limit.ok"),
        4
    );
    assert_eq!(
        m.server_stat(
            "ratelimit_default_reviews",
            "http_local_rate_limit.rate_limited"
        ),
        2
    );
    m.assert_no_rejections();
}

const GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 8080, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bookinfo}
spec:
  parentRefs: [{name: edge}]
  rules:
  - name: reviews
    matches: [{path: {type: PathPrefix, value: /reviews}}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: rest
    backendRefs: [{name: productpage, port: 9080}]
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: edge, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]
  local: {requests: 3, unit: HOUR}
  response: {headers: {x-limit: gateway}}
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: reviews-rule, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: bookinfo, sectionName: reviews}]
  local: {requests: 5, unit: HOUR}
  response: {status: 503, headers: {x-limit: reviews-rule}}
"#;

/// At a Gateway API gateway: a policy on the Gateway limits everything it serves, except
/// the HTTPRoute rule a more specific policy names, which has its own bucket, status and
/// headers instead.
#[test]
fn gateway_and_route_rule_policies_most_specific_wins() {
    let Some((dir, config)) = envoy_test("ratelimit-gw") else {
        return;
    };
    for f in ["services.yaml", "pods.yaml"] {
        config.copy_from(&repo().join("examples/bookinfo").join(f), f);
    }
    config.write("gateway.yaml", GATEWAY);
    let _backends = Backends::start(&BOOKINFO_PODS, 9080);
    // The listener wants 8080: meshd's debug port moves.
    let meshd = Meshd::start_on(config.path(), dir.path(), 18080, &[]);
    let router = Envoy::start(&EDGE, Ads::Delta, 15000, dir.path());
    let get = |path: &str| {
        http_get("127.0.0.30:8080", path, &[("Host", "bookinfo")]).expect("through the gateway")
    };
    // The first answer spends a token of the rule's bucket.
    let first = wait_for(
        "the route through the gateway",
        Duration::from_secs(20),
        || {
            http_get("127.0.0.30:8080", "/reviews/1", &[("Host", "bookinfo")])
                .ok()
                .filter(|r| r.status == 200)
        },
    );
    assert!(first.body.starts_with("reviews-v"), "{}", first.body);
    let reviews: Vec<HttpResponse> = (0..6).map(|_| get("/reviews/1")).collect();
    let statuses: Vec<u16> = reviews.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 200, 200, 200, 503, 503], "the rule's 5");
    assert_eq!(reviews[5].header("x-limit"), Some("reviews-rule"));
    // The gateway's bucket was not touched by the rule's requests.
    let rest: Vec<HttpResponse> = (0..5).map(|_| get("/productpage")).collect();
    let statuses: Vec<u16> = rest.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 200, 200, 429, 429], "the gateway's 3");
    assert_eq!(rest[0].body, "productpage-v1");
    assert_eq!(rest[4].header("x-limit"), Some("gateway"));
    // Both policies Accepted in `meshd status`.
    let out = Command::new(meshd_bin())
        .args(["status", "-o", "json", "--config-dir"])
        .arg(config.path())
        .output()
        .expect("meshd status");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for name in ["edge", "reviews-rule"] {
        let item = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["kind"] == "RateLimitPolicy" && i["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {list}"));
        let c = &item["status"]["conditions"][0];
        assert_eq!(
            (c["type"].as_str(), c["status"].as_str()),
            (Some("Accepted"), Some("True")),
            "{item}"
        );
    }
    assert_envoy_accepted(&router);
    meshd.assert_no_nacks();
}

const TCP: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews-v1}
spec:
  workloadSelector: {labels: {app: reviews, version: v1}}
  ingress:
  - port: {number: 9090, protocol: TCP, name: tcp}
    captureMode: NONE
    defaultEndpoint: 127.0.1.12:9090
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: 127.0.1.99
    captureMode: NONE
    hosts: ["./*"]
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: connections, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  local: {requests: 2, unit: HOUR}
"#;

/// On a TCP port the bucket counts connections: the first two are carried to the
/// application, the next are closed before any byte reaches it.
#[test]
fn tcp_ports_limit_connections() {
    let Some(m) = Mesh::start(&[], false) else {
        return;
    };
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = accepted.clone();
    let _echo = Server::start("tcp echo", "127.0.1.12:9090", move |mut s| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 64];
        if let Ok(n) = s.read(&mut buf) {
            let _ = s.write_all(&buf[..n]);
        }
    });
    // The TCP port's chain, with the limit, replaces the HTTP sidecar of the harness.
    m.config.write("sidecars.yaml", TCP);
    let echo = || -> Option<String> {
        let mut c = TcpStream::connect("127.0.0.12:9090").ok()?;
        let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
        c.write_all(b"ping meshd").ok()?;
        let mut buf = [0u8; 16];
        let n = c.read(&mut buf).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).to_string())
    };
    // The first echo proves the chain (and spends one of the 2).
    let first = wait_for("the TCP port", Duration::from_secs(20), echo);
    assert_eq!(first, "ping meshd");
    let rest: Vec<Option<String>> = (0..3).map(|_| echo()).collect();
    assert_eq!(
        rest,
        vec![Some("ping meshd".to_string()), None, None],
        "2 connections an hour"
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "refused connections never reached the application"
    );
    assert_eq!(
        m.server_stat("ratelimit_default_connections", "rate_limited"),
        2
    );
    m.assert_no_rejections();
}

const OUTBOUND_AND_PREFIXES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: search
    match: [{uri: {prefix: /search}}]
    route: [{destination: {host: reviews}}]
  - name: rest
    route: [{destination: {host: reviews}}]
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: search, namespace: default}
spec:
  targetRefs: [{group: networking.istio.io, kind: VirtualService, name: reviews, sectionName: search}]
  local: {requests: 2, unit: HOUR}
  response: {headers: {x-limit: "search 100%"}}
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: prefixes, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  local: {requests: 3, unit: HOUR}
  descriptors: [{pathPrefix: [/a, /b]}]
"#;

/// A VirtualService rule's local limit is enforced in the client's sidecar (its other
/// rule is not limited there); at the server, each listed path prefix has a bucket of
/// its own and the other paths share one.
#[test]
fn route_rule_limits_at_the_client_and_path_prefix_buckets_at_the_server() {
    let Some(m) = Mesh::start(&[("ratelimit.yaml", OUTBOUND_AND_PREFIXES)], true) else {
        return;
    };
    // Server side first (the client's requests below also reach the server).
    m.wait_policy("the prefixes policy", &[], |r| r.status == 200);
    for (path, label) in [("/a/1", "/a"), ("/b/1", "/b"), ("/other", "others")] {
        let s: Vec<u16> = (0..4).map(|_| m.get(path, &[]).status).collect();
        let want = if label == "others" {
            // The probe above spent one of the shared bucket's 3.
            vec![200, 200, 429, 429]
        } else {
            vec![200, 200, 200, 429]
        };
        assert_eq!(s, want, "{label}");
    }
    // Through productpage's sidecar: /search is the rule's 2 (refused in the client's
    // sidecar, with its header, the % kept literally); the server's buckets for /search
    // (no prefix: the shared one, already spent) are never reached for the refusals.
    let via = |path: &str| {
        http_get("127.0.0.1:9080", path, &[("Host", "reviews")]).expect("through productpage")
    };
    // The path through both sidecars works (the server's shared bucket is spent: 429).
    wait_for(
        "through productpage's sidecar",
        Duration::from_secs(20),
        || {
            http_get("127.0.0.1:9080", "/probe", &[("Host", "reviews")])
                .ok()
                .filter(|r| r.status == 429)
        },
    );
    let search: Vec<HttpResponse> = (0..3).map(|_| via("/search")).collect();
    let statuses: Vec<u16> = search.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 429, 429], "{search:?}");
    // The first two passed the client's sidecar (refused by the server's bucket), the
    // third was refused by the rule's own limit.
    assert_eq!(search[0].header("x-limit"), None);
    assert_eq!(search[1].header("x-limit"), None);
    assert_eq!(search[2].header("x-limit"), Some("search 100%"));
    let client_limited: u64 = m.clients[0]
        .stats("ratelimit_default_search")
        .iter()
        .filter(|(k, _)| k.ends_with("http_local_rate_limit.rate_limited"))
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(client_limited, 1, "refused in the client's sidecar");
    m.assert_no_rejections();
}
