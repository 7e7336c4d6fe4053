//! Property-based fuzzing of the Open Inference Protocol's decoders (stable
//! Rust: proptest generation, not a coverage-guided fuzzer): the gRPC
//! request plan (`oip::tensors::plan`) over arbitrary `ModelInferRequest`s
//! and the REST codec (`oip::rest_codec::decode_request`) over arbitrary
//! JSON bodies and binary-extension headers. Neither may panic; a plan is
//! accepted only when an independent check says the request is whole.
//!
//! Bounded here (`.ci/run`); `cargo test --release --test oip_fuzz --
//! --ignored` runs 1 000 000 cases of each.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::HashMap;
use uminfer::model::TensorInfo;
use uminfer::oip::proto::infer_parameter::ParameterChoice;
use uminfer::oip::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use uminfer::oip::proto::{InferParameter, InferTensorContents, ModelInferRequest};
use uminfer::oip::shm::{Limits, Registry};
use uminfer::DType;

/// The model the requests are planned against: two int64 inputs and a
/// float32 one, two outputs (the encoder's kind of signature).
fn signature() -> (Vec<TensorInfo>, Vec<TensorInfo>) {
    let t = |name: &str, dtype, shape: &[i64]| TensorInfo { name: name.into(), dtype, shape: shape.to_vec() };
    (
        vec![t("input_ids", DType::I64, &[1, 4]), t("attention_mask", DType::I64, &[1, 4]), t("scale", DType::F32, &[1])],
        vec![t("output__0", DType::F32, &[1, 4, 2]), t("output__1", DType::F32, &[1, 2])],
    )
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["input_ids", "attention_mask", "scale", "INPUT__0", "INPUT__1", "INPUT__2", "INPUT__3", "output__0", "output__1", "OUTPUT__0", "OUTPUT__2", ""]).prop_map(String::from),
        1 => ".{0,12}",
    ]
}

fn datatype() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["INT64", "FP32", "FP16", "BF16", "INT32", "UINT8", "BOOL", "BYTES", "FP64", "INT8"]).prop_map(String::from),
        1 => ".{0,8}",
    ]
}

fn shape() -> impl Strategy<Value = Vec<i64>> {
    prop_oneof![
        3 => prop::sample::select(vec![vec![1, 4], vec![1], vec![4], vec![1, 4, 1]]),
        1 => prop::collection::vec(prop_oneof![Just(0i64), Just(-1), Just(i64::MAX), Just(1 << 40), 0i64..6], 0..5),
    ]
}

fn parameters() -> impl Strategy<Value = HashMap<String, InferParameter>> {
    let key = prop::sample::select(vec!["shared_memory_region", "shared_memory_byte_size", "shared_memory_offset", "binary_data_size", "other"]);
    let value = prop_oneof![
        "[a-z]{0,6}".prop_map(ParameterChoice::StringParam),
        prop_oneof![Just(-1i64), Just(0), Just(i64::MAX), 0i64..4096].prop_map(ParameterChoice::Int64Param),
        any::<bool>().prop_map(ParameterChoice::BoolParam),
    ];
    prop::collection::hash_map(key.prop_map(String::from), value.prop_map(|c| InferParameter { parameter_choice: Some(c) }), 0..3)
}

fn contents() -> impl Strategy<Value = Option<InferTensorContents>> {
    prop::option::weighted(
        0.3,
        (prop::collection::vec(any::<i64>(), 0..6), prop::collection::vec(any::<f32>(), 0..6), prop::collection::vec(any::<i32>(), 0..3), prop::collection::vec(any::<bool>(), 0..3))
            .prop_map(|(int64_contents, fp32_contents, int_contents, bool_contents)| InferTensorContents { int64_contents, fp32_contents, int_contents, bool_contents, ..Default::default() }),
    )
}

fn input() -> impl Strategy<Value = InferInputTensor> {
    (name(), datatype(), shape(), prop::option::weighted(0.2, parameters()), contents()).prop_map(|(name, datatype, shape, parameters, contents)| InferInputTensor {
        name,
        datatype,
        shape,
        parameters: parameters.unwrap_or_default(),
        contents,
    })
}

fn request() -> impl Strategy<Value = ModelInferRequest> {
    let raw = prop::collection::vec(prop_oneof![Just(32usize), Just(4), 0usize..40].prop_map(|n| vec![1u8; n]), 0..5);
    let outputs = prop::collection::vec((name(), prop::option::weighted(0.2, parameters())).prop_map(|(name, p)| InferRequestedOutputTensor { name, parameters: p.unwrap_or_default() }), 0..3);
    (prop::collection::vec(input(), 0..5), raw, outputs).prop_map(|(inputs, raw_input_contents, outputs)| ModelInferRequest {
        model_name: "m".into(),
        inputs,
        outputs,
        raw_input_contents,
        ..Default::default()
    })
}

/// A whole request for [`signature`] (raw contents), then (mostly) one
/// mutation: another name, datatype or shape for one input, an input
/// dropped or given twice, a raw buffer of another length, typed contents
/// added; and wholly random requests beside them.
fn near_whole_request() -> impl Strategy<Value = ModelInferRequest> {
    let whole = || {
        let t = |name: &str, datatype: &str, shape: &[i64]| InferInputTensor { name: name.into(), datatype: datatype.into(), shape: shape.to_vec(), ..Default::default() };
        ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![t("input_ids", "INT64", &[1, 4]), t("attention_mask", "INT64", &[1, 4]), t("scale", "FP32", &[1])],
            raw_input_contents: vec![vec![1; 32], vec![1; 32], vec![0; 4]],
            ..Default::default()
        }
    };
    let mutation = (0usize..8, 0usize..3, name(), datatype(), shape(), 0usize..40, contents());
    prop_oneof![
        2 => Just(whole()),
        5 => mutation.prop_map(move |(what, k, name, datatype, shape, len, contents)| {
            let mut r = whole();
            match what {
                0 => r.inputs[k].name = name,
                1 => r.inputs[k].datatype = datatype,
                2 => r.inputs[k].shape = shape,
                3 => {
                    r.inputs.remove(k);
                }
                4 => {
                    let again = r.inputs[k].clone();
                    r.inputs.push(again);
                }
                5 => r.raw_input_contents[k] = vec![1; len],
                6 => r.inputs[k].contents = contents,
                _ => r.inputs.swap(k, (k + 1) % 3),
            }
            r
        }),
        3 => request(),
    ]
}

/// The model input `t` names (by name, or `INPUT__<i>`), if any.
fn named(t: &InferInputTensor, inputs: &[TensorInfo]) -> Option<usize> {
    inputs.iter().position(|i| i.name == t.name).or_else(|| t.name.strip_prefix("INPUT__").and_then(|k| k.parse::<usize>().ok()).filter(|&k| k < inputs.len()))
}

/// The independent check of an accepted plan: every model input given
/// exactly once, each with the model's datatype and shape, and no tensor
/// naming anything else.
fn whole(req: &ModelInferRequest, inputs: &[TensorInfo]) -> Result<(), String> {
    let mut seen = vec![0usize; inputs.len()];
    for t in &req.inputs {
        let k = named(t, inputs).ok_or_else(|| format!("accepted an input named {:?}", t.name))?;
        seen[k] += 1;
        let want = &inputs[k];
        if t.shape != want.shape || t.datatype != want.dtype.oip_name() {
            return Err(format!("accepted {:?} as {} {:?} for {want}", t.name, t.datatype, t.shape));
        }
    }
    if seen.iter().any(|&n| n != 1) {
        return Err(format!("accepted inputs given {seen:?} times"));
    }
    Ok(())
}

fn plan_property(cases: u32) {
    let (inputs, outputs) = signature();
    let registry = Registry::new(Limits::default());
    let accepted = std::cell::Cell::new(0u32);
    runner(cases)
        .run(&near_whole_request(), |req| {
            if let Ok(plan) = uminfer::oip::tensors::plan(&req, "m", &inputs, &outputs, &registry) {
                prop_assert_eq!(plan.inputs.len(), inputs.len());
                prop_assert_eq!(plan.outputs.len(), outputs.len());
                whole(&req, &inputs).map_err(TestCaseError::fail)?;
                accepted.set(accepted.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    // Not a vacuous oracle: a share of the cases are whole and planned.
    assert!(accepted.get() > cases / 20, "{} of {cases} requests accepted", accepted.get());
}

/// A runner of `cases`, seeded alike on every run (a failure reproduces).
fn runner(cases: u32) -> TestRunner {
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let rng = proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm);
    TestRunner::new_with_rng(config, rng)
}

/// JSON bodies shaped like REST inference requests, with wrong types,
/// values and lengths mixed in.
fn json_body() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|v| json!(v)),
        any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| json!(v)),
        Just(json!(1e39)),
        Just(json!(u64::MAX)),
        ".{0,6}".prop_map(Value::String),
    ];
    let data = leaf.prop_recursive(3, 16, 4, |inner| prop::collection::vec(inner, 0..4).prop_map(Value::Array));
    let tensor = (name(), datatype(), prop_oneof![shape().prop_map(|s| json!(s)), data.clone()], data, prop::option::of(prop_oneof![Just(json!({"binary_data_size": 32})), Just(json!({"binary_data_size": -1})), Just(json!({"shared_memory_region": "r", "shared_memory_byte_size": 8}))]))
        .prop_map(|(name, datatype, shape, data, parameters)| {
            let mut t = json!({"name": name, "datatype": datatype, "shape": shape, "data": data});
            if let Some(p) = parameters {
                t["parameters"] = p;
            }
            t
        });
    let outputs = prop::collection::vec((name(), any::<bool>()).prop_map(|(n, b)| json!({"name": n, "parameters": {"binary_data": b}})), 0..3);
    (prop::collection::vec(tensor, 0..4), outputs, any::<bool>()).prop_map(|(inputs, outputs, binary)| json!({"id": "x", "inputs": inputs, "outputs": outputs, "parameters": {"binary_data_output": binary}}))
}

fn rest_property(cases: u32) {
    let (inputs, outputs) = signature();
    let registry = Registry::new(Limits::default());
    let body = (json_body(), prop::collection::vec(any::<u8>(), 0..48), prop::option::of(0usize..200));
    runner(cases)
        .run(&body, |(json, tail, header_len)| {
            let mut bytes = serde_json::to_vec(&json).unwrap();
            // A binary-extension body: the JSON header, then raw tensor bytes;
            // `header_len` (the Inference-Header-Content-Length) right or wrong.
            let header_len = header_len.map(|h| if h % 3 == 0 { bytes.len() } else { h });
            bytes.extend_from_slice(&tail);
            if let Ok(rest) = uminfer::oip::rest_codec::decode_request("m", "", header_len, &bytes) {
                if let Ok(plan) = uminfer::oip::tensors::plan(&rest.message, "m", &inputs, &outputs, &registry) {
                    prop_assert_eq!(plan.inputs.len(), inputs.len());
                    whole(&rest.message, &inputs).map_err(TestCaseError::fail)?;
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn grpc_request_plans_never_panic_and_accept_only_whole_requests() {
    plan_property(5_000);
}

#[test]
fn rest_bodies_never_panic_and_decode_only_whole_requests() {
    rest_property(3_000);
}

/// The closing-note run: 1 000 000 cases of each decoder.
#[test]
#[ignore = "a long run: cargo test --release --test oip_fuzz -- --ignored"]
fn a_million_cases_of_each_decoder() {
    plan_property(1_000_000);
    rest_property(1_000_000);
}
