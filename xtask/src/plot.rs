//! The loss curve of a run as a PNG (`loss.png` beside `metrics.jsonl`).
//!
//! Text needs a TrueType font: the first of a few common system fonts (DejaVu, Liberation) is
//! used; without one the plot is drawn without labels rather than not at all.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use trainer::metrics::StepMetrics;

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Registers a system font under "sans-serif" once; false when none was found.
pub(crate) fn register_system_font() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        FONT_CANDIDATES.iter().any(|path| {
            std::fs::read(path).ok().is_some_and(|bytes| {
                // Fonts must outlive the process for plotters: leaked once.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
        })
    })
}

/// Draws loss against step (raw, and a 10-step moving average) into `path`.
pub fn plot_loss(metrics: &[StepMetrics], title: &str, path: &Path) -> anyhow::Result<()> {
    plot_runs(&[("loss".to_string(), metrics.to_vec())], title, path)
}

/// Steps of the moving average drawn over each run's raw loss.
const MEAN_WINDOW: usize = 10;

/// Line colours of the runs, in order (the raw loss is drawn in a light tint of the same).
const RUN_COLOURS: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// Draws the loss curves of several labelled runs on one chart: each run's raw loss in a light
/// tint and its 10-step moving average in full colour, labelled. Runs without steps are skipped.
pub fn plot_runs(
    runs: &[(String, Vec<StepMetrics>)],
    title: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let runs: Vec<_> = runs.iter().filter(|(_, m)| !m.is_empty()).collect();
    if runs.is_empty() {
        return Ok(());
    }
    let has_text = register_system_font();
    let (min, max) = runs
        .iter()
        .flat_map(|(_, m)| m.iter())
        .fold((f64::MAX, f64::MIN), |(lo, hi), m| {
            (lo.min(m.loss), hi.max(m.loss))
        });
    let pad = ((max - min) * 0.05).max(1e-3);
    let last = runs
        .iter()
        .filter_map(|(_, m)| m.last().map(|m| m.step))
        .max()
        .unwrap_or(1)
        .max(2);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16);
    if has_text {
        builder
            .caption(title, ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(1usize..last, (min - pad)..(max + pad))?;
    let mut mesh = chart.configure_mesh();
    if has_text {
        mesh.x_desc("optimizer step").y_desc("training loss");
    } else {
        mesh.disable_x_mesh().disable_y_mesh();
    }
    mesh.draw()?;
    for (i, (label, metrics)) in runs.iter().enumerate() {
        let colour = RUN_COLOURS[i % RUN_COLOURS.len()];
        let tint = RGBColor(colour.0 / 3 + 170, colour.1 / 3 + 170, colour.2 / 3 + 170);
        chart.draw_series(LineSeries::new(
            metrics.iter().map(|m| (m.step, m.loss)),
            tint,
        ))?;
        let mean = LineSeries::new(moving_mean(metrics), colour.stroke_width(2));
        let drawn = chart.draw_series(mean)?;
        if has_text {
            drawn
                .label(format!("{label} ({MEAN_WINDOW}-step mean)"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
    }
    if has_text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `(step, mean loss of the last MEAN_WINDOW steps up to it)`.
fn moving_mean(metrics: &[StepMetrics]) -> Vec<(usize, f64)> {
    metrics
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let part = &metrics[i.saturating_sub(MEAN_WINDOW - 1)..=i];
            (
                m.step,
                part.iter().map(|p| p.loss).sum::<f64>() / part.len() as f64,
            )
        })
        .collect()
}

/// `cargo xtask plot`: the loss curves of finished or running trainings on one chart.
#[derive(clap::Args, Debug)]
pub struct Plot {
    /// A run to draw, as `LABEL=PATH` (or `PATH`, labelled by its folder name): PATH is a
    /// `finetune --output` folder or its `metrics.jsonl`. Repeat for each run.
    #[arg(long = "run", required = true)]
    runs: Vec<String>,
    /// The PNG to write.
    #[arg(long)]
    output: std::path::PathBuf,
    /// The chart's title.
    #[arg(long, default_value = "training loss")]
    title: String,
}

impl Plot {
    pub fn run(self) -> anyhow::Result<()> {
        let runs = self
            .runs
            .iter()
            .map(|spec| {
                let (label, path) = parse_run(spec);
                let file = if path.is_dir() {
                    path.join("metrics.jsonl")
                } else {
                    path.clone()
                };
                let metrics = trainer::metrics::MetricsLog::read(&file).with_context(|| {
                    format!("reading the metrics of run `{label}`: {}", file.display())
                })?;
                anyhow::ensure!(!metrics.is_empty(), "{} holds no step", file.display());
                Ok((label, metrics))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        plot_runs(&runs, &self.title, &self.output)?;
        eprintln!("-> {}", self.output.display());
        Ok(())
    }
}

/// `LABEL=PATH` into its parts; a bare path is labelled by its folder (or file stem).
fn parse_run(spec: &str) -> (String, std::path::PathBuf) {
    if let Some((label, path)) = spec.split_once('=') {
        if !label.is_empty() && !path.is_empty() {
            return (label.to_string(), path.into());
        }
    }
    let path = std::path::PathBuf::from(spec);
    let named = if path.file_name().is_some_and(|n| n == "metrics.jsonl") {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        path.clone()
    };
    let label = named
        .file_stem()
        .map_or_else(|| spec.to_string(), |n| n.to_string_lossy().into_owned());
    (label, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_labelled_by_its_folder_unless_named() {
        assert_eq!(parse_run("dense=runs/a"), ("dense".into(), "runs/a".into()));
        assert_eq!(parse_run("runs/a"), ("a".into(), "runs/a".into()));
        assert_eq!(
            parse_run("runs/b/metrics.jsonl"),
            ("b".into(), "runs/b/metrics.jsonl".into())
        );
    }

    #[test]
    fn the_moving_mean_averages_the_last_window() {
        let metrics: Vec<StepMetrics> = (1..=12)
            .map(|step| StepMetrics {
                step,
                epoch: 0,
                loss: step as f64,
                lr: 0.0,
                grad_norm: 0.0,
                tokens: 1,
                tokens_per_s: 1.0,
                step_time_s: 1.0,
                sparse: false,
                estimator_s: None,
                flops_ratio: None,
            })
            .collect();
        let mean = moving_mean(&metrics);
        assert_eq!(mean[0], (1, 1.0));
        assert_eq!(mean[1], (2, 1.5));
        // Steps 3..=12: mean 7.5.
        assert_eq!(mean[11], (12, 7.5));
    }
}
