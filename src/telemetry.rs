//! The mesh's own metrics for upstream Envoy: `istio_requests_total`, the request
//! duration and size histograms, and the TCP byte and connection counters, with the labels
//! Kiali and Istio's dashboards read.
//!
//! istio-proxy computes these in its stats filter from what its metadata exchange learns
//! about the peer; upstream Envoy has neither. Here each sidecar and gateway streams a
//! record of every request (and of every TCP connection when it closes) to meshd over
//! Envoy's access log service, on the xDS connection it already has ([`als`]); meshd
//! joins each record with what it knows — the proxy that sent it, the pod at the peer's
//! address, the service behind the cluster, the peer's certificate — ([`join`]) and keeps
//! the series ([`series`]), served on `/metrics` beside istiod's own. Prometheus scrapes
//! one target instead of every pod.
//!
//! Beside the translation (the loggers are configured in translate/telemetry.rs), like the
//! CA: it reads the snapshot and the proxy registry, nothing reads it but `/metrics`.

pub mod als;
pub mod join;
pub mod overrides;
pub mod series;

/// The access log names that tell meshd which side of a request a record is from.
pub use crate::envoy::naming::{
    METRICS_LOG_DESTINATION as LOG_DESTINATION, METRICS_LOG_SOURCE as LOG_SOURCE,
};
