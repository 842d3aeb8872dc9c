//! Separable resampling kernels with PyTorch's index conventions: `F.interpolate(mode='area')`
//! (adaptive average pooling), `mode='trilinear'` (align_corners=False), legacy `mode='nearest'`,
//! and nnInteractive's cube max-pool with a replicated border.
//!
//! Everything works on a [`Region`]: the values of a box inside a conceptually zero-padded volume,
//! so a 4x zoomed-out 768^3 window around a 512x512x100 image never has to be materialised.

use rayon::prelude::*;

use crate::interactions::round_half_even;

/// Values inside the box `[lo, lo + shape)` of a volume of size `full`; zero everywhere else.
#[derive(Debug, Clone, PartialEq)]
pub struct Region<T> {
    /// Size of the whole (padded) volume.
    pub full: [usize; 3],
    /// Where the stored box starts.
    pub lo: [usize; 3],
    /// Size of the stored box.
    pub shape: [usize; 3],
    /// The box's values, C-contiguous.
    pub data: Vec<T>,
}

impl<T: Copy + Default> Region<T> {
    /// The whole volume as a dense array (zeros outside the box).
    pub fn to_dense(&self) -> Vec<T> {
        let [_, f1, f2] = self.full;
        let mut out = vec![T::default(); self.full.iter().product()];
        for x in 0..self.shape[0] {
            for y in 0..self.shape[1] {
                let src = (x * self.shape[1] + y) * self.shape[2];
                let dst = ((x + self.lo[0]) * f1 + y + self.lo[1]) * f2 + self.lo[2];
                out[dst..dst + self.shape[2]].copy_from_slice(&self.data[src..src + self.shape[2]]);
            }
        }
        out
    }
}

/// One output position of a 1-D operator: its taps (input index *inside the stored box*,
/// weight) and the value it starts from.
#[derive(Debug, Clone)]
struct Out {
    taps: Vec<(usize, f64)>,
    init: f64,
}

/// A 1-D operator along one axis: output box start/size within the output volume's axis length.
#[derive(Debug, Clone)]
struct AxisOp {
    lo: usize,
    full: usize,
    outs: Vec<Out>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Combine {
    Sum,
    Max,
}

/// Apply `op` along `axis`: f64 accumulation, `conv` to the stored type.
fn apply_axis<T, U>(
    src: &Region<T>,
    axis: usize,
    op: &AxisOp,
    mode: Combine,
    conv: fn(f64) -> U,
) -> Region<U>
where
    T: Copy + Into<f64> + Sync,
    U: Copy + Default + Send + Sync,
{
    let mut shape = src.shape;
    shape[axis] = op.outs.len();
    let mut lo = src.lo;
    lo[axis] = op.lo;
    let mut full = src.full;
    full[axis] = op.full;
    let inner: usize = src.shape[axis + 1..].iter().product();
    let outer: usize = src.shape[..axis].iter().product();
    let (in_len, out_len) = (src.shape[axis], shape[axis]);
    let mut data = vec![U::default(); outer * out_len * inner];
    if data.is_empty() {
        return Region {
            full,
            lo,
            shape,
            data,
        };
    }
    // One output row (`inner` values) from the rows of one outer block of the source.
    let row = |block: &[T], out: &Out, acc: &mut [f64], dst: &mut [U]| {
        acc.fill(out.init);
        for &(i, w) in &out.taps {
            let s = &block[i * inner..(i + 1) * inner];
            match mode {
                Combine::Sum => acc.iter_mut().zip(s).for_each(|(a, &v)| *a += w * v.into()),
                Combine::Max => acc
                    .iter_mut()
                    .zip(s)
                    .for_each(|(a, &v)| *a = a.max(v.into())),
            }
        }
        dst.iter_mut()
            .zip(acc.iter())
            .for_each(|(d, &a)| *d = conv(a));
    };
    if outer == 1 {
        // leading axis: parallel over output planes
        data.par_chunks_mut(inner)
            .zip(op.outs.par_iter())
            .for_each(|(dst, out)| {
                let mut acc = vec![0.0; inner];
                row(&src.data, out, &mut acc, dst);
            });
    } else {
        data.par_chunks_mut(out_len * inner)
            .enumerate()
            .for_each(|(b, dst)| {
                let block = &src.data[b * in_len * inner..(b + 1) * in_len * inner];
                let mut acc = vec![0.0; inner];
                for (o, out) in op.outs.iter().enumerate() {
                    row(block, out, &mut acc, &mut dst[o * inner..(o + 1) * inner]);
                }
            });
    }
    Region {
        full,
        lo,
        shape,
        data,
    }
}

/// Keep the taps that hit the stored box `[lo, lo + len)`, shifted to box indices.
fn local(taps: impl Iterator<Item = (usize, f64)>, lo: usize, len: usize) -> Vec<(usize, f64)> {
    taps.filter(|&(i, _)| i >= lo && i < lo + len)
        .map(|(i, w)| (i - lo, w))
        .collect()
}

/// PyTorch's adaptive-average-pool window of output `o`: `[floor(o*in/out), ceil((o+1)*in/out))`.
pub fn area_window(o: usize, in_len: usize, out_len: usize) -> (usize, usize) {
    let start = (o / out_len) * in_len + ((o % out_len) * in_len) / out_len;
    let end = 1 + ((o + 1) * in_len - 1) / out_len;
    (start, end)
}

/// Source index and weights of linear interpolation (align_corners=False), computed in f32 as
/// PyTorch's CPU kernel does: `src = max(0, in/out * (o + 0.5) - 0.5)`, `i0 = min(floor(src),
/// in - 1)`, `i1 = i0 + (i0 < in - 1)`, `l1 = clamp(src - i0, 0, 1)`, `l0 = 1 - l1`.
pub fn linear_source(o: usize, in_len: usize, out_len: usize) -> (usize, usize, f32, f32) {
    if in_len == out_len {
        return (o, o, 1.0, 0.0);
    }
    let scale = in_len as f32 / out_len as f32;
    let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(in_len - 1);
    let l1 = (src - i0 as f32).clamp(0.0, 1.0);
    let i1 = if i0 < in_len - 1 { i0 + 1 } else { i0 };
    (i0, i1, 1.0 - l1, l1)
}

/// PyTorch's legacy `nearest` source index: `min(floor(o * (in/out as f32)), in - 1)`.
pub fn nearest_source(o: usize, in_len: usize, out_len: usize) -> usize {
    if in_len == out_len {
        o
    } else if out_len == 2 * in_len {
        o >> 1
    } else {
        let scale = in_len as f32 / out_len as f32;
        ((o as f32 * scale).floor() as usize).min(in_len - 1)
    }
}

/// nnInteractive's `round_to_nearest_odd` (for a positive `x`).
pub fn round_to_nearest_odd(x: f64) -> usize {
    let (cl, fl) = (x.ceil() as i64, x.floor() as i64);
    let v = if cl % 2 == 1 {
        cl
    } else if fl % 2 == 1 {
        fl
    } else {
        round_half_even(x) + 1
    };
    v.max(1) as usize
}

/// Cube max-pool of side `2r + 1`, stride 1, "same" size with a replicated border (nnInteractive's
/// `iterative_3x3_same_padding_pool3d`), of the zero-padded volume the region lives in. The
/// result is stored over the box grown by `r` (clipped to the volume); it is exact and separable.
pub fn max_pool(src: &Region<f32>, r: usize) -> Region<f32> {
    if r == 0 {
        return src.clone();
    }
    let mut cur = src.clone();
    for axis in 0..3 {
        let (lo, len, full) = (cur.lo[axis], cur.shape[axis], cur.full[axis]);
        if len == 0 {
            return cur;
        }
        let new_lo = lo.saturating_sub(r);
        let new_hi = (lo + len + r).min(full);
        let outs = (new_lo..new_hi)
            .map(|p| {
                // replicate border == window clipped to the volume
                let (wlo, whi) = (p.saturating_sub(r), (p + r).min(full - 1));
                let inside = wlo >= lo && whi < lo + len;
                Out {
                    taps: local((wlo..=whi).map(|i| (i, 1.0)), lo, len),
                    init: if inside { f64::NEG_INFINITY } else { 0.0 },
                }
            })
            .collect();
        let op = AxisOp {
            lo: new_lo,
            full,
            outs,
        };
        cur = apply_axis(&cur, axis, &op, Combine::Max, |v| v as f32);
    }
    cur
}

/// `F.interpolate(mode='area')` of the padded volume to `out`: exact (f64) window sums per
/// output voxel, with the window sizes `[kd, kh, kw]` along the three axes. Returns the dense
/// sums and, per axis, the window sizes (what a float kernel divides by).
pub fn area_sums<T: Copy + Into<f64> + Sync>(
    src: &Region<T>,
    out: [usize; 3],
) -> (Vec<f64>, [Vec<usize>; 3]) {
    let counts = [0, 1, 2].map(|d| {
        (0..out[d])
            .map(|o| {
                let (s, e) = area_window(o, src.full[d], out[d]);
                e - s
            })
            .collect::<Vec<_>>()
    });
    let op = |d: usize, lo: usize, len: usize| AxisOp {
        lo: 0,
        full: out[d],
        outs: (0..out[d])
            .map(|o| {
                let (s, e) = area_window(o, src.full[d], out[d]);
                Out {
                    taps: local((s..e).map(|i| (i, 1.0)), lo, len),
                    init: 0.0,
                }
            })
            .collect(),
    };
    let a = apply_axis(src, 0, &op(0, src.lo[0], src.shape[0]), Combine::Sum, |v| v);
    let b = apply_axis(&a, 1, &op(1, a.lo[1], a.shape[1]), Combine::Sum, |v| v);
    let c = apply_axis(&b, 2, &op(2, b.lo[2], b.shape[2]), Combine::Sum, |v| v);
    (c.data, counts)
}

/// `F.interpolate(mode='area')` of a **half** tensor as PyTorch's CPU kernel computes it
/// (`adaptive_avg_pool3d_out_frame` with `scalar_t = Half`): the window is summed in f16, one
/// rounding per addition, in x, y, z order (z innermost), then divided by `kd`, `kh`, `kw` in
/// turn, each quotient rounded to f16. `src` must hold f16-representable values. Windows without
/// a non-zero value are found with exact separable counts and skipped, so the cost is about
/// proportional to the non-zero voxels.
pub fn area_f16(src: &Region<f32>, out: [usize; 3]) -> Vec<half::f16> {
    use half::f16;
    let indicator = Region {
        full: src.full,
        lo: src.lo,
        shape: src.shape,
        data: src.data.iter().map(|&v| (v != 0.0) as u8).collect(),
    };
    let (counts, _) = area_sums(&indicator, out);
    let win = [0, 1, 2].map(|d| {
        (0..out[d])
            .map(|o| area_window(o, src.full[d], out[d]))
            .collect::<Vec<_>>()
    });
    let [_, s1, s2] = src.shape;
    let plane = out[1] * out[2];
    let mut res = vec![f16::ZERO; out.iter().product()];
    res.par_chunks_mut(plane).enumerate().for_each(|(x, dst)| {
        let (sx, ex) = win[0][x];
        for (yz, d) in dst.iter_mut().enumerate() {
            if counts[x * plane + yz] == 0.0 {
                continue;
            }
            let (y, z) = (yz / out[2], yz % out[2]);
            let ((sy, ey), (sz, ez)) = (win[1][y], win[2][z]);
            let clip =
                |s: usize, e: usize, d: usize| (s.max(src.lo[d]), e.min(src.lo[d] + src.shape[d]));
            let ((ax, bx), (ay, by), (az, bz)) =
                (clip(sx, ex, 0), clip(sy, ey, 1), clip(sz, ez, 2));
            let mut sum = f16::ZERO;
            for i in ax..bx {
                for j in ay..by {
                    let row = ((i - src.lo[0]) * s1 + j - src.lo[1]) * s2;
                    for &v in &src.data[row + az - src.lo[2]..row + bz - src.lo[2]] {
                        // zeros outside the stored box leave an f16 sum unchanged
                        sum = f16::from_f32(sum.to_f32() + v);
                    }
                }
            }
            let mut r = sum;
            for k in [ex - sx, ey - sy, ez - sz] {
                r = f16::from_f32(r.to_f32() / k as f32);
            }
            *d = r;
        }
    });
    res
}

/// `F.interpolate(mode='trilinear', align_corners=False)` of the padded volume to `out`
/// (separable, f64 accumulation of the f32 weights).
pub fn trilinear<T: Copy + Into<f64> + Sync>(src: &Region<T>, out: [usize; 3]) -> Vec<f32> {
    let op = |d: usize, lo: usize, len: usize| AxisOp {
        lo: 0,
        full: out[d],
        outs: (0..out[d])
            .map(|o| {
                let (i0, i1, l0, l1) = linear_source(o, src.full[d], out[d]);
                Out {
                    taps: local([(i0, l0 as f64), (i1, l1 as f64)].into_iter(), lo, len),
                    init: 0.0,
                }
            })
            .collect(),
    };
    let a = apply_axis(src, 0, &op(0, src.lo[0], src.shape[0]), Combine::Sum, |v| v);
    let b = apply_axis(&a, 1, &op(1, a.lo[1], a.shape[1]), Combine::Sum, |v| v);
    let c = apply_axis(&b, 2, &op(2, b.lo[2], b.shape[2]), Combine::Sum, |v| {
        v as f32
    });
    c.data
}

/// A box of a C-order image volume seen through a zero-padded window: what [`Region`] describes
/// after copying, without the copy. `part` (image coordinates, clipped to the image) holds the
/// values that may be non-zero; window coordinate `w` is image coordinate `w + origin`.
#[derive(Debug, Clone, Copy)]
pub struct VolumeView<'a, T> {
    /// The whole image, C order.
    pub data: &'a [T],
    /// Its shape.
    pub shape: [usize; 3],
    /// The in-image box that is read (zero outside it).
    pub part: [[usize; 2]; 3],
    /// Image coordinate of the window's first voxel.
    pub origin: [i64; 3],
    /// Size of the (padded) window.
    pub full: [usize; 3],
}

impl<T> VolumeView<'_, T> {
    /// The window-coordinate range `[s, e)` along `d`, clipped to `part`, in image coordinates.
    fn clip(&self, d: usize, s: usize, e: usize) -> (usize, usize) {
        let lo = (s as i64 + self.origin[d]).max(self.part[d][0] as i64);
        let hi = (e as i64 + self.origin[d]).min(self.part[d][1] as i64);
        if hi > lo {
            (lo as usize, hi as usize)
        } else {
            (0, 0)
        }
    }
}

/// [`area_f16`] of the window `view` (f16 values, so no copy to f32 is needed), bit for bit:
/// the same f16 accumulation in x, y, z order; zeros, which leave an f16 sum unchanged, are
/// skipped instead of counted first. Parallel over output planes.
pub fn area_f16_view(view: &VolumeView<'_, half::f16>, out: [usize; 3]) -> Vec<half::f16> {
    use half::f16;
    // per axis and output index: the clipped source range and the divisor
    let win = [0, 1, 2].map(|d| {
        (0..out[d])
            .map(|o| {
                let (s, e) = area_window(o, view.full[d], out[d]);
                (view.clip(d, s, e), e - s)
            })
            .collect::<Vec<_>>()
    });
    let [_, s1, s2] = view.shape;
    let [px, py, pz] = view.part;
    // which source rows (x, y) of the part hold a non-zero value: whole output rows whose
    // windows meet none of them are skipped (prev_seg is mostly zero over its bounds)
    let ny = py[1] - py[0];
    let mut row_nz = vec![false; (px[1] - px[0]) * ny];
    row_nz
        .par_chunks_mut(ny.max(1))
        .enumerate()
        .for_each(|(i, flags)| {
            for (j, f) in flags.iter_mut().enumerate() {
                let row = ((px[0] + i) * s1 + py[0] + j) * s2;
                *f = view.data[row + pz[0]..row + pz[1]]
                    .iter()
                    .any(|v| v.to_bits() & 0x7fff != 0);
            }
        });
    let plane = out[1] * out[2];
    let mut res = vec![f16::ZERO; out.iter().product()];
    res.par_chunks_mut(plane).enumerate().for_each(|(x, dst)| {
        let ((ax, bx), kx) = win[0][x];
        if bx == ax {
            return;
        }
        for (y, row_out) in dst.chunks_mut(out[2]).enumerate() {
            let ((ay, by), ky) = win[1][y];
            if by == ay || !(ax..bx).any(|i| (ay..by).any(|j| row_nz[(i - px[0]) * ny + j - py[0]]))
            {
                continue;
            }
            for (z, d) in row_out.iter_mut().enumerate() {
                let ((az, bz), kz) = win[2][z];
                let mut sum = f16::ZERO;
                let mut any = false;
                for i in ax..bx {
                    for j in ay..by {
                        let row = (i * s1 + j) * s2;
                        for &v in &view.data[row + az..row + bz] {
                            if v.to_bits() & 0x7fff != 0 {
                                sum = f16::from_f32(sum.to_f32() + v.to_f32());
                                any = true;
                            }
                        }
                    }
                }
                if any {
                    let mut r = sum;
                    for k in [kx, ky, kz] {
                        r = f16::from_f32(r.to_f32() / k as f32);
                    }
                    *d = r;
                }
            }
        }
    });
    res
}

/// [`trilinear`] of the window `view` to `out`, bit for bit (the same taps, the same f64
/// accumulation, axis 0 then 1 then 2), computed one output plane at a time in parallel, so
/// neither the window nor an intermediate volume is ever materialised.
pub fn trilinear_view(view: &VolumeView<'_, f32>, out: [usize; 3]) -> Vec<f32> {
    // taps per axis in image coordinates, kept only where they hit `part` (as `local` does)
    let taps = [0, 1, 2].map(|d| {
        (0..out[d])
            .map(|o| {
                let (i0, i1, l0, l1) = linear_source(o, view.full[d], out[d]);
                [(i0, l0 as f64), (i1, l1 as f64)]
                    .into_iter()
                    .filter_map(|(i, w)| {
                        let g = i as i64 + view.origin[d];
                        (g >= view.part[d][0] as i64 && g < view.part[d][1] as i64)
                            .then_some((g as usize, w))
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    });
    let [_, s1, s2] = view.shape;
    let (y0, ny) = (view.part[1][0], view.part[1][1] - view.part[1][0]);
    let (z0, nz) = (view.part[2][0], view.part[2][1] - view.part[2][0]);
    let plane = out[1] * out[2];
    let mut res = vec![0f32; out.iter().product()];
    res.par_chunks_mut(plane).enumerate().for_each(|(x, dst)| {
        // axis 0: the part's (y, z) plane for this output x
        let mut t0 = vec![0f64; ny * nz];
        for y in 0..ny {
            let acc = &mut t0[y * nz..(y + 1) * nz];
            for &(i, w) in &taps[0][x] {
                let row = (i * s1 + y0 + y) * s2 + z0;
                acc.iter_mut()
                    .zip(&view.data[row..row + nz])
                    .for_each(|(a, &v)| *a += w * f64::from(v));
            }
        }
        // axis 1: (out y, part z)
        let mut t1 = vec![0f64; out[1] * nz];
        for (b, acc) in t1.chunks_mut(nz.max(1)).enumerate().take(out[1]) {
            for &(i, w) in &taps[1][b] {
                let src = &t0[(i - y0) * nz..(i - y0 + 1) * nz];
                acc.iter_mut().zip(src).for_each(|(a, &v)| *a += w * v);
            }
        }
        // axis 2
        for (b, row) in dst.chunks_mut(out[2]).enumerate() {
            let src = &t1[b * nz..(b + 1) * nz];
            for (c, d) in row.iter_mut().enumerate() {
                let mut a = 0f64;
                for &(i, w) in &taps[2][c] {
                    a += w * src[i - z0];
                }
                *d = a as f32;
            }
        }
    });
    res
}

/// [`nearest`] of the window `view` to `out`.
pub fn nearest_view<T: Copy + Default + Send + Sync>(
    view: &VolumeView<'_, T>,
    out: [usize; 3],
) -> Vec<T> {
    let idx = [0, 1, 2].map(|d| {
        (0..out[d])
            .map(|o| {
                let g = nearest_source(o, view.full[d], out[d]) as i64 + view.origin[d];
                (g >= view.part[d][0] as i64 && g < view.part[d][1] as i64).then_some(g as usize)
            })
            .collect::<Vec<_>>()
    });
    let [_, s1, s2] = view.shape;
    let plane = out[1] * out[2];
    let mut res = vec![T::default(); out.iter().product()];
    res.par_chunks_mut(plane).enumerate().for_each(|(x, dst)| {
        let Some(ix) = idx[0][x] else { return };
        for (y, row) in dst.chunks_mut(out[2]).enumerate() {
            let Some(iy) = idx[1][y] else { continue };
            let src = (ix * s1 + iy) * s2;
            for (z, d) in row.iter_mut().enumerate() {
                if let Some(iz) = idx[2][z] {
                    *d = view.data[src + iz];
                }
            }
        }
    });
    res
}

/// Legacy `F.interpolate(mode='nearest')` of the padded volume to `out`.
pub fn nearest<T: Copy + Default>(src: &Region<T>, out: [usize; 3]) -> Vec<T> {
    let idx = [0, 1, 2].map(|d| {
        (0..out[d])
            .map(|o| {
                let i = nearest_source(o, src.full[d], out[d]);
                (i >= src.lo[d] && i < src.lo[d] + src.shape[d]).then(|| i - src.lo[d])
            })
            .collect::<Vec<_>>()
    });
    let mut res = vec![T::default(); out.iter().product()];
    for (x, ix) in idx[0].iter().enumerate() {
        let Some(ix) = ix else { continue };
        for (y, iy) in idx[1].iter().enumerate() {
            let Some(iy) = iy else { continue };
            let row = (ix * src.shape[1] + iy) * src.shape[2];
            let dst = (x * out[1] + y) * out[2];
            for (z, iz) in idx[2].iter().enumerate() {
                if let Some(iz) = iz {
                    res[dst + z] = src.data[row + iz];
                }
            }
        }
    }
    res
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dense(full: [usize; 3], f: impl Fn(usize, usize, usize) -> f32) -> Region<f32> {
        let mut data = Vec::new();
        for x in 0..full[0] {
            for y in 0..full[1] {
                for z in 0..full[2] {
                    data.push(f(x, y, z));
                }
            }
        }
        Region {
            full,
            lo: [0; 3],
            shape: full,
            data,
        }
    }

    fn embed(r: &Region<f32>, full: [usize; 3], lo: [usize; 3]) -> Region<f32> {
        Region {
            full,
            lo,
            shape: r.shape,
            data: r.data.clone(),
        }
    }

    fn val(v: f32) -> f32 {
        v
    }

    #[test]
    fn area_f16_rounds_like_a_half_accumulator() {
        use half::f16;
        // 1 x 1 x 12 -> 1 x 1 x 1: twelve values whose exact mean differs from the f16-accumulated one
        let vals: Vec<f32> = [
            1.0, 0.2437, 0.2437, 0.3, 1.0, 1.0, 0.7, 0.2437, 1.0, 0.9, 0.51, 0.33,
        ]
        .iter()
        .map(|&v| f16::from_f32(v).to_f32())
        .collect();
        let reg = Region {
            full: [1, 1, 14],
            lo: [0, 0, 1],
            shape: [1, 1, 12],
            data: vals.clone(),
        };
        let mut sum = f16::ZERO;
        for &v in &vals {
            sum = f16::from_f32(sum.to_f32() + v);
        }
        let want = f16::from_f32(sum.to_f32() / 14.0);
        assert_eq!(area_f16(&reg, [1, 1, 1]), vec![want]);
        // and an all-zero region stays zero
        let zero = Region {
            full: [4, 4, 4],
            lo: [1, 1, 1],
            shape: [2, 2, 2],
            data: vec![0.0; 8],
        };
        assert!(area_f16(&zero, [2, 2, 2]).iter().all(|v| *v == f16::ZERO));
    }

    #[test]
    fn area_windows_match_pytorch() {
        // adaptive_avg_pool1d(48 -> 32): windows of 2 alternating with... start/end from torch
        assert_eq!(area_window(0, 48, 32), (0, 2));
        assert_eq!(area_window(1, 48, 32), (1, 3));
        assert_eq!(area_window(2, 48, 32), (3, 5));
        assert_eq!(area_window(31, 48, 32), (46, 48));
        assert_eq!(area_window(0, 72, 32), (0, 3));
        assert_eq!(area_window(3, 72, 32), (6, 9));
        assert_eq!(area_window(5, 5, 5), (5, 6));
    }

    #[test]
    fn linear_source_clamps_and_weights() {
        assert_eq!(linear_source(0, 48, 32), (0, 1, 0.75, 0.25));
        // 72 -> 32: scale 2.25, o = 31 -> 2.25 * 31.5 - 0.5 = 70.375
        assert_eq!(linear_source(31, 72, 32), (70, 71, 0.625, 0.375));
        // upsampling: the first output clamps to 0
        assert_eq!(linear_source(0, 4, 8), (0, 1, 1.0, 0.0));
        assert_eq!(linear_source(7, 4, 8), (3, 3, 0.75, 0.25));
    }

    #[test]
    fn nearest_source_is_floor() {
        assert_eq!(nearest_source(31, 48, 32), 46);
        assert_eq!(nearest_source(5, 3, 6), 2);
        assert_eq!(nearest_source(31, 72, 32), 69);
    }

    #[test]
    fn odd_rounding() {
        assert_eq!(round_to_nearest_odd(1.0), 1);
        assert_eq!(round_to_nearest_odd(1.375), 1);
        assert_eq!(round_to_nearest_odd(2.0), 3);
        assert_eq!(round_to_nearest_odd(3.5), 3);
        assert_eq!(round_to_nearest_odd(4.0), 5);
        assert_eq!(round_to_nearest_odd(7.0), 7);
    }

    /// Naive reference: max over the clipped cube window of the dense padded volume.
    fn naive_max_pool(d: &[f32], full: [usize; 3], r: usize) -> Vec<f32> {
        let mut out = vec![0.0; d.len()];
        for x in 0..full[0] {
            for y in 0..full[1] {
                for z in 0..full[2] {
                    let mut m = f32::NEG_INFINITY;
                    for a in x.saturating_sub(r)..=(x + r).min(full[0] - 1) {
                        for b in y.saturating_sub(r)..=(y + r).min(full[1] - 1) {
                            for c in z.saturating_sub(r)..=(z + r).min(full[2] - 1) {
                                m = m.max(d[(a * full[1] + b) * full[2] + c]);
                            }
                        }
                    }
                    out[(x * full[1] + y) * full[2] + z] = m;
                }
            }
        }
        out
    }

    #[test]
    fn max_pool_matches_naive_on_padded_regions() {
        let inner = dense([4, 3, 5], |x, y, z| {
            ((x * 7 + y * 3 + z * 5) % 11) as f32 - 3.0
        });
        for (full, lo) in [
            ([4, 3, 5], [0, 0, 0]),
            ([9, 8, 7], [2, 5, 0]),
            ([6, 3, 9], [0, 0, 4]),
        ] {
            let reg = embed(&inner, full, lo);
            for r in [1, 2] {
                let got = max_pool(&reg, r).to_dense();
                let want = naive_max_pool(&reg.to_dense(), full, r);
                assert_eq!(got, want, "full {full:?} lo {lo:?} r {r}");
            }
        }
    }

    #[test]
    fn area_matches_naive() {
        let inner = dense([5, 4, 6], |x, y, z| (x * 100 + y * 10 + z) as f32);
        let full = [11, 9, 7];
        let reg = embed(&inner, full, [3, 5, 1]);
        let d = reg.to_dense();
        let out = [4, 3, 5];
        let (sums, k) = area_sums(&reg, out);
        for x in 0..out[0] {
            for y in 0..out[1] {
                for z in 0..out[2] {
                    let (wx, wy, wz) = (
                        area_window(x, 11, 4),
                        area_window(y, 9, 3),
                        area_window(z, 7, 5),
                    );
                    let mut s = 0.0;
                    for a in wx.0..wx.1 {
                        for b in wy.0..wy.1 {
                            for c in wz.0..wz.1 {
                                s += d[(a * 9 + b) * 7 + c] as f64;
                            }
                        }
                    }
                    assert_eq!(sums[(x * 3 + y) * 5 + z], s);
                    assert_eq!(
                        [k[0][x], k[1][y], k[2][z]],
                        [wx.1 - wx.0, wy.1 - wy.0, wz.1 - wz.0]
                    );
                }
            }
        }
    }

    #[test]
    fn trilinear_matches_naive() {
        let inner = dense([5, 4, 6], |x, y, z| {
            (x * x) as f32 + 0.5 * y as f32 - z as f32
        });
        let full = [10, 9, 6];
        let reg = embed(&inner, full, [2, 5, 0]);
        let d = reg.to_dense();
        let out = [4, 6, 6];
        let got = trilinear(&reg, out);
        for x in 0..out[0] {
            for y in 0..out[1] {
                for z in 0..out[2] {
                    let (a0, a1, p0, p1) = linear_source(x, 10, 4);
                    let (b0, b1, q0, q1) = linear_source(y, 9, 6);
                    let (c0, c1, r0, r1) = linear_source(z, 6, 6);
                    let g = |a: usize, b: usize, c: usize| d[(a * 9 + b) * 6 + c] as f64;
                    let mut s = 0.0;
                    for (a, wa) in [(a0, p0), (a1, p1)] {
                        for (b, wb) in [(b0, q0), (b1, q1)] {
                            for (c, wc) in [(c0, r0), (c1, r1)] {
                                s += wa as f64 * wb as f64 * wc as f64 * g(a, b, c);
                            }
                        }
                    }
                    let v = got[(x * 6 + y) * 6 + z];
                    assert!((v as f64 - s).abs() < 1e-5, "{v} vs {s}");
                }
            }
        }
    }

    #[test]
    fn nearest_reads_zero_outside() {
        let reg = Region {
            full: [4, 1, 1],
            lo: [2, 0, 0],
            shape: [2, 1, 1],
            data: vec![val(5.0), 6.0],
        };
        assert_eq!(nearest(&reg, [2, 1, 1]), vec![0.0, 5.0]);
        assert_eq!(
            nearest(&reg, [8, 1, 1]),
            vec![0.0, 0.0, 0.0, 0.0, 5.0, 5.0, 6.0, 6.0]
        );
    }

    /// The copy-free kernels must equal the Region kernels bit for bit (the network-input
    /// goldens depend on it), also for windows that leave the image on both sides.
    #[test]
    fn view_kernels_equal_the_region_kernels_bit_for_bit() {
        use half::f16;
        let shape = [9, 11, 7];
        let n: usize = shape.iter().product();
        // awkward f16 values, with zeros, so accumulation order matters
        let h: Vec<f16> = (0..n)
            .map(|i| {
                let v = ((i * 7919) % 23) as f32 / 7.0;
                f16::from_f32(if i % 5 == 0 { 0.0 } else { v * 0.37 })
            })
            .collect();
        let f: Vec<f32> = (0..n)
            .map(|i| ((i * 104729) % 97) as f32 / 13.0 - 3.0)
            .collect();
        for (origin, full, out, part) in [
            (
                [-3i64, 2, -1],
                [14usize, 8, 10],
                [6usize, 5, 4],
                [[0usize, 9], [2, 10], [0, 7]],
            ),
            (
                [1, -2, 0],
                [6, 15, 7],
                [4, 10, 5],
                [[2, 7], [0, 11], [1, 6]],
            ),
            ([0, 0, 0], [9, 11, 7], [5, 6, 4], [[0, 9], [0, 11], [0, 7]]),
        ] {
            let region = |data: &[f32]| {
                let sh = part.map(|[a, b]| b - a);
                let mut d = Vec::new();
                for x in part[0][0]..part[0][1] {
                    for y in part[1][0]..part[1][1] {
                        let row = (x * shape[1] + y) * shape[2];
                        d.extend_from_slice(&data[row + part[2][0]..row + part[2][1]]);
                    }
                }
                Region {
                    full,
                    lo: [0, 1, 2].map(|k| (part[k][0] as i64 - origin[k]) as usize),
                    shape: sh,
                    data: d,
                }
            };
            let hf: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
            let vh = VolumeView {
                data: &h,
                shape,
                part,
                origin,
                full,
            };
            let vf = VolumeView {
                data: &f,
                shape,
                part,
                origin,
                full,
            };
            let a: Vec<u16> = area_f16(&region(&hf), out)
                .iter()
                .map(|v| v.to_bits())
                .collect();
            let b: Vec<u16> = area_f16_view(&vh, out)
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(a, b, "area {origin:?}");
            let a: Vec<u32> = trilinear(&region(&f), out)
                .iter()
                .map(|v| v.to_bits())
                .collect();
            let b: Vec<u32> = trilinear_view(&vf, out)
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(a, b, "trilinear {origin:?}");
            assert_eq!(
                nearest(&region(&f), out),
                nearest_view(&vf, out),
                "nearest {origin:?}"
            );
        }
    }
}
