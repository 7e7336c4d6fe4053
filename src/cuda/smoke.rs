//! The doctor's managed-memory smoke test: the host writes a managed buffer, a
//! kernel (`kernels/smoke.cu`) adds to it on the GPU, the host reads it back
//! and checks every value. Small (4096 floats), so it never oversubscribes.

use crate::cuda::{driver, nvrtc};
use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};

const N: usize = 4096;

/// Runs the round trip on device `ordinal`.
pub fn managed_round_trip(ordinal: usize) -> Result<()> {
    driver::ensure_driver()?;
    let ctx = CudaContext::new(ordinal).map_err(Error::driver("cuDevicePrimaryCtxRetain"))?;
    let f = nvrtc::load_function(&ctx, "smoke", "uminfer_smoke_add")?;
    let stream = ctx.default_stream();
    // SAFETY: f32 is valid for any bit pattern, and every element is written
    // by the host below before anything reads it.
    let mut buf = unsafe { ctx.alloc_unified::<f32>(N, true) }.map_err(Error::driver("cuMemAllocManaged"))?;
    {
        let host = buf.as_mut_slice().map_err(Error::driver("host access to managed memory"))?;
        for (i, x) in host.iter_mut().enumerate() {
            *x = i as f32;
        }
    }
    let n = N as i32;
    let mut launch = stream.launch_builder(&f);
    launch.arg(&mut buf).arg(&1.5f32).arg(&n);
    // SAFETY: the kernel signature is (float*, float, int) and it touches
    // indices < n only; `buf` holds N = n floats and outlives the launch
    // (synchronised below before any host access).
    unsafe { launch.launch(LaunchConfig::for_num_elems(N as u32)) }.map_err(Error::driver("cuLaunchKernel"))?;
    stream.synchronize().map_err(Error::driver("cuStreamSynchronize"))?;
    let host = buf.as_slice().map_err(Error::driver("host access to managed memory"))?;
    match host.iter().enumerate().find(|(i, &x)| x != *i as f32 + 1.5) {
        None => Ok(()),
        Some((i, &x)) => Err(Error::Check {
            what: "managed-memory round trip",
            detail: format!("element {i} is {x} after the kernel, expected {}", i as f32 + 1.5),
        }),
    }
}
