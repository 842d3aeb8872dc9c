//! `leaky_relu` as a parallel candle custom op (candle's own element-wise ops run on one thread).

use candle_core::{Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::portable;
use super::{ELEMWISE_CHUNK, Kernel, Op, invalid, zeroed};

const NAME: &str = "leaky_relu";

/// Branch-free (a branch mispredicts on every other voxel of real activations) so it vectorises.
#[inline]
pub(crate) fn lrelu(v: f32, slope: f32) -> f32 {
    v.max(0.0) + slope * v.min(0.0)
}

/// PyTorch's LeakyReLU derivative: 1 where the input is > 0, else the slope (also at 0).
#[inline]
pub(crate) fn lrelu_grad(v: f32, slope: f32) -> f32 {
    if v > 0.0 { 1.0 } else { slope }
}

#[derive(Clone, Copy, Debug)]
struct LeakyRelu {
    slope: f32,
}

impl Kernel<1> for LeakyRelu {
    const ARGS: [&'static str; 1] = ["x"];
    fn name(&self) -> &'static str {
        NAME
    }
    fn cpu(&self, [(x, l)]: [(&[f32], &Layout); 1]) -> Result<(Vec<f32>, Shape)> {
        // A local copy: read through `&self` the slope may alias the output and blocks vectorising.
        let slope = self.slope;
        let mut y = zeroed(x.len());
        y.par_chunks_mut(ELEMWISE_CHUNK)
            .zip(x.par_chunks(ELEMWISE_CHUNK))
            .for_each(move |(y, x)| {
                for (o, &v) in y.iter_mut().zip(x) {
                    *o = lrelu(v, slope);
                }
            });
        Ok((y, l.shape().clone()))
    }
    fn grads(&self, [x]: [&Tensor; 1], _res: &Tensor, dy: &Tensor) -> Result<[Option<Tensor>; 1]> {
        let dx = x.apply_op2_no_bwd(dy, &Op(LeakyReluBwd { slope: self.slope }))?;
        Ok([Some(dx)])
    }
}

/// (x, dy) → dx.
#[derive(Clone, Copy, Debug)]
struct LeakyReluBwd {
    slope: f32,
}

impl Kernel<2> for LeakyReluBwd {
    const ARGS: [&'static str; 2] = ["x", "dy"];
    fn name(&self) -> &'static str {
        "leaky_relu-bwd"
    }
    fn cpu(&self, [(x, l1), (dy, l2)]: [(&[f32], &Layout); 2]) -> Result<(Vec<f32>, Shape)> {
        if x.len() != dy.len() {
            return Err(invalid(
                NAME,
                format!("dy has shape {:?}, x {:?}", l2.dims(), l1.dims()),
            ));
        }
        let slope = self.slope;
        let mut dx = zeroed(x.len());
        dx.par_chunks_mut(ELEMWISE_CHUNK)
            .zip(
                x.par_chunks(ELEMWISE_CHUNK)
                    .zip(dy.par_chunks(ELEMWISE_CHUNK)),
            )
            .for_each(move |(o, (x, dy))| {
                for ((o, &v), &g) in o.iter_mut().zip(x).zip(dy) {
                    *o = g * lrelu_grad(v, slope);
                }
            });
        Ok((dx, l1.shape().clone()))
    }
}

/// `max(x, 0) + negative_slope · min(x, 0)` element-wise (any shape, f32; on a GPU also
/// f16/bf16), like PyTorch's
/// `F.leaky_relu`; the gradient at 0 is `negative_slope`, as in PyTorch.
pub fn leaky_relu(x: &Tensor, negative_slope: f64) -> Result<Tensor> {
    super::check_data(NAME, "x", x)?;
    if portable::off_cpu(x) {
        return portable::leaky_relu(x, negative_slope);
    }
    x.contiguous()?.apply_op1(Op(LeakyRelu {
        slope: negative_slope as f32,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn forward_and_gradient() {
        let dims = [2, 3, 5, 4, 3];
        let n: usize = dims.iter().product();
        let mut rng = Lcg(5);
        let mut x = rng.vec(n);
        x[0] = 0.0; // the kink: PyTorch's gradient there is the slope
        let r = rng.vec(n);
        let (xv, xt) = var(&x, &dims);
        let y = leaky_relu(&xt, 0.01).expect("leaky_relu");
        let yref: Vec<f64> = x
            .iter()
            .map(|&v| if v > 0.0 { v as f64 } else { 0.01 * v as f64 })
            .collect();
        assert_close("forward", &to_vec(&y), &yref, 1e-7);
        let g = loss_grads(&y, &r);
        let dref: Vec<f64> = x
            .iter()
            .zip(&r)
            .map(|(&v, &r)| r as f64 * if v > 0.0 { 1.0 } else { 0.01 })
            .collect();
        assert_close("dx", &grad_of(&g, &xv), &dref, 1e-7);
        // finite differences away from the kink
        let r64 = f64v(&r);
        let f = |x: &[f64]| {
            x.iter()
                .zip(&r64)
                .map(|(&v, r)| r * if v > 0.0 { v } else { 0.01 * v })
                .sum::<f64>()
        };
        let fd = fd_grad(&f64v(&x), f);
        assert_close(
            "dx vs finite differences",
            &grad_of(&g, &xv)[1..],
            &fd[1..],
            1e-6,
        );
    }

    #[test]
    fn non_contiguous_input() {
        let x = tensor(&[-1.0, 2.0, -3.0, 4.0], &[2, 2])
            .t()
            .expect("transpose");
        let y = leaky_relu(&x, 0.5).expect("leaky_relu");
        assert_eq!(to_vec(&y), vec![-0.5, -1.5, 2.0, 4.0]);
    }
}
