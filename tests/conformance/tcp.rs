//! Istio's "TCP traffic shifting" task through a real sidecar: a VirtualService `tcp`
//! route sends every connection to v1, then 80/20 between v1 and v2, edited live.

use std::time::Duration;

use crate::harness::*;

use crate::scripted::{sleep, start_sleep};

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: tcp-echo, namespace: default}
spec:
  selector: {app: tcp-echo}
  ports: [{name: tcp, port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: tcp-echo-v1, namespace: default, labels: {app: tcp-echo, version: v1}}
spec: {containers: [{name: tcp-echo, image: tcp-echo}]}
status: {phase: Running, podIP: 127.0.0.30}
---
apiVersion: v1
kind: Pod
metadata: {name: tcp-echo-v2, namespace: default, labels: {app: tcp-echo, version: v2}}
spec: {containers: [{name: tcp-echo, image: tcp-echo}]}
status: {phase: Running, podIP: 127.0.0.31}
"#;

/// tcp-echo's subsets, and a connection idle timeout when given.
fn tcp_echo_rule(idle: &str) -> String {
    let policy = if idle.is_empty() {
        String::new()
    } else {
        format!("  trafficPolicy:\n    connectionPool:\n      tcp: {{idleTimeout: {idle}}}\n")
    };
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: tcp-echo, namespace: default}}\nspec:\n  host: tcp-echo\n{policy}  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n"
    )
}

fn virtual_service(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: tcp-echo, namespace: default}}\nspec:\n  hosts: [tcp-echo]\n  tcp:\n  - match: [{{port: 9000}}]\n    route:\n    - destination: {{host: tcp-echo, subset: v1, port: {{number: 9000}}}}\n      weight: {v1}\n    - destination: {{host: tcp-echo, subset: v2, port: {{number: 9000}}}}\n      weight: {v2}\n"
    )
}

#[test]
fn tcp_traffic_shifting() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("tcp");
    let config = TempDir::new("tcp-config");
    config.write("workloads.yaml", WORKLOADS);
    config.write("dr.yaml", &tcp_echo_rule(""));
    config.write(
        "sleep.yaml",
        &sleep(
            "",
            9000,
            "TCP",
            "127.0.0.1",
            "./tcp-echo.default.svc.cluster.local",
            "",
        ),
    );
    config.write("vs.yaml", &virtual_service(100, 0));
    let _backends = Backends::start(
        &[("tcp-echo-v1", "127.0.0.30"), ("tcp-echo-v2", "127.0.0.31")],
        9000,
    );
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    let envoy = start_sleep(&dir, &[("app", "sleep")]);
    wait_for("TCP through the sidecar", Duration::from_secs(20), || {
        http_get("127.0.0.1:9000", "/", &[])
            .ok()
            .filter(|r| r.status == 200)
    });
    let d = tcp_distribution("127.0.0.1:9000", 100);
    assert_eq!(d.get("tcp-echo-v1"), Some(&100), "all to v1: {d:?}");
    // The mesh's TCP series (meshd, from the sidecar's connection records): every
    // connection to v1 opened and closed, with the bytes both ways; none to v2 yet.
    let v1 = [
        ("reporter", "source"),
        ("source_app", "sleep"),
        ("destination_workload", "tcp-echo-v1"),
        ("destination_service", "tcp-echo.default.svc.cluster.local"),
        ("request_protocol", "tcp"),
    ];
    let text = wait_for(
        "100 closed connections at meshd",
        Duration::from_secs(20),
        || {
            let text = http_get("127.0.0.1:15014", "/metrics", &[]).ok()?.body;
            (metric_value(&text, "istio_tcp_connections_closed_total", &v1)? >= 100.0)
                .then_some(text)
        },
    );
    let closed = metric_value(&text, "istio_tcp_connections_closed_total", &v1);
    assert_eq!(
        metric_value(&text, "istio_tcp_connections_opened_total", &v1),
        closed
    );
    let closed = closed.unwrap_or(0.0);
    // Each connection sent a request line and read the echo's answer.
    for name in [
        "istio_tcp_received_bytes_total",
        "istio_tcp_sent_bytes_total",
    ] {
        let bytes = metric_value(&text, name, &v1).unwrap_or(0.0);
        assert!(
            bytes >= 10.0 * closed,
            "{name} {bytes} for {closed} connections"
        );
    }
    assert_eq!(
        metric_value(
            &text,
            "istio_tcp_connections_closed_total",
            &[("destination_workload", "tcp-echo-v2")]
        ),
        None,
        "no connection to v2 yet"
    );

    config.write("vs.yaml", &virtual_service(80, 20));
    wait_for("v2 gets connections", Duration::from_secs(20), || {
        tcp_distribution("127.0.0.1:9000", 20)
            .contains_key("tcp-echo-v2")
            .then_some(())
    });
    let d = tcp_distribution("127.0.0.1:9000", 400);
    let v1 = d.get("tcp-echo-v1").copied().unwrap_or(0);
    let v2 = d.get("tcp-echo-v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 400, "every connection answered: {d:?}");
    assert!((320 - 40..=320 + 40).contains(&v1), "80% ±10 to v1: {d:?}");

    // connectionPool.tcp.idleTimeout: an idle connection is closed by the sidecar.
    let idle_closed = || {
        use std::io::Read;
        let mut c = std::net::TcpStream::connect("127.0.0.1:9000").ok()?;
        c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        // EOF (0 bytes) means Envoy closed it; a timeout means it stayed open.
        matches!(c.read(&mut buf), Ok(0)).then(|| started.elapsed())
    };
    assert!(
        idle_closed().is_none(),
        "no idle timeout yet: the connection stays open"
    );
    config.write("dr.yaml", &tcp_echo_rule("1s"));
    let after = wait_for("the idle timeout", Duration::from_secs(30), idle_closed);
    assert!(
        after >= Duration::from_millis(900),
        "closed after about 1s idle: {after:?}"
    );
    assert!(
        envoy.stats("update_rejected").iter().all(|(_, v)| *v == 0),
        "{}",
        envoy.proc.log_text()
    );
    drop(meshd);
}

const TLS_EGRESS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: default}
spec:
  hosts: [a.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 8443, name: tls, protocol: TLS}]
  endpoints: [{address: 127.0.1.60}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: default}
spec:
  hosts: [b.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 8443, name: tls, protocol: TLS}]
  endpoints: [{address: 127.0.1.61}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy.example.com]
  tls:
  - match: [{sniHosts: [legacy.example.com], port: 8443}]
    route:
    - destination: {host: b.example.com, port: {number: 8443}}
"#;

/// Egress TLS chosen by SNI on one port: each ServiceEntry host reaches its own server
/// with the TLS session untouched, a `tls` route sends another name elsewhere, and an
/// unknown name goes nowhere under REGISTRY_ONLY.
#[test]
fn tls_routes_by_sni_through_a_sidecar() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("sni");
    let config = TempDir::new("sni-config");
    config.write("egress.yaml", TLS_EGRESS);
    config.write(
        "sleep.yaml",
        &sleep(
            "",
            8443,
            "TLS",
            "127.0.0.1",
            "./*",
            "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
        ),
    );
    let ca = TestCa::new("outside-ca");
    let (a_cert, a_key) = ca.leaf("server-a", &["a.example.com", "unknown.example.com"]);
    let (b_cert, b_key) = ca.leaf("server-b", &["b.example.com", "legacy.example.com"]);
    let _servers = [
        TlsBackend::start("127.0.1.60:8443", &a_cert, &a_key, &ca.pem, false),
        TlsBackend::start("127.0.1.61:8443", &b_cert, &b_key, &ca.pem, false),
    ];
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    let envoy = start_sleep(&dir, &[("app", "sleep")]);
    let get = |sni: &str| https_get("127.0.0.1:8443", sni, "/", &ca.pem, None);
    let r = wait_for("TLS through the sidecar", Duration::from_secs(20), || {
        get("a.example.com").ok()
    });
    assert_eq!(
        (r.server_cn.as_str(), r.body.as_str()),
        ("server-a", "sni=a.example.com client=none")
    );
    let r = get("b.example.com").expect("b");
    assert_eq!(
        (r.server_cn.as_str(), r.body.as_str()),
        ("server-b", "sni=b.example.com client=none")
    );
    let r = get("legacy.example.com").expect("legacy");
    assert_eq!(
        (r.server_cn.as_str(), r.body.as_str()),
        ("server-b", "sni=legacy.example.com client=none"),
        "the tls route sends legacy.example.com to b"
    );
    assert!(
        get("unknown.example.com").is_err(),
        "REGISTRY_ONLY: no way out for an unknown name"
    );
    assert!(
        envoy.stats("update_rejected").iter().all(|(_, v)| *v == 0),
        "{}",
        envoy.proc.log_text()
    );
    drop(meshd);
}

const EXTERNAL_NAME: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  type: ExternalName
  externalName: localhost
  ports: [{name: http, port: 9500}]
"#;

/// A Kubernetes ExternalName Service: the sidecar resolves the external name itself
/// (STRICT_DNS) and routes `ext` there.
#[test]
fn external_name_service_is_resolved_by_the_proxy() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("extname");
    let config = TempDir::new("extname-config");
    config.write("ext.yaml", EXTERNAL_NAME);
    config.write(
        "sleep.yaml",
        &sleep("", 9500, "HTTP", "127.0.0.2", "./*", ""),
    );
    let _backend = Backends::start(&[("external-backend", "127.0.0.1")], 9500);
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    let envoy = start_sleep(&dir, &[("app", "sleep")]);
    let r = wait_for("the external name", Duration::from_secs(20), || {
        http_get("127.0.0.2:9500", "/", &[("Host", "ext")])
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(r.body, "external-backend");
    let r = http_get(
        "127.0.0.2:9500",
        "/",
        &[("Host", "ext.default.svc.cluster.local:9500")],
    )
    .expect("answer");
    assert_eq!((r.status, r.body.as_str()), (200, "external-backend"));
    assert!(
        envoy.stats("update_rejected").iter().all(|(_, v)| *v == 0),
        "{}",
        envoy.proc.log_text()
    );
    drop(meshd);
}

const ZONES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo-z1, namespace: default, labels: {app: echo, istio-locality: region1.zone1}}
spec: {containers: [{name: echo, image: echo}]}
status: {phase: Running, podIP: 127.0.0.50}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-z2, namespace: default, labels: {app: echo, istio-locality: region1.zone2}}
spec: {containers: [{name: echo, image: echo}]}
status: {phase: Running, podIP: 127.0.0.51}
"#;

const DISTRIBUTE: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        distribute:
        - from: region1/zone1/*
          to: {"region1/zone1/*": 25, "region1/zone2/*": 75}
"#;

const FAILOVER: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}
"#;

/// Locality load balancing through a real sidecar in zone1: `distribute` weights, then
/// (with outlier detection) everything local, and failover to zone2 when zone1 dies.
#[test]
fn locality_distribute_and_failover() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("locality");
    let config = TempDir::new("locality-config");
    config.write("zones.yaml", ZONES);
    config.write(
        "sleep.yaml",
        &sleep(
            ", istio-locality: region1.zone1",
            9000,
            "HTTP",
            "127.0.0.2",
            "./*",
            "",
        ),
    );
    config.write("dr.yaml", DISTRIBUTE);
    let z1 = Backends::start(&[("echo-z1", "127.0.0.50")], 9000);
    let _z2 = Backends::start(&[("echo-z2", "127.0.0.51")], 9000);
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    let envoy = start_sleep(
        &dir,
        &[("app", "sleep"), ("istio-locality", "region1.zone1")],
    );
    let get = || {
        http_get("127.0.0.2:9000", "/", &[("Host", "echo")])
            .map(|r| {
                if r.status == 200 {
                    r.body
                } else {
                    format!("status {}", r.status)
                }
            })
            .unwrap_or_else(|e| format!("error {e}"))
    };
    let count = |n: usize| {
        let mut m = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..n {
            *m.entry(get()).or_insert(0) += 1;
        }
        m
    };
    wait_for("the echo route", Duration::from_secs(20), || {
        get().starts_with("echo-").then_some(())
    });
    let d = count(400);
    let local = d.get("echo-z1").copied().unwrap_or(0);
    assert_eq!(local + d.get("echo-z2").copied().unwrap_or(0), 400, "{d:?}");
    assert!(
        (100 - 40..=100 + 40).contains(&local),
        "25% ±10 stays in zone1: {d:?}"
    );

    config.write("dr.yaml", FAILOVER);
    wait_for("priorities by locality", Duration::from_secs(20), || {
        (count(20).get("echo-z1") == Some(&20)).then_some(())
    });
    let d = count(40);
    assert_eq!(
        d.get("echo-z1"),
        Some(&40),
        "all local while zone1 is healthy: {d:?}"
    );

    drop(z1);
    wait_for("failover to zone2", Duration::from_secs(20), || {
        (get() == "echo-z2").then_some(())
    });
    let d = count(40);
    assert_eq!(
        d.get("echo-z2"),
        Some(&40),
        "zone1 ejected, zone2 serves: {d:?}"
    );
    assert!(
        envoy.stats("update_rejected").iter().all(|(_, v)| *v == 0),
        "{}",
        envoy.proc.log_text()
    );
    drop(meshd);
}

const PROXY_PROTOCOL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: pp, namespace: default}
spec:
  selector: {app: pp}
  ports: [{name: http, port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: pp-1, namespace: default, labels: {app: pp}}
spec: {containers: [{name: pp, image: pp}]}
status: {phase: Running, podIP: 127.0.0.52}
"#;

/// A server that answers each connection with its first line: the PROXY protocol header
/// when the sidecar sends one, else the HTTP request line.
fn first_line_server(addr: &str) -> std::thread::JoinHandle<()> {
    use std::io::{BufRead, Write};
    let l = std::net::TcpListener::bind(addr).expect("bind");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = std::io::BufReader::new(s);
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                continue;
            }
            // Read the rest of the request head.
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body = first.trim_end().to_string();
            let mut s = r.into_inner();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })
}

/// DestinationRule `proxyProtocol`: the sidecar opens upstream connections with a PROXY
/// protocol v1 header, seen by the server.
#[test]
fn proxy_protocol_to_the_upstream() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("proxyproto");
    let config = TempDir::new("proxyproto-config");
    config.write("pp.yaml", PROXY_PROTOCOL);
    config.write(
        "sleep.yaml",
        &sleep("", 9000, "HTTP", "127.0.0.2", "./*", ""),
    );
    let _server = first_line_server("127.0.0.52:9000");
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    let _envoy = start_sleep(&dir, &[("app", "sleep")]);
    let get = || {
        http_get("127.0.0.2:9000", "/x", &[("Host", "pp")])
            .map(|r| r.body)
            .unwrap_or_default()
    };
    let plain = wait_for("plain HTTP to pp", Duration::from_secs(20), || {
        Some(get()).filter(|b| b.starts_with("GET "))
    });
    assert_eq!(plain, "GET /x HTTP/1.1");
    config.write(
        "dr.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: pp, namespace: default}\nspec:\n  host: pp\n  trafficPolicy:\n    proxyProtocol: {version: V1}\n",
    );
    let header = wait_for("the PROXY header", Duration::from_secs(20), || {
        Some(get()).filter(|b| b.starts_with("PROXY "))
    });
    assert!(
        header.starts_with("PROXY TCP4 127.0.0.1 127.0.0.2 "),
        "{header}"
    );
    assert!(
        header.ends_with(" 9000"),
        "the downstream destination port: {header}"
    );
    drop(meshd);
}

/// Sidecar `outboundTrafficPolicy.egressProxy`: requests for hosts outside the registry go
/// to the egress proxy service instead of straight out.
#[test]
fn unknown_hosts_go_to_the_egress_proxy() {
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("egressproxy");
    let config = TempDir::new("egressproxy-config");
    config.write(
        "egress.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: egress, namespace: default}\nspec:\n  selector: {app: egress}\n  ports: [{name: http, port: 9500}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: egress-1, namespace: default, labels: {app: egress}}\nspec: {containers: [{name: egress, image: egress}]}\nstatus: {phase: Running, podIP: 127.0.0.53}\n",
    );
    config.write(
        "sleep.yaml",
        &sleep(
            "",
            9500,
            "HTTP",
            "127.0.0.2",
            "./*",
            "  outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: egress, port: {number: 9500}}}\n",
        ),
    );
    let _egress = Backends::start(&[("egress-proxy", "127.0.0.53")], 9500);
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    let _envoy = start_sleep(&dir, &[("app", "sleep")]);
    let r = wait_for("the egress proxy", Duration::from_secs(20), || {
        http_get("127.0.0.2:9500", "/", &[("Host", "unknown.example.com")])
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(r.body, "egress-proxy");
    let seen = r
        .headers
        .iter()
        .find(|(k, _)| k == "x-seen-host")
        .map(|(_, v)| v.as_str());
    assert_eq!(
        seen,
        Some("unknown.example.com"),
        "the original host travels along"
    );
    drop(meshd);
}
