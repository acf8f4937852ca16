//! CDS: outbound clusters per service port and DestinationRule subset, inbound clusters for
//! the proxy's own workload, and istiod's fixed clusters (BlackHole, Passthrough,
//! InboundPassthrough). DestinationRule traffic policies become cluster settings here.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::{
    self as cl, Cluster, circuit_breakers::Thresholds, cluster::ClusterDiscoveryType,
    cluster::DiscoveryType, cluster::LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as http_opts;
use envoy_types::pb::google::protobuf::Any;
use serde_json::json;

use super::context::ProxyContext;
use crate::envoy::naming;
use crate::envoy::pb;
use crate::model::istio::{self, SimpleLb, TrafficPolicy};
use crate::model::object::ObjectKey;
use crate::model::proxy::ProxyKind;
use crate::model::service::{Port, Protocol, Resolution, Service};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// All clusters for the proxy, sorted by name.
/// The services a gateway has clusters for: every one visible to its namespace, by host.
pub fn router_services(ctx: &ProxyContext) -> Vec<std::sync::Arc<Service>> {
    let mut v: Vec<_> = ctx
        .snap
        .services
        .values()
        .filter(|s| s.visibility.visible_to(&ctx.proxy.namespace))
        .cloned()
        .collect();
    v.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    v
}

/// A gateway's SNI-DNAT clusters (for AUTO_PASSTHROUGH servers): a copy of each service
/// cluster of the mesh's own services (`service_clusters`, already built), named by the
/// SNI that selects it and without TLS (the client's mesh TLS passes through to the
/// destination's sidecar).
// Boxed as [`clusters`] holds them (see there): below clippy's size for the lint, yet
// sorted by the thousand.
#[allow(clippy::vec_box)]
fn sni_dnat_clusters(ctx: &ProxyContext, service_clusters: &[Box<Cluster>]) -> Vec<Box<Cluster>> {
    service_clusters
        .iter()
        .filter_map(|c| {
            let (_, port, subset, host) = naming::parse_cluster(&c.name)?;
            if ctx.snap.services.get(host)?.mesh_external {
                return None;
            }
            let name = naming::sni_dnat_cluster(port, subset, host);
            let mut c = c.clone();
            if let Some(eds) = c.eds_cluster_config.as_mut() {
                eds.service_name = name.clone();
            }
            c.name = name;
            c.transport_socket = None;
            c.transport_socket_matches.clear();
            Some(c)
        })
        .collect()
}

/// The proxy's clusters, in name order, each in its own box. A `Cluster` is 3.3 KB
/// (every field of Envoy's message, most of them empty): a vector of 30,000 of them
/// was 100 MB of fresh memory faulted in for each translation, and sorting it moved
/// every cluster about three times. Boxed, the vector is pointers, the sort moves
/// those, and a cluster's memory is the allocator's to reuse once it is encoded.
pub fn clusters(ctx: &ProxyContext) -> Vec<Box<Cluster>> {
    let services = match ctx.proxy.kind {
        ProxyKind::Sidecar => ctx.scope.services(),
        ProxyKind::Router => router_services(ctx),
    };
    // A port has a cluster per subset besides its own (commonly two or three).
    let mut out: Vec<Box<Cluster>> =
        Vec::with_capacity(3 * services.iter().map(|s| s.ports.len()).sum::<usize>() + 8);
    for svc in &services {
        for port in &svc.ports {
            if port.protocol == Protocol::Udp {
                continue;
            }
            out.extend(service_port_clusters(ctx, svc, port));
        }
    }
    // istio-proxy learns its upstream peer over every outbound cluster (istiod's cluster
    // builder adds the exchange to each service cluster, passthrough and DFP cluster).
    if ctx.proxy.kind == ProxyKind::Router && super::gateway::has_auto_passthrough(ctx) {
        let dnat = sni_dnat_clusters(ctx, &out);
        out.extend(dnat);
    }
    let istio_proxy = ctx.is_istio_proxy();
    if istio_proxy {
        out.iter_mut().for_each(|c| super::peer::cluster_mx(c));
    }
    if ctx.proxy.kind == ProxyKind::Sidecar {
        out.extend(inbound_clusters(ctx).into_iter().map(Box::new));
    }
    // JWKS fetched by jwt_authn: on sidecars and on gateways that RequestAuthentication
    // selects.
    out.extend(super::jwt::clusters(ctx).into_iter().map(Box::new));
    out.push(Box::new(blackhole(ctx)));
    // A gateway forwards only to what its routes name: no way out of the mesh (as istiod).
    if ctx.proxy.kind == ProxyKind::Sidecar {
        let mut p = passthrough(ctx);
        if istio_proxy {
            super::peer::cluster_mx(&mut p);
        }
        out.push(Box::new(p));
        if super::dfp::enabled(ctx) {
            let mut d = super::dfp::cluster(ctx);
            if istio_proxy {
                super::peer::cluster_mx(&mut d);
            }
            out.push(Box::new(d));
        }
    }
    if ctx.proxy.kind == ProxyKind::Sidecar && ctx.intercepted() {
        out.push(Box::new(inbound_passthrough(ctx)));
    }
    // Boxed, the sort moves pointers; it is stable, so the first of a name stays.
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    if istio_proxy {
        istio_proxy_stat_names(&mut out);
    }
    super::envoyfilter::clusters(ctx, &mut out);
    out
}

/// istio-proxy's bootstrap (pilot-agent's) finds a cluster's name in its stats by a
/// trailing `;` (`cluster.NAME;.upstream_rq_total` → tag `cluster_name`), so istiod names
/// every cluster's stats that way; the inbound passthrough counts as the passthrough.
/// Upstream Envoy keeps the plain names its own default tags read.
fn istio_proxy_stat_names(out: &mut [Box<Cluster>]) {
    for c in out {
        if c.alt_stat_name.is_empty() {
            let name = if c.name == naming::INBOUND_PASSTHROUGH {
                naming::PASSTHROUGH
            } else {
                &c.name
            };
            c.alt_stat_name = format!("{name};");
        }
    }
}

/// The default cluster and one per DestinationRule subset for one service port.
/// (Boxed as made: a `Cluster` is 3.3 KB, and the caller gathers 30,000 of them.)
pub fn service_port_clusters(ctx: &ProxyContext, svc: &Service, port: &Port) -> Vec<Box<Cluster>> {
    let dr = ctx
        .snap
        .destination_rule(&ctx.proxy.namespace, ctx.labels, svc);
    let mut out = Vec::new();
    let top = dr.and_then(|d| d.spec.traffic_policy.as_ref());
    let rule = dr.map(|d| &d.key);
    let policy = policy_for_port(top, None, port.port);
    out.push(Box::new(outbound_cluster(
        ctx,
        svc,
        port,
        ("", rule),
        policy.as_ref(),
        None,
    )));
    if let Some(dr) = dr {
        for subset in &dr.spec.subsets {
            let merged = policy_for_port(top, subset.traffic_policy.as_ref(), port.port);
            out.push(Box::new(outbound_cluster(
                ctx,
                svc,
                port,
                (&subset.name, rule),
                merged.as_ref(),
                Some(&subset.labels),
            )));
        }
    }
    out
}

/// The traffic policy in force for one cluster of this client (see [`policy_for_port`]).
pub(crate) fn effective_policy(
    ctx: &ProxyContext,
    svc: &Service,
    port: u16,
    subset: &str,
) -> Option<TrafficPolicy> {
    let dr = ctx
        .snap
        .destination_rule(&ctx.proxy.namespace, ctx.labels, svc)?;
    let sub = dr.subset(subset).and_then(|s| s.traffic_policy.as_ref());
    policy_for_port(dr.spec.traffic_policy.as_ref(), sub, port)
}

/// A policy's settings for one port, as istiod reads `portLevelSettings`: an entry for the
/// port replaces the policy's load balancer, connection pool, outlier detection and TLS
/// wholesale (a field it leaves out takes Envoy's default, not the policy's), and
/// nothing else of the policy applies. Whether such an entry was found, too.
fn port_level(policy: &TrafficPolicy, port: u16) -> (TrafficPolicy, bool) {
    match policy.port_level_settings.iter().find(|pl| {
        pl.port
            .as_ref()
            .is_some_and(|x| x.number == u32::from(port))
    }) {
        Some(pl) => (
            TrafficPolicy {
                load_balancer: pl.load_balancer.clone(),
                connection_pool: pl.connection_pool.clone(),
                outlier_detection: pl.outlier_detection.clone(),
                tls: pl.tls.clone(),
                ..Default::default()
            },
            true,
        ),
        None => (
            TrafficPolicy {
                port_level_settings: Vec::new(),
                ..policy.clone()
            },
            false,
        ),
    }
}

/// The policy of a DestinationRule (`top`) and one of its subsets for `port`, merged as
/// istiod merges them: each resolved for the port first; then the subset's load balancer,
/// connection pool, outlier detection and TLS replace the rule's where the subset sets
/// them (all four when the subset has settings for the port), and its tunnel, PROXY
/// protocol and retry budget where it sets them.
pub(crate) fn policy_for_port(
    top: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
    port: u16,
) -> Option<TrafficPolicy> {
    let original = top.map(|t| port_level(t, port).0);
    let Some(subset) = subset else {
        return original;
    };
    let (sub, port_level_found) = port_level(subset, port);
    let Some(mut merged) = original else {
        return Some(sub);
    };
    let wholesale = port_level_found;
    if sub.connection_pool.is_some() || wholesale {
        merged.connection_pool = sub.connection_pool;
    }
    if sub.outlier_detection.is_some() || wholesale {
        merged.outlier_detection = sub.outlier_detection;
    }
    if sub.load_balancer.is_some() || wholesale {
        merged.load_balancer = sub.load_balancer;
    }
    if sub.tls.is_some() || wholesale {
        merged.tls = sub.tls;
    }
    if sub.tunnel.is_some() {
        merged.tunnel = sub.tunnel;
    }
    if sub.proxy_protocol.is_some() {
        merged.proxy_protocol = sub.proxy_protocol;
    }
    if sub.retry_budget.is_some() {
        merged.retry_budget = sub.retry_budget;
    }
    Some(merged)
}

fn discovery(t: DiscoveryType) -> Option<ClusterDiscoveryType> {
    Some(ClusterDiscoveryType::Type(t as i32))
}

fn default_circuit_breakers() -> Thresholds {
    // istiod's defaults: effectively unlimited (Envoy's 3 parallel retries would trip
    // during pod churn). No `remaining_*` gauges: istiod stopped tracking them
    // (DISABLE_TRACK_REMAINING_CB_METRICS), they cost a gauge set per cluster.
    let max = pb::u32v(u32::MAX);
    Thresholds {
        max_connections: max,
        max_pending_requests: max,
        max_requests: max,
        max_retries: max,
        ..Default::default()
    }
}

/// `(subset, rule)`: the subset's name ("" for the service's default cluster) and the
/// DestinationRule it comes from.
fn outbound_cluster(
    ctx: &ProxyContext,
    svc: &Service,
    port: &Port,
    (subset, rule): (&str, Option<&ObjectKey>),
    policy: Option<&TrafficPolicy>,
    subset_labels: Option<&istio::Labels>,
) -> Cluster {
    let name = naming::outbound_cluster(port.port, subset, &svc.hostname);
    // (Already resolved for the port and subset: policy_for_port.)
    let mesh = &ctx.snap.mesh;
    let mut c = Cluster {
        name: name.clone(),
        connect_timeout: Some(pb::duration(mesh.connect_timeout.as_std())),
        lb_policy: LbPolicy::LeastRequest as i32,
        circuit_breakers: Some(cl::CircuitBreakers {
            thresholds: vec![default_circuit_breakers()],
            ..Default::default()
        }),
        // istiod sets no panic threshold (0): ejected or unhealthy hosts never get
        // traffic back because too few healthy ones are left.
        common_lb_config: Some(cl::cluster::CommonLbConfig {
            healthy_panic_threshold: Some(envoy_types::pb::envoy::r#type::v3::Percent {
                value: 0.0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    match effective_resolution(ctx, svc) {
        Resolution::ClientSideLb => {
            c.cluster_discovery_type = discovery(DiscoveryType::Eds);
            c.eds_cluster_config = Some(cl::cluster::EdsClusterConfig {
                eds_config: Some(pb::ads_config_source()),
                service_name: name.clone(),
            });
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            c.cluster_discovery_type = discovery(if svc.resolution == Resolution::Dns {
                DiscoveryType::StrictDns
            } else {
                DiscoveryType::LogicalDns
            });
            c.dns_lookup_family = cl::cluster::DnsLookupFamily::V4Only as i32;
            c.typed_dns_resolver_config = Some(cares_resolver());
            // The mesh's refresh rate applies when a lookup fails; otherwise the record's
            // own TTL decides, as istiod configures every DNS cluster. (Envoy deprecates
            // these fields for the DNS cluster extension, but still honours them, and
            // older proxies know only them.)
            #[allow(deprecated)]
            {
                c.dns_refresh_rate = Some(pb::duration(mesh.dns_refresh_rate.as_std()));
                c.respect_dns_ttl = true;
                c.dns_jitter = Some(pb::duration(std::time::Duration::from_millis(100)));
            }
            // DNS clusters carry their endpoints inline: Envoy resolves them itself.
            let mut cla =
                super::endpoint::load_assignment(ctx.snap, &name, svc, port.port, subset_labels);
            super::locality::apply(ctx, &mut cla);
            c.load_assignment = Some(cla);
        }
        Resolution::Passthrough => {
            c.cluster_discovery_type = discovery(DiscoveryType::OriginalDst);
            c.lb_policy = LbPolicy::ClusterProvided as i32;
        }
    }
    if port.protocol.is_http2() {
        c.typed_extension_protocol_options = http2_options(None);
    } else if port.protocol == Protocol::Unsupported {
        // Sniffed ports may carry HTTP/1.1 or HTTP/2: speak what the client spoke.
        c.typed_extension_protocol_options = downstream_protocol_options();
    }
    let tls_mode = policy.and_then(|p| p.tls.as_ref()).map(|t| t.mode);
    c.metadata = Some(istio_metadata(svc, subset, rule, tls_mode));
    if let Some(p) = policy {
        apply_policy(&mut c, p, port);
    }
    if mesh_h2_upgrade(mesh, policy, port) {
        let http = policy
            .and_then(|p| p.connection_pool.as_ref())
            .and_then(|c| c.http.as_ref());
        // HTTP/2 upstream, keeping the connection settings the rule already set (idle
        // timeout, connection age).
        let existing = c
            .typed_extension_protocol_options
            .get(HTTP_PROTOCOL_OPTIONS)
            .and_then(|a| {
                <http_opts::HttpProtocolOptions as prost::Message>::decode(a.value.as_slice()).ok()
            });
        let mut h2 = http2_options(http);
        if let Some(existing) = existing
            && let Some(any) = h2.get_mut(HTTP_PROTOCOL_OPTIONS)
            && let Ok(mut o) =
                <http_opts::HttpProtocolOptions as prost::Message>::decode(any.value.as_slice())
        {
            if existing.common_http_protocol_options.is_some() {
                o.common_http_protocol_options = existing.common_http_protocol_options;
            }
            o.upstream_http_protocol_options = existing.upstream_http_protocol_options;
            *any = pb::any(&o);
        }
        c.typed_extension_protocol_options = h2;
    }
    if super::locality::weighted(ctx, policy) {
        // Locality weights in EDS count only with locality-weighted load balancing.
        let common = c.common_lb_config.get_or_insert_with(Default::default);
        common.locality_config_specifier = Some(
            cl::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                Default::default(),
            ),
        );
    }
    apply_tls(
        ctx,
        &mut c,
        svc,
        port,
        subset,
        policy.and_then(|p| p.tls.as_ref()),
    );
    if let Some(pp) = policy.and_then(|p| p.proxy_protocol.as_ref()) {
        wrap_proxy_protocol(&mut c, pp);
    }
    c
}

/// DestinationRule `proxyProtocol`: every upstream connection starts with a PROXY
/// protocol header (v1 or v2) carrying the client's addresses, then the transport the
/// cluster would use anyway (plaintext or TLS, for each auto-mTLS match too).
fn wrap_proxy_protocol(c: &mut Cluster, pp: &istio::ProxyProtocol) {
    use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
    let version = match pp.version {
        istio::ProxyProtocolVersion::V1 => core::proxy_protocol_config::Version::V1,
        istio::ProxyProtocolVersion::V2 => core::proxy_protocol_config::Version::V2,
    };
    let wrap = |inner: Option<core::TransportSocket>| {
        super::tls::transport_socket(
            "envoy.transport_sockets.upstream_proxy_protocol",
            &ProxyProtocolUpstreamTransport {
                config: Some(core::ProxyProtocolConfig {
                    version: version as i32,
                    ..Default::default()
                }),
                transport_socket: Some(inner.unwrap_or_else(super::tls::raw_buffer)),
                ..Default::default()
            },
        )
    };
    for m in &mut c.transport_socket_matches {
        m.transport_socket = Some(wrap(m.transport_socket.take()));
    }
    c.transport_socket = Some(wrap(c.transport_socket.take()));
}

/// The identities a service's endpoints run as, for verifying them over mTLS.
fn peer_identities(ctx: &ProxyContext, svc: &Service) -> Vec<String> {
    let mut ids: Vec<String> = svc.subject_alt_names.clone();
    if let Some(eps) = ctx.snap.endpoints.get(&svc.hostname) {
        for inst in &eps.instances {
            if !inst.service_account.is_empty() && !inst.namespace.is_empty() {
                ids.push(format!(
                    "spiffe://{}/ns/{}/sa/{}",
                    ctx.snap.mesh.trust_domain, inst.namespace, inst.service_account
                ));
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// How this proxy resolves `svc`'s endpoints. A headless Kubernetes service passes
/// connections to the pod address the client dialled — which only an intercepted
/// sidecar knows (its listeners restore the original destination). Gateways, proxyless
/// gRPC clients and sidecars without iptables balance over its pods through EDS, as
/// istiod serves gateways.
pub(crate) fn effective_resolution(ctx: &ProxyContext, svc: &Service) -> Resolution {
    let original_destination = ctx.proxy.kind == crate::model::proxy::ProxyKind::Sidecar
        && ctx.intercepted()
        && !ctx.proxy.proxyless;
    if svc.kubernetes && svc.resolution == Resolution::Passthrough && !original_destination {
        return Resolution::ClientSideLb;
    }
    svc.resolution
}

/// The transport socket match of endpoints with a sidecar, made once (most clusters
/// carry it).
static TLS_MODE_ISTIO: std::sync::LazyLock<envoy_types::pb::google::protobuf::Struct> =
    std::sync::LazyLock::new(|| pb::to_struct(&json!({"tlsMode": "istio"})));

/// DestinationRule `tls` (ISTIO_MUTUAL, DISABLE) or, when it says nothing, auto mTLS:
/// mTLS to endpoints whose workloads have a sidecar (`tlsMode: istio`), plaintext to the
/// rest, as istiod decides it.
fn apply_tls(
    ctx: &ProxyContext,
    c: &mut Cluster,
    svc: &Service,
    port: &Port,
    subset: &str,
    tls: Option<&istio::ClientTlsSettings>,
) {
    use super::tls;
    // Offer exactly the protocol this cluster speaks: the server's HTTP connection
    // manager chooses its codec from the negotiated ALPN.
    let alpn: &[&str] = if port.protocol.is_http2() {
        &["h2"]
    } else if port.protocol.is_http() {
        &["http/1.1"]
    } else {
        &[]
    };
    // Over mesh mTLS the client announces itself with istio's ALPNs (istio-proxy's ALPN
    // filter does this per request): the server's chains tell mesh mTLS from the
    // application's own TLS by them. The plain protocol follows, for the server's TLS
    // context to negotiate the HTTP codec. A sniffed port is announced as HTTP: the
    // server's sniffed chains then read it with the HTTP connection manager.
    let mesh_alpn: &[&str] = if port.protocol.is_http2() {
        &["istio-h2", "h2"]
    } else if port.protocol.is_http() {
        &["istio-http/1.1", "http/1.1"]
    } else if port.protocol == Protocol::Unsupported {
        &["istio-http/1.1"]
    } else {
        &["istio-peer-exchange", "istio"]
    };
    let port = port.port;
    let sni = || {
        tls.map(|t| t.sni.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| tls::mesh_sni(port, subset, &svc.hostname))
    };
    match tls.map(|t| t.mode) {
        Some(istio::ClientTlsMode::ISTIO_MUTUAL) => {
            // Demanded by the user: configured even for a proxy without a certificate,
            // whose connections then fail closed.
            let mut ids = tls.map(|t| t.subject_alt_names.clone()).unwrap_or_default();
            if ids.is_empty() {
                ids = peer_identities(ctx, svc);
            }
            c.transport_socket = Some(tls::upstream_mtls(ctx, &sni(), &ids, mesh_alpn));
        }
        Some(istio::ClientTlsMode::SIMPLE | istio::ClientTlsMode::MUTUAL) => {
            if let Some(t) = tls {
                // An explicit SNI, else the service's host name (not the mesh SNI: this
                // talks to a server outside the mesh's identity scheme).
                let sni = if t.sni.is_empty() {
                    svc.hostname.clone()
                } else {
                    t.sni.clone()
                };
                let client = (ctx.proxy.kind == ProxyKind::Router)
                    .then(|| {
                        ctx.snap
                            .gateway_backend_certificate(&ctx.proxy.namespace, ctx.labels)
                    })
                    .flatten()
                    .map(|(ns, name)| {
                        crate::model::gateway_api::gateway_tls::credential(&ns, &name)
                    });
                c.transport_socket = Some(tls::originate(t, &sni, alpn, client.as_deref()));
                // As istiod does, whatever the port's protocol (HTTP routes may send to
                // it, as when a VirtualService moves port 80 to an HTTPS port): without
                // an explicit SNI, each HTTP request's Host names the server, and without
                // explicit SANs Envoy checks the server's certificate against that name.
                let auto_san = t.sni.is_empty()
                    && t.subject_alt_names.is_empty()
                    && t.insecure_skip_verify != Some(true);
                set_auto_sni(c, t.sni.is_empty(), auto_san, alpn == ["h2"]);
            }
        }
        Some(_) => {}
        None => {
            let auto = ctx.snap.mesh.enable_auto_mtls && ctx.proxy.mtls_ready && !svc.mesh_external;
            let resolution = effective_resolution(ctx, svc);
            if auto && resolution == Resolution::Passthrough && svc.kubernetes {
                // A headless service's connections go to whichever pod was dialled, with
                // no endpoint metadata to choose by: mTLS when every pod takes it (as
                // istiod decides for such clusters by the service's mTLS mode).
                if headless_takes_mtls(ctx, svc, port) {
                    let ids = peer_identities(ctx, svc);
                    c.transport_socket = Some(tls::upstream_mtls(ctx, &sni(), &ids, mesh_alpn));
                }
            } else if auto && resolution == Resolution::ClientSideLb {
                let ids = peer_identities(ctx, svc);
                c.transport_socket_matches = vec![
                    cl::cluster::TransportSocketMatch {
                        name: "tlsMode-istio".into(),
                        r#match: Some(TLS_MODE_ISTIO.clone()),
                        transport_socket: Some(tls::upstream_mtls(ctx, &sni(), &ids, mesh_alpn)),
                    },
                    cl::cluster::TransportSocketMatch {
                        name: "tlsMode-disabled".into(),
                        r#match: Some(Default::default()),
                        transport_socket: Some(tls::raw_buffer()),
                    },
                ];
            }
        }
    }
}

/// Whether every ready pod of a headless service runs a sidecar that accepts mTLS on
/// `port` (none: plaintext, as to a service outside the mesh).
fn headless_takes_mtls(ctx: &ProxyContext, svc: &Service, port: u16) -> bool {
    let Some(eps) = ctx.snap.endpoints.get(&svc.hostname) else {
        return false;
    };
    let pods: Vec<_> = eps.instances.iter().filter(|i| i.ready).collect();
    !pods.is_empty()
        && pods.iter().all(|i| {
            let target = i.ports.get(&port).copied().unwrap_or(port);
            i.tls_mode.as_deref() == Some("istio")
                && ctx.snap.mtls_mode(&i.namespace, &i.labels, target) != istio::MtlsMode::DISABLE
        })
}

/// `filter_metadata.istio` as istiod writes it: which service a cluster is for (read by
/// istio-proxy's stats), the DestinationRule that shaped it and its subset (read by
/// `istioctl x describe` to name the rule), and `alpn_override: "false"` when the rule's
/// own TLS settings (SIMPLE, MUTUAL) must keep the ALPN they configure.
fn istio_metadata(
    svc: &Service,
    subset: &str,
    rule: Option<&ObjectKey>,
    tls_mode: Option<istio::ClientTlsMode>,
) -> core::Metadata {
    // Built as the protobuf Struct directly: every cluster has one, and going through a
    // JSON value first allocated each map and string twice.
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
    let text = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    let object = |fields: HashMap<String, Value>| Value {
        kind: Some(Kind::StructValue(Struct { fields })),
    };
    let service = object(HashMap::from([
        ("host".to_string(), text(&svc.hostname)),
        ("name".to_string(), text(&svc.name)),
        ("namespace".to_string(), text(&svc.namespace)),
    ]));
    let mut m: HashMap<String, Value> = HashMap::with_capacity(4);
    m.insert(
        "services".to_string(),
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![service],
            })),
        },
    );
    if let Some(rule) = rule {
        m.insert(
            "config".to_string(),
            text(&format!(
                "/apis/networking.istio.io/v1/namespaces/{}/destination-rule/{}",
                rule.namespace, rule.name
            )),
        );
        if matches!(
            tls_mode,
            Some(istio::ClientTlsMode::SIMPLE | istio::ClientTlsMode::MUTUAL)
        ) {
            m.insert("alpn_override".to_string(), text("false"));
        }
    }
    if !subset.is_empty() {
        m.insert("subset".to_string(), text(subset));
    }
    core::Metadata {
        filter_metadata: HashMap::from([("istio".to_string(), Struct { fields: m })]),
        ..Default::default()
    }
}

fn http2_options(settings: Option<&istio::HttpSettings>) -> HashMap<String, Any> {
    let max_streams = settings
        .and_then(|h| h.max_concurrent_streams)
        .filter(|n| *n > 0)
        .map(|n| n as u32)
        // istiod's default: effectively unlimited streams per connection.
        .unwrap_or(1_073_741_824);
    let opts = http_opts::HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_opts::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_opts::http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_opts::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            core::Http2ProtocolOptions {
                                max_concurrent_streams: pb::u32v(max_streams),
                                connection_keepalive: settings
                                    .and_then(|h| h.http2_keep_alive.as_ref())
                                    .map(|k| core::KeepaliveSettings {
                                        interval: k.interval.map(|d| pb::duration(d.as_std())),
                                        timeout: k.timeout.map(|d| pb::duration(d.as_std())),
                                        ..Default::default()
                                    }),
                                ..Default::default()
                            },
                        ),
                    ),
                },
            ),
        ),
        common_http_protocol_options: common_http_options(settings),
        ..Default::default()
    };
    HashMap::from([(HTTP_PROTOCOL_OPTIONS.to_string(), pb::any(&opts))])
}

/// Sets `auto_sni` / `auto_san_validation` in the cluster's HTTP protocol options,
/// creating them (HTTP/1.1 or HTTP/2, as the cluster speaks) when absent.
fn set_auto_sni(c: &mut Cluster, auto_sni: bool, auto_san: bool, h2: bool) {
    if !auto_sni && !auto_san {
        return;
    }
    let mut opts = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
        .and_then(|a| {
            <http_opts::HttpProtocolOptions as prost::Message>::decode(a.value.as_slice()).ok()
        })
        .unwrap_or_else(|| {
            use http_opts::http_protocol_options::explicit_http_config::ProtocolConfig;
            http_opts::HttpProtocolOptions {
                upstream_protocol_options: Some(
                    http_opts::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                        http_opts::http_protocol_options::ExplicitHttpConfig {
                            protocol_config: Some(if h2 {
                                ProtocolConfig::Http2ProtocolOptions(Default::default())
                            } else {
                                ProtocolConfig::HttpProtocolOptions(Default::default())
                            }),
                        },
                    ),
                ),
                ..Default::default()
            }
        });
    let up = opts
        .upstream_http_protocol_options
        .get_or_insert_with(Default::default);
    up.auto_sni |= auto_sni;
    up.auto_san_validation |= auto_san;
    c.typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_string(), pb::any(&opts));
}

fn downstream_protocol_options() -> HashMap<String, Any> {
    static CACHED: std::sync::OnceLock<HashMap<String, Any>> = std::sync::OnceLock::new();
    CACHED
        .get_or_init(downstream_protocol_options_uncached)
        .clone()
}

fn downstream_protocol_options_uncached() -> HashMap<String, Any> {
    let opts = downstream_http_options(Some(core::Http2ProtocolOptions {
        max_concurrent_streams: pb::u32v(1_073_741_824),
        ..Default::default()
    }));
    HashMap::from([(HTTP_PROTOCOL_OPTIONS.to_string(), pb::any(&opts))])
}

/// Passthrough clusters speak what the client spoke, and close pooled connections idle
/// for 5 minutes (istiod's choice; Envoy's default is an hour) since their destinations
/// are arbitrary.
fn passthrough_protocol_options() -> HashMap<String, Any> {
    static CACHED: std::sync::OnceLock<HashMap<String, Any>> = std::sync::OnceLock::new();
    CACHED
        .get_or_init(|| {
            let mut opts = downstream_http_options(Some(core::Http2ProtocolOptions {
                max_concurrent_streams: pb::u32v(1_073_741_824),
                ..Default::default()
            }));
            opts.common_http_protocol_options = Some(core::HttpProtocolOptions {
                idle_timeout: pb::secs(300),
                ..Default::default()
            });
            HashMap::from([(HTTP_PROTOCOL_OPTIONS.to_string(), pb::any(&opts))])
        })
        .clone()
}

/// An inbound cluster of a sniffed port forwards to the application in the protocol the
/// client used (HTTP/1.1, or h2c and gRPC as HTTP/2), as istiod configures it.
fn inbound_sniffed_protocol_options() -> HashMap<String, Any> {
    static CACHED: std::sync::OnceLock<HashMap<String, Any>> = std::sync::OnceLock::new();
    CACHED
        .get_or_init(|| {
            let opts = downstream_http_options(Some(core::Http2ProtocolOptions::default()));
            HashMap::from([(HTTP_PROTOCOL_OPTIONS.to_string(), pb::any(&opts))])
        })
        .clone()
}

fn downstream_http_options(
    http2: Option<core::Http2ProtocolOptions>,
) -> http_opts::HttpProtocolOptions {
    http_opts::HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_opts::http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                http_opts::http_protocol_options::UseDownstreamHttpConfig {
                    http_protocol_options: Some(Default::default()),
                    http2_protocol_options: http2,
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

fn common_http_options(
    settings: Option<&istio::HttpSettings>,
) -> Option<core::HttpProtocolOptions> {
    let s = settings?;
    let mut o = core::HttpProtocolOptions::default();
    let mut set = false;
    if let Some(t) = s.idle_timeout {
        o.idle_timeout = Some(pb::duration(t.as_std()));
        set = true;
    }
    if let Some(n) = s.max_requests_per_connection.filter(|n| *n > 0) {
        o.max_requests_per_connection = pb::u32v(n as u32);
        set = true;
    }
    set.then_some(o)
}

/// DestinationRule `retryBudget` → Envoy's retry budget (retries as a share of active
/// requests, with a floor).
fn retry_budget(b: &istio::RetryBudget) -> cl::circuit_breakers::thresholds::RetryBudget {
    cl::circuit_breakers::thresholds::RetryBudget {
        budget_percent: b
            .percent
            .map(|v| envoy_types::pb::envoy::r#type::v3::Percent { value: v }),
        min_retry_concurrency: b.min_retry_concurrency.and_then(pb::u32v),
        budget_interval: b.budget_interval.map(|d| pb::duration(d.as_std())),
    }
}

/// Edits the common HTTP protocol options of the cluster's HTTP protocol options,
/// creating them (HTTP/1.1 explicit) when absent.
fn set_common_http(c: &mut Cluster, f: impl FnOnce(&mut core::HttpProtocolOptions)) {
    let mut opts = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
        .and_then(|a| <http_opts::HttpProtocolOptions as prost::Message>::decode(a.value.as_slice()).ok())
        .unwrap_or_else(|| http_opts::HttpProtocolOptions {
            upstream_protocol_options: Some(
                http_opts::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    http_opts::http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            http_opts::http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                                Default::default(),
                            ),
                        ),
                    },
                ),
            ),
            ..Default::default()
        });
    let common = opts
        .common_http_protocol_options
        .get_or_insert_with(Default::default);
    f(common);
    c.typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_string(), pb::any(&opts));
}

/// Mesh config `h2UpgradePolicy: UPGRADE`: an HTTP/1.1 port goes to the upstream over
/// HTTP/2, unless the DestinationRule decides (`h2UpgradePolicy` other than DEFAULT, or
/// `useClientProtocol`). Ports that already speak HTTP/2, and sniffed ports, keep
/// their protocol (as in istiod, the upgrade never replaces a protocol choice).
fn mesh_h2_upgrade(
    mesh: &crate::model::mesh::MeshConfig,
    p: Option<&TrafficPolicy>,
    port: &Port,
) -> bool {
    if mesh.h2_upgrade_policy != istio::H2UpgradePolicy::UPGRADE
        || !port.protocol.is_http()
        || port.protocol.is_http2()
    {
        return false;
    }
    let http = p
        .and_then(|p| p.connection_pool.as_ref())
        .and_then(|c| c.http.as_ref());
    let dr_says = http
        .and_then(|h| h.h2_upgrade_policy)
        .is_some_and(|h| h != istio::H2UpgradePolicy::DEFAULT);
    !dr_says && http.and_then(|h| h.use_client_protocol) != Some(true)
}

fn apply_policy(c: &mut Cluster, p: &TrafficPolicy, port: &Port) {
    // An original-destination cluster picks no host itself: Envoy refuses any other
    // load balancer there (istiod leaves it alone too).
    let original_dst = c.lb_policy == LbPolicy::ClusterProvided as i32;
    if let Some(lb) = p.load_balancer.as_ref().filter(|_| !original_dst) {
        if let Some(simple) = lb.simple {
            match simple {
                SimpleLb::ROUND_ROBIN => c.lb_policy = LbPolicy::RoundRobin as i32,
                SimpleLb::RANDOM => c.lb_policy = LbPolicy::Random as i32,
                SimpleLb::LEAST_CONN | SimpleLb::LEAST_REQUEST | SimpleLb::UNSPECIFIED => {
                    c.lb_policy = LbPolicy::LeastRequest as i32
                }
                SimpleLb::PASSTHROUGH => {
                    c.cluster_discovery_type = discovery(DiscoveryType::OriginalDst);
                    c.lb_policy = LbPolicy::ClusterProvided as i32;
                    c.eds_cluster_config = None;
                    c.load_assignment = None;
                }
            }
        }
        if let Some(ch) = &lb.consistent_hash {
            if let Some(m) = &ch.maglev {
                c.lb_policy = LbPolicy::Maglev as i32;
                c.lb_config = Some(cl::cluster::LbConfig::MaglevLbConfig(
                    cl::cluster::MaglevLbConfig {
                        table_size: m
                            .table_size
                            .map(|t| envoy_types::pb::google::protobuf::UInt64Value { value: t }),
                    },
                ));
            } else {
                c.lb_policy = LbPolicy::RingHash as i32;
                let min = ch
                    .ring_hash
                    .as_ref()
                    .and_then(|r| r.minimum_ring_size)
                    .or(ch.minimum_ring_size)
                    .unwrap_or(1024);
                c.lb_config = Some(cl::cluster::LbConfig::RingHashLbConfig(
                    cl::cluster::RingHashLbConfig {
                        minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value {
                            value: min,
                        }),
                        ..Default::default()
                    },
                ));
            }
        }
        if let Some(w) = lb
            .warmup_duration_secs
            .or_else(|| lb.warmup.as_ref().and_then(|w| w.duration))
            && c.lb_policy == LbPolicy::RoundRobin as i32
        {
            c.lb_config = Some(cl::cluster::LbConfig::RoundRobinLbConfig(
                cl::cluster::RoundRobinLbConfig {
                    slow_start_config: Some(cl::cluster::SlowStartConfig {
                        slow_start_window: Some(pb::duration(w.as_std())),
                        // warmup.aggression: how fast weight grows (1 = linearly).
                        aggression: lb.warmup.as_ref().and_then(|w| w.aggression).map(|a| {
                            core::RuntimeDouble {
                                default_value: a,
                                runtime_key: "upstream.slow_start.aggression".into(),
                            }
                        }),
                        // warmup.minimumPercent: the weight a new endpoint starts from.
                        min_weight_percent: lb
                            .warmup
                            .as_ref()
                            .and_then(|w| w.minimum_percent)
                            .map(|v| envoy_types::pb::envoy::r#type::v3::Percent { value: v }),
                    }),
                },
            ));
        }
    }
    if let Some(pool) = &p.connection_pool {
        let mut t = default_circuit_breakers();
        if let Some(tcp) = &pool.tcp {
            if let Some(n) = tcp.max_connections.filter(|n| *n > 0) {
                t.max_connections = pb::u32v(n as u32);
            }
            if let Some(ct) = tcp.connect_timeout {
                c.connect_timeout = Some(pb::duration(ct.as_std()));
            }
            if let Some(ka) = &tcp.tcp_keepalive {
                c.upstream_connection_options = Some(cl::UpstreamConnectionOptions {
                    tcp_keepalive: Some(core::TcpKeepalive {
                        keepalive_probes: ka.probes.and_then(pb::u32v),
                        keepalive_time: ka.time.and_then(|d| pb::u32v(d.as_std().as_secs() as u32)),
                        keepalive_interval: ka
                            .interval
                            .and_then(|d| pb::u32v(d.as_std().as_secs() as u32)),
                    }),
                    ..Default::default()
                });
            }
        }
        if let Some(http) = &pool.http {
            if let Some(n) = http.http1_max_pending_requests.filter(|n| *n > 0) {
                t.max_pending_requests = pb::u32v(n as u32);
            }
            if let Some(n) = http.http2_max_requests.filter(|n| *n > 0) {
                t.max_requests = pb::u32v(n as u32);
            }
            if let Some(n) = http.max_retries.filter(|n| *n > 0) {
                t.max_retries = pb::u32v(n as u32);
            }
            let upgrade = http.h2_upgrade_policy == Some(istio::H2UpgradePolicy::UPGRADE)
                && port.protocol.is_http();
            if port.protocol.is_http2() || upgrade {
                c.typed_extension_protocol_options = http2_options(Some(http));
            } else if let Some(common) = common_http_options(Some(http)) {
                let opts = http_opts::HttpProtocolOptions {
                    common_http_protocol_options: Some(common),
                    upstream_protocol_options: Some(
                        http_opts::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                            http_opts::http_protocol_options::ExplicitHttpConfig {
                                protocol_config: Some(
                                    http_opts::http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                                        Default::default(),
                                    ),
                                ),
                            },
                        ),
                    ),
                    ..Default::default()
                };
                if port.protocol.is_http() {
                    c.typed_extension_protocol_options =
                        HashMap::from([(HTTP_PROTOCOL_OPTIONS.to_string(), pb::any(&opts))]);
                }
            }
        }
        if pool.http.as_ref().and_then(|h| h.use_client_protocol) == Some(true)
            && port.protocol.is_http()
        {
            // Speak upstream what the client spoke downstream.
            let common = common_http_options(pool.http.as_ref());
            let mut opts = downstream_protocol_options_uncached();
            if let Some(any) = opts.get_mut(HTTP_PROTOCOL_OPTIONS)
                && let Ok(mut o) =
                    <http_opts::HttpProtocolOptions as prost::Message>::decode(any.value.as_slice())
            {
                o.common_http_protocol_options = common;
                *any = pb::any(&o);
            }
            c.typed_extension_protocol_options = opts;
        }
        if let Some(tcp) = &pool.tcp
            && let Some(d) = tcp.max_connection_duration
            && port.protocol.is_http()
        {
            // Envoy limits connection age in the HTTP protocol options.
            set_common_http(c, |o| {
                o.max_connection_duration = Some(pb::duration(d.as_std()))
            });
        }
        t.retry_budget = p.retry_budget.as_ref().map(retry_budget);
        c.circuit_breakers = Some(cl::CircuitBreakers {
            thresholds: vec![t],
            ..Default::default()
        });
    } else if let Some(b) = &p.retry_budget {
        let mut t = default_circuit_breakers();
        t.retry_budget = Some(retry_budget(b));
        c.circuit_breakers = Some(cl::CircuitBreakers {
            thresholds: vec![t],
            ..Default::default()
        });
    }
    if let Some(od) = &p.outlier_detection {
        let mut o = cl::OutlierDetection {
            // istiod turns success-rate ejection off: it surprises users with few hosts.
            enforcing_success_rate: pb::u32v(0),
            ..Default::default()
        };
        // istiod's mapping: a count left unset keeps Envoy's default (5 consecutive
        // 5xx, enforced), 0 turns that kind of ejection off, N enforces N.
        match od.consecutive_5xx_errors {
            Some(0) => {
                o.consecutive_5xx = pb::u32v(0);
                o.enforcing_consecutive_5xx = pb::u32v(0);
            }
            Some(n) => {
                o.consecutive_5xx = pb::u32v(n);
                o.enforcing_consecutive_5xx = pb::u32v(100);
            }
            None => {}
        }
        match od.consecutive_gateway_errors {
            Some(0) => {
                o.consecutive_gateway_failure = pb::u32v(0);
                o.enforcing_consecutive_gateway_failure = pb::u32v(0);
            }
            Some(n) => {
                o.consecutive_gateway_failure = pb::u32v(n);
                o.enforcing_consecutive_gateway_failure = pb::u32v(100);
            }
            None => {}
        }
        // Local-origin failures count apart only when they are split from the
        // upstream's own errors.
        if od.split_external_local_origin_errors == Some(true) {
            o.split_external_local_origin_errors = true;
            o.enforcing_local_origin_success_rate = pb::u32v(0);
            if let Some(n) = od.consecutive_local_origin_failures.filter(|n| *n > 0) {
                o.consecutive_local_origin_failure = pb::u32v(n);
                o.enforcing_consecutive_local_origin_failure = pb::u32v(100);
            }
        }
        if let Some(i) = od.interval {
            o.interval = Some(pb::duration(i.as_std()));
        }
        if let Some(b) = od.base_ejection_time {
            o.base_ejection_time = Some(pb::duration(b.as_std()));
        }
        if let Some(m) = od.max_ejection_percent.filter(|m| *m > 0) {
            o.max_ejection_percent = pb::u32v(m.min(100) as u32);
        }
        // minHealthPercent (0 when unset): below it Envoy would spread traffic over
        // ejected hosts too ("panic"); istiod disables that by default.
        let min_health = od.min_health_percent.unwrap_or(0).clamp(0, 100);
        c.common_lb_config
            .get_or_insert_with(Default::default)
            .healthy_panic_threshold = Some(envoy_types::pb::envoy::r#type::v3::Percent {
            value: f64::from(min_health),
        });
        c.outlier_detection = Some(o);
    }
}

fn fixed_cluster(ctx: &ProxyContext, name: &str, t: DiscoveryType) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: discovery(t),
        connect_timeout: Some(pb::duration(ctx.snap.mesh.connect_timeout.as_std())),
        ..Default::default()
    }
}

fn blackhole(ctx: &ProxyContext) -> Cluster {
    fixed_cluster(ctx, naming::BLACKHOLE, DiscoveryType::Static)
}

fn passthrough(ctx: &ProxyContext) -> Cluster {
    Cluster {
        lb_policy: LbPolicy::ClusterProvided as i32,
        circuit_breakers: Some(cl::CircuitBreakers {
            thresholds: vec![default_circuit_breakers()],
            ..Default::default()
        }),
        typed_extension_protocol_options: passthrough_protocol_options(),
        ..fixed_cluster(ctx, naming::PASSTHROUGH, DiscoveryType::OriginalDst)
    }
}

/// The source address istiod's inbound clusters bind to, so iptables lets the proxy's own
/// traffic to the application through without redirecting it again.
const INBOUND_SOURCE: &str = "127.0.0.6";

fn inbound_passthrough(ctx: &ProxyContext) -> Cluster {
    Cluster {
        upstream_bind_config: Some(core::BindConfig {
            source_address: Some(core::SocketAddress {
                address: INBOUND_SOURCE.into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..passthrough(ctx)
    }
    .with_name(naming::INBOUND_PASSTHROUGH)
}

trait WithName {
    fn with_name(self, name: &str) -> Self;
}

impl WithName for Cluster {
    fn with_name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
}

/// Where the inbound cluster for `target_port` delivers: the Sidecar ingress
/// defaultEndpoint if one is configured for the port, else the application on localhost.
pub fn inbound_endpoint(ctx: &ProxyContext, port: u16) -> (String, u16) {
    if let Some(sc) = &ctx.scope.sidecar {
        for ing in &sc.spec.ingress {
            if ing.port.number == u32::from(port)
                && let Some((host, p)) = ing.default_endpoint.rsplit_once(':')
                && let Ok(p) = p.parse::<u16>()
            {
                return (host.to_string(), p);
            }
        }
    }
    ("127.0.0.1".to_string(), port)
}

/// Envoy's c-ares resolver, sending at most 100 queries from one UDP port before it
/// opens another (istiod's PILOT_DNS_CARES_UDP_MAX_QUERIES): spoofed answers to DNS
/// clusters must then guess the port too.
fn cares_resolver() -> core::TypedExtensionConfig {
    use envoy_types::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig;
    core::TypedExtensionConfig {
        name: "envoy.network.dns_resolver.cares".into(),
        typed_config: Some(pb::any(&CaresDnsResolverConfig {
            udp_max_queries: pb::u32v(100),
            ..Default::default()
        })),
    }
}

/// The longest cleanup interval a protobuf Duration holds in nanoseconds' range (about
/// 292 years): "never" for Envoy.
const ORIGINAL_DST_NO_CLEANUP_SECS: u64 = 9_223_372_035;

fn inbound_clusters(ctx: &ProxyContext) -> Vec<Cluster> {
    let mut ports: Vec<(u16, Protocol)> = ctx
        .targets
        .iter()
        .map(|t| (t.target_port, t.port.protocol))
        .collect();
    // Sidecar ingress listeners define inbound ports too (captureMode NONE workloads).
    if let Some(sc) = &ctx.scope.sidecar {
        for ing in &sc.spec.ingress {
            ports.push((ing.port.number as u16, Protocol::parse(&ing.port.protocol)));
        }
    }
    ports.sort();
    ports.dedup_by_key(|p| p.0);
    let mut out = Vec::new();
    for (port, protocol) in ports {
        let name = naming::inbound_cluster(port);
        let (host, p) = inbound_endpoint(ctx, port);
        let mut c = Cluster {
            name: name.clone(),
            connect_timeout: Some(pb::duration(ctx.snap.mesh.connect_timeout.as_std())),
            circuit_breakers: Some(cl::CircuitBreakers {
                thresholds: vec![default_circuit_breakers()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let has_ingress = ctx.scope.sidecar.as_ref().is_some_and(|sc| {
            sc.spec
                .ingress
                .iter()
                .any(|i| i.port.number == u32::from(port))
        });
        if ctx.intercepted() && !has_ingress {
            // Redirected traffic keeps its original destination (the pod IP and port).
            c.cluster_discovery_type = discovery(DiscoveryType::OriginalDst);
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            // One host (the application): never clean it up (istiod's choice), so its
            // connection pool and circuit breaker counts survive idle periods.
            c.cleanup_interval = Some(pb::duration(std::time::Duration::from_secs(
                ORIGINAL_DST_NO_CLEANUP_SECS,
            )));
            c.upstream_bind_config = Some(core::BindConfig {
                source_address: Some(core::SocketAddress {
                    address: INBOUND_SOURCE.into(),
                    port_specifier: Some(core::socket_address::PortSpecifier::PortValue(0)),
                    ..Default::default()
                }),
                ..Default::default()
            });
        } else {
            c.cluster_discovery_type = discovery(DiscoveryType::Static);
            c.load_assignment = Some(ClusterLoadAssignment {
                cluster_name: name.clone(),
                endpoints: vec![super::endpoint::locality_endpoints(
                    "",
                    vec![super::endpoint::lb_endpoint(&host, p, 0)],
                )],
                ..Default::default()
            });
        }
        if protocol.is_http2() {
            c.typed_extension_protocol_options = http2_options(None);
        } else if protocol == Protocol::Unsupported {
            c.typed_extension_protocol_options = inbound_sniffed_protocol_options();
        }
        // Sidecar `ingress[].connectionPool`, else `inboundConnectionPool`: limits towards
        // the application.
        let pool = ctx.scope.sidecar.as_ref().and_then(|sc| {
            sc.spec
                .ingress
                .iter()
                .find(|i| i.port.number == u32::from(port))
                .and_then(|i| i.connection_pool.clone())
                .or_else(|| sc.spec.inbound_connection_pool.clone())
        });
        if let Some(pool) = pool {
            let policy = TrafficPolicy {
                connection_pool: Some(pool),
                ..Default::default()
            };
            let p = Port {
                name: String::new(),
                port,
                protocol,
            };
            apply_policy(&mut c, &policy, &p);
        }
        out.push(c);
    }
    out
}

/// Names of the EDS clusters among `clusters` (what a proxy will ask endpoints for).
pub fn eds_cluster_names(clusters: &[Cluster]) -> Vec<String> {
    clusters
        .iter()
        .filter(|c| {
            matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32)
        })
        .map(|c| c.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metadata built directly is the Struct of the JSON istiod's shape is written
    /// in (the form `istioctl x describe` and istio-proxy's stats read).
    #[test]
    fn istio_metadata_is_the_struct_of_its_json() {
        let snap = crate::model::testing::snapshot(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: web}\nspec: {ports: [{name: http, port: 80}]}\n",
            None,
        );
        let svc = snap
            .services
            .get("a.web.svc.cluster.local")
            .expect("service");
        let rule = ObjectKey {
            kind: crate::model::object::Kind::DestinationRule,
            namespace: "web".into(),
            name: "r".into(),
        };
        let services =
            json!([{"host": "a.web.svc.cluster.local", "name": "a", "namespace": "web"}]);
        let config = "/apis/networking.istio.io/v1/namespaces/web/destination-rule/r";
        let cases = [
            ("", None, None, json!({"services": services})),
            (
                "v1",
                Some(&rule),
                Some(istio::ClientTlsMode::ISTIO_MUTUAL),
                json!({"services": services, "config": config, "subset": "v1"}),
            ),
            (
                "",
                Some(&rule),
                Some(istio::ClientTlsMode::SIMPLE),
                json!({"services": services, "config": config, "alpn_override": "false"}),
            ),
        ];
        for (subset, rule, tls, want) in cases {
            let got = istio_metadata(svc, subset, rule, tls);
            assert_eq!(
                got.filter_metadata.get("istio"),
                Some(&pb::to_struct(&want)),
                "{subset} {rule:?} {tls:?}"
            );
        }
    }
}
