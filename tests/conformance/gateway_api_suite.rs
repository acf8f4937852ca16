//! The Kubernetes Gateway API conformance suite, as far as it is transcribed
//! (tests/gateway_conformance/*.yaml): the suite's own base and test manifests (read from
//! its Go module, sigs.k8s.io/gateway-api/conformance, which scripts/test downloads), its
//! Deployments as Pods with an echo server each on loopback, a real Envoy as the Gateway's
//! proxy, and every request of each transcribed test with the answer the suite expects.
//! It prints passes per profile, the figures docs/COMPATIBILITY.md reports.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

mod kubernetes;

const VERSION: &str = "v1.5.1";
const INFRA: &str = "gateway-conformance-infra";
/// The mesh tests' namespace.
const MESH: &str = "gateway-conformance-mesh";
/// The proxy of Gateway `same-namespace`.
const GATEWAY_IP: &str = "127.0.0.30";

/// The suite's module: `MESHD_GATEWAY_API_CONFORMANCE`, else the Go module cache; None
/// after a SKIPPED line (a failure under MESHD_REQUIRE_ENVOY=1, where the test command has
/// downloaded it).
fn suite() -> Option<PathBuf> {
    let dir = std::env::var_os("MESHD_GATEWAY_API_CONFORMANCE")
        .map(PathBuf::from)
        .or_else(|| {
            let out = std::process::Command::new("go")
                .args(["env", "GOMODCACHE"])
                .output()
                .ok()?;
            let cache = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Some(
                PathBuf::from(cache).join(format!("sigs.k8s.io/gateway-api/conformance@{VERSION}")),
            )
        })
        .filter(|d| d.join("base/manifests.yaml").exists());
    if dir.is_none() {
        skip_or_fail(&format!(
            "the Gateway API conformance suite is not here (go mod download sigs.k8s.io/gateway-api/conformance@{VERSION}, or set MESHD_GATEWAY_API_CONFORMANCE)"
        ));
    }
    dir
}

fn documents(text: &str) -> Vec<Value> {
    meshd::sources::yaml::parse_documents(text)
        .into_iter()
        .filter_map(|d| d.ok().map(|d| d.value))
        .filter(|v| !v.is_null())
        .collect()
}

/// A manifest of the suite as a cluster would get it: the class it tests named. The TLS
/// backends' port 8443 becomes [`BACKEND_TLS_PORT`]: here the pods share the network
/// namespace of the gateway, whose listeners take 8443 too.
fn templated(text: &str) -> String {
    text.replace("{GATEWAY_CLASS_NAME}", "istio").replace(
        "targetPort: 8443",
        &format!("targetPort: {BACKEND_TLS_PORT}"),
    )
}

/// The suite's base manifests (namespaces, Gateways, Services, Deployments), templated.
fn base_manifests(suite: &std::path::Path) -> String {
    templated(&std::fs::read_to_string(suite.join("base/manifests.yaml")).expect("base manifests"))
}

/// One request of a transcribed test and what must answer it.
struct Case {
    /// Where the request is sent (the gateway's port 80 unless the mesh runner says).
    target: String,
    /// The mesh client's namespace (mesh tests).
    client: String,
    /// The Gateway whose proxy is asked (gateway tests), when not the test's.
    gateway: Option<String>,
    method: String,
    path: String,
    host: Option<String>,
    headers: Vec<(String, String)>,
    status: u16,
    backend: Option<String>,
    /// Headers the backend must have got (names compared case-insensitively, repeated
    /// headers joined with commas, as the suite's echo server reports them).
    seen: Vec<(String, String)>,
    /// Headers the backend must not have got.
    absent: Vec<String>,
    /// The path the backend must have got.
    seen_path: Option<String>,
    /// A redirect's expected target (`scheme`, `host`, `port`, `path`; what is not given
    /// is defaulted as the suite does).
    redirect: Option<Value>,
    /// The backend's namespace.
    namespace: String,
    /// Whether the namespace is checked even with no backend named (as the suite does
    /// when a test names only the namespace).
    namespace_only: bool,
    /// Headers the backend is asked to answer with (the suite's `X-Echo-Set-Header`).
    backend_sets: Vec<(String, String)>,
    /// Headers the client must get back (repeated ones joined with commas), and must not.
    response: Vec<(String, String)>,
    response_absent: Vec<String>,
    /// Other statuses that also answer (the suite's `StatusCodes`).
    statuses: Vec<u16>,
    /// Headers the client must get back with one of the values (whitespace ignored: the
    /// suite's `ValidHeaderValues` with `IgnoreWhitespace`).
    response_any: Vec<(String, Vec<String>)>,
    /// The gateway itself must answer, no backend (a CORS preflight).
    from_gateway: bool,
    /// Sent over TLS, the host as the server name, trusting the suite's certificates.
    https: bool,
    /// Over TLS, the generated Secret (of the infra namespace) whose certificate and key
    /// the client presents.
    client_cert: Option<String>,
    /// The request must get no HTTP answer (refused, or its handshake failed); with a
    /// client certificate, the server must have asked for it.
    fails: bool,
    /// The TLS server name the backend must have been reached by.
    seen_sni: Option<String>,
    /// The generated Secret whose certificate the backend must have seen from its client.
    seen_client_cert: Option<String>,
    /// Sent as HTTP/2 without TLS, with prior knowledge (the suite's H2C_PRIOR_KNOWLEDGE).
    h2c: bool,
    /// Over TLS, HTTP/2 negotiated by ALPN (the suite's H2 protocol).
    h2: bool,
    /// A gRPC call (HTTP/2 without TLS) of the echo service: 200 with grpc-status 0, the
    /// echo its message.
    grpc: bool,
    /// Over TLS, the server name to send when it is not the host.
    sni: Option<String>,
    /// A WebSocket dialled to the path, which must echo a text and a binary message (the
    /// suite's websocket.Dial and Message.Send/Receive); answers 101 when it does.
    websocket: bool,
}

/// The suite's generated certificates, as the runner that writes them made them (requests
/// over TLS trust their CAs, present their client certificates, copy their CA bundles).
static SUITE_CREDENTIALS: std::sync::OnceLock<Credentials> = std::sync::OnceLock::new();

/// The CAs a request over TLS trusts.
fn suite_roots() -> &'static str {
    SUITE_CREDENTIALS.get().map_or("", |c| c.roots.as_str())
}

/// A generated Secret of the infra namespace.
fn suite_secret(name: &str) -> Option<&'static (String, String)> {
    SUITE_CREDENTIALS
        .get()?
        .secrets
        .get(&format!("{INFRA}/{name}"))
}

/// The first certificate of a PEM text, as base64 DER (as the HTTPS echo reports its
/// client's certificates).
fn der_base64(pem: &str) -> Option<String> {
    use base64::Engine as _;
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(der.as_ref()))
}

/// A YAML map of strings as (name, value) pairs.
fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

fn cases(test: &Value) -> Vec<Case> {
    cases_of(&test["requests"])
}

/// The requests of a list (a test's, or one of its steps').
fn cases_of(requests: &Value) -> Vec<Case> {
    requests
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| Case {
            target: format!("{GATEWAY_IP}:{}", r["port"].as_u64().unwrap_or(80)),
            client: r["client"].as_str().unwrap_or(MESH).to_string(),
            gateway: r["gateway"].as_str().map(String::from),
            method: r["method"].as_str().unwrap_or("GET").to_string(),
            path: r["path"].as_str().unwrap_or("/").to_string(),
            headers: r["headers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            host: r["host"].as_str().map(String::from),
            status: r["status"].as_u64().map_or(200, |s| s as u16),
            backend: r["backend"].as_str().map(String::from),
            seen: r["seen"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    (
                        k.to_ascii_lowercase(),
                        v.as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
            absent: r["absent"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_ascii_lowercase))
                .collect(),
            seen_path: r["seen_path"].as_str().map(String::from),
            redirect: r.get("redirect").cloned(),
            namespace: r["namespace"].as_str().unwrap_or(INFRA).to_string(),
            namespace_only: r["backend"].is_null() && r["namespace"].is_string(),
            backend_sets: pairs(&r["backend_sets"]),
            response: pairs(&r["response"]),
            response_absent: r["response_absent"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_ascii_lowercase))
                .collect(),
            statuses: r["statuses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_u64().map(|s| s as u16))
                .collect(),
            response_any: r["response_any"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    let values = strings(v).into_iter().map(String::from).collect();
                    (k.clone(), values)
                })
                .collect(),
            from_gateway: r["from_gateway"] == true,
            https: r["https"] == true,
            client_cert: r["client_cert"].as_str().map(String::from),
            fails: r["fails"] == true,
            seen_sni: r["seen_sni"].as_str().map(String::from),
            seen_client_cert: r["seen_client_cert"].as_str().map(String::from),
            h2c: r["h2c"] == true,
            h2: r["h2"] == true,
            grpc: r["grpc"] == true,
            sni: r["sni"].as_str().map(String::from),
            websocket: r["websocket"] == true,
        })
        .collect()
}

/// What came back: status, headers (lower-case names), body.
type Reply = (u16, Vec<(String, String)>, String);

/// One request (any method) on a fresh connection.
fn request(case: &Case) -> std::io::Result<Reply> {
    // A `Host` among the headers replaces the URL's (as the suite's mesh client sends it).
    let host = case
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.as_str())
        .or(case.host.as_deref())
        .unwrap_or(GATEWAY_IP);
    let mut req = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n",
        case.method, case.path,
    );
    for (k, v) in case
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
    {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !case.backend_sets.is_empty() {
        let set: Vec<String> = case
            .backend_sets
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        req.push_str(&format!("X-Echo-Set-Header: {}\r\n", set.join(",")));
    }
    req.push_str("\r\n");
    if case.h2c || case.grpc || (case.https && case.h2) {
        return h2_request(case, host);
    }
    if case.websocket {
        return websocket_exchange(case, host);
    }
    let mut buf = Vec::new();
    if case.https {
        let roots = suite_roots();
        let addr: std::net::SocketAddr = case
            .target
            .parse()
            .map_err(|e| std::io::Error::other(format!("{}: {e}", case.target)))?;
        let name = case
            .sni
            .as_deref()
            .unwrap_or_else(|| host.split(':').next().unwrap_or(host));
        let client =
            match &case.client_cert {
                Some(secret) => Some(suite_secret(secret).ok_or_else(|| {
                    std::io::Error::other(format!("no generated Secret {secret}"))
                })?),
                None => None,
            };
        let (mut s, asked) = crate::https::connect_recording(
            addr,
            name,
            roots,
            client.map(|(c, k)| (c.as_str(), k.as_str())),
            Duration::from_secs(5),
        )?;
        let answered = s
            .write_all(req.as_bytes())
            .and_then(|_| s.read_to_end(&mut buf));
        // The suite checks that the server asked for the certificate a request presents,
        // whether the request then fails or not.
        if client.is_some() && !asked.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok((0, Vec::new(), "the server asked for no certificate".into()));
        }
        // A peer that closes without close_notify still gave its whole answer.
        if buf.is_empty() {
            return Err(answered
                .err()
                .unwrap_or_else(|| std::io::Error::other("closed without an answer")));
        }
    } else {
        let mut s = TcpStream::connect(case.target.as_str())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(req.as_bytes())?;
        s.read_to_end(&mut buf)?;
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = parse_head(head)?;
    Ok((status, headers, body.to_string()))
}

/// A runtime for the HTTP/2 servers and clients of the runners (hyper's are async).
fn test_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

/// One request over HTTP/2: without TLS, the client knowing beforehand that the server
/// speaks it (`h2c`), or over TLS with `h2` negotiated by ALPN (the server name the
/// request's `sni`, else its host; trusting the suite's CAs). Status, headers, body.
fn h2_request(case: &Case, host: &str) -> std::io::Result<Reply> {
    use tokio::io::{AsyncRead, AsyncWrite};
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        io: S,
        case: &Case,
        scheme: &str,
        host: &str,
    ) -> std::io::Result<Reply> {
        use http_body_util::BodyExt as _;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let (method, path, body) = if case.grpc {
            // The echo service's Echo, with one message.
            (
                "POST",
                "/proto.EchoTestService/Echo",
                grpc_frame("conformance"),
            )
        } else {
            (case.method.as_str(), case.path.as_str(), Vec::new())
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{scheme}://{host}{path}"));
        if case.grpc {
            req = req
                .header("content-type", "application/grpc")
                .header("te", "trailers");
        }
        for (k, v) in case
            .headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
        {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(std::io::Error::other)?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let collected = resp
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?;
        if case.grpc {
            // A call that did not end with grpc-status 0 (in the trailers, or the headers
            // of an answer without a body) failed, whatever its HTTP status.
            let grpc_status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .map(String::from)
                .or_else(|| {
                    headers
                        .iter()
                        .find(|(k, _): &&(String, String)| k == "grpc-status")
                        .map(|(_, v)| v.clone())
                });
            if grpc_status.as_deref() != Some("0") {
                return Ok((0, headers, format!("grpc-status {grpc_status:?}")));
            }
            let text = grpc_text(&collected.to_bytes()).unwrap_or_default();
            return Ok((status, headers, text));
        }
        let body = collected.to_bytes();
        Ok((status, headers, String::from_utf8_lossy(&body).to_string()))
    }
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(case.target.as_str()).await?;
        if !case.https {
            return exchange(tcp, case, "http", host).await;
        }
        let (config, _) = crate::https::client_config(suite_roots(), None, &["h2"])?;
        let name = case
            .sni
            .clone()
            .unwrap_or_else(|| host.split(':').next().unwrap_or(host).to_string());
        let name = rustls::pki_types::ServerName::try_from(name).map_err(std::io::Error::other)?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
            return Err(std::io::Error::other("the server did not negotiate h2"));
        }
        exchange(tls, case, "https", host).await
    };
    test_runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .map_err(|_| std::io::Error::other("HTTP/2 request timed out"))?
    })
}

/// The suite's WebSocket check: dial `ws://GATEWAY{path}` (origin `ws://gateway/…`), send
/// a text and a binary message, each echoed back as sent. 101 when they are.
fn websocket_exchange(case: &Case, host: &str) -> std::io::Result<Reply> {
    use crate::websocket::{BINARY, TEXT, client_handshake, read_frame, write_frame};
    let mut s = TcpStream::connect(case.target.as_str())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    client_handshake(&mut s, host, &case.path, "ws://gateway/websocket")?;
    for (opcode, message) in [
        (TEXT, b"Websocket Support!".to_vec()),
        (BINARY, vec![1, 2, 3, 4, 5, 6, 7]),
    ] {
        write_frame(&mut s, opcode, &message, Some([0x12, 0x34, 0x56, 0x78]))?;
        let (got_opcode, got) = read_frame(&mut s)?;
        if got_opcode != opcode || got != message {
            return Err(std::io::Error::other(format!(
                "sent {opcode} {message:?}, got {got_opcode} {got:?}"
            )));
        }
    }
    Ok((101, Vec::new(), String::new()))
}

/// The suite's echo server's h2c port: HTTP/2 without TLS, answering as the HTTP/1 echo
/// does. Dropping it stops the server.
struct H2cEcho(tokio::task::JoinHandle<()>);

impl Drop for H2cEcho {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn h2c_echo(addr: &str, pod: String, ns: String) -> H2cEcho {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    listener.set_nonblocking(true).expect("non-blocking");
    H2cEcho(test_runtime().spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        while let Ok((s, _)) = listener.accept().await {
            let (pod, ns) = (pod.clone(), ns.clone());
            let echo =
                hyper::service::service_fn(move |r: hyper::Request<hyper::body::Incoming>| {
                    let mut headers = serde_json::Map::new();
                    for (k, v) in r.headers() {
                        headers.insert(
                            k.as_str().to_string(),
                            Value::from(v.to_str().unwrap_or("")),
                        );
                    }
                    let body = serde_json::json!({
                        "pod": pod, "namespace": ns, "method": r.method().as_str(),
                        "path": r.uri().path_and_query().map_or("/", |p| p.as_str()),
                        "headers": headers, "protocol": format!("{:?}", r.version()),
                    })
                    .to_string();
                    let grpc = r
                        .headers()
                        .get("content-type")
                        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
                    async move {
                        use http_body_util::BodyExt as _;
                        // A gRPC call gets the echo as its one message (a string field),
                        // then grpc-status 0 in the trailers.
                        let body = if grpc {
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert(
                                "grpc-status",
                                hyper::header::HeaderValue::from_static("0"),
                            );
                            let frames = [
                                Ok(hyper::body::Frame::data(bytes::Bytes::from(grpc_frame(
                                    &body,
                                )))),
                                Ok(hyper::body::Frame::trailers(trailers)),
                            ];
                            http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed()
                        } else {
                            http_body_util::Full::new(bytes::Bytes::from(body))
                                .map_err(|never| match never {})
                                .boxed()
                        };
                        let mut resp = hyper::Response::new(body);
                        if grpc {
                            resp.headers_mut().insert(
                                "content-type",
                                hyper::header::HeaderValue::from_static("application/grpc"),
                            );
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), echo),
            );
        }
    }))
}

/// One gRPC message holding `text` as its field 1 (a string: the echo service's message),
/// with gRPC's length prefix.
fn grpc_frame(text: &str) -> Vec<u8> {
    let mut message = vec![0x0a];
    let mut len = text.len();
    while len >= 0x80 {
        message.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    message.push(len as u8);
    message.extend_from_slice(text.as_bytes());
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend(message);
    frame
}

/// The string field 1 of the first gRPC message in `body` (the inverse of [`grpc_frame`]).
fn grpc_text(body: &[u8]) -> Option<String> {
    let message = body.get(5..)?;
    if message.first() != Some(&0x0a) {
        return None;
    }
    let (mut len, mut shift, mut i) = (0usize, 0, 1);
    loop {
        let b = *message.get(i)?;
        len |= usize::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    Some(String::from_utf8_lossy(message.get(i..i + len)?).to_string())
}

/// Whether the answer is the one the suite expects: the status, and for a backend its
/// pod (a replica of that Deployment) in the infra namespace and the request it saw.
fn answers(case: &Case, got: &Reply) -> bool {
    if got.0 != case.status && !case.statuses.contains(&got.0) {
        return false;
    }
    if let Some(want) = &case.redirect
        && !redirects_as_expected(case, want, got)
    {
        return false;
    }
    let header = |name: &str| -> Option<String> {
        let values: Vec<&str> = got
            .1
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    if case
        .response
        .iter()
        .any(|(k, v)| header(k).as_deref() != Some(v.as_str()))
        || case.response_absent.iter().any(|k| header(k).is_some())
    {
        return false;
    }
    let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    if case.response_any.iter().any(|(k, values)| {
        header(k).is_none_or(|got| !values.iter().any(|v| squeeze(v) == squeeze(&got)))
    }) {
        return false;
    }
    let Ok(echo) = serde_json::from_str::<Value>(&got.2) else {
        if case.from_gateway {
            return true;
        }
        return case.backend.is_none() && !case.namespace_only;
    };
    if case.from_gateway {
        // An echo server answered: the request went through instead of the gateway
        // answering it.
        return echo["pod"].is_null();
    }
    // What the backend saw, whether or not the test names it.
    if case
        .seen_path
        .as_ref()
        .is_some_and(|p| echo["path"] != p.as_str())
    {
        return false;
    }
    if case
        .seen_sni
        .as_ref()
        .is_some_and(|n| echo["tls"]["serverName"] != n.as_str())
    {
        return false;
    }
    if let Some(secret) = &case.seen_client_cert {
        let want = suite_secret(secret).and_then(|(cert, _)| der_base64(cert));
        let presented = strings(&echo["tls"]["peerCertificates"]);
        if want.is_none_or(|w| !presented.contains(&w.as_str())) {
            return false;
        }
    }
    let Some(b) = &case.backend else {
        return !case.namespace_only || echo["namespace"] == case.namespace.as_str();
    };
    let pod = echo["pod"].as_str().unwrap_or_default();
    let headers = &echo["headers"];
    (pod == format!("{b}-0") || pod == format!("{b}-1"))
        && echo["namespace"] == case.namespace.as_str()
        && case.seen.iter().all(|(k, v)| headers[k] == v.as_str())
        && case.absent.iter().all(|k| headers.get(k).is_none())
}

/// The suite's check of a redirect's `Location`: host and path default to the request's,
/// the scheme to http; without an expected port, http may name only 80 (or none) and
/// https only 443 (or none).
fn redirects_as_expected(case: &Case, want: &Value, got: &Reply) -> bool {
    let location = got
        .1
        .iter()
        .find(|(k, _)| k == "location")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let Some((scheme, rest)) = location.split_once("://") else {
        return false;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = path.split('?').next().unwrap_or(path);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => (authority, ""),
    };
    let request_path = case.path.split('?').next().unwrap_or("/");
    let field = |k: &str| want[k].as_str();
    if host != field("host").unwrap_or(host) {
        return false;
    }
    if scheme != field("scheme").unwrap_or("http") || path != field("path").unwrap_or(request_path)
    {
        return false;
    }
    match field("port") {
        Some(p) => port == p,
        None => match scheme {
            "http" => port.is_empty() || port == "80",
            "https" => port.is_empty() || port == "443",
            _ => true,
        },
    }
}

/// How `n` requests spread over the backends (by Deployment, from the pods' names).
fn distribution(case: &Case, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let pod = request(case)
            .ok()
            .and_then(|g| serde_json::from_str::<Value>(&g.2).ok())
            .and_then(|e| e["pod"].as_str().map(String::from))
            .unwrap_or_default();
        let backend = pod
            .rsplit_once('-')
            .map_or(pod.clone(), |(b, _)| b.to_string());
        *counts.entry(backend).or_default() += 1;
    }
    counts
}

#[test]
fn gateway_http_conformance_transcribed() {
    let Some(suite) = suite() else { return };
    let Some((dir, config)) = envoy_test("gwapi-suite") else {
        return;
    };
    // The suite's base: namespaces, Gateways, Services; its Deployments become Pods (two
    // replicas each, as the suite runs them) at loopback addresses, each with an echo
    // server answering `POD NAMESPACE`.
    let base = base_manifests(&suite);
    config.write("base.yaml", &base);
    let creds = SUITE_CREDENTIALS.get_or_init(suite_credentials);
    config.write("credentials.yaml", &creds.yaml);
    let tests = transcribed("http.yaml");
    // The base's Deployments and those of the tests' own manifests (each once).
    let mut deployments = documents(&base);
    for test in &tests {
        for d in documents(&test_manifests(&suite, test)) {
            let known = deployments.iter().any(|k| {
                k["kind"] == d["kind"]
                    && k["metadata"]["name"] == d["metadata"]["name"]
                    && k["metadata"]["namespace"] == d["metadata"]["namespace"]
            });
            if d["kind"] == "Deployment" && !known {
                deployments.push(d);
            }
        }
    }
    // Port 3001 speaks h2c, as the suite's echo server does (its Services' second port,
    // `appProtocol: kubernetes.io/h2c`).
    let echo = echo_pods(&deployments, 40, 2, &[3000], Some(creds), Some(3001));
    let (pods, apps) = (&echo.pods, &echo.apps);
    config.write(
        "pods.yaml",
        &serde_json::to_string(
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": pods}),
        )
        .expect("json"),
    );
    // Gateways get their listeners' certificates over SDS: the proxies authenticate.
    let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 18080);
    // The proxy of the Gateway a test goes through (they all listen on port 80: one at a
    // time, as each test's Gateway is the only one it reaches).
    let mut router: Option<(String, Envoy)> = None;

    let mut results: BTreeMap<String, Result<usize, String>> = BTreeMap::new();
    for test in tests {
        let name = test["test"].as_str().unwrap_or("?").to_string();
        // Each test's objects replace the previous test's, as the suite cleans up.
        config.write(
            "test.yaml",
            &with_endpoints(&test_manifests(&suite, &test), &test, pods),
        );
        // Through the test's Gateway (`gateway`), or each of `gateways` in turn; a request
        // may name its own.
        let gateways: Vec<String> = match test["gateways"].as_array() {
            Some(list) => list
                .iter()
                .filter_map(|g| g.as_str().map(String::from))
                .collect(),
            None => vec![
                test["gateway"]
                    .as_str()
                    .unwrap_or("same-namespace")
                    .to_string(),
            ],
        };
        // The statuses the test asserts (as status.yaml writes them), from `meshd status`.
        let mut failures = if test["expect"].is_array() {
            status_failures(&test, &statuses(config.path()))
        } else {
            Vec::new()
        };
        let mut count = 0;
        for gateway in &gateways {
            let mut cases = cases(&test);
            for c in &mut cases {
                c.gateway.get_or_insert_with(|| gateway.clone());
            }
            count += cases.len();
            let mut switch = |c: &Case| {
                let want = c.gateway.as_deref().unwrap_or("same-namespace");
                use_router(&mut router, want, dir.path(), Some(&issuer));
            };
            failures.extend(run_cases(&cases, &mut switch));
            if let Some(first) = cases.first() {
                failures.extend(weights_fail(&test, first));
                failures.extend(header_names_pod_fails(&test, first));
            }
            if failures.is_empty() {
                failures.extend(mirror_failures(&test, &cases, apps));
            }
            // Steps that change the test's objects, then ask again (as the suite deletes,
            // patches and creates objects mid-test): each step's changes stay for the next.
            let mut current = documents(&test_manifests(&suite, &test));
            for step in test["then"].as_array().into_iter().flatten() {
                current = changed(current, step);
                config.write(
                    "test.yaml",
                    &with_endpoints(
                        &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": current})
                            .to_string(),
                        &test,
                        pods,
                    ),
                );
                if step["expect"].is_array() {
                    failures.extend(status_failures(step, &statuses(config.path())));
                }
                let mut step_cases = cases_of(&step["requests"]);
                for c in &mut step_cases {
                    c.gateway.get_or_insert_with(|| gateway.clone());
                }
                count += step_cases.len();
                failures.extend(run_cases(&step_cases, &mut switch));
            }
            if test["then"].is_array() {
                // The test's objects back, for its next Gateway.
                config.write(
                    "test.yaml",
                    &with_endpoints(&test_manifests(&suite, &test), &test, pods),
                );
            }
        }
        results.insert(name, outcome(&failures, count));
    }
    report("GATEWAY-HTTP", &results);
    if let Some((_, r)) = &router {
        assert_envoy_accepted(r);
    }
    meshd.assert_no_nacks();
}

/// The suite's Deployments of `docs` as Pods (`replicas` each, named `<deployment>-<n>`, at
/// 127.0.1.`first`…), each with an echo server on `ports` answering as the suite's does:
/// JSON naming the pod, its namespace, the path, method and headers it got, and the
/// headers a request asks for in `X-Echo-Set-Header: Name:Value,…` set on the answer.
///
/// With `tls`, a Deployment whose container has `TLS_SERVER_CERT` (and no
/// `TCP_ECHO_SERVER`) also answers over HTTPS at [`BACKEND_TLS_PORT`] with its Secret
/// volume's certificate — requiring a client certificate of its ConfigMap volume's CA when
/// it has `TLS_CLIENT_CACERTS` — as the suite's echo server does; with `h2c`, each pod
/// also answers HTTP/2 without TLS on that port. Those servers are returned to keep. An
/// HTTP/1 echo switches to WebSocket when asked, and echoes messages.
fn echo_pods(
    docs: &[Value],
    first: u32,
    replicas: u32,
    ports: &[u16],
    tls: Option<&Credentials>,
    h2c: Option<u16>,
) -> EchoPods {
    let mut h2c_servers = Vec::new();
    let mut pods = Vec::new();
    let mut apps = Vec::new();
    let mut servers = Vec::new();
    let mut next = first;
    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let ns = d["metadata"]["namespace"].as_str().unwrap_or("default");
        let labels = d["spec"]["template"]["metadata"]["labels"].clone();
        let https = tls.and_then(|creds| echo_tls_config(d, creds));
        for replica in 0..replicas {
            let ip = format!("127.0.1.{next}");
            next += 1;
            let pod = format!("{name}-{replica}");
            pods.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": ns, "labels": labels},
                "spec": {"containers": [{"name": name, "image": "echo-basic"}]},
                "status": {"phase": "Running", "podIP": ip,
                           "conditions": [{"type": "Ready", "status": "True"}]},
            }));
            if let Some(port) = h2c {
                h2c_servers.push(h2c_echo(
                    &format!("{ip}:{port}"),
                    pod.clone(),
                    ns.to_string(),
                ));
            }
            if let Some(config) = &https {
                let (config, p, n) = (config.clone(), pod.clone(), ns.to_string());
                servers.push(Server::start(
                    "https echo",
                    &format!("{ip}:{BACKEND_TLS_PORT}"),
                    move |s| https_echo(config.clone(), s, &p, &n),
                ));
            }
            for port in ports {
                let name = pod.clone();
                let (pod, ns) = (pod.clone(), ns.to_string());
                apps.push((
                    name,
                    HttpApp::start_any_version(&format!("{ip}:{port}"), move |r| {
                        // `?delay=DURATION` answers late, as the suite's echo server does.
                        if let Some(d) = query_param(&r.path, "delay").and_then(|d| go_duration(&d))
                        {
                            std::thread::sleep(d);
                        }
                        let set: Vec<(String, String)> = r
                            .header("x-echo-set-header")
                            .map(|h| {
                                h.split(',')
                                    .filter_map(|kv| kv.split_once(':'))
                                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        // Repeated headers joined with commas, as the suite's server reports.
                        let mut headers = serde_json::Map::new();
                        for (k, v) in &r.headers {
                            let joined = match headers.get(k).and_then(Value::as_str) {
                                Some(prev) => format!("{prev},{v}"),
                                None => v.clone(),
                            };
                            headers.insert(k.clone(), Value::String(joined));
                        }
                        Answer {
                            status: 200,
                            headers: set,
                            body: serde_json::json!({
                                "pod": pod, "namespace": ns, "path": r.path,
                                "method": r.method, "headers": headers,
                            })
                            .to_string(),
                        }
                    }),
                ));
            }
        }
    }
    EchoPods {
        pods,
        apps,
        _servers: (servers, h2c_servers),
    }
}

/// The suite's Deployments as pods: the Pod objects, each pod's HTTP echo (by pod name),
/// and the other servers, kept while the pods are needed.
struct EchoPods {
    pods: Vec<Value>,
    apps: Vec<(String, HttpApp)>,
    _servers: (Vec<Server>, Vec<H2cEcho>),
}

/// The TLS server of a Deployment running the suite's echo server over HTTPS: the
/// certificate of its Secret volume, and the CA of its ConfigMap volume for its clients
/// when it asks for client certificates (`TLS_CLIENT_CACERTS`). None for other
/// Deployments, and for the TCP echo server (the TLS runner serves that).
fn echo_tls_config(d: &Value, creds: &Credentials) -> Option<Arc<rustls::ServerConfig>> {
    let ns = d["metadata"]["namespace"].as_str().unwrap_or("default");
    let spec = &d["spec"]["template"]["spec"];
    let env: Vec<&str> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["env"].as_array().into_iter().flatten())
        .filter_map(|e| e["name"].as_str())
        .collect();
    if !env.contains(&"TLS_SERVER_CERT") || env.contains(&"TCP_ECHO_SERVER") {
        return None;
    }
    let volumes = spec["volumes"].as_array()?;
    let secret = volumes
        .iter()
        .find_map(|v| v["secret"]["secretName"].as_str())?;
    let (cert, key) = creds.secrets.get(&format!("{ns}/{secret}"))?;
    let client_ca = env
        .contains(&"TLS_CLIENT_CACERTS")
        .then(|| volumes.iter().find_map(|v| v["configMap"]["name"].as_str()))
        .flatten()
        .and_then(|cm| creds.config_maps.get(&format!("{ns}/{cm}")));
    Some(server_tls_verifying(
        cert,
        key,
        client_ca.map(String::as_str),
    ))
}

/// The suite's echo server over HTTPS on one connection: the request's head read, and
/// answered with the JSON the plain echo servers give (pod, namespace, path, method,
/// headers) and what TLS showed (`tls.serverName`, the client's `peerCertificates` as
/// base64 DER); then closed.
fn https_echo(config: Arc<rustls::ServerConfig>, s: TcpStream, pod: &str, ns: &str) {
    use base64::Engine as _;
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, s);
    let buf = read_head(&mut tls);
    if !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        return;
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (
        first.next().unwrap_or_default(),
        first.next().unwrap_or_default(),
    );
    let mut headers = serde_json::Map::new();
    for (k, v) in lines.filter_map(|l| l.split_once(':')) {
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        let joined = match headers.get(&k).and_then(Value::as_str) {
            Some(prev) => format!("{prev},{v}"),
            None => v.to_string(),
        };
        headers.insert(k, Value::String(joined));
    }
    let peers: Vec<String> = tls
        .conn
        .peer_certificates()
        .into_iter()
        .flatten()
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c.as_ref()))
        .collect();
    let body = serde_json::json!({
        "pod": pod, "namespace": ns, "path": path, "method": method, "headers": headers,
        "tls": {"serverName": tls.conn.server_name(), "peerCertificates": peers},
    })
    .to_string();
    let _ = tls.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// Requests for `path` (query left out) the pods of Deployment `backend` got so far.
fn seen_by(apps: &[(String, HttpApp)], backend: &str, path: &str) -> usize {
    let path = path.split('?').next().unwrap_or(path);
    apps.iter()
        .filter(|(pod, _)| pod.starts_with(&format!("{backend}-")))
        .map(|(_, app)| {
            app.requests()
                .iter()
                .filter(|r| r.path.split('?').next() == Some(path))
                .count()
        })
        .sum()
}

/// The suite's mirror checks for one test, after its requests passed: `mirrored` backends
/// must each have had a copy of the request; `mirror_percent` ({backend, percent}) counts
/// the copies of 500 more requests, which must lie within 15% of the share (up to 5
/// batches, as the suite tries).
fn mirror_failures(test: &Value, cases: &[Case], apps: &[(String, HttpApp)]) -> Vec<String> {
    let mut out = Vec::new();
    let requests: Vec<&Value> = test["requests"].as_array().into_iter().flatten().collect();
    for (r, case) in requests.iter().zip(cases) {
        for b in strings(&r["mirrored"]) {
            // Mirrors are sent alongside the request and may land a moment later.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while seen_by(apps, b, &case.path) == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if seen_by(apps, b, &case.path) == 0 {
                out.push(format!("{}: no copy reached {b}", case.path));
            }
        }
        let Some(backend) = r["mirror_percent"]["backend"].as_str() else {
            continue;
        };
        let percent = r["mirror_percent"]["percent"].as_f64().unwrap_or(0.0);
        let want = 500.0 * percent / 100.0;
        let mut last = 0;
        let ok = (0..5).any(|_| {
            let before = seen_by(apps, backend, &case.path);
            for _ in 0..500 {
                let _ = request(case);
            }
            std::thread::sleep(Duration::from_millis(500));
            last = seen_by(apps, backend, &case.path) - before;
            (last as f64 - want).abs() <= want * 0.15
        });
        if !ok {
            out.push(format!(
                "{}: {last} of 500 copies reached {backend}, expected {want} ± 15%",
                case.path
            ));
        }
    }
    out
}

/// A test's manifests with the EndpointSlices it names (`fill_endpoint_slices`:
/// {deployment, slices}) filled with the IPv4 endpoints of that Deployment's pods, ready and
/// serving, as the suite's setup patches them for Services without a selector; as is
/// otherwise.
/// A manifest's object as `Kind namespace/name` (namespace `default` when it names none).
fn manifest_key(d: &Value) -> String {
    format!(
        "{} {}/{}",
        d["kind"].as_str().unwrap_or(""),
        d["metadata"]["namespace"].as_str().unwrap_or("default"),
        d["metadata"]["name"].as_str().unwrap_or("")
    )
}

/// `text` with each `{CA_CRT_OF:namespace/name}` replaced by the CA that generated
/// ConfigMap holds, as a quoted string (the suite copies it into objects it creates).
fn with_generated_cas(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{CA_CRT_OF:") {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let name = &rest[start + "{CA_CRT_OF:".len()..start + len];
        let pem = SUITE_CREDENTIALS
            .get()
            .and_then(|c| c.config_maps.get(name))
            .cloned()
            .unwrap_or_default();
        out.push_str(&rest[..start]);
        out.push_str(&Value::String(pem).to_string());
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// A test's objects after one of its `then` steps: `delete` (`Kind namespace/name`, one or
/// a list) takes objects away; `apply` (YAML of whole objects) replaces those of the same
/// kind, namespace and name, or adds them.
fn changed(objects: Vec<Value>, step: &Value) -> Vec<Value> {
    let key = manifest_key;
    let mut gone: Vec<String> = strings(&step["delete"])
        .into_iter()
        .map(String::from)
        .collect();
    gone.extend(step["delete"].as_str().map(String::from));
    let applied = documents(&with_generated_cas(&templated(
        step["apply"].as_str().unwrap_or(""),
    )));
    let mut out: Vec<Value> = objects
        .into_iter()
        .filter(|d| !gone.contains(&key(d)))
        .map(|d| {
            applied
                .iter()
                .find(|a| key(a) == key(&d))
                .cloned()
                .unwrap_or(d)
        })
        .collect();
    for a in applied {
        if !out.iter().any(|d| key(d) == key(&a)) {
            out.push(a);
        }
    }
    out
}

fn with_endpoints(manifests: &str, test: &Value, pods: &[Value]) -> String {
    let fill = &test["fill_endpoint_slices"];
    let Some(deployment) = fill["deployment"].as_str() else {
        return manifests.to_string();
    };
    let slices = strings(&fill["slices"]);
    let endpoints: Vec<Value> = pods
        .iter()
        .filter(|p| {
            p["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("{deployment}-")))
        })
        .map(|p| {
            serde_json::json!({
                "addresses": [p["status"]["podIP"]],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "name": p["metadata"]["name"],
                              "namespace": p["metadata"]["namespace"]},
            })
        })
        .collect();
    let docs: Vec<Value> = documents(manifests)
        .into_iter()
        .map(|mut d| {
            if d["kind"] == "EndpointSlice"
                && slices.contains(&d["metadata"]["name"].as_str().unwrap_or(""))
            {
                d["endpoints"] = Value::Array(endpoints.clone());
            }
            d
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string()
}

/// The value of query parameter `name` in `path`.
fn query_param(path: &str, name: &str) -> Option<String> {
    path.split_once('?')?
        .1
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A Go duration of one unit (`500ms`, `1s`, `2m`).
fn go_duration(d: &str) -> Option<Duration> {
    let split = d.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (n, unit) = d.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// A test's manifests (`manifests`: one of the suite's files, or a list of them), as the
/// cluster gets them.
fn test_manifests(suite: &std::path::Path, test: &Value) -> String {
    let files: Vec<&str> = match &test["manifests"] {
        Value::String(f) => vec![f.as_str()],
        Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    files
        .iter()
        .map(|f| templated(&std::fs::read_to_string(suite.join(f)).expect("test manifests")))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// The transcribed tests of a file, in order.
fn transcribed(file: &str) -> Vec<Value> {
    let path = repo().join("tests/gateway_conformance").join(file);
    let tests = documents(&std::fs::read_to_string(&path).expect("transcription"));
    let tests = tests
        .first()
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    assert!(!tests.is_empty(), "nothing transcribed in {file}");
    // While working on some tests: MESHD_GWAPI_ONLY=Name,Name runs those alone.
    match std::env::var("MESHD_GWAPI_ONLY") {
        Ok(only) if !only.is_empty() => tests
            .into_iter()
            .filter(|t| only.split(',').any(|n| t["test"] == n.trim()))
            .collect(),
        _ => tests,
    }
}

/// Each request until it answers as expected (eventually consistent, as the suite waits):
/// the failures, described.
fn run_cases(cases: &[Case], before: &mut dyn FnMut(&Case)) -> Vec<String> {
    cases
        .iter()
        .filter_map(|c| {
            before(c);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let got = request(c);
                let as_expected = if c.fails {
                    got.is_err()
                } else {
                    got.as_ref().is_ok_and(|g| answers(c, g))
                };
                if as_expected {
                    return None;
                }
                if std::time::Instant::now() > deadline {
                    return Some(format!(
                        "{} {:?} {} {:?}: expected {} {:?} (seen {:?}, absent {:?}), got {:?}",
                        c.method,
                        c.host,
                        c.path,
                        c.headers,
                        c.status,
                        c.backend,
                        c.seen,
                        c.absent,
                        got
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .collect()
}

/// A weighted test's distribution, as the suite measures it: 500 requests, each backend's
/// share within 5 points of its weight (up to 10 tries). None when it holds.
fn weights_fail(test: &Value, case: &Case) -> Option<String> {
    let weights = test["weights"].as_object()?;
    let mut last = BTreeMap::new();
    let ok = (0..10).any(|_| {
        last = distribution(case, 500);
        within_weights(weights, &last, 500)
    });
    (!ok).then(|| format!("distribution {last:?} against weights {weights:?}"))
}

/// `header_names_pod` ({header, requests}): each of that many more requests reaches a pod
/// whose name starts with the one value of `header` the backend got (a backendRef's own
/// header filter, checked per request as the suite does). None when it holds.
fn header_names_pod_fails(test: &Value, case: &Case) -> Option<String> {
    let check = &test["header_names_pod"];
    let header = check["header"].as_str()?.to_ascii_lowercase();
    let n = check["requests"].as_u64().unwrap_or(100);
    for i in 0..n {
        let got = match request(case) {
            Ok(got) => got,
            Err(e) => return Some(format!("request {i}: {e}")),
        };
        let echo: Value = serde_json::from_str(&got.2).unwrap_or_default();
        let value = echo["headers"][&header].as_str().unwrap_or_default();
        let pod = echo["pod"].as_str().unwrap_or_default();
        if value.is_empty() || value.contains(',') || !pod.starts_with(value) {
            return Some(format!(
                "request {i}: header {header} {value:?} does not name pod {pod:?}: {got:?}"
            ));
        }
    }
    None
}

/// Whether `counts` of `n` requests put each backend within 5 points of its weight, as the
/// suite measures a distribution.
fn within_weights(
    weights: &serde_json::Map<String, Value>,
    counts: &BTreeMap<String, usize>,
    n: usize,
) -> bool {
    weights.iter().all(|(b, w)| {
        let got = counts.get(b).copied().unwrap_or(0) as f64 / n as f64;
        (got - w.as_f64().unwrap_or(0.0)).abs() <= 0.05
    })
}

/// A test's result: the number of checks it made, or its failures.
fn outcome(failures: &[String], checks: usize) -> Result<usize, String> {
    if failures.is_empty() {
        Ok(checks)
    } else {
        Err(failures.join("\n"))
    }
}

fn report(profile: &str, results: &BTreeMap<String, Result<usize, String>>) {
    report_counting(profile, "requests", results)
}

/// [`report`], each pass counting `unit`s.
fn report_counting(profile: &str, unit: &str, results: &BTreeMap<String, Result<usize, String>>) {
    let passed = results.values().filter(|r| r.is_ok()).count();
    eprintln!(
        "Gateway API conformance {VERSION}, {profile} (the transcribed tests): {passed} of {} pass",
        results.len()
    );
    for (name, r) in results {
        match r {
            Ok(n) => eprintln!("  PASS {name} ({n} {unit})"),
            Err(e) => eprintln!("  FAIL {name}:\n{e}"),
        }
    }
    assert_eq!(passed, results.len(), "{results:#?}");
}

/// MESH-HTTP: requests from the suite's echo-v1 pod through its real Envoy sidecar (its
/// outbound connections captured as istio-iptables captures them), to the suite's mesh
/// Services (cluster IPs on loopback) and their echo pods.
#[test]
fn mesh_http_conformance_transcribed() {
    let Some(suite) = suite() else { return };
    let Some((dir, config)) = envoy_test("gwapi-mesh-suite") else {
        return;
    };
    if !can_intercept() {
        return;
    }
    let base = templated(
        &std::fs::read_to_string(suite.join("mesh/manifests.yaml")).expect("mesh manifests"),
    );
    let mut docs = documents(&base);
    // Cluster IPs on loopback for the Services, which the suite leaves to the cluster.
    let mut vips: BTreeMap<(String, String), String> = BTreeMap::new();
    for (i, d) in docs
        .iter_mut()
        .filter(|d| d["kind"] == "Service")
        .enumerate()
    {
        let vip = format!("127.2.0.{}", i + 1);
        d["spec"]["clusterIP"] = Value::String(vip.clone());
        let ns = d["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = d["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        vips.insert((ns, name), vip);
    }
    // Kept to the end: the pods' echo servers live as long as it.
    let echo = echo_pods(&docs, 40, 1, &[8080], None, Some(7070));
    let pods = &echo.pods;
    let pod_ips: BTreeMap<(String, String), String> = pods
        .iter()
        .map(|p| {
            (
                (
                    p["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                ),
                p["status"]["podIP"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    docs.extend(pods.iter().cloned());
    config.write(
        "base.yaml",
        &serde_json::to_string(
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs}),
        )
        .expect("json"),
    );
    // The client's outbound connections (to Services and to pods) go to its sidecar.
    intercept_outbound("127.2.0.0/16");
    intercept_outbound("127.0.1.0/24");
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    // The echo-v1 pod of a namespace, as the client: its sidecar (one at a time: each
    // listens on 15001 and its admin port).
    let client_in = |ns: &str| {
        let ip = pod_ips
            .get(&(ns.to_string(), "echo-v1-0".to_string()))
            .cloned()
            .unwrap_or_else(|| panic!("no echo-v1 pod in {ns}"));
        let ip: &'static str = Box::leak(ip.into_boxed_str());
        let ns: &'static str = Box::leak(ns.to_string().into_boxed_str());
        Envoy::start_with(
            &NodeSpec {
                kind: "sidecar",
                ip,
                pod: "echo-v1-0",
                namespace: ns,
                labels: &[("app", "echo"), ("version", "v1")],
                service_account: "default",
            },
            &EnvoyOpts {
                gid: Some(PROXY_GID),
                ..Default::default()
            },
            dir.path(),
        )
    };
    let mut client: Option<(String, Envoy)> = None;
    // Where a request for `host` (a Service name, name.namespace, or `pod:NAME`, with an
    // optional port) from namespace `ns` connects, as the pod's DNS would resolve it.
    let resolve = |host: &str, ns: &str| -> (String, String) {
        let (pod, host) = match host.strip_prefix("pod:") {
            Some(h) => (true, h),
            None => (false, host),
        };
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) => (n, p),
            None => (host, "80"),
        };
        let (name, ns) = name.split_once('.').unwrap_or((name, ns));
        let ip = if pod {
            pod_ips.get(&(ns.to_string(), format!("{name}-0"))).cloned()
        } else {
            vips.get(&(ns.to_string(), name.to_string())).cloned()
        }
        .unwrap_or_else(|| panic!("{host} does not resolve from {ns}"));
        let header = if pod {
            format!("{ip}:{port}")
        } else {
            host.to_string()
        };
        (format!("{ip}:{port}"), header)
    };

    let mut results: BTreeMap<String, Result<usize, String>> = BTreeMap::new();
    for test in transcribed("mesh.yaml") {
        let name = test["test"].as_str().unwrap_or("?").to_string();
        // Each test's objects replace the previous test's, as the suite cleans up.
        config.write("test.yaml", &test_manifests(&suite, &test));
        let mut cases = cases(&test);
        for c in &mut cases {
            let (target, header) = resolve(c.host.as_deref().unwrap_or("echo"), &c.client);
            c.target = target;
            c.host = Some(header);
            c.namespace = MESH.to_string();
        }
        let mut switch = |c: &Case| {
            if client.as_ref().is_none_or(|(ns, _)| *ns != c.client) {
                if let Some((_, old)) = client.take() {
                    assert_envoy_accepted(&old);
                }
                client = Some((c.client.clone(), client_in(&c.client)));
            }
        };
        let mut failures = run_cases(&cases, &mut switch);
        failures.extend(weights_fail(&test, &cases[0]));
        results.insert(name, outcome(&failures, cases.len()));
    }
    report("MESH-HTTP", &results);
    if let Some((_, c)) = &client {
        assert_envoy_accepted(c);
    }
    meshd.assert_no_nacks();
}

/// Makes `router` the proxy of Gateway `gateway`, replacing (and checking) the one of
/// another Gateway.
fn use_router(
    router: &mut Option<(String, Envoy)>,
    gateway: &str,
    dir: &std::path::Path,
    issuer: Option<&crate::tokens::TokenIssuer>,
) {
    if router.as_ref().is_none_or(|(g, _)| g != gateway) {
        if let Some((_, old)) = router.take() {
            assert_envoy_accepted(&old);
        }
        *router = Some((gateway.to_string(), router_of(gateway, dir, issuer)));
    }
}

/// The proxy of the suite's Gateway `gateway` (all listen at [`GATEWAY_IP`]: one at a
/// time). With an `issuer`, over TLS with a token for the Gateway's service account, so
/// that it gets its listeners' certificates over SDS; else plain ADS.
fn router_of(
    gateway: &str,
    dir: &std::path::Path,
    issuer: Option<&crate::tokens::TokenIssuer>,
) -> Envoy {
    let pod = format!("{gateway}-istio-1");
    let sa = format!("{gateway}-istio");
    let node = NodeSpec {
        kind: "router",
        ip: GATEWAY_IP,
        pod: &pod,
        namespace: INFRA,
        labels: &[("gateway.networking.k8s.io/gateway-name", gateway)],
        service_account: &sa,
    };
    match issuer {
        Some(issuer) => Envoy::start_with(
            &node,
            &EnvoyOpts {
                xds: Xds::Tls {
                    root: dir.join("ca/root-cert.pem"),
                    token: issuer.token(INFRA, &sa, "istio-ca", 3600, "k1"),
                },
                ..Default::default()
            },
            dir,
        ),
        None => Envoy::start(&node, Ads::Delta, 15000, dir),
    }
}

/// GATEWAY-GRPC: the suite's gRPC backends (its echo service, served with grpcio on the
/// pods' addresses) behind the suite's Gateways, called through a real Envoy.
#[test]
fn gateway_grpc_conformance_transcribed() {
    let Some(suite) = suite() else { return };
    let Some(py) = crate::grpc::python() else {
        skip_or_fail("python with grpcio is not installed (.venv-tools)");
        return;
    };
    let Some((dir, config)) = envoy_test("gwapi-grpc-suite") else {
        return;
    };
    let base = base_manifests(&suite);
    config.write("base.yaml", &base);
    // Pods for the gRPC Deployments only (the others' Services stay without endpoints),
    // each serving the suite's echo service on 3000, the Services' target port.
    let grpc_deployments: Vec<Value> = documents(&base)
        .into_iter()
        .filter(|d| {
            d["kind"] == "Deployment"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("grpc-"))
        })
        .collect();
    let pods = echo_pods(&grpc_deployments, 40, 2, &[], None, None).pods;
    let script = crate::grpc::script();
    let servers: Vec<Proc> = pods
        .iter()
        .map(|p| {
            let ip = p["status"]["podIP"].as_str().unwrap_or_default();
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            let ns = p["metadata"]["namespace"].as_str().unwrap_or_default();
            Proc::spawn(
                name,
                Command::new(&py).arg(&script).args([
                    "suite-serve",
                    &format!("{ip}:3000"),
                    name,
                    ns,
                ]),
                dir.path(),
            )
        })
        .collect();
    for s in &servers {
        wait_for("a gRPC backend", Duration::from_secs(20), || {
            s.log_text().contains("ready").then_some(())
        });
    }
    config.write(
        "pods.yaml",
        &serde_json::to_string(
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": pods}),
        )
        .expect("json"),
    );
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    // Each call of `calls` through the gateway: (status code, answering pod).
    let call = |calls: &[Value]| -> Vec<(String, String)> {
        let mut child = Command::new(&py)
            .arg(&script)
            .args(["suite-call", &format!("{GATEWAY_IP}:80")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("gRPC client");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(Value::Array(calls.to_vec()).to_string().as_bytes());
        }
        let out = child.wait_with_output().expect("gRPC client");
        let answers: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        answers
            .iter()
            .map(|a| {
                (
                    a["code"].as_str().unwrap_or("?").to_string(),
                    a["pod"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let mut router: Option<(String, Envoy)> = None;
    let mut results: BTreeMap<String, Result<usize, String>> = BTreeMap::new();
    for test in transcribed("grpc.yaml") {
        let name = test["test"].as_str().unwrap_or("?").to_string();
        config.write("test.yaml", &test_manifests(&suite, &test));
        let gateway = test["gateway"].as_str().unwrap_or("same-namespace");
        use_router(&mut router, gateway, dir.path(), None);
        let calls: Vec<Value> = test["calls"].as_array().cloned().unwrap_or_default();
        // What each call must get: a code (OK when a backend is named) and the backend.
        let expected: Vec<(String, Option<String>)> = calls
            .iter()
            .map(|c| {
                (
                    c["code"].as_str().unwrap_or("OK").to_string(),
                    c["backend"].as_str().map(String::from),
                )
            })
            .collect();
        let holds = |got: &[(String, String)]| {
            got.len() == expected.len()
                && got
                    .iter()
                    .zip(&expected)
                    .all(|((code, pod), (want, backend))| {
                        code == want
                            && backend
                                .as_ref()
                                .is_none_or(|b| pod.rsplit_once('-').is_some_and(|(d, _)| d == b))
                    })
        };
        // Eventually consistent, as the suite waits.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut got = call(&calls);
        while !holds(&got) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            got = call(&calls);
        }
        let mut failures = Vec::new();
        if !holds(&got) {
            failures.push(format!(
                "calls {calls:?}: expected {expected:?}, got {got:?}"
            ));
        }
        if let Some(weights) = test["weights"].as_object() {
            let batch: Vec<Value> = (0..500)
                .map(|_| serde_json::json!({"method": "Echo"}))
                .collect();
            let mut last = BTreeMap::new();
            let ok = (0..10).any(|_| {
                last = BTreeMap::new();
                for (_, pod) in call(&batch) {
                    let d = pod
                        .rsplit_once('-')
                        .map_or(pod.clone(), |(d, _)| d.to_string());
                    *last.entry(d).or_insert(0usize) += 1;
                }
                within_weights(weights, &last, 500)
            });
            if !ok {
                failures.push(format!("distribution {last:?} against weights {weights:?}"));
            }
        }
        results.insert(name, outcome(&failures, calls.len()));
    }
    report("GATEWAY-GRPC", &results);
    if let Some((_, r)) = &router {
        assert_envoy_accepted(r);
    }
    meshd.assert_no_nacks();
}

/// The Secrets and ConfigMaps the suite's setup makes before any test (certificates it
/// generates), and the key material the TLS backends serve.
struct Credentials {
    /// The manifests.
    yaml: String,
    /// `tls-passthrough-checks-certificate` (abc.example.com): certificate, key.
    passthrough: (String, String),
    /// `tls-checks-certificate` (abc.example.com, other.example.com).
    checks: (String, String),
    /// The CAs a test client trusts (the suite trusts each Secret's certificate; ours
    /// are issued by these).
    roots: String,
    /// Every generated Secret's certificate and key, by `namespace/name`.
    secrets: BTreeMap<String, (String, String)>,
    /// Every generated ConfigMap's CA, by `namespace/name`.
    config_maps: BTreeMap<String, String>,
}

fn suite_credentials() -> Credentials {
    let config_map = |namespace: &str, name: &str, ca: &TestCa| {
        let pem: Vec<String> = ca.pem.lines().map(|l| format!("    {l}")).collect();
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {namespace}}}\ndata:\n  ca.crt: |\n{}\n",
            pem.join("\n")
        )
    };
    let docs = std::cell::RefCell::new(Vec::new());
    let secrets = std::cell::RefCell::new(BTreeMap::new());
    let secret = |namespace: &str, name: &str, ca: &TestCa, sans: &[&str]| {
        let (cert, key) = ca.leaf(name, sans);
        docs.borrow_mut()
            .push(tls_secret_yaml(name, namespace, &cert, &key, &ca.pem, None));
        secrets
            .borrow_mut()
            .insert(format!("{namespace}/{name}"), (cert.clone(), key.clone()));
        (cert, key)
    };
    let self_signed = TestCa::new("suite-self-signed");
    let validity = TestCa::new("tls-validity-checks-ca-certificate");
    let per_port = TestCa::new("tls-validity-checks-per-port-ca-certificate");
    let checks_ca = TestCa::new("tls-checks-ca-certificate");
    secret(
        "gateway-conformance-web-backend",
        "certificate",
        &self_signed,
        &["*.example.com"],
    );
    // The suite's names are `*`, `*.org` and `*.wildcard.org`, which Go's client accepts for
    // example.org; rustls does not take a wildcard directly under a top-level domain, so
    // the names the tests ask for are listed too.
    secret(
        INFRA,
        "tls-validity-checks-certificate",
        &self_signed,
        &[
            "*.org",
            "*.wildcard.org",
            "example.org",
            "second-example.org",
            "unknown-example.org",
            "https-listener.org",
        ],
    );
    secret(
        INFRA,
        "tls-validity-checks-client-certificate",
        &validity,
        &["client.example.com"],
    );
    secret(
        INFRA,
        "tls-validity-checks-per-port-client-certificate",
        &per_port,
        &["client.example.com"],
    );
    let passthrough = secret(
        INFRA,
        "tls-passthrough-checks-certificate",
        &self_signed,
        &["abc.example.com"],
    );
    docs.borrow_mut().push(tls_secret_yaml(
        "tls-passthrough-checks-certificate",
        "gateway-conformance-app-backend",
        &passthrough.0,
        &passthrough.1,
        &self_signed.pem,
        None,
    ));
    secrets.borrow_mut().insert(
        "gateway-conformance-app-backend/tls-passthrough-checks-certificate".to_string(),
        passthrough.clone(),
    );
    let checks = secret(
        INFRA,
        "tls-checks-certificate",
        &checks_ca,
        &[
            "abc.example.com",
            "other.example.com",
            "spiffe://abc.example.com/test-identity",
        ],
    );
    secret(
        INFRA,
        "tls-checks-client-certificate",
        &checks_ca,
        &["client.example.com"],
    );
    secret(
        INFRA,
        "tls-terminate-checks-certificate",
        &checks_ca,
        &["tls.example.com"],
    );
    let mismatch = TestCa::new("mismatch-ca-certificate");
    let mut config_maps = BTreeMap::new();
    for (ns, name, ca) in [
        (
            "gateway-conformance-web-backend",
            "web-backend-cm",
            &self_signed,
        ),
        (INFRA, "tls-validity-checks-ca-certificate", &validity),
        (
            INFRA,
            "tls-validity-checks-per-port-ca-certificate",
            &per_port,
        ),
        (INFRA, "tls-checks-ca-certificate", &checks_ca),
        (INFRA, "mismatch-ca-certificate", &mismatch),
    ] {
        docs.borrow_mut().push(config_map(ns, name, ca));
        config_maps.insert(format!("{ns}/{name}"), ca.pem.clone());
    }
    Credentials {
        yaml: docs.into_inner().join("\n---\n"),
        passthrough,
        checks,
        roots: format!("{}{}", self_signed.pem, checks_ca.pem),
        secrets: secrets.into_inner(),
        config_maps,
    }
}

/// Every Gateway API object's status as `meshd status` prints it for `dir`, by
/// `Kind namespace/name`.
fn statuses(dir: &std::path::Path) -> BTreeMap<String, Value> {
    let out = Command::new(meshd_bin())
        .args(["status", "--config-dir"])
        .arg(dir)
        .args(["-o", "json"])
        .output()
        .expect("meshd status");
    assert!(
        out.status.success(),
        "meshd status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("meshd status prints JSON");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let key = format!(
                "{} {}/{}",
                o["kind"].as_str().unwrap_or(""),
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or("")
            );
            (key, o["status"].clone())
        })
        .collect()
}

/// Whether `conditions` hold `want` (`Type=Status/Reason`; a missing status or reason
/// matches any), as the suite's `findConditionInList` decides.
fn has_condition(conditions: &Value, want: &str) -> bool {
    let (kind, rest) = want.split_once('=').unwrap_or((want, ""));
    let (status, reason) = rest.split_once('/').unwrap_or((rest, ""));
    conditions.as_array().into_iter().flatten().any(|c| {
        c["type"] == kind
            && (status.is_empty() || c["status"] == status)
            && (reason.is_empty() || c["reason"] == reason)
    })
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// What of `want` (conditions, listeners, listener conditions, attached ListenerSets) the
/// status `got` of a Gateway or ListenerSet lacks.
fn gateway_status_failures(what: &str, want: &Value, got: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for c in strings(&want["conditions"]) {
        if !has_condition(&got["conditions"], c) {
            out.push(format!("{what}: no condition {c} in {}", got["conditions"]));
        }
    }
    let listeners: Vec<&Value> = got["listeners"].as_array().into_iter().flatten().collect();
    // GatewayStatusMustHaveListeners: as many listeners, each found by name.
    if let Some(expected) = want["listeners"].as_array() {
        if expected.len() != listeners.len() {
            out.push(format!(
                "{what}: {} listeners in status, expected {}",
                listeners.len(),
                expected.len()
            ));
        }
        for e in expected {
            let name = e["name"].as_str().unwrap_or("");
            let Some(l) = listeners.iter().find(|l| l["name"] == name) else {
                out.push(format!("{what}: no status for listener {name}"));
                continue;
            };
            let kinds: Vec<(String, String)> = l["supportedKinds"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|k| {
                    (
                        k["group"]
                            .as_str()
                            .unwrap_or("gateway.networking.k8s.io")
                            .to_string(),
                        k["kind"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            if let Some(want_kinds) = e["supportedKinds"].as_array() {
                if want_kinds.is_empty() && !kinds.is_empty() {
                    out.push(format!(
                        "{what}: listener {name} supports {kinds:?}, expected none"
                    ));
                }
                for k in strings(&e["supportedKinds"]) {
                    let (group, kind) = k
                        .rsplit_once('/')
                        .unwrap_or(("gateway.networking.k8s.io", k));
                    if !kinds.iter().any(|(g, n)| g == group && n == kind) {
                        out.push(format!(
                            "{what}: listener {name} does not support {k} ({kinds:?})"
                        ));
                    }
                }
            }
            if let Some(n) = e["attachedRoutes"].as_u64()
                && l["attachedRoutes"].as_u64().unwrap_or(0) != n
            {
                out.push(format!(
                    "{what}: listener {name} has {} attached routes, expected {n}",
                    l["attachedRoutes"]
                ));
            }
            for c in strings(&e["conditions"]) {
                if !has_condition(&l["conditions"], c) {
                    out.push(format!(
                        "{what}: listener {name} lacks {c}: {}",
                        l["conditions"]
                    ));
                }
            }
        }
    }
    // GatewayListenersMustHaveConditions: every listener (or the named ones).
    let names = strings(&want["listenerNames"]);
    for c in strings(&want["listenerConditions"]) {
        for l in &listeners {
            let name = l["name"].as_str().unwrap_or("");
            if (names.is_empty() || names.contains(&name)) && !has_condition(&l["conditions"], c) {
                out.push(format!(
                    "{what}: listener {name} lacks {c}: {}",
                    l["conditions"]
                ));
            }
        }
        for n in &names {
            if !listeners.iter().any(|l| l["name"] == *n) {
                out.push(format!("{what}: no status for listener {n}"));
            }
        }
    }
    // GatewayMustHaveZeroRoutes.
    if want["zeroRoutes"] == true {
        let ok = listeners.is_empty()
            || (listeners.len() == 1 && listeners[0]["attachedRoutes"].as_u64().unwrap_or(0) == 0);
        if !ok {
            out.push(format!(
                "{what}: expected no attached route: {}",
                got["listeners"]
            ));
        }
    }
    if want["address"] == true
        && !got["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["type"].as_str().is_some_and(|t| !t.is_empty()))
    {
        out.push(format!(
            "{what}: no typed address in status: {}",
            got["addresses"]
        ));
    }
    // `statusAddresses`: status.addresses holds each of `has` (type and value) and none of
    // the values of `hasNot`.
    let listed: Vec<&Value> = got["addresses"].as_array().into_iter().flatten().collect();
    for a in want["statusAddresses"]["has"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let matching: Vec<&&Value> = listed.iter().filter(|l| l["value"] == a["value"]).collect();
        if matching.is_empty() || matching.iter().any(|l| l["type"] != a["type"]) {
            out.push(format!(
                "{what}: status.addresses lacks {a}: {}",
                got["addresses"]
            ));
        }
    }
    for v in strings(&want["statusAddresses"]["hasNot"]) {
        if listed.iter().any(|l| l["value"] == v) {
            out.push(format!(
                "{what}: status.addresses has {v}: {}",
                got["addresses"]
            ));
        }
    }
    if let Some(n) = want["attachedListenerSets"].as_u64()
        && got["attachedListenerSets"].as_u64().unwrap_or(0) != n
    {
        out.push(format!(
            "{what}: {} attached ListenerSets, expected {n}",
            got["attachedListenerSets"]
        ));
    }
    out
}

/// What of `want` (parents with conditions, or no accepted parent) a route's status lacks,
/// as the suite's parentsForRouteMatch and RouteMustHaveNoAcceptedParents decide.
fn route_status_failures(what: &str, want: &Value, got: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let parents: Vec<&Value> = got["parents"].as_array().into_iter().flatten().collect();
    for p in want["parents"].as_array().into_iter().flatten() {
        let parent = p["parent"].as_str().unwrap_or("");
        let (kind, nn) = parent.split_once(' ').unwrap_or(("Gateway", parent));
        let (ns, name) = nn.split_once('/').unwrap_or(("", nn));
        let found = parents.iter().any(|a| {
            let r = &a["parentRef"];
            r["kind"].as_str().unwrap_or("Gateway") == kind
                && r["name"] == name
                && r["namespace"].as_str().is_none_or(|n| n == ns)
                && strings(&p["conditions"])
                    .iter()
                    .all(|c| has_condition(&a["conditions"], c))
        });
        if !found {
            out.push(format!(
                "{what}: no parent {parent} with {:?}: parents are {}",
                strings(&p["conditions"]),
                got["parents"]
            ));
        }
    }
    if want["noAcceptedParents"] == true {
        let ok = parents.is_empty()
            || (parents.len() == 1 && has_condition(&parents[0]["conditions"], "Accepted=False"));
        if !ok {
            out.push(format!(
                "{what}: expected no accepted parent: {}",
                got["parents"]
            ));
        }
    }
    out
}

/// A BackendTLSPolicy's status as the suite's BackendTLSPolicyMustHaveCondition reads it:
/// an ancestor naming the Gateway `ancestor` (namespace/name; an ancestor without a
/// namespace matches any) holds every condition.
fn policy_status_failures(what: &str, want: &Value, got: &Value) -> Vec<String> {
    let Some(gateway) = want["ancestor"].as_str() else {
        return vec![format!("{what}: an expectation without `ancestor`: {want}")];
    };
    let (ns, name) = gateway.split_once('/').unwrap_or(("", gateway));
    let conditions = strings(&want["conditions"]);
    let found = got["ancestors"].as_array().into_iter().flatten().any(|a| {
        let r = &a["ancestorRef"];
        r["name"] == name
            && r["namespace"].as_str().is_none_or(|n| n == ns)
            && conditions
                .iter()
                .all(|c| has_condition(&a["conditions"], c))
    });
    if found {
        Vec::new()
    } else {
        vec![format!(
            "{what}: no ancestor {gateway} with {conditions:?}: ancestors are {}",
            got["ancestors"]
        )]
    }
}

/// The base manifests' Gateways the suite waits for before each test (NamespacesMustBeReady).
const BASE_GATEWAYS: &[&str] = &[
    "same-namespace",
    "same-namespace-with-https-listener",
    "all-namespaces",
    "backend-namespaces",
];

/// The status assertions of one transcribed test against `meshd status`.
fn status_failures(test: &Value, st: &BTreeMap<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    if test["baseReady"] == true {
        for g in BASE_GATEWAYS {
            let key = format!("Gateway {INFRA}/{g}");
            let got = st.get(&key).cloned().unwrap_or(Value::Null);
            for c in ["Accepted=True", "Programmed=True"] {
                if !has_condition(&got["conditions"], c) {
                    out.push(format!("{key} (base): not {c}: {}", got["conditions"]));
                }
            }
        }
    }
    for e in test["expect"].as_array().into_iter().flatten() {
        if let Some(policy) = e["policy"].as_str() {
            let key = format!("BackendTLSPolicy {policy}");
            let got = st.get(&key).cloned().unwrap_or(Value::Null);
            out.extend(policy_status_failures(&key, e, &got));
            continue;
        }
        let (key, route) = if let Some(g) = e["gateway"].as_str() {
            (format!("Gateway {g}"), false)
        } else if let Some(c) = e["gatewayClass"].as_str() {
            (format!("GatewayClass /{c}"), false)
        } else if let Some(l) = e["listenerSet"].as_str() {
            (format!("ListenerSet {l}"), false)
        } else if let Some(r) = e["route"].as_str() {
            (r.to_string(), true)
        } else {
            out.push(format!("unreadable expectation {e}"));
            continue;
        };
        let got = st.get(&key).cloned().unwrap_or(Value::Null);
        if got.is_null() && e["noAcceptedParents"] != true {
            out.push(format!("{key}: no status"));
            continue;
        }
        out.extend(if route {
            route_status_failures(&key, e, &got)
        } else {
            gateway_status_failures(&key, e, &got)
        });
    }
    out
}

/// The suite's tests whose assertions are statuses (tests/gateway_conformance/status.yaml):
/// the base manifests, the suite's credentials and each test's manifests in a folder,
/// then `meshd status` on it — the conditions meshd writes in Kubernetes mode.
#[test]
fn gateway_status_conformance_transcribed() {
    let Some(suite) = suite() else { return };
    let config = TempDir::new("gwapi-status");
    let base = base_manifests(&suite);
    config.write("base.yaml", &base);
    config.write("credentials.yaml", &suite_credentials().yaml);
    let mut results: BTreeMap<String, Result<usize, String>> = BTreeMap::new();
    for test in transcribed("status.yaml") {
        let name = test["test"].as_str().unwrap_or("?").to_string();
        if let Some(why) = test["skip"].as_str() {
            eprintln!("  SKIP {name}: {why}");
            continue;
        }
        config.write("test.yaml", &test_manifests(&suite, &test));
        let failures = status_failures(&test, &statuses(config.path()));
        let checks = test["expect"].as_array().map_or(0, Vec::len);
        results.insert(name, outcome(&failures, checks));
    }
    report_counting("GATEWAY status", "objects checked", &results);
}

/// The TLS port of the suite's TLS backends, moved from 8443 (see [`templated`]).
const BACKEND_TLS_PORT: u16 = 9443;

/// The suite's TLS backends as Pods at 127.0.1.`first`… (two replicas each): `tls-backend`
/// and `tls-backend-2` answer HTTPS with JSON naming the pod; `tcp-backend` speaks the
/// suite's TCP echo protocol in plain text on 3000 and over TLS on the TLS port.
fn tls_pods(docs: &[Value], first: u32, creds: &Credentials) -> (Vec<Value>, Vec<Server>) {
    let mut pods = Vec::new();
    let mut servers = Vec::new();
    let mut next = first;
    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let ns = d["metadata"]["namespace"].as_str().unwrap_or("default");
        if !name.starts_with("tls-backend") && name != "tcp-backend" {
            continue;
        }
        // The certificate its Secret volume holds.
        let (cert, key) = if name.starts_with("tls-backend") && ns == INFRA {
            creds.checks.clone()
        } else {
            creds.passthrough.clone()
        };
        let labels = d["spec"]["template"]["metadata"]["labels"].clone();
        for replica in 0..2 {
            let ip = format!("127.0.1.{next}");
            next += 1;
            let pod = format!("{name}-{replica}");
            pods.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": ns, "labels": labels},
                "spec": {"containers": [{"name": name, "image": "echo-basic"}]},
                "status": {"phase": "Running", "podIP": ip,
                           "conditions": [{"type": "Ready", "status": "True"}]},
            }));
            let config = server_tls(&cert, &key);
            let addr = format!("{ip}:{BACKEND_TLS_PORT}");
            let (p, n) = (pod.clone(), ns.to_string());
            if name == "tcp-backend" {
                servers.push(Server::start(
                    "tcp-backend",
                    &format!("{ip}:3000"),
                    move |s| {
                        tcp_echo(s, &p, &n, None);
                    },
                ));
                let (p, n) = (pod.clone(), ns.to_string());
                servers.push(Server::start("tcp-backend (TLS)", &addr, move |s| {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                    let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                        return;
                    };
                    tcp_echo_tls(rustls::StreamOwned::new(conn, s), &p, &n);
                }));
            } else {
                servers.push(Server::start("tls-backend", &addr, move |s| {
                    https_echo(config.clone(), s, &p, &n)
                }));
            }
        }
    }
    (pods, servers)
}

fn server_tls(cert: &str, key: &str) -> Arc<rustls::ServerConfig> {
    server_tls_verifying(cert, key, None)
}

/// A backend's TLS server with `cert`; with `client_ca`, clients must present a
/// certificate that CA signed.
fn server_tls_verifying(
    cert: &str,
    key: &str,
    client_ca: Option<&str>,
) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .expect("backend certificate");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("backend key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.expect("client CA")).expect("client CA");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(builder.with_single_cert(certs, key).expect("backend TLS"))
}

/// The suite's TCP echo server (echo-basic's tcpserver) on one connection: a welcome line,
/// then `PING` → `PONG`, `IS_TLS` → `true`/`false`, `TEST` → JSON naming the pod (and the
/// SNI it was reached by over TLS).
fn tcp_echo(mut s: impl Read + Write, pod: &str, ns: &str, sni: Option<String>) {
    if s.write_all(b"Gateway API Test TCP Server\n").is_err() {
        return;
    }
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => {}
            Ok(1) => {
                line.push(byte[0]);
                continue;
            }
            _ => return,
        }
        let answer = match String::from_utf8_lossy(&line).trim() {
            "PING" => "PONG".to_string(),
            "IS_TLS" => sni.is_some().to_string(),
            "TEST" => {
                let mut v =
                    serde_json::json!({"namespace": ns, "pod": pod, "isTLS": sni.is_some()});
                if let Some(name) = &sni {
                    v["tls"] = serde_json::json!({"serverName": name});
                }
                v.to_string()
            }
            other => format!("unknown command {other}"),
        };
        line.clear();
        if s.write_all(format!("{answer}\n").as_bytes()).is_err() || s.flush().is_err() {
            return;
        }
    }
}

fn tcp_echo_tls(
    mut tls: rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    pod: &str,
    ns: &str,
) {
    // The handshake first, so that the SNI is known before the welcome line.
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            return;
        }
    }
    let sni = tls.conn.server_name().unwrap_or_default().to_string();
    tcp_echo(tls, pod, ns, Some(sni));
}

/// One TLS request of tls.yaml through the gateway: what went wrong, if anything.
fn tls_request_fails(req: &Value, roots: &str) -> Option<String> {
    let port = req["port"].as_u64().unwrap_or(443);
    let sni = req["sni"].as_str().unwrap_or_default();
    let addr: std::net::SocketAddr = format!("{GATEWAY_IP}:{port}").parse().ok()?;
    let conn = crate::https::connect(addr, sni, roots, None, Duration::from_secs(3));
    let mut tls = match conn {
        Ok(t) => t,
        Err(e) => return (req["rejected"] != true).then(|| format!("{sni}:{port}: {e}")),
    };
    // The handshake decides a rejection: the gateway resets or closes on an SNI it does
    // not serve.
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            return (req["rejected"] != true).then(|| format!("{sni}:{port}: handshake: {e}"));
        }
    }
    if req["rejected"] == true {
        return Some(format!(
            "{sni}:{port}: the gateway accepted a connection it must refuse"
        ));
    }
    let backend = req["backend"].as_str().unwrap_or_default();
    let ns = req["namespace"].as_str().unwrap_or(INFRA);
    let answer: Value = if req["tcp"] == true {
        let mut lines = Vec::new();
        let read_line = |tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>| {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while let Ok(1) = tls.read(&mut b) {
                if b[0] == b'\n' {
                    break;
                }
                line.push(b[0]);
            }
            String::from_utf8_lossy(&line).to_string()
        };
        lines.push(read_line(&mut tls));
        for cmd in ["PING", "IS_TLS", "TEST"] {
            if tls.write_all(format!("{cmd}\n").as_bytes()).is_err() {
                return Some(format!("{sni}:{port}: could not send {cmd}"));
            }
            lines.push(read_line(&mut tls));
        }
        let want_tls = req["backend_tls"] == true;
        let want = [
            "Gateway API Test TCP Server".to_string(),
            "PONG".to_string(),
            want_tls.to_string(),
        ];
        if lines[..3] != want {
            return Some(format!("{sni}:{port}: the TCP backend said {lines:?}"));
        }
        serde_json::from_str(&lines[3]).unwrap_or(Value::Null)
    } else {
        let head = format!("GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n");
        if tls.write_all(head.as_bytes()).is_err() {
            return Some(format!("{sni}:{port}: could not send the request"));
        }
        let mut got = Vec::new();
        let _ = tls.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        if !text.starts_with("HTTP/1.1 200") {
            return Some(format!(
                "{sni}:{port}: {}",
                text.lines().next().unwrap_or("no answer")
            ));
        }
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or_default())
            .unwrap_or(Value::Null)
    };
    let pod = answer["pod"].as_str().unwrap_or_default();
    if !pod.starts_with(&format!("{backend}-")) || answer["namespace"] != ns {
        return Some(format!(
            "{sni}:{port}: answered by {answer}, expected {ns}/{backend}"
        ));
    }
    if let Some(name) = req["backend_sni"].as_str()
        && answer["tls"]["serverName"] != name
    {
        return Some(format!(
            "{sni}:{port}: the backend saw SNI {}, expected {name}",
            answer["tls"]["serverName"]
        ));
    }
    None
}

/// GATEWAY-TLS: the suite's TLSRoute tests through a real gateway Envoy (its
/// certificates over SDS on the TLS port), the suite's TLS and TCP echo backends on
/// loopback, and each test's statuses from `meshd status`.
#[test]
fn gateway_tls_conformance_transcribed() {
    let Some(suite) = suite() else { return };
    let Some((dir, config)) = envoy_test("gwapi-tls-suite") else {
        return;
    };
    let base = base_manifests(&suite);
    config.write("base.yaml", &base);
    let creds = suite_credentials();
    config.write("credentials.yaml", &creds.yaml);
    let (pods, _servers) = tls_pods(&documents(&base), 60, &creds);
    config.write(
        "pods.yaml",
        &serde_json::to_string(
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": pods}),
        )
        .expect("json"),
    );
    let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 18080);
    let mut router: Option<(String, Envoy)> = None;
    let mut results: BTreeMap<String, Result<usize, String>> = BTreeMap::new();
    for test in transcribed("tls.yaml") {
        let name = test["test"].as_str().unwrap_or("?").to_string();
        config.write("test.yaml", &test_manifests(&suite, &test));
        let mut failures = status_failures(&test, &statuses(config.path()));
        let requests: Vec<Value> = test["requests"].as_array().cloned().unwrap_or_default();
        for req in &requests {
            let gateway = req["gateway"]
                .as_str()
                .or(test["gateway"].as_str())
                .unwrap_or("same-namespace")
                .to_string();
            use_router(&mut router, &gateway, dir.path(), Some(&issuer));
            // Eventually consistent, as the suite waits: the same answer for a while.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let outcome = loop {
                let fail = tls_request_fails(req, &creds.roots);
                if fail.is_none() || std::time::Instant::now() > deadline {
                    break fail;
                }
                std::thread::sleep(Duration::from_millis(300));
            };
            failures.extend(outcome);
        }
        results.insert(name, outcome(&failures, requests.len()));
    }
    report("GATEWAY-TLS", &results);
    if let Some((_, r)) = &router {
        assert_envoy_accepted(r);
    }
    meshd.assert_no_nacks();
}
