//! `torch.optim.Adam` with coupled L2 weight decay (the gradient gets `weight_decay · θ` added
//! before the moments, unlike AdamW, which candle-nn implements), amsgrad off, no maximise.
//!
//! Per parameter with a gradient `g` at step `t`:
//! `g += wd·θ; m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²;
//! θ −= (lr / (1−β1^t)) · m / (sqrt(v) / sqrt(1−β2^t) + ε)` — the exact expression order of
//! PyTorch's single-tensor implementation. Parameters without a gradient are skipped, their step
//! count unchanged, as PyTorch skips `p.grad is None`.

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};

use crate::error::Result;

/// Adam hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Coupled L2 weight decay.
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    /// The CLoPA trainer's: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 1e-5.
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-5,
        }
    }
}

struct State {
    m: Tensor,
    v: Tensor,
    t: u64,
}

/// The moments of every parameter in one flat tensor each, when every step updates the same
/// parameters (the trainer's case): the update then runs ~15 elementwise kernels on one long
/// vector instead of ~15 per parameter (plus three copies per parameter: into the vectors and
/// back). On a GPU group `in`'s 124 small tensors (nnInteractive
/// v1.0) made Adam ~2000 launches, 13–15 ms of a 192³ step against PyTorch's 3–6 ms (its foreach
/// kernels); flat, 3.0 ms (BENCHMARKS.md).
///
/// Only up to [`FLAT_MAX`] elements: the flat path's temporaries are whole-vector copies, and
/// beyond that (group `all`: 102 M parameters) launches cost nothing next to the arithmetic.
struct Flat {
    /// the parameters, in the order of the flat tensors
    names: Vec<String>,
    m: Tensor,
    v: Tensor,
    t: u64,
}

/// The most elements [`Flat`] moments hold (64 MiB of f32 per vector).
const FLAT_MAX: usize = 1 << 24;

/// Adam over named [`Var`]s.
pub struct Adam {
    cfg: AdamConfig,
    vars: BTreeMap<String, Var>,
    state: BTreeMap<String, State>,
    flat: Option<Flat>,
    /// whether [`Self::step`] may update the parameters together (off: the per-tensor path the
    /// tests compare it with)
    fuse: bool,
}

impl Adam {
    /// A fresh optimiser (zero moments) over `vars`.
    pub fn new(vars: BTreeMap<String, Var>, cfg: AdamConfig) -> Self {
        Adam {
            cfg,
            vars,
            state: BTreeMap::new(),
            flat: None,
            fuse: true,
        }
    }

    /// The settings.
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    /// One update from `grads` (name → gradient, same shape as the parameter).
    ///
    /// The parameters are updated together in one flat vector while every step has gradients
    /// for the same ones, all of one dtype on one device and at most [`FLAT_MAX`] elements in
    /// all; otherwise each on its own (from the first step that skips one of them on, for good).
    /// Both ways run the same elementwise operations in the same order, so they give the same
    /// bits.
    pub fn step(&mut self, grads: &BTreeMap<String, Tensor>) -> Result<()> {
        let live: Vec<(String, Var, Tensor)> = self
            .vars
            .iter()
            .filter_map(|(k, v)| grads.get(k).map(|g| (k.clone(), v.clone(), g.clone())))
            .collect();
        let same_kind = live.windows(2).all(|w| {
            let (a, b) = (w[0].1.as_tensor(), w[1].1.as_tensor());
            a.dtype() == b.dtype() && a.device().same_device(b.device())
        });
        let same_names = |f: &Flat| f.names.iter().eq(live.iter().map(|(k, _, _)| k));
        let elems: usize = live
            .iter()
            .map(|(_, v, _)| v.as_tensor().elem_count())
            .sum();
        let flat_fits = self.fuse
            && live.len() > 1
            && elems <= FLAT_MAX
            && same_kind
            && match &self.flat {
                Some(f) => same_names(f),
                None => self.state.is_empty(),
            };
        if flat_fits {
            let (names, (vars, grads)): (Vec<_>, (Vec<_>, Vec<_>)) =
                live.into_iter().map(|(k, v, g)| (k, (v, g))).unzip();
            return self.step_flat(names, &vars, &grads);
        }
        if let Some(f) = self.flat.take() {
            self.unflatten(f)?;
        }
        let c = self.cfg;
        for (name, var, g) in live {
            let theta = var.as_tensor().detach();
            let g = g.to_dtype(theta.dtype())?;
            let (m, v, t) = match self.state.get(&name) {
                Some(s) => (s.m.clone(), s.v.clone(), s.t),
                None => (g.zeros_like()?, g.zeros_like()?, 0),
            };
            let (theta, m, v) = update(&c, &theta, &g, m, v, t + 1)?;
            var.set(&theta)?;
            self.state.insert(name, State { m, v, t: t + 1 });
        }
        Ok(())
    }

    /// [`Self::step`] of `vars` (named `names`) together, with their gradients `grads`.
    fn step_flat(&mut self, names: Vec<String>, vars: &[Var], grads: &[Tensor]) -> Result<()> {
        let dtype = vars[0].as_tensor().dtype();
        // (cut into one vector, a gradient of another shape with as many elements would pass)
        for (v, g) in vars.iter().zip(grads) {
            if g.dims() != v.as_tensor().dims() {
                return Err(candle_core::Error::ShapeMismatchBinaryOp {
                    lhs: v.as_tensor().shape().clone(),
                    rhs: g.shape().clone(),
                    op: "adam",
                }
                .into());
            }
        }
        let cat = |ts: &mut dyn Iterator<Item = Result<Tensor>>| -> Result<Tensor> {
            let parts = ts.collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&parts, 0)?)
        };
        let theta = cat(&mut vars
            .iter()
            .map(|v| Ok(v.as_tensor().detach().flatten_all()?)))?;
        let g = cat(&mut grads.iter().map(|g| Ok(g.to_dtype(dtype)?.flatten_all()?)))?;
        // (the moments are replaced only once the update has worked: a failed step leaves them)
        let (m, v, t) = match &self.flat {
            Some(f) => (f.m.clone(), f.v.clone(), f.t),
            None => (g.zeros_like()?, g.zeros_like()?, 0),
        };
        let (theta, m, v) = update(&self.cfg, &theta, &g, m, v, t + 1)?;
        let mut at = 0;
        for var in vars {
            let n = var.as_tensor().elem_count();
            var.set(&theta.narrow(0, at, n)?.reshape(var.as_tensor().shape())?)?;
            at += n;
        }
        self.flat = Some(Flat {
            names,
            m,
            v,
            t: t + 1,
        });
        Ok(())
    }

    /// Moves the flat moments into per-parameter ones (a step updating other parameters).
    fn unflatten(&mut self, f: Flat) -> Result<()> {
        let mut at = 0;
        for name in f.names {
            let shape = self.vars[&name].as_tensor().shape().clone();
            let n = shape.elem_count();
            let part = |x: &Tensor| -> Result<Tensor> {
                Ok(x.narrow(0, at, n)?.reshape(&shape)?.contiguous()?)
            };
            let st = State {
                m: part(&f.m)?,
                v: part(&f.v)?,
                t: f.t,
            };
            self.state.insert(name, st);
            at += n;
        }
        Ok(())
    }
}

/// One Adam update of `theta` (detached) by `g` at step `t` (from 1): the new θ and moments, in
/// the expression order of PyTorch's single-tensor Adam.
fn update(
    c: &AdamConfig,
    theta: &Tensor,
    g: &Tensor,
    m: Tensor,
    v: Tensor,
    t: u64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let g = if c.weight_decay != 0.0 {
        (g + (theta * c.weight_decay)?)?
    } else {
        g.clone()
    };
    let m = ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
    let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
    let bc1 = 1.0 - c.beta1.powi(t as i32);
    let bc2 = 1.0 - c.beta2.powi(t as i32);
    let step_size = c.lr / bc1;
    let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
    let upd = ((&m / denom)? * step_size)?;
    Ok(((theta - upd)?, m, v))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// PyTorch 2.x, by hand in f64 for θ = [1, -2, 0.5], g_t = [0.1, 0.2, -0.3] * t,
    /// lr 0.1, wd 0.01, two steps.
    fn reference() -> Vec<f64> {
        let (lr, b1, b2, eps, wd) = (0.1f64, 0.9f64, 0.999f64, 1e-8f64, 0.01f64);
        let mut th = [1.0f64, -2.0, 0.5];
        let mut m = [0.0f64; 3];
        let mut v = [0.0f64; 3];
        for t in 1..=2 {
            for i in 0..3 {
                let g = [0.1, 0.2, -0.3][i] * t as f64 + wd * th[i];
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let bc1 = 1.0 - b1.powi(t);
                let bc2 = 1.0 - b2.powi(t);
                th[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + eps);
            }
        }
        th.to_vec()
    }

    #[test]
    fn two_steps_match_a_hand_computed_pytorch_adam() {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0, 0.5], &dev).unwrap()).unwrap();
        let mut vars = BTreeMap::new();
        vars.insert("w".to_string(), var.clone());
        let mut adam = Adam::new(
            vars,
            AdamConfig {
                lr: 0.1,
                weight_decay: 0.01,
                ..AdamConfig::default()
            },
        );
        for t in 1..=2 {
            let g =
                Tensor::new(&[0.1f64 * t as f64, 0.2 * t as f64, -0.3 * t as f64], &dev).unwrap();
            let mut grads = BTreeMap::new();
            grads.insert("w".to_string(), g);
            adam.step(&grads).unwrap();
        }
        let got = var.as_tensor().to_vec1::<f64>().unwrap();
        for (a, b) in got.iter().zip(reference()) {
            assert!((a - b).abs() < 1e-12, "{got:?}");
        }
        // first step of Adam moves every coordinate by ~lr against the gradient sign
        assert!(got[0] < 1.0 - 0.15 && got[2] > 0.5 + 0.15);
    }

    /// Three parameters of other shapes, each Adam over its own copies.
    fn three(dev: &Device) -> BTreeMap<String, Var> {
        [("a", vec![2, 3]), ("b", vec![5]), ("c", vec![1, 2, 2])]
            .into_iter()
            .enumerate()
            .map(|(i, (k, shape))| {
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|j| ((i * 7 + j) as f32 * 0.37).sin()).collect();
                let t = Tensor::from_vec(v, shape, dev).unwrap();
                (k.to_string(), Var::from_tensor(&t).unwrap())
            })
            .collect()
    }

    #[test]
    fn updating_together_gives_the_bits_of_updating_each_alone() {
        let dev = Device::Cpu;
        let (va, vb) = (three(&dev), three(&dev));
        let cfg = AdamConfig {
            lr: 0.05,
            weight_decay: 0.01,
            ..AdamConfig::default()
        };
        let mut together = Adam::new(va.clone(), cfg);
        let mut alone = Adam::new(vb.clone(), cfg);
        alone.fuse = false;
        // steps 1-3 all three (together: flat), step 4 without "b" (the flat moments split),
        // step 5 all three again (each alone from then on)
        for step in 1..=5 {
            let grads: BTreeMap<String, Tensor> = va
                .iter()
                .filter(|(k, _)| step != 4 || k.as_str() != "b")
                .map(|(k, v)| {
                    let g = ((v.as_tensor() * (step as f64 * 0.3))
                        .unwrap()
                        .cos()
                        .unwrap()
                        - 0.4)
                        .unwrap();
                    (k.clone(), g)
                })
                .collect();
            together.step(&grads).unwrap();
            alone.step(&grads).unwrap();
            assert_eq!(together.flat.is_some(), step <= 3, "step {step}");
            for (k, v) in &va {
                let (a, b) = (v.as_tensor(), vb[k].as_tensor());
                let bits = |t: &Tensor| -> Vec<u32> {
                    t.flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|x| x.to_bits())
                        .collect()
                };
                assert_eq!(bits(a), bits(b), "{k} after step {step}");
            }
        }
        // "b" skipped step 4: one step fewer in its bias correction than the others
        assert_eq!(together.state["b"].t, 4);
        assert_eq!(together.state["a"].t, 5);
    }

    #[test]
    fn a_gradient_of_another_shape_is_refused_both_ways() {
        let dev = Device::Cpu;
        for fuse in [true, false] {
            let vars = three(&dev);
            let mut adam = Adam::new(vars.clone(), AdamConfig::default());
            adam.fuse = fuse;
            let mut grads: BTreeMap<String, Tensor> = vars
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().ones_like().unwrap()))
                .collect();
            // "a" is (2, 3): a (3, 2) gradient has as many elements
            grads.insert("a".into(), Tensor::ones((3, 2), DType::F32, &dev).unwrap());
            let e = adam
                .step(&grads)
                .expect_err("a (3, 2) gradient for a (2, 3) parameter");
            assert!(e.to_string().contains("shape mismatch"), "fuse {fuse}: {e}");
        }
    }

    #[test]
    fn decoupled_decay_would_differ_and_no_gradient_means_no_step() {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[3.0f32], &dev).unwrap()).unwrap();
        let mut vars = BTreeMap::new();
        vars.insert("w".to_string(), var.clone());
        let mut adam = Adam::new(vars, AdamConfig::default());
        adam.step(&BTreeMap::new()).unwrap();
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), vec![3.0]);
        // zero gradient: the coupled decay alone moves θ by a full lr step (AdamW would move it by lr·wd·θ)
        let mut grads = BTreeMap::new();
        grads.insert("w".to_string(), Tensor::new(&[0.0f32], &dev).unwrap());
        adam.step(&grads).unwrap();
        let after = var.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((after - (3.0 - 1e-3)).abs() < 2e-6, "{after}");
    }
}
