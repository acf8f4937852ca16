//! `meshd translate --format bootstrap` produces configuration real Envoy accepts.

use std::process::Command;

use crate::harness::*;

fn validate(config_dir: &std::path::Path, node: &str, labels: &[&str], dir: &TempDir) {
    let Some(envoy) = envoy_bin() else {
        skip_or_fail("envoy is not installed");
        return;
    };
    let mut cmd = Command::new(meshd_bin());
    cmd.arg("translate")
        .arg("--config-dir")
        .arg(config_dir)
        .args(["--proxy", node, "--format", "bootstrap"]);
    for l in labels {
        cmd.args(["--label", l]);
    }
    let out = cmd.output().expect("run meshd translate");
    assert!(
        out.status.success(),
        "translate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = node.replace(['~', '.'], "_");
    let path = dir.path().join(format!("{name}.json"));
    std::fs::write(&path, &out.stdout).expect("write");
    let v = Command::new(envoy)
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(
        v.status.success() && text.contains("OK"),
        "envoy --mode validate refused {node}:\n{text}"
    );
    // The bootstrap is not trivially empty.
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        json["staticResources"]["clusters"]
            .as_array()
            .is_some_and(|c| c.len() > 3),
        "{node}: clusters in the bootstrap"
    );
}

/// Every Pod of examples/bookinfo, as a sidecar, plus its ingress gateway.
#[test]
fn every_example_proxy_bootstrap_passes_envoy_validate() {
    let dir = TempDir::new("bootstrap");
    let examples = repo().join("examples/bookinfo");
    let pods = [
        ("127.0.0.10", "productpage-v1"),
        ("127.0.0.11", "details-v1"),
        ("127.0.0.12", "reviews-v1"),
        ("127.0.0.13", "reviews-v2"),
        ("127.0.0.14", "reviews-v3"),
        ("127.0.0.15", "ratings-v1"),
    ];
    for (ip, pod) in pods {
        validate(
            &examples,
            &format!("sidecar~{ip}~{pod}.default~default.svc.cluster.local"),
            &[],
            &dir,
        );
    }
    validate(
        &examples,
        "router~127.0.0.20~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local",
        &["istio=ingressgateway"],
        &dir,
    );
}

/// Istio's own Bookinfo networking samples, all at once, pass too.
#[test]
fn istio_bookinfo_samples_bootstrap_passes_envoy_validate() {
    let dir = TempDir::new("samples");
    let config = TempDir::new("samples-config");
    for f in ["services.yaml", "pods.yaml"] {
        config.copy_from(&repo().join("examples/bookinfo").join(f), f);
    }
    for f in [
        "destination-rule-all.yaml",
        "virtual-service-reviews-jason-v2-v3.yaml",
        "virtual-service-ratings-test-delay.yaml",
        "virtual-service-details-v2.yaml",
        "bookinfo-gateway.yaml",
        "egress-rule-google-apis.yaml",
    ] {
        config.copy_from(&shared().join("bookinfo/networking").join(f), f);
    }
    validate(
        config.path(),
        "sidecar~127.0.0.10~productpage-v1.default~default.svc.cluster.local",
        &["app=productpage", "version=v1"],
        &dir,
    );
}
