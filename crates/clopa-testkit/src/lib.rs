//! Fixtures shared by clopa's tests and examples (not published): a tiny "ball" segmentation
//! task written as a real dataset (NIfTI images and labels, `dataset.json`, a task manifest), the
//! tiny 3-stage model those tests run, and seeded random weights for any architecture.
//!
//! The tools' CLI tests and the adaptation crate's episode tests used to carry their own copies
//! of these; one copy keeps the cases the tests reason about ("a bright ball of radius 4") the
//! same everywhere.
#![allow(clippy::unwrap_used)] // test fixtures: a failure here is a broken test setup

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use clopa_nn::model_folder::MODEL_FORMAT;
use clopa_nn::{Architecture, DecayScheme, ModelJson, UNetSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Shape of a ball case.
pub const BALL_SHAPE: [usize; 3] = [20; 3];
/// Voxel spacing of the ball cases written to disk (mm; anisotropic on purpose).
pub const BALL_SPACING: [f64; 3] = [1.0, 1.0, 2.0];

/// Centre of ball case `k`: it moves with `k` mod 2, 3 and 4, so that neighbouring cases differ.
pub fn ball_centre(k: usize) -> [f32; 3] {
    [
        8.0 + (k % 3) as f32 * 2.0,
        10.0 - (k % 2) as f32 * 2.0,
        9.0 + (k % 4) as f32,
    ]
}

/// One voxel of a ball case: inside the ball, and a background texture value in `0..5`.
#[derive(Clone, Copy, Debug)]
pub struct BallVoxel {
    pub inside: bool,
    pub texture: f32,
}

/// The voxels of a [`BALL_SHAPE`] case with a ball of radius 4 at `centre`, `x` slowest and `z`
/// fastest, as `Volume` stores them.
pub fn ball_voxels(centre: [f32; 3]) -> Vec<BallVoxel> {
    let [nx, ny, nz] = BALL_SHAPE;
    let mut out = Vec::with_capacity(nx * ny * nz);
    for x in 0..nx {
        for y in 0..ny {
            for z in 0..nz {
                let d2 = (x as f32 - centre[0]).powi(2)
                    + (y as f32 - centre[1]).powi(2)
                    + (z as f32 - centre[2]).powi(2);
                out.push(BallVoxel {
                    inside: d2 <= 16.0,
                    texture: ((x * 7 + y * 3 + z) % 5) as f32,
                });
            }
        }
    }
    out
}

/// Writes task `toy` under `root`: one case per centre (`toy_000`, `toy_001`, ...) as
/// `data/toy/imagesTr/<id>.nii.gz` (intensity 100 inside the ball, 10 outside, plus the texture)
/// and `data/toy/labelsTr/<id>.nii.gz` (1 inside), `data/toy/dataset.json`, and the manifest
/// `root/toy.toml` (label 1, no largest-component filter, NSD tolerance 2 mm, expert Dice 0.9).
/// Returns the case ids.
pub fn write_ball_task(root: &Path, centres: &[[f32; 3]]) -> Vec<String> {
    let ds = root.join("data/toy");
    std::fs::create_dir_all(ds.join("imagesTr")).unwrap();
    std::fs::create_dir_all(ds.join("labelsTr")).unwrap();
    let mut ids = Vec::new();
    let mut training = Vec::new();
    for (k, &c) in centres.iter().enumerate() {
        let vox = ball_voxels(c);
        let img = vox
            .iter()
            .map(|v| if v.inside { 100.0 } else { 10.0 } + v.texture)
            .collect();
        let lab = vox.iter().map(|v| u16::from(v.inside)).collect();
        let id = format!("toy_{k:03}");
        let iv = clopa_volume::Volume::from_shape(BALL_SHAPE, BALL_SPACING, img).unwrap();
        let lv = clopa_volume::Volume::from_shape(BALL_SHAPE, BALL_SPACING, lab).unwrap();
        clopa_volume::write_nifti(&ds.join(format!("imagesTr/{id}.nii.gz")), &iv).unwrap();
        clopa_volume::write_nifti(&ds.join(format!("labelsTr/{id}.nii.gz")), &lv).unwrap();
        training.push(serde_json::json!({
            "image": format!("./imagesTr/{id}.nii.gz"),
            "label": format!("./labelsTr/{id}.nii.gz"),
        }));
        ids.push(id);
    }
    let dj = serde_json::json!({"name": "toy", "labels": {"0": "background", "1": "ball"},
        "channel_names": {"0": "CT"}, "numTraining": centres.len(), "training": training});
    std::fs::write(ds.join("dataset.json"), dj.to_string()).unwrap();
    std::fs::write(
        root.join("toy.toml"),
        "name = \"toy\"\ndataset = \"toy\"\nchannel = 0\nlabels = [1]\nlargest_component = false\n\
         nsd_tolerance_mm = 2.0\nexpert_dice = 0.9\n",
    )
    .unwrap();
    ids
}

/// The tests' model: 3 stages (features 4-8-16, one block each), nnInteractive's 8 input
/// channels, 2 classes, 16³ patches.
pub fn tiny_model_json() -> ModelJson {
    ModelJson {
        format: MODEL_FORMAT.into(),
        architecture: Architecture::resenc(&[4, 8, 16], &[1, 1, 1]),
        input_channels: 8,
        num_classes: 2,
        patch_size: vec![16, 16, 16],
        point_radius: 4,
        interaction_decay: 0.9,
        interaction_decay_origin: "file".into(),
        decay_scheme: DecayScheme::PerType,
        source: serde_json::Value::Null,
    }
}

/// [`tiny_model_json`]'s network.
pub fn tiny_spec() -> UNetSpec {
    tiny_model_json().spec().unwrap()
}

/// Seeded random weights for `spec`: convolutions uniform in ±√(3 / fan-in) (He-uniform up to a
/// factor √2: unit-variance outputs through the norms either way), norm weights 1, biases 0.
pub fn random_weights(spec: &UNetSpec, seed: u64) -> BTreeMap<String, Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    spec.parameter_shapes()
        .into_iter()
        .map(|(n, s)| {
            let len: usize = s.iter().product();
            let fan_in: usize = s.iter().skip(1).product::<usize>().max(1);
            let v: Vec<f32> = if n.contains("norm.weight") {
                vec![1.0; len]
            } else if n.ends_with("bias") {
                vec![0.0; len]
            } else {
                let a = (3.0 / fan_in as f64).sqrt() as f32;
                (0..len).map(|_| rng.random_range(-a..a)).collect()
            };
            (n, Tensor::from_vec(v, s, &Device::Cpu).unwrap())
        })
        .collect()
}

/// Writes [`tiny_model_json`] with [`random_weights`] of `seed` as a model folder at `dir`.
pub fn write_tiny_model(dir: &Path, seed: u64) {
    let meta = tiny_model_json();
    let tensors = random_weights(&meta.spec().unwrap(), seed);
    clopa_nn::write_model_folder(dir, &meta, &tensors).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ball_cases_hold_a_radius_4_ball_at_their_centre() {
        let vox = ball_voxels(ball_centre(0));
        // A radius-4 ball on the grid has 257 voxels (points with x² + y² + z² ≤ 16).
        assert_eq!(vox.iter().filter(|v| v.inside).count(), 257);
        let at = |x: usize, y: usize, z: usize| vox[(x * 20 + y) * 20 + z];
        assert!(at(8, 10, 9).inside && !at(8, 10, 14).inside && at(8, 10, 13).inside);
        assert_ne!(ball_centre(0), ball_centre(1));
    }

    #[test]
    fn weights_repeat_with_the_seed_and_cover_the_spec() {
        let spec = tiny_spec();
        let (a, b, c) = (
            random_weights(&spec, 1),
            random_weights(&spec, 1),
            random_weights(&spec, 2),
        );
        assert_eq!(a.len(), spec.parameter_shapes().len());
        let flat = |m: &BTreeMap<String, Tensor>| -> Vec<f32> {
            m.values()
                .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .collect()
        };
        assert_eq!(flat(&a), flat(&b));
        assert_ne!(flat(&a), flat(&c));
    }
}
