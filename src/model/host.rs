//! Host names as Istio treats them: short names resolved against a namespace, wildcard
//! matching, and the `namespace/host` form of Sidecar egress hosts.

/// istiod's `ResolveShortnameToFQDN`: a name without dots is a Kubernetes short name
/// (`reviews` → `reviews.NS.svc.DOMAIN`); anything with a dot, `*`, or an IP is left alone.
pub fn resolve(host: &str, namespace: &str, domain_suffix: &str) -> String {
    if host.is_empty() || host == "*" || host.contains('.') || host.contains(':') {
        return host.to_string();
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return host.to_string();
    }
    format!("{host}.{namespace}.svc.{domain_suffix}")
}

/// Does `pattern` (which may be `*` or `*.suffix`) match the concrete or wildcard `host`?
/// Mirrors istio's `host.Name.Matches`: a wildcard pattern matches any host ending with
/// its suffix; a wildcard host is only matched by a pattern at least as wide.
pub fn matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match (pattern.strip_prefix('*'), host.strip_prefix('*')) {
        (None, None) => pattern.eq_ignore_ascii_case(host),
        (Some(psuffix), None) => ends_with_ignore_case(host, psuffix),
        (Some(psuffix), Some(hsuffix)) => ends_with_ignore_case(hsuffix, psuffix),
        (None, Some(_)) => false,
    }
}

/// Either side matches the other: used to find which VirtualServices concern a service.
pub fn intersects(a: &str, b: &str) -> bool {
    matches(a, b) || matches(b, a)
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// A Sidecar egress host: `namespace/host`, with `*` (any namespace), `.` (the Sidecar's
/// namespace) and `~` (no namespace).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NamespacedHost {
    pub namespace: String,
    pub host: String,
}

impl NamespacedHost {
    pub fn parse(s: &str, own_namespace: &str) -> Result<NamespacedHost, String> {
        let (ns, host) = s.split_once('/').ok_or_else(|| {
            format!("egress host {s:?} must be namespace/host (e.g. \"./*\" or \"istio-system/*\")")
        })?;
        if ns.is_empty() || host.is_empty() {
            return Err(format!("egress host {s:?} has an empty namespace or host"));
        }
        Ok(NamespacedHost {
            namespace: if ns == "." {
                own_namespace.to_string()
            } else {
                ns.to_string()
            },
            host: host.to_string(),
        })
    }

    /// Does this egress host select `host` defined in `namespace`?
    pub fn selects(&self, namespace: &str, host: &str) -> bool {
        if self.namespace == "~" {
            return false;
        }
        (self.namespace == "*" || self.namespace == namespace) && matches(&self.host, host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_like_istiod() {
        let cases = [
            ("reviews", "default", "reviews.default.svc.cluster.local"),
            ("reviews.default", "x", "reviews.default"),
            (
                "reviews.default.svc.cluster.local",
                "x",
                "reviews.default.svc.cluster.local",
            ),
            ("*", "x", "*"),
            ("*.example.com", "x", "*.example.com"),
            ("10.0.0.1", "x", "10.0.0.1"),
        ];
        for (h, ns, want) in cases {
            assert_eq!(resolve(h, ns, "cluster.local"), want);
        }
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches("*", "a.b"));
        assert!(matches("*.example.com", "api.example.com"));
        assert!(matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("*.com", "*.example.com"));
        assert!(!matches("*.example.com", "*.com"));
        assert!(!matches("api.example.com", "*.example.com"));
        assert!(intersects("api.example.com", "*.example.com"));
        assert!(matches("Reviews.Default", "reviews.default"));
    }

    #[test]
    fn egress_hosts() {
        let h = NamespacedHost::parse("./*", "bookinfo").expect("valid");
        assert!(h.selects("bookinfo", "reviews.bookinfo.svc.cluster.local"));
        assert!(!h.selects("other", "x.other.svc.cluster.local"));
        let h = NamespacedHost::parse("*/api.example.com", "a").expect("valid");
        assert!(h.selects("z", "api.example.com"));
        assert!(NamespacedHost::parse("reviews", "a").is_err());
    }
}
