//! Telemetry tracing through a real Envoy: productpage's sidecar reports spans to a
//! Zipkin collector (a receiver of Zipkin's v2 JSON API in the test) with the service
//! name and tags Istio gives them, at 100% sampling, and none at 0%; a workload's
//! Telemetry merges over the mesh's field by field, as istiod merges them.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::bookinfo::{Bookinfo, networking};
use crate::harness::*;

/// Spans a Zipkin collector received (POST /api/v2/spans, JSON arrays).
struct Collector {
    app: HttpApp,
}

impl Collector {
    fn start(addr: &str) -> Collector {
        Collector {
            app: HttpApp::start(addr, |_| Answer {
                status: 202,
                headers: vec![],
                body: String::new(),
            }),
        }
    }

    fn spans(&self) -> Vec<serde_json::Value> {
        self.app
            .requests()
            .iter()
            .filter_map(|r| match serde_json::from_slice(&r.body) {
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
    b.config.write(
        "tracing-provider.yaml",
        &format!(
            "{PROVIDER}{}",
            service_entry(&("zipkin", "zipkin.local", 9411, "HTTP", "127.0.1.90"))
        ),
    );
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

/// A MESH_INTERNAL ServiceEntry for a collector: (name, host, port, protocol, address).
fn service_entry((name, host, port, protocol, address): &(&str, &str, u16, &str, &str)) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: {port}, name: {}, protocol: {protocol}}}]\n  endpoints: [{{address: {address}}}]\n",
        protocol.to_ascii_lowercase()
    )
}

fn collector_entries() -> String {
    COLLECTORS.iter().map(service_entry).collect()
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
    let answer = |content_type: &str, body: &str| {
        let a = Answer {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        };
        move |_: &Request| a.clone()
    };
    let otlp_http = HttpApp::start("127.0.1.92:4318", answer("application/x-protobuf", ""));
    let datadog = HttpApp::start("127.0.1.93:8126", answer("application/json", "{}"));
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
                    "otel-http" => otlp_http.requests().into_iter().map(|r| r.body).collect(),
                    _ => datadog.requests().into_iter().map(|r| r.body).collect(),
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
    let otlp = otlp_http.requests();
    assert!(
        otlp.iter().all(|r| r.method == "POST"
            && r.path == "/v1/traces"
            && r.header("x-tenant") == Some("meshd-test")),
        "{otlp:?}"
    );
    let dd = datadog.requests();
    assert!(dd.iter().any(|r| r.path.contains("/v0.4/traces")), "{dd:?}");
    b.assert_healthy();
}
