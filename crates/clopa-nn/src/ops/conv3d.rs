//! `conv3d`: 3D convolution with a cubic kernel, as a candle custom op.
//!
//! Forward: the output voxels of one sample are cut into tiles of whole output rows; each tile's
//! im2col matrix (`Cin·k³ × T`, about 1 MiB so it stays in L2) is built and multiplied by the
//! kernel with `gemm`, writing straight into the output. Tiles run in parallel with rayon.
//! A 1×1×1 stride-1 convolution skips im2col (the input *is* the column matrix).
//!
//! Backward: `dW = Σ_tiles dY_tile · col_tileᵀ` with one accumulator per part (on CPUs with AVX2
//! or AVX-512 by `conv3d_dw_simd.rs`, so the bits do not depend on the CPU kind; through gemm on
//! others). For stride 1,
//! dX is the forward convolution of dY with the flipped, transposed kernel (padding `k−1−p`);
//! otherwise `dX = col2im(Wᵀ · dY_tile)` over slabs of output depth planes processed in two phases
//! (even slabs, then odd slabs) so that concurrently running slabs never touch the same input voxel.
//! The same three kernels implement the transposed convolution (`conv_transpose3d.rs`).
//!
//! On CPUs with AVX-512F or AVX2 the stride-1 3×3×3 forward (and with it dX) and dW go through
//! the direct microkernels of `conv3d_direct.rs` instead; the gemm paths here stay for every
//! other geometry and CPU (dW: every other CPU), and are tested on their own.

use candle_core::{DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::portable;
use super::{
    Kernel, Op, SyncPtr, check_layout, check_vec, dims5, grad_if, invalid, sum_f64, zeroed,
};
use super::{conv3d_direct, conv3d_dw_simd};

/// Target size of one im2col tile in f32 elements (1 MiB): the L2 size per core on the machine
/// this was tuned on (64 Ki .. 1 Mi floats tried: 1 MiB was fastest for 32 and 64 channels).
pub(super) const TILE_FLOATS: usize = 1 << 18;

/// Into how many partial sums a kernel gradient splits its work items (tiles): each part sums its
/// tiles in order into its own `Cout × Cin·k³` accumulator, and the parts are added in f64, in
/// order, at the end. The count is fixed — never derived from the thread count — because it
/// decides the order of the sums and so their bits: with it fixed, a seeded training run repeats
/// bit for bit with any `--threads` (`tests/threads.rs`). 16 gives 2–4 cores a few parts each (a
/// thread slowed by another process does not stall the reduction); in the direct kernel more
/// cores are kept busy by splitting the output channels (`conv3d_direct::channel_groups`, also
/// in `conv3d_dw_simd`), which does not change any sum; the gemm path (`conv_dw_gemm`, CPUs
/// without AVX2) uses at most 16 threads. The
/// partials cost `16 · Cout·Cin·k³` floats: 177 MB at nnInteractive's widest layer (320 → 320),
/// where the tiles are few anyway.
pub(super) const DW_PARTS: usize = 16;

/// [`DW_PARTS`], or fewer when there are fewer items: (parts, items per part). Every part has
/// items (22 items are 11 parts of 2, not 16 with 5 empty), so that no task zeroes and merges
/// an accumulator for nothing and the channel split sees the real count; an empty part added
/// nothing, so the sums are the same either way.
pub(super) fn dw_parts(items: usize) -> (usize, usize) {
    let per = items.div_ceil(DW_PARTS.clamp(1, items.max(1))).max(1);
    (items.div_ceil(per).max(1), per)
}

/// Geometry of a 3D convolution with a cubic kernel `k`, stride `s` and zero padding `p`.
/// `(d, h, w)` is the input size, `(od, oh, ow)` the output size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConvGeom {
    pub b: usize,
    pub cin: usize,
    pub cout: usize,
    pub d: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub s: usize,
    pub p: usize,
    pub od: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    /// The geometry, or `None` when the kernel does not fit the padded input.
    pub(crate) fn new(
        b: usize,
        cin: usize,
        cout: usize,
        (d, h, w): (usize, usize, usize),
        k: usize,
        s: usize,
        p: usize,
    ) -> Option<Self> {
        let out = |n: usize| (n + 2 * p).checked_sub(k).map(|m| m / s + 1);
        Some(Self {
            b,
            cin,
            cout,
            d,
            h,
            w,
            k,
            s,
            p,
            od: out(d)?,
            oh: out(h)?,
            ow: out(w)?,
        })
    }
    pub(crate) fn in_vol(&self) -> usize {
        self.d * self.h * self.w
    }
    pub(crate) fn out_vol(&self) -> usize {
        self.od * self.oh * self.ow
    }
    /// Rows of the im2col matrix: `Cin·k³`.
    pub(crate) fn kk(&self) -> usize {
        self.cin * self.k * self.k * self.k
    }
    pub(crate) fn in_dims(&self) -> [usize; 5] {
        [self.b, self.cin, self.d, self.h, self.w]
    }
    pub(crate) fn out_dims(&self) -> [usize; 5] {
        [self.b, self.cout, self.od, self.oh, self.ow]
    }
    pub(crate) fn w_dims(&self) -> [usize; 5] {
        [self.cout, self.cin, self.k, self.k, self.k]
    }
    /// 1×1×1, stride 1, no padding: the input is already the column matrix.
    pub(super) fn is_pointwise(&self) -> bool {
        self.k == 1 && self.s == 1 && self.p == 0
    }
    /// Output rows (`od·oh + oh`, each `ow` voxels long) per tile.
    pub(super) fn rows_per_tile(&self) -> usize {
        (TILE_FLOATS / self.kk() / self.ow).clamp(1, self.od * self.oh)
    }
    /// Output depth planes per dX slab such that slabs `j` and `j + 2` never touch the same input
    /// plane: slab `[a, b)` reads input planes `[a·s − p, (b−1)·s − p + k)`, so it needs `k ≤ (L+1)·s`.
    fn dx_slab(&self) -> usize {
        self.k.div_ceil(self.s).saturating_sub(1).max(1)
    }
}

/// Output positions `o < on` whose input index `o·s + kx − p` falls inside `[0, n)`: `[lo, hi)`.
fn valid_range(on: usize, n: usize, s: usize, p: usize, kx: usize) -> (usize, usize) {
    let hi = if n + p > kx {
        ((n - 1 + p - kx) / s + 1).min(on)
    } else {
        0
    };
    let lo = if p > kx { (p - kx).div_ceil(s) } else { 0 };
    (lo.min(hi), hi)
}

/// Fills `col` (`kk × t`, row-major, `t = (r1 − r0)·ow`) with the im2col matrix of output rows
/// `[r0, r1)` of one sample `x_b` (`Cin × D·H·W`).
pub(super) fn im2col(x_b: &[f32], g: &ConvGeom, r0: usize, r1: usize, col: &mut [f32]) {
    let (k, s, p) = (g.k, g.s, g.p);
    let t = (r1 - r0) * g.ow;
    let plane = g.h * g.w;
    for ci in 0..g.cin {
        let xc = &x_b[ci * g.in_vol()..(ci + 1) * g.in_vol()];
        for kd in 0..k {
            for kh in 0..k {
                for kw in 0..k {
                    let kk = ((ci * k + kd) * k + kh) * k + kw;
                    let crow = &mut col[kk * t..(kk + 1) * t];
                    let (lo, hi) = valid_range(g.ow, g.w, s, p, kw);
                    for r in r0..r1 {
                        let (od, oh) = (r / g.oh, r % g.oh);
                        let seg = &mut crow[(r - r0) * g.ow..(r - r0 + 1) * g.ow];
                        let id = (od * s + kd).wrapping_sub(p);
                        let ih = (oh * s + kh).wrapping_sub(p);
                        // wrapping_sub turns a negative index into a huge one, caught here too.
                        if id >= g.d || ih >= g.h || lo >= hi {
                            seg.fill(0.0);
                            continue;
                        }
                        let src = &xc[id * plane + ih * g.w..id * plane + (ih + 1) * g.w];
                        seg[..lo].fill(0.0);
                        seg[hi..].fill(0.0);
                        if s == 1 {
                            let a = lo + kw - p;
                            seg[lo..hi].copy_from_slice(&src[a..a + hi - lo]);
                        } else {
                            for (o, v) in seg[lo..hi].iter_mut().enumerate() {
                                *v = src[(lo + o) * s + kw - p];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds the column matrix `col` (`kk × t`, rows `[r0, r1)`) back into the input gradient `dx_b`.
fn col2im_add(col: &[f32], g: &ConvGeom, r0: usize, r1: usize, dx_b: &mut [f32]) {
    let (k, s, p) = (g.k, g.s, g.p);
    let t = (r1 - r0) * g.ow;
    let plane = g.h * g.w;
    let vol = g.in_vol();
    for ci in 0..g.cin {
        let xc = &mut dx_b[ci * vol..(ci + 1) * vol];
        for kd in 0..k {
            for kh in 0..k {
                for kw in 0..k {
                    let kk = ((ci * k + kd) * k + kh) * k + kw;
                    let crow = &col[kk * t..(kk + 1) * t];
                    let (lo, hi) = valid_range(g.ow, g.w, s, p, kw);
                    if lo >= hi {
                        continue;
                    }
                    for r in r0..r1 {
                        let (od, oh) = (r / g.oh, r % g.oh);
                        let id = (od * s + kd).wrapping_sub(p);
                        let ih = (oh * s + kh).wrapping_sub(p);
                        if id >= g.d || ih >= g.h {
                            continue;
                        }
                        let seg = &crow[(r - r0) * g.ow..(r - r0 + 1) * g.ow];
                        let dst = &mut xc[id * plane + ih * g.w..id * plane + (ih + 1) * g.w];
                        if s == 1 {
                            let a = lo + kw - p;
                            for (d, v) in dst[a..a + hi - lo].iter_mut().zip(&seg[lo..hi]) {
                                *d += v;
                            }
                        } else {
                            for (o, v) in seg[lo..hi].iter().enumerate() {
                                dst[(lo + o) * s + kw - p] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dst (m×n) := [dst +] lhs (m×k) · rhs (k×n)` with explicit row/column strides.
///
/// # Safety
/// Every pointer must be valid for the strided extents implied by `m`, `n`, `k` and the strides,
/// and no other thread may write `dst`'s extent concurrently.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    par: Parallelism,
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Forward convolution: `x` (B, Cin, D, H, W), `wt` (Cout, Cin·k³), `bias` (Cout) →
/// (B, Cout, OD, OH, OW).
pub(crate) fn conv_fwd(x: &[f32], wt: &[f32], bias: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    if g.s == 1 && g.k > 1 && g.p < g.k {
        return conv3d_direct::conv_fwd_s1_direct(x, wt, bias, g)
            .unwrap_or_else(|| conv_fwd_s1(x, wt, bias, g));
    }
    let (pin, pout, kk) = (g.in_vol(), g.out_vol(), g.kk());
    let mut y = zeroed(g.b * g.cout * pout);
    let rows = g.od * g.oh;
    let rpt = g.rows_per_tile();
    let ntiles = rows.div_ceil(rpt);
    let yp = SyncPtr(y.as_mut_ptr());
    (0..g.b * ntiles)
        .into_par_iter()
        .for_each_init(Vec::new, |col: &mut Vec<f32>, item| {
            let (b, tile) = (item / ntiles, item % ntiles);
            let (r0, r1) = (tile * rpt, ((tile + 1) * rpt).min(rows));
            let (t, p0) = ((r1 - r0) * g.ow, r0 * g.ow);
            let x_b = &x[b * g.cin * pin..(b + 1) * g.cin * pin];
            let (cptr, crs) = if g.is_pointwise() {
                (x_b[p0..].as_ptr(), pin)
            } else {
                col.resize(kk * t, 0.0);
                im2col(x_b, g, r0, r1, col);
                (col.as_ptr(), t)
            };
            let ybase = b * g.cout * pout + p0;
            // SAFETY: this task alone writes columns [p0, p0 + t) of sample b's Cout rows.
            unsafe {
                let dst = yp.get().add(ybase);
                if let Some(bias) = bias {
                    for (co, &bv) in bias.iter().enumerate() {
                        std::slice::from_raw_parts_mut(dst.add(co * pout), t).fill(bv);
                    }
                }
                sgemm(
                    (g.cout, t, kk),
                    dst,
                    (pout, 1),
                    bias.is_some(),
                    wt.as_ptr(),
                    (kk, 1),
                    cptr,
                    (crs, 1),
                    Parallelism::None,
                );
            }
        });
    y
}

/// Fills `col` (`Cin·k² × t2`, `t2 = (r1 − r0)·wp`) with zero-padded input rows: row
/// `(ci, kd, kh)`, segment `r − r0` holds input row `(od + kd − p, oh + kh − p)` padded to `wp`.
fn im2row(x_b: &[f32], g: &ConvGeom, r0: usize, r1: usize, col: &mut [f32]) {
    im2row_part(x_b, g, (r0, r1), (0, g.cin * g.k * g.k), col);
}

/// [`im2row`]'s rows `q0 .. q1` only (`q = (ci·k + kd)·k + kh`), written from `col[0]` on.
pub(super) fn im2row_part(
    x_b: &[f32],
    g: &ConvGeom,
    (r0, r1): (usize, usize),
    (q0, q1): (usize, usize),
    col: &mut [f32],
) {
    let (k, p, wp) = (g.k, g.p, g.w + 2 * g.p);
    let t2 = (r1 - r0) * wp;
    let plane = g.h * g.w;
    for q in q0..q1 {
        let (ci, kd, kh) = (q / (k * k), q / k % k, q % k);
        let xc = &x_b[ci * g.in_vol()..(ci + 1) * g.in_vol()];
        let row = &mut col[(q - q0) * t2..][..t2];
        for r in r0..r1 {
            let (od, oh) = (r / g.oh, r % g.oh);
            let seg = &mut row[(r - r0) * wp..(r - r0 + 1) * wp];
            let id = (od + kd).wrapping_sub(p);
            let ih = (oh + kh).wrapping_sub(p);
            if id >= g.d || ih >= g.h {
                seg.fill(0.0);
                continue;
            }
            seg[..p].fill(0.0);
            seg[p..p + g.w]
                .copy_from_slice(&xc[id * plane + ih * g.w..id * plane + (ih + 1) * g.w]);
            seg[p + g.w..].fill(0.0);
        }
    }
}

/// Stride-1 forward without the k-fold copy along W: the column matrix holds one zero-padded
/// input row per `(ci, kd, kh)` (k times smaller than im2col), and the `kw` taps are `k`
/// accumulating gemms reading it shifted by `kw`. Outputs are computed on the padded width
/// (`k − 1` junk columns per row, dropped when copying into `y`).
fn conv_fwd_s1(x: &[f32], wt: &[f32], bias: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    let (pin, pout, kk) = (g.in_vol(), g.out_vol(), g.kk());
    let (k, wp) = (g.k, g.w + 2 * g.p);
    let kk9 = g.cin * k * k;
    let mut y = zeroed(g.b * g.cout * pout);
    let rows = g.od * g.oh;
    let rpt = (TILE_FLOATS / kk9 / wp).clamp(1, rows);
    let ntiles = rows.div_ceil(rpt);
    let yp = SyncPtr(y.as_mut_ptr());
    (0..g.b * ntiles).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(col, tmp): &mut (Vec<f32>, Vec<f32>), item| {
            let (b, tile) = (item / ntiles, item % ntiles);
            let (r0, r1) = (tile * rpt, ((tile + 1) * rpt).min(rows));
            let t2 = (r1 - r0) * wp;
            let n = t2 - (k - 1);
            col.resize(kk9 * t2, 0.0);
            tmp.resize(g.cout * t2, 0.0);
            im2row(&x[b * g.cin * pin..(b + 1) * g.cin * pin], g, r0, r1, col);
            for kw in 0..k {
                // SAFETY: col (kk9 × t2) is read at columns [kw, kw + n) ⊂ [0, t2); tmp is this
                // task's own cout × t2 buffer; the kernel taps kw are read with column stride k.
                unsafe {
                    sgemm(
                        (g.cout, n, kk9),
                        tmp.as_mut_ptr(),
                        (t2, 1),
                        kw > 0,
                        wt[kw..].as_ptr(),
                        (kk, k),
                        col[kw..].as_ptr(),
                        (t2, 1),
                        Parallelism::None,
                    )
                };
            }
            for co in 0..g.cout {
                let bv = bias.map_or(0.0, |b| b[co]);
                // SAFETY: this task alone writes output rows [r0, r1) of sample b.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        yp.get().add((b * g.cout + co) * pout + r0 * g.ow),
                        (r1 - r0) * g.ow,
                    )
                };
                for (dr, sr) in dst
                    .chunks_exact_mut(g.ow)
                    .zip(tmp[co * t2..(co + 1) * t2].chunks_exact(wp))
                {
                    for (d, s) in dr.iter_mut().zip(sr) {
                        *d = s + bv;
                    }
                }
            }
        },
    );
    y
}

/// Input gradient: `dy` (B, Cout, OD, OH, OW), `wt` (Cout, Cin·k³) → (B, Cin, D, H, W), initialised
/// with `bias` per input channel when given (the transposed convolution's bias).
pub(crate) fn conv_dx(dy: &[f32], wt: &[f32], bias: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    if g.s == 1 && g.p < g.k {
        // Stride 1: dX is itself a convolution of dY with the flipped, transposed kernel and
        // padding k−1−p, so the (faster, scatter-free) forward kernel computes it.
        if let Some(gt) = ConvGeom::new(
            g.b,
            g.cout,
            g.cin,
            (g.od, g.oh, g.ow),
            g.k,
            1,
            g.k - 1 - g.p,
        ) && (gt.od, gt.oh, gt.ow) == (g.d, g.h, g.w)
        {
            return conv_fwd(dy, &flip_transpose(wt, g), bias, &gt);
        }
    }
    conv_dx_scatter(dy, wt, bias, g)
}

/// Input gradient through the col2im scatter, for any stride (the only way for stride > 1).
pub(crate) fn conv_dx_scatter(
    dy: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
) -> Vec<f32> {
    let (pin, pout, kk) = (g.in_vol(), g.out_vol(), g.kk());
    let mut dx = zeroed(g.b * g.cin * pin);
    if let Some(bias) = bias {
        dx.par_chunks_mut(pin)
            .enumerate()
            .for_each(|(i, plane)| plane.fill(bias[i % g.cin]));
    }
    let rpt = g.rows_per_tile();
    let slab = g.dx_slab();
    let nslabs = g.od.div_ceil(slab);
    let dxp = SyncPtr(dx.as_mut_ptr());
    for phase in 0..2 {
        let items: Vec<(usize, usize)> = (0..g.b)
            .flat_map(|b| (phase..nslabs).step_by(2).map(move |j| (b, j)))
            .collect();
        items
            .into_par_iter()
            .for_each_init(Vec::new, |col: &mut Vec<f32>, (b, j)| {
                let rows_end = ((j + 1) * slab).min(g.od) * g.oh;
                let mut r0 = j * slab * g.oh;
                // SAFETY: slabs of one phase touch disjoint input planes (see `dx_slab`), samples
                // are disjoint, so this task is the only one writing this part of dx_b.
                let dx_b = unsafe {
                    std::slice::from_raw_parts_mut(dxp.get().add(b * g.cin * pin), g.cin * pin)
                };
                while r0 < rows_end {
                    let r1 = (r0 + rpt).min(rows_end);
                    let (t, p0) = ((r1 - r0) * g.ow, r0 * g.ow);
                    let dy_tile = dy[b * g.cout * pout + p0..].as_ptr();
                    if g.is_pointwise() {
                        // SAFETY: columns [p0, p0 + t) of dx_b belong to this slab only.
                        unsafe {
                            sgemm(
                                (kk, t, g.cout),
                                dx_b[p0..].as_mut_ptr(),
                                (pin, 1),
                                bias.is_some(),
                                wt.as_ptr(),
                                (1, kk),
                                dy_tile,
                                (pout, 1),
                                Parallelism::None,
                            )
                        };
                    } else {
                        col.resize(kk * t, 0.0);
                        // SAFETY: `col` is a private kk × t buffer; dy_tile rows have stride pout.
                        unsafe {
                            sgemm(
                                (kk, t, g.cout),
                                col.as_mut_ptr(),
                                (t, 1),
                                false,
                                wt.as_ptr(),
                                (1, kk),
                                dy_tile,
                                (pout, 1),
                                Parallelism::None,
                            )
                        };
                        col2im_add(col, g, r0, r1, dx_b);
                    }
                    r0 = r1;
                }
            });
    }
    dx
}

/// `(Cout, Cin, k, k, k)` → `(Cin, Cout, k, k, k)` with every spatial axis reversed.
fn flip_transpose(wt: &[f32], g: &ConvGeom) -> Vec<f32> {
    let k3 = g.k * g.k * g.k;
    let mut out = vec![0f32; wt.len()];
    for co in 0..g.cout {
        for ci in 0..g.cin {
            let src = &wt[(co * g.cin + ci) * k3..(co * g.cin + ci + 1) * k3];
            let dst = &mut out[(ci * g.cout + co) * k3..(ci * g.cout + co + 1) * k3];
            // Reversing all three axes of a k×k×k block reverses its linear index.
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    out
}

/// Kernel gradient: `x` (B, Cin, D, H, W), `dy` (B, Cout, OD, OH, OW) → (Cout, Cin·k³).
/// The direct kernel for stride-1 3×3×3, SIMD kernels for every other geometry, gemm on CPUs
/// with neither AVX2 nor AVX-512.
pub(crate) fn conv_dw(x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    conv3d_direct::conv_dw_direct(x, dy, g)
        .or_else(|| conv3d_dw_simd::conv_dw_simd(x, dy, g))
        .unwrap_or_else(|| conv_dw_gemm(x, dy, g))
}

/// [`conv_dw`] through im2col tiles and gemm: any geometry, any CPU. (Its sums follow gemm's
/// blocking, which depends on the SIMD level gemm picks: the weights' bits differ between CPU
/// kinds, unlike the SIMD kernels'.)
fn conv_dw_gemm(x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (pin, pout, kk) = (g.in_vol(), g.out_vol(), g.kk());
    let rows = g.od * g.oh;
    let rpt = g.rows_per_tile();
    let ntiles = rows.div_ceil(rpt);
    let items = g.b * ntiles;
    // A fixed number of accumulators (see `DW_PARTS`); each task sums its tiles through gemm's
    // accumulate mode.
    let (nchunks, per) = dw_parts(items);
    let partials: Vec<Vec<f32>> = (0..nchunks)
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![0f32; g.cout * kk];
            let mut col = Vec::new();
            for item in c * per..((c + 1) * per).min(items) {
                let (b, tile) = (item / ntiles, item % ntiles);
                let (r0, r1) = (tile * rpt, ((tile + 1) * rpt).min(rows));
                let (t, p0) = ((r1 - r0) * g.ow, r0 * g.ow);
                let x_b = &x[b * g.cin * pin..(b + 1) * g.cin * pin];
                let (cptr, crs) = if g.is_pointwise() {
                    (x_b[p0..].as_ptr(), pin)
                } else {
                    col.resize(kk * t, 0.0);
                    im2col(x_b, g, r0, r1, &mut col);
                    (col.as_ptr(), t)
                };
                // SAFETY: acc is this task's own Cout × kk buffer; dY tile rows have stride
                // pout, col is read transposed (row stride 1, column stride crs).
                unsafe {
                    sgemm(
                        (g.cout, kk, t),
                        acc.as_mut_ptr(),
                        (kk, 1),
                        true,
                        dy[b * g.cout * pout + p0..].as_ptr(),
                        (pout, 1),
                        cptr,
                        (1, crs),
                        Parallelism::None,
                    )
                };
            }
            acc
        })
        .collect();
    let mut dw = vec![0f32; g.cout * kk];
    for (i, v) in dw.iter_mut().enumerate() {
        *v = partials.iter().map(|p| p[i] as f64).sum::<f64>() as f32;
    }
    dw
}

/// Per-channel sum over batch and space: `dy` (B, C, N) → (C), accumulated in f64.
pub(crate) fn channel_sum(dy: &[f32], b: usize, c: usize, n: usize) -> Vec<f32> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            (0..b)
                .map(|bi| sum_f64(&dy[(bi * c + ch) * n..(bi * c + ch + 1) * n]))
                .sum::<f64>() as f32
        })
        .collect()
}

/// The forward convolution op; with bias it is applied as a three-argument op (x, w, b).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conv3dOp {
    pub g: ConvGeom,
}

const NAME: &str = "conv3d";

impl Conv3dOp {
    /// Forward from (x, w, optional bias) data.
    pub(crate) fn fwd(
        &self,
        (xs, xl): (&[f32], &Layout),
        (ws, wl): (&[f32], &Layout),
        b: Option<(&[f32], &Layout)>,
    ) -> Result<(Vec<f32>, Shape)> {
        check_layout(NAME, "x", xl, &self.g.in_dims())?;
        check_layout(NAME, "w", wl, &self.g.w_dims())?;
        let y = conv_fwd(xs, ws, bias_data(NAME, b, self.g.cout)?, &self.g);
        Ok((y, Shape::from(self.g.out_dims().to_vec())))
    }

    /// Gradients of (x, w, b), each only where that argument is tracked (see [`grad_if`]).
    fn grads(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, dy: &Tensor) -> Result<Grads3> {
        let dx = grad_if(x, || {
            dy.apply_op2_no_bwd(
                w,
                &Op(ConvDxOp {
                    g: self.g,
                    name: "conv3d-dx",
                }),
            )
        })?;
        let dw = grad_if(w, || {
            x.apply_op2_no_bwd(
                dy,
                &Op(ConvDwOp {
                    g: self.g,
                    name: "conv3d-dw",
                }),
            )
        })?;
        Ok([dx, dw, bias_grad(b, dy)?])
    }
}

/// The bias data when there is a bias, after checking it has `n` elements.
pub(crate) fn bias_data<'a>(
    op: &'static str,
    b: Option<(&'a [f32], &Layout)>,
    n: usize,
) -> Result<Option<&'a [f32]>> {
    b.map(|(s, l)| check_layout(op, "bias", l, &[n]).map(|()| s))
        .transpose()
}

/// Gradients of a three-argument op.
pub(crate) type Grads3 = [Option<Tensor>; 3];

/// The bias gradient (per-channel sum of `dy`) when there is a tracked bias.
pub(crate) fn bias_grad(b: Option<&Tensor>, dy: &Tensor) -> Result<Option<Tensor>> {
    match b {
        Some(b) => grad_if(b, || dy.apply_op1_no_bwd(&Op(ChannelSumOp))),
        None => Ok(None),
    }
}

kernel_with_optional_bias!(Conv3dOp, NAME);

/// `conv_dx` as a no-backward op: (dy, w) → input-shaped gradient.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvDxOp {
    pub g: ConvGeom,
    pub name: &'static str,
}

impl Kernel<2> for ConvDxOp {
    const ARGS: [&'static str; 2] = ["dy", "w"];
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu(&self, [(dy, l1), (w, l2)]: [(&[f32], &Layout); 2]) -> Result<(Vec<f32>, Shape)> {
        check_layout(self.name, "dy", l1, &self.g.out_dims())?;
        check_layout(self.name, "w", l2, &self.g.w_dims())?;
        let dx = conv_dx(dy, w, None, &self.g);
        Ok((dx, Shape::from(self.g.in_dims().to_vec())))
    }
}

/// `conv_dw` as a no-backward op: (x, dy) → kernel-shaped gradient.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvDwOp {
    pub g: ConvGeom,
    pub name: &'static str,
}

impl Kernel<2> for ConvDwOp {
    const ARGS: [&'static str; 2] = ["x", "dy"];
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu(&self, [(x, l1), (dy, l2)]: [(&[f32], &Layout); 2]) -> Result<(Vec<f32>, Shape)> {
        check_layout(self.name, "x", l1, &self.g.in_dims())?;
        check_layout(self.name, "dy", l2, &self.g.out_dims())?;
        let dw = conv_dw(x, dy, &self.g);
        Ok((dw, Shape::from(self.g.w_dims().to_vec())))
    }
}

/// Sum over batch and space per channel: (B, C, ...) → (C), the bias gradient.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChannelSumOp;

impl Kernel<1> for ChannelSumOp {
    const ARGS: [&'static str; 1] = ["dy"];
    fn name(&self) -> &'static str {
        "channel-sum"
    }
    fn cpu(&self, [(v, l)]: [(&[f32], &Layout); 1]) -> Result<(Vec<f32>, Shape)> {
        let dims = l.dims();
        if dims.len() < 2 {
            return Err(invalid(
                "channel-sum",
                format!("expected (B, C, ...), got {dims:?}"),
            ));
        }
        let (b, c) = (dims[0], dims[1]);
        let n: usize = dims[2..].iter().product();
        Ok((channel_sum(v, b, c, n), Shape::from(c)))
    }
}

/// 3D convolution of `x` (B, Cin, D, H, W) with the cubic kernel `w` (Cout, Cin, k, k, k),
/// optional `b` (Cout), `stride` and zero `padding` on every side, like PyTorch's `F.conv3d`
/// (dilation 1, groups 1). Returns (B, Cout, OD, OH, OW) with `OD = (D + 2p − k) / s + 1`.
pub fn conv3d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let g = geometry(x, w, b, stride, padding)?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return super::cudnn_conv3d::conv3d(x, w, b, g);
    }
    if portable::conv_off_cpu(x) {
        return portable::conv3d(x, w, b, stride, padding);
    }
    let op = Op(Conv3dOp { g });
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// The checks of [`conv3d`]'s arguments, and their geometry.
fn geometry(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<ConvGeom> {
    let [bn, cin, d, h, wd] = dims5(NAME, "x", x)?;
    let [cout, wcin, k, k2, k3] = dims5(NAME, "w", w)?;
    if wcin != cin {
        return Err(invalid(
            NAME,
            format!("w has {wcin} input channels, x has {cin}"),
        ));
    }
    if k != k2 || k != k3 || k == 0 {
        return Err(invalid(
            NAME,
            format!("w must have a cubic kernel, got {k}x{k2}x{k3}"),
        ));
    }
    if stride == 0 {
        return Err(invalid(NAME, "stride must be at least 1"));
    }
    let g = ConvGeom::new(bn, cin, cout, (d, h, wd), k, stride, padding).ok_or_else(|| {
        invalid(
            NAME,
            format!(
                "kernel {k} does not fit input {:?} with padding {padding}",
                x.dims()
            ),
        )
    })?;
    if let Some(b) = b {
        check_vec(NAME, "bias", b, g.cout)?;
    }
    Ok(g)
}

/// The type and shape of a convolution's result.
pub(crate) type ConvOut = (DType, [usize; 5]);

/// A convolution's input gradient, dy → dx.
pub(crate) type InputGrad = Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// For a caller that makes [`conv3d`] (no bias) part of a graph node of its own
/// (`portable::conv_norm_act`): its result's type and shape, and its input gradient, dy (the
/// result's shape and type) → dx (x's shape; the result's type), where the convolution is a
/// single op — cuDNN's on a GPU, the CPU kernel where [`portable::conv_off_cpu`] keeps it — after
/// the checks of [`conv3d`]; `None` where it is a composition of candle's ops, whose gradient
/// only autograd has.
pub(crate) fn input_grad(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Option<(ConvOut, InputGrad)>> {
    let g = geometry(x, w, None, stride, padding)?;
    let cudnn = cfg!(feature = "cuda") && x.device().is_cuda();
    if !cudnn && portable::conv_off_cpu(x) {
        return Ok(None);
    }
    // (cuDNN's result is in the convolutions' precision; the CPU kernel's f32)
    let dtype = if cudnn {
        super::conv_precision().dtype()
    } else {
        DType::F32
    };
    let w = w.detach();
    let dx = move |dy: &Tensor| -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if dy.device().is_cuda() {
            return super::cudnn_conv3d::input_grad(dy, &w, g);
        }
        dy.contiguous()?.apply_op2_no_bwd(
            &w.contiguous()?,
            &Op(ConvDxOp {
                g,
                name: "conv3d-dx",
            }),
        )
    };
    Ok(Some(((dtype, g.out_dims()), Box::new(dx))))
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testutil::*;
    use super::*;

    /// Naive f64 convolution, the reference.
    pub(crate) fn naive_conv(x: &[f64], w: &[f64], b: Option<&[f64]>, g: &ConvGeom) -> Vec<f64> {
        let mut y = vec![0f64; g.b * g.cout * g.out_vol()];
        let k = g.k;
        for bi in 0..g.b {
            for co in 0..g.cout {
                for od in 0..g.od {
                    for oh in 0..g.oh {
                        for ow in 0..g.ow {
                            let mut acc = b.map_or(0.0, |b| b[co]);
                            for ci in 0..g.cin {
                                for kd in 0..k {
                                    for kh in 0..k {
                                        for kw in 0..k {
                                            let id = (od * g.s + kd) as isize - g.p as isize;
                                            let ih = (oh * g.s + kh) as isize - g.p as isize;
                                            let iw = (ow * g.s + kw) as isize - g.p as isize;
                                            if id < 0 || ih < 0 || iw < 0 {
                                                continue;
                                            }
                                            let (id, ih, iw) =
                                                (id as usize, ih as usize, iw as usize);
                                            if id >= g.d || ih >= g.h || iw >= g.w {
                                                continue;
                                            }
                                            acc += x[(((bi * g.cin + ci) * g.d + id) * g.h + ih)
                                                * g.w
                                                + iw]
                                                * w[(((co * g.cin + ci) * k + kd) * k + kh) * k
                                                    + kw];
                                        }
                                    }
                                }
                            }
                            y[(((bi * g.cout + co) * g.od + od) * g.oh + oh) * g.ow + ow] = acc;
                        }
                    }
                }
            }
        }
        y
    }

    fn check_case(
        bn: usize,
        cin: usize,
        cout: usize,
        dhw: (usize, usize, usize),
        k: usize,
        s: usize,
        bias: bool,
    ) {
        let p = (k - 1) / 2;
        let g = ConvGeom::new(bn, cin, cout, dhw, k, s, p).expect("geometry");
        let mut rng = Lcg(7 + (k * 10 + s) as u64);
        let x = rng.vec(g.b * g.cin * g.in_vol());
        let w = rng.vec(g.cout * g.kk());
        let bv = rng.vec(g.cout);
        let r = rng.vec(g.b * g.cout * g.out_vol());
        let bopt = bias.then_some(bv.as_slice());

        // forward + autograd through candle
        let (xv, xt) = var(&x, &g.in_dims());
        let (wv, wt) = var(&w, &g.w_dims());
        let (bvar, bt) = var(&bv, &[g.cout]);
        let y = conv3d(&xt, &wt, bias.then_some(&bt), s, p).expect("conv3d");
        let yref = naive_conv(&f64v(&x), &f64v(&w), bopt.map(f64v).as_deref(), &g);
        assert_close("conv3d forward", &to_vec(&y), &yref, 1e-5);
        let grads = loss_grads(&y, &r);
        let dx = grad_of(&grads, &xv);
        let dw = grad_of(&grads, &wv);

        // f64 reference gradients: central finite differences of the naive f64 loss Σ y·r.
        let (x64, w64, b64, r64) = (f64v(&x), f64v(&w), f64v(&bv), f64v(&r));
        let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
            dot(&naive_conv(x, w, bias.then_some(b), &g), &r64)
        };
        let fdx = fd_grad(&x64, |xx| loss(xx, &w64, &b64));
        let fdw = fd_grad(&w64, |ww| loss(&x64, ww, &b64));
        assert_close("conv3d dx vs finite differences", &dx, &fdx, 1e-5);
        assert_close("conv3d dw vs finite differences", &dw, &fdw, 1e-5);
        if bias {
            let fdb = fd_grad(&b64, |bb| loss(&x64, &w64, bb));
            assert_close(
                "conv3d db vs finite differences",
                &grad_of(&grads, &bvar),
                &fdb,
                1e-5,
            );
        } else {
            assert!(grads.get(bvar.as_tensor()).is_none());
        }
    }

    #[test]
    fn k3_stride1_odd_sizes_batch2_bias() {
        check_case(2, 3, 4, (7, 6, 5), 3, 1, true);
    }

    #[test]
    fn k3_stride2_odd_sizes_batch2_no_bias() {
        check_case(2, 3, 4, (7, 6, 5), 3, 2, false);
    }

    #[test]
    fn k3_stride2_hw_parity_differs_bias() {
        // candle's conv2d backward breaks when H and W have different parity at stride 2.
        check_case(1, 2, 3, (5, 6, 5), 3, 2, true);
    }

    #[test]
    fn k1_pointwise_batch2() {
        check_case(2, 5, 3, (4, 3, 5), 1, 1, true);
    }

    #[test]
    fn k1_stride2() {
        check_case(1, 3, 2, (5, 4, 3), 1, 2, false);
    }

    #[test]
    fn tiles_and_slabs_larger_than_one() {
        // Enough rows that forward tiles, dW chunks and dX slabs are all more than one.
        let g = ConvGeom::new(1, 2, 3, (12, 10, 9), 3, 1, 1).expect("geometry");
        assert!(g.od.div_ceil(g.dx_slab()) > 2);
        let mut rng = Lcg(3);
        let x = rng.vec(g.b * g.cin * g.in_vol());
        let w = rng.vec(g.cout * g.kk());
        let dy = rng.vec(g.b * g.cout * g.out_vol());
        let y = conv_fwd(&x, &w, None, &g);
        assert_close(
            "forward",
            &y,
            &naive_conv(&f64v(&x), &f64v(&w), None, &g),
            1e-5,
        );
        // dX and dW through the adjoint identity <conv(x), dy> = <x, dX(dy)> = <w, dW(x, dy)>.
        let lhs = dot(&f64v(&y), &f64v(&dy));
        let dx = conv_dx(&dy, &w, None, &g);
        let dw = conv_dw(&x, &dy, &g);
        assert!((dot(&f64v(&x), &f64v(&dx)) - lhs).abs() <= 1e-5 * lhs.abs().max(1.0));
        // stride 1 goes through the flipped-kernel convolution; the scatter path must agree
        let dxs = conv_dx_scatter(&dy, &w, None, &g);
        assert_close("dx scatter vs flipped conv", &dxs, &f64v(&dx), 1e-6);
        assert!((dot(&f64v(&w), &f64v(&dw)) - lhs).abs() <= 1e-5 * lhs.abs().max(1.0));
        // and the gemm dW path (the one without AVX-512) must agree with whichever ran
        let dwg = conv_dw_gemm(&x, &dy, &g);
        assert_close("dw gemm vs conv_dw", &dwg, &f64v(&dw), 1e-5);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Enough tiles that 1, 3 and 7 threads would split the kernel gradient's sums
        // differently if the split followed the thread count (it did, once: weights trained on
        // 1 and 2 threads differed by ~1e-4).
        let g = ConvGeom::new(2, 16, 8, (32, 32, 32), 3, 1, 1).expect("geometry");
        assert!(g.b * (g.od * g.oh).div_ceil(g.rows_per_tile()) > DW_PARTS);
        let mut rng = Lcg(29);
        let x = rng.vec(g.b * g.cin * g.in_vol());
        let w = rng.vec(g.cout * g.kk());
        let dy = rng.vec(g.b * g.cout * g.out_vol());
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                [
                    conv_fwd(&x, &w, None, &g),
                    conv_dx(&dy, &w, None, &g),
                    conv_dw(&x, &dy, &g),
                    conv_dw_gemm(&x, &dy, &g),
                ]
                .map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>())
            })
        };
        let one = run(1);
        for threads in [3, 7] {
            let other = run(threads);
            for (name, (a, b)) in ["forward", "dx", "dw", "dw gemm"]
                .iter()
                .zip(one.iter().zip(&other))
            {
                assert!(a == b, "{name}: {threads} threads differ from 1");
            }
        }
    }

    #[test]
    fn stride1_forward_with_many_tiles() {
        // The gemm path (the one without AVX-512; `conv_fwd` prefers the direct kernel where it
        // runs), with a wide input so the rows split into many tiles (the last one partial).
        let g = ConvGeom::new(1, 300, 3, (5, 7, 6), 3, 1, 1).expect("geometry");
        let mut rng = Lcg(17);
        let x = rng.vec(g.b * g.cin * g.in_vol());
        let w = rng.vec(g.cout * g.kk());
        let b = rng.vec(g.cout);
        let rows = g.od * g.oh;
        assert!(rows.div_ceil((TILE_FLOATS / (g.cin * 9) / (g.w + 2)).max(1)) > 2);
        let y = conv_fwd_s1(&x, &w, Some(&b), &g);
        assert_close(
            "forward",
            &y,
            &naive_conv(&f64v(&x), &f64v(&w), Some(&f64v(&b)), &g),
            1e-5,
        );
    }

    /// Gradients of `Σ conv(x, w, b)·r` with the chosen arguments trainable.
    fn conv_grads(
        g: &ConvGeom,
        (x, w, b, r): (&[f32], &[f32], &[f32], &[f32]),
        train: [bool; 3],
    ) -> [Option<Vec<f32>>; 3] {
        let arg = |v: &[f32], dims: &[usize], t: bool| {
            if t {
                let (var, t) = var(v, dims);
                (Some(var), t)
            } else {
                (None, tensor(v, dims))
            }
        };
        let (xv, xt) = arg(x, &g.in_dims(), train[0]);
        let (wv, wt) = arg(w, &g.w_dims(), train[1]);
        let (bv, bt) = arg(b, &[g.cout], train[2]);
        let y = conv3d(&xt, &wt, Some(&bt), g.s, g.p).expect("conv3d");
        if !y.track_op() {
            return [None, None, None];
        }
        let grads = loss_grads(&y, r);
        // Every frozen argument must be absent from the store, not merely zero.
        for (v, t) in [(&xv, &xt), (&wv, &wt), (&bv, &bt)] {
            assert_eq!(grads.get(t).is_some(), v.is_some());
        }
        [xv, wv, bv].map(|v| v.map(|v| grad_of(&grads, &v)))
    }

    #[test]
    fn frozen_arguments_get_no_gradient_and_the_others_are_bit_identical() {
        for s in [1, 2] {
            let g = ConvGeom::new(1, 3, 4, (6, 5, 7), 3, s, 1).expect("geometry");
            let mut rng = Lcg(41 + s as u64);
            let x = rng.vec(g.b * g.cin * g.in_vol());
            let w = rng.vec(g.cout * g.kk());
            let b = rng.vec(g.cout);
            let r = rng.vec(g.b * g.cout * g.out_vol());
            let all = conv_grads(&g, (&x, &w, &b, &r), [true; 3]);
            for mask in 0..7u8 {
                let train = [mask & 1 != 0, mask & 2 != 0, mask & 4 != 0];
                let some = conv_grads(&g, (&x, &w, &b, &r), train);
                for i in 0..3 {
                    match (&some[i], train[i]) {
                        (Some(v), true) => {
                            assert_eq!(Some(v), all[i].as_ref(), "arg {i} {train:?}")
                        }
                        (None, false) => {}
                        (got, _) => panic!("arg {i} {train:?}: {}", got.is_some()),
                    }
                }
            }
        }
    }

    #[test]
    fn dx_slab_condition_holds() {
        for (k, s) in [(1, 1), (3, 1), (3, 2), (2, 2), (1, 2), (5, 1), (4, 2)] {
            let g = ConvGeom::new(1, 1, 1, (8, 8, 8), k, s, 0).expect("geometry");
            assert!(g.k <= (g.dx_slab() + 1) * g.s, "k {k} s {s}");
        }
    }

    #[test]
    fn rejects_bad_arguments() {
        let x = tensor(&[0.0; 2 * 4 * 4 * 4], &[1, 2, 4, 4, 4]);
        let w = tensor(&[0.0; 3 * 3 * 27], &[3, 3, 3, 3, 3]);
        let e = conv3d(&x, &w, None, 1, 1)
            .expect_err("channel mismatch")
            .to_string();
        assert!(e.contains("3 input channels"), "{e}");
        let w = tensor(&[0.0; 3 * 2 * 27], &[3, 2, 3, 3, 3]);
        let b = tensor(&[0.0; 2], &[2]);
        assert!(conv3d(&x, &w, Some(&b), 1, 1).is_err());
        assert!(conv3d(&x, &w, None, 0, 1).is_err());
    }
}
