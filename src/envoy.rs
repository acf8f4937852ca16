//! What meshd knows about Envoy itself, below both the model and translation: the
//! descriptor pool of Envoy's protos and the encodings built on it (deterministic
//! bytes, Envoy's JSON, `Any`), the names meshd gives Envoy resources (as istiod names
//! them), and the type URLs of the resources it serves, and istio-proxy's own extension
//! messages (`istio`). Nothing here knows Istio's configuration.

pub mod encoded;
pub mod istio;
pub mod naming;
pub mod pb;
pub mod rules;

/// Type URLs of the resources meshd serves.
pub mod type_url {
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    /// Push order: a cluster before its endpoints, a listener before its routes.
    pub const ORDER: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];

    /// `url` without a copy when it is one of the types above: a stream keys its state
    /// by type for its whole life.
    pub fn shared(url: &str) -> std::borrow::Cow<'static, str> {
        match ORDER.iter().find(|t| **t == url) {
            Some(t) => std::borrow::Cow::Borrowed(t),
            None => std::borrow::Cow::Owned(url.to_string()),
        }
    }

    /// `CDS`, `EDS`, … for logs and metrics.
    pub fn short(url: &str) -> &'static str {
        match url {
            CLUSTER => "CDS",
            ENDPOINT => "EDS",
            LISTENER => "LDS",
            ROUTE => "RDS",
            SECRET => "SDS",
            _ => "UNKNOWN",
        }
    }
}
