use std::process::ExitCode;

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
