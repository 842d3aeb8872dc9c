//! Paired significance tests and the significance ranking of clopa's evaluation
//! (DESIGN.md step 6).
//!
//! - [`wilcoxon`] / [`wilcoxon_differences`]: the Wilcoxon signed-rank test with the exact
//!   semantics of `scipy.stats.wilcoxon` (SciPy 1.15): [`ZeroMethod`], [`Alternative`],
//!   [`WilcoxonMethod`] (`auto` resolves to exact, an exhaustive sign-flip permutation test or the
//!   normal approximation exactly as SciPy does), returning a [`WilcoxonResult`].
//! - [`mcnemar`]: McNemar's test as statsmodels 0.14 computes it ([`McNemarKind`]), and
//!   [`failure_table`], the NoF contingency table IS_Validate builds.
//! - [`rank_methods`]: for one metric, every ordered pair of methods tested ([`PairResult`]) and
//!   every method's wins and rank ([`MethodRank`]) under [`RankMode::IsValidate`] (two-sided test,
//!   mean decides, dense ranks) or [`RankMode::ChallengeR`] (one-sided, corrected normal
//!   approximation, "min" ranks).
//!
//! ```
//! use clopa_stats::{wilcoxon, WilcoxonOptions, WilcoxonMethod};
//! let x = [0.649, 0.663, 0.649, 0.661, 0.608];
//! let y = [0.570, 0.577, 0.600, 0.646, 0.521];
//! let r = wilcoxon(&x, &y, &WilcoxonOptions::default()).unwrap();
//! assert_eq!(r.method, WilcoxonMethod::Exact);
//! assert_eq!((r.statistic, r.pvalue), (0.0, 0.0625));
//! ```

mod mcnemar;
mod ranking;
mod wilcoxon;

pub use mcnemar::{McNemarKind, McNemarResult, Table2x2, binomial_less, failure_table, mcnemar};
pub use ranking::{
    Direction, MethodRank, PairResult, PairTest, RankMode, RankOptions, Ranking, dense_rank_desc,
    min_rank_desc, rank_methods,
};
pub use wilcoxon::{
    Alternative, WilcoxonMethod, WilcoxonOptions, WilcoxonResult, ZeroMethod, wilcoxon,
    wilcoxon_differences,
};

/// Everything that can go wrong in this crate; each message names the values at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StatsError {
    #[error("paired samples differ in length: x has {x} values, y has {y}")]
    LengthMismatch { x: usize, y: usize },
    #[error(
        "an exhaustive permutation test needs 2^n <= 9999 sign flips, but n = {n}; \
         use method 'asymptotic' or 'exact'"
    )]
    PermutationTooLarge { n: usize },
    #[error("unknown {what} \"{value}\"")]
    UnknownOption { what: &'static str, value: String },
    #[error("method \"{method}\" appears twice")]
    DuplicateMethod { method: String },
    #[error(
        "method \"{method}\" has {len} paired values but \"{first}\" has {expected}: \
         every method must be evaluated on the same cases"
    )]
    SampleLength {
        method: String,
        len: usize,
        first: String,
        expected: usize,
    },
}
