//! Build script: locates the Envoy descriptor set that ships inside the `envoy-types`
//! crate so that `translate::json` can render Envoy protos as canonical JSON (config_dump).
//!
//! envoy-types compiles its protos with `protoc` and keeps the resulting
//! `FileDescriptorSet` (`src/generated/types.bin`) in its package, but does not export
//! it. We ask cargo where that package lives instead of guessing registry paths.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let target = std::env::var("TARGET").expect("TARGET is set by cargo");
    // `--filter-platform` keeps cargo from wanting packages of other platforms (which
    // `--offline` could not download); `--offline` keeps the build from touching the network.
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(&target)
        .arg("--manifest-path")
        .arg(manifest.join("Cargo.toml"))
        .output()
        .expect("running `cargo metadata`");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let pkg = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types is a dependency");
    let manifest_path = PathBuf::from(pkg["manifest_path"].as_str().expect("manifest_path"));
    let types_bin = manifest_path
        .parent()
        .expect("package dir")
        .join("src/generated/types.bin");
    assert!(types_bin.exists(), "{} is missing", types_bin.display());
    std::fs::copy(&types_bin, out.join("envoy_descriptors.bin")).expect("copy descriptor set");
}
