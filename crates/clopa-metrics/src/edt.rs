//! Exact Euclidean distance transform with anisotropic sampling (Felzenszwalb & Huttenlocher's
//! separable lower-envelope algorithm), in f64.
//!
//! Distances are squared sums accumulated axis 0, then 1, then 2, i.e. `((d0² + d1²) + d2²)` with
//! `dk = (integer offset · spacing_k)`. That is the exact order in which
//! `scipy.ndimage.distance_transform_edt(..., sampling=...)` forms its values, so a distance that
//! lands exactly on an NSD tolerance compares the same way as in the reference.

use rayon::prelude::*;

use crate::MetricsError;

/// Squared Euclidean distance (mm²) from every voxel to the nearest voxel where `features` is
/// non-zero; `f64::INFINITY` everywhere when there is no feature voxel.
///
/// `features` is C-contiguous with axis 2 fastest (`index = (i0 * n1 + i1) * n2 + i2`) and
/// `spacing` is in the same axis order.
pub fn squared_distance_transform(
    features: &[u8],
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Result<Vec<f64>, MetricsError> {
    crate::check_len("features", features.len(), shape)?;
    crate::check_spacing(spacing)?;
    Ok(edt_squared(features, shape, spacing))
}

/// Euclidean distance (mm) from every voxel to the nearest non-zero voxel of `features`
/// (`f64::INFINITY` when there is none). See [`squared_distance_transform`].
pub fn distance_transform(
    features: &[u8],
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Result<Vec<f64>, MetricsError> {
    let mut d = squared_distance_transform(features, shape, spacing)?;
    d.par_iter_mut().for_each(|v| *v = v.sqrt());
    Ok(d)
}

const NONE: u32 = u32::MAX;

/// Pass 0 (axis 0, stride n1*n2): for a binary feature set the 1D distance is the voxel count to
/// the nearest feature on the line, found by a forward and a backward sweep over whole slabs
/// (cache friendly, parallel within a slab). Counts are kept as u32 (`NONE` = no feature) rather
/// than f64 to quarter the memory traffic; `(count * s0)²` is formed when pass 1 reads them.
fn axis0_counts(features: &(impl Fn(usize) -> bool + Sync), shape: [usize; 3]) -> Vec<u32> {
    let [n0, n1, n2] = shape;
    let slab = n1 * n2;
    let mut g = vec![NONE; n0 * slab];
    const CHUNK: usize = 8192;
    for i0 in 0..n0 {
        let (before, rest) = g.split_at_mut(i0 * slab);
        let cur = &mut rest[..slab];
        let base = i0 * slab;
        if i0 == 0 {
            cur.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, c)| {
                for (k, cv) in c.iter_mut().enumerate() {
                    *cv = if features(base + ci * CHUNK + k) {
                        0
                    } else {
                        NONE
                    };
                }
            });
        } else {
            let prev = &before[(i0 - 1) * slab..];
            cur.par_chunks_mut(CHUNK)
                .zip(prev.par_chunks(CHUNK))
                .enumerate()
                .for_each(|(ci, (c, p))| {
                    for (k, (cv, &pv)) in c.iter_mut().zip(p).enumerate() {
                        *cv = if features(base + ci * CHUNK + k) {
                            0
                        } else if pv == NONE {
                            NONE
                        } else {
                            pv + 1
                        };
                    }
                });
        }
    }
    for i0 in (0..n0.saturating_sub(1)).rev() {
        let (head, tail) = g.split_at_mut((i0 + 1) * slab);
        let cur = &mut head[i0 * slab..];
        let next = &tail[..slab];
        cur.par_chunks_mut(CHUNK)
            .zip(next.par_chunks(CHUNK))
            .for_each(|(c, nx)| {
                for (cv, &nv) in c.iter_mut().zip(nx) {
                    if nv != NONE && nv + 1 < *cv {
                        *cv = nv + 1;
                    }
                }
            });
    }
    g
}

/// Pass 1 (axis 1, stride n2) of one slab: reads the axis-0 counts, writes squared distances
/// `(c·s0)² + (d1·s1)²` into `out` (the slab, n1*n2).
///
/// Values above `cap` (squared mm; infinity for none) become infinity: see
/// [`edt_squared_at_with`].
fn slab_pass1(
    counts: &[u32],
    n1: usize,
    n2: usize,
    spacing: [f64; 3],
    cap: f64,
    out: &mut [f64],
    w: &mut Work,
) {
    let s0 = spacing[0];
    if cap.is_finite() {
        // Nothing farther than sqrt(cap) matters: spread each finite value over the rows within
        // reach, row by row (contiguous). The candidates are the same expressions the envelope
        // would compare, so the minimum is the same.
        let r = window(cap, spacing[1]);
        // Values above the cap may remain in `out`; every later step can only add to them and
        // the final `> cap` test drops them.
        out.fill(f64::INFINITY);
        for i1 in 0..n1 {
            let lo = i1.saturating_sub(r);
            let hi = (i1 + r).min(n1 - 1);
            for i2 in 0..n2 {
                let c = counts[i1 * n2 + i2];
                if c == NONE {
                    continue;
                }
                let d0 = f64::from(c) * s0;
                let f = d0 * d0;
                if f > cap {
                    continue;
                }
                for p in lo..=hi {
                    let d = (p as f64 - i1 as f64) * spacing[1];
                    let v = f + d * d;
                    let t = &mut out[p * n2 + i2];
                    if v < *t {
                        *t = v;
                    }
                }
            }
        }
        return;
    }
    // Convert the counts row by row (contiguous), noting which columns hold anything finite;
    // only those need the strided envelope pass.
    let live = &mut w.live;
    live.clear();
    live.resize(n2, false);
    for (orow, crow) in out.chunks_mut(n2).zip(counts.chunks(n2)) {
        for ((o, &c), l) in orow.iter_mut().zip(crow).zip(live.iter_mut()) {
            let v = if c == NONE {
                f64::INFINITY
            } else {
                let d = f64::from(c) * s0;
                d * d
            };
            if v > cap {
                *o = f64::INFINITY;
            } else {
                *o = v;
                *l = true;
            }
        }
    }
    if n1 < 2 {
        return;
    }
    for i2 in 0..n2 {
        if !w.live[i2] {
            continue;
        }
        for i1 in 0..n1 {
            w.line[i1] = out[i1 * n2 + i2];
        }
        build_envelope(&w.line[..n1], spacing[1], &mut w.scratch);
        let mut k = 0;
        for i1 in 0..n1 {
            let v = eval_envelope(&w.line[..n1], i1, spacing[1], &w.scratch, &mut k);
            out[i1 * n2 + i2] = if v > cap { f64::INFINITY } else { v };
        }
    }
}

/// How many samples at spacing `s` a squared distance `cap` can reach (one more for safety;
/// anything beyond is dropped by the `> cap` test anyway).
fn window(cap: f64, s: f64) -> usize {
    let r = (cap.sqrt() / s).floor();
    if r.is_finite() && r < (usize::MAX / 4) as f64 {
        r as usize + 1
    } else {
        usize::MAX / 4
    }
}

struct Work {
    live: Vec<bool>,
    line: Vec<f64>,
    scratch: Scratch,
    slab: Vec<f64>,
}

impl Work {
    fn new(shape: [usize; 3]) -> Self {
        let m = shape[1].max(shape[2]);
        Work {
            live: Vec::new(),
            line: vec![0.0; m],
            scratch: Scratch::new(m),
            slab: vec![0.0; shape[1] * shape[2]],
        }
    }
}

/// The full squared transform.
pub(crate) fn edt_squared(features: &[u8], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let [n0, n1, n2] = shape;
    let slab = n1 * n2;
    let mut out = vec![f64::INFINITY; n0 * slab];
    if out.is_empty() {
        return out;
    }
    let counts = axis0_counts(&|i| features[i] != 0, shape);
    out.par_chunks_mut(slab)
        .zip(counts.par_chunks(slab))
        .for_each_init(
            || Work::new(shape),
            |w, (o, c)| {
                slab_pass1(c, n1, n2, spacing, f64::INFINITY, o, w);
                if n2 > 1 {
                    for line in o.chunks_mut(n2) {
                        if !line.iter().any(|v| v.is_finite()) {
                            continue;
                        }
                        build_envelope(line, spacing[2], &mut w.scratch);
                        let mut k = 0;
                        for p in 0..n2 {
                            w.line[p] = eval_envelope(line, p, spacing[2], &w.scratch, &mut k);
                        }
                        line.copy_from_slice(&w.line[..n2]);
                    }
                }
            },
        );
    out
}

/// Squared distances from the voxels `queries` (sorted flat indices) to the nearest voxel where
/// `is_feature` holds. Passes 1 and 2 run slab by slab in a cache-sized buffer, and pass 2 only
/// on lines that hold a query and only evaluated at the queries: the surface metrics need the
/// map at the other mask's surfels only, so the full f64 map is never materialised.
///
/// With a finite `cap` (squared mm), partial sums above it are dropped as infinity: every
/// component of a distance is at most the distance, and adding non-negative terms never makes
/// a rounded sum smaller, so all results `<= cap` are still exact while whole columns and lines
/// with nothing within reach are skipped. NSD at a tolerance only needs that.
///
/// With a finite cap small enough that the ellipsoid of reachable offsets times the number of
/// queries is cheaper than a transform of the whole grid (NSD at a few mm on a large organ:
/// ~20 offsets per surfel instead of ~10 M voxels), each query instead scans those offsets in
/// increasing order of distance (see [`sparse_squared_at`]); results `<= cap` are the same to
/// the bit, and the scan answers infinity for everything above the cap.
/// `sparse_cost_factor` is the scan's budget in offset reads per voxel of the grid
/// ([`SPARSE_COST_FACTOR`] normally; 0: never scan, `usize::MAX`: always scan when the cap is
/// finite, so that tests can pin either path).
pub(crate) fn edt_squared_at_with(
    is_feature: &(impl Fn(usize) -> bool + Sync),
    shape: [usize; 3],
    spacing: [f64; 3],
    queries: &[usize],
    cap: f64,
    sparse_cost_factor: usize,
) -> Vec<f64> {
    let volume = shape.iter().product::<usize>();
    if queries.is_empty() || volume == 0 {
        return vec![f64::INFINITY; queries.len()];
    }
    // Worst case of the scan: every query misses and reads every offset (random access within
    // a few slabs); the dense transform touches each voxel a handful of times. The factor only
    // picks the faster of two exact paths.
    let budget = volume.saturating_mul(sparse_cost_factor) / queries.len();
    if let Some(offsets) = Offsets::within(cap, shape, spacing, budget) {
        return sparse_squared_at(is_feature, shape, &offsets, queries);
    }
    edt_squared_at_dense(is_feature, shape, spacing, queries, cap)
}

/// How many offset reads per voxel of the grid the sparse scan may spend before the dense
/// transform is used instead.
pub(crate) const SPARSE_COST_FACTOR: usize = 4;

/// The offsets whose squared distance is `<= cap`, sorted by that distance.
pub(crate) struct Offsets {
    /// Per-axis reach (voxels) of the offsets.
    reach: [usize; 3],
    /// `(offset per axis, squared distance)` in increasing distance order.
    list: Vec<([isize; 3], f64)>,
}

impl Offsets {
    /// The offsets within `cap` (squared mm), or None when the cap is infinite or there would be
    /// more than `max_len` of them. The squared distance of an offset is formed exactly as the
    /// separable transform forms it, `((|o0|·s0)² + (o1·s1)²) + (o2·s2)²`, so that the minimum
    /// over the offsets that hit a feature is the transform's value bit for bit.
    pub(crate) fn within(
        cap: f64,
        shape: [usize; 3],
        spacing: [f64; 3],
        max_len: usize,
    ) -> Option<Offsets> {
        if !cap.is_finite() {
            return None;
        }
        // Offsets longer than the grid never land inside it.
        let reach: [usize; 3] =
            std::array::from_fn(|k| window(cap, spacing[k]).min(shape[k].saturating_sub(1)));
        let boxed = reach
            .iter()
            .try_fold(1usize, |acc, r| acc.checked_mul(2 * r + 1))?;
        // About half the box lies in the ellipsoid; give up early on hopeless boxes.
        if boxed / 2 > max_len {
            return None;
        }
        let r = reach.map(|r| r as isize);
        let mut list = Vec::new();
        for o0 in -r[0]..=r[0] {
            let d0 = o0.unsigned_abs() as f64 * spacing[0];
            let f0 = d0 * d0;
            if f0 > cap {
                continue;
            }
            for o1 in -r[1]..=r[1] {
                let d1 = o1 as f64 * spacing[1];
                let f1 = f0 + d1 * d1;
                if f1 > cap {
                    continue;
                }
                for o2 in -r[2]..=r[2] {
                    let d2 = o2 as f64 * spacing[2];
                    let v = f1 + d2 * d2;
                    if v <= cap {
                        list.push(([o0, o1, o2], v));
                    }
                }
            }
        }
        if list.len() > max_len {
            return None;
        }
        list.sort_by(|a, b| a.1.total_cmp(&b.1));
        Some(Offsets { reach, list })
    }
}

/// Squared distances from `queries` (flat indices, any order) to the nearest feature among the
/// `offsets`, infinity when none is within them: the first offset (in increasing distance) that
/// hits a feature gives the minimum. Queries farther than the reach from every border skip the
/// bounds checks.
pub(crate) fn sparse_squared_at(
    is_feature: &(impl Fn(usize) -> bool + Sync),
    shape: [usize; 3],
    offsets: &Offsets,
    queries: &[usize],
) -> Vec<f64> {
    let [n0, n1, n2] = shape;
    let (s0, s1) = ((n1 * n2) as isize, n2 as isize);
    let flat: Vec<(isize, f64)> = offsets
        .list
        .iter()
        .map(|(o, v)| (o[0] * s0 + o[1] * s1 + o[2], *v))
        .collect();
    let r = offsets.reach;
    let mut out = vec![f64::INFINITY; queries.len()];
    out.par_chunks_mut(4096)
        .zip(queries.par_chunks(4096))
        .for_each(|(o, qs)| {
            // Surfels come sorted, a few per row: divide only when the row changes.
            let (mut row_start, mut row_end, mut p01) = (1, 0, [0, 0]);
            for (res, &q) in o.iter_mut().zip(qs) {
                if q < row_start || q >= row_end {
                    let row = q / n2;
                    row_start = row * n2;
                    row_end = row_start + n2;
                    p01 = [row / n1, row % n1];
                }
                let p = [p01[0], p01[1], q - row_start];
                let inner = (0..3).all(|k| p[k] >= r[k] && p[k] + r[k] < shape[k]);
                if inner {
                    let qi = q as isize;
                    for &(d, v) in &flat {
                        // In bounds: |o_k| <= r_k on every axis.
                        if is_feature((qi + d) as usize) {
                            *res = v;
                            break;
                        }
                    }
                } else {
                    for (o, v) in &offsets.list {
                        let c0 = p[0] as isize + o[0];
                        let c1 = p[1] as isize + o[1];
                        let c2 = p[2] as isize + o[2];
                        if c0 < 0
                            || c1 < 0
                            || c2 < 0
                            || c0 >= n0 as isize
                            || c1 >= n1 as isize
                            || c2 >= n2 as isize
                        {
                            continue;
                        }
                        if is_feature((c0 * s0 + c1 * s1 + c2) as usize) {
                            *res = *v;
                            break;
                        }
                    }
                }
            }
        });
    out
}

/// [`edt_squared_at_with`] by the separable transform (sorted queries).
pub(crate) fn edt_squared_at_dense(
    is_feature: &(impl Fn(usize) -> bool + Sync),
    shape: [usize; 3],
    spacing: [f64; 3],
    queries: &[usize],
    cap: f64,
) -> Vec<f64> {
    let [n0, n1, n2] = shape;
    let slab = n1 * n2;
    if queries.is_empty() || n0 * slab == 0 {
        return vec![f64::INFINITY; queries.len()];
    }
    let counts = axis0_counts(is_feature, shape);
    // Query ranges per slab (queries are sorted).
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < queries.len() {
        let i0 = queries[start] / slab;
        let end = start + queries[start..].partition_point(|&q| q / slab == i0);
        ranges.push((i0, start, end));
        start = end;
    }
    let parts: Vec<Vec<f64>> = ranges
        .par_iter()
        .map_init(
            || Work::new(shape),
            |w, &(i0, a, b)| {
                let mut sl = std::mem::take(&mut w.slab);
                slab_pass1(
                    &counts[i0 * slab..(i0 + 1) * slab],
                    n1,
                    n2,
                    spacing,
                    cap,
                    &mut sl,
                    w,
                );
                let mut res = Vec::with_capacity(b - a);
                let qs = &queries[a..b];
                let mut j = 0;
                while j < qs.len() {
                    let li = (qs[j] - i0 * slab) / n2;
                    let line = &sl[li * n2..(li + 1) * n2];
                    let jend = j + qs[j..].partition_point(|&q| (q - i0 * slab) / n2 == li);
                    if n2 > 1 && cap.is_finite() {
                        let r = window(cap, spacing[2]);
                        for &q in &qs[j..jend] {
                            let p = (q - i0 * slab) % n2;
                            let mut best = f64::INFINITY;
                            for c in p.saturating_sub(r)..=(p + r).min(n2 - 1) {
                                let v = value(line, c, p, spacing[2]);
                                if v < best {
                                    best = v;
                                }
                            }
                            res.push(if best > cap { f64::INFINITY } else { best });
                        }
                    } else if n2 > 1 && line.iter().any(|v| v.is_finite()) {
                        build_envelope(line, spacing[2], &mut w.scratch);
                        let mut k = 0;
                        for &q in &qs[j..jend] {
                            let p = (q - i0 * slab) % n2;
                            let v = eval_envelope(line, p, spacing[2], &w.scratch, &mut k);
                            res.push(if v > cap { f64::INFINITY } else { v });
                        }
                    } else {
                        for &q in &qs[j..jend] {
                            res.push(line[(q - i0 * slab) % n2]);
                        }
                    }
                    j = jend;
                }
                w.slab = sl;
                res
            },
        )
        .collect();
    parts.concat()
}

struct Scratch {
    v: Vec<usize>,
    z: Vec<f64>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Scratch {
            v: Vec::with_capacity(n),
            z: Vec::with_capacity(n + 1),
        }
    }
}

/// Lower envelope of the parabolas `f[q] + ((p - q)·s)²` over the finite `f[q]`
/// (Felzenszwalb & Huttenlocher): sites in `scratch.v`, left breakpoints in `scratch.z`.
fn build_envelope(f: &[f64], s: f64, scratch: &mut Scratch) {
    let v = &mut scratch.v;
    let z = &mut scratch.z;
    v.clear();
    z.clear();
    for (q, &fq) in f.iter().enumerate() {
        if !fq.is_finite() {
            continue;
        }
        let xq = q as f64 * s;
        let hq = fq + xq * xq;
        loop {
            let Some(&vk) = v.last() else {
                v.push(q);
                z.push(f64::NEG_INFINITY);
                break;
            };
            let xv = vk as f64 * s;
            let inter = (hq - (f[vk] + xv * xv)) / (2.0 * (xq - xv));
            // z.last() is the left end of the parabola of `vk`; if the new one takes over before
            // that point, `vk` never wins anywhere.
            if let Some(&zk) = z.last()
                && inter <= zk
            {
                v.pop();
                z.pop();
                continue;
            }
            v.push(q);
            z.push(inter);
            break;
        }
    }
}

/// The envelope's value at `p` (positions must be visited in increasing order; `k` carries the
/// current segment). The breakpoints only choose *which* site wins; the value is recomputed as
/// `f[q] + ((p - q)·s)²` so that it is formed exactly as scipy forms it, and the neighbouring
/// sites are also tried so that rounding in a breakpoint cannot cost exactness.
#[inline]
fn eval_envelope(f: &[f64], p: usize, s: f64, scratch: &Scratch, k: &mut usize) -> f64 {
    let v = &scratch.v;
    let z = &scratch.z;
    if v.is_empty() {
        return f64::INFINITY;
    }
    let xp = p as f64 * s;
    while *k + 1 < v.len() && z[*k + 1] < xp {
        *k += 1;
    }
    let mut best = value(f, v[*k], p, s);
    if *k + 1 < v.len() {
        best = best.min(value(f, v[*k + 1], p, s));
    }
    if *k > 0 {
        best = best.min(value(f, v[*k - 1], p, s));
    }
    best
}

#[inline]
fn value(f: &[f64], q: usize, p: usize, s: f64) -> f64 {
    let d = (p as f64 - q as f64) * s;
    f[q] + d * d
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Brute force in scipy's order: ((d0² + d1²) + d2²).
    fn brute(features: &[u8], shape: [usize; 3], sp: [f64; 3]) -> Vec<f64> {
        let [n0, n1, n2] = shape;
        let feats: Vec<[usize; 3]> = (0..n0)
            .flat_map(|a| (0..n1).flat_map(move |b| (0..n2).map(move |c| [a, b, c])))
            .filter(|&[a, b, c]| features[(a * n1 + b) * n2 + c] != 0)
            .collect();
        let mut out = vec![f64::INFINITY; n0 * n1 * n2];
        for a in 0..n0 {
            for b in 0..n1 {
                for c in 0..n2 {
                    let mut best = f64::INFINITY;
                    for f in &feats {
                        let d0 = (f[0] as f64 - a as f64) * sp[0];
                        let d1 = (f[1] as f64 - b as f64) * sp[1];
                        let d2 = (f[2] as f64 - c as f64) * sp[2];
                        best = best.min((d0 * d0 + d1 * d1) + d2 * d2);
                    }
                    out[(a * n1 + b) * n2 + c] = best;
                }
            }
        }
        out
    }

    #[test]
    fn matches_brute_force_on_random_anisotropic_masks() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for trial in 0..40 {
            let shape = [
                rng.random_range(1..9),
                rng.random_range(1..9),
                rng.random_range(1..9),
            ];
            let sp = [
                rng.random_range(0.3..4.0),
                rng.random_range(0.3..4.0),
                rng.random_range(0.3..4.0),
            ];
            let density = [0.0, 0.02, 0.1, 0.5][trial % 4];
            let n = shape.iter().product::<usize>();
            let feats: Vec<u8> = (0..n).map(|_| u8::from(rng.random_bool(density))).collect();
            let got = squared_distance_transform(&feats, shape, sp).unwrap();
            let want = brute(&feats, shape, sp);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                if w.is_infinite() {
                    assert!(g.is_infinite(), "trial {trial} voxel {i}: {g} vs inf");
                } else {
                    // Same operations in the same order: bit-identical, not just close.
                    assert_eq!(
                        g, w,
                        "trial {trial} shape {shape:?} spacing {sp:?} voxel {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn query_version_matches_full_map() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for _ in 0..20 {
            let shape = [
                rng.random_range(1..12),
                rng.random_range(1..12),
                rng.random_range(1..12),
            ];
            let sp = [
                rng.random_range(0.3..4.0),
                rng.random_range(0.3..4.0),
                rng.random_range(0.3..4.0),
            ];
            let n = shape.iter().product::<usize>();
            let feats: Vec<u8> = (0..n).map(|_| u8::from(rng.random_bool(0.05))).collect();
            let queries: Vec<usize> = (0..n).filter(|_| rng.random_bool(0.3)).collect();
            let full = edt_squared(&feats, shape, sp);
            let want: Vec<f64> = queries.iter().map(|&q| full[q]).collect();
            let is_f = |i: usize| feats[i] != 0;
            for factor in [0, SPARSE_COST_FACTOR, usize::MAX] {
                let at = edt_squared_at_with(&is_f, shape, sp, &queries, f64::INFINITY, factor);
                assert_eq!(at, want, "shape {shape:?}");
                // Capped: exact up to the cap, infinity (never a smaller wrong value) above it.
                let cap = rng.random_range(0.5..20.0);
                let capped = edt_squared_at_with(&is_f, shape, sp, &queries, cap, factor);
                for (c, w) in capped.iter().zip(&want) {
                    if *w <= cap {
                        assert_eq!(c, w);
                    } else {
                        assert!(c.is_infinite() || c == w, "{c} vs {w} cap {cap}");
                    }
                }
            }
        }
    }

    /// The offset scan against the full transform: features and queries on the grid's border
    /// and corners, caps from below one voxel to far beyond the grid, anisotropic spacing, no
    /// features at all. Every value `<= cap` must be bit-identical, everything above infinity.
    #[test]
    fn sparse_scan_matches_full_map_with_borders_and_huge_caps() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for trial in 0..60 {
            let shape = [
                rng.random_range(1..10),
                rng.random_range(1..10),
                rng.random_range(1..10),
            ];
            let sp = [
                rng.random_range(0.2..3.0),
                rng.random_range(0.2..3.0),
                rng.random_range(0.2..3.0),
            ];
            let n = shape.iter().product::<usize>();
            let density = [0.0, 0.01, 0.05, 0.3][trial % 4];
            let mut feats: Vec<u8> = (0..n).map(|_| u8::from(rng.random_bool(density))).collect();
            if trial % 8 == 1 {
                // Only the two opposite corners of the grid.
                feats.fill(0);
                feats[0] = 1;
                feats[n - 1] = 1;
            }
            // Every voxel; backwards on odd trials (the scan must not rely on sorted queries).
            let mut queries: Vec<usize> = (0..n).collect();
            if trial % 2 == 1 {
                queries.reverse();
            }
            let full = edt_squared(&feats, shape, sp);
            // Exactly a distance that occurs (ties with the cap), tiny, moderate, beyond the grid.
            let finite: Vec<f64> = full.iter().copied().filter(|v| v.is_finite()).collect();
            let tie = finite
                .get(trial % finite.len().max(1))
                .copied()
                .unwrap_or(1.0);
            for cap in [tie, 0.01, rng.random_range(0.5..30.0), 1e6] {
                let offsets = Offsets::within(cap, shape, sp, usize::MAX).unwrap();
                let got = sparse_squared_at(&|i| feats[i] != 0, shape, &offsets, &queries);
                for (g, &q) in got.iter().zip(&queries) {
                    let w = &full[q];
                    if *w <= cap {
                        assert_eq!(g, w, "trial {trial} {shape:?} {sp:?} cap {cap} voxel {q}");
                    } else {
                        assert!(
                            g.is_infinite(),
                            "trial {trial} cap {cap} voxel {q}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn offsets_are_sorted_bounded_and_refused_when_too_many() {
        let sp = [0.8, 0.8, 2.5];
        let cap = 4.0;
        let o = Offsets::within(cap, [100, 100, 100], sp, usize::MAX).unwrap();
        assert!(o.list.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(o.list.iter().all(|(_, v)| *v <= cap));
        // |o0|, |o1| <= 2 (0.8·2 = 1.6 <= 2 < 2.4), o2 = 0: the disc o0² + o1² <= 6.25.
        assert_eq!(o.list.len(), 21);
        assert_eq!(o.list[0], ([0, 0, 0], 0.0));
        // The reach never exceeds the grid: on a 1×1×1 grid only the origin is left.
        let one = Offsets::within(1e9, [1, 1, 1], sp, usize::MAX).unwrap();
        assert_eq!(one.list.len(), 1);
        assert!(Offsets::within(cap, [100, 100, 100], sp, 20).is_none());
        assert!(Offsets::within(f64::INFINITY, [100, 100, 100], sp, usize::MAX).is_none());
    }

    #[test]
    fn single_feature_gives_euclidean_distance() {
        let shape = [3, 4, 5];
        let mut f = vec![0u8; 60];
        f[0] = 1;
        let d = distance_transform(&f, shape, [2.0, 1.0, 0.5]).unwrap();
        let last = d[59];
        let want = ((2.0f64 * 2.0).powi(2) + 3.0f64.powi(2) + 2.0f64.powi(2)).sqrt();
        assert!((last - want).abs() < 1e-12, "{last} vs {want}");
    }

    #[test]
    fn rejects_wrong_length_and_bad_spacing() {
        assert!(squared_distance_transform(&[0u8; 5], [1, 2, 3], [1.0; 3]).is_err());
        assert!(squared_distance_transform(&[0u8; 6], [1, 2, 3], [1.0, 0.0, 1.0]).is_err());
    }
}
