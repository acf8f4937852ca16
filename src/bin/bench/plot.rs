//! The run's picture: every bench's figure as a ratio to its issue-12 target, one bar
//! each on a log scale, written as an SVG file at the end of a run. A bar left of the
//! target line is met; the text beside it is the measured figure.

use std::sync::Mutex;

use serde_json::Value;

/// Every `report` of this run, in order.
static REPORTS: Mutex<Vec<Value>> = Mutex::new(Vec::new());

pub fn record(fields: &Value) {
    if let Ok(mut r) = REPORTS.lock() {
        r.push(fields.clone());
    }
}

/// One bar: what, the measured figure as text, measured ÷ target (below 1 is met).
struct Bar {
    label: String,
    figure: String,
    ratio: f64,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64).filter(|x| x.is_finite())
}

fn bars(reports: &[Value]) -> Vec<Bar> {
    let mut out = Vec::new();
    let mut bar = |label: String, figure: String, ratio: Option<f64>| {
        if let Some(ratio) = ratio.filter(|r| r.is_finite() && *r > 0.0) {
            out.push(Bar {
                label,
                figure,
                ratio,
            });
        }
    };
    for r in reports {
        let n = num(r, "services").unwrap_or(0.0);
        let m = num(r, "clients").unwrap_or(0.0);
        match r.get("bench").and_then(Value::as_str).unwrap_or("") {
            "B1" => {
                let ratio = num(r, "ratio_to_limit");
                bar(
                    format!("B1 translate {n} services (× prost)"),
                    format!("{:.1}× (target 3×)", ratio.unwrap_or(f64::NAN)),
                    ratio.map(|x| x / 3.0),
                );
                // The change as the server makes it: the rebuild, the detection and
                // the route configuration assembled from kept virtual hosts (not the
                // whole translation, which only a class never seen before pays).
                let change = num(r, "change_total_ms");
                bar(
                    format!("B1 one change, {n} services"),
                    format!("{:.1} ms (target 1 ms)", change.unwrap_or(f64::NAN)),
                    change,
                );
            }
            "B2" | "B5" if r.get("tls").and_then(Value::as_bool) == Some(true) => {
                let sync = num(r, "sync_ms");
                bar(
                    format!("B5 {m} proxies over TLS, all ACKed"),
                    format!("{:.0} ms (target 10 s)", sync.unwrap_or(f64::NAN)),
                    sync.map(|s| s / 10_000.0),
                );
            }
            "B2" => {
                let scoped = num(r, "sidecar_services").unwrap_or(0.0) > 0.0;
                let target = if scoped { 100.0 } else { 500.0 };
                let p99 = num(r, "change_p99_ms");
                bar(
                    format!(
                        "B2 change p99, {m} {} proxies",
                        if scoped { "scoped" } else { "unscoped" }
                    ),
                    format!("{:.0} ms (target {target} ms)", p99.unwrap_or(f64::NAN)),
                    p99.map(|p| p / target),
                );
                let kib = num(r, "rss_per_proxy_kib");
                bar(
                    format!("B4 RSS per proxy, {m} proxies"),
                    format!("{:.0} KiB (target 50 KB)", kib.unwrap_or(f64::NAN)),
                    kib.map(|k| k * 1024.0 / 50_000.0),
                );
            }
            "B3" => {
                let p99 = num(r, "p99_ms");
                bar(
                    format!(
                        "B3 endpoint churn p99, {} events/s",
                        num(r, "rate").unwrap_or(0.0)
                    ),
                    format!("{:.0} ms (target 250 ms)", p99.unwrap_or(f64::NAN)),
                    p99.map(|p| p / 250.0),
                );
                let cores = num(r, "cpu_cores");
                bar(
                    "B3 churn CPU".into(),
                    format!("{:.2} cores (target 1)", cores.unwrap_or(f64::NAN)),
                    cores,
                );
            }
            "B6" => {
                let p99 = num(r, "injection_p99_ms");
                bar(
                    "B6 injection p99".into(),
                    format!("{:.2} ms (target 1 ms)", p99.unwrap_or(f64::NAN)),
                    p99,
                );
                let rate = num(r, "csr_per_second_one_core");
                bar(
                    "B6 CSR signing per core".into(),
                    format!("{:.0}/s (target 2,000/s)", rate.unwrap_or(f64::NAN)),
                    rate.map(|x| 2000.0 / x),
                );
            }
            _ => {}
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG of `reports` (log scale from 0.01× to 100× of each target).
fn svg(reports: &[Value], title: &str) -> String {
    let bars = bars(reports);
    let (label_w, plot_w, row_h, top) = (300.0, 420.0, 26.0, 56.0);
    let width = label_w + plot_w + 200.0;
    let height = top + row_h * bars.len() as f64 + 40.0;
    let x_of = |ratio: f64| label_w + (ratio.log10().clamp(-2.0, 2.0) + 2.0) / 4.0 * plot_w;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">{}</text>\n\
         <text x=\"10\" y=\"38\" fill=\"#555\">measured ÷ target, log scale; left of the line is met</text>\n",
        escape(title)
    );
    for (ratio, text) in [
        (0.01, "0.01×"),
        (0.1, "0.1×"),
        (1.0, "target"),
        (10.0, "10×"),
        (100.0, "100×"),
    ] {
        let x = x_of(ratio);
        let stroke = if ratio == 1.0 { "#000" } else { "#ccc" };
        s += &format!(
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{stroke}\"/>\n\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{text}</text>\n",
            top - 6.0,
            height - 30.0,
            height - 14.0
        );
    }
    for (i, b) in bars.iter().enumerate() {
        let y = top + row_h * i as f64;
        let x0 = x_of(0.01);
        let x1 = x_of(b.ratio);
        let fill = if b.ratio <= 1.0 { "#3a7d44" } else { "#c0392b" };
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n\
             <rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            label_w - 8.0,
            y + row_h * 0.65,
            escape(&b.label),
            y + 4.0,
            (x1 - x0).max(1.0),
            row_h - 8.0,
            label_w + plot_w + 8.0,
            y + row_h * 0.65,
            escape(&b.figure),
        );
    }
    s + "</svg>\n"
}

/// Writes this run's plot to `path` (its directory is created) and says where.
pub fn write(path: &std::path::Path, title: &str) {
    let reports = REPORTS.lock().map(|r| r.clone()).unwrap_or_default();
    if reports.is_empty() {
        return;
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(path, svg(&reports, title)) {
        Ok(()) => println!("plot: {}", path.display()),
        Err(e) => eprintln!("plot: cannot write {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bars_are_ratios_to_the_targets() {
        let reports = vec![
            json!({"bench": "B6", "injection_p99_ms": 2.0, "csr_per_second_one_core": 4000.0}),
            json!({"bench": "B2", "tls": true, "clients": 10, "sync_ms": 5000.0}),
        ];
        let b = bars(&reports);
        let ratios: Vec<f64> = b.iter().map(|b| b.ratio).collect();
        assert_eq!(ratios, vec![2.0, 0.5, 0.5]);
        let svg = svg(&reports, "t");
        assert_eq!(svg.matches("<rect x=").count(), 3);
    }
}
