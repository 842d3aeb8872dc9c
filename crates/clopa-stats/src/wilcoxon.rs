//! The Wilcoxon signed-rank test with the semantics of `scipy.stats.wilcoxon` (SciPy 1.15).
//!
//! Every branch mirrors SciPy's `_wilcoxon.py`: how zeros are treated, how `method='auto'`
//! resolves, the exact null distribution (with its conservative rounding of a non-integral
//! statistic), the exhaustive sign-flip permutation test, and the normal approximation with
//! tie correction and optional continuity correction. Where SciPy returns NaN, so do we.

use std::fmt;

use crate::StatsError;

/// How zero differences are treated (`zero_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroMethod {
    /// Drop zero differences before ranking (SciPy's default, and R's behaviour).
    #[default]
    Wilcox,
    /// Rank zeros with the rest, then drop them; the normal approximation is adjusted (Cureton).
    Pratt,
    /// Rank zeros with the rest and split their ranks evenly between R+ and R−.
    Zsplit,
}

/// The alternative hypothesis on `d = x - y` (`'greater'`: x tends to be larger than y).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alternative {
    #[default]
    TwoSided,
    Greater,
    Less,
}

/// How the p-value is computed (`method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WilcoxonMethod {
    /// SciPy's `'auto'`: n > 50 → asymptotic; otherwise exact without ties or zeros; with ties or
    /// zeros, an exhaustive permutation test when n ≤ 13, else asymptotic.
    #[default]
    Auto,
    /// The no-ties exact null distribution (a non-integral statistic is rounded conservatively).
    Exact,
    /// The normal approximation with tie correction (`'asymptotic'`, formerly `'approx'`).
    Asymptotic,
    /// All 2^n sign flips of the differences (SciPy's `PermutationMethod()` when 2^n ≤ 9999).
    Permutation,
}

impl fmt::Display for ZeroMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ZeroMethod::Wilcox => "wilcox",
            ZeroMethod::Pratt => "pratt",
            ZeroMethod::Zsplit => "zsplit",
        })
    }
}

impl fmt::Display for Alternative {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Alternative::TwoSided => "two-sided",
            Alternative::Greater => "greater",
            Alternative::Less => "less",
        })
    }
}

impl fmt::Display for WilcoxonMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WilcoxonMethod::Auto => "auto",
            WilcoxonMethod::Exact => "exact",
            WilcoxonMethod::Asymptotic => "asymptotic",
            WilcoxonMethod::Permutation => "permutation",
        })
    }
}

impl std::str::FromStr for ZeroMethod {
    type Err = StatsError;
    fn from_str(s: &str) -> Result<Self, StatsError> {
        match s {
            "wilcox" => Ok(ZeroMethod::Wilcox),
            "pratt" => Ok(ZeroMethod::Pratt),
            "zsplit" => Ok(ZeroMethod::Zsplit),
            _ => Err(StatsError::UnknownOption {
                what: "zero_method",
                value: s.to_string(),
            }),
        }
    }
}

impl std::str::FromStr for Alternative {
    type Err = StatsError;
    fn from_str(s: &str) -> Result<Self, StatsError> {
        match s {
            "two-sided" => Ok(Alternative::TwoSided),
            "greater" => Ok(Alternative::Greater),
            "less" => Ok(Alternative::Less),
            _ => Err(StatsError::UnknownOption {
                what: "alternative",
                value: s.to_string(),
            }),
        }
    }
}

impl std::str::FromStr for WilcoxonMethod {
    type Err = StatsError;
    fn from_str(s: &str) -> Result<Self, StatsError> {
        match s {
            "auto" => Ok(WilcoxonMethod::Auto),
            "exact" => Ok(WilcoxonMethod::Exact),
            // SciPy still accepts the old name.
            "asymptotic" | "approx" => Ok(WilcoxonMethod::Asymptotic),
            "permutation" => Ok(WilcoxonMethod::Permutation),
            _ => Err(StatsError::UnknownOption {
                what: "method",
                value: s.to_string(),
            }),
        }
    }
}

/// The arguments of `scipy.stats.wilcoxon`; `Default` is SciPy's defaults (what IS_Validate uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WilcoxonOptions {
    pub zero_method: ZeroMethod,
    /// Continuity correction (±0.5 towards the mean); affects the asymptotic method only.
    pub correction: bool,
    pub alternative: Alternative,
    pub method: WilcoxonMethod,
}

/// The outcome of [`wilcoxon`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WilcoxonResult {
    /// min(R+, R−) for a two-sided test, R+ otherwise (SciPy's convention).
    pub statistic: f64,
    pub pvalue: f64,
    /// The z-score, when the normal approximation was used (−|z| for a two-sided test, and after
    /// the continuity correction when it applies).
    pub zstatistic: Option<f64>,
    /// The method actually used (`Auto` resolved).
    pub method: WilcoxonMethod,
}

/// SciPy's `permutation_test` default `n_resamples`: with 2^n no larger, the test is exhaustive.
const PERMUTATION_RESAMPLES: usize = 9999;

/// `scipy.stats.wilcoxon(x, y, zero_method, correction, alternative, method)` on `d = x - y`.
///
/// Errors only on unequal lengths, or a permutation test that SciPy would sample at random
/// (2^n > 9999; we do not reproduce its random draws). An empty sample, or a NaN in the input,
/// gives NaN as SciPy does.
pub fn wilcoxon(
    x: &[f64],
    y: &[f64],
    opts: &WilcoxonOptions,
) -> Result<WilcoxonResult, StatsError> {
    if x.len() != y.len() {
        return Err(StatsError::LengthMismatch {
            x: x.len(),
            y: y.len(),
        });
    }
    let d: Vec<f64> = x.iter().zip(y).map(|(a, b)| a - b).collect();
    wilcoxon_differences(&d, opts)
}

/// [`wilcoxon`] on the paired differences themselves (`scipy.stats.wilcoxon(d)`).
pub fn wilcoxon_differences(
    d: &[f64],
    opts: &WilcoxonOptions,
) -> Result<WilcoxonResult, StatsError> {
    let n = d.len();
    let mut method = opts.method;
    // SciPy decides n > 50 before looking at ties, counting zeros in.
    if method == WilcoxonMethod::Auto && n > 50 {
        method = WilcoxonMethod::Asymptotic;
    }
    if n == 0 || d.iter().any(|v| v.is_nan()) {
        // SciPy: an empty sample gives NaN; nan_policy='propagate' gives NaN for a NaN input.
        let z = (method == WilcoxonMethod::Asymptotic).then_some(f64::NAN);
        return Ok(WilcoxonResult {
            statistic: f64::NAN,
            pvalue: f64::NAN,
            zstatistic: z,
            method,
        });
    }
    let n_zero = d.iter().filter(|v| **v == 0.0).count();
    let st = signed_rank_statistic(d, opts.zero_method);

    if method == WilcoxonMethod::Auto {
        method = if !(st.has_ties || n_zero > 0) {
            WilcoxonMethod::Exact
        } else if n <= 13 {
            WilcoxonMethod::Permutation
        } else {
            WilcoxonMethod::Asymptotic
        };
    }

    let mut zstatistic = None;
    let pvalue = match method {
        WilcoxonMethod::Asymptotic => {
            let mut z = st.z;
            if opts.correction {
                let sign = match opts.alternative {
                    Alternative::Greater => 1.0,
                    Alternative::Less => -1.0,
                    Alternative::TwoSided => np_sign(z),
                };
                z -= sign * 0.5 / st.se;
            }
            let p = match opts.alternative {
                Alternative::Less => ndtr(z),
                Alternative::Greater => ndtr(-z),
                Alternative::TwoSided => 2.0 * ndtr(-z.abs()),
            };
            zstatistic = Some(if opts.alternative == Alternative::TwoSided {
                -z.abs()
            } else {
                z
            });
            p
        }
        WilcoxonMethod::Exact => {
            let dist = WilcoxonDistribution::new(st.count);
            // Conservative rounding of a non-integral statistic (SciPy gh-19872).
            match opts.alternative {
                Alternative::Less => dist.cdf(st.r_plus.ceil()),
                Alternative::Greater => dist.sf(st.r_plus.floor()),
                Alternative::TwoSided => (2.0
                    * dist.sf(st.r_plus.floor()).min(dist.cdf(st.r_plus.ceil())))
                .clamp(0.0, 1.0),
            }
        }
        WilcoxonMethod::Permutation => permutation_pvalue(d, opts.zero_method, opts.alternative)?,
        WilcoxonMethod::Auto => unreachable_auto(),
    };

    let statistic = if opts.alternative == Alternative::TwoSided {
        st.r_plus.min(st.r_minus)
    } else {
        st.r_plus
    };
    Ok(WilcoxonResult {
        statistic,
        pvalue,
        zstatistic,
        method,
    })
}

// `Auto` is resolved above; keep the match exhaustive without a panic.
fn unreachable_auto() -> f64 {
    f64::NAN
}

/// numpy's `sign`: NaN stays NaN, zero stays zero.
fn np_sign(z: f64) -> f64 {
    if z.is_nan() {
        f64::NAN
    } else if z > 0.0 {
        1.0
    } else if z < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// The standard normal CDF, as cephes' `ndtr` (which SciPy calls) evaluates it.
pub(crate) fn ndtr(a: f64) -> f64 {
    if a.is_nan() {
        return f64::NAN;
    }
    let x = a * std::f64::consts::FRAC_1_SQRT_2;
    let z = x.abs();
    if z < std::f64::consts::FRAC_1_SQRT_2 {
        0.5 + 0.5 * erf(x)
    } else {
        let y = 0.5 * erfc(z);
        if x > 0.0 { 1.0 - y } else { y }
    }
}

// Cephes' rational approximations (ndtr.c), the ones SciPy evaluates. statrs' erfc is off by
// ~5e-9 relative near p = 0.025, too far for the 1e-9 agreement with SciPy we promise.
#[allow(clippy::excessive_precision)] // cephes' digits, kept verbatim
const ERFC_P: [f64; 9] = [
    2.46196981473530512524E-10,
    5.64189564831068821977E-1,
    7.46321056442269912687E0,
    4.86371970985681366614E1,
    1.96520832956077098242E2,
    5.26445194995477358631E2,
    9.34528527171957607540E2,
    1.02755188689515710272E3,
    5.57535335369399327526E2,
];
#[allow(clippy::excessive_precision)] // cephes' digits, kept verbatim
const ERFC_Q: [f64; 8] = [
    1.32281951154744992508E1,
    8.67072140885989742329E1,
    3.54937778887819891062E2,
    9.75708501743205489753E2,
    1.82390916687909736289E3,
    2.24633760818710981792E3,
    1.65666309194161350182E3,
    5.57535340817727675546E2,
];
#[allow(clippy::excessive_precision)] // cephes' digits, kept verbatim
const ERFC_R: [f64; 6] = [
    5.64189583547755073984E-1,
    1.27536670759978104416E0,
    5.01905042251180477414E0,
    6.16021097993053585195E0,
    7.40974269950448939160E0,
    2.97886665372100240670E0,
];
#[allow(clippy::excessive_precision)] // cephes' digits, kept verbatim
const ERFC_S: [f64; 6] = [
    2.26052863220117276590E0,
    9.39603524938001434673E0,
    1.20489539808096656605E1,
    1.70814450747565897222E1,
    9.60896809063285878198E0,
    3.36907645100081516050E0,
];
#[allow(clippy::excessive_precision)] // cephes' digits, kept verbatim
const ERF_T: [f64; 5] = [
    9.60497373987051638749E0,
    9.00260197203842689217E1,
    2.23200534594684319226E3,
    7.00332514112805075473E3,
    5.55923013010394962768E4,
];
#[allow(clippy::excessive_precision)] // cephes' digits, kept verbatim
const ERF_U: [f64; 5] = [
    3.35617141647503099647E1,
    5.21357949780152679795E2,
    4.59432382970980127987E3,
    2.26290000613890934246E4,
    4.92673942608635921086E4,
];
#[allow(clippy::excessive_precision)] // cephes' digits, kept verbatim
const MAXLOG: f64 = 7.09782712893383996843E2;

/// Horner's rule, coefficients from the highest power down.
fn polevl(x: f64, c: &[f64]) -> f64 {
    c[1..].iter().fold(c[0], |acc, &ci| acc * x + ci)
}

/// Like [`polevl`] with an implicit leading coefficient 1.
fn p1evl(x: f64, c: &[f64]) -> f64 {
    c[1..].iter().fold(x + c[0], |acc, &ci| acc * x + ci)
}

/// The error function (cephes `erf`).
pub(crate) fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x.abs() > 1.0 {
        return 1.0 - erfc(x);
    }
    let z = x * x;
    x * polevl(z, &ERF_T) / p1evl(z, &ERF_U)
}

/// The complementary error function (cephes `erfc`).
pub(crate) fn erfc(a: f64) -> f64 {
    if a.is_nan() {
        return f64::NAN;
    }
    let x = a.abs();
    if x < 1.0 {
        return 1.0 - erf(a);
    }
    let z = -a * a;
    let under = if a < 0.0 { 2.0 } else { 0.0 };
    if z < -MAXLOG {
        return under;
    }
    let z = z.exp();
    let (p, q) = if x < 8.0 {
        (polevl(x, &ERFC_P), p1evl(x, &ERFC_Q))
    } else {
        (polevl(x, &ERFC_R), p1evl(x, &ERFC_S))
    };
    let mut y = z * p / q;
    if a < 0.0 {
        y = 2.0 - y;
    }
    if y == 0.0 { under } else { y }
}

struct SignedRank {
    r_plus: f64,
    r_minus: f64,
    se: f64,
    z: f64,
    count: usize,
    has_ties: bool,
}

/// Average ranks of `v` (1-based; NaNs, which sort last, each form their own group as in SciPy)
/// and the tie counts in sorted order: the group size at each group's first position, 0 elsewhere.
fn rank_average(v: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let n = v.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; n];
    let mut ties = vec![0.0; n];
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        // NaN != NaN, so NaNs never join a group (SciPy's `y[:-1] != y[1:]`).
        while end < n && v[order[end]] == v[order[start]] {
            end += 1;
        }
        let count = end - start;
        let rank = (start + 1) as f64 + (count as f64 - 1.0) / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        ties[start] = count as f64;
        start = end;
    }
    (ranks, ties)
}

/// SciPy's `_wilcoxon_statistic`: R+, R−, the standard error and z of the normal approximation.
fn signed_rank_statistic(d: &[f64], zero_method: ZeroMethod) -> SignedRank {
    let n = d.len();
    // 'wilcox' drops zeros by turning them into NaN, which SciPy ignores in every sum.
    let dd: Vec<f64> = d
        .iter()
        .map(|&v| {
            if zero_method == ZeroMethod::Wilcox && v == 0.0 {
                f64::NAN
            } else {
                v
            }
        })
        .collect();
    let n_nan = dd.iter().filter(|v| v.is_nan()).count();
    let count = (n - n_nan) as f64;
    let abs: Vec<f64> = dd.iter().map(|v| v.abs()).collect();
    let (r, mut t) = rank_average(&abs);
    let mut r_plus = 0.0;
    let mut r_minus = 0.0;
    for (v, rank) in dd.iter().zip(&r) {
        if *v > 0.0 {
            r_plus += rank;
        } else if *v < 0.0 {
            r_minus += rank;
        }
    }
    let has_ties = t.contains(&0.0);
    let i_zero: Vec<bool> = d.iter().map(|v| *v == 0.0).collect();
    if zero_method == ZeroMethod::Zsplit {
        let r_zero_2: f64 = i_zero
            .iter()
            .zip(&r)
            .filter(|(z, _)| **z)
            .map(|(_, r)| r)
            .sum::<f64>()
            / 2.0;
        r_plus += r_zero_2;
        r_minus += r_zero_2;
    }
    let mut mn = count * (count + 1.0) * 0.25;
    let mut se = count * (count + 1.0) * (2.0 * count + 1.0);
    if zero_method == ZeroMethod::Pratt {
        let n_zero = i_zero.iter().filter(|z| **z).count() as f64;
        mn -= n_zero * (n_zero + 1.0) * 0.25;
        se -= n_zero * (n_zero + 1.0) * (2.0 * n_zero + 1.0);
        // Zeros sort first, so their tie group is the first column; it leaves the tie correction.
        if n_zero > 0.0 {
            t[0] = 0.0;
        }
    }
    let tie_correct: f64 = t.iter().map(|t| t * t * t - t).sum();
    let se = ((se - tie_correct / 2.0) / 24.0).sqrt();
    // 0/0 gives NaN when nothing is left to rank, exactly as SciPy's division does.
    let z = (r_plus - mn) / se;
    SignedRank {
        r_plus,
        r_minus,
        se,
        z,
        count: count as usize,
        has_ties,
    }
}

/// SciPy's `WilcoxonDistribution`: the exact null distribution of R+ without ties.
struct WilcoxonDistribution {
    pmf: Vec<f64>,
    mean: f64,
}

impl WilcoxonDistribution {
    fn new(n: usize) -> Self {
        // SciPy's `_get_wilcoxon_distr`: halving keeps every entry a dyadic rational, so the
        // sums below are exact for n ≤ 53 whatever the summation order.
        let mut c = vec![1.0f64];
        for k in 1..=n {
            let m = c.len();
            let mut next = vec![0.0; k * (k + 1) / 2 + 1];
            let len = next.len();
            for i in 0..m {
                next[i] += c[i] * 0.5;
                next[len - m + i] += c[i] * 0.5;
            }
            c = next;
        }
        let nf = n as f64;
        WilcoxonDistribution {
            pmf: c,
            mean: nf * (nf + 1.0) / 4.0,
        }
    }

    /// P(T ≤ k) summed over pmf[..=k].
    fn cdf_raw(&self, k: i64) -> f64 {
        if k < 0 {
            return 0.0;
        }
        let end = (k as usize + 1).min(self.pmf.len());
        self.pmf[..end].iter().sum()
    }

    /// P(T ≥ k) summed over pmf[k..].
    fn sf_raw(&self, k: i64) -> f64 {
        let start = k.max(0) as usize;
        if start >= self.pmf.len() {
            return 0.0;
        }
        self.pmf[start..].iter().sum()
    }

    fn cdf(&self, k: f64) -> f64 {
        let k = k as i64;
        if (k as f64) <= self.mean {
            self.cdf_raw(k)
        } else {
            1.0 - self.sf_raw(k + 1)
        }
    }

    fn sf(&self, k: f64) -> f64 {
        let k = k as i64;
        if (k as f64) <= self.mean {
            self.sf_raw(k)
        } else {
            1.0 - self.cdf_raw(k - 1)
        }
    }
}

/// SciPy's `permutation_test(..., permutation_type='samples')` on one sample: the null
/// distribution of R+ over every sign flip of the differences, exhaustive when 2^n ≤ 9999.
fn permutation_pvalue(
    d: &[f64],
    zero_method: ZeroMethod,
    alternative: Alternative,
) -> Result<f64, StatsError> {
    let n = d.len();
    if n >= usize::BITS as usize || (1usize << n) > PERMUTATION_RESAMPLES {
        return Err(StatsError::PermutationTooLarge { n });
    }
    // Flipping signs leaves |d| and so the ranks unchanged; only which ranks count as positive
    // changes. Zeros (NaN under 'wilcox') never count; 'zsplit' adds a constant half-zero-rank sum.
    let dd: Vec<f64> = d
        .iter()
        .map(|&v| {
            if zero_method == ZeroMethod::Wilcox && v == 0.0 {
                f64::NAN
            } else {
                v
            }
        })
        .collect();
    let abs: Vec<f64> = dd.iter().map(|v| v.abs()).collect();
    let (r, _) = rank_average(&abs);
    let offset = if zero_method == ZeroMethod::Zsplit {
        d.iter()
            .zip(&r)
            .filter(|(v, _)| **v == 0.0)
            .map(|(_, r)| r)
            .sum::<f64>()
            / 2.0
    } else {
        0.0
    };
    let observed = signed_rank_statistic(d, zero_method).r_plus;
    let total = 1usize << n;
    // SciPy's relative tolerance for "numerically distinct but theoretically equal" values.
    let gamma = (f64::EPSILON * 100.0 * observed).abs();
    let (mut n_le, mut n_ge) = (0usize, 0usize);
    for mask in 0..total {
        let mut stat = 0.0;
        for (i, v) in dd.iter().enumerate() {
            let value = if mask >> i & 1 == 1 { -*v } else { *v };
            if value > 0.0 {
                stat += r[i];
            }
        }
        stat += offset;
        if stat <= observed + gamma {
            n_le += 1;
        }
        if stat >= observed - gamma {
            n_ge += 1;
        }
    }
    let less = n_le as f64 / total as f64;
    let greater = n_ge as f64 / total as f64;
    let p = match alternative {
        Alternative::Less => less,
        Alternative::Greater => greater,
        Alternative::TwoSided => less.min(greater) * 2.0,
    };
    Ok(p.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_distribution_sums_to_one_and_is_symmetric() {
        let dist = WilcoxonDistribution::new(10);
        assert_eq!(dist.pmf.len(), 56);
        assert_eq!(dist.pmf.iter().sum::<f64>(), 1.0);
        for k in 0..56 {
            assert_eq!(dist.pmf[k], dist.pmf[55 - k]);
        }
        // P(T = 0) = 2^-10: only the all-negative assignment.
        assert_eq!(dist.pmf[0], 1.0 / 1024.0);
    }

    #[test]
    fn ranks_average_ties_and_keep_nans_apart() {
        let (r, t) = rank_average(&[3.0, 1.0, 3.0, f64::NAN, f64::NAN]);
        assert_eq!(&r[..3], &[2.5, 1.0, 2.5]);
        assert_eq!(t, vec![1.0, 2.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn auto_picks_exact_permutation_or_asymptotic_like_scipy() {
        let opts = WilcoxonOptions::default();
        let no_ties: Vec<f64> = (1..=20)
            .map(|i| i as f64 * if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        assert_eq!(
            wilcoxon_differences(&no_ties, &opts).map(|r| r.method).ok(),
            Some(WilcoxonMethod::Exact)
        );
        let small_ties = [1.0, 1.0, -2.0, 3.0, 4.0];
        assert_eq!(
            wilcoxon_differences(&small_ties, &opts)
                .map(|r| r.method)
                .ok(),
            Some(WilcoxonMethod::Permutation)
        );
        let mut big_ties = no_ties.clone();
        big_ties[0] = 0.0;
        assert_eq!(
            wilcoxon_differences(&big_ties, &opts)
                .map(|r| r.method)
                .ok(),
            Some(WilcoxonMethod::Asymptotic)
        );
        let many: Vec<f64> = (1..=51).map(|i| i as f64).collect();
        assert_eq!(
            wilcoxon_differences(&many, &opts).map(|r| r.method).ok(),
            Some(WilcoxonMethod::Asymptotic)
        );
    }

    #[test]
    fn unequal_lengths_are_an_error_naming_both() {
        let err = wilcoxon(&[1.0, 2.0], &[1.0], &WilcoxonOptions::default());
        assert!(matches!(
            err,
            Err(StatsError::LengthMismatch { x: 2, y: 1 })
        ));
    }

    #[test]
    fn large_permutation_is_refused() {
        let opts = WilcoxonOptions {
            method: WilcoxonMethod::Permutation,
            ..Default::default()
        };
        let d: Vec<f64> = (1..=14).map(|i| i as f64).collect();
        assert!(matches!(
            wilcoxon_differences(&d, &opts),
            Err(StatsError::PermutationTooLarge { n: 14 })
        ));
    }

    #[test]
    fn ndtr_matches_known_values() {
        assert!((ndtr(0.0) - 0.5).abs() < 1e-16);
        assert!((ndtr(-1.959963984540054) - 0.025).abs() < 1e-14);
        // Reference values from mpmath (50 digits).
        assert!(((ndtr(-8.0) - 6.220960574271784e-16) / 6.220960574271784e-16).abs() < 1e-13);
        assert!(((ndtr(-3.0) - 1.3498980316300946e-3) / 1.3498980316300946e-3).abs() < 1e-14);
        assert!(((ndtr(1.5) - 0.9331927987311419) / 0.9331927987311419).abs() < 1e-15);
    }
}
