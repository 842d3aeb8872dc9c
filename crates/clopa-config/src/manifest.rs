//! Task manifests: one binary target on one image channel of an MSD-format dataset.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ConfigError, invalid, parse_error, read_file};

/// Where relative `dataset` folders live when neither `--data-root` nor `$CLOPA_DATA` is given
/// (relative to the working directory; `just synth` and clopa-reproduce write there).
pub const DEFAULT_DATA_ROOT: &str = "data";

/// One task (`data-manifests/*.toml`). Every key is required; unknown keys are errors, so a typo
/// never silently falls back to a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Short task name, used in every table's `task` column.
    pub name: String,
    /// The MSD-format dataset folder: absolute, or relative to the data root (`$CLOPA_DATA`).
    pub dataset: String,
    /// Image channel used (the index along the 4th NIfTI axis; 0 for 3D images).
    pub channel: usize,
    /// Label values whose union is the foreground (non-empty, never 0).
    pub labels: Vec<u16>,
    /// Keep only the largest 26-connected component of the foreground (MSD Lung and Colon).
    pub largest_component: bool,
    /// NSD tolerance in mm (> 0).
    pub nsd_tolerance_mm: f64,
    /// Expert Dice threshold for NoI / NoF / NoS, in [0, 1].
    pub expert_dice: f64,
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ConfigError> {
        Self::from_toml_str(&read_file(path)?, path)
    }

    /// Parses and validates manifest text; `path` is only used in error messages.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Manifest, ConfigError> {
        let m: Manifest = toml::from_str(text).map_err(|e| parse_error(path, e))?;
        m.validate(path)?;
        Ok(m)
    }

    /// Checks the ranges the types cannot express.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if self.name.trim().is_empty() {
            return Err(invalid(path, "name", "must not be empty"));
        }
        if self.dataset.trim().is_empty() {
            return Err(invalid(path, "dataset", "must not be empty"));
        }
        if self.labels.is_empty() {
            return Err(invalid(
                path,
                "labels",
                "must list at least one label value",
            ));
        }
        if self.labels.contains(&0) {
            return Err(invalid(
                path,
                "labels",
                "0 is the background and cannot be part of the foreground",
            ));
        }
        if !(self.nsd_tolerance_mm.is_finite() && self.nsd_tolerance_mm > 0.0) {
            return Err(invalid(
                path,
                "nsd_tolerance_mm",
                format!(
                    "must be a positive number of mm, got {}",
                    self.nsd_tolerance_mm
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.expert_dice) {
            return Err(invalid(
                path,
                "expert_dice",
                format!("must lie in [0, 1], got {}", self.expert_dice),
            ));
        }
        Ok(())
    }

    /// The dataset folder: `dataset` as is when absolute; otherwise joined to `data_root` (the
    /// tool passes `--data-root`, else `$CLOPA_DATA`), else to [`DEFAULT_DATA_ROOT`].
    pub fn dataset_dir(&self, data_root: Option<&Path>) -> PathBuf {
        let ds = Path::new(&self.dataset);
        if ds.is_absolute() {
            return ds.to_path_buf();
        }
        // Without a root (no --data-root, no $CLOPA_DATA) datasets are under ./data, where
        // `just synth` and clopa-reproduce put them: one default for every tool.
        data_root.unwrap_or(Path::new(DEFAULT_DATA_ROOT)).join(ds)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "hippocampus"
dataset = "Task04_Hippocampus"
channel = 0
labels = [1, 2]
largest_component = false
nsd_tolerance_mm = 1.0
expert_dice = 0.90   # estimate
"#;

    fn parse(text: &str) -> Result<Manifest, ConfigError> {
        Manifest::from_toml_str(text, Path::new("m/hippo.toml"))
    }

    #[test]
    fn parses_the_design_example() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.name, "hippocampus");
        assert_eq!(m.channel, 0);
        assert_eq!(m.labels, vec![1, 2]);
        assert!(!m.largest_component);
        assert_eq!(m.nsd_tolerance_mm, 1.0);
        assert_eq!(m.expert_dice, 0.9);
    }

    #[test]
    fn missing_key_names_file_and_key() {
        let text = GOOD.replace("expert_dice = 0.90   # estimate\n", "");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.contains("m/hippo.toml"), "{msg}");
        assert!(msg.contains("expert_dice"), "{msg}");
    }

    #[test]
    fn wrong_type_names_file_and_key() {
        let text = GOOD.replace("channel = 0", "channel = \"T2\"");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.contains("m/hippo.toml"), "{msg}");
        assert!(msg.contains("channel"), "{msg}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let text = format!("{GOOD}\nexpert_dcie = 0.5\n");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.contains("expert_dcie"), "{msg}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        for (from, to, key) in [
            ("expert_dice = 0.90", "expert_dice = 1.5", "expert_dice"),
            ("expert_dice = 0.90", "expert_dice = -0.1", "expert_dice"),
            (
                "nsd_tolerance_mm = 1.0",
                "nsd_tolerance_mm = 0.0",
                "nsd_tolerance_mm",
            ),
            (
                "nsd_tolerance_mm = 1.0",
                "nsd_tolerance_mm = -2.0",
                "nsd_tolerance_mm",
            ),
            ("labels = [1, 2]", "labels = []", "labels"),
            ("labels = [1, 2]", "labels = [0, 1]", "labels"),
            ("name = \"hippocampus\"", "name = \"\"", "name"),
        ] {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD);
            let err = parse(&text).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ConfigError::Invalid { .. }), "{msg}");
            assert!(msg.contains(key) && msg.contains("m/hippo.toml"), "{msg}");
        }
        // A negative label does not fit u16: a type error that still names the key.
        let msg = parse(&GOOD.replace("labels = [1, 2]", "labels = [-1]"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("labels"), "{msg}");
    }

    #[test]
    fn dataset_dir_resolution() {
        let m = parse(GOOD).unwrap();
        assert_eq!(
            m.dataset_dir(Some(Path::new("/data"))),
            PathBuf::from("/data/Task04_Hippocampus")
        );
        // No root: ./data, wherever the manifest is.
        assert_eq!(
            m.dataset_dir(None),
            PathBuf::from("data/Task04_Hippocampus")
        );
        let abs = Manifest {
            dataset: "/abs/ds".into(),
            ..m
        };
        assert_eq!(
            abs.dataset_dir(Some(Path::new("/data"))),
            PathBuf::from("/abs/ds")
        );
    }

    #[test]
    fn load_names_a_missing_file() {
        let msg = Manifest::load(Path::new("/nonexistent/x.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/nonexistent/x.toml"), "{msg}");
    }
}
