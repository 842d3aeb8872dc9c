//! `clopa-simulate` (protocol step 4): the simulated interactive evaluation of one model (base or
//! episode checkpoint) on the holdout cases of one task, written as `steps.parquet`.
//!
//! Where things are: `main.rs` parses the arguments; [`run`] resolves the settings, checks every
//! input before anything is computed, loops over cases × inference runs with
//! [`clopa_interact::simulate_case`] and writes the table atomically; [`NetPredictor`] wraps the
//! candle `ResidualEncoderUNet` as a [`clopa_interact::Predictor`]; the cases come from
//! [`clopa_dataset`]. A finished `steps.parquet` whose provenance (tool, version, resolved
//! settings including the weights' sha256 and the case files' stamps, seed) and row count match
//! the request is kept as it is ([`Outcome::Skipped`]) unless [`Request::force`] is set.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use clopa_config::{Manifest, Profile};
use clopa_interact::{
    InferenceSession, Predictor, PredictorError, PromptConfig, SessionConfig, case_rng,
    simulate_case,
};
use clopa_nn::ResidualEncoderUNet;
use clopa_nn::model_folder::META_GROUP;
use clopa_table::{Provenance, SplitKind, StepRow};

/// The network as a [`Predictor`]: `[8, p0, p1, p2]` in, the two logits `[2, p0, p1, p2]` out.
pub struct NetPredictor {
    net: ResidualEncoderUNet,
    device: Device,
}

impl NetPredictor {
    pub fn new(net: ResidualEncoderUNet, device: Device) -> Self {
        NetPredictor { net, device }
    }
}

impl Predictor for NetPredictor {
    fn predict(&mut self, input: &[f32], patch: [usize; 3]) -> Result<Vec<f32>, PredictorError> {
        let c = input.len() / patch.iter().product::<usize>().max(1);
        let x = Tensor::from_slice(input, (1, c, patch[0], patch[1], patch[2]), &self.device)?;
        let y = self.net.forward(&x)?;
        Ok(y.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// Everything the tool was asked to do (flags as given; `None` = not given).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub model: PathBuf,
    pub checkpoints: Vec<PathBuf>,
    pub manifest: PathBuf,
    pub split: PathBuf,
    pub output: PathBuf,
    pub edits: Option<usize>,
    pub infer_runs: Option<usize>,
    pub patch: Option<[usize; 3]>,
    pub seed: Option<u64>,
    pub profile: Option<PathBuf>,
    pub method: Option<String>,
    pub run: Option<u32>,
    pub data_root: Option<PathBuf>,
    pub save_masks: Option<PathBuf>,
    pub no_autozoom: bool,
    /// No simulated user: one prompt-free sliding-window prediction per case (specialists).
    pub automatic: bool,
    /// `cpu`, `cuda` or `cuda:N` [default: the profile's `device`, else `cpu`].
    pub device: Option<String>,
    /// GPU convolutions in `fp32`, `fp16` or `bf16` [default: the profile's `precision`].
    pub precision: Option<String>,
    /// Recompute even when the output is already complete.
    pub force: bool,
    pub quiet: bool,
}

/// What [`run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The table was computed and written.
    Written,
    /// The output already held this exact request's table; nothing was computed.
    Skipped,
}

/// Whether a table's recorded provenance is this request's, however its paths were spelled. The
/// paths are recorded as typed; the checkpoints' and the split's are left out of the comparison
/// (what they name is compared by content: the checkpoints' sha256, the case ids), the model's
/// and the manifests' are compared by the files they name, so a rerun with `runs/q` spelled
/// `./runs/q` or from another folder keeps its table. What the manifest says (`target`: channel,
/// labels, component filter, NSD tolerance) is compared as recorded; a table from before it was
/// recorded (2026-11-28) is compared without it rather than recomputed.
fn same_request(old: &Provenance, new: &Provenance) -> bool {
    let old_has_target = old.settings.get("target").is_some();
    let comparable = |settings: &serde_json::Value| -> serde_json::Value {
        use serde_json::Value;
        fn resolve(v: &mut Value) {
            match v {
                Value::String(p) => {
                    if let Ok(real) = std::fs::canonicalize(&*p) {
                        *p = real.to_string_lossy().into_owned();
                    }
                }
                Value::Array(items) => items.iter_mut().for_each(resolve),
                _ => {}
            }
        }
        let mut s = settings.clone();
        for key in ["checkpoints", "split"] {
            if let Some(v) = s.get_mut(key) {
                *v = Value::Null;
            }
        }
        if !old_has_target && let Some(obj) = s.as_object_mut() {
            obj.remove("target");
        }
        for pointer in ["/model", "/manifest", "/profile/model", "/profile/tasks"] {
            if let Some(v) = s.pointer_mut(pointer) {
                resolve(v);
            }
        }
        s
    };
    old.tool == new.tool
        && old.version == new.version
        && old.seed == new.seed
        && comparable(&old.settings) == comparable(&new.settings)
}

/// True when `path` holds a readable table with exactly this provenance and `rows` rows.
fn is_complete(path: &Path, prov: &Provenance, rows: usize) -> bool {
    match clopa_table::read_provenance(path) {
        Ok(old) if same_request(&old, prov) => {}
        Ok(_) => {
            tracing::info!("{} exists with other settings; recomputing", path.display());
            return false;
        }
        Err(e) => {
            tracing::info!(
                "{} exists but is not usable ({e}); recomputing",
                path.display()
            );
            return false;
        }
    }
    match clopa_table::read_steps(path) {
        Ok(r) if r.len() == rows => true,
        Ok(r) => {
            tracing::info!(
                "{} has {} rows, expected {rows}; recomputing",
                path.display(),
                r.len()
            );
            false
        }
        Err(e) => {
            tracing::info!("{} is not readable ({e}); recomputing", path.display());
            false
        }
    }
}

/// The checkpoint's keys for the table.
#[derive(Debug, Clone, PartialEq)]
struct Keys {
    method: String,
    run: Option<u32>,
    episode: u32,
    n_seen: u32,
}

fn meta_u32(ck: &clopa_nn::EpisodeCheckpoint, key: &str) -> anyhow::Result<u32> {
    let v = ck
        .metadata
        .get(key)
        .with_context(|| format!("checkpoint {} has no metadata `{key}`", ck.path.display()))?;
    v.trim().parse().with_context(|| {
        format!(
            "checkpoint {}: metadata `{key}` = {v:?} is not a non-negative integer",
            ck.path.display()
        )
    })
}

fn keys(req: &Request) -> anyhow::Result<Keys> {
    let Some(last) = req.checkpoints.last() else {
        return Ok(Keys {
            method: req.method.clone().unwrap_or_else(|| "base".into()),
            run: req.run,
            episode: 0,
            n_seen: 0,
        });
    };
    let chain = req
        .checkpoints
        .iter()
        // clopa-nn's errors name the file already
        .map(|p| Ok(clopa_nn::read_episode_checkpoint(p)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    clopa_nn::check_chain(&chain)?;
    let ck = chain.last().expect("one checkpoint at least");
    // Everything the table needs, reported at once (flags stand in for group and run only).
    let missing: Vec<&str> = [META_GROUP, "clopa.run", "clopa.episode", "clopa.n_seen"]
        .into_iter()
        .filter(|k| !ck.metadata.contains_key(*k))
        .filter(|k| !(*k == META_GROUP && req.method.is_some()))
        .filter(|k| !(*k == "clopa.run" && req.run.is_some()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "checkpoint {} lacks the metadata {} that clopa-train-episode writes (--method and \
             --run can stand in for clopa.group and clopa.run, nothing for the others)",
            last.display(),
            missing.join(", ")
        );
    }
    let method = match &req.method {
        Some(m) => m.clone(),
        None => ck.metadata[META_GROUP].clone(),
    };
    let run = match req.run {
        Some(r) => Some(r),
        None => Some(meta_u32(ck, "clopa.run")?),
    };
    // Episode 0 is the base model's label in every table: a checkpoint claiming it would mix
    // its rows with the base's.
    let episode = meta_u32(ck, "clopa.episode")?;
    if episode == 0 {
        bail!(
            "checkpoint {}: metadata `clopa.episode` is 0, the base model's; episodes count from 1",
            last.display()
        );
    }
    Ok(Keys {
        method,
        run,
        episode,
        n_seen: meta_u32(ck, "clopa.n_seen")?,
    })
}

/// Runs the simulation and writes the table; nothing is written unless every input checks out.
/// An output that already holds this request's complete table is skipped unless `req.force`.
pub fn run(req: &Request) -> anyhow::Result<Outcome> {
    // settings: profile (or the embedded quick profile, as every tool), then flags
    let mut profile = match &req.profile {
        Some(p) => {
            Profile::load(p).with_context(|| format!("cannot load the profile {}", p.display()))?
        }
        None => Profile::quick()?,
    };
    let manifest = Manifest::load(&req.manifest)?;

    // model + checkpoints (a checkpoint for another base is refused here)
    let mut model = clopa_nn::load_model_folder(&req.model)
        .with_context(|| format!("cannot load the model folder {}", req.model.display()))?;
    let keys = keys(req)?;
    model.apply_checkpoints(&req.checkpoints)?;
    let model_patch = match model.meta.patch_size.as_slice() {
        [a, b, c] => [*a, *b, *c],
        other => bail!(
            "{}: model.json patch_size {other:?} is not 3D",
            req.model.display()
        ),
    };
    let patch = req.patch.unwrap_or(if req.profile.is_some() {
        profile.patch
    } else {
        model_patch
    });
    let stride = model.spec.total_stride();
    if patch.iter().any(|&p| p == 0 || p % stride != 0) {
        bail!("patch {patch:?} must be positive multiples of the network's total stride {stride}");
    }
    if let Some(e) = req.edits {
        profile.edits = e;
    }
    if let Some(r) = req.infer_runs {
        profile.infer_runs = r;
    }
    if req.automatic {
        // one prediction per case, no clicks: a single step 0 of a single run
        profile.edits = 0;
        profile.infer_runs = 1;
    }
    if let Some(s) = req.seed {
        profile.seed = s;
    }
    profile.patch = patch;
    if profile.infer_runs == 0 {
        bail!("--infer-runs must be at least 1");
    }
    if let Some(d) = &req.device {
        profile.device = d.clone();
    }
    if let Some(p) = &req.precision {
        profile.precision = p.clone();
    }
    let device = clopa_nn::device(&profile.device)?;
    // (part of the profile, so of the provenance: a table of another precision is not this one)
    clopa_nn::ops::set_conv_precision(profile.precision.parse().map_err(anyhow::Error::msg)?);
    let checkpoint_sha = req
        .checkpoints
        .iter()
        .map(|p| clopa_nn::sha256_file(p).with_context(|| format!("cannot read {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;

    // cases: the split's holdout rows of this task, then the dataset
    let split = clopa_table::read_split(&req.split)?;
    let holdout: Vec<_> = split
        .iter()
        .filter(|r| r.split == SplitKind::Holdout)
        .collect();
    if holdout.is_empty() {
        bail!(
            "split {} has no holdout rows: nothing to simulate",
            req.split.display()
        );
    }
    let mut ids: Vec<String> = holdout
        .iter()
        .filter(|r| r.task == manifest.name)
        .map(|r| r.case_id.clone())
        .collect();
    if ids.is_empty() {
        bail!(
            "split {} has holdout rows only for task {:?}, not for the manifest's task {:?}",
            req.split.display(),
            holdout[0].task,
            manifest.name
        );
    }
    if let Some(m) = profile.max_holdout {
        ids.truncate(m);
    }
    let dataset =
        clopa_dataset::Dataset::for_manifest(&manifest, &req.manifest, req.data_root.as_deref())?;
    let entries = ids
        .iter()
        .map(|id| dataset.case(id).map(|e| (id.clone(), e.clone())))
        .collect::<Result<Vec<_>, _>>()?;

    let prompts = PromptConfig {
        patch_size: patch,
        point_radius: model.meta.point_radius,
        decay: model.meta.interaction_decay,
        scheme: match model.meta.decay_scheme {
            clopa_nn::DecayScheme::PerType => clopa_interact::DecayScheme::PerType,
            clopa_nn::DecayScheme::Running => clopa_interact::DecayScheme::Running,
        },
    };
    let mut config = SessionConfig::new(prompts);
    config.autozoom = !req.no_autozoom;

    let settings = serde_json::json!({
        "model": req.model, "model_sha256": model.weights_sha256, "checkpoints": req.checkpoints,
        "checkpoints_sha256": checkpoint_sha, "manifest": req.manifest, "split": req.split,
        "method": keys.method, "run": keys.run, "episode": keys.episode, "n_seen": keys.n_seen,
        "edits": profile.edits, "infer_runs": profile.infer_runs, "patch": patch, "seed": profile.seed,
        "autozoom": !req.no_autozoom, "automatic": req.automatic, "device": profile.device, "cases": ids,
        // the cases' files as they are now (sizes, times): rewritten data is not this table's
        "case_files": dataset.stamp_digest(&ids, &manifest)?,
        "profile": profile.to_json(),
        // what the manifest says the structure is and how NSD scores it (a manifest edited in
        // place is another request)
        "target": {
            "channel": manifest.channel,
            "labels": manifest.labels,
            "largest_component": manifest.largest_component,
            "nsd_tolerance_mm": manifest.nsd_tolerance_mm,
        },
    });
    let prov = Provenance::new(
        "clopa-simulate",
        env!("CARGO_PKG_VERSION"),
        settings,
        profile.seed,
    );
    let expected_rows = entries.len() * profile.infer_runs * (profile.edits + 1);
    // With --save-masks the masks are outputs too: a table without them is not done.
    let masks_done = req.save_masks.as_ref().is_none_or(|dir| {
        entries
            .iter()
            .all(|(id, _)| (0..profile.infer_runs as u32).all(|r| mask_path(dir, id, r).is_file()))
    });
    if !req.force
        && !clopa_cli::is_stdout(&req.output)
        // (a folder in the output's place is not a table to recompute: check_output refuses it)
        && req.output.is_file()
        && masks_done
        && is_complete(&req.output, &prov, expected_rows)
    {
        tracing::info!(
            "{} is already complete with these settings; skipped (--force recomputes)",
            req.output.display()
        );
        if req.automatic {
            let rows = clopa_table::read_steps(&req.output)?;
            print_mean_dice(&manifest.name, &rows, &req.output);
        }
        return Ok(Outcome::Skipped);
    }

    // Fail now, not after hours of simulation, where the outputs cannot be written.
    clopa_cli::check_output(&req.output)?;
    if let Some(dir) = &req.save_masks {
        clopa_cli::check_output_dir(dir)?;
    }

    let net = model.network(&device)?;
    if req.automatic {
        let rows = automatic_rows(
            NetPredictor::new(net, device),
            (&dataset, &entries),
            &manifest,
            &keys,
            patch,
            req.quiet,
        )?;
        write_rows(&req.output, &rows, &prov)?;
        print_mean_dice(&manifest.name, &rows, &req.output);
        return Ok(Outcome::Written);
    }
    // The resolved settings, before the long part: a profile that lacks a key takes the paper's
    // value (e.g. 192³ patches), and without a terminal there is no progress bar to show it.
    tracing::info!(
        "{}: {} holdout cases x {} inference run(s) x (1 + {} edits) steps, patch {:?}, {} on {}",
        manifest.name,
        entries.len(),
        profile.infer_runs,
        profile.edits,
        patch,
        profile.precision,
        profile.device
    );
    let mut session = InferenceSession::new(NetPredictor::new(net, device), config)?;

    let pb = clopa_cli::progress_bar(
        (entries.len() * profile.infer_runs) as u64,
        "simulate",
        req.quiet,
    );
    let mut rows = Vec::new();
    for (id, entry) in &entries {
        let case = entry.load_checked(&dataset, &manifest)?;
        // A case's problems (a constant image) are its image file's: name it.
        let image = entry.image.display();
        for infer_run in 0..profile.infer_runs as u32 {
            pb.set_prefix(format!("{id} run {infer_run}"));
            let mut rng = case_rng(profile.seed, id, infer_run);
            let sim = simulate_case(
                &mut session,
                &case.image.data,
                &case.mask.data,
                case.mask.shape,
                case.mask.spacing,
                manifest.nsd_tolerance_mm,
                profile.edits,
                &mut rng,
            )
            .with_context(|| format!("case {id} ({image}), inference run {infer_run}"))?;
            let last = sim
                .steps
                .last()
                .map(|s| (s.dice, s.nsd))
                .unwrap_or_default();
            tracing::debug!(case = %id, infer_run, dice = last.0, nsd = last.1, "simulated");
            if let Some(dir) = &req.save_masks {
                save_mask(dir, id, infer_run, &case.mask, sim.segmentation)?;
            }
            rows.extend(sim.steps.into_iter().map(|s| StepRow {
                task: manifest.name.clone(),
                method: keys.method.clone(),
                run: keys.run,
                episode: keys.episode,
                n_seen: keys.n_seen,
                infer_run,
                case_id: id.clone(),
                step: s.step,
                dice: s.dice,
                nsd: s.nsd,
                fg_clicks: s.fg_clicks,
                bg_clicks: s.bg_clicks,
                seconds: s.seconds,
            }));
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    write_rows(&req.output, &rows, &prov)?;
    Ok(Outcome::Written)
}

fn write_rows(output: &Path, rows: &[StepRow], prov: &Provenance) -> anyhow::Result<()> {
    if clopa_cli::is_stdout(output) {
        clopa_table::write_steps_to(std::io::stdout(), rows, prov)?;
    } else {
        clopa_table::write_steps(output, rows, prov)?;
    }
    tracing::info!(rows = rows.len(), "wrote {}", output.display());
    Ok(())
}

/// `--automatic`: every case segmented once without prompts by nnU-Net's sliding window over
/// the z-scored image (step 0, no clicks), scored like a simulated step.
fn automatic_rows(
    mut predictor: NetPredictor,
    (dataset, entries): (
        &clopa_dataset::Dataset,
        &[(String, clopa_dataset::CaseFiles)],
    ),
    manifest: &Manifest,
    keys: &Keys,
    patch: [usize; 3],
    quiet: bool,
) -> anyhow::Result<Vec<StepRow>> {
    let pb = clopa_cli::progress_bar(entries.len() as u64, "automatic", quiet);
    let mut rows = Vec::with_capacity(entries.len());
    for (id, entry) in entries {
        pb.set_prefix(id.clone());
        let case = entry.load_checked(dataset, manifest)?;
        let t0 = std::time::Instant::now();
        let (image, _) =
            clopa_interact::zscore(&case.image.data, case.image.shape).with_context(|| {
                format!(
                    "case {id}: cannot normalise the image {}",
                    entry.image.display()
                )
            })?;
        let seg = clopa_interact::predict_automatic(&mut predictor, &image, case.mask.shape, patch)
            .with_context(|| format!("case {id}: automatic prediction failed"))?;
        let (dice, nsd) = clopa_metrics::is_validate::dice_nsd(
            &seg,
            &case.mask.data,
            case.mask.shape,
            case.mask.spacing,
            manifest.nsd_tolerance_mm,
        )
        .with_context(|| format!("case {id}: cannot score the prediction"))?;
        tracing::debug!(case = %id, dice, nsd, "automatic");
        rows.push(StepRow {
            task: manifest.name.clone(),
            method: keys.method.clone(),
            run: keys.run,
            episode: keys.episode,
            n_seen: keys.n_seen,
            infer_run: 0,
            case_id: id.clone(),
            step: 0,
            dice,
            nsd,
            fg_clicks: 0,
            bg_clicks: 0,
            seconds: t0.elapsed().as_secs_f64(),
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(rows)
}

/// The expert-threshold line of `--automatic`: on stdout, so a script can read it, unless the
/// table itself goes to stdout (`-o -`); then on stderr.
fn print_mean_dice(task: &str, rows: &[StepRow], output: &Path) {
    let mean = rows.iter().map(|r| r.dice).sum::<f64>() / rows.len().max(1) as f64;
    let line = format!("{task}: mean Dice {mean:.4} over {} cases", rows.len());
    if clopa_cli::is_stdout(output) {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

fn save_mask(
    dir: &Path,
    id: &str,
    infer_run: u32,
    like: &clopa_volume::Mask,
    seg: Vec<u8>,
) -> anyhow::Result<()> {
    let vol = clopa_volume::Volume::new(like.shape, like.spacing, like.affine, seg)?;
    let path = mask_path(dir, id, infer_run);
    clopa_cli::write_atomic_path(&path, |tmp| Ok(clopa_volume::write_nifti(tmp, &vol)?))
}

/// Where `--save-masks` puts the final mask of a case's inference run.
fn mask_path(dir: &Path, id: &str, infer_run: u32) -> PathBuf {
    dir.join(format!("{id}_infer{infer_run}.nii.gz"))
}
