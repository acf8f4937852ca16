//! meshd: a drop-in replacement for Istio's control plane.
//!
//! Data flows one way: [`sources`] → [`model`] → [`translate`] → [`xds`] → Envoy.
//! See docs/ARCHITECTURE.md.

pub mod app;
pub mod cli;
pub mod debug;
pub mod metrics;
pub mod model;
pub mod server;
pub mod sources;
pub mod translate;
pub mod xds;

/// Envoy's protobuf descriptors (a FileDescriptorSet from envoy-types), for JSON rendering.
pub static ENVOY_DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));
