//! meshd's copy of Envoy's validation rules (`meshd::envoy::rules`, read from the
//! `validate.rules` annotations of Envoy's protos) against Envoy itself: for each case,
//! meshd's verdict on a resource must be Envoy's (`envoy --mode validate` on a bootstrap
//! holding it as a static resource). A case meshd refuses that Envoy accepts would refuse
//! good EnvoyFilters; one Envoy refuses that meshd passes would reach Envoy as a NACK.

use std::process::Command;

use meshd::envoy::{pb, rules};
use serde_json::{Value, json};

use crate::harness::*;

const CLUSTER: &str = "envoy.config.cluster.v3.Cluster";
const LISTENER: &str = "envoy.config.listener.v3.Listener";

fn cluster(extra: Value) -> Value {
    let mut c = json!({
        "name": "c",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}
        ]}]},
    });
    if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
        c.extend(e);
    }
    c
}

/// A listener whose HTTP connection manager holds `route` in one virtual host, and
/// `filters` before the router.
fn listener(route: Value, filters: Vec<Value>, stat_prefix: &str) -> Value {
    let mut http_filters = filters;
    http_filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    json!({
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 18080}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": stat_prefix,
                "route_config": {"name": "r", "validate_clusters": false, "virtual_hosts": [
                    {"name": "vh", "domains": ["*"], "routes": [route]}
                ]},
                "http_filters": http_filters,
            }
        }]}],
    })
}

fn ok_route() -> Value {
    json!({"match": {"prefix": "/"}, "direct_response": {"status": 200}})
}

/// Envoy's verdict: does `--mode validate` accept a bootstrap with this resource?
fn envoy_accepts(
    envoy: &std::path::Path,
    dir: &TempDir,
    i: usize,
    kind: &str,
    v: &Value,
) -> (bool, String) {
    let key = if kind == CLUSTER {
        "clusters"
    } else {
        "listeners"
    };
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {key: [v]},
    });
    let path = dir.path().join(format!("case-{i}.json"));
    std::fs::write(&path, bootstrap.to_string()).expect("write bootstrap");
    let out = Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy --mode validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// meshd's verdict: it decodes (Envoy's schema) and keeps every rule.
fn meshd_accepts(kind: &str, v: &Value) -> (bool, String) {
    if let Err(e) = pb::json_to_bytes(kind, v) {
        return (false, e);
    }
    let broken = rules::check_json(kind, v, rules::Scope::Whole);
    let text: Vec<String> = broken.iter().map(ToString::to_string).collect();
    (broken.is_empty(), text.join("; "))
}

#[test]
fn meshd_refuses_exactly_what_envoy_refuses() {
    let Some(envoy) = envoy_bin() else {
        skip_or_fail("envoy is not installed");
        return;
    };
    let dir = TempDir::new("rules");
    let cases: Vec<(&str, &str, Value)> = vec![
        ("a valid cluster", CLUSTER, cluster(json!({}))),
        (
            "a negative connect timeout",
            CLUSTER,
            cluster(json!({"connect_timeout": "-5s"})),
        ),
        (
            "a zero connect timeout",
            CLUSTER,
            cluster(json!({"connect_timeout": "0s"})),
        ),
        (
            "an ejection percentage above 100",
            CLUSTER,
            cluster(json!({"outlier_detection": {"max_ejection_percent": 200}})),
        ),
        (
            "an undefined load balancing policy",
            CLUSTER,
            cluster(json!({"lb_policy": 42})),
        ),
        (
            "a circuit breaker priority that does not exist",
            CLUSTER,
            cluster(json!({"circuit_breakers": {"thresholds": [{"priority": 7}]}})),
        ),
        (
            "a DNS refresh rate below 1 ms",
            CLUSTER,
            cluster(json!({"type": "STRICT_DNS", "dns_refresh_rate": "0.0001s"})),
        ),
        (
            "a buffer limit (no rule)",
            CLUSTER,
            cluster(json!({"per_connection_buffer_limit_bytes": 4321})),
        ),
        (
            "an endpoint port above 65535",
            CLUSTER,
            cluster(json!({"load_assignment": {
            "cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
            {"socket_address": {"address": "127.0.0.1", "port_value": 70000}}}}]}]}})),
        ),
        (
            "a cluster without a name",
            CLUSTER,
            cluster(json!({"name": ""})),
        ),
        (
            "a valid listener",
            LISTENER,
            listener(ok_route(), vec![], "s"),
        ),
        (
            "an unclosed regex group",
            LISTENER,
            listener(
                json!({"match": {"safe_regex": {"regex": "(unclosed"}}, "direct_response": {"status": 200}}),
                vec![],
                "s",
            ),
        ),
        (
            "a valid regex",
            LISTENER,
            listener(
                json!({"match": {"safe_regex": {"regex": "^/a/[0-9]+$"}}, "direct_response": {"status": 200}}),
                vec![],
                "s",
            ),
        ),
        (
            "a header name with a space (Envoy's rule is not strict)",
            LISTENER,
            listener(
                json!({"match": {"prefix": "/"}, "direct_response": {"status": 200},
                   "request_headers_to_add": [{"header": {"key": "x a", "value": "v"}}]}),
                vec![],
                "s",
            ),
        ),
        (
            "a header name with a comma",
            LISTENER,
            listener(
                json!({"match": {"prefix": "/"}, "direct_response": {"status": 200},
                   "request_headers_to_add": [{"header": {"key": "x,a", "value": "v"}}]}),
                vec![],
                "s",
            ),
        ),
        (
            "weighted clusters (their cluster_header unset)",
            LISTENER,
            listener(
                json!({"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
                    {"name": "a", "weight": 90}, {"name": "b", "weight": 10}]}}}),
                vec![],
                "s",
            ),
        ),
        (
            "a regex with a literal brace",
            LISTENER,
            listener(
                json!({"match": {"safe_regex": {"regex": "^/api/{id}$"}},
                       "direct_response": {"status": 200}}),
                vec![],
                "s",
            ),
        ),
        (
            "a regex with an unopened group",
            LISTENER,
            listener(
                json!({"match": {"safe_regex": {"regex": "a)"}},
                       "direct_response": {"status": 200}}),
                vec![],
                "s",
            ),
        ),
        (
            "a header name with a newline",
            LISTENER,
            listener(
                json!({"match": {"prefix": "/"}, "direct_response": {"status": 200},
                   "request_headers_to_add": [{"header": {"key": "x\na", "value": "v"}}]}),
                vec![],
                "s",
            ),
        ),
        (
            "an empty header name",
            LISTENER,
            listener(
                json!({"match": {"prefix": "/"}, "direct_response": {"status": 200},
                   "request_headers_to_add": [{"header": {"key": "", "value": "v"}}]}),
                vec![],
                "s",
            ),
        ),
        (
            "a direct response status of 99",
            LISTENER,
            listener(
                json!({"match": {"prefix": "/"}, "direct_response": {"status": 99}}),
                vec![],
                "s",
            ),
        ),
        (
            "a route with no action",
            LISTENER,
            listener(json!({"match": {"prefix": "/"}}), vec![], "s"),
        ),
        (
            "an empty stat prefix",
            LISTENER,
            listener(ok_route(), vec![], ""),
        ),
        (
            "an HTTP filter with no name",
            LISTENER,
            listener(
                ok_route(),
                vec![json!({"name": "",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}})],
                "s",
            ),
        ),
        (
            "a local rate limit filling every 0 s (inside a typed config)",
            LISTENER,
            listener(
                ok_route(),
                vec![json!({
            "name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "rl", "token_bucket": {"max_tokens": 1, "fill_interval": "0s"}}})],
                "s",
            ),
        ),
        (
            "an empty local rate limit bucket (gte: 0)",
            LISTENER,
            listener(
                ok_route(),
                vec![json!({
            "name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "rl", "token_bucket": {"max_tokens": 0, "fill_interval": "1s"}}})],
                "s",
            ),
        ),
    ];
    let mut disagreements = Vec::new();
    let mut refused = 0;
    for (i, (what, kind, v)) in cases.iter().enumerate() {
        let (envoy_ok, envoy_says) = envoy_accepts(&envoy, &dir, i, kind, v);
        let (meshd_ok, meshd_says) = meshd_accepts(kind, v);
        if !envoy_ok {
            refused += 1;
        }
        if envoy_ok != meshd_ok {
            disagreements.push(format!(
                "{what}: Envoy {} ({}), meshd {} ({meshd_says})",
                if envoy_ok { "accepts" } else { "refuses" },
                envoy_says.lines().last().unwrap_or_default(),
                if meshd_ok { "accepts" } else { "refuses" },
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    // Both verdicts occur (else agreement proves little).
    assert!(
        refused >= 10 && refused < cases.len() - 3,
        "{refused} of {} refused",
        cases.len()
    );
}
