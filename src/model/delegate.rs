//! VirtualService delegation: an HTTP route of a root VirtualService (one with hosts) that
//! says `delegate: {name, namespace}` is replaced by the HTTP routes of that delegate
//! VirtualService (one without hosts), each merged with the root route as istiod merges
//! them: the delegate's matches must narrow the root's (a delegate match that conflicts
//! with every root match drops that route), and what the delegate route leaves unset
//! (rewrite, timeout, retries, fault, mirrors, CORS, headers) comes from the root route.

use super::host;
use super::istio::{HttpMatchRequest, HttpRoute, StringMatch};

/// Whether a delegate string match cannot be a narrowing of the root's.
fn string_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    if root.regex.is_some() {
        return leaf.regex.is_some() || leaf.prefix.is_some() || leaf.exact.is_some();
    }
    if leaf.regex.is_some() {
        return root.prefix.is_some() || root.exact.is_some();
    }
    if let Some(exact) = &root.exact {
        return leaf.prefix.is_some() || leaf.exact.as_ref() != Some(exact);
    }
    if let Some(prefix) = &root.prefix {
        if let Some(p) = &leaf.prefix {
            return !p.starts_with(prefix.as_str());
        }
        if let Some(e) = &leaf.exact {
            return !e.starts_with(prefix.as_str());
        }
    }
    true
}

fn conflict(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs
        .iter()
        .any(|(r, l)| string_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    let maps = [
        (&root.headers, &leaf.headers),
        (&root.without_headers, &leaf.without_headers),
        (&root.query_params, &leaf.query_params),
    ];
    for (r, l) in maps {
        if l.iter().any(|(k, v)| string_conflict(r.get(k), Some(v))) {
            return true;
        }
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    if let (Some(a), Some(b)) = (root.port, leaf.port)
        && a != b
    {
        return true;
    }
    if !root.source_namespace.is_empty() && leaf.source_namespace != root.source_namespace {
        return true;
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|r| r != v))
    {
        return true;
    }
    if !root.gateways.is_empty()
        && !leaf.gateways.is_empty()
        && leaf.gateways.iter().any(|g| !root.gateways.contains(g))
    {
        return true;
    }
    false
}

fn joined(root: &str, leaf: &str) -> String {
    match (root.is_empty(), leaf.is_empty()) {
        (_, true) => root.to_string(),
        (true, false) => leaf.to_string(),
        (false, false) => format!("{root}-{leaf}"),
    }
}

fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    out.name = joined(&root.name, &leaf.name);
    out.uri = out.uri.or_else(|| root.uri.clone());
    out.scheme = out.scheme.or_else(|| root.scheme.clone());
    out.method = out.method.or_else(|| root.method.clone());
    out.authority = out.authority.or_else(|| root.authority.clone());
    let mut headers = root.headers.clone();
    headers.extend(leaf.headers.clone());
    out.headers = headers;
    let mut without = root.without_headers.clone();
    without.extend(leaf.without_headers.clone());
    out.without_headers = without;
    let mut query = root.query_params.clone();
    query.extend(leaf.query_params.clone());
    out.query_params = query;
    out.port = out.port.or(root.port);
    let mut labels = root.source_labels.clone();
    labels.extend(leaf.source_labels.clone());
    out.source_labels = labels;
    if out.source_namespace.is_empty() {
        out.source_namespace = root.source_namespace.clone();
    }
    if out.gateways.is_empty() {
        out.gateways = root.gateways.clone();
    }
    if out.stat_prefix.is_empty() {
        out.stat_prefix = root.stat_prefix.clone();
    }
    out
}

/// The matches of a merged route; None when the delegate route conflicts with the root.
fn merge_matches(
    root: &[HttpMatchRequest],
    leaf: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(leaf.to_vec());
    }
    if leaf.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for l in leaf {
        let before = out.len();
        out.extend(
            root.iter()
                .filter(|r| !conflict(r, l))
                .map(|r| merge_match(r, l)),
        );
        if out.len() == before {
            return None;
        }
    }
    Some(out)
}

/// One delegate route under a root route; None when their matches conflict.
/// `delegate_ns` resolves the delegate's short host names, as in its own namespace.
pub fn merge_route(
    root: &HttpRoute,
    leaf: &HttpRoute,
    delegate_ns: &str,
    domain: &str,
) -> Option<HttpRoute> {
    let mut out = leaf.clone();
    out.matches = merge_matches(&root.matches, &leaf.matches)?;
    out.name = joined(&root.name, &leaf.name);
    out.delegate = None;
    for d in &mut out.route {
        d.destination.host = host::resolve(&d.destination.host, delegate_ns, domain);
    }
    if let Some(m) = &mut out.mirror {
        m.host = host::resolve(&m.host, delegate_ns, domain);
    }
    for m in &mut out.mirrors {
        m.destination.host = host::resolve(&m.destination.host, delegate_ns, domain);
    }
    out.rewrite = out.rewrite.or_else(|| root.rewrite.clone());
    out.direct_response = out.direct_response.or_else(|| root.direct_response.clone());
    out.timeout = out.timeout.or(root.timeout);
    out.retries = out.retries.or_else(|| root.retries.clone());
    out.fault = out.fault.or_else(|| root.fault.clone());
    if out.mirror.is_none() {
        out.mirror = root.mirror.clone();
    }
    out.mirror_percent = out.mirror_percent.or(root.mirror_percent);
    out.mirror_percentage = out
        .mirror_percentage
        .or_else(|| root.mirror_percentage.clone());
    out.cors_policy = out.cors_policy.or_else(|| root.cors_policy.clone());
    if out.mirrors.is_empty() {
        out.mirrors = root.mirrors.clone();
    }
    out.headers = out.headers.or_else(|| root.headers.clone());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(kind: &str, v: &str) -> Option<StringMatch> {
        let mut m = StringMatch::default();
        match kind {
            "exact" => m.exact = Some(v.into()),
            "prefix" => m.prefix = Some(v.into()),
            _ => m.regex = Some(v.into()),
        }
        Some(m)
    }

    fn with_uri(kind: &str, v: &str) -> HttpMatchRequest {
        HttpMatchRequest {
            uri: uri(kind, v),
            ..Default::default()
        }
    }

    #[test]
    fn delegate_matches_must_narrow_the_root() {
        let root = [with_uri("prefix", "/api")];
        let narrower = [with_uri("prefix", "/api/v1")];
        let merged = merge_matches(&root, &narrower).expect("narrower is fine");
        assert_eq!(merged[0].uri, uri("prefix", "/api/v1"));
        assert!(merge_matches(&root, &[with_uri("prefix", "/other")]).is_none());
        assert!(merge_matches(&root, &[with_uri("regex", "/api.*")]).is_none());
        assert!(merge_matches(&[with_uri("exact", "/a")], &[with_uri("exact", "/a")]).is_some());
        // An unset side takes the other's.
        assert_eq!(
            merge_matches(&root, &[]).expect("root")[0].uri,
            uri("prefix", "/api")
        );
        // Headers add up.
        let mut h = HttpMatchRequest::default();
        h.headers
            .insert("end-user".into(), uri("exact", "jason").expect("m"));
        let merged = merge_matches(&root, &[h]).expect("merged");
        assert_eq!(merged[0].uri, uri("prefix", "/api"));
        assert!(merged[0].headers.contains_key("end-user"));
    }
}
