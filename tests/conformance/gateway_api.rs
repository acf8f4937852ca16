//! Kubernetes Gateway API through a real Envoy router: a Gateway's HTTP listener, several
//! HTTPRoutes attached to it (path precedence across routes, path-separated prefixes,
//! header matches, weights, header modifiers, redirects, prefix rewrites, backends that do
//! not resolve, cross-namespace backends with and without a ReferenceGrant, hostnames
//! that do not meet the listener's), and the status `meshd status` reports for each.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const PODS: [(&str, &str); 4] = [
    ("productpage-v1", "127.0.0.10"),
    ("reviews-v1", "127.0.0.12"),
    ("reviews-v2", "127.0.0.13"),
    ("reviews-v3", "127.0.0.14"),
];

/// A Service per reviews version, as Bookinfo's bookinfo-versions.yaml has them.
const VERSIONS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews-v1}
spec:
  selector: {app: reviews, version: v1}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2}
spec:
  selector: {app: reviews, version: v2}
  ports: [{name: http, port: 9080}]
"#;

const CONFIG: &str = r#"
# The gateway's Service, named as istiod's deployment names it: the Gateway's address.
apiVersion: v1
kind: Service
metadata: {name: edge-istio}
spec:
  clusterIP: 10.96.0.50
  selector: {gateway.networking.k8s.io/gateway-name: edge}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {team: other}}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v3, namespace: other}
spec:
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: reviews-v3, namespace: other}
subsets:
- addresses: [{ip: 127.0.0.14}]
  ports: [{name: http, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  gatewayClassName: istio
  listeners:
  - name: http
    port: 8080
    protocol: HTTP
    hostname: "*.example.com"
    allowedRoutes:
      namespaces: {from: All}
  - name: udp
    port: 5353
    protocol: UDP
  - name: http-again
    port: 8080
    protocol: HTTP
    hostname: "*.example.com"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, creationTimestamp: "2026-01-01T00:00:01Z"}
spec:
  parentRefs: [{name: edge}]
  hostnames: [bookinfo.example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api/}}]
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /}, headers: [{name: X-User, value: jason}]}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-gateway, value: edge}]
    backendRefs: [{name: productpage, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    backendRefs: [{name: productpage, port: 9080}]
  - matches: [{path: {type: Exact, value: /moved}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: moved.example.com}
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    backendRefs: [{name: no-such-service, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /cors}}]
    filters:
    - type: CORS
      cors: {allowOrigins: ["https://*.example.org"], allowMethods: [GET], maxAge: 30}
    backendRefs: [{name: productpage, port: 9080}]
---
# A route Envoy could not take (a regex RE2 refuses), on the same host as the others:
# refused alone, the others stay.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, creationTimestamp: "2026-01-01T00:00:03Z"}
spec:
  parentRefs: [{name: edge}]
  hostnames: [bookinfo.example.com]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/(unclosed"}}]
    backendRefs: [{name: productpage, port: 9080}]
---
# Another controller's Gateway and route: not meshd's to serve or report on.
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: foreign}
spec:
  gatewayClassName: someone-else
  listeners: [{name: http, port: 8081, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: theirs}
spec:
  parentRefs: [{name: foreign}]
  rules:
  - backendRefs: [{name: productpage, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: special, creationTimestamp: "2026-01-01T00:00:02Z"}
spec:
  parentRefs: [{name: edge, sectionName: http}]
  hostnames: [bookinfo.example.com]
  rules:
  - matches: [{path: {type: Exact, value: /api/special}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs:
    - {name: reviews-v1, port: 9080, weight: 80}
    - {name: reviews-v2, port: 9080, weight: 20}
  - matches: [{path: {type: PathPrefix, value: /other}}]
    backendRefs: [{name: reviews-v3, namespace: other, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /granted}}]
    backendRefs: [{name: reviews-v3, namespace: other, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere, namespace: other}
spec:
  parentRefs: [{name: edge, namespace: default}]
  hostnames: [bookinfo.example.org]
  rules:
  - backendRefs: [{name: reviews-v3, port: 9080}]
"#;

/// A ReferenceGrant for HTTPRoutes of `default` to Service `other/reviews-v3`, written
/// while the test runs.
const GRANT: &str = r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-default, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]
  to: [{group: "", kind: Service, name: reviews-v3}]
"#;

struct Setup {
    meshd: Meshd,
    router: Envoy,
    apps: Vec<HttpApp>,
    config: TempDir,
    _dir: TempDir,
}

impl Setup {
    fn start() -> Option<Setup> {
        let (dir, config) = envoy_test("gwapi")?;
        for f in ["services.yaml", "pods.yaml"] {
            config.copy_from(&repo().join("examples/bookinfo").join(f), f);
        }
        config.write("versions.yaml", VERSIONS);
        config.write("gateway-api.yaml", CONFIG);
        // Each pod answers with its name and the path it was asked for.
        let apps = PODS
            .iter()
            .map(|(name, ip)| {
                let name = name.to_string();
                HttpApp::start(&format!("{ip}:9080"), move |r| Answer {
                    status: 200,
                    headers: vec![("x-path".into(), r.path.clone())],
                    body: name.clone(),
                })
            })
            .collect();
        // The listener wants 8080: meshd's debug port moves.
        let meshd = Meshd::start_on(config.path(), dir.path(), 18080, &[]);
        let router = Envoy::start(&EDGE, Ads::Delta, 15000, dir.path());
        Some(Setup {
            meshd,
            router,
            apps,
            config,
            _dir: dir,
        })
    }

    fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let mut h = vec![("Host", host)];
        h.extend_from_slice(headers);
        http_get(&format!("{}:8080", EDGE.ip), path, &h).expect("request through the gateway")
    }

    fn requests_to(&self, pod: &str) -> Vec<Request> {
        let i = PODS.iter().position(|(n, _)| *n == pod).expect("pod");
        self.apps[i].requests()
    }

    fn status(&self) -> BTreeMap<String, serde_json::Value> {
        status_of(&self.config)
    }
}

/// `meshd status -o json` on a test's configuration: the status of each object, by
/// `Kind namespace/name`.
fn status_of(config: &TempDir) -> BTreeMap<String, serde_json::Value> {
    let out = Command::new(meshd_bin())
        .args(["status", "-o", "json", "--config-dir"])
        .arg(config.path())
        .output()
        .expect("meshd status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("");
            (
                format!(
                    "{} {ns}/{}",
                    o["kind"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or("")
                ),
                o["status"].clone(),
            )
        })
        .collect()
}

/// The condition `kind` of a condition list: (status, reason).
fn condition(conds: &serde_json::Value, kind: &str) -> (String, String) {
    let c = conds
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} condition in {conds}"));
    (
        c["status"].as_str().unwrap_or("").to_string(),
        c["reason"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn httproutes_through_a_gateway_api_gateway() {
    let Some(s) = Setup::start() else { return };
    let host = "bookinfo.example.com";
    wait_for(
        "a route through the Gateway",
        Duration::from_secs(20),
        || {
            let h = [("Host", host)];
            let r = http_get(&format!("{}:8080", EDGE.ip), "/", &h).ok()?;
            (r.status == 200).then_some(())
        },
    );
    assert_envoy_accepted(&s.router);
    s.meshd.assert_no_nacks();

    // The catch-all rule sets a header on the way.
    let r = s.get(host, "/productpage", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "productpage-v1"));
    let seen = s.requests_to("productpage-v1");
    assert_eq!(
        seen.last().and_then(|q| q.header("x-gateway")),
        Some("edge")
    );

    // Precedence across routes: an exact path (newer route) beats a prefix (older one);
    // `/api/` is a path-separated prefix: `/api` and `/api/x` match it, `/apix` does not.
    assert_eq!(s.get(host, "/api/special", &[]).body, "reviews-v2");
    assert_eq!(s.get(host, "/api/x", &[]).body, "reviews-v1");
    assert_eq!(s.get(host, "/api", &[]).body, "reviews-v1");
    assert_eq!(s.get(host, "/apix", &[]).body, "productpage-v1");
    // A header match beats a bare prefix of the same length.
    assert_eq!(s.get(host, "/x", &[("x-user", "jason")]).body, "reviews-v2");

    // Prefix rewrite: `/old/page` reaches the backend as `/new/page`.
    let r = s.get(host, "/old/page", &[]);
    assert_eq!((r.status, r.header("x-path")), (200, Some("/new/page")));

    // Redirect (302: the API's default status).
    let r = s.get(host, "/moved", &[]);
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("http://moved.example.com:8080/moved")
    );

    // CORS: an allowed origin (a wildcard) is echoed back, another is not.
    let r = s.get(host, "/cors", &[("Origin", "https://a.example.org")]);
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (200, Some("https://a.example.org"))
    );
    let r = s.get(host, "/cors", &[("Origin", "https://evil.example.com")]);
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (200, None)
    );

    // A backend that does not exist: 500, as the Gateway API requires.
    assert_eq!(s.get(host, "/missing", &[]).status, 500);

    // Weights 80/20.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..200 {
        *counts.entry(s.get(host, "/split", &[]).body).or_default() += 1;
    }
    let v1 = counts.get("reviews-v1").copied().unwrap_or(0);
    let v2 = counts.get("reviews-v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 200, "{counts:?}");
    assert!((130..=190).contains(&v1), "80% to v1: {counts:?}");

    // A host outside the listener's `*.example.com` is not served there.
    assert_eq!(s.get("bookinfo.example.org", "/", &[]).status, 404);

    // A backend in another namespace: refused without a ReferenceGrant (500) ...
    assert_eq!(s.get(host, "/other", &[]).status, 500);
    let st = s.status();
    let special = &st["HTTPRoute default/special"]["parents"][0]["conditions"];
    assert_eq!(
        condition(special, "Accepted"),
        ("True".into(), "Accepted".into())
    );
    assert_eq!(
        condition(special, "ResolvedRefs"),
        ("False".into(), "RefNotPermitted".into())
    );
    let api = &st["HTTPRoute default/api"]["parents"][0]["conditions"];
    assert_eq!(
        condition(api, "ResolvedRefs"),
        ("False".into(), "BackendNotFound".into())
    );
    let elsewhere = &st["HTTPRoute other/elsewhere"]["parents"][0]["conditions"];
    assert_eq!(
        condition(elsewhere, "Accepted"),
        ("False".into(), "NoMatchingListenerHostname".into())
    );
    let broken = &st["HTTPRoute default/broken"]["parents"][0]["conditions"];
    assert_eq!(
        condition(broken, "Accepted"),
        ("False".into(), "UnsupportedValue".into())
    );
    assert!(
        !st.contains_key("HTTPRoute default/theirs") && !st.contains_key("Gateway default/foreign"),
        "another controller's objects get no status from meshd: {st:?}"
    );
    let gw = &st["Gateway default/edge"];
    assert_eq!(
        gw["addresses"],
        serde_json::json!([{"type": "IPAddress", "value": "10.96.0.50"}])
    );
    assert_eq!(
        condition(&gw["conditions"], "Accepted"),
        ("True".into(), "Accepted".into())
    );
    let http = &gw["listeners"][0];
    assert_eq!(http["name"], "http");
    assert_eq!(http["attachedRoutes"], 3, "api, special and broken: {gw}");
    assert_eq!(
        condition(&gw["listeners"][1]["conditions"], "Accepted"),
        ("False".into(), "UnsupportedProtocol".into())
    );
    assert_eq!(condition(&gw["conditions"], "Programmed").0, "False");
    // A second listener for the same port and hostname conflicts; the first is served.
    let again = &gw["listeners"][2]["conditions"];
    assert_eq!(
        condition(again, "Conflicted"),
        ("True".into(), "HostnameConflict".into())
    );
    assert_eq!(condition(again, "Accepted").0, "False");

    // ... and served once one is granted.
    s.config.write("grant.yaml", GRANT);
    wait_for("the granted backend", Duration::from_secs(20), || {
        (s.get(host, "/granted", &[]).body == "reviews-v3").then_some(())
    });
    let st = s.status();
    let special = &st["HTTPRoute default/special"]["parents"][0]["conditions"];
    assert_eq!(
        condition(special, "ResolvedRefs"),
        ("True".into(), "ResolvedRefs".into())
    );
    assert_envoy_accepted(&s.router);
    s.meshd.assert_no_nacks();
}

/// Bookinfo's own Gateway API samples in the mesh (GAMMA): an HTTPRoute whose parent is
/// the `reviews` Service splits productpage's calls 90/10 between the version Services,
/// then sends all of them to v3, as the Istio docs' traffic-shifting task does.
#[test]
fn bookinfo_mesh_routes_shift_traffic() {
    use crate::bookinfo::Bookinfo;
    let Some(shared) = shared_or_skip("Bookinfo's Gateway API samples") else {
        return;
    };
    let samples = shared.join("bookinfo/gateway-api");
    // The version Services go where the harness puts a VirtualService; the route beside.
    let versions = shared.join("bookinfo/platform/kube/bookinfo-versions.yaml");
    let Some(b) = Bookinfo::start(&versions, Ads::Delta) else {
        return;
    };
    b.config
        .copy_from(&samples.join("route-reviews-90-10.yaml"), "route.yaml");
    // Once the route is read, only v1 and v2 answer.
    wait_for("the route's backends", Duration::from_secs(20), || {
        let d = b.distribution("reviews", 20, &[]);
        (d.keys().all(|k| k == "reviews-v1" || k == "reviews-v2") && d.contains_key("reviews-v1"))
            .then_some(())
    });
    let d = b.distribution("reviews", 400, &[]);
    let v2 = d.get("reviews-v2").copied().unwrap_or(0);
    assert_eq!(d.get("reviews-v1").copied().unwrap_or(0) + v2, 400, "{d:?}");
    assert!((20..=60).contains(&v2), "10% ± 5 to v2: {d:?}");

    b.config
        .copy_from(&samples.join("route-reviews-v3.yaml"), "route.yaml");
    wait_for("all to v3", Duration::from_secs(20), || {
        (b.distribution("reviews", 10, &[]).get("reviews-v3") == Some(&10)).then_some(())
    });
    let d = b.distribution("reviews", 50, &[]);
    assert_eq!(d.get("reviews-v3"), Some(&50), "{d:?}");
    b.assert_healthy();
}

const SECURE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: certs}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: secure, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - name: bookinfo
    port: 8443
    protocol: HTTPS
    hostname: bookinfo.example.com
    tls: {certificateRefs: [{name: bookinfo-cert}]}
  - name: other
    port: 8443
    protocol: HTTPS
    hostname: other.example.com
    tls: {certificateRefs: [{name: other-cert, namespace: certs}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pages, namespace: default}
spec:
  parentRefs: [{name: secure}]
  rules:
  - backendRefs: [{name: productpage, port: 9080}]
"#;

/// Lets Gateways of `default` use Secret `certs/other-cert`.
const CERT_GRANT: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: gateways-of-default, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: default}]
  to: [{group: "", kind: Secret, name: other-cert}]
"#;

/// HTTPS listeners terminating TLS with certificates from Secrets over SDS: one of the
/// Gateway's namespace; one of another namespace, refused until a ReferenceGrant allows
/// it (the listener reports RefNotPermitted and no certificate is served), then served.
#[test]
fn https_listeners_take_certificates_from_secrets() {
    let Some((dir, config)) = envoy_test("gwapi-tls") else {
        return;
    };
    for f in ["services.yaml", "pods.yaml"] {
        config.copy_from(&repo().join("examples/bookinfo").join(f), f);
    }
    let ca = TestCa::new("gw-ca");
    let (cert, key) = ca.leaf("bookinfo-1", &["bookinfo.example.com"]);
    config.write(
        "bookinfo-cert.yaml",
        &tls_secret_yaml("bookinfo-cert", "default", &cert, &key, &ca.pem, None),
    );
    let (cert, key) = ca.leaf("other-1", &["other.example.com"]);
    config.write(
        "other-cert.yaml",
        &tls_secret_yaml("other-cert", "certs", &cert, &key, &ca.pem, None),
    );
    config.write("secure.yaml", SECURE);
    let _backends = Backends::start(&PODS, 9080);
    let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 18080);
    let node = NodeSpec {
        labels: &[("gateway.networking.k8s.io/gateway-name", "secure")],
        ..EDGE
    };
    // Certificates come over SDS, only to a gateway authenticated for its namespace.
    let router = secure_router(&dir, &issuer, &node);
    let https = |sni: &str| https_get("127.0.0.1:8443", sni, "/", &ca.pem, None);
    let r = wait_for(
        "HTTPS with the namespace's certificate",
        Duration::from_secs(20),
        || https("bookinfo.example.com").ok(),
    );
    assert_eq!((r.status, r.body.as_str()), (200, "productpage-v1"));
    assert_eq!(r.server_cn, "bookinfo-1");
    // Another namespace's certificate without a grant: not served.
    assert!(
        https("other.example.com").map(|r| r.server_cn).ok() != Some("other-1".into()),
        "certs/other-cert served without a ReferenceGrant"
    );
    let st = status_of(&config);
    let other = &st["Gateway default/secure"]["listeners"][1];
    assert_eq!(
        condition(&other["conditions"], "ResolvedRefs"),
        ("False".into(), "RefNotPermitted".into()),
        "{other}"
    );

    config.write("grant.yaml", CERT_GRANT);
    let r = wait_for(
        "HTTPS with the granted certificate",
        Duration::from_secs(20),
        || {
            https("other.example.com")
                .ok()
                .filter(|r| r.server_cn == "other-1")
        },
    );
    assert_eq!((r.status, r.body.as_str()), (200, "productpage-v1"));
    let st = status_of(&config);
    let other = &st["Gateway default/secure"]["listeners"][1];
    assert_eq!(
        condition(&other["conditions"], "ResolvedRefs"),
        ("True".into(), "ResolvedRefs".into()),
        "{other}"
    );
    assert_envoy_accepted(&router);
    meshd.assert_no_nacks();
}

const LISTENER_SET_TLS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: v1
kind: Namespace
metadata: {name: certs}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shared, namespace: default}
spec:
  gatewayClassName: istio
  allowedListeners: {namespaces: {from: All}}
  listeners:
  - {name: plain, port: 8080, protocol: HTTP, hostname: x.example.com}
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: team-a, namespace: team-a}
spec:
  parentRef: {name: shared, namespace: default}
  listeners:
  - name: own
    port: 8443
    protocol: HTTPS
    hostname: a.example.org
    allowedRoutes: {namespaces: {from: All}}
    tls: {certificateRefs: [{name: a-cert}]}
  - name: granted
    port: 8443
    protocol: HTTPS
    hostname: b.example.org
    allowedRoutes: {namespaces: {from: All}}
    tls: {certificateRefs: [{name: b-cert, namespace: certs}]}
  - name: ungranted
    port: 8443
    protocol: HTTPS
    hostname: c.example.org
    allowedRoutes: {namespaces: {from: All}}
    tls: {certificateRefs: [{name: c-cert, namespace: certs}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: team-a-listeners, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: ListenerSet, namespace: team-a}]
  to: [{group: "", kind: Secret, name: b-cert}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: gateways-of-team-a, namespace: certs}
spec:
  # A grant to Gateways of team-a does not cover its ListenerSets.
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: team-a}]
  to: [{group: "", kind: Secret, name: c-cert}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pages, namespace: default}
spec:
  parentRefs: [{kind: ListenerSet, name: team-a, namespace: team-a}]
  rules:
  - backendRefs: [{name: productpage, port: 9080}]
"#;

/// A ListenerSet in another namespace than its Gateway terminating TLS: a certificate of
/// its own namespace is served to the Gateway's proxies, one of a third namespace only with
/// a ReferenceGrant from ListenerSets of its namespace (a grant to its namespace's Gateways
/// does not do), each over SDS to a proxy authenticated for the Gateway's namespace.
#[test]
fn listener_set_certificates_across_namespaces() {
    let Some((dir, config)) = envoy_test("gwapi-lset-tls") else {
        return;
    };
    for f in ["services.yaml", "pods.yaml"] {
        config.copy_from(&repo().join("examples/bookinfo").join(f), f);
    }
    let ca = TestCa::new("lset-ca");
    for (name, ns, host) in [
        ("a-cert", "team-a", "a.example.org"),
        ("b-cert", "certs", "b.example.org"),
        ("c-cert", "certs", "c.example.org"),
    ] {
        let (cert, key) = ca.leaf(name, &[host]);
        config.write(
            &format!("{name}.yaml"),
            &tls_secret_yaml(name, ns, &cert, &key, &ca.pem, None),
        );
    }
    config.write("listener-set.yaml", LISTENER_SET_TLS);
    let _backends = Backends::start(&PODS, 9080);
    let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 18080);
    let node = NodeSpec {
        labels: &[("gateway.networking.k8s.io/gateway-name", "shared")],
        ..EDGE
    };
    let router = secure_router(&dir, &issuer, &node);
    let https = |sni: &str| https_get("127.0.0.1:8443", sni, "/", &ca.pem, None);
    for (sni, cn) in [("a.example.org", "a-cert"), ("b.example.org", "b-cert")] {
        let r = wait_for(sni, Duration::from_secs(20), || {
            https(sni).ok().filter(|r| r.status == 200)
        });
        assert_eq!(
            (r.body.as_str(), r.server_cn.as_str()),
            ("productpage-v1", cn)
        );
    }
    assert!(
        https("c.example.org").map(|r| r.server_cn).ok() != Some("c-cert".into()),
        "certs/c-cert served to a ListenerSet without a grant for ListenerSets"
    );
    let st = status_of(&config);
    let set = &st["ListenerSet team-a/team-a"];
    assert_eq!(
        condition(&set["listeners"][2]["conditions"], "ResolvedRefs"),
        ("False".into(), "RefNotPermitted".into()),
        "{set}"
    );
    assert_eq!(
        condition(&set["conditions"], "Programmed").0,
        "True",
        "{set}"
    );
    assert_envoy_accepted(&router);
    meshd.assert_no_nacks();
}

const STREAMS: &str = r#"
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
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - name: tls
    port: 9443
    protocol: TLS
    hostname: "*.example.com"
    tls: {mode: Passthrough}
  - name: tcp
    port: 9000
    protocol: TCP
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: secure, namespace: default}
spec:
  parentRefs: [{name: edge, sectionName: tls}]
  hostnames: [secure.example.com]
  rules:
  - backendRefs: [{group: networking.istio.io, kind: Hostname, name: secure.example.com, port: 8443}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs: [{name: edge, sectionName: tcp}]
  rules:
  - backendRefs:
    - {name: reviews-v1, port: 9080, weight: 75}
    - {name: reviews-v2, port: 9080, weight: 25}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: misplaced, namespace: default}
spec:
  parentRefs: [{name: edge, sectionName: tls}]
  rules:
  - backendRefs: [{name: reviews-v1, port: 9080}]
"#;

/// TLS passthrough chosen by SNI (a TLSRoute to a ServiceEntry host) and a weighted
/// TCPRoute, through a Gateway API Gateway; a TCPRoute on a TLS listener is not admitted.
#[test]
fn tls_and_tcp_routes_through_a_gateway() {
    let Some((dir, config)) = envoy_test("gwapi-l4") else {
        return;
    };
    for f in ["services.yaml", "pods.yaml"] {
        config.copy_from(&repo().join("examples/bookinfo").join(f), f);
    }
    config.write("versions.yaml", VERSIONS);
    config.write("streams.yaml", STREAMS);
    let ca = TestCa::new("l4-ca");
    let (cert, key) = ca.leaf("secure-backend", &["secure.example.com"]);
    let _tls = TlsBackend::start("127.0.1.60:8443", &cert, &key, &ca.pem, false);
    let _backends = Backends::start(&PODS, 9080);
    let meshd = Meshd::start_on(config.path(), dir.path(), 18080, &[]);
    let router = Envoy::start(&EDGE, Ads::Delta, 15000, dir.path());

    let https = |sni: &str| https_get("127.0.0.1:9443", sni, "/", &ca.pem, None);
    let r = wait_for("TLS passthrough", Duration::from_secs(20), || {
        https("secure.example.com").ok()
    });
    assert_eq!(
        r.server_cn, "secure-backend",
        "the backend's own certificate"
    );
    assert_eq!(r.body, "sni=secure.example.com client=none");
    assert!(
        https("other.example.com").is_err(),
        "no route for that name"
    );

    wait_for("TCP through the gateway", Duration::from_secs(20), || {
        http_get("127.0.0.1:9000", "/", &[])
            .ok()
            .filter(|r| r.status == 200)
    });
    let d = tcp_distribution("127.0.0.1:9000", 400);
    let v1 = d.get("reviews-v1").copied().unwrap_or(0);
    assert_eq!(v1 + d.get("reviews-v2").copied().unwrap_or(0), 400, "{d:?}");
    assert!((260..=340).contains(&v1), "75% ± 10 to v1: {d:?}");

    let st = status_of(&config);
    let accepted = |route: &str| condition(&st[route]["parents"][0]["conditions"], "Accepted");
    assert_eq!(
        accepted("TLSRoute default/secure"),
        ("True".into(), "Accepted".into())
    );
    assert_eq!(
        accepted("TCPRoute default/reviews"),
        ("True".into(), "Accepted".into())
    );
    assert_eq!(
        accepted("TCPRoute default/misplaced"),
        ("False".into(), "NotAllowedByListeners".into())
    );
    let gw = &st["Gateway default/edge"];
    assert_eq!(gw["listeners"][0]["attachedRoutes"], 1, "{gw}");
    assert_eq!(gw["listeners"][1]["attachedRoutes"], 1, "{gw}");
    assert_envoy_accepted(&router);
    meshd.assert_no_nacks();
}

const GRPC: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: default}
spec:
  ports: [{name: grpc, port: 7070}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: echo-v1, namespace: default}
subsets: [{addresses: [{ip: 127.0.0.50}], ports: [{name: grpc, port: 7070}]}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: default}
spec:
  ports: [{name: grpc, port: 7070}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: echo-v2, namespace: default}
subsets: [{addresses: [{ip: 127.0.0.51}], ports: [{name: grpc, port: 7070}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: istio
  listeners: [{name: grpc, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: default}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches:
    - method: {service: meshd.test.Echo, method: Call}
      headers: [{name: x-version, value: v2}]
    backendRefs: [{name: echo-v2, port: 7070}]
  - matches: [{method: {service: meshd.test.Echo}}]
    backendRefs: [{name: echo-v1, port: 7070}]
"#;

/// A GRPCRoute through a Gateway API Gateway, with real gRPC (grpcio) on both sides: a
/// method and header match picks v2, the service match takes the rest to v1.
#[test]
fn grpc_routes_through_a_gateway() {
    let Some(py) = crate::grpc::python() else {
        skip_or_fail("python with grpcio is not installed (.venv-tools)");
        return;
    };
    let Some((dir, config)) = envoy_test("gwapi-grpc") else {
        return;
    };
    config.write("grpc.yaml", GRPC);
    let script = crate::grpc::script();
    let servers: Vec<Proc> = [("echo-v1", "127.0.0.50"), ("echo-v2", "127.0.0.51")]
        .iter()
        .map(|(name, ip)| {
            Proc::spawn(
                name,
                Command::new(&py)
                    .arg(&script)
                    .args(["serve", &format!("{ip}:7070"), name]),
                dir.path(),
            )
        })
        .collect();
    for s in &servers {
        wait_for("the gRPC server", Duration::from_secs(20), || {
            s.log_text().contains("ready").then_some(())
        });
    }
    let meshd = Meshd::start_on(config.path(), dir.path(), 18080, &[]);
    let router = Envoy::start(&EDGE, Ads::Delta, 15000, dir.path());
    let calls = |n: usize, metadata: &[&str]| -> serde_json::Value {
        let out = Command::new(&py)
            .arg(&script)
            .args(["call", &format!("{}:8080", EDGE.ip), &n.to_string()])
            .args(metadata)
            .output()
            .expect("gRPC client");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON counts")
    };
    wait_for("gRPC through the gateway", Duration::from_secs(20), || {
        (calls(1, &[])["echo-v1"] == 1).then_some(())
    });
    assert_eq!(calls(20, &[])["echo-v1"], 20);
    assert_eq!(calls(20, &["x-version=v2"])["echo-v2"], 20);
    let st = status_of(&config);
    let conds = &st["GRPCRoute default/echo"]["parents"][0]["conditions"];
    assert_eq!(
        condition(conds, "Accepted"),
        ("True".into(), "Accepted".into())
    );
    assert_envoy_accepted(&router);
    meshd.assert_no_nacks();
}

const LISTENER_SETS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: team-a}
spec:
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: app, namespace: team-a}
subsets: [{addresses: [{ip: 127.0.0.12}], ports: [{name: http, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shared, namespace: default}
spec:
  gatewayClassName: istio
  allowedListeners: {namespaces: {from: All}}
  listeners: [{name: http, port: 8080, protocol: HTTP, hostname: "*.example.com"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: team-a, namespace: team-a, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRef: {name: shared, namespace: default}
  listeners:
  - name: a
    port: 8080
    protocol: HTTP
    hostname: a.example.org
  - name: clash
    port: 8080
    protocol: HTTP
    hostname: "*.example.com"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app, namespace: team-a}
spec:
  parentRefs: [{kind: ListenerSet, name: team-a, sectionName: a}]
  rules:
  - backendRefs: [{name: app, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: closed, namespace: default}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 9090, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: refused, namespace: team-a}
spec:
  parentRef: {name: closed, namespace: default}
  listeners: [{name: b, port: 9090, protocol: HTTP, hostname: b.example.org}]
"#;

/// ListenerSets (which istiod does not serve yet): a team's listener, in its own
/// namespace, added to a shared Gateway that admits it and routed by the team's
/// HTTPRoute; a listener clashing with the Gateway's own is Conflicted; a Gateway that
/// admits no ListenerSets leaves them NotAllowed.
#[test]
fn listener_sets_add_listeners_to_a_gateway() {
    let Some((dir, config)) = envoy_test("gwapi-lset") else {
        return;
    };
    config.write("listener-sets.yaml", LISTENER_SETS);
    let _backends = Backends::start(&PODS, 9080);
    let meshd = Meshd::start_on(config.path(), dir.path(), 18080, &[]);
    let node = NodeSpec {
        labels: &[("gateway.networking.k8s.io/gateway-name", "shared")],
        ..EDGE
    };
    let router = Envoy::start(&node, Ads::Delta, 15000, dir.path());
    let get = |host: &str| http_get(&format!("{}:8080", EDGE.ip), "/", &[("Host", host)]).ok();
    let r = wait_for("the ListenerSet's route", Duration::from_secs(20), || {
        get("a.example.org").filter(|r| r.status == 200)
    });
    assert_eq!(r.body, "reviews-v1");
    // The Gateway's own listener has no route: 404 for its hosts.
    assert_eq!(get("x.example.com").map(|r| r.status), Some(404));

    let st = status_of(&config);
    let set = &st["ListenerSet team-a/team-a"];
    assert_eq!(condition(&set["conditions"], "Accepted").0, "True", "{set}");
    assert_eq!(set["listeners"][0]["attachedRoutes"], 1, "{set}");
    assert_eq!(
        condition(&set["listeners"][1]["conditions"], "Conflicted"),
        ("True".into(), "HostnameConflict".into())
    );
    assert_eq!(st["Gateway default/shared"]["attachedListenerSets"], 1);
    assert_eq!(
        condition(&st["ListenerSet team-a/refused"]["conditions"], "Accepted"),
        ("False".into(), "NotAllowed".into())
    );
    let route = &st["HTTPRoute team-a/app"]["parents"][0]["conditions"];
    assert_eq!(condition(route, "Accepted").0, "True");
    assert_envoy_accepted(&router);
    meshd.assert_no_nacks();
}

/// The README's Gateway API example as a user runs it: a static bootstrap for the gateway
/// proxy from `meshd translate`, Envoy started on it, and requests as curl makes them.
#[test]
fn readme_gateway_api_example() {
    let Some((dir, _config)) = envoy_test("gwapi-readme") else {
        return;
    };
    let Some(envoy) = envoy_bin() else { return };
    let out = Command::new(meshd_bin())
        .args(["translate", "--config-dir"])
        .arg(repo().join("examples/bookinfo"))
        .arg("--config-dir")
        .arg(repo().join("examples/gateway-api"))
        .args([
            "--proxy",
            "router~127.0.0.30~bookinfo-gw-1.default~default.svc.cluster.local",
            "--label",
            "gateway.networking.k8s.io/gateway-name=bookinfo",
            "--format",
            "bootstrap",
        ])
        .output()
        .expect("meshd translate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bootstrap = dir.write("gw.json", &String::from_utf8_lossy(&out.stdout));
    let _backends = Backends::start(&BOOKINFO_PODS, 9080);
    let _envoy = Proc::spawn(
        "envoy",
        Command::new(envoy)
            .arg("-c")
            .arg(&bootstrap)
            .args(["--log-level", "warn"]),
        dir.path(),
    );
    let get =
        |path: &str| http_get("127.0.0.1:8080", path, &[("Host", "bookinfo.example.com")]).ok();
    let r = wait_for("the example through Envoy", Duration::from_secs(20), || {
        get("/productpage").filter(|r| r.status == 200)
    });
    assert_eq!(r.body, "productpage-v1");
    assert_eq!(r.header("x-seen-x-gateway"), Some("bookinfo"));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..200 {
        *counts
            .entry(get("/reviews/1").map(|r| r.body).unwrap_or_default())
            .or_default() += 1;
    }
    let v1 = counts.get("reviews-v1").copied().unwrap_or(0);
    assert_eq!(
        v1 + counts.get("reviews-v2").copied().unwrap_or(0),
        200,
        "{counts:?}"
    );
    assert!((164..=196).contains(&v1), "90% ± 8 to v1: {counts:?}");
}

/// Bookinfo's own Gateway API ingress sample (bookinfo-gateway.yaml) through a real
/// gateway Envoy: its five matches reach productpage, other paths get 404.
#[test]
fn bookinfo_gateway_sample_through_a_gateway() {
    let Some(shared) = shared_or_skip("Bookinfo's Gateway API samples") else {
        return;
    };
    let Some((dir, config)) = envoy_test("gwapi-bookinfo") else {
        return;
    };
    for f in ["services.yaml", "pods.yaml"] {
        config.copy_from(&repo().join("examples/bookinfo").join(f), f);
    }
    config.copy_from(
        &shared.join("bookinfo/gateway-api/bookinfo-gateway.yaml"),
        "bookinfo-gateway.yaml",
    );
    let _backends = Backends::start(&BOOKINFO_PODS, 9080);
    let meshd = Meshd::start_on(config.path(), dir.path(), 18080, &[]);
    let node = NodeSpec {
        labels: &[("gateway.networking.k8s.io/gateway-name", "bookinfo-gateway")],
        ..EDGE
    };
    let router = Envoy::start(&node, Ads::Delta, 15000, dir.path());
    let get = |path: &str| http_get(&format!("{}:80", EDGE.ip), path, &[]).ok();
    wait_for("the sample's route", Duration::from_secs(20), || {
        get("/productpage").filter(|r| r.status == 200)
    });
    for path in [
        "/productpage",
        "/static/style.css",
        "/login",
        "/logout",
        "/api/v1/products/1",
    ] {
        let r = get(path).expect("request");
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "productpage-v1"),
            "{path}"
        );
    }
    for path in ["/", "/productpage/x", "/staticfiles"] {
        assert_eq!(get(path).map(|r| r.status), Some(404), "{path}");
    }
    assert_envoy_accepted(&router);
    meshd.assert_no_nacks();
}

/// An HTTP Gateway whose route sends to a Service of HTTPS pods, with a BackendTLSPolicy
/// (CA from a ConfigMap, written by the test).
const BACKEND_TLS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: secure-svc, namespace: default}
spec:
  ports: [{name: http, port: 9080, targetPort: 8443}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: secure-svc, namespace: default}
subsets: [{addresses: [{ip: 127.0.1.60}], ports: [{name: http, port: 8443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: secure, namespace: default}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: secure-svc, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: secure-tls, namespace: default}
spec:
  targetRefs: [{group: "", kind: Service, name: secure-svc}]
  validation:
    caCertificateRefs: [{group: "", kind: ConfigMap, name: backend-ca}]
    hostname: secure.example.com
"#;

#[test]
fn backend_tls_policy_from_a_gateway_to_https_pods() {
    let Some((dir, config)) = envoy_test("gwapi-btls") else {
        return;
    };
    let ca = TestCa::new("backend-ca");
    let (cert, key) = ca.leaf("secure-1", &["secure.example.com"]);
    let _server = TlsBackend::start("127.0.1.60:8443", &cert, &key, &ca.pem, false);
    config.write("backend-tls.yaml", BACKEND_TLS);
    config.write("ca.yaml", &ca_config_map("backend-ca", &ca.pem));
    let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 18080);
    // The CA bundle comes over SDS: the gateway authenticates on the TLS port.
    let router = secure_router(&dir, &issuer, &EDGE);
    let get = || {
        http_get(
            &format!("{}:8080", EDGE.ip),
            "/",
            &[("Host", "any.example")],
        )
        .ok()
    };
    let r = wait_for(
        "TLS from the gateway to the pods",
        Duration::from_secs(20),
        || get().filter(|r| r.status == 200),
    );
    assert_eq!(r.body, "sni=secure.example.com client=none");

    // The policy's status names the Service (for the mesh) and the Gateway whose route
    // sends there.
    let st = status_of(&config);
    let ancestors = st["BackendTLSPolicy default/secure-tls"]["ancestors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let refs: Vec<(String, String)> = ancestors
        .iter()
        .map(|a| {
            (
                a["ancestorRef"]["kind"].as_str().unwrap_or("").to_string(),
                a["controllerName"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        refs,
        [
            (
                "Service".to_string(),
                "istio.io/mesh-controller".to_string()
            ),
            (
                "Gateway".to_string(),
                "istio.io/gateway-controller".to_string()
            )
        ],
        "{ancestors:?}"
    );
    for a in &ancestors {
        assert_eq!(condition(&a["conditions"], "Accepted").0, "True", "{a}");
        assert_eq!(condition(&a["conditions"], "ResolvedRefs").0, "True", "{a}");
    }

    // Another CA in the ConfigMap: the gateway no longer trusts the pods.
    let other = TestCa::new("someone-else");
    config.write("ca.yaml", &ca_config_map("backend-ca", &other.pem));
    wait_for(
        "the untrusted backend refused",
        Duration::from_secs(20),
        || get().filter(|r| r.status == 503),
    );
    assert_envoy_accepted(&router);
    meshd.assert_no_nacks();
}

/// Three routes to Bookinfo's reviews (three pods): one plain, one with a session cookie,
/// one with a session header.
const SESSIONS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: plain, namespace: default}
spec:
  parentRefs: [{name: edge}]
  hostnames: [plain.example]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: sticky, namespace: default}
spec:
  parentRefs: [{name: edge}]
  hostnames: [sticky.example]
  rules:
  - sessionPersistence: {sessionName: reviews-session, type: Cookie, absoluteTimeout: 1h, cookieConfig: {lifetimeType: Permanent}}
    backendRefs: [{name: reviews, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: by-header, namespace: default}
spec:
  parentRefs: [{name: edge}]
  hostnames: [header.example]
  rules:
  - sessionPersistence: {sessionName: x-reviews-session, type: Header}
    backendRefs: [{name: reviews, port: 9080}]
"#;

#[test]
fn session_persistence_sticks_to_one_endpoint() {
    let Some((dir, config)) = envoy_test("gwapi-sessions") else {
        return;
    };
    for f in ["services.yaml", "pods.yaml"] {
        config.copy_from(&repo().join("examples/bookinfo").join(f), f);
    }
    config.write("sessions.yaml", SESSIONS);
    let _backends = Backends::start(&PODS, 9080);
    let meshd = Meshd::start_on(config.path(), dir.path(), 18080, &[]);
    let router = Envoy::start(&EDGE, Ads::Delta, 15000, dir.path());
    let get = |host: &str, headers: &[(&str, &str)]| {
        let mut h = vec![("Host", host)];
        h.extend_from_slice(headers);
        http_get(&format!("{}:8080", EDGE.ip), "/", &h).expect("request through the gateway")
    };
    let spread = |host: &str, headers: &[(&str, &str)]| -> BTreeMap<String, usize> {
        let mut d = BTreeMap::new();
        for _ in 0..30 {
            *d.entry(get(host, headers).body).or_insert(0) += 1;
        }
        d
    };
    for host in ["plain.example", "sticky.example", "header.example"] {
        wait_for(host, Duration::from_secs(20), || {
            (get(host, &[]).status == 200).then_some(())
        });
    }
    // Without a session, every route spreads over the pods.
    assert!(spread("plain.example", &[]).len() >= 2);
    assert!(
        spread("sticky.example", &[]).len() >= 2,
        "no cookie, no stickiness"
    );
    assert!(get("plain.example", &[]).header("set-cookie").is_none());

    // The cookie names the endpoint; with it every request goes there.
    let first = get("sticky.example", &[]);
    let cookie = first
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    assert!(cookie.starts_with("reviews-session="), "{cookie}");
    assert!(
        cookie.contains("Max-Age=3600"),
        "a Permanent cookie lives for absoluteTimeout: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap_or_default().to_string();
    let d = spread("sticky.example", &[("Cookie", &pair)]);
    assert_eq!(d.get(&first.body), Some(&30), "{d:?}");

    // A header session: the answer names the endpoint in the header, sent back it sticks.
    let first = get("header.example", &[]);
    let session = first
        .header("x-reviews-session")
        .expect("a session header")
        .to_string();
    let d = spread("header.example", &[("x-reviews-session", &session)]);
    assert_eq!(d.get(&first.body), Some(&30), "{d:?}");

    // The cookie route's persistence taken away (its rules otherwise unchanged): the
    // cookie no longer sticks.
    let plain = SESSIONS.replace(
        "  - sessionPersistence: {sessionName: reviews-session, type: Cookie, absoluteTimeout: 1h, cookieConfig: {lifetimeType: Permanent}}\n    backendRefs",
        "  - backendRefs",
    );
    assert_ne!(plain, SESSIONS);
    config.write("sessions.yaml", &plain);
    wait_for("the cookie ignored", Duration::from_secs(20), || {
        (spread("sticky.example", &[("Cookie", &pair)]).len() >= 2).then_some(())
    });
    assert_envoy_accepted(&router);
    meshd.assert_no_nacks();
}

/// A Gateway validating client certificates (`spec.tls.frontend`): by default against
/// ConfigMap `client-ca`; on port 9443 against `client-ca-2`, falling back to insecure.
const FRONTEND: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: istio
  tls:
    frontend:
      default:
        validation:
          caCertificateRefs: [{group: "", kind: ConfigMap, name: client-ca}]
      perPort:
      - port: 9443
        tls:
          validation:
            caCertificateRefs: [{group: "", kind: ConfigMap, name: client-ca-2}]
            mode: AllowInsecureFallback
  listeners:
  - name: https
    port: 8443
    protocol: HTTPS
    hostname: a.example
    tls: {certificateRefs: [{name: gw-cert}]}
  - name: https-alt
    port: 9443
    protocol: HTTPS
    hostname: b.example
    tls: {certificateRefs: [{name: gw-cert}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pages, namespace: default}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: productpage, port: 9080}]}]
"#;

fn ca_config_map(name: &str, pem: &str) -> String {
    let pem: Vec<String> = pem.lines().map(|l| format!("    {l}")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default}}\ndata:\n  ca.crt: |\n{}\n",
        pem.join("\n")
    )
}

#[test]
fn frontend_client_certificate_validation() {
    let Some((dir, config)) = envoy_test("gwapi-frontend") else {
        return;
    };
    for f in ["services.yaml", "pods.yaml"] {
        config.copy_from(&repo().join("examples/bookinfo").join(f), f);
    }
    let gw_ca = TestCa::new("gw-ca");
    let (cert, key) = gw_ca.leaf("edge-1", &["a.example", "b.example"]);
    config.write(
        "gw-cert.yaml",
        &tls_secret_yaml("gw-cert", "default", &cert, &key, &gw_ca.pem, None),
    );
    let client_ca = TestCa::new("client-ca");
    let other_ca = TestCa::new("client-ca-2");
    config.write(
        "client-ca.yaml",
        &ca_config_map("client-ca", &client_ca.pem),
    );
    config.write(
        "client-ca-2.yaml",
        &ca_config_map("client-ca-2", &other_ca.pem),
    );
    let client = client_ca.leaf("client-1", &["client.example"]);
    let other = other_ca.leaf("client-2", &["client2.example"]);
    config.write("frontend.yaml", FRONTEND);
    let _backends = Backends::start(&PODS, 9080);
    let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 18080);
    let node = NodeSpec {
        labels: &[("gateway.networking.k8s.io/gateway-name", "edge")],
        ..EDGE
    };
    let router = secure_router(&dir, &issuer, &node);
    let get = |port: u16, sni: &str, cert: Option<&(String, String)>| {
        https_get(
            &format!("127.0.0.1:{port}"),
            sni,
            "/",
            &gw_ca.pem,
            cert.map(|(c, k)| (c.as_str(), k.as_str())),
        )
        .ok()
        .map(|r| r.status)
    };
    // Port 8443 (default validation): only a certificate client-ca signed gets in.
    wait_for(
        "a verified client through 8443",
        Duration::from_secs(20),
        || (get(8443, "a.example", Some(&client)) == Some(200)).then_some(()),
    );
    assert_eq!(
        get(8443, "a.example", None),
        None,
        "no certificate, no connection"
    );
    assert_eq!(
        get(8443, "a.example", Some(&other)),
        None,
        "another CA's certificate refused"
    );
    // Port 9443 (AllowInsecureFallback): any certificate, or none.
    wait_for("port 9443", Duration::from_secs(20), || {
        (get(9443, "b.example", Some(&other)) == Some(200)).then_some(())
    });
    assert_eq!(get(9443, "b.example", Some(&client)), Some(200));
    assert_eq!(get(9443, "b.example", None), Some(200));
    let st = status_of(&config);
    let gw = &st["Gateway default/edge"];
    assert_eq!(
        condition(&gw["conditions"], "InsecureFrontendValidationMode"),
        ("True".into(), "ConfigurationChanged".into()),
        "{gw}"
    );

    // A CA reference that does not resolve: the listener is not accepted, and says why.
    config.write("client-ca.yaml", "");
    let st = status_of(&config);
    let https = &st["Gateway default/edge"]["listeners"][0];
    assert_eq!(
        condition(&https["conditions"], "ResolvedRefs"),
        ("False".into(), "InvalidCACertificateRef".into()),
        "{https}"
    );
    assert_eq!(
        condition(&https["conditions"], "Accepted"),
        ("False".into(), "NoValidCACertificate".into()),
        "{https}"
    );
    assert_eq!(condition(&https["conditions"], "Programmed").0, "False");
    wait_for(
        "the unvalidated listener withdrawn",
        Duration::from_secs(20),
        || (get(8443, "a.example", Some(&client)).is_none()).then_some(()),
    );
    assert_eq!(
        get(9443, "b.example", None),
        Some(200),
        "the other listener stays"
    );
    assert_envoy_accepted(&router);
    meshd.assert_no_nacks();
}

/// The Gateway presents its own client certificate (`spec.tls.backend.clientCertificateRef`)
/// to a backend that demands one, where a BackendTLSPolicy makes it originate TLS.
#[test]
fn backend_client_certificate_from_the_gateway() {
    let Some((dir, config)) = envoy_test("gwapi-backend-client") else {
        return;
    };
    let backend_ca = TestCa::new("backend-ca");
    let client_ca = TestCa::new("gateway-clients");
    let (cert, key) = backend_ca.leaf("secure-1", &["secure.example.com"]);
    // The backend refuses any client without a certificate client_ca signed.
    let _server = TlsBackend::start("127.0.1.60:8443", &cert, &key, &client_ca.pem, true);
    let (gw_cert, gw_key) = client_ca.leaf("edge-gateway", &["edge.default"]);
    config.write(
        "gw-client.yaml",
        &tls_secret_yaml("gw-client", "default", &gw_cert, &gw_key, "", None),
    );
    config.write("ca.yaml", &ca_config_map("backend-ca", &backend_ca.pem));
    let with_cert = BACKEND_TLS.replace(
        "  gatewayClassName: istio\n  listeners: [{name: http, port: 8080, protocol: HTTP}]",
        "  gatewayClassName: istio\n  tls: {backend: {clientCertificateRef: {name: gw-client}}}\n  listeners: [{name: http, port: 8080, protocol: HTTP}]",
    );
    assert_ne!(with_cert, BACKEND_TLS);
    config.write("backend-tls.yaml", &with_cert);
    let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 18080);
    let router = secure_router(&dir, &issuer, &EDGE);
    let get = || {
        http_get(
            &format!("{}:8080", EDGE.ip),
            "/",
            &[("Host", "any.example")],
        )
        .ok()
    };
    let r = wait_for(
        "the backend through mutual TLS",
        Duration::from_secs(20),
        || get().filter(|r| r.status == 200),
    );
    assert_eq!(r.body, "sni=secure.example.com client=edge-gateway");
    let st = status_of(&config);
    assert_eq!(
        condition(&st["Gateway default/edge"]["conditions"], "ResolvedRefs"),
        ("True".into(), "ResolvedRefs".into())
    );

    // Without the certificate the backend refuses the gateway.
    config.write("backend-tls.yaml", BACKEND_TLS);
    wait_for(
        "the backend refusing the gateway",
        Duration::from_secs(20),
        || get().filter(|r| r.status == 503),
    );
    // A reference to a Secret that is not there: the Gateway says so.
    config.write(
        "backend-tls.yaml",
        &with_cert.replace("name: gw-client}", "name: nowhere}"),
    );
    let st = status_of(&config);
    assert_eq!(
        condition(&st["Gateway default/edge"]["conditions"], "ResolvedRefs"),
        ("False".into(), "InvalidClientCertificateRef".into())
    );
    assert_eq!(
        condition(&st["Gateway default/edge"]["conditions"], "Accepted").0,
        "True"
    );
    assert_envoy_accepted(&router);
    meshd.assert_no_nacks();
}

/// A gateway proxy that fetches certificates over SDS: it authenticates on meshd's TLS
/// port as its namespace's service account.
fn secure_router(dir: &TempDir, issuer: &crate::tokens::TokenIssuer, node: &NodeSpec) -> Envoy {
    Envoy::start_with(
        node,
        &EnvoyOpts {
            xds: Xds::Tls {
                root: dir.path().join("ca/root-cert.pem"),
                token: issuer.token(node.namespace, node.service_account, "istio-ca", 3600, "k1"),
            },
            ..Default::default()
        },
        dir.path(),
    )
}
