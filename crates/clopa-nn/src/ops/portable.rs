//! The ops composed of candle's own tensor operations, so that they run (and differentiate) on
//! every device candle has — CUDA and Metal included — where the fast kernels of this module's
//! siblings, which are CPU code, cannot.
//!
//! The public functions of [`crate::ops`] check their arguments and then send tensors that are not
//! on the CPU here. The CPU never runs these in production, but the tests below run them on the CPU
//! against the fast kernels (values and gradients), which is what makes them trustworthy on a
//! device this project's CI does not have: candle's GPU kernels are candle's to test, the
//! composition is ours.
//!
//! * 3D convolution = a sum over the kernel's depth taps of candle's 2D convolution, with the depth
//!   folded into the batch (candle has `conv2d` on every device, with a backward).
//! * transposed convolution with kernel = stride = one matmul and a pixel shuffle.
//! * average pooling with kernel = stride = a reshape and a sum.
//! * instance norm = mean and biased variance over D·H·W (two-pass, f32); in the U-Net it also
//!   takes the conv bias, the residual and the LeakyReLU ([`norm_act`]). On CUDA (with the `cuda`
//!   feature) it runs fused kernels instead (`cuda_norm.rs`; checked on a GPU, not by CI): the
//!   composition took 7× PyTorch's time there.
//! * LeakyReLU = `where(x > 0, x, slope·x)`, whose gradient at 0 is the slope, as in PyTorch.
//!
//! All but the convolution are *grafted* (see `Graft` below): computed from detached arguments and
//! put into candle's graph as one custom op with a hand-written backward, so the graph keeps the
//! arguments and the result, not every temporary of the composition (where the convolution is a
//! single op with a frozen kernel, as cuDNN's, it is grafted together with its norm:
//! [`conv_norm_act`]). That is what makes a
//! training step fit a GPU: `examples/graph_memory` of clopa-adapt measured a 64³ step of
//! nnInteractive v1.0 (batch 2, group `in`, convolutions as single nodes as cuDNN's are) at a
//! 4105 MiB graph and a 4963 MiB peak composed op by op, 1203 MiB and 1670 MiB grafted (PyTorch's
//! autograd, same step on the CPU: 1055 and 1297 MiB); scaled to the paper's 192³, a ~131 GiB
//! peak became ~44 GiB (BENCHMARKS.md).

use std::cell::Cell;
use std::sync::{Mutex, PoisonError};

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, MetalStorage, Result,
    Shape, Storage, Tensor,
};

/// See [`crate::ops::conv3d`]; arguments already checked.
pub fn conv3d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    // half-precision input: as autocast and cuDNN compute it — the kernel and bias rounded to
    // the input's type, products summed in f32, the result rounded back (the CPU's candle
    // matmul would sum in half, and has no bf16 one)
    if x.dtype() != DType::F32 {
        let dt = x.dtype();
        let up = |t: &Tensor| t.to_dtype(dt)?.to_dtype(DType::F32);
        let b = b.map(up).transpose()?;
        return conv3d(
            &x.to_dtype(DType::F32)?,
            &up(w)?,
            b.as_ref(),
            stride,
            padding,
        )?
        .to_dtype(dt);
    }
    let (bn, cin, _, _, _) = x.dims5()?;
    let (cout, _, k, _, _) = w.dims5()?;
    let y = if k == 1 && padding == 0 {
        // a 1×1×1 convolution is a matmul over channels (the U-Net's segmentation heads)
        let xs = every_nth(&every_nth(&every_nth(x, 2, stride)?, 3, stride)?, 4, stride)?;
        let (_, _, od, oh, ow) = xs.dims5()?;
        let xm = xs.reshape((bn, cin, od * oh * ow))?;
        let wm = w.reshape((1, cout, cin))?.broadcast_as((bn, cout, cin))?;
        wm.matmul(&xm)?.reshape((bn, cout, od, oh, ow))?
    } else {
        // Pad all three dims and keep only what the outputs read, then depth first:
        // (B, Dp, Cin, Hp, Wp), so that each depth tap is a batch of unpadded 2D convolutions.
        // (candle 0.11's conv2d backward takes the output padding of both dims from the height
        // alone, so an H and W that leave different remainders under a stride would get a
        // wrongly shaped dx; trimmed, both remainders are zero.)
        let mut xp = x.clone();
        for dim in 2..5 {
            let n = xp.dim(dim)? + 2 * padding;
            let used = (n - k) / stride * stride + k;
            xp = xp
                .pad_with_zeros(dim, padding, padding)?
                .narrow(dim, 0, used)?;
        }
        let xp = xp.permute((0, 2, 1, 3, 4))?.contiguous()?;
        let (_, dp, _, h, wd) = xp.dims5()?;
        let od = (dp - k) / stride + 1;
        let mut acc: Option<Tensor> = None;
        for kd in 0..k {
            let slab = every_nth(&xp.narrow(1, kd, (od - 1) * stride + 1)?, 1, stride)?;
            let slab = slab.contiguous()?.reshape((bn * od, cin, h, wd))?;
            let wk = w.narrow(2, kd, 1)?.squeeze(2)?.contiguous()?;
            let part = slab.conv2d(&wk, 0, stride, 1, 1)?;
            acc = Some(match acc {
                None => part,
                Some(a) => (a + part)?,
            });
        }
        let acc = acc.expect("k >= 1 depth taps");
        let (_, _, oh, ow) = acc.dims4()?;
        acc.reshape((bn, od, cout, oh, ow))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
    };
    match b {
        Some(b) => y.broadcast_add(&b.reshape((1, cout, 1, 1, 1))?),
        None => Ok(y),
    }
}

/// Every `s`-th element of `t` along `dim`, starting with the first (a strided slice).
fn every_nth(t: &Tensor, dim: usize, s: usize) -> Result<Tensor> {
    if s == 1 {
        return Ok(t.clone());
    }
    let n = t.dim(dim)?;
    let m = n.div_ceil(s);
    // pad to m·s, split the dim into (m, s) and keep index 0 of the second
    let t = t.pad_with_zeros(dim, 0, m * s - n)?;
    let mut shape = t.dims().to_vec();
    shape[dim] = m;
    shape.insert(dim + 1, s);
    t.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// See [`crate::ops::conv_transpose3d`]; arguments already checked. One graph node: the
/// backward is the two matmuls of the same unshuffled layout.
pub fn conv_transpose3d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, s: usize) -> Result<Tensor> {
    // half-precision input (a GPU's fp16/bf16 layers): the kernel and bias rounded to its type
    // and the products summed in f32, as autocast's — on a GPU by cuBLAS's half matmul (which
    // sums in f32), on the CPU as [`conv3d`]'s (candle's CPU matmul would sum in half, and has no
    // bf16 one); the casts are graph nodes
    if x.dtype() != DType::F32 {
        let dt = x.dtype();
        if !x.device().is_cpu() {
            if w.dtype() == dt && b.is_none_or(|b| b.dtype() == dt) {
                return conv_transpose3d_same_type(x, w, b, s);
            }
            let b = b.map(|b| b.to_dtype(dt)).transpose()?;
            return conv_transpose3d_same_type(x, &w.to_dtype(dt)?, b.as_ref(), s);
        }
        let up = |t: &Tensor| t.to_dtype(dt)?.to_dtype(DType::F32);
        let b = b.map(up).transpose()?;
        return conv_transpose3d(&x.to_dtype(DType::F32)?, &up(w)?, b.as_ref(), s)?.to_dtype(dt);
    }
    conv_transpose3d_same_type(x, w, b, s)
}

/// [`conv_transpose3d`] of arguments of one type.
fn conv_transpose3d_same_type(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    s: usize,
) -> Result<Tensor> {
    let y = transpose_fwd(&x.detach(), &w.detach(), b.map(Tensor::detach).as_ref(), s)?;
    match b {
        None => graft(NAME_TRANSPOSE, [x, w], y, move |[x, w], [nx, nw], _, dy| {
            let (dx, dw, _) = transpose_grads(x, w, dy, s, [nx, nw, false])?;
            Ok([dx, dw])
        }),
        Some(b) => graft(
            NAME_TRANSPOSE,
            [x, w, b],
            y,
            move |[x, w, _], need, _, dy| {
                let (dx, dw, db) = transpose_grads(x, w, dy, s, need)?;
                Ok([dx, dw, db])
            },
        ),
    }
}

const NAME_TRANSPOSE: &str = "conv_transpose3d (portable)";

fn transpose_fwd(x: &Tensor, w: &Tensor, b: Option<&Tensor>, s: usize) -> Result<Tensor> {
    let (bn, cin, d, h, wd) = x.dims5()?;
    let cout = w.dim(1)?;
    let s3 = s * s * s;
    // (Cout·s³, Cin) × (Cin, D·H·W) per sample; kernel = stride, so the blocks do not overlap
    let wm = w
        .reshape((cin, cout * s3))?
        .t()?
        .reshape((1, cout * s3, cin))?
        .broadcast_as((bn, cout * s3, cin))?;
    let y = wm.matmul(&x.reshape((bn, cin, d * h * wd))?)?;
    // (B, Cout, i, j, l, D, H, W) → (B, Cout, D, i, H, j, W, l)
    let y = y
        .reshape(vec![bn, cout, s, s, s, d, h, wd])?
        .permute(vec![0, 1, 5, 2, 6, 3, 7, 4])?
        .contiguous()?
        .reshape((bn, cout, d * s, h * s, wd * s))?;
    match b {
        Some(b) => y.broadcast_add(&b.reshape((1, cout, 1, 1, 1))?),
        None => Ok(y),
    }
}

/// dx, dw, db of [`transpose_fwd`] (each only where `need` says).
fn transpose_grads(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    s: usize,
    [nx, nw, nb]: [bool; 3],
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (bn, cin, d, h, wd) = x.dims5()?;
    let cout = w.dim(1)?;
    let cs3 = cout * s * s * s;
    // the forward's pixel shuffle undone: (B, Cout, D, i, H, j, W, l) → (B, Cout·s³, D·H·W)
    let dyu = || {
        dy.reshape(vec![bn, cout, d, s, h, s, wd, s])?
            .permute(vec![0, 1, 3, 5, 7, 2, 4, 6])?
            .contiguous()?
            .reshape((bn, cs3, d * h * wd))
    };
    let dyu = if nx || nw { Some(dyu()?) } else { None };
    let dx = match (&dyu, nx) {
        (Some(g), true) => {
            let wm = w.reshape((1, cin, cs3))?.broadcast_as((bn, cin, cs3))?;
            Some(wm.matmul(g)?.reshape((bn, cin, d, h, wd))?)
        }
        _ => None,
    };
    let dw = match (&dyu, nw) {
        (Some(g), true) => {
            let xm = x.reshape((bn, cin, d * h * wd))?;
            let dw = xm.matmul(&g.transpose(1, 2)?)?.sum(0)?;
            Some(dw.reshape(w.dims())?)
        }
        _ => None,
    };
    let db = if nb {
        // (summed in f32: dy may be half)
        Some(
            dy.to_dtype(DType::F32)?
                .sum((0, 2, 3, 4))?
                .to_dtype(dy.dtype())?,
        )
    } else {
        None
    };
    Ok((dx, dw, db))
}

/// See [`crate::ops::avg_pool3d`]; arguments already checked. One graph node.
pub fn avg_pool3d(x: &Tensor, k: usize) -> Result<Tensor> {
    let (bn, c, d, h, w) = x.dims5()?;
    let (od, oh, ow) = (d / k, h / k, w / k);
    let scale = 1.0 / (k * k * k) as f64;
    let y = x
        .detach()
        .narrow(2, 0, od * k)?
        .narrow(3, 0, oh * k)?
        .narrow(4, 0, ow * k)?
        .contiguous()?
        .reshape(vec![bn, c, od, k, oh, k, ow, k])?
        .sum(7)?
        .sum(5)?
        .sum(3)?
        .affine(scale, 0.0)?;
    graft("avg_pool3d (portable)", [x], y, move |_, [nx], _, dy| {
        if !nx {
            return Ok([None]);
        }
        // each output's gradient spread over its k³ inputs; voxels the floor dropped get none
        let dx = dy
            .affine(scale, 0.0)?
            .reshape(vec![bn, c, od, 1, oh, 1, ow, 1])?
            .broadcast_as(vec![bn, c, od, k, oh, k, ow, k])?
            .contiguous()?
            .reshape((bn, c, od * k, oh * k, ow * k))?
            .pad_with_zeros(2, 0, d - od * k)?
            .pad_with_zeros(3, 0, h - oh * k)?
            .pad_with_zeros(4, 0, w - ow * k)?;
        Ok([Some(dx)])
    })
}

/// See [`crate::ops::instance_norm3d`]; arguments already checked.
pub fn instance_norm3d(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    negative_slope: Option<f64>,
) -> Result<Tensor> {
    norm_act(x, None, gamma, beta, eps, negative_slope, None)
}

/// `LeakyReLU(γ·IN(x + bias) + β + residual)`, the tail of [`crate::ops::conv_norm_act`] after a
/// convolution without its bias, as one graph node over `x`, the per-channel parameters and the
/// residual; arguments already checked (`negative_slope` ≥ 0, `bias`, `gamma`, `beta` (C,),
/// `residual` shaped like `x`). Without a slope there is no activation.
///
/// A bias before an instance norm moves each channel's mean by itself and cancels, so `x` is
/// normalised alone (the same values up to rounding); its gradient — zero up to rounding, as
/// PyTorch's — is still the sum of the input gradient, for the groups that train conv biases.
/// The statistics are two-pass (mean, then the mean of squared deviations), in f32; on CUDA the
/// fused kernels take one pass of f64 sums and squares instead (as exact for f32 data).
pub fn norm_act(
    x: &Tensor,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    negative_slope: Option<f64>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    // Half-precision data (a GPU's fp16/bf16 convolutions keep their results half, as under
    // PyTorch's autocast): the fused kernels read and write it as it is, computing in f32; the
    // composition computes in f32 between two casts. A residual of another type is cast to x's
    // (the casts are graph nodes: the gradients go back in each one's own type).
    if let Some(r) = residual.filter(|r| r.dtype() != x.dtype()) {
        let r = r.to_dtype(x.dtype())?;
        return norm_act(x, bias, gamma, beta, eps, negative_slope, Some(&r));
    }
    if x.dtype() != DType::F32 && !fused(x) {
        let y = norm_act(
            &x.to_dtype(DType::F32)?,
            bias,
            gamma,
            beta,
            eps,
            negative_slope,
            residual
                .map(|r| r.to_dtype(DType::F32))
                .transpose()?
                .as_ref(),
        )?;
        return y.to_dtype(x.dtype());
    }
    let (y, ctx) = norm_forward(x, bias, gamma, beta, eps, negative_slope, residual)?;
    let params = packed_params(gamma, beta, bias)?;
    match residual {
        None => graft(
            NAME_NORM,
            [x, &params],
            y,
            move |[x, _], [nx, np], res, dy| {
                let (dx, dp, _) = ctx.grads(x, res, dy, [nx, np, false])?;
                Ok([dx, dp])
            },
        ),
        Some(r) => graft(
            NAME_NORM,
            [x, &params, r],
            y,
            move |[x, _, _], need, res, dy| {
                let (dx, dp, dr) = ctx.grads(x, res, dy, need)?;
                Ok([dx, dp, dr])
            },
        ),
    }
}

/// γ, β (and the conv bias) as one argument: candle's custom ops take at most three.
fn packed_params(gamma: &Tensor, beta: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let mut params = vec![gamma, beta];
    params.extend(bias);
    Tensor::cat(&params, 0)
}

/// Whether [`norm_forward`] takes an `x` of this device, type and shape and `residual` as they
/// are: f32 data, or half data the fused kernels read, and a residual of the same type
/// ([`norm_act`] casts otherwise).
fn norm_takes(
    device: &candle_core::Device,
    dtype: DType,
    dims: &[usize],
    residual: Option<&Tensor>,
) -> bool {
    (dtype == DType::F32 || fused_for(device, dtype, dims))
        && residual.is_none_or(|r| r.dtype() == dtype)
}

/// The forward of [`norm_act`] on detached data (no graph; on CUDA the result a launch still to
/// run) and what its backward needs; `x` and `residual` as [`norm_takes`] says. The trained
/// flags are read off `gamma`, `beta` and `bias`.
fn norm_forward(
    x: &Tensor,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    negative_slope: Option<f64>,
    residual: Option<&Tensor>,
) -> Result<(Pending, NormGrads)> {
    let dims = x.dims().to_vec();
    let (bn, c) = (dims[0], dims[1]);
    let flat = (bn, c, x.elem_count() / (bn * c).max(1));
    let xd = x.detach().reshape(flat)?;
    let gamma_d = gamma.detach().reshape((1, c, 1))?;
    let residual_d = residual.map(|r| r.detach().reshape(flat)).transpose()?;
    let (y, stats) = if fused(x) {
        fused_norm_act(&xd, gamma, beta, eps, negative_slope, residual_d.as_ref())?
    } else {
        let inv_n = 1.0 / flat.2.max(1) as f64;
        let mean = plane_sums(&xd)?.affine(inv_n, 0.0)?;
        let xc = xd.broadcast_sub(&mean)?;
        let rstd = (plane_sums(&xc.sqr()?)?.affine(inv_n, eps)?)
            .sqrt()?
            .recip()?;
        let y = xc
            .broadcast_mul(&rstd.broadcast_mul(&gamma_d)?)?
            .broadcast_add(&beta.detach().reshape((1, c, 1))?)?;
        drop(xc);
        let y = match residual_d {
            Some(r) => (y + r)?,
            None => y,
        };
        let y = match negative_slope {
            Some(s) => leaky(&y, s)?,
            None => y,
        };
        (Pending::Computed(y), Stats::Composed { mean, rstd })
    };
    let y = y.reshape(dims.clone())?;
    let ctx = NormGrads {
        dims,
        flat,
        stats,
        gamma: gamma_d,
        slope: negative_slope,
        trains: [
            gamma.track_op(),
            beta.track_op(),
            bias.is_some_and(Tensor::track_op),
        ],
        has_bias: bias.is_some(),
    };
    Ok((y, ctx))
}

const NAME_NORM: &str = "instance_norm3d (portable)";

/// [`crate::ops::conv_norm_act`] with the convolution a single op (cuDNN's, or the CPU kernel
/// under [`on_cpu_like_cuda`]) and its weight frozen: convolution and norm as **one** graph node
/// over `x`, the norm's parameters and the residual; arguments already checked
/// (`instance_norm::check_norm_act`). `conv` is the convolution of detached arguments, `out` the
/// type and shape of its result, `conv_dx` its input gradient (dy → dx).
///
/// Two nodes would cost the backward a full-size pass more per layer: candle's autograd sums
/// every gradient it hands an argument into a fresh zero tensor (zeros + add), and the
/// convolution's output is one more argument than the node needs. The node keeps what the two
/// kept: `x` (an argument) and the convolution's output (the norm's input, held here). `None`,
/// before anything is computed, where the norm would not take the convolution's output as it is
/// ([`norm_takes`]): the caller composes the two ops instead.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_norm_act(
    x: &Tensor,
    conv: impl FnOnce(&Tensor) -> Result<Tensor>,
    out: (DType, [usize; 5]),
    conv_dx: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    negative_slope: Option<f64>,
    residual: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    if !norm_takes(x.device(), out.0, &out.1, residual) {
        return Ok(None);
    }
    let yc = conv(&x.detach())?;
    if (yc.dtype(), yc.dims()) != (out.0, &out.1[..]) {
        return Err(super::invalid(
            NAME_CONV_NORM,
            format!(
                "the convolution gave {:?} {:?}, not the {:?} {:?} announced",
                yc.dtype(),
                yc.dims(),
                out.0,
                out.1
            ),
        ));
    }
    let (y, ctx) = norm_forward(&yc, bias, gamma, beta, eps, negative_slope, residual)?;
    let params = packed_params(gamma, beta, bias)?;
    let x_dtype = x.dtype();
    // dx from the norm's input gradient, in x's type (a half convolution of an f32 input — the
    // network's first — gives a half one)
    let grads = move |nx: bool, np: bool, nr: bool, res: &Tensor, dy: &Tensor| -> Result<Grads3> {
        let (dyc, dp, dr) = ctx.grads(&yc, res, dy, [nx, np, nr])?;
        let dx = match dyc {
            Some(d) if nx => Some(conv_dx(&d)?.to_dtype(x_dtype)?),
            _ => None,
        };
        Ok((dx, dp, dr))
    };
    Ok(Some(match residual {
        None => graft(
            NAME_CONV_NORM,
            [x, &params],
            y,
            move |_, [nx, np], res, dy| {
                let (dx, dp, _) = grads(nx, np, false, res, dy)?;
                Ok([dx, dp])
            },
        )?,
        Some(r) => graft(
            NAME_CONV_NORM,
            [x, &params, r],
            y,
            move |_, [nx, np, nr], res, dy| {
                let (dx, dp, dr) = grads(nx, np, nr, res, dy)?;
                Ok([dx, dp, dr])
            },
        )?,
    }))
}

const NAME_CONV_NORM: &str = "conv3d + instance_norm3d (portable)";

/// dx, the packed parameters' gradient and the residual's, each where asked for.
type Grads3 = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

/// The sums over the last dim of a (B, C, N) tensor, as (B, C, 1): in two stages, (B, C, K, N/K)
/// then K, when N splits. candle's CUDA reduction runs one thread block per output value, so B·C
/// sums of a 192³ plane would keep 64 blocks busy on a GPU with 132 multiprocessors; B·C·K keep
/// all of them (and the shorter partial sums lose less to f32 rounding).
fn plane_sums(t: &Tensor) -> Result<Tensor> {
    let (b, c, n) = t.dims3()?;
    let k = [64, 32, 16, 8, 4, 2]
        .into_iter()
        .find(|k| n % k == 0 && n / k >= 1024)
        .unwrap_or(1);
    if k == 1 {
        return t.sum_keepdim(2);
    }
    t.reshape((b, c, k, n / k))?.sum(3)?.sum_keepdim(2)
}

/// Whether [`norm_act`] runs the fused CUDA kernels (f32, f16 or bf16 CUDA tensors, with the
/// `cuda` feature) rather than the composition of candle ops.
fn fused(x: &Tensor) -> bool {
    fused_for(x.device(), x.dtype(), x.dims())
}

/// [`fused`] of a tensor of this device, type and shape.
fn fused_for(device: &candle_core::Device, dtype: DType, dims: &[usize]) -> bool {
    // (the kernels put the B·C planes on a grid dimension of at most 65535 blocks, and launch no
    // empty grid)
    let planes = dims.iter().take(2).product::<usize>();
    cfg!(feature = "cuda")
        && device.is_cuda()
        && matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
        && dims.iter().product::<usize>() > 0
        && planes <= 65535
}

/// The forward of [`norm_act`] by the fused CUDA kernels: `x` and the residual (B, C, N).
#[cfg(feature = "cuda")]
fn fused_norm_act(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    negative_slope: Option<f64>,
    residual: Option<&Tensor>,
) -> Result<(Pending, Stats)> {
    use super::cuda_norm;
    let stats = cuda_norm::stats(x, eps)?;
    let y = cuda_norm::apply_launch(
        x,
        &stats,
        &gamma.detach(),
        &beta.detach(),
        residual,
        negative_slope,
    )?;
    Ok((Pending::Launch(Box::new(y)), Stats::Fused(stats)))
}

#[cfg(not(feature = "cuda"))]
fn fused_norm_act(
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: f64,
    _: Option<f64>,
    _: Option<&Tensor>,
) -> Result<(Pending, Stats)> {
    Err(super::invalid(NAME_NORM, "built without the cuda feature"))
}

/// A norm's statistics, as its forward computed them.
enum Stats {
    /// mean and 1 / sqrt(var + eps), each (B, C, 1)
    Composed { mean: Tensor, rstd: Tensor },
    /// (B·C, 2): (mean, 1 / sqrt(var + eps)) per plane, from `cuda_norm::stats`
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Fused(Tensor),
}

/// What the backward of [`norm_act`] keeps from its forward: per-(sample, channel) statistics
/// and γ, no full-size tensor.
struct NormGrads {
    dims: Vec<usize>,
    flat: (usize, usize, usize),
    stats: Stats,
    /// (1, C, 1)
    gamma: Tensor,
    slope: Option<f64>,
    /// which of γ, β and the conv bias train: the others get zeros in the packed gradient
    /// (like the kernels, which give frozen arguments none)
    trains: [bool; 3],
    /// whether a conv bias came in with the parameters
    has_bias: bool,
}

impl NormGrads {
    /// dx, d(γ, β[, bias]) and d(residual), each only where `need` says.
    fn grads(
        &self,
        x: &Tensor,
        res: &Tensor,
        dy: &Tensor,
        [nx, np, nr]: [bool; 3],
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = self.flat.1;
        let bias_trains = np && self.trains[2];
        let (dr, sums) = match &self.stats {
            Stats::Composed { mean, rstd } => {
                self.composed_grads(x, res, dy, mean, rstd, nr, np, nx || bias_trains)?
            }
            Stats::Fused(stats) => {
                self.fused_grads(x, res, dy, stats, nr, np, nx || bias_trains)?
            }
        };
        let Some((sum_g, sum_gx, dx)) = sums else {
            return Ok((None, None, dr));
        };
        let dp = if np {
            let zeros = || Tensor::zeros(c, DType::F32, x.device());
            let part = |trains: bool, sum: &Tensor| {
                if trains {
                    sum.sum(0)?.reshape(c)
                } else {
                    zeros()
                }
            };
            let mut parts = vec![
                part(self.trains[0], &sum_gx)?,
                part(self.trains[1], &sum_g)?,
            ];
            if self.has_bias {
                parts.push(match (&dx, self.trains[2]) {
                    // (in f32: dx may be half)
                    (Some(dx), true) => {
                        plane_sums(&dx.to_dtype(DType::F32)?)?.sum(0)?.reshape(c)?
                    }
                    _ => zeros()?,
                });
            }
            Some(Tensor::cat(&parts, 0)?)
        } else {
            None
        };
        let dx = match dx {
            Some(d) if nx => Some(d.reshape(self.dims.clone())?),
            _ => None,
        };
        Ok((dx, dp, dr))
    }

    /// The residual's gradient (if `nr`) and, if `nx` or `np`, the plane sums Σg and Σg·x̂
    /// (B, C, 1) with dx (if `want_dx`), by candle ops (g = LeakyReLU'·dy, x̂ the normalised x).
    #[allow(clippy::too_many_arguments)]
    fn composed_grads(
        &self,
        x: &Tensor,
        res: &Tensor,
        dy: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        nr: bool,
        np: bool,
        want_dx: bool,
    ) -> Result<(Option<Tensor>, Option<PlaneGrads>)> {
        let n = self.flat.2;
        let dy = dy.reshape(self.flat)?;
        // the LeakyReLU's derivative read off the result: y > 0 ⇔ pre-activation > 0 (slope ≥ 0);
        // at 0 it is the slope, as PyTorch's
        let g = match self.slope {
            Some(s) => res
                .reshape(self.flat)?
                .gt(0f32)?
                .where_cond(&dy, &dy.affine(s, 0.0)?)?,
            None => dy,
        };
        let dr = if nr {
            Some(g.reshape(self.dims.clone())?)
        } else {
            None
        };
        if !want_dx && !np {
            return Ok((dr, None));
        }
        let xhat = x
            .reshape(self.flat)?
            .broadcast_sub(mean)?
            .broadcast_mul(rstd)?;
        let sum_g = plane_sums(&g)?;
        let sum_gx = plane_sums(&(&g * &xhat)?)?;
        // dx = γ·rstd·(g − mean(g) − x̂·mean(g·x̂))
        let dx = if want_dx {
            let inv_n = 1.0 / n as f64;
            let centred = g.broadcast_sub(&sum_g.affine(inv_n, 0.0)?)?;
            let d = (centred - xhat.broadcast_mul(&sum_gx.affine(inv_n, 0.0)?)?)?
                .broadcast_mul(&rstd.broadcast_mul(&self.gamma)?)?;
            Some(d)
        } else {
            None
        };
        Ok((dr, Some((sum_g, sum_gx, dx))))
    }

    /// [`Self::composed_grads`] by the fused CUDA kernels.
    #[cfg(feature = "cuda")]
    #[allow(clippy::too_many_arguments)]
    fn fused_grads(
        &self,
        x: &Tensor,
        res: &Tensor,
        dy: &Tensor,
        stats: &Tensor,
        nr: bool,
        np: bool,
        want_dx: bool,
    ) -> Result<(Option<Tensor>, Option<PlaneGrads>)> {
        use super::cuda_norm;
        let (b, c, _) = self.flat;
        let dy = dy.reshape(self.flat)?;
        let res = res.reshape(self.flat)?;
        let dr = match (nr, self.slope) {
            (false, _) => None,
            (true, Some(s)) => {
                Some(cuda_norm::leaky_grad(&res, &dy, s)?.reshape(self.dims.clone())?)
            }
            (true, None) => Some(dy.reshape(self.dims.clone())?),
        };
        if !want_dx && !np {
            return Ok((dr, None));
        }
        let x = x.reshape(self.flat)?;
        let sums = cuda_norm::bwd_sums(&x, &res, &dy, stats, self.slope)?.reshape((b, c, 2))?;
        let dx = if want_dx {
            let gamma = self.gamma.reshape(c)?;
            Some(cuda_norm::bwd_dx(
                &x, &res, &dy, stats, &sums, &gamma, self.slope,
            )?)
        } else {
            None
        };
        Ok((dr, Some((sums.narrow(2, 0, 1)?, sums.narrow(2, 1, 1)?, dx))))
    }

    #[cfg(not(feature = "cuda"))]
    #[allow(clippy::too_many_arguments)]
    fn fused_grads(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: bool,
        _: bool,
        _: bool,
    ) -> Result<(Option<Tensor>, Option<PlaneGrads>)> {
        Err(super::invalid(NAME_NORM, "built without the cuda feature"))
    }
}

/// Σg and Σg·x̂ per plane (B, C, 1), and dx (B, C, N) where asked for.
type PlaneGrads = (Tensor, Tensor, Option<Tensor>);

/// `where(y > 0, y, slope·y)`.
fn leaky(y: &Tensor, negative_slope: f64) -> Result<Tensor> {
    y.gt(0f32)?.where_cond(y, &y.affine(negative_slope, 0.0)?)
}

/// See [`crate::ops::leaky_relu`]. One graph node; the gradient at 0 is the slope, as PyTorch's.
pub fn leaky_relu(x: &Tensor, negative_slope: f64) -> Result<Tensor> {
    let y = leaky(&x.detach(), negative_slope)?;
    graft("leaky_relu (portable)", [x], y, move |[x], [nx], _, dy| {
        Ok([if nx {
            Some(leaky_grad(x, dy, negative_slope)?)
        } else {
            None
        }])
    })
}

/// `dy` where `x > 0`, else `slope·dy`.
fn leaky_grad(x: &Tensor, dy: &Tensor, negative_slope: f64) -> Result<Tensor> {
    x.gt(0f32)?.where_cond(dy, &dy.affine(negative_slope, 0.0)?)
}

/// See [`crate::ops::add_leaky_relu`]. One graph node over `a` and `b`.
pub fn add_leaky_relu(a: &Tensor, b: &Tensor, negative_slope: f64) -> Result<Tensor> {
    // (one of them half, the other not: b in a's type, a graph node)
    if b.dtype() != a.dtype() {
        return add_leaky_relu(a, &b.to_dtype(a.dtype())?, negative_slope);
    }
    let y = leaky(&(a.detach() + b.detach())?, negative_slope)?;
    graft(
        "add_leaky_relu (portable)",
        [a, b],
        y,
        move |[a, b], [na, nb], _, dy| {
            if !na && !nb {
                return Ok([None, None]);
            }
            let g = leaky_grad(&(a + b)?, dy, negative_slope)?;
            Ok([na.then(|| g.clone()), nb.then_some(g)])
        },
    )
}

/// `y + b` per channel, `b` (C,) added to `y` (B, C, D, H, W) in y's type (a half-precision
/// convolution's bias, as autocast adds it), one graph node whose backward sums the bias's
/// gradient in f32: candle's own backward would sum it in y's type, and its fp16 sum accumulates
/// in fp16 (the 2 × 192³ voxels of a segmentation head's channel).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn bias_add(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    let c = b.dim(0)?;
    let bh = b.detach().to_dtype(y.dtype())?.reshape((1, c, 1, 1, 1))?;
    let out = y.detach().broadcast_add(&bh)?;
    let b_dtype = b.dtype();
    graft(
        "bias add (portable)",
        [y, b],
        out,
        move |_, [ny, nb], _, dy| {
            let db = if nb {
                Some(
                    dy.to_dtype(DType::F32)?
                        .sum((0, 2, 3, 4))?
                        .to_dtype(b_dtype)?,
                )
            } else {
                None
            };
            Ok([ny.then(|| dy.clone()), db])
        },
    )
}

/// See [`crate::ops::cat_channels`] (candle's `cat` keeps nothing but its inputs).
pub fn cat_channels(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    // (one of them half, the other not: b in a's type, a graph node)
    if b.dtype() != a.dtype() {
        return Tensor::cat(&[a, &b.to_dtype(a.dtype())?], 1);
    }
    Tensor::cat(&[a, b], 1)
}

/// The gradients of a grafted op: `(args, need, res, dy)` → one per argument, `None` where
/// `need` is false (the argument leads to no trainable variable). `args` and `res` come
/// detached, so nothing the gradients are computed from is kept by the gradients.
type GradFn<const N: usize> =
    dyn Fn([&Tensor; N], [bool; N], &Tensor, &Tensor) -> Result<[Option<Tensor>; N]> + Send + Sync;

/// A result computed from detached arguments, put into the graph as one custom op over the
/// arguments, with the backward given by hand.
///
/// candle's graph keeps every intermediate of a composition until the backward: an instance
/// norm composed of eight element-wise ops keeps eight full-size tensors, which is what made a
/// 192³ training step need ~130 GB on a GPU. Grafted, the composition's temporaries die with the
/// forward and the graph keeps what PyTorch's autograd keeps: the arguments and the result.
/// The custom op's forward copies the precomputed result into the output (one device copy), or
/// on CUDA runs the launch that writes it ([`Pending`]); with no argument tracked (inference)
/// the result is returned as is.
struct Graft<const N: usize> {
    name: &'static str,
    y: Mutex<Option<Pending>>,
    grads: Box<GradFn<N>>,
}

/// A grafted op's result: computed (the op's forward copies it into its output), or on CUDA a
/// launch that writes the op's output itself, which saves the copy — a full-size read and write
/// per norm in a training forward.
pub(crate) enum Pending {
    Computed(Tensor),
    /// (It runs inside the op's forward, while candle holds read locks on the op's arguments,
    /// and read-locks its own tensors — the norm's input and residual, which may be those
    /// arguments: shared reads, which nothing writing an activation during a forward could
    /// block.)
    #[cfg(feature = "cuda")]
    Launch(Box<dyn FnOnce() -> Result<(CudaStorage, Shape)> + Send>),
}

impl Pending {
    /// The result as a tensor of no graph (when there is nothing to graft it onto).
    fn tensor(self) -> Result<Tensor> {
        match self {
            Pending::Computed(y) => Ok(y),
            #[cfg(feature = "cuda")]
            Pending::Launch(f) => {
                let (s, shape) = f()?;
                Ok(Tensor::from_storage(
                    Storage::Cuda(s),
                    shape,
                    candle_core::op::BackpropOp::none(),
                    false,
                ))
            }
        }
    }

    /// The same result shaped `dims` (as many elements).
    fn reshape(self, dims: Vec<usize>) -> Result<Pending> {
        match self {
            Pending::Computed(y) => Ok(Pending::Computed(y.reshape(dims)?)),
            #[cfg(feature = "cuda")]
            Pending::Launch(f) => Ok(Pending::Launch(Box::new(move || {
                f().map(|(s, _)| (s, Shape::from(dims)))
            }))),
        }
    }
}

impl From<Tensor> for Pending {
    fn from(y: Tensor) -> Pending {
        Pending::Computed(y)
    }
}

fn graft<const N: usize>(
    name: &'static str,
    args: [&Tensor; N],
    y: impl Into<Pending>,
    grads: impl Fn([&Tensor; N], [bool; N], &Tensor, &Tensor) -> Result<[Option<Tensor>; N]>
    + Send
    + Sync
    + 'static,
) -> Result<Tensor>
where
    Graft<N>: Apply<N>,
{
    let y = y.into();
    if !args.iter().any(|a| a.track_op()) {
        return y.tensor();
    }
    Graft {
        name,
        y: Mutex::new(Some(y)),
        grads: Box::new(grads),
    }
    .apply(args)
}

impl<const N: usize> Graft<N> {
    /// The result, once.
    fn take(&self) -> Result<Pending> {
        self.y
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| super::invalid(self.name, "the grafted result was asked for twice"))
    }

    /// The result on CUDA: launched into the op's output, or copied there.
    fn cuda_out(&self) -> Result<(CudaStorage, Shape)> {
        match self.take()? {
            Pending::Computed(y) => self.copy(&y, cuda),
            #[cfg(feature = "cuda")]
            Pending::Launch(f) => f(),
        }
    }

    /// The computed result, copied into a fresh storage of the arguments' backend.
    fn copy_out<S>(&self, pick: impl FnOnce(&Storage) -> Option<&S>) -> Result<(S, Shape)>
    where
        S: BackendStorage,
        S::Device: BackendDevice<Storage = S>,
    {
        match self.take()? {
            Pending::Computed(y) => self.copy(&y, pick),
            #[cfg(feature = "cuda")]
            Pending::Launch(_) => Err(super::invalid(
                self.name,
                "a CUDA result for arguments on another device",
            )),
        }
    }

    /// `y` copied into a fresh storage of its backend, which `pick` must accept.
    fn copy<S>(&self, y: &Tensor, pick: impl FnOnce(&Storage) -> Option<&S>) -> Result<(S, Shape)>
    where
        S: BackendStorage,
        S::Device: BackendDevice<Storage = S>,
    {
        let (storage, layout) = y.storage_and_layout();
        let s = pick(&storage).ok_or_else(|| {
            super::invalid(
                self.name,
                "the result is on another device than the arguments",
            )
        })?;
        // SAFETY: copy_strided_src writes every element of the fresh storage.
        let mut out = unsafe { s.device().alloc_uninit(layout.shape(), s.dtype()) }?;
        s.copy_strided_src(&mut out, 0, layout)?;
        Ok((out, layout.shape().clone()))
    }

    fn backward(
        &self,
        args: [&Tensor; N],
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<[Option<Tensor>; N]> {
        let need = args.map(Tensor::track_op);
        if !need.contains(&true) {
            return Ok(std::array::from_fn(|_| None));
        }
        let detached = args.map(Tensor::detach);
        let args: [&Tensor; N] = std::array::from_fn(|i| &detached[i]);
        (self.grads)(args, need, &res.detach(), &dy.detach())
    }
}

fn cpu(s: &Storage) -> Option<&CpuStorage> {
    match s {
        Storage::Cpu(s) => Some(s),
        _ => None,
    }
}

fn cuda(s: &Storage) -> Option<&CudaStorage> {
    match s {
        Storage::Cuda(s) => Some(s),
        _ => None,
    }
}

fn metal(s: &Storage) -> Option<&MetalStorage> {
    match s {
        Storage::Metal(s) => Some(s),
        _ => None,
    }
}

/// `Graft<N>` as candle's `CustomOp{N}`.
trait Apply<const N: usize> {
    fn apply(self, args: [&Tensor; N]) -> Result<Tensor>;
}

impl Apply<1> for Graft<1> {
    fn apply(self, [a]: [&Tensor; 1]) -> Result<Tensor> {
        a.apply_op1(self)
    }
}

impl Apply<2> for Graft<2> {
    fn apply(self, [a, b]: [&Tensor; 2]) -> Result<Tensor> {
        a.apply_op2(b, self)
    }
}

impl Apply<3> for Graft<3> {
    fn apply(self, [a, b, c]: [&Tensor; 3]) -> Result<Tensor> {
        a.apply_op3(b, c, self)
    }
}

impl CustomOp1 for Graft<1> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.copy_out(cpu)
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda_out()
    }
    fn metal_fwd(&self, _: &MetalStorage, _: &Layout) -> Result<(MetalStorage, Shape)> {
        self.copy_out(metal)
    }
    fn bwd(&self, a: &Tensor, res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let [da] = self.backward([a], res, dy)?;
        Ok(da)
    }
}

impl CustomOp2 for Graft<2> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.copy_out(cpu)
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda_out()
    }
    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.copy_out(metal)
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [da, db] = self.backward([a, b], res, dy)?;
        Ok((da, db))
    }
}

impl CustomOp3 for Graft<3> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.copy_out(cpu)
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda_out()
    }
    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.copy_out(metal)
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [da, db, dc] = self.backward([a, b, c], res, dy)?;
        Ok((da, db, dc))
    }
}

/// What the compositions stand in for on a CPU thread (tests and checks only; tensors on another
/// device always take them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// the fast kernels
    Kernels,
    /// every op composed, as on a device without cuDNN
    All,
    /// every op composed but 3D convolutions, which stay single graph nodes as cuDNN's are on a
    /// CUDA device: the graph a CUDA training step keeps, on the CPU
    AllButConvs,
}

thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::Kernels) };
}

fn with_mode<R>(mode: Mode, f: impl FnOnce() -> R) -> R {
    struct Restore(Mode);
    impl Drop for Restore {
        fn drop(&mut self) {
            MODE.set(self.0);
        }
    }
    let _restore = Restore(MODE.replace(mode));
    f()
}

/// Runs `f` with the compositions standing in for the CPU kernels on this thread: what a GPU
/// runs, on the CPU, to compare a whole network's values and gradients with the fast kernels'.
pub fn on_cpu<R>(f: impl FnOnce() -> R) -> R {
    with_mode(Mode::All, f)
}

/// Like [`on_cpu`], but 3D convolutions keep the CPU kernel: one graph node holding its input,
/// as cuDNN's convolution is on a CUDA device. What the memory a CUDA training step's graph
/// keeps is measured with (`examples/graph_memory` of clopa-adapt).
pub fn on_cpu_like_cuda<R>(f: impl FnOnce() -> R) -> R {
    with_mode(Mode::AllButConvs, f)
}

/// `true` when `t` should take the composition: it lives where the fast CPU kernels cannot
/// run, or [`on_cpu`] / [`on_cpu_like_cuda`] asked for it.
pub(crate) fn off_cpu(t: &Tensor) -> bool {
    !t.device().is_cpu() || MODE.get() != Mode::Kernels
}

/// Whether `t` may be half-precision data: it takes the compositions in every op (which work
/// in any float type), not a CPU kernel (f32 only) — on a GPU, or under [`on_cpu`].
pub(crate) fn half_ok(t: &Tensor) -> bool {
    !t.device().is_cpu() || MODE.get() == Mode::All
}

/// [`off_cpu`] for 3D convolutions (CUDA tensors went to cuDNN before this is asked).
pub(crate) fn conv_off_cpu(t: &Tensor) -> bool {
    !t.device().is_cpu() || MODE.get() == Mode::All
}

#[cfg(test)]
mod tests {
    //! Each composition against the fast kernel of the same op on the CPU: values, and the
    //! gradients of every argument under a random upstream gradient.

    use super::super::testutil::*;
    use candle_core::{Tensor, Var};

    /// Random arguments of these shapes.
    fn random(dims: &[&[usize]], seed: u64) -> Vec<Vec<f32>> {
        let mut rng = Lcg(seed);
        dims.iter().map(|d| rng.vec(d.iter().product())).collect()
    }

    /// Checks the forward and each argument's gradient of `f(args, portable = true)` against
    /// `f(args, false)` (relative to the largest value), with random arguments of shapes `dims`.
    fn compare(
        what: &str,
        dims: &[&[usize]],
        seed: u64,
        tol: f64,
        f: impl Fn(&[Tensor], bool) -> candle_core::Result<Tensor>,
    ) {
        compare_on(what, dims, random(dims, seed), seed, tol, f)
    }

    fn compare_on(
        what: &str,
        dims: &[&[usize]],
        data: Vec<Vec<f32>>,
        seed: u64,
        tol: f64,
        f: impl Fn(&[Tensor], bool) -> candle_core::Result<Tensor>,
    ) {
        let mut results = Vec::new();
        for portable in [false, true] {
            let vars: Vec<Var> = data.iter().zip(dims).map(|(v, d)| var(v, d).0).collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let y = f(&ts, portable).expect(what);
            let r = Lcg(seed ^ 0x5eed).vec(y.elem_count());
            let g = loss_grads(&y, &r);
            let grads: Vec<Vec<f32>> = vars.iter().map(|v| grad_of(&g, v)).collect();
            results.push((y.dims().to_vec(), to_vec(&y), grads));
        }
        let (fast, port) = (&results[0], &results[1]);
        assert_eq!(fast.0, port.0, "{what}: shapes");
        assert_close(&format!("{what} forward"), &port.1, &f64v(&fast.1), tol);
        for (i, (p, q)) in port.2.iter().zip(&fast.2).enumerate() {
            assert_close(&format!("{what} gradient {i}"), p, &f64v(q), tol);
        }
    }

    /// Like [`compare`], but only the arguments with `trained[i]` are variables: each of their
    /// gradients is compared, and the frozen ones must get none (or zeros: candle's `cat`
    /// hands every argument its slice). Runs the backward paths that skip work for frozen
    /// arguments.
    fn compare_partly_frozen(
        what: &str,
        dims: &[&[usize]],
        trained: &[bool],
        seed: u64,
        tol: f64,
        f: impl Fn(&[Tensor], bool) -> candle_core::Result<Tensor>,
    ) {
        let data = random(dims, seed);
        let mut results = Vec::new();
        for portable in [false, true] {
            let args: Vec<(Option<Var>, Tensor)> = data
                .iter()
                .zip(dims)
                .zip(trained)
                .map(|((v, d), &t)| {
                    if t {
                        let (v, t) = var(v, d);
                        (Some(v), t)
                    } else {
                        (None, tensor(v, d))
                    }
                })
                .collect();
            let ts: Vec<Tensor> = args.iter().map(|(_, t)| t.clone()).collect();
            let y = f(&ts, portable).expect(what);
            let g = loss_grads(&y, &Lcg(seed ^ 0x5eed).vec(y.elem_count()));
            let mut grads = Vec::new();
            for (i, (v, t)) in args.iter().enumerate() {
                match v {
                    Some(v) => grads.push(grad_of(&g, v)),
                    None => {
                        let got = g.get(t).map(to_vec).unwrap_or_default();
                        assert!(
                            got.iter().all(|&x| x == 0.0),
                            "{what} portable {portable}: frozen argument {i} got a gradient"
                        );
                    }
                }
            }
            results.push((to_vec(&y), grads));
        }
        let (fast, port) = (&results[0], &results[1]);
        assert_close(&format!("{what} forward"), &port.0, &f64v(&fast.0), tol);
        for (i, (p, q)) in port.1.iter().zip(&fast.1).enumerate() {
            assert_close(&format!("{what} trained gradient {i}"), p, &f64v(q), tol);
        }
    }

    /// Half-precision data (what a GPU's fp16/bf16 convolutions hand on) keeps its type through
    /// the norm (with a residual of its own type or f32's), an f32 bias added to it and the
    /// transposed convolution (an f32 kernel and bias), and the values and every gradient are the
    /// f32 computation's to half-precision rounding. On the CPU the norm runs its composition in f32 between casts;
    /// a GPU's fused kernels read and write the half data (`examples/gpu_check` compares those).
    #[test]
    fn half_precision_data_keeps_its_type() {
        use candle_core::DType;
        for (dt, tol) in [(DType::BF16, 2e-2), (DType::F16, 3e-3)] {
            let cast = |t: &Tensor, half: bool| if half { t.to_dtype(dt) } else { Ok(t.clone()) };
            let typed = |y: Tensor, half: bool| {
                assert_eq!(y.dtype(), if half { dt } else { DType::F32 }, "{dt:?}");
                y.to_dtype(DType::F32)
            };
            let (xd, cd): (&[usize], &[usize]) = (&[2, 3, 5, 4, 7], &[3]);
            for residual_half in [true, false] {
                compare(
                    &format!("norm_act {dt:?}, residual half {residual_half}"),
                    &[xd, cd, cd, xd],
                    91,
                    tol,
                    |t, half| {
                        let r = cast(&t[3], half && residual_half)?;
                        let x = cast(&t[0], half)?;
                        typed(
                            super::norm_act(&x, None, &t[1], &t[2], 1e-5, Some(0.01), Some(&r))?,
                            half,
                        )
                    },
                );
            }
            compare(
                &format!("bias_add {dt:?}"),
                &[xd, cd],
                93,
                tol,
                |t, half| {
                    if half {
                        typed(super::bias_add(&cast(&t[0], true)?, &t[1])?, true)
                    } else {
                        t[0].broadcast_add(&t[1].reshape((1, 3, 1, 1, 1))?)
                    }
                },
            );
            let (xd, wd, bd): (&[usize], &[usize], &[usize]) =
                (&[2, 3, 2, 3, 4], &[3, 5, 2, 2, 2], &[5]);
            compare(
                &format!("conv_transpose3d {dt:?}"),
                &[xd, wd, bd],
                92,
                tol,
                |t, half| {
                    let x = cast(&t[0], half)?;
                    typed(super::conv_transpose3d(&x, &t[1], Some(&t[2]), 2)?, half)
                },
            );
        }
    }

    /// Two-stage plane sums equal one-stage ones (to f32 rounding), split or not.
    #[test]
    fn plane_sums_split_long_planes() {
        for n in [7, 1000, 4096, 12288] {
            let v = Lcg(n as u64).vec(2 * 3 * n);
            let t = tensor(&v, &[2, 3, n]);
            let got = to_vec(&super::plane_sums(&t).expect("sums"));
            let want: Vec<f64> = v
                .chunks(n)
                .map(|c| c.iter().map(|&x| x as f64).sum())
                .collect();
            assert_eq!(got.len(), 6);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (*g as f64 - w).abs() <= 1e-5 * n as f64,
                    "n {n}: {g} vs {w}"
                );
            }
        }
    }

    /// Every op with only some arguments trained: the backwards' `need` flags.
    #[test]
    fn partly_frozen_arguments_match_the_kernels() {
        use super::super as ops;
        let (xd, wd, bd): (&[usize], &[usize], &[usize]) =
            (&[2, 3, 2, 3, 4], &[3, 5, 2, 2, 2], &[5]);
        for trained in [
            [true, false, false],
            [false, true, false],
            [false, false, true],
        ] {
            compare_partly_frozen(
                &format!("conv_transpose3d {trained:?}"),
                &[xd, wd, bd],
                &trained,
                81,
                1e-5,
                |t, port| {
                    if port {
                        super::conv_transpose3d(&t[0], &t[1], Some(&t[2]), 2)
                    } else {
                        ops::conv_transpose3d(&t[0], &t[1], Some(&t[2]), 2)
                    }
                },
            );
        }
        let (xd, cd): (&[usize], &[usize]) = (&[2, 3, 5, 4, 7], &[3]);
        for slope in [None, Some(0.01)] {
            for trained in [
                [true, false, false],
                [false, true, false],
                [false, false, true],
            ] {
                compare_partly_frozen(
                    &format!("instance_norm3d {slope:?} {trained:?}"),
                    &[xd, cd, cd],
                    &trained,
                    83,
                    1e-5,
                    |t, port| {
                        if port {
                            super::instance_norm3d(&t[0], &t[1], &t[2], 1e-5, slope)
                        } else {
                            ops::instance_norm3d(&t[0], &t[1], &t[2], 1e-5, slope)
                        }
                    },
                );
            }
        }
        for trained in [[true, false], [false, true]] {
            compare_partly_frozen(
                &format!("add_leaky_relu {trained:?}"),
                &[xd, xd],
                &trained,
                85,
                1e-6,
                |t, port| {
                    if port {
                        super::add_leaky_relu(&t[0], &t[1], 0.01)
                    } else {
                        ops::add_leaky_relu(&t[0], &t[1], 0.01)
                    }
                },
            );
        }
        // the block tail: only the residual; only x (the conv's input); x and the norm affines
        // with the conv frozen. (x, w, gamma, beta, residual, bias)
        let (xd, wd, rd): (&[usize], &[usize], &[usize]) =
            (&[2, 3, 5, 4, 6], &[4, 3, 3, 3, 3], &[2, 4, 5, 4, 6]);
        let dims = [xd, wd, &[4][..], &[4][..], rd, &[4][..]];
        for trained in [
            [false, false, false, false, true, false],
            [true, false, false, false, false, false],
            [true, false, true, true, false, false],
        ] {
            compare_partly_frozen(
                &format!("conv_norm_act {trained:?}"),
                &dims,
                &trained,
                87,
                1e-5,
                |t, port| {
                    let p = ops::ConvNorm {
                        weight: &t[1],
                        bias: Some(&t[5]),
                        stride: 1,
                        padding: 1,
                        gamma: &t[2],
                        beta: &t[3],
                        eps: 1e-5,
                    };
                    let f = || ops::conv_norm_act(&t[0], &p, Some(0.01), Some(&t[4]));
                    if port { super::on_cpu(f) } else { f() }
                },
            );
        }
    }

    /// A trained conv bias with everything else frozen: the packed parameter gradient has its
    /// slot, and it is zero up to rounding on both paths (the bias cancels in the norm).
    #[test]
    fn a_trained_bias_alone_gets_a_near_zero_gradient() {
        use super::super as ops;
        let data = random(&[&[1, 2, 4, 5, 3], &[3, 2, 3, 3, 3], &[3], &[3], &[3]], 89);
        for port in [false, true] {
            let x = tensor(&data[0], &[1, 2, 4, 5, 3]);
            let w = tensor(&data[1], &[3, 2, 3, 3, 3]);
            let (bv, b) = var(&data[2], &[3]);
            let (gamma, beta) = (tensor(&data[3], &[3]), tensor(&data[4], &[3]));
            let p = ops::ConvNorm {
                weight: &w,
                bias: Some(&b),
                stride: 1,
                padding: 1,
                gamma: &gamma,
                beta: &beta,
                eps: 1e-5,
            };
            let f = || ops::conv_norm_act(&x, &p, Some(0.01), None);
            let y = if port { super::on_cpu(f) } else { f() }.expect("forward");
            let g = loss_grads(&y, &Lcg(91).vec(y.elem_count()));
            let db = grad_of(&g, &bv);
            assert_eq!(db.len(), 3);
            // Σ over 60 voxels of O(1) terms that cancel: rounding noise, far below 1
            assert!(db.iter().all(|v| v.abs() < 1e-4), "port {port}: {db:?}");
        }
    }

    #[test]
    fn conv3d_matches_the_kernels() {
        use super::super::conv3d as fast;
        // (x, w, stride, padding): the U-Net's 3×3×3 stride 1 and 2, odd sizes, a 1×1×1 head,
        // a strided 1×1×1 and an unpadded kernel
        let cases: [([usize; 5], [usize; 5], usize, usize); 6] = [
            ([2, 3, 5, 6, 7], [4, 3, 3, 3, 3], 1, 1),
            ([1, 3, 7, 6, 5], [5, 3, 3, 3, 3], 2, 1),
            ([2, 4, 4, 5, 3], [2, 4, 1, 1, 1], 1, 0),
            ([1, 2, 5, 5, 6], [3, 2, 1, 1, 1], 2, 0),
            ([1, 2, 6, 5, 7], [3, 2, 3, 3, 3], 1, 0),
            ([1, 2, 6, 6, 6], [2, 2, 3, 3, 3], 2, 0),
        ];
        for (i, (xd, wd, s, p)) in cases.into_iter().enumerate() {
            for bias in [false, true] {
                let bd = [wd[0]];
                let mut dims: Vec<&[usize]> = vec![&xd, &wd];
                if bias {
                    dims.push(&bd);
                }
                compare(
                    &format!("conv3d case {i} bias {bias}"),
                    &dims,
                    7 + i as u64,
                    1e-5,
                    |t, port| {
                        let b = t.get(2);
                        if port {
                            super::conv3d(&t[0], &t[1], b, s, p)
                        } else {
                            fast(&t[0], &t[1], b, s, p)
                        }
                    },
                );
            }
        }
    }

    #[test]
    fn conv_transpose3d_matches_the_kernel() {
        use super::super::conv_transpose3d as fast;
        for (i, (xd, wd, s)) in [
            ([2, 3, 2, 3, 4], [3, 5, 2, 2, 2], 2),
            ([1, 2, 3, 2, 2], [2, 3, 3, 3, 3], 3),
            ([1, 4, 3, 3, 2], [4, 2, 1, 1, 1], 1),
        ]
        .into_iter()
        .enumerate()
        {
            let bd = [wd[1]];
            for bias in [true, false] {
                let dims: &[&[usize]] = if bias { &[&xd, &wd, &bd] } else { &[&xd, &wd] };
                compare(
                    &format!("conv_transpose3d case {i} bias {bias}"),
                    dims,
                    31 + i as u64,
                    1e-5,
                    |t, port| {
                        if port {
                            super::conv_transpose3d(&t[0], &t[1], t.get(2), s)
                        } else {
                            fast(&t[0], &t[1], t.get(2), s)
                        }
                    },
                );
            }
        }
    }

    /// The U-Net's block tail on a device (conv without bias, then one node for bias, norm,
    /// residual and LeakyReLU) against the CPU path, every argument trained.
    /// With the kernel frozen and the convolution a single op (`on_cpu_like_cuda`, as cuDNN's
    /// on a GPU), convolution and norm are one graph node (`conv_norm_act` here): its values and
    /// the gradients of the input, γ, β and the residual are the kernels', and a trained conv
    /// bias gets its gradient (zero up to rounding, as the kernels'), with or without residual
    /// and activation, stride 1 and 2.
    #[test]
    fn conv_norm_act_as_one_node_matches_the_kernels() {
        use super::super::{ConvNorm, conv_norm_act};
        for (stride, yd) in [(1usize, [2usize, 4, 5, 4, 6]), (2, [2, 4, 3, 2, 3])] {
            let (xd, wd, cd): (&[usize], &[usize], &[usize]) =
                (&[2, 3, 5, 4, 6], &[4, 3, 3, 3, 3], &[4]);
            for residual in [false, true] {
                for slope in [None, Some(0.01)] {
                    let what = format!("stride {stride} residual {residual} {slope:?}");
                    // x, gamma, beta, bias, residual (trained); w (frozen)
                    let dims: [&[usize]; 6] = [xd, cd, cd, cd, &yd, wd];
                    let data = random(&dims, 71);
                    let mut results = Vec::new();
                    for like_cuda in [false, true] {
                        let vars: Vec<Var> = data[..5]
                            .iter()
                            .zip(&dims)
                            .map(|(v, d)| var(v, d).0)
                            .collect();
                        let t: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
                        let w = tensor(&data[5], wd);
                        let p = ConvNorm {
                            weight: &w,
                            bias: Some(&t[3]),
                            stride,
                            padding: 1,
                            gamma: &t[1],
                            beta: &t[2],
                            eps: 1e-5,
                        };
                        let r = residual.then(|| &t[4]);
                        let f = || conv_norm_act(&t[0], &p, slope, r);
                        let y = if like_cuda {
                            super::on_cpu_like_cuda(f)
                        } else {
                            f()
                        };
                        let y = y.expect("forward");
                        let g = loss_grads(&y, &Lcg(73).vec(y.elem_count()));
                        let grads: Vec<Vec<f32>> = vars
                            .iter()
                            .map(|v| g.get(v.as_tensor()).map(to_vec).unwrap_or_default())
                            .collect();
                        results.push((to_vec(&y), grads));
                    }
                    let (fast, node) = (&results[0], &results[1]);
                    assert_close(&format!("{what} forward"), &node.0, &f64v(&fast.0), 1e-5);
                    for i in [0, 1, 2] {
                        assert_close(
                            &format!("{what} gradient {i}"),
                            &node.1[i],
                            &f64v(&fast.1[i]),
                            1e-5,
                        );
                    }
                    if residual {
                        assert_close(
                            &format!("{what} residual"),
                            &node.1[4],
                            &f64v(&fast.1[4]),
                            1e-5,
                        );
                    }
                    // the bias: present, and rounding noise against β's gradient (Σ of the
                    // same terms before they cancel)
                    let scale = fast.1[2].iter().fold(0f32, |m, v| m.max(v.abs()));
                    assert_eq!(node.1[3].len(), 4, "{what}: the bias got a gradient");
                    let m = node.1[3].iter().fold(0f32, |m, v| m.max(v.abs()));
                    assert!(
                        m <= 1e-4 * scale.max(1.0),
                        "{what}: bias gradient {m} vs {scale}"
                    );
                }
            }
        }
    }

    #[test]
    fn conv_norm_act_matches_the_kernels() {
        use super::super::{ConvNorm, conv_norm_act};
        let (xd, wd, cd, rd): (&[usize], &[usize], &[usize], &[usize]) =
            (&[2, 3, 5, 4, 6], &[4, 3, 3, 3, 3], &[4], &[2, 4, 5, 4, 6]);
        for bias in [false, true] {
            for residual in [false, true] {
                for slope in [None, Some(0.01)] {
                    let what = format!("conv_norm_act bias {bias} residual {residual} {slope:?}");
                    // x, w, gamma, beta[, residual][, bias]
                    let mut dims = vec![xd, wd, cd, cd];
                    if residual {
                        dims.push(rd);
                    }
                    if bias {
                        dims.push(cd);
                    }
                    let data = random(&dims, 61);
                    let mut results = Vec::new();
                    for port in [false, true] {
                        let vars: Vec<Var> =
                            data.iter().zip(&dims).map(|(v, d)| var(v, d).0).collect();
                        let t: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
                        let p = ConvNorm {
                            weight: &t[1],
                            bias: bias.then(|| &t[dims.len() - 1]),
                            stride: 1,
                            padding: 1,
                            gamma: &t[2],
                            beta: &t[3],
                            eps: 1e-5,
                        };
                        let r = residual.then(|| &t[4]);
                        let f = || conv_norm_act(&t[0], &p, slope, r);
                        let y = if port { super::on_cpu(f) } else { f() }.expect("forward");
                        let up = Lcg(67).vec(y.elem_count());
                        let g = loss_grads(&y, &up);
                        let grads: Vec<Vec<f32>> = vars.iter().map(|v| grad_of(&g, v)).collect();
                        results.push((to_vec(&y), grads));
                    }
                    let (fast, port) = (&results[0], &results[1]);
                    assert_close(&format!("{what} forward"), &port.0, &f64v(&fast.0), 1e-5);
                    let n_checked = if bias { dims.len() - 1 } else { dims.len() };
                    for i in 0..n_checked {
                        let (p, q) = (&port.1[i], &fast.1[i]);
                        assert_close(&format!("{what} gradient {i}"), p, &f64v(q), 1e-5);
                    }
                    if bias {
                        // zero up to rounding on both sides (the bias cancels in the norm):
                        // small against the gradient of beta, which is Σ of the same terms
                        let scale = port.1[3].iter().fold(0f32, |m, v| m.max(v.abs()));
                        for (side, gb) in [
                            ("kernels", &fast.1[dims.len() - 1]),
                            ("portable", &port.1[dims.len() - 1]),
                        ] {
                            let m = gb.iter().fold(0f32, |m, v| m.max(v.abs()));
                            assert!(
                                m <= 1e-5 * scale,
                                "{what}: {side} bias gradient {m:e} vs {scale:e}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Only the norm affines train (group `in`): the conv's bias, weight and input are frozen,
    /// so the packed parameter gradient carries a zero bias slot, and x gets none.
    #[test]
    fn conv_norm_act_with_frozen_arguments() {
        use super::super::{ConvNorm, conv_norm_act};
        let data = random(&[&[1, 2, 4, 5, 3], &[3, 2, 3, 3, 3], &[3], &[3], &[3]], 71);
        let mut results = Vec::new();
        for port in [false, true] {
            let x = tensor(&data[0], &[1, 2, 4, 5, 3]);
            let w = tensor(&data[1], &[3, 2, 3, 3, 3]);
            let b = tensor(&data[2], &[3]);
            let (gv, gamma) = var(&data[3], &[3]);
            let (bv, beta) = var(&data[4], &[3]);
            let p = ConvNorm {
                weight: &w,
                bias: Some(&b),
                stride: 2,
                padding: 1,
                gamma: &gamma,
                beta: &beta,
                eps: 1e-5,
            };
            let f = || conv_norm_act(&x, &p, Some(0.01), None);
            let y = if port { super::on_cpu(f) } else { f() }.expect("forward");
            let g = loss_grads(&y, &Lcg(73).vec(y.elem_count()));
            assert!(g.get(&x).is_none(), "port {port}: x got a gradient");
            // (candle's `cat` hands every argument its slice, frozen or not: zeros here)
            let db = g.get(&b).map(to_vec).unwrap_or_default();
            assert!(
                db.iter().all(|&v| v == 0.0),
                "port {port}: frozen b got {db:?}"
            );
            results.push((to_vec(&y), grad_of(&g, &gv), grad_of(&g, &bv)));
        }
        let (fast, port) = (&results[0], &results[1]);
        assert_close("frozen forward", &port.0, &f64v(&fast.0), 1e-5);
        assert_close("frozen dgamma", &port.1, &f64v(&fast.1), 1e-5);
        assert_close("frozen dbeta", &port.2, &f64v(&fast.2), 1e-5);
    }

    #[test]
    fn pooling_norm_activations_and_cat_match_the_kernels() {
        use super::super as ops;
        let xd: &[usize] = &[2, 3, 5, 4, 7];
        compare("avg_pool3d", &[xd], 41, 1e-6, |t, port| {
            if port {
                super::avg_pool3d(&t[0], 2)
            } else {
                ops::avg_pool3d(&t[0], 2)
            }
        });
        for slope in [None, Some(0.01)] {
            compare(
                &format!("instance_norm3d {slope:?}"),
                &[xd, &[3], &[3]],
                43,
                1e-5,
                |t, port| {
                    if port {
                        super::instance_norm3d(&t[0], &t[1], &t[2], 1e-5, slope)
                    } else {
                        ops::instance_norm3d(&t[0], &t[1], &t[2], 1e-5, slope)
                    }
                },
            );
        }
        // with exact zeros, where PyTorch's gradient is the slope
        let mut data = random(&[xd], 47);
        data[0].iter_mut().step_by(5).for_each(|v| *v = 0.0);
        compare_on("leaky_relu", &[xd], data, 47, 0.0, |t, port| {
            if port {
                super::leaky_relu(&t[0], 0.01)
            } else {
                ops::leaky_relu(&t[0], 0.01)
            }
        });
        compare("add_leaky_relu", &[xd, xd], 53, 1e-6, |t, port| {
            if port {
                super::add_leaky_relu(&t[0], &t[1], 0.01)
            } else {
                ops::add_leaky_relu(&t[0], &t[1], 0.01)
            }
        });
        compare(
            "cat_channels",
            &[xd, &[2, 2, 5, 4, 7]],
            59,
            0.0,
            |t, port| {
                if port {
                    super::cat_channels(&t[0], &t[1])
                } else {
                    ops::cat_channels(&t[0], &t[1])
                }
            },
        );
    }
}
