//! The simulated user of IS_Validate (`points_prototype_simplified`, `uniform_random`,
//! `n_max = 1`), used for evaluation on whole images and for training on patches alike.
//!
//! Initialisation: one positive click uniform over the foreground, one negative click uniform
//! over the whole background. Edit: one positive click uniform over the false negatives
//! (reference 1, prediction 0), one negative click uniform over the false positives
//! (reference 0, prediction 1). A class whose region is empty gets no click. Clicks come
//! background first, then foreground: the order they are added to the session, so the last
//! click (the prediction centre) is the foreground one when there is one.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{InteractError, check_len};

/// One click at voxel `coords` (array indices), positive (foreground) or negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Click {
    /// Voxel index `[x, y, z]`.
    pub coords: [usize; 3],
    /// True for a foreground click.
    pub positive: bool,
}

impl Click {
    /// Coordinates as the session's `add_point` takes them.
    pub fn coords_f64(&self) -> [f64; 3] {
        self.coords.map(|c| c as f64)
    }
}

/// The 0, 1 or 2 clicks of one simulated step, background first.
pub type Clicks = Vec<Click>;

/// The RNG of one (case, inference run): ChaCha8 seeded with the 32 bytes
/// `seed (u64 LE) | FNV-1a-64(case_id) (LE) | infer_run (u64 LE) | b"clopaIS1"`.
/// FNV-1a (offset 0xcbf29ce484222325, prime 0x100000001b3) is written out here so the streams
/// never change with the Rust version (unlike `DefaultHasher`).
pub fn case_rng(seed: u64, case_id: &str, infer_run: u32) -> ChaCha8Rng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in case_id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&h.to_le_bytes());
    key[16..24].copy_from_slice(&(infer_run as u64).to_le_bytes());
    key[24..].copy_from_slice(b"clopaIS1");
    ChaCha8Rng::from_seed(key)
}

/// Draw one uniform voxel from each of two disjoint regions given by `class(i)` (0 = region A,
/// 1 = region B, anything else = neither), A first. Counts per chunk in parallel, then scans only
/// the chunk holding each drawn voxel; no per-voxel allocation.
fn draw_two<R: Rng + ?Sized>(
    len: usize,
    class: impl Fn(usize) -> u8 + Sync,
    rng: &mut R,
) -> (Option<usize>, Option<usize>) {
    const CHUNK: usize = 1 << 16;
    let chunk_counts: Vec<[u64; 2]> = (0..len.div_ceil(CHUNK))
        .into_par_iter()
        .map(|k| {
            let mut n = [0u64; 2];
            for i in k * CHUNK..((k + 1) * CHUNK).min(len) {
                let c = class(i);
                if c < 2 {
                    n[c as usize] += 1;
                }
            }
            n
        })
        .collect();
    let counts = chunk_counts
        .iter()
        .fold([0u64; 2], |a, n| [a[0] + n[0], a[1] + n[1]]);
    // u64 ranges keep the stream identical on 32- and 64-bit targets
    let targets = counts.map(|n| (n > 0).then(|| rng.random_range(0..n)));
    let find = |region: usize, mut t: u64| -> Option<usize> {
        for (k, n) in chunk_counts.iter().enumerate() {
            if t >= n[region] {
                t -= n[region];
                continue;
            }
            for i in k * CHUNK..((k + 1) * CHUNK).min(len) {
                if class(i) as usize == region {
                    if t == 0 {
                        return Some(i);
                    }
                    t -= 1;
                }
            }
        }
        None
    };
    (
        targets[0].and_then(|t| find(0, t)),
        targets[1].and_then(|t| find(1, t)),
    )
}

fn coords(i: usize, shape: [usize; 3]) -> [usize; 3] {
    [
        i / (shape[1] * shape[2]),
        (i / shape[2]) % shape[1],
        i % shape[2],
    ]
}

fn to_clicks(shape: [usize; 3], bg: Option<usize>, fg: Option<usize>) -> Clicks {
    let mut out = Vec::with_capacity(2);
    if let Some(i) = bg {
        out.push(Click {
            coords: coords(i, shape),
            positive: false,
        });
    }
    if let Some(i) = fg {
        out.push(Click {
            coords: coords(i, shape),
            positive: true,
        });
    }
    out
}

/// Initial clicks on a reference mask (non-zero = foreground) of `shape`: one negative click
/// uniform over the background, then one positive click uniform over the foreground.
pub fn initial_clicks_raw<R: Rng + ?Sized>(
    shape: [usize; 3],
    reference: &[u8],
    rng: &mut R,
) -> Result<Clicks, InteractError> {
    check_len("reference mask", reference.len(), shape)?;
    let (bg, fg) = draw_two(reference.len(), |i| (reference[i] != 0) as u8, rng);
    Ok(to_clicks(shape, bg, fg))
}

/// Edit clicks: one negative click uniform over the false positives (reference 0, prediction
/// non-zero), then one positive click uniform over the false negatives (reference non-zero,
/// prediction 0). 0, 1 or 2 clicks.
pub fn edit_clicks_raw<R: Rng + ?Sized>(
    shape: [usize; 3],
    prediction: &[u8],
    reference: &[u8],
    rng: &mut R,
) -> Result<Clicks, InteractError> {
    check_len("reference mask", reference.len(), shape)?;
    check_len("prediction mask", prediction.len(), shape)?;
    let class = |i: usize| match (reference[i] != 0, prediction[i] != 0) {
        (false, true) => 0, // false positive -> background click
        (true, false) => 1, // false negative -> foreground click
        _ => 2,
    };
    let (bg, fg) = draw_two(reference.len(), class, rng);
    Ok(to_clicks(shape, bg, fg))
}

/// [`initial_clicks_raw`] on a [`clopa_volume::Mask`].
pub fn initial_clicks<R: Rng + ?Sized>(
    reference: &clopa_volume::Mask,
    rng: &mut R,
) -> Result<Clicks, InteractError> {
    initial_clicks_raw(reference.shape, &reference.data, rng)
}

/// [`edit_clicks_raw`] on two [`clopa_volume::Mask`]s of the same shape.
pub fn edit_clicks<R: Rng + ?Sized>(
    prediction: &clopa_volume::Mask,
    reference: &clopa_volume::Mask,
    rng: &mut R,
) -> Result<Clicks, InteractError> {
    if prediction.shape != reference.shape {
        return Err(InteractError::GridMismatch {
            what: "prediction",
            got: prediction.shape,
            expected: reference.shape,
        });
    }
    edit_clicks_raw(reference.shape, &prediction.data, &reference.data, rng)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SHAPE: [usize; 3] = [6, 7, 8];

    fn idx(c: [usize; 3]) -> usize {
        (c[0] * SHAPE[1] + c[1]) * SHAPE[2] + c[2]
    }

    /// A hand-made reference (a box) and a prediction (a shifted box), so FN and FP both exist.
    fn masks() -> (Vec<u8>, Vec<u8>) {
        let n = SHAPE.iter().product();
        let mut r = vec![0u8; n];
        let mut p = vec![0u8; n];
        for i in 0..n {
            let [x, y, z] = coords(i, SHAPE);
            r[i] = ((1..4).contains(&x) && (2..5).contains(&y) && (1..6).contains(&z)) as u8;
            p[i] = ((2..5).contains(&x) && (2..6).contains(&y) && (0..5).contains(&z)) as u8;
        }
        (r, p)
    }

    #[test]
    fn initial_clicks_land_in_the_right_class_for_many_seeds() {
        let (r, _) = masks();
        for seed in 0..300 {
            let mut rng = case_rng(seed, "case", 0);
            let clicks = initial_clicks_raw(SHAPE, &r, &mut rng).unwrap();
            assert_eq!(clicks.len(), 2);
            assert!(!clicks[0].positive && clicks[1].positive);
            assert_eq!(r[idx(clicks[0].coords)], 0);
            assert_eq!(r[idx(clicks[1].coords)], 1);
        }
    }

    #[test]
    fn edit_clicks_land_in_fp_and_fn_for_many_seeds() {
        let (r, p) = masks();
        for seed in 0..300 {
            let mut rng = case_rng(seed, "case", 1);
            let clicks = edit_clicks_raw(SHAPE, &p, &r, &mut rng).unwrap();
            assert_eq!(clicks.len(), 2);
            let (bg, fg) = (clicks[0], clicks[1]);
            assert!(!bg.positive && fg.positive);
            assert_eq!(
                (r[idx(bg.coords)], p[idx(bg.coords)]),
                (0, 1),
                "background click in the false positives"
            );
            assert_eq!(
                (r[idx(fg.coords)], p[idx(fg.coords)]),
                (1, 0),
                "foreground click in the false negatives"
            );
        }
    }

    #[test]
    fn click_counts_follow_empty_regions() {
        let (r, p) = masks();
        let mut rng = case_rng(1, "c", 0);
        assert!(edit_clicks_raw(SHAPE, &r, &r, &mut rng).unwrap().is_empty());
        // prediction = reference + extra: only a false-positive (background) click
        let mut over = r.clone();
        over[idx([5, 6, 7])] = 1;
        let c = edit_clicks_raw(SHAPE, &over, &r, &mut rng).unwrap();
        assert_eq!(
            c,
            vec![Click {
                coords: [5, 6, 7],
                positive: false
            }]
        );
        // empty prediction: only a false-negative click
        let c = edit_clicks_raw(SHAPE, &vec![0; r.len()], &r, &mut rng).unwrap();
        assert_eq!(c.len(), 1);
        assert!(c[0].positive);
        // empty reference: only a background click at init; all-foreground: only a foreground click
        assert_eq!(
            initial_clicks_raw(SHAPE, &vec![0; r.len()], &mut rng)
                .unwrap()
                .len(),
            1
        );
        let all = initial_clicks_raw(SHAPE, &vec![1; r.len()], &mut rng).unwrap();
        assert_eq!(all.len(), 1);
        assert!(all[0].positive);
        assert!(edit_clicks_raw(SHAPE, &p[1..], &r, &mut rng).is_err());
    }

    #[test]
    fn deterministic_and_runs_differ() {
        let (r, p) = masks();
        let draw = |seed, case: &str, run| {
            let mut rng = case_rng(seed, case, run);
            let mut v = initial_clicks_raw(SHAPE, &r, &mut rng).unwrap();
            for _ in 0..5 {
                v.extend(edit_clicks_raw(SHAPE, &p, &r, &mut rng).unwrap());
            }
            v
        };
        assert_eq!(draw(7, "liver_001", 0), draw(7, "liver_001", 0));
        assert_ne!(draw(7, "liver_001", 0), draw(7, "liver_001", 1));
        assert_ne!(draw(7, "liver_001", 0), draw(7, "liver_002", 0));
        assert_ne!(draw(7, "liver_001", 0), draw(8, "liver_001", 0));
    }

    #[test]
    fn case_rng_is_stable() {
        // Regression guard: the streams must not change between builds or Rust versions.
        let mut rng = case_rng(42, "hippocampus_017", 2);
        let first: u64 = rng.random();
        let mut again = case_rng(42, "hippocampus_017", 2);
        assert_eq!(first, again.random::<u64>());
        assert_eq!(first, STABLE_FIRST_DRAW);
    }
    const STABLE_FIRST_DRAW: u64 = 16_500_658_703_511_600_802;

    #[test]
    fn uniform_over_a_tiny_region() {
        // 4 foreground voxels; 8000 draws; chi-square with 3 dof must stay below 16.27 (p = 0.001).
        let shape = [2, 2, 2];
        let r = [1u8, 0, 1, 0, 1, 0, 1, 0];
        let mut rng = case_rng(3, "uniform", 0);
        let mut counts = [0usize; 8];
        let draws = 8000;
        for _ in 0..draws {
            let c = initial_clicks_raw(shape, &r, &mut rng).unwrap();
            counts[idx_in(c[1].coords, shape)] += 1;
            counts[idx_in(c[0].coords, shape)] += 1;
        }
        for group in [[0, 2, 4, 6], [1, 3, 5, 7]] {
            let expected = draws as f64 / 4.0;
            let chi2: f64 = group
                .iter()
                .map(|&i| (counts[i] as f64 - expected).powi(2) / expected)
                .sum();
            assert!(chi2 < 16.27, "chi2 {chi2}, counts {counts:?}");
        }
    }

    fn idx_in(c: [usize; 3], s: [usize; 3]) -> usize {
        (c[0] * s[1] + c[1]) * s[2] + c[2]
    }

    #[test]
    fn mask_adapters_check_shapes() {
        let a =
            clopa_volume::Volume::from_shape([2, 2, 2], [1.0; 3], vec![0u8, 1, 0, 1, 0, 0, 0, 0])
                .unwrap();
        let b = clopa_volume::Volume::from_shape([2, 2, 1], [1.0; 3], vec![0u8; 4]).unwrap();
        let mut rng = case_rng(0, "x", 0);
        assert_eq!(initial_clicks(&a, &mut rng).unwrap().len(), 2);
        assert!(matches!(
            edit_clicks(&b, &a, &mut rng),
            Err(InteractError::GridMismatch { .. })
        ));
        assert_eq!(edit_clicks(&a, &a, &mut rng).unwrap().len(), 0);
    }
}
