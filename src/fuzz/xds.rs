//! An ADS stream driven by the fuzzer: SotW or Delta, on the plaintext port or the TLS
//! port (authenticated as one of two workloads, or refused), with requests whose type
//! URLs, names, versions, nonces, NACKs and node are chosen from the input — including
//! nonces and versions meshd sent — interleaved with raw frames, configuration changes
//! and the client hanging up. It runs the same stream engine and response body as the
//! server, on one thread, without a socket.
//!
//! Checked besides crashes: every response decodes; nonces are never reused on a
//! stream; every private key in a served Secret is the stream's own (none on the
//! plaintext port or a refused stream; on the TLS port, the workload's own key or a
//! Secret of its own namespace); the stream ends once the client closes, and leaves
//! nothing in the connection registry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use prost::Message;
use tokio::sync::{mpsc, watch};

use super::{Cursor, config_set};
use crate::ca::sds::WorkloadSecrets;
use crate::ca::{Authority, Identity};
use crate::envoy::{pb, type_url};
use crate::model::snapshot::{ConfigSet, Snapshot};
use crate::xds::connection::{Mode, PeerAuth, run_stream};
use crate::xds::wire::{Requests, ResponseBody};
use crate::xds::{XdsState, push};

/// Requests above this are refused (small, so the fuzzer can reach the limit).
const MAX_REQUEST: usize = 4096;
/// Operations read from one input, at most.
const MAX_OPS: usize = 48;

const BASE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews, version: v1}}
spec: {serviceAccountName: reviews, containers: [{name: a, image: b}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Service
metadata: {name: hidden, namespace: other}
spec:
  selector: {app: hidden}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: default}
stringData: {tls.crt: CERT-OF-default, tls.key: KEY-OF-default, ca.crt: CA-OF-default}
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: other}
stringData: {tls.crt: CERT-OF-other, tls.key: KEY-OF-other, ca.crt: CA-OF-other}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: {tls: {mode: SIMPLE, credentialName: cert}}
"#;

/// What a configuration change may publish: BASE with a route, with a moved pod, and
/// with nothing else.
const CHANGES: [&str; 3] = [
    r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}, weight: 100}], timeout: 2s}]
"#,
    r#"
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: default, labels: {app: reviews, version: v2}}
spec: {containers: [{name: a, image: b}]}
status: {podIP: 10.0.0.2}
"#,
    "",
];

const TYPES: [&str; 9] = [
    type_url::CLUSTER,
    type_url::ENDPOINT,
    type_url::LISTENER,
    type_url::ROUTE,
    type_url::SECRET,
    "istio.io/debug/syncz",
    "istio.io/debug/other",
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
    "",
];

const NAMES: [&str; 12] = [
    "outbound|9080||reviews.default.svc.cluster.local",
    "outbound|8080||hidden.other.svc.cluster.local",
    "9080",
    "8080",
    "default",
    "ROOTCA",
    "kubernetes://cert",
    "kubernetes://cert-cacert",
    "kubernetes://other/cert",
    "*",
    "",
    "virtualInbound",
];

const NODE_IDS: [&str; 5] = [
    "sidecar~10.0.0.1~reviews-v1.default~default.svc.cluster.local",
    "sidecar~10.0.0.3~hidden-0.other~other.svc.cluster.local",
    "router~10.0.0.9~gw.istio-system~istio-system.svc.cluster.local",
    "sidecar~10.0.0.1~reviews-v1.default",
    "",
];

/// Workloads a TLS stream may be authenticated as.
const IDENTITIES: [(&str, &str); 2] = [("default", "reviews"), ("other", "hidden")];

struct Fixture {
    base: ConfigSet,
    changes: Vec<ConfigSet>,
    secrets: Arc<WorkloadSecrets>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ca = Authority::self_signed("cluster.local").expect("a CA for the fuzz target");
        let secrets = Arc::new(WorkloadSecrets::new(
            Arc::new(ca),
            Duration::from_secs(24 * 3600),
        ));
        // Issued up front: every identity's key exists before any stream runs.
        for (ns, sa) in IDENTITIES {
            let _ = secrets.get(&Identity::new("cluster.local", ns, sa));
        }
        let base = config_set(&[BASE]);
        let changes = CHANGES.iter().map(|t| config_set(&[BASE, t])).collect();
        Fixture {
            base,
            changes,
            secrets,
        }
    })
}

/// The request side of the stream: bytes the driver writes, as HTTP/2 DATA would
/// bring them.
struct RequestBody(mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn frame(msg: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out.freeze()
}

/// What the client has seen, for choosing nonces and versions to send back.
#[derive(Default)]
struct Seen {
    nonces: BTreeSet<String>,
    last_nonce: HashMap<String, String>,
    last_version: HashMap<String, String>,
    any_nonce: String,
    buf: BytesMut,
    ended: bool,
    messages: usize,
}

struct Driver {
    delta: bool,
    /// The identity a TLS stream is authenticated as (none: plaintext or refused).
    owner: Option<Identity>,
    requests: Option<mpsc::UnboundedSender<Bytes>>,
    body: ResponseBody,
    seen: Seen,
    sent_node: bool,
}

impl Driver {
    /// Reads what the stream has written so far, checking each response.
    fn drain(&mut self) {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        while !self.seen.ended {
            match http_body::Body::poll_frame(Pin::new(&mut self.body), &mut cx) {
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => self.seen.buf.extend_from_slice(&d),
                    Err(_) => self.seen.ended = true,
                },
                Poll::Ready(Some(Err(_))) | Poll::Ready(None) => self.seen.ended = true,
                Poll::Pending => break,
            }
        }
        while self.seen.buf.len() >= 5 {
            let len = u32::from_be_bytes([
                self.seen.buf[1],
                self.seen.buf[2],
                self.seen.buf[3],
                self.seen.buf[4],
            ]) as usize;
            if self.seen.buf.len() < 5 + len {
                break;
            }
            assert_eq!(
                self.seen.buf[0], 0,
                "a response frame is flagged compressed"
            );
            self.seen.buf.advance(5);
            let msg = self.seen.buf.split_to(len).freeze();
            self.check(&msg);
        }
    }

    fn check(&mut self, msg: &[u8]) {
        let (url, nonce, version, resources) = if self.delta {
            let r = DeltaDiscoveryResponse::decode(msg)
                .unwrap_or_else(|e| panic!("a Delta response does not decode: {e}"));
            let res = r.resources.into_iter().filter_map(|r| r.resource).collect();
            (r.type_url, r.nonce, r.system_version_info, res)
        } else {
            let r = DiscoveryResponse::decode(msg)
                .unwrap_or_else(|e| panic!("a response does not decode: {e}"));
            (r.type_url, r.nonce, r.version_info, r.resources)
        };
        assert!(
            self.seen.nonces.insert(nonce.clone()),
            "nonce {nonce} sent twice on one stream"
        );
        self.seen.messages += 1;
        for any in &resources {
            if any.type_url == type_url::SECRET {
                self.check_secret(&any.value);
            }
        }
        self.seen.any_nonce = nonce.clone();
        self.seen.last_nonce.insert(url.clone(), nonce);
        self.seen.last_version.insert(url, version);
    }

    /// A Secret's private key must belong to the stream: none on the plaintext port or a
    /// refused stream; on the TLS port, the workload's own key or a Secret of its own
    /// namespace.
    fn check_secret(&self, bytes: &[u8]) {
        use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
        let secret =
            Secret::decode(bytes).unwrap_or_else(|e| panic!("a Secret does not decode: {e}"));
        let Some(secret::Type::TlsCertificate(cert)) = secret.r#type else {
            return;
        };
        let key = match cert.private_key.and_then(|k| k.specifier) {
            Some(Specifier::InlineBytes(b)) => String::from_utf8_lossy(&b).into_owned(),
            Some(Specifier::InlineString(s)) => s,
            _ => return,
        };
        let Some(id) = &self.owner else {
            panic!(
                "a private key ({}) went out on a stream with no identity",
                secret.name
            );
        };
        // The owner's current key (renewed when due, so read as of now).
        let own = fixture()
            .secrets
            .get(id)
            .map(|c| c.key_pem.clone())
            .unwrap_or_default();
        let own_namespace = format!("KEY-OF-{}", id.namespace);
        assert!(
            key == own || key == own_namespace,
            "{id}'s stream got a private key that is not its own ({})",
            secret.name
        );
    }

    fn send(&mut self, bytes: Bytes) {
        if let Some(tx) = &self.requests {
            let _ = tx.send(bytes);
        }
    }

    fn node(&mut self, c: &mut Cursor<'_>) -> Option<Node> {
        if self.sent_node && !c.bool() {
            return None;
        }
        self.sent_node = true;
        let id = match c.byte() % 8 {
            n @ 0..=4 => NODE_IDS[n as usize].to_string(),
            _ => c.string(64),
        };
        let mut meta = serde_json::json!({
            "NAMESPACE": id.split('~').nth(2).and_then(|s| s.split('.').nth(1)).unwrap_or(""),
            "LABELS": {"app": "reviews", "version": "v1"},
        });
        if c.bool() {
            let key = c.pick(&[
                "NAMESPACE",
                "LABELS",
                "CLUSTER_ID",
                "ISTIO_VERSION",
                "PROXY_CONFIG",
                "SERVICE_ACCOUNT",
                "INTERCEPTION_MODE",
                "ISTIO_META_DNS_CAPTURE",
            ]);
            let raw = c.string(64);
            meta[key] = serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw));
        }
        Some(Node {
            id,
            metadata: Some(pb::to_struct(&meta)),
            ..Default::default()
        })
    }

    fn nonce(&self, c: &mut Cursor<'_>, url: &str) -> String {
        match c.byte() % 5 {
            0 => String::new(),
            1 | 2 => self.seen.last_nonce.get(url).cloned().unwrap_or_default(),
            3 => self.seen.any_nonce.clone(),
            _ => c.string(16),
        }
    }

    fn version(&self, c: &mut Cursor<'_>, url: &str) -> String {
        match c.byte() % 3 {
            0 => String::new(),
            1 => self.seen.last_version.get(url).cloned().unwrap_or_default(),
            _ => c.string(16),
        }
    }

    fn names(c: &mut Cursor<'_>) -> Vec<String> {
        (0..c.byte() % 4)
            .map(|_| match c.byte() % 16 {
                n @ 0..=11 => NAMES[n as usize].to_string(),
                _ => c.string(48),
            })
            .collect()
    }

    fn nack(c: &mut Cursor<'_>) -> Option<envoy_types::pb::google::rpc::Status> {
        c.bool().then(|| envoy_types::pb::google::rpc::Status {
            code: 3,
            message: c.string(32),
            details: Vec::new(),
        })
    }

    fn request(&mut self, c: &mut Cursor<'_>) {
        let node = self.node(c);
        let url = c.pick(&TYPES).to_string();
        let msg = if self.delta {
            let initial: BTreeMap<String, String> = (0..c.byte() % 3)
                .map(|_| (c.pick(&NAMES).to_string(), self.version(c, &url)))
                .collect();
            DeltaDiscoveryRequest {
                node,
                response_nonce: self.nonce(c, &url),
                resource_names_subscribe: Self::names(c),
                resource_names_unsubscribe: Self::names(c),
                initial_resource_versions: initial.into_iter().collect(),
                error_detail: Self::nack(c),
                type_url: url,
                ..Default::default()
            }
            .encode_to_vec()
        } else {
            DiscoveryRequest {
                node,
                version_info: self.version(c, &url),
                response_nonce: self.nonce(c, &url),
                resource_names: Self::names(c),
                error_detail: Self::nack(c),
                type_url: url,
                ..Default::default()
            }
            .encode_to_vec()
        };
        self.send(frame(&msg));
    }
}

/// Lets the stream task run until it waits on the driver again.
async fn settle(d: &mut Driver) {
    for _ in 0..48 {
        tokio::task::yield_now().await;
        d.drain();
    }
}

pub fn run(data: &[u8]) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(drive(data));
}

async fn drive(data: &[u8]) {
    let fx = fixture();
    let mut c = Cursor::new(data);
    let flags = c.byte();
    let delta = flags & 1 == 1;
    let (auth, owner) = match (flags >> 1) % 4 {
        0 => (PeerAuth::Plaintext, None),
        3 => (PeerAuth::Refused("fuzz".into()), None),
        n => {
            let (ns, sa) = IDENTITIES[n as usize - 1];
            let id = Identity::new("cluster.local", ns, sa);
            (PeerAuth::Authenticated(id.clone()), Some(id))
        }
    };
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let state = Arc::new(
        XdsState::new(Arc::new(crate::metrics::Metrics::new()), shutdown_rx)
            .with_secrets(fx.secrets.clone()),
    );
    let mut current = Arc::new(Snapshot::build(
        &fx.base,
        None,
        "cluster.local",
        "istio-system",
    ));
    push::publish(&state, current.clone());
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let (resp_tx, resp_rx) = mpsc::channel(4);
    let body = tonic::body::Body::new(RequestBody(req_rx));
    let mode = if delta {
        Mode::Delta {
            inbound: Requests::new(body, MAX_REQUEST),
            tx: resp_tx,
        }
    } else {
        Mode::Sotw {
            inbound: Requests::new(body, MAX_REQUEST),
            tx: resp_tx,
        }
    };
    let task = tokio::spawn(run_stream(state.clone(), mode, "fuzz".into(), auth));
    let mut d = Driver {
        delta,
        owner,
        requests: Some(req_tx),
        body: ResponseBody::new(resp_rx),
        seen: Seen::default(),
        sent_node: false,
    };
    let mut ops = 0;
    while !c.is_empty() && ops < MAX_OPS && !d.seen.ended {
        ops += 1;
        match c.byte() % 8 {
            0..=2 => d.request(&mut c),
            3 => {
                let raw = c.bytes(255).to_vec();
                d.send(frame(&raw));
            }
            4 => {
                let raw = Bytes::copy_from_slice(c.bytes(255));
                d.send(raw);
            }
            5 => {
                let set = &fx.changes[c.byte() as usize % fx.changes.len()];
                let next = Arc::new(Snapshot::build(
                    set,
                    Some(&current),
                    "cluster.local",
                    "istio-system",
                ));
                push::publish(&state, next.clone());
                current = next;
            }
            6 => d.requests = None,
            _ => {}
        }
        settle(&mut d).await;
    }
    // The client hangs up: the stream must end, promptly.
    d.requests = None;
    // Counted in rounds, not wall time, so a loaded machine cannot fail it: each round
    // lets the stream run and sleeps a millisecond (5 s at the least).
    let mut rounds = 0;
    while !task.is_finished() {
        rounds += 1;
        assert!(
            rounds <= 5000,
            "the stream still runs after 5,000 rounds since its client closed"
        );
        settle(&mut d).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if let Err(e) = task.await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
    settle(&mut d).await;
    assert!(
        state.connections().is_empty(),
        "an ended stream left its connection in the registry"
    );
}
