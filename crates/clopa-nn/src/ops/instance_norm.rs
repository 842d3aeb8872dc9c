//! `instance_norm3d` (+ optional fused LeakyReLU) as a candle `CustomOp3` (x, gamma, beta).
//!
//! One (sample, channel) plane per rayon task. Statistics are accumulated around a shift (the
//! plane's first value) in f32 blocks of 256 whose sums are added in f64, so a 64^3 or larger
//! plane with a large mean loses nothing to a long sequential f32 sum. The backward is two
//! passes per plane: one for the statistics and the sums `Σ dz`, `Σ dz·x̂`, one writing dX;
//! dgamma and dbeta fall out of the first. The LeakyReLU mask is read off the forward result
//! (y > 0 ⇔ pre-activation > 0 for a non-negative slope), so the backward needs neither beta
//! nor the pre-activation.

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::isa::{Isa, isa};
use super::leaky_relu::lrelu;
use super::portable;
use super::{Kernel, Op, check_layout, check_vec, cpu_slice, dims5, grad_if, invalid, zeroed};

const NAME: &str = "instance_norm3d";

/// Elements per f32 partial sum: 16 lanes × 16 values, so each lane adds 16 f32 values (error
/// ≲ 16 ε relative) before the block's lanes go into the f64 totals. This keeps 10^7-element
/// planes exact to f64-summation level while the inner loop runs in 16-wide f32 vectors (the
/// f64-lane loop it replaced ran at 2 doubles per instruction and was ~10 % of a training step).
const BLOCK: usize = 256;

/// Runs the `#[inline(always)]` body `$body` compiled for the best SIMD level [`isa`] allows:
/// the crate is built for baseline x86-64, where the auto-vectorised loops use 4-lane SSE2. The
/// bodies use no FMA contraction (Rust never fuses `a * b + c`), so every level gives the same
/// bits; only the vector width changes.
macro_rules! simd_dispatch {
    ($body:ident, ($($a:ident: $t:ty),*) -> $r:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        fn avx512($($a: $t),*) -> $r {
            $body($($a),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn avx2($($a: $t),*) -> $r {
            $body($($a),*)
        }
        #[cfg(target_arch = "x86_64")]
        match isa() {
            // SAFETY: `isa()` never exceeds what the CPU supports.
            Isa::Avx512 => return unsafe { avx512($($a),*) },
            // SAFETY: as above.
            Isa::Avx2 => return unsafe { avx2($($a),*) },
            Isa::Baseline => {}
        }
        return $body($($a),*);
    };
}

/// Shifted sums of one plane: `(Σ d, Σ d²)` with `d = x − shift` (`shift` is one of the plane's
/// own values, so `d` is small where the plane is nearly constant).
fn shifted_moments(x: &[f32], shift: f32) -> (f64, f64) {
    #[inline(always)]
    fn body(x: &[f32], shift: f32) -> (f64, f64) {
        let (mut a, mut b) = (0f64, 0f64);
        for blk in x.chunks(BLOCK) {
            let (mut s1, mut s2) = ([0f32; 16], [0f32; 16]);
            let lanes = blk.chunks_exact(16);
            let rest = lanes.remainder();
            for c in lanes {
                for i in 0..16 {
                    let d = c[i] - shift;
                    s1[i] += d;
                    s2[i] += d * d;
                }
            }
            for (i, &v) in rest.iter().enumerate() {
                let d = v - shift;
                s1[i] += d;
                s2[i] += d * d;
            }
            a += s1.iter().map(|&v| v as f64).sum::<f64>();
            b += s2.iter().map(|&v| v as f64).sum::<f64>();
        }
        (a, b)
    }
    simd_dispatch!(body, (x: &[f32], shift: f32) -> (f64, f64));
}

/// The backward's first pass over one plane: `[Σ d, Σ d², Σ dz, Σ dz·d]` with `d = x − shift`
/// and `dz = dy · LeakyReLU'` (read off the forward output `y`: slope where `y ≤ 0`).
fn backward_sums(x: &[f32], y: &[f32], dy: &[f32], slope: Option<f32>, shift: f32) -> [f64; 4] {
    #[inline(always)]
    fn body(x: &[f32], y: &[f32], dy: &[f32], slope: f32, shift: f32) -> [f64; 4] {
        let mut tot = [0f64; 4];
        for ((xb, yb), gb) in x.chunks(BLOCK).zip(y.chunks(BLOCK)).zip(dy.chunks(BLOCK)) {
            let mut s = [[0f32; 16]; 4];
            let mut lane = |i: usize, xv: f32, yv: f32, g: f32| {
                let d = xv - shift;
                let dz = if yv <= 0.0 { g * slope } else { g };
                s[0][i] += d;
                s[1][i] += d * d;
                s[2][i] += dz;
                s[3][i] += dz * d;
            };
            let (xl, yl, gl) = (
                xb.chunks_exact(16),
                yb.chunks_exact(16),
                gb.chunks_exact(16),
            );
            let (xr, yr, gr) = (xl.remainder(), yl.remainder(), gl.remainder());
            for ((xc, yc), gc) in xl.zip(yl).zip(gl) {
                for i in 0..16 {
                    lane(i, xc[i], yc[i], gc[i]);
                }
            }
            for (i, ((&xv, &yv), &g)) in xr.iter().zip(yr).zip(gr).enumerate() {
                lane(i, xv, yv, g);
            }
            for (t, l) in tot.iter_mut().zip(&s) {
                *t += l.iter().map(|&v| v as f64).sum::<f64>();
            }
        }
        tot
    }
    // No LeakyReLU is slope 1: the mask multiplies by one.
    let slope = slope.unwrap_or(1.0);
    simd_dispatch!(
        body,
        (x: &[f32], y: &[f32], dy: &[f32], slope: f32, shift: f32) -> [f64; 4]
    );
}

/// The backward's second pass: `dx = coef·(dz − mg − (x − m)·r·mh)`.
fn write_dx(dx: &mut [f32], xyg: (&[f32], &[f32], &[f32]), slope: Option<f32>, k: [f32; 5]) {
    #[inline(always)]
    fn body(dx: &mut [f32], (x, y, dy): (&[f32], &[f32], &[f32]), slope: f32, k: [f32; 5]) {
        let [coef, mg, m, r, mh] = k;
        for (((o, &xv), &yv), &g) in dx.iter_mut().zip(x).zip(y).zip(dy) {
            let dz = if yv <= 0.0 { g * slope } else { g };
            *o = coef * (dz - mg - (xv - m) * r * mh);
        }
    }
    let slope = slope.unwrap_or(1.0);
    simd_dispatch!(
        body,
        (dx: &mut [f32], xyg: (&[f32], &[f32], &[f32]), slope: f32, k: [f32; 5]) -> ()
    );
}

/// Mean and biased variance of a plane.
fn plane_stats(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let shift = x.first().copied().unwrap_or(0.0);
    let (s1, s2) = shifted_moments(x, shift);
    let md = s1 / n;
    (shift as f64 + md, (s2 / n - md * md).max(0.0))
}

/// `(mean, gamma·rstd, beta)` of a plane: its normalised value is `(v − mean)·a + beta`.
fn plane_affine(x: &[f32], gamma: f32, beta: f32, eps: f64) -> (f32, f32, f32) {
    let (mean, var) = plane_stats(x);
    let rstd = 1.0 / (var + eps).sqrt();
    (mean as f32, (gamma as f64 * rstd) as f32, beta)
}

/// Normalised value followed by LeakyReLU with slope `s`.
#[inline]
fn norm_act(v: f32, (m, a, bt): (f32, f32, f32), s: f32) -> f32 {
    let z = (v - m) * a + bt;
    if z > 0.0 { z } else { z * s }
}

#[derive(Clone, Copy, Debug)]
struct InstanceNorm {
    eps: f64,
    slope: Option<f32>,
    dims: [usize; 5],
}

impl Kernel<3> for InstanceNorm {
    const ARGS: [&'static str; 3] = ["x", "gamma", "beta"];
    fn name(&self) -> &'static str {
        NAME
    }
    fn cpu(
        &self,
        [(x, l1), (gamma, l2), (beta, l3)]: [(&[f32], &Layout); 3],
    ) -> Result<(Vec<f32>, Shape)> {
        let [_, c, d, h, w] = self.dims;
        check_layout(NAME, "x", l1, &self.dims)?;
        check_layout(NAME, "gamma", l2, &[c])?;
        check_layout(NAME, "beta", l3, &[c])?;
        let n = d * h * w;
        let mut y = zeroed(x.len());
        if n > 0 {
            y.par_chunks_mut(n)
                .zip(x.par_chunks(n))
                .enumerate()
                .for_each(|(pi, (y, x))| {
                    let ch = pi % c;
                    let (m, a, bt) = plane_affine(x, gamma[ch], beta[ch], self.eps);
                    match self.slope {
                        Some(s) => y.iter_mut().zip(x).for_each(|(o, &v)| {
                            *o = norm_act(v, (m, a, bt), s);
                        }),
                        None => y
                            .iter_mut()
                            .zip(x)
                            .for_each(|(o, &v)| *o = (v - m) * a + bt),
                    }
                });
        }
        Ok((y, l1.shape().clone()))
    }

    fn grads(
        &self,
        [x, gamma, beta]: [&Tensor; 3],
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let [_, c, ..] = self.dims;
        let total: usize = self.dims.iter().product();
        // Without a tracked x (the first conv's output when neither the conv nor the network
        // input trains) only the affine gradients are wanted: pass 2 is skipped.
        let need_dx = x.track_op();
        if !need_dx && !gamma.track_op() && !beta.track_op() {
            return Ok([None, None, None]);
        }
        let op = InstanceNormBwd {
            eps: self.eps,
            slope: self.slope,
            dims: self.dims,
            gamma: gamma.to_vec1::<f32>()?,
            need_dx,
        };
        let packed = x.apply_op3_no_bwd(res, dy, &Op(op))?;
        let nx = if need_dx { total } else { 0 };
        let dx = grad_if(x, || {
            packed.narrow(0, 0, total)?.reshape(self.dims.to_vec())
        })?;
        let dgamma = grad_if(gamma, || packed.narrow(0, nx, c))?;
        let dbeta = grad_if(beta, || packed.narrow(0, nx + c, c))?;
        Ok([dx, dgamma, dbeta])
    }
}

/// (x, y, dy) → `[dx (flattened, only if need_dx), dgamma (C), dbeta (C)]` in one tensor, since a
/// custom op has one output; the caller splits it with `narrow` (views, no copies).
#[derive(Clone, Debug)]
struct InstanceNormBwd {
    eps: f64,
    slope: Option<f32>,
    dims: [usize; 5],
    gamma: Vec<f32>,
    need_dx: bool,
}

impl Kernel<3> for InstanceNormBwd {
    const ARGS: [&'static str; 3] = ["x", "y", "dy"];
    fn name(&self) -> &'static str {
        "instance_norm3d-bwd"
    }
    fn cpu(
        &self,
        [(x, l1), (y, l2), (dy, l3)]: [(&[f32], &Layout); 3],
    ) -> Result<(Vec<f32>, Shape)> {
        let [b, c, d, h, w] = self.dims;
        check_layout(NAME, "x", l1, &self.dims)?;
        check_layout(NAME, "y", l2, &self.dims)?;
        check_layout(NAME, "dy", l3, &self.dims)?;
        let n = d * h * w;
        let total = if self.need_dx { x.len() } else { 0 };
        let mut out = zeroed(total + 2 * c);
        let (dxs, tail) = out.split_at_mut(total);
        // Without dX each plane still needs a chunk to zip with: an empty one.
        let dx_planes: Vec<&mut [f32]> = if self.need_dx {
            dxs.chunks_mut(n.max(1)).collect()
        } else {
            (0..b * c).map(|_| Default::default()).collect()
        };
        let slope = self.slope;
        let sums: Vec<(f64, f64)> = if n == 0 {
            vec![(0.0, 0.0); b * c]
        } else {
            dx_planes
                .into_par_iter()
                .zip(x.par_chunks(n).zip(y.par_chunks(n).zip(dy.par_chunks(n))))
                .enumerate()
                .map(|(pi, (dx, (x, (y, dy))))| {
                    let ch = pi % c;
                    let shift = x[0];
                    // pass 1: moments of x and the two sums of dz = dy · LeakyReLU'(z)
                    let [s1, s2, g1, g2] = backward_sums(x, y, dy, slope, shift);
                    let nf = n as f64;
                    let md = s1 / nf;
                    let var = (s2 / nf - md * md).max(0.0);
                    let rstd = 1.0 / (var + self.eps).sqrt();
                    // Σ dz·x̂ with x̂ = (x − mean)·rstd = (d − md)·rstd
                    let gxh = rstd * (g2 - md * g1);
                    // pass 2: dx = γ·rstd·(dz − mean(dz) − x̂·mean(dz·x̂))
                    let coef = (self.gamma[ch] as f64 * rstd) as f32;
                    let (m, r) = ((shift as f64 + md) as f32, rstd as f32);
                    let (mg, mh) = ((g1 / nf) as f32, (gxh / nf) as f32);
                    // (dx is empty without need_dx, so this is then a no-op.)
                    write_dx(dx, (x, y, dy), slope, [coef, mg, m, r, mh]);
                    (gxh, g1)
                })
                .collect()
        };
        for ch in 0..c {
            let (mut dg, mut db) = (0f64, 0f64);
            for bi in 0..b {
                dg += sums[bi * c + ch].0;
                db += sums[bi * c + ch].1;
            }
            tail[ch] = dg as f32;
            tail[c + ch] = db as f32;
        }
        Ok((out, Shape::from(total + 2 * c)))
    }
}

/// Instance normalisation of `x` (B, C, D, H, W) over D·H·W per (sample, channel), biased
/// variance, `eps` added to the variance, affine `gamma`/`beta` (C,) — PyTorch's
/// `InstanceNorm3d(C, eps, affine=True)` without running statistics. With
/// `negative_slope: Some(s)` (s ≥ 0) a LeakyReLU follows the affine in the same pass.
pub fn instance_norm3d(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    negative_slope: Option<f64>,
) -> Result<Tensor> {
    let op = InstanceNorm::new(x, gamma, beta, eps, negative_slope)?;
    if portable::off_cpu(x) {
        return portable::instance_norm3d(x, gamma, beta, eps, negative_slope);
    }
    x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, Op(op))
}

/// The checks of the tail of [`super::conv_norm_act`] on a device, or through the compositions
/// ([`portable::norm_act`]): those of [`instance_norm3d`], the conv `bias` (C,) that the norm
/// takes over and the `residual` shaped like `y`.
pub(crate) fn check_norm_act(
    y: &Tensor,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    negative_slope: Option<f64>,
    residual: Option<&Tensor>,
) -> Result<()> {
    let op = InstanceNorm::new(y, gamma, beta, eps, negative_slope)?;
    if let Some(b) = bias {
        check_vec(NAME, "bias", b, op.dims[1])?;
    }
    if let Some(r) = residual {
        super::check_data(NAME, "residual", r)?;
        if r.dims() != y.dims() {
            return Err(invalid(
                NAME,
                format!("residual has shape {:?}, x {:?}", r.dims(), y.dims()),
            ));
        }
    }
    Ok(())
}

impl InstanceNorm {
    /// The op for these arguments, after checking them.
    fn new(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        negative_slope: Option<f64>,
    ) -> Result<Self> {
        let dims = dims5(NAME, "x", x)?;
        check_vec(NAME, "gamma", gamma, dims[1])?;
        check_vec(NAME, "beta", beta, dims[1])?;
        if eps.is_nan() || eps < 0.0 {
            return Err(invalid(NAME, format!("eps must be >= 0, got {eps}")));
        }
        if let Some(s) = negative_slope
            && (s.is_nan() || s < 0.0)
        {
            // The backward reads the LeakyReLU mask off the output, which needs a slope >= 0.
            return Err(invalid(
                NAME,
                format!("negative_slope must be >= 0, got {s}"),
            ));
        }
        Ok(InstanceNorm {
            eps,
            slope: negative_slope.map(|s| s as f32),
            dims,
        })
    }
}

/// Instance norm applied in place, optionally adding a residual before the LeakyReLU; for
/// inference only (no backward), where the input is a temporary nobody else holds.
#[derive(Clone, Debug)]
struct InstanceNormInplace {
    op: InstanceNorm,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl InstanceNormInplace {
    fn run(&self, s: &mut CpuStorage, l: &Layout, residual: Option<&[f32]>) -> Result<()> {
        let name = "instance_norm3d-inplace";
        check_layout(name, "x", l, &self.op.dims)?;
        let x = match s {
            CpuStorage::F32(v) if l.is_contiguous() && l.start_offset() == 0 => v.as_mut_slice(),
            _ => return Err(invalid(name, "x must be a contiguous f32 tensor")),
        };
        let [_, c, d, h, w] = self.op.dims;
        let n = d * h * w;
        if n == 0 {
            return Ok(());
        }
        let (gamma, beta, eps, slope) = (&self.gamma, &self.beta, self.op.eps, self.op.slope);
        let planes = x[..self.op.dims.iter().product()].par_chunks_mut(n);
        match residual {
            None => planes.enumerate().for_each(|(pi, x)| {
                let ch = pi % c;
                let ab = plane_affine(x, gamma[ch], beta[ch], eps);
                match slope {
                    Some(s) => x.iter_mut().for_each(|v| *v = norm_act(*v, ab, s)),
                    None => x.iter_mut().for_each(|v| *v = (*v - ab.0) * ab.1 + ab.2),
                }
            }),
            Some(r) => {
                planes
                    .zip(r.par_chunks(n))
                    .enumerate()
                    .for_each(|(pi, (x, r))| {
                        let ch = pi % c;
                        let (m, a, bt) = plane_affine(x, gamma[ch], beta[ch], eps);
                        // Rounded like instance_norm3d (no act) followed by add_leaky_relu.
                        for (v, &rv) in x.iter_mut().zip(r) {
                            let z = (*v - m) * a + bt;
                            *v = match slope {
                                Some(s) => lrelu(z + rv, s),
                                None => z + rv,
                            };
                        }
                    })
            }
        }
        Ok(())
    }
}

impl InplaceOp1 for InstanceNormInplace {
    fn name(&self) -> &'static str {
        "instance_norm3d-inplace"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        self.run(s, l, None)
    }
}

impl InplaceOp2 for InstanceNormInplace {
    fn name(&self) -> &'static str {
        "instance_norm3d-inplace"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        check_layout(NAME, "residual", l2, &self.op.dims)?;
        let r = cpu_slice::<f32>(NAME, "residual", s2, l2)?;
        self.run(s1, l1, Some(r))
    }
}

/// `LeakyReLU(instance_norm3d(y) [+ residual])` computed *in place* in `y`, which must be a
/// fresh temporary that no one else holds and that tracks no gradient (the caller guarantees
/// both; see `conv_norm.rs`). Without a slope there is no activation. Bit-identical to
/// `instance_norm3d(y, .., negative_slope)` or, with a residual, to `instance_norm3d(y, .., None)`
/// followed by `add_leaky_relu` (or `+`).
pub(crate) fn instance_norm3d_inplace(
    y: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    negative_slope: Option<f64>,
    residual: Option<&Tensor>,
) -> Result<()> {
    let op = InstanceNorm::new(y, gamma, beta, eps, negative_slope)?;
    let op = InstanceNormInplace {
        op,
        gamma: gamma.to_vec1::<f32>()?,
        beta: beta.to_vec1::<f32>()?,
    };
    match residual {
        Some(r) => {
            if r.dims() != y.dims() || r.dtype() != y.dtype() {
                return Err(invalid(
                    NAME,
                    format!("residual has shape {:?}, x {:?}", r.dims(), y.dims()),
                ));
            }
            y.inplace_op2(&r.contiguous()?, &op)
        }
        None => y.inplace_op1(&op),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// Naive f64 forward (two-pass statistics).
    fn naive(
        x: &[f64],
        g: &[f64],
        bt: &[f64],
        dims: [usize; 5],
        eps: f64,
        slope: Option<f64>,
    ) -> Vec<f64> {
        let c = dims[1];
        let n = dims[2] * dims[3] * dims[4];
        let mut y = vec![0f64; x.len()];
        for (pi, (yp, xp)) in y.chunks_mut(n).zip(x.chunks(n)).enumerate() {
            let ch = pi % c;
            let mean = xp.iter().sum::<f64>() / n as f64;
            let var = xp.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
            for (o, v) in yp.iter_mut().zip(xp) {
                let z = (v - mean) / (var + eps).sqrt() * g[ch] + bt[ch];
                *o = match slope {
                    Some(s) if z <= 0.0 => z * s,
                    _ => z,
                };
            }
        }
        y
    }

    /// Naive f64 backward (textbook formula), for shapes too large for finite differences.
    fn naive_bwd(
        x: &[f64],
        g: &[f64],
        bt: &[f64],
        dy: &[f64],
        dims: [usize; 5],
        eps: f64,
        slope: Option<f64>,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let c = dims[1];
        let n = dims[2] * dims[3] * dims[4];
        let (mut dx, mut dg, mut db) = (vec![0f64; x.len()], vec![0f64; c], vec![0f64; c]);
        for (pi, ((dxp, xp), dyp)) in dx
            .chunks_mut(n)
            .zip(x.chunks(n))
            .zip(dy.chunks(n))
            .enumerate()
        {
            let ch = pi % c;
            let mean = xp.iter().sum::<f64>() / n as f64;
            let var = xp.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            let xh: Vec<f64> = xp.iter().map(|v| (v - mean) * rstd).collect();
            let dz: Vec<f64> = xh
                .iter()
                .zip(dyp)
                .map(|(h, d)| {
                    let z = h * g[ch] + bt[ch];
                    match slope {
                        Some(s) if z <= 0.0 => d * s,
                        _ => *d,
                    }
                })
                .collect();
            let sdz: f64 = dz.iter().sum();
            let sdzh: f64 = dz.iter().zip(&xh).map(|(a, b)| a * b).sum();
            dg[ch] += sdzh;
            db[ch] += sdz;
            for j in 0..n {
                dxp[j] = g[ch] * rstd * (dz[j] - sdz / n as f64 - xh[j] * sdzh / n as f64);
            }
        }
        (dx, dg, db)
    }

    fn check_tiny(slope: Option<f64>) {
        let dims = [2, 3, 3, 4, 5];
        let c = dims[1];
        let total: usize = dims.iter().product();
        let mut rng = Lcg(21);
        let x: Vec<f32> = rng.vec(total).iter().map(|v| 3.0 * v + 1.0).collect();
        let g: Vec<f32> = rng.vec(c).iter().map(|v| 1.0 + 0.5 * v).collect();
        let bt: Vec<f32> = rng.vec(c).iter().map(|v| 0.3 * v).collect();
        let r = rng.vec(total);
        let (xv, xt) = var(&x, &dims);
        let (gv, gt) = var(&g, &[c]);
        let (bv, btt) = var(&bt, &[c]);
        let y = instance_norm3d(&xt, &gt, &btt, 1e-5, slope).expect("instance_norm3d");
        let (x64, g64, b64, r64) = (f64v(&x), f64v(&g), f64v(&bt), f64v(&r));
        assert_close(
            "forward",
            &to_vec(&y),
            &naive(&x64, &g64, &b64, dims, 1e-5, slope),
            1e-6,
        );
        let grads = loss_grads(&y, &r);
        let loss = |x: &[f64], g: &[f64], b: &[f64]| dot(&naive(x, g, b, dims, 1e-5, slope), &r64);
        let (dx, dg, db) = (
            grad_of(&grads, &xv),
            grad_of(&grads, &gv),
            grad_of(&grads, &bv),
        );
        assert_close(
            "dx vs finite differences",
            &dx,
            &fd_grad(&x64, |v| loss(v, &g64, &b64)),
            1e-5,
        );
        assert_close(
            "dgamma vs finite differences",
            &dg,
            &fd_grad(&g64, |v| loss(&x64, v, &b64)),
            1e-5,
        );
        assert_close(
            "dbeta vs finite differences",
            &db,
            &fd_grad(&b64, |v| loss(&x64, &g64, v)),
            1e-5,
        );
        let (rdx, rdg, rdb) = naive_bwd(&x64, &g64, &b64, &r64, dims, 1e-5, slope);
        assert_close("dx vs naive f64", &dx, &rdx, 1e-5);
        assert_close("dgamma vs naive f64", &dg, &rdg, 1e-5);
        assert_close("dbeta vs naive f64", &db, &rdb, 1e-5);
    }

    #[test]
    fn tiny_with_leaky_relu() {
        check_tiny(Some(0.01));
    }

    #[test]
    fn tiny_without_nonlinearity() {
        check_tiny(None);
    }

    #[test]
    fn long_plane_sums_match_f64() {
        // A 64^3 + 5 plane far from zero (mean 1000, spread 0.01): a sequential f32 sum would
        // lose the variance entirely; the blocked sums must keep f64-level accuracy.
        let n = 64 * 64 * 64 + 5;
        let mut rng = Lcg(99);
        let x: Vec<f32> = (0..n).map(|_| 1000.0 + 0.01 * rng.next()).collect();
        let y: Vec<f32> = (0..n).map(|_| rng.next()).collect();
        let dy: Vec<f32> = (0..n).map(|_| rng.next()).collect();
        let shift = x[0];
        let (s1, s2) = shifted_moments(&x, shift);
        let sums = backward_sums(&x, &y, &dy, Some(0.01), shift);
        let mut want = [0f64; 4];
        for ((&xv, &yv), &g) in x.iter().zip(&y).zip(&dy) {
            let d = xv as f64 - shift as f64;
            let dz = g as f64 * if yv <= 0.0 { 0.01 } else { 1.0 };
            want[0] += d;
            want[1] += d * d;
            want[2] += dz;
            want[3] += dz * d;
        }
        for (i, (got, want)) in [s1, s2]
            .iter()
            .zip(&want[..2])
            .chain(sums.iter().zip(&want))
            .enumerate()
        {
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "sum {i}: {got} vs {want}"
            );
        }
        let (mean, var) = plane_stats(&x);
        let m64 = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let v64 = x.iter().map(|&v| (v as f64 - m64).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - m64).abs() <= 1e-9 * m64, "mean {mean} vs {m64}");
        assert!((var - v64).abs() <= 1e-4 * v64, "var {var} vs {v64}");
    }

    /// 64^3 planes with a large mean offset: a naive sequential f32 sum would lose the mean's
    /// low bits. Tolerances are the resenc fixture README's (forward 1e-4·max|ref|, gradient
    /// 5e-2·max|g_ref| + 2e-4·G); the op is expected to be far inside them, so we also check 1e-5.
    #[test]
    fn plane_64_cubed_matches_f64_reference() {
        let dims = [1, 2, 64, 64, 64];
        let c = dims[1];
        let total: usize = dims.iter().product();
        let mut rng = Lcg(33);
        let x: Vec<f32> = rng
            .vec(total)
            .iter()
            .enumerate()
            .map(|(i, v)| 100.0 + v + if i < total / 2 { 0.0 } else { 20.0 })
            .collect();
        let g = vec![1.3f32, 0.7];
        let bt = vec![0.1f32, -0.2];
        let r = rng.vec(total);
        let (xv, xt) = var(&x, &dims);
        let (gv, gt) = var(&g, &[c]);
        let (bv, btt) = var(&bt, &[c]);
        let y = instance_norm3d(&xt, &gt, &btt, 1e-5, Some(0.01)).expect("instance_norm3d");
        let (x64, g64, b64, r64) = (f64v(&x), f64v(&g), f64v(&bt), f64v(&r));
        let yref = naive(&x64, &g64, &b64, dims, 1e-5, Some(0.01));
        let ef = rel_err(&to_vec(&y), &yref);
        assert!(ef <= 1e-4, "forward {ef:.3e}");
        let grads = loss_grads(&y, &r);
        let (rdx, rdg, rdb) = naive_bwd(&x64, &g64, &b64, &r64, dims, 1e-5, Some(0.01));
        let big_g = [&rdx, &rdg, &rdb]
            .iter()
            .flat_map(|v| v.iter())
            .fold(0f64, |m, v| m.max(v.abs()));
        for (name, got, want) in [
            ("dx", grad_of(&grads, &xv), &rdx),
            ("dgamma", grad_of(&grads, &gv), &rdg),
            ("dbeta", grad_of(&grads, &bv), &rdb),
        ] {
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            let err = got
                .iter()
                .zip(want.iter())
                .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
            assert!(
                err <= 5e-2 * scale + 2e-4 * big_g,
                "{name}: {err:.3e} over the README bound"
            );
            assert!(err <= 1e-5 * scale, "{name}: {:.3e} relative", err / scale);
        }
        assert!(ef <= 1e-5, "forward {ef:.3e}");
    }

    #[test]
    fn frozen_arguments_get_no_gradient_and_the_others_are_bit_identical() {
        let dims = [2, 3, 3, 4, 5];
        let c = dims[1];
        let total: usize = dims.iter().product();
        let mut rng = Lcg(27);
        let (x, g, bt, r) = (rng.vec(total), rng.vec(c), rng.vec(c), rng.vec(total));
        let run = |train: [bool; 3]| -> [Option<Vec<f32>>; 3] {
            let arg = |v: &[f32], d: &[usize], t: bool| {
                if t {
                    let (var, t) = var(v, d);
                    (Some(var), t)
                } else {
                    (None, tensor(v, d))
                }
            };
            let args = [
                arg(&x, &dims, train[0]),
                arg(&g, &[c], train[1]),
                arg(&bt, &[c], train[2]),
            ];
            let y = instance_norm3d(&args[0].1, &args[1].1, &args[2].1, 1e-5, Some(0.01))
                .expect("instance_norm3d");
            let grads = loss_grads(&y, &r);
            for (v, t) in &args {
                assert_eq!(grads.get(t).is_some(), v.is_some());
            }
            args.map(|(v, _)| v.map(|v| grad_of(&grads, &v)))
        };
        let all = run([true; 3]);
        for train in [
            [false, true, true],
            [false, true, false],
            [true, false, false],
            [true, false, true],
        ] {
            let some = run(train);
            for i in 0..3 {
                assert_eq!(some[i].is_some(), train[i]);
                if let Some(v) = &some[i] {
                    assert_eq!(Some(v), all[i].as_ref(), "arg {i} {train:?}");
                }
            }
        }
    }

    #[test]
    fn rejects_bad_arguments() {
        let x = tensor(&[0.0; 16], &[1, 2, 2, 2, 2]);
        let g = tensor(&[1.0; 2], &[2]);
        let g3 = tensor(&[1.0; 3], &[3]);
        assert!(instance_norm3d(&x, &g3, &g, 1e-5, None).is_err());
        assert!(instance_norm3d(&x, &g, &g, 1e-5, Some(-0.1)).is_err());
        assert!(instance_norm3d(&x, &g, &g, 1e-5, None).is_ok());
    }
}
