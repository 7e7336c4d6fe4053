//! `uminfer doctor --model`'s verdicts over synthetic models and machines
//! (pure logic, no GPU needed), and its probe over the reference models.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use uminfer::doctor::facts::Facts;
use uminfer::doctor::model::{diagnose_model, verdicts, GpuTry, ModelFacts, ModelReport};
use uminfer::doctor::{ModeVerdict, Report};
use uminfer::model::signature::Hint;
use uminfer::model::{ModelInput, PackageFacts, TensorInfo};
use uminfer::shim::Format;
use uminfer::{DType, Mode};

const GPU_MODES: [Mode; 4] = [Mode::GpuCopy, Mode::GpuPinned, Mode::GpuManaged, Mode::GpuManagedGraph];

fn no(reason: &str) -> ModeVerdict {
    ModeVerdict { usable: false, reason: reason.into() }
}


fn report(f: Facts) -> Report {
    Report::from_facts(f)
}

fn input(name: &str, dtype: Option<DType>, shape: Option<&[i64]>) -> ModelInput {
    ModelInput { name: name.into(), dtype, shape: shape.map(<[i64]>::to_vec), range: None, fixed: false }
}

fn info(name: &str, dtype: DType, shape: &[i64]) -> TensorInfo {
    TensorInfo { name: name.into(), dtype, shape: shape.to_vec() }
}

/// A TorchScript model `x: f32 [1, 3, 8, 8] -> output__0: f32 [1, 10]` that ran on the CPU.
fn torchscript(dtype: DType) -> ModelFacts {
    ModelFacts {
        path: "m.pt".into(),
        format: Some(Format::TorchScript),
        inputs: Some(Ok(vec![input("x", Some(dtype), Some(&[1, 3, 8, 8]))])),
        resolved: Some(Ok(vec![info("x", dtype, &[1, 3, 8, 8])])),
        cpu_run: Some(Ok(vec![info("output__0", dtype, &[1, 10])])),
        ..ModelFacts::default()
    }
}

fn package(device: &str) -> PackageFacts {
    PackageFacts {
        device: device.into(),
        compute_capability: (device == "cuda").then(|| "90".into()),
        cpu_isa: if device == "cpu" { vec!["AVX2".into()] } else { vec![] },
        platform: Some("linux".into()),
        machine: Some(std::env::consts::ARCH.into()),
        hint: Some(Hint { inputs: vec![], torch_version: Some("2.11.0".into()) }),
        cpu_model: Some("AMD EPYC 7763".into()),
    }
}

/// An AOTInductor package of `device` (CUDA packages: compiled for 9.0), as opened.
fn aoti(device: &str) -> ModelFacts {
    let mut m = torchscript(DType::F32);
    m.path = "m.pt2".into();
    m.format = Some(Format::Aoti);
    m.package = Some(package(device));
    if device == "cpu" {
        m.cpu_flags = "fma avx2 f16c".split(' ').map(str::to_string).collect();
    } else {
        m.cpu_run = None;
    }
    m
}

fn verdicts_on(model: &ModelFacts, machine: &Report) -> BTreeMap<Mode, ModeVerdict> {
    verdicts(model, &machine.facts, &machine.modes)
}

#[test]
fn a_cpu_model_on_a_cpu_only_machine_runs_in_the_cpu_modes_only() {
    let machine = report(common::cpu_host());
    let r = ModelReport::from_facts(torchscript(DType::F32), &machine);
    assert!(r.modes[&Mode::Cpu].usable && r.modes[&Mode::ShmIpc].usable, "{:#?}", r.modes);
    assert!(r.modes[&Mode::ShmIpc].reason.contains("cpu session"), "{}", r.modes[&Mode::ShmIpc].reason);
    for m in GPU_MODES {
        assert_eq!(r.modes[&m], machine.modes[&m], "{m} must keep the machine's reason");
    }
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    assert_eq!(r.usable_modes(), [Mode::Cpu, Mode::ShmIpc]);
    assert_eq!(r.exit_code(&machine), machine.exit_code());
}

#[test]
fn a_cpu_model_on_a_healthy_gpu_runs_everywhere_untried_on_the_gpu() {
    let machine = report(common::gpu_host((9, 0), "NVIDIA H100 80GB HBM3"));
    let v = verdicts_on(&torchscript(DType::Bf16), &machine);
    for m in Mode::ALL.into_iter().filter(|&m| m != Mode::ShmIpc) {
        assert!(v[&m].usable, "{m}: {}", v[&m].reason);
    }
    // The shared-memory protocol v1 carries float32 only.
    assert!(!v[&Mode::ShmIpc].usable && v[&Mode::ShmIpc].reason.ends_with("input `x` is bf16"), "{}", v[&Mode::ShmIpc].reason);
    assert!(v[&Mode::GpuManagedGraph].reason.contains("captured is unknown"), "{}", v[&Mode::GpuManagedGraph].reason);
}

#[test]
fn a_bf16_model_needs_sm_80_on_the_gpu_modes() {
    let machine = report(common::gpu_host((7, 5), "Tesla T4"));
    assert!(machine.modes[&Mode::GpuCopy].usable, "a 7.5 card runs the machine's GPU modes");
    let v = verdicts_on(&torchscript(DType::Bf16), &machine);
    assert!(v[&Mode::Cpu].usable);
    for m in GPU_MODES {
        assert!(!v[&m].usable, "{m}");
        assert_eq!(
            v[&m].reason,
            "input `x` is bf16: bf16 GEMMs and convolutions need compute capability 8.0 (sm_80) or newer; GPU 0 (Tesla T4) has 7.5"
        );
    }
    // A bf16 output found by the CPU run counts too; f32 runs on the card.
    let mut out_only = torchscript(DType::F32);
    out_only.cpu_run = Some(Ok(vec![info("logits", DType::Bf16, &[1, 10])]));
    assert!(verdicts_on(&out_only, &machine)[&Mode::GpuCopy].reason.starts_with("output `logits` is bf16"));
    assert!(verdicts_on(&torchscript(DType::F32), &machine)[&Mode::GpuCopy].usable);
    assert!(verdicts_on(&torchscript(DType::Bf16), &report(common::gpu_host((8, 0), "NVIDIA A100")))[&Mode::GpuCopy].usable);
}

#[test]
fn a_cuda_package_for_another_architecture_runs_nowhere_here() {
    let machine = report(common::gpu_host((8, 9), "NVIDIA L4"));
    let r = ModelReport::from_facts(aoti("cuda"), &machine);
    for m in GPU_MODES {
        assert!(!r.modes[&m].usable, "{m}");
        assert!(r.modes[&m].reason.contains("compiled for compute capability 9.0 (sm_90); GPU 0 has 8.9"), "{}", r.modes[&m].reason);
    }
    assert!(!r.modes[&Mode::Cpu].usable);
    assert!(r.modes[&Mode::Cpu].reason.contains("compiled for CUDA"), "{}", r.modes[&Mode::Cpu].reason);
    assert!(!r.modes[&Mode::ShmIpc].usable && r.modes[&Mode::ShmIpc].reason.contains("no session mode"));
    assert_eq!(r.exit_code(&machine), 2);
    // On the card it was compiled for it runs in the GPU modes only.
    let v = verdicts_on(&aoti("cuda"), &report(common::gpu_host((9, 0), "NVIDIA H100 80GB HBM3")));
    assert!(GPU_MODES.iter().all(|m| v[m].usable) && !v[&Mode::Cpu].usable && v[&Mode::ShmIpc].reason.contains("gpu-copy session"));
}

#[test]
fn a_package_of_another_torch_version_or_device_type_is_refused() {
    let machine = report(common::gpu_host((9, 0), "NVIDIA H100 80GB HBM3"));
    let mut old = aoti("cuda");
    old.package.as_mut().unwrap().hint.as_mut().unwrap().torch_version = Some("2.10.0".into());
    let v = verdicts_on(&old, &machine);
    assert!(Mode::ALL.iter().all(|m| !v[m].usable));
    assert!(v[&Mode::GpuCopy].reason.contains("exported with torch 2.10.0"), "{}", v[&Mode::GpuCopy].reason);
    let v = verdicts_on(&aoti("xpu"), &machine);
    assert!(v[&Mode::GpuCopy].reason.contains("device type xpu") && v[&Mode::Cpu].reason.contains("device type xpu"));
}

#[test]
fn a_cpu_package_runs_in_mode_cpu_only_and_needs_its_instruction_sets() {
    let machine = report(common::gpu_host((9, 0), "NVIDIA H100 80GB HBM3"));
    let v = verdicts_on(&aoti("cpu"), &machine);
    assert!(v[&Mode::Cpu].usable && v[&Mode::ShmIpc].usable, "{:#?}", v);
    for m in GPU_MODES {
        assert!(!v[&m].usable);
        assert!(v[&m].reason.contains("compiled for the CPU: it runs in mode cpu only"), "{}", v[&m].reason);
    }
    let mut avx512 = aoti("cpu");
    avx512.package.as_mut().unwrap().cpu_isa = vec!["AVX512".into()];
    let v = verdicts_on(&avx512, &machine);
    assert!(!v[&Mode::Cpu].usable && v[&Mode::Cpu].reason.contains("this CPU lacks avx512f"), "{}", v[&Mode::Cpu].reason);
}

#[test]
fn a_model_that_does_not_open_is_refused_in_every_mode_with_the_error() {
    let machine = report(common::gpu_host((9, 0), "NVIDIA H100 80GB HBM3"));
    let m = ModelFacts { path: "junk.bin".into(), open_error: Some("neither a TorchScript file nor an AOTInductor package".into()), ..ModelFacts::default() };
    let r = ModelReport::from_facts(m, &machine);
    for m in Mode::ALL {
        assert_eq!(r.modes[&m], no("does not load: neither a TorchScript file nor an AOTInductor package"));
    }
    assert!(r.notes.is_empty());
    assert_eq!(r.exit_code(&machine), 2);
}

#[test]
fn inputs_not_recorded_still_give_verdicts_with_a_note() {
    let machine = report(common::gpu_host((9, 0), "NVIDIA H100 80GB HBM3"));
    let mut m = torchscript(DType::F32);
    m.inputs = Some(Ok(vec![input("x", None, None), input("scale", Some(DType::F32), Some(&[-1]))]));
    m.resolved = Some(Err("input `x`: the model does not record its dtype; declare it".into()));
    m.cpu_run = None;
    let r = ModelReport::from_facts(m, &machine);
    for mode in Mode::ALL.into_iter().filter(|&m| m != Mode::ShmIpc) {
        assert!(r.modes[&mode].usable, "{mode}: {}", r.modes[&mode].reason);
    }
    assert!(r.modes[&Mode::ShmIpc].reason.ends_with("the model takes 2 inputs"), "{}", r.modes[&Mode::ShmIpc].reason);
    assert!(r.modes[&Mode::Cpu].reason.contains("--input-spec"), "{}", r.modes[&Mode::Cpu].reason);
    assert!(r.modes[&Mode::GpuManagedGraph].reason.contains("not recorded"), "{}", r.modes[&Mode::GpuManagedGraph].reason);
    assert_eq!(r.notes.len(), 2, "{:?}", r.notes);
    assert_eq!(r.notes[0], "input `x`: the model does not record its dtype and shape: declare it with --input-spec x=DTYPE:DIMS");
    assert!(r.notes[1].contains("`scale` has a dimension of any size"), "{}", r.notes[1]);
    // A bf16 model whose dtypes are unknown is not refused for bf16.
    assert!(verdicts_on(&r.facts, &report(common::gpu_host((7, 5), "Tesla T4")))[&Mode::GpuCopy].usable);
}

#[test]
fn a_failed_cpu_run_refuses_mode_cpu_and_failed_gpu_sessions_refuse_their_modes() {
    let machine = report(common::gpu_host((9, 0), "NVIDIA H100 80GB HBM3"));
    let mut m = torchscript(DType::F32);
    m.cpu_run = Some(Err("shape mismatch in aten::mm".into()));
    let try_ = |outcome: Result<&str, &str>| GpuTry { device: 0, outcome: outcome.map(str::to_string).map_err(str::to_string), outputs: vec![] };
    m.gpu_sessions.insert(Mode::GpuCopy, try_(Ok("3 warm-up runs")));
    m.gpu_sessions.insert(Mode::GpuManagedGraph, try_(Err("stream capture failed: operation not permitted when stream is capturing")));
    let v = verdicts_on(&m, &machine);
    assert_eq!(v[&Mode::Cpu], no("fails on the CPU: shape mismatch in aten::mm"));
    assert!(v[&Mode::ShmIpc].usable && v[&Mode::ShmIpc].reason.contains("gpu-copy session"));
    assert!(v[&Mode::GpuCopy].usable && v[&Mode::GpuManaged].reason.contains("ran on GPU 0 in gpu-copy"));
    assert!(!v[&Mode::GpuManagedGraph].usable && v[&Mode::GpuManagedGraph].reason.contains("stream capture failed"));
    m.gpu_sessions.insert(Mode::GpuCopy, try_(Err("CUDA out of memory")));
    m.gpu_sessions.remove(&Mode::GpuManagedGraph);
    let v = verdicts_on(&m, &machine);
    assert!(GPU_MODES.iter().all(|g| !v[g].usable && v[g].reason.contains("CUDA out of memory")));
    assert!(!v[&Mode::ShmIpc].usable);
}

#[test]
fn the_machines_refusals_stand() {
    let mut f = common::gpu_host((9, 0), "NVIDIA H100 80GB HBM3");
    f.devices[0].managed_memory = false;
    let machine = report(f);
    let v = verdicts_on(&torchscript(DType::F32), &machine);
    assert!(v[&Mode::GpuCopy].usable);
    assert_eq!(v[&Mode::GpuManaged], machine.modes[&Mode::GpuManaged]);
    assert_eq!(v[&Mode::GpuManagedGraph], machine.modes[&Mode::GpuManagedGraph]);
}

#[test]
fn the_text_adds_a_model_section_after_the_machine_report() {
    use uminfer::doctor::render;
    let machine = report(common::gpu_host((8, 9), "NVIDIA L4"));
    let r = ModelReport::from_facts(aoti("cuda"), &machine);
    let alone = render::text(&machine, false);
    let sections = &alone[..alone.trim_end_matches('\n').rfind("\n\n").unwrap() + 1];
    let text = render::model_text(&machine, &r, false);
    assert!(text.starts_with(sections), "{text}");
    assert!(text.contains("\nModel m.pt2\n") && text.contains("compute capability sm_90"), "{text}");
    assert!(text.contains("  output output__0   f32 [1, 10]\n") || text.contains("outputs "), "{text}");
    assert!(text.ends_with("model: no mode runs m.pt2 on this machine (exit code 2)\n"), "{text}");
    assert!(!text.contains('\x1b') && render::model_text(&machine, &r, true).contains("\x1b[31m"));
}

#[test]
fn the_json_is_the_machine_report_plus_a_model_key() {
    use uminfer::doctor::render;
    let machine = report(common::cpu_host());
    let r = ModelReport::from_facts(torchscript(DType::F32), &machine);
    let with: serde_json::Value = serde_json::from_str(&render::model_json(&machine, &r)).unwrap();
    let mut alone: serde_json::Value = serde_json::from_str(&render::json(&machine)).unwrap();
    assert!(alone.get("model").is_none());
    alone["model"] = serde_json::to_value(&r).unwrap();
    assert_eq!(with, alone);
    assert_eq!(with["schema_version"], 1);
    assert_eq!(with["model"]["schema_version"], uminfer::doctor::model::MODEL_SCHEMA_VERSION);
    assert_eq!(with["model"]["modes"]["cpu"]["usable"], true);
    assert_eq!(with["model"]["facts"]["cpu_run"]["Ok"][0]["name"], "output__0");
}

fn model_path(name: &str) -> PathBuf {
    common::model_path(name)
}

fn this_machine() -> Report {
    uminfer::doctor::diagnose(uminfer::doctor::probe::ProbeOptions { smoke_tests: false })
}

#[test]
fn the_probe_finds_the_signature_of_real_models_and_runs_them_on_the_cpu() {
    let machine = this_machine();
    for name in ["tiny.pt", "tiny.pt2"] {
        let r = diagnose_model(&machine, &model_path(name));
        assert_eq!(r.facts.open_error, None, "{name}");
        assert_eq!(r.facts.resolved, Some(Ok(vec![info("x", DType::F32, &[1, 3, 128, 128])])), "{name}");
        assert_eq!(r.facts.outputs(), Some(&[info("output__0", DType::F32, &[1, 10])][..]), "{name}: {:?}", r.facts.cpu_run);
        assert!(r.modes[&Mode::Cpu].usable, "{name}: {}", r.modes[&Mode::Cpu].reason);
        assert_eq!(r.exit_code(&machine), machine.exit_code());
    }
    let r = diagnose_model(&machine, &model_path("tiny.pt2"));
    assert_eq!(r.facts.format, Some(Format::Aoti));
    assert!(r.facts.package.as_ref().is_some_and(PackageFacts::is_cpu) && !r.facts.cpu_flags.is_empty());
    let r = diagnose_model(&machine, &model_path("encoder.pt"));
    let inputs = r.facts.inputs.clone().unwrap().unwrap();
    assert_eq!(inputs.iter().map(|i| (i.name.as_str(), i.dtype, i.shape.clone())).collect::<Vec<_>>(), [
        ("input_ids", Some(DType::I64), Some(vec![1, 32])),
        ("attention_mask", Some(DType::I64), Some(vec![1, 32]))
    ]);
    assert_eq!(inputs[0].range, Some((0, 1000)));
    assert_eq!(inputs[1].range, Some((0, 2)));
    assert_eq!(r.facts.outputs(), Some(&[info("output__0", DType::F32, &[1, 32, 64]), info("output__1", DType::F32, &[1, 64])][..]), "{:?}", r.facts.cpu_run);
    assert!(r.modes[&Mode::Cpu].usable, "{}", r.modes[&Mode::Cpu].reason);
    let shm = &r.modes[&Mode::ShmIpc];
    assert!(!shm.usable && shm.reason.contains("one float32 tensor each way; the model takes 2 inputs"), "{}", shm.reason);
    if !machine.modes[&Mode::GpuCopy].usable {
        assert!(r.facts.gpu_sessions.is_empty(), "no GPU session without a GPU");
    }
    // No signature hint: still opens and gets verdicts, with a note.
    let r = diagnose_model(&machine, &model_path("noisy.pt"));
    assert!(r.modes[&Mode::Cpu].usable, "{}", r.modes[&Mode::Cpu].reason);
    assert!(r.notes.iter().any(|n| n.contains("--input-spec x=")), "{:?}", r.notes);
}

#[test]
fn a_garbage_file_does_not_load() {
    let machine = this_machine();
    let path = std::env::temp_dir().join(format!("uminfer-doctor-garbage-{}.pt", std::process::id()));
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&path, bytes).unwrap();
    let r = diagnose_model(&machine, &path);
    let _ = std::fs::remove_file(&path);
    let e = r.facts.open_error.as_deref().expect("garbage must not open");
    assert!(e.contains("neither a TorchScript file nor an AOTInductor package"), "{e}");
    assert!(Mode::ALL.iter().all(|m| !r.modes[m].usable && r.modes[m].reason.starts_with("does not load: neither")));
    assert_eq!(r.exit_code(&machine), 2);
}
