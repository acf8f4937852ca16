//! The admission webhooks on 15017: `/inject` (sidecar injection: AdmissionReview in,
//! RFC 6902 JSON patch out) and `/validate` (Istio objects checked with meshd's own
//! diagnostics). Both always answer 200 with an AdmissionReview; failures are in it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::inject::merge::normalize_pod;
use crate::inject::pipeline::{self, Request, Settings};

/// `response` of an AdmissionReview answering `review`.
fn reply(review: &Value, response: Value) -> Value {
    let mut r = response;
    r["uid"] = review["request"]["uid"].clone();
    json!({
        "apiVersion": review["apiVersion"].as_str().unwrap_or("admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": r,
    })
}

/// Webhook URL parameters (`/inject/cluster/c1/net/n1`): cluster and network of the
/// proxies, as istiod reads them.
pub fn path_params(path: &str) -> BTreeMap<String, String> {
    let rest = path.trim_start_matches("/inject").trim_matches('/');
    let mut out = BTreeMap::new();
    if rest.is_empty() {
        return out;
    }
    let parts: Vec<&str> = if rest.starts_with(":ENV:") {
        rest.split(":ENV:")
            .filter(|p| !p.is_empty())
            .flat_map(|kv| kv.splitn(2, '=').collect::<Vec<_>>())
            .collect()
    } else {
        rest.split('/').collect()
    };
    for pair in parts.chunks(2) {
        let [k, v] = pair else { break };
        let v = v.replace("--slash--", "/");
        let key = match *k {
            "cluster" => "ISTIO_META_CLUSTER_ID".to_string(),
            "net" => "ISTIO_META_NETWORK".to_string(),
            other => other.to_uppercase(),
        };
        out.insert(key, v);
    }
    out
}

/// Answers an injection AdmissionReview.
pub fn inject_review(settings: &Settings, review: &Value, revision: &str) -> Value {
    inject_review_with(settings, review, revision, BTreeMap::new())
}

pub fn inject_review_with(
    settings: &Settings,
    review: &Value,
    revision: &str,
    mut proxy_envs: BTreeMap<String, String>,
) -> Value {
    let req = &review["request"];
    let mut pod = req["object"].clone();
    if !pod.is_object() {
        return reply(
            review,
            json!({"allowed": false, "status": {"message": "request.object is not a Pod"}}),
        );
    }
    if let Some(m) = pod["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    let namespace = pod["metadata"]["namespace"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or_else(|| req["namespace"].as_str())
        .unwrap_or_default()
        .to_string();
    let body = json!({"metadata": pod["metadata"].clone(), "spec": pod["spec"].clone()});
    if !pipeline::inject_required(settings, &body, &namespace, false) {
        return reply(review, json!({"allowed": true}));
    }
    // The pod's namespace is filled in for injection but never patched.
    let mut filled = body.clone();
    filled["metadata"]["namespace"] = Value::from(namespace.as_str());
    let (type_meta, deploy_meta) = pipeline::owner_of_pod(&filled, &namespace);
    if let Some(net) = pod["metadata"]["labels"]["topology.istio.io/network"].as_str() {
        proxy_envs.insert("ISTIO_META_NETWORK".into(), net.to_string());
    }
    let request = Request {
        pod: filled.clone(),
        type_meta,
        deploy_meta,
        revision: revision.to_string(),
        proxy_envs,
        offline: false,
    };
    match pipeline::inject(settings, &request) {
        Ok(result) => {
            let before = normalize_pod(&filled);
            let ops = diff(&before, &result);
            use base64::Engine;
            let patch = base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&ops).unwrap_or_default());
            reply(
                review,
                json!({"allowed": true, "patch": patch, "patchType": "JSONPatch"}),
            )
        }
        Err(e) => reply(
            review,
            json!({"allowed": false, "status": {"message": e, "code": 400}}),
        ),
    }
}

fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

/// An RFC 6902 patch turning `a` into `b`: objects member by member, everything else
/// replaced whole.
pub fn diff(a: &Value, b: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_at(a, b, "", &mut ops);
    ops
}

fn diff_at(a: &Value, b: &Value, path: &str, ops: &mut Vec<Value>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                if !y.contains_key(k) {
                    ops.push(json!({"op": "remove", "path": format!("{path}/{}", escape(k))}));
                } else {
                    diff_at(v, &y[k], &format!("{path}/{}", escape(k)), ops);
                }
            }
            for (k, v) in y {
                if !x.contains_key(k) {
                    ops.push(
                        json!({"op": "add", "path": format!("{path}/{}", escape(k)), "value": v}),
                    );
                }
            }
        }
        _ if a == b => {}
        _ => ops.push(json!({"op": "replace", "path": path, "value": b})),
    }
}

fn unescape(k: &str) -> String {
    k.replace("~1", "/").replace("~0", "~")
}

/// Applies an RFC 6902 patch (add, remove, replace, copy, move, test).
pub fn apply_patch(doc: &Value, ops: &Value) -> Result<Value, String> {
    let mut out = doc.clone();
    for op in ops.as_array().ok_or("a JSON patch is a list")? {
        let path = op["path"].as_str().ok_or("op without path")?;
        match op["op"].as_str().unwrap_or_default() {
            "add" => put(&mut out, path, op["value"].clone(), true)?,
            "replace" => put(&mut out, path, op["value"].clone(), false)?,
            "remove" => {
                take(&mut out, path)?;
            }
            "copy" | "move" => {
                let from = op["from"].as_str().ok_or("op without from")?;
                let v = if op["op"] == "move" {
                    take(&mut out, from)?
                } else {
                    out.pointer(from).cloned().ok_or("from not found")?
                };
                put(&mut out, path, v, true)?;
            }
            "test" => {
                if out.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test failed at {path}"));
                }
            }
            other => return Err(format!("unknown op {other:?}")),
        }
    }
    Ok(out)
}

fn split(path: &str) -> Result<(String, String), String> {
    let i = path
        .rfind('/')
        .ok_or_else(|| format!("bad path {path:?}"))?;
    Ok((path[..i].to_string(), unescape(&path[i + 1..])))
}

fn put(doc: &mut Value, path: &str, v: Value, add: bool) -> Result<(), String> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, key) = split(path)?;
    let target = doc
        .pointer_mut(&parent)
        .ok_or_else(|| format!("no parent for {path}"))?;
    match target {
        Value::Object(m) => {
            if !add && !m.contains_key(&key) {
                return Err(format!("replace of missing {path}"));
            }
            m.insert(key, v);
        }
        Value::Array(a) => {
            if key == "-" {
                a.push(v);
            } else {
                let i: usize = key.parse().map_err(|_| format!("bad index in {path}"))?;
                if add {
                    if i > a.len() {
                        return Err(format!("index out of range in {path}"));
                    }
                    a.insert(i, v);
                } else {
                    *a.get_mut(i)
                        .ok_or_else(|| format!("index out of range in {path}"))? = v;
                }
            }
        }
        _ => return Err(format!("{parent} is not a container")),
    }
    Ok(())
}

fn take(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, key) = split(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m
            .remove(&key)
            .ok_or_else(|| format!("remove of missing {path}")),
        Some(Value::Array(a)) => {
            let i: usize = key.parse().map_err(|_| format!("bad index in {path}"))?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(format!("index out of range in {path}"))
            }
        }
        _ => Err(format!("no parent for {path}")),
    }
}
