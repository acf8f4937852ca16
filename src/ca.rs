//! The mesh's certificate authority: SPIFFE identities, a self-signed or plugged-in root,
//! workload certificates from CSRs (istio-proxy) or with keys meshd generates (plain Envoy
//! over SDS), and the `istio.v1.auth.IstioCertificateService` gRPC API.

pub mod authority;
pub mod identity;
pub mod jwt;
pub mod sds;
pub mod server;

pub use authority::{Authority, CaError};
pub use identity::Identity;
