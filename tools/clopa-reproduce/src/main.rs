//! `clopa-reproduce`: the whole protocol for a pipeline profile (synth → split → simulate →
//! train episodes → simulate → eval → rank), skipping every finished step. The work is in
//! `lib.rs`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// Run the whole CLoPA protocol of a pipeline profile and write the paper's tables and figure.
///
/// Runs the sibling tools (found next to this binary) as subprocesses: clopa-synth for the
/// profile's [synth] datasets, clopa-split, clopa-simulate for the base model, then for each
/// training run, scheduled episode and method clopa-train-episode (warm-started from the previous
/// episode) and clopa-simulate with the checkpoint chain, clopa-eval per task and clopa-rank.
/// Every step whose outputs exist, look whole, are not older than the input files on its
/// command line and its task's dataset files, and are as the step's own command left them
/// (OUT/commands.json) is skipped (the tools write atomically), so an interrupted run is resumed
/// by running the same command again, and a checkpoint or table rewritten by hand, or a case
/// replaced in a dataset, reruns its step and the steps after it.
#[derive(Parser, Debug)]
#[command(
    name = "clopa-reproduce",
    version,
    after_help = "Example:\n  export CLOPA_DATA=data\n  clopa-reproduce --profile pipelines/quick.toml -o runs/quick\n  # -> runs/quick/{profile.toml, commands.json, table2.md, table3.md, fig2.png,\n  #      fig2.svg, cases.parquet, episodes.parquet, final.parquet,\n  #      trajectory.parquet, pairs.parquet, ranking.parquet}\n  #    runs/quick/<task>/{split.parquet, base/, in/run0/ep1.safetensors, ...,\n  #      eval/}\n  # what a rerun would do, and why, without doing it:\n  clopa-reproduce --profile pipelines/quick.toml -o runs/quick -n"
)]
struct Args {
    /// Pipeline profile [default: the embedded pipelines/quick.toml].
    #[arg(long, value_name = "TOML")]
    profile: Option<PathBuf>,
    /// Output folder, e.g. runs/quick.
    #[arg(short, long, value_name = "DIR", value_parser = clopa_cli::not_stdout)]
    output: PathBuf,
    /// Override one profile key, e.g. `--set train_runs=1` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = clopa_cli::parse_key_value)]
    sets: Vec<(String, String)>,
    /// Seed of all other randomness (overrides the profile's `seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Base model folder [default: the profile's `model`].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Folder that manifest `dataset` paths and [synth] datasets start from.
    #[arg(long, value_name = "DIR", env = "CLOPA_DATA", default_value = "data")]
    data_root: PathBuf,
    /// Folder holding the clopa tools [default: this binary's folder].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Print each step and whether it would run, and why, without running or writing anything
    /// (with -v, each command line too).
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// More logging (-v: every command; -vv: the tools' own logs too).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long)]
    quiet: bool,
}

fn run(args: Args) -> anyhow::Result<()> {
    let sets = args.sets;
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()
            .context("cannot locate this binary")?
            .parent()
            .map(PathBuf::from)
            .context("this binary has no parent folder")?,
    };
    let opts = clopa_reproduce::Options {
        profile: args.profile,
        sets,
        seed: args.seed,
        out: args.output,
        data_root: args.data_root,
        model: args.model,
        bin_dir,
        child_verbosity: match args.verbose {
            0 | 1 => None,
            n => Some(n - 1),
        },
    };
    if args.dry_run {
        return dry_run(&opts, args.verbose > 0);
    }
    let pb = clopa_cli::progress_bar(1, "reproduce", args.quiet);
    let start = std::time::Instant::now();
    let summary = clopa_reproduce::reproduce(&opts, &mut |step, i, total| {
        pb.set_length(total as u64);
        pb.set_position(i as u64);
        pb.set_prefix(step.label.clone());
    })?;
    pb.finish_and_clear();
    tracing::info!(
        "done in {:.1} s: {} steps ran, {} skipped (already done), {} checked by the tool itself; results in {}",
        start.elapsed().as_secs_f64(),
        summary.ran,
        summary.skipped,
        summary.checked,
        opts.out.display()
    );
    Ok(())
}

/// `-n`: the plan on stdout, one line per step (`run` with the reason, or `done`).
fn dry_run(opts: &clopa_reproduce::Options, commands: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let (steps, complete) = clopa_reproduce::plan(opts)?;
    let mut out = std::io::stdout().lock();
    for s in &steps {
        match &s.why {
            Some(why) => writeln!(out, "run   {}: {why}", s.label)?,
            None => writeln!(out, "done  {}", s.label)?,
        }
        if commands && s.why.is_some() {
            writeln!(out, "      $ {}", s.command)?;
        }
    }
    if !complete {
        writeln!(
            out,
            "then  the training, simulation, evaluation and ranking steps, planned once every \
             split exists"
        )?;
    }
    let would = steps.iter().filter(|s| s.why.is_some()).count();
    tracing::info!("{would} of {} steps would run", steps.len());
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    clopa_cli::run_main("clopa-reproduce", args.verbose, args.quiet, || run(args))
}
