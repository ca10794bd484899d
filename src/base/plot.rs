//! Line charts rendered to PNG with plotters, with a font shipped in the
//! binary (so plots need no system fonts), written atomically.

use std::path::Path;
use std::sync::Once;

use image::ImageEncoder;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::base::error::{Error, Result};
use crate::base::io::atomic_write;

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stroke {
    /// A solid line with a dot at each point.
    Solid,
    /// A dashed line with a dot at each point.
    Dashed,
    /// A thin line without dots (reference curves).
    Thin,
    /// Dots only, no line (reference values).
    Markers,
}

/// One named curve.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points `(x, y)`, drawn in order.
    pub points: Vec<(f64, f64)>,
    /// Colour as RGB.
    pub color: (u8, u8, u8),
    /// How the curve is drawn.
    pub stroke: Stroke,
}

/// One chart: axes, labels and curves.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    /// Title above the chart.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// Formats x tick values (e.g. `2^v` for a log2 axis; an empty string
    /// hides a tick's label); plain numbers if `None`.
    pub x_ticks: Option<fn(f64) -> String>,
    /// The curves.
    pub series: Vec<Series>,
}

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/DejaVuSans.ttf");
        // The font is compiled in and known to parse; a failure would only lose text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.06).max(1e-3);
    (lo - pad, hi + pad)
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| Error::Plot(e.to_string());
    let points = || panel.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = range(points().map(|p| p.0));
    let (y0, y1) = range(points().map(|p| p.1));
    // Headroom above the curves for the legend.
    let y1 = y1 + 0.6 * (y1 - y0);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let x_fmt = |v: &f64| match panel.x_ticks {
        Some(f) => f(*v),
        None => format!("{v}"),
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .x_label_formatter(&x_fmt)
        .light_line_style(RGBColor(235, 235, 235))
        .y_max_light_lines(1);
    if panel.x_ticks.is_some() {
        // Many candidate ticks, so that the ones the formatter labels exist;
        // no vertical grid lines for the unlabelled ones.
        mesh.x_labels(40).disable_x_mesh();
    }
    mesh.draw().map_err(err)?;
    for s in &panel.series {
        draw_series(&mut chart, s)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// One series on `chart`, in its stroke, with its legend entry.
fn draw_series<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    s: &Series,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| Error::Plot(e.to_string());
    let color = RGBColor(s.color.0, s.color.1, s.color.2);
    let pts = s.points.iter().copied();
    let anno = match s.stroke {
        Stroke::Solid => chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?,
        Stroke::Dashed => chart
            .draw_series(DashedLineSeries::new(
                pts.clone(),
                8,
                5,
                color.stroke_width(2),
            ))
            .map_err(err)?,
        Stroke::Thin => chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(1)))
            .map_err(err)?,
        Stroke::Markers => chart
            .draw_series(pts.clone().map(|p| Cross::new(p, 5, color.stroke_width(2))))
            .map_err(err)?,
    };
    let markers = matches!(s.stroke, Stroke::Markers);
    anno.label(&s.name)
        .legend(move |(x, y)| -> DynElement<_, _> {
            if markers {
                Cross::new((x + 9, y), 5, color.stroke_width(2)).into_dyn()
            } else {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)).into_dyn()
            }
        });
    if matches!(s.stroke, Stroke::Solid | Stroke::Dashed) {
        chart
            .draw_series(pts.map(|p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    Ok(())
}

/// Renders `panels` in a grid of `cols` columns, each `panel_size` pixels, to
/// the PNG file `path` (atomically).
pub fn write_png(path: &Path, panels: &[Panel], cols: usize, panel_size: (u32, u32)) -> Result<()> {
    register_font();
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols).max(1);
    let (w, h) = (panel_size.0 * cols as u32, panel_size.1 * rows as u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let areas = root.split_evenly((rows, cols));
        for (area, panel) in areas.iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        root.present().map_err(|e| Error::Plot(e.to_string()))?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&buf, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    atomic_write(path, &png)
}
