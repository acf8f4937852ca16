//! `meshd explain` does not drift from Envoy: istiod's own simulation cases
//! (tests/simulation) are loaded into meshd and served to a real Envoy run as the case's
//! proxy (its certificate from meshd's CA, interception as istio-iptables sets it up), and
//! each call is made for real — plaintext, TLS or mTLS with the call's SNI and ALPN. Which
//! cluster Envoy picked is read from its per-cluster connection counters (every cluster
//! counts a connection it opens, or one it has no host for: BlackHoleCluster included), so
//! no backend can answer for the wrong cluster. It must be the cluster `/debug/explain`
//! predicts for the connected proxy, and the one istiod's case expects; a call explain
//! says matches nothing must leave every cluster untouched.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

fn case(file: &str) -> Value {
    let path = repo().join("tests/simulation").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut docs = meshd::sources::yaml::parse_documents(&text);
    docs.remove(0).expect("case YAML").value
}

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str).filter(|x| !x.is_empty())
}

/// Per cluster: connections opened plus connections wanted with no host to take them.
fn cluster_counters(envoy: &Envoy) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in envoy.stats("upstream_cx_") {
        let Some(rest) = k.strip_prefix("cluster.") else {
            continue;
        };
        // The bootstrap's cluster to meshd (xDS, and the access logs behind the mesh's
        // metrics, whose stream a call may open) is not where calls go.
        if rest.starts_with("xds-grpc.") {
            continue;
        }
        for metric in [".upstream_cx_total", ".upstream_cx_none_healthy"] {
            if let Some(name) = rest.strip_suffix(metric) {
                *out.entry(name.to_string()).or_default() += v;
            }
        }
    }
    out
}

/// Requests whose route named a cluster Envoy does not have.
fn no_cluster(envoy: &Envoy) -> u64 {
    envoy
        .stats("no_cluster")
        .into_iter()
        .filter(|(k, _)| k.ends_with(".no_cluster"))
        .map(|(_, v)| v)
        .sum()
}

fn changed(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<String> {
    after
        .iter()
        .filter(|(k, v)| before.get(*k).copied().unwrap_or(0) < **v)
        .map(|(k, _)| k.clone())
        .collect()
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The HTTP request or TCP payload of a call.
fn payload(call: &Value) -> Vec<u8> {
    if s(call, "protocol") == Some("tcp") {
        return b"ping\n".to_vec();
    }
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        s(call, "path").unwrap_or("/"),
        s(call, "host").unwrap_or("unknown")
    );
    for (k, v) in call["headers"].as_object().into_iter().flatten() {
        req.push_str(&format!("{k}: {}\r\n", v.as_str().unwrap_or("")));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Makes the call as a client would and waits until the connection ends (or 3 s).
fn make_call(call: &Value, defaults: &Value, client: &(PathBuf, PathBuf)) {
    let address = s(call, "address").unwrap_or("1.3.3.7");
    let addr = format!("{address}:{}", call["port"]);
    match s(call, "tls").unwrap_or("plaintext") {
        "plaintext" => {
            let Ok(mut c) = TcpStream::connect_timeout(
                &addr.parse().expect("socket address"),
                Duration::from_secs(3),
            ) else {
                return;
            };
            let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
            let _ = c.write_all(&payload(call));
            let mut buf = [0u8; 4096];
            while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        }
        tls => {
            // openssl speaks exactly the TLS the case describes: its SNI, its ALPN, and
            // for mTLS a workload certificate of the mesh.
            let mut cmd = Command::new("openssl");
            cmd.args(["s_client", "-connect", &addr, "-quiet"]);
            match s(defaults, "sni") {
                Some(sni) => cmd.args(["-servername", sni]),
                None => cmd.arg("-noservername"),
            };
            if let Some(alpn) = s(defaults, "alpn") {
                cmd.args(["-alpn", alpn]);
            }
            if tls == "mtls" {
                cmd.arg("-cert").arg(&client.0).arg("-key").arg(&client.1);
            }
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl s_client");
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(&payload(call));
                // Kept open: s_client would otherwise close before the answer.
                std::mem::forget(stdin);
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What explain says about `call` for the connected proxy.
fn predict(meshd: &Meshd, proxy: &str, call: &Value) -> Value {
    let mut q = format!("/debug/explain?proxyID={}", encode(proxy));
    for k in [
        "mode", "address", "port", "protocol", "tls", "alpn", "sni", "host", "path",
    ] {
        match &call[k] {
            Value::String(v) => q.push_str(&format!("&{k}={}", encode(v))),
            Value::Number(n) => q.push_str(&format!("&{k}={n}")),
            _ => {}
        }
    }
    for (k, v) in call["headers"].as_object().into_iter().flatten() {
        q.push_str(&format!(
            "&header={}",
            encode(&format!("{k}: {}", v.as_str().unwrap_or("")))
        ));
    }
    meshd.get_json(&q)
}

/// Runs calls `picks` (indices) of case `file` through meshd and a real Envoy.
fn agree(tag: &str, file: &str, picks: &[usize]) -> usize {
    let Some((dir, config)) = intercepting_test(tag) else {
        return 0;
    };
    let case = case(file);
    config.write("case.yaml", s(&case, "config").unwrap_or(""));
    if let Some(mesh) = s(&case, "mesh") {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"}, "data": {"mesh": mesh}});
        config.write("mesh.yaml", &cm.to_string());
    }
    // meshd signs with a CA the test holds, so the test can be a mesh client itself.
    let ca = TestCa::new("agreement root");
    let cacerts = dir.path().join("cacerts");
    ca.write_cacerts(&cacerts);
    let (cert, key) = ca.workload("spiffe://cluster.local/ns/default/sa/client");
    let client = (
        dir.write("client.pem", &cert),
        dir.write("client-key.pem", &key),
    );
    let issuer = crate::tokens::TokenIssuer::new("k1");
    let jwks = dir.write("jwks.json", &issuer.jwks);
    let meshd = Meshd::start(
        config.path(),
        dir.path(),
        &[
            "--ca-jwks",
            jwks.to_str().expect("utf8"),
            "--cacerts",
            cacerts.to_str().expect("utf8"),
        ],
    );

    let p = &case["proxy"];
    let kind = s(p, "type").unwrap_or("sidecar");
    let ip = s(p, "ip").unwrap_or("1.1.1.1");
    let ns = s(p, "namespace").unwrap_or("default");
    let pod = s(p, "name").unwrap_or("app");
    let labels: Vec<(String, String)> = p["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect();
    let label_refs: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let calls: Vec<&Value> = picks.iter().map(|i| &case["calls"][*i]).collect();
    // Every address the calls go to lives on this namespace's loopback; outbound calls
    // are captured to 15001, inbound ones to 15006 (gateways listen for real).
    let mut seen = std::collections::BTreeSet::new();
    for c in &calls {
        let call = &c["call"];
        let address = s(call, "address").unwrap_or("1.3.3.7").to_string();
        let mode = s(call, "mode").unwrap_or(if kind == "router" {
            "gateway"
        } else {
            "outbound"
        });
        if !seen.insert((address.clone(), mode.to_string())) {
            continue;
        }
        let _ = Command::new("ip")
            .args(["addr", "add", &format!("{address}/32"), "dev", "lo"])
            .output();
        match mode {
            "outbound" => intercept_outbound(&format!("{address}/32")),
            "inbound" => intercept_inbound(&address),
            _ => {}
        }
    }
    let envoy = Envoy::start_with(
        &NodeSpec {
            kind,
            ip,
            pod,
            namespace: ns,
            labels: &label_refs,
            service_account: pod,
        },
        &EnvoyOpts {
            xds: Xds::Tls {
                root: cacerts.join("root-cert.pem"),
                token: issuer.token(ns, pod, "istio-ca", 3600, "k1"),
            },
            gid: Some(PROXY_GID),
            interception: if kind == "router" { "NONE" } else { "REDIRECT" },
            ..Default::default()
        },
        dir.path(),
    );
    let proxy = format!("{pod}.{ns}");
    wait_for(
        "Envoy has its listeners and certificate",
        Duration::from_secs(20),
        || {
            let st: BTreeMap<String, u64> = envoy.stats("listener_manager").into_iter().collect();
            (st.get("listener_manager.total_listeners_active")
                .copied()
                .unwrap_or(0)
                > 0
                && st.get("listener_manager.total_listeners_warming").copied() == Some(0))
            .then_some(())
        },
    );
    assert_envoy_accepted(&envoy);

    for (i, c) in picks.iter().zip(&calls) {
        let name = format!("{file} #{i} {}", s(c, "name").unwrap_or(""));
        let call = &c["call"];
        let prediction = predict(&meshd, &proxy, call);
        let predicted = s(&prediction, "cluster").map(str::to_string);
        // The prediction is istiod's answer too, where the case names a cluster.
        if let Some(want) = s(&c["expect"], "cluster") {
            assert_eq!(
                predicted.as_deref(),
                Some(want),
                "{name}: explain differs from istiod's case: {prediction}"
            );
        }
        // The resolved call (SNI and ALPN defaults) comes back from explain's engine.
        let defaults = resolved(call);
        let before = cluster_counters(&envoy);
        let no_cluster_before = no_cluster(&envoy);
        make_call(call, &defaults, &client);
        match &predicted {
            Some(cluster) if !before.contains_key(cluster) => {
                // The route names a cluster the case never defines (no such service):
                // Envoy finds the route and answers that the cluster does not exist.
                wait_for(
                    &format!("{name}: Envoy's route names the missing {cluster}"),
                    Duration::from_secs(5),
                    || (no_cluster(&envoy) > no_cluster_before).then_some(()),
                );
                let used = changed(&before, &cluster_counters(&envoy));
                assert!(used.is_empty(), "{name}: Envoy used {used:?}");
            }
            Some(cluster) => {
                wait_for(
                    &format!("{name}: Envoy uses {cluster}"),
                    Duration::from_secs(5),
                    || {
                        changed(&before, &cluster_counters(&envoy))
                            .contains(cluster)
                            .then_some(())
                    },
                );
                let used = changed(&before, &cluster_counters(&envoy));
                assert_eq!(
                    used,
                    vec![cluster.clone()],
                    "{name}: Envoy used other clusters than explain predicted"
                );
            }
            None => {
                let used = changed(&before, &cluster_counters(&envoy));
                assert!(
                    used.is_empty(),
                    "{name}: explain predicted no cluster ({}), Envoy used {used:?}",
                    prediction["error"]
                );
            }
        }
        println!(
            "agreement: {name}: {}",
            predicted.as_deref().unwrap_or("no cluster")
        );
    }
    drop(envoy);
    drop(meshd);
    picks.len()
}

/// SNI and ALPN as istiod's simulator fills them (explain's call defaults).
fn resolved(call: &Value) -> Value {
    let spec: meshd::explain::CallSpec =
        serde_json::from_value(call.clone()).expect("call as explain reads it");
    let c = spec.resolve(false).expect("valid call");
    json!({"sni": c.sni, "alpn": c.alpn})
}

#[test]
fn outbound_http_and_tcp_to_a_headless_service() {
    // HTTP, sniffed HTTP, TCP, and TLS over TCP ports to a pod of a headless service.
    agree(
        "agree-headless",
        "sidecar/headless-services.yaml",
        &[0, 1, 3, 4, 5, 6],
    );
}

#[test]
fn outbound_http_routes_of_an_external_name_alias() {
    agree(
        "agree-alias",
        "sidecar/externalname-services-http-routes.yaml",
        &[0, 1, 2],
    );
}

#[test]
fn outbound_passthrough_and_tls_passthrough() {
    // ALLOW_ANY: plaintext HTTP, raw TCP and TLS to an unknown address leave as they came.
    let case = case("sidecar/passthrough-traffic-allow-any-with-vip.yaml");
    let picks = indices(
        &case,
        &["http-plaintext-80", "tcp-plaintext-82", "http-tls-83"],
    );
    agree(
        "agree-allow-any",
        "sidecar/passthrough-traffic-allow-any-with-vip.yaml",
        &picks,
    );
}

#[test]
fn registry_only_blocks_unknown_destinations() {
    let case = case("sidecar/passthrough-traffic-registry-only-with-vip.yaml");
    let picks = indices(
        &case,
        &["http-plaintext-80", "tcp-plaintext-82", "http-tls-84"],
    );
    agree(
        "agree-registry-only",
        "sidecar/passthrough-traffic-registry-only-with-vip.yaml",
        &picks,
    );
}

#[test]
fn inbound_strict_mtls() {
    let case = case("sidecar/inbound-strict.yaml");
    let picks = indices(&case, &["tcp", "mtls tcp to tcp", "http", "mtls to http"]);
    agree("agree-strict", "sidecar/inbound-strict.yaml", &picks);
}

#[test]
fn inbound_permissive_mtls() {
    let case = case("sidecar/inbound-permissive.yaml");
    let picks = indices(
        &case,
        &[
            "tcp",
            "tls to tcp",
            "mtls tcp to tcp",
            "http",
            "mtls to http",
            "tls to http",
        ],
    );
    agree(
        "agree-permissive",
        "sidecar/inbound-permissive.yaml",
        &picks,
    );
}

/// The positions of the named calls (the first of each name).
fn indices(case: &Value, names: &[&str]) -> Vec<usize> {
    let calls = case["calls"].as_array().expect("calls");
    names
        .iter()
        .map(|n| {
            calls
                .iter()
                .position(|c| s(c, "name") == Some(n))
                .unwrap_or_else(|| panic!("no call {n}"))
        })
        .collect()
}

#[test]
fn gateway_servers_and_virtual_services() {
    // An HTTP server for foo.bar with a `*` VirtualService: foo.bar only, by path.
    let file = "gateway/simple-http-and-virtual-service.yaml";
    let n = case(file)["calls"].as_array().map_or(0, Vec::len);
    agree("agree-gateway", file, &(0..n).collect::<Vec<_>>());
}

#[test]
fn gateway_merges_virtual_services() {
    let file = "gateway/virtual-service-merging.yaml";
    let n = case(file)["calls"].as_array().map_or(0, Vec::len);
    agree("agree-gateway-merge", file, &(0..n).collect::<Vec<_>>());
}
