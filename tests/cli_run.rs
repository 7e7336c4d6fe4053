//! `uminfer run` as a user runs it: named inputs from `.npy` / `.npz` files,
//! several outputs into an `.npz`, `--describe`, and the errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use uminfer::host_tensor::{read_npy, read_npz, write_npy};

fn run(args: &[&str]) -> Output {
    Command::new(common::uminfer_bin()).arg("run").args(args).output().expect("running the uminfer binary")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(what: &str) -> Scratch {
    let p = std::env::temp_dir().join(format!("uminfer-run-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    Scratch(p)
}

#[test]
fn a_bert_like_model_runs_from_named_npy_files_into_an_npz() {
    let dir = scratch("encoder");
    let inputs = read_npz(&common::model_path("encoder.inputs.npz")).unwrap();
    for t in &inputs {
        write_npy(&dir.0.join(format!("{}.npy", t.name)), t).unwrap();
    }
    let (ids, mask, out) = (dir.0.join("input_ids.npy"), dir.0.join("attention_mask.npy"), dir.0.join("out.npz"));
    let o = run(&["--model", path(&common::model_path("encoder.pt")), "--input", &format!("input_ids={}", path(&ids)), "--input", &format!("attention_mask={}", path(&mask)), "--output", path(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = read_npz(&out).unwrap();
    let want = read_npz(&common::model_path("encoder.expected.npz")).unwrap();
    assert_eq!(got.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["output__0", "output__1"]);
    for (g, w) in got.iter().zip(&want) {
        g.check_close(w, 1e-5).unwrap();
    }
    // Several outputs do not fit one .npy.
    let o = run(&["--model", path(&common::model_path("encoder.pt")), "--input", path(&common::model_path("encoder.inputs.npz")), "--output", path(&dir.0.join("y.npy"))]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--output: invalid argument: 2 tensors (output__0, output__1) do not fit one .npy file"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn every_dtype_from_an_npz_and_a_package_from_its_file() {
    let dir = scratch("dtypes");
    let out = dir.0.join("out.npz");
    let o = run(&["--model", path(&common::model_path("dtypes.pt")), "--input", path(&common::model_path("dtypes.inputs.npz")), "--output", path(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("input `a_bf16`: float32 values converted to bf16") && stderr.contains("output `output__2.0` is bf16: written as float32"), "{stderr}");
    let (got, want) = (read_npz(&out).unwrap(), read_npz(&common::model_path("dtypes.expected.npz")).unwrap());
    assert_eq!(got, want, "every dtype exactly as PyTorch computed it");

    let y = dir.0.join("y.npy");
    let o = run(&["--model", path(&common::model_path("tiny.pt2")), "--input", path(&common::model_path("tiny.input.npy")), "--output", path(&y)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = read_npz(&common::model_path("tiny.pt2.expected.npz")).unwrap();
    let mut got = read_npy(&y).unwrap();
    got.name = "output__0".into();
    got.check_close(&want[0], 1e-6).unwrap();
}

#[test]
fn describe_prints_the_signature_and_says_what_is_not_recorded() {
    let o = run(&["--model", path(&common::model_path("heads.pt")), "--describe", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format"], "torchscript");
    let outputs: Vec<&str> = v["outputs"]["Ok"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(outputs, ["logits", "probs", "embedding"]);
    let o = run(&["--model", path(&common::model_path("noisy.pt")), "--describe"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("x                    dtype not recorded shape not recorded") && text.contains("--input-spec x=DTYPE:DIMS"), "{text}");
    let o = run(&["--model", path(&common::model_path("noisy.pt")), "--describe", "--input-spec", "x=float32:1,3,8,8"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("output__0            float32 [1, 3]"), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn inputs_that_do_not_fit_are_refused_with_the_models_names() {
    let dir = scratch("mismatch");
    let ids = dir.0.join("ids.npy");
    write_npy(&ids, &read_npz(&common::model_path("encoder.inputs.npz")).unwrap()[0]).unwrap();
    let o = run(&["--model", path(&common::model_path("encoder.pt")), "--input", &format!("tokens={}", path(&ids)), "--output", path(&dir.0.join("o.npz"))]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("the model has no input `tokens`, input `input_ids`, `attention_mask` not given"), "{stderr}");
    let o = run(&["--model", path(&common::model_path("bad_output.pt")), "--describe"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("`output__1` is an Int"), "{}", String::from_utf8_lossy(&o.stdout));
}
