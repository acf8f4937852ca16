//! VirtualService `tcp` and `tls` routes: which clusters (with weights) a TCP connection
//! goes to, for sidecars (per service port) and for gateways (TCP servers, and TLS
//! servers in PASSTHROUGH mode, chosen by SNI).

use envoy_types::pb::envoy::config::listener::v3::{self as ls, Filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;

use super::context::ProxyContext;
use super::route::destination_cluster;
use crate::envoy::pb;
use crate::model::host;
use crate::model::istio::{self, L4MatchAttributes, RouteDestination, TlsMatchAttributes};
use crate::model::service::labels_match;
use crate::model::snapshot::{VirtualServiceConfig, resolve_gateway};

/// Clusters and weights of one route. A single destination gets weight 100; weights of
/// zero are dropped (Istio sends them no traffic).
pub type Targets = Vec<(String, u32)>;

/// The match attributes `tcp` and `tls` routes share.
struct L4<'a> {
    port: Option<u32>,
    gateways: &'a [String],
    source_labels: &'a istio::Labels,
    source_namespace: &'a str,
}

impl<'a> From<&'a L4MatchAttributes> for L4<'a> {
    fn from(m: &'a L4MatchAttributes) -> Self {
        // destinationSubnets and sourceSubnet would need per-address chains: validation
        // warns that they are not used (COMPATIBILITY.md).
        L4 {
            port: m.port,
            gateways: &m.gateways,
            source_labels: &m.source_labels,
            source_namespace: &m.source_namespace,
        }
    }
}

impl<'a> From<&'a TlsMatchAttributes> for L4<'a> {
    fn from(m: &'a TlsMatchAttributes) -> Self {
        L4 {
            port: m.port,
            gateways: &m.gateways,
            source_labels: &m.source_labels,
            source_namespace: &m.source_namespace,
        }
    }
}

/// Whether a match applies to this proxy on `port`. `gateway` is `namespace/name` for
/// routers, `None` for sidecars (`mesh`).
fn applies(
    ctx: &ProxyContext,
    vs: &VirtualServiceConfig,
    m: L4,
    port: u16,
    gateway: Option<&str>,
) -> bool {
    if m.port.is_some_and(|p| p != u32::from(port)) {
        return false;
    }
    let here = gateway.unwrap_or("mesh");
    let gws: Vec<String> = m
        .gateways
        .iter()
        .map(|g| resolve_gateway(g, &vs.key.namespace))
        .collect();
    if !gws.is_empty() && !gws.iter().any(|g| g == here) {
        return false;
    }
    if gateway.is_none() {
        if !m.source_labels.is_empty() && !labels_match(m.source_labels, ctx.labels) {
            return false;
        }
        if !m.source_namespace.is_empty() && m.source_namespace != ctx.proxy.namespace {
            return false;
        }
    }
    true
}

/// The clusters of a route's destinations.
pub fn targets(
    ctx: &ProxyContext,
    vs: &VirtualServiceConfig,
    route: &[RouteDestination],
    port: u16,
) -> Targets {
    let weighted = route.len() > 1;
    route
        .iter()
        .filter_map(|d| {
            let w = if weighted {
                u32::try_from(d.weight.unwrap_or(0)).unwrap_or(0)
            } else {
                100
            };
            (w > 0).then(|| {
                (
                    destination_cluster(ctx, &vs.key.namespace, &d.destination, port),
                    w,
                )
            })
        })
        .collect()
}

/// The first `tcp` route of a VirtualService for `host` that applies on `port`, for a
/// sidecar. VirtualServices are taken in the scope's order, as for HTTP.
pub fn sidecar_tcp_targets(
    ctx: &ProxyContext,
    vss: &[std::sync::Arc<VirtualServiceConfig>],
    host: &str,
    port: u16,
) -> Option<Targets> {
    vss.iter()
        .filter(|vs| vs.applies_to_mesh() && vs.hosts.iter().any(|h| h == host))
        .find_map(|vs| {
            vs.spec.tcp.iter().find_map(|r| {
                let ok = r.matches.is_empty()
                    || r.matches
                        .iter()
                        .any(|m| applies(ctx, vs, m.into(), port, None));
                ok.then(|| targets(ctx, vs, &r.route, port))
                    .filter(|t| !t.is_empty())
            })
        })
}

/// Whether a VirtualService host is selected by a gateway server's hosts (`ns/host`).
pub fn server_selects(
    gw_ns: &str,
    server_hosts: &[String],
    vs: &VirtualServiceConfig,
    h: &str,
) -> bool {
    server_hosts.iter().any(|sh| {
        let (ns, pat) = match sh.split_once('/') {
            Some((n, p)) => (if n == "." { gw_ns } else { n }, p),
            None => ("*", sh.as_str()),
        };
        (ns == "*" || ns == vs.key.namespace) && host::intersects(pat, h)
    })
}

fn bound<'a>(
    ctx: &'a ProxyContext,
    gateway: &'a str,
    server_hosts: &'a [String],
) -> impl Iterator<Item = &'a std::sync::Arc<VirtualServiceConfig>> + 'a {
    let gw_ns = gateway.split('/').next().unwrap_or_default();
    ctx.snap.virtual_services.iter().filter(move |vs| {
        vs.gateways.iter().any(|g| g == gateway)
            && vs
                .hosts
                .iter()
                .any(|h| server_selects(gw_ns, server_hosts, vs, h))
    })
}

/// A gateway TCP server (or TLS server terminating to TCP): the first `tcp` route of the
/// VirtualServices bound to the gateway whose hosts the server exposes.
pub fn gateway_tcp_targets(
    ctx: &ProxyContext,
    gateway: &str,
    server_hosts: &[String],
    port: u16,
) -> Option<Targets> {
    bound(ctx, gateway, server_hosts).find_map(|vs| {
        vs.spec.tcp.iter().find_map(|r| {
            let ok = r.matches.is_empty()
                || r.matches
                    .iter()
                    .any(|m| applies(ctx, vs, m.into(), port, Some(gateway)));
            ok.then(|| targets(ctx, vs, &r.route, port))
                .filter(|t| !t.is_empty())
        })
    })
}

/// A gateway TLS server in PASSTHROUGH mode: (SNI names, targets) for each `tls` route
/// match of the bound VirtualServices, the server's hosts limiting the names.
pub fn gateway_passthrough(
    ctx: &ProxyContext,
    gateway: &str,
    server_hosts: &[String],
    port: u16,
) -> Vec<(Vec<String>, Targets)> {
    let gw_ns = gateway.split('/').next().unwrap_or_default();
    let mut out = Vec::new();
    for vs in bound(ctx, gateway, server_hosts) {
        for r in &vs.spec.tls {
            for m in &r.matches {
                if !applies(ctx, vs, m.into(), port, Some(gateway)) {
                    continue;
                }
                let names: Vec<String> = m
                    .sni_hosts
                    .iter()
                    .filter(|n| server_selects(gw_ns, server_hosts, vs, n))
                    .cloned()
                    .collect();
                let t = targets(ctx, vs, &r.route, port);
                if !names.is_empty() && !t.is_empty() {
                    out.push((names, t));
                }
            }
        }
    }
    out
}

/// DestinationRule `connectionPool.tcp.idleTimeout` for an outbound cluster (the
/// subset's and port's settings included), as istiod applies it to TCP proxies.
pub fn idle_timeout(ctx: &ProxyContext, cluster: &str) -> Option<std::time::Duration> {
    let (dir, port, subset, host) = crate::envoy::naming::parse_cluster(cluster)?;
    if dir != crate::envoy::naming::Direction::Outbound {
        return None;
    }
    let svc = ctx.snap.services.get(host)?;
    let policy = super::cluster::effective_policy(ctx, svc, port, subset)?;
    policy
        .connection_pool?
        .tcp?
        .idle_timeout
        .map(|d| d.as_std())
}

/// A tcp_proxy to one cluster or to weighted clusters.
pub fn proxy(ctx: &ProxyContext, stat_prefix: &str, t: &Targets) -> Filter {
    let spec = match t.as_slice() {
        [(one, _)] => tcp::tcp_proxy::ClusterSpecifier::Cluster(one.clone()),
        many => {
            tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(tcp::tcp_proxy::WeightedCluster {
                clusters: many
                    .iter()
                    .map(
                        |(name, weight)| tcp::tcp_proxy::weighted_cluster::ClusterWeight {
                            name: name.clone(),
                            weight: *weight,
                            ..Default::default()
                        },
                    )
                    .collect(),
            })
        }
    };
    let m = tcp::TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(spec),
        access_log: super::listener::logs(ctx, false, true),
        idle_timeout: t
            .first()
            .and_then(|(c, _)| idle_timeout(ctx, c))
            .map(pb::duration),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(pb::any(&m))),
    }
}

/// A sidecar's `tls` routes on `port`: (SNI names, targets) for each match of the
/// VirtualServices in scope that applies to this proxy, in scope order.
pub fn sidecar_tls_routes(
    ctx: &ProxyContext,
    vss: &[std::sync::Arc<VirtualServiceConfig>],
    port: u16,
) -> Vec<(Vec<String>, Targets)> {
    let mut out = Vec::new();
    for vs in vss.iter().filter(|vs| vs.applies_to_mesh()) {
        for r in &vs.spec.tls {
            for m in &r.matches {
                if !applies(ctx, vs, m.into(), port, None) || m.sni_hosts.is_empty() {
                    continue;
                }
                let t = targets(ctx, vs, &r.route, port);
                if !t.is_empty() {
                    out.push((m.sni_hosts.clone(), t));
                }
            }
        }
    }
    out
}
