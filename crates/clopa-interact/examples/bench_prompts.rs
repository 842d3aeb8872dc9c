//! Timing of prompt rendering, network-input assembly and click sampling at the real sizes
//! (192^3 patches in a 512x512x100 volume). Run with
//! `cargo run --release -p clopa-interact --example bench_prompts`.

use std::time::Instant;

use clopa_interact::{
    Interactions, PromptConfig, build_network_input, case_rng, edit_clicks_raw, initial_clicks_raw,
    zscore,
};

fn main() -> Result<(), clopa_interact::InteractError> {
    let shape = [512, 512, 100];
    let n: usize = shape.iter().product();
    let image: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 - 300.0).collect();
    let t = Instant::now();
    let (norm, _) = zscore(&image, shape)?;
    println!(
        "zscore 512x512x100: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let mut reference = vec![0u8; n];
    let mut prediction = vec![0u8; n];
    for (i, (r, p)) in reference.iter_mut().zip(prediction.iter_mut()).enumerate() {
        let (x, y, z) = (i / (512 * 100), (i / 100) % 512, i % 100);
        *r = ((200..300).contains(&x) && (200..320).contains(&y) && (30..70).contains(&z)) as u8;
        *p = ((210..310).contains(&x) && (190..300).contains(&y) && (30..75).contains(&z)) as u8;
    }
    let mut rng = case_rng(0, "bench", 0);
    let t = Instant::now();
    let clicks = initial_clicks_raw(shape, &reference, &mut rng)?;
    let edits = edit_clicks_raw(shape, &prediction, &reference, &mut rng)?;
    println!(
        "initial + edit clicks: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let mut it = Interactions::new(shape, PromptConfig::nninteractive_v2())?;
    let t = Instant::now();
    for c in clicks.iter().chain(&edits) {
        it.add_point(c.coords_f64(), c.positive)?;
    }
    it.add_bbox([[180.0, 330.0], [180.0, 340.0], [50.0, 51.0]], true)?;
    println!(
        "{} points + 1 box: {:.2} ms",
        clicks.len() + edits.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    it.paste_prev_seg(&prediction, [[0, 512], [0, 512], [0, 100]])?;

    let center = [256, 256, 50];
    for zoom in [1.0, 1.5, 2.25, 3.375, 4.0] {
        let t = Instant::now();
        let input = build_network_input(&norm, &it, center, zoom)?;
        println!(
            "network input zoom {zoom}: window {:?}, {:.1} ms",
            input.scaled_patch_size,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    // the kernels of the zoomed assembly, one at a time (zoom 1.5 and 4)
    for zoom in [1.5, 4.0] {
        let scaled = [192, 192, 192].map(|p: usize| (p as f64 * zoom).round() as usize);
        let window = clopa_interact::window_around(center, scaled);
        let origin = window.map(|[lo, _]| lo);
        let part = [0, 1, 2].map(|d| {
            [
                window[d][0].clamp(0, shape[d] as i64) as usize,
                window[d][1].clamp(0, shape[d] as i64) as usize,
            ]
        });
        let view = |data| clopa_interact::resample::VolumeView {
            data,
            shape,
            part,
            origin,
            full: scaled,
        };
        let t = Instant::now();
        let _ = clopa_interact::resample::area_f16_view(
            &view(it.channel(clopa_interact::PREV_SEG)),
            [192; 3],
        );
        let a = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let _ = clopa_interact::resample::nearest_view(
            &view(it.channel(clopa_interact::PREV_SEG)),
            [192; 3],
        );
        let b = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let _ = clopa_interact::resample::trilinear_view(
            &clopa_interact::resample::VolumeView {
                data: &norm,
                shape,
                part,
                origin,
                full: scaled,
            },
            [192; 3],
        );
        let c = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "zoom {zoom}: area(prev_seg) {a:.1} ms, nearest(prev_seg) {b:.1} ms, trilinear(image) {c:.1} ms"
        );
    }
    Ok(())
}
