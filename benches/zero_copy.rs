//! Cost of handing a 1×3×128×128 f32 input (196 KB) to libtorch:
//! a zero-copy tensor over a region (`from_blob`) vs. a copy
//! (`Tensor::from_slice`) vs. serialising round trips (JSON, compact binary);
//! on a GPU also managed + prefetch, pinned-mapped, and explicit copies from
//! pinned and pageable memory. GPU variants print why they are skipped.
//!
//! `cargo bench --bench zero_copy`

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use uminfer::cuda::Gpu;
use uminfer::memory::{Location, ManagedOptions, Region};

const SHAPE: [i64; 4] = [1, 3, 128, 128];
const N: usize = 3 * 128 * 128;

fn input() -> Vec<f32> {
    (0..N).map(|i| (i % 251) as f32 / 251.0).collect()
}

fn cpu(c: &mut Criterion) {
    let data = input();
    let mut g = c.benchmark_group("cpu_196KB");
    let mut region = Region::<f32>::host(N).unwrap();
    region.host_view_mut().unwrap().copy_from_slice(&data);
    g.bench_function("from_blob_region", |b| {
        b.iter(|| {
            let t = region.tensor(&SHAPE).unwrap();
            black_box(t.data_ptr());
        })
    });
    g.bench_function("from_slice_copy", |b| {
        b.iter(|| {
            let t = Tensor::from_slice(black_box(&data)).view(SHAPE);
            black_box(t.data_ptr());
        })
    });
    g.bench_function("json_round_trip", |b| {
        b.iter(|| {
            let text = serde_json::to_string(black_box(&data)).unwrap();
            let back: Vec<f32> = serde_json::from_str(&text).unwrap();
            let t = Tensor::from_slice(&back).view(SHAPE);
            black_box(t.data_ptr());
        })
    });
    g.bench_function("binary_round_trip", |b| {
        b.iter(|| {
            let bytes: Vec<u8> = black_box(&data).iter().flat_map(|x| x.to_le_bytes()).collect();
            let back: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let t = Tensor::from_slice(&back).view(SHAPE);
            black_box(t.data_ptr());
        })
    });
    g.finish();
}

fn gpu(c: &mut Criterion) {
    let gpu = match Gpu::open(0) {
        Ok(g) if tch::Cuda::is_available() => g,
        Ok(_) => return eprintln!("GPU benchmarks SKIPPED: libtorch sees no GPU"),
        Err(e) => return eprintln!("GPU benchmarks SKIPPED: {e}"),
    };
    let data = input();
    let stream = gpu.new_stream().unwrap();
    let mut g = c.benchmark_group("gpu_196KB");
    // Each variant ends with the data usable by a CUDA op and the device synchronised.
    let mut managed = Region::<f32>::managed(&gpu, N, ManagedOptions::default()).unwrap();
    g.bench_function("managed_prefetch", |b| {
        b.iter(|| {
            managed.host_view_mut().unwrap().copy_from_slice(&data);
            managed.prefetch(Location::Device, &stream).unwrap();
            let t = managed.tensor(&SHAPE).unwrap();
            black_box(t.sum(Kind::Float)).size();
            tch::Cuda::synchronize(0);
        })
    });
    let mut pinned = Region::<f32>::pinned_mapped(&gpu, N).unwrap();
    g.bench_function("pinned_mapped", |b| {
        b.iter(|| {
            pinned.host_view_mut().unwrap().copy_from_slice(&data);
            let t = pinned.tensor(&SHAPE).unwrap();
            black_box(t.sum(Kind::Float)).size();
            tch::Cuda::synchronize(0);
        })
    });
    let pinned_src = Tensor::from_slice(&data).view(SHAPE).pin_memory(Device::Cuda(0));
    g.bench_function("copy_from_pinned", |b| {
        b.iter(|| {
            let t = pinned_src.to_device_(Device::Cuda(0), Kind::Float, true, false);
            black_box(t.sum(Kind::Float)).size();
            tch::Cuda::synchronize(0);
        })
    });
    g.bench_function("copy_from_pageable", |b| {
        b.iter(|| {
            let t = Tensor::from_slice(&data).view(SHAPE).to_device(Device::Cuda(0));
            black_box(t.sum(Kind::Float)).size();
            tch::Cuda::synchronize(0);
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default().sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = cpu, gpu }
criterion_main!(benches);
