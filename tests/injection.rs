//! Istio's sidecar-injection golden cases (../shared/istio/injection/cases), through both
//! paths: `meshd kube-inject` (whole output text) and the `/inject` webhook (AdmissionReview
//! in, JSON patch out, applied and compared as Istio's own test compares).

use std::path::PathBuf;

use meshd::inject::pipeline::Settings;
use serde_json::{Value, json};

#[path = "support/istio_data.rs"]
mod istio_data;
use istio_data::shared_or_skip;

/// Istio's injection cases.
fn shared() -> PathBuf {
    istio_data::shared().join("injection")
}

fn settings() -> Settings {
    let cm = std::fs::read_to_string(shared().join("istio-sidecar-injector.inject-tests.yaml"))
        .expect("injector ConfigMap");
    let cm = meshd::inject::pipeline::yaml_value(&cm).expect("yaml");
    let mesh = std::fs::read_to_string(shared().join("mesh.inject-tests.yaml")).expect("mesh");
    Settings::new(
        cm["data"]["config"].as_str().expect("config"),
        cm["data"]["values"].as_str().expect("values"),
        &mesh,
    )
    .expect("settings")
}

struct Case {
    input: String,
    golden: String,
    skip_webhook: bool,
    skip_kube_inject: bool,
}

fn cases() -> Vec<Case> {
    let tsv = std::fs::read_to_string(shared().join("cases/CASES.tsv")).expect("CASES.tsv");
    tsv.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Case {
                input: f[0].to_string(),
                golden: f[1].to_string(),
                skip_webhook: f.get(2) == Some(&"True"),
                skip_kube_inject: f.get(3) == Some(&"True"),
            }
        })
        .collect()
}

fn first_difference(want: &str, got: &str) -> String {
    for (i, (w, g)) in want.lines().zip(got.lines()).enumerate() {
        if w != g {
            return format!("line {}:\n  want: {w}\n  got:  {g}", i + 1);
        }
    }
    format!(
        "lengths differ: want {} lines, got {}",
        want.lines().count(),
        got.lines().count()
    )
}

#[test]
fn kube_inject_matches_every_golden() {
    let Some(_) = shared_or_skip("Istio's kube-inject golden cases") else {
        return;
    };
    let s = settings();
    let mut failures = Vec::new();
    let mut ran = 0;
    for c in cases().iter().filter(|c| !c.skip_kube_inject) {
        ran += 1;
        let input = std::fs::read_to_string(shared().join("cases").join(&c.input)).expect("input");
        let golden =
            std::fs::read_to_string(shared().join("cases").join(&c.golden)).expect("golden");
        match meshd::inject::kubeinject::kube_inject(&s, &input) {
            Ok(out) if out.trim() == golden.trim() => {}
            Ok(out) => failures.push(format!(
                "{} → {}: {}",
                c.input,
                c.golden,
                first_difference(golden.trim(), out.trim())
            )),
            Err(e) => failures.push(format!("{}: error: {e}", c.input)),
        }
    }
    assert!(ran >= 47, "only {ran} cases");
    assert!(
        failures.is_empty(),
        "{} of {ran} kube-inject cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The pods Istio's webhook test derives from a manifest (see ../shared/istio/README.md).
fn pods_of(doc: &Value) -> Vec<(Value, String)> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ns = doc["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let template = |p: &str| doc.pointer(p).cloned().unwrap_or(json!({}));
    let owner = |api: &str, kind: &str, name: &str| json!([{"apiVersion": api, "kind": kind, "name": name, "controller": true, "uid": ""}]);
    let mut pod = match kind {
        "List" => {
            return doc["items"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(pods_of)
                .collect();
        }
        "Pod" => json!({"metadata": doc["metadata"], "spec": doc["spec"]}),
        "CronJob" => template("/spec/jobTemplate/spec/template"),
        "Deployment"
        | "DaemonSet"
        | "StatefulSet"
        | "Job"
        | "ReplicaSet"
        | "ReplicationController"
        | "DeploymentConfig" => template("/spec/template"),
        _ => return Vec::new(),
    };
    if kind != "Pod" {
        let meta = &mut pod["metadata"];
        if !meta.is_object() {
            *meta = json!({});
        }
        if kind == "Deployment" {
            meta["ownerReferences"] = owner("apps/v1", "ReplicaSet", &format!("{name}-fake"));
            meta["generateName"] = json!(format!("{name}-fake-"));
            meta["labels"]["pod-template-hash"] = json!("fake");
        } else {
            let api = doc["apiVersion"].as_str().unwrap_or_default();
            meta["ownerReferences"] = owner(api, kind, &name);
            meta["generateName"] = json!(name);
        }
    }
    vec![(pod, ns)]
}

fn docs(text: &str) -> Vec<Value> {
    meshd::inject::kubeinject::split_documents(text)
        .expect("documents")
        .iter()
        .map(|d| meshd::inject::pipeline::yaml_value(d).expect("yaml"))
        .collect()
}

/// Istio's comparison: typed JSON, without the status annotation and with
/// fieldRef.apiVersion blanked.
fn comparable(pod: &Value) -> Value {
    let mut p = meshd::inject::merge::normalize_pod(pod);
    if let Some(a) = p["metadata"]["annotations"].as_object_mut() {
        a.remove("sidecar.istio.io/status");
        if a.is_empty() {
            p["metadata"]
                .as_object_mut()
                .map(|m| m.remove("annotations"));
        }
    }
    for list in ["containers", "initContainers"] {
        for c in p["spec"][list].as_array_mut().into_iter().flatten() {
            for e in c["env"].as_array_mut().into_iter().flatten() {
                if let Some(f) = e
                    .pointer_mut("/valueFrom/fieldRef")
                    .and_then(Value::as_object_mut)
                {
                    f.remove("apiVersion");
                }
            }
        }
    }
    p
}

#[test]
fn webhook_matches_every_golden() {
    let Some(_) = shared_or_skip("Istio's webhook golden cases") else {
        return;
    };
    let s = settings();
    let mut failures = Vec::new();
    let mut ran = 0;
    for c in cases().iter().filter(|c| !c.skip_webhook) {
        let input = std::fs::read_to_string(shared().join("cases").join(&c.input)).expect("input");
        let golden =
            std::fs::read_to_string(shared().join("cases").join(&c.golden)).expect("golden");
        let inputs: Vec<(Value, String)> = docs(&input).iter().flat_map(pods_of).collect();
        let wants: Vec<(Value, String)> = docs(&golden).iter().flat_map(pods_of).collect();
        assert_eq!(inputs.len(), wants.len(), "{}", c.input);
        for (i, ((pod, ns), (want, _))) in inputs.iter().zip(&wants).enumerate() {
            ran += 1;
            let review = json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": format!("uid-{i}"), "namespace": if ns.is_empty() { "default" } else { ns },
                            "kind": {"group": "", "version": "v1", "kind": "Pod"},
                            "operation": "CREATE", "object": pod},
            });
            let resp = meshd::webhook::inject_review(&s, &review, "default");
            let r = &resp["response"];
            assert_eq!(r["uid"], json!(format!("uid-{i}")));
            let mut got = pod.clone();
            if let Some(patch) = r["patch"].as_str() {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(patch)
                    .expect("base64 patch");
                let ops: Value = serde_json::from_slice(&bytes).expect("JSON patch");
                got = meshd::webhook::apply_patch(&meshd::inject::merge::normalize_pod(pod), &ops)
                    .expect("patch applies");
            } else if r["allowed"] != true {
                failures.push(format!("{}[{i}]: refused: {}", c.input, r["status"]));
                continue;
            }
            let (g, w) = (comparable(&got), comparable(want));
            if g != w {
                let gy = meshd::yaml_out::to_string(&g);
                let wy = meshd::yaml_out::to_string(&w);
                failures.push(format!("{}[{i}]: {}", c.input, first_difference(&wy, &gy)));
            }
        }
    }
    assert!(ran >= 47, "only {ran} pods");
    assert!(
        failures.is_empty(),
        "{} of {ran} webhook pods differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// What must match between meshd's own templates and Istio's for a pod: containers,
/// volumes, the proxy's arguments and environment, labels and annotations.
fn shape(pod: &Value) -> Value {
    let names = |list: &str| -> Vec<String> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect()
    };
    let proxy = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| pod["spec"][*l].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == "istio-proxy")
        .unwrap_or(Value::Null);
    let env: Vec<Value> = proxy["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| json!([e["name"], e["value"], e["valueFrom"]]))
        .collect();
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut annotations = pod["metadata"]["annotations"].clone();
    if let Some(a) = annotations.as_object_mut() {
        a.remove("sidecar.istio.io/status");
    }
    json!({
        "initContainers": names("initContainers"),
        "containers": names("containers"),
        "volumes": names("volumes"),
        "proxyArgs": proxy["args"],
        "proxyEnv": env,
        "proxyProbes": [proxy["readinessProbe"], proxy["startupProbe"], proxy["lifecycle"]],
        "proxySecurity": proxy["securityContext"],
        "proxyResources": proxy["resources"],
        "labels": pod["metadata"]["labels"],
        "annotations": keys(&annotations),
    })
}

#[test]
fn built_in_templates_inject_what_istios_do() {
    let Some(_) = shared_or_skip("built-in templates against Istio's injection goldens") else {
        return;
    };
    // meshd's own `sidecar` template with its default values, against Istio's template
    // with the golden tests' values: same pods but for the image.
    let ours = meshd::inject::settings_from_files(None, None, None).expect("built-in settings");
    let theirs = settings();
    let mut failures = Vec::new();
    let mut compared = 0;
    for c in cases()
        .iter()
        .filter(|c| !c.skip_kube_inject && !c.skip_webhook)
    {
        let input = std::fs::read_to_string(shared().join("cases").join(&c.input)).expect("input");
        // Only the `sidecar` template is built in with Istio's full behaviour.
        if input.contains("inject.istio.io/templates") {
            continue;
        }
        let a = meshd::inject::kubeinject::kube_inject(&ours, &input);
        let b = meshd::inject::kubeinject::kube_inject(&theirs, &input).expect("istio's template");
        let a = match a {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{}: {e}", c.input));
                continue;
            }
        };
        let pa: Vec<Value> = docs(&a)
            .iter()
            .flat_map(pods_of)
            .map(|(p, _)| shape(&p))
            .collect();
        let pb: Vec<Value> = docs(&b)
            .iter()
            .flat_map(pods_of)
            .map(|(p, _)| shape(&p))
            .collect();
        compared += 1;
        if pa != pb {
            let ya = meshd::yaml_out::to_string(&json!(pa))
                .replace("docker.io/istio/proxyv2:1.28.0", "IMAGE");
            let yb = meshd::yaml_out::to_string(&json!(pb))
                .replace("registry.istio.io/testing/proxyv2:latest", "IMAGE");
            if ya != yb {
                failures.push(format!("{}: {}", c.input, first_difference(&yb, &ya)));
            }
        }
    }
    assert!(compared > 30, "compared {compared}");
    assert!(
        failures.is_empty(),
        "{} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn kube_inject_command_takes_configmaps_or_bare_files() {
    let Some(_) = shared_or_skip("kube-inject with Istio's injector ConfigMap and cases") else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_meshd");
    let case = shared().join("cases/hello.yaml");
    let golden =
        std::fs::read_to_string(shared().join("cases/hello.yaml.injected")).expect("golden");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(bin)
            .arg("kube-inject")
            .arg("-f")
            .arg(&case)
            .args(args)
            .output()
            .expect("meshd kube-inject");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    };
    // The injector ConfigMap as a whole, and the bare mesh config.
    let cm = shared().join("istio-sidecar-injector.inject-tests.yaml");
    let mesh = shared().join("mesh.inject-tests.yaml");
    let out = run(&[
        "--injectConfigFile".as_ref(),
        cm.as_os_str(),
        "--meshConfigFile".as_ref(),
        mesh.as_os_str(),
    ]);
    assert_eq!(out.trim(), golden.trim());
    // The bare config plus a values file, and the mesh config as an `istio` ConfigMap.
    let dir = std::env::temp_dir().join(format!("meshd-ki-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let v = meshd::inject::pipeline::yaml_value(&std::fs::read_to_string(&cm).expect("cm"))
        .expect("yaml");
    let config = dir.join("config.yaml");
    std::fs::write(&config, v["data"]["config"].as_str().expect("config")).expect("write");
    let values = dir.join("values.json");
    std::fs::write(&values, v["data"]["values"].as_str().expect("values")).expect("write");
    let mesh_cm = dir.join("mesh-cm.yaml");
    let mesh_text = std::fs::read_to_string(&mesh).expect("mesh");
    std::fs::write(
        &mesh_cm,
        meshd::yaml_out::to_string(&json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio"}, "data": {"mesh": mesh_text}})),
    )
    .expect("write");
    let out = run(&[
        "--injectConfigFile".as_ref(),
        config.as_os_str(),
        "--valuesFile".as_ref(),
        values.as_os_str(),
        "--meshConfigFile".as_ref(),
        mesh_cm.as_os_str(),
    ]);
    assert_eq!(out.trim(), golden.trim());
    // No settings at all: meshd's built-in ones.
    let out = run(&[]);
    assert!(out.contains("docker.io/istio/proxyv2"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The pods of `input` injected with `settings`, the proxy images made equal.
fn injected_pods(settings: &Settings, input: &str) -> Vec<Value> {
    let out = meshd::inject::kubeinject::kube_inject(settings, input).expect("inject");
    let text = serde_json::to_string(
        &docs(&out)
            .iter()
            .flat_map(pods_of)
            .map(|(p, _)| p)
            .collect::<Vec<_>>(),
    )
    .expect("json")
    .replace("docker.io/istio/proxyv2:1.28.0", "IMAGE")
    .replace("registry.istio.io/testing/proxyv2:latest", "IMAGE");
    serde_json::from_str(&text).expect("json")
}

/// meshd's built-in `grpc-agent` and `grpc-simple` templates inject what Istio's do,
/// whole pods compared; grpc-simple's bootstrap script is meshd's own and is run to check
/// the bootstrap it writes.
#[test]
fn built_in_grpc_templates_inject_what_istios_do() {
    let Some(_) = shared_or_skip("built-in gRPC templates against Istio's") else {
        return;
    };
    let ours = meshd::inject::settings_from_files(None, None, None).expect("built-in settings");
    let theirs = settings();
    let input = std::fs::read_to_string(shared().join("cases/grpc-agent.yaml")).expect("input");
    let (a, b) = (injected_pods(&ours, &input), injected_pods(&theirs, &input));
    let (ya, yb) = (
        meshd::yaml_out::to_string(&json!(a)),
        meshd::yaml_out::to_string(&json!(b)),
    );
    assert!(ya == yb, "grpc-agent: {}", first_difference(&yb, &ya));
    assert!(
        ya.contains("DISABLE_ENVOY") && ya.contains("grpc-bootstrap.json"),
        "the agent was injected: {ya}"
    );

    let input = std::fs::read_to_string(shared().join("cases/grpc-simple.yaml")).expect("input");
    let (mut a, mut b) = (injected_pods(&ours, &input), injected_pods(&theirs, &input));
    // Istio's script (and its ISTIO_NAMESPACE with a stray newline) differ on purpose.
    let script = a[0]["spec"]["initContainers"][0]["command"][2]
        .as_str()
        .expect("script")
        .to_string();
    for p in [&mut a, &mut b] {
        let init = &mut p[0]["spec"]["initContainers"][0];
        init["command"][2] = json!("SCRIPT");
        init["env"][3]["value"] = json!("NAMESPACE");
    }
    let (ya, yb) = (
        meshd::yaml_out::to_string(&json!(a)),
        meshd::yaml_out::to_string(&json!(b)),
    );
    assert!(ya == yb, "grpc-simple: {}", first_difference(&yb, &ya));
    // The bootstrap meshd's init container writes: valid JSON with the pod's node id.
    let dir = std::env::temp_dir().join(format!("meshd-grpc-simple-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bootstrap.json");
    let script = script.replace("/var/lib/grpc/data/bootstrap.json", &path.to_string_lossy());
    let status = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("INSTANCE_IP", "10.1.2.3")
        .env("POD_NAME", "grpc-abc")
        .env("POD_NAMESPACE", "apps")
        .env("ISTIO_NAMESPACE", "istio-system")
        .status()
        .expect("sh");
    assert!(status.success());
    let bootstrap: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("bootstrap")).expect("JSON");
    assert_eq!(
        bootstrap["xds_servers"][0]["server_uri"],
        "dns:///istiod.istio-system.svc:15010"
    );
    assert_eq!(
        bootstrap["node"]["id"],
        "sidecar~10.1.2.3~grpc-abc.apps~cluster.local"
    );
    assert_eq!(bootstrap["node"]["metadata"]["GENERATOR"], "grpc");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sidecar.istio.io/userVolume` and `userVolumeMount` with the built-in templates, as
/// with Istio's.
#[test]
fn built_in_templates_take_user_volumes() {
    let Some(_) = shared_or_skip("user volumes against Istio's injection templates") else {
        return;
    };
    let ours = meshd::inject::settings_from_files(None, None, None).expect("built-in settings");
    let theirs = settings();
    for template in ["sidecar", "grpc-agent"] {
        let input = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    inject.istio.io/templates: {template}\n    sidecar.istio.io/userVolume: '{{\"extra\":{{\"emptyDir\":{{}}}}}}'\n    sidecar.istio.io/userVolumeMount: '{{\"extra\":{{\"mountPath\":\"/extra\",\"readOnly\":true}}}}'\nspec:\n  containers:\n  - {{name: app, image: app}}\n"
        );
        let pick = |pods: &[Value]| -> (Value, Value) {
            let spec = &pods[0]["spec"];
            let volume = spec["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == "extra")
                .cloned()
                .unwrap_or(Value::Null);
            let mount = spec["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(spec["initContainers"].as_array().into_iter().flatten())
                .filter(|c| c["name"] == "istio-proxy")
                .flat_map(|c| c["volumeMounts"].as_array().cloned().unwrap_or_default())
                .find(|m| m["name"] == "extra")
                .unwrap_or(Value::Null);
            (volume, mount)
        };
        let (va, ma) = pick(&injected_pods(&ours, &input));
        let (vb, mb) = pick(&injected_pods(&theirs, &input));
        assert_eq!(va, json!({"name": "extra", "emptyDir": {}}), "{template}");
        assert_eq!(
            ma,
            json!({"name": "extra", "mountPath": "/extra", "readOnly": true}),
            "{template}"
        );
        assert_eq!((va, ma), (vb, mb), "{template}: as Istio's");
    }
}
