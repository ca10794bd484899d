//! `eqco report <run dir>…`: a Markdown summary of runs (a sweep folder
//! stands for its runs), their training curves and, where the runs were
//! evaluated, accuracy against K beside the baselines.

use std::path::PathBuf;

use clap::Args;

/// Options of `eqco report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run folders written by `eqco pretrain`, or sweep folders written by `eqco sweep`.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output folder for report.md, report.png and accuracy.png.
    #[arg(long, default_value = "runs/report")]
    pub out: PathBuf,
}

/// Writes the report and prints its Markdown.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let md = crate::app::report::write(&args.runs, &args.out)?;
    print!("{md}");
    println!("\nwrote {}/report.md and its plots", args.out.display());
    Ok(())
}
