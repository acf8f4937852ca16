//! LDS: outbound listeners per port (or per Sidecar egress listener), `virtualOutbound`
//! (15001) and `virtualInbound` (15006) for iptables-intercepted proxies, bound inbound
//! listeners for Sidecar ingress, and gateway listeners for routers.
//!
//! One concern per file: `connection_manager` (HTTP connection managers, TCP proxies
//! and their access logs), `outbound` (per-port listeners, their chains,
//! virtualOutbound), `inbound` (virtualInbound, its chains by mTLS mode, Sidecar ingress
//! listeners); here what they share and the assembly of a proxy's listeners.

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

mod connection_manager;
mod inbound;
mod outbound;

pub(crate) use connection_manager::logs;
pub use connection_manager::{http_connection_manager, tcp_proxy};
pub(crate) use inbound::tls_inspector;
use inbound::*;
use outbound::*;

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

/// Ports the proxy itself uses; services on them would collide with istio-proxy.
const RESERVED_PORTS: [u16; 6] = [15000, 15001, 15006, 15021, 15090, 15020];

/// Where an HCM gets its routes.
pub enum Routes {
    Rds(String),
    Inline(Box<envoy_types::pb::envoy::config::route::v3::RouteConfiguration>),
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
