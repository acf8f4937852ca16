//! RDS: route configurations for outbound ports (`9080`), inbound (inline) and gateways.
//! VirtualService HTTP routes become Envoy routes here, in order, one per match block.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3::{
    self as rt, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route::Action,
    route_action::ClusterSpecifier, route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::Any;

use super::context::ProxyContext;
use crate::envoy::naming;
use crate::envoy::pb;
use crate::model::host;
use crate::model::istio::{self, OutboundTrafficMode};
use crate::model::scope::EgressScope;
use crate::model::service::{Service, labels_match};
use crate::model::snapshot::VirtualServiceConfig;

pub mod pieces;

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// istiod's default retry policy, applied to routes without `retries`.
const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// istiod's default retry condition on inbound routes.
const INBOUND_RETRY_ON: &str = "reset-before-request";

fn string_match(m: &istio::StringMatch, ignore_case: bool) -> Option<StringMatcher> {
    let pattern = if let Some(e) = &m.exact {
        MatchPattern::Exact(e.clone())
    } else if let Some(p) = &m.prefix {
        MatchPattern::Prefix(p.clone())
    } else if let Some(r) = &m.regex {
        MatchPattern::SafeRegex(regex(r))
    } else {
        return None;
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    })
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }
}

fn header_matcher(name: &str, m: &istio::StringMatch, invert: bool) -> rt::HeaderMatcher {
    use rt::header_matcher::HeaderMatchSpecifier;
    let spec = match string_match(m, false) {
        Some(sm) => HeaderMatchSpecifier::StringMatch(sm),
        // `{}`: the header only has to be present.
        None => HeaderMatchSpecifier::PresentMatch(true),
    };
    rt::HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

fn route_match(m: Option<&istio::HttpMatchRequest>) -> RouteMatch {
    route_match_with(m, false)
}

/// `path_separated`: a prefix matches whole path segments (`/foo` matches `/foo` and
/// `/foo/bar`, never `/foobar`), as the Gateway API's PathPrefix does.
fn route_match_with(m: Option<&istio::HttpMatchRequest>, path_separated: bool) -> RouteMatch {
    let mut rm = RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".into())),
        ..Default::default()
    };
    let Some(m) = m else { return rm };
    if let Some(uri) = &m.uri {
        rm.path_specifier = Some(if let Some(e) = &uri.exact {
            PathSpecifier::Path(e.clone())
        } else if let Some(p) = &uri.prefix {
            if path_separated && p != "/" {
                PathSpecifier::PathSeparatedPrefix(p.trim_end_matches('/').to_string())
            } else {
                PathSpecifier::Prefix(p.clone())
            }
        } else if let Some(r) = &uri.regex {
            PathSpecifier::SafeRegex(regex(r))
        } else {
            PathSpecifier::Prefix("/".into())
        });
        if m.ignore_uri_case {
            rm.case_sensitive = pb::boolv(false);
        }
    }
    for (pseudo, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            rm.headers.push(header_matcher(pseudo, sm, false));
        }
    }
    for (name, sm) in &m.headers {
        rm.headers.push(header_matcher(name, sm, false));
    }
    for (name, sm) in &m.without_headers {
        rm.headers.push(header_matcher(name, sm, true));
    }
    for (name, sm) in &m.query_params {
        use rt::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
        let spec = match string_match(sm, false) {
            Some(s) => Q::StringMatch(s),
            None => Q::PresentMatch(true),
        };
        rm.query_parameters.push(rt::QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(spec),
        });
    }
    rm
}

fn header_ops(
    ops: Option<&istio::HeaderOperations>,
) -> (Vec<core::HeaderValueOption>, Vec<String>) {
    use core::header_value_option::HeaderAppendAction;
    let Some(ops) = ops else {
        return (vec![], vec![]);
    };
    let mut add = Vec::new();
    for (k, v) in &ops.set {
        add.push(core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        });
    }
    for (k, v) in &ops.add {
        add.push(core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: HeaderAppendAction::AppendIfExistsOrAdd as i32,
            ..Default::default()
        });
    }
    (add, ops.remove.clone())
}

fn percent(p: f64) -> FractionalPercent {
    // Istio's percentages have sub-percent precision: express them per million.
    FractionalPercent {
        numerator: (p.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

/// gRPC status names as Istio's API takes them.
fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    name.parse::<u32>()
        .ok()
        .or_else(|| CODES.iter().position(|c| *c == name).map(|i| i as u32))
}

fn fault_config(f: &istio::HttpFaultInjection) -> fault::HttpFault {
    let mut out = fault::HttpFault::default();
    if let Some(d) = &f.delay
        && let Some(fixed) = d.fixed_delay.or(d.exponential_delay)
    {
        let pct = d
            .percentage
            .as_ref()
            .map(|p| p.value)
            .or(d.percent.map(f64::from))
            .unwrap_or(100.0);
        out.delay = Some(common_fault::FaultDelay {
            percentage: Some(percent(pct)),
            fault_delay_secifier: Some(common_fault::fault_delay::FaultDelaySecifier::FixedDelay(
                pb::duration(fixed.as_std()),
            )),
        });
    }
    if let Some(a) = &f.abort {
        let pct = a.percentage.as_ref().map(|p| p.value).unwrap_or(100.0);
        let error = if let Some(s) = a.http_status {
            Some(fault::fault_abort::ErrorType::HttpStatus(s as u32))
        } else {
            a.grpc_status
                .as_deref()
                .and_then(grpc_code)
                .map(fault::fault_abort::ErrorType::GrpcStatus)
        };
        if let Some(error) = error {
            out.abort = Some(fault::FaultAbort {
                percentage: Some(percent(pct)),
                error_type: Some(error),
                ..Default::default()
            });
        }
    }
    out
}

fn cors_config(c: &istio::CorsPolicy) -> cors::CorsPolicy {
    let mut origins: Vec<StringMatcher> = c
        .allow_origins
        .iter()
        .filter_map(|o| string_match(o, false))
        .collect();
    origins.extend(c.allow_origin.iter().map(|o| StringMatcher {
        match_pattern: Some(MatchPattern::Exact(o.clone())),
        ignore_case: false,
    }));
    cors::CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.as_std().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.and_then(pb::boolv),
        forward_not_matching_preflights: match c.unmatched_preflights {
            Some(istio::UnmatchedPreflights::IGNORE) => pb::boolv(false),
            Some(istio::UnmatchedPreflights::FORWARD) => pb::boolv(true),
            _ => None,
        },
        ..Default::default()
    }
}

/// The retry policy of an outbound route, as istiod's: attempts 2 on connection-level
/// failures by default; `retryOn` parts that are numbers become retriable status codes.
/// No status code is retried unless named: a 503 from the application may come from a
/// request that already changed something (a POST), so retrying it is not safe by
/// default (istiod's `EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY`, on by default).
/// `hashed`: the route has a consistent-hash policy, and a retry must stay on the same
/// host, so the default `previous_hosts` predicate is left out.
fn retry_policy(r: Option<&istio::HttpRetry>, hashed: bool) -> Option<rt::RetryPolicy> {
    let (attempts, per_try, retry_on) = match r {
        Some(r) if r.attempts <= 0 => return None,
        Some(r) => (r.attempts as u32, r.per_try_timeout, r.retry_on.as_str()),
        None => (2, None, ""),
    };
    let (retry_on, codes) = parse_retry_on(retry_on, DEFAULT_RETRY_ON);
    let previous_hosts = match r.and_then(|r| r.retry_ignore_previous_hosts) {
        Some(explicit) => explicit,
        None => !hashed,
    };
    Some(rt::RetryPolicy {
        retry_on,
        num_retries: pb::u32v(attempts),
        per_try_timeout: per_try.map(|d| pb::duration(d.as_std())),
        retriable_status_codes: codes,
        retry_host_predicate: if previous_hosts {
            vec![rt::retry_policy::RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(rt::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                    pb::any(&envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate {}),
                )),
            }]
        } else {
            vec![]
        },
        host_selection_retry_max_attempts: 5,
        // retryRemoteLocalities: retries move on to the next locality priority.
        retry_priority: (r.and_then(|r| r.retry_remote_localities) == Some(true)).then(|| {
            rt::retry_policy::RetryPriority {
                name: "envoy.retry_priorities.previous_priorities".into(),
                config_type: Some(rt::retry_policy::retry_priority::ConfigType::TypedConfig(
                    pb::any(&envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig {
                        update_frequency: 2,
                    }),
                )),
            }
        }),
        retry_back_off: backoff(r),
        ..Default::default()
    })
}

fn backoff(r: Option<&istio::HttpRetry>) -> Option<rt::retry_policy::RetryBackOff> {
    r.and_then(|r| r.backoff)
        .map(|b| rt::retry_policy::RetryBackOff {
            base_interval: Some(pb::duration(b.as_std())),
            ..Default::default()
        })
}

/// `retryOn` → (Envoy's retry_on, retriable status codes); `default` when empty.
fn parse_retry_on(retry_on: &str, default: &str) -> (String, Vec<u32>) {
    let mut on: Vec<String> = Vec::new();
    let mut codes = Vec::new();
    for part in retry_on.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match part.parse::<u32>() {
            Ok(code) if (100..600).contains(&code) => codes.push(code),
            _ => on.push(part.to_string()),
        }
    }
    if on.is_empty() && codes.is_empty() {
        return (default.to_string(), codes);
    }
    if !codes.is_empty() && !on.iter().any(|s| s == "retriable-status-codes") {
        on.push("retriable-status-codes".into());
    }
    (on.join(","), codes)
}

/// The retry policy of an inbound route: a request reset before it reached the
/// application was never processed, so retrying it is safe for any method (istiod's
/// default, which shields clients from an application closing an idle connection while
/// a request is on its way). gRPC ports get none: streams cannot be replayed.
pub(crate) fn inbound_retry_policy(r: Option<&istio::HttpRetry>) -> Option<rt::RetryPolicy> {
    let (attempts, retry_on) = match r {
        Some(r) if r.attempts <= 0 => return None,
        Some(r) => (r.attempts as u32, r.retry_on.as_str()),
        None => (2, ""),
    };
    let (retry_on, codes) = parse_retry_on(retry_on, INBOUND_RETRY_ON);
    Some(rt::RetryPolicy {
        retry_on,
        num_retries: pb::u32v(attempts),
        retriable_status_codes: codes,
        retry_back_off: backoff(r),
        ..Default::default()
    })
}

/// Chooses the port of a destination: the explicit one, else the route's port if the
/// service has it, else the service's only port.
fn destination_port(dest: &istio::Destination, svc: Option<&Service>, route_port: u16) -> u16 {
    if let Some(p) = &dest.port {
        return p.number as u16;
    }
    match svc {
        Some(s) if s.port(route_port).is_some() => route_port,
        Some(s) if s.ports.len() == 1 => s.ports[0].port,
        _ => route_port,
    }
}

/// The cluster name a VirtualService destination points at.
pub fn destination_cluster(
    ctx: &ProxyContext,
    vs_ns: &str,
    dest: &istio::Destination,
    route_port: u16,
) -> String {
    let host = host::resolve(&dest.host, vs_ns, &ctx.snap.mesh.domain_suffix);
    let svc = ctx.snap.services.get(&host);
    let port = destination_port(dest, svc.map(|s| &**s), route_port);
    naming::outbound_cluster(port, &dest.subset, &host)
}

/// Whether the client's DestinationRule for `host` balances by consistent hash.
fn consistent_hash(ctx: &ProxyContext, host: &str) -> bool {
    consistent_hash_of(ctx, host).is_some()
}

fn consistent_hash_of(ctx: &ProxyContext, host: &str) -> Option<istio::ConsistentHashLb> {
    let svc = ctx.snap.services.get(host)?;
    let dr = ctx
        .snap
        .destination_rule(&ctx.proxy.namespace, ctx.labels, svc)?;
    dr.spec
        .traffic_policy
        .as_ref()
        .and_then(|t| t.load_balancer.as_ref())
        .and_then(|l| l.consistent_hash.clone())
}

fn hash_policies(ctx: &ProxyContext, host: &str) -> Vec<rt::route_action::HashPolicy> {
    use rt::route_action::hash_policy::{self, PolicySpecifier};
    let Some(ch) = consistent_hash_of(ctx, host) else {
        return vec![];
    };
    let spec = if let Some(h) = &ch.http_header_name {
        PolicySpecifier::Header(hash_policy::Header {
            header_name: h.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &ch.http_cookie {
        PolicySpecifier::Cookie(hash_policy::Cookie {
            name: c.name.clone(),
            path: c.path.clone(),
            ttl: c.ttl.map(|d| pb::duration(d.as_std())),
            ..Default::default()
        })
    } else if ch.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip: true })
    } else if let Some(q) = &ch.http_query_parameter_name {
        PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: q.clone() })
    } else {
        return vec![];
    };
    vec![rt::route_action::HashPolicy {
        policy_specifier: Some(spec),
        terminal: false,
    }]
}

/// Envoy routes for one VirtualService HTTP rule on `port`, one per match block.
/// `istio.config`: the object path istiod puts on routes it builds from a VirtualService.
pub fn config_metadata(
    vs: &VirtualServiceConfig,
) -> envoy_types::pb::envoy::config::core::v3::Metadata {
    let path = format!(
        "/apis/networking.istio.io/v1/namespaces/{}/virtual-service/{}",
        vs.key.namespace, vs.key.name
    );
    envoy_types::pb::envoy::config::core::v3::Metadata {
        filter_metadata: HashMap::from([(
            "istio".to_string(),
            pb::to_struct(&serde_json::json!({ "config": path })),
        )]),
        ..Default::default()
    }
}

pub(crate) fn http_rule_routes(
    ctx: &ProxyContext,
    vs: &VirtualServiceConfig,
    rule: &istio::HttpRoute,
    port: u16,
    gateway: Option<&str>,
    tls: bool,
) -> Vec<Route> {
    if rule.delegate.is_some() {
        return vec![];
    }
    let ns = &vs.key.namespace;
    let matches: Vec<Option<&istio::HttpMatchRequest>> = if rule.matches.is_empty() {
        vec![None]
    } else {
        rule.matches.iter().map(Some).collect()
    };
    let mut out = Vec::new();
    // A rate limit policy attached to this rule, found by the rule's place in the
    // VirtualService (delegates' rules are merged into their root's `http`, so a policy
    // names them through the root).
    let rate_limits = if !ctx.snap.rate_limits.reaches(vs) {
        HashMap::new()
    } else {
        vs.spec
            .http
            .iter()
            .position(|r| std::ptr::eq(r, rule))
            .map(|i| super::ratelimit::route_configs(ctx, vs, i))
            .unwrap_or_default()
    };
    for m in matches {
        if let Some(m) = m {
            if m.port.is_some_and(|p| p != u32::from(port)) {
                continue;
            }
            let gws: Vec<String> = m
                .gateways
                .iter()
                .map(|g| crate::model::snapshot::resolve_gateway(g, ns))
                .collect();
            let here = gateway.unwrap_or("mesh");
            if !gws.is_empty() && !gws.iter().any(|g| g == here) {
                continue;
            }
            if gateway.is_none() {
                if !m.source_labels.is_empty() && !labels_match(&m.source_labels, ctx.labels) {
                    continue;
                }
                if !m.source_namespace.is_empty() && m.source_namespace != ctx.proxy.namespace {
                    continue;
                }
            }
        }
        let name = m
            .map(|m| m.name.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(rule.name.as_str());
        let mut route = Route {
            name: name.to_string(),
            r#match: Some(route_match_with(m, vs.gateway_semantics())),
            // match.statPrefix: Envoy's per-route stats under this prefix.
            stat_prefix: m.map(|m| m.stat_prefix.clone()).unwrap_or_default(),
            // Which VirtualService made the route, as istiod records it (istioctl and
            // `meshd explain` read it back).
            metadata: Some(config_metadata(vs)),
            ..Default::default()
        };
        let mut filter_configs: HashMap<String, Any> = rate_limits.clone();
        if let Some(f) = &rule.fault {
            filter_configs.insert(FAULT_FILTER.into(), pb::any(&fault_config(f)));
        }
        if let Some(c) = &rule.cors_policy {
            filter_configs.insert(CORS_FILTER.into(), pb::any(&cors_config(c)));
        }
        if ctx.snap.sessions
            && let Some(c) = vs
                .spec
                .http
                .iter()
                .position(|r| std::ptr::eq(r, rule))
                .and_then(|i| super::session::route_config(vs, i))
        {
            filter_configs.insert(super::session::FILTER.into(), c);
        }
        route.typed_per_filter_config = filter_configs;
        let (req_add, req_remove) =
            header_ops(rule.headers.as_ref().and_then(|h| h.request.as_ref()));
        let (resp_add, resp_remove) =
            header_ops(rule.headers.as_ref().and_then(|h| h.response.as_ref()));
        route.request_headers_to_add = req_add;
        route.request_headers_to_remove = req_remove;
        route.response_headers_to_add = resp_add;
        route.response_headers_to_remove = resp_remove;

        if let Some(r) = &rule.redirect {
            route.action = Some(Action::Redirect(redirect(r, port, tls)));
        } else if let Some(d) = &rule.direct_response {
            route.action = Some(Action::DirectResponse(direct_response(d)));
        } else {
            route.action = Some(Action::Route(route_action(ctx, vs, rule, port)));
        }
        route.decorator = Some(rt::Decorator {
            operation: operation(&route, &vs.key.name, port),
            ..Default::default()
        });
        out.push(route);
    }
    out
}

/// An HTTP redirect; `route_port` is the port the route serves (`derivePort:
/// FROM_REQUEST_PORT` keeps it, as istiod does, since routes are per port).
fn redirect(r: &istio::HttpRedirect, route_port: u16, tls: bool) -> rt::RedirectAction {
    use rt::redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    let code = match r.redirect_code.unwrap_or(301) {
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::MovedPermanently,
    };
    let mut port = match (r.port, r.derive_port) {
        (Some(p), _) => p,
        (None, Some(istio::RedirectPortSelection::FROM_REQUEST_PORT)) => u32::from(route_port),
        // FROM_PROTOCOL_DEFAULT is Envoy's own behaviour: no port.
        _ => 0,
    };
    // No explicit :80 for http or :443 for https (when the scheme is known here).
    // The scheme the client will use: the redirect's, else the request's.
    let scheme = match r.scheme.as_str() {
        "" if tls => "https",
        "" => "http",
        s => s,
    };
    if (port == 80 && scheme == "http") || (port == 443 && scheme == "https") {
        port = 0;
    }
    rt::RedirectAction {
        host_redirect: r.authority.clone(),
        port_redirect: port,
        response_code: code as i32,
        scheme_rewrite_specifier: (!r.scheme.is_empty())
            .then(|| SchemeRewriteSpecifier::SchemeRedirect(r.scheme.clone())),
        // (An empty path redirect keeps the path, as no rewrite does; istiod writes it.)
        path_rewrite_specifier: match &r.prefix_rewrite {
            Some(p) if !p.is_empty() && r.uri.is_empty() => {
                Some(PathRewriteSpecifier::PrefixRewrite(p.clone()))
            }
            _ => Some(PathRewriteSpecifier::PathRedirect(r.uri.clone())),
        },
        ..Default::default()
    }
}

fn direct_response(d: &istio::HttpDirectResponse) -> rt::DirectResponseAction {
    use base64::Engine;
    use core::data_source::Specifier;
    let body = d.body.as_ref().and_then(|b| {
        if let Some(s) = &b.string {
            Some(Specifier::InlineString(s.clone()))
        } else {
            b.bytes.as_ref().map(|s| {
                Specifier::InlineBytes(
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .unwrap_or_else(|_| s.as_bytes().to_vec()),
                )
            })
        }
    });
    rt::DirectResponseAction {
        status: d.status,
        body: body.map(|s| core::DataSource {
            specifier: Some(s),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn route_action(
    ctx: &ProxyContext,
    vs: &VirtualServiceConfig,
    rule: &istio::HttpRoute,
    port: u16,
) -> RouteAction {
    let ns = &vs.key.namespace;
    let mut action = RouteAction::default();
    if vs.gateway_semantics() {
        // A backend that does not resolve answers 500, as the Gateway API asks.
        action.cluster_not_found_response_code =
            rt::route_action::ClusterNotFoundResponseCode::InternalServerError as i32;
    }
    set_timeout(
        &mut action,
        rule.timeout.map(|t| t.as_std()),
        ctx.proxy.proxyless,
    );
    let dests: Vec<&istio::HttpRouteDestination> = if rule.route.len() > 1 {
        rule.route
            .iter()
            .filter(|d| d.weight.unwrap_or(0) > 0)
            .collect()
    } else {
        rule.route.iter().collect()
    };
    if dests.len() == 1 && dests[0].headers.is_none() {
        action.cluster_specifier = Some(ClusterSpecifier::Cluster(destination_cluster(
            ctx,
            ns,
            &dests[0].destination,
            port,
        )));
    } else {
        let clusters = dests
            .iter()
            .map(|d| {
                let (req_add, req_remove) =
                    header_ops(d.headers.as_ref().and_then(|h| h.request.as_ref()));
                let (resp_add, resp_remove) =
                    header_ops(d.headers.as_ref().and_then(|h| h.response.as_ref()));
                rt::weighted_cluster::ClusterWeight {
                    name: destination_cluster(ctx, ns, &d.destination, port),
                    weight: pb::u32v(if dests.len() == 1 {
                        100
                    } else {
                        d.weight.unwrap_or(0).max(0) as u32
                    }),
                    request_headers_to_add: req_add,
                    request_headers_to_remove: req_remove,
                    response_headers_to_add: resp_add,
                    response_headers_to_remove: resp_remove,
                    ..Default::default()
                }
            })
            .collect();
        action.cluster_specifier = Some(ClusterSpecifier::WeightedClusters(rt::WeightedCluster {
            clusters,
            ..Default::default()
        }));
    }
    if let Some(rw) = &rule.rewrite {
        let separated_prefix = vs
            .gateway_semantics()
            .then(|| rule.matches.first())
            .flatten()
            .and_then(|m| m.uri.as_ref())
            .and_then(|u| u.prefix.as_deref())
            .filter(|p| *p != "/");
        if rw.uri == "/"
            && let Some(prefix) = separated_prefix
        {
            // Replacing a path-separated prefix with `/` removes it (and the slash after
            // it): `/foo/bar` becomes `/bar`, `/foo` becomes `/`.
            action.regex_rewrite = Some(
                envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute {
                    pattern: Some(regex(&format!(
                        "^{}(/?)(.*)",
                        regex_syntax::escape(prefix.trim_end_matches('/'))
                    ))),
                    substitution: "/\\2".into(),
                },
            );
        } else if !rw.uri.is_empty() {
            action.prefix_rewrite = rw.uri.clone();
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            action.regex_rewrite = Some(
                envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute {
                    pattern: Some(regex(&rr.matches)),
                    substitution: rr.rewrite.clone(),
                },
            );
        }
        if !rw.authority.is_empty() {
            action.host_rewrite_specifier = Some(
                rt::route_action::HostRewriteSpecifier::HostRewriteLiteral(rw.authority.clone()),
            );
        }
    }
    let mut mirrors: Vec<(&istio::Destination, f64)> = Vec::new();
    if let Some(m) = &rule.mirror {
        let pct = rule
            .mirror_percentage
            .as_ref()
            .map(|p| p.value)
            .or(rule
                .mirror_percent
                .or(rule.mirror_percent_snake)
                .map(f64::from))
            .unwrap_or(100.0);
        mirrors.push((m, pct));
    }
    for m in &rule.mirrors {
        mirrors.push((
            &m.destination,
            m.percentage.as_ref().map(|p| p.value).unwrap_or(100.0),
        ));
    }
    action.request_mirror_policies = mirrors
        .into_iter()
        .map(|(d, pct)| rt::route_action::RequestMirrorPolicy {
            cluster: destination_cluster(ctx, ns, d, port),
            runtime_fraction: Some(core::RuntimeFractionalPercent {
                default_value: Some(percent(pct)),
                ..Default::default()
            }),
            trace_sampled: pb::boolv(false),
            ..Default::default()
        })
        .collect();
    if let Some(first) = dests.first() {
        let host = host::resolve(&first.destination.host, ns, &ctx.snap.mesh.domain_suffix);
        action.hash_policy = hash_policies(ctx, &host);
    }
    let retries = rule
        .retries
        .as_ref()
        .or(ctx.snap.mesh.default_http_retry_policy.as_ref());
    // A retry of a request to one consistently hashed destination stays on its host.
    let hashed = dests.len() == 1
        && consistent_hash(
            ctx,
            &host::resolve(&dests[0].destination.host, ns, &ctx.snap.mesh.domain_suffix),
        );
    action.retry_policy = retry_policy(retries, hashed);
    action
}

/// A route's timeout as istiod sets it (0: none). Envoy applies `timeout` only while
/// the route has no `max_stream_duration`: that field switches it to stream-duration
/// limits instead, so sidecars and gateways get `timeout` plus the (deprecated but
/// honoured) `max_grpc_timeout` capping a gRPC client's `grpc-timeout` at the same value.
/// gRPC's own xDS client reads only `max_stream_duration`.
fn set_timeout(action: &mut RouteAction, timeout: Option<std::time::Duration>, proxyless: bool) {
    let t = pb::duration(timeout.unwrap_or_default());
    if proxyless {
        action.max_stream_duration = Some(rt::route_action::MaxStreamDuration {
            max_stream_duration: Some(t),
            ..Default::default()
        });
    } else {
        #[allow(deprecated)]
        {
            action.max_grpc_timeout = Some(t);
        }
    }
    action.timeout = Some(t);
}

/// An inbound route's limits: none (the client's sidecar enforces the route's timeout),
/// and no `grpc-timeout` header limit either, as istiod's inbound routes.
fn inbound_unlimited() -> Option<rt::route_action::MaxStreamDuration> {
    Some(rt::route_action::MaxStreamDuration {
        max_stream_duration: pb::secs(0),
        grpc_timeout_header_max: pb::secs(0),
        ..Default::default()
    })
}

/// A route's span name, as istiod writes it: `host:port` of its one destination cluster
/// (else `VirtualService:port`), then the path it matches (`/exact`, `/prefix*`, the
/// regex, or `/*`).
fn operation(route: &Route, vs_name: &str, port: u16) -> String {
    use rt::route_match::PathSpecifier;
    let path = match route
        .r#match
        .as_ref()
        .and_then(|m| m.path_specifier.as_ref())
    {
        Some(PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(PathSpecifier::Path(p)) => p.clone(),
        Some(PathSpecifier::SafeRegex(r)) => r.regex.clone(),
        _ => "/*".to_string(),
    };
    let single = match &route.action {
        Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(c)),
            ..
        })) => naming::parse_cluster(c).map(|(_, port, _, host)| (host, port)),
        _ => None,
    };
    match single {
        Some((host, port)) => format!("{host}:{port}{path}"),
        None => format!("{vs_name}:{port}{path}"),
    }
}

/// Default route to a service port, as istiod generates it when no VirtualService applies.
pub fn default_route(ctx: &ProxyContext, cluster: &str, host: &str, port: u16) -> Route {
    Route {
        name: "default".into(),
        r#match: Some(route_match(None)),
        decorator: Some(rt::Decorator {
            operation: format!("{host}:{port}/*"),
            ..Default::default()
        }),
        action: Some(Action::Route({
            let mut a = RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
                hash_policy: hash_policies(ctx, host),
                ..Default::default()
            };
            set_timeout(&mut a, None, ctx.proxy.proxyless);
            // istiod keeps `previous_hosts` on default routes, hashed or not.
            a.retry_policy = retry_policy(ctx.snap.mesh.default_http_retry_policy.as_ref(), false);
            a
        })),
        ..Default::default()
    }
}

/// Names a client in `client_ns` may use for a service, as istiod lists them in virtual
/// host domains: the FQDN (also with the trailing dot of an absolute name), for a
/// Kubernetes service its short names, and its addresses. No `:port` forms: sidecar
/// route configurations ignore the port in the Host header. A headless service's
/// names also come as `*.NAME`, so that pods addressed by their own names
/// (`web-0.web.ns.svc.cluster.local`, as StatefulSets do) reach it.
fn service_domains(svc: &Service, client_ns: &str, domain_suffix: &str) -> Vec<String> {
    let mut names = vec![svc.hostname.clone(), format!("{}.", svc.hostname)];
    if svc.kubernetes
        && let Some(prefix) = svc.hostname.strip_suffix(&format!(".svc.{domain_suffix}"))
    {
        if svc.namespace == client_ns {
            names.push(svc.name.clone());
        }
        names.push(format!("{prefix}.svc"));
        names.push(prefix.to_string());
    }
    if svc.kubernetes && svc.resolution == crate::model::service::Resolution::Passthrough {
        let wild: Vec<String> = names.iter().map(|n| format!("*.{n}")).collect();
        names.extend(wild);
    }
    names.extend(svc.addresses.iter().cloned());
    // An alias is reached by the same name forms as a Service of its own.
    for (name, ns) in &svc.aliases {
        let fqdn = format!("{name}.{ns}.svc.{domain_suffix}");
        if ns == client_ns {
            names.push(name.clone());
        }
        names.push(format!("{name}.{ns}.svc"));
        names.push(format!("{name}.{ns}"));
        names.push(format!("{fqdn}."));
        names.push(fqdn);
    }
    names
}

/// A gateway virtual host's domains, as istiod lists them: the host alone (the route
/// configuration ignores the port in `Host: name:port`).
pub fn gateway_domains(host: &str) -> Vec<String> {
    vec![host.to_string()]
}

/// Whether a service's `port` carries HTTP routes (HTTP, or a protocol to sniff).
fn routes_http(svc: &Service, port: u16) -> bool {
    svc.port(port).is_some_and(|p| {
        p.protocol.is_http() || p.protocol == crate::model::service::Protocol::Unsupported
    })
}

/// The VirtualService of `egress` for a service: one naming its host exactly (the first
/// in order), else the one with the most specific wildcard host that matches it.
/// Also returns its position in the scope's order.
fn virtual_service_for<'a>(
    egress: &'a EgressScope,
    hostname: &str,
) -> Option<(usize, &'a Arc<VirtualServiceConfig>)> {
    if let Some(found) = egress.with_host(hostname).next() {
        return Some(found);
    }
    egress
        .with_wildcards()
        .filter_map(|(i, vs)| {
            vs.hosts
                .iter()
                .filter(|h| h.starts_with('*') && host::matches(h, hostname))
                .map(|h| h.len())
                .max()
                .map(|len| (len, (i, vs)))
        })
        // The longest pattern; among equals, the first VirtualService.
        .fold(None, |best: Option<(usize, _)>, (len, found)| match best {
            Some((b, _)) if b >= len => best,
            _ => Some((len, found)),
        })
        .map(|(_, found)| found)
}

/// A VirtualService's HTTP rules as a sidecar's routes on `port`.
fn sidecar_routes(ctx: &ProxyContext, vs: &VirtualServiceConfig, port: u16) -> Vec<Route> {
    vs_routes(ctx, vs, port, None, false)
}

/// A VirtualService's HTTP rules as routes, up to the first that matches every request
/// (a rule without a match, or a match on `/` alone): Envoy tries routes in order, so
/// none after it could be reached — istiod leaves them out too.
/// `tls`: the routes serve requests that came over TLS (a gateway's HTTPS server).
pub(crate) fn vs_routes(
    ctx: &ProxyContext,
    vs: &VirtualServiceConfig,
    port: u16,
    gateway: Option<&str>,
    tls: bool,
) -> Vec<Route> {
    let mut out = Vec::new();
    for rule in &vs.spec.http {
        // (A rule without matches makes a route on `/` alone: a catch-all too.)
        for r in http_rule_routes(ctx, vs, rule, port, gateway, tls) {
            let last = is_catch_all(&r);
            out.push(r);
            if last {
                return out;
            }
        }
    }
    out
}

/// Whether a route matches every request: path `/` (prefix or path-separated) or the
/// regex `.*`, and no header or query condition.
fn is_catch_all(r: &Route) -> bool {
    let Some(m) = &r.r#match else { return false };
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) | Some(PathSpecifier::PathSeparatedPrefix(p)) => p == "/",
        Some(PathSpecifier::SafeRegex(re)) => re.regex == ".*",
        _ => false,
    };
    path && m.headers.is_empty() && m.query_parameters.is_empty() && m.dynamic_metadata.is_empty()
}

/// A service's virtual host on `port`: the routes of its VirtualService `vs` (the one
/// [`virtual_service_for`] chose), or the default route when it has none (or no rule
/// yields a route here). Also returns whether the VirtualService's routes were used.
fn service_virtual_host(
    ctx: &ProxyContext,
    svc: &Service,
    vs: Option<&VirtualServiceConfig>,
    port: u16,
) -> (bool, VirtualHost) {
    let name = naming::virtual_host(&svc.hostname, port);
    let domains = service_domains(svc, &ctx.proxy.namespace, &ctx.snap.mesh.domain_suffix);
    if let Some(v) = vs {
        let routes = sidecar_routes(ctx, v, port);
        if !routes.is_empty() {
            return (
                true,
                VirtualHost {
                    name,
                    domains,
                    routes,
                    include_request_attempt_count: true,
                    ..Default::default()
                },
            );
        }
    }
    let cluster = naming::outbound_cluster(port, "", &svc.hostname);
    (
        false,
        VirtualHost {
            name,
            domains,
            routes: vec![default_route(ctx, &cluster, &svc.hostname, port)],
            include_request_attempt_count: true,
            ..Default::default()
        },
    )
}

/// One virtual host an outbound HTTP port may get, decided before any route is built
/// (so that a caller holding the host's translation from before can skip building it).
pub(crate) enum Planned<'a> {
    /// A service of the scope with an HTTP port here, and its VirtualService (with its
    /// position in the scope's order) if one applies.
    Service {
        svc: &'a Arc<Service>,
        vs: Option<(usize, &'a Arc<VirtualServiceConfig>)>,
    },
    /// A VirtualService host that no service in scope took (a host outside the
    /// registry, or a service this proxy cannot see): routed by the `i`th
    /// VirtualService, if any of its rules yields a route here.
    VsHost {
        i: usize,
        host: &'a str,
        vs: &'a Arc<VirtualServiceConfig>,
        svc: Option<&'a Arc<Service>>,
    },
}

/// The virtual hosts an outbound HTTP port gets from one egress scope, in the order
/// they are found: every service with an HTTP (or sniffed) port gets the routes of its
/// VirtualService (exact host first, else the most specific wildcard host, as istiod
/// picks) or a default route; hosts of VirtualServices that name no service in scope
/// get virtual hosts of their own.
pub(crate) fn outbound_plan<'a>(
    ctx: &'a ProxyContext,
    egress: &'a EgressScope,
    port: u16,
) -> Vec<Planned<'a>> {
    let mut plan = Vec::new();
    // VirtualService hosts whose routes some service took.
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for svc in &egress.services {
        if !routes_http(svc, port) {
            continue;
        }
        let vs = virtual_service_for(egress, &svc.hostname);
        if let Some((_, vs)) = vs {
            for h in &vs.hosts {
                if host::matches(h, &svc.hostname) {
                    used.insert(h);
                }
            }
        }
        plan.push(Planned::Service { svc, vs });
    }
    // VirtualService hosts no service in scope took: hosts outside the registry (or
    // services this proxy cannot see), each once.
    let mut claimed: BTreeSet<&str> = BTreeSet::new();
    for (i, vs) in egress.virtual_services.iter().enumerate() {
        for h in &vs.hosts {
            // A wildcard host that covers a service here shapes services only (istiod
            // drops it as a host of its own, even where a more specific one won).
            let covers_a_service = h.starts_with('*')
                && egress
                    .services
                    .iter()
                    .any(|s| routes_http(s, port) && host::matches(h, &s.hostname));
            if covers_a_service || used.contains(h.as_str()) || !claimed.insert(h) {
                continue;
            }
            let svc = ctx.snap.services.get(h);
            // A VirtualService for a known service only shapes that service's ports.
            if let Some(svc) = svc
                && !routes_http(svc, port)
            {
                continue;
            }
            // A host outside the registry is routed on the HTTP ports of the services
            // the same VirtualService names, or on port 80 when it names none (istiod).
            if svc.is_none() {
                let names = |want: &dyn Fn(&Service) -> bool| {
                    vs.hosts.iter().any(|vh| {
                        egress
                            .services
                            .iter()
                            .any(|s| want(s) && host::matches(vh, &s.hostname))
                    })
                };
                let on_port = names(&|s| routes_http(s, port));
                let any = names(&|s| s.ports.iter().any(|p| routes_http(s, p.port)));
                if !on_port && (any || port != 80) {
                    continue;
                }
            }
            plan.push(Planned::VsHost {
                i,
                host: h,
                vs,
                svc,
            });
        }
    }
    plan
}

/// The virtual host of a VirtualService host no service took ([`Planned::VsHost`]):
/// None when none of its rules yields a route on `port`.
fn vs_host_virtual_host(
    ctx: &ProxyContext,
    host: &str,
    vs: &VirtualServiceConfig,
    svc: Option<&Service>,
    port: u16,
) -> Option<VirtualHost> {
    let routes = sidecar_routes(ctx, vs, port);
    if routes.is_empty() {
        return None;
    }
    let domains = match svc {
        Some(svc) => service_domains(svc, &ctx.proxy.namespace, &ctx.snap.mesh.domain_suffix),
        None => vec![host.to_string()],
    };
    Some(VirtualHost {
        name: naming::virtual_host(host, port),
        domains,
        routes,
        include_request_attempt_count: true,
        ..Default::default()
    })
}

/// Virtual hosts in a port's order: those routed by a VirtualService first, in the
/// VirtualServices' order (stable, and earlier rules keep contested domains), then the
/// services' default hosts. `items` pairs each host with its VirtualService position
/// when its routes came from one.
pub(crate) fn in_port_order<V>(items: Vec<(Option<usize>, V)>) -> Vec<V> {
    let mut with_vs: Vec<(usize, V)> = Vec::new();
    let mut defaults: Vec<V> = Vec::new();
    for (i, v) in items {
        match i {
            Some(i) => with_vs.push((i, v)),
            None => defaults.push(v),
        }
    }
    with_vs.sort_by_key(|(i, _)| *i);
    let mut out: Vec<V> = with_vs.into_iter().map(|(_, v)| v).collect();
    out.extend(defaults);
    out
}

/// Virtual hosts for an outbound HTTP port, from one egress scope ([`outbound_plan`]),
/// in [`in_port_order`].
pub fn outbound_virtual_hosts(
    ctx: &ProxyContext,
    egress: &EgressScope,
    port: u16,
) -> Vec<VirtualHost> {
    let items = outbound_plan(ctx, egress, port)
        .into_iter()
        .filter_map(|p| match p {
            Planned::Service { svc, vs } => {
                let (routed, vh) = service_virtual_host(ctx, svc, vs.map(|(_, v)| &**v), port);
                Some((vs.filter(|_| routed).map(|(i, _)| i), vh))
            }
            Planned::VsHost { i, host, vs, svc } => {
                vs_host_virtual_host(ctx, host, vs, svc.map(|s| &**s), port).map(|vh| (Some(i), vh))
            }
        })
        .collect();
    in_port_order(items)
}

/// Removes domains already used by an earlier virtual host: Envoy rejects a route
/// configuration in which two virtual hosts share a domain.
pub fn dedup_domains(vhosts: &mut Vec<VirtualHost>) {
    let mut used = BTreeSet::new();
    for vh in vhosts.iter_mut() {
        vh.domains.retain(|d| used.insert(d.to_ascii_lowercase()));
    }
    vhosts.retain(|vh| !vh.domains.is_empty());
}

/// The catch-all virtual host: pass unknown hosts through, or refuse them with 502 under
/// REGISTRY_ONLY, as istiod does.
/// Sidecar `outboundTrafficPolicy.egressProxy` (with ALLOW_ANY): the cluster traffic to
/// unknown destinations goes to instead of straight out.
pub fn egress_proxy_cluster(ctx: &ProxyContext) -> Option<String> {
    if ctx.scope.outbound_policy != OutboundTrafficMode::ALLOW_ANY {
        return None;
    }
    let d = ctx
        .scope
        .sidecar
        .as_ref()?
        .spec
        .outbound_traffic_policy
        .as_ref()?
        .egress_proxy
        .as_ref()?;
    let host = host::resolve(&d.host, &ctx.proxy.namespace, &ctx.snap.mesh.domain_suffix);
    let svc = ctx.snap.services.get(&host);
    let port = match (&d.port, svc) {
        (Some(p), _) => p.number as u16,
        (None, Some(s)) if s.ports.len() == 1 => s.ports[0].port,
        _ => return None,
    };
    Some(naming::outbound_cluster(port, &d.subset, &host))
}

fn catch_all(policy: OutboundTrafficMode, egress_proxy: Option<String>) -> VirtualHost {
    match policy {
        // egressProxy applies under ALLOW_ANY only (`egress_proxy_cluster`).
        OutboundTrafficMode::ALLOW_ANY_DYNAMIC_DNS => super::dfp::catch_all_virtual_host(),
        OutboundTrafficMode::ALLOW_ANY => VirtualHost {
            name: "allow_any".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "allow_any".into(),
                r#match: Some(route_match(None)),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(
                        egress_proxy.unwrap_or_else(|| naming::PASSTHROUGH.into()),
                    )),
                    timeout: pb::secs(0),
                    #[allow(deprecated)]
                    max_grpc_timeout: pb::secs(0),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            include_request_attempt_count: true,
            ..Default::default()
        },
        OutboundTrafficMode::REGISTRY_ONLY => VirtualHost {
            name: "block_all".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "block_all".into(),
                r#match: Some(route_match(None)),
                action: Some(Action::DirectResponse(rt::DirectResponseAction {
                    status: 502,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            include_request_attempt_count: true,
            ..Default::default()
        },
    }
}

/// Route configuration `name` for a sidecar: outbound routes by port number, or
/// `HOST:PORT` for the listener of one service whose protocol is sniffed (that
/// service's routes for any authority, as istiod: the listener's address already chose
/// the service).
pub fn sidecar_route_config(ctx: &ProxyContext, name: &str) -> Option<RouteConfiguration> {
    if let Some((host, port)) = name.rsplit_once(':') {
        let port: u16 = port.parse().ok()?;
        let egress = ctx
            .scope
            .egress
            .iter()
            .find(|e| e.listener.as_ref().is_none_or(|l| l.port.is_none()))?;
        let svc = egress.services.iter().find(|s| s.hostname == host)?;
        let vs = virtual_service_for(egress, &svc.hostname);
        let (_, vhost) = service_virtual_host(ctx, svc, vs.map(|(_, v)| &**v), port);
        return Some(RouteConfiguration {
            name: name.to_string(),
            virtual_hosts: vec![VirtualHost {
                domains: vec!["*".into()],
                ..vhost
            }],
            validate_clusters: pb::boolv(false),
            ignore_port_in_host_matching: true,
            max_direct_response_body_size_bytes: pb::u32v(MAX_DIRECT_RESPONSE_BODY),
            ..Default::default()
        });
    }
    let port: u16 = name.parse().ok()?;
    let egress = egress_for_port(ctx, port)?;
    let mut vhosts = outbound_virtual_hosts(ctx, egress, port);
    // Contested domains go to the earlier host (VirtualServices first), then the hosts
    // are listed by name as istiod lists them (`istioctl proxy-config routes` prints them
    // in this order; Envoy's choice depends on the domains, not the order).
    dedup_domains(&mut vhosts);
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    vhosts.push(outbound_catch_all(ctx));
    dedup_domains(&mut vhosts);
    Some(RouteConfiguration {
        virtual_hosts: vhosts,
        ..outbound_envelope(name)
    })
}

/// The egress listener of the proxy's Sidecar that serves outbound `port`: one that
/// names the port, else the catch-all.
pub(crate) fn egress_for_port<'a>(ctx: &'a ProxyContext, port: u16) -> Option<&'a EgressScope> {
    ctx.scope
        .egress
        .iter()
        .find(|e| {
            e.listener
                .as_ref()
                .and_then(|l| l.port.as_ref())
                .is_some_and(|p| p.number == u32::from(port))
        })
        .or_else(|| {
            ctx.scope
                .egress
                .iter()
                .find(|e| e.listener.as_ref().is_none_or(|l| l.port.is_none()))
        })
}

/// The last virtual host of an outbound port's route configuration: unknown hosts.
pub(crate) fn outbound_catch_all(ctx: &ProxyContext) -> VirtualHost {
    catch_all(ctx.scope.outbound_policy, egress_proxy_cluster(ctx))
}

/// An outbound port's route configuration `name` without its virtual hosts.
pub(crate) fn outbound_envelope(name: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        validate_clusters: pb::boolv(false),
        ignore_port_in_host_matching: true,
        max_direct_response_body_size_bytes: pb::u32v(MAX_DIRECT_RESPONSE_BODY),
        ..Default::default()
    }
}

/// The largest `directResponse` body a route configuration may hold (Envoy's default is
/// 4 KiB; istiod allows 1 MiB so that a VirtualService's inline body is not refused).
pub const MAX_DIRECT_RESPONSE_BODY: u32 = 1 << 20;

/// Inline route configuration of an inbound HTTP filter chain.
pub fn inbound_route_config(
    ctx: &ProxyContext,
    cluster: &str,
    port: u16,
    grpc: bool,
) -> RouteConfiguration {
    RouteConfiguration {
        name: cluster.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "default".into(),
                r#match: Some(route_match(None)),
                // The span's name: the service this port serves, as istiod names it
                // (`host:port/*`), or the cluster when no service declares the port.
                decorator: Some(rt::Decorator {
                    operation: ctx
                        .targets
                        .iter()
                        .find(|t| t.target_port == port)
                        .map(|t| format!("{}:{}/*", t.service.hostname, t.port.port))
                        .unwrap_or_else(|| format!("{cluster}/*")),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
                    timeout: pb::secs(0),
                    max_stream_duration: inbound_unlimited(),
                    retry_policy: if grpc {
                        None
                    } else {
                        inbound_retry_policy(
                            ctx.snap.mesh.default_inbound_http_retry_policy.as_ref(),
                        )
                    },
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        validate_clusters: pb::boolv(false),
        ..Default::default()
    }
}

/// Routes of VirtualServices bound to `gateway` (`ns/name`) for `hosts` on `port`.
pub fn gateway_virtual_hosts(
    ctx: &ProxyContext,
    gateway: &str,
    server_hosts: &[String],
    port: u16,
    tls: bool,
    claimed: &mut BTreeSet<String>,
) -> Vec<VirtualHost> {
    let mut out = Vec::new();
    let gw_ns = gateway.split('/').next().unwrap_or_default();
    for vs in &ctx.snap.virtual_services {
        if !vs.gateways.iter().any(|g| g == gateway) {
            continue;
        }
        // Server hosts may be `ns/host`; a VirtualService is selected by namespace and
        // host. Each (VirtualService host, server host) pair that intersects serves the
        // narrower of the two: a `*` VirtualService behind a `foo.bar` server serves
        // foo.bar only, never every Host.
        let mut selected: Vec<String> = Vec::new();
        for h in &vs.hosts {
            for sh in server_hosts {
                let (ns, host_pat) = match sh.split_once('/') {
                    Some((n, h)) => (if n == "." { gw_ns } else { n }, h),
                    None => ("*", sh.as_str()),
                };
                if !((ns == "*" || ns == vs.key.namespace) && host::intersects(host_pat, h)) {
                    continue;
                }
                let narrower = if host::matches(h, host_pat) {
                    host_pat.to_string()
                } else {
                    h.clone()
                };
                if !selected.contains(&narrower) {
                    selected.push(narrower);
                }
            }
        }
        for h in &selected {
            if !claimed.insert(h.clone()) {
                continue;
            }
            let routes = vs_routes(ctx, vs, port, Some(gateway), tls);
            if routes.is_empty() {
                continue;
            }
            out.push(VirtualHost {
                name: naming::virtual_host(h, port),
                domains: gateway_domains(h),
                routes,
                include_request_attempt_count: true,
                ..Default::default()
            });
        }
    }
    out
}

/// Keeps route configuration builders honest about what they reference.
pub fn referenced_clusters(rc: &RouteConfiguration) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for vh in &rc.virtual_hosts {
        for r in &vh.routes {
            if let Some(Action::Route(a)) = &r.action {
                match &a.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => {
                        out.insert(c.clone());
                    }
                    Some(ClusterSpecifier::WeightedClusters(w)) => {
                        out.extend(w.clusters.iter().map(|c| c.name.clone()));
                    }
                    _ => {}
                }
                out.extend(a.request_mirror_policies.iter().map(|m| m.cluster.clone()));
            }
        }
    }
    out
}

/// Shared handle to a VirtualService list (for callers that keep scopes).
pub type VirtualServices = Vec<Arc<VirtualServiceConfig>>;
