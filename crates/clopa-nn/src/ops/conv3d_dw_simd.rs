//! Kernel gradient of every convolution the direct kernel does not take — stride 2 (the
//! encoder's downsampling), 1×1 (segmentation heads, residual skips), and through them the
//! transposed convolutions' 2×2×2: `dW[co][q] = Σ_v dY[co][v] · col[q][v]` over each tile's
//! voxels `v`, where `col` is the tile's im2col matrix (for a 1×1 stride-1 convolution the input
//! itself).
//!
//! Why not gemm (which these layers used, and which CPUs without AVX2 still use): gemm picks its
//! own SIMD level and blocking, so a seeded training run gave different weight bits on AVX2 and
//! AVX-512 CPUs in the 1×1 layers (BENCHMARKS.md). Here every weight's sum is built from FMA
//! chains whose order depends on neither the vector width, the block shape nor the thread count
//! (chain lengths and the [`DW_PARTS`] tile ranges are fixed), so AVX2 and AVX-512 give the same
//! bits. Two layouts, by the number of output channels:
//!
//! * **16 or more** (every layer but a head): each weight is one SIMD lane. A chain of [`CHAIN`]
//!   voxels of dY is transposed to voxel-major, and a block of 48 channels (lanes) × 8 kernel
//!   entries `q` (rows, broadcast from the column rows) runs one FMA chain per weight in voxel
//!   order from zero, then adds it to the weight's accumulator — 24 zmm accumulators, 3 loads and
//!   8 broadcasts per 24 FMAs, no horizontal sums.
//! * **Fewer** (a segmentation head: a dY row per class): the lanes run along the voxels — lane
//!   `l` of weight `(co, q)` sums voxels `l, l + 16, …` of every tile of its part, kept in memory
//!   between tiles (`Cout · Cin·k³ · 16` floats: small, as Cout is) — and each weight's 16 lanes
//!   are added in one fixed scalar order at the end.
//!
//! [`DW_PARTS`]: super::conv3d::DW_PARTS

use rayon::prelude::*;

use super::conv3d::{ConvGeom, dw_parts, im2col};
use super::conv3d_direct::channel_groups;
use super::isa::{Isa, isa};

/// f32 lanes of one zmm register (AVX2 covers one with two ymm).
const LANES: usize = 16;
/// Lane vectors per block: 48 lanes.
const MV: usize = 3;
/// Rows per block.
const NR: usize = 8;
/// Voxels per FMA chain: a block's slice of the transposed chain (128 × 48 floats, 24 KiB) stays
/// in L1 while every row block of the kernel entries passes it (8 rows × 128 voxels each, from
/// L2); each lane's chain is added to memory once per 128 FMAs.
const CHAIN: usize = 128;
/// dY rows × column rows of the voxel-lane block.
const VA: usize = 2;
const VB: usize = 4;

/// `out[j][i] += Σ_{v < n} rows[j][v] · lt[v·ld + i]` for rows `j < nr` and lanes `i < 16·M` (the
/// block of `M` vectors), each sum one FMA chain in `v` order from zero.
type BlockFn = unsafe fn(*const f32, usize, [*const f32; NR], usize, usize, [*mut f32; NR]);
/// `acc[c·stride + i·16 + l] += Σ_{v < n, v ≡ l (16)} a[c][v] · b[i][v]` for `c < na`, `i < nb`,
/// each lane one FMA chain in `v` order, continuing from the lane's value in `acc`.
type VoxelFn = unsafe fn([*const f32; VA], usize, [*const f32; VB], usize, usize, *mut f32, usize);

/// The microkernels of one SIMD level.
#[derive(Clone, Copy)]
struct Kernels {
    /// Channel lanes, for M = 1, 2, 3 vectors.
    blocks: [BlockFn; MV],
    /// Voxel lanes.
    voxel: VoxelFn,
}

impl Kernels {
    /// The kernels of `isa`; `None` for [`Isa::Baseline`] and for a level this CPU lacks.
    fn for_isa(isa: Isa) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        return super::isa::select(
            isa,
            || Self {
                blocks: [block_avx512::<1>, block_avx512::<2>, block_avx512::<3>],
                voxel: voxel_avx512,
            },
            || Self {
                blocks: [block_avx2::<1>, block_avx2::<2>, block_avx2::<3>],
                voxel: voxel_avx2,
            },
        );
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = isa; // no hand-written kernels on other architectures
            None
        }
    }
}

/// Kernel gradient of any convolution: `x` (B, Cin, D, H, W), `dy` (B, Cout, OD, OH, OW) →
/// (Cout, Cin·k³); `None` where the CPU has neither AVX2 nor AVX-512 (the caller then takes the
/// gemm path).
pub(crate) fn conv_dw_simd(x: &[f32], dy: &[f32], g: &ConvGeom) -> Option<Vec<f32>> {
    let kern = Kernels::for_isa(isa())?;
    Some(kernel_grad(x, dy, g, kern))
}

fn kernel_grad(x: &[f32], dy: &[f32], g: &ConvGeom, kern: Kernels) -> Vec<f32> {
    if g.cout >= LANES {
        channel_lanes(x, dy, g, kern.blocks)
    } else {
        voxel_lanes(x, dy, g, kern.voxel)
    }
}

/// One tile's rows: dY row `co` and column row `q`, `nv` voxels each.
struct TileRows<'a> {
    dy: &'a [f32],
    dy_stride: usize,
    cols: &'a [f32],
    col_stride: usize,
    nv: usize,
}

impl TileRows<'_> {
    fn dy(&self, co: usize) -> &[f32] {
        &self.dy[co * self.dy_stride..][..self.nv]
    }
    fn col(&self, q: usize) -> &[f32] {
        &self.cols[q * self.col_stride..][..self.nv]
    }
}

/// The tiles of a work item: tile count per sample, and a walker that calls `f` with the rows of
/// the tiles of range `range` (`per` tiles each, from `dw_parts`) in order (building each one's im2col matrix in `col`, except for a 1×1
/// stride-1 convolution, whose input is its column matrix).
struct Tiles<'a> {
    x: &'a [f32],
    dy: &'a [f32],
    g: &'a ConvGeom,
    rpt: usize,
    ntiles: usize,
}

impl<'a> Tiles<'a> {
    fn new(x: &'a [f32], dy: &'a [f32], g: &'a ConvGeom) -> Self {
        let rpt = g.rows_per_tile();
        let ntiles = (g.od * g.oh).div_ceil(rpt);
        Self {
            x,
            dy,
            g,
            rpt,
            ntiles,
        }
    }

    /// All tiles of all samples.
    fn count(&self) -> usize {
        self.g.b * self.ntiles
    }

    fn walk(&self, (range, per): (usize, usize), col: &mut Vec<f32>, mut f: impl FnMut(&TileRows)) {
        let (t0, t1) = (range * per, ((range + 1) * per).min(self.count()));
        let g = self.g;
        let (pin, pout, kk, rows) = (g.in_vol(), g.out_vol(), g.kk(), g.od * g.oh);
        for t in t0..t1 {
            let (b, tile) = (t / self.ntiles, t % self.ntiles);
            let (r0, r1) = (tile * self.rpt, ((tile + 1) * self.rpt).min(rows));
            let (nv, p0) = ((r1 - r0) * g.ow, r0 * g.ow);
            let x_b = &self.x[b * g.cin * pin..(b + 1) * g.cin * pin];
            let (cols, col_stride) = if g.is_pointwise() {
                (&x_b[p0..], pin)
            } else {
                col.resize(kk * nv, 0.0);
                im2col(x_b, g, r0, r1, col);
                (&col[..], nv)
            };
            f(&TileRows {
                dy: &self.dy[b * g.cout * pout + p0..],
                dy_stride: pout,
                cols,
                col_stride,
                nv,
            });
        }
    }
}

/// The channel-lane layout (module doc). Work items are (range of tiles, group of 48-channel
/// blocks), each with its own accumulator (`Cin·k³ ×` the group's channels padded to whole
/// vectors, f32); the ranges are added in f64 at the end, like the other kernel gradients.
fn channel_lanes(x: &[f32], dy: &[f32], g: &ConvGeom, blocks: [BlockFn; MV]) -> Vec<f32> {
    let kk = g.kk();
    let tiles = Tiles::new(x, dy, g);
    let nlb = g.cout.div_ceil(MV * LANES);
    let (nranges, per_range) = dw_parts(tiles.count());
    let (groups, per_group) = channel_groups(nranges, nlb);
    let partials: Vec<(usize, usize, Vec<f32>)> = (0..nranges * groups)
        .into_par_iter()
        .map(|item| {
            let (range, grp) = (item / groups, item % groups);
            let c0 = (grp * per_group * MV * LANES).min(g.cout);
            let c1 = ((grp + 1) * per_group * MV * LANES).min(g.cout);
            // The group's channels, padded to whole vectors (zeros in the transposed chain).
            let ld = (c1 - c0).div_ceil(LANES) * LANES;
            let mut acc = vec![0f32; kk * ld];
            if c0 >= c1 {
                return (c0, ld, acc);
            }
            // The chain's dY, voxel-major: lt[v · ld + co − c0]. The padding lanes past c1 − c0
            // are zeroed here once and never written.
            let (mut col, mut lt) = (Vec::new(), vec![0f32; CHAIN * ld]);
            tiles.walk((range, per_range), &mut col, |tr| {
                for v0 in (0..tr.nv).step_by(CHAIN) {
                    let n = CHAIN.min(tr.nv - v0);
                    for co in c0..c1 {
                        let dst = lt[co - c0..].iter_mut().step_by(ld);
                        for (d, &s) in dst.zip(&tr.dy(co)[v0..v0 + n]) {
                            *d = s;
                        }
                    }
                    let base = acc.as_mut_ptr();
                    // Lane blocks outside, so that a block's slice of lt stays in L1 while the
                    // row blocks pass.
                    for lv in (0..ld / LANES).step_by(MV) {
                        let m = MV.min(ld / LANES - lv);
                        for q0 in (0..kk).step_by(NR) {
                            let nr = NR.min(kk - q0);
                            // A partial block repeats its last row; only nr rows are stored.
                            let rows: [*const f32; NR] =
                                std::array::from_fn(|j| tr.col(q0 + j.min(nr - 1))[v0..].as_ptr());
                            // SAFETY (pointer arithmetic): row q0 + min(j, nr − 1) < kk, lane
                            // lv·16 < ld.
                            let out: [*mut f32; NR] = std::array::from_fn(|j| unsafe {
                                base.add((q0 + j.min(nr - 1)) * ld + lv * LANES)
                            });
                            // SAFETY: the CPU runs the block (`Kernels::for_isa`); lt holds
                            // n ≤ CHAIN rows of ld floats, read at lanes lv·16 .. (lv + m)·16 ≤
                            // ld; each row pointer has n floats (a column row's voxels v0 ..
                            // v0 + n ≤ nv); each out row has (lv + m)·16 ≤ ld floats of acc's
                            // row, and only the nr distinct rows are written.
                            unsafe {
                                blocks[m - 1](lt[lv * LANES..].as_ptr(), ld, rows, nr, n, out)
                            };
                        }
                    }
                }
            });
            (c0, ld, acc)
        })
        .collect();
    // The parts added in f64 in the accumulators' (q, co) layout, then transposed to (co, q) in
    // 32 × 32 tiles (a scattered sum into (co, q) cost more than the kernel in 10⁶-weight layers).
    let mut sum = vec![0f64; kk * g.cout];
    for (c0, ld, acc) in partials.iter().filter(|(_, ld, _)| *ld > 0) {
        let w = (c0 + ld).min(g.cout) - c0;
        for (dst, src) in sum.chunks_exact_mut(g.cout).zip(acc.chunks_exact(*ld)) {
            for (d, &v) in dst[*c0..c0 + w].iter_mut().zip(&src[..w]) {
                *d += v as f64;
            }
        }
    }
    const T: usize = 32;
    let mut dw = vec![0f32; g.cout * kk];
    for q0 in (0..kk).step_by(T) {
        for co0 in (0..g.cout).step_by(T) {
            for q in q0..(q0 + T).min(kk) {
                for co in co0..(co0 + T).min(g.cout) {
                    dw[co * kk + q] = sum[q * g.cout + co] as f32;
                }
            }
        }
    }
    dw
}

/// The voxel-lane layout (module doc). Work items are (range of tiles, group of `q` blocks),
/// each with its own lanes (`Cout × q_group × 16` f32), reduced per weight and then added over
/// the ranges in f64.
fn voxel_lanes(x: &[f32], dy: &[f32], g: &ConvGeom, voxel: VoxelFn) -> Vec<f32> {
    let kk = g.kk();
    let tiles = Tiles::new(x, dy, g);
    let nqb = kk.div_ceil(VB);
    let (nranges, per_range) = dw_parts(tiles.count());
    // Groups of entries only where the column rows are the input's: elsewhere each group would
    // build the tile's whole im2col matrix for its few rows.
    let (groups, per_group) = if g.is_pointwise() {
        channel_groups(nranges, nqb)
    } else {
        (1, nqb)
    };
    let partials: Vec<(usize, Vec<f32>)> = (0..nranges * groups)
        .into_par_iter()
        .map(|item| {
            let (range, grp) = (item / groups, item % groups);
            let q0 = (grp * per_group * VB).min(kk);
            let q1 = ((grp + 1) * per_group * VB).min(kk);
            let nq = q1 - q0;
            if nq == 0 {
                return (q0, Vec::new());
            }
            // lanes[(co · nq + q − q0) · 16 + l]
            let mut lanes = vec![0f32; g.cout * nq * LANES];
            let mut col = Vec::new();
            tiles.walk((range, per_range), &mut col, |tr| {
                for qb in (q0..q1).step_by(VB) {
                    let nb = VB.min(q1 - qb);
                    let b: [*const f32; VB] =
                        std::array::from_fn(|i| tr.col(qb + i.min(nb - 1)).as_ptr());
                    for ca in (0..g.cout).step_by(VA) {
                        let na = VA.min(g.cout - ca);
                        let a: [*const f32; VA] =
                            std::array::from_fn(|c| tr.dy(ca + c.min(na - 1)).as_ptr());
                        let out = &mut lanes[(ca * nq + qb - q0) * LANES..];
                        // SAFETY: the CPU runs the kernel (`Kernels::for_isa`); every row has nv
                        // floats (`TileRows`); out holds, for c < na and i < nb, the 16 lanes at
                        // c·nq·16 + i·16 (ca + c < Cout rows of nq·16 from (ca·nq + qb − q0)·16,
                        // qb + i < q1), and only those are written.
                        unsafe { voxel(a, na, b, nb, tr.nv, out.as_mut_ptr(), nq * LANES) };
                    }
                }
            });
            // Each weight's 16 lanes added in one fixed order (a tree of halves).
            let sums = lanes
                .chunks_exact(LANES)
                .map(|l| {
                    let h: [f32; 8] = std::array::from_fn(|i| l[i] + l[i + 8]);
                    let q: [f32; 4] = std::array::from_fn(|i| h[i] + h[i + 4]);
                    (q[0] + q[2]) + (q[1] + q[3])
                })
                .collect();
            (q0, sums)
        })
        .collect();
    let mut dw = vec![0f64; g.cout * kk];
    for (q0, sums) in partials.iter().filter(|(_, s)| !s.is_empty()) {
        let nq = sums.len() / g.cout;
        for (co, row) in sums.chunks_exact(nq).enumerate() {
            for (d, &v) in dw[co * kk + q0..][..nq].iter_mut().zip(row) {
                *d += v as f64;
            }
        }
    }
    dw.into_iter().map(|v| v as f32).collect()
}

/// The voxel-lane kernel: `VA × VB` zmm accumulators, loaded from `acc` and stored back, 2 + 4
/// loads per 8 FMAs; the last `n % 16` voxels through masked loads (zeros in the other lanes add
/// nothing).
///
/// # Safety
/// The CPU must support AVX-512F; every row readable at `n` floats; `acc` readable and writable
/// at `c·stride + i·16 + l` for `c < na`, `i < nb`, `l < 16`, and not aliased by the rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn voxel_avx512(
    a: [*const f32; VA],
    na: usize,
    b: [*const f32; VB],
    nb: usize,
    n: usize,
    acc: *mut f32,
    stride: usize,
) {
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_maskz_loadu_ps, _mm512_setzero_ps,
        _mm512_storeu_ps,
    };
    let mut s: [[__m512; VB]; VA] = [[_mm512_setzero_ps(); VB]; VA];
    let (full, rest) = (n / LANES, n % LANES);
    // SAFETY: every offset stays inside the extents the caller guarantees: full vectors end at
    // full·16 ≤ n, the masked loads read lanes < rest only, inside [full·16, n).
    unsafe {
        for (c, sc) in s.iter_mut().enumerate().take(na) {
            for (i, si) in sc.iter_mut().enumerate().take(nb) {
                *si = _mm512_loadu_ps(acc.add(c * stride + i * LANES));
            }
        }
        // One 16-voxel step: every dY row against every column row.
        let mut step = |av: [__m512; VA], bv: [__m512; VB]| {
            for (i, bv) in bv.iter().enumerate() {
                for (sc, av) in s.iter_mut().zip(&av) {
                    sc[i] = _mm512_fmadd_ps(*av, *bv, sc[i]);
                }
            }
        };
        for v in 0..full {
            let ld = |p: *const f32| _mm512_loadu_ps(p.add(v * LANES));
            step(a.map(ld), b.map(ld));
        }
        if rest > 0 {
            let m = ((1u32 << rest) - 1) as u16;
            let ld = |p: *const f32| _mm512_maskz_loadu_ps(m, p.add(full * LANES));
            step(a.map(ld), b.map(ld));
        }
        for (c, sc) in s.iter().enumerate().take(na) {
            for (i, si) in sc.iter().enumerate().take(nb) {
                _mm512_storeu_ps(acc.add(c * stride + i * LANES), *si);
            }
        }
    }
}

/// [`voxel_avx512`] for AVX2, bit for bit: the lanes 0–7 and 8–15 of every 16-voxel step in two
/// passes over the rows (8 ymm accumulators each, + 2 + 4 row vectors), so every lane sums the
/// same products in the same order.
///
/// # Safety
/// As [`voxel_avx512`], with AVX2 and FMA instead of AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn voxel_avx2(
    a: [*const f32; VA],
    na: usize,
    b: [*const f32; VB],
    nb: usize,
    n: usize,
    acc: *mut f32,
    stride: usize,
) {
    use std::arch::x86_64::{
        __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_maskload_ps, _mm256_setr_epi32,
        _mm256_setzero_ps, _mm256_storeu_ps,
    };
    const L: usize = 8;
    let (full, rest) = (n / LANES, n % LANES);
    for h in 0..2 {
        // Lanes h·8 + j < rest of the last, partial step.
        let on = |j: usize| if h * L + j < rest { -1 } else { 0 };
        let mask = _mm256_setr_epi32(on(0), on(1), on(2), on(3), on(4), on(5), on(6), on(7));
        let mut s: [[__m256; VB]; VA] = [[_mm256_setzero_ps(); VB]; VA];
        // SAFETY: as in `voxel_avx512`; the pointer of an empty upper half may lie past the
        // row's end, hence wrapping_add: it is never read through.
        unsafe {
            for (c, sc) in s.iter_mut().enumerate().take(na) {
                for (i, si) in sc.iter_mut().enumerate().take(nb) {
                    *si = _mm256_loadu_ps(acc.add(c * stride + i * LANES + h * L));
                }
            }
            let mut step = |av: [__m256; VA], bv: [__m256; VB]| {
                for (i, bv) in bv.iter().enumerate() {
                    for (sc, av) in s.iter_mut().zip(&av) {
                        sc[i] = _mm256_fmadd_ps(*av, *bv, sc[i]);
                    }
                }
            };
            for v in 0..full {
                let ld = |p: *const f32| _mm256_loadu_ps(p.add(v * LANES + h * L));
                step(a.map(ld), b.map(ld));
            }
            if rest > 0 {
                let off = full * LANES + h * L;
                let ld = |p: *const f32| _mm256_maskload_ps(p.wrapping_add(off), mask);
                step(a.map(ld), b.map(ld));
            }
            for (c, sc) in s.iter().enumerate().take(na) {
                for (i, si) in sc.iter().enumerate().take(nb) {
                    _mm256_storeu_ps(acc.add(c * stride + i * LANES + h * L), *si);
                }
            }
        }
    }
}

/// The block for `M` lane vectors: `M × 8` zmm accumulators (24 at M = 3), per voxel `M` loads of
/// the transposed chain and 8 broadcasts of the rows' values.
///
/// # Safety
/// The CPU must support AVX-512F; `lt` must be readable at `v·ld + i` for `v < n`, `i < 16·M`;
/// every row at `n` floats; every `out[j]`, `j < nr`, readable and writable at `16·M` floats and
/// not aliased by another (`out[j]` for `j ≥ nr` is ignored).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512<const M: usize>(
    lt: *const f32,
    ld: usize,
    rows: [*const f32; NR],
    nr: usize,
    n: usize,
    out: [*mut f32; NR],
) {
    use std::arch::x86_64::{
        __m512, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
        _mm512_storeu_ps,
    };
    let mut acc: [[__m512; M]; NR] = [[_mm512_setzero_ps(); M]; NR];
    // SAFETY: every offset stays inside the extents the caller guarantees.
    unsafe {
        for v in 0..n {
            let l: [__m512; M] =
                std::array::from_fn(|m| _mm512_loadu_ps(lt.add(v * ld + m * LANES)));
            for (j, row) in rows.iter().enumerate() {
                let r = _mm512_set1_ps(*row.add(v));
                for m in 0..M {
                    acc[j][m] = _mm512_fmadd_ps(l[m], r, acc[j][m]);
                }
            }
        }
        for (j, o) in out.iter().enumerate().take(nr) {
            for (m, a) in acc[j].iter().enumerate() {
                let p = o.add(m * LANES);
                _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), *a));
            }
        }
    }
}

/// [`block_avx512`] for AVX2, bit for bit (every lane's chain has the same terms in the same
/// order; a test checks the bits): per 16-lane vector and 4 rows, 8 ymm accumulators (4 rows ×
/// 2 halves) over the whole chain, + 2 chain loads and 1 broadcast of the 16 registers.
///
/// # Safety
/// As [`block_avx512`], with AVX2 and FMA instead of AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<const M: usize>(
    lt: *const f32,
    ld: usize,
    rows: [*const f32; NR],
    nr: usize,
    n: usize,
    out: [*mut f32; NR],
) {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };
    const L: usize = 8;
    const J: usize = 4;
    for m in 0..M {
        for j0 in (0..NR).step_by(J) {
            if j0 >= nr {
                break;
            }
            // acc[j · 2 + half]
            let mut acc: [__m256; J * 2] = [_mm256_setzero_ps(); J * 2];
            // SAFETY: every offset stays inside the extents the caller guarantees.
            unsafe {
                for v in 0..n {
                    let p = lt.add(v * ld + m * LANES);
                    let l = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(L))];
                    for j in 0..J {
                        let r = _mm256_set1_ps(*rows[j0 + j].add(v));
                        for h in 0..2 {
                            acc[j * 2 + h] = _mm256_fmadd_ps(l[h], r, acc[j * 2 + h]);
                        }
                    }
                }
                for j in 0..J.min(nr - j0) {
                    for h in 0..2 {
                        let p = out[j0 + j].add(m * LANES + h * L);
                        _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), acc[j * 2 + h]));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// Naive f64 kernel gradient of any cubic convolution: Σ dy[b][co][o] · x[b][ci][o·s + k − p].
    fn naive_dw(x: &[f64], dy: &[f64], g: &ConvGeom) -> Vec<f64> {
        let k = g.k;
        let mut dw = vec![0f64; g.cout * g.kk()];
        let at = |o: usize, kx: usize, n: usize| (o * g.s + kx).checked_sub(g.p).filter(|&i| i < n);
        for b in 0..g.b {
            for co in 0..g.cout {
                for ci in 0..g.cin {
                    for t in 0..k * k * k {
                        let (kd, kh, kw) = (t / (k * k), t / k % k, t % k);
                        let mut acc = 0.0;
                        for od in 0..g.od {
                            let Some(id) = at(od, kd, g.d) else { continue };
                            for oh in 0..g.oh {
                                let Some(ih) = at(oh, kh, g.h) else { continue };
                                for ow in 0..g.ow {
                                    let Some(iw) = at(ow, kw, g.w) else { continue };
                                    acc += dy[((b * g.cout + co) * g.od + od) * g.oh * g.ow
                                        + oh * g.ow
                                        + ow]
                                        * x[((b * g.cin + ci) * g.d + id) * g.h * g.w
                                            + ih * g.w
                                            + iw];
                                }
                            }
                        }
                        dw[(co * g.cin + ci) * k * k * k + t] += acc;
                    }
                }
            }
        }
        dw
    }

    /// (batch, Cin, Cout, (D, H, W), k, stride, padding).
    type Geometry = (
        usize,
        usize,
        usize,
        (usize, usize, usize),
        usize,
        usize,
        usize,
    );

    const GEOMETRIES: [Geometry; 12] = [
        // Fewer than 16 output channels (voxel lanes): 1×1 stride 1 with 5, 2 and 33 entries
        // (partial blocks of 4 entries), 3 and 1 channels (partial pairs), tiles of 60, 7 and
        // 960 voxels (a partial last vector, one shorter than a vector); batch 2.
        (2, 5, 3, (4, 3, 5), 1, 1, 0),
        (1, 2, 1, (1, 1, 7), 1, 1, 0),
        (2, 33, 2, (6, 8, 20), 1, 1, 0),
        // ... stride 2 (108 entries: im2col rows), and 1×1 with stride 2 (3 entries).
        (1, 4, 9, (16, 18, 34), 3, 2, 1),
        (1, 3, 2, (5, 4, 3), 1, 2, 0),
        // 16 or more output channels (channel lanes): 17 (one padded vector pair, M = 2), one
        // long 1×1 tile of many chains (the last partial), 3 entries (a partial row block).
        (1, 3, 17, (9, 17, 31), 1, 1, 0),
        (2, 3, 16, (7, 6, 5), 3, 2, 1),
        // 50 channels (lane blocks of 3 and 1 vectors), 135 entries, stride 2, batch 2; 100
        // channels (blocks of 3, 3 and 1 vectors).
        (2, 5, 50, (7, 6, 5), 3, 2, 1),
        (1, 2, 100, (5, 6, 7), 3, 2, 1),
        // 2×2×2 stride 2 (the transposed convolution's dW geometry), both layouts.
        (2, 6, 5, (8, 10, 12), 2, 2, 0),
        (1, 6, 20, (8, 10, 12), 2, 2, 0),
        // Many tiles (more than DW_PARTS ranges) and a 1-voxel-wide output.
        (2, 300, 16, (40, 33, 1), 3, 2, 1),
    ];

    /// The kernels of every SIMD level this CPU runs, with their level.
    fn levels() -> Vec<(Isa, Kernels)> {
        let levels: Vec<_> = Isa::all_supported()
            .into_iter()
            .filter_map(|i| Some((i, Kernels::for_isa(i)?)))
            .collect();
        if levels.is_empty() {
            eprintln!("no AVX2 or AVX-512F on this CPU: SIMD dW kernels not tested");
        }
        levels
    }

    #[test]
    fn every_level_matches_the_naive_sum_with_the_same_bits() {
        let levels = levels();
        for (bn, cin, cout, dhw, k, s, p) in GEOMETRIES {
            let g = ConvGeom::new(bn, cin, cout, dhw, k, s, p).expect("geometry");
            let mut rng = Lcg(13 + (cin * 5 + cout) as u64);
            let x = rng.vec(g.b * g.cin * g.in_vol());
            let dy = rng.vec(g.b * g.cout * g.out_vol());
            let want = naive_dw(&f64v(&x), &f64v(&dy), &g);
            let mut first: Option<Vec<u32>> = None;
            for &(isa, kern) in &levels {
                let dw = kernel_grad(&x, &dy, &g, kern);
                assert_close(&format!("SIMD dW {isa} {g:?}"), &dw, &want, 1e-5);
                let bits: Vec<u32> = dw.iter().map(|v| v.to_bits()).collect();
                match &first {
                    None => first = Some(bits),
                    Some(f) => assert!(*f == bits, "SIMD dW {isa} {g:?}: other bits"),
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // One tile and 5 blocks of lanes (200 channels: 48-lane blocks) or of rows (20 entries,
        // 4 per block): the blocks are split into channel groups by the thread count, and with
        // 2 threads into 3 groups and an empty fourth.
        for (cin, cout, k, s, p) in [(3, 200, 3, 2, 1), (20, 3, 1, 1, 0)] {
            let g = ConvGeom::new(1, cin, cout, (4, 6, 8), k, s, p).expect("geometry");
            assert_eq!((g.od * g.oh).div_ceil(g.rows_per_tile()), 1);
            let mut rng = Lcg(31);
            let x = rng.vec(g.b * g.cin * g.in_vol());
            let dy = rng.vec(g.b * g.cout * g.out_vol());
            let want = naive_dw(&f64v(&x), &f64v(&dy), &g);
            for (isa, kern) in levels() {
                let run = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("pool");
                    let dw = pool.install(|| kernel_grad(&x, &dy, &g, kern));
                    assert_close(
                        &format!("SIMD dW {isa} {threads} threads"),
                        &dw,
                        &want,
                        1e-5,
                    );
                    dw.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
                };
                let one = run(1);
                for threads in [2, 3, 7] {
                    assert!(
                        run(threads) == one,
                        "{isa} {g:?}: {threads} threads differ from 1"
                    );
                }
            }
        }
    }

    #[test]
    fn the_geometries_reach_every_path() {
        // A long 1×1 tile (several chains, a partial last one) and a many-tile stride-2 input.
        let g = ConvGeom::new(1, 3, 17, (9, 17, 31), 1, 1, 0).expect("geometry");
        let nv = g.rows_per_tile().min(g.od * g.oh) * g.ow;
        assert!(nv > CHAIN && !nv.is_multiple_of(CHAIN), "{nv}");
        let g = ConvGeom::new(2, 300, 16, (40, 33, 1), 3, 2, 1).expect("geometry");
        assert!(g.b * (g.od * g.oh).div_ceil(g.rows_per_tile()) > super::super::conv3d::DW_PARTS);
    }

    #[test]
    fn no_block_at_the_baseline_level_or_above_the_cpu() {
        assert!(Kernels::for_isa(Isa::Baseline).is_none());
        let top = Isa::detected();
        for i in [Isa::Avx2, Isa::Avx512] {
            assert_eq!(Kernels::for_isa(i).is_some(), i <= top, "{i}");
        }
    }
}
