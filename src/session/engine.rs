//! [`Engine`]: what one `run()` does for a mode; the CPU engine.

use super::timing::RunTiming;
use crate::error::Result;
use crate::ops::{reference, PreprocessParams};
use crate::shim::TorchModule;
use std::sync::Arc;
use std::time::Instant;

/// One execution mode's request path, built once per session.
pub(crate) trait Engine {
    /// Runs one request: the input region is read, the output region written,
    /// and no GPU work is pending when it returns.
    fn run(&mut self) -> Result<RunTiming>;
}

/// Preprocessing on the host: raw u8 region → f32 input region.
pub(crate) struct HostPreprocess {
    pub(crate) params: PreprocessParams,
    /// Address of the raw u8 region (`params.len()` bytes).
    pub(crate) src: usize,
    /// Address of the f32 input region (`params.len()` floats).
    pub(crate) dst: usize,
}

/// `cpu` mode: forward over a tensor that views the host input region,
/// result copied into the tensor that views the host output region.
pub(crate) struct CpuEngine {
    pub(crate) module: Arc<TorchModule>,
    pub(crate) input: tch::Tensor,
    pub(crate) output: tch::Tensor,
    pub(crate) preprocess: Option<HostPreprocess>,
}

impl Engine for CpuEngine {
    fn run(&mut self) -> Result<RunTiming> {
        let t0 = Instant::now();
        if let Some(p) = &self.preprocess {
            let n = p.params.len();
            // SAFETY: `src` and `dst` are the session's raw and input regions
            // (distinct allocations of `n` bytes and `n` floats), alive as long
            // as this engine (the session drops the engine first), and nothing
            // else touches them during `run` (the session holds `&mut self`).
            let (src, dst) = unsafe {
                (std::slice::from_raw_parts(p.src as *const u8, n), std::slice::from_raw_parts_mut(p.dst as *mut f32, n))
            };
            reference::preprocess(&p.params, src, dst)?;
        }
        self.module.forward_into(&self.input, &mut self.output)?;
        Ok(RunTiming { host: t0.elapsed(), device: None })
    }
}
