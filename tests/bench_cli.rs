//! `uminfer bench` end to end (few requests): JSON schema, statuses (the
//! gRPC schemes `oip-grpc` and `oip-grpc-shm` included), picture, the
//! server processes' threads and session mode.

mod common;

use std::process::Command;

#[test]
fn bench_runs_schemes_interleaved_and_writes_json_and_svg() {
    let dir = std::env::temp_dir().join(format!("uminfer-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg) = (dir.join("bench.json"), dir.join("bench.svg"));
    let out = Command::new(common::uminfer_bin())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "--model"])
        .arg(common::model_path("tiny.pt"))
        .args(["--requests", "30", "--warmup", "3", "--warmup-secs", "0", "--schemes", "serialize-copy,cpu-zero-copy,shm-ipc,oip-grpc,oip-grpc-shm,tch-naive,py-torchscript,gpu-managed-graph", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .expect("running uminfer bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // The doctor's verdict comes first, then the table.
    let doctor_at = stdout.find("Execution modes").expect("doctor summary");
    let table_at = stdout.find("scheme ").expect("table header");
    assert!(doctor_at < table_at, "{stdout}");

    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["schema_version"], 2);
    assert_eq!(v["models"][0]["inputs"][0]["shape"], serde_json::json!([1, 3, 128, 128]));
    assert!(v["machine"]["cpu"].is_string() && v["machine"]["cores"].as_u64().unwrap() >= 1);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 8);
    for r in results {
        for key in ["scheme", "model", "status", "reason", "samples", "p50_us", "p90_us", "p99_us", "mean_us", "std_us", "min_us", "max_us", "device_p50_us"] {
            assert!(r.get(key).is_some(), "result lacks {key}: {r}");
        }
        let scheme = r["scheme"].as_str().unwrap();
        match scheme {
            "gpu-managed-graph" if common::gpu_unavailable().is_some() => {
                assert_eq!(r["status"], "unavailable");
                assert!(r["reason"].as_str().unwrap().contains("not usable"), "{r}");
            }
            _ => {
                assert_eq!(r["status"], "ok", "{r}");
                assert_eq!(r["samples"], 30, "{r}");
                let (p50, p99, min) = (r["p50_us"].as_f64().unwrap(), r["p99_us"].as_f64().unwrap(), r["min_us"].as_f64().unwrap());
                assert!(min > 0.0 && min <= p50 && p50 <= p99, "{r}");
            }
        }
    }
    let cpu = results.iter().find(|r| r["scheme"] == "cpu-zero-copy").unwrap();
    assert!((cpu["p50_vs_cpu_zero_copy"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    let ser = results.iter().find(|r| r["scheme"] == "serialize-copy").unwrap();
    assert!((ser["p50_vs_serialize_copy"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    // Server processes get the threads `uminfer serve` would choose and say
    // why: every core for the HTTP and shared-memory servers (tiny's pass is
    // over 50 µs), one fewer for the gRPC ones when it is short (unless this
    // machine was so loaded that even its fastest pass looked long: every core).
    let note = |s: &str| results.iter().find(|r| r["scheme"] == s).unwrap()["threads"].as_str().unwrap().to_string();
    let (fewer, all) = (uminfer::intra_op::fewer_cores(), uminfer::intra_op::cores());
    let every = format!("server process: intra-op {all} (--intra-op-threads {all}, all cores");
    assert!(note("serialize-copy").starts_with(&format!("{every}: its client blocks)")), "{}", note("serialize-copy"));
    assert!(note("shm-ipc").starts_with(&format!("{every}, as `uminfer serve` chooses")), "{}", note("shm-ipc"));
    let why = if fewer < all { "cores - 1: a short forward pass, a core left to the polling client" } else { "all cores: a long forward pass" };
    let short = format!("server process: intra-op {fewer} (--intra-op-threads {fewer}, {why})");
    let long = format!("{every}: a long forward pass)");
    let grpc = [note("oip-grpc"), note("oip-grpc-shm")];
    assert!(grpc.iter().all(|n| n.starts_with(&short)) || grpc.iter().all(|n| n.starts_with(&long)), "{grpc:?} against {short:?} or {long:?}");
    // The server schemes' processes run in --server-mode (default cpu).
    assert_eq!(v["server_mode"], "cpu");
    for s in ["shm-ipc", "oip-grpc", "oip-grpc-shm"] {
        assert!(note(s).contains("; serve --mode cpu"), "{}", note(s));
    }

    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.starts_with("<svg") || picture.contains("<svg"), "not an SVG");
    for s in ["cpu-zero-copy", "serialize-copy", "shm-ipc", "oip-grpc", "oip-grpc-shm"] {
        assert!(picture.contains(s), "{s} missing from the plot legend");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_scheme_is_listed_as_unavailable_with_the_known_ones() {
    let out = Command::new(common::uminfer_bin())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "--model"])
        .arg(common::model_path("tiny.pt"))
        .args(["--requests", "5", "--warmup", "1", "--warmup-secs", "0", "--schemes", "cpu-zero-copy,teleport"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("teleport: unknown scheme teleport; known: serialize-copy"), "{stdout}");
}

/// `--server-mode`: the server schemes' processes run in that session mode;
/// where it is unusable they are listed as unavailable with the doctor's
/// reason. `shm-ipc` is a transport, not a session mode: refused.
#[test]
fn server_schemes_run_in_the_server_mode_or_say_why_not() {
    let (_, v) = bench_json("server-mode", "tiny.pt", &["--requests", "10", "--warmup", "2", "--warmup-secs", "0", "--schemes", "cpu-zero-copy,shm-ipc,oip-grpc-shm", "--server-mode", "gpu-managed-graph"]);
    assert_eq!(v["server_mode"], "gpu-managed-graph");
    for r in v["results"].as_array().unwrap() {
        match (r["scheme"].as_str().unwrap(), common::gpu_unavailable()) {
            ("cpu-zero-copy", _) => assert_eq!(r["status"], "ok", "{r}"),
            (_, Some(_)) => {
                assert_eq!(r["status"], "unavailable", "{r}");
                assert!(r["reason"].as_str().unwrap().contains("mode gpu-managed-graph is not usable here"), "{r}");
            }
            (_, None) => {
                assert_eq!(r["status"], "ok", "{r}");
                assert!(r["threads"].as_str().unwrap().contains("; serve --mode gpu-managed-graph"), "{r}");
            }
        }
    }

    let refused = Command::new(common::uminfer_bin())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "--schemes", "shm-ipc", "--server-mode", "shm-ipc"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--server-mode shm-ipc is a transport, not a session mode"), "{stderr}");
}

/// `ci/ipc-gpu-choice.py` (issue #5's question for GPU servers) reads the
/// bench's JSON files: the hop `T` from a real small-shape `identity` run here, and its
/// verdict both ways from GPU runs written by this test (numbers chosen
/// around the real `T`, to check the rule, not measured).
#[test]
fn ipc_gpu_choice_reads_bench_runs_and_applies_its_rule() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join(".venv/bin/python");
    let python = if venv.exists() { venv } else { "python3".into() }; // a GPU bundle carries no venv
    let dir = std::env::temp_dir().join(format!("uminfer-ipc-choice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(common::uminfer_bin())
        .current_dir(&root)
        .args(["bench", "--model"])
        .arg(common::model_path("identity.pt"))
        .args(["--requests", "20", "--warmup", "2", "--warmup-secs", "0", "--schemes", "cpu-zero-copy,shm-ipc", "--shape", "1,3,1,1", "--json"])
        .arg(dir.join("identity.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("identity.json")).unwrap()).unwrap();
    let p50 = |s: &str| v["results"].as_array().unwrap().iter().find(|r| r["scheme"] == s).unwrap()["p50_us"].as_f64().unwrap();
    let t = p50("shm-ipc") - p50("cpu-zero-copy");
    let choose = || {
        let out = Command::new(&python).arg(root.join("ci/ipc-gpu-choice.py")).arg(&dir).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // An identity run at the full 196 KB does not count for T.
    let full = serde_json::json!({"schema_version": 2, "models": [{"path": "/bundle/models/identity.pt", "inputs": [{"name": "x", "dtype": "f32", "shape": [1, 3, 128, 128]}]}], "server_mode": "cpu",
        "results": [{"scheme": "cpu-zero-copy", "status": "ok", "p50_us": 1.0}, {"scheme": "shm-ipc", "status": "ok", "p50_us": 0.5}]});
    std::fs::write(dir.join("identity-full.json"), full.to_string()).unwrap();
    let (code, text) = choose();
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains(&format!("T = {t:8.1} us  shared-memory hop (identity.json")), "T = {t:.1} expected:\n{text}");
    assert!(text.contains("C = missing") && text.contains("R = missing") && text.contains("verdict: not enough runs"), "{text}");

    // GPU runs as ci/gpu-run writes them: a copying server beside the
    // in-process graph session, and the captured registered-memory proxies.
    let run = |file: &str, server: &str, capture: bool, results: &[(&str, f64)]| {
        let results: Vec<_> = results.iter().map(|(s, p)| serde_json::json!({"scheme": s, "status": "ok", "p50_us": p})).collect();
        let doc = serde_json::json!({"schema_version": 2, "models": [{"path": "/bundle/models/tiny.pt", "inputs": [{"name": "x", "dtype": "f32", "shape": [1, 3, 128, 128]}]}], "server_mode": server,
            "capture_graphs": capture, "stage_input": false, "results": results});
        std::fs::write(dir.join(file), doc.to_string()).unwrap();
    };
    run("tiny-server.json", "gpu-managed-graph", false, &[("shm-ipc", 70.0 + t), ("gpu-managed-graph", 50.0)]);
    run("tiny-captured.json", "cpu", true, &[("gpu-copy", 66.0), ("gpu-pinned", 71.0)]);
    let (code, text) = choose();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("R =     66.0 us  best registered variant, in process (tiny-captured.json: gpu-copy --capture-graphs)"), "{text}");
    assert!(text.contains("verdict: registering might save up to 4.0 us"), "{text}");
    run("tiny-captured.json", "cpu", true, &[("gpu-copy", 75.0), ("gpu-pinned", 71.0)]);
    let (code, text) = choose();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("(tiny-captured.json: gpu-pinned --capture-graphs)") && text.contains("verdict: copy."), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// State and parent of process `pid` (`None` once it is gone).
fn state_and_parent(pid: u32) -> Option<(char, u32)> {
    let f = common::proc_stat(pid)?;
    Some((f[0].chars().next()?, f[1].parse().ok()?))
}

/// A bench killed outright (SIGKILL: no Drop runs) takes its server
/// processes with it: the kernel sends them SIGTERM (PR_SET_PDEATHSIG); its
/// Python peer ends when its standard input closes.
#[test]
fn killed_bench_leaves_no_server_behind() {
    let mut bench = Command::new(common::uminfer_bin())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "--model"])
        .arg(common::model_path("tiny.pt"))
        .args(["--requests", "1000000", "--warmup-secs", "0", "--schemes", "shm-ipc,serialize-copy,py-torchscript"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let children = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| state_and_parent(pid).is_some_and(|(_, parent)| parent == bench.id()))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let servers = loop {
        let c = children();
        if c.len() >= 3 {
            break c; // both servers and the peer started
        }
        assert!(std::time::Instant::now() < deadline, "the bench did not start its two servers and its Python peer");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    bench.kill().unwrap();
    bench.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Gone, or a zombie waiting for a reaper that is not ours to be.
    while servers.iter().any(|&pid| state_and_parent(pid).is_some_and(|(state, _)| state != 'Z')) {
        assert!(std::time::Instant::now() < deadline, "child processes {servers:?} outlived their bench by 30 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Any model, several in one run: the encoder (two int64 inputs, a tuple
/// out) and a package beside each other; schemes that cannot carry a model
/// say why; token ids drawn inside `--input-range`.
#[test]
fn bench_runs_any_signature_and_several_models_side_by_side() {
    let dir = std::env::temp_dir().join(format!("uminfer-bench-any-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = Command::new(common::uminfer_bin())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "--model"])
        .arg(common::model_path("encoder.pt"))
        .arg("--model")
        .arg(common::model_path("tiny.pt2"))
        .args(["--requests", "20", "--warmup", "2", "--warmup-secs", "0", "--input-range", "input_ids=0..50"])
        .args(["--schemes", "cpu-zero-copy,shm-ipc,shm-echo,oip-grpc,oip-grpc-shm,grpc-echo,tch-naive,py-torchscript,py-onnxruntime", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("encoder.pt (TorchScript): inputs input_ids: i64 [1, 32], attention_mask: i64 [1, 32] (random (input_ids in (0, 50), attention_mask in (0, 2)))"), "{stdout}");
    assert!(stdout.contains("\nmodel      scheme") && stdout.contains("\ntiny.pt2   cpu-zero-copy"), "a model column when several models run:\n{stdout}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["models"].as_array().unwrap().len(), 2);
    assert_eq!(v["models"][1]["format"], "aoti");
    let row = |model: &str, scheme: &str| v["results"].as_array().unwrap().iter().find(|r| r["model"] == model && r["scheme"] == scheme).unwrap_or_else(|| panic!("no {scheme} on {model}")).clone();
    for scheme in ["cpu-zero-copy", "tch-naive", "py-torchscript", "py-onnxruntime"] {
        let r = row("encoder.pt", scheme);
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["samples"], 20, "{r}");
    }
    assert_eq!(row("tiny.pt2", "cpu-zero-copy")["status"], "ok");
    // Both servers carry any signature (shared-memory protocol v2, the Open
    // Inference Protocol), a package's too; so do their floors (echo servers,
    // checked for the outputs' dtypes and shapes), and each transport scheme
    // is set against its floor.
    for model in ["encoder.pt", "tiny.pt2"] {
        for scheme in ["shm-ipc", "shm-echo", "oip-grpc", "oip-grpc-shm", "grpc-echo"] {
            let r = row(model, scheme);
            assert!(r["status"] == "ok" && r["samples"] == 20, "{r}");
        }
        for (scheme, floor) in [("shm-ipc", "shm-echo"), ("oip-grpc", "grpc-echo"), ("oip-grpc-shm", "grpc-echo")] {
            let (p50, cpu, floor) = (row(model, scheme)["p50_us"].as_f64().unwrap(), row(model, "cpu-zero-copy")["p50_us"].as_f64().unwrap(), row(model, floor)["p50_us"].as_f64().unwrap());
            let ratio = row(model, scheme)["transport_vs_floor"].as_f64().unwrap();
            assert!((ratio - (p50 - cpu) / floor).abs() < 1e-9, "{scheme} on {model}: {ratio}");
        }
        assert!(row(model, "cpu-zero-copy")["transport_vs_floor"].is_null());
    }
    assert!(stdout.contains("  shm-ipc on encoder.pt: P50 − cpu-zero-copy P50 = ") && stdout.contains(" × grpc-echo P50"), "{stdout}");
    for scheme in ["tch-naive", "py-torchscript", "py-onnxruntime"] {
        let r = row("tiny.pt2", scheme);
        assert!(r["status"] == "unavailable" && r["reason"].as_str().unwrap().contains("is an AOTInductor package"), "{r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench --concurrency`: both throughput schemes at every K, checked
/// against CPU eager first, with their figures in the table, the JSON and
/// the throughput-vs-latency picture; at 4 clients the batcher forms
/// batches of several samples (a pass takes long enough on any machine for
/// the other clients' requests to queue meanwhile).
#[test]
fn bench_concurrency_measures_sessions_and_batched_throughput() {
    let dir = std::env::temp_dir().join(format!("uminfer-bench-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg) = (dir.join("throughput.json"), dir.join("throughput.svg"));
    let out = Command::new(common::uminfer_bin())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "--model"])
        .arg(common::model_path("tiny.pt"))
        .args(["--concurrency", "1,4", "--max-batch", "4", "--cell-ms", "300", "--rounds", "2", "--schemes", "batched", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .expect("running uminfer bench --concurrency");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("closed-loop throughput") && stdout.contains("vs alone"), "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!((v["max_batch"].as_u64(), v["mode"].as_str(), v["rounds"].as_u64()), (Some(4), Some("cpu"), Some(2)));
    assert_eq!(v["buckets"], serde_json::json!([1, 2, 4]));
    let results = v["results"].as_array().unwrap();
    let got: Vec<(&str, u64)> = results.iter().map(|r| (r["scheme"].as_str().unwrap(), r["concurrency"].as_u64().unwrap())).collect();
    assert_eq!(got, [("sessions", 1), ("batched", 1), ("sessions", 4), ("batched", 4)]);
    for r in results {
        let (rps, n, secs) = (r["requests_per_s"].as_f64().unwrap(), r["requests"].as_f64().unwrap(), r["seconds"].as_f64().unwrap());
        assert!(n > 0.0 && secs >= 0.5 && (rps - n / secs).abs() < 1e-6 * rps, "{r}");
        let l = &r["latency"];
        assert!(l["p50_us"].as_f64().unwrap() > 0.0 && l["p50_us"].as_f64() <= l["p99_us"].as_f64(), "{r}");
        if r["scheme"] == "batched" {
            assert!(r["alone"]["pass_us"].as_f64().unwrap() > 0.0 && r["vs_alone"].as_f64().unwrap() > 0.0 && r["vs_sessions"].as_f64().unwrap() > 0.0, "{r}");
        } else {
            assert_eq!((r["mean_batch"].as_f64(), r["alone"].is_null()), (Some(1.0), true), "{r}");
        }
    }
    let batched4 = &results[3];
    assert!(batched4["mean_batch"].as_f64().unwrap() > 1.0, "no batches formed with 4 clients: {batched4}");
    assert_eq!(batched4["alone"]["batch"].as_f64().unwrap(), batched4["mean_batch"].as_f64().unwrap().round().clamp(1.0, 4.0), "{batched4}");
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.contains("<svg") && picture.contains("K=4"), "not the throughput picture");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench --concurrency` with the server schemes: `uminfer serve` processes
/// over shared memory and gRPC under K clients (up to 8 processes, then threads in them), unbatched and
/// batched; batches form under load and the batched schemes are compared
/// with their own transport's unbatched one. An unknown scheme is refused.
#[test]
fn bench_concurrency_drives_servers_from_client_processes() {
    let (stdout, v) = bench_json("throughput-servers", "encoder.pt", &["--concurrency", "1,4,10", "--max-batch", "4", "--cell-ms", "300", "--rounds", "1", "--schemes", "shm-batched,grpc-batched"]);
    assert!(stdout.contains("grpc-batched"), "{stdout}");
    let results = v["results"].as_array().unwrap();
    let got: Vec<(&str, u64)> = results.iter().map(|r| (r["scheme"].as_str().unwrap(), r["concurrency"].as_u64().unwrap())).collect();
    assert_eq!(got, [("shm", 1), ("shm-batched", 1), ("grpc", 1), ("grpc-batched", 1), ("shm", 4), ("shm-batched", 4), ("grpc", 4), ("grpc-batched", 4), ("shm", 10), ("shm-batched", 10), ("grpc", 10), ("grpc-batched", 10)]);
    let at = |scheme: &str, k: u64| results.iter().find(|r| r["scheme"] == scheme && r["concurrency"] == k).unwrap();
    for r in results {
        let (rps, n, secs) = (r["requests_per_s"].as_f64().unwrap(), r["requests"].as_f64().unwrap(), r["seconds"].as_f64().unwrap());
        assert!(n > 0.0 && secs >= 0.25 && (rps - n / secs).abs() < 1e-6 * rps, "{r}");
        let l = &r["latency"];
        assert!(l["count"].as_f64() == Some(n) && l["p50_us"].as_f64().unwrap() > 0.0 && l["p50_us"].as_f64() <= l["p99_us"].as_f64(), "{r}");
        let scheme = r["scheme"].as_str().unwrap();
        if let Some(unbatched) = scheme.strip_suffix("-batched") {
            let peer = at(unbatched, r["concurrency"].as_u64().unwrap());
            let want = rps / peer["requests_per_s"].as_f64().unwrap();
            assert!((r["vs_sessions"].as_f64().unwrap() - want).abs() < 1e-9, "{r}");
            let padding = r["padding_share"].as_f64().unwrap();
            assert!((0.0..1.0).contains(&padding) && r["mean_batch"].as_f64().unwrap() >= 1.0, "{r}");
        } else {
            assert_eq!((r["mean_batch"].as_f64(), r["vs_sessions"].is_null()), (Some(1.0), true), "{r}");
        }
    }
    for scheme in ["shm-batched", "grpc-batched"] {
        // A lone client's requests run alone; four clients' form batches, and
        // so do ten (8 processes, two of them holding two clients).
        assert_eq!(at(scheme, 1)["mean_batch"].as_f64(), Some(1.0), "{}", at(scheme, 1));
        for k in [4, 10] {
            assert!(at(scheme, k)["mean_batch"].as_f64().unwrap() > 1.0, "no batches formed with {k} clients: {}", at(scheme, k));
        }
    }
    let refused = Command::new(common::uminfer_bin())
        .args(["bench", "--model"])
        .arg(common::model_path("tiny.pt"))
        .args(["--concurrency", "2", "--schemes", "shm-ipc"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("shm-ipc is not a throughput scheme; known: sessions, batched, shm, shm-batched, grpc, grpc-batched"), "{stderr}");
}

/// `bench --phases`: each scheme's extra requests split into phases that add
/// up to their total; the gRPC scheme adds its server's own account.
#[test]
fn bench_phases_add_up_and_give_the_servers_account() {
    let (stdout, v) = bench_json("phases", "encoder.pt", &["--requests", "60", "--warmup", "3", "--warmup-secs", "0", "--schemes", "cpu-zero-copy,shm-ipc,oip-grpc", "--phases"]);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for r in results {
        let scheme = r["scheme"].as_str().unwrap();
        assert_eq!(r["status"], "ok", "{r}");
        // The timed figures are the timed run's alone.
        assert_eq!(r["samples"], 60, "{r}");
        let b = &r["phases"];
        assert_eq!(b["requests"], 60, "{r}");
        let phases = b["phases"].as_array().unwrap();
        let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
        let want: &[&str] = match scheme {
            "cpu-zero-copy" => &["write input", "forward pass", "session call around the pass", "read outputs"],
            "shm-ipc" => &["write input", "round trip (transport and server)"],
            _ => &["write input", "round trip (client, transport and server)", "read outputs"],
        };
        assert_eq!(names, want, "{r}");
        let sum: f64 = phases.iter().map(|p| p["mean_us"].as_f64().unwrap()).sum();
        let total = b["total_mean_us"].as_f64().unwrap();
        assert!(total > 0.0 && (sum - total).abs() <= 1e-6 * total, "phases sum to {sum}, total {total}: {r}");
        let shares: f64 = phases.iter().map(|p| p["share"].as_f64().unwrap()).sum();
        assert!((shares - 1.0).abs() < 1e-9, "{r}");
        for p in phases {
            assert!(p["mean_us"].as_f64().unwrap() >= 0.0 && p["p50_us"].as_f64().unwrap() >= 0.0, "{r}");
        }
        assert_eq!(b["timed_p50_us"], r["p50_us"], "{r}");
        let ratio = b["request_p50_vs_timed"].as_f64().unwrap();
        assert!((b["request_p50_us"].as_f64().unwrap() / r["p50_us"].as_f64().unwrap() - ratio).abs() < 1e-9, "{r}");
        assert!(b["request_p50_us"].as_f64().unwrap() <= b["total_p50_us"].as_f64().unwrap() * (1.0 + 1e-9), "{r}");
        let server = b["server"].as_array().unwrap();
        if scheme == "oip-grpc" {
            let names: Vec<&str> = server.iter().map(|p| p["name"].as_str().unwrap()).collect();
            assert_eq!(names, ["server queue", "server compute input", "server compute infer", "server compute output"], "{r}");
            // The server ran the model inside the round trip it reports on.
            let infer = server[2]["mean_us"].as_f64().unwrap();
            let round_trip = phases[1]["mean_us"].as_f64().unwrap();
            assert!(infer > 0.0 && infer < round_trip, "{r}");
            let rest = b["client_and_transport_us"].as_f64().unwrap();
            let server_sum: f64 = server.iter().map(|p| p["mean_us"].as_f64().unwrap()).sum();
            assert!((rest - (round_trip - server_sum)).abs() < 1e-6, "{r}");
        } else {
            assert!(server.is_empty() && b["client_and_transport_us"].is_null(), "{r}");
        }
        let line = format!("  {scheme} phases, 60 more requests, mean µs: write input ");
        assert!(stdout.contains(&line), "no phase line for {scheme}:\n{stdout}");
    }
}

/// `uminfer bench --model MODEL ARGS --json FILE` in a scratch directory named
/// after `what`, which must succeed: its stdout and the JSON.
fn bench_json(what: &str, model: &str, args: &[&str]) -> (String, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!("uminfer-bench-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = Command::new(common::uminfer_bin())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "--model"])
        .arg(common::model_path(model))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("running uminfer bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (stdout, v)
}
