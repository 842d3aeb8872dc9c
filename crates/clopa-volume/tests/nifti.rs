//! NIfTI round trips, nibabel-written fixtures and error messages.

#![allow(clippy::unwrap_used)] // a failing unwrap is a failing test

use std::path::{Path, PathBuf};

use clopa_volume::{NiftiWritable, Volume, VolumeError, read_image, read_labels, write_nifti};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn rotated_affine() -> [[f64; 4]; 4] {
    let (s, c) = 0.3f64.sin_cos();
    [
        [0.8 * c, -0.8 * s, 0.0, -12.5],
        [0.8 * s, 0.8 * c, 0.1, 30.25],
        [0.0, 0.0, 2.5, 7.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

fn f32_stored(a: [[f64; 4]; 4]) -> [[f64; 4]; 4] {
    a.map(|r| r.map(|v| v as f32 as f64))
}

fn round_trip<T>(name: &str, data: Vec<T>) -> (PathBuf, tempfile::TempDir, Volume<T>)
where
    T: NiftiWritable,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let vol = Volume::new([5, 4, 3], [0.8, 0.8, 2.5], rotated_affine(), data).unwrap();
    write_nifti(&path, &vol).unwrap();
    (path, dir, vol)
}

fn check_geometry<T, U>(read: &Volume<T>, written: &Volume<U>) {
    assert_eq!(read.shape, written.shape);
    // pixdim and srow are f32 in the header: what comes back is exactly the f32 of what went in.
    assert_eq!(read.spacing, written.spacing.map(|v| v as f32 as f64));
    assert_eq!(read.affine, f32_stored(written.affine));
}

#[test]
fn round_trip_each_dtype_and_extension() {
    for ext in ["nii", "nii.gz"] {
        let f: Vec<f32> = (0..60).map(|i| i as f32 * 0.37 - 9.5).collect();
        let (p, _d, w) = round_trip(&format!("f.{ext}"), f.clone());
        let r = read_image(&p, 0).unwrap();
        assert_eq!(r.data, f);
        check_geometry(&r, &w);

        let u8s: Vec<u8> = (0..60).map(|i| (i * 7 % 256) as u8).collect();
        let (p, _d, w) = round_trip(&format!("u8.{ext}"), u8s.clone());
        let r = read_labels(&p).unwrap();
        assert_eq!(r.data, u8s.iter().map(|&v| v as u16).collect::<Vec<_>>());
        check_geometry(&r, &w);

        let u16s: Vec<u16> = (0..60).map(|i| i * 1000 + 5).collect();
        let (p, _d, w) = round_trip(&format!("u16.{ext}"), u16s.clone());
        assert_eq!(read_labels(&p).unwrap().data, u16s);
        let r = read_image(&p, 0).unwrap();
        assert_eq!(r.data, u16s.iter().map(|&v| v as f32).collect::<Vec<_>>());
        check_geometry(&r, &w);

        let i16s: Vec<i16> = (0..60).map(|i| (i as i16 - 30) * 97).collect();
        let (p, _d, w) = round_trip(&format!("i16.{ext}"), i16s.clone());
        let r = read_image(&p, 0).unwrap();
        assert_eq!(r.data, i16s.iter().map(|&v| v as f32).collect::<Vec<_>>());
        check_geometry(&r, &w);
        // Negative values are not labels.
        let err = read_labels(&p).unwrap_err();
        assert!(matches!(err, VolumeError::BadLabelValue { .. }), "{err}");
        assert!(err.to_string().contains("i16."), "{err}");
    }
}

#[test]
fn write_replaces_atomically_and_leaves_no_temp_files() {
    let (p, dir, _) = round_trip("a.nii.gz", vec![1u8; 60]);
    let v = Volume::from_shape([5, 4, 3], [1.0; 3], vec![2u8; 60]).unwrap();
    write_nifti(&p, &v).unwrap();
    assert_eq!(read_labels(&p).unwrap().data, vec![2u16; 60]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

fn check_nibabel(name: &str, vol: &Volume<f32>, channel: Option<usize>, affine_tol: f64) {
    let all = expected();
    let e = &all[name];
    let shape: Vec<usize> = e["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(&shape[..3], &vol.shape, "{name}");
    let zooms: Vec<f64> = e["zooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // Header values are float32. serde_json's default float parser may be 1 ulp off in f64, so
    // exact comparisons go through f32 (and our value must itself be an exact f32).
    for (got, want) in vol.spacing.iter().zip(&zooms) {
        assert_eq!(*got, *want as f32 as f64, "{name} spacing");
    }
    for r in 0..4 {
        for c in 0..4 {
            let want = e["affine"][r][c].as_f64().unwrap();
            let got = vol.affine[r][c];
            if affine_tol == 0.0 {
                assert_eq!(got, want as f32 as f64, "{name} affine[{r}][{c}]");
            } else {
                assert!(
                    (got - want).abs() <= affine_tol,
                    "{name} affine[{r}][{c}]: {got} vs {want}"
                );
            }
        }
    }
    let data = match channel {
        Some(c) => &e["channels"][c],
        None => &e["data"],
    };
    let want: Vec<f64> = data
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(want.len(), vol.len());
    for (i, (&got, &w)) in vol.data.iter().zip(&want).enumerate() {
        // nibabel computes in float64; our voxels are f32 of the same value.
        assert_eq!(got, w as f32, "{name} voxel {:?}", vol.coords(i));
    }
    if channel.is_none() {
        let sum: f64 = vol.data.iter().map(|&v| v as f64).sum();
        assert!(
            (sum - e["sum"].as_f64().unwrap()).abs() < 1e-6,
            "{name} sum {sum}"
        );
    }
}

#[test]
fn reads_nibabel_files_identically() {
    let img = read_image(&fixture("image_i16.nii.gz"), 0).unwrap();
    check_nibabel("image_i16.nii.gz", &img, None, 0.0);
    // Spot voxels, as a reader of the fixture would look them up by hand.
    assert_eq!(
        img.data[img.index(6, 5, 4)],
        expected()["image_i16.nii.gz"]["data"][209]
            .as_f64()
            .unwrap() as f32
    );

    check_nibabel(
        "scaled_i16.nii",
        &read_image(&fixture("scaled_i16.nii"), 0).unwrap(),
        None,
        0.0,
    );
    // The qform is a float32 quaternion; nibabel and the nifti crate rebuild it to ~1e-7.
    check_nibabel(
        "qform_only.nii.gz",
        &read_image(&fixture("qform_only.nii.gz"), 0).unwrap(),
        None,
        1e-6,
    );
    for c in 0..2 {
        check_nibabel(
            "image_4d.nii",
            &read_image(&fixture("image_4d.nii"), c).unwrap(),
            Some(c),
            0.0,
        );
    }

    for name in ["labels_u8.nii.gz", "labels_f32.nii.gz"] {
        let lab = read_labels(&fixture(name)).unwrap();
        check_nibabel(name, &lab.map(|&v| v as f32), None, 0.0);
    }
}

#[test]
fn reads_big_endian_files_as_nibabel_does() {
    // header fields, scaling and voxels all byte-swapped; the same values as the little-endian
    // files they were made from
    let scaled = read_image(&fixture("scaled_be_i16.nii.gz"), 0).unwrap();
    check_nibabel("scaled_be_i16.nii.gz", &scaled, None, 0.0);
    assert_eq!(
        scaled.data,
        read_image(&fixture("scaled_i16.nii"), 0).unwrap().data
    );
    let f = read_image(&fixture("image_be_f32.nii"), 0).unwrap();
    check_nibabel("image_be_f32.nii", &f, None, 0.0);
    assert_eq!(
        f.data,
        read_image(&fixture("image_4d.nii"), 1).unwrap().data
    );
}

#[test]
fn channel_out_of_range_says_how_many() {
    let err = read_image(&fixture("image_4d.nii"), 2).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("image_4d.nii") && msg.contains("2 channel"),
        "{msg}"
    );
    let err = read_image(&fixture("image_i16.nii.gz"), 1).unwrap_err();
    assert!(err.to_string().contains("1 channel"), "{err}");
}

#[test]
fn missing_file_is_named() {
    let err = read_image(Path::new("/nonexistent/zz.nii.gz"), 0).unwrap_err();
    assert!(matches!(err, VolumeError::NotFound { .. }));
    assert!(err.to_string().contains("/nonexistent/zz.nii.gz"), "{err}");
}

#[test]
fn truncated_gzip_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("image_i16.nii.gz")).unwrap();
    let p = dir.path().join("cut.nii.gz");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_image(&p, 0).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("cut.nii.gz") && msg.contains("truncated"),
        "{msg}"
    );

    // An empty file (an interrupted copy), compressed name or not.
    for name in ["empty.nii.gz", "empty.nii"] {
        let p = dir.path().join(name);
        std::fs::write(&p, b"").unwrap();
        let msg = read_image(&p, 0).unwrap_err().to_string();
        assert!(msg.contains(name) && msg.contains("empty"), "{msg}");
    }

    // Garbage that is not gzip at all.
    let p = dir.path().join("junk.nii.gz");
    std::fs::write(&p, b"this is not a nifti file").unwrap();
    let err = read_image(&p, 0).unwrap_err();
    assert!(err.to_string().contains("junk.nii.gz"), "{err}");

    // An uncompressed file cut inside the voxel data.
    let bytes = std::fs::read(fixture("scaled_i16.nii")).unwrap();
    let p = dir.path().join("cut.nii");
    std::fs::write(&p, &bytes[..500]).unwrap();
    let err = read_image(&p, 0).unwrap_err();
    assert!(
        err.to_string().contains("cut.nii") && err.to_string().contains("truncated"),
        "{err}"
    );

    // A header cut short.
    let p = dir.path().join("hdr.nii");
    std::fs::write(&p, &bytes[..100]).unwrap();
    let err = read_image(&p, 0).unwrap_err();
    assert!(err.to_string().contains("hdr.nii"), "{err}");
}

/// Patches header fields of an uncompressed little-endian NIfTI-1 file.
fn patched(name: &str, patch: impl Fn(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("scaled_i16.nii")).unwrap();
    patch(&mut bytes);
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    (dir, p)
}

#[test]
fn unsupported_datatype_and_5d_are_refused() {
    // datatype at byte 70: 128 = RGB24 (bitpix 24 at byte 72).
    let (_d, p) = patched("rgb.nii", |b| {
        b[70..72].copy_from_slice(&128i16.to_le_bytes());
        b[72..74].copy_from_slice(&24i16.to_le_bytes());
        b.resize(352 + 210 * 3, 0);
    });
    let err = read_image(&p, 0).unwrap_err();
    assert!(
        matches!(err, VolumeError::UnsupportedDatatype { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("rgb.nii"), "{err}");

    // dim at byte 40: [5, 7, 6, 5, 1, 1, ...] -> a 5D file whose extra axes are singletons is fine
    // (it's still 210 voxels), [5, 7, 3, 5, 1, 2] is a real 5D image.
    let (_d, p) = patched("five.nii", |b| {
        for (k, v) in [5i16, 7, 3, 5, 1, 2].iter().enumerate() {
            b[40 + 2 * k..42 + 2 * k].copy_from_slice(&v.to_le_bytes());
        }
    });
    let err = read_image(&p, 0).unwrap_err();
    assert!(
        matches!(err, VolumeError::TooManyDimensions { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("five.nii"), "{err}");
}

#[test]
fn bad_header_fields_are_named_not_taken_for_truncation() {
    // Complex64 (code 32) with the data of the original int16 file: the data size computed from
    // the datatype would call the file truncated; the datatype is what is wrong.
    let (_d, p) = patched("complex.nii", |b| {
        b[70..72].copy_from_slice(&32i16.to_le_bytes());
        b[72..74].copy_from_slice(&64i16.to_le_bytes());
    });
    let err = read_image(&p, 0).unwrap_err().to_string();
    assert!(
        err.contains("complex.nii") && err.contains("Complex64") && !err.contains("truncated"),
        "{err}"
    );
    // A negative dimension.
    let (_d, p) = patched("negdim.nii", |b| {
        b[42..44].copy_from_slice(&(-7i16).to_le_bytes())
    });
    let err = read_image(&p, 0).unwrap_err().to_string();
    assert!(
        err.contains("negdim.nii") && err.contains("dim[1] = -7"),
        "{err}"
    );
    // dim[0] = 9 (neither 1..7 nor a byte-swapped 1..7).
    let (_d, p) = patched("ndim9.nii", |b| {
        b[40..42].copy_from_slice(&9i16.to_le_bytes())
    });
    let err = read_image(&p, 0).unwrap_err().to_string();
    assert!(
        err.contains("ndim9.nii") && err.contains("not 1 to 7"),
        "{err}"
    );
    // vox_offset (byte 108, float32) far past the end of the file.
    let (_d, p) = patched("offset.nii", |b| {
        b[108..112].copy_from_slice(&1e9f32.to_le_bytes())
    });
    let err = read_image(&p, 0).unwrap_err().to_string();
    assert!(
        err.contains("offset.nii") && err.contains("vox_offset"),
        "{err}"
    );
}

#[test]
fn nan_is_passed_through_by_read_image_and_refused_by_read_labels() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nan.nii");
    let mut data = vec![1.0f32; 8];
    data[5] = f32::NAN;
    write_nifti(&p, &Volume::from_shape([2, 2, 2], [1.0; 3], data).unwrap()).unwrap();
    let img = read_image(&p, 0).unwrap();
    assert!(img.data[5].is_nan());
    let err = read_labels(&p).unwrap_err();
    assert!(err.to_string().contains("[1, 0, 1]"), "{err}");

    let p = dir.path().join("frac.nii.gz");
    write_nifti(
        &p,
        &Volume::from_shape([1, 1, 2], [1.0; 3], vec![1.0f32, 1.5]).unwrap(),
    )
    .unwrap();
    let err = read_labels(&p).unwrap_err();
    assert!(
        err.to_string().contains("1.5") && err.to_string().contains("frac.nii.gz"),
        "{err}"
    );
}

#[test]
fn failed_write_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    // A singular affine is refused before anything is written.
    let mut v = Volume::from_shape([2, 2, 2], [1.0; 3], vec![0u8; 8]).unwrap();
    v.affine[2][2] = 0.0;
    let err = write_nifti(&dir.path().join("bad.nii.gz"), &v).unwrap_err();
    assert!(err.to_string().contains("bad.nii.gz"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

fn gzip(bytes: &[u8], level: flate2::Compression) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), level);
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A gzip member that still inflates but to other bytes (here: a stored block with a changed
/// voxel byte, or a wrong CRC) must be an error: the data are wrong, and only the trailer says so.
#[test]
fn a_gzip_stream_with_a_wrong_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nii = std::fs::read(fixture("scaled_i16.nii")).unwrap();
    let good = gzip(&nii, flate2::Compression::none());
    let p = dir.path().join("good.nii.gz");
    std::fs::write(&p, &good).unwrap();
    let reference = read_image(&fixture("scaled_i16.nii"), 0).unwrap();
    assert_eq!(read_image(&p, 0).unwrap().data, reference.data);

    // A voxel byte changed inside the stored block (header 10 + block header 5 + the voxels
    // from byte 352 of the file on).
    let mut bad = good.clone();
    bad[10 + 5 + 400] ^= 0x5a;
    let p = dir.path().join("flipped.nii.gz");
    std::fs::write(&p, &bad).unwrap();
    let err = read_image(&p, 0).unwrap_err().to_string();
    assert!(
        err.contains("flipped.nii.gz") && err.contains("gzip"),
        "{err}"
    );

    // The CRC in the trailer zeroed.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 8..n - 4].copy_from_slice(&[0; 4]);
    let p = dir.path().join("crc.nii.gz");
    std::fs::write(&p, &bad).unwrap();
    let err = read_image(&p, 0).unwrap_err().to_string();
    assert!(err.contains("crc.nii.gz") && err.contains("gzip"), "{err}");
    let err = read_labels(&p).unwrap_err().to_string();
    assert!(err.contains("crc.nii.gz"), "{err}");
}

/// The voxels start at `vox_offset`, which may leave padding after the header (other writers
/// align to 16 bytes or more, or keep room for extensions).
#[test]
fn voxels_are_read_from_vox_offset() {
    let dir = tempfile::tempdir().unwrap();
    let nii = std::fs::read(fixture("scaled_i16.nii")).unwrap();
    let reference = read_image(&fixture("scaled_i16.nii"), 0).unwrap();
    let mut padded = nii[..352].to_vec();
    padded[108..112].copy_from_slice(&400f32.to_le_bytes());
    padded.resize(400, 0xee);
    padded.extend_from_slice(&nii[352..]);
    for (name, bytes) in [
        ("pad.nii", padded.clone()),
        ("pad.nii.gz", gzip(&padded, flate2::Compression::default())),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        let v = read_image(&p, 0).unwrap();
        assert_eq!(v.data, reference.data, "{name}");
    }

    // 0, which some writers leave, means "right after the header".
    let mut b = nii.clone();
    b[108..112].copy_from_slice(&0f32.to_le_bytes());
    let p = dir.path().join("zero.nii");
    std::fs::write(&p, &b).unwrap();
    assert_eq!(read_image(&p, 0).unwrap().data, reference.data);

    // Not a byte position after the header: refused, in either form.
    for (name, off) in [
        ("low.nii.gz", 100.0f32),
        ("frac.nii.gz", 352.5),
        ("nan.nii.gz", f32::NAN),
    ] {
        let mut b = nii.clone();
        b[108..112].copy_from_slice(&off.to_le_bytes());
        let p = dir.path().join(name);
        std::fs::write(&p, gzip(&b, flate2::Compression::default())).unwrap();
        let err = read_image(&p, 0).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains("vox_offset"), "{err}");
    }
    // Past the end of a compressed file (this used to pass unnoticed for .gz).
    let mut b = nii.clone();
    b[108..112].copy_from_slice(&1e9f32.to_le_bytes());
    let p = dir.path().join("far.nii.gz");
    std::fs::write(&p, gzip(&b, flate2::Compression::default())).unwrap();
    let err = read_image(&p, 0).unwrap_err().to_string();
    assert!(
        err.contains("far.nii.gz") && err.contains("past the end"),
        "{err}"
    );
}

#[test]
fn spacing_that_is_zero_or_not_finite_is_refused() {
    // pixdim[1..4] at bytes 80..92 (float32)
    for (name, v) in [
        ("zero.nii", 0.0f32),
        ("nan.nii", f32::NAN),
        ("inf.nii", f32::INFINITY),
    ] {
        let (_d, p) = patched(name, |b| b[84..88].copy_from_slice(&v.to_le_bytes()));
        let err = read_image(&p, 0).unwrap_err().to_string();
        assert!(
            err.contains(name) && err.contains("pixdim[2]") && err.contains("spacing"),
            "{err}"
        );
    }
    // a negative one is a flip: its magnitude is the spacing (nibabel's zooms)
    let reference = read_image(&fixture("scaled_i16.nii"), 0).unwrap();
    let (_d, p) = patched("neg.nii", |b| {
        let v = f32::from_le_bytes([b[84], b[85], b[86], b[87]]);
        b[84..88].copy_from_slice(&(-v).to_le_bytes());
    });
    match read_image(&p, 0) {
        Ok(v) => assert_eq!(v.spacing, reference.spacing),
        // a file with only a qform refuses negative pixdims, as nibabel does
        Err(e) => assert!(e.to_string().contains("with a qform"), "{e}"),
    }
}

/// Gzip allows several members, and zero bytes after the last are padding (Python's gzip reads
/// both); other trailing bytes are an error.
#[test]
fn gzip_members_and_zero_padding() {
    let dir = tempfile::tempdir().unwrap();
    let nii = std::fs::read(fixture("scaled_i16.nii")).unwrap();
    let reference = read_image(&fixture("scaled_i16.nii"), 0).unwrap();
    let mut two = gzip(&nii[..500], flate2::Compression::default());
    two.extend(gzip(&nii[500..], flate2::Compression::default()));
    let mut padded = gzip(&nii, flate2::Compression::default());
    padded.extend([0u8; 512]);
    for (name, bytes) in [("two.nii.gz", two), ("padded.nii.gz", padded)] {
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(read_image(&p, 0).unwrap().data, reference.data, "{name}");
    }
    let mut junk = gzip(&nii, flate2::Compression::default());
    junk.extend(b"junk");
    let p = dir.path().join("junk.nii.gz");
    std::fs::write(&p, &junk).unwrap();
    let err = read_image(&p, 0).unwrap_err().to_string();
    assert!(err.contains("junk.nii.gz") && err.contains("gzip"), "{err}");
}

#[test]
fn compression_must_match_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let nii = std::fs::read(fixture("scaled_i16.nii")).unwrap();
    let p = dir.path().join("plain.nii.gz");
    std::fs::write(&p, &nii).unwrap();
    let err = read_image(&p, 0).unwrap_err().to_string();
    assert!(
        err.contains("plain.nii.gz") && err.contains("not gzip"),
        "{err}"
    );
    let p = dir.path().join("packed.nii");
    std::fs::write(&p, gzip(&nii, flate2::Compression::default())).unwrap();
    let err = read_image(&p, 0).unwrap_err().to_string();
    assert!(
        err.contains("packed.nii") && err.contains("gzip-compressed"),
        "{err}"
    );
}

/// A label file with several volumes: reading the first alone would ignore the others' labels.
#[test]
fn a_4d_label_file_is_refused() {
    let err = read_labels(&fixture("image_4d.nii"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("image_4d.nii") && err.contains("dim[4]"),
        "{err}"
    );
    // as an image, each channel reads
    assert!(read_image(&fixture("image_4d.nii"), 1).is_ok());
}
