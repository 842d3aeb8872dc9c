//! Surface distances exactly as DeepMind surface-distance 0.1 computes them
//! (`compute_surface_distances`): surfels on the voxel-corner grid from 2×2×2 neighbour codes,
//! weighted by their area in mm², after cropping both masks to the bounding box of their union;
//! distances from an exact anisotropic EDT to the other mask's surfels. With a tolerance
//! ([`SurfaceDistances::compute_within`], what NSD uses) each surfel instead scans the few
//! offsets within the tolerance, nearest first; both give the same bits for every distance
//! `<=` the tolerance.

use rayon::prelude::*;

use crate::MetricsError;
use crate::edt::edt_squared_at_with;
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
        Self::compute_with(
            pred,
            reference,
            shape,
            spacing,
            max_mm,
            crate::edt::SPARSE_COST_FACTOR,
        )
    }

    /// [`compute_within`](Self::compute_within) with the EDT's sparse-scan budget (see
    /// `edt::edt_squared_at_with`), so that tests can pin either distance path.
    pub(crate) fn compute_with(
        pred: &[u8],
        reference: &[u8],
        shape: [usize; 3],
        spacing: [f64; 3],
        max_mm: f64,
        sparse_cost_factor: usize,
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
        let surf_ref = neighbour_codes(reference, shape, lo, hi, cs);
        let surf_pred = neighbour_codes(pred, shape, lo, hi, cs);
        let areas = neighbour_code_areas(spacing);
        let ref_areas = surf_ref.areas(&areas);
        let pred_areas = surf_pred.areas(&areas);

        // A little above max_mm² so that rounding of the square cannot drop a distance equal to
        // max_mm.
        let cap = if max_mm.is_finite() {
            max_mm * max_mm * (1.0 + 1e-9) + 1e-12
        } else {
            f64::INFINITY
        };
        let pred_to_ref = distances_at(
            &surf_ref,
            &surf_pred.idx,
            cs,
            spacing,
            cap,
            sparse_cost_factor,
        );
        let ref_to_pred = distances_at(
            &surf_pred,
            &surf_ref.idx,
            cs,
            spacing,
            cap,
            sparse_cost_factor,
        );
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
    // fold from +0.0: `sum()` of no floats is -0.0, which made NSD -0.0 in the tables when
    // nothing lay within the tolerance
    d.iter()
        .zip(a)
        .filter(|(d, _)| **d <= tol)
        .fold(0.0, |s, (_, a)| s + a)
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
                // A branch-free OR over the row first (vectorised): most rows are empty.
                let or = ra.iter().zip(rb).fold(0u8, |acc, (x, y)| acc | x | y);
                if or == 0 {
                    continue;
                }
                let hit = |(x, y): (&u8, &u8)| *x != 0 || *y != 0;
                // Only a foreground voxel outside the box found so far can widen it on axis 2.
                let head = lo[2].min(n2);
                if let Some(f) = ra[..head].iter().zip(&rb[..head]).position(hit) {
                    lo[2] = f;
                }
                let tail = if any { hi[2] + 1 } else { 0 };
                if let Some(l) = ra[tail..].iter().zip(&rb[tail..]).rposition(hit) {
                    hi[2] = tail + l;
                }
                any = true;
                lo[0] = lo[0].min(i0);
                lo[1] = lo[1].min(i1);
                hi[0] = hi[0].max(i0);
                hi[1] = hi[1].max(i1);
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

/// Neighbour codes of the crop's corners: `scipy.ndimage.correlate(crop, kernel)` with the
/// kernel `[[[128, 64], [32, 16]], [[8, 4], [2, 1]]]`, whose origin makes corner `p` see voxels
/// `p - 1` (high bits) and `p` (low bits) on each axis.
///
/// Only surfels (codes other than 0 and 255) matter downstream, so only they are kept (see
/// [`Surfels`]). The crop is first packed into bit rows along axis 2; a corner row then finds its
/// surfels with a few word operations (a corner is a surfel exactly when its eight voxels are
/// not all equal) and forms codes only there. No byte-per-corner grid is ever allocated.
fn neighbour_codes(
    mask: &[u8],
    shape: [usize; 3],
    lo: [usize; 3],
    hi: [usize; 3],
    cs: [usize; 3],
) -> Surfels {
    let [_, n1, n2] = shape;
    let ext = [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1];
    // Words per bit row: bit k of a row is crop voxel k (k < ext[2]); the corner rows need one
    // more bit (cs[2] = ext[2] + 1), which is always zero in a voxel row.
    let nw = cs[2].div_ceil(64);
    let mut bits = vec![0u64; ext[0] * ext[1] * nw];
    let mut nonempty = vec![false; ext[0] * ext[1]];
    bits.par_chunks_mut(ext[1] * nw)
        .zip(nonempty.par_chunks_mut(ext[1]))
        .enumerate()
        .for_each(|(q0, (slab, flags))| {
            for (q1, (out, flag)) in slab.chunks_mut(nw).zip(flags.iter_mut()).enumerate() {
                let start = ((lo[0] + q0) * n1 + lo[1] + q1) * n2 + lo[2];
                let r = &mask[start..start + ext[2]];
                *flag = pack_row(r, out) != 0;
            }
        });
    // The bit row of crop voxels (q0, q1), or None outside the crop or when it is empty.
    let row = |q0: isize, q1: isize| -> Option<&[u64]> {
        if q0 < 0 || q1 < 0 || q0 as usize >= ext[0] || q1 as usize >= ext[1] {
            return None;
        }
        let r = q0 as usize * ext[1] + q1 as usize;
        nonempty[r].then(|| &bits[r * nw..(r + 1) * nw])
    };
    let slab_len = cs[1] * cs[2];
    let per_slab: Vec<(Vec<usize>, Vec<u8>)> = (0..cs[0])
        .into_par_iter()
        .map(|p0u| {
            let mut found = Vec::new();
            let mut found_codes = Vec::new();
            let p0 = p0u as isize;
            for p1 in 0..cs[1] {
                let p1i = p1 as isize;
                // Index 2a + b: voxel row (p0 - 1 + a, p1 - 1 + b).
                let rows = [
                    row(p0 - 1, p1i - 1),
                    row(p0 - 1, p1i),
                    row(p0, p1i - 1),
                    row(p0, p1i),
                ];
                if rows.iter().all(Option::is_none) {
                    continue;
                }
                let word = |ab: usize, w: usize| rows[ab].map_or(0, |r| r[w]);
                for w in 0..nw {
                    // Per row: `high` has bit p2 = voxel p2, `low` has bit p2 = voxel p2 - 1.
                    let mut high = [0u64; 4];
                    let mut low = [0u64; 4];
                    for ab in 0..4 {
                        high[ab] = word(ab, w);
                        let carry = if w > 0 { word(ab, w - 1) >> 63 } else { 0 };
                        low[ab] = (high[ab] << 1) | carry;
                    }
                    let or = high.iter().chain(&low).fold(0, |acc, x| acc | x);
                    let and = high.iter().chain(&low).fold(u64::MAX, |acc, x| acc & x);
                    let mut surf = or & !and;
                    while surf != 0 {
                        let j = surf.trailing_zeros() as usize;
                        surf &= surf - 1;
                        let mut code = 0u8;
                        for ab in 0..4 {
                            // Kernel weight of voxel (a, b, c) is 2^(7 - (4a + 2b + c)).
                            let shift = 7 - 2 * ab as u32;
                            code |= (((low[ab] >> j) & 1) as u8) << shift;
                            code |= (((high[ab] >> j) & 1) as u8) << (shift - 1);
                        }
                        found.push(p0u * slab_len + p1 * cs[2] + w * 64 + j);
                        found_codes.push(code);
                    }
                }
            }
            (found, found_codes)
        })
        .collect();
    let n = per_slab.iter().map(|(i, _)| i.len()).sum();
    let mut idx = Vec::with_capacity(n);
    let mut codes = Vec::with_capacity(n);
    for (i, c) in per_slab {
        idx.extend_from_slice(&i);
        codes.extend_from_slice(&c);
    }
    // Surfels are a thin shell: setting their bits one by one is cheap, and unlike slab-parallel
    // writes it needs no care for words shared by two slabs.
    let mut bits = vec![0u64; (cs[0] * slab_len).div_ceil(64)];
    for &i in &idx {
        bits[i / 64] |= 1 << (i % 64);
    }
    Surfels { idx, codes, bits }
}

/// The surfels of one mask on the crop's corner grid.
struct Surfels {
    /// Flat corner indices, increasing.
    idx: Vec<usize>,
    /// Neighbour code of each surfel.
    codes: Vec<u8>,
    /// One bit per corner (flat index), set at surfels: the EDT's feature set, 1/8 of a byte grid
    /// so that the distance lookups stay in cache.
    bits: Vec<u64>,
}

impl Surfels {
    fn areas(&self, table: &[f64; 256]) -> Vec<f64> {
        self.codes.iter().map(|&c| table[c as usize]).collect()
    }

    #[inline]
    fn contains(&self, i: usize) -> bool {
        (self.bits[i / 64] >> (i % 64)) & 1 == 1
    }
}

/// Packs a mask row into bits (bit k of word w = `row[64 w + k] != 0`), eight bytes at a time;
/// returns the OR of the words.
fn pack_row(row: &[u8], out: &mut [u64]) -> u64 {
    let mut any = 0u64;
    for (w, chunk) in out.iter_mut().zip(row.chunks(64)) {
        let mut x = 0u64;
        let mut eights = chunk.chunks_exact(8);
        for (k, c8) in eights.by_ref().enumerate() {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(c8);
            x |= nonzero_bytes(u64::from_le_bytes(bytes)) << (8 * k);
        }
        let rest = eights.remainder();
        let done = chunk.len() - rest.len();
        for (j, &v) in rest.iter().enumerate() {
            x |= u64::from(v != 0) << (done + j);
        }
        *w = x;
        any |= x;
    }
    any
}

/// Bit i of the result is set when byte i (little endian) of `w` is non-zero.
#[inline]
fn nonzero_bytes(w: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // Per byte: the high bit ends up set iff the byte is non-zero ((b & 0x7f) + 0x7f cannot
    // carry into the next byte).
    let high = (((w & LOW7) + LOW7) | w) & !LOW7;
    // Bit 8i + 7 → bit i: the multiplier's terms 2^(7k), k = 1..=8, move byte i's bit to
    // 56 + i without two terms ever landing on the same bit (so no carries).
    ((high >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// Distances from the surfels at `query` to the nearest surfel of `features`: infinity when that
/// mask has no surfel.
fn distances_at(
    features: &Surfels,
    query: &[usize],
    cs: [usize; 3],
    spacing: [f64; 3],
    cap: f64,
    sparse_cost_factor: usize,
) -> Vec<f64> {
    if query.is_empty() {
        return Vec::new();
    }
    if features.idx.is_empty() {
        return vec![f64::INFINITY; query.len()];
    }
    let is_feature = |i: usize| features.contains(i);
    let sq = edt_squared_at_with(&is_feature, cs, spacing, query, cap, sparse_cost_factor);
    sq.into_iter().map(f64::sqrt).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Nothing within the tolerance gives +0.0, not the -0.0 of an empty float sum.
    #[test]
    fn no_overlap_is_positive_zero() {
        let v = overlap_sum(&[5.0, 6.0], &[1.0, 1.0], 1.0);
        assert!(v == 0.0 && v.is_sign_positive(), "{v}");
        let v = overlap_sum(&[], &[], 1.0);
        assert!(v.is_sign_positive());
    }

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

    /// Neighbour codes straight from the kernel definition (the crop padded with zeros).
    #[allow(clippy::needless_range_loop)]
    fn direct_codes(mask: &[u8], shape: [usize; 3], lo: [usize; 3], cs: [usize; 3]) -> Vec<u8> {
        let ext = [cs[0] - 1, cs[1] - 1, cs[2] - 1];
        let kernel = [[[128u32, 64], [32, 16]], [[8, 4], [2, 1]]];
        let mut out = vec![0u8; cs[0] * cs[1] * cs[2]];
        for p0 in 0..cs[0] {
            for p1 in 0..cs[1] {
                for p2 in 0..cs[2] {
                    let mut code = 0u32;
                    for a in 0..2 {
                        for b in 0..2 {
                            for c in 0..2 {
                                // Crop index = corner + offset - 1.
                                let q = [p0 + a, p1 + b, p2 + c];
                                if (0..3).all(|k| q[k] >= 1 && q[k] <= ext[k]) {
                                    let i = ((lo[0] + q[0] - 1) * shape[1] + lo[1] + q[1] - 1)
                                        * shape[2]
                                        + lo[2]
                                        + q[2]
                                        - 1;
                                    code += kernel[a][b][c] * u32::from(mask[i] != 0);
                                }
                            }
                        }
                    }
                    out[(p0 * cs[1] + p1) * cs[2] + p2] = code as u8;
                }
            }
        }
        out
    }

    /// The bit-row codes against the kernel definition, on random masks whose axis 2 spans one,
    /// two and three 64-bit words (carries between words), cropped to their bounding box.
    #[test]
    fn codes_match_direct_correlation() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for trial in 0..30 {
            let shape = [
                rng.random_range(1..6),
                rng.random_range(1..6),
                [1, 2, 63, 64, 65, 127, 128, 130][trial % 8],
            ];
            let density = [0.05, 0.3, 0.7, 0.97][trial % 4];
            let n = shape.iter().product::<usize>();
            let mask: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.random_bool(density) {
                        1 + rng.random_range(0..3)
                    } else {
                        0
                    }
                })
                .collect();
            let Some((lo, hi)) = union_bbox(&mask, &mask, shape) else {
                continue;
            };
            let cs = [hi[0] - lo[0] + 2, hi[1] - lo[1] + 2, hi[2] - lo[2] + 2];
            let got = neighbour_codes(&mask, shape, lo, hi, cs);
            let want = direct_codes(&mask, shape, lo, cs);
            let surfel = |c: u8| c != 0 && c != 255;
            let want_idx: Vec<usize> = (0..want.len()).filter(|&i| surfel(want[i])).collect();
            assert_eq!(got.idx, want_idx, "trial {trial} shape {shape:?}");
            let want_codes: Vec<u8> = want_idx.iter().map(|&i| want[i]).collect();
            assert_eq!(got.codes, want_codes, "trial {trial} shape {shape:?}");
            for (i, &w) in want.iter().enumerate() {
                assert_eq!(got.contains(i), surfel(w), "trial {trial} corner {i}");
            }
        }
    }

    /// NSD's capped distances by the offset scan and by the dense transform against the uncapped
    /// distances: masks filling the volume up to its border, one or both empty, tolerances from
    /// zero to far beyond the volume. Distances within the tolerance and the surface Dice must be
    /// bit-identical; the scan answers infinity beyond the tolerance.
    #[test]
    fn capped_paths_match_uncapped_distances() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for trial in 0..40 {
            let shape = [
                rng.random_range(1..9),
                rng.random_range(1..9),
                rng.random_range(1..9),
            ];
            let sp = [
                rng.random_range(0.3..3.0),
                rng.random_range(0.3..3.0),
                rng.random_range(0.3..3.0),
            ];
            let n = shape.iter().product::<usize>();
            let mut pred: Vec<u8> = (0..n).map(|_| u8::from(rng.random_bool(0.4))).collect();
            let mut reference: Vec<u8> = (0..n).map(|_| u8::from(rng.random_bool(0.6))).collect();
            match trial % 5 {
                0 => reference.fill(1), // the whole volume: surface on all six borders
                1 => pred.fill(0),
                2 => {
                    pred.fill(0);
                    reference.fill(0);
                }
                _ => {}
            }
            let full = SurfaceDistances::compute(&pred, &reference, shape, sp).unwrap();
            for tol in [0.0, sp[0], rng.random_range(0.1..4.0), 1e4] {
                let dense =
                    SurfaceDistances::compute_with(&pred, &reference, shape, sp, tol, 0).unwrap();
                let sparse =
                    SurfaceDistances::compute_with(&pred, &reference, shape, sp, tol, usize::MAX)
                        .unwrap();
                for got in [&dense, &sparse] {
                    assert_eq!(got.ref_areas, full.ref_areas);
                    assert_eq!(got.pred_areas, full.pred_areas);
                    let pairs = got
                        .ref_to_pred
                        .iter()
                        .zip(&full.ref_to_pred)
                        .chain(got.pred_to_ref.iter().zip(&full.pred_to_ref));
                    for (g, w) in pairs {
                        if *w <= tol {
                            assert_eq!(g, w, "trial {trial} tol {tol}");
                        } else {
                            assert!(*g > tol, "trial {trial} tol {tol}: {g} vs {w}");
                        }
                    }
                    let (a, b) = (got.surface_dice(tol), full.surface_dice(tol));
                    assert!(
                        a.to_bits() == b.to_bits(),
                        "trial {trial} tol {tol}: {a} vs {b}"
                    );
                }
                for d in sparse.ref_to_pred.iter().chain(&sparse.pred_to_ref) {
                    assert!(*d <= tol || d.is_infinite(), "trial {trial}: {d} > {tol}");
                }
            }
        }
    }

    #[test]
    fn nonzero_bytes_gathers_one_bit_per_byte() {
        assert_eq!(nonzero_bytes(0), 0);
        assert_eq!(nonzero_bytes(u64::MAX), 0xff);
        assert_eq!(nonzero_bytes(0x0100_0000_0000_0080), 0b1000_0001);
        assert_eq!(nonzero_bytes(0x00ff_0001_7f00_0200), 0b0101_1010);
        let mut out = [0u64; 2];
        let row: Vec<u8> = (0..70)
            .map(|i| u8::from(i % 3 == 0) * (i as u8 | 1))
            .collect();
        pack_row(&row, &mut out);
        for (i, &v) in row.iter().enumerate() {
            assert_eq!((out[i / 64] >> (i % 64)) & 1 == 1, v != 0, "byte {i}");
        }
    }

    #[test]
    fn union_bbox_of_scattered_voxels() {
        let shape = [4, 5, 70];
        let mut a = vec![0u8; 4 * 5 * 70];
        let mut b = a.clone();
        let at = |i0: usize, i1: usize, i2: usize| (i0 * 5 + i1) * 70 + i2;
        assert_eq!(union_bbox(&a, &b, shape), None);
        a[at(1, 3, 40)] = 1;
        assert_eq!(union_bbox(&a, &b, shape), Some(([1, 3, 40], [1, 3, 40])));
        b[at(2, 1, 65)] = 7;
        a[at(3, 4, 2)] = 1;
        b[at(3, 2, 50)] = 1;
        assert_eq!(union_bbox(&a, &b, shape), Some(([1, 1, 2], [3, 4, 65])));
    }

    #[test]
    fn numpy_sum_small_and_large() {
        let a: Vec<f64> = (0..1000).map(|i| i as f64 * 0.1).collect();
        let s = numpy_sum(&a);
        assert!((s - 49950.0).abs() < 1e-9);
        assert_eq!(numpy_sum(&[1.0, 2.0]), 3.0);
    }
}
