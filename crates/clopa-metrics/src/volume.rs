//! The mask metrics on [`clopa_volume::Mask`]s: the grids must match (shape, spacing and affine,
//! as `Volume::same_grid` decides); the spacing comes from the prediction.

use clopa_volume::Mask;

use crate::{Assd, MetricsError};

fn check_grid(pred: &Mask, reference: &Mask) -> Result<(), MetricsError> {
    if !pred.same_grid(reference) {
        return Err(MetricsError::Grid {
            pred: format!("shape {:?} spacing {:?}", pred.shape, pred.spacing),
            reference: format!(
                "shape {:?} spacing {:?}",
                reference.shape, reference.spacing
            ),
        });
    }
    Ok(())
}

/// Raw Dice (NaN when both are empty); see [`crate::dice`].
pub fn dice(pred: &Mask, reference: &Mask) -> Result<f64, MetricsError> {
    check_grid(pred, reference)?;
    crate::dice(&pred.data, &reference.data, pred.shape)
}

/// Raw NSD (NaN when both are empty); see [`crate::nsd`].
pub fn nsd(pred: &Mask, reference: &Mask, tolerance_mm: f64) -> Result<f64, MetricsError> {
    check_grid(pred, reference)?;
    crate::nsd(
        &pred.data,
        &reference.data,
        pred.shape,
        pred.spacing,
        tolerance_mm,
    )
}

/// Robust Hausdorff distance; see [`crate::hd`].
pub fn hd(pred: &Mask, reference: &Mask, percentile: f64) -> Result<f64, MetricsError> {
    check_grid(pred, reference)?;
    crate::hd(
        &pred.data,
        &reference.data,
        pred.shape,
        pred.spacing,
        percentile,
    )
}

/// Average surface distances; see [`crate::assd`].
pub fn assd(pred: &Mask, reference: &Mask) -> Result<Assd, MetricsError> {
    check_grid(pred, reference)?;
    crate::assd(&pred.data, &reference.data, pred.shape, pred.spacing)
}

/// Dice and NSD under the IS_Validate convention (both empty → 1, one empty → 0).
pub fn is_validate_dice_nsd(
    pred: &Mask,
    reference: &Mask,
    tolerance_mm: f64,
) -> Result<(f64, f64), MetricsError> {
    check_grid(pred, reference)?;
    crate::is_validate::dice_nsd(
        &pred.data,
        &reference.data,
        pred.shape,
        pred.spacing,
        tolerance_mm,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn different_grids_are_an_error() {
        let a = Mask::from_shape([2, 2, 2], [1.0; 3], vec![1; 8]).unwrap();
        let b = Mask::from_shape([2, 2, 2], [2.0, 1.0, 1.0], vec![1; 8]).unwrap();
        assert!(matches!(dice(&a, &b), Err(MetricsError::Grid { .. })));
        assert_eq!(dice(&a, &a).unwrap(), 1.0);
        assert_eq!(is_validate_dice_nsd(&a, &a, 1.0).unwrap(), (1.0, 1.0));
    }
}
