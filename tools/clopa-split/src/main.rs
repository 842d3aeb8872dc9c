//! `clopa-split`: check a task's dataset and write its train/holdout split with every training
//! run's stream order and episode schedule (`split.parquet`).
//!
//! What is where: `main.rs` parses the arguments and runs the steps (resolve settings, check the
//! dataset, split, write). `dataset.json` and the per-case checks live in `clopa-dataset`, the
//! split and the schedule in `clopa-schedule`, the table in `clopa-table`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser};
use clopa_config::{Manifest, Profile};
use clopa_dataset::Dataset;
use clopa_schedule::{SplitSettings, format_schedule, schedule, split, stream_of};
use clopa_table::{Provenance, write_split, write_split_to};
use rayon::prelude::*;

const AFTER_HELP: &str = "\
Every case listed in the dataset's dataset.json is checked first: image and label readable, on the
same grid (shape, spacing, affine), label values among dataset.json's labels, no NaN or infinite
intensity in the task's channel, and a non-empty foreground. If any case fails, the tool names
each bad case, its file and the problem, writes nothing and exits 1.

The split: ceil(holdout_fraction * n) cases go to the holdout (seeded by split_seed, or --seed);
the rest form the training stream, permuted once per training run (run_seeds). Each stream
position gets the episode at which it joins the cache and its role (train or val).

Example:
  export CLOPA_DATA=~/data
  clopa-split data-manifests/msd-hippocampus.toml \\
      --profile pipelines/paper.toml \\
      -o runs/paper/msd-hippocampus/split.parquet --show-schedule";

/// Check a task's dataset and write its train/holdout split and stream schedule (split.parquet).
#[derive(Debug, Parser)]
#[command(name = "clopa-split", version, after_help = AFTER_HELP, term_width = 100)]
struct Args {
    /// The task manifest (data-manifests/*.toml).
    manifest: PathBuf,
    /// Output table (`-` for stdout).
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    output: PathBuf,
    /// Pipeline profile supplying the split settings [default: the embedded pipelines/quick.toml].
    #[arg(long, value_name = "TOML")]
    profile: Option<PathBuf>,
    /// Seed of the train/holdout shuffle (overrides the profile's split_seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Override one profile key, e.g. `--set train_runs=1` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = clopa_cli::parse_key_value)]
    set: Vec<(String, String)>,
    /// Folder that relative manifest `dataset` paths start from [default: ./data].
    #[arg(long, value_name = "DIR", env = "CLOPA_DATA", hide_env_values = true)]
    data_root: Option<PathBuf>,
    /// Print every run's episode schedule to stdout.
    #[arg(long)]
    show_schedule: bool,
    /// Only print errors.
    #[arg(short, long)]
    quiet: bool,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if clopa_cli::is_stdout(&args.output) && args.show_schedule {
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--show-schedule prints to stdout, so it cannot be combined with `-o -`",
            )
            .exit();
    }
    clopa_cli::run_main("clopa-split", args.verbose, args.quiet, || run(&args))
}

fn run(args: &Args) -> anyhow::Result<()> {
    let to_stdout = clopa_cli::is_stdout(&args.output);
    // before reading every case: a bad -o would otherwise fail after the work
    clopa_cli::check_output(&args.output)?;
    let manifest = Manifest::load(&args.manifest)?;
    let mut profile = Profile::load_or_quick(args.profile.as_deref())?;
    profile.set_all(&args.set)?;
    if let Some(seed) = args.seed {
        profile.split_seed = seed;
    }

    let dir = manifest.dataset_dir(args.data_root.as_deref());
    let ds = Dataset::open(&dir)?;
    ds.check_labels(&manifest.labels, &args.manifest)?;
    check_cases(&ds, &manifest, args.quiet)?;

    let settings = SplitSettings {
        holdout_fraction: profile.holdout_fraction,
        split_seed: profile.split_seed,
        run_seeds: profile.run_seeds[..profile.train_runs].to_vec(),
        k_d: profile.k_d,
        k_m: profile.k_m,
        max_stream: profile.max_stream,
        max_holdout: profile.max_holdout,
    };
    let ids: Vec<String> = ds.cases.iter().map(|c| c.id.clone()).collect();
    let rows = split(&manifest.name, &ids, &settings)
        .with_context(|| format!("cannot split the cases of {}", ds.json_path.display()))?;

    let n_stream = stream_of(&rows, 0).len();
    let episodes = schedule(n_stream, settings.k_d, settings.k_m)?;
    if args.show_schedule {
        print_schedule(&manifest, &rows, &settings, n_stream)?;
    }

    let prov = Provenance::new(
        "clopa-split",
        env!("CARGO_PKG_VERSION"),
        serde_json::json!({
            "manifest_path": args.manifest.display().to_string(),
            "manifest": manifest,
            "dataset_dir": dir.display().to_string(),
            "profile": profile.to_json(),
        }),
        profile.split_seed,
    );
    if to_stdout {
        let buf = write_split_to(Vec::new(), &rows, &prov)?;
        std::io::stdout().lock().write_all(&buf)?;
    } else {
        write_split(&args.output, &rows, &prov)?;
    }
    let n_holdout = rows.len() - n_stream * settings.run_seeds.len();
    tracing::info!(
        "{}: {} cases checked; {n_holdout} holdout, a stream of {n_stream} x {} run(s), {} episode(s) -> {}",
        manifest.name,
        ds.cases.len(),
        settings.run_seeds.len(),
        episodes.len(),
        args.output.display()
    );
    Ok(())
}

/// Checks every case in parallel and reports all bad cases at once.
fn check_cases(ds: &Dataset, manifest: &Manifest, quiet: bool) -> anyhow::Result<()> {
    let pb = clopa_cli::progress_bar(ds.cases.len() as u64, "checking cases", quiet);
    let mut failures: Vec<(usize, String)> = ds
        .cases
        .par_iter()
        .enumerate()
        .filter_map(|(i, case)| {
            let r = case.check(ds, manifest);
            pb.inc(1);
            r.err().map(|e| (i, format!("case {}: {e}", case.id)))
        })
        .collect();
    pb.finish_and_clear();
    if failures.is_empty() {
        return Ok(());
    }
    failures.sort();
    const SHOWN: usize = 20;
    let mut msg = format!(
        "{} of {} cases in {} failed the check; nothing was written:",
        failures.len(),
        ds.cases.len(),
        ds.json_path.display()
    );
    for (_, f) in failures.iter().take(SHOWN) {
        msg.push_str("\n  ");
        msg.push_str(f);
    }
    if failures.len() > SHOWN {
        msg.push_str(&format!("\n  ... and {} more", failures.len() - SHOWN));
    }
    bail!(msg)
}

fn print_schedule(
    manifest: &Manifest,
    rows: &[clopa_schedule::SplitRow],
    settings: &SplitSettings,
    n_stream: usize,
) -> anyhow::Result<()> {
    let episodes = schedule(n_stream, settings.k_d, settings.k_m)?;
    let n_holdout = clopa_schedule::holdout_cases(rows).len();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "task {}: {n_holdout} holdout cases, a stream of N = {n_stream} (k_d = {}, k_m = {}), {} run(s)",
        manifest.name,
        settings.k_d,
        settings.k_m,
        settings.run_seeds.len()
    )?;
    let table = format_schedule(&episodes);
    let used = episodes.last().map_or(0, |e| e.end_position as usize);
    for (run, seed) in settings.run_seeds.iter().enumerate() {
        writeln!(out, "\nrun {run} (stream seed {seed}):")?;
        write!(out, "{table}")?;
        let stream = stream_of(rows, run as u32);
        if let (Some(first), Some(last)) = (stream.first(), stream.last()) {
            writeln!(out, "stream: {} ... {}", first.case_id, last.case_id)?;
        }
        if used < n_stream {
            writeln!(
                out,
                "{} case(s) after the last episode are never trained on",
                n_stream - used
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn path_for_stdout() {
        assert!(clopa_cli::is_stdout(std::path::Path::new("-")));
    }
}
