//! Pictures (plotters, PNG or SVG by the file's extension): the fusion-attention heatmap, training
//! curves, and the demo's accuracy bars.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
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

/// A heatmap of `values[row][col]` in [0, 1] with its numbers written in the cells and a colour
/// scale beside it; `rows[0]` is the bottom row.
pub fn heatmap(
    path: &Path,
    title: &str,
    rows: &[String],
    cols: &[String],
    values: &[Vec<f32>],
) -> anyhow::Result<()> {
    font()?;
    let cell = text_width(cols).max(90) + 20;
    let size = (
        text_width(rows) + 40 + cell * cols.len().max(1) as u32 + SCALE_WIDTH,
        110 + 36 * rows.len().max(1) as u32,
    );
    render!(path, size, draw_heatmap(title, rows, cols, values)).map(drop)
}

/// Line plots of named `(x, y)` series on shared axes.
pub fn curves(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    render!(path, (800, 480), draw_curves(title, x_label, series)).map(drop)
}

/// One bar per name (e.g. accuracy per method), values in [0, 1].
pub fn bars(path: &Path, title: &str, names: &[String], values: &[f64]) -> anyhow::Result<()> {
    font()?;
    let slot = text_width(names).max(90) + 30;
    let size = (110 + slot * names.len().max(1) as u32, 480);
    render!(path, size, draw_bars(title, names, values)).map(drop)
}

/// The font size of labels and numbers.
const LABEL_SIZE: u32 = 14;
/// The width of the heatmap's colour scale with its labels, in pixels.
const SCALE_WIDTH: u32 = 100;

/// The widest of `labels` in pixels, as drawn in the label font (a guess if it can't be measured).
fn text_width(labels: &[String]) -> u32 {
    let font = ("sans-serif", LABEL_SIZE).into_font();
    labels
        .iter()
        .map(|l| {
            font.box_size(l)
                .map_or(8 * l.chars().count() as u32, |(w, _)| w)
        })
        .max()
        .unwrap_or(0)
}

/// An axis of `n` categories: category `i` covers `[i, i + 1]` and is labelled at its centre.
/// (Plotters' `(0..n).into_segmented()` counts `0..n` inclusively, one slot too many, and
/// misplaces a lone category, hence plain numbers with the centres as the only key points.)
struct Categories(RangedCoordf64);

fn categories(n: usize) -> Categories {
    Categories((0.0..n.max(1) as f64).into())
}

impl Ranged for Categories {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.0.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        let n = self.0.range().end as usize;
        (0..n).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.0.range()
    }
}

/// The name of the category at `v` on a [`categories`] axis.
fn category(names: &[String], v: f64) -> String {
    if v < 0.0 {
        return String::new();
    }
    names.get(v as usize).cloned().unwrap_or_default()
}

/// A number on a continuous axis: whole numbers (steps, epochs) without a fraction.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let rounded = format!("{v:.6}");
        rounded
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// The plotting area of a chart, in pixels of the picture (for tests).
type Frame = (std::ops::Range<i32>, std::ops::Range<i32>);

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

/// The heatmap's colour of `v` in [0, 1]: white to blue.
fn shade(v: f32) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    RGBColor(
        (255.0 * (1.0 - v)).round() as u8,
        (255.0 * (1.0 - 0.6 * v)).round() as u8,
        255,
    )
}

fn draw_curves<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<Frame>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    area.fill(&WHITE).map_err(err)?;
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let x1 = x1.max(x0 + 1.0);
    // Whole-numbered x (epochs) gets a label on whole numbers only.
    let x_labels = if points().all(|&(x, _)| x.fract() == 0.0) {
        ((x1 - x0) as usize + 1).clamp(2, 10)
    } else {
        10
    };
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .max_light_lines(0)
        .x_labels(x_labels)
        .x_label_formatter(&|&x| number(x))
        .x_desc(x_label)
        .label_style(("sans-serif", LABEL_SIZE))
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
        .label_font(("sans-serif", LABEL_SIZE))
        .draw()
        .map_err(err)?;
    area.present().map_err(err)?;
    Ok(chart.plotting_area().get_pixel_range())
}

fn draw_bars<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    names: &[String],
    values: &[f64],
) -> anyhow::Result<Frame>
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
        .build_cartesian_2d(categories(names.len()), 0.0..1.05f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .max_light_lines(0)
        .x_label_formatter(&|&v| category(names, v))
        .y_desc("accuracy")
        .label_style(("sans-serif", LABEL_SIZE))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, &v)| {
            let mut bar =
                Rectangle::new([(i as f64, 0.0), (i as f64 + 1.0, v)], colour(i).filled());
            bar.set_margin(0, 0, 12, 12);
            bar
        }))
        .map_err(err)?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, &v)| {
            Text::new(
                format!("{v:.3}"),
                (i as f64 + 0.5, v + 0.01),
                ("sans-serif", LABEL_SIZE)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))
        .map_err(err)?;
    area.present().map_err(err)?;
    Ok(chart.plotting_area().get_pixel_range())
}

fn draw_heatmap<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    rows: &[String],
    cols: &[String],
    values: &[Vec<f32>],
) -> anyhow::Result<Frame>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    area.fill(&WHITE).map_err(err)?;
    let body = area
        .margin(12, 0, 0, 0)
        .titled(title, ("sans-serif", 20))
        .map_err(err)?;
    let width = body.dim_in_pixel().0;
    let (map, scale) = body.split_horizontally(width.saturating_sub(SCALE_WIDTH));
    let mut chart = ChartBuilder::on(&map)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(text_width(rows) + 20)
        .build_cartesian_2d(categories(cols.len()), categories(rows.len()))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_label_formatter(&|&v| category(cols, v))
        .y_label_formatter(&|&v| category(rows, v))
        .label_style(("sans-serif", LABEL_SIZE))
        .draw()
        .map_err(err)?;
    let cells = values.iter().enumerate().flat_map(|(r, row)| {
        row.iter()
            .enumerate()
            .map(move |(c, &v)| (r as f64, c as f64, v))
    });
    chart
        .draw_series(cells.clone().map(|(r, c, v)| {
            let mut cell = Rectangle::new([(c, r), (c + 1.0, r + 1.0)], shade(v).filled());
            cell.set_margin(1, 0, 1, 0);
            cell
        }))
        .map_err(err)?;
    chart
        .draw_series(cells.map(|(r, c, v)| {
            Text::new(
                format!("{v:.3}"),
                (c + 0.5, r + 0.5),
                ("sans-serif", LABEL_SIZE)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            )
        }))
        .map_err(err)?;
    // The colour scale: the same height as the cells, labelled on its right.
    let mut bar = ChartBuilder::on(&scale)
        .margin(12)
        .margin_left(16)
        .margin_right(SCALE_WIDTH as i32 - 40)
        .x_label_area_size(40)
        .build_cartesian_2d(0.0..1.0f64, 0.0..1.0f64)
        .map_err(err)?;
    const STEPS: usize = 200;
    bar.draw_series((0..STEPS).map(|i| {
        let (from, to) = (i as f64 / STEPS as f64, (i + 1) as f64 / STEPS as f64);
        Rectangle::new([(0.0, from), (1.0, to)], shade(from as f32).filled())
    }))
    .map_err(err)?;
    bar.plotting_area()
        .draw(&Rectangle::new([(0.0, 0.0), (1.0, 1.0)], BLACK))
        .map_err(err)?;
    let style = ("sans-serif", LABEL_SIZE)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let ticks = match bar.plotting_area().dim_in_pixel().1 {
        h if h >= 200 => 5,
        h if h >= 80 => 2,
        _ => 1,
    };
    for tick in 0..=ticks {
        let v = tick as f64 / ticks as f64;
        let (x, y) = bar.backend_coord(&(1.0, v));
        area.draw(&PathElement::new([(x, y), (x + 4, y)], BLACK))
            .map_err(err)?;
        area.draw(&Text::new(format!("{v:.1}"), (x + 7, y), style.clone()))
            .map_err(err)?;
    }
    area.present().map_err(err)?;
    Ok(chart.plotting_area().get_pixel_range())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> (Vec<String>, Vec<String>, Vec<Vec<f32>>) {
        let rows: Vec<String> = (0..6)
            .flat_map(|l| [format!("layer {l} attention"), format!("layer {l} FFN")])
            .collect();
        let cols: Vec<String> = ["sst2", "rte", "mrpc"].map(String::from).to_vec();
        let values = (0..rows.len())
            .map(|r| {
                let a = 0.05 + 0.07 * r as f32;
                vec![
                    a,
                    0.9 - a - 0.02 * (r % 3) as f32,
                    0.1 + 0.02 * (r % 3) as f32,
                ]
            })
            .collect();
        (rows, cols, values)
    }

    fn methods() -> (Vec<String>, Vec<f64>) {
        let names = ["adapters", "fusion", "head only"]
            .map(String::from)
            .to_vec();
        (names, vec![0.861, 0.874, 0.702])
    }

    /// Width and height of a PNG file, from its IHDR chunk.
    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert!(bytes.len() > 1000, "{}: too small", path.display());
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
        assert_eq!(&bytes[12..16], b"IHDR");
        let word = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
        (word(16), word(20))
    }

    /// Draws into an RGB buffer; returns the pixel at `(x, y)` and the plotting area.
    fn pixels(
        size: (u32, u32),
        draw: impl FnOnce(DrawingArea<BitMapBackend, plotters::coord::Shift>) -> anyhow::Result<Frame>,
    ) -> (impl Fn(i32, i32) -> [u8; 3], Frame) {
        let mut buffer = vec![0u8; (size.0 * size.1 * 3) as usize];
        let frame =
            draw(BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area()).unwrap();
        let at = move |x: i32, y: i32| {
            let i = 3 * (y as usize * size.0 as usize + x as usize);
            [buffer[i], buffer[i + 1], buffer[i + 2]]
        };
        (at, frame)
    }

    #[test]
    fn draws_every_picture() {
        if let Err(e) = font() {
            eprintln!("skipped: {e:#}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols, values) = layers();
        let path = dir.path().join("fusion.png");
        heatmap(
            &path,
            "sst2: mean fusion attention on dev",
            &rows,
            &cols,
            &values,
        )
        .unwrap();
        let (w, h) = png_size(&path);
        assert!(w > 300 && h > 36 * rows.len() as u32, "{w}×{h}");
        let (names, accuracy) = methods();
        let path = dir.path().join("accuracy.png");
        bars(&path, "sst2: test accuracy", &names, &accuracy).unwrap();
        png_size(&path);
        let steps: Vec<(f64, f64)> = (0..400)
            .map(|s| (s as f64, 0.7 * (-(s as f64) / 120.0).exp() + 0.2))
            .collect();
        let path = dir.path().join("loss.png");
        curves(&path, "training loss", "step", &[("loss".into(), steps)]).unwrap();
        assert_eq!(png_size(&path), (800, 480));
        let path = dir.path().join("dev.svg");
        let epochs = vec![(1.0, 0.74), (2.0, 0.79), (3.0, 0.81)];
        curves(
            &path,
            "dev metrics",
            "epoch",
            &[("accuracy".into(), epochs)],
        )
        .unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("<svg"));
        assert!(curves(&dir.path().join("x.jpg"), "", "", &[]).is_err());
    }

    #[test]
    fn cells_and_bars_fill_their_axes() {
        if font().is_err() {
            return;
        }
        let white = [255, 255, 255];
        // The heatmap's top row and right column reach the plotting area's edges.
        let (rows, cols, values) = layers();
        let (at, (x, y)) = pixels((600, 560), |area| {
            draw_heatmap(area, "fusion", &rows, &cols, &values)
        });
        assert_ne!(at(x.end - 4, y.start + 3), white, "top right cell");
        assert_ne!(at(x.start + 4, y.start + 3), white, "top left cell");
        assert_ne!(at(x.end - 4, y.end - 3), white, "bottom right cell");
        // The last bar ends one bar margin from the right edge.
        let (names, accuracy) = methods();
        let (at, (x, y)) = pixels((560, 480), |area| {
            draw_bars(area, "accuracy", &names, &accuracy)
        });
        assert_eq!(<[u8; 3]>::from(colour(2).rgb()), at(x.end - 16, y.end - 3));
        assert_eq!(at(x.end - 8, y.end - 3), white);
        // A single category fills the axis too.
        let one = [String::from("fusion")];
        let (at, (x, y)) = pixels((300, 300), |area| draw_bars(area, "one", &one, &[0.5]));
        assert_ne!(at(x.start + 16, y.end - 3), white);
        assert_ne!(at(x.end - 16, y.end - 3), white);
    }
}
