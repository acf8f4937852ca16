//! Kubernetes mode against the API stand-in (tests/support/apiserver.rs): the watch
//! source (initial sync, events, relist after 410 Gone, bookmarks, dropped and slow
//! watches, bad objects, revisions, discovery selectors, missing CRDs), leader
//! election, the root ConfigMaps, the webhooks' caBundle, TokenReview and the CA Secret.

#[path = "support/apiserver.rs"]
mod apiserver;

use std::time::Duration;

use apiserver::ApiServer;
use meshd::kube::writer::NamespaceFilter;
use meshd::model::object::{Kind, ObjectKey};
use meshd::model::snapshot::ConfigSet;
use meshd::sources::kube::KubeOptions;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

const WAIT: Duration = Duration::from_secs(15);

/// JSON objects from YAML text (Lists flattened).
fn yaml(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for doc in meshd::sources::yaml::parse_documents(text) {
        let v = doc.expect("test YAML").value;
        match v.get("items").and_then(Value::as_array) {
            Some(items) if v["kind"] == "List" => out.extend(items.iter().cloned()),
            _ => out.push(v),
        }
    }
    out
}

fn client(server: &ApiServer) -> kube::Client {
    let config = kube::Config::new(server.url().parse().expect("url"));
    kube::Client::try_from(config).expect("client")
}

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1
  namespace: default
  labels: {app: reviews, version: v1}
  managedFields: [{manager: kubectl, operation: Apply}]
spec:
  serviceAccountName: bookinfo-reviews
  containers: [{name: app, image: x}]
status: {podIP: 10.0.0.12, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
"#;

fn key(kind: Kind, ns: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: ns.into(),
        name: name.into(),
    }
}

struct Source {
    rx: mpsc::Receiver<ConfigSet>,
    filter: watch::Receiver<NamespaceFilter>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start(server: &ApiServer, revision: &str) -> Source {
    let (tx, rx) = mpsc::channel(16);
    let (ftx, filter) = watch::channel(NamespaceFilter::default());
    let task = tokio::spawn(meshd::sources::kube::run(
        client(server),
        KubeOptions {
            istio_namespace: "istio-system".into(),
            revision: revision.into(),
            quiet: Duration::from_millis(20),
        },
        tx,
        ftx,
    ));
    Source { rx, filter, task }
}

impl Source {
    /// The next ConfigSet satisfying `f` (earlier ones are skipped).
    async fn until(&mut self, what: &str, f: impl Fn(&ConfigSet) -> bool) -> ConfigSet {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(set)) if f(&set) => return set,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the source stopped while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }
}

fn vs_hosts(set: &ConfigSet, name: &str) -> Option<Vec<String>> {
    let o = set
        .objects
        .get(&key(Kind::VirtualService, "default", name))?;
    match &o.spec {
        meshd::model::object::Spec::VirtualService(vs) => Some(vs.hosts.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn initial_sync_then_added_modified_deleted() {
    let server = ApiServer::start("127.0.0.1:0", Duration::from_secs(60));
    server.apply_all(yaml(BASE));
    let mut src = start(&server, "");
    let first = src.until("the initial sync", |_| true).await;
    for k in [
        key(Kind::Namespace, "", "default"),
        key(Kind::Service, "default", "reviews"),
        key(Kind::Pod, "default", "reviews-v1"),
        key(Kind::VirtualService, "default", "reviews"),
    ] {
        assert!(
            first.objects.contains_key(&k),
            "{k} missing: {:?}",
            first.objects.keys().collect::<Vec<_>>()
        );
    }
    assert!(first.diagnostics.is_empty(), "{:?}", first.diagnostics);

    // MODIFIED, in another served version.
    let mut vs = yaml(BASE).pop().expect("vs");
    vs["apiVersion"] = json!("networking.istio.io/v1beta1");
    vs["spec"]["hosts"] = json!(["reviews", "reviews.example.com"]);
    server.apply(vs);
    src.until("the modified VirtualService", |s| {
        vs_hosts(s, "reviews").is_some_and(|h| h.len() == 2)
    })
    .await;

    // ADDED, then DELETED.
    server.apply(json!({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
    }));
    src.until("the new DestinationRule", |s| {
        s.objects
            .contains_key(&key(Kind::DestinationRule, "default", "reviews"))
    })
    .await;
    assert!(server.delete("DestinationRule", "default", "reviews"));
    src.until("the DestinationRule deleted", |s| {
        !s.objects
            .contains_key(&key(Kind::DestinationRule, "default", "reviews"))
    })
    .await;
    // Kinds meshd does not watch never reach it (Deployments etc. are not even listed).
    assert!(
        !server.requests().iter().any(|r| r.contains("deployments")),
        "{:?}",
        server.requests()
    );
}

#[tokio::test]
async fn relist_after_410_gone_replaces_the_state() {
    let server = ApiServer::start("127.0.0.1:0", Duration::from_secs(60));
    server.apply_all(yaml(BASE));
    let mut src = start(&server, "");
    src.until("the initial sync", |_| true).await;
    let lists_before = lists_of(&server, "virtualservices");

    // The client cannot watch while changes happen and the history is compacted: when it
    // comes back, its resourceVersion is too old (410) and only a relist can tell it that
    // the VirtualService was deleted and another one created.
    server.fail_requests(Some("virtualservices"));
    server.drop_watches();
    assert!(server.delete("VirtualService", "default", "reviews"));
    server.apply(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "ratings", "namespace": "default"},
        "spec": {"hosts": ["ratings"], "http": [{"route": [{"destination": {"host": "ratings"}}]}]},
    }));
    server.compact();
    server.fail_requests(None);
    let set = src
        .until("the state after the relist", |s| {
            vs_hosts(s, "reviews").is_none() && vs_hosts(s, "ratings").is_some()
        })
        .await;
    assert!(
        set.objects
            .contains_key(&key(Kind::Service, "default", "reviews"))
    );
    assert!(
        lists_of(&server, "virtualservices") > lists_before,
        "a relist happened: {:?}",
        server.requests()
    );

    // An open watch told 410 Gone also relists, and misses nothing.
    let lists_before = lists_of(&server, "virtualservices");
    server.expire_watches();
    server.apply(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "details", "namespace": "default"},
        "spec": {"hosts": ["details"], "http": [{"route": [{"destination": {"host": "details"}}]}]},
    }));
    src.until("the VirtualService created around the 410", |s| {
        vs_hosts(s, "details").is_some()
    })
    .await;
    assert!(lists_of(&server, "virtualservices") > lists_before);
}

fn lists_of(server: &ApiServer, plural: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains(plural) && !r.contains("watch=true"))
        .count()
}

#[tokio::test]
async fn bookmarks_move_the_resume_point_and_dropped_watches_resume() {
    let server = ApiServer::start("127.0.0.1:0", Duration::from_millis(100));
    server.apply_all(yaml(BASE));
    let mut src = start(&server, "");
    src.until("the initial sync", |_| true).await;
    let lists_before = lists_of(&server, "virtualservices");
    // Other kinds move the global resourceVersion; the VirtualService watch learns the
    // new one only from BOOKMARKs.
    for i in 0..5 {
        server.apply(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }));
    }
    src.until("the new services", |s| {
        s.objects
            .contains_key(&key(Kind::Service, "default", "svc-4"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.compact_before(server.resource_version());
    server.drop_watches();
    // A change after the reconnect arrives through a watch resumed from the bookmark.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut vs = yaml(BASE).pop().expect("vs");
    vs["spec"]["hosts"] = json!(["reviews", "r.example.com"]);
    server.apply(vs);
    src.until("the change after the reconnect", |s| {
        vs_hosts(s, "reviews").is_some_and(|h| h.len() == 2)
    })
    .await;
    assert_eq!(
        lists_of(&server, "virtualservices"),
        lists_before,
        "resumed without a relist: {:?}",
        server.requests()
    );

    // A slow watch delays but loses nothing.
    server.set_event_delay(Duration::from_millis(200));
    for host in ["a", "b", "c"] {
        let mut vs = yaml(BASE).pop().expect("vs");
        vs["spec"]["hosts"] = json!(["reviews", host]);
        server.apply(vs);
    }
    src.until("the last of the slow events", |s| {
        vs_hosts(s, "reviews").is_some_and(|h| h.last().map(String::as_str) == Some("c"))
    })
    .await;
}

#[tokio::test]
async fn a_bad_object_is_a_diagnostic_and_the_last_good_version_stays() {
    let server = ApiServer::start("127.0.0.1:0", Duration::from_secs(60));
    server.apply_all(yaml(BASE));
    server.apply(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "broken", "namespace": "default"},
        "spec": {"host": ["not", "a", "string"]},
    }));
    let mut src = start(&server, "");
    let set = src.until("the initial sync", |_| true).await;
    assert!(
        set.objects
            .contains_key(&key(Kind::VirtualService, "default", "reviews"))
    );
    assert!(
        !set.objects
            .contains_key(&key(Kind::DestinationRule, "default", "broken"))
    );
    let d = set
        .diagnostics
        .iter()
        .find(|d| d.object.as_deref() == Some("DestinationRule default/broken"))
        .unwrap_or_else(|| panic!("diagnostic for the bad object: {:?}", set.diagnostics));
    assert!(d.is_error());
    assert!(d.to_string().contains("spec.host"), "{d}");
    assert!(d.to_string().contains("resourceVersion"), "{d}");

    // The good VirtualService turns bad: its last good version stays in force.
    let mut vs = yaml(BASE).pop().expect("vs");
    vs["spec"]["hosts"] = json!("reviews");
    server.apply(vs);
    let set = src
        .until("the refused update", |s| {
            s.diagnostics.iter().any(|d| d.reason.contains("last good"))
        })
        .await;
    assert_eq!(vs_hosts(&set, "reviews"), Some(vec!["reviews".to_string()]));
    // And the watch is alive: a fix arrives.
    let mut vs = yaml(BASE).pop().expect("vs");
    vs["spec"]["hosts"] = json!(["reviews", "fixed"]);
    server.apply(vs);
    src.until("the fix", |s| {
        vs_hosts(s, "reviews").is_some_and(|h| h.len() == 2)
            && !s.diagnostics.iter().any(|d| d.reason.contains("last good"))
    })
    .await;
}

#[tokio::test]
async fn revisions_discovery_selectors_and_missing_crds() {
    let server = ApiServer::start("127.0.0.1:0", Duration::from_secs(60));
    server.hide("telemetries", true);
    server.hide("wasmplugins", true);
    server.apply_all(yaml(BASE));
    server.apply_all(yaml(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: canary, namespace: default, labels: {istio.io/rev: canary}}
spec: {hosts: [canary], http: [{route: [{destination: {host: canary}}]}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: stable, namespace: default, labels: {istio.io/rev: stable}}
spec: {hosts: [stable], http: [{route: [{destination: {host: stable}}]}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Service
metadata: {name: hidden, namespace: outside}
spec: {ports: [{name: http, port: 80}]}
"#,
    ));
    // Revision "canary": unlabelled objects and canary's, not stable's.
    let mut src = start(&server, "canary");
    let set = src
        .until("the initial sync without the missing CRDs", |_| true)
        .await;
    assert!(vs_hosts(&set, "reviews").is_some());
    assert!(vs_hosts(&set, "canary").is_some());
    assert!(vs_hosts(&set, "stable").is_none());
    assert!(
        set.objects
            .contains_key(&key(Kind::Service, "outside", "hidden"))
    );

    // discoverySelectors: only namespaces labelled for the mesh (and istio-system).
    server.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio-canary", "namespace": "istio-system"},
        "data": {"mesh": "discoverySelectors:\n- matchLabels: {mesh: \"on\"}\n"},
    }));
    server.apply(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "default", "labels": {"mesh": "on"}},
    }));
    let set = src
        .until("namespaces outside the selectors dropped", |s| {
            !s.objects
                .contains_key(&key(Kind::Service, "outside", "hidden"))
        })
        .await;
    assert!(
        set.objects
            .contains_key(&key(Kind::Service, "default", "reviews"))
    );
    assert!(
        set.objects
            .contains_key(&key(Kind::ConfigMap, "istio-system", "istio-canary"))
    );
    assert_eq!(src.filter.borrow().selectors.len(), 1);
}

// ---- leader election, writes, TokenReview, the CA Secret ----

#[tokio::test]
async fn one_leader_at_a_time_and_failover() {
    use meshd::kube::leader::{LeaderConfig, run};
    let server = ApiServer::start("127.0.0.1:0", Duration::from_secs(60));
    let cfg = |id: &str| LeaderConfig {
        duration: Duration::from_secs(2),
        retry: Duration::from_millis(100),
        ..LeaderConfig::new("istio-system", id)
    };
    let a = run(client(&server), cfg("a"));
    let b = run(client(&server), cfg("b"));
    let deadline = tokio::time::Instant::now() + WAIT;
    let first = loop {
        let (la, lb) = (*a.borrow(), *b.borrow());
        assert!(!(la && lb), "two leaders at once");
        if la || lb {
            break if la { "a" } else { "b" };
        }
        assert!(tokio::time::Instant::now() < deadline, "nobody leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Sample for a while: never two leaders, no flapping.
    for _ in 0..30 {
        assert!(!(*a.borrow() && *b.borrow()), "two leaders at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lease = server
        .get("Lease", "istio-system", "meshd-leader")
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], first);
    // The leader goes away (its receiver dropped ends its loop): the other takes over
    // once the lease has expired.
    let (gone, other) = if first == "a" { (a, b) } else { (b, a) };
    drop(gone);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !*other.borrow() {
        assert!(tokio::time::Instant::now() < deadline, "no failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lease = server
        .get("Lease", "istio-system", "meshd-leader")
        .expect("lease");
    assert_ne!(lease["spec"]["holderIdentity"], first);
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn root_configmaps_only_while_leading_and_repaired() {
    let server = ApiServer::start("127.0.0.1:0", Duration::from_secs(60));
    for ns in ["default", "bookinfo", "kube-system", "istio-system"] {
        server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    let root = "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n";
    let (leader_tx, leader_rx) = watch::channel(false);
    let (_ftx, frx) = watch::channel(NamespaceFilter::default());
    meshd::kube::writer::publish_root(client(&server), root.into(), leader_rx, frx);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server.list("ConfigMap").is_empty(),
        "a follower writes nothing"
    );

    leader_tx.send(true).expect("leader");
    let root_of = |ns: &str| {
        server
            .get("ConfigMap", ns, "istio-ca-root-cert")
            .and_then(|c| c["data"]["root-cert.pem"].as_str().map(String::from))
    };
    wait_until("root ConfigMaps", || {
        root_of("default").is_some() && root_of("bookinfo").is_some()
    })
    .await;
    assert_eq!(root_of("default").as_deref(), Some(root));
    assert!(
        root_of("kube-system").is_none(),
        "kube-system is left alone"
    );
    let cm = server
        .get("ConfigMap", "default", "istio-ca-root-cert")
        .expect("cm");
    assert_eq!(cm["metadata"]["labels"]["istio.io/config"], "true");

    // Edited, deleted, and a new namespace: all put right.
    let mut edited = cm.clone();
    edited["data"]["root-cert.pem"] = json!("tampered");
    server.apply(edited);
    server.delete("ConfigMap", "bookinfo", "istio-ca-root-cert");
    server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "new"}}));
    wait_until("repairs", || {
        root_of("default").as_deref() == Some(root)
            && root_of("bookinfo").as_deref() == Some(root)
            && root_of("new").as_deref() == Some(root)
    })
    .await;
}

#[tokio::test]
async fn webhook_ca_bundles_are_set() {
    use base64::Engine;
    let server = ApiServer::start("127.0.0.1:0", Duration::from_secs(60));
    let hook = |name: &str| {
        json!({
            "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"service": {"name": "istiod", "namespace": "istio-system", "path": "/inject"}},
        })
    };
    server.apply(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "istio-sidecar-injector"},
        "webhooks": [hook("rev.namespace.sidecar-injector.istio.io"), hook("rev.object.sidecar-injector.istio.io")],
    }));
    server.apply(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "istio-validator-istio-system"},
        "webhooks": [hook("rev.validation.istio.io")],
    }));
    let root = "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n";
    let (_tx, leader) = watch::channel(true);
    meshd::kube::writer::patch_webhooks(
        client(&server),
        root.into(),
        "istio-sidecar-injector".into(),
        "istio-validator-istio-system".into(),
        leader,
    );
    let want = base64::engine::general_purpose::STANDARD.encode(root);
    let bundles = |kind: &str, name: &str| -> Vec<Value> {
        server
            .get(kind, "", name)
            .and_then(|w| w["webhooks"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|h| h["clientConfig"]["caBundle"].clone())
            .collect()
    };
    wait_until("caBundles", || {
        bundles("MutatingWebhookConfiguration", "istio-sidecar-injector")
            .iter()
            .chain(
                bundles(
                    "ValidatingWebhookConfiguration",
                    "istio-validator-istio-system",
                )
                .iter(),
            )
            .all(|b| *b == json!(want))
    })
    .await;
    assert_eq!(
        bundles("MutatingWebhookConfiguration", "istio-sidecar-injector").len(),
        2
    );
}

#[tokio::test]
async fn token_review_and_the_ca_secret() {
    let server = ApiServer::start("127.0.0.1:0", Duration::from_secs(60));
    server.add_token("good", "default", "bookinfo-reviews", &["istio-ca"]);
    server.add_token("other-audience", "default", "bookinfo-reviews", &["vault"]);
    let r = meshd::kube::TokenReviewer::new(client(&server), "cluster.local");
    let id = r.review("good").await.expect("good token");
    assert_eq!(
        id.to_string(),
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    );
    let e = r
        .review("other-audience")
        .await
        .expect_err("wrong audience");
    assert!(
        e.contains("not authenticated") || e.contains("audience"),
        "{e}"
    );
    let e = r.review("forged").await.expect_err("unknown token");
    assert!(e.contains("not authenticated"), "{e}");

    // The self-signed root lives in istio-ca-secret: created once, reused after.
    let c = client(&server);
    let ca1 = meshd::kube::writer::load_or_create_ca(&c, "istio-system", "cluster.local")
        .await
        .expect("created");
    let secret = server
        .get("Secret", "istio-system", "istio-ca-secret")
        .expect("secret");
    assert_eq!(secret["type"], "istio.io/ca-root");
    let ca2 = meshd::kube::writer::load_or_create_ca(&c, "istio-system", "cluster.local")
        .await
        .expect("loaded");
    assert_eq!(ca1.root_pem(), ca2.root_pem());
}

#[tokio::test]
async fn status_conditions_follow_diagnostics() {
    use std::sync::Arc;
    let server = ApiServer::start("127.0.0.1:0", Duration::from_secs(60));
    server.apply_all(yaml(BASE));
    let bad = |total: (i32, i32)| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "split", "namespace": "default"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [
                {"destination": {"host": "reviews"}, "weight": total.0},
                {"destination": {"host": "reviews"}, "weight": total.1}]}]}})
    };
    server.apply(bad((60, 60)));
    let mut src = start(&server, "");
    let set = src.until("the initial sync", |_| true).await;
    let build = |set: &ConfigSet| {
        Arc::new(meshd::model::snapshot::Snapshot::build(
            set,
            None,
            "cluster.local",
            "istio-system",
        ))
    };
    let (snap_tx, snap_rx) = watch::channel(build(&set));
    let (leader_tx, leader_rx) = watch::channel(false);
    meshd::kube::writer::write_status(client(&server), leader_rx, snap_rx, true);
    leader_tx.send(true).expect("lead");
    let condition = |name: &str| {
        server
            .get("VirtualService", "default", name)
            .map(|o| o["status"]["conditions"][0].clone())
            .unwrap_or(Value::Null)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while condition("split")["status"] != "False" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "status not written: {:?}",
            server
                .requests()
                .iter()
                .filter(|r| r.contains("status") || r.starts_with("PATCH"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let c = condition("split");
    assert_eq!(c["type"], "Reconciled");
    assert_eq!(c["reason"], "Invalid");
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("total destination weight 120 != 100"),
        "{c}"
    );
    assert_eq!(condition("reviews")["status"], "True");
    // Istio's analysis codes: a schema error for the weights.
    let messages = server
        .get("VirtualService", "default", "split")
        .map(|o| o["status"]["validationMessages"].clone())
        .unwrap_or(Value::Null);
    assert_eq!(messages[0]["type"]["code"], "IST0106", "{messages}");
    assert_eq!(messages[0]["level"], "ERROR");
    assert_eq!(
        server
            .get("VirtualService", "default", "reviews")
            .map(|o| o["status"]["validationMessages"].clone()),
        Some(serde_json::json!([])),
        "nothing to say about a good object"
    );

    // Fixed: the next snapshot turns the condition True; the spec is untouched.
    server.apply(bad((50, 50)));
    let set = src
        .until("the fixed VirtualService", |s| {
            s.objects
                .get(&key(Kind::VirtualService, "default", "split"))
                .is_some_and(|o| matches!(&o.spec, meshd::model::object::Spec::VirtualService(vs) if vs.http[0].route[0].weight == Some(50)))
        })
        .await;
    snap_tx.send(build(&set)).expect("snapshot");
    wait_until("status updated", || condition("split")["status"] == "True").await;
    let obj = server
        .get("VirtualService", "default", "split")
        .expect("vs");
    assert_eq!(obj["spec"]["http"][0]["route"][0]["weight"], 50);
}

/// Nodes are watched for their topology labels: a pod's locality is its Node's, and a
/// relabelled Node moves its pods.
#[tokio::test]
async fn pods_take_the_locality_of_their_node() {
    let server = ApiServer::start("127.0.0.1:0", Duration::from_secs(60));
    server.apply_all(yaml(BASE));
    let node = |zone: &str| {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-1", "labels": {
                "topology.kubernetes.io/region": "eu-west",
                "topology.kubernetes.io/zone": zone,
                "kubernetes.io/hostname": "node-1",
            }},
        })
    };
    server.apply(node("eu-west-1a"));
    let mut pod = yaml(BASE)
        .into_iter()
        .find(|o| o["kind"] == "Pod")
        .expect("a pod in BASE");
    pod["spec"]["nodeName"] = json!("node-1");
    server.apply(pod);
    let mut src = start(&server, "");
    let locality_of = |set: &ConfigSet| -> Option<String> {
        let snap =
            meshd::model::snapshot::Snapshot::build(set, None, "cluster.local", "istio-system");
        let w = snap
            .workloads
            .get(&key(Kind::Pod, "default", "reviews-v1"))?;
        Some(w.locality.clone())
    };
    let set = src
        .until("the node and the pod", |s| {
            s.objects.contains_key(&key(Kind::Node, "", "node-1"))
                && locality_of(s).is_some_and(|l| !l.is_empty())
        })
        .await;
    assert_eq!(locality_of(&set).as_deref(), Some("eu-west/eu-west-1a"));
    // Only the locality of a Node is kept.
    match &set.objects[&key(Kind::Node, "", "node-1")].spec {
        meshd::model::object::Spec::Node(l) => assert_eq!(l, "eu-west/eu-west-1a"),
        other => panic!("{other:?}"),
    }
    server.apply(node("eu-west-1b"));
    src.until("the relabelled node", |s| {
        locality_of(s).as_deref() == Some("eu-west/eu-west-1b")
    })
    .await;
}

/// Under steady churn — an event every few milliseconds, so the quiet time never comes —
/// changes still go out: a burst is held for a few quiet times at most.
#[tokio::test]
async fn steady_churn_still_produces_configuration() {
    let server = std::sync::Arc::new(ApiServer::start("127.0.0.1:0", Duration::from_secs(60)));
    server.apply_all(yaml(BASE));
    let mut src = start(&server, "");
    src.until("the initial sync", |_| true).await;
    let churn = {
        let server = server.clone();
        tokio::spawn(async move {
            // 5 ms apart (quiet is 20 ms) for 3 s.
            for i in 0..600 {
                server.apply(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "churn", "namespace": "default", "labels": {"i": i.to_string()}},
                    "spec": {"containers": [{"name": "c", "image": "x"}]},
                }));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let started = tokio::time::Instant::now();
    let mut sets = 0;
    while started.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), src.rx.recv()).await {
            sets += 1;
        }
    }
    churn.abort();
    // A quiet-only debounce sends nothing until the churn stops (after 3 s).
    assert!(sets >= 2, "{sets} configuration sets in 2 s of churn");
}
