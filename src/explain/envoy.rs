//! Envoy's own matching, walked over the resources meshd generates for one proxy:
//! listener by address and port, filter chain (Envoy's filter-chain-match sieve), HTTP
//! connection manager → route configuration → virtual host (Envoy's domain rules) →
//! first matching route → cluster, or the TCP proxy's cluster.
//!
//! The errors are istiod's simulator's (pilot/pkg/simulation), so istiod's cases compare
//! word for word; where istiod's simulator is lazier than Envoy (it matches routes by path
//! only) this follows Envoy.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as ls;
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::call::{Call, Mode, Protocol, Tls};
use crate::translate::Resources;

pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
pub const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
pub const HCM: &str = "envoy.filters.network.http_connection_manager";
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

/// Why a call stopped: exactly istiod's simulator's error texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    NoListener,
    NoFilterChain,
    NoRoute,
    TlsRedirect,
    NoVirtualHost,
    MultipleFilterChains,
    ProtocolError,
    TlsError,
    MtlsError,
}

impl Failure {
    pub fn text(self) -> &'static str {
        match self {
            Failure::NoListener => "no listener matched",
            Failure::NoFilterChain => "no filter chains matched",
            Failure::NoRoute => "no route matched",
            Failure::TlsRedirect => "tls required, sending 301",
            Failure::NoVirtualHost => "no virtual host matched",
            Failure::MultipleFilterChains => "multiple filter chains matched",
            Failure::ProtocolError => "protocol error",
            Failure::TlsError => "invalid TLS",
            Failure::MtlsError => "invalid mTLS",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

/// Where a call went, step by step, as far as it got.
#[derive(Debug, Clone, Default)]
pub struct Walk<'r> {
    pub failure: Option<Failure>,
    pub listener: Option<&'r ls::Listener>,
    pub filter_chain: Option<&'r ls::FilterChain>,
    /// The chain was the listener's default chain (nothing else matched).
    pub default_chain: bool,
    pub route_config_name: Option<String>,
    pub route_config: Option<RouteConfigRef<'r>>,
    pub virtual_host: Option<rt::VirtualHost>,
    pub route: Option<rt::Route>,
    pub route_index: Option<usize>,
    /// The single destination cluster (route action or TCP proxy).
    pub cluster: Option<String>,
    /// Weighted destinations: all of them, with weights.
    pub weighted: Vec<(String, u32)>,
    /// What a route does that is not forwarding (redirect, direct response).
    pub action: Option<String>,
    /// The TLS context the chain terminates with, if any.
    pub downstream_tls: Option<tls::DownstreamTlsContext>,
    /// The route configuration was named over RDS but not generated.
    pub missing_route_config: bool,
}

/// A route configuration: served over RDS or inline in the connection manager.
#[derive(Debug, Clone)]
pub enum RouteConfigRef<'r> {
    Rds(&'r rt::RouteConfiguration),
    Inline(Box<rt::RouteConfiguration>),
}

impl RouteConfigRef<'_> {
    pub fn get(&self) -> &rt::RouteConfiguration {
        match self {
            RouteConfigRef::Rds(r) => r,
            RouteConfigRef::Inline(r) => r,
        }
    }
}

fn decode<T: Message + Default>(any: &Any) -> Option<T> {
    T::decode(any.value.as_slice()).ok()
}

fn socket(a: Option<&core::Address>) -> Option<(&str, u32)> {
    match a?.address.as_ref()? {
        core::address::Address::SocketAddress(s) => match s.port_specifier {
            Some(core::socket_address::PortSpecifier::PortValue(p)) => Some((&s.address, p)),
            _ => None,
        },
        _ => None,
    }
}

/// The addresses a listener binds: its address and its additional addresses.
fn bound(l: &ls::Listener) -> impl Iterator<Item = (&str, u32)> {
    socket(l.address.as_ref()).into_iter().chain(
        l.additional_addresses
            .iter()
            .filter_map(|a| socket(a.address.as_ref())),
    )
}

fn is_wildcard(a: &str) -> bool {
    a == "0.0.0.0" || a == "::"
}

/// The listener Envoy hands the connection to.
pub fn match_listener<'r>(res: &'r Resources, call: &Call) -> Option<&'r ls::Listener> {
    if call.mode == Mode::Inbound {
        return res.listeners.iter().find(|l| l.name == "virtualInbound");
    }
    let port = u32::from(call.port);
    // The exact address first, then the wildcard of the call's address family.
    let v6 = call.address.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6());
    if let Some(l) = res
        .listeners
        .iter()
        .find(|l| bound(l).any(|(a, p)| p == port && a == call.address))
    {
        return Some(l);
    }
    let wildcard =
        |l: &&ls::Listener| bound(l).any(|(a, p)| p == port && is_wildcard(a) && (a == "::") == v6);
    if let Some(l) = res.listeners.iter().find(wildcard) {
        return Some(l);
    }
    // Either family's wildcard (a dual-stack listener binds one and accepts both).
    if let Some(l) = res
        .listeners
        .iter()
        .find(|l| bound(l).any(|(a, p)| p == port && is_wildcard(a)))
    {
        return Some(l);
    }
    match call.mode {
        // Captured traffic with no listener of its own stays on the capture listener.
        Mode::Outbound => res.listeners.iter().find(|l| l.name == "virtualOutbound"),
        _ => None,
    }
}

fn predicate_holds(p: &ls::ListenerFilterChainMatchPredicate, port: u16) -> bool {
    use ls::listener_filter_chain_match_predicate::Rule;
    match &p.rule {
        None => false,
        Some(Rule::AnyMatch(b)) => *b,
        Some(Rule::OrMatch(s)) => s.rules.iter().any(|r| predicate_holds(r, port)),
        Some(Rule::AndMatch(s)) => s.rules.iter().all(|r| predicate_holds(r, port)),
        Some(Rule::NotMatch(r)) => !predicate_holds(r, port),
        Some(Rule::DestinationPortRange(r)) => {
            let p = i32::from(port);
            r.start <= p && p < r.end
        }
    }
}

/// Whether a listener filter runs for connections to `port`.
pub fn listener_filter_on(l: &ls::Listener, name: &str, port: u16) -> bool {
    l.listener_filters.iter().any(|f| {
        f.name == name
            && f.filter_disabled
                .as_ref()
                .is_none_or(|p| !predicate_holds(p, port))
    })
}

/// What the listener filters make of a connection: (transport protocol, ALPN).
fn detected(l: &ls::Listener, call: &Call) -> (&'static str, String) {
    let tls_inspector = listener_filter_on(l, TLS_INSPECTOR, call.port);
    let mut alpn = if tls_inspector {
        call.alpn.clone()
    } else {
        String::new()
    };
    if listener_filter_on(l, HTTP_INSPECTOR, call.port) && call.tls == Tls::Plaintext {
        match call.protocol {
            Protocol::Http => alpn = "http/1.1".into(),
            Protocol::Http2 => alpn = "h2c".into(),
            Protocol::Tcp => {}
        }
    }
    // Without a TLS inspector Envoy sees every connection as raw_buffer.
    let transport = if tls_inspector && call.tls != Tls::Plaintext {
        "tls"
    } else {
        "raw_buffer"
    };
    (transport, alpn)
}

fn cidr_bits(range: &core::CidrRange, addr: IpAddr) -> Option<u32> {
    let net: IpAddr = range.address_prefix.parse().ok()?;
    let len = range.prefix_len.as_ref().map_or(0, |v| v.value);
    let contains = match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let len = len.min(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let len = len.min(128);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    };
    contains.then_some(len)
}

/// Whether `addr` lies in the range.
pub(crate) fn cidr_contains(range: &core::CidrRange, addr: IpAddr) -> bool {
    cidr_bits(range, addr).is_some()
}

/// SNI `sni` against a chain's server name (`*.example.com` covers subdomains).
fn server_name_rank(sni: &str, name: &str) -> usize {
    if sni.eq_ignore_ascii_case(name) {
        usize::MAX
    } else if let Some(suffix) = name.strip_prefix('*')
        && sni.len() > suffix.len()
        && sni
            .to_ascii_lowercase()
            .ends_with(&suffix.to_ascii_lowercase())
    {
        name.len()
    } else {
        0
    }
}

/// One step of Envoy's sieve: among chains that set the criterion, keep the best-ranked
/// matches; when none matches, keep the chains that do not set it.
fn sieve(
    chains: Vec<&ls::FilterChain>,
    set: impl Fn(&ls::FilterChainMatch) -> bool,
    rank: impl Fn(&ls::FilterChainMatch) -> usize,
) -> Vec<&ls::FilterChain> {
    // A chain without a match is an empty one (borrowed, never cloned per criterion).
    static EMPTY: std::sync::LazyLock<ls::FilterChainMatch> =
        std::sync::LazyLock::new(ls::FilterChainMatch::default);
    fn m(c: &ls::FilterChain) -> &ls::FilterChainMatch {
        c.filter_chain_match.as_ref().unwrap_or(&EMPTY)
    }
    if !chains.iter().any(|c| set(m(c))) {
        return chains;
    }
    let ranked: Vec<(usize, &ls::FilterChain)> = chains
        .iter()
        .filter(|c| set(m(c)))
        .map(|c| (rank(m(c)), *c))
        .filter(|(r, _)| *r > 0)
        .collect();
    if let Some(best) = ranked.iter().map(|(r, _)| *r).max() {
        return ranked
            .into_iter()
            .filter(|(r, _)| *r == best)
            .map(|(_, c)| c)
            .collect();
    }
    chains.into_iter().filter(|c| !set(m(c))).collect()
}

/// The chains of `l` a connection matches (one, or several when the listener is
/// ambiguous), or none.
pub fn match_filter_chains<'r>(l: &'r ls::Listener, call: &Call) -> Vec<&'r ls::FilterChain> {
    let (transport, alpn) = detected(l, call);
    let addr: Option<IpAddr> = call.address.parse().ok();
    let port = u32::from(call.port);
    let mut chains: Vec<&ls::FilterChain> = l.filter_chains.iter().collect();
    chains = sieve(
        chains,
        |m| m.destination_port.is_some(),
        |m| usize::from(m.destination_port.as_ref().is_some_and(|p| p.value == port)),
    );
    chains = sieve(
        chains,
        |m| !m.prefix_ranges.is_empty(),
        |m| {
            addr.and_then(|a| m.prefix_ranges.iter().filter_map(|r| cidr_bits(r, a)).max())
                // A /0 match ranks above no match.
                .map_or(0, |bits| bits as usize + 1)
        },
    );
    chains = sieve(
        chains,
        |m| !m.server_names.is_empty(),
        |m| {
            m.server_names
                .iter()
                .map(|n| server_name_rank(&call.sni, n))
                .max()
                .unwrap_or(0)
        },
    );
    chains = sieve(
        chains,
        |m| !m.transport_protocol.is_empty(),
        |m| usize::from(m.transport_protocol == transport),
    );
    chains = sieve(
        chains,
        |m| !m.application_protocols.is_empty(),
        |m| usize::from(m.application_protocols.contains(&alpn)),
    );
    // Source criteria: the simulated client is remote (not the proxy itself).
    chains = sieve(
        chains,
        |m| m.source_type != 0,
        |m| {
            usize::from(
                m.source_type == ls::filter_chain_match::ConnectionSourceType::External as i32,
            )
        },
    );
    chains
}

/// Whether a TLS context is the mTLS the client speaks (istiod's simulator: the chain's
/// first certificate is the one the call's mTLS is made for — the workload certificate
/// `default` unless the call names another — and it requires a client certificate).
fn requires_mtls(ctx: &tls::DownstreamTlsContext, secret: &str) -> bool {
    let Some(common) = ctx.common_tls_context.as_ref() else {
        return false;
    };
    let name = match common.tls_certificate_sds_secret_configs.first() {
        Some(s) => s.name.clone(),
        None => match common.tls_certificates.first() {
            Some(c) => format!(
                "file-cert:{}~{}",
                data_source_name(c.certificate_chain.as_ref()),
                data_source_name(c.private_key.as_ref())
            ),
            None => return false,
        },
    };
    name == secret
        && ctx
            .require_client_certificate
            .as_ref()
            .is_some_and(|b| b.value)
}

fn data_source_name(d: Option<&core::DataSource>) -> String {
    match d.and_then(|d| d.specifier.as_ref()) {
        Some(core::data_source::Specifier::Filename(f)) => f.clone(),
        _ => String::new(),
    }
}

fn downstream_tls(fc: &ls::FilterChain) -> Option<tls::DownstreamTlsContext> {
    let ts = fc.transport_socket.as_ref()?;
    match &ts.config_type {
        Some(core::transport_socket::ConfigType::TypedConfig(any)) => decode(any),
        None => Some(tls::DownstreamTlsContext::default()),
    }
}

fn filter_config(f: &ls::Filter) -> Option<&Any> {
    match &f.config_type {
        Some(ls::filter::ConfigType::TypedConfig(a)) => Some(a),
        _ => None,
    }
}

fn connection_manager(fc: &ls::FilterChain) -> Option<hcm::HttpConnectionManager> {
    fc.filters
        .iter()
        .find(|f| f.name == HCM)
        .and_then(filter_config)
        .and_then(decode)
}

fn tcp_proxy(fc: &ls::FilterChain) -> Option<tcp::TcpProxy> {
    fc.filters
        .iter()
        .find(|f| f.name == TCP_PROXY)
        .and_then(filter_config)
        .and_then(decode)
}

/// Envoy's virtual host choice: exact domain, then the longest `*.suffix`, then the
/// longest `prefix*`, then `*`.
pub fn match_virtual_host<'a>(
    rc: &'a rt::RouteConfiguration,
    host: &str,
) -> Option<&'a rt::VirtualHost> {
    let mut host = host.to_ascii_lowercase();
    if rc.ignore_port_in_host_matching
        && let Some((h, p)) = host.rsplit_once(':')
        && p.parse::<u16>().is_ok()
        && !h.ends_with(']')
    {
        host = h.to_string();
    }
    let lower = |d: &str| d.to_ascii_lowercase();
    if let Some(vh) = rc
        .virtual_hosts
        .iter()
        .find(|vh| vh.domains.iter().any(|d| lower(d) == host))
    {
        return Some(vh);
    }
    let best = |pick: &dyn Fn(&str) -> bool| {
        let mut found: Option<(&rt::VirtualHost, usize)> = None;
        for vh in &rc.virtual_hosts {
            for d in &vh.domains {
                if d != "*" && pick(&lower(d)) && found.is_none_or(|(_, l)| d.len() > l) {
                    found = Some((vh, d.len()));
                }
            }
        }
        found.map(|(vh, _)| vh)
    };
    // `*.foo.com` needs at least one character in place of `*`.
    let suffix = |d: &str| {
        d.strip_prefix('*')
            .is_some_and(|s| host.len() > s.len() && host.ends_with(s))
    };
    if let Some(vh) = best(&suffix) {
        return Some(vh);
    }
    let prefix = |d: &str| {
        d.strip_suffix('*')
            .is_some_and(|p| host.len() > p.len() && host.starts_with(p))
    };
    if let Some(vh) = best(&prefix) {
        return Some(vh);
    }
    rc.virtual_hosts
        .iter()
        .find(|vh| vh.domains.iter().any(|d| d == "*"))
}

fn regex_full_match(re: &str, value: &str) -> bool {
    // Envoy's safe_regex must match the whole value.
    regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(value))
}

pub(crate) fn string_matches(m: &matcher::StringMatcher, value: &str) -> bool {
    use matcher::string_matcher::MatchPattern as P;
    let (v, fold) = if m.ignore_case {
        (value.to_ascii_lowercase(), true)
    } else {
        (value.to_string(), false)
    };
    let norm = |s: &str| {
        if fold {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    match &m.match_pattern {
        Some(P::Exact(e)) => v == norm(e),
        Some(P::Prefix(p)) => v.starts_with(&norm(p)),
        Some(P::Suffix(s)) => v.ends_with(&norm(s)),
        Some(P::Contains(c)) => v.contains(&norm(c)),
        Some(P::SafeRegex(r)) => regex_full_match(&r.regex, value),
        _ => false,
    }
}

// Envoy still honours the deprecated specifiers, and EnvoyFilter patches may use them.
#[allow(deprecated)]
pub(crate) fn header_matches(h: &rt::HeaderMatcher, call: &Call) -> bool {
    use rt::header_matcher::HeaderMatchSpecifier as S;
    let value = call.header(&h.name);
    let value = match value {
        Some(v) => Some(v),
        None if h.treat_missing_header_as_empty => Some(""),
        None => None,
    };
    let Some(v) = value else {
        // An absent header matches only `present: false`, or `present: true` inverted.
        let present = match &h.header_match_specifier {
            Some(S::PresentMatch(p)) => Some(*p),
            None => Some(true),
            _ => None,
        };
        return present.is_some_and(|p| p == h.invert_match);
    };
    let matched = match &h.header_match_specifier {
        Some(S::PresentMatch(present)) => *present,
        None => true,
        Some(S::ExactMatch(e)) => v == e,
        Some(S::PrefixMatch(p)) => v.starts_with(p.as_str()),
        Some(S::SuffixMatch(s)) => v.ends_with(s.as_str()),
        Some(S::ContainsMatch(c)) => v.contains(c.as_str()),
        Some(S::SafeRegexMatch(r)) => regex_full_match(&r.regex, v),
        Some(S::StringMatch(m)) => string_matches(m, v),
        Some(S::RangeMatch(r)) => v.parse::<i64>().is_ok_and(|n| r.start <= n && n < r.end),
    };
    matched != h.invert_match
}

fn query_matches(q: &rt::QueryParameterMatcher, path: &str) -> bool {
    use rt::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
    let value = query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == q.name).then_some(v)
    });
    match (&q.query_parameter_match_specifier, value) {
        (_, None) => false,
        (Some(Q::PresentMatch(p)), Some(_)) => *p,
        (Some(Q::StringMatch(m)), Some(v)) => string_matches(m, v),
        (None, Some(_)) => true,
    }
}

/// Whether a route's match holds for the call (path, headers, query parameters).
pub fn route_matches(r: &rt::Route, call: &Call) -> bool {
    use rt::route_match::PathSpecifier as P;
    let Some(m) = &r.r#match else {
        return false;
    };
    let path = call
        .path
        .split_once('?')
        .map_or(call.path.as_str(), |(p, _)| p);
    let sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
    let eq = |a: &str, b: &str| {
        if sensitive {
            a == b
        } else {
            a.eq_ignore_ascii_case(b)
        }
    };
    let starts = |p: &str| {
        path.len() >= p.len() && path.is_char_boundary(p.len()) && eq(&path[..p.len()], p)
    };
    let path_ok = match &m.path_specifier {
        Some(P::Prefix(p)) => starts(p),
        Some(P::Path(p)) => eq(path, p),
        Some(P::SafeRegex(r)) => regex_full_match(&r.regex, path),
        Some(P::PathSeparatedPrefix(p)) => {
            starts(p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
        }
        Some(P::ConnectMatcher(_)) => call.method == "CONNECT",
        _ => false,
    };
    path_ok
        && m.headers.iter().all(|h| header_matches(h, call))
        && m.query_parameters
            .iter()
            .all(|q| query_matches(q, &call.path))
}

/// Walks a call through the generated resources.
pub fn walk<'r>(res: &'r Resources, call: &Call) -> Walk<'r> {
    let mut w = Walk::default();
    let Some(l) = match_listener(res, call) else {
        w.failure = Some(Failure::NoListener);
        return w;
    };
    w.listener = Some(l);
    let chains = match_filter_chains(l, call);
    let fc = match chains.as_slice() {
        [one] => *one,
        [] => match &l.default_filter_chain {
            Some(d) => {
                w.default_chain = true;
                d
            }
            None => {
                w.failure = Some(Failure::NoFilterChain);
                return w;
            }
        },
        _ => {
            w.failure = Some(Failure::MultipleFilterChains);
            return w;
        }
    };
    w.filter_chain = Some(fc);
    w.downstream_tls = downstream_tls(fc);
    if let Some(ctx) = &w.downstream_tls {
        if call.tls == Tls::Plaintext {
            w.failure = Some(Failure::TlsError);
            return w;
        }
        if requires_mtls(ctx, &call.mtls_secret) != (call.tls == Tls::Mtls) {
            w.failure = Some(Failure::MtlsError);
            return w;
        }
    }
    if let Some(cm) = connection_manager(fc) {
        // TLS that is not terminated, or raw TCP, is not HTTP to the connection manager.
        if (call.tls != Tls::Plaintext && w.downstream_tls.is_none()) || !call.is_http() {
            w.failure = Some(Failure::ProtocolError);
            return w;
        }
        use hcm::http_connection_manager::RouteSpecifier as R;
        let rc = match cm.route_specifier {
            Some(R::Rds(rds)) => {
                let found = res.routes.iter().find(|r| r.name == rds.route_config_name);
                w.route_config_name = Some(rds.route_config_name);
                match found {
                    Some(r) => RouteConfigRef::Rds(r),
                    None => {
                        w.missing_route_config = true;
                        w.failure = Some(Failure::NoVirtualHost);
                        return w;
                    }
                }
            }
            Some(R::RouteConfig(rc)) => RouteConfigRef::Inline(Box::new(rc)),
            _ => {
                w.failure = Some(Failure::NoVirtualHost);
                return w;
            }
        };
        let vh = match_virtual_host(rc.get(), &call.host).cloned();
        w.route_config = Some(rc);
        let Some(vh) = vh else {
            w.failure = Some(Failure::NoVirtualHost);
            return w;
        };
        let require_all = vh.require_tls == rt::virtual_host::TlsRequirementType::All as i32;
        let found = vh
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| route_matches(r, call))
            .map(|(i, r)| (i, r.clone()));
        w.virtual_host = Some(vh);
        if require_all && call.tls == Tls::Plaintext {
            w.failure = Some(Failure::TlsRedirect);
            return w;
        }
        let Some((i, r)) = found else {
            w.failure = Some(Failure::NoRoute);
            return w;
        };
        use rt::route::Action as A;
        use rt::route_action::ClusterSpecifier as C;
        match &r.action {
            Some(A::Route(ra)) => match &ra.cluster_specifier {
                Some(C::Cluster(c)) => w.cluster = Some(c.clone()),
                Some(C::WeightedClusters(wc)) => {
                    w.weighted = wc
                        .clusters
                        .iter()
                        .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |v| v.value)))
                        .collect()
                }
                Some(C::ClusterHeader(h)) => {
                    w.action = Some(format!("forwards to the cluster named in header {h}"))
                }
                _ => w.action = Some("forwards by a cluster specifier plugin".into()),
            },
            Some(A::Redirect(red)) => {
                w.action = Some(format!(
                    "redirects ({}{})",
                    red.host_redirect,
                    match &red.path_rewrite_specifier {
                        Some(rt::redirect_action::PathRewriteSpecifier::PathRedirect(p)) =>
                            p.clone(),
                        _ => String::new(),
                    }
                ))
            }
            Some(A::DirectResponse(d)) => {
                w.action = Some(format!("answers directly with status {}", d.status))
            }
            _ => w.action = Some("has no action".into()),
        }
        w.route = Some(r);
        w.route_index = Some(i);
    } else if let Some(t) = tcp_proxy(fc) {
        use tcp::tcp_proxy::ClusterSpecifier as C;
        match t.cluster_specifier {
            Some(C::Cluster(c)) => w.cluster = Some(c),
            Some(C::WeightedClusters(wc)) => {
                w.weighted = wc
                    .clusters
                    .into_iter()
                    .map(|c| (c.name, c.weight))
                    .collect()
            }
            None => {}
        }
    }
    w
}

/// The name Envoy reports for a route (istiod's simulator: the route's `name`).
pub fn route_name(r: &rt::Route) -> &str {
    &r.name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vh(name: &str, domains: &[&str]) -> rt::VirtualHost {
        rt::VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn virtual_hosts_follow_envoys_domain_order() {
        let rc = rt::RouteConfiguration {
            virtual_hosts: vec![
                vh("any", &["*"]),
                vh("prefix", &["api.*"]),
                vh("suffix", &["*.example.com"]),
                vh("longer-suffix", &["*.api.example.com"]),
                vh("exact", &["api.example.com"]),
            ],
            ..Default::default()
        };
        let pick = |h: &str| match_virtual_host(&rc, h).map(|v| v.name.clone());
        assert_eq!(pick("api.example.com").as_deref(), Some("exact"));
        assert_eq!(pick("v1.api.example.com").as_deref(), Some("longer-suffix"));
        assert_eq!(pick("www.example.com").as_deref(), Some("suffix"));
        assert_eq!(pick("api.other").as_deref(), Some("prefix"));
        assert_eq!(pick("other").as_deref(), Some("any"));
        // `*.example.com` needs something in place of `*`.
        let only_suffix = rt::RouteConfiguration {
            virtual_hosts: vec![vh("suffix", &["*.example.com"])],
            ..Default::default()
        };
        assert!(match_virtual_host(&only_suffix, ".example.com").is_none());
    }

    #[test]
    fn an_absent_header_matches_only_absence() {
        let call = super::super::CallSpec {
            port: 80,
            ..Default::default()
        }
        .resolve(false)
        .expect("call");
        let m = |spec, invert| rt::HeaderMatcher {
            name: "x-user".into(),
            header_match_specifier: Some(spec),
            invert_match: invert,
            ..Default::default()
        };
        use rt::header_matcher::HeaderMatchSpecifier as S;
        let exact = S::StringMatch(matcher::StringMatcher {
            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact("a".into())),
            ..Default::default()
        });
        assert!(!header_matches(&m(exact.clone(), false), &call));
        assert!(!header_matches(&m(exact, true), &call));
        assert!(header_matches(&m(S::PresentMatch(true), true), &call));
        assert!(!header_matches(&m(S::PresentMatch(true), false), &call));
    }

    #[test]
    fn the_sieve_keeps_the_most_specific_chain() {
        let chain = |name: &str, port: Option<u32>, prefix: Option<(&str, u32)>| ls::FilterChain {
            name: name.into(),
            filter_chain_match: Some(ls::FilterChainMatch {
                destination_port: port.and_then(crate::envoy::pb::u32v),
                prefix_ranges: prefix
                    .map(|(a, l)| core::CidrRange {
                        address_prefix: a.into(),
                        prefix_len: crate::envoy::pb::u32v(l),
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let l = ls::Listener {
            filter_chains: vec![
                chain("any", None, None),
                chain("port", Some(80), None),
                chain("wide", Some(80), Some(("10.0.0.0", 8))),
                chain("narrow", Some(80), Some(("10.1.0.0", 16))),
            ],
            ..Default::default()
        };
        let names = |address: &str, port: u16| {
            let call = super::super::CallSpec {
                port,
                address: Some(address.into()),
                ..Default::default()
            }
            .resolve(false)
            .expect("call");
            match_filter_chains(&l, &call)
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("10.1.2.3", 80), ["narrow"]);
        assert_eq!(names("10.9.2.3", 80), ["wide"]);
        assert_eq!(names("192.168.0.1", 80), ["port"]);
        assert_eq!(names("10.1.2.3", 81), ["any"]);
    }
}
