//! Request validation: the tensors of a `ModelInferRequest` checked against
//! the model's signature before anything runs, and where each one's bytes
//! are ([`Plan`]).
//!
//! - Inputs are matched by name, or positionally by Triton's PyTorch-backend
//!   names (`INPUT__0`, `INPUT__1`, …); every model input exactly once, with
//!   its datatype and shape. Their bytes are read in place from
//!   `raw_input_contents` (one entry per input that names no shared memory
//!   region, in order, as Triton's clients send them) or from a registered
//!   system shared memory region, when aligned for their dtype; copied once
//!   into an aligned buffer when not; encoded once from the typed
//!   `*_contents` fields otherwise.
//! - Outputs: the ones the request lists (by name or `OUTPUT__<i>`), in its
//!   order and under the names it used, each to the response or into a
//!   registered region; all of them, to the response, when it lists none
//!   (named `OUTPUT__<i>` when the request named its inputs positionally,
//!   else by their own names). The session writes each output once, into
//!   its final place (see `service::infer`).

use super::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use super::proto::{InferTensorContents, ModelInferRequest};
use super::shm::{Registry, ShmTensor};
use super::status::{echo, echo_debug, RequestError};
use crate::dtype::DType;
use crate::model::TensorInfo;

/// Parameter of Triton's classification extension.
const CLASSIFICATION: &str = "classification";

/// The protocol datatype of `d` and back (`BOOL`, `UINT8`, …, `BF16`, `FP64`).
pub fn datatype(name: &str) -> Option<DType> {
    DType::ALL.into_iter().find(|d| d.oip_name() == name)
}

/// Bytes in an 8-byte-aligned buffer (aligned for every dtype).
#[derive(Debug)]
pub struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    /// A zeroed buffer of `len` bytes for `what`, or `RESOURCE_EXHAUSTED`
    /// when the process cannot hold it.
    pub fn zeroed(len: usize, what: impl FnOnce() -> String) -> Result<Self, RequestError> {
        Ok(Self { words: super::status::try_buffer(len.div_ceil(8), what)?, len })
    }

    fn from_bytes(bytes: &[u8], what: impl FnOnce() -> String) -> Result<Self, RequestError> {
        let mut a = Self::zeroed(bytes.len(), what)?;
        a.bytes_mut().copy_from_slice(bytes);
        Ok(a)
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the words hold at least `len` initialised bytes (zeroed,
        // then written), any byte is a valid u8, and the borrow of `self` keeps them alive.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// Where an input's bytes are.
pub enum InputBytes<'r> {
    /// In the request message, aligned for the dtype: read in place.
    Message(&'r [u8]),
    /// In a registered region, aligned: read in place.
    Shm(ShmTensor),
    /// Copied (unaligned bytes) or encoded (typed contents) once.
    Owned(Aligned),
}

impl InputBytes<'_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            InputBytes::Message(b) => b,
            InputBytes::Shm(t) => t.bytes(),
            InputBytes::Owned(a) => a.bytes(),
        }
    }
}

/// Where an output goes.
pub enum OutputPlace {
    /// Into the response, at this position of the answer.
    Response(usize),
    /// Into a registered region (answered at this position, without data).
    Shm(usize, ShmTensor),
    /// Nowhere: the request did not ask for it (the session still writes it).
    Discard,
}

/// One output of the answer, in the order the request listed it.
pub struct Answered {
    /// The model output (index into the model's outputs).
    pub index: usize,
    /// The name to answer with: the one the request used.
    pub name: String,
}

/// A request checked against the model: every input's bytes, every output's place.
pub struct Plan<'r> {
    /// One per model input, in the model's order.
    pub inputs: Vec<InputBytes<'r>>,
    /// One per model output, in the model's order.
    pub outputs: Vec<OutputPlace>,
    /// The outputs of the answer, in order.
    pub answer: Vec<Answered>,
    /// Tensor bytes copied or encoded to build the inputs.
    pub copied: usize,
}

/// `INPUT__<i>` / `OUTPUT__<i>` → `i`.
fn positional(name: &str, prefix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?.strip_prefix("__")?.parse().ok()
}

/// The index among `infos` of tensor `name` (its name, or `{prefix}__<i>`).
fn find(infos: &[TensorInfo], name: &str, prefix: &str) -> Option<usize> {
    infos.iter().position(|i| i.name == name).or_else(|| positional(name, prefix).filter(|&i| i < infos.len()))
}

fn list(infos: &[TensorInfo]) -> String {
    infos.iter().map(|i| format!("{:?} {} {:?}", i.name, i.dtype.oip_name(), i.shape)).collect::<Vec<_>>().join(", ")
}

/// What model `name` takes, for error messages.
fn takes(model: &str, inputs: &[TensorInfo]) -> String {
    format!("model {model:?} takes {}", list(inputs))
}

/// Checks `req` against `inputs` and `outputs` (the sessions' signature of
/// model `model`) and says where every tensor's bytes are.
pub fn plan<'r>(req: &'r ModelInferRequest, model: &str, inputs: &[TensorInfo], outputs: &[TensorInfo], shm: &Registry) -> Result<Plan<'r>, RequestError> {
    let invalid = |m: String| RequestError::Invalid(m);
    let mut slot: Vec<Option<&InferInputTensor>> = vec![None; inputs.len()];
    for t in &req.inputs {
        let i = find(inputs, &t.name, "INPUT").ok_or_else(|| invalid(format!("model {model:?} has no input {}; {}", echo(&t.name), takes(model, inputs))))?;
        if slot[i].replace(t).is_some() {
            return Err(invalid(format!("input {:?} is given twice (as {:?} or INPUT__{i})", inputs[i].name, inputs[i].name)));
        }
    }
    if let Some(i) = slot.iter().position(Option::is_none) {
        return Err(invalid(format!("missing input {:?}; {}", inputs[i].name, takes(model, inputs))));
    }
    // The raw contents belong, in order, to the inputs that name no region.
    let mut regions = Vec::with_capacity(req.inputs.len());
    for t in &req.inputs {
        regions.push(shm.tensor(&format!("input {}", echo(&t.name)), &t.parameters)?);
    }
    let in_message = regions.iter().filter(|r| r.is_none()).count();
    if !req.raw_input_contents.is_empty() && req.raw_input_contents.len() != in_message {
        return Err(invalid(format!(
            "{} raw_input_contents entries for {in_message} input(s) carried in the message: expected one per input that names no shared memory region, in order",
            req.raw_input_contents.len()
        )));
    }
    let mut raw = req.raw_input_contents.iter();
    let mut by_request: Vec<Option<InputBytes<'r>>> = (0..inputs.len()).map(|_| None).collect();
    let mut copied = 0;
    for (t, region) in req.inputs.iter().zip(regions) {
        let i = find(inputs, &t.name, "INPUT").expect("matched above");
        let info = &inputs[i];
        let what = format!("input {}", echo(&t.name));
        check_header(t, info, &what)?;
        let want = info.byte_len();
        let has_typed = t.contents.as_ref().is_some_and(|c| kinds(c).next().is_some());
        let bytes = match region {
            Some(region) => {
                if has_typed {
                    return Err(invalid(format!("{what} names a shared memory region and carries contents too; send one of them")));
                }
                if region.byte_size() != want {
                    return Err(invalid(format!("{what} gives {} bytes of shared memory; {} shape {:?} needs {want}", region.byte_size(), info.dtype.oip_name(), info.shape)));
                }
                if aligned(region.bytes(), info.dtype) {
                    InputBytes::Shm(region)
                } else {
                    copied += want;
                    let copy = Aligned::from_bytes(region.bytes(), || what.clone())?;
                    region.intact()?;
                    InputBytes::Owned(copy)
                }
            }
            None if !req.raw_input_contents.is_empty() => {
                if has_typed {
                    return Err(invalid(format!("{what} has both raw_input_contents and typed contents; send one of them")));
                }
                let bytes = raw.next().expect("counted above");
                if bytes.len() != want {
                    return Err(invalid(format!("{what} has {} bytes of raw contents; {} shape {:?} needs {want}", bytes.len(), info.dtype.oip_name(), info.shape)));
                }
                if aligned(bytes, info.dtype) {
                    InputBytes::Message(bytes)
                } else {
                    copied += want;
                    InputBytes::Owned(Aligned::from_bytes(bytes, || what.clone())?)
                }
            }
            None => {
                let c = t.contents.as_ref().filter(|_| has_typed).ok_or_else(|| {
                    invalid(format!("{what} carries no data: expected raw_input_contents, {}, or a shared memory region", field(info.dtype).unwrap_or("raw bytes (it has no typed field)")))
                })?;
                copied += want;
                InputBytes::Owned(encode(c, info, &what)?)
            }
        };
        by_request[i] = Some(bytes);
    }
    let inputs_planned: Vec<InputBytes<'r>> = by_request.into_iter().map(|b| b.expect("every input was planned")).collect();
    if let Some((info, _)) = inputs.iter().zip(&inputs_planned).find(|(i, b)| i.dtype == DType::Bool && b.bytes().iter().any(|&x| x > 1)) {
        return Err(invalid(format!("input {:?} is BOOL: its bytes must be 0 or 1", info.name)));
    }
    // A request that names every input positionally (Triton's PyTorch
    // backend's INPUT__<i>) gets its outputs named so too, when it lists none.
    let positional_names = req.inputs.iter().all(|t| !inputs.iter().any(|i| i.name == t.name));
    let (outputs_planned, answer) = plan_outputs(&req.outputs, model, outputs, shm, positional_names)?;
    check_overlaps(inputs, &inputs_planned, outputs, &outputs_planned)?;
    Ok(Plan { inputs: inputs_planned, outputs: outputs_planned, answer, copied })
}

fn aligned(bytes: &[u8], dtype: DType) -> bool {
    (bytes.as_ptr() as usize).is_multiple_of(dtype.size())
}

/// Name, datatype and shape of an input tensor against the model's input.
fn check_header(t: &InferInputTensor, info: &TensorInfo, what: &str) -> Result<(), RequestError> {
    let want = info.dtype.oip_name();
    match datatype(&t.datatype) {
        Some(d) if d == info.dtype => {}
        Some(_) => return Err(RequestError::Invalid(format!("{what} has datatype {}; input {:?} is {want} {:?}", t.datatype, info.name, info.shape))),
        None => {
            return Err(RequestError::Invalid(format!(
                "{what} has datatype {}, which uminfer does not carry (BOOL, UINT8, INT8, INT16, INT32, INT64, FP16, BF16, FP32, FP64); input {:?} is {want}",
                echo(&t.datatype),
                info.name
            )))
        }
    }
    if t.shape != info.shape {
        return Err(RequestError::Invalid(format!("{what} has shape {}; input {:?} is {want} {:?}", echo_debug(&t.shape), info.name, info.shape)));
    }
    Ok(())
}

/// The typed-contents field that carries `d`, if the protocol has one.
fn field(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::Bool => "bool_contents",
        DType::U8 => "uint_contents",
        DType::I8 | DType::I16 | DType::I32 => "int_contents",
        DType::I64 => "int64_contents",
        DType::F32 => "fp32_contents",
        DType::F64 => "fp64_contents",
        DType::F16 | DType::Bf16 => return None,
    })
}

/// Writes `vals` converted by `conv` into `dst` as elements of `T` (native
/// byte order, the protocol's little-endian on the machines uminfer runs on);
/// a value `conv` refuses (does not fit `name`) is an error.
fn fill<T: bytemuck::Pod, V: Copy + std::fmt::Display>(dst: &mut [u8], vals: &[V], conv: impl Fn(V) -> Option<T>, what: &str, name: &str) -> Result<(), RequestError> {
    let dst: &mut [T] = bytemuck::cast_slice_mut(dst);
    for (k, (d, &v)) in dst.iter_mut().zip(vals).enumerate() {
        *d = conv(v).ok_or_else(|| RequestError::Invalid(format!("{what}: value {v} at {k} does not fit {name}")))?;
    }
    Ok(())
}

/// Encodes the typed contents of an input as its bytes.
fn encode(c: &InferTensorContents, info: &TensorInfo, what: &str) -> Result<Aligned, RequestError> {
    let Some(want) = field(info.dtype) else {
        return Err(RequestError::Invalid(format!("{what} is {}, which has no typed contents field: send raw_input_contents (little-endian bytes)", info.dtype.oip_name())));
    };
    if let Some(kind) = kinds(c).find(|&k| k != want) {
        return Err(RequestError::Invalid(format!("{what} carries {kind}; a {} input takes {want} (or raw_input_contents)", info.dtype.oip_name())));
    }
    let n = info.numel();
    let count = |len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(RequestError::Invalid(format!("{what} has {len} {want} values; shape {:?} needs {n}", info.shape)))
        }
    };
    let mut out = Aligned::zeroed(info.byte_len(), || what.to_string())?;
    let (dst, name) = (out.bytes_mut(), info.dtype.oip_name());
    match info.dtype {
        DType::Bool => {
            count(c.bool_contents.len())?;
            fill(dst, &c.bool_contents, |b| Some(u8::from(b)), what, name)?;
        }
        DType::U8 => {
            count(c.uint_contents.len())?;
            fill(dst, &c.uint_contents, |v| u8::try_from(v).ok(), what, name)?;
        }
        DType::I8 => {
            count(c.int_contents.len())?;
            fill(dst, &c.int_contents, |v| i8::try_from(v).ok(), what, name)?;
        }
        DType::I16 => {
            count(c.int_contents.len())?;
            fill(dst, &c.int_contents, |v| i16::try_from(v).ok(), what, name)?;
        }
        DType::I32 => {
            count(c.int_contents.len())?;
            fill(dst, &c.int_contents, Some, what, name)?;
        }
        DType::I64 => {
            count(c.int64_contents.len())?;
            fill(dst, &c.int64_contents, Some, what, name)?;
        }
        DType::F32 => {
            count(c.fp32_contents.len())?;
            fill(dst, &c.fp32_contents, Some, what, name)?;
        }
        DType::F64 => {
            count(c.fp64_contents.len())?;
            fill(dst, &c.fp64_contents, Some, what, name)?;
        }
        DType::F16 | DType::Bf16 => return Err(RequestError::Invalid(format!("{what} is {name}, which has no typed contents field: send raw_input_contents (little-endian bytes)"))),
    }
    Ok(out)
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

/// Refuses an output region range that overlaps another tensor of the
/// request in the same region: the session writes it while reading the
/// inputs and writing the other outputs.
fn check_overlaps(inputs: &[TensorInfo], in_bytes: &[InputBytes<'_>], outputs: &[TensorInfo], places: &[OutputPlace]) -> Result<(), RequestError> {
    let shm_outputs: Vec<(&str, &ShmTensor)> = outputs.iter().zip(places).filter_map(|(o, p)| if let OutputPlace::Shm(_, t) = p { Some((o.name.as_str(), t)) } else { None }).collect();
    let shm_inputs = inputs.iter().zip(in_bytes).filter_map(|(i, b)| if let InputBytes::Shm(t) = b { Some((i.name.as_str(), t)) } else { None });
    for (k, (name, t)) in shm_outputs.iter().enumerate() {
        let clash = shm_outputs[k + 1..].iter().map(|(n, u)| ("output", *n, *u)).chain(shm_inputs.clone().map(|(n, u)| ("input", n, u))).find(|(_, _, u)| t.overlaps(u));
        if let Some((side, other, _)) = clash {
            return Err(RequestError::Invalid(format!(
                "output {name:?} overlaps {side} {other:?} in shared memory region {:?}: give each output a range of its own",
                t.region_name()
            )));
        }
    }
    Ok(())
}

/// The requested outputs: where each model output goes, and the answer's order.
fn plan_outputs(requested: &[InferRequestedOutputTensor], model: &str, outputs: &[TensorInfo], shm: &Registry, positional_names: bool) -> Result<(Vec<OutputPlace>, Vec<Answered>), RequestError> {
    if requested.is_empty() {
        let places = (0..outputs.len()).map(OutputPlace::Response).collect();
        let name = |index: usize, o: &TensorInfo| if positional_names { format!("OUTPUT__{index}") } else { o.name.clone() };
        let answer = outputs.iter().enumerate().map(|(index, o)| Answered { index, name: name(index, o) }).collect();
        return Ok((places, answer));
    }
    let mut places: Vec<OutputPlace> = (0..outputs.len()).map(|_| OutputPlace::Discard).collect();
    let mut answer = Vec::with_capacity(requested.len());
    for (pos, o) in requested.iter().enumerate() {
        let i = find(outputs, &o.name, "OUTPUT").ok_or_else(|| RequestError::Invalid(format!("model {model:?} has no output {}; its outputs: {}", echo(&o.name), list(outputs))))?;
        if !matches!(places[i], OutputPlace::Discard) {
            return Err(RequestError::Invalid(format!("output {:?} is asked for twice", outputs[i].name)));
        }
        let what = format!("output {}", echo(&o.name));
        if o.parameters.contains_key(CLASSIFICATION) {
            return Err(RequestError::Unimplemented(format!("{what} asks for classification; that extension is not implemented (docs/oip.md)")));
        }
        places[i] = match shm.tensor(&what, &o.parameters)? {
            Some(region) => {
                let want = outputs[i].byte_len();
                if region.byte_size() < want {
                    return Err(RequestError::Invalid(format!(
                        "{what} gives {} bytes of shared memory; {} shape {:?} needs {want}",
                        region.byte_size(),
                        outputs[i].dtype.oip_name(),
                        outputs[i].shape
                    )));
                }
                OutputPlace::Shm(pos, region)
            }
            None => OutputPlace::Response(pos),
        };
        answer.push(Answered { index: i, name: o.name.clone() });
    }
    Ok((places, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, dtype: DType, shape: &[i64]) -> TensorInfo {
        TensorInfo { name: name.into(), dtype, shape: shape.to_vec() }
    }

    #[test]
    fn tensors_are_found_by_name_or_by_tritons_positional_name() {
        let inputs = [info("input_ids", DType::I64, &[1, 4]), info("attention_mask", DType::I64, &[1, 4])];
        assert_eq!(find(&inputs, "attention_mask", "INPUT"), Some(1));
        assert_eq!(find(&inputs, "INPUT__0", "INPUT"), Some(0));
        assert_eq!(find(&inputs, "INPUT__2", "INPUT"), None);
        assert_eq!(find(&inputs, "OUTPUT__0", "INPUT"), None);
        assert_eq!(positional("OUTPUT__12", "OUTPUT"), Some(12));
    }

    #[test]
    fn typed_contents_encode_by_dtype_and_refuse_what_does_not_fit() {
        let c = InferTensorContents { int_contents: vec![-3, 5], ..Default::default() };
        let a = encode(&c, &info("x", DType::I16, &[2]), "input x").unwrap();
        assert_eq!(a.bytes(), [(-3i16).to_le_bytes(), 5i16.to_le_bytes()].concat());
        let big = InferTensorContents { int_contents: vec![300, 1], ..Default::default() };
        assert!(encode(&big, &info("x", DType::I8, &[2]), "input x").unwrap_err().to_string().contains("value 300 at 0 does not fit INT8"));
        let b = InferTensorContents { bool_contents: vec![true, false], ..Default::default() };
        assert_eq!(encode(&b, &info("m", DType::Bool, &[2]), "input m").unwrap().bytes(), [1, 0]);
        let wrong = InferTensorContents { fp32_contents: vec![1.0, 2.0], ..Default::default() };
        assert!(encode(&wrong, &info("x", DType::I64, &[2]), "input x").unwrap_err().to_string().contains("carries fp32_contents; a INT64 input takes int64_contents"));
        let half = InferTensorContents { fp32_contents: vec![1.0], ..Default::default() };
        assert!(encode(&half, &info("h", DType::F16, &[1]), "input h").unwrap_err().to_string().contains("no typed contents field"));
        let short = InferTensorContents { int64_contents: vec![1], ..Default::default() };
        assert!(encode(&short, &info("x", DType::I64, &[2]), "input x").unwrap_err().to_string().contains("has 1 int64_contents values; shape [2] needs 2"));
    }

    #[test]
    fn a_buffer_the_process_cannot_hold_is_refused_not_an_abort() {
        let e = Aligned::zeroed(usize::MAX - 7, || "input \"x\"".into()).unwrap_err();
        assert!(matches!(e, RequestError::ResourceExhausted(_)), "{e:?}");
        assert!(e.to_string().contains("input \"x\": the server cannot allocate"), "{e}");
        let e = crate::oip::status::try_capacity(usize::MAX, || "output \"y\"".into()).unwrap_err();
        assert!(matches!(e, RequestError::ResourceExhausted(_)), "{e:?}");
        assert_eq!(Aligned::zeroed(9, String::new).unwrap().bytes(), [0; 9]);
    }

    #[test]
    fn datatypes_are_the_protocols_names() {
        for d in DType::ALL {
            assert_eq!(datatype(d.oip_name()), Some(d));
        }
        assert_eq!(datatype("BYTES"), None);
        assert_eq!(datatype("fp32"), None, "protocol names are upper case");
    }
}
