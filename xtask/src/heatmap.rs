//! A labelled heat map as a PNG: one coloured cell per (row, column) value, the value printed in
//! the cell, and a colour bar. `cargo xtask sensitivity` draws its layer x block/ratio table
//! with it.
//!
//! Colours are diverging around zero: white at 0, through orange to dark red for positive values
//! and through light to dark blue for negative ones, grey where a value is missing (NaN). The
//! scale is a symmetric log ([`Scale`]): linear up to about the median absolute value, then
//! logarithmic up to the largest, so that a few very large cells (a layer that breaks when made
//! sparse) do not wash out the differences among the rest. The numbers printed in the cells give
//! the exact values. Without a system font the map is drawn without text (see [`crate::plot`]).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// What to draw.
pub struct HeatMap<'a> {
    /// Caption above the map.
    pub title: &'a str,
    /// Label of each row, top to bottom.
    pub rows: Vec<String>,
    /// Label of each column, left to right.
    pub columns: Vec<String>,
    /// A second line of column labels, each spanning a run of columns: `(label, columns)`.
    pub column_groups: Vec<(String, usize)>,
    /// `values[row][column]`; NaN for a missing cell.
    pub values: Vec<Vec<f64>>,
    /// Axis descriptions.
    pub x_desc: &'a str,
    /// Vertical axis description.
    pub y_desc: &'a str,
    /// What the colour means (above the colour bar).
    pub scale_label: &'a str,
}

const POSITIVE: [(f64, (u8, u8, u8)); 3] = [
    (0.0, (255, 255, 255)),
    (0.5, (253, 174, 97)),
    (1.0, (165, 0, 38)),
];
const NEGATIVE: [(f64, (u8, u8, u8)); 3] = [
    (0.0, (255, 255, 255)),
    (0.5, (171, 217, 233)),
    (1.0, (49, 54, 149)),
];
const MISSING: RGBColor = RGBColor(200, 200, 200);

/// How values map to colours: `frac(v) = sign(v) ln(1 + |v| / knee) / ln(1 + limit / knee)`,
/// in `[-1, 1]`, with `limit` the largest finite `|v|` and `knee` the median one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    /// The largest absolute value (the ends of the colour bar).
    pub limit: f64,
    /// Where the scale turns from linear to logarithmic.
    pub knee: f64,
}

impl Scale {
    /// The scale of `values` (NaN and infinities ignored).
    pub fn fit(values: &[f64]) -> Self {
        let mut abs: Vec<f64> = values
            .iter()
            .filter(|v| v.is_finite())
            .map(|v| v.abs())
            .collect();
        abs.sort_by(f64::total_cmp);
        let limit = abs.last().copied().filter(|&m| m > 0.0).unwrap_or(1.0);
        let median = abs.get(abs.len() / 2).copied().unwrap_or(0.0);
        let knee = if median > 0.0 { median } else { limit / 100.0 };
        Self { limit, knee }
    }

    fn log_span(&self) -> f64 {
        (self.limit / self.knee).ln_1p()
    }

    /// `v`'s place on the scale, in `[-1, 1]` (NaN for NaN).
    pub fn frac(&self, v: f64) -> f64 {
        if v.is_nan() {
            return f64::NAN;
        }
        let f = (v.abs() / self.knee).ln_1p() / self.log_span();
        f.min(1.0).copysign(v)
    }
}

/// The colour at place `f` in `[-1, 1]` of the scale (grey for NaN).
pub fn colour(f: f64) -> RGBColor {
    if !f.is_finite() {
        return MISSING;
    }
    let t = f.clamp(-1.0, 1.0);
    let stops = if t >= 0.0 { &POSITIVE } else { &NEGATIVE };
    let t = t.abs();
    let i = if t <= stops[1].0 { 0 } else { 1 };
    let (t0, a) = stops[i];
    let (t1, b) = stops[i + 1];
    let f = ((t - t0) / (t1 - t0)).clamp(0.0, 1.0);
    let mix = |x: u8, y: u8| (f64::from(x) + f * (f64::from(y) - f64::from(x))).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// A value as printed in a cell: 3 significant digits, signed.
fn cell_text(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a > 0.0 && a < 0.001 {
        format!("{v:+.1e}")
    } else if a >= 100.0 {
        format!("{v:+.0}")
    } else if a >= 10.0 {
        format!("{v:+.1}")
    } else if a >= 1.0 {
        format!("{v:+.2}")
    } else {
        format!("{v:+.3}")
    }
}

/// A drawing area of the PNG.
type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Draws `map` into `path` (PNG).
pub fn draw_heat_map(map: &HeatMap, path: &Path) -> anyhow::Result<()> {
    let (n_rows, n_cols) = (map.rows.len(), map.columns.len());
    anyhow::ensure!(
        n_rows > 0 && n_cols > 0,
        "nothing to draw: the table is empty"
    );
    let has_text = crate::plot::register_system_font();
    let all: Vec<f64> = map.values.iter().flatten().copied().collect();
    let scale = Scale::fit(&all);

    let cell_w = 84u32;
    let cell_h = if n_rows > 40 { 16u32 } else { 24 };
    let bar_w = 150u32;
    // Wide enough for the cells and for the caption (about 10 px a character at 18 px).
    let title_w = 10 * map.title.chars().count() as u32 + 40;
    let width = (110 + cell_w * n_cols as u32 + bar_w)
        .max(560)
        .max(title_w + bar_w);
    let height = (150 + cell_h * n_rows as u32).max(300);
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (main, bar) = root.split_horizontally(width - bar_w);

    let mut builder = ChartBuilder::on(&main);
    builder
        .margin(12)
        .x_label_area_size(if has_text { 64 } else { 0 })
        .y_label_area_size(if has_text { 64 } else { 0 });
    if has_text {
        builder.caption(map.title, ("sans-serif", 18));
    }
    let (w, h) = (n_cols as f64, n_rows as f64);
    let mut chart = builder.build_cartesian_2d(0.0..w, 0.0..h)?;
    // Row 0 at the top: row r spans y in [h - r - 1, h - r].
    let cell = |r: usize, c: usize| {
        let (x, y) = (c as f64, h - r as f64);
        [(x, y - 1.0), (x + 1.0, y)]
    };
    let value = |r: usize, c: usize| {
        map.values
            .get(r)
            .and_then(|row| row.get(c))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let cells = || (0..n_rows).flat_map(|r| (0..n_cols).map(move |c| (r, c)));
    chart.draw_series(
        cells().map(|(r, c)| Rectangle::new(cell(r, c), colour(scale.frac(value(r, c))).filled())),
    )?;
    chart.draw_series(cells().map(|(r, c)| Rectangle::new(cell(r, c), WHITE.stroke_width(1))))?;
    if has_text {
        let size = if cell_h < 20 { 10 } else { 12 };
        let centre = Pos::new(HPos::Center, VPos::Center);
        chart.draw_series(cells().map(|(r, c)| {
            let v = value(r, c);
            let dark = v.is_finite() && scale.frac(v).abs() > 0.6;
            let style = TextStyle::from(("sans-serif", size).into_font())
                .color(if dark { &WHITE } else { &BLACK })
                .pos(centre);
            Text::new(cell_text(v), (c as f64 + 0.5, h - r as f64 - 0.5), style)
        }))?;
        draw_axis_labels(&root, map, |x, y| chart.backend_coord(&(x, y)))?;
    }
    chart.draw_series(std::iter::once(Rectangle::new(
        [(0.0, 0.0), (w, h)],
        BLACK.stroke_width(1),
    )))?;
    draw_colour_bar(&bar, map, &scale, &all, height, has_text)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The column labels, their groups and the x description under the cells, the row labels and
/// the y description left of them; `px` places chart coordinates (a cell is 1 x 1, row 0 at
/// the top) in pixels.
fn draw_axis_labels(
    root: &Area<'_>,
    map: &HeatMap,
    px: impl Fn(f64, f64) -> (i32, i32),
) -> anyhow::Result<()> {
    let (w, h) = (map.columns.len() as f64, map.rows.len() as f64);
    let font = |size: u32, pos: Pos| TextStyle::from(("sans-serif", size).into_font()).pos(pos);
    let top = Pos::new(HPos::Center, VPos::Top);
    for (c, label) in map.columns.iter().enumerate() {
        let (x, y) = px(c as f64 + 0.5, 0.0);
        root.draw(&Text::new(label.clone(), (x, y + 5), font(13, top)))?;
    }
    let mut first = 0;
    for (label, span) in &map.column_groups {
        let (x0, y) = px(first as f64, 0.0);
        let (x1, _) = px((first + span) as f64, 0.0);
        root.draw(&PathElement::new(
            vec![(x0 + 4, y + 22), (x1 - 4, y + 22)],
            BLACK.stroke_width(1),
        ))?;
        root.draw(&Text::new(
            label.clone(),
            ((x0 + x1) / 2, y + 25),
            font(13, top),
        ))?;
        first += span;
    }
    let (x_mid, y_axis) = px(w / 2.0, 0.0);
    root.draw(&Text::new(
        map.x_desc.to_string(),
        (x_mid, y_axis + 44),
        font(14, top),
    ))?;
    let right = Pos::new(HPos::Right, VPos::Center);
    for (r, label) in map.rows.iter().enumerate() {
        let (x, y) = px(0.0, h - r as f64 - 0.5);
        root.draw(&Text::new(label.clone(), (x - 6, y), font(13, right)))?;
    }
    let (x_axis, y_mid) = px(0.0, h / 2.0);
    let centre = Pos::new(HPos::Center, VPos::Center);
    root.draw(&Text::new(
        map.y_desc.to_string(),
        (x_axis - 44, y_mid),
        font(14, centre).transform(FontTransform::Rotate270),
    ))?;
    Ok(())
}

/// The colour bar, from the lowest value (0 without negative values) to the largest, with
/// ticks and its label when there is a font, and a swatch for non-finite cells.
fn draw_colour_bar(
    bar: &Area<'_>,
    map: &HeatMap,
    scale: &Scale,
    all: &[f64],
    height: u32,
    has_text: bool,
) -> anyhow::Result<()> {
    let lowest = all
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::min);
    let (f_lo, f_hi) = (scale.frac(lowest), 1.0);
    let (bx0, bx1) = (20i32, 46i32);
    let (by0, by1) = (60i32, height as i32 - 80);
    let span = (by1 - by0).max(2);
    for y in by0..by1 {
        let f = f64::from(by1 - 1 - y) / f64::from(span - 1);
        bar.draw(&Rectangle::new(
            [(bx0, y), (bx1, y + 1)],
            colour(f_lo + f * (f_hi - f_lo)).filled(),
        ))?;
    }
    bar.draw(&Rectangle::new(
        [(bx0, by0), (bx1, by1)],
        BLACK.stroke_width(1),
    ))?;
    if !has_text {
        return Ok(());
    }
    let left = Pos::new(HPos::Left, VPos::Center);
    let font = TextStyle::from(("sans-serif", 13).into_font()).pos(left);
    let y_of = |v: f64| {
        let f = (scale.frac(v) - f_lo) / (f_hi - f_lo);
        by1 - (f * f64::from(span)).round() as i32
    };
    for (v, y) in bar_ticks(scale.limit, lowest, y_of) {
        bar.draw(&PathElement::new(vec![(bx1, y), (bx1 + 5, y)], BLACK))?;
        bar.draw(&Text::new(cell_text(v), (bx1 + 8, y), font.clone()))?;
    }
    bar.draw(&Text::new(
        map.scale_label.to_string(),
        (8, by0 - 28),
        ("sans-serif", 14).into_font(),
    ))?;
    if all.iter().any(|v| !v.is_finite()) {
        bar.draw(&Rectangle::new(
            [(bx0, by1 + 20), (bx1, by1 + 34)],
            MISSING.filled(),
        ))?;
        bar.draw(&Text::new(
            "non-finite".to_string(),
            (bx1 + 8, by1 + 27),
            font,
        ))?;
    }
    Ok(())
}

/// The colour bar's ticks between `lowest` and `limit`, each with its pixel row `y_of(v)`: the
/// ends and 0 first, then powers of ten in between; a tick too close to one placed before it is
/// left out.
fn bar_ticks(limit: f64, lowest: f64, y_of: impl Fn(f64) -> i32) -> Vec<(f64, i32)> {
    let mut candidates = vec![limit, lowest, 0.0];
    for k in -4..=4 {
        let p = 10f64.powi(k);
        for v in [p, -p, 3.0 * p, -3.0 * p] {
            if v > lowest && v < limit {
                candidates.push(v);
            }
        }
    }
    let mut ticks: Vec<(f64, i32)> = Vec::new();
    for v in candidates {
        let y = y_of(v);
        if ticks.iter().all(|&(_, other)| (other - y).abs() >= 16) {
            ticks.push((v, y));
        }
    }
    ticks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_diverge_around_zero() {
        assert_eq!(colour(0.0), RGBColor(255, 255, 255));
        assert_eq!(colour(1.0), RGBColor(165, 0, 38));
        assert_eq!(colour(5.0), RGBColor(165, 0, 38));
        assert_eq!(colour(-1.0), RGBColor(49, 54, 149));
        assert_eq!(colour(0.5), RGBColor(253, 174, 97));
        assert_eq!(colour(f64::NAN), MISSING);
        // Positive values are red-ish (more red than blue), negative blue-ish.
        let p = colour(0.3);
        let n = colour(-0.3);
        assert!(p.0 > p.2 && n.2 > n.0, "{p:?} {n:?}");
    }

    #[test]
    fn scale_is_symmetric_log_from_the_median_to_the_largest() {
        let s = Scale::fit(&[0.01, -0.02, 0.03, 5.0, f64::NAN, f64::INFINITY]);
        assert_eq!((s.limit, s.knee), (5.0, 0.03));
        assert_eq!(s.frac(5.0), 1.0);
        assert_eq!(s.frac(-5.0), -1.0);
        assert_eq!(s.frac(0.0), 0.0);
        assert!(s.frac(f64::NAN).is_nan());
        // At the knee: ln 2 / ln(1 + limit / knee), well above a linear scale's 0.006.
        let f = s.frac(0.03);
        assert!((f - 2f64.ln() / (1.0 + 5.0 / 0.03f64).ln()).abs() < 1e-12);
        assert!(f > 0.1);
        // Monotone.
        let fs: Vec<f64> = [-5.0, -1.0, -0.01, 0.0, 0.01, 1.0, 5.0]
            .iter()
            .map(|&v| s.frac(v))
            .collect();
        assert!(fs.windows(2).all(|w| w[0] < w[1]), "{fs:?}");
        // No values, or only zeros.
        assert_eq!(
            Scale::fit(&[]),
            Scale {
                limit: 1.0,
                knee: 0.01
            }
        );
        assert_eq!(Scale::fit(&[0.0, 0.0]).limit, 1.0);
        assert_eq!(cell_text(0.01234), "+0.012");
        assert_eq!(cell_text(-12.34), "-12.3");
        assert_eq!(cell_text(0.0003), "+3.0e-4");
        assert_eq!(cell_text(0.0), "+0.000");
    }

    #[test]
    fn draws_a_png() {
        let dir = std::env::temp_dir().join(format!("heatmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("map.png");
        let map = HeatMap {
            title: "test",
            rows: vec!["0".into(), "1".into()],
            columns: vec!["a".into(), "b".into(), "c".into()],
            column_groups: vec![("ab".into(), 2), ("c".into(), 1)],
            values: vec![vec![0.1, -0.2, f64::NAN], vec![3.0, 0.0, 0.5]],
            x_desc: "column",
            y_desc: "row",
            scale_label: "value",
        };
        draw_heat_map(&map, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).ok();
    }
}
