//! The simulation loop of one (case, inference run) (DESIGN.md protocol step 4): the simulated
//! user's initialisation, then `edits` edit steps, on one persistent [`InferenceSession`].

use std::time::Instant;

use rand::Rng;

use crate::clicks::{Clicks, edit_clicks_raw, initial_clicks_raw};
use crate::error::InteractError;
use crate::session::{InferenceSession, Predictor, SessionError};

/// One recorded step (a row of `steps.parquet` without the keys).
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// 0 = initialisation, 1.. = edits.
    pub step: u32,
    /// Dice of the segmentation after this step (IS_Validate convention for empty masks).
    pub dice: f64,
    /// NSD at the task's tolerance (same convention).
    pub nsd: f64,
    /// Foreground clicks added at this step.
    pub fg_clicks: u32,
    /// Background clicks added at this step.
    pub bg_clicks: u32,
    /// Wall time of this step's session work (adding the clicks and predicting), seconds.
    pub seconds: f64,
}

/// The outcome of one simulated case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseSimulation {
    /// `edits + 1` steps.
    pub steps: Vec<StepRecord>,
    /// The final segmentation (0/1, image shape).
    pub segmentation: Vec<u8>,
}

/// Simulates one case: `set_image(image)`, the initial clicks (one negative click uniform over
/// the reference background, then one positive click uniform over its foreground), predict; then
/// `edits` times: one negative click in the false positives and one positive click in the false
/// negatives of the current segmentation (a class with no error gets none), added background
/// first so the prediction is centred on the foreground click, predict. Once Dice reaches 1 the
/// remaining steps repeat the final values with no clicks and zero seconds (IS_Validate's early
/// termination). Dice and NSD use the IS_Validate conventions at `tolerance_mm` with `spacing`.
///
/// `rng` should be [`crate::case_rng`]`(seed, case_id, infer_run)`.
#[allow(clippy::too_many_arguments)]
pub fn simulate_case<P: Predictor, R: Rng + ?Sized>(
    session: &mut InferenceSession<P>,
    image: &[f32],
    reference: &[u8],
    shape: [usize; 3],
    spacing: [f64; 3],
    tolerance_mm: f64,
    edits: usize,
    rng: &mut R,
) -> Result<CaseSimulation, SessionError> {
    let n = shape.iter().product::<usize>();
    if reference.len() != n {
        return Err(InteractError::ShapeMismatch {
            what: "reference mask",
            got: reference.len(),
            expected: n,
            shape,
        }
        .into());
    }
    session.set_image(image, shape)?;
    let mut steps = Vec::with_capacity(edits + 1);
    let clicks = initial_clicks_raw(shape, reference, rng)?;
    steps.push(run_step(
        session,
        reference,
        shape,
        spacing,
        tolerance_mm,
        0,
        &clicks,
    )?);
    for step in 1..=edits as u32 {
        let last = steps[steps.len() - 1].clone();
        if last.dice >= 1.0 {
            steps.push(StepRecord {
                step,
                fg_clicks: 0,
                bg_clicks: 0,
                seconds: 0.0,
                ..last
            });
            continue;
        }
        let seg = session.segmentation().ok_or(SessionError::NoImage)?;
        let clicks = edit_clicks_raw(shape, seg, reference, rng)?;
        steps.push(run_step(
            session,
            reference,
            shape,
            spacing,
            tolerance_mm,
            step,
            &clicks,
        )?);
    }
    let segmentation = session
        .segmentation()
        .ok_or(SessionError::NoImage)?
        .to_vec();
    Ok(CaseSimulation {
        steps,
        segmentation,
    })
}

fn run_step<P: Predictor>(
    session: &mut InferenceSession<P>,
    reference: &[u8],
    shape: [usize; 3],
    spacing: [f64; 3],
    tolerance_mm: f64,
    step: u32,
    clicks: &Clicks,
) -> Result<StepRecord, SessionError> {
    let start = Instant::now();
    for c in clicks {
        session.add_point(c.coords_f64(), c.positive)?;
    }
    session.predict()?;
    let seconds = start.elapsed().as_secs_f64();
    let seg = session.segmentation().ok_or(SessionError::NoImage)?;
    let (dice, nsd) =
        clopa_metrics::is_validate::dice_nsd(seg, reference, shape, spacing, tolerance_mm)?;
    let fg = clicks.iter().filter(|c| c.positive).count() as u32;
    Ok(StepRecord {
        step,
        dice,
        nsd,
        fg_clicks: fg,
        bg_clicks: clicks.len() as u32 - fg,
        seconds,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clicks::case_rng;
    use crate::interactions::{DecayScheme, POINT_NEG, POINT_POS, PromptConfig};
    use crate::session::{PredictorError, SessionConfig};

    fn cfg() -> SessionConfig {
        SessionConfig::new(PromptConfig {
            patch_size: [16; 3],
            point_radius: 2,
            decay: 0.9,
            scheme: DecayScheme::PerType,
        })
    }

    fn ball(shape: [usize; 3], c: f32, r: f32) -> Vec<u8> {
        let mut v = Vec::new();
        for x in 0..shape[0] {
            for y in 0..shape[1] {
                for z in 0..shape[2] {
                    let d2 =
                        (x as f32 - c).powi(2) + (y as f32 - c).powi(2) + (z as f32 - c).powi(2);
                    v.push((d2 <= r * r) as u8);
                }
            }
        }
        v
    }

    #[test]
    fn a_perfect_network_stops_early_and_fills_the_steps() {
        let shape = [24, 24, 24];
        let reference = ball(shape, 12.0, 4.0);
        let image: Vec<f32> = reference
            .iter()
            .enumerate()
            .map(|(i, &r)| 1.0 + 5.0 * r as f32 + (i % 3) as f32 * 0.01)
            .collect();
        // the network thresholds the image; it only answers once a positive click was seen
        let net = |x: &[f32], p: [usize; 3]| -> Result<Vec<f32>, PredictorError> {
            let n = p.iter().product::<usize>();
            let seen = x[(1 + POINT_POS) * n..(2 + POINT_POS) * n]
                .iter()
                .any(|&v| v > 0.0);
            Ok(x[..n]
                .iter()
                .map(|&v| if seen && v > 1.0 { 1.0 } else { -1.0 })
                .collect())
        };
        let mut s = InferenceSession::new(net, cfg()).unwrap();
        let mut rng = case_rng(0, "case", 0);
        let sim = simulate_case(
            &mut s, &image, &reference, shape, [1.0; 3], 1.0, 5, &mut rng,
        )
        .unwrap();
        assert_eq!(sim.steps.len(), 6);
        assert_eq!((sim.steps[0].fg_clicks, sim.steps[0].bg_clicks), (1, 1));
        assert_eq!(sim.steps[0].dice, 1.0);
        assert_eq!(sim.steps[0].nsd, 1.0);
        for (i, st) in sim.steps.iter().enumerate().skip(1) {
            assert_eq!(st.step, i as u32);
            assert_eq!(
                (st.fg_clicks, st.bg_clicks, st.seconds, st.dice),
                (0, 0, 0.0, 1.0)
            );
        }
        assert_eq!(sim.segmentation, reference);
    }

    #[test]
    fn edit_clicks_come_from_the_errors_and_repeat_with_the_seed() {
        let shape = [24, 24, 24];
        let reference = ball(shape, 12.0, 5.0);
        let image: Vec<f32> = reference
            .iter()
            .enumerate()
            .map(|(i, &r)| 1.0 + 5.0 * r as f32 + (i % 3) as f32 * 0.01)
            .collect();
        // a network that never finds anything: every step adds one foreground click (the false
        // negatives) and no background click (there are no false positives)
        let never = |_: &[f32], p: [usize; 3]| -> Result<Vec<f32>, PredictorError> {
            Ok(vec![-1.0; p.iter().product()])
        };
        let mut s = InferenceSession::new(never, cfg()).unwrap();
        let sim = simulate_case(
            &mut s,
            &image,
            &reference,
            shape,
            [1.0; 3],
            1.0,
            3,
            &mut case_rng(1, "c", 0),
        )
        .unwrap();
        assert_eq!(sim.steps.len(), 4);
        for st in &sim.steps[1..] {
            assert_eq!(
                (st.fg_clicks, st.bg_clicks, st.dice, st.nsd),
                (1, 0, 0.0, 0.0)
            );
        }
        let clicks = s.interactions().unwrap();
        assert!(
            clicks
                .channel(POINT_NEG)
                .iter()
                .filter(|v| v.to_f32() > 0.0)
                .count()
                > 0,
            "the init bg click"
        );
        let again = simulate_case(
            &mut s,
            &image,
            &reference,
            shape,
            [1.0; 3],
            1.0,
            3,
            &mut case_rng(1, "c", 0),
        )
        .unwrap();
        let strip = |v: &[StepRecord]| {
            v.iter()
                .map(|s| (s.step, s.dice.to_bits(), s.fg_clicks, s.bg_clicks))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&sim.steps), strip(&again.steps));
        assert!(
            simulate_case(
                &mut s,
                &image,
                &reference[1..],
                shape,
                [1.0; 3],
                1.0,
                3,
                &mut case_rng(1, "c", 0)
            )
            .is_err()
        );
    }
}
