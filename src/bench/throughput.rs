//! `uminfer bench --concurrency K,...`: closed-loop throughput of each model
//! under K client threads (each sends its next request when its answer is
//! back), unbatched and batched, interleaved in one run: requests/s,
//! latency percentiles, the mean batch formed and its padding, and the
//! model's own throughput at that batch size (its forward pass timed alone).
//!
//! | scheme | clients | what runs the requests |
//! |---|---|---|
//! | `sessions` | K threads of this process | one session on its own thread (one instance, no batching) |
//! | `batched` | K threads of this process | a [`crate::batch::Batcher`] with a session per bucket |
//! | `shm`, `shm-batched` | K clients in up to 8 processes (`uminfer bench-client`, [`super::load`]) | a `uminfer serve --name` process: one session; with `--max-batch` |
//! | `grpc`, `grpc-batched` | the same | a `uminfer serve --grpc` process (tensors in the messages): one session; with `--max-batch` |
//!
//! A batched scheme's `vs_sessions` is over the unbatched scheme of its
//! transport (`batched` over `sessions`, `shm-batched` over `shm`, ...).

use super::load::{LoadClients, LoadTarget};
use super::oip::{GrpcScheme, OipGrpc};
use super::schemes::{Scheme, ServerChild, ServerLaunch, ShmIpc};
use super::{check_outputs, Bench, BenchModel, BenchOptions, Machine};
use crate::ipc::BatchCounts;
use crate::batch::{with_batch, BatchSpec, Execution};
use crate::error::{Error, Result, SessionErrorKind};
use crate::host_tensor::HostTensor;
use crate::mode::Mode;
use crate::model::{InputDecl, TensorInfo};
use crate::runtime::Runtime;
use crate::session::timing::{histogram, summarise};
use crate::session::{SessionSpec, Summary, TensorMut, TensorRef};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The throughput schemes, in table order: each unbatched one, then its batched one.
pub const THROUGHPUT_SCHEMES: [&str; 6] = ["sessions", "batched", "shm", "shm-batched", "grpc", "grpc-batched"];

/// What to measure.
#[derive(Debug, Clone)]
pub struct ThroughputOptions {
    /// Client threads, one measurement per value.
    pub concurrency: Vec<usize>,
    /// The batched scheme's batcher.
    pub batch: BatchSpec,
    /// Session mode of both schemes.
    pub mode: Mode,
    /// Length of one measurement (one scheme at one K) per round.
    pub cell: Duration,
    /// Rounds; each measures every scheme at every K once, the scheme order rotating.
    pub rounds: usize,
    /// Of [`THROUGHPUT_SCHEMES`], those to run (empty: all). A batched
    /// scheme's unbatched one runs too, for `vs_sessions`.
    pub schemes: Vec<String>,
}

/// The model alone at one batch size: its median forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Alone {
    pub batch: usize,
    pub pass_us: f64,
    /// `batch` requests of one sample per pass.
    pub requests_per_s: f64,
}

/// The intra-op threads one model's schemes ran with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntraOp {
    pub model: String,
    pub threads: usize,
    /// What was measured, or the flag.
    pub why: String,
}

/// One scheme at one concurrency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThroughputResult {
    pub model: String,
    pub scheme: String,
    pub concurrency: usize,
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    /// Each request's time from sending to its answer, in µs.
    pub latency: Summary,
    /// Samples per forward pass (1 unbatched).
    pub mean_batch: f64,
    /// Padding as a share of the samples computed (0 unbatched).
    pub padding_share: f64,
    /// Batched: the model alone at the mean batch formed (rounded).
    pub alone: Option<Alone>,
    /// Batched: `requests_per_s` over the model alone's.
    pub vs_alone: Option<f64>,
    /// Batched: `requests_per_s` over the unbatched scheme's at this K.
    pub vs_sessions: Option<f64>,
}

/// The JSON document of a throughput run.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    pub schema_version: u32,
    pub command: String,
    pub models: Vec<BenchModel>,
    pub mode: String,
    pub max_batch: usize,
    pub batch_delay_us: u64,
    pub buckets: Vec<usize>,
    pub cell_ms: f64,
    pub rounds: usize,
    /// libtorch intra-op threads of each model's schemes, and why.
    pub intra_op: Vec<IntraOp>,
    pub machine: Machine,
    pub results: Vec<ThroughputResult>,
}

/// Bytes aligned for every dtype (8), holding one tensor.
struct Buffer(Vec<u64>, usize);

impl Buffer {
    fn of(t: &HostTensor) -> Self {
        let mut b = Self(vec![0; t.bytes().len().div_ceil(8)], t.bytes().len());
        b.bytes_mut().copy_from_slice(t.bytes());
        b
    }

    fn zeroed(info: &TensorInfo) -> Self {
        Self(vec![0; info.byte_len().div_ceil(8)], info.byte_len())
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the words hold at least `self.1` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.1) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.1) }
    }
}

/// One request over `ins` into `outs` (a client's buffers) through `r`.
fn request(r: &Execution, infos: &[TensorInfo], out_infos: &[TensorInfo], ins: &[Buffer], outs: &mut [Buffer]) -> Result<()> {
    let refs = infos.iter().zip(ins).map(|(t, b)| TensorRef::from_bytes(t.dtype, b.bytes())).collect::<Result<Vec<_>>>()?;
    let mut muts = out_infos
        .iter()
        .zip(outs.iter_mut())
        .map(|(t, b)| {
            let bytes = b.bytes_mut();
            // SAFETY: initialised bytes viewed as bytes that may be uninitialised, to be overwritten.
            TensorMut::from_bytes(t.dtype, unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast(), bytes.len()) })
        })
        .collect::<Result<Vec<_>>>()?;
    r.run_on(&refs, &mut muts, None)
}

/// Requests, their latencies and the time they took, at one K.
struct Cell {
    requests: u64,
    seconds: f64,
    latency: hdrhistogram::Histogram<u64>,
    /// Batched: batches, samples and padding over the cell (from the batcher's counters).
    batches: u64,
    samples: u64,
    padded: u64,
}

/// `k` client threads sending requests through `r` back to back for `cell`.
fn measure(r: &Execution, bench: &Bench<'_>, k: usize, cell: Duration) -> Result<(u64, f64, hdrhistogram::Histogram<u64>)> {
    let (infos, out_infos) = (&bench.entry.inputs, &bench.entry.outputs);
    // Two samples per client, alternating, drawn before the clock starts.
    let mut clients: Vec<Vec<Vec<Buffer>>> = (0..k).map(|t| (0..2).map(|i| bench.inputs.get((t * 2 + i) as u64).iter().map(Buffer::of).collect()).collect()).collect();
    let start = Instant::now();
    let until = start + cell;
    let per_thread: Vec<Result<hdrhistogram::Histogram<u64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .drain(..)
            .map(|samples| {
                s.spawn(move || -> Result<hdrhistogram::Histogram<u64>> {
                    let mut outs: Vec<Buffer> = out_infos.iter().map(Buffer::zeroed).collect();
                    let mut h = histogram();
                    let mut i = 0usize;
                    while Instant::now() < until {
                        let t0 = Instant::now();
                        request(r, infos, out_infos, &samples[i % 2], &mut outs)?;
                        h.saturating_record(t0.elapsed().as_nanos().clamp(1, u64::MAX as u128) as u64);
                        i += 1;
                    }
                    Ok(h)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Error::session(SessionErrorKind::Failed, "a client thread panicked")))).collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut all = histogram();
    for h in per_thread {
        all.add(h?).map_err(|e| Error::session(SessionErrorKind::Failed, format!("merging latencies: {e}")))?;
    }
    Ok((all.len(), seconds, all))
}

/// Checks `r`'s answer to the bench's check input against the CPU eager one.
fn check(r: &Execution, bench: &Bench<'_>, scheme: &str, mode: Mode) -> Result<()> {
    let (infos, out_infos) = (&bench.entry.inputs, &bench.entry.outputs);
    let ins: Vec<Buffer> = bench.check_input.iter().map(Buffer::of).collect();
    let mut outs: Vec<Buffer> = out_infos.iter().map(Buffer::zeroed).collect();
    request(r, infos, out_infos, &ins, &mut outs)?;
    let got = out_infos.iter().zip(&outs).map(|(t, b)| HostTensor::new(&t.name, t.dtype, &t.shape, b.bytes().to_vec())).collect::<Result<Vec<_>>>()?;
    check_answer(&got, bench, scheme, mode)
}

/// `got`, scheme `scheme`'s answer to `bench`'s check input in `mode`,
/// against the CPU eager reference.
fn check_answer(got: &[HostTensor], bench: &Bench<'_>, scheme: &str, mode: Mode) -> Result<()> {
    check_outputs(got, &bench.reference, tolerance(mode)).map_err(|e| Error::Check { what: "a throughput scheme", detail: format!("{scheme} on {}: {e}", bench.entry.label) })
}

/// Passes timed for the model alone: at least this many...
const ALONE_PASSES: usize = 10;
/// ...and until this much time went into them.
const ALONE_TIME: Duration = Duration::from_millis(300);

/// The median forward pass of `bench`'s model at batch `n`, alone, in a
/// session of `mode` (after its warm-up).
fn alone(rt: &Runtime, bench: &Bench<'_>, mode: Mode, n: usize) -> Result<Alone> {
    let decls: Vec<InputDecl> = bench
        .entry
        .inputs
        .iter()
        .map(|t| InputDecl { name: Some(t.name.clone()), dtype: Some(t.dtype), shape: Some(with_batch(t, n).shape) })
        .collect();
    let mut spec = SessionSpec::new().mode(mode);
    for d in decls {
        spec = spec.declare(d);
    }
    let mut s = rt.session(&bench.model, spec)?;
    let (mut passes, start) = (Vec::new(), Instant::now());
    while passes.len() < ALONE_PASSES || start.elapsed() < ALONE_TIME {
        passes.push(s.run()?.host);
    }
    passes.sort_unstable();
    let pass = passes[passes.len() / 2];
    Ok(Alone { batch: n, pass_us: pass.as_secs_f64() * 1e6, requests_per_s: n as f64 / pass.as_secs_f64() })
}

/// Indices into [`THROUGHPUT_SCHEMES`] of `names` (all when empty), each
/// batched one's unbatched one added, in table order.
fn wanted_schemes(names: &[String]) -> Result<Vec<usize>> {
    if names.is_empty() {
        return Ok((0..THROUGHPUT_SCHEMES.len()).collect());
    }
    let mut wanted = Vec::new();
    for name in names {
        let which = THROUGHPUT_SCHEMES
            .iter()
            .position(|s| s == name)
            .ok_or_else(|| Error::Argument(format!("--schemes with --concurrency: {name} is not a throughput scheme; known: {}", THROUGHPUT_SCHEMES.join(", "))))?;
        wanted.extend([which - which % 2, which]);
    }
    wanted.sort_unstable();
    wanted.dedup();
    Ok(wanted)
}

/// What runs one scheme's requests.
enum Runner {
    /// Client threads of this process.
    InProcess(Execution),
    /// Client processes (stopped first) of a `uminfer serve` process.
    Server { clients: LoadClients, _server: ServerChild },
}

impl Runner {
    /// `k` clients sending requests back to back for `cell`.
    fn measure(&mut self, bench: &Bench<'_>, k: usize, cell: Duration) -> Result<(u64, f64, hdrhistogram::Histogram<u64>)> {
        match self {
            Self::InProcess(r) => measure(r, bench, k, cell),
            Self::Server { clients, .. } => clients.measure(k, cell),
        }
    }

    /// The batcher's counters so far (`None` unbatched).
    fn counts(&mut self) -> Result<Option<BatchCounts>> {
        match self {
            Self::InProcess(r) => Ok(r.batcher().map(|b| BatchCounts::of(&b.stats()))),
            Self::Server { clients, .. } => clients.counts(),
        }
    }
}

/// The bound on outputs' relative error against CPU eager in `mode`.
fn tolerance(mode: Mode) -> f64 {
    if mode.needs_gpu() {
        1e-3
    } else {
        1e-4
    }
}

/// Builds scheme `which` of [`THROUGHPUT_SCHEMES`] for `bench`'s model and
/// checks its answer: sessions of `spec`; a server process with `threads`
/// intra-op threads and `max_k` client processes of it.
#[allow(clippy::too_many_arguments)]
fn build_runner(rt: &Runtime, opts: &BenchOptions, t: &ThroughputOptions, bench: &Bench<'_>, which: usize, spec: &SessionSpec, threads: usize, max_k: usize) -> Result<Runner> {
    let batched = which % 2 == 1;
    let name = THROUGHPUT_SCHEMES[which];
    if which < 2 {
        let exec = if batched { Execution::Batched(rt.batcher(&bench.model, spec.clone(), t.batch.clone())?) } else { Execution::Sessions(rt.session_pool(&bench.model, spec.clone().dedicated_thread(true), 1)?) };
        check(&exec, bench, name, t.mode)?;
        return Ok(Runner::InProcess(exec));
    }
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    if batched {
        let buckets: Vec<String> = t.batch.bucket_sizes()?.iter().map(usize::to_string).collect();
        // Room for every client's request: none is refused for a full queue.
        let queue = crate::batch::DEFAULT_MAX_QUEUE.max(2 * max_k);
        for (flag, value) in [("--max-batch", t.batch.max_batch().to_string()), ("--batch-delay-us", t.batch.delay().as_micros().to_string()), ("--buckets", buckets.join(",")), ("--max-queue", queue.to_string())] {
            extra.extend([flag.into(), value.into()]);
        }
    }
    let launch = ServerLaunch { exe: &opts.server_exe, threads, mode: t.mode, profile: None, extra };
    let (inputs, outputs, path) = (&bench.entry.inputs, &bench.entry.outputs, bench.model.path());
    // The bench's own client checks the server, then leaves: the client
    // processes may take every place a shared-memory server has.
    let checked = |got: Result<Vec<HostTensor>>| check_answer(&got?, bench, name, t.mode);
    let (server, target) = if which < 4 {
        if max_k > crate::ipc::service::MAX_CLIENTS {
            return Err(Error::Argument(format!("{name}: a shared-memory server takes at most {} clients, not {max_k}: give K up to that, or --schemes without shm and shm-batched", crate::ipc::service::MAX_CLIENTS)));
        }
        let mut s = ShmIpc::start(launch, path, inputs, false)?;
        checked(s.check(&bench.check_input))?;
        let target = LoadTarget::Shm(s.endpoint().to_string());
        (s.into_server(), target)
    } else {
        let mut s = OipGrpc::start(launch, path, inputs, outputs, GrpcScheme::Raw)?;
        checked(s.check(&bench.check_input))?;
        let target = LoadTarget::Grpc(s.address().to_string());
        (s.into_server(), target)
    };
    let server = server.ok_or_else(|| Error::session(SessionErrorKind::Failed, format!("{name}: no server process")))?;
    let clients = LoadClients::start(&opts.server_exe, &target, inputs, outputs, &bench.inputs.samples(), max_k)?;
    Ok(Runner::Server { clients, _server: server })
}

/// Runs every scheme at every concurrency on every model of `opts`.
pub fn run(rt: &Runtime, opts: &BenchOptions, t: &ThroughputOptions) -> Result<ThroughputReport> {
    if t.concurrency.is_empty() || t.concurrency.contains(&0) {
        return Err(Error::Argument("--concurrency: give client counts of at least 1, e.g. 1,8,64".into()));
    }
    let buckets = t.batch.bucket_sizes()?;
    let wanted = wanted_schemes(&t.schemes)?;
    let benches = opts.models.iter().map(|m| Bench::new(rt, opts, m)).collect::<Result<Vec<_>>>()?;
    let mut results = Vec::new();
    let mut choices = Vec::new();
    for bench in &benches {
        let label = &bench.entry.label;
        // Per model, measured: the schemes take turns, one pass at a time.
        let (threads, why) = if t.mode == Mode::Cpu {
            crate::intra_op::set_for_sessions(opts.intra_op_threads, &[(&bench.model, bench.entry.inputs.as_slice())], 1)?
        } else {
            (tch::get_num_threads().max(1) as usize, "libtorch's default (a GPU mode)".to_string())
        };
        tracing::info!("{label}: intra-op threads {threads} ({why})");
        choices.push(IntraOp { model: label.clone(), threads, why });
        let mut spec = SessionSpec::new().mode(t.mode);
        if let Some(spin) = opts.spin {
            spec = spec.spin(spin); // the sessions' threads, and a batcher's scheduler and callers
        }
        for i in &bench.entry.inputs {
            spec = spec.input(&i.name, i.dtype, &i.shape);
        }
        tracing::info!("building the throughput schemes of {label} in {}", t.mode);
        let max_k = t.concurrency.iter().copied().max().unwrap_or(1);
        let mut runners: Vec<(usize, Runner)> = Vec::new();
        for &which in &wanted {
            let mut r = build_runner(rt, opts, t, bench, which, &spec, threads, max_k)?;
            // Warm-up: one short cell at the largest K.
            r.measure(bench, max_k, t.cell / 4)?;
            runners.push((which, r));
        }
        let mut cells: BTreeMap<(usize, usize), Cell> = BTreeMap::new();
        for round in 0..t.rounds.max(1) {
            for &k in &t.concurrency {
                for j in 0..runners.len() {
                    let at = (j + round) % runners.len();
                    let (which, r) = &mut runners[at];
                    let before = r.counts()?;
                    let (n, secs, h) = r.measure(bench, k, t.cell)?;
                    let after = r.counts()?;
                    let c = cells.entry((*which, k)).or_insert_with(|| Cell { requests: 0, seconds: 0.0, latency: histogram(), batches: 0, samples: 0, padded: 0 });
                    c.requests += n;
                    c.seconds += secs;
                    c.latency.add(h).map_err(|e| Error::session(SessionErrorKind::Failed, format!("merging latencies: {e}")))?;
                    if let (Some(b), Some(a)) = (before, after) {
                        let d = a.since(&b);
                        c.batches += d.batches;
                        c.samples += d.samples;
                        c.padded += d.padded;
                    }
                }
            }
        }
        // The servers and their clients stop before the model is timed alone.
        drop(runners);
        let mut alone_at: BTreeMap<usize, Alone> = BTreeMap::new();
        for &k in &t.concurrency {
            for &which in &wanted {
                let name = THROUGHPUT_SCHEMES[which];
                let c = &cells[&(which, k)];
                let rps = c.requests as f64 / c.seconds;
                let batched = which % 2 == 1;
                let unbatched = &cells[&(which - which % 2, k)];
                let unbatched_rps = unbatched.requests as f64 / unbatched.seconds;
                let mean_batch = if batched && c.batches > 0 { c.samples as f64 / c.batches as f64 } else { 1.0 };
                let alone = if batched {
                    let n = (mean_batch.round() as usize).clamp(1, t.batch.max_batch());
                    if let std::collections::btree_map::Entry::Vacant(e) = alone_at.entry(n) {
                        e.insert(alone(rt, bench, t.mode, n)?);
                    }
                    alone_at.get(&n).copied()
                } else {
                    None
                };
                results.push(ThroughputResult {
                    model: label.clone(),
                    scheme: name.to_string(),
                    concurrency: k,
                    requests: c.requests,
                    seconds: c.seconds,
                    requests_per_s: rps,
                    latency: summarise(&c.latency),
                    mean_batch,
                    padding_share: if c.samples + c.padded == 0 { 0.0 } else { c.padded as f64 / (c.samples + c.padded) as f64 },
                    vs_alone: alone.map(|a| rps / a.requests_per_s),
                    alone,
                    vs_sessions: batched.then(|| rps / unbatched_rps),
                });
            }
        }
    }
    Ok(ThroughputReport {
        schema_version: super::SCHEMA_VERSION,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        models: benches.iter().map(|b| b.entry.clone()).collect(),
        mode: t.mode.to_string(),
        max_batch: t.batch.max_batch(),
        batch_delay_us: u64::try_from(t.batch.delay().as_micros()).unwrap_or(u64::MAX),
        buckets,
        cell_ms: t.cell.as_secs_f64() * 1e3,
        rounds: t.rounds.max(1),
        intra_op: choices,
        machine: super::machine(rt),
        results,
    })
}

/// The results as a text table.
pub fn table(results: &[ThroughputResult]) -> String {
    let mut s = format!(
        "{:<14} {:<12} {:>4} {:>10} {:>9} {:>9} {:>9} {:>6} {:>8} {:>9} {:>9}\n",
        "model", "scheme", "K", "req/s", "P50 µs", "P90 µs", "P99 µs", "batch", "padding", "vs alone", "vs unbat."
    );
    let ratio = |r: Option<f64>| r.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into());
    for r in results {
        s.push_str(&format!(
            "{:<14} {:<12} {:>4} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>6.2} {:>7.1}% {:>9} {:>9}\n",
            r.model,
            r.scheme,
            r.concurrency,
            r.requests_per_s,
            r.latency.p50_us,
            r.latency.p90_us,
            r.latency.p99_us,
            r.mean_batch,
            r.padding_share * 100.0,
            ratio(r.vs_alone),
            ratio(r.vs_sessions)
        ));
    }
    s
}
