//! Connected proxies as the rest of meshd sees them: who is connected, each one's sync
//! state, and the push pending for it. Streams (see [`super::connection`]) fill these in;
//! pushes and debug endpoints read them. Nothing here knows about streams or state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use tokio::sync::Notify;

use super::watch::WatchSummary;
use crate::model::proxy::Proxy;

/// A change a connection has to act on. Several merge into one: at most one push is
/// pending per connection.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// Types to regenerate (type URLs); endpoints are decided by `endpoints`.
    pub types: BTreeSet<&'static str>,
    /// Hosts whose endpoints changed.
    pub endpoints: BTreeSet<String>,
    /// When the first merged change was published (for convergence time).
    pub started: Instant,
}

impl PushRequest {
    pub fn merge(&mut self, other: PushRequest) {
        self.types.extend(other.types);
        self.endpoints.extend(other.endpoints);
        self.started = self.started.min(other.started);
    }
}

/// The shared view of a stream: who is connected, its sync state, its pending push.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    /// istiod-style connection id: `PROXY_ID-N`.
    pub conn_id: String,
    pub proxy: Arc<Proxy>,
    pub delta: bool,
    pub peer: String,
    pub connected_at: SystemTime,
    /// Each watch's summary by type URL, in type order.
    pub(super) status: Mutex<Vec<(std::borrow::Cow<'static, str>, WatchSummary)>>,
    pub(super) pending: Mutex<Option<PushRequest>>,
    pub(super) notify: Notify,
}

impl Connection {
    /// Queues a push, merging with one already pending.
    pub fn push(&self, req: PushRequest) {
        if let Ok(mut p) = self.pending.lock() {
            match p.as_mut() {
                Some(existing) => existing.merge(req),
                None => *p = Some(req),
            }
        }
        self.notify.notify_one();
    }

    pub(super) fn take_push(&self) -> Option<PushRequest> {
        self.pending.lock().ok().and_then(|mut p| p.take())
    }

    pub fn status(&self) -> SyncStatus {
        SyncStatus {
            connection_id: self.conn_id.clone(),
            proxy: self.proxy.id.clone(),
            istio_version: self.proxy.istio_version.clone().unwrap_or_default(),
            delta: self.delta,
            peer: self.peer.clone(),
            types: self
                .status
                .lock()
                .map(|s| s.iter().map(|(t, w)| (t.to_string(), w.clone())).collect())
                .unwrap_or_default(),
        }
    }

    /// The state of one type (tests and debug).
    pub fn watch_state(&self, type_url: &str) -> Option<WatchSummary> {
        let s = self.status.lock().ok()?;
        s.iter()
            .find(|(t, _)| t == type_url)
            .map(|(_, w)| w.clone())
    }
}

/// One connected proxy, as /debug/syncz shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    pub connection_id: String,
    pub proxy: String,
    pub istio_version: String,
    pub delta: bool,
    pub peer: String,
    /// Per type URL: subscription and ACK state.
    pub types: BTreeMap<String, super::watch::WatchSummary>,
}
