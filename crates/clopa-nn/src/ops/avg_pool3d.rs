//! `avg_pool3d` with kernel = stride (the residual skip path's downsampling), as a parallel
//! candle custom op.

use candle_core::{Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::portable;
use super::{Kernel, Op, check_layout, dims5, invalid, zeroed};

const NAME: &str = "avg_pool3d";

/// Pools `[b, c, d, h, w]` by `k` (floor): the output dims.
fn out_dims(dims: [usize; 5], k: usize) -> [usize; 5] {
    [dims[0], dims[1], dims[2] / k, dims[3] / k, dims[4] / k]
}

#[derive(Clone, Copy, Debug)]
struct AvgPool3d {
    k: usize,
    dims: [usize; 5],
}

impl Kernel<1> for AvgPool3d {
    const ARGS: [&'static str; 1] = ["x"];
    fn name(&self) -> &'static str {
        NAME
    }
    fn cpu(&self, [(x, l)]: [(&[f32], &Layout); 1]) -> Result<(Vec<f32>, Shape)> {
        check_layout(NAME, "x", l, &self.dims)?;
        let [_, _, d, h, w] = self.dims;
        let od = out_dims(self.dims, self.k);
        let (pd, ph, pw) = (od[2], od[3], od[4]);
        let k = self.k;
        let scale = 1.0 / (k * k * k) as f32;
        let mut y = zeroed(od.iter().product());
        let (in_plane, out_plane) = (d * h * w, pd * ph * pw);
        if out_plane > 0 {
            y.par_chunks_mut(out_plane)
                .zip(x.par_chunks(in_plane))
                .for_each(|(y, x)| {
                    for z in 0..pd {
                        for yy in 0..ph {
                            let row = &mut y[(z * ph + yy) * pw..(z * ph + yy + 1) * pw];
                            for dz in 0..k {
                                for dy in 0..k {
                                    let src = &x[((z * k + dz) * h + yy * k + dy) * w..][..pw * k];
                                    for (o, c) in row.iter_mut().zip(src.chunks_exact(k)) {
                                        *o += c.iter().sum::<f32>();
                                    }
                                }
                            }
                            row.iter_mut().for_each(|v| *v *= scale);
                        }
                    }
                });
        }
        Ok((y, Shape::from(od.to_vec())))
    }
    fn grads(&self, _x: [&Tensor; 1], _res: &Tensor, dy: &Tensor) -> Result<[Option<Tensor>; 1]> {
        let dx = dy.apply_op1_no_bwd(&Op(AvgPool3dBwd {
            k: self.k,
            dims: self.dims,
        }))?;
        Ok([Some(dx)])
    }
}

/// dy → dx: each input voxel of a pooling window gets `dy / k³`; the floor remainder gets 0.
#[derive(Clone, Copy, Debug)]
struct AvgPool3dBwd {
    k: usize,
    dims: [usize; 5],
}

impl Kernel<1> for AvgPool3dBwd {
    const ARGS: [&'static str; 1] = ["dy"];
    fn name(&self) -> &'static str {
        "avg_pool3d-bwd"
    }
    fn cpu(&self, [(dy, l)]: [(&[f32], &Layout); 1]) -> Result<(Vec<f32>, Shape)> {
        let od = out_dims(self.dims, self.k);
        check_layout(NAME, "dy", l, &od)?;
        let [_, _, d, h, w] = self.dims;
        let (pd, ph, pw) = (od[2], od[3], od[4]);
        let k = self.k;
        let scale = 1.0 / (k * k * k) as f32;
        let mut dx = zeroed(self.dims.iter().product());
        let (in_plane, out_plane) = (d * h * w, pd * ph * pw);
        if out_plane > 0 {
            dx.par_chunks_mut(in_plane)
                .zip(dy.par_chunks(out_plane))
                .for_each(|(dx, dy)| {
                    for z in 0..pd {
                        for yy in 0..ph {
                            let row = &dy[(z * ph + yy) * pw..(z * ph + yy + 1) * pw];
                            for dz in 0..k {
                                for dyy in 0..k {
                                    let dst =
                                        &mut dx[((z * k + dz) * h + yy * k + dyy) * w..][..pw * k];
                                    for (c, &g) in dst.chunks_exact_mut(k).zip(row) {
                                        c.fill(g * scale);
                                    }
                                }
                            }
                        }
                    }
                });
        }
        Ok((dx, Shape::from(self.dims.to_vec())))
    }
}

/// Average pooling of `x` (B, C, D, H, W) with kernel = stride = `k`, no padding, like PyTorch's
/// `AvgPool3d(k, k)`: output (B, C, D/k, H/k, W/k), rounded down (trailing voxels are dropped).
pub fn avg_pool3d(x: &Tensor, k: usize) -> Result<Tensor> {
    let dims = dims5(NAME, "x", x)?;
    if k == 0 {
        return Err(invalid(NAME, "kernel must be at least 1"));
    }
    if portable::off_cpu(x) {
        return portable::avg_pool3d(x, k);
    }
    x.contiguous()?.apply_op1(Op(AvgPool3d { k, dims }))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn naive(x: &[f64], dims: [usize; 5], k: usize) -> Vec<f64> {
        let od = out_dims(dims, k);
        let [_, _, d, h, w] = dims;
        let mut y = vec![0f64; od.iter().product()];
        for bc in 0..dims[0] * dims[1] {
            for z in 0..od[2] {
                for yy in 0..od[3] {
                    for xx in 0..od[4] {
                        let mut s = 0.0;
                        for a in 0..k {
                            for b in 0..k {
                                for c in 0..k {
                                    s +=
                                        x[((bc * d + z * k + a) * h + yy * k + b) * w + xx * k + c];
                                }
                            }
                        }
                        y[((bc * od[2] + z) * od[3] + yy) * od[4] + xx] = s / (k * k * k) as f64;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn odd_sizes_floor_and_gradient() {
        let dims = [2, 3, 5, 4, 7];
        let n: usize = dims.iter().product();
        let mut rng = Lcg(13);
        let x = rng.vec(n);
        let (xv, xt) = var(&x, &dims);
        let y = avg_pool3d(&xt, 2).expect("avg_pool3d");
        assert_eq!(y.dims(), &[2, 3, 2, 2, 3]);
        let x64 = f64v(&x);
        assert_close("forward", &to_vec(&y), &naive(&x64, dims, 2), 1e-6);
        let r = rng.vec(y.elem_count());
        let r64 = f64v(&r);
        let g = loss_grads(&y, &r);
        let fd = fd_grad(&x64, |v| dot(&naive(v, dims, 2), &r64));
        assert_close("dx", &grad_of(&g, &xv), &fd, 1e-6);
    }
}
