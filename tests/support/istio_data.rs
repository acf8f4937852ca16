//! Istio's reference data (../shared/istio) for the tests that compare with it.

use std::path::PathBuf;

/// ../shared/istio, beside this repository.
pub fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/istio")
}

/// ../shared/istio, or None (after a SKIPPED line naming `what`) when this clone has no
/// ../shared. Always a skip, even under MESHD_REQUIRE_ENVOY=1: the Istio reference data
/// is not a tool the test command installs.
pub fn shared_or_skip(what: &str) -> Option<PathBuf> {
    let dir = shared();
    if dir.exists() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: {what} (../shared/istio is not there)");
        None
    }
}
