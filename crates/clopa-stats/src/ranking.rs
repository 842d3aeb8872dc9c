//! Significance ranking of methods on one metric (DESIGN.md step 6, protocol.md §5).
//!
//! Two schemes:
//! - [`RankMode::IsValidate`] (what CLoPA/IS_Validate run): for each unordered pair a two-sided
//!   test with SciPy's defaults (or McNemar's exact test on failures); a method wins against an
//!   opponent when p < α and its mean is strictly better; rank = dense rank of wins, descending.
//! - [`RankMode::ChallengeR`] (the MSD challenge's `testThenRank`): for each ordered pair a
//!   one-sided Wilcoxon test (`greater` when higher is better, `less` otherwise), normal
//!   approximation with continuity correction, zeros dropped; a method wins when p < α;
//!   rank = "min" rank of wins, descending. For failures the one-sided test is the exact binomial
//!   tail on the discordant pairs (the one-sided form of McNemar's exact test).

use std::fmt;

use crate::StatsError;
use crate::mcnemar::{McNemarKind, binomial_less, failure_table, mcnemar};
use crate::wilcoxon::{Alternative, WilcoxonMethod, WilcoxonOptions, ZeroMethod, wilcoxon};

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    HigherIsBetter,
    LowerIsBetter,
}

/// The ranking scheme; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RankMode {
    #[default]
    IsValidate,
    ChallengeR,
}

/// The paired test used for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairTest {
    /// Wilcoxon signed-rank on paired values.
    Wilcoxon,
    /// McNemar on paired failures (a value ≠ 0 is a failure).
    McNemar,
}

impl fmt::Display for PairTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PairTest::Wilcoxon => "wilcoxon",
            PairTest::McNemar => "mcnemar",
        })
    }
}

impl fmt::Display for RankMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RankMode::IsValidate => "is-validate",
            RankMode::ChallengeR => "challenger",
        })
    }
}

/// Settings of [`rank_methods`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankOptions {
    pub direction: Direction,
    pub test: PairTest,
    pub mode: RankMode,
    /// Significance level; no multiple-comparison correction (as both schemes do).
    pub alpha: f64,
}

/// One ordered pair's comparison (a row of `pairs.parquet`).
#[derive(Debug, Clone, PartialEq)]
pub struct PairResult {
    pub method: String,
    pub opponent: String,
    pub test: PairTest,
    pub p_value: f64,
    pub method_mean: f64,
    pub opponent_mean: f64,
    /// `method` is significantly better than `opponent`.
    pub win: bool,
}

/// One method's standing (a row of `ranking.parquet`).
#[derive(Debug, Clone, PartialEq)]
pub struct MethodRank {
    pub method: String,
    pub mean: f64,
    pub wins: u32,
    pub rank: u32,
}

/// Every pair (both directions) and every method's wins and rank, in input order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ranking {
    pub pairs: Vec<PairResult>,
    pub ranks: Vec<MethodRank>,
}

/// Ranks `samples` (method name, paired values in the same case/position order for every method).
///
/// Errors when a method appears twice or when the methods have different numbers of values.
/// One method gives one rank-1 entry and no pairs.
pub fn rank_methods(
    samples: &[(String, Vec<f64>)],
    opts: &RankOptions,
) -> Result<Ranking, StatsError> {
    for (i, (name, values)) in samples.iter().enumerate() {
        if samples[..i].iter().any(|(other, _)| other == name) {
            return Err(StatsError::DuplicateMethod {
                method: name.clone(),
            });
        }
        let expected = samples[0].1.len();
        if values.len() != expected {
            return Err(StatsError::SampleLength {
                method: name.clone(),
                len: values.len(),
                first: samples[0].0.clone(),
                expected,
            });
        }
    }
    let means: Vec<f64> = samples.iter().map(|(_, v)| mean(v)).collect();
    let k = samples.len();
    let mut pvalues = vec![vec![f64::NAN; k]; k];
    for i in 0..k {
        for j in 0..k {
            if i == j {
                continue;
            }
            pvalues[i][j] = match opts.mode {
                // Two-sided: symmetric, so compute once per unordered pair and mirror it, which
                // guarantees both directions carry the same p-value.
                RankMode::IsValidate if j < i => pvalues[j][i],
                RankMode::IsValidate => two_sided_p(&samples[i].1, &samples[j].1, opts.test)?,
                RankMode::ChallengeR => one_sided_p(&samples[i].1, &samples[j].1, opts)?,
            };
        }
    }
    let mut pairs = Vec::with_capacity(k * k.saturating_sub(1));
    let mut wins = vec![0u32; k];
    for i in 0..k {
        for j in 0..k {
            if i == j {
                continue;
            }
            let p = pvalues[i][j];
            let significant = p < opts.alpha; // NaN is never significant
            let win = match opts.mode {
                RankMode::IsValidate => significant && better(means[i], means[j], opts.direction),
                RankMode::ChallengeR => significant,
            };
            wins[i] += u32::from(win);
            pairs.push(PairResult {
                method: samples[i].0.clone(),
                opponent: samples[j].0.clone(),
                test: opts.test,
                p_value: p,
                method_mean: means[i],
                opponent_mean: means[j],
                win,
            });
        }
    }
    let ranks = match opts.mode {
        RankMode::IsValidate => dense_rank_desc(&wins),
        RankMode::ChallengeR => min_rank_desc(&wins),
    };
    let ranks = samples
        .iter()
        .zip(means)
        .zip(wins.iter().zip(ranks))
        .map(|(((name, _), mean), (&wins, rank))| MethodRank {
            method: name.clone(),
            mean,
            wins,
            rank,
        })
        .collect();
    Ok(Ranking { pairs, ranks })
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn better(a: f64, b: f64, direction: Direction) -> bool {
    match direction {
        Direction::HigherIsBetter => a > b,
        Direction::LowerIsBetter => a < b,
    }
}

fn failures(v: &[f64]) -> Vec<bool> {
    v.iter().map(|x| *x != 0.0).collect()
}

fn two_sided_p(x: &[f64], y: &[f64], test: PairTest) -> Result<f64, StatsError> {
    Ok(match test {
        PairTest::Wilcoxon => wilcoxon(x, y, &WilcoxonOptions::default())?.pvalue,
        PairTest::McNemar => {
            mcnemar(
                &failure_table(&failures(x), &failures(y))?,
                McNemarKind::Exact,
            )
            .pvalue
        }
    })
}

fn one_sided_p(x: &[f64], y: &[f64], opts: &RankOptions) -> Result<f64, StatsError> {
    Ok(match opts.test {
        PairTest::Wilcoxon => {
            let alternative = match opts.direction {
                Direction::HigherIsBetter => Alternative::Greater,
                Direction::LowerIsBetter => Alternative::Less,
            };
            let w = WilcoxonOptions {
                zero_method: ZeroMethod::Wilcox,
                correction: true,
                alternative,
                method: WilcoxonMethod::Asymptotic,
            };
            wilcoxon(x, y, &w)?.pvalue
        }
        PairTest::McNemar => {
            // With y as the first vector, table[0][1] counts the cases where only x fails: x is
            // better when that count is small, so the lower binomial tail is the p-value.
            let t = failure_table(&failures(y), &failures(x))?;
            let p = binomial_less(&t);
            match opts.direction {
                Direction::LowerIsBetter => p,
                // A "higher is better" failure flag makes no sense, but keep the mirror image.
                Direction::HigherIsBetter => {
                    binomial_less(&failure_table(&failures(x), &failures(y))?)
                }
            }
        }
    })
}

/// Dense ranks of `wins`, most wins first: 5, 5, 3, 1 → 1, 1, 2, 3.
pub fn dense_rank_desc(wins: &[u32]) -> Vec<u32> {
    let mut distinct: Vec<u32> = wins.to_vec();
    distinct.sort_unstable_by(|a, b| b.cmp(a));
    distinct.dedup();
    wins.iter()
        .map(|w| {
            distinct
                .iter()
                .position(|d| d == w)
                .map_or(0, |p| p as u32 + 1)
        })
        .collect()
}

/// "min" ranks of `wins`, most wins first: 5, 5, 3, 1 → 1, 1, 3, 4.
pub fn min_rank_desc(wins: &[u32]) -> Vec<u32> {
    wins.iter()
        .map(|w| 1 + wins.iter().filter(|o| *o > w).count() as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(mode: RankMode) -> RankOptions {
        RankOptions {
            direction: Direction::HigherIsBetter,
            test: PairTest::Wilcoxon,
            mode,
            alpha: 0.05,
        }
    }

    /// 20 cases; `shift` moves every value up, with distinct offsets so there are no ties.
    fn series(shift: f64) -> Vec<f64> {
        (0..20)
            .map(|i| 0.5 + shift + 0.001 * i as f64 + 0.0003 * ((i * 7) % 5) as f64)
            .collect()
    }

    #[test]
    fn dense_and_min_ranks_differ_on_ties() {
        assert_eq!(dense_rank_desc(&[5, 5, 3, 1]), vec![1, 1, 2, 3]);
        assert_eq!(min_rank_desc(&[5, 5, 3, 1]), vec![1, 1, 3, 4]);
        assert_eq!(dense_rank_desc(&[0, 2, 0]), vec![2, 1, 2]);
        assert_eq!(min_rank_desc(&[0, 2, 0]), vec![2, 1, 2]);
    }

    #[test]
    fn clear_winner_ranks_first_and_pairs_mirror_p_values() {
        let samples = vec![
            ("base".to_string(), series(0.0)),
            ("in".to_string(), series(0.1)),
            ("cn".to_string(), series(0.1)), // identical to `in`: all zero differences
        ];
        let r = rank_methods(&samples, &opts(RankMode::IsValidate)).expect("rank");
        assert_eq!(r.pairs.len(), 6);
        for p in &r.pairs {
            let back = r
                .pairs
                .iter()
                .find(|q| q.method == p.opponent && q.opponent == p.method)
                .expect("mirror");
            assert_eq!(p.p_value.to_bits(), back.p_value.to_bits());
        }
        let wins: Vec<u32> = r.ranks.iter().map(|m| m.wins).collect();
        assert_eq!(wins, vec![0, 1, 1]);
        let ranks: Vec<u32> = r.ranks.iter().map(|m| m.rank).collect();
        assert_eq!(ranks, vec![2, 1, 1]);
    }

    #[test]
    fn lower_is_better_flips_the_winner() {
        let samples = vec![
            ("a".to_string(), series(0.0)),
            ("b".to_string(), series(0.2)),
        ];
        let o = RankOptions {
            direction: Direction::LowerIsBetter,
            ..opts(RankMode::IsValidate)
        };
        let r = rank_methods(&samples, &o).expect("rank");
        assert_eq!(
            r.ranks.iter().map(|m| m.rank).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let c = rank_methods(
            &samples,
            &RankOptions {
                mode: RankMode::ChallengeR,
                ..o
            },
        )
        .expect("rank");
        assert_eq!(
            c.ranks.iter().map(|m| m.rank).collect::<Vec<_>>(),
            vec![1, 2]
        );
        // One-sided: the p-values of the two directions differ and sum to about 1.
        assert!(c.pairs[0].p_value < 0.05 && c.pairs[1].p_value > 0.95);
    }

    #[test]
    fn min_ranks_skip_after_a_tie_in_challenger_mode() {
        // a and b both beat c and d; c beats d; tie in wins between a and b.
        let samples = vec![
            ("a".to_string(), series(0.3)),
            ("b".to_string(), series(0.3)),
            ("c".to_string(), series(0.1)),
            ("d".to_string(), series(0.0)),
        ];
        let c = rank_methods(&samples, &opts(RankMode::ChallengeR)).expect("rank");
        assert_eq!(
            c.ranks.iter().map(|m| m.wins).collect::<Vec<_>>(),
            vec![2, 2, 1, 0]
        );
        assert_eq!(
            c.ranks.iter().map(|m| m.rank).collect::<Vec<_>>(),
            vec![1, 1, 3, 4]
        );
        let d = rank_methods(&samples, &opts(RankMode::IsValidate)).expect("rank");
        assert_eq!(
            d.ranks.iter().map(|m| m.rank).collect::<Vec<_>>(),
            vec![1, 1, 2, 3]
        );
    }

    #[test]
    fn mcnemar_on_failures_counts_fewer_failures_as_better() {
        let n = 30;
        let few: Vec<f64> = (0..n).map(|i| if i < 1 { 1.0 } else { 0.0 }).collect();
        let many: Vec<f64> = (0..n).map(|i| if i < 12 { 1.0 } else { 0.0 }).collect();
        let samples = vec![("many".to_string(), many), ("few".to_string(), few)];
        for mode in [RankMode::IsValidate, RankMode::ChallengeR] {
            let o = RankOptions {
                direction: Direction::LowerIsBetter,
                test: PairTest::McNemar,
                mode,
                alpha: 0.05,
            };
            let r = rank_methods(&samples, &o).expect("rank");
            assert_eq!(
                r.ranks.iter().map(|m| m.rank).collect::<Vec<_>>(),
                vec![2, 1],
                "{mode}"
            );
            assert!(r.pairs.iter().all(|p| p.test == PairTest::McNemar));
        }
    }

    #[test]
    fn single_method_has_rank_one_and_no_pairs() {
        let r = rank_methods(
            &[("base".to_string(), series(0.0))],
            &opts(RankMode::IsValidate),
        )
        .expect("rank");
        assert!(r.pairs.is_empty());
        assert_eq!(r.ranks[0].rank, 1);
    }

    #[test]
    fn mismatched_lengths_and_duplicates_are_errors() {
        let bad = vec![
            ("a".to_string(), vec![1.0, 2.0]),
            ("b".to_string(), vec![1.0]),
        ];
        assert!(matches!(
            rank_methods(&bad, &opts(RankMode::IsValidate)),
            Err(StatsError::SampleLength { .. })
        ));
        let dup = vec![("a".to_string(), vec![1.0]), ("a".to_string(), vec![1.0])];
        assert!(matches!(
            rank_methods(&dup, &opts(RankMode::IsValidate)),
            Err(StatsError::DuplicateMethod { .. })
        ));
    }
}
