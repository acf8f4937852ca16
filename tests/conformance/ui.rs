//! meshd's `/ui` opened in real headless Chromium (Debian's) while productpage's real
//! Envoy is connected: the page, rendered by its own script from meshd's debug
//! endpoints, shows the proxy, a NACK with Envoy's own text, the reviews split with the
//! requests observed, what the last change changed in the proxy's routes, and an
//! explained request. Screenshots go to the test's output folder (target/tmp), not to
//! the repository.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::bookinfo::{Bookinfo, networking};
use crate::harness::*;

/// Debian's chromium (scripts/test installs it), or None after a SKIPPED line (a failure
/// under MESHD_REQUIRE_ENVOY=1).
fn chromium_bin() -> Option<PathBuf> {
    let p = std::env::var_os("MESHD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if p.exists() {
        return Some(p);
    }
    skip_or_fail("chromium (Debian package chromium) is not installed");
    None
}

/// A VirtualService Envoy refuses and meshd cannot know to refuse: the regular
/// expression is valid RE2, but its compiled program is larger than Envoy's default
/// limit (the runtime key `re2.max_program_size.error_level`, 100). It ends in markup,
/// which the page must show as text.
const OVERSIZED_REGEX: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {regex: "/(alpha|beta|gamma|delta|epsilon|zeta|eta|theta|iota|kappa|lambda|mu|nu|xi|omicron|pi|rho|sigma|tau|upsilon|phi|chi|psi|omega){8}<b>x</b>"}}]
    route: [{destination: {host: ratings, subset: v1}}]
  - route: [{destination: {host: ratings, subset: v1}}]
"#;

struct Browser {
    bin: PathBuf,
    profile: TempDir,
    shots: PathBuf,
}

impl Browser {
    fn args(&self) -> Vec<String> {
        // Without the background-networking flags Chromium tries Google's hosts at every
        // start, and this machine's closed network refuses each.
        [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            // Virtual time runs until the page's fetches are answered and its timers
            // have fired this long: the page is then as a person would see it.
            "--virtual-time-budget=4000",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={}", self.profile.path().display())])
        .collect()
    }

    /// The page's DOM after its script ran, and a screenshot of it named `shot`.
    fn open(&self, fragment: &str, shot: &str) -> String {
        let url = format!("http://127.0.0.1:15014/ui#{fragment}");
        let out = Command::new(&self.bin)
            .args(self.args())
            .arg("--dump-dom")
            .arg(&url)
            .output()
            .expect("chromium runs");
        let dom = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            dom.contains("<main id=\"view\">"),
            "Chromium rendered {url}: {dom}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.shots.join(format!("{shot}.png"));
        let status = Command::new(&self.bin)
            .args(self.args())
            .arg(format!("--screenshot={}", path.display()))
            .arg(&url)
            .output()
            .expect("chromium runs");
        assert!(
            status.status.success() && path.exists(),
            "screenshot of {url}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        eprintln!("screenshot: {}", path.display());
        dom
    }
}

#[test]
fn the_ui_shows_proxies_nacks_splits_and_changes_in_chromium() {
    let Some(bin) = chromium_bin() else { return };
    let Some(b) = Bookinfo::start(
        &networking("virtual-service-reviews-50-v3.yaml"),
        Ads::Delta,
    ) else {
        return;
    };
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let browser = Browser {
        bin,
        profile: TempDir::new("chromium"),
        shots,
    };
    let d = b.distribution("reviews", 40, &[]);
    assert_eq!(d.values().sum::<usize>(), 40, "{d:?}");
    // The mesh metrics have counted them (the access log arrives after the response).
    let counted = || {
        let g = b.meshd.get_json("/debug/graph");
        g["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["reporter"] == "source"
                    && r["destination_service"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("reviews."))
            })
            .map(|r| r["requests"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    wait_for("40 requests counted", Duration::from_secs(20), || {
        (counted() >= 40).then_some(())
    });

    // The split and the requests behind it.
    let dom = browser.open("graph", "graph");
    assert!(dom.contains("data-split=\"default/reviews\""), "{dom}");
    let reviews_row = dom
        .split("<tr")
        .find(|row| row.contains("data-split=\"default/reviews\""))
        .unwrap_or_default();
    assert_eq!(
        reviews_row.matches("data-weight=\"50\"").count(),
        2,
        "the 50/50 split: {reviews_row}"
    );
    for pod in ["reviews-v1.default", "reviews-v3.default"] {
        assert!(
            reviews_row.contains(pod),
            "{pod} observed behind the split: {reviews_row}"
        );
    }
    assert!(
        dom.contains("data-node=\"productpage-v1.default\""),
        "productpage in the graph: {dom}"
    );

    // Envoy refuses a change: the page shows the NACK with Envoy's text.
    b.config.write("ratings.yaml", OVERSIZED_REGEX);
    let nack = wait_for("the RDS NACK", Duration::from_secs(20), || {
        let s = b.meshd.get_json("/debug/syncz");
        s[0]["types"]["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]
            ["last_nack"]["error"]
            .as_str()
            .map(str::to_string)
    });
    let node = "sidecar~127.0.0.10~productpage-v1.default~default.svc.cluster.local";
    let dom = browser.open("proxies", "proxies");
    assert!(
        dom.contains(&format!("data-proxy=\"{node}\"")),
        "the connected proxy: {dom}"
    );
    assert!(dom.contains("data-nack=\"RDS\""), "the NACK: {dom}");
    // Envoy's own words, as the page escapes them.
    let first_words: String = nack.chars().take(30).collect();
    let escaped = first_words
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(dom.contains(&escaped), "Envoy's text {nack:?} in {dom}");
    assert!(
        nack.contains("<b>x</b>")
            && dom.contains("&lt;b&gt;x&lt;/b&gt;")
            && !dom.contains("<b>x</b>"),
        "the markup in Envoy's text shown as text, never as markup: {dom}"
    );

    // The proxy's page: the last change, field by field, is the ratings route.
    let dom = browser.open(&format!("proxy/{node}"), "proxy");
    assert!(dom.contains("data-change=\"route/9080\""), "{dom}");
    assert!(
        dom.contains("(alpha|beta"),
        "the new regex in the diff: {dom}"
    );
    assert!(dom.contains("Clusters"), "the configuration tree: {dom}");

    // Where a request for reviews goes, explained (productpage's Sidecar binds its egress
    // listener on 127.0.0.1:9080 and captures nothing).
    let dom = browser.open(
        &format!("explain?proxyID={node}&address=127.0.0.1&port=9080&host=reviews"),
        "explain",
    );
    assert!(
        dom.contains("outbound|9080|v1|reviews.default.svc.cluster.local")
            || dom.contains("outbound|9080|v3|reviews.default.svc.cluster.local"),
        "the explained route: {dom}"
    );
    assert_eq!(
        b.get("reviews", &[]).expect("answer").status,
        200,
        "traffic unaffected by the refused change"
    );
}
