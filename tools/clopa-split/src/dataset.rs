//! Reading an MSD-format `dataset.json` and checking every case before a split is written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clopa_config::Manifest;
use clopa_volume::{count_nonzero, labels_to_mask, largest_component, read_image, read_labels};

/// One training case of the dataset.
#[derive(Debug, Clone)]
pub struct Case {
    pub id: String,
    pub image: PathBuf,
    pub label: PathBuf,
}

/// What `dataset.json` says that the split needs.
#[derive(Debug)]
pub struct Dataset {
    pub json_path: PathBuf,
    /// Label values the dataset declares (background 0 included).
    pub labels: BTreeSet<u16>,
    pub cases: Vec<Case>,
}

/// The case id of a file: its name without `.nii.gz` / `.nii`.
fn case_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
        .unwrap_or(&name)
        .to_string()
}

/// Reads `DIR/dataset.json`: `labels` (MSD `{"0": "background", ...}` or nnU-Net v2
/// `{"background": 0, ...}`) and the `training` list of `{image, label}` paths relative to DIR.
pub fn load(dir: &Path) -> anyhow::Result<Dataset> {
    if !dir.is_dir() {
        bail!(
            "the dataset folder {} does not exist (set --data-root or $CLOPA_DATA, or make the manifest's `dataset` absolute)",
            dir.display()
        );
    }
    let json_path = dir.join("dataset.json");
    let text = std::fs::read_to_string(&json_path)
        .with_context(|| format!("cannot read {}", json_path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", json_path.display()))?;
    let bad = |what: &str| anyhow::anyhow!("{}: {what}", json_path.display());

    let label_obj = json
        .get("labels")
        .and_then(|l| l.as_object())
        .ok_or_else(|| bad("no `labels` object"))?;
    let mut labels = BTreeSet::new();
    for (k, v) in label_obj {
        // MSD keys are the values; nnU-Net v2 maps names to values.
        let value = k
            .parse::<u16>()
            .ok()
            .or_else(|| v.as_u64().and_then(|n| u16::try_from(n).ok()));
        match value {
            Some(n) => {
                labels.insert(n);
            }
            None => return Err(bad(&format!("label entry {k:?}: {v} names no label value"))),
        }
    }

    let training = json
        .get("training")
        .and_then(|t| t.as_array())
        .ok_or_else(|| bad("no `training` list"))?;
    let mut cases = Vec::with_capacity(training.len());
    for (i, entry) in training.iter().enumerate() {
        let get = |key: &str| {
            entry
                .get(key)
                .and_then(|v| v.as_str())
                .ok_or_else(|| bad(&format!("training entry {i} has no `{key}` path")))
        };
        // MSD lists "./imagesTr/x.nii.gz"; dropping the "./" keeps messages readable.
        let rel = |p: &str| dir.join(p.trim_start_matches("./"));
        let image = rel(get("image")?);
        let label = rel(get("label")?);
        cases.push(Case {
            id: case_id(&label),
            image,
            label,
        });
    }
    if cases.is_empty() {
        return Err(bad("the `training` list is empty"));
    }
    let mut ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    ids.sort();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(&format!(
            "case id {:?} appears twice in `training`",
            w[0]
        )));
    }
    Ok(Dataset {
        json_path,
        labels,
        cases,
    })
}

/// Checks that the manifest's foreground labels exist in the dataset.
pub fn check_manifest_labels(
    ds: &Dataset,
    manifest: &Manifest,
    manifest_path: &Path,
) -> anyhow::Result<()> {
    for l in &manifest.labels {
        if !ds.labels.contains(l) {
            bail!(
                "{}: label {l} of the manifest {} is not among the dataset's labels {:?}",
                ds.json_path.display(),
                manifest_path.display(),
                ds.labels
            );
        }
    }
    Ok(())
}

/// Checks one case; the error names the file and the problem.
pub fn check_case(case: &Case, ds: &Dataset, manifest: &Manifest) -> Result<(), String> {
    let image = read_image(&case.image, manifest.channel).map_err(|e| e.to_string())?;
    let labels = read_labels(&case.label).map_err(|e| e.to_string())?;
    if !image.same_grid(&labels) {
        let what = if image.shape != labels.shape {
            format!("shape {:?} vs {:?}", image.shape, labels.shape)
        } else if image
            .spacing
            .iter()
            .zip(&labels.spacing)
            .any(|(a, b)| (a - b).abs() > 1e-4)
        {
            format!("spacing {:?} vs {:?}", image.spacing, labels.spacing)
        } else {
            format!("affine {:?} vs {:?}", image.affine, labels.affine)
        };
        return Err(format!(
            "the image {} and the label {} are not on the same grid ({what}; shape, spacing and affine must match)",
            case.image.display(),
            case.label.display(),
        ));
    }
    if let Some(i) = image.data.iter().position(|v| !v.is_finite()) {
        let n = image.data.iter().filter(|v| !v.is_finite()).count();
        return Err(format!(
            "{}: channel {} has {n} NaN or infinite voxel(s), the first at voxel {:?}",
            case.image.display(),
            manifest.channel,
            image.coords(i)
        ));
    }
    let mut present = vec![false; u16::MAX as usize + 1];
    for &v in &labels.data {
        present[v as usize] = true;
    }
    let unknown: Vec<usize> = present
        .iter()
        .enumerate()
        .filter(|&(v, &p)| p && !ds.labels.contains(&(v as u16)))
        .map(|(v, _)| v)
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "{}: label value(s) {unknown:?} are not among the labels of {} ({:?})",
            case.label.display(),
            ds.json_path.display(),
            ds.labels
        ));
    }
    let mut mask = labels_to_mask(&labels, &manifest.labels);
    if manifest.largest_component {
        mask = largest_component(&mask);
    }
    if count_nonzero(&mask) == 0 {
        return Err(format!(
            "{}: the foreground (label values {:?}) is empty",
            case.label.display(),
            manifest.labels
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_ids_drop_nifti_extensions() {
        assert_eq!(case_id(Path::new("./labelsTr/liver_7.nii.gz")), "liver_7");
        assert_eq!(case_id(Path::new("labelsTr/a.b.nii")), "a.b");
    }
}
