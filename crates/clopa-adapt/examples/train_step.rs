//! Loss-lowering demonstration and gradient-step benchmark (run with `--release`).
//!
//! `cargo run --release -p clopa-adapt --example train_step -- demo [GROUP]`: a tiny random
//! model (8-16-32-64, blocks 1-2-2-2) trained on synthetic `organ` cases (48³ patches), printing
//! the per-epoch training loss and validation score.
//! `... -- bench tiny|v1 PATCH STEPS`: seconds per gradient step (6 passes, batch 2, group `in`)
//! and the peak resident memory.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use clopa_adapt::{AugmentConfig, EpisodeConfig, TrainCase, train_episode};
use clopa_interact::PromptConfig;
use clopa_nn::{Architecture, ParamGroup, ParamStore, UNetSpec};
use clopa_phantom::{SynthConfig, TaskKind, generate_case};

fn weights(spec: &UNetSpec, seed: u64) -> BTreeMap<String, Tensor> {
    clopa_testkit::random_weights(spec, seed)
}

fn cases(n: usize, size: usize, seed: u64) -> Vec<TrainCase> {
    let cfg = SynthConfig {
        size: Some([size; 3]),
        ..SynthConfig::new(TaskKind::Organ)
    };
    (0..n)
        .map(|i| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed + i as u64);
            let c = generate_case(&cfg, &mut rng).unwrap();
            TrainCase::new(&format!("organ{i}"), &c.image, &c.label).unwrap()
        })
        .collect()
}

fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    clopa_nn::ops::cap_isa(std::env::var("CLOPA_MAX_ISA").ok().as_deref()).unwrap();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map_or("demo", String::as_str);
    let tiny =
        UNetSpec::from_architecture(&Architecture::resenc(&[8, 16, 32, 64], &[1, 2, 2, 2]), 8, 2)
            .unwrap();
    let prompt = PromptConfig::nninteractive_v1();
    if mode == "demo" {
        let group: ParamGroup = args.get(1).map_or("all", String::as_str).parse().unwrap();
        let train = cases(8, 56, 100);
        let val = cases(2, 56, 200);
        let mut params = ParamStore::new(weights(&tiny, 0));
        params.make_trainable(group.names(&tiny)).unwrap();
        let cfg = EpisodeConfig {
            patch: [48; 3],
            epochs: 4,
            steps_per_epoch: 8,
            val_patches: 4,
            lr: 1e-3,
            seed: 1,
            ..EpisodeConfig::default()
        };
        let t = Instant::now();
        let out = train_episode(
            &tiny,
            &mut params,
            &prompt,
            &train,
            &val,
            &cfg,
            &Device::Cpu,
            &mut |_| {},
        )
        .unwrap();
        println!("group {} ({} s)", group.name(), t.elapsed().as_secs());
        for r in &out.log {
            println!(
                "epoch {}: train_loss {:?} val_score {:?} ema {:?} selected {}",
                r.epoch, r.train_loss, r.val_score, r.val_ema, r.selected
            );
        }
        return;
    }
    // bench
    let spec = match args.get(1).map(String::as_str) {
        Some("v1") => UNetSpec::from_architecture(&Architecture::nninteractive_v1(), 8, 2).unwrap(),
        _ => tiny,
    };
    let patch: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(48);
    let steps: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(3);
    let train = cases(2, patch + 8, 300);
    let mut params = ParamStore::new(weights(&spec, 0));
    params.make_trainable(ParamGroup::In.names(&spec)).unwrap();
    let cfg = EpisodeConfig {
        patch: [patch; 3],
        epochs: 1,
        steps_per_epoch: steps,
        fg_probability: 1.0, // foreground patches: no patch is solved early, 6 full passes
        augment: AugmentConfig::none(),
        seed: 0,
        ..EpisodeConfig::default()
    };
    let mut times = Vec::new();
    let mut last = Instant::now();
    train_episode(
        &spec,
        &mut params,
        &prompt,
        &train,
        &[],
        &cfg,
        &Device::Cpu,
        &mut |_| {
            times.push(last.elapsed().as_secs_f64());
            last = Instant::now();
        },
    )
    .unwrap();
    let rest = if times.len() > 1 {
        &times[1..]
    } else {
        &times[..]
    };
    let mean = rest.iter().sum::<f64>() / rest.len() as f64;
    println!(
        "{} patch {patch}^3 batch 2, 6 passes: steps {:?} s; mean after the first {:.3} s/step; peak RSS {:.0} MB",
        args.get(1).map_or("tiny", String::as_str),
        times
            .iter()
            .map(|t| (t * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
        mean,
        peak_rss_mb()
    );
}
