//! `meshd translate --format bootstrap` produces configuration real Envoy accepts.

use std::process::Command;

use crate::harness::*;

fn validate(config_dir: &std::path::Path, node: &str, labels: &[&str], dir: &TempDir) {
    let Some(envoy) = envoy_bin() else {
        skip_or_fail("envoy is not installed");
        return;
    };
    let mut cmd = Command::new(meshd_bin());
    cmd.arg("translate")
        .arg("--config-dir")
        .arg(config_dir)
        .args(["--proxy", node, "--format", "bootstrap"]);
    for l in labels {
        cmd.args(["--label", l]);
    }
    let out = cmd.output().expect("run meshd translate");
    assert!(
        out.status.success(),
        "translate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = node.replace(['~', '.'], "_");
    let path = dir.path().join(format!("{name}.json"));
    std::fs::write(&path, &out.stdout).expect("write");
    let v = Command::new(envoy)
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(
        v.status.success() && text.contains("OK"),
        "envoy --mode validate refused {node}:\n{text}"
    );
    // The bootstrap is not trivially empty.
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        json["staticResources"]["clusters"]
            .as_array()
            .is_some_and(|c| c.len() > 3),
        "{node}: clusters in the bootstrap"
    );
}

/// Every Pod of examples/bookinfo, as a sidecar, plus its ingress gateway.
#[test]
fn every_example_proxy_bootstrap_passes_envoy_validate() {
    let dir = TempDir::new("bootstrap");
    let examples = repo().join("examples/bookinfo");
    let pods = [
        ("127.0.0.10", "productpage-v1"),
        ("127.0.0.11", "details-v1"),
        ("127.0.0.12", "reviews-v1"),
        ("127.0.0.13", "reviews-v2"),
        ("127.0.0.14", "reviews-v3"),
        ("127.0.0.15", "ratings-v1"),
    ];
    for (ip, pod) in pods {
        validate(
            &examples,
            &format!("sidecar~{ip}~{pod}.default~default.svc.cluster.local"),
            &[],
            &dir,
        );
    }
    validate(
        &examples,
        "router~127.0.0.20~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local",
        &["istio=ingressgateway"],
        &dir,
    );
}

/// Istio's own Bookinfo networking samples, all at once, pass too.
#[test]
fn istio_bookinfo_samples_bootstrap_passes_envoy_validate() {
    let Some(_) = shared_or_skip("Istio's Bookinfo samples through envoy --mode validate") else {
        return;
    };
    let dir = TempDir::new("samples");
    let config = TempDir::new("samples-config");
    for f in ["services.yaml", "pods.yaml"] {
        config.copy_from(&repo().join("examples/bookinfo").join(f), f);
    }
    for f in [
        "destination-rule-all.yaml",
        "virtual-service-reviews-jason-v2-v3.yaml",
        "virtual-service-ratings-test-delay.yaml",
        "virtual-service-details-v2.yaml",
        "bookinfo-gateway.yaml",
        "egress-rule-google-apis.yaml",
    ] {
        config.copy_from(&shared().join("bookinfo/networking").join(f), f);
    }
    validate(
        config.path(),
        "sidecar~127.0.0.10~productpage-v1.default~default.svc.cluster.local",
        &["app=productpage", "version=v1"],
        &dir,
    );
}

/// Traffic policy, route and sidecar fields that have no traffic test of their own: Envoy
/// accepts what meshd makes of them.
#[test]
fn every_policy_field_passes_envoy_validate() {
    let dir = TempDir::new("policy-fields");
    let config = TempDir::new("policy-fields-config");
    for f in ["services.yaml", "pods.yaml"] {
        config.copy_from(&repo().join("examples/bookinfo").join(f), f);
    }
    config.write(
        "policy.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 30s, aggression: 2, minimumPercent: 10}}
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 2s
        maxConnectionDuration: 600s
        tcpKeepalive: {probes: 3, time: 60s, interval: 10s}
      http:
        http1MaxPendingRequests: 10
        http2MaxRequests: 100
        maxRequestsPerConnection: 5
        maxRetries: 3
        idleTimeout: 30s
        useClientProtocol: true
    outlierDetection: {consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 30s}
    retryBudget: {percent: 25, minRetryConcurrency: 2}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool:
        http:
          h2UpgradePolicy: UPGRADE
          maxConcurrentStreams: 50
          http2KeepAlive: {interval: 30s, timeout: 5s}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /moved}}]
    redirect: {uri: /v2/moved, derivePort: FROM_REQUEST_PORT}
  - match: [{uri: {prefix: /v2}, statPrefix: reviews-v2}]
    retries: {attempts: 3, retryRemoteLocalities: true, retryOn: "5xx,connect-failure"}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example.com]
  addresses: [240.0.0.10]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 5443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db.example.com]
  tls:
  - match: [{sniHosts: [replica.db.example.com]}]
    route:
    - destination: {host: db.example.com, port: {number: 5443}}
      weight: 100
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews}
spec:
  workloadSelector: {labels: {app: reviews}}
  inboundConnectionPool:
    http: {http1MaxPendingRequests: 20, idleTimeout: 10s}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    captureMode: NONE
    defaultEndpoint: 127.0.1.12:9080
    connectionPool:
      tcp: {maxConnections: 7}
"#,
    );
    for (ip, pod, app) in [
        ("127.0.0.10", "productpage-v1", "productpage"),
        ("127.0.0.12", "reviews-v1", "reviews"),
    ] {
        validate(
            config.path(),
            &format!("sidecar~{ip}~{pod}.default~default.svc.cluster.local"),
            &[&format!("app={app}")],
            &dir,
        );
    }
    // And the fields are there, not dropped on the way.
    let client = std::fs::read_to_string(
        dir.path()
            .join("sidecar_127_0_0_10_productpage-v1_default_default_svc_cluster_local.json"),
    )
    .expect("productpage bootstrap");
    for want in [
        "retryBudget",
        "minWeightPercent",
        "\"portRedirect\": 9080",
        "upstream.slow_start.aggression",
        "maxConnectionDuration",
        "useDownstreamProtocolConfig",
        "connectionKeepalive",
        "\"statPrefix\": \"reviews-v2\"",
        "envoy.retry_priorities.previous_priorities",
        // The TLS service's own VIP listener chooses by SNI.
        "replica.db.example.com",
    ] {
        assert!(
            client.contains(want),
            "{want} missing from the client's config"
        );
    }
    let server = std::fs::read_to_string(
        dir.path()
            .join("sidecar_127_0_0_12_reviews-v1_default_default_svc_cluster_local.json"),
    )
    .expect("reviews bootstrap");
    assert!(
        server.contains("\"maxConnections\": 7"),
        "ingress connectionPool on inbound|9080"
    );
}
