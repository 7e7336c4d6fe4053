//! `uminfer bench --phases`: where a scheme's request time goes. After the
//! timed run each scheme runs `--requests` more requests, each split into
//! phases that the harness and the scheme measure: writing the input into
//! the scheme's memory, the request (split by the scheme where it can: its
//! session's own pass and the hand-off to the session thread, device time
//! from CUDA events on a GPU), and reading the outputs out. The last phase
//! of each split is the rest of what was measured around it, so a
//! request's phases add up to its total, and their means to the mean total.
//! A gRPC scheme adds its server's own account (Triton's `ModelStatistics`:
//! queue, compute input, compute infer, compute output), per request on
//! average. The timed run is never split: its requests run as before.

use serde::Serialize;
use std::time::Duration;

/// One phase over the split requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    pub name: String,
    pub p50_us: f64,
    pub mean_us: f64,
    /// Its share of the mean total.
    pub share: f64,
}

/// A server's own account of the split requests, per request on average.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerPhase {
    pub name: String,
    pub mean_us: f64,
}

/// A scheme's requests split into phases.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseBreakdown {
    /// Requests split.
    pub requests: usize,
    /// In request order: write input, the request's phases, read outputs.
    pub phases: Vec<Phase>,
    /// P50 of the requests' totals (the sum of their phases).
    pub total_p50_us: f64,
    /// Mean of the totals: the sum of the phases' means.
    pub total_mean_us: f64,
    /// P50 of the request's own phases (without writing the input and
    /// reading the outputs): the span the timed run times.
    pub request_p50_us: f64,
    /// Server schemes with statistics (gRPC): the server's phases, means.
    pub server: Vec<ServerPhase>,
    /// With the server's account: the mean round trip less the server's
    /// phases, i.e. what the client and the transport took.
    pub client_and_transport_us: Option<f64>,
    /// The timed run's P50, and `request_p50_us` over it: how far splitting
    /// (and the time between the two runs) moved the figure.
    pub timed_p50_us: Option<f64>,
    pub request_p50_vs_timed: Option<f64>,
}

/// One request's phases, in order: each one's name and time.
pub type Phases = Vec<(&'static str, Duration)>;

/// How a server scheme's request phase is named (then what it holds).
pub const ROUND_TRIP: &str = "round trip";
/// The shared-memory schemes' request phase.
pub const ROUND_TRIP_SHM: &str = "round trip (transport and server)";
/// The gRPC schemes' request phase.
pub const ROUND_TRIP_GRPC: &str = "round trip (client, transport and server)";

/// Collects the phases of each split request.
#[derive(Default)]
pub(super) struct PhaseRecorder {
    /// Phase names in first-seen order, and each phase's times.
    phases: Vec<(&'static str, Vec<Duration>)>,
    totals: Vec<Duration>,
    /// The sums of the requests' own phases.
    requests: Vec<Duration>,
}

impl PhaseRecorder {
    /// One request's phases, in order; those in `request` are the request's
    /// own (the rest: writing its input before, reading its outputs after).
    pub fn record(&mut self, phases: &[(&'static str, Duration)], request: std::ops::Range<usize>) {
        for &(name, d) in phases {
            match self.phases.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(d),
                None => self.phases.push((name, vec![d])),
            }
        }
        self.totals.push(phases.iter().map(|(_, d)| *d).sum());
        self.requests.push(phases.get(request).unwrap_or_default().iter().map(|(_, d)| *d).sum());
    }

    /// The breakdown, with the server's account (total time per phase over
    /// the split requests) divided among them.
    pub fn breakdown(&self, server: Phases, timed_p50_us: Option<f64>) -> PhaseBreakdown {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let n = self.totals.len().max(1) as f64;
        let total_mean = self.totals.iter().map(|d| us(*d)).sum::<f64>() / n;
        let phases: Vec<Phase> = self
            .phases
            .iter()
            .map(|(name, v)| {
                // A phase missing from some requests counts 0 there.
                let mean = v.iter().map(|d| us(*d)).sum::<f64>() / n;
                Phase { name: name.to_string(), p50_us: p50(v), mean_us: mean, share: if total_mean > 0.0 { mean / total_mean } else { 0.0 } }
            })
            .collect();
        let server: Vec<ServerPhase> = server.into_iter().map(|(name, total)| ServerPhase { name: name.to_string(), mean_us: us(total) / n }).collect();
        let round_trip = phases.iter().find(|p| p.name.starts_with(ROUND_TRIP)).map(|p| p.mean_us);
        let client_and_transport_us = round_trip.filter(|_| !server.is_empty()).map(|rt| rt - server.iter().map(|p| p.mean_us).sum::<f64>());
        let request_p50_us = p50(&self.requests);
        let request_p50_vs_timed = timed_p50_us.filter(|t| *t > 0.0).map(|t| request_p50_us / t);
        PhaseBreakdown {
            requests: self.totals.len(),
            phases,
            total_p50_us: p50(&self.totals),
            total_mean_us: total_mean,
            request_p50_us,
            server,
            client_and_transport_us,
            timed_p50_us,
            request_p50_vs_timed,
        }
    }
}

/// The median of `v`, in µs (0 when empty).
fn p50(v: &[Duration]) -> f64 {
    let mut s: Vec<Duration> = v.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// `write input 12.3 (4 %) | forward pass 270.1 (95 %) | ... = 284.0 mean, 281.2 P50`.
pub fn line(b: &PhaseBreakdown) -> String {
    let phases: Vec<String> = b.phases.iter().map(|p| format!("{} {:.1} ({:.0} %)", p.name, p.mean_us, p.share * 100.0)).collect();
    let mut s = format!("{} = {:.1} mean, {:.1} P50", phases.join(" | "), b.total_mean_us, b.total_p50_us);
    if !b.server.is_empty() {
        let server: Vec<String> = b.server.iter().map(|p| format!("{} {:.1}", p.name, p.mean_us)).collect();
        s.push_str(&format!("; the server's account: {}", server.join(", ")));
    }
    if let Some(rest) = b.client_and_transport_us {
        s.push_str(&format!("; the round trip less the server's: {rest:.1}"));
    }
    if let (Some(timed), Some(ratio)) = (b.timed_p50_us, b.request_p50_vs_timed) {
        s.push_str(&format!("; the request alone {:.1} P50, {ratio:.2} × the timed run's {timed:.1}", b.request_p50_us));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_to_the_totals() {
        let mut r = PhaseRecorder::default();
        let us = Duration::from_micros;
        r.record(&[("write input", us(10)), ("round trip (x)", us(100)), ("read outputs", us(2))], 1..2);
        r.record(&[("write input", us(20)), ("round trip (x)", us(300)), ("read outputs", us(4))], 1..2);
        r.record(&[("write input", us(30)), ("round trip (x)", us(200))], 1..2);
        let b = r.breakdown(vec![("compute infer", us(450))], Some(160.0));
        assert_eq!(b.requests, 3);
        assert_eq!(b.phases.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["write input", "round trip (x)", "read outputs"]);
        let sum: f64 = b.phases.iter().map(|p| p.mean_us).sum();
        assert!((sum - b.total_mean_us).abs() < 1e-9 && (b.total_mean_us - 222.0).abs() < 1e-9, "{b:?}");
        assert_eq!((b.phases[1].p50_us, b.total_p50_us), (200.0, 230.0));
        assert!((b.phases.iter().map(|p| p.share).sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(b.server, [ServerPhase { name: "compute infer".into(), mean_us: 150.0 }]);
        assert_eq!(b.client_and_transport_us, Some(50.0));
        assert_eq!((b.request_p50_us, b.request_p50_vs_timed), (200.0, Some(1.25)));
        assert!(
            line(&b).contains("= 222.0 mean, 230.0 P50; the server's account: compute infer 150.0; the round trip less the server's: 50.0; the request alone 200.0 P50, 1.25 × the timed run's 160.0"),
            "{}",
            line(&b)
        );
    }
}
