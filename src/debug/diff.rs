//! What changed in one proxy's configuration between two snapshots: resources added,
//! removed and changed, and for a changed one the fields that differ, so a person sees
//! "the reviews route's weights went from 100/0 to 50/50" rather than two dumps.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::envoy::pb;
use crate::translate::Resources;

/// At most this many differing fields are listed per resource: a listener rebuilt from
/// scratch would otherwise list thousands. The count of the rest is given.
const MAX_FIELDS: usize = 40;

/// Values longer than this (in JSON) are cut: the path says where, the tree shows all.
const MAX_VALUE: usize = 300;

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

#[derive(Debug, Serialize)]
pub struct Field {
    /// Dotted path in the resource's JSON; list elements with a `name` are named
    /// (`virtualHosts[reviews.default.svc.cluster.local:9080]`), others numbered.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct ResourceChange {
    /// `cluster`, `listener`, `route` or `endpoint`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub change: Change,
    pub fields: Vec<Field>,
    /// Differing fields beyond those listed.
    #[serde(skip_serializing_if = "is_zero")]
    pub more: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Each resource of `res` as JSON, by (type, name), tracer credentials redacted.
fn by_name(res: &Resources) -> BTreeMap<(&'static str, String), Value> {
    let mut out = by_name_raw(res);
    out.values_mut().for_each(super::redact_tracer_secrets);
    out
}

fn by_name_raw(res: &Resources) -> BTreeMap<(&'static str, String), Value> {
    let mut out = BTreeMap::new();
    for c in &res.clusters {
        out.insert(("cluster", c.name.clone()), pb::any_to_json(&pb::any(c)));
    }
    for l in &res.listeners {
        out.insert(("listener", l.name.clone()), pb::any_to_json(&pb::any(l)));
    }
    for r in &res.routes {
        out.insert(("route", r.name.clone()), pb::any_to_json(&pb::any(r)));
    }
    for e in &res.endpoints {
        out.insert(
            ("endpoint", e.cluster_name.clone()),
            pb::any_to_json(&pb::any(e)),
        );
    }
    out
}

/// The changes from `before` to `after`, in type then name order.
pub fn diff(before: &Resources, after: &Resources) -> Vec<ResourceChange> {
    let old = by_name(before);
    let new = by_name(after);
    let mut out = Vec::new();
    for ((kind, name), v) in &old {
        match new.get(&(*kind, name.clone())) {
            None => out.push(ResourceChange {
                kind,
                name: name.clone(),
                change: Change::Removed,
                fields: Vec::new(),
                more: 0,
            }),
            Some(n) if n != v => {
                let mut fields = Vec::new();
                walk(String::new(), Some(v), Some(n), &mut fields);
                let more = fields.len().saturating_sub(MAX_FIELDS);
                fields.truncate(MAX_FIELDS);
                out.push(ResourceChange {
                    kind,
                    name: name.clone(),
                    change: Change::Changed,
                    fields,
                    more,
                });
            }
            Some(_) => {}
        }
    }
    for (kind, name) in new.keys() {
        if !old.contains_key(&(*kind, name.clone())) {
            out.push(ResourceChange {
                kind,
                name: name.clone(),
                change: Change::Added,
                fields: Vec::new(),
                more: 0,
            });
        }
    }
    out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    out
}

fn cut(v: &Value) -> Value {
    let s = v.to_string();
    if s.len() <= MAX_VALUE {
        return v.clone();
    }
    let mut end = MAX_VALUE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Value::String(format!("{}…", &s[..end]))
}

/// The name a list element is known by, when every element of both lists has a
/// distinct one: then reordering or inserting shows as what it is, not as every later
/// index changing.
fn names(list: &[Value]) -> Option<Vec<String>> {
    let names: Vec<String> = list
        .iter()
        .map(|e| e.get("name").and_then(Value::as_str).map(str::to_string))
        .collect::<Option<_>>()?;
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    (sorted.len() == names.len()).then_some(names)
}

fn walk(path: String, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<Field>) {
    if out.len() > MAX_FIELDS * 4 {
        // Enough to count "more"; the rest is not worth the walk.
        return;
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                if x.get(k) != y.get(k) {
                    walk(join(k), x.get(k), y.get(k), out);
                }
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => match (names(x), names(y)) {
            (Some(nx), Some(ny)) => {
                let mut all: Vec<&String> = nx.iter().collect();
                all.extend(ny.iter().filter(|n| !nx.contains(n)));
                for n in all {
                    let ea = nx.iter().position(|m| m == n).map(|i| &x[i]);
                    let eb = ny.iter().position(|m| m == n).map(|i| &y[i]);
                    if ea != eb {
                        walk(format!("{path}[{n}]"), ea, eb, out);
                    }
                }
            }
            _ => {
                for i in 0..x.len().max(y.len()) {
                    if x.get(i) != y.get(i) {
                        walk(format!("{path}[{i}]"), x.get(i), y.get(i), out);
                    }
                }
            }
        },
        _ => out.push(Field {
            path,
            before: a.map(cut),
            after: b.map(cut),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(a: Value, b: Value) -> Vec<(String, Option<Value>, Option<Value>)> {
        let mut out = Vec::new();
        walk(String::new(), Some(&a), Some(&b), &mut out);
        out.into_iter()
            .map(|f| (f.path, f.before, f.after))
            .collect()
    }

    #[test]
    fn a_weight_change_is_one_field_under_named_elements() {
        let a = json!({"virtualHosts": [
            {"name": "a", "routes": [{"name": "r", "weights": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}]}]},
            {"name": "b"}]});
        let b = json!({"virtualHosts": [
            {"name": "b"},
            {"name": "a", "routes": [{"name": "r", "weights": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}]}]}]});
        assert_eq!(
            fields(a, b),
            vec![
                (
                    "virtualHosts[a].routes[r].weights[v1].weight".into(),
                    Some(json!(100)),
                    Some(json!(50))
                ),
                (
                    "virtualHosts[a].routes[r].weights[v2].weight".into(),
                    Some(json!(0)),
                    Some(json!(50))
                ),
            ]
        );
    }

    #[test]
    fn unnamed_elements_by_index_and_absent_sides_omitted() {
        let f = fields(json!({"d": ["x"], "gone": 1}), json!({"d": ["x", "y"]}));
        assert_eq!(
            f,
            vec![
                ("d[1]".into(), None, Some(json!("y"))),
                ("gone".into(), Some(json!(1)), None),
            ]
        );
    }

    #[test]
    fn tracer_header_values_are_redacted() {
        let mut v = json!({"tracing": {"provider": {"typedConfig": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
            "httpService": {"requestHeadersToAdd": [{"header": {"key": "x-api-key", "value": "s3cret"}}]},
            "grpcService": {"initialMetadata": [{"key": "authorization", "value": "Bearer t"}]}}}},
            "routes": [{"requestHeadersToAdd": [{"header": {"key": "x-kept", "value": "shown"}}]}]});
        super::super::redact_tracer_secrets(&mut v);
        let text = v.to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("Bearer t"),
            "{text}"
        );
        assert!(
            text.contains("x-api-key") && text.contains("shown"),
            "{text}"
        );
    }

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(1000);
        let f = fields(json!({"a": long}), json!({"a": 1}));
        let before = f[0].1.as_ref().and_then(Value::as_str).unwrap_or_default();
        assert!(before.len() < 400 && before.ends_with('…'), "{before}");
    }
}
