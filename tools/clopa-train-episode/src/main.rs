//! `clopa-train-episode`: argument parsing; the work is in `lib.rs` (`clopa_train_episode::run`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

const AFTER_HELP: &str = "\
Examples:
  # episode 1 of training run 0, CLoPA-I.N, quick profile (reproduce's layout)
  clopa-train-episode --model models/clopa-tiny \\
      --manifest data-manifests/synth-organ.toml \\
      --split runs/quick/synth-organ/split.parquet --run 0 --episode 1 \\
      --group in --profile pipelines/quick.toml \\
      -o runs/quick/synth-organ/in/run0/ep1.safetensors

  # episode 2 warm-starts from episode 1
  clopa-train-episode ... --episode 2 \\
      --init runs/quick/synth-organ/in/run0/ep1.safetensors \\
      -o runs/quick/synth-organ/in/run0/ep2.safetensors

  # a specialist (expert threshold): every parameter, no prompts, the run's
  # final cache
  clopa-train-episode ... --episode last --group all --no-prompts \\
      -o runs/experts/synth-organ.safetensors

Writes CKPT (safetensors: only the group's tensors, metadata clopa.base_sha256, clopa.group,
clopa.run, clopa.episode, clopa.n_seen, clopa.selected_epoch, clopa.config) and CKPT's stem +
.log.parquet (per epoch: train_loss, val_score, val_ema, selected, seconds). An existing CKPT
with its log is skipped when it records the same base model and settings (--force retrains); with
other settings, or when either file does not read back whole, it is retrained.
The settings include the cache's case ids, their files' sizes and times, and the sha256 of each
--init checkpoint.";

/// A count of 1 or more: 0 epochs, steps or patches would write an untrained checkpoint as if
/// trained, so it is a usage error (exit 2) like the profile's check.
fn at_least_1() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// Train one CLoPA episode: tune one parameter group on the cache's cases with simulated clicks.
///
/// Each gradient step draws --batch cache cases, cuts one augmented patch from each (centred on
/// foreground or background), and runs an initialisation pass plus --edits edit passes of
/// simulated clicks, backpropagating (1 - soft Dice + CE) / passes at every pass; Adam (coupled
/// L2 weight decay) steps once per gradient step. The incoming model and every epoch are scored
/// on seeded validation patches (mean normalised Dice-AUC, smoothed); the best is kept, and the
/// incoming model is returned unchanged when no epoch beats it.
#[derive(Parser, Debug)]
#[command(name = "clopa-train-episode", version, after_help = AFTER_HELP, args_override_self = true)]
struct Cli {
    /// The base clopa model folder (model.json + model.safetensors).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,

    /// The task manifest (data-manifests/*.toml).
    #[arg(long, value_name = "M")]
    manifest: PathBuf,

    /// split.parquet (clopa-split); the cache of --run at --episode is trained on.
    #[arg(long, value_name = "S")]
    split: PathBuf,

    /// Training run (0-based).
    #[arg(long, value_name = "R")]
    run: u32,

    /// Episode (1-based), or `last`: the run's final cache, up to its last episode (specialists).
    #[arg(long, value_name = "E", value_parser = parse_episode)]
    episode: u32,

    /// Parameter group to tune: in (instance norms), cn (in + stem conv + seg head), all.
    #[arg(long, value_name = "G", value_parser = ["in", "cn", "all"])]
    group: String,

    /// Output episode checkpoint (.safetensors; its log goes beside it).
    #[arg(short, long, value_name = "CKPT", value_parser = clopa_cli::not_stdout)]
    output: PathBuf,

    /// Train even when CKPT and its log exist with the same settings.
    #[arg(long)]
    force: bool,

    /// Checkpoint(s) of the previous episode(s) to start from, applied in order (needed for E > 1).
    #[arg(long, value_name = "CKPT")]
    init: Vec<PathBuf>,

    /// Pipeline profile supplying defaults (pipelines/*.toml) [default: the embedded pipelines/quick.toml].
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,

    /// Epochs [default: the profile's].
    #[arg(long, value_name = "N", value_parser = at_least_1())]
    epochs: Option<usize>,

    /// Gradient steps per epoch [default: the profile's].
    #[arg(long, value_name = "N", value_parser = at_least_1())]
    steps_per_epoch: Option<usize>,

    /// Patch size, one number or X,Y,Z [default: the profile's].
    #[arg(long, value_name = "P", value_parser = clopa_cli::parse_patch)]
    patch: Option<[usize; 3]>,

    /// Patches (cases) per gradient step [default: the profile's].
    #[arg(long, value_name = "N", value_parser = at_least_1())]
    batch: Option<usize>,

    /// Adam learning rate [default: the profile's].
    // a negative value reaches the settings' check ("must be finite and >= 0") instead of clap's
    // "unexpected argument '-1'"
    #[arg(long, value_name = "LR", allow_negative_numbers = true)]
    lr: Option<f64>,

    /// Edit passes after the initialisation pass [default: the profile's `train_edits`; the
    /// profile's `edits` is clopa-simulate's --edits].
    #[arg(long, visible_alias = "train-edits", value_name = "N")]
    edits: Option<usize>,

    /// Train without prompts (one pass, prompt channels zero): specialist models.
    #[arg(long)]
    no_prompts: bool,

    /// Train without augmentation.
    #[arg(long)]
    no_augment: bool,

    /// Seed of patches, augmentation and clicks [default: the profile's]. Each (run, episode)
    /// draws from its own stream, seed · 1000003 + run · 1000 + episode, which is the seed the
    /// log and clopa.config record. On the CPU a run is repeated bit for bit with the same seed,
    /// whatever the number of threads.
    #[arg(long)]
    seed: Option<u64>,

    /// Root for relative dataset folders [default: $CLOPA_DATA, else ./data].
    #[arg(long, value_name = "DIR")]
    data_root: Option<PathBuf>,

    /// Device: cpu, cuda or cuda:N [default: the profile's `device`, else cpu].
    #[arg(long, value_name = "DEV", value_parser = clopa_cli::parse_device)]
    device: Option<String>,

    /// GPU convolutions: fp32, or bf16 with fp32 accumulation (PyTorch's autocast; fp16 is
    /// refused: without loss scaling its gradients underflow) [default: the profile's
    /// `train_precision`, else fp32; the CPU computes fp32].
    #[arg(long, value_name = "P", value_parser = parse_train_precision)]
    precision: Option<String>,

    /// Worker threads [default: all cores]. Changes the speed, not the result.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long)]
    quiet: bool,
}

fn parse_episode(s: &str) -> Result<u32, String> {
    if s == "last" {
        return Ok(clopa_train_episode::LAST_EPISODE);
    }
    match s.parse::<u32>() {
        Ok(e) if e >= 1 && e != clopa_train_episode::LAST_EPISODE => Ok(e),
        _ => Err(format!(
            "expected an episode number >= 1 or `last`, got {s:?}"
        )),
    }
}

/// `--precision`: fp32 or bf16. fp16 is a usage error with its reason (a profile's
/// `train_precision = "fp16"` is refused by the tool itself, with the same reason).
fn parse_train_precision(s: &str) -> Result<String, String> {
    match s {
        "fp32" | "bf16" => Ok(s.to_string()),
        "fp16" => Err(
            "fp16 cannot train here (no loss scaling: the gradients underflow); \
                       use bf16 or fp32 (fp16 is for clopa-simulate's inference)"
                .into(),
        ),
        _ => Err("expected fp32 or bf16".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    clopa_cli::run_main("clopa-train-episode", cli.verbose, cli.quiet, || {
        // The SIMD level of the CPU kernels (for benchmarks; the library reads no environment).
        clopa_nn::ops::cap_isa(std::env::var("CLOPA_MAX_ISA").ok().as_deref())
            .map_err(anyhow::Error::msg)?;
        clopa_cli::set_threads(cli.threads)?;
        let data_root = cli
            .data_root
            .clone()
            .or_else(|| std::env::var_os("CLOPA_DATA").map(PathBuf::from));
        clopa_train_episode::run(&clopa_train_episode::Request {
            model: cli.model.clone(),
            manifest: cli.manifest.clone(),
            split: cli.split.clone(),
            run: cli.run,
            episode: cli.episode,
            group: cli.group.clone(),
            output: cli.output.clone(),
            init: cli.init.clone(),
            profile: cli.profile.clone(),
            epochs: cli.epochs,
            steps_per_epoch: cli.steps_per_epoch,
            patch: cli.patch,
            batch: cli.batch,
            lr: cli.lr,
            edits: cli.edits,
            no_prompts: cli.no_prompts,
            no_augment: cli.no_augment,
            seed: cli.seed,
            data_root,
            device: cli.device.clone(),
            precision: cli.precision.clone(),
            force: cli.force,
            quiet: cli.quiet,
        })
    })
}
