//! istio.io task "TCP Traffic Shifting" (tasks/traffic-management/tcp-traffic-shifting):
//! tcp-echo v1 and v2 behind the ingress gateway's TCP port 31400; `tcp-echo-all-v1.yaml`
//! sends every connection to v1 (every answer prefixed `one`), then
//! `tcp-echo-20-v2.yaml` sends 20% of the connections to v2 (`two`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::*;
use crate::scripted::raw_line;
use crate::traffic_apps::{TcpEcho, deploy, kubectl_apply};

/// samples/tcp-echo/tcp-echo-services.yaml (not in ../shared): the Service and the two
/// Deployments (prefixes `one` and `two`); the test makes their pods.
const TCP_ECHO_SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: tcp-echo
  labels:
    app: tcp-echo
    service: tcp-echo
spec:
  ports:
  - name: tcp
    port: 9000
  - name: tcp-other
    port: 9001
  selector:
    app: tcp-echo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: tcp-echo-v1
  labels:
    app: tcp-echo
    version: v1
spec:
  replicas: 1
  selector:
    matchLabels:
      app: tcp-echo
      version: v1
  template:
    metadata:
      labels:
        app: tcp-echo
        version: v1
    spec:
      containers:
      - name: tcp-echo
        image: registry.istio.io/release/tcp-echo-server:1.3
        args: [ "9000,9001,9002", "one" ]
        ports:
        - containerPort: 9000
        - containerPort: 9001
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: tcp-echo-v2
  labels:
    app: tcp-echo
    version: v2
spec:
  replicas: 1
  selector:
    matchLabels:
      app: tcp-echo
      version: v2
  template:
    metadata:
      labels:
        app: tcp-echo
        version: v2
    spec:
      containers:
      - name: tcp-echo
        image: registry.istio.io/release/tcp-echo-server:1.3
        args: [ "9000,9001,9002", "two" ]
        ports:
        - containerPort: 9000
        - containerPort: 9001
"#;

/// samples/tcp-echo/tcp-echo-all-v1.yaml, the task's "Apply weight-based TCP routing",
/// step 1.
const ALL_V1: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: tcp-echo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 31400
      name: tcp
      protocol: TCP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: tcp-echo-destination
spec:
  host: tcp-echo
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts:
  - "*"
  gateways:
  - tcp-echo-gateway
  tcp:
  - match:
    - port: 31400
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v1
"#;

/// samples/tcp-echo/tcp-echo-20-v2.yaml, the task's step "Transfer 20% of the traffic
/// from tcp-echo:v1 to tcp-echo:v2".
const V2_20: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts:
  - "*"
  gateways:
  - tcp-echo-gateway
  tcp:
  - match:
    - port: 31400
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v1
      weight: 80
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v2
      weight: 20
"#;

/// The gateway's TCP port, as `$INGRESS_HOST:$TCP_INGRESS_PORT`.
const INGRESS: &str = "127.0.0.20:31400";

/// `n` connections through the gateway, each sending one line (the task pipes `date`
/// into `nc`), counted by the prefix of the echo.
fn prefixes(n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let line = format!("hello {i}");
        let key = match raw_line(INGRESS, &line) {
            Ok(answer) => match answer.strip_suffix(&format!(" {line}")) {
                Some(prefix) => prefix.to_string(),
                None => format!("unexpected {answer:?}"),
            },
            Err(e) => format!("error {e}"),
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

#[test]
fn tcp_echo_all_v1_then_20_percent_to_v2() {
    let Some((dir, config)) = envoy_test("tcp-shift") else {
        return;
    };
    deploy(
        &config,
        TCP_ECHO_SERVICES,
        &[("tcp-echo-v1", "127.0.0.30"), ("tcp-echo-v2", "127.0.0.31")],
    );
    kubectl_apply(&config, ALL_V1);
    let _echo = [
        TcpEcho::start("127.0.0.30:9000", "one"),
        TcpEcho::start("127.0.0.30:9001", "one"),
        TcpEcho::start("127.0.0.31:9000", "two"),
        TcpEcho::start("127.0.0.31:9001", "two"),
    ];
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    let gateway = Envoy::start_with(&INGRESS_GATEWAY, &EnvoyOpts::default(), dir.path());
    wait_for("TCP through the gateway", Duration::from_secs(20), || {
        raw_line(INGRESS, "ping").ok()
    });
    // "for i in {1..20}; do ... nc $INGRESS_HOST $TCP_INGRESS_PORT; done": all `one`.
    let d = prefixes(20);
    assert_eq!(d.get("one"), Some(&20), "every connection to v1: {d:?}");

    kubectl_apply(&config, V2_20);
    wait_for("v2 to get connections", Duration::from_secs(20), || {
        prefixes(20).contains_key("two").then_some(())
    });
    // "about 20% of the traffic to v2". 400 connections, each v2 with p = 0.2: mean 80,
    // σ = 8, so 80 ± 40 (5 σ) never flakes, and all-v1, all-v2 or 50/50 are far out.
    let d = prefixes(400);
    let (one, two) = (
        d.get("one").copied().unwrap_or(0),
        d.get("two").copied().unwrap_or(0),
    );
    assert_eq!(one + two, 400, "every connection echoed by v1 or v2: {d:?}");
    assert!(
        (40..=120).contains(&two),
        "20% ± 10 of 400 connections to v2: {d:?}"
    );
    assert_envoy_accepted(&gateway);
    drop(meshd);
}
