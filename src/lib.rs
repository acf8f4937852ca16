//! meshd: a drop-in replacement for Istio's control plane.
//!
//! Data flows one way: [`sources`] → [`model`] → [`translate`] → [`xds`] → Envoy.
//! See docs/ARCHITECTURE.md.

pub mod model;
pub mod sources;
