//! Dynamic batching ([`Batcher`]): K threads × M requests of 1 to 3 samples
//! with distinct random inputs through one batcher, every output equal to
//! the model's own batch-1 output for that request's samples (none lost,
//! duplicated or swapped, padding never copied out), batches that really
//! form under load; a request that fills part of a bucket; queue-full and
//! timeout refusals; closing with requests queued (each answered, none
//! hanging); every bad request a typed error; on a GPU, graph buckets that
//! share one memory pool. One test body per mode: the CPU everywhere, the
//! GPU modes skip with a reason without a GPU and fail under
//! `UMINFER_REQUIRE_GPU=1`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};
use uminfer::batch::{BatchSpec, Batcher};
use uminfer::doctor::{self, probe::ProbeOptions};
use uminfer::host_tensor::{fill_random, max_rel_err, HostTensor};
use uminfer::session::{TensorMut, TensorRef};
use uminfer::{Error, Mode, Runtime, SessionSpec};

fn runtime() -> Runtime {
    Runtime::from_report(doctor::diagnose(ProbeOptions { smoke_tests: false }))
}

/// Bytes aligned to 8 (every dtype's element size divides it).
struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        Self { words: vec![0; len.div_ceil(8)], len }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the words hold at least `len` initialised bytes; u8 has no alignment.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), self.len) }
    }
}

/// One request: its samples' inputs (random, seeded by `seed`) and room for its outputs.
struct Request {
    samples: usize,
    inputs: Vec<Aligned>,
    outputs: Vec<Aligned>,
}

impl Request {
    fn new(b: &Batcher, ranges: &[Option<(i64, i64)>], samples: usize, seed: u64) -> Self {
        let inputs = b
            .inputs()
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut a = Aligned::new(t.byte_len() * samples);
                fill_random(t.dtype, ranges[i], seed * 31 + i as u64, a.bytes_mut());
                a
            })
            .collect();
        // Poisoned: 0xff bytes are NaN for floats, so an unwritten row fails the comparison.
        let outputs = b
            .outputs()
            .iter()
            .map(|t| {
                let mut a = Aligned::new(t.byte_len() * samples);
                a.bytes_mut().fill(0xff);
                a
            })
            .collect();
        Self { samples, inputs, outputs }
    }

    fn run(&mut self, b: &Batcher) -> uminfer::Result<uminfer::batch::BatchedRun> {
        let ins: Vec<TensorRef<'_>> = self.inputs.iter().zip(b.inputs()).map(|(a, t)| TensorRef::from_bytes(t.dtype, a.bytes()).unwrap()).collect();
        let mut outs: Vec<TensorMut<'_>> = self
            .outputs
            .iter_mut()
            .zip(b.outputs())
            .map(|(a, t)| {
                let bytes = a.bytes_mut();
                // SAFETY: initialised bytes viewed as bytes that may be uninitialised, to be overwritten.
                let bytes = unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast(), bytes.len()) };
                TensorMut::from_bytes(t.dtype, bytes).unwrap()
            })
            .collect();
        b.run(&ins, &mut outs)
    }
}

/// The model's own batch-1 session in `mode`: each sample of `r` run alone,
/// every output row of `r` within `tol` (relative) of it.
fn check_against_batch_1(reference: &mut uminfer::Session, b: &Batcher, r: &Request, tol: f64, what: &str) {
    for k in 0..r.samples {
        for (i, t) in b.inputs().iter().enumerate() {
            let per = t.byte_len();
            let x = HostTensor::new(&t.name, t.dtype, &t.shape, r.inputs[i].bytes()[k * per..(k + 1) * per].to_vec()).unwrap();
            reference.write_input(&x).unwrap();
        }
        reference.run().unwrap();
        for (i, t) in b.outputs().iter().enumerate() {
            let per = t.byte_len();
            let want = reference.read_output(i).unwrap();
            let got = HostTensor::new(&t.name, t.dtype, &t.shape, r.outputs[i].bytes()[k * per..(k + 1) * per].to_vec()).unwrap();
            let err = max_rel_err(&got.to_f64(), &want.to_f64());
            assert!(err <= tol, "{what}: sample {k} of {}, output `{}`: relative error {err:e} over {tol:e} against the batch-1 run", r.samples, t.name);
        }
    }
}

fn ranges(model: &uminfer::Model) -> Vec<Option<(i64, i64)>> {
    model.inputs().unwrap().iter().map(|m| m.range).collect()
}

fn tolerance(mode: Mode) -> f64 {
    if mode.needs_gpu() { 1e-3 } else { 1e-4 }
}

/// K threads × M requests through one batcher with a queue delay: every
/// answer is its own request's, batches of several samples form, and the
/// statistics add up.
fn many_threads_get_their_own_outputs(mode: Mode, name: &str) {
    const THREADS: usize = 6;
    const REQUESTS: usize = 15;
    let rt = runtime();
    let model = rt.model(common::model_path(name)).unwrap();
    let spec = SessionSpec::new().mode(mode).allow_eager_fallback(false);
    let batcher = Arc::new(rt.batcher(&model, spec.clone(), BatchSpec::new(8).max_queue_delay(Duration::from_millis(2))).unwrap());
    assert_eq!(batcher.buckets().iter().map(|b| b.size).collect::<Vec<_>>(), [1, 2, 4, 8]);
    assert!(batcher.buckets().iter().all(|b| b.region_bytes > 0));
    assert_eq!(batcher.mode(), mode);
    let ranges = ranges(&model);
    let done: Vec<Vec<Request>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (b, ranges) = (batcher.clone(), ranges.clone());
                s.spawn(move || {
                    (0..REQUESTS)
                        .map(|m| {
                            let mut r = Request::new(&b, &ranges, 1 + (t + m) % 3, (t * REQUESTS + m) as u64 + 1);
                            let ran = r.run(&b).unwrap_or_else(|e| panic!("{mode}: thread {t}, request {m}: {e}"));
                            assert_eq!(ran.samples, r.samples);
                            assert!(ran.batch >= ran.samples && ran.bucket >= ran.batch && ran.bucket <= 8, "{ran:?}");
                            r
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stats = batcher.stats();
    let samples: usize = done.iter().flatten().map(|r| r.samples).sum();
    assert_eq!(stats.requests as usize, THREADS * REQUESTS, "{stats:?}");
    assert_eq!(stats.samples as usize, samples, "{stats:?}");
    assert_eq!(stats.refused, 0);
    assert!(stats.mean_batch > 1.0, "{mode}: no batch of several samples formed under load: {stats:?}");
    assert_eq!(stats.batch_sizes.iter().map(|s| s.executions).sum::<u64>(), stats.batches);
    assert_eq!(stats.bucket_runs.iter().map(|(_, n)| n).sum::<u64>(), stats.batches);
    assert!(stats.queue.is_some());
    let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("{mode} {name}: {samples} samples in {} batches, mean {:.2}, padding {:.1}%\n", stats.batches, stats.mean_batch, stats.padding_share * 100.0));
    let mut reference = rt.session(&model, spec).unwrap();
    for (t, rs) in done.iter().enumerate() {
        for (m, r) in rs.iter().enumerate() {
            check_against_batch_1(&mut reference, &batcher, r, tolerance(mode), &format!("{mode} {name}: thread {t}, request {m}"));
        }
    }
}

/// A lone request of 3 samples runs at once in bucket 4: on a GPU padded
/// (one padding sample, never copied out), on the CPU over the bucket's
/// first 3 rows only (no padding); the next, of 1, in bucket 1.
fn a_partial_bucket_is_padded(mode: Mode) {
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let spec = SessionSpec::new().mode(mode);
    let b = rt.batcher(&model, spec.clone(), BatchSpec::new(4)).unwrap();
    assert_eq!(b.unpadded(), mode == Mode::Cpu, "{}", b.note());
    assert_eq!(b.note().contains("unpadded"), b.unpadded(), "{}", b.note());
    let computed = if b.unpadded() { 3 } else { 4 };
    let ranges = ranges(&model);
    let mut r = Request::new(&b, &ranges, 3, 7);
    let ran = r.run(&b).unwrap();
    assert_eq!((ran.samples, ran.batch, ran.bucket), (3, 3, computed), "{ran:?}");
    let mut one = Request::new(&b, &ranges, 1, 8);
    let ran = one.run(&b).unwrap();
    assert_eq!((ran.batch, ran.bucket), (1, 1), "{ran:?}");
    let stats = b.stats();
    assert_eq!((stats.batches, stats.samples, stats.padded), (2, 4, computed as u64 - 3), "{stats:?}");
    assert_eq!(stats.bucket_runs, [(1, 1), (2, 0), (4, 1)], "{stats:?}");
    let mut reference = rt.session(&model, spec).unwrap();
    check_against_batch_1(&mut reference, &b, &r, tolerance(mode), "3 samples in bucket 4");
    check_against_batch_1(&mut reference, &b, &one, tolerance(mode), "1 sample in bucket 1");
}

/// A CPU model that runs at its buckets' sizes only (`pow2_batch`: 3 × x,
/// raising unless the batch is a power of two) is found so at build, and
/// its batches are padded with zeros up to their bucket as on a GPU: a
/// request of 3 samples runs in bucket 4, its answer exactly 3 × its input,
/// its poisoned output fully written, the padding sample never copied out.
#[test]
fn a_cpu_model_of_fixed_batch_sizes_is_padded() {
    let rt = runtime();
    let model = rt.model(common::model_path("pow2_batch.pt")).unwrap();
    let b = rt.batcher(&model, SessionSpec::new().mode(Mode::Cpu), BatchSpec::new(4)).unwrap();
    assert!(!b.unpadded(), "{}", b.note());
    let mut r = Request::new(&b, &[None], 3, 9);
    let ran = r.run(&b).unwrap();
    assert_eq!((ran.samples, ran.batch, ran.bucket), (3, 3, 4), "{ran:?}");
    let x: Vec<f32> = r.inputs[0].bytes().chunks_exact(4).map(|c| f32::from_ne_bytes(c.try_into().unwrap())).collect();
    let y: Vec<f32> = r.outputs[0].bytes().chunks_exact(4).map(|c| f32::from_ne_bytes(c.try_into().unwrap())).collect();
    assert_eq!(y.len(), 3 * 4);
    assert!(x.iter().zip(&y).all(|(x, y)| *y == 3.0 * x), "{x:?} -> {y:?}");
    assert_eq!(b.stats().padded, 1, "{:?}", b.stats());
}

macro_rules! per_mode {
    ($($name:ident: $mode:expr, $gpu:expr;)*) => {$(
        mod $name {
            use super::*;
            #[test]
            fn many_threads_get_their_own_outputs_tiny() {
                if $gpu { require_gpu!(); }
                many_threads_get_their_own_outputs($mode, "tiny.pt");
            }
            #[test]
            fn many_threads_get_their_own_outputs_encoder() {
                if $gpu { require_gpu!(); }
                many_threads_get_their_own_outputs($mode, "encoder.pt");
            }
            #[test]
            fn a_partial_bucket_is_padded() {
                if $gpu { require_gpu!(); }
                super::a_partial_bucket_is_padded($mode);
            }
        }
    )*};
}

per_mode! {
    cpu: Mode::Cpu, false;
    gpu_pinned: Mode::GpuPinned, true;
    gpu_managed: Mode::GpuManaged, true;
    gpu_managed_graph: Mode::GpuManagedGraph, true;
}

/// GPU graph mode: a graph per bucket, all captured into one shared pool.
/// The shared batcher is built first, so the batcher with a pool per bucket
/// built after it can only gain from what libtorch has cached by then; still
/// its smaller buckets take more device memory than the shared batcher's.
/// Every bucket of both, run in turn, answers as the batch-1 session does.
#[test]
fn gpu_graph_buckets_share_one_pool() {
    require_gpu!();
    let rt = runtime();
    let model = rt.model(common::model_path("encoder.pt")).unwrap();
    let spec = SessionSpec::new().mode(Mode::GpuManagedGraph).allow_eager_fallback(false);
    let shared = rt.batcher(&model, spec.clone(), BatchSpec::new(8)).unwrap();
    let separate = rt.batcher(&model, spec.clone(), BatchSpec::new(8).share_graph_pool(false)).unwrap();
    for b in [&shared, &separate] {
        assert_eq!(b.buckets().iter().map(|k| k.size).collect::<Vec<_>>(), [1, 2, 4, 8]);
        assert!(b.buckets().iter().all(|k| k.note.contains("captured into a CUDA graph")), "{:?}", b.buckets());
    }
    // The buckets after the first (largest) one: what sharing saves.
    let smaller = |b: &Batcher| -> usize { b.buckets()[..b.buckets().len() - 1].iter().map(|k| k.device_bytes.expect("a GPU bucket's device memory")).sum() };
    let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("buckets 1, 2, 4 took {} bytes of device memory with one shared pool, {} with a pool each\n", smaller(&shared), smaller(&separate)));
    assert!(smaller(&shared) < smaller(&separate), "shared pool {:?} against a pool per bucket {:?}", shared.buckets(), separate.buckets());
    let ranges = ranges(&model);
    let mut reference = rt.session(&model, spec).unwrap();
    for (i, n) in [8, 1, 4, 2, 3, 8, 1].into_iter().enumerate() {
        for (what, b) in [("shared pool", &shared), ("a pool per bucket", &separate)] {
            let mut r = Request::new(b, &ranges, n, 100 + i as u64);
            let ran = r.run(b).unwrap();
            assert_eq!((ran.samples, ran.batch), (n, n), "{ran:?}");
            check_against_batch_1(&mut reference, b, &r, tolerance(Mode::GpuManagedGraph), &format!("{what}: {n} samples in bucket {}", ran.bucket));
        }
    }
}

fn tiny_batcher(batch: BatchSpec) -> (Batcher, Vec<Option<(i64, i64)>>) {
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    (rt.batcher(&model, SessionSpec::new(), batch).unwrap(), ranges(&model))
}

/// Waits until `b` holds `n` queued requests (at most 10 s).
fn wait_queued(b: &Batcher, n: usize) {
    let start = Instant::now();
    while b.queued() < n {
        assert!(start.elapsed() < Duration::from_secs(10), "{} of {n} requests queued after 10 s", b.queued());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// With a long queue delay two lone requests wait for company; a third
/// beyond `max_queue` 2 is refused at once, and the two are answered.
#[test]
fn a_full_queue_refuses_at_once() {
    let (b, ranges) = tiny_batcher(BatchSpec::new(8).max_queue(2).max_queue_delay(Duration::from_millis(400)));
    std::thread::scope(|s| {
        let waiting: Vec<_> = (0..2).map(|i| {
            let (b, ranges) = (&b, &ranges);
            s.spawn(move || Request::new(b, ranges, 1, i + 1).run(b))
        }).collect();
        wait_queued(&b, 2);
        let start = Instant::now();
        let e = Request::new(&b, &ranges, 1, 9).run(&b).unwrap_err();
        assert!(matches!(e, Error::QueueFull { queued: 2, max_queue: 2 }), "{e}");
        assert!(e.to_string().contains("max_queue 2") && e.to_string().contains("--max-queue"), "{e}");
        assert!(start.elapsed() < Duration::from_millis(200), "refused after {:?}", start.elapsed());
        for w in waiting {
            let ran = w.join().unwrap().unwrap();
            assert_eq!(ran.batch, 2, "the two queued requests run together: {ran:?}");
        }
    });
    assert_eq!((b.stats().requests, b.stats().refused), (2, 1));
}

/// A request still queued at its timeout is refused; once it has been
/// taken it is answered; the batcher serves on.
#[test]
fn a_request_past_its_queue_timeout_is_refused() {
    let (b, ranges) = tiny_batcher(BatchSpec::new(8).max_queue_delay(Duration::from_millis(600)).timeout(Some(Duration::from_millis(50))));
    let start = Instant::now();
    let e = Request::new(&b, &ranges, 1, 1).run(&b).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, Error::QueueTimeout(d) if d == Duration::from_millis(50)), "{e}");
    assert!(took >= Duration::from_millis(50) && took < Duration::from_millis(500), "refused after {took:?}");
    assert_eq!(b.queued(), 0, "the timed-out request left the queue");
    // Eight samples fill a batch: it runs at once, well within the timeout.
    let ran = Request::new(&b, &ranges, 8, 2).run(&b).unwrap();
    assert_eq!(ran.bucket, 8);
}

/// Closing with requests queued: each is answered (they run), a new one is
/// refused, and dropping the batcher ends its thread; nobody hangs.
#[test]
fn closing_answers_the_queued_and_refuses_new_requests() {
    let (b, ranges) = tiny_batcher(BatchSpec::new(8).max_queue_delay(Duration::from_millis(300)));
    let b = Arc::new(b);
    let waiting: Vec<_> = (0..3)
        .map(|i| {
            let (b, ranges) = (b.clone(), ranges.clone());
            std::thread::spawn(move || {
                let mut r = Request::new(&b, &ranges, 2, i + 1);
                r.run(&b).map(|ran| (ran, r))
            })
        })
        .collect();
    wait_queued(&b, 3);
    b.close();
    let e = Request::new(&b, &ranges, 1, 9).run(&b).unwrap_err();
    assert!(matches!(e, Error::BatcherClosed), "{e}");
    let deadline = Instant::now() + Duration::from_secs(20);
    for w in waiting {
        while !w.is_finished() {
            assert!(Instant::now() < deadline, "a queued request was not answered after closing");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (ran, _) = w.join().unwrap().unwrap();
        assert_eq!(ran.samples, 2);
    }
    let b = Arc::into_inner(b).expect("the only handle");
    drop(b);
}

/// Requests that do not fit are refused before queueing, with what was wrong.
#[test]
fn bad_requests_are_typed_errors() {
    let (b, ranges) = tiny_batcher(BatchSpec::new(4));
    let per = b.inputs()[0].byte_len();
    let mut out = vec![0f32; 10 * 9];
    let half = vec![0f32; per / 8];
    let e = b.run(&[TensorRef::new(&half)], &mut [TensorMut::new(&mut out[..10])]).unwrap_err();
    assert!(e.to_string().contains("not a whole number of samples"), "{e}");
    let nine = vec![0f32; per / 4 * 9];
    let e = b.run(&[TensorRef::new(&nine)], &mut [TensorMut::new(&mut out)]).unwrap_err();
    assert!(e.to_string().contains("9 samples, over max_batch 4"), "{e}");
    let two = vec![0f32; per / 4 * 2];
    let e = b.run(&[TensorRef::new(&two)], &mut [TensorMut::new(&mut out[..10])]).unwrap_err();
    assert!(e.to_string().contains("output `output__0` takes 80 bytes"), "{e}");
    let as_i32 = vec![0i32; per / 4];
    let e = b.run(&[TensorRef::new(&as_i32)], &mut [TensorMut::new(&mut out[..10])]).unwrap_err();
    assert!(matches!(e, Error::DType { .. }), "{e}");
    let e = b.run(&[], &mut []).unwrap_err();
    assert!(e.to_string().contains("no inputs given"), "{e}");
    assert_eq!(b.stats().batches, 0, "nothing ran");
    Request::new(&b, &ranges, 2, 1).run(&b).unwrap();
}

#[test]
fn bucket_lists_are_checked() {
    assert_eq!(BatchSpec::new(8).bucket_sizes().unwrap(), [1, 2, 4, 8]);
    assert_eq!(BatchSpec::new(6).bucket_sizes().unwrap(), [1, 2, 4, 6]);
    assert_eq!(BatchSpec::new(1).bucket_sizes().unwrap(), [1]);
    assert_eq!(BatchSpec::new(8).buckets(&[2, 8]).bucket_sizes().unwrap(), [2, 8]);
    for (spec, says) in [
        (BatchSpec::new(0), "max_batch must be at least 1"),
        (BatchSpec::new(8).buckets(&[4, 2, 8]), "ascending"),
        (BatchSpec::new(8).buckets(&[0, 8]), "ascending"),
        (BatchSpec::new(8).buckets(&[1, 4]), "the largest must be max_batch (8)"),
        (BatchSpec::new(8).max_queue(0), "max_queue must be at least 1"),
    ] {
        let e = spec.bucket_sizes().unwrap_err();
        assert!(e.to_string().contains(says), "{spec:?}: {e}");
    }
}

/// A model whose output does not carry the batch as its first dimension
/// (`batch_sum`: `x.sum(0)`) is refused at build with the reason.
#[test]
fn a_model_without_a_batch_dimension_is_refused() {
    let rt = runtime();
    let model = rt.model(common::model_path("batch_sum.pt")).unwrap();
    let Err(e) = rt.batcher(&model, SessionSpec::new(), BatchSpec::new(2)) else { panic!("batch_sum.pt was batched") };
    assert!(e.to_string().contains("output `output__0` is [4] for a batch of 2: batching needs the batch as every output's first dimension"), "{e}");
}
