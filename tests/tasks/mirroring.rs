//! istio.io task "Mirroring" (tasks/traffic-management/mirroring): httpbin v1 and v2 and
//! the sleep client; first every request goes to v1 only, then `mirror` with
//! `mirrorPercentage: 100` sends v2 a copy of each request (Host with `-shadow`
//! appended) while v1 alone answers — the copies are fire-and-forget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use crate::harness::*;
use crate::traffic_apps::{deploy, httpbin, kubectl_apply};

/// The task's "Before you begin": httpbin-v1 and httpbin-v2 (gunicorn on port 80) and the
/// httpbin Service (port 8000 → 80). The sleep client's Deployment is replaced by its pod
/// and a Sidecar in [`crate::scripted::sleep`].
const HTTPBIN: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin-v1
spec:
  replicas: 1
  selector:
    matchLabels:
      app: httpbin
      version: v1
  template:
    metadata:
      labels:
        app: httpbin
        version: v1
    spec:
      containers:
      - image: docker.io/kennethreitz/httpbin
        imagePullPolicy: IfNotPresent
        name: httpbin
        command: ["gunicorn", "--access-logfile", "-", "-b", "0.0.0.0:80", "httpbin:app"]
        ports:
        - containerPort: 80
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin-v2
spec:
  replicas: 1
  selector:
    matchLabels:
      app: httpbin
      version: v2
  template:
    metadata:
      labels:
        app: httpbin
        version: v2
    spec:
      containers:
      - image: docker.io/kennethreitz/httpbin
        imagePullPolicy: IfNotPresent
        name: httpbin
        command: ["gunicorn", "--access-logfile", "-", "-b", "0.0.0.0:80", "httpbin:app"]
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin
  labels:
    app: httpbin
spec:
  ports:
  - name: http
    port: 8000
    targetPort: 80
  selector:
    app: httpbin
"#;

/// "Creating a default routing policy".
const ALL_V1: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"#;

/// "Mirroring traffic to httpbin-v2".
const MIRROR: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
    mirror:
      host: httpbin
      subset: v2
    mirrorPercentage:
      value: 100.0
"#;

/// `kubectl exec deploy/sleep -c sleep -- curl -sS http://httpbin:8000/headers`, through
/// sleep's sidecar.
fn curl_headers() -> std::io::Result<HttpResponse> {
    http_get("127.0.0.1:8000", "/headers", &[("Host", "httpbin:8000")])
}

fn hosts(reqs: &[Request]) -> Vec<String> {
    reqs.iter()
        .map(|r| r.header("host").unwrap_or("").to_string())
        .collect()
}

#[test]
fn mirroring_copies_every_request_to_v2() {
    let Some((dir, config)) = envoy_test("mirroring") else {
        return;
    };
    deploy(
        &config,
        HTTPBIN,
        &[("httpbin-v1", "127.0.0.21"), ("httpbin-v2", "127.0.0.22")],
    );
    config.write(
        "sleep.yaml",
        &crate::scripted::sleep("", 8000, "HTTP", "127.0.0.1", "./*", ""),
    );
    kubectl_apply(&config, ALL_V1);
    let v1 = HttpApp::start("127.0.0.21:80", httpbin);
    // v2 answers as httpbin does, or with a forced status (to show its answers are dropped).
    let v2_status = Arc::new(AtomicU16::new(0));
    let forced = v2_status.clone();
    let v2 = HttpApp::start("127.0.0.22:80", move |req: &Request| {
        match forced.load(Ordering::Relaxed) {
            0 => httpbin(req),
            s => Answer {
                status: s,
                headers: vec![],
                body: "v2 failing".into(),
            },
        }
    });
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    let sleep = crate::scripted::start_sleep(&dir, &[("app", "sleep")]);
    wait_for(
        "httpbin through the sidecar",
        Duration::from_secs(20),
        || curl_headers().ok().filter(|r| r.status == 200),
    );

    // "Send some traffic": v1's log has the requests, v2's has none.
    let (v1_before, v2_before) = (v1.count(), v2.count());
    for _ in 0..10 {
        let r = curl_headers().expect("curl");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.contains("\"host\": \"httpbin:8000\""), "{}", r.body);
    }
    assert_eq!(v1.count(), v1_before + 10, "v1 answers every request");
    assert_eq!(v2.count(), v2_before, "v2 gets nothing yet");

    // "Mirroring traffic to httpbin-v2".
    kubectl_apply(&config, MIRROR);
    wait_for("v2 to get a copy", Duration::from_secs(20), || {
        let before = v2.count();
        curl_headers().ok()?;
        wait_for_opt(Duration::from_secs(1), || v2.count() > before)
    });
    let (v1_before, v2_before) = (v1.count(), v2.count());
    for _ in 0..20 {
        let r = curl_headers().expect("curl");
        assert_eq!(r.status, 200, "{r:?}");
        // The answer is v1's: the host it saw is the original one.
        assert!(r.body.contains("\"host\": \"httpbin:8000\""), "{}", r.body);
    }
    assert_eq!(v1.count(), v1_before + 20, "v1 answers every request");
    // mirrorPercentage 100: v2 gets a copy of each of the 20 (sent out of band, so they
    // may land a moment after the answers).
    wait_for("v2's 20 copies", Duration::from_secs(5), || {
        (v2.count() >= v2_before + 20).then_some(())
    });
    let copies = v2.requests()[v2_before..].to_vec();
    assert_eq!(copies.len(), 20, "exactly one copy per request: {copies:?}");
    assert!(
        copies.iter().all(|r| r.path == "/headers"),
        "the copies are the same request: {copies:?}"
    );
    // "the requests are sent to the mirrored service with their Host/Authority headers
    // appended with -shadow".
    assert!(
        hosts(&copies).iter().all(|h| h == "httpbin-shadow:8000"),
        "shadow Host headers: {:?}",
        hosts(&copies)
    );
    assert!(
        hosts(&v1.requests()[v1_before..])
            .iter()
            .all(|h| h == "httpbin:8000")
    );

    // "fire and forget": with v2 failing, the client still gets v1's answers.
    v2_status.store(503, Ordering::Relaxed);
    let v2_before = v2.count();
    for _ in 0..10 {
        let r = curl_headers().expect("curl");
        assert_eq!(r.status, 200, "v2's 503 is discarded: {r:?}");
    }
    wait_for("v2's 10 copies", Duration::from_secs(5), || {
        (v2.count() >= v2_before + 10).then_some(())
    });
    assert_envoy_accepted(&sleep);
    drop(meshd);
}

/// Polls `f` for up to `timeout`: Some(()) once it holds.
fn wait_for_opt(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<()> {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}
