//! outboundTrafficPolicy `ALLOW_ANY_DYNAMIC_DNS`, as istiod builds it: plaintext HTTP to a
//! host the registry does not know goes to the host its `Host` header names (resolved by
//! Envoy's dynamic forward proxy), not to the address the client happened to dial;
//! everything else leaves through PassthroughCluster as under ALLOW_ANY.

use envoy_types::pb::envoy::config::cluster::v3 as cl;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch};
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3 as dfp_cluster;
use envoy_types::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_forward_proxy::v3 as dfp_filter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};

use super::context::ProxyContext;
use super::listener::{Routes, http_connection_manager};
use crate::envoy::pb;
use crate::model::istio::OutboundTrafficMode;
use crate::model::proxy::ProxyKind;

pub const CLUSTER: &str = "AllowAnyDynamicDNSCluster";
/// The catch-all virtual host, its route, and the inline route configuration's name.
pub const ROUTE: &str = "allow_any_dynamic_dns";
/// One DNS cache shared by the cluster and every filter: Envoy ties them by name.
const CACHE: &str = "allow_any_dfp_dns_cache";
/// istiod's default for PILOT_ALLOW_ANY_DYNAMIC_DNS_MAX_HOSTS.
const MAX_HOSTS: u32 = 1024;
pub const FILTER: &str = "envoy.filters.http.dynamic_forward_proxy";

/// Whether this proxy forwards unknown HTTP by its Host header.
pub fn enabled(ctx: &ProxyContext) -> bool {
    ctx.proxy.kind == ProxyKind::Sidecar
        && ctx.scope.outbound_policy == OutboundTrafficMode::ALLOW_ANY_DYNAMIC_DNS
}

fn cache(ctx: &ProxyContext) -> DnsCacheConfig {
    // The proxy's own address families decide, as istiod's SelectDNSLookupFamily: IPv6
    // only when every address is IPv6.
    let v6_only = !ctx.proxy.ips.is_empty()
        && ctx
            .proxy
            .ips
            .iter()
            .all(|ip| ip.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_ipv6()));
    let family = if v6_only {
        cl::cluster::DnsLookupFamily::V6Only
    } else {
        cl::cluster::DnsLookupFamily::V4Only
    };
    DnsCacheConfig {
        name: CACHE.into(),
        dns_lookup_family: family as i32,
        max_hosts: pb::u32v(MAX_HOSTS),
        ..Default::default()
    }
}

/// The dynamic forward proxy cluster (hosts come from the filter's lookups).
pub fn cluster(ctx: &ProxyContext) -> cl::Cluster {
    let config = dfp_cluster::ClusterConfig {
        cluster_implementation_specifier: Some(
            dfp_cluster::cluster_config::ClusterImplementationSpecifier::DnsCacheConfig(cache(ctx)),
        ),
        // Plaintext upstream: Envoy otherwise insists on auto SNI and SAN checks.
        allow_insecure_cluster_options: true,
        ..Default::default()
    };
    cl::Cluster {
        name: CLUSTER.into(),
        connect_timeout: Some(pb::duration(ctx.snap.mesh.connect_timeout.as_std())),
        lb_policy: cl::cluster::LbPolicy::ClusterProvided as i32,
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::ClusterType(
            cl::cluster::CustomClusterType {
                name: "envoy.clusters.dynamic_forward_proxy".into(),
                typed_config: Some(pb::any(&config)),
            },
        )),
        ..Default::default()
    }
}

/// The HTTP filter that resolves each request's host before the router picks the cluster.
pub fn http_filter(ctx: &ProxyContext) -> HttpFilter {
    let config = dfp_filter::FilterConfig {
        implementation_specifier: Some(
            dfp_filter::filter_config::ImplementationSpecifier::DnsCacheConfig(cache(ctx)),
        ),
        ..Default::default()
    };
    HttpFilter {
        name: FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pb::any(&config))),
        ..Default::default()
    }
}

/// The catch-all virtual host: every unknown host through the dynamic forward proxy, with
/// no timeout (as istiod's passthrough).
pub fn catch_all_virtual_host() -> rt::VirtualHost {
    rt::VirtualHost {
        name: ROUTE.into(),
        domains: vec!["*".into()],
        routes: vec![rt::Route {
            name: ROUTE.into(),
            r#match: Some(rt::RouteMatch {
                path_specifier: Some(rt::route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(rt::route::Action::Route(rt::RouteAction {
                cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster(
                    CLUSTER.into(),
                )),
                timeout: pb::secs(0),
                // istiod sets it beside `timeout`; Envoy still honours it.
                #[allow(deprecated)]
                max_grpc_timeout: pb::secs(0),
                ..Default::default()
            })),
            ..Default::default()
        }],
        include_request_attempt_count: true,
        ..Default::default()
    }
}

/// virtualOutbound's chain for plaintext HTTP to addresses no listener claims (the HTTP
/// inspector tells it from other traffic).
pub fn virtual_outbound_chain(ctx: &ProxyContext) -> FilterChain {
    let rc = rt::RouteConfiguration {
        name: ROUTE.into(),
        virtual_hosts: vec![catch_all_virtual_host()],
        validate_clusters: pb::boolv(false),
        ignore_port_in_host_matching: true,
        max_direct_response_body_size_bytes: pb::u32v(super::route::MAX_DIRECT_RESPONSE_BODY),
        ..Default::default()
    };
    FilterChain {
        name: "virtualOutbound-catchall-tcp-http".into(),
        filter_chain_match: Some(FilterChainMatch {
            application_protocols: vec!["http/1.1".into(), "h2c".into()],
            ..Default::default()
        }),
        filters: vec![http_connection_manager(
            ctx,
            "outbound_virtualOutbound_allow_any_dynamic_dns",
            Routes::Inline(Box::new(rc)),
            None,
        )],
        ..Default::default()
    }
}
