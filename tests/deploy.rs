//! deploy/: the manifests `kubectl apply -f crds/ -f deploy/` installs. Checked offline
//! against Kubernetes' schemas (kubernetes-validate, strict), and for agreement with what
//! meshd itself expects (ConfigMaps = built-in defaults, names it patches, ports).

#[path = "support/istio_data.rs"]
mod istio_data;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn objects(dir: &str) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .expect(dir)
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            meshd::sources::yaml::parse_documents(&text)
                .into_iter()
                .map(|d| d.expect("YAML").value)
                .filter(|v| !v.is_null())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("deploy/ has no {kind} {name}"))
}

#[test]
fn configmaps_are_the_built_in_defaults() {
    let objs = objects("deploy");
    let mesh = find(&objs, "ConfigMap", "istio");
    assert_eq!(mesh["metadata"]["namespace"], "istio-system");
    // Regenerate with scripts/gen-configmaps.py.
    assert_eq!(
        mesh["data"]["mesh"].as_str(),
        Some(meshd::inject::defaults::MESH)
    );
    let inj = find(&objs, "ConfigMap", "istio-sidecar-injector");
    assert_eq!(
        inj["data"]["config"].as_str(),
        Some(meshd::inject::defaults::CONFIG)
    );
    let values: Value =
        serde_json::from_str(inj["data"]["values"].as_str().expect("values")).expect("JSON");
    let defaults: Value = serde_json::from_str(meshd::inject::defaults::VALUES).expect("JSON");
    assert_eq!(values, defaults);
}

#[test]
fn names_and_ports_are_istiods() {
    let objs = objects("deploy");
    let svc = find(&objs, "Service", "istiod");
    let ports: Vec<(i64, i64)> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap_or(0),
                p["targetPort"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    for want in [(15010, 15010), (15012, 15012), (443, 15017), (15014, 15014)] {
        assert!(ports.contains(&want), "{want:?} in {ports:?}");
    }
    let mutating = find(
        &objs,
        "MutatingWebhookConfiguration",
        "istio-sidecar-injector",
    );
    for h in mutating["webhooks"].as_array().expect("webhooks") {
        assert_eq!(h["clientConfig"]["service"]["name"], "istiod");
        assert_eq!(h["clientConfig"]["service"]["path"], "/inject");
        assert_eq!(h["clientConfig"]["service"]["port"], 443);
    }
    let validating = find(
        &objs,
        "ValidatingWebhookConfiguration",
        "istio-validator-istio-system",
    );
    for h in validating["webhooks"].as_array().expect("webhooks") {
        assert_eq!(h["clientConfig"]["service"]["path"], "/validate");
    }
    // The ClusterRole lets meshd patch exactly these two configurations.
    let role = find(&objs, "ClusterRole", "istiod-clusterrole-istio-system");
    let names: Vec<&str> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .flat_map(|r| r["resourceNames"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        names,
        ["istio-sidecar-injector", "istio-validator-istio-system"]
    );
    let verbs_for = |res: &str| -> Vec<String> {
        role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .filter(|r| {
                r["resources"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == res))
            })
            .flat_map(|r| r["verbs"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    assert_eq!(verbs_for("tokenreviews"), ["create"]);
    assert!(
        !verbs_for("secrets")
            .iter()
            .any(|v| v != "get" && v != "list" && v != "watch"),
        "cluster-wide secrets are read-only"
    );
    let deploy = find(&objs, "Deployment", "istiod");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["serviceAccountName"],
        "istiod"
    );
}

fn validator() -> Option<PathBuf> {
    let p = std::env::var_os("KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-tools/bin/kubernetes-validate"));
    if p.exists() {
        return Some(p);
    }
    if std::env::var("MESHD_REQUIRE_ENVOY").is_ok_and(|v| v == "1") {
        panic!("kubernetes-validate is not installed (scripts/test installs it)");
    }
    eprintln!("SKIPPED: kubernetes-validate is not installed (run ./scripts/test)");
    None
}

fn validate(paths: &[PathBuf]) {
    let Some(v) = validator() else { return };
    let out = Command::new(v)
        .arg("--strict")
        .args(paths)
        .output()
        .expect("kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("ERROR") && !text.contains("failed"),
        "{text}"
    );
    assert!(text.contains("passed"), "{text}");
}

#[test]
fn deploy_and_crds_pass_kubernetes_schemas() {
    let mut paths: Vec<PathBuf> = ["deploy", "deploy/addons", "crds"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(repo().join(d))
                .expect(d)
                .flatten()
                .map(|e| e.path())
        })
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // Kustomize's own file, not an object (checked below).
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    paths.sort();
    validate(&paths);
}

/// `kubectl apply -k deploy/addons/` applies every addon manifest and makes every
/// dashboard a key of ConfigMap meshd-dashboards, which grafana.yaml mounts.
#[test]
fn the_addons_kustomization_names_every_manifest_and_dashboard() {
    let dir = repo().join("deploy/addons");
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization");
    let k: Value = meshd::sources::yaml::parse_documents(&text)
        .into_iter()
        .next()
        .expect("one document")
        .expect("YAML")
        .value;
    let listed = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let mut resources = listed(&k["resources"]);
    resources.sort();
    let mut manifests: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/addons")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    manifests.sort();
    assert_eq!(resources, manifests);
    let generator = k["configMapGenerator"]
        .as_array()
        .and_then(|g| g.iter().find(|c| c["name"] == "meshd-dashboards"))
        .expect("a meshd-dashboards generator");
    let mut files = listed(&generator["files"]);
    files.sort();
    let mut dashboards: Vec<String> = std::fs::read_dir(dir.join("dashboards"))
        .expect("dashboards")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|n| format!("dashboards/{n}"))
        .collect();
    dashboards.sort();
    assert_eq!(files, dashboards);
    let grafana = std::fs::read_to_string(dir.join("grafana.yaml")).expect("grafana.yaml");
    assert!(grafana.contains("configMap: {name: meshd-dashboards}"));
}

#[test]
fn kube_inject_output_passes_kubernetes_schemas() {
    let cases = istio_data::shared().join("injection/cases");
    if !cases.exists() {
        istio_data::skipped(
            "kube-inject output of Istio's injection cases against Kubernetes schemas",
        );
        return;
    }
    // Injected with the built-in defaults: what `meshd kube-inject -f` prints by default.
    let settings = meshd::inject::settings_from_files(None, None, None).expect("defaults");
    let dir = std::env::temp_dir().join(format!("meshd-kubeinject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut paths = Vec::new();
    for name in [
        "hello.yaml",
        "statefulset.yaml",
        "daemonset.yaml",
        "pod.yaml",
        "hello-probes.yaml",
        "list-frontend.yaml",
        "replicaset.yaml",
    ] {
        let input = std::fs::read_to_string(cases.join(name)).expect("case");
        let out = meshd::inject::kubeinject::kube_inject(&settings, &input).expect("injects");
        let p = dir.join(name);
        std::fs::write(&p, out).expect("write");
        paths.push(p);
    }
    validate(&paths);
    let _ = std::fs::remove_dir_all(&dir);
}
