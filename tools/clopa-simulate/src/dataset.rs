//! The cases of an MSD-format dataset folder: `dataset.json`'s `training` list of
//! `{image, label}`, a case id being the label file's name without `.nii.gz` / `.nii`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clopa_volume::{Mask, Volume};

/// One case's files.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub image: PathBuf,
    pub label: PathBuf,
}

/// A loaded case: the image channel and the binary reference on the same grid.
#[derive(Debug, Clone)]
pub struct Case {
    pub image: Volume<f32>,
    pub mask: Mask,
}

/// The dataset's case list.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub entries: Vec<Entry>,
}

/// `case_007.nii.gz` → `case_007`.
pub fn case_id(path: &str) -> String {
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
        .unwrap_or(&name)
        .to_string()
}

impl Dataset {
    /// Reads `dir/dataset.json`.
    pub fn open(dir: &Path) -> anyhow::Result<Dataset> {
        if !dir.is_dir() {
            bail!(
                "dataset folder {} does not exist (set --data-root or $CLOPA_DATA)",
                dir.display()
            );
        }
        let path = dir.join("dataset.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let list = json
            .get("training")
            .and_then(|t| t.as_array())
            .with_context(|| format!("{}: no `training` list", path.display()))?;
        let mut entries = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let get = |k: &str| {
                item.get(k).and_then(|v| v.as_str()).with_context(|| {
                    format!("{}: training[{i}] has no string `{k}`", path.display())
                })
            };
            let (image, label) = (get("image")?, get("label")?);
            entries.push(Entry {
                id: case_id(label),
                image: dir.join(image),
                label: dir.join(label),
            });
        }
        Ok(Dataset {
            dir: dir.to_path_buf(),
            entries,
        })
    }

    /// The entry of case `id`.
    pub fn entry(&self, id: &str) -> anyhow::Result<Entry> {
        self.entries
            .iter()
            .find(|e| e.id == id)
            .cloned()
            .with_context(|| {
                format!(
                    "case {id:?} of the split is not in {}",
                    self.dir.join("dataset.json").display()
                )
            })
    }
}

impl Entry {
    /// Reads the image channel (MSD 4D file, or nnU-Net's `<case>_<channel:04>.nii.gz` beside
    /// it when the listed file does not exist) and the reference mask of `labels`.
    pub fn load(&self, channel: usize, labels: &[u16], largest: bool) -> anyhow::Result<Case> {
        let image = if self.image.exists() {
            clopa_volume::read_image(&self.image, channel)?
        } else {
            let alt = self
                .image
                .with_file_name(format!("{}_{channel:04}.nii.gz", self.id));
            if !alt.exists() {
                bail!(
                    "case {}: image {} does not exist (nor {})",
                    self.id,
                    self.image.display(),
                    alt.display()
                );
            }
            clopa_volume::read_image(&alt, 0)?
        };
        let lab = clopa_volume::read_labels(&self.label)?;
        if !image.same_grid(&lab) {
            bail!(
                "case {}: image {:?} and label {} {:?} are not on the same grid",
                self.id,
                image.shape,
                self.label.display(),
                lab.shape
            );
        }
        let mut mask = clopa_volume::labels_to_mask(&lab, labels);
        if largest {
            mask = clopa_volume::largest_component(&mask);
        }
        Ok(Case { image, mask })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_ids_drop_the_nifti_extension() {
        assert_eq!(
            case_id("./labelsTr/hippocampus_367.nii.gz"),
            "hippocampus_367"
        );
        assert_eq!(case_id("labelsTr/a.b.nii"), "a.b");
    }
}
