//! meshd: a drop-in replacement for Istio's control plane.
//!
//! Data flows one way: [`sources`] → [`model`] → [`translate`] → [`xds`] → Envoy.
//! See docs/ARCHITECTURE.md.

// A Diagnostic (location, object, field, reason, hint) is the error of user-facing parsing:
// it is built on the failure path only, where its size does not matter.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod ca;
pub mod cli;
pub mod crds;
pub mod debug;
pub mod envoy;
pub mod explain;
pub mod fuzz;
pub mod inject;
pub mod kube;
pub mod metrics;
pub mod model;
pub mod server;
pub mod sources;
pub mod telemetry;
pub mod translate;
pub mod ui;
pub mod webhook;
pub mod xds;
pub mod yaml_out;

/// Envoy's protobuf descriptors (a FileDescriptorSet from envoy-types), for JSON rendering.
pub static ENVOY_DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));
