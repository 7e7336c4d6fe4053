// smoke.cu — the doctor's managed-memory round trip: data[i] += value.
extern "C" __global__ void uminfer_smoke_add(float* data, float value, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) data[i] += value;
}
