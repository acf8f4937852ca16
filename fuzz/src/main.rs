//! `meshd-fuzz TARGET`: one of meshd's fuzz targets (`meshd::fuzz::TARGETS`) under AFL++.
//! Run through `scripts/fuzz`, which builds it with `cargo afl` and starts the fuzzer.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = meshd::fuzz::target(&name) else {
        let names: Vec<&str> = meshd::fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: meshd-fuzz TARGET (one of {})", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        target(data);
    });
}
