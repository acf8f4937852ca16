//! The xDS server: ADS over gRPC (State-of-the-World and Delta), per-connection watch
//! state, content-hash versions, and scoped, debounced pushes.

pub mod cache;
pub mod connection;
pub mod names;
pub mod push;
pub mod server;
pub mod watch;
pub mod wire;

pub use server::{AdsService, MAX_REQUEST_BYTES, XdsState};
