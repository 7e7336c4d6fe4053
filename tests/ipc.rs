//! Shared-memory IPC: round trips of any signature (protocol v2), every
//! refusal, the protocol v1 policy, lifecycle, security, load, idle CPU, and
//! property-based fuzzing of the v2 table and v1 header validation against
//! independent verdicts (bounded here; `cargo test --release --test ipc --
//! --ignored fuzz::` runs 1 000 000 cases of each).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use uminfer::doctor::{self, probe::ProbeOptions};
use uminfer::host_tensor::HostTensor;
use uminfer::ipc::header::{RequestHeaderV1, ResponseHeaderV1, MAGIC};
use uminfer::ipc::table::{dtype_code, layout, RequestHeaderV2, TensorEntry, MAX_TENSORS};
use uminfer::ipc::{Client, NamedTensor, ServeOptions, Server};
use uminfer::{DType, Error, Runtime};

const SHAPE: [i64; 4] = [1, 3, 128, 128];
const N: usize = 3 * 128 * 128;

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("test-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn runtime() -> Runtime {
    Runtime::from_report(doctor::diagnose(ProbeOptions { smoke_tests: false }))
}

fn npy(name: &str) -> Vec<f32> {
    Vec::<f32>::try_from(tch::Tensor::read_npy(common::model_path(name)).unwrap().flatten(0, -1)).unwrap()
}

/// `models/NAME.inputs.npz` fitted to `client`'s inputs (NumPy has no
/// bfloat16: a float32 array for a bf16 input is converted), in its order.
fn inputs_for(client: &Client, model: &str) -> Vec<HostTensor> {
    let given = uminfer::host_tensor::read_npz(&common::model_path(&format!("{model}.inputs.npz"))).unwrap();
    client
        .inputs()
        .iter()
        .map(|i| {
            let t = given.iter().find(|t| t.name == i.name).unwrap_or_else(|| panic!("{model}.inputs.npz has no `{}`", i.name));
            t.converted(i.dtype).unwrap()
        })
        .collect()
}

/// `got` equals PyTorch's `models/NAME.expected.npz` (bf16 stored as
/// float32 there): the same names in the same order, floats within 1e-5
/// relative, the rest exactly.
fn assert_expected(model: &str, got: &[HostTensor]) {
    let want = uminfer::host_tensor::read_npz(&common::model_path(&format!("{model}.expected.npz"))).unwrap();
    let names = |ts: &[HostTensor]| ts.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(got), names(&want), "{model}: output names and order");
    for (g, w) in got.iter().zip(&want) {
        let g = if g.dtype == DType::Bf16 && w.dtype == DType::F32 { g.converted(DType::F32).unwrap() } else { g.clone() };
        g.check_close(w, 1e-5).unwrap_or_else(|e| panic!("{model}: {e}"));
    }
}

/// A `uminfer serve` child process, stopped (SIGKILL unless stopped before) on drop.
struct ServerProcess {
    child: Child,
    log: PathBuf,
    out: PathBuf,
}

impl ServerProcess {
    fn start(name: &str, model: &str, extra: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let out = std::env::temp_dir().join(format!("{name}.out"));
        let child = Command::new(common::uminfer_bin())
            .args(["serve", "--name", name, "--model"])
            .arg(common::model_path(model))
            .args(extra)
            .stdout(std::fs::File::create(&out).expect("server stdout file"))
            .stderr(std::fs::File::create(&log).expect("server log file"))
            .spawn()
            .expect("starting uminfer serve");
        Self { child, log, out }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// CPU seconds (user + system) used so far, from /proc/PID/stat.
    fn cpu_seconds(&self) -> f64 {
        common::cpu_seconds(self.child.id())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(name: &str) -> Client {
    Client::connect(name, Duration::from_secs(30)).unwrap_or_else(|e| panic!("connecting to {name}: {e}"))
}

/// Runs an in-process server for `model` (its options changed by `tune`)
/// while `body` runs; returns what `body` returns.
fn with_server_tuned<R>(model: &str, tune: impl FnOnce(&mut ServeOptions), body: impl FnOnce(&str, &Server) -> R) -> R {
    let rt = runtime();
    let name = unique(model.trim_end_matches(".pt"));
    let mut opts = ServeOptions::new(&name, common::model_path(model));
    tune(&mut opts);
    let server = Server::new(&rt, opts).expect("server");
    /// Stops the server also when `body` panics (else the scope would wait forever).
    struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Release);
        }
    }
    std::thread::scope(|sc| {
        let h = sc.spawn(|| server.run());
        let stop = StopOnDrop(server.stop_handle());
        let r = body(&name, &server);
        drop(stop);
        h.join().expect("server thread").expect("server run");
        r
    })
}

fn with_server<R>(model: &str, body: impl FnOnce(&str, &Server) -> R) -> R {
    with_server_tuned(model, |_| {}, body)
}

#[test]
fn round_trip_matches_pytorch_and_in_place_form_reads_in_place() {
    with_server("tiny.pt", |name, server| {
        let mut c = connect(name);
        assert_eq!(c.inputs().len(), 1);
        assert_eq!((c.inputs()[0].dtype, c.inputs()[0].shape.as_slice()), (DType::F32, &SHAPE[..]));
        let input = npy("tiny.input.npy");
        let expected = npy("tiny.expected.npy");
        // A lone tensor without a name goes to the only input.
        let out = c.infer_tensors(&[NamedTensor::new("", &SHAPE, &input).unwrap()]).unwrap();
        assert_eq!((out.len(), out[0].name.as_str(), out[0].shape.as_slice()), (1, "output__0", &[1, 10][..]));
        assert!(common::max_abs_diff(&out[0].to_vec::<f32>().unwrap(), &expected) <= 1e-5);
        let diff = c
            .infer_with(&[NamedTensor::new("x", &SHAPE, &input).unwrap()], |r| {
                let y = r.get("output__0").expect("output__0");
                // Read where it lies in shared memory: 64-byte aligned.
                assert!((y.bytes().as_ptr() as usize).is_multiple_of(64));
                common::max_abs_diff(y.values::<f32>().unwrap(), &expected)
            })
            .unwrap();
        assert!(diff <= 1e-5);
        assert_eq!(server.stats().served.load(Relaxed), 2);
    });
}

/// The encoder (two int64 inputs, a tuple out), the dict-output model and
/// one tensor of every dtype each way, in both client forms: results equal
/// to PyTorch's.
#[test]
fn every_signature_and_dtype_over_shared_memory_equals_pytorch() {
    for model in ["encoder", "heads", "dtypes"] {
        with_server(&format!("{model}.pt"), |name, server| {
            let mut c = connect(name);
            let inputs = inputs_for(&c, model);
            // The one call: named tensors in any order (here reversed).
            let views: Vec<NamedTensor<'_>> = inputs.iter().rev().map(|t| NamedTensor::of(t).unwrap()).collect();
            assert_expected(model, &c.infer_tensors(&views).unwrap());
            // Loan, fill in shared memory, send; outputs read in place.
            let mut req = c.loan().unwrap();
            for t in &inputs {
                req.write(&NamedTensor::of(t).unwrap()).unwrap();
            }
            let got = c
                .send(req, |r| {
                    assert_eq!(r.len(), c_outputs_len(model));
                    for t in r.tensors() {
                        assert!((t.bytes().as_ptr() as usize).is_multiple_of(64), "{} at {:p}", t.name(), t.bytes().as_ptr());
                    }
                    r.to_host().unwrap()
                })
                .unwrap();
            assert_expected(model, &got);
            assert_eq!(server.stats().served.load(Relaxed), 2);
            assert_eq!(c.outputs().iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), got.iter().map(|t| t.name.as_str()).collect::<Vec<_>>());
        });
    }
}

fn c_outputs_len(model: &str) -> usize {
    match model {
        "encoder" => 2,
        "heads" => 3,
        _ => 10,
    }
}

#[test]
fn a_bool_input_of_other_bytes_than_0_and_1_is_refused() {
    with_server("dtypes.pt", |name, _| {
        let mut c = connect(name);
        let inputs = inputs_for(&c, "dtypes");
        let mut req = c.loan().unwrap();
        for t in &inputs {
            req.write(&NamedTensor::of(t).unwrap()).unwrap();
        }
        let b = req.index("a_bool").unwrap();
        req.bytes_mut(b).unwrap()[0] = 2;
        match c.send(req, |_| ()) {
            Err(Error::Remote { status: "bad request", message }) => assert!(message.contains("input `a_bool`: bool elements are 0 or 1, found the byte 2"), "{message}"),
            other => panic!("expected a bad request, got {other:?}"),
        }
        assert_expected("dtypes", &c.infer_tensors(&inputs.iter().map(|t| NamedTensor::of(t).unwrap()).collect::<Vec<_>>()).unwrap());
    });
}

#[test]
fn loaned_requests_are_filled_ahead_and_sent_by_their_own_client() {
    with_server("tiny.pt", |name, _| {
        let (mut c, mut other) = (connect(name), connect(name));
        let input = npy("tiny.input.npy");
        let expected = npy("tiny.expected.npy");
        let mut zeros = c.loan().unwrap();
        let mut real = c.loan().unwrap();
        assert!(zeros.values_mut::<f32>(0).unwrap().iter().all(|&v| v == 0.0), "a loaned request starts zeroed");
        assert!(matches!(real.values_mut::<i64>(0), Err(Error::DType { .. })));
        real.values_mut::<f32>(0).unwrap().copy_from_slice(&input);
        // Two loans are the most a client may hold; a third is an error, not a hang.
        let third = c.loan();
        assert!(matches!(third, Err(Error::Ipc { kind: uminfer::IpcErrorKind::Transport, .. })), "{:?}", third.err());
        // Sent in the other order than loaned: each gets its own answer.
        let diff = c.send(real, |r| common::max_abs_diff(r.tensor(0).unwrap().values::<f32>().unwrap(), &expected)).unwrap();
        assert!(diff <= 1e-5);
        let from_zeros = c.send(zeros, |r| r.to_host().unwrap()).unwrap();
        let zero_in = vec![0.0f32; input.len()];
        let want = c.infer_tensors(&[NamedTensor::new("x", &SHAPE, &zero_in).unwrap()]).unwrap();
        assert_eq!(from_zeros, want);
        // A request belongs to the client that loaned it.
        let foreign = c.loan().unwrap();
        let err = other.send(foreign, |_| ()).expect_err("sent through another client");
        assert!(err.to_string().contains("another client"), "{err}");
        // Loans were given back (sent or dropped): two can be held again.
        let _held = (c.loan().unwrap(), c.loan().unwrap());
    });
}

/// A valid encoder request as its table and payload: `input_ids` then
/// `attention_mask`, each 256 bytes, at offsets 0 and 256.
fn encoder_request(c: &Client) -> (RequestHeaderV2, Vec<u8>) {
    let ins = inputs_for(c, "encoder");
    let t = layout(ins.iter().map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice()))).unwrap();
    let h = t.request();
    let mut payload = vec![0u8; t.len];
    for (e, x) in t.used().iter().zip(&ins) {
        payload[e.offset as usize..(e.offset + e.len) as usize].copy_from_slice(x.bytes());
    }
    (h, payload)
}

/// `good` with the table `tensors` instead of its own.
fn with_table(good: &RequestHeaderV2, tensors: &[TensorEntry]) -> RequestHeaderV2 {
    let mut h = RequestHeaderV2 { count: tensors.len() as u8, ..*good };
    for (i, slot) in h.tensors.iter_mut().enumerate() {
        *slot = tensors.get(i).copied().unwrap_or(TensorEntry::EMPTY);
    }
    h
}

#[test]
fn every_malformed_request_is_refused_with_a_clear_message_and_the_server_keeps_serving() {
    with_server_tuned(
        "encoder.pt",
        |o| o.max_bytes = 4096,
        |name, server| {
            let (mut c, mut bystander) = (connect(name), connect(name));
            let (good, payload) = encoder_request(&c);
            let ids = good.tensors[0];
            let mask = good.tensors[1];
            let entry = |f: &dyn Fn(&mut TensorEntry)| {
                let mut e = ids;
                f(&mut e);
                e
            };
            let with = |tensors: &[TensorEntry]| with_table(&good, tensors);
            let renamed = |name: &str| {
                let mut e = TensorEntry::new(name, DType::I64, &[1, 32], ids.offset as usize).unwrap();
                e.len = ids.len;
                e
            };
            let cases: Vec<(RequestHeaderV2, Vec<u8>, &str)> = vec![
                (RequestHeaderV2 { magic: 0xDEAD_BEEF, ..good }, payload.clone(), "bad magic 0xdeadbeef"),
                (RequestHeaderV2 { version: 1, ..good }, payload.clone(), "protocol version 1 is not supported on this service"),
                (RequestHeaderV2 { kind: 9, ..good }, payload.clone(), "request kind 9"),
                (with(&[renamed("token_type_ids"), mask]), payload.clone(), "the model has no input `token_type_ids`; it takes input_ids: i64 [1, 32], attention_mask: i64 [1, 32]"),
                (with(&[ids]), payload.clone(), "input `attention_mask` not given"),
                (with(&[ids, mask, ids]), payload.clone(), "input `input_ids` is given twice"),
                (with(&[entry(&|e| e.dtype = dtype_code(DType::I32)), mask]), payload.clone(), "input `input_ids` is i64 [1, 32]; dtype code 6 (i32) given"),
                (with(&[entry(&|e| e.dtype = 99), mask]), payload.clone(), "dtype code 99 (no dtype"),
                (with(&[entry(&|e| e.shape[1] = 16), mask]), payload.clone(), "input `input_ids` is i64 [1, 32]; shape [1, 16] given"),
                (with(&[entry(&|e| e.rank = 9), mask]), payload.clone(), "rank 9 is above 8"),
                (with(&[entry(&|e| e.len = 8), mask]), payload.clone(), "input `input_ids`: 8 bytes given, its shape [1, 32] of i64 takes 256"),
                (with(&[entry(&|e| e.offset = 8), mask]), payload.clone(), "offset 8 is not a multiple of 64"),
                (with(&[entry(&|e| e.offset = mask.offset), mask]), payload.clone(), "inputs `input_ids` (bytes 256..512) and `attention_mask` (bytes 256..512) overlap"),
                (with(&[entry(&|e| e.offset = 192), mask]), payload.clone(), "inputs `input_ids` (bytes 192..448) and `attention_mask` (bytes 256..512) overlap"),
                (with(&[ids, mask]), payload[..400].to_vec(), "input `attention_mask`: bytes 256..512 run past the payload of 400 bytes"),
                (with(&[entry(&|e| e.offset = u64::MAX - 63), mask]), payload.clone(), "run past the payload of 512 bytes"),
                (with(&[entry(&|e| e.name_len = 200), mask]), payload.clone(), "name_len is 200"),
                (RequestHeaderV2 { count: 17, ..good }, payload.clone(), "the table has 17 entries; protocol v2 carries at most 16"),
                (good, vec![0; 5000], "the payload has 5000 bytes, above this server's limit of 4096 (--max-bytes)"),
                (RequestHeaderV2 { max_response_bytes: 100, ..good }, payload.clone(), "the response takes 8448 bytes (output__0: f32 [1, 32, 64], output__1: f32 [1, 64]), more than the 100 the request allows"),
            ];
            let valid = c.send_raw(good, &payload).unwrap();
            assert_expected("encoder", &valid);
            for (h, p, want) in &cases {
                match c.send_raw(*h, p) {
                    Err(Error::Remote { status: "bad request", message }) => assert!(message.contains(want), "{want:?} not in {message:?}"),
                    other => panic!("expected a bad request mentioning {want:?}, got {other:?}"),
                }
                // The next request, and another client's, are still served.
                assert_expected("encoder", &c.send_raw(good, &payload).unwrap());
                assert_expected("encoder", &bystander.send_raw(good, &payload).unwrap());
            }
            let st = server.stats();
            assert_eq!(st.bad_requests.load(Relaxed), cases.len() as u64);
            assert_eq!(st.served.load(Relaxed), 1 + 2 * cases.len() as u64, "the first valid request, two per case (describes are not counted)");
            // A describe request is answered by the signature.
            let d = c.describe().unwrap();
            assert_eq!((d.inputs.len(), d.outputs.len(), d.max_bytes, d.ranges[0]), (2, 2, 4096, Some((0, 1000))));
            // Client-side mistakes never leave the process.
            let ids = vec![0i64; 10];
            assert!(matches!(NamedTensor::new("input_ids", &[1, 32], &ids), Err(Error::Argument(m)) if m.contains("80 bytes for i64 [1, 32], which takes 256")));
            let long = "n".repeat(65);
            assert!(matches!(c.infer_tensors(&[NamedTensor::new(&long, &[1, 10], &ids).unwrap()]), Err(Error::Argument(m)) if m.contains("at most 64")));
            assert_eq!(st.bad_requests.load(Relaxed), cases.len() as u64);
        },
    );
}

/// A minimal protocol v1 client (the `uminfer::ipc::Client` of uminfer
/// 0.1.0, which this release replaced with protocol v2): one request, the
/// response's header and payload.
fn v1_request(name: &str, header: RequestHeaderV1, payload: &[f32]) -> (ResponseHeaderV1, Vec<f32>) {
    use iceoryx2::prelude::AllocationStrategy;
    use uminfer::ipc::service;
    let names = service::names(name).unwrap();
    let node = service::node(&unique("v1-client")).unwrap();
    let svc = service::service_v1(&node, &names, false).expect("the v1 service of a v2 server");
    let port = svc.client_builder().initial_max_slice_len(1).allocation_strategy(AllocationStrategy::PowerOfTwo).create().unwrap();
    let notifier = service::request_events(&node, &names).unwrap().notifier_builder().create().unwrap();
    let mut req = port.loan_slice_uninit(payload.len()).unwrap();
    *req.user_header_mut() = header;
    let pending = req.write_from_slice(payload).send().unwrap();
    notifier.notify().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = pending.receive().unwrap() {
            return (*r.user_header(), r.payload().to_vec());
        }
        assert!(Instant::now() < deadline, "no v1 response within 30 s");
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Protocol v1 clients are served as before for one float32 tensor each
/// way, with v1's validation, and refused with a message naming protocol v2
/// for any other model.
#[test]
fn a_v1_client_is_served_for_one_float32_tensor_and_told_to_use_v2_otherwise() {
    with_server("tiny.pt", |name, server| {
        let input = npy("tiny.input.npy");
        let (h, y) = v1_request(name, RequestHeaderV1::new(1, &SHAPE).unwrap(), &input);
        assert_eq!((h.status, h.version, h.shape()), (0, 1, vec![1, 10]));
        assert!(common::max_abs_diff(&y, &npy("tiny.expected.npy")) <= 1e-5);
        let good = RequestHeaderV1::new(2, &SHAPE).unwrap();
        let cases: Vec<(RequestHeaderV1, usize, &str)> = vec![
            (RequestHeaderV1 { magic: 0xDEAD_BEEF, ..good }, N, "magic"),
            (RequestHeaderV1 { version: 2, ..good }, N, "protocol version 2 is not supported on this service"),
            (RequestHeaderV1 { dtype: 9, ..good }, N, "dtype code 9"),
            (RequestHeaderV1 { rank: 0, ..good }, N, "rank 0"),
            (RequestHeaderV1 { rank: 9, ..good }, N, "rank 9"),
            (RequestHeaderV1 { shape: [u64::MAX, u64::MAX, 2, 2, 0, 0, 0, 0], ..good }, N, "overflows"),
            (RequestHeaderV1 { shape: [1, 3, 128, 0, 0, 0, 0, 0], ..good }, N, "zero dimension"),
            (good, N - 1, "payload holds"),
            (RequestHeaderV1::new(3, &[1, 3, 64, 64]).unwrap(), 3 * 64 * 64, "does not match the model's input shape [1, 3, 128, 128]"),
        ];
        for (h, len, want) in &cases {
            let (r, _) = v1_request(name, *h, &input[..*len]);
            assert_eq!(r.status, 1, "{want}");
            assert!(r.error_text().contains(want), "{want:?} not in {:?}", r.error_text());
        }
        assert_eq!(server.stats().bad_requests.load(Relaxed), cases.len() as u64);
    });
    with_server("encoder.pt", |name, _| {
        let (h, y) = v1_request(name, RequestHeaderV1::new(1, &[1, 32]).unwrap(), &[0.0; 32]);
        let text = h.error_text();
        assert_eq!((h.status, y.len()), (1, 0), "{text}");
        assert!(text.starts_with(&format!("this model needs protocol v2 (uminfer/{name}/v2): use uminfer_client >= 0.2.0 (Python) or uminfer::ipc::Client / `uminfer infer` of this server's release (uminfer ")), "{text}");
        assert!(text.contains("Protocol v1 carries one float32 tensor each way"), "{text}");
        // The v2 service answers meanwhile.
        let mut c = connect(name);
        let ins = inputs_for(&c, "encoder");
        assert_expected("encoder", &c.infer_tensors(&ins.iter().map(|t| NamedTensor::of(t).unwrap()).collect::<Vec<_>>()).unwrap());
    });
}

/// Random inputs of `samples` samples for a batching server's `client`
/// (seeded by `seed`), in the model's order.
fn batch_inputs(client: &Client, samples: usize, seed: u64) -> Vec<HostTensor> {
    client
        .inputs()
        .iter()
        .zip(client.input_ranges())
        .enumerate()
        .map(|(i, (t, &range))| {
            let mut shape = t.shape.clone();
            shape[0] = samples as i64;
            let mut bytes = vec![0u8; uminfer::host_tensor::numel(&shape).unwrap() * t.dtype.size()];
            uminfer::host_tensor::fill_random(t.dtype, range, seed * 31 + i as u64, &mut bytes);
            HostTensor::new(&t.name, t.dtype, &shape, bytes).unwrap()
        })
        .collect()
}

/// Sample `k` of `t` (its first dimension).
fn sample(t: &HostTensor, k: usize) -> HostTensor {
    let n = t.shape[0] as usize;
    let per = t.bytes().len() / n;
    let mut shape = t.shape.clone();
    shape[0] = 1;
    HostTensor::new(&t.name, t.dtype, &shape, t.bytes()[k * per..(k + 1) * per].to_vec()).unwrap()
}

/// A batching server (`--max-batch 4`): 6 client threads × 10 requests of
/// 1 to 3 samples, each with its own random inputs, get their own outputs
/// (every row within 1e-4 of the model's batch-1 result), batches of
/// several samples form, the describe response shows the batch as -1, and
/// requests over the batch or that disagree on it are refused.
#[test]
fn a_batching_server_answers_each_client_with_its_own_rows() {
    const THREADS: usize = 6;
    const REQUESTS: usize = 10;
    let rt = runtime();
    for model in ["tiny.pt", "encoder.pt"] {
        let batching = uminfer::batch::BatchSpec::new(4).max_queue_delay(Duration::from_millis(2));
        with_server_tuned(model, |o| o.batching = Some(batching), |name, server| {
            let mut c = connect(name);
            assert_eq!(c.max_batch(), Some(4), "{model}");
            assert!(c.inputs().iter().chain(c.outputs()).all(|t| t.shape[0] == -1), "{model}: {:?} {:?}", c.inputs(), c.outputs());
            let done: Vec<(Vec<HostTensor>, Vec<HostTensor>)> = std::thread::scope(|sc| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|t| {
                        sc.spawn(move || {
                            let mut c = connect(name);
                            (0..REQUESTS)
                                .map(|m| {
                                    let samples = 1 + (t + m) % 3;
                                    let ins = batch_inputs(&c, samples, (t * REQUESTS + m) as u64 + 1);
                                    let named: Vec<NamedTensor<'_>> = ins.iter().map(|x| NamedTensor::of(x).unwrap()).collect();
                                    let outs = c.infer_tensors(&named).unwrap_or_else(|e| panic!("{model}: thread {t}, request {m}: {e}"));
                                    assert!(outs.iter().all(|o| o.shape[0] == samples as i64), "{model}: {samples} samples, outputs {:?}", outs.iter().map(|o| &o.shape).collect::<Vec<_>>());
                                    (ins, outs)
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
            });
            let stats = server.batch_stats().expect("a batching server has batch statistics");
            let samples: usize = done.iter().map(|(ins, _)| ins[0].shape[0] as usize).sum();
            assert_eq!((stats.requests as usize, stats.samples as usize, stats.refused), (THREADS * REQUESTS, samples, 0), "{model}: {stats:?}");
            assert!(stats.mean_batch > 1.0, "{model}: no batch of several samples formed under load: {stats:?}");
            eprintln!("{model} over shared memory: {stats}");
            // A client reads the same counters from a describe.
            let counts = c.describe().unwrap().batch_counts.expect("a batching server's describe has batch_counts");
            assert_eq!(counts, uminfer::ipc::BatchCounts::of(&stats), "{model}");
            // Every row is its own request's: the model's batch-1 result for that sample.
            let m = rt.model(common::model_path(model)).unwrap();
            let mut reference = rt.session(&m, uminfer::SessionSpec::new()).unwrap();
            for (r, (ins, outs)) in done.iter().enumerate() {
                for k in 0..ins[0].shape[0] as usize {
                    for x in ins {
                        reference.write_input(&sample(x, k)).unwrap();
                    }
                    reference.run().unwrap();
                    for (i, o) in outs.iter().enumerate() {
                        sample(o, k).check_close(&reference.read_output(i).unwrap(), 1e-4).unwrap_or_else(|e| panic!("{model}: request {r}, sample {k}: {e}"));
                    }
                }
            }
            // Over the batch, and inputs that disagree on it: refused, the server serving on.
            let five = batch_inputs(&c, 5, 99);
            let err = c.infer_tensors(&five.iter().map(|x| NamedTensor::of(x).unwrap()).collect::<Vec<_>>()).unwrap_err().to_string();
            assert!(err.contains("5 samples given; this server takes 1 to 4 per request"), "{err}");
            if model == "encoder.pt" {
                let (two, three) = (batch_inputs(&c, 2, 7), batch_inputs(&c, 3, 8));
                let mixed = [NamedTensor::of(&two[0]).unwrap(), NamedTensor::of(&three[1]).unwrap()];
                let err = c.infer_tensors(&mixed).unwrap_err().to_string();
                assert!(err.contains("the inputs disagree on the samples"), "{err}");
            } else {
                let (h, y) = v1_request(name, RequestHeaderV1::new(1, &SHAPE).unwrap(), &npy("tiny.input.npy"));
                assert_eq!((h.status, h.shape()), (0, vec![1, 10]), "{}", h.error_text());
                assert!(common::max_abs_diff(&y, &npy("tiny.expected.npy")) <= 1e-4);
            }
            let one = batch_inputs(&c, 1, 5);
            assert_eq!(c.infer_tensors(&one.iter().map(|x| NamedTensor::of(x).unwrap()).collect::<Vec<_>>()).unwrap()[0].shape[0], 1);
        });
    }
}

/// A batching server refuses a request that waited past the queue timeout
/// with status busy, and serves the others.
#[test]
fn a_batching_server_answers_busy_past_the_queue_timeout() {
    // resnet18's pass on the CPU takes well over the 2 ms timeout: of
    // requests sent at once to one bucket of 1, those behind the first wait it out.
    let batching = uminfer::batch::BatchSpec::new(1).timeout(Some(Duration::from_millis(2)));
    with_server_tuned("resnet18.pt", |o| o.batching = Some(batching), |name, server| {
        let input = npy("resnet18.input.npy");
        let results: Vec<uminfer::Result<Vec<HostTensor>>> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let input = &input;
                    sc.spawn(move || {
                        let mut c = connect(name);
                        (0..3).map(|_| c.infer_tensors(&[NamedTensor::new("", &SHAPE, input).unwrap()])).collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let busy = results.iter().filter(|r| matches!(r, Err(Error::Remote { status: "busy", message }) if message.contains("waited"))).count();
        let served = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(busy + served, results.len(), "every request is served or busy: {:?}", results.iter().filter_map(|r| r.as_ref().err()).collect::<Vec<_>>());
        assert!(busy >= 1 && served >= 1, "{busy} busy, {served} served");
        assert_eq!(server.stats().busy.load(Relaxed), busy as u64);
        for r in results.iter().flatten() {
            assert!(common::max_abs_diff(&r[0].to_vec::<f32>().unwrap(), &npy("resnet18.expected.npy")) <= 1e-3);
        }
    });
}

/// A v2 client that finds only a protocol v1 server says so.
#[test]
fn a_v2_client_of_a_v1_only_server_says_the_server_is_too_old() {
    use uminfer::ipc::service;
    let name = unique("v1-only");
    let names = service::names(&name).unwrap();
    let node = service::node(&unique("old-server")).unwrap();
    let svc = service::service_v1(&node, &names, true).unwrap();
    let _port = svc.server_builder().create().unwrap();
    let err = Client::connect(&name, Duration::from_millis(300)).err().expect("no v2 service");
    assert!(matches!(&err, Error::ServerGone(m) if m.contains("served with protocol v1 only")), "{err}");
}

#[test]
fn a_second_live_server_is_refused() {
    with_server("tiny.pt", |name, _| {
        let err = Server::new(&runtime(), ServeOptions::new(name, common::model_path("tiny.pt"))).err().expect("second server must be refused");
        assert!(err.to_string().contains("already serves"), "{err}");
    });
}

#[test]
fn no_server_is_server_gone_within_the_timeout() {
    let t = Instant::now();
    let err = Client::connect(&unique("nobody"), Duration::from_millis(500)).err().unwrap();
    assert!(matches!(err, Error::ServerGone(_)), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

fn tiny_request(c: &mut Client, input: &[f32]) -> uminfer::Result<Vec<HostTensor>> {
    c.infer_tensors(&[NamedTensor::new("x", &SHAPE, input).unwrap()])
}

#[test]
fn killed_server_is_noticed_and_a_restarted_one_serves_again() {
    let name = unique("restart");
    let input = npy("tiny.input.npy");
    let mut server = ServerProcess::start(&name, "tiny.pt", &[]);
    let mut c = Client::connect(&name, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    tiny_request(&mut c, &input).unwrap();
    server.signal(libc::SIGKILL);
    let _ = server.child.wait();
    let t = Instant::now();
    let err = tiny_request(&mut c, &input).expect_err("a dead server cannot answer");
    assert!(matches!(err, Error::ServerGone(_)), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "noticed only after {:?}", t.elapsed());
    // A new server on the same name, without manual cleanup, serves the same client.
    let server2 = ServerProcess::start(&name, "tiny.pt", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tiny_request(&mut c, &input) {
            Ok(out) => {
                assert_eq!(out[0].shape, vec![1, 10]);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the restarted server never answered: {e}\n{}", server2.log()),
        }
    }
    server2.signal(libc::SIGTERM);
}

/// `uminfer infer` takes `--input NAME=FILE` / `.npz` as `uminfer run` does
/// and writes `.npy` or `.npz`.
#[test]
fn the_infer_command_sends_named_files_and_writes_every_output() {
    let name = unique("cli");
    let server = ServerProcess::start(&name, "encoder.pt", &[]);
    connect(&name);
    let dir = std::env::temp_dir().join(format!("uminfer-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let inputs = uminfer::host_tensor::read_npz(&common::model_path("encoder.inputs.npz")).unwrap();
    let mut named = Vec::new();
    for t in &inputs {
        let p = dir.join(format!("{}.npy", t.name));
        uminfer::host_tensor::write_npy(&p, t).unwrap();
        named.push(format!("--input={}={}", t.name, p.display()));
    }
    for args in [vec![format!("--input={}", common::model_path("encoder.inputs.npz").display())], named] {
        let out = dir.join("out.npz");
        let run = Command::new(common::uminfer_bin()).args(["infer", "--name", &name, "--output"]).arg(&out).args(&args).output().unwrap();
        assert!(run.status.success(), "{args:?}: {}\n{}", String::from_utf8_lossy(&run.stderr), server.log());
        assert_expected("encoder", &uminfer::host_tensor::read_npz(&out).unwrap());
    }
    let one = dir.join("one.npy");
    let run = Command::new(common::uminfer_bin()).args(["infer", "--name", &name, "--input"]).arg(common::model_path("encoder.inputs.npz")).arg("--output").arg(&one).output().unwrap();
    assert!(!run.status.success() && String::from_utf8_lossy(&run.stderr).contains("do not fit one .npy file"), "{}", String::from_utf8_lossy(&run.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

fn examples_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("UMINFER_EXAMPLES_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test binary> → target/<profile>/examples
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("examples")
}

fn load_client(name: &str, requests: usize, seed: u64, model: &str) -> Command {
    let mut cmd = Command::new(examples_dir().join("ipc_load"));
    cmd.args([name, &requests.to_string(), &seed.to_string()]).arg(common::model_path(model)).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Three processes load the encoder endpoint (two workers); every answer is
/// checked against the process's own CPU run of its input.
#[test]
fn load_from_several_processes_loses_and_mixes_nothing() {
    let name = unique("load");
    let server = ServerProcess::start(&name, "encoder.pt", &["--workers", "2"]);
    connect(&name);
    let (k, m) = (3, 100);
    let children: Vec<Child> = (0..k).map(|i| load_client(&name, m, 1000 + i as u64, "encoder.pt").spawn().expect("ipc_load example (built by cargo test)")).collect();
    let mut total = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "client failed: {stdout}{}\nserver log:\n{}", String::from_utf8_lossy(&out.stderr), server.log());
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!((v["mismatches"].as_u64(), v["errors"].as_u64()), (Some(0), Some(0)), "{v}");
        assert_eq!(v["requests"], m);
        total += v["requests"].as_u64().unwrap();
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "load client: {stdout}");
    }
    assert_eq!(total, (k * m) as u64);
}

#[test]
fn a_client_killed_mid_stream_does_not_disturb_the_server() {
    let name = unique("killclient");
    let server = ServerProcess::start(&name, "identity.pt", &[]);
    connect(&name);
    let mut victim = load_client(&name, 1_000_000, 7, "identity.pt").spawn().unwrap();
    let victim_node = format!("uminfer-client-{}", victim.id());
    std::thread::sleep(Duration::from_millis(3000)); // well inside its request stream (after its reference runs)
    victim.kill().unwrap();
    let _ = victim.wait();
    let out = load_client(&name, 50, 8, "identity.pt").output().unwrap();
    assert!(out.status.success(), "{}{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr), server.log());
    // The server removes dead nodes' resources every second: the victim's are
    // gone after a few. (Only the victim's node is counted: other test
    // binaries running beside this one may leave dead nodes of their own.)
    std::thread::sleep(Duration::from_secs(3));
    use iceoryx2::node::NodeView as _;
    use iceoryx2::prelude::{CallbackProgression, Config, Node, NodeState};
    let mut dead = 0;
    Node::<uminfer::ipc::service::Ipc>::list(&Config::default(), |s| {
        if let NodeState::Dead(n) = &s {
            if n.details().as_ref().is_some_and(|d| d.name().as_str() == victim_node) {
                dead += 1;
            }
        }
        CallbackProgression::Continue
    })
    .unwrap();
    assert_eq!(dead, 0, "the killed client's node ({victim_node}) was left behind dead");
}

/// The `/dev/shm` files process `pid` maps with permissions `perms` (`rw-s`, `r--s`).
fn shm_mapped(pid: u32, perms: &str) -> std::collections::BTreeSet<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6 && f[1] == perms && f[5].starts_with("/dev/shm/")).then(|| f[5].to_string())
        })
        .collect()
}

/// A client that truncates its own iceoryx2 data segment while its request
/// is pending (the server stopped between the client's send and its
/// receive, so that the truncation lands exactly there) does not kill the
/// server with SIGBUS: its request is dropped or refused, and the server
/// goes on serving other clients.
#[test]
fn a_client_truncating_its_data_segment_under_a_request_does_not_kill_the_server() {
    let name = unique("truncseg");
    let mut server = ServerProcess::start(&name, "tiny.pt", &[]);
    connect(&name);
    let mut victim = load_client(&name, 1_000_000, 7, "tiny.pt").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(3000)); // well inside its request stream (after its reference runs)
    // The victim's data segment: mapped read-write by the victim, read-only by the server.
    let read_only = shm_mapped(server.child.id(), "r--s");
    let segments: Vec<String> = shm_mapped(victim.id(), "rw-s").into_iter().filter(|f| f.ends_with(".data") && !f.ends_with("mgmt.data") && read_only.contains(f)).collect();
    assert!(!segments.is_empty(), "no data segment of the victim found in its maps:\n{}", std::fs::read_to_string(format!("/proc/{}/maps", victim.id())).unwrap_or_default());
    server.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(300)); // the victim sends its next request and waits
    for f in &segments {
        std::fs::OpenOptions::new().write(true).open(f).and_then(|f| f.set_len(0)).unwrap_or_else(|e| panic!("truncating {f}: {e}"));
    }
    server.signal(libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = victim.kill();
    let _ = victim.wait();
    if let Ok(Some(status)) = server.child.try_wait() {
        panic!("the server died ({status}) when a client truncated its data segment ({segments:?}):\n{}", server.log());
    }
    let out = load_client(&name, 50, 8, "tiny.pt").output().unwrap();
    assert!(out.status.success(), "another client after the truncation: {}{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr), server.log());
    assert!(matches!(server.child.try_wait(), Ok(None)), "the server died:\n{}", server.log());
}

#[test]
fn idle_server_uses_no_cpu() {
    let name = unique("idle");
    let server = ServerProcess::start(&name, "tiny.pt", &[]);
    tiny_request(&mut connect(&name), &npy("tiny.input.npy")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before = server.cpu_seconds();
    std::thread::sleep(Duration::from_secs(10));
    let used = server.cpu_seconds() - before;
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "idle server used {:.3} s of CPU in 10 s", used);
    assert!(used < 0.1, "idle server used {used:.3} s of CPU in 10 s (limit 1%)");
}

#[test]
fn another_user_cannot_connect() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED: dropping privileges to another uid needs root");
        return;
    }
    with_server("tiny.pt", |name, _| {
        // SAFETY: fork in a test binary; the child only drops privileges,
        // tries to connect and leaves with _exit (no unwinding, no destructors).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: setgid/setuid to nobody (65534), then a connect attempt; _exit always.
            unsafe {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    libc::_exit(3);
                }
            }
            let code = match Client::connect(name, Duration::from_secs(2)) {
                Ok(_) => 0,
                Err(_) => 1,
            };
            // SAFETY: leaves the child immediately.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child did not exit normally");
        assert_eq!(libc::WEXITSTATUS(status), 1, "a process of another uid connected (0) or could not drop privileges (3)");
        // The owner still can.
        connect(name);
    });
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use uminfer::ipc::header::{validate_request_v1, MAX_RANK, PROTOCOL_V1};
    use uminfer::ipc::table::{Signature, KIND_INFER, PROTOCOL_V2};
    use uminfer::model::TensorInfo;

    fn independent_v1_verdict(h: &RequestHeaderV1, payload: usize, model: &[i64], max: usize) -> bool {
        if h.magic != MAGIC || h.version != PROTOCOL_V1 || h.dtype != 1 || h.rank == 0 || h.rank as usize > MAX_RANK {
            return false;
        }
        // docs/ipc.md: the entries past `rank` are 0.
        if h.shape[h.rank as usize..].iter().any(|&d| d != 0) {
            return false;
        }
        let dims = &h.shape[..h.rank as usize];
        let product = dims.iter().try_fold(1u128, |a, &d| if d == 0 { None } else { a.checked_mul(d as u128) });
        match product {
            Some(p) => p <= max as u128 && p == payload as u128 && dims.len() == model.len() && dims.iter().zip(model).all(|(&a, &b)| a as i64 == b),
            None => false,
        }
    }

    fn header_v1() -> impl Strategy<Value = RequestHeaderV1> {
        let dim = prop_oneof![Just(0u64), 1u64..4, Just(128u64), Just(3u64), any::<u64>()];
        // The model's shape, now and then with garbage past rank 4 (position, value).
        let model_shape = prop_oneof![3 => Just(None), 1 => (4usize..MAX_RANK, 1u64..u64::MAX).prop_map(Some)].prop_map(|tail| {
            let mut s = [1u64, 3, 128, 128, 0, 0, 0, 0];
            if let Some((at, d)) = tail {
                s[at] = d;
            }
            s
        });
        (
            prop_oneof![Just(MAGIC), any::<u32>()],
            prop_oneof![Just(1u16), any::<u16>()],
            prop_oneof![Just(1u8), any::<u8>()],
            prop_oneof![Just(4u8), any::<u8>()],
            prop_oneof![model_shape, proptest::array::uniform8(dim)],
        )
            .prop_map(|(magic, version, dtype, rank, shape)| RequestHeaderV1 { magic, version, dtype, rank, request_id: 0, shape })
    }

    /// The fuzzed v2 model: two int64 `[1, 4]` inputs (32 bytes each), one f32 `[2]` output.
    const NAMES: [&str; 2] = ["a", "b"];
    const MAX_BYTES: usize = 512;

    fn signature() -> Signature {
        let inputs: Vec<TensorInfo> = NAMES.iter().map(|n| TensorInfo { name: n.to_string(), dtype: DType::I64, shape: vec![1, 4] }).collect();
        Signature::new(&inputs, &[TensorInfo { name: "y".into(), dtype: DType::F32, shape: vec![2] }], MAX_BYTES).unwrap()
    }

    fn independent_v2_verdict(h: &RequestHeaderV2, payload: usize) -> bool {
        if h.magic != MAGIC || h.version != PROTOCOL_V2 || h.kind != KIND_INFER || payload > MAX_BYTES || h.count as usize > MAX_TENSORS {
            return false;
        }
        let entries = &h.tensors[..h.count as usize];
        let mut spans: Vec<(u128, u128)> = Vec::new();
        let mut names: Vec<&[u8]> = Vec::new();
        for e in entries {
            if e.name_len as usize > 64 {
                return false;
            }
            let name = &e.name[..e.name_len as usize];
            if !NAMES.iter().any(|n| n.as_bytes() == name) || names.contains(&name) {
                return false;
            }
            names.push(name);
            let (start, end) = (e.offset as u128, e.offset as u128 + e.len as u128);
            // docs/ipc.md: the shape's entries past `rank` are 0.
            if e.dtype != 5 || e.rank != 2 || e.shape[..2] != [1, 4] || e.shape[2..].iter().any(|&d| d != 0) || e.len != 32 || e.offset % 64 != 0 || end > payload as u128 {
                return false;
            }
            if spans.iter().any(|&(s, t)| start < t && s < end) {
                return false;
            }
            spans.push((start, end));
        }
        names.len() == NAMES.len() && (h.max_response_bytes == 0 || h.max_response_bytes >= 8)
    }

    /// Entries mostly right in each field (so that whole tables are often
    /// valid), else anything.
    fn entry_v2() -> impl Strategy<Value = TensorEntry> {
        (
            prop_oneof![15 => Just("a"), 15 => Just("b"), 1 => Just("c"), 1 => Just("")],
            prop_oneof![30 => Just(None), 1 => Just(Some(200u8)), 1 => any::<u8>().prop_map(Some)],
            prop_oneof![30 => Just(5u8), 1 => Just(6u8), 1 => any::<u8>()],
            prop_oneof![30 => Just(2u8), 1 => any::<u8>()],
            prop_oneof![30 => Just([1u64, 4]), 1 => Just([1u64, 8]), 1 => any::<[u64; 2]>()],
            prop_oneof![3 => Just(0u64), 3 => Just(64u64), 3 => Just(128u64), 1 => Just(32u64), 1 => Just(u64::MAX - 63), 1 => any::<u64>()],
            prop_oneof![30 => Just(32u64), 1 => Just(64u64), 1 => any::<u64>()],
            // Garbage past the rank, now and then: (position among the 6 unused entries, value).
            prop_oneof![30 => Just(None), 1 => (2usize..MAX_RANK, 1u64..u64::MAX).prop_map(Some)],
        )
            .prop_map(|(name, name_len, dtype, rank, dims, offset, len, tail)| {
                let mut e = TensorEntry::new(name, DType::I64, &[1, 4], 0).unwrap();
                if let Some(n) = name_len {
                    e.name_len = n;
                }
                e.dtype = dtype;
                e.rank = rank;
                e.shape[..2].copy_from_slice(&dims);
                e.offset = offset;
                e.len = len;
                if let Some((at, d)) = tail {
                    e.shape[at] = d;
                }
                e
            })
    }

    fn header_v2() -> impl Strategy<Value = RequestHeaderV2> {
        (
            prop_oneof![30 => Just(MAGIC), 1 => any::<u32>()],
            prop_oneof![30 => Just(2u16), 1 => any::<u16>()],
            prop_oneof![30 => Just(0u8), 1 => any::<u8>()],
            prop_oneof![30 => Just(2u8), 2 => 0u8..4, 1 => any::<u8>()],
            prop_oneof![30 => Just(0u64), 1 => Just(7u64), 1 => Just(8u64), 1 => any::<u64>()],
            proptest::collection::vec(entry_v2(), 3),
        )
            .prop_map(|(magic, version, kind, count, max_response_bytes, es)| {
                let mut h = RequestHeaderV2 { magic, version, kind, count, max_response_bytes, ..RequestHeaderV2::default() };
                h.tensors[..3].copy_from_slice(&es);
                h
            })
    }

    /// A runner of `cases`, seeded alike on every run (a failure reproduces).
    fn runner(cases: u32) -> proptest::test_runner::TestRunner {
        let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
        let rng = proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm);
        proptest::test_runner::TestRunner::new_with_rng(config, rng)
    }

    /// `cases` v2 tables: the validation never panics and accepts exactly
    /// the consistent ones, and both verdicts occur, each in over 5 % of the
    /// cases (the strategy is biased towards valid fields).
    fn v2_property(cases: u32) {
        let sig = signature();
        let accepted = std::cell::Cell::new(0u32);
        let payloads = prop_oneof![1 => Just(96usize), 1 => Just(160usize), 1 => Just(192usize), 4 => Just(512usize), 1 => 0usize..1024];
        runner(cases)
            .run(&(header_v2(), payloads), |(h, payload)| {
                let got = sig.check_request(&h, payload);
                prop_assert_eq!(got.is_ok(), independent_v2_verdict(&h, payload), "{:?} payload {} → {:?}", h.entries(), payload, got);
                if let Ok(p) = got {
                    accepted.set(accepted.get() + 1);
                    // Each input's span is its own entry's.
                    for (i, n) in NAMES.iter().enumerate() {
                        let e = h.entries().iter().find(|e| e.name_bytes() == n.as_bytes()).unwrap();
                        prop_assert_eq!(p.spans[i], (e.offset as usize, e.len as usize));
                    }
                }
                Ok(())
            })
            .unwrap();
        assert!((cases / 20..cases - cases / 20).contains(&accepted.get()), "{} of {cases} tables accepted", accepted.get());
    }

    /// `cases` v1 headers: the validation never panics and agrees with the
    /// independent verdict.
    fn v1_property(cases: u32) {
        let model = [1i64, 3, 128, 128];
        let max = 1 << 24;
        runner(cases)
            .run(&(header_v1(), prop_oneof![Just(N), 0usize..100_000]), |(h, payload)| {
                let got = validate_request_v1(&h, payload, &model, max);
                prop_assert_eq!(got.is_ok(), independent_v1_verdict(&h, payload, &model, max), "{:?} payload {} → {:?}", h, payload, got);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn v2_validation_never_panics_and_accepts_exactly_the_consistent_tables() {
        v2_property(20_000);
    }

    #[test]
    fn v1_validation_never_panics_and_accepts_exactly_the_consistent_requests() {
        v1_property(4_000);
    }

    /// The long run: 1 000 000 cases of each decoder.
    #[test]
    #[ignore = "a long run: cargo test --release --test ipc -- --ignored fuzz::"]
    fn a_million_cases_of_each_decoder() {
        use std::io::Write as _;
        for (decoder, property) in [("v2 table (Signature::check_request)", v2_property as fn(u32)), ("v1 header (validate_request_v1)", v1_property)] {
            let start = Instant::now();
            property(1_000_000);
            // Written to the stderr handle directly: libtest captures eprintln!.
            let _ = writeln!(std::io::stderr(), "{decoder}: 1000000 cases, no panic, no wrong verdict, {:.1} s", start.elapsed().as_secs_f64());
        }
    }
}

/// The automatic choice follows the forward time the server measured and
/// logged: every core (shared-memory clients give their core away while they
/// poll) unless the pass is under `PARALLEL_WORTHWHILE`, shared by the
/// workers that run at once; `--intra-op-threads` overrides it.
#[test]
fn serve_uses_every_core_shared_by_its_workers_unless_told_otherwise() {
    for extra in [&[][..], &["--workers", "2"][..], &["--intra-op-threads", "3"][..]] {
        let name = unique("threads");
        let server = ServerProcess::start(&name, "tiny.pt", extra);
        let out = tiny_request(&mut connect(&name), &npy("tiny.input.npy")).unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
        assert!(common::max_abs_diff(&out[0].to_vec::<f32>().unwrap(), &npy("tiny.expected.npy")) <= 1e-5);
        let log = server.log();
        let automatic = !extra.contains(&"--intra-op-threads");
        let want = if automatic {
            let us = common::logged_us(&log, "a forward pass takes ");
            let rule = if us < uminfer::intra_op::PARALLEL_WORTHWHILE.as_secs_f64() * 1e6 { uminfer::intra_op::fewer_cores() } else { uminfer::intra_op::cores() };
            assert_eq!(uminfer::intra_op::for_shm_clients(std::time::Duration::from_secs_f64(us / 1e6)), rule, "a forward pass of {us} µs");
            let workers = if extra.contains(&"--workers") { 2 } else { 1 };
            assert!(log.contains(&format!("a core is left to the shared-memory clients, otherwise every core; shared by {workers} session(s)")), "{extra:?}:\n{log}");
            uminfer::intra_op::shared_by(rule, workers)
        } else {
            3
        };
        let said = log.split("libtorch intra-op threads: ").nth(1).and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<usize>().ok());
        assert_eq!(said, Some(want), "{extra:?}: the log does not say {want} intra-op threads:\n{log}");
        // Its one line on stdout, once the service exists (what `uminfer bench` waits for).
        assert_eq!(server.stdout(), format!("ipc=uminfer/{name}\n"));
        server.signal(libc::SIGTERM);
    }
}

/// `--input-spec` declares the inputs of a model that records nothing
/// (here: declares again what the encoder records, and a one-input model's
/// other shape), and requests must match the declaration.
#[test]
fn serve_takes_input_declarations() {
    let name = unique("spec");
    let server = ServerProcess::start(&name, "identity.pt", &["--input-spec", "x=f32:1,3,2,2"]);
    let mut c = Client::connect(&name, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!(c.inputs()[0].shape, vec![1, 3, 2, 2]);
    let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let y = c.infer_tensors(&[NamedTensor::new("x", &[1, 3, 2, 2], &x).unwrap()]).unwrap();
    assert_eq!(y[0].to_vec::<f32>().unwrap(), x);
    let err = c.infer_tensors(&[NamedTensor::new("x", &[1, 12], &x).unwrap()]).unwrap_err();
    assert!(err.to_string().contains("input `x` is f32 [1, 3, 2, 2]; shape [1, 12] given"), "{err}");
    let name2 = unique("spec");
    let server2 = ServerProcess::start(&name2, "identity.pt", &["--input-shape", "1,3,4,4"]);
    let c2 = Client::connect(&name2, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", server2.log()));
    assert_eq!((c2.inputs()[0].dtype, c2.inputs()[0].shape.as_slice()), (DType::F32, &[1, 3, 4, 4][..]));
}
