//! Telemetry tracing through a real Envoy: productpage's sidecar reports spans to a
//! Zipkin collector (a receiver of Zipkin's v2 JSON API in the test) with the service
//! name and tags Istio gives them, at 100% sampling, and none at 0%; a workload's
//! Telemetry merges over the mesh's field by field, as istiod merges them.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bookinfo::{Bookinfo, networking};
use crate::harness::*;

/// Every request an HTTP/1.1 receiver got: (request head, body), answered with
/// `answer` (a whole response).
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn http_sink(what: &str, addr: &str, answer: &'static [u8]) -> (Received, Server) {
    let got: Received = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let server = Server::start(what, addr, move |mut s| {
        let sink = sink.clone();
        std::thread::spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let mut buf: Vec<u8> = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let lower = head.to_ascii_lowercase();
                buf.drain(..end + 4);
                let mut more = |buf: &mut Vec<u8>| match s.read(&mut chunk) {
                    Ok(0) | Err(_) => false,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        true
                    }
                };
                let body: Vec<u8> = if lower.contains("transfer-encoding: chunked") {
                    // Chunks: hex size, CRLF, data, CRLF; a zero size ends the body.
                    let mut body = Vec::new();
                    loop {
                        let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                            if !more(&mut buf) {
                                return;
                            }
                            continue;
                        };
                        let size =
                            usize::from_str_radix(String::from_utf8_lossy(&buf[..eol]).trim(), 16)
                                .unwrap_or(0);
                        while buf.len() < eol + 2 + size + 2 {
                            if !more(&mut buf) {
                                return;
                            }
                        }
                        body.extend_from_slice(&buf[eol + 2..eol + 2 + size]);
                        buf.drain(..eol + 2 + size + 2);
                        if size == 0 {
                            break body;
                        }
                    }
                } else {
                    let len: usize = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < len {
                        if !more(&mut buf) {
                            return;
                        }
                    }
                    buf.drain(..len).collect()
                };
                if let Ok(mut all) = sink.lock() {
                    all.push((head, body));
                }
                if s.write_all(answer).is_err() {
                    return;
                }
            }
        });
    });
    (got, server)
}

/// Spans a Zipkin collector received (POST /api/v2/spans, JSON arrays).
struct Collector {
    received: Received,
    _server: Server,
}

impl Collector {
    fn start(addr: &str) -> Collector {
        let (received, server) = http_sink(
            "zipkin",
            addr,
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
        );
        Collector {
            received,
            _server: server,
        }
    }

    fn spans(&self) -> Vec<serde_json::Value> {
        let got = self.received.lock().map(|g| g.clone()).unwrap_or_default();
        got.iter()
            .filter_map(|(_, body)| match serde_json::from_slice(body) {
                Ok(serde_json::Value::Array(list)) => Some(list),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn spans_tagged(&self, key: &str, value: &str) -> Vec<serde_json::Value> {
        self.spans()
            .into_iter()
            .filter(|x| x["tags"][key] == value)
            .collect()
    }
}

const PROVIDER: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: zipkin
      zipkin: {service: zipkin.local, port: 9411}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: zipkin, namespace: default}
spec:
  hosts: [zipkin.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9411, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.1.90}]
---
# productpage's own Telemetry only turns off its server side: merged over the mesh's (as
# istiod merges them), its client side keeps reporting.
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: productpage, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  tracing:
  - match: {mode: SERVER}
    disableSpanReporting: true
"#;

fn telemetry(sampling: u32, phase: &str) -> String {
    format!(
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - providers: [{{name: zipkin}}]
    randomSamplingPercentage: {sampling}
    customTags:
      phase: {{literal: {{value: {phase}}}}}
      user: {{header: {{name: x-user, defaultValue: nobody}}}}
      env: {{environment: {{name: MESHD_NOT_SET, defaultValue: unset}}}}
"#
    )
}

/// Waits until productpage's Envoy serves with the listeners of `phase` (active, not
/// still warming beside the previous ones).
fn wait_phase(b: &Bookinfo, phase: &str) {
    wait_tracer(b, "envoy.tracers.zipkin", phase)
}

fn wait_tracer(b: &Bookinfo, tracer: &str, phase: &str) {
    wait_for(phase, Duration::from_secs(20), || {
        let dump: serde_json::Value = serde_json::from_str(
            &http_get(
                &b.envoy.admin,
                "/config_dump?resource=dynamic_listeners",
                &[],
            )
            .ok()?
            .body,
        )
        .ok()?;
        let active: Vec<String> = dump["configs"]
            .as_array()?
            .iter()
            .filter(|c| c["warming_state"].is_null())
            .map(|c| c["active_state"]["listener"].to_string())
            .collect();
        active
            .iter()
            .any(|l| l.contains(tracer) && l.contains(phase))
            .then_some(())
    });
}

#[test]
fn telemetry_tracing_reports_spans_to_zipkin() {
    let Some(b) = Bookinfo::start(&networking("virtual-service-all-v1.yaml"), Ads::Delta) else {
        return;
    };
    let collector = Collector::start("127.0.1.90:9411");
    b.config.write("tracing-provider.yaml", PROVIDER);
    b.config.write("telemetry.yaml", &telemetry(100, "full"));
    wait_phase(&b, "full");
    for _ in 0..10 {
        let r = b.get("reviews", &[("x-user", "alice")]).expect("answer");
        assert_eq!(r.status, 200);
    }
    let spans = wait_for("10 spans at the collector", Duration::from_secs(20), || {
        let s = collector.spans_tagged("user", "alice");
        (s.len() >= 10).then_some(s)
    });
    assert_eq!(spans.len(), 10, "one span per request at 100%");
    for s in &spans {
        assert_eq!(
            s["localEndpoint"]["serviceName"], "productpage.default",
            "{s}"
        );
        assert_eq!(s["kind"], "CLIENT", "{s}");
        assert!(
            s["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("reviews.default.svc.cluster.local:9080")),
            "{s}"
        );
        let tags = &s["tags"];
        assert_eq!(tags["phase"], "full", "{s}");
        assert_eq!(tags["env"], "unset", "{s}");
        assert_eq!(tags["istio.canonical_service"], "productpage", "{s}");
        assert_eq!(tags["istio.canonical_revision"], "v1", "{s}");
        assert_eq!(tags["istio.namespace"], "default", "{s}");
        assert_eq!(tags["http.status_code"], "200", "{s}");
    }
    // A request without the header gets the tag's default.
    let r = b.get("reviews", &[]).expect("answer");
    assert_eq!(r.status, 200);

    // 0%: no span for these requests.
    b.config.write("telemetry.yaml", &telemetry(0, "none"));
    wait_phase(&b, "none");
    for _ in 0..10 {
        assert_eq!(
            b.get("reviews", &[("x-user", "zero")])
                .expect("answer")
                .status,
            200
        );
    }
    let last_unsampled = Instant::now();
    b.config.write("telemetry.yaml", &telemetry(100, "again"));
    wait_phase(&b, "again");
    for _ in 0..5 {
        assert_eq!(
            b.get("reviews", &[("x-user", "again")])
                .expect("answer")
                .status,
            200
        );
    }
    wait_for("the spans after", Duration::from_secs(20), || {
        (collector.spans_tagged("user", "again").len() >= 5).then_some(())
    });
    // Envoy flushes every buffered span within its 5 s flush interval: past it, any span
    // of the unsampled requests would have arrived.
    let flushed = Duration::from_millis(5500);
    if let Some(rest) = flushed.checked_sub(last_unsampled.elapsed()) {
        std::thread::sleep(rest);
    }
    assert!(
        collector.spans_tagged("user", "zero").is_empty(),
        "no span at 0% sampling"
    );
    assert_eq!(
        collector.spans_tagged("user", "nobody").len(),
        1,
        "the header tag's default"
    );
    b.assert_healthy();
}

const PROVIDERS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: otel-grpc
      opentelemetry: {service: otel.local, port: 4317}
    - name: otel-http
      opentelemetry:
        service: otel-http.local
        port: 4318
        http: {path: /v1/traces, timeout: 5s, headers: [{name: x-tenant, value: meshd-test}]}
    - name: datadog
      datadog: {service: datadog.local, port: 8126}
    - name: skywalking
      skywalking: {service: skywalking.local, port: 11800}
"#;

/// The collectors: (name, host, port, protocol, address) of each ServiceEntry.
const COLLECTORS: [(&str, &str, u16, &str, &str); 4] = [
    ("otel", "otel.local", 4317, "GRPC", "127.0.1.91"),
    ("otel-http", "otel-http.local", 4318, "HTTP", "127.0.1.92"),
    ("datadog", "datadog.local", 8126, "HTTP", "127.0.1.93"),
    (
        "skywalking",
        "skywalking.local",
        11800,
        "GRPC",
        "127.0.1.94",
    ),
];

fn collector_entries() -> String {
    COLLECTORS
        .iter()
        .map(|(name, host, port, protocol, address)| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: {port}, name: {}, protocol: {protocol}}}]\n  endpoints: [{{address: {address}}}]\n",
                protocol.to_ascii_lowercase()
            )
        })
        .collect()
}

/// A gRPC receiver for any method (Python grpcio's generic handler): it prints each
/// request message as `METHOD HEX`, answering with an empty message (an empty
/// ExportTraceServiceResponse, an empty SkyWalking Commands).
const GRPC_SINK: &str = r#"
import sys, grpc
from concurrent import futures

class Sink(grpc.GenericRpcHandler):
    def service(self, details):
        method = details.method
        def record(req):
            print(method, req.hex(), flush=True)
        def unary(req, ctx):
            record(req)
            return b""
        def client_stream(reqs, ctx):
            for r in reqs:
                record(r)
            return b""
        if method.startswith("/skywalking."):
            return grpc.stream_unary_rpc_method_handler(client_stream)
        return grpc.unary_unary_rpc_method_handler(unary)

server = grpc.server(futures.ThreadPoolExecutor(8), handlers=[Sink()])
for address in sys.argv[1:]:
    server.add_insecure_port(address)
server.start()
print("ready", flush=True)
server.wait_for_termination()
"#;

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// OpenTelemetry (OTLP over gRPC and over HTTP), Datadog and SkyWalking providers, one at
/// a time through productpage's real Envoy: each collector receives its protocol's
/// spans, carrying the service name Istio gives them (the proxy's service cluster,
/// `productpage.default`) and the Telemetry's custom tag.
#[test]
fn telemetry_tracing_reports_to_opentelemetry_datadog_and_skywalking() {
    let Some(py) = crate::grpc::python() else {
        skip_or_fail("python with grpcio (.venv-tools) is not installed");
        return;
    };
    let Some(b) = Bookinfo::start(&networking("virtual-service-all-v1.yaml"), Ads::Delta) else {
        return;
    };
    let dir = TempDir::new("collectors");
    let script = dir.write("sink.py", GRPC_SINK);
    let grpc_sink = Proc::spawn(
        "grpc-sink",
        Command::new(&py)
            .arg(&script)
            .args(["127.0.1.91:4317", "127.0.1.94:11800"]),
        dir.path(),
    );
    wait_for("the gRPC sink", Duration::from_secs(20), || {
        grpc_sink.log_text().contains("ready").then_some(())
    });
    let (otlp_http, _otlp_http) = http_sink(
        "otlp-http",
        "127.0.1.92:4318",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
    );
    let (datadog, _datadog) = http_sink(
        "datadog",
        "127.0.1.93:8126",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
    );
    b.config.write(
        "tracing-providers.yaml",
        &format!("{PROVIDERS}{}", collector_entries()),
    );

    // gRPC requests the sink printed for `method`, decoded.
    let grpc_requests = |method: &str| -> Vec<Vec<u8>> {
        grpc_sink
            .log_text()
            .lines()
            .filter_map(|l| l.strip_prefix(method)?.strip_prefix(' '))
            .map(|h| {
                (0..h.len() / 2)
                    .filter_map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
                    .collect()
            })
            .collect()
    };
    let http_requests = |r: &Received| -> Vec<(String, Vec<u8>)> {
        r.lock().map(|g| g.clone()).unwrap_or_default()
    };

    for (provider, tracer) in [
        ("otel-grpc", "envoy.tracers.opentelemetry"),
        ("otel-http", "envoy.tracers.opentelemetry"),
        ("datadog", "envoy.tracers.datadog"),
        ("skywalking", "envoy.tracers.skywalking"),
    ] {
        let phase = format!("phase-{provider}");
        b.config.write(
            "telemetry.yaml",
            &format!(
                r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - providers: [{{name: {provider}}}]
    randomSamplingPercentage: 100
    customTags:
      phase: {{literal: {{value: {phase}}}}}
"#
            ),
        );
        wait_tracer(&b, tracer, &phase);
        let payloads = wait_for(
            &format!("{provider}: spans at the collector"),
            Duration::from_secs(30),
            || {
                // Requests keep coming: exporters flush on a timer or a batch size.
                assert_eq!(b.get("reviews", &[]).expect("answer").status, 200);
                let bodies: Vec<Vec<u8>> = match provider {
                    "otel-grpc" => {
                        grpc_requests("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
                    }
                    "skywalking" => {
                        grpc_requests("/skywalking.v3.TraceSegmentReportService/collect")
                    }
                    "otel-http" => http_requests(&otlp_http)
                        .into_iter()
                        .map(|(_, b)| b)
                        .collect(),
                    _ => http_requests(&datadog)
                        .into_iter()
                        .map(|(_, b)| b)
                        .collect(),
                };
                let tagged: Vec<Vec<u8>> = bodies
                    .into_iter()
                    .filter(|body| contains(body, &phase))
                    .collect();
                (!tagged.is_empty()).then_some(tagged)
            },
        );
        assert!(
            payloads
                .iter()
                .all(|body| contains(body, "productpage.default")),
            "{provider}: the service name productpage.default in every payload"
        );
    }
    // The HTTP exporters' requests: OTLP/HTTP to its path with the provider's header,
    // Datadog's agent API.
    let otlp = http_requests(&otlp_http);
    assert!(
        otlp.iter().all(|(head, _)| {
            let h = head.to_ascii_lowercase();
            h.starts_with("post /v1/traces ") && h.contains("x-tenant: meshd-test")
        }),
        "{:?}",
        otlp.iter().map(|(h, _)| h).collect::<Vec<_>>()
    );
    let dd = http_requests(&datadog);
    assert!(
        dd.iter().any(|(head, _)| head.contains("/v0.4/traces")),
        "{:?}",
        dd.iter().map(|(h, _)| h).collect::<Vec<_>>()
    );
    b.assert_healthy();
}
