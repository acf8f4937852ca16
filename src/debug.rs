//! istiod's debug and monitoring endpoints: `/ready`, `/metrics`, `/version`,
//! `/debug/syncz`, `/debug/config_dump?proxyID=`, `/debug/configz`, `/debug/connections`.
//! They read the same snapshot and connection registry the xDS server uses, never its
//! internals. `/debug/graph` and `/debug/config_diff` feed the `/ui` page ([`crate::ui`]).

mod diff;
mod graph;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use crate::translate;
use crate::xds::XdsState;
use crate::xds::registry::Connection;

/// Who may read `/debug/*` and `/ui`: any caller on this host (port-forwards arrive
/// there), else one with a bearer token meshd verifies (a service account token with
/// the `istio-ca` audience, as for the CA) — istiod's `allowAuthenticatedOrLocalhost`.
/// Configuration dumps name every service and policy; tracer and EnvoyFilter values may
/// carry credentials. `/ready`, `/metrics` and `/version` stay open (probes, Prometheus).
#[derive(Clone)]
pub struct Access {
    pub auth: Option<Arc<crate::ca::server::Authenticator>>,
}

async fn guard(
    State(access): State<Access>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let protected = path.starts_with("/debug") || path == "/ui" || path.starts_with("/ui/");
    if !protected || peer.ip().is_loopback() {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let verdict = match (&access.auth, token) {
        (_, None) => Err("no bearer token".to_string()),
        (None, Some(_)) => Err("meshd verifies no tokens here".to_string()),
        (Some(a), Some(t)) => a.verify_token(&t).await.map(|_| ()),
    };
    match verdict {
        Ok(()) => next.run(req).await,
        Err(why) => (
            StatusCode::UNAUTHORIZED,
            format!(
                "{path}: {why} (hint: from another host, send `authorization: Bearer <service account token with audience istio-ca>`, or use kubectl port-forward)\n"
            ),
        )
            .into_response(),
    }
}

pub fn router(state: Arc<XdsState>, access: Access) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/version", get(version))
        .route("/debug", get(index))
        .route("/debug/syncz", get(syncz))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/explain", get(explain))
        .route("/debug/configz", get(configz))
        .route("/debug/connections", get(connections))
        .route("/debug/config_diff", get(config_diff))
        .route("/debug/graph", get(graph))
        .merge(crate::ui::router())
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(access, guard))
}

async fn ready(State(state): State<Arc<XdsState>>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "configuration not loaded yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<XdsState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// istiod's plain-text build string, `VERSION-REVISION-STATUS`: istioctl (`version`) and
/// Kiali split it on its last two dashes, so the revision part names meshd.
async fn version() -> &'static str {
    concat!(env!("CARGO_PKG_VERSION"), "-meshd-Clean")
}

async fn index() -> Json<serde_json::Value> {
    Json(json!({
        "/debug/syncz": "per proxy and type: subscription, versions and nonces sent and acknowledged, last NACK",
        "/debug/config_dump?proxyID=ID": "what a connected proxy is given, in Envoy's config_dump shape",
        "/debug/explain?proxyID=ID&port=N&host=H&path=P": "which listener, chain, route and cluster a request reaches through a connected proxy, and why (meshd explain's flags as parameters)",
        "/debug/configz": "configuration objects in force and every diagnostic",
        "/debug/connections": "connected proxies",
        "/debug/config_diff?proxyID=ID": "what the last configuration change changed in a connected proxy's resources, field by field",
        "/debug/graph": "services, each VirtualService's split, and requests counted between workloads",
        "/ui": "all of the above for a person, in a browser",
    }))
}

#[derive(Deserialize)]
struct NamespaceQuery {
    namespace: Option<String>,
}

/// Per proxy: meshd's own detail (`types`: per type URL, subscription, versions, nonces,
/// last NACK) and the fields of istiod's SyncStatus that Kiali and scripts read
/// (`cluster_id`, `proxy`, `proxy_type`, `istio_version`, `{cluster,listener,route,
/// endpoint}_{sent,acked}` nonces, `resources`). `?namespace=` keeps one namespace's.
async fn syncz(
    State(state): State<Arc<XdsState>>,
    Query(q): Query<NamespaceQuery>,
) -> Json<serde_json::Value> {
    use crate::envoy::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
    let list: Vec<serde_json::Value> = state
        .connections()
        .iter()
        .filter(|c| q.namespace.as_ref().is_none_or(|n| c.proxy.namespace == *n))
        .map(|c| {
            let s = c.status();
            let mut v = serde_json::to_value(&s).unwrap_or_default();
            let Some(m) = v.as_object_mut() else {
                return v;
            };
            m.insert("cluster_id".into(), json!(c.proxy.cluster_id));
            m.insert(
                "proxy_type".into(),
                json!(match c.proxy.kind {
                    crate::model::proxy::ProxyKind::Sidecar => "sidecar",
                    crate::model::proxy::ProxyKind::Router => "router",
                }),
            );
            for (prefix, url) in [
                ("cluster", CLUSTER),
                ("listener", LISTENER),
                ("route", ROUTE),
                ("endpoint", ENDPOINT),
            ] {
                if let Some(t) = s.types.get(url) {
                    if let Some(n) = &t.sent_nonce {
                        m.insert(format!("{prefix}_sent"), json!(n));
                    }
                    if let Some(n) = &t.acked_nonce {
                        m.insert(format!("{prefix}_acked"), json!(n));
                    }
                }
            }
            let resources: serde_json::Map<String, serde_json::Value> = s
                .types
                .iter()
                .map(|(url, t)| {
                    (
                        url.clone(),
                        json!({"sent": t.sent_nonce, "acked": t.acked_nonce}),
                    )
                })
                .collect();
            m.insert("resources".into(), serde_json::Value::Object(resources));
            v
        })
        .collect();
    Json(json!(list))
}

async fn connections(State(state): State<Arc<XdsState>>) -> Json<serde_json::Value> {
    let list: Vec<_> = state
        .connections()
        .iter()
        .map(|c| {
            // What makes a misbehaving proxy stand out: how often it refused what it was
            // sent, and the types where it has not acknowledged the last response.
            let status = c.status();
            let nacks: u64 = status.types.values().map(|t| t.nacks).sum();
            let awaiting: Vec<&str> = status
                .types
                .iter()
                .filter(|(_, t)| t.sent_nonce.is_some() && t.sent_nonce != t.acked_nonce)
                .map(|(url, _)| crate::envoy::type_url::short(url))
                .collect();
            json!({
                "connectionId": c.conn_id,
                "proxy": c.proxy.id,
                "peer": c.peer,
                "delta": c.delta,
                "istioVersion": c.proxy.istio_version,
                "connectedAt": humantime_secs(c.connected_at),
                "nacks": nacks,
                "awaitingAck": awaiting,
            })
        })
        .collect();
    Json(json!(list))
}

fn humantime_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct ProxyQuery {
    #[serde(rename = "proxyID")]
    proxy_id: Option<String>,
}

/// The connected proxy `id` names: the full node id, istioctl's `POD.NAMESPACE`, or a
/// connection id; else the answer to send.
fn connected(
    state: &XdsState,
    id: Option<&str>,
    example: &str,
) -> Result<Arc<Connection>, Response> {
    let Some(id) = id.filter(|s| !s.is_empty()) else {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("missing proxyID (hint: {example}; /debug/connections lists ids)\n"),
        )
            .into_response());
    };
    let conns = state.connections();
    let conn = conns.iter().find(|c| {
        c.proxy.id == id
            || c.conn_id == id
            || format!("{}.{}", c.proxy.pod, c.proxy.namespace) == id
    });
    match conn {
        Some(c) => Ok(c.clone()),
        None => {
            let known: Vec<String> = conns.iter().map(|c| c.proxy.id.clone()).collect();
            Err((
                StatusCode::NOT_FOUND,
                format!(
                    "proxy {id} is not connected (connected: {})\n",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
                .into_response())
        }
    }
}

/// `meshd explain` for a connected proxy: its own node (labels, metadata, certificate
/// state) against the snapshot it is served from. Parameters are the CLI's flag names;
/// `header=Name: value` may repeat.
async fn explain(
    State(state): State<Arc<XdsState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let conn = match connected(
        &state,
        get("proxyID").as_deref(),
        "/debug/explain?proxyID=ID&port=9080&host=reviews",
    ) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut spec = serde_json::Map::new();
    for (k, v) in &params {
        match k.as_str() {
            "proxyID" | "header" => {}
            "port" => {
                let Ok(p) = v.parse::<u16>() else {
                    return (
                        StatusCode::BAD_REQUEST,
                        format!("port {v:?} is not a port number\n"),
                    )
                        .into_response();
                };
                spec.insert("port".into(), json!(p));
            }
            _ => {
                spec.insert(k.clone(), json!(v));
            }
        }
    }
    spec.insert(
        "H".into(),
        params
            .iter()
            .filter(|(k, _)| k == "header")
            .map(|(_, v)| json!(v))
            .collect(),
    );
    let spec: crate::explain::CallSpec = match serde_json::from_value(serde_json::Value::Object(
        spec,
    )) {
        Ok(s) => s,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("{e} (hint: the parameters are meshd explain's flags: mode, address, port, protocol, tls, alpn, sni, host, path, method, header)\n"),
            )
                .into_response();
        }
    };
    let snap = state.snapshot();
    // Translation is CPU work: on the CPU pool, off the async threads.
    let out = state
        .cpu
        .run_caught(move || {
            let ctx = translate::ProxyContext::new(&snap, &conn.proxy);
            let res = translate::generate_for(&ctx);
            let e = crate::explain::explain(&ctx, &res, None, &spec);
            let mut v = e.to_json();
            v["text"] = json!(e.to_text());
            v["proxy"] = json!(conn.proxy.id);
            v["generation"] = json!(snap.generation);
            v
        })
        .await;
    match out {
        Ok(v) => Json(v).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the translation failed (see meshd's log)\n",
        )
            .into_response(),
    }
}

async fn config_dump(State(state): State<Arc<XdsState>>, Query(q): Query<ProxyQuery>) -> Response {
    let conn = match connected(
        &state,
        q.proxy_id.as_deref(),
        "/debug/config_dump?proxyID=ID",
    ) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let snap = state.snapshot();
    // Translation is CPU work: on the CPU pool, off the async threads.
    let dump = state
        .cpu
        .run_caught(move || {
            let res = translate::generate(&snap, &conn.proxy);
            let mut dump = translate::output::config_dump(&res, &snap.generation.to_string());
            redact_tracer_secrets(&mut dump);
            dump
        })
        .await;
    match dump {
        Ok(v) => Json(v).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the translation failed (see meshd's log)\n",
        )
            .into_response(),
    }
}

/// The connected proxy's resources under the snapshots before and after the last
/// configuration change (endpoint-only changes are not one).
async fn config_diff(State(state): State<Arc<XdsState>>, Query(q): Query<ProxyQuery>) -> Response {
    let conn = match connected(
        &state,
        q.proxy_id.as_deref(),
        "/debug/config_diff?proxyID=ID",
    ) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(change) = state.last_change() else {
        return Json(json!({
            "proxy": conn.proxy.id,
            "to": state.snapshot().generation,
            "changes": [],
            "note": "no configuration change since meshd started",
        }))
        .into_response();
    };
    let (before, now) = (change.0.clone(), change.1.clone());
    // Two translations: CPU work, on the CPU pool with the proxies' (a caller asking in
    // a loop waits its turn instead of taking every core).
    let out = state
        .cpu
        .run_caught(move || {
            let old = translate::generate(&before, &conn.proxy);
            let new = translate::generate(&now, &conn.proxy);
            json!({
                "proxy": conn.proxy.id,
                "from": before.generation,
                "to": now.generation,
                "changes": diff::diff(&old, &new),
            })
        })
        .await;
    match out {
        Ok(v) => Json(v).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the translation failed (see meshd's log)\n",
        )
            .into_response(),
    }
}

async fn graph(State(state): State<Arc<XdsState>>) -> Json<serde_json::Value> {
    let snap = state.snapshot();
    Json(graph::graph(&snap, state.metrics.mesh.request_counts()))
}

/// Tracer header values (OpenTelemetry and Zipkin `headers`, gRPC initial metadata) are
/// credentials more often than not (an API key, a tenant token, a value from meshd's
/// environment): the proxy needs them, a reader of debug output does not.
pub(crate) fn redact_tracer_secrets(v: &mut serde_json::Value) {
    fn redact_headers(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    match k.as_str() {
                        "requestHeadersToAdd" | "request_headers_to_add" => {
                            for h in x.as_array_mut().into_iter().flatten() {
                                if let Some(val) =
                                    h.get_mut("header").and_then(|h| h.get_mut("value"))
                                {
                                    *val = json!("(redacted)");
                                }
                            }
                        }
                        "initialMetadata" | "initial_metadata" => {
                            for h in x.as_array_mut().into_iter().flatten() {
                                if let Some(val) = h.get_mut("value") {
                                    *val = json!("(redacted)");
                                }
                            }
                        }
                        _ => redact_headers(x),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(redact_headers),
            _ => {}
        }
    }
    match v {
        serde_json::Value::Object(m) => {
            let tracer = m
                .get("@type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.contains("envoy.config.trace.v3."));
            if tracer {
                redact_headers(v);
            } else {
                m.values_mut().for_each(redact_tracer_secrets);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_tracer_secrets),
        _ => {}
    }
}

async fn configz(State(state): State<Arc<XdsState>>) -> Json<serde_json::Value> {
    let snap = state.snapshot();
    let mut by_kind: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (k, o) in &snap.objects {
        by_kind.entry(k.kind.to_string()).or_default().push(json!({
            "namespace": k.namespace,
            "name": k.name,
            "apiVersion": o.api_version,
            "origin": o.origin,
            "hash": format!("{:016x}", o.hash),
            "spec": o.spec,
        }));
    }
    Json(json!({
        "generation": snap.generation,
        "objects": by_kind,
        "diagnostics": snap.diagnostics,
        "errors": snap.error_count(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use tower::ServiceExt;

    async fn status(path: &str, peer: &str, token: Option<&str>) -> StatusCode {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let state = Arc::new(XdsState::new(Default::default(), rx));
        let app = router(state, Access { auth: None });
        let mut req = axum::http::Request::builder().uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = req.body(Body::empty()).expect("request");
        let peer: std::net::SocketAddr = peer.parse().expect("address");
        req.extensions_mut().insert(ConnectInfo(peer));
        app.oneshot(req)
            .await
            .map(|r| r.status())
            .unwrap_or(StatusCode::IM_A_TEAPOT)
    }

    #[tokio::test]
    async fn debug_and_ui_answer_this_host_or_a_verified_token() {
        let remote = "10.1.2.3:40000";
        for path in [
            "/debug/syncz",
            "/debug/configz",
            "/ui",
            "/ui/app.js",
            "/debug",
        ] {
            assert_eq!(
                status(path, remote, None).await,
                StatusCode::UNAUTHORIZED,
                "{path}"
            );
            assert_eq!(
                status(path, remote, Some("forged")).await,
                StatusCode::UNAUTHORIZED,
                "{path}: a token meshd cannot verify"
            );
            assert_eq!(
                status(path, "127.0.0.1:40000", None).await,
                StatusCode::OK,
                "{path}"
            );
            assert_eq!(
                status(path, "[::1]:40000", None).await,
                StatusCode::OK,
                "{path}"
            );
        }
        // Probes and Prometheus need no credentials.
        assert_eq!(status("/metrics", remote, None).await, StatusCode::OK);
        assert_eq!(status("/version", remote, None).await, StatusCode::OK);
        assert_ne!(
            status("/ready", remote, None).await,
            StatusCode::UNAUTHORIZED
        );
    }
}
