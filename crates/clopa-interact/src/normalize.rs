//! Z-score normalisation as nnInteractive 2.6.0's `set_image` does it: mean and **unbiased** std
//! over the bounding box of the non-zero voxels, applied to the whole image, no clipping.

use crate::error::{InteractError, check_len};

/// The statistics the image is normalised with, as the session computes them in f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZScore {
    /// Mean over the non-zero bounding box (rounded to f32, as torch's f32 `mean()` returns).
    pub mean: f32,
    /// Unbiased std over the same box (accumulated in f64 around the f32 mean, rounded to f32).
    pub std: f32,
    /// The half-open non-zero bounding box `[[x0, x1], [y0, y1], [z0, z1]]`.
    pub bbox: [[usize; 2]; 3],
}

impl ZScore {
    /// Statistics of `image` (shape `shape`, z fastest).
    ///
    /// Errors: [`InteractError::AllZeroImage`] (the session raises too) and
    /// [`InteractError::ConstantImage`] when the std is 0 or undefined: nnInteractive divides
    /// by it without a guard and would feed NaN/inf to the network, so we refuse instead.
    pub fn fit(image: &[f32], shape: [usize; 3]) -> Result<ZScore, InteractError> {
        check_len("image", image.len(), shape)?;
        let bbox = nonzero_bbox(image, shape).ok_or(InteractError::AllZeroImage)?;
        let [[x0, x1], [y0, y1], [z0, z1]] = bbox;
        let n = (x1 - x0) * (y1 - y0) * (z1 - z0);
        let rows =
            || (x0..x1).flat_map(move |x| (y0..y1).map(move |y| (x * shape[1] + y) * shape[2]));
        // torch sums f32 with cascaded (near-exact) summation; an f64 sum rounded to f32 matches it.
        let sum: f64 = rows()
            .map(|r| image[r + z0..r + z1].iter().map(|&v| v as f64).sum::<f64>())
            .sum();
        let mean = (sum as f32) / (n as f32);
        // torch's std_var_all_cpu: f64 sum of squared deviations from the f32 mean, / (n - 1).
        let m = mean as f64;
        let ss: f64 = rows()
            .map(|r| {
                image[r + z0..r + z1]
                    .iter()
                    .map(|&v| (v as f64 - m) * (v as f64 - m))
                    .sum::<f64>()
            })
            .sum();
        let std = if n > 1 {
            (ss / (n - 1) as f64).sqrt()
        } else {
            f64::NAN
        };
        if !(std > 0.0 && std.is_finite()) {
            return Err(InteractError::ConstantImage { std, n });
        }
        Ok(ZScore {
            mean,
            std: std as f32,
            bbox,
        })
    }

    /// `(v - mean) / std` in f32, exactly as the session's in-place `image -= mean; image /= std`.
    #[inline]
    pub fn apply(&self, v: f32) -> f32 {
        (v - self.mean) / self.std
    }

    /// The whole image normalised.
    pub fn normalize(&self, image: &[f32]) -> Vec<f32> {
        image.iter().map(|&v| self.apply(v)).collect()
    }
}

/// Fit and apply in one go.
pub fn zscore(image: &[f32], shape: [usize; 3]) -> Result<(Vec<f32>, ZScore), InteractError> {
    let z = ZScore::fit(image, shape)?;
    Ok((z.normalize(image), z))
}

/// [`zscore`] on a [`clopa_volume::Volume`] (same grid, normalised values).
pub fn zscore_volume(
    image: &clopa_volume::Volume<f32>,
) -> Result<(clopa_volume::Volume<f32>, ZScore), InteractError> {
    let z = ZScore::fit(&image.data, image.shape)?;
    Ok((image.map(|&v| z.apply(v)), z))
}

/// Half-open bounding box of the voxels that are non-zero, `None` when there are none.
/// (The session projects f32 sums and tests them against 0; a slice whose values cancel to
/// exactly 0 would differ, which does not happen with real images.)
pub fn nonzero_bbox<T: Copy + PartialEq + Default>(
    data: &[T],
    shape: [usize; 3],
) -> Option<[[usize; 2]; 3]> {
    let zero = T::default();
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    let [_, ny, nz] = shape;
    for (r, row) in data.chunks_exact(nz.max(1)).enumerate() {
        let (x, y) = (r / ny, r % ny);
        let first = row.iter().position(|&v| v != zero);
        if let Some(f) = first {
            let last = row.iter().rposition(|&v| v != zero).unwrap_or(f);
            lo[0] = lo[0].min(x);
            hi[0] = hi[0].max(x + 1);
            lo[1] = lo[1].min(y);
            hi[1] = hi[1].max(y + 1);
            lo[2] = lo[2].min(f);
            hi[2] = hi[2].max(last + 1);
        }
    }
    (lo[0] != usize::MAX).then_some([[lo[0], hi[0]], [lo[1], hi[1]], [lo[2], hi[2]]])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn statistics_come_from_the_nonzero_box_with_unbiased_std() {
        // 3x1x2 image; x = 0 is all zero, so the box is x in [1, 3).
        let image = [0.0, 0.0, 1.0, 2.0, 3.0, 4.0];
        let z = ZScore::fit(&image, [3, 1, 2]).unwrap();
        assert_eq!(z.bbox, [[1, 3], [0, 1], [0, 2]]);
        assert_eq!(z.mean, 2.5);
        let unbiased = (5.0f64 / 3.0).sqrt() as f32;
        assert_eq!(z.std, unbiased);
        assert_eq!(z.apply(0.0), -2.5 / unbiased);
    }

    #[test]
    fn zero_inside_the_box_counts() {
        let image = [1.0, 0.0, 3.0];
        let z = ZScore::fit(&image, [1, 1, 3]).unwrap();
        assert!((z.mean - 4.0 / 3.0).abs() < 1e-7);
    }

    #[test]
    fn all_zero_and_constant_images_are_refused() {
        assert!(matches!(
            ZScore::fit(&[0.0; 8], [2, 2, 2]),
            Err(InteractError::AllZeroImage)
        ));
        assert!(matches!(
            ZScore::fit(&[0.0, 5.0, 5.0, 0.0], [1, 1, 4]),
            Err(InteractError::ConstantImage { n: 2, .. })
        ));
        assert!(matches!(
            ZScore::fit(&[0.0, 5.0], [1, 1, 2]),
            Err(InteractError::ConstantImage { n: 1, .. })
        ));
        assert!(matches!(
            ZScore::fit(&[1.0], [1, 1, 2]),
            Err(InteractError::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn nonzero_bbox_finds_extremes() {
        let mut d = vec![0u8; 4 * 5 * 6];
        d[(5 + 2) * 6 + 3] = 1; // voxel (1, 2, 3)
        d[(2 * 5 + 4) * 6 + 1] = 1;
        assert_eq!(nonzero_bbox(&d, [4, 5, 6]), Some([[1, 3], [2, 5], [1, 4]]));
        assert_eq!(nonzero_bbox(&[0u8; 8], [2, 2, 2]), None);
    }
}
