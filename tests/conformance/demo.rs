//! The newcomer's demo (examples/bookinfo/demo.sh) really shows what it says.

use std::process::Command;

use crate::harness::*;

#[test]
fn demo_script_shows_v1_then_canary_then_header_rule() {
    let Some(envoy) = envoy_bin() else {
        skip_or_fail("envoy is not installed");
        return;
    };
    if !isolate() {
        return;
    }
    let out = Command::new(repo().join("examples/bookinfo/demo.sh"))
        .env("DEMO_PAUSE", "0")
        .env("ENVOY_BIN", envoy)
        .env("MESHD_BIN", meshd_bin())
        .output()
        .expect("run demo.sh");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let section = |title: &str| -> String {
        let start = text
            .find(title)
            .unwrap_or_else(|| panic!("{title:?} in\n{text}"));
        text[start..]
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("---") && !l.starts_with("==>") && !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        section("1. all traffic to reviews v1").trim(),
        "20 reviews-v1",
        "{text}"
    );
    let canary = section("2. canary: 50% to v3");
    assert!(
        canary.contains("reviews-v1") && canary.contains("reviews-v3"),
        "{canary}"
    );
    assert!(!canary.contains("reviews-v2"), "{canary}");
    assert_eq!(
        section("3. A/B test: end-user john").trim(),
        "20 reviews-v2",
        "{text}"
    );
    assert_eq!(
        section("3. A/B test: everyone else").trim(),
        "20 reviews-v1",
        "{text}"
    );
    assert!(text.contains("Envoy rejected updates: 0"), "{text}");
}
