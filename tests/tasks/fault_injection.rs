//! istio.io task "Fault Injection" (tasks/traffic-management/fault-injection), on Bookinfo
//! routed by `virtual-service-all-v1.yaml` and `virtual-service-reviews-test-v2.yaml`
//! (jason → reviews v2, which calls ratings; everyone else → v1):
//!
//! - `virtual-service-ratings-test-delay.yaml` delays jason's ratings calls by 7 s. reviews
//!   v2 waits up to 10 s for ratings, so it answers after about 7 s; productpage waits 3 s
//!   and tries twice, so it gives up after about 6 s and shows "Sorry, product reviews are
//!   currently unavailable for this book." — the bug the task exposes. Others are not
//!   delayed.
//! - `virtual-service-ratings-test-abort.yaml` answers jason's ratings calls with HTTP 500
//!   (the page says "Ratings service is currently unavailable"); others get 200.

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::traffic_apps::{Bookinfo, RATINGS_UNAVAILABLE, REVIEWS_UNAVAILABLE};

#[test]
fn ratings_delay_for_jason_exposes_the_productpage_timeout() {
    let Some(b) = Bookinfo::start(&[
        "virtual-service-all-v1.yaml",
        "virtual-service-reviews-test-v2.yaml",
    ]) else {
        return;
    };
    // Before the fault: jason's page comes at once, with v2's black stars.
    let page = b.page(Some("jason"));
    assert_eq!(
        (page.get("reviews"), page.get("stars")),
        ("reviews-v2", "black"),
        "{page:?}"
    );
    assert!(page.took < Duration::from_secs(3), "{page:?}");

    b.apply("virtual-service-ratings-test-delay.yaml");
    // In force once jason's ratings call through reviews-v2's sidecar no longer answers
    // within 0.3 s (it answers in milliseconds without the delay).
    wait_for("the 7 s delay for jason", Duration::from_secs(20), || {
        b.ratings_via_reviews("v2", Some("jason"), Duration::from_millis(300))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
            .then_some(())
    });
    // Everyone else's ratings calls are not delayed.
    for user in [None, Some("bob")] {
        let start = Instant::now();
        let r = b
            .ratings_via_reviews("v2", user, Duration::from_secs(5))
            .expect("ratings");
        assert_eq!(r.status, 200, "{user:?}");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{user:?} not delayed: {:?}",
            start.elapsed()
        );
    }

    // reviews v2 itself, asked as productpage asks it (but waiting as long as it takes):
    // in parallel with the page below, so the test waits for the 7 s only once.
    let direct = std::thread::scope(|s| {
        let direct = s.spawn(|| {
            let start = Instant::now();
            let r = b.via_productpage(
                "reviews:9080",
                "/reviews/0",
                &[("end-user", "jason")],
                Duration::from_secs(20),
            );
            (r, start.elapsed())
        });
        // "the Bookinfo web page ... the Reviews section displays an error message" after
        // about 6 s: productpage's two tries of 3 s, before the 7 s delay ends.
        let page = b.page(Some("jason"));
        assert_eq!(page.get("reviews"), REVIEWS_UNAVAILABLE, "{page:?}");
        assert!(
            page.took >= Duration::from_millis(5900) && page.took < Duration::from_millis(7500),
            "productpage gives up after two 3 s tries (about 6 s), before the 7 s delay ends: {:?}",
            page.took
        );
        direct.join().expect("thread")
    });
    // reviews waits up to 10 s for ratings: the delayed answer arrives after about 7 s and
    // reviews answers with the stars.
    let (r, took) = direct;
    let r = r.expect("reviews answers");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains("rating: black"),
        "ratings answered reviews after the delay: {r:?}"
    );
    assert!(
        // (Envoy's timer and this one start a moment apart: a hair under 7 s is the delay.)
        took >= Duration::from_millis(6900) && took < Duration::from_millis(8500),
        "reviews answers after the 7 s delay, within its own 10 s timeout: {took:?}"
    );
    let slow = b
        .ratings_calls("reviews-v2")
        .into_iter()
        // Envoy arms the delay from its loop's cached clock, which can be a few
        // milliseconds behind the request's arrival: "7 s" may end at 6.99 s here.
        .filter(|c| c.user == "jason" && c.took >= Duration::from_millis(6900))
        .collect::<Vec<_>>();
    assert!(
        slow.iter().any(|c| c.status == 200),
        "reviews-v2's delayed ratings call got 200: {slow:?} (all: {:?})",
        b.ratings_calls("reviews-v2")
    );

    // Anyone else: reviews v1 (which does not call ratings), at once.
    let page = b.page(Some("bob"));
    assert_eq!(
        (page.get("reviews"), page.get("stars")),
        ("reviews-v1", "none"),
        "{page:?}"
    );
    assert!(page.took < Duration::from_secs(3), "{page:?}");
    b.assert_accepted();
}

#[test]
fn ratings_abort_for_jason_answers_500() {
    let Some(b) = Bookinfo::start(&[
        "virtual-service-all-v1.yaml",
        "virtual-service-reviews-test-v2.yaml",
    ]) else {
        return;
    };
    b.apply("virtual-service-ratings-test-abort.yaml");
    wait_for("the abort for jason", Duration::from_secs(20), || {
        b.ratings_via_reviews("v2", Some("jason"), Duration::from_secs(2))
            .ok()
            .filter(|r| r.status == 500)
    });
    // Jason's ratings calls: 500 from reviews-v2's sidecar, never reaching ratings; anyone
    // else's: 200 from ratings.
    let ratings_before = b.app("ratings-v1").count();
    for _ in 0..20 {
        let r = b
            .ratings_via_reviews("v2", Some("jason"), Duration::from_secs(2))
            .expect("answer");
        assert_eq!(r.status, 500, "jason: {r:?}");
        assert!(r.body.contains("fault filter abort"), "{r:?}");
    }
    assert_eq!(
        b.app("ratings-v1").count(),
        ratings_before,
        "aborted calls never reach ratings"
    );
    for user in [None, Some("bob")] {
        for _ in 0..10 {
            let r = b
                .ratings_via_reviews("v2", user, Duration::from_secs(2))
                .expect("answer");
            assert_eq!(r.status, 200, "{user:?}: {r:?}");
        }
    }
    assert_eq!(
        b.app("ratings-v1").count(),
        ratings_before + 20,
        "the others' calls reach ratings"
    );

    // "Log in as user jason ... the page loads immediately and displays the Ratings
    // service is currently unavailable message."
    for _ in 0..20 {
        let page = b.page(Some("jason"));
        assert_eq!(
            (page.get("reviews"), page.get("stars")),
            ("reviews-v2", RATINGS_UNAVAILABLE),
            "{page:?}"
        );
        assert!(page.took < Duration::from_secs(3), "{page:?}");
    }
    // "Log out from user jason or open the application in an anonymous window": reviews
    // v1, no error.
    let pages = b.pages(None, 20);
    assert_eq!(
        pages.get(&("reviews-v1".to_string(), "none".to_string())),
        Some(&20),
        "{pages:?}"
    );
    b.assert_accepted();
}
