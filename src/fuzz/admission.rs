//! AdmissionReview bodies as the API server posts them to `/inject` and `/validate`.
//!
//! Every body that is JSON must get an AdmissionReview answer naming the request's uid;
//! a patch, when there is one, must be base64 of a JSON Patch (a list of operations).

use std::sync::OnceLock;

use base64::Engine;
use serde_json::Value;

use crate::inject::pipeline::Settings;
use crate::model::mesh::MeshConfig;

fn settings() -> Option<&'static Settings> {
    static S: OnceLock<Option<Settings>> = OnceLock::new();
    S.get_or_init(|| crate::inject::settings_from_files(None, None, None).ok())
        .as_ref()
}

pub fn run(data: &[u8]) {
    let Ok(review) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Some(settings) = settings() {
        check(
            &review,
            &crate::webhook::inject_review(settings, &review, ""),
        );
    }
    check(
        &review,
        &crate::webhook::validate_review(&review, &MeshConfig::default()),
    );
}

fn check(review: &Value, answer: &Value) {
    assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
    let r = &answer["response"];
    assert_eq!(r["uid"], review["request"]["uid"], "{answer}");
    assert!(r["allowed"].is_boolean(), "{answer}");
    if let Some(p) = r.get("patch") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("patch is not base64: {e}"));
        let ops: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("patch is not JSON: {e}"));
        assert!(ops.is_array(), "patch is not a list of operations: {ops}");
    }
}
