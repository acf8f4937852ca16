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
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;

use super::context::ProxyContext;
use super::naming;
use super::pb;
use super::route;
use crate::model::istio::{CaptureMode, OutboundTrafficMode};
use crate::model::proxy::{Interception, ProxyKind};
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

/// An HTTP connection manager as istiod configures it for sidecars and gateways.
pub fn http_connection_manager(
    ctx: &ProxyContext,
    stat_prefix: &str,
    routes: Routes,
    inbound: bool,
) -> Filter {
    let gateway = ctx.proxy.kind == ProxyKind::Router;
    let m = HttpConnectionManager {
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(match routes {
            Routes::Rds(name) => RouteSpecifier::Rds(hcm::Rds {
                config_source: Some(pb::ads_config_source()),
                route_config_name: name,
            }),
            Routes::Inline(rc) => RouteSpecifier::RouteConfig(*rc),
        }),
        // CORS answers preflights before faults are injected; the router is last.
        http_filters: {
            // Authentication and authorization decide before anything else runs: on a
            // workload's inbound side, and at a gateway (the mesh's edge) for the
            // policies that select the gateway's workload.
            let mut f = if inbound || gateway {
                inbound_security_filters(ctx)
            } else {
                Vec::new()
            };
            f.extend([
                http_filter(route::CORS_FILTER, &cors::Cors::default()),
                http_filter(route::FAULT_FILTER, &fault::HttpFault::default()),
                http_filter("envoy.filters.http.router", &router::Router::default()),
            ]);
            f
        },
        access_log: access_logs(ctx, inbound),
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
        forward_client_cert_details: if inbound {
            hcm::http_connection_manager::ForwardClientCertDetails::AppendForward as i32
        } else {
            hcm::http_connection_manager::ForwardClientCertDetails::Sanitize as i32
        },
        set_current_client_cert_details: inbound.then(|| {
            hcm::http_connection_manager::SetCurrentClientCertDetails {
                subject: pb::boolv(true),
                dns: true,
                uri: true,
                ..Default::default()
            }
        }),
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
        access_log: access_logs(
            ctx,
            cluster.starts_with("inbound|") || cluster == naming::INBOUND_PASSTHROUGH,
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

/// Where a TLS connection for no known name goes: out of the mesh only if it may.
fn unknown_destination(ctx: &ProxyContext) -> super::tcp::Targets {
    let c = match ctx.scope.outbound_policy {
        OutboundTrafficMode::ALLOW_ANY => naming::PASSTHROUGH,
        OutboundTrafficMode::REGISTRY_ONLY => naming::BLACKHOLE,
    };
    vec![(c.to_string(), 100)]
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
    listener_filter(
        "envoy.filters.listener.http_inspector",
        &http_inspector::HttpInspector::default(),
    )
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
            false,
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
    super::envoyfilter::listeners(ctx, &mut out);
    out
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
            .unwrap_or_else(|| vec![(naming::PASSTHROUGH.to_string(), 100)]);
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
        let wildcard = if bind_to_port { "127.0.0.1" } else { "0.0.0.0" };
        // port → protocol of the shared listener; TCP services with a VIP get their own.
        let mut shared: BTreeMap<u16, Protocol> = BTreeMap::new();
        // name → (VIP, port, targets, the service when its port speaks TLS).
        type VipListener = (
            String,
            u16,
            super::tcp::Targets,
            Option<std::sync::Arc<crate::model::service::Service>>,
        );
        let mut vip_listeners: BTreeMap<String, VipListener> = BTreeMap::new();
        for svc in &catch_all.services {
            for p in &svc.ports {
                if explicit_ports.contains(&p.port)
                    || RESERVED_PORTS.contains(&p.port)
                    || p.protocol == Protocol::Udp
                {
                    continue;
                }
                let cluster = naming::outbound_cluster(p.port, "", &svc.hostname);
                if p.protocol.is_http() {
                    shared.insert(p.port, Protocol::Http);
                } else if let Some(vip) = svc.addresses.first().filter(|_| !bind_to_port) {
                    let name = naming::listener(vip, p.port);
                    let targets = super::tcp::sidecar_tcp_targets(
                        ctx,
                        &catch_all.virtual_services,
                        &svc.hostname,
                        p.port,
                    )
                    .unwrap_or_else(|| vec![(cluster, 100)]);
                    let tls = is_tls(p.protocol).then(|| svc.clone());
                    vip_listeners.insert(name, (vip.clone(), p.port, targets, tls));
                } else {
                    shared.entry(p.port).or_insert(p.protocol);
                }
            }
        }
        for (port, protocol) in shared {
            let name = naming::listener(wildcard, port);
            // A shared TCP port has no single destination: pass through. A TLS port
            // tells its destinations apart by SNI.
            let (chains, sniff) = if is_tls(protocol) {
                let on_port: Vec<_> = catch_all
                    .services
                    .iter()
                    .filter(|s| {
                        s.port(port).is_some_and(|p| is_tls(p.protocol))
                            && (bind_to_port || s.addresses.is_empty())
                    })
                    .cloned()
                    .collect();
                (
                    sni_chains(
                        ctx,
                        &on_port,
                        &catch_all.virtual_services,
                        port,
                        &name,
                        &unknown_destination(ctx),
                    ),
                    false,
                )
            } else {
                outbound_chains(
                    ctx,
                    protocol,
                    port,
                    &vec![(naming::PASSTHROUGH.to_string(), 100)],
                    &name,
                )
            };
            let mut lst = listener(
                name,
                wildcard,
                port,
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
        for (name, (vip, port, targets, tls)) in vip_listeners {
            let mut lst = listener(
                name.clone(),
                &vip,
                port,
                false,
                core::TrafficDirection::Outbound,
            );
            match tls {
                // A TLS service's own listener still honours `tls` routes by SNI; what
                // no route names goes to the service.
                Some(svc) => {
                    let own: Vec<_> = catch_all
                        .virtual_services
                        .iter()
                        .filter(|vs| vs.hosts.iter().any(|h| *h == svc.hostname))
                        .cloned()
                        .collect();
                    lst.filter_chains =
                        sni_chains(ctx, std::slice::from_ref(&svc), &own, port, &name, &targets);
                    lst.listener_filters.push(tls_inspector());
                }
                None => {
                    lst.filter_chains = vec![FilterChain {
                        filters: vec![tcp_to(ctx, &name, &targets)],
                        ..Default::default()
                    }];
                }
            }
            out.push(lst);
        }
    }
    if ctx.intercepted() {
        out.push(virtual_outbound(ctx));
        out.push(virtual_inbound(ctx));
    }
    out.extend(bound_inbound_listeners(ctx));
    out
}

fn virtual_outbound(ctx: &ProxyContext) -> Listener {
    let egress = route::egress_proxy_cluster(ctx);
    let fallback = match (ctx.scope.outbound_policy, &egress) {
        (OutboundTrafficMode::ALLOW_ANY, Some(c)) => c.as_str(),
        (OutboundTrafficMode::ALLOW_ANY, None) => naming::PASSTHROUGH,
        (OutboundTrafficMode::REGISTRY_ONLY, _) => naming::BLACKHOLE,
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
    // Hand connections to the listener for their original destination port.
    l.use_original_dst = pb::boolv(true);
    l
}

/// Inbound ports: (target port, protocol) of the services this workload serves.
fn inbound_ports(ctx: &ProxyContext) -> Vec<(u16, Protocol)> {
    let mut ports: Vec<(u16, Protocol)> = ctx
        .targets
        .iter()
        .map(|t| (t.target_port, t.port.protocol))
        .collect();
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
                protocol == Protocol::Grpc,
            ))),
            true,
        )]
    } else {
        let mut filters: Vec<Filter> = super::authz::for_workload(ctx, true)
            .iter()
            .filter_map(|v| decode_json::<Filter>("envoy.config.listener.v3.Filter", v))
            .collect();
        filters.push(tcp_proxy(ctx, &cluster));
        filters
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

pub(crate) fn tls_inspector() -> ListenerFilter {
    listener_filter(
        "envoy.filters.listener.tls_inspector",
        &envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector::default(),
    )
}

/// Inbound filter chains for `port` under the workload's PeerAuthentication: STRICT
/// accepts only mTLS, PERMISSIVE mTLS and plaintext (told apart by the TLS inspector),
/// DISABLE only plaintext. Returns the chains and whether they need the TLS inspector.
fn inbound_chains(
    ctx: &ProxyContext,
    port: u16,
    protocol: Protocol,
    base: FilterChainMatch,
) -> (Vec<FilterChain>, bool) {
    use crate::model::istio::MtlsMode;
    let mode = ctx.snap.mtls_mode(&ctx.proxy.namespace, &ctx.labels, port);
    let name = naming::inbound_cluster(port);
    let tls = || FilterChain {
        name: format!("{name}-mtls"),
        filter_chain_match: Some(FilterChainMatch {
            transport_protocol: "tls".into(),
            ..base.clone()
        }),
        transport_socket: Some(super::tls::downstream_mtls(ctx)),
        filters: inbound_chain(ctx, port, protocol),
        ..Default::default()
    };
    let plain = |transport: &str| FilterChain {
        name: format!("{name}-plaintext"),
        filter_chain_match: Some(FilterChainMatch {
            transport_protocol: transport.into(),
            ..base.clone()
        }),
        filters: inbound_chain(ctx, port, protocol),
        ..Default::default()
    };
    // Sidecar ingress `tls`: the port terminates TLS with the given certificate for
    // clients outside the mesh, instead of mesh mTLS.
    let ingress_tls = ctx.scope.sidecar.as_ref().and_then(|sc| {
        sc.spec
            .ingress
            .iter()
            .find(|i| i.port.number == u32::from(port))
            .and_then(|i| i.tls.as_ref())
    });
    if let Some(t) = ingress_tls {
        let alpn: &[&str] = if protocol.is_http() || protocol == Protocol::Unsupported {
            &["h2", "http/1.1"]
        } else {
            &[]
        };
        let chain = FilterChain {
            name: format!("{name}-tls"),
            filter_chain_match: Some(FilterChainMatch {
                transport_protocol: "tls".into(),
                ..base.clone()
            }),
            transport_socket: super::tls::gateway_server(ctx, t, alpn),
            filters: inbound_chain(ctx, port, protocol),
            ..Default::default()
        };
        return (vec![chain], true);
    }
    match mode {
        // Without its certificate a STRICT workload accepts nothing: it fails closed.
        MtlsMode::STRICT => (vec![tls()], true),
        MtlsMode::PERMISSIVE if ctx.proxy.mtls_ready => (vec![tls(), plain("raw_buffer")], true),
        _ => (vec![plain("")], false),
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
        let (chains, tls) = inbound_chains(ctx, port, protocol, base);
        inspect |= tls;
        l.filter_chains.extend(chains);
    }
    if inspect {
        l.listener_filters.push(tls_inspector());
    }
    // Ports no service declares pass straight through to the application.
    l.filter_chains.push(FilterChain {
        name: "virtualInbound-catchall-tcp".into(),
        filters: vec![tcp_proxy(ctx, naming::INBOUND_PASSTHROUGH)],
        ..Default::default()
    });
    l
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
        let (chains, tls) = inbound_chains(
            ctx,
            port,
            Protocol::parse(&ing.port.protocol),
            FilterChainMatch::default(),
        );
        l.filter_chains = chains;
        if tls {
            l.listener_filters.push(tls_inspector());
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
