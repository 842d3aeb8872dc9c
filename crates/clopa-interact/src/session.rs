//! The inference session: one image, its interaction channels and its segmentation, kept across
//! clicks, with nnInteractive 2.6.0's prediction logic (`_predict`): a patch around the last
//! interaction, AutoZoom and refinement boxes.
//!
//! The network sits behind [`Predictor`], so this crate needs no tensor library and tests can use
//! a fake. A prediction goes:
//!
//! 1. the network input (`build_network_input`) of a `patch`-sized window centred on the last
//!    queued interaction, zero-padded outside the image, forward pass, argmax (ties → background);
//! 2. AutoZoom: while a border face of the prediction differs from the previous segmentation
//!    ([`BorderThresholds`]), zoom out ×1.5 (capped at 4) and predict again on the resampled
//!    window;
//! 3. zoom 1: the prediction is pasted into prev_seg and the segmentation over its window
//!    (clipped to the image). Zoomed: the coarse mask is upsampled (trilinear, ≥ 0.5) to the
//!    window, compared with prev_seg, the difference is opened (5³ min then max, replicated
//!    border), covered greedily by patch-sized boxes (margin 24 at 192³, scaled with the patch)
//!    or, when nothing changed, one box at the last interaction. Each box is re-predicted at full
//!    resolution, in order, with the coarse mask standing in for prev_seg inside the window and
//!    earlier boxes' results already in place; only the boxes are written back. Nothing outside
//!    the predicted windows ever changes.
//!
//! Compared line by line with nnInteractive 2.6.0's `inference_session.py` (`_predict`,
//! `_build_network_input`, `_detect_change_at_border`, `_plan_refinement_bboxes`,
//! `_compute_local_diff_map`, `_refine_coarse_with_local_cache`). Same: only the last queued
//! centre is used; initial zoom 1 for points, ×1.5 steps capped at 4, the loop stops at the cap;
//! the face statistics and thresholds; zoom 1 pastes the whole (clipped) window; the coarse mask
//! is injected as prev_seg context only inside the image and only the refined boxes are
//! committed, so coarse values never persist between boxes; boxes see earlier boxes' results;
//! the fallback box is patch-sized at the last centre. Behavioural differences, none of which
//! changes a point-only simulation beyond rounding-level ties:
//!
//! - the refinement's fallback candidates are evenly spaced instead of random ([`refine`]), so
//!   a run is reproducible;
//! - the refinement margin is `round(24 · p / 192)` (the reference uses 24 for any patch; equal
//!   at 192³);
//! - outside the image the refinement context stays zero: the reference's local cache keeps a
//!   refined box's out-of-image prediction in its padding, which a later overlapping box that
//!   also leaves the image then sees as prev_seg (its own comment says that padding should look
//!   as the coarse pass saw it, i.e. zero);
//! - the coarse mask is upsampled with f64 separable trilinear weights; PyTorch's f32 kernel
//!   agrees to ~1e-7 but the `>= 0.5` threshold can flip voxels at exact ties (checked with
//!   torch on random 0/1 masks, 16³ → 36³ / 54³: a few voxels; no f32 summation order we tried
//!   reproduced PyTorch bit for bit), which only moves the refinement plan / context there;
//! - on CUDA the reference runs the network under fp16 autocast; here the forward is f32;
//! - not implemented (unused by the simulation): `force_full_refine`, undo, and the changed-region
//!   hull the reference returns (we report the boxes, [`PredictReport::written`]).
//!
//! v1.0.1's session (the one of the paper's time) differs more: it pastes the whole upsampled
//! coarse mask into the segmentation before refining; we follow 2.6 (reference/nninteractive.md §5).

pub mod refine;

use half::f16;

use crate::assemble::build_network_input;
use crate::error::InteractError;
use crate::interactions::{Interactions, MAX_ZOOM, PREV_SEG, PromptConfig};
use crate::normalize::ZScore;
use crate::resample::{Region, trilinear};
pub use refine::{BorderThresholds, Box3, border_changed, generate_bounding_boxes};

/// Whatever a [`Predictor`] may fail with.
pub type PredictorError = Box<dyn std::error::Error + Send + Sync>;

/// The network.
///
/// `input` is the `[8, p0, p1, p2]` network input (C order, `patch = [p0, p1, p2]`); the output
/// is either the two class logits `[2, p0, p1, p2]` (foreground where logit 1 > logit 0, so ties
/// go to background like `argmax`) or one foreground margin `[p0, p1, p2]` (foreground where
/// > 0, e.g. logit 1 − logit 0).
pub trait Predictor {
    /// One forward pass.
    fn predict(&mut self, input: &[f32], patch: [usize; 3]) -> Result<Vec<f32>, PredictorError>;
}

impl<F> Predictor for F
where
    F: FnMut(&[f32], [usize; 3]) -> Result<Vec<f32>, PredictorError>,
{
    fn predict(&mut self, input: &[f32], patch: [usize; 3]) -> Result<Vec<f32>, PredictorError> {
        self(input, patch)
    }
}

/// Errors of the session and the simulation loop.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Prompt rendering, input assembly or normalisation failed.
    #[error(transparent)]
    Interact(#[from] InteractError),
    /// `add_point` or `predict` before `set_image`.
    #[error("the session has no image: call set_image first")]
    NoImage,
    /// The predictor failed.
    #[error("the network failed on a {patch:?} patch: {source}")]
    Predictor {
        patch: [usize; 3],
        #[source]
        source: PredictorError,
    },
    /// The predictor returned the wrong number of values.
    #[error("the network returned {got} values for a {patch:?} patch; expected {} (2 logits) or {} (1 margin)", 2 * .n, .n)]
    PredictorOutput {
        got: usize,
        patch: [usize; 3],
        n: usize,
    },
    /// Dice or NSD could not be computed.
    #[error("metrics: {0}")]
    Metrics(#[from] clopa_metrics::MetricsError),
}

/// Settings of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// Patch size, point radius and decay.
    pub prompts: PromptConfig,
    /// Zoom out while the border changes (nnInteractive's `do_autozoom`, on by default).
    pub autozoom: bool,
    /// When the border counts as changed.
    pub border: BorderThresholds,
    /// Voxels at each face of a refinement box that do not count as covered (24 at 192³).
    pub refine_margin: [usize; 3],
    /// Stride halvings before the refinement cover falls back to sampling (3).
    pub refine_max_depth: usize,
}

impl SessionConfig {
    /// nnInteractive 2.6.0's settings for `prompts`: AutoZoom on, thresholds 1500 / 100 / 0.2,
    /// margin 24 voxels scaled with the patch (`round(24 · p / 192)`, kept below half the patch),
    /// recursion depth 3.
    pub fn new(prompts: PromptConfig) -> Self {
        let refine_margin = prompts.patch_size.map(|p| {
            let m = crate::interactions::round_half_even(24.0 * p as f64 / 192.0).max(0) as usize;
            m.min((p / 2).saturating_sub(1))
        });
        SessionConfig {
            prompts,
            autozoom: true,
            border: BorderThresholds::default(),
            refine_margin,
            refine_max_depth: 3,
        }
    }
}

/// What one [`InferenceSession::predict`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictReport {
    /// The last interaction's centre the prediction was made around.
    pub center: [i64; 3],
    /// Final zoom-out factor (1 = no AutoZoom).
    pub zoom: f64,
    /// The (scaled) window of the last coarse prediction.
    pub window: Box3,
    /// Refinement boxes (empty at zoom 1), in the order they were predicted.
    pub refine_boxes: Vec<Box3>,
    /// Forward passes in total.
    pub forward_passes: usize,
}

impl PredictReport {
    /// The windows whose voxels may have been written: the window at zoom 1, else the boxes.
    pub fn written(&self) -> Vec<Box3> {
        if self.refine_boxes.is_empty() {
            vec![self.window]
        } else {
            self.refine_boxes.clone()
        }
    }
}

#[derive(Debug, Clone)]
struct ImageState {
    shape: [usize; 3],
    image: Vec<f32>,
    zscore: ZScore,
    interactions: Interactions,
    segmentation: Vec<u8>,
}

/// An interactive segmentation session (nnInteractive's `nnInteractiveInferenceSession` for
/// point prompts).
///
/// ```
/// use clopa_interact::{InferenceSession, PredictorError, PromptConfig, SessionConfig};
/// let mut prompts = PromptConfig::nninteractive_v2();
/// prompts.patch_size = [16, 16, 16];
/// // a fake network: foreground wherever the (z-scored) image is bright
/// let net = |x: &[f32], p: [usize; 3]| -> Result<Vec<f32>, PredictorError> {
///     Ok(x[..p.iter().product::<usize>()].iter().map(|&v| v - 1.0).collect())
/// };
/// let mut session = InferenceSession::new(net, SessionConfig::new(prompts))?;
/// let shape = [32, 32, 32];
/// let image: Vec<f32> = (0..32 * 32 * 32).map(|i| if i % 1000 < 50 { 10.0 } else { 1.0 }).collect();
/// session.set_image(&image, shape)?;
/// session.add_point([16.0, 16.0, 16.0], true)?;
/// let report = session.predict()?.expect("a point queues a prediction");
/// assert!(report.zoom >= 1.0);
/// assert_eq!(session.segmentation().map(|s| s.len()), Some(32 * 32 * 32));
/// # Ok::<(), clopa_interact::SessionError>(())
/// ```
pub struct InferenceSession<P> {
    predictor: P,
    config: SessionConfig,
    state: Option<ImageState>,
}

impl<P: Predictor> InferenceSession<P> {
    /// A session without an image.
    pub fn new(predictor: P, config: SessionConfig) -> Result<Self, SessionError> {
        // validates decay and patch size
        Interactions::new([1, 1, 1], config.prompts.clone())?;
        Ok(InferenceSession {
            predictor,
            config,
            state: None,
        })
    }

    /// The settings.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The network.
    pub fn predictor_mut(&mut self) -> &mut P {
        &mut self.predictor
    }

    /// Gives the network back.
    pub fn into_predictor(self) -> P {
        self.predictor
    }

    /// Sets a new image (`shape`, z fastest, raw intensities): z-scored as the session does
    /// (mean and unbiased std over the non-zero bounding box), with empty interactions and an
    /// empty segmentation. Returns the normalisation statistics.
    pub fn set_image(&mut self, image: &[f32], shape: [usize; 3]) -> Result<ZScore, SessionError> {
        let zscore = ZScore::fit(image, shape)?;
        let interactions = Interactions::new(shape, self.config.prompts.clone())?;
        self.state = Some(ImageState {
            shape,
            image: zscore.normalize(image),
            zscore,
            interactions,
            segmentation: vec![0; image.len()],
        });
        Ok(zscore)
    }

    /// [`InferenceSession::set_image`] on a volume.
    pub fn set_image_volume(
        &mut self,
        image: &clopa_volume::Volume<f32>,
    ) -> Result<ZScore, SessionError> {
        self.set_image(&image.data, image.shape)
    }

    fn state_mut(&mut self) -> Result<&mut ImageState, SessionError> {
        self.state.as_mut().ok_or(SessionError::NoImage)
    }

    /// Image shape, if an image is set.
    pub fn shape(&self) -> Option<[usize; 3]> {
        self.state.as_ref().map(|s| s.shape)
    }

    /// Normalisation statistics of the current image.
    pub fn zscore(&self) -> Option<ZScore> {
        self.state.as_ref().map(|s| s.zscore)
    }

    /// The current segmentation (0/1, image shape), if an image is set.
    pub fn segmentation(&self) -> Option<&[u8]> {
        self.state.as_ref().map(|s| s.segmentation.as_slice())
    }

    /// The interaction channels, if an image is set.
    pub fn interactions(&self) -> Option<&Interactions> {
        self.state.as_ref().map(|s| &s.interactions)
    }

    /// A click at voxel `coords` (rendered with the model's point radius and decay scheme); it
    /// queues a prediction centred on it. No prediction runs until [`InferenceSession::predict`].
    pub fn add_point(&mut self, coords: [f64; 3], positive: bool) -> Result<(), SessionError> {
        self.state_mut()?.interactions.add_point(coords, positive)?;
        Ok(())
    }

    /// Forgets every interaction and the segmentation (the image stays).
    pub fn reset(&mut self) -> Result<(), SessionError> {
        let st = self.state_mut()?;
        st.interactions.reset();
        st.interactions.clear_queue();
        st.segmentation.fill(0);
        Ok(())
    }

    /// Predicts around the last queued interaction (see the module docs) and clears the queue.
    /// `None` when nothing was queued.
    pub fn predict(&mut self) -> Result<Option<PredictReport>, SessionError> {
        let InferenceSession {
            predictor,
            config,
            state,
        } = self;
        let st = state.as_mut().ok_or(SessionError::NoImage)?;
        run_predict(predictor, config, st)
    }

    /// The normalised image (tests compare predictions with it).
    #[cfg(test)]
    fn image(&self) -> &[f32] {
        self.state
            .as_ref()
            .map(|s| s.image.as_slice())
            .unwrap_or(&[])
    }
}

/// One forward pass, thresholded to a 0/1 mask of the patch.
fn forward<P: Predictor + ?Sized>(
    p: &mut P,
    input: &[f32],
    patch: [usize; 3],
) -> Result<Vec<u8>, SessionError> {
    let n = patch.iter().product::<usize>();
    let out = p
        .predict(input, patch)
        .map_err(|source| SessionError::Predictor { patch, source })?;
    if out.len() == 2 * n {
        let (bg, fg) = out.split_at(n);
        Ok(bg.iter().zip(fg).map(|(b, f)| (f > b) as u8).collect())
    } else if out.len() == n {
        Ok(out.iter().map(|&v| (v > 0.0) as u8).collect())
    } else {
        Err(SessionError::PredictorOutput {
            got: out.len(),
            patch,
            n,
        })
    }
}

/// Writes `values` (shape of `window`) into `dst` (image `shape`) where the window meets the image.
fn paste(dst: &mut [u8], shape: [usize; 3], values: &[u8], window: Box3) {
    let Some(c) = refine::clip_box(window, shape) else {
        return;
    };
    let ws = window.map(|[a, b]| (b - a) as usize);
    for x in c[0][0]..c[0][1] {
        let sx = (x as i64 - window[0][0]) as usize;
        for y in c[1][0]..c[1][1] {
            let sy = (y as i64 - window[1][0]) as usize;
            let sz = (c[2][0] as i64 - window[2][0]) as usize;
            let src = (sx * ws[1] + sy) * ws[2] + sz;
            let d = (x * shape[1] + y) * shape[2] + c[2][0];
            let len = c[2][1] - c[2][0];
            dst[d..d + len].copy_from_slice(&values[src..src + len]);
        }
    }
}

/// prev_seg over the in-image part `c` of a box, as 0/1.
fn read_prev_seg(it: &Interactions, c: [[usize; 2]; 3]) -> Vec<u8> {
    let shape = it.shape();
    let ch = it.channel(PREV_SEG);
    let mut out = Vec::with_capacity(c.iter().map(|[a, b]| b - a).product());
    for x in c[0][0]..c[0][1] {
        for y in c[1][0]..c[1][1] {
            let row = (x * shape[1] + y) * shape[2];
            out.extend(
                ch[row + c[2][0]..row + c[2][1]]
                    .iter()
                    .map(|v| (v.to_f32() > 0.5) as u8),
            );
        }
    }
    out
}

fn as_box(c: [[usize; 2]; 3]) -> Box3 {
    c.map(|[a, b]| [a as i64, b as i64])
}

fn run_predict<P: Predictor + ?Sized>(
    predictor: &mut P,
    config: &SessionConfig,
    st: &mut ImageState,
) -> Result<Option<PredictReport>, SessionError> {
    let Some(queued) = st.interactions.queued().last().copied() else {
        return Ok(None);
    };
    st.interactions.clear_queue();
    let patch = config.prompts.patch_size;
    let center = queued.center;
    let mut zoom = queued.capped_zoom().max(1.0);
    let mut input = build_network_input(&st.image, &st.interactions, center, zoom)?;
    let mut pred = forward(predictor, &input.data, patch)?;
    let mut passes = 1;
    let mut changed = border_changed(&pred, &input.previous_prediction, patch, &config.border);
    while changed && config.autozoom {
        if zoom >= MAX_ZOOM {
            break;
        }
        zoom = (zoom * 1.5).min(MAX_ZOOM);
        input = build_network_input(&st.image, &st.interactions, center, zoom)?;
        pred = forward(predictor, &input.data, patch)?;
        passes += 1;
        changed = border_changed(&pred, &input.previous_prediction, patch, &config.border);
    }
    let window = input.window;
    drop(input);
    if zoom == 1.0 {
        st.interactions.paste_prev_seg(&pred, window)?;
        paste(&mut st.segmentation, st.shape, &pred, window);
        return Ok(Some(PredictReport {
            center,
            zoom,
            window,
            refine_boxes: Vec::new(),
            forward_passes: passes,
        }));
    }

    let scaled = window.map(|[a, b]| (b - a) as usize);
    let coarse = if scaled != patch {
        let region = Region {
            full: patch,
            lo: [0; 3],
            shape: patch,
            data: pred,
        };
        trilinear(&region, scaled)
            .into_iter()
            .map(|v| (v >= 0.5) as u8)
            .collect()
    } else {
        pred
    };
    let boxes = plan_refinement(config, st, &coarse, window, center);

    // The coarse mask is context for the refinement passes only: remember prev_seg where it is
    // injected and restore it afterwards everywhere the boxes do not cover.
    let injected =
        refine::clip_box(window, st.shape).map(|c| (c, read_prev_seg(&st.interactions, c)));
    st.interactions.paste_prev_seg(&coarse, window)?;
    drop(coarse);
    let half = patch.map(|p| (p / 2) as i64);
    for b in &boxes {
        let c = [0, 1, 2].map(|d| b[d][0] + half[d]);
        let input = build_network_input(&st.image, &st.interactions, c, 1.0)?;
        let refined = forward(predictor, &input.data, patch)?;
        passes += 1;
        st.interactions.paste_prev_seg(&refined, input.window)?;
    }
    let finals: Vec<_> = boxes
        .iter()
        .filter_map(|&b| refine::clip_box(b, st.shape))
        .map(|c| (c, read_prev_seg(&st.interactions, c)))
        .collect();
    if let Some((c, old)) = injected {
        st.interactions.paste_prev_seg(&old, as_box(c))?;
    }
    for (c, v) in &finals {
        st.interactions.paste_prev_seg(v, as_box(*c))?;
        paste(&mut st.segmentation, st.shape, v, as_box(*c));
    }
    Ok(Some(PredictReport {
        center,
        zoom,
        window,
        refine_boxes: boxes,
        forward_passes: passes,
    }))
}

/// `_plan_refinement_bboxes`: boxes over the opened difference between the upsampled coarse
/// mask and prev_seg inside the (clipped) window, or one box at the last interaction.
fn plan_refinement(
    config: &SessionConfig,
    st: &ImageState,
    coarse: &[u8],
    window: Box3,
    center: [i64; 3],
) -> Vec<Box3> {
    let patch = config.prompts.patch_size;
    let fallback = || {
        vec![[0, 1, 2].map(|d| {
            [
                center[d] - (patch[d] / 2) as i64,
                center[d] - (patch[d] / 2) as i64 + patch[d] as i64,
            ]
        })]
    };
    let Some(clip) = refine::clip_box(window, st.shape) else {
        return fallback();
    };
    let ls = clip.map(|[a, b]| b - a);
    let ws = window.map(|[a, b]| (b - a) as usize);
    let prev = st.interactions.channel(PREV_SEG);
    let mut diff = Vec::with_capacity(ls.iter().product());
    for x in clip[0][0]..clip[0][1] {
        let wx = (x as i64 - window[0][0]) as usize;
        for y in clip[1][0]..clip[1][1] {
            let wy = (y as i64 - window[1][0]) as usize;
            let wz = (clip[2][0] as i64 - window[2][0]) as usize;
            let crow = (wx * ws[1] + wy) * ws[2] + wz;
            let prow = (x * st.shape[1] + y) * st.shape[2] + clip[2][0];
            diff.extend(
                coarse[crow..crow + ls[2]]
                    .iter()
                    .zip(&prev[prow..prow + ls[2]])
                    .map(|(&c, &p)| (f16::from_f32(c as f32) != p) as u8),
            );
        }
    }
    refine::pool(&mut diff, ls, 2, true);
    refine::pool(&mut diff, ls, 2, false);
    let boxes = generate_bounding_boxes(
        &diff,
        ls,
        patch,
        config.refine_margin,
        config.refine_max_depth,
    );
    if boxes.is_empty() {
        return fallback();
    }
    boxes
        .into_iter()
        .map(|b| [0, 1, 2].map(|d| [b[d][0] + clip[d][0] as i64, b[d][1] + clip[d][0] as i64]))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::interactions::{DecayScheme, POINT_POS};

    /// A fake network: foreground where the z-scored image is above `t` and either a positive
    /// click is within `r` patch voxels (seen in the point+ channel of the input) or prev_seg is set.
    fn fake(t: f32, r: f32) -> impl FnMut(&[f32], [usize; 3]) -> Result<Vec<f32>, PredictorError> {
        move |x: &[f32], p: [usize; 3]| {
            let n = p.iter().product::<usize>();
            let pts = &x[(1 + POINT_POS) * n..(2 + POINT_POS) * n];
            // the click centres: the maxima of point+ (zoomed-out inputs blur the stamps)
            let top = pts.iter().fold(0f32, |a, &b| a.max(b));
            let clicks: Vec<[f32; 3]> = (0..n)
                .filter(|&i| top > 0.0 && pts[i] >= 0.99 * top)
                .map(|i| {
                    [
                        (i / (p[1] * p[2])) as f32,
                        ((i / p[2]) % p[1]) as f32,
                        (i % p[2]) as f32,
                    ]
                })
                .collect();
            Ok((0..n)
                .map(|i| {
                    let q = [
                        (i / (p[1] * p[2])) as f32,
                        ((i / p[2]) % p[1]) as f32,
                        (i % p[2]) as f32,
                    ];
                    let near = clicks
                        .iter()
                        .any(|c| (0..3).map(|d| (c[d] - q[d]).powi(2)).sum::<f32>() <= r * r);
                    // keeps what prev_seg already holds (the refinement passes see the coarse mask there)
                    let kept = x[n + i] > 0.5;
                    if (near || kept) && x[i] > t {
                        1.0
                    } else {
                        -1.0
                    }
                })
                .collect())
        }
    }

    fn config(patch: usize) -> SessionConfig {
        SessionConfig::new(PromptConfig {
            patch_size: [patch; 3],
            point_radius: 2,
            decay: 0.9,
            scheme: DecayScheme::PerType,
        })
    }

    /// A ball of `radius` at `c` brighter than the rest of a `shape` image.
    fn ball_image(shape: [usize; 3], c: [f32; 3], radius: f32) -> Vec<f32> {
        let mut v = Vec::new();
        for x in 0..shape[0] {
            for y in 0..shape[1] {
                for z in 0..shape[2] {
                    let d2 = (x as f32 - c[0]).powi(2)
                        + (y as f32 - c[1]).powi(2)
                        + (z as f32 - c[2]).powi(2);
                    v.push(if d2 <= radius * radius {
                        10.0
                    } else {
                        1.0 + ((x + y + z) % 2) as f32 * 0.01
                    });
                }
            }
        }
        v
    }

    fn inside(p: [i64; 3], b: &Box3) -> bool {
        (0..3).all(|d| p[d] >= b[d][0] && p[d] < b[d][1])
    }

    fn coords(i: usize, s: [usize; 3]) -> [i64; 3] {
        [
            (i / (s[1] * s[2])) as i64,
            ((i / s[2]) % s[1]) as i64,
            (i % s[2]) as i64,
        ]
    }

    #[test]
    fn small_object_is_predicted_at_zoom_one_inside_its_window() {
        let shape = [40, 40, 40];
        let mut s = InferenceSession::new(fake(1.0, 100.0), config(16)).unwrap();
        s.set_image(&ball_image(shape, [20.0, 20.0, 20.0], 4.0), shape)
            .unwrap();
        s.add_point([20.0, 20.0, 20.0], true).unwrap();
        let r = s.predict().unwrap().unwrap();
        assert_eq!(r.zoom, 1.0);
        assert_eq!(r.forward_passes, 1);
        assert_eq!(r.window, [[12, 28]; 3]);
        let seg = s.segmentation().unwrap();
        let n = seg.iter().filter(|&&v| v == 1).count();
        assert!(n > 200, "ball of radius 4 has 257 voxels, got {n}");
        for (i, &v) in seg.iter().enumerate() {
            let bright = s.image()[i] > 1.0;
            assert_eq!(v == 1, bright, "voxel {:?}", coords(i, shape));
        }
        // prev_seg mirrors the segmentation
        let prev = s.interactions().unwrap().channel(PREV_SEG);
        assert!(prev.iter().zip(seg).all(|(p, &v)| p.to_f32() == v as f32));
        // nothing queued any more
        assert!(s.predict().unwrap().is_none());
    }

    #[test]
    fn autozoom_triggers_on_a_large_object_and_stops_at_four() {
        // object bigger than the 4x zoomed window (64^3) so the border keeps changing
        let shape = [72, 72, 72];
        let mut s = InferenceSession::new(fake(0.0, 1000.0), config(16)).unwrap();
        s.set_image(&ball_image(shape, [36.0, 36.0, 36.0], 60.0), shape)
            .unwrap();
        s.add_point([36.0, 36.0, 36.0], true).unwrap();
        let r = s.predict().unwrap().unwrap();
        assert_eq!(r.zoom, 4.0);
        // 1 -> 1.5 -> 2.25 -> 3.375 -> 4: five coarse passes, then the boxes
        assert_eq!(r.forward_passes, 5 + r.refine_boxes.len());
        assert_eq!(r.window, [[4, 68]; 3]);
        assert!(r.refine_boxes.len() > 1);
        let seg = s.segmentation().unwrap();
        for (i, &v) in seg.iter().enumerate() {
            let p = coords(i, shape);
            let in_box = r.refine_boxes.iter().any(|b| inside(p, b));
            if !in_box {
                assert_eq!(v, 0, "voxel {p:?} outside every refined box was written");
            }
        }
        // the boxes together cover the whole (opened) window change
        for x in 8..64 {
            let p = [x, 36, 36];
            assert!(
                r.refine_boxes.iter().any(|b| inside(p, b)),
                "{p:?} not refined"
            );
            assert_eq!(seg[(x as usize * 72 + 36) * 72 + 36], 1);
        }
        let prev = s.interactions().unwrap().channel(PREV_SEG);
        assert!(
            prev.iter().zip(seg).all(|(p, &v)| p.to_f32() == v as f32),
            "prev_seg = segmentation"
        );
    }

    #[test]
    fn autozoom_off_stays_at_one() {
        let shape = [48, 48, 48];
        let mut cfg = config(16);
        cfg.autozoom = false;
        let mut s = InferenceSession::new(fake(0.0, 1000.0), cfg).unwrap();
        s.set_image(&ball_image(shape, [24.0, 24.0, 24.0], 30.0), shape)
            .unwrap();
        s.add_point([24.0, 24.0, 24.0], true).unwrap();
        let r = s.predict().unwrap().unwrap();
        assert_eq!((r.zoom, r.forward_passes), (1.0, 1));
    }

    #[test]
    fn a_prediction_changes_only_voxels_inside_its_windows() {
        let shape = [64, 40, 40];
        let mut s = InferenceSession::new(fake(1.0, 9.0), config(16)).unwrap();
        // two bright balls; the first click segments one, the later click the other
        let mut img = ball_image(shape, [14.0, 20.0, 20.0], 5.0);
        let other = ball_image(shape, [48.0, 20.0, 20.0], 5.0);
        img.iter_mut().zip(&other).for_each(|(a, &b)| *a = a.max(b));
        s.set_image(&img, shape).unwrap();
        let mut before = s.segmentation().unwrap().to_vec();
        for (p, positive) in [
            ([14.0, 20.0, 20.0], true),
            ([48.0, 20.0, 20.0], true),
            ([30.0, 5.0, 5.0], false),
        ] {
            s.add_point(p, positive).unwrap();
            let r = s.predict().unwrap().unwrap();
            let after = s.segmentation().unwrap().to_vec();
            let windows = r.written();
            for (i, (a, b)) in before.iter().zip(&after).enumerate() {
                if a != b {
                    assert!(
                        windows.iter().any(|w| inside(coords(i, shape), w)),
                        "{:?} changed outside",
                        coords(i, shape)
                    );
                }
            }
            before = after;
        }
        // both balls are segmented
        assert_eq!(before[(14 * 40 + 20) * 40 + 20], 1);
        assert_eq!(before[(48 * 40 + 20) * 40 + 20], 1);
    }

    #[test]
    fn an_autozoomed_prediction_changes_only_voxels_inside_its_refined_boxes() {
        // A big object so every prediction zooms out; a second click after a first segmentation
        // must leave every voxel outside its refinement boxes as it was (also where the coarse
        // mask differs from the old segmentation).
        let shape = [80, 72, 72];
        let mut s = InferenceSession::new(fake(0.0, 20.0), config(16)).unwrap();
        s.set_image(&ball_image(shape, [40.0, 36.0, 36.0], 60.0), shape)
            .unwrap();
        s.add_point([20.0, 36.0, 36.0], true).unwrap();
        let first = s.predict().unwrap().unwrap();
        assert!(first.zoom > 1.0, "{first:?}");
        let before = s.segmentation().unwrap().to_vec();
        assert!(before.contains(&1));
        s.add_point([60.0, 30.0, 40.0], true).unwrap();
        let r = s.predict().unwrap().unwrap();
        assert!(r.zoom > 1.0 && !r.refine_boxes.is_empty(), "{r:?}");
        let after = s.segmentation().unwrap();
        let mut changed = 0;
        for (i, (a, b)) in before.iter().zip(after).enumerate() {
            if a != b {
                changed += 1;
                let p = coords(i, shape);
                assert!(
                    r.written().iter().any(|w| inside(p, w)),
                    "{p:?} changed outside the refined boxes"
                );
            }
        }
        assert!(changed > 0, "the second click changed nothing");
        let prev = s.interactions().unwrap().channel(PREV_SEG);
        assert!(prev.iter().zip(after).all(|(p, &v)| p.to_f32() == v as f32));
    }

    #[test]
    fn reset_clears_everything_but_the_image() {
        let shape = [32, 32, 32];
        let mut s = InferenceSession::new(fake(1.0, 100.0), config(16)).unwrap();
        s.set_image(&ball_image(shape, [16.0, 16.0, 16.0], 4.0), shape)
            .unwrap();
        s.add_point([16.0, 16.0, 16.0], true).unwrap();
        s.predict().unwrap();
        assert!(s.segmentation().unwrap().contains(&1));
        s.add_point([3.0, 3.0, 3.0], false).unwrap();
        s.reset().unwrap();
        assert!(s.segmentation().unwrap().iter().all(|&v| v == 0));
        assert!(
            s.interactions()
                .unwrap()
                .stored()
                .iter()
                .all(|v| v.to_f32() == 0.0)
        );
        assert!(
            s.predict().unwrap().is_none(),
            "reset drops queued predictions"
        );
        assert_eq!(s.shape(), Some(shape));
    }

    #[test]
    fn errors_name_the_problem() {
        let mut s = InferenceSession::new(fake(1.0, 1.0), config(16)).unwrap();
        assert!(matches!(
            s.add_point([1.0; 3], true),
            Err(SessionError::NoImage)
        ));
        assert!(matches!(s.predict(), Err(SessionError::NoImage)));
        let bad =
            |_: &[f32], _: [usize; 3]| -> Result<Vec<f32>, PredictorError> { Ok(vec![0.0; 7]) };
        let mut s = InferenceSession::new(bad, config(8)).unwrap();
        let shape = [8, 8, 8];
        s.set_image(&ball_image(shape, [4.0; 3], 2.0), shape)
            .unwrap();
        s.add_point([4.0; 3], true).unwrap();
        let err = s.predict().unwrap_err();
        assert!(err.to_string().contains("returned 7 values"), "{err}");
        let failing = |_: &[f32], _: [usize; 3]| -> Result<Vec<f32>, PredictorError> {
            Err("out of memory".into())
        };
        let mut s = InferenceSession::new(failing, config(8)).unwrap();
        s.set_image(&ball_image(shape, [4.0; 3], 2.0), shape)
            .unwrap();
        s.add_point([4.0; 3], true).unwrap();
        assert!(
            s.predict()
                .unwrap_err()
                .to_string()
                .contains("out of memory")
        );
        assert!(s.set_image(&[0.0; 8], [2, 2, 2]).is_err());
    }

    #[test]
    fn two_logit_output_ties_go_to_background() {
        let zero = |_: &[f32], p: [usize; 3]| -> Result<Vec<f32>, PredictorError> {
            Ok(vec![0.0; 2 * p.iter().product::<usize>()])
        };
        let mut s = InferenceSession::new(zero, config(8)).unwrap();
        let shape = [8, 8, 8];
        s.set_image(&ball_image(shape, [4.0; 3], 2.0), shape)
            .unwrap();
        s.add_point([4.0; 3], true).unwrap();
        s.predict().unwrap();
        assert!(s.segmentation().unwrap().iter().all(|&v| v == 0));
    }

    #[test]
    fn margin_scales_with_the_patch() {
        assert_eq!(config(192).refine_margin, [24; 3]);
        assert_eq!(config(32).refine_margin, [4; 3]);
        assert_eq!(config(8).refine_margin, [1; 3]);
        assert_eq!(config(4).refine_margin, [0; 3]); // round(0.5) = 0, half to even
    }
}
