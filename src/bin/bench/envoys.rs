//! Real Envoys for `meshd-bench --vs-istiod`: upstream Envoy bootstrapped as istio-proxy
//! bootstraps it (sidecar node id and metadata, Delta ADS to the server's plaintext port,
//! and an `sds-grpc` cluster), with a small SDS server standing in for istio-agent's (both
//! istiod and meshd point an istio-proxy's TLS at `sds-grpc`, with no fetch timeout: without
//! secrets its clusters and listeners would wait forever).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use meshd::envoy::pb;
use meshd::translate::secret;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::ads_client::{CHANGED_CLUSTER, node_metadata};
use super::http::get;

/// istio-agent's part: the workload certificate (`default`) and the root (`ROOTCA`), here
/// one self-signed certificate (nothing connects through these Envoys).
struct Sds {
    cert_pem: String,
    key_pem: String,
}

type SdsStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<DiscoveryResponse, Status>> + Send + 'static>,
>;
type DeltaStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send + 'static>,
>;

impl Sds {
    fn response(&self, names: &[String], n: u64) -> DiscoveryResponse {
        let resources = names
            .iter()
            .filter_map(|name| match name.as_str() {
                "default" => Some(secret::workload(
                    name,
                    std::slice::from_ref(&self.cert_pem),
                    &self.key_pem,
                )),
                "ROOTCA" => Some(secret::root(name, &self.cert_pem)),
                _ => None,
            })
            .map(|s| pb::resource(&s))
            .collect();
        DiscoveryResponse {
            version_info: "1".into(),
            resources,
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into(),
            nonce: n.to_string(),
            ..Default::default()
        }
    }
}

struct SdsService(Arc<Sds>);

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type StreamSecretsStream = SdsStream;
    type DeltaSecretsStream = DeltaStream;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SdsStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let sds = self.0.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok(Some(req)) = requests.message().await {
                // Answer each new request (not the ACKs of what was sent).
                if req.response_nonce.is_empty() || req.error_detail.is_some() {
                    n += 1;
                    if tx
                        .send(Ok(sds.response(&req.resource_names, n)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delta_secrets(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented("SotW only"))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Ok(Response::new(
            self.0.response(&request.into_inner().resource_names, 1),
        ))
    }
}

/// Starts the SDS server on loopback; its address.
pub async fn start_sds() -> Result<std::net::SocketAddr> {
    let ck = rcgen::generate_simple_self_signed(vec![
        "spiffe://cluster.local/ns/bench/sa/bench".to_string(),
        "localhost".to_string(),
    ])?;
    let sds = Arc::new(Sds {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SecretDiscoveryServiceServer::new(SdsService(sds)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(addr)
}

/// One running Envoy.
pub struct Envoy {
    pub name: String,
    pub child: tokio::process::Child,
    pub admin: String,
    pub log: PathBuf,
    /// When (unix nanos) its log said it loaded a new route configuration.
    pub rds_loaded: Arc<std::sync::Mutex<Vec<u128>>>,
}

fn static_cluster(name: &str, addr: std::net::SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        },
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}}}
        ]}]}
    })
}

/// Starts Envoy `k` of a run against the ADS server at `xds`.
pub fn start(
    bin: &Path,
    k: usize,
    xds: std::net::SocketAddr,
    sds: std::net::SocketAddr,
    admin_port: u16,
    dir: &Path,
) -> Result<Envoy> {
    let pod = format!("envoy-{k}");
    let ip = format!("10.251.{}.{}", k / 250, k % 250 + 1);
    let app = format!("envoy-{k}");
    // These are upstream Envoys: they must not say they are istio-proxy (ISTIO_VERSION),
    // or a control plane sends them istio-proxy's own extensions (metadata exchange),
    // which they refuse.
    let mut metadata = node_metadata(&pod, &ip, &app);
    if let Some(m) = metadata.as_object_mut() {
        m.remove("ISTIO_VERSION");
    }
    let bootstrap = json!({
        "node": {
            "id": super::ads_client::node_id(&pod, &ip),
            "cluster": format!("{app}.bench"),
            "metadata": metadata,
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                "set_node_on_first_message_only": true,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [static_cluster("xds-grpc", xds), static_cluster("sds-grpc", sds)]},
    });
    let path = dir.join(format!("{pod}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&bootstrap)?)?;
    let log = dir.join(format!("{pod}.log"));
    let mut child = tokio::process::Command::new(bin)
        .arg("-c")
        .arg(&path)
        .args([
            "--disable-hot-restart",
            "--base-id",
            &admin_port.to_string(),
            "--concurrency",
            "1",
            "-l",
            "warning",
            // RDS logs each accepted route configuration at debug ("rds: loading new
            // configuration"): the moment this Envoy has a change, without polling its
            // admin (a stats query walks every stat: costly with thousands of clusters).
            // Deprecation warnings (one per cluster) are not of interest.
            "--component-log-level",
            "rds:debug,misc:error",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let rds_loaded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stderr = child.stderr.take().context("stderr")?;
    let mut file = std::fs::File::create(&log)?;
    let loaded = rds_loaded.clone();
    tokio::spawn(async move {
        use std::io::Write;
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("rds: loading new configuration")
                && let Ok(mut v) = loaded.lock()
            {
                v.push(super::ads_client::unix_nanos());
            }
            let _ = writeln!(file, "{line}");
        }
    });
    Ok(Envoy {
        name: pod,
        child,
        admin: format!("127.0.0.1:{admin_port}"),
        log,
        rds_loaded,
    })
}

/// Sum of the counters or gauges whose names match `filter` (a regular expression).
pub async fn stat_sum(admin: &str, filter: &str) -> Option<u64> {
    let filter: String = filter
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (status, body) = get(admin, &format!("/stats?filter={filter}")).await.ok()?;
    if status != 200 {
        return None;
    }
    Some(
        body.lines()
            .filter_map(|l| {
                l.rsplit_once(": ")
                    .and_then(|(_, v)| v.trim().parse::<u64>().ok())
            })
            .sum(),
    )
}

/// The longest time the Envoy spent applying one update of a histogram's kind, in ms:
/// the cumulative P100 of `name` (`cluster_manager.cds.update_duration`: Envoy's own
/// time to take a CDS response, apart from the control plane's). None before the first
/// update, or without the stat.
pub async fn histogram_max(admin: &str, name: &str) -> Option<f64> {
    let (status, body) = get(admin, &format!("/stats?filter=^{name}$")).await.ok()?;
    if status != 200 {
        return None;
    }
    // `NAME: P0(interval,cumulative) … P100(interval,cumulative)`.
    let line = body.lines().find(|l| l.starts_with(name))?;
    let p100 = line.split_whitespace().find(|w| w.starts_with("P100("))?;
    let cumulative = p100.trim_start_matches("P100(").trim_end_matches(')');
    cumulative
        .split(',')
        .nth(1)?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

/// Waits until every Envoy is LIVE (its initial fetches done).
pub async fn wait_live(envoys: &mut [Envoy], timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    for e in envoys.iter_mut() {
        loop {
            if let Ok((200, body)) = get(&e.admin, "/ready").await
                && body.contains("LIVE")
            {
                break;
            }
            if let Ok(Some(st)) = e.child.try_wait() {
                return Err(anyhow!("{} exited ({st}); see {}", e.name, e.log.display()));
            }
            if tokio::time::Instant::now() > deadline {
                let init = get(&e.admin, "/init_dump")
                    .await
                    .map(|r| r.1)
                    .unwrap_or_default();
                return Err(anyhow!(
                    "{} not LIVE after {timeout:?}; init targets: {}",
                    e.name,
                    init.chars().take(2000).collect::<String>()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Configuration Envoy refused (CDS, LDS, RDS, EDS).
pub const REJECTED: &str = r"update_rejected$";

/// Whether the Envoy's route configurations send the changed weight to the changed cluster.
pub async fn has_change(admin: &str, weight: u32) -> bool {
    let Ok((200, body)) = get(admin, "/config_dump?resource=dynamic_route_configs").await else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return false;
    };
    fn find(v: &Value, weight: u32) -> bool {
        match v {
            Value::Object(m) => {
                (m.get("name").and_then(Value::as_str) == Some(CHANGED_CLUSTER)
                    && m.get("weight").and_then(Value::as_u64) == Some(weight as u64))
                    || m.values().any(|x| find(x, weight))
            }
            Value::Array(a) => a.iter().any(|x| find(x, weight)),
            _ => false,
        }
    }
    find(&v, weight)
}
