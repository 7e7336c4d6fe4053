//! The latency picture: one cumulative distribution per scheme on a log time axis.

use super::stats::{SchemeResult, Status};
use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// Draws every measured scheme's latency CDF into an SVG file.
pub fn cdf_svg(results: &[SchemeResult], title: &str, path: &Path) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| Error::Session(format!("drawing {}: {e}", path.display()));
    let measured: Vec<&SchemeResult> = results.iter().filter(|r| r.status == Status::Ok && !r.cdf.is_empty()).collect();
    let lo = measured.iter().flat_map(|r| r.cdf.iter().map(|p| p.0)).fold(f64::INFINITY, f64::min).max(0.1);
    let hi = measured.iter().flat_map(|r| r.cdf.iter().map(|p| p.0)).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((lo / 1.5..hi * 1.5).log_scale(), 0f64..1f64)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("end-to-end latency per request, µs (log scale)")
        .y_desc("fraction of requests at or below")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, r) in measured.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let label = format!("{} (P50 {:.1} µs)", r.scheme, r.p50_us.unwrap_or(0.0));
        chart
            .draw_series(LineSeries::new(r.cdf.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
