//! The `uminfer` command line.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use uminfer::doctor::{self, probe::ProbeOptions, render};
use uminfer::session::ModeChoice;
use uminfer::{Runtime, SessionSpec};

#[derive(Parser)]
#[command(name = "uminfer", version, about = "Zero-copy low-latency libtorch inference runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the driver, GPUs, libtorch and shared memory; say which modes work here.
    ///
    /// Exit code: 0 all checks pass, 1 warnings (e.g. no GPU), 2 the CPU modes cannot run.
    Doctor {
        /// Machine-readable output (schema_version 1).
        #[arg(long)]
        json: bool,
        /// Skip the GPU smoke tests (managed-memory round trip).
        #[arg(long)]
        no_smoke: bool,
        /// Also diagnose this model: its signature, whether it loads, and
        /// which modes can run it here (and why not).
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Run a model (TorchScript .pt or AOTInductor .pt2) on inputs from .npy /
    /// .npz files through a session; write its outputs (.npy, or .npz for several).
    ///
    /// Dtypes and shapes come from the input files and are checked against
    /// the model. With --repeat N, prints the timing summary. --describe
    /// prints the model's signature instead.
    Run(RunArgs),
    /// Serve a model over shared memory (iceoryx2) as endpoint `uminfer/NAME`,
    /// or, with --grpc, models over the Open Inference Protocol (KServe v2 gRPC).
    ///
    /// Shared memory: `serve --name NAME --model PATH`. gRPC: `serve --grpc
    /// [ADDR] --model NAME=PATH [--model NAME=PATH ...]` (docs/oip.md).
    /// Stops cleanly on SIGINT/SIGTERM after finishing the requests in flight.
    Serve(ServeArgs),
    /// The serialize-copy scheme's HTTP/JSON server (started by `bench`; prints
    /// `http=ADDR`, serves until killed).
    #[command(hide = true)]
    BenchJsonServer {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, value_delimiter = ',')]
        input_shape: Vec<i64>,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        intra_op_threads: Option<u32>,
    },
    /// A client process of `bench --concurrency`'s server schemes (started by
    /// `bench`; prints `ready`, then runs `run N MS` commands from stdin).
    #[command(hide = true)]
    BenchClient {
        /// A shared-memory server's endpoint name.
        #[arg(long, conflicts_with = "grpc", required_unless_present = "grpc")]
        shm: Option<String>,
        /// A gRPC server's address.
        #[arg(long)]
        grpc: Option<String>,
        /// The model's inputs, NAME=DTYPE:DIMS, in its order.
        #[arg(long, required = true)]
        input_spec: Vec<uminfer::model::InputDecl>,
        /// The model's outputs, NAME=DTYPE:DIMS, in its order.
        #[arg(long, required = true)]
        output_spec: Vec<uminfer::model::InputDecl>,
        /// The samples, back to back (each its inputs' bytes in order).
        #[arg(long)]
        samples: PathBuf,
        /// The clients this process holds (one thread each): client I sends
        /// samples 2 × I and 2 × I + 1.
        #[arg(long, value_delimiter = ',', required = true)]
        index: Vec<usize>,
    },
    /// Compare every scheme side by side on one model: table on stdout, --json, --plot.
    ///
    /// Prints the doctor's verdict first; schemes this machine cannot run are
    /// listed with the reason.
    Bench(BenchArgs),
    /// Send tensors from .npy / .npz files to a `uminfer serve` endpoint
    /// (shared-memory protocol v2, any model); write its outputs (.npy, or .npz for several).
    Infer {
        /// Endpoint name.
        #[arg(long)]
        name: String,
        /// Inputs: NAME=FILE.npy (repeat, one per input), FILE.npy for a model
        /// with one input, or FILE.npz holding every input under its name.
        /// bfloat16 inputs take float32 files (converted; NumPy has no bf16).
        #[arg(long, value_name = "[NAME=]FILE", required = true)]
        input: Vec<uminfer::host_tensor::TensorFile>,
        /// Where to write the outputs: FILE.npy for a model with one output,
        /// FILE.npz for several (each under its name; bf16 as float32).
        #[arg(long)]
        output: PathBuf,
        /// Seconds to wait for the server and for the response.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Model file: TorchScript (.pt) or an AOTInductor package (.pt2).
    #[arg(long)]
    model: PathBuf,
    /// Inputs: NAME=FILE.npy (repeat, one per input), FILE.npy for a model
    /// with one input, or FILE.npz holding every input under its name.
    /// bfloat16 inputs take float32 files (converted; NumPy has no bf16).
    #[arg(long, value_name = "[NAME=]FILE", required_unless_present = "describe")]
    input: Vec<uminfer::host_tensor::TensorFile>,
    /// Where to write the outputs: FILE.npy for a model with one output,
    /// FILE.npz for several (each under its name; bf16 as float32).
    #[arg(long, required_unless_present = "describe")]
    output: Option<PathBuf>,
    /// Print the model's signature (inputs as it records them; outputs from
    /// one run on zeros) and exit; with --json as JSON.
    #[arg(long)]
    describe: bool,
    /// With --describe: declare an input the model does not record,
    /// NAME=DTYPE:DIMS (e.g. input_ids=int64:1,128). Repeatable.
    #[arg(long, value_name = "NAME=DTYPE:DIMS")]
    input_spec: Vec<uminfer::model::InputDecl>,
    /// cpu, gpu-copy, gpu-pinned, gpu-managed, gpu-managed-graph or auto.
    #[arg(long, default_value = "cpu")]
    mode: ModeChoice,
    /// CUDA device ordinal for GPU modes.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Requests to run (the output of the last is written).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Warm-up runs at build (at least 3).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Print the timing summary (or the signature) as JSON.
    #[arg(long)]
    json: bool,
    /// Write a CPU flame graph of the --repeat requests (every thread of the
    /// process) to DIR/run-MODEL.svg.
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// After the timed requests, run --trace-requests more under libtorch's
    /// profiler and write its trace (Chrome trace JSON: operators, and on a
    /// GPU kernels and copies) to PATH.json. Open it in Perfetto.
    #[arg(long, value_name = "PATH.json")]
    torch_trace: Option<PathBuf>,
    /// Requests in the --torch-trace.
    #[arg(long, value_name = "N", default_value_t = 10, requires = "torch_trace", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    trace_requests: usize,
    /// libtorch intra-op threads in `cpu` mode. Default: measured, the count
    /// of 1, 2, 4, ... cores under which the model's forward pass is fastest.
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    intra_op_threads: Option<usize>,
}

/// `uminfer serve`: the flags of both transports, then each one's own (a
/// flag of one transport beside the other's is refused).
#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    common: ServeCommon,
    #[command(flatten)]
    batch: BatchArgs,
    #[command(flatten)]
    shm: ShmServeArgs,
    #[command(flatten)]
    grpc: GrpcServeArgs,
}

/// Dynamic batching, on either transport (`--max-batch`).
#[derive(clap::Args)]
#[command(next_help_heading = "Dynamic batching (--max-batch)")]
struct BatchArgs {
    /// Gather requests into batches of up to N samples. Every input's and
    /// output's first dimension is the batch, and a request carries 1 to N
    /// samples. A session per bucket (--buckets) replaces --workers; in
    /// graph modes each captures its own CUDA graph.
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_batch: Option<usize>,
    /// How long the oldest waiting request may wait for others while a
    /// full batch cannot be formed, in µs (0: a lone request runs at once).
    #[arg(long, value_name = "US", default_value_t = 0, requires = "max_batch")]
    batch_delay_us: u64,
    /// The batch sizes to build a session for, ascending, the largest N
    /// (default 1,2,4,... below N, then N). A batch runs in the smallest
    /// that holds it, padded with zeros.
    #[arg(long, value_name = "SIZES", value_delimiter = ',', requires = "max_batch")]
    buckets: Vec<usize>,
    /// Requests that may wait (per model); beyond, a request is refused at
    /// once: RESOURCE_EXHAUSTED (REST: 429), shared memory: status busy.
    #[arg(long, value_name = "Q", default_value_t = uminfer::batch::DEFAULT_MAX_QUEUE, requires = "max_batch")]
    max_queue: usize,
    /// A request still waiting after this many ms is refused: UNAVAILABLE
    /// (REST: 503), shared memory: status busy; 0: no timeout.
    #[arg(long, value_name = "MS", default_value_t = 0, requires = "max_batch")]
    queue_timeout_ms: u64,
}

impl BatchArgs {
    /// The batching asked for, checked; `None` without --max-batch.
    fn spec(&self, workers: usize) -> anyhow::Result<Option<uminfer::batch::BatchSpec>> {
        let Some(n) = self.max_batch else { return Ok(None) };
        if workers > 1 {
            bail!("--max-batch runs one batcher per model, with a session per bucket: drop --workers {workers}");
        }
        let spec = uminfer::batch::BatchSpec::new(n)
            .max_queue_delay(std::time::Duration::from_micros(self.batch_delay_us))
            .max_queue(self.max_queue)
            .timeout((self.queue_timeout_ms > 0).then(|| std::time::Duration::from_millis(self.queue_timeout_ms)));
        let spec = if self.buckets.is_empty() { spec } else { spec.buckets(&self.buckets) };
        spec.bucket_sizes()?;
        Ok(Some(spec))
    }
}

/// What both transports take.
#[derive(clap::Args)]
struct ServeCommon {
    /// TorchScript model: PATH, or NAME=PATH (repeat for several models with --grpc;
    /// a bare PATH is named after its file stem).
    #[arg(long, required = true)]
    model: Vec<uminfer::oip::ModelSource>,
    /// cpu, gpu-copy, gpu-pinned, gpu-managed, gpu-managed-graph or auto.
    #[arg(long, default_value = "cpu")]
    mode: ModeChoice,
    /// Sessions and worker threads (with --grpc: sessions per model).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Largest request payload in bytes (with --grpc: largest request message).
    #[arg(long, default_value_t = 64 << 20)]
    max_bytes: usize,
    /// A one-input model's input shape, comma-separated, where the model
    /// records none (default: the recorded shape). With --grpc: every such
    /// model's, and NAME=DIMS (repeatable) gives model NAME a shape of its own.
    #[arg(long, value_name = "[NAME=]DIMS")]
    input_shape: Vec<uminfer::oip::InputShape>,
    /// libtorch intra-op threads of this process. Default in `cpu` mode:
    /// every core, or one fewer when a forward pass is short (shared
    /// memory: under 50 µs; with --grpc: under 1.33 ms, as its clients poll
    /// on a core for such answers); divided among the sessions that run at
    /// once (--workers; with --grpc, per model). Other modes: libtorch's
    /// default. The log says which and why (docs/ipc.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    intra_op_threads: Option<u32>,
    /// After each answer, poll this many µs for the next request before
    /// sleeping (shared memory: the request port; --grpc: the network, on
    /// the transport thread). Catches back-to-back requests without a
    /// wake-up; costs up to that much CPU per answer, yielding to other
    /// threads; 0 sleeps at once.
    #[arg(long, value_name = "US", default_value_t = 200)]
    spin_us: u64,
    /// Answer without running the model: zeros of the outputs' shapes after
    /// the same checks (`bench`'s floor schemes `shm-echo` and `grpc-echo`).
    #[arg(long, hide = true)]
    echo: bool,
    /// Write a CPU flame graph of this server process (every thread) to
    /// DIR/serve-NAME.svg (DIR/serve-grpc.svg with --grpc) at shutdown.
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// With --profile: start sampling at the first SIGUSR1 (`kill -USR1
    /// PID`, e.g. once the load of interest runs) instead of at once.
    #[arg(long, requires = "profile")]
    profile_from_signal: bool,
    /// With --profile: the flame graph's file name without `.svg`.
    #[arg(long, value_name = "STEM", requires = "profile", hide = true)]
    profile_name: Option<String>,
}

/// Shared memory only (`--name`).
#[derive(clap::Args)]
#[command(next_help_heading = "Shared memory (--name)")]
struct ShmServeArgs {
    /// Shared-memory endpoint name (without --grpc). Prints
    /// `ipc=uminfer/NAME` on stdout once the service exists.
    #[arg(long, required_unless_present = "grpc", conflicts_with = "grpc")]
    name: Option<String>,
    /// Shared memory: declare an input NAME=DTYPE:DIMS (e.g. input_ids=int64:1,128)
    /// where the model records none (or to override a TorchScript file's record);
    /// requests must match. Repeatable.
    #[arg(long, value_name = "NAME=DTYPE:DIMS", conflicts_with = "grpc")]
    input_spec: Vec<uminfer::model::InputDecl>,
}

/// The Open Inference Protocol only (`--grpc`).
#[derive(clap::Args)]
#[command(next_help_heading = "Open Inference Protocol (--grpc)")]
struct GrpcServeArgs {
    /// Serve the Open Inference Protocol over gRPC on ADDR (default 127.0.0.1:8001;
    /// port 0 picks a free port). Prints `grpc=ADDR` on stdout once listening.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = uminfer::oip::server::DEFAULT_ADDR)]
    grpc: Option<std::net::SocketAddr>,
    /// With --grpc: serve Prometheus metrics on http://ADDR/metrics (port 0 picks
    /// a free port). Prints `metrics=ADDR` on stdout after `grpc=ADDR`.
    #[arg(long, value_name = "ADDR", conflicts_with = "name")]
    metrics: Option<std::net::SocketAddr>,
    /// With --grpc: also serve the protocol's REST/JSON form (Triton's HTTP
    /// routes under /v2, binary tensor data included) on ADDR (port 0 picks a
    /// free port). Prints `http=ADDR` on stdout after `grpc=ADDR` (and `metrics=`).
    #[arg(long, value_name = "ADDR", conflicts_with = "name")]
    http: Option<std::net::SocketAddr>,
    /// With --grpc: concurrent streams (RPCs) per client connection (HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, value_name = "N", default_value_t = uminfer::oip::server::DEFAULT_MAX_STREAMS, value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "name")]
    max_streams: u32,
    /// With --grpc: inference calls in flight and inference streams open at once
    /// across all connections (gRPC and REST); beyond it a call is refused with
    /// RESOURCE_EXHAUSTED (REST: 429). Health, metadata and /metrics are never refused.
    #[arg(long, value_name = "N", default_value_t = uminfer::oip::server::DEFAULT_MAX_CALLS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), conflicts_with = "name")]
    max_calls: usize,
    /// With --grpc: system shared memory regions registered at once; beyond
    /// it a registration is refused with RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = uminfer::oip::shm::DEFAULT_MAX_REGIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), conflicts_with = "name")]
    max_shm_regions: usize,
    /// With --grpc: bytes mapped by all registered shared memory regions
    /// together (default 16 GiB); beyond it a registration is refused with RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "BYTES", default_value_t = uminfer::oip::shm::DEFAULT_MAX_BYTES, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "name")]
    max_shm_bytes: u64,
    /// With --grpc: connections open at once across the gRPC, REST and
    /// /metrics listeners; beyond it a new connection is closed at once.
    #[arg(long, value_name = "N", default_value_t = uminfer::oip::conn::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), conflicts_with = "name")]
    max_connections: usize,
    /// With --grpc: close a connection that has had no request or stream in
    /// progress for this many seconds (0: never).
    #[arg(long, value_name = "S", default_value_t = uminfer::oip::conn::DEFAULT_IDLE_TIMEOUT_S, conflicts_with = "name")]
    idle_timeout_s: u64,
    /// With --grpc: the REST and /metrics listeners close a connection whose
    /// request head (line and headers) has not arrived within this many seconds;
    /// with --tls-cert, every listener closes one whose TLS handshake has not
    /// finished within it.
    #[arg(long, value_name = "S", default_value_t = uminfer::oip::conn::DEFAULT_HEADER_TIMEOUT_S, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "name")]
    header_timeout_s: u64,
    /// With --grpc: REST requests whose body has not arrived whole within
    /// this many seconds are answered 408.
    #[arg(long, value_name = "S", default_value_t = uminfer::oip::conn::DEFAULT_BODY_TIMEOUT_S, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "name")]
    body_timeout_s: u64,
    /// With --grpc: accept system shared memory registration from any peer.
    /// By default only loopback peers may register: a registered region is
    /// read back through the model, so a remote peer could read any
    /// /dev/shm object this server's user owns.
    #[arg(long, conflicts_with = "name")]
    shm_from_any_peer: bool,
    /// With --grpc: serve gRPC calls of these categories only with metadata
    /// KEY=VALUE (others get UNAVAILABLE), as Triton's option. Categories:
    /// health, metadata, inference, shared-memory, model-config,
    /// model-repository, statistics, trace, logging. Repeatable.
    #[arg(long, value_name = "CATEGORY[,...]:KEY=VALUE", conflicts_with = "name")]
    grpc_restricted_protocol: Vec<uminfer::oip::access::Restriction>,
    /// With --grpc and --http: serve REST routes of these categories only
    /// with header KEY=VALUE (others get 403), as Triton's option. Repeatable.
    #[arg(long, value_name = "CATEGORY[,...]:KEY=VALUE", conflicts_with = "name")]
    http_restricted_api: Vec<uminfer::oip::access::Restriction>,
    /// With --grpc: serve every listener (gRPC, REST, /metrics) over TLS only,
    /// with this certificate chain (PEM, the server's certificate first); needs
    /// --tls-key. gRPC offers ALPN h2, REST and /metrics http/1.1; a plain-text
    /// client's connection is closed (docs/security.md).
    #[arg(long, value_name = "PATH", requires = "tls_key", conflicts_with = "name")]
    tls_cert: Option<PathBuf>,
    /// With --grpc: the private key of --tls-cert's certificate (PEM: PKCS#8,
    /// PKCS#1 or SEC1); needs --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert", conflicts_with = "name")]
    tls_key: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Model: tiny, resnet18, identity, encoder, heads, dtypes (models/NAME.pt),
    /// a file in models/ (tiny.pt2), or a path. Repeat to run several
    /// models side by side in one interleaved run.
    #[arg(long, default_value = "tiny")]
    model: Vec<String>,
    /// The shape of a one-input model's input, comma-separated (its dtype:
    /// the model's, or float32 when the model records none). Default: what
    /// the model records.
    #[arg(long, value_delimiter = ',')]
    shape: Option<Vec<i64>>,
    /// Declare an input: NAME=DTYPE:DIMS (e.g. input_ids=int64:1,128). Repeatable.
    #[arg(long, value_name = "NAME=DTYPE:DIMS")]
    input_spec: Vec<uminfer::model::InputDecl>,
    /// Draw integer input NAME's values in [LOW, HIGH) (token ids must stay
    /// inside the vocabulary). Default: the range the model records, else [0, 2).
    #[arg(long, value_name = "NAME=LOW..HIGH", value_parser = uminfer::bench::parse_input_range)]
    input_range: Vec<(String, (i64, i64))>,
    /// Sample inputs (.npz, each input under its name) for every request
    /// and the check, instead of random draws.
    #[arg(long, value_name = "FILE.npz")]
    inputs: Option<PathBuf>,
    /// Timed requests per scheme (default: 1000, or 100 for resnet18).
    #[arg(long)]
    requests: Option<usize>,
    /// Requests each scheme runs back to back in its turn of a round.
    /// Default: a tenth of --requests, at most 100, so that every run has at
    /// least 10 rounds, the schemes stay interleaved through the whole run,
    /// and each turn reaches the scheme's own steady state (its first
    /// requests, which wake what the pause between turns put to sleep, count
    /// in the tail percentiles). 1 interleaves strictly (sporadic traffic:
    /// every request starts cold); --requests runs each scheme alone.
    #[arg(long)]
    burst: Option<usize>,
    /// Pause in ms after each scheme's turn, so that threads still spinning
    /// from it (OpenMP workers spin for milliseconds after a forward pass)
    /// are asleep before the next scheme's turn starts.
    #[arg(long, default_value_t = 10.0)]
    settle_ms: f64,
    /// Warm-up requests of every scheme before timing (at least).
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Minimum warm-up time in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Schemes to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    schemes: Option<Vec<String>>,
    /// Python with torch 2.11 for the py-* peers (default: .venv, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Busy-wait in µs of the session schemes' caller and session threads
    /// (and of --concurrency's in-process batcher and its callers) before
    /// they sleep (default: the session default, 50 µs CPU, 1000 µs GPU).
    #[arg(long)]
    spin_us: Option<u64>,
    /// Page placement of the managed schemes' regions: migrate (prefetch
    /// around each request), host-resident (read and written in place), or
    /// pinned (pinned-mapped host memory instead of managed, read in place).
    #[arg(long, default_value = "host-resident")]
    managed_placement: uminfer::session::ManagedPlacement,
    /// How gpu-managed-graph launches its graph: direct (cuGraphLaunch, when
    /// the model is deterministic) or libtorch (CUDAGraph::replay).
    #[arg(long, default_value = "direct")]
    graph_launch: uminfer::session::GraphLaunch,
    /// Capture every GPU scheme's request into a CUDA graph (gpu-copy: copy
    /// in, forward, copy out; gpu-pinned, gpu-managed: the forward), not only
    /// gpu-managed-graph's.
    #[arg(long)]
    capture_graphs: bool,
    /// GPU session schemes launch graphs from their session thread (a
    /// hand-off per request) instead of the measuring thread.
    #[arg(long)]
    gpu_session_thread: bool,
    /// GPU session schemes (but gpu-copy) copy their input into device memory
    /// with a copy kernel first, and the model reads it there.
    #[arg(long)]
    stage_input: bool,
    /// Session mode of the server processes of shm-ipc, oip-grpc and
    /// oip-grpc-shm (`serve --mode`): cpu, gpu-copy, gpu-pinned, gpu-managed
    /// or gpu-managed-graph. Those schemes are unavailable, with the doctor's
    /// reason, where the mode is.
    #[arg(long, default_value = "cpu")]
    server_mode: uminfer::Mode,
    /// Core to pin the measuring thread to (-1: do not pin).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    core: i64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the latency distributions into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write CPU flame graphs of this process into DIR, per scheme and model
    /// (MODEL-SCHEME.svg), of --requests extra requests after the timed run
    /// (the timed figures are not profiled; a server scheme's shows its client
    /// side, and its server writes MODEL-SCHEME-server.svg).
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// After the timed run, split --requests more requests of each scheme
    /// into phases (writing the input, the session's pass, the hand-off to
    /// its thread, device time, the server's queue and compute, reading the
    /// outputs) and print and record each phase's P50 and mean (docs/profiling.md).
    #[arg(long)]
    phases: bool,
    /// libtorch intra-op threads of the in-process CPU schemes (cpu-zero-copy,
    /// tch-naive, and --concurrency's). Default: measured, the count of 1, 2,
    /// 4, ... cores under which the models' forward passes are fastest.
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    intra_op_threads: Option<usize>,
    /// Measure closed-loop throughput instead of the latency schemes: K
    /// clients per value, each sending its next request when its answer is
    /// back, in --server-mode, interleaved: client threads through one
    /// session (`sessions`) and a batcher (`batched`); client processes
    /// through a `uminfer serve` process over shared memory (`shm`,
    /// `shm-batched`) and gRPC (`grpc`, `grpc-batched`). --schemes picks
    /// among these (docs/bench.md).
    #[arg(long, value_name = "K,...", value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// With --concurrency: the batcher's largest batch (default: the largest K, at most 64).
    #[arg(long, value_name = "N", requires = "concurrency")]
    max_batch: Option<usize>,
    /// With --concurrency: the batcher's queue delay in µs.
    #[arg(long, value_name = "US", default_value_t = 0, requires = "concurrency")]
    batch_delay_us: u64,
    /// With --concurrency: the batcher's buckets (default 1,2,4,... up to --max-batch).
    #[arg(long, value_name = "SIZES", value_delimiter = ',', requires = "concurrency")]
    buckets: Vec<usize>,
    /// With --concurrency: milliseconds of one measurement (a scheme at one K) per round.
    #[arg(long, value_name = "MS", default_value_t = 1000, requires = "concurrency")]
    cell_ms: u64,
    /// With --concurrency: rounds, each measuring every scheme at every K once.
    #[arg(long, value_name = "N", default_value_t = 3, requires = "concurrency")]
    rounds: usize,
}

/// A bench model argument: a reference name (`models/NAME.pt`), a file in
/// `models/`, or a path.
fn model_path(arg: &str) -> PathBuf {
    let in_models = PathBuf::from("models").join(arg);
    let reference = PathBuf::from(format!("models/{arg}.pt"));
    if !arg.contains('/') && !arg.contains('.') && reference.exists() {
        reference
    } else if !arg.contains('/') && in_models.exists() {
        in_models
    } else {
        PathBuf::from(arg)
    }
}

fn bench_client(shm: Option<String>, grpc: Option<String>, inputs: Vec<uminfer::model::InputDecl>, outputs: Vec<uminfer::model::InputDecl>, samples: &std::path::Path, index: &[usize]) -> anyhow::Result<()> {
    use uminfer::bench::load::LoadTarget;
    let target = match (shm, grpc) {
        (Some(name), _) => LoadTarget::Shm(name),
        (None, Some(addr)) => LoadTarget::Grpc(addr),
        (None, None) => bail!("give --shm NAME or --grpc ADDR"),
    };
    Ok(uminfer::bench::load::client(&target, &inputs, &outputs, samples, index)?)
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    use uminfer::bench::{self, BenchOptions};
    let models: Vec<PathBuf> = a.model.iter().map(|m| model_path(m)).collect();
    let rt = Runtime::new();
    println!("Execution modes on this machine (uminfer doctor):");
    for m in uminfer::Mode::ALL {
        if let Some(v) = rt.report().modes.get(&m) {
            println!("  {:<18} {:<9} {}", m.id(), if v.usable { "usable" } else { "unusable" }, v.reason);
        }
    }
    let requests = a.requests.unwrap_or(if a.model.iter().any(|m| m.contains("resnet")) { 100 } else { 1000 });
    let mut inputs = a.input_spec;
    if let Some(shape) = a.shape {
        inputs.push(uminfer::model::InputDecl { name: None, dtype: None, shape: Some(shape) });
    }
    let opts = BenchOptions {
        models,
        inputs,
        input_ranges: a.input_range,
        sample_inputs: a.inputs,
        requests,
        burst: a.burst.unwrap_or((requests / 10).clamp(1, 100)),
        settle: std::time::Duration::try_from_secs_f64(a.settle_ms / 1e3).context("--settle-ms must be a finite number of milliseconds, 0 or more")?,
        spin: a.spin_us.map(std::time::Duration::from_micros),
        managed_placement: a.managed_placement,
        graph_launch: a.graph_launch,
        capture_graphs: a.capture_graphs,
        gpu_session_thread: a.gpu_session_thread,
        stage_input: a.stage_input,
        server_mode: a.server_mode,
        warmup: a.warmup,
        warmup_time: std::time::Duration::try_from_secs_f64(a.warmup_secs).context("--warmup-secs must be a finite number of seconds, 0 or more")?,
        schemes: a.schemes.clone().unwrap_or_else(|| bench::SCHEMES.iter().map(|s| s.to_string()).collect()),
        python: a.python,
        core: usize::try_from(a.core).ok(),
        server_exe: std::env::current_exe().context("finding this uminfer binary (the bench starts it as its servers)")?,
        progress: true,
        profile: a.profile,
        phases: a.phases,
        intra_op_threads: a.intra_op_threads,
    };
    if let Some(concurrency) = a.concurrency {
        let max_batch = a.max_batch.unwrap_or_else(|| concurrency.iter().copied().max().unwrap_or(1).clamp(1, 64));
        let batch = uminfer::batch::BatchSpec::new(max_batch).max_queue_delay(std::time::Duration::from_micros(a.batch_delay_us));
        let batch = if a.buckets.is_empty() { batch } else { batch.buckets(&a.buckets) };
        let t = bench::throughput::ThroughputOptions {
            concurrency,
            batch,
            mode: a.server_mode,
            cell: std::time::Duration::from_millis(a.cell_ms),
            rounds: a.rounds,
            schemes: a.schemes.unwrap_or_default(),
        };
        let report = bench::throughput::run(&rt, &opts, &t)?;
        let labels: Vec<&str> = report.models.iter().map(|m| m.label.as_str()).collect();
        println!(
            "\n{} — closed-loop throughput, {} rounds of {} ms per scheme and K, mode {}, batches up to {} (buckets {:?}, delay {} µs); {} ({} cores)",
            labels.join(" + "),
            report.rounds,
            report.cell_ms,
            report.mode,
            report.max_batch,
            report.buckets,
            report.batch_delay_us,
            report.machine.cpu,
            report.machine.cores
        );
        print!("{}", bench::throughput::table(&report.results));
        if let Some(p) = &a.json {
            std::fs::write(p, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", p.display()))?;
            tracing::info!("wrote {}", p.display());
        }
        if let Some(p) = &a.plot {
            let title = format!("{} throughput against P99 latency, {} ({} cores)", labels.join(" + "), report.machine.cpu, report.machine.cores);
            bench::plot::throughput_svg(&report.results, &title, p)?;
            tracing::info!("wrote {}", p.display());
        }
        return Ok(());
    }
    let report = bench::run(&rt, &opts)?;
    let order = if report.burst == 1 { "interleaved".to_string() } else { format!("interleaved in bursts of {}", report.burst) };
    let gpus = if report.machine.gpus.is_empty() { String::new() } else { format!(", {}", report.machine.gpus.join(", ")) };
    let labels: Vec<&str> = report.models.iter().map(|m| m.label.as_str()).collect();
    println!("\n{} — {} timed requests per scheme, {order}; {} ({} cores){gpus}", labels.join(" + "), requests, report.machine.cpu, report.machine.cores);
    for m in &report.models {
        let list = |ts: &[uminfer::model::TensorInfo]| ts.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
        println!("  {} ({}): inputs {} ({}); outputs {}", m.label, m.format, list(&m.inputs), m.input_source, list(&m.outputs));
    }
    print!("{}", bench::stats::table(&report.results));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", p.display()))?;
        tracing::info!("wrote {}", p.display());
    }
    if let Some(p) = &a.plot {
        let title = format!("{} latency, {} ({} cores){gpus}", labels.join(" + "), report.machine.cpu, report.machine.cores);
        bench::plot::cdf_svg(&report.results, &title, p)?;
        tracing::info!("wrote {}", p.display());
    }
    Ok(())
}

fn serve_shm(opts: uminfer::ipc::ServeOptions, threads: Option<u32>) -> anyhow::Result<()> {
    let rt = Runtime::new();
    // The thread choice times a pass over the inputs the model records, or
    // over a one-input model's declared shape.
    let one_input = rt.model(&opts.model)?.inputs()?.len() == 1;
    let shape = match opts.inputs.as_slice() {
        [only] if one_input => only.shape.as_deref(),
        _ => None,
    };
    // Batched, one thread (the batcher's) runs the passes.
    let concurrent = if opts.batching.is_some() { 1 } else { opts.workers };
    choose_intra_op_threads(&rt, threads, opts.mode, uminfer::intra_op::Clients::SharedMemory, &[(opts.model.clone(), shape)], concurrent)?;
    let service = format!("uminfer/{}", opts.name);
    let server = uminfer::ipc::Server::new(&rt, opts)?;
    // What a parent process waits for (as `serve --grpc` prints `grpc=ADDR`).
    println!("ipc={service}");
    server.run()?;
    let st = server.stats();
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        "stopped: {} served, {} bad requests, {} model errors, {} refused busy, {} abandoned by their clients",
        n(&st.served),
        n(&st.bad_requests),
        n(&st.model_errors),
        n(&st.busy),
        n(&st.abandoned)
    );
    if let Some(b) = server.batch_stats() {
        tracing::info!("batching: {b}");
    }
    Ok(())
}

/// Sets this server process's libtorch intra-op threads
/// ([`uminfer::intra_op::set_for_server`]) and logs the choice.
fn choose_intra_op_threads(rt: &Runtime, explicit: Option<u32>, mode: ModeChoice, clients: uminfer::intra_op::Clients, models: &[(PathBuf, Option<&[i64]>)], concurrent: usize) -> anyhow::Result<()> {
    let opened = models.iter().map(|(path, shape)| Ok((rt.model(path)?, *shape))).collect::<uminfer::Result<Vec<_>>>()?;
    let cpu = mode == ModeChoice::Fixed(uminfer::Mode::Cpu);
    let (n, why) = uminfer::intra_op::set_for_server(explicit.map(|n| n as usize), cpu, clients, &opened, concurrent)?;
    tracing::info!("libtorch intra-op threads: {n} ({why})");
    Ok(())
}

/// `uminfer serve`: over the Open Inference Protocol with `--grpc`, else over shared memory.
fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let threads = a.common.intra_op_threads;
    let batching = a.batch.spec(a.common.workers)?;
    // Armed first, before the server starts any thread (SIGUSR1 is blocked in all of them).
    let profile = match &a.common.profile {
        Some(dir) => {
            let stem = a.common.profile_name.clone().unwrap_or_else(|| match (&a.grpc.grpc, &a.shm.name) {
                (None, Some(name)) => format!("serve-{name}"),
                _ => "serve-grpc".into(),
            });
            let start = if a.common.profile_from_signal { uminfer::profile::ProfileStart::OnSigusr1 } else { uminfer::profile::ProfileStart::Now };
            if a.grpc.grpc.is_none() {
                uminfer::ipc::service::install_signal_handlers()?;
            }
            Some(uminfer::profile::ServerProfile::arm(&format!("uminfer serve ({stem})"), uminfer::profile::svg_path(dir, &stem), start)?)
        }
        None => None,
    };
    let served = match a.grpc.grpc {
        Some(addr) => serve_grpc(a.grpc.options(addr, a.common, batching)?, threads),
        None => serve_shm(a.shm.options(a.common, batching)?, threads),
    };
    if let Some(p) = profile {
        let path = p.path().to_path_buf();
        match p.finish() {
            Ok(Some(samples)) => tracing::info!("CPU flame graph of the server: {} ({samples} samples)", path.display()),
            Ok(None) => {}
            Err(e) => tracing::warn!("--profile: {e}"),
        }
    }
    served
}

impl ShmServeArgs {
    /// One endpoint name and one model path.
    fn options(self, c: ServeCommon, batching: Option<uminfer::batch::BatchSpec>) -> anyhow::Result<uminfer::ipc::ServeOptions> {
        let name = self.name.context("--name is required without --grpc")?;
        let mut opts = match c.model.as_slice() {
            [m] => uminfer::ipc::ServeOptions::new(&name, m.path.clone()),
            _ => bail!("shared-memory serving takes one --model PATH ({} given); serve several models with --grpc", c.model.len()),
        };
        opts.mode = c.mode;
        opts.workers = c.workers;
        opts.spin = std::time::Duration::from_micros(c.spin_us);
        opts.max_bytes = c.max_bytes;
        opts.echo = c.echo;
        opts.batching = batching;
        match c.input_shape.as_slice() {
            [] => {}
            [uminfer::oip::InputShape { model: None, dims }] => opts = opts.input_shape(dims),
            _ => bail!("shared-memory serving takes one --input-shape DIMS (NAME=DIMS is for --grpc with several models)"),
        }
        opts.inputs.extend(self.input_spec);
        Ok(opts)
    }
}

impl GrpcServeArgs {
    /// The models, limits, listeners and batching of `serve --grpc ADDR`.
    fn options(self, addr: std::net::SocketAddr, c: ServeCommon, batching: Option<uminfer::batch::BatchSpec>) -> anyhow::Result<uminfer::oip::GrpcOptions> {
        let input_shapes = uminfer::oip::InputShapes::new(&c.input_shape, &c.model)?;
        let mut opts = uminfer::oip::GrpcOptions::new(addr, c.model);
        opts.mode = c.mode;
        opts.sessions = c.workers;
        opts.max_message_bytes = c.max_bytes;
        opts.input_shapes = input_shapes;
        opts.metrics_addr = self.metrics;
        opts.http_addr = self.http;
        opts.max_streams = self.max_streams;
        opts.max_calls = self.max_calls;
        opts.max_shm_regions = self.max_shm_regions;
        opts.max_shm_bytes = self.max_shm_bytes;
        opts.spin = std::time::Duration::from_micros(c.spin_us);
        opts.echo = c.echo;
        opts.connections = uminfer::oip::conn::Limits {
            max_connections: self.max_connections,
            idle: (self.idle_timeout_s > 0).then(|| std::time::Duration::from_secs(self.idle_timeout_s)),
            header: std::time::Duration::from_secs(self.header_timeout_s),
            body: std::time::Duration::from_secs(self.body_timeout_s),
        };
        opts.shm_from_any_peer = self.shm_from_any_peer;
        opts.grpc_restricted = self.grpc_restricted_protocol;
        opts.http_restricted = self.http_restricted_api;
        opts.batching = batching;
        opts.tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(uminfer::oip::tls::Tls::from_pem_files(&cert, &key)?),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together: give both (PEM files) or neither"),
        };
        Ok(opts)
    }
}

/// `serve --grpc`: the addresses go to stdout as `grpc=ADDR` (then
/// `metrics=ADDR` and `http=ADDR`) once listening.
fn serve_grpc(opts: uminfer::oip::GrpcOptions, threads: Option<u32>) -> anyhow::Result<()> {
    let rt = Runtime::new();
    let models: Vec<(PathBuf, Option<&[i64]>)> = opts.models.iter().map(|m| (m.path.clone(), opts.input_shapes.of(&m.name))).collect();
    choose_intra_op_threads(&rt, threads, opts.mode, uminfer::intra_op::Clients::Grpc, &models, opts.sessions * models.len())?;
    let server = uminfer::oip::GrpcServer::new(&rt, opts)?;
    server.run(|at| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "grpc={}", at.grpc);
        if let Some(metrics) = at.metrics {
            let _ = writeln!(out, "metrics={metrics}");
        }
        if let Some(http) = at.http {
            let _ = writeln!(out, "http={http}");
        }
        let _ = out.flush();
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// `uminfer infer`: the inputs fitted to the endpoint's model as `uminfer
/// run` fits them (a lone tensor to a one-input model, float32 files to
/// bf16 inputs), sent over shared memory; the outputs written.
fn infer(name: &str, inputs: &[uminfer::host_tensor::TensorFile], output: &std::path::Path, timeout: f64) -> anyhow::Result<()> {
    let mut given = uminfer::host_tensor::read_tensor_files(inputs).context("--input")?;
    let timeout = std::time::Duration::try_from_secs_f64(timeout).context("--timeout must be a finite number of seconds")?;
    let mut client = uminfer::ipc::Client::connect(name, timeout)?;
    if let ([only], [t]) = (client.inputs(), given.as_mut_slice()) {
        t.name.clone_from(&only.name);
    }
    for t in &mut given {
        if client.inputs().iter().any(|m| m.name == t.name && m.dtype == uminfer::DType::Bf16) && t.dtype == uminfer::DType::F32 {
            tracing::info!("input `{}`: float32 values converted to bf16 (the model's dtype; NumPy has no bfloat16)", t.name);
            *t = t.converted(uminfer::DType::Bf16)?;
        }
    }
    let views = given.iter().map(uminfer::ipc::NamedTensor::of).collect::<uminfer::Result<Vec<_>>>()?;
    uminfer::host_tensor::write_tensor_file(output, &client.infer_tensors(&views)?).context("--output")
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let rt = Runtime::new();
    let model = rt.model(&a.model)?;
    if a.describe {
        let fitted = if a.input.is_empty() { None } else { Some(model.fit_inputs(uminfer::host_tensor::read_tensor_files(&a.input).context("--input")?)?) };
        let decls = fitted.map_or(a.input_spec, |f| f.decls());
        let d = model.describe(&decls);
        if a.json {
            println!("{}", serde_json::to_string_pretty(&d)?);
        } else {
            print!("{d}");
        }
        return Ok(());
    }
    let output = a.output.context("--output is required")?;
    let fitted = model.fit_inputs(uminfer::host_tensor::read_tensor_files(&a.input).context("--input")?)?;
    for n in &fitted.notes {
        tracing::info!("{n}");
    }
    if a.mode == ModeChoice::Fixed(uminfer::Mode::Cpu) {
        let inputs = model.resolve(&fitted.decls(), None)?;
        let (n, why) = uminfer::intra_op::set_for_sessions(a.intra_op_threads, &[(&model, &inputs)], 1)?;
        tracing::info!("libtorch intra-op threads: {n} ({why})");
    }
    let mut spec = SessionSpec::new().mode_choice(a.mode).device(a.device).warmup(a.warmup);
    for d in fitted.decls() {
        spec = spec.declare(d);
    }
    let mut session = rt.session(&model, spec)?;
    tracing::info!("mode {}: {}", session.mode(), session.note());
    for t in &fitted.tensors {
        session.write_input(t)?;
    }
    let profile = a.profile.as_ref().map(|_| uminfer::profile::CpuProfile::start(&format!("uminfer run {} --repeat {}", a.model.display(), a.repeat))).transpose()?;
    for _ in 0..a.repeat.max(1) {
        session.run()?;
    }
    if let (Some(p), Some(dir)) = (profile, &a.profile) {
        let stem = a.model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let path = uminfer::profile::svg_path(dir, &format!("run-{stem}"));
        let samples = p.write_svg(&path)?;
        tracing::info!("CPU flame graph of the requests: {} ({samples} samples)", path.display());
    }
    let outputs = (0..session.outputs().len()).map(|i| session.read_output(i)).collect::<uminfer::Result<Vec<_>>>()?;
    uminfer::host_tensor::write_tensor_file(&output, &outputs).context("--output")?;
    let timing = session.timing().context("no request was timed")?;
    if let Some(path) = &a.torch_trace {
        session.trace(a.trace_requests, path).context("--torch-trace")?;
        tracing::info!("libtorch trace of {} requests: {}", a.trace_requests, path.display());
    }
    if a.json {
        let v = serde_json::json!({ "mode": session.mode(), "note": session.note(), "output": output, "outputs": session.outputs(), "timing": timing });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let shapes: Vec<String> = session.outputs().iter().map(|o| o.to_string()).collect();
        println!("mode {} ({}), outputs {} written to {}", session.mode(), session.note(), shapes.join(", "), output.display());
        let line = |label: &str, t: &uminfer::session::Summary| {
            println!("{label:<6} n={} p50={:.1}µs p90={:.1}µs p99={:.1}µs mean={:.1}µs std={:.1}µs", t.count, t.p50_us, t.p90_us, t.p99_us, t.mean_us, t.std_us)
        };
        line("host", &timing.host);
        if let Some(d) = &timing.device {
            line("device", d);
        }
    }
    Ok(())
}

fn report_error(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

fn main() {
    // A package that does not record its inputs checks every run's inputs
    // itself (the library refuses such packages otherwise). Set before any
    // thread exists: setenv is not thread-safe.
    if std::env::var_os(uminfer::model::AOTI_CHECK_INPUTS).is_none() {
        // SAFETY: the process is single-threaded here (nothing has started a
        // thread yet), so no other thread reads the environment meanwhile.
        unsafe { std::env::set_var(uminfer::model::AOTI_CHECK_INPUTS, "1") };
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Doctor { json, no_smoke, model } => {
            let report = doctor::diagnose(ProbeOptions { smoke_tests: !no_smoke });
            let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            match model {
                None => {
                    if json {
                        println!("{}", render::json(&report));
                    } else {
                        print!("{}", render::text(&report, color));
                    }
                    report.exit_code()
                }
                Some(path) => {
                    let m = doctor::model::diagnose_model(&report, &path);
                    if json {
                        println!("{}", render::model_json(&report, &m));
                    } else {
                        print!("{}", render::model_text(&report, &m, color));
                    }
                    m.exit_code(&report)
                }
            }
        }
        Command::Run(a) => report_error(run(a)),
        Command::Serve(a) => report_error(serve(a)),
        Command::Bench(a) => report_error(bench(a)),
        Command::BenchJsonServer { model, input_shape, intra_op_threads } => {
            if let Some(n) = intra_op_threads {
                tch::set_num_threads(i32::try_from(n).unwrap_or(i32::MAX));
            }
            report_error(uminfer::bench::json_server::run(&model, &input_shape).map_err(Into::into))
        }
        Command::BenchClient { shm, grpc, input_spec, output_spec, samples, index } => report_error(bench_client(shm, grpc, input_spec, output_spec, &samples, &index)),
        Command::Infer { name, input, output, timeout } => report_error(infer(&name, &input, &output, timeout)),
    };
    std::process::exit(code);
}
