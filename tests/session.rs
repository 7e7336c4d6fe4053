//! Sessions: one test body per mode (CPU everywhere; GPU modes skip with a
//! reason without a GPU and fail under UMINFER_REQUIRE_GPU=1), errors, pool.

mod common;

use tch::{Device, Tensor};
use uminfer::doctor::{self, probe::ProbeOptions};
use uminfer::memory::RegionKind;
use uminfer::session::{GraphLaunch, ManagedPlacement};
use uminfer::session::{TensorMut, TensorRef};
use uminfer::{DType, Error, Mode, Model, Runtime, SessionPool, SessionSpec, TypedSession};

const INPUT: [i64; 4] = [1, 3, 128, 128];

fn runtime() -> Runtime {
    Runtime::from_report(doctor::diagnose(ProbeOptions { smoke_tests: false }))
}

/// Deterministic pseudo-random input in [-1, 1).
fn random_input(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Eager reference on `device`, over a copied tensor.
fn reference(model: &Model, input: &[f32], device: Device) -> Vec<f32> {
    let t = Tensor::from_slice(input).view(INPUT).to_device(device);
    let out = model.loaded(device).unwrap().forward(&[t]).unwrap();
    Vec::<f32>::try_from(out[0].to_device(Device::Cpu).flatten(0, -1)).unwrap()
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
    // A NaN on either side is an infinite error (f32::max would drop it).
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).map(|d| if d.is_nan() { f32::INFINITY } else { d }).fold(0.0, f32::max) / scale
}

/// Relative error allowed against eager mode on the same device: 1e-5, except
/// ResNet-18 on a GPU. There cuDNN's benchmark mode (which sessions turn on)
/// may pick other convolution algorithms than the eager reference run, and on
/// Ampere and later libtorch runs cuDNN convolutions in TF32 by default, so
/// two correct runs of its 20 convolutions differ by up to ~2.5e-4 (measured
/// on an H200: 1.0e-4 to 2.5e-4 over the four GPU modes).
fn tolerance(mode: Mode, model_name: &str) -> f32 {
    if mode.needs_gpu() && model_name.starts_with("resnet") { 1e-3 } else { 1e-5 }
}

/// The shared body: fresh random inputs, poisoned outputs, result equal to
/// eager mode on the same device (within `tolerance`).
fn matches_eager(mode: Mode, model_name: &str, classes: i64, requests: u64) {
    let rt = runtime();
    let model = rt.model(common::model_path(model_name)).unwrap();
    let device = if mode == Mode::Cpu { Device::Cpu } else { Device::Cuda(0) };
    let spec = SessionSpec::new().input_shape(&INPUT).mode(mode);
    let mut s: TypedSession = rt.typed_session(&model, spec).unwrap();
    assert_eq!(s.mode(), mode);
    assert_eq!(s.output_shape(), [1, classes], "{mode}: the output shape found at build");
    eprintln!("{mode}: {}", s.note());
    let (tin, _) = s.tensor_addresses();
    let region_addr = s.input_region().device_ptr().map(|p| p as usize).unwrap_or(s.input_region().as_ptr() as usize);
    if mode != Mode::GpuCopy {
        assert_eq!(tin, region_addr, "{mode}: the model does not read the input region in place");
    }
    for seed in 0..requests {
        let x = random_input(seed, s.input().len());
        s.input_mut().copy_from_slice(&x);
        s.output_mut().fill(f32::NAN);
        let t = s.run().unwrap();
        assert_eq!(t.device.is_some(), mode.needs_gpu());
        let want = reference(&model, &x, device);
        assert!(s.output().iter().all(|v| v.is_finite()), "{mode}: unwritten (NaN) output elements");
        let err = max_rel_err(s.output(), &want);
        assert!(err <= tolerance(mode, model_name), "{mode} {model_name} request {seed}: relative error {err}");
    }
    let timing = s.timing().unwrap();
    assert_eq!(timing.host.count, requests);
    assert!(timing.host.p50_us <= timing.host.p99_us);
    assert_eq!(timing.device.is_some(), mode.needs_gpu());
}

macro_rules! per_mode {
    ($($name:ident: $mode:expr, $gpu:expr;)*) => {$(
        mod $name {
            use super::*;
            #[test]
            fn tiny_matches_eager() {
                if $gpu { require_gpu!(); }
                matches_eager($mode, "tiny.pt", 10, 20);
            }
            #[test]
            fn resnet18_matches_eager() {
                if $gpu { require_gpu!(); }
                matches_eager($mode, "resnet18.pt", 1000, 3);
            }
            #[test]
            fn a_trace_holds_each_request() {
                if $gpu { require_gpu!(); }
                trace_holds_each_request($mode);
            }
            #[test]
            fn a_phased_request_adds_up() {
                if $gpu { require_gpu!(); }
                phased_request_adds_up($mode, false);
                if $mode.needs_gpu() && $mode != Mode::GpuCopy {
                    phased_request_adds_up($mode, true);
                }
            }
        }
    )*};
}

/// `Session::run_phased` on `tiny`: the same output as `run` on the same
/// input, not timed; on a GPU the device time split into the mode's stages
/// in order (a graph is one stage; managed prefetches, where the device
/// takes them, around the rest), adding up to the device time within the
/// events' resolution; the same on the session's own thread.
fn phased_request_adds_up(mode: Mode, stage_input: bool) {
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let spec = SessionSpec::new().input_shape(&INPUT).mode(mode).allow_eager_fallback(false).stage_input(stage_input);
    for spec in [spec.clone(), spec.dedicated_thread(true)] {
        let mut s = rt.session(&model, spec).unwrap();
        let x = random_input(11, s.input::<f32>(0).unwrap().len());
        s.input_mut::<f32>(0).unwrap().copy_from_slice(&x);
        s.run().unwrap();
        let want = s.output::<f32>(0).unwrap().to_vec();
        s.output_mut::<f32>(0).unwrap().fill(f32::NAN);
        let p = s.run_phased().unwrap();
        assert_eq!(s.output::<f32>(0).unwrap(), &want[..], "{mode}: a phased request's output differs from a plain one's");
        assert_eq!(s.timing().unwrap().host.count, 1, "{mode}: phased requests are not timed");
        let names: Vec<&str> = p.device_phases.iter().map(|(n, _)| *n).collect();
        let Some(device) = p.timing.device else {
            assert!(!mode.needs_gpu() && names.is_empty(), "{mode}: {names:?} without device time");
            continue;
        };
        let (prefetch_in, prefetch_out) = ("device: input prefetch", "device: output prefetch");
        let core: Vec<&str> = names.iter().copied().filter(|n| *n != prefetch_in && *n != prefetch_out).collect();
        let expected: &[&str] = match (mode, stage_input) {
            (Mode::GpuManagedGraph, _) => &["device: CUDA graph (all of the request's work in it)"],
            (Mode::GpuCopy, _) => &["device: input copy", "device: forward pass", "device: output copy"],
            (_, true) => &["device: input staging", "device: forward pass"],
            (_, false) => &["device: forward pass"],
        };
        assert_eq!(core, expected, "{mode} (staged {stage_input}): {names:?}");
        if names.len() > core.len() {
            assert_eq!((names.first(), names.last(), names.len()), (Some(&prefetch_in), Some(&prefetch_out), core.len() + 2), "{mode}: {names:?}");
        }
        let sum: std::time::Duration = p.device_phases.iter().map(|(_, d)| *d).sum();
        let slack = std::time::Duration::from_micros(2 * names.len() as u64) + device / 100;
        assert!(sum.abs_diff(device) <= slack, "{mode}: the phases add up to {sum:?}, the device time is {device:?}: {:?}", p.device_phases);
        assert!(p.device_phases.iter().any(|(n, d)| (n.contains("forward pass") || n.contains("graph")) && !d.is_zero()), "{mode}: {:?}", p.device_phases);
    }
}

/// `Session::trace` of 4 requests: each request's scope holds libtorch
/// operators (a graph replay: none); on a GPU the trace has CUDA kernels
/// (and, copying, memcpys); the session's timing is untouched; a second
/// trace at once is refused; a session with a thread of its own is traced there.
fn trace_holds_each_request(mode: Mode) {
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let spec = SessionSpec::new().input_shape(&INPUT).mode(mode).allow_eager_fallback(false);
    let mut s = rt.session(&model, spec.clone()).unwrap();
    s.run().unwrap();
    let path = std::env::temp_dir().join(format!("uminfer-trace-{mode}-{}.json", std::process::id()));
    s.trace(4, &path).unwrap();
    // A graph replay runs no libtorch operator.
    let operators = mode != Mode::GpuManagedGraph;
    let events = common::check_torch_trace(&path, 4, operators);
    let has = |cat: &str| events.iter().any(|e| e["cat"] == cat);
    if mode.needs_gpu() {
        assert!(has("kernel"), "{mode}: no CUDA kernel in the trace");
        if mode == Mode::GpuCopy {
            assert!(has("gpu_memcpy"), "{mode}: no memcpy in the trace");
        }
    }
    assert_eq!(s.timing().unwrap().host.count, 1, "traced requests are not timed");
    let running = uminfer::shim::TorchTrace::start(false).unwrap();
    let again = uminfer::shim::TorchTrace::start(false).err().expect("a second trace at once");
    assert!(again.to_string().contains("already running"), "{again}");
    drop(running);
    // On the session's own thread, where its requests run.
    let mut threaded = rt.session(&model, spec.dedicated_thread(true)).unwrap();
    threaded.trace(2, &path).unwrap();
    common::check_torch_trace(&path, 2, operators);
    let _ = std::fs::remove_file(&path);
}

per_mode! {
    cpu: Mode::Cpu, false;
    gpu_copy: Mode::GpuCopy, true;
    gpu_pinned: Mode::GpuPinned, true;
    gpu_managed: Mode::GpuManaged, true;
    gpu_managed_graph: Mode::GpuManagedGraph, true;
}

#[test]
fn cpu_session_equals_pytorch_reference_output() {
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let mut s: TypedSession = rt.typed_session(&model, SessionSpec::new().input_shape(&INPUT)).unwrap();
    let input = Tensor::read_npy(common::model_path("tiny.input.npy")).unwrap();
    let expected = Vec::<f32>::try_from(Tensor::read_npy(common::model_path("tiny.expected.npy")).unwrap().flatten(0, -1)).unwrap();
    s.input_mut().copy_from_slice(&Vec::<f32>::try_from(input.flatten(0, -1)).unwrap());
    s.run().unwrap();
    assert!(max_rel_err(s.output(), &expected) <= 1e-5, "{:?} vs {:?}", s.output(), expected);
}

#[test]
fn graph_replay_sees_input_changed_in_place_many_times() {
    require_gpu!();
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let mut s: TypedSession = rt.typed_session(&model, SessionSpec::new().input_shape(&INPUT).mode(Mode::GpuManagedGraph)).unwrap();
    assert!(s.note().contains("captured"), "{}", s.note());
    for seed in 0..10_000u64 {
        let x = random_input(seed, s.input().len());
        s.input_mut().copy_from_slice(&x);
        s.output_mut().fill(f32::NAN);
        s.run().unwrap();
        let want = reference(&model, &x, Device::Cuda(0));
        let err = max_rel_err(s.output(), &want);
        assert!(err <= 1e-5, "replay {seed}: relative error {err}");
    }
    assert_eq!(s.timing().unwrap().host.count, 10_000);
}

#[test]
fn auto_picks_a_usable_mode_and_says_why() {
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let spec = SessionSpec::new().input_shape(&INPUT).mode_choice(uminfer::session::ModeChoice::Auto).calibration_runs(5);
    let s: TypedSession = rt.typed_session(&model, spec).unwrap();
    assert!(rt.check_mode(s.mode()).is_ok());
    assert!(s.note().starts_with(&format!("auto picked {}", s.mode())), "{}", s.note());
    if common::gpu_unavailable().is_some() {
        assert_eq!(s.mode(), Mode::Cpu);
    }
    assert!(s.timing().is_none(), "calibration timings must not leak into the session's record");
}

#[test]
fn cpu_session_on_a_pinned_dedicated_thread() {
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let mut s: TypedSession = rt.typed_session(&model, SessionSpec::new().input_shape(&INPUT).pin_core(0)).unwrap();
    let x = random_input(7, s.input().len());
    s.input_mut().copy_from_slice(&x);
    s.run().unwrap();
    assert!(max_rel_err(s.output(), &reference(&model, &x, Device::Cpu)) <= 1e-5);
}

/// `run_on` over caller memory, sessions with threads of their own, called
/// from several threads: with several intra-op threads the pass runs on the
/// session's thread (through `Worker::call`), else on the caller's; both must
/// give every caller its own answer.
#[test]
fn run_on_with_dedicated_threads_from_several_callers() {
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let pool: SessionPool = rt.session_pool(&model, SessionSpec::new().input_shape(&INPUT).dedicated_thread(true), 2).unwrap();
    let inputs: Vec<Vec<f32>> = (0..4).map(|k| random_input(300 + k, 3 * 128 * 128)).collect();
    let refs: Vec<Vec<f32>> = inputs.iter().map(|x| reference(&model, x, Device::Cpu)).collect();
    std::thread::scope(|sc| {
        for t in 0..4 {
            let (pool, x, want) = (&pool, &inputs[t], &refs[t]);
            sc.spawn(move || {
                for i in 0..25 {
                    let mut out = [std::mem::MaybeUninit::new(f32::NAN); 10];
                    pool.checkout().run_on(&[TensorRef::new(x)], &mut [TensorMut::uninit(&mut out)]).unwrap();
                    // SAFETY: run_on returned Ok, so every slot was written.
                    let got: Vec<f32> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
                    assert!(max_rel_err(&got, want) <= 1e-5, "thread {t} request {i}: {got:?} vs {want:?}");
                }
            });
        }
    });
}

/// 6 threads share a pool of 3 sessions; every response is checked against
/// the reference for its own input. Returns the pool for further checks.
fn pool_under_threads(mode: Mode, device: Device, per_thread: usize) -> (SessionPool, Vec<Vec<f32>>) {
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let pool: SessionPool = rt.session_pool(&model, SessionSpec::new().input_shape(&INPUT).mode(mode), 3).unwrap();
    let inputs: Vec<Vec<f32>> = (0..8).map(|k| random_input(100 + k, 3 * 128 * 128)).collect();
    let refs: Vec<Vec<f32>> = inputs.iter().map(|x| reference(&model, x, device)).collect();
    let served = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for t in 0..6 {
            let (pool, inputs, refs, served) = (&pool, &inputs, &refs, &served);
            sc.spawn(move || {
                let mut out = vec![0f32; 10];
                for i in 0..per_thread {
                    let k = (t * 7 + i) % inputs.len();
                    out.fill(f32::NAN);
                    pool.infer(&[TensorRef::new(&inputs[k])], &mut [TensorMut::new(&mut out)]).unwrap();
                    assert!(max_rel_err(&out, &refs[k]) <= 1e-5, "{mode}: thread {t} request {i} got another request's result");
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(served.into_inner(), 6 * per_thread, "lost requests");
    (pool, inputs)
}

#[test]
fn pool_serves_many_threads_without_mixing_results() {
    let (pool, inputs) = pool_under_threads(Mode::Cpu, Device::Cpu, 15);
    assert_eq!(pool.size(), 3);
    let mut out = vec![0f32; 9];
    assert!(matches!(pool.infer(&[TensorRef::new(&inputs[0])], &mut [TensorMut::new(&mut out)]), Err(Error::Session { kind: uminfer::SessionErrorKind::InvalidRequest, .. })));
}

#[test]
fn gpu_pool_under_concurrency() {
    require_gpu!();
    pool_under_threads(Mode::GpuManagedGraph, Device::Cuda(0), 200);
}

#[test]
fn errors_are_typed_and_say_what_to_do() {
    let rt = runtime();
    assert!(matches!(rt.model("models/does-not-exist.pt"), Err(Error::ModelNotFound { .. })));
    let junk = std::env::temp_dir().join(format!("uminfer-junk-{}.pt", std::process::id()));
    std::fs::write(&junk, b"this is not a TorchScript archive").unwrap();
    let err = rt.model(&junk).err().unwrap();
    assert!(matches!(err, Error::Model { .. }) && err.to_string().contains("TorchScript"), "{err}");

    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let wrong_in = rt.typed_session::<f32, f32>(&model, SessionSpec::new().input_shape(&[1, 3, 128])).err().unwrap();
    assert!(matches!(wrong_in, Error::Session { kind: uminfer::SessionErrorKind::Unsupported, .. }), "{wrong_in}");
    let wrong_dtype = rt.typed_session::<f32, i64>(&model, SessionSpec::new().input_shape(&INPUT)).err().unwrap();
    assert!(wrong_dtype.to_string().contains("returns one i64 output") && wrong_dtype.to_string().contains("output__0: f32 [1, 10]"), "{wrong_dtype}");
    let empty = rt.typed_session::<f32, f32>(&model, SessionSpec::new().input_shape(&[1, 0, 128, 128])).err().unwrap();
    assert!(matches!(empty, Error::Signature { .. }) && empty.to_string().contains("positive"), "{empty}");
    let shm = rt.typed_session::<f32, f32>(&model, SessionSpec::new().input_shape(&INPUT).mode(Mode::ShmIpc)).err().unwrap();
    assert!(shm.to_string().contains("transport"), "{shm}");
    if common::gpu_unavailable().is_some() {
        let gpu = rt.typed_session::<f32, f32>(&model, SessionSpec::new().input_shape(&INPUT).mode(Mode::GpuManagedGraph)).err().unwrap();
        assert!(matches!(gpu, Error::ModeUnusable { mode: Mode::GpuManagedGraph, .. }), "{gpu}");
        assert!(gpu.to_string().contains("no CUDA driver"), "{gpu}");
    }
}

#[test]
fn wrong_input_dtype_fails_at_build_with_libtorchs_reason() {
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let err = rt.session(&model, SessionSpec::new().input("x", DType::I32, &INPUT)).err().unwrap();
    assert!(matches!(err, Error::Session { kind: uminfer::SessionErrorKind::Unsupported, .. }), "{err}");
    assert!(err.to_string().contains("tiny.pt") && err.to_string().contains("x: i32 [1, 3, 128, 128]"), "{err}");
}

/// A raw u8 HWC image through a session with preprocessing equals the CPU
/// reference preprocess followed by an eager forward.
fn preprocessed_matches_reference(mode: Mode, device: Device) {
    use uminfer::ops::{reference, PreprocessParams};
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let params = PreprocessParams::new(128, 128, 3, &[0.485, 0.456, 0.406], &[0.229, 0.224, 0.225]).unwrap();
    let spec = SessionSpec::new().input_shape(&INPUT).mode(mode).preprocess(params);
    let mut s: TypedSession = rt.typed_session(&model, spec).unwrap();
    for seed in 0..5u64 {
        let image: Vec<u8> = random_input(seed, params.len()).iter().map(|x| ((x + 1.0) * 127.5) as u8).collect();
        s.raw_input_mut().unwrap().copy_from_slice(&image);
        s.output_mut().fill(f32::NAN);
        s.run().unwrap();
        let mut normalised = vec![0f32; params.len()];
        reference::preprocess(&params, &image, &mut normalised).unwrap();
        let err = max_rel_err(s.output(), &reference(&model, &normalised, device));
        assert!(err <= 1e-5, "{mode} image {seed}: relative error {err}");
        assert!(max_rel_err(s.input(), &normalised) <= 1e-6, "{mode}: the input region does not hold the normalised image");
    }
}

#[test]
fn cpu_session_preprocesses_raw_images() {
    preprocessed_matches_reference(Mode::Cpu, Device::Cpu);
}

/// 50 requests of fresh random inputs (seeds from `first_seed`) into a GPU
/// session over `tiny`, each output poisoned first and then equal to eager
/// mode on the GPU within 1e-5.
fn tiny_gpu_requests_match_eager(s: &mut TypedSession, model: &Model, first_seed: u64, what: &str) {
    for seed in first_seed..first_seed + 50 {
        let x = random_input(seed, s.input().len());
        s.input_mut().copy_from_slice(&x);
        s.output_mut().fill(f32::NAN);
        s.run().unwrap();
        let err = max_rel_err(s.output(), &reference(model, &x, Device::Cuda(0)));
        assert!(err <= 1e-5, "{what}, request seed {seed}: relative error {err}");
    }
}

/// Managed modes under every placement: pages migrated around each request,
/// host-resident pages (the default) or pinned-mapped regions (both read and
/// written in place by the GPU); results as eager.
#[test]
fn every_managed_placement_matches_eager() {
    require_gpu!();
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let placements = [
        (ManagedPlacement::Migrate, "warm-up runs", RegionKind::Managed),
        (ManagedPlacement::HostResident, "host-resident", RegionKind::Managed),
        (ManagedPlacement::Pinned, "pinned-mapped host memory", RegionKind::PinnedMapped),
    ];
    for (mode, (placement, says, kind)) in [Mode::GpuManaged, Mode::GpuManagedGraph].into_iter().flat_map(|m| placements.map(|p| (m, p))) {
        let spec = SessionSpec::new().input_shape(&INPUT).mode(mode).managed_placement(placement);
        let mut s: TypedSession = rt.typed_session(&model, spec).unwrap();
        assert!(s.note().contains(says), "{mode} {placement}: {}", s.note());
        assert_eq!((s.input_region().kind(), s.output_region().kind()), (kind, kind), "{mode} {placement}");
        tiny_gpu_requests_match_eager(&mut s, &model, 500, &format!("{mode} {placement}"));
    }
}

#[test]
fn managed_placement_names() {
    for p in [ManagedPlacement::Migrate, ManagedPlacement::HostResident, ManagedPlacement::Pinned] {
        assert_eq!(p.to_string().parse::<ManagedPlacement>().unwrap(), p);
    }
    let err = "host".parse::<ManagedPlacement>().unwrap_err();
    assert!(err.contains("migrate, host-resident or pinned"), "{err}");
    assert_eq!(ManagedPlacement::default(), ManagedPlacement::HostResident);
}

/// A model file is read once per runtime (and its clones), whatever path spells it.
#[test]
fn a_model_is_opened_once_per_runtime() {
    let rt = runtime();
    let path = common::model_path("tiny.pt");
    let a = rt.model(&path).unwrap();
    let dotted = path.parent().unwrap().join(".").join("tiny.pt");
    let b = rt.clone().model(&dotted).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a.loaded(Device::Cpu).unwrap(), &b.loaded(Device::Cpu).unwrap()), "tiny.pt was loaded twice");
    let other = runtime().model(&path).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&a.loaded(Device::Cpu).unwrap(), &other.loaded(Device::Cpu).unwrap()), "two runtimes share a module");
}

#[test]
fn graph_launch_names() {
    for l in [GraphLaunch::Direct, GraphLaunch::Libtorch] {
        assert_eq!(l.to_string().parse::<GraphLaunch>().unwrap(), l);
    }
    let err = "raw".parse::<GraphLaunch>().unwrap_err();
    assert!(err.contains("direct or libtorch"), "{err}");
    assert_eq!(GraphLaunch::default(), GraphLaunch::Direct);
}

#[test]
fn graph_launched_either_way_matches_eager() {
    require_gpu!();
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let caller = "from the calling thread";
    for (launch, session_thread, says) in [
        (GraphLaunch::Direct, false, "launched directly"),
        (GraphLaunch::Direct, true, "launched directly"),
        (GraphLaunch::Libtorch, false, "replayed through libtorch (as asked)"),
    ] {
        let mut spec = SessionSpec::new().input_shape(&INPUT).mode(Mode::GpuManagedGraph).graph_launch(launch);
        if session_thread {
            spec = spec.dedicated_thread(true);
        }
        let mut s: TypedSession = rt.typed_session(&model, spec).unwrap();
        assert!(s.note().contains(says), "{launch}: {}", s.note());
        // Only a direct launch without a request for the session thread runs from the caller's.
        assert_eq!(s.note().contains(caller), launch == GraphLaunch::Direct && !session_thread, "{launch}, session thread {session_thread}: {}", s.note());
        tiny_gpu_requests_match_eager(&mut s, &model, 700, &format!("{launch}, session thread {session_thread}"));
    }
}

/// `capture_graph`: the other GPU modes' requests replayed from a graph too
/// (gpu-copy's with its copies in it); results as eager.
#[test]
fn every_gpu_mode_captured_into_a_graph_matches_eager() {
    require_gpu!();
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    for mode in [Mode::GpuCopy, Mode::GpuPinned, Mode::GpuManaged] {
        let spec = SessionSpec::new().input_shape(&INPUT).mode(mode).capture_graph(true);
        let mut s: TypedSession = rt.typed_session(&model, spec).unwrap();
        assert!(s.note().contains("captured into a CUDA graph, launched directly"), "{mode}: {}", s.note());
        tiny_gpu_requests_match_eager(&mut s, &model, 800, &format!("{mode} captured"));
    }
}

/// `stage_input`: the input copied into device memory by the staging kernel
/// at the start of each request (inside the graph in graph mode); results as eager.
#[test]
fn staged_input_matches_eager() {
    require_gpu!();
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    for mode in [Mode::GpuPinned, Mode::GpuManaged, Mode::GpuManagedGraph] {
        let spec = SessionSpec::new().input_shape(&INPUT).mode(mode).stage_input(true);
        let mut s: TypedSession = rt.typed_session(&model, spec).unwrap();
        assert!(s.note().contains("stages the input into device memory"), "{mode}: {}", s.note());
        tiny_gpu_requests_match_eager(&mut s, &model, 1000, &format!("{mode} staged"));
    }
}

/// A model that draws random numbers (`noisy`: per-channel mean plus
/// `torch.rand`) is not launched directly: its warm-up outputs differ, so the
/// graph goes through libtorch's replay, which draws new numbers every time.
#[test]
fn graph_of_a_model_drawing_random_numbers_is_replayed_through_libtorch() {
    require_gpu!();
    let rt = runtime();
    let model = rt.model(common::model_path("noisy.pt")).unwrap();
    let spec = SessionSpec::new().input_shape(&INPUT).mode(Mode::GpuManagedGraph);
    let mut s: TypedSession = rt.typed_session(&model, spec).unwrap();
    assert!(s.note().contains("replayed through libtorch (two warm-up runs on the same input differed"), "{}", s.note());
    let x = random_input(900, s.input().len());
    s.input_mut().copy_from_slice(&x);
    let means: Vec<f32> = x.chunks(128 * 128).map(|c| c.iter().sum::<f32>() / c.len() as f32).collect();
    let mut outputs = Vec::new();
    for _ in 0..3 {
        s.output_mut().fill(f32::NAN);
        s.run().unwrap();
        for (c, (got, mean)) in s.output().iter().zip(&means).enumerate() {
            let noise = got - mean;
            assert!((-1e-4..1.0 + 1e-4).contains(&noise), "channel {c}: output {got}, mean {mean}: noise {noise} outside [0, 1)");
        }
        outputs.push(s.output().to_vec());
    }
    assert!(outputs[0] != outputs[1] && outputs[1] != outputs[2], "same input, same random draws on every replay: {outputs:?}");
}

#[test]
fn graph_session_captures_preprocessing() {
    require_gpu!();
    preprocessed_matches_reference(Mode::GpuManagedGraph, Device::Cuda(0));
}

#[test]
fn preprocessing_needs_a_matching_f32_input() {
    use uminfer::ops::PreprocessParams;
    let rt = runtime();
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let params = PreprocessParams::new(64, 64, 3, &[0.5; 3], &[0.5; 3]).unwrap();
    let err = rt.typed_session::<f32, f32>(&model, SessionSpec::new().input_shape(&INPUT).preprocess(params)).err().unwrap();
    assert!(err.to_string().contains("[1, 3, 64, 64]"), "{err}");
    let mut plain: TypedSession = rt.typed_session(&model, SessionSpec::new().input_shape(&INPUT)).unwrap();
    assert!(matches!(plain.raw_input_mut(), Err(Error::Session { kind: uminfer::SessionErrorKind::Unsupported, .. })));
}
