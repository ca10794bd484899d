//! The `eqco` binary; everything lives in the library's `cli` module.

use clap::Parser;

fn main() {
    // Output piped into `head` and the like ends the program quietly, as in
    // other Unix tools, instead of a panic on a closed pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default action of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = eqco::cli::Cli::parse();
    if let Err(err) = eqco::cli::run(cli) {
        let code = eqco::cli::exit_code(&err);
        if code == eqco::base::error::EXIT_STOPPED {
            // Every rank stopped alike: rank 0 says so.
            if !matches!(std::env::var("RANK").as_deref(), Ok(r) if r != "0") {
                eprintln!("pretrain: {err:#}");
            }
        } else {
            // A worker started by a launcher also tells it why it failed.
            eqco::dist::env::record_error(&format!("{err:#}"));
            eprintln!("error: {err:#}");
        }
        std::process::exit(code);
    }
}
