//! Differentiable 3D operations on candle tensors, with fast multi-threaded CPU kernels.
//!
//! candle 0.11 has no 3D convolution, and its CPU element-wise/reduction kernels are
//! single-threaded, which makes an op-composed instance norm as slow as the convolution itself.
//! Every op here is therefore a candle `CustomOp1/2/3` whose `cpu_fwd` is a rayon-parallel
//! kernel, and whose `bwd` is built from further (no-backward) custom ops, so that a `cuda_fwd`
//! can be added to each of them later without touching the autograd wiring.
//!
//! All tensors are f32 with shape `(B, C, D, H, W)`; every function returns
//! `candle_core::Result<Tensor>` and is differentiable through `Var`/`backward()`.
//!
//! * [`conv3d`]: cubic kernel, stride, zero padding, optional bias (tiled im2col + `gemm`).
//! * [`conv_transpose3d`]: kernel = stride (the U-Net's upsampling), optional bias.
//! * [`avg_pool3d`]: kernel = stride, floor like PyTorch.
//! * [`instance_norm3d`]: per (sample, channel) normalisation with affine and optional fused
//!   LeakyReLU; statistics accumulated in f64.
//! * [`leaky_relu`], [`add_leaky_relu`] (LeakyReLU of a sum, the residual block's tail).
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

mod add_leaky_relu;
mod avg_pool3d;
mod conv3d;
mod conv_transpose3d;
mod instance_norm;
mod leaky_relu;
#[cfg(test)]
mod testutil;

pub use add_leaky_relu::add_leaky_relu;
pub use avg_pool3d::avg_pool3d;
pub use conv_transpose3d::conv_transpose3d;
pub use conv3d::conv3d;
pub use instance_norm::instance_norm3d;
pub use leaky_relu::leaky_relu;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Tensor};

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

/// Checks that `t` is an f32 tensor of rank 5 and returns its dims.
pub(crate) fn dims5(op: &'static str, name: &str, t: &Tensor) -> candle_core::Result<[usize; 5]> {
    if t.dtype() != DType::F32 {
        return Err(invalid(
            op,
            format!("{name} must be f32, got {:?}", t.dtype()),
        ));
    }
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

/// The contiguous f32 data of a CPU storage. The public functions make their inputs contiguous,
/// so a non-contiguous layout here is an internal error, reported rather than mis-read.
pub(crate) fn f32_slice<'a>(
    op: &'static str,
    name: &str,
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        other => {
            return Err(invalid(
                op,
                format!("{name} must be f32, got {:?}", other.dtype()),
            ));
        }
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(invalid(op, format!("{name} must be contiguous"))),
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
