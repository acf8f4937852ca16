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
    let (count, sum) = (
        value(&before, "pilot_xds_config_size_bytes_count{type=\"cds\"}"),
        value(&before, "pilot_xds_config_size_bytes_sum{type=\"cds\"}"),
    );
    // Bytes, not resources: Bookinfo's clusters take kilobytes.
    assert!(
        count >= 1.0 && sum / count > 1000.0,
        "{count} responses, {sum} bytes"
    );
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
        // The push is counted, and its convergence recorded once the proxy has it.
        (value(&m, "pilot_xds_pushes{type=\"rds\"}")
            > value(&before, "pilot_xds_pushes{type=\"rds\"}")
            && value(&m, "pilot_proxy_convergence_time_count")
                > value(&before, "pilot_proxy_convergence_time_count"))
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
    // /version as istiod's text (istioctl and Kiali split it into version, revision and
    // build status on its last two dashes).
    let v = http_get("127.0.0.1:15014", "/version", &[])
        .expect("version")
        .body;
    let parts: Vec<&str> = v.rsplitn(3, '-').collect();
    assert_eq!(parts, ["Clean", "meshd", env!("CARGO_PKG_VERSION")], "{v}");

    // Every metric the bundled dashboards query is in this live scrape.
    let live = families();
    let dir = repo().join("deploy/addons/dashboards");
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).expect("deploy/addons/dashboards") {
        let path = e.expect("entry").path();
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for panel in dash["panels"].as_array().expect("panels") {
            for t in panel["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("expr");
                for name in metric_names(expr) {
                    let family = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(&name);
                    assert!(
                        live.iter().any(|l| l == &name || l == family),
                        "{}: panel {:?} queries {name}, which meshd does not export",
                        path.display(),
                        panel["title"]
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 20, "metrics checked: {checked}");

    // /debug/syncz on 15014 in istiod's shape (Kiali's proxy status), all acknowledged.
    // (The VirtualService change's RDS push may still await its ACK: wait for it.)
    let syncz = wait_for("every type acknowledged", Duration::from_secs(20), || {
        let v: serde_json::Value =
            serde_json::from_str(&http_get("127.0.0.1:15014", "/debug/syncz", &[]).ok()?.body)
                .ok()?;
        ["cluster", "listener", "route", "endpoint"]
            .iter()
            .all(|t| {
                v[0][format!("{t}_sent")].is_string()
                    && v[0][format!("{t}_sent")] == v[0][format!("{t}_acked")]
            })
            .then_some(v)
    });
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

/// The metric names in a PromQL expression: identifiers with an underscore that are not
/// called (functions) and not inside `by (…)` / `without (…)` (labels).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut in_labels = false;
    let mut in_braces = false;
    let mut in_string = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            in_string = !in_string;
            i += 1;
            continue;
        }
        if in_string {
            i += 1;
            continue;
        }
        match c {
            '{' => in_braces = true,
            '}' => in_braces = false,
            ')' if in_labels => in_labels = false,
            _ => {}
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if word == "by" || word == "without" {
                in_labels = true;
            } else if !in_labels && !in_braces && word.contains('_') && next != Some(&'(') {
                out.push(word);
            }
            continue;
        }
        i += 1;
    }
    out
}
