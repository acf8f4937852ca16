//! Istio's reference data for the tests that compare with it: `MESHD_ISTIO_DATA`, else
//! ../shared/istio beside this repository, else tests/data/istio (what
//! scripts/fetch-istio-data fills: the pinned commits from GitHub, or the Go modules
//! istiod is built from).

use std::io::Write;
use std::path::PathBuf;

/// Where Istio's reference data is (the first place that exists; ../shared/istio when
/// none does, so messages name the usual place).
pub fn shared() -> PathBuf {
    if let Some(d) = std::env::var_os("MESHD_ISTIO_DATA").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let beside = repo.join("../shared/istio");
    if beside.exists() {
        return beside;
    }
    let fetched = repo.join("tests/data/istio");
    if fetched.exists() {
        return fetched;
    }
    beside
}

/// Says that the part `what` is skipped for lack of Istio's data: a SKIPPED line, and a
/// line in `MESHD_SKIP_LOG` when set (the test command counts them and says how to get
/// the data).
pub fn skipped(what: &str) {
    eprintln!(
        "SKIPPED: {what} (Istio's reference data is not there: {})",
        shared().display()
    );
    if let Some(log) = std::env::var_os("MESHD_SKIP_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    {
        let _ = writeln!(f, "{what}");
    }
}

/// Istio's reference data, or None (after [`skipped`] naming `what`) when it is not
/// there. Always a skip, even under MESHD_REQUIRE_ENVOY=1: the data is not a tool the
/// test command installs. (Not every test crate that includes this file calls it.)
#[allow(dead_code)]
pub fn shared_or_skip(what: &str) -> Option<PathBuf> {
    let dir = shared();
    if dir.exists() {
        Some(dir)
    } else {
        skipped(what);
        None
    }
}
