//! Pictures (plotters, PNG or SVG by the file's extension): the fusion-attention heatmap.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

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

/// A heatmap of `values[row][col]` in [0, 1] with its numbers written in the cells.
pub fn heatmap(
    path: &Path,
    title: &str,
    rows: &[String],
    cols: &[String],
    values: &[Vec<f32>],
) -> anyhow::Result<()> {
    font()?;
    let size = (160 + 110 * cols.len() as u32, 120 + 40 * rows.len() as u32);
    match path.extension().and_then(|e| e.to_str()) {
        Some("png") => draw(
            BitMapBackend::new(path, size).into_drawing_area(),
            title,
            rows,
            cols,
            values,
        ),
        Some("svg") => draw(
            SVGBackend::new(path, size).into_drawing_area(),
            title,
            rows,
            cols,
            values,
        ),
        _ => bail!(
            "{}: the picture must be a .png or .svg file",
            path.display()
        ),
    }
    .with_context(|| format!("drawing {}", path.display()))
}

fn draw<DB: DrawingBackend>(
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
