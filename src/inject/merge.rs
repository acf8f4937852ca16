//! Kubernetes strategic merge patch on a Pod (what istiod applies each rendered template
//! with), and the normalisation that makes JSON look the way Go's typed Pod marshals:
//! canonical quantities, no empty optional lists or maps, `resources: {}` on every
//! container.

use serde_json::{Map, Value};

/// The merge key of a list at `path` (field names from the Pod, indices left out), or
/// None when the list is replaced. `Some("")` merges a list of scalars.
fn merge_key(path: &[&str]) -> Option<&'static str> {
    let containers = |p: &str| matches!(p, "containers" | "initContainers" | "ephemeralContainers");
    match path {
        ["metadata", "ownerReferences"] => Some("uid"),
        ["metadata", "finalizers"] => Some(""),
        ["spec", "volumes"] => Some("name"),
        ["spec", c] if containers(c) => Some("name"),
        ["spec", "imagePullSecrets"] => Some("name"),
        ["spec", "hostAliases"] => Some("ip"),
        ["spec", "topologySpreadConstraints"] => Some("topologyKey"),
        ["spec", "schedulingGates"] => Some("name"),
        ["spec", "resourceClaims"] => Some("name"),
        ["spec", c, "ports"] if containers(c) => Some("containerPort"),
        ["spec", c, "env"] if containers(c) => Some("name"),
        ["spec", c, "volumeMounts"] if containers(c) => Some("mountPath"),
        ["spec", c, "volumeDevices"] if containers(c) => Some("devicePath"),
        _ => None,
    }
}

fn discard_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| !v.is_null() && !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), discard_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(discard_nulls).collect()),
        other => other.clone(),
    }
}

/// Applies `patch` to `original` (both Pod-shaped JSON).
pub fn strategic_merge(original: &Value, patch: &Value) -> Value {
    merge_value(original, patch, &mut Vec::new())
}

fn merge_value<'a>(orig: &Value, patch: &'a Value, path: &mut Vec<&'a str>) -> Value {
    match (orig, patch) {
        (Value::Object(o), Value::Object(p)) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                return discard_nulls(patch);
            }
            let mut out = o.clone();
            for (k, pv) in p {
                if k.starts_with('$') {
                    continue;
                }
                if pv.is_null() {
                    out.remove(k);
                    continue;
                }
                path.push(k.as_str());
                let merged = match out.get(k) {
                    None | Some(Value::Null) => discard_nulls(pv),
                    Some(ov) => match (ov, pv) {
                        (Value::Object(_), Value::Object(_)) => merge_value(ov, pv, path),
                        (Value::Array(oa), Value::Array(pa)) => match merge_key(path) {
                            Some(key) => Value::Array(merge_list(oa, pa, key, path)),
                            None => discard_nulls(pv),
                        },
                        _ => discard_nulls(pv),
                    },
                };
                path.pop();
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        _ => discard_nulls(patch),
    }
}

fn merge_list<'a>(
    orig: &[Value],
    patch: &'a [Value],
    key: &str,
    path: &mut Vec<&'a str>,
) -> Vec<Value> {
    if orig.is_empty() && patch.is_empty() {
        return Vec::new();
    }
    if key.is_empty() {
        let mut out: Vec<Value> = orig.to_vec();
        for p in patch {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        return out;
    }
    let key_of = |v: &Value| v.get(key).cloned();
    // A `$patch: replace` element replaces the whole list with the other elements.
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .map(discard_nulls)
            .collect();
    }
    let mut merged: Vec<Value> = orig.to_vec();
    let mut patch_keys: Vec<Value> = Vec::new();
    for p in patch {
        let Some(k) = key_of(p) else {
            merged.push(p.clone());
            continue;
        };
        if p.get("$patch").and_then(Value::as_str) == Some("delete") {
            merged.retain(|m| key_of(m).as_ref() != Some(&k));
            continue;
        }
        patch_keys.push(k.clone());
        match merged.iter().position(|m| key_of(m).as_ref() == Some(&k)) {
            Some(i) => merged[i] = merge_value(&merged[i], p, path),
            None => merged.push(p.clone()),
        }
    }
    // The order Kubernetes gives: patch items in patch order, the server's own items in
    // their order, interleaved where both appear in the original.
    let orig_index = |v: &Value| {
        let k = key_of(v)?;
        orig.iter().position(|o| key_of(o).as_ref() == Some(&k))
    };
    let mut patch_items: Vec<Value> = Vec::new();
    for k in &patch_keys {
        if let Some(m) = merged.iter().find(|m| key_of(m).as_ref() == Some(k))
            && !patch_items.iter().any(|x| key_of(x).as_ref() == Some(k))
        {
            patch_items.push(m.clone());
        }
    }
    let server_only: Vec<Value> = merged
        .iter()
        .filter(|m| key_of(m).is_none_or(|k| !patch_keys.contains(&k)))
        .cloned()
        .collect();
    let mut out = Vec::with_capacity(merged.len());
    let (mut i, mut j) = (0, 0);
    while i < patch_items.len() && j < server_only.len() {
        let take_server = match (orig_index(&server_only[j]), orig_index(&patch_items[i])) {
            (Some(s), Some(p)) => s < p,
            _ => false,
        };
        if take_server {
            out.push(server_only[j].clone());
            j += 1;
        } else {
            out.push(patch_items[i].clone());
            i += 1;
        }
    }
    out.extend_from_slice(&patch_items[i..]);
    out.extend_from_slice(&server_only[j..]);
    out
}

// ---------------------------------------------------------------------------------------
// Go-typed normalisation
// ---------------------------------------------------------------------------------------

/// Object keys whose values are Go maps (omitted when empty); other objects are structs.
const MAPS: &[&str] = &[
    "labels",
    "annotations",
    "nodeSelector",
    "limits",
    "requests",
    "matchLabels",
    "data",
    "overhead",
    "claims",
];

/// Keys whose list or string members are Go strings (YAML scalars of other types are
/// turned into their text, as sigs.k8s.io/yaml does for string fields).
const STRING_LISTS: &[&str] = &["args", "command", "add", "drop", "finalizers"];

/// Makes a Pod (metadata + spec) look as Go marshals a typed Pod.
pub fn normalize_pod(pod: &Value) -> Value {
    let mut v = normalize(pod, "", &mut Vec::new());
    if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
        for list in ["containers", "initContainers", "ephemeralContainers"] {
            if let Some(Value::Array(cs)) = spec.get_mut(list) {
                for c in cs {
                    if let Some(o) = c.as_object_mut() {
                        o.entry("resources").or_insert(Value::Object(Map::new()));
                    }
                }
            }
        }
        // `containers` has no omitempty.
        spec.entry("containers").or_insert(Value::Null);
    }
    if let Some(o) = v.as_object_mut() {
        o.entry("metadata").or_insert(Value::Object(Map::new()));
        o.entry("spec").or_insert(Value::Object(Map::new()));
    }
    v
}

fn normalize(v: &Value, key: &str, path: &mut Vec<String>) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                if x.is_null() || k == "creationTimestamp" && path.len() <= 3 {
                    continue;
                }
                path.push(k.clone());
                let n = normalize(x, k, path);
                path.pop();
                let empty_optional = match &n {
                    Value::Array(a) => a.is_empty(),
                    Value::Object(o) => o.is_empty() && MAPS.contains(&k.as_str()),
                    Value::String(s) => s.is_empty() && !REQUIRED_STRINGS.contains(&k.as_str()),
                    Value::Number(num) => {
                        num.as_f64() == Some(0.0) && OMITEMPTY_NUMBERS.contains(&k.as_str())
                    }
                    Value::Bool(b) => !b && OMITEMPTY_BOOLS.contains(&k.as_str()),
                    _ => false,
                };
                if empty_optional {
                    continue;
                }
                out.insert(k.clone(), n);
            }
            // Go always writes these.
            if key == "resourceFieldRef" {
                out.entry("divisor").or_insert(Value::from("0"));
            }
            if key == "grpc" {
                out.entry("service").or_insert(Value::Null);
            }
            if (key == "httpGet" || key == "tcpSocket") && !out.contains_key("port") {
                out.insert("port".into(), Value::from(0));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| {
                    let n = normalize(x, key, path);
                    if STRING_LISTS.contains(&key) {
                        scalar_text(&n)
                    } else {
                        n
                    }
                })
                .collect(),
        ),
        Value::String(s) if is_quantity_path(path) => {
            Value::String(canonical_quantity(s).unwrap_or_else(|| s.clone()))
        }
        Value::Number(_) | Value::Bool(_) if is_quantity_path(path) => Value::String(
            canonical_quantity(scalar_text(v).as_str().unwrap_or_default()).unwrap_or_default(),
        ),
        Value::Number(_) | Value::Bool(_) if string_valued(path) => scalar_text(v),
        other => other.clone(),
    }
}

/// String fields that Go writes even when empty (no omitempty).
const REQUIRED_STRINGS: &[&str] = &[
    "name",
    "path",
    "fieldPath",
    "mountPath",
    "key",
    "serviceName",
    "type",
    "resource",
];
const OMITEMPTY_NUMBERS: &[&str] = &[
    "initialDelaySeconds",
    "periodSeconds",
    "timeoutSeconds",
    "successThreshold",
    "failureThreshold",
    "hostPort",
];
const OMITEMPTY_BOOLS: &[&str] = &[
    "readOnly",
    "stdin",
    "stdinOnce",
    "tty",
    "hostNetwork",
    "hostPID",
    "hostIPC",
];

fn scalar_text(v: &Value) -> Value {
    match v {
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Number(n) => Value::String(match n.as_f64() {
            Some(f) if n.is_f64() => crate::yaml_out::go_float(f),
            _ => n.to_string(),
        }),
        other => other.clone(),
    }
}

/// Whether a scalar at `path` is a Go string (a label or annotation value, an env value).
fn string_valued(path: &[String]) -> bool {
    let n = path.len();
    if n >= 2
        && matches!(
            path[n - 2].as_str(),
            "labels" | "annotations" | "nodeSelector"
        )
    {
        return true;
    }
    n >= 1
        && matches!(
            path[n - 1].as_str(),
            "value" | "image" | "name" | "serviceAccountName"
        )
}

fn is_quantity_path(path: &[String]) -> bool {
    let n = path.len();
    (n >= 2 && matches!(path[n - 2].as_str(), "limits" | "requests" | "overhead"))
        || (n >= 1 && matches!(path[n - 1].as_str(), "divisor" | "sizeLimit"))
}

/// resource.Quantity's canonical text (`2000m` → `2`, `1024Mi` → `1Gi`).
pub fn canonical_quantity(s: &str) -> Option<String> {
    let s = s.trim();
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let (neg, num) = match num.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, num.strip_prefix('+').unwrap_or(num)),
    };
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let digits = format!("{int_part}{frac_part}");
    let mantissa: i128 = digits.parse().ok()?;
    let mut exp10: i32 = -(frac_part.len() as i32);
    let mut pow1024: u32 = 0;
    let binary = match suffix {
        "Ki" => {
            pow1024 = 1;
            true
        }
        "Mi" => {
            pow1024 = 2;
            true
        }
        "Gi" => {
            pow1024 = 3;
            true
        }
        "Ti" => {
            pow1024 = 4;
            true
        }
        "Pi" => {
            pow1024 = 5;
            true
        }
        "Ei" => {
            pow1024 = 6;
            true
        }
        "n" => {
            exp10 -= 9;
            false
        }
        "u" => {
            exp10 -= 6;
            false
        }
        "m" => {
            exp10 -= 3;
            false
        }
        "" => false,
        "k" => {
            exp10 += 3;
            false
        }
        "M" => {
            exp10 += 6;
            false
        }
        "G" => {
            exp10 += 9;
            false
        }
        "T" => {
            exp10 += 12;
            false
        }
        "P" => {
            exp10 += 15;
            false
        }
        "E" => {
            exp10 += 18;
            false
        }
        e if e.starts_with(['e', 'E']) => {
            exp10 += e[1..].parse::<i32>().ok()?;
            false
        }
        _ => return None,
    };
    let exponent_form = suffix.starts_with(['e', 'E']);
    // The value in nano units (rounded up, as Quantity does below nano).
    let mut value: i128 = mantissa * 1024i128.checked_pow(pow1024)?;
    let shift = exp10 + 9;
    if shift >= 0 {
        value = value.checked_mul(10i128.checked_pow(shift as u32)?)?;
    } else {
        let d = 10i128.checked_pow((-shift) as u32)?;
        value = (value + d - 1) / d;
    }
    if value == 0 {
        return Some("0".into());
    }
    let sign = if neg { "-" } else { "" };
    let nano = 1_000_000_000i128;
    if binary && value % nano == 0 {
        let whole = value / nano;
        if whole >= 1024 {
            let mut k = 0;
            let mut m = whole;
            while m % 1024 == 0 && k < 6 {
                m /= 1024;
                k += 1;
            }
            let suf = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][k];
            return Some(format!("{sign}{m}{suf}"));
        }
    }
    // Decimal: the largest power of 1000 that keeps the mantissa whole.
    let mut e3 = -9i32;
    let mut m = value;
    while m % 1000 == 0 && e3 < 18 {
        m /= 1000;
        e3 += 3;
    }
    if exponent_form {
        return Some(if e3 == 0 {
            format!("{sign}{m}")
        } else {
            format!("{sign}{m}e{e3}")
        });
    }
    let suf = match e3 {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        _ => "E",
    };
    Some(format!("{sign}{m}{suf}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities() {
        for (i, o) in [
            ("2000m", "2"),
            ("100m", "100m"),
            ("1024Mi", "1Gi"),
            ("128Mi", "128Mi"),
            ("1536Mi", "1536Mi"),
            ("1500m", "1500m"),
            ("0.5", "500m"),
            ("1", "1"),
            ("0", "0"),
            ("3000m", "3"),
            ("1000m", "1"),
            ("1k", "1k"),
            ("1000", "1k"),
            ("512", "512"),
        ] {
            assert_eq!(canonical_quantity(i).as_deref(), Some(o), "{i}");
        }
    }

    #[test]
    fn merges_containers_by_name_with_kubernetes_order() {
        let orig = json!({"spec": {"containers": [{"name": "hello", "image": "a"}], "volumes": [{"name": "certs"}]}});
        let patch = json!({"spec": {
            "containers": [{"name": "istio-proxy", "image": "proxy", "env": [{"name": "A", "value": "1"}]}],
            "volumes": [{"name": "v1"}, {"name": "v2"}],
        }});
        let out = strategic_merge(&orig, &patch);
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect::<Vec<_>>();
        assert_eq!(names, ["istio-proxy", "hello"]);
        let vols: Vec<&str> = out["spec"]["volumes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(vols, ["v1", "v2", "certs"]);
        // Merging into an existing container keeps its fields and merges env by name.
        let again = strategic_merge(
            &out,
            &json!({"spec": {"containers": [{"name": "istio-proxy", "env": [{"name": "B", "value": "2"}], "args": ["x"]}]}}),
        );
        let proxy = &again["spec"]["containers"][0];
        assert_eq!(proxy["image"], "proxy");
        assert_eq!(proxy["env"].as_array().map(Vec::len), Some(2));
        assert_eq!(proxy["args"], json!(["x"]));
    }
}
