// NHWC max pool without indices: one thread per output pixel and 16-byte channel vector, so every load and store
// is one 128-bit access and a warp reads 512 contiguous bytes of one input pixel. The stem's 3x3/2 pool reads each
// input value from L2 up to four times but from DRAM about once; torch's channels_last max pool also writes the
// indices, which inference does not need. Opt-in (resnet_ext.ops.nhwc_max_pool), unverified until a GPU run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "experimental/max_pool_kernels.h"
#include "kernels/float_convert.cuh"

namespace resnet_ext {
namespace max_pool {
namespace {

// The running max in fp32 (every 16-bit value is exact in fp32, so converting the result back is exact too); a
// NaN, once seen, stays: torch's max pool propagates NaN.
__device__ __forceinline__ float take(float best, float v) { return (best != best || v <= best) ? best : v; }

template <typename T>
__global__ void __launch_bounds__(256) max_pool_nhwc(const T* __restrict__ x, T* __restrict__ y, Problem p,
                                                     int64_t total) {
  constexpr int V = 16 / sizeof(T);
  const int64_t cv = p.C / V;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (i % cv) * V;
    int64_t pix = i / cv;
    const int64_t q = pix % p.Q;
    pix /= p.Q;
    const int64_t pp = pix % p.P;
    const int64_t n = pix / p.P;
    float best[V];
#pragma unroll
    for (int k = 0; k < V; ++k) best[k] = -INFINITY;
    for (int r = 0; r < p.R; ++r) {
      const int64_t h = pp * p.stride_h - p.pad_h + int64_t(r) * p.dil_h;
      if (h < 0 || h >= p.H) continue;
      for (int s = 0; s < p.S; ++s) {
        const int64_t w = q * p.stride_w - p.pad_w + int64_t(s) * p.dil_w;
        if (w < 0 || w >= p.W) continue;
        union {
          uint4 u;
          T v[V];
        } in;
        in.u = *reinterpret_cast<const uint4*>(x + ((n * p.H + h) * p.W + w) * p.C + c);
#pragma unroll
        for (int k = 0; k < V; ++k) best[k] = take(best[k], to_float(in.v[k]));
      }
    }
    union {
      uint4 u;
      T v[V];
    } out;
#pragma unroll
    for (int k = 0; k < V; ++k) out.v[k] = from_float<T>(best[k]);  // exact: best is one of the inputs
    *reinterpret_cast<uint4*>(y + ((n * p.P + pp) * p.Q + q) * p.C + c) = out.u;
  }
}

template <typename T>
std::string launch(const Problem& p, const void* x, void* y, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const int64_t total = p.N * p.P * p.Q * (p.C / V);
  if (total == 0) return "";
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t blocks = (total + 255) / 256;
  const int64_t grid = blocks < int64_t(sms) * 16 ? blocks : int64_t(sms) * 16;  // grid-stride beyond that
  max_pool_nhwc<T><<<unsigned(grid), 256, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(y), p, total);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? "" : cudaGetErrorString(e);
}

}  // namespace

int vector_elements(DType t) { return t == DType::Float32 ? 4 : 8; }

std::string forward(DType t, const Problem& p, const void* x, void* y, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (t) {
    case DType::Float32: return launch<float>(p, x, y, s);
    case DType::Float16: return launch<__half>(p, x, y, s);
    case DType::BFloat16: return launch<__nv_bfloat16>(p, x, y, s);
  }
  return "unknown dtype";
}

}  // namespace max_pool
}  // namespace resnet_ext
