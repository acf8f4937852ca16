//! What meshd generates where istiod's defaults decide and Envoy's behaviour cannot be
//! observed from a test without outside services (DNS TTLs) or without racing Envoy
//! (retry predicates): each expectation is istiod's output for the same input, read in
//! pilot/pkg/networking/core. The behaviour these settings cause is proven with real
//! Envoy in tests/conformance (timeouts, retries, outlier detection, sniffing).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route::Action};

#[path = "support/config.rs"]
mod support_config;
use support_config::{cluster, generate, snapshot};

/// The `sleep` client's sidecar (istio-proxy 1.28).
fn sleep(snap: &meshd::model::snapshot::Snapshot) -> meshd::translate::Resources {
    generate(
        snap,
        "sidecar~10.0.0.9~sleep.default~default.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "default", "ISTIO_VERSION": "1.28.0", "LABELS": {"app": "sleep"}}),
    )
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec: {containers: [{name: web, image: web}]}
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
"#;

fn route(rcs: &[RouteConfiguration], name: &str) -> RouteConfiguration {
    rcs.iter()
        .find(|r| r.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no route configuration {name}"))
}

#[test]
#[allow(deprecated)]
fn dns_clusters_follow_mesh_config_and_record_ttls() {
    let snap = snapshot(&format!(
        "{SERVICES}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    dnsRefreshRate: 7s\n"
    ));
    let r = sleep(&snap);
    let c = cluster(&r, "outbound|443||api.example.com");
    assert_eq!(c.dns_refresh_rate.as_ref().map(|d| d.seconds), Some(7));
    assert!(c.respect_dns_ttl, "DNS answers' TTLs are honoured");
}

#[test]
fn outlier_detection_and_panic_threshold_as_istiod() {
    let snap = snapshot(&format!(
        "{SERVICES}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web, namespace: default}}\nspec:\n  host: web\n  trafficPolicy:\n    outlierDetection: {{consecutiveGatewayErrors: 0, interval: 1s}}\n"
    ));
    let r = sleep(&snap);
    let c = cluster(&r, "outbound|8080||web.default.svc.cluster.local");
    let o = c.outlier_detection.as_ref().expect("outlier detection");
    // consecutive5xxErrors unset: Envoy's default (5, enforced) stays.
    assert_eq!(o.consecutive_5xx, None);
    assert_eq!(o.enforcing_consecutive_5xx, None);
    // 0: that kind of ejection off.
    assert_eq!(
        o.consecutive_gateway_failure.as_ref().map(|v| v.value),
        Some(0)
    );
    assert_eq!(
        o.enforcing_consecutive_gateway_failure
            .as_ref()
            .map(|v| v.value),
        Some(0)
    );
    let panic = |c: &Cluster| {
        c.common_lb_config
            .as_ref()
            .and_then(|l| l.healthy_panic_threshold.as_ref())
            .map(|p| p.value)
    };
    assert_eq!(panic(c), Some(0.0), "no panic routing (minHealthPercent 0)");
    // Without a DestinationRule too.
    let snap = snapshot(SERVICES);
    let r = sleep(&snap);
    let c = cluster(&r, "outbound|8080||web.default.svc.cluster.local");
    assert_eq!(panic(c), Some(0.0));
}

fn retry_of(
    rc: &RouteConfiguration,
    vhost: &str,
) -> Option<envoy_types::pb::envoy::config::route::v3::RetryPolicy> {
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name == vhost)
        .unwrap_or_else(|| panic!("no virtual host {vhost}"));
    match &vh.routes[0].action {
        Some(Action::Route(a)) => a.retry_policy.clone(),
        _ => None,
    }
}

#[test]
fn retry_defaults_and_consistent_hashing() {
    // The default route: connection-level retries only, previous_hosts on.
    let snap = snapshot(SERVICES);
    let r = sleep(&snap);
    let rc = route(&r.routes, "8080");
    let p = retry_of(&rc, "web.default.svc.cluster.local:8080").expect("default retries");
    assert_eq!(
        p.retry_on,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
    assert!(
        p.retriable_status_codes.is_empty(),
        "no 503 retried by default"
    );
    assert_eq!(p.retry_host_predicate.len(), 1, "previous_hosts");
    // No `:port` domains: the route configuration ignores the port.
    for vh in &rc.virtual_hosts {
        assert!(
            vh.domains.iter().all(|d| !d.ends_with(":8080")),
            "{:?}",
            vh.domains
        );
    }

    // One consistently hashed destination: a retry stays on its host.
    let snap = snapshot(&format!(
        "{SERVICES}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web, namespace: default}}\nspec:\n  host: web\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {{httpHeaderName: x-user}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: default}}\nspec:\n  hosts: [web]\n  http:\n  - retries: {{attempts: 3, retryOn: \"5xx,429\"}}\n    route: [{{destination: {{host: web}}}}]\n"
    ));
    let r = sleep(&snap);
    let p = retry_of(
        &route(&r.routes, "8080"),
        "web.default.svc.cluster.local:8080",
    )
    .expect("retries");
    assert!(
        p.retry_host_predicate.is_empty(),
        "no previous_hosts under hashing"
    );
    assert_eq!(p.retry_on, "5xx,retriable-status-codes");
    assert_eq!(p.retriable_status_codes, vec![429]);
    assert_eq!(p.num_retries.map(|v| v.value), Some(3));
}

#[test]
fn inbound_routes_retry_resets_before_the_request() {
    let snap = snapshot(SERVICES);
    let r = generate(
        &snap,
        "sidecar~10.0.0.1~web.default~default.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "default", "ISTIO_VERSION": "1.28.0", "LABELS": {"app": "web"}}),
    );
    let json =
        serde_json::to_string(&meshd::translate::output::config_dump(&r, "1")).expect("json");
    assert!(
        json.contains("\"retryOn\":\"reset-before-request\""),
        "the inbound default route retries requests reset before reaching the app"
    );
}
