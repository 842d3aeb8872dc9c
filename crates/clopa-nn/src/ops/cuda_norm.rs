//! The instance norm of [`super::portable::norm_act`] on CUDA as fused kernels
//! (`cuda_norm.cu`, compiled to PTX by build.rs): the statistics in one read of `x`, the
//! normalisation + affine + residual + LeakyReLU in one read and one write, the backward in two
//! reads and one write. Composed of candle's ops the same norm ran ~8 kernels with full-size
//! temporaries and took 28 ms per 32 × 192³ plane set on an H200, 7× PyTorch's 4 ms
//! (BENCHMARKS.md, "GPU (CUDA)").
//!
//! Each launch is a candle custom op without a backward (the caller grafts the result into the
//! graph): applied to its first tensor, with the others held by the op and read-locked while it
//! runs — or, for the normalisation itself, a closure run inside the grafted op's own forward
//! ([`apply_launch`]), which writes that op's output. Every tensor is contiguous (the caller makes it so); the data — `x`, the residual, `y`,
//! `dy` — is f32, f16 or bf16 alike (the kernels compute in f32), the statistics, sums, γ and β
//! are f32. Built only with the `cuda`
//! feature; no CI machine has a GPU, so `examples/gpu_check` tests these on a lent GPU against the
//! CPU kernels (forward logits and training gradients of the whole network).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{
    CudaView, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor,
};

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

/// A contiguous view of type `T` of a CUDA storage.
fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    super::cuda_view(NAME, "arguments", s, l)
}

const NAME: &str = "instance_norm3d (CUDA)";

/// Pushes `v`, or a null pointer where it is absent (the kernels' optional arguments).
fn arg_or_null<'a, 'b: 'a, 'c: 'b, T>(
    bld: &mut LaunchArgs<'a>,
    v: Option<&'b CudaView<'c, T>>,
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
        match s.dtype() {
            DType::F32 => self.launch::<f32>(s, l, "f32"),
            DType::F16 => self.launch::<half::f16>(s, l, "f16"),
            DType::BF16 => self.launch::<half::bf16>(s, l, "bf16"),
            dt => Err(invalid(
                NAME,
                format!("data must be f32, f16 or bf16, got {dt:?}"),
            )),
        }
    }
}

impl Launch {
    /// The launch on data of type `T`, whose kernels are named with `suffix`.
    fn launch<T: CudaDType + DeviceRepr>(
        &self,
        s: &CudaStorage,
        l: &Layout,
        suffix: &str,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let stream = dev.cuda_stream();
        let func = |name: &str| dev.get_or_load_custom_func(name, MODULE, PTX);
        let typed = |name: &str| func(&format!("{name}_{suffix}"));
        let first = view::<T>(s, l)?;
        let guards: Vec<_> = self.held.iter().map(Tensor::storage_and_layout).collect();
        let storages = guards
            .iter()
            .map(|(s, l)| match &**s {
                Storage::Cuda(s) => Ok((s, *l)),
                _ => Err(invalid(NAME, "every argument must be on the GPU")),
            })
            .collect::<Result<Vec<_>>>()?;
        // held tensor i as data (T) or as f32 (statistics, sums, γ, β), of `len` elements: a
        // wrong caller would have the kernels read out of bounds
        let (p, n) = (self.p, self.n);
        let data = |i: usize, len: usize| -> Result<CudaView<'_, T>> {
            sized(view::<T>(storages[i].0, storages[i].1)?, len)
        };
        let params = |i: usize, len: usize| -> Result<CudaView<'_, f32>> {
            sized(view::<f32>(storages[i].0, storages[i].1)?, len)
        };
        if first.len() != p * n {
            return Err(invalid(NAME, "argument sizes do not match the planes"));
        }
        let k = n.div_ceil(CHUNK);
        let (n64, c32) = (n as i64, self.c as i32);
        let null = 0usize;
        let slope_args = |slope: Option<f32>| (i32::from(slope.is_some()), slope.unwrap_or(0.0));
        // SAFETY (of every uninitialised allocation below): the kernels write each element of
        // their output (every plane, every chunk; the final kernels every plane) before anything
        // reads it.
        let out = match self.kind {
            Kind::Stats { eps } => {
                let mut part = unsafe { stream.alloc::<f64>(2 * p * k) }.w()?;
                let mut stats = unsafe { stream.alloc::<f32>(2 * p) }.w()?;
                let f = typed("clopa_norm_stats_partial")?;
                let mut bld = f.builder();
                bld.arg(&first).arg(&mut part).arg(&n64);
                unsafe { bld.launch(grid(k, p)) }.w()?;
                let f = func("clopa_norm_stats_final")?;
                let k32 = k as i32;
                let mut bld = f.builder();
                bld.arg(&part).arg(&mut stats).arg(&k32).arg(&n64).arg(&eps);
                unsafe { bld.launch(grid(p, 1)) }.w()?;
                let stats = CudaStorage::wrap_cuda_slice(stats, dev);
                return Ok((stats, Shape::from((p, 2))));
            }
            Kind::Apply { slope, residual } => {
                let (stats, gamma, beta) =
                    (params(0, 2 * p)?, params(1, self.c)?, params(2, self.c)?);
                let r = residual.then(|| data(3, p * n)).transpose()?;
                let mut y = unsafe { stream.alloc::<T>(p * n) }.w()?;
                let (has, s) = slope_args(slope);
                let f = typed("clopa_norm_apply")?;
                let mut bld = f.builder();
                bld.arg(&first).arg(&stats).arg(&gamma).arg(&beta);
                arg_or_null(&mut bld, r.as_ref(), &null);
                bld.arg(&mut y).arg(&n64).arg(&c32).arg(&has).arg(&s);
                unsafe { bld.launch(grid(k, p)) }.w()?;
                y
            }
            Kind::BwdSums { slope } => {
                let (dy, stats) = (data(0, p * n)?, params(1, 2 * p)?);
                let y = slope.map(|_| data(2, p * n)).transpose()?;
                let mut part = unsafe { stream.alloc::<f64>(2 * p * k) }.w()?;
                let mut sums = unsafe { stream.alloc::<f32>(2 * p) }.w()?;
                let (has, s) = slope_args(slope);
                let f = typed("clopa_norm_bwd_partial")?;
                let mut bld = f.builder();
                bld.arg(&first);
                arg_or_null(&mut bld, y.as_ref(), &null);
                bld.arg(&dy).arg(&stats).arg(&mut part).arg(&n64);
                bld.arg(&has).arg(&s);
                unsafe { bld.launch(grid(k, p)) }.w()?;
                let f = func("clopa_norm_bwd_final")?;
                let k32 = k as i32;
                let mut bld = f.builder();
                bld.arg(&part).arg(&mut sums).arg(&k32);
                unsafe { bld.launch(grid(p, 1)) }.w()?;
                let sums = CudaStorage::wrap_cuda_slice(sums, dev);
                return Ok((sums, Shape::from((p, 2))));
            }
            Kind::BwdDx { slope } => {
                let (dy, stats, sums) = (data(0, p * n)?, params(1, 2 * p)?, params(2, 2 * p)?);
                let gamma = params(3, self.c)?;
                let y = slope.map(|_| data(4, p * n)).transpose()?;
                let mut dx = unsafe { stream.alloc::<T>(p * n) }.w()?;
                let (has, s) = slope_args(slope);
                let f = typed("clopa_norm_bwd_dx")?;
                let mut bld = f.builder();
                bld.arg(&first);
                arg_or_null(&mut bld, y.as_ref(), &null);
                bld.arg(&dy).arg(&stats).arg(&sums).arg(&gamma);
                bld.arg(&mut dx).arg(&n64).arg(&c32).arg(&has).arg(&s);
                unsafe { bld.launch(grid(k, p)) }.w()?;
                dx
            }
            Kind::LeakyGrad { slope } => {
                let len = first.len();
                let dy = data(0, len)?;
                let mut g = unsafe { stream.alloc::<T>(len) }.w()?;
                let blocks = len.div_ceil(THREADS as usize * 8).clamp(1, 65535 * 16);
                let f = typed("clopa_leaky_grad")?;
                let len64 = len as i64;
                let mut bld = f.builder();
                bld.arg(&first).arg(&dy).arg(&mut g).arg(&len64).arg(&slope);
                unsafe { bld.launch(grid(blocks, 1)) }.w()?;
                g
            }
        };
        Ok((CudaStorage::wrap_cuda_slice(out, dev), l.shape().clone()))
    }
}

/// `v` if it has `len` elements.
fn sized<T>(v: CudaView<'_, T>, len: usize) -> Result<CudaView<'_, T>> {
    if v.len() == len {
        Ok(v)
    } else {
        Err(invalid(NAME, "argument sizes do not match the planes"))
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
    planes: (usize, usize, usize),
) -> Result<Tensor> {
    let (first, launch) = prepare(first, kind, held, planes)?;
    first.apply_op1_no_bwd(&launch)
}

/// The launch of `kind` on `first` (detached, contiguous) holding `held`.
fn prepare(
    first: &Tensor,
    kind: Kind,
    held: &[&Tensor],
    (p, c, n): (usize, usize, usize),
) -> Result<(Tensor, Launch)> {
    // (the kernels would take another GPU's pointers as this one's)
    if held.iter().any(|t| !t.device().same_device(first.device())) {
        return Err(invalid(NAME, "every argument must be on the same GPU"));
    }
    let held = held
        .iter()
        .map(|t| t.detach().contiguous())
        .collect::<Result<Vec<_>>>()?;
    let launch = Launch {
        kind,
        p,
        c,
        n,
        held,
    };
    Ok((first.detach().contiguous()?, launch))
}

/// (mean, 1 / sqrt(biased variance + eps)) of each (sample, channel) plane of `x` (B, C, N), as
/// (B·C, 2); sums in f64.
pub(crate) fn stats(x: &Tensor, eps: f64) -> Result<Tensor> {
    run(x, Kind::Stats { eps }, &[], planes(x)?)
}

/// `act((x − mean)·rstd·γ + β [+ residual])` for `x` (B, C, N), `stats` from [`stats`], γ, β
/// (C,), the residual shaped like `x`; `act` the LeakyReLU with `slope`, or none: as a launch to
/// run later, into a fresh storage it returns (shaped like `x`), so that a grafted op's forward
/// writes its own output with it (`portable::Pending`) instead of copying a computed one.
pub(crate) fn apply_launch(
    x: &Tensor,
    stats: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    residual: Option<&Tensor>,
    slope: Option<f64>,
) -> Result<impl FnOnce() -> Result<(CudaStorage, Shape)> + Send + use<>> {
    let kind = Kind::Apply {
        slope: slope.map(|s| s as f32),
        residual: residual.is_some(),
    };
    let mut held = vec![stats, gamma, beta];
    held.extend(residual);
    let (x, launch) = prepare(x, kind, &held, planes(x)?)?;
    Ok(move || {
        let (s, l) = x.storage_and_layout();
        match &*s {
            Storage::Cuda(s) => launch.cuda_fwd(s, l),
            _ => Err(invalid(NAME, "every argument must be on the GPU")),
        }
    })
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
