//! Stride-1 3×3×3 convolution with register-blocked AVX-512 and AVX2 microkernels (x86-64 only).
//!
//! Why not gemm here: the stride-1 path builds one zero-padded input row per `(ci, kd, kh)`
//! ("im2row", see `conv3d.rs`) and gemm then re-packs that strip once per `kw` tap — about 12 % of
//! the U-Net forward went into gemm's packing, plus a copy of its padded-width result into the
//! output (profile in BENCHMARKS.md). The strip is already contiguous along W, which is exactly
//! the layout a microkernel wants for its vector loads: output voxels `j .. j + 48` of tap `kw`
//! read `strip[q][j + kw ..]`, and the kernel taps are broadcast from the weight rows where they
//! lie. So nothing is packed at all.
//!
//! Block: 48 output voxels (3 × 16 lanes) × 8 output channels = 24 zmm accumulators; one step of
//! the reduction (one strip row `q`, one tap `kw`) loads 3 vectors and broadcasts 8 weights for
//! 24 FMAs, so the loop is bound by the FMA units, not by loads. Output blocks run along the
//! padded strip (rows back to back), so narrow deep layers (W = 6, 12, 24) waste only the `k − 1`
//! padding columns per row; their junk results are never stored.
//!
//! The kernel gradient (`conv_dw_direct`) runs over the same strips, reducing along the voxels.
//!
//! AVX2 (8 lanes, 16 ymm registers) runs the same 48 × 8 block as six sub-blocks of 16 voxels ×
//! 4 channels (8 accumulators), each over the whole reduction: every output voxel sums the same
//! products in the same order as under AVX-512, so the two give identical bits; the kernel
//! gradient's AVX2 block keeps each AVX-512 accumulator as two halves, identical bits too.
//! Everything else (tiles, strips, chunks) is shared. CPUs with neither (and other architectures) take the
//! gemm paths (`conv3d::conv_fwd_s1`, `conv3d::conv_dw_gemm`); [`isa`] picks the level.

use rayon::prelude::*;

use super::conv3d::{ConvGeom, dw_parts, im2row_part};
use super::isa::{Isa, isa};
use super::{SyncPtr, zeroed};

/// f32 lanes of one zmm register: the unit of the blocks' extents (an AVX2 kernel covers it with
/// two ymm registers).
const LANES: usize = 16;
/// Vectors of output voxels per block.
const MV: usize = 3;
/// Output voxels per block.
const MB: usize = MV * LANES;
/// Output channels per block.
const NC: usize = 8;
/// The kernel size this microkernel is specialised for.
const K: usize = 3;

/// The forward block: see [`block_avx512`] for its contract.
type BlockFn = unsafe fn(*const f32, *const usize, usize, [*const f32; NC], *mut f32, bool);
/// The kernel-gradient block: see [`dw_block_avx512`] for its contract.
type DwFn = unsafe fn([*const f32; DC], [*const f32; DQ], usize, &mut [f32; DC * DQ * K]);

/// The microkernels of one SIMD level.
#[derive(Clone, Copy)]
struct Kernels {
    block: BlockFn,
    dw: DwFn,
}

impl Kernels {
    /// The kernels of `isa`; `None` for [`Isa::Baseline`] and for a level this CPU lacks, so
    /// that holding a `Kernels` means its instructions can run.
    fn for_isa(isa: Isa) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        return super::isa::select(
            isa,
            || Self {
                block: block_avx512,
                dw: dw_block_avx512,
            },
            || Self {
                block: block_avx2,
                dw: dw_block_avx2,
            },
        );
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = isa; // no hand-written kernels on other architectures
            None
        }
    }
}

/// True for the geometries the kernels are for: 3×3×3, stride 1, padding < 3, some channels
/// (the row clamp of the last channel block needs Cout ≥ 1).
fn fits(g: &ConvGeom) -> bool {
    g.k == K && g.s == 1 && g.p < K && g.cin * g.cout > 0
}

/// Stride-1 forward of a 3×3×3 convolution with padding `p < 3`: `x` (B, Cin, D, H, W), `wt`
/// (Cout, Cin·27), `bias` (Cout) → (B, Cout, OD, OH, OW); `None` when the geometry or the CPU is
/// not the one this kernel is for (the caller then takes the gemm path).
pub(crate) fn conv_fwd_s1_direct(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
) -> Option<Vec<f32>> {
    let kern = Kernels::for_isa(isa())?;
    fits(g).then(|| forward(x, wt, bias, g, kern))
}

/// Kernel planes `(ci, kd)` per reduction chunk (3 strip rows `kh` each, 63 rows). The chunk's
/// input rows are copied right before use and stay in L2, and one block's slice of them (63
/// rows × 4 cache lines, 16 KiB) stays in L1 while every output-channel block of the task
/// reads it. Without the chunks, layers with many input channels (Cin·9 = 2880 strip rows at
/// 320 channels) re-read each block's whole column from L2/L3 once per channel block.
const KP: usize = 21;

/// Strip columns per row tile (16 blocks): whole rows of at least this many columns. Large
/// enough that narrow deep layers (W = 6 .. 24) fill their 48-voxel blocks, small enough that a
/// task's accumulators (`Cout × t2`) stay in L2.
const TILE_COLS: usize = 16 * MB;

/// How a row tile's strip rows are laid out in the task's buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strips {
    /// Tiles stay inside one output depth plane, and each kernel plane `(ci, kd)` gets one
    /// "slab": the `R + k − 1` zero-padded input rows that the tile's `R` output rows read.
    /// Strip row `(ci, kd, kh)` is then the slab from its row `kh` on, so every input row is
    /// copied `(R + 2)/R` times per tile rather than 3 times (`im2row`): ~8 % of the forward
    /// went into those copies at 96³.
    Slab,
    /// Tiles run across depth planes and every strip row is copied (`im2row`): for planes
    /// narrower than a few blocks (the 3³ and 6³ layers), where per-plane tiles would leave
    /// most lanes of a block empty.
    Rows,
}

/// How a convolution's output rows are cut into tiles and how a tile's strip rows are built.
struct Plan {
    strips: Strips,
    /// Padded input width `W + 2p`.
    wp: usize,
    /// Output rows per tile (at most).
    rpt: usize,
    ntiles: usize,
    /// Tiles per output depth plane (slab layout only).
    tiles_per_plane: usize,
}

impl Plan {
    fn new(g: &ConvGeom) -> Self {
        let wp = g.w + 2 * g.p;
        let rows = g.od * g.oh;
        let strips = if g.oh * wp >= 4 * MB {
            Strips::Slab
        } else {
            Strips::Rows
        };
        // Equal tiles of at most TILE_COLS columns: `n` tiles of `ceil(len / n)` rows cover
        // `len` rows in exactly `n` tiles (the last one possibly shorter). With slabs the tiles
        // split each depth plane's rows; otherwise all rows at once, evenly, since with few
        // tiles (the 12³ layers have 3) one short tile leaves a thread idle.
        let split = |len: usize| {
            let n = len.div_ceil((TILE_COLS / wp).clamp(1, len.max(1)));
            let rpt = len.div_ceil(n.max(1));
            debug_assert_eq!(
                len.div_ceil(rpt.max(1)),
                n,
                "tiles of {rpt} rows over {len}"
            );
            (rpt, n)
        };
        let (rpt, ntiles, tiles_per_plane) = match strips {
            Strips::Slab => {
                let (rpt, per_plane) = split(g.oh);
                (rpt, g.od * per_plane, per_plane)
            }
            Strips::Rows => {
                let (rpt, n) = split(rows);
                (rpt, n, 0)
            }
        };
        Self {
            strips,
            wp,
            rpt,
            ntiles,
            tiles_per_plane,
        }
    }

    /// Output rows `[r0, r1)` (`r = od·OH + oh`) of a tile: consecutive in the output either way.
    fn rows(&self, g: &ConvGeom, tile: usize) -> (usize, usize) {
        match self.strips {
            Strips::Slab => {
                let (od, t) = (tile / self.tiles_per_plane, tile % self.tiles_per_plane);
                let base = od * g.oh;
                (base + t * self.rpt, base + ((t + 1) * self.rpt).min(g.oh))
            }
            Strips::Rows => (tile * self.rpt, ((tile + 1) * self.rpt).min(g.od * g.oh)),
        }
    }

    /// The strip columns of a tile of output rows `[r0, r1)` whose taps stay inside its strip
    /// (`t2 = (r1 − r0)·wp` long): `t2 − (k − 1)`. Output column `w` of tile row `rr` is strip
    /// column `rr·wp + w`, and `w < ow = wp − k + 1` keeps all its reads inside row `rr`'s
    /// segment; the other columns are junk, computed but never stored.
    fn strip_cols(&self, (r0, r1): (usize, usize)) -> usize {
        (r1 - r0) * self.wp - (K - 1)
    }

    /// Floats per kernel plane `(ci, kd)` in a chunk buffer for a tile of `nr` rows.
    fn plane_floats(&self, nr: usize) -> usize {
        match self.strips {
            Strips::Slab => (nr + K - 1) * self.wp,
            Strips::Rows => K * nr * self.wp,
        }
    }

    /// Sizes `col` for a chunk of a tile of `nr` rows: `KP` kernel planes, plus the slack the
    /// kernels' last (discarded) lanes read past the last strip row (`MB + k` floats).
    fn chunk_buffer(&self, nr: usize, col: &mut Vec<f32>) {
        col.resize(KP * self.plane_floats(nr) + MB + K, 0.0);
    }

    /// Builds the strip rows of kernel planes `[pl0, pl0 + kp)` for output rows `[r0, r1)` in
    /// `col` and their offsets (one per strip row `q`, in order) in `offs`. Every offset plus
    /// the strip length `(r1 − r0)·wp` stays within `kp·plane_floats`.
    fn fill_chunk(
        &self,
        (x_b, g): (&[f32], &ConvGeom),
        (r0, r1): (usize, usize),
        (pl0, kp): (usize, usize),
        col: &mut [f32],
        offs: &mut Vec<usize>,
    ) {
        let pf = self.plane_floats(r1 - r0);
        offs.clear();
        match self.strips {
            Strips::Slab => {
                slabs(x_b, g, (r0, r1), (pl0, pl0 + kp), col);
                for i in 0..kp {
                    offs.extend((0..K).map(|kh| i * pf + kh * self.wp));
                }
            }
            Strips::Rows => {
                let t2 = (r1 - r0) * self.wp;
                let (q0, kc) = (pl0 * K, kp * K);
                im2row_part(x_b, g, (r0, r1), (q0, q0 + kc), &mut col[..kc * t2]);
                offs.extend((0..kc).map(|q| q * t2));
            }
        }
    }
}

/// Splits `ncb` output-channel blocks into groups when `items` (tiles, or the kernel gradient's
/// tile ranges) are fewer than two per thread, so that every thread gets work (each group
/// rebuilds its tile's strips, a copy ~1/(3·Cout/G) of the group's FMAs). Returns (groups, blocks
/// per group). The only place the thread count enters: a group computes whole output channels,
/// each summed in the same order as without groups, so results do not depend on it.
pub(super) fn channel_groups(items: usize, ncb: usize) -> (usize, usize) {
    let want = 2 * rayon::current_num_threads();
    let groups = if items >= want {
        1
    } else {
        want.div_ceil(items.max(1)).min(ncb).max(1)
    };
    (groups, ncb.div_ceil(groups))
}

fn forward(x: &[f32], wt: &[f32], bias: Option<&[f32]>, g: &ConvGeom, kern: Kernels) -> Vec<f32> {
    let (pin, pout) = (g.in_vol(), g.out_vol());
    let plan = Plan::new(g);
    let (wp, ntiles) = (plan.wp, plan.ntiles);
    let npl = g.cin * K;
    let ncb = g.cout.div_ceil(NC);
    let (groups, per_group) = channel_groups(g.b * ntiles, ncb);
    let kk = g.kk();
    let mut y = zeroed(g.b * g.cout * pout);
    let yp = SyncPtr(y.as_mut_ptr());
    (0..g.b * ntiles * groups).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(col, acc, offs): &mut (Vec<f32>, Vec<f32>, Vec<usize>), item| {
            let (b, rest) = (item / (ntiles * groups), item % (ntiles * groups));
            let (tile, grp) = (rest / groups, rest % groups);
            let (cb0, cb1) = (grp * per_group, ((grp + 1) * per_group).min(ncb));
            if cb0 >= cb1 {
                return;
            }
            let (r0, r1) = plan.rows(g, tile);
            let n = plan.strip_cols((r0, r1));
            let nblocks = n.div_ceil(MB);
            plan.chunk_buffer(r1 - r0, col);
            let x_b = &x[b * g.cin * pin..(b + 1) * g.cin * pin];
            // Accumulators of every (block, channel block) of the task, NC × MB floats each.
            let tile_floats = NC * MB;
            acc.resize(nblocks * (cb1 - cb0) * tile_floats, 0.0);
            let acc_at = |jb: usize, cb: usize| (jb * (cb1 - cb0) + cb - cb0) * tile_floats;
            for pl0 in (0..npl).step_by(KP) {
                let kp = KP.min(npl - pl0);
                let (q0, kc) = (pl0 * K, kp * K);
                plan.fill_chunk((x_b, g), (r0, r1), (pl0, kp), col, offs);
                for jb in 0..nblocks {
                    for cb in cb0..cb1 {
                        // The kernel rows of this block's channels from tap (q0, kw = 0) on; rows
                        // past Cout (last block) repeat the last one, their results are dropped.
                        let wrows: [*const f32; NC] = std::array::from_fn(|c| {
                            let co = (cb * NC + c).min(g.cout - 1);
                            wt[co * kk + q0 * K..].as_ptr()
                        });
                        let at = acc_at(jb, cb);
                        // SAFETY: the CPU runs `kern` (`Kernels::for_isa`); the kernel reads
                        // col[offs[q] + jb·MB + kw + v] for q < kc, kw < 3, v < MB:
                        // offs[q] + t2 ≤ KP·plane_floats (`fill_chunk`), so with
                        // jb·MB < n ≤ t2 that is below the buffer's end (`chunk_buffer`);
                        // each kernel row holds (q0 + kc)·3 ≤ Cin·27 taps; `acc` holds
                        // tile_floats from `at`.
                        unsafe {
                            (kern.block)(
                                col.as_ptr().add(jb * MB),
                                offs.as_ptr(),
                                kc,
                                wrows,
                                acc.as_mut_ptr().add(at),
                                q0 > 0,
                            )
                        };
                    }
                }
            }
            // Store the valid columns of each strip row each block covers.
            for jb in 0..nblocks {
                let (j0, j1) = (jb * MB, ((jb + 1) * MB).min(n));
                let mut j = j0;
                while j < j1 {
                    let (rr, w0) = (j / wp, j % wp);
                    let end = (rr * wp + g.ow).min(j1);
                    if j < end {
                        let len = end - j;
                        for cb in cb0..cb1 {
                            let at = acc_at(jb, cb);
                            for c in 0..NC.min(g.cout - cb * NC) {
                                let co = cb * NC + c;
                                let bv = bias.map_or(0.0, |bias| bias[co]);
                                // SAFETY: this task alone writes output channels
                                // [cb0·NC, cb1·NC) of rows [r0, r1) of sample b; (co, r0 + rr,
                                // w0 .. w0 + len) is one of them.
                                let dst = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        yp.get()
                                            .add((b * g.cout + co) * pout + (r0 + rr) * g.ow + w0),
                                        len,
                                    )
                                };
                                let src = &acc[at + c * MB + (j - j0)..][..len];
                                for (d, s) in dst.iter_mut().zip(src) {
                                    *d = s + bv;
                                }
                            }
                        }
                    }
                    j = (rr + 1) * wp;
                }
            }
        },
    );
    y
}

/// Stride-1 kernel gradient of a 3×3×3 convolution with padding `p < 3`: `x` (B, Cin, D, H, W),
/// `dy` (B, Cout, OD, OH, OW) → (Cout, Cin·27); `None` when the geometry or the CPU is not the
/// one this kernel is for (the caller then takes the gemm path).
pub(crate) fn conv_dw_direct(x: &[f32], dy: &[f32], g: &ConvGeom) -> Option<Vec<f32>> {
    let kern = Kernels::for_isa(isa())?;
    fits(g).then(|| kernel_grad(x, dy, g, kern))
}

/// Output channels per dW block.
const DC: usize = 4;
/// Strip rows per dW block.
const DQ: usize = 2;

/// `dW[co][q·3 + kw] = Σ_j dY'[co][j] · strip[q][j + kw]`, where `dY'` is dY laid out on the
/// tile's padded strip columns with zeros in the `k − 1` junk columns of each row: the same
/// strips as the forward, reduced along the voxels instead of the reduction rows.
///
/// Work items are (range of tiles, group of channel blocks), each with its own accumulator
/// (`Cout_group × Cin·27` f32, summed over its tiles through the kernel); the ranges are added in
/// f64 at the end, like `conv3d::conv_dw`.
fn kernel_grad(x: &[f32], dy: &[f32], g: &ConvGeom, kern: Kernels) -> Vec<f32> {
    let (pin, pout, kk) = (g.in_vol(), g.out_vol(), g.kk());
    let plan = Plan::new(g);
    let (wp, ntiles) = (plan.wp, plan.ntiles);
    let npl = g.cin * K;
    let tiles = g.b * ntiles;
    let ndb = g.cout.div_ceil(DC);
    // A fixed number of tile ranges, whatever the thread count (`DW_PARTS` says why); cores
    // beyond two per range split the output channels instead.
    let (nranges, per_range) = dw_parts(tiles);
    let (groups, per_group) = channel_groups(nranges, ndb);
    let partials: Vec<(usize, Vec<f32>)> = (0..nranges * groups)
        .into_par_iter()
        .map(|item| {
            let (range, grp) = (item / groups, item % groups);
            let (db0, db1) = (grp * per_group, ((grp + 1) * per_group).min(ndb));
            let (co0, co1) = (db0 * DC, (db1 * DC).min(g.cout));
            let mut acc = vec![0f32; co1.saturating_sub(co0) * kk];
            if db0 >= db1 {
                return (grp, acc);
            }
            let (mut col, mut offs, mut dpad) = (Vec::new(), Vec::new(), Vec::new());
            for t in range * per_range..((range + 1) * per_range).min(tiles) {
                let (b, tile) = (t / ntiles, t % ntiles);
                let (r0, r1) = plan.rows(g, tile);
                let n = plan.strip_cols((r0, r1));
                let nvec = n.div_ceil(LANES);
                let dlen = nvec * LANES;
                // dY' of the group's channels, padded to whole blocks of DC with zero rows.
                dpad.clear();
                dpad.resize((db1 - db0) * DC * dlen, 0.0);
                for co in co0..co1 {
                    let src = &dy[(b * g.cout + co) * pout + r0 * g.ow..][..(r1 - r0) * g.ow];
                    let dst = &mut dpad[(co - co0) * dlen..][..dlen];
                    for (rr, row) in src.chunks_exact(g.ow).enumerate() {
                        dst[rr * wp..rr * wp + g.ow].copy_from_slice(row);
                    }
                }
                plan.chunk_buffer(r1 - r0, &mut col);
                let x_b = &x[b * g.cin * pin..(b + 1) * g.cin * pin];
                for pl0 in (0..npl).step_by(KP) {
                    let kp = KP.min(npl - pl0);
                    let (q0, kc) = (pl0 * K, kp * K);
                    plan.fill_chunk((x_b, g), (r0, r1), (pl0, kp), &mut col, &mut offs);
                    for qb in (0..kc).step_by(DQ) {
                        let nq = DQ.min(kc - qb);
                        // A partial block repeats its last row; those sums are dropped.
                        let rows: [*const f32; DQ] =
                            std::array::from_fn(|i| col[offs[qb + i.min(nq - 1)]..].as_ptr());
                        for db in db0..db1 {
                            let drows: [*const f32; DC] = std::array::from_fn(|c| {
                                dpad[((db - db0) * DC + c) * dlen..].as_ptr()
                            });
                            let mut sums = [0f32; DC * DQ * K];
                            // SAFETY: the CPU runs `kern` (`Kernels::for_isa`); each dY' row
                            // holds nvec·16 floats; each strip row is read at
                            // [0, nvec·16 + 2) ⊂ [0, t2 + 16 + 2), inside the buffer by
                            // `fill_chunk` / `chunk_buffer` (offs[q] + t2 ≤ KP·plane_floats,
                            // slack MB + K ≥ 16 + 2).
                            unsafe { (kern.dw)(drows, rows, nvec, &mut sums) };
                            for c in 0..DC {
                                let co = db * DC + c;
                                if co >= co1 {
                                    break;
                                }
                                let dst = &mut acc[(co - co0) * kk + (q0 + qb) * K..];
                                for i in 0..nq {
                                    for kw in 0..K {
                                        dst[i * K + kw] += sums[(c * DQ + i) * K + kw];
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (grp, acc)
        })
        .collect();
    let mut dw = vec![0f64; g.cout * kk];
    for (grp, acc) in &partials {
        let co0 = (grp * per_group * DC).min(g.cout);
        for (d, &v) in dw[co0 * kk..].iter_mut().zip(acc) {
            *d += v as f64;
        }
    }
    dw.into_iter().map(|v| v as f32).collect()
}

/// `sums[(c·DQ + i)·3 + kw] = Σ_{j < 16·nvec} d[c][j] · s[i][j + kw]`.
///
/// # Safety
/// The CPU must support AVX-512F; each `d[c]` must be readable at `16·nvec` floats and each
/// `s[i]` at `16·nvec + 2`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dw_block_avx512(
    d: [*const f32; DC],
    s: [*const f32; DQ],
    nvec: usize,
    sums: &mut [f32; DC * DQ * K],
) {
    use std::arch::x86_64::_mm512_setzero_ps;
    use std::arch::x86_64::{__m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_reduce_add_ps};
    let mut acc: [__m512; DC * DQ * K] = [_mm512_setzero_ps(); DC * DQ * K];
    // SAFETY: every pointer offset stays inside the extents the caller guarantees.
    unsafe {
        for v in 0..nvec {
            let mut dv = [_mm512_setzero_ps(); DC];
            for (c, dv) in dv.iter_mut().enumerate() {
                *dv = _mm512_loadu_ps(d[c].add(v * LANES));
            }
            for i in 0..DQ {
                for kw in 0..K {
                    let sv = _mm512_loadu_ps(s[i].add(v * LANES + kw));
                    for c in 0..DC {
                        let a = &mut acc[(c * DQ + i) * K + kw];
                        *a = _mm512_fmadd_ps(dv[c], sv, *a);
                    }
                }
            }
        }
    }
    for (o, a) in sums.iter_mut().zip(acc) {
        *o = _mm512_reduce_add_ps(a);
    }
}

/// Fills `col` with the slabs of kernel planes `[pl0, pl1)` (`pl = ci·k + kd`) for output rows
/// `[r0, r1)` of one depth plane: slab `pl − pl0` holds input rows `oh0 − p .. oh1 + k − 1 − p`
/// of input plane `od + kd − p`, each zero-padded to `wp` (zeros outside the input).
fn slabs(
    x_b: &[f32],
    g: &ConvGeom,
    (r0, r1): (usize, usize),
    (pl0, pl1): (usize, usize),
    col: &mut [f32],
) {
    let (p, wp) = (g.p, g.w + 2 * g.p);
    let (od, oh0) = (r0 / g.oh, r0 % g.oh);
    let nrows = r1 - r0 + K - 1;
    let plane = g.h * g.w;
    for pl in pl0..pl1 {
        let (ci, kd) = (pl / K, pl % K);
        let slab = &mut col[(pl - pl0) * nrows * wp..][..nrows * wp];
        let id = (od + kd).wrapping_sub(p);
        if id >= g.d {
            slab.fill(0.0);
            continue;
        }
        let xp = &x_b[ci * g.in_vol() + id * plane..][..plane];
        for (i, seg) in slab.chunks_exact_mut(wp).enumerate() {
            let ih = (oh0 + i).wrapping_sub(p);
            if ih >= g.h {
                seg.fill(0.0);
                continue;
            }
            seg[..p].fill(0.0);
            seg[p..p + g.w].copy_from_slice(&xp[ih * g.w..(ih + 1) * g.w]);
            seg[p + g.w..].fill(0.0);
        }
    }
}

/// `out[c·MB + v] (+)= Σ_{q < nq, kw < 3} strip[offs[q] + kw + v] · w[c][q·3 + kw]` for
/// `v < MB`, `c < NC`; `out`'s old values are added when `accumulate`. The kernel rows are read
/// where they are (8 sequential streams): packing them into broadcast order cost as much as
/// the convolution itself on the deep 6³ layers (11 MB of weights for 216 voxels).
///
/// # Safety
/// The CPU must support AVX-512F; `offs` must hold `nq` offsets, `strip` must be readable at
/// every index above, each `w[c]` at `nq·3` floats and `out` readable and writable at `NC·MB`
/// floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(
    strip: *const f32,
    offs: *const usize,
    nq: usize,
    w: [*const f32; NC],
    out: *mut f32,
    accumulate: bool,
) {
    use std::arch::x86_64::{__m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps};
    use std::arch::x86_64::{_mm512_setzero_ps, _mm512_storeu_ps};
    let mut acc: [__m512; MV * NC] = [_mm512_setzero_ps(); MV * NC];
    // SAFETY: every pointer offset stays inside the extents the caller guarantees.
    unsafe {
        if accumulate {
            for c in 0..NC {
                for v in 0..MV {
                    acc[v * NC + c] = _mm512_loadu_ps(out.add(c * MB + v * LANES));
                }
            }
        }
        for q in 0..nq {
            let row = strip.add(*offs.add(q));
            for kw in 0..K {
                let mut xv = [_mm512_setzero_ps(); MV];
                for (v, xv) in xv.iter_mut().enumerate() {
                    *xv = _mm512_loadu_ps(row.add(kw + v * LANES));
                }
                for c in 0..NC {
                    let wc = _mm512_set1_ps(*w[c].add(q * K + kw));
                    for v in 0..MV {
                        acc[v * NC + c] = _mm512_fmadd_ps(xv[v], wc, acc[v * NC + c]);
                    }
                }
            }
        }
        for c in 0..NC {
            for v in 0..MV {
                _mm512_storeu_ps(out.add(c * MB + v * LANES), acc[v * NC + c]);
            }
        }
    }
}

/// [`dw_block_avx512`] for AVX2, bit for bit: each zmm accumulator is held as two ymm halves
/// (lanes 0–7 and 8–15 of every 16-float step), so every lane sums the same products in the same
/// order as on AVX-512, and the halves are reduced as `_mm512_reduce_add_ps` reduces its register
/// (lower + upper half, then the 8-lane tree of [`hsum256`]); a test checks the bits. A seeded
/// training run's direct-kernel layers thus give the same weights on AVX2 and AVX-512 CPUs (the
/// other layers' kernel gradients likewise, `conv3d_dw_simd`). One
/// channel per pass (2 rows × 3 taps × 2 halves = 12 accumulators, 2 dY' halves and 1 strip
/// vector of the 16 registers): the strip rows are read once per channel, from L1.
///
/// # Safety
/// As [`dw_block_avx512`], with AVX2 and FMA instead of AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_block_avx2(
    d: [*const f32; DC],
    s: [*const f32; DQ],
    nvec: usize,
    sums: &mut [f32; DC * DQ * K],
) {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps,
    };
    const L: usize = 8;
    for c in 0..DC {
        // acc[(i·K + kw)·2 + half]
        let mut acc: [__m256; DQ * K * 2] = [_mm256_setzero_ps(); DQ * K * 2];
        // SAFETY: v·16 + 16 ≤ 16·nvec and v·16 + kw + 16 ≤ 16·nvec + 2: inside the caller's
        // extents.
        unsafe {
            for v in 0..nvec {
                let dv = [0, 1].map(|h| _mm256_loadu_ps(d[c].add(v * LANES + h * L)));
                for i in 0..DQ {
                    for kw in 0..K {
                        for (h, dv) in dv.iter().enumerate() {
                            let sv = _mm256_loadu_ps(s[i].add(v * LANES + h * L + kw));
                            let a = &mut acc[(i * K + kw) * 2 + h];
                            *a = _mm256_fmadd_ps(*dv, sv, *a);
                        }
                    }
                }
            }
        }
        for t in 0..DQ * K {
            sums[c * DQ * K + t] = hsum256(_mm256_add_ps(acc[t * 2], acc[t * 2 + 1]));
        }
    }
}

/// The sum of a ymm register's 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::{
        _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehl_ps, _mm_shuffle_ps,
        _mm256_castps256_ps128, _mm256_extractf128_ps,
    };
    let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let h = _mm_add_ps(q, _mm_movehl_ps(q, q));
    _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps::<0b01>(h, h)))
}

/// [`block_avx512`] for AVX2: the 48 × 8 block as six sub-blocks of 16 voxels (2 ymm) × 4
/// channels = 8 accumulators (enough FMAs in flight for 2 ports × 4 cycles of latency), plus 2
/// strip vectors and one broadcast weight. Each sub-block runs the whole reduction, so every
/// voxel's sum has the same terms in the same order as in [`block_avx512`] (bit-identical
/// results); the strip rows are read twice and the kernel taps three times as often, from L1.
/// 24 voxels × 4 channels (12 accumulators + 3 + 1 = all 16 registers) made the compiler keep
/// an accumulator on the stack, and ran the U-Net forward 20 % slower.
///
/// # Safety
/// As [`block_avx512`], with AVX2 and FMA instead of AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(
    strip: *const f32,
    offs: *const usize,
    nq: usize,
    w: [*const f32; NC],
    out: *mut f32,
    accumulate: bool,
) {
    use std::arch::x86_64::{__m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps};
    use std::arch::x86_64::{_mm256_setzero_ps, _mm256_storeu_ps};
    const L: usize = 8;
    /// Vectors and channels per sub-block.
    const SV: usize = 2;
    const SC: usize = 4;
    for v0 in (0..MB).step_by(SV * L) {
        for c0 in (0..NC).step_by(SC) {
            let mut acc: [__m256; SV * SC] = [_mm256_setzero_ps(); SV * SC];
            // SAFETY: the sub-block's reads and writes are a subset of the whole block's.
            unsafe {
                let o = |c: usize, v: usize| out.add((c0 + c) * MB + v0 + v * L);
                if accumulate {
                    for c in 0..SC {
                        for v in 0..SV {
                            acc[v * SC + c] = _mm256_loadu_ps(o(c, v));
                        }
                    }
                }
                for q in 0..nq {
                    let row = strip.add(*offs.add(q) + v0);
                    for kw in 0..K {
                        let mut xv = [_mm256_setzero_ps(); SV];
                        for (v, xv) in xv.iter_mut().enumerate() {
                            *xv = _mm256_loadu_ps(row.add(kw + v * L));
                        }
                        for c in 0..SC {
                            let wc = _mm256_set1_ps(*w[c0 + c].add(q * K + kw));
                            for v in 0..SV {
                                acc[v * SC + c] = _mm256_fmadd_ps(xv[v], wc, acc[v * SC + c]);
                            }
                        }
                    }
                }
                for c in 0..SC {
                    for v in 0..SV {
                        _mm256_storeu_ps(o(c, v), acc[v * SC + c]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conv3d::tests::naive_conv;
    use super::super::testutil::*;
    use super::*;

    /// The kernels of every SIMD level this CPU runs, with their level.
    fn kernel_sets() -> Vec<(Isa, Kernels)> {
        let sets: Vec<_> = Isa::all_supported()
            .into_iter()
            .filter_map(|i| Some((i, Kernels::for_isa(i)?)))
            .collect();
        if sets.is_empty() {
            eprintln!("no AVX2 or AVX-512F on this CPU: direct kernels not tested");
        }
        sets
    }

    /// The forward of every level against the naive f64 convolution; returns each level's result.
    fn check(
        bn: usize,
        cin: usize,
        cout: usize,
        dhw: (usize, usize, usize),
        p: usize,
    ) -> Vec<Vec<f32>> {
        let g = ConvGeom::new(bn, cin, cout, dhw, 3, 1, p).expect("geometry");
        assert!(fits(&g));
        let mut rng = Lcg(11 + (cin * 7 + cout) as u64);
        let x = rng.vec(g.b * g.cin * g.in_vol());
        let w = rng.vec(g.cout * g.kk());
        let b = rng.vec(g.cout);
        let yref = naive_conv(&f64v(&x), &f64v(&w), Some(&f64v(&b)), &g);
        kernel_sets()
            .into_iter()
            .map(|(isa, kern)| {
                let y = forward(&x, &w, Some(&b), &g, kern);
                assert_close(&format!("direct conv {isa} {g:?}"), &y, &yref, 1e-5);
                y
            })
            .collect()
    }

    /// (batch, Cin, Cout, (D, H, W), padding).
    type Geometry = (usize, usize, usize, (usize, usize, usize), usize);

    /// Geometries that reach every path of the tiling.
    const GEOMETRIES: [Geometry; 12] = [
        // Output widths below, at and above one 48-voxel block; channel counts that are not
        // multiples of the channel blocks (8 forward, 4 dW); batch 2; padding 0 and 1.
        (1, 3, 5, (4, 5, 6), 1),
        (2, 2, 9, (3, 4, 1), 1),
        (1, 4, 8, (5, 3, 50), 1),
        (1, 2, 17, (6, 7, 97), 1),
        (2, 3, 3, (5, 6, 7), 0),
        (1, 1, 1, (3, 3, 3), 0),
        // Slab layout (planes of ≥ 4 blocks): 40 rows of width 22 per plane, two tiles each.
        (1, 2, 3, (3, 40, 20), 1),
        // Slab layout with 150 kernel planes (8 chunks, the last partial), then with padding 0
        // and batch 2.
        (1, 50, 4, (4, 9, 30), 1),
        (2, 3, 3, (5, 12, 40), 0),
        // Row layout (narrow planes) across depth planes, several tiles.
        (1, 2, 3, (40, 6, 6), 1),
        // Cin·9 = 2700 strip rows: many reduction chunks, the last one partial.
        (1, 300, 10, (5, 7, 6), 1),
        // One row tile and 5 (forward) / 10 (dW) channel blocks: split into channel groups.
        (1, 2, 40, (3, 4, 5), 1),
    ];

    #[test]
    fn forward_matches_the_naive_convolution() {
        for (b, cin, cout, dhw, p) in GEOMETRIES {
            let ys = check(b, cin, cout, dhw, p);
            // Every level sums each voxel's products in the same order (see `block_avx2`).
            for y in ys.iter().skip(1) {
                assert!(
                    y.iter()
                        .zip(&ys[0])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "the SIMD levels differ on {:?}",
                    (b, cin, cout, dhw, p)
                );
            }
        }
    }

    /// Naive f64 kernel gradient of a cubic convolution: Σ dy[b][co][o] · x[b][ci][o·s + k − p].
    fn naive_dw(x: &[f64], dy: &[f64], g: &ConvGeom) -> Vec<f64> {
        let k = g.k;
        let mut dw = vec![0f64; g.cout * g.kk()];
        for b in 0..g.b {
            for co in 0..g.cout {
                for ci in 0..g.cin {
                    for (kd, kh, kw) in (0..k * k * k).map(|t| (t / (k * k), t / k % k, t % k)) {
                        let mut acc = 0.0;
                        for od in 0..g.od {
                            let Some(id) = (od + kd).checked_sub(g.p).filter(|&i| i < g.d) else {
                                continue;
                            };
                            for oh in 0..g.oh {
                                let Some(ih) = (oh + kh).checked_sub(g.p).filter(|&i| i < g.h)
                                else {
                                    continue;
                                };
                                for ow in 0..g.ow {
                                    let Some(iw) = (ow + kw).checked_sub(g.p).filter(|&i| i < g.w)
                                    else {
                                        continue;
                                    };
                                    acc += dy[((b * g.cout + co) * g.od + od) * g.oh * g.ow
                                        + oh * g.ow
                                        + ow]
                                        * x[((b * g.cin + ci) * g.d + id) * g.h * g.w
                                            + ih * g.w
                                            + iw];
                                }
                            }
                        }
                        dw[(co * g.cin + ci) * k * k * k + (kd * k + kh) * k + kw] += acc;
                    }
                }
            }
        }
        dw
    }

    fn check_dw(bn: usize, cin: usize, cout: usize, dhw: (usize, usize, usize), p: usize) {
        let g = ConvGeom::new(bn, cin, cout, dhw, 3, 1, p).expect("geometry");
        let mut rng = Lcg(5 + (cin * 3 + cout) as u64);
        let x = rng.vec(g.b * g.cin * g.in_vol());
        let dy = rng.vec(g.b * g.cout * g.out_vol());
        let want = naive_dw(&f64v(&x), &f64v(&dy), &g);
        let mut first: Option<Vec<f32>> = None;
        for (isa, kern) in kernel_sets() {
            let dw = kernel_grad(&x, &dy, &g, kern);
            assert_close(&format!("direct dW {isa} {g:?}"), &dw, &want, 1e-5);
            // Every level sums each weight's products in the same order (see `dw_block_avx2`).
            match &first {
                None => first = Some(dw),
                Some(f) => assert!(
                    dw.iter().zip(f).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "direct dW {isa} {g:?} differs in bits from the first level's"
                ),
            }
        }
    }

    #[test]
    fn kernel_gradient_matches_the_naive_sum() {
        for (b, cin, cout, dhw, p) in GEOMETRIES {
            check_dw(b, cin, cout, dhw, p);
        }
    }

    #[test]
    fn tiles_cover_every_output_row_once() {
        // The kernels write output rows through a shared raw pointer: tiles must partition them.
        for (d, h, w) in [
            (1, 1, 1),
            (3, 3, 3),
            (6, 6, 6),
            (12, 12, 12),
            (5, 40, 20),
            (2, 97, 300),
        ] {
            let g = ConvGeom::new(1, 1, 1, (d, h, w), 3, 1, 1).expect("geometry");
            let plan = Plan::new(&g);
            let mut seen = vec![0u8; g.od * g.oh];
            for tile in 0..plan.ntiles {
                let (r0, r1) = plan.rows(&g, tile);
                assert!(
                    r0 < r1 && r1 <= seen.len(),
                    "{d} {h} {w}: tile {tile} = {r0}..{r1}"
                );
                if plan.strips == Strips::Slab {
                    assert_eq!(
                        r0 / g.oh,
                        (r1 - 1) / g.oh,
                        "slab tile crosses a depth plane"
                    );
                }
                seen[r0..r1].iter_mut().for_each(|v| *v += 1);
            }
            assert!(seen.iter().all(|&v| v == 1), "{d} {h} {w}");
        }
    }

    #[test]
    fn refuses_other_geometries() {
        let x = vec![0f32; 64];
        for (k, s, p, cout) in [(1, 1, 0, 1), (3, 2, 1, 1), (5, 1, 2, 1), (3, 1, 1, 0)] {
            let g = ConvGeom::new(1, 1, cout, (4, 4, 4), k, s, p).expect("geometry");
            assert!(!fits(&g), "{k} {s} {p} {cout}");
            let w = vec![0f32; g.kk()];
            assert!(
                conv_fwd_s1_direct(&x, &w, None, &g).is_none(),
                "{k} {s} {p} {cout}"
            );
            let dy = vec![0f32; g.cout * g.out_vol()];
            assert!(conv_dw_direct(&x, &dy, &g).is_none(), "{k} {s} {p} {cout}");
        }
        // No kernels at the baseline level, nor for a level above this CPU's.
        assert!(Kernels::for_isa(Isa::Baseline).is_none());
        let top = Isa::detected();
        for i in [Isa::Avx2, Isa::Avx512] {
            assert_eq!(Kernels::for_isa(i).is_some(), i <= top, "{i}");
        }
    }
}
