//! The values a Telemetry `tagOverrides` entry may give a metric label, as far as meshd
//! computes them itself (for upstream Envoy, whose requests meshd counts from access
//! log records). istio-proxy evaluates any CEL expression in its stats filter; meshd
//! understands the forms users write for request attributes: a string literal, a
//! request or response attribute, or one of their headers. Anything else is reported
//! when the Telemetry is read and leaves the label as it was.

/// An expression meshd evaluates against a request's access log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagValue {
    Literal(String),
    RequestHost,
    RequestMethod,
    RequestPath,
    RequestUrlPath,
    RequestScheme,
    RequestUserAgent,
    RequestProtocol,
    /// A request header (lower case).
    RequestHeader(String),
    ResponseCode,
    /// A response header (lower case).
    ResponseHeader(String),
}

fn quoted(s: &str) -> Option<&str> {
    let s = s.trim();
    for q in ['\'', '"'] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q))
            && !inner.contains(q)
        {
            return Some(inner);
        }
    }
    None
}

fn header(s: &str, prefix: &str) -> Option<String> {
    let rest = s
        .strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    quoted(rest).map(str::to_ascii_lowercase)
}

impl TagValue {
    /// The expression, when meshd can compute it.
    pub fn parse(expr: &str) -> Option<TagValue> {
        let e = expr.trim();
        if let Some(l) = quoted(e) {
            return Some(TagValue::Literal(l.to_string()));
        }
        Some(match e {
            "request.host" => TagValue::RequestHost,
            "request.method" => TagValue::RequestMethod,
            "request.path" => TagValue::RequestPath,
            "request.url_path" => TagValue::RequestUrlPath,
            "request.scheme" => TagValue::RequestScheme,
            "request.useragent" => TagValue::RequestUserAgent,
            "request.protocol" => TagValue::RequestProtocol,
            "response.code" => TagValue::ResponseCode,
            _ => {
                if let Some(h) = header(e, "request.headers") {
                    TagValue::RequestHeader(h)
                } else {
                    TagValue::ResponseHeader(header(e, "response.headers")?)
                }
            }
        })
    }
}

/// Whether `name` can be a label meshd adds to its series: a Prometheus label name, not
/// reserved (`__…`) and not the histograms' `le`.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
        && name != "le"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names() {
        for ok in ["tenant", "_x", "request_host2"] {
            assert!(valid_label_name(ok), "{ok}");
        }
        for bad in ["", "2x", "a-b", "a.b", "__name__", "le"] {
            assert!(!valid_label_name(bad), "{bad}");
        }
    }

    #[test]
    fn forms_users_write() {
        assert_eq!(
            TagValue::parse("'v1'"),
            Some(TagValue::Literal("v1".into()))
        );
        assert_eq!(
            TagValue::parse(" \"x y\" "),
            Some(TagValue::Literal("x y".into()))
        );
        assert_eq!(TagValue::parse("request.host"), Some(TagValue::RequestHost));
        assert_eq!(
            TagValue::parse("request.headers['X-Tenant']"),
            Some(TagValue::RequestHeader("x-tenant".into()))
        );
        assert_eq!(
            TagValue::parse("response.headers[\"server\"]"),
            Some(TagValue::ResponseHeader("server".into()))
        );
        for unknown in [
            "upstream_peer.labels['app']",
            "request.headers[x]",
            "'a' + 'b'",
            "has(request.host) ? request.host : 'none'",
        ] {
            assert_eq!(TagValue::parse(unknown), None, "{unknown}");
        }
    }
}
