//! Bookinfo's traffic-management tasks through a real Envoy sidecar of `productpage`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::*;

/// The address productpage's Envoy binds for outbound calls (Sidecar egress, captureMode NONE).
const EGRESS: &str = "127.0.0.1:9080";

// Fields drop in order: processes first, then the folders holding their logs.
pub struct Bookinfo {
    pub meshd: Meshd,
    pub envoy: Envoy,
    _backends: Backends,
    pub config: TempDir,
    /// Logs and bootstraps (kept alive for the test).
    pub _dir: TempDir,
}

pub fn networking(name: &str) -> PathBuf {
    shared().join("bookinfo/networking").join(name)
}

impl Bookinfo {
    /// Starts everything with Bookinfo's services, pods, DestinationRules and the given
    /// VirtualService file. None if the environment cannot run it (skipped).
    pub fn start(virtual_service: &std::path::Path, ads: Ads) -> Option<Bookinfo> {
        shared_or_skip("Bookinfo with Istio's DestinationRules")?;
        if envoy_bin().is_none()
            && !skip_or_fail("envoy is not installed (.venv-envoy/bin/envoy or ENVOY_BIN)")
        {
            return None;
        }
        if !isolate() {
            return None;
        }
        let dir = TempDir::new("run");
        let config = TempDir::new("config");
        for f in ["services.yaml", "pods.yaml", "sidecar-productpage.yaml"] {
            config.copy_from(&repo().join("examples/bookinfo").join(f), f);
        }
        config.copy_from(
            &networking("destination-rule-all.yaml"),
            "destination-rule-all.yaml",
        );
        config.copy_from(virtual_service, "virtual-service.yaml");
        let backends = Backends::start(&BOOKINFO_PODS, 9080);
        let meshd = Meshd::start(config.path(), dir.path(), &[]);
        let envoy = Envoy::start(
            &NodeSpec {
                kind: "sidecar",
                ip: "127.0.0.10",
                pod: "productpage-v1",
                namespace: "default",
                labels: &[("app", "productpage"), ("version", "v1")],
                service_account: "bookinfo-productpage",
            },
            ads,
            15000,
            dir.path(),
        );
        let b = Bookinfo {
            _dir: dir,
            config,
            meshd,
            envoy,
            _backends: backends,
        };
        // Routes arrive after listeners: wait until the egress listener routes at all.
        wait_for("first routed request", Duration::from_secs(10), || {
            b.get("reviews", &[]).ok().filter(|r| r.status == 200)
        });
        Some(b)
    }

    pub fn get(&self, host: &str, headers: &[(&str, &str)]) -> std::io::Result<HttpResponse> {
        let mut h = vec![("Host", host)];
        h.extend_from_slice(headers);
        http_get(EGRESS, "/", &h)
    }

    /// Sends `n` requests for `host` and counts the answering pods (or `status NNN`).
    pub fn distribution(
        &self,
        host: &str,
        n: usize,
        headers: &[(&str, &str)],
    ) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let key = match self.get(host, headers) {
                Ok(r) if r.status == 200 => r.body,
                Ok(r) => format!("status {}", r.status),
                Err(e) => format!("error {e}"),
            };
            *out.entry(key).or_insert(0) += 1;
        }
        out
    }

    /// Envoy accepted everything meshd sent, and meshd saw every type ACKed.
    pub fn assert_healthy(&self) {
        let rejected: Vec<(String, u64)> = self
            .envoy
            .stats("update_rejected")
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect();
        assert!(
            rejected.is_empty(),
            "Envoy rejected configuration: {rejected:?}"
        );
        assert!(
            !self.envoy.stats("update_rejected").is_empty(),
            "Envoy's update_rejected counters exist (else this check proves nothing)"
        );
        let syncz = self.meshd.get_json("/debug/syncz");
        let conns = syncz.as_array().expect("syncz is a list");
        assert_eq!(conns.len(), 1, "one connected proxy: {syncz}");
        let types = conns[0]["types"].as_object().expect("types");
        for url in [
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "type.googleapis.com/envoy.config.listener.v3.Listener",
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        ] {
            let t = &types[url];
            assert!(!t["sent_nonce"].is_null(), "{url} was sent: {t}");
            assert_eq!(t["sent_nonce"], t["acked_nonce"], "{url} ACKed: {t}");
            assert_eq!(t["nacks"], 0, "{url} never NACKed: {t}");
        }
        let metrics = http_get("127.0.0.1:15014", "/metrics", &[]).expect("metrics");
        assert!(
            metrics.body.contains("pilot_xds_pushes{type=\"cds\"}"),
            "{}",
            metrics.body
        );
        assert!(
            !metrics
                .body
                .lines()
                .any(|l| l.starts_with("pilot_total_xds_rejects{") && !l.ends_with(" 0")),
            "no rejects counted: {}",
            metrics.body
        );
    }

    /// Replaces the VirtualService file in the watched folder.
    pub fn set_virtual_service(&self, src: &std::path::Path) {
        self.config.copy_from(src, "virtual-service.yaml");
    }
}

fn share(d: &BTreeMap<String, usize>, key: &str) -> f64 {
    let total: usize = d.values().sum();
    *d.get(key).unwrap_or(&0) as f64 / total as f64
}

#[test]
fn all_v1_routes_every_service_to_v1() {
    let Some(b) = Bookinfo::start(&networking("virtual-service-all-v1.yaml"), Ads::Delta) else {
        return;
    };
    let d = b.distribution("reviews", 100, &[]);
    assert_eq!(d.get("reviews-v1"), Some(&100), "{d:?}");
    for (host, pod) in [
        ("ratings", "ratings-v1"),
        ("details", "details-v1"),
        ("productpage", "productpage-v1"),
    ] {
        let d = b.distribution(host, 10, &[]);
        assert_eq!(d.get(pod), Some(&10), "{host}: {d:?}");
    }
    // Every short name Istio generates reaches the service, with and without the port.
    for host in [
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
        "reviews:9080",
        "reviews.default.svc.cluster.local:9080",
    ] {
        let r = b.get(host, &[]).expect("request");
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "reviews-v1"),
            "Host: {host}"
        );
    }
    b.assert_healthy();
}

#[test]
fn canary_sends_half_to_v3_over_sotw() {
    let Some(b) = Bookinfo::start(&networking("virtual-service-reviews-50-v3.yaml"), Ads::Sotw)
    else {
        return;
    };
    let d = b.distribution("reviews", 400, &[]);
    let v3 = share(&d, "reviews-v3");
    assert!(
        (0.42..=0.58).contains(&v3),
        "v3 share {v3:.3} not within 50% ± 8: {d:?}"
    );
    assert_eq!(
        d.get("reviews-v1").copied().unwrap_or(0) + d.get("reviews-v3").copied().unwrap_or(0),
        400,
        "only v1 and v3 answer: {d:?}"
    );
    b.assert_healthy();
}

#[test]
fn header_rules_pick_the_version() {
    let Some(b) = Bookinfo::start(
        &networking("virtual-service-reviews-jason-v2-v3.yaml"),
        Ads::Delta,
    ) else {
        return;
    };
    let jason = b.distribution("reviews", 30, &[("end-user", "jason")]);
    assert_eq!(jason.get("reviews-v2"), Some(&30), "jason → v2: {jason:?}");
    let others = b.distribution("reviews", 30, &[("end-user", "john")]);
    assert_eq!(
        others.get("reviews-v3"),
        Some(&30),
        "everyone else → v3: {others:?}"
    );
    let anonymous = b.distribution("reviews", 30, &[]);
    assert_eq!(
        anonymous.get("reviews-v3"),
        Some(&30),
        "no header → v3: {anonymous:?}"
    );

    // The A/B rule of examples/scenarios: john → v2, everyone else v1.
    b.set_virtual_service(&repo().join("examples/scenarios/reviews-header-john.yaml"));
    wait_for("the A/B rule", Duration::from_secs(5), || {
        b.get("reviews", &[("end-user", "john")])
            .ok()
            .filter(|r| r.body == "reviews-v2")
            .and_then(|_| {
                b.get("reviews", &[])
                    .ok()
                    .filter(|r| r.body == "reviews-v1")
            })
    });
    let john = b.distribution("reviews", 30, &[("end-user", "john")]);
    assert_eq!(john.get("reviews-v2"), Some(&30), "john → v2: {john:?}");
    let jason = b.distribution("reviews", 30, &[("end-user", "jason")]);
    assert_eq!(
        jason.get("reviews-v1"),
        Some(&30),
        "jason → v1 now: {jason:?}"
    );
    b.assert_healthy();
}

#[test]
fn editing_the_folder_changes_traffic_within_two_seconds_without_restart() {
    let Some(b) = Bookinfo::start(&networking("virtual-service-all-v1.yaml"), Ads::Delta) else {
        return;
    };
    assert_eq!(
        b.distribution("reviews", 20, &[]).get("reviews-v1"),
        Some(&20)
    );
    let pid = b.envoy.proc.child.id();
    let edited = Instant::now();
    b.set_virtual_service(&networking("virtual-service-reviews-v3.yaml"));
    let took = wait_for(
        "traffic to follow the edit",
        Duration::from_secs(10),
        || {
            let d = b.distribution("reviews", 5, &[]);
            (d.get("reviews-v3") == Some(&5)).then(|| edited.elapsed())
        },
    );
    assert!(
        took < Duration::from_secs(2),
        "the edit took {took:?} to reach traffic"
    );
    assert_eq!(
        b.distribution("reviews", 50, &[]).get("reviews-v3"),
        Some(&50)
    );
    assert_eq!(b.envoy.proc.child.id(), pid);
    let uptime = b.envoy.stats("server.uptime");
    assert!(!uptime.is_empty(), "Envoy still running, never restarted");
    // A new file and a deleted file are seen too.
    b.config.write(
        "ratings-v1-only.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: ratings-pin\nspec:\n  hosts: [ratings]\n  http:\n  - fault:\n      abort: {httpStatus: 418, percentage: {value: 100}}\n    route:\n    - destination: {host: ratings, subset: v1}\n",
    );
    wait_for("new file applied", Duration::from_secs(5), || {
        b.get("ratings", &[]).ok().filter(|r| r.status == 418)
    });
    std::fs::remove_file(b.config.path().join("ratings-v1-only.yaml")).expect("rm");
    wait_for("deleted file unapplied", Duration::from_secs(5), || {
        b.get("ratings", &[]).ok().filter(|r| r.status == 200)
    });
    b.assert_healthy();
}

#[test]
fn bad_edits_keep_the_last_good_config_serving() {
    let Some(b) = Bookinfo::start(&networking("virtual-service-all-v1.yaml"), Ads::Delta) else {
        return;
    };
    // A route to a subset no DestinationRule defines: refused, the last good version stays.
    let broken = std::fs::read_to_string(networking("virtual-service-reviews-v3.yaml"))
        .expect("read")
        .replace("subset: v3", "subset: v9");
    b.config.write("virtual-service.yaml", &broken);
    wait_for("the refusal diagnostic", Duration::from_secs(5), || {
        let c = b.meshd.get_json("/debug/configz");
        c["diagnostics"]
            .as_array()
            .expect("list")
            .iter()
            .find(|d| d["reason"].as_str().is_some_and(|r| r.contains("\"v9\"")))
            .cloned()
    });
    // Malformed YAML in another file does not stop anything either.
    b.config
        .write("zz-garbage.yaml", "apiVersion: v1\nkind: [unclosed\n");
    wait_for("the syntax diagnostic", Duration::from_secs(5), || {
        let c = b.meshd.get_json("/debug/configz");
        c["diagnostics"]
            .as_array()
            .expect("list")
            .iter()
            .find(|d| {
                d["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("YAML syntax"))
            })
            .cloned()
    });
    let d = b.distribution("reviews", 40, &[]);
    assert_eq!(
        d.get("reviews-v1"),
        Some(&40),
        "last good (all v1) still in force: {d:?}"
    );
    let d = b.distribution("details", 10, &[]);
    assert_eq!(
        d.get("details-v1"),
        Some(&10),
        "everything else still served: {d:?}"
    );
    b.assert_healthy();
}

#[test]
fn ingress_gateway_routes_productpage() {
    let Some(_) = shared_or_skip("Istio's Bookinfo gateway") else {
        return;
    };
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("gw");
    let config = TempDir::new("gwconfig");
    for f in ["services.yaml", "pods.yaml"] {
        config.copy_from(&repo().join("examples/bookinfo").join(f), f);
    }
    config.copy_from(&networking("bookinfo-gateway.yaml"), "gateway.yaml");
    let _backends = Backends::start(&BOOKINFO_PODS, 9080);
    let meshd = Meshd::start_on(config.path(), dir.path(), 18080, &[]);
    let envoy = Envoy::start(&INGRESS_GATEWAY, Ads::Delta, 15000, dir.path());
    let r = wait_for("gateway route", Duration::from_secs(10), || {
        http_get(
            "127.0.0.1:8080",
            "/productpage",
            &[("Host", "bookinfo.example.com")],
        )
        .ok()
        .filter(|r| r.status == 200)
    });
    assert_eq!(r.body, "productpage-v1");
    let r = http_get("127.0.0.1:8080", "/not-exposed", &[]).expect("request");
    assert_eq!(r.status, 404, "only the listed paths are exposed");
    assert!(envoy.stats("update_rejected").iter().all(|(_, v)| *v == 0));
    drop(meshd);
}

/// `Expect: 100-continue` goes through the sidecar to the application, which decides
/// (istiod's ENABLE_100_CONTINUE_HEADERS, on by default: Envoy forwards the header and
/// the application's `100 Continue`, instead of answering it itself): this application
/// answers at once, and it saw the header.
#[test]
fn expect_100_continue_reaches_the_application() {
    use std::io::{Read, Write};
    let Some(b) = Bookinfo::start(&networking("virtual-service-all-v1.yaml"), Ads::Delta) else {
        return;
    };
    let mut s = std::net::TcpStream::connect(EGRESS).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: reviews\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .expect("headers");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s
            .read(&mut buf)
            .expect("an answer before any body was sent");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200"),
        "the application's answer, no 100 of Envoy's own: {head}"
    );
    assert!(
        head.contains("x-seen-expect: 100-continue"),
        "the application saw the header: {head}"
    );
    b.assert_healthy();
}

/// A direct response's body up to istiod's limit (1 MiB, far past Envoy's 4 KiB
/// default) is served whole.
#[test]
fn a_large_direct_response_is_served_whole() {
    let Some(b) = Bookinfo::start(&networking("virtual-service-all-v1.yaml"), Ads::Delta) else {
        return;
    };
    let body = "x".repeat(600 * 1024);
    b.config.write(
        "virtual-service.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ratings, namespace: default}}\nspec:\n  hosts: [ratings]\n  http:\n  - directResponse: {{status: 203, body: {{string: {body}}}}}\n"
        ),
    );
    let r = wait_for("the direct response", Duration::from_secs(20), || {
        b.get("ratings", &[]).ok().filter(|r| r.status == 203)
    });
    assert_eq!(r.body.len(), body.len(), "the whole body");
    assert!(r.body.bytes().all(|c| c == b'x'));
    b.assert_healthy();
}
