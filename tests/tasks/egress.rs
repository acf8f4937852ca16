//! istio.io "Accessing External Services" and "Egress Gateways", step by step through a
//! real `sleep` sidecar with iptables-style interception. The Internet is played by
//! servers on 127.0.1.0/24 (httpbin.org, www.google.com, edition.cnn.com) and a DNS
//! server on this network namespace's resolver address that knows their names, so
//! `resolution: DNS` ServiceEntries resolve for real in Envoy.
//!
//! Accessing External Services: with ALLOW_ANY both HTTPS sites answer; with
//! REGISTRY_ONLY neither does (the TLS handshake fails), and plain HTTP to a host outside
//! the registry gets 502 from the sidecar, until a ServiceEntry admits httpbin.org (then
//! www.google.com); a VirtualService `timeout: 3s` turns httpbin.org's 5 s `/delay/5`
//! into a 504 after 3 s. Egress Gateways: HTTP to edition.cnn.com (301 to HTTPS, then 200)
//! and then HTTPS passes through the `istio-egressgateway`, counted by the gateway Envoy
//! request for request.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::traffic_apps::call;

/// The external sites: name, address.
const HTTPBIN_ORG: (&str, &str) = ("httpbin.org", "127.0.1.80");
const GOOGLE: (&str, &str) = ("www.google.com", "127.0.1.90");
const CNN: (&str, &str) = ("edition.cnn.com", "127.0.1.91");

/// A DNS server for this test's network namespace, on the address /etc/resolv.conf names
/// (Envoy's c-ares resolver reads it; the namespace has no other way out): A records for
/// the external sites, nothing else.
struct Dns {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dns {
    fn start(records: &[(&str, &str)]) -> Dns {
        let server = std::fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("nameserver"))
            .map(str::trim)
            .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
            .unwrap_or("127.0.0.1")
            .to_string();
        if !server.starts_with("127.") {
            add_loopback_address(&server);
        }
        let sock = UdpSocket::bind((server.as_str(), 53))
            .unwrap_or_else(|e| panic!("DNS server on {server}:53: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let records: BTreeMap<String, std::net::Ipv4Addr> = records
            .iter()
            .map(|(n, a)| (n.to_string(), a.parse().expect("IPv4")))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(answer) = dns_answer(&buf[..n], &records) {
                    let _ = sock.send_to(&answer, from);
                }
            }
        });
        Dns {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to one DNS query: the A record of a known name, no record for other types
/// of a known name, NXDOMAIN for unknown names.
fn dns_answer(q: &[u8], records: &BTreeMap<String, std::net::Ipv4Addr>) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = q.get(12..i + 4)?;
    let name = labels.join(".");
    let address = records.get(&name);
    let answers = u16::from(address.is_some() && qtype == 1);
    let rcode = if address.is_some() { 0 } else { 3 };
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[0..2]); // id
    r.extend_from_slice(&[0x81 | (q[2] & 0x01), 0x80 | rcode]); // response, RD copied, RA
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&answers.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    if let (Some(a), 1) = (address, answers) {
        // A pointer to the question's name, type A, class IN, TTL 30 s, 4 bytes.
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
        r.extend_from_slice(&a.octets());
    }
    Some(r)
}

/// httpbin.org as the task uses it: `/headers` (the request's headers, as JSON),
/// `/delay/N` (answers after N seconds), `/status/CODE`.
fn httpbin(req: &Request) -> Answer {
    let arg = |prefix: &str| {
        req.path
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<u64>().ok())
    };
    if req.path == "/headers" {
        let map: serde_json::Map<String, serde_json::Value> = req
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        Answer::ok(serde_json::json!({ "headers": map }).to_string())
    } else if let Some(s) = arg("/delay/") {
        std::thread::sleep(Duration::from_secs(s));
        Answer::ok("{}")
    } else if let Some(code) = arg("/status/") {
        Answer {
            status: u16::try_from(code).unwrap_or(500),
            headers: vec![],
            body: String::new(),
        }
    } else {
        Answer::ok("httpbin.org")
    }
}

/// edition.cnn.com over plain HTTP: everything moves to HTTPS (`301`, `location`).
fn cnn_http(req: &Request) -> Answer {
    Answer {
        status: 301,
        headers: vec![(
            "location".into(),
            format!("https://edition.cnn.com{}", req.path),
        )],
        body: String::new(),
    }
}

/// `sleep` (samples/sleep/sleep.yaml: its Service has an HTTP port 80), captured by its
/// sidecar.
const SLEEP: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: sleep, namespace: default, labels: {app: sleep, service: sleep}}
spec:
  ports: [{port: 80, name: http}]
  selector: {app: sleep}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default, labels: {app: sleep}}
spec: {serviceAccountName: sleep, containers: [{name: sleep, image: curlimages/curl}]}
status: {phase: Running, podIP: 127.0.0.40}
"#;

// Fields drop in order: processes first, then their folders.
struct World {
    sleep: Envoy,
    _meshd: Meshd,
    /// The plain HTTP sites, on port 80.
    _sites: Vec<HttpApp>,
    _tls_sites: Vec<TlsBackend>,
    _dns: Dns,
    config: TempDir,
    dir: TempDir,
    /// The sites' CA (the "public" trust store curl uses).
    ca: TestCa,
}

impl World {
    /// The Internet, meshd serving `manifests` (plus sleep) on `http_port`, and sleep's
    /// sidecar; everything sleep sends to 127.0.1.0/24 goes through its sidecar.
    fn start(tag: &str, http_port: u16, manifests: &[(&str, &str)]) -> Option<World> {
        let (dir, config) = intercepting_test(tag)?;
        config.write("sleep.yaml", SLEEP);
        for (name, text) in manifests {
            config.write(name, text);
        }
        let dns = Dns::start(&[HTTPBIN_ORG, GOOGLE, CNN]);
        let ca = TestCa::new("public-ca");
        let tls_sites = [GOOGLE, CNN]
            .iter()
            .map(|(name, ip)| {
                let (cert, key) = ca.leaf(name, &[name]);
                TlsBackend::start(&format!("{ip}:443"), &cert, &key, &ca.pem, false)
            })
            .collect();
        let sites = vec![
            HttpApp::start(&format!("{}:80", HTTPBIN_ORG.1), httpbin),
            HttpApp::start(&format!("{}:80", CNN.1), cnn_http),
        ];
        let meshd = Meshd::start_on(config.path(), dir.path(), http_port, &[]);
        let sleep = intercepted_sidecar(&dir, "127.0.0.40", "sleep", &[("app", "sleep")]);
        intercept_outbound("127.0.1.0/24");
        Some(World {
            sleep,
            _meshd: meshd,
            _sites: sites,
            _tls_sites: tls_sites,
            _dns: dns,
            config,
            dir,
            ca,
        })
    }

    /// `curl -sI https://NAME`: the status, or why the handshake failed.
    fn https(&self, (name, ip): (&str, &str)) -> Result<u16, String> {
        https_get(&format!("{ip}:443"), name, "/", &self.ca.pem, None)
            .map(|r| r.status)
            .map_err(|e| e.to_string())
    }

    /// `curl http://NAME/PATH` (to `ip`, which curl would have resolved NAME to).
    fn http(&self, name: &str, ip: &str, path: &str) -> Result<HttpResponse, String> {
        call(
            &format!("{ip}:80"),
            name,
            path,
            &[],
            Duration::from_secs(10),
        )
        .map_err(|e| e.to_string())
    }
}

/// The sum of an Envoy's counter `name` (exact), 0 when absent.
fn counter(envoy: &Envoy, name: &str) -> u64 {
    envoy
        .stats(name)
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| *v)
        .sum()
}

const REGISTRY_ONLY: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
"#;

/// "Access an external HTTP service".
const HTTPBIN_EXT: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: httpbin-ext
spec:
  hosts:
  - httpbin.org
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
"#;

/// "Access an external HTTPS service".
const GOOGLE_SE: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: google
spec:
  hosts:
  - www.google.com
  ports:
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
  location: MESH_EXTERNAL
"#;

/// "Manage traffic to external services": a 3 s timeout for httpbin.org.
const HTTPBIN_TIMEOUT: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin-ext
spec:
  hosts:
    - httpbin.org
  http:
  - timeout: 3s
    route:
      - destination:
          host: httpbin.org
        weight: 100
"#;

#[test]
fn accessing_external_services() {
    let Some(w) = World::start("egress", 8080, &[]) else {
        return;
    };
    // "Envoy passthrough to external services": ALLOW_ANY (the default), both 200.
    wait_for(
        "HTTPS out through the sidecar",
        Duration::from_secs(20),
        || w.https(GOOGLE).ok(),
    );
    assert_eq!(w.https(GOOGLE), Ok(200));
    assert_eq!(w.https(CNN), Ok(200));
    assert!(
        counter(&w.sleep, "cluster.PassthroughCluster.upstream_cx_total") >= 3,
        "the calls went out through the sidecar's PassthroughCluster"
    );
    // Plain HTTP to a host outside the registry passes through too.
    let r = w.http("httpbin.org", HTTPBIN_ORG.1, "/status/200");
    assert_eq!(r.map(|r| r.status), Ok(200), "ALLOW_ANY lets HTTP out");

    // "Change to the blocking-by-default policy": both HTTPS calls now fail (curl's exit
    // code 35: the handshake fails), HTTP to an unknown host gets 502 from the sidecar.
    w.config.write("mesh.yaml", REGISTRY_ONLY);
    // Listeners (the passthrough chain) and routes (the catch-all virtual host) change in
    // separate pushes: wait for both.
    wait_for("REGISTRY_ONLY", Duration::from_secs(20), || {
        let blocked = w
            .http("httpbin.org", HTTPBIN_ORG.1, "/headers")
            .is_ok_and(|r| r.status == 502);
        w.https(GOOGLE).err().filter(|_| blocked)
    });
    for _ in 0..5 {
        for site in [GOOGLE, CNN] {
            let r = w.https(site);
            assert!(r.is_err(), "{} blocked: {r:?}", site.0);
        }
        let r = w.http("httpbin.org", HTTPBIN_ORG.1, "/headers");
        assert_eq!(
            r.as_ref().map(|r| r.status),
            Ok(502),
            "HTTP to a host outside the registry: {r:?}"
        );
    }

    // "Access an external HTTP service": the ServiceEntry admits httpbin.org.
    w.config.write("httpbin-ext.yaml", HTTPBIN_EXT);
    let r = wait_for("httpbin.org admitted", Duration::from_secs(20), || {
        w.http("httpbin.org", HTTPBIN_ORG.1, "/headers")
            .ok()
            .filter(|r| r.status == 200)
    });
    let seen: serde_json::Value = serde_json::from_str(&r.body).expect("httpbin's JSON");
    let header = |name: &str| {
        seen["headers"]
            .as_object()
            .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
            .and_then(|(_, v)| v.as_str())
            .map(str::to_string)
    };
    assert_eq!(header("host").as_deref(), Some("httpbin.org"), "{seen}");
    // The sidecar's log names the cluster `outbound|80||httpbin.org`.
    assert!(
        counter(
            &w.sleep,
            "cluster.outbound|80||httpbin.org.upstream_rq_total"
        ) >= 1,
        "the request went through httpbin.org's cluster"
    );
    // `resolution: DNS`: the sidecar ignores the original destination and connects to
    // what DNS says httpbin.org is (the task's warning about NONE).
    let r = w.http("httpbin.org", "127.0.1.99", "/status/200");
    assert_eq!(
        r.as_ref().map(|r| r.status),
        Ok(200),
        "another address, same Host: DNS decides: {r:?}"
    );
    // Other hosts stay blocked.
    let r = w.http("unknown.example.com", HTTPBIN_ORG.1, "/status/200");
    assert_eq!(r.as_ref().map(|r| r.status), Ok(502), "{r:?}");
    assert!(w.https(GOOGLE).is_err(), "HTTPS still blocked");

    // "Access an external HTTPS service".
    w.config.write("google.yaml", GOOGLE_SE);
    wait_for("www.google.com admitted", Duration::from_secs(20), || {
        w.https(GOOGLE).ok()
    });
    for _ in 0..5 {
        assert_eq!(w.https(GOOGLE), Ok(200));
        assert!(w.https(CNN).is_err(), "edition.cnn.com is still blocked");
    }
    assert!(
        counter(
            &w.sleep,
            "cluster.outbound|443||www.google.com.upstream_cx_total"
        ) >= 5,
        "the log line's cluster: outbound|443||www.google.com"
    );

    // "Manage traffic to external services": /delay/5 takes 5 s, then with a 3 s
    // timeout it is a 504 after 3 s.
    let start = Instant::now();
    let r = w.http("httpbin.org", HTTPBIN_ORG.1, "/delay/5");
    let took = start.elapsed();
    assert_eq!(r.map(|r| r.status), Ok(200), "after {took:?}");
    assert!(took >= Duration::from_secs(5), "about 5 s: {took:?}");
    w.config.write("httpbin-timeout.yaml", HTTPBIN_TIMEOUT);
    // (Waiting for the route in Envoy, not for a 504, keeps this to one 3 s request.)
    wait_for(
        "the 3 s timeout in the sidecar",
        Duration::from_secs(20),
        || {
            http_get(
                &w.sleep.admin,
                "/config_dump?resource=dynamic_route_configs",
                &[],
            )
            .ok()
            .filter(|r| r.body.contains("\"timeout\": \"3s\""))
        },
    );
    let start = Instant::now();
    let r = w.http("httpbin.org", HTTPBIN_ORG.1, "/delay/5");
    let took = start.elapsed();
    assert_eq!(r.map(|r| r.status), Ok(504), "after {took:?}");
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_millis(4500),
        "cut off at 3 s: {took:?}"
    );
    assert_envoy_accepted(&w.sleep);
}

/// "Deploy Istio egress gateway": the Service and pod of `istio-egressgateway` as
/// installed (ports 80 → 8080, 443 → 8443).
const EGRESS_GATEWAY_INSTALL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: istio-egressgateway, namespace: istio-system, labels: {istio: egressgateway}}
spec:
  selector: {istio: egressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
---
apiVersion: v1
kind: Pod
metadata:
  name: istio-egressgateway-1
  namespace: istio-system
  labels: {istio: egressgateway, app: istio-egressgateway}
spec: {serviceAccountName: istio-egressgateway-service-account, containers: [{name: istio-proxy, image: proxyv2}]}
status: {phase: Running, podIP: 127.0.0.21}
"#;

/// "Egress gateway for HTTP traffic", step 1: the ServiceEntry for edition.cnn.com.
const CNN_SE_HTTP: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
"#;

/// Step 3: the egress Gateway for port 80 and the DestinationRule for the gateway.
const CNN_GATEWAY_HTTP: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - edition.cnn.com
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
"#;

/// Step 4: sidecars → egress gateway → edition.cnn.com.
const CNN_VS_HTTP: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.com
  gateways:
  - istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 80
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 80
      weight: 100
"#;

/// "Egress gateway for HTTPS traffic", step 1: the ServiceEntry for port 443 (TLS).
const CNN_SE_TLS: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 443
    name: tls
    protocol: TLS
  resolution: DNS
"#;

/// Step 3: the PASSTHROUGH Gateway, its DestinationRule and the `tls` routes.
const CNN_GATEWAY_TLS: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 443
      name: tls
      protocol: TLS
    hosts:
    - edition.cnn.com
    tls:
      mode: PASSTHROUGH
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.com
  gateways:
  - mesh
  - istio-egressgateway
  tls:
  - match:
    - gateways:
      - mesh
      port: 443
      sniHosts:
      - edition.cnn.com
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 443
  - match:
    - gateways:
      - istio-egressgateway
      port: 443
      sniHosts:
      - edition.cnn.com
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 443
      weight: 100
"#;

impl World {
    /// `curl -sSL -o /dev/null -D - http://edition.cnn.com/politics`: the redirect's
    /// status and location, then the status of the HTTPS request it leads to.
    fn cnn_politics(&self) -> Result<(u16, String, u16), String> {
        let r = self.http(CNN.0, CNN.1, "/politics")?;
        let location = r
            .header("location")
            .map(str::to_string)
            .ok_or_else(|| format!("no location: {r:?}"))?;
        let https = https_get(
            &format!("{}:443", CNN.1),
            CNN.0,
            "/politics",
            &self.ca.pem,
            None,
        )
        .map_err(|e| e.to_string())?;
        Ok((r.status, location, https.status))
    }
}

#[test]
fn egress_gateways_for_http_and_https() {
    let Some(w) = World::start(
        "egressgw",
        18080,
        &[("egress-gateway.yaml", EGRESS_GATEWAY_INSTALL)],
    ) else {
        return;
    };
    // The gateway runs as istio-proxy does (group 1337), so its own connections to
    // the Internet are not captured.
    let gateway = Envoy::start_with(
        &NodeSpec {
            kind: "router",
            ip: "127.0.0.21",
            pod: "istio-egressgateway-1",
            namespace: "istio-system",
            labels: &[("istio", "egressgateway"), ("app", "istio-egressgateway")],
            service_account: "istio-egressgateway-service-account",
        },
        &EnvoyOpts {
            admin_port: 15100,
            gid: Some(PROXY_GID),
            ..Default::default()
        },
        w.dir.path(),
    );
    let politics = (301, "https://edition.cnn.com/politics".to_string(), 200);
    let through_gateway = |port: u16| {
        counter(
            &gateway,
            &format!("cluster.outbound|{port}||edition.cnn.com.upstream_rq_total"),
        )
    };
    let gateway_cx = || {
        counter(
            &gateway,
            "cluster.outbound|443||edition.cnn.com.upstream_cx_total",
        )
    };
    let to_gateway = || {
        counter(
            &w.sleep,
            "cluster.outbound|80|cnn|istio-egressgateway.istio-system.svc.cluster.local.upstream_rq_total",
        )
    };

    // "Egress gateway for HTTP traffic": the ServiceEntry alone; the 301 to HTTPS, then
    // HTTP/2 200, straight from the sidecar.
    w.config.write("cnn.yaml", CNN_SE_HTTP);
    let r = wait_for("edition.cnn.com", Duration::from_secs(20), || {
        w.cnn_politics().ok().filter(|_| {
            counter(
                &w.sleep,
                "cluster.outbound|80||edition.cnn.com.upstream_rq_total",
            ) > 0
        })
    });
    assert_eq!(r, politics);
    assert_eq!(through_gateway(80), 0, "no gateway yet");

    // The egress Gateway, its DestinationRule and the VirtualService: the same answers,
    // now through the gateway (its log line: `outbound|80||edition.cnn.com`).
    w.config.write("cnn-gateway.yaml", CNN_GATEWAY_HTTP);
    w.config.write("cnn-vs.yaml", CNN_VS_HTTP);
    wait_for(
        "the route through the gateway",
        Duration::from_secs(20),
        || w.cnn_politics().ok().filter(|_| through_gateway(80) > 0),
    );
    let (sent, relayed) = (to_gateway(), through_gateway(80));
    for _ in 0..10 {
        assert_eq!(w.cnn_politics(), Ok(politics.clone()));
    }
    assert_eq!(
        (to_gateway() - sent, through_gateway(80) - relayed),
        (10, 10),
        "each of the 10 HTTP requests went sidecar → egress gateway → edition.cnn.com"
    );
    // "Note that you only redirected the traffic from port 80 to the egress gateway.
    // The HTTPS traffic to port 443 went directly to edition.cnn.com."
    assert_eq!(gateway_cx(), 0, "no HTTPS through the gateway");
    assert!(
        counter(
            &w.sleep,
            "cluster.outbound|443||edition.cnn.com.upstream_cx_total"
        ) >= 10,
        "HTTPS straight from the sidecar"
    );

    // "Cleanup HTTP gateway", then "Egress gateway for HTTPS traffic".
    for f in ["cnn-gateway.yaml", "cnn-vs.yaml"] {
        std::fs::remove_file(w.config.path().join(f)).expect("rm");
    }
    w.config.write("cnn.yaml", CNN_SE_TLS);
    let https = || {
        https_get(
            &format!("{}:443", CNN.1),
            CNN.0,
            "/politics",
            &w.ca.pem,
            None,
        )
        .map(|r| (r.status, r.body))
        .map_err(|e| e.to_string())
    };
    let direct = || {
        counter(
            &w.sleep,
            "cluster.outbound|443||edition.cnn.com.upstream_cx_total",
        )
    };
    wait_for("HTTPS to edition.cnn.com", Duration::from_secs(20), || {
        https().ok()
    });
    assert_eq!(
        https(),
        Ok((200, "sni=edition.cnn.com client=none".to_string())),
        "the application's own TLS reaches edition.cnn.com"
    );
    w.config.write("cnn-gateway.yaml", CNN_GATEWAY_TLS);
    wait_for("TLS through the gateway", Duration::from_secs(20), || {
        https().ok().filter(|_| gateway_cx() > 0)
    });
    let (before_gw, before_direct) = (gateway_cx(), direct());
    for _ in 0..10 {
        assert_eq!(
            https(),
            Ok((200, "sni=edition.cnn.com client=none".to_string())),
            "the same answer through the gateway, TLS untouched"
        );
    }
    assert_eq!(
        gateway_cx() - before_gw,
        10,
        "each of the 10 TLS connections passed through the egress gateway"
    );
    assert_eq!(direct(), before_direct, "none went straight out any more");
    assert_envoy_accepted(&w.sleep);
    assert_envoy_accepted(&gateway);
}
