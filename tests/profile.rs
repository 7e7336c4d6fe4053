//! `--profile DIR` of `uminfer run`, `uminfer bench` and `uminfer serve`:
//! CPU flame graphs (SVG) that name the model's libtorch operators, one per
//! scheme (and per server scheme one of its server), listed in the bench's
//! JSON; `run --torch-trace`: libtorch's trace of extra requests.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn scratch(what: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("uminfer-profile-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// A flame graph of `tiny`'s requests: an SVG with samples, whose frames
/// include libtorch's convolution.
fn assert_flame_graph_of_tiny(svg: &std::path::Path) {
    let text = std::fs::read_to_string(svg).unwrap_or_else(|e| panic!("{}: {e}", svg.display()));
    assert!(text.contains("<svg"), "{} is not an SVG", svg.display());
    assert!(text.contains("samples at 997 Hz of CPU time"), "title with the sample count: {}", svg.display());
    assert!(text.contains("convolution"), "{} names no convolution frame", svg.display());
}

/// `uminfer run` of `tiny` with `extra` flags, its output written into `dir`.
fn run_tiny(dir: &std::path::Path, extra: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(common::uminfer_bin())
        .args(["run", "--model"])
        .arg(common::model_path("tiny.pt"))
        .arg("--input")
        .arg(common::model_path("tiny.input.npy"))
        .arg("--output")
        .arg(dir.join("y.npy"))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn run_writes_a_flame_graph_of_its_requests() {
    let dir = scratch("run");
    let o = run_tiny(&dir, &["--repeat".as_ref(), "400".as_ref(), "--profile".as_ref(), dir.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("CPU flame graph of the requests"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_flame_graph_of_tiny(&dir.join("run-tiny.svg"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_writes_a_torch_trace_of_extra_requests() {
    let dir = scratch("trace");
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("tiny.trace.json");
    let o = run_tiny(&dir, &["--repeat", "5", "--trace-requests", "3", "--json", "--torch-trace"].map(std::ffi::OsStr::new).into_iter().chain([trace.as_os_str()]).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("libtorch trace of 3 requests"), "{stderr}");
    let events = common::check_torch_trace(&trace, 3, true);
    assert!(events.iter().any(|e| e["name"] == "aten::conv2d"), "tiny's convolution is not in the trace");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["timing"]["host"]["count"], 5, "the traced requests are not in the timing");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_writes_a_flame_graph_per_scheme_and_lists_it() {
    let dir = scratch("bench");
    let json = dir.join("bench.json");
    std::fs::create_dir_all(&dir).unwrap();
    let o = Command::new(common::uminfer_bin())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "--model"])
        .arg(common::model_path("tiny.pt"))
        .args(["--requests", "300", "--warmup", "3", "--warmup-secs", "0", "--schemes", "cpu-zero-copy,tch-naive,shm-ipc", "--json"])
        .arg(&json)
        .arg("--profile")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for r in v["results"].as_array().unwrap() {
        assert_eq!(r["status"], "ok", "{r}");
        let scheme = r["scheme"].as_str().unwrap();
        let want = dir.join(format!("tiny.pt-{scheme}.svg"));
        assert_eq!(r["profile"].as_str(), Some(want.to_str().unwrap()), "{r}");
        if scheme == "shm-ipc" {
            // The client side waits for the server: the model runs in the server's graph.
            let server = dir.join("tiny.pt-shm-ipc-server.svg");
            assert_eq!(r["server_profile"].as_str(), Some(server.to_str().unwrap()), "{r}");
            assert_flame_graph_of_tiny(&server);
        } else {
            assert_flame_graph_of_tiny(&want);
            assert!(r["server_profile"].is_null(), "{r}");
        }
        // The timed figures come from the run before the profiled one.
        assert_eq!(r["samples"], 300, "{r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `uminfer serve --profile DIR`: the server process's flame graph, written
/// at shutdown (SIGTERM), holds the model's convolution.
#[test]
fn serve_writes_a_flame_graph_of_the_server_at_shutdown() {
    use std::io::BufRead;
    let dir = scratch("serve");
    let name = format!("profile-serve-{}", std::process::id());
    let mut child = Command::new(common::uminfer_bin())
        .args(["serve", "--name", &name, "--model"])
        .arg(common::model_path("tiny.pt"))
        .arg("--profile")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("ipc=uminfer/{name}"));
    let mut c = uminfer::ipc::Client::connect(&name, std::time::Duration::from_secs(30)).unwrap();
    let x = vec![0.5f32; 3 * 128 * 128];
    for _ in 0..300 {
        c.infer_tensors(&[uminfer::ipc::NamedTensor::new("", &[1, 3, 128, 128], &x).unwrap()]).unwrap();
    }
    drop(c);
    // SAFETY: kill(2) on our own child's pid, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = common::finish(child, std::time::Duration::from_secs(60));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("CPU flame graph of the server"), "{log}");
    assert_flame_graph_of_tiny(&dir.join(format!("serve-{name}.svg")));
    let _ = std::fs::remove_dir_all(&dir);
}
