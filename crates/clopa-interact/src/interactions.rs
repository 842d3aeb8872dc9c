//! The seven interaction channels of an nnInteractive session and how prompts are rendered into
//! them (nnInteractive 2.6.0 `nnInteractiveInferenceSession.add_*_interaction`, with
//! `run_prediction=False`), including the two interaction-decay schemes.

use half::f16;

use crate::error::{InteractError, check_len};
use crate::normalize::nonzero_bbox;
use crate::stamp::PointStamp;

/// Number of interaction channels (prev_seg + 3 prompt types x {+, -}).
pub const NUM_INTERACTION_CHANNELS: usize = 7;
/// Channel of the previous segmentation (0/1, never decayed).
pub const PREV_SEG: usize = 0;
/// Positive bounding box / lasso channel.
pub const BBOX_POS: usize = 1;
/// Negative bounding box / lasso channel.
pub const BBOX_NEG: usize = 2;
/// Positive point channel.
pub const POINT_POS: usize = 3;
/// Negative point channel.
pub const POINT_NEG: usize = 4;
/// Positive scribble channel.
pub const SCRIBBLE_POS: usize = 5;
/// Negative scribble channel.
pub const SCRIBBLE_NEG: usize = 6;
/// The session never zooms out further than this (`MAX_AUTOZOOM_FACTOR`).
pub const MAX_ZOOM: f64 = 4.0;

/// f16's largest finite value: the running intensity is renormalised beyond it.
const F16_MAX: f64 = 65504.0;

/// How older prompts lose weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecayScheme {
    /// nnInteractive >= 2.0: a running intensity grows by `1 / decay` with every prompt of any
    /// type, new prompts are stamped at it, and the network input divides every non-prev_seg
    /// channel by it (so the newest prompt is 1.0 and older ones `decay^age`).
    Running,
    /// nnInteractive 1.x: before a prompt is added, the two channels of its type are multiplied
    /// by `decay`; prompts are stamped at 1.0 and the network sees the stored values.
    PerType,
}

/// Rendering settings (what the session reads from `inference_session_class.json` and plans).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptConfig {
    /// Network patch size (192^3 for the released model).
    pub patch_size: [usize; 3],
    /// Point radius in voxels (4).
    pub point_radius: usize,
    /// Interaction decay in (0, 1].
    pub decay: f64,
    /// Decay scheme.
    pub scheme: DecayScheme,
}

impl PromptConfig {
    /// nnInteractive 2.x reading the released v1.0 model folder: 192^3, radius 4, running decay 0.98.
    pub fn nninteractive_v2() -> Self {
        PromptConfig {
            patch_size: [192; 3],
            point_radius: 4,
            decay: 0.98,
            scheme: DecayScheme::Running,
        }
    }

    /// nnInteractive 1.0.x with the same folder: per-type decay 0.9.
    pub fn nninteractive_v1() -> Self {
        PromptConfig {
            patch_size: [192; 3],
            point_radius: 4,
            decay: 0.9,
            scheme: DecayScheme::PerType,
        }
    }

    fn validate(&self) -> Result<(), InteractError> {
        if !(self.decay > 0.0 && self.decay <= 1.0) {
            return Err(InteractError::InvalidDecay(self.decay));
        }
        if self.patch_size.contains(&0) {
            return Err(InteractError::InvalidConfig(format!(
                "patch size {:?} has a zero axis",
                self.patch_size
            )));
        }
        Ok(())
    }
}

/// A prediction the session would run next: the window centre and the initial zoom-out factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueuedPrediction {
    /// Window centre in voxels (may lie outside the image for an ignored point).
    pub center: [i64; 3],
    /// Zoom-out factor as queued (1 for points; boxes and masks may ask for more; not capped).
    pub zoom: f64,
}

impl QueuedPrediction {
    /// The zoom the session actually uses: capped at [`MAX_ZOOM`].
    pub fn capped_zoom(&self) -> f64 {
        self.zoom.min(MAX_ZOOM)
    }
}

/// Python's `round()` on a float: round half to even.
pub fn round_half_even(v: f64) -> i64 {
    v.round_ties_even() as i64
}

/// The interaction tensor of one image: 7 f16 channels over the whole image (`[7, x, y, z]`, z
/// fastest), stored pre-multiplied by the running intensity as the session stores them.
///
/// ```
/// use clopa_interact::{Interactions, PromptConfig, POINT_POS};
/// let mut it = Interactions::new([20, 20, 20], PromptConfig::nninteractive_v2())?;
/// it.add_point([10.0, 10.0, 10.0], true)?;
/// // stored at the running intensity 1 / 0.98, in f16
/// assert_eq!(it.channel(POINT_POS)[(10 * 20 + 10) * 20 + 10], half::f16::from_f64(1.0 / 0.98));
/// assert_eq!(it.queued().last().map(|q| q.center), Some([10, 10, 10]));
/// # Ok::<(), clopa_interact::InteractError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Interactions {
    shape: [usize; 3],
    config: PromptConfig,
    stamp: PointStamp,
    data: Vec<f16>,
    intensity: f64,
    queue: Vec<QueuedPrediction>,
    /// Per channel, a box that holds every non-zero value (None: channel all zero), so
    /// input assembly only visits written regions.
    bounds: [Option<[[usize; 2]; 3]>; NUM_INTERACTION_CHANNELS],
}

impl Interactions {
    /// Empty channels for an image of `shape`.
    pub fn new(shape: [usize; 3], config: PromptConfig) -> Result<Self, InteractError> {
        config.validate()?;
        if shape.contains(&0) {
            return Err(InteractError::InvalidConfig(format!(
                "image shape {shape:?} has a zero axis"
            )));
        }
        let n = shape.iter().product::<usize>();
        Ok(Interactions {
            shape,
            stamp: PointStamp::new(config.point_radius),
            config,
            data: vec![f16::ZERO; NUM_INTERACTION_CHANNELS * n],
            intensity: 1.0,
            queue: Vec::new(),
            bounds: [None; NUM_INTERACTION_CHANNELS],
        })
    }

    /// Image shape.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// The settings.
    pub fn config(&self) -> &PromptConfig {
        &self.config
    }

    /// The point stamp in use.
    pub fn stamp(&self) -> &PointStamp {
        &self.stamp
    }

    /// Current running intensity (always 1 under [`DecayScheme::PerType`]).
    pub fn intensity(&self) -> f64 {
        self.intensity
    }

    fn voxels(&self) -> usize {
        self.shape.iter().product()
    }

    /// Stored values of channel `c` (pre-multiplied by the intensity under the running scheme).
    pub fn channel(&self, c: usize) -> &[f16] {
        let n = self.voxels();
        &self.data[c * n..(c + 1) * n]
    }

    fn channel_mut(&mut self, c: usize) -> &mut [f16] {
        let n = self.voxels();
        &mut self.data[c * n..(c + 1) * n]
    }

    /// A half-open box outside which channel `c` is zero (`None` when it is all zero). It
    /// may be larger than the tight bounding box of the non-zero values.
    pub fn bounds(&self, c: usize) -> Option<[[usize; 2]; 3]> {
        self.bounds[c]
    }

    fn grow_bounds(&mut self, c: usize, b: [[usize; 2]; 3]) {
        if b.iter().any(|[lo, hi]| hi <= lo) {
            return;
        }
        self.bounds[c] = Some(match self.bounds[c] {
            None => b,
            Some(o) => [0, 1, 2].map(|d| [o[d][0].min(b[d][0]), o[d][1].max(b[d][1])]),
        });
    }

    /// All stored channels, `[7, x, y, z]`.
    pub fn stored(&self) -> &[f16] {
        &self.data
    }

    /// What the network sees of a stored value of channel `c`: prev_seg as is, the others
    /// divided by the running intensity in f32 and rounded to f16 (torch's in-place
    /// `half_tensor /= python_float` on CPU).
    #[inline]
    pub fn normalize_value(&self, c: usize, v: f16) -> f16 {
        if c == PREV_SEG || self.intensity == 1.0 {
            v
        } else {
            f16::from_f32(v.to_f32() / self.intensity as f32)
        }
    }

    /// All channels as the network sees them, `[7, x, y, z]`.
    pub fn normalized(&self) -> Vec<f16> {
        let n = self.voxels();
        self.data
            .iter()
            .enumerate()
            .map(|(i, &v)| self.normalize_value(i / n, v))
            .collect()
    }

    /// Predictions queued since the last [`Interactions::clear_queue`]; the session only runs the last.
    pub fn queued(&self) -> &[QueuedPrediction] {
        &self.queue
    }

    /// Forget the queued predictions (the session does this after predicting).
    pub fn clear_queue(&mut self) {
        self.queue.clear();
    }

    /// Zero every channel and reset the intensity (`reset_interactions`; like the session it
    /// keeps the prediction queue).
    pub fn reset(&mut self) {
        self.data.iter_mut().for_each(|v| *v = f16::ZERO);
        self.intensity = 1.0;
        self.bounds = [None; NUM_INTERACTION_CHANNELS];
    }

    /// Bookkeeping before a prompt of channel pair `pair` is written.
    fn prepare_intensity(&mut self, pair: [usize; 2]) {
        let decay = self.config.decay;
        if decay >= 1.0 {
            return;
        }
        match self.config.scheme {
            DecayScheme::Running => {
                self.intensity *= 1.0 / decay;
                if self.intensity > F16_MAX {
                    // `_renormalize_interactions_if_needed`: rescale before f16 overflows.
                    let target = F16_MAX / 10.0;
                    let scale = (target / self.intensity) as f32;
                    for c in 1..NUM_INTERACTION_CHANNELS {
                        scale_channel(self.channel_mut(c), scale);
                    }
                    self.intensity = target;
                }
            }
            DecayScheme::PerType => {
                for c in pair {
                    scale_channel(self.channel_mut(c), decay as f32);
                }
            }
        }
    }

    /// A click at voxel coordinates `coords` (rounded half to even), positive or negative: the
    /// stamp is max-merged at the current intensity, clipped at the border; a stamp wholly
    /// outside is dropped, but the prompt still counts for decay and queues its centre.
    pub fn add_point(&mut self, coords: [f64; 3], positive: bool) -> Result<(), InteractError> {
        if coords.iter().any(|c| !c.is_finite()) {
            return Err(InteractError::NonFiniteCoordinate(coords.to_vec()));
        }
        let p = coords.map(round_half_even);
        self.queue.push(QueuedPrediction {
            center: p,
            zoom: 1.0,
        });
        let c = if positive { POINT_POS } else { POINT_NEG };
        self.prepare_intensity([POINT_POS, POINT_NEG]);

        let size = self.stamp.size() as i64;
        let half = size / 2;
        // window [p - size//2, p + size//2 + size%2) clipped to the image
        let mut lo = [0usize; 3];
        let mut hi = [0usize; 3];
        for d in 0..3 {
            let a = p[d] - half;
            let b = p[d] + half + size % 2;
            let (a, b) = (a.max(0), b.min(self.shape[d] as i64));
            if a >= b {
                return Ok(());
            }
            lo[d] = a as usize;
            hi[d] = b as usize;
        }
        self.grow_bounds(c, [0, 1, 2].map(|d| [lo[d], hi[d]]));
        let intensity = self.intensity;
        let [_, ny, nz] = self.shape;
        let n = self.voxels();
        let stamp = &self.stamp;
        let chan = &mut self.data[c * n..(c + 1) * n];
        for x in lo[0]..hi[0] {
            let sx = (x as i64 - p[0] + half) as usize;
            for y in lo[1]..hi[1] {
                let sy = (y as i64 - p[1] + half) as usize;
                for z in lo[2]..hi[2] {
                    let sz = (z as i64 - p[2] + half) as usize;
                    // torch: (f64 stamp * python float) cast to f16 in one rounding.
                    let v = f16::from_f64(stamp.get(sx, sy, sz) * intensity);
                    let dst = &mut chan[(x * ny + y) * nz + z];
                    if v > *dst {
                        *dst = v;
                    }
                }
            }
        }
        Ok(())
    }

    /// A half-open box `[[x0, x1], [y0, y1], [z0, z1]]` (rounded half to even, clipped, each
    /// collapsed axis widened to one voxel); its region of the bbox channel is *set* to the
    /// current intensity. Extent 1 along an axis makes it a 2D box; the v1.0 model only knows
    /// 2D boxes (the session refuses 3D ones for it; this renderer accepts both).
    pub fn add_bbox(&mut self, bbox: [[f64; 2]; 3], positive: bool) -> Result<(), InteractError> {
        if bbox.iter().flatten().any(|c| !c.is_finite()) {
            return Err(InteractError::NonFiniteCoordinate(
                bbox.iter().flatten().copied().collect(),
            ));
        }
        if let Some(axis) = bbox.iter().position(|b| b[1] - b[0] == 0.0) {
            return Err(InteractError::EmptyBox { bbox, axis });
        }
        let mut b = bbox.map(|[a, c]| [round_half_even(a), round_half_even(c)]);
        for (d, bd) in b.iter_mut().enumerate() {
            let s = self.shape[d] as i64;
            let mut start = bd[0].max(0);
            let mut end = bd[1].min(s);
            if end <= start {
                if start == 0 {
                    end = 1.min(s);
                } else {
                    start = (start - 1).max(0);
                }
            }
            *bd = [start, end];
        }
        self.queue_region(b);
        let c = if positive { BBOX_POS } else { BBOX_NEG };
        self.prepare_intensity([BBOX_POS, BBOX_NEG]);
        if b.iter().any(|[a, e]| e <= a) {
            return Ok(());
        }
        self.grow_bounds(c, b.map(|[a, e]| [a as usize, e as usize]));
        // torch converts the python float to Half through float (two roundings).
        let v = f16::from_f32(self.intensity as f32);
        let [_, ny, nz] = self.shape;
        let n = self.voxels();
        let chan = &mut self.data[c * n..(c + 1) * n];
        for x in b[0][0] as usize..b[0][1] as usize {
            for y in b[1][0] as usize..b[1][1] as usize {
                let row = (x * ny + y) * nz;
                chan[row + b[2][0] as usize..row + b[2][1] as usize]
                    .iter_mut()
                    .for_each(|d| *d = v);
            }
        }
        Ok(())
    }

    /// A scribble: `mask` covers the half-open crop `bbox` of the image (pass
    /// `[[0, nx], [0, ny], [0, nz]]` for a full-size mask); merged by max at the current
    /// intensity into scribble+ or scribble-.
    pub fn add_scribble(
        &mut self,
        mask: &[u8],
        bbox: [[usize; 2]; 3],
        positive: bool,
    ) -> Result<(), InteractError> {
        let c = if positive { SCRIBBLE_POS } else { SCRIBBLE_NEG };
        self.add_mask(mask, bbox, c, [SCRIBBLE_POS, SCRIBBLE_NEG])
    }

    /// A lasso (the filled contour as a mask over the crop `bbox`), merged like a scribble into
    /// the bbox/lasso channels.
    pub fn add_lasso(
        &mut self,
        mask: &[u8],
        bbox: [[usize; 2]; 3],
        positive: bool,
    ) -> Result<(), InteractError> {
        let c = if positive { BBOX_POS } else { BBOX_NEG };
        self.add_mask(mask, bbox, c, [BBOX_POS, BBOX_NEG])
    }

    fn add_mask(
        &mut self,
        mask: &[u8],
        bbox: [[usize; 2]; 3],
        c: usize,
        pair: [usize; 2],
    ) -> Result<(), InteractError> {
        if (0..3).any(|d| bbox[d][1] <= bbox[d][0] || bbox[d][1] > self.shape[d]) {
            return Err(InteractError::MaskBoxOutOfImage {
                bbox,
                shape: self.shape,
            });
        }
        let crop = bbox.map(|[a, b]| b - a);
        check_len("mask crop", mask.len(), crop)?;
        if let Some(local) = nonzero_bbox(mask, crop) {
            let roi = [0, 1, 2].map(|d| {
                [
                    (local[d][0] + bbox[d][0]) as i64,
                    (local[d][1] + bbox[d][0]) as i64,
                ]
            });
            self.queue_region(roi);
        }
        self.prepare_intensity(pair);
        // numpy: f16 mask *= python float, the float first rounded to f16 (NEP 50 weak scalar).
        self.grow_bounds(c, bbox);
        let scale = (self.intensity != 1.0).then(|| f16::from_f64(self.intensity).to_f32());
        let [_, ny, nz] = self.shape;
        let n = self.voxels();
        let chan = &mut self.data[c * n..(c + 1) * n];
        for (i, row) in mask.chunks_exact(crop[2]).enumerate() {
            let (x, y) = (bbox[0][0] + i / crop[1], bbox[1][0] + i % crop[1]);
            let start = (x * ny + y) * nz + bbox[2][0];
            for (dst, &m) in chan[start..start + crop[2]].iter_mut().zip(row) {
                let v = match scale {
                    Some(s) => f16::from_f32(f16::from_f32(m as f32).to_f32() * s),
                    None => f16::from_f32(m as f32),
                };
                if v > *dst {
                    *dst = v;
                }
            }
        }
        Ok(())
    }

    /// An initial segmentation (full image, 0/1): resets everything (channels and intensity),
    /// then writes it into prev_seg. Queues nothing (the session's `run_prediction=False`).
    pub fn add_initial_seg(&mut self, seg: &[u8]) -> Result<(), InteractError> {
        check_len("initial segmentation", seg.len(), self.shape)?;
        self.reset();
        for (d, &s) in self.channel_mut(PREV_SEG).iter_mut().zip(seg) {
            *d = f16::from_f32(s as f32);
        }
        if let Some(b) = nonzero_bbox(seg, self.shape) {
            self.grow_bounds(PREV_SEG, b);
        }
        Ok(())
    }

    /// Paste a prediction (0/1, shape of `window`) into prev_seg over the half-open `window`
    /// `[[x0, x1], ...]` (may extend past the image; only the inside is written), as the session
    /// does after a zoom-1 prediction.
    pub fn paste_prev_seg(
        &mut self,
        pred: &[u8],
        window: [[i64; 2]; 3],
    ) -> Result<(), InteractError> {
        let wshape = window.map(|[a, b]| (b - a).max(0) as usize);
        check_len("prediction", pred.len(), wshape)?;
        let shape = self.shape;
        let lo = [0, 1, 2].map(|d| window[d][0].max(0));
        let hi = [0, 1, 2].map(|d| window[d][1].min(shape[d] as i64));
        if (0..3).any(|d| hi[d] <= lo[d]) {
            return Ok(());
        }
        // prev_seg may shrink here; its box only ever grows (a superset stays valid)
        self.grow_bounds(
            PREV_SEG,
            [0, 1, 2].map(|d| [lo[d] as usize, hi[d] as usize]),
        );
        let chan = self.channel_mut(PREV_SEG);
        for x in lo[0]..hi[0] {
            for y in lo[1]..hi[1] {
                for z in lo[2]..hi[2] {
                    let s =
                        [x - window[0][0], y - window[1][0], z - window[2][0]].map(|v| v as usize);
                    let v = pred[(s[0] * wshape[1] + s[1]) * wshape[2] + s[2]];
                    chan[((x as usize) * shape[1] + y as usize) * shape[2] + z as usize] =
                        f16::from_f32(v as f32);
                }
            }
        }
        Ok(())
    }

    /// Queue the centre and context zoom of a box or mask region (`_add_patch_for_bbox_interaction`,
    /// `_generic_add_patch_from_image`).
    fn queue_region(&mut self, roi: [[i64; 2]; 3]) {
        let center = roi.map(|[a, b]| round_half_even((a + b) as f64 / 2.0));
        let mut zoom: f64 = 1.0;
        for (d, [a, b]) in roi.iter().enumerate() {
            let p = self.config.patch_size[d] as i64;
            let requested = (b - a) + p / 3;
            zoom = zoom.max(requested as f64 / p as f64);
        }
        self.queue.push(QueuedPrediction { center, zoom });
    }
}

/// In-place `half_tensor *= python_float` (f32 arithmetic, one rounding to f16).
fn scale_channel(chan: &mut [f16], scale: f32) {
    for v in chan.iter_mut().filter(|v| **v != f16::ZERO) {
        *v = f16::from_f32(v.to_f32() * scale);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(scheme: DecayScheme, decay: f64) -> PromptConfig {
        PromptConfig {
            patch_size: [32; 3],
            point_radius: 4,
            decay,
            scheme,
        }
    }

    fn at(it: &Interactions, c: usize, p: [usize; 3]) -> f32 {
        let s = it.shape();
        it.channel(c)[(p[0] * s[1] + p[1]) * s[2] + p[2]].to_f32()
    }

    #[test]
    fn points_round_half_to_even_and_clip() {
        let mut it = Interactions::new([10, 10, 10], cfg(DecayScheme::Running, 1.0)).unwrap();
        it.add_point([4.5, 3.5, 0.0], true).unwrap();
        assert_eq!(it.queued()[0].center, [4, 4, 0]);
        assert_eq!(at(&it, POINT_POS, [4, 4, 0]), 1.0);
        let nonzero = it
            .channel(POINT_POS)
            .iter()
            .filter(|v| v.to_f32() > 0.0)
            .count();
        // the half of the 257-voxel ball with z >= 0: 257 minus the voxels with z < 0 (= (257 - 49) / 2 = 104)
        assert_eq!(nonzero, 257 - 104);
    }

    #[test]
    fn point_wholly_outside_is_dropped_but_counts() {
        let mut it = Interactions::new([10, 10, 10], cfg(DecayScheme::Running, 0.5)).unwrap();
        it.add_point([14.0, 5.0, 5.0], false).unwrap();
        assert!(it.stored().iter().all(|v| *v == f16::ZERO));
        assert_eq!(it.intensity(), 2.0);
        assert_eq!(it.queued().len(), 1);
        // one voxel of overlap (x = 14 - 4 = 10 is outside, 13 - 4 = 9 is inside)
        it.add_point([13.0, 5.0, 5.0], false).unwrap();
        assert_eq!(
            at(&it, POINT_NEG, [9, 5, 5]),
            f16::from_f64(4.0 / 17f64.sqrt()).to_f32()
        );
    }

    #[test]
    fn points_merge_by_max() {
        let mut it = Interactions::new([12, 12, 12], cfg(DecayScheme::PerType, 1.0)).unwrap();
        it.add_point([5.0, 5.0, 5.0], true).unwrap();
        it.add_point([6.0, 5.0, 5.0], true).unwrap();
        assert_eq!(at(&it, POINT_POS, [5, 5, 5]), 1.0);
        assert_eq!(at(&it, POINT_POS, [6, 5, 5]), 1.0);
    }

    #[test]
    fn box_is_set_not_maxed_clipped_and_widened() {
        let mut it = Interactions::new([10, 10, 10], cfg(DecayScheme::Running, 0.5)).unwrap();
        it.add_point([5.0, 5.0, 5.0], true).unwrap(); // intensity 2
        it.add_bbox([[3.0, 12.0], [10.0, 11.0], [4.0, 5.0]], true)
            .unwrap(); // intensity 4
        // y: [10, 10) after clipping -> widened to [9, 10)
        assert_eq!(at(&it, BBOX_POS, [9, 9, 4]), 4.0);
        assert_eq!(at(&it, BBOX_POS, [3, 9, 4]), 4.0);
        assert_eq!(at(&it, BBOX_POS, [2, 9, 4]), 0.0);
        assert_eq!(at(&it, BBOX_POS, [5, 8, 4]), 0.0);
        // queued centre from the clipped box; zoom from extent 7 + 32 // 3 = 17 over 32 -> 1
        assert_eq!(
            it.queued()[1],
            QueuedPrediction {
                center: [6, 10, 4],
                zoom: 1.0
            }
        );
        // a second, weaker-looking box overwrites (set, not max)
        it.add_bbox([[3.0, 4.0], [9.0, 10.0], [4.0, 5.0]], true)
            .unwrap();
        assert_eq!(at(&it, BBOX_POS, [3, 9, 4]), 8.0);
        assert!(matches!(
            it.add_bbox([[1.0, 1.0], [0.0, 2.0], [0.0, 2.0]], true),
            Err(InteractError::EmptyBox { axis: 0, .. })
        ));
    }

    #[test]
    fn large_box_queues_zoom() {
        let mut it = Interactions::new([100, 100, 100], cfg(DecayScheme::Running, 0.98)).unwrap();
        it.add_bbox([[0.0, 60.0], [0.0, 10.0], [5.0, 6.0]], false)
            .unwrap();
        // (60 + 10) / 32
        assert_eq!(it.queued()[0].zoom, 70.0 / 32.0);
        it.add_bbox([[0.0, 100.0], [0.0, 100.0], [0.0, 100.0]], false)
            .unwrap();
        assert_eq!(it.queued()[1].zoom, 110.0 / 32.0);
        it.config.patch_size = [16; 3];
        it.add_bbox([[0.0, 100.0], [0.0, 100.0], [0.0, 100.0]], false)
            .unwrap();
        assert_eq!(it.queued()[2].capped_zoom(), MAX_ZOOM);
    }

    #[test]
    fn masks_merge_by_max_and_queue_their_nonzero_box() {
        let mut it = Interactions::new([8, 8, 8], cfg(DecayScheme::Running, 0.5)).unwrap();
        let mut mask = vec![0u8; 2 * 3 * 4];
        mask[(3 + 2) * 4 + 3] = 1; // crop voxel (1, 2, 3)
        it.add_scribble(&mask, [[2, 4], [1, 4], [0, 4]], false)
            .unwrap();
        assert_eq!(at(&it, SCRIBBLE_NEG, [3, 3, 3]), 2.0);
        assert_eq!(
            it.channel(SCRIBBLE_NEG)
                .iter()
                .filter(|v| v.to_f32() > 0.0)
                .count(),
            1
        );
        assert_eq!(it.queued()[0].center, [4, 4, 4]); // round(3.5) = 4, round(3.5) = 4, round(3.5) = 4
        it.add_lasso(&[0u8; 8], [[0, 2], [0, 2], [0, 2]], true)
            .unwrap();
        assert_eq!(it.queued().len(), 1, "an empty mask queues nothing");
        assert_eq!(it.intensity(), 4.0, "but still counts for decay");
        assert!(
            it.add_lasso(&[1u8; 8], [[7, 9], [0, 2], [0, 2]], true)
                .is_err()
        );
        assert!(
            it.add_lasso(&[1u8; 7], [[0, 2], [0, 2], [0, 2]], true)
                .is_err()
        );
    }

    #[test]
    fn running_decay_normalizes_newest_to_one() {
        let mut it = Interactions::new([20, 20, 20], cfg(DecayScheme::Running, 0.9)).unwrap();
        it.add_point([5.0, 5.0, 5.0], true).unwrap();
        it.add_point([15.0, 15.0, 15.0], false).unwrap();
        let norm = it.normalized();
        let n = 8000;
        let idx = |p: [usize; 3]| (p[0] * 20 + p[1]) * 20 + p[2];
        assert_eq!(norm[POINT_NEG * n + idx([15, 15, 15])].to_f32(), 1.0);
        let old = norm[POINT_POS * n + idx([5, 5, 5])].to_f32();
        assert!((old - 0.9).abs() < 1e-3, "{old}");
    }

    #[test]
    fn per_type_decay_touches_only_its_own_pair() {
        let mut it = Interactions::new([20, 20, 20], cfg(DecayScheme::PerType, 0.5)).unwrap();
        it.add_point([5.0, 5.0, 5.0], true).unwrap();
        it.add_bbox([[0.0, 3.0], [0.0, 3.0], [0.0, 1.0]], true)
            .unwrap();
        assert_eq!(at(&it, POINT_POS, [5, 5, 5]), 1.0);
        assert_eq!(at(&it, BBOX_POS, [1, 1, 0]), 1.0);
        it.add_point([15.0, 15.0, 15.0], false).unwrap();
        assert_eq!(at(&it, POINT_POS, [5, 5, 5]), 0.5);
        assert_eq!(at(&it, POINT_NEG, [15, 15, 15]), 1.0);
        assert_eq!(at(&it, BBOX_POS, [1, 1, 0]), 1.0);
        assert_eq!(it.intensity(), 1.0);
        assert_eq!(it.normalized(), it.stored());
    }

    #[test]
    fn running_intensity_renormalizes_before_f16_overflow() {
        let mut it = Interactions::new([10, 10, 10], cfg(DecayScheme::Running, 0.5)).unwrap();
        it.add_point([5.0, 5.0, 5.0], true).unwrap();
        for _ in 0..15 {
            it.add_point([50.0, 50.0, 50.0], true).unwrap();
        }
        // the 16th prompt makes 2^16 > 65504 -> renormalised to 6550.4
        assert_eq!(it.intensity(), 6550.4);
        assert!(it.stored().iter().all(|v| v.is_finite()));
        let norm = it.normalized();
        let v = norm[POINT_POS * 1000 + (5 * 10 + 5) * 10 + 5].to_f32();
        assert!((v - 0.5f32.powi(15)).abs() < 1e-6, "{v}");
    }

    #[test]
    fn bounds_cover_every_nonzero_value() {
        let shape = [12, 10, 9];
        let mut it = Interactions::new(shape, cfg(DecayScheme::Running, 0.9)).unwrap();
        it.add_point([0.0, 9.0, 4.0], true).unwrap();
        it.add_point([11.0, 2.0, 8.0], false).unwrap();
        it.add_bbox([[3.0, 7.0], [1.0, 2.0], [2.0, 9.0]], false)
            .unwrap();
        it.add_scribble(&[0, 1, 1, 0], [[5, 6], [4, 6], [3, 5]], true)
            .unwrap();
        it.paste_prev_seg(&[1u8; 8], [[10, 12], [8, 10], [7, 9]])
            .unwrap();
        for c in 0..NUM_INTERACTION_CHANNELS {
            let b = it.bounds(c);
            for (i, v) in it.channel(c).iter().enumerate() {
                if v.to_f32() != 0.0 {
                    let p = [i / 90, (i / 9) % 10, i % 9];
                    let b = b.unwrap_or_else(|| panic!("channel {c} has values but no bounds"));
                    assert!(
                        (0..3).all(|d| b[d][0] <= p[d] && p[d] < b[d][1]),
                        "channel {c} voxel {p:?} outside {b:?}"
                    );
                }
            }
        }
        assert_eq!(it.bounds(SCRIBBLE_NEG), None);
        it.reset();
        assert!((0..NUM_INTERACTION_CHANNELS).all(|c| it.bounds(c).is_none()));
    }

    #[test]
    fn initial_seg_resets_everything() {
        let mut it = Interactions::new([4, 4, 4], cfg(DecayScheme::Running, 0.5)).unwrap();
        it.add_point([1.0, 1.0, 1.0], true).unwrap();
        let mut seg = vec![0u8; 64];
        seg[5] = 1;
        it.add_initial_seg(&seg).unwrap();
        assert_eq!(it.intensity(), 1.0);
        assert_eq!(it.channel(PREV_SEG)[5].to_f32(), 1.0);
        assert_eq!(it.stored().iter().filter(|v| v.to_f32() != 0.0).count(), 1);
        assert!(it.add_initial_seg(&seg[..10]).is_err());
    }

    #[test]
    fn paste_prev_seg_clips_the_window() {
        let mut it = Interactions::new([4, 4, 4], cfg(DecayScheme::Running, 0.5)).unwrap();
        it.paste_prev_seg(&[1u8; 8], [[-1, 1], [3, 5], [0, 2]])
            .unwrap();
        assert_eq!(
            it.channel(PREV_SEG)
                .iter()
                .filter(|v| v.to_f32() == 1.0)
                .count(),
            2
        );
        assert_eq!(at(&it, PREV_SEG, [0, 3, 1]), 1.0);
    }
}
