//! Request validation: the FP32 input of a `ModelInferRequest`, checked
//! against the model (name, datatype, shape, byte length), taken from
//! `raw_input_contents` or a registered shared memory region (little-endian
//! bytes, read in place when 4-byte aligned) or from the typed
//! `contents.fp32_contents`; and the requested outputs.

use super::models::{ServedModel, FP32, INPUT_NAME, OUTPUT_NAME};
use super::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use super::proto::{InferTensorContents, ModelInferRequest};
use super::shm::{Registry, ShmTensor};
use super::status::RequestError;
use std::borrow::Cow;

/// Parameter of Triton's classification extension.
const CLASSIFICATION: &str = "classification";

/// What the model takes, for error messages.
fn expected(m: &ServedModel) -> String {
    format!("model {:?} takes one {FP32} input {INPUT_NAME:?} of shape {:?}", m.name, m.input_shape)
}

/// Where a request's input values are.
pub enum Input<'r> {
    /// In the request message.
    Message(Cow<'r, [f32]>),
    /// In a registered shared memory region.
    Shm(ShmTensor),
}

impl Input<'_> {
    /// The values: in place when they can be, decoded when raw bytes are not
    /// 4-byte aligned.
    pub fn values(&self) -> Cow<'_, [f32]> {
        match self {
            Input::Message(v) => Cow::Borrowed(v),
            Input::Shm(t) => decode(t.bytes()),
        }
    }
}

/// The input of `req` for model `m`: from the message, or from the shared
/// memory region its parameters name.
pub fn input<'r>(req: &'r ModelInferRequest, m: &ServedModel, shm: &Registry) -> Result<Input<'r>, RequestError> {
    let t = match req.inputs.as_slice() {
        [] => return Err(RequestError::Invalid(format!("missing input {INPUT_NAME:?}: the request has no inputs; {}", expected(m)))),
        [t] => t,
        more => {
            let names: Vec<&str> = more.iter().map(|t| t.name.as_str()).collect();
            return Err(RequestError::Invalid(format!("the request has {} inputs {names:?}; {}", more.len(), expected(m))));
        }
    };
    check_header(t, m)?;
    let n = m.input_len();
    let want = n * std::mem::size_of::<f32>();
    if let Some(region) = shm.tensor(&format!("input {INPUT_NAME:?}"), &t.parameters)? {
        if !req.raw_input_contents.is_empty() || t.contents.is_some() {
            return Err(RequestError::Invalid(format!("input {INPUT_NAME:?} names a shared memory region and carries data in the message too; send one of them")));
        }
        if region.byte_size() != want {
            return Err(RequestError::Invalid(format!(
                "input {INPUT_NAME:?} gives {} bytes of shared memory; {FP32} shape {:?} needs {want}",
                region.byte_size(),
                m.input_shape
            )));
        }
        return Ok(Input::Shm(region));
    }
    if !req.raw_input_contents.is_empty() {
        if req.raw_input_contents.len() != req.inputs.len() {
            return Err(RequestError::Invalid(format!(
                "{} raw_input_contents entries for {} input(s): expected one per input",
                req.raw_input_contents.len(),
                req.inputs.len()
            )));
        }
        if t.contents.as_ref().is_some_and(|c| kinds(c).next().is_some()) {
            return Err(RequestError::Invalid(format!("input {INPUT_NAME:?} has both raw_input_contents and typed contents; send one of them")));
        }
        let bytes = &req.raw_input_contents[0];
        if bytes.len() != want {
            return Err(RequestError::Invalid(format!(
                "input {INPUT_NAME:?} has {} bytes of raw contents; {FP32} shape {:?} needs {want}",
                bytes.len(),
                m.input_shape
            )));
        }
        return Ok(Input::Message(decode(bytes)));
    }
    let Some(c) = &t.contents else {
        return Err(RequestError::Invalid(format!("input {INPUT_NAME:?} carries no data: expected raw_input_contents or contents.fp32_contents with {n} values")));
    };
    if let Some(kind) = kinds(c).find(|&k| k != "fp32_contents") {
        return Err(RequestError::Invalid(format!("input {INPUT_NAME:?} carries {kind}; an {FP32} input takes fp32_contents (or raw_input_contents)")));
    }
    if c.fp32_contents.len() != n {
        return Err(RequestError::Invalid(format!(
            "input {INPUT_NAME:?} has {} fp32_contents values; shape {:?} needs {n}",
            c.fp32_contents.len(),
            m.input_shape
        )));
    }
    Ok(Input::Message(Cow::Borrowed(&c.fp32_contents)))
}

/// Name, datatype and shape of the input tensor.
fn check_header(t: &InferInputTensor, m: &ServedModel) -> Result<(), RequestError> {
    if t.name != INPUT_NAME {
        return Err(RequestError::Invalid(format!("missing input {INPUT_NAME:?} (the request names its input {:?}); {}", t.name, expected(m))));
    }
    if t.datatype != FP32 {
        return Err(RequestError::Invalid(format!("input {INPUT_NAME:?} has datatype {:?}; {}", t.datatype, expected(m))));
    }
    if t.shape != m.input_shape {
        return Err(RequestError::Invalid(format!("input {INPUT_NAME:?} has shape {:?}; {}", t.shape, expected(m))));
    }
    Ok(())
}

/// FP32 values from little-endian bytes: in place when aligned (on a
/// little-endian machine), else decoded into a new vector.
fn decode(bytes: &[u8]) -> Cow<'_, [f32]> {
    if cfg!(target_endian = "little") {
        if let Ok(v) = bytemuck::try_cast_slice::<u8, f32>(bytes) {
            return Cow::Borrowed(v);
        }
    }
    Cow::Owned(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// The typed-contents fields of `c` that hold values.
fn kinds(c: &InferTensorContents) -> impl Iterator<Item = &'static str> + '_ {
    [
        ("bool_contents", c.bool_contents.is_empty()),
        ("int_contents", c.int_contents.is_empty()),
        ("int64_contents", c.int64_contents.is_empty()),
        ("uint_contents", c.uint_contents.is_empty()),
        ("uint64_contents", c.uint64_contents.is_empty()),
        ("fp32_contents", c.fp32_contents.is_empty()),
        ("fp64_contents", c.fp64_contents.is_empty()),
        ("bytes_contents", c.bytes_contents.is_empty()),
    ]
    .into_iter()
    .filter(|(_, empty)| !empty)
    .map(|(k, _)| k)
}

/// Checks the requested outputs (none requested means all: the one output)
/// and returns the shared memory region the output goes to, if one is named.
pub fn output(outputs: &[InferRequestedOutputTensor], m: &ServedModel, shm: &Registry) -> Result<Option<ShmTensor>, RequestError> {
    let mut target = None;
    for o in outputs {
        if o.name != OUTPUT_NAME {
            return Err(RequestError::Invalid(format!("model {:?} has no output {:?}; its only output is {OUTPUT_NAME:?}", m.name, o.name)));
        }
        if o.parameters.contains_key(CLASSIFICATION) {
            return Err(RequestError::Unimplemented(format!("output {OUTPUT_NAME:?} asks for classification; that extension is not implemented (docs/oip.md)")));
        }
        if let Some(region) = shm.tensor(&format!("output {OUTPUT_NAME:?}"), &o.parameters)? {
            let want = m.output_len() * std::mem::size_of::<f32>();
            if region.byte_size() < want {
                return Err(RequestError::Invalid(format!(
                    "output {OUTPUT_NAME:?} gives {} bytes of shared memory; {FP32} shape {:?} needs {want}",
                    region.byte_size(),
                    m.output_shape
                )));
            }
            target = Some(region);
        }
    }
    Ok(target)
}
