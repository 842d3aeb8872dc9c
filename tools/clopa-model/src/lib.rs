//! The work behind `clopa-model` (info, forward, init, bake) and `clopa-import`; the binaries
//! only parse arguments and call these functions. [`init::init`] writes a model folder with
//! fresh weights, [`init::bake`] folds episode checkpoints into a new model folder.
//!
//! ```no_run
//! use clopa_model::init::{ArchPreset, InitOptions, init, init_meta};
//! let opts = InitOptions { arch: ArchPreset::Tiny, stages: None, features: None, blocks: None, patch: 48, seed: 0 };
//! let meta = init_meta(&opts)?; // checks the options
//! init(&meta, opts.seed, std::path::Path::new("models/random-tiny"))?;
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod init;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use clopa_nn::import::{import_nnunet_folder, read_nnunet_folder};
use clopa_nn::{
    ParamCounts, UNetSpec, load_model_folder, param_counts, read_model_json, write_model_folder,
};

/// What kind of folder `info` looked at.
#[derive(Clone, Debug)]
pub enum FolderKind {
    /// A clopa model folder (`model.json`).
    Clopa,
    /// An nnInteractive / nnU-Net model folder (`plans.json`), with the configuration used.
    NnUnet { configuration: String },
}

/// The architecture of a clopa or nnU-Net model folder (no weights read).
pub fn folder_spec(path: &Path) -> anyhow::Result<(FolderKind, UNetSpec)> {
    if path.join(clopa_nn::model_folder::MODEL_JSON).is_file() {
        let meta = read_model_json(path)?;
        Ok((FolderKind::Clopa, meta.spec()?))
    } else if path.join("plans.json").is_file() {
        let f = read_nnunet_folder(path)?;
        let spec = f.spec()?;
        Ok((
            FolderKind::NnUnet {
                configuration: f.configuration,
            },
            spec,
        ))
    } else if !path.is_dir() {
        bail!("{} is not a folder", path.display())
    } else {
        bail!(
            "{} is neither a clopa model folder (no model.json) nor an nnU-Net model folder (no plans.json)",
            path.display()
        )
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `clopa-model info`: parameter counts as JSON or readable text.
pub fn info(path: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let (kind, spec) = folder_spec(path)?;
    let counts: ParamCounts = param_counts(&spec);
    if json {
        serde_json::to_writer_pretty(&mut *out, &counts)?;
        writeln!(out)?;
        return Ok(());
    }
    match &kind {
        FolderKind::Clopa => writeln!(out, "clopa model folder {}", path.display())?,
        FolderKind::NnUnet { configuration } => writeln!(
            out,
            "nnU-Net model folder {} (configuration {configuration})",
            path.display()
        )?,
    }
    writeln!(
        out,
        "network: ResidualEncoderUNet, {} stages, features {:?}, blocks {:?}, {} input channels, {} classes",
        spec.n_stages(),
        spec.features,
        spec.n_blocks,
        spec.input_channels,
        spec.num_classes
    )?;
    writeln!(out, "parameters: {}", thousands(counts.total))?;
    for g in clopa_nn::ParamGroup::ALL {
        let n = counts.groups[g.name()];
        let pct = 100.0 * n as f64 / counts.total.max(1) as f64;
        writeln!(out, "  {:<4} {:>13}  ({pct:.4} %)", g.name(), thousands(n))?;
    }
    Ok(())
}

/// Reads tensor `x` (f16 or f32) from a safetensors file as f32.
pub fn read_input(path: &Path) -> anyhow::Result<Tensor> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read the safetensors file {}", path.display()))?;
    let x = tensors.get("x").with_context(|| {
        format!(
            "{} has no tensor `x` (it has {:?})",
            path.display(),
            tensors.keys().collect::<Vec<_>>()
        )
    })?;
    let x = match x.dtype() {
        DType::F16 | DType::F32 => x.to_dtype(DType::F32)?,
        other => bail!(
            "{}: tensor `x` is {other:?}, expected f16 or f32",
            path.display()
        ),
    };
    // NaN or infinity would flow through every layer into logits that look like a result
    let v = x.flatten_all()?.to_vec1::<f32>()?;
    if let Some(i) = v.iter().position(|a| !a.is_finite()) {
        bail!(
            "{}: tensor `x` has the non-finite value {} at flat index {i} (of {})",
            path.display(),
            v[i],
            v.len()
        );
    }
    Ok(x)
}

/// `clopa-model forward`: logits of a model folder (plus optional episode checkpoints) on `x`.
pub fn forward(
    dir: &Path,
    checkpoints: &[PathBuf],
    input: &Path,
    output: &Path,
    device: &str,
) -> anyhow::Result<()> {
    let device = clopa_nn::device(device)?;
    let mut model = load_model_folder(dir)?;
    model.apply_checkpoints(checkpoints)?;
    let x = read_input(input)?.to_device(&device)?;
    tracing::info!("forward {:?} through {}", x.dims(), dir.display());
    let net = model.network(&device)?;
    let logits = net
        .forward(&x)
        .with_context(|| format!("input {}", input.display()))?;
    let logits = logits
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let mut map = BTreeMap::new();
    map.insert("logits".to_string(), logits);
    let bytes = safetensors::serialize(map, None).context("cannot serialise the logits")?;
    if clopa_cli::is_stdout(output) {
        std::io::stdout().lock().write_all(&bytes)?;
        return Ok(());
    }
    clopa_cli::write_atomic(output, |f| Ok(f.write_all(&bytes)?))
}

/// Refuses to write a model folder where one (or anything else) already is, unless `force`:
/// episode checkpoints name their base by the weights' sha256, so overwriting a base model
/// (`-o models/clopa-tiny` by mistake) silently orphans every checkpoint trained on it. Then
/// checks that the folder can be written, before any work.
pub fn check_new_model_folder(out: &Path, force: bool) -> anyhow::Result<()> {
    if out.is_dir() {
        let first = std::fs::read_dir(out)
            .with_context(|| format!("cannot list {}", out.display()))?
            .next()
            .transpose()
            .with_context(|| format!("cannot list {}", out.display()))?;
        if let Some(entry) = first {
            if !force {
                bail!(
                    "{} is not empty (it holds {}, ...): refusing to overwrite it, since episode \
                     checkpoints name their base model by its weights; write a new folder, or pass \
                     --force to overwrite the model in it",
                    out.display(),
                    entry.file_name().to_string_lossy()
                );
            }
            tracing::warn!(
                "overwriting the model (model.json, model.safetensors) in {} (--force)",
                out.display()
            );
        }
    }
    clopa_cli::check_output_dir(out)
}

/// `clopa-import`: an nnInteractive / nnU-Net model folder → a clopa model folder.
pub fn import(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let (meta, tensors) = import_nnunet_folder(src)?;
    tracing::info!(
        "read {} tensors ({} parameters) from {}",
        tensors.len(),
        thousands(meta.spec()?.num_parameters()),
        src.display()
    );
    write_model_folder(dst, &meta, &tensors)?;
    tracing::info!("wrote {}", dst.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(102_355_818), "102,355,818");
        assert_eq!(thousands(66), "66");
        assert_eq!(thousands(27_648), "27,648");
    }
}
