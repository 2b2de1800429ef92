// resnet_ext::conv1x1: y = relu?(conv1x1(x, w, stride s) + bias (+ residual)) on the CPU as one GEMM of x's pixels
// (channels_last: each pixel a row of C) by the weight packed once per frozen fold (conv1x1_weight in ops.py: in
// panels of 64 output channels, each contiguous -- [K / 64, C, 64] float32, [K / 64, C / 2, 64, 2] bfloat16 with
// channel pairs interleaved for AVX512-BF16's dot products: a panel read with a stride of K rows took a TLB miss per
// row, and resnet50's layer-4 1x1 convs ran 1.2-1.4x slower than oneDNN's inside a forward), on
// cpu_gemm.h's register tiles with the bias, residual and ReLU applied as the tiles store. Where it runs in place of
// oneDNN's convolution it saves ATen's cost per call (ideep builds the primitive descriptor on every call) and
// oneDNN's 1x1 kernels' shortfall from the machine's peak at small maps; the frozen plan picks it per unit where
// measured faster (engine/cpu.py, conv1x1_pays).
// resnet_ext::conv_stem: the same tiles for a conv on few input channels (the stem's 7x7 on RGB; oneDNN's bf16
// kernel ran it at 63% of a 2-core Zen 5's dot-product peak, this op at 83%): each output pixel's kernel rows are
// runs of KW * C values of a zero-padded NHWC copy of the input, read in place as the tile's rows (no im2col); the
// plan picks it per dtype where measured faster (stem_pays).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu_gemm.h"

namespace {

using at::Tensor;
using resnet_ext::cpu_gemm::bf16;
using resnet_ext::cpu_gemm::kPanelVecs;
using resnet_ext::cpu_gemm::kRows;
using resnet_ext::cpu_gemm::kVec;
using resnet_ext::cpu_gemm::Prefetch;
using resnet_ext::cpu_gemm::Strided;
using resnet_ext::cpu_gemm::Gathered;
using resnet_ext::cpu_gemm::for_each_tile;

constexpr int64_t kPanel = kPanelVecs * kVec;  // output channels per panel of the packed weight
constexpr int64_t kDirectPanelBytes = 640 << 10;  // conv_direct: a panel's weights summed in one group, at most
constexpr int64_t kBlockRows = 96;  // rows of A per item of work, at most (reused from cache by every panel of B)

// GCC 12 warns about the undefined vectors inside its own AVX-512 intrinsics (a false positive, as in winograd.cpp).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// ReLU as torch.relu: NaN stays NaN. _mm512_max_ps(v, 0) returns its second operand when either is NaN, so the
// operands go (0, v): max(0, NaN) = NaN.
#ifdef RESNET_EXT_AVX512_GEMM
RESNET_EXT_F32_TARGET inline __m512 relu_nan(__m512 v) { return _mm512_max_ps(_mm512_setzero_ps(), v); }
#endif

#ifdef RESNET_EXT_AVX512_GEMM
// The tiles' epilogue: y[r][16 j ..] = relu?(acc[r][j] + bias (+ res)), rounded once to y's dtype.
template <int R, int NV>
RESNET_EXT_F32_TARGET [[gnu::always_inline]] inline void store_tile(__m512 (&acc)[R][NV], float* y, int64_t k,
                                                                    const float* bias, const float* res, bool relu) {
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) {
    const __m512 bv = _mm512_loadu_ps(bias + kVec * j);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      __m512 v = _mm512_add_ps(acc[r][j], bv);
      if (res != nullptr) v = _mm512_add_ps(v, _mm512_loadu_ps(res + r * k + kVec * j));
      _mm512_storeu_ps(y + r * k + kVec * j, relu ? relu_nan(v) : v);
    }
  }
}

template <int R, int NV>
RESNET_EXT_BF16_TARGET [[gnu::always_inline]] inline void store_tile(__m512 (&acc)[R][NV], bf16* y, int64_t k,
                                                                     const float* bias, const bf16* res, bool relu) {
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) {
    const __m512 bv = _mm512_loadu_ps(bias + kVec * j);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      __m512 v = _mm512_add_ps(acc[r][j], bv);
      if (res != nullptr) v = _mm512_add_ps(v, resnet_ext::cpu_gemm::load_bf16(res + r * k + kVec * j));
      resnet_ext::cpu_gemm::store_bf16(y + r * k + kVec * j, relu ? relu_nan(v) : v);
    }
  }
}

template <int R, int NV>
RESNET_EXT_F32_TARGET [[gnu::always_inline]] inline void zero_tile(__m512 (&acc)[R][NV]) {
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_setzero_ps();
}
#endif

// conv1x1's tiles: R rows of A, c apart, by a panel, one chain of c values (fp32: fused multiply-adds in order, as
// oneDNN's 1x1 kernels sum them; bf16: fp32 sums of exact bf16 products).
template <int R, int NV>
RESNET_EXT_F32_TARGET void tile_f32(const float* a, int64_t c, const float* b, float* y, int64_t k,
                                    const float* bias, const float* res, bool relu, Prefetch& pf) {
#ifdef RESNET_EXT_AVX512_GEMM
  __m512 acc[R][NV];
  zero_tile(acc);
  resnet_ext::cpu_gemm::dot_f32_pf<R, NV>(Strided<float>{a, c}, b, NV * kVec, c, acc, pf);
  store_tile<R, NV>(acc, y, k, bias, res, relu);
#endif
}

template <int R, int NV>
RESNET_EXT_BF16_TARGET void tile_bf16(const bf16* a, int64_t c, const bf16* b, bf16* y, int64_t k,
                                      const float* bias, const bf16* res, bool relu, Prefetch& pf) {
#ifdef RESNET_EXT_AVX512_GEMM
  __m512 acc[R][NV];
  zero_tile(acc);
  resnet_ext::cpu_gemm::dot_bf16_pf<R, NV>(Strided<bf16>{a, c}, b, NV * kVec, c, acc, pf);
  store_tile<R, NV>(acc, y, k, bias, res, relu);
#endif
}

// conv_stem's operand A: R rows, row r at a + r * lda, each `segs` segments of `depth` values (kernel rows),
// segment s at + s * seg; the panel holds the segments' weights one after another. `odd` (bf16): each segment's
// last value is a pad whose weight is zero, not to be multiplied with a's value there. (conv1x1's tiles do not take
// this loop over segments: with it they ran 2-4% slower on resnet50's 1x1 shapes of C <= 256.)
struct Rows {
  int64_t lda, segs, seg, depth;
  bool odd;
};

template <int R, int NV>
RESNET_EXT_F32_TARGET void stem_tile_f32(const float* a, Rows ar, const float* b, float* y, int64_t k,
                                         const float* bias, bool relu) {
#ifdef RESNET_EXT_AVX512_GEMM
  __m512 acc[R][NV];
  zero_tile(acc);
  for (int64_t s = 0; s < ar.segs; ++s)
    resnet_ext::cpu_gemm::dot_f32<R, NV>(a + s * ar.seg, ar.lda, b + s * ar.depth * NV * kVec, NV * kVec, ar.depth,
                                         acc);
  store_tile<R, NV>(acc, y, k, bias, nullptr, relu);
#endif
}

template <int R, int NV>
RESNET_EXT_BF16_TARGET void stem_tile_bf16(const bf16* a, Rows ar, const bf16* b, bf16* y, int64_t k,
                                           const float* bias, bool relu) {
#ifdef RESNET_EXT_AVX512_GEMM
  __m512 acc[R][NV];
  zero_tile(acc);
  const int64_t full = ar.odd ? ar.depth - 2 : ar.depth;  // pairs with both values real
  for (int64_t s = 0; s < ar.segs; ++s) {
    const bf16 *as = a + s * ar.seg, *bs = b + s * ar.depth * NV * kVec;
    resnet_ext::cpu_gemm::dot_bf16<R, NV>(as, ar.lda, bs, NV * kVec, full, acc);
    if (ar.odd)
      resnet_ext::cpu_gemm::dot_bf16<R, NV, true>(as + full, ar.lda, bs + full * NV * kVec, NV * kVec, 2, acc);
  }
  store_tile<R, NV>(acc, y, k, bias, nullptr, relu);
#endif
}

// conv_direct's tiles: R output pixels by a panel, the sum over `taps` kernel taps of `c` input channels each; row
// r's input for tap t at rows[t * kRows + r] (a pixel of x read in place, or a run of zeros for a tap in the
// padding), the taps' weights one after another in the panel. A panel too large for the cache is summed in groups
// of taps (`Part`): each group's sums go through an fp32 buffer, rows of 64, and only the last group stores y.
struct Part {
  float* sums;  // nullptr: one group (the whole sum in registers)
  bool first, last;
};

#ifdef RESNET_EXT_AVX512_GEMM
template <int R, int NV>
RESNET_EXT_F32_TARGET [[gnu::always_inline]] inline void start_part(__m512 (&acc)[R][NV], Part part) {
  if (part.first) return zero_tile(acc);
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_loadu_ps(part.sums + r * kPanel + kVec * j);
}

template <int R, int NV>
RESNET_EXT_F32_TARGET [[gnu::always_inline]] inline void keep_part(__m512 (&acc)[R][NV], Part part) {
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(part.sums + r * kPanel + kVec * j, acc[r][j]);
}
#endif

template <int R, int NV>
RESNET_EXT_F32_TARGET void direct_tile_f32(const float* const* rows, int64_t taps, int64_t c, const float* b, float* y,
                                           int64_t k, const float* bias, bool relu, Prefetch& pf, Part part) {
#ifdef RESNET_EXT_AVX512_GEMM
  __m512 acc[R][NV];
  start_part(acc, part);
  for (int64_t t = 0; t < taps; ++t)
    resnet_ext::cpu_gemm::dot_f32_pf<R, NV>(Gathered<float>{rows + t * kRows}, b + t * c * NV * kVec, NV * kVec, c,
                                            acc, pf);
  if (part.last)
    store_tile<R, NV>(acc, y, k, bias, nullptr, relu);
  else
    keep_part(acc, part);
#endif
}

template <int R, int NV>
RESNET_EXT_BF16_TARGET void direct_tile_bf16(const bf16* const* rows, int64_t taps, int64_t c, const bf16* b, bf16* y,
                                             int64_t k, const float* bias, bool relu, Prefetch& pf, Part part) {
#ifdef RESNET_EXT_AVX512_GEMM
  __m512 acc[R][NV];
  start_part(acc, part);
  for (int64_t t = 0; t < taps; ++t)
    resnet_ext::cpu_gemm::dot_bf16_pf<R, NV>(Gathered<bf16>{rows + t * kRows}, b + t * c * NV * kVec, NV * kVec, c,
                                             acc, pf);
  if (part.last)
    store_tile<R, NV>(acc, y, k, bias, nullptr, relu);
  else
    keep_part(acc, part);
#endif
}

#pragma GCC diagnostic pop

// Tiles of 1 to 6 rows by a whole panel.
template <class T>
using Tile = void (*)(const T*, int64_t, const T*, T*, int64_t, const float*, const T*, bool, Prefetch&);
template <class T>
using StemTile = void (*)(const T*, Rows, const T*, T*, int64_t, const float*, bool);
template <class T>
using DirectTile = void (*)(const T* const*, int64_t, int64_t, const T*, T*, int64_t, const float*, bool, Prefetch&,
                            Part);
#define RESNET_EXT_TABLE(F) {&F<1, 4>, &F<2, 4>, &F<3, 4>, &F<4, 4>, &F<5, 4>, &F<6, 4>}
constexpr Tile<float> kTilesF32[kRows] = RESNET_EXT_TABLE(tile_f32);
constexpr Tile<bf16> kTilesBF16[kRows] = RESNET_EXT_TABLE(tile_bf16);
constexpr StemTile<float> kStemTilesF32[kRows] = RESNET_EXT_TABLE(stem_tile_f32);
constexpr StemTile<bf16> kStemTilesBF16[kRows] = RESNET_EXT_TABLE(stem_tile_bf16);
constexpr DirectTile<float> kDirectTilesF32[kRows] = RESNET_EXT_TABLE(direct_tile_f32);
constexpr DirectTile<bf16> kDirectTilesBF16[kRows] = RESNET_EXT_TABLE(direct_tile_bf16);
#undef RESNET_EXT_TABLE

const Tile<float> (&tiles_of(float))[kRows] { return kTilesF32; }
const Tile<bf16> (&tiles_of(bf16))[kRows] { return kTilesBF16; }
const StemTile<float> (&stem_tiles_of(float))[kRows] { return kStemTilesF32; }
const StemTile<bf16> (&stem_tiles_of(bf16))[kRows] { return kStemTilesBF16; }
const DirectTile<float> (&direct_tiles_of(float))[kRows] { return kDirectTilesF32; }
const DirectTile<bf16> (&direct_tiles_of(bf16))[kRows] { return kDirectTilesBF16; }

bool runs_here(at::ScalarType t) {
  return t == at::kFloat ? resnet_ext::cpu_gemm::runs_f32() : resnet_ext::cpu_gemm::runs_bf16();
}

// The packed weight's shape for C input and K output channels.
std::vector<int64_t> w_shape(at::ScalarType t, int64_t c, int64_t k) {
  if (t == at::kFloat) return {k / kPanel, c, kPanel};
  return {k / kPanel, c / 2, kPanel, 2};
}

// The GEMM ops' work on p rows (output pixels) by `panels` 64-channel panels of the weight: items of blocks of rows
// (balanced, multiples of a tile's rows) by panels, rows outer, so that each thread takes whole blocks of rows (read
// once, from cache for every panel). `fn(r0, r1, k0, pf)` runs rows [r0, r1) of panel k0 with its item's share of the
// prefetch lines (`steps`: depth steps a row).
template <class F>
void for_each_item(int64_t p, int64_t panels, int64_t steps, const void* pf_base, int64_t pf_lines, const F& fn) {
  int64_t blocks = (p + kBlockRows - 1) / kBlockRows;
  // At least 4 items per thread where the rows allow: a small map's few items (a 7x7 map at batch 1: one block of
  // rows by 8 panels; with 16 threads, half of them idle) are split into smaller blocks of rows. The sums do not
  // depend on the split.
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  if (blocks * panels < want) blocks = std::min((p + kRows - 1) / kRows, (want + panels - 1) / panels);
  const int64_t rows = ((p + blocks - 1) / blocks + kRows - 1) / kRows * kRows;
  const int64_t items = (p + rows - 1) / rows * panels;  // rows rounded up to whole tiles may need fewer blocks
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r0 = item / panels * rows, r1 = std::min(p, r0 + rows);
      Prefetch pf = Prefetch::share(pf_base, 0, pf_lines, item, items, (r1 - r0 + kRows - 1) / kRows * steps);
      fn(r0, r1, item % panels * kPanel, pf);
    }
  });
}

// `in_place`: y is the residual itself, each element read by its tile's epilogue just before it is overwritten.
// Out of place, every output line is first fetched for writing (a write-allocate) on top of the residual's read:
// resnet50's 64 -> 256 tail at 56x56, bf16, alone with the caches flushed, 384 -> 306 us at batch 1 and 3110 ->
// 2288 us at batch 8 (benchmarks/results/2026-12-06-cpu-entry/); inside whole batch-1 forwards, where the new
// output's block is mostly still in cache, 1.00-1.01x.
template <class T>
Tensor conv1x1(const Tensor& x_in, const Tensor& w, const Tensor& bias, const std::optional<Tensor>& residual,
               bool relu, int64_t stride, const void* pf_base, int64_t pf_lines, bool in_place) {
  // Every s-th pixel of every s-th row, copied into rows (resnet's downsamples; a quarter of the input).
  const Tensor x = stride == 1 ? x_in
                               : x_in.slice(2, 0, std::nullopt, stride).slice(3, 0, std::nullopt, stride)
                                     .contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), wd = x.size(3), k = bias.size(0);
  const int64_t p = n * h * wd;
  Tensor y = in_place ? *residual : at::empty({n, k, h, wd}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  const Tensor b = bias.to(at::kFloat).contiguous();
  const T* xp = x.const_data_ptr<T>();
  const T* wp = w.const_data_ptr<T>();
  const float* bp = b.const_data_ptr<float>();
  const T* rp = residual.has_value() ? residual->const_data_ptr<T>() : nullptr;
  T* yp = y.mutable_data_ptr<T>();
  const auto& tiles = tiles_of(T{});
  for_each_item(p, k / kPanel, std::is_same_v<T, float> ? c : c / 2, pf_base, pf_lines,
                [&](int64_t r0, int64_t r1, int64_t k0, Prefetch& pf) {
                  for_each_tile(r0, r1, [&](int64_t t, int64_t nr) {
                    tiles[nr - 1](xp + t * c, c, wp + k0 * c, yp + t * k + k0, k, bp + k0,
                                  rp ? rp + t * k + k0 : nullptr, relu, pf);
                  });
                });
  return y;
}

// resnet_ext::conv_direct: y = relu?(conv(x, w) + bias) for any kernel, stride and padding (dilation 1, one group)
// on channels_last maps, as the sum over the kernel's taps of GEMMs on the tiles: each tile row's input for a tap is
// a pixel of x read in place (no im2col, no padded copy), or a run of zeros where the tap falls in the padding;
// output pixels are the GEMM's rows, so tiles run across output rows at full height on small maps. w packed by
// ops.conv_direct_weight: [K / 64, KH * KW * C, 64] (bfloat16: channel pairs interleaved), the taps in (kh, kw)
// order.
template <class T>
Tensor conv_direct(const Tensor& x, const Tensor& w, const Tensor& bias, bool relu, int64_t kh, int64_t kw, int64_t sh,
                   int64_t sw, int64_t ph, int64_t pw, const void* pf_base, int64_t pf_lines) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), wd = x.size(3), k = bias.size(0);
  const int64_t oh = (h + 2 * ph - kh) / sh + 1, ow = (wd + 2 * pw - kw) / sw + 1, taps = kh * kw;
  Tensor y = at::empty({n, k, oh, ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  const Tensor b = bias.to(at::kFloat).contiguous();
  const Tensor zeros = at::zeros({c}, x.options());  // what a tap in the padding reads
  const T* xp = x.const_data_ptr<T>();
  const T* zp = zeros.const_data_ptr<T>();
  const T* wp = w.const_data_ptr<T>();
  const float* bp = b.const_data_ptr<float>();
  T* yp = y.mutable_data_ptr<T>();
  const auto& tiles = direct_tiles_of(T{});
  // Taps per group: a panel's weights over kDirectPanelBytes (fp32 3x3 on 512 channels: 1.2 MB) would be read
  // from beyond the core's L2 by every tile of the item; in groups each is read once per item from cache.
  const int64_t tap_bytes = c * kPanel * static_cast<int64_t>(sizeof(T));
  const int64_t group =
      taps * tap_bytes <= kDirectPanelBytes ? taps : std::max<int64_t>(1, kDirectPanelBytes / tap_bytes);
  const int64_t steps = taps * (std::is_same_v<T, float> ? c : c / 2);
  for_each_item(n * oh * ow, k / kPanel, steps, pf_base, pf_lines,
                [&](int64_t r0, int64_t r1, int64_t k0, Prefetch& pf) {
                  std::vector<const T*> rows(taps * kRows, zp);
                  std::vector<float> sums(group < taps ? (r1 - r0) * kPanel : 0);
                  for (int64_t g = 0; g < taps; g += group) {
                    const int64_t gt = std::min(group, taps - g);
                    for_each_tile(r0, r1, [&](int64_t t, int64_t nr) {
                      for (int64_t r = 0; r < nr; ++r) {
                        const int64_t q = t + r, ni = q / (oh * ow), yi = q / ow % oh * sh - ph, xi = q % ow * sw - pw;
                        for (int64_t tap = g; tap < g + gt; ++tap) {
                          const int64_t i = yi + tap / kw, j = xi + tap % kw;
                          const bool in = i >= 0 && i < h && j >= 0 && j < wd;
                          rows[(tap - g) * kRows + r] = in ? xp + ((ni * h + i) * wd + j) * c : zp;
                        }
                      }
                      const Part part{sums.empty() ? nullptr : sums.data() + (t - r0) * kPanel, g == 0, g + gt == taps};
                      tiles[nr - 1](rows.data(), gt, c, wp + (k0 * taps + g * kPanel) * c, yp + t * k + k0, k,
                                    bp + k0, relu, pf, part);
                    });
                  }
                });
  return y;
}

// The depth of conv_stem's segments: a kernel row's KW * C input values, even for bf16's channel pairs (the weight's
// extra row is zero, and the row it reads is a zero of the padded copy's tail).
int64_t stem_depth(at::ScalarType t, int64_t kw, int64_t c) { return t == at::kFloat ? kw * c : (kw * c + 1) / 2 * 2; }

template <class T>
Tensor conv_stem(const Tensor& x, const Tensor& w, const Tensor& bias, bool relu, int64_t kh, int64_t kw, int64_t sh,
                 int64_t sw, int64_t ph, int64_t pw) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), wd = x.size(3), k = bias.size(0);
  const int64_t oh = (h + 2 * ph - kh) / sh + 1, ow = (wd + 2 * pw - kw) / sw + 1;
  const int64_t depth = stem_depth(x.scalar_type(), kw, c);
  // A zero-padded NHWC copy of x, each row of (W + 2 pw) pixels followed by the zeros the last segment's pair may
  // reach: output pixel (oh, ow)'s values for kernel row i are then one run of `depth` values, row oh * sh + i from
  // ow * sw pixels on, read in place (no im2col).
  const int64_t hp = h + 2 * ph, row = (wd + 2 * pw) * c + (depth - kw * c);
  Tensor xpad = at::zeros({n, hp, row}, x.options().memory_format(at::MemoryFormat::Contiguous));
  xpad.narrow(1, ph, h).narrow(2, pw * c, wd * c).unflatten(2, {wd, c}).copy_(x.permute({0, 2, 3, 1}));
  Tensor y = at::empty({n, k, oh, ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const Tensor b = bias.to(at::kFloat).contiguous();
  const T* ap = xpad.const_data_ptr<T>();
  const T* wp = w.const_data_ptr<T>();
  const float* bp = b.const_data_ptr<float>();
  T* yp = y.mutable_data_ptr<T>();
  const auto& tiles = stem_tiles_of(T{});
  const int64_t panels = k / kPanel, rows = n * oh;
  const Rows ar{sw * c, kh, row, depth, depth != kw * c};
  // Items: output rows by panels; a tile's rows are pixels of one output row.
  at::parallel_for(0, rows * panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / panels, k0 = item % panels * kPanel;
      const T* a = ap + (r / oh * hp + r % oh * sh) * row;
      T* yr = yp + r * ow * k + k0;
      for_each_tile(0, ow, [&](int64_t t, int64_t nr) {
        tiles[nr - 1](a + t * sw * c, ar, wp + k0 * kh * depth, yr + t * k, k, bp + k0, relu);
      });
    }
  });
  return y;
}

const char* name(at::ScalarType t) { return t == at::kFloat ? "float32" : "bfloat16"; }

Tensor conv1x1_checked(const Tensor& x, const Tensor& w, const Tensor& bias, const std::optional<Tensor>& residual,
                       bool relu, int64_t stride, int64_t prefetch_addr, int64_t prefetch_bytes, bool in_place) {
  const char* op = in_place ? "conv1x1_add_" : "conv1x1";  // the errors name the op and argument the caller used
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu() && bias.device().is_cpu(),
              op, ": x, w and bias must be CPU tensors, got ", x.device(), ", ", w.device(), ", ", bias.device());
  TORCH_CHECK(x.dim() == 4 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              op, ": x must be a 4-d float32 or bfloat16 tensor (N, C, H, W), got ", x.dim(), "-d ",
              x.scalar_type());
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
              op, ": x must be channels_last contiguous, got strides ", x.strides());
  TORCH_CHECK(stride >= 1, op, ": stride must be positive, got ", stride);
  const at::ScalarType t = x.scalar_type();
  const bool f32 = t == at::kFloat;
  TORCH_CHECK(runs_here(t), op, ": ", name(t), " needs a CPU with AVX-512", f32 ? "" : " and AVX512-BF16",
              ", which this one lacks (use oneDNN's convolution)");
  const int64_t c = x.size(1), k = bias.dim() == 1 ? bias.size(0) : -1;
  TORCH_CHECK(k > 0 && k % kPanel == 0 && (bias.scalar_type() == at::kFloat || bias.scalar_type() == t),
              op, ": bias must be a ", f32 ? "float32" : "float32 or bfloat16",
              " vector of the output channels, a positive multiple of 64, got ", bias.scalar_type(), " ",
              bias.sizes());
  TORCH_CHECK(c > 0 && (f32 || c % 2 == 0), op, ": x must have a positive", f32 ? "" : ", even",
              " number of channels, got ", c);
  TORCH_CHECK(w.scalar_type() == t && w.sizes() == at::IntArrayRef(w_shape(t, c, k)) && w.is_contiguous(),
              op, ": w must be the contiguous packed ", name(t), " weight ",
              f32 ? "[K / 64, C, 64]" : "[K / 64, C / 2, 64, 2]", " (ops.conv1x1_weight) for C=", c, ", K=", k,
              ", got ", w.scalar_type(), " ", w.sizes(), " strides ", w.strides());
  if (residual.has_value()) {
    const Tensor& r = *residual;
    const int64_t oh = (x.size(2) + stride - 1) / stride, ow = (x.size(3) + stride - 1) / stride;
    const std::vector<int64_t> shape{x.size(0), k, oh, ow};
    TORCH_CHECK(r.device().is_cpu() && r.scalar_type() == t && r.sizes() == at::IntArrayRef(shape) &&
                    r.is_contiguous(at::MemoryFormat::ChannelsLast),
                op, in_place ? ": out must be a channels_last " : ": residual must be a channels_last ", name(t),
                " CPU tensor of the output's shape ",
                at::IntArrayRef(shape), ", got ", r.scalar_type(), " ", r.sizes(), " strides ", r.strides(), " on ",
                r.device());
    // Written in place, out must not share memory with what the GEMM still reads (x, w, bias; a bias it cannot
    // tell about is not contiguous and is read through a contiguous fp32 copy).
    const auto apart = [&](const Tensor& other) {
      const at::MemOverlapStatus o = at::get_overlap_status(r, other);
      return o != at::MemOverlapStatus::Full && o != at::MemOverlapStatus::Partial;
    };
    TORCH_CHECK(!in_place || (apart(x) && apart(w) && apart(bias)), op, ": out must not overlap x, w or bias");
  }
  const int64_t pf_lines = Prefetch::lines(op, prefetch_addr, prefetch_bytes);
  const void* pf_base = reinterpret_cast<const void*>(prefetch_addr);
  return f32 ? conv1x1<float>(x, w, bias, residual, relu, stride, pf_base, pf_lines, in_place)
             : conv1x1<bf16>(x, w, bias, residual, relu, stride, pf_base, pf_lines, in_place);
}

Tensor conv1x1_cpu(const Tensor& x, const Tensor& w, const Tensor& bias, const std::optional<Tensor>& residual,
                   bool relu, int64_t stride, int64_t prefetch_addr, int64_t prefetch_bytes) {
  return conv1x1_checked(x, w, bias, residual, relu, stride, prefetch_addr, prefetch_bytes, false);
}

// Returns nothing (the schema's `-> ()`): torch.compile's functionalization takes no custom op returning an alias.
void conv1x1_add_cpu(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias, bool relu,
                     int64_t stride, int64_t prefetch_addr, int64_t prefetch_bytes) {
  conv1x1_checked(x, w, bias, out, relu, stride, prefetch_addr, prefetch_bytes, true);
}


Tensor conv_stem_cpu(const Tensor& x, const Tensor& w, const Tensor& bias, bool relu, at::IntArrayRef kernel_size,
                     at::IntArrayRef stride, at::IntArrayRef padding) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu() && bias.device().is_cpu(),
              "conv_stem: x, w and bias must be CPU tensors, got ", x.device(), ", ", w.device(), ", ", bias.device());
  TORCH_CHECK(x.dim() == 4 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "conv_stem: x must be a 4-d float32 or bfloat16 tensor (N, C, H, W), got ", x.dim(), "-d ",
              x.scalar_type());
  TORCH_CHECK(kernel_size.size() == 2 && kernel_size[0] > 0 && kernel_size[1] > 0,
              "conv_stem: kernel_size must be two positive ints, got ", kernel_size);
  TORCH_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, "conv_stem: stride must be two positive ints, got ",
              stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0,
              "conv_stem: padding must be two non-negative ints, got ", padding);
  const at::ScalarType t = x.scalar_type();
  const bool f32 = t == at::kFloat;
  TORCH_CHECK(runs_here(t), "conv_stem: ", name(t), " needs a CPU with AVX-512", f32 ? "" : " and AVX512-BF16",
              ", which this one lacks (use oneDNN's convolution)");
  const int64_t c = x.size(1), k = bias.dim() == 1 ? bias.size(0) : -1;
  const int64_t kh = kernel_size[0], kw = kernel_size[1];
  TORCH_CHECK(k > 0 && k % kPanel == 0 && (bias.scalar_type() == at::kFloat || bias.scalar_type() == t),
              "conv_stem: bias must be a ", f32 ? "float32" : "float32 or bfloat16",
              " vector of the output channels, a positive multiple of 64, got ", bias.scalar_type(), " ",
              bias.sizes());
  TORCH_CHECK(c > 0 && x.size(2) > 0 && x.size(3) > 0, "conv_stem: x must have channels, height and width, got ",
              x.sizes());
  TORCH_CHECK(x.size(2) + 2 * padding[0] >= kh && x.size(3) + 2 * padding[1] >= kw,
              "conv_stem: the padded input (", x.size(2) + 2 * padding[0], " x ", x.size(3) + 2 * padding[1],
              ") is smaller than the kernel (", kh, " x ", kw, ")");
  const int64_t depth = stem_depth(t, kw, c);
  const std::vector<int64_t> shape = f32 ? std::vector<int64_t>{k / kPanel, kh * depth, kPanel}
                                         : std::vector<int64_t>{k / kPanel, kh * depth / 2, kPanel, 2};
  TORCH_CHECK(w.scalar_type() == t && w.sizes() == at::IntArrayRef(shape) && w.is_contiguous(),
              "conv_stem: w must be the contiguous packed ", name(t), " weight ", at::IntArrayRef(shape),
              " (ops.conv_stem_weight) for C=", c, ", K=", k, ", kernel ", kh, "x", kw, ", got ", w.scalar_type(), " ",
              w.sizes(), " strides ", w.strides());
  return f32 ? conv_stem<float>(x, w, bias, relu, kh, kw, stride[0], stride[1], padding[0], padding[1])
             : conv_stem<bf16>(x, w, bias, relu, kh, kw, stride[0], stride[1], padding[0], padding[1]);
}

Tensor conv_direct_cpu(const Tensor& x, const Tensor& w, const Tensor& bias, bool relu, at::IntArrayRef kernel_size,
                       at::IntArrayRef stride, at::IntArrayRef padding, int64_t prefetch_addr, int64_t prefetch_bytes) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu() && bias.device().is_cpu(),
              "conv_direct: x, w and bias must be CPU tensors, got ", x.device(), ", ", w.device(), ", ",
              bias.device());
  TORCH_CHECK(x.dim() == 4 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "conv_direct: x must be a 4-d float32 or bfloat16 tensor (N, C, H, W), got ", x.dim(), "-d ",
              x.scalar_type());
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "conv_direct: x must be channels_last contiguous, got strides ", x.strides());
  TORCH_CHECK(kernel_size.size() == 2 && kernel_size[0] > 0 && kernel_size[1] > 0,
              "conv_direct: kernel_size must be two positive ints, got ", kernel_size);
  TORCH_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0,
              "conv_direct: stride must be two positive ints, got ", stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0,
              "conv_direct: padding must be two non-negative ints, got ", padding);
  const at::ScalarType t = x.scalar_type();
  const bool f32 = t == at::kFloat;
  TORCH_CHECK(runs_here(t), "conv_direct: ", name(t), " needs a CPU with AVX-512", f32 ? "" : " and AVX512-BF16",
              ", which this one lacks (use oneDNN's convolution)");
  const int64_t c = x.size(1), k = bias.dim() == 1 ? bias.size(0) : -1, kh = kernel_size[0], kw = kernel_size[1];
  TORCH_CHECK(k > 0 && k % kPanel == 0 && (bias.scalar_type() == at::kFloat || bias.scalar_type() == t),
              "conv_direct: bias must be a ", f32 ? "float32" : "float32 or bfloat16",
              " vector of the output channels, a positive multiple of 64, got ", bias.scalar_type(), " ",
              bias.sizes());
  TORCH_CHECK(c > 0 && (f32 || c % 2 == 0), "conv_direct: x must have a positive", f32 ? "" : ", even",
              " number of channels, got ", c);
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, "conv_direct: x must have height and width, got ", x.sizes());
  // No real conv comes near these bounds; within them the sizes below cannot overflow.
  constexpr int64_t kMaxSide = int64_t{1} << 20;
  TORCH_CHECK(kh <= kMaxSide && kw <= kMaxSide && padding[0] <= kMaxSide && padding[1] <= kMaxSide,
              "conv_direct: kernel_size and padding must be at most 2^20, got ", kernel_size, " and ", padding);
  TORCH_CHECK(x.size(2) + 2 * padding[0] >= kh && x.size(3) + 2 * padding[1] >= kw,
              "conv_direct: the padded input (", x.size(2) + 2 * padding[0], " x ", x.size(3) + 2 * padding[1],
              ") is smaller than the kernel (", kh, " x ", kw, ")");
  int64_t depth = 0;  // KH * KW * C values a row of the GEMM
  TORCH_CHECK(!__builtin_mul_overflow(kh * kw, c, &depth), "conv_direct: kernel_size ", kernel_size, " by ", c,
              " channels overflows");
  TORCH_CHECK(w.scalar_type() == t && w.sizes() == at::IntArrayRef(w_shape(t, depth, k)) && w.is_contiguous(),
              "conv_direct: w must be the contiguous packed ", name(t), " weight ",
              at::IntArrayRef(w_shape(t, depth, k)), " (ops.conv_direct_weight) for C=", c, ", K=", k,
              ", kernel ", kh, "x", kw, ", got ", w.scalar_type(), " ", w.sizes(), " strides ", w.strides());
  const int64_t pf_lines = Prefetch::lines("conv_direct", prefetch_addr, prefetch_bytes);
  const void* pf_base = reinterpret_cast<const void*>(prefetch_addr);
  return f32 ? conv_direct<float>(x, w, bias, relu, kh, kw, stride[0], stride[1], padding[0], padding[1], pf_base,
                                  pf_lines)
             : conv_direct<bf16>(x, w, bias, relu, kh, kw, stride[0], stride[1], padding[0], padding[1], pf_base,
                                 pf_lines);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(resnet_ext, m) {
  // y = relu?(conv1x1(x, w, stride) + bias (+ residual)) as one GEMM with a fused epilogue, w packed by
  // ops.conv1x1_weight. CPU, channels_last, float32 or bfloat16; the frozen CPU plan's 1x1 units.
  m.def("conv1x1(Tensor x, Tensor w, Tensor bias, Tensor? residual, bool relu, int stride=1, int prefetch_addr=0, "
        "int prefetch_bytes=0) -> Tensor");
  // out = relu?(conv1x1(x, w, stride) + bias + out), in place: conv1x1 with out as the residual, written over it
  // (the frozen plan's residual tails, whose residual only the forward holds).
  m.def("conv1x1_add_(Tensor(a!) out, Tensor x, Tensor w, Tensor bias, bool relu, int stride=1, "
        "int prefetch_addr=0, int prefetch_bytes=0) -> ()");
  // y = relu?(conv(x, w, stride, padding) + bias) for a conv on few input channels (the stem's 7x7 on RGB), each
  // output pixel's kernel rows read in place from a zero-padded NHWC copy of x (any layout), w packed by
  // ops.conv_stem_weight; channels_last output. CPU, float32 or bfloat16; the frozen CPU plan's stem.
  m.def("conv_stem(Tensor x, Tensor w, Tensor bias, bool relu, int[2] kernel_size, int[2] stride, int[2] padding) "
        "-> Tensor");
  // y = relu?(conv(x, w, stride, padding) + bias), dilation 1, one group, each output pixel's kernel taps read in
  // place from x (channels_last; zeros for taps in the padding), w packed by ops.conv_direct_weight; channels_last
  // output. CPU, float32 or bfloat16; the frozen CPU plan's stride-2 convs at batch 1 (bf16).
  m.def("conv_direct(Tensor x, Tensor w, Tensor bias, bool relu, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int prefetch_addr=0, int prefetch_bytes=0) -> Tensor");
  // Whether this CPU runs conv1x1 and conv_stem for inputs of this dtype (AVX-512; AVX512-BF16 for bfloat16).
  m.def("conv1x1_supported(ScalarType dtype) -> bool",
        [](at::ScalarType t) { return (t == at::kFloat || t == at::kBFloat16) && runs_here(t); });
}

TORCH_LIBRARY_IMPL(resnet_ext, CPU, m) {
  m.impl("conv1x1", &conv1x1_cpu);
  m.impl("conv1x1_add_", &conv1x1_add_cpu);
  m.impl("conv_stem", &conv_stem_cpu);
  m.impl("conv_direct", &conv_direct_cpu);
}
