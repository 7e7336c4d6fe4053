//! The Open Inference Protocol schemes: a `uminfer serve --grpc` child
//! process and a Rust tonic client (generated from the same
//! `proto/grpc_service.proto`), one request at a time on a single-threaded
//! tokio runtime.
//!
//! - `oip-grpc`: the input goes in `raw_input_contents`, the output comes back
//!   in `raw_output_contents`.
//! - `oip-grpc-shm`: Triton's system shared memory: two POSIX shared memory
//!   objects (input and output), registered once; a request carries only the
//!   region parameters, the server reads the input in place and writes the
//!   output into the output region.

use super::schemes::{copy_f32, server_threads_note, timed, Scheme, ServerChild};
use crate::host_tensor::HostTensor;
use crate::error::{Error, Result};
use crate::oip::models::{FP32, INPUT_NAME, OUTPUT_NAME};
use crate::oip::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::oip::proto::infer_parameter::ParameterChoice;
use crate::oip::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use crate::oip::proto::{InferParameter, ModelInferRequest, ModelInferResponse, SystemSharedMemoryRegisterRequest};
use crate::session::RunTiming;
use crate::Mode;
use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The name the child serves the model under.
const MODEL: &str = "bench";

fn grpc_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Grpc(format!("{what}: {e}"))
}

/// A POSIX shared memory object this process created (`shm_open` with
/// `O_EXCL`, mode 0600), mapped read-write; unlinked on drop.
struct ShmObject {
    key: String,
    map: memmap2::MmapRaw,
}

impl ShmObject {
    /// Creates `/KEY` of `len` bytes (zeroed by `ftruncate`) and maps it.
    fn create(key: &str, len: usize) -> Result<Self> {
        let os = |call: &'static str| Error::Os { call, source: std::io::Error::last_os_error() };
        let name = CString::new(key).map_err(|_| Error::Argument(format!("shared memory key {key:?} contains a NUL byte")))?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the
        // call; shm_open(3) has no other preconditions.
        let fd = unsafe { libc::shm_open(name.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600) };
        if fd < 0 {
            return Err(os("shm_open of the bench's shared memory object"));
        }
        // SAFETY: `fd` was just returned by a successful shm_open and is owned
        // by nothing else; OwnedFd closes it exactly once.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Self::map(key, &fd, len).inspect_err(|_| {
            // SAFETY: `name` is a valid NUL-terminated string; unlinking the
            // object we created cannot affect memory of this process.
            unsafe { libc::shm_unlink(name.as_ptr()) };
        })
    }

    /// Sizes the object behind `fd` to `len` bytes and maps it.
    fn map(key: &str, fd: &OwnedFd, len: usize) -> Result<Self> {
        let size = libc::off_t::try_from(len).map_err(|_| Error::Argument(format!("{len} bytes do not fit a shared memory object")))?;
        // SAFETY: `fd` is an open, writable descriptor of a shared memory
        // object; ftruncate(2) only resizes it.
        if unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(fd), size) } != 0 {
            return Err(Error::Os { call: "ftruncate of the bench's shared memory object", source: std::io::Error::last_os_error() });
        }
        let map = memmap2::MmapRaw::map_raw(fd).map_err(|e| Error::Os { call: "mapping the bench's shared memory object", source: e })?;
        Ok(Self { key: key.to_string(), map })
    }

    /// Copies `bytes` to the start of the object; refused when they do not fit.
    fn write(&self, bytes: &[u8]) -> Result<()> {
        if bytes.len() > self.map.len() {
            return Err(Error::Argument(format!("{} bytes of input do not fit shared memory object {} ({} bytes)", bytes.len(), self.key, self.map.len())));
        }
        // SAFETY: the range lies inside the mapping (checked above), which is
        // read-write and lives as long as `self`; `bytes` is our own buffer, so
        // they do not overlap; the server reads this object only while a
        // request naming it is in flight, and requests are sent from this
        // thread after this call returns.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_mut_ptr(), bytes.len()) };
        Ok(())
    }

    /// The first `n` floats of the object; refused when it holds fewer.
    fn floats(&self, n: usize) -> Result<&[f32]> {
        if n.saturating_mul(4) > self.map.len() {
            return Err(Error::Argument(format!("{n} output values do not fit shared memory object {} ({} bytes)", self.key, self.map.len())));
        }
        // SAFETY: the mapping starts on a page boundary (so it is aligned for
        // f32), holds at least `n` floats (checked above) and lives as long as
        // `self`; every bit pattern is a valid f32; the server writes it only
        // while a request is in flight, and this is called between requests.
        Ok(unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<f32>(), n) })
    }
}

impl Drop for ShmObject {
    fn drop(&mut self) {
        if let Ok(name) = CString::new(self.key.as_str()) {
            // SAFETY: `name` is a valid NUL-terminated string; unlinking only
            // removes the name, our mapping stays valid until it is dropped.
            unsafe { libc::shm_unlink(name.as_ptr()) };
        }
    }
}

/// How the tensors travel.
enum Transport {
    /// In the messages: the caller's input buffer, the output decoded from the response.
    Raw { input: Vec<f32>, output: Vec<f32> },
    /// In registered shared memory regions.
    Shm { input: ShmObject, output: ShmObject },
}

/// `oip-grpc` and `oip-grpc-shm`.
pub(crate) struct OipGrpc {
    rt: tokio::runtime::Runtime,
    client: GrpcInferenceServiceClient<Channel>,
    /// The request without tensor data (cloned per request).
    template: ModelInferRequest,
    output_len: usize,
    transport: Transport,
    /// [`server_threads_note`] and the session mode, taken at start.
    server: String,
    /// How long a request's client polls for the answer before it sleeps.
    poll: Duration,
    /// Declared last: stopped after the client is gone.
    _server: ServerChild,
}

/// A tensor parameter naming `region`'s first `byte_size` bytes.
fn region_params(region: &str, byte_size: usize) -> HashMap<String, InferParameter> {
    let p = |c| InferParameter { parameter_choice: Some(c) };
    HashMap::from([
        ("shared_memory_region".to_string(), p(ParameterChoice::StringParam(region.to_string()))),
        ("shared_memory_byte_size".to_string(), p(ParameterChoice::Int64Param(byte_size as i64))),
    ])
}

impl OipGrpc {
    /// Starts `uminfer serve --grpc 127.0.0.1:0` on `model` and connects; with
    /// `shm`, creates and registers the two shared memory regions.
    /// `threads`: [`crate::intra_op::for_grpc_clients`], taken before the
    /// measuring thread is pinned (after, [`crate::intra_op::cores`] counts
    /// that thread's one core).
    pub(crate) fn start(exe: &Path, model: &Path, shape: &[i64], out_shape: &[i64], shm: bool, threads: usize, mode: Mode) -> Result<Self> {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let args = ["serve", "--grpc", "127.0.0.1:0", "--mode", mode.id(), "--input-shape", &dims.join(","), "--intra-op-threads", &threads.to_string(), "--model"].map(OsString::from);
        let (server, addr) = ServerChild::start_reporting(exe, args.into_iter().chain([OsString::from(format!("{MODEL}={}", model.display()))]), "grpc")?;
        let addr = addr.as_str();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Os { call: "starting the bench's gRPC client runtime", source: e })?;
        let mut client = rt
            .block_on(GrpcInferenceServiceClient::connect(format!("http://{addr}")))
            .map_err(|e| grpc_err(&format!("connecting to {addr}"), e))?
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let (input_len, output_len) = (shape.iter().product::<i64>() as usize, out_shape.iter().product::<i64>() as usize);
        let (in_bytes, out_bytes) = (input_len * 4, output_len * 4);
        let mut input = InferInputTensor { name: INPUT_NAME.into(), datatype: FP32.into(), shape: shape.to_vec(), ..Default::default() };
        let mut output = InferRequestedOutputTensor { name: OUTPUT_NAME.into(), ..Default::default() };
        let transport = if shm {
            let key = |what: &str| format!("/uminfer-bench-{}-{what}", std::process::id());
            let (shm_in, shm_out) = (ShmObject::create(&key("in"), in_bytes)?, ShmObject::create(&key("out"), out_bytes)?);
            for (name, object, len) in [("bench-in", &shm_in, in_bytes), ("bench-out", &shm_out, out_bytes)] {
                let req = SystemSharedMemoryRegisterRequest { name: name.into(), key: object.key.clone(), offset: 0, byte_size: len as u64 };
                rt.block_on(client.system_shared_memory_register(req)).map_err(|e| grpc_err(&format!("registering shared memory region {name}"), e))?;
            }
            input.parameters = region_params("bench-in", in_bytes);
            output.parameters = region_params("bench-out", out_bytes);
            Transport::Shm { input: shm_in, output: shm_out }
        } else {
            Transport::Raw { input: vec![0.0; input_len], output: Vec::new() }
        };
        let template = ModelInferRequest { model_name: MODEL.into(), inputs: vec![input], outputs: vec![output], ..Default::default() };
        // As the shared-memory client: poll for short answers (the server was
        // left a core for that), sleep at once for long ones.
        let short = threads < crate::intra_op::cores();
        let poll = if short { crate::ipc::client::MAX_CLIENT_SPIN } else { Duration::ZERO };
        let why = if short { "cores - 1: a short forward pass, a core left to the polling client" } else { "all cores: a long forward pass" };
        let note = format!("{}; serve --mode {mode}", server_threads_note(threads, why));
        Ok(Self { rt, client, template, output_len, transport, server: note, poll, _server: server })
    }

    /// One request from the caller's input memory; the output is readable when it returns.
    fn once(&mut self) -> Result<()> {
        let mut req = self.template.clone();
        if let Transport::Raw { input, .. } = &self.transport {
            req.raw_input_contents = vec![bytemuck::cast_slice(input).to_vec()];
        }
        let (call, poll) = (self.client.model_infer(req), self.poll);
        // Polling: each turn yields to tokio, whose current-thread runtime
        // then checks the socket without blocking, and gives the CPU to any
        // other thread that wants this core.
        let answer = self.rt.block_on(async move {
            tokio::pin!(call);
            let start = Instant::now();
            loop {
                tokio::select! {
                    biased;
                    r = &mut call => break r,
                    _ = tokio::task::yield_now(), if start.elapsed() < poll => std::thread::yield_now(),
                }
            }
        });
        let resp: ModelInferResponse = answer.map_err(|e| grpc_err("ModelInfer", e))?.into_inner();
        match &mut self.transport {
            Transport::Raw { output, .. } => {
                let [bytes] = resp.raw_output_contents.as_slice() else {
                    return Err(Error::Grpc(format!("expected one raw output, got {}", resp.raw_output_contents.len())));
                };
                if bytes.len() != self.output_len * 4 {
                    return Err(Error::Grpc(format!("expected {} output bytes, got {}", self.output_len * 4, bytes.len())));
                }
                output.clear();
                output.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            }
            Transport::Shm { output, .. } => {
                std::hint::black_box(output.floats(1)?[0]);
            }
        }
        Ok(())
    }

    fn output(&self) -> Result<Vec<f32>> {
        match &self.transport {
            Transport::Raw { output, .. } => Ok(output.clone()),
            Transport::Shm { output, .. } => Ok(output.floats(self.output_len)?.to_vec()),
        }
    }
}

impl Scheme for OipGrpc {
    fn refresh(&mut self, _: u64, sample: &[HostTensor]) -> Result<()> {
        match &mut self.transport {
            Transport::Raw { input, .. } => copy_f32(sample, input),
            Transport::Shm { input, .. } => match sample {
                [t] if t.dtype == crate::dtype::DType::F32 => input.write(t.bytes()),
                _ => Err(Error::Argument("this scheme takes one float32 tensor".into())),
            },
        }
    }
    fn request(&mut self) -> Result<RunTiming> {
        timed(|| self.once())
    }
    fn check(&mut self, sample: &[HostTensor]) -> Result<Vec<HostTensor>> {
        self.refresh(0, sample)?;
        self.once()?;
        let out = self.output()?;
        Ok(vec![HostTensor::from_values("output__0", &[out.len() as i64], &out)?])
    }
    fn threads(&self) -> String {
        let waits = if self.poll.is_zero() { "sleeping".to_string() } else { format!("polling up to {} µs", self.poll.as_micros()) };
        format!("{}; client: one tokio current-thread runtime, {waits} for each answer", self.server)
    }
}
