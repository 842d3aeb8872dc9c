//! `clopa-import`: convert an nnInteractive / nnU-Net model folder into a clopa model folder.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Convert an nnInteractive / nnU-Net model folder into a clopa model folder.
///
/// FOLDER holds plans.json, dataset.json (exactly 1 image channel), inference_session_class.json
/// and fold_0/checkpoint_final.pth. The checkpoint is read without Python; the 264 canonical
/// tensors are shape-checked against the plans' architecture and written as f32
/// model.safetensors next to model.json (architecture, channels, patch size, prompt settings,
/// source record).
#[derive(Parser, Debug)]
#[command(
    name = "clopa-import",
    version,
    after_help = "Example:\n  clopa-import nnInteractive_v1.0 -o models/nnInteractive_v1.0\n  clopa-model info models/nnInteractive_v1.0"
)]
struct Cli {
    /// The nnInteractive / nnU-Net model folder.
    folder: PathBuf,
    /// The clopa model folder to write (must be new or empty, unless --force).
    #[arg(short, long, value_name = "DIR", value_parser = clopa_cli::not_stdout)]
    output: PathBuf,
    /// Overwrite the model (model.json, model.safetensors) in an existing output folder.
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
    clopa_cli::run_main("clopa-import", cli.verbose, cli.quiet, || {
        clopa_model::check_new_model_folder(&cli.output, cli.force)?;
        clopa_model::import(&cli.folder, &cli.output)
    })
}
