//! `meshd explain` as a user runs it: the README's Bookinfo example, `--json`, `--calls`,
//! and the exit statuses (0 whether or not the request matched, 2 for usage or
//! unreadable configuration).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const PRODUCTPAGE: &str = "sidecar~10.0.0.1~productpage-v1-1.default~default.svc.cluster.local";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Bookinfo with the A/B rule: john to v2, everyone else to v1 (the README's example).
fn ab_config(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshd-explain-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    for e in std::fs::read_dir(repo().join("examples/bookinfo")).expect("examples") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "yaml") {
            std::fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy");
        }
    }
    std::fs::copy(
        repo().join("examples/scenarios/reviews-header-john.yaml"),
        dir.join("reviews.yaml"),
    )
    .expect("copy scenario");
    dir
}

/// `meshd explain --config-dir CONFIG ARGS…` (ARGS naming the proxy).
fn explain_as(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshd"))
        .arg("explain")
        .arg("--config-dir")
        .arg(config)
        .args(args)
        .output()
        .expect("run meshd explain")
}

/// `meshd explain` for Bookinfo's productpage sidecar.
fn explain(config: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--proxy", PRODUCTPAGE, "--label", "app=productpage"];
    all.extend_from_slice(args);
    explain_as(config, &all)
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn readme_example_names_the_rule_and_the_subset() {
    let dir = ab_config("readme");
    let out = explain(
        &dir,
        &[
            "--address",
            "127.0.0.1",
            "--port",
            "9080",
            "--host",
            "reviews",
            "-H",
            "end-user: john",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = text(&out);
    assert!(
        t.contains("header end-user = john) from VirtualService default/reviews http[0]"),
        "{t}"
    );
    assert!(
        t.contains("DestinationRule default/reviews subset v2"),
        "{t}"
    );
    assert!(
        t.contains("=> cluster outbound|9080|v2|reviews.default.svc.cluster.local"),
        "{t}"
    );

    // Anyone else falls through to the rule's second route: v1.
    let out = explain(
        &dir,
        &[
            "--address",
            "127.0.0.1",
            "--port",
            "9080",
            "--host",
            "reviews",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_str(text(&out).trim()).expect("one JSON object");
    assert_eq!(
        v["cluster"],
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
    assert_eq!(v["error"], Value::Null);
    assert_eq!(v["routeConfig"], "9080");
    assert_eq!(v["virtualHost"], "reviews.default.svc.cluster.local:9080");
    let objects = objects_of(&v);
    assert!(
        objects.contains(&"VirtualService default/reviews"),
        "{objects:?}"
    );
    assert!(
        objects.contains(&"DestinationRule default/reviews"),
        "{objects:?}"
    );

    // A host in a namespace that has no such service: the nearest miss says so.
    let out = explain(
        &dir,
        &[
            "--address",
            "127.0.0.1",
            "--port",
            "9080",
            "--host",
            "reviews.prod",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "no match is still an answer");
    assert!(
        text(&out).contains("no Service reviews in namespace prod"),
        "{}",
        text(&out)
    );
}

#[test]
fn calls_file_answers_json_lines_from_one_translation() {
    let dir = ab_config("calls");
    let calls = dir.join("calls.txt");
    std::fs::write(
        &calls,
        "- {name: john, address: 127.0.0.1, port: 9080, host: reviews, headers: {end-user: john}}\n\
         - {name: anyone, address: 127.0.0.1, port: 9080, host: reviews}\n\
         - {name: nothing-there, address: 127.0.0.1, port: 9999, mode: gateway}\n",
    )
    .expect("write calls");
    let out = explain(&dir, &["--calls", calls.to_str().expect("utf8")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = text(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["name"], "john");
    assert_eq!(
        lines[0]["cluster"],
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    assert_eq!(
        lines[1]["cluster"],
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
    assert_eq!(lines[2]["error"], "no listener matched");
}

#[test]
fn usage_and_unreadable_configuration_exit_2() {
    let dir = ab_config("usage");
    // No port.
    let out = explain(&dir, &["--host", "reviews"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"));
    // A calls file that is not a list of calls.
    let bad = dir.join("bad-calls.txt");
    std::fs::write(&bad, "- {port: 9080, colour: blue}\n").expect("write");
    let out = explain(&dir, &["--calls", bad.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("colour"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A configuration folder that does not exist.
    let out = explain(&dir.join("missing"), &["--port", "9080"]);
    assert_eq!(out.status.code(), Some(2));
    // ALPN without TLS is not a call that can be made.
    let out = explain(&dir, &["--port", "9080", "--alpn", "h2", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_str(text(&out).trim()).expect("JSON");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("TLS handshake")),
        "{v}"
    );
}

/// An AuthorizationPolicy on reviews: only productpage's identity may GET /reviews*.
#[test]
fn authorization_verdicts_name_the_policy() {
    let dir = ab_config("authz");
    std::fs::write(
        dir.join("authz.yaml"),
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/reviews*"]}}]
"#,
    )
    .expect("write policy");
    let verdict = |extra: &[&str]| -> Value {
        let mut args = vec![
            "--mode",
            "inbound",
            "--address",
            "127.0.0.12",
            "--port",
            "9080",
            "--json",
        ];
        args.extend_from_slice(extra);
        let mut all = vec![
            "--proxy",
            "sidecar~127.0.0.12~reviews-v1.default~default.svc.cluster.local",
            "--label",
            "app=reviews",
            "--label",
            "version=v1",
        ];
        all.extend_from_slice(&args);
        let out = explain_as(&dir, &all);
        let v: Value = serde_json::from_str(text(&out).trim()).expect("JSON");
        assert_eq!(v["cluster"], "inbound|9080||", "{v}");
        v["authorization"].clone()
    };
    let productpage = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
    let ok = verdict(&[
        "--tls",
        "mtls",
        "--principal",
        productpage,
        "--path",
        "/reviews/1",
    ]);
    assert_eq!(ok["verdict"], "allowed", "{ok}");
    assert!(
        ok["reason"]
            .as_str()
            .is_some_and(|r| r.contains("default/reviews-viewer rule 0"))
    );
    let other = verdict(&[
        "--tls",
        "mtls",
        "--principal",
        "spiffe://cluster.local/ns/default/sa/bookinfo-ratings",
        "--path",
        "/reviews/1",
    ]);
    assert_eq!(other["verdict"], "denied", "{other}");
    let wrong_path = verdict(&[
        "--tls",
        "mtls",
        "--principal",
        productpage,
        "--path",
        "/admin",
    ]);
    assert_eq!(wrong_path["verdict"], "denied", "{wrong_path}");
    // Plaintext has no peer identity at all.
    let plain = verdict(&["--path", "/reviews/1"]);
    assert_eq!(plain["verdict"], "denied", "{plain}");
    // mTLS from an identity explain was not told: it depends on who calls.
    let unknown = verdict(&["--tls", "mtls", "--path", "/reviews/1"]);
    assert_eq!(unknown["verdict"], "depends", "{unknown}");
}

/// Through Bookinfo's ingress gateway: the Gateway server is named with the route.
#[test]
fn gateway_calls_name_the_gateway_server() {
    let out = explain_as(
        &repo().join("examples/bookinfo"),
        &[
            "--proxy",
            "router~127.0.0.50~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local",
            "--label",
            "istio=ingressgateway",
            "--port",
            "8080",
            "--path",
            "/productpage",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_str(text(&out).trim()).expect("JSON");
    assert_eq!(v["listener"], "0.0.0.0_8080", "{v}");
    assert_eq!(v["routeConfig"], "http.8080");
    assert_eq!(
        v["cluster"],
        "outbound|9080||productpage.default.svc.cluster.local"
    );
    let objects = objects_of(&v);
    assert!(
        objects.contains(&"Gateway default/bookinfo-gateway"),
        "{objects:?}"
    );
    assert!(
        objects.contains(&"VirtualService default/bookinfo"),
        "{objects:?}"
    );
    let steps = v["explanation"].to_string();
    assert!(steps.contains("server[0] (HTTP 8080, hosts *)"), "{steps}");
}

/// The `objects` list of an explain answer.
fn objects_of(v: &Value) -> Vec<&str> {
    v["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// For a Gateway API gateway, explain names the Gateway listener and the HTTPRoute rule
/// that made each step (and the Istio objects they became), so "why did my request go
/// there?" is answered in the user's own objects.
#[test]
fn gateway_api_steps_name_the_gateway_and_the_route() {
    let dir = std::env::temp_dir().join(format!("meshd-explain-gwapi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::copy(
        repo().join("examples/bookinfo/services.yaml"),
        dir.join("services.yaml"),
    )
    .expect("copy");
    std::fs::write(
        dir.join("gateway.yaml"),
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: istio
  listeners: [{name: web, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pages}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /reviews}}]
    backendRefs: [{name: reviews, port: 9080}]
  - backendRefs: [{name: productpage, port: 9080}]
"#,
    )
    .expect("write");
    let out = explain_as(
        &dir,
        &[
            "--proxy",
            "router~10.0.0.9~edge-istio-1.default~default.svc.cluster.local",
            "--label",
            "gateway.networking.k8s.io/gateway-name=edge",
            "--port",
            "80",
            "--path",
            "/reviews/1",
        ],
    );
    let t = text(&out);
    assert!(
        t.contains("Gateway.gateway.networking.k8s.io default/edge listener web"),
        "{t}"
    );
    assert!(t.contains("from HTTPRoute default/pages rules[0]"), "{t}");
    assert!(
        t.contains("=> cluster outbound|9080||reviews.default.svc.cluster.local"),
        "{t}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
