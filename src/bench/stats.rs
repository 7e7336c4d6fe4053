//! Results of `uminfer bench`: per-scheme statistics, the table and the JSON.

use crate::session::TimingRecorder;
use serde::Serialize;

/// Outcome of one scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    Unavailable,
}

/// One row of the results.
#[derive(Debug, Clone, Serialize)]
pub struct SchemeResult {
    pub scheme: String,
    pub model: String,
    pub status: Status,
    pub reason: String,
    pub threads: String,
    pub samples: u64,
    pub p50_us: Option<f64>,
    pub p90_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub mean_us: Option<f64>,
    pub std_us: Option<f64>,
    pub min_us: Option<f64>,
    pub max_us: Option<f64>,
    /// Device time P50 from CUDA events (GPU schemes).
    pub device_p50_us: Option<f64>,
    /// This scheme's P50 over `cpu-zero-copy`'s.
    pub p50_vs_cpu_zero_copy: Option<f64>,
    /// This scheme's P50 over `serialize-copy`'s.
    pub p50_vs_serialize_copy: Option<f64>,
    /// For a transport scheme (`shm-ipc`; `oip-grpc`, `oip-grpc-shm`): what
    /// it adds to `cpu-zero-copy` (P50 − `cpu-zero-copy` P50) over its
    /// floor's P50 (`shm-echo`; `grpc-echo`), when both ran: how close the
    /// transport comes to the bare cost of moving its bytes.
    pub transport_vs_floor: Option<f64>,
    /// The CPU flame graph of this process during the scheme's profiled
    /// requests (`--profile DIR`).
    pub profile: Option<String>,
    /// A server scheme's: its server process's flame graph, from the
    /// scheme's profiled requests until the server stopped (written when
    /// the bench ends).
    pub server_profile: Option<String>,
    /// Its requests split into phases (`--phases`).
    pub phases: Option<super::phases::PhaseBreakdown>,
    /// Latency distribution for the plot: (µs, cumulative fraction).
    #[serde(skip)]
    pub cdf: Vec<(f64, f64)>,
}

impl SchemeResult {
    /// A scheme that did not run, with why.
    pub fn without_samples(scheme: &str, model: &str, status: Status, reason: String) -> Self {
        Self {
            scheme: scheme.into(),
            model: model.into(),
            status,
            reason,
            threads: String::new(),
            samples: 0,
            p50_us: None,
            p90_us: None,
            p99_us: None,
            mean_us: None,
            std_us: None,
            min_us: None,
            max_us: None,
            device_p50_us: None,
            p50_vs_cpu_zero_copy: None,
            p50_vs_serialize_copy: None,
            transport_vs_floor: None,
            profile: None,
            server_profile: None,
            phases: None,
            cdf: Vec::new(),
        }
    }

    /// A scheme that ran: statistics of its recorded host (and device) times.
    pub fn measured(scheme: &str, model: &str, threads: String, timing: &TimingRecorder) -> Self {
        let mut r = Self::without_samples(scheme, model, Status::Ok, String::new());
        r.threads = threads;
        if let Some(t) = timing.summary() {
            let h = t.host;
            r.samples = h.count;
            (r.p50_us, r.p90_us, r.p99_us) = (Some(h.p50_us), Some(h.p90_us), Some(h.p99_us));
            (r.mean_us, r.std_us, r.min_us, r.max_us) = (Some(h.mean_us), Some(h.std_us), Some(h.min_us), Some(h.max_us));
            r.device_p50_us = t.device.map(|d| d.p50_us);
            // Floor at 1 ns so that the log-scale plot has no zero.
            r.cdf = timing.host_cdf(200).into_iter().map(|(us, q)| (us.max(0.001), q)).collect();
        }
        r
    }
}

/// The floor scheme of a transport scheme: the same bytes through the same
/// transport to a server that runs no model.
pub fn floor_of(scheme: &str) -> Option<&'static str> {
    match scheme {
        "shm-ipc" => Some("shm-echo"),
        "oip-grpc" | "oip-grpc-shm" => Some("grpc-echo"),
        _ => None,
    }
}

/// Fills the P50 ratios against `cpu-zero-copy` and `serialize-copy` of the
/// same model, and each transport scheme's against its floor.
pub fn add_ratios(results: &mut [SchemeResult]) {
    let p50 = |name: &str, model: &str, rs: &[SchemeResult]| rs.iter().find(|r| r.scheme == name && r.model == model).and_then(|r| r.p50_us);
    let refs: Vec<[Option<f64>; 3]> = results
        .iter()
        .map(|r| [p50("cpu-zero-copy", &r.model, results), p50("serialize-copy", &r.model, results), floor_of(&r.scheme).and_then(|f| p50(f, &r.model, results))])
        .collect();
    for (r, [cpu, ser, floor]) in results.iter_mut().zip(refs) {
        r.p50_vs_cpu_zero_copy = r.p50_us.zip(cpu).map(|(a, b)| a / b);
        r.p50_vs_serialize_copy = r.p50_us.zip(ser).map(|(a, b)| a / b);
        r.transport_vs_floor = r.p50_us.zip(cpu).zip(floor).map(|((a, c), f)| (a - c) / f);
    }
}

/// The table printed on stdout (with a model column when several models ran;
/// the ratios are to the same model's schemes).
pub fn table(results: &[SchemeResult]) -> String {
    let f = |v: Option<f64>| v.map(|x| if x >= 1000.0 { format!("{x:.0}") } else { format!("{x:.1}") }).unwrap_or_else(|| "-".into());
    let r2 = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    let several = results.iter().any(|r| r.model != results[0].model);
    let width = if several { results.iter().map(|r| r.model.len()).max().unwrap_or(0).max(5) } else { 0 };
    let model = |m: &str| if several { format!("{m:<width$} ") } else { String::new() };
    let mut out = format!(
        "{}{:<18} {:<11} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}\n",
        model("model"),
        "scheme", "status", "samples", "min µs", "p50 µs", "p90 µs", "p99 µs", "max µs", "mean µs", "std µs", "dev p50", "×cpu-zc", "×serial"
    );
    for r in results {
        let status = match r.status {
            Status::Ok => "ok",
            Status::Failed => "FAILED",
            Status::Unavailable => "unavailable",
        };
        out.push_str(&format!(
            "{}{:<18} {:<11} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}\n",
            model(&r.model),
            r.scheme,
            status,
            r.samples,
            f(r.min_us),
            f(r.p50_us),
            f(r.p90_us),
            f(r.p99_us),
            f(r.max_us),
            f(r.mean_us),
            f(r.std_us),
            f(r.device_p50_us),
            r2(r.p50_vs_cpu_zero_copy),
            r2(r.p50_vs_serialize_copy)
        ));
    }
    for r in results {
        if let (Some(ratio), Some(p50), Some(floor)) = (r.transport_vs_floor, r.p50_us, floor_of(&r.scheme)) {
            let cpu = results.iter().find(|c| c.scheme == "cpu-zero-copy" && c.model == r.model).and_then(|c| c.p50_us).unwrap_or(p50);
            let on = if several { format!(" on {}", r.model) } else { String::new() };
            out.push_str(&format!("  {}{on}: P50 − cpu-zero-copy P50 = {:+.1} µs = {ratio:.2} × {floor} P50\n", r.scheme, p50 - cpu));
        }
    }
    for r in results {
        if let Some(b) = &r.phases {
            let on = if several { format!(" on {}", r.model) } else { String::new() };
            out.push_str(&format!("  {}{on} phases, {} more requests, mean µs: {}\n", r.scheme, b.requests, super::phases::line(b)));
        }
    }
    for r in results.iter().filter(|r| r.status != Status::Ok) {
        let on = if several { format!(" on {}", r.model) } else { String::new() };
        out.push_str(&format!("  {}{on}: {}\n", r.scheme, r.reason));
    }
    out
}
