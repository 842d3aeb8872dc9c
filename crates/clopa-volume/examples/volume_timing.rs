//! Times NIfTI I/O and `largest_component` on a CT-sized volume:
//! `cargo run -p clopa-volume --example volume_timing [--release]`.

use std::time::Instant;

use clopa_volume::{Volume, count_nonzero, largest_component, read_image, write_nifti};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shape = [256, 256, 128];
    let n: usize = shape.iter().product();
    let dir = tempfile::tempdir()?;
    // Smooth-ish integer data so gzip has realistic work to do.
    let data: Vec<i16> = (0..n)
        .map(|i| ((i % 4096) as i16 - 1000) ^ ((i / 977) as i16 & 7))
        .collect();
    let vol = Volume::from_shape(shape, [0.7, 0.7, 2.5], data)?;
    for ext in ["nii", "nii.gz"] {
        let p = dir.path().join(format!("ct.{ext}"));
        let t = Instant::now();
        write_nifti(&p, &vol)?;
        let tw = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let back = read_image(&p, 0)?;
        let tr = t.elapsed().as_secs_f64();
        assert_eq!(back.data.len(), n);
        println!("{shape:?} i16 .{ext}: write {tw:.3} s, read->f32 {tr:.3} s");
    }
    // A mask of many blobs plus one big slab: every voxel is visited by the BFS.
    let mask = vol.map(|&v| u8::from(v % 7 < 3 || v > 2500));
    let t = Instant::now();
    let l = largest_component(&mask);
    println!(
        "largest_component on {shape:?} ({} fg voxels): {:.3} s, kept {}",
        count_nonzero(&mask),
        t.elapsed().as_secs_f64(),
        count_nonzero(&l)
    );
    Ok(())
}
