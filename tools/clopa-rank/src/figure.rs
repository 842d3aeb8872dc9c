//! Fig. 2: mean Dice at the last step against the number of samples received, one panel per
//! task, one line per method, the expert threshold as a red line and NoS as vertical lines.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::input::{CaseRow, TrajectoryRow};
use crate::report::{display_name, method_order};

/// One method's curve in one panel.
#[derive(Debug, Clone)]
pub struct Curve {
    pub method: String,
    pub points: Vec<(f64, f64)>,
    /// The stream position at which the curve first reaches the threshold (NoS · N + 1).
    pub nos_x: Option<f64>,
}

/// One panel: a task's curves and its expert threshold (the red line).
#[derive(Debug, Clone)]
pub struct Panel {
    pub task: String,
    pub curves: Vec<Curve>,
    pub threshold: Option<f64>,
}

/// Curves from `trajectory.parquet`: the `dice_final` values per stream position.
pub fn panels_from_trajectory(rows: &[TrajectoryRow]) -> Vec<Panel> {
    // task → method → (points, NoS fraction)
    type ByMethod<'a> = BTreeMap<&'a str, (Vec<(f64, f64)>, Option<f64>)>;
    let mut by: BTreeMap<&str, ByMethod> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.metric == "dice_final") {
        let e = by.entry(&r.task).or_default().entry(&r.method).or_default();
        match r.position {
            Some(p) => e.0.push((f64::from(p), r.value)),
            None => e.1 = r.nos,
        }
    }
    by.into_iter()
        .map(|(task, methods)| {
            let n = methods
                .values()
                .flat_map(|(p, _)| p.iter().map(|(x, _)| *x))
                .fold(0.0, f64::max);
            let order = method_order(
                methods
                    .keys()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .iter(),
            );
            let curves = order
                .iter()
                .map(|m| {
                    let (mut points, nos) = methods[m.as_str()].clone();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Curve {
                        method: m.clone(),
                        points,
                        // NoS is IS_Validate's argmax(traj >= t) / N, a 0-based index over N;
                        // the curve's points sit at the 1-based positions, so the marker goes
                        // to NoS · N + 1, where the curve crosses.
                        nos_x: nos.filter(|v| v.is_finite()).map(|f| f * n + 1.0),
                    }
                })
                .collect();
            Panel {
                task: task.to_string(),
                curves,
                threshold: None,
            }
        })
        .collect()
}

/// Curves from `cases.parquet` when no trajectory is given: per episode, the mean final Dice
/// (over runs and cases) against the mean cache size; the base model as a flat line.
pub fn panels_from_cases(rows: &[CaseRow]) -> Vec<Panel> {
    // task → method → episode → (sum n_seen, sum dice, count)
    type ByEpisode = BTreeMap<u32, (f64, f64, f64)>;
    let mut by: BTreeMap<&str, BTreeMap<&str, ByEpisode>> = BTreeMap::new();
    for r in rows {
        let e = by
            .entry(&r.task)
            .or_default()
            .entry(&r.method)
            .or_default()
            .entry(r.episode)
            .or_default();
        e.0 += f64::from(r.n_seen);
        e.1 += r.values[1];
        e.2 += 1.0;
    }
    by.into_iter()
        .map(|(task, methods)| {
            let xmax = methods
                .values()
                .flat_map(|e| e.values().map(|(s, _, n)| s / n))
                .fold(0.0, f64::max);
            let order = method_order(
                methods
                    .keys()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .iter(),
            );
            let curves = order
                .iter()
                .map(|m| {
                    let mut points: Vec<(f64, f64)> = methods[m.as_str()]
                        .values()
                        .map(|(s, d, n)| (s / n, d / n))
                        .collect();
                    if points.len() == 1 && xmax > points[0].0 {
                        points.push((xmax, points[0].1));
                    }
                    Curve {
                        method: m.clone(),
                        points,
                        nos_x: None,
                    }
                })
                .collect();
            Panel {
                task: task.to_string(),
                curves,
                threshold: None,
            }
        })
        .collect()
}

/// Line colours in method order (base, in, cn, others): dark grey, blue, orange, green, purple,
/// brown; none of them red, which marks the threshold.
const COLORS: [RGBColor; 6] = [
    RGBColor(0x44, 0x44, 0x44),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

const PANEL_W: u32 = 520;
const PANEL_H: u32 = 420;

/// Writes the figure as PNG or SVG (by `format`) to `path`. Text needs a system font (plotters'
/// `ttf` feature, through fontconfig); when none can be loaded, the figure is drawn again
/// without any text rather than not at all, and `Ok(false)` says so.
pub fn write_figure(
    path: &Path,
    svg: bool,
    panels: &[Panel],
    base_label: &str,
) -> anyhow::Result<bool> {
    let size = (PANEL_W * panels.len().max(1) as u32, PANEL_H);
    let attempt = |text: bool| -> anyhow::Result<()> {
        if svg {
            let root = SVGBackend::new(path, size).into_drawing_area();
            draw(&root, panels, text, base_label)?;
            root.present()
                .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
        } else {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            draw(&root, panels, text, base_label)?;
            root.present()
                .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
        }
    };
    match attempt(true) {
        Ok(()) => Ok(true),
        Err(first) => {
            attempt(false).map_err(|e| {
                anyhow!(
                    "cannot draw {}: {e} (first try with text: {first})",
                    path.display()
                )
            })?;
            Ok(false)
        }
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[Panel],
    text: bool,
    base_label: &str,
) -> anyhow::Result<()> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    root.fill(&WHITE).map_err(err)?;
    if panels.is_empty() {
        return Ok(());
    }
    let areas = root.split_evenly((1, panels.len()));
    for (area, panel) in areas.iter().zip(panels) {
        let xmax = panel
            .curves
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.0))
            .fold(1.0, f64::max);
        let mut builder = ChartBuilder::on(area);
        builder.margin(12);
        if text {
            builder
                .caption(&panel.task, ("sans-serif", 20))
                .x_label_area_size(40)
                .y_label_area_size(50);
        }
        let mut chart = builder
            .build_cartesian_2d(0.0..xmax, 0.0..1.0)
            .map_err(err)?;
        let mut mesh = chart.configure_mesh();
        if text {
            // samples are counts: no "2.0, 4.0" ticks
            mesh.x_desc("samples received")
                .y_desc("mean Dice at the last step")
                .x_label_formatter(&|x| format!("{x:.0}"));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(err)?;
        if let Some(t) = panel.threshold {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(0.0, t), (xmax, t)],
                    RED.stroke_width(2),
                )))
                .map_err(err)?;
        }
        for (i, curve) in panel.curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()].to_rgba();
            let series = chart
                .draw_series(LineSeries::new(
                    curve.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(err)?;
            if text {
                let name = display_name(&curve.method, base_label);
                series.label(name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
            if let Some(x) = curve.nos_x {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(x, 0.0), (x, 1.0)],
                        color.stroke_width(1),
                    )))
                    .map_err(err)?;
            }
        }
        if text {
            chart
                .configure_series_labels()
                .position(legend_position(panel, xmax))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
    }
    Ok(())
}

/// The right-hand corner band (lower, middle or upper third of the Dice axis) that the fewest
/// curve points of the right 40 % of the panel fall into, the threshold line counting as many
/// points as a curve has there: the legend then hides as little as it can.
fn legend_position(panel: &Panel, xmax: f64) -> SeriesLabelPosition {
    let bands = [
        (SeriesLabelPosition::LowerRight, 0.0, 1.0 / 3.0),
        (SeriesLabelPosition::MiddleRight, 1.0 / 3.0, 2.0 / 3.0),
        (SeriesLabelPosition::UpperRight, 2.0 / 3.0, 1.01),
    ];
    let right: Vec<f64> = panel
        .curves
        .iter()
        .flat_map(|c| c.points.iter().filter(|p| p.0 >= 0.6 * xmax).map(|p| p.1))
        .collect();
    let per_curve = right.len() / panel.curves.len().max(1);
    let count = |lo: f64, hi: f64| {
        let t = panel
            .threshold
            .filter(|t| (lo..hi).contains(t))
            .map_or(0, |_| per_curve.max(1));
        right.iter().filter(|v| (lo..hi).contains(*v)).count() + t
    };
    // ties go to the earlier band: lower right, where it has always been
    bands
        .iter()
        .min_by_key(|(_, lo, hi)| count(*lo, *hi))
        .map_or(SeriesLabelPosition::LowerRight, |b| b.0.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each panel draws its own task's threshold (a merged table's tasks have different ones),
    /// and a NoS marker sits where its curve reaches the threshold.
    #[test]
    fn every_panel_has_its_own_red_line() -> anyhow::Result<()> {
        let traj = |task: &str, pos: Option<u32>, value: f64, nos: Option<f64>| TrajectoryRow {
            task: task.into(),
            method: "in".into(),
            metric: "dice_final".into(),
            position: pos,
            value,
            nos,
        };
        // reaches 0.5 at position 3 (0-based index 2): NoS = 2 / 4
        let rows = vec![
            traj("a", Some(1), 0.1, None),
            traj("a", Some(2), 0.2, None),
            traj("a", Some(3), 0.6, None),
            traj("a", Some(4), 0.7, None),
            traj("a", None, 0.4, Some(0.5)),
            traj("b", Some(1), 0.1, None),
            traj("b", Some(2), 0.2, None),
        ];
        let mut panels = panels_from_trajectory(&rows);
        assert_eq!(panels[0].curves[0].nos_x, Some(3.0));
        panels[0].threshold = Some(0.5);
        panels[1].threshold = Some(0.25);
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f.svg");
        write_figure(&path, true, &panels, "nnInteractive")?;
        let svg = std::fs::read_to_string(&path)?;
        assert_eq!(svg.matches("#FF0000").count(), 2, "{svg}");
        Ok(())
    }

    #[test]
    fn the_legend_goes_where_the_curves_are_not() {
        let curve = |y: f64| Curve {
            method: "in".into(),
            points: (1..=10).map(|x| (f64::from(x), y)).collect(),
            nos_x: None,
        };
        let panel = |ys: &[f64], threshold| Panel {
            task: "t".into(),
            curves: ys.iter().map(|&y| curve(y)).collect(),
            threshold,
        };
        let pos = |p: &Panel| format!("{:?}", legend_position(p, 10.0));
        // low curves, high threshold: the middle is free
        assert_eq!(pos(&panel(&[0.1, 0.15], Some(0.85))), "MiddleRight");
        // curves in the middle, threshold high: lower right
        assert_eq!(pos(&panel(&[0.4, 0.5], Some(0.94))), "LowerRight");
        // everything low, no threshold: upper right ties with the middle; the middle comes first
        assert_eq!(pos(&panel(&[0.1], None)), "MiddleRight");
    }
}
