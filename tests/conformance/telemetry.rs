//! Telemetry access logging through a real Envoy: a provider from mesh config with its
//! own format, selected by a workload Telemetry, with a CEL filter, then disabled by a
//! more specific Telemetry — each step counted in the access log file.

use std::time::Duration;

use crate::bookinfo::{Bookinfo, networking};
use crate::harness::*;

fn mesh(path: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: test-log
      envoyFileAccessLog:
        path: {path}
        logFormat:
          text: "ACCESS %REQ(:AUTHORITY)% %RESPONSE_CODE%\n"
"#
    )
}

const MESH_WIDE: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - providers: [{name: test-log}]
    match: {mode: CLIENT}
"#;

const ERRORS_ONLY: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: productpage, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  accessLogging:
  - providers: [{name: test-log}]
    filter: {expression: "request.headers['x-log'] == 'yes'"}
"#;

const OFF: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: productpage, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  accessLogging:
  - disabled: true
"#;

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("ACCESS "))
        .map(str::to_string)
        .collect()
}

/// Makes Envoy write out its buffered access logs now (admin `POST /reopen_logs`)
/// instead of at its periodic flush.
fn flush(admin: &str) {
    use std::io::{Read, Write};
    if let Ok(mut s) = std::net::TcpStream::connect(admin) {
        let _ = s.write_all(
            b"POST /reopen_logs HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
}

/// Waits until the log has exactly `n` lines (flushing as it goes) and returns them.
fn settle(admin: &str, log: &std::path::Path, n: usize, what: &str) -> Vec<String> {
    wait_for(what, Duration::from_secs(20), || {
        flush(admin);
        std::thread::sleep(Duration::from_millis(100));
        let l = lines(log);
        (l.len() >= n).then_some(l)
    })
}

#[test]
fn telemetry_access_logging_follows_the_most_specific_telemetry() {
    let Some(b) = Bookinfo::start(&networking("virtual-service-all-v1.yaml"), Ads::Delta) else {
        return;
    };
    let admin = b.envoy.admin.clone();
    let log = b._dir.path().join("access.log");
    b.config.write("mesh.yaml", &mesh(&log.to_string_lossy()));
    b.config.write("telemetry-mesh.yaml", MESH_WIDE);
    wait_for("access logs", Duration::from_secs(20), || {
        let _ = b.get("reviews", &[]);
        flush(&admin);
        std::thread::sleep(Duration::from_millis(100));
        (!lines(&log).is_empty()).then_some(())
    });
    let before = lines(&log).len();
    for _ in 0..5 {
        assert_eq!(b.get("reviews", &[]).expect("request").status, 200);
    }
    let got = settle(&admin, &log, before + 5, "five more lines");
    assert_eq!(got.len(), before + 5, "one line per request: {got:?}");
    assert!(got.iter().all(|l| l == "ACCESS reviews 200"), "{got:?}");

    // The workload's Telemetry wins: only requests its CEL filter selects are logged.
    b.config.write("telemetry-productpage.yaml", ERRORS_ONLY);
    let marked = [("x-log", "yes")];
    let updates = || {
        b.envoy
            .stats("listener_manager.lds.update_success")
            .iter()
            .map(|(_, v)| *v)
            .sum::<u64>()
    };
    wait_for("the filter in force", Duration::from_secs(20), || {
        let n = lines(&log).len();
        let _ = b.get("reviews", &[]);
        let _ = b.get("details", &marked);
        flush(&admin);
        std::thread::sleep(Duration::from_millis(100));
        let l = lines(&log);
        (l.len() == n + 1 && l[n] == "ACCESS details 200").then_some(())
    });
    let base = lines(&log).len();
    for _ in 0..3 {
        assert_eq!(b.get("reviews", &[]).expect("ok").status, 200);
        assert_eq!(b.get("details", &marked).expect("ok").status, 200);
    }
    let after = settle(&admin, &log, base + 3, "three marked lines");
    assert_eq!(
        after.len(),
        base + 3,
        "only the marked requests: {:?}",
        &after[base..]
    );
    assert!(
        after[base..].iter().all(|l| l == "ACCESS details 200"),
        "{:?}",
        &after[base..]
    );

    // disabled: nothing more is written.
    let seen = updates();
    b.config.write("telemetry-productpage.yaml", OFF);
    wait_for("the listener update", Duration::from_secs(20), || {
        (updates() > seen).then_some(())
    });
    let base = lines(&log).len();
    for _ in 0..3 {
        assert_eq!(b.get("details", &marked).expect("ok").status, 200);
    }
    flush(&admin);
    std::thread::sleep(Duration::from_millis(500));
    flush(&admin);
    assert_eq!(lines(&log).len(), base, "logging is off");
    b.assert_healthy();
}
