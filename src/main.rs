use std::process::ExitCode;

// Translation allocates many small objects; mimalloc handles that far better than
// glibc's allocator (measured in docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() -> ExitCode {
    let cli = meshd::cli::Cli::parse();
    meshd::app::init_tracing();
    match meshd::app::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshd: {e:#}");
            ExitCode::from(2)
        }
    }
}
