//! The Open Inference Protocol schemes: a `uminfer serve --grpc` child
//! process and a Rust tonic client (generated from the same
//! `proto/grpc_service.proto`), one request at a time on a single-threaded
//! tokio runtime.
//!
//! - `oip-grpc`: the inputs go in `raw_input_contents`, the outputs come back
//!   in `raw_output_contents`.
//! - `oip-grpc-shm`: Triton's system shared memory: a POSIX shared memory
//!   object per input and output, registered once; a request carries only
//!   the region parameters, the server reads the inputs in place and the
//!   session writes the outputs into their regions.
//! - `grpc-echo`: as `oip-grpc-shm`, the server answering without running
//!   the model (`serve --grpc --echo`: zeros of the outputs' shapes after the
//!   same checks): the floor the transport alone sets.

use super::schemes::{server_threads_note, timed, Scheme, ServerChild, ServerLaunch};
use crate::host_tensor::HostTensor;
use crate::error::{Error, Result};
use crate::model::TensorInfo;
use crate::oip::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::oip::proto::infer_parameter::ParameterChoice;
use crate::oip::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use crate::ipc::BatchCounts;
use crate::oip::proto::{InferParameter, ModelConfigRequest, ModelInferRequest, ModelInferResponse, ModelStatistics, ModelStatisticsRequest, StatisticDuration, SystemSharedMemoryRegisterRequest};
use crate::session::RunTiming;
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

    /// The first `n` bytes of the object; refused when it holds fewer.
    fn read(&self, n: usize) -> Result<&[u8]> {
        if n > self.map.len() {
            return Err(Error::Argument(format!("{n} output bytes do not fit shared memory object {} ({} bytes)", self.key, self.map.len())));
        }
        // SAFETY: the mapping holds at least `n` bytes (checked above) and
        // lives as long as `self`; any byte is a valid u8; the server writes
        // it only while a request is in flight, and this is called between requests.
        Ok(unsafe { std::slice::from_raw_parts(self.map.as_ptr(), n) })
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

/// Which of the gRPC schemes: where the tensors travel, and whether the model runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrpcScheme {
    /// `oip-grpc`: in the messages.
    Raw,
    /// `oip-grpc-shm`: in registered regions.
    Shm,
    /// `grpc-echo`: in registered regions, the server answering without the model.
    Echo,
}

impl GrpcScheme {
    /// The scheme called `name`, if it is one of these.
    pub(crate) fn named(name: &str) -> Option<Self> {
        match name {
            "oip-grpc" => Some(Self::Raw),
            "oip-grpc-shm" => Some(Self::Shm),
            "grpc-echo" => Some(Self::Echo),
            _ => None,
        }
    }
}

/// How the tensors travel.
enum Transport {
    /// In the messages: the caller's input buffers, the outputs decoded from the response.
    Raw { inputs: Vec<Vec<u8>>, outputs: Vec<Vec<u8>> },
    /// In registered shared memory regions, one per tensor.
    Shm { inputs: Vec<ShmObject>, outputs: Vec<ShmObject> },
}

/// `oip-grpc` and `oip-grpc-shm`.
pub(crate) struct OipGrpc {
    rt: tokio::runtime::Runtime,
    client: GrpcInferenceServiceClient<Channel>,
    /// The request without tensor data (cloned per request).
    template: ModelInferRequest,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    transport: Transport,
    /// [`server_threads_note`] and the session mode, taken at start.
    server: String,
    /// The server's address.
    addr: String,
    /// How long a request's client polls for the answer before it sleeps.
    poll: Duration,
    /// Declared last: stopped after the client is gone (`None`: a client of
    /// a server started elsewhere).
    child: Option<ServerChild>,
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
    /// Starts `uminfer serve --grpc 127.0.0.1:0` on `model` (whose sessions
    /// take `inputs` and return `outputs`; a one-input model's shape is
    /// passed as `--input-shape`) and connects; with `shm`, creates and
    /// registers a shared memory region per tensor; with `echo`, the server
    /// answers without running the model (`grpc-echo`). `threads`:
    /// [`crate::intra_op::for_grpc_clients`], taken before the measuring
    /// thread is pinned (after, [`crate::intra_op::cores`] counts that
    /// thread's one core).
    pub(crate) fn start(launch: ServerLaunch<'_>, model: &Path, inputs: &[TensorInfo], outputs: &[TensorInfo], scheme: GrpcScheme) -> Result<Self> {
        let ServerLaunch { exe, threads, mode, profile, extra } = launch;
        // No idle timeout: the bench's connection idles while the other
        // schemes are prepared (an ONNX export takes minutes on a slow machine).
        let mut args: Vec<OsString> = ["serve", "--grpc", "127.0.0.1:0", "--mode", mode.id(), "--intra-op-threads", &threads.to_string(), "--idle-timeout-s", "0"].map(OsString::from).into();
        if scheme == GrpcScheme::Echo {
            args.push("--echo".into());
        }
        if let [only] = inputs {
            let dims: Vec<String> = only.shape.iter().map(|d| d.to_string()).collect();
            args.extend(["--input-shape".into(), dims.join(",").into()]);
        }
        args.extend(extra);
        args.extend(["--model".into(), OsString::from(format!("{MODEL}={}", model.display()))]);
        let (child, addr) = ServerChild::start_reporting(exe, args, "grpc", profile)?;
        // As the shared-memory client: poll for short answers (the server was
        // left a core for that), sleep at once for long ones.
        let short = threads < crate::intra_op::cores();
        let poll = if short { crate::tuning::MAX_CLIENT_SPIN } else { Duration::ZERO };
        let why = if short { "cores - 1: a short forward pass, a core left to the polling client" } else { "all cores: a long forward pass" };
        let note = format!("{}; serve --mode {mode}", server_threads_note(threads, why));
        Self::connect(&addr, inputs, outputs, scheme, poll, note, Some(child))
    }

    /// The address this scheme's server listens on.
    pub(crate) fn address(&self) -> &str {
        &self.addr
    }

    /// Disconnects, leaving the server process running: it is the caller's.
    pub(crate) fn into_server(self) -> Option<ServerChild> {
        self.child
    }

    /// Connects to the server at `addr` serving the model as `bench` with
    /// `inputs` and `outputs` (a batching server: one sample of them); with
    /// shared memory (`scheme`), registers a region per tensor. A request
    /// polls for its answer for up to `poll`, then sleeps. `server`: what
    /// the results say of the server; `child`: its process, when this
    /// scheme started it.
    pub(crate) fn connect(addr: &str, inputs: &[TensorInfo], outputs: &[TensorInfo], scheme: GrpcScheme, poll: Duration, server: String, child: Option<ServerChild>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Os { call: "starting the bench's gRPC client runtime", source: e })?;
        let mut client = rt
            .block_on(GrpcInferenceServiceClient::connect(format!("http://{addr}")))
            .map_err(|e| grpc_err(&format!("connecting to {addr}"), e))?
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let mut req_inputs: Vec<InferInputTensor> =
            inputs.iter().map(|i| InferInputTensor { name: i.name.clone(), datatype: i.dtype.oip_name().into(), shape: i.shape.clone(), ..Default::default() }).collect();
        let mut req_outputs: Vec<InferRequestedOutputTensor> = outputs.iter().map(|o| InferRequestedOutputTensor { name: o.name.clone(), ..Default::default() }).collect();
        let transport = if scheme != GrpcScheme::Raw {
            // Objects of this scheme, apart from those of another model's in the same run.
            static SCHEMES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let nth = SCHEMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut register = |side: &str, k: usize, len: usize| -> Result<(ShmObject, String)> {
                let region = format!("bench-{side}{k}");
                let object = ShmObject::create(&format!("/uminfer-bench-{}-{nth}-{side}{k}", std::process::id()), len)?;
                let req = SystemSharedMemoryRegisterRequest { name: region.clone(), key: object.key.clone(), offset: 0, byte_size: len as u64 };
                rt.block_on(client.system_shared_memory_register(req)).map_err(|e| grpc_err(&format!("registering shared memory region {region}"), e))?;
                Ok((object, region))
            };
            let mut shm_in = Vec::new();
            for (k, (t, info)) in req_inputs.iter_mut().zip(inputs).enumerate() {
                let (object, region) = register("in", k, info.byte_len())?;
                t.parameters = region_params(&region, info.byte_len());
                shm_in.push(object);
            }
            let mut shm_out = Vec::new();
            for (k, (t, info)) in req_outputs.iter_mut().zip(outputs).enumerate() {
                let (object, region) = register("out", k, info.byte_len())?;
                t.parameters = region_params(&region, info.byte_len());
                shm_out.push(object);
            }
            Transport::Shm { inputs: shm_in, outputs: shm_out }
        } else {
            Transport::Raw { inputs: inputs.iter().map(|i| vec![0; i.byte_len()]).collect(), outputs: Vec::new() }
        };
        let template = ModelInferRequest { model_name: MODEL.into(), inputs: req_inputs, outputs: req_outputs, ..Default::default() };
        Ok(Self { rt, client, template, inputs: inputs.to_vec(), outputs: outputs.to_vec(), transport, server, poll, addr: addr.to_string(), child })
    }

    /// One request from the caller's input memory; the outputs are readable when it returns.
    fn once(&mut self) -> Result<()> {
        let mut req = self.template.clone();
        if let Transport::Raw { inputs, .. } = &self.transport {
            req.raw_input_contents = inputs.clone();
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
            Transport::Raw { outputs, .. } => {
                if resp.raw_output_contents.len() != self.outputs.len() {
                    return Err(Error::Grpc(format!("expected {} raw outputs, got {}", self.outputs.len(), resp.raw_output_contents.len())));
                }
                for (bytes, o) in resp.raw_output_contents.iter().zip(&self.outputs) {
                    if bytes.len() != o.byte_len() {
                        return Err(Error::Grpc(format!("output {}: expected {} bytes, got {}", o.name, o.byte_len(), bytes.len())));
                    }
                }
                *outputs = resp.raw_output_contents;
            }
            Transport::Shm { outputs, .. } => {
                std::hint::black_box(outputs[0].read(1)?[0]);
            }
        }
        Ok(())
    }

    /// The server's `ModelStatistics` of the model.
    fn statistics(&mut self) -> Result<ModelStatistics> {
        let req = ModelStatisticsRequest { name: MODEL.into(), version: String::new() };
        let resp = self.rt.block_on(self.client.model_statistics(req)).map_err(|e| grpc_err("ModelStatistics", e))?.into_inner();
        resp.model_stats.into_iter().find(|m| m.name == MODEL).ok_or_else(|| Error::Grpc(format!("ModelStatistics has no statistics of {MODEL}")))
    }

    fn output_tensors(&self) -> Result<Vec<HostTensor>> {
        self.outputs
            .iter()
            .enumerate()
            .map(|(k, o)| {
                let bytes = match &self.transport {
                    Transport::Raw { outputs, .. } => outputs.get(k).cloned().unwrap_or_default(),
                    Transport::Shm { outputs, .. } => outputs[k].read(o.byte_len())?.to_vec(),
                };
                HostTensor::new(&o.name, o.dtype, &o.shape, bytes)
            })
            .collect()
    }
}

impl Scheme for OipGrpc {
    fn refresh(&mut self, _: u64, sample: &[HostTensor]) -> Result<()> {
        if sample.len() != self.inputs.len() {
            return Err(Error::Argument(format!("{} inputs for a model taking {}", sample.len(), self.inputs.len())));
        }
        match &mut self.transport {
            Transport::Raw { inputs, .. } => inputs.iter_mut().zip(sample).for_each(|(buf, t)| buf.copy_from_slice(t.bytes())),
            Transport::Shm { inputs, .. } => inputs.iter().zip(sample).try_for_each(|(object, t)| object.write(t.bytes()))?,
        }
        Ok(())
    }
    fn request(&mut self) -> Result<RunTiming> {
        timed(|| self.once())
    }
    fn check(&mut self, sample: &[HostTensor]) -> Result<Vec<HostTensor>> {
        self.refresh(0, sample)?;
        self.once()?;
        self.output_tensors()
    }
    fn threads(&self) -> String {
        let waits = if self.poll.is_zero() { "sleeping".to_string() } else { format!("polling up to {} µs", self.poll.as_micros()) };
        format!("{}; client: one tokio current-thread runtime, {waits} for each answer", self.server)
    }
    fn start_server_profile(&mut self) -> Option<std::path::PathBuf> {
        self.child.as_ref()?.start_profile()
    }
    fn request_phased(&mut self) -> Result<super::phases::Phases> {
        Ok(vec![(super::phases::ROUND_TRIP_GRPC, self.request()?.host)])
    }
    fn read_outputs(&mut self) -> Result<bool> {
        std::hint::black_box(self.output_tensors()?);
        Ok(true)
    }
    fn server_account(&mut self) -> Result<super::phases::Phases> {
        let stats = self.statistics()?.inference_stats.ok_or_else(|| Error::Grpc(format!("ModelStatistics has no inference statistics of {MODEL}")))?;
        let ns = |d: Option<StatisticDuration>| Duration::from_nanos(d.map_or(0, |d| d.ns));
        Ok(vec![
            ("server queue", ns(stats.queue)),
            ("server compute input", ns(stats.compute_input)),
            ("server compute infer", ns(stats.compute_infer)),
            ("server compute output", ns(stats.compute_output)),
        ])
    }
    /// From `ModelStatistics` (samples as inferences, batches as
    /// executions, batches per size) and the buckets `ModelConfig` lists.
    fn batch_counts(&mut self) -> Result<Option<BatchCounts>> {
        let req = ModelConfigRequest { name: MODEL.into(), version: String::new() };
        let config = self.rt.block_on(self.client.model_config(req)).map_err(|e| grpc_err("ModelConfig", e))?.into_inner().config.ok_or_else(|| Error::Grpc("ModelConfig without a config".into()))?;
        if config.max_batch_size == 0 {
            return Ok(None);
        }
        let buckets: Vec<u64> = config.parameters.get("bucket_sizes").map(|p| p.string_value.split(',').filter_map(|b| b.trim().parse().ok()).collect()).unwrap_or_default();
        let stats = self.statistics()?;
        let count = |d: Option<StatisticDuration>| d.map_or(0, |d| d.count);
        let padded = stats
            .batch_stats
            .iter()
            .map(|b| {
                let bucket = buckets.iter().copied().find(|&k| k >= b.batch_size).unwrap_or(b.batch_size);
                (bucket - b.batch_size) * count(b.compute_infer)
            })
            .sum();
        let inference = stats.inference_stats.unwrap_or_default();
        Ok(Some(BatchCounts { requests: count(inference.success), refused: count(inference.fail), batches: stats.execution_count, samples: stats.inference_count, padded }))
    }
}
