//! meshd's own rate limiting policy (`policy.meshd.io/v1alpha1` RateLimitPolicy): the
//! API istiod never had (users hand-write EnvoyFilters for it), which attachment wins
//! where, and the policy's status.
//!
//! A policy attaches to workloads (`selector`, or the whole namespace, or every namespace
//! from the root namespace), to a Service's workloads on that Service's ports, to the
//! proxies of a Gateway, or to routes (a VirtualService's `http` rules, an HTTPRoute's
//! rules; `sectionName` narrows to one rule by name). Where several attach, the most
//! specific wins whole — route rule, route, Service or Gateway, selector, namespace,
//! root namespace with a selector, root namespace — and among equals the oldest (then the
//! first by namespace/name), as istiod breaks ties between its policies.
//! `translate::ratelimit` turns the winner into Envoy's rate limit filters.

use std::collections::HashMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::diagnostic::Diagnostic;
use super::gateway_api::status::Condition;
use super::istio::{Duration, Labels, WorkloadSelector};
use super::object::{Kind, Object, ObjectKey, Spec};
use super::service::labels_match;
use super::snapshot::{GatewayConfig, VirtualServiceConfig, Workload};

pub const GROUP: &str = "policy.meshd.io";
/// Annotation on a VirtualService generated from HTTPRoutes: for each of its `http`
/// rules, the route and rule it comes from (`Kind/namespace/name/rule`, the rule's name
/// or index), so a policy can attach to an HTTPRoute rule after the merge and sort.
pub const RULE_SOURCES: &str = "internal.meshd.io/rule-sources";

/// Derives shared by the policy's structs (unknown fields refused, as for Istio's).
macro_rules! policy_api {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields, default)]
        pub struct $name { $($body)* }
    };
}

policy_api! {
    /// policy.meshd.io RateLimitPolicy spec.
    pub struct RateLimitPolicySpec {
        /// Workloads in the policy's namespace (every namespace from the root namespace)
        /// whose inbound side and, for gateways, whose listeners are limited. Without a
        /// selector and targetRefs: every workload of the namespace.
        pub selector: Option<WorkloadSelector>,
        /// What the policy attaches to instead of a selector: a `Service` (core group; its
        /// workloads' inbound side on its ports), a `Gateway` (Istio's or the Gateway
        /// API's: its proxies), a `VirtualService` or `HTTPRoute` (their routes, wherever
        /// they are served; `sectionName` names one rule).
        pub target_refs: Vec<TargetRef>,
        /// A token bucket in each proxy.
        pub local: Option<LocalLimit>,
        /// A rate limit service shared by every proxy.
        pub global: Option<GlobalLimit>,
        /// What a bucket is kept per (local), and what the rate limit service is told
        /// (global), in order. Without any: one bucket for all requests.
        pub descriptors: Vec<Descriptor>,
        /// The answer to a limited request.
        pub response: Option<LimitResponse>,
        /// Count what would be limited (Envoy's `rate_limited` counters) but refuse
        /// nothing.
        pub shadow: bool,
    }
}

policy_api! {
    /// A Gateway API style reference, in the policy's namespace.
    pub struct TargetRef {
        pub group: String,
        pub kind: String,
        pub name: String,
        /// An HTTPRoute rule's or a VirtualService http route's name.
        pub section_name: Option<String>,
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[allow(clippy::upper_case_acronyms)]
pub enum Unit {
    #[default]
    SECOND,
    MINUTE,
    HOUR,
}

impl Unit {
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(match self {
            Unit::SECOND => 1,
            Unit::MINUTE => 60,
            Unit::HOUR => 3600,
        })
    }
}

policy_api! {
    /// `requests` per `unit`, with up to `burst` at once (default: `requests`).
    pub struct LocalLimit {
        pub requests: u32,
        pub unit: Unit,
        pub burst: Option<u32>,
    }
}

impl LocalLimit {
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests)
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[allow(clippy::upper_case_acronyms)]
/// What happens when the rate limit service cannot answer: ALLOW lets requests pass,
/// DENY refuses them (500). (One comment for the enum: per-value comments would make a
/// schema the API server refuses as not structural.)
pub enum FailureMode {
    #[default]
    ALLOW,
    DENY,
}

policy_api! {
    pub struct GlobalLimit {
        /// A `meshConfig.extensionProviders` entry with `envoyRateLimit`.
        pub provider: String,
        /// The rate limit service's domain (default: the provider's, else `meshd`).
        pub domain: Option<String>,
        pub failure_mode: FailureMode,
        /// How long to wait for the service (default: the provider's, else Envoy's 20ms).
        pub timeout: Option<Duration>,
    }
}

policy_api! {
    /// Empty: the descriptor takes no settings.
    pub struct Nothing {}
}

policy_api! {
    /// One descriptor entry: exactly one field is set.
    pub struct Descriptor {
        /// A request header's value (a bucket per value; requests without the header
        /// share one).
        pub header: Option<String>,
        /// The client's SPIFFE identity from its mTLS certificate (a bucket per client
        /// workload identity; plaintext clients share one).
        pub principal: Option<Nothing>,
        /// The client's address as Envoy trusts it: at a gateway the connection's peer,
        /// at a sidecar the last `X-Forwarded-For` entry when there is one (the client
        /// chooses it: count mesh clients by `principal`).
        pub remote_address: Option<Nothing>,
        /// Path prefixes, each a bucket of its own; requests under none of them share
        /// one.
        pub path_prefix: Option<Vec<String>>,
    }
}

policy_api! {
    pub struct LimitResponse {
        /// Status of a limited request (default 429).
        pub status: Option<u16>,
        /// `x-ratelimit-limit`, `-remaining` and `-reset` on responses (IETF draft 03).
        pub rate_limit_headers: bool,
        /// Headers added to a limited response.
        pub headers: std::collections::BTreeMap<String, String>,
    }
}

impl RateLimitPolicySpec {
    pub fn status(&self) -> u16 {
        self.response.as_ref().and_then(|r| r.status).unwrap_or(429)
    }

    pub fn rate_limit_headers(&self) -> bool {
        self.response.as_ref().is_some_and(|r| r.rate_limit_headers)
    }
}

/// How specific an attachment is: lower wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    RouteRule,
    Route,
    Target,
    Selector,
    Namespace,
    RootSelector,
    Root,
}

/// The policy objects of a snapshot, oldest first (ties by key), with what route
/// policies reach, computed once per build: proxies and routes without a policy pay
/// nothing for them.
#[derive(Debug, Default, Clone)]
pub struct Policies {
    pub all: Vec<Arc<Object>>,
    /// Policies with a workload-level attachment (selector, namespace, Service, Gateway).
    workload: Vec<Arc<Object>>,
    /// Policies with a route attachment, and the VirtualServices (generated ones
    /// included) they can reach.
    routes: Vec<RoutePolicy>,
    /// Every VirtualService some route policy reaches: the one lookup a route pays.
    reached: std::collections::HashSet<ObjectKey>,
    /// Each VirtualService generated from Gateway API routes: the route and rule each of
    /// its `http` rules comes from.
    rule_sources: HashMap<ObjectKey, Vec<RuleSource>>,
}

/// A route-attached policy and the VirtualServices it reaches.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    pub policy: Arc<Object>,
    pub reaches: Vec<Arc<VirtualServiceConfig>>,
}

/// Where a generated VirtualService's rule comes from.
#[derive(Debug, Clone, PartialEq)]
struct RuleSource {
    kind: String,
    namespace: String,
    name: String,
    /// The rule's name, else its index.
    rule: String,
}

impl RuleSource {
    fn parse(s: &str) -> Option<RuleSource> {
        let mut it = s.splitn(4, '/');
        Some(RuleSource {
            kind: it.next()?.to_string(),
            namespace: it.next()?.to_string(),
            name: it.next()?.to_string(),
            rule: it.next()?.to_string(),
        })
    }

    fn is(&self, ns: &str, r: &TargetRef) -> bool {
        self.kind == r.kind && self.namespace == ns && self.name == r.name
    }
}

/// Where an HTTP connection manager sits, for the workload-level attachments.
pub struct Attach<'a> {
    pub namespace: &'a str,
    pub labels: &'a Labels,
    /// Inbound: the hosts of the Services whose (target) port this manager serves.
    pub services: Vec<&'a str>,
    /// A gateway: the Gateways (Istio's, generated ones included) that select it.
    pub gateways: Vec<&'a GatewayConfig>,
}

pub fn spec(o: &Object) -> Option<&RateLimitPolicySpec> {
    match &o.spec {
        Spec::RateLimitPolicy(p) => Some(p),
        _ => None,
    }
}

fn gateway_ref(r: &TargetRef) -> bool {
    r.kind == "Gateway"
        && (r.group == "networking.istio.io" || r.group == super::gateway_api::GROUP)
}

fn service_ref(r: &TargetRef) -> bool {
    r.kind == "Service" && (r.group.is_empty() || r.group == "core")
}

fn route_ref(r: &TargetRef) -> bool {
    (r.kind == "VirtualService" && r.group == "networking.istio.io")
        || (r.kind == "HTTPRoute" && r.group == super::gateway_api::GROUP)
}

/// Whether Istio Gateway `g` is, or was generated from, the Gateway `r` names.
fn is_gateway(g: &GatewayConfig, ns: &str, r: &TargetRef) -> bool {
    if g.key.namespace != ns {
        return false;
    }
    if r.group == "networking.istio.io" {
        return !g.object.is_generated() && g.key.name == r.name;
    }
    let from = ObjectKey {
        kind: Kind::KubeGateway,
        namespace: ns.to_string(),
        name: r.name.clone(),
    };
    g.object
        .annotations
        .get(super::gateway_api::convert::GENERATED_FROM)
        .is_some_and(|f| *f == from.to_string())
}

impl Policies {
    /// The index over `all` (oldest first) for the snapshot's VirtualServices.
    pub fn new(all: Vec<Arc<Object>>, virtual_services: &[Arc<VirtualServiceConfig>]) -> Policies {
        let rule_sources: HashMap<ObjectKey, Vec<RuleSource>> = if all.is_empty() {
            HashMap::new()
        } else {
            virtual_services
                .iter()
                .filter_map(|v| {
                    let a = v.object.annotations.get(RULE_SOURCES)?;
                    let list: Vec<String> = serde_json::from_str(a).ok()?;
                    Some((
                        v.key.clone(),
                        list.iter().filter_map(|s| RuleSource::parse(s)).collect(),
                    ))
                })
                .collect()
        };
        let mut workload = Vec::new();
        let mut routes = Vec::new();
        for o in &all {
            let Some(p) = spec(o) else { continue };
            if p.target_refs.is_empty() || p.target_refs.iter().any(|r| !route_ref(r)) {
                workload.push(o.clone());
            }
            let refs: Vec<&TargetRef> = p.target_refs.iter().filter(|r| route_ref(r)).collect();
            if refs.is_empty() {
                continue;
            }
            let ns = o.key.namespace.as_str();
            let reaches = virtual_services
                .iter()
                .filter(|v| {
                    refs.iter().any(|r| {
                        if r.kind == "VirtualService" {
                            !v.object.is_generated()
                                && v.key.namespace == ns
                                && v.key.name == r.name
                        } else {
                            rule_sources
                                .get(&v.key)
                                .is_some_and(|srcs| srcs.iter().any(|s| s.is(ns, r)))
                        }
                    })
                })
                .cloned()
                .collect();
            routes.push(RoutePolicy {
                policy: o.clone(),
                reaches,
            });
        }
        let reached = routes
            .iter()
            .flat_map(|r| r.reaches.iter().map(|v| v.key.clone()))
            .collect();
        Policies {
            all,
            workload,
            routes,
            reached,
            rule_sources,
        }
    }

    /// The policy that governs a connection manager at `at` (not counting route ones).
    pub fn for_workload(&self, root: &str, domain: &str, at: &Attach) -> Option<&Arc<Object>> {
        let mut best: Option<(Level, &Arc<Object>)> = None;
        for o in &self.workload {
            let Some(p) = spec(o) else { continue };
            let ns = o.key.namespace.as_str();
            let level = if !p.target_refs.is_empty() {
                let hit = p.target_refs.iter().any(|r| {
                    (service_ref(r)
                        && at
                            .services
                            .iter()
                            .any(|h| service_host(h, &r.name, ns, domain)))
                        || (gateway_ref(r) && at.gateways.iter().any(|g| is_gateway(g, ns, r)))
                });
                hit.then_some(Level::Target)
            } else {
                let selects = p
                    .selector
                    .as_ref()
                    .is_none_or(|s| labels_match(&s.match_labels, at.labels));
                match (
                    ns == at.namespace,
                    ns == root,
                    p.selector.is_some(),
                    selects,
                ) {
                    (_, _, _, false) => None,
                    (true, _, true, _) => Some(Level::Selector),
                    (true, _, false, _) => Some(Level::Namespace),
                    (false, true, true, _) => Some(Level::RootSelector),
                    (false, true, false, _) => Some(Level::Root),
                    _ => None,
                }
            };
            if let Some(l) = level
                && best.is_none_or(|(b, _)| l < b)
            {
                best = Some((l, o));
            }
        }
        best.map(|(_, o)| o)
    }

    /// Whether some policy reaches routes of `vs` (a cheap test before [`for_route`]).
    pub fn reaches(&self, vs: &VirtualServiceConfig) -> bool {
        self.reached.contains(&vs.key)
    }

    /// The policy attached to rule `index` of `vs` (its `http` rules), if any.
    pub fn for_route(&self, vs: &VirtualServiceConfig, index: usize) -> Option<&Arc<Object>> {
        if !self.reaches(vs) {
            return None;
        }
        let rule = vs.spec.http.get(index)?;
        let source = self.rule_sources.get(&vs.key).and_then(|s| s.get(index));
        let mut best: Option<(Level, &Arc<Object>)> = None;
        for rp in &self.routes {
            if !rp.reaches.iter().any(|v| v.key == vs.key) {
                continue;
            }
            let o = &rp.policy;
            let Some(p) = spec(o) else { continue };
            let ns = o.key.namespace.as_str();
            for r in p.target_refs.iter().filter(|r| route_ref(r)) {
                let section = if r.kind == "VirtualService" {
                    if vs.object.is_generated() || vs.key.namespace != ns || vs.key.name != r.name {
                        continue;
                    }
                    rule.name.as_str()
                } else {
                    match source {
                        Some(s) if s.is(ns, r) => s.rule.as_str(),
                        _ => continue,
                    }
                };
                let level = match &r.section_name {
                    None => Level::Route,
                    Some(s) if s == section => Level::RouteRule,
                    _ => continue,
                };
                if best.is_none_or(|(b, _)| level < b) {
                    best = Some((level, o));
                }
            }
        }
        best.map(|(_, o)| o)
    }

    /// The route-attached policies and the VirtualServices they reach.
    pub fn route_policies(&self) -> &[RoutePolicy] {
        &self.routes
    }

    /// Whether `r` names a rule of `vs` (a generated one: by its route and rule).
    fn names_rule_of(&self, vs: &VirtualServiceConfig, ns: &str, r: &TargetRef) -> bool {
        if r.kind == "VirtualService" {
            return !vs.object.is_generated()
                && vs.key.namespace == ns
                && vs.key.name == r.name
                && r.section_name
                    .as_ref()
                    .is_none_or(|s| vs.spec.http.iter().any(|h| h.name == *s));
        }
        self.rule_sources.get(&vs.key).is_some_and(|srcs| {
            srcs.iter()
                .any(|s| s.is(ns, r) && r.section_name.as_ref().is_none_or(|sec| *sec == s.rule))
        })
    }
}

/// Whether `host` is the Service `name` of namespace `ns`.
fn service_host(host: &str, name: &str, ns: &str, domain: &str) -> bool {
    host.strip_prefix(name)
        .and_then(|h| h.strip_prefix('.'))
        .and_then(|h| h.strip_prefix(ns))
        .and_then(|h| h.strip_prefix(".svc."))
        == Some(domain)
}

/// The per-object checks (`meshd validate`, the validation webhook).
pub fn validate(
    obj: &Object,
    p: &RateLimitPolicySpec,
    mesh: &super::mesh::MeshConfig,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if p.local.is_none() && p.global.is_none() {
        out.push(
            obj.diag_error("spec", "a RateLimitPolicy needs `local`, `global` or both")
                .hint("e.g. `local: {requests: 10, unit: SECOND}`"),
        );
    }
    if p.selector.is_some() && !p.target_refs.is_empty() {
        out.push(
            obj.diag_error(
                "spec.targetRefs",
                "`selector` and `targetRefs` cannot be used together",
            )
            .hint("attach with one of them"),
        );
    }
    for (i, r) in p.target_refs.iter().enumerate() {
        let at = format!("spec.targetRefs[{i}]");
        if !(gateway_ref(r) || service_ref(r) || route_ref(r)) {
            out.push(
                obj.diag_error(
                    &format!("{at}.kind"),
                    format!("cannot attach to {:?} in group {:?}", r.kind, r.group),
                )
                .hint("attach to a Service (group \"\"), a Gateway (networking.istio.io or gateway.networking.k8s.io), a VirtualService (networking.istio.io) or an HTTPRoute (gateway.networking.k8s.io)"),
            );
        }
        if r.name.is_empty() {
            out.push(obj.diag_error(&format!("{at}.name"), "a target needs a name"));
        }
        if r.section_name.is_some() && !route_ref(r) {
            out.push(obj.diag_error(
                &format!("{at}.sectionName"),
                "sectionName names a route rule: only VirtualService and HTTPRoute targets take one",
            ));
        }
    }
    if let Some(l) = &p.local {
        if l.requests == 0 {
            out.push(
                obj.diag_error("spec.local.requests", "requests must be at least 1")
                    .hint("to refuse everything, use an AuthorizationPolicy"),
            );
        }
        if l.burst == Some(0) {
            out.push(obj.diag_error("spec.local.burst", "burst must be at least 1"));
        }
    }
    if let Some(r) = &p.response {
        for (k, v) in &r.headers {
            let at = format!("spec.response.headers.{k}");
            let token = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b));
            if !token || k.eq_ignore_ascii_case("host") {
                out.push(
                    obj.diag_error(&at, format!("{k:?} cannot be set on a response"))
                        .hint("an HTTP header name other than host and pseudo-headers"),
                );
            }
            if v.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
                out.push(obj.diag_error(&at, "a header value cannot hold NUL, CR or LF"));
            }
        }
    }
    if let Some(d) = p.global.as_ref().and_then(|g| g.domain.as_ref())
        && d.is_empty()
    {
        out.push(
            obj.diag_error("spec.global.domain", "the domain cannot be empty")
                .hint("leave it out for the provider's (or `meshd`)"),
        );
    }
    if p.descriptors.iter().any(|d| d.remote_address.is_some())
        && !p.target_refs.iter().any(gateway_ref)
    {
        out.push(
            obj.diag_warning(
                "spec.descriptors",
                "remoteAddress at a sidecar is the last X-Forwarded-For entry when a request carries one, which the client chooses",
            )
            .hint("inside the mesh, count clients by `principal` (their mTLS identity)"),
        );
    }
    if let Some(g) = &p.global {
        if g.provider.is_empty() {
            out.push(
                obj.diag_error("spec.global.provider", "a global limit needs a provider")
                    .hint("name a meshConfig.extensionProviders entry with envoyRateLimit"),
            );
        } else if !mesh
            .extension_providers
            .iter()
            .any(|e| e.name == g.provider && e.envoy_rate_limit.is_some())
        {
            out.push(
                obj.diag_warning(
                    "spec.global.provider",
                    format!(
                        "no extension provider {:?} with envoyRateLimit in mesh config: the global limit is not applied",
                        g.provider
                    ),
                )
                .hint("define it under meshConfig.extensionProviders: {name, envoyRateLimit: {service, port}}"),
            );
        }
    }
    for (i, d) in p.descriptors.iter().enumerate() {
        let at = format!("spec.descriptors[{i}]");
        let set = [
            d.header.is_some(),
            d.principal.is_some(),
            d.remote_address.is_some(),
            d.path_prefix.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set != 1 {
            out.push(
                obj.diag_error(
                    &at,
                    "a descriptor sets exactly one of header, principal, remoteAddress, pathPrefix",
                )
                .hint("list several descriptors to combine them"),
            );
        }
        if let Some(h) = &d.header
            && (h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b)))
        {
            out.push(obj.diag_error(
                &format!("{at}.header"),
                format!("{h:?} is not an HTTP header name"),
            ));
        }
        if let Some(ps) = &d.path_prefix {
            if ps.is_empty() {
                out.push(obj.diag_error(&format!("{at}.pathPrefix"), "list at least one prefix"));
            }
            for (j, pfx) in ps.iter().enumerate() {
                if !pfx.starts_with('/') {
                    out.push(obj.diag_error(
                        &format!("{at}.pathPrefix[{j}]"),
                        format!("path prefix {pfx:?} must start with /"),
                    ));
                }
            }
        }
    }
    if p.descriptors
        .iter()
        .filter(|d| d.path_prefix.is_some())
        .count()
        > 1
    {
        out.push(obj.diag_error(
            "spec.descriptors",
            "at most one pathPrefix descriptor (list its prefixes together)",
        ));
    }
    if let Some(s) = p.response.as_ref().and_then(|r| r.status) {
        if !(400..=599).contains(&s) {
            out.push(obj.diag_error(
                "spec.response.status",
                format!("status {s} is not an error status (400-599)"),
            ));
        } else if envoy_types::pb::envoy::r#type::v3::StatusCode::try_from(i32::from(s)).is_err() {
            // Envoy takes only the statuses its StatusCode enum names.
            out.push(
                obj.diag_error(
                    "spec.response.status",
                    format!("status {s} is not one Envoy can send"),
                )
                .hint("use a registered status such as 429 or 503"),
            );
        }
    }
    out
}

/// What the attachment looks like, for conflicts: two policies with the same one never
/// both apply anywhere.
fn attachment(o: &Object, p: &RateLimitPolicySpec) -> Value {
    if p.target_refs.is_empty() {
        json!({"namespace": o.key.namespace, "selector": p.selector.as_ref().map(|s| &s.match_labels)})
    } else {
        let mut refs: Vec<String> = p
            .target_refs
            .iter()
            .map(|r| {
                format!(
                    "{}/{}/{}/{}",
                    r.group,
                    r.kind,
                    r.name,
                    r.section_name.as_deref().unwrap_or("")
                )
            })
            .collect();
        refs.sort();
        json!({"namespace": o.key.namespace, "refs": refs})
    }
}

/// The workloads (Pods, WorkloadEntries) of namespace `ns`, by key range.
fn workloads_in<'a>(
    workloads: &'a imbl::OrdMap<ObjectKey, Arc<Workload>>,
    ns: &'a str,
) -> impl Iterator<Item = &'a Arc<Workload>> + 'a {
    [Kind::Pod, Kind::WorkloadEntry]
        .into_iter()
        .flat_map(move |kind| {
            workloads
                .range(
                    ObjectKey {
                        kind,
                        namespace: ns.to_string(),
                        name: String::new(),
                    }..,
                )
                .take_while(move |(k, _)| k.kind == kind && k.namespace == ns)
                .map(|(_, w)| w)
        })
}

/// The rate limit service of provider `name`: its host and port, checked against the
/// registry (`namespace/host` names the namespace too) and the port's protocol (the
/// RateLimitService API is gRPC).
pub fn rate_limit_service<'a>(
    mesh: &'a super::mesh::MeshConfig,
    services: &'a std::collections::BTreeMap<String, Arc<super::service::Service>>,
    name: &str,
) -> Result<
    (
        &'a super::service::Service,
        u16,
        &'a super::mesh::RateLimitProvider,
    ),
    String,
> {
    let provider = mesh
        .extension_providers
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.envoy_rate_limit.as_ref())
        .ok_or_else(|| format!("no extension provider {name:?} with envoyRateLimit"))?;
    let (svc, port) = super::service::provider_service(services, &provider.service, provider.port)
        .map_err(|e| format!("rate limit {e}"))?;
    let host = &svc.hostname;
    let protocol = svc.port(port).map(|p| p.protocol);
    if !matches!(
        protocol,
        Some(super::service::Protocol::Grpc | super::service::Protocol::Http2)
    ) {
        return Err(format!(
            "port {port} of rate limit service {host} is not declared gRPC (name it grpc or grpc-*, or set appProtocol: grpc)"
        ));
    }
    Ok((svc, port, provider))
}

/// What the rest of the snapshot offers a policy to attach to.
pub struct World<'a> {
    pub mesh: &'a super::mesh::MeshConfig,
    pub root: &'a str,
    pub domain: &'a str,
    pub services: &'a std::collections::BTreeMap<String, Arc<super::service::Service>>,
    pub workloads: &'a imbl::OrdMap<ObjectKey, Arc<Workload>>,
    pub virtual_services: &'a [Arc<VirtualServiceConfig>],
    pub gateways: &'a [Arc<GatewayConfig>],
}

/// Each accepted policy's status (an `Accepted` condition) and the warnings for those
/// that attach to nothing or lose to an older policy with the same attachment.
pub fn check(policies: &Policies, world: &World) -> (Vec<Diagnostic>, Vec<(ObjectKey, Value)>) {
    let mut diags = Vec::new();
    let mut statuses = Vec::new();
    let mut seen: Vec<(Value, &ObjectKey)> = Vec::new();
    for o in &policies.all {
        let Some(p) = spec(o) else { continue };
        let ns = o.key.namespace.as_str();
        let mut missing: Vec<String> = Vec::new();
        for (i, r) in p.target_refs.iter().enumerate() {
            let found = if service_ref(r) {
                world
                    .services
                    .contains_key(&format!("{}.{ns}.svc.{}", r.name, world.domain))
            } else if gateway_ref(r) {
                world.gateways.iter().any(|g| is_gateway(g, ns, r))
            } else {
                world
                    .virtual_services
                    .iter()
                    .any(|v| policies.names_rule_of(v, ns, r))
            };
            if !found {
                missing.push(format!(
                    "spec.targetRefs[{i}]: {} {ns}/{}{}",
                    r.kind,
                    r.name,
                    r.section_name
                        .as_ref()
                        .map(|s| format!(" rule {s:?}"))
                        .unwrap_or_default()
                ));
            }
        }
        let selects_nothing = p.target_refs.is_empty() && {
            let sel: Labels = p
                .selector
                .as_ref()
                .map(|s| s.match_labels.clone())
                .unwrap_or_default();
            let matches = |w: &Workload| labels_match(&sel, &w.labels);
            if ns == world.root {
                !world.workloads.values().any(|w| matches(w))
            } else {
                !workloads_in(world.workloads, ns).any(|w| matches(w))
            }
        };
        // A global limit whose service cannot be reached is not applied: say so.
        if let Some(g) = &p.global
            && let Err(why) = rate_limit_service(world.mesh, world.services, &g.provider)
        {
            diags.push(
                o.diag_warning("spec.global.provider", format!("{why}: the global limit is not applied"))
                    .hint("meshConfig.extensionProviders[].envoyRateLimit names a service in the registry and its gRPC port"),
            );
        }
        let shape = attachment(o, p);
        let older = seen.iter().find(|(s, _)| *s == shape).map(|(_, k)| *k);
        let condition = if let Some(winner) = older {
            let msg = format!(
                "attaches exactly where the older {winner} does, which wins: this policy applies nowhere"
            );
            diags.push(
                o.diag_warning("spec", msg.clone())
                    .hint("merge the two policies, or narrow one of them"),
            );
            Condition::fail("Accepted", "Conflicted", &msg)
        } else if !missing.is_empty() && missing.len() == p.target_refs.len() {
            let msg = format!("no target exists: {}", missing.join("; "));
            diags.push(o.diag_warning("spec.targetRefs", msg.clone()));
            Condition::fail("Accepted", "TargetNotFound", &msg)
        } else if selects_nothing {
            let msg = "selects no workload".to_string();
            diags.push(
                o.diag_warning(
                    if p.selector.is_some() {
                        "spec.selector"
                    } else {
                        "spec"
                    },
                    msg.clone(),
                )
                .hint("check the selector's labels against the pods'"),
            );
            Condition::fail("Accepted", "TargetNotFound", &msg)
        } else {
            for m in &missing {
                diags.push(o.diag_warning("spec.targetRefs", format!("target not found: {m}")));
            }
            Condition::ok("Accepted", "Accepted", "the policy is in force")
        };
        if older.is_none() {
            seen.push((shape, &o.key));
        }
        statuses.push((o.key.clone(), json!({"conditions": [condition.json(o)]})));
    }
    (diags, statuses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::Snapshot;

    fn snapshot(text: &str) -> Snapshot {
        crate::model::testing::snapshot(text, None)
    }

    fn policy(name: &str, ns: &str, spec: &str) -> String {
        format!(
            "apiVersion: policy.meshd.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  local: {{requests: 1}}\n{spec}\n---\n"
        )
    }

    const WORLD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-1, namespace: default, labels: {app: reviews}}
spec: {containers: [{name: a, image: a}]}
status: {podIP: 10.0.0.1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews}}]
  - name: rest
    route: [{destination: {host: reviews}}]
"#;

    fn winner(snap: &Snapshot, services: Vec<&str>) -> Option<String> {
        let labels: Labels = [("app".to_string(), "reviews".to_string())].into();
        snap.rate_limits
            .for_workload(
                "istio-system",
                "cluster.local",
                &Attach {
                    namespace: "default",
                    labels: &labels,
                    services,
                    gateways: Vec::new(),
                },
            )
            .map(|o| o.key.name.clone())
    }

    /// Most specific wins: Service over selector over namespace over the root
    /// namespace's selector over the root namespace's whole-mesh policy.
    #[test]
    fn the_most_specific_attachment_wins() {
        let mut text = WORLD.to_string();
        text.push_str("---\n");
        text.push_str(&policy("mesh", "istio-system", ""));
        assert_eq!(winner(&snapshot(&text), vec![]).as_deref(), Some("mesh"));
        text.push_str(&policy(
            "root-selector",
            "istio-system",
            "  selector: {matchLabels: {app: reviews}}",
        ));
        assert_eq!(
            winner(&snapshot(&text), vec![]).as_deref(),
            Some("root-selector")
        );
        text.push_str(&policy("namespace", "default", ""));
        assert_eq!(
            winner(&snapshot(&text), vec![]).as_deref(),
            Some("namespace")
        );
        text.push_str(&policy(
            "selector",
            "default",
            "  selector: {matchLabels: {app: reviews}}",
        ));
        assert_eq!(
            winner(&snapshot(&text), vec![]).as_deref(),
            Some("selector")
        );
        text.push_str(&policy(
            "service",
            "default",
            "  targetRefs: [{group: \"\", kind: Service, name: reviews}]",
        ));
        let snap = snapshot(&text);
        // On the Service's port the Service's policy; elsewhere the selector's.
        assert_eq!(
            winner(&snap, vec!["reviews.default.svc.cluster.local"]).as_deref(),
            Some("service")
        );
        assert_eq!(winner(&snap, vec![]).as_deref(), Some("selector"));
        // Another namespace's selector never reaches default's workloads.
        let other = format!(
            "{WORLD}---\n{}",
            policy(
                "elsewhere",
                "other",
                "  selector: {matchLabels: {app: reviews}}"
            )
        );
        assert_eq!(winner(&snapshot(&other), vec![]), None);
    }

    /// A rule's own policy over the VirtualService's; rules of other VirtualServices
    /// and sections that name no rule take none.
    #[test]
    fn route_rules_take_their_sections_policy() {
        let text = format!(
            "{WORLD}---\n{}{}{}",
            policy(
                "whole",
                "default",
                "  targetRefs: [{group: networking.istio.io, kind: VirtualService, name: reviews}]"
            ),
            policy(
                "jason",
                "default",
                "  targetRefs: [{group: networking.istio.io, kind: VirtualService, name: reviews, sectionName: jason}]"
            ),
            policy(
                "other-vs",
                "default",
                "  targetRefs: [{group: networking.istio.io, kind: VirtualService, name: ratings}]"
            ),
        );
        let snap = snapshot(&text);
        let vs = snap
            .virtual_services
            .iter()
            .find(|v| v.key.name == "reviews")
            .expect("vs");
        let name = |i| {
            snap.rate_limits
                .for_route(vs, i)
                .map(|o| o.key.name.clone())
        };
        assert_eq!(name(0).as_deref(), Some("jason"));
        assert_eq!(name(1).as_deref(), Some("whole"));
        assert_eq!(name(2), None, "no third rule");
        // The one naming a VirtualService that does not exist attaches to nothing.
        let status = snap
            .statuses
            .get(&ObjectKey {
                kind: Kind::RateLimitPolicy,
                namespace: "default".into(),
                name: "other-vs".into(),
            })
            .cloned();
        let status = status.expect("a status");
        assert_eq!(
            status["conditions"][0]["reason"], "TargetNotFound",
            "{status}"
        );
    }
}
