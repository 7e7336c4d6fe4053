//! `uminfer doctor` run as a user runs it: the built binary, text and JSON.

mod common;

use serde_json::Value;
use std::process::{Command, Output};

fn doctor(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::uminfer_bin());
    cmd.arg("doctor").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running the uminfer binary")
}

fn json_report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

const MODE_IDS: [&str; 6] = ["cpu", "shm-ipc", "gpu-copy", "gpu-pinned", "gpu-managed", "gpu-managed-graph"];

fn assert_schema(v: &Value) {
    assert_eq!(v["schema_version"], 1);
    let checks = v["checks"].as_array().expect("checks array");
    assert!(checks.len() >= 10, "too few checks: {}", checks.len());
    for c in checks {
        for field in ["id", "section", "status", "message"] {
            assert!(c[field].is_string(), "check lacks string `{field}`: {c}");
        }
        assert!(c.get("hint").is_some(), "check lacks `hint`: {c}");
        let st = c["status"].as_str().unwrap();
        assert!(["pass", "warn", "fail", "skip"].contains(&st), "bad status {st}");
        if st == "warn" || st == "fail" {
            assert!(c["hint"].is_string(), "warn/fail without a hint: {c}");
        }
    }
    for m in MODE_IDS {
        assert!(v["modes"][m]["usable"].is_boolean(), "mode {m} lacks usable: {}", v["modes"]);
        assert!(v["modes"][m]["reason"].as_str().is_some_and(|r| !r.is_empty()), "mode {m} lacks a reason");
    }
}

#[test]
fn json_report_has_the_schema_and_this_machines_verdict() {
    let out = doctor(&["--json"], &[]);
    let v = json_report(&out);
    assert_schema(&v);
    assert_eq!(v["modes"]["cpu"]["usable"], true, "{}", v["modes"]);
    assert_eq!(v["modes"]["shm-ipc"]["usable"], true, "{}", v["modes"]);
    let kernels_ok = v["checks"].as_array().unwrap().iter().any(|c| c["id"] == "kernels.smoke" && c["status"] == "pass");
    assert!(kernels_ok, "kernels/smoke.cu should compile through NVRTC on every machine");
    match common::gpu_unavailable() {
        Some(_) => {
            // A machine without GPU (CI): GPU modes unusable because of the driver, warnings only.
            assert_eq!(out.status.code(), Some(1), "exit code on a machine without GPU");
            for m in &MODE_IDS[2..] {
                assert_eq!(v["modes"][m]["usable"], false);
                assert!(v["modes"][m]["reason"].as_str().unwrap().contains("CUDA driver") || v["modes"][m]["reason"].as_str().unwrap().contains("GPU"));
            }
        }
        None => {
            assert!(matches!(out.status.code(), Some(0) | Some(1)), "exit code {:?}", out.status.code());
            assert_eq!(v["modes"]["gpu-copy"]["usable"], true, "{}", v["modes"]);
        }
    }
}

#[test]
fn text_report_is_grouped_and_uncoloured_when_piped() {
    let out = doctor(&[], &[]);
    let text = String::from_utf8(out.stdout).unwrap();
    for heading in ["Build", "libtorch", "CUDA driver", "Devices", "Kernels (NVRTC)", "Shared memory", "Environment", "Execution modes"] {
        assert!(text.lines().any(|l| l == heading), "missing section {heading}:\n{text}");
    }
    assert!(!text.contains('\x1b'), "colour codes in piped output");
    for m in MODE_IDS {
        assert!(text.contains(m), "mode {m} missing:\n{text}");
    }
    assert!(matches!(out.status.code(), Some(0) | Some(1)));
}

#[test]
fn no_panic_with_ld_library_path_on_an_empty_directory() {
    let empty = std::env::temp_dir().join(format!("uminfer-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    // The empty directory goes first; what the caller's environment needs
    // (a GPU host running a bundle finds libtorch through LD_LIBRARY_PATH) stays after it.
    let path = match std::env::var("LD_LIBRARY_PATH") {
        Ok(rest) if !rest.is_empty() => format!("{}:{rest}", empty.display()),
        _ => empty.display().to_string(),
    };
    let out = doctor(&["--json"], &[("LD_LIBRARY_PATH", &path)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "doctor panicked:\n{stderr}");
    assert_ne!(out.status.code(), Some(101));
    let v = json_report(&out);
    assert_schema(&v);
    let env = v["checks"].as_array().unwrap().iter().find(|c| c["id"] == "env.vars").unwrap();
    assert!(env["message"].as_str().unwrap().contains(empty.to_str().unwrap()));
}

/// `doctor --model`: the machine report plus the model's signature and a
/// verdict per mode; a file that is no model exits 2.
#[test]
fn doctor_diagnoses_a_model_and_refuses_a_file_that_is_none() {
    let model = common::model_path("encoder.pt");
    let out = doctor(&["--no-smoke", "--json", "--model", model.to_str().unwrap()], &[]);
    let v = json_report(&out);
    assert_schema(&v);
    let m = &v["model"];
    let inputs = m["facts"]["inputs"]["Ok"].as_array().expect("inputs");
    assert_eq!(inputs.iter().map(|i| i["name"].as_str().unwrap()).collect::<Vec<_>>(), ["input_ids", "attention_mask"]);
    assert_eq!(m["modes"]["cpu"]["usable"], true, "{m}");
    assert_eq!(m["modes"]["shm-ipc"]["usable"], false, "{m}");
    assert_ne!(out.status.code(), Some(2));

    let text = doctor(&["--no-smoke", "--model", model.to_str().unwrap()], &[("NO_COLOR", "1")]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("input attention_mask i64 [1, 32], values in [0, 2)") && text.contains("output output__1     f32 [1, 64]"), "{text}");

    let junk = std::env::temp_dir().join(format!("uminfer-doctor-junk-{}.pt", std::process::id()));
    std::fs::write(&junk, b"no model").unwrap();
    let out = doctor(&["--no-smoke", "--model", junk.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("neither a TorchScript file nor an AOTInductor package"));
    let _ = std::fs::remove_file(junk);
}
