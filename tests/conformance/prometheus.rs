//! A real Prometheus (Debian's) scrapes meshd (15014) and productpage's real Envoy
//! (`/stats/prometheus`) while requests flow: PromQL sees both targets up, meshd's
//! pilot_* series move after a push, Envoy's request counters count the requests, and
//! the mesh's istio_requests_total (from meshd) counts them by workload.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::bookinfo::{Bookinfo, networking};
use crate::harness::*;

/// Debian's prometheus (scripts/test installs it), or None after a SKIPPED line (a
/// failure under MESHD_REQUIRE_ENVOY=1).
fn prometheus_bin() -> Option<PathBuf> {
    let p = std::env::var_os("MESHD_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    if p.exists() {
        return Some(p);
    }
    skip_or_fail("prometheus (Debian package prometheus) is not installed");
    None
}

const PROMETHEUS: &str = "127.0.0.1:19090";

/// Percent-encodes a PromQL expression for a query string.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The instant vector of `query`: (labels, value) per series.
fn query(q: &str) -> Vec<(serde_json::Value, f64)> {
    let Ok(r) = http_get(
        PROMETHEUS,
        &format!("/api/v1/query?query={}", encode(q)),
        &[],
    ) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let value = s["value"][1].as_str()?.parse().ok()?;
            Some((s["metric"].clone(), value))
        })
        .collect()
}

fn scalar(q: &str) -> Option<f64> {
    query(q).first().map(|(_, v)| *v)
}

#[test]
fn prometheus_scrapes_meshd_and_envoy() {
    let Some(bin) = prometheus_bin() else { return };
    let Some(b) = Bookinfo::start(&networking("virtual-service-all-v1.yaml"), Ads::Delta) else {
        return;
    };
    let data = TempDir::new("prometheus");
    let config = data.write(
        "prometheus.yml",
        r#"
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
- job_name: meshd
  static_configs: [{targets: ["127.0.0.1:15014"]}]
- job_name: envoy
  metrics_path: /stats/prometheus
  static_configs: [{targets: ["127.0.0.1:15000"], labels: {pod: productpage-v1}}]
"#,
    );
    let _prom = Proc::spawn(
        "prometheus",
        Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}")),
        data.path(),
    );
    wait_for("both targets up", Duration::from_secs(30), || {
        let up = query("up == 1");
        (up.len() == 2).then_some(())
    });
    assert_eq!(
        scalar("pilot_xds{version=\"upstream\"}"),
        Some(1.0),
        "one Envoy connected"
    );
    let pushes = |q: &str| scalar(q).unwrap_or(0.0);
    let before = pushes("sum(pilot_xds_pushes{type=\"rds\"})");
    assert!(before >= 1.0, "routes were pushed once at least: {before}");

    // A VirtualService change: meshd's push counters move in Prometheus.
    b.set_virtual_service(&networking("virtual-service-reviews-50-v3.yaml"));
    wait_for(
        "the RDS push in Prometheus",
        Duration::from_secs(30),
        || (pushes("sum(pilot_xds_pushes{type=\"rds\"})") > before).then_some(()),
    );
    assert!(pushes("sum(pilot_push_triggers{type=\"config\"})") >= 1.0);
    assert!(pushes("sum(pilot_k8s_cfg_events{type=\"VirtualService\"})") >= 2.0);

    // Requests through the sidecar: Envoy's own counters, scraped from the proxy.
    for _ in 0..6 {
        assert_eq!(b.get("reviews", &[]).expect("answer").status, 200);
    }
    let total = wait_for("Envoy's request counters", Duration::from_secs(30), || {
        let n = scalar(
            // Envoy's default tag extraction cuts the cluster name at its first dot
            // (istio-proxy's bootstrap adds tag rules for Istio's names): the tag holds
            // `outbound|9080|…|reviews`, the rest goes into the metric's name.
            "sum({__name__=~\"envoy_cluster_.*upstream_rq_total\", envoy_cluster_name=~\"outbound.*reviews\"})",
        )?;
        (n >= 6.0).then_some(n)
    });
    assert!(total >= 6.0, "{total}");
    // The mesh's series, as Kiali queries them, from meshd's target: productpage's
    // requests to reviews by destination workload (v1 and v3 after the 50/50 split).
    let by_workload = wait_for(
        "istio_requests_total in Prometheus",
        Duration::from_secs(30),
        || {
            let q = query(
                "sum by (destination_workload) (istio_requests_total{job=\"meshd\", \
             reporter=\"source\", source_workload=\"productpage-v1\", \
             destination_service_name=\"reviews\", response_code=\"200\"})",
            );
            let sum: f64 = q.iter().map(|(_, v)| v).sum();
            (sum >= 6.0).then_some(q)
        },
    );
    // Every bundled dashboard's query runs in this Prometheus (its variables set as a
    // person would: the source reporter, every namespace, service and workload), and the
    // request panels (those not filtered to errors, flags or the destination reporter:
    // productpage's calls have no destination-side proxy here) show data.
    let dir = repo().join("deploy/addons/dashboards");
    let mut with_data = 0;
    for e in std::fs::read_dir(&dir).expect("dashboards") {
        let path = e.expect("entry").path();
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        for panel in dash["panels"].as_array().expect("panels") {
            for t in panel["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .expect("expr")
                    .replace("$reporter", "source")
                    .replace("$namespace", ".*")
                    .replace("$service", ".*")
                    .replace("$workload", ".*");
                let r = http_get(
                    PROMETHEUS,
                    &format!("/api/v1/query?query={}", encode(&expr)),
                    &[],
                )
                .expect("query");
                let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
                assert_eq!(
                    v["status"],
                    "success",
                    "{}: panel {}: {expr}: {v}",
                    path.display(),
                    panel["title"]
                );
                let expect_data = expr.contains("istio_request")
                    && !expr.contains("response_code=~")
                    && !expr.contains("response_flags!=")
                    && !expr.contains("reporter=\"destination\"");
                if expect_data {
                    let data = v["data"]["result"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty());
                    assert!(
                        data,
                        "{}: panel {} shows nothing: {expr}",
                        path.display(),
                        panel["title"]
                    );
                    with_data += 1;
                }
            }
        }
    }
    assert!(with_data >= 15, "request panels checked: {with_data}");
    for (labels, _) in &by_workload {
        let w = labels["destination_workload"].as_str().unwrap_or_default();
        assert!(
            ["reviews-v1", "reviews-v3"].contains(&w),
            "a reviews pod meshd knows: {by_workload:?}"
        );
    }
    b.assert_healthy();
}
