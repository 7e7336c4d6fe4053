//! The Open Inference Protocol's REST/JSON form of an inference request and
//! its answer, translated to and from the gRPC messages the service runs on,
//! with Triton's binary tensor data extension: a body whose first
//! `Inference-Header-Content-Length` bytes are the JSON header and whose rest
//! holds the tensors named `"binary_data_size"` in the header, raw and
//! little-endian, in the order of the header's inputs. Outputs go back in
//! the same form when the request asks for it (an output's
//! `"binary_data": true`, or the request's `"binary_data_output": true`),
//! else as a JSON `"data"` array.

use super::proto::infer_parameter::ParameterChoice;
use super::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use super::proto::{InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse};
use super::status::RequestError;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The parameter of an input or output that gives its length in the binary part.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// The request parameter that asks for every output in binary form.
const BINARY_DATA_OUTPUT: &str = "binary_data_output";
/// The output parameter that asks for it in binary form.
const BINARY_DATA: &str = "binary_data";
/// The `FP32` datatype, the only one whose JSON `"data"` is read (others are
/// refused by the request checks, naming the datatype).
const FP32: &str = super::models::FP32;

/// A decoded REST request: the gRPC message, and which outputs go back in
/// binary form.
#[derive(Debug)]
pub struct RestRequest {
    /// The request as the gRPC service takes it.
    pub message: ModelInferRequest,
    /// Every output in binary form (`"binary_data_output": true`).
    binary_all: bool,
    /// Outputs asked for by name: in binary form or not, and their parameters.
    outputs: HashMap<String, (bool, HashMap<String, InferParameter>)>,
}

fn invalid(what: impl std::fmt::Display) -> RequestError {
    RequestError::Invalid(what.to_string())
}

/// Decodes the body of `POST /v2/models/{model}[/versions/{version}]/infer`.
/// `header_len` is the `Inference-Header-Content-Length` header, when the
/// body carries binary tensor data after its JSON.
pub fn decode_request(model: &str, version: &str, header_len: Option<usize>, body: &[u8]) -> Result<RestRequest, RequestError> {
    let (json_part, mut binary) = match header_len {
        None => (body, &[][..]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => return Err(invalid(format!("Inference-Header-Content-Length is {n}, but the body has only {} bytes", body.len()))),
    };
    let header: Value = serde_json::from_slice(json_part).map_err(|e| invalid(format!("the request's JSON header does not parse: {e}")))?;
    let header = header.as_object().ok_or_else(|| invalid("the request's JSON header must be an object with \"inputs\""))?;
    let parameters = parse_parameters(header.get("parameters"), "the request")?;
    let binary_all = matches!(parameters.get(BINARY_DATA_OUTPUT), Some(InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(true)) }));
    let mut message = ModelInferRequest {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id: optional_str(header, "id", "the request")?.unwrap_or_default(),
        parameters,
        ..Default::default()
    };
    let inputs = header.get("inputs").and_then(Value::as_array).ok_or_else(|| invalid("the request has no \"inputs\" array"))?;
    let mut raw = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let input = input.as_object().ok_or_else(|| invalid(format!("input {i} is not a JSON object")))?;
        let name = required_str(input, "name", &format!("input {i}"))?;
        let what = format!("input {name:?}");
        let datatype = required_str(input, "datatype", &what)?;
        let shape = input
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|dims| dims.iter().map(Value::as_i64).collect::<Option<Vec<i64>>>())
            .ok_or_else(|| invalid(format!("{what} needs a \"shape\" array of integers")))?;
        let parameters = parse_parameters(input.get("parameters"), &what)?;
        let mut contents = None;
        if let Some(size) = parameters.get(BINARY_DATA_SIZE) {
            let size = unsigned(size).ok_or_else(|| invalid(format!("{what}: {BINARY_DATA_SIZE} must be a non-negative integer")))?;
            let size = usize::try_from(size).ok().filter(|&s| s <= binary.len()).ok_or_else(|| {
                invalid(format!("{what} has {BINARY_DATA_SIZE} {size}, but only {} bytes of binary data are left in the body", binary.len()))
            })?;
            let (bytes, rest) = binary.split_at(size);
            raw.push(bytes.to_vec());
            binary = rest;
        } else if let Some(data) = input.get("data") {
            if datatype == FP32 {
                let mut values = Vec::new();
                flatten(data, &mut values).map_err(|e| invalid(format!("{what}: {e}")))?;
                contents = Some(InferTensorContents { fp32_contents: values, ..Default::default() });
            }
        }
        message.inputs.push(InferInputTensor { name, datatype, shape, parameters, contents });
    }
    if !binary.is_empty() {
        return Err(invalid(format!("{} bytes of binary data are left after the inputs that name a {BINARY_DATA_SIZE}", binary.len())));
    }
    if !raw.is_empty() && raw.len() != message.inputs.len() {
        return Err(invalid("some inputs carry binary data and others JSON data: send every input's data the same way"));
    }
    message.raw_input_contents = raw;
    let mut outputs = HashMap::new();
    if let Some(list) = header.get("outputs") {
        let list = list.as_array().ok_or_else(|| invalid("\"outputs\" must be an array"))?;
        for (i, output) in list.iter().enumerate() {
            let output = output.as_object().ok_or_else(|| invalid(format!("output {i} is not a JSON object")))?;
            let name = required_str(output, "name", &format!("output {i}"))?;
            let parameters = parse_parameters(output.get("parameters"), &format!("output {name:?}"))?;
            let binary = matches!(parameters.get(BINARY_DATA), Some(InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(true)) }));
            message.outputs.push(InferRequestedOutputTensor { name: name.clone(), parameters: parameters.clone() });
            outputs.insert(name, (binary, parameters));
        }
    }
    Ok(RestRequest { message, binary_all, outputs })
}

impl RestRequest {
    /// Whether some output of the answer goes back as JSON `"data"` (not
    /// binary, not shared memory): encoding it costs more than a copy.
    pub fn json_outputs(&self) -> bool {
        !self.binary_all && (self.outputs.is_empty() || self.outputs.values().any(|(binary, p)| !binary && !p.contains_key(super::shm::REGION)))
    }
}

/// A REST answer body: JSON, followed by binary tensor data when
/// `header_len` is given (the `Inference-Header-Content-Length` to send).
#[derive(Debug)]
pub struct RestBody {
    /// The bytes to send.
    pub body: Vec<u8>,
    /// The JSON header's length, when binary data follows it.
    pub header_len: Option<usize>,
}

/// Encodes the service's answer to `req`: each output as JSON `"data"`, as
/// binary data after the JSON, or (written to shared memory) with the
/// region's parameters and no data.
pub fn encode_response(req: &RestRequest, resp: &ModelInferResponse) -> Result<RestBody, RequestError> {
    let mut binary = Vec::new();
    let mut outputs = Vec::new();
    for (i, out) in resp.outputs.iter().enumerate() {
        let wish = req.outputs.get(&out.name);
        let mut o = json!({ "name": out.name, "datatype": out.datatype, "shape": out.shape });
        match resp.raw_output_contents.get(i) {
            None => {
                // Written to the shared memory region the request named.
                let params = wish.map(|(_, p)| parameters_json(p)).unwrap_or_default();
                o["parameters"] = Value::Object(params);
            }
            Some(bytes) if req.binary_all || wish.is_some_and(|(binary, _)| *binary) => {
                o["parameters"] = json!({ BINARY_DATA_SIZE: bytes.len() });
                binary.extend_from_slice(bytes);
            }
            Some(bytes) => {
                if out.datatype != FP32 || bytes.len() % 4 != 0 {
                    return Err(RequestError::Unimplemented(format!("output {:?} is {} in {} bytes; JSON data is written for FP32 outputs only", out.name, out.datatype, bytes.len())));
                }
                let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                o["data"] = json!(values);
            }
        }
        outputs.push(o);
    }
    let mut answer = json!({ "model_name": resp.model_name, "model_version": resp.model_version, "outputs": outputs });
    if !resp.id.is_empty() {
        answer["id"] = json!(resp.id);
    }
    let mut body = serde_json::to_vec(&answer).map_err(|e| RequestError::Invalid(format!("encoding the answer: {e}")))?;
    let header_len = (!binary.is_empty()).then_some(body.len());
    body.extend_from_slice(&binary);
    Ok(RestBody { body, header_len })
}

/// A JSON object of parameters as the gRPC message's map: booleans, integers,
/// floating-point numbers and strings.
fn parse_parameters(v: Option<&Value>, what: &str) -> Result<HashMap<String, InferParameter>, RequestError> {
    let Some(v) = v else { return Ok(HashMap::new()) };
    let map = v.as_object().ok_or_else(|| invalid(format!("{what}: \"parameters\" must be a JSON object")))?;
    map.iter()
        .map(|(k, v)| {
            let choice = match v {
                Value::Bool(b) => ParameterChoice::BoolParam(*b),
                Value::String(s) => ParameterChoice::StringParam(s.clone()),
                Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                    (Some(i), _, _) => ParameterChoice::Int64Param(i),
                    (None, Some(u), _) => ParameterChoice::Uint64Param(u),
                    (_, _, Some(f)) => ParameterChoice::DoubleParam(f),
                    _ => return Err(invalid(format!("{what}: parameter {k:?} is a number out of range"))),
                },
                _ => return Err(invalid(format!("{what}: parameter {k:?} must be a boolean, a number or a string"))),
            };
            Ok((k.clone(), InferParameter { parameter_choice: Some(choice) }))
        })
        .collect()
}

/// The gRPC parameters as a JSON object (the answer's echo of an output's
/// shared memory parameters).
fn parameters_json(p: &HashMap<String, InferParameter>) -> Map<String, Value> {
    p.iter()
        .filter_map(|(k, v)| {
            let v = match v.parameter_choice.as_ref()? {
                ParameterChoice::BoolParam(b) => json!(b),
                ParameterChoice::Int64Param(i) => json!(i),
                ParameterChoice::Uint64Param(u) => json!(u),
                ParameterChoice::DoubleParam(f) => json!(f),
                ParameterChoice::StringParam(s) => json!(s),
            };
            Some((k.clone(), v))
        })
        .collect()
}

fn unsigned(p: &InferParameter) -> Option<u64> {
    match p.parameter_choice {
        Some(ParameterChoice::Int64Param(i)) => u64::try_from(i).ok(),
        Some(ParameterChoice::Uint64Param(u)) => Some(u),
        _ => None,
    }
}

fn required_str(obj: &Map<String, Value>, key: &str, what: &str) -> Result<String, RequestError> {
    optional_str(obj, key, what)?.ok_or_else(|| invalid(format!("{what} needs a {key:?} string")))
}

fn optional_str(obj: &Map<String, Value>, key: &str, what: &str) -> Result<Option<String>, RequestError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("{what}: {key:?} must be a string"))),
    }
}

/// Appends the numbers of `data` (nested arrays, row-major, or one flat
/// array) to `out` as f32.
fn flatten(data: &Value, out: &mut Vec<f32>) -> Result<(), String> {
    match data {
        Value::Array(items) => items.iter().try_for_each(|item| flatten(item, out)),
        Value::Number(n) => {
            out.push(n.as_f64().ok_or_else(|| format!("{n} is not a number an FP32 holds"))? as f32);
            Ok(())
        }
        other => Err(format!("\"data\" of an {FP32} input must hold numbers, found {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oip::proto::model_infer_response::InferOutputTensor;

    fn response(raw: Vec<Vec<u8>>) -> ModelInferResponse {
        ModelInferResponse {
            model_name: "tiny".into(),
            model_version: "1".into(),
            id: "r7".into(),
            outputs: vec![InferOutputTensor { name: "output__0".into(), datatype: "FP32".into(), shape: vec![1, 2], ..Default::default() }],
            raw_output_contents: raw,
            ..Default::default()
        }
    }

    #[test]
    fn json_data_nested_or_flat_becomes_fp32_contents() {
        let body = br#"{"id":"r7","inputs":[{"name":"input__0","datatype":"FP32","shape":[1,2,2],"data":[[1,2],[3.5,-4]]}]}"#;
        let r = decode_request("tiny", "", None, body).unwrap();
        assert_eq!(r.message.model_name, "tiny");
        assert_eq!(r.message.id, "r7");
        assert_eq!(r.message.inputs[0].shape, vec![1, 2, 2]);
        assert_eq!(r.message.inputs[0].contents.as_ref().unwrap().fp32_contents, vec![1.0, 2.0, 3.5, -4.0]);
        assert!(r.message.raw_input_contents.is_empty());
    }

    #[test]
    fn binary_inputs_are_cut_from_the_body_after_the_json_header() {
        let header = br#"{"inputs":[{"name":"input__0","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}],"outputs":[{"name":"output__0","parameters":{"binary_data":true}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&2.5f32.to_le_bytes());
        let r = decode_request("tiny", "1", Some(header.len()), &body).unwrap();
        assert_eq!(r.message.raw_input_contents, vec![body[header.len()..].to_vec()]);
        assert_eq!(r.message.outputs[0].name, "output__0");
        let bytes: Vec<u8> = [0.25f32, 8.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = encode_response(&r, &response(vec![bytes.clone()])).unwrap();
        let n = out.header_len.expect("binary output follows the JSON");
        assert_eq!(&out.body[n..], &bytes[..]);
        let json: Value = serde_json::from_slice(&out.body[..n]).unwrap();
        assert_eq!(json["outputs"][0]["parameters"][BINARY_DATA_SIZE], 8);
        assert_eq!(json["outputs"][0]["shape"], json!([1, 2]));
        assert!(json["outputs"][0].get("data").is_none());
    }

    #[test]
    fn outputs_are_json_data_unless_binary_is_asked_for() {
        let body = br#"{"id":"r7","inputs":[{"name":"input__0","datatype":"FP32","shape":[2],"data":[1,2]}]}"#;
        let r = decode_request("tiny", "", None, body).unwrap();
        assert!(r.json_outputs(), "no output named, no binary_data_output");
        let bytes: Vec<u8> = [0.25f32, 8.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = encode_response(&r, &response(vec![bytes])).unwrap();
        assert!(out.header_len.is_none());
        let json: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(json["outputs"][0]["data"], json!([0.25, 8.0]));
        assert_eq!(json["id"], "r7");
        let all = br#"{"parameters":{"binary_data_output":true},"inputs":[{"name":"input__0","datatype":"FP32","shape":[2],"data":[1,2]}]}"#;
        let r = decode_request("tiny", "", None, all).unwrap();
        assert!(!r.json_outputs());
        let out = encode_response(&r, &response(vec![vec![0; 8]])).unwrap();
        assert_eq!(out.header_len, Some(out.body.len() - 8));
    }

    #[test]
    fn shared_memory_outputs_echo_their_parameters_and_carry_no_data() {
        let body = br#"{"inputs":[{"name":"input__0","datatype":"FP32","shape":[2],"data":[1,2]}],"outputs":[{"name":"output__0","parameters":{"shared_memory_region":"out","shared_memory_byte_size":8}}]}"#;
        let r = decode_request("tiny", "", None, body).unwrap();
        assert!(!r.json_outputs(), "the output goes to shared memory");
        let out = encode_response(&r, &response(vec![])).unwrap();
        let json: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(json["outputs"][0]["parameters"], json!({"shared_memory_region": "out", "shared_memory_byte_size": 8}));
        assert!(json["outputs"][0].get("data").is_none());
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let err = |body: &[u8], header_len| decode_request("tiny", "", header_len, body).unwrap_err().to_string();
        assert!(err(b"{not json", None).contains("does not parse"));
        assert!(err(b"[]", None).contains("must be an object"));
        assert!(err(br#"{"inputs":[{"name":"x","datatype":"FP32"}]}"#, None).contains("\"shape\" array"));
        assert!(err(br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":["a"]}]}"#, None).contains("must hold numbers"));
        assert!(err(b"{}", Some(99)).contains("only 2 bytes"));
        let h = br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}]}"#;
        let mut body = h.to_vec();
        body.extend_from_slice(&[0; 4]);
        assert!(err(&body, Some(h.len())).contains("only 4 bytes of binary data"));
        body.extend_from_slice(&[0; 8]);
        assert!(err(&body, Some(h.len())).contains("4 bytes of binary data are left"));
    }
}
