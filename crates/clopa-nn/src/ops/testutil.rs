//! Helpers shared by the ops' unit tests: a tiny deterministic RNG, tensors from slices,
//! gradients of `Σ y·r`, finite differences in f64 and a relative-error check.

use candle_core::{Device, Tensor, Var, backprop::GradStore};

/// Deterministic generator (64-bit LCG) so the tests need no RNG crate and never change.
pub(crate) struct Lcg(pub u64);

impl Lcg {
    /// Uniform in [-1, 1).
    pub(crate) fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub(crate) fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

pub(crate) fn tensor(v: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_slice(v, dims, &Device::Cpu).expect("tensor from slice")
}

pub(crate) fn var(v: &[f32], dims: &[usize]) -> (Var, Tensor) {
    let var = Var::from_tensor(&tensor(v, dims)).expect("var");
    let t = var.as_tensor().clone();
    (var, t)
}

pub(crate) fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("to_vec")
}

pub(crate) fn f64v(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Gradients of the scalar `Σ y·r`, i.e. with upstream gradient `r`.
pub(crate) fn loss_grads(y: &Tensor, r: &[f32]) -> GradStore {
    let rt = tensor(r, y.dims());
    y.mul(&rt)
        .and_then(|t| t.sum_all())
        .and_then(|l| l.backward())
        .expect("backward")
}

pub(crate) fn grad_of(g: &GradStore, v: &Var) -> Vec<f32> {
    to_vec(g.get(v.as_tensor()).expect("gradient present"))
}

/// Central finite differences of `f` at `x` in f64.
pub(crate) fn fd_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-5;
    let mut xx = x.to_vec();
    (0..x.len())
        .map(|i| {
            xx[i] = x[i] + h;
            let fp = f(&xx);
            xx[i] = x[i] - h;
            let fm = f(&xx);
            xx[i] = x[i];
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// `max |a − ref| / max |ref|`.
pub(crate) fn rel_err(a: &[f32], r: &[f64]) -> f64 {
    assert_eq!(a.len(), r.len(), "length mismatch");
    let scale = r.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(r)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - y).abs()));
    if scale == 0.0 { err } else { err / scale }
}

pub(crate) fn assert_close(what: &str, a: &[f32], r: &[f64], tol: f64) {
    let e = rel_err(a, r);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.1e}");
}
