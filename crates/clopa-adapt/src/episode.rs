//! One training episode: epochs of gradient steps on the cache's training cases, validation of
//! the incoming model and after every epoch, and selection of the best smoothed score.
//!
//! Randomness: one `ChaCha8Rng` seeded with `cfg.seed` drives case choice, patch centres,
//! augmentation and training clicks in that order; the validation patches and clicks come from a
//! seed drawn from it first, re-created at every validation so each epoch (and epoch 0) is scored
//! on the very same patches and clicks.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use clopa_interact::PromptConfig;
use clopa_nn::{ParamStore, ResidualEncoderUNet, UNetSpec};

use crate::augment::{AugmentConfig, augment};
use crate::error::{AdaptError, Result};
use crate::r#loop::{GradAccumulator, LoopConfig, interaction_loop};
use crate::optim::{Adam, AdamConfig};
use crate::patch::{Patch, TrainCase, sample_patch};

/// Every setting of an episode (the resolved profile keys plus `prompts` and augmentation).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpisodeConfig {
    /// Patch size `[x, y, z]`; each axis a multiple of the network's total stride.
    pub patch: [usize; 3],
    /// Patches (cases) per gradient step.
    pub batch: usize,
    /// Adam learning rate (constant).
    pub lr: f64,
    /// Coupled L2 weight decay.
    pub weight_decay: f64,
    /// Epochs.
    pub epochs: usize,
    /// Gradient steps per epoch.
    pub steps_per_epoch: usize,
    /// Edit passes after the initialisation pass.
    pub edits: usize,
    /// Probability that a patch is centred on foreground.
    pub fg_probability: f64,
    /// Validation patches.
    pub val_patches: usize,
    /// Weight of the current epoch in the smoothed validation score.
    pub ema: f64,
    /// Seed of everything random.
    pub seed: u64,
    /// Simulated clicks (false: specialist training, one pass without prompts).
    pub prompts: bool,
    /// Training augmentation.
    pub augment: AugmentConfig,
}

impl Default for EpisodeConfig {
    /// The paper's settings (192³, batch 2, Adam 1e-3 / 1e-5, 10 × 50 steps, 5 edits).
    fn default() -> Self {
        EpisodeConfig {
            patch: [192; 3],
            batch: 2,
            lr: 1e-3,
            weight_decay: 1e-5,
            epochs: 10,
            steps_per_epoch: 50,
            edits: 5,
            fg_probability: 0.5,
            val_patches: 30,
            ema: 0.9,
            seed: 0,
            prompts: true,
            augment: AugmentConfig::intended(),
        }
    }
}

impl EpisodeConfig {
    /// Checks the settings against the network (patch divisible by the total stride, ...).
    pub fn validate(&self, spec: &UNetSpec) -> Result<()> {
        let bad = |key: &'static str, value: String, problem: &str| AdaptError::Config {
            key,
            value,
            problem: problem.to_string(),
        };
        let ts = spec.total_stride();
        if self.patch.iter().any(|&p| p == 0 || p % ts != 0) {
            return Err(bad(
                "patch",
                format!("{:?}", self.patch),
                &format!(
                    "every axis must be a positive multiple of the network's total stride {ts}"
                ),
            ));
        }
        for (key, v) in [
            ("batch", self.batch),
            ("epochs", self.epochs),
            ("steps_per_epoch", self.steps_per_epoch),
        ] {
            if v == 0 {
                return Err(bad(key, "0".into(), "must be at least 1"));
            }
        }
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return Err(bad("lr", self.lr.to_string(), "must be finite and >= 0"));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(bad(
                "weight_decay",
                self.weight_decay.to_string(),
                "must be finite and >= 0",
            ));
        }
        if !(0.0..=1.0).contains(&self.fg_probability) {
            return Err(bad(
                "fg_probability",
                self.fg_probability.to_string(),
                "must lie in [0, 1]",
            ));
        }
        if !(0.0..=1.0).contains(&self.ema) {
            return Err(bad("ema", self.ema.to_string(), "must lie in [0, 1]"));
        }
        Ok(())
    }
}

/// One row of the epoch log (`epoch` 0 = the incoming model, validated only).
#[derive(Debug, Clone, PartialEq)]
pub struct EpochLog {
    /// 0 = incoming model, then 1..=epochs.
    pub epoch: u32,
    /// Mean step objective over the epoch's steps (None for epoch 0).
    pub train_loss: Option<f64>,
    /// Mean normalised Dice-AUC over the validation patches (None without validation cases).
    pub val_score: Option<f64>,
    /// Smoothed score `ema·current + (1 − ema)·previous raw` (epoch 0: its raw score).
    pub val_ema: Option<f64>,
    /// Whether this epoch's parameters are the ones returned.
    pub selected: bool,
    /// Wall time of the epoch (training and validation).
    pub seconds: f64,
}

/// Progress reports for a caller's bar.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A gradient step finished (`step` counts from 1 over the whole episode).
    Step {
        epoch: u32,
        step: usize,
        steps: usize,
        loss: f64,
    },
    /// A validation finished.
    Validated { epoch: u32, score: f64, ema: f64 },
}

/// What an episode returns.
#[derive(Debug, Clone)]
pub struct EpisodeOutcome {
    /// The selected values of the trainable parameters (also left in the `ParamStore`).
    pub selected: BTreeMap<String, Tensor>,
    /// The selected epoch (0 = the incoming model was kept).
    pub selected_epoch: u32,
    /// One row per epoch, epoch 0 first.
    pub log: Vec<EpochLog>,
}

/// Deep copies (a detached tensor shares storage with the `Var`, which the optimiser overwrites).
fn snapshot(params: &ParamStore) -> Result<BTreeMap<String, Tensor>> {
    params
        .trainable_tensors()
        .into_iter()
        .map(|(k, t)| Ok((k, t.copy()?)))
        .collect()
}

/// Validation score: mean normalised Dice-AUC over `patches`, run in batches of `batch`.
fn validate(
    net: &ResidualEncoderUNet,
    patches: &[Patch],
    lcfg: &LoopConfig,
    batch: usize,
    seed: u64,
    device: &Device,
) -> Result<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut aucs = Vec::with_capacity(patches.len());
    for chunk in patches.chunks(batch.max(1)) {
        let out = interaction_loop(net, chunk, lcfg, &mut rng, device, None)?;
        aucs.extend(out.dice_auc());
    }
    Ok(aucs.iter().sum::<f64>() / aucs.len() as f64)
}

/// Trains one episode. `params` must hold the incoming model with the group to tune made
/// trainable ([`ParamStore::make_trainable`]); on return it holds the selected parameters.
/// Without validation cases, the last epoch is selected.
#[allow(clippy::too_many_arguments)]
pub fn train_episode(
    spec: &UNetSpec,
    params: &mut ParamStore,
    prompt: &PromptConfig,
    train: &[TrainCase],
    val: &[TrainCase],
    cfg: &EpisodeConfig,
    device: &Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<EpisodeOutcome> {
    cfg.validate(spec)?;
    if train.is_empty() {
        return Err(AdaptError::NoTrainCases);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let val_seed: u64 = rng.random();
    let lcfg = LoopConfig {
        edits: cfg.edits,
        prompts: cfg.prompts,
        prompt: prompt.clone(),
    };
    // The optimiser updates the Vars in place, so they must live where the network reads them.
    params.to_device(device)?;
    let net = ResidualEncoderUNet::new(spec, &params.var_builder(device))?;
    // Validation scores the same (shared-storage) parameters without recording a backward graph.
    let val_net = ResidualEncoderUNet::new(spec, &params.detached_var_builder(device))?;
    let mut adam = Adam::new(
        params.vars().clone(),
        AdamConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..AdamConfig::default()
        },
    );
    let mut acc = GradAccumulator::new(params.vars().clone());

    // The validation patches are cut once (round robin over the cases).
    let val_patches: Vec<Patch> = if val.is_empty() {
        Vec::new()
    } else {
        let mut vr = ChaCha8Rng::seed_from_u64(val_seed);
        (0..cfg.val_patches)
            .map(|k| sample_patch(&val[k % val.len()], cfg.patch, cfg.fg_probability, &mut vr))
            .collect()
    };
    let click_seed = val_seed.wrapping_add(1);
    let mut log = Vec::with_capacity(cfg.epochs + 1);
    let mut best = snapshot(params)?;
    let mut best_epoch = 0u32;
    let mut best_ema = f64::NEG_INFINITY;
    let mut prev_raw: Option<f64> = None;

    let t0 = Instant::now();
    let (mut val_score, mut val_ema) = (None, None);
    if !val_patches.is_empty() {
        let s = validate(&val_net, &val_patches, &lcfg, cfg.batch, click_seed, device)?;
        progress(&Progress::Validated {
            epoch: 0,
            score: s,
            ema: s,
        });
        (val_score, val_ema) = (Some(s), Some(s));
        best_ema = s;
        prev_raw = Some(s);
    }
    log.push(EpochLog {
        epoch: 0,
        train_loss: None,
        val_score,
        val_ema,
        selected: false,
        seconds: t0.elapsed().as_secs_f64(),
    });

    let steps = cfg.epochs * cfg.steps_per_epoch;
    let mut step_no = 0;
    for epoch in 1..=cfg.epochs as u32 {
        let t0 = Instant::now();
        let mut losses = Vec::with_capacity(cfg.steps_per_epoch);
        for _ in 0..cfg.steps_per_epoch {
            // distinct cases when there are enough (the authors' RandomSampler), else repeats
            let picks: Vec<usize> = if train.len() >= cfg.batch {
                rand::seq::index::sample(&mut rng, train.len(), cfg.batch).into_vec()
            } else {
                (0..cfg.batch)
                    .map(|_| rng.random_range(0..train.len()))
                    .collect()
            };
            let mut patches = Vec::with_capacity(cfg.batch);
            for i in picks {
                let mut p = sample_patch(&train[i], cfg.patch, cfg.fg_probability, &mut rng);
                augment(&mut p, &cfg.augment, &mut rng);
                patches.push(p);
            }
            acc.clear();
            let out = interaction_loop(&net, &patches, &lcfg, &mut rng, device, Some(&mut acc))?;
            adam.step(acc.grads())?;
            losses.push(out.loss);
            step_no += 1;
            progress(&Progress::Step {
                epoch,
                step: step_no,
                steps,
                loss: out.loss,
            });
        }
        let train_loss =
            (!losses.is_empty()).then(|| losses.iter().sum::<f64>() / losses.len() as f64);
        let (mut val_score, mut val_ema) = (None, None);
        if val_patches.is_empty() {
            // nothing to select with: the latest parameters win
            best = snapshot(params)?;
            best_epoch = epoch;
        } else {
            let s = validate(&val_net, &val_patches, &lcfg, cfg.batch, click_seed, device)?;
            let p = prev_raw.unwrap_or(s);
            // p + w·(s − p) equals w·s + (1 − w)·p but is exactly p when s == p, so an
            // unchanged model never "improves" by rounding.
            let e = p + cfg.ema * (s - p);
            progress(&Progress::Validated {
                epoch,
                score: s,
                ema: e,
            });
            if e > best_ema {
                best_ema = e;
                best = snapshot(params)?;
                best_epoch = epoch;
            }
            prev_raw = Some(s);
            (val_score, val_ema) = (Some(s), Some(e));
        }
        log.push(EpochLog {
            epoch,
            train_loss,
            val_score,
            val_ema,
            selected: false,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    for (name, t) in &best {
        params.set(name, t)?;
    }
    if let Some(row) = log.get_mut(best_epoch as usize) {
        row.selected = true;
    }
    Ok(EpisodeOutcome {
        selected: best,
        selected_epoch: best_epoch,
        log,
    })
}
