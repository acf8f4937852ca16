//! The Kubernetes source: watches what istiod watches and hands the model
//! [`ConfigSet`]s, like the file source: each a whole configuration, patched from the
//! previous one with what a burst of events changed ([`assemble`]).
//!
//! One watcher per kind (kube-runtime: list, then watch from the list's resourceVersion,
//! relist after `410 Gone` or a dropped stream, with backoff). A relist replaces the
//! kind's objects atomically. Each object is parsed as it arrives (managedFields and
//! everything meshd does not use are dropped right there); an object that does not parse
//! is a diagnostic, and a modified object that does not parse keeps its last good version.
//! Nothing is handed on before every kind has been listed once: that is what `/ready`
//! waits for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

mod assemble;

use assemble::Assembler;

use crate::kube::writer::NamespaceFilter;
use crate::model::diagnostic::{Diagnostic, Origin};
use crate::model::object::{Object, Spec};
use crate::model::snapshot::ConfigSet;
use crate::sources::yaml::FieldLines;

/// One kind meshd watches.
#[derive(Debug, Clone)]
pub struct WatchedKind {
    pub group: &'static str,
    /// Versions to try, preferred first: the first the server serves is watched (a watch
    /// in one version sees the objects of every version).
    pub versions: &'static [&'static str],
    pub kind: &'static str,
    pub plural: &'static str,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// ConfigMaps: all of this namespace's are kept, elsewhere only those holding a CA
    /// certificate (`ca.crt` or `cacert`); the rest are dropped as they arrive.
    pub home: Option<String>,
    pub field_selector: Option<String>,
}

const NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const SECURITY: &[&str] = &["v1", "v1beta1"];
const GATEWAY_API: &str = crate::model::gateway_api::GROUP;
const GATEWAY_VERSIONS: &[&str] = &["v1", "v1beta1"];

fn w(
    group: &'static str,
    versions: &'static [&'static str],
    kind: &'static str,
    plural: &'static str,
) -> WatchedKind {
    WatchedKind {
        group,
        versions,
        kind,
        plural,
        namespace: None,
        home: None,
        field_selector: None,
    }
}

/// What istiod watches, minus what meshd has no use for.
pub fn watched_kinds(istio_namespace: &str) -> Vec<WatchedKind> {
    vec![
        w("", &["v1"], "Namespace", "namespaces"),
        // Topology labels: the locality of the pods on each node.
        w("", &["v1"], "Node", "nodes"),
        w("", &["v1"], "Service", "services"),
        w("", &["v1"], "Pod", "pods"),
        w(
            "discovery.k8s.io",
            &["v1"],
            "EndpointSlice",
            "endpointslices",
        ),
        // Every ConfigMap of the istio namespace (mesh config, injector settings);
        // elsewhere only CA bundles (BackendTLSPolicy's caCertificateRefs), see `parse`.
        WatchedKind {
            home: Some(istio_namespace.to_string()),
            ..w("", &["v1"], "ConfigMap", "configmaps")
        },
        // Credentials for gateways and DestinationRules; never Helm releases or tokens.
        WatchedKind {
            field_selector: Some(
                "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token".into(),
            ),
            ..w("", &["v1"], "Secret", "secrets")
        },
        w(
            "networking.istio.io",
            NETWORKING,
            "VirtualService",
            "virtualservices",
        ),
        w(
            "networking.istio.io",
            NETWORKING,
            "DestinationRule",
            "destinationrules",
        ),
        w("networking.istio.io", NETWORKING, "Gateway", "gateways"),
        w(
            "networking.istio.io",
            NETWORKING,
            "ServiceEntry",
            "serviceentries",
        ),
        w("networking.istio.io", NETWORKING, "Sidecar", "sidecars"),
        w(
            "networking.istio.io",
            NETWORKING,
            "WorkloadEntry",
            "workloadentries",
        ),
        w(
            "networking.istio.io",
            NETWORKING,
            "WorkloadGroup",
            "workloadgroups",
        ),
        w(
            "networking.istio.io",
            NETWORKING,
            "EnvoyFilter",
            "envoyfilters",
        ),
        w(
            "security.istio.io",
            SECURITY,
            "PeerAuthentication",
            "peerauthentications",
        ),
        w(
            "security.istio.io",
            SECURITY,
            "AuthorizationPolicy",
            "authorizationpolicies",
        ),
        w(
            "security.istio.io",
            SECURITY,
            "RequestAuthentication",
            "requestauthentications",
        ),
        w(
            "telemetry.istio.io",
            &["v1", "v1alpha1"],
            "Telemetry",
            "telemetries",
        ),
        w(
            "extensions.istio.io",
            &["v1alpha1"],
            "WasmPlugin",
            "wasmplugins",
        ),
        // The Kubernetes Gateway API (when its CRDs are installed).
        w(
            GATEWAY_API,
            GATEWAY_VERSIONS,
            "GatewayClass",
            "gatewayclasses",
        ),
        w(GATEWAY_API, GATEWAY_VERSIONS, "Gateway", "gateways"),
        w(GATEWAY_API, GATEWAY_VERSIONS, "HTTPRoute", "httproutes"),
        w(
            GATEWAY_API,
            GATEWAY_VERSIONS,
            "ReferenceGrant",
            "referencegrants",
        ),
        w(
            GATEWAY_API,
            &["v1", "v1alpha2", "v1alpha3"],
            "TLSRoute",
            "tlsroutes",
        ),
        w(GATEWAY_API, &["v1alpha2"], "TCPRoute", "tcproutes"),
        w(GATEWAY_API, &["v1"], "GRPCRoute", "grpcroutes"),
        w(GATEWAY_API, &["v1"], "ListenerSet", "listenersets"),
        w(
            GATEWAY_API,
            &["v1", "v1alpha3"],
            "BackendTLSPolicy",
            "backendtlspolicies",
        ),
        // meshd's own policies (when crds/meshd.gen.yaml is installed).
        w(
            crate::model::ratelimit::GROUP,
            &["v1alpha1"],
            "RateLimitPolicy",
            "ratelimitpolicies",
        ),
    ]
}

#[derive(Debug, Clone)]
pub struct KubeOptions {
    pub istio_namespace: String,
    /// `--revision`: objects labelled `istio.io/rev` for another revision are skipped.
    pub revision: String,
    /// Quiet time after the last event before a ConfigSet is built.
    pub quiet: Duration,
}

/// Quiet time after the last event before a burst is handed on (`KubeOptions::quiet`
/// of `meshd serve`).
pub const QUIET: Duration = Duration::from_millis(50);

/// The longest a burst of events is held, in quiet times (2 × 50 ms by default). Under
/// steady pod churn the quiet never comes and every event waits for this cap, so it is
/// most of a pod's convergence time (B3); two quiet times keep snapshot builds to about
/// ten a second, which the builder absorbs (it builds only the newest of what queued
/// while it worked).
pub const BURST_QUIETS: u32 = 2;

enum Msg {
    Replace(usize, Vec<DynamicObject>),
    Apply(usize, DynamicObject),
    Delete(usize, DynamicObject),
    /// The kind is not served (its CRD is not installed): empty, but synced.
    Absent(usize),
}

/// The parsed form of one Kubernetes object.
#[derive(Debug, Clone, Default)]
pub(super) struct Entry {
    objects: Vec<Arc<Object>>,
    diagnostics: Vec<Diagnostic>,
}

/// Runs the watches; sends a ConfigSet once every kind is listed, then after each burst
/// of changes. `filter` receives the namespace filter (from mesh config) as it changes.
pub async fn run(
    client: Client,
    opts: KubeOptions,
    tx: mpsc::Sender<ConfigSet>,
    filter: watch::Sender<NamespaceFilter>,
) {
    let kinds = watched_kinds(&opts.istio_namespace);
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel::<Msg>();
    let (crd_tx, crd_rx) = watch::channel(0u64);
    tokio::spawn(watch_crds(client.clone(), crd_tx));
    for (i, k) in kinds.iter().enumerate() {
        tokio::spawn(watch_kind(
            client.clone(),
            k.clone(),
            i,
            msg_tx.clone(),
            crd_rx.clone(),
        ));
    }
    drop(msg_tx);
    let mut state: Vec<BTreeMap<(String, String), Entry>> = vec![BTreeMap::new(); kinds.len()];
    let mut synced = vec![false; kinds.len()];
    let mut assembler = Assembler::default();
    let mut announced = false;
    loop {
        let Some(first) = msg_rx.recv().await else {
            return;
        };
        let mut pending = vec![first];
        // Debounce: take everything that arrives within the quiet time — but never for
        // longer than a few quiet times in all: under steady churn (pods coming and
        // going every few milliseconds) the quiet never comes, and the changes must go
        // out anyway.
        let deadline = tokio::time::Instant::now() + opts.quiet * BURST_QUIETS;
        loop {
            let wait = opts
                .quiet
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, msg_rx.recv()).await {
                Ok(Some(m)) => pending.push(m),
                Ok(None) => return,
                Err(_) => break,
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        for m in pending {
            apply(&kinds, &mut state, &mut synced, &mut assembler, m);
        }
        if !synced.iter().all(|s| *s) {
            continue;
        }
        if !announced {
            info!(kinds = kinds.len(), "initial sync of the cluster complete");
            announced = true;
        }
        let (set, nf) = assembler.assemble(&kinds, &state, &opts);
        filter.send_if_modified(|old| {
            if *old != nf {
                *old = nf;
                true
            } else {
                false
            }
        });
        if tx.send(set).await.is_err() {
            return;
        }
    }
}

fn origin(o: &DynamicObject) -> Origin {
    Origin {
        resource_version: Some(o.metadata.resource_version.clone().unwrap_or_default()),
        ..Default::default()
    }
}

/// Parses one object, keeping `previous`'s objects if the new version is refused.
fn parse(k: &WatchedKind, o: DynamicObject, previous: Option<&Entry>) -> Entry {
    let origin = origin(&o);
    let mut value = match serde_json::to_value(&o) {
        Ok(v) => v,
        Err(e) => {
            return Entry {
                objects: previous.map(|p| p.objects.clone()).unwrap_or_default(),
                diagnostics: vec![Diagnostic::error(origin, format!("unreadable object: {e}"))],
            };
        }
    };
    drop(o);
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    // List items carry no apiVersion and kind: the watch knows them.
    let version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(String::from);
    if version.is_none() || value.get("kind").is_none() {
        value["apiVersion"] = Value::String(if k.group.is_empty() {
            k.versions[0].to_string()
        } else {
            format!("{}/{}", k.group, k.versions[0])
        });
        value["kind"] = Value::String(k.kind.to_string());
    }
    let (mut objects, diagnostics) =
        Object::from_value(value, FieldLines::default(), origin, "default");
    if let Some(home) = &k.home {
        objects.retain(|o| o.key.namespace == *home || holds_ca(o));
    }
    let refused = diagnostics.iter().any(Diagnostic::is_error) && objects.is_empty();
    match previous {
        Some(p) if refused && !p.objects.is_empty() => {
            let mut diagnostics = diagnostics;
            for old in &p.objects {
                diagnostics.push(
                    Diagnostic::warning(
                        old.origin.clone(),
                        format!("{} keeps its last good version until it is fixed", old.key),
                    )
                    .object(old.key.to_string()),
                );
            }
            Entry {
                objects: p.objects.clone(),
                diagnostics,
            }
        }
        _ => Entry {
            objects,
            diagnostics,
        },
    }
}

/// A ConfigMap with a CA certificate a BackendTLSPolicy may name.
fn holds_ca(o: &Object) -> bool {
    matches!(&o.spec, Spec::ConfigMap(d) if d.contains_key("ca.crt") || d.contains_key("cacert"))
}

fn name_of(o: &DynamicObject) -> (String, String) {
    (
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
    )
}

fn apply(
    kinds: &[WatchedKind],
    state: &mut [BTreeMap<(String, String), Entry>],
    synced: &mut [bool],
    changes: &mut Assembler,
    m: Msg,
) {
    match m {
        Msg::Replace(i, list) => {
            let old = std::mem::take(&mut state[i]);
            for o in list {
                let key = name_of(&o);
                let e = parse(&kinds[i], o, old.get(&key));
                state[i].insert(key, e);
            }
            // A relist touches what it lists and what it no longer lists.
            for (key, entry) in &old {
                changes.touched((i, key.clone()), Some(entry));
            }
            for key in state[i].keys() {
                if !old.contains_key(key) {
                    changes.touched((i, key.clone()), None);
                }
            }
            if !synced[i] {
                debug!(kind = kinds[i].kind, objects = state[i].len(), "listed");
            }
            synced[i] = true;
        }
        Msg::Apply(i, o) => {
            let key = name_of(&o);
            let e = parse(&kinds[i], o, state[i].get(&key));
            let old = state[i].insert(key.clone(), e);
            changes.touched((i, key), old.as_ref());
        }
        Msg::Delete(i, o) => {
            let key = name_of(&o);
            let old = state[i].remove(&key);
            changes.touched((i, key), old.as_ref());
        }
        Msg::Absent(i) => {
            // (Sent again every minute for a kind whose CRD is missing: usually empty.)
            for (key, entry) in std::mem::take(&mut state[i]) {
                changes.touched((i, key), Some(&entry));
            }
            synced[i] = true;
        }
    }
}

fn api_resource(k: &WatchedKind, version: &str) -> ApiResource {
    ApiResource {
        group: k.group.to_string(),
        version: version.to_string(),
        api_version: if k.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", k.group, version)
        },
        kind: k.kind.to_string(),
        plural: k.plural.to_string(),
    }
}

fn api(client: &Client, k: &WatchedKind, ar: &ApiResource) -> Api<DynamicObject> {
    match &k.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

/// The first of the kind's versions the server serves; None if it serves none (404).
async fn served_version(
    client: &Client,
    k: &WatchedKind,
) -> Result<Option<&'static str>, kube::Error> {
    for v in k.versions {
        let ar = api_resource(k, v);
        match api(client, k, &ar)
            .list_metadata(&ListParams::default().limit(1))
            .await
        {
            Ok(_) => return Ok(Some(v)),
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Counts changes to CustomResourceDefinitions, so that a kind whose CRD is installed
/// after meshd starts (the Gateway API's, meshd's own) is watched at once, not at the
/// next minute's look. Without permission to watch CRDs the minute's look remains.
async fn watch_crds(client: Client, tx: watch::Sender<u64>) {
    let ar = ApiResource {
        group: "apiextensions.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiextensions.k8s.io/v1".into(),
        kind: "CustomResourceDefinition".into(),
        plural: "customresourcedefinitions".into(),
    };
    let api: Api<kube::core::PartialObjectMeta<DynamicObject>> = Api::all_with(client, &ar);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(e) = events.next().await {
        match e {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                tx.send_modify(|n| *n += 1);
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "watching CustomResourceDefinitions"),
        }
    }
}

async fn watch_kind(
    client: Client,
    k: WatchedKind,
    i: usize,
    tx: mpsc::UnboundedSender<Msg>,
    mut crds: watch::Receiver<u64>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let version = match served_version(&client, &k).await {
            Ok(Some(v)) => v,
            Ok(None) => {
                // Not installed (an optional CRD): nothing to serve; look again when a
                // CRD changes, or in a minute.
                info!(
                    kind = k.kind,
                    group = k.group,
                    "not served by the API server; watching for its CRD"
                );
                if tx.send(Msg::Absent(i)).is_err() {
                    return;
                }
                crds.mark_unchanged();
                // (Should the CRD watch end, only the minute's look is left.)
                let crd_changed = async {
                    if crds.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    _ = crd_changed => {
                        // A CRD just created is served a moment after it is stored.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                continue;
            }
            Err(e) => {
                warn!(kind = k.kind, error = %e, "cannot reach the API server; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        let ar = api_resource(&k, version);
        let mut cfg = watcher::Config::default();
        if let Some(f) = &k.field_selector {
            cfg = cfg.fields(f);
        }
        let mut stream = watcher(api(&client, &k, &ar), cfg)
            .default_backoff()
            .boxed();
        let mut buffer: Vec<DynamicObject> = Vec::new();
        while let Some(ev) = stream.next().await {
            let msg = match ev {
                Ok(watcher::Event::Init) => {
                    buffer.clear();
                    None
                }
                Ok(watcher::Event::InitApply(o)) => {
                    buffer.push(o);
                    None
                }
                Ok(watcher::Event::InitDone) => Some(Msg::Replace(i, std::mem::take(&mut buffer))),
                Ok(watcher::Event::Apply(o)) => Some(Msg::Apply(i, o)),
                Ok(watcher::Event::Delete(o)) => Some(Msg::Delete(i, o)),
                Err(e) => {
                    // The watcher retries (relisting after 410 Gone) with backoff.
                    warn!(kind = k.kind, error = %e, "watch error; retrying");
                    None
                }
            };
            if let Some(m) = msg
                && tx.send(m).is_err()
            {
                return;
            }
        }
    }
}
