//! What meshd writes to the cluster, only while it leads: the root certificate in every
//! namespace (ConfigMap `istio-ca-root-cert`), the caBundle of its webhook
//! configurations; and, at start, the self-signed CA in Secret `istio-ca-secret`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::IGNORED_NAMESPACES;
use crate::ca::Authority;

/// The ConfigMap every namespace gets, as istiod names it.
pub const ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
/// Its key.
pub const ROOT_KEY: &str = "root-cert.pem";
/// Where istiod keeps its self-signed CA.
pub const CA_SECRET: &str = "istio-ca-secret";

/// The self-signed CA from Secret `istio-ca-secret` in `namespace`, created there on
/// first start so that every replica and every restart signs with the same root.
pub async fn load_or_create_ca(
    client: &Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<Authority> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..3 {
        if let Some(s) = api
            .get_opt(CA_SECRET)
            .await
            .with_context(|| format!("reading Secret {namespace}/{CA_SECRET}"))?
        {
            let data = s.data.unwrap_or_default();
            let get = |k: &str| {
                data.get(k)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    .with_context(|| format!("Secret {namespace}/{CA_SECRET} has no {k}"))
            };
            let cert = get("ca-cert.pem")?;
            let key = get("ca-key.pem")?;
            return Authority::from_pem(&cert, &key, trust_domain)
                .with_context(|| format!("Secret {namespace}/{CA_SECRET}"));
        }
        let ca = Authority::self_signed(trust_domain)?;
        let (cert, key) = (ca.root_pem().to_string(), ca.key_pem());
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(CA_SECRET.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            type_: Some("istio.io/ca-root".into()),
            data: Some(BTreeMap::from([
                (
                    "ca-cert.pem".to_string(),
                    ByteString(cert.clone().into_bytes()),
                ),
                ("ca-key.pem".to_string(), ByteString(key.into_bytes())),
                ("cert-chain.pem".to_string(), ByteString(Vec::new())),
                ("key.pem".to_string(), ByteString(Vec::new())),
                ("root-cert.pem".to_string(), ByteString(cert.into_bytes())),
            ])),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                info!(
                    namespace,
                    secret = CA_SECRET,
                    "created the self-signed root CA"
                );
                return Ok(ca);
            }
            // Another replica was first: use its root.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("creating Secret {namespace}/{CA_SECRET}"));
            }
        }
    }
    anyhow::bail!("Secret {namespace}/{CA_SECRET} could neither be read nor created")
}

/// Keeps ConfigMap `istio-ca-root-cert` (key `root-cert.pem`) right in every namespace
/// while `leader` says so: created where missing, repaired where edited.
pub fn publish_root(
    client: Client,
    root: String,
    leader: watch::Receiver<bool>,
    selectors: watch::Receiver<NamespaceFilter>,
) {
    tokio::spawn(async move {
        let ns_api: Api<Namespace> = Api::all(client.clone());
        let cm_api: Api<ConfigMap> = Api::all(client.clone());
        let mut ns_events = watcher(ns_api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut cm_events = watcher(
            cm_api,
            watcher::Config::default().fields(&format!("metadata.name={ROOT_CONFIGMAP}")),
        )
        .default_backoff()
        .boxed();
        // namespace → its labels (terminating namespaces left out).
        let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut ns_init: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        // namespace → what its ConfigMap holds now.
        let mut held: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut cm_init: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut leader = leader;
        let mut selectors = selectors;
        let mut failed: BTreeSet<String> = BTreeSet::new();
        loop {
            tokio::select! {
                ev = ns_events.next() => match ev {
                    Some(Ok(ev)) => namespace_event(ev, &mut namespaces, &mut ns_init),
                    Some(Err(e)) => warn!(error = %e, "namespace watch"),
                    None => return,
                },
                ev = cm_events.next() => match ev {
                    Some(Ok(ev)) => configmap_event(ev, &mut held, &mut cm_init),
                    Some(Err(e)) => warn!(error = %e, "root ConfigMap watch"),
                    None => return,
                },
                r = leader.changed() => if r.is_err() { return },
                r = selectors.changed() => if r.is_err() { return },
                // Retry namespaces whose write failed.
                _ = tokio::time::sleep(Duration::from_secs(5)), if !failed.is_empty() => {}
            }
            if !*leader.borrow() {
                continue;
            }
            let filter = selectors.borrow().clone();
            failed.clear();
            for (ns, labels) in &namespaces {
                if IGNORED_NAMESPACES.contains(&ns.as_str()) || !filter.selects(ns, labels) {
                    continue;
                }
                if held.get(ns).and_then(|v| v.as_deref()) == Some(root.as_str()) {
                    continue;
                }
                match write_root(&client, ns, &root).await {
                    Ok(()) => {
                        held.insert(ns.clone(), Some(root.clone()));
                        debug!(namespace = %ns, "root certificate published");
                    }
                    Err(e) => {
                        warn!(namespace = %ns, error = %e, "cannot publish the root certificate");
                        failed.insert(ns.clone());
                    }
                }
            }
        }
    });
}

fn namespace_event(
    ev: watcher::Event<Namespace>,
    live: &mut BTreeMap<String, BTreeMap<String, String>>,
    init: &mut BTreeMap<String, BTreeMap<String, String>>,
) {
    let entry = |n: &Namespace| {
        let terminating = n
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Terminating");
        let name = n.metadata.name.clone().unwrap_or_default();
        (
            name,
            (!terminating).then(|| n.metadata.labels.clone().unwrap_or_default()),
        )
    };
    match ev {
        watcher::Event::Init => init.clear(),
        watcher::Event::InitApply(n) => {
            if let (name, Some(l)) = entry(&n) {
                init.insert(name, l);
            }
        }
        watcher::Event::InitDone => *live = std::mem::take(init),
        watcher::Event::Apply(n) => match entry(&n) {
            (name, Some(l)) => {
                live.insert(name, l);
            }
            (name, None) => {
                live.remove(&name);
            }
        },
        watcher::Event::Delete(n) => {
            live.remove(&n.metadata.name.unwrap_or_default());
        }
    }
}

fn configmap_event(
    ev: watcher::Event<ConfigMap>,
    live: &mut BTreeMap<String, Option<String>>,
    init: &mut BTreeMap<String, Option<String>>,
) {
    let entry = |c: &ConfigMap| {
        (
            c.metadata.namespace.clone().unwrap_or_default(),
            c.data.as_ref().and_then(|d| d.get(ROOT_KEY).cloned()),
        )
    };
    match ev {
        watcher::Event::Init => init.clear(),
        watcher::Event::InitApply(c) => {
            let (ns, v) = entry(&c);
            init.insert(ns, v);
        }
        watcher::Event::InitDone => *live = std::mem::take(init),
        watcher::Event::Apply(c) => {
            let (ns, v) = entry(&c);
            live.insert(ns, v);
        }
        watcher::Event::Delete(c) => {
            live.remove(&c.metadata.namespace.unwrap_or_default());
        }
    }
}

async fn write_root(client: &Client, ns: &str, root: &str) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CONFIGMAP.into()),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([(
                "istio.io/config".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(ROOT_KEY.to_string(), root.to_string())])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &cm).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = serde_json::json!({
                "metadata": {"labels": {"istio.io/config": "true"}},
                "data": {ROOT_KEY: root},
            });
            api.patch(
                ROOT_CONFIGMAP,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Which namespaces meshd serves: MeshConfig `discoverySelectors` (any selector matches;
/// none means all), the istio namespace always.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceFilter {
    pub istio_namespace: String,
    pub selectors: Vec<LabelSelector>,
}

use crate::model::selector::LabelSelector;

impl NamespaceFilter {
    /// Every namespace is in scope (no discoverySelectors): namespace labels need not
    /// be read.
    pub fn selects_all(&self) -> bool {
        self.selectors.is_empty()
    }

    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        namespace == self.istio_namespace
            || self.selects_all()
            || self.selectors.iter().any(|s| s.matches(labels))
    }
}

/// Keeps `caBundle` of meshd's webhook configurations equal to the root, while leading.
pub fn patch_webhooks(
    client: Client,
    root: String,
    mutating: String,
    validating: String,
    leader: watch::Receiver<bool>,
) {
    // caBundle is bytes: the PEM itself (the API encodes it as base64 on the wire).
    let bundle = root;
    tokio::spawn(async move {
        let mut leader = leader;
        loop {
            if *leader.borrow() {
                if let Err(e) = patch_mutating(&client, &mutating, &bundle).await {
                    warn!(webhook = %mutating, error = %e, "cannot set the injection webhook's caBundle");
                }
                if let Err(e) = patch_validating(&client, &validating, &bundle).await {
                    warn!(webhook = %validating, error = %e, "cannot set the validation webhook's caBundle");
                }
            }
            // Also after a Helm upgrade or a `kubectl apply` reset the bundle.
            tokio::select! {
                r = leader.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
    });
}

async fn patch_mutating(client: &Client, name: &str, bundle: &str) -> Result<(), kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(mut w) = api.get_opt(name).await? else {
        return Ok(());
    };
    let want = ByteString(bundle.as_bytes().to_vec());
    let mut changed = false;
    for h in w.webhooks.iter_mut().flatten() {
        if h.client_config.ca_bundle.as_ref() != Some(&want) {
            h.client_config.ca_bundle = Some(want.clone());
            changed = true;
        }
    }
    if changed {
        api.replace(name, &PostParams::default(), &w).await?;
        info!(webhook = name, "caBundle set");
    }
    Ok(())
}

async fn patch_validating(client: &Client, name: &str, bundle: &str) -> Result<(), kube::Error> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let Some(mut w) = api.get_opt(name).await? else {
        return Ok(());
    };
    let want = ByteString(bundle.as_bytes().to_vec());
    let mut changed = false;
    for h in w.webhooks.iter_mut().flatten() {
        if h.client_config.ca_bundle.as_ref() != Some(&want) {
            h.client_config.ca_bundle = Some(want.clone());
            changed = true;
        }
    }
    if changed {
        api.replace(name, &PostParams::default(), &w).await?;
        info!(webhook = name, "caBundle set");
    }
    Ok(())
}

/// The status meshd writes on Istio objects when `--write-status` is on (istiod's
/// PILOT_ENABLE_STATUS): a `Reconciled` condition saying whether the object is in force,
/// with meshd's diagnostics as the message.
pub fn status_for(diags: &[&crate::model::diagnostic::Diagnostic]) -> serde_json::Value {
    let errors: Vec<&&crate::model::diagnostic::Diagnostic> =
        diags.iter().filter(|d| d.is_error()).collect();
    let describe = |d: &crate::model::diagnostic::Diagnostic| match &d.field {
        Some(f) => format!(
            "{}: {f}: {}",
            if d.is_error() { "error" } else { "warning" },
            d.reason
        ),
        None => format!(
            "{}: {}",
            if d.is_error() { "error" } else { "warning" },
            d.reason
        ),
    };
    let message = if diags.is_empty() {
        "in force".to_string()
    } else {
        diags
            .iter()
            .map(|d| describe(d))
            .collect::<Vec<_>>()
            .join("; ")
    };
    // Analysis messages as istiod's status controller writes them: code, name, level
    // and the documentation page; once per code.
    let mut codes: Vec<&'static str> = diags.iter().map(|d| d.analysis_code()).collect();
    codes.sort();
    codes.dedup();
    let messages: Vec<serde_json::Value> = codes
        .iter()
        .filter_map(|code| {
            let (code, name, level) = crate::model::diagnostic::ANALYSIS_MESSAGES
                .iter()
                .find(|(c, _, _)| c == code)?;
            Some(serde_json::json!({
                "type": {"code": code, "name": name},
                "level": level,
                "documentationUrl": format!(
                    "https://istio.io/latest/docs/reference/config/analysis/{}/?ref=status-controller",
                    code.to_ascii_lowercase()
                ),
            }))
        })
        .collect();
    serde_json::json!({
        "conditions": [{
            "type": "Reconciled",
            "status": if errors.is_empty() { "True" } else { "False" },
            "reason": if errors.is_empty() { "Accepted" } else { "Invalid" },
            "message": message,
        }],
        "validationMessages": messages,
    })
}

/// Writes, while leading, the status of Gateway API objects and (with `istio`) of Istio
/// objects, each when it changed.
pub fn write_status(
    client: Client,
    leader: watch::Receiver<bool>,
    snapshots: watch::Receiver<std::sync::Arc<crate::model::snapshot::Snapshot>>,
    istio: bool,
) {
    use crate::model::object::Kind;
    use kube::api::{ApiResource, DynamicObject};
    tokio::spawn(async move {
        let mut leader = leader;
        let mut snapshots = snapshots;
        // What each object's status was last written as (by content hash).
        let mut written: BTreeMap<crate::model::object::ObjectKey, u64> = BTreeMap::new();
        loop {
            tokio::select! {
                r = snapshots.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
            }
            if !*leader.borrow() {
                written.clear();
                continue;
            }
            let snap = snapshots.borrow().clone();
            let mut by_object: BTreeMap<String, Vec<&crate::model::diagnostic::Diagnostic>> =
                BTreeMap::new();
            for d in &snap.diagnostics {
                if let Some(o) = &d.object {
                    by_object.entry(o.clone()).or_default().push(d);
                }
            }
            // Objects in force, and refused ones (which the snapshot no longer holds).
            let mut keys: BTreeMap<crate::model::object::ObjectKey, u64> = snap
                .objects
                .iter()
                .filter(|(k, o)| istio && k.kind.is_istio() && !o.is_generated())
                .map(|(k, o)| (k.clone(), o.hash))
                .collect();
            for name in by_object.keys() {
                if let Some(k) = parse_key(name)
                    && istio
                    && k.kind.is_istio()
                {
                    keys.entry(k).or_insert(0);
                }
            }
            for (key, obj_hash) in &keys {
                let diags = by_object.get(&key.to_string()).cloned().unwrap_or_default();
                let status = status_for(&diags);
                let hash = xxhash_rust::xxh3::xxh3_64(status.to_string().as_bytes()) ^ obj_hash;
                if written.get(key) == Some(&hash) {
                    continue;
                }
                let version = key.kind.versions()[0];
                let ar = ApiResource {
                    group: key.kind.group().to_string(),
                    version: version.to_string(),
                    api_version: format!("{}/{version}", key.kind.group()),
                    kind: key.kind.name().to_string(),
                    plural: format!("{}s", key.kind.name().to_ascii_lowercase())
                        .replace("policys", "policies")
                        .replace("entrys", "entries"),
                };
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), &key.namespace, &ar);
                let patch = serde_json::json!({"status": status});
                match api
                    .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        written.insert(key.clone(), hash);
                    }
                    // Deleted meanwhile: the next snapshot drops it.
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => warn!(object = %key, error = %e, "cannot write status"),
                }
            }
            // Objects whose status the build computes: written below.
            let computed = |k: &crate::model::object::ObjectKey| {
                k.kind.is_gateway_api() || k.kind == Kind::RateLimitPolicy
            };
            written.retain(|k, _| keys.contains_key(k) || computed(k));
            // Gateway API objects and RateLimitPolicies: the status the build computed,
            // whole.
            for (key, status) in &snap.statuses.0 {
                let obj_hash = snap.objects.get(key).map_or(0, |o| o.hash);
                let hash = xxhash_rust::xxh3::xxh3_64(status.to_string().as_bytes()) ^ obj_hash;
                if written.get(key) == Some(&hash) {
                    continue;
                }
                let version = key.kind.versions()[0];
                let plural = match key.kind {
                    Kind::GatewayClass => "gatewayclasses",
                    Kind::KubeGateway => "gateways",
                    Kind::HTTPRoute => "httproutes",
                    Kind::TLSRoute => "tlsroutes",
                    Kind::TCPRoute => "tcproutes",
                    Kind::GRPCRoute => "grpcroutes",
                    Kind::ListenerSet => "listenersets",
                    Kind::BackendTLSPolicy => "backendtlspolicies",
                    Kind::RateLimitPolicy => "ratelimitpolicies",
                    _ => continue,
                };
                let ar = ApiResource {
                    group: key.kind.group().to_string(),
                    version: version.to_string(),
                    api_version: format!("{}/{version}", key.kind.group()),
                    kind: key.kind.name().to_string(),
                    plural: plural.into(),
                };
                let api: Api<DynamicObject> = if key.kind.namespaced() {
                    Api::namespaced_with(client.clone(), &key.namespace, &ar)
                } else {
                    Api::all_with(client.clone(), &ar)
                };
                // A route's parents may be other controllers' too: theirs are kept (a
                // merge patch replaces the whole list).
                let mut status = status.clone();
                if let Some(ours) = status.get_mut("parents").and_then(|p| p.as_array_mut())
                    && let Ok(current) = api.get_status(&key.name).await
                    && let Some(theirs) = current.data["status"]["parents"].as_array()
                {
                    ours.extend(
                        theirs
                            .iter()
                            .filter(|p| {
                                p["controllerName"] != crate::model::gateway_api::ISTIO_CONTROLLER
                            })
                            .cloned(),
                    );
                }
                let patch = serde_json::json!({"status": status});
                match api
                    .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        written.insert(key.clone(), hash);
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => warn!(object = %key, error = %e, "cannot write status"),
                }
            }
            written.retain(|k, _| !computed(k) || snap.statuses.0.contains_key(k));
        }
    });
}

/// `Kind namespace/name` (as diagnostics name objects) back into a key.
fn parse_key(s: &str) -> Option<crate::model::object::ObjectKey> {
    use crate::model::object::{Kind, ObjectKey};
    let (kind, rest) = s.split_once(' ')?;
    let kind = Kind::ALL.iter().copied().find(|k| k.name() == kind)?;
    let (namespace, name) = rest.split_once('/')?;
    Some(ObjectKey {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}
