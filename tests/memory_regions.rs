//! Zero-copy regions: host regions on every machine; managed and
//! pinned-mapped regions on a GPU (skipped with a reason without one).

mod common;

use tch::{Device, Kind, Tensor};
use uminfer::cuda::Gpu;
use uminfer::memory::{Advice, Location, ManagedOptions, PoolRequest, Region, RegionKind, RegionPool, REGION_ALIGN};
use uminfer::Error;

const INPUT: [i64; 4] = [1, 3, 128, 128];
const N: usize = 3 * 128 * 128;

/// One body for every kind: host writes, a libtorch op on the region's device
/// reads it through the zero-copy tensor and writes back, host reads.
fn round_trip(mut r: Region<f32>, device: Device) {
    assert_eq!(r.as_ptr() as usize % REGION_ALIGN, 0, "region not {REGION_ALIGN}-byte aligned");
    {
        let mut h = r.host_view_mut().unwrap();
        for (i, x) in h.iter_mut().enumerate() {
            *x = (i % 1000) as f32;
        }
    }
    let host_addr = r.as_ptr() as usize;
    let dev_addr = r.device_ptr().map(|p| p as usize).unwrap_or(host_addr);
    {
        let mut t = r.tensor(&INPUT).unwrap();
        assert_eq!(t.device(), device);
        assert_eq!(t.kind(), Kind::Float);
        assert_eq!(t.size(), INPUT.to_vec());
        assert_eq!(t.data_ptr() as usize, dev_addr, "tensor does not view the region's memory");
        // The tensor sees what the host wrote...
        let sum = t.sum(Kind::Double).double_value(&[]);
        let expected: f64 = (0..N).map(|i| (i % 1000) as f64).sum();
        assert_eq!(sum, expected);
        // ...and the host sees what libtorch writes in place.
        let doubled = &*t * 2.0;
        t.copy_(&doubled);
    }
    let h = r.host_view().unwrap();
    for (i, &x) in h.iter().enumerate() {
        assert_eq!(x, 2.0 * (i % 1000) as f32, "element {i}");
    }
}

#[test]
fn host_region_round_trip_is_zero_copy() {
    round_trip(Region::<f32>::host(N).unwrap(), Device::Cpu);
}

#[test]
fn managed_region_round_trip_is_zero_copy() {
    require_gpu!();
    let gpu = Gpu::open(0).unwrap();
    let r = Region::<f32>::managed(&gpu, N, ManagedOptions::default()).unwrap();
    assert_eq!(r.kind(), RegionKind::Managed);
    round_trip(r, Device::Cuda(0));
}

#[test]
fn pinned_mapped_region_round_trip_is_zero_copy() {
    require_gpu!();
    let gpu = Gpu::open(0).unwrap();
    let r = Region::<f32>::pinned_mapped(&gpu, N).unwrap();
    assert_eq!(r.kind(), RegionKind::PinnedMapped);
    round_trip(r, Device::Cuda(0));
}

#[test]
fn managed_prefetch_both_ways_and_advice() {
    require_gpu!();
    let gpu = Gpu::open(0).unwrap();
    let stream = gpu.new_stream().unwrap();
    let mut r = Region::<f32>::managed(&gpu, N, ManagedOptions::default()).unwrap();
    r.host_view_mut().unwrap().fill(3.0);
    r.advise(Advice::PreferredLocation(Location::Device)).unwrap();
    r.advise(Advice::AccessedByDevice).unwrap();
    r.prefetch(Location::Device, &stream).unwrap();
    {
        let t = r.tensor(&INPUT).unwrap();
        assert_eq!(t.sum(Kind::Double).double_value(&[]), 3.0 * N as f64);
    }
    r.prefetch(Location::Host, &stream).unwrap();
    // The host view waits for the prefetch (and anything else) to finish.
    assert!(r.host_view().unwrap().iter().all(|&x| x == 3.0));
    r.advise(Advice::ReadMostly).unwrap();
}

#[test]
fn host_views_after_gpu_work_respect_concurrent_managed_access() {
    require_gpu!();
    let gpu = Gpu::open(0).unwrap();
    eprintln!("GPU 0 concurrentManagedAccess = {}", gpu.concurrent_managed_access());
    let mut r = Region::<f32>::managed(&gpu, N, ManagedOptions::default()).unwrap();
    for round in 0..20 {
        {
            let mut t = r.tensor(&INPUT).unwrap();
            let _ = t.fill_(round as f64);
        }
        // Work was queued on the GPU; the view must wait for it (and, without
        // concurrentManagedAccess, for every kernel), never fault.
        assert!(r.host_view().unwrap().iter().all(|&x| x == round as f32), "round {round}");
    }
}

#[test]
fn managed_oversubscription_is_refused_without_hanging() {
    require_gpu!();
    let gpu = Gpu::open(0).unwrap();
    let (free, total) = gpu.memory_info().unwrap();
    let start = std::time::Instant::now();
    let err = Region::<u8>::managed(&gpu, free + (1 << 20), ManagedOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Oversubscription { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}", free + (1 << 20))) && msg.contains("free"), "{msg}");
    assert!(start.elapsed().as_secs() < 5);
    // Within free memory but inside the headroom: refused too. (A headroom of
    // the whole card, not of `free` read earlier: other processes on the GPU
    // may have freed memory since.)
    let headroom = ManagedOptions { headroom_bytes: total, ..Default::default() };
    assert!(matches!(Region::<u8>::managed(&gpu, 1 << 20, headroom), Err(Error::Oversubscription { .. })));
}

#[test]
fn empty_and_overflowing_regions_are_errors() {
    assert!(matches!(Region::<f32>::host(0), Err(Error::RegionSize(_))));
    let err = Region::<i64>::host(usize::MAX / 4).unwrap_err();
    assert!(err.to_string().contains("overflow"), "{err}");
}

#[test]
fn wrong_shape_and_dtype_say_what_was_expected() {
    let mut r = Region::<f32>::host(N).unwrap();
    let err = r.tensor(&[1, 3, 128, 127]).err().unwrap().to_string();
    assert!(err.contains("49152") && err.contains("48768"), "{err}");
    let err = r.tensor(&[1, -3, 128, 128]).err().unwrap().to_string();
    assert!(err.contains("negative"), "{err}");
    let err = r.tensor_as(&INPUT, Kind::Int64).err().unwrap().to_string();
    assert!(err.contains("f32") && err.contains("Int64"), "{err}");
    assert!(r.tensor_as(&INPUT, Kind::Float).is_ok());
}

#[test]
fn every_dtype_maps_to_its_libtorch_kind() {
    fn check<T: uminfer::memory::Element>(kind: Kind) {
        let mut r = Region::<T>::host(12).unwrap();
        let addr = r.as_ptr() as usize;
        let t = r.tensor(&[3, 4]).unwrap();
        assert_eq!(t.kind(), kind, "{}", T::NAME);
        assert_eq!(t.stride(), vec![4, 1]);
        assert_eq!(t.data_ptr() as usize, addr);
    }
    check::<f32>(Kind::Float);
    check::<f64>(Kind::Double);
    check::<half::f16>(Kind::Half);
    check::<half::bf16>(Kind::BFloat16);
    check::<u8>(Kind::Uint8);
    check::<i32>(Kind::Int);
    check::<i64>(Kind::Int64);
}

#[test]
fn host_regions_report_their_lock_state() {
    let r = Region::<u8>::host(4096).unwrap();
    assert!(r.host_locked().is_some());
    assert_eq!(r.device_ptr(), None);
    assert!(r.gpu().is_none());
}

#[test]
fn pool_reuses_the_same_memory_in_steady_state() {
    let pool = RegionPool::new();
    let first = {
        let r = pool.take::<f32>(&PoolRequest::Host, N).unwrap();
        r.as_ptr() as usize
    };
    assert_eq!(pool.stats().misses, 1);
    assert_eq!(pool.stats().outstanding, 0);
    assert!(pool.stats().bytes_held >= N * 4);
    for _ in 0..100 {
        let r = pool.take::<f32>(&PoolRequest::Host, N).unwrap();
        assert_eq!(r.as_ptr() as usize, first, "steady-state request got new memory");
    }
    let s = pool.stats();
    assert_eq!((s.hits, s.misses), (100, 1));
    // Same class, other element type and length: still a hit (same bytes class).
    let _same_class = pool.take::<u8>(&PoolRequest::Host, N * 4).unwrap();
    assert_eq!(pool.stats().hits, 101);
    // A larger class allocates.
    let _big = pool.take::<f32>(&PoolRequest::Host, N * 4).unwrap();
    assert_eq!(pool.stats().misses, 2);
    assert_eq!(pool.stats().outstanding, 2);
    drop((_same_class, _big));
    pool.trim();
    assert_eq!(pool.stats().bytes_held, 0);
}

#[test]
fn pool_is_shared_across_threads() {
    let pool = RegionPool::new();
    std::thread::scope(|s| {
        for t in 0..4 {
            let pool = pool.clone();
            s.spawn(move || {
                for i in 0..50 {
                    let mut r = pool.take::<i32>(&PoolRequest::Host, 1000).unwrap();
                    r.host_view_mut().unwrap().fill(t * 1000 + i);
                    assert!(r.host_view().unwrap().iter().all(|&x| x == t * 1000 + i));
                }
            });
        }
    });
    let s = pool.stats();
    assert_eq!(s.hits + s.misses, 200);
    assert!(s.misses <= 4, "at most one allocation per concurrent thread, got {}", s.misses);
}

#[test]
fn managed_pool_reuses_on_gpu() {
    require_gpu!();
    let gpu = Gpu::open(0).unwrap();
    let pool = RegionPool::new();
    let req = PoolRequest::Managed(gpu, ManagedOptions::default());
    let a = pool.take::<f32>(&req, N).unwrap().as_ptr() as usize;
    let b = pool.take::<f32>(&req, N).unwrap().as_ptr() as usize;
    assert_eq!(a, b);
}

#[test]
fn tiny_model_over_a_host_region_matches_pytorch() {
    let _guard = tch::no_grad_guard();
    let model = tch::CModule::load(common::model_path("tiny.pt")).unwrap();
    let input = Tensor::read_npy(common::model_path("tiny.input.npy")).unwrap();
    let expected = Tensor::read_npy(common::model_path("tiny.expected.npy")).unwrap();
    let mut r = Region::<f32>::host(N).unwrap();
    {
        let src = Vec::<f32>::try_from(input.flatten(0, -1)).unwrap();
        r.host_view_mut().unwrap().copy_from_slice(&src);
    }
    let over_region = model.forward_ts(&[&*r.tensor(&INPUT).unwrap()]).unwrap();
    let over_copy = model.forward_ts(&[input.copy()]).unwrap();
    assert_eq!(over_region.size(), vec![1, 10]);
    assert!(over_region.allclose(&over_copy, 0.0, 0.0, false), "region and copied tensor disagree");
    let diff = (&over_region - &expected).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "differs from PyTorch's own output by {diff}");
}

#[test]
fn gpu_regions_without_gpu_are_errors_not_panics() {
    if common::gpu_unavailable().is_none() {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED: this machine has a GPU; the no-driver error path needs one without");
        return;
    }
    let err = Gpu::open(0).unwrap_err();
    assert!(matches!(err, Error::NoDriver { .. } | Error::NoSuchDevice { .. }), "{err}");
}
