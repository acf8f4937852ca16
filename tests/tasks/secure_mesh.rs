//! Support for the security tasks (authorization_*.rs, mutual_tls_migration.rs): pods whose
//! real Envoy sidecars authenticate to meshd on 15012 with service-account tokens and get
//! their workload certificates from meshd's CA over SDS, so that sidecars talk mTLS and
//! policies see SPIFFE principals; small applications whose answers a handler chooses.
//!
//! There are no iptables per pod here (all pods share the test's network namespace), so a
//! sidecar binds for real: its inbound port on the pod address (Sidecar `ingress`,
//! `captureMode: NONE`) hands requests to the application at [`app_addr`], and its egress
//! listener at [`egress_addr`] is where the application sends outbound calls, with the
//! service name in the Host header. At most one pod per test may instead be `intercepted`
//! (istio-iptables style, nftables to 15006): 15006 can be bound only once per namespace.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::*;
use crate::tokens::TokenIssuer;

/// One pod of a task.
pub struct Workload {
    pub pod: &'static str,
    pub namespace: &'static str,
    pub ip: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
    pub service_account: &'static str,
    /// Whether an Envoy sidecar was injected (a `legacy` pod has none).
    pub sidecar: bool,
    /// Ports the application serves, (number, protocol), through the sidecar's bound
    /// inbound listener on the pod address.
    pub inbound: &'static [(u16, &'static str)],
    /// Ports of the sidecar's egress listener at [`egress_addr`], (number, protocol).
    pub egress: &'static [(u16, &'static str)],
    /// Inbound capture by nftables to the sidecar's 15006 instead of bound listeners.
    pub intercepted: bool,
}

/// The address of the application of the pod at `pod_ip`: 127.0.0.N → 127.0.1.N.
pub fn app_ip(pod_ip: &str) -> String {
    shifted(pod_ip, 1)
}

/// Where the application of the pod at `pod_ip` listens on `port`.
pub fn app_addr(pod_ip: &str, port: u16) -> String {
    format!("{}:{port}", app_ip(pod_ip))
}

/// Where the sidecar of the pod at `pod_ip` takes its application's outbound calls:
/// 127.0.0.N → 127.0.2.N.
pub fn egress_addr(pod_ip: &str, port: u16) -> String {
    format!("{}:{port}", shifted(pod_ip, 2))
}

fn shifted(ip: &str, third: u8) -> String {
    let last = ip.rsplit('.').next().expect("an IPv4 address");
    format!("127.0.{third}.{last}")
}

fn flow_map(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Workload {
    /// Its labels as the injector leaves them (`security.istio.io/tlsMode: istio` on a pod
    /// with a sidecar: auto mTLS sends mTLS only to such endpoints).
    fn pod_labels(&self) -> Vec<(&'static str, &'static str)> {
        let mut l = self.labels.to_vec();
        if self.sidecar {
            l.push(("security.istio.io/tlsMode", "istio"));
        }
        l
    }

    /// The Pod, as the kubelet reports it (Running, with its address).
    pub fn pod_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {{{}}}\nspec: {{serviceAccountName: {}, containers: [{{name: app, image: app}}]}}\nstatus: {{phase: Running, podIP: {}}}\n",
            self.pod,
            self.namespace,
            flow_map(&self.pod_labels()),
            self.service_account,
            self.ip
        )
    }

    /// The Sidecar that makes its proxy bind its listeners for real (see the module doc);
    /// empty for an intercepted pod without egress, or a pod without a sidecar.
    pub fn sidecar_yaml(&self) -> String {
        let ingress = !self.inbound.is_empty() && !self.intercepted;
        if !self.sidecar || (!ingress && self.egress.is_empty()) {
            return String::new();
        }
        let mut s = format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {}, namespace: {}}}\nspec:\n  workloadSelector:\n    labels: {{{}}}\n",
            self.pod,
            self.namespace,
            flow_map(self.labels)
        );
        if ingress {
            s.push_str("  ingress:\n");
            for (port, protocol) in self.inbound {
                s.push_str(&format!(
                    "  - port: {{number: {port}, protocol: {protocol}, name: {}-{port}}}\n    captureMode: NONE\n    defaultEndpoint: {}\n",
                    protocol.to_ascii_lowercase(),
                    app_addr(self.ip, *port)
                ));
            }
        }
        if self.egress.is_empty() {
            // The application calls nothing: no outbound listeners (a catch-all scope
            // would bind every service port on 127.0.0.1, once per proxy).
            s.push_str("  egress:\n  - hosts: [\"~/*\"]\n");
        } else {
            s.push_str("  egress:\n");
            for (port, protocol) in self.egress {
                s.push_str(&format!(
                    "  - port: {{number: {port}, protocol: {protocol}, name: {}-{port}}}\n    bind: {}\n    captureMode: NONE\n    hosts: [\"*/*\"]\n",
                    protocol.to_ascii_lowercase(),
                    shifted(self.ip, 2)
                ));
            }
        }
        s
    }

    /// The SPIFFE identity its certificate carries.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// meshd serving a task's folder, with a sidecar per pod (and optionally Istio's ingress
/// gateway). Fields drop in order: proxies, meshd, then the folders.
pub struct Mesh {
    pub envoys: Vec<(String, Envoy)>,
    pub meshd: Meshd,
    pub issuer: TokenIssuer,
    pub config: TempDir,
    pub dir: TempDir,
}

/// The ingress gateway's pod name in [`Mesh::envoy`]; it serves its Gateway ports on
/// 127.0.0.1 (HTTP 8080 for Bookinfo's gateway).
pub const GATEWAY: &str = "istio-ingressgateway";

impl Mesh {
    /// Writes the pods, their Sidecars and `files` (name, text) into a fresh folder, starts
    /// meshd on it and a proxy per pod with a sidecar (and the ingress gateway if asked).
    /// None when this machine cannot run it (skipped, or failed under MESHD_REQUIRE_ENVOY).
    pub fn start(
        tag: &str,
        pods: &[&Workload],
        files: &[(&str, &str)],
        gateway: bool,
    ) -> Option<Mesh> {
        let intercepted: Vec<&&Workload> = pods.iter().filter(|w| w.intercepted).collect();
        assert!(intercepted.len() <= 1, "15006 can be bound only once");
        let (dir, config) = if intercepted.is_empty() {
            if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
                return None;
            }
            if !isolate() {
                return None;
            }
            (TempDir::new(tag), TempDir::new(&format!("{tag}-config")))
        } else {
            intercepting_test(tag)?
        };
        config.write(
            "pods.yaml",
            &pods
                .iter()
                .map(|w| w.pod_yaml())
                .collect::<Vec<_>>()
                .join("---\n"),
        );
        config.write(
            "sidecars.yaml",
            &pods
                .iter()
                .map(|w| w.sidecar_yaml())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("---\n"),
        );
        for (name, text) in files {
            config.write(name, text);
        }
        // The gateway wants 8080: meshd's debug port moves.
        let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 18080);
        let root = dir.path().join("ca/root-cert.pem");
        let mut envoys = Vec::new();
        if gateway {
            let sa = "istio-ingressgateway-service-account";
            let envoy = Envoy::start_with(
                &NodeSpec {
                    kind: "router",
                    ip: "127.0.0.2",
                    pod: GATEWAY,
                    namespace: "istio-system",
                    labels: &[("istio", "ingressgateway"), ("app", "istio-ingressgateway")],
                    service_account: sa,
                },
                &EnvoyOpts {
                    admin_port: 15000,
                    interception: "NONE",
                    xds: Xds::Tls {
                        root: root.clone(),
                        token: issuer.token("istio-system", sa, "istio-ca", 3600, "k1"),
                    },
                    ..Default::default()
                },
                dir.path(),
            );
            envoys.push((GATEWAY.to_string(), envoy));
        }
        for (i, w) in pods.iter().filter(|w| w.sidecar).enumerate() {
            let labels = w.pod_labels();
            let envoy = Envoy::start_with(
                &NodeSpec {
                    kind: "sidecar",
                    ip: w.ip,
                    pod: w.pod,
                    namespace: w.namespace,
                    labels: &labels,
                    service_account: w.service_account,
                },
                &EnvoyOpts {
                    admin_port: 15100 + 100 * i as u16,
                    interception: if w.intercepted { "REDIRECT" } else { "NONE" },
                    gid: w.intercepted.then_some(PROXY_GID),
                    xds: Xds::Tls {
                        root: root.clone(),
                        token: issuer.token(w.namespace, w.service_account, "istio-ca", 3600, "k1"),
                    },
                    ..Default::default()
                },
                dir.path(),
            );
            if w.intercepted {
                intercept_inbound(w.ip);
            }
            envoys.push((w.pod.to_string(), envoy));
        }
        Some(Mesh {
            envoys,
            meshd,
            issuer,
            config,
            dir,
        })
    }

    pub fn envoy(&self, pod: &str) -> &Envoy {
        self.envoys
            .iter()
            .find(|(p, _)| p == pod)
            .map(|(_, e)| e)
            .unwrap_or_else(|| panic!("no proxy for {pod}"))
    }

    /// The sum of the proxy's stats whose names end with `suffix`.
    pub fn stat(&self, pod: &str, suffix: &str) -> u64 {
        self.envoy(pod)
            .stats("")
            .iter()
            .filter(|(k, _)| k.ends_with(suffix))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Applies one configuration file (like `kubectl apply -f`) and returns once `pod`'s
    /// proxy has accepted a new listener configuration: for steps whose effect the traffic
    /// alone cannot show (a request refused before and after).
    pub fn apply_and_wait_lds(&self, pod: &str, name: &str, text: &str) {
        let before = self.stat(pod, "listener_manager.lds.update_success");
        self.config.write(name, text);
        wait_for(
            &format!("{pod} to accept the listeners after {name}"),
            Duration::from_secs(20),
            || (self.stat(pod, "listener_manager.lds.update_success") > before).then_some(()),
        );
    }

    /// Every proxy accepted everything meshd sent it, and got its certificates.
    pub fn assert_accepted(&self) {
        for (pod, e) in &self.envoys {
            let bad: Vec<_> = e
                .stats("update_rejected")
                .into_iter()
                .filter(|(_, v)| *v > 0)
                .collect();
            assert!(bad.is_empty(), "{pod} rejected config: {bad:?}");
        }
        let syncz = self.meshd.get_json("/debug/syncz");
        for conn in syncz.as_array().expect("list") {
            let sds = &conn["types"]["type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"];
            assert!(!sds["sent_nonce"].is_null(), "secrets were sent: {conn}");
            assert_eq!(
                sds["sent_nonce"], sds["acked_nonce"],
                "secrets ACKed: {conn}"
            );
        }
    }
}

/// A request as an application saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 application whose answer (status, body) `handler` chooses per request; each
/// connection has its own thread and may carry many requests (Envoy pools them).
pub struct App {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl App {
    pub fn start(
        addr: &str,
        handler: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static,
    ) -> App {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("application on {addr}: {e}"));
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handler = Arc::new(handler);
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let h = handler.clone();
                        std::thread::spawn(move || serve(s, &*h));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        App {
            stop,
            thread: Some(thread),
        }
    }
}

fn serve(mut s: TcpStream, handler: &dyn Fn(&Request) -> (u16, String)) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end + 4);
        let mut lines = head.lines();
        let first: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let req = Request {
            method: first.first().unwrap_or(&"GET").to_string(),
            path: first.get(1).unwrap_or(&"/").to_string(),
            headers,
        };
        // A body, if any, is read and ignored.
        let len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..len);
        let (status, body) = handler(&req);
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One HTTP/1.1 request with any method over a fresh connection (an empty body).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let sa: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\n");
    if method != "GET" && method != "HEAD" {
        req.push_str("content-length: 0\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let raw = read_response(&mut s)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP response: {text:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        crate::https::dechunk(body)
    } else {
        body.to_string()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// One response's bytes: to the end of the body its head announces, without waiting for
/// the server to close (Envoy waits up to a second for the client to close first after a
/// local reply: its delayed close).
fn read_response(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            let complete = match length {
                Some(n) => raw.len() >= end + 4 + n,
                None if head.contains("transfer-encoding: chunked") => {
                    raw[end..].windows(5).any(|w| w == b"0\r\n\r\n")
                }
                None => false,
            };
            if complete {
                return Ok(raw);
            }
        }
        match s.read(&mut chunk)? {
            0 => return Ok(raw),
            n => raw.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The status of a request, or 0 when no HTTP answer came back (curl's `000`).
pub fn status(r: std::io::Result<HttpResponse>) -> u16 {
    r.map(|r| r.status).unwrap_or(0)
}
