//! The clopa model folder (`model.json` + `model.safetensors`) and episode checkpoints.
//!
//! `model.json` holds the nnU-Net `architecture` block, `input_channels`, `num_classes`,
//! `patch_size`, the prompt settings and a `source` record; `model.safetensors` holds every
//! canonical parameter in f32. An episode checkpoint is a safetensors file with only the tuned
//! tensors and metadata `clopa.base_sha256` (sha256 of the base `model.safetensors`),
//! `clopa.group`, ...; applying it to another base model is an error.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::arch::{Architecture, UNetSpec};
use crate::error::{NnError, Result};
use crate::params::ParamStore;
use crate::unet::ResidualEncoderUNet;

/// File name of the model description.
pub const MODEL_JSON: &str = "model.json";
/// File name of the weights.
pub const MODEL_WEIGHTS: &str = "model.safetensors";
/// Value of `model.json`'s `format` key.
pub const MODEL_FORMAT: &str = "clopa-model/1";
/// Metadata key of an episode checkpoint naming its base model's sha256.
pub const META_BASE_SHA256: &str = "clopa.base_sha256";
/// Metadata key of an episode checkpoint naming the tuned group.
pub const META_GROUP: &str = "clopa.group";

/// How older prompts fade when a new one is added (nnInteractive changed this between versions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DecayScheme {
    /// nnInteractive 1.x: before a prompt is added, only the two channels of its type are
    /// multiplied by the decay (the fork CLoPA used).
    #[default]
    PerType,
    /// nnInteractive 2.x: a running intensity; every older prompt of every type decays.
    Running,
}

/// Contents of `model.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelJson {
    /// Always [`MODEL_FORMAT`].
    pub format: String,
    /// The nnU-Net architecture block, as in the plans.
    pub architecture: Architecture,
    /// Network input channels (1 image + 7 interaction channels for nnInteractive).
    pub input_channels: usize,
    /// Output classes (2).
    pub num_classes: usize,
    /// Training / inference patch size from the plans (voxels).
    pub patch_size: Vec<usize>,
    /// Point prompt radius in voxels.
    pub point_radius: usize,
    /// Interaction decay factor.
    pub interaction_decay: f64,
    /// Where `interaction_decay` came from: `file`, `default_missing_key` (0.98) or
    /// `default_bare_string` (0.9).
    pub interaction_decay_origin: String,
    /// How prompts decay.
    #[serde(default)]
    pub decay_scheme: DecayScheme,
    /// Provenance (import source folder, checkpoint, configuration, ...).
    #[serde(default)]
    pub source: Value,
}

impl ModelJson {
    /// The resolved network configuration.
    pub fn spec(&self) -> Result<UNetSpec> {
        UNetSpec::from_architecture(&self.architecture, self.input_channels, self.num_classes)
    }
}

/// A loaded clopa model folder.
#[derive(Clone, Debug)]
pub struct ModelFolder {
    /// The folder.
    pub dir: PathBuf,
    /// `model.json`.
    pub meta: ModelJson,
    /// The resolved architecture.
    pub spec: UNetSpec,
    /// Every canonical parameter, f32 on the CPU.
    pub tensors: BTreeMap<String, Tensor>,
    /// sha256 (hex) of `model.safetensors` as loaded (before any episode checkpoint).
    pub weights_sha256: String,
}

impl ModelFolder {
    /// All parameters frozen, ready for [`ParamStore::make_trainable`].
    pub fn param_store(&self) -> ParamStore {
        ParamStore::new(self.tensors.clone())
    }

    /// Builds the network with every parameter frozen (inference).
    pub fn network(&self, device: &Device) -> Result<ResidualEncoderUNet> {
        let store = self.param_store();
        ResidualEncoderUNet::new(&self.spec, &store.var_builder(device))
    }

    /// The current tensors of `group` by name: what an episode checkpoint of that group holds.
    pub fn group_tensors(&self, group: crate::ParamGroup) -> BTreeMap<String, Tensor> {
        group
            .names(&self.spec)
            .into_iter()
            .filter_map(|n| self.tensors.get(&n).map(|t| (n, t.clone())))
            .collect()
    }

    /// Applies episode checkpoints in order (each replaces the tensors it holds). The first must
    /// name this folder's `model.safetensors` as its base.
    pub fn apply_checkpoints(&mut self, paths: &[PathBuf]) -> Result<()> {
        for p in paths {
            let ck = read_episode_checkpoint(p)?;
            ck.check_base(&self.weights_sha256)?;
            self.check_group(&ck)?;
            apply_tensors(&mut self.tensors, &ck.tensors, p)?;
        }
        Ok(())
    }

    /// A checkpoint whose `clopa.group` names a group must hold exactly that group's tensors:
    /// otherwise its results would be reported under a method it is not (a `cn` checkpoint with
    /// only the norms is an `in` one). A group name clopa does not know is left alone.
    fn check_group(&self, ck: &EpisodeCheckpoint) -> Result<()> {
        let Some(group) = ck
            .metadata
            .get(META_GROUP)
            .and_then(|g| g.parse::<crate::ParamGroup>().ok())
        else {
            return Ok(());
        };
        let want: std::collections::BTreeSet<String> =
            group.names(&self.spec).into_iter().collect();
        let have: std::collections::BTreeSet<String> = ck.tensors.keys().cloned().collect();
        if want != have {
            let missing = want.difference(&have).count();
            let extra = have.difference(&want).count();
            let example = want
                .difference(&have)
                .chain(have.difference(&want))
                .next()
                .cloned()
                .unwrap_or_default();
            return Err(NnError::Checkpoint {
                path: ck.path.clone(),
                reason: format!(
                    "its metadata says group {group}, but it lacks {missing} of that group's {} \
                     tensors and has {extra} others (e.g. {example})",
                    want.len()
                ),
            });
        }
        Ok(())
    }
}

/// Replaces entries of `base` by `update`; unknown names or other shapes are errors naming `path`.
pub fn apply_tensors(
    base: &mut BTreeMap<String, Tensor>,
    update: &BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    for (name, t) in update {
        let cur = base.get(name).ok_or_else(|| NnError::UnknownTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
        })?;
        if cur.dims() != t.dims() {
            return Err(NnError::ShapeMismatch {
                path: path.to_path_buf(),
                tensor: name.clone(),
                expected: cur.dims().to_vec(),
                found: t.dims().to_vec(),
            });
        }
    }
    for (name, t) in update {
        base.insert(name.clone(), t.to_dtype(DType::F32)?);
    }
    Ok(())
}

/// An episode checkpoint: the tuned tensors and the `clopa.*` metadata.
#[derive(Clone, Debug)]
pub struct EpisodeCheckpoint {
    /// The file.
    pub path: PathBuf,
    /// Tuned tensors under canonical names.
    pub tensors: BTreeMap<String, Tensor>,
    /// All safetensors metadata.
    pub metadata: BTreeMap<String, String>,
}

impl EpisodeCheckpoint {
    /// Errors unless `clopa.base_sha256` equals `base_sha256`.
    pub fn check_base(&self, base_sha256: &str) -> Result<()> {
        let found = self.metadata.get(META_BASE_SHA256).ok_or_else(|| {
            NnError::checkpoint(
                &self.path,
                format!("metadata `{META_BASE_SHA256}` is missing"),
            )
        })?;
        if found != base_sha256 {
            return Err(NnError::BaseMismatch {
                path: self.path.clone(),
                expected: base_sha256.to_string(),
                found: found.clone(),
            });
        }
        Ok(())
    }
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| NnError::io("open", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| NnError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` atomically (temporary file + rename, see `clopa-fs`), so a reader
/// never sees a half-written file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    clopa_fs::write_bytes(path, bytes).map_err(|e| NnError::io(e.action, &e.path, e.source))
}

/// Serialises tensors (made contiguous f32 on the CPU) with optional metadata.
pub(crate) fn safetensors_bytes(
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<Vec<u8>> {
    let prepared = tensors
        .iter()
        .map(|(k, t)| {
            Ok((
                k.clone(),
                t.to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .contiguous()?,
            ))
        })
        .collect::<Result<Vec<(String, Tensor)>>>()?;
    let mut bytes = safetensors::serialize(prepared, metadata)
        .map_err(|e| NnError::checkpoint(path, format!("cannot serialise safetensors: {e}")))?;
    sort_header_metadata(&mut bytes, path)?;
    Ok(bytes)
}

/// safetensors serialises `__metadata__` from a `HashMap`, so two writes of the same tensors and
/// metadata would order its keys differently and get different bytes (and sha256, which is how
/// checkpoint chains name their base). Rewrites the header with the metadata keys sorted: the same
/// entries permuted, so the header keeps its length and every data offset stays valid.
fn sort_header_metadata(bytes: &mut [u8], path: &Path) -> Result<()> {
    let bad =
        |what: String| NnError::checkpoint(path, format!("cannot canonicalise the header: {what}"));
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .filter(|&n| 8 + n <= bytes.len())
        .ok_or_else(|| bad("no header".into()))?;
    let header = std::str::from_utf8(&bytes[8..8 + n]).map_err(|e| bad(e.to_string()))?;
    let mut value: serde_json::Value =
        serde_json::from_str(header.trim_end()).map_err(|e| bad(e.to_string()))?;
    if let Some(serde_json::Value::Object(meta)) = value.get_mut("__metadata__") {
        let sorted: BTreeMap<String, serde_json::Value> =
            std::mem::take(meta).into_iter().collect();
        *meta = sorted.into_iter().collect();
    }
    let text = serde_json::to_string(&value).map_err(|e| bad(e.to_string()))?;
    if text.len() > n {
        return Err(bad(format!("{} bytes instead of {n}", text.len())));
    }
    // safetensors pads the header with spaces to keep the data aligned.
    bytes[8..8 + text.len()].copy_from_slice(text.as_bytes());
    bytes[8 + text.len()..8 + n].fill(b' ');
    Ok(())
}

/// Tensors, metadata and sha256 (hex) of a safetensors file.
type SafetensorsContents = (BTreeMap<String, Tensor>, BTreeMap<String, String>, String);

/// Reads a safetensors file into tensors (f32 unless `keep_dtype`) plus its metadata and sha256.
pub(crate) fn read_safetensors(path: &Path, keep_dtype: bool) -> Result<SafetensorsContents> {
    let bytes = std::fs::read(path).map_err(|e| NnError::io("read", path, e))?;
    let sha = hex(&Sha256::digest(&bytes));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| NnError::checkpoint(path, format!("not a safetensors file: {e}")))?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let loaded = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| NnError::checkpoint(path, e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (k, t) in loaded {
        check_weight(path, &k, &t)?;
        let t = if keep_dtype {
            t
        } else {
            t.to_dtype(DType::F32)?
        };
        tensors.insert(k, t);
    }
    Ok((tensors, metadata, sha))
}

/// Refuses a tensor read from `path` as the weight `name` unless it is floating point and finite:
/// an integer tensor (a header whose dtype was edited reads the float bytes as integers) would
/// run the network on garbage, and NaN or Inf give NaN logits (every Dice 0) or a NaN loss that
/// training carries into every later checkpoint. Every reader of weights calls this.
pub(crate) fn check_weight(path: &Path, name: &str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(NnError::checkpoint(
            path,
            format!(
                "tensor `{name}` is {:?}: weights are floating point (F32, F16, BF16 or F64)",
                t.dtype()
            ),
        ));
    }
    if !all_finite(t)? {
        return Err(NnError::checkpoint(
            path,
            format!("tensor `{name}` holds non-finite values (NaN or infinite)"),
        ));
    }
    Ok(())
}

/// True when every value of `t` is finite (integer tensors always are).
pub fn all_finite(t: &Tensor) -> Result<bool> {
    if t.dtype().is_int() {
        return Ok(true);
    }
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(v.iter().all(|x| x.is_finite()))
}

/// Reads an episode checkpoint.
pub fn read_episode_checkpoint(path: &Path) -> Result<EpisodeCheckpoint> {
    let (tensors, metadata, _) = read_safetensors(path, false)?;
    Ok(EpisodeCheckpoint {
        path: path.to_path_buf(),
        tensors,
        metadata,
    })
}

/// Checks that `chain` is one chain of episode checkpoints: one training run of one group
/// (`clopa.run`, `clopa.group`), in ascending `clopa.episode`. A later checkpoint overrides an
/// earlier one's tensors and tools label results from the last one, so a mixed or reversed chain
/// would give one model under another's name. Keys a checkpoint lacks are not compared.
pub fn check_chain(chain: &[EpisodeCheckpoint]) -> Result<()> {
    let episode = |c: &EpisodeCheckpoint| {
        c.metadata
            .get("clopa.episode")
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    for pair in chain.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        for key in [META_GROUP, "clopa.run"] {
            if let (Some(x), Some(y)) = (a.metadata.get(key), b.metadata.get(key))
                && x != y
            {
                return Err(NnError::NotAChain {
                    path: b.path.clone(),
                    reason: format!(
                        "{key} {y} after {} with {key} {x}: not one chain; give the episodes of \
                         one training run and group, in order",
                        a.path.display()
                    ),
                });
            }
        }
        if let (Some(x), Some(y)) = (episode(a), episode(b))
            && x >= y
        {
            return Err(NnError::NotAChain {
                path: b.path.clone(),
                reason: format!(
                    "episode {y} after {} (episode {x}): give the episodes of a chain in \
                     ascending order",
                    a.path.display()
                ),
            });
        }
    }
    Ok(())
}

/// Writes an episode checkpoint atomically; `metadata` must include `clopa.base_sha256`.
pub fn write_episode_checkpoint(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    if !metadata.contains_key(META_BASE_SHA256) {
        return Err(NnError::checkpoint(
            path,
            format!("metadata `{META_BASE_SHA256}` is required"),
        ));
    }
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let bytes = safetensors_bytes(tensors, Some(meta), path)?;
    write_atomic(path, &bytes)
}

/// Reads only `model.json` of a clopa model folder (no weights).
pub fn read_model_json(dir: &Path) -> Result<ModelJson> {
    let path = dir.join(MODEL_JSON);
    let text = std::fs::read_to_string(&path).map_err(|e| NnError::io("read", &path, e))?;
    let meta: ModelJson = serde_json::from_str(&text)
        .map_err(|e| NnError::json(&path, format!("not a valid model.json: {e}")))?;
    if meta.format != MODEL_FORMAT {
        return Err(NnError::json(
            &path,
            format!("format is `{}`, expected `{MODEL_FORMAT}`", meta.format),
        ));
    }
    meta.spec()
        .map_err(|e| NnError::json(&path, e.to_string()))?;
    let max = clopa_config::MAX_PATCH;
    if meta.patch_size.iter().any(|&p| p == 0 || p > max) {
        return Err(NnError::json(
            &path,
            format!(
                "patch_size {:?}: each side must lie in 1..={max}",
                meta.patch_size
            ),
        ));
    }
    Ok(meta)
}

/// Checks that `tensors` hold exactly the canonical parameters of `spec` with the right shapes.
pub fn check_tensors(
    spec: &UNetSpec,
    tensors: &BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    let shapes = spec.parameter_shapes();
    for (name, shape) in &shapes {
        let t = tensors.get(name).ok_or_else(|| NnError::MissingTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            expected: shape.clone(),
        })?;
        if t.dims() != shape.as_slice() {
            return Err(NnError::ShapeMismatch {
                path: path.to_path_buf(),
                tensor: name.clone(),
                expected: shape.clone(),
                found: t.dims().to_vec(),
            });
        }
    }
    if tensors.len() != shapes.len() {
        let known: std::collections::HashSet<&str> =
            shapes.iter().map(|(n, _)| n.as_str()).collect();
        if let Some(extra) = tensors.keys().find(|k| !known.contains(k.as_str())) {
            return Err(NnError::UnknownTensor {
                path: path.to_path_buf(),
                tensor: extra.clone(),
            });
        }
    }
    Ok(())
}

/// Loads a clopa model folder, checking every tensor against the architecture.
pub fn load_model_folder(dir: &Path) -> Result<ModelFolder> {
    if !dir.is_dir() {
        return Err(NnError::folder(dir, "not a folder"));
    }
    let meta = read_model_json(dir)?;
    let spec = meta.spec()?;
    let wpath = dir.join(MODEL_WEIGHTS);
    let (tensors, _, sha) = read_safetensors(&wpath, false)?;
    check_tensors(&spec, &tensors, &wpath)?;
    Ok(ModelFolder {
        dir: dir.to_path_buf(),
        meta,
        spec,
        tensors,
        weights_sha256: sha,
    })
}

/// Writes a clopa model folder: weights first, `model.json` last, each atomically, so a folder
/// with a `model.json` always has complete weights.
pub fn write_model_folder(
    dir: &Path,
    meta: &ModelJson,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<()> {
    let spec = meta.spec()?;
    let wpath = dir.join(MODEL_WEIGHTS);
    check_tensors(&spec, tensors, &wpath)?;
    std::fs::create_dir_all(dir).map_err(|e| NnError::io("create the folder", dir, e))?;
    let bytes = safetensors_bytes(tensors, None, &wpath)?;
    write_atomic(&wpath, &bytes)?;
    let jpath = dir.join(MODEL_JSON);
    let mut text =
        serde_json::to_string_pretty(meta).map_err(|e| NnError::json(&jpath, e.to_string()))?;
    text.push('\n');
    write_atomic(&jpath, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (ModelJson, BTreeMap<String, Tensor>) {
        let meta = ModelJson {
            format: MODEL_FORMAT.into(),
            architecture: Architecture::resenc(&[2, 4], &[1, 1]),
            input_channels: 3,
            num_classes: 2,
            patch_size: vec![8, 8, 8],
            point_radius: 4,
            interaction_decay: 0.98,
            interaction_decay_origin: "default_missing_key".into(),
            decay_scheme: DecayScheme::PerType,
            source: Value::Null,
        };
        let spec = meta.spec().expect("spec");
        let tensors = spec
            .parameter_shapes()
            .into_iter()
            .enumerate()
            .map(|(i, (n, s))| (n, Tensor::full(i as f32, s, &Device::Cpu).expect("t")))
            .collect();
        (meta, tensors)
    }

    #[test]
    fn folder_round_trip_and_checkpoints() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| NnError::io("create", "tmp", e))?;
        let (meta, tensors) = tiny();
        write_model_folder(dir.path(), &meta, &tensors)?;
        let mut mf = load_model_folder(dir.path())?;
        assert_eq!(mf.meta, meta);
        assert_eq!(
            mf.weights_sha256,
            sha256_file(&dir.path().join(MODEL_WEIGHTS))?
        );
        let name = "encoder.stem.convs.0.norm.bias".to_string();
        // every tensor of group `in`, as clopa-train-episode writes them
        let mut upd = mf.group_tensors(crate::ParamGroup::In);
        upd.insert(name.clone(), Tensor::new(&[7f32, 8.], &Device::Cpu)?);
        let mut md = BTreeMap::new();
        md.insert(META_BASE_SHA256.to_string(), mf.weights_sha256.clone());
        md.insert(META_GROUP.to_string(), "in".to_string());
        let ck = dir.path().join("ep1.safetensors");
        write_episode_checkpoint(&ck, &upd, &md)?;
        mf.apply_checkpoints(std::slice::from_ref(&ck))?;
        assert_eq!(mf.tensors[&name].to_vec1::<f32>()?, vec![7., 8.]);

        // Labelled `cn` but holding `in`'s tensors: it would be reported as the wrong method.
        md.insert(META_GROUP.to_string(), "cn".to_string());
        let wrong = dir.path().join("wrong.safetensors");
        write_episode_checkpoint(&wrong, &upd, &md)?;
        let err = mf
            .apply_checkpoints(std::slice::from_ref(&wrong))
            .expect_err("group mismatch");
        assert!(
            err.to_string().contains("wrong.safetensors") && err.to_string().contains("group cn"),
            "{err}"
        );
        md.insert(META_GROUP.to_string(), "in".to_string());

        // Wrong base model.
        md.insert(META_BASE_SHA256.to_string(), "0".repeat(64));
        let bad = dir.path().join("bad.safetensors");
        write_episode_checkpoint(&bad, &upd, &md)?;
        let err = mf
            .apply_checkpoints(std::slice::from_ref(&bad))
            .expect_err("base mismatch");
        assert!(err.to_string().contains("bad.safetensors"), "{err}");

        // Unknown tensor name (under a group name clopa does not know, which is not checked).
        md.insert(META_BASE_SHA256.to_string(), mf.weights_sha256.clone());
        md.insert(META_GROUP.to_string(), "custom".to_string());
        upd.insert("encoder.nope".into(), Tensor::new(&[1f32], &Device::Cpu)?);
        write_episode_checkpoint(&bad, &upd, &md)?;
        let err = mf.apply_checkpoints(&[bad]).expect_err("unknown");
        assert!(err.to_string().contains("encoder.nope"), "{err}");

        // Non-finite weights (a diverged training, a corrupted file): refused where read,
        // naming the file and the tensor.
        for v in [f32::NAN, f32::INFINITY] {
            let mut upd = BTreeMap::new();
            upd.insert(name.clone(), Tensor::new(&[1f32, v], &Device::Cpu)?);
            let nan = dir.path().join("nan.safetensors");
            write_episode_checkpoint(&nan, &upd, &md)?;
            let err = read_episode_checkpoint(&nan).expect_err("non-finite");
            let msg = err.to_string();
            assert!(
                msg.contains("nan.safetensors")
                    && msg.contains(&name)
                    && msg.contains("non-finite"),
                "{msg}"
            );
        }
        assert!(all_finite(&Tensor::new(&[1u32, 2], &Device::Cpu)?)?);

        // An integer tensor is no weight, even where its values would convert (written by
        // candle as it is: our writer stores f32).
        let upd = HashMap::from([(name.clone(), Tensor::new(&[1i64, 2], &Device::Cpu)?)]);
        let int = dir.path().join("int.safetensors");
        candle_core::safetensors::save(&upd, &int)?;
        let msg = read_episode_checkpoint(&int)
            .expect_err("integer weights")
            .to_string();
        assert!(
            msg.contains("int.safetensors") && msg.contains(&name) && msg.contains("I64"),
            "{msg}"
        );
        Ok(())
    }

    #[test]
    fn missing_weight_is_named() {
        let (meta, mut tensors) = tiny();
        tensors.remove("decoder.transpconvs.0.bias");
        let dir = tempfile::tempdir().expect("tmp");
        let err = write_model_folder(dir.path(), &meta, &tensors).expect_err("missing");
        assert!(
            err.to_string().contains("decoder.transpconvs.0.bias"),
            "{err}"
        );
    }

    #[test]
    fn same_tensors_and_metadata_give_the_same_bytes() {
        let t = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .and_then(|t| t.reshape((2, 3)))
            .expect("tensor");
        let tensors = BTreeMap::from([("a.weight".to_string(), t.clone()), ("b".to_string(), t)]);
        // Each HashMap has its own random hash keys, so the two iterate in different orders.
        let meta = || {
            (0..16)
                .map(|i| (format!("clopa.key{i}"), format!("value {i}")))
                .collect::<HashMap<_, _>>()
        };
        let path = Path::new("x.safetensors");
        let first = safetensors_bytes(&tensors, Some(meta()), path).expect("bytes");
        for _ in 0..4 {
            assert_eq!(
                first,
                safetensors_bytes(&tensors, Some(meta()), path).expect("bytes")
            );
        }
        let (_, read) = safetensors::SafeTensors::read_metadata(&first).expect("valid file");
        assert_eq!(read.metadata().as_ref().map(|m| m.len()), Some(16));
        let loaded = safetensors::SafeTensors::deserialize(&first).expect("valid file");
        assert_eq!(loaded.tensor("b").expect("b").shape(), &[2, 3]);
    }
}
