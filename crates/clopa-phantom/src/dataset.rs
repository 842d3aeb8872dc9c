//! Writing synthetic tasks as MSD-format dataset folders.
//!
//! Every file is written atomically (temporary name, then rename), a settings marker first and
//! `dataset.json` last, so an interrupted run leaves only complete cases behind and a rerun with
//! the same settings just fills in what is missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clopa_volume::{read_image, read_labels, write_nifti};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{GENERATOR_VERSION, PhantomError, SynthConfig, TaskKind, generate_case};

/// Name of the settings file clopa-synth leaves next to `dataset.json`.
pub const MARKER_FILE: &str = "clopa-synth.json";

/// The settings that determine a dataset's content (the number of cases does not: case `i`
/// depends only on these and `i`, so a dataset can be extended).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSettings {
    pub tool: String,
    pub generator_version: u32,
    pub kind: TaskKind,
    pub seed: u64,
    pub size: [usize; 3],
}

impl DatasetSettings {
    pub fn new(kind: TaskKind, seed: u64, size: Option<[usize; 3]>) -> Self {
        DatasetSettings {
            tool: "clopa-synth".into(),
            generator_version: GENERATOR_VERSION,
            kind,
            seed,
            size: size.unwrap_or(kind.default_size()),
        }
    }
}

/// `dataset.json` as the Medical Segmentation Decathlon writes it (same keys, same order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetJson {
    pub name: String,
    pub description: String,
    pub reference: String,
    pub licence: String,
    pub release: String,
    #[serde(rename = "tensorImageSize")]
    pub tensor_image_size: String,
    pub modality: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "numTraining")]
    pub num_training: usize,
    #[serde(rename = "numTest")]
    pub num_test: usize,
    pub training: Vec<TrainingCase>,
    pub test: Vec<String>,
}

/// One entry of `dataset.json`'s `training` list (paths relative to the dataset folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingCase {
    pub image: String,
    pub label: String,
}

/// Whether [`write_case`] generated the case, found it complete already, or replaced files that
/// did not read back whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseStatus {
    Written,
    Skipped,
    Repaired,
}

/// `synth_<kind>_<i:03>`.
pub fn case_name(kind: TaskKind, i: usize) -> String {
    format!("synth_{kind}_{i:03}")
}

/// The RNG of case `i`: the dataset seed selects the key, the case index the ChaCha stream, so
/// case `i` is the same whether 10 or 20 cases are generated.
pub fn case_rng(seed: u64, i: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(i as u64);
    rng
}

/// The `dataset.json` content for cases `0..n`.
pub fn dataset_json(kind: TaskKind, n: usize, seed: u64) -> DatasetJson {
    let labels = kind
        .label_names()
        .iter()
        .enumerate()
        .map(|(i, name)| (i.to_string(), name.to_string()))
        .collect();
    DatasetJson {
        name: format!("synth_{kind}"),
        description: format!("clopa synthetic {kind} task (seed {seed})"),
        reference: "clopa-synth (synthetic data)".into(),
        licence: "CC-BY-SA 4.0".into(),
        release: format!("clopa-phantom generator {GENERATOR_VERSION}"),
        tensor_image_size: "3D".into(),
        modality: BTreeMap::from([("0".to_string(), kind.modality().to_string())]),
        labels,
        num_training: n,
        num_test: 0,
        training: (0..n)
            .map(|i| {
                let c = case_name(kind, i);
                TrainingCase {
                    image: format!("./imagesTr/{c}.nii.gz"),
                    label: format!("./labelsTr/{c}.nii.gz"),
                }
            })
            .collect(),
        test: Vec::new(),
    }
}

fn case_paths(dir: &Path, kind: TaskKind, i: usize) -> (PathBuf, PathBuf) {
    let c = case_name(kind, i);
    (
        dir.join("imagesTr").join(format!("{c}.nii.gz")),
        dir.join("labelsTr").join(format!("{c}.nii.gz")),
    )
}

/// Generates case `i` and writes its image (i16 for CT kinds, f32 for MR kinds) and labels (u8),
/// unless both files exist already and read back whole on the dataset's grid (each is written
/// atomically, but a file can be damaged later: such a case is written again).
pub fn write_case(
    dir: &Path,
    settings: &DatasetSettings,
    i: usize,
) -> Result<CaseStatus, PhantomError> {
    let (img_path, lab_path) = case_paths(dir, settings.kind, i);
    if img_path.is_file() && lab_path.is_file() {
        let whole = |shape: Result<[usize; 3], _>| shape.is_ok_and(|s| s == settings.size);
        if whole(read_image(&img_path, 0).map(|v| v.shape))
            && whole(read_labels(&lab_path).map(|v| v.shape))
        {
            return Ok(CaseStatus::Skipped);
        }
    }
    let status = if img_path.exists() || lab_path.exists() {
        CaseStatus::Repaired
    } else {
        CaseStatus::Written
    };
    let cfg = SynthConfig {
        kind: settings.kind,
        size: Some(settings.size),
        spacing: None,
    };
    let case = generate_case(&cfg, &mut case_rng(settings.seed, i))?;
    if settings.kind.modality() == "CT" {
        // Values are already rounded and clamped to the CT range, so the cast is exact.
        write_nifti(&img_path, &case.image.map(|&v| v as i16))?;
    } else {
        write_nifti(&img_path, &case.image)?;
    }
    write_nifti(&lab_path, &case.label)?;
    Ok(status)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PhantomError + '_ {
    move |source| PhantomError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), PhantomError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| PhantomError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    // An unchanged file is left as it is, time included: clopa-reproduce reruns every step that
    // reads a dataset whose files are newer than the step's outputs (make's rule).
    if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(());
    }
    clopa_fs::write_bytes(path, text.as_bytes()).map_err(|e| PhantomError::Io {
        path: e.path,
        source: e.source,
    })
}

/// Makes sure `dir` is empty, missing, or a previous output with the same settings.
fn prepare_dir(dir: &Path, settings: &DatasetSettings) -> Result<(), PhantomError> {
    let not_ours = |detail: String| PhantomError::NotOurs {
        dir: dir.to_path_buf(),
        detail,
    };
    if dir.exists() {
        if !dir.is_dir() {
            return Err(not_ours("it exists and is not a folder".into()));
        }
        let marker = dir.join(MARKER_FILE);
        if marker.is_file() {
            let text = std::fs::read_to_string(&marker).map_err(io_err(&marker))?;
            let old: DatasetSettings =
                serde_json::from_str(&text).map_err(|source| PhantomError::Json {
                    path: marker.clone(),
                    source,
                })?;
            if old != *settings {
                return Err(not_ours(format!(
                    "it holds a clopa-synth dataset made with other settings (kind {}, seed {}, size {:?}, generator {}) \
                     than asked (kind {}, seed {}, size {:?}, generator {}); choose another folder or delete it",
                    old.kind,
                    old.seed,
                    old.size,
                    old.generator_version,
                    settings.kind,
                    settings.seed,
                    settings.size,
                    settings.generator_version
                )));
            }
        } else {
            let mut entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
            if entries.next().is_some() {
                return Err(not_ours(format!(
                    "the folder is not empty and has no {MARKER_FILE}, so it is not a clopa-synth output"
                )));
            }
        }
    }
    for sub in ["imagesTr", "labelsTr"] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    let marker = dir.join(MARKER_FILE);
    if !marker.is_file() {
        write_json_atomic(&marker, settings)?;
    }
    Ok(())
}

/// Writes cases `0..n_cases` of `kind` and `dataset.json` into `dir`, calling `on_case(i, status)`
/// after each case. Refuses a non-empty folder that is not a clopa-synth output of the same
/// kind, seed and size; with the same settings it only generates the missing cases.
pub fn write_dataset_with(
    dir: &Path,
    kind: TaskKind,
    n_cases: usize,
    seed: u64,
    size: Option<[usize; 3]>,
    mut on_case: impl FnMut(usize, CaseStatus),
) -> Result<DatasetJson, PhantomError> {
    let settings = DatasetSettings::new(kind, seed, size);
    SynthConfig {
        kind,
        size: Some(settings.size),
        spacing: None,
    }
    .validate()?;
    prepare_dir(dir, &settings)?;
    for i in 0..n_cases {
        let status = write_case(dir, &settings, i)?;
        on_case(i, status);
    }
    let json = dataset_json(kind, n_cases, seed);
    write_json_atomic(&dir.join("dataset.json"), &json)?;
    Ok(json)
}

/// [`write_dataset_with`] without progress reporting.
pub fn write_dataset(
    dir: &Path,
    kind: TaskKind,
    n_cases: usize,
    seed: u64,
    size: Option<[usize; 3]>,
) -> Result<DatasetJson, PhantomError> {
    write_dataset_with(dir, kind, n_cases, seed, size, |_, _| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use clopa_volume::{read_image, read_labels};

    #[test]
    fn writes_msd_folder_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ds");
        let json = write_dataset(&out, TaskKind::Organ, 2, 5, Some([20, 20, 16])).unwrap();
        assert_eq!(json.num_training, 2);
        let text = std::fs::read_to_string(out.join("dataset.json")).unwrap();
        // MSD key order.
        let keys = [
            "\"name\"",
            "\"description\"",
            "\"reference\"",
            "\"licence\"",
            "\"release\"",
            "\"tensorImageSize\"",
            "\"modality\"",
            "\"labels\"",
            "\"numTraining\"",
            "\"numTest\"",
            "\"training\"",
            "\"test\"",
        ];
        let pos: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["labels"]["2"], "tumour");
        assert_eq!(v["modality"]["0"], "CT");
        assert_eq!(
            v["training"][1]["image"],
            "./imagesTr/synth_organ_001.nii.gz"
        );

        let case = generate_case(
            &SynthConfig {
                kind: TaskKind::Organ,
                size: Some([20, 20, 16]),
                spacing: None,
            },
            &mut case_rng(5, 1),
        )
        .unwrap();
        let img = read_image(&out.join("imagesTr/synth_organ_001.nii.gz"), 0).unwrap();
        let lab = read_labels(&out.join("labelsTr/synth_organ_001.nii.gz")).unwrap();
        assert_eq!(img.data, case.image.data);
        assert_eq!(
            lab.data,
            case.label
                .data
                .iter()
                .map(|&v| v as u16)
                .collect::<Vec<_>>()
        );
        assert!(img.same_grid(&case.image));
    }

    #[test]
    fn first_cases_do_not_depend_on_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        write_dataset(&a, TaskKind::Lesion, 2, 9, Some([16, 16, 16])).unwrap();
        write_dataset(&b, TaskKind::Lesion, 3, 9, Some([16, 16, 16])).unwrap();
        for i in 0..2 {
            let name = format!("labelsTr/synth_lesion_{i:03}.nii.gz");
            assert_eq!(
                std::fs::read(a.join(&name)).unwrap(),
                std::fs::read(b.join(&name)).unwrap()
            );
        }
    }

    #[test]
    fn refuses_foreign_or_differently_made_folders_and_extends_its_own() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let err = write_dataset(dir.path(), TaskKind::Small, 1, 0, Some([16, 16, 16])).unwrap_err();
        assert!(matches!(err, PhantomError::NotOurs { .. }), "{err}");

        let out = dir.path().join("ds");
        write_dataset(&out, TaskKind::Small, 1, 0, Some([16, 16, 16])).unwrap();
        let err = write_dataset(&out, TaskKind::Small, 1, 1, Some([16, 16, 16])).unwrap_err();
        assert!(
            err.to_string().contains("seed 0") && err.to_string().contains("seed 1"),
            "{err}"
        );
        let mut statuses = Vec::new();
        write_dataset_with(&out, TaskKind::Small, 2, 0, Some([16, 16, 16]), |i, s| {
            statuses.push((i, s))
        })
        .unwrap();
        assert_eq!(
            statuses,
            vec![(0, CaseStatus::Skipped), (1, CaseStatus::Written)]
        );
        // A damaged file is written again, the same as it was.
        let (img, _) = case_paths(&out, TaskKind::Small, 1);
        let good = std::fs::read(&img).unwrap();
        std::fs::write(&img, &good[..good.len() / 2]).unwrap();
        statuses.clear();
        write_dataset_with(&out, TaskKind::Small, 2, 0, Some([16, 16, 16]), |i, s| {
            statuses.push((i, s))
        })
        .unwrap();
        assert_eq!(
            statuses,
            vec![(0, CaseStatus::Skipped), (1, CaseStatus::Repaired)]
        );
        assert_eq!(std::fs::read(&img).unwrap(), good);
    }

    /// A rerun that has nothing to do touches no file (clopa-reproduce reads their times).
    #[test]
    fn a_rerun_with_nothing_to_do_leaves_every_file_time() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ds");
        write_dataset(&out, TaskKind::Small, 1, 0, Some([16, 16, 16])).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let files = [
            out.join("dataset.json"),
            out.join(MARKER_FILE),
            case_paths(&out, TaskKind::Small, 0).0,
            case_paths(&out, TaskKind::Small, 0).1,
        ];
        for f in &files {
            let file = std::fs::File::options().write(true).open(f).unwrap();
            file.set_modified(old).unwrap();
        }
        write_dataset(&out, TaskKind::Small, 1, 0, Some([16, 16, 16])).unwrap();
        for f in &files {
            let t = std::fs::metadata(f).unwrap().modified().unwrap();
            assert_eq!(t, old, "{} was rewritten", f.display());
        }
    }
}
