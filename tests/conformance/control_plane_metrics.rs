//! meshd's own metrics under istiod's names (what Istio's Grafana dashboards and Kiali
//! read), scraped from 15014 while a real Envoy is connected: every series is there, and
//! the push series move when a VirtualService changes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::bookinfo::{Bookinfo, networking};
use crate::harness::*;

/// Every sample of a scrape: `name{labels}` → value.
fn scrape() -> BTreeMap<String, f64> {
    let text = http_get("127.0.0.1:15014", "/metrics", &[])
        .expect("metrics")
        .body;
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn families() -> Vec<String> {
    let text = http_get("127.0.0.1:15014", "/metrics", &[])
        .expect("metrics")
        .body;
    // Families by their TYPE lines, and every sample's name (a counter's samples may
    // carry `_total`, as istiod's injection counters do).
    text.lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split_whitespace().next(),
            None if !l.starts_with('#') => l.split(['{', ' ']).next(),
            None => None,
        })
        .map(str::to_string)
        .collect()
}

fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[test]
fn istiod_series_are_exported_and_move_with_pushes() {
    let Some(b) = Bookinfo::start(&networking("virtual-service-all-v1.yaml"), Ads::Delta) else {
        return;
    };
    let names = families();
    for want in [
        "pilot_info",
        "istio_build",
        "pilot_xds",
        "pilot_xds_pushes",
        "pilot_total_xds_rejects",
        "pilot_total_xds_internal_errors",
        "pilot_xds_push_time",
        "pilot_xds_config_size_bytes",
        "pilot_proxy_convergence_time",
        "pilot_services",
        "pilot_virt_services",
        "pilot_k8s_reg_events",
        "pilot_k8s_cfg_events",
        "pilot_push_triggers",
        "galley_validation_passed",
        "galley_validation_failed",
        "sidecar_injection_success_total",
        "sidecar_injection_failure_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
    }
    let before = scrape();
    assert_eq!(
        value(&before, "pilot_xds{version=\"upstream\"}"),
        1.0,
        "{before:?}"
    );
    assert_eq!(
        value(&before, "pilot_services"),
        4.0,
        "Bookinfo's four services"
    );
    assert!(
        value(
            &before,
            "pilot_k8s_reg_events{type=\"Services\",event=\"add\"}"
        ) >= 4.0
    );
    assert!(
        value(
            &before,
            "pilot_k8s_cfg_events{type=\"VirtualService\",event=\"add\"}"
        ) >= 1.0
    );
    assert!(value(&before, "process_resident_memory_bytes") > 1_000_000.0);
    assert!(value(&before, "pilot_xds_config_size_bytes_count{type=\"cds\"}") >= 1.0);
    assert!(
        before
            .iter()
            .any(|(k, v)| k.starts_with("istio_build{component=\"pilot\"") && *v == 1.0),
        "{before:?}"
    );

    // A VirtualService changes: a config event, a config push trigger, an RDS push.
    b.set_virtual_service(&networking("virtual-service-reviews-50-v3.yaml"));
    let after = wait_for("the push counted", Duration::from_secs(20), || {
        let m = scrape();
        (value(&m, "pilot_xds_pushes{type=\"rds\"}")
            > value(&before, "pilot_xds_pushes{type=\"rds\"}"))
        .then_some(m)
    });
    assert!(
        value(
            &after,
            "pilot_k8s_cfg_events{type=\"VirtualService\",event=\"update\"}"
        ) > value(
            &before,
            "pilot_k8s_cfg_events{type=\"VirtualService\",event=\"update\"}"
        ),
        "{after:?}"
    );
    assert!(
        value(&after, "pilot_push_triggers{type=\"config\"}")
            > value(&before, "pilot_push_triggers{type=\"config\"}"),
        "{after:?}"
    );
    assert!(
        value(&after, "pilot_proxy_convergence_time_count")
            > value(&before, "pilot_proxy_convergence_time_count"),
        "{after:?}"
    );
    // /debug/syncz on 15014 in istiod's shape (Kiali's proxy status), all acknowledged.
    let syncz: serde_json::Value = serde_json::from_str(
        &http_get("127.0.0.1:15014", "/debug/syncz", &[])
            .expect("syncz")
            .body,
    )
    .expect("JSON");
    let entry = &syncz[0];
    assert_eq!(
        entry["proxy"],
        "sidecar~127.0.0.10~productpage-v1.default~default.svc.cluster.local"
    );
    assert_eq!(entry["proxy_type"], "sidecar");
    for t in ["cluster", "listener", "route", "endpoint"] {
        let sent = &entry[format!("{t}_sent")];
        assert!(sent.is_string(), "{t}_sent in {entry}");
        assert_eq!(
            sent,
            &entry[format!("{t}_acked")],
            "{t} acknowledged: {entry}"
        );
    }
    assert!(
        entry["resources"]["type.googleapis.com/envoy.config.cluster.v3.Cluster"]["acked"]
            .is_string()
    );
    let other: serde_json::Value = serde_json::from_str(
        &http_get("127.0.0.1:15014", "/debug/syncz?namespace=other", &[])
            .expect("syncz")
            .body,
    )
    .expect("JSON");
    assert_eq!(other, serde_json::json!([]), "no proxy of namespace other");
    b.assert_healthy();
}
