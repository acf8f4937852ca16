//! Replays every saved fuzz input (`fuzz/corpus/TARGET/`, the inputs the fuzzer kept for
//! their coverage, and `fuzz/regressions/TARGET/`, inputs that once found a defect)
//! through meshd's fuzz targets, in the ordinary test build: a change that breaks one of
//! them fails here without running a fuzzer.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn replay(name: &str) {
    let target = meshd::fuzz::target(name).expect("a fuzz target of that name");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = inputs(&root.join("corpus").join(name));
    let regressions = inputs(&root.join("regressions").join(name));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{name} holds no inputs: the fuzz target would replay nothing"
    );
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).expect("read a saved input");
        if let Err(e) = std::panic::catch_unwind(|| target(&data)) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{name}: {} fails: {why}", path.display());
        }
    }
    eprintln!(
        "{name}: {} corpus inputs and {} regressions replayed",
        corpus.len(),
        regressions.len()
    );
}

#[test]
fn yaml() {
    replay("yaml");
}

#[test]
fn xds() {
    replay("xds");
}

#[test]
fn csr() {
    replay("csr");
}

#[test]
fn admission() {
    replay("admission");
}

#[test]
fn jwt() {
    replay("jwt");
}

#[test]
fn envoy_filter() {
    replay("envoy_filter");
}

#[test]
fn every_target_has_a_test_here() {
    let names: Vec<&str> = meshd::fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["yaml", "xds", "csr", "admission", "jwt", "envoy_filter"]
    );
}
