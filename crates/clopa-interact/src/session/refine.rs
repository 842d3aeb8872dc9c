//! AutoZoom's helpers: the border-change test, the opened difference map and the greedy set
//! cover of refinement boxes (nnInteractive 2.6.0 `_detect_change_at_border`,
//! `_compute_local_diff_map`, `utils/bboxes.py generate_bounding_boxes`).

use rayon::prelude::*;

use crate::interactions::round_half_even;
use crate::normalize::nonzero_bbox;

/// A half-open box `[[x0, x1], [y0, y1], [z0, z1]]` in image voxels (may leave the image).
pub type Box3 = [[i64; 2]; 3];

/// When a new prediction's border differs enough from the previous one to zoom out further.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BorderThresholds {
    /// A face differing in more than this many voxels triggers (1500).
    pub abs_voxels: usize,
    /// ... or in more than this many voxels (100) ...
    pub min_voxels: usize,
    /// ... with `max(n_prev, n_new) / max(min(n_prev, n_new), 1e-5) - 1` above this (0.2).
    pub rel_change: f64,
}

impl Default for BorderThresholds {
    fn default() -> Self {
        BorderThresholds {
            abs_voxels: 1500,
            min_voxels: 100,
            rel_change: 0.2,
        }
    }
}

/// True when any of the six faces of `pred` (0/1, `patch`) differs from `prev` (the previous
/// prediction resampled to the patch) by the thresholds.
pub fn border_changed(pred: &[u8], prev: &[f32], patch: [usize; 3], t: &BorderThresholds) -> bool {
    let idx = |p: [usize; 3]| (p[0] * patch[1] + p[1]) * patch[2] + p[2];
    for dim in 0..3 {
        let [a, b] = match dim {
            0 => [1, 2],
            1 => [0, 2],
            _ => [0, 1],
        };
        for face in [0, patch[dim] - 1] {
            let (mut n_prev, mut n_new, mut n_diff) = (0usize, 0usize, 0usize);
            for i in 0..patch[a] {
                for j in 0..patch[b] {
                    let mut p = [0; 3];
                    p[dim] = face;
                    p[a] = i;
                    p[b] = j;
                    let k = idx(p);
                    let (old, new) = (prev[k], pred[k] as f32);
                    n_prev += (old != 0.0) as usize;
                    n_new += (new != 0.0) as usize;
                    n_diff += (old != new) as usize;
                }
            }
            let (hi, lo) = (n_prev.max(n_new) as f64, n_prev.min(n_new) as f64);
            let rel = hi / lo.max(1e-5) - 1.0;
            if n_diff > t.abs_voxels || (n_diff > t.min_voxels && rel > t.rel_change) {
                return true;
            }
        }
    }
    false
}

/// Separable cube min- or max-pool of side `2r + 1` with a replicated border (the window is
/// clipped to the volume), in place.
pub fn pool(data: &mut [u8], shape: [usize; 3], r: usize, min: bool) {
    for axis in 0..3 {
        let n = shape[axis];
        let inner: usize = shape[axis + 1..].iter().product();
        let outer: usize = shape[..axis].iter().product();
        let mut line = vec![0u8; n];
        for o in 0..outer {
            for i in 0..inner {
                let at = |k: usize| (o * n + k) * inner + i;
                for (k, l) in line.iter_mut().enumerate() {
                    *l = data[at(k)];
                }
                for k in 0..n {
                    let w = &line[k.saturating_sub(r)..(k + r + 1).min(n)];
                    data[at(k)] = if min {
                        *w.iter().min().unwrap_or(&0)
                    } else {
                        *w.iter().max().unwrap_or(&0)
                    };
                }
            }
        }
    }
}

/// The part of `b` inside an image of `shape`, `None` when empty.
pub fn clip_box(b: Box3, shape: [usize; 3]) -> Option<[[usize; 2]; 3]> {
    let c = [0, 1, 2].map(|d| {
        [
            b[d][0].clamp(0, shape[d] as i64) as usize,
            b[d][1].clamp(0, shape[d] as i64) as usize,
        ]
    });
    c.iter().all(|[a, e]| e > a).then_some(c)
}

/// Number of non-zero voxels of `data` (shape `shape`) inside the half-open `[lo, hi)`.
fn count_in(data: &[u8], shape: [usize; 3], lo: [usize; 3], hi: [usize; 3]) -> usize {
    let mut n = 0;
    for x in lo[0]..hi[0] {
        for y in lo[1]..hi[1] {
            let row = (x * shape[1] + y) * shape[2];
            n += data[row + lo[2]..row + hi[2]]
                .iter()
                .filter(|&&v| v != 0)
                .count();
        }
    }
    n
}

fn clear_in(data: &mut [u8], shape: [usize; 3], lo: [usize; 3], hi: [usize; 3]) {
    for x in lo[0]..hi[0] {
        for y in lo[1]..hi[1] {
            let row = (x * shape[1] + y) * shape[2];
            data[row + lo[2]..row + hi[2]].fill(0);
        }
    }
}

/// Geometry of the boxes: size, half size, end offset and the uncovered margin.
#[derive(Debug, Clone, Copy)]
struct BoxGeom {
    half: [i64; 3],
    end: [i64; 3],
    margin: [i64; 3],
}

impl BoxGeom {
    fn new(size: [usize; 3], margin: [usize; 3]) -> Self {
        let half = size.map(|s| (s / 2) as i64);
        BoxGeom {
            half,
            end: [0, 1, 2].map(|d| size[d] as i64 - half[d]),
            margin: margin.map(|m| m as i64),
        }
    }

    /// The box around centre `c`.
    fn bbox(&self, c: [usize; 3]) -> Box3 {
        [0, 1, 2].map(|d| [c[d] as i64 - self.half[d], c[d] as i64 + self.end[d]])
    }

    /// The part of the box around `c` that counts as covered (box shrunk by the margin, clipped).
    fn covered(&self, c: [usize; 3], shape: [usize; 3]) -> ([usize; 3], [usize; 3]) {
        let lo = [0, 1, 2].map(|d| (c[d] as i64 - self.half[d] + self.margin[d]).max(0) as usize);
        let hi = [0, 1, 2].map(|d| {
            (c[d] as i64 + self.end[d] - self.margin[d]).clamp(0, shape[d] as i64) as usize
        });
        (lo, hi)
    }
}

/// Boxes of `size` covering the non-zero voxels of `mask` (shape `shape`): nnInteractive's
/// greedy set cover with `stride="auto"` (a quarter of the object's extent per axis), each box
/// counting as covering only its interior `margin` voxels away from its faces; when no grid
/// centre lies on the mask the stride is halved (up to `max_depth` times).
///
/// The reference falls back to 25 (10 for leftovers) *random* mask voxels as candidate centres;
/// we take evenly spaced ones in C order instead so that a simulation is reproducible.
pub fn generate_bounding_boxes(
    mask: &[u8],
    shape: [usize; 3],
    size: [usize; 3],
    margin: [usize; 3],
    max_depth: usize,
) -> Vec<Box3> {
    cover(mask, shape, BoxGeom::new(size, margin), None, max_depth, 0)
}

fn cover(
    mask: &[u8],
    shape: [usize; 3],
    g: BoxGeom,
    stride: Option<[usize; 3]>,
    max_depth: usize,
    depth: usize,
) -> Vec<Box3> {
    let Some(bb) = nonzero_bbox(mask, shape) else {
        return Vec::new();
    };
    if depth > max_depth {
        return sample_cover(mask.to_vec(), shape, g, 25);
    }
    // inclusive [min, max] per axis
    let (mn, mx) = (bb.map(|b| b[0]), bb.map(|b| b[1] - 1));
    let stride = stride.unwrap_or_else(|| {
        [0, 1, 2].map(|d| round_half_even((mx[d] - mn[d]) as f64 / 4.0).max(1) as usize)
    });
    let idx = |c: [usize; 3]| (c[0] * shape[1] + c[1]) * shape[2] + c[2];
    let mut centers = Vec::new();
    for x in (mn[0]..=mx[0]).step_by(stride[0]) {
        for y in (mn[1]..=mx[1]).step_by(stride[1]) {
            for z in (mn[2]..=mx[2]).step_by(stride[2]) {
                if mask[idx([x, y, z])] != 0 {
                    centers.push([x, y, z]);
                }
            }
        }
    }
    if centers.is_empty() {
        return cover(
            mask,
            shape,
            g,
            Some(stride.map(|s| (s / 2).max(1))),
            max_depth,
            depth + 1,
        );
    }
    let mut uncovered = mask.to_vec();
    let mut boxes = Vec::new();
    while !centers.is_empty() && uncovered.iter().any(|&v| v != 0) {
        let counts: Vec<usize> = centers
            .par_iter()
            .map(|&c| {
                let (lo, hi) = g.covered(c, shape);
                count_in(&uncovered, shape, lo, hi)
            })
            .collect();
        // first maximum wins, as in the reference
        let mut best = None;
        let mut best_n = 0;
        for (i, &n) in counts.iter().enumerate() {
            if n > best_n {
                best_n = n;
                best = Some(i);
            }
        }
        let Some(b) = best else { break };
        let c = centers[b];
        boxes.push(g.bbox(c));
        let (lo, hi) = g.covered(c, shape);
        clear_in(&mut uncovered, shape, lo, hi);
        centers.retain(|&c| uncovered[idx(c)] != 0);
    }
    if uncovered.iter().any(|&v| v != 0) {
        boxes.extend(sample_cover(uncovered, shape, g, 10));
    }
    boxes
}

/// The reference's `random_sampling_fallback` with `n` evenly spaced candidates instead of
/// random ones.
fn sample_cover(mut mask: Vec<u8>, shape: [usize; 3], g: BoxGeom, n: usize) -> Vec<Box3> {
    let coords = |i: usize| {
        [
            i / (shape[1] * shape[2]),
            (i / shape[2]) % shape[1],
            i % shape[2],
        ]
    };
    let mut boxes = Vec::new();
    loop {
        let on: Vec<usize> = mask
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0)
            .map(|(i, _)| i)
            .collect();
        if on.is_empty() {
            return boxes;
        }
        let mut best: Option<([usize; 3], usize)> = None;
        for k in 0..n {
            let c = coords(on[k * on.len() / n]);
            let (lo, hi) = g.covered(c, shape);
            let cov = count_in(&mask, shape, lo, hi);
            if cov > best.map_or(0, |b| b.1) {
                best = Some((c, cov));
            }
        }
        // a margin of at least half the box would cover nothing: stop rather than loop forever
        let Some((c, _)) = best else { return boxes };
        boxes.push(g.bbox(c));
        let (lo, hi) = g.covered(c, shape);
        clear_in(&mut mask, shape, lo, hi);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn border_thresholds() {
        let patch = [4, 12, 12];
        let prev = vec![0f32; 4 * 144];
        let mut pred = vec![0u8; 4 * 144];
        let t = BorderThresholds::default();
        assert!(!border_changed(&pred, &prev, patch, &t));
        // 101 new voxels on face x = 0 from nothing: relative change is huge
        for v in pred.iter_mut().take(101) {
            *v = 1;
        }
        assert!(border_changed(&pred, &prev, patch, &t));
        // 100 is not more than 100; the x = 0 face interior voxels are also on y/z faces
        // only partially, so use thresholds that isolate the rule
        let strict = BorderThresholds {
            abs_voxels: 1500,
            min_voxels: 101,
            rel_change: 0.2,
        };
        assert!(!border_changed(&pred, &prev, patch, &strict));
        let abs = BorderThresholds {
            abs_voxels: 100,
            min_voxels: 1000,
            rel_change: 0.2,
        };
        assert!(border_changed(&pred, &prev, patch, &abs));
        // interior changes never count
        let mut inner = vec![0u8; 4 * 144];
        inner[(12 + 5) * 12 + 5] = 1; // (x, y, z) = (1, 5, 5)
        assert!(!border_changed(
            &inner,
            &prev,
            patch,
            &BorderThresholds {
                abs_voxels: 0,
                min_voxels: 0,
                rel_change: 0.0
            }
        ));
    }

    #[test]
    fn small_relative_change_does_not_trigger() {
        let patch = [2, 20, 20];
        let prev: Vec<f32> = vec![1.0; 800];
        let mut pred = vec![1u8; 800];
        // 120 voxels of 400 on face x = 0 lost: rel = 400/280 - 1 = 0.43 > 0.2 -> triggers
        for v in pred.iter_mut().take(120) {
            *v = 0;
        }
        assert!(border_changed(
            &pred,
            &prev,
            patch,
            &BorderThresholds::default()
        ));
        // 60 lost: below min_voxels on x faces; the y/z faces lose at most 60 too
        let mut pred = vec![1u8; 800];
        for v in pred.iter_mut().take(60) {
            *v = 0;
        }
        assert!(!border_changed(
            &pred,
            &prev,
            patch,
            &BorderThresholds::default()
        ));
    }

    #[test]
    fn pool_opening_removes_specks_and_keeps_blocks() {
        let shape = [12, 12, 12];
        let mut d = vec![0u8; 1728];
        let idx = |x: usize, y: usize, z: usize| (x * 12 + y) * 12 + z;
        d[idx(1, 1, 1)] = 1;
        for x in 4..10 {
            for y in 4..10 {
                for z in 4..10 {
                    d[idx(x, y, z)] = 1;
                }
            }
        }
        let before = d.clone();
        pool(&mut d, shape, 2, true);
        pool(&mut d, shape, 2, false);
        assert_eq!(d[idx(1, 1, 1)], 0);
        assert_eq!(
            d,
            before
                .iter()
                .enumerate()
                .map(|(i, &v)| if i == idx(1, 1, 1) { 0 } else { v })
                .collect::<Vec<_>>()
        );
        // replicate border: a block touching the border survives opening
        let mut e = vec![0u8; 1728];
        for x in 0..3 {
            for y in 0..12 {
                for z in 0..12 {
                    e[idx(x, y, z)] = 1;
                }
            }
        }
        let orig = e.clone();
        pool(&mut e, shape, 2, true);
        pool(&mut e, shape, 2, false);
        assert_eq!(e, orig);
    }

    #[test]
    fn boxes_cover_every_mask_voxel_within_their_margin() {
        let shape = [40, 30, 20];
        let mut m = vec![0u8; 40 * 30 * 20];
        let idx = |x: usize, y: usize, z: usize| (x * 30 + y) * 20 + z;
        for x in 3..37 {
            for y in 2..28 {
                for z in 5..15 {
                    if (x + 2 * y + z) % 7 != 0 {
                        m[idx(x, y, z)] = 1;
                    }
                }
            }
        }
        m[idx(39, 29, 19)] = 1; // a far-away voxel
        let size = [16, 16, 16];
        let margin = [2, 2, 2];
        let boxes = generate_bounding_boxes(&m, shape, size, margin, 3);
        assert!(!boxes.is_empty());
        for b in &boxes {
            for [lo, hi] in b {
                assert_eq!(hi - lo, 16);
            }
        }
        for (i, &v) in m.iter().enumerate() {
            if v == 0 {
                continue;
            }
            let p = [i / 600, (i / 20) % 30, i % 20].map(|c| c as i64);
            assert!(
                boxes
                    .iter()
                    .any(|b| (0..3).all(|d| p[d] >= b[d][0] + 2 && p[d] < b[d][1] - 2)),
                "voxel {p:?} uncovered"
            );
        }
        assert_eq!(
            boxes,
            generate_bounding_boxes(&m, shape, size, margin, 3),
            "deterministic"
        );
        assert!(generate_bounding_boxes(&[0u8; 24], [2, 3, 4], size, margin, 3).is_empty());
    }

    #[test]
    fn greedy_picks_the_first_best_center() {
        // a 6^3 block in a 30^3 volume, boxes of 8 with margin 1 cover 6^3: one box suffices
        let shape = [30, 30, 30];
        let mut m = vec![0u8; 27000];
        for x in 10..16 {
            for y in 10..16 {
                for z in 10..16 {
                    m[(x * 30 + y) * 30 + z] = 1;
                }
            }
        }
        let boxes = generate_bounding_boxes(&m, shape, [8, 8, 8], [1, 1, 1], 3);
        // stride round(5 / 4) = 1; centre 13 covers [13 - 4 + 1, 13 + 4 - 1) = [10, 16)
        assert_eq!(boxes, vec![[[9, 17], [9, 17], [9, 17]]]);
    }

    #[test]
    fn clip_box_clips_and_rejects_outside() {
        assert_eq!(
            clip_box([[-3, 4], [2, 50], [0, 1]], [10, 10, 10]),
            Some([[0, 4], [2, 10], [0, 1]])
        );
        assert_eq!(clip_box([[10, 14], [2, 5], [0, 1]], [10, 10, 10]), None);
    }
}
