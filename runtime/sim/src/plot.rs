//! Plots as SVG and PNG (plotters): the latency CDF of every strategy per scenario, and the
//! load on each backend over time per (scenario, strategy).
//!
//! Text in the PNGs needs a TrueType font: DejaVu Sans from the system (Debian's
//! `fonts-dejavu-core`, which `scripts/setup` installs), registered once.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::engine::{BUCKETS, RunResult};

/// Where DejaVu Sans lives on Debian and a few other systems.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a system font for plot text, once.
///
/// # Errors
/// No usable font on this system.
pub fn ensure_font() -> Result<(), String> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        for path in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(path) {
                // Registered for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(format!("no TrueType font for plot text (looked for {}); install fonts-dejavu-core", FONT_PATHS.join(", ")))
    })
    .clone()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn cdf_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[(String, &RunResult)],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let max_ms =
        series.iter().filter_map(|(_, r)| r.latencies_us.last()).map(|us| f64::from(*us) / 1000.0).fold(1.0, f64::max)
            * 1.2;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(56)
        .build_cartesian_2d((0.05f64..max_ms).log_scale(), 0f64..1.0)
        .map_err(err)?;
    chart.configure_mesh().x_desc("request latency, ms (log)").y_desc("fraction of requests").draw().map_err(err)?;
    for (i, (name, run)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let lat = &run.latencies_us;
        if lat.is_empty() {
            continue;
        }
        let points = (0..=400).map(|k| {
            let idx = k * (lat.len() - 1) / 400;
            #[allow(clippy::cast_precision_loss)]
            let y = (idx + 1) as f64 / lat.len() as f64;
            ((f64::from(lat[idx]) / 1000.0).max(0.05), y)
        });
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

fn load_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    ids: &[String],
    run: &RunResult,
    duration_s: f64,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    #[allow(clippy::cast_precision_loss)]
    let bucket_s = duration_s / BUCKETS as f64;
    let max_rps = run.series.iter().flatten().map(|c| f64::from(*c) / bucket_s).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..duration_s, 0f64..max_rps)
        .map_err(err)?;
    chart.configure_mesh().x_desc("time, s").y_desc("requests routed per second").draw().map_err(err)?;
    for (b, id) in ids.iter().enumerate() {
        let color = Palette99::pick(b).to_rgba();
        #[allow(clippy::cast_precision_loss)]
        let points =
            run.series.iter().enumerate().map(|(k, row)| ((k as f64 + 0.5) * bucket_s, f64::from(row[b]) / bucket_s));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(id.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

const SIZE: (u32, u32) = (1000, 640);

/// Writes `cdf-SCENARIO.svg` and `.png` into `dir`; the paths written.
///
/// # Errors
/// A drawing or file error.
pub fn cdf(dir: &Path, scenario: &str, series: &[(String, &RunResult)]) -> Result<Vec<PathBuf>, String> {
    ensure_font()?;
    let title = format!("{scenario}: latency CDF by strategy (seed 1)");
    let svg = dir.join(format!("cdf-{scenario}.svg"));
    let png = dir.join(format!("cdf-{scenario}.png"));
    cdf_chart(&SVGBackend::new(&svg, SIZE).into_drawing_area(), &title, series)?;
    cdf_chart(&BitMapBackend::new(&png, SIZE).into_drawing_area(), &title, series)?;
    Ok(vec![svg, png])
}

/// Writes `load-SCENARIO-STRATEGY.svg` and `.png` into `dir`; the paths written.
///
/// # Errors
/// A drawing or file error.
pub fn load(
    dir: &Path,
    scenario: &str,
    strategy: &str,
    ids: &[String],
    run: &RunResult,
    duration_s: f64,
) -> Result<Vec<PathBuf>, String> {
    ensure_font()?;
    let title = format!("{scenario} / {strategy}: load per backend (seed 1)");
    let file = format!("load-{scenario}-{}", strategy.replace([':', '+'], "_"));
    let svg = dir.join(format!("{file}.svg"));
    let png = dir.join(format!("{file}.png"));
    load_chart(&SVGBackend::new(&svg, SIZE).into_drawing_area(), &title, ids, run, duration_s)?;
    load_chart(&BitMapBackend::new(&png, SIZE).into_drawing_area(), &title, ids, run, duration_s)?;
    Ok(vec![svg, png])
}
