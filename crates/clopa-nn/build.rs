//! With the `cuda` feature: compiles the fused instance-norm and loss kernels
//! (src/ops/cuda_norm.cu, src/ops/cuda_loss.cu) to PTX with nvcc, for the compute capability
//! `CUDA_COMPUTE_CAP`, else the GPU's (nvidia-smi), as candle-kernels does; else 90 (H100/H200).
//! PTX for sm_N loads on GPUs of capability N and up.
//! nvcc is `$CUDA_ROOT/bin/nvcc` if `CUDA_ROOT` is set, else the one on the PATH
//! (scripts/build-cuda.sh sets both). Without the feature it does nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=CUDA_ROOT");
    let cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .or_else(detected_compute_cap)
        .unwrap_or_else(|| {
            println!("cargo::warning=CUDA_COMPUTE_CAP unset and no GPU found: PTX for sm_90");
            "90".to_owned()
        });
    let nvcc = std::env::var_os("CUDA_ROOT").map_or_else(
        || PathBuf::from("nvcc"),
        |r| PathBuf::from(r).join("bin/nvcc"),
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo::rerun-if-changed=src/ops/cuda_reduce.cuh");
    for kernels in ["cuda_norm", "cuda_loss"] {
        let src = format!("src/ops/{kernels}.cu");
        println!("cargo::rerun-if-changed={src}");
        let ptx = out.join(format!("{kernels}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "--std=c++17", &format!("-arch=sm_{cap}")])
            .arg(&src)
            .arg("-o")
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} (the cuda feature needs nvcc): {e}",
                    nvcc.display()
                )
            });
        assert!(
            status.success(),
            "{} failed on {src} ({status})",
            nvcc.display()
        );
    }
}

/// The first GPU's compute capability as nvidia-smi says it ("9.0" → "90"), if there is one.
fn detected_compute_cap() -> Option<String> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()?;
    let cap = String::from_utf8(out.stdout).ok()?;
    let cap = cap.lines().next()?.trim().replace('.', "");
    (out.status.success() && !cap.is_empty() && cap.chars().all(|c| c.is_ascii_digit()))
        .then_some(cap)
}
