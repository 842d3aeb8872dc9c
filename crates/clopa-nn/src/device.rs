//! Which candle device a tool runs on, from its `--device` name.

use candle_core::Device;

use crate::error::{NnError, Result};

/// Whether this build can run on CUDA GPUs (the `cuda` cargo feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The candle device named `name`: `cpu`, `cuda` (the first GPU) or `cuda:N`.
///
/// Tensors on a GPU take the [`crate::ops::portable`] compositions (cuDNN and cuBLAS underneath,
/// through candle). A build without the `cuda` feature names the feature and the build script
/// rather than failing somewhere inside candle.
pub fn device(name: &str) -> Result<Device> {
    let index = clopa_config::cuda_ordinal(name).map_err(|reason| NnError::Device {
        name: name.to_string(),
        reason,
    })?;
    let Some(index) = index else {
        return Ok(Device::Cpu);
    };
    if !CUDA_BUILT {
        return Err(NnError::Device {
            name: name.to_string(),
            reason: "this program was built without CUDA support; build it with \
                     `--features cuda` (scripts/build-cuda.sh) or use --device cpu"
                .into(),
        });
    }
    let dev = Device::new_cuda(index).map_err(|e| NnError::Device {
        name: name.to_string(),
        reason: format!("cannot open GPU {index}: {e}"),
    })?;
    #[cfg(feature = "cuda")]
    if let Err(reason) = keep_freed_gpu_memory(&dev) {
        // (a speed setting: the GPU works without it, as before it existed)
        eprintln!("clopa: GPU {index}: {reason}; freed memory goes back to the driver");
    }
    Ok(dev)
}

/// Makes the GPU's memory pool keep what is freed, as PyTorch's caching allocator does.
///
/// candle allocates through cudarc with `cuMemAllocAsync`, from the device's current memory pool,
/// whose release threshold is 0 by default: at every stream synchronisation (each copy to the
/// host: every loss read, every prediction) the pool hands all freed memory back to the driver,
/// and the next forward maps tens of GiB of pages afresh (on an H200 that cost 3–16 % of the
/// time, BENCHMARKS.md). With the threshold at its maximum the pool keeps what this process
/// freed for its own later allocations; like PyTorch's cache, that memory is then not available
/// to other processes, nor to cuDNN's or cuBLAS's own `cudaMalloc`s, until the process ends.
/// `CLOPA_CUDA_POOL=release` keeps the driver's default. Nothing to do where cudarc allocates
/// without a pool (a driver or device without `cuMemAllocAsync`).
#[cfg(feature = "cuda")]
fn keep_freed_gpu_memory(dev: &Device) -> std::result::Result<(), String> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    if std::env::var("CLOPA_CUDA_POOL").is_ok_and(|v| v == "release") {
        return Ok(());
    }
    let Device::Cuda(cuda) = dev else {
        return Ok(());
    };
    let ctx = cuda.cuda_stream().context().clone();
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: `pool` is written by the first call before the second reads it; the attribute's
    // value is a u64 (cuuint64_t), as the driver API documents for the release threshold.
    let status = unsafe {
        match sys::cuDeviceGetMemPool(&mut pool, ctx.cu_device()) {
            sys::CUresult::CUDA_SUCCESS => sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            ),
            e => e,
        }
    };
    match status {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        e => Err(format!(
            "cannot set its memory pool's release threshold ({e:?})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(device("cpu").expect("cpu").is_cpu());
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", ""] {
            let e = device(bad).expect_err(bad).to_string();
            assert!(e.contains("must be cpu, cuda or cuda:N"), "{bad}: {e}");
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        if !CUDA_BUILT {
            let e = device("cuda:1").expect_err("no cuda").to_string();
            assert!(e.contains("built without CUDA support"), "{e}");
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
