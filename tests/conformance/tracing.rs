//! Telemetry tracing through a real Envoy: productpage's sidecar reports spans to a
//! Zipkin collector (a receiver of Zipkin's v2 JSON API in the test) with the service
//! name and tags Istio gives them, at 100% sampling, and none at 0%; a workload's
//! Telemetry merges over the mesh's field by field, as istiod merges them.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bookinfo::{Bookinfo, networking};
use crate::harness::*;

/// Spans a Zipkin collector received (POST /api/v2/spans, JSON arrays).
struct Collector {
    spans: Arc<Mutex<Vec<serde_json::Value>>>,
    _server: Server,
}

impl Collector {
    fn start(addr: &str) -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        let server = Server::start("zipkin", addr, move |mut s| {
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
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    buf.drain(..end + 4);
                    let mut more = |buf: &mut Vec<u8>| match s.read(&mut chunk) {
                        Ok(0) | Err(_) => false,
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            true
                        }
                    };
                    let body: Vec<u8> = if head.contains("transfer-encoding: chunked") {
                        // Chunks: hex size, CRLF, data, CRLF; a zero size ends the body.
                        let mut body = Vec::new();
                        loop {
                            let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                                if !more(&mut buf) {
                                    return;
                                }
                                continue;
                            };
                            let size = usize::from_str_radix(
                                String::from_utf8_lossy(&buf[..eol]).trim(),
                                16,
                            )
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
                        let len: usize = head
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
                    if let Ok(serde_json::Value::Array(list)) = serde_json::from_slice(&body)
                        && let Ok(mut all) = sink.lock()
                    {
                        all.extend(list);
                    }
                    if s.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        });
        Collector {
            spans,
            _server: server,
        }
    }

    fn spans_tagged(&self, key: &str, value: &str) -> Vec<serde_json::Value> {
        self.spans
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|x| x["tags"][key] == value)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
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
            .any(|l| l.contains("envoy.tracers.zipkin") && l.contains(phase))
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
