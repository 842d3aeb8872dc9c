//! McNemar's test as `statsmodels.stats.contingency_tables.mcnemar` (0.14) computes it, and the
//! failure table IS_Validate builds for the NoF comparison.

use crate::StatsError;

/// A 2×2 table of paired outcomes; only the off-diagonal counts b = `[0][1]` and c = `[1][0]`
/// enter the test.
pub type Table2x2 = [[u64; 2]; 2];

/// Which McNemar variant (`exact`, `correction` in statsmodels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McNemarKind {
    /// Two-sided binomial test on (b, c) with p = 1/2; statistic min(b, c).
    Exact,
    /// Chi-square with one degree of freedom: (|b − c| − 1)²/(b + c) with correction,
    /// (b − c)²/(b + c) without.
    ChiSquare { correction: bool },
}

/// Statistic and p-value of [`mcnemar`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McNemarResult {
    pub statistic: f64,
    pub pvalue: f64,
}

/// `statsmodels` `mcnemar(table, exact, correction)`.
///
/// The b = c = 0 pitfalls are kept as statsmodels has them: the exact test gives p = 1, the
/// corrected chi-square gives statistic ∞ and p = 0, the uncorrected one NaN.
pub fn mcnemar(table: &Table2x2, kind: McNemarKind) -> McNemarResult {
    let b = table[0][1];
    let c = table[1][0];
    match kind {
        McNemarKind::Exact => {
            let statistic = b.min(c);
            let pvalue = (2.0 * binom_cdf_half(statistic, b + c)).min(1.0);
            McNemarResult {
                statistic: statistic as f64,
                pvalue,
            }
        }
        McNemarKind::ChiSquare { correction } => {
            let corr = if correction { 1.0 } else { 0.0 };
            let diff = (b as f64 - c as f64).abs() - corr;
            let statistic = diff * diff / (b + c) as f64;
            McNemarResult {
                statistic,
                pvalue: chi2_sf_1(statistic),
            }
        }
    }
}

/// The exact one-sided binomial tail P(X ≤ k) for X ~ Bin(b + c, 1/2) with k = b: small when the
/// first algorithm fails less often than the second. Used for a one-sided failure comparison.
pub fn binomial_less(table: &Table2x2) -> f64 {
    let b = table[0][1];
    let c = table[1][0];
    binom_cdf_half(b, b + c)
}

/// IS_Validate's NoF table from two per-case failure vectors:
/// `[[both_pass, only_2_fails], [only_1_fails, both_fail]]`.
pub fn failure_table(fail1: &[bool], fail2: &[bool]) -> Result<Table2x2, StatsError> {
    if fail1.len() != fail2.len() {
        return Err(StatsError::LengthMismatch {
            x: fail1.len(),
            y: fail2.len(),
        });
    }
    let mut t = [[0u64; 2]; 2];
    for (&f1, &f2) in fail1.iter().zip(fail2) {
        t[usize::from(f1)][usize::from(f2)] += 1;
    }
    Ok(t)
}

/// The chi-square survival function with one degree of freedom: P(χ²₁ > x) = erfc(√(x/2)).
fn chi2_sf_1(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    crate::wilcoxon::erfc((x / 2.0).sqrt())
}

/// P(X ≤ k) for X ~ Bin(n, 1/2).
fn binom_cdf_half(k: u64, n: u64) -> f64 {
    if k >= n {
        return 1.0;
    }
    if n <= 120 {
        // Exact integer arithmetic: C(n, j) < 2^120 fits u128, and one division rounds once.
        let mut term: u128 = 1; // C(n, 0)
        let mut sum: u128 = 1;
        for j in 1..=k as u128 {
            term = term * (n as u128 - j + 1) / j;
            sum += term;
        }
        return sum as f64 / 2f64.powi(n as i32);
    }
    // Large n: the term j = k in log space, then the recursion C(n, j-1) = C(n, j)·j/(n-j+1)
    // downwards; the relative error stays near 1e-13, far inside the 1e-9 we promise.
    let ln_top = statrs::function::factorial::ln_binomial(n, k) - n as f64 * std::f64::consts::LN_2;
    let mut term = ln_top.exp();
    let mut sum = term;
    let mut j = k;
    while j > 0 {
        term *= j as f64 / (n - j + 1) as f64;
        sum += term;
        if term < sum * 1e-18 {
            break;
        }
        j -= 1;
    }
    sum.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_small_and_large_agree_at_the_switch() {
        // n = 120 via integers vs the log-space route on the same numbers.
        let exact = binom_cdf_half(50, 120);
        let ln_top =
            statrs::function::factorial::ln_binomial(120, 50) - 120.0 * std::f64::consts::LN_2;
        let mut term = ln_top.exp();
        let mut sum = term;
        for j in (1..=50u64).rev() {
            term *= j as f64 / (120 - j + 1) as f64;
            sum += term;
        }
        assert!(((exact - sum) / exact).abs() < 1e-12, "{exact} vs {sum}");
    }

    #[test]
    fn binomial_cdf_is_symmetric_at_half() {
        // P(X ≤ k) + P(X ≤ n − k − 1) = 1 for p = 1/2.
        for (k, n) in [(3u64, 10u64), (100, 301), (500, 1001)] {
            let s = binom_cdf_half(k, n) + binom_cdf_half(n - k - 1, n);
            assert!((s - 1.0).abs() < 1e-12, "k={k} n={n}: {s}");
        }
    }

    #[test]
    fn failure_table_counts_each_cell() {
        let t = failure_table(&[true, false, true, false], &[true, true, false, false]).ok();
        assert_eq!(t, Some([[1, 1], [1, 1]]));
        assert!(failure_table(&[true], &[]).is_err());
    }
}
