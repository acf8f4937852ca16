//! istio.io task "Request Timeouts" (tasks/traffic-management/request-timeouts) on
//! Bookinfo (`virtual-service-all-v1.yaml` first): reviews routed to v2 (which calls
//! ratings), a 2 s delay on ratings (the page works, with stars, 2 s late), then
//! `timeout: 0.5s` on reviews: a call to reviews answers 504 after about 0.5 s instead of
//! 200 after 2 s, and the page shows reviews unavailable after about 1 s (productpage's
//! two tries).

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::traffic_apps::{Bookinfo, REVIEWS_UNAVAILABLE};

// The task's inline manifests, steps 1, 2 and 4.
const REVIEWS_V2: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
"#;

const RATINGS_DELAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - fault:
      delay:
        percentage:
          value: 100
        fixedDelay: 2s
    route:
    - destination:
        host: ratings
        subset: v1
"#;

const REVIEWS_TIMEOUT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
    timeout: 0.5s
"#;

/// A call to reviews as productpage makes it: (status or 0 on no answer, time taken).
fn reviews(b: &Bookinfo) -> (u16, Duration) {
    let start = Instant::now();
    let r = b.via_productpage("reviews:9080", "/reviews/0", &[], Duration::from_secs(10));
    (r.map(|r| r.status).unwrap_or(0), start.elapsed())
}

#[test]
fn reviews_timeout_cuts_the_ratings_delay_short() {
    let Some(b) = Bookinfo::start(&["virtual-service-all-v1.yaml"]) else {
        return;
    };
    // Step 1: reviews v2, which calls ratings.
    b.apply_text(REVIEWS_V2);
    wait_for("reviews-v2 to get pages", Duration::from_secs(20), || {
        (b.page(None).get("reviews") == "reviews-v2").then_some(())
    });
    let page = b.page(None);
    assert_eq!(page.get("stars"), "black", "{page:?}");
    // Well under the 2 s delay of the next step (the bound leaves room for a loaded CI).
    assert!(page.took < Duration::from_millis(1900), "{page:?}");

    // Step 2: a 2 s delay on ratings. "You should see the Bookinfo application working
    // normally (with ratings stars displayed), but there is a 2 second delay".
    b.apply_text(RATINGS_DELAY);
    wait_for("the 2 s ratings delay", Duration::from_secs(20), || {
        b.ratings_via_reviews("v2", None, Duration::from_millis(300))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
            .then_some(())
    });
    let page = b.page(None);
    assert_eq!(
        (page.get("reviews"), page.get("stars")),
        ("reviews-v2", "black"),
        "{page:?}"
    );
    // Envoy arms the delay from its event loop's cached clock, which can be a fraction of
    // a millisecond behind ours (a run measured 1.9998 s): the lower bounds allow 50 ms.
    assert!(
        page.took >= Duration::from_millis(1950) && page.took < Duration::from_millis(3000),
        "the page comes after the 2 s delay: {:?}",
        page.took
    );
    let (status, took) = reviews(&b);
    assert_eq!(status, 200, "no timeout on reviews yet ({took:?})");
    assert!(took >= Duration::from_millis(1950), "{took:?}");

    // Step 4: timeout: 0.5s on reviews.
    b.apply_text(REVIEWS_TIMEOUT);
    wait_for("the reviews timeout", Duration::from_secs(20), || {
        (reviews(&b).0 == 504).then_some(())
    });
    for _ in 0..3 {
        let (status, took) = reviews(&b);
        assert_eq!(status, 504, "reviews times out ({took:?})");
        assert!(
            took >= Duration::from_millis(480) && took < Duration::from_millis(1900),
            "504 after about 0.5 s, not 2 s: {took:?}"
        );
    }
    // "You should now see that it returns in about 1 second, instead of 2, and the
    // reviews are unavailable": productpage's hard-coded retry calls reviews twice.
    let page = b.page(None);
    assert_eq!(page.get("reviews"), REVIEWS_UNAVAILABLE, "{page:?}");
    assert!(
        page.took >= Duration::from_millis(960) && page.took < Duration::from_millis(1950),
        "two tries of 0.5 s: {:?}",
        page.took
    );
    b.assert_accepted();
}
