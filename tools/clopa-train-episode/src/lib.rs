//! `clopa-train-episode` (protocol step 3): one CLoPA training episode of one training run, from
//! the base model (or the previous episode's checkpoint) to an episode checkpoint holding only
//! the tuned group's tensors, plus the epoch log.
//!
//! Where things are: `main.rs` parses the arguments; [`run`] resolves the settings (profile, then
//! flags), checks every input (split, model, checkpoint chain, cases) before training, calls
//! [`clopa_adapt::train_episode`] and writes the log and then the checkpoint atomically (an
//! existing checkpoint with its log that records the same base model and settings — the cache's
//! case ids, their files' stamps, the manifest's channel, labels and component filter and the
//! `--init` checkpoints' sha256 included — means the
//! episode is done, and a rerun skips it; other settings are trained again).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clopa_adapt::{AugmentConfig, EpisodeConfig, Progress, TrainCase, log_path, train_episode};
use clopa_config::{Manifest, Profile};
use clopa_dataset::Dataset;
use clopa_nn::model_folder::{META_BASE_SHA256, META_GROUP};
use clopa_nn::{ParamGroup, load_model_folder, read_episode_checkpoint, write_episode_checkpoint};
use clopa_table::Provenance;

/// Everything the tool was asked to do (flags as given; `None` = not given).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub model: PathBuf,
    pub manifest: PathBuf,
    pub split: PathBuf,
    pub run: u32,
    pub episode: u32,
    pub group: String,
    pub output: PathBuf,
    pub init: Vec<PathBuf>,
    pub profile: Option<PathBuf>,
    pub epochs: Option<usize>,
    pub steps_per_epoch: Option<usize>,
    pub patch: Option<[usize; 3]>,
    pub batch: Option<usize>,
    pub lr: Option<f64>,
    pub edits: Option<usize>,
    pub no_prompts: bool,
    pub no_augment: bool,
    pub seed: Option<u64>,
    pub data_root: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N` [default: the profile's `device`].
    pub device: Option<String>,
    /// GPU convolutions in `fp32` or `bf16` [default: the profile's `train_precision`].
    pub precision: Option<String>,
    /// Train even when the output exists with the same settings.
    pub force: bool,
    pub quiet: bool,
}

/// Profile (or the embedded quick profile, as every tool), then the flags.
pub fn resolve(req: &Request) -> anyhow::Result<(Profile, EpisodeConfig)> {
    let mut p = match &req.profile {
        Some(path) => Profile::load(path)?,
        None => Profile::quick()?,
    };
    if let Some(v) = req.epochs {
        p.epochs = v;
    }
    if let Some(v) = req.steps_per_epoch {
        p.steps_per_epoch = v;
    }
    if let Some(v) = req.patch {
        p.patch = v;
    }
    if let Some(v) = req.batch {
        p.batch = v;
    }
    if let Some(v) = req.lr {
        p.lr = v;
    }
    if let Some(v) = req.edits {
        p.train_edits = v;
    }
    if let Some(v) = req.seed {
        p.seed = v;
    }
    if let Some(v) = &req.device {
        p.device = v.clone();
    }
    if let Some(v) = &req.precision {
        p.train_precision = v.clone();
    }
    let cfg = EpisodeConfig {
        patch: p.patch,
        batch: p.batch,
        lr: p.lr,
        weight_decay: p.weight_decay,
        epochs: p.epochs,
        steps_per_epoch: p.steps_per_epoch,
        edits: p.train_edits,
        fg_probability: p.fg_probability,
        val_patches: p.val_patches,
        ema: p.ema,
        // Each (run, episode) gets its own stream so episodes of one run do not replay clicks.
        seed: p
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(u64::from(req.run) * 1_000 + u64::from(req.episode)),
        prompts: !req.no_prompts,
        augment: if req.no_augment {
            AugmentConfig::none()
        } else {
            AugmentConfig::intended()
        },
    };
    Ok((p, cfg))
}

/// Whether a checkpoint's recorded `clopa.config` is these settings, the `--init` paths aside:
/// they are recorded as typed, but the chain is compared by its bytes (`init_sha256`), so a
/// rerun with the run folder spelled otherwise (`runs/q`, `./runs/q`) keeps the checkpoint.
/// A checkpoint from before the manifest's `target` was recorded (2026-11-28) is compared
/// without it, rather than retraining every such episode once.
fn same_settings(recorded: Option<&String>, settings: &serde_json::Value) -> bool {
    let Some(old) = recorded.and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
    else {
        return false;
    };
    let old_has_target = old.get("target").is_some();
    let comparable = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("init".into(), serde_json::Value::Null);
            if !old_has_target {
                obj.remove("target");
            }
        }
        v
    };
    comparable(&old) == comparable(settings)
}

/// The episodes of training run `run` in a split, ascending.
fn run_episodes(rows: &[clopa_table::SplitRow], run: u32) -> Vec<u32> {
    let mut eps: Vec<u32> = rows
        .iter()
        .filter(|r| r.run == Some(run))
        .filter_map(|r| r.episode)
        .collect();
    eps.sort_unstable();
    eps.dedup();
    eps
}

/// `Request::episode` meaning "the run's last episode" (`--episode last`).
pub const LAST_EPISODE: u32 = u32::MAX;

/// Runs one episode and writes `req.output` and its log.
pub fn run(req: &Request) -> anyhow::Result<()> {
    // `last` trains on the run's final cache at once (specialists), not as a step of a chain
    let whole_stream = req.episode == LAST_EPISODE;
    let manifest = Manifest::load(&req.manifest)?;
    // The split's rows of the manifest's task (a split may hold several tasks).
    let all_rows = clopa_table::read_split(&req.split)?;
    let rows: Vec<_> = all_rows
        .iter()
        .filter(|r| r.task == manifest.name)
        .cloned()
        .collect();
    if all_rows.is_empty() {
        bail!("split {} has no rows", req.split.display());
    }
    if rows.is_empty() {
        let tasks: std::collections::BTreeSet<_> = all_rows.iter().map(|r| &r.task).collect();
        bail!(
            "split {} has rows only for task(s) {tasks:?}, not for the manifest's task {:?}",
            req.split.display(),
            manifest.name
        );
    }
    let concrete;
    let req = if whole_stream {
        let last = run_episodes(&rows, req.run)
            .last()
            .copied()
            .with_context(|| {
                format!(
                    "{}: run {} has no episodes, so it has no last one",
                    req.split.display(),
                    req.run
                )
            })?;
        concrete = Request {
            episode: last,
            ..req.clone()
        };
        &concrete
    } else {
        req
    };
    let log = log_path(&req.output);
    let group: ParamGroup = req
        .group
        .parse()
        .map_err(|e| anyhow::anyhow!("--group {:?}: {e}", req.group))?;
    let (profile, cfg) = resolve(req)?;
    // before any work: a device that is not built in or not there is the user's to fix first
    let device = clopa_nn::device(&profile.device)?;
    if profile.train_precision == "fp16" {
        // The loss gradients per voxel (~1e-7 at batch 2 and 128³, less at 192³) are at or below
        // fp16's smallest subnormal: without loss scaling every gradient would round to zero and
        // Adam would only apply weight decay. bf16 has fp32's exponent range.
        bail!(
            "precision fp16 cannot train here (no loss scaling: the gradients underflow); \
             use --precision bf16 or fp32 (fp16 is for clopa-simulate's inference)"
        );
    }
    clopa_nn::ops::set_conv_precision(
        profile
            .train_precision
            .parse()
            .map_err(anyhow::Error::msg)?,
    );

    // --- the cache of this episode
    let (train_ids, val_ids) = clopa_schedule::cache_at(&rows, req.run, req.episode);
    let exists = rows
        .iter()
        .any(|r| r.run == Some(req.run) && r.episode == Some(req.episode));
    if run_episodes(&rows, req.run).is_empty() {
        let mut runs: Vec<u32> = rows.iter().filter_map(|r| r.run).collect();
        runs.sort_unstable();
        runs.dedup();
        bail!(
            "{}: there is no training run {} (the split's runs: {runs:?})",
            req.split.display(),
            req.run
        );
    }
    if !exists {
        bail!(
            "{}: run {} has no episode {} (its episodes: {:?})",
            req.split.display(),
            req.run,
            req.episode,
            run_episodes(&rows, req.run)
        );
    }
    if train_ids.is_empty() {
        bail!(
            "{}: the cache of run {} at episode {} holds no training case (only {} validation \
             case(s)): nothing to train on",
            req.split.display(),
            req.run,
            req.episode,
            val_ids.len()
        );
    }
    let n_seen = train_ids.len() + val_ids.len();

    // --- the incoming model: base + checkpoint chain
    let mut model = load_model_folder(&req.model)
        .with_context(|| format!("cannot load the model folder {}", req.model.display()))?;
    let base_sha = model.weights_sha256.clone();

    // --- done already? The settings are what the checkpoint records; same settings and base
    // mean the same result (training is seeded), other settings mean this output is stale.
    // What the episode learns from is part of them: its cases (a new split with the same counts
    // is other data), their files as they are now (sizes, times: rewritten data is other data)
    // and the bytes of the --init chain (a retrained episode E − 1 is another start).
    let ds = Dataset::for_manifest(&manifest, &req.manifest, req.data_root.as_deref())?;
    let cases: Vec<&str> = train_ids.iter().chain(&val_ids).copied().collect();
    let case_files = ds.stamp_digest(&cases, &manifest)?;
    let init_sha256 = req
        .init
        .iter()
        .map(|p| {
            clopa_nn::sha256_file(p)
                .with_context(|| format!("cannot read the checkpoint {}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let settings = serde_json::json!({
        "group": group.name(),
        "run": req.run,
        "episode": req.episode,
        "n_seen": n_seen,
        "train_cases": train_ids,
        "val_cases": val_ids,
        "case_files": case_files,
        "init": req.init.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "init_sha256": init_sha256,
        "precision": profile.train_precision,
        "train": cfg,
        // what the manifest says the structure is (its NSD tolerance and expert Dice only
        // matter to evaluation): a manifest edited in place is other training data
        "target": {
            "channel": manifest.channel,
            "labels": manifest.labels,
            "largest_component": manifest.largest_component,
        },
    });
    if req.output.is_file() && log.is_file() {
        // Done only when both outputs read back whole and record this base and these settings.
        let stale = match (
            read_episode_checkpoint(&req.output),
            clopa_adapt::read_epoch_log(&log),
        ) {
            (Err(e), _) => Some(format!("cannot be read ({e})")),
            (_, Err(e)) => Some(format!("has a log that cannot be read ({e})")),
            (Ok(c), _) if c.metadata.get(META_BASE_SHA256) != Some(&base_sha) => {
                Some("is from another base model".to_string())
            }
            (Ok(c), _) if !same_settings(c.metadata.get("clopa.config"), &settings) => {
                Some("was trained with other settings".to_string())
            }
            _ => None,
        };
        match stale {
            None if !req.force => {
                tracing::info!(
                    "{} and {} exist with these settings: episode done, skipping (--force \
                     retrains)",
                    req.output.display(),
                    log.display()
                );
                return Ok(());
            }
            None => {}
            Some(why) => tracing::info!("{} {why}; retraining", req.output.display()),
        }
    }
    clopa_cli::check_output(&req.output)?;

    if req.episode > 1 && req.init.is_empty() && !whole_stream {
        bail!(
            "episode {} warm-starts from episode {}'s checkpoint: pass it with --init",
            req.episode,
            req.episode - 1
        );
    }
    let chain = req
        .init
        .iter()
        // clopa-nn's errors name the file already
        .map(|ck| Ok(read_episode_checkpoint(ck)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // One run and group in ascending episodes (clopa_nn::check_chain), of this group, and
    // episode E warm-starts from episode E − 1 of its own run: the last --init.
    clopa_nn::check_chain(&chain)?;
    for c in &chain {
        if let Some(g) = c.metadata.get(META_GROUP)
            && g != group.name()
        {
            bail!(
                "--init {} was trained with group `{g}`, not `{}`",
                c.path.display(),
                group.name()
            );
        }
    }
    if let Some(c) = chain.last()
        && !whole_stream
    {
        let meta = |k: &str| c.metadata.get(k).and_then(|v| v.trim().parse::<u32>().ok());
        if let Some(r) = meta("clopa.run")
            && r != req.run
        {
            bail!(
                "--init {} is from training run {r}, not run {}",
                c.path.display(),
                req.run
            );
        }
        if let Some(e) = meta("clopa.episode")
            && e.checked_add(1) != Some(req.episode)
        {
            bail!(
                "--init {} is episode {e}; episode {} warm-starts from episode {}",
                c.path.display(),
                req.episode,
                req.episode - 1
            );
        }
    }
    model
        .apply_checkpoints(&req.init)
        .context("cannot apply the --init checkpoint(s)")?;
    cfg.validate(&model.spec)?;

    // --- cases
    let load = |ids: &[&str]| -> anyhow::Result<Vec<TrainCase>> {
        ids.iter()
            .map(|id| {
                let files = ds.case(id)?;
                let case = files.load_checked(&ds, &manifest)?;
                // The case's problems (a constant image) are the image file's: name it.
                TrainCase::new(id, &case.image, &case.mask)
                    .with_context(|| format!("image {}", files.image.display()))
            })
            .collect()
    };
    let train = load(&train_ids)?;
    let val = load(&val_ids)?;
    tracing::info!(
        "run {} episode {}: {} train + {} val cases, group `{}`, {} x {} steps, patch {:?}",
        req.run,
        req.episode,
        train.len(),
        val.len(),
        group.name(),
        cfg.epochs,
        cfg.steps_per_epoch,
        cfg.patch
    );

    // --- train
    let mut params = model.param_store();
    params.make_trainable(group.names(&model.spec))?;
    let prompt = clopa_adapt::prompt_config(&model.meta);
    let pb = clopa_cli::progress_bar(
        (cfg.epochs * cfg.steps_per_epoch) as u64,
        &format!("episode {}", req.episode),
        req.quiet,
    );
    let out = train_episode(
        &model.spec,
        &mut params,
        &prompt,
        &train,
        &val,
        &cfg,
        &device,
        &mut |p| match p {
            Progress::Step { loss, .. } => {
                pb.inc(1);
                pb.set_prefix(format!("loss {loss:.4}"));
            }
            Progress::Validated { epoch, score, ema } => {
                tracing::debug!("epoch {epoch}: validation {score:.4} (smoothed {ema:.4})");
            }
        },
    )?;
    pb.finish_and_clear();
    tracing::info!(
        "selected epoch {} (0 = the incoming model)",
        out.selected_epoch
    );

    // A diverged run (too high a learning rate) must not become a checkpoint that later
    // episodes warm-start from.
    for (name, t) in &out.selected {
        if !clopa_nn::all_finite(t)? {
            bail!(
                "training diverged: tensor `{name}` of the selected model is not finite (NaN or \
                 infinite) — try a lower --lr; nothing was written"
            );
        }
    }

    // --- outputs: the log first, the checkpoint last (its presence means done)
    let prov = Provenance::new(
        "clopa-train-episode",
        env!("CARGO_PKG_VERSION"),
        settings.clone(),
        cfg.seed,
    );
    clopa_adapt::write_epoch_log(&log, &out.log, &prov)?;
    let mut meta = BTreeMap::new();
    meta.insert(META_BASE_SHA256.to_string(), base_sha);
    meta.insert(META_GROUP.to_string(), group.name().to_string());
    meta.insert("clopa.run".to_string(), req.run.to_string());
    meta.insert("clopa.episode".to_string(), req.episode.to_string());
    meta.insert("clopa.n_seen".to_string(), n_seen.to_string());
    meta.insert("clopa.config".to_string(), settings.to_string());
    meta.insert(
        "clopa.selected_epoch".to_string(),
        out.selected_epoch.to_string(),
    );
    write_episode_checkpoint(&req.output, &out.selected, &meta)
        .with_context(|| format!("cannot write {}", req.output.display()))?;
    Ok(())
}
