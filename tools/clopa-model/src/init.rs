//! `clopa-model init` and `clopa-model bake`: a model folder with fresh weights, and a model
//! folder with a chain of episode checkpoints folded into its weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use clopa_nn::model_folder::{MODEL_FORMAT, MODEL_WEIGHTS, read_episode_checkpoint, sha256_file};
use clopa_nn::{
    Architecture, DecayScheme, ModelJson, UNetSpec, load_model_folder, write_model_folder,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// A named architecture family for `init`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchPreset {
    /// A small ResidualEncoderUNet for CPU work: 4 stages, 8-16-32-64 features, blocks 1-2-2-2.
    Tiny,
    /// nnInteractive v1.0: 6 stages, 32-64-128-256-320-320 features, blocks 1-3-4-6-6-6.
    V1,
}

impl ArchPreset {
    /// Default features and residual blocks per stage.
    pub fn defaults(self) -> (Vec<usize>, Vec<usize>) {
        match self {
            ArchPreset::Tiny => (vec![8, 16, 32, 64], vec![1, 2, 2, 2]),
            ArchPreset::V1 => (vec![32, 64, 128, 256, 320, 320], vec![1, 3, 4, 6, 6, 6]),
        }
    }
}

/// What `init` builds.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The architecture family the defaults come from.
    pub arch: ArchPreset,
    /// Number of stages (default: the preset's, or the length of `features`).
    pub stages: Option<usize>,
    /// Features per stage (default: the preset's first `stages`).
    pub features: Option<Vec<usize>>,
    /// Residual blocks per stage (default: the preset's first `stages`, extended with its last).
    pub blocks: Option<Vec<usize>>,
    /// Cubic patch size written to `model.json` (a multiple of the total stride).
    pub patch: usize,
    /// Seed of the weights.
    pub seed: u64,
}

/// Resolves features and blocks from a preset and the overrides, checking their lengths.
pub fn resolve_arch(opts: &InitOptions) -> anyhow::Result<(Vec<usize>, Vec<usize>)> {
    let (pf, pb) = opts.arch.defaults();
    let n = match (&opts.features, opts.stages) {
        (Some(f), Some(s)) if f.len() != s => bail!(
            "--features has {} entries but --stages is {s}; give one per stage",
            f.len()
        ),
        (Some(f), _) => f.len(),
        (None, Some(s)) => s,
        (None, None) => pf.len(),
    };
    if !(2..=8).contains(&n) {
        bail!("a ResidualEncoderUNet needs 2 to 8 stages, got {n}");
    }
    let features = match &opts.features {
        Some(f) => f.clone(),
        // More stages than the preset has: keep doubling, capped like nnU-Net at 320.
        None => (0..n)
            .map(|i| {
                pf.get(i)
                    .copied()
                    .unwrap_or_else(|| (pf[pf.len() - 1] * 2).min(320))
            })
            .collect(),
    };
    if let Some(z) = features.iter().find(|&&f| f == 0) {
        bail!("--features must be positive, got {z}");
    }
    let blocks = match &opts.blocks {
        Some(b) if b.len() != n => bail!(
            "--blocks has {} entries, expected {n} (one per stage)",
            b.len()
        ),
        Some(b) => b.clone(),
        None => (0..n)
            .map(|i| pb.get(i).copied().unwrap_or(pb[pb.len() - 1]))
            .collect(),
    };
    if blocks.contains(&0) {
        bail!("--blocks must be at least 1 per stage, got {blocks:?}");
    }
    Ok((features, blocks))
}

/// The `model.json` of a freshly initialised interactive model (8 input channels, 2 classes,
/// nnInteractive's prompt settings).
pub fn init_meta(opts: &InitOptions) -> anyhow::Result<ModelJson> {
    let (features, blocks) = resolve_arch(opts)?;
    let meta = ModelJson {
        format: MODEL_FORMAT.to_string(),
        architecture: Architecture::resenc(&features, &blocks),
        input_channels: 8,
        num_classes: 2,
        patch_size: vec![opts.patch; 3],
        point_radius: 4,
        interaction_decay: 0.9,
        interaction_decay_origin: "file".into(),
        decay_scheme: DecayScheme::PerType,
        source: serde_json::json!({
            "tool": "clopa-model init",
            "version": env!("CARGO_PKG_VERSION"),
            "seed": opts.seed,
            "init": "InitWeights_He(1e-2) + init_last_bn_before_add_to_0 (dynamic-network-architectures)",
        }),
    };
    let spec = meta.spec()?;
    let stride = spec.total_stride();
    if opts.patch > clopa_config::MAX_PATCH {
        bail!(
            "--patch {} is larger than clopa takes ({})",
            opts.patch,
            clopa_config::MAX_PATCH
        );
    }
    if opts.patch == 0 || !opts.patch.is_multiple_of(stride) {
        bail!(
            "--patch {} is not a positive multiple of the network's total stride {stride}",
            opts.patch
        );
    }
    Ok(meta)
}

/// Fresh weights as dynamic-network-architectures initialises a ResidualEncoderUNet: He-normal
/// convolutions (`InitWeights_He(1e-2)`, biases 0, transposed convolutions too), instance norms
/// weight 1 / bias 0, except the last norm of each residual block, zeroed
/// (`init_last_bn_before_add_to_0`) so every block starts as its skip path.
pub fn init_tensors(spec: &UNetSpec, seed: u64) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a = 1e-2f64;
    let gain = (2.0 / (1.0 + a * a)).sqrt();
    let mut out = BTreeMap::new();
    // parameter_shapes is in PyTorch order, so a seed always gives the same tensors.
    for (name, shape) in spec.parameter_shapes() {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with(".norm.weight") {
            let zero = name.contains(".blocks.") && name.ends_with(".conv2.norm.weight");
            vec![if zero { 0.0 } else { 1.0 }; n]
        } else if name.ends_with(".weight") && shape.len() == 5 {
            // PyTorch's fan_in is size(1) * receptive field, for Conv3d and ConvTranspose3d alike.
            let fan_in = shape[1] * shape[2] * shape[3] * shape[4];
            let std = gain / (fan_in as f64).sqrt();
            let normal = Normal::new(0.0, std).with_context(|| format!("std of {name}"))?;
            (0..n).map(|_| normal.sample(&mut rng) as f32).collect()
        } else {
            vec![0.0; n]
        };
        let t = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)
            .with_context(|| format!("cannot build tensor {name}"))?;
        out.insert(name, t);
    }
    Ok(out)
}

/// `clopa-model init`: writes a model folder with `meta` ([`init_meta`]) and fresh weights of
/// `seed` to `out`.
pub fn init(meta: &ModelJson, seed: u64, out: &Path) -> anyhow::Result<()> {
    let spec = meta.spec()?;
    let tensors = init_tensors(&spec, seed)?;
    write_model_folder(out, meta, &tensors)
        .with_context(|| format!("cannot write the model folder {}", out.display()))?;
    tracing::info!(
        "wrote {} ({} parameters, features {:?}, blocks {:?})",
        out.display(),
        spec.num_parameters(),
        spec.features,
        spec.n_blocks
    );
    Ok(())
}

/// `clopa-model bake`: applies episode checkpoints in order to the model folder `dir` and writes
/// the result as a new model folder `out` (its weights get a new sha256; checkpoints trained on
/// `dir` do not apply to it). `model.json`'s `source` records the base and every checkpoint.
pub fn bake(dir: &Path, checkpoints: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    if checkpoints.is_empty() {
        bail!(
            "give at least one --checkpoint to bake into {}",
            dir.display()
        );
    }
    if out.exists() && same_path(dir, out) {
        bail!(
            "the output {} is the input model folder; bake into a new folder",
            out.display()
        );
    }
    let mut model = load_model_folder(dir)?;
    let chain = checkpoints
        .iter()
        .map(|p| read_episode_checkpoint(p))
        .collect::<Result<Vec<_>, _>>()?;
    // One training run and group in ascending episodes, as clopa-simulate requires: a repeated
    // or mixed chain would bake a model no training run produced.
    clopa_nn::check_chain(&chain)?;
    model.apply_checkpoints(checkpoints)?;
    let mut applied = Vec::new();
    for (p, ck) in checkpoints.iter().zip(chain) {
        applied.push(serde_json::json!({
            "path": p.display().to_string(),
            "sha256": sha256_file(p)?,
            "tensors": ck.tensors.len(),
            "metadata": ck.metadata,
        }));
    }
    let mut meta = model.meta.clone();
    meta.source = serde_json::json!({
        "tool": "clopa-model bake",
        "version": env!("CARGO_PKG_VERSION"),
        "base": {
            "path": dir.display().to_string(),
            "sha256": model.weights_sha256,
            "source": model.meta.source,
        },
        "checkpoints": applied,
    });
    write_model_folder(out, &meta, &model.tensors)
        .with_context(|| format!("cannot write the model folder {}", out.display()))?;
    tracing::info!(
        "wrote {} (sha256 {})",
        out.display(),
        sha256_file(&out.join(MODEL_WEIGHTS))?
    );
    Ok(())
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InitOptions {
        InitOptions {
            arch: ArchPreset::Tiny,
            stages: None,
            features: None,
            blocks: None,
            patch: 32,
            seed: 3,
        }
    }

    #[test]
    fn tiny_defaults_and_overrides() {
        assert_eq!(
            resolve_arch(&opts()).unwrap_or_default(),
            (vec![8, 16, 32, 64], vec![1, 2, 2, 2])
        );
        let o = InitOptions {
            stages: Some(3),
            ..opts()
        };
        assert_eq!(
            resolve_arch(&o).unwrap_or_default(),
            (vec![8, 16, 32], vec![1, 2, 2])
        );
        let o = InitOptions {
            features: Some(vec![4, 8]),
            ..opts()
        };
        assert_eq!(
            resolve_arch(&o).unwrap_or_default(),
            (vec![4, 8], vec![1, 2])
        );
        let o = InitOptions {
            features: Some(vec![4, 8]),
            stages: Some(3),
            ..opts()
        };
        assert!(resolve_arch(&o).is_err());
        let o = InitOptions {
            patch: 36,
            ..opts()
        };
        let err = init_meta(&o).expect_err("36 is not a multiple of 8");
        assert!(err.to_string().contains("36"), "{err}");
    }

    #[test]
    fn he_init_statistics_and_zeroed_block_norms() -> anyhow::Result<()> {
        let meta = init_meta(&opts())?;
        let spec = meta.spec()?;
        let t = init_tensors(&spec, 1)?;
        // 1-2-2-2 blocks: stage 1's second block conv2 norm starts at zero, its conv1 norm at one.
        let w: Vec<f32> = t["encoder.stages.1.blocks.1.conv2.norm.weight"].to_vec1()?;
        assert!(w.iter().all(|&x| x == 0.0));
        let w: Vec<f32> = t["encoder.stages.1.blocks.1.conv1.norm.weight"].to_vec1()?;
        assert!(w.iter().all(|&x| x == 1.0));
        let w: Vec<f32> = t["encoder.stem.convs.0.norm.weight"].to_vec1()?;
        assert!(w.iter().all(|&x| x == 1.0));
        // Stage 3 conv1: 64 x 32 x 27 weights, std sqrt(2 / (1 + 1e-4)) / sqrt(32 * 27).
        let w: Vec<f32> = t["encoder.stages.3.blocks.0.conv1.conv.weight"]
            .flatten_all()?
            .to_vec1()?;
        let n = w.len() as f64;
        let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
        let sd = (w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let expect = (2.0f64 / (1.0 + 1e-4)).sqrt() / (32.0f64 * 27.0).sqrt();
        assert!(mean.abs() < 0.01 * expect * 10.0, "mean {mean}");
        assert!((sd / expect - 1.0).abs() < 0.03, "sd {sd} vs {expect}");
        let b: Vec<f32> = t["encoder.stages.3.blocks.0.conv1.conv.bias"].to_vec1()?;
        assert!(b.iter().all(|&x| x == 0.0));
        // Same seed, same weights; another seed, others.
        let again = init_tensors(&spec, 1)?;
        let other = init_tensors(&spec, 2)?;
        let name = "decoder.seg_layers.2.weight";
        let v = |m: &BTreeMap<String, Tensor>| -> anyhow::Result<Vec<f32>> {
            Ok(m[name].flatten_all()?.to_vec1()?)
        };
        assert_eq!(v(&t)?, v(&again)?);
        assert_ne!(v(&t)?, v(&other)?);
        Ok(())
    }
}
