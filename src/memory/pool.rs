//! [`RegionPool`]: reuse of regions by kind, device and size class, so that
//! steady-state requests allocate nothing.

use super::element::Element;
use super::raw::RawRegion;
use super::region::{ManagedOptions, Region};
use super::RegionKind;
use crate::cuda::Gpu;
use crate::error::{Error, Result};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// Smallest size class in bytes; classes are powers of two above it.
pub const MIN_CLASS_BYTES: usize = 4096;

/// What kind of region to take from the pool.
#[derive(Debug, Clone)]
pub enum PoolRequest {
    Host,
    Managed(Gpu, ManagedOptions),
    PinnedMapped(Gpu),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    kind: RegionKind,
    device: Option<usize>,
    class: usize,
}

/// Counters of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Requests served by a region already held.
    pub hits: u64,
    /// Requests that had to allocate.
    pub misses: u64,
    /// Bytes of idle regions the pool holds.
    pub bytes_held: usize,
    /// Regions currently lent out.
    pub outstanding: usize,
}

#[derive(Default)]
struct Inner {
    free: HashMap<Key, Vec<RawRegion>>,
    stats: PoolStats,
}

/// A thread-safe pool of regions (clone it to share; clones are the same pool).
#[derive(Clone, Default)]
pub struct RegionPool {
    inner: Arc<Mutex<Inner>>,
}

/// Size class (bytes) for a request of `bytes`.
pub fn size_class(bytes: usize) -> Result<usize> {
    bytes
        .max(MIN_CLASS_BYTES)
        .checked_next_power_of_two()
        .ok_or_else(|| Error::RegionSize(format!("{bytes} bytes has no size class")))
}

impl RegionPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// A region of `len` elements: an idle one of the same kind, device and
    /// size class if the pool has one, else a new allocation. Returned to the
    /// pool when the [`Pooled`] guard drops. Reused memory keeps old contents.
    pub fn take<T: Element>(&self, req: &PoolRequest, len: usize) -> Result<Pooled<T>> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| Error::RegionSize(format!("{len} elements of {} overflow usize", T::NAME)))?;
        let class = size_class(bytes)?;
        let (kind, device) = match req {
            PoolRequest::Host => (RegionKind::Host, None),
            PoolRequest::Managed(g, _) => (RegionKind::Managed, Some(g.ordinal())),
            PoolRequest::PinnedMapped(g) => (RegionKind::PinnedMapped, Some(g.ordinal())),
        };
        let key = Key { kind, device, class };
        let reused = {
            let mut inner = self.inner.lock();
            let r = inner.free.get_mut(&key).and_then(Vec::pop);
            match &r {
                Some(raw) => {
                    inner.stats.hits += 1;
                    inner.stats.bytes_held -= raw.bytes();
                }
                None => inner.stats.misses += 1,
            }
            inner.stats.outstanding += 1;
            r
        };
        let raw = match reused {
            Some(raw) => Ok(raw),
            None => match req {
                PoolRequest::Host => RawRegion::host(class),
                PoolRequest::Managed(g, o) => RawRegion::managed(g, class, o.attach_host, o.headroom_bytes),
                PoolRequest::PinnedMapped(g) => RawRegion::pinned_mapped(g, class),
            },
        };
        let region = raw.and_then(|raw| Region::from_raw(raw, len));
        match region {
            Ok(region) => Ok(Pooled { pool: self.clone(), key, region: Some(region) }),
            Err(e) => {
                self.inner.lock().stats.outstanding -= 1;
                Err(e)
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> PoolStats {
        self.inner.lock().stats
    }

    /// Frees every idle region.
    pub fn trim(&self) {
        let drained: Vec<RawRegion> = {
            let mut inner = self.inner.lock();
            inner.stats.bytes_held = 0;
            inner.free.drain().flat_map(|(_, v)| v).collect()
        };
        drop(drained); // freed outside the lock (device frees synchronise)
    }

    fn give_back(&self, key: Key, raw: RawRegion) {
        let mut inner = self.inner.lock();
        inner.stats.outstanding -= 1;
        inner.stats.bytes_held += raw.bytes();
        inner.free.entry(key).or_default().push(raw);
    }
}

/// A region lent by a [`RegionPool`]; goes back to it on drop.
pub struct Pooled<T: Element> {
    pool: RegionPool,
    key: Key,
    region: Option<Region<T>>,
}

impl<T: Element> Deref for Pooled<T> {
    type Target = Region<T>;
    fn deref(&self) -> &Region<T> {
        self.region.as_ref().expect("present until drop")
    }
}

impl<T: Element> DerefMut for Pooled<T> {
    fn deref_mut(&mut self) -> &mut Region<T> {
        self.region.as_mut().expect("present until drop")
    }
}

impl<T: Element> Drop for Pooled<T> {
    fn drop(&mut self) {
        if let Some(r) = self.region.take() {
            self.pool.give_back(self.key, r.into_raw());
        }
    }
}
