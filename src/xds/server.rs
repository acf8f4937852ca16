//! Shared xDS state (the current snapshot and the connected proxies) and the tonic
//! service that accepts ADS streams.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Status};

use super::connection::{Connection, Mode, PeerAuth, run_stream};
use super::wire::{Requests, ResponseBody};
use crate::ca::sds::WorkloadSecrets;
use crate::ca::server::Authenticator;
use crate::metrics::Metrics;
use crate::model::snapshot::Snapshot;

/// What every stream shares: the current snapshot, the registry of connections (for
/// pushes and /debug/syncz), metrics.
#[derive(Debug)]
pub struct XdsState {
    snapshot: ArcSwap<Snapshot>,
    pub(crate) connections: Mutex<BTreeMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    /// Distinguishes this process's nonces from a previous meshd's.
    pub(crate) nonce_prefix: String,
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Resources shared by proxies of the same class, per snapshot.
    pub cache: super::cache::ResourceCache,
    /// Push slots: how many streams may be handing responses to their transport at once.
    pub(crate) push_slots: Arc<tokio::sync::Semaphore>,
    /// CPU slots: how many streams may translate or sign at once (one per core).
    pub(crate) cpu_slots: tokio::sync::Semaphore,
    /// How long a proxy has to take a response before its stream is closed.
    pub(crate) send_timeout: std::time::Duration,
    /// This instance's name (its pod), as debug responses give it.
    pub(crate) instance: String,
    /// Workload secrets for SDS (when the CA runs).
    pub secrets: Option<Arc<WorkloadSecrets>>,
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
            connections: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            nonce_prefix: format!("{:x}", start & 0xffff_ffff),
            metrics,
            ready: AtomicBool::new(false),
            shutdown,
            cache: Default::default(),
            push_slots: Arc::new(tokio::sync::Semaphore::new(DEFAULT_PUSH_SLOTS)),
            cpu_slots: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            send_timeout: DEFAULT_SEND_TIMEOUT,
            instance: "meshd".into(),
            secrets: None,
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in a new snapshot (pushes are decided by [`super::push`]).
    pub(crate) fn store(&self, snap: Arc<Snapshot>) {
        self.snapshot.store(snap);
        self.ready.store(true, Ordering::Release);
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

/// The ADS gRPC service (`envoy.service.discovery.v3.AggregatedDiscoveryService`),
/// written by hand rather than generated: requests are decoded by tonic, responses are
/// written from the shared encoded resources (see [`super::wire`]).
#[derive(Debug, Clone)]
pub struct AdsService {
    state: Arc<XdsState>,
    /// Set on the TLS port: streams must authenticate, and may get secrets.
    auth: Option<Arc<Authenticator>>,
    max_request_bytes: usize,
}

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

impl AdsService {
    /// The plaintext service (15010): configuration only, never secrets.
    pub fn new(state: Arc<XdsState>) -> Self {
        AdsService {
            state,
            auth: None,
            max_request_bytes: MAX_REQUEST_BYTES,
        }
    }

    /// The TLS service (15012): callers authenticate; secrets for their own identity.
    pub fn secure(state: Arc<XdsState>, auth: Arc<Authenticator>) -> Self {
        AdsService {
            state,
            auth: Some(auth),
            max_request_bytes: MAX_REQUEST_BYTES,
        }
    }

    /// The largest request message accepted (default [`MAX_REQUEST_BYTES`]).
    pub fn max_request_bytes(mut self, n: usize) -> Self {
        self.max_request_bytes = n;
        self
    }

    async fn peer_auth<T>(&self, req: &Request<T>) -> PeerAuth {
        match &self.auth {
            None => PeerAuth::Plaintext,
            Some(a) => match a.authenticate(req).await {
                Ok(id) => PeerAuth::Authenticated(id),
                Err(e) => PeerAuth::Refused(e),
            },
        }
    }

    async fn serve(
        self,
        req: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        let delta = match req.uri().path() {
            SOTW_PATH => false,
            DELTA_PATH => true,
            other => {
                return Status::unimplemented(format!("no method {other}")).into_http();
            }
        };
        // Envoy does not compress requests; a client that does is told so.
        if let Some(enc) = req.headers().get("grpc-encoding")
            && enc.as_bytes() != b"identity"
        {
            return Status::unimplemented(format!(
                "request compression {} is not supported",
                String::from_utf8_lossy(enc.as_bytes())
            ))
            .into_http();
        }
        // The body is kept apart: authentication reads only the headers and extensions.
        let (parts, body) = req.into_parts();
        let request = Request::from_http(http::Request::from_parts(parts, ()));
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let auth = self.peer_auth(&request).await;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let max = self.max_request_bytes;
        let mode = if delta {
            Mode::Delta {
                inbound: Requests::new(body, max),
                tx,
            }
        } else {
            Mode::Sotw {
                inbound: Requests::new(body, max),
                tx,
            }
        };
        tokio::spawn(run_stream(self.state.clone(), mode, peer, auth));
        let mut resp = http::Response::new(tonic::body::Body::new(ResponseBody::new(rx)));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        resp
    }
}

/// Responses queued per stream before a slow proxy applies back-pressure. Queued
/// responses hold references to shared resources, not copies.
const STREAM_BUFFER: usize = 4;

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.serve(req).await) })
    }
}

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}
