//! Times `generate_case` per kind and prints foreground fractions:
//! `cargo run -p clopa-phantom --example synth_timing [--release]`.

use std::time::Instant;

use clopa_phantom::{SynthConfig, TaskKind, case_rng, generate_case};

fn main() -> Result<(), clopa_phantom::PhantomError> {
    for kind in TaskKind::ALL {
        let cfg = SynthConfig::new(kind);
        let mut times = Vec::new();
        let mut fracs = Vec::new();
        for i in 0..8 {
            let t = Instant::now();
            let case = generate_case(&cfg, &mut case_rng(0, i))?;
            times.push(t.elapsed().as_secs_f64());
            let fg = case.label.data.iter().filter(|&&v| v != 0).count();
            fracs.push(fg as f64 / case.label.len() as f64);
        }
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let (fmin, fmax) = fracs
            .iter()
            .fold((1.0f64, 0.0f64), |(a, b), &f| (a.min(f), b.max(f)));
        println!(
            "{kind:8} {:?}: {:.3} s/case (max {:.3}), foreground {:.4}%..{:.4}%",
            cfg.shape(),
            mean,
            times.iter().cloned().fold(0.0, f64::max),
            fmin * 100.0,
            fmax * 100.0
        );
    }
    Ok(())
}
