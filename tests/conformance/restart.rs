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

/// Requests sent in a loop from another thread: (when, which pod answered, or None for a
/// failure), until stopped.
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, Option<String>)>>,
}

impl Sampler {
    fn start(host: &str) -> Sampler {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (flag, host) = (stop.clone(), host.to_string());
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let r = http_get("127.0.0.1:9080", "/edit", &[("Host", host.as_str())]);
                let pod = r
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|r| r.body.trim().to_string());
                seen.push((Instant::now(), pod));
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Vec<(Instant, Option<String>)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("sampler")
    }
}

/// The answers between `from` and `to`.
fn between(seen: &[(Instant, Option<String>)], from: Instant, to: Instant) -> Vec<Option<String>> {
    seen.iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .map(|(_, p)| p.clone())
        .collect()
}

/// How editors and tools write files, against a sidecar serving traffic: a save through a
/// temporary file and a rename switches routes with no failed request; a file truncated
/// and written in two steps (the first leaving half a document) never serves the half —
/// the last good objects stay until the write completes; a file deleted and re-created at
/// once keeps its routes throughout.
#[test]
fn partial_writes_never_serve_half_a_config() {
    let Some(mesh) = OneService::start_pods(
        "edit",
        &[("v1", "127.0.0.33"), ("v2", "127.0.0.34")],
        &rules("v1").replace("crash", "edit"),
    ) else {
        return;
    };
    let rules = |v: &str| rules(v).replace("crash", "edit");
    wait_for("all traffic on v1", Duration::from_secs(20), || {
        let (by, failed) = sample(&mesh, 10, "/before");
        (failed == 0 && by.iter().all(|p| p == "edit-v1")).then_some(())
    });
    let file = mesh.config.path().join("extra.yaml");
    let sampler = Sampler::start("edit.default.svc.cluster.local");

    // An editor's save: a hidden temporary file, then a rename over the original.
    let tmp = mesh.config.path().join(".extra.yaml.tmp");
    std::fs::write(&tmp, rules("v2")).expect("write temp");
    std::fs::rename(&tmp, &file).expect("rename");
    wait_for("the saved rules (v2)", Duration::from_secs(10), || {
        let (by, failed) = sample(&mesh, 5, "/saved");
        (failed == 0 && by.iter().all(|p| p == "edit-v2")).then_some(())
    });

    // A truncated write: half the new file (cut inside the VirtualService's route), a
    // pause far longer than the source's quiet time, then the rest.
    let full = rules("v1");
    let cut = full.find("subset: v1").expect("cut point");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&file).expect("truncate");
        f.write_all(&full.as_bytes()[..cut]).expect("first half");
        f.sync_all().expect("sync");
    }
    let half_from = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let half_to = Instant::now();
    let diags = mesh.meshd().get_json("/debug/configz");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .expect("reopen");
        f.write_all(&full.as_bytes()[cut..]).expect("second half");
    }
    wait_for("the completed rules (v1)", Duration::from_secs(10), || {
        let (by, failed) = sample(&mesh, 5, "/completed");
        (failed == 0 && by.iter().all(|p| p == "edit-v1")).then_some(())
    });

    // Deleted and at once re-created (same content): the routes never go away.
    let recreated_from = Instant::now();
    std::fs::remove_file(&file).expect("delete");
    std::thread::sleep(Duration::from_millis(10));
    std::fs::write(&file, &full).expect("re-create");
    std::thread::sleep(Duration::from_millis(1500));
    let recreated_to = Instant::now();

    let seen = sampler.finish();
    let failures = seen.iter().filter(|(_, p)| p.is_none()).count();
    assert_eq!(failures, 0, "{failures} of {} requests failed", seen.len());
    let half = between(&seen, half_from, half_to);
    assert!(
        half.len() >= 50,
        "only {} requests while half written",
        half.len()
    );
    assert!(
        half.iter().all(|p| p.as_deref() == Some("edit-v2")),
        "the half-written file changed routing: {half:?}\nconfigz: {diags}"
    );
    let recreated = between(&seen, recreated_from, recreated_to);
    assert!(recreated.len() >= 50, "only {} requests", recreated.len());
    assert!(
        recreated.iter().all(|p| p.as_deref() == Some("edit-v1")),
        "a re-created file changed routing: {recreated:?}"
    );
    // What meshd said while the file was half written: the syntax error, and that the
    // file's objects keep their last good versions.
    let text = diags.to_string();
    assert!(text.contains("YAML syntax error"), "{text}");
    assert!(text.contains("keeps its last good version"), "{text}");
    mesh.meshd().assert_no_nacks();
    mesh.assert_accepted();
}
