//! The memory of one training step of group `in` (nnInteractive v1.0, batch 2): what the
//! autograd graph holds after the forward, and the peak of the whole step, measured on the CPU.
//!
//! `graph_memory [MODE] [PATCH]` (defaults `cuda-like 64`), MODE one of
//! * `kernels`: the CPU's fast kernels (what CPU training keeps);
//! * `cuda-like`: the ops a CUDA device runs ([`clopa_nn::ops::portable`]), with the 3D
//!   convolutions as single graph nodes, as cuDNN's are — an estimate of a GPU step's memory
//!   that needs no GPU (candle's CUDA kernels allocate what its CPU kernels do, op for op);
//! * `portable`: every op composed, convolutions too (what a device without cuDNN keeps).
//!
//! Memory is the process's resident set (`/proc/self/status`), so run it with glibc returning
//! freed blocks at once: `MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0`. Activations
//! scale with the voxels, so a 64³ step times 27 estimates the paper's 192³ (the weights and
//! other fixed costs are the `before_forward_mib` baseline, subtracted first).
//!
//! Prints one JSON line: `retained_after_forward_mib` (graph), `step_peak_mib` (forward and
//! backward, above the baseline), and both scaled to 192³.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};
use clopa_nn::loss::clopa_pass_loss;
use clopa_nn::{Architecture, ParamGroup, ParamStore, ResidualEncoderUNet, UNetSpec};

/// A field of `/proc/self/status` in MiB (`VmRSS`, `VmHWM`).
fn status_mib(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0
}

/// Resets `VmHWM` to the current resident set (Linux ≥ 4.0).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map_or("cuda-like", String::as_str).to_string();
    let patch: usize = args.get(1).map_or(64, |v| v.parse().unwrap());
    let spec = UNetSpec::from_architecture(&Architecture::nninteractive_v1(), 8, 2).unwrap();
    let dev = Device::Cpu;
    let mut store = ParamStore::new(clopa_testkit::random_weights(&spec, 0));
    store.make_trainable(ParamGroup::In.names(&spec)).unwrap();
    let net = ResidualEncoderUNet::new(&spec, &store.var_builder(&dev)).unwrap();
    let n = patch * patch * patch;
    let x: Vec<f32> = (0..2 * 8 * n)
        .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let y: Vec<f32> = (0..2 * n).map(|i| f32::from(i % n < n / 3)).collect();
    let xt = Tensor::from_vec(x, (2, 8, patch, patch, patch), &dev).unwrap();
    let yt = Tensor::from_vec(y, (2, patch, patch, patch), &dev).unwrap();

    let step = || {
        let before = status_mib("VmRSS");
        reset_peak();
        let loss = clopa_pass_loss(&net.forward(&xt).unwrap(), &yt).unwrap();
        let after_forward = status_mib("VmRSS");
        let grads = loss.backward().unwrap();
        drop((loss, grads));
        (before, after_forward - before, status_mib("VmHWM") - before)
    };
    let (before, retained, peak) = match mode.as_str() {
        "kernels" => step(),
        "cuda-like" => clopa_nn::ops::portable::on_cpu_like_cuda(step),
        "portable" => clopa_nn::ops::portable::on_cpu(step),
        other => panic!("unknown mode {other:?}: kernels, cuda-like or portable"),
    };
    let scale = (192.0 / patch as f64).powi(3);
    println!(
        "{}",
        serde_json::json!({
            "mode": mode, "patch": patch, "batch": 2, "group": "in",
            "before_forward_mib": before.round(),
            "retained_after_forward_mib": retained.round(),
            "step_peak_mib": peak.round(),
            "retained_at_192_gib": (retained * scale / 1024.0 * 10.0).round() / 10.0,
            "step_peak_at_192_gib": (peak * scale / 1024.0 * 10.0).round() / 10.0,
        })
    );
}
