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
    if metrics.is_empty() {
        return Ok(());
    }
    let has_text = register_system_font();
    let (min, max) = metrics.iter().fold((f64::MAX, f64::MIN), |(lo, hi), m| {
        (lo.min(m.loss), hi.max(m.loss))
    });
    let pad = ((max - min) * 0.05).max(1e-3);
    let last = metrics.last().map_or(1, |m| m.step).max(2);
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
    let raw = LineSeries::new(
        metrics.iter().map(|m| (m.step, m.loss)),
        RGBColor(170, 190, 230),
    );
    let window = 10;
    let smooth = metrics.iter().enumerate().map(|(i, m)| {
        let from = i.saturating_sub(window - 1);
        let part = &metrics[from..=i];
        (
            m.step,
            part.iter().map(|p| p.loss).sum::<f64>() / part.len() as f64,
        )
    });
    let avg = LineSeries::new(smooth, BLUE.stroke_width(2));
    if has_text {
        chart
            .draw_series(raw)?
            .label("loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(170, 190, 230)));
        chart
            .draw_series(avg)?
            .label("10-step mean")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    } else {
        chart.draw_series(raw)?;
        chart.draw_series(avg)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
