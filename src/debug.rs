//! istiod's debug and monitoring endpoints: `/ready`, `/metrics`, `/version`,
//! `/debug/syncz`, `/debug/config_dump?proxyID=`, `/debug/configz`, `/debug/connections`.
//! They read the same snapshot and connection registry the xDS server uses, never its
//! internals.

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

pub fn router(state: Arc<XdsState>) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/version", get(version))
        .route("/debug", get(index))
        .route("/debug/syncz", get(syncz))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/configz", get(configz))
        .route("/debug/connections", get(connections))
        .with_state(state)
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

async fn version() -> Json<serde_json::Value> {
    Json(json!({"name": "meshd", "version": env!("CARGO_PKG_VERSION")}))
}

async fn index() -> Json<serde_json::Value> {
    Json(json!({
        "/debug/syncz": "per proxy and type: subscription, versions and nonces sent and acknowledged, last NACK",
        "/debug/config_dump?proxyID=ID": "what a connected proxy is given, in Envoy's config_dump shape",
        "/debug/configz": "configuration objects in force and every diagnostic",
        "/debug/connections": "connected proxies",
    }))
}

async fn syncz(State(state): State<Arc<XdsState>>) -> Json<serde_json::Value> {
    Json(serde_json::to_value(state.sync_status()).unwrap_or_default())
}

async fn connections(State(state): State<Arc<XdsState>>) -> Json<serde_json::Value> {
    let list: Vec<_> = state
        .connections()
        .iter()
        .map(|c| {
            json!({
                "connectionId": c.conn_id,
                "proxy": c.proxy.id,
                "peer": c.peer,
                "delta": c.delta,
                "istioVersion": c.proxy.istio_version,
                "connectedAt": humantime_secs(c.connected_at),
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

async fn config_dump(State(state): State<Arc<XdsState>>, Query(q): Query<ProxyQuery>) -> Response {
    let Some(id) = q.proxy_id.filter(|s| !s.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            "missing proxyID (hint: /debug/config_dump?proxyID=ID; /debug/connections lists ids)\n",
        )
            .into_response();
    };
    let conns = state.connections();
    // istioctl passes `POD.NAMESPACE`; accept that, the full node id, or a connection id.
    let conn = conns.iter().find(|c| {
        c.proxy.id == id
            || c.conn_id == id
            || format!("{}.{}", c.proxy.pod, c.proxy.namespace) == id
    });
    let Some(conn) = conn else {
        let known: Vec<String> = conns.iter().map(|c| c.proxy.id.clone()).collect();
        return (
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
            .into_response();
    };
    let snap = state.snapshot();
    let res = translate::generate(&snap, &conn.proxy);
    Json(translate::output::config_dump(
        &res,
        &snap.generation.to_string(),
    ))
    .into_response()
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
