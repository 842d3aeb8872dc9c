#!/usr/bin/env python3
"""Writes the small nibabel-made NIfTI fixtures that clopa-volume's tests read back.

Usage (throwaway venv, not needed to build or test clopa):
    python3 -m venv /tmp/venv-nib && /tmp/venv-nib/bin/pip install nibabel numpy
    /tmp/venv-nib/bin/python scripts/make_nifti_fixture.py crates/clopa-volume/tests/fixtures

Files: image_i16.nii.gz (7x6x5 int16, rotated affine, sform_code=qform_code=1, anisotropic spacing),
labels_u8.nii.gz (uint8 labels 0..2), image_4d.nii (7x6x5x2 float32, two channels),
scaled_i16.nii (int16 with scl_slope 0.5, scl_inter -10), qform_only.nii.gz (sform_code 0, qform_code 1),
labels_f32.nii.gz (float32 label values), scaled_be_i16.nii.gz and image_be_f32.nii (big-endian header
and voxels: the scaled int16 image, and the 4-D file's second channel), and expected.json with what nibabel reports for each:
shape, zooms, affine, sum, and every voxel of get_fdata() flattened in C order (z fastest).
"""
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def rotated_affine(spacing, angle_deg, offset):
    a = np.deg2rad(angle_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a / 3), -np.sin(a / 3)], [0, np.sin(a / 3), np.cos(a / 3)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag(spacing)
    aff[:3, 3] = offset
    return aff


def save(img, path, sform_code=1, qform_code=1, affine=None):
    aff = img.affine if affine is None else affine
    img.header.set_sform(aff, code=sform_code)
    img.header.set_qform(aff, code=qform_code)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def describe(path):
    img = nib.load(str(path))
    data = np.asanyarray(img.get_fdata(dtype=np.float64))
    out = {
        "shape": list(img.shape),
        "zooms": [float(z) for z in img.header.get_zooms()],
        "affine": img.affine.tolist(),
        "sform_code": int(img.header["sform_code"]),
        "qform_code": int(img.header["qform_code"]),
        "datatype": str(img.get_data_dtype()),
        "sum": float(data.sum()),
    }
    if data.ndim == 4:
        out["channels"] = [data[..., c].ravel(order="C").tolist() for c in range(data.shape[3])]
    else:
        out["data"] = data.ravel(order="C").tolist()
    return out


def main(outdir):
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240531)
    shape = (7, 6, 5)
    spacing = (0.7, 0.9, 2.5)
    aff = rotated_affine(spacing, 10.0, (-12.5, 30.25, 7.0))

    img = rng.integers(-1000, 1500, size=shape).astype(np.int16)
    i16 = nib.Nifti1Image(img, aff)
    i16.header.set_zooms(spacing)
    save(i16, outdir / "image_i16.nii.gz")

    lab = np.zeros(shape, dtype=np.uint8)
    lab[2:5, 1:4, 1:4] = 1
    lab[3, 2, 2] = 2
    lab[6, 5, 4] = 2
    save(nib.Nifti1Image(lab, aff), outdir / "labels_u8.nii.gz")

    four = rng.normal(size=shape + (2,)).astype(np.float32)
    four[..., 1] += 100.0
    save(nib.Nifti1Image(four, aff), outdir / "image_4d.nii")

    scaled = nib.Nifti1Image(img, aff)
    scaled.header.set_slope_inter(0.5, -10.0)
    save(scaled, outdir / "scaled_i16.nii")

    save(nib.Nifti1Image(img, aff), outdir / "qform_only.nii.gz", sform_code=0, qform_code=1)

    save(nib.Nifti1Image(lab.astype(np.float32), aff), outdir / "labels_f32.nii.gz")

    # big-endian files (header and voxels), as written on big-endian machines or by tools that
    # keep an input's byte order: the scaled int16 one gzipped, a float32 one plain
    be = nib.Nifti1Header(endianness=">")
    scaled_be = nib.Nifti1Image(img, aff, header=be)
    scaled_be.header.set_data_dtype(np.int16)  # (a given header's dtype wins over the array's)
    scaled_be.header.set_slope_inter(0.5, -10.0)
    save(scaled_be, outdir / "scaled_be_i16.nii.gz")
    save(nib.Nifti1Image(four[..., 1], aff, header=nib.Nifti1Header(endianness=">")),
         outdir / "image_be_f32.nii")

    expected = {
        name: describe(outdir / name)
        for name in ["image_i16.nii.gz", "labels_u8.nii.gz", "image_4d.nii", "scaled_i16.nii",
                     "qform_only.nii.gz", "labels_f32.nii.gz", "scaled_be_i16.nii.gz",
                     "image_be_f32.nii"]
    }
    expected["_generator"] = f"scripts/make_nifti_fixture.py, nibabel {nib.__version__}, numpy {np.__version__}"
    (outdir / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "crates/clopa-volume/tests/fixtures")
