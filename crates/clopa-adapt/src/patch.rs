//! Training cases and patch sampling.
//!
//! A [`TrainCase`] is one cache case prepared exactly as the inference session prepares an
//! image: cropped to the bounding box of its non-zero voxels and z-scored with the mean and
//! unbiased std of that box ([`clopa_interact::ZScore`]). The authors' trainer z-scored the
//! whole image instead (reference §7.3.5); training on what inference sees is the point.
//! [`sample_patch`] cuts one patch centred on a foreground or background voxel, zero-padded.

use rand::Rng;

use crate::error::{AdaptError, Result};
use clopa_interact::{ZScore, nonzero_bbox};
use clopa_volume::{Mask, Volume};

/// One case, normalised and cropped as the session does (`shape` = the cropped grid).
#[derive(Debug, Clone)]
pub struct TrainCase {
    /// Case id (for messages).
    pub id: String,
    /// Grid `[x, y, z]` after the crop, z fastest.
    pub shape: [usize; 3],
    /// Normalised intensities.
    pub image: Vec<f32>,
    /// Binary reference (0/1).
    pub mask: Vec<u8>,
    /// Foreground voxel indices (sampling centres).
    fg: Vec<usize>,
    /// Number of voxels (background = the rest).
    n: usize,
}

impl TrainCase {
    /// Prepares a case from an image and its binary reference on the same grid.
    pub fn new(id: &str, image: &Volume<f32>, mask: &Mask) -> Result<TrainCase> {
        let err = |problem: String| AdaptError::Case {
            case: id.to_string(),
            problem,
        };
        if image.shape != mask.shape {
            return Err(err(format!(
                "image shape {:?} differs from the mask shape {:?}",
                image.shape, mask.shape
            )));
        }
        if image.data.iter().any(|v| !v.is_finite()) {
            return Err(err("the image holds NaN or infinite values".into()));
        }
        let z = ZScore::fit(&image.data, image.shape).map_err(|e| err(e.to_string()))?;
        let bbox = nonzero_bbox(&image.data, image.shape)
            .ok_or_else(|| err("the image is all zero".into()))?;
        let shape = [0, 1, 2].map(|d| bbox[d][1] - bbox[d][0]);
        let mut img = Vec::with_capacity(shape.iter().product());
        let mut msk = Vec::with_capacity(img.capacity());
        for x in bbox[0][0]..bbox[0][1] {
            for y in bbox[1][0]..bbox[1][1] {
                let r = (x * image.shape[1] + y) * image.shape[2];
                for i in r + bbox[2][0]..r + bbox[2][1] {
                    img.push(z.apply(image.data[i]));
                    msk.push(u8::from(mask.data[i] != 0));
                }
            }
        }
        Ok(Self::from_normalised(id, shape, img, msk))
    }

    /// A case whose image is already normalised (tests, pretraining on generated data).
    pub fn from_normalised(id: &str, shape: [usize; 3], image: Vec<f32>, mask: Vec<u8>) -> Self {
        let fg = mask
            .iter()
            .enumerate()
            .filter(|(_, m)| **m != 0)
            .map(|(i, _)| i)
            .collect();
        let n = mask.len();
        TrainCase {
            id: id.to_string(),
            shape,
            image,
            mask,
            fg,
            n,
        }
    }

    /// Number of foreground voxels.
    pub fn foreground(&self) -> usize {
        self.fg.len()
    }

    /// A uniform background voxel index (None when there is none), by rejection-free counting.
    fn background_voxel<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        let nbg = self.n - self.fg.len();
        if nbg == 0 {
            return None;
        }
        // The k-th background voxel: skip the foreground indices below it (fg is sorted).
        let k = rng.random_range(0..nbg as u64) as usize;
        let (mut lo, mut hi) = (0usize, self.fg.len());
        // smallest j with fg[j] - j > k  → index = k + j
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.fg[mid] - mid > k {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Some(k + lo)
    }
}

/// One training or validation patch: normalised image and binary label, `shape` = patch size.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    /// Patch size `[x, y, z]`.
    pub shape: [usize; 3],
    /// Image values (0 where padded).
    pub image: Vec<f32>,
    /// Label 0/1 (0 where padded).
    pub label: Vec<u8>,
}

impl Patch {
    /// Whether the patch holds any foreground.
    pub fn has_foreground(&self) -> bool {
        self.label.iter().any(|&v| v != 0)
    }
}

/// Cuts a `size` patch from `case`: with probability `fg_probability` centred on a uniform
/// foreground voxel, else on a uniform background voxel (the other kind when one is missing),
/// like MONAI's `RandCropByPosNegLabeld(pos=1, neg=1)`. As MONAI does, the centre is moved so
/// the window stays inside the image where the image is large enough; an axis shorter than the
/// patch is zero-padded symmetrically (zero = the normalised mean, as the authors padded).
pub fn sample_patch<R: Rng + ?Sized>(
    case: &TrainCase,
    size: [usize; 3],
    fg_probability: f64,
    rng: &mut R,
) -> Patch {
    let want_fg = rng.random::<f64>() < fg_probability;
    let fg = |rng: &mut R| {
        (!case.fg.is_empty()).then(|| case.fg[rng.random_range(0..case.fg.len() as u64) as usize])
    };
    let centre = if want_fg {
        fg(rng).or_else(|| case.background_voxel(rng))
    } else {
        case.background_voxel(rng).or_else(|| fg(rng))
    }
    .unwrap_or(0);
    let [_, ny, nz] = case.shape;
    let c = [centre / (ny * nz), (centre / nz) % ny, centre % nz];
    // window start per axis (may be negative when the image is smaller than the patch)
    let start: [i64; 3] = [0, 1, 2].map(|d| {
        let (n, p) = (case.shape[d] as i64, size[d] as i64);
        if n >= p {
            (c[d] as i64 - p / 2).clamp(0, n - p)
        } else {
            -((p - n) / 2)
        }
    });
    crop(case, start, size)
}

/// The window `[start, start + size)` of `case`, zero outside the image.
pub fn crop(case: &TrainCase, start: [i64; 3], size: [usize; 3]) -> Patch {
    let n: usize = size.iter().product();
    let mut image = vec![0f32; n];
    let mut label = vec![0u8; n];
    let [nx, ny, nz] = case.shape.map(|v| v as i64);
    for px in 0..size[0] {
        let x = start[0] + px as i64;
        if x < 0 || x >= nx {
            continue;
        }
        for py in 0..size[1] {
            let y = start[1] + py as i64;
            if y < 0 || y >= ny {
                continue;
            }
            let z0 = start[2].max(0);
            let z1 = (start[2] + size[2] as i64).min(nz);
            if z0 >= z1 {
                continue;
            }
            let src = ((x * ny + y) * nz) as usize;
            let dst = (px * size[1] + py) * size[2];
            let (a, b) = (z0 as usize, z1 as usize);
            let off = (z0 - start[2]) as usize;
            image[dst + off..dst + off + (b - a)].copy_from_slice(&case.image[src + a..src + b]);
            label[dst + off..dst + off + (b - a)].copy_from_slice(&case.mask[src + a..src + b]);
        }
    }
    Patch {
        shape: size,
        image,
        label,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn case() -> TrainCase {
        let shape = [6, 5, 4];
        let n = 120;
        let image: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mask: Vec<u8> = (0..n).map(|i| u8::from(i % 7 == 3)).collect();
        TrainCase::from_normalised("c", shape, image, mask)
    }

    #[test]
    fn background_voxels_are_uniform_over_the_background_only() {
        let c = case();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = vec![0usize; 120];
        for _ in 0..20000 {
            let i = c.background_voxel(&mut rng).unwrap();
            assert_eq!(c.mask[i], 0, "voxel {i} is foreground");
            seen[i] += 1;
        }
        let nbg = 120 - c.foreground();
        for (i, &s) in seen.iter().enumerate() {
            if c.mask[i] == 0 {
                let expect = 20000.0 / nbg as f64;
                assert!((s as f64 - expect).abs() < expect * 0.5, "voxel {i}: {s}");
            }
        }
    }

    #[test]
    fn a_patch_larger_than_the_image_is_padded_symmetrically() {
        let c = case();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let p = sample_patch(&c, [8, 5, 2], 1.0, &mut rng);
        assert_eq!(p.shape, [8, 5, 2]);
        // x: 6 of 8 inside, one padded plane on each side
        assert!(p.image[..10].iter().all(|&v| v == 0.0));
        assert!(p.image[70..].iter().all(|&v| v == 0.0));
        // the z window of 2 lies inside and holds the centre's values
        let inner = &p.image[10..12];
        assert_eq!(inner[1] - inner[0], 1.0);
    }

    #[test]
    fn fg_probability_one_centres_on_foreground() {
        let c = case();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            let p = sample_patch(&c, [3, 3, 3], 1.0, &mut rng);
            // the centre is foreground and the window always contains it
            assert!(p.has_foreground());
        }
        let p0 = sample_patch(&c, [1, 1, 1], 0.0, &mut rng);
        assert_eq!(p0.label, vec![0]);
    }

    #[test]
    fn cases_are_cropped_to_the_nonzero_box_and_zscored() {
        let mut data = vec![0f32; 64];
        let mut m = vec![0u8; 64];
        for (k, i) in [21usize, 22, 25, 26].iter().enumerate() {
            data[*i] = 1.0 + k as f32;
            m[*i] = 1;
        }
        let img = Volume::from_shape([4, 4, 4], [1.0; 3], data).unwrap();
        let msk = Volume::from_shape([4, 4, 4], [1.0; 3], m).unwrap();
        let c = TrainCase::new("x", &img, &msk).unwrap();
        assert_eq!(c.shape, [1, 2, 2]);
        let mean: f32 = c.image.iter().sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6);
        assert_eq!(c.foreground(), 4);
        let bad = Volume::from_shape([4, 4, 1], [1.0; 3], vec![0u8; 16]).unwrap();
        assert!(
            TrainCase::new("x", &img, &bad)
                .unwrap_err()
                .to_string()
                .contains("`x`")
        );
    }
}
