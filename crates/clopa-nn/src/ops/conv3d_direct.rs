//! Stride-1 3×3×3 convolution with a register-blocked AVX-512 microkernel (x86-64 only).
//!
//! Why not gemm here: the stride-1 path builds one zero-padded input row per `(ci, kd, kh)`
//! ("im2row", see `conv3d.rs`) and gemm then re-packs that strip once per `kw` tap — about 12 % of
//! the U-Net forward went into gemm's packing, plus a copy of its padded-width result into the
//! output (profile in BENCHMARKS.md). The strip is already contiguous along W, which is exactly
//! the layout a microkernel wants for its vector loads: output voxels `j .. j + 48` of tap `kw`
//! read `strip[q][j + kw ..]`. So nothing is packed but the (small) kernel, once per call.
//!
//! Block: 48 output voxels (3 × 16 lanes) × 8 output channels = 24 zmm accumulators; one step of
//! the reduction (one strip row `q`, one tap `kw`) loads 3 vectors and broadcasts 8 weights for
//! 24 FMAs, so the loop is bound by the FMA units, not by loads. Output blocks run along the
//! padded strip (rows back to back), so narrow deep layers (W = 6, 12, 24) waste only the `k − 1`
//! padding columns per row; their junk results are never stored.
//!
//! Machines without AVX-512 take the gemm path (`conv3d::conv_fwd_s1`).

use rayon::prelude::*;

use super::conv3d::{ConvGeom, im2row_part};
use super::{SyncPtr, zeroed};

/// f32 lanes of one zmm register.
const LANES: usize = 16;
/// Vectors of output voxels per block.
const MV: usize = 3;
/// Output voxels per block.
const MB: usize = MV * LANES;
/// Output channels per block.
const NC: usize = 8;
/// The kernel size this microkernel is specialised for.
const K: usize = 3;

/// True when this CPU runs the microkernel (x86-64 with AVX-512F), so that
/// [`conv_fwd_s1_direct`] returns `Some`.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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
    if g.k != K || g.s != 1 || g.p >= K || !available() {
        return None;
    }
    Some(forward(x, wt, bias, g))
}

/// Strip rows (`q`) per reduction chunk. The chunk's strip (`KC × t2`, ≤ 200 KiB) is built
/// right before it is used and stays in L2, and one block's slice of it (`KC` rows × 4 cache
/// lines, 16 KiB) stays in L1 while every output-channel block of the task reads it. Without
/// the chunks, layers with many input channels (Cin·9 = 2880 rows at 320 channels) re-read each
/// block's whole column from L2/L3 once per channel block.
const KC: usize = 64;

/// Strip columns per row tile (16 blocks): whole rows of at least this many columns. Large
/// enough that narrow deep layers (W = 6 .. 24) fill their 48-voxel blocks, small enough that a
/// task's accumulators (`Cout × t2`) stay in L2.
const TILE_COLS: usize = 16 * MB;

fn forward(x: &[f32], wt: &[f32], bias: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    let (pin, pout) = (g.in_vol(), g.out_vol());
    let wp = g.w + 2 * g.p;
    let nq = g.cin * K * K;
    let rows = g.od * g.oh;
    let rpt = (TILE_COLS / wp).clamp(1, rows);
    let ntiles = rows.div_ceil(rpt);
    let ncb = g.cout.div_ceil(NC);
    // Small deep layers have fewer row tiles than threads: split the output channels too, so
    // that every thread gets work (each group rebuilds its tile's strip, a copy ~1/(3·Cout/G)
    // of the group's FMAs).
    let want = 2 * rayon::current_num_threads();
    let groups = if g.b * ntiles >= want {
        1
    } else {
        want.div_ceil(g.b * ntiles).min(ncb)
    };
    let per_group = ncb.div_ceil(groups);
    let kk = g.kk();
    let mut y = zeroed(g.b * g.cout * pout);
    let yp = SyncPtr(y.as_mut_ptr());
    (0..g.b * ntiles * groups).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(col, acc): &mut (Vec<f32>, Vec<f32>), item| {
            let (b, rest) = (item / (ntiles * groups), item % (ntiles * groups));
            let (tile, grp) = (rest / groups, rest % groups);
            let (cb0, cb1) = (grp * per_group, ((grp + 1) * per_group).min(ncb));
            if cb0 >= cb1 {
                return;
            }
            let (r0, r1) = (tile * rpt, ((tile + 1) * rpt).min(rows));
            let t2 = (r1 - r0) * wp;
            // Strip columns whose taps stay inside the strip; output column `w` of tile row `rr`
            // is strip column `rr·wp + w`, and `w < ow = wp − k + 1` keeps all its reads
            // inside row `rr`'s segment. The last block reads up to `MB + k` floats past the
            // chunk's strip: slack, so those (discarded) lanes stay inside the buffer.
            let n = t2 - (K - 1);
            let nblocks = n.div_ceil(MB);
            col.resize(KC * t2 + MB + K, 0.0);
            let x_b = &x[b * g.cin * pin..(b + 1) * g.cin * pin];
            // Accumulators of every (block, channel block) of the task, NC × MB floats each.
            let tile_floats = NC * MB;
            acc.resize(nblocks * (cb1 - cb0) * tile_floats, 0.0);
            for q0 in (0..nq).step_by(KC) {
                let kc = KC.min(nq - q0);
                im2row_part(x_b, g, (r0, r1), (q0, q0 + kc), &mut col[..kc * t2]);
                for jb in 0..nblocks {
                    for cb in cb0..cb1 {
                        // The kernel rows of this block's channels from tap (q0, kw = 0) on; rows
                        // past Cout (last block) repeat the last one, their results are dropped.
                        let wrows: [*const f32; NC] = std::array::from_fn(|c| {
                            let co = (cb * NC + c).min(g.cout - 1);
                            wt[co * kk + q0 * K..].as_ptr()
                        });
                        let at = (jb * (cb1 - cb0) + cb - cb0) * tile_floats;
                        // SAFETY: the CPU has AVX-512F (checked by `conv_fwd_s1_direct`); the
                        // kernel reads col[q·t2 + jb·MB + kw + v] for q < kc, kw < 3, v < MB,
                        // below KC·t2 + MB + K = col.len() since jb·MB < n ≤ t2; each kernel
                        // row holds (q0 + kc)·3 ≤ Cin·27 taps; `acc` holds tile_floats from
                        // `at`.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            block(
                                col.as_ptr().add(jb * MB),
                                t2,
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
                            let at = (jb * (cb1 - cb0) + cb - cb0) * tile_floats;
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

/// `out[c·MB + v] (+)= Σ_{q < nq, kw < 3} strip[q·t2 + kw + v] · w[c][q·3 + kw]` for
/// `v < MB`, `c < NC`; `out`'s old values are added when `accumulate`. The kernel rows are read
/// where they are (8 sequential streams): packing them into broadcast order cost as much as
/// the convolution itself on the deep 6³ layers (11 MB of weights for 216 voxels).
///
/// # Safety
/// The CPU must support AVX-512F; `strip` must be readable at every index above, each `w[c]`
/// at `nq·3` floats and `out` readable and writable at `NC·MB` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block(
    strip: *const f32,
    t2: usize,
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
            let row = strip.add(q * t2);
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

#[cfg(test)]
mod tests {
    use super::super::conv3d::tests::naive_conv;
    use super::super::testutil::*;
    use super::*;

    fn check(bn: usize, cin: usize, cout: usize, dhw: (usize, usize, usize), p: usize) {
        let g = ConvGeom::new(bn, cin, cout, dhw, 3, 1, p).expect("geometry");
        let mut rng = Lcg(11 + (cin * 7 + cout) as u64);
        let x = rng.vec(g.b * g.cin * g.in_vol());
        let w = rng.vec(g.cout * g.kk());
        let b = rng.vec(g.cout);
        let Some(y) = conv_fwd_s1_direct(&x, &w, Some(&b), &g) else {
            assert!(!available(), "kernel available but refused {g:?}");
            eprintln!("no AVX-512F on this CPU: direct kernel not tested");
            return;
        };
        let yref = naive_conv(&f64v(&x), &f64v(&w), Some(&f64v(&b)), &g);
        assert_close(&format!("direct conv {g:?}"), &y, &yref, 1e-5);
    }

    #[test]
    fn matches_the_naive_convolution() {
        // Output widths below, at and above one 48-voxel block, channel counts that are not
        // multiples of 8, batch 2, padding 0 and 1.
        check(1, 3, 5, (4, 5, 6), 1);
        check(2, 2, 9, (3, 4, 1), 1);
        check(1, 4, 8, (5, 3, 50), 1);
        check(1, 2, 17, (6, 7, 97), 1);
        check(2, 3, 3, (5, 6, 7), 0);
        check(1, 1, 1, (3, 3, 3), 0);
    }

    #[test]
    fn row_tiles_reduction_chunks_and_channel_groups() {
        // 120 rows of width 22: several row tiles, the last one partial.
        check(1, 2, 3, (3, 40, 20), 1);
        // Cin·9 = 2700 strip rows: many reduction chunks, the last one partial.
        check(1, 300, 10, (5, 7, 6), 1);
        // One row tile and 5 channel blocks: split into channel groups, one of them empty.
        check(1, 2, 40, (3, 4, 5), 1);
    }

    #[test]
    fn refuses_other_geometries() {
        let x = vec![0f32; 64];
        for (k, s, p) in [(1, 1, 0), (3, 2, 1), (5, 1, 2)] {
            let g = ConvGeom::new(1, 1, 1, (4, 4, 4), k, s, p).expect("geometry");
            let w = vec![0f32; g.kk()];
            assert!(
                conv_fwd_s1_direct(&x, &w, None, &g).is_none(),
                "{k} {s} {p}"
            );
        }
    }
}
