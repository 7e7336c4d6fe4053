//! Models of any signature through sessions: several named inputs, every
//! dtype, tuple / dict / nested outputs, TorchScript and AOTInductor
//! packages, each giving PyTorch's own results (computed in Python by
//! `models/export.py`). One test body per mode: the CPU everywhere, the GPU
//! modes skip with a reason without a GPU and fail under
//! `UMINFER_REQUIRE_GPU=1`. Then every kind of bad input, each a typed error.

mod common;

use std::mem::MaybeUninit;
use std::path::PathBuf;
use uminfer::doctor::{self, probe::ProbeOptions};
use uminfer::dtype::Bool;
use uminfer::host_tensor::{read_npy, read_npz, HostTensor};
use uminfer::model::signature::SignatureError;
use uminfer::session::{TensorMut, TensorRef};
use uminfer::{DType, Error, Mode, Runtime, Session, SessionSpec};

fn runtime() -> Runtime {
    Runtime::from_report(doctor::diagnose(ProbeOptions { smoke_tests: false }))
}

/// Relative error allowed against PyTorch's CPU results: float32 matmuls
/// and convolutions on a GPU (TF32, other kernels) differ from the CPU's.
fn tolerance(mode: Mode) -> f64 {
    if mode.needs_gpu() { 1e-3 } else { 1e-5 }
}

/// The model file for `mode`: a package runs where it was compiled (the
/// CUDA packages are made on GPU hosts by `ci/gpu-run`: `NAME.cuda.pt2`).
fn file_for(name: &str, mode: Mode) -> String {
    match name.strip_suffix(".pt2") {
        Some(stem) if mode.needs_gpu() => format!("{stem}.cuda.pt2"),
        _ => name.to_string(),
    }
}

/// The inputs and PyTorch's outputs for `file` (`NAME.inputs.npz` /
/// `NAME.expected.npz`; tiny's TorchScript pair is `.npy`).
fn reference(file: &str) -> (Vec<HostTensor>, Vec<HostTensor>) {
    if file == "tiny.pt" {
        let mut x = read_npy(&common::model_path("tiny.input.npy")).unwrap();
        x.name = "x".into();
        let mut y = read_npy(&common::model_path("tiny.expected.npy")).unwrap();
        y.name = "output__0".into();
        return (vec![x], vec![y]);
    }
    let stem = file.strip_suffix(".pt").unwrap_or(file);
    (read_npz(&common::model_path(&format!("{stem}.inputs.npz"))).unwrap(), read_npz(&common::model_path(&format!("{stem}.expected.npz"))).unwrap())
}

/// The shared body: `name` in `mode`, fed its reference inputs (bf16 given
/// as float32 and converted), outputs poisoned before each run and then
/// equal to PyTorch's (bf16 compared as float32, as stored), in the order
/// and under the names the model gives them; every input read in place.
fn matches_pytorch(mode: Mode, name: &str) {
    let rt = runtime();
    let file = file_for(name, mode);
    let model = rt.model(common::model_path(&file)).unwrap();
    let (inputs, expected) = reference(&file);
    let fitted = model.fit_inputs(inputs).unwrap();
    let mut spec = SessionSpec::new().mode(mode);
    for d in fitted.decls() {
        spec = spec.declare(d);
    }
    let mut s: Session = rt.session(&model, spec).unwrap();
    eprintln!("{file} {mode}: {}", s.note());
    let names: Vec<&str> = s.outputs().iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, expected.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), "{file} {mode}: output names");
    // Zero copy: every tensor the model reads is its region (the device
    // address of pinned-mapped memory; gpu-copy stages through device tensors).
    if mode != Mode::GpuCopy {
        for i in 0..s.inputs().len() {
            let r = s.input_region(i).unwrap();
            let addr = r.device_ptr().map_or(r.as_ptr() as usize, |p| p as usize);
            assert_eq!(s.tensor_addresses().0[i], addr, "{file} {mode}: input {i} is not read in place");
        }
    }
    for t in &fitted.tensors {
        s.write_input(t).unwrap();
    }
    for round in 0..3 {
        for i in 0..s.outputs().len() {
            poison(&mut s, i);
        }
        s.run().unwrap();
        for (i, want) in expected.iter().enumerate() {
            let got = s.read_output(i).unwrap();
            let got = if got.dtype == DType::Bf16 { got.converted(DType::F32).unwrap() } else { got };
            got.check_close(want, tolerance(mode)).unwrap_or_else(|e| panic!("{file} {mode} round {round}: {e}"));
        }
    }
    assert_eq!(s.timing().unwrap().host.count, 3);
}

/// Overwrites output `i` with values no reference output holds (NaN,
/// the largest integer, `true` where PyTorch says false somewhere), so that
/// an output the run does not write fails the comparison.
fn poison(s: &mut Session, i: usize) {
    match s.outputs()[i].dtype {
        DType::F32 => s.output_mut::<f32>(i).unwrap().fill(f32::NAN),
        DType::F64 => s.output_mut::<f64>(i).unwrap().fill(f64::NAN),
        DType::F16 => s.output_mut::<half::f16>(i).unwrap().fill(half::f16::NAN),
        DType::Bf16 => s.output_mut::<half::bf16>(i).unwrap().fill(half::bf16::NAN),
        DType::I64 => s.output_mut::<i64>(i).unwrap().fill(i64::MAX),
        DType::I32 => s.output_mut::<i32>(i).unwrap().fill(i32::MAX),
        DType::I16 => s.output_mut::<i16>(i).unwrap().fill(i16::MAX),
        DType::I8 => s.output_mut::<i8>(i).unwrap().fill(i8::MAX),
        DType::U8 => s.output_mut::<u8>(i).unwrap().fill(u8::MAX),
        DType::Bool => s.output_mut::<Bool>(i).unwrap().fill(Bool::TRUE),
    }
}

/// A model that raises on a given input (`raises.pt`: over 100): the
/// request fails with libtorch's message, the session's memory is usable
/// again at once (every exit of a GPU run synchronises its stream), and the
/// next request is answered correctly. Graph mode captures nothing here
/// (the model reads its input on the host to decide), so it runs eagerly.
fn model_error_then_serves_on(mode: Mode) {
    let rt = runtime();
    let model = rt.model(common::model_path("raises.pt")).unwrap();
    let mut s = rt.session(&model, SessionSpec::new().mode(mode).allow_eager_fallback(true)).unwrap();
    for round in 0..3 {
        let x = [1.0f32 + round as f32, -2.0, 3.5, 100.0];
        s.input_mut::<f32>("x").unwrap().copy_from_slice(&x);
        s.run().unwrap();
        assert_eq!(s.output::<f32>(0).unwrap(), &x.map(|v| v * 2.0), "{mode}, round {round}");
        s.input_mut::<f32>("x").unwrap()[2] = 1000.0;
        let e = s.run().unwrap_err();
        assert!(e.to_string().contains("raises.pt: an input element is over 100"), "{mode}: {e}");
        assert_eq!(s.input_mut::<f32>("x").unwrap()[2], 1000.0, "{mode}: the input is as the caller left it");
    }
}

macro_rules! per_mode {
    ($($name:ident: $mode:expr, $gpu:expr;)*) => {$(
        mod $name {
            use super::*;
            #[test]
            fn every_dtype_round_trips() {
                if $gpu { require_gpu!(); }
                matches_pytorch($mode, "dtypes.pt");
            }
            #[test]
            fn encoder_with_two_int64_inputs_and_a_tuple_output() {
                if $gpu { require_gpu!(); }
                matches_pytorch($mode, "encoder.pt");
            }
            #[test]
            fn dict_output_model() {
                if $gpu { require_gpu!(); }
                matches_pytorch($mode, "heads.pt");
            }
            #[test]
            fn tiny_package() {
                if $gpu { require_gpu!(); }
                matches_pytorch($mode, "tiny.pt2");
            }
            #[test]
            fn encoder_package() {
                if $gpu { require_gpu!(); }
                matches_pytorch($mode, "encoder.pt2");
            }
            #[test]
            fn a_model_error_fails_the_request_and_the_session_serves_on() {
                if $gpu { require_gpu!(); }
                model_error_then_serves_on($mode);
            }
        }
    )*};
}

per_mode! {
    cpu: Mode::Cpu, false;
    gpu_copy: Mode::GpuCopy, true;
    gpu_pinned: Mode::GpuPinned, true;
    gpu_managed: Mode::GpuManaged, true;
    gpu_managed_graph: Mode::GpuManagedGraph, true;
}

#[test]
fn typed_access_checks_the_dtype_and_names() {
    let rt = runtime();
    let model = rt.model(common::model_path("dtypes.pt")).unwrap();
    let mut s = rt.session(&model, SessionSpec::new()).unwrap();
    s.input_mut::<Bool>("a_bool").unwrap().fill(Bool::from(true));
    s.input_mut::<half::bf16>("a_bf16").unwrap().fill(half::bf16::from_f32(2.5));
    s.input_mut::<i8>(7).unwrap().fill(-3);
    s.run().unwrap();
    assert!(s.output::<Bool>("output__2.6").unwrap().iter().all(|b| !b.get()), "logical_not of true");
    assert!(s.output::<half::bf16>("output__2.0").unwrap().iter().all(|&v| v == half::bf16::from_f32(3.5)));
    assert!(s.output::<i8>("output__2.4").unwrap().iter().all(|&v| v == -2));
    let e = s.input_mut::<f32>("a_i64").unwrap_err();
    assert!(matches!(&e, Error::DType { tensor, expected: DType::I64, given: DType::F32 } if tensor == "a_i64"), "{e}");
    let e = s.output::<f32>("logits").unwrap_err();
    assert!(matches!(e, Error::NoSuchTensor { side: "output", .. }) && e.to_string().contains("output__2.6: bool [2, 3]"), "{e}");
    assert!(matches!(s.input_mut::<f32>(10), Err(Error::NoSuchTensor { .. })));
}

/// `run_on` over caller memory with one tensor per input and output; the
/// wrong number, dtype or length is refused before anything runs.
#[test]
fn run_on_takes_a_tensor_per_input_and_output() {
    let rt = runtime();
    let model = rt.model(common::model_path("encoder.pt")).unwrap();
    let (inputs, expected) = reference("encoder.pt");
    let mut s = rt.session(&model, SessionSpec::new().dedicated_thread(true)).unwrap();
    let ids = inputs[0].to_vec::<i64>().unwrap();
    let mask = inputs[1].to_vec::<i64>().unwrap();
    let mut hidden = vec![MaybeUninit::<f32>::uninit(); 32 * 64];
    let mut pooled = vec![0f32; 64];
    s.run_on(&[TensorRef::new(&ids), TensorRef::new(&mask)], &mut [TensorMut::uninit(&mut hidden), TensorMut::new(&mut pooled)]).unwrap();
    // SAFETY: run_on returned Ok, so every element was written.
    let hidden: Vec<f32> = hidden.into_iter().map(|v| unsafe { v.assume_init() }).collect();
    HostTensor::from_values("output__0", &[1, 32, 64], &hidden).unwrap().check_close(&expected[0], 1e-5).unwrap();
    HostTensor::from_values("output__1", &[1, 64], &pooled).unwrap().check_close(&expected[1], 1e-5).unwrap();

    let e = s.run_on(&[TensorRef::new(&ids)], &mut [TensorMut::new(&mut pooled)]).unwrap_err();
    assert!(e.to_string().contains("1 input tensors given, the session has 2"), "{e}");
    let as_f32: Vec<f32> = ids.iter().map(|&v| v as f32).collect();
    let mut out = vec![0f32; 32 * 64];
    let e = s.run_on(&[TensorRef::new(&as_f32), TensorRef::new(&mask)], &mut [TensorMut::new(&mut out), TensorMut::new(&mut pooled)]).unwrap_err();
    assert!(matches!(&e, Error::DType { tensor, expected: DType::I64, given: DType::F32 } if tensor == "input_ids"), "{e}");
    let e = s.run_on(&[TensorRef::new(&ids[..31]), TensorRef::new(&mask)], &mut [TensorMut::new(&mut out), TensorMut::new(&mut pooled)]).unwrap_err();
    assert!(e.to_string().contains("input `input_ids` takes 256 bytes"), "{e}");
    let odd = vec![0u8; 257];
    assert!(TensorRef::from_bytes(DType::I64, &odd[1..]).unwrap_err().to_string().contains("8-byte boundary"));
    assert!(TensorRef::from_bytes(DType::Bool, &[0, 1, 2]).unwrap_err().to_string().contains("found the byte 2"));
}

#[test]
fn a_typed_session_needs_one_input_and_one_output() {
    let rt = runtime();
    let model = rt.model(common::model_path("encoder.pt")).unwrap();
    let e = rt.typed_session::<i64, f32>(&model, SessionSpec::new()).err().unwrap();
    assert!(e.to_string().contains("use Runtime::session") && e.to_string().contains("input_ids: i64 [1, 32], attention_mask: i64 [1, 32]"), "{e}");
}

/// Declarations that do not fit the model are refused with what was given
/// and what the model takes.
#[test]
fn declarations_are_checked_against_the_model() {
    let rt = runtime();
    let signature = |e: Error| match e {
        Error::Signature { source, .. } => source,
        other => panic!("expected a signature error, got {other}"),
    };
    let encoder = rt.model(common::model_path("encoder.pt")).unwrap();
    let e = rt.session(&encoder, SessionSpec::new().input("token_type_ids", DType::I64, &[1, 32])).err().unwrap();
    assert_eq!(signature(e), SignatureError::UnknownInput { given: "token_type_ids".into(), known: "`input_ids`, `attention_mask`".into() });
    let e = rt.session(&encoder, SessionSpec::new().input_shape(&[1, 16])).err().unwrap();
    assert!(matches!(signature(e), SignatureError::Unnamed(_)));
    // A TorchScript model checks a wrong dtype when it runs at build: libtorch's reason, named.
    let e = rt.session(&encoder, SessionSpec::new().input("input_ids", DType::F32, &[1, 32])).err().unwrap();
    assert!(matches!(e, Error::Session { kind: uminfer::SessionErrorKind::Unsupported, .. }) && e.to_string().contains("input_ids: f32 [1, 32]"), "{e}");

    // A model that records nothing needs each fact declared.
    let noisy = rt.model(common::model_path("noisy.pt")).unwrap();
    let e = rt.session(&noisy, SessionSpec::new()).err().unwrap();
    assert_eq!(signature(e), SignatureError::Missing { name: "x".into(), what: "dtype" });
    assert!(rt.session(&noisy, SessionSpec::new().input("x", DType::F32, &[1, 3, 8, 8])).is_ok());

    // A package takes only what it was compiled for.
    let package = rt.model(common::model_path("encoder.pt2")).unwrap();
    let e = rt.session(&package, SessionSpec::new().input("input_ids", DType::I64, &[1, 16])).err().unwrap();
    assert!(e.to_string().contains("declared i64 [1, 16], but the package was compiled for i64 [1, 32]"), "{e}");
    let e = rt.session(&package, SessionSpec::new().input("attention_mask", DType::I32, &[1, 32])).err().unwrap();
    assert!(matches!(signature(e), SignatureError::Fixed { .. }));
}

#[test]
fn npz_inputs_must_match_the_models_names() {
    let rt = runtime();
    let model = rt.model(common::model_path("encoder.pt")).unwrap();
    let (mut inputs, _) = reference("encoder.pt");
    inputs[1].name = "mask".into();
    let e = model.fit_inputs(inputs).unwrap_err();
    assert!(e.to_string().contains("the model has no input `mask`, input `attention_mask` not given"), "{e}");
}

#[test]
fn an_output_that_is_not_a_tensor_is_refused_by_name() {
    let rt = runtime();
    let model = rt.model(common::model_path("bad_output.pt")).unwrap();
    let e = rt.session(&model, SessionSpec::new()).err().unwrap();
    assert!(e.to_string().contains("`output__1` is an Int; uminfer carries tensors"), "{e}");
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        let p = std::env::temp_dir().join(format!("uminfer-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn files_that_are_no_model_say_what_they_are() {
    let rt = runtime();
    let dir = Scratch::new("not-models");
    let junk = dir.0.join("junk.pt");
    std::fs::write(&junk, b"not an archive at all").unwrap();
    let e = rt.model(&junk).err().unwrap();
    assert!(matches!(e, Error::Model { .. }) && e.to_string().contains("neither a TorchScript file nor an AOTInductor package"), "{e}");
    // A zip archive of NumPy arrays is a zip, but no model.
    let e = rt.model(common::model_path("encoder.inputs.npz")).err().unwrap();
    assert!(matches!(e, Error::Model { .. }), "{e}");
    assert!(matches!(rt.model(dir.0.join("missing.pt2")), Err(Error::ModelNotFound { .. })));
}

/// Copies `tiny.pt2` with its metadata changed by `edit` (a Python
/// expression over the dict `m`), as a package compiled elsewhere would be.
fn package_with_metadata(dir: &Scratch, name: &str, edit: &str) -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if !python.exists() {
        eprintln!("SKIPPED: no .venv/bin/python to rewrite a package (run `bash ci/setup`)");
        return None;
    }
    let out = dir.0.join(name);
    let script = format!(
        r#"
import json, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
    for item in zin.infolist():
        data = zin.read(item.filename)
        if item.filename.endswith("metadata.json"):
            m = json.loads(data)
            {edit}
            data = json.dumps(m).encode()
        zout.writestr(item, data)
"#
    );
    let st = std::process::Command::new(python).args(["-c", &script]).arg(common::model_path("tiny.pt2")).arg(&out).status().unwrap();
    assert!(st.success(), "rewriting the package failed");
    Some(out)
}

#[test]
fn a_package_for_another_device_or_torch_version_is_refused() {
    let rt = runtime();
    let dir = Scratch::new("packages");
    let Some(cuda) = package_with_metadata(&dir, "cuda.pt2", r#"m["AOTI_DEVICE_KEY"] = "cuda"; m["AOTI_COMPUTE_CAPABILITY"] = "90"; m["AOTI_CPU_ISA"] = """#) else { return };
    // A CUDA package opens without a GPU (its metadata and recorded signature)...
    let model = rt.model(&cuda).unwrap();
    assert_eq!(model.inputs().unwrap()[0].name, "x");
    // ...but does not run on the CPU.
    let e = rt.session(&model, SessionSpec::new()).err().unwrap();
    assert!(e.to_string().contains("compiled for CUDA: it runs in the GPU modes only"), "{e}");
    if common::gpu_unavailable().is_some() {
        let e = rt.session(&model, SessionSpec::new().mode(Mode::GpuManagedGraph)).err().unwrap();
        assert!(matches!(e, Error::ModeUnusable { .. }), "{e}");
    }
    let old = package_with_metadata(&dir, "old.pt2", r#"s = json.loads(m["uminfer.signature"]); s["torch_version"] = "2.10.0"; m["uminfer.signature"] = json.dumps(s)"#).unwrap();
    let e = rt.model(&old).err().unwrap();
    assert!(e.to_string().contains("exported with torch 2.10.0; this runtime is libtorch 2.11.0"), "{e}");
    let xpu = package_with_metadata(&dir, "xpu.pt2", r#"m["AOTI_DEVICE_KEY"] = "xpu""#).unwrap();
    let e = rt.model(&xpu).and_then(|m| rt.session(&m, SessionSpec::new())).err().unwrap();
    assert!(e.to_string().contains("device type xpu"), "{e}");
}

/// A package without a recorded signature takes declared inputs only when
/// it checks them itself on every run (`AOTI_RUNTIME_CHECK_INPUTS=1`, which
/// the `uminfer` command sets and this test binary does not).
#[test]
fn a_package_without_a_recorded_signature_is_refused_unless_it_checks_its_inputs() {
    if std::env::var_os(uminfer::model::AOTI_CHECK_INPUTS).is_some() {
        eprintln!("SKIPPED: {} is set in this environment", uminfer::model::AOTI_CHECK_INPUTS);
        return;
    }
    let rt = runtime();
    let dir = Scratch::new("unrecorded");
    let Some(bare) = package_with_metadata(&dir, "bare.pt2", r#"del m["uminfer.signature"]"#) else { return };
    let model = rt.model(&bare).unwrap();
    assert_eq!(model.inputs().unwrap()[0].name, "input__0", "positional inputs without a recorded name");
    let e = rt.session(&model, SessionSpec::new().input("input__0", DType::F32, &[1, 3, 128, 128])).err().unwrap();
    assert!(e.to_string().contains("does not record its inputs' dtypes and shapes") && e.to_string().contains("AOTI_RUNTIME_CHECK_INPUTS=1"), "{e}");
}
