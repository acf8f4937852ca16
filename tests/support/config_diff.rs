//! Structural comparison of two Envoy configuration dumps (istiod's and meshd's) for
//! tests/fidelity.rs: each resource (cluster, listener, route configuration, endpoint
//! assignment) normalised, then compared field by field. The normalisation removes what
//! does not change Envoy's behaviour, and sets aside what only istio-proxy reads:
//!
//! - N1 key style: snake_case → lowerCamelCase (not inside Struct values —
//!   `filterMetadata.<ns>`, a TypedStruct's `value`, `transportSocketMatches[].match` —
//!   and not the keys of proto maps, [`MAP_FIELDS`]).
//! - N2 `versionInfo` and `lastUpdated` dropped.
//! - N3 durations canonical: `10.000s` = `10s`.
//! - N4 proto3 defaults = absent: false, 0, "", null, [], an empty proto map, an enum's
//!   zero value ([`ENUM_ZERO`]); but 0 kept for wrapper fields where 0 means something
//!   ([`KEEP_ZERO`]), and for [`BOOL_DEFAULT_TRUE`] fields true is the default.
//!   Empty messages stay (`ads: {}` means something), except N11.
//! - N5 numbers: 9080 = 9080.0 = "9080" (64-bit integers are strings in proto JSON).
//! - N6 lists whose order Envoy ignores sorted ([`UNORDERED_LISTS`]).
//! - N7 lists of named things keyed by identity ([`keyed`]): filter chains by name and
//!   match, virtual hosts, endpoints by address, localities, thresholds by priority,
//!   added headers by key; for ordered ones (filters, routes, transport socket matches)
//!   their order is compared over the names both sides have.
//! - N8 an `Any` of another `@type` is one difference.
//! - N9 endpoint weight 1 = absent; N10 endpoint HEALTHY = absent (no health checks).
//! - N11 `{}` = absent for `filterChainMatch`, a cluster's `commonLbConfig`, a
//!   connection manager's `httpProtocolOptions`.
//! - N12 the UUID request-id extension with only default options = absent.
//! - N13 untyped SAN matchers of SPIFFE IDs = URI-typed ones.
//! - N14 HTTP/2 `maxConcurrentStreams` ≥ 2^30 = absent (Envoy's default is 2^31-1).
//! - N15 istio-proxy-only parts set aside (counted, not compared): its filters by name
//!   or type ([`ISTIO_FILTERS`], [`ISTIO_TYPES`]), `filterMetadata.istio`, and the
//!   `istio-peer-exchange` ALPN of a server TLS context.

use std::collections::BTreeMap;

use serde_json::Value;

/// A normalised configuration tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Leaf(Value),
    List(Vec<Node>),
    Map(BTreeMap<String, Node>),
    /// A list keyed by its elements' identity, with their order when it matters.
    Keyed(BTreeMap<String, Node>, Option<Vec<String>>),
}

const MAP_FIELDS: &[&str] = &[
    "typedExtensionProtocolOptions",
    "typedPerFilterConfig",
    "typedFilterMetadata",
    "perFilterConfig",
    "policies",
    "clusterSpecifierPlugins",
];

/// Filters only istio-proxy has that meshd does not configure (its authentication
/// filters; the metadata exchange, ALPN override and stats filters are compared).
pub const ISTIO_FILTERS: &[&str] = &[
    "istio_authn",
    "istio.authn",
    "istio.filters.http.authn",
    "istio.telemetry",
    "istio.io/telemetry",
];

/// Type names (after the type URL's `/`) of those extensions.
pub const ISTIO_TYPES: &[&str] = &[
    "io.istio.extensions.",
    "istio.envoy.config.filter.http.authn.",
    "envoy.extensions.filters.http.istio_stats",
];

const ENUM_ZERO: &[(&str, &str)] = &[
    ("type", "STATIC"),
    ("lbPolicy", "ROUND_ROBIN"),
    ("dnsLookupFamily", "AUTO"),
    ("codecType", "AUTO"),
    ("resourceApiVersion", "AUTO"),
    ("transportApiVersion", "AUTO"),
    ("trafficDirection", "UNSPECIFIED"),
    ("protocol", "TCP"),
    ("priority", "DEFAULT"),
    ("forwardClientCertDetails", "SANITIZE"),
    ("healthStatus", "UNKNOWN"),
    ("headersWithUnderscoresAction", "ALLOW"),
    ("tlsMinimumProtocolVersion", "TLS_AUTO"),
    ("tlsMaximumProtocolVersion", "TLS_AUTO"),
    (
        "pathWithEscapedSlashesAction",
        "IMPLEMENTATION_SPECIFIC_DEFAULT",
    ),
    ("appendAction", "APPEND_IF_EXISTS_OR_ADD"),
    ("requireTls", "NONE"),
    ("clusterNotFoundResponseCode", "SERVICE_UNAVAILABLE"),
    ("responseCode", "MOVED_PERMANENTLY"),
    ("action", "ALLOW"),
    ("apiType", "GRPC"),
    ("serverHeaderTransformation", "OVERWRITE"),
    ("internalRedirectAction", "PASS_THROUGH_INTERNAL_REDIRECT"),
    ("trustChainVerification", "VERIFY_TRUST_CHAIN"),
    ("sanType", "SAN_TYPE_UNSPECIFIED"),
    ("denominator", "HUNDRED"),
];

const KEEP_ZERO: &[&str] = &[
    "numRetries",
    "maxConnections",
    "maxPendingRequests",
    "maxRequests",
    "maxRetries",
    "perConnectionBufferLimitBytes",
    "maxConcurrentStreams",
    "initialStreamWindowSize",
    "initialConnectionWindowSize",
    "loadBalancingWeight",
    "weight",
    "totalWeight",
    "maxRequestsPerConnection",
    "maxConnectionPools",
    "xffNumTrustedHops",
    "maxRequestHeadersKb",
    "maxHeadersCount",
    "maxConnectAttempts",
];

const BOOL_DEFAULT_TRUE: &[&str] = &["generateRequestId", "bindToPort", "caseSensitive", "append"];

const UNORDERED_LISTS: &[&str] = &[
    "domains",
    "serverNames",
    "applicationProtocols",
    "subjectAltNames",
    "verifySubjectAltName",
    "retriableStatusCodes",
    "requestHeadersToRemove",
    "responseHeadersToRemove",
    "sourcePorts",
    "retryHostPredicate",
    "matchSubjectAltNames",
    "matchTypedSubjectAltNames",
    "prefixRanges",
    "sourcePrefixRanges",
    "directSourcePrefixRanges",
    "principals",
    "permissions",
    "allowOriginStringMatch",
    "ids",
    "orIds",
    "andIds",
    "rules",
];

fn camel(k: &str) -> String {
    if !k.contains('_')
        || !k.starts_with(|c: char| c.is_ascii_lowercase())
        || !k
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return k.to_string();
    }
    let mut out = String::new();
    for (i, part) in k.split('_').enumerate() {
        if i == 0 {
            out.push_str(part);
        } else {
            let mut cs = part.chars();
            if let Some(c) = cs.next() {
                out.push(c.to_ascii_uppercase());
                out.extend(cs);
            }
        }
    }
    out
}

/// N1.
fn camelize(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(camelize).collect()),
        Value::Object(o) => {
            let typed_struct = o
                .get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("TypedStruct"));
            let mut out = serde_json::Map::new();
            for (k, v) in o {
                let ck = camel(k);
                let nv = if ck == "filterMetadata" || (typed_struct && ck == "value") {
                    v.clone()
                } else if MAP_FIELDS.contains(&ck.as_str()) && v.is_object() {
                    Value::Object(
                        v.as_object()
                            .into_iter()
                            .flatten()
                            .map(|(mk, mv)| (mk.clone(), camelize(mv)))
                            .collect(),
                    )
                } else if ck == "transportSocketMatches" && v.is_array() {
                    Value::Array(
                        v.as_array()
                            .into_iter()
                            .flatten()
                            .map(|e| match e.as_object() {
                                Some(e) => Value::Object(
                                    e.iter()
                                        .map(|(a, b)| {
                                            let ca = camel(a);
                                            let nb = if ca == "match" {
                                                b.clone()
                                            } else {
                                                camelize(b)
                                            };
                                            (ca, nb)
                                        })
                                        .collect(),
                                ),
                                None => e.clone(),
                            })
                            .collect(),
                    )
                } else {
                    camelize(v)
                };
                out.insert(ck, nv);
            }
            Value::Object(out)
        }
        _ => v.clone(),
    }
}

/// N3.
fn canon_duration(s: &str) -> Option<String> {
    let n = s.strip_suffix('s')?;
    let digits = n.strip_prefix('-').unwrap_or(n);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty()
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let sign = if n.starts_with('-') { "-" } else { "" };
    Some(if frac.is_empty() {
        format!("{sign}{int}s")
    } else {
        format!("{sign}{int}.{frac}s")
    })
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse::<f64>().ok().filter(|_| {
            s.chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
        }),
        _ => None,
    }
}

fn is_default(k: &str, n: &Node) -> bool {
    match n {
        Node::Leaf(Value::Null) => true,
        Node::Leaf(Value::Bool(b)) => *b == BOOL_DEFAULT_TRUE.contains(&k),
        Node::Leaf(Value::Number(x)) => {
            x.as_f64().is_some_and(|f| f == 0.0) && !KEEP_ZERO.contains(&k)
        }
        Node::Leaf(Value::String(s)) => {
            s.is_empty() || ENUM_ZERO.iter().any(|(f, z)| *f == k && z == s)
        }
        Node::List(l) => l.is_empty(),
        _ => false,
    }
}

/// The identity of an element of a keyed list (N7), and whether the list's order counts.
/// How an element of a keyed list is known.
type Identity = fn(&Value) -> String;

fn keyed(field: &str) -> Option<(Identity, bool)> {
    fn name(v: &Value) -> String {
        v["name"].as_str().unwrap_or_default().to_string()
    }
    fn chain(v: &Value) -> String {
        let m = &v["filterChainMatch"];
        let mut parts = Vec::new();
        for k in [
            "destinationPort",
            "transportProtocol",
            "applicationProtocols",
            "serverNames",
            "prefixRanges",
            "sourceType",
            "sourcePrefixRanges",
            "directSourcePrefixRanges",
        ] {
            let x = &m[k];
            let shown = match x {
                Value::Null => continue,
                Value::String(s) if s.is_empty() => continue,
                Value::Number(n) if n.as_f64() == Some(0.0) => continue,
                Value::Array(a) if a.is_empty() => continue,
                Value::Array(a) => {
                    let mut items: Vec<String> = a
                        .iter()
                        .map(|i| match i {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect();
                    items.sort();
                    items.join(",")
                }
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            parts.push(format!("{k}={shown}"));
        }
        format!("{}{{{}}}", name(v), parts.join(";"))
    }
    fn endpoint(v: &Value) -> String {
        let sa = &v["endpoint"]["address"]["socketAddress"];
        if sa.is_object() {
            let port = match &sa["portValue"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{}:{port}", sa["address"].as_str().unwrap_or_default())
        } else {
            v["endpoint"].to_string()
        }
    }
    fn locality(v: &Value) -> String {
        let l = &v["locality"];
        let s = |k: &str| l[k].as_str().unwrap_or_default().to_string();
        format!(
            "{}/{}/{}|p{}",
            s("region"),
            s("zone"),
            s("subZone"),
            v["priority"].as_u64().unwrap_or(0)
        )
    }
    fn priority(v: &Value) -> String {
        v["priority"].as_str().unwrap_or("DEFAULT").to_string()
    }
    fn header(v: &Value) -> String {
        v["header"]["key"].as_str().unwrap_or_default().to_string()
    }
    Some(match field {
        "filterChains" => (chain, false),
        "virtualHosts" | "tlsCertificateSdsSecretConfigs" | "clusters" => (name, false),
        "lbEndpoints" => (endpoint, false),
        "endpoints" => (locality, false),
        "thresholds" => (priority, false),
        "requestHeadersToAdd" | "responseHeadersToAdd" => (header, false),
        "httpFilters" | "filters" | "listenerFilters" | "transportSocketMatches" | "routes" => {
            (name, true)
        }
        _ => return None,
    })
}

/// Struct values: whole numbers are doubles on the wire (9080 = 9080.0).
fn canon_struct(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, w)| (k.clone(), canon_struct(w)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(canon_struct).collect()),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
            _ => v.clone(),
        },
        _ => v.clone(),
    }
}

impl Node {
    /// Back to JSON (for sorting and for showing a difference).
    pub fn to_value(&self) -> Value {
        match self {
            Node::Leaf(v) => v.clone(),
            Node::List(l) => Value::Array(l.iter().map(Node::to_value).collect()),
            Node::Map(m) | Node::Keyed(m, _) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_value())).collect())
            }
        }
    }

    fn map(&self) -> Option<&BTreeMap<String, Node>> {
        match self {
            Node::Map(m) | Node::Keyed(m, _) => Some(m),
            _ => None,
        }
    }

    fn str_at(&self, k: &str) -> Option<&str> {
        match self.map()?.get(k)? {
            Node::Leaf(Value::String(s)) => Some(s),
            _ => None,
        }
    }
}

fn canon(v: &Value, key: &str) -> Node {
    match v {
        Value::Object(o) => {
            let mut out = BTreeMap::new();
            for (k, w) in o {
                if k == "versionInfo" || k == "lastUpdated" {
                    continue;
                }
                if k == "filterMetadata" {
                    let m: BTreeMap<String, Node> = w
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(ns, s)| (ns.clone(), Node::Leaf(canon_struct(s))))
                        .collect();
                    out.insert(k.clone(), Node::Map(m));
                    continue;
                }
                let c = canon(w, k);
                if is_default(k, &c) {
                    continue;
                }
                if MAP_FIELDS.contains(&k.as_str()) && matches!(&c, Node::Map(m) if m.is_empty()) {
                    continue;
                }
                out.insert(k.clone(), c);
            }
            post(out, key)
        }
        Value::Array(a) => {
            let items: Vec<Node> = a.iter().map(|w| canon(w, key)).collect();
            if let Some((id, ordered)) = keyed(key)
                && !items.is_empty()
                && items.iter().all(|i| matches!(i, Node::Map(_)))
            {
                let ids: Vec<String> = a.iter().map(id).collect();
                let mut m = BTreeMap::new();
                let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
                for (k, item) in ids.iter().zip(items) {
                    let n = seen.entry(k).or_default();
                    *n += 1;
                    let k = if *n == 1 && !k.is_empty() {
                        k.clone()
                    } else {
                        format!("{k}#{n}")
                    };
                    m.insert(k, item);
                }
                let order = (ordered && ids.len() > 1).then_some(ids);
                return Node::Keyed(m, order);
            }
            let mut items = items;
            if UNORDERED_LISTS.contains(&key) {
                items.sort_by_key(|i| i.to_value().to_string());
            }
            Node::List(items)
        }
        Value::String(s) => match canon_duration(s) {
            Some(d) => Node::Leaf(Value::String(d)),
            None => Node::Leaf(v.clone()),
        },
        _ => Node::Leaf(v.clone()),
    }
}

/// N9–N14: equivalences that depend on where a message sits.
fn post(mut d: BTreeMap<String, Node>, key: &str) -> Node {
    let ty = match d.get("@type") {
        Some(Node::Leaf(Value::String(t))) => t.clone(),
        _ => String::new(),
    };
    if key == "lbEndpoints" {
        if d.get("loadBalancingWeight")
            .is_some_and(|w| matches!(w, Node::Leaf(v) if num(v) == Some(1.0)))
        {
            d.remove("loadBalancingWeight");
        }
        if matches!(d.get("healthStatus"), Some(Node::Leaf(Value::String(s))) if s == "HEALTHY") {
            d.remove("healthStatus");
        }
    }
    let empty = |n: Option<&Node>| matches!(n, Some(Node::Map(m)) if m.is_empty());
    if empty(d.get("filterChainMatch")) {
        d.remove("filterChainMatch");
    }
    if ty.ends_with(".Cluster") && empty(d.get("commonLbConfig")) {
        d.remove("commonLbConfig");
    }
    if ty.ends_with("HttpConnectionManager") {
        if empty(d.get("httpProtocolOptions")) {
            d.remove("httpProtocolOptions");
        }
        let default_uuid = d
            .get("requestIdExtension")
            .and_then(|r| r.map())
            .and_then(|r| r.get("typedConfig"))
            .and_then(Node::map)
            .is_some_and(|tc| {
                tc.get("@type").is_some_and(|t| {
                    matches!(t, Node::Leaf(Value::String(s)) if s.ends_with("UuidRequestIdConfig"))
                }) && tc
                    .iter()
                    .filter(|(k, _)| *k != "@type")
                    .all(|(_, v)| *v == Node::Leaf(Value::Bool(true)))
            });
        if default_uuid {
            d.remove("requestIdExtension");
        }
    }
    if let Some(Node::List(ms)) = d.get("matchSubjectAltNames") {
        let spiffe = |m: &Node| {
            ["exact", "prefix"]
                .iter()
                .any(|k| m.str_at(k).is_some_and(|s| s.starts_with("spiffe://")))
        };
        if ms.iter().all(spiffe) {
            let ms = ms.clone();
            let mut typed = match d.remove("matchTypedSubjectAltNames") {
                Some(Node::List(l)) => l,
                _ => Vec::new(),
            };
            for m in ms {
                typed.push(Node::Map(BTreeMap::from([
                    ("matcher".to_string(), m),
                    ("sanType".to_string(), Node::Leaf(Value::from("URI"))),
                ])));
            }
            typed.sort_by_key(|i| i.to_value().to_string());
            d.remove("matchSubjectAltNames");
            d.insert("matchTypedSubjectAltNames".into(), Node::List(typed));
        }
    }
    if key == "http2ProtocolOptions"
        && matches!(d.get("maxConcurrentStreams"), Some(Node::Leaf(v)) if num(v).is_some_and(|n| n >= 1_073_741_824.0))
    {
        d.remove("maxConcurrentStreams");
    }
    Node::Map(d)
}

fn type_of(n: &Node) -> String {
    let t = n.str_at("@type").unwrap_or_default();
    if t.ends_with("TypedStruct") {
        n.str_at("typeUrl").unwrap_or(t).to_string()
    } else {
        t.to_string()
    }
}

fn istio_type(t: &str) -> bool {
    t.rsplit_once('/')
        .is_some_and(|(_, name)| ISTIO_TYPES.iter().any(|p| name.starts_with(p)))
}

fn is_istio_item(n: &Node) -> bool {
    n.str_at("name").is_some_and(|s| ISTIO_FILTERS.contains(&s))
        || n.map()
            .and_then(|m| m.get("typedConfig"))
            .is_some_and(|tc| istio_type(&type_of(tc)))
}

/// N15: removes istio-proxy-only parts in place; returns how many it set aside.
fn extract_istio(n: &mut Node) -> usize {
    let mut count = 0;
    match n {
        Node::List(l) => {
            for i in l {
                count += extract_istio(i);
            }
        }
        Node::Keyed(m, order) => {
            let gone: Vec<String> = m
                .iter()
                .filter(|(_, v)| is_istio_item(v))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &gone {
                m.remove(k);
                count += 1;
            }
            if let Some(o) = order {
                o.retain(|k| !gone.contains(k));
                if o.len() <= 1 {
                    *order = None;
                }
            }
            for v in m.values_mut() {
                count += extract_istio(v);
            }
        }
        Node::Map(m) => {
            let server_tls = matches!(m.get("@type"), Some(Node::Leaf(Value::String(t))) if t.ends_with("DownstreamTlsContext"));
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let Some(v) = m.get_mut(&k) else { continue };
                if k == "filterMetadata" {
                    if let Node::Map(fm) = v
                        && fm.remove("istio").is_some()
                    {
                        count += 1;
                        if fm.is_empty() {
                            m.remove(&k);
                        }
                    }
                    continue;
                }
                if MAP_FIELDS.contains(&k.as_str())
                    && let Node::Map(fm) = v
                {
                    let before = fm.len();
                    fm.retain(|fk, fv| {
                        !(ISTIO_FILTERS.contains(&fk.as_str()) || istio_type(&type_of(fv)))
                    });
                    count += before - fm.len();
                    if fm.is_empty() {
                        m.remove(&k);
                        continue;
                    }
                }
                let Some(v) = m.get_mut(&k) else { continue };
                count += extract_istio(v);
                if matches!(v, Node::Keyed(km, _) if km.is_empty()) {
                    m.remove(&k);
                }
            }
            if server_tls
                && let Some(Node::Map(ctc)) = m.get_mut("commonTlsContext")
                && let Some(Node::List(alpn)) = ctc.get_mut("alpnProtocols")
            {
                let before = alpn.len();
                alpn.retain(|a| *a != Node::Leaf(Value::from("istio-peer-exchange")));
                count += before - alpn.len();
            }
            if matches!(m.get("metadata"), Some(Node::Map(md)) if md.is_empty()) {
                m.remove("metadata");
            }
        }
        Node::Leaf(_) => {}
    }
    count
}

/// One resource, normalised, and how many istio-proxy-only parts were set aside.
pub fn normalise(resource: &Value) -> (Node, usize) {
    let mut n = canon(&camelize(resource), "");
    let aside = extract_istio(&mut n);
    (n, aside)
}

/// One difference: where, istiod's value, meshd's (None: absent).
#[derive(Debug, Clone)]
pub struct Difference {
    pub path: String,
    pub istiod: Option<Value>,
    pub meshd: Option<Value>,
}

fn leaf_eq(a: &Value, b: &Value) -> bool {
    a == b || matches!((num(a), num(b)), (Some(x), Some(y)) if x == y)
}

/// The differences between istiod's `a` and meshd's `b` below `path`.
pub fn diff(a: &Node, b: &Node, path: &str, out: &mut Vec<Difference>) {
    match (a, b) {
        (Node::Map(x) | Node::Keyed(x, _), Node::Map(y) | Node::Keyed(y, _)) => {
            let (ta, tb) = (x.get("@type"), y.get("@type"));
            if let (Some(ta), Some(tb)) = (ta, tb)
                && ta != tb
            {
                out.push(Difference {
                    path: format!("{path}.@type"),
                    istiod: Some(ta.to_value()),
                    meshd: Some(tb.to_value()),
                });
                return;
            }
            let keyed = matches!(a, Node::Keyed(..)) || matches!(b, Node::Keyed(..));
            if let (Node::Keyed(_, oa), Node::Keyed(_, ob)) = (a, b) {
                let common = |o: &Option<Vec<String>>, m: &BTreeMap<String, Node>| -> Vec<String> {
                    o.clone()
                        .unwrap_or_else(|| m.keys().cloned().collect())
                        .into_iter()
                        .filter(|k| x.contains_key(k) && y.contains_key(k))
                        .collect()
                };
                let (ca, cb) = (common(oa, x), common(ob, y));
                if ca != cb {
                    out.push(Difference {
                        path: format!("{path}[<order>]"),
                        istiod: Some(Value::from(ca)),
                        meshd: Some(Value::from(cb)),
                    });
                }
            }
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                if k == "@type" {
                    continue;
                }
                let p = if keyed {
                    format!("{path}[{k}]")
                } else if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => diff(va, vb, &p, out),
                    (va, vb) => out.push(Difference {
                        path: p,
                        istiod: va.map(Node::to_value),
                        meshd: vb.map(Node::to_value),
                    }),
                }
            }
        }
        (Node::List(x), Node::List(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff(va, vb, &format!("{path}[{i}]"), out);
            }
        }
        (Node::Leaf(x), Node::Leaf(y)) if leaf_eq(x, y) => {}
        _ => out.push(Difference {
            path: path.to_string(),
            istiod: Some(a.to_value()),
            meshd: Some(b.to_value()),
        }),
    }
}

/// The resources of a config dump by kind and name: clusters, listeners, route
/// configurations, endpoint assignments (either key style).
pub fn resources(dump: &Value) -> BTreeMap<&'static str, BTreeMap<String, Value>> {
    let get = |v: &Value, a: &str, b: &str| v.get(a).or_else(|| v.get(b)).cloned();
    let list = |v: &Value, a: &str, b: &str| -> Vec<Value> {
        get(v, a, b)
            .and_then(|l| l.as_array().cloned())
            .unwrap_or_default()
    };
    let mut out: BTreeMap<&'static str, BTreeMap<String, Value>> = BTreeMap::new();
    for c in dump["configs"].as_array().into_iter().flatten() {
        for x in list(c, "dynamicActiveClusters", "dynamic_active_clusters") {
            let cl = x["cluster"].clone();
            let name = cl["name"].as_str().unwrap_or_default().to_string();
            out.entry("cluster").or_default().insert(name, cl);
        }
        for x in list(c, "dynamicListeners", "dynamic_listeners") {
            if let Some(l) = get(&x, "activeState", "active_state").map(|s| s["listener"].clone()) {
                let name = x["name"].as_str().unwrap_or_default().to_string();
                out.entry("listener").or_default().insert(name, l);
            }
        }
        for x in list(c, "dynamicRouteConfigs", "dynamic_route_configs") {
            if let Some(rc) = get(&x, "routeConfig", "route_config") {
                let name = rc["name"].as_str().unwrap_or_default().to_string();
                out.entry("route").or_default().insert(name, rc);
            }
        }
        for x in list(c, "dynamicEndpointConfigs", "dynamic_endpoint_configs") {
            if let Some(e) = get(&x, "endpointConfig", "endpoint_config") {
                let name = get(&e, "clusterName", "cluster_name")
                    .and_then(|n| n.as_str().map(str::to_string))
                    .unwrap_or_default();
                out.entry("endpoint").or_default().insert(name, e);
            }
        }
    }
    out
}

/// A resource name as a class (`outbound|N|S|H`, `IP_N`, `H:N`): differences that only
/// differ by it are one kind of difference.
pub fn name_class(name: &str) -> String {
    let parts: Vec<&str> = name.split('|').collect();
    if parts.len() == 4 && (parts[0] == "outbound" || parts[0] == "inbound") {
        return format!(
            "{}|N|{}|{}",
            parts[0],
            if parts[2].is_empty() { "" } else { "S" },
            if parts[3].is_empty() { "" } else { "H" }
        );
    }
    let re = |p: &str| regex::Regex::new(p).expect("static pattern");
    let n = re(r"\d+\.\d+\.\d+\.\d+").replace_all(name, "IP");
    let n = re(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.svc\.cluster\.local").replace_all(&n, "H");
    let n = re(r"\b[a-z0-9.-]+\.(com|org|io|net)\b").replace_all(&n, "H");
    re(r"\d+").replace_all(&n, "N").into_owned()
}

/// `path` with the names in brackets wildcarded (the resource always, chains, hosts,
/// endpoints), keeping extension and filter names and small indices; when the path ends
/// in an element present on one side only, that element keeps its name's class.
pub fn pattern(path: &str) -> String {
    let mut parts: Vec<(String, bool)> = Vec::new();
    let (mut depth, mut buf) = (0, String::new());
    for ch in path.chars() {
        match ch {
            '[' => {
                if depth == 0 {
                    parts.push((std::mem::take(&mut buf), false));
                } else {
                    buf.push(ch);
                }
                depth += 1;
            }
            ']' => {
                depth -= 1;
                if depth == 0 {
                    parts.push((std::mem::take(&mut buf), true));
                } else {
                    buf.push(ch);
                }
            }
            _ => buf.push(ch),
        }
    }
    if !buf.is_empty() {
        parts.push((buf, false));
    }
    let brackets = parts.iter().filter(|(_, b)| *b).count();
    let ends_in_bracket = parts.last().is_some_and(|(_, b)| *b);
    let keep = |t: &str| {
        (t.len() <= 2 && !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()))
            || t.starts_with("envoy.")
            || t.starts_with("istio")
            || t.starts_with("tlsMode-")
            || ["<order>", "DEFAULT", "HIGH", "default"].contains(&t)
    };
    let mut out = String::new();
    let mut seen = 0;
    for (text, bracket) in parts {
        if !bracket {
            out.push_str(&text);
            continue;
        }
        seen += 1;
        if seen == 1 {
            out.push_str("[*]");
        } else if seen == brackets && ends_in_bracket {
            out.push_str(&format!("[{}]", name_class(&text)));
        } else if keep(&text) {
            out.push_str(&format!("[{text}]"));
        } else {
            out.push_str("[*]");
        }
    }
    out
}
