//! `meshd kube-inject`: offline injection of manifests, like `istioctl kube-inject`.
//! Workloads (Deployment, DaemonSet, ReplicaSet, StatefulSet, Job, CronJob,
//! ReplicationController, DeploymentConfig, Pod, and those inside a List) get the sidecar;
//! every other document passes through byte for byte. Output is YAML as kubectl and
//! istioctl write it, each document followed by `---`.

use serde_json::{Map, Value, json};

use super::merge::normalize_pod;
use super::pipeline::{Request, Settings, inject, inject_required, owner_of_pod};

/// The kinds kube-inject understands (matched by kind, whatever the apiVersion).
const WORKLOADS: &[&str] = &[
    "Deployment",
    "DaemonSet",
    "ReplicaSet",
    "StatefulSet",
    "Job",
    "CronJob",
    "ReplicationController",
    "DeploymentConfig",
    "Pod",
    "List",
];

/// Splits a stream as Kubernetes' YAML reader does: a line starting with `---` ends a
/// document; empty documents are dropped.
pub fn split_documents(text: &str) -> Result<Vec<String>, String> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    for line in text.replace("\r\n", "\n").split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("---") {
            let rest = rest.trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                return Err(format!(
                    "invalid YAML document separator: {}",
                    line.trim_end()
                ));
            }
            if !cur.trim().is_empty() {
                docs.push(std::mem::take(&mut cur));
            }
            cur.clear();
            continue;
        }
        cur.push_str(line);
    }
    if !cur.trim().is_empty() {
        if !cur.ends_with('\n') {
            cur.push('\n');
        }
        docs.push(cur);
    }
    Ok(docs)
}

/// Injects every workload in `text`; the output as `istioctl kube-inject` prints it.
pub fn kube_inject(settings: &Settings, text: &str) -> Result<String, String> {
    let mut out = String::new();
    for doc in split_documents(text)? {
        let value = super::pipeline::yaml_value(&doc)?;
        let kind = value["kind"].as_str().unwrap_or_default();
        if !WORKLOADS.contains(&kind) {
            out.push_str(&doc);
            out.push_str("---\n");
            continue;
        }
        let injected = inject_object(settings, value)?;
        out.push_str(&crate::yaml_out::to_string(&injected));
        out.push_str("---\n");
    }
    Ok(out)
}

/// Where an object keeps its pod template: (metadata pointer, spec pointer).
fn template_paths(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "Pod" => Some(("/metadata", "/spec")),
        // istioctl reads and writes the job template's metadata for CronJobs.
        "CronJob" => Some((
            "/spec/jobTemplate/metadata",
            "/spec/jobTemplate/spec/template/spec",
        )),
        _ => Some(("/spec/template/metadata", "/spec/template/spec")),
    }
}

fn inject_object(settings: &Settings, mut obj: Value) -> Result<Value, String> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    if kind == "List" {
        let items = obj["items"].as_array().cloned().unwrap_or_default();
        let mut out = Vec::new();
        for item in items {
            let k = item["kind"].as_str().unwrap_or_default();
            if WORKLOADS.contains(&k) && k != "List" {
                out.push(inject_object(settings, item)?);
            } else {
                out.push(item);
            }
        }
        return Ok(json!({
            "apiVersion": obj["apiVersion"],
            "kind": "List",
            "metadata": obj.get("metadata").filter(|m| m.is_object()).cloned().unwrap_or(json!({})),
            "items": out,
        }));
    }
    obj = normalize_object(&kind, obj);
    let Some((meta_path, spec_path)) = template_paths(&kind) else {
        return Ok(obj);
    };
    if matches!(kind.as_str(), "ReplicationController" | "DeploymentConfig")
        && obj.pointer("/spec/template").is_none_or(Value::is_null)
    {
        return Err(format!(
            "{kind} {}: spec.template is required value",
            obj["metadata"]["name"]
        ));
    }
    let metadata = obj.pointer(meta_path).cloned().unwrap_or(json!({}));
    let spec = obj.pointer(spec_path).cloned().unwrap_or(json!({}));
    let pod = json!({"metadata": metadata, "spec": spec});
    if pod["spec"]["hostNetwork"] == true {
        return Ok(obj);
    }
    let namespace = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !inject_required(settings, &pod, &namespace, true) {
        return Ok(obj);
    }
    let obj_ns = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ((api, k), (name, ns)) = if kind == "Pod" {
        owner_of_pod(&pod, &obj_ns)
    } else {
        (
            (
                obj["apiVersion"].as_str().unwrap_or_default().to_string(),
                kind.clone(),
            ),
            (
                obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                obj_ns.clone(),
            ),
        )
    };
    let req = Request {
        pod,
        type_meta: (api, k),
        deploy_meta: (name, ns),
        revision: String::new(),
        proxy_envs: Default::default(),
        offline: true,
    };
    let result = inject(settings, &req)?;
    set_pointer(&mut obj, meta_path, result["metadata"].clone());
    set_pointer(&mut obj, spec_path, result["spec"].clone());
    if kind == "Pod"
        && let Some(o) = obj.as_object_mut()
    {
        o.insert("status".into(), json!({}));
    }
    Ok(normalize_object(&kind, obj))
}

fn set_pointer(obj: &mut Value, pointer: &str, v: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        if i == parts.len() - 1 {
            cur[*p] = v;
            return;
        }
        cur = &mut cur[*p];
    }
}

/// The object as Go marshals its typed form: struct fields without omitempty present,
/// empty optional fields gone.
fn normalize_object(kind: &str, obj: Value) -> Value {
    let mut o = obj;
    let meta =
        normalize_pod(&json!({"metadata": o["metadata"].clone(), "spec": {}}))["metadata"].clone();
    o["metadata"] = meta;
    let zeros = |keys: &[&str]| -> Value {
        Value::Object(
            keys.iter()
                .map(|k| (k.to_string(), Value::from(0)))
                .collect(),
        )
    };
    let template_ptr = match kind {
        "Pod" => None,
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => Some("/spec/template"),
    };
    if kind == "Pod" {
        let pod = normalize_pod(&json!({"metadata": o["metadata"], "spec": o["spec"]}));
        o["spec"] = pod["spec"].clone();
    } else if let Some(tp) = template_ptr
        && let Some(t) = o.pointer(tp).cloned().filter(Value::is_object)
    {
        let pod = normalize_pod(
            &json!({"metadata": t.get("metadata").cloned().unwrap_or(json!({})), "spec": t.get("spec").cloned().unwrap_or(json!({}))}),
        );
        set_pointer(
            &mut o,
            tp,
            json!({"metadata": pod["metadata"], "spec": pod["spec"]}),
        );
    }
    if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
        match kind {
            "Deployment" => {
                spec.entry("selector").or_insert(Value::Null);
                spec.entry("strategy").or_insert(json!({}));
            }
            "DaemonSet" => {
                spec.entry("selector").or_insert(Value::Null);
                spec.entry("updateStrategy").or_insert(json!({}));
            }
            "StatefulSet" => {
                spec.entry("selector").or_insert(Value::Null);
                spec.entry("serviceName").or_insert(json!(""));
                spec.entry("updateStrategy").or_insert(json!({}));
            }
            "ReplicaSet" => {
                spec.entry("selector").or_insert(Value::Null);
            }
            "DeploymentConfig" => {
                let strategy = spec.entry("strategy").or_insert(json!({}));
                if let Some(s) = strategy.as_object_mut() {
                    s.entry("resources").or_insert(json!({}));
                }
                spec.entry("test").or_insert(json!(false));
                spec.entry("replicas").or_insert(json!(0));
                spec.entry("triggers").or_insert(Value::Null);
                spec.remove("paused");
                if spec.get("minReadySeconds") == Some(&json!(0)) {
                    spec.remove("minReadySeconds");
                }
                if let Some(Value::Array(ts)) = spec.get_mut("triggers") {
                    for t in ts {
                        if let Some(p) = t
                            .get_mut("imageChangeParams")
                            .and_then(Value::as_object_mut)
                        {
                            p.entry("from").or_insert(json!({}));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let status = match kind {
        "Deployment" | "Job" | "CronJob" | "Pod" => json!({}),
        "ReplicaSet" | "ReplicationController" => zeros(&["replicas"]),
        "StatefulSet" => zeros(&["replicas", "availableReplicas"]),
        "DaemonSet" => zeros(&[
            "currentNumberScheduled",
            "numberMisscheduled",
            "desiredNumberScheduled",
            "numberReady",
        ]),
        "DeploymentConfig" => zeros(&[
            "latestVersion",
            "observedGeneration",
            "replicas",
            "updatedReplicas",
            "availableReplicas",
            "unavailableReplicas",
        ]),
        _ => return o,
    };
    if let Some(m) = o.as_object_mut() {
        let mut merged = status;
        if let (Some(Value::Object(existing)), Some(z)) = (m.get("status"), merged.as_object_mut())
        {
            for (k, v) in existing {
                z.insert(k.clone(), v.clone());
            }
        }
        m.insert("status".into(), merged);
    }
    o
}
