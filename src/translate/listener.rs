//! LDS: outbound listeners per port (or per Sidecar egress listener), `virtualOutbound`
//! (15001) and `virtualInbound` (15006) for iptables-intercepted proxies, bound inbound
//! listeners for Sidecar ingress, and gateway listeners for routers.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::accesslog::v3 as accesslog;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3::{
    self as ls, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as file_log;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3 as http_inspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3 as original_dst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    self as hcm, HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::ForwardClientCertDetails as Xfcc;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;

use super::context::ProxyContext;
use super::route;
use crate::envoy::naming;
use crate::envoy::pb;
use crate::model::istio::{CaptureMode, OutboundTrafficMode};
use crate::model::proxy::{Interception, ProxyKind};
use crate::model::ratelimit::Attach as RateLimitAttach;
use crate::model::service::Protocol;

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

/// Ports the proxy itself uses; services on them would collide with istio-proxy.
const RESERVED_PORTS: [u16; 6] = [15000, 15001, 15006, 15021, 15090, 15020];

/// Where an HCM gets its routes.
pub enum Routes {
    Rds(String),
    Inline(Box<envoy_types::pb::envoy::config::route::v3::RouteConfiguration>),
}

fn text_format(text: &str) -> file_log::file_access_log::AccessLogFormat {
    file_log::file_access_log::AccessLogFormat::LogFormat(core::SubstitutionFormatString {
        format: Some(core::substitution_format_string::Format::TextFormatSource(
            core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString(text.to_string())),
                ..Default::default()
            },
        )),
        ..Default::default()
    })
}

fn json_format(fields: &serde_json::Value) -> file_log::file_access_log::AccessLogFormat {
    file_log::file_access_log::AccessLogFormat::LogFormat(core::SubstitutionFormatString {
        format: Some(core::substitution_format_string::Format::JsonFormat(
            pb::to_struct(fields),
        )),
        ..Default::default()
    })
}

fn file_log(
    path: &str,
    format: Option<file_log::file_access_log::AccessLogFormat>,
    filter: Option<accesslog::AccessLogFilter>,
) -> accesslog::AccessLog {
    accesslog::AccessLog {
        name: "envoy.access_loggers.file".into(),
        filter,
        config_type: Some(accesslog::access_log::ConfigType::TypedConfig(pb::any(
            &file_log::FileAccessLog {
                path: path.to_string(),
                access_log_format: format,
            },
        ))),
    }
}

/// Access logs of a listener: from the Telemetry objects that apply to the workload
/// (`accessLogging`), else from mesh config (`accessLogFile`). `inbound` is the server
/// side (Telemetry mode SERVER), outbound the client side (CLIENT).
/// Every access log of a connection manager (`tcp`: a TCP proxy): the files Telemetry
/// or mesh config asks for, and the record that feeds the mesh's metrics.
pub(crate) fn logs(ctx: &ProxyContext, inbound: bool, tcp: bool) -> Vec<accesslog::AccessLog> {
    let mut out = access_logs(ctx, inbound);
    out.extend(super::telemetry::metrics_log(ctx, inbound, tcp));
    out
}

pub(crate) fn access_logs(ctx: &ProxyContext, inbound: bool) -> Vec<accesslog::AccessLog> {
    if let Some(logs) = super::telemetry::access_logs(ctx, inbound) {
        return logs
            .into_iter()
            .map(|(provider, expression)| {
                let format = provider.log_format.as_ref().and_then(|f| {
                    if let Some(labels) = &f.labels {
                        Some(json_format(&serde_json::Value::Object(labels.clone())))
                    } else {
                        f.text.as_deref().map(text_format)
                    }
                });
                let filter = expression.map(|e| accesslog::AccessLogFilter {
                    filter_specifier: Some(accesslog::access_log_filter::FilterSpecifier::ExtensionFilter(
                        accesslog::ExtensionFilter {
                            name: "envoy.access_loggers.extension_filters.cel".into(),
                            config_type: Some(accesslog::extension_filter::ConfigType::TypedConfig(pb::any(
                                &envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter {
                                    expression: e,
                                    ..Default::default()
                                },
                            ))),
                        },
                    )),
                });
                file_log(&provider.path, format, filter)
            })
            .collect();
    }
    let mesh = &ctx.snap.mesh;
    if mesh.access_log_file.is_empty() {
        return vec![];
    }
    let format = if mesh.access_log_encoding.eq_ignore_ascii_case("JSON") {
        Some(json_format(&serde_json::json!({
            "start_time": "%START_TIME%",
            "method": "%REQ(:METHOD)%",
            "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
            "protocol": "%PROTOCOL%",
            "response_code": "%RESPONSE_CODE%",
            "response_flags": "%RESPONSE_FLAGS%",
            "bytes_received": "%BYTES_RECEIVED%",
            "bytes_sent": "%BYTES_SENT%",
            "duration": "%DURATION%",
            "upstream_host": "%UPSTREAM_HOST%",
            "upstream_cluster": "%UPSTREAM_CLUSTER%",
            "route_name": "%ROUTE_NAME%",
            "authority": "%REQ(:AUTHORITY)%",
            "request_id": "%REQ(X-REQUEST-ID)%",
        })))
    } else if !mesh.access_log_format.is_empty() {
        Some(text_format(&mesh.access_log_format))
    } else {
        // Envoy's default text format.
        None
    };
    vec![file_log(&mesh.access_log_file, format, None)]
}

fn http_filter<T: prost::Message + prost::Name>(name: &str, msg: &T) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pb::any(msg))),
        ..Default::default()
    }
}

/// An HTTP connection manager as istiod configures it for sidecars and gateways;
/// `inbound` is the workload port it serves on the inbound side.
pub fn http_connection_manager(
    ctx: &ProxyContext,
    stat_prefix: &str,
    routes: Routes,
    inbound: Option<u16>,
) -> Filter {
    let inbound_port = inbound;
    let inbound = inbound_port.is_some();
    let gateway = ctx.proxy.kind == ProxyKind::Router;
    // X-Forwarded-Client-Cert: a sidecar's inbound side appends its peer's, its outbound
    // side removes any; a gateway (the edge) replaces it with its client's, or does what
    // the mesh's `defaultConfig.gatewayTopology.forwardClientCertDetails` says.
    let xfcc = if gateway {
        match ctx.snap.mesh.gateway_forward_client_cert() {
            Some("SANITIZE") => Xfcc::Sanitize,
            Some("FORWARD_ONLY") => Xfcc::ForwardOnly,
            Some("APPEND_FORWARD") => Xfcc::AppendForward,
            Some("ALWAYS_FORWARD_ONLY") => Xfcc::AlwaysForwardOnly,
            _ => Xfcc::SanitizeSet,
        }
    } else if inbound {
        Xfcc::AppendForward
    } else {
        Xfcc::Sanitize
    };
    let m = HttpConnectionManager {
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        // istio-proxy's stats tags find the prefix by its trailing `;` (see the clusters'
        // alt_stat_name); upstream Envoy keeps it plain.
        stat_prefix: if ctx.is_istio_proxy() {
            format!("{stat_prefix};")
        } else {
            stat_prefix.to_string()
        },
        route_specifier: Some(match routes {
            Routes::Rds(name) => RouteSpecifier::Rds(hcm::Rds {
                config_source: Some(pb::ads_config_source()),
                route_config_name: name,
            }),
            Routes::Inline(rc) => RouteSpecifier::RouteConfig(*rc),
        }),
        // istiod's order: security, then fault before CORS (an injected abort is answered
        // before CORS runs; a preflight can be delayed or aborted too), the router last.
        http_filters: {
            // Authentication and authorization decide before anything else runs: on a
            // workload's inbound side, and at a gateway (the mesh's edge) for the
            // policies that select the gateway's workload.
            let mut f = Vec::new();
            // istio-proxy's metadata exchange first: a refusal below still knows its peer.
            let istio_proxy = ctx.is_istio_proxy();
            if istio_proxy {
                f.push(super::peer::http_mx(ctx, inbound));
            }
            if inbound || gateway {
                f.extend(inbound_security_filters(ctx));
            }
            // Rate limits after authorization: refused requests spend no tokens. (Where
            // the manager sits is worked out only when some policy exists.)
            if !ctx.snap.rate_limits.all.is_empty() {
                let attach = match (inbound_port, gateway) {
                    (Some(port), _) => Some(workload_attachment(ctx, port)),
                    (None, true) => Some(RateLimitAttach {
                        namespace: &ctx.proxy.namespace,
                        labels: &ctx.labels,
                        services: Vec::new(),
                        gateways: super::gateway::selected(ctx),
                    }),
                    (None, false) => None,
                };
                f.extend(super::ratelimit::http_filters(ctx, attach.as_ref()));
            }
            f.extend([
                // gRPC request and message counts per cluster (`cluster.NAME.grpc.*`), and
                // in filter state for access logs, as istiod adds it.
                http_filter(GRPC_STATS_FILTER, &grpc_stats_config()),
            ]);
            if istio_proxy && !inbound {
                f.push(super::peer::alpn());
            }
            f.extend([
                http_filter(route::FAULT_FILTER, &fault::HttpFault::default()),
                http_filter(route::CORS_FILTER, &cors::Cors::default()),
            ]);
            if istio_proxy && let Some(m) = super::peer::prometheus(ctx) {
                let class = super::peer::Class::of(ctx, inbound);
                f.extend(super::peer::http_stats(m, class));
            }
            // ALLOW_ANY_DYNAMIC_DNS: every outbound manager may route an unknown host to
            // the dynamic forward proxy cluster, which needs this filter's lookup first.
            if !inbound && !gateway && super::dfp::enabled(ctx) {
                f.push(super::dfp::http_filter(ctx));
            }
            // Session persistence picks the endpoint just before the router does.
            if !inbound && ctx.snap.sessions {
                f.push(http_filter(
                    super::session::FILTER,
                    &super::session::manager_filter(),
                ));
            }
            f.push(http_filter(
                "envoy.filters.http.router",
                &router::Router::default(),
            ));
            f
        },
        access_log: logs(ctx, inbound, false),
        tracing: super::telemetry::tracing(ctx, inbound),
        // Sidecars trust the connection's peer; gateways are the edge and use the
        // client address.
        use_remote_address: pb::boolv(gateway),
        normalize_path: pb::boolv(true),
        merge_slashes: false,
        path_with_escaped_slashes_action:
            hcm::http_connection_manager::PathWithEscapedSlashesAction::KeepUnchanged as i32,
        upgrade_configs: vec![hcm::http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        stream_idle_timeout: pb::secs(0),
        // istiod's proxy headers default: inbound and gateway responses say
        // `server: istio-envoy`; sidecar outbound keeps Envoy's own "envoy"
        // (pilot/pkg/networking/util/proxy_headers.go).
        server_name: if inbound || gateway {
            "istio-envoy".into()
        } else {
            String::new()
        },
        forward_client_cert_details: xfcc as i32,
        set_current_client_cert_details: match xfcc {
            // What the sidecar adds of its peer's certificate (istiod's choice).
            Xfcc::AppendForward if inbound => {
                Some(hcm::http_connection_manager::SetCurrentClientCertDetails {
                    subject: pb::boolv(true),
                    dns: true,
                    uri: true,
                    ..Default::default()
                })
            }
            // A gateway passes on the whole client certificate when it forwards one.
            Xfcc::AppendForward | Xfcc::SanitizeSet => {
                Some(hcm::http_connection_manager::SetCurrentClientCertDetails {
                    subject: pb::boolv(true),
                    cert: true,
                    dns: true,
                    uri: true,
                    ..Default::default()
                })
            }
            _ => None,
        },
        xff_num_trusted_hops: if gateway {
            ctx.snap.mesh.gateway_trusted_proxies()
        } else {
            0
        },
        // `Expect: 100-continue` goes to the application, whose `100 Continue` comes back
        // (istiod's ENABLE_100_CONTINUE_HEADERS); Envoy does not answer it itself.
        proxy_100_continue: true,
        ..Default::default()
    };
    Filter {
        name: HCM.into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(pb::any(&m))),
    }
}

pub fn tcp_proxy(ctx: &ProxyContext, cluster: &str) -> Filter {
    let t = tcp::TcpProxy {
        stat_prefix: cluster.to_string(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
            cluster.to_string(),
        )),
        // Inbound clusters are the server side.
        access_log: logs(
            ctx,
            cluster.starts_with("inbound|") || cluster == naming::INBOUND_PASSTHROUGH,
            true,
        ),
        idle_timeout: super::tcp::idle_timeout(ctx, cluster).map(pb::duration),
        ..Default::default()
    };
    Filter {
        name: TCP_PROXY.into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(pb::any(&t))),
    }
}

/// Chains of a TLS port (TLS or HTTPS services), chosen by SNI as istiod builds them:
/// the `tls` routes of the VirtualServices in scope first, then each service's own host
/// name to its cluster; anything else goes to `fallback`. Names already taken by an
/// earlier chain are left out (Envoy refuses two chains matching one name).
fn sni_chains(
    ctx: &ProxyContext,
    services: &[std::sync::Arc<crate::model::service::Service>],
    vss: &[std::sync::Arc<crate::model::snapshot::VirtualServiceConfig>],
    port: u16,
    stat: &str,
    fallback: &super::tcp::Targets,
) -> Vec<FilterChain> {
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut chains = Vec::new();
    let mut add =
        |names: Vec<String>, targets: &super::tcp::Targets, chains: &mut Vec<FilterChain>| {
            let names: Vec<String> = names
                .into_iter()
                .filter(|n| taken.insert(n.clone()))
                .collect();
            if names.is_empty() {
                return;
            }
            chains.push(FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    server_names: names,
                    ..Default::default()
                }),
                filters: vec![tcp_to(ctx, stat, targets)],
                ..Default::default()
            });
        };
    for (names, targets) in super::tcp::sidecar_tls_routes(ctx, vss, port) {
        add(names, &targets, &mut chains);
    }
    for svc in services {
        if svc.port(port).is_none() {
            continue;
        }
        let targets = super::tcp::sidecar_tcp_targets(ctx, vss, &svc.hostname, port)
            .unwrap_or_else(|| vec![(naming::outbound_cluster(port, "", &svc.hostname), 100)]);
        add(vec![svc.hostname.clone()], &targets, &mut chains);
    }
    chains.push(FilterChain {
        filters: vec![tcp_to(ctx, stat, fallback)],
        ..Default::default()
    });
    chains
}

fn is_tls(p: Protocol) -> bool {
    matches!(p, Protocol::Tls | Protocol::Https)
}

/// Where a connection for no known destination goes: out of the mesh only if it may
/// (through the Sidecar's `egressProxy` when it names one).
fn unknown_destination(ctx: &ProxyContext) -> super::tcp::Targets {
    let c = match ctx.scope.outbound_policy {
        OutboundTrafficMode::ALLOW_ANY | OutboundTrafficMode::ALLOW_ANY_DYNAMIC_DNS => {
            route::egress_proxy_cluster(ctx).unwrap_or_else(|| naming::PASSTHROUGH.to_string())
        }
        OutboundTrafficMode::REGISTRY_ONLY => naming::BLACKHOLE.to_string(),
    };
    vec![(c, 100)]
}

/// tcp_proxy to one cluster (its name the stat prefix, as istiod) or weighted clusters.
fn tcp_to(ctx: &ProxyContext, stat: &str, t: &super::tcp::Targets) -> Filter {
    match t.as_slice() {
        [(one, _)] => tcp_proxy(ctx, one),
        _ => super::tcp::proxy(ctx, stat, t),
    }
}

fn listener_filter<T: prost::Message + prost::Name>(name: &str, msg: &T) -> ListenerFilter {
    ListenerFilter {
        name: name.to_string(),
        config_type: Some(ls::listener_filter::ConfigType::TypedConfig(pb::any(msg))),
        ..Default::default()
    }
}

fn http_inspector() -> ListenerFilter {
    listener_filter(HTTP_INSPECTOR, &http_inspector::HttpInspector::default())
}

/// Filter chains for an outbound port: HTTP, TCP, or sniffed (both, chosen by the
/// HTTP inspector).
fn outbound_chains(
    ctx: &ProxyContext,
    protocol: Protocol,
    port: u16,
    tcp_targets: &super::tcp::Targets,
    stat: &str,
) -> (Vec<FilterChain>, bool) {
    let http = || FilterChain {
        filters: vec![http_connection_manager(
            ctx,
            &format!("outbound_{stat}"),
            Routes::Rds(port.to_string()),
            None,
        )],
        ..Default::default()
    };
    let tcp = || FilterChain {
        filters: vec![tcp_to(ctx, stat, tcp_targets)],
        ..Default::default()
    };
    if protocol.is_http() {
        (vec![http()], false)
    } else if protocol == Protocol::Unsupported {
        let mut h = http();
        h.filter_chain_match = Some(FilterChainMatch {
            application_protocols: vec!["http/1.1".into(), "h2c".into()],
            ..Default::default()
        });
        (vec![h, tcp()], true)
    } else {
        (vec![tcp()], false)
    }
}

fn listener(
    name: String,
    address: &str,
    port: u16,
    bind: bool,
    direction: core::TrafficDirection,
) -> Listener {
    Listener {
        name,
        address: Some(pb::socket_address(address, u32::from(port))),
        bind_to_port: if bind { None } else { pb::boolv(false) },
        traffic_direction: direction as i32,
        ..Default::default()
    }
}

/// All listeners for the proxy, sorted by name.
pub fn listeners(ctx: &ProxyContext) -> Vec<Listener> {
    let mut out = match ctx.proxy.kind {
        ProxyKind::Sidecar => sidecar_listeners(ctx),
        ProxyKind::Router => super::gateway::listeners(ctx),
    };
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    socket_settings(ctx, &mut out);
    if ctx.is_istio_proxy() {
        super::peer::network_filters(ctx, &mut out);
    }
    super::envoyfilter::listeners(ctx, &mut out);
    out
}

const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
const GRPC_STATS_FILTER: &str = "envoy.filters.http.grpc_stats";

fn grpc_stats_config()
-> envoy_types::pb::envoy::extensions::filters::http::grpc_stats::v3::FilterConfig {
    use envoy_types::pb::envoy::extensions::filters::http::grpc_stats::v3::{
        FilterConfig, filter_config::PerMethodStatSpecifier,
    };
    FilterConfig {
        emit_filter_state: true,
        // Not per method: method names come from clients, and each would be a stat.
        per_method_stat_specifier: Some(PerMethodStatSpecifier::StatsForAllMethods(
            envoy_types::pb::google::protobuf::BoolValue { value: false },
        )),
        ..Default::default()
    }
}
const PASSTHROUGH_CHAIN: &str = "PassthroughFilterChain";

/// How istiod's listeners treat their sockets, set on every listener once built:
/// - a listener bound to a port accepts one connection per socket event, so that
///   connections spread over Envoy's workers;
/// - a sidecar's listener filters (but virtualOutbound's, which has no inspector of its
///   own) never time out unless they sniff HTTP (then the mesh's
///   `protocolDetectionTimeout`, set where the inspector is added), and a timeout lets
///   the connection go on: a client that speaks last (MySQL, SMTP) is not cut off after
///   Envoy's 15 s default;
/// - a TLS handshake on a service's listener (or a gateway's) must finish within 15 s
///   (slow-handshake attacks).
fn socket_settings(ctx: &ProxyContext, out: &mut [Listener]) {
    let gateway = ctx.proxy.kind == ProxyKind::Router;
    for l in out {
        let bound = l.bind_to_port.as_ref().is_none_or(|b| b.value);
        if bound && l.address.is_some() {
            l.max_connections_to_accept_per_socket_event = pb::u32v(1);
        }
        if !gateway && l.name != naming::VIRTUAL_OUTBOUND {
            l.continue_on_listener_filters_timeout = true;
            if !l.listener_filters.iter().any(|f| f.name == HTTP_INSPECTOR) {
                l.listener_filters_timeout = pb::secs(0);
            }
        }
        let virtual_listener =
            l.name == naming::VIRTUAL_INBOUND || l.name == naming::VIRTUAL_OUTBOUND;
        if gateway || !virtual_listener {
            // (A sidecar's fallthrough to outside the mesh is built without one.)
            let default = l
                .default_filter_chain
                .iter_mut()
                .filter(|c| gateway || c.name != PASSTHROUGH_CHAIN);
            for c in l.filter_chains.iter_mut().chain(default) {
                c.transport_socket_connect_timeout = pb::secs(15);
            }
        }
    }
}

fn sidecar_listeners(ctx: &ProxyContext) -> Vec<Listener> {
    let mut out = Vec::new();
    let proxy_none = ctx.proxy.interception == Interception::None;
    // Explicit egress listeners (Sidecar egress with a port).
    let mut explicit_ports = BTreeSet::new();
    for e in &ctx.scope.egress {
        let Some(l) = &e.listener else { continue };
        let Some(port) = &l.port else { continue };
        let number = port.number as u16;
        explicit_ports.insert(number);
        let bind_to_port = proxy_none || l.capture_mode == CaptureMode::NONE;
        let address = if !l.bind.is_empty() {
            l.bind.clone()
        } else if bind_to_port {
            "127.0.0.1".to_string()
        } else {
            "0.0.0.0".to_string()
        };
        let protocol = Protocol::parse(&port.protocol);
        let name = naming::listener(&address, number);
        // A TCP egress listener forwards to the single service it imports on that port,
        // as its VirtualService's `tcp` routes say.
        let tcp_targets = e
            .services
            .iter()
            .find(|s| s.port(number).is_some())
            .map(|s| {
                super::tcp::sidecar_tcp_targets(ctx, &e.virtual_services, &s.hostname, number)
                    .unwrap_or_else(|| {
                        vec![(naming::outbound_cluster(number, "", &s.hostname), 100)]
                    })
            })
            .unwrap_or_else(|| unknown_destination(ctx));
        let (chains, sniff) = if is_tls(protocol) {
            let fallback = if e
                .services
                .iter()
                .filter(|s| s.port(number).is_some())
                .count()
                == 1
            {
                tcp_targets.clone()
            } else {
                unknown_destination(ctx)
            };
            (
                sni_chains(
                    ctx,
                    &e.services,
                    &e.virtual_services,
                    number,
                    &name,
                    &fallback,
                ),
                false,
            )
        } else {
            outbound_chains(ctx, protocol, number, &tcp_targets, &name)
        };
        let mut lst = listener(
            name,
            &address,
            number,
            bind_to_port,
            core::TrafficDirection::Outbound,
        );
        if is_tls(protocol) {
            lst.listener_filters.push(tls_inspector());
        }
        lst.filter_chains = chains;
        if sniff {
            lst.listener_filters.push(http_inspector());
            lst.continue_on_listener_filters_timeout = true;
            lst.listener_filters_timeout = pb::secs(0);
        }
        out.push(lst);
    }
    // The catch-all egress scope: listeners per service port.
    if let Some(catch_all) = ctx
        .scope
        .egress
        .iter()
        .find(|e| e.listener.as_ref().is_none_or(|l| l.port.is_none()))
    {
        let bind_to_port = proxy_none
            || catch_all
                .listener
                .as_ref()
                .is_some_and(|l| l.capture_mode == CaptureMode::NONE);
        let plan = plan_outbound(ctx, catch_all, &explicit_ports, bind_to_port);
        for ((address, port), entries) in plan {
            out.push(outbound_listener(
                ctx,
                catch_all,
                &address,
                port,
                bind_to_port && is_wildcard(&address),
                &entries,
            ));
        }
    }
    if ctx.intercepted() {
        out.push(virtual_outbound(ctx));
        out.push(virtual_inbound(ctx));
    }
    out.extend(bound_inbound_listeners(ctx));
    out
}

/// One service port on an outbound listener.
struct PortEntry {
    svc: std::sync::Arc<crate::model::service::Service>,
    protocol: Protocol,
    /// CIDR addresses (ServiceEntry `addresses`): matched by destination prefix on the
    /// shared listener.
    cidrs: Vec<(String, u32)>,
}

fn is_wildcard(address: &str) -> bool {
    address == "0.0.0.0" || address == "127.0.0.1"
}

/// `a.b.c.d/n` (or IPv6) → (address, prefix length); a full-length prefix is a plain
/// address (None).
fn cidr(address: &str) -> Option<(String, u32)> {
    let (ip, len) = address.split_once('/')?;
    let len: u32 = len.parse().ok()?;
    let full = match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(_) => 32,
        std::net::IpAddr::V6(_) => 128,
    };
    (len < full).then(|| (ip.to_string(), len))
}

/// A service address usable as a listener address: an IP, or an IP with a full-length
/// prefix (anything else — a host name, a malformed range — is left out, never sent).
fn plain_address(address: &str) -> Option<String> {
    let ip = address.split('/').next()?;
    ip.parse::<std::net::IpAddr>().ok()?;
    cidr(address).is_none().then(|| ip.to_string())
}

/// Which listener (address, port) each service port of the catch-all egress scope goes
/// on, as istiod places them: a TCP, TLS or undeclared-protocol port of a service with
/// a VIP gets its own `VIP_PORT` listener; a headless service's such port gets one per
/// endpoint address (its pods); HTTP ports, services without an address and CIDR
/// addresses share `0.0.0.0_PORT` (or the bound `127.0.0.1_PORT` without iptables).
fn plan_outbound(
    ctx: &ProxyContext,
    scope: &crate::model::scope::EgressScope,
    explicit_ports: &BTreeSet<u16>,
    bind_to_port: bool,
) -> BTreeMap<(String, u16), Vec<PortEntry>> {
    use crate::model::service::Resolution;
    let wildcard = if bind_to_port { "127.0.0.1" } else { "0.0.0.0" };
    let mut plan: BTreeMap<(String, u16), Vec<PortEntry>> = BTreeMap::new();
    for svc in &scope.services {
        for p in &svc.ports {
            if explicit_ports.contains(&p.port)
                || RESERVED_PORTS.contains(&p.port)
                || p.protocol == Protocol::Udp
            {
                continue;
            }
            let entry = |cidrs: Vec<(String, u32)>| PortEntry {
                svc: svc.clone(),
                protocol: p.protocol,
                cidrs,
            };
            if bind_to_port || p.protocol.is_http() {
                plan.entry((wildcard.to_string(), p.port))
                    .or_default()
                    .push(entry(vec![]));
                continue;
            }
            if svc.kubernetes
                && super::cluster::effective_resolution(ctx, svc) == Resolution::Passthrough
            {
                // Headless: the client dials a pod; each pod address is a listener.
                let addrs: BTreeSet<String> = ctx
                    .snap
                    .endpoints
                    .get(&svc.hostname)
                    .map(|e| {
                        e.instances
                            .iter()
                            .filter(|i| i.ready && i.ports.contains_key(&p.port))
                            .map(|i| i.address.clone())
                            .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
                            .filter(|a| !ctx.proxy.ips.contains(a))
                            .collect()
                    })
                    .unwrap_or_default();
                for a in addrs {
                    plan.entry((a, p.port)).or_default().push(entry(vec![]));
                }
                continue;
            }
            let cidrs: Vec<(String, u32)> = svc.addresses.iter().filter_map(|a| cidr(a)).collect();
            if !cidrs.is_empty() {
                let list = plan.entry((wildcard.to_string(), p.port)).or_default();
                // The same ranges twice would be two chains Envoy cannot tell apart: the
                // first service keeps them, as in istiod.
                if !list.iter().any(|e| e.cidrs == cidrs) {
                    list.push(entry(cidrs));
                }
                continue;
            }
            match svc.addresses.iter().find_map(|a| plain_address(a)) {
                Some(vip) => {
                    plan.entry((vip, p.port)).or_default().push(entry(vec![]));
                }
                None => plan
                    .entry((wildcard.to_string(), p.port))
                    .or_default()
                    .push(entry(vec![])),
            }
        }
    }
    plan
}

/// Where TCP for `svc` on `port` goes: its VirtualService `tcp` routes, else its cluster.
fn service_targets(
    ctx: &ProxyContext,
    scope: &crate::model::scope::EgressScope,
    svc: &crate::model::service::Service,
    port: u16,
) -> super::tcp::Targets {
    super::tcp::sidecar_tcp_targets(ctx, &scope.virtual_services, &svc.hostname, port)
        .unwrap_or_else(|| vec![(naming::outbound_cluster(port, "", &svc.hostname), 100)])
}

/// The HTTP chain of an outbound listener; `sniffed` restricts it to connections the
/// HTTP inspector recognised.
fn outbound_http_chain(ctx: &ProxyContext, stat: &str, rds: String, sniffed: bool) -> FilterChain {
    FilterChain {
        filter_chain_match: sniffed.then(|| FilterChainMatch {
            transport_protocol: "raw_buffer".into(),
            application_protocols: vec!["http/1.1".into(), "h2c".into()],
            ..Default::default()
        }),
        filters: vec![http_connection_manager(
            ctx,
            &format!("outbound_{stat}"),
            Routes::Rds(rds),
            None,
        )],
        ..Default::default()
    }
}

/// One outbound listener from its planned entries.
fn outbound_listener(
    ctx: &ProxyContext,
    scope: &crate::model::scope::EgressScope,
    address: &str,
    port: u16,
    bind: bool,
    entries: &[PortEntry],
) -> Listener {
    let name = naming::listener(address, port);
    let mut lst = listener(
        name.clone(),
        address,
        port,
        bind,
        core::TrafficDirection::Outbound,
    );
    let tls = entries.iter().all(|e| is_tls(e.protocol));
    let shared = is_wildcard(address);
    if tls {
        // TLS tells its destinations apart by SNI.
        let services: Vec<_> = entries
            .iter()
            .filter(|e| e.cidrs.is_empty())
            .map(|e| e.svc.clone())
            .collect();
        let fallback = match (shared, services.first()) {
            (false, Some(svc)) => service_targets(ctx, scope, svc, port),
            _ => unknown_destination(ctx),
        };
        let vss: Vec<_> = if shared {
            scope.virtual_services.clone()
        } else {
            scope
                .virtual_services
                .iter()
                .filter(|vs| {
                    services
                        .iter()
                        .any(|s| vs.hosts.iter().any(|h| *h == s.hostname))
                })
                .cloned()
                .collect()
        };
        let mut chains = cidr_chains(ctx, scope, entries, port, &name);
        let with_cidrs = !chains.is_empty();
        // A service's own address names it: its listener needs no chain per SNI name
        // (as istiod builds it), only the VirtualServices' `tls` routes and the service.
        let by_name = if shared { &services[..] } else { &[] };
        chains.extend(sni_chains(ctx, by_name, &vss, port, &name, &fallback));
        if with_cidrs {
            // Envoy narrows by destination address first: the catch-all must be the
            // default chain to be reached from inside a range with another name.
            lst.default_filter_chain = chains.pop();
        }
        lst.filter_chains = chains;
        lst.listener_filters.push(tls_inspector());
        return lst;
    }
    let has_http = entries.iter().any(|e| e.protocol.is_http());
    let sniffed_entry = entries
        .iter()
        .find(|e| e.protocol == Protocol::Unsupported && e.cidrs.is_empty());
    // Where non-HTTP traffic goes: the first TCP (or undeclared-protocol) service of
    // the port without a CIDR, else out of the mesh only if the mesh allows it.
    // (TLS services are told apart by SNI instead.)
    let tcp_entry = entries
        .iter()
        .find(|e| !e.protocol.is_http() && !is_tls(e.protocol) && e.cidrs.is_empty());
    let tcp_targets = match tcp_entry {
        Some(e) => service_targets(ctx, scope, &e.svc, port),
        None => unknown_destination(ctx),
    };
    let mut chains = cidr_chains(ctx, scope, entries, port, &name);
    // TLS services sharing the port with others: chains by SNI for their names.
    let tls_services: Vec<_> = entries
        .iter()
        .filter(|e| is_tls(e.protocol) && e.cidrs.is_empty())
        .map(|e| e.svc.clone())
        .collect();
    if !tls_services.is_empty() {
        let mut sni = sni_chains(
            ctx,
            &tls_services,
            &scope.virtual_services,
            port,
            &name,
            &tcp_targets,
        );
        sni.pop(); // its catch-all: the default chain below serves that
        chains.extend(sni);
    }
    if chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.server_names.is_empty())
    }) {
        lst.listener_filters.push(tls_inspector());
    }
    if !shared {
        // A service's own listener: sniffed (HTTP rules for HTTP, the rest as TCP), or
        // TCP only.
        if let Some(e) = sniffed_entry {
            chains.push(outbound_http_chain(
                ctx,
                &name,
                format!("{}:{port}", e.svc.hostname),
                true,
            ));
        }
    } else if has_http || sniffed_entry.is_some() {
        // Without iptables an HTTP-only port needs no sniffing: it is HTTP.
        let only_http = bind && tcp_entry.is_none() && chains.is_empty();
        chains.push(outbound_http_chain(
            ctx,
            &name,
            port.to_string(),
            !only_http,
        ));
        if only_http {
            lst.filter_chains = chains;
            return lst;
        }
    }
    let sniff = chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.application_protocols.is_empty())
    });
    let tcp = FilterChain {
        filters: vec![tcp_to(ctx, &name, &tcp_targets)],
        ..Default::default()
    };
    if chains.is_empty() {
        lst.filter_chains = vec![tcp];
    } else {
        // Envoy narrows chains criterion by criterion and never backs up: a catch-all
        // among chains that match on transport, ALPN or prefix would not be reached
        // by what they miss. The default chain takes everything that matched nothing.
        lst.filter_chains = chains;
        // On a port's shared listener that is the way out of the mesh (istiod's
        // "PassthroughFilterChain"); on a service's own, the service's TCP chain.
        let name = if shared {
            PASSTHROUGH_CHAIN.to_string()
        } else {
            String::new()
        };
        lst.default_filter_chain = Some(FilterChain { name, ..tcp });
    }
    if sniff {
        lst.listener_filters.push(http_inspector());
        lst.continue_on_listener_filters_timeout = true;
        lst.listener_filters_timeout = pb::secs(0);
    }
    lst
}

/// Chains for services with CIDR addresses on a shared port, matched by destination
/// prefix (and by SNI on TLS ports).
fn cidr_chains(
    ctx: &ProxyContext,
    scope: &crate::model::scope::EgressScope,
    entries: &[PortEntry],
    port: u16,
    stat: &str,
) -> Vec<FilterChain> {
    // A range an earlier entry already claims (equal once the host bits are masked) is
    // left out: Envoy refuses two chains with the same match, and istiod keeps the first.
    let mut seen: BTreeSet<(std::net::IpAddr, u32, String)> = BTreeSet::new();
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| !e.cidrs.is_empty()) {
        let sni = if is_tls(e.protocol) {
            vec![e.svc.hostname.clone()]
        } else {
            vec![]
        };
        let ranges: Vec<core::CidrRange> = e
            .cidrs
            .iter()
            .filter(|(a, len)| match masked(a, *len) {
                Some(net) => seen.insert((net, *len, sni.join(","))),
                None => true,
            })
            .map(|(a, len)| core::CidrRange {
                address_prefix: a.clone(),
                prefix_len: pb::u32v(*len),
            })
            .collect();
        if ranges.is_empty() {
            continue;
        }
        out.push(FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                prefix_ranges: ranges,
                server_names: sni,
                ..Default::default()
            }),
            filters: vec![tcp_to(
                ctx,
                stat,
                &service_targets(ctx, scope, &e.svc, port),
            )],
            ..Default::default()
        });
    }
    out
}

/// The network address of `address/len` (host bits cleared).
fn masked(address: &str, len: u32) -> Option<std::net::IpAddr> {
    use std::net::IpAddr;
    Some(match address.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    })
}

fn virtual_outbound(ctx: &ProxyContext) -> Listener {
    let egress = route::egress_proxy_cluster(ctx);
    let fallback = match (ctx.scope.outbound_policy, &egress) {
        // egressProxy is set under ALLOW_ANY only (`route::egress_proxy_cluster`).
        (_, Some(c)) => c.as_str(),
        (OutboundTrafficMode::ALLOW_ANY | OutboundTrafficMode::ALLOW_ANY_DYNAMIC_DNS, None) => {
            naming::PASSTHROUGH
        }
        (OutboundTrafficMode::REGISTRY_ONLY, None) => naming::BLACKHOLE,
    };

    let mut l = listener(
        naming::VIRTUAL_OUTBOUND.into(),
        "0.0.0.0",
        naming::VIRTUAL_OUTBOUND_PORT as u16,
        true,
        core::TrafficDirection::Outbound,
    );
    // Connections to 15001 itself would loop: blackhole them.
    l.filter_chains = vec![
        FilterChain {
            name: "virtualOutbound-blackhole".into(),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: pb::u32v(naming::VIRTUAL_OUTBOUND_PORT),
                ..Default::default()
            }),
            filters: vec![tcp_proxy(ctx, naming::BLACKHOLE)],
            ..Default::default()
        },
        FilterChain {
            name: "virtualOutbound-catchall-tcp".into(),
            filters: vec![tcp_proxy(ctx, fallback)],
            ..Default::default()
        },
    ];
    if super::dfp::enabled(ctx) {
        // Plaintext HTTP to an address no listener claims: by its Host header, through
        // the dynamic forward proxy (the HTTP inspector tells HTTP from the rest).
        l.filter_chains
            .insert(1, super::dfp::virtual_outbound_chain(ctx));
        l.listener_filters.push(http_inspector());
    }
    // Hand connections to the listener for their original destination port.
    l.use_original_dst = pb::boolv(true);
    l
}

/// Inbound ports: those of the workload's Sidecar ingress listeners when it has any
/// (they replace the services' ports, as in istiod), else (target port, protocol) of the
/// services this workload serves.
fn inbound_ports(ctx: &ProxyContext) -> Vec<(u16, Protocol)> {
    let ingress: Vec<(u16, Protocol)> = ctx
        .scope
        .sidecar
        .iter()
        .flat_map(|sc| sc.spec.ingress.iter())
        .filter_map(|i| {
            u16::try_from(i.port.number)
                .ok()
                .map(|p| (p, Protocol::parse(&i.port.protocol)))
        })
        .collect();
    let mut ports: Vec<(u16, Protocol)> = if ingress.is_empty() {
        ctx.targets
            .iter()
            .map(|t| (t.target_port, t.port.protocol))
            .collect()
    } else {
        ingress
    };
    ports.sort();
    ports.dedup_by_key(|p| p.0);
    ports
}

fn inbound_chain(ctx: &ProxyContext, port: u16, protocol: Protocol) -> Vec<Filter> {
    let cluster = naming::inbound_cluster(port);
    if protocol.is_http() || protocol == Protocol::Unsupported {
        vec![http_connection_manager(
            ctx,
            &format!("inbound_0.0.0.0_{port}"),
            Routes::Inline(Box::new(route::inbound_route_config(
                ctx,
                &cluster,
                port,
                matches!(protocol, Protocol::Grpc | Protocol::GrpcWeb),
            ))),
            Some(port),
        )]
    } else {
        tcp_filters(ctx, &cluster, Some(port))
    }
}

/// Envoy JSON (as the authorization builder writes it) → a protobuf message.
fn decode_json<T: prost::Message + Default>(type_name: &str, v: &serde_json::Value) -> Option<T> {
    match pb::json_to_bytes(type_name, v)
        .and_then(|b| T::decode(b.as_slice()).map_err(|e| e.to_string()))
    {
        Ok(m) => Some(m),
        Err(e) => {
            // The builder's output is checked against istiod's goldens; this is a bug.
            tracing::error!(error = %e, "generated authorization filter does not parse");
            None
        }
    }
}

/// jwt_authn (RequestAuthentication) and the RBAC / ext_authz filters of the
/// workload's AuthorizationPolicies.
fn inbound_security_filters(ctx: &ProxyContext) -> Vec<HttpFilter> {
    let mut out: Vec<HttpFilter> = Vec::new();
    if let Some(jwt) = super::jwt::filter(ctx) {
        out.extend(decode_json::<HttpFilter>(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
            &jwt,
        ));
    }
    out.extend(
        super::authz::for_workload(ctx, false)
            .iter()
            .filter_map(|v| {
                decode_json::<HttpFilter>(
                    "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
                    v,
                )
            }),
    );
    out
}

/// The TLS inspector reads at most 512 bytes of a ClientHello before giving up on SNI and
/// ALPN (Envoy's default buffer is 64 KiB per connection), as istiod configures it.
pub(crate) fn tls_inspector() -> ListenerFilter {
    listener_filter(
        "envoy.filters.listener.tls_inspector",
        &envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector {
            initial_read_buffer_size: pb::u32v(512),
            ..Default::default()
        },
    )
}

/// Inbound filter chains for `port` under the workload's PeerAuthentication: STRICT
/// accepts only mTLS, PERMISSIVE mTLS and plaintext (told apart by the TLS inspector),
/// DISABLE only plaintext. Returns the chains and whether they need the TLS inspector.
/// `bind` names the chains as istiod does (`0.0.0.0_9080` on virtualInbound, the bound
/// address otherwise), which EnvoyFilter matches and istioctl show.
fn inbound_chains(
    ctx: &ProxyContext,
    bind: &str,
    port: u16,
    protocol: Protocol,
    base: FilterChainMatch,
) -> (Vec<FilterChain>, bool) {
    use crate::model::istio::MtlsMode;
    let mode = ctx.snap.mtls_mode(&ctx.proxy.namespace, &ctx.labels, port);
    let name = naming::listener(bind, port);
    // Sidecar ingress `tls`: the port terminates TLS with the given certificate for
    // clients outside the mesh, instead of mesh mTLS.
    let ingress_tls = ctx.scope.sidecar.as_ref().and_then(|sc| {
        sc.spec
            .ingress
            .iter()
            .find(|i| i.port.number == u32::from(port))
            .and_then(|i| i.tls.as_ref())
    });
    // Declared HTTPS/TLS with its own TLS settings is HTTP/TCP once terminated, whoever
    // terminates it.
    let protocol = match (ingress_tls.is_some(), protocol) {
        (true, Protocol::Https) => Protocol::Http,
        (true, Protocol::Tls) => Protocol::Tcp,
        (_, p) => p,
    };
    let mode = match mode {
        // PERMISSIVE needs the workload certificate to offer mTLS at all.
        MtlsMode::PERMISSIVE if !ctx.proxy.mtls_ready => MtlsMode::DISABLE,
        m => m,
    };
    // The user's TLS applies only where mesh mTLS is off on the port (istiod: the two
    // would conflict); otherwise the port takes mesh mTLS as any other.
    if let Some(t) = ingress_tls.filter(|_| mode == MtlsMode::DISABLE) {
        let alpn: &[&str] = if protocol.is_http() || protocol == Protocol::Unsupported {
            &["h2", "http/1.1"]
        } else {
            &[]
        };
        let chain = FilterChain {
            name: name.clone(),
            filter_chain_match: Some(FilterChainMatch {
                transport_protocol: "tls".into(),
                ..base.clone()
            }),
            transport_socket: super::tls::gateway_server(ctx, t, alpn, false),
            filters: inbound_chain(ctx, port, protocol),
            ..Default::default()
        };
        return (vec![chain], true);
    }
    let class = if protocol == Protocol::Unsupported {
        PortClass::Sniffed
    } else if protocol.is_http() {
        PortClass::Http
    } else {
        PortClass::Tcp
    };
    let options = chain_options(mode, class);
    let chains = options
        .iter()
        .map(|o| FilterChain {
            name: name.clone(),
            filter_chain_match: Some(FilterChainMatch {
                transport_protocol: o.transport.into(),
                application_protocols: o.alpn.iter().map(|a| a.to_string()).collect(),
                ..base.clone()
            }),
            transport_socket: o.terminate.then(|| super::tls::downstream_mtls(ctx)),
            filters: inbound_chain(
                ctx,
                port,
                match (o.http, class) {
                    (true, PortClass::Sniffed) => Protocol::Http,
                    (true, _) => protocol,
                    (false, _) => Protocol::Tcp,
                },
            ),
            ..Default::default()
        })
        .collect();
    (chains, options.iter().any(|o| o.transport == "tls"))
}

/// How an inbound port is handled: by its declared protocol, or sniffed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PortClass {
    Http,
    Sniffed,
    Tcp,
}

/// One inbound filter chain of a port: what it matches and how it handles it.
struct ChainOption {
    transport: &'static str,
    alpn: &'static [&'static str],
    /// HTTP connection manager (else TCP proxy).
    http: bool,
    /// Terminates mesh mTLS.
    terminate: bool,
}

const MTLS_HTTP_ALPN: &[&str] = &["istio-http/1.0", "istio-http/1.1", "istio-h2"];
const ALL_MTLS_ALPN: &[&str] = &[
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
const MTLS_TCP_ALPN: &[&str] = &["istio-peer-exchange", "istio"];
const PLAIN_HTTP_ALPN: &[&str] = &["http/1.1", "h2c"];

/// istiod's inbound chains per mTLS mode and port class. Mesh clients announce mTLS
/// with `istio*` ALPNs, so PERMISSIVE terminates only those: other TLS is the
/// application's own and passes through untouched on TCP ports (on HTTP ports it
/// matches nothing). STRICT terminates every TLS connection (and so refuses what is not
/// mesh mTLS); on sniffed ports the ALPN tells HTTP from TCP after termination.
fn chain_options(mode: crate::model::istio::MtlsMode, class: PortClass) -> Vec<ChainOption> {
    use crate::model::istio::MtlsMode;
    let o = |transport, alpn, http, terminate| ChainOption {
        transport,
        alpn,
        http,
        terminate,
    };
    match (mode, class) {
        (MtlsMode::STRICT, PortClass::Http) => vec![o("tls", &[], true, true)],
        (MtlsMode::STRICT, PortClass::Tcp) => vec![o("tls", &[], false, true)],
        (MtlsMode::STRICT, PortClass::Sniffed) => vec![
            o("tls", MTLS_HTTP_ALPN, true, true),
            o("tls", &[], false, true),
        ],
        (MtlsMode::PERMISSIVE, PortClass::Http) => vec![
            o("tls", ALL_MTLS_ALPN, true, true),
            o("raw_buffer", &[], true, false),
        ],
        (MtlsMode::PERMISSIVE, PortClass::Tcp) => vec![
            o("tls", ALL_MTLS_ALPN, false, true),
            o("tls", &[], false, false),
            o("raw_buffer", &[], false, false),
        ],
        (MtlsMode::PERMISSIVE, PortClass::Sniffed) => vec![
            o("tls", MTLS_HTTP_ALPN, true, true),
            o("raw_buffer", PLAIN_HTTP_ALPN, true, false),
            o("tls", MTLS_TCP_ALPN, false, true),
            o("raw_buffer", &[], false, false),
            o("tls", &[], false, false),
        ],
        // DISABLE: plaintext only. The transport is left open: TLS the application
        // terminates itself reaches it on TCP ports (and fails as HTTP on HTTP ports).
        (_, PortClass::Http) => vec![o("", &[], true, false)],
        (_, PortClass::Tcp) => vec![o("", &[], false, false)],
        (_, PortClass::Sniffed) => vec![
            o("", PLAIN_HTTP_ALPN, true, false),
            o("", &[], false, false),
        ],
    }
}

fn virtual_inbound(ctx: &ProxyContext) -> Listener {
    let mut l = listener(
        naming::VIRTUAL_INBOUND.into(),
        "0.0.0.0",
        naming::VIRTUAL_INBOUND_PORT as u16,
        true,
        core::TrafficDirection::Inbound,
    );
    l.listener_filters.push(listener_filter(
        "envoy.filters.listener.original_dst",
        &original_dst::OriginalDst::default(),
    ));
    let bound: BTreeSet<u16> = bound_ingress_ports(ctx);
    let mut inspect = false;
    for (port, protocol) in inbound_ports(ctx) {
        if bound.contains(&port) {
            continue;
        }
        let base = FilterChainMatch {
            destination_port: pb::u32v(u32::from(port)),
            ..Default::default()
        };
        let bind = ingress_chain_bind(ctx, port);
        let (chains, tls) = inbound_chains(ctx, &bind, port, protocol, base);
        inspect |= tls;
        l.filter_chains.extend(chains);
    }
    // Connections to 15006 itself would loop: blackhole them.
    l.filter_chains.insert(
        0,
        FilterChain {
            name: "virtualInbound-blackhole".into(),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: pb::u32v(naming::VIRTUAL_INBOUND_PORT),
                ..Default::default()
            }),
            filters: vec![tcp_proxy(ctx, naming::BLACKHOLE)],
            ..Default::default()
        },
    );
    let (passthrough, tls) = passthrough_chains(ctx);
    inspect |= tls;
    l.filter_chains.extend(passthrough);
    if inspect {
        l.listener_filters.push(tls_inspector());
    }
    let sniffed: Vec<u16> = inbound_ports(ctx)
        .into_iter()
        .filter(|(p, proto)| *proto == Protocol::Unsupported && !bound.contains(p))
        .map(|(p, _)| p)
        .collect();
    if !sniffed.is_empty() {
        // The HTTP inspector waits for the client's first bytes: only on the ports that
        // need it, so protocols where the server speaks first keep working elsewhere.
        let mut f = http_inspector();
        f.filter_disabled = Some(not_these_ports(&sniffed));
        l.listener_filters.push(f);
        l.continue_on_listener_filters_timeout = true;
        l.listener_filters_timeout = pb::secs(0);
    }
    l
}

/// The address a Sidecar ingress port's chain is named after, as istiod names it: its
/// `bind`, else the workload's own (unicast) address; `0.0.0.0` for service ports.
fn ingress_chain_bind(ctx: &ProxyContext, port: u16) -> String {
    let ingress = ctx
        .scope
        .sidecar
        .iter()
        .flat_map(|sc| sc.spec.ingress.iter())
        .find(|i| i.port.number == u32::from(port));
    let Some(ing) = ingress else {
        return "0.0.0.0".into();
    };
    if !ing.bind.is_empty() {
        return ing.bind.clone();
    }
    match ctx.proxy.ip().parse::<std::net::IpAddr>() {
        Ok(ip) if !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast() => ip.to_string(),
        _ => "0.0.0.0".into(),
    }
}

/// A listener filter predicate that holds for every destination port but `ports`.
fn not_these_ports(ports: &[u16]) -> ls::ListenerFilterChainMatchPredicate {
    use ls::listener_filter_chain_match_predicate::{MatchSet, Rule};
    let one = |p: u16| ls::ListenerFilterChainMatchPredicate {
        rule: Some(Rule::DestinationPortRange(
            envoy_types::pb::envoy::r#type::v3::Int32Range {
                start: i32::from(p),
                end: i32::from(p) + 1,
            },
        )),
    };
    let any = match ports {
        [p] => one(*p),
        _ => ls::ListenerFilterChainMatchPredicate {
            rule: Some(Rule::OrMatch(MatchSet {
                rules: ports.iter().map(|p| one(*p)).collect(),
            })),
        },
    };
    ls::ListenerFilterChainMatchPredicate {
        rule: Some(Rule::NotMatch(Box::new(any))),
    }
}

/// Chains for ports no service declares: the application gets the connection as it
/// came, but under the workload's PeerAuthentication and AuthorizationPolicies like any
/// declared port — STRICT accepts only mTLS (plaintext matches no chain and is closed),
/// PERMISSIVE both, DISABLE plaintext; the workload's policies apply to every chain.
/// Returns the chains and whether they need the TLS inspector.
fn passthrough_chains(ctx: &ProxyContext) -> (Vec<FilterChain>, bool) {
    use crate::model::istio::MtlsMode;
    let filters = || tcp_filters(ctx, naming::INBOUND_PASSTHROUGH, None);
    let chain = |transport: &str, mtls: bool| FilterChain {
        name: "virtualInbound".into(),
        filter_chain_match: (!transport.is_empty()).then(|| FilterChainMatch {
            transport_protocol: transport.into(),
            ..Default::default()
        }),
        transport_socket: mtls.then(|| super::tls::downstream_mtls(ctx)),
        filters: filters(),
        ..Default::default()
    };
    // Mesh clients reach undeclared ports through their PassthroughCluster, in
    // plaintext: TLS arriving here is the application's own, so only STRICT terminates
    // (and so refuses whatever is not mesh mTLS).
    let for_mode = |mode: MtlsMode, port: Option<u16>| -> Vec<FilterChain> {
        let mut c = match mode {
            MtlsMode::STRICT => chain("tls", true),
            _ => chain("", false),
        };
        if let Some(p) = port {
            let m = c.filter_chain_match.get_or_insert_with(Default::default);
            m.destination_port = pb::u32v(u32::from(p));
        }
        vec![c]
    };
    let workload = ctx.snap.mtls_mode(&ctx.proxy.namespace, &ctx.labels, 0);
    let mut chains = Vec::new();
    let mut tls = workload == MtlsMode::STRICT;
    // `portLevelMtls` for ports no Service declares: chains of their own.
    let declared: BTreeSet<u16> = inbound_ports(ctx).into_iter().map(|(p, _)| p).collect();
    for port in ctx
        .snap
        .port_level_mtls_ports(&ctx.proxy.namespace, &ctx.labels)
    {
        if declared.contains(&port) {
            continue;
        }
        let mode = ctx.snap.mtls_mode(&ctx.proxy.namespace, &ctx.labels, port);
        tls |= mode == MtlsMode::STRICT;
        chains.extend(for_mode(mode, Some(port)));
    }
    chains.extend(for_mode(workload, None));
    (chains, tls)
}

/// The network filters of a TCP chain to `cluster` on the inbound side (workload port
/// `port`): the workload's authorization (RBAC, external authorization), its connection
/// rate limit, then the TCP proxy.
fn tcp_filters(ctx: &ProxyContext, cluster: &str, port: Option<u16>) -> Vec<Filter> {
    let mut filters: Vec<Filter> = super::authz::for_workload(ctx, true)
        .iter()
        .filter_map(|v| decode_json::<Filter>("envoy.config.listener.v3.Filter", v))
        .collect();
    if !ctx.snap.rate_limits.all.is_empty() {
        let at = workload_attachment(ctx, port.unwrap_or(0));
        filters.extend(super::ratelimit::tcp_filter(ctx, &at));
    }
    filters.push(tcp_proxy(ctx, cluster));
    filters
}

/// Where an inbound connection manager or chain for workload port `port` sits, for
/// rate limit policies: the workload and the Services it serves on that port.
fn workload_attachment<'a>(ctx: &'a ProxyContext, port: u16) -> RateLimitAttach<'a> {
    RateLimitAttach {
        namespace: &ctx.proxy.namespace,
        labels: &ctx.labels,
        services: ctx
            .targets
            .iter()
            .filter(|t| t.target_port == port)
            .map(|t| t.service.hostname.as_str())
            .collect(),
        gateways: Vec::new(),
    }
}

fn bound_ingress_ports(ctx: &ProxyContext) -> BTreeSet<u16> {
    let proxy_none = ctx.proxy.interception == Interception::None;
    ctx.scope
        .sidecar
        .iter()
        .flat_map(|s| s.spec.ingress.iter())
        .filter(|i| proxy_none || i.capture_mode == CaptureMode::NONE)
        .map(|i| i.port.number as u16)
        .collect()
}

/// Sidecar ingress listeners that bind for real (no iptables): `IP_PORT`.
fn bound_inbound_listeners(ctx: &ProxyContext) -> Vec<Listener> {
    let proxy_none = ctx.proxy.interception == Interception::None;
    let Some(sc) = &ctx.scope.sidecar else {
        return vec![];
    };
    let mut out = Vec::new();
    for ing in &sc.spec.ingress {
        if !(proxy_none || ing.capture_mode == CaptureMode::NONE) {
            continue;
        }
        let port = ing.port.number as u16;
        let address = if ing.bind.is_empty() {
            ctx.proxy.ip().to_string()
        } else {
            ing.bind.clone()
        };
        let mut l = listener(
            naming::listener(&address, port),
            &address,
            port,
            true,
            core::TrafficDirection::Inbound,
        );
        let protocol = Protocol::parse(&ing.port.protocol);
        let (chains, tls) =
            inbound_chains(ctx, &address, port, protocol, FilterChainMatch::default());
        l.filter_chains = chains;
        if tls {
            l.listener_filters.push(tls_inspector());
        }
        if protocol == Protocol::Unsupported {
            l.listener_filters.push(http_inspector());
            l.continue_on_listener_filters_timeout = true;
            l.listener_filters_timeout = pb::secs(0);
        }
        out.push(l);
    }
    out
}

/// Names of the RDS route configurations the listeners refer to.
pub fn route_names(listeners: &[Listener]) -> Vec<String> {
    use prost::Message;
    let mut names = BTreeSet::new();
    for l in listeners {
        for fc in &l.filter_chains {
            for f in &fc.filters {
                let Some(ls::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                    continue;
                };
                if f.name != HCM {
                    continue;
                }
                if let Ok(m) = HttpConnectionManager::decode(any.value.as_slice())
                    && let Some(RouteSpecifier::Rds(rds)) = m.route_specifier
                {
                    names.insert(rds.route_config_name);
                }
            }
        }
    }
    names.into_iter().collect()
}
