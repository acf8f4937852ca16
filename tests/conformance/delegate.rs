//! VirtualService delegation through a real Envoy: the reviews root VirtualService hands
//! `/` to a delegate owned by another team (namespace), whose rules apply; editing the
//! delegate alone changes the routing.

use std::time::Duration;

use crate::bookinfo::Bookinfo;
use crate::harness::*;

fn config(delegate_rules: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - name: root
    match: [{{uri: {{prefix: /}}}}]
    timeout: 5s
    delegate: {{name: reviews-team, namespace: reviews-team}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews-team, namespace: reviews-team}}
spec:
  http:
{delegate_rules}
"#
    )
}

const JASON_TO_V2: &str = r#"  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route:
    - destination: {host: reviews.default.svc.cluster.local, subset: v2}
  - route:
    - destination: {host: reviews.default.svc.cluster.local, subset: v1}
"#;

const ALL_V3: &str = r#"  - route:
    - destination: {host: reviews.default.svc.cluster.local, subset: v3}
"#;

#[test]
fn delegated_routes_apply_and_follow_the_delegate() {
    let dir = TempDir::new("delegate-vs");
    let vs = dir.write("vs.yaml", &config(JASON_TO_V2));
    let Some(b) = Bookinfo::start(&vs, Ads::Delta) else {
        return;
    };
    let d = b.distribution("reviews", 20, &[("end-user", "jason")]);
    assert_eq!(d.get("reviews-v2"), Some(&20), "jason: {d:?}");
    let d = b.distribution("reviews", 20, &[]);
    assert_eq!(d.get("reviews-v1"), Some(&20), "others: {d:?}");

    b.config.write("virtual-service.yaml", &config(ALL_V3));
    wait_for("the delegate's edit", Duration::from_secs(20), || {
        b.get("reviews", &[("end-user", "jason")])
            .ok()
            .filter(|r| r.body == "reviews-v3")
    });
    let d = b.distribution("reviews", 20, &[("end-user", "jason")]);
    assert_eq!(d.get("reviews-v3"), Some(&20), "{d:?}");
    b.assert_healthy();
}

/// `redirect.derivePort: FROM_REQUEST_PORT` keeps the port the request came to.
#[test]
fn redirect_keeps_the_request_port() {
    let dir = TempDir::new("redirect-vs");
    let vs = dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{uri: {prefix: /moved}}]\n    redirect: {uri: /new, derivePort: FROM_REQUEST_PORT}\n  - route:\n    - destination: {host: reviews, subset: v1}\n",
    );
    let Some(b) = Bookinfo::start(&vs, Ads::Delta) else {
        return;
    };
    let r = http_get("127.0.0.1:9080", "/moved/x", &[("Host", "reviews")]).expect("answer");
    assert_eq!(r.status, 301, "{r:?}");
    let location = r
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.as_str());
    assert_eq!(location, Some("http://reviews:9080/new"));
    b.assert_healthy();
}
