//! Gateways (router proxies): one listener per port the Gateway servers bind, with
//! - plain HTTP servers sharing one chain and the route configuration `http.PORT`
//!   (`httpsRedirect` turning their virtual hosts into redirects to HTTPS);
//! - HTTPS servers terminating TLS, a chain each chosen by SNI, with their own route
//!   configuration `https.PORT.PORTNAME.GATEWAY.NAMESPACE` (istiod's names);
//! - TLS servers in PASSTHROUGH mode: a chain per `tls` route of the bound
//!   VirtualServices, chosen by SNI, proxying the encrypted stream untouched;
//! - TCP servers (and TLS servers terminating to TCP): the bound `tcp` route; a TLS server
//!   that terminates and has no `tcp` route: a chain per `tls` route, chosen by SNI.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, VirtualHost, virtual_host::TlsRequirementType,
};
use tracing::warn;

use super::context::ProxyContext;
use super::listener::{Routes, http_connection_manager};
use super::route;
use super::tcp;
use crate::envoy::naming;
use crate::envoy::pb;
use crate::model::istio::{Server, ServerTlsMode};
use crate::model::snapshot::GatewayConfig;

/// Gateways whose selector matches the router's labels.
pub fn selected<'a>(ctx: &'a ProxyContext) -> Vec<&'a GatewayConfig> {
    ctx.snap
        .gateways
        .iter()
        .filter(|g| g.selects(&ctx.proxy.namespace, ctx.labels))
        .map(|g| &**g)
        .collect()
}

/// The port a gateway server binds: the target port of the gateway's Service port
/// with that number (like istiod), else the number itself.
fn listen_port(ctx: &ProxyContext, number: u16) -> u16 {
    ctx.snap
        .endpoints
        .iter()
        .filter_map(|(h, eps)| Some((ctx.snap.services.get(h)?, eps)))
        .filter(|(s, _)| s.namespace == ctx.proxy.namespace)
        .flat_map(|(_, eps)| eps.instances.iter())
        .filter(|i| ctx.proxy.ips.contains(&i.address))
        .find_map(|i| i.ports.get(&number).copied())
        .unwrap_or(number)
}

/// What a server does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Plain HTTP (also with only `httpsRedirect`).
    Http,
    /// TLS terminated here, then HTTP.
    Https,
    /// TLS proxied untouched, chosen by SNI (`tls` routes).
    Passthrough,
    /// TLS passed through to the cluster its SNI names (`outbound_.PORT_.SUBSET_.HOST`).
    AutoPassthrough,
    /// TLS terminated here, then TCP (`tcp` routes).
    TlsTcp,
    /// Plain TCP (`tcp` routes).
    Tcp,
}

fn kind(s: &Server) -> Option<Kind> {
    let proto = s.port.protocol.to_ascii_uppercase();
    let mode = s.tls.as_ref().map(|t| t.mode);
    let passthrough = matches!(mode, Some(ServerTlsMode::PASSTHROUGH));
    match proto.as_str() {
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => Some(Kind::Http),
        // An HTTPS server without TLS settings is refused by validation.
        "HTTPS" if s.tls.is_none() => None,
        "HTTPS" if passthrough => Some(Kind::Passthrough),
        "TLS" if passthrough => Some(Kind::Passthrough),
        // AUTO_PASSTHROUGH: the SNI names the cluster (istiod's SNI-DNAT), as east-west
        // gateways between networks use it.
        "HTTPS" | "TLS" if matches!(mode, Some(ServerTlsMode::AUTO_PASSTHROUGH)) => {
            Some(Kind::AutoPassthrough)
        }
        "HTTPS" => Some(Kind::Https),
        "TLS" => Some(Kind::TlsTcp),
        "TCP" | "MONGO" | "REDIS" | "MYSQL" => Some(Kind::Tcp),
        _ => None,
    }
}

/// One server of a selected Gateway.
struct GwServer<'a> {
    /// `namespace/name` of the Gateway.
    gateway: String,
    gw: &'a GatewayConfig,
    server: &'a Server,
    kind: Kind,
    /// The Gateway's port number (`match.port` and virtual host names use it).
    number: u16,
    /// The number in its `http.N` route configuration's name: the port the proxy
    /// listens on (the gateway Service's target port for the Gateway's port), as istiod
    /// names it for Istio and Gateway API Gateways alike.
    route_number: u16,
}

impl GwServer<'_> {
    /// A Gateway API listener that asks for client certificates without verifying them
    /// (frontend validation AllowInsecureFallback).
    fn accepts_untrusted(&self) -> bool {
        self.gw
            .object
            .annotations
            .contains_key(crate::model::gateway_api::gateway_tls::ACCEPT_UNTRUSTED)
    }

    /// istiod's route configuration name for a TLS-terminating HTTP server.
    fn https_route(&self) -> String {
        format!(
            "https.{}.{}.{}.{}",
            self.number, self.server.port.name, self.gw.key.name, self.gw.key.namespace
        )
    }

    /// SNI names the server answers: its hosts without namespaces; none (any name) if
    /// one of them is `*`.
    fn sni(&self) -> Vec<String> {
        let names: Vec<String> = self
            .server
            .hosts
            .iter()
            .map(|h| h.split_once('/').map(|(_, h)| h).unwrap_or(h).to_string())
            .collect();
        if names.iter().any(|n| n == "*") {
            Vec::new()
        } else {
            names
        }
    }
}

/// The servers of the router's Gateways by listen port, in Gateway and server order.
/// (bind address, listen port) → servers. `bind` (an IP, or `unix:///PATH`) gives a
/// server a listener of its own address; the others share 0.0.0.0.
fn servers<'a>(ctx: &'a ProxyContext) -> BTreeMap<(String, u16), Vec<GwServer<'a>>> {
    let mut by_port: BTreeMap<(String, u16), Vec<GwServer<'a>>> = BTreeMap::new();
    for gw in selected(ctx) {
        for s in &gw.spec.servers {
            let Some(kind) = kind(s) else { continue };
            let Ok(number) = u16::try_from(s.port.number) else {
                continue;
            };
            let bind = if s.bind.parse::<std::net::IpAddr>().is_ok()
                || s.bind.starts_with(pb::UNIX_PREFIX)
            {
                s.bind.clone()
            } else {
                "0.0.0.0".to_string()
            };
            let listen = listen_port(ctx, number);
            // istiod names a plain HTTP server's routes by the port it resolves to.
            let route_number = listen;
            by_port.entry((bind, listen)).or_default().push(GwServer {
                gateway: format!("{}/{}", gw.key.namespace, gw.key.name),
                gw,
                server: s,
                kind,
                number,
                route_number,
            });
        }
    }
    by_port
}

fn tls_chain(names: Vec<String>) -> FilterChainMatch {
    FilterChainMatch {
        server_names: names,
        transport_protocol: "tls".into(),
        ..Default::default()
    }
}

const HTTP_ALPN: [&str; 2] = ["h2", "http/1.1"];

/// The ALPNs of istio-proxy's mesh TLS (istiod's `allIstioMtlsALPNs`).
const ISTIO_MTLS_ALPNS: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];

/// Whether a Gateway selecting this router has an AUTO_PASSTHROUGH server: it then gets
/// the SNI-DNAT clusters.
pub fn has_auto_passthrough(ctx: &ProxyContext) -> bool {
    selected(ctx).iter().any(|g| {
        g.spec
            .servers
            .iter()
            .any(|s| kind(s) == Some(Kind::AutoPassthrough))
    })
}

/// The SNI-DNAT clusters an AUTO_PASSTHROUGH server with `hosts` passes to: each port
/// (not UDP) of each service in the mesh the hosts cover, and each of its
/// DestinationRule's subsets, as (cluster, subset).
fn sni_dnat_targets(ctx: &ProxyContext, hosts: &[String]) -> Vec<(String, String)> {
    let names: Vec<&str> = hosts
        .iter()
        .map(|h| h.split_once('/').map(|(_, h)| h).unwrap_or(h))
        .collect();
    let mut out = Vec::new();
    for svc in super::cluster::router_services(ctx) {
        if svc.mesh_external
            || !names
                .iter()
                .any(|h| crate::model::host::matches(h, &svc.hostname))
        {
            continue;
        }
        let dr = ctx
            .snap
            .destination_rule(&ctx.proxy.namespace, ctx.labels, &svc);
        for port in svc
            .ports
            .iter()
            .filter(|p| p.protocol != crate::model::service::Protocol::Udp)
        {
            out.push((
                naming::sni_dnat_cluster(port.port, "", &svc.hostname),
                String::new(),
            ));
            for subset in dr.iter().flat_map(|d| &d.spec.subsets) {
                out.push((
                    naming::sni_dnat_cluster(port.port, &subset.name, &svc.hostname),
                    subset.name.clone(),
                ));
            }
        }
    }
    out
}

fn port_listener(
    ctx: &ProxyContext,
    bind: &str,
    port: u16,
    servers: &[GwServer],
) -> Option<Listener> {
    let mut chains: Vec<FilterChain> = Vec::new();
    // Envoy refuses a listener with two chains matching the same connections: the first
    // server for a name wins, as in istiod.
    let mut seen: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut push = |chains: &mut Vec<FilterChain>, chain: FilterChain, what: &str| {
        let mut key = chain
            .filter_chain_match
            .as_ref()
            .map(|m| {
                let mut k = m.server_names.clone();
                k.sort();
                k.insert(0, m.transport_protocol.clone());
                k
            })
            .unwrap_or_default();
        key.dedup();
        if seen.insert(key) {
            chains.push(chain);
        } else {
            warn!(proxy = %ctx.proxy.id, port, server = what,
                  "gateway server ignored: an earlier server on this port takes the same names");
        }
    };
    // A chain proxying TCP to the targets (the caller adds its match and TLS).
    let tcp_chain = |targets: &tcp::Targets| FilterChain {
        filters: vec![tcp::proxy(
            ctx,
            &format!("outbound_0.0.0.0_{port}"),
            targets,
        )],
        ..Default::default()
    };
    if let Some(first) = servers.iter().find(|s| s.kind == Kind::Http) {
        push(
            &mut chains,
            FilterChain {
                filters: vec![http_connection_manager(
                    ctx,
                    &format!("outbound_0.0.0.0_{port}"),
                    Routes::Rds(naming::gateway_route(first.route_number)),
                    None,
                )],
                ..Default::default()
            },
            &first.gateway,
        );
    }
    for s in servers {
        match s.kind {
            Kind::Http => {}
            Kind::Https => {
                let Some(tls) = s.server.tls.as_ref() else {
                    continue;
                };
                let route = s.https_route();
                push(
                    &mut chains,
                    // Unnamed, as istiod leaves them (EnvoyFilters match them by SNI).
                    FilterChain {
                        filter_chain_match: Some(tls_chain(s.sni())),
                        transport_socket: super::tls::gateway_server(
                            ctx,
                            tls,
                            &HTTP_ALPN,
                            s.accepts_untrusted(),
                        ),
                        filters: vec![http_connection_manager(
                            ctx,
                            &format!("outbound_0.0.0.0_{port}"),
                            Routes::Rds(route),
                            None,
                        )],
                        ..Default::default()
                    },
                    &s.gateway,
                );
            }
            Kind::TlsTcp => {
                let Some(tls) = s.server.tls.as_ref() else {
                    continue;
                };
                let terminating = |names: Vec<String>, targets: &tcp::Targets| {
                    let mut chain = tcp_chain(targets);
                    chain.filter_chain_match = Some(tls_chain(names));
                    chain.transport_socket =
                        super::tls::gateway_server(ctx, tls, &[], s.accepts_untrusted());
                    chain
                };
                match tcp::gateway_tcp_targets(ctx, &s.gateway, &s.server.hosts, s.number) {
                    // A `tcp` route takes everything the server terminates.
                    Some(targets) => push(&mut chains, terminating(s.sni(), &targets), &s.gateway),
                    // Else `tls` routes choose by SNI after termination, as istiod serves
                    // a Gateway API TLSRoute on a listener in Terminate mode.
                    None => {
                        for (names, targets) in
                            tcp::gateway_passthrough(ctx, &s.gateway, &s.server.hosts, s.number)
                        {
                            push(&mut chains, terminating(names, &targets), &s.gateway);
                        }
                    }
                }
            }
            Kind::Passthrough => {
                for (names, targets) in
                    tcp::gateway_passthrough(ctx, &s.gateway, &s.server.hosts, s.number)
                {
                    let mut chain = tcp_chain(&targets);
                    chain.filter_chain_match = Some(tls_chain(names));
                    push(&mut chains, chain, &s.gateway);
                }
            }
            Kind::AutoPassthrough => {
                for (cluster, _) in sni_dnat_targets(ctx, &s.server.hosts) {
                    // The SNI the client's mesh TLS sends and the ALPNs istio-proxy offers:
                    // the connection can only be mesh mTLS, which the destination's
                    // sidecar then checks (there is nothing to check here).
                    let chain = FilterChain {
                        filter_chain_match: Some(FilterChainMatch {
                            server_names: vec![cluster.clone()],
                            application_protocols: ISTIO_MTLS_ALPNS
                                .iter()
                                .map(|a| a.to_string())
                                .collect(),
                            ..Default::default()
                        }),
                        filters: vec![tcp::proxy(ctx, &cluster, &vec![(cluster.clone(), 100)])],
                        ..Default::default()
                    };
                    push(&mut chains, chain, &s.gateway);
                }
            }
            Kind::Tcp => {
                let Some(targets) =
                    tcp::gateway_tcp_targets(ctx, &s.gateway, &s.server.hosts, s.number)
                else {
                    continue;
                };
                push(&mut chains, tcp_chain(&targets), &s.gateway);
            }
        }
    }
    if chains.is_empty() {
        return None;
    }
    let mut l = Listener {
        // A Unix socket bind keeps istiod's name, `unix:///PATH_PORT`.
        name: naming::listener(bind, port),
        address: Some(pb::listen_address(bind, u32::from(port))),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        filter_chains: chains,
        ..Default::default()
    };
    if l.filter_chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| m.transport_protocol == "tls" || !m.server_names.is_empty())
    }) {
        l.listener_filters.push(super::listener::tls_inspector());
    }
    Some(l)
}

pub fn listeners(ctx: &ProxyContext) -> Vec<Listener> {
    servers(ctx)
        .iter()
        .filter_map(|((bind, port), list)| port_listener(ctx, bind, *port, list))
        .collect()
}

/// The virtual hosts that tell misdirected requests apart on `server`'s connections:
/// with HTTP/2 a client reuses a connection for any name the certificate covers, so a
/// request can arrive on a listener its TLS server name did not choose. The Gateway API
/// asks for 421 (Misdirected Request) there, so that the client opens a connection for
/// that name (istiod does not detect this).
///
/// Two lists, by where they go among the routes' virtual hosts (of equal domains the
/// first is kept): before them, 421 for the names the other HTTPS listeners of the
/// address (`peers`) serve — misdirected even where one of this listener's routes names
/// them — and for any name at all when the listener has hostnames; after them, the
/// listener's own names without a route, which answer 404.
fn misdirected(server: &GwServer, peers: &[&GwServer]) -> (Vec<VirtualHost>, Vec<VirtualHost>) {
    let own = server.sni();
    let mut before: Vec<VirtualHost> = Vec::new();
    for h in peers.iter().flat_map(|p| p.sni()) {
        if !own.contains(&h) && !before.iter().any(|v| v.domains[0] == h) {
            before.push(misdirected_host(&h, server.number));
        }
    }
    if !own.is_empty() {
        before.push(misdirected_host("*", server.number));
    }
    let after = own
        .iter()
        .map(|h| VirtualHost {
            name: format!("unrouted:{}", naming::virtual_host(h, server.number)),
            domains: route::gateway_domains(h),
            ..Default::default()
        })
        .collect();
    (before, after)
}

fn misdirected_host(host: &str, port: u16) -> VirtualHost {
    use envoy_types::pb::envoy::config::route::v3 as rt;
    VirtualHost {
        name: format!("misdirected:{}", naming::virtual_host(host, port)),
        domains: route::gateway_domains(host),
        routes: vec![rt::Route {
            name: "misdirected".into(),
            r#match: Some(rt::RouteMatch {
                path_specifier: Some(rt::route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(rt::route::Action::DirectResponse(
                rt::DirectResponseAction {
                    status: 421,
                    ..Default::default()
                },
            )),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Route configurations `http.PORT` (every plain HTTP server with that port number) and
/// `https.PORT.PORTNAME.GATEWAY.NAMESPACE` (one HTTPS server).
/// The port a gateway route configuration serves (`http.80`, `https.443.…`).
fn port_of(name: &str) -> u16 {
    name.split('.')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

pub fn route_config(ctx: &ProxyContext, name: &str) -> Option<RouteConfiguration> {
    let all = servers(ctx);
    let list: Vec<&GwServer> = if let Some(n) = name.strip_prefix("http.") {
        let number: u16 = n.parse().ok()?;
        all.values()
            .flatten()
            .filter(|s| s.kind == Kind::Http && s.route_number == number)
            .collect()
    } else if name.starts_with("https.") {
        all.values()
            .flatten()
            .filter(|s| s.kind == Kind::Https && s.https_route() == name)
            .take(1)
            .collect()
    } else {
        return None;
    };
    let first = *list.first()?;
    // A Gateway API HTTPS listener tells misdirected requests apart, against the other
    // HTTPS listeners sharing its listen address.
    let (mut vhosts, unrouted) = if first.kind == Kind::Https && first.gw.object.is_generated() {
        let peers: Vec<&GwServer> = all
            .values()
            .find(|group| group.iter().any(|p| std::ptr::eq(p, first)))
            .into_iter()
            .flatten()
            .filter(|p| p.kind == Kind::Https && !std::ptr::eq(*p, first))
            .collect();
        misdirected(first, &peers)
    } else {
        (Vec::new(), Vec::new())
    };
    let mut claimed = BTreeSet::new();
    for s in list {
        let mut v = route::gateway_virtual_hosts(
            ctx,
            &s.gateway,
            &s.server.hosts,
            s.number,
            s.kind == Kind::Https,
            &mut claimed,
        );
        if s.kind == Kind::Http && s.server.tls.as_ref().is_some_and(|t| t.https_redirect) {
            // Plain HTTP requests are answered with a redirect to https://, for every
            // host of the server, routed or not.
            for vh in &mut v {
                vh.require_tls = TlsRequirementType::All as i32;
            }
            for h in &s.server.hosts {
                let h = h.split_once('/').map_or(h.as_str(), |(_, h)| h);
                if !claimed.insert(h.to_string()) {
                    continue;
                }
                v.push(VirtualHost {
                    name: naming::virtual_host(h, s.number),
                    domains: route::gateway_domains(h),
                    require_tls: TlsRequirementType::All as i32,
                    ..Default::default()
                });
            }
        }
        vhosts.extend(v);
    }
    vhosts.extend(unrouted);
    route::dedup_domains(&mut vhosts);
    if vhosts.is_empty() {
        // Nothing routed here: one catch-all host without routes (404), as istiod.
        vhosts.push(VirtualHost {
            name: naming::virtual_host("blackhole", port_of(name)),
            domains: vec!["*".into()],
            ..Default::default()
        });
    }
    Some(RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vhosts,
        validate_clusters: pb::boolv(false),
        ignore_port_in_host_matching: true,
        max_direct_response_body_size_bytes: pb::u32v(route::MAX_DIRECT_RESPONSE_BODY),
        ..Default::default()
    })
}
