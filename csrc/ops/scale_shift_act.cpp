// resnet_ext::scale_shift_act_: y = relu?(y * scale[c] + shift[c] (+ residual)) in place, one pass over y, on the
// CPU. The eval BatchNorm (as the per-channel scale and shift of ops.bn_scale_shift), the residual add and the
// ReLU of a conv unit whose BN is not folded (the CPU default mode): one pass where torchvision's modules make up
// to three, with their arithmetic: y * scale + shift as one fused multiply-add (as ATen's vectorized batch norm
// computes it), then the residual added to that rounded value, then the ReLU; the same bits as BN, add, ReLU.
// A bfloat16 y (a bf16 model) is computed in float32 and rounded to bf16 where torchvision's modules round: after
// BN and after the add (ATen's reduced-precision ops compute in float32 and round each op's output).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu_clones.h"
#include "ops/avx512_lanes.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RESNET_EXT_AVX512_BF16_LOOP 1
#endif

namespace {

using at::Tensor;

// One channels_last row (the C values of one pixel), or one NCHW plane (the pixels of one channel).

RESNET_EXT_CLONES void row_cl(float* y, const float* r, const float* s, const float* b, int64_t c, bool relu) {
  if (r) {
    for (int64_t i = 0; i < c; ++i) y[i] = std::fma(y[i], s[i], b[i]) + r[i];
  } else {
    for (int64_t i = 0; i < c; ++i) y[i] = std::fma(y[i], s[i], b[i]);
  }
  if (relu)
    for (int64_t i = 0; i < c; ++i) y[i] = y[i] < 0.f ? 0.f : y[i];  // NaN stays NaN, as torch.relu
}

RESNET_EXT_CLONES void plane_nchw(float* y, const float* r, float s, float b, int64_t n, bool relu) {
  if (r) {
    for (int64_t i = 0; i < n; ++i) y[i] = std::fma(y[i], s, b) + r[i];
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = std::fma(y[i], s, b);
  }
  if (relu)
    for (int64_t i = 0; i < n; ++i) y[i] = y[i] < 0.f ? 0.f : y[i];  // NaN stays NaN, as torch.relu
}

// bfloat16 as its 16 bits, converted as c10::BFloat16 converts (round to nearest even; a NaN stays a NaN).
inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  if (std::isnan(f)) return 0x7FC0;
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// y[i] = bf16(relu?(bf16(y[i] * s[i] + b[i]) + r[i])), i < n: scale and shift per element (a channels_last row,
// `PerElement`) or one for all (an NCHW plane: s1, b1).
template <bool PerElement>
void bf16_scalar(uint16_t* y, const uint16_t* r, const float* s, const float* b, float s1, float b1, int64_t n,
                 bool relu) {
  for (int64_t i = 0; i < n; ++i) {
    float t = std::fma(bf16_to_float(y[i]), PerElement ? s[i] : s1, PerElement ? b[i] : b1);
    if (r) t = bf16_to_float(float_to_bf16(t)) + bf16_to_float(r[i]);
    if (relu) t = t < 0.f ? 0.f : t;  // NaN stays NaN, as torch.relu
    y[i] = float_to_bf16(t);
  }
}

#ifdef RESNET_EXT_AVX512_BF16_LOOP
#define RESNET_EXT_SSA_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))  // bw, vl: 16-bit masks

// GCC 12 warns about the undefined vectors inside its own AVX-512 intrinsics (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

RESNET_EXT_SSA_TARGET inline __m512 load_bf16(const uint16_t* p, __mmask16 m) {  // exact: bf16 is fp32's top half
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

RESNET_EXT_SSA_TARGET inline __m512i round_bf16(__m512 v) {  // float_to_bf16 on 16 lanes, in 32-bit lanes
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
}

template <bool PerElement, bool Residual, bool Relu>
RESNET_EXT_SSA_TARGET void bf16_avx512(uint16_t* y, const uint16_t* r, const float* s, const float* b, float s1,
                                       float b1, int64_t n) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    const __m512 sv = PerElement ? _mm512_maskz_loadu_ps(m, s + i) : _mm512_set1_ps(s1);
    const __m512 bv = PerElement ? _mm512_maskz_loadu_ps(m, b + i) : _mm512_set1_ps(b1);
    __m512 t = _mm512_fmadd_ps(load_bf16(y + i, m), sv, bv);
    if (Residual) {
      t = _mm512_castsi512_ps(_mm512_slli_epi32(round_bf16(t), 16));
      t = _mm512_add_ps(t, load_bf16(r + i, m));
    }
    if (Relu) t = _mm512_max_ps(zero, t);  // the second operand where either is NaN: NaN stays NaN
    _mm256_mask_storeu_epi16(y + i, m, _mm512_cvtepi32_epi16(round_bf16(t)));
  }
}

template <bool PerElement>
RESNET_EXT_SSA_TARGET void bf16_avx512(uint16_t* y, const uint16_t* r, const float* s, const float* b, float s1,
                                       float b1, int64_t n, bool relu) {
  if (r && relu) bf16_avx512<PerElement, true, true>(y, r, s, b, s1, b1, n);
  else if (r) bf16_avx512<PerElement, true, false>(y, r, s, b, s1, b1, n);
  else if (relu) bf16_avx512<PerElement, false, true>(y, r, s, b, s1, b1, n);
  else bf16_avx512<PerElement, false, false>(y, r, s, b, s1, b1, n);
}
#pragma GCC diagnostic pop
#endif

template <bool PerElement>
void bf16_run(uint16_t* y, const uint16_t* r, const float* s, const float* b, float s1, float b1, int64_t n,
              bool relu) {
#ifdef RESNET_EXT_AVX512_BF16_LOOP
  if (resnet_ext::lanes::supported()) return bf16_avx512<PerElement>(y, r, s, b, s1, b1, n, relu);
#endif
  bf16_scalar<PerElement>(y, r, s, b, s1, b1, n, relu);
}

void check_args(const Tensor& y, const Tensor& scale, const Tensor& shift, const std::optional<Tensor>& residual) {
  TORCH_CHECK(y.dim() == 4, "scale_shift_act_: y must be 4-d (N, C, H, W), got ", y.dim(), "-d");
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kBFloat16,
              "scale_shift_act_: y must be float32 or bfloat16, got ", y.scalar_type());
  TORCH_CHECK(y.is_contiguous() || y.is_contiguous(at::MemoryFormat::ChannelsLast),
              "scale_shift_act_: y must be contiguous (NCHW) or channels_last, got strides ", y.strides());
  const int64_t c = y.size(1);
  for (auto [t, name] : {std::pair{&scale, "scale"}, std::pair{&shift, "shift"}}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == c && t->scalar_type() == at::kFloat && t->device() == y.device(),
                "scale_shift_act_: ", name, " must be a float32 vector of y's ", c, " channels on ", y.device(),
                ", got ", t->scalar_type(), " ", t->sizes(), " on ", t->device());
  }
  if (residual.has_value()) {
    const Tensor& r = *residual;
    TORCH_CHECK(r.sizes() == y.sizes() && r.scalar_type() == y.scalar_type() && r.device() == y.device(),
                "scale_shift_act_: residual must match y (", y.sizes(), " ", y.scalar_type(), "), got ", r.sizes(),
                " ", r.scalar_type(), " on ", r.device());
    TORCH_CHECK(r.strides() == y.strides(), "scale_shift_act_: residual must have y's layout (strides ",
                y.strides(), "), got ", r.strides());
    TORCH_CHECK(!r.is_same(y), "scale_shift_act_: residual must not be y itself");
  }
}

void scale_shift_act_cpu(const Tensor& y, const Tensor& scale, const Tensor& shift,
                         const std::optional<Tensor>& residual, bool relu) {
  check_args(y, scale, shift, residual);
  if (y.numel() == 0) return;
  const Tensor s = scale.contiguous(), b = shift.contiguous();
  const float* sp = s.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  const int64_t n = y.size(0), c = y.size(1), hw = y.size(2) * y.size(3);
  if (y.scalar_type() == at::kBFloat16) {
    auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
    const auto* rp = residual.has_value() ? reinterpret_cast<const uint16_t*>(residual->data_ptr<at::BFloat16>())
                                          : nullptr;
    if (!y.is_contiguous()) {
      at::parallel_for(0, n * hw, std::max<int64_t>(1, 16384 / c), [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p)
          bf16_run<true>(yp + p * c, rp ? rp + p * c : nullptr, sp, bp, 0.f, 0.f, c, relu);
      });
    } else {
      at::parallel_for(0, n * c, std::max<int64_t>(1, 16384 / hw), [&](int64_t begin, int64_t end) {
        for (int64_t q = begin; q < end; ++q) {
          const int64_t ch = q % c;
          bf16_run<false>(yp + q * hw, rp ? rp + q * hw : nullptr, nullptr, nullptr, sp[ch], bp[ch], hw, relu);
        }
      });
    }
    return;
  }
  float* yp = y.data_ptr<float>();
  const float* rp = residual.has_value() ? residual->data_ptr<float>() : nullptr;
  if (!y.is_contiguous()) {  // channels_last: a row of c values per pixel
    at::parallel_for(0, n * hw, std::max<int64_t>(1, 16384 / c), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) row_cl(yp + p * c, rp ? rp + p * c : nullptr, sp, bp, c, relu);
    });
  } else {  // NCHW: a plane of hw values per (image, channel)
    at::parallel_for(0, n * c, std::max<int64_t>(1, 16384 / hw), [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        const int64_t ch = q % c;
        plane_nchw(yp + q * hw, rp ? rp + q * hw : nullptr, sp[ch], bp[ch], hw, relu);
      }
    });
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(resnet_ext, m) {
  // In place: y = relu?(y * scale + shift (+ residual)), scale/shift per channel (float32), y float32 or bfloat16
  // (rounded after BN and after the add, as torchvision's modules round). CPU only: the flat
  // CPU forward's unfolded units (resnet_ext/engine/cpu.py).
  // Returns nothing (a custom op may not return an alias of its input).
  m.def("scale_shift_act_(Tensor(a!) y, Tensor scale, Tensor shift, Tensor? residual, bool relu) -> ()");
}

TORCH_LIBRARY_IMPL(resnet_ext, CPU, m) { m.impl("scale_shift_act_", &scale_shift_act_cpu); }
