//! `clopa-model`: inspect a model folder and run the network on a tensor.
//!
//! `info` counts parameters per group of a clopa model folder or an nnInteractive / nnU-Net
//! model folder; `forward` runs a clopa model folder on a safetensors input. The work is in
//! `lib.rs`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Inspect a model folder and run the network.
#[derive(Parser, Debug)]
#[command(
    name = "clopa-model",
    version,
    after_help = "Examples:\n  clopa-import nnInteractive_v1.0 -o models/nninteractive_v1\n  clopa-model info models/nninteractive_v1 --json\n  clopa-model forward models/nninteractive_v1 --input patch.safetensors -o logits.safetensors"
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
        after_help = "Example:\n  clopa-model forward models/nninteractive_v1 --input x.safetensors -o logits.safetensors"
    )]
    Forward {
        /// The clopa model folder.
        dir: PathBuf,
        /// Safetensors file holding `x`.
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors file (`-` for stdout).
        #[arg(short, long)]
        output: PathBuf,
        /// Episode checkpoint(s) to apply first, in order.
        #[arg(long = "checkpoint")]
        checkpoints: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    clopa_cli::run_main("clopa-model", cli.verbose, cli.quiet, || {
        match cli.command {
            Command::Info { path, json } => {
                clopa_model::info(&path, json, &mut std::io::stdout().lock())
            }
            Command::Forward {
                dir,
                input,
                output,
                checkpoints,
            } => clopa_model::forward(&dir, &checkpoints, &input, &output),
        }
    })
}
