//! istio.io task "Traffic Shifting" (tasks/traffic-management/traffic-shifting) on
//! Bookinfo: `virtual-service-all-v1.yaml` (every page from reviews v1, no stars), then
//! `virtual-service-reviews-50-v3.yaml` (red stars from v3 about half the time, the rest
//! v1), then `virtual-service-reviews-v3.yaml` (every page from v3, red stars).

use std::time::Duration;

use crate::harness::*;
use crate::traffic_apps::Bookinfo;

fn key(reviews: &str, stars: &str) -> (String, String) {
    (reviews.to_string(), stars.to_string())
}

#[test]
fn traffic_shifting_v1_then_half_v3_then_all_v3() {
    let Some(b) = Bookinfo::start(&["virtual-service-all-v1.yaml"]) else {
        return;
    };
    let pages = b.pages(None, 30);
    assert_eq!(
        pages.get(&key("reviews-v1", "none")),
        Some(&30),
        "all-v1: every page from reviews-v1: {pages:?}"
    );

    b.apply("virtual-service-reviews-50-v3.yaml");
    wait_for("reviews-v3 to get pages", Duration::from_secs(20), || {
        (b.page(None).get("reviews") == "reviews-v3").then_some(())
    });
    // "you should now see red-colored star ratings approximately 50% of the time".
    // 200 pages, each independently v1 or v3 with p = 0.5: σ ≈ 7.1, so 100 ± 30 (4.2 σ)
    // fails about once in 40,000 runs; all-v1 or all-v3 (the weights ignored) is far out.
    let pages = b.pages(None, 200);
    let v1 = pages.get(&key("reviews-v1", "none")).copied().unwrap_or(0);
    let v3 = pages.get(&key("reviews-v3", "red")).copied().unwrap_or(0);
    assert_eq!(
        v1 + v3,
        200,
        "only v1 (no stars) and v3 (red stars): {pages:?}"
    );
    assert!(
        (70..=130).contains(&v3),
        "v3 gets 50% ± 15 of 200 pages: {pages:?}"
    );

    // "route 100% of the traffic to reviews:v3".
    b.apply("virtual-service-reviews-v3.yaml");
    wait_for(
        "reviews-v1 to stop getting pages",
        Duration::from_secs(20),
        || {
            // 20 v3 pages in a row while the 50/50 split is still in force: 1 in a million.
            let p = b.pages(None, 20);
            (p.get(&key("reviews-v3", "red")) == Some(&20)).then_some(())
        },
    );
    let pages = b.pages(None, 50);
    assert_eq!(
        pages.get(&key("reviews-v3", "red")),
        Some(&50),
        "every page from reviews-v3 with red stars: {pages:?}"
    );
    assert!(
        b.ratings_calls("reviews-v3")
            .iter()
            .all(|c| c.status == 200),
        "reviews-v3's ratings calls through its sidecar all answered 200"
    );
    b.assert_accepted();
}
