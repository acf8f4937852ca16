//! Typed Kubernetes Gateway API objects (`gateway.networking.k8s.io`, the v1.5 standard
//! and experimental channels), as far as meshd reads them.
//!
//! Field names are the API's (lowerCamelCase). Unknown fields are refused, as a strict
//! API server refuses them. Defaults the CRDs would fill in on a real API server (a
//! parentRef's group and kind, a match's `PathPrefix /`, a backend's weight 1, a listener's
//! `allowedRoutes.namespaces.from: Same`) are applied by the accessors here, so objects
//! read from files behave as the same objects read back from Kubernetes.
//! The conversion to Istio's model is in [`convert`], the status conditions in [`status`].

pub mod backend_tls;
pub mod convert;
pub mod gateway_tls;
pub mod session;
pub mod status;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::selector::LabelSelector;

pub const GROUP: &str = "gateway.networking.k8s.io";
/// The controller name istiod (and meshd in its place) handles.
pub const ISTIO_CONTROLLER: &str = "istio.io/gateway-controller";
/// Label the proxies of a Gateway carry (istiod's generated Deployments set it).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Derives shared by every Gateway API struct.
macro_rules! gw_api {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields, default)]
        pub struct $name { $($body)* }
    };
}

/// The reference and weight accessors of a backendRef with a weight (HTTPRoute's with
/// filters, TLSRoute's and TCPRoute's without).
macro_rules! weighted_backend {
    ($name:ident) => {
        impl $name {
            pub fn backend(&self) -> BackendRef {
                BackendRef {
                    group: self.group.clone(),
                    kind: self.kind.clone(),
                    name: self.name.clone(),
                    namespace: self.namespace.clone(),
                    port: self.port,
                }
            }
            /// The weight (default 1), at most the API's maximum of 1,000,000.
            pub fn weight(&self) -> u32 {
                self.weight.unwrap_or(1).min(1_000_000)
            }
        }
    };
}

gw_api! {
    pub struct GatewayClassSpec {
        pub controller_name: String,
        pub description: Option<String>,
        pub parameters_ref: Option<Value>,
    }
}

gw_api! {
    pub struct GatewaySpec {
        pub gateway_class_name: String,
        pub listeners: Vec<Listener>,
        pub addresses: Vec<GatewayAddress>,
        pub infrastructure: Option<Value>,
        pub tls: Option<GatewayTls>,
        pub allowed_listeners: Option<AllowedListeners>,
        pub default_scope: Option<String>,
    }
}

gw_api! {
    /// Which ListenerSets may attach (`namespaces.from`: None, the default, Same, All,
    /// Selector).
    pub struct AllowedListeners {
        pub namespaces: Option<RouteNamespaces>,
    }
}

gw_api! {
    pub struct ListenerSetSpec {
        pub parent_ref: ListenerSetParent,
        pub listeners: Vec<Listener>,
    }
}

gw_api! {
    pub struct ListenerSetParent {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub name: String,
        pub namespace: Option<String>,
    }
}

gw_api! {
    /// BackendTLSPolicy (v1; v1alpha3 reads the same): TLS from the proxy to the
    /// backends its targets name.
    pub struct BackendTlsPolicySpec {
        pub target_refs: Vec<PolicyTargetRef>,
        pub validation: BackendTlsValidation,
        pub options: BTreeMap<String, String>,
    }
}

gw_api! {
    /// A policy's target in its own namespace (`LocalPolicyTargetReferenceWithSectionName`).
    pub struct PolicyTargetRef {
        pub group: String,
        pub kind: String,
        pub name: String,
        pub section_name: Option<String>,
    }
}

gw_api! {
    pub struct BackendTlsValidation {
        pub ca_certificate_refs: Vec<LocalObjectRef>,
        /// `System`: the proxy's own trust store.
        #[serde(rename = "wellKnownCACertificates")]
        pub well_known_ca_certificates: Option<String>,
        /// The SNI sent and, without subjectAltNames, the name the certificate must carry.
        pub hostname: String,
        pub subject_alt_names: Vec<SubjectAltName>,
    }
}

gw_api! {
    pub struct LocalObjectRef {
        pub group: String,
        pub kind: String,
        pub name: String,
    }
}

gw_api! {
    pub struct SubjectAltName {
        /// `Hostname` or `URI`.
        #[serde(rename = "type")]
        pub kind: String,
        pub hostname: Option<String>,
        pub uri: Option<String>,
    }
}

gw_api! {
    /// A rule's session persistence (GEP-1619): requests that carry the session (a cookie,
    /// or a header) go back to the backend endpoint that first answered them.
    pub struct SessionPersistence {
        pub session_name: Option<String>,
        pub absolute_timeout: Option<String>,
        pub idle_timeout: Option<String>,
        /// `Cookie` (the default) or `Header`.
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub cookie_config: Option<CookieConfig>,
    }
}

gw_api! {
    pub struct CookieConfig {
        /// `Session` (the default: no expiry) or `Permanent` (expires after
        /// absoluteTimeout).
        pub lifetime_type: Option<String>,
    }
}

gw_api! {
    /// A Gateway's TLS settings beyond its listeners' certificates.
    pub struct GatewayTls {
        pub frontend: Option<FrontendTls>,
        pub backend: Option<BackendTlsConfig>,
    }
}

gw_api! {
    /// Client certificate validation at the Gateway: a default, and per port.
    pub struct FrontendTls {
        pub default: Option<FrontendTlsConfig>,
        pub per_port: Vec<PerPortTls>,
    }
}

gw_api! {
    pub struct PerPortTls {
        pub port: u32,
        pub tls: FrontendTlsConfig,
    }
}

gw_api! {
    pub struct FrontendTlsConfig {
        pub validation: Option<FrontendValidation>,
    }
}

gw_api! {
    pub struct FrontendValidation {
        pub ca_certificate_refs: Vec<ObjectRef>,
        /// `AllowValidOnly` (the default) or `AllowInsecureFallback`.
        pub mode: Option<String>,
    }
}

gw_api! {
    /// The certificate the Gateway presents to backends that ask for one.
    pub struct BackendTlsConfig {
        pub client_certificate_ref: Option<ObjectRef>,
    }
}

gw_api! {
    pub struct GatewayAddress {
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub value: String,
    }
}

gw_api! {
    pub struct Listener {
        pub name: String,
        pub hostname: Option<String>,
        pub port: u32,
        pub protocol: String,
        pub tls: Option<ListenerTls>,
        pub allowed_routes: Option<AllowedRoutes>,
    }
}

gw_api! {
    pub struct ListenerTls {
        /// `Terminate` (the default) or `Passthrough`.
        pub mode: Option<String>,
        pub certificate_refs: Vec<ObjectRef>,
        pub options: BTreeMap<String, String>,
    }
}

gw_api! {
    pub struct AllowedRoutes {
        pub namespaces: Option<RouteNamespaces>,
        pub kinds: Vec<RouteGroupKind>,
    }
}

gw_api! {
    pub struct RouteNamespaces {
        /// `All`, `Same` (the default) or `Selector`.
        pub from: Option<String>,
        pub selector: Option<LabelSelector>,
    }
}

gw_api! {
    pub struct RouteGroupKind {
        pub group: Option<String>,
        pub kind: String,
    }
}

gw_api! {
    /// A reference to another object (a Secret, a ReferenceGrant's target, …).
    pub struct ObjectRef {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub name: String,
        pub namespace: Option<String>,
    }
}

gw_api! {
    pub struct ParentRef {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub namespace: Option<String>,
        pub name: String,
        pub section_name: Option<String>,
        pub port: Option<u32>,
    }
}

impl ParentRef {
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or(GROUP)
    }
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("Gateway")
    }
}

gw_api! {
    pub struct HttpRouteSpec {
        pub parent_refs: Vec<ParentRef>,
        pub hostnames: Vec<String>,
        pub rules: Vec<HttpRouteRule>,
        pub use_default_gateways: Option<String>,
    }
}

gw_api! {
    pub struct HttpRouteRule {
        pub name: Option<String>,
        pub matches: Vec<HttpRouteMatch>,
        pub filters: Vec<HttpRouteFilter>,
        pub backend_refs: Vec<HttpBackendRef>,
        pub timeouts: Option<HttpRouteTimeouts>,
        pub retry: Option<HttpRouteRetry>,
        pub session_persistence: Option<SessionPersistence>,
    }
}

gw_api! {
    pub struct HttpRouteMatch {
        pub path: Option<HttpPathMatch>,
        pub headers: Vec<ValueMatch>,
        pub query_params: Vec<ValueMatch>,
        pub method: Option<String>,
    }
}

gw_api! {
    pub struct HttpPathMatch {
        /// `Exact`, `PathPrefix` (the default) or `RegularExpression`.
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub value: Option<String>,
    }
}

gw_api! {
    /// A header or query parameter match.
    pub struct ValueMatch {
        /// `Exact` (the default) or `RegularExpression`.
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub name: String,
        pub value: String,
    }
}

gw_api! {
    pub struct HttpRouteFilter {
        #[serde(rename = "type")]
        pub kind: String,
        pub request_header_modifier: Option<HeaderModifier>,
        pub response_header_modifier: Option<HeaderModifier>,
        pub request_mirror: Option<RequestMirror>,
        pub request_redirect: Option<RequestRedirect>,
        #[serde(rename = "urlRewrite")]
        pub url_rewrite: Option<UrlRewrite>,
        pub extension_ref: Option<Value>,
        pub cors: Option<CorsFilter>,
        pub external_auth: Option<Value>,
    }
}

gw_api! {
    pub struct CorsFilter {
        pub allow_origins: Vec<String>,
        pub allow_credentials: Option<bool>,
        pub allow_methods: Vec<String>,
        pub allow_headers: Vec<String>,
        pub expose_headers: Vec<String>,
        /// Seconds (the API's default is 5).
        pub max_age: Option<i64>,
    }
}

gw_api! {
    pub struct HeaderModifier {
        pub set: Vec<HeaderValue>,
        pub add: Vec<HeaderValue>,
        pub remove: Vec<String>,
    }
}

gw_api! {
    pub struct HeaderValue {
        pub name: String,
        pub value: String,
    }
}

gw_api! {
    pub struct RequestMirror {
        pub backend_ref: BackendRef,
        pub percent: Option<u32>,
        pub fraction: Option<Fraction>,
    }
}

gw_api! {
    pub struct Fraction {
        pub numerator: u32,
        pub denominator: Option<u32>,
    }
}

gw_api! {
    pub struct RequestRedirect {
        pub scheme: Option<String>,
        pub hostname: Option<String>,
        pub path: Option<PathModifier>,
        pub port: Option<u32>,
        pub status_code: Option<u32>,
    }
}

gw_api! {
    pub struct UrlRewrite {
        pub hostname: Option<String>,
        pub path: Option<PathModifier>,
    }
}

gw_api! {
    pub struct PathModifier {
        /// `ReplaceFullPath` or `ReplacePrefixMatch`.
        #[serde(rename = "type")]
        pub kind: String,
        pub replace_full_path: Option<String>,
        pub replace_prefix_match: Option<String>,
    }
}

gw_api! {
    pub struct BackendRef {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub name: String,
        pub namespace: Option<String>,
        pub port: Option<u32>,
    }
}

impl BackendRef {
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or("")
    }
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("Service")
    }
}

gw_api! {
    pub struct HttpBackendRef {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub name: String,
        pub namespace: Option<String>,
        pub port: Option<u32>,
        pub weight: Option<u32>,
        pub filters: Vec<HttpRouteFilter>,
    }
}

weighted_backend!(HttpBackendRef);

gw_api! {
    pub struct HttpRouteTimeouts {
        pub request: Option<String>,
        pub backend_request: Option<String>,
    }
}

gw_api! {
    pub struct HttpRouteRetry {
        pub codes: Vec<u32>,
        pub attempts: Option<u32>,
        pub backoff: Option<String>,
    }
}

gw_api! {
    pub struct ReferenceGrantSpec {
        pub from: Vec<ReferenceGrantFrom>,
        pub to: Vec<ReferenceGrantTo>,
    }
}

gw_api! {
    pub struct ReferenceGrantFrom {
        pub group: String,
        pub kind: String,
        pub namespace: String,
    }
}

gw_api! {
    pub struct ReferenceGrantTo {
        pub group: String,
        pub kind: String,
        pub name: Option<String>,
    }
}

gw_api! {
    /// TLSRoute (SNI hostnames) and TCPRoute (none) share this shape.
    pub struct StreamRouteSpec {
        pub parent_refs: Vec<ParentRef>,
        pub hostnames: Vec<String>,
        pub rules: Vec<StreamRouteRule>,
        pub use_default_gateways: Option<String>,
    }
}

gw_api! {
    pub struct StreamRouteRule {
        pub name: Option<String>,
        pub backend_refs: Vec<WeightedBackendRef>,
    }
}

gw_api! {
    pub struct WeightedBackendRef {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub name: String,
        pub namespace: Option<String>,
        pub port: Option<u32>,
        pub weight: Option<u32>,
    }
}

weighted_backend!(WeightedBackendRef);

gw_api! {
    pub struct GrpcRouteSpec {
        pub parent_refs: Vec<ParentRef>,
        pub hostnames: Vec<String>,
        pub rules: Vec<GrpcRouteRule>,
        pub use_default_gateways: Option<String>,
    }
}

gw_api! {
    pub struct GrpcRouteRule {
        pub name: Option<String>,
        pub matches: Vec<GrpcRouteMatch>,
        /// RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, ExtensionRef.
        pub filters: Vec<HttpRouteFilter>,
        pub backend_refs: Vec<HttpBackendRef>,
        pub session_persistence: Option<SessionPersistence>,
    }
}

gw_api! {
    pub struct GrpcRouteMatch {
        pub method: Option<GrpcMethodMatch>,
        pub headers: Vec<ValueMatch>,
    }
}

gw_api! {
    pub struct GrpcMethodMatch {
        /// `Exact` (the default) or `RegularExpression`.
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub service: Option<String>,
        pub method: Option<String>,
    }
}
