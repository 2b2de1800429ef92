// Fused training BatchNorm(+residual add)+ReLU: per-channel sums (deterministic two-level reduction with fp32
// accumulation about a per-channel shift, then an fp64 pass over the per-block partials), and single-pass
// normalize+affine+[add]+ReLU forward and backward. NHWC with 16-byte vectors, or any dense NCHW/NHWC scalar path.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "kernels/bn_act_kernels.h"
#include "kernels/float_convert.cuh"

namespace resnet_ext {
namespace bn_act {
namespace {

constexpr int kSumThreads = 256;      // NHWC sums: blockDim.x channel vectors x blockDim.y rows in flight
constexpr int64_t kMaxRowBlocks = 1024;  // per-block partials kept few, so the fp64 final pass is cheap
constexpr int kNchwThreads = 256;
constexpr int64_t kNchwChunk = 16384;  // values of one channel per NCHW block

// VEC consecutive elements through one 16-byte access when VEC * sizeof(T) == 16.
template <typename T, int VEC>
struct Pack {
  T v[VEC];
};
template <typename T, int VEC>
__device__ __forceinline__ void load(const T* p, float (&out)[VEC]) {
  Pack<T, VEC> pk;
  if constexpr (VEC * sizeof(T) == 16) {
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    memcpy(&pk, &raw, 16);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) pk.v[i] = p[i];
  }
#pragma unroll
  for (int i = 0; i < VEC; ++i) out[i] = to_float(pk.v[i]);
}
template <typename T, int VEC>
__device__ __forceinline__ void store(T* p, const float (&in)[VEC]) {
  Pack<T, VEC> pk;
#pragma unroll
  for (int i = 0; i < VEC; ++i) pk.v[i] = from_float<T>(in[i]);
  if constexpr (VEC * sizeof(T) == 16) {
    uint4 raw;
    memcpy(&raw, &pk, 16);
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) p[i] = pk.v[i];
  }
}

// One 16-byte vector loaded raw (kept as 4 registers until used), and its VEC values as floats.
template <typename T, int VEC>
__device__ __forceinline__ void unpack(const uint4& raw, float (&out)[VEC]) {
  static_assert(VEC * sizeof(T) == 16, "a 16-byte vector");
  Pack<T, VEC> pk;
  memcpy(&pk, &raw, 16);
#pragma unroll
  for (int i = 0; i < VEC; ++i) out[i] = to_float(pk.v[i]);
}

// The two per-element quantities each sums kernel accumulates.
template <typename T>
struct StatsTerms {  // (x - shift), (x - shift)^2
  const T* x;
  const float* shift;
  template <int VEC>
  __device__ __forceinline__ void operator()(int64_t offset, int64_t c0, float (&a)[VEC], float (&b)[VEC]) const {
    load<T, VEC>(x + offset, a);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      a[i] -= shift[c0 + i];
      b[i] = a[i] * a[i];
    }
  }
};

template <typename T>
struct BackwardTerms {  // g, g * xhat with g = relu ? dy * (y > 0) : dy
  const T* dy;
  const T* y;
  const T* x;
  const float* mean;
  const float* invstd;
  bool relu;
  template <int VEC>
  __device__ __forceinline__ void operator()(int64_t offset, int64_t c0, float (&a)[VEC], float (&b)[VEC]) const {
    float yv[VEC], xv[VEC];
    load<T, VEC>(dy + offset, a);
    load<T, VEC>(x + offset, xv);
    if (relu) load<T, VEC>(y + offset, yv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      if (relu && !(yv[i] > 0.f)) a[i] = 0.f;
      b[i] = a[i] * (xv[i] - mean[c0 + i]) * invstd[c0 + i];
    }
  }
};

// NHWC: x viewed as [M, C]. Block (tx, ty), tx * ty = kSumThreads, covers tx*VEC channels and rows_per_block rows
// and writes its two partial sums per channel to partials[blockIdx.y][2][C]. tx shrinks for narrow layers so no
// thread idles.
template <int VEC, typename Terms>
__global__ void __launch_bounds__(kSumThreads)
    sums_nhwc_kernel(Terms terms, int64_t M, int64_t C, int64_t rows_per_block, float* __restrict__ partials) {
  __shared__ float sh[2 * kSumThreads * VEC];
  const int tx = blockDim.x, ty = blockDim.y, width = tx * VEC;
  const int64_t c0 = (int64_t(blockIdx.x) * tx + threadIdx.x) * VEC;
  const int64_t row_begin = int64_t(blockIdx.y) * rows_per_block;
  const int64_t row_end = min(M, row_begin + rows_per_block);
  float s1[VEC], s2[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) s1[i] = s2[i] = 0.f;
  if (c0 < C) {
    for (int64_t m = row_begin + threadIdx.y; m < row_end; m += ty) {
      float a[VEC], b[VEC];
      terms.template operator()<VEC>(m * C + c0, c0, a, b);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        s1[i] += a[i];
        s2[i] += b[i];
      }
    }
  }
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    sh[(0 * ty + threadIdx.y) * width + threadIdx.x * VEC + i] = s1[i];
    sh[(1 * ty + threadIdx.y) * width + threadIdx.x * VEC + i] = s2[i];
  }
  __syncthreads();
  // Fixed-order combine over the rows in flight: deterministic.
  for (int idx = threadIdx.y * tx + threadIdx.x; idx < 2 * width; idx += tx * ty) {
    const int which = idx / width, col = idx % width;
    const int64_t c = int64_t(blockIdx.x) * width + col;
    if (c >= C) continue;
    float acc = 0.f;
    for (int r = 0; r < ty; ++r) acc += sh[(which * ty + r) * width + col];
    partials[(int64_t(blockIdx.y) * 2 + which) * C + c] = acc;
  }
}

// NCHW: block (channel c = blockIdx.x, chunk blockIdx.y of its N*HW values), threads along contiguous HW.
template <typename Terms>
__global__ void __launch_bounds__(kNchwThreads)
    sums_nchw_kernel(Terms terms, int64_t N, int64_t C, int64_t HW, float* __restrict__ partials) {
  __shared__ float sh[2][kNchwThreads];
  const int64_t c = blockIdx.x;
  const int64_t begin = int64_t(blockIdx.y) * kNchwChunk, end = min(N * HW, begin + kNchwChunk);
  float s1 = 0.f, s2 = 0.f;
  for (int64_t e = begin + threadIdx.x; e < end; e += kNchwThreads) {
    const int64_t n = e / HW, hw = e - n * HW;
    float a[1], b[1];
    terms.template operator()<1>((n * C + c) * HW + hw, c, a, b);
    s1 += a[0];
    s2 += b[0];
  }
  sh[0][threadIdx.x] = s1;
  sh[1][threadIdx.x] = s2;
  __syncthreads();
  for (int stride = kNchwThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      sh[0][threadIdx.x] += sh[0][threadIdx.x + stride];
      sh[1][threadIdx.x] += sh[1][threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x < 2) partials[(int64_t(blockIdx.y) * 2 + threadIdx.x) * C + c] = sh[threadIdx.x][0];
}

// sums[w][c] = sum over blocks of partials[b][w][c], in fp64 and in block order.
__global__ void reduce_partials_kernel(const float* __restrict__ partials, int64_t blocks, int64_t C,
                                       float* __restrict__ sums) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= 2 * C) return;
  const int64_t which = i / C, c = i % C;
  double acc = 0.0;
  for (int64_t b = 0; b < blocks; ++b) acc += partials[(b * 2 + which) * C + c];
  sums[which * C + c] = float(acc);
}

__global__ void stats_from_sums_kernel(int64_t C, const float* __restrict__ sums, const float* __restrict__ shift,
                                       double count, double eps, float* mean, float* invstd, float* var_unbiased) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const double mu = double(sums[c]) / count;
  const double var = fmax(double(sums[C + c]) / count - mu * mu, 0.0);
  // A non-finite shift stays (inf - inf about it is NaN): torch's mean is that inf, or NaN.
  mean[c] = isfinite(shift[c]) ? float(double(shift[c]) + mu) : shift[c];
  invstd[c] = float(1.0 / sqrt(var + eps));
  var_unbiased[c] = float(count > 1 ? var * count / (count - 1) : var);
}

template <typename T, int VEC>
__global__ void apply_forward_kernel(const T* __restrict__ x, const T* __restrict__ residual,
                                     const float* __restrict__ weight, const float* __restrict__ bias,
                                     const float* __restrict__ mean, const float* __restrict__ invstd, bool relu,
                                     T* __restrict__ y, int64_t total, int64_t C, int64_t HW, bool channels_last) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x * VEC;
  for (int64_t e = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; e < total; e += stride) {
    // VEC > 1 only for NHWC with C % VEC == 0: the VEC elements are consecutive channels of one pixel.
    const int64_t c0 = channels_last ? e % C : (e / HW) % C;
    float xv[VEC], rv[VEC], out[VEC];
    load<T, VEC>(x + e, xv);
    if (residual) load<T, VEC>(residual + e, rv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float scale = invstd[c0 + i] * weight[c0 + i];
      float v = (xv[i] - mean[c0 + i]) * scale + bias[c0 + i];
      if (residual) v += rv[i];
      out[i] = relu ? fmaxf(v, 0.f) : v;
    }
    store<T, VEC>(y + e, out);
  }
}

template <typename T, int VEC>
__global__ void backward_apply_kernel(const T* __restrict__ dy, const T* __restrict__ y, const T* __restrict__ x,
                                      const float* __restrict__ weight, const float* __restrict__ mean,
                                      const float* __restrict__ invstd, const float* __restrict__ sums,
                                      float inv_count, bool relu, T* __restrict__ dx, T* __restrict__ dres,
                                      int64_t total, int64_t C, int64_t HW, bool channels_last) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x * VEC;
  for (int64_t e = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; e < total; e += stride) {
    const int64_t c0 = channels_last ? e % C : (e / HW) % C;
    float g[VEC], yv[VEC], xv[VEC], out[VEC];
    load<T, VEC>(dy + e, g);
    load<T, VEC>(x + e, xv);
    if (relu) load<T, VEC>(y + e, yv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const int64_t c = c0 + i;
      if (relu && !(yv[i] > 0.f)) g[i] = 0.f;
      const float xhat = (xv[i] - mean[c]) * invstd[c];
      out[i] = weight[c] * invstd[c] * (g[i] - sums[c] * inv_count - xhat * sums[C + c] * inv_count);
    }
    store<T, VEC>(dx + e, out);
    if (dres) store<T, VEC>(dres + e, g);
  }
}

std::string last_error() {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? "" : cudaGetErrorString(e);
}

int vec_width(const Layout& l, int vec) { return l.vectorized ? vec : 1; }

// Block shape of the NHWC sums: as many channel vectors across as the layer has (up to 32), rows down the rest.
dim3 nhwc_block(const Layout& l, int vec) {
  const int64_t vectors = l.C / vec_width(l, vec);
  int tx = 1;
  while (tx < 32 && tx < vectors) tx *= 2;
  return dim3(tx, kSumThreads / tx);
}

int64_t nhwc_grid_x(const Layout& l, int vec) {
  const int64_t vectors = (l.C + vec_width(l, vec) - 1) / vec_width(l, vec);
  return (vectors + nhwc_block(l, vec).x - 1) / nhwc_block(l, vec).x;
}

// Resident blocks to aim for: 16 per multiprocessor of the device (an H100-sized guess when it is not known).
int64_t blocks_to_fill(const Layout& l) { return int64_t(l.sm_count > 0 ? l.sm_count : 132) * 16; }

// Rows per block: enough blocks to fill the GPU several times over, at most kMaxRowBlocks per column of blocks.
int64_t nhwc_rows_per_block(const Layout& l, int vec) {
  const int64_t target =
      std::max<int64_t>(1, std::min<int64_t>(kMaxRowBlocks, blocks_to_fill(l) / nhwc_grid_x(l, vec)));
  const int64_t ty = nhwc_block(l, vec).y;
  int64_t rows = (l.M() + target - 1) / target;
  rows = std::max<int64_t>(rows, 4 * ty);
  return (rows + ty - 1) / ty * ty;
}

int64_t nhwc_row_blocks(const Layout& l, int vec) {
  return (l.M() + nhwc_rows_per_block(l, vec) - 1) / nhwc_rows_per_block(l, vec);
}
int64_t nchw_chunks(const Layout& l) { return (l.M() + kNchwChunk - 1) / kNchwChunk; }
template <typename T>
constexpr int vec_of() {
  return 16 / sizeof(T);
}

int64_t sum_blocks(const Layout& l, int vec) { return l.channels_last ? nhwc_row_blocks(l, vec) : nchw_chunks(l); }

unsigned elementwise_blocks(const Layout& l, int64_t vectors) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>((vectors + 255) / 256, blocks_to_fill(l))));
}
#ifdef RESNET_EXT_EXPERIMENTAL
#include "experimental/bn_act_optin.cuh"
#endif

template <typename T, typename Terms>
std::string launch_sums(const Layout& l, Terms terms, float* partials, float* sums, cudaStream_t s) {
  constexpr int V = vec_of<T>();
  if (l.channels_last) {
    dim3 grid(unsigned(nhwc_grid_x(l, V)), unsigned(nhwc_row_blocks(l, V)));
    if (l.vectorized) {
      sums_nhwc_kernel<V><<<grid, nhwc_block(l, V), 0, s>>>(terms, l.M(), l.C, nhwc_rows_per_block(l, V), partials);
    } else {
      sums_nhwc_kernel<1><<<grid, nhwc_block(l, V), 0, s>>>(terms, l.M(), l.C, nhwc_rows_per_block(l, V), partials);
    }
  } else {
    dim3 grid(unsigned(l.C), unsigned(nchw_chunks(l)));
    sums_nchw_kernel<<<grid, kNchwThreads, 0, s>>>(terms, l.N, l.C, l.HW, partials);
  }
#ifdef RESNET_EXT_EXPERIMENTAL
  if (optin()) {
    reduce_partials_parallel_kernel<<<dim3(unsigned((l.C + kRedX - 1) / kRedX), 2), dim3(kRedX, kRedY), 0, s>>>(
        partials, sum_blocks(l, V), l.C, sums);
    return last_error();
  }
#endif
  const int64_t n = 2 * l.C;
  reduce_partials_kernel<<<unsigned((n + 255) / 256), 256, 0, s>>>(partials, sum_blocks(l, V), l.C, sums);
  return last_error();
}

template <typename F>
std::string dispatch(DType t, F&& f) {
  switch (t) {
    case DType::Float32: return f(float{});
    case DType::Float16: return f(__half{});
    case DType::BFloat16: return f(__nv_bfloat16{});
  }
  return "unknown dtype";
}

}  // namespace

#ifdef RESNET_EXT_EXPERIMENTAL
namespace {
std::atomic<bool> g_optin{false};  // set from Python only (resnet_ext.ops.bn_optin)
}  // namespace

bool optin() { return g_optin.load(std::memory_order_relaxed); }

void set_optin(bool on) { g_optin.store(on, std::memory_order_relaxed); }
#endif

int64_t partials_floats(const Layout& l, int64_t element_size) {
  return sum_blocks(l, int(16 / element_size)) * 2 * l.C;
}

std::string channel_stats(DType t, const Layout& l, const void* x, const float* shift, float* partials, float* sums,
                          void* stream) {
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    return launch_sums<T>(l, StatsTerms<T>{static_cast<const T*>(x), shift}, partials, sums,
                          static_cast<cudaStream_t>(stream));
  });
}

std::string stats_from_sums(int64_t C, const float* sums, const float* shift, double count, double eps, float* mean,
                            float* invstd, float* var_unbiased, void* stream) {
  stats_from_sums_kernel<<<unsigned((C + 255) / 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      C, sums, shift, count, eps, mean, invstd, var_unbiased);
  return last_error();
}

std::string apply_forward(DType t, const Layout& l, const void* x, const void* residual, const float* weight,
                          const float* bias, const float* mean, const float* invstd, bool relu, void* y,
                          void* stream) {
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    auto s = static_cast<cudaStream_t>(stream);
    const int64_t total = l.M() * l.C;
    const auto* xp = static_cast<const T*>(x);
    const auto* rp = static_cast<const T*>(residual);
    auto* yp = static_cast<T*>(y);
    constexpr int V = vec_of<T>();
#ifdef RESNET_EXT_EXPERIMENTAL
    const unsigned stationary = (optin() && l.vectorized) ? stationary_blocks(l, V) : 0u;
    if (stationary > 0) {
      apply_forward_stationary_kernel<T, V><<<stationary, 256, 0, s>>>(xp, rp, weight, bias, mean, invstd, relu, yp,
                                                                       total, l.C);
      return last_error();
    }
#endif
    if (l.vectorized) {
      apply_forward_kernel<T, V><<<elementwise_blocks(l, total / V), 256, 0, s>>>(
          xp, rp, weight, bias, mean, invstd, relu, yp, total, l.C, l.HW, l.channels_last);
    } else {
      apply_forward_kernel<T, 1><<<elementwise_blocks(l, total), 256, 0, s>>>(
          xp, rp, weight, bias, mean, invstd, relu, yp, total, l.C, l.HW, l.channels_last);
    }
    return last_error();
  });
}

std::string backward_sums(DType t, const Layout& l, const void* dy, const void* y, const void* x, const float* mean,
                          const float* invstd, bool relu, float* partials, float* sums, void* stream) {
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    BackwardTerms<T> terms{static_cast<const T*>(dy), static_cast<const T*>(y), static_cast<const T*>(x), mean,
                           invstd, relu};
    return launch_sums<T>(l, terms, partials, sums, static_cast<cudaStream_t>(stream));
  });
}

std::string backward_apply(DType t, const Layout& l, const void* dy, const void* y, const void* x, const float* weight,
                           const float* mean, const float* invstd, const float* sums, double count, bool relu,
                           void* dx, void* dres, void* stream) {
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    auto s = static_cast<cudaStream_t>(stream);
    const int64_t total = l.M() * l.C;
    const float inv_count = float(1.0 / count);
    auto args = [&](auto kernel, int64_t vectors) {
      kernel<<<elementwise_blocks(l, vectors), 256, 0, s>>>(
          static_cast<const T*>(dy), static_cast<const T*>(y), static_cast<const T*>(x), weight, mean, invstd, sums,
          inv_count, relu, static_cast<T*>(dx), static_cast<T*>(dres), total, l.C, l.HW, l.channels_last);
    };
    constexpr int V = vec_of<T>();
#ifdef RESNET_EXT_EXPERIMENTAL
    const unsigned stationary = (optin() && l.vectorized) ? stationary_blocks(l, V) : 0u;
    if (stationary > 0) {
      backward_apply_stationary_kernel<T, V><<<stationary, 256, 0, s>>>(
          static_cast<const T*>(dy), static_cast<const T*>(y), static_cast<const T*>(x), weight, mean, invstd, sums,
          inv_count, relu, static_cast<T*>(dx), static_cast<T*>(dres), total, l.C);
      return last_error();
    }
#endif
    if (l.vectorized) {
      args(backward_apply_kernel<T, V>, total / V);
    } else {
      args(backward_apply_kernel<T, 1>, total);
    }
    return last_error();
  });
}

}  // namespace bn_act
}  // namespace resnet_ext
