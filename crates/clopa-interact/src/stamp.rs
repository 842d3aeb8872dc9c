//! The point stamp of nnInteractive: `skimage.morphology.ball(r)`, its exact Euclidean distance
//! transform (scipy `distance_transform_edt`: distance to the nearest zero *inside* the
//! `(2r+1)^3` array), divided by its maximum.

/// A cubic stamp of side `2 * radius + 1`, C-contiguous, values in `[0, 1]` (1 at the centre).
#[derive(Debug, Clone, PartialEq)]
pub struct PointStamp {
    radius: usize,
    values: Vec<f64>,
}

impl PointStamp {
    /// The stamp of `radius` voxels (nnInteractive's `point_radius`, 4 for the released model).
    /// `radius` 0 gives the single voxel 1.0 (scipy would have no zero to measure from).
    pub fn new(radius: usize) -> Self {
        let n = 2 * radius + 1;
        let r = radius as i64;
        // skimage's ball: integer offsets with x^2 + y^2 + z^2 <= r^2.
        let inside = |i: usize| {
            let (x, y, z) = (i / (n * n), (i / n) % n, i % n);
            let d = |v: usize| v as i64 - r;
            d(x) * d(x) + d(y) * d(y) + d(z) * d(z) <= r * r
        };
        let zeros: Vec<[i64; 3]> = (0..n * n * n)
            .filter(|&i| !inside(i))
            .map(|i| [(i / (n * n)) as i64, ((i / n) % n) as i64, (i % n) as i64])
            .collect();
        if zeros.is_empty() {
            return PointStamp {
                radius,
                values: vec![1.0],
            };
        }
        // Brute force is exact and cheap for a 9^3 array (729 x 472 squared distances).
        let mut values: Vec<f64> = (0..n * n * n)
            .map(|i| {
                if !inside(i) {
                    return 0.0;
                }
                let p = [(i / (n * n)) as i64, ((i / n) % n) as i64, (i % n) as i64];
                let d2 = zeros
                    .iter()
                    .map(|q| (0..3).map(|k| (p[k] - q[k]) * (p[k] - q[k])).sum::<i64>())
                    .min()
                    .unwrap_or(0);
                (d2 as f64).sqrt()
            })
            .collect();
        let max = values.iter().cloned().fold(0.0, f64::max);
        if max > 0.0 {
            values.iter_mut().for_each(|v| *v /= max);
        }
        PointStamp { radius, values }
    }

    /// The radius in voxels.
    pub fn radius(&self) -> usize {
        self.radius
    }

    /// Side length `2 * radius + 1`.
    pub fn size(&self) -> usize {
        2 * self.radius + 1
    }

    /// All values, C-contiguous over `[size, size, size]`.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// Value at stamp offset `(x, y, z)`, each in `0..size`.
    pub fn get(&self, x: usize, y: usize, z: usize) -> f64 {
        let n = self.size();
        self.values[(x * n + y) * n + z]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn radius4_has_257_voxels_centre_one_rim_inverse_sqrt17() {
        let s = PointStamp::new(4);
        assert_eq!(s.size(), 9);
        assert_eq!(s.values().iter().filter(|&&v| v > 0.0).count(), 257);
        assert_eq!(s.get(4, 4, 4), 1.0);
        assert!((s.get(0, 4, 4) - 1.0 / 17f64.sqrt()).abs() < 1e-15);
        assert_eq!(s.get(0, 0, 0), 0.0);
    }

    #[test]
    fn stamp_is_symmetric() {
        let s = PointStamp::new(3);
        let n = s.size();
        for x in 0..n {
            for y in 0..n {
                for z in 0..n {
                    assert_eq!(s.get(x, y, z), s.get(n - 1 - x, y, z));
                    assert_eq!(s.get(x, y, z), s.get(z, x, y));
                }
            }
        }
    }

    #[test]
    fn radius0_is_a_single_voxel() {
        assert_eq!(PointStamp::new(0).values(), &[1.0]);
    }
}
