// resnet_ext::pool_linear(x, weight, bias) == F.linear(x.float().mean((2, 3)), weight, bias): a ResNet's head, the
// global average pool and the fc, as one op with fp32 sums (x float32 or bfloat16, NCHW or channels_last; weight
// and bias float32). The frozen CPU plan's head at small batches.
//
// Why one op: a frozen batch-1 forward streams more weight bytes than the L3 holds, so code run once per forward
// is fetched from memory each time: ATen's cast, average pool and oneDNN's linear took 0.56 ms there, this op
// 0.22-0.28 ms (resnet50 on 2 Zen 5 cores; benchmarks/results/2026-12-05-cpu-head/). This op's code is a few small
// loops. The fc's weight is read once, every
// batch row's dot product taking each 16 of its values as they come: a GEMV for few rows (the plan's bound,
// engine.cpu.HEAD_MAX_BATCH), oneDNN's GEMM beyond.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops/avx512_lanes.h"

namespace resnet_ext {
namespace {

using at::Tensor;

Tensor pool_linear_stock(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias) {
  return at::linear(x.to(at::kFloat).mean({2, 3}), weight, bias);
}

#ifdef RESNET_EXT_AVX512_LANES
#define RESNET_EXT_HEAD_TARGET RESNET_EXT_LANES_TARGET
using lanes::load;
using lanes::mask;

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 on its own AVX-512 intrinsics (false positives)
#pragma GCC diagnostic ignored "-Wuninitialized"
// pooled[c0 : c0 + 128] (those below c) = the mean over the hw pixels of a channels_last image's channels there:
// 8 vectors of 16 channels held in registers while the pixels stream by.
template <class T>
RESNET_EXT_HEAD_TARGET void pool_nhwc(const T* x, float* pooled, int64_t c, int64_t hw, int64_t c0) {
  constexpr int kBlock = 8;
  __mmask16 m[kBlock];
  __m512 acc[kBlock];
  for (int j = 0; j < kBlock; ++j) m[j] = mask(c - c0 - 16 * j), acc[j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < hw; ++p)
    for (int j = 0; j < kBlock; ++j) acc[j] = _mm512_add_ps(acc[j], load(x + p * c + c0 + 16 * j, m[j]));
  const __m512 count = _mm512_set1_ps(float(hw));
  for (int j = 0; j < kBlock; ++j) _mm512_mask_storeu_ps(pooled + c0 + 16 * j, m[j], _mm512_div_ps(acc[j], count));
}

// The mean of one NCHW channel's hw contiguous values.
template <class T>
RESNET_EXT_HEAD_TARGET float pool_plane(const T* x, int64_t hw) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t p = 0; p < hw; p += 16) acc = _mm512_add_ps(acc, load(x + p, mask(hw - p)));
  return _mm512_reduce_add_ps(acc) / float(hw);
}

// out[n, o .. o + OB) = bias + dot(w[o + i, :], pooled[n, :]) for the R batch rows n: OB * R independent sums in
// registers (one chain of FMAs each would wait on the FMA's latency), each 16 weights loaded once for all R rows.
template <int R, int OB>
RESNET_EXT_HEAD_TARGET void gemv_block(const float* w, const float* pooled, const float* bias, float* out,
                                       int64_t c, int64_t o_count, int64_t o) {
  __m512 acc[OB][R];
  for (int i = 0; i < OB; ++i)
    for (int n = 0; n < R; ++n) acc[i][n] = _mm512_setzero_ps();
  for (int64_t k = 0; k < c; k += 16) {
    const __mmask16 m = mask(c - k);
    __m512 p[R];
    for (int n = 0; n < R; ++n) p[n] = _mm512_maskz_loadu_ps(m, pooled + n * c + k);
    for (int i = 0; i < OB; ++i) {
      const __m512 wv = _mm512_maskz_loadu_ps(m, w + (o + i) * c + k);
      for (int n = 0; n < R; ++n) acc[i][n] = _mm512_fmadd_ps(wv, p[n], acc[i][n]);
    }
  }
  for (int i = 0; i < OB; ++i)
    for (int n = 0; n < R; ++n)
      out[n * o_count + o + i] = _mm512_reduce_add_ps(acc[i][n]) + (bias != nullptr ? bias[o + i] : 0.f);
}

// The rows o of [o0, o1) for R batch rows: blocks of OB output rows (OB * R <= 16 sums), then one at a time.
template <int R>
void gemv(const float* w, const float* pooled, const float* bias, float* out, int64_t c, int64_t o_count,
          int64_t o0, int64_t o1) {
  constexpr int OB = R == 1 ? 8 : R <= 4 ? 4 : 2;
  int64_t o = o0;
  for (; o + OB <= o1; o += OB) gemv_block<R, OB>(w, pooled, bias, out, c, o_count, o);
  for (; o < o1; ++o) gemv_block<R, 1>(w, pooled, bias, out, c, o_count, o);
}
#pragma GCC diagnostic pop

constexpr int64_t kRows = 8;  // batch rows per pass over the weight
using GemvFn = void (*)(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t);
constexpr GemvFn kGemv[kRows] = {gemv<1>, gemv<2>, gemv<3>, gemv<4>, gemv<5>, gemv<6>, gemv<7>, gemv<8>};

template <class T>
void head(const Tensor& x, const Tensor& w, const float* bias, Tensor& out, bool nhwc) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3), o_count = w.size(0);
  const T* xp = x.data_ptr<T>();
  std::vector<float> pooled(size_t(n * c));
  if (nhwc) {
    const int64_t blocks = (c + 127) / 128;  // pool_nhwc's 8 vectors of 16 channels
    at::parallel_for(0, n * blocks, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, hw * 128)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t i = begin; i < end; ++i)
                         pool_nhwc<T>(xp + (i / blocks) * hw * c, pooled.data() + (i / blocks) * c, c, hw,
                                      (i % blocks) * 128);
                     });
  } else {
    at::parallel_for(0, n * c, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, hw)), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) pooled[size_t(i)] = pool_plane<T>(xp + i * hw, hw);
    });
  }
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t n0 = 0; n0 < n; n0 += kRows) {
    const int64_t rows = std::min(kRows, n - n0);
    at::parallel_for(0, o_count, 32, [&](int64_t begin, int64_t end) {
      kGemv[rows - 1](wp, pooled.data() + n0 * c, bias, op + n0 * o_count, c, o_count, begin, end);
    });
  }
}
#endif

// Whether this CPU runs the loops above.
bool own_loops_run_here() {
#ifdef RESNET_EXT_AVX512_LANES
  return lanes::supported();
#else
  return false;
#endif
}

Tensor pool_linear_cpu(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu() && (!bias.has_value() || bias->device().is_cpu()),
              "pool_linear: x, weight and bias must be CPU tensors");
  TORCH_CHECK(x.dim() == 4 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "pool_linear: x must be a 4-d float32 or bfloat16 tensor (N, C, H, W), got ", x.dim(), "-d ",
              x.scalar_type());
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, "pool_linear: x must have a height and width, got ", x.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat && weight.size(1) == x.size(1),
              "pool_linear: weight must be a float32 matrix (out_features, ", x.size(1), "), got ",
              weight.scalar_type(), " ", weight.sizes());
  if (bias.has_value())
    TORCH_CHECK(bias->dim() == 1 && bias->scalar_type() == at::kFloat && bias->size(0) == weight.size(0),
                "pool_linear: bias must be a float32 vector of ", weight.size(0), " values, got ",
                bias->scalar_type(), " ", bias->sizes());
#ifdef RESNET_EXT_AVX512_LANES
  const bool avx512 = own_loops_run_here();
  const bool nhwc = x.is_contiguous(at::MemoryFormat::ChannelsLast), nchw = x.is_contiguous();
  if (avx512 && (nhwc || nchw) && x.size(0) > 0) {
    const Tensor w = weight.contiguous();
    const Tensor b = bias.has_value() ? bias->contiguous() : Tensor();
    Tensor out = at::empty({x.size(0), w.size(0)}, x.options().dtype(at::kFloat));
    const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
    // A 1x1 map is dense in both layouts: read it as NHWC, whose loop runs over the channels.
    const bool as_nhwc = nhwc && !(nchw && x.size(2) * x.size(3) > 1);
    if (x.scalar_type() == at::kFloat)
      head<float>(x, w, bp, out, as_nhwc);
    else
      head<c10::BFloat16>(x, w, bp, out, as_nhwc);
    return out;
  }
#endif
  return pool_linear_stock(x, weight, bias);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(resnet_ext, m) {
  // F.linear(x.float().mean((2, 3)), weight, bias): the average pool and fc of a ResNet's head in one op (CPU).
  m.def("pool_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor", {at::Tag::pt2_compliant_tag});
  // Whether pool_linear runs its own loops on this CPU (else ATen's ops).
  m.def("pool_linear_supported() -> bool", &own_loops_run_here);
}

TORCH_LIBRARY_IMPL(resnet_ext, CPU, m) { m.impl("pool_linear", &pool_linear_cpu); }

}  // namespace resnet_ext
