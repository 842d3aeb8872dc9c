//! Random fields and rasterisation helpers on a voxel grid, all deterministic for an RNG.
//!
//! Geometry is in millimetres in a local frame (voxel `(x, y, z)` sits at
//! `(x * sx, y * sy, z * sz)`), so shapes keep their physical size on anisotropic grids.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// The voxel grid a scene is drawn on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
}

impl Grid {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Physical extent along each axis (mm).
    pub fn extent(&self) -> [f64; 3] {
        [0, 1, 2].map(|k| self.shape[k] as f64 * self.spacing[k])
    }

    pub fn center(&self) -> [f64; 3] {
        [0, 1, 2].map(|k| (self.shape[k] as f64 - 1.0) * self.spacing[k] / 2.0)
    }

    /// Calls `f(index, position_mm)` for every voxel in memory order.
    pub fn for_each(&self, mut f: impl FnMut(usize, [f64; 3])) {
        let [nx, ny, nz] = self.shape;
        let mut i = 0;
        for x in 0..nx {
            for y in 0..ny {
                for z in 0..nz {
                    f(
                        i,
                        [
                            x as f64 * self.spacing[0],
                            y as f64 * self.spacing[1],
                            z as f64 * self.spacing[2],
                        ],
                    );
                    i += 1;
                }
            }
        }
    }

    /// Voxel index range along `axis` covering `[lo, hi]` mm, clipped to the grid.
    pub fn range(&self, axis: usize, lo: f64, hi: f64) -> std::ops::Range<usize> {
        let s = self.spacing[axis];
        let a = (lo / s).ceil().max(0.0) as usize;
        let b = ((hi / s).floor() + 1.0).clamp(0.0, self.shape[axis] as f64) as usize;
        a.min(b)..b
    }
}

pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

pub(crate) fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// A random unit vector.
pub(crate) fn unit(rng: &mut ChaCha8Rng) -> [f64; 3] {
    loop {
        let v = [normal(rng), normal(rng), normal(rng)];
        let n = norm(v);
        if n > 1e-6 {
            return v.map(|c| c / n);
        }
    }
}

pub(crate) fn norm(v: [f64; 3]) -> f64 {
    (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
}

pub(crate) fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub(crate) fn add(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

pub(crate) fn scale(a: [f64; 3], s: f64) -> [f64; 3] {
    a.map(|c| c * s)
}

pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// A smooth random function of position: a sum of random cosines with wavelengths of at least
/// `min_wavelength_mm`, scaled to unit variance. Resolution independent and cheap to evaluate.
pub(crate) struct LowFreq {
    waves: Vec<([f64; 3], f64)>,
    amp: f64,
}

impl LowFreq {
    pub fn new(rng: &mut ChaCha8Rng, min_wavelength_mm: f64, terms: usize) -> Self {
        let waves = (0..terms)
            .map(|_| {
                let k = 2.0 * std::f64::consts::PI / (min_wavelength_mm * uniform(rng, 1.0, 2.5));
                (
                    scale(unit(rng), k),
                    uniform(rng, 0.0, 2.0 * std::f64::consts::PI),
                )
            })
            .collect();
        LowFreq {
            waves,
            amp: (2.0 / terms.max(1) as f64).sqrt(),
        }
    }

    pub fn at(&self, p: [f64; 3]) -> f64 {
        self.amp
            * self
                .waves
                .iter()
                .map(|(w, ph)| (dot(*w, p) + ph).cos())
                .sum::<f64>()
    }

    pub fn sample(&self, grid: &Grid) -> Vec<f32> {
        let mut out = vec![0f32; grid.len()];
        grid.for_each(|i, p| out[i] = self.at(p) as f32);
        out
    }
}

/// Box blur of radius `r` voxels along `axis` (edges clamped). Three passes approximate a
/// Gaussian; separable passes keep a 64^3 blur at a few milliseconds.
pub(crate) fn box_blur_axis(data: &mut [f32], shape: [usize; 3], axis: usize, r: usize) {
    if r == 0 || shape[axis] < 2 {
        return;
    }
    let [_, ny, nz] = shape;
    let stride = [ny * nz, nz, 1][axis];
    let n = shape[axis];
    let mut line = vec![0f32; n];
    let mut prefix = vec![0f64; n + 1];
    let starts: Vec<usize> = (0..data.len()).filter(|i| (i / stride) % n == 0).collect();
    for start in starts {
        for (k, v) in line.iter_mut().enumerate() {
            *v = data[start + k * stride];
        }
        for k in 0..n {
            prefix[k + 1] = prefix[k] + line[k] as f64;
        }
        for k in 0..n {
            let lo = k.saturating_sub(r);
            let hi = (k + r).min(n - 1);
            data[start + k * stride] =
                ((prefix[hi + 1] - prefix[lo]) / (hi + 1 - lo) as f64) as f32;
        }
    }
}

/// White Gaussian noise blurred with `passes` box passes of radius `r` voxels per axis,
/// rescaled to unit standard deviation: tissue texture.
pub(crate) fn smooth_noise(
    rng: &mut ChaCha8Rng,
    shape: [usize; 3],
    r: [usize; 3],
    passes: usize,
) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let mut data: Vec<f32> = (0..n).map(|_| normal(rng) as f32).collect();
    for _ in 0..passes {
        for (axis, &ra) in r.iter().enumerate() {
            box_blur_axis(&mut data, shape, axis, ra);
        }
    }
    let mean = data.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let var = data.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    let sd = var.sqrt().max(1e-12);
    for v in &mut data {
        *v = ((*v as f64 - mean) / sd) as f32;
    }
    data
}

/// Sets `out[i] = value` for voxels within a tapered tube around segment `a`–`b` (radii `ra`,
/// `rb` in mm). Distances along z shrink by up to a third of a slice so thin tubes stay
/// connected through thick slices, as partial-volume voxels are in real scans.
#[allow(clippy::too_many_arguments)]
pub(crate) fn draw_segment(
    out: &mut [u8],
    grid: &Grid,
    a: [f64; 3],
    b: [f64; 3],
    ra: f64,
    rb: f64,
    value: u8,
    only_where: Option<&dyn Fn(u8) -> bool>,
) {
    let r = ra.max(rb);
    let slab = grid.spacing[2] / 3.0;
    let d = sub(b, a);
    let dd = dot(d, d).max(1e-12);
    let [_, ny, nz] = grid.shape;
    let rx = grid.range(0, a[0].min(b[0]) - r, a[0].max(b[0]) + r);
    let ry = grid.range(1, a[1].min(b[1]) - r, a[1].max(b[1]) + r);
    let rz = grid.range(2, a[2].min(b[2]) - r - slab, a[2].max(b[2]) + r + slab);
    for x in rx {
        for y in ry.clone() {
            for z in rz.clone() {
                let c = [
                    x as f64 * grid.spacing[0],
                    y as f64 * grid.spacing[1],
                    z as f64 * grid.spacing[2],
                ];
                let t = (dot(sub(c, a), d) / dd).clamp(0.0, 1.0);
                let mut v = sub(c, add(a, scale(d, t)));
                v[2] = v[2].signum() * (v[2].abs() - slab).max(0.0);
                let rt = ra + t * (rb - ra);
                if dot(v, v) <= rt * rt {
                    let i = (x * ny + y) * nz + z;
                    if only_where.is_none_or(|f| f(out[i])) {
                        out[i] = value;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn box_blur_matches_naive_on_each_axis() {
        let shape = [4, 5, 6];
        let src: Vec<f32> = (0..120).map(|i| ((i * 37) % 11) as f32).collect();
        for axis in 0..3 {
            let mut got = src.clone();
            box_blur_axis(&mut got, shape, axis, 1);
            for x in 0..4 {
                for y in 0..5 {
                    for z in 0..6 {
                        let c = [x, y, z];
                        let n = shape[axis] as isize;
                        let mut sum = 0.0;
                        let mut cnt = 0.0;
                        for d in -1isize..=1 {
                            let k = c[axis] as isize + d;
                            if (0..n).contains(&k) {
                                let mut cc = c;
                                cc[axis] = k as usize;
                                sum += src[(cc[0] * 5 + cc[1]) * 6 + cc[2]];
                                cnt += 1.0;
                            }
                        }
                        let i = (x * 5 + y) * 6 + z;
                        assert!((got[i] - sum / cnt).abs() < 1e-5, "axis {axis} at {c:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn smooth_noise_has_unit_std() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = smooth_noise(&mut rng, [16, 16, 16], [2, 2, 2], 2);
        let var = n.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n.len() as f64;
        assert!((var - 1.0).abs() < 1e-3);
    }

    #[test]
    fn segment_volume_is_close_to_a_cylinder() {
        let grid = Grid {
            shape: [40, 40, 40],
            spacing: [1.0; 3],
        };
        let mut out = vec![0u8; grid.len()];
        // Along x so the z-slab softening (1/3 voxel) only widens the cross-section a little.
        draw_segment(
            &mut out,
            &grid,
            [5.0, 20.0, 20.0],
            [35.0, 20.0, 20.0],
            4.0,
            4.0,
            1,
            None,
        );
        let count = out.iter().filter(|&&v| v == 1).count() as f64;
        let cyl = std::f64::consts::PI * 16.0 * 30.0;
        assert!(count > cyl * 0.9 && count < cyl * 1.6, "{count} vs {cyl}");
    }
}
