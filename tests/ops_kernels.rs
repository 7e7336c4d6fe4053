//! The ops (`uminfer::ops`): the CPU references against libtorch's own ops
//! on every machine, error cases, and the kernels against the references on
//! a GPU (skipped with a reason without one).

mod common;

use tch::{Kind, Tensor};
use uminfer::ops::reference::{preprocess_u8_hwc, softmax_topk};
use uminfer::ops::{PreprocessParams, SoftmaxTopkParams, MAX_TOP_K};
use uminfer::Error;

/// ImageNet's statistics, extended to a 4th channel (alpha).
const MEAN: [f32; 4] = [0.485, 0.456, 0.406, 0.5];
const STD: [f32; 4] = [0.229, 0.224, 0.225, 0.25];

/// Image shapes (h, w, c): odd sizes, 1 to 4 channels, a single pixel.
const IMAGES: [(usize, usize, usize); 7] = [(37, 53, 3), (37, 53, 1), (31, 17, 4), (1, 1, 1), (3, 1, 2), (128, 128, 3), (224, 224, 3)];

/// Logit shapes (rows, classes, k): 10 and 1000 classes, k from 0 to MAX_TOP_K.
const LOGITS: [(usize, usize, usize); 8] = [(1, 10, 3), (4, 10, 10), (2, 1000, 5), (8, 1000, 5), (3, 1000, 64), (1, 1, 1), (5, 37, 0), (2, 300, 17)];

/// Deterministic pseudo-random numbers (Knuth's MMIX LCG, high bits).
struct Lcg(u64);

impl Lcg {
    fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 32) as u32
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u32() >> 24) as u8).collect()
    }

    /// Uniform in [-scale, scale).
    fn floats(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| ((self.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale).collect()
    }
}


fn to_vec<T: tch::kind::Element + Copy>(t: &Tensor) -> Vec<T> {
    Vec::<T>::try_from(&t.flatten(0, -1)).unwrap()
}

/// libtorch's preprocess: permute HWC → CHW, /255, -mean, /std.
fn torch_preprocess(src: &[u8], h: usize, w: usize, c: usize) -> Vec<f32> {
    let img = Tensor::from_slice(src).view([h as i64, w as i64, c as i64]).permute([2, 0, 1]).to_kind(Kind::Float) / 255.0;
    let mean = Tensor::from_slice(&MEAN[..c]).view([c as i64, 1, 1]);
    let std = Tensor::from_slice(&STD[..c]).view([c as i64, 1, 1]);
    to_vec(&((img - mean) / std).contiguous())
}

/// The reference's outputs for one set of logits.
struct Post {
    probs: Vec<f32>,
    values: Vec<f32>,
    indices: Vec<i32>,
}

fn reference_post(logits: &[f32], rows: usize, classes: usize, k: usize) -> Post {
    let mut post = Post { probs: vec![0.0; rows * classes], values: vec![0.0; rows * k], indices: vec![0; rows * k] };
    softmax_topk(logits, rows, classes, k, &mut post.probs, &mut post.values, &mut post.indices).unwrap();
    post
}

#[test]
fn preprocess_reference_matches_libtorch() {
    let mut rng = Lcg(1);
    for (h, w, c) in IMAGES {
        let src = rng.bytes(h * w * c);
        let mut dst = vec![f32::NAN; h * w * c];
        preprocess_u8_hwc(&src, h, w, c, &MEAN[..c], &STD[..c], &mut dst).unwrap();
        let diff = common::max_abs_diff(&dst, &torch_preprocess(&src, h, w, c));
        assert!(diff <= 1e-6, "{h}×{w}×{c}: differs from libtorch by {diff}");
    }
}

#[test]
fn preprocess_reference_covers_every_byte_value_in_every_channel() {
    // 256 pixels whose channel ch holds byte (i + 64·ch) mod 256: every value in every channel.
    let src: Vec<u8> = (0..256usize).flat_map(|i| (0..4).map(move |ch| ((i + 64 * ch) % 256) as u8)).collect();
    let mut dst = vec![0.0; src.len()];
    preprocess_u8_hwc(&src, 16, 16, 4, &MEAN, &STD, &mut dst).unwrap();
    let diff = common::max_abs_diff(&dst, &torch_preprocess(&src, 16, 16, 4));
    assert!(diff <= 1e-6, "differs from libtorch by {diff}");
    // Planar layout: channel 2 of pixel 5 is byte 5 + 128.
    assert_eq!(dst[2 * 256 + 5], (133.0f32 / 255.0 - MEAN[2]) * (1.0 / STD[2]));
}

#[test]
fn softmax_topk_reference_matches_libtorch() {
    let mut rng = Lcg(2);
    for (rows, classes, k) in LOGITS {
        let logits = rng.floats(rows * classes, 8.0);
        let post = reference_post(&logits, rows, classes, k);
        let x = Tensor::from_slice(&logits).view([rows as i64, classes as i64]);
        let probs = x.softmax(-1, Kind::Float);
        let diff = common::max_abs_diff(&post.probs, &to_vec(&probs));
        assert!(diff <= 1e-6, "{rows}×{classes}: softmax differs from libtorch by {diff}");
        let (values, indices) = probs.topk(k as i64, -1, true, true);
        let diff = common::max_abs_diff(&post.values, &to_vec(&values));
        assert!(diff <= 1e-6, "{rows}×{classes} top-{k}: values differ from libtorch by {diff}");
        for (i, (&ours, theirs)) in post.indices.iter().zip(to_vec::<i64>(&indices)).enumerate() {
            let row = i / k.max(1);
            // Equal logits may come in either order from libtorch: compare logits.
            let (a, b) = (logits[row * classes + ours as usize], logits[row * classes + theirs as usize]);
            assert_eq!(a, b, "{rows}×{classes} top-{k}: entry {i} is class {ours}, libtorch says {theirs}");
        }
        // Each value is the probability of its class, best first.
        for r in 0..rows {
            for i in 0..k {
                let class = post.indices[r * k + i] as usize;
                assert_eq!(post.values[r * k + i], post.probs[r * classes + class]);
                if i > 0 {
                    assert!(post.values[r * k + i] <= post.values[r * k + i - 1], "row {r}: top-k not descending");
                }
            }
        }
    }
}

#[test]
fn top_k_breaks_ties_by_lower_index_and_ranks_nan_first() {
    let logits = [1.0, 3.0, 3.0, 2.0, 3.0, -0.0, 0.0, 0.0];
    let post = reference_post(&logits, 1, 8, 8);
    assert_eq!(post.indices, [1, 2, 4, 3, 0, 5, 6, 7]);

    let logits = [0.5, f32::NAN, 2.0, f32::NAN];
    let post = reference_post(&logits, 1, 4, 3);
    assert_eq!(post.indices, [1, 3, 2]);
    assert!(post.probs.iter().all(|p| p.is_nan()), "a NaN logit makes its row NaN, as in libtorch");

    // A row of -inf is NaN too (libtorch agrees); other rows are untouched.
    let logits = [f32::NEG_INFINITY, f32::NEG_INFINITY, 0.0, 0.0];
    let post = reference_post(&logits, 2, 2, 1);
    assert!(post.probs[..2].iter().all(|p| p.is_nan()));
    assert_eq!(&post.probs[2..], &[0.5, 0.5]);
    assert_eq!(post.indices, [0, 0]);
    let torch = Tensor::from_slice(&logits).view([2, 2]).softmax(-1, Kind::Float);
    assert!(to_vec::<f32>(&torch)[..2].iter().all(|p| p.is_nan()));
}

fn assert_shape_error(r: uminfer::Result<impl std::fmt::Debug>, needles: &[&str]) {
    match r {
        Err(Error::Argument(msg)) => {
            for n in needles {
                assert!(msg.contains(n), "message {msg:?} should mention {n:?}");
            }
        }
        other => panic!("expected Error::Argument mentioning {needles:?}, got {other:?}"),
    }
}

#[test]
fn preprocess_bad_arguments_are_errors() {
    let src = vec![0u8; 6 * 4 * 3];
    let mut dst = vec![0.0f32; 6 * 4 * 3];
    let (m, s) = (&MEAN[..3], &STD[..3]);
    assert_shape_error(preprocess_u8_hwc(&src[1..], 6, 4, 3, m, s, &mut dst), &["source", "71", "72"]);
    assert_shape_error(preprocess_u8_hwc(&src, 6, 4, 3, m, s, &mut dst[..70]), &["destination", "70", "72"]);
    assert_shape_error(preprocess_u8_hwc(&src, 6, 4, 5, &[0.0; 5], &[1.0; 5], &mut dst), &["5 channels", "1 to 4"]);
    assert_shape_error(preprocess_u8_hwc(&src, 6, 4, 0, &[], &[], &mut dst), &["0 channels"]);
    assert_shape_error(preprocess_u8_hwc(&src, 0, 4, 3, m, s, &mut dst), &["0×4"]);
    assert_shape_error(preprocess_u8_hwc(&src, 6, 4, 3, &MEAN[..2], s, &mut dst), &["2 mean values for 3 channels"]);
    assert_shape_error(preprocess_u8_hwc(&src, 6, 4, 3, m, &STD, &mut dst), &["4 std values for 3 channels"]);
    for bad_std in [0.0, -0.0, f32::NAN, f32::INFINITY, 1e-40] {
        assert_shape_error(preprocess_u8_hwc(&src, 6, 4, 3, m, &[0.2, bad_std, 0.2], &mut dst), &["channel 1", "std"]);
    }
    assert_shape_error(preprocess_u8_hwc(&src, 6, 4, 3, &[0.0, 0.0, f32::NAN], s, &mut dst), &["channel 2", "mean"]);
    assert_shape_error(PreprocessParams::new(usize::MAX, 2, 1, &[0.0], &[1.0]), &["too large"]);
    assert_shape_error(PreprocessParams::new(1 << 16, 1 << 15, 1, &[0.0], &[1.0]), &["too large"]);
}

#[test]
fn softmax_topk_bad_arguments_are_errors() {
    let logits = vec![0.0f32; 2 * 10];
    let (mut p, mut v, mut i) = (vec![0.0f32; 20], vec![0.0f32; 6], vec![0i32; 6]);
    assert_shape_error(softmax_topk(&logits, 2, 10, 11, &mut p, &mut v, &mut i), &["k = 11", "10 classes"]);
    assert_shape_error(SoftmaxTopkParams::new(1, 100, MAX_TOP_K + 1), &["k = 65", "64"]);
    assert_shape_error(softmax_topk(&logits[1..], 2, 10, 3, &mut p, &mut v, &mut i), &["logits", "19", "20"]);
    assert_shape_error(softmax_topk(&logits, 2, 10, 3, &mut p[..10], &mut v, &mut i), &["probabilities", "10", "20"]);
    assert_shape_error(softmax_topk(&logits, 2, 10, 3, &mut p, &mut v[..5], &mut i), &["values", "5", "6"]);
    assert_shape_error(softmax_topk(&logits, 2, 10, 3, &mut p, &mut v, &mut i[..2]), &["indices", "2", "6"]);
    assert_shape_error(softmax_topk(&logits, 0, 10, 3, &mut p, &mut v, &mut i), &["0×10"]);
    assert_shape_error(softmax_topk(&logits, 2, 0, 0, &mut p, &mut v, &mut i), &["2×0"]);
    assert_shape_error(SoftmaxTopkParams::new(1, 1 << 31, 1), &["classes"]);
    // k = 0 is softmax alone, with empty top-k buffers.
    softmax_topk(&logits, 2, 10, 0, &mut p, &mut [], &mut []).unwrap();
    assert!(p.iter().all(|&x| x == 0.1));
}

/// GPU tests, one at a time: the graph test captures a stream, and a
/// synchronising call from a concurrent test would invalidate the capture.
mod gpu {
    use super::*;
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    use cudarc::driver::CudaStream;
    use std::sync::Mutex;
    use uminfer::cuda::Gpu;
    use uminfer::memory::{Element, ManagedOptions, Region};
    use uminfer::ops::{Postprocess, Preprocess, Stage};

    static GPU_TESTS: Mutex<()> = Mutex::new(());

    fn managed<T: Element>(gpu: &Gpu, data: &[T]) -> Region<T> {
        let mut r = Region::<T>::managed(gpu, data.len().max(1), ManagedOptions::default()).unwrap();
        r.host_view_mut().unwrap()[..data.len()].copy_from_slice(data);
        r
    }

    fn dptr<T: Element>(r: &Region<T>) -> u64 {
        r.device_ptr().expect("a managed region has a device address")
    }

    /// The preprocess kernel's inputs and output, in managed memory.
    struct PreBufs {
        params: PreprocessParams,
        src: Region<u8>,
        dst: Region<f32>,
    }

    impl PreBufs {
        fn new(gpu: &Gpu, src: &[u8], (h, w, c): (usize, usize, usize)) -> Self {
            let params = PreprocessParams::new(h, w, c, &MEAN[..c], &STD[..c]).unwrap();
            Self { params, src: managed(gpu, src), dst: managed(gpu, &vec![f32::NAN; params.len()]) }
        }

        fn launch(&self, pre: &Preprocess, stream: &CudaStream) {
            // SAFETY: src and dst are live, disjoint managed regions of
            // params.len() elements each on the stream's GPU; the host does
            // not touch them until the caller has synchronised the stream.
            unsafe { pre.launch(stream, &self.params, dptr(&self.src), dptr(&self.dst)) }.unwrap();
        }
    }

    /// The postprocess kernel's input and outputs, in managed memory.
    struct PostBufs {
        params: SoftmaxTopkParams,
        logits: Region<f32>,
        probs: Region<f32>,
        values: Region<f32>,
        indices: Region<i32>,
    }

    impl PostBufs {
        fn new(gpu: &Gpu, logits: &[f32], (rows, classes, k): (usize, usize, usize)) -> Self {
            let params = SoftmaxTopkParams::new(rows, classes, k).unwrap();
            Self {
                params,
                logits: managed(gpu, logits),
                probs: managed(gpu, &vec![f32::NAN; params.len()]),
                values: managed(gpu, &vec![f32::NAN; params.top_len()]),
                indices: managed(gpu, &vec![-7; params.top_len()]),
            }
        }

        fn launch(&self, post: &Postprocess, stream: &CudaStream) {
            let (l, p, v, i) = (dptr(&self.logits), dptr(&self.probs), dptr(&self.values), dptr(&self.indices));
            // SAFETY: four live, disjoint managed regions of the sizes
            // params names (at least one element each, so valid addresses
            // also when k = 0); the host waits for the stream before reading.
            unsafe { post.launch(stream, &self.params, l, p, v, i) }.unwrap();
        }

        /// Compares with the reference: probabilities and values within
        /// 1e-6, indices exactly (both rank by the same logits).
        fn check(&self, expected: &Post, what: &str) {
            let k = self.params.k();
            let probs = self.probs.host_view().unwrap();
            let diff = common::max_abs_diff(&probs, &expected.probs);
            assert!(diff <= 1e-6, "{what}: GPU softmax differs from the reference by {diff}");
            let values = self.values.host_view().unwrap();
            let diff = common::max_abs_diff(&values[..self.params.top_len()], &expected.values);
            assert!(diff <= 1e-6, "{what}: GPU top-{k} values differ from the reference by {diff}");
            assert_eq!(&self.indices.host_view().unwrap()[..self.params.top_len()], &expected.indices[..], "{what}: top-{k} indices");
        }
    }

    fn check_preprocess(bufs: &PreBufs, src: &[u8], (h, w, c): (usize, usize, usize)) {
        let mut expected = vec![0.0; h * w * c];
        preprocess_u8_hwc(src, h, w, c, &MEAN[..c], &STD[..c], &mut expected).unwrap();
        let got = bufs.dst.host_view().unwrap();
        let diff = common::max_abs_diff(&got, &expected);
        let not_identical = got.iter().zip(&expected).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        eprintln!("preprocess {h}×{w}×{c}: max |GPU - CPU| = {diff}, {not_identical} of {} not bit-identical", got.len());
        assert!(diff <= 1e-6, "{h}×{w}×{c}: GPU differs from the reference by {diff}");
    }

    #[test]
    fn gpu_preprocess_matches_reference() {
        require_gpu!();
        let _one = GPU_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let gpu = Gpu::open(0).unwrap();
        let stream = gpu.new_stream().unwrap();
        let pre = Preprocess::new(&gpu).unwrap();
        let mut rng = Lcg(3);
        for shape @ (h, w, c) in IMAGES {
            let src = rng.bytes(h * w * c);
            let bufs = PreBufs::new(&gpu, &src, shape);
            bufs.launch(&pre, &stream);
            stream.synchronize().unwrap();
            check_preprocess(&bufs, &src, shape);
        }
    }

    /// The staging copy: every byte of odd and aligned sizes, nothing past
    /// the end (a guard byte stays), misaligned addresses refused.
    #[test]
    fn gpu_stage_copies_exactly_the_bytes_asked() {
        require_gpu!();
        let _one = GPU_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let gpu = Gpu::open(0).unwrap();
        let stream = gpu.new_stream().unwrap();
        let stage = Stage::new(&gpu).unwrap();
        let mut rng = Lcg(5);
        for bytes in [1usize, 15, 16, 17, 4096, 196_608, 196_613] {
            let src = managed(&gpu, &rng.bytes(bytes));
            let dst = managed(&gpu, &vec![0xA5u8; bytes + 1]);
            // SAFETY: both are live managed regions of this GPU, `src` holds
            // `bytes` bytes and `dst` one more; the stream is synchronised
            // before either is read on the host or dropped.
            unsafe { stage.launch(&stream, dptr(&src), dptr(&dst), bytes) }.unwrap();
            stream.synchronize().unwrap();
            let (s, d) = (src.host_view().unwrap(), dst.host_view().unwrap());
            assert_eq!(&d[..bytes], &s[..bytes], "{bytes} bytes");
            assert_eq!(d[bytes], 0xA5, "{bytes} bytes: the byte after the copy was written");
        }
        let (a, b) = (managed(&gpu, &[0u8; 64]), managed(&gpu, &[0u8; 64]));
        // SAFETY: refused before any launch (misaligned source).
        let err = unsafe { stage.launch(&stream, dptr(&a) + 4, dptr(&b), 32) }.unwrap_err().to_string();
        assert!(err.contains("not 16-byte aligned"), "{err}");
    }

    #[test]
    fn gpu_softmax_topk_matches_reference() {
        require_gpu!();
        let _one = GPU_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let gpu = Gpu::open(0).unwrap();
        let stream = gpu.new_stream().unwrap();
        let post = Postprocess::new(&gpu).unwrap();
        let mut rng = Lcg(4);
        // Random logits of every shape (1000-class top-5 among them), then ties and NaN.
        let mut cases: Vec<(Vec<f32>, (usize, usize, usize))> =
            LOGITS.iter().map(|&(r, c, k)| (rng.floats(r * c, 8.0), (r, c, k))).collect();
        cases.push((vec![1.0, 3.0, 3.0, 2.0, 3.0, -0.0, 0.0, 0.0], (1, 8, 8)));
        cases.push((vec![0.5, f32::NAN, 2.0, f32::NAN], (1, 4, 3)));
        // Many equal logits spread over the threads of a block: 4000 classes of 16 values.
        cases.push(((0..8000).map(|i| ((i * 7919) % 16) as f32).collect(), (2, 4000, 64)));
        for (logits, shape @ (rows, classes, k)) in cases {
            let bufs = PostBufs::new(&gpu, &logits, shape);
            bufs.launch(&post, &stream);
            stream.synchronize().unwrap();
            let expected = reference_post(&logits, rows, classes, k);
            // NaN ≠ NaN: compare NaN rows by position.
            if logits.iter().any(|x| x.is_nan()) {
                assert!(bufs.probs.host_view().unwrap().iter().all(|p| p.is_nan()));
                assert_eq!(&bufs.indices.host_view().unwrap()[..], &expected.indices[..]);
                continue;
            }
            bufs.check(&expected, &format!("{rows}×{classes} top-{k}"));
        }
    }

    #[test]
    fn gpu_launches_check_their_arguments() {
        require_gpu!();
        let _one = GPU_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let gpu = Gpu::open(0).unwrap();
        let stream = gpu.new_stream().unwrap();
        let (pre, post) = (Preprocess::new(&gpu).unwrap(), Postprocess::new(&gpu).unwrap());
        let dst = managed(&gpu, &[0.0f32; 16]);
        let params = PreprocessParams::new(2, 2, 3, &MEAN[..3], &STD[..3]).unwrap();
        // SAFETY: every call below is refused before any launch (null or misaligned address).
        unsafe {
            assert_shape_error(pre.launch(&stream, &params, 0, dptr(&dst)), &["source", "null"]);
            assert_shape_error(pre.launch(&stream, &params, dptr(&dst), dptr(&dst) + 2), &["destination", "4-byte"]);
            let sp = SoftmaxTopkParams::new(1, 4, 2).unwrap();
            assert_shape_error(post.launch(&stream, &sp, dptr(&dst), dptr(&dst) + 16, 0, dptr(&dst) + 48), &["top-k values"]);
        }
    }

    #[test]
    fn gpu_kernels_replay_in_a_cuda_graph() {
        require_gpu!();
        let _one = GPU_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let gpu = Gpu::open(0).unwrap();
        let stream = gpu.new_stream().unwrap();
        let (pre, post) = (Preprocess::new(&gpu).unwrap(), Postprocess::new(&gpu).unwrap());
        let mut rng = Lcg(5);
        let image = (37, 53, 3);
        let logits_shape = (4, 1000, 5);
        let mut pre_bufs = PreBufs::new(&gpu, &rng.bytes(37 * 53 * 3), image);
        let mut post_bufs = PostBufs::new(&gpu, &rng.floats(4000, 8.0), logits_shape);

        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
        pre_bufs.launch(&pre, &stream);
        post_bufs.launch(&post, &stream);
        let graph = stream.end_capture(CUgraphInstantiate_flags(0)).unwrap().expect("captured a graph");

        // Each replay reads what the host wrote since: the graph holds addresses, not data.
        for round in 0..3 {
            let src = rng.bytes(37 * 53 * 3);
            let logits = rng.floats(4000, 8.0);
            pre_bufs.src.host_view_mut().unwrap().copy_from_slice(&src);
            post_bufs.logits.host_view_mut().unwrap().copy_from_slice(&logits);
            graph.launch().unwrap();
            stream.synchronize().unwrap();
            check_preprocess(&pre_bufs, &src, image);
            post_bufs.check(&reference_post(&logits, 4, 1000, 5), &format!("graph replay {round}"));
        }
    }
}
