// preprocess.cu — a u8 HWC image (H×W×C, C ≤ 4, row-major, as a camera or a
// decoder gives it) to normalised f32 NCHW with batch 1:
//
//   dst[ch*H*W + p] = (src[p*C + ch] / 255 - mean[ch]) * inv_std[ch]
//
// for every pixel p = y*W + x and channel ch < C. One thread per pixel: the
// C bytes of neighbouring pixels are neighbours in memory, and every channel
// plane is written coalesced. mean and 1/std travel as scalar arguments, so a
// launch reads no buffer besides src and writes none besides dst, and can be
// captured in a CUDA graph as is. The arithmetic (an IEEE division by 255, a
// subtraction, a multiplication) is the one src/ops/reference.rs does on the
// CPU, so both give the same bits.
//
// Self-contained (no #include): NVRTC compiles it without CUDA headers.

extern "C" __global__ void uminfer_preprocess_u8_hwc_f32_nchw(
    const unsigned char* __restrict__ src, float* __restrict__ dst, int pixels, int channels,
    float mean0, float mean1, float mean2, float mean3,
    float inv_std0, float inv_std1, float inv_std2, float inv_std3) {
  const float mean[4] = {mean0, mean1, mean2, mean3};
  const float inv_std[4] = {inv_std0, inv_std1, inv_std2, inv_std3};
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < pixels; p += stride) {
    const unsigned char* px = src + p * channels;
#pragma unroll
    for (int ch = 0; ch < 4; ++ch) {
      if (ch < channels) {
        dst[ch * (long long)pixels + p] = ((float)px[ch] / 255.0f - mean[ch]) * inv_std[ch];
      }
    }
  }
}
