//! Retry policies through a real sidecar, counted at the backend: istiod's default
//! retries connection failures but never an application's 503 (the request may have
//! changed something); `retryOn` names what is retried.

use crate::scripted::OneService;

const RULES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky, namespace: default}
spec:
  hosts: [flaky]
  http:
  - match: [{headers: {x-case: {exact: on-503}}}]
    retries: {attempts: 2, retryOn: "503"}
    route: [{destination: {host: flaky}}]
  - match: [{headers: {x-case: {exact: gateway-error}}}]
    retries: {attempts: 1, retryOn: gateway-error}
    route: [{destination: {host: flaky}}]
  - route: [{destination: {host: flaky}}]
"#;

#[test]
fn default_retries_leave_application_503s_alone() {
    let Some(mesh) = OneService::start("flaky", "127.0.0.31", RULES) else {
        return;
    };
    let status = |path: &str, case: &str| {
        mesh.get(path, &[("x-case", case)])
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .status
    };
    // No `retries`: the 503 reaches the client after one try.
    assert_eq!(status("/status/503/default", "default"), 503);
    assert_eq!(
        mesh.backends[0].count("/status/503/default"),
        1,
        "an application 503 is not retried by default"
    );
    // retryOn "503" (a number: a retriable status code), attempts 2: three tries.
    assert_eq!(status("/status/503/on-503", "on-503"), 503);
    assert_eq!(
        mesh.backends[0].count("/status/503/on-503"),
        3,
        "503 retried twice"
    );
    // gateway-error covers 502, 503 and 504.
    assert_eq!(status("/status/502/gw", "gateway-error"), 502);
    assert_eq!(
        mesh.backends[0].count("/status/502/gw"),
        2,
        "502 retried once"
    );
    // Codes retryOn does not name are never retried.
    assert_eq!(status("/status/500/gw", "gateway-error"), 500);
    assert_eq!(
        mesh.backends[0].count("/status/500/gw"),
        1,
        "500 not retried"
    );
    mesh.assert_accepted();
}
