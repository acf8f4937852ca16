//! EnvoyFilter through a real Envoy: Istio's local rate limit example (an HTTP filter
//! inserted before the router, given as a TypedStruct), a virtual host and a cluster
//! merged, added live; and a broken EnvoyFilter refused with a diagnostic while the rest
//! keeps working.

use std::time::Duration;

use crate::bookinfo::{Bookinfo, networking};
use crate::harness::*;

const RATE_LIMIT: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: productpage-ratelimit, namespace: default}
spec:
  workloadSelector: {labels: {app: productpage}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        portNumber: 9080
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: {max_tokens: 5, tokens_per_fill: 5, fill_interval: 3600s}
            filter_enabled:
              runtime_key: local_rate_limit_enabled
              default_value: {numerator: 100, denominator: HUNDRED}
            filter_enforced:
              runtime_key: local_rate_limit_enforced
              default_value: {numerator: 100, denominator: HUNDRED}
  - applyTo: VIRTUAL_HOST
    match:
      context: SIDECAR_OUTBOUND
      routeConfiguration:
        portNumber: 9080
        vhost: {name: "reviews.default.svc.cluster.local:9080"}
    patch:
      operation: MERGE
      value:
        response_headers_to_add:
        - header: {key: x-patched-by, value: envoyfilter}
  - applyTo: CLUSTER
    match:
      context: SIDECAR_OUTBOUND
      cluster: {service: reviews.default.svc.cluster.local, portNumber: 9080, subset: v1}
    patch:
      operation: MERGE
      value:
        per_connection_buffer_limit_bytes: 12345
"#;

const BROKEN: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: broken, namespace: default}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    patch:
      operation: INSERT_FIRST
      value:
        name: nonsense
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          no_such_field: 1
"#;

#[test]
fn envoy_filter_rate_limits_and_patches_live() {
    let Some(b) = Bookinfo::start(&networking("virtual-service-all-v1.yaml"), Ads::Delta) else {
        return;
    };
    // Unlimited before the EnvoyFilter.
    let d = b.distribution("reviews", 12, &[]);
    assert_eq!(d.get("reviews-v1"), Some(&12), "{d:?}");

    b.config.write("envoyfilter.yaml", RATE_LIMIT);
    // LDS (the filter) and RDS (the header) may land in either order: wait for both.
    wait_for("the EnvoyFilter applied", Duration::from_secs(20), || {
        let r = b.get("reviews", &[]).ok()?;
        let header = r
            .headers
            .iter()
            .any(|(k, v)| k == "x-patched-by" && v == "envoyfilter");
        (header && r.status == 200).then_some(())
    });
    // The bucket holds 5 for the hour: spend what is left, then everything is refused.
    wait_for("the bucket emptied", Duration::from_secs(20), || {
        b.get("reviews", &[]).ok().filter(|r| r.status == 429)
    });
    let d = b.distribution("reviews", 10, &[]);
    assert_eq!(d.get("status 429"), Some(&10), "all refused now: {d:?}");
    let limited: u64 = b
        .envoy
        .stats("http_local_rate_limiter")
        .iter()
        .filter(|(k, _)| k.ends_with("rate_limited"))
        .map(|(_, v)| *v)
        .sum();
    let ok: u64 = b
        .envoy
        .stats("http_local_rate_limiter")
        .iter()
        .filter(|(k, _)| k.ends_with(".ok"))
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(ok, 5, "exactly the bucket's 5 requests passed");
    assert!(limited >= 11, "limited {limited}");
    // The cluster merge reached Envoy.
    let dump = http_get(
        &b.envoy.admin,
        "/config_dump?resource=dynamic_active_clusters",
        &[],
    )
    .expect("config dump")
    .body;
    let v: serde_json::Value = serde_json::from_str(&dump).expect("json");
    let patched = v["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["cluster"]["name"] == "outbound|9080|v1|reviews.default.svc.cluster.local")
        .map(|c| c["cluster"]["per_connection_buffer_limit_bytes"].clone());
    assert_eq!(patched, Some(serde_json::json!(12345)), "cluster merged");

    // A broken EnvoyFilter: refused with its reason, nothing else disturbed.
    b.config.write("broken.yaml", BROKEN);
    let diags = wait_for("the diagnostic", Duration::from_secs(20), || {
        let d = b.meshd.get_json("/debug/configz");
        let text = d.to_string();
        text.contains("EnvoyFilter default/broken").then_some(text)
    });
    assert!(diags.contains("no_such_field"), "{diags}");
    b.assert_healthy();
}

/// Each breaks one of Envoy's validation rules (its protos' `validate.rules`), which a
/// schema check alone lets through: Envoy would reject the whole update carrying it.
const ENVOY_WOULD_REJECT: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: negative-timeout, namespace: default}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND}
    patch: {operation: MERGE, value: {connect_timeout: -5s}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: out-of-range, namespace: default}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND}
    patch: {operation: MERGE, value: {outlier_detection: {max_ejection_percent: 200}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: undefined-enum, namespace: default}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND}
    patch: {operation: MERGE, value: {lb_policy: 42}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: empty-name, namespace: default}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      value: {name: "", typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: bad-regex, namespace: default}
spec:
  configPatches:
  - applyTo: HTTP_ROUTE
    match:
      context: SIDECAR_OUTBOUND
      routeConfiguration: {vhost: {name: "reviews.default.svc.cluster.local:9080"}}
    patch:
      operation: INSERT_FIRST
      value:
        match: {safe_regex: {regex: "(unclosed"}}
        direct_response: {status: 418}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: fine, namespace: default}
spec:
  configPatches:
  - applyTo: CLUSTER
    match:
      context: SIDECAR_OUTBOUND
      cluster: {service: reviews.default.svc.cluster.local, portNumber: 9080, subset: v1}
    patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 4321}}
"#;

/// Issue 13, "refuse before Envoy does": every broken patch is refused by meshd, named
/// with its field and Envoy's rule (in /debug/configz and `meshd validate`); Envoy
/// rejects nothing; the good EnvoyFilter beside them applies and traffic flows.
#[test]
fn envoy_filters_envoy_would_reject_never_reach_it() {
    let Some(b) = Bookinfo::start(&networking("virtual-service-all-v1.yaml"), Ads::Sotw) else {
        return;
    };
    b.config.write("rejects.yaml", ENVOY_WOULD_REJECT);
    let expected = [
        (
            "negative-timeout",
            "connect_timeout breaks its rule duration.gt: 0s",
        ),
        (
            "out-of-range",
            "outlier_detection.max_ejection_percent breaks its rule uint32.lte: 100",
        ),
        (
            "undefined-enum",
            "lb_policy breaks its rule enum.defined_only",
        ),
        ("empty-name", "name breaks its rule string.min_len: 1"),
        (
            "bad-regex",
            "match.safe_regex.regex breaks its rule a valid RE2",
        ),
    ];
    let diags = wait_for(
        "every broken EnvoyFilter named",
        Duration::from_secs(20),
        || {
            let text = b.meshd.get_json("/debug/configz").to_string();
            expected
                .iter()
                .all(|(name, _)| text.contains(&format!("EnvoyFilter default/{name}")))
                .then_some(text)
        },
    );
    for (name, rule) in expected {
        assert!(diags.contains(rule), "{name}: {rule:?} not in {diags}");
    }
    // The good one beside them is applied.
    wait_for(
        "the good EnvoyFilter applied",
        Duration::from_secs(20),
        || {
            let dump = http_get(
                &b.envoy.admin,
                "/config_dump?resource=dynamic_active_clusters",
                &[],
            )
            .ok()?
            .body;
            let v: serde_json::Value = serde_json::from_str(&dump).ok()?;
            v["configs"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| {
                    c["cluster"]["name"] == "outbound|9080|v1|reviews.default.svc.cluster.local"
                        && c["cluster"]["per_connection_buffer_limit_bytes"] == 4321
                })
                .map(|_| ())
        },
    );
    let d = b.distribution("reviews", 10, &[]);
    assert_eq!(d.get("reviews-v1"), Some(&10), "{d:?}");
    b.assert_healthy();

    // `meshd validate` says the same, with the file and line of each object.
    let out = std::process::Command::new(meshd_bin())
        .arg("validate")
        .arg("--config-dir")
        .arg(b.config.path())
        .output()
        .expect("meshd validate");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{text}");
    for (name, rule) in expected {
        assert!(
            text.contains(&format!("EnvoyFilter default/{name}")) && text.contains(rule),
            "{name} / {rule:?} not in:\n{text}"
        );
    }
    assert!(text.contains("rejects.yaml:"), "{text}");
}
