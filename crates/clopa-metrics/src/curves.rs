//! Interaction-curve and trajectory metrics as IS_Validate (Esmaeili et al.) and CLoPA compute
//! them.
//!
//! A curve holds one score per interaction: index 0 is the interactive initialisation, 1..=100
//! the edits (length 101 in the protocol, any length ≥ 1 here).
//!
//! - nAUC = `scipy.integrate.trapezoid(curve) / (len - 1)`;
//! - NoI = 1-based index of the first value **strictly** above the threshold, `len` if none
//!   (so a curve first above at its last entry also gets `len`, without being a failure);
//! - failed = no value strictly above the threshold;
//! - trajectories spread each training episode's value over the stream positions it covers.

use crate::MetricsError;

/// Trapezoid rule with unit spacing (`scipy.integrate.trapezoid(y)`); 0 for fewer than 2 values.
pub fn trapezoid(y: &[f64]) -> f64 {
    y.windows(2).map(|w| (w[1] + w[0]) / 2.0).sum()
}

/// Normalised area under the curve, `trapezoid / (len - 1)`; NaN for fewer than 2 values.
pub fn nauc(curve: &[f64]) -> f64 {
    if curve.len() < 2 {
        return f64::NAN;
    }
    trapezoid(curve) / (curve.len() - 1) as f64
}

/// Number of interactions: the 1-based index of the first value strictly greater than
/// `threshold` (`argmax(curve > thr) + 1`), or `curve.len()` when there is none.
pub fn noi(curve: &[f64], threshold: f64) -> usize {
    curve
        .iter()
        .position(|&v| v > threshold)
        .map_or(curve.len(), |i| i + 1)
}

/// A failure: no value strictly greater than `threshold` (equality does not count).
pub fn failed(curve: &[f64], threshold: f64) -> bool {
    !curve.iter().any(|&v| v > threshold)
}

/// Per-curve values at one threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurveSummary {
    /// Value at the initialisation (index 0).
    pub init: f64,
    /// Value at the last interaction.
    pub last: f64,
    /// Maximum value.
    pub peak: f64,
    /// See [`nauc`].
    pub nauc: f64,
    /// See [`noi`].
    pub noi: usize,
    /// `noi / len`.
    pub nnoi: f64,
    /// See [`failed`].
    pub failed: bool,
}

/// Summarises one curve at `threshold`. Errors on an empty curve or a non-finite threshold.
pub fn summarize(curve: &[f64], threshold: f64) -> Result<CurveSummary, MetricsError> {
    if !threshold.is_finite() {
        return Err(MetricsError::Threshold(threshold));
    }
    let (Some(&init), Some(&last)) = (curve.first(), curve.last()) else {
        return Err(MetricsError::Empty {
            what: "the curve".into(),
        });
    };
    let n = noi(curve, threshold);
    Ok(CurveSummary {
        init,
        last,
        peak: curve.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        nauc: nauc(curve),
        noi: n,
        nnoi: n as f64 / curve.len() as f64,
        failed: failed(curve, threshold),
    })
}

/// Dataset-level aggregates of per-case curve summaries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregate {
    /// Number of cases.
    pub n: usize,
    pub mean_noi: f64,
    pub median_noi: f64,
    /// `mean_noi / n_interactions` (IS_Validate's "normalised mean NoI").
    pub normalised_mean_noi: f64,
    /// `median_noi / n_interactions`.
    pub normalised_median_noi: f64,
    /// `100 · mean(NoI) / n_interactions`, the paper's nNoI column.
    pub nnoi_pct: f64,
    /// Number of failures.
    pub nof_count: usize,
    /// `100 · failures / n`, the paper's NoF column.
    pub nof_pct: f64,
    pub mean_nauc: f64,
    pub median_nauc: f64,
}

/// Aggregates summaries of curves with `n_interactions` entries each (101 in the protocol).
pub fn aggregate(
    summaries: &[CurveSummary],
    n_interactions: usize,
) -> Result<Aggregate, MetricsError> {
    if summaries.is_empty() {
        return Err(MetricsError::Empty {
            what: "the list of curve summaries".into(),
        });
    }
    let n = summaries.len();
    let nois: Vec<f64> = summaries.iter().map(|s| s.noi as f64).collect();
    let naucs: Vec<f64> = summaries.iter().map(|s| s.nauc).collect();
    let mean_noi = mean(&nois);
    let median_noi = median(&nois);
    let ni = n_interactions as f64;
    let nof_count = summaries.iter().filter(|s| s.failed).count();
    Ok(Aggregate {
        n,
        mean_noi,
        median_noi,
        normalised_mean_noi: mean_noi / ni,
        normalised_median_noi: median_noi / ni,
        nnoi_pct: nnoi_pct(mean_noi, n_interactions),
        nof_count,
        nof_pct: nof_pct(nof_count, n),
        mean_nauc: mean(&naucs),
        median_nauc: median(&naucs),
    })
}

/// `100 · mean_noi / n_interactions`.
pub fn nnoi_pct(mean_noi: f64, n_interactions: usize) -> f64 {
    100.0 * mean_noi / n_interactions as f64
}

/// `100 · failures / n`.
pub fn nof_pct(failures: usize, n: usize) -> f64 {
    100.0 * failures as f64 / n as f64
}

/// Arithmetic mean (NaN for an empty slice).
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Median as `numpy.median` (mean of the two middle values for an even count; NaN if empty or
/// if any value is NaN).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() || v.iter().any(|x| x.is_nan()) {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// Element-wise mean of equally long curves (inference runs of one case, or training runs'
/// trajectories). Errors when there is none or the lengths differ.
pub fn mean_curves<C: AsRef<[f64]>>(curves: &[C]) -> Result<Vec<f64>, MetricsError> {
    let Some(first) = curves.first() else {
        return Err(MetricsError::Empty {
            what: "the list of curves".into(),
        });
    };
    let len = first.as_ref().len();
    let mut sum = vec![0.0; len];
    for (index, c) in curves.iter().enumerate() {
        let c = c.as_ref();
        if c.len() != len {
            return Err(MetricsError::CurveLength {
                what: "mean over curves".into(),
                index,
                len: c.len(),
                expected: len,
            });
        }
        for (s, v) in sum.iter_mut().zip(c) {
            *s += v;
        }
    }
    let k = curves.len() as f64;
    Ok(sum.into_iter().map(|s| s / k).collect())
}

/// The per-training-run trajectory over stream positions `1..=n` (returned 0-based: element
/// `p - 1` is position `p`): `base` before the first episode's cache size, then each episode's
/// value from its `n_seen` on (IS_Validate `merge_episodes`: the model trained on `c_k` samples is
/// credited from stream sample `c_k` onward).
///
/// `episodes` holds `(n_seen, value)` in episode order; `n_seen` must increase strictly and lie
/// in `1..=n`.
pub fn trajectory(
    n: usize,
    base: f64,
    episodes: &[(usize, f64)],
) -> Result<Vec<f64>, MetricsError> {
    if n == 0 {
        return Err(MetricsError::Empty {
            what: "the stream (N = 0)".into(),
        });
    }
    let mut prev = 0;
    for (index, &(n_seen, _)) in episodes.iter().enumerate() {
        if n_seen == 0 || n_seen > n || n_seen <= prev {
            return Err(MetricsError::EpisodePosition { index, n_seen, n });
        }
        prev = n_seen;
    }
    let mut out = vec![base; n];
    for (k, &(n_seen, value)) in episodes.iter().enumerate() {
        let end = episodes.get(k + 1).map_or(n, |e| e.0 - 1);
        for v in &mut out[n_seen - 1..end] {
            *v = value;
        }
    }
    Ok(out)
}

/// Trajectory AUC: `trapezoid(traj) / (len - 1)` (same formula as [`nauc`]).
pub fn trajectory_auc(traj: &[f64]) -> f64 {
    nauc(traj)
}

/// Number of samples to reach `threshold`, as a fraction of the stream, exactly as IS_Validate's
/// `num_of_samples.py`: `argmax(traj >= thr) / len(traj)`, i.e. the **0-based** index of the first
/// position whose value reaches (`>=`) the threshold divided by N (so reaching it at stream
/// position 1 gives 0). NaN when it is never reached or the trajectory is empty.
pub fn nos(traj: &[f64], threshold: f64) -> f64 {
    match traj.iter().position(|&v| v >= threshold) {
        Some(i) => i as f64 / traj.len() as f64,
        None => f64::NAN,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn noi_and_failure_edge_cases() {
        let c = [0.1, 0.5, 0.9];
        assert_eq!(noi(&c, 0.5), 3);
        assert!(!failed(&c, 0.5));
        // touching the threshold does not count
        assert_eq!(noi(&c, 0.9), 3);
        assert!(failed(&c, 0.9));
        assert_eq!(noi(&c, 0.0), 1);
    }

    #[test]
    fn nauc_unit_spacing() {
        assert_eq!(nauc(&[0.0, 1.0, 1.0]), 0.75);
        assert!(nauc(&[1.0]).is_nan());
    }

    #[test]
    fn trajectory_spreads_episode_values() {
        // N = 10, episodes trained on 5 and 8 samples.
        let t = trajectory(10, 0.1, &[(5, 0.5), (8, 0.8)]).unwrap();
        assert_eq!(t, vec![0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.8, 0.8, 0.8]);
        assert!(trajectory(10, 0.1, &[(8, 0.5), (5, 0.8)]).is_err());
        assert!(trajectory(10, 0.1, &[(11, 0.5)]).is_err());
        assert!(trajectory(10, 0.1, &[(0, 0.5)]).is_err());
        assert_eq!(nos(&t, 0.5), 0.4);
        assert!(nos(&t, 0.9).is_nan());
        assert_eq!(nos(&t, 0.1), 0.0);
    }

    #[test]
    fn mean_curves_checks_lengths() {
        let m = mean_curves(&[vec![1.0, 2.0], vec![3.0, 4.0]]).unwrap();
        assert_eq!(m, vec![2.0, 3.0]);
        assert!(mean_curves(&[vec![1.0, 2.0], vec![3.0]]).is_err());
        assert!(mean_curves::<Vec<f64>>(&[]).is_err());
    }

    #[test]
    fn median_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
