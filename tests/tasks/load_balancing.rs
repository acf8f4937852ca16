//! The load balancing algorithms users pick in a DestinationRule's
//! `trafficPolicy.loadBalancer` (istio.io "Traffic Management" concepts, "Load balancing
//! options", and the DestinationRule reference's `LoadBalancerSettings` examples),
//! through a real client sidecar with iptables-style interception:
//! `LEAST_REQUEST` sends fewer requests to a slow backend than `ROUND_ROBIN` does under
//! concurrent load; `RANDOM` spreads evenly (even to a slow backend) without taking
//! turns; `consistentHash` keeps each `httpHeaderName` value, each `httpCookie` (which
//! Envoy sets when the request has none) and each client address (`useSourceIp`) on one
//! backend.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::*;

/// The service's cluster IP: the client's connections to it are captured by its sidecar.
const BACKEND: &str = "127.0.3.20:8000";
const HOST: &str = "backend.default.svc.cluster.local";

/// The service, `n` pods and the client (`sleep`, as in the reference examples).
fn workloads(n: usize) -> String {
    let mut s = String::from(
        r#"apiVersion: v1
kind: Service
metadata: {name: backend, namespace: default}
spec:
  clusterIP: 127.0.3.20
  ports: [{port: 8000, name: http}]
  selector: {app: backend}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default, labels: {app: sleep}}
spec: {serviceAccountName: sleep, containers: [{name: sleep, image: curl}]}
status: {phase: Running, podIP: 127.0.0.40}
"#,
    );
    for i in 0..n {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: backend-{i}, namespace: default, labels: {{app: backend}}}}\nspec: {{containers: [{{name: app, image: app}}]}}\nstatus: {{phase: Running, podIP: 127.0.0.{}}}\n",
            61 + i
        ));
    }
    s
}

/// The DestinationRule with `load_balancer` as its `trafficPolicy.loadBalancer` (YAML
/// flow mapping).
fn rule(load_balancer: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: backend, namespace: default}}\nspec:\n  host: backend\n  trafficPolicy:\n    loadBalancer: {load_balancer}\n"
    )
}

/// A backend pod: answers every request with its name, after `delay` (a slow pod); each
/// connection has its own thread, so slow answers overlap.
fn pod(name: &str, ip: &str, delay: Duration) -> HttpApp {
    let name = name.to_string();
    HttpApp::start(&format!("{ip}:8000"), move |_| {
        std::thread::sleep(delay);
        Answer::ok(name.clone())
    })
}

// Fields drop in order: processes first, then their folders.
struct Mesh {
    client: Envoy,
    _meshd: Meshd,
    _pods: Vec<HttpApp>,
    config: TempDir,
    _dir: TempDir,
}

impl Mesh {
    /// `delays.len()` pods `backend-I` (127.0.0.61…), each answering after its delay,
    /// behind the DestinationRule with `load_balancer`.
    fn start(delays: &[Duration], load_balancer: &str) -> Option<Mesh> {
        let (dir, config) = intercepting_test("lb")?;
        config.write("workloads.yaml", &workloads(delays.len()));
        config.write("destination-rule.yaml", &rule(load_balancer));
        let pods = delays
            .iter()
            .enumerate()
            .map(|(i, d)| pod(&format!("backend-{i}"), &format!("127.0.0.{}", 61 + i), *d))
            .collect();
        let meshd = Meshd::start(config.path(), dir.path(), &[]);
        let client = intercepted_sidecar(&dir, "127.0.0.40", "sleep", &[("app", "sleep")]);
        intercept_outbound("127.0.3.0/24");
        let m = Mesh {
            client,
            _meshd: meshd,
            _pods: pods,
            config,
            _dir: dir,
        };
        wait_for(
            "the backend through the sidecar",
            Duration::from_secs(20),
            || m.get(&[]).ok(),
        );
        Some(m)
    }

    /// One request through the sidecar: the answering pod.
    fn get(&self, headers: &[(&str, &str)]) -> Result<String, String> {
        let mut h = vec![("Host", HOST)];
        h.extend_from_slice(headers);
        match http_get(BACKEND, "/", &h) {
            Ok(r) if r.status == 200 => Ok(r.body),
            Ok(r) => Err(format!("status {}: {}", r.status, r.body)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The client's cluster for the service, as Envoy holds it (to wait for an edit).
    fn cluster_config(&self) -> String {
        http_get(
            &self.client.admin,
            "/config_dump?resource=dynamic_active_clusters&name_regex=.*backend.*",
            &[],
        )
        .map(|r| r.body)
        .unwrap_or_default()
    }
}

/// `total` requests from `clients` concurrent callers: answers per pod.
fn concurrent(m: &Mesh, clients: usize, total: usize) -> BTreeMap<String, usize> {
    let left = AtomicUsize::new(total);
    let counts = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                while left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let who = m.get(&[]).unwrap_or_else(|e| e);
                    if let Ok(mut c) = counts.lock() {
                        *c.entry(who).or_insert(0) += 1;
                    }
                }
            });
        }
    });
    counts.into_inner().unwrap_or_default()
}

/// `n` requests one after another: the answering pods, in order.
fn sequence(m: &Mesh, n: usize, headers: &[(&str, &str)]) -> Vec<String> {
    (0..n)
        .map(|_| m.get(headers).unwrap_or_else(|e| e))
        .collect()
}

const SLOW: Duration = Duration::from_millis(100);

#[test]
fn least_request_sends_fewer_requests_to_a_slow_backend_than_round_robin() {
    // backend-0 answers at once, backend-1 after 100 ms; 8 callers share 200 requests.
    let Some(m) = Mesh::start(&[Duration::ZERO, SLOW], "{simple: ROUND_ROBIN}") else {
        return;
    };
    // ROUND_ROBIN takes turns whatever the load: half the requests wait on the slow pod.
    let rr = concurrent(&m, 8, 200);
    let rr_slow = rr.get("backend-1").copied().unwrap_or(0);
    assert_eq!(rr.values().sum::<usize>(), 200, "{rr:?}");
    assert!(
        (90..=110).contains(&rr_slow),
        "ROUND_ROBIN: the slow pod gets its turn, half of 200 (±10): {rr:?}"
    );

    m.config
        .write("destination-rule.yaml", &rule("{simple: LEAST_REQUEST}"));
    wait_for(
        "LEAST_REQUEST in the client",
        Duration::from_secs(20),
        || m.cluster_config().contains("LEAST_REQUEST").then_some(()),
    );
    // LEAST_REQUEST (two random choices, the one with fewer requests in flight): the slow
    // pod, always busier, wins only when both choices fall on it — about a quarter
    // (measured: 45 to 55 of 200).
    let lr = concurrent(&m, 8, 200);
    let lr_slow = lr.get("backend-1").copied().unwrap_or(0);
    assert_eq!(lr.values().sum::<usize>(), 200, "{lr:?}");
    // A quarter of 200 is 50, with a standard deviation of 6.1; 75 is 4 of them above.
    assert!(
        lr_slow <= 75 && lr_slow + 25 <= rr_slow,
        "LEAST_REQUEST: the slow pod gets at most 37.5% of 200, at least 25 fewer than \
         under ROUND_ROBIN ({rr_slow}): {lr:?}"
    );
    assert_envoy_accepted(&m.client);
}

#[test]
fn random_spreads_evenly_even_to_a_slow_backend() {
    // Four pods, the last one slow. RANDOM ignores load: even under 8 concurrent callers
    // the slow pod keeps its quarter (LEAST_REQUEST would steer away from it).
    let Some(m) = Mesh::start(
        &[Duration::ZERO, Duration::ZERO, Duration::ZERO, SLOW],
        "{simple: RANDOM}",
    ) else {
        return;
    };
    // 400 requests: each pod's count has a standard deviation of sqrt(400·¼·¾) ≈ 8.7;
    // ±10 percentage points (±40) is 4.6 of them.
    let d = concurrent(&m, 8, 400);
    assert_eq!(d.values().sum::<usize>(), 400, "{d:?}");
    for i in 0..4 {
        let n = d.get(&format!("backend-{i}")).copied().unwrap_or(0);
        assert!(
            (60..=140).contains(&n),
            "backend-{i}: 25% ± 10 of 400 (the slow one too): {d:?}"
        );
    }
    assert_envoy_accepted(&m.client);
}

#[test]
fn random_does_not_take_turns() {
    let Some(m) = Mesh::start(&[Duration::ZERO; 4], "{simple: RANDOM}") else {
        return;
    };
    // One caller, 400 requests in a row: even shares (±10 percentage points, as above),
    // but ROUND_ROBIN would never give one pod two requests in a row, while at random a
    // quarter of the 399 pairs repeat (99.75, sd 8.7).
    let seq = sequence(&m, 400, &[]);
    for i in 0..4 {
        let n = seq.iter().filter(|p| **p == format!("backend-{i}")).count();
        assert!((60..=140).contains(&n), "backend-{i}: 25% ± 10 of 400: {n}");
    }
    let repeats = seq.windows(2).filter(|w| w[0] == w[1]).count();
    assert!(
        repeats >= 50,
        "random picks repeat a pod about 100 times in 399 pairs, got {repeats}"
    );
    assert_envoy_accepted(&m.client);
}

/// For each key, the pods that answered its requests.
fn pods_by_key(answers: &[(String, String)]) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut m: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (k, pod) in answers {
        m.entry(k.as_str()).or_default().insert(pod.as_str());
    }
    m
}

/// Every key stayed on one pod, and the keys used more than one pod between them.
fn assert_sticky(what: &str, answers: &[(String, String)]) {
    let by_key = pods_by_key(answers);
    for (k, pods) in &by_key {
        assert_eq!(
            pods.len(),
            1,
            "{what} {k:?}: every request on one pod, got {pods:?}"
        );
        assert!(
            pods.iter().all(|p| p.starts_with("backend-")),
            "{what} {k:?}: {pods:?}"
        );
    }
    let used: BTreeSet<&str> = by_key.values().flatten().copied().collect();
    assert!(
        used.len() >= 2,
        "{} {what}s spread over more than one of the 4 pods: {by_key:?}",
        by_key.len()
    );
}

#[test]
fn consistent_hash_on_a_header_keeps_each_value_on_one_backend() {
    let zero = [Duration::ZERO; 4];
    let Some(m) = Mesh::start(&zero, "{consistentHash: {httpHeaderName: x-user}}") else {
        return;
    };
    // 20 users, 10 requests each, interleaved.
    let mut answers = Vec::new();
    for _ in 0..10 {
        for u in 0..20 {
            let user = format!("user-{u}");
            let pod = m.get(&[("x-user", &user)]).unwrap_or_else(|e| e);
            answers.push((user, pod));
        }
    }
    assert_sticky("x-user", &answers);
    assert_envoy_accepted(&m.client);
}

#[test]
fn consistent_hash_on_a_cookie_sets_it_and_keeps_its_holder_on_one_backend() {
    let zero = [Duration::ZERO; 4];
    let Some(m) = Mesh::start(
        &zero,
        "{consistentHash: {httpCookie: {name: user, ttl: 0s}}}",
    ) else {
        return;
    };
    let mut answers = Vec::new();
    for _ in 0..12 {
        // No cookie: Envoy makes one up (per downstream connection), sets it on the
        // response, and already balances this request by it.
        let r = http_get(BACKEND, "/", &[("Host", HOST)]).expect("first request");
        assert_eq!(r.status, 200, "{r:?}");
        let set = r
            .headers
            .iter()
            .find(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("Envoy sets the hash cookie: {r:?}"));
        let cookie = set.split(';').next().unwrap_or_default().trim().to_string();
        assert!(cookie.starts_with("user="), "{set}");
        answers.push((cookie.clone(), r.body));
        // Its holder: 10 more requests, each on a new connection, all on the same pod.
        for _ in 0..10 {
            let r = http_get(BACKEND, "/", &[("Host", HOST), ("Cookie", &cookie)])
                .expect("request with the cookie");
            assert!(
                !r.headers.iter().any(|(k, _)| k == "set-cookie"),
                "no new cookie for a request that has one: {r:?}"
            );
            answers.push((cookie.clone(), r.body));
        }
    }
    assert_sticky("cookie", &answers);
    assert_envoy_accepted(&m.client);
}

/// A GET to `addr` from source address `src` (a client pod's own address).
fn get_from(src: &str, headers: &[(&str, &str)]) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let stream = rt
        .block_on(async {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.bind(SocketAddr::new(
                src.parse().map_err(std::io::Error::other)?,
                0,
            ))?;
            s.connect(BACKEND.parse().map_err(std::io::Error::other)?)
                .await?
                .into_std()
        })
        .map_err(|e| e.to_string())?;
    drop(rt);
    let mut stream = stream;
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    if head.starts_with("HTTP/1.1 200") {
        Ok(body.to_string())
    } else {
        Err(head.lines().next().unwrap_or("no answer").to_string())
    }
}

#[test]
fn consistent_hash_on_the_source_ip_keeps_each_client_on_one_backend() {
    let zero = [Duration::ZERO; 4];
    let Some(m) = Mesh::start(&zero, "{consistentHash: {useSourceIp: true}}") else {
        return;
    };
    // 12 client addresses, 10 requests each (each on a new connection and source port).
    let mut answers = Vec::new();
    for _ in 0..10 {
        for c in 0..12 {
            let src = format!("127.0.0.{}", 81 + c);
            let pod = get_from(&src, &[]).unwrap_or_else(|e| e);
            answers.push((src, pod));
        }
    }
    assert_sticky("client address", &answers);
    assert_envoy_accepted(&m.client);
}
