//! [`Engine`]: what one `run()` does for a mode; the CPU engine.

use super::timing::{PhasedRun, RunTiming};
use crate::error::{Error, Result, SessionErrorKind};
use crate::ops::{reference, PreprocessParams};
use crate::shim::LoadedModel;
use std::sync::Arc;
use std::time::Instant;

/// One execution mode's request path, built once per session.
pub(crate) trait Engine {
    /// Runs one request: the input region is read, the output region written,
    /// and no GPU work is pending when it returns.
    fn run(&mut self) -> Result<RunTiming>;

    /// Runs one request as `run` does, split into phases where the mode can
    /// (GPU modes: CUDA events between the stages on the device).
    fn run_phased(&mut self) -> Result<PhasedRun> {
        Ok(PhasedRun { timing: self.run()?, device_phases: Vec::new() })
    }

    /// Runs one request over the first `rows` rows (first dimension) of
    /// every input and output only, leaving the rest untouched: a batch of
    /// fewer samples than the session's batch, with no padding. CPU only
    /// (a GPU engine's graph is captured for its whole tensors).
    fn run_rows(&mut self, _rows: usize) -> Result<RunTiming> {
        Err(Error::session(SessionErrorKind::Unsupported, "only CPU sessions run part of their batch"))
    }
}

/// Preprocessing on the host: raw u8 region → f32 input region.
pub(crate) struct HostPreprocess {
    pub(crate) params: PreprocessParams,
    /// Address of the raw u8 region (`params.len()` bytes).
    pub(crate) src: usize,
    /// Address of the f32 input region (`params.len()` floats).
    pub(crate) dst: usize,
}

/// `cpu` mode: forward over tensors that view the host input regions,
/// results copied into the tensors that view the host output regions.
pub(crate) struct CpuEngine {
    pub(crate) model: Arc<LoadedModel>,
    pub(crate) inputs: Vec<tch::Tensor>,
    pub(crate) outputs: Vec<tch::Tensor>,
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
        self.model.run_into(&self.inputs, &mut self.outputs)?;
        Ok(RunTiming { host: t0.elapsed(), device: None })
    }

    fn run_rows(&mut self, rows: usize) -> Result<RunTiming> {
        let t0 = Instant::now();
        if self.preprocess.is_some() {
            return Err(Error::session(SessionErrorKind::Unsupported, "a preprocessing session runs its whole batch"));
        }
        // Views of the regions' first rows (contiguous: the regions are).
        let part = |ts: &[tch::Tensor]| ts.iter().map(|t| Ok(t.f_narrow(0, 0, rows as i64)?)).collect::<Result<smallvec::SmallVec<[tch::Tensor; 8]>>>();
        let (ins, mut outs) = (part(&self.inputs)?, part(&self.outputs)?);
        self.model.run_into(&ins, &mut outs)?;
        Ok(RunTiming { host: t0.elapsed(), device: None })
    }
}
