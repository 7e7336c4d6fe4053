//! The Open Inference Protocol endpoint (`uminfer serve --grpc`) driven by
//! Triton's own, unmodified Python client (`tritonclient[grpc]` in the
//! project venv, through `tests/oip_client.py`): health (also the standard
//! `grpc.health.v1` service) and metadata,
//! inference with `tiny` and `resnet18` equal to PyTorch's reference outputs
//! (raw bytes and typed contents), a stream of many requests in flight each
//! answered under its id, Triton's system shared memory extension (inputs
//! read from and outputs written to registered `/dev/shm` regions, and each
//! refusal), every error path as a clear gRPC status with the server still
//! serving, unregistering regions that requests in flight use, a SIGTERM
//! that lets the requests in flight finish, the
//! Prometheus `/metrics` counters (moved by exactly the requests sent),
//! the `--max-streams` bound per connection, no CPU used once idle, a small load run from
//! several client processes (`tests/oip_load.py`) with every answer checked,
//! and the REST/JSON form (`--http`) driven by `tritonclient[http]`
//! (`tests/oip_http_client.py`).

mod common;

use common::text;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

/// Longest a Python client may run (a loaded 2-core machine starts numpy slowly).
const PYTHON_DEADLINE: Duration = Duration::from_secs(180);
/// Longest the server may take to load its models and listen.
const START_DEADLINE: Duration = Duration::from_secs(120);

/// The venv's python, or `None` in a GPU bundle (which carries no venv).
fn python() -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(std::env::var_os("UMINFER_BIN").is_some(), "{} missing: run `bash ci/setup` (it installs tritonclient[grpc,http])", python.display());
    None
}

/// Returns from the calling test when there is no Python environment (bundle runs only).
macro_rules! require_python {
    () => {
        match python() {
            Some(p) => p,
            None => {
                let _ = writeln!(std::io::stderr(), "SKIPPED (no project venv in this bundle): {}", module_path!());
                return;
            }
        }
    };
}

/// `python tests/SCRIPT ARGS…`, stdin and stdout piped.
fn script(python: &PathBuf, name: &str, args: &[&str]) -> Command {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join(name);
    let mut cmd = Command::new(python);
    cmd.arg(script).args(args);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// `python tests/oip_client.py MODE URL ARGS…`, stdin and stdout piped.
fn client(python: &PathBuf, mode: &str, url: &str, args: &[&str]) -> Command {
    let mut cmd = script(python, "oip_client.py", &[mode, url]);
    cmd.args(args);
    cmd
}


/// A `uminfer serve --grpc 127.0.0.1:0` child; SIGTERM and wait on drop.
struct GrpcServer {
    child: Child,
    url: String,
    log: PathBuf,
    /// The lines the server prints on stdout after `grpc=ADDR`.
    stdout: std::sync::mpsc::Receiver<String>,
}

impl GrpcServer {
    /// Starts the server with `args` after `serve --grpc 127.0.0.1:0` and
    /// reads the bound address from its `grpc=ADDR` line.
    fn start(tag: &str, args: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!("uminfer-oip-{tag}-{}.log", std::process::id()));
        let mut child = Command::new(common::uminfer_bin())
            .args(["serve", "--grpc", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("creating the server log file"))
            .spawn()
            .expect("starting `uminfer serve --grpc`");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line.ok().and_then(|l| tx.send(l).ok()).is_none() {
                    return;
                }
            }
        });
        let line = rx.recv_timeout(START_DEADLINE).unwrap_or_default();
        let mut server = Self { child, url: String::new(), log, stdout: rx };
        match line.trim().strip_prefix("grpc=") {
            Some(addr) => server.url = addr.to_string(),
            None => panic!("the server did not report its address (stdout {line:?}); log:\n{}", server.log()),
        }
        server
    }

    /// The address of the next stdout line, which must be `KEY=ADDR`.
    fn reported(&self, key: &str) -> String {
        let line = self.stdout.recv_timeout(START_DEADLINE).unwrap_or_default();
        match line.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')) {
            Some(addr) => addr.to_string(),
            None => panic!("the server did not report its {key} address (stdout {line:?}); log:\n{}", self.log()),
        }
    }

    /// The `/metrics` URL from the `metrics=ADDR` line (started with `--metrics`).
    fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.reported("metrics"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn sigterm(&self) {
        // SAFETY: plain kill(2) on our own child's pid (not yet reaped while `self` lives).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// SIGTERM, then wait (SIGKILL after 30 s); the exit status.
    fn stop(&mut self) -> ExitStatus {
        self.sigterm();
        common::wait_or_kill(&mut self.child, Duration::from_secs(30))
    }

    /// [`stop`](Self::stop), which must end in exit status 0.
    fn stop_cleanly(&mut self) {
        let status = self.stop();
        assert!(status.success(), "the server did not exit cleanly after SIGTERM ({status}):\n{}", self.log());
    }

    /// Runs a client to completion; panics with both sides' output when it fails.
    fn run_client(&mut self, python: &PathBuf, mode: &str, args: &[&str]) -> String {
        let out = common::finish(client(python, mode, &self.url, args).spawn().expect("starting the venv python"), PYTHON_DEADLINE);
        self.check(mode, &out)
    }

    fn check(&mut self, mode: &str, out: &Output) -> String {
        if !out.status.success() {
            let running = self.is_running();
            panic!(
                "oip_client.py {mode}: exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- server (running: {running}) log ---\n{}",
                out.status.code(),
                text(&out.stdout),
                text(&out.stderr),
                self.log()
            );
        }
        text(&out.stdout)
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if self.is_running() {
            self.stop();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn model(name: &str) -> String {
    common::model_path(name).display().to_string()
}

/// `NAME=PATH` of the reference model `models/NAME.pt`, for `--model`.
fn served(name: &str) -> String {
    format!("{name}={}", model(&format!("{name}.pt")))
}

fn lines(stdout: &str) -> Vec<&str> {
    stdout.lines().collect()
}

#[test]
fn tritonclient_sees_a_live_ready_server_and_each_models_metadata() {
    let py = require_python!();
    let tiny = served("tiny");
    let resnet = served("resnet18");
    let mut server = GrpcServer::start("health", &["--model", &tiny, "--model", &resnet]);
    let out = server.run_client(&py, "health", &["tiny:1,10", "resnet18:1,1000"]);
    assert_eq!(lines(&out), ["metadata_tiny=ok", "config_tiny=ok", "metadata_resnet18=ok", "config_resnet18=ok", "repository_index=ok", "grpc_health=ok", "health=ok"]);
    server.stop_cleanly();
}

/// The transport thread polls the network for `--spin-us` after each answer
/// (`uminfer::oip::polling`), then sleeps: an idle server uses no CPU. Its
/// intra-op threads follow the forward time it measured and logged (one core
/// fewer for a short pass; on a loaded machine even `tiny` can take longer
/// than `SHORT_FORWARD`: every core then).
#[test]
fn idle_server_uses_no_cpu_after_answering() {
    let py = require_python!();
    let tiny = served("tiny");
    let mut server = GrpcServer::start("idle", &["--model", &tiny]);
    let log = server.log();
    let us = common::logged_us(&log, "a forward pass takes ");
    let want = if us < uminfer::intra_op::SHORT_FORWARD.as_secs_f64() * 1e6 { uminfer::intra_op::fewer_cores() } else { uminfer::intra_op::cores() };
    assert_eq!(uminfer::intra_op::for_grpc_clients(std::time::Duration::from_secs_f64(us / 1e6)), want, "a forward pass of {us} µs");
    assert!(log.contains(&format!("libtorch intra-op threads: {want} (automatic: a forward pass takes")), "want {want} threads:\n{log}");
    // Inline exactly when the logged request time is under the limit (on a
    // loaded machine even tiny's fastest of 3 requests may not be).
    let request_us = common::logged_us(&log, "a request takes ");
    let inline = uminfer::oip::service::runs_inline(1, Duration::from_secs_f64(request_us / 1e6));
    let said = if inline { "inference runs on the transport thread: one session, whose requests take" } else { "inference runs on blocking threads: its requests take" };
    assert!(log.contains(said), "a request of {request_us} µs, inline {inline}:\n{log}");
    let (x, y) = (model("tiny.input.npy"), model("tiny.expected.npy"));
    server.run_client(&py, "infer", &["tiny", &x, &y]);
    std::thread::sleep(Duration::from_millis(500));
    let before = common::cpu_seconds(server.child.id());
    std::thread::sleep(Duration::from_secs(10));
    let used = common::cpu_seconds(server.child.id()) - before;
    let _ = writeln!(std::io::stderr(), "idle gRPC server used {used:.3} s of CPU in 10 s");
    assert!(used < 0.1, "idle gRPC server used {used:.3} s of CPU in 10 s (limit 1%)\n{}", server.log());
}

#[test]
fn tritonclient_infers_tiny_and_resnet18_equal_to_pytorch() {
    let py = require_python!();
    let tiny = served("tiny");
    let mut server = GrpcServer::start("infer", &["--model", &tiny, "--model", &model("resnet18.pt")]);
    for name in ["tiny", "resnet18"] {
        let (x, y) = (model(&format!("{name}.input.npy")), model(&format!("{name}.expected.npy")));
        let out = server.run_client(&py, "infer", &[name, &x, &y]);
        let l = lines(&out);
        assert!(l.len() == 2 && l[0].starts_with("raw_diff=") && l[1].starts_with("typed_diff="), "{name}: {out}");
    }
}

#[test]
fn tritonclient_error_paths_are_clear_statuses_and_the_server_keeps_serving() {
    let py = require_python!();
    // 1 MB messages: tiny's 196 KB input fits, a 1×3×1024×1024 one does not.
    let mut server = GrpcServer::start("errors", &["--model", &model("tiny.pt"), "--max-bytes", "1000000"]);
    let out = server.run_client(&py, "errors", &[&model("tiny.input.npy"), &model("tiny.expected.npy")]);
    assert_eq!(
        lines(&out),
        [
            "unknown_model=StatusCode.NOT_FOUND",
            "unknown_version=StatusCode.NOT_FOUND",
            "wrong_shape=StatusCode.INVALID_ARGUMENT",
            "wrong_dtype=StatusCode.INVALID_ARGUMENT",
            "wrong_byte_length=StatusCode.INVALID_ARGUMENT",
            "missing_input=StatusCode.INVALID_ARGUMENT",
            "wrong_input_name=StatusCode.INVALID_ARGUMENT",
            "unknown_output=StatusCode.INVALID_ARGUMENT",
            "unimplemented_rpc=StatusCode.UNIMPLEMENTED",
            "too_large=StatusCode.OUT_OF_RANGE",
            "errors=ok",
        ]
    );
    assert!(server.is_running(), "the server died:\n{}", server.log());
}

#[test]
fn tritonclient_stream_answers_every_request_under_its_id() {
    let py = require_python!();
    let mut server = GrpcServer::start("stream", &["--model", &model("tiny.pt"), "--model", &model("identity.pt")]);
    let out = server.run_client(&py, "stream", &[&model("tiny.input.npy"), &model("tiny.expected.npy"), "40"]);
    assert_eq!(lines(&out), ["stream_matched=40", "stream_errors=1"]);
    assert!(server.is_running(), "the server died:\n{}", server.log());
}

#[test]
fn tritonclient_system_shared_memory_inputs_and_outputs_and_refusals() {
    let py = require_python!();
    let mut server = GrpcServer::start("shm", &["--model", &model("tiny.pt")]);
    let out = server.run_client(&py, "shm", &[&model("tiny.input.npy"), &model("tiny.expected.npy")]);
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let owner = if root { "other_users_region=StatusCode.PERMISSION_DENIED" } else { "other_users_region=skipped" };
    assert_eq!(
        lines(&out),
        [
            "offset_0=ok",
            "offset_64=ok",
            "offset_2=ok",
            "register_twice=StatusCode.ALREADY_EXISTS",
            "register_missing_key=StatusCode.INVALID_ARGUMENT",
            "register_too_large=StatusCode.INVALID_ARGUMENT",
            "input_outside_region=StatusCode.INVALID_ARGUMENT",
            "input_wrong_size=StatusCode.INVALID_ARGUMENT",
            "output_region_too_small=StatusCode.INVALID_ARGUMENT",
            "unregistered_region=StatusCode.INVALID_ARGUMENT",
            owner,
            "after_unregister=StatusCode.INVALID_ARGUMENT",
            "shm=ok",
        ]
    );
    assert!(server.is_running(), "the server died:\n{}", server.log());
}

/// A shared memory key that is a symbolic link (planted in the
/// world-writable /dev/shm, pointing at a file of ours) is refused at
/// registration with a message, and the file it points to is left untouched.
#[test]
fn a_shared_memory_key_that_is_a_symlink_is_refused() {
    let py = require_python!();
    let mut server = GrpcServer::start("shm-link", &["--model", &model("tiny.pt")]);
    let out = server.run_client(&py, "shm_symlink", &[&model("tiny.input.npy"), &model("tiny.expected.npy")]);
    assert_eq!(lines(&out), ["symlink_refused=StatusCode.INVALID_ARGUMENT", "target_untouched=ok", "after=ok"]);
    assert!(server.is_running(), "the server died:\n{}", server.log());
}

/// A client that truncates its registered objects under the server (input,
/// then output) gets `FAILED_PRECONDITION` naming the region, instead of a
/// server killed by SIGBUS; the region is refused until registered again,
/// other requests are answered, and re-registering the re-sized object works.
#[test]
fn a_client_truncating_its_region_gets_an_error_and_the_server_keeps_serving() {
    let py = require_python!();
    for workers in ["1", "2"] {
        let mut server = GrpcServer::start("shm-trunc", &["--model", &model("tiny.pt"), "--workers", workers]);
        let out = server.run_client(&py, "shm_truncated", &[&model("tiny.input.npy"), &model("tiny.expected.npy")]);
        assert_eq!(
            lines(&out),
            [
                "before=ok",
                "input_truncated=StatusCode.FAILED_PRECONDITION",
                "input_refused=StatusCode.FAILED_PRECONDITION",
                "other_request=ok",
                "input_reregistered=ok",
                "output_truncated=StatusCode.FAILED_PRECONDITION",
                "output_reregistered=ok",
            ],
            "--workers {workers}"
        );
        assert!(server.is_running(), "--workers {workers}: the server died:\n{}", server.log());
    }
}

/// Registrations are bounded: by default 1024 regions (the 1025th is
/// refused with `RESOURCE_EXHAUSTED` naming `--max-shm-regions`), and by the
/// flags `--max-shm-regions` / `--max-shm-bytes`; unregistering makes room,
/// and the server keeps answering.
#[test]
fn shared_memory_registrations_are_bounded_by_count_and_bytes() {
    let py = require_python!();
    let (x, y) = (model("tiny.input.npy"), model("tiny.expected.npy"));
    let mut server = GrpcServer::start("shm-limits", &["--model", &model("tiny.pt")]);
    let out = server.run_client(&py, "shm_limits", &[&x, &y, "1024", "17179869184"]);
    assert_eq!(lines(&out), ["registered=1024", "beyond_regions=StatusCode.RESOURCE_EXHAUSTED", "after_unregister=ok", "after=ok"]);
    assert!(server.is_running(), "the server died:\n{}", server.log());
    let mut server = GrpcServer::start("shm-limits-flags", &["--model", &model("tiny.pt"), "--max-shm-regions", "3", "--max-shm-bytes", "4096"]);
    let out = server.run_client(&py, "shm_limits", &[&x, &y, "3", "4096"]);
    assert_eq!(
        lines(&out),
        ["registered=3", "beyond_regions=StatusCode.RESOURCE_EXHAUSTED", "after_unregister=ok", "beyond_bytes=StatusCode.RESOURCE_EXHAUSTED", "bytes_within_bound=ok", "after=ok"]
    );
    assert!(server.is_running(), "the server died:\n{}", server.log());
}

/// Unregistering regions that requests in flight use is safe: with two
/// sessions (requests on blocking threads, running while the unregister RPC
/// is answered) those requests finish with right answers (the server holds
/// a region until the request using it ends), later ones get a clear
/// refusal, and the server keeps serving. With one session the transport
/// thread runs each request before it reads the unregister RPC queued
/// behind it: every answer right, none can overlap.
#[test]
fn unregistering_regions_in_use_lets_their_requests_finish() {
    let py = require_python!();
    for workers in ["2", "1"] {
        let mut server = GrpcServer::start("unreg", &["--model", &model("resnet18.pt"), "--workers", workers]);
        let out = server.run_client(&py, "unregister_in_flight", &[&model("resnet18.input.npy"), &model("resnet18.expected.npy"), "8"]);
        let l = lines(&out);
        assert_eq!(l.first(), Some(&"answers=8"), "--workers {workers}: {out}");
        let after: usize = l.get(1).and_then(|s| s.strip_prefix("right_after_unregister=")?.parse().ok()).unwrap_or_else(|| panic!("{out}"));
        let _ = writeln!(std::io::stderr(), "--workers {workers}: {} right answers after the regions were unregistered", after);
        if workers == "2" {
            assert!(after > 0, "--workers 2: no request finished after its regions were unregistered: {out}");
        }
        assert!(server.is_running(), "the server died:\n{}", server.log());
    }
}

#[test]
fn sigterm_lets_requests_in_flight_finish_then_the_server_exits_cleanly() {
    let py = require_python!();
    let server = GrpcServer::start("drain", &["--model", &model("resnet18.pt")]);
    let url = server.url.clone();
    drain_after_sigterm(&py, server, &url, "grpc");
}

/// The same through the REST form: REST calls in flight at SIGTERM are
/// answered, and the server exits cleanly.
#[test]
fn sigterm_lets_rest_requests_in_flight_finish_too() {
    let py = require_python!();
    let server = GrpcServer::start("drain-http", &["--model", &model("resnet18.pt"), "--http", "127.0.0.1:0"]);
    let http = server.reported("http");
    drain_after_sigterm(&py, server, &http, "http");
}

/// Sends 32 `resnet18` requests `via` gRPC or REST to `url`, SIGTERMs the
/// server once the first is answered, and checks that the rest are answered
/// correctly (or refused as arriving after shutdown began), at least one of
/// them after the signal, and that the server exits 0.
fn drain_after_sigterm(py: &PathBuf, mut server: GrpcServer, url: &str, via: &str) {
    let mut child = client(py, "drain", url, &[&model("resnet18.input.npy"), &model("resnet18.expected.npy"), "32", via])
        .spawn()
        .expect("starting the venv python");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("reading the client's first line");
    assert_eq!(line.trim(), "inflight=yes", "client said {line:?}");
    server.sigterm();
    let mut stdin: ChildStdin = child.stdin.take().expect("piped stdin");
    writeln!(stdin, "signalled").expect("telling the client");
    drop(stdin);
    let out = common::finish(child, PYTHON_DEADLINE);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("reading the client's output");
    let out = Output { stdout: rest.into_bytes(), ..out };
    let said = server.check("drain", &out);
    assert!(said.trim().starts_with("ok_after_signal="), "{said}");
    server.stop_cleanly();
    let log = server.log();
    assert!(log.contains("finishing the requests in flight"), "{log}");
}

/// `GET url` (the OpenMetrics text).
fn scrape(url: &str) -> String {
    let mut resp = ureq::get(url).call().unwrap_or_else(|e| panic!("scraping {url}: {e}"));
    let kind = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "content type {kind:?}");
    resp.body_mut().read_to_string().expect("reading the metrics")
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' '))).map(|v| v.parse().expect("a numeric sample"))
}

#[test]
fn metrics_count_every_request_by_model_mode_and_outcome() {
    let py = require_python!();
    let mut server = GrpcServer::start("metrics", &["--model", &model("tiny.pt"), "--metrics", "127.0.0.1:0"]);
    let url = server.metrics_url();
    let ok = r#"uminfer_inference_success_total{model="tiny",mode="cpu"}"#;
    let latency = r#"uminfer_inference_duration_seconds_count{model="tiny",mode="cpu"}"#;
    let invalid = r#"uminfer_inference_failure_total{model="tiny",mode="cpu",code="InvalidArgument"}"#;
    let unknown = r#"uminfer_inference_failure_total{model="",mode="",code="NotFound"}"#;
    let in_flight = "uminfer_inference_in_flight";
    let before = scrape(&url);
    assert_eq!((sample(&before, ok), sample(&before, invalid), sample(&before, in_flight)), (None, None, Some(0.0)), "{before}");
    let (x, y) = (model("tiny.input.npy"), model("tiny.expected.npy"));
    // Two rounds: 5 unary + 7 streamed good requests, 3 bad, 1 unknown model each.
    for round in 1..=2 {
        let out = server.run_client(&py, "count", &[&x, &y, "5", "3", "7"]);
        assert_eq!(lines(&out), ["count=ok"]);
        let now = scrape(&url);
        let n = round as f64;
        assert_eq!(sample(&now, ok), Some(12.0 * n), "{now}");
        assert_eq!(sample(&now, latency), Some(12.0 * n), "{now}");
        assert_eq!(sample(&now, invalid), Some(3.0 * n), "{now}");
        assert_eq!(sample(&now, unknown), Some(n), "{now}");
        assert_eq!(sample(&now, in_flight), Some(0.0), "{now}");
        assert!(sample(&now, r#"uminfer_inference_duration_seconds_sum{model="tiny",mode="cpu"}"#).is_some_and(|s| s > 0.0), "{now}");
        // Raw little-endian tensors are read in place and the output is
        // written once, into the response: no tensor byte is copied.
        assert_eq!(sample(&now, r#"uminfer_inference_tensor_bytes_copied_total{model="tiny",mode="cpu"}"#), Some(0.0), "{now}");
        // Triton's ModelStatistics agree: every good request ran each phase
        // once; the bad ones failed; the unknown model is no model's.
        let stats = server.run_client(&py, "stats", &["tiny"]);
        let (good, bad) = (12 * round, 3 * round);
        let want = format!(
            "inference_count={good} execution_count={good} success={good} fail={bad} queue={good} compute_input={good} compute_infer={good} compute_output={good}"
        );
        assert_eq!(stats.trim(), want);
    }
}

#[test]
fn long_requests_run_off_the_transport_thread_so_metrics_answer_during_them() {
    let py = require_python!();
    let mut server = GrpcServer::start("long", &["--model", &model("resnet18.pt"), "--metrics", "127.0.0.1:0"]);
    let url = server.metrics_url();
    let log = server.log();
    let took = common::logged_us(&log, "a request takes ");
    if took < uminfer::oip::service::INLINE_LIMIT.as_secs_f64() * 1e6 {
        // A machine fast enough to run resnet18 in under 1 ms keeps it on the
        // transport thread; what this test checks does not apply there.
        let _ = writeln!(std::io::stderr(), "SKIPPED: resnet18 takes {took} µs here, under the inline limit");
        return;
    }
    assert!(log.contains("inference runs on blocking threads: its requests take"), "{log}");
    // A /metrics scrape is served by the transport thread: it can see a
    // request in flight only while another thread runs that request (on the
    // transport thread a request starts and ends within one task poll).
    let (x, y) = (model("resnet18.input.npy"), model("resnet18.expected.npy"));
    let mut busy = client(&py, "busy", &server.url, &["resnet18", &x, &y, "100"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting the venv python");
    let (mut scrapes, mut in_flight_seen) = (0, 0);
    while matches!(busy.try_wait(), Ok(None)) {
        let now = scrape(&url);
        scrapes += 1;
        if sample(&now, "uminfer_inference_in_flight").is_some_and(|v| v >= 1.0) {
            in_flight_seen += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = common::finish(busy, PYTHON_DEADLINE);
    let _ = writeln!(std::io::stderr(), "{}", text(&out.stderr).trim());
    assert_eq!(lines(&server.check("busy", &out)), ["busy_matched=100"]);
    let _ = writeln!(std::io::stderr(), "{in_flight_seen} of {scrapes} scrapes saw a request in flight");
    assert!(in_flight_seen > 0, "none of {scrapes} /metrics scrapes during 100 streamed resnet18 requests saw one in flight\n{}", server.log());
}

/// The REST/JSON form (`--http`) driven by `tritonclient[http]`
/// (`tests/oip_http_client.py`): health, metadata, configuration and
/// statistics, both models with binary
/// and JSON tensor data both ways, system shared memory, each refusal a
/// clear HTTP status. Its requests go through the gRPC service: the metrics
/// count exactly those that reached a model.
#[test]
fn tritonclient_http_speaks_the_rest_form_with_binary_and_json_data() {
    let py = require_python!();
    let tiny = served("tiny");
    let resnet = served("resnet18");
    let mut server = GrpcServer::start("http", &["--model", &tiny, "--model", &resnet, "--metrics", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    let metrics = server.metrics_url();
    let http = server.reported("http");
    let args = [http.as_str(), &model("tiny.input.npy"), &model("tiny.expected.npy"), &model("resnet18.input.npy"), &model("resnet18.expected.npy")];
    let out = common::finish(script(&py, "oip_http_client.py", &args).spawn().expect("starting the venv python"), PYTHON_DEADLINE);
    let out = server.check("oip_http_client.py", &out);
    let mut want = vec!["health=ok".to_string()];
    for name in ["tiny", "resnet18"] {
        for (i, o) in [("binary", "binary"), ("binary", "json"), ("json", "binary"), ("json", "json")] {
            want.push(format!("{name}_in_{i}_out_{o}_diff="));
        }
    }
    for l in ["register_twice=409", "register_missing_key=400", "output_region_too_small=400", "unregistered_region=400", "status_of_unregistered=404", "shm=ok"] {
        want.push(l.into());
    }
    for l in ["unknown_model=404", "wrong_shape=400", "wrong_dtype=400", "wrong_dtype_json=400", "wrong_input_name=400", "malformed_json=400"] {
        want.push(l.into());
    }
    // ModelStatistics count what the metrics below count.
    for l in [
        "header_length_past_body=400",
        "compressed=415",
        "unknown_route=404",
        "errors=ok",
        "stats_tiny=inference_count 7 success 7 fail 6 compute_infer 7",
        "stats_resnet18=inference_count 5 success 5 fail 0 compute_infer 5",
        "stats_unknown_model=404",
        "http=ok",
    ] {
        want.push(l.into());
    }
    let got = lines(&out);
    assert_eq!(got.len(), want.len(), "{out}");
    for (g, w) in got.iter().zip(&want) {
        assert!(if w.ends_with('=') { g.starts_with(w.as_str()) } else { g == w }, "line {g:?}, expected {w:?}:\n{out}");
    }
    // tiny: 4 ways + all outputs + shared memory + one after the refusals;
    // resnet18: 4 ways + all outputs. Refused before a model: none counted.
    let now = scrape(&metrics);
    assert_eq!(sample(&now, r#"uminfer_inference_success_total{model="tiny",mode="cpu"}"#), Some(7.0), "{now}");
    assert_eq!(sample(&now, r#"uminfer_inference_success_total{model="resnet18",mode="cpu"}"#), Some(5.0), "{now}");
    assert_eq!(sample(&now, r#"uminfer_inference_failure_total{model="tiny",mode="cpu",code="InvalidArgument"}"#), Some(6.0), "{now}");
    assert_eq!(sample(&now, r#"uminfer_inference_failure_total{model="",mode="",code="NotFound"}"#), Some(1.0), "{now}");
    server.stop_cleanly();
}

/// `--input-shape identity=1,3,32,32` beside the default shape for `tiny`:
/// each model has, shows and enforces its own input shape.
#[test]
fn each_model_can_have_an_input_shape_of_its_own() {
    let py = require_python!();
    let tiny = served("tiny");
    let identity = served("identity");
    let mut server = GrpcServer::start("shapes", &["--model", &tiny, "--model", &identity, "--input-shape", "identity=1,3,32,32"]);
    assert!(server.log().contains("inputs x: f32 [1, 3, 32, 32], outputs output__0: f32 [1, 3, 32, 32]"), "identity's shape in the log:\n{}", server.log());
    let (x, y) = (model("tiny.input.npy"), model("tiny.expected.npy"));
    let out = server.run_client(&py, "shapes", &[&x, &y, "1,3,32,32"]);
    assert_eq!(lines(&out), ["identity_at_tiny_shape=StatusCode.INVALID_ARGUMENT", "tiny_at_identity_shape=StatusCode.INVALID_ARGUMENT", "shapes=ok"]);
}

/// `--max-calls 1`: an open stream holds the only permit; other inference
/// calls (unary, stream, REST) are refused at once with RESOURCE_EXHAUSTED
/// (429), health and metadata still answer, and the refusals are counted.
#[test]
fn max_calls_bounds_inference_across_connections_and_refuses_beyond_it() {
    let py = require_python!();
    let tiny = served("tiny");
    let mut server = GrpcServer::start("admission", &["--model", &tiny, "--max-calls", "1", "--metrics", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    let metrics = server.metrics_url();
    let http = server.reported("http");
    let (x, y) = (model("tiny.input.npy"), model("tiny.expected.npy"));
    let out = server.run_client(&py, "admission", &[&http, &x, &y]);
    assert_eq!(
        lines(&out),
        [
            "unary_while_full=StatusCode.RESOURCE_EXHAUSTED",
            "health_while_full=answered",
            "stream_while_full=StatusCode.RESOURCE_EXHAUSTED",
            "rest_while_full=429",
            "after_stream_closed=answered"
        ]
    );
    let now = scrape(&metrics);
    let unary = sample(&now, r#"uminfer_inference_failure_total{model="tiny",mode="cpu",code="ResourceExhausted"}"#).unwrap_or(0.0);
    let stream = sample(&now, r#"uminfer_inference_failure_total{model="",mode="",code="ResourceExhausted"}"#);
    assert!(unary >= 2.0, "the unary and REST refusals (and retries after the stream closed) counted under tiny:\n{now}");
    assert_eq!(stream, Some(1.0), "the refused stream, under no model:\n{now}");
}

#[test]
fn max_streams_bounds_the_streams_of_a_connection() {
    let py = require_python!();
    let (x, y) = (model("tiny.input.npy"), model("tiny.expected.npy"));
    // One stream per connection: a unary call waits while the client's stream is open.
    let mut bounded = GrpcServer::start("streams-1", &["--model", &model("tiny.pt"), "--max-streams", "1"]);
    let out = bounded.run_client(&py, "bounded", &[&x, &y, "waits"]);
    assert_eq!(lines(&out), ["while_stream_open=waits", "after_stream=answered"]);
    // The default bound (200) lets the same call through.
    let mut default = GrpcServer::start("streams-default", &["--model", &model("tiny.pt")]);
    let out = default.run_client(&py, "bounded", &[&x, &y, "answered"]);
    assert_eq!(lines(&out), ["while_stream_open=answered", "after_stream=answered"]);
}

#[test]
fn load_run_from_several_tritonclient_processes_has_no_errors() {
    let py = require_python!();
    let mut server = GrpcServer::start("load", &["--workers", "2", "--model", &model("tiny.pt"), "--model", &model("identity.pt"), "--model", &model("encoder.pt"), "--http", "127.0.0.1:0"]);
    let http = server.reported("http");
    let models = common::model_path("tiny.pt").parent().expect("the models directory").display().to_string();
    // Six processes (gRPC unary and stream, REST; raw and shared memory), 21 requests each (7 per model).
    let out = common::finish(script(&py, "oip_load.py", &[&server.url, &models, "21", "1", &http]).spawn().expect("starting the venv python"), PYTHON_DEADLINE);
    let report = server.check("load", &out);
    assert!(report.lines().any(|l| l == "errors=0"), "{report}");
    for kind in ["unary-raw", "unary-shm", "stream-raw", "stream-shm", "http-raw", "http-shm"] {
        assert!(report.lines().any(|l| l.split_whitespace().take(3).eq([kind, "21", "0"])), "{kind} row missing or with errors:\n{report}");
    }
}

/// The same load run against a batching server (`--max-batch 8`): every
/// answer checked, no errors, and batches of several samples formed.
#[test]
fn load_run_against_a_batching_server_has_no_errors_and_forms_batches() {
    let py = require_python!();
    let mut server = GrpcServer::start(
        "load-batched",
        &["--max-batch", "8", "--batch-delay-us", "1000", "--model", &model("tiny.pt"), "--model", &model("identity.pt"), "--model", &model("encoder.pt"), "--http", "127.0.0.1:0"],
    );
    let http = server.reported("http");
    let models = common::model_path("tiny.pt").parent().expect("the models directory").display().to_string();
    let out = common::finish(script(&py, "oip_load.py", &[&server.url, &models, "21", "2", &http]).spawn().expect("starting the venv python"), PYTHON_DEADLINE);
    let report = server.check("load, batched", &out);
    let _ = writeln!(std::io::stderr(), "{report}");
    assert!(report.lines().any(|l| l == "errors=0"), "{report}");
    let mean = |m: &str| {
        report.lines().find_map(|l| l.strip_prefix(&format!("mean batch {m}: "))).and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse::<f64>().ok())
    };
    let means: Vec<(&str, Option<f64>)> = ["tiny", "identity", "encoder"].into_iter().map(|m| (m, mean(m))).collect();
    assert!(means.iter().all(|(_, v)| v.is_some_and(|v| v >= 1.0)), "{means:?}\n{report}");
    assert!(means.iter().any(|(_, v)| v.is_some_and(|v| v > 1.0)), "12 client processes formed no batch: {means:?}\n{report}");
    server.stop_cleanly();
}

/// Models of any signature (`tests/oip_signatures.py`): the encoder, the
/// dict-output model and every datatype, over gRPC and over REST (binary and
/// JSON data), equal to PyTorch's answers; output selection; shared memory
/// per tensor; every refusal with the server serving on.
#[test]
fn tritonclient_runs_models_of_any_signature_over_grpc_and_rest() {
    let py = require_python!();
    let (encoder, heads, dtypes) = (served("encoder"), served("heads"), served("dtypes"));
    let mut server = GrpcServer::start("signatures", &["--http", "127.0.0.1:0", "--model", &encoder, "--model", &heads, "--model", &dtypes]);
    let http = server.reported("http");
    let models = common::model_path("encoder.pt").parent().unwrap().display().to_string();
    for (mode, url) in [("grpc", server.url.clone()), ("http", http)] {
        let out = common::finish(script(&py, "oip_signatures.py", &[mode, &url, &models]).spawn().expect("starting the venv python"), PYTHON_DEADLINE);
        let got = server.check(&format!("oip_signatures.py {mode}"), &out);
        let lines = lines(&got);
        for want in ["encoder=ok", "heads=ok", "dtypes=ok", "shm=ok", "region_too_small=refused", "output_over_input=refused", "unknown_tensor=refused", "missing_input=refused", "duplicate_input=refused", "wrong_datatype=refused", "wrong_shape=refused", "unknown_output=refused", "done=ok"] {
            assert!(lines.contains(&want), "{mode}: no {want:?} in {lines:?}");
        }
    }
    server.stop_cleanly();
}

/// Dynamic batching (`tests/oip_batching.py`): tritonclient over gRPC and
/// REST from 8 threads against `--max-batch 8`, every answer PyTorch's for
/// its own samples, batches formed and counted in the statistics, metadata
/// and config as Triton shows a batching model; then a full queue and a
/// queue timeout refused with their statuses, and a full batch at once.
#[test]
fn tritonclient_requests_are_batched_and_each_gets_its_own_answer() {
    let py = require_python!();
    let (tiny, encoder) = (served("tiny"), served("encoder"));
    let models = common::model_path("tiny.pt").parent().unwrap().display().to_string();
    let mut server = GrpcServer::start("batching", &["--http", "127.0.0.1:0", "--model", &tiny, "--model", &encoder, "--max-batch", "8", "--batch-delay-us", "2000"]);
    let http = server.reported("http");
    let out = common::finish(script(&py, "oip_batching.py", &["load", &server.url, &http, &models]).spawn().expect("starting the venv python"), PYTHON_DEADLINE);
    let got = server.check("oip_batching.py load", &out);
    let _ = writeln!(std::io::stderr(), "{got}");
    for want in ["metadata=ok", "config=ok", "over_max_batch=refused", "done=ok"] {
        assert!(got.lines().any(|l| l == want), "no {want:?} in:\n{got}");
    }
    assert!(got.lines().any(|l| l.starts_with("load=ok ")), "{got}");
    assert!(server.log().contains("bucket 8: "), "the build logs each bucket:\n{}", server.log());
    server.stop_cleanly();

    let mut server = GrpcServer::start(
        "batch-refusals",
        &["--http", "127.0.0.1:0", "--model", &tiny, "--max-batch", "8", "--max-queue", "1", "--batch-delay-us", "500000", "--queue-timeout-ms", "150"],
    );
    let http = server.reported("http");
    let out = common::finish(script(&py, "oip_batching.py", &["refusals", &server.url, &http]).spawn().expect("starting the venv python"), PYTHON_DEADLINE);
    let got = server.check("oip_batching.py refusals", &out);
    for want in ["grpc_queue_full=refused grpc_queue_timeout=refused grpc_full_batch=ok grpc_own_timeout=refused", "http_queue_full=refused http_queue_timeout=refused http_full_batch=ok http_own_timeout=refused", "done=ok"] {
        assert!(got.lines().any(|l| l == want), "no {want:?} in:\n{got}");
    }
    server.stop_cleanly();
}
