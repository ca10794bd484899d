//! The `eqco` binary; everything lives in the library's `cli` module.

use clap::Parser;

fn main() {
    let cli = eqco::cli::Cli::parse();
    if let Err(err) = eqco::cli::run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(eqco::cli::exit_code(&err));
    }
}
