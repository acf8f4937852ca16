//! Hostile clients against a real `meshd serve` process (`meshd-bench --hostile N`): N
//! ADS clients of each misbehaving kind — never ACK, never read, NACK everything, send
//! garbage, connect and hang up in a loop — beside one proxy that behaves, while every
//! cluster set changes every 2 s (so every stream is pushed a full CDS each time). It
//! measures what those clients cost meshd (resident memory per client, while they are
//! connected and after they leave) and whether the proxy that behaves still gets each
//! change. docs/RELIABILITY.md has the figures.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use meshd::envoy::type_url;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::soak::{Served, doc, rss_mb, start_meshd, write};

fn mesh_text(services: usize) -> String {
    let mut t = String::new();
    for i in 0..services {
        let name = format!("svc-{i}");
        doc(
            &mut t,
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"selector": {"app": name},
                     "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                     "ports": [{"name": "http", "port": 8080}]}}),
        );
        doc(
            &mut t,
            super::pod(i, 1, &format!("10.1.{}.{}", i / 250, i % 250 + 1)),
        );
    }
    t
}

/// One Service that is replaced every tick: every proxy's cluster set changes.
fn extra_text(tick: u64) -> String {
    let mut t = String::new();
    doc(
        &mut t,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("extra-{tick}"), "namespace": "bench"},
        "spec": {"ports": [{"name": "http", "port": 9000}]}}),
    );
    t
}

fn node(i: usize) -> Node {
    let p = super::proxy(i, 10);
    Node {
        // Its id and metadata as an Envoy would send them (no service cluster).
        cluster: String::new(),
        ..meshd::translate::output::node(&p)
    }
}

/// A SotW CDS stream on its own connection: the request sender and the responses.
async fn open(
    addr: &str,
    i: usize,
) -> Option<(
    mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
)> {
    let ch = tonic::transport::Endpoint::from_shared(addr.to_string())
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut c = AggregatedDiscoveryServiceClient::new(ch).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(node(i)),
        type_url: type_url::CLUSTER.into(),
        ..Default::default()
    })
    .await
    .ok()?;
    let stream = c
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .ok()?
        .into_inner();
    Some((tx, stream))
}

/// A gRPC message that is not a DiscoveryRequest, on a stream held open.
async fn garbage(addr: &str) {
    use envoy_types::pb::google::protobuf::BytesValue;
    let Ok(ep) = tonic::transport::Endpoint::from_shared(addr.to_string()) else {
        return;
    };
    let Ok(ch) = ep.connect().await else { return };
    let mut g = tonic::client::Grpc::new(ch);
    if g.ready().await.is_err() {
        return;
    }
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    let codec: tonic_prost::ProstCodec<BytesValue, DiscoveryResponse> = Default::default();
    let (tx, rx) = mpsc::channel::<BytesValue>(1);
    let _ = tx
        .send(BytesValue {
            value: vec![0xff; 16],
        })
        .await;
    if let Ok(resp) = g
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
        .await
    {
        let _ = resp.into_inner().message().await;
    }
}

/// The clients of one kind, each on its own connection, until `stop`.
async fn hostile(kind: &'static str, addr: String, i: usize, stop: Arc<AtomicBool>) {
    match kind {
        // Reads every response, acknowledges none.
        "silent" => {
            if let Some((_tx, mut s)) = open(&addr, i).await {
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(500), s.message()).await {
                        Ok(Ok(Some(_))) | Err(_) => {}
                        Ok(_) => break,
                    }
                }
            }
        }
        // Asks, then never reads.
        "deaf" => {
            if let Some((_tx, _s)) = open(&addr, i).await {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        // NACKs every response.
        "nacker" => {
            if let Some((tx, mut s)) = open(&addr, i).await {
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(500), s.message()).await {
                        Ok(Ok(Some(r))) => {
                            let _ = tx
                                .send(DiscoveryRequest {
                                    type_url: type_url::CLUSTER.into(),
                                    response_nonce: r.nonce,
                                    error_detail: Some(envoy_types::pb::google::rpc::Status {
                                        code: 3,
                                        message: "no thanks".into(),
                                        details: Vec::new(),
                                    }),
                                    ..Default::default()
                                })
                                .await;
                        }
                        Err(_) => {}
                        Ok(_) => break,
                    }
                }
            }
        }
        // Sends what is not a DiscoveryRequest, again and again.
        "garbage" => {
            while !stop.load(Ordering::Relaxed) {
                garbage(&addr).await;
            }
        }
        // Connects, takes one response, hangs up, again and again.
        _ => {
            while !stop.load(Ordering::Relaxed) {
                if let Some((_tx, mut s)) = open(&addr, i).await {
                    let _ = tokio::time::timeout(Duration::from_secs(5), s.message()).await;
                }
            }
        }
    }
}

const KINDS: [&str; 5] = ["silent", "deaf", "nacker", "garbage", "churner"];

/// The proxy that behaves: ACKs each CDS response and counts them.
async fn good(addr: String, seen: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
    let Some((tx, mut s)) = open(&addr, 0).await else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(500), s.message()).await {
            Ok(Ok(Some(r))) => {
                seen.fetch_add(1, Ordering::Relaxed);
                let _ = tx
                    .send(DiscoveryRequest {
                        type_url: type_url::CLUSTER.into(),
                        version_info: r.version_info,
                        response_nonce: r.nonce,
                        ..Default::default()
                    })
                    .await;
            }
            Err(_) => {}
            Ok(_) => break,
        }
    }
}

/// `n` clients of each kind against a mesh of `services` services for `secs` seconds.
pub async fn run(n: usize, services: usize, secs: u64) -> (String, bool) {
    let dir = std::env::temp_dir().join(format!("meshd-hostile-{}", std::process::id()));
    let config = dir.join("config");
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&config) {
        return (format!("hostile: {e}"), false);
    }
    write(&config, "mesh.yaml", &mesh_text(services));
    write(&config, "extra.yaml", &extra_text(0));
    let mut served: Served = match start_meshd(&dir, &config).await {
        Ok(s) => s,
        Err(e) => return (format!("hostile: {e}"), false),
    };
    let addr = served.grpc.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0));
    let good_task = tokio::spawn(good(addr.clone(), seen.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let baseline = rss_mb(served.pid);

    // Two rounds of the same clients: memory that a round leaves behind and the next
    // does not add to is the allocator's to reuse; memory that grows round after round
    // would be a leak.
    let mut rounds = Vec::new();
    let mut tick = 0u64;
    let mut missed = 0;
    let mut conns = 0;
    for _ in 0..2 {
        let hostile_stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (k, kind) in KINDS.iter().enumerate() {
            for i in 0..n {
                tasks.push(tokio::spawn(hostile(
                    kind,
                    addr.clone(),
                    1 + k * n + i,
                    hostile_stop.clone(),
                )));
            }
        }
        // Changes every 2 s; the proxy that behaves must get each.
        let start = Instant::now();
        let mut peak: f64 = 0.0;
        while start.elapsed() < Duration::from_secs(secs) {
            tick += 1;
            let before = seen.load(Ordering::Relaxed);
            write(&config, "extra.yaml", &extra_text(tick));
            let t = Instant::now();
            while seen.load(Ordering::Relaxed) == before && t.elapsed() < Duration::from_secs(2) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let took = t.elapsed();
            if seen.load(Ordering::Relaxed) == before {
                missed += 1;
            }
            tokio::time::sleep(Duration::from_secs(2).saturating_sub(took)).await;
            peak = peak.max(rss_mb(served.pid));
        }
        conns = conns.max(served.connections().await);
        hostile_stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.abort();
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        rounds.push((peak, rss_mb(served.pid)));
    }
    let metrics = served.metrics().await;
    let errors: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("meshd_xds_stream_errors") || l.starts_with("pilot_total_xds_rejects")
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    let _ = good_task.await;
    let alive = served.alive();
    let peak = rounds.iter().map(|r| r.0).fold(0.0, f64::max);
    let per_client_kb = (peak - baseline) * 1024.0 / (KINDS.len() * n) as f64;
    let passed = alive && missed == 0;
    let rounds_text: Vec<String> = rounds
        .iter()
        .enumerate()
        .map(|(i, (p, a))| format!("round {}: peak {p:.0} MB, {a:.0} MB 10 s after", i + 1))
        .collect();
    let report = format!(
        "hostile: {n} clients of each of {} kinds against {services} services, two rounds of \
         {secs} s (a full CDS push to every stream every 2 s): meshd RSS {baseline:.0} MB with \
         the proxy that behaves alone; {}; at most {per_client_kb:.0} KB per hostile client; \
         at most {conns} connections registered; the proxy that behaves got {} of {tick} \
         changes within 2 s; meshd {}\n  {}",
        KINDS.join(", "),
        rounds_text.join("; "),
        tick - missed,
        if alive { "alive" } else { "DIED" },
        errors.join("\n  "),
    );
    let _ = std::fs::remove_dir_all(Path::new(&dir));
    (report, passed)
}
