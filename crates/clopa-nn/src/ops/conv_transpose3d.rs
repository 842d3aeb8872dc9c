//! `conv_transpose3d` with kernel = stride (the U-Net decoder's upsampling), as a candle custom op.
//!
//! A transposed convolution is the input gradient of a convolution, so it reuses `conv3d.rs`'s
//! kernels with the roles swapped: with `C` = the convolution from the (large) output space to the
//! (small) input space, whose weight is exactly the PyTorch ConvTranspose weight
//! `(Cin, Cout, s, s, s)`, forward = `conv_dx`, dX = `conv_fwd`, dW = `conv_dw(dY, x)`.
//! With kernel = stride the tiles never overlap, so the column scatter is a plain copy-add.

use candle_core::{Layout, Result, Shape, Tensor};

use super::conv3d::{Conv3dOp, ConvDwOp, ConvGeom, Grads3, bias_data, bias_grad, conv_dx};
use super::portable;
use super::{Op, check_layout, check_vec, dims5, grad_if, invalid};

const NAME: &str = "conv_transpose3d";

/// `g` is the geometry of the *adjoint convolution*: its input is this op's output.
#[derive(Clone, Copy, Debug)]
struct ConvTranspose3dOp {
    g: ConvGeom,
}

impl ConvTranspose3dOp {
    fn fwd(
        &self,
        (xs, xl): (&[f32], &Layout),
        (ws, wl): (&[f32], &Layout),
        b: Option<(&[f32], &Layout)>,
    ) -> Result<(Vec<f32>, Shape)> {
        check_layout(NAME, "x", xl, &self.g.out_dims())?;
        check_layout(NAME, "w", wl, &self.g.w_dims())?;
        let y = conv_dx(xs, ws, bias_data(NAME, b, self.g.cin)?, &self.g);
        Ok((y, Shape::from(self.g.in_dims().to_vec())))
    }

    /// Gradients of (x, w, b), each only where that argument is tracked.
    fn grads(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, dy: &Tensor) -> Result<Grads3> {
        let dx = grad_if(x, || dy.apply_op2_no_bwd(w, &Op(Conv3dOp { g: self.g })))?;
        let dw = grad_if(w, || {
            dy.apply_op2_no_bwd(
                x,
                &Op(ConvDwOp {
                    g: self.g,
                    name: "conv_transpose3d-dw",
                }),
            )
        })?;
        Ok([dx, dw, bias_grad(b, dy)?])
    }
}

kernel_with_optional_bias!(ConvTranspose3dOp, NAME);

/// Transposed 3D convolution with kernel = stride = `stride`, no padding, like PyTorch's
/// `ConvTranspose3d(Cin, Cout, kernel_size=s, stride=s)`: `x` (B, Cin, D, H, W),
/// `w` (Cin, Cout, s, s, s), optional `b` (Cout) → (B, Cout, D·s, H·s, W·s).
pub fn conv_transpose3d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
) -> Result<Tensor> {
    let [bn, cin, d, h, wd] = dims5(NAME, "x", x)?;
    let [wcin, cout, k, k2, k3] = dims5(NAME, "w", w)?;
    if wcin != cin {
        return Err(invalid(
            NAME,
            format!("w has {wcin} input channels, x has {cin}"),
        ));
    }
    if stride == 0 || [k, k2, k3] != [stride; 3] {
        return Err(invalid(
            NAME,
            format!("kernel must equal stride {stride} in every dim, got {k}x{k2}x{k3}"),
        ));
    }
    let g = ConvGeom::new(
        bn,
        cout,
        cin,
        (d * stride, h * stride, wd * stride),
        stride,
        stride,
        0,
    )
    .ok_or_else(|| invalid(NAME, format!("empty input {:?}", x.dims())))?;
    if let Some(b) = b {
        check_vec(NAME, "bias", b, cout)?;
    }
    if portable::off_cpu(x) {
        return portable::conv_transpose3d(x, w, b, stride);
    }
    let op = Op(ConvTranspose3dOp { g });
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// Naive f64 transposed convolution (kernel = stride = s).
    fn naive(
        x: &[f64],
        w: &[f64],
        b: Option<&[f64]>,
        dims: [usize; 5],
        cout: usize,
        s: usize,
    ) -> Vec<f64> {
        let [bn, cin, d, h, wd] = dims;
        let (od, oh, ow) = (d * s, h * s, wd * s);
        let mut y = vec![0f64; bn * cout * od * oh * ow];
        for bi in 0..bn {
            for co in 0..cout {
                for z in 0..od {
                    for yy in 0..oh {
                        for xx in 0..ow {
                            let mut acc = b.map_or(0.0, |b| b[co]);
                            for ci in 0..cin {
                                let xi = (((bi * cin + ci) * d + z / s) * h + yy / s) * wd + xx / s;
                                let wi = (((ci * cout + co) * s + z % s) * s + yy % s) * s + xx % s;
                                acc += x[xi] * w[wi];
                            }
                            y[(((bi * cout + co) * od + z) * oh + yy) * ow + xx] = acc;
                        }
                    }
                }
            }
        }
        y
    }

    fn check_case(dims: [usize; 5], cout: usize, s: usize, bias: bool) {
        let cin = dims[1];
        let n: usize = dims.iter().product();
        let mut rng = Lcg(11 + s as u64);
        let x = rng.vec(n);
        let w = rng.vec(cin * cout * s * s * s);
        let bv = rng.vec(cout);
        let (xv, xt) = var(&x, &dims);
        let (wv, wt) = var(&w, &[cin, cout, s, s, s]);
        let (bvar, bt) = var(&bv, &[cout]);
        let y = conv_transpose3d(&xt, &wt, bias.then_some(&bt), s).expect("conv_transpose3d");
        let (x64, w64, b64) = (f64v(&x), f64v(&w), f64v(&bv));
        let yref = naive(&x64, &w64, bias.then_some(b64.as_slice()), dims, cout, s);
        assert_eq!(
            y.dims(),
            &[dims[0], cout, dims[2] * s, dims[3] * s, dims[4] * s]
        );
        assert_close("conv_transpose3d forward", &to_vec(&y), &yref, 1e-5);
        let r = rng.vec(yref.len());
        let r64 = f64v(&r);
        let grads = loss_grads(&y, &r);
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            dot(&naive(x, w, bias.then_some(b), dims, cout, s), &r64)
        };
        let fdx = fd_grad(&x64, |v| loss(v, &w64, &b64));
        let fdw = fd_grad(&w64, |v| loss(&x64, v, &b64));
        assert_close("conv_transpose3d dx", &grad_of(&grads, &xv), &fdx, 1e-5);
        assert_close("conv_transpose3d dw", &grad_of(&grads, &wv), &fdw, 1e-5);
        if bias {
            let fdb = fd_grad(&b64, |v| loss(&x64, &w64, v));
            assert_close("conv_transpose3d db", &grad_of(&grads, &bvar), &fdb, 1e-5);
        }
    }

    #[test]
    fn stride2_odd_sizes_batch2_bias() {
        check_case([2, 3, 3, 2, 5], 4, 2, true);
    }

    #[test]
    fn stride2_no_bias_cin_gt_cout() {
        check_case([1, 5, 2, 3, 2], 2, 2, false);
    }

    #[test]
    fn stride1_pointwise() {
        check_case([1, 3, 2, 3, 4], 2, 1, true);
    }

    #[test]
    fn rejects_kernel_not_equal_stride() {
        let x = tensor(&[0.0; 8], &[1, 1, 2, 2, 2]);
        let w = tensor(&[0.0; 27], &[1, 1, 3, 3, 3]);
        assert!(conv_transpose3d(&x, &w, None, 2).is_err());
    }
}
