//! The admission webhooks as the API server calls them: HTTPS on 15017 with meshd's
//! serving certificate (trusted through the root), AdmissionReview v1 in and out.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

fn shared_injection() -> std::path::PathBuf {
    shared().join("injection")
}

struct Hooks {
    _meshd: Meshd,
    config: TempDir,
    root: String,
    _dir: TempDir,
}

impl Hooks {
    fn start() -> Option<Hooks> {
        shared_or_skip("the webhooks with Istio's injector ConfigMap")?;
        if !isolate() {
            return None;
        }
        let dir = TempDir::new("webhook");
        let config = TempDir::new("webhook-config");
        // Istio's own injector ConfigMap and mesh config, in the istio namespace.
        config.copy_from(
            &shared_injection().join("istio-sidecar-injector.inject-tests.yaml"),
            "injector.yaml",
        );
        let mesh = std::fs::read_to_string(shared_injection().join("mesh.inject-tests.yaml"))
            .expect("mesh");
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": mesh},
        });
        config.write("mesh.json", &cm.to_string());
        let meshd = Meshd::start(config.path(), dir.path(), &[]);
        let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).expect("root");
        Some(Hooks {
            _meshd: meshd,
            config,
            root,
            _dir: dir,
        })
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = https_post(
            "127.0.0.1:15017",
            path,
            &self.root,
            "application/json",
            body.to_string().as_bytes(),
        )
        .expect("HTTPS request to 15017");
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }
}

fn review(uid: &str, namespace: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "namespace": namespace, "operation": "CREATE",
                    "kind": {"group": "", "version": "v1", "kind": object["kind"]},
                    "object": object},
    })
}

#[test]
fn inject_over_https_uses_the_injector_configmap() {
    let Some(h) = Hooks::start() else { return };
    // The Deployment of Istio's `hello` case, as the pod the API server would send.
    let input = std::fs::read_to_string(shared_injection().join("cases/hello.yaml")).expect("case");
    let golden = std::fs::read_to_string(shared_injection().join("cases/hello.yaml.injected"))
        .expect("golden");
    let deployment = meshd::inject::pipeline::yaml_value(&input).expect("yaml");
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": deployment["spec"]["template"]["metadata"], "spec": deployment["spec"]["template"]["spec"]});
    pod["metadata"]["generateName"] = json!("hello-fake-");
    pod["metadata"]["labels"]["pod-template-hash"] = json!("fake");
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "hello-fake", "controller": true, "uid": "u"}]);
    let (status, resp) = h.post("/inject", &review("u1", "default", pod.clone()));
    assert_eq!(status, 200, "{resp}");
    let r = &resp["response"];
    assert_eq!(r["uid"], "u1");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    use base64::Engine;
    let ops: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().expect("patch"))
            .expect("base64"),
    )
    .expect("JSON patch");
    // Never touches the namespace the API server fills in.
    assert!(!ops.to_string().contains("/metadata/namespace"), "{ops}");
    let base = meshd::inject::merge::normalize_pod(
        &json!({"metadata": pod["metadata"], "spec": pod["spec"]}),
    );
    let got = meshd::webhook::apply_patch(&base, &ops).expect("patch applies");
    let mut want =
        meshd::inject::pipeline::yaml_value(&golden).expect("golden")["spec"]["template"].clone();
    want["metadata"]["labels"]["pod-template-hash"] = json!("fake");
    let names = |p: &Value, list: &str| -> Vec<String> {
        p["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(
        names(&got, "initContainers"),
        names(&want, "initContainers")
    );
    assert_eq!(names(&got, "containers"), names(&want, "containers"));
    assert_eq!(got["spec"]["volumes"], want["spec"]["volumes"]);
    assert_eq!(got["metadata"]["labels"], want["metadata"]["labels"]);

    // A pod that opts out gets no patch.
    let mut opt_out = pod.clone();
    opt_out["metadata"]["annotations"]["sidecar.istio.io/inject"] = json!("false");
    let (_, resp) = h.post("/inject", &review("u2", "default", opt_out));
    assert_eq!(resp["response"]["allowed"], true);
    assert!(resp["response"]["patch"].is_null());

    // A bad annotation: refused with the reason, not an HTTP error.
    let mut bad = pod.clone();
    bad["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeInboundPorts"] = json!("80,x");
    let (status, resp) = h.post("/inject", &review("u3", "default", bad));
    assert_eq!(status, 200);
    assert_eq!(resp["response"]["allowed"], false);
    let msg = resp["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(msg.contains("excludeInboundPorts invalid"), "{msg}");

    // An edit of the ConfigMap is picked up: a policy of `disabled` skips pods without
    // an explicit opt-in.
    let text = std::fs::read_to_string(h.config.path().join("injector.yaml")).expect("read");
    h.config.write(
        "injector.yaml",
        &text.replace("policy: enabled", "policy: disabled"),
    );
    wait_for("policy: disabled in force", Duration::from_secs(10), || {
        let (_, resp) = h.post("/inject", &review("u4", "default", pod.clone()));
        resp["response"]["patch"].is_null().then_some(())
    });
}

#[test]
fn validate_refuses_bad_objects_with_reasons_and_never_fails() {
    let Some(h) = Hooks::start() else { return };
    let vs = |weights: (i32, i32)| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "reviews", "namespace": "default"},
               "spec": {"hosts": ["reviews"], "http": [{"route": [
                   {"destination": {"host": "reviews", "subset": "v1"}, "weight": weights.0},
                   {"destination": {"host": "reviews", "subset": "v2"}, "weight": weights.1}]}]}})
    };
    let (status, resp) = h.post("/validate", &review("a", "default", vs((50, 50))));
    assert_eq!(status, 200);
    assert_eq!(resp["response"]["allowed"], true, "{resp}");

    let (_, resp) = h.post("/validate", &review("b", "default", vs((60, 60))));
    assert_eq!(resp["response"]["allowed"], false);
    let msg = resp["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(msg.contains("total destination weight 120 != 100"), "{msg}");

    for (obj, want) in [
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "x"}, "spec": {"hosts": ["x"], "http": [{"match": [{"uri": {"regex": "(["}}],
                   "route": [{"destination": {"host": "x"}}]}]}}),
            "regex",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "x"}, "spec": {"hosts": ["x"], "http": [{"route": [{"destination": {"host": ""}}]}]}}),
            "destination host is empty",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                   "metadata": {"name": "x"}, "spec": {"host": "x", "subsets": [{"name": "v1", "labelz": {}}]}}),
            "labelz",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "x"}, "spec": "not an object"}),
            "spec",
        ),
    ] {
        let (status, resp) = h.post("/validate", &review("c", "default", obj));
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["response"]["allowed"], false, "{resp}");
        let msg = resp["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(msg.contains(want), "{want}: {msg}");
    }

    // Deletions and kinds meshd does not check are admitted.
    let mut del = review("d", "default", vs((60, 60)));
    del["request"]["operation"] = json!("DELETE");
    assert_eq!(h.post("/validate", &del).1["response"]["allowed"], true);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    assert_eq!(
        h.post("/validate", &review("e", "default", cm)).1["response"]["allowed"],
        true
    );

    // Malformed requests are client errors, never 500.
    for (ct, body) in [
        ("application/json", &b"not json"[..]),
        ("application/json", &b""[..]),
        ("text/plain", &b"{}"[..]),
        ("application/json", &b"{\"kind\": \"AdmissionReview\"}"[..]),
    ] {
        let (status, _) =
            https_post("127.0.0.1:15017", "/validate", &h.root, ct, body).expect("request");
        assert!(
            (400..500).contains(&status),
            "{ct} {:?}: {status}",
            String::from_utf8_lossy(body)
        );
    }
    let metrics = http_get("127.0.0.1:15014", "/metrics", &[]).expect("metrics");
    assert!(
        metrics.body.contains("galley_validation_failed 5"),
        "{}",
        metrics.body
    );
}
