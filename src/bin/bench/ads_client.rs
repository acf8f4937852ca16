//! The simulated proxies of `meshd-bench --vs-istiod` (a child process, so that neither
//! server's memory or CPU includes them): Delta ADS clients that present themselves as
//! istio-proxy sidecars do (node id and metadata) and subscribe as Envoy does — CDS and
//! LDS (wildcard), then EDS for every EDS cluster and RDS for every route configuration the
//! listeners name — ACKing every response. The same clients go to istiod and to meshd.
//!
//! Protocol with the parent on stdin/stdout, one line each:
//!   child  `SYNCED <json>`   every client has every resource it subscribed to;
//!   parent `arm`             a change is coming: from now on route configurations are
//!                            checked for it;
//!   child  `ARMED`;
//!   parent `t0 <unix nanos>` when the change was written to the API server;
//!   child  `CONVERGED <json>` once every client has it (or the timeout passed).

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::ClusterDiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener, filter::ConfigType};
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, route::Action, route_action::ClusterSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use meshd::envoy::{pb, type_url};
use prost::Message;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// The cluster whose weight the change sets (VirtualService `svc-0`, subset v1).
pub const CHANGED_CLUSTER: &str = "outbound|8080|v1|svc-0.bench.svc.cluster.local";

pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// What istio-proxy's agent puts in the node of a sidecar in namespace `bench`.
pub fn node_metadata(pod: &str, ip: &str, app: &str) -> Value {
    json!({
        "NAMESPACE": "bench",
        "LABELS": {"app": app, "security.istio.io/tlsMode": "istio"},
        "SERVICE_ACCOUNT": app,
        "CLUSTER_ID": "Kubernetes",
        "MESH_ID": "cluster.local",
        "ISTIO_VERSION": "1.31.0",
        "INTERCEPTION_MODE": "REDIRECT",
        "INSTANCE_IPS": ip,
        "WORKLOAD_NAME": app,
        "NAME": pod,
        "POD_PORTS": "[]",
    })
}

pub fn node_id(pod: &str, ip: &str) -> String {
    format!("sidecar~{ip}~{pod}.bench~bench.svc.cluster.local")
}

/// Client `i`'s pod name and address (10.250.0.0/16: no Pod or EndpointSlice has them).
pub fn client_pod(i: usize) -> (String, String) {
    (
        format!("client-{i}"),
        format!("10.250.{}.{}", i / 250, i % 250 + 1),
    )
}

/// Route configuration names an HTTP connection manager in these listeners fetches by RDS
/// (default filter chains included).
fn route_names(listeners: &[Listener]) -> Vec<String> {
    let hcm = |f: &Filter| -> Option<String> {
        let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
            return None;
        };
        if !any.type_url.ends_with("HttpConnectionManager") {
            return None;
        }
        match HttpConnectionManager::decode(any.value.as_slice())
            .ok()?
            .route_specifier
        {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        }
    };
    let mut out = BTreeSet::new();
    for l in listeners {
        for fc in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            out.extend(fc.filters.iter().filter_map(hcm));
        }
    }
    out.into_iter().collect()
}

/// Whether a route configuration sends `weight` to [`CHANGED_CLUSTER`].
pub fn has_weight(rc: &RouteConfiguration, weight: u32) -> bool {
    rc.virtual_hosts.iter().any(|vh| {
        vh.routes.iter().any(|r| match &r.action {
            Some(Action::Route(ra)) => match &ra.cluster_specifier {
                Some(ClusterSpecifier::WeightedClusters(wc)) => wc.clusters.iter().any(|c| {
                    c.name == CHANGED_CLUSTER && c.weight.as_ref().map(|w| w.value) == Some(weight)
                }),
                _ => false,
            },
            _ => false,
        })
    })
}

/// What one client received by its initial sync.
#[derive(Debug, Default, Clone)]
struct Received {
    clusters: BTreeSet<String>,
    cluster_bytes: usize,
    endpoints: usize,
    endpoint_bytes: usize,
    listeners: BTreeSet<String>,
    listener_bytes: usize,
    routes: usize,
    route_bytes: usize,
    virtual_hosts: usize,
}

struct Outcome {
    synced: Option<Duration>,
    /// Unix nanos when the changed route configuration arrived.
    converged_at: Option<u128>,
}

#[allow(clippy::too_many_arguments)]
async fn one_client(
    addr: String,
    i: usize,
    classes: usize,
    start: Instant,
    armed: watch::Receiver<bool>,
    synced_tx: mpsc::Sender<(usize, Received)>,
    converged_tx: mpsc::Sender<u128>,
    new_weight: u32,
) {
    let (pod, ip) = client_pod(i);
    let app = format!("client-{}", i % classes.max(1));
    let node = Node {
        id: node_id(&pod, &ip),
        cluster: format!("{app}.bench"),
        metadata: Some(pb::to_struct(&node_metadata(&pod, &ip, &app))),
        ..Default::default()
    };
    let mut outcome = Outcome {
        synced: None,
        converged_at: None,
    };
    // Reconnect until the initial sync is complete, as Envoy does: a burst of connects can
    // be refused, and istiod turns away new streams beyond its rate limit. Backoff as
    // Envoy's (exponential from 500 ms, jittered), capped at 4 s.
    let mut attempt = 0u32;
    let backoff = |attempt: &mut u32| {
        *attempt += 1;
        let base = 500u64 << (*attempt - 1).min(3);
        // Jitter without a random number generator: spread by client and attempt.
        let jitter = (i as u64 * 7919 + *attempt as u64 * 104_729) % 1000;
        Duration::from_millis(base / 2 + base * jitter / 2000)
    };
    'connect: loop {
        let Ok(c) = AggregatedDiscoveryServiceClient::connect(addr.clone()).await else {
            tokio::time::sleep(backoff(&mut attempt)).await;
            continue;
        };
        let mut c = c.max_decoding_message_size(usize::MAX);
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        for (n, url) in [type_url::CLUSTER, type_url::LISTENER]
            .into_iter()
            .enumerate()
        {
            let _ = tx
                .send(DeltaDiscoveryRequest {
                    node: (n == 0).then(|| node.clone()),
                    type_url: url.into(),
                    ..Default::default()
                })
                .await;
        }
        let mut stream = match c
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(s) => s.into_inner(),
            Err(_) => {
                tokio::time::sleep(backoff(&mut attempt)).await;
                continue;
            }
        };
        let mut got = Received::default();
        let (mut eds, mut eds_pending) = (BTreeSet::new(), BTreeSet::new());
        let (mut rds, mut rds_pending) = (BTreeSet::new(), BTreeSet::new());
        let mut seen = BTreeSet::new();
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                _ if outcome.synced.is_none() => {
                    tokio::time::sleep(backoff(&mut attempt)).await;
                    continue 'connect;
                }
                _ => break 'connect,
            };
            let url = resp.type_url.clone();
            let _ = tx
                .send(DeltaDiscoveryRequest {
                    type_url: url.clone(),
                    response_nonce: resp.nonce.clone(),
                    ..Default::default()
                })
                .await;
            let resources = resp.resources.iter().filter_map(|r| r.resource.as_ref());
            if url == type_url::CLUSTER {
                let mut new = Vec::new();
                for any in resources {
                    let Ok(cl) = Cluster::decode(any.value.as_slice()) else {
                        continue;
                    };
                    if outcome.synced.is_none() && got.clusters.insert(cl.name.clone()) {
                        got.cluster_bytes += any.value.len();
                    }
                    if matches!(
                        cl.cluster_discovery_type,
                        Some(ClusterDiscoveryType::Type(t)) if t == 3
                    ) && eds.insert(cl.name.clone())
                    {
                        eds_pending.insert(cl.name.clone());
                        new.push(cl.name);
                    }
                }
                if !new.is_empty() {
                    let _ = tx
                        .send(DeltaDiscoveryRequest {
                            type_url: type_url::ENDPOINT.into(),
                            resource_names_subscribe: new,
                            ..Default::default()
                        })
                        .await;
                }
            } else if url == type_url::ENDPOINT {
                for r in &resp.resources {
                    eds_pending.remove(&r.name);
                    if let Some(any) = &r.resource
                        && outcome.synced.is_none()
                    {
                        got.endpoint_bytes += any.value.len();
                        if let Ok(cla) = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(any.value.as_slice()) {
                            got.endpoints += cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum::<usize>();
                        }
                    }
                }
            } else if url == type_url::LISTENER {
                let listeners: Vec<Listener> = resources
                    .filter_map(|a| {
                        if outcome.synced.is_none() {
                            got.listener_bytes += a.value.len();
                        }
                        Listener::decode(a.value.as_slice()).ok()
                    })
                    .collect();
                if outcome.synced.is_none() {
                    got.listeners
                        .extend(listeners.iter().map(|l| l.name.clone()));
                }
                let new: Vec<String> = route_names(&listeners)
                    .into_iter()
                    .filter(|n| rds.insert(n.clone()))
                    .collect();
                if !new.is_empty() {
                    rds_pending.extend(new.iter().cloned());
                    let _ = tx
                        .send(DeltaDiscoveryRequest {
                            type_url: type_url::ROUTE.into(),
                            resource_names_subscribe: new,
                            ..Default::default()
                        })
                        .await;
                }
            } else if url == type_url::ROUTE {
                let is_armed = *armed.borrow();
                for r in &resp.resources {
                    rds_pending.remove(&r.name);
                    let Some(any) = &r.resource else { continue };
                    if outcome.synced.is_none() {
                        got.routes += 1;
                        got.route_bytes += any.value.len();
                    }
                    if is_armed || outcome.synced.is_none() {
                        let Ok(rc) = RouteConfiguration::decode(any.value.as_slice()) else {
                            continue;
                        };
                        if outcome.synced.is_none() {
                            got.virtual_hosts += rc.virtual_hosts.len();
                        }
                        if is_armed && outcome.converged_at.is_none() && has_weight(&rc, new_weight)
                        {
                            let at = unix_nanos();
                            outcome.converged_at = Some(at);
                            let _ = converged_tx.send(at).await;
                        }
                    }
                }
            }
            seen.insert(url);
            if outcome.synced.is_none()
                && seen.len() >= 4
                && eds_pending.is_empty()
                && rds_pending.is_empty()
            {
                outcome.synced = Some(start.elapsed());
                let _ = synced_tx.send((i, got.clone())).await;
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Percentiles (ms) of `v`.
pub fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({
        "n": v.len(),
        "p50": percentile(&v, 0.5),
        "p99": percentile(&v, 0.99),
        "max": v.last().copied().unwrap_or(f64::NAN),
    })
}

/// The child process: `meshd-bench --vs-client ADDR --clients M --classes C --weight W
/// --sync-timeout S --timeout S`.
pub async fn run(
    addr: String,
    m: usize,
    classes: usize,
    new_weight: u32,
    sync_timeout: Duration,
    timeout: Duration,
) {
    use tokio::io::AsyncBufReadExt;
    let (armed_tx, armed_rx) = watch::channel(false);
    let (synced_tx, mut synced_rx) = mpsc::channel::<(usize, Received)>(m.max(1));
    let (converged_tx, mut converged_rx) = mpsc::channel::<u128>(m.max(1));
    let start = Instant::now();
    for i in 0..m {
        tokio::spawn(one_client(
            addr.clone(),
            i,
            classes,
            start,
            armed_rx.clone(),
            synced_tx.clone(),
            converged_tx.clone(),
            new_weight,
        ));
    }
    let mut first: Option<Received> = None;
    let mut synced = Vec::new();
    let deadline = tokio::time::Instant::now() + sync_timeout;
    while synced.len() < m {
        match tokio::time::timeout_at(deadline, synced_rx.recv()).await {
            Ok(Some((i, got))) => {
                synced.push(i);
                first.get_or_insert(got);
            }
            _ => break,
        }
    }
    let sync_ms = start.elapsed().as_secs_f64() * 1000.0;
    let got = first.unwrap_or_default();
    println!(
        "SYNCED {}",
        json!({
            "synced": synced.len(),
            "clients": m,
            "ms": sync_ms,
            "clusters": got.clusters.len(),
            "cluster_bytes": got.cluster_bytes,
            "endpoints": got.endpoints,
            "endpoint_bytes": got.endpoint_bytes,
            "listeners": got.listeners.len(),
            "listener_bytes": got.listener_bytes,
            "routes": got.routes,
            "route_bytes": got.route_bytes,
            "virtual_hosts": got.virtual_hosts,
        })
    );
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    // `arm`
    let _ = stdin.next_line().await;
    let _ = armed_tx.send(true);
    println!("ARMED");
    let t0: u128 = stdin
        .next_line()
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
        .trim_start_matches("t0 ")
        .trim()
        .parse()
        .unwrap_or(0);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut arrivals = Vec::new();
    while arrivals.len() < m {
        match tokio::time::timeout_at(deadline, converged_rx.recv()).await {
            Ok(Some(at)) => arrivals.push(at),
            _ => break,
        }
    }
    let ms: Vec<f64> = arrivals
        .iter()
        .map(|&at| at.saturating_sub(t0) as f64 / 1e6)
        .collect();
    println!(
        "CONVERGED {}",
        json!({"clients": m, "latency_ms": summary(ms)})
    );
}
