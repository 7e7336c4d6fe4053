//! Round trip of the 196 KB `1×3×128×128` f32 input through each transport,
//! the same bytes each way, server in a thread of this process:
//!
//! - `shm_iceoryx2/{identity,tiny}`: a `uminfer serve` child process (the
//!   binary as deployed, with its defaults) + the `uminfer::ipc` client
//!   (protocol v2: the client copies the input into the loaned sample in one
//!   pass, reads the response in place);
//! - `unix_socket/identity`: a Unix-domain stream socket echoing the bytes
//!   (length-prefixed), server in a thread of this process: the transport
//!   baseline;
//! - `http_json/identity`: JSON over loopback HTTP (the `serialize-copy`
//!   scheme's axum server, `uminfer bench-json-server`, and a ureq client):
//!   the serialising path a service would otherwise use;
//! - `in_process_cpu_session/tiny`: the `cpu` session alone, the floor for `tiny`.
//!
//! The shared-memory client and the in-process session are measured from a
//! thread pinned to core 0, as `uminfer bench` pins its measuring thread
//! (a polling client that the scheduler moves around competes with the
//! server's threads: `tiny` over shared memory took 184–199 µs unpinned
//! against 148–154 µs in process). The socket and HTTP baselines are not
//! pinned: their servers are threads or processes started from this one,
//! and a pin would put them on the client's core.
//!
//! `cargo bench --bench ipc`

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;
use uminfer::doctor::{self, probe::ProbeOptions};
use uminfer::ipc::{Client, NamedTensor};
use uminfer::{Runtime, TypedSession, SessionSpec};

const SHAPE: [i64; 4] = [1, 3, 128, 128];
const N: usize = 3 * 128 * 128;

fn model(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name)
}

fn input() -> Vec<f32> {
    (0..N).map(|i| (i % 251) as f32 / 251.0).collect()
}

/// Runs `f` on this thread pinned to core 0, then restores its CPU mask.
fn pinned<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut before: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `before` is a writable cpu_set_t of the size passed; 0 is this thread.
    let got = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut before) } == 0;
    uminfer::session::pin_current_thread(0).expect("pinning the measuring thread to core 0");
    let r = f();
    if got {
        // SAFETY: `before` holds the mask read above; 0 is this thread.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &before) };
    }
    r
}

fn runtime() -> Runtime {
    Runtime::from_report(doctor::diagnose(ProbeOptions { smoke_tests: false }))
}

/// Runs `uminfer serve` for `model` in a child process while `f` runs.
fn with_server(model_file: &str, f: impl FnOnce(&str)) {
    let name = format!("bench-{}-{}", model_file.trim_end_matches(".pt"), std::process::id());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_uminfer"))
        .args(["serve", "--name", &name, "--model"])
        .arg(model(model_file))
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("starting uminfer serve");
    f(&name);
    // SAFETY: kill(2) on our own child, not yet waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("waiting for uminfer serve");
    assert!(status.success(), "uminfer serve exited with {status}");
}

fn shm(c: &mut Criterion) {
    let x = input();
    for m in ["identity.pt", "tiny.pt"] {
        with_server(m, |name| {
            let mut client = Client::connect(name, Duration::from_secs(30)).expect("connect");
            let input = client.inputs()[0].name.clone();
            let tensor = NamedTensor::new(&input, &SHAPE, &x).expect("the input's view");
            pinned(|| {
                c.bench_function(&format!("shm_iceoryx2/{}", m.trim_end_matches(".pt")), |b| {
                    b.iter(|| {
                        client.infer_with(&[tensor], |r| black_box(r.tensor(0).map(|t| t.bytes()[0]))).expect("infer")
                    })
                });
            });
        });
    }
}

fn unix_socket(c: &mut Criterion) {
    let path = std::env::temp_dir().join(format!("uminfer-bench-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; N * 4];
        let mut len = [0u8; 8];
        while s.read_exact(&mut len).is_ok() {
            let n = u64::from_le_bytes(len) as usize;
            buf.resize(n, 0);
            s.read_exact(&mut buf).expect("read payload");
            s.write_all(&len).and_then(|_| s.write_all(&buf)).expect("echo");
        }
    });
    let mut s = UnixStream::connect(&path).expect("connect");
    let bytes: Vec<u8> = input().iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut back = vec![0u8; bytes.len()];
    c.bench_function("unix_socket/identity", |b| {
        b.iter(|| {
            s.write_all(&(bytes.len() as u64).to_le_bytes()).unwrap();
            s.write_all(&bytes).unwrap();
            let mut len = [0u8; 8];
            s.read_exact(&mut len).unwrap();
            s.read_exact(&mut back).unwrap();
            black_box(back[0]);
        })
    });
    drop(s);
    server.join().expect("socket server");
    let _ = std::fs::remove_file(&path);
}

fn http_json(c: &mut Criterion) {
    // The `serialize-copy` scheme's server (`uminfer bench-json-server`) on the identity model.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_uminfer"))
        .args(["bench-json-server", "--input-shape", "1,3,128,128", "--model"])
        .arg(model("identity.pt"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting uminfer bench-json-server");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line).expect("server address");
    let url = format!("http://{}/infer", line.trim().strip_prefix("http=").expect("http=ADDR"));
    let agent = ureq::Agent::new_with_defaults();
    let x = input();
    c.bench_function("http_json/identity", |b| {
        b.iter(|| {
            let body = serde_json::to_string(&x).unwrap();
            let text = agent.post(&url).send(body).unwrap().body_mut().read_to_string().unwrap();
            let v: Vec<f32> = serde_json::from_str(&text).unwrap();
            black_box(v[0]);
        })
    });
    let _ = child.kill();
    let _ = child.wait();
}

fn in_process(c: &mut Criterion) {
    let rt = runtime();
    let m = rt.model(model("tiny.pt")).expect("model");
    let mut s: TypedSession = rt.typed_session(&m, SessionSpec::new().input_shape(&SHAPE)).expect("session");
    let x = input();
    pinned(|| {
        c.bench_function("in_process_cpu_session/tiny", |b| {
            b.iter(|| {
                s.input_mut().copy_from_slice(&x);
                s.run().expect("run");
                black_box(s.output()[0]);
            })
        });
    });
}

fn config() -> Criterion {
    Criterion::default().sample_size(60).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4))
}

criterion_group! { name = benches; config = config(); targets = shm, unix_socket, http_json, in_process }
criterion_main!(benches);
