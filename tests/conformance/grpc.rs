//! Proxyless gRPC: a Python grpcio client (gRPC C-core's xDS client) and a Node
//! @grpc/grpc-js-xds client, no Envoy, resolve `xds:///echo.default.svc.cluster.local:7070`
//! through meshd and follow the VirtualService: weighted subsets, then a header match,
//! edited live.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports: [{name: grpc, port: 7070}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo-v1, namespace: default, labels: {app: echo, version: v1}}
spec: {containers: [{name: echo, image: echo}]}
status: {phase: Running, podIP: 127.0.0.50}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-v2, namespace: default, labels: {app: echo, version: v2}}
spec: {containers: [{name: echo, image: echo}]}
status: {phase: Running, podIP: 127.0.0.51}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

const WEIGHTED: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - route:
    - destination: {host: echo, subset: v1}
      weight: 80
    - destination: {host: echo, subset: v2}
      weight: 20
"#;

const BY_HEADER: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route:
    - destination: {host: echo, subset: v2}
  - route:
    - destination: {host: echo, subset: v1}
"#;

/// Python with grpcio (scripts/test installs it into .venv-tools), or None.
pub fn python() -> Option<PathBuf> {
    let p = std::env::var_os("MESHD_GRPC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-tools/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(p)
}

/// The gRPC echo server and client of the tests (Python, grpcio).
pub fn script() -> PathBuf {
    repo().join("tests/support/grpc_echo.py")
}

/// The node_modules holding @grpc/grpc-js-xds (installed by scripts/test).
fn node_modules() -> Option<PathBuf> {
    let p = std::env::var_os("MESHD_GRPC_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".node-grpc/node_modules"));
    p.join("@grpc/grpc-js-xds").exists().then_some(p)
}

/// The same as [`calls`], with the Node client.
fn node_calls(
    modules: &std::path::Path,
    bootstrap: &std::path::Path,
    n: usize,
    metadata: &[&str],
) -> serde_json::Value {
    run_client(
        Command::new("node")
            .arg(repo().join("tests/support/grpc_xds_client.js"))
            .args([TARGET, &n.to_string()])
            .args(metadata)
            .env("NODE_PATH", modules),
        bootstrap,
    )
}

/// Runs a gRPC client command and reads the answers it counted (by server name, errors
/// by code).
fn run_client(cmd: &mut Command, bootstrap: &std::path::Path) -> serde_json::Value {
    let out = cmd
        .env("GRPC_XDS_BOOTSTRAP", bootstrap)
        .output()
        .expect("run the gRPC client");
    assert!(
        out.status.success(),
        "gRPC client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client output {e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

const TARGET: &str = "xds:///echo.default.svc.cluster.local:7070";

/// Calls the target `n` times with the Python client.
fn calls(
    py: &PathBuf,
    bootstrap: &std::path::Path,
    n: usize,
    metadata: &[&str],
) -> serde_json::Value {
    run_client(
        Command::new(py)
            .arg(script())
            .args(["call", TARGET, &n.to_string()])
            .args(metadata),
        bootstrap,
    )
}

fn count(v: &serde_json::Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or(0)
}

#[test]
fn proxyless_grpc_client_follows_virtual_services() {
    let Some(py) = python() else {
        skip_or_fail("python with grpcio is not installed (.venv-tools)");
        return;
    };
    let Some(modules) = node_modules() else {
        skip_or_fail("@grpc/grpc-js-xds is not installed (.node-grpc)");
        return;
    };
    if !isolate() {
        return;
    }
    let dir = TempDir::new("grpc");
    let config = TempDir::new("grpc-config");
    config.write("workloads.yaml", WORKLOADS);
    config.write("vs.yaml", WEIGHTED);
    let meshd = Meshd::start(config.path(), dir.path(), &[]);
    let servers: Vec<Proc> = [("echo-v1", "127.0.0.50"), ("echo-v2", "127.0.0.51")]
        .iter()
        .map(|(name, ip)| {
            Proc::spawn(
                name,
                Command::new(&py)
                    .arg(script())
                    .args(["serve", &format!("{ip}:7070"), name]),
                dir.path(),
            )
        })
        .collect();
    for s in &servers {
        wait_for("the gRPC server", Duration::from_secs(20), || {
            s.log_text().contains("ready").then_some(())
        });
    }
    // What istio-agent writes for a proxyless client, pointing at meshd's plaintext port.
    let bootstrap = dir.write(
        "grpc-bootstrap.json",
        &serde_json::json!({
            "xds_servers": [{
                "server_uri": "127.0.0.1:15010",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {
                "id": "sidecar~127.0.0.60~client.default~default.svc.cluster.local",
                "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"},
                "locality": {},
            },
        })
        .to_string(),
    );

    let d = calls(&py, &bootstrap, 400, &[]);
    let (v1, v2) = (count(&d, "echo-v1"), count(&d, "echo-v2"));
    assert_eq!(
        v1 + v2,
        400,
        "every call answered: {d}\n{}",
        meshd.proc.log_text()
    );
    assert!((320 - 40..=320 + 40).contains(&v1), "80% ±10 to v1: {d}");
    let d = node_calls(&modules, &bootstrap, 200, &[]);
    let (v1, v2) = (count(&d, "echo-v1"), count(&d, "echo-v2"));
    assert_eq!(v1 + v2, 200, "every Node call answered: {d}");
    assert!(
        (160 - 30..=160 + 30).contains(&v1),
        "Node: 80% ±15 to v1: {d}"
    );

    // A header rule: jason goes to v2, everyone else to v1.
    config.write("vs.yaml", BY_HEADER);
    wait_for("the header rule", Duration::from_secs(20), || {
        let d = calls(&py, &bootstrap, 10, &["end-user=jason"]);
        (count(&d, "echo-v2") == 10).then_some(())
    });
    let d = calls(&py, &bootstrap, 50, &["end-user=jason"]);
    assert_eq!(count(&d, "echo-v2"), 50, "{d}");
    let d = calls(&py, &bootstrap, 50, &[]);
    assert_eq!(count(&d, "echo-v1"), 50, "{d}");
    let d = node_calls(&modules, &bootstrap, 50, &["end-user=jason"]);
    assert_eq!(count(&d, "echo-v2"), 50, "Node: {d}");
    let d = node_calls(&modules, &bootstrap, 50, &[]);
    assert_eq!(count(&d, "echo-v1"), 50, "Node: {d}");

    // meshd saw a proxyless client and no NACK from it.
    let sync = meshd.get_json("/debug/syncz");
    let nacks: u64 = sync
        .as_array()
        .expect("list")
        .iter()
        .flat_map(|c| c["types"].as_object().into_iter().flatten())
        .map(|(_, st)| st["nacks"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(nacks, 0, "{sync}");
}

const STRICT_ECHO: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports: [{name: grpc, port: 7070}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo-v1, namespace: default, labels: {app: echo, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: echo, containers: [{name: echo, image: echo}]}
status: {phase: Running, podIP: 127.0.0.50}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: echo, namespace: default}
spec:
  workloadSelector: {labels: {app: echo}}
  ingress:
  - port: {number: 7070, protocol: GRPC, name: grpc}
    captureMode: NONE
    defaultEndpoint: 127.0.1.50:7070
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: echo, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  mtls: {mode: STRICT}
"#;

/// A proxyless client with certificates (what istio-agent gives it: files named as
/// certificate provider `default` in the gRPC bootstrap) talks mTLS, by auto mTLS, to a
/// STRICT server sidecar; one without certificates is given plaintext and refused.
#[test]
fn proxyless_grpc_client_speaks_mtls_to_a_strict_sidecar() {
    let Some(py) = python() else {
        skip_or_fail("python with grpcio is not installed (.venv-tools)");
        return;
    };
    if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
        return;
    }
    if !isolate() {
        return;
    }
    let dir = TempDir::new("grpc-mtls");
    let config = TempDir::new("grpc-mtls-config");
    config.write("echo.yaml", STRICT_ECHO);
    let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 8080);
    let _server = Proc::spawn(
        "echo-v1",
        Command::new(&py)
            .arg(script())
            .args(["serve", "127.0.1.50:7070", "echo-v1"]),
        dir.path(),
    );
    let sidecar = Envoy::start_with(
        &NodeSpec {
            kind: "sidecar",
            ip: "127.0.0.50",
            pod: "echo-v1",
            namespace: "default",
            labels: &[("app", "echo")],
            service_account: "echo",
        },
        &EnvoyOpts {
            interception: "NONE",
            xds: Xds::Tls {
                root: dir.path().join("ca/root-cert.pem"),
                token: issuer.token("default", "echo", "istio-ca", 3600, "k1"),
            },
            ..Default::default()
        },
        dir.path(),
    );
    // The client's certificate from the mesh CA, as istio-agent would write it.
    let root_pem = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).expect("root");
    let ca_key = std::fs::read_to_string(dir.path().join("ca/ca-key.pem")).expect("CA key");
    let issuer_ca = rcgen::Issuer::from_ca_cert_pem(
        &root_pem,
        rcgen::KeyPair::from_pem(&ca_key).expect("CA key"),
    )
    .expect("CA");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from("spiffe://cluster.local/ns/default/sa/client")
            .expect("uri"),
    )];
    let cert = params.signed_by(&key, &issuer_ca).expect("leaf");
    let cert_file = dir.write("client-cert.pem", &cert.pem());
    let key_file = dir.write("client-key.pem", &key.serialize_pem());
    let root_file = dir.path().join("ca/root-cert.pem");
    let bootstrap = |with_certs: bool| {
        let mut b = serde_json::json!({
            "xds_servers": [{
                "server_uri": "127.0.0.1:15010",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {
                "id": "sidecar~127.0.0.60~client.default~default.svc.cluster.local",
                "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"},
                "locality": {},
            },
        });
        if with_certs {
            b["node"]["metadata"]["ISTIO_VERSION"] = "1.28.0".into();
            b["certificate_providers"] = serde_json::json!({"default": {
                "plugin_name": "file_watcher",
                "config": {
                    "certificate_file": cert_file,
                    "private_key_file": key_file,
                    "ca_certificate_file": root_file,
                    "refresh_interval": "900s",
                },
            }});
        }
        dir.write(
            if with_certs {
                "bootstrap-mtls.json"
            } else {
                "bootstrap-plain.json"
            },
            &b.to_string(),
        )
    };
    let with_certs = bootstrap(true);
    let call = |b: &std::path::Path, n: usize| {
        run_client(
            Command::new(&py)
                .arg(script())
                .args(["call", TARGET, &n.to_string()])
                .env("MESHD_XDS_CREDS", "1"),
            b,
        )
    };
    wait_for("mTLS calls", Duration::from_secs(20), || {
        (count(&call(&with_certs, 1), "echo-v1") == 1).then_some(())
    });
    let d = call(&with_certs, 20);
    assert_eq!(count(&d, "echo-v1"), 20, "{d}");
    let handshakes: u64 = sidecar
        .stats("ssl.handshake")
        .iter()
        .filter(|(k, _)| k.starts_with("listener.127.0.0.50_7070"))
        .map(|(_, v)| *v)
        .sum();
    assert!(handshakes >= 1, "the server sidecar terminated mTLS");
    // Without certificates the client is given plaintext, which STRICT refuses.
    let d = call(&bootstrap(false), 5);
    assert_eq!(count(&d, "echo-v1"), 0, "plaintext refused: {d}");
    drop(meshd);
}
