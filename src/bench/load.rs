//! `uminfer bench --concurrency`'s server schemes: a `uminfer serve` process
//! under K clients in client processes (`uminfer bench-client`), each
//! client a closed loop (its next request sent when its answer is back) over
//! its own connection, as separate services calling one server would be.
//! Up to [`MAX_CLIENT_PROCESSES`] clients each have a process of their
//! own; beyond, the processes hold several clients, one thread each.
//!
//! A client process connects its clients, answers `ready`, then for each
//! `run N MS` line on its stdin has its first N clients send requests for
//! MS milliseconds and prints one JSON line: `{"requests": R, "seconds": S,
//! "latency_ns": [[NS, COUNT], ...]}` (their merged latency histogram, each
//! recorded value with its count), or `{"error": "..."}`; for `counts`,
//! `{"batch_counts": COUNTS}` (a batching server's counters so far, `null`
//! for a server that does not batch). It exits when its stdin closes. A
//! request's latency runs from writing its inputs into the transport's
//! memory to its answer being readable.
//!
//! The bench asks the first client for the counts rather than connecting a
//! client of its own: a shared-memory server takes at most
//! [`crate::ipc::service::MAX_CLIENTS`] clients, and K may be that many.

use super::oip::{GrpcScheme, OipGrpc};
use super::schemes::{die_with_parent, spec_arg, Scheme, ShmIpc};
use super::Sample;
use crate::error::{Error, Result, SessionErrorKind};
use crate::host_tensor::HostTensor;
use crate::ipc::BatchCounts;
use crate::model::{InputDecl, TensorInfo};
use crate::session::timing::histogram;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// What a client process connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadTarget {
    /// A shared-memory server's endpoint name (`serve --name`).
    Shm(String),
    /// A gRPC server's address (`serve --grpc`), its tensors in the messages.
    Grpc(String),
}

fn failed(what: impl std::fmt::Display) -> Error {
    Error::session(SessionErrorKind::Failed, what.to_string())
}

/// The samples a client process sends, alternating: the file holds samples
/// back to back, each its inputs' bytes in order; the client takes samples
/// `2 × index` and `2 × index + 1` (modulo their count).
fn read_samples(inputs: &[TensorInfo], file: &Path, index: usize) -> Result<[Sample; 2]> {
    let bytes = std::fs::read(file).map_err(|source| Error::Os { call: "reading a bench client's samples", source })?;
    let per: usize = inputs.iter().map(TensorInfo::byte_len).sum();
    if per == 0 || bytes.is_empty() || bytes.len() % per != 0 {
        return Err(Error::Argument(format!("{}: {} bytes are not whole samples of {per} bytes ({})", file.display(), bytes.len(), crate::session::tensor_ref::list(inputs))));
    }
    let count = bytes.len() / per;
    let sample = |k: usize| -> Result<Sample> {
        let mut at = (k % count) * per;
        inputs
            .iter()
            .map(|t| {
                let b = bytes[at..at + t.byte_len()].to_vec();
                at += t.byte_len();
                HostTensor::new(&t.name, t.dtype, &t.shape, b)
            })
            .collect()
    };
    Ok([sample(2 * index)?, sample(2 * index + 1)?])
}

/// The tensor `d` declares whole (`NAME=DTYPE:DIMS`).
fn declared(d: &InputDecl) -> Result<TensorInfo> {
    match d {
        InputDecl { name: Some(name), dtype: Some(dtype), shape: Some(shape) } => Ok(TensorInfo { name: name.clone(), dtype: *dtype, shape: shape.clone() }),
        _ => Err(Error::Argument(format!("bench client: {d:?} does not give a name, a dtype and a shape (NAME=DTYPE:DIMS)"))),
    }
}

/// Client processes a run starts at most: beyond, each process holds
/// several clients (threads, each its own connection), since every
/// `uminfer` process carries libtorch's relocated tables (about 180 MiB of
/// private memory) and a run keeps each server scheme's clients throughout.
pub const MAX_CLIENT_PROCESSES: usize = 8;

/// What the process's main thread asks a client thread.
enum Ask {
    Run(Duration),
    Counts,
}

/// A client thread's answer.
enum Told {
    /// Its connection is up (its first answer).
    Connected,
    Ran(u64, f64, hdrhistogram::Histogram<u64>),
    Counts(Option<BatchCounts>),
}

/// `uminfer bench-client`: one client process (see the module's docs) of
/// `target`, whose model takes `inputs` and returns `outputs` (each given
/// whole), holding the clients `indices` (threads, each its own
/// connection); client `i` sends samples `2i` and `2i + 1` from `samples`.
/// `run N MS` runs its first N clients.
pub fn client(target: &LoadTarget, inputs: &[InputDecl], outputs: &[InputDecl], samples: &Path, indices: &[usize]) -> Result<()> {
    let inputs = inputs.iter().map(declared).collect::<Result<Vec<_>>>()?;
    let outputs = outputs.iter().map(declared).collect::<Result<Vec<_>>>()?;
    if indices.is_empty() {
        return Err(Error::Argument("bench client: no --index given".into()));
    }
    let mut threads = Vec::with_capacity(indices.len());
    for &index in indices {
        let samples = read_samples(&inputs, samples, index)?;
        let (ask_tx, ask_rx) = std::sync::mpsc::channel::<Ask>();
        let (told_tx, told_rx) = std::sync::mpsc::channel::<Result<Told>>();
        let (target, inputs, outputs) = (target.clone(), inputs.clone(), outputs.clone());
        std::thread::Builder::new()
            .name(format!("bench-client-{index}"))
            .spawn(move || {
                let note = String::from("a bench client");
                let connected: Result<Box<dyn Scheme>> = match &target {
                    LoadTarget::Shm(name) => ShmIpc::connect(name, &inputs, note, None).map(|s| Box::new(s) as Box<dyn Scheme>),
                    // Many clients share the cores: each sleeps for its answer.
                    LoadTarget::Grpc(addr) => OipGrpc::connect(addr, &inputs, &outputs, GrpcScheme::Raw, Duration::ZERO, note, None).map(|s| Box::new(s) as Box<dyn Scheme>),
                };
                let mut scheme = match connected {
                    Ok(s) => {
                        let _ = told_tx.send(Ok(Told::Connected));
                        s
                    }
                    Err(e) => {
                        let _ = told_tx.send(Err(e));
                        return;
                    }
                };
                for ask in ask_rx {
                    let told = match ask {
                        Ask::Run(cell) => closed_loop(scheme.as_mut(), &samples, cell).map(|(n, s, h)| Told::Ran(n, s, h)),
                        Ask::Counts => scheme.batch_counts().map(Told::Counts),
                    };
                    if told_tx.send(told).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| failed(format!("starting a bench client thread: {e}")))?;
        threads.push((ask_tx, told_rx));
    }
    let answer = |rx: &std::sync::mpsc::Receiver<Result<Told>>| rx.recv().unwrap_or_else(|_| Err(failed("a bench client thread ended")));
    for (_, rx) in &threads {
        answer(rx)?;
    }
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| writeln!(out, "{line}").and_then(|_| out.flush()).map_err(|source| Error::Os { call: "writing to the bench", source });
    say("ready".into())?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|source| Error::Os { call: "reading the bench's commands", source })?;
        if line.trim() == "counts" {
            threads[0].0.send(Ask::Counts).map_err(|_| failed("a bench client thread ended"))?;
            let reply = match answer(&threads[0].1) {
                Ok(Told::Counts(counts)) => serde_json::json!({"batch_counts": counts}),
                Ok(_) => serde_json::json!({"error": "a bench client thread answered something other than its counts"}),
                Err(e) => serde_json::json!({"error": e.to_string()}),
            };
            say(reply.to_string())?;
            continue;
        }
        let parsed = line.strip_prefix("run ").and_then(|v| v.trim().split_once(' ')).and_then(|(n, ms)| Some((n.parse::<usize>().ok()?, ms.trim().parse::<u64>().ok()?)));
        let (n, ms) = parsed.ok_or_else(|| Error::Argument(format!("bench client: unknown command {line:?} (expected `run N MS` or `counts`)")))?;
        let running = threads.get(..n).ok_or_else(|| Error::Argument(format!("bench client: run {n} of its {} clients", threads.len())))?;
        for (tx, _) in running {
            tx.send(Ask::Run(Duration::from_millis(ms))).map_err(|_| failed("a bench client thread ended"))?;
        }
        let (mut requests, mut seconds, mut all, mut error) = (0u64, 0.0f64, histogram(), None);
        for (_, rx) in running {
            match answer(rx) {
                Ok(Told::Ran(r, s, h)) => {
                    requests += r;
                    seconds = seconds.max(s);
                    all.add(&h).map_err(|e| failed(format!("merging bench clients' latencies: {e}")))?;
                }
                Ok(_) => error = error.or(Some("a bench client thread answered something other than a run".to_string())),
                Err(e) => error = error.or(Some(e.to_string())),
            }
        }
        let reply = match error {
            None => {
                let latency: Vec<[u64; 2]> = all.iter_recorded().map(|v| [v.value_iterated_to(), v.count_at_value()]).collect();
                serde_json::json!({"requests": requests, "seconds": seconds, "latency_ns": latency})
            }
            Some(e) => serde_json::json!({"error": e}),
        };
        say(reply.to_string())?;
    }
    Ok(())
}

/// Requests back to back for `cell`, alternating between `samples`.
fn closed_loop(scheme: &mut dyn Scheme, samples: &[Sample; 2], cell: Duration) -> Result<(u64, f64, hdrhistogram::Histogram<u64>)> {
    let mut h = histogram();
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < cell {
        let t0 = Instant::now();
        scheme.refresh(i, &samples[(i % 2) as usize])?;
        scheme.request()?;
        h.saturating_record(t0.elapsed().as_nanos().clamp(1, u64::MAX as u128) as u64);
        i += 1;
    }
    Ok((i, start.elapsed().as_secs_f64(), h))
}

/// One client process, from the bench's side.
struct LoadClient {
    child: Child,
    /// `None` once closed (the client then exits).
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl LoadClient {
    fn line(&mut self) -> Result<String> {
        let mut s = String::new();
        let n = self.stdout.read_line(&mut s).map_err(|source| Error::Os { call: "reading a bench client's answer", source })?;
        if n == 0 {
            return Err(failed("a bench client process exited (its log is above)"));
        }
        Ok(s.trim().to_string())
    }

    fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| failed("a bench client was closed"))?;
        writeln!(stdin, "{line}").and_then(|_| stdin.flush()).map_err(|source| Error::Os { call: "writing to a bench client", source })
    }
}

impl Drop for LoadClient {
    fn drop(&mut self) {
        drop(self.stdin.take());
        // It exits at the end of its stdin; one that does not within a few
        // seconds (stuck on a dead server) is killed.
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The clients of one server scheme, started once and driven cell by cell:
/// at most [`MAX_CLIENT_PROCESSES`] processes, client `i` in process `i mod
/// P`, so that the first K clients spread over min(K, P) processes.
pub(super) struct LoadClients {
    processes: Vec<LoadClient>,
    /// Clients started.
    clients: usize,
    /// Holds the samples file; removed on drop.
    dir: PathBuf,
}

impl LoadClients {
    /// Starts `n` clients in client processes (the `uminfer` binary `exe`)
    /// of `target` whose model takes `inputs` and returns `outputs`, client
    /// `i` sending samples `2i` and `2i + 1` of `pool`; returns once each is
    /// connected.
    pub(super) fn start(exe: &Path, target: &LoadTarget, inputs: &[TensorInfo], outputs: &[TensorInfo], pool: &[&[HostTensor]], n: usize) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("uminfer-bench-clients-{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Os { call: "creating the bench clients' directory", source })?;
        let processes = n.min(MAX_CLIENT_PROCESSES);
        let mut this = Self { processes: Vec::with_capacity(processes), clients: n, dir };
        let file = this.dir.join("samples.bin");
        let bytes: Vec<u8> = pool.iter().flat_map(|s| s.iter().flat_map(|t| t.bytes().iter().copied())).collect();
        std::fs::write(&file, bytes).map_err(|source| Error::Os { call: "writing the bench clients' samples", source })?;
        let mut args: Vec<OsString> = vec!["bench-client".into()];
        match target {
            LoadTarget::Shm(name) => args.extend(["--shm".into(), name.into()]),
            LoadTarget::Grpc(addr) => args.extend(["--grpc".into(), addr.into()]),
        }
        args.extend(inputs.iter().flat_map(|t| [OsString::from("--input-spec"), spec_arg(t).into()]));
        args.extend(outputs.iter().flat_map(|t| [OsString::from("--output-spec"), spec_arg(t).into()]));
        args.extend(["--samples".into(), file.into_os_string()]);
        for p in 0..processes {
            let indices: Vec<String> = (p..n).step_by(processes).map(|i| i.to_string()).collect();
            let mut cmd = Command::new(exe);
            cmd.args(&args).args(["--index", &indices.join(",")]).env("RUST_LOG", "warn").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
            die_with_parent(&mut cmd);
            let mut child = cmd.spawn().map_err(|source| Error::Os { call: "starting a bench client process", source })?;
            let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
            let stdout = stdout.ok_or_else(|| failed("a bench client without a stdout pipe"))?;
            this.processes.push(LoadClient { child, stdin, stdout: BufReader::new(stdout) });
        }
        for c in &mut this.processes {
            let line = c.line()?;
            if line != "ready" {
                return Err(failed(format!("a bench client said {line:?}, not ready")));
            }
        }
        Ok(this)
    }

    /// The server's batch counters so far, as the first client reads them
    /// (`None`: the server does not batch).
    pub(super) fn counts(&mut self) -> Result<Option<BatchCounts>> {
        let c = self.processes.first_mut().ok_or_else(|| failed("no bench client to ask for the counts"))?;
        c.send("counts")?;
        let line = c.line()?;
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| failed(format!("a bench client said {line:?}: {e}")))?;
        if let Some(e) = v["error"].as_str() {
            return Err(failed(format!("reading the server's batch counts: {e}")));
        }
        serde_json::from_value(v["batch_counts"].clone()).map_err(|e| failed(format!("a bench client's batch counts {line:?}: {e}")))
    }

    /// The first `k` clients sending requests for `cell`: the requests, the
    /// longest client's seconds, and the latencies of all.
    pub(super) fn measure(&mut self, k: usize, cell: Duration) -> Result<(u64, f64, hdrhistogram::Histogram<u64>)> {
        if k > self.clients {
            return Err(failed(format!("{k} clients asked of {}", self.clients)));
        }
        let p = self.processes.len();
        let ms = cell.as_millis().max(1);
        // Process `j` holds clients j, j + p, ...: those below k are its first ⌈(k − j) / p⌉.
        let running: Vec<(usize, usize)> = (0..p.min(k)).map(|j| (j, (k - j).div_ceil(p))).collect();
        for &(j, n) in &running {
            self.processes[j].send(&format!("run {n} {ms}"))?;
        }
        let (mut requests, mut seconds, mut all) = (0, 0.0f64, histogram());
        let mut first_error = None;
        for &(j, _) in &running {
            let line = self.processes[j].line()?;
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| failed(format!("a bench client said {line:?}: {e}")))?;
            if let Some(e) = v["error"].as_str() {
                first_error.get_or_insert_with(|| e.to_string());
                continue;
            }
            requests += v["requests"].as_u64().unwrap_or(0);
            seconds = seconds.max(v["seconds"].as_f64().unwrap_or(0.0));
            for pair in v["latency_ns"].as_array().into_iter().flatten() {
                if let (Some(ns), Some(n)) = (pair[0].as_u64(), pair[1].as_u64()) {
                    all.record_n(ns.max(1), n).map_err(|e| failed(format!("a bench client's latency {ns} ns: {e}")))?;
                }
            }
        }
        match first_error {
            Some(e) => Err(failed(format!("a bench client's request failed: {e}"))),
            None => Ok((requests, seconds, all)),
        }
    }
}

impl Drop for LoadClients {
    fn drop(&mut self) {
        self.processes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
