//! One ADS stream: reads requests, runs them through the watch state machine, and sends
//! responses — on request, and when a push says the proxy's configuration changed.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::{ControlPlane, Node};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use prost::Message;
use tokio::sync::Notify;
use tonic::Status;
use tracing::{debug, info, warn};

use super::cache::{Generated, class_key};
use super::generate::{endpoints, generate, set_version, wrap};
use super::registry::{Connection, PushRequest};
use super::state::XdsState;
use super::watch::{Action, WatchState};
use super::wire::{self, FieldValue, Outgoing, Wrap};
use crate::envoy::{pb, type_url};
use crate::metrics::{Metrics, VersionLabel};
use crate::model::gateway_api::backend_tls::CONFIGMAP_CREDENTIAL;
use crate::model::gateway_api::convert::CROSS_NAMESPACE_CREDENTIAL;
use crate::model::proxy::Proxy;
use crate::translate::{self, ProxyContext};

mod debug;
mod secrets;

use debug::*;

/// The two flavours of ADS stream.
pub enum Mode {
    Sotw {
        inbound: wire::Requests<DiscoveryRequest>,
        tx: wire::Sender,
    },
    Delta {
        inbound: wire::Requests<DeltaDiscoveryRequest>,
        tx: wire::Sender,
    },
}

/// Node metadata as JSON.
fn proxy_from_node(node: Option<&Node>) -> Result<Proxy, Status> {
    let node = node.ok_or_else(|| {
        Status::invalid_argument("the first request on a stream must carry the Envoy node")
    })?;
    let metadata = node
        .metadata
        .as_ref()
        .map(pb::struct_to_json)
        .unwrap_or_default();
    let mut proxy = Proxy::from_node(&node.id, metadata)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    proxy.service_cluster = node.cluster.clone();
    if let Some(l) = &node.locality {
        proxy.locality = [l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()]
            .join("/")
            .trim_end_matches('/')
            .to_string();
    }
    Ok(proxy)
}

/// Who is at the other end of a stream.
#[derive(Debug, Clone)]
pub enum PeerAuth {
    /// The plaintext port: no identity, never any secret.
    Plaintext,
    /// The TLS port, authenticated by client certificate or token.
    Authenticated(crate::ca::Identity),
    /// The TLS port, and authentication failed (why).
    Refused(String),
}

struct Stream {
    auth: PeerAuth,
    state: Arc<XdsState>,
    conn: Option<Arc<Connection>>,
    /// Boxed: a map's node has room for 11 entries, and a stream has about 4 watches.
    watches: BTreeMap<std::borrow::Cow<'static, str>, Box<WatchState>>,
    nonces: u64,
    peer: String,
    delta: bool,
    /// Nonces of the debug responses this stream sent (the last few): requests that
    /// carry one of them are ACKs.
    debug_nonces: BTreeSet<String>,
}

/// The most resource names one Delta stream may subscribe to per type: several times
/// what a proxy of a 10,000-service mesh asks for.
const MAX_SUBSCRIBED_NAMES: usize = 100_000;

enum Outbound<'a> {
    Sotw(&'a wire::Sender),
    Delta(&'a wire::Sender),
}

impl Stream {
    fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        let id = self.conn.as_ref().map_or(0, |c| c.id);
        format!("{}-{id:x}-{:x}", self.state.nonce_prefix, self.nonces)
    }

    /// Hands a response to the stream's transport. A push slot (a bounded number of
    /// streams may be sending at once, like istiod's push throttle) is held only until
    /// the response is queued, never until the proxy answers; and a proxy that stops
    /// reading gets `send_timeout` to take it, then its stream is closed — so a stuck
    /// client can hold neither a slot nor its stream's task for long.
    async fn deliver(&self, tx: &wire::Sender, resp: Outgoing) -> Result<(), ()> {
        if resp.too_large() {
            self.metrics().internal_errors.inc();
            warn!(proxy = %self.conn.as_ref().map(|c| c.proxy.id.as_str()).unwrap_or(""),
                  "a response over 4 GiB cannot be framed; closing the stream");
            let _ = tx.try_send(Err(Status::resource_exhausted(
                "the response is larger than gRPC can frame",
            )));
            return Err(());
        }
        let limit = self.state.send_timeout;
        // The deadline covers only this proxy's own back-pressure (room on its stream),
        // never the wait for a slot that other proxies hold.
        match tokio::time::timeout(limit, tx.reserve()).await {
            Ok(Ok(room)) => {
                let _slot = self.state.push_slots.acquire().await;
                room.send(Ok(resp));
                Ok(())
            }
            // The client went away.
            Ok(Err(_)) => Err(()),
            Err(_) => {
                self.metrics().write_timeouts.inc();
                warn!(proxy = %self.conn.as_ref().map(|c| c.proxy.id.as_str()).unwrap_or(""),
                      timeout = ?limit,
                      "proxy did not take its response in time; closing its stream");
                Err(())
            }
        }
    }

    /// Publishes the watches' summaries for status readers, after the watches of `urls`
    /// changed: their entries are replaced in place when the published types are the
    /// watches', else the whole list is made again. (Every push and every ACK publishes:
    /// a list made anew each time was an allocation per proxy per event.)
    fn publish_status(&self, urls: &[&str]) {
        if let Some(c) = &self.conn
            && let Ok(mut s) = c.status.lock()
        {
            let same_types = s.len() == self.watches.len()
                && s.iter().zip(self.watches.keys()).all(|((t, _), k)| t == k);
            if same_types {
                for ((t, summary), w) in s.iter_mut().zip(self.watches.values()) {
                    if urls.contains(&&**t) {
                        *summary = w.summary();
                    }
                }
                return;
            }
            // Exactly as long as there are watches (a map would keep room for 11).
            let mut v = Vec::with_capacity(self.watches.len());
            v.extend(self.watches.iter().map(|(k, w)| (k.clone(), w.summary())));
            *s = v;
        }
    }

    fn connect(&mut self, node: Option<&Node>) -> Result<Arc<Connection>, Status> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let mut proxy = proxy_from_node(node)?;
        if let PeerAuth::Authenticated(_) = &self.auth {
            // It can fetch its certificate from us over SDS.
            proxy.mtls_ready = true;
        }
        let proxy = Arc::new(proxy);
        match &self.auth {
            PeerAuth::Plaintext => {}
            PeerAuth::Refused(reason) => {
                self.state.metrics.auth_failures.inc();
                return Err(Status::unauthenticated(reason.clone()));
            }
            // A proxy gets the configuration of the namespace it proves it belongs to.
            PeerAuth::Authenticated(id) if id.namespace != proxy.namespace => {
                self.state.metrics.auth_failures.inc();
                return Err(Status::permission_denied(format!(
                    "node {} claims namespace {} but authenticated as {id}",
                    proxy.id, proxy.namespace
                )));
            }
            PeerAuth::Authenticated(_) => {}
        }
        let id = self.state.next_id();
        let conn = Arc::new(Connection {
            id,
            conn_id: format!("{}-{id}", proxy.id),
            proxy: proxy.clone(),
            delta: self.delta,
            peer: self.peer.clone(),
            connected_at: SystemTime::now(),
            status: Mutex::new(Vec::new()),
            pending: Mutex::new(None),
            notify: Notify::new(),
        });
        self.state.register(conn.clone());
        self.metrics().proxy_connected(&version_label(&proxy));
        info!(proxy = %proxy.id, conn = id, delta = self.delta, peer = %self.peer, "proxy connected");
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Generates and sends `type_url` if anything changed (or `respond` demands an answer).
    /// `force` names resources to send even if the client has their version (clusters
    /// re-sent after a CDS update need their endpoints again).
    async fn send_type(
        &mut self,
        out: &Outbound<'_>,
        ctx: &ProxyContext<'_>,
        shared: (&Arc<crate::model::Snapshot>, &Arc<Connection>),
        url: &str,
        respond: bool,
        force: Option<&BTreeSet<String>>,
    ) -> Result<bool, ()> {
        let Some(mut w) = self.watches.remove(url) else {
            return Ok(false);
        };
        let start = Instant::now();
        // Wildcard subscriptions share by class; named ones by class and names.
        let key = {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&class_key(ctx, url == type_url::LISTENER).to_le_bytes());
            h.update(&[u8::from(w.wildcard)]);
            // Length-prefixed: names may contain any byte.
            for n in w.names.iter() {
                h.update(&(n.len() as u64).to_le_bytes());
                h.update(n.as_bytes());
            }
            h.digest()
        };
        // The work goes to the CPU pool with what it reads (shared pointers and the
        // watch's subscription), and the stream waits for it as a task. Copied only when
        // there is work: a stream served from the cache copies nothing.
        let res: Arc<Vec<Arc<Generated>>> = if url == type_url::SECRET {
            // Secrets are per identity, never shared.
            let (conn, state, job) = (shared.1.clone(), self.state.clone(), w.job());
            let auth = self.auth.clone();
            Arc::new(
                self.state
                    .cpu
                    .run(move || secrets::secrets(&state, &auth, Some(&conn), &job))
                    .await,
            )
        } else {
            let cache = &self.state.cache;
            let set = cache
                .get_or_generate(ctx.snap.generation, url, key, &w.names, || {
                    // Made only by the stream that generates for its class.
                    let (snap, conn, state) =
                        (shared.0.clone(), shared.1.clone(), self.state.clone());
                    let job = w.job();
                    self.state.cpu.run(move || {
                        // The same context as the stream's: the same snapshot and proxy.
                        let ctx = ProxyContext::new(&snap, &conn.proxy);
                        if job.type_url == type_url::ENDPOINT {
                            // Each load assignment is shared across classes too.
                            endpoints(&ctx, &state.cache, &job)
                        } else if job.type_url == type_url::LISTENER {
                            // Listeners are made per proxy address; most come out
                            // the same for every proxy of a class.
                            let made = generate(&ctx, &job, &state.vhosts);
                            state.cache.interned(ctx.snap.generation, made)
                        } else {
                            generate(&ctx, &job, &state.vhosts)
                        }
                    })
                })
                .await;
            if !w.wildcard && set.len() < w.names.len() {
                cache.forget(ctx.snap.generation, url, key);
            }
            set
        };
        // What the client holds is kept as a reference to the set last sent, diffed by
        // name: every set is sorted where it is made (CDS and LDS by `sorted`, the others
        // follow the sorted subscription), so there is nothing to check per push.
        debug_assert!(res.is_sorted_by(|a, b| a.name <= b.name));
        let version = set_version(&res);
        let nonce;
        let sent = match out {
            Outbound::Sotw(tx) => {
                let full_set = url == type_url::CLUSTER || url == type_url::LISTENER;
                // CDS and LDS always send the whole set, so only EDS and RDS need the
                // difference to what the client holds (SotW never names removals).
                let changed = if full_set {
                    Vec::new()
                } else {
                    w.held.diff(&res, force).0
                };
                let unchanged = w.sent_version.as_deref() == Some(version.as_str());
                if !respond && force.is_none() && (unchanged || (!full_set && changed.is_empty())) {
                    self.watches.insert(w.type_url.clone(), w);
                    return Ok(false);
                }
                // CDS and LDS responses are the whole state; EDS and RDS may carry only
                // what changed, unless the client just asked.
                let send: Vec<Arc<Generated>> = if full_set || respond {
                    res.as_ref().clone()
                } else {
                    changed
                };
                nonce = self.next_nonce();
                let cp = control_plane_bytes();
                let resp = Outgoing::new(
                    &[
                        (1, FieldValue::Str(&version)),
                        (4, FieldValue::Str(url)),
                        (5, FieldValue::Str(&nonce)),
                        (6, FieldValue::Msg(cp)),
                    ],
                    send,
                    Wrap::Any,
                );
                // The client now has every resource of the set: those sent, and the
                // others at the versions it already had.
                w.held.replace(res.clone());
                let n = (resp.len(), resp.wire_len());
                self.deliver(tx, resp).await?;
                n
            }
            Outbound::Delta(tx) => {
                let (changed, mut removed) = w.held.diff(&res, force);
                let has = |name: &str| res.binary_search_by(|r| r.name.as_str().cmp(name)).is_ok();
                if respond {
                    // Explicitly requested names that do not exist: say so.
                    for n in w.names.iter() {
                        if !has(n) && !removed.contains(n) {
                            removed.push(n.clone());
                        }
                    }
                }
                if changed.is_empty() && removed.is_empty() && !respond {
                    self.watches.insert(w.type_url.clone(), w);
                    return Ok(false);
                }
                nonce = self.next_nonce();
                let mut fields = vec![
                    (1, FieldValue::Str(&version)),
                    (4, FieldValue::Str(url)),
                    (5, FieldValue::Str(&nonce)),
                ];
                fields.extend(removed.iter().map(|n| (6, FieldValue::Str(n))));
                fields.push((7, FieldValue::Msg(control_plane_bytes())));
                let resp = Outgoing::new(&fields, changed, Wrap::Resource);
                w.held.replace(res.clone());
                let n = (resp.len(), resp.wire_len());
                self.deliver(tx, resp).await?;
                n
            }
        };
        let (sent, bytes) = sent;
        w.sent(&version, &nonce);
        let short = type_url::short(url);
        self.metrics()
            .pushes
            .get_or_create(&Metrics::type_label(short))
            .inc();
        self.metrics()
            .push_time
            .get_or_create(&Metrics::type_label(short))
            .observe(start.elapsed().as_secs_f64());
        self.metrics()
            .config_size
            .get_or_create(&Metrics::type_label(short))
            .observe(bytes as f64);
        debug!(proxy = %ctx.proxy.id, type_url = short, resources = sent, version = %version, nonce = %nonce, "push");
        self.watches.insert(w.type_url.clone(), w);
        Ok(true)
    }

    /// After CDS went out, endpoints of the (re)sent clusters follow, so that warming
    /// clusters never wait.
    async fn send_types(
        &mut self,
        out: &Outbound<'_>,
        urls: &[&str],
        respond_to: Option<&str>,
    ) -> Result<(), ()> {
        let snap = self.state.snapshot();
        let Some(conn) = self.conn.clone() else {
            return Ok(());
        };
        let ctx = ProxyContext::new(&snap, &conn.proxy);
        let mut cds_sent = false;
        for url in urls {
            let respond = respond_to == Some(*url);
            let force = if *url == type_url::ENDPOINT && cds_sent {
                self.watches
                    .get(type_url::ENDPOINT)
                    .map(|w| w.names.clone())
            } else {
                None
            };
            let sent = self
                .send_type(out, &ctx, (&snap, &conn), url, respond, force.as_deref())
                .await?;
            if *url == type_url::CLUSTER && sent {
                cds_sent = true;
            }
        }
        self.publish_status(urls);
        Ok(())
    }

    /// What a request asked for, done: a response if it needs one (a stream that cannot
    /// take it ends), else the sync status published.
    async fn answer(
        &mut self,
        out: &Outbound<'_>,
        url: &str,
        action: Action,
    ) -> Option<Result<(), String>> {
        self.on_action(url, &action);
        if action != Action::Respond {
            self.publish_status(&[url]);
            return None;
        }
        match self.send_types(out, &[url], Some(url)).await {
            Ok(()) => None,
            Err(()) => Some(Ok(())),
        }
    }

    /// The request a message carries, its proxy connected; or how the stream ends: at
    /// the end of the requests, or with the status of a refused request (too large,
    /// malformed, an identity that does not match), not with OK.
    fn accept<R>(
        &mut self,
        msg: Result<Option<R>, Status>,
        node: impl Fn(&R) -> Option<&Node>,
        tx: &wire::Sender,
    ) -> Result<R, Result<(), String>> {
        let req = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Ok(())),
            Err(e) => return Err(Err(refuse(&self.state, tx, e))),
        };
        match self.connect(node(&req)) {
            Ok(_) => Ok(req),
            Err(status) => Err(Err(refuse(&self.state, tx, status))),
        }
    }

    /// A SotW request (or the end of the request stream). `Some` ends the stream, with
    /// the text it ends with on error.
    async fn on_sotw_message(
        &mut self,
        msg: Result<Option<DiscoveryRequest>, Status>,
        out: &Outbound<'_>,
        tx: &wire::Sender,
    ) -> Option<Result<(), String>> {
        let req = match self.accept(msg, |r| r.node.as_ref(), tx) {
            Ok(r) => r,
            Err(end) => return Some(end),
        };
        let url = req.type_url.clone();
        if url.starts_with("istio.io/debug/") {
            // Debug requests are answered; their ACKs are not. A client may send any
            // nonce with its first request (istioctl's carries a timestamp), so what
            // counts is whether the nonce is one this stream sent.
            let ack =
                !req.response_nonce.is_empty() && self.debug_nonces.contains(&req.response_nonce);
            if !ack {
                match self.debug_response(&url) {
                    Ok(resp) => {
                        if self.debug_nonces.len() >= 16 {
                            self.debug_nonces.pop_first();
                        }
                        self.debug_nonces.insert(resp.nonce.clone());
                        if tx.send(Ok(Outgoing::encoded(&resp))).await.is_err() {
                            return Some(Ok(()));
                        }
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status.clone())).await;
                        return Some(Err(status.message().to_string()));
                    }
                }
            }
            return None;
        }
        let w = self
            .watches
            .entry(type_url::shared(&url))
            .or_insert_with(|| Box::new(WatchState::new(&url)));
        let action = w.on_sotw_request(&req);
        self.answer(out, &url, action).await
    }

    /// A Delta request (or the end of the request stream): as [`Stream::on_sotw_message`].
    async fn on_delta_message(
        &mut self,
        msg: Result<Option<DeltaDiscoveryRequest>, Status>,
        out: &Outbound<'_>,
        tx: &wire::Sender,
    ) -> Option<Result<(), String>> {
        let req = match self.accept(msg, |r| r.node.as_ref(), tx) {
            Ok(r) => r,
            Err(end) => return Some(end),
        };
        let url = req.type_url.clone();
        let w = self
            .watches
            .entry(type_url::shared(&url))
            .or_insert_with(|| Box::new(WatchState::new(&url)));
        let action = w.on_delta_request(&req);
        if w.names.len() > MAX_SUBSCRIBED_NAMES {
            // Subscriptions only grow by request: bound what one stream holds.
            let status = Status::resource_exhausted(format!(
                "more than {MAX_SUBSCRIBED_NAMES} {} names subscribed on one stream",
                type_url::short(&url)
            ));
            warn!(peer = %self.peer, type_url = %url, "subscription limit reached; closing the stream");
            return Some(Err(refuse(&self.state, tx, status)));
        }
        self.answer(out, &url, action).await
    }

    async fn on_push(&mut self, out: &Outbound<'_>, push: PushRequest) -> Result<(), ()> {
        let mut types = push.types.clone();
        if !push.endpoints.is_empty() {
            types.insert(type_url::ENDPOINT);
        }
        // In push order: a cluster before its endpoints, a listener before its routes.
        let ordered: Vec<&str> = type_url::ORDER
            .iter()
            .copied()
            .filter(|t| types.contains(t))
            .collect();
        self.send_types(out, &ordered, None).await?;
        self.metrics()
            .convergence
            .observe(push.started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Handles one request; returns the types to answer.
    fn on_action(&mut self, url: &str, action: &Action) {
        let short = type_url::short(url);
        let proxy = self.conn.as_ref().map_or("", |c| c.proxy.id.as_str());
        match action {
            Action::Nack => {
                let err = self
                    .watches
                    .get(url)
                    .and_then(|w| w.last_nack.as_ref())
                    .map(|n| n.error.clone())
                    .unwrap_or_default();
                let claims_istio = self
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.proxy.istio_version.is_some());
                // The hint is a field only when there is one.
                let hint = nack_hint(claims_istio, &err);
                warn!(proxy = %proxy, type_url = short, error = %err, hint, "proxy rejected configuration (NACK)");
                self.metrics()
                    .rejects
                    .get_or_create(&Metrics::type_label(short))
                    .inc();
            }
            Action::Ack => debug!(proxy = %proxy, type_url = short, "ACK"),
            Action::Ignore => {
                self.metrics()
                    .expired_nonce
                    .get_or_create(&Metrics::type_label(short))
                    .inc();
            }
            Action::Respond => {}
        }
    }
}

/// What to tell whoever reads a NACK, when its cause is known. An Envoy that says it
/// is istio-proxy (`ISTIO_VERSION` in its node metadata) is sent istio-proxy's own
/// extensions; an upstream Envoy that says so refuses them as unknown.
fn nack_hint(claims_istio: bool, error: &str) -> Option<&'static str> {
    let unknown_extension = error.contains("Didn't find a registered implementation")
        || error.contains("Unable to parse JSON as proto")
        || error.contains("unknown type");
    (claims_istio && unknown_extension && error.contains("istio")).then_some(
        "the proxy's node metadata has ISTIO_VERSION, so it was sent istio-proxy's own \
         extensions (metadata exchange, stats); an upstream Envoy must not set ISTIO_VERSION",
    )
}

fn version_label(proxy: &Proxy) -> VersionLabel {
    // The version is whatever the client says: keep it only if it looks like one.
    let version = match &proxy.istio_version {
        None => "upstream".to_string(),
        Some(v)
            if v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b)) =>
        {
            v.clone()
        }
        Some(_) => "unknown".to_string(),
    };
    VersionLabel { version }
}

/// A future boxed for the time it runs.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a stream's wait ended with: a request's handling (which may end the stream) or
/// a push.
enum Work<'a> {
    Message(Boxed<'a, Option<Result<(), String>>>),
    Push(Boxed<'a, Result<(), ()>>),
}

impl Work<'_> {
    /// Does the work; `Some` when the stream ends, with how.
    async fn run(self) -> Option<Result<(), String>> {
        match self {
            Work::Message(f) => f.await,
            // A push that cannot be sent ends the stream quietly.
            Work::Push(f) => f.await.is_err().then_some(Ok(())),
        }
    }
}

/// Runs one ADS stream until the client goes away or meshd shuts down.
pub async fn run_stream(state: Arc<XdsState>, mode: Mode, peer: String, auth: PeerAuth) {
    let mut shutdown = state.shutdown.clone();
    let delta = matches!(mode, Mode::Delta { .. });
    let mut s = Stream {
        auth,
        state: state.clone(),
        conn: None,
        watches: BTreeMap::new(),
        nonces: 0,
        peer,
        delta,
        debug_nonces: BTreeSet::new(),
    };
    // The stream's task stays small while it waits (most of a proxy's life): handling
    // a request or a push runs in a future of its own, boxed for its duration, so the
    // task does not carry the largest request's and response's state all along. The
    // select's arms only make that work; it is awaited after the select, so that the
    // request just read (hundreds of bytes) is not part of the task either.
    macro_rules! serve {
        ($inbound:ident, $tx:ident, $out:expr, $on_message:ident) => {{
            let out = $out;
            loop {
                let notified = async {
                    match &s.conn {
                        Some(c) => c.notify.notified().await,
                        None => std::future::pending().await,
                    }
                };
                let work = tokio::select! {
                    msg = $inbound.message() => Work::Message(Box::pin(s.$on_message(msg, &out, &$tx))),
                    _ = notified => match s.conn.as_ref().and_then(|c| c.take_push()) {
                        Some(push) => Work::Push(Box::pin(s.on_push(&out, push))),
                        None => continue,
                    },
                    _ = shutdown.changed() => break Ok(()),
                };
                if let Some(end) = work.run().await {
                    break end;
                }
            }
        }};
    }
    let result = match mode {
        Mode::Sotw { mut inbound, tx } => serve!(inbound, tx, Outbound::Sotw(&tx), on_sotw_message),
        Mode::Delta { mut inbound, tx } => {
            serve!(inbound, tx, Outbound::Delta(&tx), on_delta_message)
        }
    };
    if let Some(c) = &s.conn {
        state.unregister(c.id);
        state.metrics.proxy_disconnected(&version_label(&c.proxy));
        match result {
            Ok(()) => info!(proxy = %c.proxy.id, conn = c.id, "proxy disconnected"),
            Err(e) => info!(proxy = %c.proxy.id, conn = c.id, error = %e, "proxy stream ended"),
        }
    } else if let Err(e) = result {
        debug!(peer = %s.peer, error = %e, "stream ended before naming a proxy");
    }
}

/// Ends a stream for what its client sent: counted in `meshd_xds_stream_errors` (whether
/// or not the stream got as far as naming its proxy — garbage as the first message never
/// does; a client that just went away is not counted), and the status sent best effort:
/// never wait on a stream that may be full, closing it is not best effort. Returns the
/// text the stream ends with.
fn refuse(state: &XdsState, tx: &wire::Sender, status: Status) -> String {
    if let Some(code) = refusal_code(status.code()) {
        state
            .metrics
            .stream_errors
            .get_or_create(&crate::metrics::CodeLabel { code: code.into() })
            .inc();
    }
    let text = status.message().to_string();
    let _ = tx.try_send(Err(status));
    text
}

/// The label of a code that means the client sent something meshd refuses.
fn refusal_code(code: tonic::Code) -> Option<&'static str> {
    use tonic::Code::*;
    Some(match code {
        InvalidArgument => "invalid_argument",
        ResourceExhausted => "resource_exhausted",
        Unauthenticated => "unauthenticated",
        PermissionDenied => "permission_denied",
        Unimplemented => "unimplemented",
        _ => return None,
    })
}

#[cfg(test)]
mod nack {
    #[test]
    fn an_upstream_envoy_claiming_istio_proxy_is_told_why() {
        // What Envoy 1.40 says (seen from a real one, bootstrapped with ISTIO_VERSION).
        let err = "Error adding/updating cluster(s) PassthroughCluster: Didn't find a registered implementation for 'istio.metadata_exchange' with type URL: 'envoy.tcp.metadataexchange.config.MetadataExchange'";
        let hint = super::nack_hint(true, err).unwrap_or_default();
        assert!(hint.contains("ISTIO_VERSION"), "{hint}");
        // Not without the claim, nor for another cause.
        assert_eq!(super::nack_hint(false, err), None);
        assert_eq!(
            super::nack_hint(
                true,
                "Proto constraint validation failed: timeout must be positive"
            ),
            None
        );
    }
}

#[cfg(test)]
mod size {
    /// Every connected proxy has a stream task and a response channel for as long as it
    /// is connected: their size is memory per proxy (B4). The task was 6 KiB while a
    /// request's and a push's state lived in it, and 2 KiB while the request itself
    /// did; they are boxed for their duration now.
    #[test]
    fn a_waiting_stream_is_small() {
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let state = std::sync::Arc::new(super::XdsState::new(Default::default(), shutdown));
        let (tx, _rx) = tokio::sync::mpsc::channel(4);
        let mode = super::Mode::Sotw {
            inbound: super::wire::Requests::new(tonic::body::Body::empty(), 1 << 20),
            tx,
        };
        let task = super::run_stream(state, mode, String::new(), super::PeerAuth::Plaintext);
        let bytes = std::mem::size_of_val(&task);
        assert!(bytes <= 1024, "a stream's task is {bytes} bytes");
        // The channel allocates its slots 32 at a time.
        let slot = std::mem::size_of::<Result<super::wire::Outgoing, tonic::Status>>();
        assert!(slot <= 16, "a response slot is {slot} bytes");
    }
}
