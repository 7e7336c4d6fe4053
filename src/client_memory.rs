//! Memory that a client process owns and this process maps: a registered
//! OIP system shared memory region, an iceoryx2 request sample in the
//! client's data segment. The client can truncate the file behind it at any
//! moment; the next access here then raises `SIGBUS`, whose default action
//! kills the server and every other client's requests with it.
//!
//! This is libwayland-server's answer for client `wl_shm` pools
//! (`wl_shm_buffer_begin_access` / `end_access` and the `SIGBUS` handler in
//! its `src/wayland-shm.c`), with one difference: the ranges under access
//! are kept in a global, lock-free table rather than per thread, because
//! libtorch reads inputs and writes outputs on its own worker threads.
//!
//! - [`Access::begin`] records a range as under access (a slot of atomics in
//!   a fixed table: no allocation, no lock); dropping the [`Access`] ends it.
//! - The `SIGBUS` handler, installed once (`sigaction`, `SA_SIGINFO`), looks
//!   the faulting address up in the table. When it lies in a range under
//!   access it maps private anonymous (zero) pages over that range's whole
//!   pages (`mmap(MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS)`), marks the access
//!   truncated and returns: the faulting instruction runs again and
//!   completes, reading zeros or writing into memory nobody reads. Any other
//!   `SIGBUS` goes to the handler installed before ours, or, when that was
//!   the default action, is raised again by returning with the previous
//!   action restored: the process dies as it would have without us.
//! - [`ThreadAccess::begin`] records a whole thread as under access, for
//!   code that reads client memory at addresses the caller cannot know
//!   (iceoryx2 reading a request's header while receiving it): a fault on
//!   that thread replaces the faulting page.
//! - [`Access::truncated`] tells the caller, once the access is over, that
//!   what it read is not the client's data and what it wrote is lost: it
//!   fails the request with an error saying so, and serves the others.
//!
//! The handler uses atomics and three system calls (`gettid`, `mmap`, `sigaction`), all
//! async-signal-safe: no allocation, no lock.

use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// Ranges that can be under access at once, across all threads. A request
/// takes one per region (OIP) or one (shared-memory server); a full table
/// refuses the access ([`Busy`]) rather than leaving a range unguarded.
const SLOTS: usize = 1024;

/// `Slot::state` bits: the range is under access (start and end are valid).
const ACTIVE: usize = 1;
/// The handler replaced the range: the access is truncated.
const TRUNCATED: usize = 2;
/// The slot is taken (being filled, or active).
const CLAIMED: usize = 4;
/// One claim: the state's remaining bits count claims, so that the handler
/// notices a slot reused while it read it.
const GENERATION: usize = 8;

/// One range under access.
#[derive(Debug)]
struct Slot {
    /// Generation (a multiple of [`GENERATION`]) plus the flags above.
    state: AtomicUsize,
    start: AtomicUsize,
    end: AtomicUsize,
    /// 0 for a range; else the thread ([`ThreadAccess`]) whose every
    /// `SIGBUS` is an access to client memory.
    tid: AtomicUsize,
}

impl Slot {
    const fn new() -> Self {
        Self { state: AtomicUsize::new(0), start: AtomicUsize::new(0), end: AtomicUsize::new(0), tid: AtomicUsize::new(0) }
    }
}

static TABLE: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];
/// Where the next claim starts looking (spreads claims over the table).
static NEXT: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();
/// The `SIGBUS` action installed before ours, to chain to.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Every slot of the table is under access: the caller refuses its request.
#[derive(Debug, thiserror::Error)]
#[error("the server has {SLOTS} client memory ranges under access at once, its bound; retry later")]
pub struct Busy;

/// A range of client memory under access: while it lives, a truncation of
/// the file behind it turns into [`truncated`](Access::truncated) instead of
/// a `SIGBUS` that kills the process.
#[derive(Debug)]
pub struct Access {
    slot: &'static Slot,
    /// The slot's state while this access holds it (generation + flags).
    state: usize,
}

impl Access {
    /// Records `[ptr, ptr + len)` as under access (installing the `SIGBUS`
    /// handler on first use), or [`Busy`] when the table is full.
    ///
    /// # Safety
    /// 1. `[ptr, ptr + len)` lies inside one shared mapping of a file (the
    ///    client's memory) that stays mapped for as long as the returned
    ///    `Access` lives: drop the `Access` before unmapping.
    /// 2. Replacing the pages of that range (rounded out to whole pages) by
    ///    private zero pages, at any moment while the `Access` lives, harms
    ///    nothing in this process but the client's data: no other data of
    ///    this process lies on those pages, and whoever uses the data learns
    ///    of it through [`truncated`](Access::truncated).
    pub unsafe fn begin(ptr: *const u8, len: usize) -> Result<Access, Busy> {
        let start = ptr as usize;
        let (slot, state) = claim(start, start.saturating_add(len), 0)?;
        Ok(Access { slot, state })
    }

    /// Whether the file behind the range was truncated during the access:
    /// the range now holds zeros, and writes to it are lost.
    pub fn truncated(&self) -> bool {
        self.slot.state.load(Ordering::Acquire) & TRUNCATED != 0
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        release(self.slot, self.state);
    }
}

/// The calling thread under access to client memory at addresses it does
/// not know in advance (iceoryx2 reading a request's header out of the
/// client's data segment while receiving it): a `SIGBUS` on this thread
/// while it lives replaces the faulting page by a zero page and marks it
/// [`truncated`](ThreadAccess::truncated). It stays on its thread (`!Send`).
#[derive(Debug)]
pub struct ThreadAccess {
    slot: &'static Slot,
    state: usize,
    _on_this_thread: std::marker::PhantomData<*const ()>,
}

impl ThreadAccess {
    /// Records the calling thread as under access, or [`Busy`] when the table is full.
    ///
    /// # Safety
    /// While the returned value lives, every `SIGBUS` this thread can raise
    /// is an access to client memory: the thread touches no other
    /// file-backed mapping that can be truncated, and replacing the faulting
    /// page of such a mapping by a zero page harms nothing but the client's
    /// data, whose users learn of it through
    /// [`truncated`](ThreadAccess::truncated).
    pub unsafe fn begin() -> Result<ThreadAccess, Busy> {
        thread_local! {
            // SAFETY: gettid(2) has no preconditions and cannot fail.
            static TID: usize = unsafe { libc::syscall(libc::SYS_gettid) } as usize;
        }
        let (slot, state) = claim(0, 0, TID.with(|t| *t))?;
        Ok(ThreadAccess { slot, state, _on_this_thread: std::marker::PhantomData })
    }

    /// Whether a page this thread touched was truncated (it now reads zeros).
    pub fn truncated(&self) -> bool {
        self.slot.state.load(Ordering::Acquire) & TRUNCATED != 0
    }
}

impl Drop for ThreadAccess {
    fn drop(&mut self) {
        release(self.slot, self.state);
    }
}

/// Takes a free slot for `[start, end)` (or thread `tid`, when not 0): the
/// slot and its state while held.
fn claim(start: usize, end: usize, tid: usize) -> Result<(&'static Slot, usize), Busy> {
    INSTALL.call_once(install);
    let first = NEXT.fetch_add(1, Ordering::Relaxed);
    for k in 0..SLOTS {
        let slot = &TABLE[(first + k) % SLOTS];
        let s = slot.state.load(Ordering::Relaxed);
        if s & CLAIMED != 0 {
            continue;
        }
        let claimed = (s & !(GENERATION - 1)).wrapping_add(GENERATION) | CLAIMED;
        if slot.state.compare_exchange(s, claimed, Ordering::Acquire, Ordering::Relaxed).is_err() {
            continue;
        }
        slot.start.store(start, Ordering::Relaxed);
        slot.end.store(end, Ordering::Relaxed);
        slot.tid.store(tid, Ordering::Relaxed);
        let state = claimed | ACTIVE;
        // Release: a handler that sees ACTIVE sees this start, end and tid.
        slot.state.store(state, Ordering::Release);
        return Ok((slot, state));
    }
    Err(Busy)
}

/// Frees a slot: keeps the generation, clears the flags.
fn release(slot: &Slot, state: usize) {
    slot.state.store(state & !(GENERATION - 1), Ordering::Release);
}

/// Installs [`on_sigbus`], keeping the previous action to chain to.
fn install() {
    // SAFETY: sysconf(3) has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if let Some(p) = usize::try_from(page).ok().filter(|p| p.is_power_of_two()) {
        PAGE.store(p, Ordering::Relaxed);
    }
    // SAFETY: sigaction(2) with a null new action only reads the current one
    // into `old`, a properly sized, writable struct (zeroed: a valid value).
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } != 0 {
        tracing::warn!("cannot read the SIGBUS action ({}): a client truncating its shared memory can kill the server", std::io::Error::last_os_error());
        return;
    }
    let _ = PREVIOUS.set(old);
    // SAFETY: a zeroed sigaction is valid; we fill in the handler, flags and
    // an empty mask (sigemptyset on a valid sigset_t).
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = on_sigbus as *const () as usize;
    new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: `new.sa_mask` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // SAFETY: `new` is a complete action whose handler is an `extern "C"`
    // function of the SA_SIGINFO signature, async-signal-safe (see there).
    if unsafe { libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) } != 0 {
        tracing::warn!("cannot install the SIGBUS handler ({}): a client truncating its shared memory can kill the server", std::io::Error::last_os_error());
    }
}

/// The `SIGBUS` handler: async-signal-safe (atomics, `gettid`, `mmap`, `sigaction`).
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler;
    // si_addr is the faulting address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE.load(Ordering::Relaxed);
    // SAFETY: gettid(2) has no preconditions, cannot fail, and is a plain system call.
    let me = unsafe { libc::syscall(libc::SYS_gettid) } as usize;
    let mut replaced = false;
    for slot in &TABLE {
        let s = slot.state.load(Ordering::Acquire);
        if s & ACTIVE == 0 {
            continue;
        }
        let (start, end, tid) = (slot.start.load(Ordering::Relaxed), slot.end.load(Ordering::Relaxed), slot.tid.load(Ordering::Relaxed));
        // The fields are this claim's only if the state did not change while we read them.
        fence(Ordering::Acquire);
        let now = slot.state.load(Ordering::Relaxed);
        let ours = if tid == 0 { (start..end).contains(&addr) } else { tid == me };
        if now & !TRUNCATED != s & !TRUNCATED || !ours {
            continue;
        }
        if !replaced {
            // A range: its whole pages; a thread: the faulting page.
            let (from, to) = if tid == 0 { (start & !(page - 1), end.saturating_add(page - 1) & !(page - 1)) } else { (addr & !(page - 1), (addr & !(page - 1)) + page) };
            // SAFETY: [from, to) is the whole pages of a range under access
            // (or the faulting page of a thread under access), which the
            // caller of `Access::begin` (`ThreadAccess::begin`) promised is
            // client memory that stays mapped while the access lives and
            // whose replacement by zero pages harms nothing else; MAP_FIXED
            // replaces exactly those pages.
            let p = unsafe {
                libc::mmap(from as *mut libc::c_void, to - from, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
            };
            if p == libc::MAP_FAILED {
                break; // cannot repair: fall through to the previous action
            }
            replaced = true;
        }
        // Marks every access that matches (several requests may read one region).
        let _ = slot.state.compare_exchange(now, now | TRUNCATED, Ordering::AcqRel, Ordering::Relaxed);
    }
    if replaced {
        return; // the access runs again, on the zero pages
    }
    chain(sig, info, context);
}

/// The page size, stored by [`install`] for the handler.
static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// Passes a `SIGBUS` that is not ours to the action installed before ours.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let Some(old) = PREVIOUS.get() else {
        return reraise(None);
    };
    let handler = old.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        return reraise(Some(old));
    }
    if old.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous action was installed with SA_SIGINFO, so its
        // handler has this signature; we pass it our own arguments.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = unsafe { std::mem::transmute(handler) };
        f(sig, info, context);
    } else {
        // SAFETY: without SA_SIGINFO the previous handler takes the signal number only.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}

/// Restores the previous action (or the default) and returns: the faulting
/// access runs again and the signal takes its original course.
fn reraise(old: Option<&libc::sigaction>) {
    // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask.
    let default: libc::sigaction = unsafe { std::mem::zeroed() };
    let action = match old {
        Some(o) if o.sa_sigaction != libc::SIG_IGN => o,
        _ => &default,
    };
    // SAFETY: `action` is a complete, valid action; sigaction(2) is async-signal-safe.
    unsafe { libc::sigaction(libc::SIGBUS, action, std::ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file mapped shared, truncated under the mapping: reading and writing
    /// it under an `Access` completes (zeros) and reports the truncation.
    #[test]
    fn a_truncated_mapping_under_access_reads_zeros_and_says_so() {
        let path = std::env::temp_dir().join(format!("uminfer-client-memory-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        f.write_all(&[7u8; 3 * 4096]).unwrap();
        let map = memmap2::MmapOptions::new().len(3 * 4096).map_raw(&f).unwrap();
        let ptr = map.as_mut_ptr();
        // SAFETY: the range is the whole mapping, which outlives the access
        // and holds nothing but the test's bytes.
        let access = unsafe { Access::begin(ptr, map.len()) }.unwrap();
        // SAFETY: inside the mapping, which is mapped while `map` lives.
        assert_eq!(unsafe { ptr.add(5000).read_volatile() }, 7);
        assert!(!access.truncated());
        f.set_len(0).unwrap();
        // SAFETY: as above; the page is past the file's end: SIGBUS, repaired.
        assert_eq!(unsafe { ptr.add(5000).read_volatile() }, 0);
        // SAFETY: as above; the repaired pages are writable.
        unsafe { ptr.add(100).write_volatile(1) };
        assert!(access.truncated());
        drop(access);
        // SAFETY: a fresh access to the (now anonymous) range.
        let again = unsafe { Access::begin(ptr, map.len()) }.unwrap();
        assert!(!again.truncated(), "a new access starts intact");
        drop(again);
        // A thread under access: the fault's page is replaced.
        f.set_len(3 * 4096).unwrap();
        let map = memmap2::MmapOptions::new().len(3 * 4096).map_raw(&f).unwrap();
        let ptr = map.as_mut_ptr();
        f.set_len(4096).unwrap();
        // SAFETY: this thread touches nothing truncatable but `map` meanwhile.
        let thread = unsafe { ThreadAccess::begin() }.unwrap();
        // SAFETY: inside the mapping; the page is past the file's end: repaired.
        assert_eq!(unsafe { ptr.add(2 * 4096 + 8).read_volatile() }, 0);
        assert!(thread.truncated());
        drop(thread);
        drop(map);
        let _ = std::fs::remove_file(&path);
    }
}
