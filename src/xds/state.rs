//! What every stream shares: the current snapshot, the registry of connections, the
//! resource cache, slots for sending and for CPU work, metrics and settings.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use super::registry::{Connection, SyncStatus};
use crate::ca::sds::WorkloadSecrets;
use crate::metrics::Metrics;
use crate::model::snapshot::Snapshot;

/// What every stream shares: the current snapshot, the registry of connections (for
/// pushes and /debug/syncz), metrics.
#[derive(Debug)]
pub struct XdsState {
    snapshot: ArcSwap<Snapshot>,
    /// The last configuration change: the snapshots before and after it, what
    /// `/debug/config_diff` compares (one pair, read at once). One snapshot more in memory
    /// at most; its unchanged parts are shared with the current one.
    last_change: ArcSwapOption<(Arc<Snapshot>, Arc<Snapshot>)>,
    pub(crate) connections: Mutex<BTreeMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    /// Distinguishes this process's nonces from a previous meshd's.
    pub(crate) nonce_prefix: String,
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Resources shared by proxies of the same class, per snapshot.
    pub cache: super::cache::ResourceCache,
    /// Outbound virtual hosts kept across snapshots that differ by VirtualServices.
    pub vhosts: crate::translate::route::pieces::VhostStore,
    /// Push slots: how many streams may be handing responses to their transport at once.
    pub(crate) push_slots: Arc<tokio::sync::Semaphore>,
    /// The CPU pool translation and signing run on (one thread per core).
    pub(crate) cpu: &'static super::cpu::CpuPool,
    /// How long a proxy has to take a response before its stream is closed.
    pub(crate) send_timeout: std::time::Duration,
    /// This instance's name (its pod), as debug responses give it.
    pub(crate) instance: String,
    /// Workload secrets for SDS (when the CA runs).
    pub secrets: Option<Arc<WorkloadSecrets>>,
}

/// The largest request a proxy may send (istiod's default gRPC receive limit). A Delta
/// request with every name of a 10,000-service mesh fits with room to spare.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// istiod's default push throttle (PILOT_PUSH_THROTTLE).
pub const DEFAULT_PUSH_SLOTS: usize = 100;

/// How long a proxy has to take one response (HTTP/2 flow control lets it refuse).
pub const DEFAULT_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl XdsState {
    /// Serves SDS from these workload secrets (on the TLS port only).
    pub fn with_secrets(mut self, secrets: Arc<WorkloadSecrets>) -> Self {
        self.secrets = Some(secrets);
        self
    }

    /// Sets how many streams may be sending at once.
    pub fn with_push_slots(mut self, n: usize) -> Self {
        self.push_slots = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self
    }

    /// Names this instance (its pod) in debug responses.
    pub fn with_instance(mut self, name: &str) -> Self {
        self.instance = name.to_string();
        self
    }

    /// Sets how long a proxy has to take a response before its stream is closed.
    pub fn with_send_timeout(mut self, t: std::time::Duration) -> Self {
        self.send_timeout = t;
        self
    }

    pub fn new(metrics: Arc<Metrics>, shutdown: watch::Receiver<bool>) -> Self {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        XdsState {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            last_change: ArcSwapOption::empty(),
            connections: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            nonce_prefix: format!("{:x}", start & 0xffff_ffff),
            metrics,
            ready: AtomicBool::new(false),
            shutdown,
            cache: Default::default(),
            vhosts: Default::default(),
            push_slots: Arc::new(tokio::sync::Semaphore::new(DEFAULT_PUSH_SLOTS)),
            cpu: super::cpu::CpuPool::shared(),
            send_timeout: DEFAULT_SEND_TIMEOUT,
            instance: "meshd".into(),
            secrets: None,
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in a new snapshot (pushes are decided by [`super::push`]).
    /// Swaps in a new snapshot; `configuration` says it changes configuration (not
    /// only endpoints, not nothing): then it is the last change `/debug/config_diff` shows.
    pub(crate) fn store(&self, snap: Arc<Snapshot>, configuration: bool) {
        let replaced = self.snapshot.swap(snap.clone());
        // The empty snapshot before the first load is not a configuration anyone was given.
        if configuration && self.is_ready() {
            self.last_change.store(Some(Arc::new((replaced, snap))));
        }
        self.ready.store(true, Ordering::Release);
    }

    /// The snapshots before and after the last configuration change, once there has been
    /// one.
    pub fn last_change(&self) -> Option<Arc<(Arc<Snapshot>, Arc<Snapshot>)>> {
        self.last_change.load_full()
    }

    /// True once the first full configuration load is in place.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn register(&self, conn: Arc<Connection>) {
        if let Ok(mut m) = self.connections.lock() {
            m.insert(conn.id, conn);
        }
    }

    pub(crate) fn unregister(&self, id: u64) {
        if let Ok(mut m) = self.connections.lock() {
            m.remove(&id);
        }
    }

    pub fn connections(&self) -> Vec<Arc<Connection>> {
        self.connections
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every connection's sync state (/debug/syncz).
    pub fn sync_status(&self) -> Vec<SyncStatus> {
        self.connections().iter().map(|c| c.status()).collect()
    }
}
