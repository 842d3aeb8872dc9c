//! `clopa-merge`: the per-task tables of clopa-eval concatenated into one, so that one clopa-rank
//! ranks several tasks — the step clopa-reproduce runs between evaluating and ranking, for teams
//! composing the tools by hand. The work is `clopa_reproduce::merge_tables`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Concatenate tables of the same kind (clopa-eval's cases, episodes, final or trajectory
/// tables of several tasks) into one, keeping each task's threshold for clopa-rank.
///
/// The inputs must have the same columns (text may be any of Arrow's string types) and no task
/// may appear in two of them. The output records the inputs and, per task, the threshold its
/// clopa-eval used (Fig. 2 draws each task's own line); it is written atomically, and nothing is
/// written on an error.
#[derive(Parser, Debug)]
#[command(
    name = "clopa-merge",
    version,
    after_help = "Example (three tasks evaluated one by one, then ranked together):
  for t in synth-organ synth-small synth-vessels; do
    d=runs/my/$t
    clopa-eval $d/base/steps.parquet $d/in/run*/ep*.steps.parquet \\
        --manifest data-manifests/$t.toml --split $d/split.parquet \\
        -o $d/eval
  done
  for table in cases final trajectory; do
    clopa-merge runs/my/*/eval/$table.parquet -o runs/my/$table.parquet
  done
  clopa-rank runs/my/cases.parquet --trajectory runs/my/trajectory.parquet \\
      -o runs/my/report"
)]
struct Args {
    /// Tables to concatenate, in this order.
    #[arg(value_name = "TABLE", required = true, num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// The merged table.
    #[arg(short, long, value_name = "FILE", value_parser = not_stdout)]
    output: PathBuf,
    /// More logging.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long)]
    quiet: bool,
}

/// `-o`: a file (the table is written through a temporary file renamed into place).
fn not_stdout(s: &str) -> Result<PathBuf, String> {
    if s == "-" {
        Err("the merged table is written to a file, not to stdout (`-`)".into())
    } else {
        Ok(s.into())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    clopa_cli::run_main("clopa-merge", args.verbose, args.quiet, || {
        clopa_cli::check_output(&args.output)?;
        clopa_reproduce::merge_tables(&args.inputs, &args.output, "clopa-merge")?;
        tracing::info!(
            "merged {} tables into {}",
            args.inputs.len(),
            args.output.display()
        );
        Ok(())
    })
}
