//! Import of an nnInteractive / nnU-Net model folder, without Python.
//!
//! Layout (as released: `nnInteractive_v1.0/`): `plans.json`, `dataset.json`,
//! `inference_session_class.json`, `fold_0/checkpoint_final.pth`. The checkpoint is a
//! `torch.save` zip whose `network_weights` entry is the 956-key state_dict; we read it with
//! candle's pickle reader (globals such as numpy scalars are recorded, never executed) and fetch
//! only the 264 canonical tensors, each shape-checked against the architecture from the plans.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, PthTensors, Stack};
use candle_core::{DType, Tensor};
use serde_json::Value;

use crate::arch::{Architecture, UNetSpec, is_alias_key};
use crate::error::{NnError, Result};
use crate::model_folder::{DecayScheme, MODEL_FORMAT, ModelJson, sha256_file};

/// Interaction channels nnInteractive appends to the image channels.
pub const INTERACTION_CHANNELS: usize = 7;
/// nnInteractive always trains a 2-class (background / foreground) network.
pub const NNINTERACTIVE_CLASSES: usize = 2;
/// Decay when `inference_session_class.json` is a dict without `interaction_decay` (nnInteractive ≥ 1.1).
pub const DECAY_MISSING_KEY: f64 = 0.98;
/// Decay when `inference_session_class.json` is a bare class-name string.
pub const DECAY_BARE_STRING: f64 = 0.9;
/// Point radius when the session json does not give one (nnInteractive's released value).
pub const DEFAULT_POINT_RADIUS: usize = 4;

/// What a model folder says, without the weights.
#[derive(Clone, Debug)]
pub struct NnUnetFolder {
    /// The folder.
    pub dir: PathBuf,
    /// The plans configuration used.
    pub configuration: String,
    /// Why that configuration: `checkpoint init_args`, `only configuration`, `3d_fullres`.
    pub configuration_origin: String,
    /// The architecture block of that configuration.
    pub architecture: Architecture,
    /// Network input channels (image channels + 7).
    pub input_channels: usize,
    /// Classes (2).
    pub num_classes: usize,
    /// `patch_size` of the configuration.
    pub patch_size: Vec<usize>,
    /// Point radius (voxels).
    pub point_radius: usize,
    /// Interaction decay.
    pub interaction_decay: f64,
    /// Where the decay came from (`file`, `default_missing_key`, `default_bare_string`).
    pub interaction_decay_origin: String,
    /// The checkpoint, if present.
    pub checkpoint: Option<PathBuf>,
    /// `trainer_name` from the checkpoint, if read.
    pub trainer_name: Option<String>,
    /// `dataset_name` / `plans_name` from the plans.
    pub dataset_name: Option<String>,
    /// `plans_name` from the plans.
    pub plans_name: Option<String>,
}

impl NnUnetFolder {
    /// The resolved architecture.
    pub fn spec(&self) -> Result<UNetSpec> {
        UNetSpec::from_architecture(&self.architecture, self.input_channels, self.num_classes)
            .map_err(|e| NnError::json(self.dir.join("plans.json"), e.to_string()))
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| NnError::io("read", path, e))?;
    serde_json::from_str(&text).map_err(|e| NnError::json(path, format!("not valid JSON: {e}")))
}

/// The checkpoint of fold 0, or of the only `fold_*` folder that has one.
fn find_checkpoint(dir: &Path) -> Option<PathBuf> {
    let f0 = dir.join("fold_0").join("checkpoint_final.pth");
    if f0.is_file() {
        return Some(f0);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("fold_"))
        .map(|e| e.path().join("checkpoint_final.pth"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.into_iter().next()
}

/// A `torch.save` file as the zip archive it is.
fn open_zip(path: &Path) -> Result<zip::ZipArchive<std::io::BufReader<std::fs::File>>> {
    let file = std::fs::File::open(path).map_err(|e| NnError::io("open", path, e))?;
    zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| NnError::checkpoint(path, format!("not a torch.save zip archive: {e}")))
}

/// `trainer_name` and `init_args.configuration` from a checkpoint's pickle (no tensor data read).
pub fn read_checkpoint_info(path: &Path) -> Result<(Option<String>, Option<String>)> {
    let mut zip = open_zip(path)?;
    let name = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
        .ok_or_else(|| NnError::checkpoint(path, "no data.pkl in the archive"))?;
    let entry = zip
        .by_name(&name)
        .map_err(|e| NnError::checkpoint(path, format!("cannot open {name}: {e}")))?;
    let mut reader = std::io::BufReader::new(entry);
    let mut stack = Stack::empty();
    stack
        .read_loop(&mut reader)
        .map_err(|e| NnError::checkpoint(path, format!("cannot parse {name}: {e}")))?;
    let obj = stack
        .finalize()
        .map_err(|e| NnError::checkpoint(path, format!("cannot parse {name}: {e}")))?;
    let lookup = |o: &Object, key: &str| -> Option<Object> {
        match o {
            Object::Dict(kv) => kv
                .iter()
                .find(|(k, _)| matches!(k, Object::Unicode(s) if s == key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    };
    let unicode = |o: Option<Object>| match o {
        Some(Object::Unicode(s)) => Some(s),
        _ => None,
    };
    let trainer = unicode(lookup(&obj, "trainer_name"));
    let config = unicode(lookup(&obj, "init_args").and_then(|ia| lookup(&ia, "configuration")));
    Ok((trainer, config))
}

/// The configuration dict with nnU-Net's `inherits_from` resolved (parent keys, then own keys).
fn resolve_configuration(
    configs: &serde_json::Map<String, Value>,
    name: &str,
    plans: &Path,
    depth: usize,
) -> Result<Value> {
    let c = configs.get(name).ok_or_else(|| {
        NnError::json(
            plans,
            format!("configuration `{name}` is not in `configurations`"),
        )
    })?;
    let mut out = match c.get("inherits_from").and_then(Value::as_str) {
        Some(parent) if depth < 16 => resolve_configuration(configs, parent, plans, depth + 1)?,
        Some(parent) => {
            return Err(NnError::json(
                plans,
                format!("`inherits_from` cycle at `{parent}`"),
            ));
        }
        None => Value::Object(Default::default()),
    };
    if let (Value::Object(o), Value::Object(own)) = (&mut out, c) {
        for (k, v) in own {
            o.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

/// Reads `plans.json`, `dataset.json`, `inference_session_class.json` and (if present) the
/// checkpoint's pickle header of an nnInteractive / nnU-Net model folder.
pub fn read_nnunet_folder(dir: &Path) -> Result<NnUnetFolder> {
    if !dir.is_dir() {
        return Err(NnError::folder(dir, "not a folder"));
    }
    let plans_path = dir.join("plans.json");
    if !plans_path.is_file() {
        return Err(NnError::folder(dir, "plans.json is missing"));
    }
    let plans = read_json(&plans_path)?;
    let checkpoint = find_checkpoint(dir);
    let (trainer_name, ck_config) = match &checkpoint {
        Some(p) => read_checkpoint_info(p)?,
        None => (None, None),
    };
    let configs = plans
        .get("configurations")
        .and_then(Value::as_object)
        .ok_or_else(|| NnError::json(&plans_path, "no `configurations` object"))?;
    let (configuration, configuration_origin) = if let Some(c) = ck_config {
        (c, "checkpoint init_args".to_string())
    } else if configs.len() == 1 {
        (
            configs.keys().next().cloned().unwrap_or_default(),
            "only configuration".to_string(),
        )
    } else {
        let fullres: Vec<&String> = configs
            .keys()
            .filter(|k| k.starts_with("3d_fullres"))
            .collect();
        match fullres.as_slice() {
            [one] => ((*one).clone(), "3d_fullres".to_string()),
            _ if configs.contains_key("3d_fullres") => {
                ("3d_fullres".to_string(), "3d_fullres".to_string())
            }
            _ => {
                return Err(NnError::json(
                    &plans_path,
                    format!(
                        "cannot choose a configuration among {:?} (no checkpoint naming one)",
                        configs.keys().collect::<Vec<_>>()
                    ),
                ));
            }
        }
    };
    let config = resolve_configuration(configs, &configuration, &plans_path, 0)?;
    let arch_v = config.get("architecture").ok_or_else(|| {
        NnError::json(&plans_path, format!("configuration `{configuration}` has no `architecture` block (nnU-Net < 2.4 plans are not supported)"))
    })?;
    let architecture: Architecture = serde_json::from_value(arch_v.clone()).map_err(|e| {
        NnError::json(
            &plans_path,
            format!("architecture of `{configuration}`: {e}"),
        )
    })?;
    let patch_size = config
        .get("patch_size")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|x| x as usize)
                .collect::<Vec<_>>()
        })
        .ok_or_else(|| {
            NnError::json(
                &plans_path,
                format!("configuration `{configuration}` has no `patch_size`"),
            )
        })?;

    let ds_path = dir.join("dataset.json");
    if !ds_path.is_file() {
        return Err(NnError::folder(dir, "dataset.json is missing"));
    }
    let ds = read_json(&ds_path)?;
    let channels = ds
        .get("channel_names")
        .or_else(|| ds.get("modality"))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            NnError::json(
                &ds_path,
                "neither `channel_names` nor `modality` is an object",
            )
        })?;
    if channels.len() != 1 {
        return Err(NnError::json(
            &ds_path,
            format!(
                "nnInteractive needs exactly 1 image channel, the dataset lists {}",
                channels.len()
            ),
        ));
    }

    let sess_path = dir.join("inference_session_class.json");
    let (point_radius, interaction_decay, interaction_decay_origin) = if sess_path.is_file() {
        match read_json(&sess_path)? {
            Value::String(_) => (
                DEFAULT_POINT_RADIUS,
                DECAY_BARE_STRING,
                "default_bare_string",
            ),
            Value::Object(o) => {
                let radius = match o.get("point_radius") {
                    None => DEFAULT_POINT_RADIUS,
                    Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                        NnError::json(
                            &sess_path,
                            format!("point_radius must be an integer, got {v}"),
                        )
                    })?,
                };
                match o.get("interaction_decay") {
                    None => (radius, DECAY_MISSING_KEY, "default_missing_key"),
                    Some(v) => {
                        let d = v
                            .as_f64()
                            .filter(|d| *d > 0.0 && *d <= 1.0)
                            .ok_or_else(|| {
                                NnError::json(
                                    &sess_path,
                                    format!("interaction_decay must be in (0, 1], got {v}"),
                                )
                            })?;
                        (radius, d, "file")
                    }
                }
            }
            other => {
                return Err(NnError::json(
                    &sess_path,
                    format!("expected an object or a string, got {other}"),
                ));
            }
        }
    } else {
        return Err(NnError::folder(
            dir,
            "inference_session_class.json is missing",
        ));
    };

    let folder = NnUnetFolder {
        dir: dir.to_path_buf(),
        configuration,
        configuration_origin,
        architecture,
        input_channels: 1 + INTERACTION_CHANNELS,
        num_classes: NNINTERACTIVE_CLASSES,
        patch_size,
        point_radius,
        interaction_decay,
        interaction_decay_origin: interaction_decay_origin.to_string(),
        checkpoint,
        trainer_name,
        dataset_name: plans
            .get("dataset_name")
            .and_then(Value::as_str)
            .map(str::to_string),
        plans_name: plans
            .get("plans_name")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    folder.spec()?;
    Ok(folder)
}

/// Reads every entry of a zip archive to its end, which is when the zip crate compares the entry's
/// CRC-32: candle's `PthTensors` reads the tensor bytes at their offsets without it, so a damaged
/// checkpoint would import as wrong weights without an error. (~1 s for nnInteractive's 400 MB.)
fn verify_zip(path: &Path) -> Result<()> {
    let mut zip = open_zip(path)?;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| NnError::checkpoint(path, format!("cannot open entry {i}: {e}")))?;
        let name = entry
            .name()
            .map_or_else(|_| format!("#{i}"), |n| n.into_owned());
        std::io::copy(&mut entry, &mut std::io::sink()).map_err(|e| {
            NnError::checkpoint(path, format!("the archive entry {name} is damaged: {e}"))
        })?;
    }
    Ok(())
}

/// Reads the canonical parameters of `spec` from a `.pth` checkpoint's `network_weights`:
/// missing tensors, other shapes and unknown non-alias keys are errors naming the file.
pub fn read_pth_weights(path: &Path, spec: &UNetSpec) -> Result<BTreeMap<String, Tensor>> {
    verify_zip(path)?;
    let pth = PthTensors::new(path, Some("network_weights"))
        .map_err(|e| NnError::checkpoint(path, format!("cannot read `network_weights`: {e}")))?;
    let infos = pth.tensor_infos();
    if infos.is_empty() {
        return Err(NnError::checkpoint(
            path,
            "`network_weights` holds no tensors",
        ));
    }
    let shapes = spec.parameter_shapes();
    let known: std::collections::HashSet<&str> = shapes.iter().map(|(n, _)| n.as_str()).collect();
    let mut unknown: Vec<&String> = infos
        .keys()
        .filter(|k| !known.contains(k.as_str()) && !is_alias_key(k))
        .collect();
    unknown.sort();
    if let Some(k) = unknown.first() {
        return Err(NnError::UnknownTensor {
            path: path.to_path_buf(),
            tensor: (*k).clone(),
        });
    }
    for (name, shape) in &shapes {
        let info = infos.get(name).ok_or_else(|| NnError::MissingTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            expected: shape.clone(),
        })?;
        if info.layout.dims() != shape.as_slice() {
            return Err(NnError::ShapeMismatch {
                path: path.to_path_buf(),
                tensor: name.clone(),
                expected: shape.clone(),
                found: info.layout.dims().to_vec(),
            });
        }
    }
    let mut out = BTreeMap::new();
    for (name, _) in &shapes {
        let t = pth
            .get(name)
            .map_err(|e| NnError::checkpoint(path, format!("tensor `{name}`: {e}")))?
            .ok_or_else(|| NnError::checkpoint(path, format!("tensor `{name}` vanished")))?;
        // Refused here rather than written into a model folder every later tool refuses.
        crate::model_folder::check_weight(path, name, &t)?;
        out.insert(name.clone(), t.to_dtype(DType::F32)?.contiguous()?);
    }
    Ok(out)
}

/// Imports a model folder: its description as a [`ModelJson`] (decay scheme `per_type`, the
/// nnInteractive 1.x behaviour CLoPA used) and the canonical f32 weights.
pub fn import_nnunet_folder(dir: &Path) -> Result<(ModelJson, BTreeMap<String, Tensor>)> {
    let folder = read_nnunet_folder(dir)?;
    let ck = folder
        .checkpoint
        .clone()
        .ok_or_else(|| NnError::folder(dir, "no fold_*/checkpoint_final.pth"))?;
    let spec = folder.spec()?;
    let tensors = read_pth_weights(&ck, &spec)?;
    let rel = ck
        .strip_prefix(dir)
        .unwrap_or(&ck)
        .to_string_lossy()
        .into_owned();
    let source = serde_json::json!({
        "kind": "nnunet_model_folder",
        "folder": std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).to_string_lossy(),
        "checkpoint": rel,
        "checkpoint_sha256": sha256_file(&ck)?,
        "configuration": folder.configuration,
        "configuration_origin": folder.configuration_origin,
        "dataset_name": folder.dataset_name,
        "plans_name": folder.plans_name,
        "trainer_name": folder.trainer_name,
        "importer": concat!("clopa-nn ", env!("CARGO_PKG_VERSION")),
    });
    let meta = ModelJson {
        format: MODEL_FORMAT.to_string(),
        architecture: folder.architecture.clone(),
        input_channels: folder.input_channels,
        num_classes: folder.num_classes,
        patch_size: folder.patch_size.clone(),
        point_radius: folder.point_radius,
        interaction_decay: folder.interaction_decay,
        interaction_decay_origin: folder.interaction_decay_origin.clone(),
        decay_scheme: DecayScheme::PerType,
        source,
    };
    Ok((meta, tensors))
}
