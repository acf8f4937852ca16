//! VirtualService `timeout` and `retries.perTryTimeout` through a real sidecar: Envoy
//! answers 504 once the timeout passes and never before it; without a timeout a slow
//! answer still arrives.

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::scripted::OneService;

const RULES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow, namespace: default}
spec:
  hosts: [slow]
  http:
  - match: [{headers: {x-case: {exact: timed}}}]
    timeout: 0.5s
    route: [{destination: {host: slow}}]
  - match: [{headers: {x-case: {exact: per-try}}}]
    timeout: 10s
    retries: {attempts: 1, perTryTimeout: 0.3s, retryOn: gateway-error}
    route: [{destination: {host: slow}}]
  - match: [{headers: {x-case: {exact: per-try-only}}}]
    timeout: 10s
    retries: {attempts: 1, perTryTimeout: 0.3s}
    route: [{destination: {host: slow}}]
  - route: [{destination: {host: slow}}]
"#;

/// (status, how long the answer took).
fn timed_get(mesh: &OneService, path: &str, case: &str) -> (u16, Duration) {
    let start = Instant::now();
    let r = mesh
        .get(path, &[("x-case", case)])
        .unwrap_or_else(|e| panic!("GET {path} ({case}): {e}"));
    (r.status, start.elapsed())
}

#[test]
fn virtual_service_timeouts_fire_in_envoy() {
    let Some(mesh) = OneService::start("slow", "127.0.0.30", RULES) else {
        return;
    };
    let backend = &mesh.backends[0];
    // timeout: 0.5s in front of an answer that takes 2 s: 504 after about 0.5 s.
    let (status, took) = timed_get(&mesh, "/delay/2000", "timed");
    assert_eq!(status, 504, "the route's timeout fires (after {took:?})");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "504 after about 0.5 s, took {took:?}"
    );
    // An answer inside the timeout is never cut short.
    let (status, took) = timed_get(&mesh, "/delay/200", "timed");
    assert_eq!(
        status, 200,
        "an answer within the timeout arrives ({took:?})"
    );

    // perTryTimeout 0.3 s, one retry on gateway errors (a per-try timeout is one):
    // two tries of 0.3 s each, then 504 — long before the route's own 10 s.
    let (status, took) = timed_get(&mesh, "/delay/1000/per-try", "per-try");
    assert_eq!(status, 504, "per-try timeouts end the request ({took:?})");
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(2000),
        "two tries of 0.3 s, took {took:?}"
    );
    wait_for(
        "the retry reaches the backend",
        Duration::from_secs(3),
        || (backend.count("/delay/1000/per-try") == 2).then_some(()),
    );

    // perTryTimeout without a retryOn that covers timeouts (istiod's default conditions
    // are connection failures): one try, cut at 0.3 s.
    let (status, took) = timed_get(&mesh, "/delay/1000/per-try-only", "per-try-only");
    assert_eq!(
        status, 504,
        "the per-try timeout ends the request ({took:?})"
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(900),
        "one try of 0.3 s, took {took:?}"
    );
    assert_eq!(backend.count("/delay/1000/per-try-only"), 1, "no retry");

    // No timeout: Envoy waits for the slow answer (istiod's default is no timeout).
    let (status, took) = timed_get(&mesh, "/delay/2000/none", "none");
    assert_eq!(status, 200, "no timeout without one configured ({took:?})");
    assert!(took >= Duration::from_millis(2000), "took {took:?}");

    mesh.assert_accepted();
}
