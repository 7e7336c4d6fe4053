//! The CPU request path allocates nothing on the Rust side: a counting global
//! allocator sees zero allocations across 200 requests (libtorch's own C++
//! allocations are outside Rust's allocator and not counted here).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use uminfer::doctor::{self, probe::ProbeOptions};
use uminfer::{Runtime, SessionSpec, TypedSession};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn cpu_run_allocates_nothing() {
    let rt = Runtime::from_report(doctor::diagnose(ProbeOptions { smoke_tests: false }));
    let model = rt.model(common::model_path("tiny.pt")).unwrap();
    let mut s: TypedSession = rt.typed_session(&model, SessionSpec::new().input_shape(&[1, 3, 128, 128])).unwrap();
    let mut checksum = 0.0f32;
    COUNTING.store(true, Ordering::SeqCst);
    for i in 0..200 {
        s.input_mut()[0] = i as f32;
        s.run().unwrap();
        checksum += s.output()[0];
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert!(checksum.is_finite());
    assert_eq!(ALLOCS.load(Ordering::SeqCst), 0, "Rust allocations on the request path");
    assert_eq!(s.timing().unwrap().host.count, 200);
}
