//! B3: endpoint churn. Pods change address at a steady rate (by default 1,000 events/s)
//! while simulated proxies hold every cluster's endpoints; each new address encodes the
//! event's sequence number (10.3.x.y), so the clients can say when each event reached
//! them. Events go through what the Kubernetes source and the server do with them: a
//! burst is held for at most 2 × 50 ms (the Kubernetes source's cap), built into a snapshot off the async threads,
//! debounced by the push queue (100 ms) and pushed as EDS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use meshd::envoy::type_url;
use meshd::model::snapshot::{ConfigSet, Snapshot};
use meshd::xds::{AdsService, XdsState, push};
use prost::Message;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

use super::{add, connect, mesh, percentile, pod, proxy};

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The address that carries event `seq`.
fn address(seq: usize) -> String {
    format!("10.3.{}.{}", seq / 250, seq % 250 + 1)
}

fn seq_of(addr: &str) -> Option<usize> {
    let rest = addr.strip_prefix("10.3.")?;
    let (a, b) = rest.split_once('.')?;
    Some(a.parse::<usize>().ok()? * 250 + b.parse::<usize>().ok()? - 1)
}

/// This process's CPU seconds so far.
fn cpu_seconds() -> f64 {
    super::vs_istiod::cpu_secs(std::process::id(), super::vs_istiod::clk_tck())
}

/// Service `svc-i`'s EndpointSlice, as Kubernetes' controller writes it: its two Pods,
/// version 1 at `v1_ip`.
fn slice(i: usize, v1_ip: &str) -> serde_json::Value {
    let name = format!("svc-{i}");
    let v2_ip = format!("10.2.{}.{}", i / 250, i % 250 + 1);
    let endpoint = |v: u32, ip: &str| {
        json!({"addresses": [ip], "conditions": {"ready": true},
               "targetRef": {"kind": "Pod", "name": format!("{name}-v{v}"), "namespace": "bench"}})
    };
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-abcde"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [endpoint(1, v1_ip), endpoint(2, &v2_ip)]})
}

/// Runs B3 in this process (the server) with `m` clients in a child process; with
/// `slices`, every Service has an EndpointSlice that each of its pod events rewrites.
pub async fn run(n: usize, m: usize, rate: usize, secs: usize, slices: bool) -> String {
    let metrics = Arc::new(meshd::metrics::Metrics::new());
    let (_shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = Arc::new(XdsState::new(metrics, shutdown_rx));
    let mut set: ConfigSet = mesh(n, 0);
    if slices {
        for i in 0..n {
            add(
                &mut set,
                slice(i, &format!("10.1.{}.{}", i / 250, i % 250 + 1)),
            );
        }
    }
    let base = Arc::new(Snapshot::build(&set, None, "cluster.local", "istio-system"));
    push::publish(&state, base.clone());
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => return format!("B3: cannot listen: {e}"),
    };
    let addr = match listener.local_addr() {
        Ok(a) => format!("http://{a}"),
        Err(e) => return format!("B3: {e}"),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsService::new(state.clone()).max_request_bytes(64 << 20))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (snap_tx, snap_rx) = mpsc::channel::<Arc<Snapshot>>(4);
    tokio::spawn(push::run(
        state.clone(),
        snap_rx,
        Duration::from_millis(100),
    ));

    let Ok(exe) = std::env::current_exe() else {
        return "B3: no executable path".into();
    };
    let mut child = match tokio::process::Command::new(exe)
        .args(["--b3-client", &addr, "--clients", &m.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return format!("B3: cannot start the clients: {e}"),
    };
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return "B3: no pipes to the clients".into();
    };
    let mut lines = BufReader::new(stdout).lines();
    let synced = lines.next_line().await.ok().flatten().unwrap_or_default();

    // The churn: `rate` events per second for `secs` seconds; a burst is built after
    // the Kubernetes source's cap under steady churn.
    let hold = meshd::sources::kube::QUIET * meshd::sources::kube::BURST_QUIETS;
    let events = rate * secs;
    let mut sent_at: Vec<u128> = Vec::with_capacity(events);
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let mut prev = base;
    let mut next_build = Instant::now() + hold;
    let mut builds = 0usize;
    let mut build_time = Duration::ZERO;
    for seq in 0..events {
        let due = started + Duration::from_secs_f64(seq as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        // A different service each time, spread over the mesh.
        let svc = (seq * 7919) % n;
        add(&mut set, pod(svc, 1, &address(seq)));
        if slices {
            add(&mut set, slice(svc, &address(seq)));
        }
        sent_at.push(now_nanos());
        if Instant::now() >= next_build || seq + 1 == events {
            next_build = Instant::now() + hold;
            let s = set.clone();
            let p = prev.clone();
            let t = Instant::now();
            let built = tokio::task::spawn_blocking(move || {
                Arc::new(Snapshot::build(
                    &s,
                    Some(&p),
                    "cluster.local",
                    "istio-system",
                ))
            })
            .await;
            build_time += t.elapsed();
            builds += 1;
            if let Ok(snap) = built {
                prev = snap.clone();
                let _ = snap_tx.send(snap).await;
            }
        }
    }
    let churn_wall = started.elapsed();
    // Where the last churn build's time went.
    let last_stages = prev
        .build_stages
        .iter()
        .map(|(name, d)| format!("{name} {:.2} ms", d.as_secs_f64() * 1000.0))
        .collect::<Vec<_>>()
        .join(", ");
    // Let the last pushes land, then collect.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_seconds() - cpu_before;
    let _ = stdin.write_all(b"stop\n").await;
    let _ = stdin.flush().await;
    let mut arrivals: HashMap<usize, (usize, u128)> = HashMap::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut it = line.split_whitespace();
        if let (Some(s), Some(c), Some(t)) = (it.next(), it.next(), it.next())
            && let (Ok(s), Ok(c), Ok(t)) = (s.parse(), c.parse(), t.parse())
        {
            arrivals.insert(s, (c, t));
        }
    }
    let _ = child.wait().await;
    // An event overwritten by a later one for the same service before it was pushed
    // never reaches anyone: it is counted apart.
    let mut latencies: Vec<Duration> = Vec::new();
    let mut partial = 0;
    for (seq, at) in sent_at.iter().enumerate() {
        match arrivals.get(&seq) {
            Some((count, t)) if *count == m => {
                latencies.push(Duration::from_nanos(t.saturating_sub(*at) as u64));
            }
            Some(_) => partial += 1,
            None => {}
        }
    }
    latencies.sort();
    let superseded = events - latencies.len() - partial;
    super::report(
        "B3",
        json!({"services": n, "clients": m, "slices": slices, "rate": rate, "events": events,
               "converged": latencies.len(), "partial": partial, "superseded": superseded,
               "p50_ms": super::millis(percentile(&latencies, 0.5)),
               "p99_ms": super::millis(percentile(&latencies, 0.99)),
               "cpu_cores": cpu / (churn_wall.as_secs_f64() + 2.0),
               "target_p99_ms": 250, "target_cores": 1}),
    );
    format!(
        "B3 services={n} clients={m}{}: {synced}; {events} pod events at {rate}/s over {:.1} s, \
         {builds} snapshot builds ({:.1} ms each on average; the last: {last_stages}); convergence (event to every client) \
         p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} events ({partial} reached only some \
         clients, {superseded} superseded before a push); meshd CPU {:.2} s = {:.2} cores",
        if slices { " with EndpointSlices" } else { "" },
        churn_wall.as_secs_f64(),
        build_time.as_secs_f64() * 1000.0 / builds.max(1) as f64,
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        latencies.len(),
        cpu,
        cpu / (churn_wall.as_secs_f64() + 2.0),
    )
}

/// Events seen: sequence → (clients that saw it, latest first arrival in nanos).
type Seen = Arc<Mutex<HashMap<usize, (usize, u128)>>>;

/// The client side (a child process): `m` Delta clients holding every endpoint; prints
/// "synced" once all have their first EDS, and on "stop" one line per event seen.
pub async fn clients(addr: String, m: usize) {
    let seen: Seen = Arc::new(Mutex::new(HashMap::new()));
    let (synced_tx, mut synced_rx) = mpsc::channel::<()>(m.max(1));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..m {
        tasks.push(tokio::spawn(client(
            addr.clone(),
            i,
            seen.clone(),
            synced_tx.clone(),
        )));
    }
    drop(synced_tx);
    for _ in 0..m {
        if synced_rx.recv().await.is_none() {
            break;
        }
    }
    println!(
        "initial sync of {m} clients {:.0} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(l)) = stdin.next_line().await {
        if l.trim() == "stop" {
            break;
        }
    }
    for t in &tasks {
        t.abort();
    }
    if let Ok(s) = seen.lock() {
        for (seq, (count, t)) in s.iter() {
            println!("{seq} {count} {t}");
        }
    }
}

async fn client(addr: String, i: usize, seen: Seen, synced: mpsc::Sender<()>) {
    let dial = super::b5::Dial::new(&addr, None);
    let (tx, mut stream) = connect(&dial, &proxy(i, 1), &[]).await;
    let mut first_eds = true;
    let (mut eds, mut rds) = Default::default();
    // Per client, the first time each event was seen.
    let mut mine: std::collections::HashSet<usize> = std::collections::HashSet::new();
    while let Ok(Some(resp)) = stream.message().await {
        let at = now_nanos();
        super::follow(&tx, &resp, &mut eds, &mut rds).await;
        if resp.type_url == type_url::ENDPOINT {
            if first_eds {
                first_eds = false;
                let _ = synced.send(()).await;
                continue;
            }
            let mut new = Vec::new();
            for r in &resp.resources {
                let Some(a) = &r.resource else { continue };
                let Ok(cla) = ClusterLoadAssignment::decode(a.value.as_slice()) else {
                    continue;
                };
                for e in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
                    let ip = e
                        .host_identifier
                        .as_ref()
                        .and_then(|h| match h {
                            envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep) => ep.address.as_ref(),
                            _ => None,
                        })
                        .and_then(|a| a.address.as_ref())
                        .and_then(|a| match a {
                            envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s) => Some(s.address.clone()),
                            _ => None,
                        });
                    if let Some(seq) = ip.as_deref().and_then(seq_of)
                        && mine.insert(seq)
                    {
                        new.push(seq);
                    }
                }
            }
            if !new.is_empty()
                && let Ok(mut s) = seen.lock()
            {
                for seq in new {
                    let e = s.entry(seq).or_insert((0, 0));
                    e.0 += 1;
                    e.1 = e.1.max(at);
                }
            }
        }
    }
}
