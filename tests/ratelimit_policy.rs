//! RateLimitPolicy as a user checks it: `meshd validate` names each fault (file:line,
//! object, field, reason), and `meshd status` reports which policies are in force, which
//! attach to nothing, and which lose to an older one with the same attachment.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config(tag: &str, policies: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshd-ratelimit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    for f in ["services.yaml", "pods.yaml"] {
        std::fs::copy(repo().join("examples/bookinfo").join(f), dir.join(f)).expect("copy");
    }
    std::fs::write(dir.join("policies.yaml"), policies).expect("write");
    dir
}

fn meshd(args: &[&str], dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(args)
        .arg("--config-dir")
        .arg(dir)
        .output()
        .expect("run meshd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

const INVALID: &str = r#"apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: nothing, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: zero, namespace: default}
spec:
  local: {requests: 0}
  descriptors:
  - {header: "bad header"}
  - {pathPrefix: [api]}
  response: {status: 299}
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: both, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  targetRefs: [{group: apps, kind: Deployment, name: reviews, sectionName: x}]
  local: {requests: 1}
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: typo, namespace: default}
spec:
  local: {requets: 1, unit: SECOND}
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: no-provider, namespace: default}
spec:
  global: {provider: nowhere}
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: headers, namespace: default}
spec:
  local: {requests: 1}
  global: {provider: nowhere, domain: ""}
  descriptors: [{remoteAddress: {}}]
  response: {headers: {host: x, x-ok: "a\nb"}}
"#;

#[test]
fn validate_names_each_fault() {
    let dir = config("invalid", INVALID);
    let (code, out) = meshd(&["validate"], &dir);
    assert_ne!(code, 0, "{out}");
    for want in [
        "policies.yaml:4",
        "RateLimitPolicy default/nothing",
        "needs `local`, `global` or both",
        "RateLimitPolicy default/zero",
        "spec.local.requests",
        "requests must be at least 1",
        "spec.descriptors[0].header",
        "is not an HTTP header name",
        "spec.descriptors[1].pathPrefix[0]",
        "must start with /",
        "spec.response.status",
        "not an error status",
        "RateLimitPolicy default/both",
        "cannot be used together",
        "spec.targetRefs[0].kind",
        "cannot attach to \"Deployment\"",
        "spec.targetRefs[0].sectionName",
        "RateLimitPolicy default/typo",
        "requets",
        "did you mean",
        "RateLimitPolicy default/no-provider",
        "no extension provider \"nowhere\" with envoyRateLimit",
        "spec.response.headers.host",
        "cannot be set on a response",
        "cannot hold NUL, CR or LF",
        "spec.global.domain",
        "the domain cannot be empty",
        "remoteAddress at a sidecar",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // A refused policy's status says why (in Kubernetes an old `Accepted` would stay).
    let (_, status) = meshd(&["status", "-o", "json"], &dir);
    let list: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let zero = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["metadata"]["name"] == "zero")
        .unwrap_or_else(|| panic!("zero in {list}"));
    let c = &zero["status"]["conditions"][0];
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("False"), Some("Invalid")),
        "{zero}"
    );
    assert!(
        c["message"]
            .as_str()
            .unwrap_or("")
            .contains("requests must be at least 1"),
        "{zero}"
    );
    assert_eq!(zero["apiVersion"], "policy.meshd.io/v1alpha1");
    let _ = std::fs::remove_dir_all(&dir);
}

const ATTACHMENTS: &str = r#"apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: first, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  selector: {matchLabels: {app: reviews}}
  local: {requests: 10}
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: second, namespace: default, creationTimestamp: "2026-02-01T00:00:00Z"}
spec:
  selector: {matchLabels: {app: reviews}}
  local: {requests: 20}
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: nobody, namespace: default}
spec:
  selector: {matchLabels: {app: no-such-app}}
  local: {requests: 1}
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: ghost-service, namespace: default}
spec:
  targetRefs: [{group: "", kind: Service, name: ghost}]
  local: {requests: 1}
---
apiVersion: policy.meshd.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: service, namespace: default}
spec:
  targetRefs: [{group: "", kind: Service, name: ratings}]
  local: {requests: 1}
"#;

#[test]
fn status_says_what_is_in_force() {
    let dir = config("status", ATTACHMENTS);
    let (code, out) = meshd(&["status", "-o", "json"], &dir);
    assert_eq!(code, 0, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let cond = |name: &str| -> (String, String, String) {
        let item = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["kind"] == "RateLimitPolicy" && i["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {list}"));
        assert_eq!(item["apiVersion"], "policy.meshd.io/v1alpha1");
        let c = &item["status"]["conditions"][0];
        assert_eq!(c["type"], "Accepted", "{item}");
        let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
        (s("status"), s("reason"), s("message"))
    };
    assert_eq!(cond("first").1, "Accepted");
    assert_eq!(cond("service").1, "Accepted");
    let (status, reason, message) = cond("second");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Conflicted"));
    assert!(
        message.contains("RateLimitPolicy default/first"),
        "{message}"
    );
    let (status, reason, message) = cond("nobody");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "TargetNotFound")
    );
    assert!(message.contains("selects no workload"), "{message}");
    let (status, reason, message) = cond("ghost-service");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "TargetNotFound")
    );
    assert!(message.contains("Service default/ghost"), "{message}");
    // And `meshd validate` warns about the same three (warnings: exit 0).
    let (code, out) = meshd(&["validate"], &dir);
    assert_eq!(code, 0, "{out}");
    for want in [
        "RateLimitPolicy default/second",
        "older RateLimitPolicy default/first",
        "RateLimitPolicy default/nobody",
        "selects no workload",
        "RateLimitPolicy default/ghost-service",
        "no target exists",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The policy kind's fields as documented (the examples use them all).
#[test]
fn examples_validate_clean() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["validate", "--config-dir"])
        .arg(repo().join("examples/bookinfo"))
        .arg("--config-dir")
        .arg(repo().join("examples/ratelimit"))
        .output()
        .expect("run meshd");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 errors, 0 warnings"), "{text}");
}

/// The README's policy (beside the EnvoyFilter it replaces) is one meshd takes as it is.
#[test]
fn readme_policy_validates() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let start = readme
        .find("# The same with meshd's RateLimitPolicy")
        .expect("the README's policy");
    let block = &readme[start..];
    let block = &block[..block.find("```").expect("end of the block")];
    assert!(block.contains("kind: RateLimitPolicy"), "{block}");
    let dir = config("readme", block);
    let (code, out) = meshd(&["validate"], &dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 errors, 0 warnings"), "{out}");
    let (_, status) = meshd(&["status", "-o", "json"], &dir);
    assert!(status.contains("\"reason\": \"Accepted\""), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}
