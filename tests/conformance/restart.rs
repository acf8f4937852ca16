//! meshd killed (SIGKILL) while a sidecar is connected and traffic flows: Envoy keeps
//! routing on the configuration it has — not one request fails during the outage — and a
//! new meshd resyncs it with no NACK, including a change made while meshd was down.

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::scripted::OneService;

fn rules(version: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: crash, namespace: default}}
spec:
  host: crash
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: crash, namespace: default}}
spec:
  hosts: [crash]
  http:
  - route: [{{destination: {{host: crash, subset: {version}}}}}]
"#
    )
}

/// Which pod answered `n` requests: (answers by pod name, failures).
fn sample(mesh: &OneService, n: usize, path: &str) -> (Vec<String>, usize) {
    let mut by = Vec::new();
    let mut failed = 0;
    for _ in 0..n {
        match mesh.get(path, &[]) {
            Ok(r) if r.status == 200 => by.push(r.body.trim().to_string()),
            _ => failed += 1,
        }
    }
    (by, failed)
}

#[test]
fn killed_meshd_leaves_traffic_flowing_and_a_new_one_resyncs() {
    let Some(mut mesh) = OneService::start_pods(
        "crash",
        &[("v1", "127.0.0.31"), ("v2", "127.0.0.32")],
        &rules("v1"),
    ) else {
        return;
    };
    wait_for("all traffic on v1", Duration::from_secs(20), || {
        let (by, failed) = sample(&mesh, 10, "/before");
        (failed == 0 && by.iter().all(|p| p == "crash-v1")).then_some(())
    });

    mesh.kill_meshd();
    // The outage: a steady stream of requests for 3 s, every one served on the last
    // configuration (v1), none failed.
    let start = Instant::now();
    let mut served = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let (by, failed) = sample(&mesh, 10, "/outage");
        assert_eq!(failed, 0, "a request failed while meshd was down");
        assert!(by.iter().all(|p| p == "crash-v1"), "{by:?}");
        served += by.len();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(served >= 100, "only {served} requests in the outage");
    assert_eq!(mesh.backends[0].count("/outage"), served, "each reached v1");

    // A change made while meshd is down: everything to v2.
    mesh.config.write("extra.yaml", &rules("v2"));
    mesh.restart_meshd();
    let restarted = Instant::now();
    wait_for(
        "the sidecar reconnects and gets the change",
        Duration::from_secs(60),
        || {
            let (by, failed) = sample(&mesh, 10, "/after");
            (failed == 0 && by.iter().all(|p| p == "crash-v2")).then_some(())
        },
    );
    eprintln!("resynced {:?} after the restart", restarted.elapsed());
    // The new meshd knows the proxy and was never NACKed; Envoy rejected nothing from
    // either meshd.
    let meshd = mesh.meshd();
    let sync = meshd.get_json("/debug/syncz");
    assert_eq!(sync.as_array().map(Vec::len), Some(1), "{sync}");
    meshd.assert_no_nacks();
    mesh.assert_accepted();
    // Envoy's own view: its ADS stream is up again (a gauge, 1 when connected).
    let connected: u64 = mesh
        .envoy
        .stats("control_plane.connected_state")
        .iter()
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(connected, 1, "Envoy's control-plane stream is connected");
}
