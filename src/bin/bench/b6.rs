//! B6: the two per-pod costs outside xDS — injecting a typical Deployment's pod through
//! the webhook's code path, and signing workload CSRs (per core and on every core).

use std::time::Instant;

use serde_json::json;

use meshd::ca::Identity;
use meshd::ca::authority::Authority;
use meshd::inject::{defaults, pipeline::Settings};

use super::{millis as ms, percentile};

/// Bookinfo's reviews-v1 pod as its Deployment makes it: labels, service account, one
/// container with a port, probes and resources.
fn pod(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "reviews-v1-7d9b8c6f5-", "name": format!("reviews-v1-7d9b8c6f5-{i:05}"),
                     "namespace": "default",
                     "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "7d9b8c6f5"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-7d9b8c6f5",
                                          "uid": "5c0a3e1e-0000-4000-8000-000000000001", "controller": true}]},
        "spec": {
            "serviceAccountName": "bookinfo-reviews",
            "containers": [{
                "name": "reviews", "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20.3",
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 9080, "protocol": "TCP"}],
                "env": [{"name": "LOG_DIR", "value": "/tmp/logs"}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": 9080}, "periodSeconds": 5},
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}]
        }
    })
}

pub fn run(n: usize) -> String {
    let settings = match Settings::new(defaults::CONFIG, defaults::VALUES, defaults::MESH) {
        Ok(s) => s,
        Err(e) => return format!("B6: built-in injection settings refused: {e}"),
    };
    let mut times = Vec::with_capacity(n);
    let mut patched = 0;
    for i in 0..n {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": format!("uid-{i}"), "namespace": "default",
                        "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "operation": "CREATE", "object": pod(i)},
        });
        let t = Instant::now();
        let resp = meshd::webhook::inject_review(&settings, &review, "default");
        times.push(t.elapsed());
        patched += usize::from(resp["response"]["patch"].is_string());
    }
    times.sort();
    let inject = format!(
        "injection of a Deployment's pod ({patched}/{n} patched): p50 {:.3} ms, p99 {:.3} ms",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
    );

    let ca = match Authority::self_signed("cluster.local") {
        Ok(ca) => ca,
        Err(e) => return format!("B6: {inject}; no CA: {e}"),
    };
    let id = Identity::new("cluster.local", "default", "bookinfo-reviews");
    let csrs: Vec<String> = (0..n)
        .filter_map(|_| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).ok()?;
            let mut p = rcgen::CertificateParams::default();
            p.subject_alt_names = vec![rcgen::SanType::URI(id.to_string().try_into().ok()?)];
            p.serialize_request(&key).ok()?.pem().ok()
        })
        .collect();
    let t = Instant::now();
    let one = csrs
        .iter()
        .filter(|c| ca.sign_csr(c, &id, None).is_ok())
        .count();
    let per_core = one as f64 / t.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let t = Instant::now();
    let all: usize = std::thread::scope(|s| {
        let handles: Vec<_> = csrs
            .chunks(csrs.len().div_ceil(cores).max(1))
            .map(|chunk| {
                let ca = &ca;
                let id = &id;
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter(|c| ca.sign_csr(c, id, None).is_ok())
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let every = all as f64 / t.elapsed().as_secs_f64();
    super::report(
        "B6",
        json!({"pods": n, "injection_p50_ms": ms(percentile(&times, 0.5)),
               "injection_p99_ms": ms(percentile(&times, 0.99)),
               "csr_per_second_one_core": per_core, "csr_per_second_all_cores": every,
               "cores": cores, "target_injection_p99_ms": 1, "target_csr_per_core": 2000}),
    );
    format!(
        "B6: {inject}; CSR signing (ECDSA P-256, {one}/{n} signed): {per_core:.0}/s on one core, \
         {every:.0}/s on {cores} cores"
    )
}
