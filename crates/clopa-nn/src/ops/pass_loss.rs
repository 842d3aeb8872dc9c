//! CLoPA's per-pass loss ([`crate::loss::clopa_pass_loss_per_sample`]) as one fused op: the
//! forward in one read of the logits (each voxel's log-softmax, cross-entropy and Dice terms,
//! summed per patch in f64), the gradient in one more read and one write. On the CPU with rayon;
//! on CUDA (the `cuda` feature) as the kernels of `cuda_loss.cu`, which compute the same terms
//! over the same blocks of voxels (not to the same bits: CUDA's `expf`/`logf`, its fused
//! multiply-adds and its in-block summation order differ from the CPU's).
//!
//! Composed of candle's ops ([`crate::loss::composed_pass_loss_per_sample`], the reference the
//! tests hold this to) the loss and its gradient run ~60 single-threaded kernels with full-size
//! temporaries: on 2 CPU cores 11 ms for 2 × 2 × 32³ logits (fused: 3.7 ms; six passes a step,
//! ~10 % of a tiny-model training step), on an H200 48 ms for 2 × 2 × 192³, against PyTorch's
//! 1.7 ms (BENCHMARKS.md).
//!
//! The forward is a candle custom op on the logits `(B, C, N)` giving `(B, 1 + S)` f64: each
//! patch's loss, then its S sums (the CE sum; I, P, T of each foreground class), which the
//! backward reads back from the op's result; the caller takes column 0. Every sum is taken in two
//! fixed stages (one per block of [`CHUNK`] voxels, then the blocks in order), so the result does
//! not depend on the thread count.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::{SyncPtr, cpu_slice, invalid};

const NAME: &str = "clopa_pass_loss";
/// Voxels per block (as `CHUNK` in cuda_loss.cu: keep them equal).
const CHUNK: usize = 4096;
/// The most classes the fused op takes (the kernels' per-thread arrays; `MAX_C` in
/// cuda_loss.cu); more go to the composition.
pub(crate) const MAX_C: usize = 8;
const MAX_SUMS: usize = 1 + 3 * (MAX_C - 1);

/// Sums per patch: the CE sum, then I, P, T per foreground class.
fn sums(c: usize) -> usize {
    1 + 3 * (c - 1)
}

/// Checks the lengths the kernels index by against `(B, C, N)` (a wrong caller would read out of
/// bounds): the logits', the labels', and the backward's result's and gradient's.
fn check_lens(
    (b, c, n): (usize, usize, usize),
    logits: usize,
    labels: usize,
    res_grad: Option<(usize, usize)>,
) -> Result<()> {
    let row = b * (1 + sums(c));
    if logits == b * c * n && labels == b * n && res_grad.is_none_or(|(r, g)| r == row && g == row)
    {
        Ok(())
    } else {
        Err(invalid(NAME, "argument sizes do not match (B, C, N)"))
    }
}

/// The forward: logits (B, C, N) f32 → (B, 1 + S) f64.
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

/// [`cpu_slice`] of a held tensor's storage, which must be on the CPU.
fn held_cpu<'a, T: candle_core::WithDType>(s: &'a Storage, l: &Layout) -> Result<&'a [T]> {
    match s {
        Storage::Cpu(s) => cpu_slice(NAME, "arguments", s, l),
        _ => Err(invalid(
            NAME,
            "every argument must be on the logits' device",
        )),
    }
}

/// Voxel `v`'s log-softmax over the C classes of one patch's logits `l` (C, n), as candle_nn's
/// log_softmax computes it, `(l − max) − ln Σ exp(l − max)`, into `logp`; the class its label
/// `y` names, if any. (cuda_loss.cu's `voxel`, term for term.)
#[inline]
fn voxel(
    l: &[f32],
    y: f32,
    v: usize,
    n: usize,
    c: usize,
    logp: &mut [f32; MAX_C],
) -> Option<usize> {
    let mut m = l[v];
    for k in 1..c {
        m = m.max(l[k * n + v]);
    }
    let mut s = 0f32;
    for k in 0..c {
        logp[k] = l[k * n + v] - m;
        s += logp[k].exp();
    }
    let ls = s.ln();
    for lp in &mut logp[..c] {
        *lp -= ls;
    }
    (0..c).find(|&k| y == k as f32)
}

/// Each patch's row `[L_b, sums...]` from the sums of its blocks (the blocks in order).
fn finish(part: &[[f64; MAX_SUMS]], b: usize, k: usize, c: usize, n: usize) -> Vec<f64> {
    let s_ = sums(c);
    let smooth = crate::loss::DICE_SMOOTH;
    let mut out = Vec::with_capacity(b * (1 + s_));
    for bi in 0..b {
        let mut tot = [0f64; MAX_SUMS];
        for p in &part[bi * k..(bi + 1) * k] {
            for j in 0..s_ {
                tot[j] += p[j];
            }
        }
        let mut dice = 0f64;
        for cl in 1..c {
            let (i, p, t) = (tot[3 * cl - 2], tot[3 * cl - 1], tot[3 * cl]);
            dice += (i * 2.0 + smooth) / ((p + t) + smooth);
        }
        dice /= (c - 1) as f64;
        out.push((-dice + 1.0) + tot[0] / n as f64);
        out.extend_from_slice(&tot[..s_]);
    }
    out
}

impl CustomOp1 for Forward {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, n) = (self.b, self.c, self.n);
        let logits = cpu_slice::<f32>(NAME, "the logits", s, l)?;
        let (ls, ll) = self.labels.storage_and_layout();
        let labels = held_cpu::<f32>(&ls, ll)?;
        check_lens((b, c, n), logits.len(), labels.len(), None)?;
        let k = n.div_ceil(CHUNK);
        let part: Vec<[f64; MAX_SUMS]> = (0..b * k)
            .into_par_iter()
            .map(|idx| {
                let (bi, ki) = (idx / k, idx % k);
                let lb = &logits[bi * c * n..(bi + 1) * c * n];
                let (lo, hi) = (ki * CHUNK, ((ki + 1) * CHUNK).min(n));
                let mut acc = [0f64; MAX_SUMS];
                let mut logp = [0f32; MAX_C];
                for (v, &y) in (lo..hi).zip(&labels[bi * n + lo..bi * n + hi]) {
                    let cls = voxel(lb, y, v, n, c, &mut logp);
                    if let Some(cl) = cls {
                        acc[0] += f64::from(-logp[cl]);
                    }
                    for cl in 1..c {
                        let p = logp[cl].exp();
                        let t = if cls == Some(cl) { 1f32 } else { 0f32 };
                        acc[3 * cl - 2] += f64::from(p * t);
                        acc[3 * cl - 1] += f64::from(p);
                        acc[3 * cl] += f64::from(t);
                    }
                }
                acc
            })
            .collect();
        let out = finish(&part, b, k, c, n);
        Ok((CpuStorage::F64(out), Shape::from((b, 1 + sums(c)))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self, s, l)
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

/// Per foreground class `cl`, the coefficients of `t` and of 1 in dL_b/dp_cl times the upstream
/// gradient `g`, from patch b's row `r` of the forward's result:
/// dL/dp = −(2t/D − (2I + s)/D²)/(C − 1), D = P + T + s.
fn coefficients(r: &[f64], g: f64, c: usize) -> ([f32; MAX_C], [f32; MAX_C]) {
    let smooth = crate::loss::DICE_SMOOTH;
    let (mut a, mut c0) = ([0f32; MAX_C], [0f32; MAX_C]);
    for cl in 1..c {
        let (i, p, t) = (r[1 + 3 * cl - 2], r[1 + 3 * cl - 1], r[1 + 3 * cl]);
        let d = (p + t) + smooth;
        a[cl] = (-g * (2.0 / d) / (c - 1) as f64) as f32;
        c0[cl] = (g * ((i * 2.0 + smooth) / (d * d)) / (c - 1) as f64) as f32;
    }
    (a, c0)
}

impl CustomOp1 for Backward {
    fn name(&self) -> &'static str {
        "clopa_pass_loss-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, n) = (self.b, self.c, self.n);
        let logits = cpu_slice::<f32>(NAME, "the logits", s, l)?;
        let (ls, ll) = self.labels.storage_and_layout();
        let labels = held_cpu::<f32>(&ls, ll)?;
        let (rs, rl) = self.res.storage_and_layout();
        let res = held_cpu::<f64>(&rs, rl)?;
        let (gs, gl) = self.grad.storage_and_layout();
        let grad = held_cpu::<f64>(&gs, gl)?;
        check_lens(
            (b, c, n),
            logits.len(),
            labels.len(),
            Some((res.len(), grad.len())),
        )?;
        let (k, row) = (n.div_ceil(CHUNK), 1 + sums(c));
        let mut dl = vec![0f32; b * c * n];
        let out = SyncPtr(dl.as_mut_ptr());
        (0..b * k).into_par_iter().for_each(|idx| {
            let (bi, ki) = (idx / k, idx % k);
            let r = &res[bi * row..(bi + 1) * row];
            let g = grad[bi * row];
            let (a, c0) = coefficients(r, g, c);
            let ce = (-g / n as f64) as f32;
            let lb = &logits[bi * c * n..(bi + 1) * c * n];
            let (lo, hi) = (ki * CHUNK, ((ki + 1) * CHUNK).min(n));
            let (mut logp, mut dlogp) = ([0f32; MAX_C], [0f32; MAX_C]);
            for (v, &y) in (lo..hi).zip(&labels[bi * n + lo..bi * n + hi]) {
                let cls = voxel(lb, y, v, n, c, &mut logp);
                let mut sum = 0f32;
                for cl in 0..c {
                    let mut d = 0f32;
                    if cl >= 1 {
                        let coef = if cls == Some(cl) {
                            a[cl] + c0[cl]
                        } else {
                            c0[cl]
                        };
                        d = coef * logp[cl].exp();
                    }
                    if cls == Some(cl) {
                        d += ce;
                    }
                    dlogp[cl] = d;
                    sum += d;
                }
                for cl in 0..c {
                    let value = dlogp[cl] - logp[cl].exp() * sum;
                    // SAFETY: voxel v of patch bi is in block (bi, ki) only, so each index
                    // (bi·C + cl)·n + v < B·C·n is written by one task.
                    unsafe { *out.get().add((bi * c + cl) * n + v) = value };
                }
            }
        });
        Ok((CpuStorage::F32(dl), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::backward(self, s, l)
    }
}

/// Whether the fused op takes logits of `dims` (B, C, D, H, W): 2 ≤ C ≤ [`MAX_C`] (the kernels'
/// per-thread arrays), 1 ≤ B ≤ 65535 (a CUDA grid's second dimension) and some voxels.
pub(crate) fn fits(dims: &[usize]) -> bool {
    dims.len() == 5
        && (2..=MAX_C).contains(&dims[1])
        && (1..=65535).contains(&dims[0])
        && dims[2..].iter().all(|&d| d > 0)
}

/// The fused loss of `logits` (B, C, D, H, W) that [`fits`] and `target` (B, 1, D, H, W), shapes
/// already checked: `(B,)` f64, differentiable with respect to the logits. CPU or CUDA.
pub(crate) fn pass_loss_per_sample(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let dims = logits.dims();
    if !fits(dims) {
        return Err(invalid(
            NAME,
            format!("takes 2..={MAX_C} classes, 1..=65535 patches and some voxels, got {dims:?}"),
        ));
    }
    let (b, c) = (dims[0], dims[1]);
    let n: usize = dims[2..].iter().product();
    if !target.device().same_device(logits.device()) {
        return Err(invalid(
            NAME,
            "the logits and labels must be on the same device",
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

/// The CUDA side: the kernels of cuda_loss.cu (compiled to PTX by build.rs). Built only with
/// the `cuda` feature; no CI machine has a GPU, so `examples/gpu_check` checks it on a lent GPU
/// against the composition on the CPU.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, Layout, Result, Shape, Storage};

    use super::{Backward, CHUNK, Forward, NAME, check_lens, invalid, sums};
    use crate::ops::cuda_view;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cuda_loss.ptx"));
    const MODULE: &str = "clopa_cuda_loss";
    /// Threads per block (as THREADS in cuda_loss.cu).
    const THREADS: u32 = 256;

    /// [`cuda_view`] of a held tensor's storage, which must be on the GPU.
    fn held_view<'a, T: CudaDType>(s: &'a Storage, l: &Layout) -> Result<CudaView<'a, T>> {
        match s {
            Storage::Cuda(s) => cuda_view(NAME, "arguments", s, l),
            _ => Err(invalid(NAME, "every argument must be on the GPU")),
        }
    }

    fn grid(k: usize, b: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (k as u32, b as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    pub(super) fn forward(
        op: &Forward,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, c, n) = (op.b, op.c, op.n);
        let dev = s.device().clone();
        let stream = dev.cuda_stream();
        let logits = cuda_view::<f32>(NAME, "the logits", s, l)?;
        let (ls, ll) = op.labels.storage_and_layout();
        let labels = held_view::<f32>(&ls, ll)?;
        check_lens((b, c, n), logits.len(), labels.len(), None)?;
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

    pub(super) fn backward(
        op: &Backward,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, c, n) = (op.b, op.c, op.n);
        let dev = s.device().clone();
        let stream = dev.cuda_stream();
        let logits = cuda_view::<f32>(NAME, "the logits", s, l)?;
        let (ls, ll) = op.labels.storage_and_layout();
        let labels = held_view::<f32>(&ls, ll)?;
        let (rs, rl) = op.res.storage_and_layout();
        let res = held_view::<f64>(&rs, rl)?;
        let (gs, gl) = op.grad.storage_and_layout();
        let grad = held_view::<f64>(&gs, gl)?;
        check_lens(
            (b, c, n),
            logits.len(),
            labels.len(),
            Some((res.len(), grad.len())),
        )?;
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
