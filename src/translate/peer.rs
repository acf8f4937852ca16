//! istio-proxy's peer telemetry, placed as istiod places it: the metadata exchange (a
//! network filter on inbound chains, an HTTP filter first in every connection manager,
//! a filter on outbound clusters, so each side learns who the other is), the ALPN
//! override that tells the server side which HTTP version the client speaks, and the
//! `istio.stats` filters that count requests and connections under Istio's metric names
//! (with Telemetry's metric overrides, merged as istiod merges them).
//!
//! Only istio-proxy has these extensions. Upstream Envoy gets none of them: its requests
//! are counted by meshd itself from the access log stream (crate::telemetry).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::listener::v3::{self as ls, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpConfigType;
use serde_json::{Value, json};

use super::context::ProxyContext;
use crate::envoy::istio::{
    AlpnFilterConfig, AlpnOverride, StatsMetricConfig, StatsPluginConfig, typed_struct,
};
use crate::envoy::pb;
use crate::model::proxy::ProxyKind;

pub const MX_FILTER: &str = "istio.metadata_exchange";
pub const ALPN_FILTER: &str = "istio.alpn";
pub const STATS_FILTER: &str = "istio.stats";
const MX_TYPE: &str = "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange";
const PEER_METADATA_TYPE: &str = "type.googleapis.com/io.istio.http.peer_metadata.Config";

/// Which side of the proxy a listener serves (istiod's listener class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    SidecarInbound,
    SidecarOutbound,
    Gateway,
}

impl Class {
    pub fn of(ctx: &ProxyContext, inbound: bool) -> Class {
        match (ctx.proxy.kind, inbound) {
            (ProxyKind::Router, _) => Class::Gateway,
            (_, true) => Class::SidecarInbound,
            (_, false) => Class::SidecarOutbound,
        }
    }
}

fn mx_config() -> Value {
    json!({"protocol": "istio-peer-exchange", "enable_discovery": true})
}

/// The metadata exchange on an outbound cluster (every service cluster, the passthrough
/// and dynamic forward proxy clusters, as istiod's cluster builder adds it).
pub fn cluster_mx(c: &mut cluster::Cluster) {
    // Made once: every cluster of an istio-proxy carries it (30,000 in a large mesh).
    static CONFIG: std::sync::LazyLock<envoy_types::pb::google::protobuf::Any> =
        std::sync::LazyLock::new(|| typed_struct(MX_TYPE, &mx_config()));
    c.filters.push(cluster::Filter {
        name: MX_FILTER.into(),
        typed_config: Some(CONFIG.clone()),
        ..Default::default()
    });
}

fn network_mx() -> ls::Filter {
    ls::Filter {
        name: MX_FILTER.into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(typed_struct(
            MX_TYPE,
            &mx_config(),
        ))),
    }
}

/// The HTTP metadata exchange, the first filter of every connection manager: inbound
/// learns and answers the downstream's identity, outbound the upstream's.
pub fn http_mx(ctx: &ProxyContext, inbound: bool) -> HttpFilter {
    let side = if inbound { "downstream" } else { "upstream" };
    // `metadataExchangeHeaders: IN_MESH` keeps the headers off requests leaving the mesh.
    let skip_external = !inbound
        && ctx.snap.mesh.raw["defaultConfig"]["proxyHeaders"]["metadataExchangeHeaders"]["mode"]
            == "IN_MESH";
    let propagation = if skip_external {
        json!([{"istio_headers": {"skip_external_clusters": true}}])
    } else {
        json!([{"istio_headers": {}}])
    };
    let config = json!({
        format!("{side}_discovery"): [{"istio_headers": {}}, {"workload_discovery": {}}],
        format!("{side}_propagation"): propagation,
    });
    HttpFilter {
        name: MX_FILTER.into(),
        config_type: Some(HttpConfigType::TypedConfig(typed_struct(
            PEER_METADATA_TYPE,
            &config,
        ))),
        ..Default::default()
    }
}

/// The ALPN override of outbound and gateway connection managers: the upstream TLS
/// handshake offers `istio-http/1.1` (etc.) so the server side's filter chains know the
/// protocol.
pub fn alpn() -> HttpFilter {
    let o = |p: i32, list: [&str; 3]| AlpnOverride {
        upstream_protocol: p,
        alpn_override: list.iter().map(|s| s.to_string()).collect(),
    };
    HttpFilter {
        name: ALPN_FILTER.into(),
        config_type: Some(HttpConfigType::TypedConfig(pb::any(&AlpnFilterConfig {
            alpn_override: vec![
                o(0, ["istio-http/1.0", "istio", "http/1.0"]),
                o(1, ["istio-http/1.1", "istio", "http/1.1"]),
                o(2, ["istio-h2", "istio", "h2"]),
            ],
        }))),
        ..Default::default()
    }
}

/// One metric's override: disabled, and its tags (None: removed; Some: the CEL value
/// istio-proxy computes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricOverride {
    pub name: String,
    pub disabled: bool,
    pub tags: Vec<(String, Option<String>)>,
}

/// One side's (CLIENT or SERVER) metric configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SideMetrics {
    pub disabled: bool,
    pub overrides: Vec<MetricOverride>,
}

/// A metrics provider's merged configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderMetrics {
    pub client: SideMetrics,
    pub server: SideMetrics,
    pub reporting_interval: Option<std::time::Duration>,
}

impl ProviderMetrics {
    pub fn for_class(&self, class: Class) -> &SideMetrics {
        match class {
            Class::SidecarInbound => &self.server,
            Class::SidecarOutbound | Class::Gateway => &self.client,
        }
    }
}

/// Istio's metrics, in the order istiod lists them (by name).
const ALL_METRICS: [&str; 10] = [
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_OPENED_CONNECTIONS",
    "TCP_RECEIVED_BYTES",
    "TCP_SENT_BYTES",
];

/// The Prometheus series name (after `istio_`) of an Istio metric.
pub fn prometheus_name(metric: &str) -> &str {
    match metric {
        "REQUEST_COUNT" => "requests_total",
        "REQUEST_DURATION" => "request_duration_milliseconds",
        "REQUEST_SIZE" => "request_bytes",
        "RESPONSE_SIZE" => "response_bytes",
        "TCP_OPENED_CONNECTIONS" => "tcp_connections_opened_total",
        "TCP_CLOSED_CONNECTIONS" => "tcp_connections_closed_total",
        "TCP_SENT_BYTES" => "tcp_sent_bytes_total",
        "TCP_RECEIVED_BYTES" => "tcp_received_bytes_total",
        "GRPC_REQUEST_MESSAGES" => "request_messages_total",
        "GRPC_RESPONSE_MESSAGES" => "response_messages_total",
        custom => custom,
    }
}

fn is_all_metrics(m: &Value) -> bool {
    if !m["customMetric"].is_null() {
        return false;
    }
    m["metric"].is_null() || m["metric"] == "ALL_METRICS"
}

fn matches(m: &Value) -> Vec<String> {
    if let Some(c) = m["customMetric"].as_str() {
        return vec![c.to_string()];
    }
    match m["metric"].as_str() {
        None | Some("ALL_METRICS") => ALL_METRICS.iter().map(|s| s.to_string()).collect(),
        Some(one) => vec![one.to_string()],
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Client,
    Server,
}

fn modes(m: &Value) -> &'static [Mode] {
    match m["mode"].as_str() {
        Some("CLIENT") => &[Mode::Client],
        Some("SERVER") => &[Mode::Server],
        _ => &[Mode::Client, Mode::Server],
    }
}

fn provider_names(entry: &Value) -> Vec<String> {
    entry["providers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

/// Every metrics provider's configuration for this proxy: `defaultProviders.metrics`,
/// then the root namespace's, the namespace's and the workload's Telemetry `metrics`
/// entries, merged as istiod merges them (a level that names providers replaces the
/// ones in scope; overrides apply in order, later ones over earlier; disabling
/// ALL_METRICS for a mode turns the provider off there until a later override names
/// that mode).
fn metrics(ctx: &ProxyContext) -> BTreeMap<String, ProviderMetrics> {
    merge(
        ctx,
        ctx.snap
            .mesh
            .default_metrics_providers()
            .unwrap_or_default(),
    )
}

/// The configuration of meshd's own series for this proxy (upstream Envoy, counted from
/// its access log records): as istiod merges it, except that Istio's `prometheus`
/// provider is in scope when the mesh config has no `defaultProviders.metrics` at all
/// (meshd counts by default; istiod's install sets that default too).
pub fn own_series<'c>(ctx: &'c ProxyContext) -> Option<&'c ProviderMetrics> {
    merged(ctx).own.as_ref()
}

/// The Prometheus provider's configuration for istio-proxy and for meshd's own series.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    prometheus: Option<ProviderMetrics>,
    own: Option<ProviderMetrics>,
}

fn merged<'c>(ctx: &'c ProxyContext) -> &'c Merged {
    ctx.metrics.get_or_init(|| {
        let prometheus_of = |m: BTreeMap<String, ProviderMetrics>| {
            m.into_iter()
                .find(|(name, _)| ctx.snap.mesh.is_prometheus_provider(name))
                .map(|(_, m)| m)
        };
        let own_defaults = ctx
            .snap
            .mesh
            .default_metrics_providers()
            .unwrap_or_else(|| vec!["prometheus".to_string()]);
        Merged {
            prometheus: prometheus_of(metrics(ctx)),
            own: prometheus_of(merge(ctx, own_defaults)),
        }
    })
}

fn merge(ctx: &ProxyContext, defaults: Vec<String>) -> BTreeMap<String, ProviderMetrics> {
    #[derive(Default, Clone)]
    struct Over {
        disabled: Option<bool>,
        tags: BTreeMap<String, Value>,
    }
    let entries: Vec<&Value> = super::telemetry::levels(ctx, |t| &t.metrics)
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    let mut providers: BTreeMap<String, BTreeMap<Mode, BTreeMap<String, Over>>> = BTreeMap::new();
    if entries.is_empty() {
        for d in &defaults {
            providers.insert(d.clone(), BTreeMap::new());
        }
    }
    let mut scope = defaults.clone();
    for e in &entries {
        let names = provider_names(e);
        if !names.is_empty() {
            scope = names;
        }
    }
    let in_scope: BTreeSet<String> = scope.into_iter().collect();
    let mut parent = defaults;
    let mut all_off: BTreeSet<(String, Mode)> = BTreeSet::new();
    let mut intervals: BTreeMap<String, std::time::Duration> = BTreeMap::new();
    for e in &entries {
        let mut names = provider_names(e);
        if names.is_empty() {
            names = parent.clone();
        }
        parent = names.clone();
        let interval = e["reportingInterval"]
            .as_str()
            .and_then(|d| crate::model::istio::Duration::parse(d).ok());
        for p in names.iter().filter(|p| in_scope.contains(*p)) {
            if let Some(i) = &interval {
                intervals.insert(p.clone(), i.as_std());
            }
            let modes_map = providers.entry(p.clone()).or_insert_with(|| {
                [
                    (Mode::Client, BTreeMap::new()),
                    (Mode::Server, BTreeMap::new()),
                ]
                .into()
            });
            for o in e["overrides"].as_array().into_iter().flatten() {
                let m = &o["match"];
                let disabled = o["disabled"].as_bool();
                if is_all_metrics(m) && disabled == Some(true) {
                    for mode in modes(m) {
                        all_off.insert((p.clone(), *mode));
                    }
                    continue;
                }
                for mode in modes(m) {
                    all_off.remove(&(p.clone(), *mode));
                    let metrics = modes_map.entry(*mode).or_default();
                    for name in matches(m) {
                        let over = metrics.entry(name).or_default();
                        if disabled.is_some() {
                            over.disabled = disabled;
                        }
                        for (k, v) in o["tagOverrides"].as_object().into_iter().flatten() {
                            over.tags.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
    }
    providers
        .into_iter()
        .map(|(p, modes_map)| {
            let mut out = ProviderMetrics {
                reporting_interval: intervals.get(&p).copied(),
                ..Default::default()
            };
            for (mode, metrics) in modes_map {
                let side = match mode {
                    Mode::Client => &mut out.client,
                    Mode::Server => &mut out.server,
                };
                if all_off.contains(&(p.clone(), mode)) {
                    side.disabled = true;
                    continue;
                }
                side.overrides = metrics
                    .into_iter()
                    .map(|(name, o)| MetricOverride {
                        name,
                        disabled: o.disabled.unwrap_or(false),
                        tags: o
                            .tags
                            .into_iter()
                            .map(|(k, v)| {
                                let value = if v["operation"] == "REMOVE" {
                                    None
                                } else {
                                    Some(v["value"].as_str().unwrap_or_default().to_string())
                                };
                                (k, value)
                            })
                            .collect(),
                    })
                    .collect();
            }
            (p, out)
        })
        .collect()
}

/// The Prometheus provider's configuration for this proxy, when one is in scope.
pub fn prometheus<'c>(ctx: &'c ProxyContext) -> Option<&'c ProviderMetrics> {
    merged(ctx).prometheus.as_ref()
}

fn stats_config(
    m: &ProviderMetrics,
    class: Class,
) -> Option<envoy_types::pb::google::protobuf::Any> {
    let side = m.for_class(class);
    if side.disabled {
        return None;
    }
    Some(pb::any(&StatsPluginConfig {
        disable_host_header_fallback: class != Class::SidecarOutbound,
        tcp_reporting_duration: m.reporting_interval.map(pb::duration),
        metrics: side
            .overrides
            .iter()
            .map(|o| StatsMetricConfig {
                name: prometheus_name(&o.name).to_string(),
                drop: o.disabled,
                dimensions: o
                    .tags
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
                    .collect(),
                tags_to_remove: o
                    .tags
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| k.clone())
                    .collect(),
            })
            .collect(),
    }))
}

/// The `istio.stats` HTTP filter for a connection manager of `class`.
pub fn http_stats(m: &ProviderMetrics, class: Class) -> Option<HttpFilter> {
    Some(HttpFilter {
        name: STATS_FILTER.into(),
        config_type: Some(HttpConfigType::TypedConfig(stats_config(m, class)?)),
        ..Default::default()
    })
}

fn tcp_stats(m: &ProviderMetrics, class: Class) -> Option<ls::Filter> {
    Some(ls::Filter {
        name: STATS_FILTER.into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(stats_config(m, class)?)),
    })
}

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

/// The network filters of istio-proxy's chains, added to finished listeners: on the
/// inbound side the metadata exchange first (before RBAC can refuse, so a refusal still
/// knows its peer); before every TCP proxy the TCP stats filter. Gateways' TCP and TLS
/// servers get no exchange (istiod adds it only for ISTIO_MUTUAL servers, whose peers
/// are sidecars that exchange over the cluster filter anyway).
pub fn network_filters(ctx: &ProxyContext, listeners: &mut [Listener]) {
    let prom = prometheus(ctx);
    for l in listeners {
        let inbound = l.name == crate::envoy::naming::VIRTUAL_INBOUND
            || l.traffic_direction
                == envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32;
        let class = Class::of(ctx, inbound);
        let chains = l
            .filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.as_mut());
        for chain in chains {
            let has_hcm = chain.filters.iter().any(|f| f.name == HCM);
            let tcp = chain.filters.iter().position(|f| f.name == TCP_PROXY);
            if !has_hcm
                && let (Some(at), Some(m)) = (tcp, prom)
                && let Some(f) = tcp_stats(m, class)
            {
                chain.filters.insert(at, f);
            }
            if class == Class::SidecarInbound && (has_hcm || tcp.is_some()) {
                chain.filters.insert(0, network_mx());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_names_are_istio_proxys() {
        assert_eq!(prometheus_name("REQUEST_COUNT"), "requests_total");
        assert_eq!(prometheus_name("TCP_SENT_BYTES"), "tcp_sent_bytes_total");
        assert_eq!(prometheus_name("my_metric"), "my_metric");
        let mut sorted = ALL_METRICS;
        sorted.sort();
        assert_eq!(sorted, ALL_METRICS, "istiod's order");
    }
}
