//! `clopa-synth`: writes a synthetic MSD-format segmentation task (see `clopa-phantom`).
//!
//! Entry point: [`main`] parses the arguments and calls [`run`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use clopa_phantom::{CaseStatus, TaskKind, write_dataset_with};

/// Generate a synthetic MSD-format segmentation task (dataset.json, imagesTr/, labelsTr/).
///
/// Case i depends only on (--task, --seed, --size, i): rerunning with the same settings skips the
/// cases already written, and more --cases extends a dataset without changing the first ones. A
/// non-empty output folder that is not a clopa-synth output of the same settings is refused.
#[derive(Debug, Parser)]
#[command(
    name = "clopa-synth",
    version,
    after_help = "Example:\n  clopa-synth --task vessels --cases 20 --seed 1 -o data/my-vessels\n  \
                  clopa-synth --task organ --cases 4 --seed 7 --size 48,48,40 -o /tmp/organ -q"
)]
struct Args {
    /// Task kind: vessels, organ, small, lesion or generic.
    #[arg(long, value_name = "KIND")]
    task: TaskKind,
    /// Number of training cases to write (at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    cases: u32,
    /// Random seed of the dataset.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Output dataset folder.
    #[arg(short = 'o', long = "output", value_name = "DIR", value_parser = clopa_cli::not_stdout)]
    output: PathBuf,
    /// Grid size X,Y,Z in voxels (default depends on the kind, e.g. 64,64,40 for vessels).
    #[arg(long, value_name = "X,Y,Z", value_parser = parse_size)]
    size: Option<[usize; 3]>,
    /// Only print errors (no progress bar).
    #[arg(short, long)]
    quiet: bool,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn parse_size(s: &str) -> Result<[usize; 3], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let bad = || format!("\"{s}\" is not a size X,Y,Z (three positive integers, e.g. 48,48,32)");
    if parts.len() != 3 {
        return Err(bad());
    }
    let mut out = [0usize; 3];
    for (o, p) in out.iter_mut().zip(parts) {
        *o = p.parse().map_err(|_| bad())?;
    }
    if out.contains(&0) {
        return Err(bad());
    }
    let r = clopa_phantom::SIZE_RANGE;
    if out.iter().any(|n| !r.contains(n)) {
        return Err(format!(
            "\"{s}\": each axis must be between {} and {} voxels",
            r.start(),
            r.end()
        ));
    }
    Ok(out)
}

fn run(args: &Args) -> anyhow::Result<()> {
    let pb = clopa_cli::progress_bar(args.cases as u64, args.task.name(), args.quiet);
    let mut skipped = 0usize;
    let json = write_dataset_with(
        &args.output,
        args.task,
        args.cases as usize,
        args.seed,
        args.size,
        |i, status| {
            match status {
                CaseStatus::Skipped => {
                    skipped += 1;
                    tracing::debug!("case {i} already complete, skipped");
                }
                CaseStatus::Repaired => {
                    tracing::warn!("case {i}: a file did not read back whole; written again");
                }
                CaseStatus::Written => {}
            }
            pb.inc(1);
        },
    )
    .with_context(|| {
        format!(
            "cannot write the {} dataset to {}",
            args.task,
            args.output.display()
        )
    })?;
    pb.finish_and_clear();
    tracing::info!(
        "{} {} cases in {} ({} written, {} already there)",
        json.num_training,
        args.task,
        args.output.display(),
        json.num_training - skipped,
        skipped
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    clopa_cli::run_main("clopa-synth", args.verbose, args.quiet, || run(&args))
}
