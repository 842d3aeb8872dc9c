//! 3D volumes with voxel spacing and a voxel-to-world affine, NIfTI-1 reading and writing, and
//! the mask operations every clopa tool needs (label selection, largest connected component).
//!
//! The main type is [`Volume<T>`]: a C-contiguous 3D array in NIfTI index order (shape
//! `[nx, ny, nz]`, the axes nibabel's `get_fdata()` gives, with z fastest in memory), its
//! `spacing` (pixdim, mm) and its `affine` (sform if set, else qform, else `diag(spacing)`).
//! [`Mask`] is a `Volume<u8>` of 0/1 values. Files are read with [`read_image`] (any numeric
//! datatype, scl_slope/scl_inter applied, one channel of a 4D image) and [`read_labels`]
//! (integer label maps), and written atomically with [`write_nifti`] (`.nii` or `.nii.gz`).
//!
//! ```no_run
//! use std::path::Path;
//! use clopa_volume::{read_image, read_labels, labels_to_mask, largest_component, write_nifti};
//!
//! let image = read_image(Path::new("imagesTr/case_000_0000.nii.gz"), 0)?;
//! let labels = read_labels(Path::new("labelsTr/case_000.nii.gz"))?;
//! assert!(image.same_grid(&labels));
//! let mask = largest_component(&labels_to_mask(&labels, &[1, 2]));
//! write_nifti(Path::new("mask.nii.gz"), &mask)?;
//! # Ok::<(), clopa_volume::VolumeError>(())
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod components;
mod io;

use std::path::PathBuf;

pub use components::{count_nonzero, labels_to_mask, largest_component};
pub use io::{NiftiWritable, read_image, read_labels, write_nifti};

/// A 3D volume in NIfTI index order: `shape = [nx, ny, nz]` (the array axes of the file, i.e.
/// nibabel's `img.get_fdata()` axes), stored C-contiguous with z fastest:
/// `index = (x * ny + y) * nz + z`.
///
/// `spacing` = pixdim\[1..4\] in mm (same axis order), `affine` = voxel-to-world 4x4 (sform if
/// `sform_code > 0`, else qform if `qform_code > 0`, else `diag(spacing)`), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume<T> {
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub affine: [[f64; 4]; 4],
    pub data: Vec<T>,
}

/// A binary mask (values 0 and 1).
pub type Mask = Volume<u8>;

/// The affine `diag(spacing, 1)`: what a file without sform or qform means.
pub fn diag_affine(spacing: [f64; 3]) -> [[f64; 4]; 4] {
    [
        [spacing[0], 0.0, 0.0, 0.0],
        [0.0, spacing[1], 0.0, 0.0],
        [0.0, 0.0, spacing[2], 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

impl<T> Volume<T> {
    /// A volume from its parts; fails when `data.len()` is not the product of `shape`.
    pub fn new(
        shape: [usize; 3],
        spacing: [f64; 3],
        affine: [[f64; 4]; 4],
        data: Vec<T>,
    ) -> Result<Self, VolumeError> {
        let expected = shape
            .iter()
            .try_fold(1usize, |acc, &n| acc.checked_mul(n))
            .ok_or(VolumeError::ShapeMismatch {
                shape,
                len: data.len(),
                expected: usize::MAX,
            })?;
        if expected != data.len() {
            return Err(VolumeError::ShapeMismatch {
                shape,
                len: data.len(),
                expected,
            });
        }
        Ok(Volume {
            shape,
            spacing,
            affine,
            data,
        })
    }

    /// A volume whose affine is `diag(spacing)` (no rotation, origin at voxel 0).
    pub fn from_shape(
        shape: [usize; 3],
        spacing: [f64; 3],
        data: Vec<T>,
    ) -> Result<Self, VolumeError> {
        Self::new(shape, spacing, diag_affine(spacing), data)
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the volume has no voxels.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Linear index of voxel `(x, y, z)`.
    #[inline]
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        (x * self.shape[1] + y) * self.shape[2] + z
    }

    /// Voxel coordinates `[x, y, z]` of linear index `i`.
    #[inline]
    pub fn coords(&self, i: usize) -> [usize; 3] {
        let z = i % self.shape[2];
        let rest = i / self.shape[2];
        [rest / self.shape[1], rest % self.shape[1], z]
    }

    /// Same shape, and spacing and affine equal within 1e-4 (files store them as f32).
    pub fn same_grid<U>(&self, other: &Volume<U>) -> bool {
        self.grid_difference(other).is_none()
    }

    /// What differs between the two grids, for an error message (`shape [..] vs [..]`, else
    /// the spacing, else the affine), or `None` when they are the same grid.
    pub fn grid_difference<U>(&self, other: &Volume<U>) -> Option<String> {
        const TOL: f64 = 1e-4;
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= TOL);
        if self.shape != other.shape {
            Some(format!("shape {:?} vs {:?}", self.shape, other.shape))
        } else if !close(&self.spacing, &other.spacing) {
            Some(format!("spacing {:?} vs {:?}", self.spacing, other.spacing))
        } else if !close(self.affine.as_flattened(), other.affine.as_flattened()) {
            Some(format!("affine {:?} vs {:?}", self.affine, other.affine))
        } else {
            None
        }
    }

    /// A volume on the same grid with `f` applied to every voxel.
    pub fn map<U>(&self, f: impl Fn(&T) -> U) -> Volume<U> {
        Volume {
            shape: self.shape,
            spacing: self.spacing,
            affine: self.affine,
            data: self.data.iter().map(f).collect(),
        }
    }
}

/// Errors of volume I/O. Every variant names the file (or says "in memory") and the problem.
impl From<clopa_fs::IoError> for VolumeError {
    fn from(e: clopa_fs::IoError) -> VolumeError {
        VolumeError::Write {
            detail: format!("cannot {}: {}", e.action, e.source),
            path: e.path,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{}: file not found", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: cannot read the file: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a readable NIfTI-1 file: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("{}: invalid NIfTI header: {detail}", path.display())]
    BadHeader { path: PathBuf, detail: String },
    #[error(
        "{}: unsupported datatype {datatype} (supported: uint8, int8, uint16, int16, uint32, int32, \
         uint64, int64, float32, float64)",
        path.display()
    )]
    UnsupportedDatatype { path: PathBuf, datatype: String },
    #[error("{}: channel {channel} is out of range: the image has {channels} channel(s)", path.display())]
    ChannelOutOfRange {
        path: PathBuf,
        channel: usize,
        channels: usize,
    },
    #[error(
        "{}: the image has {ndim} dimensions {dims:?}; only 3D images and 4D multi-channel images are supported",
        path.display()
    )]
    TooManyDimensions {
        path: PathBuf,
        ndim: usize,
        dims: Vec<u16>,
    },
    #[error(
        "{}: label value {value} at voxel [{}, {}, {}] is not a non-negative integer (up to 65535)",
        path.display(), voxel[0], voxel[1], voxel[2]
    )]
    BadLabelValue {
        path: PathBuf,
        value: f64,
        voxel: [usize; 3],
    },
    #[error("{}: unsupported file name (expected a .nii or .nii.gz extension)", path.display())]
    BadExtension { path: PathBuf },
    #[error("{}: cannot write the NIfTI file: {detail}", path.display())]
    Write { path: PathBuf, detail: String },
    #[error("{}: cannot write: {detail}", path.display())]
    BadGeometry { path: PathBuf, detail: String },
    #[error("in memory: data has {len} values but shape {shape:?} needs {expected}")]
    ShapeMismatch {
        shape: [usize; 3],
        len: usize,
        expected: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_coords_are_inverse_and_z_fastest() {
        let v = Volume::from_shape([2, 3, 4], [1.0; 3], vec![0u8; 24]).unwrap();
        assert_eq!(v.index(0, 0, 1), 1);
        assert_eq!(v.index(0, 1, 0), 4);
        assert_eq!(v.index(1, 0, 0), 12);
        for i in 0..24 {
            let [x, y, z] = v.coords(i);
            assert_eq!(v.index(x, y, z), i);
        }
    }

    #[test]
    fn new_checks_length() {
        let err = Volume::from_shape([2, 2, 2], [1.0; 3], vec![0f32; 7]).unwrap_err();
        assert!(err.to_string().contains("in memory"), "{err}");
        assert!(Volume::from_shape([2, 2, 2], [1.0; 3], vec![0f32; 8]).is_ok());
    }

    #[test]
    fn same_grid_tolerates_f32_storage_only() {
        let a = Volume::from_shape([2, 2, 2], [0.8, 0.8, 2.5], vec![0u8; 8]).unwrap();
        let mut b = a.map(|&v| v as f32);
        b.spacing[2] = 2.5f32 as f64 + 1e-7;
        assert!(a.same_grid(&b));
        assert_eq!(a.grid_difference(&b), None);
        b.affine[0][3] = 0.01;
        assert!(!a.same_grid(&b));
        // The message says which part differs (an affine-only difference used to be reported
        // with two identical shape/spacing descriptions).
        assert!(a.grid_difference(&b).unwrap().starts_with("affine"));
        let c = Volume::from_shape([2, 2, 1], [0.8, 0.8, 2.5], vec![0u8; 4]).unwrap();
        assert!(!a.same_grid(&c));
        assert_eq!(
            a.grid_difference(&c).unwrap(),
            "shape [2, 2, 2] vs [2, 2, 1]"
        );
        let d = Volume::from_shape([2, 2, 2], [0.8, 0.8, 3.0], vec![0u8; 8]).unwrap();
        assert!(a.grid_difference(&d).unwrap().starts_with("spacing"));
    }
}
