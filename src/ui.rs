//! `/ui` on the debug port: a page for a person, bundled into the binary (no framework,
//! nothing fetched from elsewhere at runtime). It reads only the debug endpoints
//! (`/debug/connections`, `/debug/syncz`, `/debug/config_dump`, `/debug/config_diff`,
//! `/debug/explain`, `/debug/configz`, `/debug/graph`), so what it shows is what scripts
//! and istioctl see.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/style.css", get(style))
}

// The page is the same for every request; no caching headers beyond the default so an
// upgraded meshd's page is the one a reload shows.
async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX)
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}
