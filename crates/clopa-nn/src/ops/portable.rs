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
//! * instance norm = mean and biased variance over D·H·W (two-pass, f32).
//! * LeakyReLU = `where(x > 0, x, slope·x)`, whose gradient at 0 is the slope, as in PyTorch.

use std::cell::Cell;

use candle_core::{D, Result, Tensor};

/// See [`crate::ops::conv3d`]; arguments already checked.
pub fn conv3d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
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

/// See [`crate::ops::conv_transpose3d`]; arguments already checked.
pub fn conv_transpose3d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, s: usize) -> Result<Tensor> {
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

/// See [`crate::ops::avg_pool3d`]; arguments already checked.
pub fn avg_pool3d(x: &Tensor, k: usize) -> Result<Tensor> {
    let (bn, c, d, h, w) = x.dims5()?;
    let (od, oh, ow) = (d / k, h / k, w / k);
    x.narrow(2, 0, od * k)?
        .narrow(3, 0, oh * k)?
        .narrow(4, 0, ow * k)?
        .contiguous()?
        .reshape(vec![bn, c, od, k, oh, k, ow, k])?
        .sum(7)?
        .sum(5)?
        .sum(3)?
        .affine(1.0 / (k * k * k) as f64, 0.0)
}

/// See [`crate::ops::instance_norm3d`]; arguments already checked.
pub fn instance_norm3d(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    negative_slope: Option<f64>,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (bn, c) = (dims[0], dims[1]);
    let xf = x.reshape((bn, c, ()))?;
    let xc = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = y
        .broadcast_mul(&gamma.reshape((1, c, 1))?)?
        .broadcast_add(&beta.reshape((1, c, 1))?)?
        .reshape(dims)?;
    match negative_slope {
        Some(s) => leaky_relu(&y, s),
        None => Ok(y),
    }
}

/// See [`crate::ops::leaky_relu`].
pub fn leaky_relu(x: &Tensor, negative_slope: f64) -> Result<Tensor> {
    let pos = x.gt(&x.zeros_like()?)?;
    pos.where_cond(x, &x.affine(negative_slope, 0.0)?)
}

/// See [`crate::ops::add_leaky_relu`].
pub fn add_leaky_relu(a: &Tensor, b: &Tensor, negative_slope: f64) -> Result<Tensor> {
    leaky_relu(&(a + b)?, negative_slope)
}

/// See [`crate::ops::cat_channels`].
pub fn cat_channels(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Tensor::cat(&[a, b], 1)
}

thread_local! {
    static ON_CPU: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the compositions standing in for the CPU kernels on this thread: what a GPU
/// runs, on the CPU, to compare a whole network's values and gradients with the fast kernels'.
pub fn on_cpu<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ON_CPU.set(self.0);
        }
    }
    let _restore = Restore(ON_CPU.replace(true));
    f()
}

/// `true` when `t` should take the composition: it lives where the fast CPU kernels cannot
/// run, or [`on_cpu`] asked for it.
pub(crate) fn off_cpu(t: &Tensor) -> bool {
    !t.device().is_cpu() || ON_CPU.get()
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
            compare(
                &format!("conv_transpose3d case {i}"),
                &[&xd, &wd, &bd],
                31 + i as u64,
                1e-5,
                |t, port| {
                    if port {
                        super::conv_transpose3d(&t[0], &t[1], Some(&t[2]), s)
                    } else {
                        fast(&t[0], &t[1], Some(&t[2]), s)
                    }
                },
            );
        }
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
