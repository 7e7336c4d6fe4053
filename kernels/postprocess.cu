// postprocess.cu — softmax and top-k over logits [rows, classes] (f32,
// row-major), one block per row (blockDim.x a multiple of 32, at most 1024):
//
//   probs[r, j]      = exp(x[r, j] - max_j x[r, j]) / sum_j exp(x[r, j] - max_j x[r, j])
//   top_indices[r, i] = the i-th class of row r in rank order, i < k
//   top_values[r, i]  = probs[r, top_indices[r, i]]
//
// Rank order: higher logit first; equal logits (0.0 and -0.0 are equal) in
// ascending class index; NaN ranks above every number (as libtorch's topk).
// Ranking uses the logits, not the rounded probabilities, so the indices do
// not depend on how exp rounds: the CPU reference (src/ops/reference.rs)
// finds the same ones. Softmax is monotonic, so the values come out sorted
// in descending order too.
//
// Top-k takes k rounds (k ≤ 64); round i selects, by a block reduction, the
// best element that ranks after the one round i-1 selected: no marks, no
// scratch memory. A launch reads and writes only its arguments and can be
// captured in a CUDA graph. With k = 0, top_values and top_indices are not
// touched (they may be null).
//
// Self-contained (no #include): NVRTC compiles it without CUDA headers.

#define UMINFER_FULL_MASK 0xffffffffu

// (a, ia) ranks before (b, ib)? An index < 0 is "no candidate", ranked last.
__device__ __forceinline__ bool uminfer_ranks_before(float a, int ia, float b, int ib) {
  if (ia < 0) return false;
  if (ib < 0) return true;
  const bool a_nan = a != a, b_nan = b != b;
  if (a_nan || b_nan) return a_nan && (!b_nan || ia < ib);
  if (a != b) return a > b;
  return ia < ib;
}

// Block-wide reductions: every thread gets the result. `scratch` holds 32
// entries; the trailing __syncthreads lets the caller reuse it at once.
__device__ float uminfer_block_max(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(UMINFER_FULL_MASK, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? scratch[lane] : __int_as_float(0xff800000);  // -inf
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(UMINFER_FULL_MASK, v, o));
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  v = scratch[0];
  __syncthreads();
  return v;
}

__device__ float uminfer_block_sum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(UMINFER_FULL_MASK, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? scratch[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(UMINFER_FULL_MASK, v, o);
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  v = scratch[0];
  __syncthreads();
  return v;
}

// The best-ranked (value, index) over the block.
__device__ void uminfer_block_best(float* v, int* i, float* scratch_v, int* scratch_i) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_down_sync(UMINFER_FULL_MASK, *v, o);
    const int oi = __shfl_down_sync(UMINFER_FULL_MASK, *i, o);
    if (uminfer_ranks_before(ov, oi, *v, *i)) { *v = ov; *i = oi; }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) { scratch_v[warp] = *v; scratch_i[warp] = *i; }
  __syncthreads();
  if (warp == 0) {
    *v = lane < warps ? scratch_v[lane] : 0.0f;
    *i = lane < warps ? scratch_i[lane] : -1;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_down_sync(UMINFER_FULL_MASK, *v, o);
      const int oi = __shfl_down_sync(UMINFER_FULL_MASK, *i, o);
      if (uminfer_ranks_before(ov, oi, *v, *i)) { *v = ov; *i = oi; }
    }
    if (lane == 0) { scratch_v[0] = *v; scratch_i[0] = *i; }
  }
  __syncthreads();
  *v = scratch_v[0];
  *i = scratch_i[0];
  __syncthreads();
}

extern "C" __global__ void uminfer_softmax_topk(
    const float* __restrict__ logits, float* __restrict__ probs,
    float* __restrict__ top_values, int* __restrict__ top_indices, int classes, int k) {
  __shared__ float scratch_v[32];
  __shared__ int scratch_i[32];
  const long long row = blockIdx.x;
  const float* x = logits + row * classes;
  float* p = probs + row * classes;

  float m = __int_as_float(0xff800000);  // -inf
  for (int j = threadIdx.x; j < classes; j += blockDim.x) m = fmaxf(m, x[j]);
  m = uminfer_block_max(m, scratch_v);

  float s = 0.0f;
  for (int j = threadIdx.x; j < classes; j += blockDim.x) s += expf(x[j] - m);
  s = uminfer_block_sum(s, scratch_v);

  for (int j = threadIdx.x; j < classes; j += blockDim.x) p[j] = expf(x[j] - m) / s;

  float prev_v = 0.0f;
  int prev_i = -1;  // none yet: every element ranks after it
  for (int r = 0; r < k; ++r) {
    float best_v = 0.0f;
    int best_i = -1;
    for (int j = threadIdx.x; j < classes; j += blockDim.x) {
      const float v = x[j];
      if ((prev_i < 0 || uminfer_ranks_before(prev_v, prev_i, v, j)) &&
          uminfer_ranks_before(v, j, best_v, best_i)) {
        best_v = v;
        best_i = j;
      }
    }
    uminfer_block_best(&best_v, &best_i, scratch_v, scratch_i);
    if (threadIdx.x == 0) {
      top_values[row * k + r] = expf(best_v - m) / s;
      top_indices[row * k + r] = best_i;
    }
    prev_v = best_v;
    prev_i = best_i;
  }
}
