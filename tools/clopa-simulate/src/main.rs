//! `clopa-simulate`: argument parsing; the work is in `lib.rs` (`clopa_simulate::run`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

const AFTER_HELP: &str = "\
Examples:
  # the base model on the holdout cases, the quick profile's settings
  # (10 edits, 1 inference run, 32^3 patches), as clopa-reproduce runs it
  clopa-simulate --model models/clopa-tiny \\
      --manifest data-manifests/synth-organ.toml \\
      --split runs/quick/synth-organ/split.parquet \\
      --profile pipelines/quick.toml \\
      -o runs/quick/synth-organ/base/steps.parquet

  # an episode checkpoint (method, run, episode and n_seen come from its
  # metadata); the chain of checkpoints in order, as clopa-reproduce does
  clopa-simulate --model models/clopa-tiny \\
      --checkpoint runs/quick/synth-organ/in/run0/ep1.safetensors \\
      --checkpoint runs/quick/synth-organ/in/run0/ep2.safetensors \\
      --manifest data-manifests/synth-organ.toml \\
      --split runs/quick/synth-organ/split.parquet \\
      --profile pipelines/quick.toml \\
      -o runs/quick/synth-organ/in/run0/ep2.steps.parquet

  # the paper's settings (100 edits, 3 inference runs, 192^3, on the GPU)
  clopa-simulate --model models/nnInteractive_v1.0 \\
      --manifest data-manifests/msd-liver.toml \\
      --split runs/paper/msd-liver/split.parquet \\
      --profile pipelines/paper.toml \\
      -o runs/paper/msd-liver/base/steps.parquet

Per holdout case and inference run: one initial click pair (background, then foreground), then
--edits steps of one click in the false positives and one in the false negatives, added to one
persistent session; each prediction is centred on the last click, with AutoZoom. Dice and NSD
(the manifest's tolerance, native spacing) are recorded after every step; after Dice 1 the
remaining steps repeat the final values. Clicks are seeded per (seed, case, inference run).

With --automatic there is no simulated user: each holdout case is segmented once, prompt-free, by
sliding-window inference, and the mean Dice is printed (`just expert-thresholds`).

Rerunning with the same inputs and settings skips an output that is already complete (its
provenance metadata records them, the weights' sha256 and the case files' sizes and times
included); --force recomputes. `-o -` writes the Parquet table to stdout.";

/// Simulate interactive segmentation of a task's holdout cases and record Dice/NSD per step.
///
/// Writes steps.parquet (DESIGN.md "Tables"): one row per (inference run, case, step). Settings
/// come from --profile (else the embedded pipelines/quick.toml, like every tool: 10 edits, 1
/// inference run; the paper's pipelines/paper.toml has 100 and 3), the patch size from the model
/// unless a profile or --patch is given, and flags override them. The model, checkpoints, split,
/// dataset and output place are checked before anything is computed, each case file when it is
/// read; on an error the table is not written (with --save-masks, the masks of the cases
/// finished before it stay, each whole).
#[derive(Parser, Debug)]
#[command(name = "clopa-simulate", version, after_help = AFTER_HELP, args_override_self = true)]
struct Cli {
    /// The clopa model folder (model.json + model.safetensors).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,

    /// Episode checkpoint(s) to apply to the model, in order (must name this base model).
    #[arg(long = "checkpoint", value_name = "CKPT")]
    checkpoints: Vec<PathBuf>,

    /// The task manifest (data-manifests/*.toml).
    #[arg(long, value_name = "M")]
    manifest: PathBuf,

    /// split.parquet; its holdout rows are the cases simulated.
    #[arg(long, value_name = "S")]
    split: PathBuf,

    /// Output steps.parquet (`-` for stdout).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,

    /// Edit steps after the initialisation [default: the profile's `edits`].
    #[arg(long, value_name = "N")]
    edits: Option<usize>,

    /// Inference runs per case [default: the profile's].
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    infer_runs: Option<usize>,

    /// Patch size, one number or X,Y,Z [default: the model's, or the profile's].
    #[arg(long, value_name = "P", value_parser = clopa_cli::parse_patch)]
    patch: Option<[usize; 3]>,

    /// Seed of the simulated clicks [default: the profile's].
    #[arg(long)]
    seed: Option<u64>,

    /// Pipeline profile supplying defaults (pipelines/*.toml) [default: the embedded
    /// pipelines/quick.toml].
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,

    /// Method name in the table [default: `base`, or the checkpoint's group].
    #[arg(long)]
    method: Option<String>,

    /// Training run in the table [default: the checkpoint's; none for base].
    #[arg(long)]
    run: Option<u32>,

    /// Root for relative dataset folders [default: $CLOPA_DATA, else ./data].
    #[arg(long, value_name = "DIR")]
    data_root: Option<PathBuf>,

    /// Worker threads [default: all cores]. Changes the speed, not the result.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Also write each final segmentation as DIR/<case>_infer<run>.nii.gz.
    #[arg(long, value_name = "DIR", value_parser = clopa_cli::not_stdout)]
    save_masks: Option<PathBuf>,

    /// Predict at zoom 1 only (no AutoZoom), for ablations.
    #[arg(long)]
    no_autozoom: bool,

    /// No simulated user: segment each holdout case once without prompts (nnU-Net sliding window,
    /// Gaussian-weighted, step ½ patch) and print the mean Dice. How a specialist trained with
    /// `clopa-train-episode --no-prompts` is scored for a task's expert threshold.
    #[arg(long, conflicts_with_all = ["edits", "infer_runs", "no_autozoom", "save_masks"])]
    automatic: bool,

    /// Device: cpu, cuda or cuda:N [default: the profile's `device`, else cpu].
    #[arg(long, value_name = "DEV", value_parser = clopa_cli::parse_device)]
    device: Option<String>,

    /// GPU convolutions: fp32, or fp16/bf16 with fp32 accumulation (PyTorch's autocast)
    /// [default: the profile's `precision`, else fp32; the CPU computes fp32].
    #[arg(long, value_name = "P", value_parser = ["fp32", "fp16", "bf16"])]
    precision: Option<String>,

    /// Recompute even when the output already holds a complete table with the same settings.
    #[arg(long)]
    force: bool,

    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    clopa_cli::run_main("clopa-simulate", cli.verbose, cli.quiet, || {
        // The SIMD level of the CPU kernels (for benchmarks; the library reads no environment).
        clopa_nn::ops::cap_isa(std::env::var("CLOPA_MAX_ISA").ok().as_deref())
            .map_err(anyhow::Error::msg)?;
        clopa_cli::set_threads(cli.threads)?;
        let data_root = cli
            .data_root
            .clone()
            .or_else(|| std::env::var_os("CLOPA_DATA").map(PathBuf::from));
        clopa_simulate::run(&clopa_simulate::Request {
            model: cli.model.clone(),
            checkpoints: cli.checkpoints.clone(),
            manifest: cli.manifest.clone(),
            split: cli.split.clone(),
            output: cli.output.clone(),
            edits: cli.edits,
            infer_runs: cli.infer_runs,
            patch: cli.patch,
            seed: cli.seed,
            profile: cli.profile.clone(),
            method: cli.method.clone(),
            run: cli.run,
            data_root,
            save_masks: cli.save_masks.clone(),
            no_autozoom: cli.no_autozoom,
            automatic: cli.automatic,
            device: cli.device.clone(),
            precision: cli.precision.clone(),
            force: cli.force,
            quiet: cli.quiet,
        })
        .map(|_| ())
    })
}
