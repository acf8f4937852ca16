//! istiod as an oracle (tests/istiod-oracle, built by the test command from Istio's Go
//! module): the configuration istiod generates for one proxy from the same objects meshd
//! reads, for tests that compare the two (tests/fidelity.rs, and istioctl's output over
//! both in the conformance tests).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The oracle's binary, when built.
pub fn oracle() -> Option<PathBuf> {
    let p = std::env::var_os("MESHD_ISTIOD_ORACLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/go/istiod-oracle"));
    p.exists().then_some(p)
}

/// The documents of `files`, split into Kubernetes objects and Istio configuration, with
/// what a cluster adds: cluster IPs, defaulted target ports, and EndpointSlices for the
/// Services' Pods (there is no controller in either).
pub fn inputs(files: &[PathBuf]) -> (Vec<Value>, Vec<Value>) {
    let mut kube = Vec::new();
    let mut istio = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for doc in meshd::sources::yaml::parse_documents(&text) {
            let v = doc.expect("yaml").value;
            let items = match v.get("items").and_then(Value::as_array) {
                Some(items) if v["kind"] == "List" => items.clone(),
                _ => vec![v],
            };
            for mut item in items {
                if item["metadata"]["namespace"].is_null() {
                    item["metadata"]["namespace"] = json!("default");
                }
                let api = item["apiVersion"].as_str().unwrap_or_default();
                if api.contains("istio.io") {
                    istio.push(item);
                } else {
                    kube.push(item);
                }
            }
        }
    }
    let pods: Vec<Value> = kube
        .iter()
        .filter(|o| o["kind"] == "Pod")
        .cloned()
        .collect();
    let mut slices = Vec::new();
    let mut vip = 0;
    for svc in kube.iter_mut().filter(|o| o["kind"] == "Service") {
        vip += 1;
        if svc["spec"]["clusterIP"].is_null() {
            svc["spec"]["clusterIP"] = json!(format!("10.96.100.{vip}"));
        }
        let ports: Vec<Value> = svc["spec"]["ports"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|mut p| {
                if p["targetPort"].is_null() {
                    p["targetPort"] = p["port"].clone();
                }
                if p["protocol"].is_null() {
                    p["protocol"] = json!("TCP");
                }
                p
            })
            .collect();
        svc["spec"]["ports"] = json!(ports);
        let selector = svc["spec"]["selector"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let ns = svc["metadata"]["namespace"].clone();
        let endpoints: Vec<Value> = pods
            .iter()
            .filter(|p| p["metadata"]["namespace"] == ns)
            .filter(|p| selector.iter().all(|(k, v)| p["metadata"]["labels"][k] == *v))
            .map(|p| {
                json!({"addresses": [p["status"]["podIP"]],
                       "conditions": {"ready": true, "serving": true, "terminating": false},
                       "targetRef": {"kind": "Pod", "namespace": ns, "name": p["metadata"]["name"]}})
            })
            .collect();
        let name = svc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        slices.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports.iter().map(|p| json!({"name": p["name"].as_str().unwrap_or(""),
                "port": p["targetPort"], "protocol": "TCP"})).collect::<Vec<_>>(),
        }));
    }
    kube.extend(slices);
    (kube, istio)
}

pub fn yaml_docs(docs: &[Value]) -> String {
    // JSON is YAML: one document each.
    docs.iter()
        .map(|d| serde_json::to_string(d).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

pub struct Proxy {
    pub id: String,
    pub labels: Vec<(String, String)>,
    pub service_account: String,
}

/// istiod's dump for `proxy`.
pub fn istiod_dump(oracle: &Path, dir: &Path, proxy: &Proxy) -> Value {
    let labels: serde_json::Map<String, Value> = proxy
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let ns = proxy
        .id
        .split('~')
        .nth(2)
        .and_then(|p| p.rsplit_once('.'))
        .map(|(_, n)| n)
        .unwrap_or("default");
    let bootstrap = json!({"node": {"id": proxy.id, "cluster": "x", "metadata": {
        "NAMESPACE": ns, "LABELS": labels, "SERVICE_ACCOUNT": proxy.service_account,
        "CLUSTER_ID": "Kubernetes", "ISTIO_VERSION": "1.31.0", "INTERCEPTION_MODE": "REDIRECT",
    }}});
    let b = dir.join("bootstrap.json");
    std::fs::write(&b, bootstrap.to_string()).expect("write");
    let out = Command::new(oracle)
        .arg("-bootstrap")
        .arg(&b)
        .arg("-kube")
        .arg(dir.join("kube.yaml"))
        .arg("-config")
        .arg(dir.join("istio.yaml"))
        .arg("-mesh")
        .arg(dir.join("mesh.yaml"))
        .output()
        .expect("run the istiod oracle");
    assert!(
        out.status.success(),
        "istiod oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "istiod's dump: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Writes what [`istiod_dump`] reads into `dir`: kube.yaml, istio.yaml and mesh.yaml (the
/// `istio` ConfigMap's mesh, when among the objects).
pub fn write_inputs(dir: &Path, kube: &[Value], istio: &[Value]) {
    std::fs::create_dir_all(dir).expect("oracle dir");
    std::fs::write(dir.join("kube.yaml"), yaml_docs(kube)).expect("write");
    std::fs::write(dir.join("istio.yaml"), yaml_docs(istio)).expect("write");
    let mesh = kube
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"] == "istio"
                && o["metadata"]["namespace"] == "istio-system"
        })
        .and_then(|c| c["data"]["mesh"].as_str())
        .unwrap_or("");
    std::fs::write(dir.join("mesh.yaml"), mesh).expect("write");
}
