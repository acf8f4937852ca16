//! Typed Istio networking API objects (`networking.istio.io` v1, v1beta1, v1alpha3).
//!
//! Field names and enum values are exactly Istio's (protobuf JSON, lowerCamelCase), so a
//! manifest that `kubectl apply` accepts parses here unchanged. Unknown fields are refused
//! (`deny_unknown_fields`) the way Kubernetes' strict field validation refuses them, which
//! is how a typo like `subsets` → `subset` becomes a diagnostic instead of silence.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration as StdDuration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// google.protobuf.Duration in its JSON form (`"1.5s"`). Go-style strings that Istio's CEL
/// validation also takes (`"100ms"`, `"1m30s"`) are accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub StdDuration);

impl Duration {
    pub fn as_std(&self) -> StdDuration {
        self.0
    }

    /// Parses `"1.5s"`, `"100ms"`, `"1m30s"`, `"2h"`, `"10us"`, `"0"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "0" {
            return Ok(Duration(StdDuration::ZERO));
        }
        let mut total = 0f64;
        let mut rest = s;
        if rest.is_empty() {
            return Err("empty duration".into());
        }
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("duration {s:?} has no unit (write e.g. \"5s\")"))?;
            if num_len == 0 {
                return Err(format!("duration {s:?} is not a number followed by a unit"));
            }
            let value: f64 = rest[..num_len]
                .parse()
                .map_err(|_| format!("duration {s:?} has a bad number"))?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let scale = match &rest[..unit_len] {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 1e-3,
                "us" | "µs" => 1e-6,
                "ns" => 1e-9,
                other => {
                    return Err(format!(
                        "duration {s:?} has unknown unit {other:?} (use h, m, s, ms, us or ns)"
                    ));
                }
            };
            total += value * scale;
            rest = &rest[unit_len..];
        }
        if !total.is_finite() || total > 315_576_000_000.0 {
            return Err(format!("duration {s:?} is out of range"));
        }
        Ok(Duration(StdDuration::from_secs_f64(total)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else {
            let s = format!("{}.{:09}", d.as_secs(), d.subsec_nanos());
            write!(f, "{}s", s.trim_end_matches('0'))
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string"})
    }
    fn inline_schema() -> bool {
        true
    }
}

/// Derives shared by every Istio API struct.
macro_rules! api {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields, default)]
        pub struct $name { $($body)* }
    };
}

/// Derives shared by every Istio API enum (values as in the protobuf enum).
macro_rules! api_enum {
    ($(#[$m:meta])* pub enum $name:ident { $first:ident $(, $v:ident)* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        pub enum $name { #[default] $first $(, $v)* }
    };
}

pub type Labels = BTreeMap<String, String>;

// ---------------------------------------------------------------------------------------
// VirtualService
// ---------------------------------------------------------------------------------------

api! {
    /// networking.istio.io VirtualService spec.
    pub struct VirtualService {
        pub hosts: Vec<String>,
        pub gateways: Vec<String>,
        pub http: Vec<HttpRoute>,
        pub tls: Vec<TlsRoute>,
        pub tcp: Vec<TcpRoute>,
        pub export_to: Vec<String>,
    }
}

api! {
    pub struct HttpRoute {
        pub name: String,
        #[serde(rename = "match")]
        pub matches: Vec<HttpMatchRequest>,
        pub route: Vec<HttpRouteDestination>,
        pub redirect: Option<HttpRedirect>,
        pub direct_response: Option<HttpDirectResponse>,
        pub delegate: Option<Delegate>,
        pub rewrite: Option<HttpRewrite>,
        pub timeout: Option<Duration>,
        pub retries: Option<HttpRetry>,
        pub fault: Option<HttpFaultInjection>,
        pub mirror: Option<Destination>,
        pub mirrors: Vec<HttpMirrorPolicy>,
        pub mirror_percent: Option<u32>,
        #[serde(rename = "mirror_percent")]
        pub mirror_percent_snake: Option<u32>,
        pub mirror_percentage: Option<Percent>,
        pub cors_policy: Option<CorsPolicy>,
        pub headers: Option<Headers>,
    }
}

api! {
    /// Exactly one of exact, prefix, regex (RE2 syntax).
    pub struct StringMatch {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub exact: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub prefix: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub regex: Option<String>,
    }
}

api! {
    pub struct HttpMatchRequest {
        pub name: String,
        pub uri: Option<StringMatch>,
        pub scheme: Option<StringMatch>,
        pub method: Option<StringMatch>,
        pub authority: Option<StringMatch>,
        pub headers: BTreeMap<String, StringMatch>,
        pub port: Option<u32>,
        pub source_labels: Labels,
        pub gateways: Vec<String>,
        pub query_params: BTreeMap<String, StringMatch>,
        pub ignore_uri_case: bool,
        pub without_headers: BTreeMap<String, StringMatch>,
        pub source_namespace: String,
        pub stat_prefix: String,
    }
}

api! {
    pub struct HttpRouteDestination {
        pub destination: Destination,
        pub weight: Option<i32>,
        pub headers: Option<Headers>,
    }
}

api! {
    pub struct Destination {
        pub host: String,
        pub subset: String,
        pub port: Option<PortSelector>,
    }
}

api! {
    pub struct PortSelector {
        pub number: u32,
    }
}

api! {
    pub struct Headers {
        pub request: Option<HeaderOperations>,
        pub response: Option<HeaderOperations>,
    }
}

api! {
    pub struct HeaderOperations {
        pub set: BTreeMap<String, String>,
        pub add: BTreeMap<String, String>,
        pub remove: Vec<String>,
    }
}

api_enum! {
    pub enum RedirectPortSelection { FROM_PROTOCOL_DEFAULT, FROM_REQUEST_PORT }
}

api! {
    pub struct HttpRedirect {
        pub uri: String,
        pub authority: String,
        pub port: Option<u32>,
        pub derive_port: Option<RedirectPortSelection>,
        pub scheme: String,
        pub redirect_code: Option<u32>,
        pub prefix_rewrite: Option<String>,
    }
}

api! {
    pub struct HttpDirectResponse {
        pub status: u32,
        pub body: Option<HttpBody>,
    }
}

api! {
    pub struct HttpBody {
        pub string: Option<String>,
        /// base64, as protobuf JSON encodes bytes.
        pub bytes: Option<String>,
    }
}

api! {
    pub struct Delegate {
        pub name: String,
        pub namespace: String,
    }
}

api! {
    pub struct HttpRewrite {
        pub uri: String,
        pub authority: String,
        pub uri_regex_rewrite: Option<RegexRewrite>,
    }
}

api! {
    pub struct RegexRewrite {
        #[serde(rename = "match")]
        pub matches: String,
        pub rewrite: String,
    }
}

api! {
    pub struct HttpRetry {
        pub attempts: i32,
        pub per_try_timeout: Option<Duration>,
        pub retry_on: String,
        pub retry_remote_localities: Option<bool>,
        pub retry_ignore_previous_hosts: Option<bool>,
        pub backoff: Option<Duration>,
    }
}

api! {
    pub struct Percent {
        pub value: f64,
    }
}

api! {
    pub struct HttpFaultInjection {
        pub delay: Option<FaultDelay>,
        pub abort: Option<FaultAbort>,
    }
}

api! {
    pub struct FaultDelay {
        pub fixed_delay: Option<Duration>,
        pub exponential_delay: Option<Duration>,
        pub percentage: Option<Percent>,
        pub percent: Option<i32>,
    }
}

api! {
    pub struct FaultAbort {
        pub http_status: Option<i32>,
        pub grpc_status: Option<String>,
        pub http2_error: Option<String>,
        pub percentage: Option<Percent>,
    }
}

api! {
    pub struct HttpMirrorPolicy {
        pub destination: Destination,
        pub percentage: Option<Percent>,
    }
}

api_enum! {
    pub enum UnmatchedPreflights { UNSPECIFIED, FORWARD, IGNORE }
}

api! {
    pub struct CorsPolicy {
        pub allow_origin: Vec<String>,
        pub allow_origins: Vec<StringMatch>,
        pub allow_methods: Vec<String>,
        pub allow_headers: Vec<String>,
        pub expose_headers: Vec<String>,
        pub max_age: Option<Duration>,
        pub allow_credentials: Option<bool>,
        pub unmatched_preflights: Option<UnmatchedPreflights>,
    }
}

api! {
    pub struct TlsRoute {
        #[serde(rename = "match")]
        pub matches: Vec<TlsMatchAttributes>,
        pub route: Vec<RouteDestination>,
    }
}

api! {
    pub struct TlsMatchAttributes {
        pub sni_hosts: Vec<String>,
        pub destination_subnets: Vec<String>,
        pub port: Option<u32>,
        pub source_labels: Labels,
        pub gateways: Vec<String>,
        pub source_namespace: String,
    }
}

api! {
    pub struct TcpRoute {
        #[serde(rename = "match")]
        pub matches: Vec<L4MatchAttributes>,
        pub route: Vec<RouteDestination>,
    }
}

api! {
    pub struct L4MatchAttributes {
        pub destination_subnets: Vec<String>,
        pub port: Option<u32>,
        pub source_subnet: String,
        pub source_labels: Labels,
        pub gateways: Vec<String>,
        pub source_namespace: String,
    }
}

api! {
    pub struct RouteDestination {
        pub destination: Destination,
        pub weight: Option<i32>,
    }
}

// ---------------------------------------------------------------------------------------
// DestinationRule
// ---------------------------------------------------------------------------------------

api! {
    /// networking.istio.io DestinationRule spec.
    pub struct DestinationRule {
        pub host: String,
        pub traffic_policy: Option<TrafficPolicy>,
        pub subsets: Vec<Subset>,
        pub export_to: Vec<String>,
        pub workload_selector: Option<WorkloadSelector>,
    }
}

api! {
    /// `matchLabels` selector used by DestinationRule (and security policies).
    pub struct WorkloadSelector {
        pub match_labels: Labels,
    }
}

api! {
    pub struct Subset {
        pub name: String,
        pub labels: Labels,
        pub traffic_policy: Option<TrafficPolicy>,
    }
}

api! {
    pub struct TrafficPolicy {
        pub load_balancer: Option<LoadBalancerSettings>,
        pub connection_pool: Option<ConnectionPoolSettings>,
        pub outlier_detection: Option<OutlierDetection>,
        pub tls: Option<ClientTlsSettings>,
        pub port_level_settings: Vec<PortTrafficPolicy>,
        pub tunnel: Option<TunnelSettings>,
        pub proxy_protocol: Option<ProxyProtocol>,
        pub retry_budget: Option<RetryBudget>,
    }
}

api! {
    pub struct PortTrafficPolicy {
        pub port: Option<PortSelector>,
        pub load_balancer: Option<LoadBalancerSettings>,
        pub connection_pool: Option<ConnectionPoolSettings>,
        pub outlier_detection: Option<OutlierDetection>,
        pub tls: Option<ClientTlsSettings>,
    }
}

api_enum! {
    pub enum SimpleLb { UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST }
}

api! {
    pub struct LoadBalancerSettings {
        pub simple: Option<SimpleLb>,
        pub consistent_hash: Option<ConsistentHashLb>,
        pub locality_lb_setting: Option<LocalityLbSetting>,
        pub zone_aware_lb_setting: Option<serde_json::Value>,
        pub warmup_duration_secs: Option<Duration>,
        pub warmup: Option<WarmupConfiguration>,
        pub backend_utilization: Option<serde_json::Value>,
    }
}

api! {
    pub struct WarmupConfiguration {
        pub duration: Option<Duration>,
        pub minimum_percent: Option<f64>,
        pub aggression: Option<f64>,
    }
}

api! {
    pub struct ConsistentHashLb {
        pub http_header_name: Option<String>,
        pub http_cookie: Option<HttpCookie>,
        pub use_source_ip: Option<bool>,
        pub http_query_parameter_name: Option<String>,
        pub ring_hash: Option<RingHash>,
        pub maglev: Option<MagLev>,
        pub minimum_ring_size: Option<u64>,
    }
}

api! {
    pub struct HttpCookie {
        pub name: String,
        pub path: String,
        pub ttl: Option<Duration>,
        pub attributes: Vec<CookieAttribute>,
    }
}

api! {
    pub struct CookieAttribute {
        pub name: String,
        pub value: String,
    }
}

api! {
    pub struct RingHash {
        pub minimum_ring_size: Option<u64>,
    }
}

api! {
    pub struct MagLev {
        pub table_size: Option<u64>,
    }
}

api! {
    pub struct LocalityLbSetting {
        pub distribute: Vec<serde_json::Value>,
        pub failover: Vec<serde_json::Value>,
        pub failover_priority: Vec<String>,
        pub enabled: Option<bool>,
    }
}

api! {
    pub struct ConnectionPoolSettings {
        pub tcp: Option<TcpSettings>,
        pub http: Option<HttpSettings>,
    }
}

api! {
    pub struct TcpSettings {
        pub max_connections: Option<i32>,
        pub connect_timeout: Option<Duration>,
        pub tcp_keepalive: Option<TcpKeepalive>,
        pub max_connection_duration: Option<Duration>,
        pub idle_timeout: Option<Duration>,
    }
}

api! {
    pub struct TcpKeepalive {
        pub probes: Option<u32>,
        pub time: Option<Duration>,
        pub interval: Option<Duration>,
    }
}

api_enum! {
    pub enum H2UpgradePolicy { DEFAULT, DO_NOT_UPGRADE, UPGRADE }
}

api! {
    pub struct HttpSettings {
        pub http1_max_pending_requests: Option<i32>,
        pub http2_max_requests: Option<i32>,
        pub max_requests_per_connection: Option<i32>,
        pub max_retries: Option<i32>,
        pub idle_timeout: Option<Duration>,
        pub h2_upgrade_policy: Option<H2UpgradePolicy>,
        pub use_client_protocol: Option<bool>,
        pub max_concurrent_streams: Option<i32>,
        pub http2_keep_alive: Option<Http2KeepAlive>,
    }
}

api! {
    pub struct Http2KeepAlive {
        pub interval: Option<Duration>,
        pub timeout: Option<Duration>,
    }
}

api! {
    pub struct OutlierDetection {
        pub consecutive_errors: Option<i32>,
        pub split_external_local_origin_errors: Option<bool>,
        pub consecutive_local_origin_failures: Option<u32>,
        pub consecutive_gateway_errors: Option<u32>,
        #[serde(rename = "consecutive5xxErrors")]
        pub consecutive_5xx_errors: Option<u32>,
        pub interval: Option<Duration>,
        pub base_ejection_time: Option<Duration>,
        pub max_ejection_percent: Option<i32>,
        pub min_health_percent: Option<i32>,
        pub outlier_detection_http_error_codes: Vec<u32>,
    }
}

api_enum! {
    pub enum ClientTlsMode { DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL }
}

api! {
    pub struct ClientTlsSettings {
        pub mode: ClientTlsMode,
        pub client_certificate: String,
        pub private_key: String,
        pub ca_certificates: String,
        pub credential_name: String,
        pub subject_alt_names: Vec<String>,
        pub sni: String,
        pub insecure_skip_verify: Option<bool>,
        pub ca_crl: String,
    }
}

api! {
    pub struct TunnelSettings {
        pub protocol: String,
        pub target_host: String,
        pub target_port: u32,
    }
}

api_enum! {
    pub enum ProxyProtocolVersion { V1, V2 }
}

api! {
    pub struct ProxyProtocol {
        pub version: ProxyProtocolVersion,
    }
}

api! {
    pub struct RetryBudget {
        pub percent: Option<f64>,
        pub min_retry_concurrency: Option<u32>,
        pub budget_interval: Option<Duration>,
    }
}

// ---------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------

api! {
    /// networking.istio.io Gateway spec.
    pub struct Gateway {
        pub servers: Vec<Server>,
        pub selector: Labels,
    }
}

api! {
    pub struct Server {
        pub port: Port,
        pub bind: String,
        pub hosts: Vec<String>,
        pub tls: Option<ServerTlsSettings>,
        pub default_endpoint: String,
        pub name: String,
    }
}

api! {
    /// A named, numbered port with a protocol (Gateway, ServiceEntry, Sidecar).
    pub struct Port {
        pub number: u32,
        pub protocol: String,
        pub name: String,
        pub target_port: Option<u32>,
    }
}

api_enum! {
    pub enum ServerTlsMode { PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL, OPTIONAL_MUTUAL }
}

api_enum! {
    pub enum TlsProtocol { TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2, TLSV1_3 }
}

api! {
    pub struct ServerTlsSettings {
        pub https_redirect: bool,
        pub mode: ServerTlsMode,
        pub server_certificate: String,
        pub private_key: String,
        pub ca_certificates: String,
        pub ca_crl: String,
        pub credential_name: String,
        pub credential_names: Vec<String>,
        pub ca_cert_credential_name: String,
        pub tls_certificates: Vec<TlsCertificate>,
        pub subject_alt_names: Vec<String>,
        pub verify_certificate_spki: Vec<String>,
        pub verify_certificate_hash: Vec<String>,
        pub min_protocol_version: TlsProtocol,
        pub max_protocol_version: TlsProtocol,
        pub cipher_suites: Vec<String>,
        pub ecdh_curves: Vec<String>,
        pub insecure_skip_verify: Option<bool>,
    }
}

api! {
    pub struct TlsCertificate {
        pub server_certificate: String,
        pub private_key: String,
        pub ca_certificates: String,
    }
}

// ---------------------------------------------------------------------------------------
// ServiceEntry and WorkloadEntry
// ---------------------------------------------------------------------------------------

api_enum! {
    pub enum Location { MESH_EXTERNAL, MESH_INTERNAL }
}

api_enum! {
    pub enum Resolution { NONE, STATIC, DNS, DNS_ROUND_ROBIN, DYNAMIC_DNS }
}

api! {
    /// networking.istio.io ServiceEntry spec.
    pub struct ServiceEntry {
        pub hosts: Vec<String>,
        pub addresses: Vec<String>,
        pub ports: Vec<Port>,
        pub location: Location,
        pub resolution: Resolution,
        pub endpoints: Vec<WorkloadEntry>,
        pub workload_selector: Option<SeWorkloadSelector>,
        pub export_to: Vec<String>,
        pub subject_alt_names: Vec<String>,
    }
}

api! {
    /// `labels` selector used by ServiceEntry and Sidecar.
    pub struct SeWorkloadSelector {
        pub labels: Labels,
    }
}

api! {
    /// networking.istio.io WorkloadEntry spec (also a ServiceEntry endpoint).
    pub struct WorkloadEntry {
        pub address: String,
        pub ports: BTreeMap<String, u32>,
        pub labels: Labels,
        pub network: String,
        pub locality: String,
        pub weight: Option<u32>,
        pub service_account: String,
    }
}

// ---------------------------------------------------------------------------------------
// Sidecar
// ---------------------------------------------------------------------------------------

api_enum! {
    pub enum CaptureMode { DEFAULT, IPTABLES, NONE }
}

api_enum! {
    pub enum OutboundTrafficMode { REGISTRY_ONLY, ALLOW_ANY, ALLOW_ANY_DYNAMIC_DNS }
}

// A Sidecar's outboundTrafficPolicy.mode: Istio's Sidecar API has no dynamic DNS mode
// (mesh config alone does). A plain comment: doc comments become CRD descriptions.
api_enum! {
    pub enum SidecarOutboundMode { REGISTRY_ONLY, ALLOW_ANY }
}

impl From<SidecarOutboundMode> for OutboundTrafficMode {
    fn from(m: SidecarOutboundMode) -> Self {
        match m {
            SidecarOutboundMode::REGISTRY_ONLY => OutboundTrafficMode::REGISTRY_ONLY,
            SidecarOutboundMode::ALLOW_ANY => OutboundTrafficMode::ALLOW_ANY,
        }
    }
}

api! {
    /// networking.istio.io Sidecar spec.
    pub struct Sidecar {
        pub workload_selector: Option<SeWorkloadSelector>,
        pub ingress: Vec<IstioIngressListener>,
        pub egress: Vec<IstioEgressListener>,
        pub inbound_connection_pool: Option<ConnectionPoolSettings>,
        pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    }
}

api! {
    pub struct IstioIngressListener {
        pub port: Port,
        pub bind: String,
        pub capture_mode: CaptureMode,
        pub default_endpoint: String,
        pub tls: Option<ServerTlsSettings>,
        pub connection_pool: Option<ConnectionPoolSettings>,
    }
}

api! {
    pub struct IstioEgressListener {
        pub port: Option<Port>,
        pub bind: String,
        pub capture_mode: CaptureMode,
        pub hosts: Vec<String>,
    }
}

api! {
    pub struct OutboundTrafficPolicy {
        pub mode: SidecarOutboundMode,
        pub egress_proxy: Option<Destination>,
    }
}

// ---------------------------------------------------------------------------------------
// security.istio.io
// ---------------------------------------------------------------------------------------

api_enum! {
    pub enum MtlsMode { UNSET, DISABLE, PERMISSIVE, STRICT }
}

api! {
    pub struct MutualTls {
        pub mode: MtlsMode,
    }
}

api! {
    /// security.istio.io PeerAuthentication spec.
    pub struct PeerAuthentication {
        pub selector: Option<WorkloadSelector>,
        pub mtls: Option<MutualTls>,
        pub port_level_mtls: BTreeMap<u32, MutualTls>,
    }
}

api_enum! {
    pub enum AuthorizationAction { ALLOW, DENY, AUDIT, CUSTOM }
}

api! {
    /// A Gateway API style reference to the object a policy attaches to.
    pub struct PolicyTargetReference {
        pub group: String,
        pub kind: String,
        pub name: String,
        pub namespace: String,
    }
}

api! {
    /// security.istio.io AuthorizationPolicy spec.
    pub struct AuthorizationPolicy {
        pub selector: Option<WorkloadSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        pub target_refs: Vec<PolicyTargetReference>,
        pub rules: Option<Vec<AuthzRule>>,
        pub action: AuthorizationAction,
        pub provider: Option<ExtensionProviderRef>,
    }
}

api! {
    pub struct ExtensionProviderRef {
        pub name: String,
    }
}

api! {
    pub struct AuthzRule {
        pub from: Vec<RuleFrom>,
        pub to: Vec<RuleTo>,
        pub when: Vec<Condition>,
    }
}

api! {
    pub struct RuleFrom {
        pub source: Option<Source>,
    }
}

api! {
    pub struct RuleTo {
        pub operation: Option<Operation>,
    }
}

api! {
    pub struct Source {
        pub principals: Vec<String>,
        pub not_principals: Vec<String>,
        pub request_principals: Vec<String>,
        pub not_request_principals: Vec<String>,
        pub namespaces: Vec<String>,
        pub not_namespaces: Vec<String>,
        pub ip_blocks: Vec<String>,
        pub not_ip_blocks: Vec<String>,
        pub remote_ip_blocks: Vec<String>,
        pub not_remote_ip_blocks: Vec<String>,
        pub service_accounts: Vec<String>,
        pub not_service_accounts: Vec<String>,
        pub trust_domains: Vec<String>,
        pub not_trust_domains: Vec<String>,
    }
}

api! {
    pub struct Operation {
        pub hosts: Vec<String>,
        pub not_hosts: Vec<String>,
        pub ports: Vec<String>,
        pub not_ports: Vec<String>,
        pub methods: Vec<String>,
        pub not_methods: Vec<String>,
        pub paths: Vec<String>,
        pub not_paths: Vec<String>,
    }
}

api! {
    pub struct Condition {
        pub key: String,
        pub values: Vec<String>,
        pub not_values: Vec<String>,
    }
}

api_enum! {
    pub enum JwtPresence { OPTIONAL, REQUIRED }
}

api! {
    /// security.istio.io RequestAuthentication spec.
    pub struct RequestAuthentication {
        pub selector: Option<WorkloadSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        pub target_refs: Vec<PolicyTargetReference>,
        pub jwt_rules: Vec<JwtRule>,
    }
}

api! {
    pub struct JwtRule {
        pub issuer: String,
        pub audiences: Vec<String>,
        pub jwks_uri: String,
        #[serde(rename = "jwks_uri")]
        pub jwks_uri_snake: String,
        pub jwks: String,
        pub from_headers: Vec<JwtHeader>,
        pub from_params: Vec<String>,
        pub from_cookies: Vec<String>,
        pub output_payload_to_header: String,
        pub output_claim_to_headers: Vec<ClaimToHeader>,
        pub forward_original_token: bool,
        pub space_delimited_claims: Vec<String>,
        pub timeout: Option<Duration>,
        pub presence: Option<JwtPresence>,
    }
}

api! {
    pub struct JwtHeader {
        pub name: String,
        pub prefix: String,
    }
}

api! {
    pub struct ClaimToHeader {
        pub header: String,
        pub claim: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_protobuf_and_go_forms() {
        let cases = [
            ("1.5s", 1500),
            ("10s", 10_000),
            ("100ms", 100),
            ("1m30s", 90_000),
            ("0", 0),
            ("0s", 0),
            ("2h", 7_200_000),
        ];
        for (text, ms) in cases {
            assert_eq!(
                Duration::parse(text).map(|d| d.0.as_millis()),
                Ok(ms),
                "{text}"
            );
        }
        for bad in ["", "5", "s", "5 parsecs", "1.2.3s"] {
            assert!(Duration::parse(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(Duration(StdDuration::from_millis(1500)).to_string(), "1.5s");
        assert_eq!(Duration(StdDuration::from_secs(10)).to_string(), "10s");
    }

    #[test]
    fn virtual_service_refuses_unknown_fields() {
        let yaml = "hosts: [reviews]\nhttp:\n- route:\n  - destination:\n      host: reviews\n      subsets: v1\n";
        let docs = crate::sources::yaml::parse_documents(yaml);
        let value = docs
            .into_iter()
            .next()
            .expect("one doc")
            .expect("yaml")
            .value;
        let err = serde_json::from_value::<VirtualService>(value).expect_err("refused");
        assert!(err.to_string().contains("unknown field `subsets`"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------
// EnvoyFilter
// ---------------------------------------------------------------------------------------

api! {
    /// networking.istio.io/v1alpha3 EnvoyFilter spec.
    pub struct EnvoyFilter {
        pub workload_selector: Option<SeWorkloadSelector>,
        pub target_refs: Vec<serde_json::Value>,
        pub config_patches: Vec<EnvoyConfigObjectPatch>,
        pub priority: i32,
    }
}

api_enum! {
    pub enum ApplyTo {
        INVALID, LISTENER, FILTER_CHAIN, NETWORK_FILTER, HTTP_FILTER, ROUTE_CONFIGURATION,
        VIRTUAL_HOST, HTTP_ROUTE, CLUSTER, EXTENSION_CONFIG, BOOTSTRAP, LISTENER_FILTER,
    }
}

impl ApplyTo {
    /// The Envoy message a patch value for this target is.
    pub fn envoy_type(self) -> Option<&'static str> {
        Some(match self {
            ApplyTo::LISTENER => "envoy.config.listener.v3.Listener",
            ApplyTo::FILTER_CHAIN => "envoy.config.listener.v3.FilterChain",
            ApplyTo::NETWORK_FILTER => "envoy.config.listener.v3.Filter",
            ApplyTo::HTTP_FILTER => {
                "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter"
            }
            ApplyTo::ROUTE_CONFIGURATION => "envoy.config.route.v3.RouteConfiguration",
            ApplyTo::VIRTUAL_HOST => "envoy.config.route.v3.VirtualHost",
            ApplyTo::HTTP_ROUTE => "envoy.config.route.v3.Route",
            ApplyTo::CLUSTER => "envoy.config.cluster.v3.Cluster",
            _ => return None,
        })
    }

    /// Whether istiod accepts `op` on this target.
    pub fn allows(self, op: PatchOperation) -> bool {
        use PatchOperation::*;
        match self {
            ApplyTo::LISTENER | ApplyTo::CLUSTER | ApplyTo::VIRTUAL_HOST => {
                matches!(op, MERGE | ADD | REMOVE)
            }
            ApplyTo::FILTER_CHAIN => matches!(op, MERGE | ADD | REMOVE | INSERT_FIRST),
            ApplyTo::NETWORK_FILTER | ApplyTo::HTTP_FILTER => op != INVALID,
            ApplyTo::ROUTE_CONFIGURATION => op == MERGE,
            ApplyTo::HTTP_ROUTE => matches!(
                op,
                MERGE | REMOVE | INSERT_BEFORE | INSERT_AFTER | INSERT_FIRST
            ),
            _ => false,
        }
    }
}

api_enum! {
    pub enum PatchContext { ANY, SIDECAR_INBOUND, SIDECAR_OUTBOUND, GATEWAY }
}

api_enum! {
    pub enum PatchOperation {
        INVALID, MERGE, ADD, REMOVE, INSERT_BEFORE, INSERT_AFTER, INSERT_FIRST, REPLACE,
    }
}

api! {
    pub struct EnvoyConfigObjectPatch {
        pub apply_to: ApplyTo,
        #[serde(rename = "match")]
        pub matches: Option<EnvoyConfigObjectMatch>,
        pub patch: Option<EnvoyPatch>,
    }
}

api! {
    pub struct EnvoyConfigObjectMatch {
        pub context: PatchContext,
        pub proxy: Option<ProxyMatch>,
        pub listener: Option<ListenerMatch>,
        pub route_configuration: Option<RouteConfigurationMatch>,
        pub cluster: Option<ClusterMatch>,
    }
}

api! {
    pub struct ProxyMatch {
        pub proxy_version: String,
        pub metadata: BTreeMap<String, String>,
    }
}

api! {
    pub struct ListenerMatch {
        pub port_number: u32,
        pub port_name: String,
        pub filter_chain: Option<FilterChainMatch>,
        pub listener_filter: String,
        pub name: String,
    }
}

api! {
    pub struct FilterChainMatch {
        pub name: String,
        pub sni: String,
        pub transport_protocol: String,
        pub application_protocols: String,
        pub filter: Option<FilterMatch>,
        pub destination_port: u32,
    }
}

api! {
    pub struct FilterMatch {
        pub name: String,
        pub sub_filter: Option<SubFilterMatch>,
    }
}

api! {
    pub struct SubFilterMatch {
        pub name: String,
    }
}

api! {
    pub struct RouteConfigurationMatch {
        pub port_number: u32,
        pub port_name: String,
        pub gateway: String,
        pub vhost: Option<VirtualHostMatch>,
        pub name: String,
    }
}

api! {
    pub struct VirtualHostMatch {
        pub name: String,
        pub domain_name: String,
        pub route: Option<RouteMatchSpec>,
    }
}

api_enum! {
    pub enum RouteAction { ANY, ROUTE, REDIRECT, DIRECT_RESPONSE }
}

api! {
    pub struct RouteMatchSpec {
        pub name: String,
        pub action: RouteAction,
    }
}

api! {
    pub struct ClusterMatch {
        pub port_number: u32,
        pub service: String,
        pub subset: String,
        pub name: String,
    }
}

api_enum! {
    pub enum FilterClass { UNSPECIFIED, AUTHN, AUTHZ, STATS }
}

api! {
    pub struct EnvoyPatch {
        pub operation: PatchOperation,
        pub value: Option<serde_json::Value>,
        pub filter_class: FilterClass,
    }
}

// ---------------------------------------------------------------------------------------
// Telemetry
// ---------------------------------------------------------------------------------------

api! {
    /// telemetry.istio.io Telemetry spec.
    pub struct Telemetry {
        pub selector: Option<WorkloadSelector>,
        pub target_ref: Option<serde_json::Value>,
        pub target_refs: Vec<serde_json::Value>,
        pub tracing: Vec<Tracing>,
        pub metrics: Vec<serde_json::Value>,
        pub access_logging: Vec<AccessLogging>,
    }
}

api! {
    pub struct AccessLogging {
        #[serde(rename = "match")]
        pub matches: Option<WorkloadModeSelector>,
        pub providers: Vec<ProviderRef>,
        pub disabled: Option<bool>,
        pub filter: Option<AccessLogFilter>,
    }
}

api! {
    /// A Telemetry `tracing` entry.
    pub struct Tracing {
        #[serde(rename = "match")]
        pub matches: Option<WorkloadModeSelector>,
        /// Only the first is used (as istiod).
        pub providers: Vec<ProviderRef>,
        pub random_sampling_percentage: Option<f64>,
        pub disable_span_reporting: Option<bool>,
        pub custom_tags: BTreeMap<String, CustomTag>,
        pub use_request_id_for_trace_sampling: Option<bool>,
        pub enable_istio_tags: Option<bool>,
        pub disable_context_propagation: Option<bool>,
    }
}

api! {
    /// One custom span tag: exactly one of literal, environment, header.
    pub struct CustomTag {
        pub literal: Option<LiteralTag>,
        pub environment: Option<EnvironmentTag>,
        pub header: Option<HeaderTag>,
    }
}

api! {
    pub struct LiteralTag {
        pub value: String,
    }
}

api! {
    pub struct EnvironmentTag {
        pub name: String,
        pub default_value: String,
    }
}

api! {
    pub struct HeaderTag {
        pub name: String,
        pub default_value: String,
    }
}

api_enum! {
    pub enum WorkloadMode { CLIENT_AND_SERVER, CLIENT, SERVER }
}

api! {
    pub struct WorkloadModeSelector {
        pub mode: WorkloadMode,
    }
}

api! {
    pub struct ProviderRef {
        pub name: String,
    }
}

api! {
    pub struct AccessLogFilter {
        pub expression: String,
    }
}
