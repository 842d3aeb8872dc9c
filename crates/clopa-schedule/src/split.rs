//! The train/holdout split and the per-run training streams (the rows of `split.parquet`).

use std::collections::{BTreeMap, HashSet};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{ScheduleError, check_k, robust_ceil, schedule};

/// Which half of the task a case belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitKind {
    Train,
    Holdout,
}

impl SplitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SplitKind::Train => "train",
            SplitKind::Holdout => "holdout",
        }
    }
    /// Parses `train` / `holdout`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "train" => Some(SplitKind::Train),
            "holdout" => Some(SplitKind::Holdout),
            _ => None,
        }
    }
}

/// The role a stream case takes when its episode assigns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Train,
    Val,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Train => "train",
            Role::Val => "val",
        }
    }
    /// Parses `train` / `val`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "train" => Some(Role::Train),
            "val" => Some(Role::Val),
            _ => None,
        }
    }
}

/// One record of `split.parquet`: one per holdout case, one per (train case, run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitRow {
    pub task: String,
    pub case_id: String,
    pub split: SplitKind,
    /// Training run (0-based); `None` for holdout.
    pub run: Option<u32>,
    /// 1-based position in that run's stream; `None` for holdout.
    pub position: Option<u32>,
    /// The episode at which the case joins the cache's split (1-based); `None` for holdout and
    /// for stream cases after the last episode.
    pub episode: Option<u32>,
    /// `train` or `val` inside the episodes; `None` likewise.
    pub role: Option<Role>,
}

/// Settings of [`split`] (a subset of the pipeline profile).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitSettings {
    /// Fraction held out; the holdout gets ceil(holdout_fraction·n) cases (clamped so that both
    /// halves are non-empty). For odd n and 0.5 the holdout is the larger half, as the paper's
    /// NoF percentages imply (protocol.md §1 notes).
    pub holdout_fraction: f64,
    /// Seed of the train/holdout shuffle.
    pub split_seed: u64,
    /// One seed per training run; run r's stream is a permutation seeded by `run_seeds[r]`.
    pub run_seeds: Vec<u64>,
    pub k_d: f64,
    pub k_m: f64,
    /// Keep only the first `max_stream` train cases (of the shuffled order); the rest are unused
    /// and get no row.
    pub max_stream: Option<usize>,
    /// Keep only the first `max_holdout` holdout cases (of the shuffled order); likewise.
    pub max_holdout: Option<usize>,
}

impl Default for SplitSettings {
    /// The paper's settings with split seed 0.
    fn default() -> Self {
        SplitSettings {
            holdout_fraction: 0.5,
            split_seed: 0,
            run_seeds: vec![341103, 55432, 754537],
            k_d: 0.25,
            k_m: 0.2,
            max_stream: None,
            max_holdout: None,
        }
    }
}

/// Splits a task's cases (DESIGN.md step 1) and lays out every run's stream with its episodes.
///
/// Cases are sorted by id first, so the result depends only on the set of ids and the seeds, not
/// on the order a dataset lists them in. Rows come holdout first (by case id), then run by run in
/// stream order.
pub fn split(
    task: &str,
    case_ids: &[String],
    settings: &SplitSettings,
) -> Result<Vec<SplitRow>, ScheduleError> {
    check_k(settings.k_d, settings.k_m)?;
    let hf = settings.holdout_fraction;
    if !(hf > 0.0 && hf < 1.0) {
        return Err(ScheduleError::HoldoutFraction(hf));
    }
    if settings.run_seeds.is_empty() {
        return Err(ScheduleError::NoRuns);
    }
    let mut seen = HashSet::new();
    for id in case_ids {
        if !seen.insert(id.as_str()) {
            return Err(ScheduleError::DuplicateCase(id.clone()));
        }
    }
    let n = case_ids.len();
    if n < 2 {
        return Err(ScheduleError::TooFewCases(n));
    }
    let mut ids: Vec<String> = case_ids.to_vec();
    ids.sort();
    ids.shuffle(&mut ChaCha8Rng::seed_from_u64(settings.split_seed));
    let n_holdout = robust_ceil(hf * n as f64).clamp(1, n - 1);
    let mut holdout: Vec<String> = ids[..n_holdout].to_vec();
    let mut train: Vec<String> = ids[n_holdout..].to_vec();
    if let Some(m) = settings.max_holdout {
        holdout.truncate(m);
    }
    if let Some(m) = settings.max_stream {
        train.truncate(m);
    }
    holdout.sort();
    train.sort();

    let episodes = schedule(train.len(), settings.k_d, settings.k_m)?;
    let mut joins: BTreeMap<u32, (u32, Role)> = BTreeMap::new();
    for e in &episodes {
        for &p in &e.train_positions {
            joins.insert(p, (e.index, Role::Train));
        }
        for &p in &e.val_positions {
            joins.insert(p, (e.index, Role::Val));
        }
    }

    let mut rows: Vec<SplitRow> = holdout
        .iter()
        .map(|id| SplitRow {
            task: task.to_string(),
            case_id: id.clone(),
            split: SplitKind::Holdout,
            run: None,
            position: None,
            episode: None,
            role: None,
        })
        .collect();
    for (run, &seed) in settings.run_seeds.iter().enumerate() {
        let mut stream = train.clone();
        stream.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        for (i, id) in stream.into_iter().enumerate() {
            let position = i as u32 + 1;
            let join = joins.get(&position);
            rows.push(SplitRow {
                task: task.to_string(),
                case_id: id,
                split: SplitKind::Train,
                run: Some(run as u32),
                position: Some(position),
                episode: join.map(|j| j.0),
                role: join.map(|j| j.1),
            });
        }
    }
    Ok(rows)
}

/// The holdout case ids of a split, sorted.
pub fn holdout_cases(rows: &[SplitRow]) -> Vec<&str> {
    let mut ids: Vec<&str> = rows
        .iter()
        .filter(|r| r.split == SplitKind::Holdout)
        .map(|r| r.case_id.as_str())
        .collect();
    ids.sort();
    ids
}

/// Run `run`'s stream in position order.
pub fn stream_of(rows: &[SplitRow], run: u32) -> Vec<&SplitRow> {
    let mut s: Vec<&SplitRow> = rows
        .iter()
        .filter(|r| r.split == SplitKind::Train && r.run == Some(run))
        .collect();
    s.sort_by_key(|r| r.position);
    s
}

/// The cache's cumulative (train, val) case ids when episode `episode` of run `run` trains, in
/// arrival order (full memory replay: every case assigned at this or an earlier episode).
pub fn cache_at(rows: &[SplitRow], run: u32, episode: u32) -> (Vec<&str>, Vec<&str>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for r in stream_of(rows, run) {
        match (r.episode, r.role) {
            (Some(e), Some(Role::Train)) if e <= episode => train.push(r.case_id.as_str()),
            (Some(e), Some(Role::Val)) if e <= episode => val.push(r.case_id.as_str()),
            _ => {}
        }
    }
    (train, val)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("case_{i:03}")).collect()
    }

    fn runs(rows: &[SplitRow]) -> u32 {
        rows.iter().filter_map(|r| r.run).max().map_or(0, |r| r + 1)
    }

    #[test]
    fn properties_for_many_sizes() {
        let s = SplitSettings::default();
        for n in [2usize, 3, 7, 10, 11, 20, 21, 40, 63, 131] {
            let cases = ids(n);
            let rows = split("t", &cases, &s).unwrap();
            let hold = holdout_cases(&rows);
            let n_hold = n.div_ceil(2);
            assert_eq!(hold.len(), n_hold, "n={n}: holdout = ceil(n/2)");
            assert_eq!(runs(&rows), 3);
            for run in 0..3 {
                let st = stream_of(&rows, run);
                assert_eq!(st.len(), n - n_hold);
                // Positions are 1..N in order.
                let pos: Vec<u32> = st.iter().map(|r| r.position.unwrap()).collect();
                assert_eq!(pos, (1..=st.len() as u32).collect::<Vec<_>>());
                // Disjoint from the holdout and together they cover every case exactly once.
                let mut all: Vec<&str> = st.iter().map(|r| r.case_id.as_str()).collect();
                assert!(all.iter().all(|c| !hold.contains(c)));
                all.extend(&hold);
                all.sort();
                assert_eq!(all, cases.iter().map(|c| c.as_str()).collect::<Vec<_>>());
                // Episode and role follow the schedule.
                let eps = schedule(st.len(), 0.25, 0.2).unwrap();
                for r in &st {
                    let p = r.position.unwrap();
                    let e = eps.iter().find(|e| p <= e.end_position);
                    assert_eq!(r.episode, e.map(|e| e.index), "n={n} p={p}");
                    let role = e.map(|e| {
                        if e.train_positions.contains(&p) {
                            Role::Train
                        } else {
                            Role::Val
                        }
                    });
                    assert_eq!(r.role, role);
                }
            }
            for r in rows.iter().filter(|r| r.split == SplitKind::Holdout) {
                assert_eq!(
                    (r.run, r.position, r.episode, r.role),
                    (None, None, None, None)
                );
            }
        }
    }

    #[test]
    fn deterministic_and_order_independent() {
        let s = SplitSettings::default();
        let mut cases = ids(30);
        let a = split("t", &cases, &s).unwrap();
        assert_eq!(a, split("t", &cases, &s).unwrap());
        cases.reverse();
        assert_eq!(a, split("t", &cases, &s).unwrap());
    }

    #[test]
    fn seeds_change_the_result() {
        let cases = ids(30);
        let s = SplitSettings::default();
        let a = split("t", &cases, &s).unwrap();
        let b = split(
            "t",
            &cases,
            &SplitSettings {
                split_seed: 1,
                ..s.clone()
            },
        )
        .unwrap();
        assert_ne!(holdout_cases(&a), holdout_cases(&b));
        // The three runs have different stream orders.
        let order = |rows: &[SplitRow], run| {
            stream_of(rows, run)
                .iter()
                .map(|r| r.case_id.clone())
                .collect::<Vec<_>>()
        };
        assert_ne!(order(&a, 0), order(&a, 1));
        assert_ne!(order(&a, 1), order(&a, 2));
        // Changing one run seed changes only that run.
        let c = split(
            "t",
            &cases,
            &SplitSettings {
                run_seeds: vec![341103, 1, 754537],
                ..s
            },
        )
        .unwrap();
        assert_eq!(order(&a, 0), order(&c, 0));
        assert_ne!(order(&a, 1), order(&c, 1));
        assert_eq!(order(&a, 2), order(&c, 2));
    }

    #[test]
    fn caps_limit_the_stream_and_holdout() {
        let s = SplitSettings {
            max_stream: Some(10),
            max_holdout: Some(4),
            ..SplitSettings::default()
        };
        let rows = split("t", &ids(40), &s).unwrap();
        assert_eq!(holdout_cases(&rows).len(), 4);
        assert_eq!(stream_of(&rows, 2).len(), 10);
        // The capped halves are still disjoint.
        let hold = holdout_cases(&rows);
        assert!(
            stream_of(&rows, 0)
                .iter()
                .all(|r| !hold.contains(&r.case_id.as_str()))
        );
    }

    #[test]
    fn cache_grows_with_the_episodes() {
        let rows = split("t", &ids(20), &SplitSettings::default()).unwrap();
        // N = 10: episode 1 at 5 (4 train, 1 val), episode 2 at 10 (8, 2).
        let (t1, v1) = cache_at(&rows, 0, 1);
        let (t2, v2) = cache_at(&rows, 0, 2);
        assert_eq!((t1.len(), v1.len(), t2.len(), v2.len()), (4, 1, 8, 2));
        assert_eq!(&t2[..4], &t1[..]);
        let st = stream_of(&rows, 0);
        assert_eq!(
            t1,
            st[..4]
                .iter()
                .map(|r| r.case_id.as_str())
                .collect::<Vec<_>>()
        );
        assert_eq!(v1, [st[4].case_id.as_str()]);
    }

    #[test]
    fn bad_input_is_an_error() {
        let s = SplitSettings::default();
        let mut dup = ids(5);
        dup.push("case_001".into());
        assert_eq!(
            split("t", &dup, &s),
            Err(ScheduleError::DuplicateCase("case_001".into()))
        );
        assert_eq!(split("t", &ids(1), &s), Err(ScheduleError::TooFewCases(1)));
        let bad = SplitSettings {
            holdout_fraction: 1.0,
            ..s.clone()
        };
        assert!(matches!(
            split("t", &ids(5), &bad),
            Err(ScheduleError::HoldoutFraction(_))
        ));
        let bad = SplitSettings {
            run_seeds: vec![],
            ..s
        };
        assert_eq!(split("t", &ids(5), &bad), Err(ScheduleError::NoRuns));
    }
}
