//! Pictures (plotters, PNG or SVG by the file's extension): the fusion-attention heatmap, training
//! curves, and the demo's accuracy bars.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

/// Pictures are best-effort: a picture that cannot be drawn (no system font, an unwritable
/// path) is a warning, and the results the run writes never depend on it.
pub fn best_effort(path: &Path, drawn: anyhow::Result<()>) {
    if let Err(e) = drawn {
        tracing::warn!("{}: picture not drawn: {e:#}", path.display());
    }
}

/// TrueType fonts looked for, in order, to draw text (plotters' ab_glyph needs one font file).
const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a system font as plotters' `sans-serif` (once).
fn font() -> anyhow::Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let path = std::env::var_os("SINEW_FONT")
            .map(std::path::PathBuf::from)
            .into_iter()
            .chain(FONTS.iter().map(std::path::PathBuf::from))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                "no TrueType font found for pictures: install fonts-dejavu-core or set SINEW_FONT=FILE.ttf"
                    .to_string()
            })?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
            .map_err(|_| format!("{}: not a usable TrueType font", path.display()))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Draws with `$draw(area, args…)` on a PNG or SVG backend, by `$path`'s extension.
macro_rules! render {
    ($path:expr, $size:expr, $draw:ident($($arg:expr),* $(,)?)) => {{
        font()?;
        let path: &Path = $path;
        match path.extension().and_then(|e| e.to_str()) {
            Some("png") => $draw(BitMapBackend::new(path, $size).into_drawing_area(), $($arg),*),
            Some("svg") => $draw(SVGBackend::new(path, $size).into_drawing_area(), $($arg),*),
            _ => bail!("{}: the picture must be a .png or .svg file", path.display()),
        }
        .with_context(|| format!("drawing {}", path.display()))
    }};
}

/// A heatmap of `values[row][col]` in [0, 1] with its numbers written in the cells.
pub fn heatmap(
    path: &Path,
    title: &str,
    rows: &[String],
    cols: &[String],
    values: &[Vec<f32>],
) -> anyhow::Result<()> {
    let size = (160 + 110 * cols.len() as u32, 120 + 40 * rows.len() as u32);
    render!(path, size, draw_heatmap(title, rows, cols, values))
}

/// Line plots of named `(x, y)` series on shared axes.
pub fn curves(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    render!(path, (800, 480), draw_curves(title, x_label, series))
}

/// One bar per name (e.g. accuracy per method), values in [0, 1].
pub fn bars(path: &Path, title: &str, names: &[String], values: &[f64]) -> anyhow::Result<()> {
    render!(
        path,
        (200 + 120 * names.len() as u32, 480),
        draw_bars(title, names, values)
    )
}

/// Distinct colours for series.
fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    PALETTE[i % PALETTE.len()]
}

fn draw_curves<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    area.fill(&WHITE).map_err(err)?;
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let style = colour(i).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour(i)));
        if points.len() < 30 {
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&p| Circle::new(p, 3, colour(i).filled())),
                )
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    area.present().map_err(err)?;
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    names: &[String],
    values: &[f64],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    area.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..names.len()).into_segmented(), 0.0..1.05f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len())
        .x_label_formatter(&|v| label(names, v))
        .y_desc("accuracy")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, &v)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), v),
                ],
                colour(i).filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            bar
        }))
        .map_err(err)?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, &v)| {
            Text::new(
                format!("{v:.3}"),
                (SegmentValue::CenterOf(i), v + 0.01),
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))
        .map_err(err)?;
    area.present().map_err(err)?;
    Ok(())
}

fn draw_heatmap<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    rows: &[String],
    cols: &[String],
    values: &[Vec<f32>],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    area.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(120)
        .build_cartesian_2d(
            (0..cols.len()).into_segmented(),
            (0..rows.len()).into_segmented(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(cols.len())
        .y_labels(rows.len())
        .x_label_formatter(&|v| label(cols, v))
        .y_label_formatter(&|v| label(rows, v))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let cells = values
        .iter()
        .enumerate()
        .flat_map(|(r, row)| row.iter().enumerate().map(move |(c, &v)| (r, c, v)));
    chart
        .draw_series(cells.clone().map(|(r, c, v)| {
            let shade = RGBColor(
                (255.0 * (1.0 - v)) as u8,
                (255.0 * (1.0 - 0.6 * v)) as u8,
                255,
            );
            Rectangle::new(
                [
                    (SegmentValue::Exact(c), SegmentValue::Exact(r)),
                    (SegmentValue::Exact(c + 1), SegmentValue::Exact(r + 1)),
                ],
                shade.filled(),
            )
        }))
        .map_err(err)?;
    chart
        .draw_series(cells.map(|(r, c, v)| {
            Text::new(
                format!("{v:.3}"),
                (SegmentValue::CenterOf(c), SegmentValue::CenterOf(r)),
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            )
        }))
        .map_err(err)?;
    area.present().map_err(err)?;
    Ok(())
}

fn label(names: &[String], v: &SegmentValue<usize>) -> String {
    match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            names.get(*i).cloned().unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    }
}
