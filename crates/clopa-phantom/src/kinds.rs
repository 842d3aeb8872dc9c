//! One scene generator per task kind, and the common renderer that turns a scene (tissue classes
//! with mean intensities) into a realistic image.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::field::{
    Grid, LowFreq, add, draw_segment, norm, normal, scale, smooth_noise, sub, uniform, unit,
};

/// Tissue classes of a scene: `class[i]` indexes `means`; `label[i]` is the ground truth.
pub(crate) struct Scene {
    pub class: Vec<u8>,
    pub means: Vec<f64>,
    pub label: Vec<u8>,
    /// Voxels outside the scanner's field of view (set to exactly 0 in the image).
    pub outside_fov: Option<Vec<bool>>,
}

/// How a scene becomes an image.
pub(crate) struct Look {
    /// CT (Hounsfield-like, rounded, clamped to [-1024, 3071]) or MR (arbitrary positive units).
    pub ct: bool,
    /// Value of air/background used as the origin of the multiplicative bias field.
    pub air: f64,
    pub texture_std: f64,
    pub noise_std: f64,
    pub bias_amp: f64,
}

const AIR: u8 = 0;

pub(crate) fn render(grid: &Grid, scene: &Scene, look: &Look, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = grid.len();
    let mut img: Vec<f32> = scene
        .class
        .iter()
        .map(|&c| scene.means[c as usize] as f32)
        .collect();
    // Partial volume: edges are never razor sharp in a scan. A light in-plane point-spread
    // function only; thick slices are already accounted for where tubes are drawn, and a
    // stronger blur would wash out the 1-2 voxel vessels.
    for axis in 0..2 {
        psf_axis(&mut img, grid.shape, axis);
    }
    // Texture is finer in-plane than across thick slices.
    let r = [0, 1, 2].map(|k| ((1.5 / grid.spacing[k]).round() as usize).clamp(1, 3));
    let tex = smooth_noise(rng, grid.shape, r, 2);
    let bias = LowFreq::new(
        rng,
        2.0 * grid.extent().iter().cloned().fold(0.0, f64::max),
        4,
    )
    .sample(grid);
    for i in 0..n {
        let mut v = img[i] as f64;
        if scene.class[i] != AIR {
            v += look.texture_std * tex[i] as f64;
        }
        v = look.air + (v - look.air) * (1.0 + look.bias_amp * bias[i] as f64);
        v += look.noise_std * normal(rng);
        if look.ct {
            v = v.round().clamp(-1024.0, 3071.0);
        } else {
            v = v.max(0.0);
        }
        img[i] = v as f32;
    }
    if let Some(out) = &scene.outside_fov {
        for (v, &o) in img.iter_mut().zip(out) {
            if o {
                *v = 0.0;
            }
        }
    }
    img
}

/// 3-tap [0.2, 0.6, 0.2] filter along `axis` (edges clamped).
fn psf_axis(data: &mut [f32], shape: [usize; 3], axis: usize) {
    let n = shape[axis];
    if n < 2 {
        return;
    }
    let stride = [shape[1] * shape[2], shape[2], 1][axis];
    let src = data.to_vec();
    for (i, v) in data.iter_mut().enumerate() {
        let k = (i / stride) % n;
        let lo = if k > 0 { i - stride } else { i };
        let hi = if k + 1 < n { i + stride } else { i };
        *v = 0.2 * src[lo] + 0.6 * src[i] + 0.2 * src[hi];
    }
}

/// An elliptic body cylinder along z (semi-axes in mm) and, for some cases, a circular field of
/// view just around it outside which the scanner wrote zeros.
fn body_and_fov(
    grid: &Grid,
    rng: &mut ChaCha8Rng,
    zero_border_p: f64,
) -> (Vec<bool>, [f64; 2], Option<Vec<bool>>) {
    let e = grid.extent();
    let c = grid.center();
    let semi = [
        e[0] / 2.0 * uniform(rng, 0.82, 0.95),
        e[1] / 2.0 * uniform(rng, 0.72, 0.9),
    ];
    let mut body = vec![false; grid.len()];
    grid.for_each(|i, p| {
        let dx = (p[0] - c[0]) / semi[0];
        let dy = (p[1] - c[1]) / semi[1];
        body[i] = dx * dx + dy * dy <= 1.0;
    });
    let fov = if rng.random_bool(zero_border_p) {
        let rad = semi[0].max(semi[1]) * 1.03;
        let mut out = vec![false; grid.len()];
        grid.for_each(|i, p| out[i] = (p[0] - c[0]).hypot(p[1] - c[1]) > rad);
        Some(out)
    } else {
        None
    };
    (body, semi, fov)
}

/// Level set `g <= threshold` where `g` is the ellipsoidal radius deformed by low-frequency
/// noise: a smooth, star-shaped blob. Returns `g` for every voxel (`inf` where not allowed).
fn blob_field(
    grid: &Grid,
    center: [f64; 3],
    radii: [f64; 3],
    deform: f64,
    lf: &LowFreq,
) -> Vec<f64> {
    let mut g = vec![0.0; grid.len()];
    grid.for_each(|i, p| {
        let d = sub(p, center);
        let r = ((d[0] / radii[0]).powi(2) + (d[1] / radii[1]).powi(2) + (d[2] / radii[2]).powi(2))
            .sqrt();
        g[i] = r * (1.0 + deform * lf.at(p));
    });
    g
}

fn count(label: &[u8]) -> usize {
    label.iter().filter(|&&v| v != 0).count()
}

/// A random point inside the body ellipse, `margin` (0..1) away from its rim, anywhere in z
/// except `zmargin` mm from the ends.
fn point_in_body(
    grid: &Grid,
    semi: [f64; 2],
    margin: f64,
    zmargin: f64,
    rng: &mut ChaCha8Rng,
) -> [f64; 3] {
    let c = grid.center();
    let e = grid.extent();
    let a = uniform(rng, 0.0, 2.0 * std::f64::consts::PI);
    let r = (1.0 - margin) * rng.random::<f64>().sqrt();
    let zm = zmargin.min(e[2] / 2.0 - grid.spacing[2]).max(0.0);
    [
        c[0] + semi[0] * r * a.cos(),
        c[1] + semi[1] * r * a.sin(),
        uniform(rng, zm, e[2] - grid.spacing[2] - zm),
    ]
}

/// vessels: a branching, tapering tree of thin tubes in a parenchyma (CT, contrast-enhanced),
/// volume fraction 0.5-2 %, a large unlabelled vessel (aorta-like) and bright bone as distractors.
pub(crate) fn vessels(grid: &Grid, rng: &mut ChaCha8Rng) -> (Scene, Look) {
    let n = grid.len();
    let (body, semi, fov) = body_and_fov(grid, rng, 0.4);
    let c = grid.center();
    // Classes: 0 air, 1 fat, 2 parenchyma, 3 vessel (label 1), 4 aorta, 5 bone.
    let inner = [semi[0] * 0.85, semi[1] * 0.85];
    let mut class = vec![0u8; n];
    grid.for_each(|i, p| {
        if body[i] {
            let dx = (p[0] - c[0]) / inner[0];
            let dy = (p[1] - c[1]) / inner[1];
            class[i] = if dx * dx + dy * dy <= 1.0 { 2 } else { 1 };
        }
    });
    let parenchyma = class.clone();
    let in_parenchyma = |p: [f64; 3]| -> bool {
        let i = voxel_of(grid, p);
        i.is_some_and(|i| parenchyma[i] == 2)
    };
    // Aorta-like tube along z near the back of the body, and a vertebra-like bright blob.
    let aorta_c = [
        c[0] + uniform(rng, -0.2, 0.2) * inner[0],
        c[1] + inner[1] * 0.55,
        0.0,
    ];
    let aorta_r = uniform(rng, 3.0, 5.0);
    let top = [aorta_c[0], aorta_c[1], grid.extent()[2]];
    draw_segment(&mut class, grid, aorta_c, top, aorta_r, aorta_r, 4, None);
    let spine = [c[0], c[1] + semi[1] * 0.85, 0.0];
    draw_segment(
        &mut class,
        grid,
        spine,
        [spine[0], spine[1], grid.extent()[2]],
        semi[1] * 0.12,
        semi[1] * 0.12,
        5,
        None,
    );

    let vox = grid.spacing[0].min(grid.spacing[1]);
    let target = uniform(rng, 0.007, 0.014);
    let mut label = vec![0u8; n];
    let only_parenchyma = |c: u8| c == 2 || c == 3;
    for _attempt in 0..60 {
        if (count(&label) as f64) / (n as f64) >= target {
            break;
        }
        let mut trial = label.clone();
        // Branches: (start, direction, radius mm, depth).
        let mut stack = vec![(
            point_in_body(grid, inner, 0.3, 5.0, rng),
            unit(rng),
            uniform(rng, 1.5, 2.0) * vox,
            0,
        )];
        while let Some((mut p, mut dir, r0, depth)) = stack.pop() {
            let len = uniform(rng, 8.0, 22.0);
            let steps = (len / 2.0).ceil() as usize;
            let r1 = r0 * uniform(rng, 0.75, 0.9);
            for s in 0..steps {
                let ra = r0 + (r1 - r0) * s as f64 / steps as f64;
                let rb = r0 + (r1 - r0) * (s + 1) as f64 / steps as f64;
                let wobble = [normal(rng), normal(rng), normal(rng)];
                let d = add(dir, scale(wobble, 0.2));
                dir = scale(d, 1.0 / norm(d).max(1e-9));
                let q = add(p, scale(dir, 2.0));
                if !in_parenchyma(q) {
                    break;
                }
                draw_segment(&mut trial, grid, p, q, ra, rb, 1, None);
                p = q;
            }
            if depth < 4 && r1 * 0.8 >= 0.8 * vox {
                for _ in 0..2 {
                    let d = add(dir, scale(unit(rng), uniform(rng, 0.6, 1.2)));
                    stack.push((
                        p,
                        scale(d, 1.0 / norm(d).max(1e-9)),
                        r1 * uniform(rng, 0.72, 0.9),
                        depth + 1,
                    ));
                }
            }
        }
        for i in 0..n {
            if trial[i] != 0 && !only_parenchyma(class[i]) {
                trial[i] = 0;
            }
        }
        if (count(&trial) as f64) / (n as f64) <= 0.019 {
            label = trial;
        }
    }
    for i in 0..n {
        if label[i] != 0 {
            class[i] = 3;
        }
    }
    let enhance = uniform(rng, 150.0, 220.0);
    let means = vec![
        -1000.0,
        uniform(rng, -110.0, -80.0),
        uniform(rng, 50.0, 70.0),
        enhance,
        enhance + uniform(rng, 20.0, 60.0),
        uniform(rng, 350.0, 600.0),
    ];
    let look = Look {
        ct: true,
        air: -1000.0,
        texture_std: uniform(rng, 6.0, 12.0),
        noise_std: uniform(rng, 12.0, 25.0),
        bias_amp: 0.02,
    };
    (
        Scene {
            class,
            means,
            label,
            outside_fov: fov,
        },
        look,
    )
}

fn voxel_of(grid: &Grid, p: [f64; 3]) -> Option<usize> {
    let mut idx = [0usize; 3];
    for k in 0..3 {
        let v = (p[k] / grid.spacing[k]).round();
        if v < 0.0 || v >= grid.shape[k] as f64 {
            return None;
        }
        idx[k] = v as usize;
    }
    Some((idx[0] * grid.shape[1] + idx[1]) * grid.shape[2] + idx[2])
}

/// Quantile threshold of `g` so that `fraction` of all voxels fall below it.
fn threshold_for_fraction(g: &[f64], fraction: f64) -> f64 {
    let mut v: Vec<f64> = g.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NEG_INFINITY;
    }
    let k = ((g.len() as f64 * fraction) as usize).clamp(1, v.len()) - 1;
    let (_, kth, _) = v.select_nth_unstable_by(k, f64::total_cmp);
    *kth
}

/// organ: a large deformed ellipsoid (10-25 % of the volume, label 1) with tumours inside
/// (label 2, some cases) and similar-intensity neighbouring organs touching it (CT).
pub(crate) fn organ(grid: &Grid, rng: &mut ChaCha8Rng) -> (Scene, Look) {
    let n = grid.len();
    let (body, semi, fov) = body_and_fov(grid, rng, 0.4);
    let c = grid.center();
    let e = grid.extent();
    // Classes: 0 air, 1 fat, 2 soft tissue, 3 organ (label 1), 4 neighbours, 5 tumour (label 2), 6 bone.
    let inner = [semi[0] * 0.88, semi[1] * 0.88];
    let mut class = vec![0u8; n];
    grid.for_each(|i, p| {
        if body[i] {
            let dx = (p[0] - c[0]) / inner[0];
            let dy = (p[1] - c[1]) / inner[1];
            class[i] = if dx * dx + dy * dy <= 1.0 { 2 } else { 1 };
        }
    });
    let center = [
        c[0] + uniform(rng, -0.25, 0.25) * inner[0],
        c[1] + uniform(rng, -0.2, 0.1) * inner[1],
        c[2] + uniform(rng, -0.1, 0.1) * e[2],
    ];
    let radii = [
        inner[0] * uniform(rng, 0.5, 0.75),
        inner[1] * uniform(rng, 0.45, 0.65),
        e[2] * uniform(rng, 0.3, 0.42),
    ];
    let lf = LowFreq::new(rng, radii[0].min(radii[1]) * 1.5, 6);
    let mut g = blob_field(grid, center, radii, 0.18, &lf);
    for i in 0..n {
        if class[i] != 2 {
            g[i] = f64::INFINITY;
        }
    }
    let t = threshold_for_fraction(&g, uniform(rng, 0.13, 0.21));
    let mut organ_mask = clopa_volume::Volume::from_shape(
        grid.shape,
        grid.spacing,
        g.iter().map(|&v| u8::from(v <= t)).collect(),
    )
    .unwrap_or_else(|_| unreachable_volume(grid));
    organ_mask = clopa_volume::largest_component(&organ_mask);
    let mut label = organ_mask.data.clone();
    for i in 0..n {
        if label[i] != 0 {
            class[i] = 3;
        }
    }
    // Neighbouring organs: blobs centred just outside the organ surface, so they touch or nearly touch it.
    let organ_pts: Vec<usize> = (0..n).filter(|&i| label[i] != 0).collect();
    for _ in 0..rng.random_range(2..=3) {
        if organ_pts.is_empty() {
            break;
        }
        let anchor = organ_pts[rng.random_range(0..organ_pts.len())];
        let ap = position(grid, anchor);
        let out_dir = sub(ap, center);
        let out_dir = scale(out_dir, 1.0 / norm(out_dir).max(1e-9));
        let r = uniform(rng, 0.25, 0.45) * radii[0].min(radii[1]);
        let nc = add(ap, scale(out_dir, r * uniform(rng, 1.0, 1.6)));
        let lf2 = LowFreq::new(rng, r * 1.5, 4);
        let g2 = blob_field(
            grid,
            nc,
            [r, r * uniform(rng, 0.7, 1.2), r * uniform(rng, 0.8, 1.5)],
            0.15,
            &lf2,
        );
        for i in 0..n {
            if g2[i] <= 1.0 && class[i] == 2 {
                class[i] = 4;
            }
        }
    }
    // Tumours (label 2) inside the organ in most cases, as in liver/tumour tasks.
    if rng.random_bool(0.7) && !organ_pts.is_empty() {
        for _ in 0..rng.random_range(1..=2) {
            let tc = position(grid, organ_pts[rng.random_range(0..organ_pts.len())]);
            let r = uniform(rng, 3.0, 7.0);
            let lf3 = LowFreq::new(rng, r * 2.0, 4);
            let g3 = blob_field(grid, tc, [r, r, r], 0.15, &lf3);
            for i in 0..n {
                if g3[i] <= 1.0 && label[i] != 0 {
                    label[i] = 2;
                    class[i] = 5;
                }
            }
        }
    }
    let spine = [c[0], c[1] + semi[1] * 0.85, 0.0];
    draw_segment(
        &mut class,
        grid,
        spine,
        [spine[0], spine[1], e[2]],
        semi[1] * 0.12,
        semi[1] * 0.12,
        6,
        Some(&|c| c == 1 || c == 2),
    );
    let organ_hu = uniform(rng, 90.0, 120.0);
    let means = vec![
        -1000.0,
        uniform(rng, -110.0, -80.0),
        uniform(rng, 30.0, 50.0),
        organ_hu,
        organ_hu + uniform(rng, -15.0, 15.0),
        organ_hu - uniform(rng, 30.0, 60.0),
        uniform(rng, 350.0, 600.0),
    ];
    let look = Look {
        ct: true,
        air: -1000.0,
        texture_std: uniform(rng, 5.0, 10.0),
        noise_std: uniform(rng, 8.0, 20.0),
        bias_amp: 0.02,
    };
    (
        Scene {
            class,
            means,
            label,
            outside_fov: fov,
        },
        look,
    )
}

fn unreachable_volume(grid: &Grid) -> clopa_volume::Mask {
    // The data length always matches the grid; this keeps the code free of unwrap.
    clopa_volume::Volume {
        shape: grid.shape,
        spacing: grid.spacing,
        affine: clopa_volume::diag_affine(grid.spacing),
        data: vec![0; grid.len()],
    }
}

fn position(grid: &Grid, i: usize) -> [f64; 3] {
    let [_, ny, nz] = grid.shape;
    let (x, y, z) = (i / (ny * nz), (i / nz) % ny, i % nz);
    [
        x as f64 * grid.spacing[0],
        y as f64 * grid.spacing[1],
        z as f64 * grid.spacing[2],
    ]
}

/// Points along a circular arc of radius `r` spanning `span` radians in the plane of `u`, `v`.
fn arc(
    center: [f64; 3],
    u: [f64; 3],
    v: [f64; 3],
    r: f64,
    start: f64,
    span: f64,
    steps: usize,
) -> Vec<[f64; 3]> {
    (0..=steps)
        .map(|s| {
            let a = start + span * s as f64 / steps as f64;
            add(center, add(scale(u, r * a.cos()), scale(v, r * a.sin())))
        })
        .collect()
}

fn orthonormal_pair(rng: &mut ChaCha8Rng) -> ([f64; 3], [f64; 3]) {
    let u = unit(rng);
    loop {
        let w = unit(rng);
        let d = crate::field::dot(u, w);
        let v = sub(w, scale(u, d));
        let nv = norm(v);
        if nv > 0.3 {
            return (u, scale(v, 1.0 / nv));
        }
    }
}

/// small: a hippocampus-like curved tube (thick head = label 1, thin tail = label 2) in MR brain
/// tissue with grey/white matter texture and a dark ventricle-like tube beside it.
pub(crate) fn small(grid: &Grid, rng: &mut ChaCha8Rng) -> (Scene, Look) {
    let n = grid.len();
    let c = grid.center();
    let e = grid.extent();
    // Classes: 0 outside (skull-stripped zero), 1 white matter, 2 grey matter, 3 head (label 1),
    // 4 tail (label 2), 5 CSF.
    let gm = LowFreq::new(rng, 6.0, 8);
    let mut class = vec![1u8; n];
    grid.for_each(|i, p| {
        if gm.at(p) > 0.3 {
            class[i] = 2;
        }
    });
    let fov = if rng.random_bool(0.3) {
        let mut out = vec![false; n];
        grid.for_each(|i, p| {
            let d = [0, 1, 2].map(|k| (p[k] - c[k]) / (e[k] / 2.0 * 0.98));
            out[i] = d[0] * d[0] + d[1] * d[1] + d[2] * d[2] > 1.0;
        });
        for (cl, &o) in class.iter_mut().zip(&out) {
            if o {
                *cl = 0;
            }
        }
        Some(out)
    } else {
        None
    };
    let (u, v) = orthonormal_pair(rng);
    let r_arc = uniform(rng, 0.22, 0.3) * e.iter().cloned().fold(f64::MAX, f64::min);
    let span = uniform(rng, 1.8, 2.6);
    let start = uniform(rng, 0.0, 2.0 * std::f64::consts::PI);
    // Centre the arc's midpoint on the volume centre.
    let mid = add(
        scale(u, r_arc * (start + span / 2.0).cos()),
        scale(v, r_arc * (start + span / 2.0).sin()),
    );
    let arc_c = add(sub(c, mid), [normal(rng), normal(rng), normal(rng)]);
    let pts = arc(arc_c, u, v, r_arc, start, span, 24);
    let (rh, rt) = (uniform(rng, 3.2, 4.2), uniform(rng, 1.8, 2.4));
    let mut label = vec![0u8; n];
    let steps = pts.len() - 1;
    for s in 0..steps {
        let ra = rh + (rt - rh) * s as f64 / steps as f64;
        let rb = rh + (rt - rh) * (s + 1) as f64 / steps as f64;
        let value = if s < steps / 2 { 1 } else { 2 };
        draw_segment(
            &mut label,
            grid,
            pts[s],
            pts[s + 1],
            ra,
            rb,
            value,
            Some(&|l| l == 0),
        );
    }
    if let Some(out) = &fov {
        for (l, &o) in label.iter_mut().zip(out) {
            if o {
                *l = 0;
            }
        }
    }
    // Ventricle: a dark arc running alongside, offset outward and never over the target.
    let vpts = arc(
        arc_c,
        u,
        v,
        r_arc + rh + uniform(rng, 2.5, 4.0),
        start + 0.2,
        span * 0.8,
        16,
    );
    let vr = uniform(rng, 1.2, 2.2);
    for w in vpts.windows(2) {
        draw_segment(
            &mut class,
            grid,
            w[0],
            w[1],
            vr,
            vr,
            5,
            Some(&|c| c == 1 || c == 2),
        );
    }
    for i in 0..n {
        match label[i] {
            1 => class[i] = 3,
            2 => class[i] = 4,
            _ => {}
        }
    }
    let scale_mr = uniform(rng, 200.0, 800.0);
    let wm = scale_mr;
    let gmv = scale_mr * uniform(rng, 0.72, 0.82);
    let hip = scale_mr * uniform(rng, 0.78, 0.9);
    let means = vec![
        0.0,
        wm,
        gmv,
        hip,
        hip * uniform(rng, 0.97, 1.03),
        scale_mr * uniform(rng, 0.2, 0.35),
    ];
    let look = Look {
        ct: false,
        air: 0.0,
        texture_std: 0.04 * scale_mr,
        noise_std: uniform(rng, 0.03, 0.06) * scale_mr,
        bias_amp: uniform(rng, 0.1, 0.25),
    };
    (
        Scene {
            class,
            means,
            label,
            outside_fov: fov,
        },
        look,
    )
}

/// lesion: one small low-contrast blob (radius 2-5 voxels, contrast 0.5-1 noise std, hypo- or
/// hyperdense) in a large organ in a large CT volume, with bright vessels as distractors.
pub(crate) fn lesion(grid: &Grid, rng: &mut ChaCha8Rng) -> (Scene, Look) {
    let n = grid.len();
    let (body, semi, fov) = body_and_fov(grid, rng, 0.4);
    let c = grid.center();
    let e = grid.extent();
    // Classes: 0 air, 1 fat, 2 soft tissue, 3 organ, 4 lesion (label 1), 5 vessels.
    let inner = [semi[0] * 0.88, semi[1] * 0.88];
    let mut class = vec![0u8; n];
    grid.for_each(|i, p| {
        if body[i] {
            let dx = (p[0] - c[0]) / inner[0];
            let dy = (p[1] - c[1]) / inner[1];
            class[i] = if dx * dx + dy * dy <= 1.0 { 2 } else { 1 };
        }
    });
    let radii = [inner[0] * 0.7, inner[1] * 0.6, e[2] * 0.38];
    let lf = LowFreq::new(rng, radii[0] * 1.5, 6);
    let g = blob_field(grid, c, radii, 0.15, &lf);
    for i in 0..n {
        if class[i] == 2 && g[i] <= 1.0 {
            class[i] = 3;
        }
    }
    let organ_pts: Vec<usize> = (0..n).filter(|&i| class[i] == 3 && g[i] <= 0.7).collect();
    let vox = grid.spacing[0].min(grid.spacing[1]);
    let mut label = vec![0u8; n];
    if !organ_pts.is_empty() {
        let lc = position(grid, organ_pts[rng.random_range(0..organ_pts.len())]);
        let r = uniform(rng, 2.0, 5.0) * vox;
        let lf2 = LowFreq::new(rng, r * 2.0, 4);
        let g2 = blob_field(
            grid,
            lc,
            [r, r * uniform(rng, 0.8, 1.2), r * uniform(rng, 0.8, 1.2)],
            0.12,
            &lf2,
        );
        for i in 0..n {
            if g2[i] <= 1.0 && class[i] == 3 {
                label[i] = 1;
                class[i] = 4;
            }
        }
    }
    // Vessels through the organ: bright, elongated, label 0.
    for _ in 0..rng.random_range(2..=4) {
        let a = point_in_body(grid, inner, 0.4, 0.0, rng);
        let b = add(a, scale(unit(rng), uniform(rng, 20.0, 40.0)));
        let r = uniform(rng, 1.0, 2.5) * vox;
        draw_segment(&mut class, grid, a, b, r, r * 0.8, 5, Some(&|c| c == 3));
    }
    let noise = uniform(rng, 10.0, 20.0);
    let organ_hu = uniform(rng, 50.0, 70.0);
    let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
    let means = vec![
        -1000.0,
        uniform(rng, -110.0, -80.0),
        uniform(rng, 30.0, 45.0),
        organ_hu,
        organ_hu + sign * uniform(rng, 0.5, 1.0) * noise,
        organ_hu + uniform(rng, 80.0, 140.0),
    ];
    let look = Look {
        ct: true,
        air: -1000.0,
        texture_std: noise * 0.3,
        noise_std: noise,
        bias_amp: 0.02,
    };
    (
        Scene {
            class,
            means,
            label,
            outside_fov: fov,
        },
        look,
    )
}

/// generic: 2-5 random objects (blobs, tubes, shells, boxes) with random contrasts on a random
/// background; one of them, chosen at random and drawn last so it stays whole, is the target.
pub(crate) fn generic(grid: &Grid, rng: &mut ChaCha8Rng) -> (Scene, Look) {
    let n = grid.len();
    let e = grid.extent();
    let minext = e.iter().cloned().fold(f64::MAX, f64::min);
    let noise = uniform(rng, 5.0, 30.0);
    let bg = uniform(rng, 50.0, 500.0);
    let n_obj = rng.random_range(2..=5);
    let target_idx = rng.random_range(0..n_obj);
    let mut class = vec![1u8; n];
    let mut label = vec![0u8; n];
    let mut means = vec![0.0, bg];
    let mut order: Vec<usize> = (0..n_obj).filter(|&k| k != target_idx).collect();
    order.push(target_idx);
    for (slot, &k) in order.iter().enumerate() {
        let cls = (slot + 2) as u8;
        let contrast =
            uniform(rng, 1.0, 6.0) * noise * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        means.push(bg + contrast);
        let mut mark = vec![false; n];
        let center = [0, 1, 2].map(|a| uniform(rng, 0.25, 0.75) * e[a]);
        match rng.random_range(0..4) {
            0 => {
                let r = uniform(rng, 0.06, 0.2) * minext;
                let lf = LowFreq::new(rng, r * 1.5, 4);
                let g = blob_field(
                    grid,
                    center,
                    [r, r * uniform(rng, 0.6, 1.4), r * uniform(rng, 0.6, 1.4)],
                    0.2,
                    &lf,
                );
                for i in 0..n {
                    mark[i] = g[i] <= 1.0;
                }
            }
            1 => {
                let mut tube = vec![0u8; n];
                let mut p = center;
                let mut dir = unit(rng);
                let r = uniform(rng, 1.0, 3.5) * grid.spacing[0];
                for _ in 0..rng.random_range(5..15) {
                    let d = add(dir, scale(unit(rng), 0.4));
                    dir = scale(d, 1.0 / norm(d).max(1e-9));
                    let q = add(p, scale(dir, 3.0));
                    draw_segment(&mut tube, grid, p, q, r, r, 1, None);
                    p = q;
                }
                for i in 0..n {
                    mark[i] = tube[i] != 0;
                }
            }
            2 => {
                let r = uniform(rng, 0.1, 0.22) * minext;
                let th = uniform(rng, 1.5, 3.0) * grid.spacing[0];
                grid.for_each(|i, p| {
                    let d = norm(sub(p, center));
                    mark[i] = d <= r && d >= r - th;
                });
            }
            _ => {
                let half = [0, 1, 2].map(|a| uniform(rng, 0.05, 0.15) * e[a] + grid.spacing[a]);
                grid.for_each(|i, p| mark[i] = (0..3).all(|a| (p[a] - center[a]).abs() <= half[a]));
            }
        }
        let is_target = k == target_idx;
        for i in 0..n {
            if mark[i] {
                class[i] = cls;
                label[i] = u8::from(is_target);
            }
        }
    }
    let look = Look {
        ct: false,
        air: 0.0,
        texture_std: noise * uniform(rng, 0.2, 0.8),
        noise_std: noise,
        bias_amp: uniform(rng, 0.0, 0.2),
    };
    (
        Scene {
            class,
            means,
            label,
            outside_fov: None,
        },
        look,
    )
}
