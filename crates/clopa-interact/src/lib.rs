//! Simulated user, prompt rendering and network-input assembly for nnInteractive-style
//! interactive 3D segmentation, in plain Rust on `f32`/`f16` buffers (no network code here).
//!
//! - [`Interactions`]: the seven f16 interaction channels of one image (`[prev_seg, bbox+, bbox-,
//!   point+, point-, scribble+, scribble-]`) and how points, boxes, scribbles, lassos and an
//!   initial segmentation are rendered into them, exactly as nnInteractive 2.6.0 does
//!   (radius-4 distance-transform stamps, max-merge, [`DecayScheme::Running`] or the 1.x
//!   [`DecayScheme::PerType`] decay), plus the queued prediction centre and zoom.
//! - [`ZScore`]: the session's normalisation (unbiased std over the non-zero bounding box).
//! - [`build_network_input`]: the 8-channel network patch around a centre, with zoom-out
//!   (max-pool + `area` for prompts, trilinear for the image, nearest for prev_seg).
//! - [`initial_clicks`] / [`edit_clicks`] and [`case_rng`]: IS_Validate's click simulator.
//! - [`InferenceSession`]: the persistent session (prediction around the last click, AutoZoom,
//!   refinement boxes) over a network behind [`Predictor`]; [`simulate_case`]: one simulated case.
//! - [`predict_automatic`]: prompt-free whole-image prediction by nnU-Net's Gaussian sliding
//!   window (how a specialist is scored for a task's expert threshold).
//!
//! Volumes are C-contiguous `[x, y, z]` with z fastest, like [`clopa_volume::Volume`].
//!
//! ```
//! use clopa_interact::{Interactions, PromptConfig, build_network_input, zscore};
//! let shape = [40, 40, 40];
//! let image: Vec<f32> = (0..40 * 40 * 40).map(|i| (i % 97) as f32).collect();
//! let (normalised, _stats) = zscore(&image, shape)?;
//! let mut config = PromptConfig::nninteractive_v2();
//! config.patch_size = [32, 32, 32];
//! let mut prompts = Interactions::new(shape, config)?;
//! prompts.add_point([20.0, 21.0, 22.0], true)?;
//! let next = *prompts.queued().last().expect("a point queues a prediction");
//! let input = build_network_input(&normalised, &prompts, next.center, next.capped_zoom())?;
//! assert_eq!(input.data.len(), 8 * 32 * 32 * 32);
//! # Ok::<(), clopa_interact::InteractError>(())
//! ```

mod assemble;
mod clicks;
mod error;
mod interactions;
mod normalize;
pub mod resample;
pub mod session;
mod simulate;
mod sliding;
mod stamp;

pub use assemble::{NUM_INPUT_CHANNELS, NetworkInput, build_network_input, window_around};
pub use clicks::{
    Click, Clicks, case_rng, edit_clicks, edit_clicks_raw, initial_clicks, initial_clicks_raw,
};
pub use error::InteractError;
pub use interactions::{
    BBOX_NEG, BBOX_POS, DecayScheme, Interactions, MAX_ZOOM, NUM_INTERACTION_CHANNELS, POINT_NEG,
    POINT_POS, PREV_SEG, PromptConfig, QueuedPrediction, SCRIBBLE_NEG, SCRIBBLE_POS,
    round_half_even,
};
pub use normalize::{ZScore, nonzero_bbox, zscore, zscore_volume};
pub use session::{
    BorderThresholds, Box3, InferenceSession, PredictReport, Predictor, PredictorError,
    SessionConfig, SessionError,
};
pub use simulate::{CaseSimulation, StepRecord, simulate_case};
pub use sliding::{AutomaticError, gaussian_weights, predict_automatic, tile_starts};
pub use stamp::PointStamp;
