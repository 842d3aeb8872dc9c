//! The instance norm of [`super::portable::norm_act`] on CUDA as fused kernels
//! (`cuda_norm.cu`, compiled to PTX by build.rs): the statistics in one read of `x`, the
//! normalisation + affine + residual + LeakyReLU in one read and one write, the backward in two
//! reads and one write. Composed of candle's ops the same norm ran ~8 kernels with full-size
//! temporaries and took 28 ms per 32 × 192³ plane set on an H200, 7× PyTorch's 4 ms
//! (BENCHMARKS.md, "GPU (CUDA)").
//!
//! Each launch is a candle custom op without a backward (the caller grafts the result into the
//! graph): applied to its first tensor, with the others held by the op and read-locked while it
//! runs. Every tensor is f32 and contiguous (the caller makes it so). Built only with the `cuda`
//! feature; no CI machine has a GPU, so `examples/gpu_check` tests these on a lent GPU against the
//! CPU kernels (forward logits and training gradients of the whole network).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{
    CudaView, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

use super::invalid;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cuda_norm.ptx"));
const MODULE: &str = "clopa_cuda_norm";
/// As in cuda_norm.cu (THREADS, CHUNK; keep them equal): threads per block, elements per block.
const THREADS: u32 = 256;
const CHUNK: usize = 4096;

/// Which kernel(s) a launch runs; the tensors it holds besides the one it is applied to.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// x → (mean, rstd) per plane, (P, 2)
    Stats { eps: f64 },
    /// x; stats, γ, β[, residual] → y
    Apply { slope: Option<f32>, residual: bool },
    /// x; dy, stats[, y] → (Σg, Σg·x̂) per plane, (P, 2)
    BwdSums { slope: Option<f32> },
    /// x; dy, stats, sums, γ[, y] → dx
    BwdDx { slope: Option<f32> },
    /// y; dy → g = LeakyReLU'(y)·dy
    LeakyGrad { slope: f32 },
}

struct Launch {
    kind: Kind,
    /// planes (B·C), channels, elements per plane
    p: usize,
    c: usize,
    n: usize,
    held: Vec<Tensor>,
}

/// A contiguous f32 view of a CUDA storage.
fn view<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
    super::cuda_view(NAME, "arguments", s, l)
}

const NAME: &str = "instance_norm3d (CUDA)";

/// Pushes `v`, or a null pointer where it is absent (the kernels' optional arguments).
fn arg_or_null<'a, 'b: 'a, 'c: 'b>(
    bld: &mut LaunchArgs<'a>,
    v: Option<&'b CudaView<'c, f32>>,
    null: &'b usize,
) {
    match v {
        Some(v) => bld.arg(v),
        None => bld.arg(null),
    };
}

fn grid(k: usize, p: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (k as u32, p as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CustomOp1 for Launch {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(invalid(NAME, "runs on CUDA tensors only"))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let stream = dev.cuda_stream();
        let func = |name: &str| dev.get_or_load_custom_func(name, MODULE, PTX);
        let first = view(s, l)?;
        let guards: Vec<_> = self.held.iter().map(Tensor::storage_and_layout).collect();
        let held = guards
            .iter()
            .map(|(s, l)| match &**s {
                Storage::Cuda(s) => view(s, l),
                _ => Err(invalid(NAME, "every argument must be on the GPU")),
            })
            .collect::<Result<Vec<_>>>()?;
        let (p, n) = (self.p, self.n);
        // the lengths the kernels index by: a wrong caller would read out of bounds
        let lens: &[usize] = match self.kind {
            Kind::Stats { .. } => &[],
            Kind::Apply { .. } => &[2 * p, self.c, self.c, p * n],
            Kind::BwdSums { .. } => &[p * n, 2 * p, p * n],
            Kind::BwdDx { .. } => &[p * n, 2 * p, 2 * p, self.c, p * n],
            Kind::LeakyGrad { .. } => &[p * n],
        };
        if first.len() != p * n || held.iter().zip(lens).any(|(h, &len)| h.len() != len) {
            return Err(invalid(NAME, "argument sizes do not match the planes"));
        }
        let k = n.div_ceil(CHUNK);
        let (n64, c32) = (n as i64, self.c as i32);
        let null = 0usize;
        let slope_args = |slope: Option<f32>| (i32::from(slope.is_some()), slope.unwrap_or(0.0));
        // SAFETY (of every uninitialised allocation below): the kernels write each element of
        // their output (every plane, every chunk; the final kernels every plane) before anything
        // reads it.
        let (out, shape) = match self.kind {
            Kind::Stats { eps } => {
                let mut part = unsafe { stream.alloc::<f64>(2 * p * k) }.w()?;
                let mut stats = unsafe { stream.alloc::<f32>(2 * p) }.w()?;
                let f = func("clopa_norm_stats_partial")?;
                let mut bld = f.builder();
                bld.arg(&first).arg(&mut part).arg(&n64);
                unsafe { bld.launch(grid(k, p)) }.w()?;
                let f = func("clopa_norm_stats_final")?;
                let k32 = k as i32;
                let mut bld = f.builder();
                bld.arg(&part).arg(&mut stats).arg(&k32).arg(&n64).arg(&eps);
                unsafe { bld.launch(grid(p, 1)) }.w()?;
                (stats, Shape::from((p, 2)))
            }
            Kind::Apply { slope, residual } => {
                let mut y = unsafe { stream.alloc::<f32>(p * n) }.w()?;
                let (has, s) = slope_args(slope);
                let f = func("clopa_norm_apply")?;
                let mut bld = f.builder();
                bld.arg(&first).arg(&held[0]).arg(&held[1]).arg(&held[2]);
                arg_or_null(&mut bld, residual.then(|| &held[3]), &null);
                bld.arg(&mut y).arg(&n64).arg(&c32).arg(&has).arg(&s);
                unsafe { bld.launch(grid(k, p)) }.w()?;
                (y, l.shape().clone())
            }
            Kind::BwdSums { slope } => {
                let mut part = unsafe { stream.alloc::<f64>(2 * p * k) }.w()?;
                let mut sums = unsafe { stream.alloc::<f32>(2 * p) }.w()?;
                let (has, s) = slope_args(slope);
                let f = func("clopa_norm_bwd_partial")?;
                let mut bld = f.builder();
                bld.arg(&first);
                arg_or_null(&mut bld, slope.map(|_| &held[2]), &null);
                bld.arg(&held[0]).arg(&held[1]).arg(&mut part).arg(&n64);
                bld.arg(&has).arg(&s);
                unsafe { bld.launch(grid(k, p)) }.w()?;
                let f = func("clopa_norm_bwd_final")?;
                let k32 = k as i32;
                let mut bld = f.builder();
                bld.arg(&part).arg(&mut sums).arg(&k32);
                unsafe { bld.launch(grid(p, 1)) }.w()?;
                (sums, Shape::from((p, 2)))
            }
            Kind::BwdDx { slope } => {
                let mut dx = unsafe { stream.alloc::<f32>(p * n) }.w()?;
                let (has, s) = slope_args(slope);
                let f = func("clopa_norm_bwd_dx")?;
                let mut bld = f.builder();
                bld.arg(&first);
                arg_or_null(&mut bld, slope.map(|_| &held[4]), &null);
                bld.arg(&held[0]).arg(&held[1]).arg(&held[2]).arg(&held[3]);
                bld.arg(&mut dx).arg(&n64).arg(&c32).arg(&has).arg(&s);
                unsafe { bld.launch(grid(k, p)) }.w()?;
                (dx, l.shape().clone())
            }
            Kind::LeakyGrad { slope } => {
                let len = first.len();
                let mut g = unsafe { stream.alloc::<f32>(len) }.w()?;
                let blocks = len.div_ceil(THREADS as usize * 8).clamp(1, 65535 * 16);
                let f = func("clopa_leaky_grad")?;
                let len64 = len as i64;
                let mut bld = f.builder();
                bld.arg(&first)
                    .arg(&held[0])
                    .arg(&mut g)
                    .arg(&len64)
                    .arg(&slope);
                unsafe { bld.launch(grid(blocks, 1)) }.w()?;
                (g, l.shape().clone())
            }
        };
        Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
    }
}

/// The planes of `x` (B, C, N) as (P, C, N) bookkeeping.
fn planes(x: &Tensor) -> Result<(usize, usize, usize)> {
    let (b, c, n) = x.dims3()?;
    if b * c > 65535 {
        return Err(invalid(
            NAME,
            format!("{b}·{c} planes are more than one CUDA grid dimension holds (65535)"),
        ));
    }
    Ok((b * c, c, n))
}

fn run(
    first: &Tensor,
    kind: Kind,
    held: &[&Tensor],
    (p, c, n): (usize, usize, usize),
) -> Result<Tensor> {
    // (the kernels would take another GPU's pointers as this one's)
    if held.iter().any(|t| !t.device().same_device(first.device())) {
        return Err(invalid(NAME, "every argument must be on the same GPU"));
    }
    let held = held
        .iter()
        .map(|t| t.detach().contiguous())
        .collect::<Result<Vec<_>>>()?;
    first.detach().contiguous()?.apply_op1_no_bwd(&Launch {
        kind,
        p,
        c,
        n,
        held,
    })
}

/// (mean, 1 / sqrt(biased variance + eps)) of each (sample, channel) plane of `x` (B, C, N), as
/// (B·C, 2); sums in f64.
pub(crate) fn stats(x: &Tensor, eps: f64) -> Result<Tensor> {
    run(x, Kind::Stats { eps }, &[], planes(x)?)
}

/// `act((x − mean)·rstd·γ + β [+ residual])` for `x` (B, C, N), `stats` from [`stats`], γ, β
/// (C,), the residual shaped like `x`; `act` the LeakyReLU with `slope`, or none.
pub(crate) fn apply(
    x: &Tensor,
    stats: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    residual: Option<&Tensor>,
    slope: Option<f64>,
) -> Result<Tensor> {
    let kind = Kind::Apply {
        slope: slope.map(|s| s as f32),
        residual: residual.is_some(),
    };
    let mut held = vec![stats, gamma, beta];
    held.extend(residual);
    run(x, kind, &held, planes(x)?)
}

/// (Σg, Σg·x̂) of each plane, (B·C, 2), where g = act'(y)·dy and x̂ = (x − mean)·rstd; `y` is
/// the forward's result (needed only with a slope).
pub(crate) fn bwd_sums(
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    stats: &Tensor,
    slope: Option<f64>,
) -> Result<Tensor> {
    let kind = Kind::BwdSums {
        slope: slope.map(|s| s as f32),
    };
    run(x, kind, &[dy, stats, y], planes(x)?)
}

/// dx = γ·rstd·(g − mean(g) − x̂·mean(g·x̂)), with `sums` from [`bwd_sums`].
pub(crate) fn bwd_dx(
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    stats: &Tensor,
    sums: &Tensor,
    gamma: &Tensor,
    slope: Option<f64>,
) -> Result<Tensor> {
    let kind = Kind::BwdDx {
        slope: slope.map(|s| s as f32),
    };
    run(x, kind, &[dy, stats, sums, gamma, y], planes(x)?)
}

/// `dy` where `y > 0`, else `slope·dy`, for `y`, `dy` of any (equal) shape.
pub(crate) fn leaky_grad(y: &Tensor, dy: &Tensor, slope: f64) -> Result<Tensor> {
    let n = y.elem_count();
    let kind = Kind::LeakyGrad {
        slope: slope as f32,
    };
    run(y, kind, &[dy], (1, 1, n))
}
