//! Surface distances exactly as DeepMind surface-distance 0.1 computes them
//! (`compute_surface_distances`): surfels on the voxel-corner grid from 2×2×2 neighbour codes,
//! weighted by their area in mm², after cropping both masks to the bounding box of their union;
//! distances from an exact anisotropic EDT to the other mask's surfels.

use rayon::prelude::*;

use crate::MetricsError;
use crate::edt::edt_squared_at;
use crate::normals_table::NEIGHBOUR_CODE_TO_NORMALS;

/// Area (mm²) of the surfels of each of the 256 neighbour codes at this spacing
/// (`create_table_neighbour_code_to_surface_area`).
pub fn neighbour_code_areas(spacing: [f64; 3]) -> [f64; 256] {
    let mut table = [0.0; 256];
    for (code, normals) in NEIGHBOUR_CODE_TO_NORMALS.iter().enumerate() {
        let mut sum = 0.0;
        for n in normals.iter() {
            // Same products, same order as the reference (left to right).
            let a = n[0] * spacing[1] * spacing[2];
            let b = n[1] * spacing[0] * spacing[2];
            let c = n[2] * spacing[0] * spacing[1];
            sum += (a * a + b * b + c * c).sqrt();
        }
        table[code] = sum;
    }
    table
}

/// Distances (mm) from each surfel of one mask to the other mask's surface, with the surfel areas
/// (mm²), unsorted. Naming follows the reference: `ref` is `mask_gt`, `pred` is `mask_pred`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SurfaceDistances {
    /// Distance from each reference surfel to the predicted surface (`distances_gt_to_pred`).
    pub ref_to_pred: Vec<f64>,
    /// Area of each reference surfel (`surfel_areas_gt`).
    pub ref_areas: Vec<f64>,
    /// Distance from each predicted surfel to the reference surface (`distances_pred_to_gt`).
    pub pred_to_ref: Vec<f64>,
    /// Area of each predicted surfel (`surfel_areas_pred`).
    pub pred_areas: Vec<f64>,
}

/// Both directions' average surface distances and the two symmetric combinations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assd {
    /// Area-weighted mean distance from the reference surface to the prediction.
    pub ref_to_pred: f64,
    /// Area-weighted mean distance from the predicted surface to the reference.
    pub pred_to_ref: f64,
    /// Mean of the two directed averages.
    pub mean_of_directed: f64,
    /// Both surfaces pooled: Σ d·a over both / Σ a over both.
    pub area_weighted: f64,
}

impl SurfaceDistances {
    /// Computes the surfels and their distances (`compute_surface_distances(mask_gt=ref,
    /// mask_pred=pred, spacing_mm)`). Masks are C-contiguous, axis 2 fastest; non-zero is
    /// foreground.
    pub fn compute(
        pred: &[u8],
        reference: &[u8],
        shape: [usize; 3],
        spacing: [f64; 3],
    ) -> Result<Self, MetricsError> {
        Self::compute_within(pred, reference, shape, spacing, f64::INFINITY)
    }

    /// Like [`compute`](Self::compute), but distances greater than `max_mm` may be reported as
    /// infinity (all distances `<= max_mm` are exact). Enough for the surface Dice and overlap
    /// at a tolerance `<= max_mm`, and much faster for small tolerances; the Hausdorff and average
    /// distances of such a result are meaningless.
    pub fn compute_within(
        pred: &[u8],
        reference: &[u8],
        shape: [usize; 3],
        spacing: [f64; 3],
        max_mm: f64,
    ) -> Result<Self, MetricsError> {
        crate::check_len("pred", pred.len(), shape)?;
        crate::check_len("ref", reference.len(), shape)?;
        crate::check_spacing(spacing)?;
        let Some((lo, hi)) = union_bbox(pred, reference, shape) else {
            return Ok(Self::default());
        };
        // Corner grid of the crop: one more corner than voxels on each axis (the reference pads the
        // crop with one zero voxel on the high side and correlates with zeros outside).
        let cs = [hi[0] - lo[0] + 2, hi[1] - lo[1] + 2, hi[2] - lo[2] + 2];
        let codes_ref = neighbour_codes(reference, shape, lo, hi, cs);
        let codes_pred = neighbour_codes(pred, shape, lo, hi, cs);
        let areas = neighbour_code_areas(spacing);

        let (ref_idx, ref_areas) = surfels(&codes_ref, &areas);
        let (pred_idx, pred_areas) = surfels(&codes_pred, &areas);

        // A little above max_mm² so that rounding of the square cannot drop a distance equal to
        // max_mm.
        let cap = if max_mm.is_finite() {
            max_mm * max_mm * (1.0 + 1e-9) + 1e-12
        } else {
            f64::INFINITY
        };
        let pred_to_ref = distances_at(&codes_ref, &ref_idx, &pred_idx, cs, spacing, cap);
        let ref_to_pred = distances_at(&codes_pred, &pred_idx, &ref_idx, cs, spacing, cap);
        Ok(Self {
            ref_to_pred,
            ref_areas,
            pred_to_ref,
            pred_areas,
        })
    }

    /// Total reference surface area (mm²).
    pub fn ref_area(&self) -> f64 {
        self.ref_areas.iter().sum()
    }

    /// Total predicted surface area (mm²).
    pub fn pred_area(&self) -> f64 {
        self.pred_areas.iter().sum()
    }

    /// Normalised surface Dice at `tolerance_mm` (`compute_surface_dice_at_tolerance`): a surfel
    /// counts when its distance is `<=` the tolerance. NaN when both surfaces are empty, 0 when
    /// exactly one is.
    pub fn surface_dice(&self, tolerance_mm: f64) -> f64 {
        let ov_ref = overlap_sum(&self.ref_to_pred, &self.ref_areas, tolerance_mm);
        let ov_pred = overlap_sum(&self.pred_to_ref, &self.pred_areas, tolerance_mm);
        (ov_ref + ov_pred) / (self.ref_area() + self.pred_area())
    }

    /// Fraction of each surface within the tolerance of the other, `(ref, pred)`
    /// (`compute_surface_overlap_at_tolerance`); NaN for an empty surface.
    pub fn surface_overlap(&self, tolerance_mm: f64) -> (f64, f64) {
        (
            overlap_sum(&self.ref_to_pred, &self.ref_areas, tolerance_mm) / self.ref_area(),
            overlap_sum(&self.pred_to_ref, &self.pred_areas, tolerance_mm) / self.pred_area(),
        )
    }

    /// Robust Hausdorff distance (`compute_robust_hausdorff`): per direction, the distance of the
    /// first surfel (sorted by distance, then area) whose cumulative area fraction reaches
    /// `percent / 100`, no interpolation; the maximum of the two directions. Infinite when either
    /// mask is empty.
    pub fn robust_hausdorff(&self, percent: f64) -> f64 {
        let a = directed_percentile(&self.ref_to_pred, &self.ref_areas, percent);
        let b = directed_percentile(&self.pred_to_ref, &self.pred_areas, percent);
        // Python's max(a, b): returns a unless b > a.
        if b > a { b } else { a }
    }

    /// Average surface distances (`compute_average_surface_distance`) and their symmetric forms.
    /// IEEE semantics give the reference's values for empty masks (NaN for 0/0, inf for an empty
    /// other surface).
    pub fn average_distances(&self) -> Assd {
        let wsum = |d: &[f64], a: &[f64]| d.iter().zip(a).map(|(d, a)| d * a).sum::<f64>();
        let dr = wsum(&self.ref_to_pred, &self.ref_areas);
        let dp = wsum(&self.pred_to_ref, &self.pred_areas);
        let ar = self.ref_area();
        let ap = self.pred_area();
        let ref_to_pred = dr / ar;
        let pred_to_ref = dp / ap;
        Assd {
            ref_to_pred,
            pred_to_ref,
            mean_of_directed: (ref_to_pred + pred_to_ref) / 2.0,
            area_weighted: (dr + dp) / (ar + ap),
        }
    }
}

fn overlap_sum(d: &[f64], a: &[f64], tol: f64) -> f64 {
    d.iter()
        .zip(a)
        .filter(|(d, _)| **d <= tol)
        .map(|(_, a)| *a)
        .sum()
}

fn directed_percentile(d: &[f64], a: &[f64], percent: f64) -> f64 {
    if d.is_empty() {
        return f64::INFINITY;
    }
    let mut pairs: Vec<(f64, f64)> = d.iter().copied().zip(a.iter().copied()).collect();
    // Python's sorted(zip(distances, areas)): by distance, then area.
    pairs.par_sort_unstable_by(|x, y| x.0.total_cmp(&y.0).then(x.1.total_cmp(&y.1)));
    let areas: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let total = numpy_sum(&areas);
    let target = percent / 100.0;
    // np.searchsorted(cumsum / total, target), side='left': first index with value >= target.
    let mut cum = 0.0;
    let mut idx = pairs.len();
    for (i, ar) in areas.iter().enumerate() {
        cum += ar;
        if cum / total >= target {
            idx = i;
            break;
        }
    }
    pairs[idx.min(pairs.len() - 1)].0
}

/// numpy's pairwise summation (`np.sum` of a contiguous f64 array), so that the percentile's
/// comparison against `cumsum / sum` sees the same total as the reference.
pub(crate) fn numpy_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &v in a {
            res += v;
        }
        res
    } else if n <= BLOCK {
        let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_sum(&a[..n2]) + numpy_sum(&a[n2..])
    }
}

/// Bounding box (inclusive) of the union of both masks, or None when both are empty.
fn union_bbox(a: &[u8], b: &[u8], shape: [usize; 3]) -> Option<([usize; 3], [usize; 3])> {
    let [n0, n1, n2] = shape;
    let slab = n1 * n2;
    let per_slab: Vec<Option<([usize; 3], [usize; 3])>> = (0..n0)
        .into_par_iter()
        .map(|i0| {
            let mut lo = [usize::MAX; 3];
            let mut hi = [0usize; 3];
            let mut any = false;
            for i1 in 0..n1 {
                let base = i0 * slab + i1 * n2;
                let ra = &a[base..base + n2];
                let rb = &b[base..base + n2];
                let first = ra.iter().zip(rb).position(|(x, y)| *x != 0 || *y != 0);
                if let Some(f) = first {
                    let last = ra
                        .iter()
                        .zip(rb)
                        .rposition(|(x, y)| *x != 0 || *y != 0)
                        .unwrap_or(f);
                    any = true;
                    lo = [lo[0].min(i0), lo[1].min(i1), lo[2].min(f)];
                    hi = [hi[0].max(i0), hi[1].max(i1), hi[2].max(last)];
                }
            }
            any.then_some((lo, hi))
        })
        .collect();
    per_slab.into_iter().flatten().reduce(|(l1, h1), (l2, h2)| {
        (
            [l1[0].min(l2[0]), l1[1].min(l2[1]), l1[2].min(l2[2])],
            [h1[0].max(h2[0]), h1[1].max(h2[1]), h1[2].max(h2[2])],
        )
    })
}

/// Neighbour code of every corner of the crop: `scipy.ndimage.correlate(crop, kernel)` with the
/// kernel `[[[128, 64], [32, 16]], [[8, 4], [2, 1]]]`, whose origin makes corner `p` see voxels
/// `p - 1` (high bits) and `p` (low bits) on each axis.
fn neighbour_codes(
    mask: &[u8],
    shape: [usize; 3],
    lo: [usize; 3],
    hi: [usize; 3],
    cs: [usize; 3],
) -> Vec<u8> {
    let [_, n1, n2] = shape;
    let ext = [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1];
    let mut codes = vec![0u8; cs[0] * cs[1] * cs[2]];
    // The crop row at crop coordinates (q0, q1) along axis 2, or None outside the crop (zeros)
    // or when the row holds no foreground (it contributes nothing).
    let row = |q0: isize, q1: isize| -> Option<&[u8]> {
        if q0 < 0 || q1 < 0 || q0 as usize >= ext[0] || q1 as usize >= ext[1] {
            return None;
        }
        let start = ((lo[0] + q0 as usize) * n1 + lo[1] + q1 as usize) * n2 + lo[2];
        let r = &mask[start..start + ext[2]];
        r.iter().any(|&v| v != 0).then_some(r)
    };
    codes
        .par_chunks_mut(cs[1] * cs[2])
        .enumerate()
        .for_each_init(
            || vec![0u8; cs[2]],
            |cols, (p0, slab)| {
                let p0 = p0 as isize;
                for p1 in 0..cs[1] {
                    let p1i = p1 as isize;
                    // Bit k = 3 - (2a + b) of a column value holds the voxel at axis-0 offset a and
                    // axis-1 offset b (offset 0 = corner - 1, offset 1 = corner).
                    let rows = [
                        row(p0, p1i),
                        row(p0, p1i - 1),
                        row(p0 - 1, p1i),
                        row(p0 - 1, p1i - 1),
                    ];
                    if rows.iter().all(Option::is_none) {
                        continue;
                    }
                    cols.fill(0);
                    for (bit, r) in rows.iter().enumerate() {
                        if let Some(r) = r {
                            for (c, &v) in cols.iter_mut().zip(r.iter()) {
                                *c |= u8::from(v != 0) << bit;
                            }
                        }
                    }
                    let out = &mut slab[p1 * cs[2]..(p1 + 1) * cs[2]];
                    // Slide along axis 2: corner p2 sees voxel p2 - 1 (kernel offset c = 0, odd
                    // bits) and voxel p2 (c = 1, even bits).
                    let mut prev = 0u8;
                    for (code, &cur) in out.iter_mut().zip(cols.iter()) {
                        *code = (spread(prev) << 1) | spread(cur);
                        prev = cur;
                    }
                }
            },
        );
    codes
}

/// Maps a 4-bit column value `(ab)` to bit positions 2·(3 - (2a + b))... i.e. places bit k of
/// `col` at bit 2k of the result.
#[inline]
fn spread(col: u8) -> u8 {
    (col & 1) | ((col & 2) << 1) | ((col & 4) << 2) | ((col & 8) << 3)
}

fn surfels(codes: &[u8], areas: &[f64; 256]) -> (Vec<usize>, Vec<f64>) {
    let idx: Vec<usize> = codes
        .par_iter()
        .enumerate()
        .filter(|(_, c)| **c != 0 && **c != 255)
        .map(|(i, _)| i)
        .collect();
    let a = idx.iter().map(|&i| areas[codes[i] as usize]).collect();
    (idx, a)
}

/// Distances from the surfels at `query` to the nearest surfel of the mask whose codes are
/// `codes` (its surfels are `feature_idx`): infinity when that mask has no surfel.
fn distances_at(
    codes: &[u8],
    feature_idx: &[usize],
    query: &[usize],
    cs: [usize; 3],
    spacing: [f64; 3],
    cap: f64,
) -> Vec<f64> {
    if query.is_empty() {
        return Vec::new();
    }
    if feature_idx.is_empty() {
        return vec![f64::INFINITY; query.len()];
    }
    let is_feature = |i: usize| codes[i] != 0 && codes[i] != 255;
    let sq = edt_squared_at(&is_feature, cs, spacing, query, cap);
    sq.into_iter().map(f64::sqrt).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn code_areas_match_reference_at_unit_spacing() {
        let t = neighbour_code_areas([1.0, 1.0, 1.0]);
        assert_eq!(t[0], 0.0);
        assert_eq!(t[255], 0.0);
        // One corner voxel: a single triangle with normal (1/8, 1/8, 1/8).
        assert!((t[1] - (3.0f64 * 0.125 * 0.125).sqrt()).abs() < 1e-15);
        // Half the cube (code 15 = one face plane): two normals (0.5, 0, 0): area 1.
        assert!((t[15] - 1.0).abs() < 1e-15);
    }

    #[test]
    fn spread_places_bits() {
        assert_eq!(spread(0b1111), 0b0101_0101);
        assert_eq!(spread(0b1000), 0b0100_0000);
    }

    /// Brute-force neighbour codes straight from the kernel definition.
    #[test]
    #[allow(clippy::needless_range_loop)]
    fn codes_match_direct_correlation() {
        let shape = [3, 4, 2];
        let mask: Vec<u8> = (0..24).map(|i| u8::from((i * 7 + 3) % 5 < 2)).collect();
        let lo = [0, 0, 0];
        let hi = [2, 3, 1];
        let cs = [4, 5, 3];
        let codes = neighbour_codes(&mask, shape, lo, hi, cs);
        let kernel = [[[128u32, 64], [32, 16]], [[8, 4], [2, 1]]];
        for p0 in 0..cs[0] {
            for p1 in 0..cs[1] {
                for p2 in 0..cs[2] {
                    let mut code = 0u32;
                    for a in 0..2 {
                        for b in 0..2 {
                            for c in 0..2 {
                                let (q0, q1, q2) = (p0 + a, p1 + b, p2 + c);
                                // crop index = q - 1
                                if q0 >= 1 && q1 >= 1 && q2 >= 1 && q0 <= 3 && q1 <= 4 && q2 <= 2 {
                                    let i = ((q0 - 1) * 4 + q1 - 1) * 2 + q2 - 1;
                                    code += kernel[a][b][c] * u32::from(mask[i]);
                                }
                            }
                        }
                    }
                    assert_eq!(
                        codes[(p0 * cs[1] + p1) * cs[2] + p2] as u32,
                        code,
                        "{p0} {p1} {p2}"
                    );
                }
            }
        }
    }

    #[test]
    fn numpy_sum_small_and_large() {
        let a: Vec<f64> = (0..1000).map(|i| i as f64 * 0.1).collect();
        let s = numpy_sum(&a);
        assert!((s - 49950.0).abs() < 1e-9);
        assert_eq!(numpy_sum(&[1.0, 2.0]), 3.0);
    }
}
