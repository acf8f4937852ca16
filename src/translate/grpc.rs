//! Proxyless gRPC clients (node metadata `GENERATOR: grpc`): gRPC's xDS client asks for
//! a listener named after its target (`xds:///reviews.default.svc.cluster.local:9080`
//! asks for `reviews.default.svc.cluster.local:9080`), the route configuration that
//! listener names, and the clusters those routes name, each by name. meshd answers with
//! the subset of Envoy's API gRPC implements: an API listener whose HTTP connection manager
//! has only the fault and router filters, routes from the VirtualServices in the client's
//! scope (matches, weights, subsets, timeouts, faults, hash policies) and EDS clusters
//! with ROUND_ROBIN or RING_HASH. Everything else stays out: gRPC refuses what it does not
//! know.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost, route::Action};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    self as hcm, HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier,
};

use super::context::ProxyContext;
use super::route;
use crate::envoy::naming;
use crate::envoy::pb;
use crate::model::host;
use crate::model::service::Service;

/// A target `host[:port]` → (the service, its port). Short names resolve in the
/// client's namespace, as for Kubernetes DNS; without a port, the service's only port.
fn target<'a>(ctx: &'a ProxyContext, name: &str) -> Option<(&'a Service, u16)> {
    let (h, port) = match name.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
        None => (name, None),
    };
    let fqdn = host::resolve(h, &ctx.proxy.namespace, &ctx.snap.mesh.domain_suffix);
    // `name.namespace` and `name.namespace.svc` are Kubernetes names too.
    let svc = ctx.snap.services.get(&fqdn).or_else(|| {
        let suffix = &ctx.snap.mesh.domain_suffix;
        let long = match h.matches('.').count() {
            1 => format!("{h}.svc.{suffix}"),
            2 if h.ends_with(".svc") => format!("{h}.{suffix}"),
            _ => return None,
        };
        ctx.snap.services.get(&long)
    })?;
    if !ctx.scope.sees(&svc.hostname) {
        return None;
    }
    let port = match port {
        Some(p) => svc.port(p)?.port,
        None if svc.ports.len() == 1 => svc.ports[0].port,
        None => return None,
    };
    Some((&**svc, port))
}

fn http_filter<T: prost::Message + prost::Name>(name: &str, msg: &T) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pb::any(msg))),
        ..Default::default()
    }
}

/// The API listener for a target: routes over RDS under the same name.
pub fn listener(ctx: &ProxyContext, name: &str) -> Option<Listener> {
    target(ctx, name)?;
    let m = HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::Rds(hcm::Rds {
            config_source: Some(pb::ads_config_source()),
            route_config_name: name.to_string(),
        })),
        http_filters: vec![
            http_filter(route::FAULT_FILTER, &fault::HttpFault::default()),
            http_filter("envoy.filters.http.router", &router::Router::default()),
        ],
        ..Default::default()
    };
    Some(Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pb::any(&m)),
        }),
        ..Default::default()
    })
}

/// The routes of a target: its VirtualService's HTTP rules (the first VirtualService in
/// the client's scope naming the host), or one route to the service.
pub fn route_config(ctx: &ProxyContext, name: &str) -> Option<RouteConfiguration> {
    let (svc, port) = target(ctx, name)?;
    let vs = ctx
        .scope
        .egress
        .iter()
        .flat_map(|e| e.virtual_services.iter())
        .find(|vs| vs.applies_to_mesh() && vs.hosts.iter().any(|h| h == &svc.hostname));
    let mut routes: Vec<_> = match vs {
        Some(vs) => route::vs_routes(ctx, vs, port, None, false),
        None => Vec::new(),
    };
    if routes.is_empty() {
        let cluster = naming::outbound_cluster(port, "", &svc.hostname);
        routes.push(route::default_route(ctx, &cluster, &svc.hostname, port));
    }
    for r in &mut routes {
        // gRPC refuses per-route configuration of filters it lacks (CORS); fault it has.
        r.typed_per_filter_config
            .retain(|k, _| k.as_str() == route::FAULT_FILTER);
        // Envoy's retry conditions (connect-failure, refused-stream, …) are not gRPC's;
        // gRPC retries by status code under its own service config.
        if let Some(Action::Route(a)) = &mut r.action {
            a.retry_policy = None;
        }
    }
    Some(RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: naming::virtual_host(&svc.hostname, port),
            // The listener is this target's alone: every authority is this service.
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// Whether a proxyless client talks mTLS to this cluster: only a client with certificates
/// (its istio-agent writes them and names them in the gRPC bootstrap as provider
/// `default`), and then as istiod decides it: DestinationRule ISTIO_MUTUAL, or auto mTLS
/// when every endpoint runs a sidecar (gRPC has no per-endpoint transport sockets).
fn mtls(ctx: &ProxyContext, svc: &Service, port: u16, subset: &str) -> bool {
    use crate::model::istio::ClientTlsMode;
    if !ctx.proxy.mtls_ready {
        return false;
    }
    let policy = super::cluster::effective_policy(ctx, svc, port, subset);
    match policy.as_ref().and_then(|p| p.tls.as_ref()).map(|t| t.mode) {
        Some(ClientTlsMode::ISTIO_MUTUAL) => true,
        Some(_) => false,
        None => {
            ctx.snap.mesh.enable_auto_mtls
                && ctx.snap.endpoints.get(&svc.hostname).is_some_and(|eps| {
                    !eps.instances.is_empty()
                        && eps
                            .instances
                            .iter()
                            .all(|i| i.tls_mode.as_deref() == Some("istio"))
                })
        }
    }
}

/// mTLS from gRPC's certificate provider `default` (the workload certificate and the
/// mesh roots the agent writes), peers verified as identities of our trust domain.
fn grpc_mtls(ctx: &ProxyContext) -> envoy_types::pb::envoy::config::core::v3::TransportSocket {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext,
        UpstreamTlsContext, common_tls_context::ValidationContextType,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        StringMatcher, string_matcher::MatchPattern,
    };
    let provider = |name: &str| CertificateProviderPluginInstance {
        instance_name: "default".into(),
        certificate_name: name.into(),
    };
    #[allow(deprecated)]
    let validation = CertificateValidationContext {
        ca_certificate_provider_instance: Some(provider("ROOTCA")),
        match_subject_alt_names: vec![StringMatcher {
            match_pattern: Some(MatchPattern::Prefix(format!(
                "spiffe://{}/",
                ctx.snap.mesh.trust_domain
            ))),
            ignore_case: false,
        }],
        ..Default::default()
    };
    super::tls::transport_socket(
        "envoy.transport_sockets.tls",
        &UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_provider_instance: Some(provider("default")),
                validation_context_type: Some(ValidationContextType::ValidationContext(validation)),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

/// A cluster as gRPC understands it, from the cluster a sidecar would get: endpoints
/// over EDS (or the DNS name), ROUND_ROBIN unless consistent hashing is asked for,
/// circuit breakers and outlier detection; plaintext.
pub fn cluster(ctx: &ProxyContext, name: &str) -> Option<Cluster> {
    let (_, port, subset, host) = naming::parse_cluster(name)?;
    let svc = ctx.snap.services.get(host)?;
    if !ctx.scope.sees(host) {
        return None;
    }
    let p = svc.port(port)?;
    let full = super::cluster::service_port_clusters(ctx, svc, p)
        .into_iter()
        .find(|c| c.name == name)?;
    use cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
    let ring = matches!(
        LbPolicy::try_from(full.lb_policy),
        Ok(LbPolicy::RingHash | LbPolicy::Maglev)
    );
    let discovery = match full.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::StrictDns as i32 => {
            // gRPC resolves one DNS name at a time.
            Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32))
        }
        other => other,
    };
    let transport_socket = mtls(ctx, svc, port, subset).then(|| grpc_mtls(ctx));
    Some(Cluster {
        transport_socket,
        name: full.name,
        cluster_discovery_type: discovery,
        eds_cluster_config: full.eds_cluster_config,
        load_assignment: full.load_assignment,
        connect_timeout: full.connect_timeout,
        lb_policy: if ring {
            LbPolicy::RingHash as i32
        } else {
            LbPolicy::RoundRobin as i32
        },
        lb_config: if ring {
            full.lb_config
                .filter(|c| matches!(c, cluster::LbConfig::RingHashLbConfig(_)))
        } else {
            None
        },
        circuit_breakers: full.circuit_breakers,
        outlier_detection: full.outlier_detection,
        ..Default::default()
    })
}
