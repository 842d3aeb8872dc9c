//! `conv_norm_act`: conv3d → instance norm → (+ residual) → LeakyReLU, the U-Net's building
//! block, with an allocation-free tail in inference.
//!
//! When something upstream trains, this is exactly the composition of [`conv3d`],
//! [`instance_norm3d`] and [`add_leaky_relu`] (the backward needs the convolution's output).
//! On a device (or through [`super::portable`]) the tail after the convolution is one graph node
//! instead, `portable::norm_act`, which also takes the conv bias (it cancels in the norm); where
//! the kernel is frozen and the convolution a single op (cuDNN's), convolution and tail are one
//! node together, `portable::conv_norm_act`.
//! When nothing tracks a gradient, the convolution's output is a temporary only this function
//! holds, so the normalisation, residual add and LeakyReLU overwrite it in one pass: one full-size
//! buffer per layer instead of two or three, which at 96^3 saves ~100 MiB of fresh (page-faulted)
//! memory and a read + write pass per op. Results are bit-identical to the composition.

use candle_core::{Result, Tensor};

use super::instance_norm::{check_norm_act, instance_norm3d_inplace};
use super::{add_leaky_relu, conv3d, instance_norm3d};

/// The parameters of a convolution followed by an affine instance norm (PyTorch's `Conv3d` +
/// `InstanceNorm3d(affine=True)`): `weight` (Cout, Cin, k, k, k), `bias` (Cout), `gamma` and
/// `beta` (Cout).
#[derive(Clone, Copy, Debug)]
pub struct ConvNorm<'a> {
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub stride: usize,
    pub padding: usize,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub eps: f64,
}

impl ConvNorm<'_> {
    /// The checks of the norm's arguments for the convolution's result `y` (its bias, γ, β, eps,
    /// the slope, the residual): what both device paths of [`conv_norm_act`] check.
    fn check_tail(&self, y: &Tensor, slope: Option<f64>, residual: Option<&Tensor>) -> Result<()> {
        check_norm_act(
            y, self.bias, self.gamma, self.beta, self.eps, slope, residual,
        )
    }
}

/// `LeakyReLU(instance_norm3d(conv3d(x)) + residual)` for `x` (B, Cin, D, H, W): without a
/// `residual` nothing is added, without a `negative_slope` there is no activation. The same
/// values and gradients as the composed ops.
pub fn conv_norm_act(
    x: &Tensor,
    p: &ConvNorm,
    negative_slope: Option<f64>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    if super::portable::off_cpu(x) {
        // With a frozen kernel and a convolution that is one op (cuDNN's), the convolution and
        // the norm are one graph node (see `portable::conv_norm_act`: a gradient pass less)
        if !p.weight.track_op()
            && let Some((out, dx)) = super::conv3d::input_grad(x, p.weight, p.stride, p.padding)?
        {
            let conv = |xd: &Tensor| {
                let y = conv3d(xd, &p.weight.detach(), None, p.stride, p.padding)?;
                p.check_tail(&y, negative_slope, residual)?;
                Ok(y)
            };
            if let Some(y) = super::portable::conv_norm_act(
                x,
                conv,
                out,
                dx,
                p.bias,
                p.gamma,
                p.beta,
                p.eps,
                negative_slope,
                residual,
            )? {
                return Ok(y);
            }
        }
        // Otherwise the tail is one graph node (see `portable::norm_act`), which also takes
        // the conv bias: it cancels in the norm, and added to the conv output it would be one
        // more full-size tensor in the graph.
        let y = conv3d(x, p.weight, None, p.stride, p.padding)?;
        p.check_tail(&y, negative_slope, residual)?;
        return super::portable::norm_act(
            &y,
            p.bias,
            p.gamma,
            p.beta,
            p.eps,
            negative_slope,
            residual,
        );
    }
    let y = conv3d(x, p.weight, p.bias, p.stride, p.padding)?;
    let tracked = y.track_op()
        || p.gamma.track_op()
        || p.beta.track_op()
        || residual.is_some_and(Tensor::track_op);
    if !tracked {
        // `y` was just created by conv3d and has not escaped: overwriting it is unobservable.
        instance_norm3d_inplace(&y, p.gamma, p.beta, p.eps, negative_slope, residual)?;
        return Ok(y);
    }
    match residual {
        None => instance_norm3d(&y, p.gamma, p.beta, p.eps, negative_slope),
        Some(r) => {
            let z = instance_norm3d(&y, p.gamma, p.beta, p.eps, None)?;
            match negative_slope {
                Some(s) => add_leaky_relu(&z, r, s),
                None => z + r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// Values of the in-place (nothing tracked) and composed (tracked) paths, and the composition
    /// written out by hand, for every residual/slope combination.
    #[test]
    fn inplace_path_is_bit_identical_to_the_composition() {
        let (xd, wd) = ([2, 3, 5, 4, 6], [4, 3, 3, 3, 3]);
        let yd = [2, 4, 5, 4, 6];
        let mut rng = Lcg(91);
        let x = rng.vec(xd.iter().product());
        let w = rng.vec(wd.iter().product());
        let (b, g, bt) = (rng.vec(4), rng.vec(4), rng.vec(4));
        let res = rng.vec(yd.iter().product());
        let (xt, wt, bvt, gt, btt, rt) = (
            tensor(&x, &xd),
            tensor(&w, &wd),
            tensor(&b, &[4]),
            tensor(&g, &[4]),
            tensor(&bt, &[4]),
            tensor(&res, &yd),
        );
        let (gv, gvt) = var(&g, &[4]);
        for (slope, with_res) in [
            (Some(0.01), false),
            (None, false),
            (Some(0.01), true),
            (None, true),
        ] {
            let residual = with_res.then_some(&rt);
            let p = ConvNorm {
                weight: &wt,
                bias: Some(&bvt),
                stride: 1,
                padding: 1,
                gamma: &gt,
                beta: &btt,
                eps: 1e-5,
            };
            let fast = conv_norm_act(&xt, &p, slope, residual).expect("in place");
            assert!(!fast.track_op());
            let y = conv3d(&xt, &wt, Some(&bvt), 1, 1).expect("conv");
            let want = match (residual, slope) {
                (None, s) => instance_norm3d(&y, &gt, &btt, 1e-5, s),
                (Some(r), Some(s)) => instance_norm3d(&y, &gt, &btt, 1e-5, None)
                    .and_then(|z| add_leaky_relu(&z, r, s)),
                (Some(r), None) => instance_norm3d(&y, &gt, &btt, 1e-5, None).and_then(|z| z + r),
            }
            .expect("composition");
            assert_eq!(to_vec(&fast), to_vec(&want), "{slope:?} {with_res}");
            // with a trainable gamma the composed path runs and gives the same values
            let tracked = ConvNorm { gamma: &gvt, ..p };
            let slow = conv_norm_act(&xt, &tracked, slope, residual).expect("composed");
            assert!(slow.track_op());
            assert_eq!(to_vec(&slow), to_vec(&want), "{slope:?} {with_res}");
            let grads = loss_grads(&slow, &res);
            assert!(grads.get(gv.as_tensor()).is_some());
        }
        // the convolution's input is never overwritten
        assert_eq!(to_vec(&xt), x);
        assert_eq!(to_vec(&rt), res);
    }

    #[test]
    fn rejects_a_residual_of_the_wrong_shape() {
        let x = tensor(&[0.5; 16], &[1, 2, 2, 2, 2]);
        let w = tensor(&[0.1; 2 * 2 * 27], &[2, 2, 3, 3, 3]);
        let g = tensor(&[1.0; 2], &[2]);
        let r = tensor(&[0.0; 8], &[1, 1, 2, 2, 2]);
        let p = ConvNorm {
            weight: &w,
            bias: None,
            stride: 1,
            padding: 1,
            gamma: &g,
            beta: &g,
            eps: 1e-5,
        };
        let e = conv_norm_act(&x, &p, Some(0.01), Some(&r))
            .expect_err("shape")
            .to_string();
        assert!(e.contains("residual"), "{e}");
    }
}
