//! Translation: pure functions from a [`Snapshot`] and a [`Proxy`] to Envoy resources. No
//! I/O, no clocks, no HashMap iteration into output: the same inputs give byte-identical
//! protobuf (see [`crate::envoy::pb::canonical`]).

pub mod authz;
pub mod cluster;
pub mod context;
pub mod dfp;
pub mod endpoint;
pub mod envoyfilter;
pub mod gateway;
pub mod grpc;
pub mod jwt;
pub mod listener;
pub mod locality;
pub mod output;
pub mod peer;
pub mod ratelimit;
pub mod route;
pub mod secret;
pub mod session;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod tracers;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

pub use context::ProxyContext;

use crate::model::proxy::{Proxy, ProxyKind};
use crate::model::snapshot::Snapshot;

/// Everything a proxy gets.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
}

/// The route configuration `name` for this proxy.
pub fn route_config(ctx: &ProxyContext, name: &str) -> Option<RouteConfiguration> {
    let rc = match ctx.proxy.kind {
        ProxyKind::Sidecar => route::sidecar_route_config(ctx, name),
        ProxyKind::Router => gateway::route_config(ctx, name),
    }?;
    Some(envoyfilter::route_config(ctx, rc))
}

/// [`route_config`] as an encoded `google.protobuf.Any`. A sidecar's outbound port
/// configuration is assembled from the virtual hosts `store` keeps for the proxy's
/// `class` (see [`route::pieces`]); the bytes are the same either way.
pub fn route_config_any(
    ctx: &ProxyContext,
    name: &str,
    store: &route::pieces::VhostStore,
    class: u64,
) -> Option<crate::envoy::encoded::Encoded> {
    use prost::Message;
    if ctx.proxy.kind == ProxyKind::Sidecar
        && !ctx.proxy.proxyless
        && name.parse::<u16>().is_ok()
        && !envoyfilter::patches_routes(ctx)
    {
        return route::pieces::outbound_route_config_any(ctx, name, store, class);
    }
    route_config(ctx, name).map(|rc| crate::envoy::pb::resource(&rc).encode_to_vec().into())
}

/// Load assignments for the named clusters (unknown names are left out).
pub fn endpoints(ctx: &ProxyContext, names: &[String]) -> Vec<ClusterLoadAssignment> {
    names
        .iter()
        .filter_map(|n| endpoint::for_cluster(ctx.snap, &ctx.proxy.namespace, ctx.labels, n))
        .map(|mut cla| {
            locality::apply(ctx, &mut cla);
            cla
        })
        .collect()
}

/// Everything for a proxy: clusters and the endpoints of its EDS clusters, listeners and
/// the route configurations they name.
pub fn generate(snap: &Snapshot, proxy: &Proxy) -> Resources {
    generate_for(&ProxyContext::new(snap, proxy))
}

/// [`generate`] for a context the caller already built (and uses again, as explain does).
pub fn generate_for(ctx: &ProxyContext) -> Resources {
    let clusters: Vec<Cluster> = cluster::clusters(ctx).into_iter().map(|c| *c).collect();
    let eds = cluster::eds_cluster_names(&clusters);
    let endpoints = endpoints(ctx, &eds);
    let listeners = listener::listeners(ctx);
    let routes = listener::route_names(&listeners)
        .iter()
        .filter_map(|n| route_config(ctx, n))
        .collect();
    Resources {
        clusters,
        endpoints,
        listeners,
        routes,
    }
}
