//! Automatic (prompt-free) whole-image prediction by nnU-Net's sliding window: how a specialist
//! model is scored for a task's expert threshold (the paper's "automatic model" Dice).
//!
//! As nnU-Net v2 predicts (`nnunetv2.inference.sliding_window_prediction`): tiles of the patch
//! size at steps of at most half a patch, evenly spread so the first tile starts at 0 and the last
//! ends at the border ([`tile_starts`]); each tile's logits are weighted by a Gaussian centred on
//! the tile (σ = patch / 8 per axis, scaled to a maximum of 1, zeros replaced by the smallest
//! non-zero weight) and summed; the sum is divided by the summed weights and the argmax taken. An
//! image smaller than the patch along an axis is zero-padded (after normalisation) on both sides
//! as nnU-Net pads it. The network sees the normalised image and all-zero interaction channels.
//! Not done: nnU-Net's mirroring test-time augmentation (8 flipped passes per tile), which would
//! multiply the cost by 8 for a small gain; the threshold is that of the un-mirrored model.

use crate::assemble::NUM_INPUT_CHANNELS;
use crate::error::InteractError;
use crate::session::{Predictor, PredictorError};

/// Tile start offsets along one axis of length `len` for tiles of `patch` (`len >= patch`) with
/// step `patch · step_fraction` at most (nnU-Net's `compute_steps_for_sliding_window`).
pub fn tile_starts(len: usize, patch: usize, step_fraction: f64) -> Vec<usize> {
    debug_assert!(len >= patch && patch > 0);
    let target = patch as f64 * step_fraction;
    let n = ((len - patch) as f64 / target).ceil() as usize + 1;
    let actual = if n > 1 {
        (len - patch) as f64 / (n - 1) as f64
    } else {
        // never used: a single tile starts at 0
        f64::INFINITY
    };
    (0..n)
        .map(|i| {
            if i == 0 {
                0
            } else {
                (actual * i as f64).round() as usize
            }
        })
        .collect()
}

/// nnU-Net's Gaussian importance map for `patch` (σ = patch / 8, max 1, no zeros), z fastest.
pub fn gaussian_weights(patch: [usize; 3]) -> Vec<f32> {
    // nnU-Net builds it with scipy's gaussian_filter on a unit impulse at patch // 2; the
    // truncated kernel is a sampled Gaussian around that centre, which is what we compute.
    let axis = |p: usize| -> Vec<f64> {
        let c = (p / 2) as f64;
        let s = p as f64 / 8.0;
        (0..p)
            .map(|i| (-((i as f64 - c).powi(2)) / (2.0 * s * s)).exp())
            .collect()
    };
    let (a, b, c) = (axis(patch[0]), axis(patch[1]), axis(patch[2]));
    let mut w: Vec<f64> = Vec::with_capacity(patch.iter().product());
    for x in &a {
        for y in &b {
            for z in &c {
                w.push(x * y * z);
            }
        }
    }
    let max = w.iter().copied().fold(0.0f64, f64::max);
    let mut out: Vec<f32> = w.iter().map(|v| (v / max) as f32).collect();
    let min_nonzero = out
        .iter()
        .copied()
        .filter(|&v| v > 0.0)
        .fold(f32::INFINITY, f32::min);
    for v in &mut out {
        if *v == 0.0 {
            *v = min_nonzero;
        }
    }
    out
}

/// Segments a normalised `image` of `shape` without prompts: sliding-window logits of
/// `predictor` over `patch` tiles (step ½ patch), Gaussian-weighted, argmax → 0/1 per voxel.
pub fn predict_automatic<P: Predictor>(
    predictor: &mut P,
    image: &[f32],
    shape: [usize; 3],
    patch: [usize; 3],
) -> Result<Vec<u8>, AutomaticError> {
    let n: usize = shape.iter().product();
    if image.len() != n {
        return Err(AutomaticError::Interact(InteractError::ShapeMismatch {
            what: "image",
            got: image.len(),
            expected: n,
            shape,
        }));
    }
    // padded grid: at least the patch along every axis, image centred as nnU-Net pads
    let padded: [usize; 3] = std::array::from_fn(|a| shape[a].max(patch[a]));
    let offset: [usize; 3] = std::array::from_fn(|a| (padded[a] - shape[a]) / 2);
    let pn: usize = padded.iter().product();
    let gauss = gaussian_weights(patch);
    let pv: usize = patch.iter().product();
    let mut acc = vec![0f32; 2 * pn];
    let mut wsum = vec![0f32; pn];
    let starts: [Vec<usize>; 3] = std::array::from_fn(|a| tile_starts(padded[a], patch[a], 0.5));
    let mut input = vec![0f32; NUM_INPUT_CHANNELS * pv];
    for &sx in &starts[0] {
        for &sy in &starts[1] {
            for &sz in &starts[2] {
                // channel 0: the image under this tile (zero outside the image); the rest stay 0
                let img = &mut input[..pv];
                for i in 0..patch[0] {
                    for j in 0..patch[1] {
                        let row = &mut img[(i * patch[1] + j) * patch[2]..][..patch[2]];
                        row.fill(0.0);
                        let (x, y) = (sx + i, sy + j);
                        let (Some(x), Some(y)) =
                            (x.checked_sub(offset[0]), y.checked_sub(offset[1]))
                        else {
                            continue;
                        };
                        if x >= shape[0] || y >= shape[1] {
                            continue;
                        }
                        for (k, v) in row.iter_mut().enumerate() {
                            let Some(z) = (sz + k).checked_sub(offset[2]) else {
                                continue;
                            };
                            if z < shape[2] {
                                *v = image[(x * shape[1] + y) * shape[2] + z];
                            }
                        }
                    }
                }
                let mut logits = predictor.predict(&input, patch)?;
                // a one-channel margin (see [`Predictor`]) is the logit pair (0, margin)
                if logits.len() == pv {
                    logits.splice(0..0, std::iter::repeat_n(0.0, pv));
                }
                if logits.len() != 2 * pv {
                    return Err(AutomaticError::Predictor(
                        format!("expected 2 x {patch:?} logits, got {} values", logits.len())
                            .into(),
                    ));
                }
                for i in 0..patch[0] {
                    for j in 0..patch[1] {
                        for k in 0..patch[2] {
                            let t = (i * patch[1] + j) * patch[2] + k;
                            let p = ((sx + i) * padded[1] + sy + j) * padded[2] + sz + k;
                            let w = gauss[t];
                            acc[p] += w * logits[t];
                            acc[pn + p] += w * logits[pv + t];
                            wsum[p] += w;
                        }
                    }
                }
            }
        }
    }
    // argmax of the weighted mean (the division does not change the argmax of two classes with
    // equal weights, but nnU-Net divides and ties go to class 0, so compare the means)
    let mut seg = vec![0u8; n];
    for x in 0..shape[0] {
        for y in 0..shape[1] {
            for z in 0..shape[2] {
                let p = ((x + offset[0]) * padded[1] + y + offset[1]) * padded[2] + z + offset[2];
                let (l0, l1) = (acc[p] / wsum[p], acc[pn + p] / wsum[p]);
                seg[(x * shape[1] + y) * shape[2] + z] = u8::from(l1 > l0);
            }
        }
    }
    Ok(seg)
}

/// Errors of [`predict_automatic`].
#[derive(Debug, thiserror::Error)]
pub enum AutomaticError {
    #[error(transparent)]
    Interact(#[from] InteractError),
    #[error("the network failed: {0}")]
    Predictor(#[from] PredictorError),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tiles_match_nnunet() {
        // nnunetv2 compute_steps_for_sliding_window((64,), (48,), 0.5) -> [[0, 16]]
        assert_eq!(tile_starts(64, 48, 0.5), vec![0, 16]);
        assert_eq!(tile_starts(48, 48, 0.5), vec![0]);
        // (100, 48): ceil(52/24)+1 = 4 steps of 52/3 -> 0, 17, 35, 52
        assert_eq!(tile_starts(100, 48, 0.5), vec![0, 17, 35, 52]);
    }

    #[test]
    fn gaussian_peaks_at_the_centre_and_has_no_zeros() {
        let w = gaussian_weights([8, 8, 8]);
        let centre = (4 * 8 + 4) * 8 + 4;
        assert_eq!(w[centre], 1.0);
        assert!(w.iter().all(|&v| v > 0.0 && v <= 1.0));
        assert!(w[0] < w[centre]);
    }

    #[test]
    fn automatic_prediction_reassembles_a_voxelwise_rule() {
        // a "network" that predicts foreground where the image channel is positive: the
        // stitched segmentation must equal the rule everywhere, including padded axes
        let shape = [20, 9, 13];
        let n: usize = shape.iter().product();
        let image: Vec<f32> = (0..n).map(|i| if i % 7 < 3 { 1.0 } else { -1.0 }).collect();
        let patch = [8, 16, 8];
        let mut calls = 0;
        let mut rule = |input: &[f32], p: [usize; 3]| -> Result<Vec<f32>, PredictorError> {
            calls += 1;
            let pv: usize = p.iter().product();
            assert!(
                input[pv..].iter().all(|&v| v == 0.0),
                "prompt channels must be empty"
            );
            let mut out = vec![0f32; 2 * pv];
            out[pv..].copy_from_slice(&input[..pv]);
            Ok(out)
        };
        let seg = predict_automatic(&mut rule, &image, shape, patch).unwrap();
        let want: Vec<u8> = image.iter().map(|&v| u8::from(v > 0.0)).collect();
        assert_eq!(seg, want);
        // x: 20 in 8 → 4 tiles; y: padded to 16 → 1; z: 13 in 8 → 3
        assert_eq!(calls, 4 * 3);
    }
}
