//! The Open Inference Protocol's REST/JSON form of an inference request and
//! its answer, translated to and from the gRPC messages the service runs on,
//! with Triton's binary tensor data extension: a body whose first
//! `Inference-Header-Content-Length` bytes are the JSON header and whose rest
//! holds the tensors named `"binary_data_size"` in the header, raw and
//! little-endian, in the order of the header's inputs. Outputs go back in
//! the same form when the request asks for it (an output's
//! `"binary_data": true`, or the request's `"binary_data_output": true`),
//! else as a JSON `"data"` array. JSON `"data"` is read and written for every
//! datatype uminfer carries (booleans for `BOOL`, integers, numbers; `FP16`
//! and `BF16` through `f32`): an input's JSON data becomes its little-endian
//! bytes, as binary data would be.

use super::proto::infer_parameter::ParameterChoice;
use super::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use super::proto::{InferParameter, ModelInferRequest, ModelInferResponse};
use crate::dtype::DType;
use super::status::{echo, echo_debug, echo_value, RequestError};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The parameter of an input or output that gives its length in the binary part.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// The request parameter that asks for every output in binary form.
const BINARY_DATA_OUTPUT: &str = "binary_data_output";
/// The output parameter that asks for it in binary form.
const BINARY_DATA: &str = "binary_data";

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
        let what = format!("input {}", echo(&name));
        let datatype = required_str(input, "datatype", &what)?;
        let shape = input
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|dims| dims.iter().map(Value::as_i64).collect::<Option<Vec<i64>>>())
            .ok_or_else(|| invalid(format!("{what} needs a \"shape\" array of integers")))?;
        let parameters = parse_parameters(input.get("parameters"), &what)?;
        if let Some(size) = parameters.get(BINARY_DATA_SIZE) {
            let size = unsigned(size).ok_or_else(|| invalid(format!("{what}: {BINARY_DATA_SIZE} must be a non-negative integer")))?;
            let size = usize::try_from(size).ok().filter(|&s| s <= binary.len()).ok_or_else(|| {
                invalid(format!("{what} has {BINARY_DATA_SIZE} {size}, but only {} bytes of binary data are left in the body", binary.len()))
            })?;
            let (bytes, rest) = binary.split_at(size);
            raw.push(bytes.to_vec());
            binary = rest;
        } else if let Some(data) = input.get("data") {
            let dtype = super::tensors::datatype(&datatype).ok_or_else(|| {
                invalid(format!("{what} has datatype {}, which uminfer does not carry (BOOL, UINT8, INT8, INT16, INT32, INT64, FP16, BF16, FP32, FP64)", echo(&datatype)))
            })?;
            let mut values = Vec::new();
            flatten(data, &mut values).map_err(|e| invalid(format!("{what}: {e}")))?;
            let n = shape.iter().try_fold(1usize, |n, &d| usize::try_from(d).ok().and_then(|d| n.checked_mul(d)));
            if n != Some(values.len()) {
                return Err(invalid(format!("{what} has {} values in \"data\"; shape {} needs {}", values.len(), echo_debug(&shape), n.map_or("more".into(), |n| n.to_string()))));
            }
            raw.push(encode_json(dtype, &values).map_err(|e| invalid(format!("{what}: {e}")))?);
        }
        message.inputs.push(InferInputTensor { name, datatype, shape, parameters, contents: None });
    }
    if !binary.is_empty() {
        return Err(invalid(format!("{} bytes of binary data are left after the inputs that name a {BINARY_DATA_SIZE}", binary.len())));
    }
    message.raw_input_contents = raw;
    let mut outputs = HashMap::new();
    if let Some(list) = header.get("outputs") {
        let list = list.as_array().ok_or_else(|| invalid("\"outputs\" must be an array"))?;
        for (i, output) in list.iter().enumerate() {
            let output = output.as_object().ok_or_else(|| invalid(format!("output {i} is not a JSON object")))?;
            let name = required_str(output, "name", &format!("output {i}"))?;
            let parameters = parse_parameters(output.get("parameters"), &format!("output {}", echo(&name)))?;
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
        let in_shm = wish.is_some_and(|(_, p)| p.contains_key(super::shm::REGION));
        match resp.raw_output_contents.get(i) {
            _ if in_shm => {
                // Written to the shared memory region the request named.
                let params = wish.map(|(_, p)| parameters_json(p)).unwrap_or_default();
                o["parameters"] = Value::Object(params);
            }
            Some(bytes) if req.binary_all || wish.is_some_and(|(binary, _)| *binary) => {
                o["parameters"] = json!({ BINARY_DATA_SIZE: bytes.len() });
                binary.extend_from_slice(bytes);
            }
            Some(bytes) => {
                let dtype = super::tensors::datatype(&out.datatype).ok_or_else(|| RequestError::Invalid(format!("output {:?} has datatype {}", out.name, out.datatype)))?;
                o["data"] = json_values(dtype, &out.name, bytes)?;
            }
            None => return Err(RequestError::Invalid(format!("the answer carries no data for output {:?}", out.name))),
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
                    _ => return Err(invalid(format!("{what}: parameter {} is a number out of range", echo(k)))),
                },
                _ => return Err(invalid(format!("{what}: parameter {} must be a boolean, a number or a string", echo(k)))),
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

/// Appends the values of `data` (nested arrays, row-major, or one flat
/// array; numbers and booleans) to `out`.
fn flatten<'v>(data: &'v Value, out: &mut Vec<&'v Value>) -> Result<(), String> {
    match data {
        Value::Array(items) => items.iter().try_for_each(|item| flatten(item, out)),
        Value::Number(_) | Value::Bool(_) => {
            out.push(data);
            Ok(())
        }
        other => Err(format!("\"data\" must hold numbers (or booleans for BOOL), found {}", echo_value(other))),
    }
}

/// JSON values as the little-endian bytes of `dtype`: integers must be
/// integers within the datatype's range, floating-point numbers within its
/// finite range (they are rounded to its precision), booleans only for
/// `BOOL`. A value that does not fit is refused naming it, its position and
/// the datatype's range, never wrapped, truncated or made infinite.
fn encode_json(dtype: DType, values: &[&Value]) -> Result<Vec<u8>, String> {
    let name = dtype.oip_name();
    let refuse = |k: usize, v: &Value, why: &str| format!("value {} at {k} {why}: {name} takes {}", echo_value(v), range(dtype));
    let int = |k: usize, v: &Value| -> Result<i64, String> {
        if let Some(i) = v.as_i64() {
            return Ok(i);
        }
        match v {
            Value::Number(n) if n.is_u64() => Err(refuse(k, v, "is out of range")),
            Value::Number(_) => Err(refuse(k, v, "is not an integer")),
            _ => Err(refuse(k, v, "is not a number")),
        }
    };
    fn fit<T: TryFrom<i64>>(i: i64, k: usize, v: &Value, refuse: &impl Fn(usize, &Value, &str) -> String) -> Result<T, String> {
        T::try_from(i).map_err(|_| refuse(k, v, "is out of range"))
    }
    let float = |k: usize, v: &Value| v.as_f64().ok_or_else(|| refuse(k, v, "is not a number"));
    let finite = |x: bool, k: usize, v: &Value| if x { Ok(()) } else { Err(refuse(k, v, "is out of range")) };
    let len = values.len().saturating_mul(dtype.size());
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|_| format!("the server cannot allocate {len} bytes for it now; retry later"))?;
    for (k, &v) in values.iter().enumerate() {
        match dtype {
            DType::Bool => out.push(u8::from(v.as_bool().ok_or_else(|| refuse(k, v, "is not a boolean"))?)),
            DType::U8 => out.push(fit::<u8>(int(k, v)?, k, v, &refuse)?),
            DType::I8 => out.extend(fit::<i8>(int(k, v)?, k, v, &refuse)?.to_le_bytes()),
            DType::I16 => out.extend(fit::<i16>(int(k, v)?, k, v, &refuse)?.to_le_bytes()),
            DType::I32 => out.extend(fit::<i32>(int(k, v)?, k, v, &refuse)?.to_le_bytes()),
            DType::I64 => out.extend(int(k, v)?.to_le_bytes()),
            DType::F16 => {
                let x = half::f16::from_f64(float(k, v)?);
                finite(x.is_finite(), k, v)?;
                out.extend(x.to_le_bytes())
            }
            DType::Bf16 => {
                let x = half::bf16::from_f64(float(k, v)?);
                finite(x.is_finite(), k, v)?;
                out.extend(x.to_le_bytes())
            }
            DType::F32 => {
                let x = float(k, v)? as f32;
                finite(x.is_finite(), k, v)?;
                out.extend(x.to_le_bytes())
            }
            DType::F64 => out.extend(float(k, v)?.to_le_bytes()),
        }
    }
    Ok(out)
}

/// What JSON values `dtype` takes, for messages.
fn range(dtype: DType) -> String {
    match dtype {
        DType::Bool => "true or false".into(),
        DType::U8 => format!("integers from 0 to {}", u8::MAX),
        DType::I8 => format!("integers from {} to {}", i8::MIN, i8::MAX),
        DType::I16 => format!("integers from {} to {}", i16::MIN, i16::MAX),
        DType::I32 => format!("integers from {} to {}", i32::MIN, i32::MAX),
        DType::I64 => format!("integers from {} to {}", i64::MIN, i64::MAX),
        DType::F16 => format!("numbers from -{0} to {0}", half::f16::MAX),
        DType::Bf16 => format!("numbers from -{0:e} to {0:e}", half::bf16::MAX.to_f64()),
        DType::F32 => format!("numbers from -{0:e} to {0:e}", f32::MAX),
        DType::F64 => "any JSON number".into(),
    }
}

/// An output's little-endian bytes of `dtype` as a flat JSON `"data"` array.
fn json_values(dtype: DType, name: &str, bytes: &[u8]) -> Result<Value, RequestError> {
    let t = crate::host_tensor::HostTensor::new(name, dtype, &[(bytes.len() / dtype.size()) as i64], bytes.to_vec())
        .map_err(|e| RequestError::Invalid(format!("output {name:?}: {e}")))?;
    let own = "the tensor's own dtype";
    Ok(match dtype {
        DType::Bool => json!(t.to_vec::<crate::dtype::Bool>().expect(own).into_iter().map(|b| b.get()).collect::<Vec<_>>()),
        DType::U8 => json!(t.to_vec::<u8>().expect(own)),
        DType::I8 => json!(t.to_vec::<i8>().expect(own)),
        DType::I16 => json!(t.to_vec::<i16>().expect(own)),
        DType::I32 => json!(t.to_vec::<i32>().expect(own)),
        DType::I64 => json!(t.to_vec::<i64>().expect(own)),
        DType::F16 => json!(t.to_vec::<half::f16>().expect(own).into_iter().map(f32::from).collect::<Vec<_>>()),
        DType::Bf16 => json!(t.to_vec::<half::bf16>().expect(own).into_iter().map(f32::from).collect::<Vec<_>>()),
        DType::F32 => json!(t.to_vec::<f32>().expect(own)),
        DType::F64 => json!(t.to_vec::<f64>().expect(own)),
    })
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
    fn json_data_nested_or_flat_becomes_the_inputs_bytes() {
        let body = br#"{"id":"r7","inputs":[{"name":"input__0","datatype":"FP32","shape":[1,2,2],"data":[[1,2],[3.5,-4]]},{"name":"mask","datatype":"BOOL","shape":[2],"data":[true,false]},{"name":"ids","datatype":"INT64","shape":[2],"data":[7,-9000000000]}]}"#;
        let r = decode_request("tiny", "", None, body).unwrap();
        assert_eq!(r.message.model_name, "tiny");
        assert_eq!(r.message.id, "r7");
        assert_eq!(r.message.inputs[0].shape, vec![1, 2, 2]);
        let f: Vec<u8> = [1.0f32, 2.0, 3.5, -4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let ids: Vec<u8> = [7i64, -9_000_000_000].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(r.message.raw_input_contents, vec![f, vec![1, 0], ids]);
        let err = |b: &[u8]| decode_request("m", "", None, b).unwrap_err().to_string();
        assert!(err(br#"{"inputs":[{"name":"x","datatype":"INT8","shape":[1],"data":[300]}]}"#).contains("value 300 at 0 is out of range: INT8 takes integers from -128 to 127"));
        assert!(err(br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[3],"data":[1,2]}]}"#).contains("has 2 values in \"data\"; shape [3] needs 3"));
        assert!(err(br#"{"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"data":[1]}]}"#).contains("does not carry"));
    }

    /// Values outside a datatype's range are refused naming the tensor, the
    /// value, its position and the range (not made infinite, wrapped or truncated).
    #[test]
    fn json_values_outside_the_datatypes_range_are_refused() {
        let err = |dtype: &str, data: &str| {
            let body = format!(r#"{{"inputs":[{{"name":"x","datatype":"{dtype}","shape":[2],"data":[0,{data}]}}]}}"#);
            decode_request("m", "", None, body.as_bytes()).map(|_| ()).unwrap_err().to_string()
        };
        assert_eq!(err("FP32", "1e39"), "input \"x\": value 1e+39 at 1 is out of range: FP32 takes numbers from -3.4028235e38 to 3.4028235e38");
        assert_eq!(err("FP32", "-1e39"), "input \"x\": value -1e+39 at 1 is out of range: FP32 takes numbers from -3.4028235e38 to 3.4028235e38");
        assert!(err("FP16", "70000").contains("value 70000 at 1 is out of range: FP16 takes numbers from -65504 to 65504"));
        assert!(err("BF16", "1e39").contains("value 1e+39 at 1 is out of range: BF16 takes numbers from"));
        assert_eq!(err("UINT8", "300"), "input \"x\": value 300 at 1 is out of range: UINT8 takes integers from 0 to 255");
        assert_eq!(err("UINT8", "-1"), "input \"x\": value -1 at 1 is out of range: UINT8 takes integers from 0 to 255");
        assert_eq!(err("INT64", "1.5"), "input \"x\": value 1.5 at 1 is not an integer: INT64 takes integers from -9223372036854775808 to 9223372036854775807");
        assert!(err("INT64", "18446744073709551615").contains("is out of range: INT64 takes"));
        assert!(err("INT32", "true").contains("value true at 1 is not a number: INT32 takes integers"));
        assert!(err("BOOL", "1").contains("value 0 at 0 is not a boolean: BOOL takes true or false"));
        // In range: the largest finite values, rounded to the precision.
        let ok = |dtype: &str, data: &str| decode_request("m", "", None, format!(r#"{{"inputs":[{{"name":"x","datatype":"{dtype}","shape":[1],"data":[{data}]}}]}}"#).as_bytes()).is_ok();
        assert!(ok("FP32", "3.4028235e38") && ok("FP16", "65504") && ok("UINT8", "255") && ok("FP64", "1e300") && ok("FP32", "1e-50"));
    }

    #[test]
    fn every_datatype_goes_back_as_json_data() {
        let v = json_values(DType::Bf16, "y", &[half::bf16::from_f32(1.5).to_le_bytes(), half::bf16::from_f32(-2.0).to_le_bytes()].concat()).unwrap();
        assert_eq!(v, json!([1.5, -2.0]));
        assert_eq!(json_values(DType::Bool, "m", &[1, 0]).unwrap(), json!([true, false]));
        assert_eq!(json_values(DType::I64, "k", &(-5i64).to_le_bytes()).unwrap(), json!([-5]));
        assert!(json_values(DType::Bool, "m", &[2]).is_err());
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
