//! Zero-copy memory: regions the host sees as slices and libtorch as tensors.
//!
//! | module | holds |
//! |---|---|
//! | [`element`] | [`Element`]: the dtypes a region can hold (f32, f16, bf16, u8, i32, i64, ...) |
//! | [`raw`] | [`RawRegion`]: one allocation (host `mmap`+`mlock`, managed, pinned-mapped) and its safe release |
//! | [`region`] | [`Region<T>`]: typed access, host views, tensor views (`from_blob`) |
//! | [`managed`] | attach / prefetch / advise for managed regions |
//! | [`view`] | [`HostView`], [`HostViewMut`], [`TensorView`]: borrows of a region |
//! | [`pool`] | [`RegionPool`]: reuse by kind, device and size class |
//!
//! Safety model: a region hands out either host views (`&`/`&mut` borrows)
//! or one tensor view (a `&mut` borrow), never both; before a host view of
//! device-visible memory it waits for the GPU when GPU work may touch the
//! memory (always for managed memory on devices without
//! `concurrentManagedAccess`). Freeing device-visible memory waits for the
//! device first; errors during `Drop` are kept for [`take_deferred_errors`].

pub mod element;
pub mod managed;
pub mod pool;
pub mod raw;
pub mod region;
pub mod view;

pub use element::Element;
pub use managed::{Advice, Attach, Location};
pub use pool::{PoolRequest, PoolStats, Pooled, RegionPool};
pub use raw::{RawRegion, REGION_ALIGN};
pub use region::{ManagedOptions, Region};
pub use view::{HostView, HostViewMut, TensorView};

use parking_lot::Mutex;
use std::fmt;

/// The three kinds of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum RegionKind {
    /// Page-aligned host memory (`mmap`, `mlock`ed when allowed).
    Host,
    /// CUDA managed (unified) memory.
    Managed,
    /// Pinned host memory mapped into the device address space.
    PinnedMapped,
}

impl fmt::Display for RegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegionKind::Host => "host",
            RegionKind::Managed => "managed",
            RegionKind::PinnedMapped => "pinned-mapped",
        })
    }
}

static DEFERRED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records an error that happened where it could not be returned (`Drop`).
pub(crate) fn record_deferred_error(msg: String) {
    tracing::error!("{msg}");
    DEFERRED.lock().push(msg);
}

/// Errors recorded while dropping regions since the last call (as cudarc's
/// `check_err`): a service can poll this and report them.
pub fn take_deferred_errors() -> Vec<String> {
    std::mem::take(&mut *DEFERRED.lock())
}
