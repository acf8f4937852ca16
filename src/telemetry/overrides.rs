//! Telemetry `metrics` overrides applied to one record: which families count it, and
//! with which labels (a tag removed, given a computed value, or added), as istio-proxy's
//! stats filter applies them to its own series.

use envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;

use super::series::{self, extra_label};
use crate::model::metric_tags::{TagValue, valid_label_name};
use crate::translate::peer::SideMetrics;

/// The HTTP families, by the Istio metric that names each.
pub const HTTP: [(&str, u8); 4] = [
    ("REQUEST_COUNT", series::REQUEST_COUNT),
    ("REQUEST_DURATION", series::REQUEST_DURATION),
    ("REQUEST_SIZE", series::REQUEST_SIZE),
    ("RESPONSE_SIZE", series::RESPONSE_SIZE),
];

/// The TCP families.
pub const TCP: [(&str, u8); 4] = [
    ("TCP_SENT_BYTES", series::TCP_SENT_BYTES),
    ("TCP_RECEIVED_BYTES", series::TCP_RECEIVED_BYTES),
    ("TCP_OPENED_CONNECTIONS", series::TCP_OPENED_CONNECTIONS),
    ("TCP_CLOSED_CONNECTIONS", series::TCP_CLOSED_CONNECTIONS),
];

/// The label sets to count a record under, each with the families it counts in:
/// `base` (values in `names` order) changed by each family's override; families an
/// override drops are in none.
pub fn apply(
    side: &SideMetrics,
    families: &[(&str, u8)],
    names: &[&str],
    base: Vec<String>,
    eval: impl Fn(&str, &TagValue) -> Option<String>,
) -> Vec<(Vec<String>, u8)> {
    if side.overrides.is_empty() {
        return vec![(base, series::ALL_FAMILIES)];
    }
    let mut groups: Vec<(Vec<String>, u8)> = Vec::new();
    for (metric, bit) in families {
        let over = side.overrides.iter().find(|o| o.name == *metric);
        if over.is_some_and(|o| o.disabled) {
            continue;
        }
        let mut labels = base.clone();
        for (tag, value) in over.map(|o| o.tags.as_slice()).unwrap_or_default() {
            let computed = value
                .as_deref()
                .and_then(TagValue::parse)
                .and_then(|v| eval(tag, &v));
            match (names.iter().position(|n| n == tag), value) {
                // Removed: an empty value is no label to Prometheus.
                (Some(i), None) => labels[i] = String::new(),
                (Some(i), Some(_)) => {
                    if let Some(v) = computed {
                        labels[i] = v;
                    }
                }
                // A new label, when its name can be one (validation reports the others).
                (None, Some(_)) if valid_label_name(tag) => {
                    if let Some(v) = computed {
                        labels.push(extra_label(tag, &v));
                    }
                }
                (None, _) => {}
            }
        }
        match groups.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, mask)) => *mask |= bit,
            None => groups.push((labels, *bit)),
        }
    }
    groups
}

/// A tag value from an HTTP record (None when the record does not carry it).
pub fn eval_http(v: &TagValue, e: &HttpAccessLogEntry) -> Option<String> {
    use envoy_types::pb::envoy::data::accesslog::v3::http_access_log_entry::HttpVersion;
    let req = e.request.as_ref();
    let resp = e.response.as_ref();
    Some(match v {
        TagValue::Literal(s) => s.clone(),
        TagValue::RequestHost => req?.authority.clone(),
        TagValue::RequestMethod => {
            envoy_types::pb::envoy::config::core::v3::RequestMethod::try_from(req?.request_method)
                .ok()?
                .as_str_name()
                .to_string()
        }
        TagValue::RequestPath => req?.path.clone(),
        TagValue::RequestUrlPath => req?.path.split('?').next().unwrap_or_default().to_string(),
        TagValue::RequestScheme => req?.scheme.clone(),
        TagValue::RequestUserAgent => req?.user_agent.clone(),
        TagValue::RequestProtocol => match HttpVersion::try_from(e.protocol_version).ok()? {
            HttpVersion::Http10 => "HTTP/1.0",
            HttpVersion::Http11 => "HTTP/1.1",
            HttpVersion::Http2 => "HTTP/2",
            HttpVersion::Http3 => "HTTP/3",
            HttpVersion::ProtocolUnspecified => return None,
        }
        .to_string(),
        TagValue::RequestHeader(h) => req?.request_headers.get(h)?.clone(),
        // Bounded as the response_code label is.
        TagValue::ResponseCode => match resp?.response_code.as_ref()?.value {
            c if c <= 599 => c.to_string(),
            _ => "unknown".to_string(),
        },
        TagValue::ResponseHeader(h) => resp?.response_headers.get(h)?.clone(),
    })
}

/// A tag value from a TCP record: only literals (a connection has no request).
pub fn eval_tcp(v: &TagValue) -> Option<String> {
    match v {
        TagValue::Literal(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::peer::MetricOverride;

    #[test]
    fn drops_removes_upserts_and_adds() {
        let side = SideMetrics {
            disabled: false,
            overrides: vec![
                MetricOverride {
                    name: "REQUEST_SIZE".into(),
                    disabled: true,
                    tags: vec![],
                },
                MetricOverride {
                    name: "REQUEST_COUNT".into(),
                    disabled: false,
                    tags: vec![
                        ("b".into(), None),
                        ("a".into(), Some("'x'".into())),
                        ("tenant".into(), Some("request.headers['x-tenant']".into())),
                        ("skipped".into(), Some("upstream_peer.name".into())),
                        ("bad-name".into(), Some("'x'".into())),
                    ],
                },
            ],
        };
        let groups = apply(
            &side,
            &HTTP,
            &["a", "b"],
            vec!["1".into(), "2".into()],
            |_, v| match v {
                TagValue::Literal(s) => Some(s.clone()),
                TagValue::RequestHeader(h) if h == "x-tenant" => Some("t1".into()),
                _ => None,
            },
        );
        assert_eq!(
            groups,
            vec![
                (
                    vec!["x".into(), String::new(), extra_label("tenant", "t1")],
                    series::REQUEST_COUNT
                ),
                (
                    vec!["1".into(), "2".into()],
                    series::REQUEST_DURATION | series::RESPONSE_SIZE
                ),
            ]
        );
    }
}
