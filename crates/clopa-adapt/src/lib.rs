//! clopa-adapt: one CLoPA training episode — patch sampling, augmentation, the simulated
//! interaction loop, a PyTorch-exact Adam, validation and selection — as a library, so the
//! `clopa-train-episode` tool, pretraining (`all` group) and specialist training (no prompts)
//! share one implementation.
//!
//! Main items: [`TrainCase`] (a case normalised as the inference session normalises it) and
//! [`sample_patch`]; [`augment`] with [`AugmentConfig`] (the authors' intended set);
//! [`interaction_loop`] (init + edit passes, loss backpropagated per pass into a
//! [`GradAccumulator`]); [`Adam`] (coupled L2 weight decay, like `torch.optim.Adam`);
//! [`train_episode`] with [`EpisodeConfig`], returning the selected parameters and the
//! [`EpochLog`] rows that [`write_epoch_log`] stores.
//!
//! ```no_run
//! use candle_core::Device;
//! use clopa_adapt::{EpisodeConfig, TrainCase, train_episode};
//! use clopa_nn::{ParamGroup, load_model_folder};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = load_model_folder(std::path::Path::new("models/clopa-tiny"))?;
//! let mut params = model.param_store();
//! params.make_trainable(ParamGroup::In.names(&model.spec))?;
//! let (train, val): (Vec<TrainCase>, Vec<TrainCase>) = (vec![], vec![]); // from clopa-dataset
//! let prompt = clopa_adapt::prompt_config(&model.meta);
//! let cfg = EpisodeConfig { patch: [48; 3], epochs: 3, steps_per_epoch: 10, ..Default::default() };
//! let out = train_episode(&model.spec, &mut params, &prompt, &train, &val, &cfg, &Device::Cpu, &mut |_| {})?;
//! println!("selected epoch {}", out.selected_epoch);
//! # Ok(()) }
//! ```

pub mod augment;
pub mod episode;
pub mod error;
pub mod log;
pub mod r#loop;
pub mod optim;
pub mod patch;

pub use augment::{AugmentConfig, augment};
pub use episode::{EpisodeConfig, EpisodeOutcome, EpochLog, Progress, train_episode};
pub use error::{AdaptError, Result};
pub use log::{epoch_log_schema, log_path, read_epoch_log, write_epoch_log};
pub use r#loop::{GradAccumulator, LoopConfig, LoopOutcome, interaction_loop, normalised_auc};
pub use optim::{Adam, AdamConfig};
pub use patch::{Patch, TrainCase, crop, sample_patch};

/// The prompt rendering a model folder asks for (radius, decay and scheme); the patch size is
/// set per patch by the loop.
pub fn prompt_config(meta: &clopa_nn::ModelJson) -> clopa_interact::PromptConfig {
    clopa_interact::PromptConfig {
        patch_size: [meta.patch_size.first().copied().unwrap_or(192).max(1); 3],
        point_radius: meta.point_radius,
        decay: meta.interaction_decay,
        scheme: match meta.decay_scheme {
            clopa_nn::DecayScheme::PerType => clopa_interact::DecayScheme::PerType,
            clopa_nn::DecayScheme::Running => clopa_interact::DecayScheme::Running,
        },
    }
}
