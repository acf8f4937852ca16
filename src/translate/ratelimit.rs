//! RateLimitPolicy → Envoy's rate limit filters.
//!
//! - `meshd.local_ratelimit` (Envoy's `local_ratelimit`): the token bucket of the policy
//!   that governs a connection manager (a workload's inbound port, a gateway's
//!   listener), or a no-op where only route policies may apply; a route's policy
//!   replaces it per route (`typed_per_filter_config`, a bucket per Envoy route).
//! - `meshd.ratelimit` (Envoy's `ratelimit`): the governing policy's global limit.
//! - `meshd.ratelimit.NS.NAME`: a route policy's global limit, disabled in the manager
//!   and enabled on its routes (Envoy's per-route enabling needs a config, so the route
//!   carries its descriptors and domain).
//! - `envoy.filters.network.local_ratelimit` on inbound TCP chains: connections per unit,
//!   one bucket per policy and proxy (`share_key`).
//!
//! Every filter sets its rate limit actions itself, so `rate_limits` an EnvoyFilter puts
//! on routes or virtual hosts are never read by meshd's filters (nor meshd's by theirs:
//! the names differ from `envoy.filters.http.local_ratelimit`), and hand-written setups
//! keep working beside policies.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::ratelimit::v3::RateLimitServiceConfig;
use envoy_types::pb::envoy::config::route::v3::{
    self as rt, FilterConfig, RateLimit, rate_limit::Action, rate_limit::action,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    LocalRateLimitDescriptor, XRateLimitHeadersRfcVersion,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3::{
    RateLimit as GlobalRateLimit, RateLimitPerRoute,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as TcpLocalRateLimit;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, HttpStatus, TokenBucket};
use envoy_types::pb::google::protobuf::Any;

use super::context::ProxyContext;
use crate::envoy::pb;
use crate::model::object::Object;
use crate::model::proxy::ProxyKind;
use crate::model::ratelimit::{self as model, Attach, RateLimitPolicySpec};
use crate::model::snapshot::VirtualServiceConfig;

pub const LOCAL_FILTER: &str = "meshd.local_ratelimit";
pub const GLOBAL_FILTER: &str = "meshd.ratelimit";
const EXPR_DESCRIPTOR: &str = "envoy.rate_limit_descriptors.expr";
/// Per-value buckets kept per wildcard descriptor (Envoy's default is 20: one bucket per
/// user of a busy service needs more).
const MAX_DYNAMIC_DESCRIPTORS: u32 = 10_000;

fn stat_prefix(o: &Object) -> String {
    format!("ratelimit_{}_{}", o.key.namespace, o.key.name)
}

fn route_global_name(o: &Object) -> String {
    format!("{GLOBAL_FILTER}.{}.{}", o.key.namespace, o.key.name)
}

fn percent(n: u32) -> Option<core::RuntimeFractionalPercent> {
    Some(core::RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: n,
            denominator: 0,
        }),
        runtime_key: String::new(),
    })
}

fn status(p: &RateLimitPolicySpec) -> Option<HttpStatus> {
    let s = p.status();
    (s != 429).then_some(HttpStatus { code: i32::from(s) })
}

fn headers_to_add(p: &RateLimitPolicySpec) -> Vec<core::HeaderValueOption> {
    p.response
        .iter()
        .flat_map(|r| r.headers.iter())
        .map(|(k, v)| core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: k.to_ascii_lowercase(),
                // Envoy reads `%…%` in these values as substitutions: literal text.
                value: v.replace('%', "%%"),
                ..Default::default()
            }),
            append_action: core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd
                as i32,
            ..Default::default()
        })
        .collect()
}

fn x_ratelimit(p: &RateLimitPolicySpec) -> i32 {
    if p.rate_limit_headers() {
        XRateLimitHeadersRfcVersion::DraftVersion03 as i32
    } else {
        XRateLimitHeadersRfcVersion::Off as i32
    }
}

/// Rate limit actions and the descriptor entries (key, value) they produce.
type ActionList = (Vec<Action>, Vec<(String, String)>);

fn act(a: action::ActionSpecifier) -> Action {
    Action {
        action_specifier: Some(a),
    }
}

/// The policy's descriptors as Envoy rate limit action lists (a path prefix list makes
/// one per prefix) with the entries each produces; an empty value is a wildcard (a
/// bucket per value seen).
fn action_lists(o: &Object, p: &RateLimitPolicySpec, global: bool) -> Vec<ActionList> {
    let mut lists: Vec<ActionList> = vec![(Vec::new(), Vec::new())];
    for d in &p.descriptors {
        if let Some(ps) = &d.path_prefix {
            let mut next = Vec::new();
            for (actions, entries) in &lists {
                for prefix in ps {
                    let mut a = actions.clone();
                    a.push(act(action::ActionSpecifier::HeaderValueMatch(
                        action::HeaderValueMatch {
                            descriptor_key: "path_prefix".into(),
                            descriptor_value: prefix.clone(),
                            expect_match: pb::boolv(true),
                            headers: vec![rt::HeaderMatcher {
                                name: ":path".into(),
                                header_match_specifier: Some(
                                    rt::header_matcher::HeaderMatchSpecifier::StringMatch(
                                        envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                                            match_pattern: Some(envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Prefix(prefix.clone())),
                                            ..Default::default()
                                        },
                                    ),
                                ),
                                ..Default::default()
                            }],
                            ..Default::default()
                        },
                    )));
                    let mut e = entries.clone();
                    e.push(("path_prefix".into(), prefix.clone()));
                    next.push((a, e));
                }
            }
            lists = next;
            continue;
        }
        let (a, key) = if let Some(h) = &d.header {
            let key = h.to_ascii_lowercase();
            (
                act(action::ActionSpecifier::RequestHeaders(
                    action::RequestHeaders {
                        header_name: key.clone(),
                        descriptor_key: key.clone(),
                        skip_if_absent: false,
                    },
                )),
                key,
            )
        } else if d.principal.is_some() {
            let expr = envoy_types::pb::envoy::extensions::rate_limit_descriptors::expr::v3::Descriptor {
                descriptor_key: "principal".into(),
                // Plaintext: no peer certificate, no entry (the shared bucket).
                skip_if_error: true,
                expr_specifier: Some(envoy_types::pb::envoy::extensions::rate_limit_descriptors::expr::v3::descriptor::ExprSpecifier::Text(
                    "connection.uri_san_peer_certificate".into(),
                )),
            };
            (
                act(action::ActionSpecifier::Extension(
                    core::TypedExtensionConfig {
                        name: EXPR_DESCRIPTOR.into(),
                        typed_config: Some(pb::any(&expr)),
                    },
                )),
                "principal".to_string(),
            )
        } else if d.remote_address.is_some() {
            (
                act(action::ActionSpecifier::RemoteAddress(
                    action::RemoteAddress {},
                )),
                "remote_address".to_string(),
            )
        } else {
            continue;
        };
        for (actions, entries) in &mut lists {
            actions.push(a.clone());
            entries.push((key.clone(), String::new()));
        }
    }
    if global && p.descriptors.is_empty() {
        // Something for the service to count by: the policy itself.
        lists = vec![(
            vec![act(action::ActionSpecifier::GenericKey(
                action::GenericKey {
                    descriptor_value: format!("{}/{}", o.key.namespace, o.key.name),
                    ..Default::default()
                },
            ))],
            vec![],
        )];
    }
    lists.retain(|(a, _)| !a.is_empty());
    lists
}

fn rate_limits(lists: &[ActionList]) -> Vec<RateLimit> {
    lists
        .iter()
        .map(|(actions, _)| RateLimit {
            actions: actions.clone(),
            ..Default::default()
        })
        .collect()
}

/// `requests` per `unit`, `burst` at once: the bucket of the HTTP and TCP limiters.
fn token_bucket(l: &model::LocalLimit) -> TokenBucket {
    TokenBucket {
        max_tokens: l.burst().max(1),
        tokens_per_fill: pb::u32v(l.requests.max(1)),
        fill_interval: Some(pb::duration(l.unit.duration())),
    }
}

/// The local limit of `o` as Envoy's `local_ratelimit` configuration (a manager's, or
/// a route's).
pub fn local_config(o: &Object, p: &RateLimitPolicySpec) -> Option<LocalRateLimit> {
    let l = p.local.as_ref()?;
    let bucket = token_bucket(l);
    let lists = action_lists(o, p, false);
    let descriptors: Vec<LocalRateLimitDescriptor> = lists
        .iter()
        .map(|(_, entries)| LocalRateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| {
                    envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry {
                        key: k.clone(),
                        value: v.clone(),
                    }
                })
                .collect(),
            token_bucket: Some(bucket),
            shadow_mode: false,
        })
        .collect();
    let wildcard = lists
        .iter()
        .any(|(_, e)| e.iter().any(|(_, v)| v.is_empty()));
    Some(LocalRateLimit {
        stat_prefix: stat_prefix(o),
        status: status(p),
        token_bucket: Some(bucket),
        filter_enabled: percent(100),
        filter_enforced: percent(if p.shadow { 0 } else { 100 }),
        response_headers_to_add: headers_to_add(p),
        // A request with a descriptor counts against its own bucket only; the default
        // bucket is for requests without one.
        always_consume_default_token_bucket: (!descriptors.is_empty())
            .then(|| pb::boolv(false))
            .flatten(),
        descriptors,
        enable_x_ratelimit_headers: x_ratelimit(p),
        rate_limits: rate_limits(&lists),
        max_dynamic_descriptors: wildcard
            .then(|| pb::u32v(MAX_DYNAMIC_DESCRIPTORS))
            .flatten(),
        ..Default::default()
    })
}

/// The rate limit service a global limit talks to, if its provider and service exist.
struct Service {
    cluster: String,
    authority: String,
    domain: String,
    timeout: Option<std::time::Duration>,
}

fn service(ctx: &ProxyContext, p: &RateLimitPolicySpec) -> Option<Service> {
    let g = p.global.as_ref()?;
    // (Why a provider is unusable is a warning on the policy; see model::ratelimit.)
    let (svc, port, provider) =
        model::rate_limit_service(&ctx.snap.mesh, &ctx.snap.services, &g.provider).ok()?;
    Some(Service {
        cluster: ctx.provider_cluster(svc, port)?,
        authority: svc.hostname.clone(),
        domain: g
            .domain
            .clone()
            .or_else(|| provider.domain.clone().filter(|d| !d.is_empty()))
            .unwrap_or_else(|| "meshd".into()),
        timeout: g.timeout.or(provider.timeout).map(|d| d.as_std()),
    })
}

fn global_config(
    ctx: &ProxyContext,
    o: &Object,
    p: &RateLimitPolicySpec,
) -> Option<GlobalRateLimit> {
    let g = p.global.as_ref()?;
    let svc = service(ctx, p)?;
    Some(GlobalRateLimit {
        domain: svc.domain,
        timeout: svc.timeout.map(pb::duration),
        failure_mode_deny: g.failure_mode == model::FailureMode::DENY,
        rate_limit_service: Some(RateLimitServiceConfig {
            grpc_service: Some(core::GrpcService {
                target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                    core::grpc_service::EnvoyGrpc {
                        cluster_name: svc.cluster,
                        authority: svc.authority,
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            transport_api_version: core::ApiVersion::V3 as i32,
        }),
        enable_x_ratelimit_headers: x_ratelimit(p),
        rate_limited_status: status(p),
        response_headers_to_add: headers_to_add(p),
        stat_prefix: stat_prefix(o),
        filter_enabled: percent(100),
        filter_enforced: percent(if p.shadow { 0 } else { 100 }),
        rate_limits: rate_limits(&action_lists(o, p, true)),
        ..Default::default()
    })
}

fn filter(name: String, config: Any, disabled: bool) -> HttpFilter {
    HttpFilter {
        name,
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        disabled,
        ..Default::default()
    }
}

/// The rate limit filters of one HTTP connection manager. `at` places a workload-level
/// manager (inbound, gateway); sidecar outbound managers only serve routes.
pub fn http_filters(ctx: &ProxyContext, at: Option<&Attach>) -> Vec<HttpFilter> {
    let policies = &ctx.snap.rate_limits;
    if policies.all.is_empty() {
        return Vec::new();
    }
    let governing = at.and_then(|a| {
        policies.for_workload(
            &ctx.snap.mesh.root_namespace,
            &ctx.snap.mesh.domain_suffix,
            a,
        )
    });
    // Route policies whose routes this manager may serve: a sidecar's outbound managers
    // (VirtualServices in its scope), a gateway's (VirtualServices bound to its
    // Gateways). Inbound managers serve no VirtualService routes.
    let routes: Vec<&Arc<Object>> = match at {
        // A gateway's managers: the Gateways selecting it come with the attachment.
        Some(a) if ctx.proxy.kind == ProxyKind::Router => {
            let gateways: Vec<String> = a
                .gateways
                .iter()
                .map(|g| format!("{}/{}", g.key.namespace, g.key.name))
                .collect();
            policies
                .route_policies()
                .iter()
                .filter(|r| {
                    r.reaches
                        .iter()
                        .any(|v| v.gateways.iter().any(|g| gateways.contains(g)))
                })
                .map(|r| &r.policy)
                .collect()
        }
        Some(_) => Vec::new(),
        None => policies
            .route_policies()
            .iter()
            .filter(|r| r.reaches.iter().any(|v| in_scope(ctx, v)))
            .map(|r| &r.policy)
            .collect(),
    };
    let mut out = Vec::new();
    let governing = governing.and_then(|o| model::spec(o).map(|p| (o, p)));
    match governing.and_then(|(o, p)| local_config(o, p)) {
        Some(c) => out.push(filter(LOCAL_FILTER.into(), pb::any(&c), false)),
        None if routes
            .iter()
            .any(|o| model::spec(o).is_some_and(|p| p.local.is_some())) =>
        {
            // Off unless a route's own configuration turns it on.
            let noop = LocalRateLimit {
                stat_prefix: "ratelimit_routes".into(),
                ..Default::default()
            };
            out.push(filter(LOCAL_FILTER.into(), pb::any(&noop), false));
        }
        None => {}
    }
    if let Some(c) = governing.and_then(|(o, p)| global_config(ctx, o, p)) {
        out.push(filter(GLOBAL_FILTER.into(), pb::any(&c), false));
    }
    for o in routes {
        if let Some(c) = model::spec(o).and_then(|p| global_config(ctx, o, p)) {
            out.push(filter(route_global_name(o), pb::any(&c), true));
        }
    }
    out
}

/// Whether a sidecar's scope holds `vs`.
fn in_scope(ctx: &ProxyContext, vs: &VirtualServiceConfig) -> bool {
    ctx.scope.egress.iter().any(|e| {
        vs.hosts.iter().any(|h| {
            e.with_host(h).any(|(_, v)| v.key == vs.key)
                || e.with_wildcards().any(|(_, v)| v.key == vs.key)
        })
    })
}

/// `typed_per_filter_config` for a route made from rule `index` of `vs`: its policy
/// replaces the manager's (most specific wins).
pub fn route_configs(
    ctx: &ProxyContext,
    vs: &VirtualServiceConfig,
    index: usize,
) -> HashMap<String, Any> {
    let mut out = HashMap::new();
    let policies = &ctx.snap.rate_limits;
    if policies.all.is_empty() {
        return out;
    }
    let Some(o) = policies.for_route(vs, index) else {
        return out;
    };
    let Some(p) = model::spec(o) else {
        return out;
    };
    let off = pb::any(&FilterConfig {
        disabled: true,
        ..Default::default()
    });
    out.insert(
        LOCAL_FILTER.to_string(),
        local_config(o, p).map_or_else(|| off.clone(), |c| pb::any(&c)),
    );
    out.insert(GLOBAL_FILTER.to_string(), off);
    if let Some(c) = global_config(ctx, o, p) {
        let per_route = RateLimitPerRoute {
            domain: c.domain,
            rate_limits: c.rate_limits,
            ..Default::default()
        };
        out.insert(
            route_global_name(o),
            pb::any(&FilterConfig {
                config: Some(pb::any(&per_route)),
                ..Default::default()
            }),
        );
    }
    out
}

/// The network local rate limit of an inbound TCP chain (connections per unit), when
/// the governing policy has a local limit, no descriptors (they are HTTP's) and is not
/// in shadow mode (Envoy's network limiter has none).
pub fn tcp_filter(
    ctx: &ProxyContext,
    at: &Attach,
) -> Option<envoy_types::pb::envoy::config::listener::v3::Filter> {
    let o = ctx.snap.rate_limits.for_workload(
        &ctx.snap.mesh.root_namespace,
        &ctx.snap.mesh.domain_suffix,
        at,
    )?;
    let p = model::spec(o)?;
    // Descriptors (headers, identities, paths) are HTTP's: such a policy leaves TCP be.
    if !p.descriptors.is_empty() {
        return None;
    }
    let l = p.local.as_ref().filter(|_| !p.shadow)?;
    let c = TcpLocalRateLimit {
        stat_prefix: stat_prefix(o),
        token_bucket: Some(token_bucket(l)),
        // One bucket per policy in the proxy, whichever chain the connection takes.
        share_key: format!("{}/{}", o.key.namespace, o.key.name),
        ..Default::default()
    };
    Some(envoy_types::pb::envoy::config::listener::v3::Filter {
        name: "envoy.filters.network.local_ratelimit".into(),
        config_type: Some(
            envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(pb::any(
                &c,
            )),
        ),
    })
}
