//! An HTTP backend whose answer the request path chooses, and which counts what it got:
//! `/delay/MS[/…]` answers 200 after MS milliseconds, `/status/CODE[/…]` answers CODE, anything
//! else 200. Every connection has its own thread, so a slow answer never holds up the
//! next request. The body is the backend's name.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use crate::harness::{Answer, HttpApp, Request, Server};

pub struct Scripted {
    /// Set: every answer has this status, whatever the path (a failing pod).
    pub fixed_status: Arc<AtomicU16>,
    app: HttpApp,
}

impl Scripted {
    pub fn start(name: &str, addr: &str) -> Scripted {
        let fixed_status = Arc::new(AtomicU16::new(0));
        let (fixed, name) = (fixed_status.clone(), name.to_string());
        let app = HttpApp::start(addr, move |req: &Request| {
            let mut status = match fixed.load(Ordering::Relaxed) {
                0 => 200u16,
                s => s,
            };
            // The number ends at the next `/`, so tests can tell paths apart: /status/503/a.
            let arg = |prefix: &str| -> Option<u64> {
                req.path
                    .strip_prefix(prefix)?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            };
            if let Some(ms) = arg("/delay/") {
                std::thread::sleep(Duration::from_millis(ms));
            } else if let Some(code) = arg("/status/") {
                status = u16::try_from(code).unwrap_or(500);
            }
            Answer {
                status,
                headers: vec![],
                body: name.clone(),
            }
        });
        Scripted { fixed_status, app }
    }

    /// How many requests for `path` arrived.
    pub fn count(&self, path: &str) -> usize {
        self.app
            .requests()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }
}

/// One Kubernetes service `NAME` (port 9080, named `http`) with pods answered by
/// [`Scripted`] backends, the `sleep` client's sidecar with an HTTP egress listener
/// bound on 127.0.0.1:9080, meshd serving it all, plus `extra` manifests.
/// Fields drop in order: processes first, then their folders.
pub struct OneService {
    pub envoy: crate::harness::Envoy,
    _meshd: crate::harness::Meshd,
    /// One per pod, in the order given.
    pub backends: Vec<Scripted>,
    pub config: crate::harness::TempDir,
    _dir: crate::harness::TempDir,
    host: String,
}

impl OneService {
    /// One pod, `NAME-v1` at `ip`. None when this machine cannot run Envoy tests.
    pub fn start(name: &str, ip: &str, extra: &str) -> Option<OneService> {
        OneService::start_pods(name, &[("v1", ip)], extra)
    }

    /// Pods `NAME-VERSION` (label `version: VERSION`) at their addresses.
    pub fn start_pods(name: &str, pods: &[(&str, &str)], extra: &str) -> Option<OneService> {
        use crate::harness::*;
        let (dir, config) = envoy_test(name)?;
        config.write(
            "service.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 9080}}]\n{}",
                pods.iter()
                    .map(|(v, ip)| format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-{v}, namespace: default, labels: {{app: {name}, version: {v}}}}}\nspec: {{containers: [{{name: app, image: app}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n"))
                    .collect::<String>()
            ),
        );
        config.write("extra.yaml", extra);
        config.write(
            "sleep.yaml",
            &sleep(
                "",
                9080,
                "HTTP",
                "127.0.0.1",
                &format!("./{name}.default.svc.cluster.local"),
                "",
            ),
        );
        let backends = pods
            .iter()
            .map(|(v, ip)| Scripted::start(&format!("{name}-{v}"), &format!("{ip}:9080")))
            .collect();
        let meshd = Meshd::start(config.path(), dir.path(), &[]);
        let envoy = start_sleep(&dir, &[("app", "sleep")]);
        let s = OneService {
            envoy,
            _meshd: meshd,
            backends,
            config,
            _dir: dir,
            host: format!("{name}.default.svc.cluster.local"),
        };
        wait_for(
            "routes through the sidecar",
            Duration::from_secs(20),
            || s.get("/", &[]).ok().filter(|r| r.status == 200),
        );
        Some(s)
    }

    /// A request through the sidecar's egress listener to the service.
    pub fn get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<crate::harness::HttpResponse> {
        let mut h = vec![("Host", self.host.as_str())];
        h.extend_from_slice(headers);
        crate::harness::http_get("127.0.0.1:9080", path, &h)
    }

    /// Envoy accepted every update meshd sent.
    pub fn assert_accepted(&self) {
        crate::harness::assert_envoy_accepted(&self.envoy);
    }

    /// Kills meshd with SIGKILL: no shutdown path runs, streams just break.
    pub fn kill_meshd(&mut self) {
        let _ = self._meshd.proc.child.kill();
        let _ = self._meshd.proc.child.wait();
    }

    /// A new meshd on the same folder, CA directory and ports (waits for /ready).
    pub fn restart_meshd(&mut self) {
        self._meshd = crate::harness::Meshd::start(self.config.path(), self._dir.path(), &[]);
    }

    pub fn meshd(&self) -> &crate::harness::Meshd {
        &self._meshd
    }
}

/// A backend for both kinds of traffic on one port: an HTTP request gets `200` with the
/// backend's name as the body; anything else is raw TCP, and each line comes back as
/// `NAME: LINE`.
pub struct Dual {
    _server: Server,
}

impl Dual {
    pub fn start(name: &str, addr: &str) -> Dual {
        let name = name.to_string();
        let server = Server::start(&format!("backend {name}"), addr, move |s| {
            let name = name.clone();
            std::thread::spawn(move || dual(s, &name));
        });
        Dual { _server: server }
    }
}

fn dual(mut s: std::net::TcpStream, name: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.contains(&b'\n') {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let http = ["GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS "]
        .iter()
        .any(|m| text.starts_with(m));
    if http {
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n{name}",
            name.len()
        );
        let _ = s.write_all(resp.as_bytes());
        return;
    }
    let line = text.lines().next().unwrap_or("");
    let _ = s.write_all(format!("{name}: {line}\n").as_bytes());
}

/// Sends one line of raw (non-HTTP) bytes to `addr` and returns the answer line, or why
/// there was none.
pub fn raw_line(addr: &str, line: &str) -> Result<String, String> {
    use std::net::{SocketAddr, TcpStream};
    let sa: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    let mut s =
        TcpStream::connect_timeout(&sa, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    while !out.contains(&b'\n') {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
    if out.is_empty() {
        return Err("closed without an answer".into());
    }
    Ok(String::from_utf8_lossy(&out).trim_end().to_string())
}

/// The `sleep` client: its pod at 127.0.0.40 (extra `labels`, YAML flow entries) and a
/// Sidecar with one egress listener bound for real on `bind` (no iptables here);
/// `policy` adds Sidecar spec lines.
pub(crate) fn sleep(
    labels: &str,
    port: u16,
    protocol: &str,
    bind: &str,
    hosts: &str,
    policy: &str,
) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: sleep, namespace: default, labels: {{app: sleep{labels}}}}}\nspec: {{containers: [{{name: sleep, image: curl}}]}}\nstatus: {{phase: Running, podIP: 127.0.0.40}}\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: sleep, namespace: default}}\nspec:\n  workloadSelector: {{labels: {{app: sleep}}}}\n{policy}  egress:\n  - port: {{number: {port}, protocol: {protocol}, name: {}}}\n    bind: {bind}\n    captureMode: NONE\n    hosts: [\"{hosts}\"]\n",
        protocol.to_ascii_lowercase()
    )
}

/// The sleep client's Envoy (its node labels as given).
pub(crate) fn start_sleep(
    dir: &crate::harness::TempDir,
    labels: &[(&str, &str)],
) -> crate::harness::Envoy {
    use crate::harness::{Envoy, EnvoyOpts, NodeSpec};
    Envoy::start_with(
        &NodeSpec {
            kind: "sidecar",
            ip: "127.0.0.40",
            pod: "sleep",
            namespace: "default",
            labels,
            service_account: "sleep",
        },
        &EnvoyOpts::default(),
        dir.path(),
    )
}
