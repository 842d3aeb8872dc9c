//! CLoPA's per-pass loss ([`crate::loss::clopa_pass_loss_per_sample`]) on CUDA as fused kernels
//! (`cuda_loss.cu`, compiled to PTX by build.rs): the forward in one read of the logits (the
//! log-softmax, the cross-entropy and the Dice sums of each patch, in f64), the gradient in one
//! more read and one write. Composed of candle's ops the loss and its gradient took 48 ms for a
//! batch of 2 two-class 192³ patches on an H200, against PyTorch's 1.7 ms (BENCHMARKS.md).
//!
//! The forward is a candle custom op on the logits giving `(B, 1 + S)` f64: each patch's loss,
//! then its S sums (the CE sum; I, P, T of each foreground class), which the backward reads back
//! from the op's result; the caller takes column 0. Built only with the `cuda` feature; no CI
//! machine has a GPU, so `examples/gpu_check` checks it on a lent GPU against the composition on
//! the CPU (the training step's loss and gradients).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor,
};

use super::invalid;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cuda_loss.ptx"));
const MODULE: &str = "clopa_cuda_loss";
const NAME: &str = "clopa_pass_loss (CUDA)";
/// As in cuda_loss.cu (keep them equal): threads per block, voxels per block, most classes.
const THREADS: u32 = 256;
const CHUNK: usize = 4096;
/// The most classes the kernels take (their per-thread arrays); more go to the composition.
pub(crate) const MAX_C: usize = 8;

/// Sums per patch: the CE sum, then I, P, T per foreground class.
fn sums(c: usize) -> usize {
    1 + 3 * (c - 1)
}

/// A contiguous view of a CUDA storage of `T`.
fn view<'a, T: candle_core::cuda_backend::CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<CudaView<'a, T>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| invalid(NAME, "arguments must be contiguous"))?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// [`view`] of a held tensor's storage, which must be on the GPU.
fn held_view<'a, T: candle_core::cuda_backend::CudaDType>(
    s: &'a Storage,
    l: &Layout,
) -> Result<CudaView<'a, T>> {
    match s {
        Storage::Cuda(s) => view(s, l),
        _ => Err(invalid(NAME, "every argument must be on the GPU")),
    }
}

/// The forward: logits (B, C, N) f32 → (B, 1 + S) f64.
#[derive(Clone)]
struct Forward {
    /// (B, N) f32 labels
    labels: Tensor,
    b: usize,
    c: usize,
    n: usize,
}

/// The gradient with respect to the logits, from the forward's result and its gradient.
struct Backward {
    labels: Tensor,
    res: Tensor,
    grad: Tensor,
    b: usize,
    c: usize,
    n: usize,
}

fn grid(k: usize, b: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (k as u32, b as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CustomOp1 for Forward {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(invalid(NAME, "runs on CUDA tensors only"))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (b, c, n) = (self.b, self.c, self.n);
        let dev = s.device().clone();
        let stream = dev.cuda_stream();
        let logits = view::<f32>(s, l)?;
        let (ls, ll) = self.labels.storage_and_layout();
        let labels = held_view::<f32>(&ls, ll)?;
        if logits.len() != b * c * n || labels.len() != b * n {
            return Err(invalid(NAME, "argument sizes do not match (B, C, N)"));
        }
        let (k, s_) = (n.div_ceil(CHUNK), sums(c));
        // SAFETY (of both uninitialised allocations): the partial kernel writes every block's
        // sums, the final kernel every patch's row, before anything reads them.
        let mut part = unsafe { stream.alloc::<f64>(b * k * s_) }.w()?;
        let mut out = unsafe { stream.alloc::<f64>(b * (1 + s_)) }.w()?;
        let (n64, c32, k32) = (n as i64, c as i32, k as i32);
        let func = |name: &str| dev.get_or_load_custom_func(name, MODULE, PTX);
        let f = func("clopa_loss_partial")?;
        let mut bld = f.builder();
        bld.arg(&logits)
            .arg(&labels)
            .arg(&mut part)
            .arg(&n64)
            .arg(&c32);
        // SAFETY: the sizes were checked above; the kernel reads B·C·N logits and B·N labels.
        unsafe { bld.launch(grid(k, b)) }.w()?;
        let f = func("clopa_loss_final")?;
        let smooth = crate::loss::DICE_SMOOTH;
        let mut bld = f.builder();
        bld.arg(&part)
            .arg(&mut out)
            .arg(&k32)
            .arg(&n64)
            .arg(&c32)
            .arg(&smooth);
        // SAFETY: `part` holds B·K·S partials, `out` B·(1 + S) values.
        unsafe { bld.launch(grid(b, 1)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((b, 1 + s_)),
        ))
    }

    fn bwd(&self, logits: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = Backward {
            labels: self.labels.clone(),
            res: res.detach(),
            grad: grad.detach().contiguous()?,
            b: self.b,
            c: self.c,
            n: self.n,
        };
        logits.detach().apply_op1_no_bwd(&op).map(Some)
    }
}

impl CustomOp1 for Backward {
    fn name(&self) -> &'static str {
        "clopa_pass_loss-bwd (CUDA)"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(invalid(NAME, "runs on CUDA tensors only"))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (b, c, n) = (self.b, self.c, self.n);
        let dev = s.device().clone();
        let stream = dev.cuda_stream();
        let logits = view::<f32>(s, l)?;
        let (ls, ll) = self.labels.storage_and_layout();
        let labels = held_view::<f32>(&ls, ll)?;
        let (rs, rl) = self.res.storage_and_layout();
        let res = held_view::<f64>(&rs, rl)?;
        let (gs, gl) = self.grad.storage_and_layout();
        let grad = held_view::<f64>(&gs, gl)?;
        let row = 1 + sums(c);
        if logits.len() != b * c * n
            || labels.len() != b * n
            || res.len() != b * row
            || grad.len() != b * row
        {
            return Err(invalid(NAME, "argument sizes do not match (B, C, N)"));
        }
        // SAFETY: the kernel writes every element of every patch's logits' gradient.
        let mut dl = unsafe { stream.alloc::<f32>(b * c * n) }.w()?;
        let (n64, c32) = (n as i64, c as i32);
        let smooth = crate::loss::DICE_SMOOTH;
        let f = dev.get_or_load_custom_func("clopa_loss_bwd", MODULE, PTX)?;
        let mut bld = f.builder();
        bld.arg(&logits)
            .arg(&labels)
            .arg(&res)
            .arg(&grad)
            .arg(&mut dl);
        bld.arg(&n64).arg(&c32).arg(&smooth);
        // SAFETY: the sizes were checked above.
        unsafe { bld.launch(grid(n.div_ceil(CHUNK), b)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(dl, dev), l.shape().clone()))
    }
}

/// [`crate::loss::clopa_pass_loss_per_sample`] of CUDA `logits` (B, C, D, H, W) with 2 ≤ C ≤
/// [`MAX_C`] and `target` (B, 1, D, H, W), shapes already checked: `(B,)` f64, differentiable
/// with respect to the logits.
pub(crate) fn pass_loss_per_sample(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let dims = logits.dims();
    let (b, c) = (dims[0], dims[1]);
    let n: usize = dims[2..].iter().product();
    if !(2..=MAX_C).contains(&c) || b > 65535 {
        return Err(invalid(
            NAME,
            format!("takes 2..={MAX_C} classes and at most 65535 patches"),
        ));
    }
    if !target.device().same_device(logits.device()) {
        return Err(invalid(
            NAME,
            "the logits and labels must be on the same GPU",
        ));
    }
    let labels = target.to_dtype(DType::F32)?.reshape((b, n))?.contiguous()?;
    let x = logits
        .to_dtype(DType::F32)?
        .reshape((b, c, n))?
        .contiguous()?;
    let out = x.apply_op1(Forward { labels, b, c, n })?;
    out.narrow(1, 0, 1)?.squeeze(1)
}
