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
    Device::new_cuda(index).map_err(|e| NnError::Device {
        name: name.to_string(),
        reason: format!("cannot open GPU {index}: {e}"),
    })
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
