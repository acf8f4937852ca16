//! `meshd-bench --vs-istiod`: the same mesh, served by istiod (pilot-discovery built from
//! Istio's Go module) and by meshd, to the same simulated proxies (and optionally real
//! Envoys), in one run.
//!
//! One real Kubernetes API server (tests/kube-apiserver) holds the mesh: Istio's CRDs, N
//! Services with two Pods each (v1, v2; their status set as a kubelet would, non-loopback
//! addresses that nothing dials) and EndpointSlices naming them, a DestinationRule with two
//! subsets per Service and a 90/10 VirtualService on every tenth. Then, for each server in
//! turn (never both at once: on a 2-CPU machine they would compete for the CPUs, and one
//! change written to the API server would be processed by both at the same moment):
//!
//! 1. start it (every port on loopback, moved off the defaults), wait for /ready and 3 s;
//!    its RSS and CPU time then are the baseline;
//! 2. connect the real Envoys (if any; four at a time, each batch LIVE before the next),
//!    then the simulated clients (a child process) and wait until every one has every
//!    resource it subscribed to;
//! 3. 2 s later, RSS again: (RSS − baseline) / connected proxies is the memory per proxy;
//!    then once more 5 s after a forced garbage collection (istiod's ControlZ; meshd
//!    just waits), as Go's RSS right after a burst holds garbage;
//! 4. write one VirtualService change (svc-0's weights 90/10 → 85/15) to the API server;
//!    each client records when a route configuration with the new weight arrives, each
//!    Envoy when it logs that it loaded a new route configuration (checked afterwards in
//!    its config_dump): latency from just before the write;
//! 5. stop everything, and put the VirtualService back for the next server.
//!
//! CPU seconds are the server process's own (utime + stime in /proc/PID/stat), by phase.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::ads_client::{summary, unix_nanos};
use super::envoys;
use super::http::{get, request};

const OLD_WEIGHT: u32 = 90;
const NEW_WEIGHT: u32 = 85;
/// Real Envoys started together.
const ENVOY_BATCH: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Istiod,
    Meshd,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Istiod => "istiod",
            Kind::Meshd => "meshd",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "istiod" => Some(Kind::Istiod),
            "meshd" => Some(Kind::Meshd),
            _ => None,
        }
    }
}

pub struct Opts {
    pub services: usize,
    pub clients: usize,
    pub envoys: usize,
    pub classes: usize,
    pub order: Vec<Kind>,
    /// How long to wait for convergence after the change.
    pub timeout: Duration,
    /// How long to wait for the initial sync.
    pub sync_timeout: Duration,
    /// Keep the work directory (logs, kubeconfig) after a successful run.
    pub keep: bool,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(default))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

// ---------------------------------------------------------------- /proc

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

pub(super) fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in seconds.
pub(super) fn cpu_secs(pid: u32, tck: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces): state is the first, utime
    // and stime the 12th and 13th (fields 14 and 15 of proc(5)).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / tck
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------- processes

async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct ApiServer {
    child: Child,
    kubeconfig: PathBuf,
}

async fn start_apiserver(dir: &Path) -> Result<ApiServer> {
    let bin = tool("MESHD_KUBE_APISERVER", "target/go/meshd-test-apiserver");
    if !bin.exists() {
        bail!(
            "{} is not built (./scripts/test builds it from tests/kube-apiserver)",
            bin.display()
        );
    }
    let kubeconfig = dir.join("kubeconfig");
    let log = dir.join("apiserver.log");
    let mut child = Command::new(&bin)
        .args(["--port", "0", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .arg("--data-dir")
        .arg(dir.join("apiserver-data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.starts_with("READY ") {
                return true;
            }
        }
        false
    })
    .await;
    if ready != Ok(true) {
        bail!("the API server did not start:\n{}", tail(&log, 30));
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(ApiServer { child, kubeconfig })
}

// ---------------------------------------------------------------- the API

struct Kube {
    client: kube::Client,
    kinds: Mutex<HashMap<(String, String), (ApiResource, bool)>>,
}

impl Kube {
    async fn kind(&self, api_version: &str, kind: &str) -> Result<(ApiResource, bool)> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(k) = self.kinds.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(k);
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .with_context(|| format!("discovering {api_version} {kind}"))?;
        let found = (ar, caps.scope == kube::discovery::Scope::Namespaced);
        if let Ok(mut m) = self.kinds.lock() {
            m.insert(key, found.clone());
        }
        Ok(found)
    }

    async fn api(&self, obj: &Value) -> Result<(Api<DynamicObject>, String)> {
        let (ar, namespaced) = self
            .kind(
                obj["apiVersion"].as_str().unwrap_or_default(),
                obj["kind"].as_str().unwrap_or_default(),
            )
            .await?;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let api = if namespaced {
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
            Api::namespaced_with(self.client.clone(), ns, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        };
        Ok((api, name))
    }

    /// Server-side apply, as `kubectl apply --server-side --force-conflicts`.
    async fn apply(&self, obj: &Value) -> Result<()> {
        let (api, name) = self.api(obj).await?;
        api.patch(
            &name,
            &PatchParams::apply("meshd-bench").force(),
            &Patch::Apply(obj),
        )
        .await
        .with_context(|| format!("applying {} {name}", obj["kind"]))?;
        Ok(())
    }

    async fn patch_status(&self, obj: &Value, status: &Value) -> Result<()> {
        let (api, name) = self.api(obj).await?;
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .with_context(|| format!("status of {} {name}", obj["kind"]))?;
        Ok(())
    }

    async fn apply_all(&self, objs: &[Value]) -> Result<()> {
        futures::stream::iter(objs)
            .map(|o| self.apply(o))
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

fn pod_ip(i: usize, v: usize) -> String {
    format!("10.{v}.{}.{}", i / 250, i % 250 + 1)
}

fn virtual_service(i: usize, w: u32) -> Value {
    let name = format!("svc-{i}");
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"hosts": [name], "http": [
            {"match": [{"headers": {"x-canary": {"exact": "1"}}}], "route": [{"destination": {"host": name, "subset": "v2"}}]},
            {"route": [{"destination": {"host": name, "subset": "v1"}, "weight": w},
                       {"destination": {"host": name, "subset": "v2"}, "weight": 100 - w}]}]}})
}

/// The mesh of B2 (meshd-bench's synthetic mesh), as Kubernetes objects.
async fn load_mesh(kube: &Kube, n: usize) -> Result<()> {
    // Istio's CRDs, served before anything uses them.
    let crds = std::fs::read_to_string(repo().join("crds/crd-all.gen.yaml"))?;
    let docs: Vec<Value> = meshd::sources::yaml::parse_documents(&crds)
        .into_iter()
        .filter_map(|d| d.ok().map(|d| d.value))
        .collect();
    kube.apply_all(&docs).await?;
    let start = Instant::now();
    for (group, kind) in [
        ("networking.istio.io/v1", "VirtualService"),
        ("networking.istio.io/v1", "DestinationRule"),
        ("security.istio.io/v1", "PeerAuthentication"),
        ("telemetry.istio.io/v1", "Telemetry"),
    ] {
        while kube.kind(group, kind).await.is_err() {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("{group} {kind} not served after 60s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    kube.apply_all(&[
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}),
    ])
    .await?;
    // The mesh config both servers read (istiod needs the ConfigMap to exist). No metrics
    // provider: istiod would add istio-proxy's stats filter, which upstream Envoy lacks.
    kube.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": "trustDomain: cluster.local\n"}}))
        .await?;
    let accounts: Vec<Value> = (0..n)
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": format!("svc-{i}"), "namespace": "bench"}})
        })
        .collect();
    kube.apply_all(&accounts).await?;
    let mut objs = Vec::new();
    let mut pods = Vec::new();
    for i in 0..n {
        let name = format!("svc-{i}");
        objs.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}));
        let mut endpoints = Vec::new();
        for v in 1..=2 {
            let pod = format!("{name}-v{v}");
            let ip = pod_ip(i, v);
            pods.push((
                json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": "bench",
                                 "labels": {"app": name, "version": format!("v{v}"), "security.istio.io/tlsMode": "istio"}},
                    "spec": {"serviceAccountName": name, "automountServiceAccountToken": false,
                             "containers": [{"name": "app", "image": "bench", "ports": [{"containerPort": 8080}]}]}}),
                json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True"}]}}),
            ));
            endpoints.push(json!({"addresses": [ip], "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": "bench"}}));
        }
        objs.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-bench"), "namespace": "bench",
                         "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "meshd-bench"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}));
        objs.push(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"host": name, "trafficPolicy": {
                "connectionPool": {"tcp": {"maxConnections": 100, "connectTimeout": "3s"},
                                   "http": {"http1MaxPendingRequests": 64, "maxRequestsPerConnection": 10}},
                "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"}},
              "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}}));
        if i % 10 == 0 {
            objs.push(virtual_service(i, OLD_WEIGHT));
        }
    }
    let pod_objs: Vec<Value> = pods.iter().map(|(p, _)| p.clone()).collect();
    kube.apply_all(&pod_objs).await?;
    futures::stream::iter(&pods)
        .map(|(p, s)| kube.patch_status(p, s))
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    kube.apply_all(&objs).await?;
    Ok(())
}

// ---------------------------------------------------------------- the servers

struct Server {
    child: Child,
    pid: u32,
    /// Plaintext ADS, host:port.
    grpc: String,
    /// Where /metrics is (istiod: Go's memory statistics).
    monitoring: String,
    /// istiod's ControlZ (it can force a garbage collection).
    ctrlz: Option<String>,
    log: PathBuf,
}

async fn start_server(kind: Kind, kubeconfig: &Path, dir: &Path) -> Result<Server> {
    let (grpc, secure, http, webhook, monitoring) = (
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
    );
    let log = dir.join(format!("{}.log", kind.name()));
    let a = |p: u16| format!("127.0.0.1:{p}");
    let ctrlz = free_port()?;
    let mut cmd = match kind {
        Kind::Istiod => {
            let bin = tool("MESHD_PILOT_DISCOVERY", "target/go/pilot-discovery");
            if !bin.exists() {
                bail!(
                    "{} is not built: GOBIN=$PWD/target/go go install istio.io/istio/pilot/cmd/pilot-discovery@VERSION (docs/ISTIOD.md)",
                    bin.display()
                );
            }
            let mut c = Command::new(bin);
            // As docs/ISTIOD.md runs it: no CA, no webhooks; plus what upstream Envoy
            // needs (no istio-proxy-only filters).
            c.envs([
                ("POD_NAMESPACE", "istio-system"),
                ("POD_NAME", "istiod-bench"),
                ("REVISION", "default"),
                ("VALIDATION_WEBHOOK_CONFIG_NAME", ""),
                ("INJECTION_WEBHOOK_CONFIG_NAME", ""),
                ("ENABLE_CA_SERVER", "false"),
                ("PILOT_CERT_PROVIDER", "none"),
                ("PILOT_ENABLE_METADATA_EXCHANGE", "false"),
                ("PILOT_ENABLE_ALPN_FILTER", "false"),
            ])
            .arg("discovery")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args([
                "--domain",
                "cluster.local",
                "--clusterID",
                "Kubernetes",
                "--meshConfig=/nonexistent",
                "--networksConfig=/nonexistent",
                &format!("--grpcAddr={}", a(grpc)),
                &format!("--secureGRPCAddr={}", a(secure)),
                &format!("--httpAddr={}", a(http)),
                &format!("--httpsAddr={}", a(webhook)),
                &format!("--monitoringAddr={}", a(monitoring)),
                "--ctrlz_address=127.0.0.1",
                &format!("--ctrlz_port={ctrlz}"),
                "--shutdownDuration=1s",
            ]);
            c
        }
        Kind::Meshd => {
            let exe = std::env::current_exe()?;
            let exe = PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)"));
            let bin = std::env::var_os("MESHD_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| exe.with_file_name("meshd"));
            if !bin.exists() {
                bail!(
                    "{} is not built (cargo build --bin meshd, same profile as meshd-bench)",
                    bin.display()
                );
            }
            let mut c = Command::new(bin);
            c.arg("serve")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["--listen-address", "127.0.0.1", "--pod-name", "meshd-bench"])
                .args(["--grpc-port", &grpc.to_string()])
                .args(["--secure-grpc-port", &secure.to_string()])
                .args(["--http-port", &http.to_string()])
                .args(["--webhook-port", &webhook.to_string()])
                .args(["--monitoring-port", &monitoring.to_string()])
                .arg("--ca-dir")
                .arg(dir.join("meshd-ca"));
            c
        }
    };
    let mut child = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(
            dir.join(format!("{}.err", kind.name())),
        )?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", kind.name()))?;
    let pid = child.id().context("pid")?;
    let start = Instant::now();
    loop {
        if let Ok((200, _)) = get(&a(http), "/ready").await {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            bail!(
                "{} exited ({st}):\n{}\n{}",
                kind.name(),
                tail(&log, 20),
                tail(&dir.join(format!("{}.err", kind.name())), 20)
            );
        }
        if start.elapsed() > Duration::from_secs(180) {
            bail!("{} not ready after 180s", kind.name());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Server {
        child,
        pid,
        grpc: a(grpc),
        monitoring: a(monitoring),
        ctrlz: (kind == Kind::Istiod).then(|| a(ctrlz)),
        log,
    })
}

/// Go's heap in use (istiod's /metrics), MiB.
async fn go_heap_mib(monitoring: &str) -> Option<f64> {
    let (_, body) = get(monitoring, "/metrics").await.ok()?;
    body.lines()
        .find(|l| l.starts_with("go_memstats_heap_inuse_bytes "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|b| b / (1024.0 * 1024.0))
}

// ---------------------------------------------------------------- one server's run

#[derive(Debug, Default)]
struct Measured {
    ready_s: f64,
    rss_base: u64,
    rss_synced: u64,
    hwm: u64,
    heap_base: Option<f64>,
    heap_synced: Option<f64>,
    /// 5 s after a forced garbage collection (istiod), or 5 s later (meshd).
    rss_settled: u64,
    heap_settled: Option<f64>,
    proxies: usize,
    envoy_live_s: f64,
    sync: Value,
    cpu_startup: f64,
    cpu_sync: f64,
    cpu_change: f64,
    cpu_total: f64,
    converged: Value,
    envoy_converged: Value,
    envoy_rejected: u64,
    envoy_warming: u64,
    envoy_rss: u64,
    /// Each Envoy's longest CDS update, its own processing time (ms), summarised.
    envoy_cds: Value,
    /// OS threads of the server with every proxy synced.
    threads: u64,
    /// The fewest active clusters and listeners of any Envoy.
    envoy_active: (u64, u64),
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>, within: Duration) -> Result<String> {
    match tokio::time::timeout(within, lines.next_line()).await {
        Ok(Ok(Some(l))) => Ok(l),
        Ok(_) => bail!("the client process ended"),
        Err(_) => bail!("no answer from the client process within {within:?}"),
    }
}

async fn measure(
    kind: Kind,
    opts: &Opts,
    kube: &Kube,
    kubeconfig: &Path,
    dir: &Path,
    sds: std::net::SocketAddr,
    tck: f64,
) -> Result<Measured> {
    let mut m = Measured::default();
    let started = Instant::now();
    let mut server = start_server(kind, kubeconfig, dir).await?;
    let pid = server.pid;
    m.ready_s = started.elapsed().as_secs_f64();
    println!("{}: ready in {:.1} s", kind.name(), m.ready_s);
    tokio::time::sleep(Duration::from_secs(3)).await;
    m.rss_base = rss_kib(pid);
    m.heap_base = go_heap_mib(&server.monitoring).await;
    m.cpu_startup = cpu_secs(pid, tck);

    // Real Envoys first (they are few), then the simulated clients.
    let mut envs = Vec::new();
    if opts.envoys > 0 {
        let bin = tool("ENVOY_BIN", ".venv-envoy/bin/envoy");
        let edir = dir.join(format!("envoys-{}", kind.name()));
        std::fs::create_dir_all(&edir)?;
        let xds: std::net::SocketAddr = server.grpc.parse()?;
        let t = Instant::now();
        // A few at a time, as a rollout would: twenty Envoys taking thousands of clusters at
        // once starve each other on 2 CPUs until the server's keepalive gives up on them.
        for k in 0..opts.envoys {
            envs.push(envoys::start(&bin, k, xds, sds, free_port()?, &edir)?);
            if envs.len() % ENVOY_BATCH == 0 || k + 1 == opts.envoys {
                let from = envs.len() - (envs.len() - 1) % ENVOY_BATCH - 1;
                envoys::wait_live(&mut envs[from..], opts.sync_timeout).await?;
            }
        }
        m.envoy_live_s = t.elapsed().as_secs_f64();
        println!(
            "{}: {} Envoys LIVE in {:.1} s",
            kind.name(),
            envs.len(),
            m.envoy_live_s
        );
    }
    let cpu0 = cpu_secs(pid, tck);
    // This very binary (by /proc/self/exe: it still runs if a build replaced the file).
    let mut clients = Command::new("/proc/self/exe")
        .args([
            "--vs-client",
            &format!("http://{}", server.grpc),
            "--clients",
            &opts.clients.to_string(),
            "--classes",
            &opts.classes.to_string(),
            "--weight",
            &NEW_WEIGHT.to_string(),
            "--timeout",
            &opts.timeout.as_secs().to_string(),
            "--sync-timeout",
            &opts.sync_timeout.as_secs().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = clients.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(clients.stdout.take().context("stdout")?).lines();
    let line = next_line(&mut lines, opts.sync_timeout + Duration::from_secs(30)).await?;
    m.sync = serde_json::from_str(line.trim_start_matches("SYNCED "))?;
    println!("{}: initial sync {}", kind.name(), m.sync);
    if m.sync["synced"].as_u64() != Some(opts.clients as u64) {
        bail!(
            "{}: only {} of {} clients synced; log: {}",
            kind.name(),
            m.sync["synced"],
            opts.clients,
            server.log.display()
        );
    }
    // Let the last ACKs land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    m.rss_synced = rss_kib(pid);
    m.threads = status_kib(pid, "Threads:");
    m.heap_synced = go_heap_mib(&server.monitoring).await;
    m.proxies = opts.clients + envs.len();
    m.cpu_sync = cpu_secs(pid, tck) - cpu0;
    // What stays: Go's RSS right after the sync holds garbage until a collection (Go
    // collects when the heap doubles, or every 2 minutes when idle). A forced collection
    // (ControlZ) and 5 s for the scavenger; meshd just waits the 5 s.
    if let Some(ctrlz) = &server.ctrlz {
        let r = request("PUT", ctrlz, "/memj/forcecollection").await;
        if !matches!(r, Ok((200..=299, _))) {
            println!("{}: forcing a collection failed: {r:?}", kind.name());
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    m.rss_settled = rss_kib(pid);
    m.heap_settled = go_heap_mib(&server.monitoring).await;

    // The change.
    stdin.write_all(b"arm\n").await?;
    stdin.flush().await?;
    let armed = next_line(&mut lines, Duration::from_secs(30)).await?;
    if armed != "ARMED" {
        bail!("unexpected {armed:?} from the client process");
    }
    let cpu1 = cpu_secs(pid, tck);
    let t0 = unix_nanos();
    kube.apply(&virtual_service(0, NEW_WEIGHT)).await?;
    stdin.write_all(format!("t0 {t0}\n").as_bytes()).await?;
    stdin.flush().await?;
    let loaded: Vec<_> = envs.iter().map(|e| e.rds_loaded.clone()).collect();
    let timeout = opts.timeout;
    let envoy_watch = tokio::spawn(async move {
        // The first route configuration each Envoy loaded after the write.
        let deadline = Instant::now() + timeout;
        loop {
            let at: Vec<Option<u128>> = loaded
                .iter()
                .map(|l| {
                    l.lock()
                        .ok()
                        .and_then(|v| v.iter().copied().find(|&t| t > t0))
                })
                .collect();
            if at.iter().all(Option::is_some) || Instant::now() > deadline {
                return at;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let line = next_line(&mut lines, opts.timeout + Duration::from_secs(30)).await?;
    let envoy_at = envoy_watch.await?;
    m.cpu_change = cpu_secs(pid, tck) - cpu1;
    m.converged = serde_json::from_str(line.trim_start_matches("CONVERGED "))?;
    println!("{}: after the change {}", kind.name(), m.converged);
    if !envs.is_empty() {
        let mut ms = Vec::new();
        for (e, at) in envs.iter().zip(&envoy_at) {
            // Accepted a new route configuration, and it is the changed one.
            if let Some(at) = at
                && envoys::has_change(&e.admin, NEW_WEIGHT).await
            {
                ms.push(at.saturating_sub(t0) as f64 / 1e6);
            }
            m.envoy_rejected += envoys::stat_sum(&e.admin, envoys::REJECTED)
                .await
                .unwrap_or(0);
            m.envoy_warming += envoys::stat_sum(
                &e.admin,
                "^(cluster_manager.warming_clusters|listener_manager.total_listeners_warming)$",
            )
            .await
            .unwrap_or(0);
            if let Some(p) = e.child.id() {
                m.envoy_rss += rss_kib(p);
            }
        }
        m.envoy_converged = summary(ms);
        let mut cds = Vec::new();
        for e in &envs {
            if let Some(v) =
                envoys::histogram_max(&e.admin, "cluster_manager.cds.update_duration").await
            {
                cds.push(v);
            }
        }
        m.envoy_cds = summary(cds);
        // The fewest active clusters and listeners of any of them (one that failed to
        // bind a listener, or still warms a cluster, shows here).
        let (mut clusters, mut listeners) = (u64::MAX, u64::MAX);
        for e in &envs {
            let stat = |re: &'static str| envoys::stat_sum(&e.admin, re);
            clusters = clusters.min(stat("^cluster_manager.active_clusters$").await.unwrap_or(0));
            listeners = listeners.min(
                stat("^listener_manager.total_listeners_active$")
                    .await
                    .unwrap_or(0),
            );
        }
        m.envoy_active = (clusters, listeners);
        println!(
            "{}: real Envoys after the change {} (rejected updates {}, warming {})",
            kind.name(),
            m.envoy_converged,
            m.envoy_rejected,
            m.envoy_warming
        );
    }
    m.hwm = status_kib(pid, "VmHWM:");
    m.cpu_total = cpu_secs(pid, tck);

    drop(stdin);
    stop(&mut clients).await;
    for e in &mut envs {
        stop(&mut e.child).await;
    }
    stop(&mut server.child).await;
    // The next server starts from the same mesh.
    kube.apply(&virtual_service(0, OLD_WEIGHT)).await?;
    Ok(m)
}

// ---------------------------------------------------------------- the report

fn ratio(meshd: f64, istiod: f64) -> String {
    if istiod > 0.0 && meshd.is_finite() && istiod.is_finite() {
        format!("{:.2}", meshd / istiod)
    } else {
        "–".into()
    }
}

/// One row: a number per server (and their ratio when both ran) or text.
enum Cell {
    Num(Box<dyn Fn(&Measured) -> f64>, &'static str, usize),
    Text(Box<dyn Fn(&Measured) -> String>),
}

fn num(f: impl Fn(&Measured) -> f64 + 'static, unit: &'static str, prec: usize) -> Cell {
    Cell::Num(Box::new(f), unit, prec)
}

fn text(f: impl Fn(&Measured) -> String + 'static) -> Cell {
    Cell::Text(Box::new(f))
}

fn report(opts: &Opts, results: &[(Kind, Measured)]) {
    let kib_per_proxy = |a: u64, b: u64, n: usize| (a as f64 - b as f64) / n.max(1) as f64;
    let lat = |p: &'static str| {
        move |m: &Measured| m.converged["latency_ms"][p].as_f64().unwrap_or(f64::NAN)
    };
    let elat =
        |p: &'static str| move |m: &Measured| m.envoy_converged[p].as_f64().unwrap_or(f64::NAN);
    let clients = opts.clients;
    let n_envoys = opts.envoys;
    let mut rows: Vec<(String, Cell)> = vec![
        (
            "memory per connected proxy (RSS delta / proxies)".into(),
            num(
                move |m| kib_per_proxy(m.rss_synced, m.rss_base, m.proxies),
                " KiB",
                0,
            ),
        ),
        (
            "… 5 s after a forced GC (istiod) / 5 s later (meshd)".into(),
            num(
                move |m| kib_per_proxy(m.rss_settled, m.rss_base, m.proxies),
                " KiB",
                0,
            ),
        ),
        (
            "RSS before proxies (mesh loaded)".into(),
            num(|m| mib(m.rss_base), " MiB", 0),
        ),
        (
            "RSS with every proxy synced".into(),
            num(|m| mib(m.rss_synced), " MiB", 0),
        ),
        ("peak RSS".into(), num(|m| mib(m.hwm), " MiB", 0)),
    ];
    for p in ["p50", "p99", "max"] {
        rows.push((
            format!("convergence {p} (write to API server → client has it)"),
            num(lat(p), " ms", 0),
        ));
    }
    rows.push((
        "clients converged".into(),
        text(move |m| format!("{}/{clients}", m.converged["latency_ms"]["n"])),
    ));
    if n_envoys > 0 {
        for p in ["p50", "p99"] {
            rows.push((
                format!("real Envoys: convergence {p}"),
                num(elat(p), " ms", 0),
            ));
        }
        rows.push((
            "real Envoys converged / updates rejected / still warming".into(),
            text(move |m| {
                format!(
                    "{}/{n_envoys} / {} / {}",
                    m.envoy_converged["n"], m.envoy_rejected, m.envoy_warming
                )
            }),
        ));
        rows.push((
            "real Envoys: active clusters, listeners (fewest of any)".into(),
            text(|m| format!("{}, {}", m.envoy_active.0, m.envoy_active.1)),
        ));
        rows.push((
            "real Envoys: Envoy's own longest CDS update, p50 / max over the Envoys".into(),
            text(|m| {
                format!(
                    "{:.0} / {:.0} ms",
                    m.envoy_cds["p50"].as_f64().unwrap_or(f64::NAN),
                    m.envoy_cds["max"].as_f64().unwrap_or(f64::NAN)
                )
            }),
        ));
        rows.push((
            "real Envoys: time until all LIVE".into(),
            num(|m| m.envoy_live_s, " s", 1),
        ));
        rows.push((
            "real Envoys: RSS of one Envoy (mean)".into(),
            num(move |m| mib(m.envoy_rss) / n_envoys as f64, " MiB", 0),
        ));
    }
    rows.extend([
        (
            "CPU: start until ready + 3 s".to_string(),
            num(|m| m.cpu_startup, " s", 2),
        ),
        (
            "CPU: initial sync of the simulated clients".into(),
            num(|m| m.cpu_sync, " s", 2),
        ),
        (
            "CPU: the change, until every proxy has it".into(),
            num(|m| m.cpu_change, " s", 2),
        ),
        ("CPU: whole run".into(), num(|m| m.cpu_total, " s", 2)),
        ("time to /ready".into(), num(|m| m.ready_s, " s", 1)),
        (
            "OS threads with every proxy synced".into(),
            num(|m| m.threads as f64, "", 0),
        ),
        (
            "initial sync of every simulated client".into(),
            num(
                |m| m.sync["ms"].as_f64().unwrap_or(f64::NAN) / 1000.0,
                " s",
                1,
            ),
        ),
    ]);
    for (what, count, bytes) in [
        ("clusters", "clusters", "cluster_bytes"),
        ("load assignments: endpoints", "endpoints", "endpoint_bytes"),
        ("listeners", "listeners", "listener_bytes"),
        (
            "route configurations: virtual hosts",
            "virtual_hosts",
            "route_bytes",
        ),
    ] {
        rows.push((
            format!("one proxy's {what} (count, KiB)"),
            text(move |m| {
                format!(
                    "{}, {:.0}",
                    m.sync[count],
                    m.sync[bytes].as_f64().unwrap_or(f64::NAN) / 1024.0
                )
            }),
        ));
    }

    println!();
    println!(
        "Side by side: {} services, {} simulated clients, {} real Envoys ({} proxies), one VirtualService change",
        opts.services,
        opts.clients,
        opts.envoys,
        opts.clients + opts.envoys
    );
    println!();
    let both = results.len() == 2;
    let names: Vec<&str> = results.iter().map(|(k, _)| k.name()).collect();
    println!(
        "| | {} |{}",
        names.join(" | "),
        if both { " meshd/istiod |" } else { "" }
    );
    println!(
        "| --- |{}{}",
        " ---: |".repeat(results.len()),
        if both { " ---: |" } else { "" }
    );
    let get = |k: Kind| results.iter().find(|(x, _)| *x == k).map(|(_, m)| m);
    for (label, cell) in &rows {
        let cells: Vec<String> = results
            .iter()
            .map(|(_, m)| match cell {
                Cell::Num(f, unit, prec) => format!("{:.prec$}{unit}", f(m), prec = *prec),
                Cell::Text(f) => f(m),
            })
            .collect();
        let r = match (cell, get(Kind::Istiod), get(Kind::Meshd)) {
            (Cell::Num(f, ..), Some(i), Some(s)) => format!(" {} |", ratio(f(s), f(i))),
            _ if both => " |".into(),
            _ => String::new(),
        };
        println!("| {label} | {} |{r}", cells.join(" | "));
    }
    if let Some(i) = get(Kind::Istiod)
        && let (Some(a), Some(b), Some(c)) = (i.heap_base, i.heap_synced, i.heap_settled)
    {
        let per = |x: f64| (x - a) * 1024.0 / i.proxies.max(1) as f64;
        println!(
            "\nistiod's Go heap in use (go_memstats_heap_inuse_bytes): {a:.0} MiB before proxies, \
             {b:.0} MiB synced ({:.0} KiB per proxy), {c:.0} MiB after a forced GC ({:.0} KiB per proxy)",
            per(b),
            per(c)
        );
    }
}

// ---------------------------------------------------------------- entry

pub fn main(opts: Opts) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(opts))
}

async fn run(opts: Opts) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("meshd-bench-vs-istiod-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "meshd-bench --vs-istiod ({} build): {} services, {} clients ({} classes), {} Envoys; work directory {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        opts.services,
        opts.clients,
        opts.classes,
        opts.envoys,
        dir.display()
    );
    let result = run_in(&opts, &dir).await;
    match &result {
        Ok(()) if !opts.keep => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        _ => println!("logs kept in {}", dir.display()),
    }
    result
}

async fn run_in(opts: &Opts, dir: &Path) -> Result<()> {
    let t = Instant::now();
    let mut api = start_apiserver(dir).await?;
    let kube = Kube {
        client: meshd::kube::client(Some(&api.kubeconfig)).await?,
        kinds: Mutex::new(HashMap::new()),
    };
    load_mesh(&kube, opts.services)
        .await
        .map_err(|e| anyhow!("loading the mesh: {e:#}"))?;
    println!(
        "API server up and the mesh written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let sds = envoys::start_sds().await?;
    let tck = clk_tck();
    let mut results = Vec::new();
    for &kind in &opts.order {
        let m = measure(kind, opts, &kube, &api.kubeconfig, dir, sds, tck)
            .await
            .with_context(|| format!("measuring {}", kind.name()))?;
        results.push((kind, m));
    }
    report(opts, &results);
    stop(&mut api.child).await;
    println!("\ntotal {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}
