//! The latency picture: one cumulative distribution per scheme on a log time axis.

use super::stats::{SchemeResult, Status};
use crate::error::{Error, Result, SessionErrorKind};
use plotters::prelude::*;
use std::path::Path;

/// Draws every measured scheme's latency CDF into an SVG file.
pub fn cdf_svg(results: &[SchemeResult], title: &str, path: &Path) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| Error::session(SessionErrorKind::Failed, format!("drawing {}: {e}", path.display()));
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

/// Draws requests/s against P99 latency, one line per model and scheme over
/// its concurrencies (each point labelled `K=`), into an SVG file.
pub fn throughput_svg(results: &[super::throughput::ThroughputResult], title: &str, path: &Path) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| Error::session(SessionErrorKind::Failed, format!("drawing {}: {e}", path.display()));
    // (model, scheme) → its points (requests/s, P99 ms, K).
    type Line = ((String, String), Vec<(f64, f64, usize)>);
    let mut lines: Vec<Line> = Vec::new();
    for r in results {
        let key = (r.model.clone(), r.scheme.clone());
        let point = (r.requests_per_s, r.latency.p99_us / 1e3, r.concurrency);
        match lines.iter_mut().find(|(k, _)| *k == key) {
            Some((_, pts)) => pts.push(point),
            None => lines.push((key, vec![point])),
        }
    }
    let x_hi = results.iter().map(|r| r.requests_per_s).fold(1.0, f64::max) * 1.15;
    let y_lo = results.iter().map(|r| r.latency.p99_us / 1e3).fold(f64::INFINITY, f64::min).max(1e-3);
    let y_hi = results.iter().map(|r| r.latency.p99_us / 1e3).fold(1e-3, f64::max);
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..x_hi, (y_lo / 1.5..y_hi * 1.5).log_scale())
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("throughput, requests/s").y_desc("P99 latency, ms (log scale)").draw().map_err(|e| err(&e))?;
    for (i, ((model, scheme), pts)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("{model} {scheme}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 3, color.filled())))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(pts.iter().map(|p| Text::new(format!("K={}", p.2), (p.0, p.1), ("sans-serif", 12))))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
