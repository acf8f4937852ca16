//! The xDS server: ADS over gRPC (State-of-the-World and Delta), per-connection watch
//! state, content-hash versions, and scoped, debounced pushes.

//!
//! Layers, each importing only those above it: `names`, `cache` and `wire` (shared
//! encoded resources and how they are written); `watch` (one type's subscription
//! state); `registry` (connected proxies); `state` (what streams share); `generate`
//! (resources for a watch); `connection` (the stream engine, SotW and Delta);
//! `server` (the gRPC service) and `push` (publishing snapshots).

pub mod cache;
pub mod connection;
pub mod cpu;
mod generate;
pub mod names;
pub mod push;
pub mod registry;
pub mod server;
pub mod state;
pub mod watch;
pub mod wire;

pub use registry::{Connection, SyncStatus};
pub use server::AdsService;
pub use state::{MAX_REQUEST_BYTES, XdsState};
