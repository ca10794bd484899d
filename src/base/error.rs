//! The crate's error type.
//!
//! Configuration and usage mistakes ([`Error::Config`]) are told apart from
//! failures of the work itself, because the CLI maps them to different exit
//! codes (2 and 1, see `../shared/docs/interface.md`).

use std::path::PathBuf;

/// Everything that can go wrong in eqco's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value or option is invalid; `field` names it.
    #[error("invalid `{field}`: {message}")]
    Config {
        /// The configuration key or command-line option concerned.
        field: String,
        /// What is wrong and what would be allowed.
        message: String,
    },
    /// Tensors of incompatible shapes were passed to a function.
    #[error("shape mismatch in {context}: {message}")]
    Shape {
        /// The function or argument concerned.
        context: &'static str,
        /// The shapes seen and expected.
        message: String,
    },
    /// A computation produced a non-finite value (NaN or infinite loss).
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// Reading or writing a file failed.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error: part of this message, not a separate
        /// source, so that `error: …` states it once.
        cause: std::io::Error,
    },
    /// A data file is missing, truncated or malformed; `path` names it.
    #[error("{}: {message}", path.display())]
    Data {
        /// The file or folder concerned.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Saved state does not fit the model it is loaded into: a tensor is
    /// missing, extra, or of another shape (the caller names the file).
    #[error("{0}")]
    Mismatch(String),
    /// Drawing a plot failed.
    #[error("plot: {0}")]
    Plot(String),
    /// A bug or an unexpected state (a worker thread that died).
    #[error("internal error: {0}")]
    Internal(String),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A collective across processes failed: a peer died, hung past the
    /// timeout, or could not be reached.
    #[error("distributed: {0}")]
    Dist(String),
    /// The run was asked to stop (SIGTERM, SIGINT or SIGUSR1), and every
    /// rank stopped after the same step, at a checkpoint it resumes from
    /// (exit code [`EXIT_STOPPED`]).
    #[error("stopped by {signal} after step {step}: {} holds the run up to there; `eqco pretrain --resume auto` with the same --config and --out (or `--resume RUN_DIR`) continues it", checkpoint.display())]
    Stopped {
        /// The signal, named (`SIGTERM`, …; a peer's when this rank got none).
        signal: String,
        /// The step the run stopped after.
        step: u64,
        /// The checkpoint written at that step.
        checkpoint: PathBuf,
    },
    /// Workers started by `--nproc-per-node` failed; the first named is
    /// the likely cause.
    #[error("{}", describe_workers(.0))]
    Workers(Vec<WorkerFailure>),
}

impl Error {
    /// A configuration error for `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }

    /// Whether this error is the user's configuration or usage (exit code 2).
    pub fn is_usage(&self) -> bool {
        match self {
            Error::Config { .. } => true,
            Error::Workers(f) => f.first().is_some_and(|f| f.code == Some(2)),
            _ => false,
        }
    }
}

/// The exit code of a run that stopped at a checkpoint when asked to
/// ([`Error::Stopped`]): 75, `EX_TEMPFAIL`, "try again later".
pub const EXIT_STOPPED: i32 = 75;

/// A worker that ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerFailure {
    /// Its rank.
    pub rank: usize,
    /// Its exit code (none when a signal ended it); 2 means a usage or
    /// configuration error.
    pub code: Option<i32>,
    /// What it wrote to its error file, or how it ended.
    pub message: String,
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn describe_workers(failures: &[WorkerFailure]) -> String {
    let each: Vec<String> = failures
        .iter()
        .map(|f| format!("rank {} failed: {}", f.rank, f.message))
        .collect();
    match each.split_first() {
        None => "a worker failed".to_string(),
        Some((first, [])) => first.clone(),
        Some((first, rest)) => format!("{first} (then {})", rest.join("; ")),
    }
}
