//! Expert-level thresholds from per-case nnU-Net Dice values, as IS_Validate derives them.

use crate::MetricsError;

/// `scipy.stats.norm.fit(values)`: the maximum-likelihood `(mu, sigma)` (sigma with ddof = 0).
pub fn norm_fit(values: &[f64]) -> Result<(f64, f64), MetricsError> {
    check(values)?;
    let n = values.len() as f64;
    let mu = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / n;
    Ok((mu, var.sqrt()))
}

/// The `gaussian` threshold with bound `b`: `max(mu - b·sigma, 0)` from [`norm_fit`]. CLoPA uses
/// `b = 0`, the mean nnU-Net Dice.
pub fn gaussian(values: &[f64], bound: f64) -> Result<f64, MetricsError> {
    let (mu, sigma) = norm_fit(values)?;
    Ok((mu - bound * sigma).max(0.0))
}

/// `pandas.Series.quantile(q)` (numpy's default linear interpolation, including its
/// `a + (b - a)·t` / `b - (b - a)·(1 - t)` switch at `t = 0.5`).
pub fn quantile(values: &[f64], q: f64) -> Result<f64, MetricsError> {
    check(values)?;
    if !(0.0..=1.0).contains(&q) {
        return Err(MetricsError::Quantile(q));
    }
    let mut s = values.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = q * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(s.len() - 1);
    let t = pos - lo as f64;
    let (a, b) = (s[lo], s[hi]);
    let d = b - a;
    Ok(if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    })
}

fn check(values: &[f64]) -> Result<(), MetricsError> {
    if values.is_empty() {
        return Err(MetricsError::Empty {
            what: "the list of reference Dice values".into(),
        });
    }
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(MetricsError::Threshold(*v));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_linearly() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(quantile(&v, 0.5).unwrap(), 2.5);
        assert_eq!(quantile(&v, 0.0).unwrap(), 1.0);
        assert_eq!(quantile(&v, 1.0).unwrap(), 4.0);
        assert!(quantile(&v, 1.5).is_err());
        assert!(quantile(&[], 0.5).is_err());
    }

    #[test]
    fn gaussian_clips_at_zero() {
        assert_eq!(gaussian(&[0.1, 0.3], 10.0).unwrap(), 0.0);
        assert!((gaussian(&[0.1, 0.3], 0.0).unwrap() - 0.2).abs() < 1e-15);
    }
}
