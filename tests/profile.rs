//! `--profile DIR` of `uminfer run` and `uminfer bench`: CPU flame graphs
//! (SVG) that name the model's libtorch operators, one per scheme, listed
//! in the bench's JSON.

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
        .args(["--requests", "300", "--warmup", "3", "--warmup-secs", "0", "--schemes", "cpu-zero-copy,tch-naive", "--json"])
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
        assert_flame_graph_of_tiny(&want);
        // The timed figures come from the run before the profiled one.
        assert_eq!(r["samples"], 300, "{r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
