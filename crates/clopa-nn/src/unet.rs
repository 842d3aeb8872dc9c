//! nnInteractive's network: `ResidualEncoderUNet` as dynamic-network-architectures 0.4.4 builds it.
//!
//! Layers are built from a candle-nn [`VarBuilder`] with `vb.pp(...)` so their parameter names are
//! PyTorch's canonical `named_parameters()` names. All tensors are `(B, C, D, H, W)` f32.
//!
//! * stem: ConvDropoutNormReLU (conv → InstanceNorm → LeakyReLU), stride 1;
//! * encoder stage s: BasicBlockD × n_blocks[s]; block = conv1 (→ IN → LReLU, carries the stride),
//!   conv2 (→ IN, no nonlinearity), `LReLU(out + skip(x))` — the nonlinearity follows the add;
//!   skip = identity, AvgPool(stride) if strided, then 1×1 conv (no bias) + IN if the width changes;
//! * decoder stage s (s = 0 at the bottleneck): transposed conv (kernel = stride), `cat(up, skip)`
//!   (upsampled first), ConvDropoutNormReLU stack; `seg_layers.s` = 1×1 conv with bias.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::arch::UNetSpec;
use crate::error::{NnError, Result};
use crate::ops;

/// conv → InstanceNorm → optional LeakyReLU (dynamic-network-architectures' ConvDropoutNormReLU
/// without dropout).
#[derive(Clone, Debug)]
pub struct ConvNormAct {
    weight: Tensor,
    bias: Option<Tensor>,
    gamma: Tensor,
    beta: Tensor,
    stride: usize,
    padding: usize,
    eps: f64,
    slope: Option<f64>,
}

impl ConvNormAct {
    /// Forward: `(B, Cin, D, H, W)` → `(B, Cout, D/stride, H/stride, W/stride)`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::conv_norm_act(x, &self.params(), self.slope, None)
    }

    /// `LeakyReLU(norm(conv(x)) + residual)` with the block's slope (this layer's own is unused).
    fn forward_residual(
        &self,
        x: &Tensor,
        residual: &Tensor,
        slope: f64,
    ) -> candle_core::Result<Tensor> {
        ops::conv_norm_act(x, &self.params(), Some(slope), Some(residual))
    }

    fn params(&self) -> ops::ConvNorm<'_> {
        ops::ConvNorm {
            weight: &self.weight,
            bias: self.bias.as_ref(),
            stride: self.stride,
            padding: self.padding,
            gamma: &self.gamma,
            beta: &self.beta,
            eps: self.eps,
        }
    }
}

/// Builds a [`ConvNormAct`] whose parameters are `vb.pp("conv")` / `vb.pp("norm")`.
#[allow(clippy::too_many_arguments)]
pub fn conv_norm_act(
    vb: &VarBuilder,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    bias: bool,
    eps: f64,
    slope: Option<f64>,
) -> candle_core::Result<ConvNormAct> {
    let cv = vb.pp("conv");
    let weight = cv.get((cout, cin, k, k, k), "weight")?;
    let bias = if bias {
        Some(cv.get(cout, "bias")?)
    } else {
        None
    };
    let nv = vb.pp("norm");
    let gamma = nv.get(cout, "weight")?;
    let beta = nv.get(cout, "bias")?;
    Ok(ConvNormAct {
        weight,
        bias,
        gamma,
        beta,
        stride,
        padding: (k - 1) / 2,
        eps,
        slope,
    })
}

/// Residual block BasicBlockD.
#[derive(Clone, Debug)]
pub struct BasicBlockD {
    conv1: ConvNormAct,
    conv2: ConvNormAct,
    pool: Option<usize>,
    projection: Option<ConvNormAct>,
    slope: f64,
}

impl BasicBlockD {
    /// Builds the block under `vb` (`conv1`, `conv2`, `skip.{0,1}`).
    pub fn new(
        vb: &VarBuilder,
        spec: &UNetSpec,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
    ) -> candle_core::Result<Self> {
        let slope = spec.negative_slope;
        let eps = spec.norm_eps;
        let conv1 = conv_norm_act(
            &vb.pp("conv1"),
            cin,
            cout,
            k,
            stride,
            spec.conv_bias,
            eps,
            Some(slope),
        )?;
        let conv2 = conv_norm_act(&vb.pp("conv2"), cout, cout, k, 1, spec.conv_bias, eps, None)?;
        let pool = (stride != 1).then_some(stride);
        let projection = if cin != cout {
            let idx = usize::from(pool.is_some());
            Some(conv_norm_act(
                &vb.pp("skip").pp(idx),
                cin,
                cout,
                1,
                1,
                false,
                eps,
                None,
            )?)
        } else {
            None
        };
        Ok(BasicBlockD {
            conv1,
            conv2,
            pool,
            projection,
            slope,
        })
    }

    /// Forward: `LReLU(IN2(conv2(LReLU(IN1(conv1(x))))) + skip(x))`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(x)?;
        let mut s = match self.pool {
            Some(k) => ops::avg_pool3d(x, k)?,
            None => x.clone(),
        };
        if let Some(p) = &self.projection {
            s = p.forward(&s)?;
        }
        // conv2 has no nonlinearity of its own: the block's follows the residual add.
        self.conv2.forward_residual(&h, &s, self.slope)
    }
}

/// A 1×1×1 convolution with bias (segmentation head) or a transposed convolution.
#[derive(Clone, Debug)]
struct Affine {
    weight: Tensor,
    bias: Option<Tensor>,
}

/// One decoder stage: transposed conv, concatenation, conv stack, segmentation head.
#[derive(Clone, Debug)]
struct DecoderStage {
    transp: Affine,
    transp_stride: usize,
    convs: Vec<ConvNormAct>,
    seg: Affine,
}

/// What [`ResidualEncoderUNet::run`] returns besides the outputs.
type Activations = Vec<(String, Tensor)>;

/// The network. Build with [`ResidualEncoderUNet::new`] from a [`VarBuilder`] (see
/// [`crate::ParamStore::var_builder`] to choose which parameters are trainable).
#[derive(Clone, Debug)]
pub struct ResidualEncoderUNet {
    spec: UNetSpec,
    stem: ConvNormAct,
    stages: Vec<Vec<BasicBlockD>>,
    decoder: Vec<DecoderStage>,
}

impl ResidualEncoderUNet {
    /// Builds the network; every parameter is fetched from `vb` under its canonical name
    /// (a missing tensor or a wrong shape is an error naming it).
    pub fn new(spec: &UNetSpec, vb: &VarBuilder) -> Result<Self> {
        let n = spec.n_stages();
        let enc = vb.pp("encoder");
        let stem = conv_norm_act(
            &enc.pp("stem").pp("convs").pp(0),
            spec.input_channels,
            spec.stem_channels,
            spec.kernel_sizes[0],
            1,
            spec.conv_bias,
            spec.norm_eps,
            Some(spec.negative_slope),
        )?;
        let mut stages = Vec::with_capacity(n);
        let mut cin = spec.stem_channels;
        for s in 0..n {
            let f = spec.features[s];
            let sv = enc.pp("stages").pp(s).pp("blocks");
            let mut blocks = Vec::with_capacity(spec.n_blocks[s]);
            for b in 0..spec.n_blocks[s] {
                let (bin, stride) = if b == 0 {
                    (cin, spec.strides[s])
                } else {
                    (f, 1)
                };
                blocks.push(BasicBlockD::new(
                    &sv.pp(b),
                    spec,
                    bin,
                    f,
                    spec.kernel_sizes[s],
                    stride,
                )?);
            }
            stages.push(blocks);
            cin = f;
        }
        let dec = vb.pp("decoder");
        let mut decoder = Vec::with_capacity(n - 1);
        for i in 0..n - 1 {
            let below = spec.features[n - 1 - i];
            let skip_c = spec.features[n - 2 - i];
            let st = spec.strides[n - 1 - i];
            let k = spec.kernel_sizes[n - 2 - i];
            let tv = dec.pp("transpconvs").pp(i);
            let transp = Affine {
                weight: tv.get((below, skip_c, st, st, st), "weight")?,
                bias: if spec.conv_bias {
                    Some(tv.get(skip_c, "bias")?)
                } else {
                    None
                },
            };
            let mut convs = Vec::with_capacity(spec.n_conv_decoder[i]);
            for c in 0..spec.n_conv_decoder[i] {
                let ci = if c == 0 { 2 * skip_c } else { skip_c };
                convs.push(conv_norm_act(
                    &dec.pp("stages").pp(i).pp("convs").pp(c),
                    ci,
                    skip_c,
                    k,
                    1,
                    spec.conv_bias,
                    spec.norm_eps,
                    Some(spec.negative_slope),
                )?);
            }
            let gv = dec.pp("seg_layers").pp(i);
            let seg = Affine {
                weight: gv.get((spec.num_classes, skip_c, 1, 1, 1), "weight")?,
                bias: Some(gv.get(spec.num_classes, "bias")?),
            };
            decoder.push(DecoderStage {
                transp,
                transp_stride: st,
                convs,
                seg,
            });
        }
        Ok(ResidualEncoderUNet {
            spec: spec.clone(),
            stem,
            stages,
            decoder,
        })
    }

    /// The architecture this network was built from.
    pub fn spec(&self) -> &UNetSpec {
        &self.spec
    }

    /// Checks `x` is `(B, C_in, D, H, W)` with sizes divisible by the total stride.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let shape = x.dims().to_vec();
        if shape.len() != 5 {
            return Err(NnError::InputShape {
                shape,
                reason: "expected 5 dimensions (B, C, D, H, W)".into(),
            });
        }
        if shape[1] != self.spec.input_channels {
            return Err(NnError::InputChannels {
                expected: self.spec.input_channels,
                got: shape[1],
                shape,
            });
        }
        let ts = self.spec.total_stride();
        if shape[2..].iter().any(|&d| d == 0 || d % ts != 0) {
            return Err(NnError::InputShape {
                shape,
                reason: format!(
                    "spatial sizes must be positive multiples of the total stride {ts}"
                ),
            });
        }
        Ok(())
    }

    /// Logits `(B, num_classes, D, H, W)` (deep supervision off).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let mut outs = self.run(x, false, None)?;
        outs.pop()
            .ok_or_else(|| NnError::Arch("network produced no output".into()))
    }

    /// Deep-supervision outputs, highest resolution first (`n_stages - 1` tensors).
    pub fn forward_ds(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.check_input(x)?;
        let mut outs = self.run(x, true, None)?;
        outs.reverse();
        Ok(outs)
    }

    /// Logits plus the intermediate activations the golden fixture records: `stem_out`,
    /// `enc_stage{s}_out`, `dec_stage{s}_out` (decoder stage output before its seg layer).
    pub fn forward_debug(&self, x: &Tensor) -> Result<(Tensor, Activations)> {
        self.check_input(x)?;
        let mut acts = Vec::new();
        let mut outs = self.run(x, false, Some(&mut acts))?;
        let logits = outs
            .pop()
            .ok_or_else(|| NnError::Arch("network produced no output".into()))?;
        Ok((logits, acts))
    }

    /// Outputs lowest resolution first (all seg layers if `ds`, else only the last one).
    fn run(&self, x: &Tensor, ds: bool, mut acts: Option<&mut Activations>) -> Result<Vec<Tensor>> {
        let mut record = |name: String, t: &Tensor| {
            if let Some(a) = acts.as_deref_mut() {
                a.push((name, t.clone()));
            }
        };
        let mut h = self.stem.forward(x)?;
        record("stem_out".into(), &h);
        let mut skips = Vec::with_capacity(self.stages.len());
        for (s, blocks) in self.stages.iter().enumerate() {
            for b in blocks {
                h = b.forward(&h)?;
            }
            record(format!("enc_stage{s}_out"), &h);
            skips.push(h.clone());
        }
        let n = self.stages.len();
        let mut outs = Vec::new();
        let mut low = skips[n - 1].clone();
        for (i, st) in self.decoder.iter().enumerate() {
            let up = ops::conv_transpose3d(
                &low,
                &st.transp.weight,
                st.transp.bias.as_ref(),
                st.transp_stride,
            )?;
            let mut y = ops::cat_channels(&up, &skips[n - 2 - i])?;
            for c in &st.convs {
                y = c.forward(&y)?;
            }
            record(format!("dec_stage{i}_out"), &y);
            if ds || i == self.decoder.len() - 1 {
                // (f32 logits also where a GPU's half-precision convolutions kept them half)
                let logits = ops::conv3d(&y, &st.seg.weight, st.seg.bias.as_ref(), 1, 0)?;
                outs.push(logits.to_dtype(candle_core::DType::F32)?);
            }
            low = y;
        }
        Ok(outs)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use candle_core::{DType, Device};

    use super::*;
    use crate::arch::Architecture;
    use crate::params::ParamStore;

    /// A 3-stage variant exercising what the v1.0 net does not: no conv bias, 2 decoder convs,
    /// a 1×1 kernel stage and a stride-1 stage with a projection skip.
    fn odd_spec() -> UNetSpec {
        let mut arch = Architecture::resenc(&[3, 4, 5], &[2, 1, 1]);
        arch.arch_kwargs["conv_bias"] = serde_json::json!(false);
        arch.arch_kwargs["n_conv_per_stage_decoder"] = serde_json::json!([2, 1]);
        arch.arch_kwargs["kernel_sizes"] = serde_json::json!([3, [1, 1, 1], 3]);
        arch.arch_kwargs["strides"] = serde_json::json!([1, 1, 2]);
        arch.arch_kwargs["stem_channels"] = serde_json::json!(2);
        UNetSpec::from_architecture(&arch, 2, 3).expect("spec")
    }

    /// Parameters as a network is initialised (PyTorch's default for its convolutions): every
    /// kernel uniform in ±1/√fan-in, zero-mean; biases small; norm scales near 1, shifts near 0.
    fn he_params(spec: &UNetSpec) -> BTreeMap<String, Tensor> {
        let mut rng = crate::ops::testutil::Lcg(7);
        spec.parameter_shapes()
            .into_iter()
            .map(|(n, s)| {
                let numel: usize = s.iter().product();
                let fan_in: usize = s.iter().skip(1).product::<usize>().max(1);
                let (scale, offset) = match s.len() {
                    5 => ((1.0 / fan_in as f32).sqrt(), 0.0),
                    _ if n.ends_with("norm.weight") => (0.1, 1.0),
                    _ => (0.1, 0.0),
                };
                let v: Vec<f32> = (0..numel).map(|_| rng.next() * scale + offset).collect();
                (n, Tensor::from_vec(v, s, &Device::Cpu).expect("tensor"))
            })
            .collect()
    }

    fn params(spec: &UNetSpec) -> BTreeMap<String, Tensor> {
        spec.parameter_shapes()
            .into_iter()
            .enumerate()
            .map(|(i, (n, s))| {
                let numel: usize = s.iter().product();
                let v: Vec<f32> = (0..numel)
                    .map(|j| ((i * 7 + j * 13) % 11) as f32 / 11.0 - 0.4)
                    .collect();
                (n, Tensor::from_vec(v, s, &Device::Cpu).expect("tensor"))
            })
            .collect()
    }

    #[test]
    fn odd_architecture_builds_and_has_the_right_output_shapes() -> Result<()> {
        let spec = odd_spec();
        let names: Vec<String> = spec
            .parameter_shapes()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert!(names.contains(&"encoder.stages.0.blocks.0.skip.0.conv.weight".to_string()));
        assert!(names.contains(&"decoder.stages.0.convs.1.conv.weight".to_string()));
        assert!(!names.iter().any(|n| n.ends_with("conv.bias")
            || n.starts_with("decoder.transpconvs") && n.ends_with("bias")));
        let store = ParamStore::new(params(&spec));
        let net = ResidualEncoderUNet::new(&spec, &store.var_builder(&Device::Cpu))?;
        let x = Tensor::ones((2, 2, 4, 6, 8), DType::F32, &Device::Cpu)?;
        assert_eq!(net.forward(&x)?.dims(), &[2, 3, 4, 6, 8]);
        let ds = net.forward_ds(&x)?;
        assert_eq!(
            ds.iter().map(|t| t.dims().to_vec()).collect::<Vec<_>>(),
            vec![vec![2, 3, 4, 6, 8], vec![2, 3, 4, 6, 8]]
        );
        Ok(())
    }

    /// Which ops [`run_network`] runs.
    #[derive(Clone, Copy, Debug)]
    enum Path {
        /// the CPU kernels
        Kernels,
        /// the compositions a GPU runs (`ops::portable::on_cpu`)
        Portable,
        /// the compositions with the convolutions single ops, as cuDNN's on a GPU
        /// (`on_cpu_like_cuda`): conv → norm one graph node (`portable::conv_norm_act`)
        LikeCuda,
    }

    /// The network of `spec` on a fixed input of `dims`, its norm affines trainable (group `in`):
    /// the logits (deep supervision on), then the gradients of the input and of every norm
    /// affine under a fixed weighting of the logits; through the ops `path` says, and with
    /// `half` the input cast to that type, so that every layer runs on half data as on a GPU
    /// with half-precision convolutions (which the activations' and the logits' types are
    /// checked for) — or, with `half` f32, the input only rounded to fp16 and all else f32.
    fn run_network(
        spec: &UNetSpec,
        params: BTreeMap<String, Tensor>,
        dims: [usize; 5],
        path: Path,
        half: Option<DType>,
    ) -> Result<[Vec<Vec<f32>>; 2]> {
        let n: usize = dims.iter().product();
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let mut store = ParamStore::new(params);
        let norms: Vec<String> = spec
            .parameter_shapes()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.contains(".norm."))
            .collect();
        store.make_trainable(&norms)?;
        let xv = candle_core::Var::from_tensor(&Tensor::from_slice(&x, &dims[..], &Device::Cpu)?)?;
        let net = ResidualEncoderUNet::new(spec, &store.var_builder(&Device::Cpu))?;
        let f = || -> Result<Vec<Tensor>> {
            let Some(dt) = half else {
                return net.forward_ds(xv.as_tensor());
            };
            if dt == DType::F32 {
                // (f32 all through, the input rounded to fp16: what that rounding alone moves)
                let xr = xv.as_tensor().to_dtype(DType::F16)?.to_dtype(DType::F32)?;
                return net.forward_ds(&xr);
            }
            let xh = xv.as_tensor().to_dtype(dt)?;
            let (_, acts) = net.forward_debug(&xh)?;
            for (name, a) in &acts {
                assert_eq!(a.dtype(), dt, "{name}: activations stay {dt:?}");
            }
            let outs = net.forward_ds(&xh)?;
            for o in &outs {
                assert_eq!(o.dtype(), DType::F32, "logits come out f32");
            }
            Ok(outs)
        };
        let outs = match path {
            Path::Kernels => f()?,
            Path::Portable => ops::portable::on_cpu(f)?,
            Path::LikeCuda => ops::portable::on_cpu_like_cuda(f)?,
        };
        let loss = outs
            .iter()
            .try_fold(Tensor::new(0f32, &Device::Cpu)?, |acc, o| {
                let w = Tensor::arange(0f32, o.elem_count() as f32, &Device::Cpu)?
                    .affine(0.001, -0.3)?
                    .sin()?
                    .reshape(o.dims())?;
                acc + (o * w)?.sum_all()?
            })?;
        let grads = loss.backward()?;
        let mut g = vec![
            grads
                .get(xv.as_tensor())
                .expect("dx")
                .flatten_all()?
                .to_vec1()?,
        ];
        for v in store.vars().values() {
            g.push(grads.get(v.as_tensor()).expect("d norm").to_vec1()?);
        }
        let o = outs
            .iter()
            .map(|o| o.flatten_all()?.to_vec1())
            .collect::<candle_core::Result<_>>()?;
        Ok([o, g])
    }

    /// Each of `a` finite and within `tol` × the largest |value| of its counterpart in `b`.
    fn assert_close_each(what: &str, a: &[Vec<f32>], b: &[Vec<f32>], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (a, b)) in a.iter().zip(b).enumerate() {
            assert!(a.iter().all(|v| v.is_finite()), "{what} {i}: not finite");
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(err <= tol * scale, "{what} {i}: {err} vs scale {scale}");
        }
    }

    /// ‖a − b‖ / ‖b‖ over all the vectors together.
    fn relative_l2(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
        let (mut d, mut n) = (0f64, 0f64);
        for (a, b) in a.iter().zip(b) {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                d += (f64::from(*x) - f64::from(*y)).powi(2);
                n += f64::from(*y).powi(2);
            }
        }
        (d / n).sqrt()
    }

    /// The whole network through the compositions a GPU runs (`ops::portable`), with the
    /// convolutions composed and as single ops (each then one graph node with its norm), against
    /// the CPU kernels: logits, deep-supervision outputs, and the gradients of the input and of
    /// every norm affine (group `in`), for the odd architecture and a small v1.0-shaped one. (Its
    /// deepest stage keeps 2³ voxels: an instance norm over 2 voxels amplifies f32 rounding in
    /// the backward ~100-fold, whichever implementation rounds.)
    #[test]
    fn portable_ops_give_the_same_network() -> Result<()> {
        let small_v1 =
            UNetSpec::from_architecture(&Architecture::resenc(&[4, 6, 8, 8], &[1, 2, 2, 1]), 8, 2)?;
        for (spec, dims) in [
            (odd_spec(), [2, 2, 4, 6, 8]),
            (small_v1, [1, 8, 16, 16, 16]),
        ] {
            let fast = run_network(&spec, params(&spec), dims, Path::Kernels, None)?;
            for path in [Path::Portable, Path::LikeCuda] {
                let port = run_network(&spec, params(&spec), dims, path, None)?;
                assert_close_each(&format!("{path:?} output"), &port[0], &fast[0], 1e-4);
                assert_close_each(&format!("{path:?} gradient"), &port[1], &fast[1], 1e-4);
            }
        }
        Ok(())
    }

    /// The network on half data (fp16 through every layer, as a GPU's fp16 convolutions hand it
    /// on; here through the compositions, cuDNN and the fused norm kernels aside) against the
    /// f32 CPU kernels: the activations stay half, the logits come out f32 and match to 1 %.
    /// The gradients cannot be held to a fixed tolerance: at LeakyReLU's kink and through norms
    /// over few voxels this network's gradients move by up to 13 % (relative L2, some affine)
    /// when only its f32 input is rounded to fp16, so the half run's gradients (all together)
    /// are held to within 2× of what that rounding alone moves them — a lost or misrouted
    /// gradient would be off by its whole size. (bf16: candle has no bf16 matmul on the CPU.)
    #[test]
    fn half_precision_network_is_the_f32_one_rounded() -> Result<()> {
        let small_v1 =
            UNetSpec::from_architecture(&Architecture::resenc(&[4, 6, 8, 8], &[1, 2, 2, 1]), 8, 2)?;
        let dims = [1, 8, 32, 32, 32];
        let run = |path, half| run_network(&small_v1, he_params(&small_v1), dims, path, half);
        let fast = run(Path::Kernels, None)?;
        let half = run(Path::Portable, Some(DType::F16))?;
        assert_close_each("f16 output", &half[0], &fast[0], 1e-2);
        assert_close_each("f16 gradient", &half[1], &fast[1], f32::INFINITY);
        let rounded = run(Path::Kernels, Some(DType::F32))?;
        // the input's gradient, then the norm affines' together
        for (what, r) in [("input", 0..1), ("norm affines", 1..fast[1].len())] {
            let e = |g: &[Vec<f32>]| relative_l2(&g[r.clone()], &fast[1][r.clone()]);
            let (e_half, e_rounded) = (e(&half[1]), e(&rounded[1]));
            eprintln!("{what}: half {e_half} rounded {e_rounded}");
            assert!(
                e_half <= 2.0 * e_rounded,
                "{what} gradients off by {e_half} (relative L2), the input's rounding alone {e_rounded}"
            );
        }
        Ok(())
    }

    #[test]
    fn missing_parameter_is_named() {
        let spec = odd_spec();
        let mut p = params(&spec);
        p.remove("decoder.seg_layers.1.bias");
        let store = ParamStore::new(p);
        let err =
            ResidualEncoderUNet::new(&spec, &store.var_builder(&Device::Cpu)).expect_err("missing");
        assert!(
            err.to_string().contains("decoder.seg_layers.1.bias"),
            "{err}"
        );
    }
}
