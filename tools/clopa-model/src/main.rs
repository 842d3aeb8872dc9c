//! `clopa-model`: inspect a model folder and run the network on a tensor.
//!
//! `info` counts parameters per group of a clopa model folder or an nnInteractive / nnU-Net
//! model folder; `forward` runs a clopa model folder on a safetensors input; `init` writes a
//! model folder with fresh weights; `bake` folds episode checkpoints into a new model folder. The work is in
//! `lib.rs`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Inspect a model folder and run the network.
#[derive(Parser, Debug)]
#[command(
    name = "clopa-model",
    version,
    after_help = "Examples:\n  clopa-import nnInteractive_v1.0 -o models/nnInteractive_v1.0\n  clopa-model info models/nnInteractive_v1.0 --json\n  clopa-model forward models/nnInteractive_v1.0 --input patch.safetensors \\\n      -o logits.safetensors\n  clopa-model init --arch tiny --patch 48 --seed 0 -o models/random-tiny\n  clopa-model bake models/random-tiny --checkpoint ep1.safetensors \\\n      -o models/my-tiny"
)]
struct Cli {
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Parameter counts: total and per group (in, cn, all).
    ///
    /// PATH is a clopa model folder (model.json) or an nnInteractive / nnU-Net model folder
    /// (plans.json, dataset.json, inference_session_class.json; no checkpoint needed).
    #[command(
        after_help = "Example:\n  clopa-model info nnInteractive_v1.0 --json\n  {\"total\": 102355818, \"groups\": {\"all\": 102355818, \"cn\": 34658, \"in\": 27648}}"
    )]
    Info {
        /// The model folder.
        path: PathBuf,
        /// Print `{"total": n, "groups": {"in": n, "cn": n, "all": n}}`.
        #[arg(long)]
        json: bool,
    },
    /// Logits of the network on tensor `x` (B, C, D, H, W), f16 or f32.
    ///
    /// Writes a safetensors file with `logits` (B, classes, D, H, W) f32. D, H and W must be
    /// multiples of the network's total stride (32 for nnInteractive).
    #[command(
        after_help = "Example:\n  clopa-model forward models/nnInteractive_v1.0 --input x.safetensors \\\n      -o logits.safetensors"
    )]
    Forward {
        /// The clopa model folder.
        dir: PathBuf,
        /// Safetensors file holding `x`.
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors file (`-` for stdout).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Episode checkpoint(s) to apply first, in order.
        #[arg(long = "checkpoint")]
        checkpoints: Vec<PathBuf>,
        /// Device: cpu, cuda or cuda:N.
        #[arg(long, value_name = "DEV", default_value = "cpu", value_parser = clopa_cli::parse_device)]
        device: String,
    },
    /// A model folder with freshly initialised weights (He init, as dynamic-network-architectures).
    ///
    /// An interactive ResidualEncoderUNet with 8 input channels (image + 7 prompt channels) and 2
    /// classes. The same arguments and seed always give the same model.safetensors.
    #[command(
        after_help = "Examples:\n  clopa-model init --arch tiny --patch 48 --seed 0 -o models/random-tiny\n  clopa-model init --arch tiny --features 8,16,32,64,128 --blocks 1,2,2,2,2 \\\n      --patch 64 -o models/tiny5"
    )]
    Init {
        /// Architecture family supplying the defaults.
        #[arg(long, value_enum, default_value = "tiny")]
        arch: Arch,
        /// Number of stages [default: the family's].
        #[arg(long)]
        stages: Option<usize>,
        /// Features per stage, comma-separated [default: the family's].
        #[arg(long, value_delimiter = ',')]
        features: Option<Vec<usize>>,
        /// Residual blocks per stage, comma-separated [default: the family's].
        #[arg(long, value_delimiter = ',')]
        blocks: Option<Vec<usize>>,
        /// Cubic patch size recorded in model.json (a multiple of the total stride).
        #[arg(long, value_parser = parse_cube, allow_negative_numbers = true)]
        patch: usize,
        /// Seed of the weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output model folder (must be new or empty, unless --force).
        #[arg(short, long, value_name = "DIR", value_parser = clopa_cli::not_stdout)]
        output: PathBuf,
        /// Overwrite the model (model.json, model.safetensors) in an existing output folder.
        #[arg(long)]
        force: bool,
    },
    /// Fold a chain of episode checkpoints into a new model folder.
    ///
    /// The checkpoints are applied in order (each must name DIR's model.safetensors as its base);
    /// NEWDIR gets new weights (a new sha256) and a model.json recording the base and checkpoints.
    #[command(
        after_help = "Example:\n  clopa-model bake models/random-tiny --checkpoint pretrain/ep1.safetensors \\\n      -o models/my-tiny"
    )]
    Bake {
        /// The base model folder.
        dir: PathBuf,
        /// Episode checkpoint(s) to apply, in order.
        #[arg(long = "checkpoint", required = true)]
        checkpoints: Vec<PathBuf>,
        /// Output model folder (must be new or empty, unless --force).
        #[arg(short, long, value_name = "DIR", value_parser = clopa_cli::not_stdout)]
        output: PathBuf,
        /// Overwrite the model (model.json, model.safetensors) in an existing output folder.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Arch {
    /// 4 stages, features 8-16-32-64, blocks 1-2-2-2.
    Tiny,
    /// nnInteractive v1.0: 6 stages, features 32-64-128-256-320-320, blocks 1-3-4-6-6-6.
    V1,
}

/// `init --patch`: one side of a cube (the other tools' `--patch` also take X,Y,Z; a model's
/// own patch is a cube).
fn parse_cube(s: &str) -> Result<usize, String> {
    s.trim().parse::<usize>().map_err(|_| {
        format!("expected one whole number, the side of a cubic patch (e.g. 48), got {s:?}")
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // init's architecture arguments depend on each other (features per stage, a patch that the
    // total stride divides): checked before anything runs, a bad combination is a usage error
    // (exit 2) like a bad single value.
    let init = match &cli.command {
        Command::Init {
            arch,
            stages,
            features,
            blocks,
            patch,
            seed,
            ..
        } => {
            let opts = clopa_model::init::InitOptions {
                arch: match arch {
                    Arch::Tiny => clopa_model::init::ArchPreset::Tiny,
                    Arch::V1 => clopa_model::init::ArchPreset::V1,
                },
                stages: *stages,
                features: features.clone(),
                blocks: blocks.clone(),
                patch: *patch,
                seed: *seed,
            };
            match clopa_model::init::init_meta(&opts) {
                Ok(meta) => Some((meta, opts.seed)),
                // Raised on `init`'s own command, so that the usage line shown is init's.
                Err(e) => {
                    let mut cli_cmd = Cli::command();
                    cli_cmd.build();
                    let init_cmd = cli_cmd
                        .find_subcommand_mut("init")
                        .expect("clopa-model has an init subcommand");
                    init_cmd
                        .error(clap::error::ErrorKind::ValueValidation, format!("{e:#}"))
                        .exit()
                }
            }
        }
        _ => None,
    };
    clopa_cli::run_main("clopa-model", cli.verbose, cli.quiet, || {
        // The SIMD level of the CPU kernels (for benchmarks; the library reads no environment).
        clopa_nn::ops::cap_isa(std::env::var("CLOPA_MAX_ISA").ok().as_deref())
            .map_err(anyhow::Error::msg)?;
        match cli.command {
            Command::Info { path, json } => {
                clopa_model::info(&path, json, &mut std::io::stdout().lock())
            }
            Command::Forward {
                dir,
                input,
                output,
                checkpoints,
                device,
            } => clopa_model::forward(&dir, &checkpoints, &input, &output, &device),
            Command::Init { output, force, .. } => {
                clopa_model::check_new_model_folder(&output, force)?;
                let (meta, seed) = init.expect("set above for init");
                clopa_model::init::init(&meta, seed, &output)
            }
            Command::Bake {
                dir,
                checkpoints,
                output,
                force,
            } => {
                clopa_model::check_new_model_folder(&output, force)?;
                clopa_model::init::bake(&dir, &checkpoints, &output)
            }
        }
    })
}
