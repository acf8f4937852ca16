//! The outbound side: a listener per port (or per Sidecar egress listener) with chains per
//! service, SNI and CIDR, and `virtualOutbound` (15001) for intercepted traffic.

use super::*;

/// Chains of a TLS port (TLS or HTTPS services), chosen by SNI as istiod builds them:
/// the `tls` routes of the VirtualServices in scope first, then each service's own host
/// name to its cluster; anything else goes to `fallback`. Names already taken by an
/// earlier chain are left out (Envoy refuses two chains matching one name).
pub(super) fn sni_chains(
    ctx: &ProxyContext,
    services: &[std::sync::Arc<crate::model::service::Service>],
    vss: &[std::sync::Arc<crate::model::snapshot::VirtualServiceConfig>],
    port: u16,
    stat: &str,
    fallback: &super::super::tcp::Targets,
) -> Vec<FilterChain> {
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut chains = Vec::new();
    let mut add = |names: Vec<String>,
                   targets: &super::super::tcp::Targets,
                   chains: &mut Vec<FilterChain>| {
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
    for (names, targets) in super::super::tcp::sidecar_tls_routes(ctx, vss, port) {
        add(names, &targets, &mut chains);
    }
    for svc in services {
        if svc.port(port).is_none() {
            continue;
        }
        let targets = super::super::tcp::sidecar_tcp_targets(ctx, vss, &svc.hostname, port)
            .unwrap_or_else(|| vec![(naming::outbound_cluster(port, "", &svc.hostname), 100)]);
        add(vec![svc.hostname.clone()], &targets, &mut chains);
    }
    chains.push(FilterChain {
        filters: vec![tcp_to(ctx, stat, fallback)],
        ..Default::default()
    });
    chains
}

pub(super) fn is_tls(p: Protocol) -> bool {
    matches!(p, Protocol::Tls | Protocol::Https)
}

/// Where a connection for no known destination goes: out of the mesh only if it may
/// (through the Sidecar's `egressProxy` when it names one).
pub(super) fn unknown_destination(ctx: &ProxyContext) -> super::super::tcp::Targets {
    let c = match ctx.scope.outbound_policy {
        OutboundTrafficMode::ALLOW_ANY | OutboundTrafficMode::ALLOW_ANY_DYNAMIC_DNS => {
            route::egress_proxy_cluster(ctx).unwrap_or_else(|| naming::PASSTHROUGH.to_string())
        }
        OutboundTrafficMode::REGISTRY_ONLY => naming::BLACKHOLE.to_string(),
    };
    vec![(c, 100)]
}

/// tcp_proxy to one cluster (its name the stat prefix, as istiod) or weighted clusters.
pub(super) fn tcp_to(ctx: &ProxyContext, stat: &str, t: &super::super::tcp::Targets) -> Filter {
    match t.as_slice() {
        [(one, _)] => tcp_proxy(ctx, one),
        _ => super::super::tcp::proxy(ctx, stat, t),
    }
}

/// Filter chains for an outbound port: HTTP, TCP, or sniffed (both, chosen by the
/// HTTP inspector).
pub(super) fn outbound_chains(
    ctx: &ProxyContext,
    protocol: Protocol,
    port: u16,
    tcp_targets: &super::super::tcp::Targets,
    stat: &str,
) -> (Vec<FilterChain>, bool) {
    let http = || FilterChain {
        filters: vec![http_connection_manager(
            ctx,
            &format!("outbound_{stat}"),
            Routes::Rds(port.to_string()),
            None,
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

/// One service port on an outbound listener.
pub(super) struct PortEntry {
    svc: std::sync::Arc<crate::model::service::Service>,
    protocol: Protocol,
    /// CIDR addresses (ServiceEntry `addresses`): matched by destination prefix on the
    /// shared listener.
    cidrs: Vec<(String, u32)>,
}

pub(super) fn is_wildcard(address: &str) -> bool {
    address == "0.0.0.0" || address == "127.0.0.1"
}

/// `a.b.c.d/n` (or IPv6) → (address, prefix length); a full-length prefix is a plain
/// address (None).
pub(super) fn cidr(address: &str) -> Option<(String, u32)> {
    let (ip, len) = address.split_once('/')?;
    let len: u32 = len.parse().ok()?;
    let full = match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(_) => 32,
        std::net::IpAddr::V6(_) => 128,
    };
    (len < full).then(|| (ip.to_string(), len))
}

/// A service address usable as a listener address: an IP, or an IP with a full-length
/// prefix (anything else — a host name, a malformed range — is left out, never sent).
pub(super) fn plain_address(address: &str) -> Option<String> {
    let ip = address.split('/').next()?;
    ip.parse::<std::net::IpAddr>().ok()?;
    cidr(address).is_none().then(|| ip.to_string())
}

/// Which listener (address, port) each service port of the catch-all egress scope goes
/// on, as istiod places them: a TCP, TLS or undeclared-protocol port of a service with
/// a VIP gets its own `VIP_PORT` listener; a headless service's such port gets one per
/// endpoint address (its pods); HTTP ports, services without an address and CIDR
/// addresses share `0.0.0.0_PORT` (or the bound `127.0.0.1_PORT` without iptables).
pub(super) fn plan_outbound(
    ctx: &ProxyContext,
    scope: &crate::model::scope::EgressScope,
    explicit_ports: &BTreeSet<u16>,
    bind_to_port: bool,
) -> BTreeMap<(String, u16), Vec<PortEntry>> {
    use crate::model::service::Resolution;
    let wildcard = if bind_to_port { "127.0.0.1" } else { "0.0.0.0" };
    let mut plan: BTreeMap<(String, u16), Vec<PortEntry>> = BTreeMap::new();
    for svc in &scope.services {
        for p in &svc.ports {
            if explicit_ports.contains(&p.port)
                || RESERVED_PORTS.contains(&p.port)
                || p.protocol == Protocol::Udp
            {
                continue;
            }
            let entry = |cidrs: Vec<(String, u32)>| PortEntry {
                svc: svc.clone(),
                protocol: p.protocol,
                cidrs,
            };
            if bind_to_port || p.protocol.is_http() {
                plan.entry((wildcard.to_string(), p.port))
                    .or_default()
                    .push(entry(vec![]));
                continue;
            }
            if svc.kubernetes
                && super::super::cluster::effective_resolution(ctx, svc) == Resolution::Passthrough
            {
                // Headless: the client dials a pod; each pod address is a listener.
                let addrs: BTreeSet<String> = ctx
                    .snap
                    .endpoints
                    .get(&svc.hostname)
                    .map(|e| {
                        e.instances
                            .iter()
                            .filter(|i| i.ready && i.ports.contains_key(&p.port))
                            .map(|i| i.address.clone())
                            .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
                            .filter(|a| !ctx.proxy.ips.contains(a))
                            .collect()
                    })
                    .unwrap_or_default();
                for a in addrs {
                    plan.entry((a, p.port)).or_default().push(entry(vec![]));
                }
                continue;
            }
            let cidrs: Vec<(String, u32)> = svc.addresses.iter().filter_map(|a| cidr(a)).collect();
            if !cidrs.is_empty() {
                let list = plan.entry((wildcard.to_string(), p.port)).or_default();
                // The same ranges twice would be two chains Envoy cannot tell apart: the
                // first service keeps them, as in istiod.
                if !list.iter().any(|e| e.cidrs == cidrs) {
                    list.push(entry(cidrs));
                }
                continue;
            }
            match svc.addresses.iter().find_map(|a| plain_address(a)) {
                Some(vip) => {
                    plan.entry((vip, p.port)).or_default().push(entry(vec![]));
                }
                None => plan
                    .entry((wildcard.to_string(), p.port))
                    .or_default()
                    .push(entry(vec![])),
            }
        }
    }
    plan
}

/// Where TCP for `svc` on `port` goes: its VirtualService `tcp` routes, else its cluster.
pub(super) fn service_targets(
    ctx: &ProxyContext,
    scope: &crate::model::scope::EgressScope,
    svc: &crate::model::service::Service,
    port: u16,
) -> super::super::tcp::Targets {
    super::super::tcp::sidecar_tcp_targets(ctx, &scope.virtual_services, &svc.hostname, port)
        .unwrap_or_else(|| vec![(naming::outbound_cluster(port, "", &svc.hostname), 100)])
}

/// The HTTP chain of an outbound listener; `sniffed` restricts it to connections the
/// HTTP inspector recognised.
pub(super) fn outbound_http_chain(
    ctx: &ProxyContext,
    stat: &str,
    rds: String,
    sniffed: bool,
) -> FilterChain {
    FilterChain {
        filter_chain_match: sniffed.then(|| FilterChainMatch {
            transport_protocol: "raw_buffer".into(),
            application_protocols: vec!["http/1.1".into(), "h2c".into()],
            ..Default::default()
        }),
        filters: vec![http_connection_manager(
            ctx,
            &format!("outbound_{stat}"),
            Routes::Rds(rds),
            None,
        )],
        ..Default::default()
    }
}

/// One outbound listener from its planned entries.
pub(super) fn outbound_listener(
    ctx: &ProxyContext,
    scope: &crate::model::scope::EgressScope,
    address: &str,
    port: u16,
    bind: bool,
    entries: &[PortEntry],
) -> Listener {
    let name = naming::listener(address, port);
    let mut lst = listener(
        name.clone(),
        address,
        port,
        bind,
        core::TrafficDirection::Outbound,
    );
    let tls = entries.iter().all(|e| is_tls(e.protocol));
    let shared = is_wildcard(address);
    if tls {
        // TLS tells its destinations apart by SNI.
        let services: Vec<_> = entries
            .iter()
            .filter(|e| e.cidrs.is_empty())
            .map(|e| e.svc.clone())
            .collect();
        let fallback = match (shared, services.first()) {
            (false, Some(svc)) => service_targets(ctx, scope, svc, port),
            _ => unknown_destination(ctx),
        };
        let vss: Vec<_> = if shared {
            scope.virtual_services.clone()
        } else {
            scope
                .virtual_services
                .iter()
                .filter(|vs| {
                    services
                        .iter()
                        .any(|s| vs.hosts.iter().any(|h| *h == s.hostname))
                })
                .cloned()
                .collect()
        };
        let mut chains = cidr_chains(ctx, scope, entries, port, &name);
        let with_cidrs = !chains.is_empty();
        // A service's own address names it: its listener needs no chain per SNI name
        // (as istiod builds it), only the VirtualServices' `tls` routes and the service.
        let by_name = if shared { &services[..] } else { &[] };
        chains.extend(sni_chains(ctx, by_name, &vss, port, &name, &fallback));
        if with_cidrs {
            // Envoy narrows by destination address first: the catch-all must be the
            // default chain to be reached from inside a range with another name.
            lst.default_filter_chain = chains.pop();
        }
        lst.filter_chains = chains;
        lst.listener_filters.push(tls_inspector());
        return lst;
    }
    let has_http = entries.iter().any(|e| e.protocol.is_http());
    let sniffed_entry = entries
        .iter()
        .find(|e| e.protocol == Protocol::Unsupported && e.cidrs.is_empty());
    // Where non-HTTP traffic goes: the first TCP (or undeclared-protocol) service of
    // the port without a CIDR, else out of the mesh only if the mesh allows it.
    // (TLS services are told apart by SNI instead.)
    let tcp_entry = entries
        .iter()
        .find(|e| !e.protocol.is_http() && !is_tls(e.protocol) && e.cidrs.is_empty());
    let tcp_targets = match tcp_entry {
        Some(e) => service_targets(ctx, scope, &e.svc, port),
        None => unknown_destination(ctx),
    };
    let mut chains = cidr_chains(ctx, scope, entries, port, &name);
    // TLS services sharing the port with others: chains by SNI for their names.
    let tls_services: Vec<_> = entries
        .iter()
        .filter(|e| is_tls(e.protocol) && e.cidrs.is_empty())
        .map(|e| e.svc.clone())
        .collect();
    if !tls_services.is_empty() {
        let mut sni = sni_chains(
            ctx,
            &tls_services,
            &scope.virtual_services,
            port,
            &name,
            &tcp_targets,
        );
        sni.pop(); // its catch-all: the default chain below serves that
        chains.extend(sni);
    }
    if chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.server_names.is_empty())
    }) {
        lst.listener_filters.push(tls_inspector());
    }
    if !shared {
        // A service's own listener: sniffed (HTTP rules for HTTP, the rest as TCP), or
        // TCP only.
        if let Some(e) = sniffed_entry {
            chains.push(outbound_http_chain(
                ctx,
                &name,
                format!("{}:{port}", e.svc.hostname),
                true,
            ));
        }
    } else if has_http || sniffed_entry.is_some() {
        // Without iptables an HTTP-only port needs no sniffing: it is HTTP.
        let only_http = bind && tcp_entry.is_none() && chains.is_empty();
        chains.push(outbound_http_chain(
            ctx,
            &name,
            port.to_string(),
            !only_http,
        ));
        if only_http {
            lst.filter_chains = chains;
            return lst;
        }
    }
    let sniff = chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.application_protocols.is_empty())
    });
    let tcp = FilterChain {
        filters: vec![tcp_to(ctx, &name, &tcp_targets)],
        ..Default::default()
    };
    if chains.is_empty() {
        lst.filter_chains = vec![tcp];
    } else {
        // Envoy narrows chains criterion by criterion and never backs up: a catch-all
        // among chains that match on transport, ALPN or prefix would not be reached
        // by what they miss. The default chain takes everything that matched nothing.
        lst.filter_chains = chains;
        // On a port's shared listener that is the way out of the mesh (istiod's
        // "PassthroughFilterChain"); on a service's own, the service's TCP chain.
        let name = if shared {
            PASSTHROUGH_CHAIN.to_string()
        } else {
            String::new()
        };
        lst.default_filter_chain = Some(FilterChain { name, ..tcp });
    }
    if sniff {
        lst.listener_filters.push(http_inspector());
        lst.continue_on_listener_filters_timeout = true;
        lst.listener_filters_timeout = pb::secs(0);
    }
    lst
}

/// Chains for services with CIDR addresses on a shared port, matched by destination
/// prefix (and by SNI on TLS ports).
pub(super) fn cidr_chains(
    ctx: &ProxyContext,
    scope: &crate::model::scope::EgressScope,
    entries: &[PortEntry],
    port: u16,
    stat: &str,
) -> Vec<FilterChain> {
    // A range an earlier entry already claims (equal once the host bits are masked) is
    // left out: Envoy refuses two chains with the same match, and istiod keeps the first.
    let mut seen: BTreeSet<(std::net::IpAddr, u32, String)> = BTreeSet::new();
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| !e.cidrs.is_empty()) {
        let sni = if is_tls(e.protocol) {
            vec![e.svc.hostname.clone()]
        } else {
            vec![]
        };
        let ranges: Vec<core::CidrRange> = e
            .cidrs
            .iter()
            .filter(|(a, len)| match masked(a, *len) {
                Some(net) => seen.insert((net, *len, sni.join(","))),
                None => true,
            })
            .map(|(a, len)| core::CidrRange {
                address_prefix: a.clone(),
                prefix_len: pb::u32v(*len),
            })
            .collect();
        if ranges.is_empty() {
            continue;
        }
        out.push(FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                prefix_ranges: ranges,
                server_names: sni,
                ..Default::default()
            }),
            filters: vec![tcp_to(
                ctx,
                stat,
                &service_targets(ctx, scope, &e.svc, port),
            )],
            ..Default::default()
        });
    }
    out
}

/// The network address of `address/len` (host bits cleared).
pub(super) fn masked(address: &str, len: u32) -> Option<std::net::IpAddr> {
    use std::net::IpAddr;
    Some(match address.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    })
}

pub(super) fn virtual_outbound(ctx: &ProxyContext) -> Listener {
    let egress = route::egress_proxy_cluster(ctx);
    let fallback = match (ctx.scope.outbound_policy, &egress) {
        // egressProxy is set under ALLOW_ANY only (`route::egress_proxy_cluster`).
        (_, Some(c)) => c.as_str(),
        (OutboundTrafficMode::ALLOW_ANY | OutboundTrafficMode::ALLOW_ANY_DYNAMIC_DNS, None) => {
            naming::PASSTHROUGH
        }
        (OutboundTrafficMode::REGISTRY_ONLY, None) => naming::BLACKHOLE,
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
    if super::super::dfp::enabled(ctx) {
        // Plaintext HTTP to an address no listener claims: by its Host header, through
        // the dynamic forward proxy (the HTTP inspector tells HTTP from the rest).
        l.filter_chains
            .insert(1, super::super::dfp::virtual_outbound_chain(ctx));
        l.listener_filters.push(http_inspector());
    }
    // Hand connections to the listener for their original destination port.
    l.use_original_dst = pb::boolv(true);
    l
}
