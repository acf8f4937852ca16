//! A Kubernetes API server stand-in for tests: no real API server can be installed here.
//!
//! It keeps objects in memory with one global resourceVersion counter, like etcd, and
//! serves the REST shapes the Kubernetes client libraries use:
//!
//! - list (`GET /api/v1/pods`, `/apis/G/V/namespaces/NS/R`) with `labelSelector`,
//!   `fieldSelector`, `limit` and `continue` (pages come from a consistent snapshot);
//! - watch (`?watch=true&resourceVersion=N`) streaming ADDED / MODIFIED / DELETED after
//!   N, BOOKMARK events when `allowWatchBookmarks=true`, `timeoutSeconds`, and
//!   `410 Gone` (an ERROR event) when N is older than the compacted history;
//! - get, create (POST, 409 if it exists), replace (PUT, 409 on a stale
//!   resourceVersion), merge and apply patches (PATCH), delete, the `status`
//!   subresource;
//! - TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`) against tokens the
//!   test registers.
//!
//! Objects are stored per group and resource, not per version: a watch in any served
//! version sees every object, rewritten to that version, as a CRD without conversion
//! webhooks behaves. Tests can make watches slow, drop them, or expire them (410).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A resource type the stand-in serves.
#[derive(Debug, Clone)]
pub struct Resource {
    pub group: &'static str,
    pub versions: &'static [&'static str],
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

const NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const SECURITY: &[&str] = &["v1", "v1beta1"];

/// Everything meshd reads or writes.
pub const RESOURCES: &[Resource] = &[
    r("", &["v1"], "namespaces", "Namespace", false),
    r("", &["v1"], "nodes", "Node", false),
    r("", &["v1"], "services", "Service", true),
    r("", &["v1"], "pods", "Pod", true),
    r("", &["v1"], "endpoints", "Endpoints", true),
    r("", &["v1"], "configmaps", "ConfigMap", true),
    r("", &["v1"], "secrets", "Secret", true),
    r(
        "discovery.k8s.io",
        &["v1"],
        "endpointslices",
        "EndpointSlice",
        true,
    ),
    r("coordination.k8s.io", &["v1"], "leases", "Lease", true),
    r(
        "admissionregistration.k8s.io",
        &["v1"],
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        false,
    ),
    r(
        "admissionregistration.k8s.io",
        &["v1"],
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        false,
    ),
    r(
        "networking.istio.io",
        NETWORKING,
        "virtualservices",
        "VirtualService",
        true,
    ),
    r(
        "networking.istio.io",
        NETWORKING,
        "destinationrules",
        "DestinationRule",
        true,
    ),
    r(
        "networking.istio.io",
        NETWORKING,
        "gateways",
        "Gateway",
        true,
    ),
    r(
        "networking.istio.io",
        NETWORKING,
        "serviceentries",
        "ServiceEntry",
        true,
    ),
    r(
        "networking.istio.io",
        NETWORKING,
        "sidecars",
        "Sidecar",
        true,
    ),
    r(
        "networking.istio.io",
        NETWORKING,
        "workloadentries",
        "WorkloadEntry",
        true,
    ),
    r(
        "networking.istio.io",
        NETWORKING,
        "workloadgroups",
        "WorkloadGroup",
        true,
    ),
    r(
        "networking.istio.io",
        NETWORKING,
        "envoyfilters",
        "EnvoyFilter",
        true,
    ),
    r(
        "networking.istio.io",
        &["v1beta1"],
        "proxyconfigs",
        "ProxyConfig",
        true,
    ),
    r(
        "security.istio.io",
        SECURITY,
        "peerauthentications",
        "PeerAuthentication",
        true,
    ),
    r(
        "security.istio.io",
        SECURITY,
        "authorizationpolicies",
        "AuthorizationPolicy",
        true,
    ),
    r(
        "security.istio.io",
        SECURITY,
        "requestauthentications",
        "RequestAuthentication",
        true,
    ),
    r(
        "telemetry.istio.io",
        &["v1", "v1alpha1"],
        "telemetries",
        "Telemetry",
        true,
    ),
    r(
        "extensions.istio.io",
        &["v1alpha1"],
        "wasmplugins",
        "WasmPlugin",
        true,
    ),
];

const fn r(
    group: &'static str,
    versions: &'static [&'static str],
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Resource {
    Resource {
        group,
        versions,
        plural,
        kind,
        namespaced,
    }
}

/// One change, as the watch history keeps it.
#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    resource: &'static str,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    /// (plural, namespace, name) → object.
    objects: BTreeMap<(&'static str, String, String), Value>,
    history: Vec<Event>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted_below: u64,
    /// Pages of lists in progress: token → (list resourceVersion, remaining items).
    pages: HashMap<String, (u64, Vec<Value>)>,
    next_page: u64,
    /// Bumped to end every open watch (a dropped connection).
    watch_generation: u64,
    /// Bumped to end every open watch with 410 Gone.
    expire_generation: u64,
    /// Delay before each watch event is sent.
    event_delay: Duration,
    /// token → (username, audiences).
    tokens: HashMap<String, (String, Vec<String>)>,
    /// Requests served, by "METHOD path?query" (for asserting what a client did).
    requests: Vec<String>,
    /// Fail every request whose path contains this with 500 (an unhealthy server).
    failing: Option<String>,
    /// Resources answered with 404, as if their CRD were not installed.
    hidden: Vec<String>,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    state: Arc<Shared>,
    _thread: std::thread::JoinHandle<()>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

struct Shared {
    store: Mutex<Store>,
    changed: tokio::sync::watch::Sender<u64>,
    bookmark_every: Duration,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn resource_by_plural(plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.plural == plural)
}

fn resource_by_kind(kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

fn api_version(res: &Resource, version: &str) -> String {
    if res.group.is_empty() {
        version.to_string()
    } else {
        format!("{}/{}", res.group, version)
    }
}

fn status(code: u16, reason: &str, message: impl Into<String>) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message.into(), "reason": reason, "code": code,
    })
}

fn respond(code: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma-separated.
fn label_selector_matches(selector: &str, labels: &serde_json::Map<String, Value>) -> bool {
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    let get = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
    terms
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .all(|t| {
            if let Some((k, v)) = t.split_once("!=") {
                get(k) != Some(v.trim())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                get(k) == Some(v.trim())
            } else if let Some((k, set)) = t.split_once(" notin ") {
                let set = set.trim().trim_start_matches('(').trim_end_matches(')');
                !set.split(',').any(|v| get(k) == Some(v.trim()))
            } else if let Some((k, set)) = t.split_once(" in ") {
                let set = set.trim().trim_start_matches('(').trim_end_matches(')');
                set.split(',').any(|v| get(k) == Some(v.trim()))
            } else if let Some(k) = t.strip_prefix('!') {
                get(k).is_none()
            } else {
                get(t).is_some()
            }
        })
}

/// `metadata.name=x`, `metadata.namespace=x`, `type=x`, `type!=x`, comma-separated.
fn field_selector_matches(selector: &str, obj: &Value) -> bool {
    let field = |path: &str| -> Option<String> {
        let mut v = obj;
        for p in path.split('.') {
            v = v.get(p)?;
        }
        v.as_str().map(String::from)
    };
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|t| {
            if let Some((k, v)) = t.split_once("!=") {
                field(k).as_deref().unwrap_or("") != v
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                field(k).as_deref().unwrap_or("") == v
            } else {
                true
            }
        })
}

fn labels_of(obj: &Value) -> serde_json::Map<String, Value> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// What a request addresses.
#[derive(Debug)]
struct Target {
    res: &'static Resource,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, more @ ..] => (Some(ns.to_string()), [&[*r][..], more].concat()),
        _ => (None, rest.to_vec()),
    };
    let plural = *rest.first()?;
    let res = resource_by_plural(plural)?;
    if res.group != group || !res.versions.contains(&version) {
        return None;
    }
    Some(Target {
        res,
        version: version.to_string(),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn query_map(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ApiServer {
    /// Starts on `addr` (port 0 for any) with BOOKMARKs every `bookmark_every`.
    pub fn start(addr: &str, bookmark_every: Duration) -> ApiServer {
        let listener = std::net::TcpListener::bind(addr).expect("bind the API stand-in");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (changed, _) = tokio::sync::watch::channel(0u64);
        let state = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed,
            bookmark_every,
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = axum::Router::new().fallback(handle).with_state(st);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        ApiServer {
            addr,
            state,
            _thread: thread,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server, without credentials.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster: {{server: \"{}\"}}\ncontexts:\n- name: standin\n  context: {{cluster: standin, user: standin}}\ncurrent-context: standin\nusers:\n- name: standin\n  user: {{}}\n",
            self.url()
        )
    }

    fn with<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut s = self.state.store.lock().expect("store");
        f(&mut s)
    }

    /// Creates or replaces an object (as `kubectl apply` would), by its kind.
    pub fn apply(&self, obj: Value) -> Value {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let res = resource_by_kind(&kind).unwrap_or_else(|| panic!("unknown kind {kind}"));
        let ns = if res.namespaced {
            Some(
                obj.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("default")
                    .to_string(),
            )
        } else {
            None
        };
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .expect("metadata.name")
            .to_string();
        let out = self.with(|s| {
            let key = (res.plural, ns.clone().unwrap_or_default(), name);
            let mut obj = obj;
            if let Some(old) = s.objects.get(&key) {
                // Keep identity fields as the server owns them.
                obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
                obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                s.write(res, key, obj, "MODIFIED")
            } else {
                s.write(res, key, obj, "ADDED")
            }
        });
        self.notify();
        out
    }

    /// Applies every document of a YAML text (through serde_json from a YAML parser is not
    /// available here, so the caller gives JSON values).
    pub fn apply_all(&self, objs: impl IntoIterator<Item = Value>) {
        for o in objs {
            self.apply(o);
        }
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let res = resource_by_kind(kind).unwrap_or_else(|| panic!("unknown kind {kind}"));
        let ns = if res.namespaced { namespace } else { "" };
        let done = self.with(|s| s.remove(res, (res.plural, ns.to_string(), name.to_string())));
        self.notify();
        done.is_some()
    }

    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = resource_by_kind(kind)?;
        let ns = if res.namespaced { namespace } else { "" };
        self.with(|s| {
            s.objects
                .get(&(res.plural, ns.to_string(), name.to_string()))
                .cloned()
        })
    }

    /// Every object of a kind.
    pub fn list(&self, kind: &str) -> Vec<Value> {
        let Some(res) = resource_by_kind(kind) else {
            return Vec::new();
        };
        self.with(|s| {
            s.objects
                .iter()
                .filter(|((p, _, _), _)| *p == res.plural)
                .map(|(_, v)| v.clone())
                .collect()
        })
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.with(|s| s.rv)
    }

    /// Forgets the watch history: watches resuming from before now get 410 Gone.
    pub fn compact(&self) {
        self.with(|s| {
            s.compacted_below = s.rv + 1;
            s.history.clear();
        });
    }

    /// Forgets the history before `rv` (etcd compaction).
    pub fn compact_before(&self, rv: u64) {
        self.with(|s| {
            s.compacted_below = rv;
            s.history.retain(|e| e.rv >= rv);
        });
    }

    /// Answers 404 for a resource (its CRD uninstalled) or serves it again.
    pub fn hide(&self, plural: &str, hidden: bool) {
        self.with(|s| {
            s.hidden.retain(|p| p != plural);
            if hidden {
                s.hidden.push(plural.to_string());
            }
        });
    }

    /// Ends every open watch with 410 Gone (after compacting), forcing clients to relist.
    pub fn expire_watches(&self) {
        self.compact();
        self.with(|s| s.expire_generation += 1);
        self.notify();
    }

    /// Closes every open watch stream, as a dropped connection or an API server restart.
    pub fn drop_watches(&self) {
        self.with(|s| s.watch_generation += 1);
        self.notify();
    }

    /// Delays every watch event (a slow watch).
    pub fn set_event_delay(&self, d: Duration) {
        self.with(|s| s.event_delay = d);
    }

    /// Answers 500 to requests whose path contains `fragment` (None: heal).
    pub fn fail_requests(&self, fragment: Option<&str>) {
        self.with(|s| s.failing = fragment.map(String::from));
    }

    /// A token TokenReview accepts, for `system:serviceaccount:NS:SA`.
    pub fn add_token(&self, token: &str, namespace: &str, sa: &str, audiences: &[&str]) {
        self.with(|s| {
            s.tokens.insert(
                token.to_string(),
                (
                    format!("system:serviceaccount:{namespace}:{sa}"),
                    audiences.iter().map(|a| a.to_string()).collect(),
                ),
            )
        });
    }

    /// Requests served so far ("METHOD path?query").
    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.requests.clone())
    }

    fn notify(&self) {
        self.state.changed.send_modify(|n| *n += 1);
    }
}

impl Store {
    fn write(
        &mut self,
        res: &'static Resource,
        key: (&'static str, String, String),
        mut obj: Value,
        kind: &'static str,
    ) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        if meta.get("uid").is_none_or(Value::is_null) {
            meta["uid"] = json!(format!("uid-{rv}"));
        }
        if meta.get("creationTimestamp").is_none_or(Value::is_null) {
            meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        if res.namespaced {
            meta["namespace"] = json!(key.1);
        }
        self.objects.insert(key, obj.clone());
        self.history.push(Event {
            rv,
            resource: res.plural,
            kind,
            object: obj.clone(),
        });
        obj
    }

    fn remove(
        &mut self,
        res: &'static Resource,
        key: (&'static str, String, String),
    ) -> Option<Value> {
        let mut obj = self.objects.remove(&key)?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.history.push(Event {
            rv: self.rv,
            resource: res.plural,
            kind: "DELETED",
            object: obj.clone(),
        });
        Some(obj)
    }

    fn in_scope(&self, t: &Target, key: &(&'static str, String, String)) -> bool {
        key.0 == t.res.plural && t.namespace.as_ref().is_none_or(|ns| *ns == key.1)
    }
}

/// Rewrites an object to the requested version of its group.
fn as_version(mut obj: Value, res: &Resource, version: &str) -> Value {
    obj["apiVersion"] = json!(api_version(res, version));
    obj["kind"] = json!(res.kind);
    obj
}

async fn handle(State(st): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = query_map(req.uri().query());
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    {
        let mut s = st.store.lock().expect("store");
        s.requests.push(format!(
            "{method} {path}{}",
            req.uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        ));
        if s.failing
            .as_ref()
            .is_some_and(|f| path.contains(f.as_str()))
        {
            return respond(
                500,
                &status(500, "InternalError", "the stand-in was told to fail"),
            );
        }
    }
    let body: Bytes = match axum::body::to_bytes(req.into_body(), 64 << 20).await {
        Ok(b) => b,
        Err(e) => return respond(400, &status(400, "BadRequest", e.to_string())),
    };
    if path == "/apis/authentication.k8s.io/v1/tokenreviews" && method == Method::POST {
        return token_review(&st, &body);
    }
    if path == "/version" {
        return respond(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-standin"}),
        );
    }
    let Some(t) = parse_path(&path) else {
        return respond(
            404,
            &status(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ),
        );
    };
    if st
        .store
        .lock()
        .expect("store")
        .hidden
        .iter()
        .any(|h| h == t.res.plural)
    {
        return respond(
            404,
            &status(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ),
        );
    }
    match (method, &t.name) {
        (Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch(st, t, query)
        }
        (Method::GET, None) => list(&st, &t, &query),
        (Method::GET, Some(name)) => {
            let s = st.store.lock().expect("store");
            let key = (
                t.res.plural,
                t.namespace.clone().unwrap_or_default(),
                name.clone(),
            );
            match s.objects.get(&key) {
                Some(o) => respond(200, &as_version(o.clone(), t.res, &t.version)),
                None => respond(
                    404,
                    &status(
                        404,
                        "NotFound",
                        format!("{} \"{name}\" not found", t.res.plural),
                    ),
                ),
            }
        }
        (Method::POST, None) => write(&st, &t, None, &body, WriteOp::Create),
        (Method::PUT, Some(name)) => write(&st, &t, Some(name.clone()), &body, WriteOp::Replace),
        (Method::PATCH, Some(name)) => {
            let op = if content_type.contains("apply-patch") {
                WriteOp::Apply
            } else if content_type.contains("json-patch") {
                return respond(
                    415,
                    &status(
                        415,
                        "UnsupportedMediaType",
                        "JSON patches are not supported by the stand-in; use a merge patch",
                    ),
                );
            } else {
                WriteOp::Merge
            };
            write(&st, &t, Some(name.clone()), &body, op)
        }
        (Method::DELETE, Some(name)) => {
            let out = {
                let mut s = st.store.lock().expect("store");
                s.remove(
                    t.res,
                    (
                        t.res.plural,
                        t.namespace.clone().unwrap_or_default(),
                        name.clone(),
                    ),
                )
            };
            st.changed.send_modify(|n| *n += 1);
            match out {
                Some(o) => respond(200, &as_version(o, t.res, &t.version)),
                None => respond(
                    404,
                    &status(
                        404,
                        "NotFound",
                        format!("{} \"{name}\" not found", t.res.plural),
                    ),
                ),
            }
        }
        _ => respond(405, &status(405, "MethodNotAllowed", "method not allowed")),
    }
}

fn token_review(st: &Shared, body: &[u8]) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return respond(400, &status(400, "BadRequest", "not JSON"));
    };
    let token = req
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or("");
    let wanted: Vec<String> = req
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let s = st.store.lock().expect("store");
    let status_v = match s.tokens.get(token) {
        Some((user, auds)) => {
            let common: Vec<&String> = if wanted.is_empty() {
                auds.iter().collect()
            } else {
                wanted.iter().filter(|a| auds.contains(a)).collect()
            };
            if common.is_empty() {
                json!({"authenticated": false, "error": "token audiences do not match"})
            } else {
                json!({"authenticated": true, "user": {"username": user}, "audiences": common})
            }
        }
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    let mut out = req.clone();
    out["status"] = status_v;
    respond(201, &out)
}

fn list(st: &Shared, t: &Target, q: &HashMap<String, String>) -> Response {
    let mut s = st.store.lock().expect("store");
    let (rv, items, more) = if let Some(token) = q.get("continue").filter(|c| !c.is_empty()) {
        match s.pages.remove(token) {
            Some((rv, items)) => (rv, items, None),
            None => {
                return respond(
                    410,
                    &status(410, "Expired", "the provided continue parameter is too old"),
                );
            }
        }
    } else {
        let labels = q.get("labelSelector").cloned().unwrap_or_default();
        let fields = q.get("fieldSelector").cloned().unwrap_or_default();
        let items: Vec<Value> = s
            .objects
            .iter()
            .filter(|(k, _)| s.in_scope(t, k))
            .map(|(_, v)| v)
            .filter(|o| label_selector_matches(&labels, &labels_of(o)))
            .filter(|o| field_selector_matches(&fields, o))
            .map(|o| as_version(o.clone(), t.res, &t.version))
            .collect();
        (s.rv, items, None::<()>)
    };
    let _ = more;
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let mut items = items;
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if items.len() > limit {
        let rest = items.split_off(limit);
        s.next_page += 1;
        let token = format!("page-{}", s.next_page);
        meta["continue"] = json!(token);
        meta["remainingItemCount"] = json!(rest.len());
        s.pages.insert(token, (rv, rest));
    }
    respond(
        200,
        &json!({
            "kind": format!("{}List", t.res.kind),
            "apiVersion": api_version(t.res, &t.version),
            "metadata": meta,
            "items": items,
        }),
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum WriteOp {
    Create,
    Replace,
    Merge,
    Apply,
}

fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn write(st: &Shared, t: &Target, name: Option<String>, body: &[u8], op: WriteOp) -> Response {
    let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
        return respond(400, &status(400, "BadRequest", "the body is not JSON"));
    };
    let name = name.or_else(|| {
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(String::from)
    });
    let Some(name) = name else {
        return respond(
            422,
            &status(422, "Invalid", "metadata.name: Required value"),
        );
    };
    let ns = t.namespace.clone().unwrap_or_default();
    if t.res.namespaced && ns.is_empty() {
        return respond(
            404,
            &status(404, "NotFound", "namespaced resource needs a namespace"),
        );
    }
    let key = (t.res.plural, ns, name.clone());
    let out = {
        let mut s = st.store.lock().expect("store");
        let existing = s.objects.get(&key).cloned();
        let status_only = t.subresource.as_deref() == Some("status");
        match (op, existing) {
            (WriteOp::Create, Some(_)) => {
                return respond(
                    409,
                    &status(
                        409,
                        "AlreadyExists",
                        format!("{} \"{name}\" already exists", t.res.plural),
                    ),
                );
            }
            (WriteOp::Create, None) => s.write(t.res, key, obj, "ADDED"),
            (WriteOp::Replace | WriteOp::Merge, None) => {
                return respond(
                    404,
                    &status(
                        404,
                        "NotFound",
                        format!("{} \"{name}\" not found", t.res.plural),
                    ),
                );
            }
            (WriteOp::Apply, None) => {
                obj["metadata"]["name"] = json!(name);
                s.write(t.res, key, obj, "ADDED")
            }
            (WriteOp::Replace, Some(old)) => {
                let sent = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                let current = old
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                if sent.is_some_and(|v| Some(v) != current) {
                    return respond(
                        409,
                        &status(
                            409,
                            "Conflict",
                            format!(
                                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                                t.res.plural
                            ),
                        ),
                    );
                }
                let mut new = if status_only {
                    let mut n = old.clone();
                    n["status"] = obj["status"].clone();
                    n
                } else {
                    let mut n = obj;
                    if let Some(st) = old.get("status") {
                        n["status"] = st.clone();
                    }
                    n
                };
                new["metadata"]["uid"] = old["metadata"]["uid"].clone();
                new["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                s.write(t.res, key, new, "MODIFIED")
            }
            (WriteOp::Merge | WriteOp::Apply, Some(old)) => {
                let mut new = old.clone();
                if status_only {
                    if let Some(p) = obj.get("status") {
                        merge_patch(&mut new["status"], p);
                    }
                } else {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                    merge_patch(&mut new, &obj);
                }
                if new == old {
                    return respond(200, &as_version(old, t.res, &t.version));
                }
                s.write(t.res, key, new, "MODIFIED")
            }
        }
    };
    st.changed.send_modify(|n| *n += 1);
    let code = if op == WriteOp::Create { 201 } else { 200 };
    respond(code, &as_version(out, t.res, &t.version))
}

fn watch(st: Arc<Shared>, t: Target, q: HashMap<String, String>) -> Response {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let labels = q.get("labelSelector").cloned().unwrap_or_default();
    let fields = q.get("fieldSelector").cloned().unwrap_or_default();
    let (gen0, exp0, gone) = {
        let s = st.store.lock().expect("store");
        (
            s.watch_generation,
            s.expire_generation,
            // Events after `from` must all still be in the history.
            from > 0 && from + 1 < s.compacted_below,
        )
    };
    let mut changed = st.changed.subscribe();
    let bookmark_every = st.bookmark_every;
    let stream = async_stream::stream! {
        let line = |v: Value| Ok::<Bytes, std::io::Error>(Bytes::from(format!("{v}\n")));
        if gone {
            yield line(json!({"type": "ERROR", "object": status(410, "Expired", format!("too old resource version: {from}"))}));
            return;
        }
        // With no resourceVersion, a watch starts with the current state as ADDED events.
        let mut sent = from;
        if from == 0 {
            let (rv, items): (u64, Vec<Value>) = {
                let s = st.store.lock().expect("store");
                (s.rv, s.objects.iter().filter(|(k, _)| s.in_scope(&t, k)).map(|(_, v)| v.clone()).collect())
            };
            for o in items {
                if label_selector_matches(&labels, &labels_of(&o)) && field_selector_matches(&fields, &o) {
                    yield line(json!({"type": "ADDED", "object": as_version(o, t.res, &t.version)}));
                }
            }
            sent = rv;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next_bookmark = tokio::time::Instant::now() + bookmark_every;
        loop {
            let (events, delay, ended, expired, rv) = {
                let s = st.store.lock().expect("store");
                let events: Vec<Event> = s.history.iter().filter(|e| e.rv > sent && e.resource == t.res.plural).cloned().collect();
                (events, s.event_delay, s.watch_generation != gen0, s.expire_generation != exp0, s.rv)
            };
            if expired {
                yield line(json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")}));
                return;
            }
            if ended {
                return;
            }
            for e in events {
                sent = e.rv;
                let ns_ok = t.namespace.as_ref().is_none_or(|ns| e.object.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns.as_str()));
                if !ns_ok || !label_selector_matches(&labels, &labels_of(&e.object)) || !field_selector_matches(&fields, &e.object) {
                    continue;
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                yield line(json!({"type": e.kind, "object": as_version(e.object, t.res, &t.version)}));
            }
            sent = sent.max(rv);
            if bookmarks && tokio::time::Instant::now() >= next_bookmark {
                next_bookmark = tokio::time::Instant::now() + bookmark_every;
                yield line(json!({"type": "BOOKMARK", "object": {
                    "apiVersion": api_version(t.res, &t.version), "kind": t.res.kind,
                    "metadata": {"resourceVersion": sent.to_string()},
                }}));
            }
            let wake = next_bookmark.min(deadline);
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
        }
    };
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| respond(500, &status(500, "InternalError", "response")))
}
