//! AuthorizationPolicy → Envoy RBAC (HTTP and network filters), and CUSTOM → ext_authz,
//! following istiod's builder so that its golden cases hold (tests/authz_golden.rs):
//! policy names `ns[NS]-policy[NAME]-rule[N]`, one permission per `to` and one principal
//! per `from`, each an AND of OR-lists in istiod's field order, dry-run policies as shadow
//! rules, trust-domain aliases expanded.
//!
//! Filters are built as Envoy JSON (the shape of Envoy's own docs and of the golden files)
//! and converted to protobuf through Envoy's descriptors.

use serde_json::{Map, Value, json};

use crate::model::istio::{AuthorizationAction, AuthorizationPolicy, AuthzRule, Condition};
use crate::model::mesh::{ExtAuthzBody, ExtensionProvider};

/// One policy as the builder needs it.
#[derive(Debug, Clone)]
pub struct PolicyInput<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: &'a AuthorizationPolicy,
    /// `istio.io/dry-run: "true"`
    pub dry_run: bool,
}

/// Everything the builder reads besides the policies.
#[derive(Clone)]
pub struct AuthzOptions<'a> {
    /// The workload's namespace (service accounts without namespace are in it).
    pub namespace: &'a str,
    /// The trust domain first, then its aliases.
    pub trust_domains: Vec<String>,
    pub providers: &'a [ExtensionProvider],
    /// Does `host` (in `namespace`, if given) name a known service?
    pub service_exists: &'a dyn Fn(Option<&str>, &str) -> bool,
}

/// Go's `regexp.QuoteMeta`: what istiod escapes in the regexes it generates.
fn quote_meta(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn regex(r: &str) -> Value {
    json!({"safeRegex": {"regex": r}})
}

/// `exact`, `prefix*`, `*suffix`, `*` → a StringMatcher; `*` is "any non-empty".
fn string_match(v: &str) -> Value {
    if v == "*" {
        regex(".+")
    } else if let Some(p) = v.strip_suffix('*') {
        json!({"prefix": p})
    } else if let Some(s) = v.strip_prefix('*') {
        json!({"suffix": s})
    } else {
        json!({"exact": v})
    }
}

fn or_rules(rules: Vec<Value>) -> Value {
    json!({"orRules": {"rules": rules}})
}

fn or_ids(ids: Vec<Value>) -> Value {
    json!({"orIds": {"ids": ids}})
}

/// What a key/value list turns into, on the permission or the principal side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Permission,
    Principal,
}

/// One attribute of a rule: its values become an OR-list, its notValues a negated one.
#[derive(Debug, Clone)]
struct Attr {
    side: Side,
    kind: AttrKind,
    values: Vec<String>,
    not_values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AttrKind {
    Host,
    Method,
    Path,
    Port,
    DestIp,
    DestPort,
    Sni,
    EnvoyFilter(String, Vec<String>),
    SrcIp,
    RemoteIp,
    SrcNamespace,
    SrcPrincipal,
    ServiceAccount,
    TrustDomain,
    RequestPrincipal,
    Audiences,
    Presenter,
    Header(String),
    Claim(Vec<String>),
}

impl AttrKind {
    /// Attributes that only exist in HTTP requests (dropped or ignored for TCP).
    fn http_only(&self) -> bool {
        matches!(
            self,
            AttrKind::Host
                | AttrKind::Method
                | AttrKind::Path
                | AttrKind::RequestPrincipal
                | AttrKind::Audiences
                | AttrKind::Presenter
                | AttrKind::Header(_)
                | AttrKind::Claim(_)
        )
    }
}

fn cidr(v: &str) -> Value {
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a.to_string(), l.parse::<u32>().unwrap_or(32)),
        None => {
            let len = if v.contains(':') { 128 } else { 32 };
            (v.to_string(), len)
        }
    };
    json!({"addressPrefix": addr, "prefixLen": len})
}

fn authenticated(m: Value) -> Value {
    json!({"authenticated": {"principalName": m}})
}

fn jwt_metadata(path: &[&str], value: Value) -> Value {
    let path: Vec<Value> = path.iter().map(|k| json!({"key": k})).collect();
    json!({"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": path, "value": value}})
}

/// Any of `values`, as istiod's `StringOrMatcher`: one value is its matcher alone (Envoy
/// wants at least two matchers in an `orMatch`).
fn string_or(values: &[String]) -> Value {
    let mut matchers: Vec<Value> = values
        .iter()
        .map(|v| json!({"stringMatch": string_match(v)}))
        .collect();
    if matchers.len() == 1 {
        return matchers.remove(0);
    }
    json!({"orMatch": {"valueMatchers": matchers}})
}

/// A claim value may be a string or a list of strings: match either.
fn list_or_string(values: &[String]) -> Value {
    let any = string_or(values);
    json!({"orMatch": {"valueMatchers": [
        {"listMatch": {"oneOf": any.clone()}},
        any,
    ]}})
}

impl Attr {
    fn one(&self, v: &str, opts: &AuthzOptions) -> Vec<Value> {
        let ci = |m: Value| {
            let mut m = m;
            if let Value::Object(o) = &mut m
                && !o.contains_key("safeRegex")
            {
                o.insert("ignoreCase".into(), json!(true));
            }
            m
        };
        let header = |name: &str, v: &str, ignore_case: bool| {
            if v == "*" {
                json!({"header": {"name": name, "presentMatch": true}})
            } else {
                let m = if ignore_case {
                    ci(string_match(v))
                } else {
                    string_match(v)
                };
                json!({"header": {"name": name, "stringMatch": m}})
            }
        };
        match &self.kind {
            AttrKind::Host => vec![header(":authority", v, true)],
            AttrKind::Method => vec![header(":method", v, false)],
            AttrKind::Header(h) => vec![header(h, v, false)],
            AttrKind::Path => {
                if v.contains("{*}") || v.contains("{**}") {
                    let template = v.replace("{**}", "**").replace("{*}", "*");
                    vec![
                        json!({"uriTemplate": {"name": "uri-template", "typedConfig": {
                        "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
                        "pathTemplate": template}}}),
                    ]
                } else {
                    vec![json!({"urlPath": {"path": string_match(v)}})]
                }
            }
            AttrKind::Port | AttrKind::DestPort => {
                vec![json!({"destinationPort": v.parse::<u32>().unwrap_or(0)})]
            }
            AttrKind::DestIp => vec![json!({"destinationIp": cidr(v)})],
            AttrKind::Sni => vec![json!({"requestedServerName": string_match(v)})],
            AttrKind::SrcIp => vec![json!({"directRemoteIp": cidr(v)})],
            AttrKind::RemoteIp => vec![json!({"remoteIp": cidr(v)})],
            AttrKind::SrcNamespace => {
                let r = if v == "*" {
                    ".*/ns/.*/.*".to_string()
                } else if let Some(p) = v.strip_suffix('*') {
                    format!(".*/ns/{}.*/.*", quote_meta(p))
                } else if let Some(s) = v.strip_prefix('*') {
                    format!(".*/ns/.*{}/.*", quote_meta(s))
                } else {
                    format!(".*/ns/{}/.*", quote_meta(v))
                };
                vec![authenticated(regex(&r))]
            }
            AttrKind::SrcPrincipal => expand_principal(v, &opts.trust_domains)
                .into_iter()
                .map(|p| authenticated(principal_match(&p)))
                .collect(),
            AttrKind::ServiceAccount => {
                let (ns, sa) = match v.split_once('/') {
                    Some((ns, sa)) => (ns.to_string(), sa.to_string()),
                    None => (opts.namespace.to_string(), v.to_string()),
                };
                vec![authenticated(regex(&format!(
                    "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
                    quote_meta(&ns),
                    quote_meta(&sa)
                )))]
            }
            AttrKind::TrustDomain => {
                let m = if v == "*" {
                    regex(".+")
                } else if v.contains('*') {
                    regex(&format!(
                        "spiffe://{}/.*",
                        quote_meta(v).replace("\\*", "[^/]*")
                    ))
                } else {
                    json!({"prefix": format!("spiffe://{v}/")})
                };
                vec![authenticated(m)]
            }
            AttrKind::RequestPrincipal => vec![request_principal(v)],
            AttrKind::Audiences | AttrKind::Presenter | AttrKind::Claim(_) => vec![],
            AttrKind::EnvoyFilter(..) => vec![],
        }
    }

    /// The attribute's values (or, with `not`, its notValues) as one rule, or None.
    fn list(&self, not: bool, opts: &AuthzOptions) -> Option<Value> {
        let values = if not { &self.not_values } else { &self.values };
        if values.is_empty() {
            return None;
        }
        // Metadata-list attributes are one matcher over all values.
        let single = match &self.kind {
            AttrKind::Audiences => Some(jwt_metadata(&["payload", "aud"], list_or_string(values))),
            AttrKind::Presenter => Some(jwt_metadata(&["payload", "azp"], list_or_string(values))),
            AttrKind::Claim(path) => {
                let mut p: Vec<&str> = vec!["payload"];
                p.extend(path.iter().map(String::as_str));
                Some(jwt_metadata(&p, list_or_string(values)))
            }
            AttrKind::EnvoyFilter(filter, path) => {
                let path: Vec<Value> = path.iter().map(|k| json!({"key": k})).collect();
                Some(json!({"metadata": {"filter": filter, "path": path,
                    "value": string_or(values)}}))
            }
            _ => None,
        };
        let neg = |v: Value| match self.side {
            Side::Permission => json!({"notRule": v}),
            Side::Principal => json!({"notId": v}),
        };
        if let Some(one) = single {
            return Some(if not { neg(one) } else { one });
        }
        let items: Vec<Value> = values.iter().flat_map(|v| self.one(v, opts)).collect();
        let or = match self.side {
            Side::Permission => or_rules(items),
            Side::Principal => or_ids(items),
        };
        Some(if not { neg(or) } else { or })
    }
}

/// `principal` as a StringMatcher, with the `spiffe://` prefix identities carry.
fn principal_match(p: &str) -> Value {
    if p == "*" {
        return regex(".+");
    }
    if let Some(rest) = p.strip_prefix('*') {
        return regex(&format!("spiffe://.*{}", quote_meta(rest)));
    }
    if let Some(prefix) = p.strip_suffix('*') {
        return json!({"prefix": format!("spiffe://{prefix}")});
    }
    if p.contains('*') {
        let parts: Vec<String> = p.split('*').map(quote_meta).collect();
        return regex(&format!("spiffe://{}", parts.join(".*")));
    }
    json!({"exact": format!("spiffe://{p}")})
}

/// Trust-domain aliases: a principal `TD/ns/..` whose trust domain is ours or an alias
/// stands for the same identity in every one of them (istiod's
/// `ReplaceTrustDomainAliases`): for each member, in order, the original pattern if it
/// matches the member, else the principal rewritten to that member.
fn expand_principal(p: &str, tds: &[String]) -> Vec<String> {
    let Some((td, rest)) = p.split_once("/ns/") else {
        return vec![p.to_string()];
    };
    if tds.len() < 2 || td == "*" {
        return vec![p.to_string()];
    }
    let matches = |member: &str| {
        if let Some(s) = td.strip_prefix('*') {
            member.ends_with(s)
        } else if let Some(pre) = td.strip_suffix('*') {
            member.starts_with(pre)
        } else {
            member == td
        }
    };
    if !tds.iter().any(|m| matches(m)) {
        return vec![p.to_string()];
    }
    let mut out: Vec<String> = Vec::new();
    for m in tds {
        let item = if matches(m) {
            p.to_string()
        } else {
            format!("{m}/ns/{rest}")
        };
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// `iss/sub` of a request principal, split at the last `/` (issuers are URLs).
fn request_principal(v: &str) -> Value {
    let (iss_m, sub_m) = if v == "*" {
        (regex(".+"), regex(".+"))
    } else {
        match v.rfind('/') {
            Some(i) => {
                let (iss, sub) = (&v[..i], &v[i + 1..]);
                let iss_m = if iss == "*" {
                    regex(".+")
                } else {
                    string_match(iss)
                };
                let sub_m = if sub == "*" {
                    regex(".+")
                } else {
                    string_match(sub)
                };
                (iss_m, sub_m)
            }
            None if v.ends_with('*') => (string_match(v), regex(".+")),
            None if v.starts_with('*') => (regex(".+"), json!({"suffix": &v[1..]})),
            None => (json!({"exact": v}), json!({"exact": ""})),
        }
    };
    json!({"andIds": {"ids": [
        jwt_metadata(&["payload", "iss"], json!({"stringMatch": iss_m})),
        jwt_metadata(&["payload", "sub"], json!({"stringMatch": sub_m})),
    ]}})
}

/// A `when` condition as an attribute; None (with the reason) for unknown keys.
fn condition(c: &Condition) -> Result<Attr, String> {
    let k = c.key.as_str();
    let bracket = |prefix: &str| -> Option<Vec<String>> {
        let rest = k.strip_prefix(prefix)?;
        let mut out = Vec::new();
        let mut r = rest;
        while let Some(s) = r.strip_prefix('[') {
            let (name, after) = s.split_once(']')?;
            out.push(name.to_string());
            r = after;
        }
        (r.is_empty() && !out.is_empty()).then_some(out)
    };
    let (side, kind) = match k {
        "destination.ip" => (Side::Permission, AttrKind::DestIp),
        "destination.port" => (Side::Permission, AttrKind::DestPort),
        "connection.sni" => (Side::Permission, AttrKind::Sni),
        "source.ip" => (Side::Principal, AttrKind::SrcIp),
        "remote.ip" => (Side::Principal, AttrKind::RemoteIp),
        "source.namespace" => (Side::Principal, AttrKind::SrcNamespace),
        "source.principal" => (Side::Principal, AttrKind::SrcPrincipal),
        "request.auth.principal" => (Side::Principal, AttrKind::RequestPrincipal),
        "request.auth.audiences" => (Side::Principal, AttrKind::Audiences),
        "request.auth.presenter" => (Side::Principal, AttrKind::Presenter),
        _ => {
            if let Some(h) = bracket("request.headers") {
                (Side::Principal, AttrKind::Header(h.join("")))
            } else if let Some(path) = bracket("request.auth.claims") {
                (Side::Principal, AttrKind::Claim(path))
            } else if let Some(rest) = k.strip_prefix("experimental.") {
                let (filter, path) = rest
                    .split_once('[')
                    .map(|(f, p)| (f.to_string(), format!("[{p}")))
                    .ok_or_else(|| format!("condition key {k:?} needs a [key]"))?;
                let keys: Vec<String> = path
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .split("][")
                    .map(str::to_string)
                    .collect();
                (Side::Permission, AttrKind::EnvoyFilter(filter, keys))
            } else {
                return Err(format!("unknown condition key {k:?}"));
            }
        }
    };
    Ok(Attr {
        side,
        kind,
        values: c.values.clone(),
        not_values: c.not_values.clone(),
    })
}

fn attr(side: Side, kind: AttrKind, values: &[String], not_values: &[String]) -> Attr {
    Attr {
        side,
        kind,
        values: values.to_vec(),
        not_values: not_values.to_vec(),
    }
}

/// A rule's permissions and principals; None when, for TCP, an ALLOW rule needs HTTP.
fn rule_policy(
    rule: &AuthzRule,
    opts: &AuthzOptions,
    tcp: bool,
    drop_http_rules: bool,
) -> Option<Value> {
    let mut when_perm: Vec<Attr> = Vec::new();
    let mut when_prin: Vec<Attr> = Vec::new();
    for c in &rule.when {
        let a = condition(c).ok()?;
        match a.side {
            Side::Permission => when_perm.push(a),
            Side::Principal => when_prin.push(a),
        }
    }
    let mut permission_lists: Vec<Vec<Attr>> = Vec::new();
    if rule.to.is_empty() {
        permission_lists.push(when_perm.clone());
    }
    for to in &rule.to {
        let mut l = Vec::new();
        if let Some(o) = &to.operation {
            l.push(attr(
                Side::Permission,
                AttrKind::Host,
                &o.hosts,
                &o.not_hosts,
            ));
            l.push(attr(
                Side::Permission,
                AttrKind::Method,
                &o.methods,
                &o.not_methods,
            ));
            l.push(attr(
                Side::Permission,
                AttrKind::Path,
                &o.paths,
                &o.not_paths,
            ));
            l.push(attr(
                Side::Permission,
                AttrKind::Port,
                &o.ports,
                &o.not_ports,
            ));
        }
        l.extend(when_perm.iter().cloned());
        permission_lists.push(l);
    }
    let mut principal_lists: Vec<Vec<Attr>> = Vec::new();
    if rule.from.is_empty() {
        principal_lists.push(when_prin.clone());
    }
    for from in &rule.from {
        let mut l = Vec::new();
        if let Some(s) = &from.source {
            l.push(attr(
                Side::Principal,
                AttrKind::TrustDomain,
                &s.trust_domains,
                &s.not_trust_domains,
            ));
            l.push(attr(
                Side::Principal,
                AttrKind::ServiceAccount,
                &s.service_accounts,
                &s.not_service_accounts,
            ));
            l.push(attr(
                Side::Principal,
                AttrKind::SrcPrincipal,
                &s.principals,
                &s.not_principals,
            ));
            l.push(attr(
                Side::Principal,
                AttrKind::RequestPrincipal,
                &s.request_principals,
                &s.not_request_principals,
            ));
            l.push(attr(
                Side::Principal,
                AttrKind::SrcNamespace,
                &s.namespaces,
                &s.not_namespaces,
            ));
            l.push(attr(
                Side::Principal,
                AttrKind::RemoteIp,
                &s.remote_ip_blocks,
                &s.not_remote_ip_blocks,
            ));
            l.push(attr(
                Side::Principal,
                AttrKind::SrcIp,
                &s.ip_blocks,
                &s.not_ip_blocks,
            ));
        }
        l.extend(when_prin.iter().cloned());
        principal_lists.push(l);
    }
    let uses_http = permission_lists
        .iter()
        .chain(principal_lists.iter())
        .flatten()
        .any(|a| a.kind.http_only() && (!a.values.is_empty() || !a.not_values.is_empty()));
    if tcp && uses_http && drop_http_rules {
        return None;
    }
    let build = |lists: &[Vec<Attr>], side: Side| -> Vec<Value> {
        lists
            .iter()
            .map(|l| {
                let mut items = Vec::new();
                for a in l {
                    if tcp && a.kind.http_only() {
                        continue;
                    }
                    items.extend(a.list(false, opts));
                    items.extend(a.list(true, opts));
                }
                if items.is_empty() {
                    items.push(json!({"any": true}));
                }
                match side {
                    Side::Permission => json!({"andRules": {"rules": items}}),
                    Side::Principal => json!({"andIds": {"ids": items}}),
                }
            })
            .collect()
    };
    Some(json!({
        "permissions": build(&permission_lists, Side::Permission),
        "principals": build(&principal_lists, Side::Principal),
    }))
}

/// The RBAC policies of `policies` (all of one action), named istiod's way.
fn policies_map(
    policies: &[&PolicyInput],
    opts: &AuthzOptions,
    tcp: bool,
    drop_http_rules: bool,
    prefix: &str,
    suffix: &str,
) -> Map<String, Value> {
    let mut out = Map::new();
    for p in policies {
        let name = |i: usize| {
            format!(
                "{prefix}ns[{}]-policy[{}]-rule[{i}]{suffix}",
                p.namespace, p.name
            )
        };
        match &p.spec.rules {
            // No rules at all: an ALLOW policy that allows nothing.
            None => {
                if p.spec.action == AuthorizationAction::ALLOW {
                    out.insert(
                        name(0),
                        json!({"permissions": [{"notRule": {"any": true}}],
                               "principals": [{"notId": {"any": true}}]}),
                    );
                }
            }
            Some(rules) => {
                for (i, r) in rules.iter().enumerate() {
                    if let Some(pol) = rule_policy(r, opts, tcp, drop_http_rules) {
                        out.insert(name(i), pol);
                    }
                }
            }
        }
    }
    out
}

fn rbac_filter(
    tcp: bool,
    rules: Option<Value>,
    shadow: Option<Value>,
    shadow_prefix: Option<&str>,
) -> Value {
    let mut cfg = Map::new();
    cfg.insert(
        "@type".into(),
        json!(if tcp {
            "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
        } else {
            "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
        }),
    );
    if let Some(r) = rules {
        cfg.insert("rules".into(), r);
    }
    if let Some(s) = shadow {
        cfg.insert("shadowRules".into(), s);
    }
    if let Some(p) = shadow_prefix {
        cfg.insert("shadowRulesStatPrefix".into(), json!(p));
    }
    if tcp {
        cfg.insert("statPrefix".into(), json!("tcp."));
    }
    json!({
        "name": if tcp { "envoy.filters.network.rbac" } else { "envoy.filters.http.rbac" },
        "typedConfig": Value::Object(cfg),
    })
}

fn rbac_rules(action: Option<&str>, policies: Map<String, Value>) -> Value {
    let mut m = Map::new();
    if let Some(a) = action {
        m.insert("action".into(), json!(a));
    }
    if !policies.is_empty() {
        m.insert("policies".into(), Value::Object(policies));
    }
    Value::Object(m)
}

fn header_patterns(names: &[String]) -> Value {
    let patterns: Vec<Value> = names
        .iter()
        .map(|h| {
            let mut m = string_match(h);
            if let Value::Object(o) = &mut m {
                o.insert("ignoreCase".into(), json!(true));
            }
            m
        })
        .collect();
    json!({"patterns": patterns})
}

fn status_code(s: &str) -> Option<Value> {
    let code = if s.is_empty() {
        403
    } else {
        s.parse::<u16>().ok()?
    };
    let name = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => return None,
    };
    Some(json!({"code": name}))
}

fn duration_text(d: std::time::Duration) -> String {
    crate::model::istio::Duration(d).to_string()
}

fn with_body(b: &ExtAuthzBody) -> Value {
    let mut m = Map::new();
    if b.max_request_bytes > 0 {
        m.insert("maxRequestBytes".into(), json!(b.max_request_bytes));
    }
    if b.allow_partial_message {
        m.insert("allowPartialMessage".into(), json!(true));
    }
    if b.pack_as_bytes {
        m.insert("packAsBytes".into(), json!(true));
    }
    Value::Object(m)
}

/// `ns/host` or `host` of an ext_authz provider, checked against the registry.
fn provider_service(service: &str, port: u32, opts: &AuthzOptions) -> Option<(String, String)> {
    if port == 0 || port > 65535 {
        return None;
    }
    let (ns, host) = match service.split_once('/') {
        Some((ns, h)) => (Some(ns), h),
        None => (None, service),
    };
    if !(opts.service_exists)(ns, host) {
        return None;
    }
    Some((format!("outbound|{port}||{host}"), host.to_string()))
}

/// The ext_authz filter for a provider; None when the provider is unusable here.
fn ext_authz_filter(provider: &ExtensionProvider, opts: &AuthzOptions, tcp: bool) -> Option<Value> {
    let enabled = json!({
        "filter": if tcp { "envoy.filters.network.rbac" } else { "envoy.filters.http.rbac" },
        "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
        "value": {"stringMatch": {"prefix": format!("istio-ext-authz-{}", provider.name)}},
    });
    if let Some(g) = &provider.envoy_ext_authz_grpc {
        let (cluster, host) = provider_service(&g.service, g.port, opts)?;
        let status = status_code(&g.status_on_error)?;
        let timeout = g
            .timeout
            .map(|d| d.as_std())
            .unwrap_or(std::time::Duration::from_secs(600));
        let mut cfg = Map::new();
        if tcp {
            cfg.insert(
                "@type".into(),
                json!("type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz"),
            );
            cfg.insert("statPrefix".into(), json!("tcp."));
            cfg.insert("transportApiVersion".into(), json!("V3"));
        } else {
            cfg.insert(
                "@type".into(),
                json!("type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"),
            );
            cfg.insert("statusOnError".into(), status);
            cfg.insert("transportApiVersion".into(), json!("V3"));
            if let Some(b) = &g.include_request_body_in_check {
                cfg.insert("withRequestBody".into(), with_body(b));
            }
        }
        if g.fail_open {
            cfg.insert("failureModeAllow".into(), json!(true));
        }
        cfg.insert("filterEnabledMetadata".into(), enabled);
        cfg.insert(
            "grpcService".into(),
            json!({"envoyGrpc": {"authority": host, "clusterName": cluster}, "timeout": duration_text(timeout)}),
        );
        return Some(json!({
            "name": if tcp { "envoy.filters.network.ext_authz" } else { "envoy.filters.http.ext_authz" },
            "typedConfig": Value::Object(cfg),
        }));
    }
    if let Some(h) = &provider.envoy_ext_authz_http {
        if tcp {
            return None;
        }
        let (cluster, host) = provider_service(&h.service, h.port, opts)?;
        let status = status_code(&h.status_on_error)?;
        if !h.path_prefix.is_empty() && !h.path_prefix.starts_with('/') {
            return None;
        }
        let timeout = h
            .timeout
            .map(|d| d.as_std())
            .unwrap_or(std::time::Duration::from_secs(600));
        let mut cfg = Map::new();
        cfg.insert(
            "@type".into(),
            json!("type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"),
        );
        let allowed = if h.include_request_headers_in_check.is_empty() {
            &h.include_headers_in_check
        } else {
            &h.include_request_headers_in_check
        };
        if !allowed.is_empty() {
            cfg.insert("allowedHeaders".into(), header_patterns(allowed));
        }
        if h.fail_open {
            cfg.insert("failureModeAllow".into(), json!(true));
        }
        cfg.insert("filterEnabledMetadata".into(), enabled);
        let mut request = Map::new();
        if !h.include_additional_headers_in_check.is_empty() {
            let add: Vec<Value> = h
                .include_additional_headers_in_check
                .iter()
                .map(|(k, v)| json!({"key": k, "value": v}))
                .collect();
            request.insert("headersToAdd".into(), json!(add));
        }
        let mut response = Map::new();
        if !h.headers_to_downstream_on_deny.is_empty() {
            response.insert(
                "allowedClientHeaders".into(),
                header_patterns(&h.headers_to_downstream_on_deny),
            );
        }
        if !h.headers_to_downstream_on_allow.is_empty() {
            response.insert(
                "allowedClientHeadersOnSuccess".into(),
                header_patterns(&h.headers_to_downstream_on_allow),
            );
        }
        if !h.headers_to_upstream_on_allow.is_empty() {
            response.insert(
                "allowedUpstreamHeaders".into(),
                header_patterns(&h.headers_to_upstream_on_allow),
            );
        }
        let mut svc = Map::new();
        if !request.is_empty() {
            svc.insert("authorizationRequest".into(), Value::Object(request));
        }
        if !response.is_empty() {
            svc.insert("authorizationResponse".into(), Value::Object(response));
        }
        if !h.path_prefix.is_empty() {
            svc.insert("pathPrefix".into(), json!(h.path_prefix));
        }
        svc.insert(
            "serverUri".into(),
            json!({"cluster": cluster, "timeout": duration_text(timeout), "uri": format!("http://{host}")}),
        );
        cfg.insert("httpService".into(), Value::Object(svc));
        cfg.insert("statusOnError".into(), status);
        cfg.insert("transportApiVersion".into(), json!("V3"));
        if let Some(b) = &h.include_request_body_in_check {
            cfg.insert("withRequestBody".into(), with_body(b));
        }
        return Some(
            json!({"name": "envoy.filters.http.ext_authz", "typedConfig": Value::Object(cfg)}),
        );
    }
    None
}

/// The authorization filters for one workload, in filter-chain order: CUSTOM (shadow
/// RBAC + ext_authz), DENY, ALLOW, AUDIT.
pub fn build(policies: &[PolicyInput], opts: &AuthzOptions, tcp: bool) -> Vec<Value> {
    let of = |a: AuthorizationAction| -> Vec<&PolicyInput> {
        policies.iter().filter(|p| p.spec.action == a).collect()
    };
    let mut out = Vec::new();

    let custom = of(AuthorizationAction::CUSTOM);
    if !custom.is_empty() {
        let names: Vec<&str> = custom
            .iter()
            .map(|p| p.spec.provider.as_ref().map_or("", |x| x.name.as_str()))
            .collect();
        let first = names[0];
        let provider = opts.providers.iter().find(|p| p.name == first);
        let one_provider = names.iter().all(|n| *n == first);
        let ext = provider.and_then(|p| ext_authz_filter(p, opts, tcp));
        let http_only_provider = provider.is_some_and(|p| p.envoy_ext_authz_http.is_some());
        let prefix = format!("istio-ext-authz-{first}-");
        match (one_provider, ext) {
            (true, Some(ext)) => {
                let shadow = policies_map(&custom, opts, tcp, false, &prefix, "");
                out.push(rbac_filter(
                    tcp,
                    None,
                    Some(rbac_rules(Some("DENY"), shadow)),
                    Some("istio_ext_authz_"),
                ));
                out.push(ext);
            }
            // An HTTP provider has nothing to do on a TCP chain.
            (true, None) if tcp && http_only_provider => {}
            // Several providers, or a provider that cannot be used: deny what the
            // policies would have sent for external authorization (fail closed).
            _ => {
                let deny = policies_map(
                    &custom,
                    opts,
                    tcp,
                    false,
                    &prefix,
                    "-deny-due-to-bad-CUSTOM-action",
                );
                out.push(rbac_filter(
                    tcp,
                    Some(rbac_rules(Some("DENY"), deny)),
                    None,
                    None,
                ));
            }
        }
    }

    for (action, rbac_action, drop_http) in [
        (AuthorizationAction::DENY, Some("DENY"), false),
        (AuthorizationAction::ALLOW, None, true),
        (AuthorizationAction::AUDIT, Some("LOG"), false),
    ] {
        let all = of(action);
        if all.is_empty() {
            continue;
        }
        let live: Vec<&PolicyInput> = all.iter().copied().filter(|p| !p.dry_run).collect();
        let dry: Vec<&PolicyInput> = all.iter().copied().filter(|p| p.dry_run).collect();
        let rules = (!live.is_empty()).then(|| {
            rbac_rules(
                rbac_action,
                policies_map(&live, opts, tcp, drop_http, "", ""),
            )
        });
        let shadow = (!dry.is_empty()).then(|| {
            rbac_rules(
                rbac_action,
                policies_map(&dry, opts, tcp, drop_http, "", ""),
            )
        });
        let prefix = if action == AuthorizationAction::DENY && shadow.is_some() {
            "istio_dry_run_deny_"
        } else {
            "istio_dry_run_allow_"
        };
        out.push(rbac_filter(tcp, rules, shadow, Some(prefix)));
    }
    out
}

/// The authorization filters of a sidecar's inbound chains (HTTP or TCP), from the
/// snapshot's AuthorizationPolicies for this workload.
pub fn for_workload(ctx: &super::ProxyContext, tcp: bool) -> Vec<Value> {
    let snap = ctx.snap;
    let objs = snap.authorization_policies_for(&ctx.proxy.namespace, ctx.labels);
    if objs.is_empty() {
        return vec![];
    }
    let inputs: Vec<PolicyInput> = objs
        .iter()
        .filter_map(|o| match &o.spec {
            crate::model::Spec::AuthorizationPolicy(spec) => Some(PolicyInput {
                namespace: &o.key.namespace,
                name: &o.key.name,
                spec,
                dry_run: o
                    .annotations
                    .get("istio.io/dry-run")
                    .is_some_and(|v| v == "true"),
            }),
            _ => None,
        })
        .collect();
    let mut trust_domains = vec![snap.mesh.trust_domain.clone()];
    trust_domains.extend(snap.mesh.trust_domain_aliases.iter().cloned());
    if trust_domains.len() < 2 {
        trust_domains.clear();
    }
    let exists = |ns: Option<&str>, host: &str| {
        snap.services
            .get(host)
            .is_some_and(|s| ns.is_none_or(|n| n == s.namespace))
    };
    let opts = AuthzOptions {
        namespace: &ctx.proxy.namespace,
        trust_domains,
        providers: &snap.mesh.extension_providers,
        service_exists: &exists,
    };
    build(&inputs, &opts, tcp)
}
