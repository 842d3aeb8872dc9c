//! Benchmark of the whole ResidualEncoderUNet: forward, and forward + backward.
//!
//! `cargo run --release -p clopa-nn --example bench_network -- ARCH SIZE [GROUP] [REPS]`
//! with ARCH `fixture` (features 2..12) or `v1` (nnInteractive v1.0, 32..320), SIZE the cubic
//! input size (batch 1, 8 channels), GROUP the trainable parameters for the backward pass (`all`,
//! `cn`, `in`; default `all`, like PyTorch with every `requires_grad`; `fwd` times the forward
//! only, for profiling). Weights are random
//! (He-normal convs, unit norms): only timing matters here. Prints one JSON line with the best
//! of REPS timings after one warm-up run; `scripts/bench_network.py` does the same in PyTorch.
//! "fwd+bwd" = forward + `(logits · r).sum()` + `backward()`. `fwd_cpu_s` is the process CPU
//! time (all threads, user + system) of the fastest forward: on a machine shared with other
//! work it moves far less than the wall time (it still rises with cache and core contention).
//! `isa` is the SIMD level of clopa's kernels (`CLOPA_MAX_ISA=avx2` measures, on an AVX-512
//! machine, what a CPU without AVX-512 gets).

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clopa_nn::{Architecture, ParamGroup, ParamStore, ResidualEncoderUNet, UNetSpec};

/// CPU time of this process so far, in seconds: the sum of its threads' run times
/// (`/proc/self/task/*/schedstat`, nanoseconds); 0 where that is not readable.
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ns = 0u64;
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 * 1e-9
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    clopa_nn::ops::cap_isa(std::env::var("CLOPA_MAX_ISA").ok().as_deref())?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arch_name = args.first().map(String::as_str).unwrap_or("fixture");
    let size: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let group_arg = args.get(2).map(String::as_str).unwrap_or("all");
    let fwd_only = group_arg == "fwd";
    let group: ParamGroup = if fwd_only {
        ParamGroup::All
    } else {
        group_arg.parse()?
    };
    let reps: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let arch = match arch_name {
        "v1" => Architecture::nninteractive_v1(),
        "fixture" => Architecture::resenc(&[2, 4, 6, 10, 12, 12], &[1, 3, 4, 6, 6, 6]),
        other => return Err(format!("unknown ARCH {other} (fixture or v1)").into()),
    };
    let spec = UNetSpec::from_architecture(&arch, 8, 2)?;
    let dev = Device::Cpu;
    let mut tensors = BTreeMap::new();
    for (name, shape) in spec.parameter_shapes() {
        let t = if name.ends_with(".norm.weight") {
            Tensor::ones(shape, DType::F32, &dev)?
        } else if name.ends_with("bias") {
            Tensor::zeros(shape, DType::F32, &dev)?
        } else {
            let fan_in: usize = shape[1..].iter().product();
            (Tensor::randn(0f32, 1f32, shape, &dev)? * (2.0 / fan_in as f64).sqrt())?
        };
        tensors.insert(name, t);
    }
    let x = Tensor::randn(0f32, 1f32, (1, 8, size, size, size), &dev)?;
    let r = Tensor::randn(0f32, 1f32, (1, 2, size, size, size), &dev)?;

    let frozen = ParamStore::new(tensors.clone());
    let net = ResidualEncoderUNet::new(&spec, &frozen.var_builder(&dev))?;
    let (mut fwd, mut fwd_cpu) = (f64::INFINITY, f64::INFINITY);
    for i in 0..=reps {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let y = net.forward(&x)?;
        let _ = y.sum_all()?.to_scalar::<f32>()?;
        if i > 0 {
            fwd = fwd.min(t0.elapsed().as_secs_f64());
            fwd_cpu = fwd_cpu.min(cpu_seconds() - c0);
        }
    }
    drop(net);
    if fwd_only {
        println!(
            "{{\"impl\": \"clopa\", \"arch\": \"{arch_name}\", \"size\": {size}, \"reps\": {reps}, \"fwd_s\": {fwd:.4}, \"fwd_cpu_s\": {fwd_cpu:.3}, \"threads\": {}, \"isa\": \"{}\"}}",
            rayon::current_num_threads(),
            clopa_nn::ops::isa()
        );
        return Ok(());
    }

    let mut store = ParamStore::new(tensors);
    store.make_trainable(group.names(&spec))?;
    let net = ResidualEncoderUNet::new(&spec, &store.var_builder(&dev))?;
    let (mut fwdbwd, mut fwdbwd_cpu) = (f64::INFINITY, f64::INFINITY);
    for i in 0..=reps {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let y = net.forward(&x)?;
        let loss = (y * &r)?.sum_all()?;
        let grads = loss.backward()?;
        let n = store
            .vars()
            .values()
            .filter(|v| grads.get(v.as_tensor()).is_some())
            .count();
        if i > 0 {
            fwdbwd = fwdbwd.min(t0.elapsed().as_secs_f64());
            fwdbwd_cpu = fwdbwd_cpu.min(cpu_seconds() - c0);
        }
        drop(grads);
        assert!(n > 0);
    }
    println!(
        "{{\"impl\": \"clopa\", \"arch\": \"{arch_name}\", \"size\": {size}, \"group\": \"{group}\", \"params\": {}, \"reps\": {reps}, \"fwd_s\": {fwd:.4}, \"fwd_cpu_s\": {fwd_cpu:.3}, \"fwdbwd_s\": {fwdbwd:.4}, \"fwdbwd_cpu_s\": {fwdbwd_cpu:.3}, \"threads\": {}, \"isa\": \"{}\"}}",
        spec.num_parameters(),
        rayon::current_num_threads(),
        clopa_nn::ops::isa()
    );
    Ok(())
}
