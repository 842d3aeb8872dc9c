//! The interaction loop of one gradient step (or one validation batch): an initialisation pass
//! and `edits` edit passes over a batch of patches, with simulated clicks rendered exactly as the
//! inference session renders them ([`clopa_interact::Interactions`]: stamp radius and decay
//! scheme of the model folder).
//!
//! Per pass: the network sees `[image, prev_seg, bbox±, point±, scribble±]` of every patch still
//! active; the loss `(1 − soft Dice + CE) / n_passes`, averaged over the active patches, is
//! backpropagated at once so only one pass's graph is ever alive, and the gradients are summed
//! into a [`GradAccumulator`]. `prev_seg` of the next pass is the argmax (detached). A patch whose
//! argmax equals its label everywhere leaves the later passes; every remaining patch keeps its own
//! image and prompt channels (the authors' re-indexing bug, reference §7.3.4, is not copied).
//! With `prompts = false` (specialist models) there is a single pass on all-zero prompt channels.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;

use clopa_interact::{
    Interactions, NUM_INTERACTION_CHANNELS, PromptConfig, edit_clicks_raw, initial_clicks_raw,
};
use clopa_nn::ResidualEncoderUNet;
use clopa_nn::loss::clopa_pass_loss_per_sample;

use crate::error::Result;
use crate::patch::Patch;

/// How the loop runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopConfig {
    /// Edit passes after the initialisation pass (5).
    pub edits: usize,
    /// Simulated clicks on (false: one pass, prompt channels all zero).
    pub prompts: bool,
    /// Prompt rendering (radius, decay, scheme; the patch size field is ignored).
    pub prompt: PromptConfig,
}

impl LoopConfig {
    /// Passes per step: 1 + edits with prompts, else 1 (also the loss divisor).
    pub fn passes(&self) -> usize {
        if self.prompts { 1 + self.edits } else { 1 }
    }
}

/// Sums gradients of named variables over several backward passes.
pub struct GradAccumulator {
    vars: BTreeMap<String, Var>,
    grads: BTreeMap<String, Tensor>,
}

impl GradAccumulator {
    /// An empty sum over `vars`.
    pub fn new(vars: BTreeMap<String, Var>) -> Self {
        GradAccumulator {
            vars,
            grads: BTreeMap::new(),
        }
    }

    /// Backpropagates `loss` and adds each variable's gradient.
    pub fn backward(&mut self, loss: &Tensor) -> Result<()> {
        let store = loss.backward()?;
        for (name, var) in &self.vars {
            if let Some(g) = store.get(var.as_tensor()) {
                let g = match self.grads.remove(name) {
                    Some(acc) => (acc + g)?,
                    None => g.clone(),
                };
                self.grads.insert(name.clone(), g);
            }
        }
        Ok(())
    }

    /// The summed gradients (variables that never got one are absent).
    pub fn grads(&self) -> &BTreeMap<String, Tensor> {
        &self.grads
    }

    /// Forgets the sums (after an optimiser step).
    pub fn clear(&mut self) {
        self.grads.clear();
    }
}

/// What one run of the loop did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopOutcome {
    /// The step's objective: Σ over passes of the mean active-patch loss / n_passes.
    pub loss: f64,
    /// Per patch, the Dice of the argmax after each pass it took part in (so truncated when it
    /// was solved).
    pub dice: Vec<Vec<f64>>,
    /// Active patches in each pass that ran.
    pub active: Vec<usize>,
}

impl LoopOutcome {
    /// Per patch, the normalised Dice-AUC: trapezoid / (len − 1), or the single value.
    pub fn dice_auc(&self) -> Vec<f64> {
        self.dice.iter().map(|d| normalised_auc(d)).collect()
    }
}

/// Trapezoid with unit spacing divided by `len − 1`; a single value as is; NaN for none.
pub fn normalised_auc(v: &[f64]) -> f64 {
    match v.len() {
        0 => f64::NAN,
        1 => v[0],
        n => v.windows(2).map(|w| (w[0] + w[1]) / 2.0).sum::<f64>() / (n - 1) as f64,
    }
}

/// Dice with the IS_Validate convention (both empty → 1).
fn dice(pred: &[u8], label: &[u8]) -> f64 {
    let (mut i, mut p, mut t) = (0usize, 0usize, 0usize);
    for (&a, &b) in pred.iter().zip(label) {
        let (a, b) = (a != 0, b != 0);
        i += usize::from(a && b);
        p += usize::from(a);
        t += usize::from(b);
    }
    if p + t == 0 {
        1.0
    } else {
        2.0 * i as f64 / (p + t) as f64
    }
}

/// Per-patch state of the loop.
struct Slot {
    prompts: Interactions,
    prev_seg: Vec<u8>,
}

/// Runs the loop over `patches` (all the same shape). With `grads`, every pass's loss is
/// backpropagated into it (training); without, nothing is (validation). Clicks come from `rng`,
/// patch by patch in order, background click first.
pub fn interaction_loop<R: Rng + ?Sized>(
    net: &ResidualEncoderUNet,
    patches: &[Patch],
    cfg: &LoopConfig,
    rng: &mut R,
    device: &Device,
    mut grads: Option<&mut GradAccumulator>,
) -> Result<LoopOutcome> {
    let Some(first) = patches.first() else {
        return Ok(LoopOutcome {
            loss: 0.0,
            dice: Vec::new(),
            active: Vec::new(),
        });
    };
    let shape = first.shape;
    let nvox: usize = shape.iter().product();
    let mut prompt_cfg = cfg.prompt.clone();
    prompt_cfg.patch_size = shape;
    let mut slots = Vec::with_capacity(patches.len());
    for p in patches {
        let mut prompts = Interactions::new(shape, prompt_cfg.clone())?;
        if cfg.prompts {
            for c in initial_clicks_raw(shape, &p.label, rng)? {
                prompts.add_point(c.coords_f64(), c.positive)?;
            }
        }
        slots.push(Slot {
            prompts,
            prev_seg: vec![0; nvox],
        });
    }
    let passes = cfg.passes();
    let mut active: Vec<usize> = (0..patches.len()).collect();
    let mut out = LoopOutcome {
        loss: 0.0,
        dice: vec![Vec::new(); patches.len()],
        active: Vec::new(),
    };
    for pass in 0..passes {
        if active.is_empty() {
            break;
        }
        out.active.push(active.len());
        let b = active.len();
        let c = 1 + NUM_INTERACTION_CHANNELS;
        let mut x = vec![0f32; b * c * nvox];
        let mut y = vec![0u8; b * nvox];
        for (k, &i) in active.iter().enumerate() {
            let base = k * c * nvox;
            x[base..base + nvox].copy_from_slice(&patches[i].image);
            y[k * nvox..(k + 1) * nvox].copy_from_slice(&patches[i].label);
            if cfg.prompts {
                let s = &slots[i];
                for (dst, &v) in x[base + nvox..base + 2 * nvox].iter_mut().zip(&s.prev_seg) {
                    *dst = f32::from(v);
                }
                let norm = s.prompts.normalized();
                for ch in 1..NUM_INTERACTION_CHANNELS {
                    let dst = &mut x[base + (1 + ch) * nvox..base + (2 + ch) * nvox];
                    for (d, v) in dst.iter_mut().zip(&norm[ch * nvox..(ch + 1) * nvox]) {
                        *d = v.to_f32();
                    }
                }
            }
        }
        let xt = Tensor::from_vec(x, (b, c, shape[0], shape[1], shape[2]), device)?;
        let logits = net.forward(&xt)?;
        let yt = Tensor::from_vec(y, (b, shape[0], shape[1], shape[2]), device)?;
        {
            let per = clopa_pass_loss_per_sample(&logits, &yt)?;
            let loss = (per.mean_all()? / passes as f64)?;
            out.loss += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if let Some(g) = grads.as_deref_mut() {
                g.backward(&loss)?;
            }
        }
        let pred = logits
            .detach()
            .argmax(1)?
            .to_dtype(DType::U8)?
            .flatten_all()?
            .to_vec1::<u8>()?;
        drop(logits);
        let mut still = Vec::with_capacity(b);
        for (k, &i) in active.iter().enumerate() {
            let pk = &pred[k * nvox..(k + 1) * nvox];
            let label = &patches[i].label;
            out.dice[i].push(dice(pk, label));
            if pk != label.as_slice() {
                still.push(i);
                let s = &mut slots[i];
                s.prev_seg.copy_from_slice(pk);
                if pass + 1 < passes {
                    for click in edit_clicks_raw(shape, pk, label, rng)? {
                        s.prompts.add_point(click.coords_f64(), click.positive)?;
                    }
                }
            }
        }
        active = still;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn auc_is_the_normalised_trapezoid() {
        assert_eq!(normalised_auc(&[0.5]), 0.5);
        assert!((normalised_auc(&[0.0, 1.0]) - 0.5).abs() < 1e-12);
        assert!((normalised_auc(&[0.2, 0.4, 0.8]) - (0.3 + 0.6) / 2.0).abs() < 1e-12);
        assert_eq!(dice(&[0, 0], &[0, 0]), 1.0);
        assert_eq!(dice(&[1, 0], &[0, 1]), 0.0);
    }
}
