//! Synthetic MSD-like segmentation tasks, deterministic for a seed: the embedded default data of
//! clopa, so every tool and test can run without downloading a dataset.
//!
//! A [`TaskKind`] picks one of the paper's axes of difficulty (thin sparse `vessels`, a large
//! `organ` with touching look-alike neighbours, a `small` curved MR structure, a low-contrast
//! `lesion`, and varied `generic` shapes for pretraining). [`generate_case`] draws one
//! [`Case`] (an f32 image and a u8 label volume with spacing and affine) from a caller's
//! `ChaCha8Rng`; [`write_dataset`] writes an MSD-format folder (`dataset.json`, `imagesTr/`,
//! `labelsTr/`) where case `i` only depends on `(seed, i)`.
//!
//! ```
//! use rand::SeedableRng;
//! use clopa_phantom::{generate_case, SynthConfig, TaskKind};
//!
//! let cfg = SynthConfig { size: Some([24, 24, 16]), ..SynthConfig::new(TaskKind::Lesion) };
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
//! let case = generate_case(&cfg, &mut rng)?;
//! assert!(case.label.data.iter().any(|&v| v == 1));
//! # Ok::<(), clopa_phantom::PhantomError>(())
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod dataset;
mod field;
mod kinds;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clopa_volume::{Volume, VolumeError};
use rand_chacha::ChaCha8Rng;

pub use dataset::{
    CaseStatus, DatasetJson, DatasetSettings, MARKER_FILE, case_name, case_rng, dataset_json,
    write_case, write_dataset, write_dataset_with,
};

/// Bumped whenever the generators change what a seed produces, so a folder written by an older
/// version is never silently extended with differently-made cases.
pub const GENERATOR_VERSION: u32 = 1;

/// The synthetic task kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Vessels,
    Organ,
    Small,
    Lesion,
    Generic,
}

impl TaskKind {
    pub const ALL: [TaskKind; 5] = [
        TaskKind::Vessels,
        TaskKind::Organ,
        TaskKind::Small,
        TaskKind::Lesion,
        TaskKind::Generic,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Vessels => "vessels",
            TaskKind::Organ => "organ",
            TaskKind::Small => "small",
            TaskKind::Lesion => "lesion",
            TaskKind::Generic => "generic",
        }
    }

    /// Default grid `[nx, ny, nz]` (CPU-sized).
    pub fn default_size(self) -> [usize; 3] {
        match self {
            TaskKind::Vessels => [64, 64, 40],
            TaskKind::Organ => [56, 56, 48],
            TaskKind::Small => [36, 40, 32],
            TaskKind::Lesion => [64, 64, 64],
            TaskKind::Generic => [48, 48, 48],
        }
    }

    /// Default voxel spacing in mm; `None` for `generic`, whose spacing varies per case.
    pub fn default_spacing(self) -> Option<[f64; 3]> {
        match self {
            TaskKind::Vessels => Some([0.8, 0.8, 2.5]),
            TaskKind::Organ => Some([1.5, 1.5, 2.0]),
            TaskKind::Small => Some([1.0, 1.0, 1.0]),
            TaskKind::Lesion => Some([1.0, 1.0, 1.5]),
            TaskKind::Generic => None,
        }
    }

    /// `"CT"` or `"MRI"`, as written in `dataset.json`'s `modality`.
    pub fn modality(self) -> &'static str {
        match self {
            TaskKind::Vessels | TaskKind::Organ | TaskKind::Lesion => "CT",
            TaskKind::Small | TaskKind::Generic => "MRI",
        }
    }

    /// Label names, index = label value (0 is background).
    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            TaskKind::Vessels => &["background", "vessel"],
            TaskKind::Organ => &["background", "organ", "tumour"],
            TaskKind::Small => &["background", "anterior", "posterior"],
            TaskKind::Lesion => &["background", "lesion"],
            TaskKind::Generic => &["background", "target"],
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TaskKind {
    type Err = PhantomError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskKind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| PhantomError::UnknownKind(s.to_string()))
    }
}

/// Voxels per axis a generated image may have.
pub const SIZE_RANGE: std::ops::RangeInclusive<usize> = 16..=512;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    pub kind: TaskKind,
    /// Grid `[nx, ny, nz]`; `None` = [`TaskKind::default_size`]. Each axis 16 to 512.
    pub size: Option<[usize; 3]>,
    /// Voxel spacing in mm; `None` = [`TaskKind::default_spacing`] (random per case for generic).
    pub spacing: Option<[f64; 3]>,
}

impl SynthConfig {
    pub fn new(kind: TaskKind) -> Self {
        SynthConfig {
            kind,
            size: None,
            spacing: None,
        }
    }

    /// The grid size after defaults.
    pub fn shape(&self) -> [usize; 3] {
        self.size.unwrap_or(self.kind.default_size())
    }

    /// Checks the size (each axis 16 to 512) and spacing before anything is generated.
    pub fn validate(&self) -> Result<(), PhantomError> {
        let s = self.shape();
        if s.iter().any(|n| !SIZE_RANGE.contains(n)) {
            return Err(PhantomError::InvalidSize { size: s });
        }
        if let Some(sp) = self.spacing
            && !sp.iter().all(|v| v.is_finite() && *v > 0.0)
        {
            return Err(PhantomError::InvalidSpacing { spacing: sp });
        }
        Ok(())
    }
}

/// One generated case: image (CT cases hold integer Hounsfield-like values) and labels on the
/// same grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub image: Volume<f32>,
    pub label: Volume<u8>,
}

/// The voxel-to-world affine of a synthetic case: LPS-style axis flips (as in most MSD files)
/// with the volume centred on the world origin.
pub fn case_affine(shape: [usize; 3], spacing: [f64; 3]) -> [[f64; 4]; 4] {
    let o = [0, 1, 2].map(|k| (shape[k] as f64 - 1.0) * spacing[k] / 2.0);
    [
        [-spacing[0], 0.0, 0.0, o[0]],
        [0.0, -spacing[1], 0.0, o[1]],
        [0.0, 0.0, spacing[2], -o[2]],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

/// Generates one case of `cfg.kind` from `rng`. Every case has a non-empty foreground.
pub fn generate_case(cfg: &SynthConfig, rng: &mut ChaCha8Rng) -> Result<Case, PhantomError> {
    cfg.validate()?;
    let shape = cfg.shape();
    let spacing = match (cfg.spacing, cfg.kind.default_spacing()) {
        (Some(s), _) | (None, Some(s)) => s,
        (None, None) => generic_spacing(rng),
    };
    let grid = field::Grid { shape, spacing };
    const ATTEMPTS: usize = 8;
    for _ in 0..ATTEMPTS {
        let (scene, look) = match cfg.kind {
            TaskKind::Vessels => kinds::vessels(&grid, rng),
            TaskKind::Organ => kinds::organ(&grid, rng),
            TaskKind::Small => kinds::small(&grid, rng),
            TaskKind::Lesion => kinds::lesion(&grid, rng),
            TaskKind::Generic => kinds::generic(&grid, rng),
        };
        // Tiny custom grids can clip a target away entirely; draw again rather than emit an
        // empty case (the retry consumes the same RNG, so it is still deterministic).
        if !scene.label.iter().any(|&v| v != 0) {
            continue;
        }
        let image = kinds::render(&grid, &scene, &look, rng);
        let affine = case_affine(shape, spacing);
        return Ok(Case {
            image: Volume::new(shape, spacing, affine, image)?,
            label: Volume::new(shape, spacing, affine, scene.label)?,
        });
    }
    Err(PhantomError::EmptyTarget {
        kind: cfg.kind,
        size: shape,
        attempts: ATTEMPTS,
    })
}

fn generic_spacing(rng: &mut ChaCha8Rng) -> [f64; 3] {
    use rand::Rng;
    match rng.random_range(0..3) {
        0 => [1.0, 1.0, 1.0],
        1 => {
            let s = field::uniform(rng, 0.6, 1.0);
            [s, s, field::uniform(rng, 2.0, 3.5)]
        }
        _ => [1.5, 1.5, 1.5],
    }
}

/// Errors of the synthetic-task library; messages name the value or path at fault.
#[derive(Debug, thiserror::Error)]
pub enum PhantomError {
    #[error("unknown task kind \"{0}\" (known kinds: vessels, organ, small, lesion, generic)")]
    UnknownKind(String),
    #[error("invalid size {size:?}: each axis must be between 16 and 512 voxels")]
    InvalidSize { size: [usize; 3] },
    #[error("invalid spacing {spacing:?}: each value must be positive")]
    InvalidSpacing { spacing: [f64; 3] },
    #[error(
        "could not place a non-empty {kind} target in a {size:?} grid after {attempts} attempts"
    )]
    EmptyTarget {
        kind: TaskKind,
        size: [usize; 3],
        attempts: usize,
    },
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: refusing to write there: {detail}", dir.display())]
    NotOurs { dir: PathBuf, detail: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn gen_case(kind: TaskKind, seed: u64) -> Case {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        generate_case(&SynthConfig::new(kind), &mut rng).unwrap()
    }

    fn fraction(c: &Case) -> f64 {
        c.label.data.iter().filter(|&&v| v != 0).count() as f64 / c.label.len() as f64
    }

    #[test]
    fn kind_names_round_trip() {
        for k in TaskKind::ALL {
            assert_eq!(k.to_string().parse::<TaskKind>().unwrap(), k);
        }
        let err = "vessel".parse::<TaskKind>().unwrap_err().to_string();
        assert!(
            err.contains("\"vessel\"") && err.contains("generic"),
            "{err}"
        );
    }

    #[test]
    fn deterministic_for_a_seed_and_different_across_seeds() {
        for k in TaskKind::ALL {
            let a = gen_case(k, 11);
            let b = gen_case(k, 11);
            assert_eq!(
                a.image.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.image.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{k}"
            );
            assert_eq!(a.label, b.label, "{k}");
            let c = gen_case(k, 12);
            assert_ne!(a.label.data, c.label.data, "{k}");
            assert_ne!(a.image.data, c.image.data, "{k}");
        }
    }

    #[test]
    fn foreground_fraction_per_kind() {
        // (kind, min, max) of the label>0 volume fraction, from the task descriptions.
        let ranges = [
            (TaskKind::Vessels, 0.005, 0.02),
            (TaskKind::Organ, 0.10, 0.25),
            (TaskKind::Small, 0.005, 0.08),
            (TaskKind::Lesion, 1e-5, 0.005),
            (TaskKind::Generic, 1e-4, 0.5),
        ];
        for (k, lo, hi) in ranges {
            for seed in 0..4 {
                let c = gen_case(k, seed);
                let f = fraction(&c);
                assert!(
                    f >= lo && f <= hi,
                    "{k} seed {seed}: foreground fraction {f}"
                );
            }
        }
    }

    #[test]
    fn sub_labels_are_used() {
        // organ has tumours (2) in most cases, small always has a posterior part (2).
        let organ2 = (0..6)
            .filter(|&s| gen_case(TaskKind::Organ, s).label.data.contains(&2))
            .count();
        assert!(organ2 >= 1);
        for s in 0..3 {
            let c = gen_case(TaskKind::Small, s);
            assert!(c.label.data.contains(&1) && c.label.data.contains(&2));
        }
    }

    #[test]
    fn spacing_and_affine_as_configured() {
        let cfg = SynthConfig {
            kind: TaskKind::Vessels,
            size: Some([32, 30, 20]),
            spacing: None,
        };
        let c = generate_case(&cfg, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        assert_eq!(c.image.shape, [32, 30, 20]);
        assert_eq!(c.image.spacing, [0.8, 0.8, 2.5]);
        assert_eq!(c.image.affine, case_affine([32, 30, 20], [0.8, 0.8, 2.5]));
        assert_eq!(c.image.affine[0][0], -0.8);
        assert!(c.image.same_grid(&c.label));

        let cfg = SynthConfig {
            kind: TaskKind::Generic,
            size: Some([20, 20, 20]),
            spacing: Some([0.5, 0.7, 3.0]),
        };
        let c = generate_case(&cfg, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        assert_eq!(c.label.spacing, [0.5, 0.7, 3.0]);
        assert_eq!(c.label.affine[2][2], 3.0);
    }

    #[test]
    fn intensity_ranges_look_like_ct_or_mr() {
        let ct = gen_case(TaskKind::Organ, 1);
        let min = ct.image.data.iter().cloned().fold(f32::MAX, f32::min);
        let max = ct.image.data.iter().cloned().fold(f32::MIN, f32::max);
        assert!(min < -500.0 && max > 100.0, "CT range {min}..{max}");
        assert!(
            ct.image.data.iter().all(|v| v.fract() == 0.0),
            "CT values are integers"
        );
        let mr = gen_case(TaskKind::Small, 1);
        assert!(mr.image.data.iter().all(|&v| v >= 0.0));
    }

    #[test]
    fn invalid_config_is_refused() {
        let cfg = SynthConfig {
            size: Some([8, 64, 64]),
            ..SynthConfig::new(TaskKind::Organ)
        };
        let err = generate_case(&cfg, &mut ChaCha8Rng::seed_from_u64(0)).unwrap_err();
        assert!(err.to_string().contains("[8, 64, 64]"), "{err}");
    }

    #[test]
    fn custom_sizes_still_have_foreground() {
        for k in TaskKind::ALL {
            for seed in 0..3 {
                let cfg = SynthConfig {
                    size: Some([16, 20, 16]),
                    ..SynthConfig::new(k)
                };
                let c = generate_case(&cfg, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
                assert!(fraction(&c) > 0.0, "{k} {seed}");
            }
        }
    }
}
