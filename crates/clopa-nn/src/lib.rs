//! clopa-nn: differentiable 3D ops on candle and nnInteractive's `ResidualEncoderUNet`, with
//! checkpoint import, parameter groups, model folders and the training losses.
//!
//! Main types: [`ResidualEncoderUNet`] (the network, built from a candle-nn `VarBuilder` with
//! PyTorch's canonical parameter names), [`UNetSpec`] (the validated nnU-Net `architecture`
//! block; [`UNetSpec::parameter_shapes`] lists every canonical name and shape), [`ParamStore`]
//! (named parameters where one [`ParamGroup`] is trainable), [`ModelFolder`] (a clopa model
//! folder: `model.json` + `model.safetensors`), [`import::import_nnunet_folder`] (an
//! nnInteractive / nnU-Net folder with its `checkpoint_final.pth`, read without Python) and
//! [`loss`]. The 3D kernels live in [`ops`].
//!
//! ```no_run
//! use std::path::Path;
//! use candle_core::{DType, Device, Tensor};
//! use clopa_nn::{ParamGroup, load_model_folder, ResidualEncoderUNet};
//! # fn main() -> clopa_nn::Result<()> {
//! let model = load_model_folder(Path::new("models/nnInteractive_v1.0"))?;
//! let mut params = model.param_store();
//! params.make_trainable(ParamGroup::In.names(&model.spec))?; // tune the instance norms only
//! let net = ResidualEncoderUNet::new(&model.spec, &params.var_builder(&Device::Cpu))?;
//! let x = Tensor::zeros((1, 8, 64, 64, 64), DType::F32, &Device::Cpu)?;
//! let logits = net.forward(&x)?; // (1, 2, 64, 64, 64)
//! # Ok(()) }
//! ```

pub mod arch;
pub mod device;
pub mod error;
pub mod groups;
pub mod import;
pub mod loss;
pub mod model_folder;
pub mod ops;
pub mod params;
pub mod unet;

pub use arch::{Architecture, UNetSpec};
pub use device::{CUDA_BUILT, device};
pub use error::{NnError, Result};
pub use groups::{ParamCounts, ParamGroup, param_counts};
pub use model_folder::{
    DecayScheme, EpisodeCheckpoint, ModelFolder, ModelJson, all_finite, check_chain,
    load_model_folder, read_episode_checkpoint, read_model_json, sha256_file,
    write_episode_checkpoint, write_model_folder,
};
pub use params::ParamStore;
pub use unet::ResidualEncoderUNet;
