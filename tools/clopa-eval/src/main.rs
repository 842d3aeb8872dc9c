//! `clopa-eval`: turns simulation step tables into per-case, per-episode and trajectory tables
//! (protocol step 5), and scores a single mask pair (`clopa-eval masks`).
//!
//! Where things are: `main.rs` parses arguments; `steps.rs` reads and validates `steps.parquet`
//! and `split.parquet`; `summary.rs` computes cases, episodes and trajectories with
//! `clopa-metrics`; `output.rs` builds the polars frames and writes them atomically with
//! provenance metadata.

mod output;
mod steps;
mod summary;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
Examples:
  # the base model and every CLoPA-I.N episode of a task, against the
  # manifest's expert Dice (clopa-reproduce's layout)
  clopa-eval runs/quick/synth-organ/base/steps.parquet \\
      runs/quick/synth-organ/in/run*/ep*.steps.parquet \\
      --manifest data-manifests/synth-organ.toml \\
      --split runs/quick/synth-organ/split.parquet \\
      -o runs/quick/synth-organ/eval

  # a fixed threshold, no trajectories (no split given)
  clopa-eval steps.parquet --threshold 0.9 -o eval/

  # Dice and NSD of one mask pair (IS_Validate convention for empty masks)
  clopa-eval masks --pred pred.nii.gz --ref label.nii.gz --tolerance-mm 1.0

Outputs (Parquet, schemas in DESIGN.md \"Tables\"): DIR/cases.parquet, DIR/episodes.parquet,
DIR/final.parquet and, with --split, DIR/trajectory.parquet (without it, an earlier run's
trajectory.parquet in DIR is removed). Each curve is first averaged over
inference runs; NoI is the 1-based index of the first step whose Dice is strictly above the
threshold (curve length if none). final.parquet (Table 2's input for clopa-rank) has the columns of
cases.parquet with `run` null: per case, the curves of every training run's final episode averaged
together before NoI and failure are taken, as the reference does.";

/// Evaluate interactive-segmentation step tables: cases, episodes and trajectories.
///
/// Reads one or more steps.parquet files (as written by clopa-simulate), averages each case's
/// Dice and NSD curves over inference runs, and writes per-case values (init, final, nAUC, NoI,
/// failure), per-episode dataset means (nNoI %, NoF %), the final episode's per-case values over
/// all training runs and, given the split, the stream trajectories with their AUC and NoS.
/// Invalid input (missing column, duplicated row, empty table, curves of different lengths,
/// threshold outside [0, 1]) is an error and nothing is written.
#[derive(Parser, Debug)]
#[command(
    name = "clopa-eval",
    version,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    eval: EvalArgs,

    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("thr").required(true).args(["threshold", "manifest"])))]
struct EvalArgs {
    /// steps.parquet files (one per method, run and episode, or any concatenation).
    #[arg(required = true, value_name = "STEPS")]
    steps: Vec<PathBuf>,

    /// Output folder for cases.parquet, episodes.parquet, final.parquet and trajectory.parquet.
    #[arg(short, long, value_name = "DIR", required = true, value_parser = clopa_cli::not_stdout)]
    output: Option<PathBuf>,

    /// Expert Dice threshold for NoI, NoF and NoS, in [0, 1].
    #[arg(long, value_name = "T", value_parser = clopa_cli::parse_unit_interval)]
    threshold: Option<f64>,

    /// Task manifest (TOML) whose `expert_dice` is the threshold.
    #[arg(long, value_name = "M")]
    manifest: Option<PathBuf>,

    /// split.parquet of the task(s): the stream length N per training run, for trajectories.
    #[arg(long, value_name = "SPLIT")]
    split: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Dice and NSD of one predicted mask against a reference, as one JSON line on stdout.
    ///
    /// Both files are NIfTI label maps on the same grid. The prediction's non-zero voxels are its
    /// foreground; the reference's are too, or with --label only those of the given label values
    /// (a task's `labels` in its manifest, e.g. one structure of a multi-label map). The spacing
    /// comes from the files. Empty masks follow the IS_Validate convention: both empty gives 1,
    /// one empty gives 0.
    #[command(
        after_help = "Examples:\n  clopa-eval masks --pred pred.nii.gz --ref label.nii.gz --tolerance-mm 1.0\n  \
                      # {\"dice\":0.912,\"nsd\":0.957}\n  \
                      # label 2 of a multi-label reference only:\n  \
                      clopa-eval masks --pred pred.nii.gz --ref label.nii.gz --label 2 \\\n      \
                      --tolerance-mm 1.0"
    )]
    Masks(MasksArgs),
}

#[derive(Args, Debug)]
struct MasksArgs {
    /// Predicted mask (.nii or .nii.gz).
    #[arg(long, value_name = "P")]
    pred: PathBuf,
    /// Reference mask (.nii or .nii.gz).
    #[arg(long = "ref", value_name = "R")]
    reference: PathBuf,
    /// NSD tolerance in mm.
    #[arg(long, value_name = "T", value_parser = parse_tolerance, allow_negative_numbers = true)]
    tolerance_mm: f64,
    /// Reference label value(s) that make its foreground, comma-separated or repeated; each must
    /// occur in the reference [default: every non-zero value].
    #[arg(
        long = "label",
        value_name = "L",
        value_delimiter = ',',
        value_parser = parse_label,
        allow_negative_numbers = true
    )]
    labels: Vec<u16>,
}

/// clap value parser for `--label`: a label value (0 is the background, not a label).
fn parse_label(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) => Err("0 is the background, not a label value".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("{s:?} is not a label value (1 to 65535)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    clopa_cli::run_main("clopa-eval", cli.verbose, cli.quiet, || match cli.command {
        Some(Command::Masks(args)) => run_masks(&args),
        None => run_eval(&cli.eval),
    })
}

/// clap value parser for `--tolerance-mm`: a bad value is a usage error (exit 2).
fn parse_tolerance(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a non-negative number of millimetres")),
    }
}

fn run_masks(args: &MasksArgs) -> anyhow::Result<()> {
    let read = |p: &Path| {
        clopa_volume::read_labels(p)
            .with_context(|| format!("cannot read the mask {}", p.display()))
    };
    let pred = read(&args.pred)?.map(|v| u8::from(*v != 0));
    let reference = read(&args.reference)?;
    let reference = if args.labels.is_empty() {
        reference.map(|v| u8::from(*v != 0))
    } else {
        // A label value the reference lacks is a typo or another dataset's numbering, not an
        // empty structure: scoring it would report the IS_Validate convention's 0 or 1.
        let present: std::collections::BTreeSet<u16> = reference.data.iter().copied().collect();
        let missing: Vec<u16> = args
            .labels
            .iter()
            .copied()
            .filter(|l| !present.contains(l))
            .collect();
        if !missing.is_empty() {
            // an image given as the reference has thousands of values: name the first few
            let mut values: Vec<String> = present.iter().take(12).map(u16::to_string).collect();
            if present.len() > values.len() {
                values.push(format!("… {} values in all", present.len()));
            }
            bail!(
                "label value(s) {missing:?} do not occur in {} (its values: {})",
                args.reference.display(),
                values.join(", ")
            );
        }
        reference.map(|v| u8::from(args.labels.contains(v)))
    };
    if let Some(what) = pred.grid_difference(&reference) {
        bail!(
            "{} and {} are not on the same grid ({what}; shape, spacing and affine must match)",
            args.pred.display(),
            args.reference.display(),
        );
    }
    let (dice, nsd) =
        clopa_metrics::volume::is_validate_dice_nsd(&pred, &reference, args.tolerance_mm)
            .with_context(|| {
                format!(
                    "cannot score {} against {}",
                    args.pred.display(),
                    args.reference.display()
                )
            })?;
    let line = serde_json::json!({ "dice": dice, "nsd": nsd });
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    Ok(())
}

fn run_eval(args: &EvalArgs) -> anyhow::Result<()> {
    let Some(out_dir) = &args.output else {
        bail!("-o DIR is required")
    };
    clopa_cli::check_output_dir(out_dir)?;
    // Each output file too, before the work: a folder in a file's place would otherwise fail
    // the last write and leave the first tables of a set beside it.
    for name in clopa_cli::outputs::EVAL {
        if name != clopa_cli::outputs::TRAJECTORY || args.split.is_some() {
            clopa_cli::check_output(&out_dir.join(name))?;
        }
    }
    let mut manifest_task = None;
    let (threshold, threshold_source) = match (args.threshold, &args.manifest) {
        (Some(t), _) => (t, "--threshold".to_string()),
        (None, Some(m)) => {
            let manifest = clopa_config::Manifest::load(m)
                .with_context(|| format!("cannot read the manifest {}", m.display()))?;
            manifest_task = Some((manifest.name.clone(), m));
            (
                manifest.expert_dice,
                format!("expert_dice of {}", m.display()),
            )
        }
        (None, None) => bail!("give --threshold T or --manifest M"),
    };
    if !(0.0..=1.0).contains(&threshold) {
        bail!("the threshold {threshold} ({threshold_source}) is outside [0, 1]");
    }

    let table = steps::read_steps(&args.steps)?;
    // The manifest's expert Dice is its task's: steps of another task would be scored against
    // the wrong threshold.
    if let Some((task, path)) = &manifest_task {
        let others: std::collections::BTreeSet<&str> = table
            .curves
            .keys()
            .map(|k| k.task.as_str())
            .filter(|t| t != task)
            .collect();
        if !others.is_empty() {
            bail!(
                "the step tables hold task(s) {others:?}, but the manifest {} is task {task:?}: \
                 its expert_dice is no threshold for them (one task per run; or --threshold)",
                path.display()
            );
        }
    }
    tracing::info!(
        "{} curves of {} steps from {} file(s)",
        table.curves.len(),
        table.n_steps,
        args.steps.len()
    );
    let cases = summary::cases(&table, threshold)?;
    let finals = summary::final_cases(&table, threshold)?;
    let episodes = summary::episodes(&cases, table.n_steps)?;
    let trajectories = match &args.split {
        Some(split_path) => {
            let (split, holdout) = steps::read_split(split_path)?;
            // The steps must come from this split's holdout: another split's stream lengths
            // would silently give other trajectories.
            if let Some(key) = table.curves.keys().find(|k| {
                holdout
                    .get(&k.task)
                    .is_none_or(|ids| !ids.contains(&k.case_id))
            }) {
                bail!(
                    "case {:?} of task {:?} in the step tables is not a holdout case of {} (were \
                     the steps simulated with another split?)",
                    key.case_id,
                    key.task,
                    split_path.display()
                );
            }
            Some(summary::trajectories(&episodes, &split, threshold)?)
        }
        None => {
            tracing::warn!("no --split given: trajectory.parquet is not written");
            None
        }
    };

    let settings = serde_json::json!({
        "threshold": threshold,
        "threshold_source": threshold_source,
        "steps": args.steps.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "split": args.split.as_ref().map(|p| p.display().to_string()),
        "n_steps": table.n_steps,
    });
    // Every frame is built before anything is written, so a bad input leaves no output at all.
    let mut frames = vec![
        ("cases.parquet", output::cases_frame(&cases)?),
        ("episodes.parquet", output::episodes_frame(&episodes)?),
        ("final.parquet", output::cases_frame(&finals)?),
    ];
    if let Some(t) = &trajectories {
        frames.push((clopa_cli::outputs::TRAJECTORY, output::trajectory_frame(t)?));
    }
    for (name, mut df) in frames {
        let path = out_dir.join(name);
        clopa_frame::write_parquet(
            &path,
            &mut df,
            clopa_frame::Writer {
                tool: "clopa-eval",
                version: env!("CARGO_PKG_VERSION"),
                settings: &settings,
            },
        )?;
        tracing::info!("wrote {} ({} rows)", path.display(), df.height());
    }
    // A trajectory of an earlier run with --split would sit beside tables it does not belong to.
    let stale = out_dir.join(clopa_cli::outputs::TRAJECTORY);
    if trajectories.is_none() && stale.is_file() {
        std::fs::remove_file(&stale)
            .with_context(|| format!("cannot remove the stale {}", stale.display()))?;
        tracing::warn!(
            "removed {}, an earlier run's (without --split there is none)",
            stale.display()
        );
    }
    Ok(())
}
