//! `add_leaky_relu`: LeakyReLU(a + b) fused in one parallel pass (the residual block's tail),
//! saving the full-size temporary and the single-threaded add candle would otherwise run.

use candle_core::{Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::leaky_relu::{lrelu, lrelu_grad};
use super::portable;
use super::{ELEMWISE_CHUNK, Kernel, Op, grad_if, invalid, zeroed};

const NAME: &str = "add_leaky_relu";

#[derive(Clone, Copy, Debug)]
struct AddLeakyRelu {
    slope: f32,
}

impl Kernel<2> for AddLeakyRelu {
    const ARGS: [&'static str; 2] = ["a", "b"];
    fn name(&self) -> &'static str {
        NAME
    }
    fn cpu(&self, [(a, l1), (b, l2)]: [(&[f32], &Layout); 2]) -> Result<(Vec<f32>, Shape)> {
        if l1.dims() != l2.dims() {
            return Err(invalid(
                NAME,
                format!("a has shape {:?}, b {:?}", l1.dims(), l2.dims()),
            ));
        }
        // A local copy: read through `&self` the slope may alias the output and blocks vectorising.
        let slope = self.slope;
        let mut y = zeroed(a.len());
        y.par_chunks_mut(ELEMWISE_CHUNK)
            .zip(
                a.par_chunks(ELEMWISE_CHUNK)
                    .zip(b.par_chunks(ELEMWISE_CHUNK)),
            )
            .for_each(move |(y, (a, b))| {
                for ((o, &u), &v) in y.iter_mut().zip(a).zip(b) {
                    *o = lrelu(u + v, slope);
                }
            });
        Ok((y, l1.shape().clone()))
    }
    fn grads(
        &self,
        [a, b]: [&Tensor; 2],
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<[Option<Tensor>; 2]> {
        if !a.track_op() && !b.track_op() {
            return Ok([None, None]);
        }
        // The mask is recomputed from a + b (not read off the result), which is exact for any slope.
        let d = a.apply_op3_no_bwd(b, dy, &Op(AddLeakyReluBwd { slope: self.slope }))?;
        Ok([grad_if(a, || Ok(d.clone()))?, grad_if(b, || Ok(d))?])
    }
}

/// (a, b, dy) → d(a + b).
#[derive(Clone, Copy, Debug)]
struct AddLeakyReluBwd {
    slope: f32,
}

impl Kernel<3> for AddLeakyReluBwd {
    const ARGS: [&'static str; 3] = ["a", "b", "dy"];
    fn name(&self) -> &'static str {
        "add_leaky_relu-bwd"
    }
    fn cpu(
        &self,
        [(a, l1), (b, _), (dy, l3)]: [(&[f32], &Layout); 3],
    ) -> Result<(Vec<f32>, Shape)> {
        if a.len() != b.len() || a.len() != dy.len() {
            return Err(invalid(
                NAME,
                format!("dy has shape {:?}, a {:?}", l3.dims(), l1.dims()),
            ));
        }
        let slope = self.slope;
        let mut d = zeroed(a.len());
        d.par_chunks_mut(ELEMWISE_CHUNK)
            .zip(
                a.par_chunks(ELEMWISE_CHUNK).zip(
                    b.par_chunks(ELEMWISE_CHUNK)
                        .zip(dy.par_chunks(ELEMWISE_CHUNK)),
                ),
            )
            .for_each(move |(d, (a, (b, dy)))| {
                for (((o, &u), &v), &g) in d.iter_mut().zip(a).zip(b).zip(dy) {
                    *o = g * lrelu_grad(u + v, slope);
                }
            });
        Ok((d, l1.shape().clone()))
    }
}

/// `leaky_relu(a + b, negative_slope)` for two f32 tensors of the same shape (no broadcasting;
/// on a GPU also f16/bf16).
pub fn add_leaky_relu(a: &Tensor, b: &Tensor, negative_slope: f64) -> Result<Tensor> {
    for (name, t) in [("a", a), ("b", b)] {
        super::check_data(NAME, name, t)?;
    }
    if a.dims() != b.dims() {
        return Err(invalid(
            NAME,
            format!("a has shape {:?}, b {:?}", a.dims(), b.dims()),
        ));
    }
    if portable::off_cpu(a) {
        return portable::add_leaky_relu(a, b, negative_slope);
    }
    a.contiguous()?.apply_op2(
        &b.contiguous()?,
        Op(AddLeakyRelu {
            slope: negative_slope as f32,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn forward_and_gradients() {
        let dims = [2, 3, 4, 5, 3];
        let n: usize = dims.iter().product();
        let mut rng = Lcg(9);
        let (a, b, r) = (rng.vec(n), rng.vec(n), rng.vec(n));
        let (av, at) = var(&a, &dims);
        let (bv, bt) = var(&b, &dims);
        let y = add_leaky_relu(&at, &bt, 0.01).expect("add_leaky_relu");
        let f = |z: f64| if z > 0.0 { z } else { 0.01 * z };
        let yref: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(&u, &v)| f(u as f64 + v as f64))
            .collect();
        assert_close("forward", &to_vec(&y), &yref, 1e-6);
        let g = loss_grads(&y, &r);
        let (a64, b64, r64) = (f64v(&a), f64v(&b), f64v(&r));
        let loss = |a: &[f64], b: &[f64]| {
            a.iter()
                .zip(b)
                .zip(&r64)
                .map(|((u, v), r)| r * f(u + v))
                .sum::<f64>()
        };
        assert_close(
            "da",
            &grad_of(&g, &av),
            &fd_grad(&a64, |v| loss(v, &b64)),
            1e-6,
        );
        assert_close(
            "db",
            &grad_of(&g, &bv),
            &fd_grad(&b64, |v| loss(&a64, v)),
            1e-6,
        );
    }

    #[test]
    fn rejects_shape_mismatch() {
        let a = tensor(&[0.0; 8], &[1, 1, 2, 2, 2]);
        let b = tensor(&[0.0; 4], &[1, 1, 1, 2, 2]);
        assert!(add_leaky_relu(&a, &b, 0.01).is_err());
    }
}
