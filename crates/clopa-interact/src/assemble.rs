//! Network-input assembly: nnInteractive 2.6.0's `_build_network_input`, zoom included.

use half::f16;

use crate::error::{InteractError, check_len};
use crate::interactions::{
    BBOX_POS, Interactions, MAX_ZOOM, NUM_INTERACTION_CHANNELS, POINT_NEG, POINT_POS, PREV_SEG,
    SCRIBBLE_NEG, SCRIBBLE_POS, round_half_even,
};
use rayon::prelude::*;

use crate::resample::{
    Region, VolumeView, area_f16_view, max_pool, nearest_view, round_to_nearest_odd, trilinear_view,
};

/// Channels of the network input: image + the 7 interaction channels.
pub const NUM_INPUT_CHANNELS: usize = 1 + NUM_INTERACTION_CHANNELS;

/// One network input patch, `[8, p0, p1, p2]` f32: `[image, prev_seg, bbox+, bbox-, point+,
/// point-, scribble+, scribble-]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkInput {
    /// Patch size of the network.
    pub patch_size: [usize; 3],
    /// Size of the image window that was resampled to the patch (`round(patch * zoom)`).
    pub scaled_patch_size: [usize; 3],
    /// The window in image voxels, half-open `[c - s//2, c + s//2 + s%2)` per axis (may
    /// extend past the image: zero there).
    pub window: [[i64; 2]; 3],
    /// The input, `[8, p0, p1, p2]`.
    pub data: Vec<f32>,
    /// prev_seg over the window, resampled `nearest` to the patch (for the AutoZoom border check).
    pub previous_prediction: Vec<f32>,
}

impl NetworkInput {
    /// Channel `c` of the input (0 = image).
    pub fn channel(&self, c: usize) -> &[f32] {
        let n = self.patch_size.iter().product::<usize>();
        &self.data[c * n..(c + 1) * n]
    }
}

/// The window of size `scaled` centred on `center`.
pub fn window_around(center: [i64; 3], scaled: [usize; 3]) -> [[i64; 2]; 3] {
    [0, 1, 2].map(|d| {
        let p = scaled[d] as i64;
        [center[d] - p / 2, center[d] + p / 2 + p % 2]
    })
}

/// Assemble the network input around `center` at `zoom` (in `[1, 4]`) from the z-scored image
/// (`image`, same shape as `interactions`) and the interaction channels.
///
/// Zoom 1 (more exactly: `round(patch * zoom) == patch`) crops the window (zero outside the
/// image) and divides the non-prev_seg channels by the running intensity. Otherwise the window
/// of `round(patch * zoom)` voxels is resampled to the patch: point and scribble channels are
/// first max-pooled with a cube of side `round_to_nearest_odd(2 * zoom - 1)`, every interaction
/// channel is `area`-downsampled in f16 (PyTorch's half kernel: f16 accumulation), the image `trilinear`, prev_seg
/// `nearest` for [`NetworkInput::previous_prediction`].
pub fn build_network_input(
    image: &[f32],
    interactions: &Interactions,
    center: [i64; 3],
    zoom: f64,
) -> Result<NetworkInput, InteractError> {
    let shape = interactions.shape();
    check_len("normalised image", image.len(), shape)?;
    if !(zoom.is_finite() && (1.0..=MAX_ZOOM).contains(&zoom)) {
        return Err(InteractError::InvalidZoom(zoom));
    }
    let patch = interactions.config().patch_size;
    let scaled = patch.map(|p| round_half_even(p as f64 * zoom).max(1) as usize);
    let window = window_around(center, scaled);
    // in-image part of the window, in image coordinates (empty when the window misses the image)
    let valid = [0, 1, 2].map(|d| {
        let lo = window[d][0].clamp(0, shape[d] as i64) as usize;
        let hi = window[d][1].clamp(0, shape[d] as i64) as usize;
        [lo, hi.max(lo)]
    });
    let n = patch.iter().product::<usize>();
    let mut data = vec![0f32; NUM_INPUT_CHANNELS * n];
    // f16 -> f32 tables: raw values, and the values the network sees (divided by the intensity)
    let raw: Vec<f32> = (0..=u16::MAX).map(|b| f16::from_bits(b).to_f32()).collect();
    let normed: Vec<f32> = (0..=u16::MAX)
        .map(|b| {
            interactions
                .normalize_value(BBOX_POS, f16::from_bits(b))
                .to_f32()
        })
        .collect();
    // the in-image part of the window where channel c can be non-zero
    let part = |c: usize| -> Option<[[usize; 2]; 3]> {
        let b = interactions.bounds(c)?;
        let r = [0, 1, 2].map(|d| [valid[d][0].max(b[d][0]), valid[d][1].min(b[d][1])]);
        r.iter().all(|[lo, hi]| hi > lo).then_some(r)
    };
    // copy `src[region]` through `f` into the region's place of a volume of size `dst_shape`
    // whose origin is the window start
    fn copy_rows<T: Copy>(
        src: &[T],
        shape: [usize; 3],
        region: [[usize; 2]; 3],
        window: [[i64; 2]; 3],
        dst: &mut [f32],
        dst_shape: [usize; 3],
        f: impl Fn(T) -> f32,
    ) {
        let w = region[2][1] - region[2][0];
        for x in region[0][0]..region[0][1] {
            for y in region[1][0]..region[1][1] {
                let s = (x * shape[1] + y) * shape[2] + region[2][0];
                let p = [x as i64, y as i64, region[2][0] as i64];
                let q = [0, 1, 2].map(|d| (p[d] - window[d][0]) as usize);
                let t = (q[0] * dst_shape[1] + q[1]) * dst_shape[2] + q[2];
                dst[t..t + w]
                    .iter_mut()
                    .zip(&src[s..s + w])
                    .for_each(|(d, &v)| *d = f(v));
            }
        }
    }
    // the values of channel c over `part(c)`, as a region of the zero-padded window
    let crop = |c: usize| -> Option<Region<f32>> {
        let r = part(c)?;
        let shape_r = r.map(|[a, b]| b - a);
        let lo = [0, 1, 2].map(|d| (r[d][0] as i64 - window[d][0]) as usize);
        let mut d = vec![0f32; shape_r.iter().product()];
        let local = [0, 1, 2].map(|k| [r[k][0] as i64, 0]);
        copy_rows(
            interactions.channel(c),
            shape,
            r,
            local,
            &mut d,
            shape_r,
            |v| raw[v.to_bits() as usize],
        );
        Some(Region {
            full: scaled,
            lo,
            shape: shape_r,
            data: d,
        })
    };
    let has_image = valid.iter().all(|[a, b]| b > a);

    let origin = window.map(|[lo, _]| lo);
    let view = |c: usize| -> Option<VolumeView<'_, f16>> {
        Some(VolumeView {
            data: interactions.channel(c),
            shape,
            part: part(c)?,
            origin,
            full: scaled,
        })
    };
    let (img, rest) = data.split_at_mut(n);
    let previous_prediction;
    if scaled == patch {
        if has_image {
            copy_rows(image, shape, valid, window, img, patch, |v| v);
        }
        rest.par_chunks_exact_mut(n)
            .enumerate()
            .for_each(|(c, dst)| {
                if let Some(r) = part(c) {
                    let table = if c == PREV_SEG { &raw } else { &normed };
                    copy_rows(interactions.channel(c), shape, r, window, dst, patch, |v| {
                        table[v.to_bits() as usize]
                    });
                }
            });
        previous_prediction = rest[PREV_SEG * n..(PREV_SEG + 1) * n].to_vec();
    } else {
        let ks = round_to_nearest_odd(2.0 * zoom - 1.0);
        let r = (ks - 1) / 2;
        // Channels are independent; each kernel is parallel inside too, so this mostly
        // overlaps the small pooled channels with the big ones.
        rest.par_chunks_exact_mut(n).enumerate().try_for_each(
            |(c, dst)| -> Result<(), InteractError> {
                let pooled =
                    r > 0 && [POINT_POS, POINT_NEG, SCRIBBLE_POS, SCRIBBLE_NEG].contains(&c);
                let values: Vec<f16> = if pooled {
                    let Some(reg) = crop(c) else { return Ok(()) };
                    let reg = max_pool(&reg, r);
                    // the pooled values are maxima of f16 values (or 0): exact in f16
                    let h: Vec<f16> = reg.data.iter().map(|&v| f16::from_f32(v)).collect();
                    area_f16_view(
                        &VolumeView {
                            data: &h,
                            shape: reg.shape,
                            part: reg.shape.map(|s| [0, s]),
                            origin: reg.lo.map(|l| -(l as i64)),
                            full: reg.full,
                        },
                        patch,
                    )
                } else {
                    let Some(v) = view(c) else { return Ok(()) };
                    area_f16_view(&v, patch)
                };
                let table = if c == PREV_SEG { &raw } else { &normed };
                for (dst, &v) in dst.iter_mut().zip(&values) {
                    *dst = table[v.to_bits() as usize];
                }
                Ok(())
            },
        )?;
        previous_prediction = match view(PREV_SEG) {
            Some(v) => nearest_view(&v, patch)
                .iter()
                .map(|&v| raw[v.to_bits() as usize])
                .collect(),
            None => vec![0.0; n],
        };
        if has_image {
            img.copy_from_slice(&trilinear_view(
                &VolumeView {
                    data: image,
                    shape,
                    part: valid,
                    origin,
                    full: scaled,
                },
                patch,
            ));
        }
    }
    Ok(NetworkInput {
        patch_size: patch,
        scaled_patch_size: scaled,
        window,
        data,
        previous_prediction,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::interactions::{DecayScheme, PromptConfig};

    fn setup(patch: usize) -> (Vec<f32>, Interactions) {
        let shape = [10, 12, 14];
        let image: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| (i % 17) as f32 - 8.0)
            .collect();
        let cfg = PromptConfig {
            patch_size: [patch; 3],
            point_radius: 2,
            decay: 0.5,
            scheme: DecayScheme::Running,
        };
        let mut it = Interactions::new(shape, cfg).unwrap();
        it.add_point([3.0, 4.0, 5.0], true).unwrap();
        it.add_point([7.0, 8.0, 9.0], false).unwrap();
        (image, it)
    }

    #[test]
    fn zoom1_crops_with_zero_padding_and_normalizes() {
        let (image, it) = setup(8);
        let inp = build_network_input(&image, &it, [1, 4, 5], 1.0).unwrap();
        assert_eq!(inp.window, [[-3, 5], [0, 8], [1, 9]]);
        let at = |c: usize, p: [usize; 3]| inp.channel(c)[(p[0] * 8 + p[1]) * 8 + p[2]];
        // patch (3, 4, 4) is image (0, 4, 5)
        assert_eq!(at(0, [3, 4, 4]), image[4 * 14 + 5]);
        assert_eq!(at(0, [2, 4, 4]), 0.0, "outside the image");
        // the older positive point: stored at 2, intensity 4 -> 0.5
        assert_eq!(at(1 + POINT_POS, [6, 4, 4]), 0.5);
    }

    #[test]
    fn zoom_divides_window_and_rejects_bad_zoom() {
        let (image, it) = setup(4);
        let inp = build_network_input(&image, &it, [5, 6, 7], 2.25).unwrap();
        assert_eq!(inp.scaled_patch_size, [9, 9, 9]);
        assert_eq!(inp.window, [[1, 10], [2, 11], [3, 12]]);
        assert!(inp.channel(1 + POINT_POS).iter().any(|&v| v > 0.0));
        assert!(build_network_input(&image, &it, [5, 6, 7], 0.5).is_err());
        assert!(build_network_input(&image, &it, [5, 6, 7], f64::NAN).is_err());
        assert!(build_network_input(&image[1..], &it, [5, 6, 7], 1.0).is_err());
    }

    #[test]
    fn window_entirely_outside_gives_zeros() {
        let (image, it) = setup(4);
        for zoom in [1.0, 1.5] {
            let inp = build_network_input(&image, &it, [100, 100, 100], zoom).unwrap();
            assert!(inp.data.iter().all(|&v| v == 0.0));
        }
    }
}
