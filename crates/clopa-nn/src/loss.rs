//! Segmentation losses on logits `(B, C, D, H, W)` and integer labels `(B, 1, D, H, W)` or
//! `(B, D, H, W)` (any dtype holding 0..C-1).
//!
//! * [`dc_and_ce_loss`]: nnU-Net's default `DC_and_CE_loss` (mean CE + negative soft Dice over the
//!   foreground classes, batch Dice, smooth 1e-5) — the loss of the golden gradients.
//! * [`clopa_pass_loss_per_sample`]: the CLoPA trainer's per-pass loss per patch,
//!   `(1 − soft Dice of the foreground, smooth 1e-5) + mean CE` (MONAI DiceLoss semantics).
//!
//! Per-voxel terms are computed in f32; every sum over voxels is accumulated in f64 because a
//! sequential f32 sum over 64³..192³ voxels loses digits the gradient tests can see. The results
//! are f64 scalars (or `(B,)` vectors) that can be `backward()`-ed directly.

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{D, DType, Tensor};

use crate::error::{NnError, Result};

/// nnU-Net's soft-Dice smoothing term.
pub const DICE_SMOOTH: f64 = 1e-5;

/// The parts of [`dc_and_ce_loss`] (all f64 scalars, differentiable).
#[derive(Clone, Debug)]
pub struct LossParts {
    /// `ce + dice`.
    pub total: Tensor,
    /// Mean cross-entropy over all voxels.
    pub ce: Tensor,
    /// The Dice term: minus the soft Dice (nnU-Net returns −Dice, not 1 − Dice).
    pub dice: Tensor,
}

/// The target as `(B, 1, D, H, W)`, after checking it matches the logits `(B, C, D, H, W)`.
fn checked_target(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let dims = logits.dims().to_vec();
    if dims.len() != 5 {
        return Err(NnError::InputShape {
            shape: dims,
            reason: "logits must be (B, C, D, H, W)".into(),
        });
    }
    let b = dims[0];
    let t = match target.rank() {
        4 => target.unsqueeze(1)?,
        _ => target.clone(),
    };
    let want = [b, 1, dims[2], dims[3], dims[4]];
    if t.dims() != want {
        return Err(NnError::InputShape {
            shape: target.dims().to_vec(),
            reason: format!(
                "target must be (B, 1, D, H, W) = {want:?} to match the logits {dims:?}"
            ),
        });
    }
    Ok(t)
}

/// Log-probabilities, probabilities and the one-hot target, all `(B, C, D, H, W)` f32.
fn prepare(logits: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let c = logits.dims()[1];
    let t = checked_target(logits, target)?.to_dtype(DType::F32)?;
    let onehot = (0..c)
        .map(|k| t.eq(k as f64)?.to_dtype(DType::F32))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let onehot = Tensor::cat(&onehot, 1)?;
    let logits = logits.to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&logits, 1)?;
    let p = logp.exp()?;
    Ok((logp, p, onehot))
}

/// f64 sum over all dims from `from` on, keeping dims before it.
fn sum_from(x: &Tensor, from: usize) -> Result<Tensor> {
    let x = x.to_dtype(DType::F64)?;
    let x = x.flatten_from(from)?;
    Ok(x.sum(D::Minus1)?)
}

/// Mean voxel cross-entropy per sample, `(B,)` f64.
fn ce_per_sample(logp: &Tensor, onehot: &Tensor) -> Result<Tensor> {
    let nvox: usize = logp.dims()[2..].iter().product();
    // Exactly one class is hot per voxel, so this is −log p_target per voxel.
    let nll = (logp * onehot)?.sum_keepdim(1)?.neg()?;
    Ok((sum_from(&nll, 1)? / nvox as f64)?)
}

/// nnU-Net's `DC_and_CE_loss(weight_ce=1, weight_dice=1)` with `MemoryEfficientSoftDiceLoss
/// {batch_dice: true, smooth: 1e-5, do_bg: false}`: `L = CE − mean_fg((2I + s) / max(P + T + s, 1e-8))`
/// with `I, P, T` summed over batch and space.
pub fn dc_and_ce_loss(logits: &Tensor, target: &Tensor) -> Result<LossParts> {
    let (logp, p, onehot) = prepare(logits, target)?;
    let c = logits.dims()[1];
    let ce = ce_per_sample(&logp, &onehot)?.mean_all()?;
    // Foreground classes only (do_bg = false); (B, C-1, ...) → per class sums over batch and space.
    let pf = p.narrow(1, 1, c - 1)?;
    let tf = onehot.narrow(1, 1, c - 1)?;
    let per_class =
        |x: &Tensor| -> Result<Tensor> { sum_from(&x.transpose(0, 1)?.contiguous()?, 1) };
    let i = per_class(&(&pf * &tf)?)?;
    let ps = per_class(&pf)?;
    let ts = per_class(&tf)?;
    let num = ((i * 2.0)? + DICE_SMOOTH)?;
    let den = ((ps + ts)? + DICE_SMOOTH)?.clamp(1e-8, f64::INFINITY)?;
    let dice = (num / den)?.mean_all()?.neg()?;
    let total = (&ce + &dice)?;
    Ok(LossParts { total, ce, dice })
}

/// CLoPA's per-pass loss of each patch, `(B,)` f64: `1 − dice_b + ce_b` with
/// `dice_b = (2 Σ p·g + 1e-5) / (Σ p + Σ g + 1e-5)` over the foreground channel(s) of patch b
/// (averaged over foreground classes) and `ce_b` its mean voxel cross-entropy. The trainer
/// averages this over the still-active patches and divides by the number of passes.
///
/// With 2 to 8 classes (and 1 to 65535 patches) it runs as one fused op (`ops/pass_loss.rs`: the
/// same per-voxel terms in f32, sums in f64 in fixed blocks, the gradient by formula) on the CPU,
/// and on a GPU unless [`fused_cuda_loss`] says otherwise; beyond those bounds as
/// [`composed_pass_loss_per_sample`], which the fused op is tested against. The composition is 3×
/// slower on 2 cores (forward + backward of 2 × 2 × 32³ logits 11 ms against 3.7 ms;
/// `examples/bench_loss`) and 58× on an H200 (2 × 2 × 192³: 48 ms against 0.83 ms).
pub fn clopa_pass_loss_per_sample(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let t = checked_target(logits, target)?;
    let fused = crate::ops::pass_loss::fits(logits.dims())
        && match logits.device() {
            candle_core::Device::Cpu => true,
            d => d.is_cuda() && fused_cuda_loss(),
        };
    if fused {
        return Ok(crate::ops::pass_loss::pass_loss_per_sample(logits, &t)?);
    }
    composed_pass_loss_per_sample(logits, target)
}

/// [`clopa_pass_loss_per_sample`] composed of candle's ops (log-softmax, one-hot, f64 sums),
/// autograd giving the gradient: the reference for the fused op, and the way on devices it does
/// not cover.
pub fn composed_pass_loss_per_sample(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (logp, p, onehot) = prepare(logits, target)?;
    let c = logits.dims()[1];
    let ce = ce_per_sample(&logp, &onehot)?;
    let pf = p.narrow(1, 1, c - 1)?;
    let tf = onehot.narrow(1, 1, c - 1)?;
    let i = sum_from(&(&pf * &tf)?, 2)?; // (B, C-1)
    let ps = sum_from(&pf, 2)?;
    let ts = sum_from(&tf, 2)?;
    let dice = (((i * 2.0)? + DICE_SMOOTH)? / ((ps + ts)? + DICE_SMOOTH)?)?.mean(1)?; // (B,)
    Ok(((dice.neg()? + 1.0)? + ce)?)
}

/// 0: as `CLOPA_CUDA_LOSS` says; 1: fused; 2: composed.
static FUSED: AtomicU8 = AtomicU8::new(0);

/// Whether [`clopa_pass_loss_per_sample`] of CUDA logits runs the fused kernels
/// (`ops/cuda_loss.cu`): yes unless `CLOPA_CUDA_LOSS=composed`, or as [`set_fused_cuda_loss`]
/// last set. Checked on an H200 against the CPU (2026-11-28: the loss equal to 2.6e-9, the
/// gradient to 4.3e-7, as close as the composition's; `examples/gpu_check`'s `loss` line); the
/// composition stays as the way to rule the kernels out. Without the `cuda` feature it changes
/// nothing.
pub fn fused_cuda_loss() -> bool {
    match FUSED.load(Ordering::Relaxed) {
        0 => std::env::var("CLOPA_CUDA_LOSS").map_or(true, |v| v != "composed"),
        v => v == 1,
    }
}

/// Sets [`fused_cuda_loss`] for the process (over `CLOPA_CUDA_LOSS`).
pub fn set_fused_cuda_loss(on: bool) {
    FUSED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Mean of [`clopa_pass_loss_per_sample`] over the batch (f64 scalar).
pub fn clopa_pass_loss(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok(clopa_pass_loss_per_sample(logits, target)?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn naive(logits: &[[f64; 2]], y: &[u8]) -> (f64, f64) {
        let (mut ce, mut i, mut p, mut t) = (0.0, 0.0, 0.0, 0.0);
        for (l, &y) in logits.iter().zip(y) {
            let m = l[0].max(l[1]);
            let z = ((l[0] - m).exp() + (l[1] - m).exp()).ln() + m;
            ce -= l[y as usize] - z;
            let p1 = (l[1] - z).exp();
            let t1 = f64::from(y);
            i += p1 * t1;
            p += p1;
            t += t1;
        }
        let n = y.len() as f64;
        (ce / n, (2.0 * i + 1e-5) / (p + t + 1e-5))
    }

    #[test]
    fn both_losses_match_a_naive_loop() -> Result<()> {
        let dev = Device::Cpu;
        let l0 = [0.3f32, -1.0, 2.0, 0.0, 0.5, -0.25, 1.5, 0.1];
        let l1 = [-0.2f32, 0.7, 1.0, 0.0, -2.0, 0.25, 0.5, 0.3];
        let y = [0u8, 1, 1, 0, 0, 1, 0, 1];
        let logits = Tensor::cat(
            &[
                Tensor::new(&l0, &dev)?.reshape((1, 1, 2, 2, 2))?,
                Tensor::new(&l1, &dev)?.reshape((1, 1, 2, 2, 2))?,
            ],
            1,
        )?;
        let target = Tensor::new(&y, &dev)?.reshape((1, 1, 2, 2, 2))?;
        let pairs: Vec<[f64; 2]> = l0
            .iter()
            .zip(&l1)
            .map(|(&a, &b)| [f64::from(a), f64::from(b)])
            .collect();
        let (ce, dice) = naive(&pairs, &y);
        let parts = dc_and_ce_loss(&logits, &target)?;
        assert!((parts.total.to_scalar::<f64>()? - (ce - dice)).abs() < 1e-6);
        assert!((parts.ce.to_scalar::<f64>()? - ce).abs() < 1e-6);
        let cl = clopa_pass_loss(&logits, &target)?.to_scalar::<f64>()?;
        assert!((cl - (1.0 - dice + ce)).abs() < 1e-6);
        Ok(())
    }

    /// Logits (2, C, 5, 7, 131) — 4585 voxels a patch, two of the fused op's blocks — and labels
    /// 0..=C (the value C names no class) from a fixed generator.
    fn case(c: usize) -> Result<(Tensor, Tensor)> {
        let dev = Device::Cpu;
        let n = 5 * 7 * 131;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let l: Vec<f32> = (0..2 * c * n)
            .map(|_| (next() * 8.0 - 4.0) as f32)
            .collect();
        let y: Vec<u8> = (0..2 * n)
            .map(|_| (next() * (c + 1) as f64) as u8)
            .collect();
        Ok((
            Tensor::from_vec(l, (2, c, 5, 7, 131), &dev)?,
            Tensor::from_vec(y, (2, 1, 5, 7, 131), &dev)?,
        ))
    }

    /// The loss per patch and the gradient of `0.3·L_0 − 0.7·L_1` with respect to the logits.
    fn loss_and_grad(
        f: fn(&Tensor, &Tensor) -> Result<Tensor>,
        logits: &Tensor,
        target: &Tensor,
    ) -> Result<(Vec<f64>, Vec<f32>)> {
        let v = candle_core::Var::from_tensor(logits)?;
        let per = f(v.as_tensor(), target)?;
        let w = Tensor::new(&[0.3f64, -0.7], &Device::Cpu)?;
        let grads = (&per * &w)?.sum_all()?.backward()?;
        let g = grads
            .get(v.as_tensor())
            .expect("a gradient")
            .flatten_all()?;
        Ok((per.to_vec1()?, g.to_vec1()?))
    }

    #[test]
    fn the_fused_loss_and_gradient_match_the_composition() -> Result<()> {
        for c in [2, 3] {
            let (logits, target) = case(c)?;
            let (want, want_g) = loss_and_grad(composed_pass_loss_per_sample, &logits, &target)?;
            let (got, got_g) = loss_and_grad(clopa_pass_loss_per_sample, &logits, &target)?;
            // the same f32 terms per voxel; only the order of the f64 sums differs
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-12 * b.abs(),
                    "C={c}: {got:?} vs {want:?}"
                );
            }
            let scale = want_g.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got_g
                .iter()
                .zip(&want_g)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= 1e-6 * scale,
                "C={c}: gradient off by {worst} of {scale}"
            );
        }
        Ok(())
    }

    #[test]
    fn the_fused_loss_does_not_depend_on_the_thread_count() -> Result<()> {
        let (logits, target) = case(2)?;
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a pool");
            pool.install(|| loss_and_grad(clopa_pass_loss_per_sample, &logits, &target))
        };
        let (one, one_g) = run(1)?;
        let (three, three_g) = run(3)?;
        assert_eq!(one, three);
        assert_eq!(one_g, three_g);
        Ok(())
    }

    #[test]
    fn target_shape_mismatch_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::zeros((1, 2, 2, 2, 2), DType::F32, &dev)?;
        let target = Tensor::zeros((1, 1, 2, 2, 3), DType::U8, &dev)?;
        assert!(dc_and_ce_loss(&logits, &target).is_err());
        Ok(())
    }
}
