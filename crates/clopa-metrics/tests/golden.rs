//! Golden tests against the values of the real reference implementations
//! (`tests/fixtures/README.md`, a copy of the shared metric fixtures' README): DeepMind
//! surface-distance 0.1 for the masks, IS_Validate's definitions for the curves. The README states
//! no tolerances; ours are tight: Dice and NSD 1e-9 absolute, HD95 and ASSD 1e-6 relative (the
//! reference reproduced itself to ~1e-16 across NumPy versions).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use clopa_metrics::{SurfaceDistances, curves, is_validate, threshold};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A JSON number, or one of the strings the generator writes for non-finite values.
fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) => match s.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            other => panic!("not a number: {other}"),
        },
        other => panic!("not a number: {other}"),
    }
}

fn close_abs(got: f64, want: f64, tol: f64) -> bool {
    if want.is_nan() {
        return got.is_nan();
    }
    if want.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= tol
}

fn close_rel(got: f64, want: f64, tol: f64) -> bool {
    if want.is_nan() || want.is_infinite() {
        return close_abs(got, want, 0.0);
    }
    (got - want).abs() <= tol * want.abs().max(f64::MIN_POSITIVE) || (got - want).abs() <= 1e-12
}

struct Case {
    id: String,
    shape: [usize; 3],
    spacing: [f64; 3],
    tol: f64,
    pred: Vec<u8>,
    reference: Vec<u8>,
    meta: Value,
}

fn cases() -> Vec<Case> {
    let meta = json("masks.json");
    let bytes = std::fs::read(fixture("masks.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let get = |key: &str, shape: [usize; 3]| -> Vec<u8> {
        let t = st.tensor(key).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::U8, "{key}");
        assert_eq!(t.shape(), &shape[..], "{key}");
        t.data().to_vec()
    };
    meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let arr3 = |v: &Value| -> [f64; 3] {
                let a = v.as_array().unwrap();
                [num(&a[0]), num(&a[1]), num(&a[2])]
            };
            let sh = arr3(&c["shape"]);
            let shape = [sh[0] as usize, sh[1] as usize, sh[2] as usize];
            Case {
                id: c["id"].as_str().unwrap().to_string(),
                shape,
                spacing: arr3(&c["spacing_mm"]),
                tol: num(&c["tolerance_mm"]),
                pred: get(c["keys"]["pred"].as_str().unwrap(), shape),
                reference: get(c["keys"]["ref"].as_str().unwrap(), shape),
                meta: c.clone(),
            }
        })
        .collect()
}

#[test]
fn all_17_mask_pairs_match_surface_distance() {
    let cases = cases();
    assert_eq!(cases.len(), 17);
    let mut failures = Vec::new();
    for c in &cases {
        let sd = &c.meta["surface_distance"];
        let (p, r, i) = clopa_metrics::overlap_counts(&c.pred, &c.reference, c.shape).unwrap();
        assert_eq!(p as f64, num(&c.meta["voxels_pred"]), "{}", c.id);
        assert_eq!(r as f64, num(&c.meta["voxels_ref"]), "{}", c.id);
        assert_eq!(i as f64, num(&c.meta["voxels_intersection"]), "{}", c.id);

        let dists = SurfaceDistances::compute(&c.pred, &c.reference, c.shape, c.spacing).unwrap();
        let dice = clopa_metrics::dice(&c.pred, &c.reference, c.shape).unwrap();
        let nsd = dists.surface_dice(c.tol);
        let (ov_ref, ov_pred) = dists.surface_overlap(c.tol);
        let assd = dists.average_distances();
        let mut check = |name: &str, got: f64, want: &Value, rel: bool, tol: f64| {
            let want = num(want);
            let ok = if rel {
                close_rel(got, want, tol)
            } else {
                close_abs(got, want, tol)
            };
            if !ok {
                failures.push(format!("{} {name}: got {got}, want {want}", c.id));
            }
        };
        check("dice", dice, &sd["dice"], false, 1e-9);
        check("nsd", nsd, &sd["nsd"], false, 1e-9);
        check(
            "surface_overlap_ref",
            ov_ref,
            &sd["surface_overlap_ref"],
            false,
            1e-9,
        );
        check(
            "surface_overlap_pred",
            ov_pred,
            &sd["surface_overlap_pred"],
            false,
            1e-9,
        );
        check(
            "hd95",
            dists.robust_hausdorff(95.0),
            &sd["hd95"],
            true,
            1e-6,
        );
        check(
            "hd100",
            dists.robust_hausdorff(100.0),
            &sd["hd100"],
            true,
            1e-6,
        );
        check(
            "asd_ref_to_pred",
            assd.ref_to_pred,
            &sd["asd_ref_to_pred"],
            true,
            1e-6,
        );
        check(
            "asd_pred_to_ref",
            assd.pred_to_ref,
            &sd["asd_pred_to_ref"],
            true,
            1e-6,
        );
        check(
            "assd_mean_of_directed",
            assd.mean_of_directed,
            &sd["assd_mean_of_directed"],
            true,
            1e-6,
        );
        check(
            "assd_area_weighted",
            assd.area_weighted,
            &sd["assd_area_weighted"],
            true,
            1e-6,
        );
        check(
            "surface_area_ref",
            dists.ref_area(),
            &sd["surface_area_ref_mm2"],
            true,
            1e-9,
        );
        check(
            "surface_area_pred",
            dists.pred_area(),
            &sd["surface_area_pred_mm2"],
            true,
            1e-9,
        );
        check(
            "n_surfels_ref",
            dists.ref_areas.len() as f64,
            &sd["n_surfels_ref"],
            false,
            0.0,
        );
        check(
            "n_surfels_pred",
            dists.pred_areas.len() as f64,
            &sd["n_surfels_pred"],
            false,
            0.0,
        );

        // The free functions agree with the struct.
        let nsd_fn = clopa_metrics::nsd(&c.pred, &c.reference, c.shape, c.spacing, c.tol).unwrap();
        check("nsd()", nsd_fn, &sd["nsd"], false, 1e-9);
        let hd_fn = clopa_metrics::hd(&c.pred, &c.reference, c.shape, c.spacing, 95.0).unwrap();
        check("hd()", hd_fn, &sd["hd95"], true, 1e-6);

        let iv = &c.meta["is_validate_convention"];
        let (d, n) =
            is_validate::dice_nsd(&c.pred, &c.reference, c.shape, c.spacing, c.tol).unwrap();
        check("is_validate.dice", d, &iv["dice"], false, 1e-9);
        check("is_validate.nsd", n, &iv["nsd"], false, 1e-9);

        // MONAI with use_subvoxels=True reproduces DeepMind's NSD to float32 precision.
        check(
            "monai.nsd_subvoxels",
            nsd,
            &c.meta["monai"]["nsd_subvoxels"],
            false,
            1e-6,
        );
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn curves_match_is_validate_at_every_threshold() {
    let fx = json("curves.json");
    let n_int = fx["n_interactions"].as_u64().unwrap() as usize;
    let curves: Vec<Vec<f64>> = fx["curves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["dice"].as_array().unwrap().iter().map(num).collect())
        .collect();
    assert_eq!(curves.len(), 9);
    assert!(curves.iter().all(|c| c.len() == n_int));

    // Thresholds from the nnU-Net reference Dice.
    let reference: Vec<f64> = fx["nnunet_reference_dice"]
        .as_array()
        .unwrap()
        .iter()
        .map(num)
        .collect();
    let (mu, sigma) = threshold::norm_fit(&reference).unwrap();
    assert!((mu - num(&fx["norm_fit"]["mu"])).abs() < 1e-12);
    assert!((sigma - num(&fx["norm_fit"]["sigma_mle"])).abs() < 1e-12);

    let by = fx["by_threshold"].as_object().unwrap();
    assert_eq!(by.len(), 3);
    for (name, t) in by {
        let thr = num(&t["threshold"]);
        let derived = if name.starts_with("gaussian_bound_0") {
            threshold::gaussian(&reference, 0.0).unwrap()
        } else if name.starts_with("gaussian_bound_1") {
            threshold::gaussian(&reference, 1.0).unwrap()
        } else if name.starts_with("quantile_0.5") {
            threshold::quantile(&reference, 0.5).unwrap()
        } else {
            panic!("unknown threshold {name}")
        };
        assert!((derived - thr).abs() < 1e-12, "{name}: {derived} vs {thr}");

        let mut sums = Vec::new();
        for (k, (c, want)) in curves
            .iter()
            .zip(t["per_curve"].as_array().unwrap())
            .enumerate()
        {
            let s = curves::summarize(c, thr).unwrap();
            let ctx = format!("{name} curve {k}");
            assert!(
                (s.nauc - num(&want["nAUC"])).abs() < 1e-12,
                "{ctx} nAUC {}",
                s.nauc
            );
            assert_eq!(s.noi as f64, num(&want["NoI"]), "{ctx} NoI");
            assert!((s.nnoi - num(&want["nNoI"])).abs() < 1e-15, "{ctx} nNoI");
            assert_eq!(s.failed, want["failed"].as_bool().unwrap(), "{ctx} failed");
            assert_eq!(s.peak, num(&want["peak"]), "{ctx} peak");
            assert_eq!(s.init, num(&want["init"]), "{ctx} init");
            assert_eq!(s.last, num(&want["final"]), "{ctx} final");
            assert!(
                (100.0 * s.nnoi - num(&want["nNoI_percent"])).abs() < 1e-12,
                "{ctx} nNoI %"
            );
            sums.push(s);
        }
        let a = curves::aggregate(&sums, n_int).unwrap();
        let w = &t["aggregate"];
        let near = |got: f64, key: &str| {
            assert!(
                (got - num(&w[key])).abs() < 1e-12,
                "{name} {key}: {got} vs {}",
                w[key]
            );
        };
        near(a.mean_noi, "mean_NoI");
        near(a.median_noi, "median_NoI");
        near(a.normalised_mean_noi, "normalised_mean_NoI");
        near(a.normalised_median_noi, "normalised_median_NoI");
        near(a.nnoi_pct, "nNoI_percent_mean");
        near(a.nof_count as f64, "NoF_count");
        near(a.nof_pct, "NoF_percent");
        near(a.mean_nauc, "mean_nAUC");
        near(a.median_nauc, "median_nAUC");
    }
}
