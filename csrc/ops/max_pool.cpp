// resnet_ext::max_pool_nhwc(x, kernel_size, stride, padding, dilation) == F.max_pool2d(x, ...) (ceil_mode False, no
// indices), bit for bit, NaN included. On the CPU a channels_last-dense fp32 or bf16 x on a CPU with AVX-512 (F, BW,
// VL) runs the kernel below: one pass, 16 channels per vector, no indices. ATen's channels_last max pool computes
// indices too and took 250 us for the resnet50 stem's 64x112x112 bf16 map at batch 1 on 2 cores of an AMX Xeon
// (input 1.6 MB). Everything else runs ATen's max_pool2d, which also gives its errors. The CUDA kernel is
// experimental (experimental/max_pool.cpp); without it CUDA runs ATen's too.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "dispatch/conv_problem.h"
#include "ops/max_pool.h"

#include "ops/avx512_lanes.h"

namespace resnet_ext {

using at::Tensor;

Tensor max_pool_stock(const Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d) {
  return at::max_pool2d(x, k, s, p, d, /*ceil_mode=*/false);
}

bool describe_pool(const Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d,
                   PoolProblem* pr) {
  if (x.dim() != 4 || k.size() != 2 || s.size() != 2 || p.size() != 2 || d.size() != 2 || x.numel() == 0 ||
      !x.is_contiguous(at::MemoryFormat::ChannelsLast))
    return false;
  for (int i = 0; i < 2; ++i)
    if (k[i] <= 0 || s[i] <= 0 || d[i] <= 0 || p[i] < 0 || 2 * p[i] > k[i]) return false;
  pr->N = x.size(0), pr->C = x.size(1), pr->H = x.size(2), pr->W = x.size(3);
  pr->R = int(k[0]), pr->S = int(k[1]), pr->stride_h = int(s[0]), pr->stride_w = int(s[1]);
  pr->pad_h = int(p[0]), pr->pad_w = int(p[1]), pr->dil_h = int(d[0]), pr->dil_w = int(d[1]);
  pr->P = conv_output_size(pr->H, pr->R, pr->stride_h, pr->pad_h, pr->dil_h);  // a pool's size is a conv's
  pr->Q = conv_output_size(pr->W, pr->S, pr->stride_w, pr->pad_w, pr->dil_w);
  // The output takes torch's layout, x's suggested one (the kernels allocate it so). Where that is NCHW (x's
  // strides are ambiguous: 1 channel or a 1x1 map) the NHWC order the kernels write is NCHW's only for an output
  // of 1 channel or 1x1 pixels; a larger one (a 1x1 map padded into 2x2) is ATen's.
  if (x.suggest_memory_format() != at::MemoryFormat::ChannelsLast && pr->C != 1 && pr->P * pr->Q != 1) return false;
  return pr->P > 0 && pr->Q > 0;
}

namespace {

#ifdef RESNET_EXT_AVX512_LANES

#define RESNET_EXT_POOL_TARGET RESNET_EXT_LANES_TARGET
using lanes::load;
RESNET_EXT_POOL_TARGET inline void store(float* p, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }
RESNET_EXT_POOL_TARGET inline void store(c10::BFloat16* p, __m512 v, __mmask16 m) {  // exact: a bf16 value came in
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16)));
}

// GCC 12 warns about the undefined vectors inside its own AVX-512 intrinsics (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// One block of NV vectors of channels (the last one `last` of its lanes) of one output: the maximum of the window's
// valid taps in ATen's order (rows, then columns), taking a tap where it is greater or NaN, from -inf: ATen's rule, so
// ties of -0/+0 and NaN payloads match too. NV is a template parameter so that the maxima stay in registers while the
// taps stream by: with a run-time count GCC kept them on the stack, a store and reload per tap. The resnet50 stem's
// 64x112x112 map at batch 1 on 2 threads, against ATen's channels_last max pool in the same process: bf16
// 0.54-0.59 -> 0.39-0.46x its time, fp32 0.60-0.64 -> 0.36-0.66x (median 0.48); inside the frozen forward bf16
// 0.147-0.149 -> 0.114-0.127 ms, fp32 0.158-0.172 -> 0.136-0.139 ms (benchmarks/results/2026-12-06-cpu-entry/).
// (Two chains of maxima, the window's first and last rows, measured no faster.)
template <class T, int NV>
RESNET_EXT_POOL_TARGET [[gnu::always_inline]] inline void pool_block(const T* x, T* out, const PoolProblem& g,
                                                                     int64_t iy0, int64_t r0, int64_t r1, int64_t ix0,
                                                                     int64_t s0, int64_t s1, __mmask16 last) {
  __m512 acc[NV];
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) acc[j] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t s = s0; s < s1; ++s) {
      const T* in = x + ((iy0 + r * g.dil_h) * g.W + ix0 + s * g.dil_w) * g.C;
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        const __m512 v = load(in + 16 * j, j == NV - 1 ? last : __mmask16(0xFFFF));
        const __mmask16 take = _mm512_cmp_ps_mask(v, acc[j], _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        acc[j] = _mm512_mask_mov_ps(acc[j], take, v);
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) store(out + 16 * j, acc[j], j == NV - 1 ? last : __mmask16(0xFFFF));
}

// One output row (n, oy), channels in blocks of up to 8 vectors.
template <class T>
RESNET_EXT_POOL_TARGET void pool_row(const T* x, T* y, const PoolProblem& g, int64_t oy) {
  constexpr int64_t kBlock = 8;
  const int64_t iy0 = oy * g.stride_h - g.pad_h;
  int64_t r0 = 0, r1 = g.R;  // the window's rows inside the input
  while (r0 < r1 && iy0 + r0 * g.dil_h < 0) ++r0;
  while (r1 > r0 && iy0 + (r1 - 1) * g.dil_h >= g.H) --r1;
  for (int64_t ox = 0; ox < g.Q; ++ox) {
    const int64_t ix0 = ox * g.stride_w - g.pad_w;
    int64_t s0 = 0, s1 = g.S;
    while (s0 < s1 && ix0 + s0 * g.dil_w < 0) ++s0;
    while (s1 > s0 && ix0 + (s1 - 1) * g.dil_w >= g.W) --s1;
    T* out = y + (oy * g.Q + ox) * g.C;
    for (int64_t c0 = 0; c0 < g.C; c0 += 16 * kBlock) {
      const int64_t nv = std::min<int64_t>(kBlock, (g.C - c0 + 15) / 16);
      const __mmask16 last = lanes::mask(g.C - c0 - 16 * (nv - 1));  // 1..16 channels in the block's last vector
      const T* xc = x + c0;
      T* oc = out + c0;
      switch (nv) {
        case 1: pool_block<T, 1>(xc, oc, g, iy0, r0, r1, ix0, s0, s1, last); break;
        case 2: pool_block<T, 2>(xc, oc, g, iy0, r0, r1, ix0, s0, s1, last); break;
        case 3: pool_block<T, 3>(xc, oc, g, iy0, r0, r1, ix0, s0, s1, last); break;
        case 4: pool_block<T, 4>(xc, oc, g, iy0, r0, r1, ix0, s0, s1, last); break;
        case 5: pool_block<T, 5>(xc, oc, g, iy0, r0, r1, ix0, s0, s1, last); break;
        case 6: pool_block<T, 6>(xc, oc, g, iy0, r0, r1, ix0, s0, s1, last); break;
        case 7: pool_block<T, 7>(xc, oc, g, iy0, r0, r1, ix0, s0, s1, last); break;
        default: pool_block<T, 8>(xc, oc, g, iy0, r0, r1, ix0, s0, s1, last); break;
      }
    }
  }
}
#pragma GCC diagnostic pop
#undef RESNET_EXT_POOL_TARGET

template <class T>
void pool(const Tensor& x, Tensor& y, const PoolProblem& g) {
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const int64_t rows = g.N * g.P;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, g.Q * g.C));  // ~4k outputs a task
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.P;
      pool_row<T>(xp + n * g.H * g.W * g.C, yp + n * g.P * g.Q * g.C, g, row % g.P);
    }
  });
}
#endif

Tensor max_pool_cpu(const Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d) {
#ifdef RESNET_EXT_AVX512_LANES
  const bool avx512 = lanes::supported();
  PoolProblem g;
  if (!avx512 || (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16) ||
      !describe_pool(x, k, s, p, d, &g))
    return max_pool_stock(x, k, s, p, d);
  // torch's output layout (describe_pool: the NHWC order written is that layout's)
  Tensor y = at::empty({g.N, g.C, g.P, g.Q}, x.options().memory_format(x.suggest_memory_format()));
  if (x.scalar_type() == at::kFloat)
    pool<float>(x, y, g);
  else
    pool<c10::BFloat16>(x, y, g);
  return y;
#else
  return max_pool_stock(x, k, s, p, d);
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(resnet_ext, m) {
  m.def("max_pool_nhwc(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor",
        {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(resnet_ext, CPU, m) { m.impl("max_pool_nhwc", &max_pool_cpu); }

#ifndef RESNET_EXT_EXPERIMENTAL  // there experimental/max_pool.cpp registers its CUDA kernel
TORCH_LIBRARY_IMPL(resnet_ext, CUDA, m) { m.impl("max_pool_nhwc", &max_pool_stock); }
#endif

}  // namespace resnet_ext
