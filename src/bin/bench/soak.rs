//! The soak (`meshd-bench --soak SECS`): a real `meshd serve` process on a folder, edited
//! every second (a VirtualService's weights and a few pods' addresses), with simulated
//! proxies that ACK everything and reconnect every 5–15 s. meshd's resident memory, open
//! file descriptors and threads are sampled every 5 s; at the end every connected proxy
//! must have ACKed the latest of each type, the log must hold no ERROR line, and memory
//! and descriptors must be flat: the last sample within 1.5 × the first after the
//! warm-up (a quarter of the run) plus 20 MB, descriptors within 10 of it, threads within
//! what meshd's runtime allows (5 × cores + 12). Fails (exit
//! status 1) otherwise. docs/RELIABILITY.md has the figures.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshd::envoy::type_url;
use serde_json::{Value, json};

use super::{connect, pod, proxy};

const SERVICES: usize = 50;
const CHURNED_PODS: usize = 5;

pub(super) fn doc(out: &mut String, v: Value) {
    // JSON is YAML: one document per object.
    out.push_str("---\n");
    out.push_str(&v.to_string());
    out.push('\n');
}

/// Everything but the edited VirtualService and the churned pods.
fn mesh_text() -> String {
    let mut t = String::new();
    for i in 0..SERVICES {
        let name = format!("svc-{i}");
        doc(
            &mut t,
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"selector": {"app": name}, "clusterIP": format!("10.96.0.{}", i + 1),
                     "ports": [{"name": "http", "port": 8080}]}}),
        );
        doc(
            &mut t,
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"host": name, "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                               {"name": "v2", "labels": {"version": "v2"}}]}}),
        );
        if i >= CHURNED_PODS {
            doc(&mut t, pod(i, 1, &format!("10.1.0.{}", i + 1)));
        }
        doc(&mut t, pod(i, 2, &format!("10.2.0.{}", i + 1)));
    }
    t
}

fn vs_text(tick: u64) -> String {
    let w = 50 + (tick % 40) as i64;
    let mut t = String::new();
    doc(
        &mut t,
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "svc-0", "namespace": "bench"},
        "spec": {"hosts": ["svc-0"], "http": [{"route": [
            {"destination": {"host": "svc-0", "subset": "v1"}, "weight": w},
            {"destination": {"host": "svc-0", "subset": "v2"}, "weight": 100 - w}]}]}}),
    );
    t
}

fn pods_text(tick: u64) -> String {
    let mut t = String::new();
    for i in 0..CHURNED_PODS {
        doc(&mut t, pod(i, 1, &format!("10.5.{}.{}", tick % 250, i + 1)));
    }
    t
}

/// Writes through a hidden temporary file and a rename, as editors and `kubectl`-like
/// tools do, so meshd never reads half a file.
pub(super) fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(name));
    }
}

struct Sample {
    at: Duration,
    rss_mb: f64,
    fds: usize,
    threads: usize,
    connections: usize,
}

fn sample(pid: u32, at: Duration, connections: usize) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let count = |p: String| std::fs::read_dir(p).map_or(0, |d| d.count());
    Sample {
        at,
        rss_mb: kb("VmRSS:") / 1024.0,
        fds: count(format!("/proc/{pid}/fd")),
        threads: count(format!("/proc/{pid}/task")),
        connections,
    }
}

/// One simulated proxy: connects, ACKs everything (subscribing to the endpoints and
/// routes its clusters and listeners name) and, while `churn` is set, hangs up after its
/// lifetime and connects again; once `churn` is cleared its stream stays open (so the
/// final check is of live streams that took every push) until `release`.
async fn client(addr: String, i: usize, churn: Arc<AtomicBool>, release: Arc<AtomicBool>) {
    let dial = super::b5::Dial::new(&addr, None);
    let mut round = 0u64;
    while !release.load(Ordering::Relaxed) {
        let life = Duration::from_millis(5000 + ((i as u64 * 7919 + round * 104_729) % 10_000));
        let until = Instant::now() + life;
        let (tx, mut stream) = connect(&dial, &proxy(i, 10), &[type_url::LISTENER]).await;
        let mut eds = std::collections::BTreeSet::new();
        let mut rds = std::collections::BTreeSet::new();
        loop {
            if release.load(Ordering::Relaxed) {
                return;
            }
            let wait = if churn.load(Ordering::Relaxed) {
                until.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(200)
            };
            if wait.is_zero() {
                break;
            }
            match tokio::time::timeout(wait, stream.message()).await {
                Ok(Ok(Some(resp))) => super::follow(&tx, &resp, &mut eds, &mut rds).await,
                Ok(_) => break,
                Err(_) => {}
            }
        }
        round += 1;
    }
}

/// Every connection's every type ACKed at its last sent nonce (from /debug/syncz).
fn in_sync(syncz: &Value) -> (usize, usize) {
    let conns = syncz.as_array().cloned().unwrap_or_default();
    let synced = conns
        .iter()
        .filter(|c| {
            c["types"].as_object().is_some_and(|t| {
                !t.is_empty()
                    && t.values()
                        .all(|w| !w["sent_nonce"].is_null() && w["sent_nonce"] == w["acked_nonce"])
            })
        })
        .count();
    (synced, conns.len())
}

/// The log without terminal colour codes (meshd colours its levels).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn meshd_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("meshd")))
        .unwrap_or_else(|| PathBuf::from("meshd"))
}

/// A `meshd serve` process started by the bench, on ports of its own.
pub(super) struct Served {
    pub child: tokio::process::Child,
    pub pid: u32,
    /// The plaintext ADS address, as a URL.
    pub grpc: String,
    /// The debug port (host:port).
    pub http_addr: String,
    /// The monitoring port (host:port).
    pub monitoring: String,
}

impl Served {
    /// Connections in /debug/connections.
    pub async fn connections(&self) -> usize {
        super::http::get(&self.http_addr, "/debug/connections")
            .await
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    }

    /// The Prometheus text of /metrics.
    pub async fn metrics(&self) -> String {
        super::http::get(&self.monitoring, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Resident memory of `pid`, in MB.
pub(super) fn rss_mb(pid: u32) -> f64 {
    sample(pid, Duration::ZERO, 0).rss_mb
}

/// Starts `meshd serve` on `config` (log in `dir`/meshd.log) and waits until it is ready.
/// Its five ports are chosen below Linux's ephemeral range (32768 and up), where the
/// outgoing connections of whatever else runs on the machine take theirs. If one is
/// taken anyway, meshd exits at once, and another five are tried, up to five times.
pub(super) async fn start_meshd(dir: &Path, config: &Path) -> Result<Served, String> {
    let mut last = String::new();
    for attempt in 0..5u32 {
        let slot = (std::process::id() + attempt * 211) % 1000;
        let base = 20_000 + slot as u16 * 8;
        match start_meshd_at(dir, config, base).await {
            Ok(s) => return Ok(s),
            Err((e, retry)) if retry => last = e,
            Err((e, _)) => return Err(e),
        }
    }
    Err(last)
}

/// One attempt of [`start_meshd`] on ports `base`..`base + 4`; the error says whether
/// a port was taken (worth another try).
async fn start_meshd_at(dir: &Path, config: &Path, base: u16) -> Result<Served, (String, bool)> {
    let (grpc, http) = (base, base + 1);
    let log_path = dir.join("meshd.log");
    let log = match std::fs::File::create(&log_path) {
        Ok(f) => f,
        Err(e) => return Err((e.to_string(), false)),
    };
    let mut child = match tokio::process::Command::new(meshd_bin())
        .arg("serve")
        .arg("--config-dir")
        .arg(config)
        .arg("--ca-dir")
        .arg(dir.join("ca"))
        .args(["--listen-address", "127.0.0.1"])
        .args(["--grpc-port", &grpc.to_string()])
        .args(["--http-port", &http.to_string()])
        .args(["--monitoring-port", &(base + 2).to_string()])
        .args(["--secure-grpc-port", &(base + 3).to_string()])
        .args(["--webhook-port", &(base + 4).to_string()])
        .stdout(
            log.try_clone()
                .map(std::process::Stdio::from)
                .unwrap_or(std::process::Stdio::null()),
        )
        .stderr(std::process::Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Err((
                format!("cannot start {}: {e}", meshd_bin().display()),
                false,
            ));
        }
    };
    let pid = child.id().unwrap_or(0);
    let http_addr = format!("127.0.0.1:{http}");
    let mut ready = false;
    for _ in 0..200 {
        if matches!(super::http::get(&http_addr, "/ready").await, Ok((200, _))) {
            ready = true;
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let taken = log.contains("Address already in use");
            return Err((
                format!(
                    "meshd exited ({status}) before it was ready{} (log in {})",
                    if taken { ": a port was taken" } else { "" },
                    dir.display()
                ),
                taken,
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        return Err((
            format!("meshd did not become ready (log in {})", dir.display()),
            false,
        ));
    }
    Ok(Served {
        child,
        pid,
        grpc: format!("http://127.0.0.1:{grpc}"),
        http_addr,
        monitoring: format!("127.0.0.1:{}", base + 2),
    })
}

/// Runs the soak for `secs` seconds with `m` proxies; returns the report and whether it
/// passed.
pub async fn run(secs: u64, m: usize) -> (String, bool) {
    let dir = std::env::temp_dir().join(format!("meshd-soak-{}", std::process::id()));
    let config = dir.join("config");
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&config) {
        return (format!("soak: {e}"), false);
    }
    write(&config, "mesh.yaml", &mesh_text());
    write(&config, "vs.yaml", &vs_text(0));
    write(&config, "pods.yaml", &pods_text(0));
    let Served {
        mut child,
        pid,
        grpc: addr,
        http_addr,
        ..
    } = match start_meshd(&dir, &config).await {
        Ok(s) => s,
        Err(e) => return (format!("soak: {e}"), false),
    };
    let (churn, release) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(false)),
    );
    let clients: Vec<_> = (0..m)
        .map(|i| tokio::spawn(client(addr.clone(), i, churn.clone(), release.clone())))
        .collect();

    let start = Instant::now();
    let mut samples = Vec::new();
    let mut tick = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tick += 1;
        write(&config, "vs.yaml", &vs_text(tick));
        write(&config, "pods.yaml", &pods_text(tick));
        if tick.is_multiple_of(5) {
            let conns = super::http::get(&http_addr, "/debug/connections")
                .await
                .ok()
                .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                .and_then(|v| v.as_array().map(Vec::len))
                .unwrap_or(0);
            samples.push(sample(pid, start.elapsed(), conns));
        }
    }
    // Edits stop; the proxies stop reconnecting, keep their streams and must all have
    // ACKed the last push.
    churn.store(false, Ordering::Relaxed);
    // First, meshd has the last edit in force (its VirtualService weights in /debug/configz).
    let w = 50 + (tick % 40);
    let last = [format!("\"weight\":{w}"), format!("\"weight\":{}", 100 - w)];
    let mut has_last = false;
    for _ in 0..100 {
        if let Ok((200, body)) = super::http::get(&http_addr, "/debug/configz").await
            && last.iter().all(|l| body.contains(l.as_str()))
        {
            has_last = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut synced = (0, 0);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok((200, body)) = super::http::get(&http_addr, "/debug/syncz").await {
            synced = in_sync(&serde_json::from_str(&body).unwrap_or_default());
            if synced == (m, m) {
                break;
            }
        }
    }
    let end = sample(pid, start.elapsed(), synced.1);
    release.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let _ = child.kill().await;
    let log_text = strip_ansi(&std::fs::read_to_string(dir.join("meshd.log")).unwrap_or_default());
    let errors: Vec<&str> = log_text.lines().filter(|l| l.contains(" ERROR ")).collect();
    let warnings = log_text.lines().filter(|l| l.contains(" WARN ")).count();

    let warm = samples
        .iter()
        .find(|s| s.at >= Duration::from_secs(secs / 4))
        .or(samples.first());
    let mut failures = Vec::new();
    // meshd serve's runtime: a worker per core, at most 4 x cores + 8 blocking threads,
    // and a few of its own (main, the file watcher).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let max_threads = 5 * cores + 12;
    if !has_last {
        failures.push(format!("meshd never had the last edit in force ({last:?})"));
    }
    if synced != (m, m) {
        failures.push(format!(
            "{} of {} connections in sync, {m} expected",
            synced.0, synced.1
        ));
    }
    if !errors.is_empty() {
        failures.push(format!(
            "{} ERROR lines, first: {}",
            errors.len(),
            errors[0]
        ));
    }
    if let Some(w) = warm {
        if end.rss_mb > w.rss_mb * 1.5 + 20.0 {
            failures.push(format!(
                "RSS grew from {:.0} MB to {:.0} MB",
                w.rss_mb, end.rss_mb
            ));
        }
        if end.threads > max_threads {
            failures.push(format!("{} threads (at most {max_threads})", end.threads));
        }
        if end.fds > w.fds + 10 {
            failures.push(format!(
                "open descriptors grew from {} to {}",
                w.fds, end.fds
            ));
        }
    }
    let series: Vec<String> = samples
        .iter()
        .chain(std::iter::once(&end))
        .map(|s| {
            format!(
                "{:.0}s {:.0}MB {}fd {}thr {}conn",
                s.at.as_secs_f64(),
                s.rss_mb,
                s.fds,
                s.threads,
                s.connections
            )
        })
        .collect();
    super::report(
        "soak",
        json!({"seconds": secs, "proxies": m, "edits": tick,
               "warm_rss_mb": warm.map(|w| w.rss_mb), "end_rss_mb": end.rss_mb,
               "warm_fds": warm.map(|w| w.fds), "end_fds": end.fds,
               "in_sync": synced.0, "connections": synced.1,
               "error_lines": errors.len(), "warn_lines": warnings,
               "failures": failures}),
    );
    let passed = failures.is_empty();
    if passed {
        let _ = std::fs::remove_dir_all(&dir);
    }
    (
        format!(
            "soak {secs}s, {m} proxies reconnecting every 5-15 s, {tick} edits (a VirtualService and {CHURNED_PODS} pods per second): {}; end: {}/{} proxies in sync; {} ERROR, {warnings} WARN log lines; {}",
            series.join(", "),
            synced.0,
            synced.1,
            errors.len(),
            if passed {
                "passed".to_string()
            } else {
                format!("FAILED: {} (kept {})", failures.join("; "), dir.display())
            }
        ),
        passed,
    )
}
