//! Every `uminfer bench` scheme under criterion (HTML reports in
//! `target/criterion/`), on `tiny` and the `1×3×128×128` float32 input. The
//! schemes are `uminfer bench`'s own ([`Bench::prepare`]): the same servers,
//! clients, sessions and Python peers, each checked against the CPU eager
//! answer before it is timed.
//!
//! - One iteration is one request on a fresh input, written into the
//!   scheme's input memory outside the timing; criterion gets the request's
//!   own host time (`iter_custom`), as `uminfer bench` records it.
//! - Every scheme is built first, then the measuring thread is pinned to
//!   core 0, as `uminfer bench` pins it (libtorch's threads, made by the
//!   builds, keep every core).
//! - A scheme this machine cannot run (the GPU modes without a GPU, the
//!   Python peers without a Python with torch 2.11) prints
//!   `SKIPPED <scheme>: <reason>` and is left out; one that answers wrongly
//!   prints `FAILED <scheme>: <reason>`.
//!
//! `cargo bench --bench schemes`, or one scheme: `cargo bench --bench schemes -- shm-ipc`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::PathBuf;
use std::time::Duration;
use uminfer::bench::stats::Status;
use uminfer::bench::{Bench, BenchOptions, SCHEMES};
use uminfer::Runtime;

/// `uminfer bench`'s options on `tiny`. `UMINFER_MODELS_DIR` and
/// `UMINFER_BIN` point elsewhere than this checkout's `models/` and cargo's
/// `uminfer` (a GPU host runs this bench from `ci/gpu-bundle`'s folder).
fn options() -> BenchOptions {
    let models = std::env::var_os("UMINFER_MODELS_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"), PathBuf::from);
    BenchOptions {
        models: vec![models.join("tiny.pt")],
        inputs: Vec::new(),
        input_ranges: Vec::new(),
        sample_inputs: None,
        // Criterion decides how many requests; these only steer `uminfer bench`'s own loop.
        requests: 0,
        burst: 1,
        settle: Duration::ZERO,
        warmup: 0,
        warmup_time: Duration::ZERO,
        schemes: SCHEMES.iter().map(|s| s.to_string()).collect(),
        python: None,
        spin: None,
        managed_placement: Default::default(),
        graph_launch: Default::default(),
        capture_graphs: false,
        gpu_session_thread: false,
        stage_input: false,
        server_mode: uminfer::Mode::Cpu,
        core: Some(0),
        server_exe: std::env::var_os("UMINFER_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_uminfer")), PathBuf::from),
        progress: false,
        profile: None,
        phases: false,
        intra_op_threads: None,
    }
}

fn schemes(c: &mut Criterion) {
    let rt = Runtime::new();
    let opts = options();
    let model = &opts.models[0];
    let bench = Bench::new(&rt, &opts, model).unwrap_or_else(|e| panic!("loading {} (run `bash ci/setup` first): {e}", model.display()));
    let mut ready = Vec::new();
    for name in SCHEMES {
        match bench.prepare(name) {
            Ok(s) => ready.push((name, s)),
            Err((Status::Unavailable, reason)) => println!("SKIPPED {name}: {reason}"),
            Err((_, reason)) => println!("FAILED {name}: {reason}"),
        }
    }
    if let Some(core) = opts.core {
        uminfer::session::pin_current_thread(core).expect("pinning the measuring thread");
    }
    let mut group = c.benchmark_group("tiny");
    for (name, scheme) in &mut ready {
        println!("{name}: {}", scheme.threads());
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| scheme.request().expect("request").host).sum());
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().sample_size(60).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4))
}

criterion_group! { name = benches; config = config(); targets = schemes }
criterion_main!(benches);
