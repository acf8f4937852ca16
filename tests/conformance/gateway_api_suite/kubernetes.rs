//! The suite's tests that need a real API server (tests/gateway_conformance/kubernetes.yaml):
//! objects changed mid-test, the generation the API server gives each change, and what
//! meshd's status writer and gateway deployer put into the API in Kubernetes mode.

use super::*;
use crate::kube_api::KubeApi;
use crate::real_kubernetes::gateway_api_server;

/// The Gateway API kinds whose status the tests read, with their API paths.
const KINDS: &[(&str, &str)] = &[
    (
        "GatewayClass",
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses",
    ),
    ("Gateway", "/apis/gateway.networking.k8s.io/v1/gateways"),
    ("HTTPRoute", "/apis/gateway.networking.k8s.io/v1/httproutes"),
    ("GRPCRoute", "/apis/gateway.networking.k8s.io/v1/grpcroutes"),
    (
        "BackendTLSPolicy",
        "/apis/gateway.networking.k8s.io/v1/backendtlspolicies",
    ),
];

/// Every Gateway API object of the API server: its status by `Kind namespace/name` (a
/// GatewayClass as `GatewayClass /name`), and the whole object.
fn api_objects(api: &KubeApi) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (kind, path) in KINDS {
        let Ok(list) = api.get(path) else { continue };
        for o in list["items"].as_array().into_iter().flatten() {
            let key = format!(
                "{kind} {}/{}",
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or("")
            );
            out.insert(key, o.clone());
        }
    }
    out
}

/// The suite's *MustHaveLatestConditions for each object of `latest` (`Kind namespace/name`,
/// a GatewayClass by name alone): every condition of its status — a Gateway's listeners',
/// a route's parents', a policy's ancestors' too — names the object's generation.
fn stale_conditions(latest: &Value, objects: &BTreeMap<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for want in strings(latest) {
        let key = object_key(want);
        let Some(o) = objects.get(&key) else {
            out.push(format!("{want}: not in the API"));
            continue;
        };
        let generation = &o["metadata"]["generation"];
        let status = &o["status"];
        let mut conditions: Vec<&Value> = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        for list in ["listeners", "parents", "ancestors"] {
            for entry in status[list].as_array().into_iter().flatten() {
                conditions.extend(entry["conditions"].as_array().into_iter().flatten());
            }
        }
        if conditions.is_empty() {
            out.push(format!("{want}: no conditions"));
        }
        for c in conditions {
            if &c["observedGeneration"] != generation {
                out.push(format!(
                    "{want}: condition {} observed generation {}, the object is at {generation}",
                    c["type"], c["observedGeneration"]
                ));
            }
        }
    }
    out
}

/// The suite's GatewayInfrastructure check: the ServiceAccounts, Pods and Services
/// labelled with the Gateway's name carry each of its `spec.infrastructure` labels and
/// annotations, and there is at least one of them.
fn infrastructure_failures(api: &KubeApi, gateway: &str) -> Vec<String> {
    let (ns, name) = gateway.split_once('/').unwrap_or((INFRA, gateway));
    let Ok(gw) = api.get(&format!(
        "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/gateways/{name}"
    )) else {
        return vec![format!("Gateway {gateway} is not in the API")];
    };
    let infra = &gw["spec"]["infrastructure"];
    let mut out = Vec::new();
    let mut found = 0;
    for kind in ["serviceaccounts", "pods", "services"] {
        let list = api
            .get(&format!(
                "/api/v1/namespaces/{ns}/{kind}?labelSelector=gateway.networking.k8s.io/gateway-name%3D{name}"
            ))
            .unwrap_or_default();
        let Some(first) = list["items"].as_array().and_then(|l| l.first()) else {
            continue;
        };
        found += 1;
        for field in ["labels", "annotations"] {
            for (k, v) in infra[field].as_object().into_iter().flatten() {
                if &first["metadata"][field][k] != v {
                    out.push(format!(
                        "{kind} {}: {field} {k}={v} missing: {}",
                        first["metadata"]["name"], first["metadata"][field]
                    ));
                }
            }
        }
    }
    if found == 0 {
        out.push(format!("nothing deployed for Gateway {gateway}"));
    }
    out
}

/// Waits (up to 30 s) until a test's or step's `expect` and `latest` hold: the failures
/// seen last, if they never did.
fn settled(api: &KubeApi, what: &Value) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let objects = api_objects(api);
        let st: BTreeMap<String, Value> = objects
            .iter()
            .map(|(k, o)| (k.clone(), o["status"].clone()))
            .collect();
        let mut failures = status_failures(what, &st);
        failures.extend(stale_conditions(&what["latest"], &objects));
        if what["baseReady"] == true {
            failures.extend(pods_not_ready(api));
        }
        if failures.is_empty() || std::time::Instant::now() > deadline {
            return failures;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The address pools the suite's runner is given (`--unusable-address`, `--usable-address`):
/// a Hostname naming no Service, and one naming a Service of the base.
const UNUSABLE_ADDRESS: &str = "foo";
const USABLE_ADDRESS: &str = "infra-backend-v1.gateway-conformance-infra.svc.cluster.local";

/// A manifest's objects as this run applies them, as the suite's Applier prepares them: a
/// GatewayClass is given to meshd's controller (the suite names the controller under
/// test), and a Gateway's placeholder addresses become the pools' addresses.
fn for_meshd(mut objects: Vec<Value>) -> Vec<Value> {
    for o in &mut objects {
        if o["kind"] == "GatewayClass" && o["spec"]["controllerName"].is_string() {
            o["spec"]["controllerName"] = Value::from("istio.io/gateway-controller");
        }
        // (Through a pointer: indexing a missing field mutably would add it as null.)
        if let Some(addresses) = o
            .pointer_mut("/spec/addresses")
            .and_then(Value::as_array_mut)
        {
            for a in addresses.iter_mut() {
                let pool = match a["value"].as_str() {
                    Some("PLACEHOLDER_UNUSABLE_ADDRS") => UNUSABLE_ADDRESS,
                    Some("PLACEHOLDER_USABLE_ADDRS") => USABLE_ADDRESS,
                    _ => continue,
                };
                *a = serde_json::json!({"type": "Hostname", "value": pool});
            }
        }
    }
    objects
}

/// A `Kind ns/name` of a test as [`api_objects`] keys it (a GatewayClass by name alone).
fn object_key(want: &str) -> String {
    match want.split_once(' ') {
        Some((kind, name)) if !name.contains('/') => format!("{kind} /{name}"),
        _ => want.to_string(),
    }
}

/// NamespacesMustBeReady's wait for pods: every Pod of the infra namespace Ready,
/// Succeeded or being deleted.
fn pods_not_ready(api: &KubeApi) -> Vec<String> {
    let pods = api
        .get(&format!("/api/v1/namespaces/{INFRA}/pods"))
        .unwrap_or_default();
    pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            !ready
                && p["status"]["phase"] != "Succeeded"
                && p["metadata"]["deletionTimestamp"].is_null()
        })
        .map(|p| format!("Pod {INFRA}/{} not ready", p["metadata"]["name"]))
        .collect()
}

fn apply_all(api: &KubeApi, objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .filter_map(|o| {
            api.apply(o).err().map(|e| {
                format!(
                    "{} {} refused by the API server: {e:?}",
                    o["kind"], o["metadata"]["name"]
                )
            })
        })
        .collect()
}

/// GATEWAY-HTTP tests that change objects through the API (kubernetes.yaml): the suite's
/// base and each test's manifests applied to a real API server, meshd (the leader, in
/// Kubernetes mode) writing statuses and deploying gateways; each status read back from
/// the API with the generation the API server gave the object.
#[test]
fn gateway_kubernetes_conformance_transcribed() {
    let Some(suite) = suite() else { return };
    if !isolate() {
        return;
    }
    let dir = TempDir::new("gwapi-kube-suite");
    let Some(api) = gateway_api_server(&dir) else {
        return;
    };
    let class = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "istio"},
        "spec": {"controllerName": "istio.io/gateway-controller"},
    });
    let mut setup = apply_all(&api, &[class]);
    // The namespaces first, as `kubectl apply` of the base would need them.
    let base = documents(&base_manifests(&suite));
    let (namespaces, rest): (Vec<Value>, Vec<Value>) =
        base.into_iter().partition(|d| d["kind"] == "Namespace");
    setup.extend(apply_all(&api, &namespaces));
    setup.extend(apply_all(&api, &rest));
    setup.extend(apply_all(&api, &documents(&suite_credentials().yaml)));
    assert!(setup.is_empty(), "the suite's base: {setup:?}");
    let _meshd = Meshd::start_source(
        &["--kubeconfig".as_ref(), api.kubeconfig.as_os_str()],
        dir.path(),
        18080,
        &["--pod-name", "meshd-0"],
    );

    let mut results: BTreeMap<String, Result<usize, String>> = BTreeMap::new();
    for test in transcribed("kubernetes.yaml") {
        let name = test["test"].as_str().unwrap_or("?").to_string();
        let mut objects = for_meshd(documents(&test_manifests(&suite, &test)));
        let mut failures = apply_all(&api, &objects);
        let mut checks = 1;
        failures.extend(settled(&api, &test));
        for step in test["then"].as_array().into_iter().flatten() {
            if !failures.is_empty() {
                break;
            }
            checks += 1;
            let watched = strings(&step["generationChanged"]);
            let before = api_objects(&api);
            let generation = |objects: &BTreeMap<String, Value>, key: &str| {
                objects
                    .get(key)
                    .map(|o| o["metadata"]["generation"].clone())
                    .unwrap_or(Value::Null)
            };
            // The step's objects as `changed` makes them: what left is deleted, what is
            // new or different applied.
            let after = for_meshd(changed(objects.clone(), step));
            let kept: Vec<String> = after.iter().map(manifest_key).collect();
            for gone in objects.iter().filter(|o| !kept.contains(&manifest_key(o))) {
                api.delete(gone);
            }
            let applied: Vec<Value> = after
                .iter()
                .filter(|a| !objects.contains(a))
                .cloned()
                .collect();
            failures.extend(apply_all(&api, &applied));
            objects = after;
            failures.extend(settled(&api, step));
            let now = api_objects(&api);
            for key in watched {
                let key = object_key(key);
                if generation(&before, &key) == generation(&now, &key) {
                    failures.push(format!(
                        "{key}: generation {} did not change",
                        generation(&now, &key)
                    ));
                }
            }
        }
        if let Some(gateway) = test["infrastructure"].as_str() {
            checks += 1;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let missing = infrastructure_failures(&api, gateway);
                if missing.is_empty() || std::time::Instant::now() > deadline {
                    failures.extend(missing);
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        // The test's objects go, as the suite cleans up after each test.
        for o in &objects {
            api.delete(o);
        }
        results.insert(name, outcome(&failures, checks));
    }
    report_counting("GATEWAY (Kubernetes mode)", "checks", &results);
}
