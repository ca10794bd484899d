//! The `eqco` binary; everything lives in the library's `cli` module.

fn main() {
    // Output piped into `head` and the like ends the program quietly, as in
    // other Unix tools, instead of a panic on a closed pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default action of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(eqco::cli::main_with(std::env::args_os()));
}
