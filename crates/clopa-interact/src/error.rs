//! The error type of this crate.

/// Everything that can go wrong while rendering prompts, assembling network inputs or
/// simulating clicks. Every message names the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum InteractError {
    /// A buffer whose length does not match the shape it is used with.
    #[error("{what}: {got} values, but shape {shape:?} needs {expected}")]
    ShapeMismatch {
        what: &'static str,
        got: usize,
        expected: usize,
        shape: [usize; 3],
    },
    /// An image whose every voxel is zero has no region to take z-score statistics from.
    #[error("image is entirely zero: no non-zero region to take normalisation statistics from")]
    AllZeroImage,
    /// The non-zero bounding box is constant (or a single voxel): the unbiased std is 0 or
    /// undefined, and nnInteractive would fill the image with NaN/inf.
    #[error(
        "image is constant over its non-zero bounding box ({n} voxels, std {std}): z-score normalisation would divide by zero"
    )]
    ConstantImage { std: f64, n: usize },
    /// A bounding-box prompt with a zero-sized axis (nnInteractive raises the same).
    #[error("bounding box {bbox:?} has zero size along axis {axis}")]
    EmptyBox { bbox: [[f64; 2]; 3], axis: usize },
    /// A mask prompt whose crop box leaves the image.
    #[error("interaction bbox {bbox:?} is empty or leaves the image of shape {shape:?}")]
    MaskBoxOutOfImage {
        bbox: [[usize; 2]; 3],
        shape: [usize; 3],
    },
    /// A coordinate that is not finite.
    #[error("prompt coordinate {0:?} is not finite")]
    NonFiniteCoordinate(Vec<f64>),
    /// A decay outside (0, 1].
    #[error("interaction decay must be in (0, 1], got {0}")]
    InvalidDecay(f64),
    /// A zoom factor below 1, above 4 or not finite.
    #[error("zoom factor must be finite and within [1, 4], got {0}")]
    InvalidZoom(f64),
    /// A patch size or point radius of zero.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Two masks (prediction, reference) on different grids.
    #[error("{what}: shape {got:?} differs from the reference shape {expected:?}")]
    GridMismatch {
        what: &'static str,
        got: [usize; 3],
        expected: [usize; 3],
    },
}

/// Check that `len` matches `shape`.
pub(crate) fn check_len(
    what: &'static str,
    len: usize,
    shape: [usize; 3],
) -> Result<(), InteractError> {
    let expected = shape.iter().product::<usize>();
    if len == expected {
        Ok(())
    } else {
        Err(InteractError::ShapeMismatch {
            what,
            got: len,
            expected,
            shape,
        })
    }
}
