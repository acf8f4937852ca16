//! istio.io task "Circuit Breaking" (tasks/traffic-management/circuit-breaking): httpbin
//! with a DestinationRule allowing one connection, one pending request and one request
//! per connection; fortio's calls through its sidecar one at a time all succeed, while 2
//! and then 3 concurrent connections get some 503s, each one counted by Envoy as
//! `upstream_rq_pending_overflow` of httpbin's cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::*;
use crate::traffic_apps::{KeepAlive, deploy, httpbin, kubectl_apply};

/// samples/httpbin/httpbin.yaml (not in ../shared).
const HTTPBIN: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata:
  name: httpbin
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin
  labels:
    app: httpbin
    service: httpbin
spec:
  ports:
  - name: http
    port: 8000
    targetPort: 8080
  selector:
    app: httpbin
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin
spec:
  replicas: 1
  selector:
    matchLabels:
      app: httpbin
      version: v1
  template:
    metadata:
      labels:
        app: httpbin
        version: v1
    spec:
      serviceAccountName: httpbin
      containers:
      - image: docker.io/mccutchen/go-httpbin:v2.15.0
        imagePullPolicy: IfNotPresent
        name: httpbin
        ports:
        - containerPort: 8080
"#;

/// The task's "Configuring the circuit breaker" DestinationRule.
const CIRCUIT_BREAKER: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"#;

/// The fortio client's pod (samples/httpbin/sample-client/fortio-deploy.yaml) and a
/// Sidecar binding its outbound listener for httpbin's port (no iptables here).
const FORTIO: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: fortio-deploy
  namespace: default
  labels: {app: fortio}
spec:
  containers: [{name: fortio, image: docker.io/fortio/fortio:latest_release}]
status: {phase: Running, podIP: 127.0.0.41}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: fortio, namespace: default}
spec:
  workloadSelector: {labels: {app: fortio}}
  egress:
  - port: {number: 8000, protocol: HTTP, name: http}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: ["./*"]
"#;

const CLUSTER: &str = "outbound|8000||httpbin.default.svc.cluster.local";

/// `fortio load -c C -qps 0 -n N http://httpbin:8000/get`: C connections, each sending
/// its share of the N requests back to back. Counts by status; a 503 is counted as
/// `503 overflow` when Envoy marks it as its circuit breaker's (`x-envoy-overloaded`).
fn fortio_load(c: usize, n: usize) -> BTreeMap<String, usize> {
    let start = std::sync::Barrier::new(c);
    let codes = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..c {
            s.spawn(|| {
                let mut conn = KeepAlive::new("127.0.0.1:8000");
                start.wait();
                for _ in 0..n / c {
                    let key = match conn.get("httpbin:8000", "/get") {
                        Ok(r)
                            if r.status == 503
                                && r.header("x-envoy-overloaded") == Some("true") =>
                        {
                            "503 overflow".to_string()
                        }
                        Ok(r) if r.status == 200 => "200".to_string(),
                        Ok(r) => format!("{} {:?} {}", r.status, r.headers, r.body),
                        Err(e) => format!("error {e}"),
                    };
                    *codes.lock().expect("lock").entry(key).or_insert(0) += 1;
                }
            });
        }
    });
    codes.into_inner().expect("lock")
}

fn pending_overflow(fortio: &Envoy) -> u64 {
    let name = format!("cluster.{CLUSTER}.upstream_rq_pending_overflow");
    fortio
        .stats("upstream_rq_pending_overflow")
        .into_iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {name} in fortio's sidecar stats"))
}

fn count(d: &BTreeMap<String, usize>, key: &str) -> usize {
    d.get(key).copied().unwrap_or(0)
}

#[test]
fn circuit_breaker_trips_on_concurrent_connections() {
    let Some((dir, config)) = envoy_test("circuit") else {
        return;
    };
    deploy(&config, HTTPBIN, &[("httpbin", "127.0.0.21")]);
    config.write("fortio.yaml", FORTIO);
    kubectl_apply(&config, CIRCUIT_BREAKER);
    let app = HttpApp::start("127.0.0.21:8080", httpbin);
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    let fortio = Envoy::start_with(
        &NodeSpec {
            kind: "sidecar",
            ip: "127.0.0.41",
            pod: "fortio-deploy",
            namespace: "default",
            labels: &[("app", "fortio")],
            service_account: "default",
        },
        &EnvoyOpts::default(),
        dir.path(),
    );
    // "fortio curl -quiet http://httpbin:8000/get": 200.
    wait_for(
        "httpbin through fortio's sidecar",
        Duration::from_secs(20),
        || {
            KeepAlive::new("127.0.0.1:8000")
                .get("httpbin:8000", "/get")
                .ok()
                .filter(|r| r.status == 200)
        },
    );
    assert_eq!(pending_overflow(&fortio), 0);
    let reached_before = app.count();

    // One connection at a time never overflows: 20 × 200.
    let d = fortio_load(1, 20);
    assert_eq!(count(&d, "200"), 20, "one connection, no 503s: {d:?}");
    assert_eq!(pending_overflow(&fortio), 0);

    // "fortio load -c 2 -qps 0 -n 20": "almost all requests made it through" (the task
    // shows 18 × 200, 2 × 503): one request in flight and one pending fit; a 503 only when
    // a third arrives while the closing connection still counts.
    let two = fortio_load(2, 20);
    assert_eq!(
        count(&two, "200") + count(&two, "503 overflow"),
        20,
        "only 200s and the circuit breaker's 503s: {two:?}"
    );
    assert!(
        count(&two, "200") >= 10,
        "most requests made it through: {two:?}"
    );

    // "fortio load -c 3 -qps 0 -n 30": "Now you start to see the expected circuit breaking
    // behavior" (the task shows 11 × 200, 19 × 503): three requests at once are one more
    // than one connection and one pending request hold.
    let three = fortio_load(3, 30);
    assert_eq!(
        count(&three, "200") + count(&three, "503 overflow"),
        30,
        "only 200s and the circuit breaker's 503s: {three:?}"
    );
    assert!(
        count(&three, "503 overflow") >= 3,
        "the circuit breaker trips with 3 concurrent connections: {three:?}"
    );
    assert!(count(&three, "200") >= 1, "{three:?}");

    // "upstream_rq_pending_overflow ... 21 calls so far have been flagged for circuit
    // breaking": one per 503 the client got.
    let flagged = count(&two, "503 overflow") + count(&three, "503 overflow");
    assert_eq!(
        pending_overflow(&fortio),
        flagged as u64,
        "Envoy counts every 503 as a pending overflow of {CLUSTER}"
    );
    // Each request that got through reached httpbin; none of the 503s did.
    let answered = 20 + count(&two, "200") + count(&three, "200");
    assert_eq!(
        app.count() - reached_before,
        answered,
        "httpbin got exactly the requests that passed"
    );
    assert_envoy_accepted(&fortio);
    drop(meshd);
}
