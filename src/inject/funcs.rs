//! The functions injection templates call: the sprig functions Istio's templates use (and
//! the common ones custom templates reach for), then Istio's own, which win on a name
//! clash as in istiod (`indent`, `contains`, `toYaml`, …).

use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::Value;

use super::gotmpl::{Funcs, TVal, equal, go_quote, go_sprint};

fn arg(a: &[TVal], i: usize) -> TVal {
    a.get(i).cloned().unwrap_or(TVal::Nil)
}

fn s(v: &TVal) -> String {
    match v {
        TVal::Nil => String::new(),
        other => other.print(),
    }
}

fn int(v: &TVal) -> i64 {
    match v {
        TVal::Int(i) => *i,
        TVal::Float(f) => *f as i64,
        TVal::Str(x) => x.trim().parse().unwrap_or(0),
        TVal::Bool(b) => i64::from(*b),
        _ => 0,
    }
}

fn list(items: Vec<TVal>) -> TVal {
    TVal::List(Rc::new(items))
}

fn to_map(v: &TVal) -> BTreeMap<String, TVal> {
    v.entries().unwrap_or_default().into_iter().collect()
}

/// Go's `encoding/json` text of a JSON value: keys sorted (Go maps), `<`, `>`, `&`
/// escaped as Go does.
pub fn go_json(v: &Value) -> String {
    let raw = serde_json::to_string(v).unwrap_or_default();
    go_escape(&raw)
}

/// Go's HTML-safe escaping of an already-encoded JSON text.
pub fn go_escape(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// Every function: sprig's first, Istio's over them.
pub fn all() -> Funcs {
    let mut f: Funcs = BTreeMap::new();
    // --- sprig ---
    f.insert("default", |a| {
        // `x | default d`: the piped value is last.
        let d = arg(a, 0);
        match a.get(1) {
            Some(v) if !v.is_empty() => Ok(v.clone()),
            _ => Ok(d),
        }
    });
    f.insert("empty", |a| Ok(TVal::Bool(arg(a, 0).is_empty())));
    f.insert("coalesce", |a| {
        Ok(a.iter()
            .find(|v| !v.is_empty())
            .cloned()
            .unwrap_or(TVal::Nil))
    });
    f.insert("ternary", |a| {
        Ok(if arg(a, 2).truthy() {
            arg(a, 0)
        } else {
            arg(a, 1)
        })
    });
    f.insert("quote", |a| {
        Ok(TVal::Str(
            a.iter()
                .filter(|v| !matches!(v, TVal::Nil))
                .map(|v| go_quote(&v.print()))
                .collect::<Vec<_>>()
                .join(" "),
        ))
    });
    f.insert("squote", |a| {
        Ok(TVal::Str(
            a.iter()
                .filter(|v| !matches!(v, TVal::Nil))
                .map(|v| format!("'{}'", v.print()))
                .collect::<Vec<_>>()
                .join(" "),
        ))
    });
    f.insert("trim", |a| Ok(TVal::Str(s(&arg(a, 0)).trim().to_string())));
    f.insert("trimAll", |a| {
        let cut: Vec<char> = s(&arg(a, 0)).chars().collect();
        Ok(TVal::Str(
            s(&arg(a, 1)).trim_matches(|c| cut.contains(&c)).to_string(),
        ))
    });
    f.insert("trimPrefix", |a| {
        let p = s(&arg(a, 0));
        let v = s(&arg(a, 1));
        Ok(TVal::Str(v.strip_prefix(&p).unwrap_or(&v).to_string()))
    });
    f.insert("trimSuffix", |a| {
        let p = s(&arg(a, 0));
        let v = s(&arg(a, 1));
        Ok(TVal::Str(v.strip_suffix(&p).unwrap_or(&v).to_string()))
    });
    f.insert("trunc", |a| {
        let n = int(&arg(a, 0));
        let v = s(&arg(a, 1));
        let b = v.as_bytes();
        let out = if n >= 0 {
            &b[..(n as usize).min(b.len())]
        } else {
            &b[b.len().saturating_sub((-n) as usize)..]
        };
        Ok(TVal::Str(String::from_utf8_lossy(out).into_owned()))
    });
    f.insert("upper", |a| Ok(TVal::Str(s(&arg(a, 0)).to_uppercase())));
    f.insert("lower", |a| Ok(TVal::Str(s(&arg(a, 0)).to_lowercase())));
    f.insert("title", |a| {
        let v = s(&arg(a, 0));
        let mut out = String::new();
        let mut start = true;
        for c in v.chars() {
            if start && c.is_alphabetic() {
                out.extend(c.to_uppercase());
            } else {
                out.push(c);
            }
            start = c.is_whitespace();
        }
        Ok(TVal::Str(out))
    });
    f.insert("replace", |a| {
        Ok(TVal::Str(
            s(&arg(a, 2)).replace(&s(&arg(a, 0)), &s(&arg(a, 1))),
        ))
    });
    f.insert("repeat", |a| {
        Ok(TVal::Str(
            s(&arg(a, 1)).repeat(int(&arg(a, 0)).max(0) as usize),
        ))
    });
    f.insert("hasPrefix", |a| {
        Ok(TVal::Bool(s(&arg(a, 1)).starts_with(&s(&arg(a, 0)))))
    });
    f.insert("hasSuffix", |a| {
        Ok(TVal::Bool(s(&arg(a, 1)).ends_with(&s(&arg(a, 0)))))
    });
    f.insert("splitList", |a| {
        let sep = s(&arg(a, 0));
        let v = s(&arg(a, 1));
        Ok(list(v.split(sep.as_str()).map(TVal::str).collect()))
    });
    f.insert("join", |a| {
        let sep = s(&arg(a, 0));
        let items = arg(a, 1).items().unwrap_or_default();
        Ok(TVal::Str(
            items.iter().map(s).collect::<Vec<_>>().join(&sep),
        ))
    });
    f.insert("list", |a| Ok(list(a.to_vec())));
    f.insert("append", |a| {
        let mut items = arg(a, 0).items().unwrap_or_default();
        items.push(arg(a, 1));
        Ok(list(items))
    });
    f.insert("prepend", |a| {
        let mut items = arg(a, 0).items().unwrap_or_default();
        items.insert(0, arg(a, 1));
        Ok(list(items))
    });
    f.insert("first", |a| {
        Ok(arg(a, 0)
            .items()
            .and_then(|i| i.first().cloned())
            .unwrap_or(TVal::Nil))
    });
    f.insert("last", |a| {
        Ok(arg(a, 0)
            .items()
            .and_then(|i| i.last().cloned())
            .unwrap_or(TVal::Nil))
    });
    f.insert("has", |a| {
        let needle = arg(a, 0);
        Ok(TVal::Bool(
            arg(a, 1)
                .items()
                .unwrap_or_default()
                .iter()
                .any(|x| equal(x, &needle)),
        ))
    });
    f.insert("uniq", |a| {
        let mut out: Vec<TVal> = Vec::new();
        for x in arg(a, 0).items().unwrap_or_default() {
            if !out.iter().any(|y| equal(y, &x)) {
                out.push(x);
            }
        }
        Ok(list(out))
    });
    f.insert("dict", |a| {
        let mut m = BTreeMap::new();
        for pair in a.chunks(2) {
            m.insert(
                s(&pair[0]),
                pair.get(1).cloned().unwrap_or(TVal::Str(String::new())),
            );
        }
        Ok(TVal::Map(Rc::new(m)))
    });
    f.insert("get", |a| {
        let key = s(&arg(a, 1));
        Ok(to_map(&arg(a, 0))
            .remove(&key)
            .unwrap_or(TVal::Str(String::new())))
    });
    f.insert("hasKey", |a| {
        let key = s(&arg(a, 1));
        Ok(TVal::Bool(to_map(&arg(a, 0)).contains_key(&key)))
    });
    f.insert("keys", |a| {
        let mut keys: Vec<TVal> = Vec::new();
        for m in a {
            keys.extend(to_map(m).into_keys().map(TVal::Str));
        }
        Ok(list(keys))
    });
    f.insert("toString", |a| Ok(TVal::Str(s(&arg(a, 0)))));
    f.insert("toJson", |a| Ok(TVal::Str(go_json(&arg(a, 0).to_json()))));
    f.insert("toPrettyJson", |a| {
        Ok(TVal::Str(go_escape(
            &serde_json::to_string_pretty(&arg(a, 0).to_json()).unwrap_or_default(),
        )))
    });
    f.insert("b64enc", |a| {
        use base64::Engine;
        Ok(TVal::Str(
            base64::engine::general_purpose::STANDARD.encode(s(&arg(a, 0))),
        ))
    });
    f.insert("b64dec", |a| {
        use base64::Engine;
        Ok(TVal::Str(
            base64::engine::general_purpose::STANDARD
                .decode(s(&arg(a, 0)))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| e.to_string()),
        ))
    });
    f.insert("int", |a| Ok(TVal::Int(int(&arg(a, 0)))));
    f.insert("int64", |a| Ok(TVal::Int(int(&arg(a, 0)))));
    f.insert("atoi", |a| Ok(TVal::Int(int(&arg(a, 0)))));
    f.insert("float64", |a| {
        Ok(TVal::Float(match arg(a, 0) {
            TVal::Int(i) => i as f64,
            TVal::Float(x) => x,
            other => s(&other).trim().parse().unwrap_or(0.0),
        }))
    });
    f.insert("add", |a| Ok(TVal::Int(a.iter().map(int).sum())));
    f.insert("add1", |a| Ok(TVal::Int(int(&arg(a, 0)) + 1)));
    f.insert("sub", |a| Ok(TVal::Int(int(&arg(a, 0)) - int(&arg(a, 1)))));
    f.insert("mul", |a| Ok(TVal::Int(a.iter().map(int).product())));
    f.insert("div", |a| match int(&arg(a, 1)) {
        0 => Err("division by zero".into()),
        d => Ok(TVal::Int(int(&arg(a, 0)) / d)),
    });
    f.insert("mod", |a| match int(&arg(a, 1)) {
        0 => Err("division by zero".into()),
        d => Ok(TVal::Int(int(&arg(a, 0)) % d)),
    });
    f.insert("max", |a| {
        Ok(TVal::Int(a.iter().map(int).max().unwrap_or(0)))
    });
    f.insert("min", |a| {
        Ok(TVal::Int(a.iter().map(int).min().unwrap_or(0)))
    });
    f.insert("nindent", |a| {
        let pad = " ".repeat(int(&arg(a, 0)).max(0) as usize);
        let v = s(&arg(a, 1));
        Ok(TVal::Str(format!(
            "\n{}",
            v.split('\n')
                .map(|l| format!("{pad}{l}"))
                .collect::<Vec<_>>()
                .join("\n")
        )))
    });
    f.insert("regexMatch", |a| {
        let re = regex::Regex::new(&s(&arg(a, 0))).map_err(|e| e.to_string())?;
        Ok(TVal::Bool(re.is_match(&s(&arg(a, 1)))))
    });
    f.insert("regexReplaceAll", |a| {
        let re = regex::Regex::new(&s(&arg(a, 0))).map_err(|e| e.to_string())?;
        Ok(TVal::Str(
            re.replace_all(&s(&arg(a, 1)), s(&arg(a, 2)).as_str())
                .into_owned(),
        ))
    });
    f.insert("fail", |a| Err(s(&arg(a, 0))));

    // --- Istio's (template.go) ---
    f.insert("annotation", |a| {
        // annotation META NAME DEFAULT: the annotation if present (even ""), else
        // fmt.Sprint(DEFAULT).
        let name = s(&arg(a, 1));
        let anns = arg(a, 0).field_or_nil("Annotations");
        match anns
            .entries()
            .and_then(|e| e.into_iter().find(|(k, _)| *k == name))
        {
            Some((_, v)) => Ok(TVal::Str(s(&v))),
            None => Ok(TVal::Str(match arg(a, 2) {
                TVal::Nil => "<nil>".into(),
                other => other.print(),
            })),
        }
    });
    f.insert("isset", |a| {
        let key = s(&arg(a, 1));
        Ok(TVal::Bool(
            arg(a, 0)
                .entries()
                .is_some_and(|e| e.iter().any(|(k, _)| *k == key)),
        ))
    });
    f.insert("valueOrDefault", |a| {
        let v = arg(a, 0);
        Ok(match &v {
            TVal::Nil | TVal::Zero => arg(a, 1),
            TVal::Str(x) if x.is_empty() => arg(a, 1),
            _ => v,
        })
    });
    f.insert("excludeInboundPort", |a| {
        let port = s(&arg(a, 0)).trim().to_string();
        let current = s(&arg(a, 1));
        if port.is_empty() || port == "0" {
            return Ok(TVal::Str(current));
        }
        if current.split(',').any(|p| p == port) {
            return Ok(TVal::Str(current));
        }
        let mut parts: Vec<String> = current
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        parts.push(port);
        Ok(TVal::Str(parts.join(",")))
    });
    f.insert("includeInboundPorts", |a| {
        Ok(TVal::Str(container_ports(&arg(a, 0), false)))
    });
    f.insert("applicationPorts", |a| {
        Ok(TVal::Str(container_ports(&arg(a, 0), true)))
    });
    f.insert("kubevirtInterfaces", |a| Ok(TVal::Str(s(&arg(a, 0)))));
    f.insert("excludeInterfaces", |a| Ok(TVal::Str(s(&arg(a, 0)))));
    f.insert("structToJSON", |a| {
        Ok(TVal::Str(match arg(a, 0) {
            TVal::Nil | TVal::Zero => "{}".into(),
            v => struct_json(&v.to_json()),
        }))
    });
    f.insert("protoToJSON", |a| {
        Ok(TVal::Str(proxy_config_json(&arg(a, 0).to_json())))
    });
    f.insert("toJSON", |a| {
        Ok(TVal::Str(match arg(a, 0) {
            TVal::Nil | TVal::Zero => "{}".into(),
            v => go_json(&v.to_json()),
        }))
    });
    f.insert("fromJSON", |a| {
        Ok(match serde_json::from_str::<Value>(&s(&arg(a, 0))) {
            Ok(v) => TVal::map(v),
            Err(_) => TVal::Str("{}".into()),
        })
    });
    f.insert("toYaml", |a| {
        Ok(TVal::Str(match arg(a, 0) {
            TVal::Nil => "null\n".into(),
            v => crate::yaml_out::to_string(&v.to_json()),
        }))
    });
    f.insert("indent", |a| {
        // Istio's indent: every line but the first.
        let pad = " ".repeat(int(&arg(a, 0)).max(0) as usize);
        let v = s(&arg(a, 1));
        Ok(TVal::Str(
            v.split('\n').collect::<Vec<_>>().join(&format!("\n{pad}")),
        ))
    });
    f.insert("directory", |a| {
        let p = s(&arg(a, 0));
        Ok(TVal::Str(match p.rfind('/') {
            Some(i) => p[..=i].to_string(),
            None => String::new(),
        }))
    });
    f.insert("contains", |a| {
        Ok(TVal::Bool(s(&arg(a, 1)).contains(&s(&arg(a, 0)))))
    });
    f.insert("toLower", |a| Ok(TVal::Str(s(&arg(a, 0)).to_lowercase())));
    f.insert("appendMultusNetwork", |a| {
        Ok(TVal::Str(append_multus(&s(&arg(a, 0)), &s(&arg(a, 1)))))
    });
    f.insert("env", |a| {
        Ok(TVal::Str(
            std::env::var(s(&arg(a, 0)))
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| s(&arg(a, 1))),
        ))
    });
    f.insert("omit", |a| {
        let mut m = to_map(&arg(a, 0));
        for k in &a[1.min(a.len())..] {
            m.remove(&s(k));
        }
        Ok(TVal::Map(Rc::new(m)))
    });
    f.insert("strdict", |a| {
        let mut m = BTreeMap::new();
        for pair in a.chunks(2) {
            m.insert(
                s(&pair[0]),
                TVal::Str(pair.get(1).map(s).unwrap_or_default()),
            );
        }
        Ok(TVal::Map(Rc::new(m)))
    });
    f.insert("mergeMaps", |a| {
        if a.is_empty() {
            return Ok(TVal::Nil);
        }
        let mut m = BTreeMap::new();
        for x in a {
            m.extend(to_map(x));
        }
        Ok(TVal::Map(Rc::new(m)))
    });
    f.insert("toJsonMap", |a| {
        let mut m = serde_json::Map::new();
        for x in a {
            if let Value::Object(o) = x.to_json() {
                m.extend(o);
            }
        }
        Ok(TVal::Str(go_json(&Value::Object(m))))
    });
    f.insert("omitNil", |a| {
        Ok(match omit_nil(arg(a, 0).to_json()) {
            Some(v) => TVal::map(v),
            None => TVal::Nil,
        })
    });
    f.insert("formatDuration", |a| Ok(TVal::Str(s(&arg(a, 0)))));
    f.insert("otelResourceAttributes", |_| Ok(TVal::Str(String::new())));
    f
}

impl TVal {
    /// A field, or Nil when there is none (for functions taking a struct or a map).
    fn field_or_nil(&self, name: &str) -> TVal {
        match self {
            TVal::Json(v, _) => {
                let key = name.to_lowercase();
                v.get(key.as_str())
                    .map(|x| TVal::json_key(v, x, super::gotmpl::Shape::Map, &key))
                    .unwrap_or(TVal::Nil)
            }
            TVal::Struct(m) | TVal::Map(m) => m.get(name).cloned().unwrap_or(TVal::Nil),
            _ => TVal::Nil,
        }
    }
}

/// TCP container ports, comma-separated (`includeInboundPorts`/`applicationPorts`).
fn container_ports(containers: &TVal, skip_proxy: bool) -> String {
    let mut out = Vec::new();
    for c in containers.items().unwrap_or_default() {
        let c = c.to_json();
        if skip_proxy && c["name"] == "istio-proxy" {
            continue;
        }
        for p in c["ports"].as_array().into_iter().flatten() {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            if proto == "UDP" || proto == "SCTP" {
                continue;
            }
            if let Some(n) = p["containerPort"].as_i64() {
                out.push(n.to_string());
            }
        }
    }
    out.join(",")
}

/// Go's json.Marshal of a Kubernetes struct: fields in the Go struct's order where the
/// order is known (ContainerPort), else sorted.
fn struct_json(v: &Value) -> String {
    if let Value::Object(o) = v
        && o.contains_key("containerPort")
    {
        let mut parts = Vec::new();
        for k in ["name", "hostPort", "containerPort", "protocol", "hostIP"] {
            if let Some(x) = o.get(k) {
                let zero = x.is_null() || x.as_str() == Some("") || x.as_i64() == Some(0);
                if k != "containerPort" && zero {
                    continue;
                }
                parts.push(format!("{}:{}", go_json(&Value::from(k)), go_json(x)));
            }
        }
        return format!("{{{}}}", parts.join(","));
    }
    go_json(v)
}

/// ProxyConfig fields in `.proto` declaration order (golang/protobuf jsonpb writes them so).
const PROXY_CONFIG_ORDER: &[&str] = &[
    "configPath",
    "binaryPath",
    "serviceCluster",
    "tracingServiceName",
    "drainDuration",
    "discoveryAddress",
    "discoveryRefreshDelay",
    "zipkinAddress",
    "statsdUdpAddress",
    "envoyMetricsServiceAddress",
    "proxyAdminPort",
    "availabilityZone",
    "controlPlaneAuthPolicy",
    "customConfigFile",
    "statNameLength",
    "concurrency",
    "proxyBootstrapTemplatePath",
    "interceptionMode",
    "tracing",
    "sds",
    "envoyAccessLogService",
    "envoyMetricsService",
    "proxyMetadata",
    "runtimeValues",
    "statusPort",
    "extraStatTags",
    "gatewayTopology",
    "terminationDrainDuration",
    "meshId",
    "readinessProbe",
    "proxyStatsMatcher",
    "holdApplicationUntilProxyStarts",
    "caCertificatesPem",
    "image",
    "privateKeyProvider",
    "proxyHeaders",
    "fileFlushInterval",
    "fileFlushMinSizeKb",
    "statsCompression",
    "connectionSettings",
];

/// `protoToJSON` of the effective ProxyConfig: what differs from istiod's defaults, compact,
/// in declaration order.
pub fn proxy_config_json(pc: &Value) -> String {
    let Value::Object(o) = pc else {
        return "{}".into();
    };
    let defaults: BTreeMap<&str, Value> = BTreeMap::from([
        ("configPath", Value::from("./etc/istio/proxy")),
        ("binaryPath", Value::from("/usr/local/bin/envoy")),
        ("serviceCluster", Value::from("istio-proxy")),
        ("drainDuration", Value::from("45s")),
        ("terminationDrainDuration", Value::from("5s")),
        (
            "discoveryAddress",
            Value::from("istiod.istio-system.svc:15012"),
        ),
        ("controlPlaneAuthPolicy", Value::from("MUTUAL_TLS")),
        ("proxyAdminPort", Value::from(15000)),
        ("statNameLength", Value::from(189)),
        ("statusPort", Value::from(15020)),
        ("interceptionMode", Value::from("REDIRECT")),
    ]);
    let always_dropped = [
        "envoyMetricsService",
        "envoyAccessLogService",
        "tracing",
        "concurrency",
    ];
    let mut parts = Vec::new();
    let mut keys: Vec<&String> = o.keys().collect();
    keys.sort_by_key(|k| {
        PROXY_CONFIG_ORDER
            .iter()
            .position(|x| x == k)
            .unwrap_or(usize::MAX)
    });
    for k in keys {
        let v = &o[k];
        if v.is_null()
            || always_dropped.contains(&k.as_str())
            || defaults.get(k.as_str()) == Some(v)
            || (k == "proxyMetadata" && v.as_object().is_some_and(|m| m.is_empty()))
        {
            continue;
        }
        parts.push(format!(
            "{}:{}",
            go_json(&Value::from(k.as_str())),
            go_json(v)
        ));
    }
    format!("{{{}}}", parts.join(","))
}

fn omit_nil(v: Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(o) => {
            let m: serde_json::Map<String, Value> = o
                .into_iter()
                .filter_map(|(k, v)| omit_nil(v).map(|v| (k, v)))
                .collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        Value::Array(a) => {
            let l: Vec<Value> = a.into_iter().filter_map(omit_nil).collect();
            (!l.is_empty()).then_some(Value::Array(l))
        }
        other => Some(other),
    }
}

fn append_multus(existing: &str, net: &str) -> String {
    if existing.is_empty() {
        return net.to_string();
    }
    if existing.contains(']') {
        let (name, ns) = match net.split_once('/') {
            Some((ns, n)) => (n, Some(ns)),
            None => (net, None),
        };
        if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(existing)
            && items.iter().any(|i| {
                i["name"] == name
                    && ns.is_none_or(|ns| i["namespace"].as_str().is_none_or(|x| x == ns))
            })
        {
            return existing.to_string();
        }
        let entry = match ns {
            Some(ns) => format!("{{\"name\": \"{name}\", \"namespace\": \"{ns}\"}}"),
            None => format!("{{\"name\": \"{name}\"}}"),
        };
        if let Some(i) = existing.rfind(']') {
            return format!("{}, {}{}", &existing[..i], entry, &existing[i..]);
        }
    }
    if existing.split(',').any(|x| x.trim() == net) {
        return existing.to_string();
    }
    format!("{existing}, {net}")
}

/// `fmt.Sprint` for callers outside the engine.
pub fn sprint(a: &[TVal]) -> String {
    go_sprint(a)
}
