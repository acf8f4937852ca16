//! MeshConfig: the mesh-wide settings istiod reads from the `istio` ConfigMap (key `mesh`)
//! in the root namespace. Only the fields meshd acts on are typed; the rest is kept as
//! JSON for /debug/configz and parsed leniently, because mesh config carries many
//! settings that are read by other components (the agent, the gateways).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::istio::{Duration, H2UpgradePolicy, HttpRetry, LocalityLbSetting, OutboundTrafficMode};

/// Mesh-wide settings with istiod's defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshConfig {
    pub trust_domain: String,
    pub root_namespace: String,
    pub outbound_traffic_policy: OutboundTrafficMode,
    pub connect_timeout: Duration,
    pub enable_auto_mtls: bool,
    pub default_service_export_to: Vec<String>,
    pub default_virtual_service_export_to: Vec<String>,
    pub default_destination_rule_export_to: Vec<String>,
    /// `accessLogFile`: where Envoy writes access logs ("" = off).
    pub access_log_file: String,
    /// `accessLogEncoding`: TEXT or JSON.
    pub access_log_encoding: String,
    pub access_log_format: String,
    pub dns_refresh_rate: Duration,
    /// `h2UpgradePolicy`: whether HTTP/1.1 connections to mesh services are upgraded to
    /// HTTP/2 unless a DestinationRule says otherwise.
    pub h2_upgrade_policy: H2UpgradePolicy,
    /// `defaultHttpRetryPolicy`: outbound routes without `retries`.
    pub default_http_retry_policy: Option<HttpRetry>,
    /// `defaultInboundHttpRetryPolicy`: inbound routes.
    pub default_inbound_http_retry_policy: Option<HttpRetry>,
    /// Other trust domains whose identities count as ours (`trustDomainAliases`).
    pub trust_domain_aliases: Vec<String>,
    /// `extensionProviders` meshd acts on (external authorization).
    pub extension_providers: Vec<ExtensionProvider>,
    /// Kubernetes DNS suffix (not a MeshConfig field in istio: istiod's --domain flag).
    pub domain_suffix: String,
    /// `localityLbSetting`, read once (every cluster without its own consults it); None
    /// when absent or not a valid setting. Part of `raw` as shown.
    #[serde(skip)]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// The whole mesh config as given.
    pub raw: Value,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            trust_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            outbound_traffic_policy: OutboundTrafficMode::ALLOW_ANY,
            connect_timeout: Duration(std::time::Duration::from_secs(10)),
            enable_auto_mtls: true,
            default_service_export_to: vec!["*".into()],
            default_virtual_service_export_to: vec!["*".into()],
            default_destination_rule_export_to: vec!["*".into()],
            access_log_file: String::new(),
            access_log_encoding: "TEXT".into(),
            access_log_format: String::new(),
            dns_refresh_rate: Duration(std::time::Duration::from_secs(60)),
            h2_upgrade_policy: H2UpgradePolicy::DO_NOT_UPGRADE,
            default_http_retry_policy: None,
            default_inbound_http_retry_policy: None,
            trust_domain_aliases: vec![],
            extension_providers: vec![],
            domain_suffix: "cluster.local".into(),
            locality_lb_setting: None,
            raw: Value::Object(Default::default()),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct MeshConfigWire {
    trust_domain: Option<String>,
    root_namespace: Option<String>,
    outbound_traffic_policy: Option<OutboundWire>,
    connect_timeout: Option<Duration>,
    enable_auto_mtls: Option<bool>,
    default_service_export_to: Option<Vec<String>>,
    default_virtual_service_export_to: Option<Vec<String>>,
    default_destination_rule_export_to: Option<Vec<String>>,
    access_log_file: Option<String>,
    access_log_encoding: Option<String>,
    access_log_format: Option<String>,
    dns_refresh_rate: Option<Duration>,
    h2_upgrade_policy: Option<H2UpgradePolicy>,
    default_http_retry_policy: Option<HttpRetry>,
    default_inbound_http_retry_policy: Option<HttpRetry>,
    trust_domain_aliases: Option<Vec<String>>,
    extension_providers: Option<Vec<ExtensionProvider>>,
}

/// A `meshConfig.extensionProviders` entry (external authorization, file access logs and
/// meshd's rate limit service are typed; tracing providers are kept in `raw`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtensionProvider {
    pub name: String,
    pub envoy_ext_authz_grpc: Option<ExtAuthzGrpc>,
    pub envoy_ext_authz_http: Option<ExtAuthzHttp>,
    pub envoy_file_access_log: Option<FileAccessLogProvider>,
    /// A rate limit service (Envoy's `RateLimitService` gRPC API) for RateLimitPolicy's
    /// global limits: meshd's own provider kind, beside Istio's.
    pub envoy_rate_limit: Option<RateLimitProvider>,
    /// A Zipkin collector (Telemetry tracing).
    pub zipkin: Option<ZipkinProvider>,
    /// An OpenTelemetry collector (OTLP over gRPC, or over HTTP with `http`).
    pub opentelemetry: Option<OpenTelemetryProvider>,
    /// A Datadog agent.
    pub datadog: Option<DatadogProvider>,
    /// A SkyWalking OAP collector.
    pub skywalking: Option<SkyWalkingProvider>,
    /// Istio's metrics in Prometheus form (istio-proxy's stats filter; meshd's own series
    /// for upstream Envoy).
    pub prometheus: Option<serde_json::Value>,
}

impl ExtensionProvider {
    /// Whether it is a tracer meshd configures.
    pub fn is_tracer(&self) -> bool {
        self.zipkin.is_some()
            || self.opentelemetry.is_some()
            || self.datadog.is_some()
            || self.skywalking.is_some()
    }
}

/// A header a tracing provider sends: a value, or one read from meshd's environment (as
/// istiod reads `envName` from its own).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProviderHeader {
    pub name: String,
    pub value: Option<String>,
    pub env_name: Option<String>,
}

impl ProviderHeader {
    pub fn resolved_value(&self) -> String {
        match (&self.value, &self.env_name) {
            (Some(v), _) => v.clone(),
            (None, Some(env)) => std::env::var(env).unwrap_or_default(),
            (None, None) => String::new(),
        }
    }
}

/// `opentelemetry`: OTLP traces.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OpenTelemetryProvider {
    pub service: String,
    pub port: u32,
    pub max_tag_length: u32,
    /// OTLP over HTTP (else gRPC).
    pub http: Option<OtelHttp>,
    pub grpc: Option<OtelGrpc>,
    pub resource_detectors: Option<OtelResourceDetectors>,
    /// `OTEL_SEMANTIC_CONVENTIONS`: service.name from the workload (annotation, labels,
    /// workload name) instead of the proxy's service cluster.
    pub service_attribute_enrichment: Option<String>,
    /// Samplers (Dynatrace's) meshd does not configure: kept to say so.
    pub dynatrace_sampler: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OtelHttp {
    pub path: String,
    pub timeout: Option<crate::model::istio::Duration>,
    pub headers: Vec<ProviderHeader>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OtelGrpc {
    pub timeout: Option<crate::model::istio::Duration>,
    pub initial_metadata: Vec<ProviderHeader>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OtelResourceDetectors {
    pub environment: Option<serde_json::Value>,
    pub dynatrace: Option<serde_json::Value>,
}

/// `datadog`: a Datadog agent's trace endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DatadogProvider {
    pub service: String,
    pub port: u32,
    pub max_tag_length: u32,
}

/// `skywalking`: a SkyWalking OAP collector (gRPC).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SkyWalkingProvider {
    pub service: String,
    pub port: u32,
    pub access_token: String,
}

/// `zipkin`: a collector speaking Zipkin's v2 JSON API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZipkinProvider {
    /// `host` or `namespace/host` of a service in the registry.
    pub service: String,
    pub port: u32,
    pub max_tag_length: u32,
    #[serde(rename = "enable64bitTraceId")]
    pub enable_64bit_trace_id: bool,
    /// Collector path (default `/api/v2/spans`).
    pub path: String,
    /// `USE_B3` (default) or `USE_B3_WITH_W3C_PROPAGATION`.
    pub trace_context_option: Option<String>,
    pub timeout: Option<crate::model::istio::Duration>,
    pub headers: Vec<ProviderHeader>,
}

/// `envoyRateLimit`: where the rate limit service is, and the defaults of the policies
/// that name it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitProvider {
    /// `host` or `namespace/host` of a service in the registry.
    pub service: String,
    pub port: u32,
    pub domain: Option<String>,
    pub timeout: Option<Duration>,
}

/// `envoyFileAccessLog`: a file (or /dev/stdout) and a text or JSON (`labels`) format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FileAccessLogProvider {
    pub path: String,
    pub log_format: Option<AccessLogFormat>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AccessLogFormat {
    pub text: Option<String>,
    pub labels: Option<serde_json::Map<String, Value>>,
}

impl MeshConfig {
    /// An access log provider by name: one of `extensionProviders`, or `envoy`, Istio's
    /// built-in provider (Envoy's default text format on /dev/stdout).
    pub fn access_log_provider(&self, name: &str) -> Option<FileAccessLogProvider> {
        if let Some(p) = self.extension_providers.iter().find(|p| p.name == name) {
            return p.envoy_file_access_log.clone();
        }
        (name == "envoy").then(|| FileAccessLogProvider {
            path: "/dev/stdout".into(),
            log_format: None,
        })
    }

    /// `defaultProviders.accessLogging`.
    /// `defaultProviders.tracing`: tracing providers for Telemetry entries naming none.
    pub fn default_tracing_providers(&self) -> Vec<String> {
        self.raw["defaultProviders"]["tracing"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    /// `defaultConfig.tracing.sampling`: the sampling percentage when a Telemetry gives
    /// none (istiod's default, PILOT_TRACE_SAMPLING, is 1%).
    pub fn default_trace_sampling(&self) -> f64 {
        self.raw["defaultConfig"]["tracing"]["sampling"]
            .as_f64()
            .filter(|s| (0.0..=100.0).contains(s) && *s != 0.0)
            .unwrap_or(1.0)
    }

    /// `defaultConfig.tracing.customTags`: the tags every span gets when no Telemetry
    /// gives any (as istiod falls back to the proxy config's).
    pub fn default_trace_custom_tags(
        &self,
    ) -> std::collections::BTreeMap<String, crate::model::istio::CustomTag> {
        serde_json::from_value(self.raw["defaultConfig"]["tracing"]["customTags"].clone())
            .unwrap_or_default()
    }

    /// `defaultConfig.tracing.enableIstioTags` (default true).
    pub fn default_trace_istio_tags(&self) -> bool {
        self.raw["defaultConfig"]["tracing"]["enableIstioTags"]
            .as_bool()
            .unwrap_or(true)
    }

    /// `defaultConfig.tracing.maxPathTagLength` (0: Envoy's default).
    pub fn default_trace_max_path_tag_length(&self) -> u32 {
        self.raw["defaultConfig"]["tracing"]["maxPathTagLength"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0)
    }

    /// Whether the metrics provider `name` is a Prometheus one: a mesh
    /// `extensionProviders` entry of that kind, or Istio's built-in `prometheus`. Names
    /// compare without case, as istiod finds providers.
    pub fn is_prometheus_provider(&self, name: &str) -> bool {
        match self
            .extension_providers
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
        {
            Some(p) => p.prometheus.is_some(),
            None => name.eq_ignore_ascii_case("prometheus"),
        }
    }

    /// `enableTracing` (istiod's default: true): whether istio-proxy traces when no
    /// Telemetry speaks of tracing.
    pub fn enable_tracing(&self) -> bool {
        self.raw["enableTracing"].as_bool().unwrap_or(true)
    }

    /// `defaultConfig.gatewayTopology.forwardClientCertDetails` (SANITIZE, FORWARD_ONLY,
    /// APPEND_FORWARD, SANITIZE_SET, ALWAYS_FORWARD_ONLY), when set: what gateways do
    /// with X-Forwarded-Client-Cert (istiod's default: SANITIZE_SET).
    pub fn gateway_forward_client_cert(&self) -> Option<&str> {
        self.raw["defaultConfig"]["gatewayTopology"]["forwardClientCertDetails"]
            .as_str()
            .filter(|m| *m != "UNDEFINED")
    }

    /// `defaultConfig.gatewayTopology.numTrustedProxies`: proxies in front of gateways
    /// whose X-Forwarded-For entries the gateway trusts.
    pub fn gateway_trusted_proxies(&self) -> u32 {
        self.raw["defaultConfig"]["gatewayTopology"]["numTrustedProxies"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    }

    /// `meshMTLS.minProtocolVersion: TLSV1_3`: sidecars accept mesh mTLS only over 1.3.
    pub fn mesh_mtls_requires_tls13(&self) -> bool {
        self.raw["meshMTLS"]["minProtocolVersion"].as_str() == Some("TLSV1_3")
    }

    /// `meshMTLS.cipherSuites`, when it names any.
    pub fn mesh_mtls_cipher_suites(&self) -> Option<Vec<String>> {
        let list: Vec<String> = self.raw["meshMTLS"]["cipherSuites"]
            .as_array()?
            .iter()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect();
        (!list.is_empty()).then_some(list)
    }

    /// `defaultProviders.metrics`, when the mesh config names it.
    pub fn default_metrics_providers(&self) -> Option<Vec<String>> {
        Some(
            self.raw["defaultProviders"]["metrics"]
                .as_array()?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        )
    }

    pub fn default_access_log_providers(&self) -> Vec<String> {
        self.raw["defaultProviders"]["accessLogging"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtAuthzBody {
    pub max_request_bytes: u32,
    pub allow_partial_message: bool,
    pub pack_as_bytes: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtAuthzGrpc {
    pub service: String,
    pub port: u32,
    pub timeout: Option<Duration>,
    pub fail_open: bool,
    pub status_on_error: String,
    pub include_request_body_in_check: Option<ExtAuthzBody>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtAuthzHttp {
    pub service: String,
    pub port: u32,
    pub timeout: Option<Duration>,
    pub path_prefix: String,
    pub fail_open: bool,
    pub status_on_error: String,
    pub include_request_headers_in_check: Vec<String>,
    pub include_headers_in_check: Vec<String>,
    pub include_additional_headers_in_check: std::collections::BTreeMap<String, String>,
    pub include_request_body_in_check: Option<ExtAuthzBody>,
    pub headers_to_upstream_on_allow: Vec<String>,
    pub headers_to_downstream_on_deny: Vec<String>,
    pub headers_to_downstream_on_allow: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OutboundWire {
    mode: Option<OutboundTrafficMode>,
}

impl MeshConfig {
    /// Applies a mesh config document (as found in the `mesh` key) over the defaults.
    pub fn from_value(value: Value, domain_suffix: &str) -> Result<MeshConfig, String> {
        let wire: MeshConfigWire = serde_path_to_error::deserialize(value.clone())
            .map_err(|e| format!("mesh config field {}: {}", e.path(), e.inner()))?;
        let d = MeshConfig::default();
        Ok(MeshConfig {
            trust_domain: wire.trust_domain.unwrap_or(d.trust_domain),
            root_namespace: wire.root_namespace.unwrap_or(d.root_namespace),
            outbound_traffic_policy: wire
                .outbound_traffic_policy
                .and_then(|o| o.mode)
                .unwrap_or(d.outbound_traffic_policy),
            connect_timeout: wire.connect_timeout.unwrap_or(d.connect_timeout),
            enable_auto_mtls: wire.enable_auto_mtls.unwrap_or(d.enable_auto_mtls),
            default_service_export_to: wire
                .default_service_export_to
                .unwrap_or(d.default_service_export_to),
            default_virtual_service_export_to: wire
                .default_virtual_service_export_to
                .unwrap_or(d.default_virtual_service_export_to),
            default_destination_rule_export_to: wire
                .default_destination_rule_export_to
                .unwrap_or(d.default_destination_rule_export_to),
            access_log_file: wire.access_log_file.unwrap_or(d.access_log_file),
            access_log_encoding: wire.access_log_encoding.unwrap_or(d.access_log_encoding),
            access_log_format: wire.access_log_format.unwrap_or(d.access_log_format),
            dns_refresh_rate: wire.dns_refresh_rate.unwrap_or(d.dns_refresh_rate),
            h2_upgrade_policy: wire.h2_upgrade_policy.unwrap_or(d.h2_upgrade_policy),
            default_http_retry_policy: wire.default_http_retry_policy,
            default_inbound_http_retry_policy: wire.default_inbound_http_retry_policy,
            trust_domain_aliases: wire.trust_domain_aliases.unwrap_or_default(),
            extension_providers: wire.extension_providers.unwrap_or_default(),
            domain_suffix: domain_suffix.to_string(),
            // Read apart from the rest: an invalid setting is no setting, not an
            // invalid mesh config.
            locality_lb_setting: value
                .get("localityLbSetting")
                .and_then(|v| serde_json::from_value(v.clone()).ok()),
            raw: value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_overrides() {
        let m = MeshConfig::from_value(
            json!({"trustDomain": "example.org", "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
                   "accessLogFile": "/dev/stdout", "defaultConfig": {"discoveryAddress": "x:15012"}}),
            "cluster.local",
        )
        .expect("valid");
        assert_eq!(m.trust_domain, "example.org");
        assert_eq!(
            m.outbound_traffic_policy,
            OutboundTrafficMode::REGISTRY_ONLY
        );
        assert_eq!(m.root_namespace, "istio-system");
        assert_eq!(m.access_log_file, "/dev/stdout");
        assert!(MeshConfig::from_value(json!({"connectTimeout": 5}), "cluster.local").is_err());
    }
}
