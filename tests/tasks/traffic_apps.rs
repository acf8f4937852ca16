//! Small stand-ins for the sample applications istio.io's tasks run (Bookinfo, httpbin,
//! tcp-echo; the HTTP ones on the harness's [`HttpApp`]), and HTTP clients with their own
//! timeouts, as the tasks' apps and tools (productpage's Python `requests`, fortio, curl)
//! have. Each stand-in behaves like the real application in the ways the tasks depend on;
//! what that is is said where each is defined.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_string())
}

/// Reads one response from `s` (bytes already read in `buf`), by `deadline`.
fn read_response(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> std::io::Result<HttpResponse> {
    let mut chunk = [0u8; 4096];
    let mut fill = |s: &mut TcpStream, buf: &mut Vec<u8>| -> std::io::Result<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out("no answer within the client's timeout"));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                Err(timed_out("no answer within the client's timeout"))
            }
            Err(e) => Err(e),
        }
    };
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if !fill(s, buf)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed before a response",
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end + 4);
    let (status, headers) = parse_head(&head)?;
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < len {
            if !fill(s, buf)? {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the connection closed inside the body",
                ));
            }
        }
        let body = String::from_utf8_lossy(&buf[..len]).to_string();
        buf.drain(..len);
        body
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let end = loop {
            if let Some(p) = buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                break p + 5;
            }
            if !fill(s, buf)? {
                break buf.len();
            }
        };
        let body = crate::https::dechunk(&String::from_utf8_lossy(&buf[..end]));
        buf.drain(..end);
        body
    } else {
        while fill(s, buf)? {}
        let body = String::from_utf8_lossy(buf).to_string();
        buf.clear();
        body
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// A request's head; a method other than GET and HEAD sends an empty body.
fn request_text(method: &str, path: &str, headers: &[(&str, &str)], close: bool) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if close {
        req.push_str("Connection: close\r\n");
    }
    if method != "GET" && method != "HEAD" {
        req.push_str("content-length: 0\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// One request with `method` to `addr` over a fresh connection (`headers` name the Host),
/// given up after `timeout` as an application's HTTP client gives up (error kind
/// `TimedOut`). It is over once the body its head announces is in, without waiting for
/// the server to close (Envoy waits up to a second for the client to close first after a
/// local reply: its delayed close).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    let deadline = Instant::now() + timeout;
    let sa: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let mut s = TcpStream::connect_timeout(&sa, timeout)?;
    s.write_all(request_text(method, path, headers, true).as_bytes())?;
    read_response(&mut s, &mut Vec::new(), deadline)
}

/// One GET to `addr` (a fresh connection) with `Host: host`, as [`request`].
pub fn call(
    addr: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    let mut h = vec![("Host", host)];
    h.extend_from_slice(headers);
    request(addr, "GET", path, &h, timeout)
}

/// A keep-alive HTTP/1.1 client connection, as a load generator (fortio) holds one per
/// concurrent caller; it reconnects when the other side closes.
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<(TcpStream, Vec<u8>)>,
}

impl KeepAlive {
    pub fn new(addr: &str) -> KeepAlive {
        KeepAlive {
            addr: addr.parse().expect("address"),
            conn: None,
        }
    }

    pub fn get(&mut self, host: &str, path: &str) -> std::io::Result<HttpResponse> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            self.conn = Some((s, Vec::new()));
        }
        let (s, buf) = self.conn.as_mut().expect("connected");
        let sent = s.write_all(request_text("GET", path, &[("Host", host)], false).as_bytes());
        let reply =
            sent.and_then(|_| read_response(s, buf, Instant::now() + Duration::from_secs(10)));
        match &reply {
            Ok(r) if r.header("connection") != Some("close") => {}
            _ => self.conn = None,
        }
        reply
    }
}

// ---------------------------------------------------------------------------------------
// Bookinfo
// ---------------------------------------------------------------------------------------

/// Where productpage's sidecar listens for the application's outbound calls.
pub const PRODUCTPAGE_EGRESS: &str = "127.0.0.1:9080";

/// The reviews pods that call ratings (v2 with black stars, v3 with red): their
/// application's own address (behind the sidecar, which owns the pod address), the
/// address their sidecar listens on for the application's outbound calls, the sidecar's
/// admin port, and reviews' hard-coded timeout for ratings calls (LibertyRestEndpoint:
/// 10 s for black stars, 2.5 s otherwise).
pub struct ReviewsPod {
    pub version: &'static str,
    pub color: &'static str,
    pub app: &'static str,
    pub egress: &'static str,
    pub admin: u16,
    pub ratings_timeout: Duration,
}

pub const RATING_REVIEWS: [ReviewsPod; 2] = [
    ReviewsPod {
        version: "v2",
        color: "black",
        app: "127.0.1.13:9080",
        egress: "127.0.2.13:9080",
        admin: 15100,
        ratings_timeout: Duration::from_millis(10_000),
    },
    ReviewsPod {
        version: "v3",
        color: "red",
        app: "127.0.1.14:9080",
        egress: "127.0.2.14:9080",
        admin: 15200,
        ratings_timeout: Duration::from_millis(2_500),
    },
];

/// The messages Bookinfo shows.
pub const REVIEWS_UNAVAILABLE: &str =
    "Sorry, product reviews are currently unavailable for this book.";
pub const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";

/// One ratings call a reviews pod made: the `end-user` it carried, the status it got (0:
/// none, the client gave up or the call failed) and how long it took.
#[derive(Debug, Clone)]
pub struct RatingsCall {
    pub user: String,
    pub status: u16,
    pub took: Duration,
}

/// The Sidecars that stand in for iptables here (test plumbing, not part of any task):
/// each application reaches its sidecar on a bound egress address, and the reviews pods
/// that call ratings have a sidecar owning the pod address in front of the application.
fn bookinfo_sidecars() -> String {
    let mut s = format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: productpage, namespace: default}}\nspec:\n  workloadSelector: {{labels: {{app: productpage}}}}\n  egress:\n  - port: {{number: 9080, protocol: HTTP, name: http}}\n    bind: {}\n    captureMode: NONE\n    hosts: [\"./*\"]\n",
        PRODUCTPAGE_EGRESS.split(':').next().expect("ip")
    );
    for r in &RATING_REVIEWS {
        s.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: reviews-{v}, namespace: default}}\nspec:\n  workloadSelector: {{labels: {{app: reviews, version: {v}}}}}\n  ingress:\n  - port: {{number: 9080, protocol: HTTP, name: http}}\n    captureMode: NONE\n    defaultEndpoint: {app}\n  egress:\n  - port: {{number: 9080, protocol: HTTP, name: http}}\n    bind: {bind}\n    captureMode: NONE\n    hosts: [\"./*\"]\n",
            v = r.version,
            app = r.app,
            bind = r.egress.split(':').next().expect("ip"),
        ));
    }
    s
}

/// `kubectl apply` of a sample's `manifest`, and the pods of its Deployments at `ips`
/// ([`pods_of_deployments`], in `pods.yaml`).
pub fn deploy(config: &TempDir, manifest: &str, ips: &[(&str, &str)]) {
    kubectl_apply(config, manifest);
    config.write("pods.yaml", &pods_of_deployments(manifest, ips));
}

/// Pods for the Deployments of a manifest (what the Deployment controller and kubelet
/// would make): each Deployment's pod template labels and service account, named after
/// the Deployment, at the address `ips` gives it.
pub fn pods_of_deployments(manifest: &str, ips: &[(&str, &str)]) -> String {
    let mut out = Vec::new();
    for doc in meshd::sources::yaml::parse_documents(manifest) {
        let doc = doc.expect("the manifest parses");
        let v = &doc.value;
        if v["kind"] != "Deployment" {
            continue;
        }
        let name = v["metadata"]["name"].as_str().expect("Deployment name");
        let ip = ips
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, ip)| *ip)
            .unwrap_or_else(|| panic!("no address for Deployment {name}"));
        let template = &v["spec"]["template"];
        let pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": v["metadata"]["namespace"].as_str().unwrap_or("default"),
                "labels": template["metadata"]["labels"],
            },
            "spec": {
                "serviceAccountName": template["spec"]["serviceAccountName"],
                "containers": template["spec"]["containers"],
            },
            "status": {"phase": "Running", "podIP": ip},
        });
        out.push(serde_json::to_string_pretty(&pod).expect("json"));
    }
    assert_eq!(out.len(), ips.len(), "one Deployment per pod address");
    out.join("\n---\n")
}

/// Writes the objects of `text` into the watched folder the way `kubectl apply` stores
/// them: one file per kind/namespace/name, so an object applied again replaces the
/// earlier one and the others stay.
pub fn kubectl_apply(config: &TempDir, text: &str) {
    for doc in meshd::sources::yaml::parse_documents(text) {
        let doc = doc.expect("the manifest parses");
        let v = &doc.value;
        let kind = v["kind"].as_str().expect("kind");
        let name = v["metadata"]["name"].as_str().expect("name");
        let ns = v["metadata"]["namespace"].as_str().unwrap_or("default");
        config.write(
            &format!("{}-{ns}-{name}.yaml", kind.to_ascii_lowercase()),
            &serde_json::to_string_pretty(v).expect("json"),
        );
    }
}

/// A Bookinfo page as the test's browser sees it: `details`, `reviews` (the answering pod
/// or the error text) and `stars` (the colour, `none`, or the ratings error), and how
/// long it took.
#[derive(Debug, Clone)]
pub struct Page {
    pub fields: BTreeMap<String, String>,
    pub took: Duration,
}

impl Page {
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map(String::as_str).unwrap_or("")
    }
}

/// Bookinfo with every application a stand-in, as the traffic-management tasks see it:
///
/// - productpage (productpage.py): `GET /productpage` calls details (3 s timeout) and
///   reviews (3 s timeout, tried twice: the "hard-coded retry" of the fault-injection and
///   request-timeouts tasks) through its sidecar, forwarding `end-user` (the logged-in
///   user; here the browser's own `end-user` header stands for the login).
/// - reviews (LibertyRestEndpoint.java): v1 answers without stars; v2 (black) and v3
///   (red) call ratings through their own sidecar, forwarding `end-user`, with a 10 s
///   (black) or 2.5 s (red) timeout, and show the stars on a 200 or "Ratings service is
///   currently unavailable" otherwise.
/// - details and ratings answer at once.
///
/// productpage, v2 and v3 of reviews have real Envoy sidecars; the browser reaches
/// productpage's application directly (the tasks' ingress gateway plays no part in them);
/// details, ratings and reviews-v1 call nothing, and are reached without a sidecar of
/// their own.
pub struct Bookinfo {
    pub productpage: Envoy,
    /// Sidecars of reviews v2 and v3, in [`RATING_REVIEWS`] order.
    pub reviews: Vec<Envoy>,
    pub meshd: Meshd,
    pub apps: BTreeMap<&'static str, HttpApp>,
    ratings_calls: Arc<Mutex<BTreeMap<&'static str, Vec<RatingsCall>>>>,
    pub config: TempDir,
    _dir: TempDir,
}

fn kv_body(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

fn parse_kv(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Bookinfo {
    /// Starts Bookinfo (platform/kube/bookinfo.yaml and networking/destination-rule-all.yaml
    /// from ../shared) with the networking `files` applied in order. None when this
    /// machine cannot run it (skipped, or failed under MESHD_REQUIRE_ENVOY=1).
    pub fn start(files: &[&str]) -> Option<Bookinfo> {
        let bookinfo = shared().join("bookinfo");
        if !bookinfo.exists() {
            crate::istio_data::skipped(&format!(
                "{} (Istio's Bookinfo manifests)",
                std::thread::current().name().unwrap_or("a task test")
            ));
            return None;
        }
        let (dir, config) = envoy_test("bookinfo-task")?;
        let manifest = std::fs::read_to_string(bookinfo.join("platform/kube/bookinfo.yaml"))
            .expect("bookinfo.yaml");
        config.write("bookinfo.yaml", &manifest);
        config.write("pods.yaml", &pods_of_deployments(&manifest, &BOOKINFO_PODS));
        config.write("sidecars.yaml", &bookinfo_sidecars());
        kubectl_apply(&config, &networking_text("destination-rule-all.yaml"));
        for f in files {
            kubectl_apply(&config, &networking_text(f));
        }

        let ratings_calls: Arc<Mutex<BTreeMap<&'static str, Vec<RatingsCall>>>> = Arc::default();
        let mut apps = BTreeMap::new();
        apps.insert(
            "productpage-v1",
            HttpApp::start("127.0.0.10:9080", productpage),
        );
        apps.insert(
            "details-v1",
            HttpApp::start("127.0.0.11:9080", |_: &Request| Answer::ok("details-v1")),
        );
        apps.insert(
            "ratings-v1",
            HttpApp::start("127.0.0.15:9080", |_: &Request| {
                Answer::ok("{\"id\": 0, \"ratings\": {\"Reviewer1\": 5, \"Reviewer2\": 4}}")
            }),
        );
        apps.insert(
            "reviews-v1",
            HttpApp::start("127.0.0.12:9080", |_: &Request| {
                Answer::ok(kv_body(&[("podname", "reviews-v1")]))
            }),
        );
        for (pod, r) in [
            ("reviews-v2", &RATING_REVIEWS[0]),
            ("reviews-v3", &RATING_REVIEWS[1]),
        ] {
            let calls = ratings_calls.clone();
            let (egress, timeout, color) = (r.egress, r.ratings_timeout, r.color);
            apps.insert(
                pod,
                HttpApp::start(r.app, move |req: &Request| {
                    if req.path == "/health" {
                        return Answer::ok("{\"status\": \"Reviews is healthy\"}");
                    }
                    let user = req.header("end-user").unwrap_or("").to_string();
                    let mut fwd = vec![];
                    if !user.is_empty() {
                        fwd.push(("end-user", user.as_str()));
                    }
                    let start = Instant::now();
                    let status = call(egress, "ratings:9080", "/ratings/0", &fwd, timeout)
                        .map(|r| r.status)
                        .unwrap_or(0);
                    if let Ok(mut c) = calls.lock() {
                        c.entry(pod).or_default().push(RatingsCall {
                            user: user.clone(),
                            status,
                            took: start.elapsed(),
                        });
                    }
                    let rating = if status == 200 {
                        color
                    } else {
                        RATINGS_UNAVAILABLE
                    };
                    Answer::ok(kv_body(&[("podname", pod), ("rating", rating)]))
                }),
            );
        }

        let meshd = Meshd::start(config.path(), dir.path(), &[]);
        let node = |pod: &'static str,
                    ip: &'static str,
                    labels: &'static [(&'static str, &'static str)],
                    sa: &'static str| NodeSpec {
            kind: "sidecar",
            ip,
            pod,
            namespace: "default",
            labels,
            service_account: sa,
        };
        let productpage_envoy = Envoy::start_with(
            &node(
                "productpage-v1",
                "127.0.0.10",
                &[("app", "productpage"), ("version", "v1")],
                "bookinfo-productpage",
            ),
            &EnvoyOpts::default(),
            dir.path(),
        );
        let mut reviews = Vec::new();
        for (r, ip, labels) in [
            (
                &RATING_REVIEWS[0],
                "127.0.0.13",
                &[("app", "reviews"), ("version", "v2")],
            ),
            (
                &RATING_REVIEWS[1],
                "127.0.0.14",
                &[("app", "reviews"), ("version", "v3")],
            ),
        ] {
            let pod = if r.version == "v2" {
                "reviews-v2"
            } else {
                "reviews-v3"
            };
            reviews.push(Envoy::start_with(
                &node(pod, ip, labels, "bookinfo-reviews"),
                &EnvoyOpts {
                    admin_port: r.admin,
                    interception: "NONE",
                    ..Default::default()
                },
                dir.path(),
            ));
        }
        let b = Bookinfo {
            productpage: productpage_envoy,
            reviews,
            meshd,
            apps,
            ratings_calls,
            config,
            _dir: dir,
        };
        // Every sidecar routes: productpage's to each service, reviews' to ratings, and
        // reviews' inbound to its application.
        wait_for(
            "Bookinfo's sidecars to route",
            Duration::from_secs(20),
            || {
                let ok =
                    |r: std::io::Result<HttpResponse>| r.ok().filter(|r| r.status == 200).is_some();
                let through_productpage = ["details:9080", "reviews:9080", "ratings:9080"]
                    .iter()
                    .all(|h| ok(b.via_productpage(h, "/", &[], Duration::from_secs(2))));
                let through_reviews = RATING_REVIEWS.iter().all(|r| {
                    ok(call(
                        r.egress,
                        "ratings:9080",
                        "/ratings/0",
                        &[],
                        Duration::from_secs(2),
                    ))
                });
                let inbound = ["127.0.0.13:9080", "127.0.0.14:9080"].iter().all(|a| {
                    ok(call(
                        a,
                        "reviews:9080",
                        "/health",
                        &[],
                        Duration::from_secs(2),
                    ))
                });
                (through_productpage && through_reviews && inbound).then_some(())
            },
        );
        Some(b)
    }

    /// `kubectl apply -f samples/bookinfo/networking/NAME`.
    pub fn apply(&self, name: &str) {
        kubectl_apply(&self.config, &networking_text(name));
    }

    /// `kubectl apply` of a manifest the task gives inline.
    pub fn apply_text(&self, text: &str) {
        kubectl_apply(&self.config, text);
    }

    /// The product page, as a browser logged in as `user` (or not logged in) sees it.
    pub fn page(&self, user: Option<&str>) -> Page {
        let headers: Vec<(&str, &str)> = user.map(|u| ("end-user", u)).into_iter().collect();
        let start = Instant::now();
        let r = call(
            "127.0.0.10:9080",
            "productpage:9080",
            "/productpage",
            &headers,
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("GET /productpage: {e}"));
        assert_eq!(r.status, 200, "the product page always renders: {r:?}");
        Page {
            fields: parse_kv(&r.body),
            took: start.elapsed(),
        }
    }

    /// `n` product pages for `user`, counted by (reviews, stars).
    pub fn pages(&self, user: Option<&str>, n: usize) -> BTreeMap<(String, String), usize> {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let p = self.page(user);
            *out.entry((p.get("reviews").to_string(), p.get("stars").to_string()))
                .or_insert(0) += 1;
        }
        out
    }

    /// A call through productpage's sidecar, as productpage makes it.
    pub fn via_productpage(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> std::io::Result<HttpResponse> {
        call(PRODUCTPAGE_EGRESS, host, path, headers, timeout)
    }

    /// A ratings call through the sidecar of reviews `version` (v2 or v3), as that reviews
    /// pod makes it.
    pub fn ratings_via_reviews(
        &self,
        version: &str,
        user: Option<&str>,
        timeout: Duration,
    ) -> std::io::Result<HttpResponse> {
        let r = RATING_REVIEWS
            .iter()
            .find(|r| r.version == version)
            .expect("v2 or v3");
        let headers: Vec<(&str, &str)> = user.map(|u| ("end-user", u)).into_iter().collect();
        call(r.egress, "ratings:9080", "/ratings/0", &headers, timeout)
    }

    /// The ratings calls reviews `pod` made so far.
    pub fn ratings_calls(&self, pod: &str) -> Vec<RatingsCall> {
        self.ratings_calls
            .lock()
            .map(|c| c.get(pod).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    pub fn app(&self, pod: &str) -> &HttpApp {
        &self.apps[pod]
    }

    /// Every Envoy accepted every update meshd sent.
    pub fn assert_accepted(&self) {
        assert_envoy_accepted(&self.productpage);
        for e in &self.reviews {
            assert_envoy_accepted(e);
        }
    }
}

fn networking_text(name: &str) -> String {
    let p = shared().join("bookinfo/networking").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// productpage.py's handling of `/productpage` (getProductDetails, getProductReviews).
fn productpage(req: &Request) -> Answer {
    let user = req.header("end-user").unwrap_or("").to_string();
    let mut fwd = vec![];
    if !user.is_empty() {
        fwd.push(("end-user", user.as_str()));
    }
    let three = Duration::from_secs(3);
    let details = match call(
        PRODUCTPAGE_EGRESS,
        "details:9080",
        "/details/0",
        &fwd,
        three,
    ) {
        Ok(r) if r.status == 200 => r.body,
        _ => "Sorry, product details are currently unavailable for this book.".to_string(),
    };
    // "Bug introduced explicitly for illustration in fault injection task": two tries.
    let mut reviews = None;
    for _ in 0..2 {
        match call(
            PRODUCTPAGE_EGRESS,
            "reviews:9080",
            "/reviews/0",
            &fwd,
            three,
        ) {
            Ok(r) if r.status == 200 => {
                reviews = Some(parse_kv(&r.body));
                break;
            }
            _ => {}
        }
    }
    let body = match reviews {
        Some(r) => kv_body(&[
            ("details", &details),
            (
                "reviews",
                r.get("podname").map(String::as_str).unwrap_or(""),
            ),
            (
                "stars",
                r.get("rating").map(String::as_str).unwrap_or("none"),
            ),
        ]),
        None => kv_body(&[("details", &details), ("reviews", REVIEWS_UNAVAILABLE)]),
    };
    Answer::ok(body)
}

// ---------------------------------------------------------------------------------------
// tcp-echo
// ---------------------------------------------------------------------------------------

/// samples/tcp-echo's server (src/main.go): every line a connection sends comes back as
/// `PREFIX LINE`.
pub struct TcpEcho {
    _server: Server,
}

impl TcpEcho {
    pub fn start(addr: &str, prefix: &str) -> TcpEcho {
        let prefix = prefix.to_string();
        let server = Server::start("tcp-echo", addr, move |s| {
            let prefix = prefix.clone();
            std::thread::spawn(move || echo_lines(s, &prefix));
        });
        TcpEcho { _server: server }
    }
}

fn echo_lines(mut s: TcpStream, prefix: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        while let Some(p) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=p).collect();
            let mut out = format!("{prefix} ").into_bytes();
            out.extend_from_slice(&line);
            if s.write_all(&out).is_err() {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

// ---------------------------------------------------------------------------------------
// httpbin
// ---------------------------------------------------------------------------------------

/// httpbin's `/get` and `/headers` (go-httpbin and kennethreitz/httpbin alike): the
/// request's headers back as JSON; anything else 404.
pub fn httpbin(req: &Request) -> Answer {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let path = req.path.split('?').next().unwrap_or("");
    let body = match path {
        "/headers" => serde_json::json!({ "headers": headers }),
        "/get" => serde_json::json!({
            "args": {},
            "headers": headers,
            "url": format!("http://{}{}", req.header("host").unwrap_or(""), req.path),
        }),
        _ => {
            return Answer {
                status: 404,
                headers: vec![],
                body: "404 page not found\n".into(),
            };
        }
    };
    Answer::ok(serde_json::to_string_pretty(&body).expect("json"))
}
