//! istio.io task "Request Routing" (tasks/traffic-management/request-routing): Bookinfo's
//! `virtual-service-all-v1.yaml` with `destination-rule-all.yaml` sends every reviews
//! request to v1 (no stars, whoever is logged in); then
//! `virtual-service-reviews-test-v2.yaml` sends user jason (header `end-user: jason`) to
//! v2 (black stars) and everyone else still to v1.

use std::time::Duration;

use crate::harness::*;
use crate::traffic_apps::Bookinfo;

fn key(reviews: &str, stars: &str) -> (String, String) {
    (reviews.to_string(), stars.to_string())
}

#[test]
fn request_routing_all_v1_then_jason_to_v2() {
    // "Route to version 1": kubectl apply -f virtual-service-all-v1.yaml.
    let Some(b) = Bookinfo::start(&["virtual-service-all-v1.yaml"]) else {
        return;
    };
    // "the reviews part of the page displays with no rating stars, no matter how many
    // times you refresh": 30 pages each, anonymous and as jason.
    for user in [None, Some("jason")] {
        let pages = b.pages(user, 30);
        assert_eq!(
            pages.get(&key("reviews-v1", "none")),
            Some(&30),
            "every page ({user:?}) from reviews-v1 without stars: {pages:?}"
        );
    }
    let page = b.page(None);
    assert_eq!(page.get("details"), "details-v1", "{page:?}");
    let v2_before = b.app("reviews-v2").count();
    let v3_before = b.app("reviews-v3").count();

    // "Route based on user identity": kubectl apply -f virtual-service-reviews-test-v2.yaml.
    b.apply("virtual-service-reviews-test-v2.yaml");
    wait_for(
        "jason's requests to reach v2",
        Duration::from_secs(20),
        || (b.page(Some("jason")).get("reviews") == "reviews-v2").then_some(()),
    );
    // "Log in as user jason ... the black star ratings appear next to each review."
    let jason = b.pages(Some("jason"), 30);
    assert_eq!(
        jason.get(&key("reviews-v2", "black")),
        Some(&30),
        "jason: every page from reviews-v2 with black stars: {jason:?}"
    );
    // "Log in as another user (pick any name you wish) ... stars are not visible."
    for user in [Some("bob"), Some("Jason"), None] {
        let pages = b.pages(user, 30);
        assert_eq!(
            pages.get(&key("reviews-v1", "none")),
            Some(&30),
            "{user:?}: every page from reviews-v1 without stars: {pages:?}"
        );
    }
    // The black stars come from v2's own call to ratings through its sidecar, with the
    // user it was asked for.
    let calls = b.ratings_calls("reviews-v2");
    assert!(
        calls.iter().filter(|c| c.user == "jason").count() >= 30
            && calls.iter().all(|c| c.status == 200),
        "reviews-v2 called ratings for jason and got 200: {calls:?}"
    );
    assert_eq!(
        b.app("reviews-v3").count(),
        v3_before,
        "no request ever reached reviews-v3"
    );
    assert!(b.app("reviews-v2").count() > v2_before);
    b.assert_accepted();
}
