//! [`LoadedModel`]: a model loaded by the shim onto one device, a
//! TorchScript module (`torch::jit::load`) or an AOTInductor package
//! (`torch::inductor::AOTIModelPackageLoader`), run over any number of
//! input tensors with its outputs flattened in order; and what can be read
//! of a model file without loading it ([`archive_records`],
//! [`package_metadata`]).

use super::{check, ffi};
use crate::error::{Error, Result};
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;

/// The two kinds of model file uminfer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A TorchScript archive (`torch.jit.save`, usually `.pt`).
    TorchScript,
    /// An AOTInductor package (`torch._inductor.aoti_compile_and_package`, `.pt2`).
    Aoti,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::TorchScript => "TorchScript",
            Format::Aoti => "AOTInductor package",
        })
    }
}

/// Tensor pointers for one call: on the stack for up to 8 tensors.
type Ptrs = SmallVec<[*mut c_void; 8]>;

fn ptrs(ts: &[tch::Tensor]) -> Ptrs {
    ts.iter().map(|t| t.as_ptr() as *mut c_void).collect()
}

/// Takes a string the shim returned through an out pointer, freeing it.
fn owned_string(p: *mut c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: a non-null string from the shim is NUL-terminated and malloc'd
    // (`dup_string`), owned by us until freed below.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: `p` came from the shim's malloc and is freed exactly once.
    unsafe { ffi::uminfer_free_error(p) };
    s
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Error::Model { path: path.to_path_buf(), message: "path contains a NUL byte".into() })
}

/// The record names of the PyTorch zip archive at `path` (TorchScript files
/// and AOTInductor packages are both such archives), without the archive's
/// top folder.
pub fn archive_records(path: &Path) -> Result<Vec<String>> {
    let c = c_path(path)?;
    let mut out = std::ptr::null_mut();
    // SAFETY: `c` is NUL-terminated and outlives the call; `out` is a valid out pointer.
    check("archive_records", unsafe { ffi::uminfer_archive_records(c.as_ptr(), &mut out) })?;
    Ok(owned_string(out).lines().map(str::to_string).collect())
}

/// The metadata an AOTInductor package records (`AOTI_DEVICE_KEY`,
/// `AOTI_CPU_ISA`, `AOTI_COMPUTE_CAPABILITY`, ..., and what its exporter
/// added), read without loading it.
pub fn package_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let c = c_path(path)?;
    let mut out = std::ptr::null_mut();
    // SAFETY: as in `archive_records`.
    check("package_metadata", unsafe { ffi::uminfer_package_metadata(c.as_ptr(), &mut out) })?;
    serde_json::from_str(&owned_string(out)).map_err(|e| Error::Model { path: path.to_path_buf(), message: format!("package metadata: {e}") })
}

/// A model loaded onto one device.
///
/// # Thread safety
/// `Send`: the handle owns a heap object that is not tied to the thread
/// that loaded it. `Sync`: through `&self` only runs are made. TorchScript's
/// `forward` may be called from several threads at once (the graph executor
/// locks its own state; parameters are only read under InferenceMode). A
/// package loaded for CPU runs through AOTInductor's model container, which
/// hands each call a runner under its own lock; one loaded single-threaded
/// (CUDA, so that a run can be captured) has no lock of its own, and the
/// shim serialises its runs with a mutex.
pub struct LoadedModel {
    raw: *mut ffi::UminferModel,
    format: Format,
    device: tch::Device,
}

// SAFETY: see the type's "Thread safety" section.
unsafe impl Send for LoadedModel {}
// SAFETY: see the type's "Thread safety" section.
unsafe impl Sync for LoadedModel {}

impl LoadedModel {
    /// Loads `path` (of `format`) onto `device`. Packages load on a GPU
    /// single-threaded (`run_single_threaded`, so that a run can be
    /// captured into a CUDA graph), on the CPU through AOTInductor's container.
    pub fn load(path: &Path, format: Format, device: tch::Device) -> Result<Self> {
        let c = c_path(path)?;
        let dev = match device {
            tch::Device::Cpu => -1,
            tch::Device::Cuda(i) => i32::try_from(i).map_err(|_| Error::Argument(format!("CUDA device {i}")))?,
            other => return Err(Error::Model { path: path.to_path_buf(), message: format!("unsupported device {other:?}") }),
        };
        let (fmt, single) = match format {
            Format::TorchScript => (ffi::FORMAT_TORCHSCRIPT, 0),
            Format::Aoti => (ffi::FORMAT_AOTI, i32::from(dev >= 0)),
        };
        let mut raw = std::ptr::null_mut();
        // SAFETY: `c` is NUL-terminated and outlives the call; `raw` is a valid out pointer.
        check("model_load", unsafe { ffi::uminfer_model_load(c.as_ptr(), fmt, dev, single, &mut raw) })
            .map_err(|e| Error::Model { path: path.to_path_buf(), message: format!("loading the {format} onto {device:?}: {e}") })?;
        Ok(Self { raw, format, device })
    }

    /// The file's format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The device the model runs on.
    pub fn device(&self) -> tch::Device {
        self.device
    }

    /// What the model says of its signature, as the shim's JSON
    /// (`uminfer_model_describe` in `uminfer_shim.h`).
    pub fn describe(&self) -> Result<String> {
        let mut out = std::ptr::null_mut();
        // SAFETY: `self.raw` is live; `out` is a valid out pointer.
        check("model_describe", unsafe { ffi::uminfer_model_describe(self.raw, &mut out) })?;
        Ok(owned_string(out))
    }

    /// Runs the model once over `inputs` (eager, new output tensors): its
    /// outputs flattened in order, and the output tree as a pytree spec
    /// (see [`crate::model::pytree`]).
    pub fn run(&self, inputs: &[tch::Tensor]) -> Result<(Vec<tch::Tensor>, String)> {
        self.run_list(inputs, true)
    }

    /// Runs the model once over `inputs`: its outputs flattened in order
    /// (a value that is not a tensor fails the run).
    pub fn forward(&self, inputs: &[tch::Tensor]) -> Result<Vec<tch::Tensor>> {
        Ok(self.run_list(inputs, false)?.0)
    }

    fn run_list(&self, inputs: &[tch::Tensor], want_spec: bool) -> Result<(Vec<tch::Tensor>, String)> {
        let ins = ptrs(inputs);
        let mut list = std::ptr::null_mut();
        // SAFETY: `self.raw` is live; `ins` holds `ins.len()` valid
        // torch::Tensor* borrowed from `inputs` for the call, only read;
        // `list` is a valid out pointer.
        check("model_run", unsafe { ffi::uminfer_model_run(self.raw, ins.as_ptr(), ins.len(), i32::from(want_spec), &mut list) })?;
        let result = (|| {
            // SAFETY: `list` is the live list returned above (freed below, once).
            let n = unsafe { ffi::uminfer_tensor_list_len(list) };
            // SAFETY: as above; the spec string lives as long as the list
            // and is copied before it is freed.
            let spec = unsafe { CStr::from_ptr(ffi::uminfer_tensor_list_spec(list)) }.to_string_lossy().into_owned();
            let mut tensors = Vec::with_capacity(n);
            for i in 0..n {
                let mut t = std::ptr::null_mut();
                // SAFETY: `i < n`; `t` is a valid out pointer.
                check("tensor_list_take", unsafe { ffi::uminfer_tensor_list_take(list, i, &mut t) })?;
                // SAFETY: the shim returned a `new torch::Tensor`, whose
                // ownership tch takes (it deletes it on drop).
                tensors.push(unsafe { tch::Tensor::from_ptr(t.cast()) });
            }
            Ok((tensors, spec))
        })();
        // SAFETY: `list` came from uminfer_model_run and is freed once; the
        // tensors taken out are owned by tch now.
        unsafe { ffi::uminfer_tensor_list_free(list) };
        result
    }

    /// Runs the model and copies its flattened outputs into `outputs`
    /// (non-blocking on libtorch's current stream): fails without writing
    /// any when their number, a shape or a dtype differs. Allocates nothing
    /// on the Rust side for up to 8 inputs and 8 outputs.
    pub fn run_into(&self, inputs: &[tch::Tensor], outputs: &mut [tch::Tensor]) -> Result<()> {
        let (ins, outs) = (ptrs(inputs), ptrs(outputs));
        // SAFETY: `self.raw` is live; `ins` and `outs` hold valid
        // torch::Tensor* for the call (borrowed from `inputs`, only read, and
        // from `outputs`, mutably borrowed, so nothing else uses them).
        check("model_run_into", unsafe { ffi::uminfer_model_run_into(self.raw, ins.as_ptr(), ins.len(), outs.as_ptr(), outs.len()) })
    }
}

impl Drop for LoadedModel {
    fn drop(&mut self) {
        // SAFETY: `raw` came from uminfer_model_load and is freed once; the
        // shim's free is a plain delete, which does not throw.
        unsafe { ffi::uminfer_model_free(self.raw) }
    }
}
