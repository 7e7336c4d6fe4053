//! The Python client (`clients/python`, run with the project venv) against a
//! real `uminfer serve` child process: results equal to PyTorch's and to
//! in-process inference for every signature and dtype (protocol v2), no
//! mixed-up responses, remote errors, the protocol v1 policy for old
//! clients, and a missing or killed server.

mod common;

use common::text;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use uminfer::doctor::{self, probe::ProbeOptions};
use uminfer::{Mode, Runtime, SessionSpec, TypedSession};

/// Longest a Python client may run (a loaded 2-core machine starts numpy slowly).
const PYTHON_DEADLINE: Duration = Duration::from_secs(120);
/// Seconds the Python scripts wait for the server to come up (and for each response).
const CLIENT_TIMEOUT_S: &str = "60";

/// An endpoint name unique to this test process and call.
fn unique(tag: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("py-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The venv's python and the directory to put on `PYTHONPATH`, or `None` when
/// this run has no Python environment (a GPU bundle, which carries neither).
fn python_env() -> Option<(PathBuf, PathBuf)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let client_dir = root.join("clients/python");
    if python.exists() && client_dir.join("uminfer_client/__init__.py").exists() {
        return Some((python, client_dir));
    }
    assert!(
        std::env::var_os("UMINFER_BIN").is_some(),
        "{} or {} missing: run `bash ci/setup` (it creates the venv with iceoryx2==0.10.0)",
        python.display(),
        client_dir.display()
    );
    None
}

/// Returns from the calling test when there is no Python environment (bundle runs only).
macro_rules! require_python {
    () => {
        match python_env() {
            Some(env) => env,
            None => {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "SKIPPED (no project venv / clients/python in this bundle): {}", module_path!());
                return;
            }
        }
    };
}

/// `python -c SCRIPT ARGS…` or `python -m uminfer_client ARGS…`, with the client importable.
fn python(env: &(PathBuf, PathBuf)) -> Command {
    let mut cmd = Command::new(&env.0);
    cmd.env("PYTHONPATH", &env.1).env("PYTHONDONTWRITEBYTECODE", "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` to completion (see [`common::finish`]).
fn run(mut cmd: Command) -> Output {
    common::finish(cmd.spawn().expect("starting the venv python"), PYTHON_DEADLINE)
}


/// The value of the first `key=value` line of `stdout`.
fn field<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// A `uminfer serve` child process; SIGTERM and wait on drop, so a failing test leaks nothing.
struct ServerProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ServerProcess {
    fn start(tag: &str, model: &str) -> Self {
        Self::start_with(tag, model, &[])
    }

    /// With `extra` flags for `uminfer serve`.
    fn start_with(tag: &str, model: &str, extra: &[&str]) -> Self {
        let name = unique(tag);
        let log = std::env::temp_dir().join(format!("uminfer-{name}.log"));
        let child = Command::new(common::uminfer_bin())
            .args(["serve", "--name", &name, "--model"])
            .arg(common::model_path(model))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("creating the server log file"))
            .spawn()
            .expect("starting `uminfer serve`");
        Self { name, child, log }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid (not yet reaped while `self` lives).
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (SIGKILL after 30 s); the exit status.
    fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        common::wait_or_kill(&mut self.child, Duration::from_secs(30))
    }

    /// Panics with everything known when a Python client failed.
    fn fail(&mut self, what: &str, out: &Output) -> ! {
        let running = self.is_running();
        panic!(
            "{what}: exit {:?}\n--- python stdout ---\n{}\n--- python stderr ---\n{}\n--- server {} (running: {running}) log ---\n{}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr),
            self.name,
            self.log()
        );
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.is_running() {
            self.stop();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Shape and float32 elements of a `.npy` file.
fn npy(path: &Path) -> (Vec<i64>, Vec<f32>) {
    let t = tch::Tensor::read_npy(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let data = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap_or_else(|e| panic!("{} is not float32: {e}", path.display()));
    (t.size(), data)
}


/// tiny.pt run in this process by a CPU session, the mode the server uses.
fn in_process_tiny(input: &[f32]) -> Vec<f32> {
    let rt = Runtime::from_report(doctor::diagnose(ProbeOptions { smoke_tests: false }));
    let model = rt.model(common::model_path("tiny.pt")).expect("loading tiny.pt in process");
    let mut s: TypedSession = rt.typed_session(&model, SessionSpec::new().input_shape(&[1, 3, 128, 128]).mode(Mode::Cpu)).expect("CPU session for tiny.pt");
    s.input_mut().copy_from_slice(input);
    s.run().expect("in-process run of tiny.pt");
    s.output().to_vec()
}

#[test]
fn python_cli_output_equals_pytorch_and_in_process_inference() {
    let env = require_python!();
    let mut server = ServerProcess::start("cli", "tiny.pt");
    let input = common::model_path("tiny.input.npy");
    let output = std::env::temp_dir().join(format!("uminfer-{}.out.npy", server.name));
    let mut cmd = python(&env);
    cmd.args(["-m", "uminfer_client", "--name", &server.name, "--input"]).arg(&input).arg("--output").arg(&output).args(["--timeout", CLIENT_TIMEOUT_S]);
    let out = run(cmd);
    if !out.status.success() {
        server.fail("python -m uminfer_client failed", &out);
    }
    let (got_shape, got) = npy(&output);
    let _ = std::fs::remove_file(&output);
    let (expected_shape, expected) = npy(&common::model_path("tiny.expected.npy"));
    assert_eq!(got_shape, expected_shape, "output shape");
    assert!(common::max_abs_diff(&got, &expected) <= 1e-5, "python client {got:?}\nPyTorch reference {expected:?}");
    let local = in_process_tiny(&npy(&input).1);
    assert!(common::max_abs_diff(&got, &local) <= 1e-5, "python client {got:?}\nin-process session {local:?}");
    let status = server.stop();
    assert!(status.success(), "the server did not stop cleanly on SIGTERM ({status}):\n{}", server.log());
}

#[test]
fn python_gets_each_of_50_random_inputs_back_from_the_identity_model() {
    let env = require_python!();
    let mut server = ServerProcess::start("identity", "identity.pt");
    let script = r#"
import sys
import numpy as np
from uminfer_client import Client

name, timeout = sys.argv[1], float(sys.argv[2])
rng = np.random.default_rng(20240601)
out = np.empty((1, 3, 128, 128), np.float32)
with Client(name, timeout=timeout) as client:
    for i in range(50):
        x = rng.standard_normal((1, 3, 128, 128), dtype=np.float32)
        y = client.infer(x)["output__0"] if i % 2 == 0 else client.infer(x, out={"output__0": out})["output__0"]
        if i % 2 and y is not out:
            sys.exit("infer(out=...) did not write into the given array")
        if y.shape != x.shape or not np.array_equal(y, x):
            sys.exit(f"request {i}: the response is not its own input (shape {y.shape}, max diff {np.abs(y - x).max()})")
print("identical=50")
"#;
    let mut cmd = python(&env);
    cmd.args(["-c", script, &server.name, CLIENT_TIMEOUT_S]);
    let out = run(cmd);
    if !out.status.success() {
        server.fail("the identity round trips failed", &out);
    }
    assert_eq!(field(&text(&out.stdout), "identical"), Some("50"), "stdout: {}", text(&out.stdout));
}

#[test]
fn python_wrong_shape_is_a_bad_request_and_the_server_keeps_serving() {
    let env = require_python!();
    let mut server = ServerProcess::start("badshape", "tiny.pt");
    let script = r#"
import sys
import numpy as np
from uminfer_client import Client, RemoteError

name, timeout, x_path, expected_path = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
with Client(name, timeout=timeout) as client:
    try:
        client.infer(np.zeros((1, 3, 64, 64), np.float32))
    except RemoteError as e:
        print(f"status={e.status}")
        print(f"message={e.message}")
    else:
        sys.exit("a wrong shape was answered with status 0")
    y = client.infer(np.load(x_path))["output__0"]
    print(f"diff={float(np.abs(y - np.load(expected_path)).max())}")
"#;
    let mut cmd = python(&env);
    cmd.args(["-c", script, &server.name, CLIENT_TIMEOUT_S])
        .arg(common::model_path("tiny.input.npy"))
        .arg(common::model_path("tiny.expected.npy"));
    let out = run(cmd);
    if !out.status.success() {
        server.fail("the bad-shape script failed", &out);
    }
    let stdout = text(&out.stdout);
    assert_eq!(field(&stdout, "status"), Some("1"), "stdout: {stdout}");
    let message = field(&stdout, "message").unwrap_or_default();
    assert!(message.contains("[1, 3, 64, 64]") && message.contains("[1, 3, 128, 128]"), "the message should name both shapes: {message:?}");
    let diff: f32 = field(&stdout, "diff").and_then(|d| d.parse().ok()).unwrap_or_else(|| panic!("no diff line in {stdout:?}"));
    assert!(diff <= 1e-5, "the request after the bad one differs from PyTorch by {diff}");
    assert!(server.is_running(), "the server exited after a bad request:\n{}", server.log());
}

#[test]
fn python_without_a_server_raises_server_gone_within_the_timeout() {
    let env = require_python!();
    let name = unique("nobody");
    let script = r#"
import sys
import time
from uminfer_client import Client, ServerGone

start = time.monotonic()
try:
    Client(sys.argv[1], timeout=1.0)
except ServerGone as e:
    print(f"elapsed={time.monotonic() - start:.3f}")
    print(f"error={e}")
else:
    sys.exit("connected to an endpoint nobody serves")
"#;
    let mut cmd = python(&env);
    cmd.args(["-c", script, &name]);
    let out = run(cmd);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "exit {:?}\nstdout: {stdout}\nstderr: {}", out.status.code(), text(&out.stderr));
    let elapsed: f64 = field(&stdout, "elapsed").and_then(|e| e.parse().ok()).unwrap_or_else(|| panic!("no elapsed line in {stdout:?}"));
    assert!((0.9..=3.0).contains(&elapsed), "ServerGone after {elapsed} s for timeout=1");
    assert!(field(&stdout, "error").is_some_and(|e| e.contains(&format!("uminfer/{name}"))), "stdout: {stdout}");

    // The command line: exit status 2, one line on stderr (no iceoryx2 log noise), no output file.
    let output = std::env::temp_dir().join(format!("uminfer-{name}.out.npy"));
    let mut cmd = python(&env);
    cmd.args(["-m", "uminfer_client", "--name", &name, "--input"])
        .arg(common::model_path("tiny.input.npy"))
        .arg("--output")
        .arg(&output)
        .args(["--timeout", "1"]);
    let out = run(cmd);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stdout: {}\nstderr: {stderr}", text(&out.stdout));
    assert_eq!(stderr.lines().count(), 1, "expected one error line, got:\n{stderr}");
    assert!(stderr.contains("no live server serves"), "stderr: {stderr}");
    assert!(!output.exists(), "{} was written although the request failed", output.display());
}

#[test]
fn python_notices_a_killed_server_while_waiting() {
    let env = require_python!();
    let mut server = ServerProcess::start("killed", "tiny.pt");
    let script = r#"
import sys
import time
import numpy as np
from uminfer_client import Client, ServerGone

name, timeout, x_path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
x = np.load(x_path)
with Client(name, timeout=timeout) as client:
    client.infer(x)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    try:
        client.infer(x)
    except ServerGone as e:
        print(f"gone={time.monotonic() - start:.3f}")
    else:
        sys.exit("a stopped server answered")
"#;
    let mut cmd = python(&env);
    cmd.args(["-c", script, &server.name, CLIENT_TIMEOUT_S]).arg(common::model_path("tiny.input.npy")).stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("starting the venv python");
    let mut stdout = BufReader::new(child.stdout.take().expect("python stdout"));
    let mut first = String::new();
    let read = stdout.read_line(&mut first);
    if first.trim() != "ready" {
        let _ = child.kill();
        let out = common::finish(child, PYTHON_DEADLINE);
        server.fail(&format!("the client did not get ready (read {read:?}: {first:?})"), &out);
    }
    // The server cannot answer the next request, and dies while the client waits for it.
    server.signal(libc::SIGSTOP);
    child.stdin.take().expect("python stdin").write_all(b"go\n").expect("writing to python");
    std::thread::sleep(Duration::from_millis(500));
    server.signal(libc::SIGKILL);
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        rest
    });
    let out = common::finish(child, PYTHON_DEADLINE);
    let rest = reader.join().expect("the stdout reader panicked");
    if !out.status.success() {
        server.fail(&format!("the client did not report the dead server (stdout: {rest})"), &out);
    }
    let gone: f64 = field(&rest, "gone").and_then(|g| g.parse().ok()).unwrap_or_else(|| panic!("no gone line in {rest:?}"));
    assert!(gone < 15.0, "ServerGone came {gone} s after sending, the timeout was {CLIENT_TIMEOUT_S} s");
    assert!(!server.is_running(), "the SIGKILLed server is still running");
}

/// Compares a Python client's outputs to PyTorch's `.expected.npz` (bf16
/// stored as float32 there): the same names in order, each of the model's
/// dtype, floats within 1e-5 relative.
const COMPARE: &str = r#"
import numpy as np, ml_dtypes

def compare(model, got, expected_path, client):
    want = np.load(expected_path)
    if list(got) != list(want.files):
        raise SystemExit(f"{model}: outputs {list(got)}, expected {want.files}")
    for o in client.outputs:
        g = got[o.name]
        if g.dtype != o.dtype or g.shape != o.shape:
            raise SystemExit(f"{model}: {o.name} is {g.dtype} {g.shape}, the model says {o.dtype} {o.shape}")
        w = want[o.name]
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        scale = max(1e-12, float(np.abs(w64).max()))
        if np.issubdtype(w.dtype, np.floating) and o.dtype != np.dtype(bool) and not np.issubdtype(o.dtype, np.integer):
            err = float(np.abs(g64 - w64).max()) / scale
            if not err <= 1e-5:
                raise SystemExit(f"{model}: {o.name} differs by {err} relative")
        elif not np.array_equal(g64, w64):
            raise SystemExit(f"{model}: {o.name} differs")
"#;

/// Runs `body` (Python, after [`COMPARE`]) with `sys.argv[1:]` = endpoint, timeout, models dir.
fn python_script(env: &(PathBuf, PathBuf), body: &str, server: &str) -> Output {
    let mut cmd = python(env);
    cmd.args(["-c", &format!("{COMPARE}\n{body}"), server, CLIENT_TIMEOUT_S]).arg(common::model_path("encoder.pt").parent().expect("models dir"));
    run(cmd)
}

#[test]
fn python_runs_the_encoder_the_dict_model_and_every_dtype_as_pytorch_does() {
    let env = require_python!();
    for model in ["encoder", "heads", "dtypes"] {
        let mut server = ServerProcess::start(model, &format!("{model}.pt"));
        let script = r#"
import sys
import numpy as np, ml_dtypes
from uminfer_client import Client

name, timeout, models = sys.argv[1], float(sys.argv[2]), sys.argv[3]
model = name.split("-")[1]
inputs = dict(np.load(f"{models}/{model}.inputs.npz"))
with Client(name, timeout=timeout) as client:
    # As stored (a bf16 input given as float32 is converted while written), and in reverse order.
    compare(model, client.infer(dict(reversed(list(inputs.items())))), f"{models}/{model}.expected.npz", client)
    # Every input of the model's own dtype (bf16 as ml_dtypes.bfloat16).
    exact = {i.name: inputs[i.name].astype(i.dtype) for i in client.inputs}
    compare(model, client.infer(exact), f"{models}/{model}.expected.npz", client)
    if len(client.inputs) == 1:
        compare(model, client.infer(next(iter(exact.values()))), f"{models}/{model}.expected.npz", client)
    print("dtypes=" + ",".join(str(i.dtype) for i in client.inputs))
print("ok")
"#;
        let out = python_script(&env, script, &server.name);
        if !out.status.success() || !text(&out.stdout).contains("ok") {
            server.fail(&format!("{model} over the Python client"), &out);
        }
        if model == "dtypes" {
            assert_eq!(field(&text(&out.stdout), "dtypes"), Some("float32,float64,float16,bfloat16,int64,int32,int16,int8,uint8,bool"));
        }
    }
}

#[test]
fn python_refusals_are_clear_and_the_server_keeps_serving() {
    let env = require_python!();
    let mut server = ServerProcess::start("refuse", "encoder.pt");
    let script = r#"
import sys
import numpy as np
from uminfer_client import Client, RemoteError

name, timeout, models = sys.argv[1], float(sys.argv[2]), sys.argv[3]
inputs = dict(np.load(f"{models}/encoder.inputs.npz"))
ids, mask = inputs["input_ids"], inputs["attention_mask"]
cases = [
    ({"input_ids": ids, "attention_mask": mask, "token_type_ids": ids}, "the model has no input `token_type_ids`"),
    ({"input_ids": ids}, "input `attention_mask` not given"),
    ({"input_ids": ids.astype(np.float32), "attention_mask": mask}, "input `input_ids` is i64 [1, 32]; dtype code 1 (f32) given"),
    ({"input_ids": ids[:, :16], "attention_mask": mask}, "input `input_ids` is i64 [1, 32]; shape [1, 16] given"),
]
with Client(name, timeout=timeout) as client, Client(name, timeout=timeout) as other:
    for given, want in cases:
        try:
            client.infer(given)
        except RemoteError as e:
            if e.status != 1 or want not in e.message:
                sys.exit(f"{want!r} not in status {e.status} {e.message!r}")
        else:
            sys.exit(f"accepted: {want}")
        compare("encoder", client.infer(inputs), f"{models}/encoder.expected.npz", client)
        compare("encoder", other.infer(inputs), f"{models}/encoder.expected.npz", other)
    try:
        client.infer(ids)
    except TypeError as e:
        print(f"bare={e}")
print(f"refused={len(cases)}")
"#;
    let out = python_script(&env, script, &server.name);
    if !out.status.success() {
        server.fail("the refusals script failed", &out);
    }
    let stdout = text(&out.stdout);
    assert_eq!(field(&stdout, "refused"), Some("4"), "{stdout}");
    assert!(field(&stdout, "bare").is_some_and(|m| m.contains("the model takes 2 inputs (input_ids, attention_mask): pass a dict")), "{stdout}");
    assert!(server.is_running(), "the server exited after bad requests:\n{}", server.log());
}

/// Python clients of a batching server (`--max-batch 4`): 4 threads × 8
/// requests of 1 to 3 samples of random tokens, every row equal (1e-4) to
/// PyTorch's own run of that sample alone; the describe response shows the
/// batch as -1; the server logs its batches at shutdown.
#[test]
fn python_clients_of_a_batching_server_get_their_own_rows() {
    let env = require_python!();
    let mut server = ServerProcess::start_with("batched", "encoder.pt", &["--max-batch", "4", "--batch-delay-us", "2000"]);
    let script = r#"
import sys, threading
import numpy as np, torch
from uminfer_client import Client

name, timeout, models = sys.argv[1], float(sys.argv[2]), sys.argv[3]
model = torch.jit.load(f"{models}/encoder.pt").eval()
with Client(name, timeout=timeout) as c:
    shapes = [i.shape for i in c.inputs] + [o.shape for o in c.outputs]
    assert all(s[0] == -1 for s in shapes), shapes
done, errors = [], []

def client(t):
    try:
        rng = np.random.default_rng(t)
        with Client(name, timeout=timeout) as c:
            for m in range(8):
                n = 1 + (t + m) % 3
                ids = rng.integers(0, 1000, (n, 32), dtype=np.int64)
                mask = (rng.random((n, 32)) < 0.8).astype(np.int64)
                out = c.infer({"input_ids": ids, "attention_mask": mask})
                done.append((ids, mask, out))
    except Exception as e:
        errors.append(repr(e))

threads = [threading.Thread(target=client, args=(t,)) for t in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
assert not errors, errors
with torch.inference_mode():
    for ids, mask, out in done:
        for k in range(ids.shape[0]):
            want = model(torch.from_numpy(ids[k:k + 1]), torch.from_numpy(mask[k:k + 1]))
            for i, w in enumerate(want):
                got = out[f"output__{i}"][k:k + 1]
                err = np.abs(got - w.numpy()).max() / max(1e-6, np.abs(w.numpy()).max())
                assert err <= 1e-4, (k, i, err)
print(f"requests={len(done)} samples={sum(ids.shape[0] for ids, _, _ in done)}")
"#;
    let out = python_script(&env, script, &server.name);
    if !out.status.success() {
        server.fail("the batching script failed", &out);
    }
    let stdout = text(&out.stdout);
    let samples: usize = (0..4).flat_map(|t| (0..8).map(move |m| 1 + (t + m) % 3)).sum();
    assert_eq!(field(&stdout, "requests"), Some(format!("32 samples={samples}").as_str()), "{stdout}");
    assert!(server.stop().success(), "{}", server.log());
    let log = server.log();
    assert!(log.contains("batching: 32 requests (0 refused) in "), "{log}");
}

#[test]
fn python_cli_writes_every_output_of_an_npz_request() {
    let env = require_python!();
    let mut server = ServerProcess::start("cli-npz", "heads.pt");
    let output = std::env::temp_dir().join(format!("uminfer-{}.out.npz", server.name));
    let mut cmd = python(&env);
    cmd.args(["-m", "uminfer_client", "--name", &server.name, "--input"]).arg(common::model_path("heads.inputs.npz")).arg("--output").arg(&output).args(["--timeout", CLIENT_TIMEOUT_S]);
    let out = run(cmd);
    if !out.status.success() {
        server.fail("python -m uminfer_client with an .npz failed", &out);
    }
    let got = uminfer::host_tensor::read_npz(&output).unwrap();
    let _ = std::fs::remove_file(&output);
    let want = uminfer::host_tensor::read_npz(&common::model_path("heads.expected.npz")).unwrap();
    assert_eq!(got.iter().map(|t| &t.name).collect::<Vec<_>>(), want.iter().map(|t| &t.name).collect::<Vec<_>>());
    for (g, w) in got.iter().zip(&want) {
        g.check_close(w, 1e-5).unwrap();
    }
}

/// A protocol v1 client (the Python client of uminfer_client 0.1.0, its
/// wire part) still gets answers for a one-float32-tensor model, and a
/// refusal that names protocol v2 and the client version for any other.
#[test]
fn an_old_v1_python_client_is_served_or_told_to_upgrade() {
    let env = require_python!();
    let script = r#"
import ctypes, sys, time
import iceoryx2 as iox2
import numpy as np

class ReqV1(ctypes.Structure):
    _fields_ = [("magic", ctypes.c_uint32), ("version", ctypes.c_uint16), ("dtype", ctypes.c_uint8), ("rank", ctypes.c_uint8),
                ("request_id", ctypes.c_uint64), ("shape", ctypes.c_uint64 * 8)]
    @staticmethod
    def type_name():
        return "UminferRequestHeaderV1"

class RespV1(ctypes.Structure):
    _fields_ = [("magic", ctypes.c_uint32), ("version", ctypes.c_uint16), ("status", ctypes.c_uint16), ("dtype", ctypes.c_uint8),
                ("rank", ctypes.c_uint8), ("error_len", ctypes.c_uint16), ("reserved", ctypes.c_uint32), ("request_id", ctypes.c_uint64),
                ("shape", ctypes.c_uint64 * 8), ("error", ctypes.c_uint8 * 256)]
    @staticmethod
    def type_name():
        return "UminferResponseHeaderV1"

name, x = sys.argv[1], np.load(sys.argv[2]) if sys.argv[2] != "-" else np.zeros((1, 32), np.float32)
iox2.set_log_level(iox2.LogLevel.Error)
node = iox2.NodeBuilder.new().config(iox2.config.default()).signal_handling_mode(iox2.SignalHandlingMode.Disabled).create(iox2.ServiceType.Ipc)
deadline = time.monotonic() + 60
while True:
    try:
        svc = (node.service_builder(iox2.ServiceName.new(f"uminfer/{name}"))
               .request_response(iox2.Slice[ctypes.c_float], iox2.Slice[ctypes.c_float])
               .request_header(ReqV1).response_header(RespV1)
               .max_servers(1).max_clients(64).max_nodes(72).max_active_requests_per_client(2)
               .max_response_buffer_size(2).max_loaned_requests(2).open())
        if svc.dynamic_config.number_of_servers > 0:
            break
    except iox2.RequestResponseOpenError:
        pass
    if time.monotonic() > deadline:
        sys.exit("no v1 service")
    time.sleep(0.05)
port = svc.client_builder().initial_max_slice_len(1).allocation_strategy(iox2.AllocationStrategy.PowerOfTwo).create()
req = port.loan_slice_uninit(x.size)
h = req.user_header().contents
h.magic, h.version, h.dtype, h.rank, h.request_id = 0x554D4946, 1, 1, x.ndim, 1
for i in range(8):
    h.shape[i] = x.shape[i] if i < x.ndim else 0
np.ctypeslib.as_array((ctypes.c_float * x.size).from_address(req.payload_ptr))[:] = x.ravel()
pending = req.assume_init().send()
while (r := pending.receive()) is None:
    if time.monotonic() > deadline:
        sys.exit("no v1 response")
    time.sleep(0.0001)
rh = r.user_header().contents
print(f"status={rh.status}")
print(f"error={bytes(rh.error[:rh.error_len]).decode()}")
if rh.status == 0:
    y = np.ctypeslib.as_array((ctypes.c_float * r.header.number_of_elements).from_address(r.payload_ptr)).copy()
    print(f"first={y[0]:.6f}")
r.delete()
pending.delete()
"#;
    let tiny = ServerProcess::start("v1-tiny", "tiny.pt");
    let mut cmd = python(&env);
    cmd.args(["-c", script, &tiny.name]).arg(common::model_path("tiny.input.npy"));
    let out = run(cmd);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_eq!(field(&stdout, "status"), Some("0"), "{stdout}");
    let first: f32 = field(&stdout, "first").and_then(|v| v.parse().ok()).unwrap_or(f32::NAN);
    assert!((first - npy(&common::model_path("tiny.expected.npy")).1[0]).abs() <= 1e-5, "{stdout}");
    let encoder = ServerProcess::start("v1-encoder", "encoder.pt");
    let mut cmd = python(&env);
    cmd.args(["-c", script, &encoder.name, "-"]);
    let out = run(cmd);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_eq!(field(&stdout, "status"), Some("1"), "{stdout}");
    let error = field(&stdout, "error").unwrap_or_default();
    assert!(error.contains(&format!("this model needs protocol v2 (uminfer/{}/v2): use uminfer_client >= 0.2.0 (Python)", encoder.name)), "{error}");
}
