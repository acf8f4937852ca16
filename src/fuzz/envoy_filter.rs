//! EnvoyFilter patch values: checked against Envoy's schema as `meshd validate` does,
//! then applied to what a sidecar and a gateway are sent.
//!
//! Input: one byte for `applyTo`, one for the operation, one for the context, then the
//! patch value as YAML or JSON. A value that validates must normalise to itself when
//! validated again (what meshd stores is what it would accept).

use super::{config_set, encoded, proxies};
use crate::model::istio::ApplyTo;
use crate::model::snapshot::Snapshot;
use crate::sources::yaml::parse_first_value;

const APPLY_TO: [&str; 11] = [
    "LISTENER",
    "FILTER_CHAIN",
    "NETWORK_FILTER",
    "HTTP_FILTER",
    "ROUTE_CONFIGURATION",
    "VIRTUAL_HOST",
    "HTTP_ROUTE",
    "CLUSTER",
    "EXTENSION_CONFIG",
    "BOOTSTRAP",
    "LISTENER_FILTER",
];
const OPERATIONS: [&str; 7] = [
    "MERGE",
    "ADD",
    "REMOVE",
    "INSERT_BEFORE",
    "INSERT_AFTER",
    "INSERT_FIRST",
    "REPLACE",
];
const CONTEXTS: [&str; 4] = ["ANY", "SIDECAR_OUTBOUND", "SIDECAR_INBOUND", "GATEWAY"];

const BASE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews}}
spec: {containers: [{name: a, image: b}]}
status: {podIP: 10.0.0.1}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: ["*"]
  gateways: [istio-system/gw, mesh]
  http: [{route: [{destination: {host: reviews}}]}]
"#;

pub fn run(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let apply_to = APPLY_TO[data[0] as usize % APPLY_TO.len()];
    let op = OPERATIONS[data[1] as usize % OPERATIONS.len()];
    let context = CONTEXTS[data[2] as usize % CONTEXTS.len()];
    let Ok(text) = std::str::from_utf8(&data[3..]) else {
        return;
    };
    let Some(Ok(value)) = parse_first_value(text) else {
        return;
    };
    if let Ok(at) = serde_json::from_value::<ApplyTo>(apply_to.into())
        && let Ok(normal) = crate::model::validate::envoy_filter_value(at, &value)
    {
        let again = crate::model::validate::envoy_filter_value(at, &normal);
        assert_eq!(
            again.as_ref(),
            Ok(&normal),
            "a validated value changed when validated again"
        );
    }
    // The value embedded as JSON, which is YAML too.
    let filter = format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\n\
         metadata: {{name: fuzz, namespace: istio-system}}\n\
         spec:\n  configPatches:\n  - applyTo: {apply_to}\n    match: {{context: {context}}}\n    \
         patch: {{operation: {op}, value: {value}}}\n"
    );
    let snap = Snapshot::build(
        &config_set(&[BASE, &filter]),
        None,
        "cluster.local",
        "istio-system",
    );
    for proxy in proxies() {
        encoded(&snap, &proxy);
    }
}
