//! The ADS server against an in-process fake proxy: ACK/NACK handling, scoped pushes,
//! Delta subscriptions, EDS after CDS, no secrets on the plaintext port.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use envoy_types::pb::google::rpc::Status;
use meshd::envoy::{pb, type_url};
use meshd::model::snapshot::Snapshot;
use meshd::xds::{AdsService, XdsState, push};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

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
spec: {containers: [{name: a, image: b}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Service
metadata: {name: hidden, namespace: other}
spec:
  selector: {app: hidden}
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress:
  - hosts: ["./*"]
"#;

#[path = "support/config.rs"]
mod support_config;
use support_config::config_set as config;

struct FakeServer {
    state: Arc<XdsState>,
    addr: String,
    last: Arc<Snapshot>,
    _shutdown: watch::Sender<bool>,
}

impl FakeServer {
    async fn new(text: &str) -> FakeServer {
        FakeServer::with(text, |s| s).await
    }

    /// With the server's state tuned (push slots, send deadline).
    async fn with(text: &str, tune: impl FnOnce(XdsState) -> XdsState) -> FakeServer {
        let (tx, rx) = watch::channel(false);
        let state = Arc::new(tune(XdsState::new(
            Arc::new(meshd::metrics::Metrics::new()),
            rx,
        )));
        let snap = Arc::new(Snapshot::build(
            &config(text),
            None,
            "cluster.local",
            "istio-system",
        ));
        push::publish(&state, snap.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = format!("http://{}", l.local_addr().expect("addr"));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AdsService::new(state.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        FakeServer {
            state,
            addr,
            last: snap,
            _shutdown: tx,
        }
    }

    fn update(&mut self, text: &str) {
        let next = Arc::new(Snapshot::build(
            &config(text),
            Some(&self.last),
            "cluster.local",
            "istio-system",
        ));
        push::publish(&self.state, next.clone());
        self.last = next;
    }

    /// A Delta stream: the request sender and the response stream.
    async fn delta(
        &self,
    ) -> (
        mpsc::Sender<DeltaDiscoveryRequest>,
        Streaming<DeltaDiscoveryResponse>,
    ) {
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(8);
        let stream = self
            .client()
            .await
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        (tx, stream)
    }

    async fn client(&self) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
        AggregatedDiscoveryServiceClient::connect(self.addr.clone())
            .await
            .expect("connect")
            .max_decoding_message_size(usize::MAX)
    }

    fn metric(&self, name: &str) -> String {
        self.state
            .metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with(name))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn node(id: &str) -> Node {
    let meta = serde_json::json!({"NAMESPACE": "default", "INTERCEPTION_MODE": "NONE"});
    Node {
        id: id.into(),
        metadata: Some(pb::to_struct(&meta)),
        ..Default::default()
    }
}

const CLIENT: &str = "sidecar~10.0.0.9~client.default~default.svc.cluster.local";

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    node: Node,
}

impl Sotw {
    async fn open(s: &FakeServer) -> Sotw {
        Sotw::open_as(s, node(CLIENT)).await
    }

    async fn open_as(s: &FakeServer, node: Node) -> Sotw {
        let (tx, rx) = mpsc::channel(8);
        let stream = s
            .client()
            .await
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        Sotw {
            tx,
            rx: stream,
            node,
        }
    }

    async fn send(
        &self,
        url: &str,
        names: &[&str],
        version: &str,
        nonce: &str,
        error: Option<&str>,
        with_node: bool,
    ) {
        self.tx
            .send(DiscoveryRequest {
                node: with_node.then(|| self.node.clone()),
                type_url: url.into(),
                resource_names: names.iter().map(|s| s.to_string()).collect(),
                version_info: version.into(),
                response_nonce: nonce.into(),
                error_detail: error.map(|e| Status {
                    code: 3,
                    message: e.into(),
                    details: vec![],
                }),
                ..Default::default()
            })
            .await
            .expect("send");
    }

    async fn expect(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response within 5s")
            .expect("stream ok")
            .expect("not closed")
    }

    /// Nothing arrives within a generous bound (pushes here take microseconds).
    async fn expect_none(&mut self) {
        if let Ok(Ok(Some(r))) =
            tokio::time::timeout(Duration::from_millis(400), self.rx.message()).await
        {
            panic!(
                "unexpected response: {} with {} resources",
                r.type_url,
                r.resources.len()
            );
        }
    }
}

fn names(r: &DiscoveryResponse) -> Vec<String> {
    use prost::Message;
    r.resources
        .iter()
        .map(|a| match a.type_url.as_str() {
            type_url::CLUSTER => {
                envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(a.value.as_slice())
                    .map(|c| c.name)
                    .unwrap_or_default()
            }
            type_url::ENDPOINT => {
                envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
                    a.value.as_slice(),
                )
                .map(|c| c.cluster_name)
                .unwrap_or_default()
            }
            _ => String::new(),
        })
        .collect()
}

#[tokio::test]
async fn ack_nack_and_scoped_pushes() {
    let mut s = FakeServer::new(BASE).await;
    let mut c = Sotw::open(&s).await;
    c.send(type_url::CLUSTER, &[], "", "", None, true).await;
    let r = c.expect().await;
    let clusters = names(&r);
    assert!(
        clusters.contains(&"outbound|9080||reviews.default.svc.cluster.local".to_string()),
        "{clusters:?}"
    );
    assert!(
        !clusters.iter().any(|n| n.contains("hidden")),
        "the Sidecar hides other namespaces: {clusters:?}"
    );
    // ACK: nothing more.
    c.send(
        type_url::CLUSTER,
        &[],
        &r.version_info,
        &r.nonce,
        None,
        false,
    )
    .await;
    c.expect_none().await;

    // A change the proxy cannot see: no push.
    s.update(&BASE.replace("port: 8080", "port: 8081"));
    c.expect_none().await;

    // A change it sees: CDS is pushed.
    s.update(
        &BASE
            .replace("port: 9080", "port: 9081")
            .replace("port: 8080", "port: 8081"),
    );
    let r2 = c.expect().await;
    assert_eq!(r2.type_url, type_url::CLUSTER);
    assert_ne!(r2.version_info, r.version_info);
    assert!(names(&r2).contains(&"outbound|9081||reviews.default.svc.cluster.local".to_string()));

    // NACK it: recorded, counted, shown, and not resent.
    c.send(
        type_url::CLUSTER,
        &[],
        &r.version_info,
        &r2.nonce,
        Some("cluster rejected: test"),
        false,
    )
    .await;
    c.expect_none().await;
    let status = s.state.sync_status();
    let cds = &status[0].types[type_url::CLUSTER];
    let nack = cds.last_nack.as_ref().expect("NACK recorded");
    assert_eq!(nack.error, "cluster rejected: test");
    assert_eq!(nack.version, r2.version_info);
    assert_eq!(cds.acked_version.as_deref(), Some(r.version_info.as_str()));
    assert!(
        s.metric("pilot_total_xds_rejects{")
            .contains("type=\"cds\"} 1"),
        "{}",
        s.metric("pilot_total")
    );

    // Publishing identical configuration again sends nothing (versions are content hashes).
    s.update(
        &BASE
            .replace("port: 9080", "port: 9081")
            .replace("port: 8080", "port: 8081"),
    );
    c.expect_none().await;
}

#[tokio::test]
async fn endpoints_follow_clusters_and_change_alone() {
    let mut s = FakeServer::new(BASE).await;
    let mut c = Sotw::open(&s).await;
    c.send(type_url::CLUSTER, &[], "", "", None, true).await;
    let cds = c.expect().await;
    c.send(
        type_url::CLUSTER,
        &[],
        &cds.version_info,
        &cds.nonce,
        None,
        false,
    )
    .await;
    let name = "outbound|9080||reviews.default.svc.cluster.local";
    c.send(type_url::ENDPOINT, &[name], "", "", None, false)
        .await;
    let eds = c.expect().await;
    assert_eq!(names(&eds), vec![name.to_string()]);
    c.send(
        type_url::ENDPOINT,
        &[name],
        &eds.version_info,
        &eds.nonce,
        None,
        false,
    )
    .await;
    c.expect_none().await;

    // A new pod: only EDS is pushed.
    let more = format!(
        "{BASE}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: reviews-v2, namespace: default, labels: {{app: reviews}}}}\nspec: {{containers: [{{name: a, image: b}}]}}\nstatus: {{podIP: 10.0.0.2}}\n"
    );
    s.update(&more);
    let r = c.expect().await;
    assert_eq!(
        r.type_url,
        type_url::ENDPOINT,
        "an endpoint change pushes EDS only"
    );
    use prost::Message;
    let cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
        r.resources[0].value.as_slice(),
    )
    .expect("cla");
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 2);
    c.send(
        type_url::ENDPOINT,
        &[name],
        &r.version_info,
        &r.nonce,
        None,
        false,
    )
    .await;
    c.expect_none().await;

    // A service change re-sends the cluster and then its endpoints.
    s.update(&more.replace(
        "ports: [{name: http, port: 9080}]",
        "ports: [{name: http2, port: 9080}]",
    ));
    let first = c.expect().await;
    assert_eq!(first.type_url, type_url::CLUSTER);
    let second = c.expect().await;
    assert_eq!(
        second.type_url,
        type_url::ENDPOINT,
        "a re-sent cluster is followed by its endpoints"
    );
    assert_eq!(names(&second), vec![name.to_string()]);
}

#[tokio::test]
async fn first_request_without_node_is_refused_and_no_secrets_on_plaintext() {
    let s = FakeServer::new(BASE).await;
    let mut c = Sotw::open(&s).await;
    c.send(type_url::CLUSTER, &[], "", "", None, false).await;
    let err = tokio::time::timeout(Duration::from_secs(5), c.rx.message())
        .await
        .expect("answer")
        .expect_err("refused");
    assert!(err.message().contains("node"), "{err}");

    let mut c = Sotw::open(&s).await;
    c.send(type_url::SECRET, &["default", "ROOTCA"], "", "", None, true)
        .await;
    let r = c.expect().await;
    assert!(
        r.resources.is_empty(),
        "no secret is ever served on the plaintext port"
    );
}

#[tokio::test]
async fn delta_subscribe_unsubscribe_and_removal() {
    let mut s = FakeServer::new(BASE).await;
    let (tx, mut stream) = s.delta().await;
    async fn next(stream: &mut Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("response")
            .expect("ok")
            .expect("open")
    }
    tx.send(DeltaDiscoveryRequest {
        node: Some(node(CLIENT)),
        type_url: type_url::CLUSTER.into(),
        ..Default::default()
    })
    .await
    .expect("send");
    let r = next(&mut stream).await;
    let got: BTreeMap<String, String> = r
        .resources
        .iter()
        .map(|x| (x.name.clone(), x.version.clone()))
        .collect();
    assert!(got.contains_key("outbound|9080||reviews.default.svc.cluster.local"));
    tx.send(DeltaDiscoveryRequest {
        type_url: type_url::CLUSTER.into(),
        response_nonce: r.nonce.clone(),
        ..Default::default()
    })
    .await
    .expect("ack");
    // Remove the service: the cluster is named in removed_resources.
    s.update(&BASE.replace(
        "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\nspec:\n  selector: {app: reviews}\n  ports: [{name: http, port: 9080}]\n---\n",
        "",
    ));
    let r = next(&mut stream).await;
    assert!(
        r.removed_resources
            .contains(&"outbound|9080||reviews.default.svc.cluster.local".to_string()),
        "{:?}",
        r.removed_resources
    );
    assert!(
        r.resources.is_empty(),
        "unchanged clusters are not re-sent: {:?}",
        r.resources.iter().map(|x| &x.name).collect::<Vec<_>>()
    );
}

/// Two proxies alike in everything but their zone must each get the clusters their
/// rules call for: with `localityLbSetting.distribute`, the cluster balances by locality
/// weight (for every client, as istiod: where the client runs shapes only its endpoints),
/// whichever zone's proxy asked first.
#[tokio::test]
async fn clusters_are_not_shared_across_localities() {
    use envoy_types::pb::envoy::config::core::v3::Locality;
    let rule = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: region1/zone1/*
          to: {"region1/zone1/*": 80, "region1/zone2/*": 20}
"#;
    let s = FakeServer::new(&format!("{BASE}{rule}")).await;
    let cluster_in = |zone: &str| {
        let mut n = node(CLIENT);
        n.locality = Some(Locality {
            region: "region1".into(),
            zone: zone.into(),
            sub_zone: String::new(),
        });
        n
    };
    let weighted = |r: &DiscoveryResponse| {
        use prost::Message;
        r.resources
            .iter()
            .filter_map(|a| {
                envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(a.value.as_slice())
                    .ok()
            })
            .find(|c| c.name == "outbound|9080||reviews.default.svc.cluster.local")
            .and_then(|c| c.common_lb_config)
            .is_some_and(|l| l.locality_config_specifier.is_some())
    };
    // zone2 first, so a shared cache entry would be zone2's for both.
    let mut two = Sotw::open_as(&s, cluster_in("zone2")).await;
    two.send(type_url::CLUSTER, &[], "", "", None, true).await;
    let cds_two = two.expect().await;
    let mut one = Sotw::open_as(&s, cluster_in("zone1")).await;
    one.send(type_url::CLUSTER, &[], "", "", None, true).await;
    let cds_one = one.expect().await;
    assert!(
        weighted(&cds_one),
        "zone1's client gets locality-weighted load balancing"
    );
    assert!(
        weighted(&cds_two),
        "so does zone2's: the weights in its endpoints are its own"
    );
}

/// Proxies that never ACK hold no push slot: a slot is released once the response is
/// handed to the transport, so two silent proxies with two slots do not stop a third.
#[tokio::test]
async fn proxies_that_never_answer_hold_no_push_slot() {
    let s = FakeServer::with(BASE, |st| st.with_push_slots(2)).await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        let mut c = Sotw::open(&s).await;
        c.send(type_url::CLUSTER, &[], "", "", None, true).await;
        c.expect().await;
        silent.push(c); // never ACKs
    }
    let mut third = Sotw::open(&s).await;
    third.send(type_url::CLUSTER, &[], "", "", None, true).await;
    let r = third.expect().await;
    assert_eq!(r.type_url, type_url::CLUSTER, "the third proxy is served");
}

/// A proxy that stops reading is cut off after the send deadline, and the others keep
/// getting pushes meanwhile.
#[tokio::test]
async fn a_proxy_that_stops_reading_cannot_stall_pushes() {
    // Large clusters responses (1,500 services) fill the stuck client's HTTP/2 window
    // after a few pushes.
    let services = |variant: usize| -> String {
        let mut t = String::from(BASE);
        for i in 0..1500 {
            t.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\nspec:\n  selector: {{app: svc-{i}}}\n  ports: [{{name: {}, port: {}}}]\n",
                // Alternating protocols change every cluster.
                if variant.is_multiple_of(2) { "http" } else { "http2" },
                10000 + (i % 50)
            ));
        }
        t
    };
    let mut s = FakeServer::with(&services(0), |st| {
        st.with_push_slots(1)
            .with_send_timeout(Duration::from_millis(500))
    })
    .await;
    let stuck = Sotw::open(&s).await;
    stuck.send(type_url::CLUSTER, &[], "", "", None, true).await;
    let mut good = Sotw::open(&s).await;
    good.send(type_url::CLUSTER, &[], "", "", None, true).await;
    let mut last = good.expect().await;
    for variant in 1..=20 {
        good.send(
            type_url::CLUSTER,
            &[],
            &last.version_info,
            &last.nonce,
            None,
            false,
        )
        .await;
        s.update(&services(variant));
        last = good.expect().await;
        assert_eq!(last.type_url, type_url::CLUSTER, "push {variant} arrives");
    }
    // The stuck stream was closed by its deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !s
        .metric("pilot_xds_write_timeout")
        .contains("pilot_xds_write_timeout_total 1")
        && !s
            .metric("pilot_xds_write_timeout")
            .contains("pilot_xds_write_timeout 1")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stuck proxy's stream is closed: {}",
            s.metric("pilot_xds_write_timeout")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stuck);
}

/// Connect/disconnect churn with junk versions and names leaves nothing behind: no
/// metric series per junk version, no cached resource per junk name.
#[tokio::test]
async fn churn_with_junk_names_leaves_no_state() {
    let s = FakeServer::new(BASE).await;
    let sets_before = s.state.cache.len();
    for i in 0..1000 {
        let (tx, mut stream) = s.delta().await;
        let mut n = node(&format!(
            "sidecar~10.1.{}.{}~junk-{i}.default~default.svc.cluster.local",
            i / 250,
            i % 250
        ));
        if let Some(m) = n.metadata.as_mut() {
            m.fields.insert(
                "ISTIO_VERSION".into(),
                pb::struct_value(&serde_json::json!(format!("junk-version-{i}"))),
            );
        }
        tx.send(DeltaDiscoveryRequest {
            node: Some(n),
            type_url: type_url::ENDPOINT.into(),
            resource_names_subscribe: (0..20)
                .map(|j| format!("outbound|80||junk-{i}-{j}.example"))
                .collect(),
            ..Default::default()
        })
        .await
        .expect("send");
        let r = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a response")
            .expect("ok")
            .expect("open");
        assert_eq!(r.resources.len(), 0, "junk names have no resources");
        drop(tx);
        drop(stream);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = s.metric("pilot_xds");
        let gone = !text.contains("junk-version");
        let cached = s.state.cache.len();
        if gone && cached <= sets_before + 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "churn left state behind: {cached} cache entries (before: {sets_before}); metrics: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// While one proxy's large translation runs, another proxy is still answered: the
/// translation gives up its async worker (one worker here), so other streams go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_long_translation_does_not_hold_up_other_proxies() {
    let mut text = String::from(BASE);
    for i in 0..6000 {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: big}}\nspec:\n  selector: {{app: svc-{i}}}\n  ports: [{{name: http, port: 80}}, {{name: grpc, port: 90}}]\n"
        ));
    }
    let s = FakeServer::new(&text).await;
    // A proxy in namespace `big` sees all 6,000 services; the default namespace's
    // Sidecar keeps the other proxy's view to one service.
    let mut heavy_node = node("sidecar~10.0.0.8~heavy.big~big.svc.cluster.local");
    if let Some(m) = heavy_node.metadata.as_mut() {
        m.fields.insert(
            "NAMESPACE".into(),
            pb::struct_value(&serde_json::json!("big")),
        );
    }
    let mut heavy = Sotw::open_as(&s, heavy_node).await;
    heavy.send(type_url::CLUSTER, &[], "", "", None, true).await;
    // Its stream is registered right before its clusters are translated.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.state.connections().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the heavy proxy connects"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut light = Sotw::open(&s).await;
    light.send(type_url::CLUSTER, &[], "", "", None, true).await;
    let r = light.expect().await;
    assert_eq!(r.type_url, type_url::CLUSTER, "the light proxy is answered");
    assert!(
        tokio::time::timeout(Duration::ZERO, heavy.rx.message())
            .await
            .is_err(),
        "…while the heavy proxy's translation is still running"
    );
    let big = heavy.expect().await;
    assert!(big.resources.len() > 12_000, "{}", big.resources.len());
}

/// Subscriptions grow only by request, so one stream's are bounded: past the limit the
/// stream is closed with RESOURCE_EXHAUSTED instead of holding the names.
#[tokio::test]
async fn delta_subscriptions_are_bounded() {
    let s = FakeServer::new(BASE).await;
    let (tx, mut stream) = s.delta().await;
    let names = |from: usize, n: usize| -> Vec<String> {
        (from..from + n)
            .map(|i| format!("outbound|80||n{i}.x"))
            .collect()
    };
    tx.send(DeltaDiscoveryRequest {
        node: Some(node(CLIENT)),
        type_url: type_url::ENDPOINT.into(),
        resource_names_subscribe: names(0, 60_000),
        ..Default::default()
    })
    .await
    .expect("send");
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("answered");
    assert!(first.is_ok(), "60,000 names are fine: {first:?}");
    tx.send(DeltaDiscoveryRequest {
        type_url: type_url::ENDPOINT.into(),
        resource_names_subscribe: names(60_000, 60_000),
        ..Default::default()
    })
    .await
    .expect("send");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends");
    let status = closed.expect_err("closed with an error");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
}

/// Sends one message that is not a DiscoveryRequest (a string field holding bytes that
/// are not UTF-8) as the first message of a SotW stream; returns the stream's gRPC code.
/// `None` when the client could not open a connection, or the connection failed before
/// any answer (on a loaded machine, with hundreds of clients connecting in a loop beside
/// it): then meshd never saw the request.
async fn garbage(addr: &str) -> Option<tonic::Code> {
    use envoy_types::pb::google::protobuf::BytesValue;
    let ch = tonic::transport::Endpoint::from_shared(addr.to_string())
        .expect("endpoint")
        .connect()
        .await
        .ok()?;
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.ok()?;
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    let codec: tonic_prost::ProstCodec<BytesValue, DiscoveryResponse> = Default::default();
    // Held open after the message, as a client that goes on sending would.
    let (tx, rx) = mpsc::channel::<BytesValue>(1);
    let _ = tx
        .send(BytesValue {
            value: vec![0xff; 16],
        })
        .await;
    let code = match g
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
        .await
    {
        Ok(resp) => match resp.into_inner().message().await {
            Err(e) => e.code(),
            Ok(_) => tonic::Code::Ok,
        },
        // No response head: the connection failed underneath (reset while the accept
        // queue overflowed with the churners' connections), so meshd never answered.
        Err(e)
            if std::error::Error::source(&e).is_some_and(|s| s.is::<tonic::transport::Error>()) =>
        {
            return None;
        }
        Err(e) => e.code(),
    };
    drop(tx);
    Some(code)
}

/// A thousand misbehaving clients at once — 200 each that never ACK, NACK everything,
/// send garbage, connect and disconnect in a loop, or stop reading — and one proxy that
/// behaves: it still gets its push; every NACK is recorded and none is answered with a
/// resend; garbage is refused with INVALID_ARGUMENT and counted; churned connections
/// leave nothing in the registry; the misbehaving streams are visible in the sync status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_misbehaving_clients_delay_no_one() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const EACH: usize = 200;
    let mut s = FakeServer::new(BASE).await;

    let mut good = Sotw::open(&s).await;
    good.send(type_url::CLUSTER, &[], "", "", None, true).await;
    let first = good.expect().await;
    good.send(
        type_url::CLUSTER,
        &[],
        &first.version_info,
        &first.nonce,
        None,
        false,
    )
    .await;

    // Never ACK: take the first response and say nothing more.
    let mut silent = Vec::new();
    for _ in 0..EACH {
        let mut c = Sotw::open(&s).await;
        c.send(type_url::CLUSTER, &[], "", "", None, true).await;
        c.expect().await;
        silent.push(c);
    }
    // Stop reading: ask, and never look at the answer.
    let mut deaf = Vec::new();
    for _ in 0..EACH {
        let c = Sotw::open(&s).await;
        c.send(type_url::CLUSTER, &[], "", "", None, true).await;
        deaf.push(c);
    }
    // NACK everything: each counts the responses it got.
    let received: Arc<Vec<AtomicUsize>> =
        Arc::new((0..EACH).map(|_| AtomicUsize::new(0)).collect());
    let mut nackers = Vec::new();
    for i in 0..EACH {
        let mut c = Sotw::open(&s).await;
        c.send(type_url::CLUSTER, &[], "", "", None, true).await;
        let received = received.clone();
        nackers.push(tokio::spawn(async move {
            while let Ok(Some(r)) = c.rx.message().await {
                received[i].fetch_add(1, Ordering::Relaxed);
                c.send(
                    type_url::CLUSTER,
                    &[],
                    "",
                    &r.nonce,
                    Some("no thanks"),
                    false,
                )
                .await;
            }
        }));
    }
    // Garbage.
    let mut codes = Vec::new();
    for _ in 0..EACH {
        codes.push(tokio::spawn({
            let addr = s.addr.clone();
            async move {
                // A connection that could not be made is tried again: the assertion is
                // about what meshd does with garbage it receives.
                for _ in 0..100 {
                    if let Some(code) = garbage(&addr).await {
                        return code;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                panic!("no connection to meshd in 100 tries");
            }
        }));
    }
    // Connect, take one response, hang up; again and again.
    let stop = Arc::new(AtomicBool::new(false));
    let mut churners = Vec::new();
    for _ in 0..EACH {
        let (stop, addr) = (stop.clone(), s.addr.clone());
        churners.push(tokio::spawn(async move {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                let Ok(client) = AggregatedDiscoveryServiceClient::connect(addr.clone()).await
                else {
                    // Out of ports or a full accept queue: back off rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (tx, rx) = mpsc::channel(1);
                let _ = tx
                    .send(DiscoveryRequest {
                        node: Some(node(CLIENT)),
                        type_url: type_url::CLUSTER.into(),
                        ..Default::default()
                    })
                    .await;
                let mut client = client.max_decoding_message_size(usize::MAX);
                if let Ok(r) = client
                    .stream_aggregated_resources(ReceiverStream::new(rx))
                    .await
                {
                    let _ = r.into_inner().message().await;
                }
                rounds += 1;
            }
            rounds
        }));
    }
    let mut seen = BTreeMap::new();
    for c in codes {
        // meshd ends the stream with INVALID_ARGUMENT (counted below: that count is the
        // assertion); the client, still sending, may see the stream's reset first
        // (Unknown, Cancelled, depending on timing). It is never served.
        let code = c.await.expect("task");
        assert_ne!(code, tonic::Code::Ok, "garbage is refused");
        *seen.entry(format!("{code:?}")).or_insert(0) += 1;
    }

    // A change: the proxy that behaves gets it while all of that goes on.
    s.update(&format!(
        "{BASE}---\napiVersion: v1\nkind: Service\nmetadata: {{name: added, namespace: default}}\nspec:\n  ports: [{{name: http, port: 7000}}]\n"
    ));
    let pushed = good.expect().await;
    assert_ne!(
        pushed.version_info, first.version_info,
        "the change arrived"
    );
    good.send(
        type_url::CLUSTER,
        &[],
        &pushed.version_info,
        &pushed.nonce,
        None,
        false,
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let mut rounds = 0;
    for c in churners {
        rounds += c.await.expect("churner");
    }
    assert!(rounds >= EACH, "the churners connected {rounds} times");
    // Every NACKer gets the change (however loaded the machine), then a resend loop, if
    // there were one, gets a second to show.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while received.iter().any(|n| n.load(Ordering::Relaxed) < 2) {
        assert!(
            std::time::Instant::now() < deadline,
            "a NACKer never got the change"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (i, n) in received.iter().enumerate() {
        assert_eq!(
            n.load(Ordering::Relaxed),
            2,
            "NACKer {i}: the first response and the change, nothing resent"
        );
    }
    assert!(
        s.metric("meshd_xds_stream_errors")
            .lines()
            .any(|l| l.ends_with(&format!("code=\"invalid_argument\"}} {EACH}"))),
        "{} (the garbage clients saw {seen:?})",
        s.metric("meshd_xds_stream_errors")
    );
    assert!(
        s.metric("pilot_total_xds_rejects")
            .lines()
            .any(|l| l.ends_with(&format!("type=\"cds\"}} {}", 2 * EACH))),
        "{}",
        s.metric("pilot_total_xds_rejects")
    );
    // Only the connections still open are registered: the good one, the silent, the
    // deaf and the NACKers (each churned connection is gone).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.state.connections().len() != 1 + 3 * EACH {
        assert!(
            std::time::Instant::now() < deadline,
            "{} connections registered",
            s.state.connections().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Visible per connection: the NACKers by their NACK count, the silent and the deaf
    // by the response they have not acknowledged.
    let status = s.state.sync_status();
    let nacking = status
        .iter()
        .filter(|c| c.types.get(type_url::CLUSTER).is_some_and(|t| t.nacks == 2))
        .count();
    assert_eq!(nacking, EACH);
    let waiting = status
        .iter()
        .filter(|c| {
            c.types
                .get(type_url::CLUSTER)
                .is_some_and(|t| t.nacks == 0 && t.sent_nonce != t.acked_nonce)
        })
        .count();
    assert_eq!(waiting, 2 * EACH, "the silent and the deaf");
    for t in nackers {
        t.abort();
    }
    drop((silent, deaf));
}
