"""NSD speed comparison: DeepMind surface-distance 0.1 vs clopa-metrics.

Generates a deterministic 512x512x100 mask pair at spacing (0.8, 0.8, 2.5) mm (a large smooth
"organ" and a shifted, perturbed copy), writes them as raw uint8 for the Rust side, and times
surface-distance's `compute_surface_distances` + `compute_surface_dice_at_tolerance`.

    python3 -m venv /tmp/sdvenv && /tmp/sdvenv/bin/pip install surface-distance numpy==1.26.4 scipy
    /usr/bin/time -v /tmp/sdvenv/bin/python scripts/bench_nsd.py --out /tmp/bench_nsd
    cargo build --release -p clopa-metrics --example bench_nsd
    /usr/bin/time -v target/release/examples/bench_nsd /tmp/bench_nsd

Both print the NSD so the values can be compared (they must agree to ~1e-12). surface-distance is
single-threaded (numpy/scipy: `ndimage.correlate` and `distance_transform_edt` run on one core);
the Rust side uses rayon's default pool (all cores; set RAYON_NUM_THREADS=1 for one).
"""
import argparse
import json
import os
import time

import numpy as np

SHAPE = (512, 512, 100)
SPACING = (0.8, 0.8, 2.5)
TOL = 2.0


def masks():
    rng = np.random.default_rng(20240601)
    x, y, z = np.meshgrid(
        np.arange(SHAPE[0], dtype=np.float64),
        np.arange(SHAPE[1], dtype=np.float64),
        np.arange(SHAPE[2], dtype=np.float64),
        indexing="ij",
    )
    # mm coordinates
    xm, ym, zm = x * SPACING[0], y * SPACING[1], z * SPACING[2]
    c = np.array([256 * 0.8, 250 * 0.8, 50 * 2.5])
    r = np.array([150.0, 120.0, 95.0])
    ref = ((xm - c[0]) / r[0]) ** 2 + ((ym - c[1]) / r[1]) ** 2 + ((zm - c[2]) / r[2]) ** 2 <= 1.0
    # prediction: shifted, slightly smaller, with a smooth low-frequency boundary perturbation
    c2 = c + np.array([3.1, -2.3, 2.0])
    r2 = r * np.array([0.97, 1.02, 0.95])
    phase = rng.uniform(0, 2 * np.pi, size=3)
    wobble = 0.04 * np.sin(xm / 23.0 + phase[0]) * np.cos(ym / 17.0 + phase[1]) + 0.03 * np.sin(zm / 11.0 + phase[2])
    pred = ((xm - c2[0]) / r2[0]) ** 2 + ((ym - c2[1]) / r2[1]) ** 2 + ((zm - c2[2]) / r2[2]) ** 2 <= 1.0 + wobble
    return pred, ref


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/bench_nsd")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    pred, ref = masks()
    pred.astype(np.uint8).tofile(os.path.join(args.out, "pred.u8"))
    ref.astype(np.uint8).tofile(os.path.join(args.out, "ref.u8"))
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump({"shape": SHAPE, "spacing": SPACING, "tolerance_mm": TOL}, f)

    import surface_distance as sd

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        d = sd.compute_surface_distances(ref, pred, SPACING)
        nsd = sd.compute_surface_dice_at_tolerance(d, TOL)
        times.append(time.perf_counter() - t0)
    print(json.dumps({
        "impl": "surface-distance 0.1",
        "voxels_pred": int(pred.sum()),
        "voxels_ref": int(ref.sum()),
        "n_surfels_ref": int(len(d["surfel_areas_gt"])),
        "n_surfels_pred": int(len(d["surfel_areas_pred"])),
        "nsd": repr(float(nsd)),
        "seconds": times,
        "best_s": min(times),
        "median_s": float(np.median(times)),
    }))


if __name__ == "__main__":
    main()
