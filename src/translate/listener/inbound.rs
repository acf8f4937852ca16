//! The inbound side: `virtualInbound` (15006) with chains per port and mTLS mode, the
//! security filters on them, and the listeners Sidecar ingress binds.

use super::*;

/// Inbound ports: those of the workload's Sidecar ingress listeners when it has any
/// (they replace the services' ports, as in istiod), else (target port, protocol) of the
/// services this workload serves.
pub(super) fn inbound_ports(ctx: &ProxyContext) -> Vec<(u16, Protocol)> {
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

pub(super) fn inbound_chain(ctx: &ProxyContext, port: u16, protocol: Protocol) -> Vec<Filter> {
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
pub(super) fn decode_json<T: prost::Message + Default>(
    type_name: &str,
    v: &serde_json::Value,
) -> Option<T> {
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
pub(super) fn inbound_security_filters(ctx: &ProxyContext) -> Vec<HttpFilter> {
    let mut out: Vec<HttpFilter> = Vec::new();
    if let Some(jwt) = super::super::jwt::filter(ctx) {
        out.extend(decode_json::<HttpFilter>(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
            &jwt,
        ));
    }
    out.extend(
        super::super::authz::for_workload(ctx, false)
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
pub(super) fn inbound_chains(
    ctx: &ProxyContext,
    bind: &str,
    port: u16,
    protocol: Protocol,
    base: FilterChainMatch,
) -> (Vec<FilterChain>, bool) {
    use crate::model::istio::MtlsMode;
    let mode = ctx.snap.mtls_mode(&ctx.proxy.namespace, ctx.labels, port);
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
            transport_socket: super::super::tls::gateway_server(ctx, t, alpn, false),
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
            transport_socket: o.terminate.then(|| super::super::tls::downstream_mtls(ctx)),
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
pub(super) enum PortClass {
    Http,
    Sniffed,
    Tcp,
}

/// One inbound filter chain of a port: what it matches and how it handles it.
pub(super) struct ChainOption {
    transport: &'static str,
    alpn: &'static [&'static str],
    /// HTTP connection manager (else TCP proxy).
    http: bool,
    /// Terminates mesh mTLS.
    terminate: bool,
}

pub(super) const MTLS_HTTP_ALPN: &[&str] = &["istio-http/1.0", "istio-http/1.1", "istio-h2"];
pub(super) const ALL_MTLS_ALPN: &[&str] = &[
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
pub(super) const MTLS_TCP_ALPN: &[&str] = &["istio-peer-exchange", "istio"];
pub(super) const PLAIN_HTTP_ALPN: &[&str] = &["http/1.1", "h2c"];

/// istiod's inbound chains per mTLS mode and port class. Mesh clients announce mTLS
/// with `istio*` ALPNs, so PERMISSIVE terminates only those: other TLS is the
/// application's own and passes through untouched on TCP ports (on HTTP ports it
/// matches nothing). STRICT terminates every TLS connection (and so refuses what is not
/// mesh mTLS); on sniffed ports the ALPN tells HTTP from TCP after termination.
pub(super) fn chain_options(
    mode: crate::model::istio::MtlsMode,
    class: PortClass,
) -> Vec<ChainOption> {
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

pub(super) fn virtual_inbound(ctx: &ProxyContext) -> Listener {
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
pub(super) fn ingress_chain_bind(ctx: &ProxyContext, port: u16) -> String {
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
pub(super) fn not_these_ports(ports: &[u16]) -> ls::ListenerFilterChainMatchPredicate {
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
pub(super) fn passthrough_chains(ctx: &ProxyContext) -> (Vec<FilterChain>, bool) {
    use crate::model::istio::MtlsMode;
    let filters = || tcp_filters(ctx, naming::INBOUND_PASSTHROUGH, None);
    let chain = |transport: &str, mtls: bool| FilterChain {
        name: "virtualInbound".into(),
        filter_chain_match: (!transport.is_empty()).then(|| FilterChainMatch {
            transport_protocol: transport.into(),
            ..Default::default()
        }),
        transport_socket: mtls.then(|| super::super::tls::downstream_mtls(ctx)),
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
    let workload = ctx.snap.mtls_mode(&ctx.proxy.namespace, ctx.labels, 0);
    let mut chains = Vec::new();
    let mut tls = workload == MtlsMode::STRICT;
    // `portLevelMtls` for ports no Service declares: chains of their own.
    let declared: BTreeSet<u16> = inbound_ports(ctx).into_iter().map(|(p, _)| p).collect();
    for port in ctx
        .snap
        .port_level_mtls_ports(&ctx.proxy.namespace, ctx.labels)
    {
        if declared.contains(&port) {
            continue;
        }
        let mode = ctx.snap.mtls_mode(&ctx.proxy.namespace, ctx.labels, port);
        tls |= mode == MtlsMode::STRICT;
        chains.extend(for_mode(mode, Some(port)));
    }
    chains.extend(for_mode(workload, None));
    (chains, tls)
}

/// The network filters of a TCP chain to `cluster` on the inbound side (workload port
/// `port`): the workload's authorization (RBAC, external authorization), its connection
/// rate limit, then the TCP proxy.
pub(super) fn tcp_filters(ctx: &ProxyContext, cluster: &str, port: Option<u16>) -> Vec<Filter> {
    let mut filters: Vec<Filter> = super::super::authz::for_workload(ctx, true)
        .iter()
        .filter_map(|v| decode_json::<Filter>("envoy.config.listener.v3.Filter", v))
        .collect();
    if !ctx.snap.rate_limits.all.is_empty() {
        let at = workload_attachment(ctx, port.unwrap_or(0));
        filters.extend(super::super::ratelimit::tcp_filter(ctx, &at));
    }
    filters.push(tcp_proxy(ctx, cluster));
    filters
}

/// Where an inbound connection manager or chain for workload port `port` sits, for
/// rate limit policies: the workload and the Services it serves on that port.
pub(super) fn workload_attachment<'a>(ctx: &'a ProxyContext, port: u16) -> RateLimitAttach<'a> {
    RateLimitAttach {
        namespace: &ctx.proxy.namespace,
        labels: ctx.labels,
        services: ctx
            .targets
            .iter()
            .filter(|t| t.target_port == port)
            .map(|t| t.service.hostname.as_str())
            .collect(),
        gateways: Vec::new(),
    }
}

pub(super) fn bound_ingress_ports(ctx: &ProxyContext) -> BTreeSet<u16> {
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
pub(super) fn bound_inbound_listeners(ctx: &ProxyContext) -> Vec<Listener> {
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
