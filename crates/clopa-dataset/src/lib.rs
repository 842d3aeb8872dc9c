//! The cases of an MSD-format dataset folder, read once for every tool.
//!
//! A dataset folder holds `dataset.json` (the Medical Segmentation Decathlon layout, or nnU-Net v2's)
//! whose `training` list names each case's image and label file relative to the folder; a case id is
//! the label file's name without `.nii.gz` / `.nii`. [`Dataset::open`] reads the list and the declared
//! label values, [`CaseFiles::load`] reads one case as the image channel and the binary reference of a
//! task's [`Manifest`], and [`CaseFiles::check`] does everything `clopa-split` verifies before it writes
//! a split (same grid, finite intensities, declared label values, non-empty foreground).
//!
//! ```no_run
//! # fn main() -> Result<(), clopa_dataset::DatasetError> {
//! use std::path::Path;
//! let manifest_path = Path::new("data-manifests/synth-vessels.toml");
//! let manifest = clopa_config::Manifest::load(manifest_path).unwrap();
//! let ds = clopa_dataset::Dataset::for_manifest(&manifest, manifest_path, None)?;
//! let case = ds.case(&ds.cases[0].id)?.load(&manifest)?;
//! assert_eq!(case.image.shape, case.mask.shape);
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clopa_config::Manifest;
use clopa_volume::{Mask, Volume, VolumeError};

/// Everything that can be wrong with a dataset folder or one of its cases; each message names the
/// file at fault.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(
        "the dataset folder {} does not exist (set --data-root or $CLOPA_DATA, or make the manifest's `dataset` absolute)",
        .0.display()
    )]
    NoFolder(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `dataset.json` is malformed, or a case's files disagree with it or with each other.
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

fn invalid(path: &Path, msg: impl Into<String>) -> DatasetError {
    DatasetError::Invalid {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// One training case's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseFiles {
    pub id: String,
    pub image: PathBuf,
    pub label: PathBuf,
}

/// A loaded case: one image channel and the binary reference, on the same grid.
#[derive(Debug, Clone)]
pub struct Case {
    pub id: String,
    pub image: Volume<f32>,
    pub mask: Mask,
}

/// What `dataset.json` declares.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub json_path: PathBuf,
    /// Label values the dataset declares (background 0 included).
    pub labels: BTreeSet<u16>,
    pub cases: Vec<CaseFiles>,
}

/// The case id of a file: its name without `.nii.gz` / `.nii`.
pub fn case_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
        .unwrap_or(&name)
        .to_string()
}

impl Dataset {
    /// Reads `DIR/dataset.json`: `labels` (MSD `{"0": "background", ...}` or nnU-Net v2
    /// `{"background": 0, ...}`) and the `training` list of `{image, label}` paths relative to DIR.
    pub fn open(dir: &Path) -> Result<Dataset, DatasetError> {
        if !dir.is_dir() {
            return Err(DatasetError::NoFolder(dir.to_path_buf()));
        }
        let json_path = dir.join("dataset.json");
        let text = std::fs::read_to_string(&json_path).map_err(|source| DatasetError::Io {
            path: json_path.clone(),
            source,
        })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| invalid(&json_path, format!("not valid JSON: {e}")))?;

        let label_obj = json
            .get("labels")
            .and_then(|l| l.as_object())
            .ok_or_else(|| invalid(&json_path, "no `labels` object"))?;
        let mut labels = BTreeSet::new();
        for (k, v) in label_obj {
            // MSD keys are the values; nnU-Net v2 maps names to values.
            let value = k
                .parse::<u16>()
                .ok()
                .or_else(|| v.as_u64().and_then(|n| u16::try_from(n).ok()))
                .ok_or_else(|| {
                    invalid(
                        &json_path,
                        format!("label entry {k:?}: {v} names no label value"),
                    )
                })?;
            labels.insert(value);
        }

        let training = json
            .get("training")
            .and_then(|t| t.as_array())
            .ok_or_else(|| invalid(&json_path, "no `training` list"))?;
        let mut cases = Vec::with_capacity(training.len());
        for (i, entry) in training.iter().enumerate() {
            let get = |key: &str| {
                entry.get(key).and_then(|v| v.as_str()).ok_or_else(|| {
                    invalid(
                        &json_path,
                        format!("training entry {i} has no `{key}` path"),
                    )
                })
            };
            // MSD lists "./imagesTr/x.nii.gz"; dropping the "./" keeps messages readable.
            let rel = |p: &str| dir.join(p.trim_start_matches("./"));
            let image = rel(get("image")?);
            let label = rel(get("label")?);
            cases.push(CaseFiles {
                id: case_id(&label),
                image,
                label,
            });
        }
        if cases.is_empty() {
            return Err(invalid(&json_path, "the `training` list is empty"));
        }
        let mut ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(
                &json_path,
                format!("case id {:?} appears twice in `training`", w[0]),
            ));
        }
        Ok(Dataset {
            dir: dir.to_path_buf(),
            json_path,
            labels,
            cases,
        })
    }

    /// Opens the dataset a manifest names (`manifest.dataset_dir`) and checks that the manifest's
    /// foreground labels are declared by it.
    pub fn for_manifest(
        manifest: &Manifest,
        manifest_path: &Path,
        data_root: Option<&Path>,
    ) -> Result<Dataset, DatasetError> {
        let ds = Dataset::open(&manifest.dataset_dir(data_root))?;
        ds.check_labels(&manifest.labels, manifest_path)?;
        Ok(ds)
    }

    /// Checks that each of `labels` (a manifest's foreground values) is declared by the dataset.
    pub fn check_labels(&self, labels: &[u16], manifest_path: &Path) -> Result<(), DatasetError> {
        match labels.iter().find(|l| !self.labels.contains(l)) {
            None => Ok(()),
            Some(l) => Err(invalid(
                &self.json_path,
                format!(
                    "label {l} of the manifest {} is not among the dataset's labels {:?}",
                    manifest_path.display(),
                    self.labels
                ),
            )),
        }
    }

    /// The sha256 (hex) of the [`CaseFiles::stamp`]s of cases `ids`, in order: one value for a
    /// tool's provenance that changes when any of the files it reads changes.
    pub fn stamp_digest<S: AsRef<str>>(
        &self,
        ids: &[S],
        manifest: &Manifest,
    ) -> Result<String, DatasetError> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for id in ids {
            h.update(self.case(id.as_ref())?.stamp(manifest)?.as_bytes());
            h.update(b"\n");
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The files of case `id`.
    pub fn case(&self, id: &str) -> Result<&CaseFiles, DatasetError> {
        self.cases.iter().find(|c| c.id == id).ok_or_else(|| {
            invalid(
                &self.json_path,
                format!("case {id:?} is not in the `training` list"),
            )
        })
    }
}

impl CaseFiles {
    /// The image file of `channel`: the listed file (MSD: 4D, channels along the 4th axis), or, when
    /// it does not exist, nnU-Net's `<case>_<channel:04>.nii.gz` beside it (then a 3D file).
    fn image_file(&self, channel: usize) -> Result<(PathBuf, usize), DatasetError> {
        if self.image.exists() {
            return Ok((self.image.clone(), channel));
        }
        let alt = self
            .image
            .with_file_name(format!("{}_{channel:04}.nii.gz", self.id));
        if alt.exists() {
            return Ok((alt, 0));
        }
        Err(invalid(
            &self.image,
            format!(
                "the image of case {} does not exist (nor {})",
                self.id,
                alt.display()
            ),
        ))
    }

    /// What a rerun compares to tell whether the case's files changed since an output was made
    /// from them: the case id, and the size and modification time (ns) of the image file the
    /// manifest's channel reads and of the label file — what make and cargo compare; a file
    /// rewritten with the same size and an older time goes unnoticed. Reading the files' bytes
    /// instead would cost seconds per rerun on the MSD tasks.
    pub fn stamp(&self, manifest: &Manifest) -> Result<String, DatasetError> {
        let (image, _) = self.image_file(manifest.channel)?;
        let mut s = self.id.clone();
        for path in [&image, &self.label] {
            let meta = std::fs::metadata(path).map_err(|source| DatasetError::Io {
                path: path.clone(),
                source,
            })?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            s.push_str(&format!(" {}:{modified}", meta.len()));
        }
        Ok(s)
    }

    /// Reads the manifest's image channel and its reference mask (the manifest's label values,
    /// reduced to the largest 26-connected component when it asks for that). Refuses images and
    /// labels on different grids and NaN or infinite intensities.
    pub fn load(&self, manifest: &Manifest) -> Result<Case, DatasetError> {
        self.load_with_labels(manifest).map(|(case, _)| case)
    }

    /// [`CaseFiles::load`], also returning the raw label volume (for [`CaseFiles::check`], so the
    /// label file is read once).
    fn load_with_labels(&self, manifest: &Manifest) -> Result<(Case, Volume<u16>), DatasetError> {
        let (image_path, channel) = self.image_file(manifest.channel)?;
        let image = clopa_volume::read_image(&image_path, channel)?;
        let labels = clopa_volume::read_labels(&self.label)?;
        self.check_grid(&image_path, &image, &labels)?;
        if let Some(i) = image.data.iter().position(|v| !v.is_finite()) {
            let n = image.data.iter().filter(|v| !v.is_finite()).count();
            return Err(invalid(
                &image_path,
                format!(
                    "channel {} has {n} NaN or infinite voxel(s), the first at voxel {:?}",
                    manifest.channel,
                    image.coords(i)
                ),
            ));
        }
        let mut mask = clopa_volume::labels_to_mask(&labels, &manifest.labels);
        if manifest.largest_component {
            mask = clopa_volume::largest_component(&mask);
        }
        let case = Case {
            id: self.id.clone(),
            image,
            mask,
        };
        Ok((case, labels))
    }

    /// Everything [`CaseFiles::load`] checks, plus: every label value is declared by the dataset and
    /// the reference foreground is not empty.
    pub fn check(&self, ds: &Dataset, manifest: &Manifest) -> Result<(), DatasetError> {
        self.load_checked(ds, manifest).map(|_| ())
    }

    /// [`CaseFiles::load`] with the checks of [`CaseFiles::check`]: what every tool that reads a
    /// case for scoring or training uses, so a label file changed after the split (an undeclared
    /// value, an empty foreground) is refused there too instead of being scored as Dice 0.
    pub fn load_checked(&self, ds: &Dataset, manifest: &Manifest) -> Result<Case, DatasetError> {
        let (case, labels) = self.load_with_labels(manifest)?;
        let mut present = vec![false; usize::from(u16::MAX) + 1];
        for &v in &labels.data {
            present[usize::from(v)] = true;
        }
        let unknown: Vec<usize> = present
            .iter()
            .enumerate()
            .filter(|&(v, &p)| p && !ds.labels.contains(&(v as u16)))
            .map(|(v, _)| v)
            .collect();
        if !unknown.is_empty() {
            return Err(invalid(
                &self.label,
                format!(
                    "label value(s) {unknown:?} are not among the labels of {} ({:?})",
                    ds.json_path.display(),
                    ds.labels
                ),
            ));
        }
        if clopa_volume::count_nonzero(&case.mask) == 0 {
            return Err(invalid(
                &self.label,
                format!(
                    "the foreground (label values {:?}) is empty",
                    manifest.labels
                ),
            ));
        }
        Ok(case)
    }

    fn check_grid(
        &self,
        image_path: &Path,
        image: &Volume<f32>,
        labels: &Volume<u16>,
    ) -> Result<(), DatasetError> {
        let Some(what) = image.grid_difference(labels) else {
            return Ok(());
        };
        Err(invalid(
            image_path,
            format!(
                "the image and the label {} are not on the same grid ({what}; shape, spacing and affine must match)",
                self.label.display()
            ),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clopa_volume::write_nifti;

    #[test]
    fn case_ids_drop_nifti_extensions() {
        assert_eq!(case_id(Path::new("./labelsTr/liver_7.nii.gz")), "liver_7");
        assert_eq!(case_id(Path::new("labelsTr/a.b.nii")), "a.b");
    }

    fn manifest(labels: &[u16]) -> Manifest {
        let text = format!(
            "name = \"t\"\ndataset = \"d\"\nchannel = 0\nlabels = {labels:?}\nlargest_component = false\nnsd_tolerance_mm = 2.0\nexpert_dice = 0.8\n"
        );
        Manifest::from_toml_str(&text, Path::new("t.toml")).unwrap()
    }

    /// A one-case dataset whose image is `image` and label `label` (both 4×4×4).
    fn dataset(dir: &Path, image: Vec<f32>, label: Vec<u16>, label_spacing: f64) -> Dataset {
        std::fs::create_dir_all(dir.join("imagesTr")).unwrap();
        std::fs::create_dir_all(dir.join("labelsTr")).unwrap();
        let img = Volume::from_shape([4, 4, 4], [1.0; 3], image).unwrap();
        let lab = Volume::from_shape([4, 4, 4], [label_spacing, 1.0, 1.0], label).unwrap();
        write_nifti(&dir.join("imagesTr/c_1.nii.gz"), &img).unwrap();
        write_nifti(&dir.join("labelsTr/c_1.nii.gz"), &lab).unwrap();
        std::fs::write(
            dir.join("dataset.json"),
            r#"{"labels": {"0": "background", "1": "fg"},
                "training": [{"image": "./imagesTr/c_1.nii.gz", "label": "./labelsTr/c_1.nii.gz"}]}"#,
        )
        .unwrap();
        Dataset::open(dir).unwrap()
    }

    #[test]
    fn loads_a_case_and_checks_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut label = vec![0u16; 64];
        label[5] = 1;
        let ds = dataset(tmp.path(), vec![1.0; 64], label, 1.0);
        assert_eq!(ds.labels, BTreeSet::from([0, 1]));
        let files = ds.case("c_1").unwrap();
        let case = files.load(&manifest(&[1])).unwrap();
        assert_eq!(case.mask.data.iter().filter(|&&v| v == 1).count(), 1);
        files.check(&ds, &manifest(&[1])).unwrap();
        let err = ds.case("c_2").unwrap_err().to_string();
        assert!(err.contains("dataset.json") && err.contains("c_2"), "{err}");
    }

    #[test]
    fn stamps_change_when_a_file_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut label = vec![0u16; 64];
        label[5] = 1;
        let ds = dataset(tmp.path(), vec![1.0; 64], label.clone(), 1.0);
        let m = manifest(&[1]);
        let before = ds.stamp_digest(&["c_1"], &m).unwrap();
        assert_eq!(ds.stamp_digest(&["c_1"], &m).unwrap(), before);
        assert!(
            ds.case("c_1")
                .unwrap()
                .stamp(&m)
                .unwrap()
                .starts_with("c_1 ")
        );
        // the label rewritten with another foreground voxel (same size on disk is likely:
        // the time tells)
        label[6] = 1;
        let lab = Volume::from_shape([4, 4, 4], [1.0; 3], label).unwrap();
        let path = tmp.path().join("labelsTr/c_1.nii.gz");
        let t0 = std::fs::metadata(&path).unwrap().modified().unwrap();
        write_nifti(&path, &lab).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(t0 + std::time::Duration::from_secs(1))
            .unwrap();
        assert_ne!(ds.stamp_digest(&["c_1"], &m).unwrap(), before);
        // a missing file and an unknown case are errors naming them
        std::fs::remove_file(&path).unwrap();
        let err = ds.stamp_digest(&["c_1"], &m).unwrap_err().to_string();
        assert!(err.contains("c_1.nii.gz"), "{err}");
        let err = ds.stamp_digest(&["c_9"], &m).unwrap_err().to_string();
        assert!(err.contains("c_9"), "{err}");
    }

    #[test]
    fn refuses_nan_other_grids_unknown_labels_and_empty_foregrounds() {
        let tmp = tempfile::tempdir().unwrap();
        let mut image = vec![1.0; 64];
        image[3] = f32::NAN;
        let ds = dataset(&tmp.path().join("nan"), image, vec![1; 64], 1.0);
        let err = ds.cases[0].load(&manifest(&[1])).unwrap_err().to_string();
        assert!(err.contains("c_1.nii.gz") && err.contains("NaN"), "{err}");

        let ds = dataset(&tmp.path().join("grid"), vec![1.0; 64], vec![1; 64], 2.0);
        let err = ds.cases[0].load(&manifest(&[1])).unwrap_err().to_string();
        assert!(
            err.contains("same grid") && err.contains("spacing"),
            "{err}"
        );

        let ds = dataset(&tmp.path().join("lab"), vec![1.0; 64], vec![7; 64], 1.0);
        let err = ds.cases[0].check(&ds, &manifest(&[1])).unwrap_err();
        assert!(err.to_string().contains("[7]"), "{err}");

        let ds = dataset(&tmp.path().join("empty"), vec![1.0; 64], vec![0; 64], 1.0);
        let err = ds.cases[0].check(&ds, &manifest(&[1])).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let err = ds.check_labels(&[1, 2], Path::new("m.toml")).unwrap_err();
        assert!(
            err.to_string().contains("label 2 of the manifest m.toml"),
            "{err}"
        );
    }

    #[test]
    fn refuses_malformed_dataset_json() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            Dataset::open(&tmp.path().join("missing")),
            Err(DatasetError::NoFolder(_))
        ));
        for (json, what) in [
            ("{", "not valid JSON"),
            (r#"{"training": []}"#, "no `labels`"),
            (r#"{"labels": {"0": "bg"}, "training": []}"#, "is empty"),
            (
                r#"{"labels": {"0": "bg"}, "training": [{"image": "a.nii.gz"}]}"#,
                "no `label` path",
            ),
            (
                r#"{"labels": {"0": "bg"}, "training": [{"image": "a", "label": "x/c.nii.gz"}, {"image": "b", "label": "y/c.nii"}]}"#,
                "appears twice",
            ),
        ] {
            std::fs::write(tmp.path().join("dataset.json"), json).unwrap();
            let err = Dataset::open(tmp.path()).unwrap_err().to_string();
            assert!(
                err.contains(what) && err.contains("dataset.json"),
                "{json}: {err}"
            );
        }
    }
}
