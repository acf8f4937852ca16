//! A VirtualService whose host is a wildcard applies to every service it matches, as in
//! istiod: the service's own virtual host carries the wildcard rule's routes (Envoy
//! prefers an exact domain, so a separate wildcard virtual host would never be used).

use std::time::Duration;

use crate::harness::*;
use crate::scripted::OneService;

const RULE: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: everything-in-default, namespace: default}
spec:
  hosts: ["*.default.svc.cluster.local"]
  http:
  - match: [{headers: {x-case: {exact: fault}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: web.default.svc.cluster.local}}]
  - route: [{destination: {host: web.default.svc.cluster.local}}]
"#;

#[test]
fn wildcard_virtual_services_apply_to_matching_services() {
    let Some(mesh) = OneService::start("web", "127.0.0.36", RULE) else {
        return;
    };
    let status = |case: &str| mesh.get("/", &[("x-case", case)]).map(|r| r.status).ok();
    wait_for("the wildcard rule applies", Duration::from_secs(20), || {
        (status("fault") == Some(418)).then_some(())
    });
    for _ in 0..3 {
        assert_eq!(status("fault"), Some(418), "the wildcard rule's fault");
        assert_eq!(status("none"), Some(200), "the wildcard rule's route");
    }
    mesh.assert_accepted();
}
