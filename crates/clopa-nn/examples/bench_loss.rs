//! Benchmark of the trainer's per-pass loss, forward + backward, on the CPU: the fused op
//! (`ops/pass_loss.rs`, what training runs) against the composition of candle's ops it replaced
//! (`loss::composed_pass_loss_per_sample`).
//!
//! `cargo run --release -p clopa-nn --example bench_loss [-- SIZE...]` (default 32 48 64): logits
//! (2, 2, SIZE³) — a training pass's batch of two-class patches — and labels; prints
//! `size way seconds`, the best of 10 after a warm-up. Threads: `RAYON_NUM_THREADS`. PyTorch's
//! counterpart: `scripts/bench_loss.py` (the same logits and labels, 2 threads).

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use clopa_nn::loss::{clopa_pass_loss_per_sample, composed_pass_loss_per_sample};

type Loss = fn(&Tensor, &Tensor) -> clopa_nn::Result<Tensor>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![32, 48, 64]
    } else {
        sizes
    };
    for s in sizes {
        let n = s * s * s;
        // smooth logits in [-1, 1] and a label pattern with both classes
        let l: Vec<f32> = (0..4 * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..2 * n).map(|i| f32::from(i % 7 < 3)).collect();
        let logits = Var::from_tensor(&Tensor::from_vec(l, (2, 2, s, s, s), &Device::Cpu)?)?;
        let labels = Tensor::from_vec(y, (2, s, s, s), &Device::Cpu)?;
        let ways: [(&str, Loss); 2] = [
            ("composed", composed_pass_loss_per_sample),
            ("fused", clopa_pass_loss_per_sample),
        ];
        for (name, f) in ways {
            let mut best = f64::INFINITY;
            for i in 0..=10 {
                let t = Instant::now();
                let loss = f(logits.as_tensor(), &labels)?.mean_all()?;
                loss.backward()?;
                if i > 0 {
                    best = best.min(t.elapsed().as_secs_f64());
                }
            }
            println!("{s} {name} {best:.5}");
        }
    }
    Ok(())
}
