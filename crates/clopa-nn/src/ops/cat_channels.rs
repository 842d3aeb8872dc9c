//! `cat_channels`: concatenation of two `(B, C, D, H, W)` tensors along C, as a custom op.
//!
//! The decoder concatenates its upsampled input with the skip connection at every stage; at 96^3
//! that is a 200+ MiB result. candle's `Tensor::cat` copies on one thread into a freshly faulted
//! buffer (half of the forward pass's page faults); this copies the (sample, channel) planes in
//! parallel into a huge-page buffer. The backward slices the gradient back into the two parts.

use candle_core::{Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::portable;
use super::{ELEMWISE_CHUNK, Kernel, Op, check_layout, dims5, grad_if, invalid, zeroed};

const NAME: &str = "cat_channels";

#[derive(Clone, Copy, Debug)]
struct CatChannels {
    a: [usize; 5],
    cb: usize,
}

impl CatChannels {
    fn out_dims(&self) -> [usize; 5] {
        let [b, ca, d, h, w] = self.a;
        [b, ca + self.cb, d, h, w]
    }
}

impl Kernel<2> for CatChannels {
    const ARGS: [&'static str; 2] = ["a", "b"];
    fn name(&self) -> &'static str {
        NAME
    }
    fn cpu(&self, [(x1, l1), (x2, l2)]: [(&[f32], &Layout); 2]) -> Result<(Vec<f32>, Shape)> {
        let [b, ca, d, h, w] = self.a;
        check_layout(NAME, "a", l1, &self.a)?;
        check_layout(NAME, "b", l2, &[b, self.cb, d, h, w])?;
        let (n1, n2) = (ca * d * h * w, self.cb * d * h * w);
        let mut y = zeroed(x1.len() + x2.len());
        if n1 + n2 > 0 {
            // Per sample the output is [a_b, b_b]; copy it in chunks so both threads share a sample.
            y.par_chunks_mut(n1 + n2).enumerate().for_each(|(bi, yb)| {
                let (y1, y2) = yb.split_at_mut(n1);
                y1.par_chunks_mut(ELEMWISE_CHUNK)
                    .zip(x1[bi * n1..(bi + 1) * n1].par_chunks(ELEMWISE_CHUNK))
                    .chain(
                        y2.par_chunks_mut(ELEMWISE_CHUNK)
                            .zip(x2[bi * n2..(bi + 1) * n2].par_chunks(ELEMWISE_CHUNK)),
                    )
                    .for_each(|(o, i)| o.copy_from_slice(i));
            });
        }
        Ok((y, Shape::from(self.out_dims().to_vec())))
    }
    fn grads(
        &self,
        [a, b]: [&Tensor; 2],
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<[Option<Tensor>; 2]> {
        let ca = self.a[1];
        let slice = |start, len| {
            dy.apply_op1_no_bwd(&Op(SliceChannels {
                dims: self.out_dims(),
                start,
                len,
            }))
        };
        Ok([
            grad_if(a, || slice(0, ca))?,
            grad_if(b, || slice(ca, self.cb))?,
        ])
    }
}

/// Channels `[start, start + len)` of a `(B, C, D, H, W)` tensor, as a contiguous tensor.
#[derive(Clone, Copy, Debug)]
struct SliceChannels {
    dims: [usize; 5],
    start: usize,
    len: usize,
}

impl Kernel<1> for SliceChannels {
    const ARGS: [&'static str; 1] = ["dy"];
    fn name(&self) -> &'static str {
        "cat_channels-bwd"
    }
    fn cpu(&self, [(dy, l)]: [(&[f32], &Layout); 1]) -> Result<(Vec<f32>, Shape)> {
        check_layout(NAME, "dy", l, &self.dims)?;
        let [b, c, d, h, w] = self.dims;
        let plane = d * h * w;
        let n = self.len * plane;
        let mut out = zeroed(b * n);
        if n > 0 {
            out.par_chunks_mut(n).enumerate().for_each(|(bi, ob)| {
                let src = &dy[(bi * c + self.start) * plane..][..n];
                ob.par_chunks_mut(ELEMWISE_CHUNK)
                    .zip(src.par_chunks(ELEMWISE_CHUNK))
                    .for_each(|(o, i)| o.copy_from_slice(i));
            });
        }
        Ok((out, Shape::from(vec![b, self.len, d, h, w])))
    }
}

/// `cat([a, b], dim 1)` of `a` (B, Ca, D, H, W) and `b` (B, Cb, D, H, W), f32 (on a GPU also
/// f16/bf16), differentiable:
/// the same result as `Tensor::cat(&[a, b], 1)`, copied in parallel.
pub fn cat_channels(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let da = dims5(NAME, "a", a)?;
    let db = dims5(NAME, "b", b)?;
    if (da[0], da[2], da[3], da[4]) != (db[0], db[2], db[3], db[4]) {
        return Err(invalid(
            NAME,
            format!(
                "a has shape {:?}, b {:?}: all but the channels must agree",
                a.dims(),
                b.dims()
            ),
        ));
    }
    if portable::off_cpu(a) {
        return portable::cat_channels(a, b);
    }
    a.contiguous()?
        .apply_op2(&b.contiguous()?, Op(CatChannels { a: da, cb: db[1] }))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn equals_candle_cat_and_splits_the_gradient() {
        let (da, db) = ([2, 3, 2, 3, 4], [2, 2, 2, 3, 4]);
        let (na, nb) = (da.iter().product::<usize>(), db.iter().product::<usize>());
        let mut rng = Lcg(77);
        let (a, b, r) = (rng.vec(na), rng.vec(nb), rng.vec(na + nb));
        let (av, at) = var(&a, &da);
        let (bv, bt) = var(&b, &db);
        let y = cat_channels(&at, &bt).expect("cat_channels");
        let want = Tensor::cat(&[&at, &bt], 1).expect("cat");
        assert_eq!(y.dims(), want.dims());
        assert_eq!(to_vec(&y), to_vec(&want));
        let g = loss_grads(&y, &r);
        let rt = tensor(&r, &[2, 5, 2, 3, 4]);
        let ra = to_vec(&rt.narrow(1, 0, 3).expect("narrow"));
        let rb = to_vec(&rt.narrow(1, 3, 2).expect("narrow"));
        assert_eq!(grad_of(&g, &av), ra);
        assert_eq!(grad_of(&g, &bv), rb);
    }

    #[test]
    fn frozen_part_gets_no_gradient() {
        let d = [1, 2, 2, 2, 2];
        let mut rng = Lcg(78);
        let (a, b, r) = (rng.vec(16), rng.vec(16), rng.vec(32));
        let (av, at) = var(&a, &d);
        let bt = tensor(&b, &d);
        let g = loss_grads(&cat_channels(&at, &bt).expect("cat"), &r);
        assert_eq!(grad_of(&g, &av), r[..16].to_vec());
        assert!(g.get(&bt).is_none());
    }

    #[test]
    fn rejects_mismatched_sizes() {
        let a = tensor(&[0.0; 8], &[1, 1, 2, 2, 2]);
        let b = tensor(&[0.0; 4], &[1, 1, 1, 2, 2]);
        let e = cat_channels(&a, &b).expect_err("mismatch").to_string();
        assert!(e.contains("[1, 1, 1, 2, 2]"), "{e}");
    }
}
