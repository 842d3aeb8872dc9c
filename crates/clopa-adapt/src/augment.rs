//! Data augmentation of training patches: the set the authors meant to configure (reference
//! §4), without the accidents of their duplicate dictionary keys (§7.3.1): no sign inversion,
//! the brightness multiplier is kept, gamma comes both plain and inverted, and 90° rotations
//! use all three planes. Spatial transforms resample the image trilinearly and the label by
//! nearest neighbour, zero outside; the intensity transforms touch the image only.
//!
//! Order and probabilities ([`AugmentConfig::intended`]): scaling (p 0.3; 60 % per-axis factors
//! U(0.5, 2), else one isotropic factor U(0.5, 2), a factor > 1 zooming out as MONAI's
//! `RandAffine` does) and rotation (p 0.2, U(±15°) about each axis) in one resampling; Gaussian
//! noise (p 0.15, std U(0, √0.1)); Gaussian blur (p 0.2, σ per axis U(0.5, 1.5), truncated at
//! 4σ, zero padding); brightness (p 0.15, ×(1 + U(±0.3))); contrast (p 0.15, ×(1 + U(±0.3))
//! clamped to the previous range); low resolution (p 0.1, one factor U(0.5, 1), nearest down,
//! trilinear up with aligned corners); gamma (p 0.3, γ U(0.7, 1.5), statistics retained);
//! inverted gamma (p 0.1); flips (p 0.5, all three axes together, as the authors' `RandFlipd`);
//! 90° rotations (p 0.5 for each of the planes (0, 1), (0, 2), (1, 2), k ∈ {1, 2, 3}; a plane
//! whose two sides differ is skipped because the patch shape must not change).

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::patch::Patch;

/// Probabilities and ranges of every augmentation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AugmentConfig {
    /// Probability of a scaling.
    pub p_scale: f64,
    /// Probability that a scaling is anisotropic (per-axis factors).
    pub p_scale_aniso: f64,
    /// Scale factor range (per axis or isotropic).
    pub scale: [f64; 2],
    /// Probability of a rotation.
    pub p_rotate: f64,
    /// Maximum rotation angle about each axis, degrees.
    pub rotate_deg: f64,
    /// Probability of Gaussian noise.
    pub p_noise: f64,
    /// Noise std is drawn from U(0, this).
    pub noise_std: f64,
    /// Probability of Gaussian blur.
    pub p_blur: f64,
    /// Blur σ range (voxels, per axis).
    pub blur_sigma: [f64; 2],
    /// Probability of a brightness multiplier.
    pub p_brightness: f64,
    /// Brightness multiplier 1 + U(±this).
    pub brightness: f64,
    /// Probability of a clamped contrast multiplier.
    pub p_contrast: f64,
    /// Contrast multiplier 1 + U(±this).
    pub contrast: f64,
    /// Probability of simulated low resolution.
    pub p_lowres: f64,
    /// Low-resolution zoom factor range.
    pub lowres: [f64; 2],
    /// Probability of gamma.
    pub p_gamma: f64,
    /// Probability of inverted gamma.
    pub p_gamma_inverted: f64,
    /// Gamma range.
    pub gamma: [f64; 2],
    /// Probability of flipping all three axes.
    pub p_flip: f64,
    /// Probability of a 90° rotation, per plane.
    pub p_rot90: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::intended()
    }
}

impl AugmentConfig {
    /// The authors' intended set (module docs).
    pub fn intended() -> Self {
        AugmentConfig {
            p_scale: 0.3,
            p_scale_aniso: 0.6,
            scale: [0.5, 2.0],
            p_rotate: 0.2,
            rotate_deg: 15.0,
            p_noise: 0.15,
            noise_std: 0.1f64.sqrt(),
            p_blur: 0.2,
            blur_sigma: [0.5, 1.5],
            p_brightness: 0.15,
            brightness: 0.3,
            p_contrast: 0.15,
            contrast: 0.3,
            p_lowres: 0.1,
            lowres: [0.5, 1.0],
            p_gamma: 0.3,
            p_gamma_inverted: 0.1,
            gamma: [0.7, 1.5],
            p_flip: 0.5,
            p_rot90: 0.5,
        }
    }

    /// No augmentation at all (validation).
    pub fn none() -> Self {
        AugmentConfig {
            p_scale: 0.0,
            p_rotate: 0.0,
            p_noise: 0.0,
            p_blur: 0.0,
            p_brightness: 0.0,
            p_contrast: 0.0,
            p_lowres: 0.0,
            p_gamma: 0.0,
            p_gamma_inverted: 0.0,
            p_flip: 0.0,
            p_rot90: 0.0,
            ..Self::intended()
        }
    }
}

fn uniform<R: Rng + ?Sized>(rng: &mut R, r: [f64; 2]) -> f64 {
    r[0] + (r[1] - r[0]) * rng.random::<f64>()
}

fn coin<R: Rng + ?Sized>(rng: &mut R, p: f64) -> bool {
    // Always draw, so the stream does not depend on which probabilities are zero.
    rng.random::<f64>() < p
}

/// Applies the augmentations to `patch` in place; every random choice comes from `rng`.
pub fn augment<R: Rng + ?Sized>(patch: &mut Patch, cfg: &AugmentConfig, rng: &mut R) {
    // --- spatial: scaling and rotation, one resampling
    let mut m = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    let mut spatial = false;
    if coin(rng, cfg.p_scale) {
        let s = if coin(rng, cfg.p_scale_aniso) {
            [0; 3].map(|_| uniform(rng, cfg.scale))
        } else {
            [uniform(rng, cfg.scale); 3]
        };
        m = [0, 1, 2].map(|i| [0, 1, 2].map(|j| m[i][j] * s[j]));
        spatial = true;
    }
    if coin(rng, cfg.p_rotate) {
        let a = cfg.rotate_deg.to_radians();
        let ang = [0; 3].map(|_| uniform(rng, [-a, a]));
        m = matmul(&rotation(ang), &m);
        spatial = true;
    }
    if spatial {
        resample(patch, &m);
    }
    let img = &mut patch.image;
    // --- intensity
    if coin(rng, cfg.p_noise) {
        let std = cfg.noise_std * rng.random::<f64>();
        for v in img.iter_mut() {
            let z: f64 = StandardNormal.sample(rng);
            *v += (std * z) as f32;
        }
    }
    if coin(rng, cfg.p_blur) {
        let sigma = [0; 3].map(|_| uniform(rng, cfg.blur_sigma));
        blur(img, patch.shape, sigma);
    }
    if coin(rng, cfg.p_brightness) {
        let f = 1.0 + uniform(rng, [-cfg.brightness, cfg.brightness]);
        img.iter_mut().for_each(|v| *v = (*v as f64 * f) as f32);
    }
    if coin(rng, cfg.p_contrast) {
        let f = 1.0 + uniform(rng, [-cfg.contrast, cfg.contrast]);
        let (lo, hi) = min_max(img);
        img.iter_mut()
            .for_each(|v| *v = ((*v as f64 * f) as f32).clamp(lo, hi));
    }
    if coin(rng, cfg.p_lowres) {
        let f = uniform(rng, cfg.lowres);
        low_resolution(img, patch.shape, f);
    }
    if coin(rng, cfg.p_gamma) {
        let g = uniform(rng, cfg.gamma);
        gamma(img, g, false);
    }
    if coin(rng, cfg.p_gamma_inverted) {
        let g = uniform(rng, cfg.gamma);
        gamma(img, g, true);
    }
    // --- flips and 90° rotations
    if coin(rng, cfg.p_flip) {
        // Flipping every axis of a C-contiguous array reverses it.
        patch.image.reverse();
        patch.label.reverse();
    }
    for plane in [(0, 1), (0, 2), (1, 2)] {
        if coin(rng, cfg.p_rot90) {
            let k = rng.random_range(1..4u32);
            if patch.shape[plane.0] == patch.shape[plane.1] {
                for _ in 0..k {
                    rot90(patch, plane);
                }
            }
        }
    }
}

fn matmul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    [0, 1, 2].map(|i| [0, 1, 2].map(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
}

fn rotation(ang: [f64; 3]) -> [[f64; 3]; 3] {
    let (s0, c0) = ang[0].sin_cos();
    let (s1, c1) = ang[1].sin_cos();
    let (s2, c2) = ang[2].sin_cos();
    let rx = [[1.0, 0.0, 0.0], [0.0, c0, -s0], [0.0, s0, c0]];
    let ry = [[c1, 0.0, s1], [0.0, 1.0, 0.0], [-s1, 0.0, c1]];
    let rz = [[c2, -s2, 0.0], [s2, c2, 0.0], [0.0, 0.0, 1.0]];
    matmul(&rz, &matmul(&ry, &rx))
}

fn min_max(v: &[f32]) -> (f32, f32) {
    v.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

/// Output voxel `o` samples the input at `c + m·(o − c)`, `c` the patch centre.
fn resample(patch: &mut Patch, m: &[[f64; 3]; 3]) {
    let s = patch.shape;
    let c = s.map(|n| (n as f64 - 1.0) / 2.0);
    let n: usize = s.iter().product();
    let mut img = vec![0f32; n];
    let mut lab = vec![0u8; n];
    let idx = |x: usize, y: usize, z: usize| (x * s[1] + y) * s[2] + z;
    for x in 0..s[0] {
        for y in 0..s[1] {
            for z in 0..s[2] {
                let o = [x as f64 - c[0], y as f64 - c[1], z as f64 - c[2]];
                let p = [0, 1, 2].map(|i| c[i] + m[i][0] * o[0] + m[i][1] * o[1] + m[i][2] * o[2]);
                let out = idx(x, y, z);
                // nearest for the label
                let r = p.map(|v| v.round());
                if (0..3).all(|d| r[d] >= 0.0 && r[d] <= s[d] as f64 - 1.0) {
                    lab[out] = patch.label[idx(r[0] as usize, r[1] as usize, r[2] as usize)];
                }
                // trilinear, zero outside
                let f = p.map(|v| v.floor());
                let mut acc = 0f64;
                for dx in 0..2 {
                    for dy in 0..2 {
                        for dz in 0..2 {
                            let q = [f[0] + dx as f64, f[1] + dy as f64, f[2] + dz as f64];
                            if (0..3).any(|d| q[d] < 0.0 || q[d] > s[d] as f64 - 1.0) {
                                continue;
                            }
                            let w = [0, 1, 2].map(|d| {
                                let t = p[d] - f[d];
                                if q[d] == f[d] { 1.0 - t } else { t }
                            });
                            acc += w[0]
                                * w[1]
                                * w[2]
                                * patch.image[idx(q[0] as usize, q[1] as usize, q[2] as usize)]
                                    as f64;
                        }
                    }
                }
                img[out] = acc as f32;
            }
        }
    }
    patch.image = img;
    patch.label = lab;
}

/// Separable Gaussian blur, kernel truncated at 4σ and normalised, zero padding.
fn blur(img: &mut [f32], s: [usize; 3], sigma: [f64; 3]) {
    for (axis, &sg) in sigma.iter().enumerate() {
        let r = (4.0 * sg).ceil() as i64;
        let k: Vec<f64> = (-r..=r)
            .map(|i| (-(i * i) as f64 / (2.0 * sg * sg)).exp())
            .collect();
        let total: f64 = k.iter().sum();
        let k: Vec<f64> = k.iter().map(|v| v / total).collect();
        let stride = match axis {
            0 => s[1] * s[2],
            1 => s[2],
            _ => 1,
        };
        let len = s[axis] as i64;
        let src = img.to_vec();
        for (i, out) in img.iter_mut().enumerate() {
            let pos = ((i / stride) % s[axis]) as i64;
            let base = i as i64 - pos * stride as i64;
            let mut acc = 0f64;
            for (j, w) in k.iter().enumerate() {
                let q = pos + j as i64 - r;
                if q >= 0 && q < len {
                    acc += w * src[(base + q * stride as i64) as usize] as f64;
                }
            }
            *out = acc as f32;
        }
    }
}

/// Nearest-neighbour downsampling by `f`, then trilinear upsampling with aligned corners.
fn low_resolution(img: &mut [f32], s: [usize; 3], f: f64) {
    let d = s.map(|n| ((n as f64 * f).round() as usize).max(1));
    let mut small = vec![0f32; d.iter().product()];
    for x in 0..d[0] {
        for y in 0..d[1] {
            for z in 0..d[2] {
                let src = [x, y, z]
                    .iter()
                    .zip(s.iter().zip(d.iter()))
                    .map(|(&i, (&n, &m))| {
                        ((i as f64 * n as f64 / m as f64).floor() as usize).min(n - 1)
                    })
                    .collect::<Vec<_>>();
                small[(x * d[1] + y) * d[2] + z] = img[(src[0] * s[1] + src[1]) * s[2] + src[2]];
            }
        }
    }
    let scale = [0, 1, 2].map(|a| {
        if s[a] > 1 {
            (d[a] as f64 - 1.0) / (s[a] as f64 - 1.0)
        } else {
            0.0
        }
    });
    for x in 0..s[0] {
        for y in 0..s[1] {
            for z in 0..s[2] {
                let p = [
                    x as f64 * scale[0],
                    y as f64 * scale[1],
                    z as f64 * scale[2],
                ];
                let lo = [0, 1, 2].map(|a| (p[a].floor() as usize).min(d[a] - 1));
                let hi = [0, 1, 2].map(|a| (lo[a] + 1).min(d[a] - 1));
                let t = [0, 1, 2].map(|a| p[a] - lo[a] as f64);
                let mut acc = 0f64;
                for (cx, wx) in [(lo[0], 1.0 - t[0]), (hi[0], t[0])] {
                    for (cy, wy) in [(lo[1], 1.0 - t[1]), (hi[1], t[1])] {
                        for (cz, wz) in [(lo[2], 1.0 - t[2]), (hi[2], t[2])] {
                            acc += wx * wy * wz * small[(cx * d[1] + cy) * d[2] + cz] as f64;
                        }
                    }
                }
                img[(x * s[1] + y) * s[2] + z] = acc as f32;
            }
        }
    }
}

/// MONAI `AdjustContrast(gamma, retain_stats=True, invert_image)`.
fn gamma(img: &mut [f32], g: f64, invert: bool) {
    let sign = if invert { -1.0 } else { 1.0 };
    let n = img.len() as f64;
    let vals: Vec<f64> = img.iter().map(|&v| sign * v as f64).collect();
    let mean = vals.iter().sum::<f64>() / n;
    let std = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let (lo, hi) = vals
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let range = hi - lo;
    let out: Vec<f64> = vals
        .iter()
        .map(|v| ((v - lo) / (range + 1e-7)).powf(g) * range + lo)
        .collect();
    let m2 = out.iter().sum::<f64>() / n;
    let s2 = (out.iter().map(|v| (v - m2).powi(2)).sum::<f64>() / n).sqrt();
    for (dst, v) in img.iter_mut().zip(out) {
        *dst = (sign * ((v - m2) / (s2 + 1e-8) * std + mean)) as f32;
    }
}

/// One 90° rotation in `plane` (the two axes must have the same length).
fn rot90(patch: &mut Patch, (a, b): (usize, usize)) {
    let s = patch.shape;
    let n = s[a];
    let idx = |c: [usize; 3]| (c[0] * s[1] + c[1]) * s[2] + c[2];
    let mut img = vec![0f32; patch.image.len()];
    let mut lab = vec![0u8; patch.label.len()];
    for x in 0..s[0] {
        for y in 0..s[1] {
            for z in 0..s[2] {
                let o = [x, y, z];
                let mut src = o;
                src[a] = o[b];
                src[b] = n - 1 - o[a];
                img[idx(o)] = patch.image[idx(src)];
                lab[idx(o)] = patch.label[idx(src)];
            }
        }
    }
    patch.image = img;
    patch.label = lab;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn patch() -> Patch {
        let s = [6, 6, 6];
        let image = (0..216).map(|i| (i % 17) as f32 * 0.1).collect();
        let label = (0..216).map(|i| u8::from(i % 5 == 0)).collect();
        Patch {
            shape: s,
            image,
            label,
        }
    }

    #[test]
    fn none_changes_nothing_and_identity_resampling_is_exact() {
        let mut p = patch();
        augment(
            &mut p,
            &AugmentConfig::none(),
            &mut ChaCha8Rng::seed_from_u64(0),
        );
        assert_eq!(p, patch());
        let mut q = patch();
        resample(&mut q, &[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
        assert_eq!(q, patch());
    }

    #[test]
    fn four_quarter_turns_are_the_identity_and_one_is_not() {
        for plane in [(0, 1), (0, 2), (1, 2)] {
            let mut p = patch();
            rot90(&mut p, plane);
            assert_ne!(p, patch());
            assert_eq!(
                p.label.iter().map(|&v| v as usize).sum::<usize>(),
                patch().label.iter().map(|&v| v as usize).sum::<usize>()
            );
            for _ in 0..3 {
                rot90(&mut p, plane);
            }
            assert_eq!(p, patch());
        }
    }

    #[test]
    fn blur_keeps_a_constant_interior_and_gamma_keeps_the_statistics() {
        let mut v = vec![2.0f32; 20 * 20 * 20];
        blur(&mut v, [20, 20, 20], [1.0, 1.0, 1.0]);
        assert!((v[(10 * 20 + 10) * 20 + 10] - 2.0).abs() < 1e-5);
        assert!(v[0] < 2.0, "zero padding darkens the corner");
        let mut g: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let before = g.clone();
        gamma(&mut g, 1.4, false);
        let mean = |x: &[f32]| x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        assert!((mean(&g) - mean(&before)).abs() < 1e-5);
        assert_ne!(g, before);
        let mut lr: Vec<f32> = vec![1.5; 8 * 8 * 8];
        low_resolution(&mut lr, [8, 8, 8], 0.5);
        assert!(lr.iter().all(|&v| (v - 1.5).abs() < 1e-6));
    }

    #[test]
    fn zooming_out_shrinks_the_label_and_the_stream_is_seeded() {
        let mut p = Patch {
            shape: [9, 9, 9],
            image: vec![1.0; 729],
            label: vec![1; 729],
        };
        resample(&mut p, &[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]);
        let fg: usize = p.label.iter().map(|&v| v as usize).sum();
        assert_eq!(fg, 5 * 5 * 5);
        let run = |seed| {
            let mut p = patch();
            augment(
                &mut p,
                &AugmentConfig::intended(),
                &mut ChaCha8Rng::seed_from_u64(seed),
            );
            p
        };
        assert_eq!(run(4), run(4));
        assert!((0..8).any(|s| run(s) != patch()));
    }
}
