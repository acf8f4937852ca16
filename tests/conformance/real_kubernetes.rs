//! Kubernetes mode against a real kube-apiserver (etcd in-process; built from Go
//! modules by the test command): the API server's own schema checks accept meshd's CRDs
//! and deployment, a service account token it issues is reviewed by it for meshd's CA,
//! and a real Envoy follows Bookinfo's rules applied and edited through the API.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::kube_api::KubeApi;

/// A real API server, or None (skipped, or failed under MESHD_REQUIRE_ENVOY) when the
/// test command has not built it.
fn real_api(dir: &TempDir) -> Option<KubeApi> {
    built(KubeApi::start(dir.path()))
}

/// `started`, or None after saying the binary is missing.
fn built(started: Option<KubeApi>) -> Option<KubeApi> {
    if started.is_none() {
        skip_or_fail(
            "the test API server is not built (tests/kube-apiserver; ./scripts/test builds it)",
        );
    }
    started
}

/// Istio's CRDs and deploy/, in name order as `kubectl apply -f deploy/` takes them (the
/// namespace first).
fn apply_crds_and_deploy(api: &KubeApi) {
    apply_file(api, &repo().join("crds/crd-all.gen.yaml"));
    apply_folder(api, "deploy");
}

/// The YAML files of a folder (not its subfolders, as `kubectl apply -f DIR`).
fn apply_folder(api: &KubeApi, dir: &str) {
    let mut files: Vec<_> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|f| f.ok().map(|f| f.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        apply_file(api, &f);
    }
}

/// deploy/addons as `kubectl apply -k` applies it (kustomization.yaml is Kustomize's,
/// not an object): its resources, then ConfigMap meshd-dashboards with one key per file
/// of its generator.
fn apply_addons(api: &KubeApi) {
    let dir = repo().join("deploy/addons");
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization");
    let k = meshd::sources::yaml::parse_documents(&text)
        .into_iter()
        .next()
        .expect("one document")
        .expect("YAML")
        .value;
    for r in k["resources"].as_array().expect("resources") {
        apply_file(api, &dir.join(r.as_str().expect("a file name")));
    }
    for g in k["configMapGenerator"].as_array().expect("a generator") {
        let data: serde_json::Map<String, serde_json::Value> = g["files"]
            .as_array()
            .expect("files")
            .iter()
            .map(|f| {
                let f = f.as_str().expect("a file name");
                let name = f.rsplit('/').next().unwrap_or(f).to_string();
                let body = std::fs::read_to_string(dir.join(f)).expect("dashboard");
                (name, json!(body))
            })
            .collect();
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": g["name"], "namespace": g["namespace"]},
            "data": data,
        });
        let refused = api.apply_text(&cm.to_string());
        assert!(refused.is_empty(), "the dashboards ConfigMap: {refused:?}");
    }
}

/// Runs the real istioctl (built by the test command from Istio's Go module) against
/// meshd's plaintext xDS port and the API server: its output, or None (skipped, or a
/// failure under MESHD_REQUIRE_ENVOY) when it is not built.
fn istioctl(api: &KubeApi, args: &[&str]) -> Option<String> {
    let bin = std::env::var_os("MESHD_ISTIOCTL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join("target/go/istioctl"));
    if !bin.exists() {
        skip_or_fail("istioctl is not built (./scripts/test builds it)");
        return None;
    }
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args).arg("--kubeconfig").arg(&api.kubeconfig);
    if args.first() == Some(&"proxy-status") {
        // To the control plane over xDS (no pod to port-forward to).
        cmd.args(["--xds-address", "127.0.0.1:15010", "--plaintext"]);
    }
    let out = cmd.output().expect("run istioctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "istioctl {args:?} failed: {text}");
    Some(text)
}

/// Istio's CRDs and meshd's namespace, then waits until the API serves the kinds.
fn istio_crds(api: &KubeApi) {
    apply_file(api, &repo().join("crds/crd-all.gen.yaml"));
    apply_file(api, &repo().join("deploy/00-namespace.yaml"));
    wait_for(
        "networking.istio.io served",
        Duration::from_secs(30),
        || api.get("/apis/networking.istio.io/v1").ok(),
    );
}

/// A real API server with Istio's and the Gateway API's CRDs served (None as
/// [`real_api`]).
pub(crate) fn gateway_api_server(dir: &TempDir) -> Option<KubeApi> {
    let api = real_api(dir)?;
    istio_crds(&api);
    apply_file(&api, &repo().join("crds/gateway-api.gen.yaml"));
    wait_for(
        "gateway.networking.k8s.io served",
        Duration::from_secs(30),
        || api.get("/apis/gateway.networking.k8s.io/v1").ok(),
    );
    Some(api)
}

/// A VirtualService `name` in `default` routing its host to itself.
fn vs(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"hosts": [name], "http": [{"route": [{"destination": {"host": name}}]}]},
    })
}

fn apply_file(api: &KubeApi, path: &std::path::Path) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let refused = api.apply_text(&text);
    assert!(
        refused.is_empty(),
        "{} refused by the API server: {refused:?}",
        path.display()
    );
}

#[test]
fn crds_and_deployment_pass_the_api_servers_checks() {
    let dir = TempDir::new("real-crds");
    let Some(api) = real_api(&dir) else { return };
    apply_crds_and_deploy(&api);
    // The optional addons go in too, as `kubectl apply -k deploy/addons/` puts them: each
    // manifest the kustomization names, and its generated dashboards ConfigMap.
    apply_addons(&api);
    // The CRDs are served: Istio's own Bookinfo rules go in as they are.
    wait_for(
        "networking.istio.io served",
        Duration::from_secs(30),
        || api.get("/apis/networking.istio.io/v1").ok(),
    );
    // Every one of Istio's Bookinfo networking samples (when ../shared/istio is there).
    let networking = shared().join("bookinfo/networking");
    if let Ok(dir) = std::fs::read_dir(&networking) {
        let mut files: Vec<_> = dir.filter_map(|f| f.ok().map(|f| f.path())).collect();
        files.sort();
        assert!(files.len() > 10, "{files:?}");
        for f in files {
            apply_file(&api, &f);
        }
    } else {
        crate::istio_data::skipped("the real API server's checks of Istio's Bookinfo samples");
    }
    // The structural schema refuses a wrongly typed field, with the field named.
    let bad = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": {"hosts": ["reviews"], "http": [{"timeout": 5, "route": [{"destination": {"host": "reviews"}}]}]},
    });
    let (status, body) = api
        .request(
            "POST",
            "/apis/networking.istio.io/v1/namespaces/default/virtualservices",
            "application/json",
            &serde_json::to_vec(&bad).unwrap_or_default(),
        )
        .expect("request");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("spec.http[0].timeout"), "{body}");
}

#[test]
fn meshd_serves_envoy_from_a_real_api_server() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("real-kube");
    let Some(api) = real_api(&dir) else { return };
    istio_crds(&api);
    for sa in ["productpage", "details", "reviews", "ratings"] {
        api.apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": format!("bookinfo-{sa}"), "namespace": "default"}}))
            .expect("service account");
    }
    let bookinfo = repo().join("examples/bookinfo");
    for f in [
        "services.yaml",
        "pods.yaml",
        "sidecar-productpage.yaml",
        "destination-rules.yaml",
        "virtual-services.yaml",
        "reviews.yaml",
    ] {
        apply_file(&api, &bookinfo.join(f));
    }
    // No kubelet: the test reports the Pods running and ready.
    for (pod, ip) in BOOKINFO_PODS {
        api.set_pod_ready("default", pod, ip).expect("pod status");
    }
    // A token the API server issued; only its TokenReview can vouch for it.
    let token = api
        .token("default", "bookinfo-productpage", "istio-ca")
        .expect("token");
    let backends = Backends::start(&BOOKINFO_PODS, 9080);
    let meshd = Meshd::start_kube(&api.kubeconfig, dir.path(), &["--pod-name", "meshd-0"]);
    let envoy = Envoy::start_with(
        &NodeSpec {
            kind: "sidecar",
            ip: "127.0.0.10",
            pod: "productpage-v1",
            namespace: "default",
            labels: &[("app", "productpage"), ("version", "v1")],
            service_account: "bookinfo-productpage",
        },
        &EnvoyOpts {
            xds: Xds::Tls {
                root: dir.path().join("ca/root-cert.pem"),
                token,
            },
            ..Default::default()
        },
        dir.path(),
    );
    let get = |host: &str| http_get("127.0.0.1:9080", "/", &[("Host", host)]).ok();
    wait_for(
        "reviews through the sidecar",
        Duration::from_secs(30),
        || get("reviews").filter(|r| r.status == 200),
    );
    for _ in 0..20 {
        let r = get("reviews").expect("request");
        assert_eq!((r.status, r.body.as_str()), (200, "reviews-v1"));
    }
    // The real istioctl reads meshd as it reads istiod.
    if let Some(out) = istioctl(&api, &["proxy-status"]) {
        // meshd names itself as istiod does (pod name from --pod-name / POD_NAME).
        assert!(
            out.contains("productpage-v1.default")
                && out.contains("meshd-0")
                && out.contains("CDS,LDS,EDS,RDS,SDS"),
            "istioctl proxy-status: {out}"
        );
    }
    // istioctl proxy-config reads what meshd gave the proxy, here from a saved config dump
    // (`-f`; reading a pod through port-forward is tested beside istiod's output below).
    let dump = http_get(&envoy.admin, "/config_dump?include_eds", &[]).expect("config dump");
    let dump_file = dir.write("productpage-config-dump.json", &dump.body);
    let file = dump_file.to_str().expect("utf8");
    // (endpoints come from Envoy's /clusters, as istioctl reads them from a pod)
    let hosts = http_get(&envoy.admin, "/clusters?format=json", &[]).expect("clusters");
    let hosts_file = dir.write("productpage-clusters.json", &hosts.body);
    let hosts_file = hosts_file.to_str().expect("utf8");
    for (what, file, expect) in [
        ("clusters", file, "reviews.default.svc.cluster.local"),
        ("listeners", file, "0.0.0.0"),
        ("routes", file, "9080"),
        ("endpoints", hosts_file, "127.0.0.12:9080"),
    ] {
        if let Some(out) = istioctl(&api, &["proxy-config", what, "-f", file]) {
            assert!(out.contains(expect), "istioctl proxy-config {what}: {out}");
        }
    }
    // istioctl analyze reads the same cluster meshd serves.
    if let Some(out) = istioctl(&api, &["analyze", "-n", "default"]) {
        assert!(!out.contains("Error ["), "istioctl analyze: {out}");
    }
    let certs = http_get(&envoy.admin, "/certs", &[]).expect("admin /certs");
    assert!(
        certs
            .body
            .contains("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        "the proxy's certificate is its identity's: {}",
        certs.body
    );

    // An edit through the API reaches the proxy.
    api.apply(&json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": "v3"}}]}]},
    }))
    .expect("edit");
    wait_for("reviews-v3 after the edit", Duration::from_secs(20), || {
        get("reviews").filter(|r| r.body == "reviews-v3")
    });
    for _ in 0..20 {
        assert_eq!(
            get("reviews").map(|r| r.body).as_deref(),
            Some("reviews-v3")
        );
    }
    // A deleted Pod takes its endpoint with it.
    assert!(api.delete(&json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "reviews-v3", "namespace": "default"}})));
    wait_for("no healthy upstream", Duration::from_secs(20), || {
        get("reviews").filter(|r| r.status == 503)
    });
    // The root is published in every namespace, by meshd, in the real API.
    let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).expect("root");
    wait_for(
        "istio-ca-root-cert in default",
        Duration::from_secs(20),
        || {
            api.get("/api/v1/namespaces/default/configmaps/istio-ca-root-cert")
                .ok()
                .filter(|c| c["data"]["root-cert.pem"] == json!(root))
        },
    );
    assert_envoy_accepted(&envoy);
    drop(envoy);
    drop(meshd);
    drop(backends);
}

/// Where the API server finds meshd's webhooks (see [`loopback_alias`]).
const MESHD_ENDPOINT: &str = "192.0.2.15";

/// The API server calls meshd's webhooks, through the `istiod` Service of deploy/ and the
/// caBundle meshd wrote: a Pod in a labelled namespace comes back injected, an invalid
/// VirtualService is refused with meshd's message.
#[test]
fn the_api_server_calls_meshds_webhooks() {
    if !isolate() || !can_intercept() {
        return;
    }
    // An address for meshd the API accepts as an endpoint (a documentation address,
    // only inside this test's own network namespace), redirected to meshd's loopback
    // webhook port.
    loopback_alias(MESHD_ENDPOINT, 15017);
    let dir = TempDir::new("real-webhooks");
    // Webhooks reach a Service through its endpoints (here: meshd on loopback), not its
    // cluster IP (nothing routes those here).
    let Some(api) = built(KubeApi::start_with(
        dir.path(),
        &["--enable-aggregator-routing=true"],
    )) else {
        return;
    };
    apply_crds_and_deploy(&api);
    // meshd runs outside the cluster: the istiod Service's endpoint is meshd's address.
    api.apply(&json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "istiod", "namespace": "istio-system"},
        "subsets": [{"addresses": [{"ip": MESHD_ENDPOINT}],
                     "ports": [{"name": "https-webhook", "port": 15017}]}],
    }))
    .expect("endpoints");
    // (The API server's resolver reads EndpointSlices; no controller mirrors them here.)
    api.apply(&json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "istiod-meshd", "namespace": "istio-system",
                     "labels": {"kubernetes.io/service-name": "istiod"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [MESHD_ENDPOINT], "conditions": {"ready": true}}],
        "ports": [{"name": "https-webhook", "port": 15017, "protocol": "TCP"}],
    }))
    .expect("endpoint slice");
    wait_for(
        "networking.istio.io served",
        Duration::from_secs(30),
        || api.get("/apis/networking.istio.io/v1").ok(),
    );
    let meshd = Meshd::start_kube(&api.kubeconfig, dir.path(), &["--pod-name", "meshd-0"]);
    let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).expect("root");
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD.encode(&root);
    // meshd (leading) wrote its root as the webhooks' caBundle.
    wait_for("caBundle written", Duration::from_secs(30), || {
        let m = api
            .get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector")
            .ok()?;
        let v = api
            .get("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/istio-validator-istio-system")
            .ok()?;
        let all = |c: &serde_json::Value| {
            c["webhooks"].as_array().is_some_and(|w| {
                w.iter()
                    .all(|h| h["clientConfig"]["caBundle"] == json!(bundle))
            })
        };
        (all(&m) && all(&v)).then_some(())
    });

    // Injection: a Pod created in a labelled namespace comes back with the proxy.
    api.apply(&json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"istio-injection": "enabled"}}}))
        .expect("namespace");
    api.apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": "shop"}}))
        .expect("service account");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "cart", "namespace": "shop", "labels": {"app": "cart"}},
        "spec": {"containers": [{"name": "cart", "image": "cart:1"}]},
    });
    let last = std::cell::RefCell::new(String::new());
    let created = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("the Pod is admitted", Duration::from_secs(30), || {
            let (status, body) = api
                .request(
                    "POST",
                    "/api/v1/namespaces/shop/pods",
                    "application/json",
                    &serde_json::to_vec(&pod).unwrap_or_default(),
                )
                .ok()?;
            *last.borrow_mut() = format!("{status} {body}");
            (status == 201).then(|| serde_json::from_str::<serde_json::Value>(&body).ok())?
        })
    }))
    .unwrap_or_else(|_| panic!("the Pod was not admitted; last answer: {}", last.borrow()));
    let names: Vec<&str> = created["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            created["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        names.contains(&"istio-proxy"),
        "the API server applied meshd's injection patch: {names:?}"
    );
    assert!(
        created["metadata"]["annotations"]["sidecar.istio.io/status"].is_string(),
        "{}",
        created["metadata"]
    );

    // Validation: an object meshd refuses is refused by the API server, with meshd's words.
    let bad = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "bad-weights", "namespace": "default"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews"}, "weight": 30},
            {"destination": {"host": "ratings"}, "weight": 30}]}]},
    });
    let (status, body) = api
        .request(
            "POST",
            "/apis/networking.istio.io/v1/namespaces/default/virtualservices",
            "application/json",
            &serde_json::to_vec(&bad).unwrap_or_default(),
        )
        .expect("request");
    assert!(
        status == 400 || status == 403 || status == 422,
        "refused: {status} {body}"
    );
    assert!(body.contains("weight"), "meshd's reason: {body}");
    drop(meshd);
}

/// Two meshd processes against the real API server: one leads (Lease `meshd-leader`) and
/// writes status; when it dies, the other takes the Lease over and writes from then on.
#[test]
fn leader_election_and_status_writes_fail_over() {
    if !isolate() {
        return;
    }
    let dir = TempDir::new("real-leader");
    let Some(api) = real_api(&dir) else { return };
    istio_crds(&api);
    api.apply(&vs("first")).expect("first");
    let reconciled_by = |name: &str| {
        api.get(&format!(
            "/apis/networking.istio.io/v1/namespaces/default/virtualservices/{name}"
        ))
        .ok()
        .filter(|v| {
            v["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Reconciled" && c["status"] == "True")
            })
        })
    };
    let holder = || {
        api.get("/apis/coordination.k8s.io/v1/namespaces/istio-system/leases/meshd-leader")
            .ok()
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    let dir0 = TempDir::new("real-leader-0");
    let dir1 = TempDir::new("real-leader-1");
    let first = Meshd::start_kube(
        &api.kubeconfig,
        dir0.path(),
        &["--pod-name", "meshd-0", "--write-status"],
    );
    wait_for("meshd-0 leads", Duration::from_secs(30), || {
        (holder().as_deref() == Some("meshd-0")).then_some(())
    });
    // The second one on other ports, same cluster: it follows.
    let second = Meshd::start_source(
        &["--kubeconfig".as_ref(), api.kubeconfig.as_os_str()],
        dir1.path(),
        28080,
        &[
            "--pod-name",
            "meshd-1",
            "--write-status",
            "--grpc-port",
            "25010",
            "--secure-grpc-port",
            "25012",
            "--webhook-port",
            "25017",
            "--monitoring-port",
            "25014",
        ],
    );
    wait_for("status by the leader", Duration::from_secs(30), || {
        reconciled_by("first")
    });
    assert_eq!(holder().as_deref(), Some("meshd-0"), "one leader");
    // Both share the mesh's CA through the API: the follower loaded the leader's root.
    assert_eq!(
        std::fs::read_to_string(dir0.path().join("ca/root-cert.pem")).ok(),
        std::fs::read_to_string(dir1.path().join("ca/root-cert.pem")).ok(),
        "one root for the mesh"
    );
    drop(first);
    wait_for(
        "meshd-1 takes the lease over",
        Duration::from_secs(40),
        || (holder().as_deref() == Some("meshd-1")).then_some(()),
    );
    api.apply(&vs("second")).expect("second");
    wait_for("status by the new leader", Duration::from_secs(30), || {
        reconciled_by("second")
    });
    drop(second);
}

/// meshd rides out the API server going away and coming back, with changes made while
/// its watches were down, and etcd compacting often (watches resume past compacted
/// revisions): it converges, nothing lost, nothing stale.
#[test]
fn meshd_converges_across_api_server_restarts() {
    if !isolate() {
        return;
    }
    let dir = TempDir::new("real-restart");
    let flags = ["--etcd-compaction-interval=2s"];
    let Some(api) = built(KubeApi::start_persistent(dir.path(), &flags)) else {
        return;
    };
    istio_crds(&api);
    api.apply(&vs("before")).expect("before");
    let meshd = Meshd::start_kube(&api.kubeconfig, dir.path(), &[]);
    let names = || -> Vec<String> {
        let c = meshd.get_json("/debug/configz");
        c["objects"]["VirtualService"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["name"].as_str().map(str::to_string))
            .collect()
    };
    wait_for(
        "meshd has the first object",
        Duration::from_secs(30),
        || (names() == ["before"]).then_some(()),
    );
    // Changes while meshd's watches are broken: the server restarts, and the first
    // writes land before meshd is back.
    let api = api.restart(dir.path(), &flags);
    assert!(api.delete(&vs("before")), "deleted while meshd reconnects");
    let during = api.apply(&vs("during")).expect("during");
    let old_rv = during["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    wait_for("meshd sees the changes", Duration::from_secs(60), || {
        (names() == ["during"]).then_some(())
    });
    // More changes, then a second restart.
    for i in 0..5 {
        api.apply(&vs(&format!("churn-{i}"))).expect("churn");
    }
    let api = api.restart(dir.path(), &flags);
    // meshd's watches resume from revisions the restarted server no longer has (its
    // watch cache starts anew, etcd compacts every 2 s): a watch from `during` is 410
    // Gone, so meshd must list again to converge.
    wait_for("revisions gone", Duration::from_secs(30), || {
        let (_, body) = api
            .request(
                "GET",
                &format!(
                    "/apis/networking.istio.io/v1/virtualservices?watch=1&resourceVersion={old_rv}&timeoutSeconds=1"
                ),
                "application/json",
                b"",
            )
            .ok()?;
        body.contains("\"code\":410").then_some(())
    });
    for i in 0..5 {
        assert!(api.delete(&vs(&format!("churn-{i}"))));
    }
    api.apply(&vs("after")).expect("after");
    wait_for(
        "meshd converges after the second restart",
        Duration::from_secs(60),
        || (names() == ["after", "during"]).then_some(()),
    );
}

/// Only tokens the API server vouches for, for the `istio-ca` audience, get certificates.
#[test]
fn a_token_the_api_server_rejects_gets_no_certificate() {
    if !isolate() {
        return;
    }
    let dir = TempDir::new("real-token");
    let Some(api) = real_api(&dir) else { return };
    apply_file(&api, &repo().join("deploy/00-namespace.yaml"));
    let vault = api
        .token("default", "bookinfo-reviews", "vault")
        .expect("vault token");
    let good = api
        .token("default", "bookinfo-reviews", "istio-ca")
        .expect("istio-ca token");
    let meshd = Meshd::start_kube(&api.kubeconfig, dir.path(), &[]);
    let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).expect("root");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let me = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews";
        for (token, why) in [
            ("forged", "not authenticated"),
            (vault.as_str(), "not authenticated"),
        ] {
            let (csr, _) = crate::ca::csr_for(me);
            let e = crate::ca::create_certificate(
                crate::ca::tls_channel("127.0.0.1:15012", &root, None).await,
                &csr,
                Some(token),
            )
            .await
            .expect_err("refused");
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
            assert!(e.message().contains(why), "{}", e.message());
        }
        let (csr, _) = crate::ca::csr_for(me);
        let chain = crate::ca::create_certificate(
            crate::ca::tls_channel("127.0.0.1:15012", &root, None).await,
            &csr,
            Some(&good),
        )
        .await
        .expect("a reviewed token gets its certificate");
        assert_eq!(chain.last(), Some(&root));
    });
    drop(meshd);
}

/// The Gateway API in Kubernetes mode: meshd's Gateway API CRDs pass the API server's
/// checks; a Gateway and an HTTPRoute applied through the API program a router Envoy;
/// meshd (the leader) writes the status the conversion computed — GatewayClass
/// accepted, the Gateway programmed with one attached route, the route accepted — with
/// the generation it describes, and follows an edit of the route.
#[test]
fn gateway_api_objects_from_a_real_api_server() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("real-gwapi");
    let Some(api) = gateway_api_server(&dir) else {
        return;
    };
    for sa in ["productpage", "details", "reviews", "ratings"] {
        api.apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": format!("bookinfo-{sa}"), "namespace": "default"}}))
            .expect("service account");
    }
    let bookinfo = repo().join("examples/bookinfo");
    for f in ["services.yaml", "pods.yaml"] {
        apply_file(&api, &bookinfo.join(f));
    }
    for (pod, ip) in BOOKINFO_PODS {
        api.set_pod_ready("default", pod, ip).expect("pod status");
    }
    let refused = api.apply_text(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio}
spec: {controllerName: istio.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 8080, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pages, namespace: default}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /reviews}}]
    backendRefs: [{name: reviews, port: 9080}]
  - backendRefs: [{name: productpage, port: 9080}]
"#,
    );
    assert!(refused.is_empty(), "{refused:?}");
    let backends = Backends::start(&BOOKINFO_PODS, 9080);
    // The listener wants 8080: meshd's debug port moves.
    let meshd = Meshd::start_source(
        &["--kubeconfig".as_ref(), api.kubeconfig.as_os_str()],
        dir.path(),
        18080,
        &["--pod-name", "meshd-0"],
    );
    let router = Envoy::start(&EDGE, Ads::Delta, 15000, dir.path());
    let get = |path: &str| http_get("127.0.0.30:8080", path, &[]).ok();
    wait_for(
        "the route through the Gateway",
        Duration::from_secs(30),
        || get("/").filter(|r| r.body == "productpage-v1"),
    );
    assert_eq!(get("/reviews/1").map(|r| r.status), Some(200));

    // The status, written by meshd into the API.
    let condition = |obj: &serde_json::Value, path: &[&str], kind: &str| -> Option<String> {
        let mut v = obj;
        for p in path {
            v = match p.parse::<usize>() {
                Ok(i) => &v[i],
                Err(_) => &v[*p],
            };
        }
        v.as_array()?
            .iter()
            .find(|c| c["type"] == kind)
            .and_then(|c| c["status"].as_str().map(String::from))
    };
    wait_for("the GatewayClass accepted", Duration::from_secs(20), || {
        let gc = api
            .get("/apis/gateway.networking.k8s.io/v1/gatewayclasses/istio")
            .ok()?;
        (condition(&gc, &["status", "conditions"], "Accepted")? == "True").then_some(())
    });
    let gw = wait_for("the Gateway programmed", Duration::from_secs(20), || {
        let gw = api
            .get("/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/edge")
            .ok()?;
        (condition(&gw, &["status", "conditions"], "Programmed")? == "True").then_some(gw)
    });
    assert_eq!(gw["status"]["listeners"][0]["attachedRoutes"], 1, "{gw}");
    let route_path = "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/pages";
    let route = wait_for("the HTTPRoute accepted", Duration::from_secs(20), || {
        let r = api.get(route_path).ok()?;
        (condition(&r, &["status", "parents", "0", "conditions"], "Accepted")? == "True")
            .then_some(r)
    });
    let parent = &route["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "istio.io/gateway-controller");
    assert_eq!(parent["conditions"][0]["observedGeneration"], 1, "{route}");

    // The Gateway's proxies, deployed as istiod's deployment controller does: a
    // ServiceAccount, a Deployment and a Service named `<gateway>-<class>`, owned by the
    // Gateway, applied server-side with istiod's field manager.
    let gw_uid = api
        .get("/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/edge")
        .expect("the Gateway")["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Applied in order (ServiceAccount, Deployment, Service): the Service last.
    let service = wait_for("the gateway Service", Duration::from_secs(20), || {
        api.get("/api/v1/namespaces/default/services/edge-istio")
            .ok()
    });
    let deployment = api
        .get("/apis/apps/v1/namespaces/default/deployments/edge-istio")
        .expect("the gateway Deployment");
    let sa = api
        .get("/api/v1/namespaces/default/serviceaccounts/edge-istio")
        .expect("the gateway ServiceAccount");
    for obj in [&deployment, &service, &sa] {
        let meta = &obj["metadata"];
        assert_eq!(
            meta["labels"]["gateway.networking.k8s.io/gateway-name"], "edge",
            "{obj}"
        );
        assert_eq!(
            meta["labels"]["gateway.istio.io/managed"], "istio.io-gateway-controller",
            "{obj}"
        );
        assert_eq!(meta["ownerReferences"][0]["kind"], "Gateway", "{obj}");
        assert_eq!(meta["ownerReferences"][0]["uid"], gw_uid.as_str(), "{obj}");
        assert!(
            meta["managedFields"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| f["manager"] == "istio.io/gateway-controller" && f["operation"] == "Apply"),
            "applied server-side by istiod's field manager: {obj}"
        );
    }
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
        "edge"
    );
    assert_eq!(
        pod["metadata"]["labels"]["sidecar.istio.io/inject"],
        "false"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "edge-istio");
    let proxy = &pod["spec"]["containers"][0];
    assert_eq!(proxy["name"], "istio-proxy");
    assert_eq!(
        (&proxy["args"][0], &proxy["args"][1]),
        (&json!("proxy"), &json!("router"))
    );
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(
        service["spec"]["selector"],
        json!({"gateway.networking.k8s.io/gateway-name": "edge"})
    );
    let ports = |svc: &serde_json::Value| -> Vec<(String, u64, String)> {
        svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("").to_string(),
                    p["port"].as_u64().unwrap_or(0),
                    p["appProtocol"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        ports(&service),
        vec![
            ("status-port".to_string(), 15021, "tcp".to_string()),
            ("http".to_string(), 8080, "http".to_string()),
        ]
    );
    // A listener added: the Service follows. In the same change, a manual Gateway (its
    // address names its proxies) and one whose Service exists unmanaged: left alone.
    api.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "taken-istio", "namespace": "default"},
        "spec": {"ports": [{"name": "mine", "port": 1234}]}}))
        .expect("an unmanaged Service");
    let refused = api.apply_text(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: manual, namespace: default}
spec:
  gatewayClassName: istio
  addresses: [{type: Hostname, value: gw.example.com}]
  listeners:
  - {name: http, port: 8081, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: taken, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 8082, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 8080, protocol: HTTP}
  - {name: admin.web, port: 9090, protocol: HTTP}
"#,
    );
    assert!(refused.is_empty(), "{refused:?}");
    let service = wait_for(
        "the Service follows the listeners",
        Duration::from_secs(20),
        || {
            let s = api
                .get("/api/v1/namespaces/default/services/edge-istio")
                .ok()?;
            (ports(&s).len() == 3).then_some(s)
        },
    );
    assert_eq!(
        ports(&service)[2],
        ("admin-web".to_string(), 9090, "http".to_string())
    );
    // `taken` was handled: its Deployment exists, its Service is the user's still. (A
    // Gateway sorting after it, applied afterwards, gets its Service only once meshd
    // has been through `taken` whole.)
    wait_for("taken's Deployment", Duration::from_secs(20), || {
        api.get("/apis/apps/v1/namespaces/default/deployments/taken-istio")
            .ok()
    });
    let refused = api.apply_text(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: zz, namespace: default}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: http, port: 8083, protocol: HTTP}]\n",
    );
    assert!(refused.is_empty(), "{refused:?}");
    wait_for("a later Gateway's Service", Duration::from_secs(20), || {
        api.get("/api/v1/namespaces/default/services/zz-istio").ok()
    });
    let taken = api
        .get("/api/v1/namespaces/default/services/taken-istio")
        .expect("the user's Service");
    assert_eq!(
        ports(&taken),
        vec![("mine".to_string(), 1234, String::new())]
    );
    assert!(
        api.get("/apis/apps/v1/namespaces/default/deployments/manual-istio")
            .is_err(),
        "a manual Gateway gets no Deployment"
    );

    // An edit: a backend that does not exist; its requests get 500 and the status says
    // why, for generation 2.
    api.apply(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "pages", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "edge"}],
                 "rules": [{"backendRefs": [{"name": "gone", "port": 9080}]}]},
    }))
    .expect("edit");
    wait_for(
        "500 for the missing backend",
        Duration::from_secs(20),
        || get("/").filter(|r| r.status == 500),
    );
    let route = wait_for("ResolvedRefs False", Duration::from_secs(20), || {
        let r = api.get(route_path).ok()?;
        (condition(
            &r,
            &["status", "parents", "0", "conditions"],
            "ResolvedRefs",
        )? == "False")
            .then_some(r)
    });
    let resolved = route["status"]["parents"][0]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "ResolvedRefs"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(resolved["reason"], "BackendNotFound", "{route}");
    assert_eq!(resolved["observedGeneration"], 2, "{route}");

    // meshd's own RateLimitPolicy, from its CRD: watched, in force at the gateway, and
    // its status written back.
    apply_file(&api, &repo().join("crds/meshd.gen.yaml"));
    wait_for("policy.meshd.io served", Duration::from_secs(30), || {
        api.get("/apis/policy.meshd.io/v1alpha1").ok()
    });
    let refused = api.apply_text(
        r#"
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: edge, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]
  local: {requests: 3, unit: MINUTE}
  response: {headers: {x-limit: edge}}
"#,
    );
    assert!(refused.is_empty(), "{refused:?}");
    let limited = wait_for("the policy at the gateway", Duration::from_secs(30), || {
        get("/").filter(|r| r.status == 429)
    });
    assert_eq!(limited.header("x-limit"), Some("edge"));
    let policy = wait_for("the policy's status", Duration::from_secs(20), || {
        let p = api
            .get("/apis/policy.meshd.io/v1alpha1/namespaces/default/ratelimitpolicies/edge")
            .ok()?;
        (condition(&p, &["status", "conditions"], "Accepted")? == "True").then_some(p)
    });
    assert_eq!(
        policy["status"]["conditions"][0]["reason"], "Accepted",
        "{policy}"
    );

    // A BackendTLSPolicy whose CA bundle is a ConfigMap of the workload's namespace (not
    // meshd's): meshd watches those ConfigMaps, resolves the reference and writes the
    // policy's status.
    let ca = TestCa::new("ratings-ca");
    let refused = api.apply_text(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: ratings-ca, namespace: default}}
data:
  ca.crt: {ca:?}
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: ratings-tls, namespace: default}}
spec:
  targetRefs: [{{group: "", kind: Service, name: ratings}}]
  validation:
    caCertificateRefs: [{{group: "", kind: ConfigMap, name: ratings-ca}}]
    hostname: ratings.example.com
"#,
        ca = ca.pem
    ));
    assert!(refused.is_empty(), "{refused:?}");
    let btls = wait_for(
        "the BackendTLSPolicy's status",
        Duration::from_secs(20),
        || {
            let p = api
            .get("/apis/gateway.networking.k8s.io/v1/namespaces/default/backendtlspolicies/ratings-tls")
            .ok()?;
            let path = ["status", "ancestors", "0", "conditions"];
            (condition(&p, &path, "Accepted")? == "True"
                && condition(&p, &path, "ResolvedRefs")? == "True")
                .then_some(p)
        },
    );
    let ancestor = &btls["status"]["ancestors"][0];
    assert_eq!(ancestor["ancestorRef"]["name"], "ratings", "{btls}");
    assert_eq!(
        ancestor["controllerName"], "istio.io/mesh-controller",
        "{btls}"
    );
    assert_envoy_accepted(&router);
    drop(router);
    drop(meshd);
    drop(backends);
}

/// `istioctl x describe pod` and `istioctl proxy-config` read a pod's Envoy through the API
/// server's port-forward (the test API server's kubelet joins it to the pod's address).
/// Run over a real Envoy served by meshd, and over istiod's configuration for the same
/// pod (the istiod oracle's config dump, answered at the pod's admin port), they print the
/// same thing: the same Service, DestinationRule subsets and VirtualService for the pod.
#[test]
fn istioctl_describes_a_pod_served_by_meshd_as_one_served_by_istiod() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let Some(oracle) = crate::istiod_oracle::oracle() else {
        skip_or_fail("the istiod oracle is not built (./scripts/test builds it)");
        return;
    };
    let dir = TempDir::new("real-describe");
    let Some(api) = real_api(&dir) else { return };
    istio_crds(&api);
    let bookinfo = repo().join("examples/bookinfo");
    let mut files: Vec<_> = [
        "services.yaml",
        "pods.yaml",
        "destination-rules.yaml",
        "reviews.yaml",
    ]
    .iter()
    .map(|f| bookinfo.join(f))
    .collect();
    // The mesh config both read (meshd from the API, the oracle from a file).
    files.push(repo().join("deploy/20-configmaps.yaml"));
    let (mut kube, istio) = crate::istiod_oracle::inputs(&files);
    for sa in ["productpage", "details", "reviews", "ratings"] {
        api.apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": format!("bookinfo-{sa}"), "namespace": "default"}}))
            .expect("service account");
    }
    for obj in kube.iter_mut().filter(|o| o["kind"] == "Pod") {
        // On the test kubelet's node, with the sidecar istioctl looks for.
        obj["spec"]["nodeName"] = json!("kapi-node");
        if let Some(containers) = obj["spec"]["containers"].as_array_mut() {
            containers.push(json!({"name": "istio-proxy", "image": "proxyv2",
                "ports": [{"containerPort": 15090, "name": "http-envoy-prom"}]}));
        }
    }
    for obj in kube.iter().chain(&istio) {
        if obj["kind"] == "EndpointSlice" {
            continue; // meshd reads Pods; the oracle reads the slices
        }
        let mut obj = obj.clone();
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        if obj["kind"] == "Service" {
            obj["spec"].as_object_mut().map(|s| s.remove("clusterIP"));
        }
        let status = obj.as_object_mut().and_then(|o| o.remove("status"));
        api.apply(&obj)
            .unwrap_or_else(|e| panic!("{}: {e:?}", obj["metadata"]["name"]));
        if let (Some(ip), "Pod") = (
            status.as_ref().and_then(|s| s["podIP"].as_str()),
            obj["kind"].as_str().unwrap_or_default(),
        ) {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            api.set_pod_ready("default", name, ip).expect("pod status");
        }
    }
    let describe = |pod: &str| istioctl(&api, &["x", "describe", "pod", pod, "-n", "default"]);
    let proxy_config =
        |what: &str, pod: &str| istioctl(&api, &["proxy-config", what, &format!("{pod}.default")]);

    // meshd, a real Envoy for reviews-v1 with its admin interface on the pod's address.
    let token = api
        .token("default", "bookinfo-reviews", "istio-ca")
        .expect("token");
    let meshd = Meshd::start_kube(&api.kubeconfig, dir.path(), &["--pod-name", "meshd-0"]);
    let envoy = Envoy::start_with(
        &REVIEWS_V1,
        &EnvoyOpts {
            admin_ip: "127.0.0.12",
            xds: Xds::Tls {
                root: dir.path().join("ca/root-cert.pem"),
                token,
            },
            ..Default::default()
        },
        dir.path(),
    );
    wait_for(
        "the reviews VirtualService in the sidecar's routes",
        Duration::from_secs(30),
        || {
            http_get(
                &envoy.admin,
                "/config_dump?resource=dynamic_route_configs",
                &[],
            )
            .ok()
            .filter(|r| r.body.contains("virtual-service/reviews"))
        },
    );
    let Some(ours) = describe("reviews-v1") else {
        return;
    };
    let our_routes = proxy_config("routes", "reviews-v1");
    let our_clusters = proxy_config("clusters", "reviews-v1");
    let our_listeners = proxy_config("listeners", "reviews-v1");
    assert_envoy_accepted(&envoy);
    drop(envoy);
    drop(meshd);

    // istiod's configuration for the same pod, at the same place.
    let proxy = crate::istiod_oracle::Proxy {
        id: "sidecar~127.0.0.12~reviews-v1.default~default.svc.cluster.local".into(),
        labels: vec![
            ("app".into(), "reviews".into()),
            ("version".into(), "v1".into()),
        ],
        service_account: "bookinfo-reviews".into(),
    };
    // The API server's own Service is part of the cluster both read.
    let kubernetes = api
        .get("/api/v1/namespaces/default/services/kubernetes")
        .expect("the kubernetes Service");
    kube.push(kubernetes);
    let odir = dir.path().join("oracle");
    crate::istiod_oracle::write_inputs(&odir, &kube, &istio);
    let dump = crate::istiod_oracle::istiod_dump(&oracle, &odir, &proxy);
    let admin = static_admin("127.0.0.12:15000", dump.to_string());
    let theirs = describe("reviews-v1").expect("istioctl");
    let their_routes = proxy_config("routes", "reviews-v1");
    let their_clusters = proxy_config("clusters", "reviews-v1");
    let their_listeners = proxy_config("listeners", "reviews-v1");
    drop(admin);

    for (side, out) in [("meshd", &ours), ("istiod", &theirs)] {
        for expect in [
            "Service: reviews",
            "Port: http 9080/HTTP targets pod port 9080",
            "DestinationRule: reviews for \"reviews\"",
            "Matching subsets: v1",
            "VirtualService: reviews",
        ] {
            assert!(out.contains(expect), "{side}: no {expect:?} in\n{out}");
        }
    }
    assert_eq!(
        ours, theirs,
        "istioctl x describe: meshd (left), istiod (right)"
    );
    // Envoy also lists the route configurations inline in its inbound listeners, which
    // istiod's dump (RDS only) does not: compare the RDS rows, columns without padding.
    let rows = |out: Option<String>| -> Vec<String> {
        out.unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("inbound|"))
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .collect()
    };
    let (our_routes, their_routes) = (rows(our_routes), rows(their_routes));
    assert!(
        our_routes.iter().any(|r| r.ends_with("reviews.default")),
        "the VirtualService named on its route: {our_routes:#?}"
    );
    assert_eq!(our_routes, their_routes, "istioctl proxy-config routes");
    // (xds-grpc is the bootstrap's cluster, not the control plane's.)
    let mut our_clusters = rows(our_clusters);
    our_clusters.retain(|r| !r.starts_with("xds-grpc "));
    let their_clusters = rows(their_clusters);
    assert_eq!(
        our_clusters, their_clusters,
        "istioctl proxy-config clusters"
    );
    // Known and listed in docs/COMPATIBILITY.md: meshd's inbound passthrough (ports the
    // pod's Services do not declare) is one TCP chain, where istiod splits it by TLS and
    // HTTP; every declared port's chains are compared.
    let passthrough = |r: &String| r.ends_with("| InboundPassthroughCluster");
    let (mut our_listeners, mut their_listeners) = (rows(our_listeners), rows(their_listeners));
    our_listeners.retain(|r| !passthrough(r));
    their_listeners.retain(|r| !passthrough(r));
    assert!(
        our_listeners.iter().any(|r| r.contains("Route: 9080")),
        "{our_listeners:#?}"
    );
    assert_eq!(
        our_listeners, their_listeners,
        "istioctl proxy-config listeners"
    );
}

/// An Envoy admin interface that only has a config dump: istiod's, for the pod at `addr`.
fn static_admin(addr: &str, dump: String) -> Server {
    Server::start("the pod's admin port", addr, move |mut conn| {
        use std::io::Write;
        let req = read_head(&mut conn);
        let (status, body) = if req.starts_with(b"GET /config_dump") {
            ("200 OK", dump.as_str())
        } else {
            ("404 Not Found", "only /config_dump here")
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    })
}
