//! Gateways (router proxies): one listener per Gateway server port, HTTP routes from the
//! VirtualServices bound to the Gateway (`http.PORT` route configurations).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::context::ProxyContext;
use super::listener::{Routes, http_connection_manager};
use super::naming;
use super::pb;
use super::route;
use crate::model::service::labels_match;
use crate::model::snapshot::GatewayConfig;

/// Gateways whose selector matches the router's labels.
pub fn selected<'a>(ctx: &'a ProxyContext) -> Vec<&'a GatewayConfig> {
    ctx.snap
        .gateways
        .iter()
        .filter(|g| !g.spec.selector.is_empty() && labels_match(&g.spec.selector, &ctx.labels))
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

/// (listen port → [(gateway key, server hosts)]) for HTTP servers.
fn http_servers(ctx: &ProxyContext) -> BTreeMap<u16, Vec<(String, Vec<String>)>> {
    let mut by_port: BTreeMap<u16, Vec<(String, Vec<String>)>> = BTreeMap::new();
    for gw in selected(ctx) {
        for s in &gw.spec.servers {
            let proto = s.port.protocol.to_ascii_uppercase();
            if !matches!(proto.as_str(), "HTTP" | "HTTP2" | "GRPC") || s.tls.is_some() {
                continue;
            }
            let port = listen_port(ctx, s.port.number as u16);
            by_port.entry(port).or_default().push((
                format!("{}/{}", gw.key.namespace, gw.key.name),
                s.hosts.clone(),
            ));
        }
    }
    by_port
}

pub fn listeners(ctx: &ProxyContext) -> Vec<Listener> {
    http_servers(ctx)
        .into_keys()
        .map(|port| Listener {
            name: naming::listener("0.0.0.0", port),
            address: Some(pb::socket_address("0.0.0.0", u32::from(port))),
            traffic_direction: core::TrafficDirection::Outbound as i32,
            filter_chains: vec![FilterChain {
                filters: vec![http_connection_manager(
                    ctx,
                    &format!("outbound_0.0.0.0_{port}"),
                    Routes::Rds(naming::gateway_route(port)),
                    false,
                )],
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect()
}

/// Route configuration `http.PORT` for a router.
pub fn route_config(ctx: &ProxyContext, name: &str) -> Option<RouteConfiguration> {
    let port: u16 = name.strip_prefix("http.")?.parse().ok()?;
    let servers = http_servers(ctx);
    let list = servers.get(&port)?;
    let mut claimed = BTreeSet::new();
    let mut vhosts = Vec::new();
    for (gw, hosts) in list {
        vhosts.extend(route::gateway_virtual_hosts(
            ctx,
            gw,
            hosts,
            port,
            &mut claimed,
        ));
    }
    route::dedup_domains(&mut vhosts);
    Some(RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vhosts,
        validate_clusters: pb::boolv(false),
        ignore_port_in_host_matching: true,
        ..Default::default()
    })
}
