//! Time per simulated edit step of the inference session with the real (candle) network.
//!
//! `cargo run --release -p clopa-simulate --example bench_session -- tiny|v1 [autozoom|noautozoom] [EDITS]`
//!
//! - `tiny`: a quick-profile-like task: a 64³ image with a ball (radius 12), a 3-stage ResEnc
//!   (features 8-16-32), patch 48³.
//! - `v1`: nnInteractive v1.0's architecture (ResEnc-L, 102M parameters, random weights), patch
//!   192³, a 224×224×160 image with a ball of radius 40.
//!
//! Prints per-step seconds, forward passes and the process's peak RSS (VmHWM).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Tensor};
use clopa_interact::{
    InferenceSession, Predictor, PredictorError, PromptConfig, SessionConfig, case_rng,
    edit_clicks_raw, initial_clicks_raw,
};
use clopa_nn::{Architecture, UNetSpec};
use clopa_simulate::NetPredictor;

/// Counts forward passes and their time.
struct Counting {
    inner: NetPredictor,
    passes: usize,
    seconds: f64,
}

impl Predictor for Counting {
    fn predict(&mut self, input: &[f32], patch: [usize; 3]) -> Result<Vec<f32>, PredictorError> {
        let t = Instant::now();
        let out = self.inner.predict(input, patch);
        self.passes += 1;
        self.seconds += t.elapsed().as_secs_f64();
        out
    }
}

fn weights(spec: &UNetSpec) -> BTreeMap<String, Tensor> {
    spec.parameter_shapes()
        .into_iter()
        .map(|(n, s)| {
            let fan_in: usize = s.iter().skip(1).product::<usize>().max(1);
            let t = if n.ends_with("norm.weight") {
                Tensor::ones(s.as_slice(), candle_core::DType::F32, &Device::Cpu).unwrap()
            } else if s.len() == 1 {
                Tensor::zeros(s.as_slice(), candle_core::DType::F32, &Device::Cpu).unwrap()
            } else {
                Tensor::randn(
                    0f32,
                    (2.0 / fan_in as f32).sqrt(),
                    s.as_slice(),
                    &Device::Cpu,
                )
                .unwrap()
            };
            (n, t)
        })
        .collect()
}

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("tiny");
    let autozoom = args.get(2).map(String::as_str) != Some("noautozoom");
    let edits: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(5);
    let (arch, patch, shape, radius) = match which {
        "v1" => (
            Architecture::nninteractive_v1(),
            192,
            [224, 224, 160],
            40.0f32,
        ),
        _ => (
            Architecture::resenc(&[8, 16, 32], &[1, 1, 1]),
            48,
            [64, 64, 64],
            12.0,
        ),
    };
    let spec = UNetSpec::from_architecture(&arch, 8, 2).unwrap();
    let tensors = weights(&spec);
    let store = clopa_nn::ParamStore::new(tensors);
    let net = clopa_nn::ResidualEncoderUNet::new(&spec, &store.var_builder(&Device::Cpu)).unwrap();
    let predictor = Counting {
        inner: NetPredictor::new(net, Device::Cpu),
        passes: 0,
        seconds: 0.0,
    };
    let prompts = PromptConfig {
        patch_size: [patch; 3],
        ..PromptConfig::nninteractive_v1()
    };
    let mut config = SessionConfig::new(prompts);
    config.autozoom = autozoom;
    let mut session = InferenceSession::new(predictor, config).unwrap();

    let c = shape.map(|s| s as f32 / 2.0);
    let mut image = Vec::new();
    let mut reference = Vec::new();
    for x in 0..shape[0] {
        for y in 0..shape[1] {
            for z in 0..shape[2] {
                let d2 = (x as f32 - c[0]).powi(2)
                    + (y as f32 - c[1]).powi(2)
                    + (z as f32 - c[2]).powi(2);
                let inside = d2 <= radius * radius;
                reference.push(inside as u8);
                image.push(if inside { 100.0 } else { 10.0 } + ((x * 7 + y * 3 + z) % 11) as f32);
            }
        }
    }
    session.set_image(&image, shape).unwrap();
    let mut rng = case_rng(0, "bench", 0);
    let mut clicks = initial_clicks_raw(shape, &reference, &mut rng).unwrap();
    println!(
        "{which}: patch {patch}^3, image {shape:?}, autozoom {autozoom}, {} parameters",
        spec.num_parameters()
    );
    for step in 0..=edits {
        let (p0, s0) = (
            session.predictor_mut().passes,
            session.predictor_mut().seconds,
        );
        let t = Instant::now();
        for k in &clicks {
            session.add_point(k.coords_f64(), k.positive).unwrap();
        }
        let r = session.predict().unwrap().unwrap();
        let secs = t.elapsed().as_secs_f64();
        let p = session.predictor_mut();
        println!(
            "step {step}: {secs:.3} s, {} forward passes ({:.3} s in the network), zoom {}, {} refine boxes",
            p.passes - p0,
            p.seconds - s0,
            r.zoom,
            r.refine_boxes.len()
        );
        let seg = session.segmentation().unwrap().to_vec();
        clicks = edit_clicks_raw(shape, &seg, &reference, &mut rng).unwrap();
        if clicks.is_empty() {
            break;
        }
    }
    println!("peak RSS {:.0} MiB", peak_rss_mib());
}
