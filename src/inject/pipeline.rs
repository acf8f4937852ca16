//! The injection pipeline, shared by the webhook and `meshd kube-inject`: decide, render
//! the templates, merge them into the pod, re-apply the user's own proxy settings, then the
//! post-processing istiod does (Prometheus merge, probe rewriting, status annotation,
//! container order).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::funcs::{self, go_json};
use super::gotmpl::{Funcs, TVal, Template};
use super::merge::{normalize_pod, strategic_merge};
use crate::model::selector::LabelSelector;

pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
pub const PROXY: &str = "istio-proxy";
const OVERRIDES_ANNOTATION: &str = "proxy.istio.io/overrides";
const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";

/// Namespaces never injected.
pub const IGNORED_NAMESPACES: &[&str] = crate::kube::IGNORED_NAMESPACES;

/// The injector's settings: the `istio-sidecar-injector` ConfigMap (`config` and `values`)
/// and the mesh config.
pub struct Settings {
    pub policy: String,
    pub default_templates: Vec<String>,
    pub aliases: BTreeMap<String, Vec<String>>,
    pub never_inject: Vec<LabelSelector>,
    pub always_inject: Vec<LabelSelector>,
    pub injected_annotations: BTreeMap<String, String>,
    pub templates: BTreeMap<String, Template>,
    /// Helm values (numbers are float64 to templates). Shared with every rendering, not
    /// copied per pod.
    pub values: Arc<Value>,
    /// MeshConfig with istiod's defaults filled in.
    pub mesh: Arc<Value>,
    /// Whether the cluster runs native sidecars (kubelet ≥ 1.29 everywhere).
    pub native_sidecars: bool,
    funcs: Funcs,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("policy", &self.policy)
            .field("templates", &self.templates.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// istiod's ProxyConfig defaults.
pub fn default_proxy_config() -> Value {
    json!({
        "configPath": "./etc/istio/proxy",
        "binaryPath": "/usr/local/bin/envoy",
        "serviceCluster": "istio-proxy",
        "drainDuration": "45s",
        "terminationDrainDuration": "5s",
        "proxyAdminPort": 15000,
        "controlPlaneAuthPolicy": "MUTUAL_TLS",
        "discoveryAddress": "istiod.istio-system.svc:15012",
        "statNameLength": 189,
        "statusPort": 15020,
        "interceptionMode": "REDIRECT",
    })
}

/// istiod's MeshConfig defaults (what injection reads of it).
pub fn default_mesh() -> Value {
    json!({
        "trustDomain": "cluster.local",
        "rootNamespace": "istio-system",
        "proxyListenPort": 15001,
        "proxyInboundListenPort": 15006,
        "enablePrometheusMerge": true,
        "inboundTrafficPolicy": {"mode": "PASSTHROUGH"},
        "defaultConfig": default_proxy_config(),
    })
}

/// ProxyConfig `overlay` over `base`: fields replace, `proxyMetadata` merges by key.
pub fn overlay_proxy_config(base: &Value, overlay: &Value) -> Value {
    let mut out = base.clone();
    if let (Some(o), Some(ov)) = (out.as_object_mut(), overlay.as_object()) {
        for (k, v) in ov {
            if k == "proxyMetadata"
                && let (Some(Value::Object(old)), Value::Object(new)) = (o.get(k).cloned(), v)
            {
                let mut m = old;
                m.extend(new.clone());
                o.insert(k.clone(), Value::Object(m));
                continue;
            }
            o.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Mesh config from its YAML over the defaults (`defaultConfig` merged field by field).
pub fn mesh_from_yaml(text: &str) -> Result<Value, String> {
    let mut mesh = default_mesh();
    let parsed = yaml_value(text)?;
    if let (Some(m), Some(p)) = (mesh.as_object_mut(), parsed.as_object()) {
        for (k, v) in p {
            if k == "defaultConfig" {
                let base = m.get(k).cloned().unwrap_or_else(default_proxy_config);
                m.insert(k.clone(), overlay_proxy_config(&base, v));
            } else {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(mesh)
}

/// One YAML document as JSON (`{}` for an empty text).
pub fn yaml_value(text: &str) -> Result<Value, String> {
    // No field-line map: nothing points into this YAML but the error's own line.
    match crate::sources::yaml::parse_first_value(text) {
        None => Ok(Value::Object(Map::new())),
        Some(Ok(v)) => Ok(if v.is_null() {
            Value::Object(Map::new())
        } else {
            v
        }),
        Some(Err(e)) => Err(format!("line {}: {}", e.line, e.message)),
    }
}

impl Settings {
    /// From the ConfigMap's `config` (YAML), `values` (JSON) and the mesh config (YAML).
    pub fn new(config: &str, values: &str, mesh: &str) -> Result<Settings, String> {
        let cfg = yaml_value(config).map_err(|e| format!("injection config: {e}"))?;
        let values: Value = if values.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            yaml_value(values).map_err(|e| format!("injection values: {e}"))?
        };
        let mut templates = BTreeMap::new();
        if let Some(t) = cfg.get("templates").and_then(Value::as_object) {
            for (name, text) in t {
                let text = text.as_str().unwrap_or_default();
                let parsed =
                    Template::parse(text).map_err(|e| format!("template {name:?}: {e}"))?;
                templates.insert(name.clone(), parsed);
            }
        }
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let selectors = |v: Option<&Value>| -> Result<Vec<LabelSelector>, String> {
            match v {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("selector: {e}")),
            }
        };
        let mut default_templates = strings(cfg.get("defaultTemplates"));
        if default_templates.is_empty() {
            default_templates = vec!["sidecar".into()];
        }
        Ok(Settings {
            policy: cfg
                .get("policy")
                .and_then(Value::as_str)
                .unwrap_or("enabled")
                .to_string(),
            default_templates,
            aliases: cfg
                .get("aliases")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), strings(Some(v))))
                        .collect()
                })
                .unwrap_or_default(),
            never_inject: selectors(cfg.get("neverInjectSelector"))?,
            always_inject: selectors(cfg.get("alwaysInjectSelector"))?,
            injected_annotations: cfg
                .get("injectedAnnotations")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            templates,
            values: Arc::new(values),
            mesh: Arc::new(mesh_from_yaml(mesh)?),
            native_sidecars: true,
            funcs: funcs::all(),
        })
    }
}

/// What one injection needs besides the settings.
#[derive(Debug, Clone)]
pub struct Request {
    /// `{metadata, spec}` of the pod.
    pub pod: Value,
    /// Owner kind and apiVersion (`apps/v1` Deployment), for ISTIO_META_OWNER.
    pub type_meta: (String, String),
    /// Owner name and namespace.
    pub deploy_meta: (String, String),
    /// What templates see as `.Revision` ("" from kube-inject).
    pub revision: String,
    /// Environment from the webhook URL (cluster, network).
    pub proxy_envs: BTreeMap<String, String>,
    /// kube-inject: policy enabled, only the `sidecar` default template.
    pub offline: bool,
}

fn labels(pod: &Value) -> BTreeMap<String, String> {
    string_map(&pod["metadata"]["labels"])
}

fn annotations(pod: &Value) -> BTreeMap<String, String> {
    string_map(&pod["metadata"]["annotations"])
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// istiod's decision (injectRequired).
pub fn inject_required(settings: &Settings, pod: &Value, namespace: &str, offline: bool) -> bool {
    if pod["spec"]["hostNetwork"] == true {
        return false;
    }
    if IGNORED_NAMESPACES.contains(&namespace) {
        return false;
    }
    let anns = annotations(pod);
    let lbls = labels(pod);
    let mut value = anns
        .get("sidecar.istio.io/inject")
        .cloned()
        .unwrap_or_default();
    if let Some(l) = lbls.get("sidecar.istio.io/inject") {
        value = l.clone();
    }
    let (mut inject, mut use_default) = match value.to_lowercase().as_str() {
        "true" => (true, false),
        "false" => (false, false),
        _ => (false, true),
    };
    if !offline {
        if use_default {
            for s in &settings.never_inject {
                if (!s.match_labels.is_empty() || !s.match_expressions.is_empty())
                    && s.matches(&lbls)
                {
                    inject = false;
                    use_default = false;
                    break;
                }
            }
        }
        if use_default {
            for s in &settings.always_inject {
                if (!s.match_labels.is_empty() || !s.match_expressions.is_empty())
                    && s.matches(&lbls)
                {
                    inject = true;
                    use_default = false;
                    break;
                }
            }
        }
    }
    let policy = if offline {
        "enabled"
    } else {
        settings.policy.as_str()
    };
    match policy {
        "disabled" => !use_default && inject,
        "enabled" => use_default || inject,
        _ => false,
    }
}

/// The owner a pod reports (GetDeployMetaFromPod): ((apiVersion, kind), (name, namespace)).
pub fn owner_of_pod(pod: &Value, namespace: &str) -> ((String, String), (String, String)) {
    let meta = &pod["metadata"];
    let name = meta["name"].as_str().unwrap_or_default().to_string();
    let mut out_name = name.clone();
    let mut type_meta = ("v1".to_string(), "Pod".to_string());
    if meta["generateName"].as_str().is_some_and(|g| !g.is_empty())
        && let Some(r) = meta["ownerReferences"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["controller"] == true))
    {
        let rname = r["name"].as_str().unwrap_or_default().to_string();
        let rkind = r["kind"].as_str().unwrap_or_default().to_string();
        type_meta = (
            r["apiVersion"].as_str().unwrap_or_default().to_string(),
            rkind.clone(),
        );
        out_name = rname.clone();
        let lbls = labels(pod);
        if rkind == "ReplicaSet"
            && let Some(h) = lbls.get("pod-template-hash").filter(|h| !h.is_empty())
            && rname.ends_with(&format!("-{h}"))
        {
            out_name = rname[..rname.len() - h.len() - 1].to_string();
            type_meta.1 = "Deployment".into();
        } else if rkind == "ReplicaSet"
            && let Some(h) = lbls
                .get("rollouts-pod-template-hash")
                .filter(|h| !h.is_empty())
            && rname.ends_with(&format!("-{h}"))
        {
            out_name = rname[..rname.len() - h.len() - 1].to_string();
            type_meta = ("v1alpha1".into(), "Rollout".into());
        } else if rkind == "ReplicationController"
            && let Some(dc) = lbls.get("deploymentconfig").filter(|d| !d.is_empty())
        {
            out_name = dc.clone();
            type_meta.1 = "DeploymentConfig".into();
        } else if rkind == "Job"
            && let Some(i) = rname.rfind('-')
            && (8..=10).contains(&rname[i + 1..].len())
            && rname[i + 1..].chars().all(|c| c.is_ascii_digit())
        {
            out_name = rname[..i].to_string();
            type_meta = ("batch/v1".into(), "CronJob".into());
        }
    }
    if out_name.is_empty() {
        out_name = name;
    }
    (type_meta, (out_name, namespace.to_string()))
}

fn find_container<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

fn has_container(list: &Value, name: &str) -> bool {
    find_container(list, name).is_some()
}

/// The proxy config a pod runs with: mesh defaultConfig, then its annotation.
pub fn effective_proxy_config(settings: &Settings, pod: &Value) -> Result<Value, String> {
    let base = settings.mesh["defaultConfig"].clone();
    match annotations(pod).get(PROXY_CONFIG_ANNOTATION) {
        Some(text) => {
            let overlay = yaml_value(text).map_err(|e| {
                format!("invalid value '{text}' for annotation '{PROXY_CONFIG_ANNOTATION}': {e}")
            })?;
            if !overlay.is_object() {
                return Err(format!(
                    "invalid value '{text}' for annotation '{PROXY_CONFIG_ANNOTATION}': not a ProxyConfig object"
                ));
            }
            Ok(overlay_proxy_config(&base, &overlay))
        }
        None => Ok(base),
    }
}

fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Annotation checks istiod makes before rendering.
fn validate_annotations(pod: &Value) -> Result<(), String> {
    let bad = |name: &str, v: &str, reason: String| {
        Err(format!(
            "invalid value '{v}' for annotation '{name}': {reason}"
        ))
    };
    let ports = |v: &str| -> Result<(), String> {
        for p in v.split(',') {
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            p.parse::<u16>()
                .map_err(|_| format!("port {p:?} is not a port number"))?;
        }
        Ok(())
    };
    let cidrs = |v: &str| -> Result<(), String> {
        for c in v.split(',') {
            let c = c.trim();
            if c.is_empty() {
                continue;
            }
            let (ip, bits) = c
                .split_once('/')
                .ok_or_else(|| format!("{c:?} is not a CIDR"))?;
            let ip: std::net::IpAddr = ip.parse().map_err(|_| format!("{c:?} is not a CIDR"))?;
            let bits: u8 = bits.parse().map_err(|_| format!("{c:?} is not a CIDR"))?;
            if bits > if ip.is_ipv4() { 32 } else { 128 } {
                return Err(format!("{c:?} is not a CIDR"));
            }
        }
        Ok(())
    };
    for (k, v) in annotations(pod) {
        let r = match k.as_str() {
            "sidecar.istio.io/interceptionMode" => {
                if matches!(v.as_str(), "REDIRECT" | "TPROXY" | "NONE") {
                    Ok(())
                } else {
                    Err("interceptionMode must be REDIRECT, TPROXY or NONE".into())
                }
            }
            "status.sidecar.istio.io/port" => v
                .parse::<u16>()
                .map(|_| ())
                .map_err(|_| "not a port number".into()),
            "readiness.status.sidecar.istio.io/initialDelaySeconds"
            | "readiness.status.sidecar.istio.io/periodSeconds"
            | "readiness.status.sidecar.istio.io/failureThreshold" => v
                .parse::<u32>()
                .map(|_| ())
                .map_err(|_| "not a non-negative integer".into()),
            "traffic.sidecar.istio.io/includeOutboundIPRanges" => {
                if v == "*" {
                    Ok(())
                } else {
                    cidrs(&v).map_err(|e| format!("includeIPRanges invalid: {e}"))
                }
            }
            "traffic.sidecar.istio.io/excludeOutboundIPRanges" => {
                cidrs(&v).map_err(|e| format!("excludeIPRanges invalid: {e}"))
            }
            "traffic.sidecar.istio.io/includeInboundPorts" => {
                if v == "*" {
                    Ok(())
                } else {
                    ports(&v).map_err(|e| format!("includeInboundPorts invalid: {e}"))
                }
            }
            "traffic.sidecar.istio.io/excludeInboundPorts" => {
                ports(&v).map_err(|e| format!("excludeInboundPorts invalid: {e}"))
            }
            "traffic.sidecar.istio.io/excludeOutboundPorts" => {
                ports(&v).map_err(|e| format!("excludeOutboundPorts invalid: {e}"))
            }
            "traffic.sidecar.istio.io/includeOutboundPorts" => {
                ports(&v).map_err(|e| format!("includeOutboundPorts invalid: {e}"))
            }
            "prometheus.istio.io/merge-metrics" => parse_go_bool(&v)
                .map(|_| ())
                .ok_or_else(|| "not a boolean".to_string()),
            "sidecar.istio.io/proxyCPU"
            | "sidecar.istio.io/proxyMemory"
            | "sidecar.istio.io/proxyCPULimit"
            | "sidecar.istio.io/proxyMemoryLimit" => super::merge::canonical_quantity(&v)
                .map(|_| ())
                .ok_or_else(|| "not a resource quantity".to_string()),
            _ => Ok(()),
        };
        if let Err(reason) = r {
            return bad(&k, &v, reason);
        }
    }
    Ok(())
}

/// Removes what a previous injection added (re-injection), from the status annotation.
fn strip_pod(pod: &Value, status_port: &str) -> Value {
    let mut p = pod.clone();
    let Some(status) = annotations(pod)
        .get(STATUS_ANNOTATION)
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
    else {
        return p;
    };
    let names = |k: &str| -> Vec<String> {
        status[k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (list, key) in [
        ("containers", "containers"),
        ("initContainers", "initContainers"),
    ] {
        let drop = names(key);
        if let Some(Value::Array(a)) = p["spec"].get_mut(list) {
            a.retain(|c| !drop.iter().any(|d| c["name"] == *d));
        }
    }
    if let Some(anns) = p["metadata"]["annotations"].as_object_mut() {
        let port_is_ours = anns
            .iter()
            .any(|(k, v)| sanitize(k) == "prometheus_io_port" && v.as_str() == Some(status_port));
        if port_is_ours {
            anns.retain(|k, _| {
                !matches!(
                    sanitize(k).as_str(),
                    "prometheus_io_port" | "prometheus_io_path" | "prometheus_io_scrape"
                )
            });
        }
        anns.remove(STATUS_ANNOTATION);
    }
    p
}

fn reinsert_overrides(pod: &Value) -> Result<Value, String> {
    let mut p = pod.clone();
    let Some(text) = annotations(pod).get(OVERRIDES_ANNOTATION).cloned() else {
        return Ok(p);
    };
    let o: Value = serde_json::from_str(&text)
        .map_err(|e| format!("annotation {OVERRIDES_ANNOTATION} is not JSON: {e}"))?;
    for list in ["containers", "initContainers"] {
        for c in o[list].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default();
            let spec = &mut p["spec"];
            if !has_container(&spec[list], name) {
                match spec.get_mut(list) {
                    Some(Value::Array(a)) => a.push(c.clone()),
                    _ => spec[list] = Value::Array(vec![c.clone()]),
                }
            }
        }
    }
    Ok(p)
}

fn tag_with_type(tag: &str, image_type: &str) -> String {
    if image_type.is_empty() {
        return tag.to_string();
    }
    let base = tag
        .strip_suffix("-distroless")
        .or_else(|| tag.strip_suffix("-debug"))
        .unwrap_or(tag);
    if image_type == "default" {
        base.to_string()
    } else {
        format!("{base}-{image_type}")
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) => crate::yaml_out::go_float(f),
            None => n.to_string(),
        },
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn images(settings: &Settings, pc: &Value, pod: &Value) -> (String, String) {
    let g = &settings.values["global"];
    let hub = value_text(&g["hub"]);
    let tag = value_text(&g["tag"]);
    let anns = annotations(pod);
    let mut image_type = pc["image"]["imageType"]
        .as_str()
        .map(String::from)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| value_text(&g["variant"]));
    if let Some(t) = anns.get("sidecar.istio.io/proxyImageType") {
        image_type = t.clone();
    }
    let image = |name: &str, ty: &str| {
        if name.contains('/') {
            name.to_string()
        } else {
            format!("{hub}/{name}:{}", tag_with_type(&tag, ty))
        }
    };
    let proxy_name = g["proxy"]["image"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("proxyv2");
    let init_name = g["proxy_init"]["image"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("proxyv2");
    (
        image(proxy_name, &image_type),
        image(init_name, &value_text(&g["variant"])),
    )
}

fn native_for(settings: &Settings, pod: &Value) -> bool {
    match annotations(pod)
        .get("sidecar.istio.io/nativeSidecar")
        .map(String::as_str)
    {
        Some("true") => true,
        Some("false") => false,
        _ => settings.native_sidecars,
    }
}

fn select_templates(
    settings: &Settings,
    pod: &Value,
    offline: bool,
) -> Result<Vec<String>, String> {
    let requested: Vec<String> = match annotations(pod).get("inject.istio.io/templates") {
        Some(t) => t.split(',').map(|s| s.trim().to_string()).collect(),
        None if offline => vec!["sidecar".into()],
        None => settings.default_templates.clone(),
    };
    let mut out = Vec::new();
    for name in requested {
        match settings.aliases.get(&name) {
            Some(list) if !offline => out.extend(list.iter().cloned()),
            _ => out.push(name),
        }
    }
    for n in &out {
        if !settings.templates.contains_key(n) {
            let have: Vec<&String> = settings.templates.keys().collect();
            return Err(format!(
                "requested template {n:?} not found; have {}",
                have.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(out)
}

fn struct_of(fields: &[(&str, TVal)]) -> TVal {
    TVal::Struct(Rc::new(
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    ))
}

/// Injects the sidecar into `req.pod` ({metadata, spec}); returns the new pod.
pub fn inject(settings: &Settings, req: &Request) -> Result<Value, String> {
    let pod = normalize_pod(&req.pod);
    validate_annotations(&pod).map_err(|e| format!("failed to run injection template: {e}"))?;
    let pc = effective_proxy_config(settings, &pod)?;
    let status_port = value_text(&settings.mesh["defaultConfig"]["statusPort"]);
    let stripped = reinsert_overrides(&strip_pod(&pod, &status_port))?;
    let native = native_for(settings, &pod);
    let (proxy_image, proxy_init_image) = images(settings, &pc, &pod);
    // Offline, mesh config carries the pod's proxy config (istioctl applies it there).
    let mesh = if req.offline {
        let mut mesh = (*settings.mesh).clone();
        mesh["defaultConfig"] = pc.clone();
        Arc::new(mesh)
    } else {
        settings.mesh.clone()
    };
    let inbound = if mesh["inboundTrafficPolicy"]["mode"] == "LOCALHOST" {
        "localhost"
    } else {
        "passthrough"
    };
    let data = struct_of(&[
        (
            "TypeMeta",
            struct_of(&[
                ("APIVersion", TVal::str(&req.type_meta.0)),
                ("Kind", TVal::str(&req.type_meta.1)),
            ]),
        ),
        (
            "DeploymentMeta",
            struct_of(&[
                ("Name", TVal::str(&req.deploy_meta.0)),
                ("Namespace", TVal::str(&req.deploy_meta.1)),
            ]),
        ),
        ("ObjectMeta", TVal::structure(stripped["metadata"].clone())),
        ("Spec", TVal::structure(stripped["spec"].clone())),
        ("ProxyConfig", TVal::structure(pc.clone())),
        ("MeshConfig", TVal::shared_structure(mesh.clone())),
        ("Values", TVal::shared_map(settings.values.clone())),
        ("Revision", TVal::str(&req.revision)),
        ("NativeSidecars", TVal::Bool(native)),
        ("ProxyImage", TVal::str(proxy_image)),
        ("ProxyInitImage", TVal::str(proxy_init_image)),
        ("ProxyUID", TVal::Int(1337)),
        ("ProxyGID", TVal::Int(1337)),
        ("InboundTrafficPolicyMode", TVal::str(inbound)),
        (
            "CompliancePolicy",
            TVal::str(std::env::var("COMPLIANCE_POLICY").unwrap_or_default()),
        ),
    ]);
    let mut merged = pod.clone();
    let mut template_pod = normalize_pod(&json!({"metadata": {}, "spec": {}}));
    for name in select_templates(settings, &pod, req.offline)? {
        let t = &settings.templates[&name];
        let text = t
            .render(&data, &settings.funcs)
            .map_err(|e| format!("failed to run injection template: {name}: {e}"))?;
        let patch = yaml_value(&text).map_err(|e| {
            // Show the rendered lines around the fault: custom templates fail here.
            let line: usize = e
                .trim_start_matches("line ")
                .split(':')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let context: Vec<String> = text
                .lines()
                .enumerate()
                .skip(line.saturating_sub(4))
                .take(6)
                .map(|(i, l)| format!("{:>4} | {l}", i + 1))
                .collect();
            format!(
                "template {name} rendered invalid YAML: {e}\n{}",
                context.join("\n")
            )
        })?;
        template_pod = normalize_pod(&strategic_merge(&template_pod, &patch));
        let in_init = has_container(&template_pod["spec"]["initContainers"], PROXY);
        if native_for(settings, &pod)
            && in_init
            && has_container(&merged["spec"]["containers"], PROXY)
        {
            move_proxy_to_init(&mut merged);
        }
        merged = normalize_pod(&strategic_merge(&merged, &patch));
    }
    let mut merged = reapply_overrides(merged, &pod, &template_pod, &pc)?;
    overwrite_cluster_info(&mut merged, &req.proxy_envs);
    prometheus_merge(&mut merged, settings, &status_port)?;
    secure_prometheus(&mut merged);
    rewrite_probes(&mut merged, settings, &status_port);
    apply_metadata(&mut merged, &template_pod, req, settings);
    reorder(&mut merged, settings, &pod);
    Ok(normalize_pod(&merged))
}

fn move_proxy_to_init(pod: &mut Value) {
    let spec = &mut pod["spec"];
    let Some(Value::Array(cs)) = spec.get_mut("containers") else {
        return;
    };
    let Some(i) = cs.iter().position(|c| c["name"] == PROXY) else {
        return;
    };
    let proxy = cs.remove(i);
    match spec.get_mut("initContainers") {
        Some(Value::Array(a)) => a.push(proxy),
        _ => spec["initContainers"] = Value::Array(vec![proxy]),
    }
}

/// The user's own settings for containers the templates define (`istio-proxy` with a custom
/// image or resources, say) win over the template, as istiod does it.
fn reapply_overrides(
    mut merged: Value,
    original: &Value,
    template_pod: &Value,
    pc: &Value,
) -> Result<Value, String> {
    let anns = annotations(original);
    let existing: Option<Value> = match anns.get(OVERRIDES_ANNOTATION) {
        Some(t) => Some(
            serde_json::from_str(t)
                .map_err(|e| format!("annotation {OVERRIDES_ANNOTATION} is not JSON: {e}"))?,
        ),
        None => None,
    };
    let status: Option<Value> = anns
        .get(STATUS_ANNOTATION)
        .and_then(|s| serde_json::from_str(s).ok());
    let already_injected = status.is_some();
    let injected = |list: &str, name: &str| {
        status
            .as_ref()
            .and_then(|s| s[list].as_array())
            .is_some_and(|a| a.iter().any(|x| x == name))
    };
    let mut overrides: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for list in ["containers", "initContainers"] {
        for c in template_pod["spec"][list]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let name = c["name"].as_str().unwrap_or_default();
            if injected(list, name) {
                continue;
            }
            let found = existing
                .as_ref()
                .and_then(|e| find_container(&e[list], name).cloned())
                .or_else(|| {
                    if list == "containers" {
                        find_container(&original["spec"]["containers"], name).cloned()
                    } else {
                        find_container(&original["spec"]["containers"], name)
                            .or_else(|| find_container(&original["spec"]["initContainers"], name))
                            .cloned()
                    }
                });
            let Some(mut user) = found else { continue };
            if user["image"] == "auto" {
                user["image"] = Value::from("");
            }
            let mut wrapper = Map::new();
            wrapper.insert(list.to_string(), Value::Array(vec![user]));
            let user =
                normalize_pod(&json!({ "spec": Value::Object(wrapper) }))["spec"][list][0].clone();
            overrides.entry(list).or_default().push(user.clone());
            let patch = if list == "containers" {
                json!({"spec": {"containers": [user]}})
            } else {
                json!({"spec": {"containers": [], "initContainers": [user]}})
            };
            merged = normalize_pod(&strategic_merge(&merged, &patch));
        }
    }
    if !already_injected && !overrides.is_empty() {
        let mut parts = Vec::new();
        for list in ["containers", "initContainers"] {
            if let Some(cs) = overrides.get(list) {
                let items: Vec<String> = cs.iter().map(container_json).collect();
                parts.push(format!("\"{list}\":[{}]", items.join(",")));
            }
        }
        let text = format!("{{{}}}", parts.join(","));
        set_annotation(&mut merged, OVERRIDES_ANNOTATION, &text);
    }
    adjust_init_user(&mut merged, original, pc);
    Ok(merged)
}

/// A container as Go's json.Marshal writes it (fields in struct order).
fn container_json(c: &Value) -> String {
    let mut c = c.clone();
    if c["image"] == ""
        && let Some(o) = c.as_object_mut()
    {
        o.remove("image");
    }
    ordered_json(&c, "Container")
}

/// Field order (and field types) of the Kubernetes structs a container holds, as Go
/// declares them: json.Marshal writes fields in this order.
fn struct_fields(ty: &str) -> &'static [(&'static str, &'static str)] {
    match ty {
        "Container" => &[
            ("name", ""),
            ("image", ""),
            ("command", ""),
            ("args", ""),
            ("workingDir", ""),
            ("ports", "ContainerPort"),
            ("envFrom", ""),
            ("env", "EnvVar"),
            ("resources", "ResourceRequirements"),
            ("resizePolicy", ""),
            ("restartPolicy", ""),
            ("restartPolicyRules", ""),
            ("volumeMounts", "VolumeMount"),
            ("volumeDevices", ""),
            ("livenessProbe", "Probe"),
            ("readinessProbe", "Probe"),
            ("startupProbe", "Probe"),
            ("lifecycle", "Lifecycle"),
            ("terminationMessagePath", ""),
            ("terminationMessagePolicy", ""),
            ("imagePullPolicy", ""),
            ("securityContext", "SecurityContext"),
            ("stdin", ""),
            ("stdinOnce", ""),
            ("tty", ""),
        ],
        "ContainerPort" => &[
            ("name", ""),
            ("hostPort", ""),
            ("containerPort", ""),
            ("protocol", ""),
            ("hostIP", ""),
        ],
        "EnvVar" => &[("name", ""), ("value", ""), ("valueFrom", "EnvVarSource")],
        "EnvVarSource" => &[
            ("fieldRef", "ObjectFieldSelector"),
            ("resourceFieldRef", "ResourceFieldSelector"),
            ("configMapKeyRef", ""),
            ("secretKeyRef", ""),
            ("fileKeyRef", ""),
        ],
        "ObjectFieldSelector" => &[("apiVersion", ""), ("fieldPath", "")],
        "ResourceFieldSelector" => &[("containerName", ""), ("resource", ""), ("divisor", "")],
        "ResourceRequirements" => &[("limits", ""), ("requests", ""), ("claims", "")],
        "VolumeMount" => &[
            ("name", ""),
            ("readOnly", ""),
            ("recursiveReadOnly", ""),
            ("mountPath", ""),
            ("subPath", ""),
            ("mountPropagation", ""),
            ("subPathExpr", ""),
        ],
        "Probe" => &[
            ("exec", "ExecAction"),
            ("httpGet", "HTTPGetAction"),
            ("tcpSocket", "TCPSocketAction"),
            ("grpc", "GRPCAction"),
            ("initialDelaySeconds", ""),
            ("timeoutSeconds", ""),
            ("periodSeconds", ""),
            ("successThreshold", ""),
            ("failureThreshold", ""),
            ("terminationGracePeriodSeconds", ""),
        ],
        "Lifecycle" => &[
            ("postStart", "LifecycleHandler"),
            ("preStop", "LifecycleHandler"),
            ("stopSignal", ""),
        ],
        "LifecycleHandler" => &[
            ("exec", "ExecAction"),
            ("httpGet", "HTTPGetAction"),
            ("tcpSocket", "TCPSocketAction"),
            ("sleep", ""),
        ],
        "ExecAction" => &[("command", "")],
        "HTTPGetAction" => &[
            ("path", ""),
            ("port", ""),
            ("host", ""),
            ("scheme", ""),
            ("httpHeaders", "HTTPHeader"),
        ],
        "HTTPHeader" => &[("name", ""), ("value", "")],
        "TCPSocketAction" => &[("port", ""), ("host", "")],
        "GRPCAction" => &[("port", ""), ("service", "")],
        "SecurityContext" => &[
            ("capabilities", "Capabilities"),
            ("privileged", ""),
            ("seLinuxOptions", ""),
            ("windowsOptions", ""),
            ("runAsUser", ""),
            ("runAsGroup", ""),
            ("runAsNonRoot", ""),
            ("readOnlyRootFilesystem", ""),
            ("allowPrivilegeEscalation", ""),
            ("procMount", ""),
            ("seccompProfile", "SeccompProfile"),
            ("appArmorProfile", ""),
        ],
        "Capabilities" => &[("add", ""), ("drop", "")],
        "SeccompProfile" => &[("type", ""), ("localhostProfile", "")],
        _ => &[],
    }
}

/// Go's json.Marshal of a typed value: struct fields in declaration order, maps sorted.
fn ordered_json(v: &Value, ty: &str) -> String {
    match v {
        Value::Array(a) => format!(
            "[{}]",
            a.iter()
                .map(|x| ordered_json(x, ty))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Value::Object(o) if !struct_fields(ty).is_empty() => {
            let fields = struct_fields(ty);
            let mut parts = Vec::new();
            for (k, child) in fields {
                if let Some(x) = o.get(*k) {
                    parts.push(format!("\"{k}\":{}", ordered_json(x, child)));
                }
            }
            // Fields this table does not know, in key order.
            for (k, x) in o {
                if !fields.iter().any(|(f, _)| f == k) {
                    parts.push(format!(
                        "{}:{}",
                        go_json(&Value::from(k.as_str())),
                        go_json(x)
                    ));
                }
            }
            format!("{{{}}}", parts.join(","))
        }
        other => go_json(other),
    }
}

fn adjust_init_user(pod: &mut Value, original: &Value, pc: &Value) {
    let user = find_container(&original["spec"]["containers"], PROXY)
        .or_else(|| find_container(&original["spec"]["initContainers"], PROXY));
    let Some(user) = user else { return };
    let sc = &user["securityContext"];
    let run_as_user = sc["runAsUser"].as_i64();
    let run_as_group = sc["runAsGroup"].as_i64();
    if run_as_user.is_none() && run_as_group.is_none() {
        return;
    }
    let tproxy = pc["interceptionMode"] == "TPROXY"
        || annotations(pod)
            .get("sidecar.istio.io/interceptionMode")
            .map(String::as_str)
            == Some("TPROXY");
    if tproxy && run_as_user.is_some() {
        for list in ["containers", "initContainers"] {
            if let Some(Value::Array(a)) = pod["spec"].get_mut(list)
                && let Some(p) = a.iter_mut().find(|c| c["name"] == PROXY)
            {
                p["securityContext"]["runAsUser"] = Value::from(0);
            }
        }
    }
    let Some(Value::Array(inits)) = pod["spec"].get_mut("initContainers") else {
        return;
    };
    let Some(init) = inits
        .iter_mut()
        .find(|c| c["name"] == "istio-init" || c["name"] == "istio-validation")
    else {
        return;
    };
    if !tproxy && init["name"] == "istio-validation" {
        if let Some(u) = run_as_user {
            init["securityContext"]["runAsUser"] = Value::from(u);
        }
        if let Some(g) = run_as_group {
            init["securityContext"]["runAsGroup"] = Value::from(g);
        }
    }
    if let Some(u) = run_as_user.filter(|u| *u != 0)
        && let Some(Value::Array(args)) = init.get_mut("args")
        && let Some(i) = args.iter().position(|a| a == "-u")
        && i + 1 < args.len()
    {
        args[i + 1] = Value::from(u.to_string());
    }
}

fn set_annotation(pod: &mut Value, k: &str, v: &str) {
    let meta = &mut pod["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = Value::Object(Map::new());
    }
    meta["annotations"][k] = Value::from(v);
}

fn proxy_mut(pod: &mut Value) -> Option<&mut Value> {
    for list in ["containers", "initContainers"] {
        if has_container(&pod["spec"][list], PROXY) {
            return pod["spec"][list]
                .as_array_mut()?
                .iter_mut()
                .find(|c| c["name"] == PROXY);
        }
    }
    None
}

fn push_env(c: &mut Value, name: &str, value: &str) {
    let e = json!({"name": name, "value": value});
    match c.get_mut("env") {
        Some(Value::Array(a)) => a.push(e),
        _ => c["env"] = Value::Array(vec![e]),
    }
}

fn overwrite_cluster_info(pod: &mut Value, envs: &BTreeMap<String, String>) {
    if envs.is_empty() {
        return;
    }
    if let Some(p) = proxy_mut(pod) {
        if let Some(Value::Array(a)) = p.get_mut("env") {
            a.retain(|e| !envs.contains_key(e["name"].as_str().unwrap_or_default()));
        }
        for (k, v) in envs {
            push_env(p, k, v);
        }
    }
}

/// Prometheus' label-name sanitisation, by which istiod matches annotation keys.
fn sanitize(k: &str) -> String {
    k.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

const RESERVED_PORTS: &[u32] = &[
    15000, 15001, 15004, 15006, 15008, 15020, 15021, 15053, 15090,
];

fn prometheus_merge(pod: &mut Value, settings: &Settings, status_port: &str) -> Result<(), String> {
    let anns = annotations(pod);
    let find = |name: &str| {
        anns.iter()
            .find(|(k, _)| sanitize(k) == name)
            .map(|(_, v)| v.clone())
    };
    if let Some(s) = find("prometheus_io_scrape")
        && parse_go_bool(&s) == Some(false)
    {
        return Ok(());
    }
    let enabled = anns
        .get("prometheus.istio.io/merge-metrics")
        .and_then(|v| parse_go_bool(v))
        .unwrap_or_else(|| {
            settings.mesh["enablePrometheusMerge"]
                .as_bool()
                .unwrap_or(true)
        });
    if !enabled {
        return Ok(());
    }
    if find("prometheus_io_port").as_deref() == Some(status_port) {
        return Ok(());
    }
    let scrape = find("prometheus_io_scrape").unwrap_or_default();
    let path = find("prometheus_io_path").unwrap_or_default();
    let port = find("prometheus_io_port").unwrap_or_default();
    let targets_text = find("prometheus_istio_io_scrape_targets").unwrap_or_default();
    let check = |p: &str| -> Result<(), String> {
        let n: u32 = p
            .parse()
            .map_err(|_| format!("invalid prometheus port {p:?}"))?;
        if n == 0 || n > 65535 || p == status_port || RESERVED_PORTS.contains(&n) {
            return Err(format!("prometheus port {p} is reserved or invalid"));
        }
        Ok(())
    };
    let mut targets = Vec::new();
    for t in targets_text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let (p, path) = t.split_once(':').unwrap_or((t, "/metrics"));
        check(p)?;
        targets.push((p.to_string(), path.to_string()));
    }
    let (port, path) = match targets.first() {
        Some((p, pa)) => (p.clone(), pa.clone()),
        None => {
            if !port.is_empty() {
                check(&port)?;
            }
            (port, path)
        }
    };
    let has_config =
        !scrape.is_empty() || !path.is_empty() || !port.is_empty() || !targets.is_empty();
    if has_config && let Some(p) = proxy_mut(pod) {
        let mut text = format!(
            "{{\"scrape\":{},\"path\":{},\"port\":{}",
            go_json(&Value::from(scrape)),
            go_json(&Value::from(path)),
            go_json(&Value::from(port))
        );
        if !targets.is_empty() {
            let items: Vec<String> = targets
                .iter()
                .map(|(p, pa)| {
                    format!(
                        "{{\"port\":{},\"path\":{}}}",
                        go_json(&Value::from(p.as_str())),
                        go_json(&Value::from(pa.as_str()))
                    )
                })
                .collect();
            text.push_str(&format!(",\"targets\":[{}]", items.join(",")));
        }
        text.push('}');
        push_env(p, "ISTIO_PROMETHEUS_ANNOTATIONS", &text);
    }
    if let Some(m) = pod["metadata"]["annotations"].as_object_mut() {
        m.retain(|k, _| {
            !matches!(
                sanitize(k).as_str(),
                "prometheus_io_port"
                    | "prometheus_io_path"
                    | "prometheus_io_scrape"
                    | "prometheus_istio_io_scrape_targets"
            )
        });
    }
    set_annotation(pod, "prometheus.io/port", status_port);
    set_annotation(pod, "prometheus.io/path", "/stats/prometheus");
    set_annotation(pod, "prometheus.io/scrape", "true");
    Ok(())
}

fn secure_prometheus(pod: &mut Value) {
    if annotations(pod)
        .keys()
        .any(|k| sanitize(k) == "prometheus_istio_io_secure_port")
    {
        return;
    }
    let port = proxy_mut(pod).and_then(|p| {
        p["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == "ENVOY_SECURE_MERGED_METRICS_PORT")
            .and_then(|e| e["value"].as_str().map(String::from))
    });
    if let Some(port) = port.filter(|p| !p.is_empty() && p != "0") {
        set_annotation(pod, "prometheus.istio.io/secure-port", &port);
    }
}

const PROBES: [(&str, &str, &str); 3] = [
    ("readinessProbe", "readyz", "app-health"),
    ("livenessProbe", "livez", "app-health"),
    ("startupProbe", "startupz", "app-health"),
];

/// Probe rewriting: the kubelet's HTTP/TCP/gRPC probes go to the agent's status port,
/// which forwards them to the application (ISTIO_KUBE_APP_PROBERS).
fn rewrite_probes(pod: &mut Value, settings: &Settings, mesh_status_port: &str) {
    if proxy_mut(pod).is_none() {
        return;
    }
    let rewrite = annotations(pod)
        .get("sidecar.istio.io/rewriteAppHTTPProbers")
        .and_then(|v| parse_go_bool(v))
        .unwrap_or_else(|| {
            settings.values["sidecarInjectorWebhook"]["rewriteAppHTTPProbe"]
                .as_bool()
                .unwrap_or(true)
        });
    if !rewrite {
        return;
    }
    let mesh_port: i64 = mesh_status_port.parse().unwrap_or(15020);
    // 1. What the agent must probe, per container.
    let mut probers = Map::new();
    for list in ["initContainers", "containers"] {
        for c in pod["spec"][list].as_array().cloned().unwrap_or_default() {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            if name == PROXY {
                continue;
            }
            let named: BTreeMap<String, i64> = c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    Some((
                        p["name"].as_str()?.to_string(),
                        p["containerPort"].as_i64()?,
                    ))
                })
                .collect();
            let mut handlers: Vec<(String, Value, Option<i64>)> = Vec::new();
            for (field, suffix, prefix) in PROBES {
                if c[field].is_object() {
                    handlers.push((
                        format!("/{prefix}/{name}/{suffix}"),
                        c[field].clone(),
                        c[field]["timeoutSeconds"].as_i64(),
                    ));
                }
            }
            for (hook, suffix) in [("preStop", "prestopz"), ("postStart", "poststartz")] {
                if c["lifecycle"][hook].is_object() {
                    handlers.push((
                        format!("/app-lifecycle/{name}/{suffix}"),
                        c["lifecycle"][hook].clone(),
                        None,
                    ));
                }
            }
            for (url, h, timeout) in handlers {
                let mut prober = Map::new();
                let resolve = |port: &Value| -> Option<Value> {
                    match port {
                        Value::String(s) => match s.parse::<i64>() {
                            Ok(n) => Some(Value::from(n)),
                            Err(_) => named.get(s).map(|n| Value::from(*n)),
                        },
                        Value::Number(n) if n.as_i64() == Some(mesh_port) => None,
                        other => Some(other.clone()),
                    }
                };
                if h["httpGet"].is_object() {
                    let mut g = h["httpGet"].clone();
                    match resolve(&g["port"]) {
                        Some(p) => g["port"] = p,
                        None => continue,
                    }
                    prober.insert("httpGet".into(), g);
                } else if h["tcpSocket"].is_object() {
                    let mut t = h["tcpSocket"].clone();
                    match resolve(&t["port"]) {
                        Some(p) => t["port"] = p,
                        None => continue,
                    }
                    prober.insert("tcpSocket".into(), t);
                } else if h["grpc"].is_object() {
                    let mut g = h["grpc"].clone();
                    if let Some(o) = g.as_object_mut() {
                        o.entry("service").or_insert(Value::Null);
                    }
                    prober.insert("grpc".into(), g);
                } else {
                    continue;
                }
                if let Some(t) = timeout.filter(|t| *t != 0) {
                    prober.insert("timeoutSeconds".into(), Value::from(t));
                }
                probers.insert(url, Value::Object(prober));
            }
        }
    }
    if !probers.is_empty()
        && let Some(p) = proxy_mut(pod)
    {
        let text = prober_json(&probers);
        let existing = p["env"]
            .as_array_mut()
            .and_then(|a| a.iter_mut().find(|e| e["name"] == "ISTIO_KUBE_APP_PROBERS"));
        match existing {
            Some(e) => {
                let mut old: Map<String, Value> = e["value"]
                    .as_str()
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or_default();
                for (k, v) in probers {
                    old.entry(k).or_insert(v);
                }
                e["value"] = Value::from(prober_json(&old));
            }
            None => push_env(p, "ISTIO_KUBE_APP_PROBERS", &text),
        }
    }
    // 2. Point the probes at the agent.
    let status_port = annotations(pod)
        .get("status.sidecar.istio.io/port")
        .map(|v| v.parse::<i64>().unwrap_or(0))
        .unwrap_or(mesh_port);
    for list in ["initContainers", "containers"] {
        let Some(Value::Array(cs)) = pod["spec"].get_mut(list) else {
            continue;
        };
        for c in cs.iter_mut() {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            if name == PROXY {
                continue;
            }
            for (field, suffix, prefix) in PROBES {
                let url = format!("/{prefix}/{name}/{suffix}");
                if let Some(h) = c.get_mut(field).filter(|h| h.is_object()) {
                    rewrite_handler(h, &url, status_port);
                }
            }
            for (hook, suffix) in [("preStop", "prestopz"), ("postStart", "poststartz")] {
                let url = format!("/app-lifecycle/{name}/{suffix}");
                if let Some(h) = c["lifecycle"].get_mut(hook).filter(|h| h.is_object()) {
                    rewrite_handler(h, &url, status_port);
                }
            }
        }
    }
}

fn rewrite_handler(h: &mut Value, url: &str, port: i64) {
    let Some(o) = h.as_object_mut() else { return };
    if let Some(g) = o.get_mut("httpGet").and_then(Value::as_object_mut) {
        g.insert("port".into(), Value::from(port));
        g.insert("path".into(), Value::from(url));
        if g.get("scheme").and_then(Value::as_str) == Some("HTTPS") {
            g.insert("scheme".into(), Value::from("HTTP"));
        }
        return;
    }
    if o.remove("tcpSocket").is_some() || o.remove("grpc").is_some() {
        o.insert("httpGet".into(), json!({"path": url, "port": port}));
    }
}

/// The probers' JSON as Go writes it: map keys sorted, struct fields in declaration order.
fn prober_json(probers: &Map<String, Value>) -> String {
    let mut parts = Vec::new();
    for (url, p) in probers {
        let mut fields = Vec::new();
        if let Some(g) = p.get("httpGet") {
            let mut gf = Vec::new();
            for k in ["path", "port", "host", "scheme", "httpHeaders"] {
                if let Some(v) = g.get(k) {
                    if k != "port" && (v == "" || v.as_array().is_some_and(Vec::is_empty)) {
                        continue;
                    }
                    gf.push(format!("\"{k}\":{}", go_json(v)));
                }
            }
            fields.push(format!("\"httpGet\":{{{}}}", gf.join(",")));
        }
        if let Some(t) = p.get("tcpSocket") {
            let mut tf = vec![format!("\"port\":{}", go_json(&t["port"]))];
            if let Some(h) = t.get("host").filter(|h| *h != "") {
                tf.push(format!("\"host\":{}", go_json(h)));
            }
            fields.push(format!("\"tcpSocket\":{{{}}}", tf.join(",")));
        }
        if let Some(g) = p.get("grpc") {
            fields.push(format!(
                "\"grpc\":{{\"port\":{},\"service\":{}}}",
                go_json(&g["port"]),
                go_json(&g["service"])
            ));
        }
        if let Some(t) = p.get("timeoutSeconds") {
            fields.push(format!("\"timeoutSeconds\":{t}"));
        }
        parts.push(format!(
            "{}:{{{}}}",
            go_json(&Value::from(url.as_str())),
            fields.join(",")
        ));
    }
    format!("{{{}}}", parts.join(","))
}

fn apply_metadata(pod: &mut Value, template_pod: &Value, req: &Request, settings: &Settings) {
    if let Some(n) = req.proxy_envs.get("ISTIO_META_NETWORK") {
        pod["metadata"]["labels"]["topology.istio.io/network"] = Value::from(n.as_str());
    }
    let names = |list: &str| -> Value {
        match template_pod["spec"][list].as_array() {
            Some(a) if !a.is_empty() => Value::Array(a.iter().map(|c| c["name"].clone()).collect()),
            _ => Value::Null,
        }
    };
    let secrets = match template_pod["spec"]["imagePullSecrets"].as_array() {
        Some(a) if !a.is_empty() => Value::Array(a.iter().map(|c| c["name"].clone()).collect()),
        _ => Value::Null,
    };
    let revision = if req.revision.is_empty() {
        "default"
    } else {
        req.revision.as_str()
    };
    let status = format!(
        "{{\"initContainers\":{},\"containers\":{},\"volumes\":{},\"imagePullSecrets\":{},\"revision\":{}}}",
        go_json(&names("initContainers")),
        go_json(&names("containers")),
        go_json(&names("volumes")),
        go_json(&secrets),
        go_json(&Value::from(revision)),
    );
    set_annotation(pod, STATUS_ANNOTATION, &status);
    if !req.offline {
        for (k, v) in &settings.injected_annotations {
            set_annotation(pod, k, v);
        }
    }
}

fn reorder(pod: &mut Value, settings: &Settings, original: &Value) {
    let hold = effective_proxy_config(settings, original)
        .ok()
        .and_then(|pc| pc["holdApplicationUntilProxyStarts"].as_bool())
        .unwrap_or(false)
        || settings.values["global"]["proxy"]["holdApplicationUntilProxyStarts"]
            .as_bool()
            .unwrap_or(false);
    let spec = &mut pod["spec"];
    if let Some(Value::Array(cs)) = spec.get_mut("containers")
        && let Some(i) = cs.iter().position(|c| c["name"] == PROXY)
    {
        let p = cs.remove(i);
        if hold {
            cs.insert(0, p);
        } else {
            cs.push(p);
        }
    }
    let Some(Value::Array(inits)) = spec.get_mut("initContainers") else {
        return;
    };
    let move_first = |inits: &mut Vec<Value>, name: &str| {
        if let Some(i) = inits.iter().position(|c| c["name"] == name) {
            let c = inits.remove(i);
            inits.insert(0, c);
        }
    };
    let move_last = |inits: &mut Vec<Value>, name: &str| {
        if let Some(i) = inits.iter().position(|c| c["name"] == name) {
            let c = inits.remove(i);
            inits.push(c);
        }
    };
    if inits.iter().any(|c| c["name"] == PROXY) {
        for n in ["enable-core-dump", PROXY, "istio-validation", "istio-init"] {
            move_first(inits, n);
        }
    } else {
        move_first(inits, "istio-validation");
        move_last(inits, "istio-init");
        move_last(inits, "enable-core-dump");
    }
}
