//! istio.io task "Authorization for HTTP traffic" (docs/tasks/security/authorization/authz-http):
//! Bookinfo behind Istio's ingress gateway, every workload with a sidecar holding its
//! service account's certificate from meshd's CA. `allow-nothing` makes the product page
//! answer 403 "RBAC: access denied"; `productpage-viewer` (GET from anyone) brings the page
//! back with "Error fetching product details" and "Error fetching product reviews";
//! `details-viewer` and `reviews-viewer` (GET from the principal
//! cluster.local/ns/default/sa/bookinfo-productpage) bring details and reviews back with
//! "Ratings service is currently unavailable"; `ratings-viewer` (GET from bookinfo-reviews)
//! brings black and red stars. At each step other methods and other workloads' identities
//! get 403 from the callee's sidecar.

use std::time::Duration;

use crate::harness::*;
use crate::secure_mesh::*;

const PRODUCTPAGE: Workload = Workload {
    pod: "productpage-v1",
    namespace: "default",
    ip: "127.0.0.10",
    labels: &[("app", "productpage"), ("version", "v1")],
    service_account: "bookinfo-productpage",
    sidecar: true,
    inbound: &[(9080, "HTTP")],
    egress: &[(9080, "HTTP")],
    intercepted: false,
};

const DETAILS: Workload = Workload {
    pod: "details-v1",
    ip: "127.0.0.11",
    labels: &[("app", "details"), ("version", "v1")],
    service_account: "bookinfo-details",
    egress: &[],
    ..PRODUCTPAGE
};

/// Two of the three reviews versions, the two that call ratings (black and red stars);
/// v1 shows no stars and calls nothing.
const REVIEWS_V2: Workload = Workload {
    pod: "reviews-v2",
    ip: "127.0.0.12",
    labels: &[("app", "reviews"), ("version", "v2")],
    service_account: "bookinfo-reviews",
    ..PRODUCTPAGE
};

const REVIEWS_V3: Workload = Workload {
    pod: "reviews-v3",
    ip: "127.0.0.13",
    labels: &[("app", "reviews"), ("version", "v3")],
    ..REVIEWS_V2
};

const RATINGS: Workload = Workload {
    pod: "ratings-v1",
    ip: "127.0.0.14",
    labels: &[("app", "ratings"), ("version", "v1")],
    service_account: "bookinfo-ratings",
    egress: &[],
    ..PRODUCTPAGE
};

const ALLOW_NOTHING: &str = r#"apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: default
spec:
  {}
"#;

const PRODUCTPAGE_VIEWER: &str = r#"apiVersion: "security.istio.io/v1beta1"
kind: "AuthorizationPolicy"
metadata:
  name: "productpage-viewer"
  namespace: default
spec:
  selector:
    matchLabels:
      app: productpage
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: ["GET"]
"#;

/// `details-viewer`, `reviews-viewer` and `ratings-viewer`: GET for one principal.
fn viewer(app: &str, principal: &str) -> String {
    format!(
        r#"apiVersion: "security.istio.io/v1beta1"
kind: "AuthorizationPolicy"
metadata:
  name: "{app}-viewer"
  namespace: default
spec:
  selector:
    matchLabels:
      app: {app}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["{principal}"]
    to:
    - operation:
        methods: ["GET"]
"#
    )
}

/// A call from the application of `from` to `host` through its sidecar's egress listener.
fn call(from: &Workload, method: &str, host: &str, path: &str) -> std::io::Result<HttpResponse> {
    request(
        &egress_addr(from.ip, 9080),
        method,
        path,
        &[("Host", &format!("{host}:9080"))],
    )
}

/// The Bookinfo applications, as far as this task sees them. productpage builds its page
/// from details and reviews and, like the real one, shows "Error fetching product
/// details!" / "Error fetching product reviews!" when a call fails; reviews v2 and v3 call
/// ratings and show their stars, or "Ratings service is currently unavailable" when that
/// call fails; details and ratings answer with their data.
fn start_apps() -> Vec<HttpApp> {
    let productpage = HttpApp::start(&app_addr(PRODUCTPAGE.ip, 9080), |req| {
        if !req.path.starts_with("/productpage") {
            return Answer::ok("productpage");
        }
        let mut page = String::from("Bookinfo Sample\n");
        match call(&PRODUCTPAGE, "GET", "details", "/details/0") {
            Ok(r) if r.status == 200 => page.push_str(&format!("Book Details: {}\n", r.body)),
            _ => page.push_str("Error fetching product details!\n"),
        }
        match call(&PRODUCTPAGE, "GET", "reviews", "/reviews/0") {
            Ok(r) if r.status == 200 => page.push_str(&format!("Book Reviews: {}\n", r.body)),
            _ => page.push_str("Error fetching product reviews!\n"),
        }
        Answer::ok(page)
    });
    let details = HttpApp::start(&app_addr(DETAILS.ip, 9080), |_| {
        Answer::ok("type: paperback, pages: 200, publisher: PublisherA")
    });
    let reviews = |w: &'static Workload, color: &'static str| {
        HttpApp::start(&app_addr(w.ip, 9080), move |_| {
            let body = match call(w, "GET", "ratings", "/ratings/0") {
                Ok(r) if r.status == 200 => format!("{} ({}): {color} stars", w.pod, r.body),
                _ => format!("{}: Ratings service is currently unavailable", w.pod),
            };
            Answer::ok(body)
        })
    };
    let ratings = HttpApp::start(&app_addr(RATINGS.ip, 9080), |_| Answer::ok("ratings: 5, 4"));
    vec![
        productpage,
        details,
        reviews(&REVIEWS_V2, "black"),
        reviews(&REVIEWS_V3, "red"),
        ratings,
    ]
}

/// The browser: `http://$GATEWAY_URL/productpage` (or another method).
fn productpage(method: &str) -> std::io::Result<HttpResponse> {
    request(
        "127.0.0.1:8080",
        method,
        "/productpage",
        &[("Host", "bookinfo.example.com")],
    )
}

/// Waits until the page is what `ok` accepts, and returns it.
fn wait_page(what: &str, ok: impl Fn(&HttpResponse) -> bool) -> HttpResponse {
    wait_for(what, Duration::from_secs(20), || {
        productpage("GET").ok().filter(|r| ok(r))
    })
}

/// Waits until 20 calls of `f` in a row are refused, then checks the refusal is the RBAC
/// filter's. Each proxy takes a new policy on its own time, and a client sidecar keeps a
/// pooled connection per destination pod: one opened before the change answers once more
/// under the old listener (then closes, the listener draining). 20 in a row leave a
/// connection to one of two pods unused with odds of 1 in a million.
fn wait_denied(what: &str, f: impl Fn() -> std::io::Result<HttpResponse>) {
    wait_for(what, Duration::from_secs(20), || {
        (0..20)
            .all(|_| f().is_ok_and(|r| r.status == 403))
            .then_some(())
    });
    assert_denied(f(), what);
}

fn assert_denied(r: std::io::Result<HttpResponse>, what: &str) {
    let r = r.unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "RBAC: access denied"),
        "{what}"
    );
}

/// RBAC denials counted by the HTTP authorization filter of `pod`'s sidecar.
fn denials(mesh: &Mesh, pod: &str) -> u64 {
    mesh.stat(pod, "rbac.denied")
}

#[test]
fn authorization_for_http_traffic() {
    let bookinfo = shared().join("bookinfo/platform/kube/bookinfo.yaml");
    let gateway = shared().join("bookinfo/networking/bookinfo-gateway.yaml");
    if !bookinfo.exists() || !gateway.exists() {
        // A clone without ../shared passes, naming what it skipped.
        crate::istio_data::skipped("the HTTP authorization task (Istio's Bookinfo manifests)");
        return;
    }
    let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("read");
    let (bookinfo, gateway) = (read(&bookinfo), read(&gateway));
    let Some(mesh) = Mesh::start(
        "authz-http",
        &[&PRODUCTPAGE, &DETAILS, &REVIEWS_V2, &REVIEWS_V3, &RATINGS],
        &[
            ("bookinfo.yaml", &bookinfo),
            ("bookinfo-gateway.yaml", &gateway),
        ],
        true,
    ) else {
        return;
    };
    let _apps = start_apps();

    // Before the policies: the whole page, with stars.
    let page = wait_page("the full product page", |r| {
        r.status == 200 && r.body.contains("stars")
    });
    assert!(
        page.body.contains("Book Details: type: paperback"),
        "{page:?}"
    );

    // allow-nothing: everything in default is refused.
    mesh.config.write("allow-nothing.yaml", ALLOW_NOTHING);
    let page = wait_page("RBAC: access denied", |r| r.status == 403);
    assert_eq!(page.body, "RBAC: access denied");
    // Every pod's sidecar refuses a client without a sidecar too.
    for w in [&PRODUCTPAGE, &DETAILS, &REVIEWS_V2, &REVIEWS_V3, &RATINGS] {
        let plaintext = || {
            request(
                &format!("{}:9080", w.ip),
                "GET",
                "/",
                &[("Host", &format!("{}:9080", w.labels[0].1))],
            )
        };
        wait_for(w.pod, Duration::from_secs(20), || {
            plaintext().ok().filter(|r| r.status == 403)
        });
        assert_denied(
            plaintext(),
            &format!("{} to a client without identity", w.pod),
        );
    }
    // Sidecar to sidecar, each pod of each destination.
    wait_denied("productpage to details", || {
        call(&PRODUCTPAGE, "GET", "details", "/details/0")
    });
    wait_denied("productpage to reviews (v2 and v3)", || {
        call(&PRODUCTPAGE, "GET", "reviews", "/reviews/0")
    });
    for reviews in [&REVIEWS_V2, &REVIEWS_V3] {
        wait_denied(&format!("{} to ratings", reviews.pod), || {
            call(reviews, "GET", "ratings", "/ratings/0")
        });
    }

    // productpage-viewer: the page is back, without details and reviews.
    mesh.config
        .write("productpage-viewer.yaml", PRODUCTPAGE_VIEWER);
    let page = wait_page("the product page", |r| r.status == 200);
    assert_eq!(
        page.body,
        "Bookinfo Sample\nError fetching product details!\nError fetching product reviews!\n"
    );
    assert_denied(productpage("POST"), "POST to productpage (GET only)");

    // details-viewer, reviews-viewer: GET from productpage's identity only.
    let productpage_sa = "cluster.local/ns/default/sa/bookinfo-productpage";
    mesh.config
        .write("details-viewer.yaml", &viewer("details", productpage_sa));
    let page = wait_page("book details", |r| r.body.contains("Book Details:"));
    assert!(
        page.body.contains("Error fetching product reviews!"),
        "reviews not yet allowed: {page:?}"
    );
    mesh.config
        .write("reviews-viewer.yaml", &viewer("reviews", productpage_sa));
    // Both reviews pods take the policy; each page then has details and reviews.
    for pod in [REVIEWS_V2.pod, REVIEWS_V3.pod] {
        let page = wait_page(&format!("book reviews from {pod}"), |r| {
            r.body.contains(&format!("Book Reviews: {pod}"))
        });
        assert_eq!(
            page.body,
            format!(
                "Bookinfo Sample\nBook Details: type: paperback, pages: 200, publisher: PublisherA\nBook Reviews: {pod}: Ratings service is currently unavailable\n"
            ),
            "ratings not yet allowed"
        );
    }
    let before = denials(&mesh, DETAILS.pod);
    assert_denied(
        call(&PRODUCTPAGE, "POST", "details", "/details/0"),
        "POST from productpage to details",
    );
    assert_denied(
        call(&REVIEWS_V2, "GET", "details", "/details/0"),
        "GET to details from bookinfo-reviews",
    );
    assert_denied(
        request(
            &format!("{}:9080", DETAILS.ip),
            "GET",
            "/details/0",
            &[("Host", "details:9080")],
        ),
        "GET to details without mTLS (no principal)",
    );
    assert_eq!(
        denials(&mesh, DETAILS.pod) - before,
        3,
        "details' sidecar denied the three"
    );
    let r = call(&PRODUCTPAGE, "GET", "details", "/details/0").expect("answer");
    assert_eq!(r.status, 200, "GET from productpage to details: {r:?}");

    // ratings-viewer: black and red stars.
    mesh.config.write(
        "ratings-viewer.yaml",
        &viewer("ratings", "cluster.local/ns/default/sa/bookinfo-reviews"),
    );
    wait_page("black stars", |r| r.body.contains("black stars"));
    wait_page("red stars", |r| r.body.contains("red stars"));
    let (mut black, mut red) = (0, 0);
    for _ in 0..40 {
        let page = productpage("GET").expect("the page");
        assert_eq!(page.status, 200);
        assert!(
            page.body
                .starts_with("Bookinfo Sample\nBook Details: type: paperback")
                && !page.body.contains("Error")
                && !page.body.contains("unavailable"),
            "{page:?}"
        );
        black += usize::from(page.body.contains("black stars"));
        red += usize::from(page.body.contains("red stars"));
    }
    // Two reviews pods, 40 pages: each gets 20 ± 12 (a binomial tail of 4e-5).
    assert_eq!(black + red, 40, "every page has stars");
    assert!(
        (8..=32).contains(&black) && (8..=32).contains(&red),
        "black {black}, red {red}"
    );
    let before = denials(&mesh, RATINGS.pod);
    assert_denied(
        call(&PRODUCTPAGE, "GET", "ratings", "/ratings/0"),
        "GET to ratings from bookinfo-productpage",
    );
    assert_denied(
        call(&REVIEWS_V3, "POST", "ratings", "/ratings/0"),
        "POST from reviews to ratings",
    );
    assert_eq!(denials(&mesh, RATINGS.pod) - before, 2);
    mesh.assert_accepted();
}
