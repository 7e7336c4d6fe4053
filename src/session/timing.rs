//! Per-request timing: host end-to-end and, on GPU, device time from CUDA
//! events, recorded into histograms (no allocation per request).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// Timing of one `run()`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RunTiming {
    /// Host wall time from entering `run()` to the output being readable.
    pub host: Duration,
    /// GPU time between CUDA events recorded around the work on the
    /// session's stream (`None` on CPU).
    pub device: Option<Duration>,
}

/// One request split into phases ([`Session::run_phased`](super::Session::run_phased)).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhasedRun {
    /// As for a plain request.
    pub timing: RunTiming,
    /// On a GPU, the device time split at CUDA events recorded where each
    /// stage of the request begins on the session's stream, in order (e.g.
    /// `device: input copy`, `device: forward pass`, `device: output copy`;
    /// a captured graph is one stage): the phases add up to
    /// `timing.device` within the events' resolution (about 0.5 µs each).
    /// Empty on CPU.
    pub device_phases: Vec<(&'static str, Duration)>,
}

/// Summary statistics of a series, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub std_us: f64,
    pub min_us: f64,
    pub max_us: f64,
}

/// Host and device summaries of a session.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timing {
    pub host: Summary,
    /// `None` when no device time was recorded (CPU sessions).
    pub device: Option<Summary>,
}

/// Records [`RunTiming`]s. Histograms cover 1 ns to 100 s at 3 significant digits.
pub struct TimingRecorder {
    host: Histogram<u64>,
    device: Histogram<u64>,
}

impl Default for TimingRecorder {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 ns .. 100 s, 3 significant figures: fixed size, never resized on record.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("constant, valid histogram bounds")
}

pub(crate) fn summarise(h: &Histogram<u64>) -> Summary {
    let us = |ns: u64| ns as f64 / 1000.0;
    Summary {
        count: h.len(),
        p50_us: us(h.value_at_quantile(0.50)),
        p90_us: us(h.value_at_quantile(0.90)),
        p99_us: us(h.value_at_quantile(0.99)),
        mean_us: h.mean() / 1000.0,
        std_us: h.stdev() / 1000.0,
        min_us: us(h.min()),
        max_us: us(h.max()),
    }
}

impl TimingRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self { host: histogram(), device: histogram() }
    }

    /// Adds one request (values are clamped into the histogram's range).
    pub fn record(&mut self, t: RunTiming) {
        self.host.saturating_record(t.host.as_nanos().clamp(1, u64::MAX as u128) as u64);
        if let Some(d) = t.device {
            self.device.saturating_record(d.as_nanos().clamp(1, u64::MAX as u128) as u64);
        }
    }

    /// The summary so far (`None` before the first request).
    pub fn summary(&self) -> Option<Timing> {
        (!self.host.is_empty()).then(|| Timing {
            host: summarise(&self.host),
            device: (!self.device.is_empty()).then(|| summarise(&self.device)),
        })
    }

    /// The host-time distribution as `steps + 1` points `(µs, fraction at or
    /// below)`, for plotting (empty before the first request).
    pub fn host_cdf(&self, steps: usize) -> Vec<(f64, f64)> {
        if self.host.is_empty() {
            return Vec::new();
        }
        (0..=steps).map(|i| i as f64 / steps as f64).map(|q| (self.host.value_at_quantile(q) as f64 / 1000.0, q)).collect()
    }

    /// Forgets everything recorded (e.g. after warm-up).
    pub fn reset(&mut self) {
        self.host.reset();
        self.device.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_series() {
        let mut r = TimingRecorder::new();
        assert!(r.summary().is_none());
        for us in 1..=100u64 {
            r.record(RunTiming { host: Duration::from_micros(us), device: None });
        }
        let s = r.summary().unwrap();
        assert_eq!(s.host.count, 100);
        assert!((s.host.p50_us - 50.0).abs() < 0.1, "{}", s.host.p50_us);
        assert!((s.host.p90_us - 90.0).abs() < 0.1, "{}", s.host.p90_us);
        assert!((s.host.p99_us - 99.0).abs() < 0.1, "{}", s.host.p99_us);
        assert!((s.host.mean_us - 50.5).abs() < 0.1);
        assert!((s.host.std_us - 28.87).abs() < 0.1, "{}", s.host.std_us);
        assert!(s.device.is_none());
        r.record(RunTiming { host: Duration::from_micros(5), device: Some(Duration::from_micros(3)) });
        assert_eq!(r.summary().unwrap().device.unwrap().count, 1);
        r.reset();
        assert!(r.summary().is_none());
    }
}
