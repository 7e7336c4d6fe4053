//! Triton's system shared memory extension: clients register POSIX shared
//! memory objects (`/dev/shm/KEY`, made by `shm_open`, e.g. with
//! `tritonclient.utils.shared_memory`) under a name; a request's input then
//! names a region instead of carrying bytes, and is read in place, and an
//! output can be written into a region instead of the response.
//!
//! Checks: the object is opened without following a symbolic link
//! (`O_NOFOLLOW`: a link is refused), and the opened descriptor (`fstat`, not
//! the path) must be a regular file owned by the server's effective user;
//! `offset + byte_size` must lie inside it at registration, and every
//! tensor's `offset + byte_size` inside the registered region. A region is
//! mapped once, at registration, and held by an `Arc`: unregistering it while
//! a request uses it only drops the registry's reference, and the mapping
//! stays valid until that request ends.
//!
//! A request reads its inputs in place and the session writes its outputs
//! straight into their ranges. While it runs it holds the lock of every
//! region it names ([`lock_regions`]), so two requests never write (or one
//! writes while another reads) the same region at once; within a request an
//! output may not overlap another of its tensors in the same region.
//!
//! Registrations are bounded ([`Limits`]: `--max-shm-regions`,
//! `--max-shm-bytes`); beyond them they are refused with `RESOURCE_EXHAUSTED`.
//!
//! A client may truncate its object while a request uses it: every access
//! goes through [`client_memory`], which turns the `SIGBUS` into zero pages
//! and a flag; the request fails with `FAILED_PRECONDITION` naming the
//! region, and the region is refused until unregistered and registered again.

use super::proto::system_shared_memory_status_response::RegionStatus;
use super::proto::InferParameter;
use super::proto::infer_parameter::ParameterChoice;
use super::status::RequestError;
use crate::client_memory;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where POSIX shared memory objects live on Linux.
const SHM_DIR: &str = "/dev/shm";
/// Tensor parameters of the extension.
pub const REGION: &str = "shared_memory_region";
const OFFSET: &str = "shared_memory_offset";
const BYTE_SIZE: &str = "shared_memory_byte_size";

/// A registered region: `byte_size` bytes of the object `key` from `offset`, mapped.
pub struct Region {
    name: String,
    key: String,
    offset: u64,
    map: memmap2::MmapRaw,
    /// Its owner truncated the object under a request: refused until
    /// unregistered and registered again.
    truncated: AtomicBool,
    /// Held by the request that uses the region (`lock_regions`).
    in_use: Mutex<()>,
}

impl Region {
    /// The `len` bytes at `at` in the region, or why they are not there.
    fn range(&self, what: &str, at: u64, len: u64) -> Result<std::ops::Range<usize>, RequestError> {
        let size = self.map.len() as u64;
        match at.checked_add(len) {
            Some(end) if end <= size => Ok(at as usize..end as usize),
            _ => Err(RequestError::Invalid(format!(
                "{what}: offset {at} + byte size {len} lies outside shared memory region {:?} ({size} bytes)",
                self.name
            ))),
        }
    }

    /// Reads `r` (in range) as bytes, in place.
    fn bytes(&self, r: std::ops::Range<usize>) -> &[u8] {
        // SAFETY: `r` lies inside the mapping (checked by `range`), which is
        // valid for reads for as long as `self` lives (MmapRaw unmaps on drop
        // only); every bit pattern is a valid u8. The client may write the
        // region concurrently only by breaking the protocol (it must not touch
        // a region while a request naming it is in flight); that changes the
        // values read, nothing else in this process.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(r.start), r.len()) }
    }
}

/// The default of [`Limits::regions`] (`--max-shm-regions`).
pub const DEFAULT_MAX_REGIONS: usize = 1024;
/// The default of [`Limits::bytes`] (`--max-shm-bytes`): 16 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 30;

/// The bounds on registrations: beyond them a registration is refused with
/// `RESOURCE_EXHAUSTED`, so that clients cannot make the server map memory
/// (and mappings) until the process runs out of either.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Regions registered at once (`--max-shm-regions`).
    pub regions: usize,
    /// Bytes mapped by all registered regions together (`--max-shm-bytes`).
    pub bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { regions: DEFAULT_MAX_REGIONS, bytes: DEFAULT_MAX_BYTES }
    }
}

/// The registered regions by name, within their [`Limits`].
#[derive(Default)]
pub struct Registry {
    regions: Mutex<BTreeMap<String, Arc<Region>>>,
    limits: Limits,
}

impl Registry {
    /// No regions yet; registrations bounded by `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { regions: Mutex::default(), limits }
    }

    /// Refuses registering `byte_size` more bytes as `name` beyond the limits.
    fn within_limits(&self, regions: &BTreeMap<String, Arc<Region>>, name: &str, byte_size: u64) -> Result<(), RequestError> {
        if regions.len() >= self.limits.regions {
            return Err(RequestError::ResourceExhausted(format!(
                "shared memory region {name:?}: {} regions are registered, the server's bound (--max-shm-regions {}); unregister some first",
                regions.len(),
                self.limits.regions
            )));
        }
        let mapped: u64 = regions.values().map(|r| r.map.len() as u64).sum();
        if mapped.saturating_add(byte_size) > self.limits.bytes {
            return Err(RequestError::ResourceExhausted(format!(
                "shared memory region {name:?}: {byte_size} more bytes would map {} in all, over the server's bound of {} bytes (--max-shm-bytes); unregister some first",
                mapped.saturating_add(byte_size),
                self.limits.bytes
            )));
        }
        Ok(())
    }

    /// Maps `byte_size` bytes of `/dev/shm/KEY` from `offset` as region `name`.
    pub fn register(&self, name: &str, key: &str, offset: u64, byte_size: u64) -> Result<(), RequestError> {
        if name.is_empty() {
            return Err(RequestError::Invalid("a shared memory region needs a name".into()));
        }
        {
            let regions = self.regions.lock();
            if regions.contains_key(name) {
                return Err(RequestError::AlreadyExists(format!("shared memory region {name:?} is already registered; unregister it first")));
            }
            self.within_limits(&regions, name, byte_size)?;
        }
        let file_name = key.strip_prefix('/').unwrap_or(key);
        if file_name.is_empty() || file_name.contains('/') || file_name == "." || file_name == ".." {
            return Err(RequestError::Invalid(format!("shared memory key {key:?}: expected a POSIX shared memory name such as \"/my_region\"")));
        }
        let path = PathBuf::from(SHM_DIR).join(file_name);
        // O_NOFOLLOW: a symbolic link planted under /dev/shm (by anyone: the
        // directory is world-writable) would make the server map, and write
        // outputs into, whatever file it points to. Every check below is on
        // the opened descriptor (fstat), never on the path.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => RequestError::Invalid(format!(
                    "shared memory key {key:?} ({}) is a symbolic link: refused; register the shared memory object itself (made by shm_open)",
                    path.display()
                )),
                _ => RequestError::Invalid(format!("cannot open shared memory key {key:?} ({}): {e}", path.display())),
            })?;
        let meta = file.metadata().map_err(|e| RequestError::Invalid(format!("cannot stat {}: {e}", path.display())))?;
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if !meta.is_file() || meta.uid() != me {
            return Err(RequestError::PermissionDenied(format!(
                "shared memory key {key:?} is not a regular file owned by the server's user (uid {me}; it belongs to uid {})",
                meta.uid()
            )));
        }
        match offset.checked_add(byte_size) {
            Some(end) if byte_size > 0 && end <= meta.len() => {}
            _ => {
                return Err(RequestError::Invalid(format!(
                    "shared memory key {key:?}: offset {offset} + byte size {byte_size} must be a non-empty range inside its {} bytes",
                    meta.len()
                )))
            }
        }
        let map = memmap2::MmapOptions::new()
            .offset(offset)
            .len(byte_size as usize)
            .map_raw(&file)
            .map_err(|e| RequestError::Invalid(format!("cannot map shared memory key {key:?}: {e}")))?;
        let region = Arc::new(Region { name: name.to_string(), key: key.to_string(), offset, map, truncated: AtomicBool::new(false), in_use: Mutex::new(()) });
        let mut regions = self.regions.lock();
        if regions.contains_key(name) {
            return Err(RequestError::AlreadyExists(format!("shared memory region {name:?} is already registered; unregister it first")));
        }
        // Again under the lock: another registration may have come in meanwhile.
        self.within_limits(&regions, name, byte_size)?;
        regions.insert(name.to_string(), region);
        tracing::info!("registered shared memory region {name:?}: {byte_size} bytes of {key:?} from offset {offset}");
        Ok(())
    }

    /// Unregisters `name`, or every region when `name` is empty; an unknown
    /// name is not an error. Requests using the region keep their mapping.
    pub fn unregister(&self, name: &str) {
        let mut regions = self.regions.lock();
        if name.is_empty() {
            regions.clear();
        } else {
            regions.remove(name);
        }
    }

    /// The status of `name`, or of every region when `name` is empty.
    pub fn status(&self, name: &str) -> Result<HashMap<String, RegionStatus>, RequestError> {
        let regions = self.regions.lock();
        let status = |r: &Region| RegionStatus { name: r.name.clone(), key: r.key.clone(), offset: r.offset, byte_size: r.map.len() as u64 };
        if name.is_empty() {
            return Ok(regions.values().map(|r| (r.name.clone(), status(r))).collect());
        }
        let r = regions.get(name).ok_or_else(|| RequestError::NotFound(format!("no shared memory region {} is registered", super::status::echo(name))))?;
        Ok(HashMap::from([(name.to_string(), status(r))]))
    }

    /// The region a tensor's parameters name, with the byte range they give,
    /// or `None` when they name no region. `what` names the tensor in errors.
    pub fn tensor(&self, what: &str, params: &HashMap<String, InferParameter>) -> Result<Option<ShmTensor>, RequestError> {
        let Some(p) = params.get(REGION) else { return Ok(None) };
        let Some(ParameterChoice::StringParam(name)) = &p.parameter_choice else {
            return Err(RequestError::Invalid(format!("{what}: parameter {REGION} must be a string")));
        };
        let int = |key: &str| -> Result<Option<u64>, RequestError> {
            match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
                None => Ok(None),
                Some(ParameterChoice::Int64Param(v)) if *v >= 0 => Ok(Some(*v as u64)),
                Some(ParameterChoice::Uint64Param(v)) => Ok(Some(*v)),
                Some(other) => Err(RequestError::Invalid(format!("{what}: parameter {key} must be a non-negative integer, got {}", super::status::echo_debug(other)))),
            }
        };
        let offset = int(OFFSET)?.unwrap_or(0);
        let byte_size = int(BYTE_SIZE)?.ok_or_else(|| RequestError::Invalid(format!("{what}: names region {} without {BYTE_SIZE}", super::status::echo(name))))?;
        let region = self
            .regions
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| RequestError::Invalid(format!("{what}: shared memory region {} is not registered", super::status::echo(name))))?;
        if region.truncated.load(Ordering::Acquire) {
            return Err(RequestError::FailedPrecondition(format!(
                "{what}: shared memory region {} was truncated by its owner during an earlier request; unregister it and register it again (its object at full size)",
                super::status::echo(name)
            )));
        }
        let range = region.range(what, offset, byte_size)?;
        // SAFETY: the range is the region's whole mapping, a shared mapping of
        // the client's object that stays mapped while the ShmTensor holds the
        // region (its `access` field is dropped first); the pages hold the
        // client's bytes only, and every user of them checks `intact`.
        let access = unsafe { client_memory::Access::begin(region.map.as_ptr(), region.map.len()) }
            .map_err(|e| RequestError::ResourceExhausted(format!("{what}: {e}")))?;
        Ok(Some(ShmTensor { access, region, range }))
    }
}

/// A tensor's bytes in a registered region (the region stays mapped while this lives).
pub struct ShmTensor {
    /// The region under access while the tensor lives; declared first, so
    /// dropped before the region (which may unmap it).
    access: client_memory::Access,
    region: Arc<Region>,
    range: std::ops::Range<usize>,
}

impl ShmTensor {
    /// Bytes the request gave for the tensor.
    pub fn byte_size(&self) -> usize {
        self.range.len()
    }

    /// The tensor's bytes, in place.
    pub fn bytes(&self) -> &[u8] {
        self.region.bytes(self.range.clone())
    }

    /// Whether the region's bytes are still the client's: an error naming
    /// the region once its owner truncated its object (during this access or
    /// another), after which the region is refused until registered again.
    /// Called after every read or write of the bytes, before answering.
    pub fn intact(&self) -> Result<(), RequestError> {
        if self.access.truncated() {
            self.region.truncated.store(true, Ordering::Release);
        }
        if self.region.truncated.load(Ordering::Acquire) {
            return Err(RequestError::FailedPrecondition(format!(
                "shared memory region {:?} was truncated by its owner during the request; unregister it and register it again (its object at full size)",
                self.region.name
            )));
        }
        Ok(())
    }

    /// The name of its region.
    pub fn region_name(&self) -> &str {
        &self.region.name
    }

    /// Whether the two tensors share bytes (in the same region).
    pub fn overlaps(&self, other: &ShmTensor) -> bool {
        Arc::ptr_eq(&self.region, &other.region) && self.range.start < other.range.end && other.range.start < self.range.end
    }

    /// The first `len` bytes of the tensor's range, for the session to write
    /// the output into in place (`len` at most its byte size, checked).
    ///
    /// # Safety
    /// The caller holds the region's lock ([`lock_regions`]) for as long as
    /// the slice lives, and no other slice this process made views these bytes
    /// meanwhile (a request's output overlaps none of its other tensors).
    // A mutable view from `&self`: the mapping is shared memory, and what
    // makes the view exclusive is the region lock the caller holds (above).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn output_bytes(&self, len: usize) -> Result<&mut [std::mem::MaybeUninit<u8>], RequestError> {
        if len > self.range.len() {
            return Err(RequestError::Invalid(format!("{len} bytes do not fit the {} bytes given in shared memory region {:?}", self.range.len(), self.region.name)));
        }
        // SAFETY: the range lies inside the mapping (checked at `tensor`),
        // which is mapped read-write and valid while `self` (holding the
        // region) lives; the caller's lock and the overlap rule make this the
        // only view in this process. The client must not touch a region while
        // a request naming it is in flight (the protocol's rule); if it does,
        // only the bytes it sees change.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.region.map.as_mut_ptr().add(self.range.start).cast(), len) })
    }
}

/// The locks of the regions a request uses, held while it runs.
pub struct RegionLocks<'a> {
    _held: Vec<parking_lot::MutexGuard<'a, ()>>,
}

/// Locks every region of `tensors`, each once, in one global order (by
/// address), so that requests sharing regions cannot deadlock.
pub fn lock_regions<'a>(tensors: impl IntoIterator<Item = &'a ShmTensor>) -> RegionLocks<'a> {
    let mut regions: Vec<&'a Region> = tensors.into_iter().map(|t| &*t.region).collect();
    regions.sort_by_key(|r| *r as *const Region as usize);
    regions.dedup_by_key(|r| *r as *const Region as usize);
    RegionLocks { _held: regions.into_iter().map(|r| r.in_use.lock()).collect() }
}
