//! NIfTI-1 reading and writing on top of the `nifti` crate.
//!
//! Reading takes the header parser and the volume type from the crate but not its file reader:
//! that one stops inflating a `.nii.gz` after the voxel bytes it needs, so the gzip CRC is never
//! checked and a damaged member gives wrong voxels without an error, and it reads the voxels right
//! after the extensions instead of at `vox_offset`, so a file with padding reads shifted. Here the
//! whole file is read (and gunzipped to its end), the header checked against its length, and the
//! voxels taken from `vox_offset`.
//!
//! The crate hands out arrays in the file's Fortran order (x fastest); clopa keeps volumes with z
//! fastest, so every read ends with one cache-blocked transpose. Writing needs no copy: the
//! writer accepts an (x, y, z)-shaped array in any memory layout.

use std::io::Read;
use std::path::Path;

use nalgebra::Matrix4;
use ndarray::ArrayView3;
use nifti::{
    InMemNiftiVolume, IntoNdArray, NiftiError, NiftiHeader, NiftiType, XForm, writer::WriterOptions,
};

use crate::{Volume, VolumeError, diag_affine};

/// Element types [`write_nifti`] can store: f32, u8, u16 and i16.
pub trait NiftiWritable: Copy + private::Sealed {
    #[doc(hidden)]
    fn write_view(opts: &WriterOptions<'_>, view: &ArrayView3<'_, Self>) -> Result<(), NiftiError>;
}

mod private {
    pub trait Sealed {}
}

macro_rules! writable {
    ($($t:ty),*) => {$(
        impl private::Sealed for $t {}
        impl NiftiWritable for $t {
            fn write_view(opts: &WriterOptions<'_>, view: &ArrayView3<'_, Self>) -> Result<(), NiftiError> {
                opts.write_nifti(view)
            }
        }
    )*};
}
writable!(f32, u8, u16, i16);

/// What a file holds after its header has been checked: one channel of raw bytes (x fastest).
struct Loaded {
    shape: [usize; 3],
    /// Volumes along `dim[4]` in the file (one of them is kept).
    channels: usize,
    spacing: [f64; 3],
    affine: [[f64; 4]; 4],
    volume: InMemNiftiVolume,
}

fn corrupt(path: &Path, err: NiftiError) -> VolumeError {
    let path = path.to_path_buf();
    match err {
        NiftiError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            VolumeError::Corrupt {
                path,
                detail: "the file is truncated (unexpected end of data)".into(),
            }
        }
        NiftiError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
            VolumeError::NotFound { path }
        }
        NiftiError::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            VolumeError::Io { path, source: e }
        }
        NiftiError::Io(e) => VolumeError::Corrupt {
            path,
            detail: format!("corrupt data: {e}"),
        },
        NiftiError::IncompatibleLength(got, expected) => VolumeError::Corrupt {
            path,
            detail: format!(
                "the file is truncated: {got} bytes of voxel data where the header needs {expected}"
            ),
        },
        NiftiError::InvalidFormat => VolumeError::Corrupt {
            path,
            detail: "bad header (no NIfTI-1 magic; NIfTI-2 and ANALYZE files are not supported)"
                .into(),
        },
        NiftiError::UnsupportedDataType(t) => VolumeError::UnsupportedDatatype {
            path,
            datatype: format!("{t:?}"),
        },
        other => VolumeError::Corrupt {
            path,
            detail: other.to_string(),
        },
    }
}

fn bad_header(path: &Path, detail: impl Into<String>) -> VolumeError {
    VolumeError::BadHeader {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// The voxel datatypes clopa reads (integers and reals; no complex, RGB or 128-bit types).
const SUPPORTED: [NiftiType; 10] = [
    NiftiType::Uint8,
    NiftiType::Int8,
    NiftiType::Uint16,
    NiftiType::Int16,
    NiftiType::Uint32,
    NiftiType::Int32,
    NiftiType::Uint64,
    NiftiType::Int64,
    NiftiType::Float32,
    NiftiType::Float64,
];

/// The file's bytes, gunzipped whole when the name ends in `.gz`. Reading a gzip stream to its
/// end is what checks its CRC and length trailer: the `nifti` crate stops after the voxel bytes
/// it needs, so a corrupted member decoded into wrong voxels without any error.
fn read_bytes(path: &Path) -> Result<Vec<u8>, VolumeError> {
    let raw = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => VolumeError::NotFound {
            path: path.to_path_buf(),
        },
        _ => VolumeError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    if raw.is_empty() {
        return Err(VolumeError::Corrupt {
            path: path.to_path_buf(),
            detail: "the file is empty (0 bytes)".into(),
        });
    }
    let gz_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let gz_data = raw.starts_with(&[0x1f, 0x8b]);
    if !gz_name {
        if gz_data {
            return Err(VolumeError::Corrupt {
                path: path.to_path_buf(),
                detail: "the data are gzip-compressed but the name does not end in .gz".into(),
            });
        }
        return Ok(raw);
    }
    if !gz_data {
        return Err(VolumeError::Corrupt {
            path: path.to_path_buf(),
            detail: "the name ends in .gz but the data are not gzip-compressed".into(),
        });
    }
    // The trailer's ISIZE (the data's length mod 2^32) sizes the buffer at once, so a 400 MB CT
    // does not pass through the doubling of a growing Vec. It is only a hint: a wrong one costs a
    // reallocation, and a reservation that fails is skipped rather than aborting.
    let isize = raw.len().checked_sub(4).map_or(0, |i| {
        u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]) as usize
    });
    let mut out = Vec::new();
    let _ = out.try_reserve_exact(if isize > 0 {
        isize
    } else {
        raw.len().saturating_mul(4)
    });
    let corrupt = |e: std::io::Error| VolumeError::Corrupt {
        path: path.to_path_buf(),
        detail: if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "the file is truncated (the gzip stream ends early)".into()
        } else {
            format!("corrupt gzip data ({e})")
        },
    };
    // Member after member (gzip allows several), each read to its end; zero bytes after the last
    // member are padding (as Python's gzip, and so nibabel, take them), anything else is an error.
    let mut rest: &[u8] = &raw;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let mut member = flate2::bufread::GzDecoder::new(rest);
        member.read_to_end(&mut out).map_err(corrupt)?;
        rest = member.into_inner();
    }
    Ok(out)
}

/// Checks the header against the file's `len` bytes (decompressed) before anything reads voxels:
/// `sizeof_hdr`, the magic of a single-file NIfTI-1, a `dim[0]` outside 1..7, zero or negative
/// dimensions, an unsupported datatype (both would otherwise look like a "truncated" file once
/// the data size is computed from them) and a `vox_offset` that is not a byte position inside the
/// file after the header. Returns where the voxel data start.
fn check_header(path: &Path, header: &NiftiHeader, len: usize) -> Result<usize, VolumeError> {
    let ndim = usize::from(header.dim[0]);
    if !(1..=7).contains(&ndim) {
        return Err(bad_header(
            path,
            format!(
                "dim[0] = {} (the number of dimensions) is not 1 to 7",
                header.dim[0] as i16
            ),
        ));
    }
    // after dim[0]: the reader picks the byte order by dim[0], so a bad one garbles sizeof_hdr
    if header.sizeof_hdr != 348 {
        return Err(bad_header(
            path,
            format!(
                "sizeof_hdr = {} (a NIfTI-1 header says 348; NIfTI-2 is not supported)",
                header.sizeof_hdr
            ),
        ));
    }
    if &header.magic == b"ni1\0" {
        return Err(bad_header(
            path,
            "the magic says a separate .hdr/.img pair; only single-file .nii(.gz) is supported",
        ));
    }
    for (i, &d) in header.dim.iter().enumerate().take(ndim + 1).skip(1) {
        // The field is an int16 on disk; the reader hands it over as u16.
        if d as i16 <= 0 {
            return Err(bad_header(
                path,
                format!("dim[{i}] = {} (dimensions must be positive)", d as i16),
            ));
        }
    }
    match header.data_type() {
        Ok(t) if SUPPORTED.contains(&t) => {}
        Ok(t) => {
            return Err(VolumeError::UnsupportedDatatype {
                path: path.to_path_buf(),
                datatype: format!("{t:?} (code {})", header.datatype),
            });
        }
        Err(_) => {
            return Err(VolumeError::UnsupportedDatatype {
                path: path.to_path_buf(),
                datatype: format!("code {}", header.datatype),
            });
        }
    }
    // 0 is what some writers leave in a single file: the voxels then follow the header and the
    // extender at 352 (nibabel accepts it too, and the old reader read from there)
    let off = if header.vox_offset == 0.0 {
        352.0
    } else {
        header.vox_offset
    };
    if !(off.is_finite() && off.fract() == 0.0 && off >= 352.0) {
        return Err(bad_header(
            path,
            format!(
                "vox_offset = {off} (a single-file NIfTI-1 stores its voxels at a whole byte \
                 position from 352 on)"
            ),
        ));
    }
    let off = off as usize;
    if off > len {
        return Err(bad_header(
            path,
            format!("vox_offset = {off} is past the end of the data ({len} bytes)"),
        ));
    }
    // Spatial spacing: non-zero and finite on the file's axes (the metrics divide by it; its
    // magnitude is used, as nibabel's zooms, so a negative pixdim is taken as a flip); an axis
    // the file does not have gets 1 mm below when its pixdim is unusable.
    for i in 1..=ndim.min(3) {
        let p = header.pixdim[i];
        if !(p.is_finite() && p != 0.0) {
            return Err(bad_header(
                path,
                format!("pixdim[{i}] = {p} (the voxel spacing must be non-zero and finite)"),
            ));
        }
    }
    Ok(off)
}

/// Reads the file, checks dimensions, datatype and scaling, and keeps the raw bytes of `channel`.
fn load(path: &Path, channel: usize) -> Result<Loaded, VolumeError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(VolumeError::Corrupt {
                path: path.to_path_buf(),
                detail: "not a regular file".into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VolumeError::NotFound {
                path: path.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(VolumeError::Io {
                path: path.to_path_buf(),
                source: e,
            });
        }
    }
    let bytes = read_bytes(path)?;
    // (the parser only reads fields; check_header judges them)
    let header = NiftiHeader::from_reader(&bytes[..]).map_err(|e| corrupt(path, e))?;
    let offset = check_header(path, &header, bytes.len())?;
    let ndim = header.dim[0] as usize;
    let dims = header.dim[1..=ndim].to_vec();
    // Trailing singleton axes (dim = [5, x, y, z, 1, 1]) carry no data, so they are harmless.
    if ndim > 4 && dims[4..].iter().any(|&d| d > 1) {
        return Err(VolumeError::TooManyDimensions {
            path: path.to_path_buf(),
            ndim,
            dims,
        });
    }
    let d = |i: usize| if i <= ndim { header.dim[i] as usize } else { 1 };
    let shape = [d(1), d(2), d(3)];
    let channels = d(4);
    if channel >= channels {
        return Err(VolumeError::ChannelOutOfRange {
            path: path.to_path_buf(),
            channel,
            channels,
        });
    }
    let datatype = header
        .data_type()
        .map_err(|_| VolumeError::UnsupportedDatatype {
            path: path.to_path_buf(),
            datatype: format!("code {}", header.datatype),
        })?;
    if !SUPPORTED.contains(&datatype) {
        return Err(VolumeError::UnsupportedDatatype {
            path: path.to_path_buf(),
            datatype: format!("{datatype:?}"),
        });
    }
    // nibabel's rule: a zero or non-finite slope means "no scaling" (the intercept is ignored too);
    // a valid slope with a non-finite intercept is an error.
    let (slope, inter) = if header.scl_slope == 0.0 || !header.scl_slope.is_finite() {
        (0.0, 0.0)
    } else if !header.scl_inter.is_finite() {
        return Err(bad_header(
            path,
            format!(
                "scl_slope {} with invalid scl_inter {}",
                header.scl_slope, header.scl_inter
            ),
        ));
    } else {
        (header.scl_slope, header.scl_inter)
    };
    // |pixdim| on the file's axes (checked above); on an axis it does not have (a 2-D file's
    // pixdim[3]) the same when usable, else 1 mm
    let sp = |i: usize| {
        let p = f64::from(header.pixdim[i]).abs();
        if i <= ndim || (p.is_finite() && p > 0.0) {
            p
        } else {
            1.0
        }
    };
    let spacing = [sp(1), sp(2), sp(3)];
    let affine = header_affine(path, &header, spacing)?;

    let n = shape[0] * shape[1] * shape[2];
    let per_channel = n * datatype.size_of();
    let have = bytes.len() - offset;
    if have < per_channel * channels {
        return Err(VolumeError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "the file is truncated: {have} bytes of voxel data where the header needs {}",
                per_channel * channels
            ),
        });
    }
    // Channels are the slowest axis on disk, so one channel is a contiguous byte range; the
    // file's buffer is cut down to it in place rather than copied.
    let start = offset + per_channel * channel;
    let mut raw = bytes;
    raw.truncate(start + per_channel);
    raw.drain(..start);
    let dim3 = [
        3,
        shape[0] as u16,
        shape[1] as u16,
        shape[2] as u16,
        1,
        1,
        1,
        1,
    ];
    let volume =
        InMemNiftiVolume::from_raw_fields(dim3, datatype, slope, inter, raw, header.endianness)
            .map_err(|e| corrupt(path, e))?;
    Ok(Loaded {
        shape,
        channels,
        spacing,
        affine,
        volume,
    })
}

/// sform if `sform_code > 0`, else qform if `qform_code > 0`, else `diag(spacing)`.
fn header_affine(
    path: &Path,
    header: &NiftiHeader,
    spacing: [f64; 3],
) -> Result<[[f64; 4]; 4], VolumeError> {
    let m: Matrix4<f64> = if header.sform_code > 0 {
        header.sform_affine::<f64>()
    } else if header.qform_code > 0 {
        // `qform_affine` panics on these; nibabel raises on negative pixdims and repairs qfac.
        if header.pixdim[1..4]
            .iter()
            .any(|&p| p < 0.0 || !p.is_finite())
        {
            return Err(bad_header(
                path,
                format!(
                    "negative or invalid pixdim {:?} with a qform",
                    &header.pixdim[1..4]
                ),
            ));
        }
        let mut h = header.clone();
        if h.pixdim[0] != 1.0 && h.pixdim[0] != -1.0 {
            h.pixdim[0] = 1.0;
        }
        h.qform_affine::<f64>()
    } else {
        return Ok(diag_affine(spacing));
    };
    let mut a = [[0.0; 4]; 4];
    for (r, row) in a.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = m[(r, c)];
        }
    }
    Ok(a)
}

/// Fortran order (x fastest) to clopa's order (z fastest), blocked over x so that both the reads
/// and the writes stay within a few cache lines.
fn fortran_to_c<T: Copy + Default>(src: &[T], shape: [usize; 3]) -> Vec<T> {
    let [nx, ny, nz] = shape;
    let mut dst = vec![T::default(); src.len()];
    const B: usize = 16;
    for y in 0..ny {
        for x0 in (0..nx).step_by(B) {
            let x1 = (x0 + B).min(nx);
            for z in 0..nz {
                let s = nx * (y + ny * z);
                for x in x0..x1 {
                    dst[(x * ny + y) * nz + z] = src[s + x];
                }
            }
        }
    }
    dst
}

fn into_c_order<T: nifti::DataElement + Copy + Default>(
    path: &Path,
    l: Loaded,
) -> Result<Volume<T>, VolumeError> {
    let arr = l.volume.into_ndarray::<T>().map_err(|e| corrupt(path, e))?;
    // `into_ndarray` builds a Fortran-order array; its memory order is exactly the file's.
    let src = arr
        .as_slice_memory_order()
        .ok_or_else(|| VolumeError::Corrupt {
            path: path.to_path_buf(),
            detail: "unexpected array layout".into(),
        })?;
    let data = fortran_to_c(src, l.shape);
    Ok(Volume {
        shape: l.shape,
        spacing: l.spacing,
        affine: l.affine,
        data,
    })
}

/// Reads one channel of a 3D (channel must be 0) or 4D (channel = index along dim\[4\]) NIfTI-1
/// image as f32, with scl_slope/scl_inter applied. NaNs are passed through.
pub fn read_image(path: &Path, channel: usize) -> Result<Volume<f32>, VolumeError> {
    let l = load(path, channel)?;
    into_c_order::<f32>(path, l)
}

/// Reads a 3-D label map from any integer or float datatype; fails when a value is not a
/// non-negative integer that fits in u16, or when the file holds several volumes (`dim[4] > 1`:
/// reading only the first would silently ignore the others' labels).
pub fn read_labels(path: &Path) -> Result<Volume<u16>, VolumeError> {
    let l = load(path, 0)?;
    if l.channels > 1 {
        return Err(bad_header(
            path,
            format!(
                "a label map must be one 3-D volume; this file has {} along dim[4]",
                l.channels
            ),
        ));
    }
    let vol = into_c_order::<f64>(path, l)?;
    let mut data = Vec::with_capacity(vol.data.len());
    for (i, &v) in vol.data.iter().enumerate() {
        if !(v >= 0.0 && v <= u16::MAX as f64 && v.fract() == 0.0) {
            return Err(VolumeError::BadLabelValue {
                path: path.to_path_buf(),
                value: v,
                voxel: vol.coords(i),
            });
        }
        data.push(v as u16);
    }
    Ok(Volume {
        shape: vol.shape,
        spacing: vol.spacing,
        affine: vol.affine,
        data,
    })
}

fn is_nifti_name(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// Writes `vol` as NIfTI-1 (`.nii`, or gzip-compressed `.nii.gz`, chosen by the extension) with
/// sform and qform (code 1, scanner) from `vol.affine`, pixdim from `vol.spacing` and units mm.
/// The file is written to a temporary name in the same folder and renamed into place, so a
/// reader never sees a half-written file.
pub fn write_nifti<T: NiftiWritable>(path: &Path, vol: &Volume<T>) -> Result<(), VolumeError> {
    let geometry = |detail: String| VolumeError::BadGeometry {
        path: path.to_path_buf(),
        detail,
    };
    if !is_nifti_name(path) {
        return Err(VolumeError::BadExtension {
            path: path.to_path_buf(),
        });
    }
    if vol.shape.iter().any(|&n| n == 0 || n > i16::MAX as usize) {
        return Err(geometry(format!(
            "shape {:?} (each axis must be 1 to 32767 for NIfTI-1)",
            vol.shape
        )));
    }
    if vol.data.len() != vol.shape.iter().product::<usize>() {
        return Err(geometry(format!(
            "{} values for shape {:?}",
            vol.data.len(),
            vol.shape
        )));
    }
    if !vol.spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err(geometry(format!(
            "spacing {:?} must be positive",
            vol.spacing
        )));
    }
    let m = Matrix4::from_fn(|r, c| vol.affine[r][c]);
    let det = m.fixed_view::<3, 3>(0, 0).determinant();
    if !m.iter().all(|v| v.is_finite()) || det == 0.0 || !det.is_finite() {
        return Err(geometry(format!(
            "affine {:?} is singular or not finite",
            vol.affine
        )));
    }

    let mut header = NiftiHeader::default();
    header.pixdim[0] = 1.0;
    header.set_qform(&m, XForm::ScannerAnat);
    header.set_sform(&m, XForm::ScannerAnat);
    // set_qform derives pixdim from the affine's column norms; the volume's spacing is the truth.
    for i in 0..3 {
        header.pixdim[i + 1] = vol.spacing[i] as f32;
    }
    header.xyzt_units = 2 | 8; // mm, seconds
    let _ = header.set_description_str("clopa");

    let view = ArrayView3::from_shape(vol.shape, &vol.data).map_err(|e| geometry(e.to_string()))?;
    // The nifti writer picks compression from the name; clopa-fs's temporary keeps the extension.
    clopa_fs::write_atomic_path(path, |tmp| {
        let opts = WriterOptions::new(tmp).reference_header(&header);
        T::write_view(&opts, &view).map_err(|e| VolumeError::Write {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_to_c_matches_naive_loop() {
        let shape = [19, 3, 5];
        let src: Vec<u32> = (0..(19 * 3 * 5) as u32).collect();
        let dst = fortran_to_c(&src, shape);
        for x in 0..19 {
            for y in 0..3 {
                for z in 0..5 {
                    assert_eq!(dst[(x * 3 + y) * 5 + z], src[x + 19 * (y + 3 * z)]);
                }
            }
        }
    }

    #[test]
    fn bad_extension_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = Volume::from_shape([1, 1, 1], [1.0; 3], vec![1u8]).unwrap();
        let err = write_nifti(&dir.path().join("x.png"), &v).unwrap_err();
        assert!(err.to_string().contains("x.png"), "{err}");
    }
}
