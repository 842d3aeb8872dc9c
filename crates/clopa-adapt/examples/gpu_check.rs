//! GPU against CPU: the nnInteractive v1.0 network's forward and a few training steps of group
//! `in`, on a device and on the CPU's fast kernels, with the device's timings.
//!
//! `gpu_check [DEVICE] [FWD_SIZE] [TRAIN_PATCH] [STEPS] [REPS] [--no-paper-size]` (defaults
//! `cuda 192 128 3 3`).
//! DEVICE `cpu` runs the device side through `clopa_nn::ops::portable` on the CPU (what a GPU
//! runs, minus candle's GPU kernels), so the check itself can be checked without a GPU.
//! Weights are random (seeded He-uniform), the input random in [-1, 1).
//!
//! Prints JSON lines (after a `config` line: cuDNN's API — its legacy one by default,
//! `CLOPA_CUDNN_API=graph` its graph one — and whether `CLOPA_CUDNN_BENCHMARK=1` picks each shape's
//! algorithm by timing them — the legacy API's Find, or the graph API's first few plans — instead
//! of by the heuristics):
//! * `forward`: logits (1, 2, S, S, S) on the device vs the CPU, max |Δ| / max |cpu| and mean |Δ|
//!   / mean |cpu|; the best of REPS device timings after one warm-up, and the CPU's time.
//! * `forward` with `precision` F16 / Bf16: the same with half-precision GPU convolutions (fp32
//!   accumulation and half activations between them, like PyTorch's autocast), against the fp32
//!   CPU logits, and the fraction of voxels whose argmax differs.
//! * `ops`: the device's time per op at the widest stage (32 channels at FWD_SIZE³): conv (fp32
//!   and fp16), instance norm + LeakyReLU, and conv → norm → LeakyReLU forward + backward; then
//!   forward + backward of the conv alone (input gradient; and the kernel's), of the norm +
//!   LeakyReLU alone, and of the loss (the default way: fused unless `CLOPA_CUDA_LOSS=composed`);
//!   the conv's forward in bf16 and its forward + backward in fp16 and bf16 (the fp32 input's
//!   cast included, the half result summed in f32); and `x·1 → sum → backward` alone (`scale_sum_backward_s`), what
//!   ending the `_fwd_bwd` lines in a sum costs.
//! * `train`: STEPS steps of batch 2 at TRAIN_PATCH³, each forward + (1 − soft Dice + CE) +
//!   backward + Adam (lr 1e-3, weight decay 1e-5) on the instance-norm affines, from the same
//!   weights and data on both sides: each step's loss on both, the first step's gradients'
//!   relative difference, the trained parameters' (Adam normalises each gradient, so a parameter
//!   whose gradient is rounding noise moves by ±lr either way: compare with `params_moved_rel`),
//!   and seconds per step after the first.
//! * `train-device-only` (not with `--no-paper-size`, not on the CPU): two steps at the paper's
//!   192³, batch 2, on the device alone, fp32, bf16 and fp16 convolutions (fused loss), and fp32
//!   with the composed loss (`fused_loss`: false) — whether they fit its memory, their time by
//!   phase and losses.
//! * `loss` (not on the CPU): the trainer's loss on logits (2, 2, FWD_SIZE³), composed and
//!   fused (`fused`), against the CPU's composition (losses, gradients) and timed.
//! * `cudnn` (with the `cuda` feature), last: the algorithm cuDNN's legacy API chose for each
//!   convolution shape run, forward and backward.
//!
//! `scripts/gpu_check.py` does the same forward and step in PyTorch; `scripts/gpu-check.sh`
//! runs both on the device machine.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clopa_adapt::{Adam, AdamConfig};
use clopa_nn::loss::{clopa_pass_loss, clopa_pass_loss_per_sample, composed_pass_loss_per_sample};
use clopa_nn::ops::ConvPrecision;
use clopa_nn::{Architecture, ParamGroup, ParamStore, ResidualEncoderUNet, UNetSpec};

/// Uniform in [-1, 1), from a 64-bit LCG: the same data on every machine without an RNG crate.
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Runs `f`: the reference side on the CPU's fast kernels; the device side on `dev`, or through
/// the portable ops when the "device" is the CPU.
fn on<R>(dev: &Device, reference: bool, f: impl FnOnce() -> R) -> R {
    if dev.is_cpu() && !reference {
        clopa_nn::ops::portable::on_cpu(f)
    } else {
        f()
    }
}

fn sync(dev: &Device) {
    dev.synchronize().unwrap();
}

/// `f()` and its wall time in seconds, the device synchronised before and after (its kernels
/// run asynchronously).
fn timed<R>(dev: &Device, f: impl FnOnce() -> R) -> (R, f64) {
    sync(dev);
    let t = Instant::now();
    let r = f();
    sync(dev);
    (r, t.elapsed().as_secs_f64())
}

/// max |a − b| / max |b| and mean |a − b| / mean |b|.
fn rel<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> (f64, f64) {
    let (mut dmax, mut bmax, mut dsum, mut bsum) = (0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y): (f64, f64) = (x.into(), y.into());
        let d = (x - y).abs();
        dmax = dmax.max(d);
        bmax = bmax.max(y.abs());
        dsum += d;
        bsum += y.abs();
    }
    (
        dmax / bmax.max(f64::MIN_POSITIVE),
        dsum / bsum.max(f64::MIN_POSITIVE),
    )
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn forward(spec: &UNetSpec, dev: &Device, size: usize, reps: usize) {
    let weights = clopa_testkit::random_weights(spec, 0);
    let x = uniform(8 * size * size * size, 1);
    let run = |d: &Device, reference: bool, reps: usize| -> (Vec<f32>, f64) {
        let store = ParamStore::new(weights.clone());
        let net = ResidualEncoderUNet::new(spec, &store.var_builder(d)).unwrap();
        let xt = Tensor::from_slice(&x, (1, 8, size, size, size), d).unwrap();
        let mut best = f64::INFINITY;
        let mut out = Vec::new();
        for _ in 0..reps {
            let (y, s) = timed(d, || on(d, reference, || net.forward(&xt)).unwrap());
            best = best.min(s);
            out = flat(&y);
        }
        (out, best)
    };
    let (cpu, cpu_s) = run(&Device::Cpu, true, 1);
    // one warm-up (kernel loading, cuDNN's algorithm search), then REPS timed
    let (dev_out, _) = run(dev, false, 1);
    let (dev_out2, dev_s) = run(dev, false, reps);
    let (max_rel, mean_rel) = rel(&dev_out, &cpu);
    println!(
        "{}",
        serde_json::json!({
            "check": "forward", "device": format!("{dev:?}"), "size": size,
            "max_abs_diff_rel": max_rel, "mean_abs_diff_rel": mean_rel,
            "repeatable": dev_out == dev_out2,
            "device_s": dev_s, "cpu_s": cpu_s,
        })
    );
    // autocast-like half-precision convolutions (GPU only; the CPU ignores the setting), against
    // the same fp32 CPU logits, and how often the argmax (the segmentation) differs
    for p in [ConvPrecision::F16, ConvPrecision::Bf16] {
        clopa_nn::ops::set_conv_precision(p);
        let (_, _) = run(dev, false, 1);
        let (half, half_s) = run(dev, false, reps);
        clopa_nn::ops::set_conv_precision(ConvPrecision::F32);
        let (max_rel, mean_rel) = rel(&half, &cpu);
        let n = cpu.len() / 2;
        let flips = (0..n)
            .filter(|&i| (cpu[i + n] > cpu[i]) != (half[i + n] > half[i]))
            .count();
        println!(
            "{}",
            serde_json::json!({
                "check": "forward", "precision": format!("{p:?}"), "device": format!("{dev:?}"),
                "size": size, "max_abs_diff_rel": max_rel, "mean_abs_diff_rel": mean_rel,
                "argmax_flipped_fraction": flips as f64 / n as f64, "device_s": half_s,
            })
        );
    }
}

/// Where the device's time goes, per op of the network's widest stage (32 channels at SIZE³,
/// batch 1): the 3×3×3 convolution (fp32, and fp16 with its casts), the instance norm +
/// LeakyReLU, and conv → norm → LeakyReLU forward + backward with respect to the input (what
/// training runs for every layer). Best of REPS after one warm-up; `scripts/gpu_check.py` times
/// the same in PyTorch.
fn op_times(dev: &Device, size: usize, reps: usize) {
    use clopa_nn::ops;
    let n = size * size * size;
    let t = |v: Vec<f32>, dims: &[usize]| Tensor::from_vec(v, dims, dev).unwrap();
    let x = t(uniform(32 * n, 5), &[1, 32, size, size, size]);
    let w = (t(uniform(32 * 32 * 27, 6), &[32, 32, 3, 3, 3]) * 0.06).unwrap();
    let (gamma, beta) = (t(vec![1.0; 32], &[32]), t(vec![0.0; 32], &[32]));
    let time = |f: &dyn Fn() -> candle_core::Result<()>| -> f64 {
        let mut best = f64::INFINITY;
        for i in 0..=reps {
            let ((), s) = timed(dev, || on(dev, false, f).unwrap());
            if i > 0 {
                best = best.min(s);
            }
        }
        best
    };
    let conv = time(&|| ops::conv3d(&x, &w, None, 1, 1).map(drop));
    // the same with fp16 inputs (the input's cast included; the result stays fp16), against
    // PyTorch's autocast conv
    clopa_nn::ops::set_conv_precision(ConvPrecision::F16);
    let conv16 = time(&|| ops::conv3d(&x, &w, None, 1, 1).map(drop));
    clopa_nn::ops::set_conv_precision(ConvPrecision::F32);
    // forward + backward (input gradient) of the convolution at each precision, and what the
    // `sum_all().backward()` that ends such a line costs by itself (a gradient of ones, made
    // and accumulated at full size), to read the convolutions' own time off the others
    // (a half result is summed in f32, as the network's logits are: summed in fp16 — 226 M
    // values, past fp16's range — the fp16 line took 0.32 s on an H200 against bf16's 27 ms; not
    // looked into)
    let conv_fb_at = |p: ConvPrecision| {
        clopa_nn::ops::set_conv_precision(p);
        let s = time(&|| {
            let xv = candle_core::Var::from_tensor(&x)?;
            let y = ops::conv3d(xv.as_tensor(), &w, None, 1, 1)?;
            y.to_dtype(DType::F32)?.sum_all()?.backward().map(drop)
        });
        clopa_nn::ops::set_conv_precision(ConvPrecision::F32);
        s
    };
    let (conv_fb16, conv_fb_bf16) = (
        conv_fb_at(ConvPrecision::F16),
        conv_fb_at(ConvPrecision::Bf16),
    );
    clopa_nn::ops::set_conv_precision(ConvPrecision::Bf16);
    let conv_bf16 = time(&|| ops::conv3d(&x, &w, None, 1, 1).map(drop));
    clopa_nn::ops::set_conv_precision(ConvPrecision::F32);
    let sum_bwd = time(&|| {
        let xv = candle_core::Var::from_tensor(&x)?;
        (xv.as_tensor() * 1.0)?.sum_all()?.backward().map(drop)
    });
    let norm = time(&|| ops::instance_norm3d(&x, &gamma, &beta, 1e-5, Some(0.01)).map(drop));
    let p = ops::ConvNorm {
        weight: &w,
        bias: None,
        stride: 1,
        padding: 1,
        gamma: &gamma,
        beta: &beta,
        eps: 1e-5,
    };
    let fwd_bwd = time(&|| {
        let xv = candle_core::Var::from_tensor(&x)?;
        let y = ops::conv_norm_act(xv.as_tensor(), &p, Some(0.01), None)?;
        y.sum_all()?.backward().map(drop)
    });
    // the backward's parts: the convolution alone (input gradient; and with the kernel's), the
    // norm + LeakyReLU alone, and the loss of a batch of 2 two-class logits at SIZE³
    let conv_fb = time(&|| {
        let xv = candle_core::Var::from_tensor(&x)?;
        let y = ops::conv3d(xv.as_tensor(), &w, None, 1, 1)?;
        y.sum_all()?.backward().map(drop)
    });
    let conv_fb_dw = time(&|| {
        let (xv, wv) = (
            candle_core::Var::from_tensor(&x)?,
            candle_core::Var::from_tensor(&w)?,
        );
        let y = ops::conv3d(xv.as_tensor(), wv.as_tensor(), None, 1, 1)?;
        y.sum_all()?.backward().map(drop)
    });
    let norm_fb = time(&|| {
        let xv = candle_core::Var::from_tensor(&x)?;
        let y = ops::instance_norm3d(xv.as_tensor(), &gamma, &beta, 1e-5, Some(0.01))?;
        y.sum_all()?.backward().map(drop)
    });
    let (lx, ly) = batch(size, 4);
    let logits = t(lx[..2 * 2 * n].to_vec(), &[2, 2, size, size, size]);
    let labels = t(ly, &[2, size, size, size]);
    let loss_fb = time(&|| {
        let lv = candle_core::Var::from_tensor(&logits)?;
        let l = clopa_pass_loss(lv.as_tensor(), &labels).map_err(candle_core::Error::wrap)?;
        l.backward().map(drop)
    });
    println!(
        "{}",
        serde_json::json!({
            "check": "ops", "device": format!("{dev:?}"), "shape": [1, 32, size, size, size],
            "conv3d_s": conv, "conv3d_fp16_s": conv16, "instance_norm_lrelu_s": norm,
            "conv_norm_lrelu_fwd_bwd_s": fwd_bwd, "conv_fwd_bwd_s": conv_fb,
            "conv_fwd_bwd_dw_s": conv_fb_dw, "norm_lrelu_fwd_bwd_s": norm_fb,
            "loss_fwd_bwd_s": loss_fb, "conv3d_bf16_s": conv_bf16,
            "conv_fwd_bwd_fp16_s": conv_fb16, "conv_fwd_bwd_bf16_s": conv_fb_bf16,
            "scale_sum_backward_s": sum_bwd,
        })
    );
}

/// The trainer's loss on the GPU, composed of candle's ops and fused (`ops/cuda_loss.cu`, the
/// default), each against the CPU's
/// composition (not the CPU's fused op, which shares the fused kernels' formulas): the
/// per-patch losses and the gradient of their mean with respect to logits (2, 2, SIZE³), and the
/// time of forward + backward on the device (no copies), best of REPS. Errors are printed.
fn loss_check(dev: &Device, size: usize, reps: usize) {
    if dev.is_cpu() {
        return;
    }
    let n = size * size * size;
    let (lx, ly) = batch(size, 4);
    let lx = &lx[..2 * 2 * n];
    let dims = (2, 2, size, size, size);
    type Loss = fn(&Tensor, &Tensor) -> clopa_nn::Result<Tensor>;
    let data = |d: &Device| -> candle_core::Result<(candle_core::Var, Tensor)> {
        let l = candle_core::Var::from_tensor(&Tensor::from_slice(lx, dims, d)?)?;
        Ok((l, Tensor::from_slice(&ly, (2, size, size, size), d)?))
    };
    // forward + backward on the device: the per-patch losses and the logits' gradient
    let fwd_bwd = |(l, y): &(candle_core::Var, Tensor), f: Loss| {
        let per = f(l.as_tensor(), y).map_err(candle_core::Error::wrap)?;
        let grads = per.mean_all()?.backward()?;
        let g = grads
            .get(l.as_tensor())
            .expect("the logits have a gradient");
        candle_core::Result::Ok((per.clone(), g.clone()))
    };
    let values = |(per, g): (Tensor, Tensor)| -> candle_core::Result<(Vec<f64>, Vec<f32>)> {
        Ok((per.to_dtype(DType::F64)?.to_vec1()?, flat(&g)))
    };
    // (the CPU's composition, not its fused op: the reference both GPU ways are held to)
    let cpu = data(&Device::Cpu).unwrap();
    let (cpu_loss, cpu_grad) =
        values(fwd_bwd(&cpu, composed_pass_loss_per_sample).unwrap()).unwrap();
    let default = clopa_nn::loss::fused_cuda_loss();
    for fused in [false, true] {
        clopa_nn::loss::set_fused_cuda_loss(fused);
        let f: Loss = clopa_pass_loss_per_sample;
        let line = data(dev).and_then(|d| {
            let (loss, grad) = values(fwd_bwd(&d, f)?)?;
            let mut best = f64::INFINITY;
            for i in 0..=reps {
                let (r, s) = timed(dev, || fwd_bwd(&d, f));
                r?;
                if i > 0 {
                    best = best.min(s);
                }
            }
            Ok(serde_json::json!({
                "check": "loss", "device": format!("{dev:?}"), "fused": fused, "size": size,
                "cpu_loss": cpu_loss, "device_loss": loss,
                "loss_max_abs_diff_rel": rel(&loss, &cpu_loss).0,
                "grads_max_abs_diff_rel": rel(&grad, &cpu_grad).0,
                "grads_mean_abs_diff_rel": rel(&grad, &cpu_grad).1,
                "device_s": best,
            }))
        });
        let line = line.unwrap_or_else(|e| {
            serde_json::json!({"check": "loss", "fused": fused, "ok": false, "error": e.to_string()})
        });
        println!("{line}");
    }
    clopa_nn::loss::set_fused_cuda_loss(default);
}

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Group `in` of a network on one device, trained by Adam (lr 1e-3, weight decay 1e-5).
struct Trainer {
    store: ParamStore,
    net: ResidualEncoderUNet,
    adam: Adam,
}

impl Trainer {
    fn new(spec: &UNetSpec, weights: &BTreeMap<String, Tensor>, dev: &Device) -> BoxResult<Self> {
        let mut store = ParamStore::new(weights.clone());
        store.make_trainable(ParamGroup::In.names(spec))?;
        store.to_device(dev)?;
        let net = ResidualEncoderUNet::new(spec, &store.var_builder(dev))?;
        let adam = Adam::new(store.vars().clone(), AdamConfig::default());
        Ok(Trainer { store, net, adam })
    }

    /// One step on `(x, y)`: the loss and the gradients it applied.
    fn step(&mut self, x: &Tensor, y: &Tensor) -> BoxResult<(f64, BTreeMap<String, Tensor>)> {
        let loss = self.loss(x, y)?;
        let g = self.grads(&loss)?;
        self.adam.step(&g)?;
        Ok((loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, g))
    }

    /// The step's three phases: forward + loss, backward, and Adam (`step` = all three).
    fn loss(&self, x: &Tensor, y: &Tensor) -> BoxResult<Tensor> {
        Ok(clopa_pass_loss(&self.net.forward(x)?, y)?)
    }

    fn grads(&self, loss: &Tensor) -> BoxResult<BTreeMap<String, Tensor>> {
        let grads = loss.backward()?;
        Ok(self
            .store
            .vars()
            .iter()
            .filter_map(|(k, v)| grads.get(v.as_tensor()).map(|g| (k.clone(), g.clone())))
            .collect())
    }
}

/// Inputs in [-1, 1) and as labels a ball in each of the 2 samples (the loss needs both classes).
fn batch(patch: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let n = patch * patch * patch;
    let c = patch as f64 / 2.0;
    let y = (0..2 * n)
        .map(|i| {
            let v = i % n;
            let (z, yy, xx) = (v / (patch * patch), v / patch % patch, v % patch);
            let r2 = (z as f64 - c).powi(2) + (yy as f64 - c).powi(2) + (xx as f64 - c).powi(2);
            f32::from(r2 < (patch as f64 / 4.0).powi(2))
        })
        .collect();
    (uniform(2 * 8 * n, seed), y)
}

fn train(spec: &UNetSpec, dev: &Device, patch: usize, steps: usize) {
    let weights = clopa_testkit::random_weights(spec, 0);
    let (x, y) = batch(patch, 2);
    let run = |d: &Device, reference: bool| -> (Vec<f64>, Vec<f32>, Vec<f64>, Vec<f32>) {
        let mut tr = Trainer::new(spec, &weights, d).unwrap();
        let xt = Tensor::from_slice(&x, (2, 8, patch, patch, patch), d).unwrap();
        let yt = Tensor::from_slice(&y, (2, patch, patch, patch), d).unwrap();
        let (mut losses, mut times, mut first_grads) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..steps {
            let ((loss, g), s) = timed(d, || on(d, reference, || tr.step(&xt, &yt)).unwrap());
            times.push(s);
            losses.push(loss);
            if first_grads.is_empty() {
                first_grads = g.values().flat_map(flat).collect();
            }
        }
        let params: Vec<f32> = tr
            .store
            .vars()
            .values()
            .flat_map(|v| flat(v.as_tensor()))
            .collect();
        (losses, params, times, first_grads)
    };
    let (cpu_loss, cpu_params, cpu_times, cpu_grads) = run(&Device::Cpu, true);
    let (dev_loss, dev_params, dev_times, dev_grads) = run(dev, false);
    let after_first = |t: &[f64]| {
        let r = if t.len() > 1 { &t[1..] } else { t };
        r.iter().sum::<f64>() / r.len() as f64
    };
    let (max_rel, mean_rel) = rel(&dev_params, &cpu_params);
    // in the store's (sorted) order, like the trained parameters
    let mut names = ParamGroup::In.names(spec);
    names.sort();
    let start: Vec<f32> = names.iter().flat_map(|k| flat(&weights[k])).collect();
    println!(
        "{}",
        serde_json::json!({
            "check": "train", "device": format!("{dev:?}"), "patch": patch, "batch": 2,
            "group": "in", "steps": steps,
            "cpu_loss": cpu_loss, "device_loss": dev_loss,
            "grads_max_abs_diff_rel": rel(&dev_grads, &cpu_grads).0,
            "grads_mean_abs_diff_rel": rel(&dev_grads, &cpu_grads).1,
            "params_max_abs_diff_rel": max_rel, "params_mean_abs_diff_rel": mean_rel,
            "params_moved_rel": rel(&cpu_params, &start).0,
            "device_s_per_step": after_first(&dev_times), "cpu_s_per_step": after_first(&cpu_times),
        })
    );
}

/// Two training steps at the paper's patch (192³, batch 2) on the device alone, with fp32 and
/// with bf16 convolutions: whether they fit in its memory (candle keeps every intermediate of the
/// graph until the backward), the time of the second by phase, and both losses (bf16's against
/// fp32's).
/// Errors (out of memory) are printed, not fatal.
fn train_device_only(spec: &UNetSpec, dev: &Device, patch: usize) {
    if dev.is_cpu() {
        return;
    }
    // each step timed by phase (forward + loss, backward, Adam), the device synchronised between
    let run = || -> BoxResult<(Vec<[f64; 3]>, Vec<f64>)> {
        let mut tr = Trainer::new(spec, &clopa_testkit::random_weights(spec, 0), dev)?;
        let (x, y) = batch(patch, 3);
        let xt = Tensor::from_vec(x, (2, 8, patch, patch, patch), dev)?;
        let yt = Tensor::from_vec(y, (2, patch, patch, patch), dev)?;
        let (mut times, mut losses) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let (loss, f) = timed(dev, || tr.loss(&xt, &yt));
            let loss = loss?;
            let (g, b) = timed(dev, || tr.grads(&loss));
            let g = g?;
            let (r, a) = timed(dev, || tr.adam.step(&g));
            r?;
            losses.push(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?);
            times.push([f, b, a]);
        }
        Ok((times, losses))
    };
    // fp32, then bf16 convolutions (what clopa-train-episode --precision bf16 runs) and fp16
    // (PyTorch's autocast dtype), with the fused loss (the default); then fp32 with the composed
    // loss, what the fused one saves
    let configs = [
        (ConvPrecision::F32, true),
        (ConvPrecision::Bf16, true),
        (ConvPrecision::F16, true),
        (ConvPrecision::F32, false),
    ];
    let default = clopa_nn::loss::fused_cuda_loss();
    for (p, fused) in configs {
        clopa_nn::ops::set_conv_precision(p);
        clopa_nn::loss::set_fused_cuda_loss(fused);
        let r = run();
        clopa_nn::ops::set_conv_precision(ConvPrecision::F32);
        clopa_nn::loss::set_fused_cuda_loss(default);
        let line = match r {
            Ok((t, losses)) => serde_json::json!({
                "check": "train-device-only", "precision": format!("{p:?}"), "patch": patch,
                "batch": 2, "group": "in", "ok": true, "fused_loss": fused,
                "device_s_per_step": t[1].iter().sum::<f64>(),
                "first_step_s": t[0].iter().sum::<f64>(),
                "forward_loss_s": t[1][0], "backward_s": t[1][1], "adam_s": t[1][2],
                "loss": losses,
            }),
            Err(e) => serde_json::json!({
                "check": "train-device-only", "precision": format!("{p:?}"), "patch": patch,
                "batch": 2, "group": "in", "ok": false, "fused_loss": fused,
                "error": e.to_string(),
            }),
        };
        println!("{line}");
    }
}

fn main() {
    clopa_nn::ops::cap_isa(std::env::var("CLOPA_MAX_ISA").ok().as_deref()).unwrap();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| args.get(i).map_or(d, |v| v.parse().unwrap());
    let dev = clopa_nn::device(args.first().map_or("cuda", String::as_str)).unwrap();
    let (size, patch, steps, reps) = (num(1, 192), num(2, 128), num(3, 3), num(4, 3));
    let spec = UNetSpec::from_architecture(&Architecture::nninteractive_v1(), 8, 2).unwrap();
    // which way cuDNN's algorithms are picked (clopa-nn reads the variable; the lines below don't say)
    let find = std::env::var("CLOPA_CUDNN_BENCHMARK").is_ok_and(|v| v == "1");
    let api = if std::env::var("CLOPA_CUDNN_API").is_ok_and(|v| v == "graph") {
        "graph"
    } else {
        "legacy"
    };
    println!(
        "{}",
        serde_json::json!({"check": "config", "device": format!("{dev:?}"),
            "cudnn_benchmark": find, "cudnn_api": api,
            "cuda_pool": std::env::var("CLOPA_CUDA_POOL").unwrap_or_else(|_| "keep".into())})
    );
    forward(&spec, &dev, size, reps);
    op_times(&dev, size, reps);
    train(&spec, &dev, patch, steps);
    if args.len() <= 5 || args[5] != "--no-paper-size" {
        train_device_only(&spec, &dev, 192);
    }
    loss_check(&dev, size, reps);
    if !dev.is_cpu() {
        println!(
            "{}",
            serde_json::json!({"check": "cudnn", "choices": clopa_nn::ops::cudnn_choices()})
        );
    }
}
