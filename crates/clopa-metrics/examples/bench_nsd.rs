//! NSD timing on the mask pair written by `scripts/bench_nsd.py` (raw uint8, C order).
//!
//! ```text
//! cargo build --release -p clopa-metrics --example bench_nsd
//! /usr/bin/time -v target/release/examples/bench_nsd /tmp/bench_nsd [repeats]
//! ```

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/tmp/bench_nsd".into()));
    let repeats: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let shape = [512, 512, 100];
    let spacing = [0.8, 0.8, 2.5];
    let tol = 2.0;
    let pred = std::fs::read(dir.join("pred.u8"))?;
    let reference = std::fs::read(dir.join("ref.u8"))?;
    let mut times = Vec::new();
    let mut value = f64::NAN;
    for _ in 0..repeats {
        let t0 = Instant::now();
        value = clopa_metrics::nsd(&pred, &reference, shape, spacing, tol)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    println!(
        "{{\"impl\": \"clopa-metrics\", \"threads\": {}, \"nsd\": \"{value:?}\", \"seconds\": {times:?}, \"best_s\": {best}, \"median_s\": {median}}}",
        rayon::current_num_threads()
    );
    Ok(())
}
