//! The model: typed configuration objects, the immutable [`Snapshot`] with its indexes,
//! and [`Diagnostic`]s. Nothing here does I/O or knows about gRPC or Kubernetes clients.

mod build;
pub mod delegate;
pub mod diagnostic;
pub mod gateway_api;
pub mod host;
pub mod istio;
pub mod mesh;
pub mod metric_tags;
pub mod object;
pub mod objects;
pub mod proxy;
pub mod ratelimit;
pub mod scope;
pub mod selector;
pub mod service;
pub mod snapshot;
mod stages;
pub mod validate;

#[cfg(test)]
pub(crate) mod testing;

pub use diagnostic::{Diagnostic, Origin, Severity};
pub use object::{Kind, Object, ObjectKey, Spec};
pub use proxy::Proxy;
pub use snapshot::{Changes, ConfigSet, Snapshot};
