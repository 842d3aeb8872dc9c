//! Segmentation and interaction metrics of the CLoPA protocol, matching the reference
//! implementations the paper used.
//!
//! - Mask metrics on binary 3D masks (`&[u8]`, shape `[n0, n1, n2]` C-contiguous with axis 2
//!   fastest, spacing in mm in the same axis order): [`dice`], [`nsd`], [`hd`], [`assd`], all
//!   computed as DeepMind surface-distance 0.1 does (surfels on the voxel-corner grid weighted by
//!   area, exact anisotropic Euclidean distance transform, `<=` tolerance). The raw functions keep
//!   the reference's NaN/inf for empty masks; [`is_validate`] applies the IS_Validate/CLoPA
//!   convention (both empty → 1, one empty → 0). [`SurfaceDistances`] exposes the surfels for
//!   anything else; [`edt`] the distance transform itself.
//! - Interaction curves ([`curves`]): nAUC, NoI, failure, per-curve summaries, dataset
//!   aggregates (nNoI %, NoF %), run averaging, stream trajectories with AUC and NoS.
//! - Thresholds ([`threshold`]): the nnU-Net-derived Gaussian bound and pandas' linear quantile.
//! - [`volume`]: the same mask metrics on `clopa_volume::Mask`.
//!
//! ```
//! use clopa_metrics::{dice, nsd, is_validate};
//! let shape = [4, 4, 4];
//! let mut a = vec![0u8; 64];
//! let mut b = vec![0u8; 64];
//! a[21] = 1;
//! b[21] = 1;
//! b[22] = 1;
//! assert!((dice(&a, &b, shape)? - 2.0 / 3.0).abs() < 1e-12);
//! let n = nsd(&a, &b, shape, [1.0, 1.0, 2.0], 1.0)?;
//! assert!(n > 0.0 && n <= 1.0);
//! assert_eq!(is_validate::nsd(&[0u8; 64], &[0u8; 64], shape, [1.0; 3], 1.0)?, 1.0);
//! # Ok::<(), clopa_metrics::MetricsError>(())
//! ```

pub mod curves;
pub mod edt;
mod normals_table;
pub mod surface;
pub mod threshold;
pub mod volume;

pub use surface::{Assd, SurfaceDistances};

/// Everything that can go wrong in this crate; each variant names the offending input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error("{what} has {len} values but the shape {shape:?} needs {expected}")]
    Length {
        what: String,
        len: usize,
        shape: [usize; 3],
        expected: usize,
    },
    #[error("the spacing {0:?} is not a triple of positive finite millimetres")]
    Spacing([f64; 3]),
    #[error("the tolerance {0} mm is not a non-negative finite number")]
    Tolerance(f64),
    #[error("the percentile {0} is outside [0, 100]")]
    Percentile(f64),
    #[error("{what} is empty")]
    Empty { what: String },
    #[error("{what}: curve {index} has {len} values but the first has {expected}")]
    CurveLength {
        what: String,
        index: usize,
        len: usize,
        expected: usize,
    },
    #[error("the threshold {0} is not a finite number")]
    Threshold(f64),
    #[error("the quantile {0} is outside [0, 1]")]
    Quantile(f64),
    #[error(
        "episode {index} has n_seen = {n_seen}, which is not a stream position in 1..={n} \
         (or episodes are not in increasing n_seen order)"
    )]
    EpisodePosition {
        index: usize,
        n_seen: usize,
        n: usize,
    },
    #[error("the grids differ: pred is {pred}, ref is {reference}")]
    Grid { pred: String, reference: String },
}

pub(crate) fn check_len(what: &str, len: usize, shape: [usize; 3]) -> Result<(), MetricsError> {
    let expected = shape[0]
        .checked_mul(shape[1])
        .and_then(|v| v.checked_mul(shape[2]));
    if expected != Some(len) {
        return Err(MetricsError::Length {
            what: what.to_string(),
            len,
            shape,
            expected: expected.unwrap_or(usize::MAX),
        });
    }
    Ok(())
}

pub(crate) fn check_spacing(spacing: [f64; 3]) -> Result<(), MetricsError> {
    if spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(MetricsError::Spacing(spacing));
    }
    Ok(())
}

fn check_tolerance(t: f64) -> Result<(), MetricsError> {
    if !t.is_finite() || t < 0.0 {
        return Err(MetricsError::Tolerance(t));
    }
    Ok(())
}

/// Voxel counts of a mask pair: `(|pred|, |ref|, |pred ∩ ref|)`.
pub fn overlap_counts(
    pred: &[u8],
    reference: &[u8],
    shape: [usize; 3],
) -> Result<(usize, usize, usize), MetricsError> {
    check_len("pred", pred.len(), shape)?;
    check_len("ref", reference.len(), shape)?;
    use rayon::prelude::*;
    Ok(pred
        .par_chunks(1 << 16)
        .zip(reference.par_chunks(1 << 16))
        .map(|(p, r)| {
            let mut c = (0, 0, 0);
            for (&a, &b) in p.iter().zip(r) {
                let (a, b) = (usize::from(a != 0), usize::from(b != 0));
                c.0 += a;
                c.1 += b;
                c.2 += a & b;
            }
            c
        })
        .reduce(|| (0, 0, 0), |x, y| (x.0 + y.0, x.1 + y.1, x.2 + y.2)))
}

/// Volumetric Dice `2|P∩R| / (|P| + |R|)` (`compute_dice_coefficient`): NaN when both are empty.
pub fn dice(pred: &[u8], reference: &[u8], shape: [usize; 3]) -> Result<f64, MetricsError> {
    let (p, r, i) = overlap_counts(pred, reference, shape)?;
    if p + r == 0 {
        return Ok(f64::NAN);
    }
    Ok(2.0 * i as f64 / (p + r) as f64)
}

/// Normalised surface Dice at `tolerance_mm` (DeepMind `compute_surface_dice_at_tolerance`):
/// NaN when both masks are empty, 0 when exactly one is.
pub fn nsd(
    pred: &[u8],
    reference: &[u8],
    shape: [usize; 3],
    spacing: [f64; 3],
    tolerance_mm: f64,
) -> Result<f64, MetricsError> {
    check_tolerance(tolerance_mm)?;
    Ok(
        SurfaceDistances::compute_within(pred, reference, shape, spacing, tolerance_mm)?
            .surface_dice(tolerance_mm),
    )
}

/// Robust Hausdorff distance at `percentile` (95 for HD95, 100 for HD) as
/// `compute_robust_hausdorff`: surfel-area weighted, no interpolation, max of both directions;
/// infinite when either mask is empty.
pub fn hd(
    pred: &[u8],
    reference: &[u8],
    shape: [usize; 3],
    spacing: [f64; 3],
    percentile: f64,
) -> Result<f64, MetricsError> {
    if !(0.0..=100.0).contains(&percentile) {
        return Err(MetricsError::Percentile(percentile));
    }
    Ok(SurfaceDistances::compute(pred, reference, shape, spacing)?.robust_hausdorff(percentile))
}

/// Average symmetric surface distance, both DeepMind-based variants (see [`Assd`]).
pub fn assd(
    pred: &[u8],
    reference: &[u8],
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Result<Assd, MetricsError> {
    Ok(SurfaceDistances::compute(pred, reference, shape, spacing)?.average_distances())
}

/// Dice and NSD under the IS_Validate / CLoPA convention (`ignore_empty=False`): an empty
/// reference gives 1 if the prediction is empty too and 0 otherwise; an empty prediction against a
/// non-empty reference gives 0. This is what the simulation records at every step.
pub mod is_validate {
    use super::*;

    /// Dice; both empty → 1, one empty → 0.
    pub fn dice(pred: &[u8], reference: &[u8], shape: [usize; 3]) -> Result<f64, MetricsError> {
        let (p, r, i) = overlap_counts(pred, reference, shape)?;
        Ok(match (p, r) {
            (0, 0) => 1.0,
            (0, _) | (_, 0) => 0.0,
            _ => 2.0 * i as f64 / (p + r) as f64,
        })
    }

    /// NSD; both empty → 1, one empty → 0.
    pub fn nsd(
        pred: &[u8],
        reference: &[u8],
        shape: [usize; 3],
        spacing: [f64; 3],
        tolerance_mm: f64,
    ) -> Result<f64, MetricsError> {
        let (p, r, _) = overlap_counts(pred, reference, shape)?;
        check_spacing(spacing)?;
        check_tolerance(tolerance_mm)?;
        Ok(match (p, r) {
            (0, 0) => 1.0,
            (0, _) | (_, 0) => 0.0,
            _ => super::nsd(pred, reference, shape, spacing, tolerance_mm)?,
        })
    }

    /// Both at once (one pass over the masks for the counts).
    pub fn dice_nsd(
        pred: &[u8],
        reference: &[u8],
        shape: [usize; 3],
        spacing: [f64; 3],
        tolerance_mm: f64,
    ) -> Result<(f64, f64), MetricsError> {
        Ok((
            dice(pred, reference, shape)?,
            nsd(pred, reference, shape, spacing, tolerance_mm)?,
        ))
    }
}
