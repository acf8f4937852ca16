//! istio.io "Locality Load Balancing": the "Locality failover" and "Locality weighted
//! distribution" tasks, with the setup of their "Before you begin" page — HelloWorld in
//! `region1/zone1`, `region1/zone2`, `region2/zone3` and `region3/zone4` (the localities
//! come from the Nodes' `topology.kubernetes.io` labels, as in Kubernetes), and the `curl`
//! (formerly `sleep`) client in `region1/zone1`, behind a real sidecar with iptables-style
//! interception. Failover: traffic stays in the client's zone, then moves to the other
//! zone of its region, then to `region2` (the `failover` rule) before `region3`. Weighted
//! distribution: 70/20/0/10 over the four localities.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::*;
use crate::scripted::Scripted;

/// The four HelloWorld localities of the task, in the order the failover visits them.
const LOCALITIES: [(&str, &str, &str); 4] = [
    ("region1", "zone1", "127.0.0.51"),
    ("region1", "zone2", "127.0.0.52"),
    ("region2", "zone3", "127.0.0.53"),
    ("region3", "zone4", "127.0.0.54"),
];

/// HelloWorld's cluster IP: the client's connections to it are captured by its sidecar.
const HELLOWORLD: &str = "127.0.3.10:5000";

/// "Before you begin": the `sample` namespace, a Node per locality, HelloWorld
/// (samples/helloworld/helloworld.yaml's Service) with one pod per locality whose
/// `version` is the locality (`gen-helloworld.sh --version "$LOC"`), and the client pod
/// in `region1/zone1`.
fn setup() -> String {
    let mut s = String::from(
        r#"apiVersion: v1
kind: Namespace
metadata: {name: sample, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: helloworld, namespace: sample, labels: {app: helloworld, service: helloworld}}
spec:
  clusterIP: 127.0.3.10
  ports: [{port: 5000, name: http}]
  selector: {app: helloworld}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: sample, labels: {app: sleep}}
spec: {nodeName: node-region1-zone1, serviceAccountName: sleep, containers: [{name: sleep, image: curl}]}
status: {phase: Running, podIP: 127.0.0.40}
"#,
    );
    for (region, zone, ip) in LOCALITIES {
        s.push_str(&format!(
            r#"---
apiVersion: v1
kind: Node
metadata:
  name: node-{region}-{zone}
  labels: {{topology.kubernetes.io/region: {region}, topology.kubernetes.io/zone: {zone}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: helloworld-{region}.{zone}
  namespace: sample
  labels: {{app: helloworld, version: {region}.{zone}}}
spec:
  nodeName: node-{region}-{zone}
  containers: [{{name: helloworld, image: istio/examples-helloworld-v1, ports: [{{containerPort: 5000}}]}}]
status: {{phase: Running, podIP: {ip}}}
"#
        ));
    }
    s
}

/// "Configure locality failover": the task's DestinationRule, plus `maxEjectionPercent:
/// 100`. As written (Envoy's default of 10%), Envoy 1.40 ejects none of the four hosts:
/// it refuses an ejection that would take more than 10% of the cluster out
/// (`outlier_detection.ejections_overflow`), and one of four is 25%. istiod leaves the
/// field unset as meshd does, so the task needs this line on today's Envoy.
const FAILOVER: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: helloworld
  namespace: sample
spec:
  host: helloworld.sample.svc.cluster.local
  trafficPolicy:
    connectionPool:
      http:
        maxRequestsPerConnection: 1
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        enabled: true
        failover:
          - from: region1
            to: region2
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 10m
      maxEjectionPercent: 100
"#;

/// "Configure Weighted Distribution": the task's DestinationRule, as written.
const DISTRIBUTE: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: helloworld
  namespace: sample
spec:
  host: helloworld.sample.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        enabled: true
        distribute:
        - from: region1/zone1/*
          to:
            "region1/zone1/*": 70
            "region1/zone2/*": 20
            "region3/zone4/*": 10
    outlierDetection:
      consecutive5xxErrors: 100
      interval: 1s
      baseEjectionTime: 1m
"#;

// Fields drop in order: processes first, then their folders.
struct Task {
    client: Envoy,
    _meshd: Meshd,
    /// HelloWorld, one per locality, in [`LOCALITIES`] order; `None` once "drained".
    helloworld: Vec<Option<Scripted>>,
    _config: TempDir,
    _dir: TempDir,
}

impl Task {
    fn start(rule: &str) -> Option<Task> {
        let (dir, config) = intercepting_test("locality")?;
        config.write("setup.yaml", &setup());
        config.write("destination-rule.yaml", rule);
        // HelloWorld answers `Hello version: VERSION, instance: POD` (the real app's text).
        let helloworld = LOCALITIES
            .iter()
            .map(|(region, zone, ip)| {
                Some(Scripted::start(
                    &format!(
                        "Hello version: {region}.{zone}, instance: helloworld-{region}.{zone}"
                    ),
                    &format!("{ip}:5000"),
                ))
            })
            .collect();
        let meshd = Meshd::start(config.path(), dir.path(), &[]);
        let client =
            intercepted_sidecar_in(&dir, "sample", "127.0.0.40", "sleep", &[("app", "sleep")]);
        intercept_outbound("127.0.3.0/24");
        let t = Task {
            client,
            _meshd: meshd,
            helloworld,
            _config: config,
            _dir: dir,
        };
        wait_for(
            "HelloWorld through the sidecar",
            Duration::from_secs(20),
            || t.hello().ok(),
        );
        Some(t)
    }

    /// `curl helloworld.sample:5000/hello` from the client: the answering version
    /// (`region.zone`), or why there was none.
    fn hello(&self) -> Result<String, String> {
        match http_get(HELLOWORLD, "/hello", &[("Host", "helloworld.sample:5000")]) {
            Ok(r) if r.status == 200 => r
                .body
                .strip_prefix("Hello version: ")
                .and_then(|b| b.split(',').next())
                .map(str::to_string)
                .ok_or_else(|| format!("unexpected answer {:?}", r.body)),
            Ok(r) => Err(format!("status {} ({})", r.status, r.body)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `n` calls: answers by version (failures as `status NNN` / the error).
    fn calls(&self, n: usize) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for _ in 0..n {
            *m.entry(self.hello().unwrap_or_else(|e| e)).or_insert(0) += 1;
        }
        m
    }

    /// Makes HelloWorld in locality `i` refuse new connections, as the task's
    /// `POST /drain_listeners` on its sidecar does.
    ///
    /// First it lets a second pass since the last failover, as it does between the
    /// reader's commands: Envoy applies a host health change at once only when the
    /// cluster has not changed within its `update_merge_window` (1 s; istiod leaves the
    /// default, as meshd does); a drain right after the previous ejection would see up to
    /// a second of 503s before the next one takes effect.
    fn drain(&mut self, i: usize) {
        std::thread::sleep(Duration::from_millis(1100));
        self.helloworld[i] = None;
    }

    /// The client's outlier detection counters for HelloWorld (for failure messages).
    fn outlier_stats(&self) -> String {
        self.client
            .stats("helloworld.sample.svc.cluster.local.outlier_detection")
            .iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect()
    }

    /// After a drain: calls until `version` answers (the task: "The first call will fail,
    /// which triggers the failover"), then `n` more calls, which must all reach it.
    fn assert_fails_over_to(&self, version: &str, n: usize) {
        let mut failed = Vec::new();
        let start = std::time::Instant::now();
        loop {
            match self.hello() {
                Ok(v) if v == version => break,
                Ok(v) => failed.push(v),
                Err(e) => failed.push(e),
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no failover to {version} after 20s; answers: {failed:?}\n{}",
                self.outlier_stats()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(
            failed.len() <= 1,
            "at most the first call fails before the failover to {version}: {failed:?}\n{}",
            self.outlier_stats()
        );
        let d = self.calls(n);
        assert_eq!(
            d.get(version),
            Some(&n),
            "every call answered by {version}: {d:?}"
        );
    }
}

#[test]
fn locality_failover() {
    let Some(mut t) = Task::start(FAILOVER) else {
        return;
    };
    // "Verify traffic stays in region1.zone1": repeated calls, always the same answer.
    let d = t.calls(30);
    assert_eq!(
        d.get("region1.zone1"),
        Some(&30),
        "traffic stays in the client's locality: {d:?}"
    );

    // "Failover to region1.zone2": the other zone of the client's region (priority 2).
    t.drain(0);
    t.assert_fails_over_to("region1.zone2", 30);

    // "Failover to region2.zone3": the failover rule's region (priority 3) before
    // region3 (priority 4, no rule).
    t.drain(1);
    t.assert_fails_over_to("region2.zone3", 30);

    // "Failover to region3.zone4": the last locality left.
    t.drain(2);
    t.assert_fails_over_to("region3.zone4", 30);
    assert_envoy_accepted(&t.client);
}

#[test]
fn locality_weighted_distribution() {
    let Some(t) = Task::start(DISTRIBUTE) else {
        return;
    };
    // "Verify the distribution": replies per locality match the table (70/20/0/10).
    // Over 1000 calls a share p has a standard deviation of sqrt(1000·p·(1-p)): 14.5 at
    // 70%, 12.6 at 20%, 9.5 at 10%; the bounds are about ±5 of those. Without the
    // weights every locality would get 250.
    const N: usize = 1000;
    let d = t.calls(N);
    let got = |v: &str| d.get(v).copied().unwrap_or(0);
    assert_eq!(
        got("region1.zone1") + got("region1.zone2") + got("region3.zone4"),
        N,
        "every call answered, none by region2.zone3 (weight 0): {d:?}"
    );
    assert!(
        (630..=770).contains(&got("region1.zone1")),
        "region1.zone1: 70% ± 7: {d:?}"
    );
    assert!(
        (140..=260).contains(&got("region1.zone2")),
        "region1.zone2: 20% ± 6: {d:?}"
    );
    assert!(
        (55..=145).contains(&got("region3.zone4")),
        "region3.zone4: 10% ± 4.5: {d:?}"
    );
    assert_envoy_accepted(&t.client);
}
