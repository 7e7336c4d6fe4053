// stage.cu — copies a request's input from where the host wrote it
// (host-resident managed memory or mapped pinned memory, which the GPU reads
// over the bus) into a device buffer, once, at the start of the request.
//
// A convolution reads each input element several times (a 3×3 window with
// stride 2 reads most of them twice or more); reading them in place pays the
// bus for every one of those reads. This kernel reads each byte once, 16
// bytes per thread, with every thread's load in flight at the same time, and
// the model then reads device memory. `src` and `dst` are 16-byte aligned;
// the last `tail` (< 16) bytes are copied one per thread by block 0.
//
// Self-contained (no #include): NVRTC compiles it without CUDA headers.

struct alignas(16) Chunk {
  unsigned int w[4];
};

extern "C" __global__ void uminfer_stage_copy(const Chunk* __restrict__ src, Chunk* __restrict__ dst,
                                              long long chunks, int tail) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < chunks; i += stride) {
    dst[i] = src[i];
  }
  if (blockIdx.x == 0 && threadIdx.x < tail) {
    const unsigned char* s = (const unsigned char*)(src + chunks);
    unsigned char* d = (unsigned char*)(dst + chunks);
    d[threadIdx.x] = s[threadIdx.x];
  }
}
