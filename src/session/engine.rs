//! [`Engine`]: what one `run()` does for a mode; the CPU engine.

use super::timing::RunTiming;
use crate::error::Result;
use crate::shim::TorchModule;
use std::sync::Arc;
use std::time::Instant;

/// One execution mode's request path, built once per session.
pub(crate) trait Engine {
    /// Runs one request: the input region is read, the output region written,
    /// and no GPU work is pending when it returns.
    fn run(&mut self) -> Result<RunTiming>;
}

/// `cpu` mode: forward over a tensor that views the host input region,
/// result copied into the tensor that views the host output region.
pub(crate) struct CpuEngine {
    pub(crate) module: Arc<TorchModule>,
    pub(crate) input: tch::Tensor,
    pub(crate) output: tch::Tensor,
}

impl Engine for CpuEngine {
    fn run(&mut self) -> Result<RunTiming> {
        let t0 = Instant::now();
        self.module.forward_into(&self.input, &mut self.output)?;
        Ok(RunTiming { host: t0.elapsed(), device: None })
    }
}
