//! Differentiable 3D operations on candle tensors, with fast multi-threaded CPU kernels.
//!
//! candle 0.11 has no 3D convolution, and its CPU element-wise/reduction kernels are
//! single-threaded, which makes an op-composed instance norm as slow as the convolution itself.
//! Every op here is therefore a candle `CustomOp1/2/3` whose `cpu_fwd` is a rayon-parallel
//! kernel, and whose `bwd` is built from further (no-backward) custom ops, so that a `cuda_fwd`
//! can be added to each of them later without touching the autograd wiring.
//!
//! All tensors are f32 with shape `(B, C, D, H, W)` — on a GPU the data may also be f16/bf16,
//! which its half-precision convolutions ([`ConvPrecision`]) hand on as PyTorch's autocast does;
//! every function returns `candle_core::Result<Tensor>` and is differentiable through
//! `Var`/`backward()`.
//!
//! * [`conv3d`]: cubic kernel, stride, zero padding, optional bias. Stride-1 3×3×3 forward and
//!   kernel gradient run a direct AVX-512 or AVX2 microkernel where the CPU has one
//!   (`conv3d_direct.rs`; [`isa`] says which), everything else tiled im2col + `gemm`.
//! * [`conv_transpose3d`]: kernel = stride (the U-Net's upsampling), optional bias.
//! * [`avg_pool3d`]: kernel = stride, floor like PyTorch.
//! * [`instance_norm3d`]: per (sample, channel) normalisation with affine and optional fused
//!   LeakyReLU; statistics accumulated in f64.
//! * [`leaky_relu`], [`add_leaky_relu`] (LeakyReLU of a sum, the residual block's tail).
//! * [`cat_channels`]: concatenation along C (the decoder's skip connections), in parallel.
//! * [`conv_norm_act`]: conv → norm → (+ residual) → LeakyReLU, computed in place when nothing
//!   tracks a gradient (inference).
//!
//! Tensors on another device (CUDA, Metal) go, after the same argument checks, to [`portable`]:
//! the same ops composed of candle's own operations, tested against these kernels on the CPU.
//! With the `cuda` feature, 3D convolutions of CUDA tensors run cuDNN's N-d convolution instead
//! (`cudnn_conv3d.rs`), as PyTorch does, and the instance norm (with its residual and LeakyReLU)
//! fused CUDA kernels (`cuda_norm.cu`). Both were checked on an H200 against these kernels
//! (`examples/gpu_check` of clopa-adapt; BENCHMARKS.md).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use clopa_nn::ops;
//! # fn main() -> candle_core::Result<()> {
//! let x = Tensor::ones((1, 2, 4, 4, 4), candle_core::DType::F32, &Device::Cpu)?;
//! let w = Tensor::ones((3, 2, 3, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
//! let y = ops::conv3d(&x, &w, None, 1, 1)?;
//! assert_eq!(y.dims(), &[1, 3, 4, 4, 4]);
//! let g = Tensor::ones(3, candle_core::DType::F32, &Device::Cpu)?;
//! let b = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu)?;
//! let z = ops::instance_norm3d(&y, &g, &b, 1e-5, Some(0.01))?;
//! assert_eq!(z.dims(), y.dims());
//! # Ok(())
//! # }
//! ```

/// Implements [`Kernel<2>`] (x, w) and [`Kernel<3>`] (x, w, bias) for a convolution-like op from
/// its inherent `fwd(x, w, Option<bias>)` and `grads(x, w, Option<bias>, dy)`.
macro_rules! kernel_with_optional_bias {
    ($ty:ty, $name:expr) => {
        impl $crate::ops::Kernel<2> for $ty {
            const ARGS: [&'static str; 2] = ["x", "w"];
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu(
                &self,
                [x, w]: [(&[f32], &candle_core::Layout); 2],
            ) -> candle_core::Result<(Vec<f32>, candle_core::Shape)> {
                self.fwd(x, w, None)
            }
            fn grads(
                &self,
                [x, w]: [&candle_core::Tensor; 2],
                _res: &candle_core::Tensor,
                dy: &candle_core::Tensor,
            ) -> candle_core::Result<[Option<candle_core::Tensor>; 2]> {
                let [dx, dw, _] = <$ty>::grads(self, x, w, None, dy)?;
                Ok([dx, dw])
            }
        }

        impl $crate::ops::Kernel<3> for $ty {
            const ARGS: [&'static str; 3] = ["x", "w", "bias"];
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu(
                &self,
                [x, w, b]: [(&[f32], &candle_core::Layout); 3],
            ) -> candle_core::Result<(Vec<f32>, candle_core::Shape)> {
                self.fwd(x, w, Some(b))
            }
            fn grads(
                &self,
                [x, w, b]: [&candle_core::Tensor; 3],
                _res: &candle_core::Tensor,
                dy: &candle_core::Tensor,
            ) -> candle_core::Result<[Option<candle_core::Tensor>; 3]> {
                <$ty>::grads(self, x, w, Some(b), dy)
            }
        }
    };
}

mod add_leaky_relu;
mod avg_pool3d;
mod cat_channels;
mod conv3d;
mod conv3d_direct;
mod conv3d_dw_simd;
mod conv_norm;
mod conv_transpose3d;
#[cfg(feature = "cuda")]
mod cuda_norm;
#[cfg(feature = "cuda")]
mod cudnn_conv3d;
#[cfg(feature = "cuda")]
mod cudnn_graph;
mod instance_norm;
mod isa;
mod leaky_relu;
pub(crate) mod pass_loss;
pub mod portable;
#[cfg(test)]
pub(crate) mod testutil;

pub use add_leaky_relu::add_leaky_relu;
pub use avg_pool3d::avg_pool3d;
pub use cat_channels::cat_channels;
pub use conv_norm::{ConvNorm, conv_norm_act};
pub use conv_transpose3d::conv_transpose3d;
pub use conv3d::conv3d;
pub use instance_norm::instance_norm3d;
pub use isa::{Isa, cap_isa, isa, set_max_isa};
pub use leaky_relu::leaky_relu;

/// cuDNN's algorithm choices so far on this thread (see `cudnn_conv3d::choices`); empty without
/// the `cuda` feature.
pub fn cudnn_choices() -> Vec<String> {
    #[cfg(feature = "cuda")]
    return cudnn_conv3d::choices();
    #[cfg(not(feature = "cuda"))]
    Vec::new()
}

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

/// The arithmetic of 3D convolutions on a GPU: fp32, or PyTorch-autocast-like fp16/bf16 inputs
/// with fp32 accumulation (tensor cores) and a result in the same half type, which the norms and
/// the rest take as it is (computing in f32) until the network casts its logits to f32. The CPU
/// always computes in fp32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvPrecision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl ConvPrecision {
    /// The data type of the convolutions' inputs and results at this precision.
    pub fn dtype(self) -> DType {
        match self {
            ConvPrecision::F32 => DType::F32,
            ConvPrecision::F16 => DType::F16,
            ConvPrecision::Bf16 => DType::BF16,
        }
    }
}

impl std::str::FromStr for ConvPrecision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fp32" | "f32" => Ok(ConvPrecision::F32),
            "fp16" | "f16" => Ok(ConvPrecision::F16),
            "bf16" => Ok(ConvPrecision::Bf16),
            _ => Err(format!("expected fp32, fp16 or bf16, got {s:?}")),
        }
    }
}

static CONV_PRECISION: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Sets the [`ConvPrecision`] of GPU convolutions for the whole process (a tool's `--precision`).
pub fn set_conv_precision(p: ConvPrecision) {
    CONV_PRECISION.store(p as u8, std::sync::atomic::Ordering::Relaxed);
}

/// The [`ConvPrecision`] of GPU convolutions (fp32 unless [`set_conv_precision`] said otherwise).
pub fn conv_precision() -> ConvPrecision {
    match CONV_PRECISION.load(std::sync::atomic::Ordering::Relaxed) {
        1 => ConvPrecision::F16,
        2 => ConvPrecision::Bf16,
        _ => ConvPrecision::F32,
    }
}

/// An invalid argument to one of the ops; wrapped into `candle_core::Error` by the public functions.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The argument named `what` of op `op` is not acceptable.
    #[error("{op}: {what}")]
    InvalidArgument { op: &'static str, what: String },
}

pub(crate) fn invalid(op: &'static str, what: impl Into<String>) -> candle_core::Error {
    candle_core::Error::wrap(OpsError::InvalidArgument {
        op,
        what: what.into(),
    })
}

/// Elements per work item of the element-wise kernels: large enough to amortise rayon's
/// scheduling, small enough to balance two to a few dozen threads on a 64^3 volume.
pub(crate) const ELEMWISE_CHUNK: usize = 1 << 15;

/// Checks that `t` is data the ops take: f32, or f16/bf16 where it takes the compositions
/// (on a GPU, whose half-precision convolutions hand on half data; `portable::half_ok`).
pub(crate) fn check_data(op: &'static str, name: &str, t: &Tensor) -> candle_core::Result<()> {
    match t.dtype() {
        DType::F32 => Ok(()),
        DType::F16 | DType::BF16 if portable::half_ok(t) => Ok(()),
        dt if portable::half_ok(t) => Err(invalid(
            op,
            format!("{name} must be f32, f16 or bf16, got {dt:?}"),
        )),
        dt => Err(invalid(
            op,
            format!("{name} must be f32 on the CPU, got {dt:?}"),
        )),
    }
}

/// Checks that `t` is data of rank 5 ([`check_data`]) and returns its dims.
pub(crate) fn dims5(op: &'static str, name: &str, t: &Tensor) -> candle_core::Result<[usize; 5]> {
    check_data(op, name, t)?;
    match t.dims() {
        &[b, c, d, h, w] => Ok([b, c, d, h, w]),
        other => Err(invalid(
            op,
            format!("{name} must have shape (B, C, D, H, W), got {other:?}"),
        )),
    }
}

/// Checks that `t` is an f32 vector of length `n`.
pub(crate) fn check_vec(
    op: &'static str,
    name: &str,
    t: &Tensor,
    n: usize,
) -> candle_core::Result<()> {
    if t.dtype() != DType::F32 {
        return Err(invalid(
            op,
            format!("{name} must be f32, got {:?}", t.dtype()),
        ));
    }
    if t.dims() != [n] {
        return Err(invalid(
            op,
            format!("{name} must have shape ({n},), got {:?}", t.dims()),
        ));
    }
    Ok(())
}

/// The contiguous data of a CPU storage, of type `T`. The public functions make their inputs
/// contiguous, so a non-contiguous layout here is an internal error, reported rather than
/// mis-read.
pub(crate) fn cpu_slice<'a, T: candle_core::WithDType>(
    op: &'static str,
    name: &str,
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    if s.dtype() != T::DTYPE {
        return Err(invalid(
            op,
            format!("{name} must be {}, got {:?}", T::DTYPE.as_str(), s.dtype()),
        ));
    }
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(invalid(op, format!("{name} must be contiguous"))),
    }
}

/// The contiguous data of a CUDA storage from its layout's offset, of type `T` (what the CUDA
/// ops launch on); a non-contiguous layout is an internal error, as in [`cpu_slice`].
#[cfg(feature = "cuda")]
pub(crate) fn cuda_view<'a, T: candle_core::cuda_backend::CudaDType>(
    op: &'static str,
    name: &str,
    s: &'a candle_core::CudaStorage,
    l: &Layout,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| invalid(op, format!("{name} must be contiguous")))?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// A CPU kernel over `N` contiguous f32 tensors, made a candle `CustomOp{N}` by wrapping it in
/// [`Op`]: the wrapper owns the candle plumbing (storage type, contiguity, the `(Option<Tensor>,
/// ..)` gradient tuples), the kernel only its arithmetic and shape checks. A `cuda_fwd` would be
/// added to the wrapper with a `cuda` method here.
pub(crate) trait Kernel<const N: usize> {
    /// The names of the arguments, for error messages.
    const ARGS: [&'static str; N];
    /// The op's name in candle's graph and in error messages.
    fn name(&self) -> &'static str;
    /// The result and its shape, from each argument's contiguous data and layout.
    fn cpu(&self, args: [(&[f32], &Layout); N]) -> candle_core::Result<(Vec<f32>, Shape)>;
    /// Each argument's gradient (`None` where it is not needed), given the result `res` and the
    /// contiguous upstream gradient `dy`. The default is for ops applied without backward.
    fn grads(
        &self,
        args: [&Tensor; N],
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<[Option<Tensor>; N]> {
        let _ = (args, res, dy);
        Err(candle_core::Error::BackwardNotSupported { op: self.name() })
    }
}

/// A [`Kernel`] as a candle custom op.
#[derive(Clone, Debug)]
pub(crate) struct Op<K>(pub K);

impl<K> Op<K> {
    fn run<const N: usize>(
        &self,
        args: [(&CpuStorage, &Layout); N],
    ) -> candle_core::Result<(CpuStorage, Shape)>
    where
        K: Kernel<N>,
    {
        let name = self.0.name();
        let mut slices = [(&[][..], args[0].1); N];
        for (i, (s, l)) in args.into_iter().enumerate() {
            slices[i] = (cpu_slice::<f32>(name, K::ARGS[i], s, l)?, l);
        }
        let (v, shape) = self.0.cpu(slices)?;
        Ok((CpuStorage::F32(v), shape))
    }
}

impl<K: Kernel<1>> CustomOp1 for Op<K> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run([(s, l)])
    }
    fn bwd(&self, a: &Tensor, res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let [da] = self.0.grads([a], res, &dy.contiguous()?)?;
        Ok(da)
    }
}

impl<K: Kernel<2>> CustomOp2 for Op<K> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run([(s1, l1), (s2, l2)])
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let [da, db] = self.0.grads([a, b], res, &dy.contiguous()?)?;
        Ok((da, db))
    }
}

impl<K: Kernel<3>> CustomOp3 for Op<K> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run([(s1, l1), (s2, l2), (s3, l3)])
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [da, db, dc] = self.0.grads([a, b, c], res, &dy.contiguous()?)?;
        Ok((da, db, dc))
    }
}

/// Checks that a layout seen by a kernel has the shape the op was built for.
pub(crate) fn check_layout(
    op: &'static str,
    name: &str,
    l: &Layout,
    dims: &[usize],
) -> candle_core::Result<()> {
    if l.dims() != dims {
        return Err(invalid(
            op,
            format!("{name} has shape {:?}, expected {dims:?}", l.dims()),
        ));
    }
    Ok(())
}

/// `Some(f())` when `t` leads to a trainable variable, else `None` without calling `f`.
///
/// candle's backprop asks a custom op for the gradients of *all* its arguments and stores every
/// `Some` (as `zeros_like + grad`) even for frozen tensors nobody reads. Training tunes small
/// groups (the first conv, or the norm affines), so skipping the frozen conv weights' dW and the
/// network input's dX saves about a third of the backward and the memory of the unused gradients.
pub(crate) fn grad_if(
    t: &Tensor,
    f: impl FnOnce() -> candle_core::Result<Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    if t.track_op() {
        f().map(Some)
    } else {
        Ok(None)
    }
}

/// A zero-filled f32 buffer for an op's output.
///
/// One place to change how outputs are allocated. Tried and rejected: advising large outputs as
/// transparent huge pages (`madvise(MADV_HUGEPAGE)` before the first write) cut the page faults
/// 2x but doubled the kernel time (2 MiB clears), so the forward pass got ~7% slower.
pub(crate) fn zeroed(n: usize) -> Vec<f32> {
    vec![0f32; n]
}

/// A raw pointer that rayon tasks may share. Every use writes disjoint ranges (documented at
/// each site), which is what makes sharing it sound.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub *mut f32);

impl SyncPtr {
    /// The pointer; a method (not field access) so closures capture the `Sync` wrapper.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: only used for disjoint writes from parallel tasks, see the call sites.
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}

/// Sum of `f32`s accumulated in eight f64 lanes: exact enough for 10^7-element reductions and,
/// unlike a single f64 accumulator, free of a serial dependency chain (it vectorises).
pub(crate) fn sum_f64(v: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i] as f64;
        }
    }
    let mut s = acc.iter().sum::<f64>();
    for &r in rest {
        s += r as f64;
    }
    s
}
