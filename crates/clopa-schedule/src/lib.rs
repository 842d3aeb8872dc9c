//! The CLoPA episode schedule and the train/holdout split with its per-run stream orders.
//!
//! [`schedule`] is the pure function of (N, k_D, k_M) of DESIGN.md step 2: stream cases arrive
//! one at a time as "unassigned"; an episode fires when the unassigned count reaches
//! max(1/k_M, floor(k_D·N)) and the cumulative train set will hold at least 2 cases; the
//! unassigned cases then split in arrival order, the first ceil((1−k_M)·n) to train, the rest to
//! validation. [`split`] shuffles a task's cases into `train` and `holdout` and, for every
//! training run, permutes the train cases into a stream and annotates each position with its
//! [`Episode`] and [`Role`]; the rows are the records of `split.parquet` ([`SplitRow`], written
//! by `clopa-table`).
//!
//! ```
//! use clopa_schedule::{schedule, format_schedule};
//! let eps = schedule(32, 0.25, 0.2)?;
//! let fired: Vec<_> = eps.iter().map(|e| (e.end_position, e.n_train_total, e.n_val_total)).collect();
//! assert_eq!(fired, [(8, 7, 1), (16, 14, 2), (24, 21, 3), (32, 28, 4)]);
//! println!("{}", format_schedule(&eps));
//! # Ok::<(), clopa_schedule::ScheduleError>(())
//! ```

mod split;

pub use split::{
    Role, SplitKind, SplitRow, SplitSettings, cache_at, holdout_cases, split, stream_of,
};

use serde::{Deserialize, Serialize};

/// Bad schedule or split settings; the message quotes the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("k_d must lie in [0, 1], got {0}")]
    KD(f64),
    #[error("k_m must lie strictly between 0 and 1, got {0}")]
    KM(f64),
    #[error("holdout_fraction must lie strictly between 0 and 1, got {0}")]
    HoldoutFraction(f64),
    #[error("no run seeds given")]
    NoRuns,
    #[error("case id {0:?} appears twice")]
    DuplicateCase(String),
    #[error("a task needs at least 2 cases to split into train and holdout, got {0}")]
    TooFewCases(usize),
}

/// One training episode of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Episode {
    /// 1-based episode number (episode 0 is the base model).
    pub index: u32,
    /// Stream position (1-based) after whose arrival the episode fires.
    pub end_position: u32,
    /// Stream positions that join the train set at this episode (arrival order).
    pub train_positions: Vec<u32>,
    /// Stream positions that join the validation set at this episode (arrival order).
    pub val_positions: Vec<u32>,
    /// Cache size the episode trains on (= `end_position`).
    pub n_seen: u32,
    /// Cumulative train-set size after this episode.
    pub n_train_total: u32,
    /// Cumulative validation-set size after this episode.
    pub n_val_total: u32,
}

/// Relative slack for the integer roundings below. Products such as 0.8·15 = 12.000000000000002
/// and quotients such as 1/(1−0.8) = 5.000000000000001 must round to the integer they are meant
/// to be; a genuine fraction is never this close to an integer for the sizes we handle.
const EPS: f64 = 1e-9;

/// ceil(x), except that x within rounding error of an integer gives that integer.
pub fn robust_ceil(x: f64) -> usize {
    let r = x.round();
    if (x - r).abs() <= EPS * r.abs().max(1.0) {
        r.max(0.0) as usize
    } else {
        x.ceil().max(0.0) as usize
    }
}

/// floor(x), except that x within rounding error of an integer gives that integer.
pub fn robust_floor(x: f64) -> usize {
    let r = x.round();
    if (x - r).abs() <= EPS * r.abs().max(1.0) {
        r.max(0.0) as usize
    } else {
        x.floor().max(0.0) as usize
    }
}

fn check_k(k_d: f64, k_m: f64) -> Result<(), ScheduleError> {
    if !(0.0..=1.0).contains(&k_d) {
        return Err(ScheduleError::KD(k_d));
    }
    if !(k_m > 0.0 && k_m < 1.0) {
        return Err(ScheduleError::KM(k_m));
    }
    Ok(())
}

/// The minimum number of new samples an episode needs: ceil(1/k_M) (5 for k_M = 0.2). With this
/// many, k_M·n >= 1, so every episode adds at least one validation case. (The authors' code
/// truncates instead, `int(1/(1-0.8))`; both give 5 for the paper's k_M.)
pub fn min_new_samples(k_m: f64) -> usize {
    robust_ceil(1.0 / k_m)
}

/// How many of `n` new samples go to train: ceil((1−k_M)·n).
pub fn n_train_of(n: usize, k_m: f64) -> usize {
    robust_ceil((1.0 - k_m) * n as f64).min(n)
}

/// The episode schedule of a stream of `n` cases (DESIGN.md step 2). Stream cases after the last
/// episode are never trained on.
pub fn schedule(n: usize, k_d: f64, k_m: f64) -> Result<Vec<Episode>, ScheduleError> {
    check_k(k_d, k_m)?;
    let threshold = min_new_samples(k_m)
        .max(robust_floor(k_d * n as f64))
        .max(1);
    let mut episodes = Vec::new();
    let mut assigned = 0usize; // positions 1..=assigned are in train or val
    let (mut n_train, mut n_val) = (0usize, 0usize);
    for p in 1..=n {
        let unassigned = p - assigned;
        if unassigned < threshold {
            continue;
        }
        let take = n_train_of(unassigned, k_m);
        if n_train + take < 2 {
            continue;
        }
        let first = assigned as u32 + 1;
        let split_at = first + take as u32;
        n_train += take;
        n_val += unassigned - take;
        episodes.push(Episode {
            index: episodes.len() as u32 + 1,
            end_position: p as u32,
            train_positions: (first..split_at).collect(),
            val_positions: (split_at..=p as u32).collect(),
            n_seen: p as u32,
            n_train_total: n_train as u32,
            n_val_total: n_val as u32,
        });
        assigned = p;
    }
    Ok(episodes)
}

/// The schedule as a small readable table (one line per episode).
pub fn format_schedule(episodes: &[Episode]) -> String {
    let mut s = String::from("episode  fires at  cache  +train  +val  train  val\n");
    for e in episodes {
        s.push_str(&format!(
            "{:>7}  {:>8}  {:>5}  {:>6}  {:>4}  {:>5}  {:>3}\n",
            e.index,
            e.end_position,
            e.n_seen,
            e.train_positions.len(),
            e.val_positions.len(),
            e.n_train_total,
            e.n_val_total
        ));
    }
    if episodes.is_empty() {
        s.push_str("(no episode fires)\n");
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn triples(n: usize) -> Vec<(u32, u32, u32)> {
        schedule(n, 0.25, 0.2)
            .unwrap()
            .iter()
            .map(|e| (e.end_position, e.n_train_total, e.n_val_total))
            .collect()
    }

    #[test]
    fn reference_examples() {
        assert_eq!(
            triples(32),
            [(8, 7, 1), (16, 14, 2), (24, 21, 3), (32, 28, 4)]
        );
        assert_eq!(triples(10), [(5, 4, 1), (10, 8, 2)]);
        let t63 = triples(63);
        assert_eq!(t63.first(), Some(&(15, 12, 3)));
        assert_eq!(t63.last(), Some(&(60, 48, 12)));
        assert_eq!(t63.len(), 4);
        assert_eq!(63 - t63[3].0, 3, "3 leftovers");
    }

    #[test]
    fn float_rounding_regressions() {
        // 0.8 * 15 = 12.000000000000002 in f64: a plain ceil would send 13 to train.
        assert_eq!(n_train_of(15, 0.2), 12);
        // (1 - 0.2) * 5 must be 4.
        assert_eq!(n_train_of(5, 0.2), 4);
        assert_eq!(min_new_samples(0.2), 5);
        // 1/(1-0.8) = 5.000000000000001: still 5.
        assert_eq!(min_new_samples(1.0 - 0.8), 5);
        assert_eq!(robust_floor(0.25 * 63.0), 15);
        assert_eq!(robust_floor(0.29 * 100.0), 29); // 28.999999999999996 in f64
        assert_eq!(robust_ceil(6.4), 7);
        assert_eq!(robust_floor(6.4), 6);
        assert_eq!(min_new_samples(0.3), 4);
    }

    #[test]
    fn tiny_streams() {
        for n in [0, 1, 2, 4] {
            assert!(triples(n).is_empty(), "N={n}");
        }
        assert_eq!(triples(5), [(5, 4, 1)]);
        assert_eq!(triples(6), [(5, 4, 1)]);
        let e = &schedule(6, 0.25, 0.2).unwrap()[0];
        assert_eq!(e.train_positions, [1, 2, 3, 4]);
        assert_eq!(e.val_positions, [5]);
        assert_eq!((e.index, e.n_seen), (1, 5));
    }

    #[test]
    fn properties_for_every_n_up_to_400() {
        for n in 0..=400usize {
            let eps = schedule(n, 0.25, 0.2).unwrap();
            let mut next = 1u32; // positions must be consumed in arrival order, without gaps
            let (mut tr, mut va) = (0u32, 0u32);
            let threshold = 5.max(n / 4);
            for (i, e) in eps.iter().enumerate() {
                assert_eq!(e.index as usize, i + 1);
                let new: Vec<u32> = e
                    .train_positions
                    .iter()
                    .chain(&e.val_positions)
                    .copied()
                    .collect();
                assert_eq!(new, (next..=e.end_position).collect::<Vec<_>>(), "N={n}");
                assert!(new.len() >= 5, "N={n}: fires with {} new", new.len());
                assert_eq!(new.len(), threshold, "N={n}: fires as soon as possible");
                assert_eq!(
                    e.train_positions.len(),
                    (4 * new.len()).div_ceil(5),
                    "N={n}"
                );
                assert!(!e.val_positions.is_empty());
                tr += e.train_positions.len() as u32;
                va += e.val_positions.len() as u32;
                assert_eq!((e.n_train_total, e.n_val_total), (tr, va));
                assert!(e.n_train_total >= 2);
                assert_eq!(e.n_seen, e.end_position);
                next = e.end_position + 1;
            }
            // Leftovers are fewer than one more episode would need.
            let left = n + 1 - next as usize;
            assert!(left < threshold, "N={n}: {left} leftovers");
            assert!(n < 5 || !eps.is_empty());
            assert!(eps.len() <= 4 || n < 20, "N={n}: {} episodes", eps.len());
        }
    }

    #[test]
    fn other_fractions() {
        // k_d = 0 fires every 1/k_m samples.
        let e = schedule(12, 0.0, 0.2).unwrap();
        assert_eq!(
            e.iter().map(|e| e.end_position).collect::<Vec<_>>(),
            [5, 10]
        );
        // k_m = 0.5: 2 new samples, 1 to train; the first episode waits until train holds 2.
        let e = schedule(6, 0.0, 0.5).unwrap();
        let got: Vec<_> = e
            .iter()
            .map(|e| (e.end_position, e.n_train_total))
            .collect();
        assert_eq!(got, [(3, 2), (5, 3)]);
        // k_m = 0.75: the first episode needs 5 new samples to put 2 in train.
        let e = schedule(8, 0.0, 0.75).unwrap();
        let got: Vec<_> = e
            .iter()
            .map(|e| (e.end_position, e.n_train_total, e.n_val_total))
            .collect();
        assert_eq!(got, [(5, 2, 3), (7, 3, 4)]);
    }

    #[test]
    fn bad_fractions_are_errors() {
        assert!(matches!(schedule(10, 1.5, 0.2), Err(ScheduleError::KD(_))));
        assert!(matches!(schedule(10, 0.25, 0.0), Err(ScheduleError::KM(_))));
        assert!(matches!(schedule(10, 0.25, 1.0), Err(ScheduleError::KM(_))));
        assert!(matches!(
            schedule(10, f64::NAN, 0.2),
            Err(ScheduleError::KD(_))
        ));
    }

    #[test]
    fn format_lists_every_episode() {
        let s = format_schedule(&schedule(10, 0.25, 0.2).unwrap());
        assert_eq!(s.lines().count(), 3);
        assert!(s.contains("     10"));
        assert!(format_schedule(&[]).contains("no episode"));
    }
}
