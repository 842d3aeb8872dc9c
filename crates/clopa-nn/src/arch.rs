//! The nnU-Net `architecture` block and its resolved form.
//!
//! nnU-Net plans describe a network as `{"network_class_name": ..., "arch_kwargs": {...}}`, the
//! keyword arguments of the dynamic-network-architectures constructor. [`Architecture`] keeps that
//! block verbatim (so it can be written back unchanged into `model.json`); [`UNetSpec`] is the
//! validated, resolved form the network is built from. [`UNetSpec::parameter_shapes`] is the one
//! place that knows every canonical parameter name and shape: the network, the parameter groups
//! and the importer all go through it, so they cannot disagree.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{NnError, Result};

/// The only network class we build (nnInteractive's).
pub const RESENC_UNET_CLASS: &str =
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet";

/// The nnU-Net `architecture` block, kept as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    /// Fully qualified Python class name.
    pub network_class_name: String,
    /// Constructor keyword arguments (without input channels / classes / deep supervision).
    pub arch_kwargs: Value,
    /// nnU-Net's list of kwargs that name Python classes; kept for round trips.
    #[serde(
        rename = "_kw_requires_import",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kw_requires_import: Option<Value>,
}

/// A validated `ResidualEncoderUNet` configuration (cubic kernels and strides only).
#[derive(Clone, Debug, PartialEq)]
pub struct UNetSpec {
    /// Input channels (nnInteractive: 1 image + 7 interaction channels = 8).
    pub input_channels: usize,
    /// Output classes (nnInteractive: 2).
    pub num_classes: usize,
    /// Output channels of each encoder stage.
    pub features: Vec<usize>,
    /// Output channels of the stem (dynamic-network-architectures default: `features[0]`).
    pub stem_channels: usize,
    /// Cubic kernel size of each stage (1 or 3).
    pub kernel_sizes: Vec<usize>,
    /// Cubic stride of each stage's first block (1 or 2).
    pub strides: Vec<usize>,
    /// Residual blocks (BasicBlockD) per encoder stage.
    pub n_blocks: Vec<usize>,
    /// Convolutions per decoder stage (`n_stages - 1` entries, lowest resolution first).
    pub n_conv_decoder: Vec<usize>,
    /// Whether the encoder/decoder convolutions and transposed convolutions carry a bias.
    pub conv_bias: bool,
    /// InstanceNorm epsilon.
    pub norm_eps: f64,
    /// LeakyReLU negative slope (0 for ReLU).
    pub negative_slope: f64,
}

fn arch_err(msg: impl Into<String>) -> NnError {
    NnError::Arch(msg.into())
}

fn get<'a>(kw: &'a Value, key: &str) -> Result<&'a Value> {
    kw.get(key)
        .ok_or_else(|| arch_err(format!("arch_kwargs lacks `{key}`")))
}

fn as_usize(v: &Value, what: &str) -> Result<usize> {
    v.as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| arch_err(format!("`{what}` must be a non-negative integer, got {v}")))
}

/// A per-stage list, or a single integer repeated `n` times (both spellings are legal in plans).
fn per_stage(kw: &Value, key: &str, n: usize) -> Result<Vec<usize>> {
    let v = get(kw, key)?;
    let out = match v {
        Value::Array(items) => items
            .iter()
            .map(|x| as_usize(x, key))
            .collect::<Result<Vec<_>>>()?,
        _ => vec![as_usize(v, key)?; n],
    };
    if out.len() != n {
        return Err(arch_err(format!(
            "`{key}` has {} entries, expected {n}: {v}",
            out.len()
        )));
    }
    Ok(out)
}

/// Kernel sizes / strides: each entry an integer or a per-axis list; only cubic values are supported
/// because the 3D ops take one size for all three axes.
fn per_stage_cubic(kw: &Value, key: &str, n: usize) -> Result<Vec<usize>> {
    let v = get(kw, key)?;
    let items = match v {
        Value::Array(items) => items.clone(),
        _ => vec![v.clone(); n],
    };
    if items.len() != n {
        return Err(arch_err(format!(
            "`{key}` has {} entries, expected {n}: {v}",
            items.len()
        )));
    }
    items
        .iter()
        .map(|item| match item {
            Value::Array(axes) => {
                let axes = axes.iter().map(|a| as_usize(a, key)).collect::<Result<Vec<_>>>()?;
                match axes.as_slice() {
                    [a, b, c] if a == b && b == c => Ok(*a),
                    _ => Err(arch_err(format!(
                        "`{key}` entry {item} is not cubic; only equal sizes on all 3 axes are supported"
                    ))),
                }
            }
            _ => as_usize(item, key),
        })
        .collect()
}

fn class_is(v: &Value, suffixes: &[&str]) -> bool {
    v.as_str().is_some_and(|s| {
        suffixes
            .iter()
            .any(|suf| s == *suf || s.ends_with(&format!(".{suf}")))
    })
}

impl Architecture {
    /// The nnInteractive v1.0 architecture block (ResEnc-L, 6 stages, 32..320 features).
    pub fn nninteractive_v1() -> Self {
        Self::resenc(&[32, 64, 128, 256, 320, 320], &[1, 3, 4, 6, 6, 6])
    }

    /// A ResidualEncoderUNet block with nnInteractive's settings and the given widths / blocks
    /// (kernel 3, strides 1 then 2, one decoder conv per stage).
    pub fn resenc(features: &[usize], n_blocks: &[usize]) -> Self {
        let n = features.len();
        let strides: Vec<Value> = (0..n)
            .map(|i| {
                if i == 0 {
                    serde_json::json!([1, 1, 1])
                } else {
                    serde_json::json!([2, 2, 2])
                }
            })
            .collect();
        Architecture {
            network_class_name: RESENC_UNET_CLASS.to_string(),
            arch_kwargs: serde_json::json!({
                "n_stages": n,
                "features_per_stage": features,
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": vec![[3, 3, 3]; n],
                "strides": strides,
                "n_blocks_per_stage": n_blocks,
                "n_conv_per_stage_decoder": vec![1; n.saturating_sub(1)],
                "conv_bias": true,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-5, "affine": true},
                "dropout_op": null,
                "dropout_op_kwargs": null,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": true},
            }),
            kw_requires_import: Some(serde_json::json!([
                "conv_op",
                "norm_op",
                "dropout_op",
                "nonlin"
            ])),
        }
    }
}

impl UNetSpec {
    /// Validates an architecture block into a spec; anything we cannot build exactly as
    /// dynamic-network-architectures does (other classes, blocks, norms, dropout, anisotropic
    /// kernels) is an error rather than an approximation.
    pub fn from_architecture(
        arch: &Architecture,
        input_channels: usize,
        num_classes: usize,
    ) -> Result<Self> {
        let class = arch.network_class_name.as_str();
        if class != RESENC_UNET_CLASS && class != "ResidualEncoderUNet" {
            return Err(arch_err(format!(
                "network_class_name `{class}` is not supported (only {RESENC_UNET_CLASS})"
            )));
        }
        let kw = &arch.arch_kwargs;
        if !kw.is_object() {
            return Err(arch_err(format!("arch_kwargs must be an object, got {kw}")));
        }
        let n = as_usize(get(kw, "n_stages")?, "n_stages")?;
        if n < 2 {
            return Err(arch_err(format!("n_stages must be at least 2, got {n}")));
        }
        let features = per_stage(kw, "features_per_stage", n)?;
        let kernel_sizes = per_stage_cubic(kw, "kernel_sizes", n)?;
        let strides = per_stage_cubic(kw, "strides", n)?;
        let n_blocks = per_stage(kw, "n_blocks_per_stage", n)?;
        let n_conv_decoder = per_stage(kw, "n_conv_per_stage_decoder", n - 1)?;
        for (i, &k) in kernel_sizes.iter().enumerate() {
            if k != 1 && k != 3 {
                return Err(arch_err(format!(
                    "kernel size {k} of stage {i} is not supported (1 or 3)"
                )));
            }
        }
        for (i, &s) in strides.iter().enumerate() {
            if s == 0 {
                return Err(arch_err(format!("stride 0 in stage {i}")));
            }
        }
        if features.contains(&0) || n_blocks.contains(&0) || n_conv_decoder.contains(&0) {
            return Err(arch_err(
                "features, blocks and decoder convs must all be at least 1",
            ));
        }
        let conv_bias = match kw.get("conv_bias") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(arch_err(format!("conv_bias must be a boolean, got {v}"))),
        };
        if let Some(v) = kw.get("conv_op")
            && !class_is(v, &["Conv3d"])
        {
            return Err(arch_err(format!(
                "conv_op {v} is not supported (only Conv3d)"
            )));
        }
        let norm = get(kw, "norm_op")?;
        if !class_is(norm, &["InstanceNorm3d"]) {
            return Err(arch_err(format!(
                "norm_op {norm} is not supported (only InstanceNorm3d)"
            )));
        }
        let norm_kw = kw.get("norm_op_kwargs").cloned().unwrap_or(Value::Null);
        let norm_eps = norm_kw.get("eps").and_then(Value::as_f64).unwrap_or(1e-5);
        if norm_kw.get("affine").and_then(Value::as_bool) != Some(true) {
            return Err(arch_err(format!(
                "norm_op_kwargs {norm_kw} must have affine: true"
            )));
        }
        if norm_kw.get("track_running_stats").and_then(Value::as_bool) == Some(true) {
            return Err(arch_err(
                "InstanceNorm with track_running_stats is not supported",
            ));
        }
        match kw.get("dropout_op") {
            None | Some(Value::Null) => {}
            Some(v) => {
                return Err(arch_err(format!(
                    "dropout_op {v} is not supported (only null)"
                )));
            }
        }
        let nonlin = get(kw, "nonlin")?;
        let nonlin_kw = kw.get("nonlin_kwargs").cloned().unwrap_or(Value::Null);
        let negative_slope = if class_is(nonlin, &["LeakyReLU"]) {
            nonlin_kw
                .get("negative_slope")
                .and_then(Value::as_f64)
                .unwrap_or(0.01)
        } else if class_is(nonlin, &["ReLU"]) {
            0.0
        } else {
            return Err(arch_err(format!(
                "nonlin {nonlin} is not supported (LeakyReLU or ReLU)"
            )));
        };
        if let Some(b) = kw.get("block")
            && !b.is_null()
            && !class_is(b, &["BasicBlockD"])
        {
            return Err(arch_err(format!(
                "block {b} is not supported (only BasicBlockD)"
            )));
        }
        if let Some(b) = kw.get("bottleneck_channels")
            && !b.is_null()
        {
            return Err(arch_err(format!(
                "bottleneck_channels {b} is not supported (only null)"
            )));
        }
        let stem_channels = match kw.get("stem_channels") {
            None | Some(Value::Null) => features[0],
            Some(v) => as_usize(v, "stem_channels")?,
        };
        if input_channels == 0 || num_classes == 0 {
            return Err(arch_err(format!(
                "input_channels ({input_channels}) and num_classes ({num_classes}) must be positive"
            )));
        }
        Ok(UNetSpec {
            input_channels,
            num_classes,
            features,
            stem_channels,
            kernel_sizes,
            strides,
            n_blocks,
            n_conv_decoder,
            conv_bias,
            norm_eps,
            negative_slope,
        })
    }

    /// Number of encoder stages.
    pub fn n_stages(&self) -> usize {
        self.features.len()
    }

    /// Product of all strides: input sizes must be divisible by it.
    pub fn total_stride(&self) -> usize {
        self.strides.iter().product()
    }

    /// Name prefix of the segmentation head used without deep supervision.
    pub fn last_seg_layer(&self) -> String {
        format!("decoder.seg_layers.{}", self.n_stages() - 2)
    }

    /// Every canonical parameter (PyTorch `named_parameters()` order) with its shape.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let conv_norm = |out: &mut Vec<(String, Vec<usize>)>,
                         p: &str,
                         cin: usize,
                         cout: usize,
                         k: usize,
                         bias: bool| {
            out.push((format!("{p}.conv.weight"), vec![cout, cin, k, k, k]));
            if bias {
                out.push((format!("{p}.conv.bias"), vec![cout]));
            }
            out.push((format!("{p}.norm.weight"), vec![cout]));
            out.push((format!("{p}.norm.bias"), vec![cout]));
        };
        let n = self.n_stages();
        conv_norm(
            &mut out,
            "encoder.stem.convs.0",
            self.input_channels,
            self.stem_channels,
            self.kernel_sizes[0],
            self.conv_bias,
        );
        let mut cin = self.stem_channels;
        for s in 0..n {
            let f = self.features[s];
            for b in 0..self.n_blocks[s] {
                let (bin, stride) = if b == 0 {
                    (cin, self.strides[s])
                } else {
                    (f, 1)
                };
                let p = format!("encoder.stages.{s}.blocks.{b}");
                let k = self.kernel_sizes[s];
                conv_norm(&mut out, &format!("{p}.conv1"), bin, f, k, self.conv_bias);
                conv_norm(&mut out, &format!("{p}.conv2"), f, f, k, self.conv_bias);
                if bin != f {
                    let idx = usize::from(stride != 1);
                    conv_norm(&mut out, &format!("{p}.skip.{idx}"), bin, f, 1, false);
                }
            }
            cin = f;
        }
        for i in 0..n - 1 {
            let skip_c = self.features[n - 2 - i];
            let k = self.kernel_sizes[n - 2 - i];
            for c in 0..self.n_conv_decoder[i] {
                let cin = if c == 0 { 2 * skip_c } else { skip_c };
                conv_norm(
                    &mut out,
                    &format!("decoder.stages.{i}.convs.{c}"),
                    cin,
                    skip_c,
                    k,
                    self.conv_bias,
                );
            }
        }
        for i in 0..n - 1 {
            let below = self.features[n - 1 - i];
            let skip_c = self.features[n - 2 - i];
            let s = self.strides[n - 1 - i];
            out.push((
                format!("decoder.transpconvs.{i}.weight"),
                vec![below, skip_c, s, s, s],
            ));
            if self.conv_bias {
                out.push((format!("decoder.transpconvs.{i}.bias"), vec![skip_c]));
            }
        }
        for i in 0..n - 1 {
            let skip_c = self.features[n - 2 - i];
            out.push((
                format!("decoder.seg_layers.{i}.weight"),
                vec![self.num_classes, skip_c, 1, 1, 1],
            ));
            out.push((
                format!("decoder.seg_layers.{i}.bias"),
                vec![self.num_classes],
            ));
        }
        out
    }

    /// Total number of scalar parameters (counted from shapes, nothing allocated).
    pub fn num_parameters(&self) -> usize {
        self.parameter_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// Whether a state_dict key is one of PyTorch's duplicate spellings of a canonical parameter
/// (`…all_modules.N…` inside ConvDropoutNormReLU, `decoder.encoder.…` through the decoder's
/// reference to the encoder); importers drop these.
pub fn is_alias_key(name: &str) -> bool {
    name.starts_with("decoder.encoder.") || name.contains(".all_modules.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_has_264_parameters_and_the_known_total() {
        let spec =
            UNetSpec::from_architecture(&Architecture::nninteractive_v1(), 8, 2).expect("spec");
        let shapes = spec.parameter_shapes();
        assert_eq!(shapes.len(), 264);
        assert_eq!(spec.num_parameters(), 102_355_818);
        assert_eq!(spec.total_stride(), 32);
        assert_eq!(spec.negative_slope, 0.01);
    }

    #[test]
    fn anisotropic_stride_is_rejected_with_the_value() {
        let mut arch = Architecture::nninteractive_v1();
        arch.arch_kwargs["strides"][5] = serde_json::json!([1, 2, 2]);
        let err = UNetSpec::from_architecture(&arch, 8, 2).expect_err("must fail");
        assert!(err.to_string().contains("[1,2,2]"), "{err}");
    }

    #[test]
    fn wrong_list_length_and_class_are_rejected() {
        let mut arch = Architecture::nninteractive_v1();
        arch.arch_kwargs["n_blocks_per_stage"] = serde_json::json!([1, 2]);
        assert!(UNetSpec::from_architecture(&arch, 8, 2).is_err());
        let mut arch = Architecture::nninteractive_v1();
        arch.network_class_name =
            "dynamic_network_architectures.architectures.unet.PlainConvUNet".into();
        let err = UNetSpec::from_architecture(&arch, 8, 2).expect_err("must fail");
        assert!(err.to_string().contains("PlainConvUNet"));
    }

    #[test]
    fn aliases_are_recognised() {
        assert!(is_alias_key("decoder.encoder.stem.convs.0.conv.weight"));
        assert!(is_alias_key("encoder.stem.convs.0.all_modules.0.weight"));
        assert!(!is_alias_key("encoder.stem.convs.0.conv.weight"));
    }
}
