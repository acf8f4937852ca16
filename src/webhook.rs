//! The admission webhooks on 15017: `/inject` (sidecar injection: AdmissionReview in,
//! RFC 6902 JSON patch out) and `/validate` (Istio objects checked with meshd's own
//! diagnostics). Both always answer 200 with an AdmissionReview; failures are in it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::inject::merge::normalize_pod;
use crate::inject::pipeline::{self, Request, Settings};

/// `response` of an AdmissionReview answering `review`.
fn reply(review: &Value, response: Value) -> Value {
    let mut r = response;
    r["uid"] = review["request"]["uid"].clone();
    json!({
        "apiVersion": review["apiVersion"].as_str().unwrap_or("admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": r,
    })
}

/// Webhook URL parameters (`/inject/cluster/c1/net/n1`): cluster and network of the
/// proxies, as istiod reads them.
pub fn path_params(path: &str) -> BTreeMap<String, String> {
    let rest = path.trim_start_matches("/inject").trim_matches('/');
    let mut out = BTreeMap::new();
    if rest.is_empty() {
        return out;
    }
    let parts: Vec<&str> = if rest.starts_with(":ENV:") {
        rest.split(":ENV:")
            .filter(|p| !p.is_empty())
            .flat_map(|kv| kv.splitn(2, '=').collect::<Vec<_>>())
            .collect()
    } else {
        rest.split('/').collect()
    };
    for pair in parts.chunks(2) {
        let [k, v] = pair else { break };
        let v = v.replace("--slash--", "/");
        let key = match *k {
            "cluster" => "ISTIO_META_CLUSTER_ID".to_string(),
            "net" => "ISTIO_META_NETWORK".to_string(),
            other => other.to_uppercase(),
        };
        out.insert(key, v);
    }
    out
}

/// Answers an injection AdmissionReview.
pub fn inject_review(settings: &Settings, review: &Value, revision: &str) -> Value {
    inject_review_with(settings, review, revision, BTreeMap::new())
}

pub fn inject_review_with(
    settings: &Settings,
    review: &Value,
    revision: &str,
    mut proxy_envs: BTreeMap<String, String>,
) -> Value {
    let req = &review["request"];
    let mut pod = req["object"].clone();
    if !pod.is_object() {
        return reply(
            review,
            json!({"allowed": false, "status": {"message": "request.object is not a Pod"}}),
        );
    }
    if let Some(m) = pod["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    let namespace = pod["metadata"]["namespace"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or_else(|| req["namespace"].as_str())
        .unwrap_or_default()
        .to_string();
    let body = json!({"metadata": pod["metadata"].clone(), "spec": pod["spec"].clone()});
    if !pipeline::inject_required(settings, &body, &namespace, false) {
        return reply(review, json!({"allowed": true}));
    }
    // The pod's namespace is filled in for injection but never patched.
    let mut filled = body.clone();
    filled["metadata"]["namespace"] = Value::from(namespace.as_str());
    let (type_meta, deploy_meta) = pipeline::owner_of_pod(&filled, &namespace);
    if let Some(net) = pod["metadata"]["labels"]["topology.istio.io/network"].as_str() {
        proxy_envs.insert("ISTIO_META_NETWORK".into(), net.to_string());
    }
    let request = Request {
        pod: filled.clone(),
        type_meta,
        deploy_meta,
        revision: revision.to_string(),
        proxy_envs,
        offline: false,
    };
    match pipeline::inject(settings, &request) {
        Ok(result) => {
            let before = normalize_pod(&filled);
            let ops = diff(&before, &result);
            use base64::Engine;
            let patch = base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&ops).unwrap_or_default());
            reply(
                review,
                json!({"allowed": true, "patch": patch, "patchType": "JSONPatch"}),
            )
        }
        Err(e) => reply(
            review,
            json!({"allowed": false, "status": {"message": e, "code": 400}}),
        ),
    }
}

fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

/// An RFC 6902 patch turning `a` into `b`: objects member by member, everything else
/// replaced whole.
pub fn diff(a: &Value, b: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_at(a, b, "", &mut ops);
    ops
}

fn diff_at(a: &Value, b: &Value, path: &str, ops: &mut Vec<Value>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                if !y.contains_key(k) {
                    ops.push(json!({"op": "remove", "path": format!("{path}/{}", escape(k))}));
                } else {
                    diff_at(v, &y[k], &format!("{path}/{}", escape(k)), ops);
                }
            }
            for (k, v) in y {
                if !x.contains_key(k) {
                    ops.push(
                        json!({"op": "add", "path": format!("{path}/{}", escape(k)), "value": v}),
                    );
                }
            }
        }
        _ if a == b => {}
        _ => ops.push(json!({"op": "replace", "path": path, "value": b})),
    }
}

fn unescape(k: &str) -> String {
    k.replace("~1", "/").replace("~0", "~")
}

/// Applies an RFC 6902 patch (add, remove, replace, copy, move, test).
pub fn apply_patch(doc: &Value, ops: &Value) -> Result<Value, String> {
    let mut out = doc.clone();
    for op in ops.as_array().ok_or("a JSON patch is a list")? {
        let path = op["path"].as_str().ok_or("op without path")?;
        match op["op"].as_str().unwrap_or_default() {
            "add" => put(&mut out, path, op["value"].clone(), true)?,
            "replace" => put(&mut out, path, op["value"].clone(), false)?,
            "remove" => {
                take(&mut out, path)?;
            }
            "copy" | "move" => {
                let from = op["from"].as_str().ok_or("op without from")?;
                let v = if op["op"] == "move" {
                    take(&mut out, from)?
                } else {
                    out.pointer(from).cloned().ok_or("from not found")?
                };
                put(&mut out, path, v, true)?;
            }
            "test" => {
                if out.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test failed at {path}"));
                }
            }
            other => return Err(format!("unknown op {other:?}")),
        }
    }
    Ok(out)
}

fn split(path: &str) -> Result<(String, String), String> {
    let i = path
        .rfind('/')
        .ok_or_else(|| format!("bad path {path:?}"))?;
    Ok((path[..i].to_string(), unescape(&path[i + 1..])))
}

fn put(doc: &mut Value, path: &str, v: Value, add: bool) -> Result<(), String> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, key) = split(path)?;
    let target = doc
        .pointer_mut(&parent)
        .ok_or_else(|| format!("no parent for {path}"))?;
    match target {
        Value::Object(m) => {
            if !add && !m.contains_key(&key) {
                return Err(format!("replace of missing {path}"));
            }
            m.insert(key, v);
        }
        Value::Array(a) => {
            if key == "-" {
                a.push(v);
            } else {
                let i: usize = key.parse().map_err(|_| format!("bad index in {path}"))?;
                if add {
                    if i > a.len() {
                        return Err(format!("index out of range in {path}"));
                    }
                    a.insert(i, v);
                } else {
                    *a.get_mut(i)
                        .ok_or_else(|| format!("index out of range in {path}"))? = v;
                }
            }
        }
        _ => return Err(format!("{parent} is not a container")),
    }
    Ok(())
}

fn take(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, key) = split(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m
            .remove(&key)
            .ok_or_else(|| format!("remove of missing {path}")),
        Some(Value::Array(a)) => {
            let i: usize = key.parse().map_err(|_| format!("bad index in {path}"))?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(format!("index out of range in {path}"))
            }
        }
        _ => Err(format!("no parent for {path}")),
    }
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

/// Answers a validation AdmissionReview for an Istio object.
pub fn validate_review(review: &Value, mesh: &crate::model::mesh::MeshConfig) -> Value {
    use crate::model::diagnostic::Origin;
    use crate::model::object::{Object, TypeLookup, lookup_type};
    let req = &review["request"];
    if req["operation"] == "DELETE" {
        return reply(review, json!({"allowed": true}));
    }
    let obj = req["object"].clone();
    let api = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    match lookup_type(api, kind) {
        // Istio's kinds and meshd's own policies.
        TypeLookup::Known(k)
            if k.is_istio() || k == crate::model::object::Kind::RateLimitPolicy => {}
        TypeLookup::BadVersion { served, .. } => {
            return deny(
                review,
                format!(
                    "{kind} is not served in {api} (served: {})",
                    served.join(", ")
                ),
                Vec::new(),
            );
        }
        // Kinds meshd does not validate (yet): admitted, as istiod admits kinds it does
        // not know.
        _ => return reply(review, json!({"allowed": true})),
    }
    let namespace = req["namespace"].as_str().unwrap_or("default");
    let (objects, mut diags) = Object::from_value(
        obj,
        crate::sources::yaml::FieldLines::default(),
        Origin::default(),
        namespace,
    );
    for o in &objects {
        diags.extend(crate::model::validate::object(o, mesh));
    }
    let describe = |d: &crate::model::diagnostic::Diagnostic| {
        let mut s = String::new();
        if let Some(f) = &d.field {
            s.push_str(f);
            s.push_str(": ");
        }
        s.push_str(&d.reason);
        if let Some(h) = &d.hint {
            s.push_str(&format!(" (hint: {h})"));
        }
        s
    };
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.is_error())
        .map(describe)
        .collect();
    let warnings: Vec<String> = diags
        .iter()
        .filter(|d| !d.is_error())
        .map(describe)
        .collect();
    if errors.is_empty() {
        let mut r = json!({"allowed": true});
        if !warnings.is_empty() {
            r["warnings"] = json!(warnings);
        }
        reply(review, r)
    } else {
        deny(
            review,
            format!("configuration is invalid: {}", errors.join("; ")),
            warnings,
        )
    }
}

fn deny(review: &Value, message: String, warnings: Vec<String>) -> Value {
    let mut r = json!({
        "allowed": false,
        "status": {"status": "Failure", "message": message, "reason": "Invalid", "code": 400},
    });
    if !warnings.is_empty() {
        r["warnings"] = json!(warnings);
    }
    reply(review, r)
}

// ---------------------------------------------------------------------------------------
// The HTTPS server
// ---------------------------------------------------------------------------------------

use std::sync::{Arc, Mutex};

/// Where the webhook gets its settings from.
pub struct WebhookState {
    pub xds: Arc<crate::xds::XdsState>,
    pub revision: String,
    pub istio_namespace: String,
    /// Whether the cluster runs native sidecars.
    pub native_sidecars: bool,
    /// Settings built from the snapshot's ConfigMaps, and what they were built from.
    cache: Mutex<Option<(u64, Arc<Settings>)>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl WebhookState {
    pub fn new(
        xds: Arc<crate::xds::XdsState>,
        revision: &str,
        istio_namespace: &str,
        native_sidecars: bool,
    ) -> Self {
        let metrics = xds.metrics.clone();
        WebhookState {
            xds,
            revision: revision.to_string(),
            istio_namespace: istio_namespace.to_string(),
            native_sidecars,
            cache: Mutex::new(None),
            metrics,
        }
    }

    /// The injector settings: ConfigMap `istio-sidecar-injector` (and the `istio` mesh
    /// config) when present, else meshd's built-in defaults. A ConfigMap that does not
    /// parse leaves the last good settings in force.
    pub fn settings(&self) -> Result<Arc<Settings>, String> {
        use crate::model::object::{Kind, ObjectKey, Spec};
        let snap = self.xds.snapshot();
        let suffix = if self.revision.is_empty() || self.revision == "default" {
            String::new()
        } else {
            format!("-{}", self.revision)
        };
        let cm = |name: String| {
            snap.objects.get(&ObjectKey {
                kind: Kind::ConfigMap,
                namespace: self.istio_namespace.clone(),
                name,
            })
        };
        let injector = cm(format!("istio-sidecar-injector{suffix}"));
        let mesh = cm(format!("istio{suffix}")).or_else(|| cm("istio".into()));
        let key = injector.map(|o| o.hash).unwrap_or(0)
            ^ mesh.map(|o| o.hash.rotate_left(1)).unwrap_or(0);
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| "settings lock poisoned".to_string())?;
        if let Some((k, s)) = cache.as_ref()
            && *k == key
        {
            return Ok(s.clone());
        }
        let data = |o: Option<&Arc<crate::model::object::Object>>, k: &str| -> Option<String> {
            match o.map(|o| &o.spec) {
                Some(Spec::ConfigMap(d)) => d.get(k).cloned(),
                _ => None,
            }
        };
        let config =
            data(injector, "config").unwrap_or_else(|| crate::inject::defaults::CONFIG.to_string());
        let values =
            data(injector, "values").unwrap_or_else(|| crate::inject::defaults::VALUES.to_string());
        let mesh_text =
            data(mesh, "mesh").unwrap_or_else(|| crate::inject::defaults::MESH.to_string());
        match Settings::new(&config, &values, &mesh_text) {
            Ok(mut s) => {
                s.native_sidecars = self.native_sidecars;
                let s = Arc::new(s);
                *cache = Some((key, s.clone()));
                Ok(s)
            }
            Err(e) => {
                tracing::warn!(error = %e, "injection settings refused; the last good ones stay in force");
                match cache.as_ref() {
                    Some((_, s)) => Ok(s.clone()),
                    None => Err(format!("injection settings: {e}")),
                }
            }
        }
    }
}

async fn read_review(req: axum::extract::Request) -> Result<Value, axum::response::Response> {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let json_body = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content type must be application/json\n",
        )
            .into_response());
    }
    let body = axum::body::to_bytes(req.into_body(), 16 << 20)
        .await
        .map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}\n"),
            )
                .into_response()
        })?;
    if body.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "empty body\n").into_response());
    }
    let review: Value = serde_json::from_slice(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("not an AdmissionReview: {e}\n"),
        )
            .into_response()
    })?;
    if !review["request"].is_object() {
        return Err((StatusCode::BAD_REQUEST, "AdmissionReview without request\n").into_response());
    }
    Ok(review)
}

async fn inject_handler(
    axum::extract::State(state): axum::extract::State<Arc<WebhookState>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let params = path_params(req.uri().path());
    let review = match read_review(req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let answer = match state.settings() {
        Ok(s) => {
            // Rendering is CPU work: keep it off the I/O threads.
            let revision = state.revision.clone();
            let review2 = review.clone();
            match tokio::task::spawn_blocking(move || {
                inject_review_with(&s, &review2, &revision, params)
            })
            .await
            {
                Ok(a) => a,
                Err(e) => reply(
                    &review,
                    json!({"allowed": false, "status": {"message": format!("injection failed: {e}")}}),
                ),
            }
        }
        Err(e) => reply(&review, json!({"allowed": false, "status": {"message": e}})),
    };
    let m = &state.metrics;
    m.injection_requests.inc();
    if answer["response"]["patch"].is_string() {
        m.injection_success.inc();
    } else if answer["response"]["allowed"] == true {
        m.injection_skip.inc();
    } else {
        m.injection_failure.inc();
    }
    axum::Json(answer).into_response()
}

async fn validate_handler(
    axum::extract::State(state): axum::extract::State<Arc<WebhookState>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let review = match read_review(req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let snap = state.xds.snapshot();
    let answer = validate_review(&review, &snap.mesh);
    if answer["response"]["allowed"] == true {
        state.metrics.validation_passed.inc();
    } else {
        state.metrics.validation_failed.inc();
    }
    axum::Json(answer).into_response()
}

pub fn router(state: Arc<WebhookState>) -> axum::Router {
    use axum::routing::post;
    axum::Router::new()
        .route("/inject", post(inject_handler))
        .route("/inject/{*params}", post(inject_handler))
        .route("/validate", post(validate_handler))
        .route("/validate/{*rest}", post(validate_handler))
        .with_state(state)
}

/// TLS connections for axum: handshakes run on their own tasks so a slow client cannot
/// hold up the others.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    addr: std::net::SocketAddr,
}

impl TlsListener {
    pub fn new(
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(tcp),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "webhook TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "webhook TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Some(c) = self.rx.recv().await {
                return c;
            }
            // The accept loop ended: nothing more will come.
            std::future::pending::<()>().await;
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// rustls settings for 15017: meshd's serving certificate, HTTP/1.1.
pub fn tls_config(
    cert: Arc<crate::ca::server::ServingCert>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The validation webhook refuses an EnvoyFilter whose value Envoy would reject,
    /// naming the field and the rule (istiod admits it and learns from the NACKs).
    #[test]
    fn envoy_filter_breaking_envoys_rules_is_denied() {
        let review = |timeout: &str| {
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
                "uid": "u1", "operation": "CREATE", "namespace": "default",
                "object": {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                    "metadata": {"name": "t", "namespace": "default"},
                    "spec": {"configPatches": [{"applyTo": "CLUSTER",
                        "patch": {"operation": "MERGE", "value": {"connect_timeout": timeout}}}]}}}})
        };
        let mesh = crate::model::mesh::MeshConfig::default();
        let denied = validate_review(&review("-5s"), &mesh);
        assert_eq!(denied["response"]["allowed"], false, "{denied}");
        let msg = denied["response"]["status"]["message"].to_string();
        assert!(
            msg.contains("connect_timeout breaks its rule duration.gt: 0s"),
            "{msg}"
        );
        let allowed = validate_review(&review("5s"), &mesh);
        assert_eq!(allowed["response"]["allowed"], true, "{allowed}");
    }

    /// meshd's own RateLimitPolicy is validated at admission too.
    #[test]
    fn rate_limit_policy_is_validated() {
        let review = |requests: u32| {
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
                "uid": "u2", "operation": "CREATE", "namespace": "default",
                "object": {"apiVersion": "policy.meshd.io/v1alpha1", "kind": "RateLimitPolicy",
                    "metadata": {"name": "r", "namespace": "default"},
                    "spec": {"local": {"requests": requests}}}}})
        };
        let mesh = crate::model::mesh::MeshConfig::default();
        let denied = validate_review(&review(0), &mesh);
        assert_eq!(denied["response"]["allowed"], false, "{denied}");
        assert!(
            denied["response"]["status"]["message"]
                .to_string()
                .contains("requests must be at least 1"),
            "{denied}"
        );
        let allowed = validate_review(&review(5), &mesh);
        assert_eq!(allowed["response"]["allowed"], true, "{allowed}");
    }
}
