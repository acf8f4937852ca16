//! istio.io's tasks, step by step, with meshd and real Envoy: each file follows one task
//! with the task's own manifests and checks what its text says happens, with numbers.
//! Run with cargo-nextest (one process per test, each in its own network namespace); the
//! harness is the conformance suite's (tests/conformance/harness.rs).

mod authorization_http;
mod authorization_jwt;
mod authorization_tcp;
// Support shared with the conformance suite: each task uses only part of it.
mod circuit_breaking;
mod egress;
mod fault_injection;
#[path = "../conformance/harness.rs"]
mod harness;
#[path = "../support/https.rs"]
mod https;
mod ingress_gateways;
#[path = "../support/istio_data.rs"]
mod istio_data;
mod load_balancing;
mod locality_load_balancing;
mod mirroring;
mod mutual_tls_migration;
mod request_routing;
mod request_timeouts;
#[path = "../conformance/scripted.rs"]
#[allow(dead_code)]
mod scripted;
mod secure_mesh;
mod service_account_rollout;
mod tcp_traffic_shifting;
#[path = "../support/tokens.rs"]
mod tokens;
mod traffic_apps;
mod traffic_shifting;
#[path = "../support/websocket.rs"]
mod websocket;
