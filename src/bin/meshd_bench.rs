//! meshd's benchmark (numbers go to docs/PERFORMANCE.md).
//!
//! B1: translate a synthetic mesh of N services for one proxy, and one VirtualService
//!     change (snapshot rebuild, change detection, regenerated routes).
//! B2: M simulated proxies (Delta ADS clients) on loopback against an in-process xDS
//!     server; one VirtualService change; time until each has the new routes and ACKed
//!     them (p50/p99); peak RSS of the process.
//!
//! B5 (`--b5 M`): B2 with M proxies connecting over TLS with client certificates, as to
//!     15012, all at once to a fresh server (src/bin/bench/b5.rs).
//! B3, B6: src/bin/bench/b3.rs, b6.rs.
//! The soak (`--soak SECS`) and hostile clients (`--hostile N`): src/bin/bench/soak.rs,
//!     hostile.rs, against a real `meshd serve` process.
//!
//! Side by side (`--vs-istiod`, src/bin/bench/vs_istiod.rs): the same mesh in a real API
//!     server, served by istiod and by meshd in turn to the same simulated proxies (and
//!     `--envoys E` real Envoys): memory per proxy, convergence of one change, CPU seconds.
//!
//! `meshd-bench --services 1000 --services 10000 --clients 1000` (use a release build).
//! `meshd-bench --vs-istiod --services 1000 --clients 300 --envoys 20`.

#[path = "bench/ads_client.rs"]
mod ads_client;
#[path = "bench/b3.rs"]
mod b3;
#[path = "bench/b5.rs"]
mod b5;
#[path = "bench/b6.rs"]
mod b6;
#[path = "bench/envoys.rs"]
mod envoys;
#[path = "bench/hostile.rs"]
mod hostile;
#[path = "bench/http.rs"]
mod http;
#[path = "bench/plot.rs"]
mod plot;
#[path = "bench/soak.rs"]
mod soak;
#[path = "bench/vs_istiod.rs"]
mod vs_istiod;

use std::collections::{BTreeMap, BTreeSet};

// Translation allocates many small objects; mimalloc handles that far better than
// glibc's allocator (measured in docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: Counting = Counting(mimalloc::MiMalloc);

/// mimalloc, counting the bytes allocated and not yet freed: B2 reports the live heap
/// beside RSS, which tells data meshd holds from memory the allocator keeps.
struct Counting(mimalloc::MiMalloc);

static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

/// Live allocations by size class (a power of two: class k holds sizes in
/// (2^(k-1), 2^k]): B2 prints what a connected proxy adds per class, which tells a
/// transport's fixed buffers from meshd's own per-stream state.
static BY_CLASS: [std::sync::atomic::AtomicIsize; 40] =
    [const { std::sync::atomic::AtomicIsize::new(0) }; 40];

fn count(size: usize, sign: isize) {
    let class = (size.max(1).next_power_of_two().trailing_zeros() as usize).min(39);
    BY_CLASS[class].fetch_add(sign, std::sync::atomic::Ordering::Relaxed);
}

/// Live allocations per size class.
fn by_class() -> [isize; 40] {
    std::array::from_fn(|k| BY_CLASS[k].load(std::sync::atomic::Ordering::Relaxed))
}

// SAFETY: every call is forwarded to mimalloc unchanged; only a counter is added.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, std::sync::atomic::Ordering::Relaxed);
        count(l.size(), 1);
        // SAFETY: forwarded with the caller's layout.
        unsafe { self.0.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size() as isize, std::sync::atomic::Ordering::Relaxed);
        count(l.size(), -1);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { self.0.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, std::sync::atomic::Ordering::Relaxed);
        count(l.size(), 1);
        // SAFETY: forwarded with the caller's layout.
        unsafe { self.0.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(
            new as isize - l.size() as isize,
            std::sync::atomic::Ordering::Relaxed,
        );
        count(l.size(), -1);
        count(new, 1);
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { self.0.realloc(p, l, new) }
    }
}

/// Bytes allocated and not freed, in MB.
fn live_mb() -> f64 {
    LIVE.load(std::sync::atomic::Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::ClusterDiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use meshd::envoy::{pb, type_url};
use meshd::model::diagnostic::Origin;
use meshd::model::object::Object;
use meshd::model::proxy::Proxy;
use meshd::model::snapshot::{ConfigSet, Snapshot};
use meshd::sources::yaml::FieldLines;
use meshd::translate;
use meshd::xds::{AdsService, XdsState, push};
use prost::Message;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

struct Args {
    runs: usize,
    services: Vec<usize>,
    clients: usize,
    b2_services: usize,
    vs_istiod: bool,
    envoys: usize,
    classes: usize,
    order: Vec<vs_istiod::Kind>,
    timeout: u64,
    keep: bool,
    clients_given: bool,
    /// Skip B1 (`--no-b1`): B2's memory is then not mixed with B1's allocations.
    no_b1: bool,
    /// B6's number of pods injected and CSRs signed (`--b6 N`; 0 skips it).
    b6: usize,
    /// B2's clients see only this many services through a Sidecar (`--sidecar K`).
    sidecar: usize,
    /// B3: pod events per second (`--b3 RATE`; 0 skips it), for `--b3-secs` seconds,
    /// to `--b3-clients` proxies.
    b3: usize,
    b3_secs: usize,
    b3_clients: usize,
    /// B3 as in Kubernetes (`--b3-slices`): every Service has an EndpointSlice, and each
    /// pod event also rewrites its Service's slice.
    b3_slices: bool,
    /// B5: this many proxies over TLS (`--b5 M`; 0 skips it).
    b5: usize,
    /// Where the run's SVG plot goes (`--svg PATH`).
    svg: std::path::PathBuf,
    /// The soak: this many seconds (`--soak SECS`; 0 skips it) with `--soak-proxies M`.
    soak: u64,
    soak_proxies: usize,
    /// Hostile clients: this many of each kind (`--hostile N`; 0 skips it) against
    /// `--hostile-services S` services for `--hostile-secs SECS`.
    hostile: usize,
    hostile_services: usize,
    hostile_secs: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        runs: 5,
        services: vec![],
        clients: 1000,
        b2_services: 1000,
        vs_istiod: false,
        envoys: 0,
        classes: 50,
        order: vec![vs_istiod::Kind::Istiod, vs_istiod::Kind::Meshd],
        timeout: 120,
        keep: false,
        clients_given: false,
        no_b1: false,
        b6: 2000,
        sidecar: 0,
        b3: 1000,
        b3_secs: 5,
        b3_clients: 100,
        b3_slices: false,
        b5: 0,
        soak: 0,
        soak_proxies: 50,
        hostile: 0,
        hostile_services: 1000,
        hostile_secs: 30,
        svg: std::path::PathBuf::from(format!(
            "target/meshd-bench/{}.svg",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        )),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--services" => a.services.push(num("--services")),
            "--clients" => {
                a.clients = num("--clients");
                a.clients_given = true;
            }
            "--vs-istiod" => a.vs_istiod = true,
            "--envoys" => a.envoys = num("--envoys"),
            "--classes" => a.classes = num("--classes"),
            "--timeout" => a.timeout = num("--timeout") as u64,
            "--keep" => a.keep = true,
            "--no-b1" => a.no_b1 = true,
            "--b6" => a.b6 = num("--b6"),
            "--sidecar" => a.sidecar = num("--sidecar"),
            "--b3" => a.b3 = num("--b3"),
            "--b3-secs" => a.b3_secs = num("--b3-secs"),
            "--b3-clients" => a.b3_clients = num("--b3-clients"),
            "--b3-slices" => a.b3_slices = true,
            "--b5" => a.b5 = num("--b5"),
            "--svg" => a.svg = it.next().unwrap_or_default().into(),
            "--soak" => a.soak = num("--soak") as u64,
            "--soak-proxies" => a.soak_proxies = num("--soak-proxies"),
            "--hostile" => a.hostile = num("--hostile"),
            "--hostile-services" => a.hostile_services = num("--hostile-services"),
            "--hostile-secs" => a.hostile_secs = num("--hostile-secs") as u64,
            "--order" => {
                let v = it.next().unwrap_or_default();
                a.order = v
                    .split(',')
                    .map(|k| {
                        vs_istiod::Kind::parse(k)
                            .unwrap_or_else(|| panic!("--order takes istiod,meshd (or one)"))
                    })
                    .collect();
            }
            "--b2-services" => a.b2_services = num("--b2-services"),
            "--runs" => a.runs = num("--runs"),
            other => panic!("unknown argument {other}; see the source for usage"),
        }
    }
    if a.services.is_empty() {
        a.services = if a.vs_istiod {
            vec![1000]
        } else {
            vec![1000, 10000]
        };
    }
    if a.b2_services > *a.services.iter().max().unwrap_or(&1000) {
        a.b2_services = *a.services.iter().max().unwrap_or(&1000);
    }
    a
}

fn add(set: &mut ConfigSet, v: Value) {
    let (objs, diags) = Object::from_value(v, FieldLines::default(), Origin::default(), "bench");
    assert!(diags.is_empty(), "{diags:?}");
    for o in objs {
        set.objects.insert(o.key.clone(), o);
    }
}

/// A synthetic mesh: N services with two versions each, a DestinationRule with two
/// subsets and a realistic traffic policy per service, a VirtualService splitting
/// traffic for every tenth. `variant` changes one VirtualService.
fn mesh(n: usize, variant: u32) -> ConfigSet {
    mesh_scoped(n, variant, 0)
}

/// The synthetic mesh; with `sidecar` > 0, a Sidecar in the clients' namespace limits
/// what they see to the first `sidecar` services (B2's Sidecar-scoped proxies).
fn mesh_scoped(n: usize, variant: u32, sidecar: usize) -> ConfigSet {
    let mut set = ConfigSet::default();
    if sidecar > 0 {
        let hosts: Vec<String> = (0..sidecar.min(n))
            .map(|i| format!("./svc-{i}.bench.svc.cluster.local"))
            .collect();
        add(
            &mut set,
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": "default", "namespace": "bench"},
            "spec": {"egress": [{"hosts": hosts}]}}),
        );
    }
    for i in 0..n {
        let name = format!("svc-{i}");
        add(
            &mut set,
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"selector": {"app": name}, "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                     "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}),
        );
        for v in 1..=2 {
            add(
                &mut set,
                pod(i, v, &format!("10.{}.{}.{}", v, i / 250, i % 250 + 1)),
            );
        }
        add(
            &mut set,
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"host": name, "trafficPolicy": {
                "connectionPool": {"tcp": {"maxConnections": 100, "connectTimeout": "3s"},
                                   "http": {"http1MaxPendingRequests": 64, "maxRequestsPerConnection": 10}},
                "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"}},
              "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}}),
        );
        if i % 10 == 0 {
            let w = if i == 0 { 90 - variant as i64 } else { 90 };
            add(
                &mut set,
                json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": name, "namespace": "bench"},
                "spec": {"hosts": [name], "http": [
                    {"match": [{"headers": {"x-canary": {"exact": "1"}}}], "route": [{"destination": {"host": name, "subset": "v2"}}]},
                    {"route": [{"destination": {"host": name, "subset": "v1"}, "weight": w},
                               {"destination": {"host": name, "subset": "v2"}, "weight": 100 - w}]}]}}),
            );
        }
    }
    set
}

/// Service `svc-i`'s pod of version `v`, at `ip`.
fn pod(i: usize, v: u32, ip: &str) -> Value {
    let name = format!("svc-{i}");
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{name}-v{v}"), "namespace": "bench",
                     "labels": {"app": name, "version": format!("v{v}")}},
        "spec": {"serviceAccountName": name, "containers": [{"name": "app", "image": "x"}]},
        "status": {"podIP": ip}})
}

fn proxy(i: usize, classes: usize) -> Proxy {
    let meta: BTreeMap<String, Value> = serde_json::from_value(json!({
        "NAMESPACE": "bench",
        "LABELS": {"app": format!("client-{}", i % classes.max(1))},
        "INTERCEPTION_MODE": "REDIRECT",
    }))
    .unwrap_or_default();
    Proxy::from_node(
        &format!(
            "sidecar~10.250.{}.{}~client-{i}.bench~bench.svc.cluster.local",
            i / 250,
            i % 250 + 1
        ),
        meta,
    )
    .expect("valid node")
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

fn status_mb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs `f` `runs` times; (median, min) of the durations. This machine's timing is noisy
/// (a shared VM), so single runs are not reported.
fn timed<T>(runs: usize, mut f: impl FnMut() -> T) -> (T, Duration, Duration) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let v = f();
        times.push(t.elapsed());
        last = Some(v);
    }
    times.sort();
    let v = last.expect("ran at least once");
    (v, times[times.len() / 2], times[0])
}

/// One bench's figures as a JSON line (prefixed `JSON `), beside the text line: for
/// scripts comparing runs.
fn report(bench: &str, mut fields: Value) {
    if let Some(m) = fields.as_object_mut() {
        m.insert("bench".into(), json!(bench));
    }
    plot::record(&fields);
    println!("JSON {fields}");
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn both(t: (Duration, Duration)) -> String {
    format!("{} (min {})", ms(t.0), ms(t.1))
}

fn b1(n: usize, runs: usize) {
    let set = mesh(n, 0);
    let (snap, b_med, b_min) = timed(runs, || {
        Snapshot::build(&set, None, "cluster.local", "istio-system")
    });
    assert_eq!(snap.error_count(), 0, "{:?}", snap.diagnostics.first());
    let p = proxy(0, 1);
    let (res, f_med, f_min) = timed(runs, || translate::generate(&snap, &p));
    let ctx = translate::ProxyContext::new(&snap, &p);
    let (clusters, c_med, c_min) = timed(runs, || translate::cluster::clusters(&ctx));
    // Built and encoded as the server does: each cluster moved into the `Any` a
    // response carries.
    let (cds_bytes, be_med, be_min) = timed(runs, || {
        translate::cluster::clusters(&ctx)
            .into_iter()
            .map(|c| pb::cluster_any(*c).len())
            .sum::<usize>()
    });
    let (e_med, e_min) = (be_med.saturating_sub(c_med), be_min.saturating_sub(c_min));
    // The limit B1 is measured against: prost encoding the very same cluster structs
    // (what any translation has to do at least once), in the same run.
    let (prost_bytes, l_med, l_min) = timed(runs, || {
        clusters
            .iter()
            .map(|c| c.encode_to_vec().len())
            .sum::<usize>()
    });

    // One VirtualService change, applied to the set as the sources do: the one object
    // replaced in a copy that shares every other kind with the first.
    let changed = {
        let mut c = set.clone();
        let edited = mesh(n, 5);
        let vs = edited
            .objects
            .of_kind(meshd::model::Kind::VirtualService)
            .find(|o| o.key.name == "svc-0")
            .expect("VirtualService svc-0");
        c.objects.insert(vs.key.clone(), vs.clone());
        c
    };
    let (next, r_med, r_min) = timed(runs, || {
        Snapshot::build(&changed, Some(&snap), "cluster.local", "istio-system")
    });
    let stages = |s: &Snapshot| {
        s.build_stages
            .iter()
            .map(|(n, d)| format!("{n} {}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("B1 services={n}: first build's stages: {}", stages(&snap));
    println!("B1 services={n}: changed build's stages: {}", stages(&next));
    let (changes, d_med, d_min) = timed(runs, || next.changes_since(&snap));
    let ctx2 = translate::ProxyContext::new(&next, &p);
    // The configuration translated whole and encoded (what the server did before it
    // kept virtual hosts, and still does for a class it has not seen).
    let ((rc_vhosts, whole), rt_med, rt_min) = timed(runs, || {
        translate::route_config(&ctx2, "8080")
            .map(|rc| (rc.virtual_hosts.len(), pb::resource(&rc).encode_to_vec()))
            .expect("route config")
    });
    let rc_bytes = whole.len();
    // What the server does now: the virtual hosts kept from the first snapshot, the
    // change's host dropped, the configuration assembled from the rest.
    let mut kept_times = Vec::new();
    let mut kept_any = meshd::envoy::encoded::Encoded::default();
    for _ in 0..runs.max(1) {
        use meshd::model::snapshot::Changes;
        use meshd::translate::route::pieces::VhostStore;
        let store = VhostStore::default();
        store.advance(0, snap.generation, &Changes::default());
        let _ = translate::route_config_any(&ctx, "8080", &store, 1);
        store.advance(snap.generation, next.generation, &changes);
        let patched = store.patched();
        let t = Instant::now();
        let any = translate::route_config_any(&ctx2, "8080", &store, 1).expect("route config");
        kept_times.push(t.elapsed());
        // The edit names one host: the last layout is patched, not planned again.
        assert_eq!(
            store.patched(),
            patched + 1,
            "assembly not patched in place"
        );
        kept_any = any;
    }
    // The same bytes either way (tests/simulation.rs holds this for istiod's cases).
    assert_eq!(
        whole,
        kept_any.to_vec(),
        "assembled route configuration differs"
    );
    let kept_bytes = kept_any.len();
    kept_times.sort();
    let (k_med, k_min) = (kept_times[kept_times.len() / 2], kept_times[0]);
    println!(
        "B1 services={n}: one VirtualService change: snapshot rebuild {}, change detection {} \
         ({} route host changed); route configuration 8080 ({rc_vhosts} virtual hosts, \
         {rc_bytes} bytes) translated and encoded whole {}, assembled from kept virtual hosts \
         {} ({kept_bytes} bytes)",
        both((r_med, r_min)),
        both((d_med, d_min)),
        changes.routes.len(),
        both((rt_med, rt_min)),
        both((k_med, k_min)),
    );
    println!(
        "B1 services={n}: snapshot build {}; full translation for one proxy {} \
         ({} clusters, {} listeners, {} route configs, {} load assignments); \
         clusters {}; their canonical encoding {} ({} bytes, {} bytes/cluster)",
        both((b_med, b_min)),
        both((f_med, f_min)),
        res.clusters.len(),
        res.listeners.len(),
        res.routes.len(),
        res.endpoints.len(),
        both((c_med, c_min)),
        both((e_med, e_min)),
        cds_bytes,
        cds_bytes / clusters.len().max(1)
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "B1 services={n}: the limit, prost-encoding the same {} clusters: {} ({prost_bytes} \
         bytes); clusters built and encoded for sending = {:.1}x the limit (medians; {:.1}x \
         by minimums; target 3x)",
        clusters.len(),
        both((l_med, l_min)),
        ratio(be_med, l_med),
        ratio(be_min, l_min),
    );
    report(
        "B1",
        json!({"services": n, "runs": runs,
               "snapshot_build_ms": millis(b_med), "translation_ms": millis(f_med),
               "clusters_ms": millis(c_med), "encoding_ms": millis(e_med),
               "prost_limit_ms": millis(l_med), "ratio_to_limit": ratio(be_med, l_med),
               "change_rebuild_ms": millis(r_med), "change_detection_ms": millis(d_med),
               "change_route_config_ms": millis(rt_med),
               "change_route_config_kept_ms": millis(k_med),
               "change_total_ms": millis(r_med + d_med + k_med), "target_ratio": 3.0}),
    );
}

/// A Delta ADS stream for `p`, connected like Envoy does: retried with backoff until it
/// is up (a burst of a thousand connects can be refused or reset while the server
/// accepts). CDS is subscribed first (with the node), then `also`.
async fn connect(
    dial: &b5::Dial,
    p: &Proxy,
    also: &[&str],
) -> (
    mpsc::Sender<DeltaDiscoveryRequest>,
    tonic::Streaming<envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse>,
) {
    let node = Node {
        // Its id and metadata as an Envoy would send them (no service cluster).
        cluster: String::new(),
        ..meshd::translate::output::node(p)
    };
    loop {
        let Some(c) = dial
            .channel()
            .await
            .map(AggregatedDiscoveryServiceClient::new)
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut c = c.max_decoding_message_size(usize::MAX);
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        let _ = tx
            .send(DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: type_url::CLUSTER.into(),
                ..Default::default()
            })
            .await;
        for t in also {
            let _ = tx
                .send(DeltaDiscoveryRequest {
                    type_url: t.to_string(),
                    ..Default::default()
                })
                .await;
        }
        match c
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(s) => return (tx, s.into_inner()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// What Envoy does with a Delta response: ACK it, then subscribe to the endpoints of new
/// EDS clusters (a CDS response) or the route configurations new listeners name (LDS).
/// `eds` and `rds` are the names already subscribed.
async fn follow(
    tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    resp: &envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
    eds: &mut BTreeSet<String>,
    rds: &mut BTreeSet<String>,
) {
    let _ = tx
        .send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
    let decoded = || resp.resources.iter().filter_map(|r| r.resource.as_ref());
    let (url, new): (&str, Vec<String>) = if resp.type_url == type_url::CLUSTER {
        let new = decoded()
            .filter_map(|a| Cluster::decode(a.value.as_slice()).ok())
            .filter(|c| {
                matches!(
                    c.cluster_discovery_type,
                    Some(ClusterDiscoveryType::Type(3))
                )
            })
            .map(|c| c.name)
            .filter(|n| eds.insert(n.clone()))
            .collect();
        (type_url::ENDPOINT, new)
    } else if resp.type_url == type_url::LISTENER {
        let listeners: Vec<Listener> = decoded()
            .filter_map(|a| Listener::decode(a.value.as_slice()).ok())
            .collect();
        let new = translate::listener::route_names(&listeners)
            .into_iter()
            .filter(|n| rds.insert(n.clone()))
            .collect();
        (type_url::ROUTE, new)
    } else {
        return;
    };
    if !new.is_empty() {
        let _ = tx
            .send(DeltaDiscoveryRequest {
                type_url: url.into(),
                resource_names_subscribe: new,
                ..Default::default()
            })
            .await;
    }
}

/// A multi-threaded runtime for one bench.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A B2 client's view of the change: whether it is armed (the next route configuration
/// is the change's), where to report when that arrived, and when to disconnect.
struct Change {
    armed: watch::Receiver<bool>,
    /// One outcome per client: when the change's route configuration arrived, or None
    /// when the stream ended first.
    outcome: mpsc::Sender<Option<Instant>>,
    done: watch::Receiver<bool>,
}

async fn client(
    dial: b5::Dial,
    i: usize,
    classes: usize,
    start: Instant,
    synced_tx: mpsc::Sender<Duration>,
    mut change: Change,
) {
    let (tx, mut stream) = connect(&dial, &proxy(i, classes), &[type_url::LISTENER]).await;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut eds: BTreeSet<String> = BTreeSet::new();
    let mut rds: BTreeSet<String> = BTreeSet::new();
    let mut synced = false;
    let mut converged = false;
    // A proxy stays connected once it has the change, answering as Envoy does, until
    // every proxy has it: streams closing while others still converge would be work the
    // server does not do after a real change. (Each response is dropped once answered:
    // a thousand kept at once, each with its copy of the resources, made the client
    // process fault in fresh memory for each.)
    loop {
        let resp = tokio::select! {
            r = stream.message() => match r {
                Ok(Some(r)) => r,
                _ => break,
            },
            _ = change.done.wait_for(|d| *d) => return,
        };
        follow(&tx, &resp, &mut eds, &mut rds).await;
        if converged {
            continue;
        }
        if resp.type_url == type_url::ROUTE && *change.armed.borrow() {
            converged = true;
            let _ = change.outcome.send(Some(Instant::now())).await;
            continue;
        }
        seen.insert(resp.type_url.clone());
        if !synced && seen.len() >= 4 {
            synced = true;
            let _ = synced_tx.send(start.elapsed()).await;
        }
    }
    if !converged {
        let _ = change.outcome.send(None).await;
    }
    let _ = change.done.wait_for(|d| *d).await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// B2's proxies run in a child process, so that the server's peak RSS is its own.
async fn b2(n: usize, m: usize, classes: usize, sidecar: usize, tls: bool) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let metrics = Arc::new(meshd::metrics::Metrics::new());
    let (_shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = Arc::new(XdsState::new(metrics, shutdown_rx));
    let base = Arc::new(Snapshot::build(
        &mesh_scoped(n, 0, sidecar),
        None,
        "cluster.local",
        "istio-system",
    ));
    push::publish(&state, base.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let mut tls_dir = None;
    if tls {
        // 15012's stack: TLS handshakes in their own tasks, identities from client
        // certificates, each checked against the proxy's namespace.
        let (dir, config, auth) = b5::server();
        let incoming = meshd::ca::server::incoming(listener, config, "cluster.local".into());
        let svc = AdsService::secure(state.clone(), auth).max_request_bytes(64 << 20);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming),
        );
        tls_dir = Some(dir);
    } else {
        let svc = AdsService::new(state.clone()).max_request_bytes(64 << 20);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
    }
    // The mesh is loaded; what the proxies add is measured from here.
    let rss_base = rss_mb();
    let live_base = live_mb();
    let classes_base = by_class();
    let mut child_args = vec![
        "--b2-client".to_string(),
        addr.clone(),
        "--clients".into(),
        m.to_string(),
        "--classes".into(),
        classes.to_string(),
    ];
    if let Some(dir) = &tls_dir {
        child_args.extend(["--tls".into(), dir.display().to_string()]);
    }
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(&child_args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn clients");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // The simulated proxies share the machine with meshd (and usually need more CPU
    // than it does): meshd's own CPU time says what the sync cost the server.
    let tck = vs_istiod::clk_tck();
    let (me, child_pid) = (std::process::id(), child.id().unwrap_or(0));
    let (cpu0, child_cpu0) = (
        vs_istiod::cpu_secs(me, tck),
        vs_istiod::cpu_secs(child_pid, tck),
    );
    let synced = lines.next_line().await.ok().flatten().unwrap_or_default();
    let server_cpu = vs_istiod::cpu_secs(me, tck) - cpu0;
    let clients_cpu = vs_istiod::cpu_secs(child_pid, tck) - child_cpu0;
    let rss_synced = rss_mb();
    let connected = state.connections().len();
    let per_proxy_kib = (rss_synced - rss_base) * 1024.0 / m.max(1) as f64;
    let live_synced = live_mb();
    let live_per_proxy_kib = (live_synced - live_base) * 1024.0 / m.max(1) as f64;
    let classes_synced = by_class();
    // Allocations a proxy added, by size class, with the bytes they hold at most.
    let per_class: Vec<String> = (0..classes_synced.len())
        .filter_map(|k| {
            let per = (classes_synced[k] - classes_base[k]) as f64 / m.max(1) as f64;
            (per.abs() >= 0.05).then(|| {
                let size = 1u64 << k;
                let size = if size >= 1024 {
                    format!("{} KiB", size / 1024)
                } else {
                    format!("{size} B")
                };
                format!(
                    "≤{size}: {per:.1} ({:.1} KiB)",
                    per * (1u64 << k) as f64 / 1024.0
                )
            })
        })
        .collect();
    // Let the ACKs of the initial sync land before changing anything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The same figures once the sync's ACKs have landed and the allocator has had time
    // to return the pages the sync's transient buffers used (mimalloc purges freed
    // pages after a delay): what a connected, idle proxy costs.
    let rss_settled_kib = (rss_mb() - rss_base) * 1024.0 / m.max(1) as f64;
    let live_settled_kib = (live_mb() - live_base) * 1024.0 / m.max(1) as f64;
    let next = Arc::new(Snapshot::build(
        &mesh_scoped(n, 5, sidecar),
        Some(&base),
        "cluster.local",
        "istio-system",
    ));
    // For profiling the change alone: with MESHD_BENCH_HOLD=PATH the bench says its pid
    // and waits here until PATH exists (attach `perf record -p PID`, then create it).
    if let Ok(hold) = std::env::var("MESHD_BENCH_HOLD") {
        eprintln!("HOLD {}", std::process::id());
        while !std::path::Path::new(&hold).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The proxies count the next route configuration as the change's from here: armed
    // before the publish, so that none can get it first.
    stdin.write_all(b"arm\n").await.expect("arm clients");
    stdin.flush().await.expect("flush");
    let _armed = lines.next_line().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    stdin
        .write_all(format!("change {now}\n").as_bytes())
        .await
        .expect("tell clients");
    stdin.flush().await.expect("flush");
    // The publish itself: change detection and the push decision for every proxy.
    let (change_cpu0, change_child_cpu0) = (
        vs_istiod::cpu_secs(me, tck),
        vs_istiod::cpu_secs(child_pid, tck),
    );
    let published = Instant::now();
    push::publish(&state, next);
    let publish_ms = published.elapsed().as_secs_f64() * 1e3;
    let converged = lines.next_line().await.ok().flatten().unwrap_or_default();
    // What the change cost each side, up to the last proxy's convergence.
    let change_server_cpu = vs_istiod::cpu_secs(me, tck) - change_cpu0;
    let change_clients_cpu = vs_istiod::cpu_secs(child_pid, tck) - change_child_cpu0;
    let _ = child.wait().await;
    let scope = if sidecar > 0 {
        format!(", Sidecar-scoped to {sidecar} services")
    } else {
        String::new()
    };
    let bench = if tls { "B5" } else { "B2" };
    if let Some(dir) = &tls_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    // The child's second line: "… converged: p50 X ms, p99 Y ms, …".
    let change_p99_ms: f64 = converged
        .split_once("converged:")
        .and_then(|(_, r)| r.split_once("p99 "))
        .and_then(|(_, r)| r.split_once(" ms"))
        .and_then(|(v, _)| v.parse().ok())
        .unwrap_or(f64::NAN);
    // The child's first line: "initial sync of all clients N ms".
    let sync_ms: f64 = synced
        .trim_start_matches("initial sync of all clients ")
        .trim_end_matches(" ms")
        .parse()
        .unwrap_or(f64::NAN);
    println!(
        "{bench} services={n} clients={m}{scope} ({classes} label sets, {connected} connected): {synced} \
         (CPU meanwhile: meshd {server_cpu:.1} s, the simulated proxies {clients_cpu:.1} s); {converged} \
         (of which the publish, deciding every proxy's push, {publish_ms:.1} ms; CPU meanwhile: \
         meshd {change_server_cpu:.2} s, the simulated proxies {change_clients_cpu:.2} s); \
         meshd peak RSS {:.0} MB (RSS before proxies {:.0} MB, after the initial sync {:.0} MB: \
         {:.0} KiB per proxy; live heap {:.0} MB before, {:.0} MB after: {:.0} KiB per proxy; \
         half a second later {rss_settled_kib:.0} KiB RSS and {live_settled_kib:.0} KiB live per proxy); \
         {} OS threads",
        peak_rss_mb(),
        rss_base,
        rss_synced,
        per_proxy_kib,
        live_base,
        live_synced,
        live_per_proxy_kib,
        std::fs::read_dir("/proc/self/task")
            .map(|d| d.count())
            .unwrap_or(0),
    );
    println!(
        "{bench} live allocations each proxy added, by size (count, bytes at most): {}",
        per_class.join(", ")
    );
    report(
        bench,
        json!({"services": n, "clients": m, "tls": tls, "sync_ms": sync_ms,
               "change_p99_ms": change_p99_ms, "publish_ms": publish_ms,
               "sync_server_cpu_s": server_cpu, "sync_clients_cpu_s": clients_cpu,
               "change_server_cpu_s": change_server_cpu,
               "change_clients_cpu_s": change_clients_cpu,
               "sidecar_services": sidecar, "label_sets": classes,
               "connected": connected, "rss_per_proxy_kib": per_proxy_kib,
               "live_heap_per_proxy_kib": live_per_proxy_kib, "peak_rss_mb": peak_rss_mb(),
               "rss_per_proxy_settled_kib": rss_settled_kib,
               "live_heap_per_proxy_settled_kib": live_settled_kib,
               "sync": synced, "change": converged}),
    );
}

/// The client side of B2 (a child process): prints one line when every client has its
/// configuration; then, on `arm` on stdin, counts the next route configuration each
/// client gets as the change's and says `armed`; then reads `change NANOS` (when the
/// change was published) and prints one line when every client has the changed routes.
/// Arming first means no client can get the change before it knows to count it.
async fn b2_clients(dial: b5::Dial, m: usize, classes: usize) {
    use tokio::io::AsyncBufReadExt;
    let (armed_tx, armed_rx) = watch::channel(false);
    let (synced_tx, mut synced_rx) = mpsc::channel::<Duration>(m.max(1));
    let (outcome_tx, mut outcome_rx) = mpsc::channel::<Option<Instant>>(m.max(1));
    let (done_tx, done_rx) = watch::channel(false);
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..m {
        handles.push(tokio::spawn(client(
            dial.clone(),
            i,
            classes,
            start,
            synced_tx.clone(),
            Change {
                armed: armed_rx.clone(),
                outcome: outcome_tx.clone(),
                done: done_rx.clone(),
            },
        )));
    }
    drop(outcome_tx);
    let mut synced = Vec::with_capacity(m);
    for _ in 0..m {
        match tokio::time::timeout(Duration::from_secs(900), synced_rx.recv()).await {
            Ok(Some(took)) => synced.push(took),
            _ => panic!("clients did not sync within 900s"),
        }
    }
    println!("initial sync of all clients {}", ms(start.elapsed()));
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let _arm = stdin.next_line().await;
    let _ = armed_tx.send(true);
    println!("armed");
    let line = stdin.next_line().await.ok().flatten().unwrap_or_default();
    let sent: u128 = line
        .trim_start_matches("change ")
        .trim()
        .parse()
        .unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let changed_at = Instant::now() - Duration::from_nanos(now.saturating_sub(sent) as u64);
    // One outcome per client: the change arrived, or its stream ended first (not
    // converged). The timeout only guards against a client that neither converges nor
    // ends.
    let mut converged = Vec::with_capacity(m);
    for _ in 0..m {
        match tokio::time::timeout(Duration::from_secs(120), outcome_rx.recv()).await {
            Ok(Some(Some(at))) => converged.push(at.saturating_duration_since(changed_at)),
            Ok(Some(None)) => {}
            _ => break,
        }
    }
    converged.sort();
    synced.sort();
    println!(
        "per-client sync p50 {}, p99 {}; after one VirtualService change {}/{m} converged: p50 {}, p99 {}, max {}",
        ms(percentile(&synced, 0.5)),
        ms(percentile(&synced, 0.99)),
        converged.len(),
        ms(percentile(&converged, 0.5)),
        ms(percentile(&converged, 0.99)),
        ms(converged.last().copied().unwrap_or_default()),
    );
    // Only now, with the line out (the server stops its clock on it), do the proxies
    // disconnect.
    let _ = done_tx.send(true);
    for h in handles {
        let _ = h.await;
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--vs-client") {
        let get = |flag: &str, default: usize| {
            argv.iter()
                .position(|a| a == flag)
                .and_then(|i| argv.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let rt = runtime();
        rt.block_on(ads_client::run(
            argv.get(2).cloned().unwrap_or_default(),
            get("--clients", 100),
            get("--classes", 50),
            get("--weight", 85) as u32,
            Duration::from_secs(get("--sync-timeout", 900) as u64),
            Duration::from_secs(get("--timeout", 120) as u64),
        ));
        return;
    }
    if argv.get(1).map(String::as_str) == Some("--b3-client") {
        let m = argv
            .iter()
            .position(|a| a == "--clients")
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        let rt = runtime();
        rt.block_on(b3::clients(argv.get(2).cloned().unwrap_or_default(), m));
        return;
    }
    if argv.get(1).map(String::as_str) == Some("--b2-client") {
        let addr = argv.get(2).cloned().unwrap_or_default();
        let get = |flag: &str, default: usize| {
            argv.iter()
                .position(|a| a == flag)
                .and_then(|i| argv.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let rt = runtime();
        let tls = argv
            .iter()
            .position(|a| a == "--tls")
            .and_then(|i| argv.get(i + 1))
            .map(std::path::PathBuf::from);
        rt.block_on(b2_clients(
            b5::Dial::new(&addr, tls.as_deref()),
            get("--clients", 1000),
            get("--classes", 50),
        ));
        return;
    }
    let args = parse_args();
    if args.vs_istiod {
        let opts = vs_istiod::Opts {
            services: args.services.last().copied().unwrap_or(1000),
            clients: if args.clients_given {
                args.clients
            } else {
                200
            },
            envoys: args.envoys,
            classes: args.classes,
            order: args.order,
            timeout: Duration::from_secs(args.timeout),
            sync_timeout: Duration::from_secs(900),
            keep: args.keep,
        };
        if let Err(e) = vs_istiod::main(opts) {
            eprintln!("meshd-bench --vs-istiod: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    println!(
        "meshd-bench ({} build), {} CPUs",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // B2, or B5 over TLS, with `m` proxies.
    let b2_with = |m: usize, tls: bool| {
        runtime().block_on(b2(args.b2_services, m, args.classes, args.sidecar, tls));
    };
    // B2 first: what a proxy adds to the process's memory (B4) is measured from a
    // process that has not yet freed anything. After B1 at 10,000 services, the pages
    // B1 freed took in the proxies' state and made it look a fifth smaller.
    if args.clients > 0 {
        b2_with(args.clients, false);
    }
    for n in &args.services {
        if !args.no_b1 {
            b1(*n, args.runs);
        }
    }
    if args.b6 > 0 {
        println!("{}", b6::run(args.b6));
    }
    if args.b3 > 0 {
        let rt = runtime();
        println!(
            "{}",
            rt.block_on(b3::run(
                args.b2_services,
                args.b3_clients,
                args.b3,
                args.b3_secs,
                args.b3_slices
            ))
        );
    }
    if args.b5 > 0 {
        b2_with(args.b5, true);
    }
    let mut soak_failed = false;
    if args.soak > 0 {
        let rt = runtime();
        let (text, passed) = rt.block_on(soak::run(args.soak, args.soak_proxies));
        println!("{text}");
        soak_failed = !passed;
    }
    if args.hostile > 0 {
        let rt = runtime();
        let (text, passed) = rt.block_on(hostile::run(
            args.hostile,
            args.hostile_services,
            args.hostile_secs,
        ));
        println!("{text}");
        soak_failed |= !passed;
    }
    plot::write(
        &args.svg,
        &format!(
            "meshd-bench, {} CPUs, {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        ),
    );
    if soak_failed {
        std::process::exit(1);
    }
}
