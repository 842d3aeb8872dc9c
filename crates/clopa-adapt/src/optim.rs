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

/// Adam over named [`Var`]s.
pub struct Adam {
    cfg: AdamConfig,
    vars: BTreeMap<String, Var>,
    state: BTreeMap<String, State>,
}

impl Adam {
    /// A fresh optimiser (zero moments) over `vars`.
    pub fn new(vars: BTreeMap<String, Var>, cfg: AdamConfig) -> Self {
        Adam {
            cfg,
            vars,
            state: BTreeMap::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    /// One update from `grads` (name → gradient, same shape as the parameter).
    pub fn step(&mut self, grads: &BTreeMap<String, Tensor>) -> Result<()> {
        let c = self.cfg;
        for (name, var) in &self.vars {
            let Some(g) = grads.get(name) else { continue };
            let theta = var.as_tensor();
            let g = g.to_dtype(theta.dtype())?;
            let g = if c.weight_decay != 0.0 {
                (g + (theta.detach() * c.weight_decay)?)?
            } else {
                g
            };
            let st = match self.state.remove(name) {
                Some(s) => s,
                None => State {
                    m: g.zeros_like()?,
                    v: g.zeros_like()?,
                    t: 0,
                },
            };
            let t = st.t + 1;
            let m = ((st.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((st.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let bc1 = 1.0 - c.beta1.powi(t as i32);
            let bc2 = 1.0 - c.beta2.powi(t as i32);
            let step_size = c.lr / bc1;
            let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
            let upd = ((&m / denom)? * step_size)?;
            var.set(&(theta.detach() - upd)?)?;
            self.state.insert(name.clone(), State { m, v, t });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use candle_core::Device;

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
