// resnet_ext::winograd3x3: y = relu?(conv3x3(x, w) + bias (+ residual)), stride 1, padding 1, on the CPU, by
// Winograd's minimal filtering: each m x m output tile is computed from its (m+2) x (m+2) input tile as
// A^T [(G w G^T) . (B^T d B)] A, so the 3x3 convolution becomes (m+2)^2 GEMMs of (tiles x C) by (C x K). The
// transformed weight U = G w G^T (winograd_weight below) is made once per frozen fold; winograd3x3 transforms the
// input tiles (B^T d B), runs the GEMMs (AVX-512 register tiles below, else ATen's bmm), and transforms the products
// back (A^T m A) with the bias, residual and ReLU fused. Two variants, by x's dtype:
// - float32: F(4x4, 3x3), 36 GEMMs, 4x fewer multiplies than the direct convolution.
// - float32 with a [16, C, K] u (winograd_weight(w, 2)): F(2x2, 3x3), 16 GEMMs, 2.25x fewer multiplies, on a
//   transformed weight of 16/9 the weight's bytes against F(4x4)'s 4x (where few tiles share a large weight, as in
//   resnet's layer 3 at batch 1, streaming u costs more than the multiplies F(4x4) saves).
// - bfloat16: F(2x2, 3x3), 16 GEMMs of bf16 operands with fp32 sums (AVX512-BF16 dot products), 2.25x fewer
//   multiplies. F(4x4)'s larger transform coefficients would multiply the error of the bf16 operands about 5x (CPU
//   emulation on resnet50's 3x3 shapes: 1.7-2.1e-2 of the output's norm against 2.9e-3 for oneDNN's direct bf16
//   convolution); F(2x2)'s are 0, +-1 and 1/2: 4.0-4.2e-3. Transforms and sums in fp32; the products rounded to bf16.
// Channels_last, C and K multiples of 16 (one AVX-512 vector of channels per step). The frozen CPU plan picks it per
// layer where it is faster than oneDNN's direct convolution (engine/cpu.py, winograd_pays).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <ATen/ATen.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>

#include "cpu_clones.h"
#include "cpu_gemm.h"
#include "ops/cpu_memory.h"

namespace {

using at::Tensor;
using resnet_ext::cpu_gemm::bf16;
using resnet_ext::cpu_gemm::kPanelVecs;
using resnet_ext::cpu_gemm::kRows;
using resnet_ext::cpu_gemm::kVec;  // channels per step
constexpr int64_t kPlanePadBytes = 64;    // between the input planes: without it their common stride is a multiple of
                                          // 4 KiB and the planes' write streams share one L1 set (up to 3x slower)
// Input and product planes per block of tiles (winograd3x3 below): a thread's own block while the transformed
// weight is under kSharedMinUBytes, else a chunk shared by the threads (which bounds the workspace).
constexpr int64_t kBlockBytes = 256 << 10, kSharedMinUBytes = 4 << 20, kChunkBytes = 64 << 20;

struct Geometry {
  int64_t n, h, w, c, k, tiles_h, tiles_w;
  int64_t tiles() const { return n * tiles_h * tiles_w; }
  // Tile t's image, tile row and tile column.
  int64_t tn(int64_t t) const { return t / (tiles_h * tiles_w); }
  int64_t th(int64_t t) const { return (t / tiles_w) % tiles_h; }
  int64_t tw(int64_t t) const { return t % tiles_w; }
  // p[i][j] = the address of pixel (i, j) of tile t's A x A input patch (output tiles of side `tile`, padding 1),
  // or nullptr outside the image.
  template <int A, class T>
  [[gnu::always_inline]] inline void patch(const T* x, int64_t t, int64_t tile, const T* (&p)[A][A]) const {
    const int64_t n_ = tn(t), h0 = th(t) * tile - 1, w0 = tw(t) * tile - 1;
    for (int i = 0; i < A; ++i)
      for (int j = 0; j < A; ++j) {
        const int64_t hi = h0 + i, wj = w0 + j;
        p[i][j] = hi < 0 || hi >= h || wj < 0 || wj >= w ? nullptr : x + ((n_ * h + hi) * w + wj) * c;
      }
  }
};

// ---- F(4x4, 3x3), float32 --------------------------------------------------------------------------------------

// Each row of the 6x6 tile, then each column: B^T d for F(4x4, 3x3).
#define RESNET_EXT_BT(d0, d1, d2, d3, d4, d5, o0, o1, o2, o3, o4, o5) \
  o0 = 4.f * d0 - 5.f * d2 + d4;                                       \
  o1 = -4.f * (d1 + d2) + d3 + d4;                                     \
  o2 = 4.f * (d1 - d2) - d3 + d4;                                      \
  o3 = -2.f * (d1 - d3) - d2 + d4;                                     \
  o4 = 2.f * (d1 - d3) - d2 + d4;                                      \
  o5 = 4.f * d1 - 5.f * d3 + d5;

// A^T m for F(4x4, 3x3).
#define RESNET_EXT_AT(m0, m1, m2, m3, m4, m5, o0, o1, o2, o3) \
  {                                                           \
    const auto a_ = m1 + m2, b_ = m1 - m2, c_ = m3 + m4, d_ = m3 - m4; \
    o0 = m0 + a_ + c_;                                        \
    o1 = b_ + 2.f * d_;                                       \
    o2 = a_ + 4.f * c_;                                       \
    o3 = b_ + 8.f * d_ + m5;                                  \
  }

// Lanes are only passed to always-inlined functions: GCC's note that the baseline ABI would pass them differently
// (-Wpsabi) concerns no call here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
struct F43 {
  using T = float;                 // x, y, residual and the GEMM operands
  static constexpr int64_t kTile = 4, kElems = 36, kDepth = 64, kPack = 1;
  static constexpr bool kAvx512Only = false;  // its transforms are cloned GCC vector code; its GEMMs fall back to bmm
  static constexpr const char* kName = "float32";

  // 16 channels as one GCC vector, which each clone lowers to one AVX-512 register, two AVX2 or four SSE ones
  // (written as loops over 16 floats, the relu and the patch's loads stayed scalar: the transforms took 24% of
  // layer 1's op time).
  typedef float Lanes __attribute__((vector_size(kVec * sizeof(float))));
  [[gnu::always_inline]] static Lanes load(const float* p) {
    Lanes v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  [[gnu::always_inline]] static void store(float* p, Lanes v) { std::memcpy(p, &v, sizeof v); }

  // V[e][t - t0][0 .. C) = (B^T d B)[e] of tile t's 6x6 input patch (zero outside the image: padding 1), 16
  // channels at a time; the patch's addresses computed once per tile (once per 16 channels, the op measured
  // 1.2-1.6x slower at batch 1 on resnet50's layers 1-3, 1.0-1.1x at batch 8).
  RESNET_EXT_CLONES static void input_tile(const float* x, float* v, const Geometry& g, int64_t plane, int64_t t,
                                           int64_t t0) {
    const float* p[6][6];
    g.patch(x, t, kTile, p);
    float* dst = v + (t - t0) * g.c;
    const Lanes zero = {};
    for (int64_t c0 = 0; c0 < g.c; c0 += kVec) {
      Lanes r[6][6];
      for (int j = 0; j < 6; ++j) {
        Lanes d[6];
        for (int i = 0; i < 6; ++i) d[i] = p[i][j] ? load(p[i][j] + c0) : zero;
        RESNET_EXT_BT(d[0], d[1], d[2], d[3], d[4], d[5], r[0][j], r[1][j], r[2][j], r[3][j], r[4][j], r[5][j])
      }
      for (int i = 0; i < 6; ++i) {
        Lanes o[6];
        RESNET_EXT_BT(r[i][0], r[i][1], r[i][2], r[i][3], r[i][4], r[i][5], o[0], o[1], o[2], o[3], o[4], o[5])
        for (int j = 0; j < 6; ++j) store(dst + (i * 6 + j) * plane + c0, o[j]);
      }
    }
  }

  // y[tile t, 0 .. K) = relu?(A^T M A + bias (+ residual)), the tile's in-image pixels only, 16 channels at a time.
  RESNET_EXT_CLONES static void output_tile(const float* m, const float* bias, const float* res, float* y,
                                            const Geometry& g, int64_t chunk_tiles, int64_t t, int64_t t0,
                                            bool relu) {
    const int64_t tn = g.tn(t), th = g.th(t), tw = g.tw(t);
    const int64_t plane = chunk_tiles * g.k;
    const int rows = static_cast<int>(std::min<int64_t>(kTile, g.h - th * kTile));
    const int cols = static_cast<int>(std::min<int64_t>(kTile, g.w - tw * kTile));
    const int64_t at0 = ((tn * g.h + th * kTile) * g.w + tw * kTile) * g.k;
    const float* src = m + (t - t0) * g.k;
    const Lanes zero = {};
    for (int64_t k0 = 0; k0 < g.k; k0 += kVec) {
      Lanes r[4][6];
      for (int j = 0; j < 6; ++j) {
        Lanes p[6];
        for (int i = 0; i < 6; ++i) p[i] = load(src + (i * 6 + j) * plane + k0);
        RESNET_EXT_AT(p[0], p[1], p[2], p[3], p[4], p[5], r[0][j], r[1][j], r[2][j], r[3][j])
      }
      const Lanes b = load(bias + k0);
      for (int i = 0; i < rows; ++i) {
        Lanes out[kTile];
        RESNET_EXT_AT(r[i][0], r[i][1], r[i][2], r[i][3], r[i][4], r[i][5], out[0], out[1], out[2], out[3])
        for (int j = 0; j < cols; ++j) {
          const int64_t at = at0 + (i * g.w + j) * g.k + k0;
          Lanes row = out[j] + b;
          if (res) row += load(res + at);
          if (relu) row = row < zero ? zero : row;  // NaN stays NaN, as torch.relu
          store(y + at, row);
        }
      }
    }
  }

  // U[e][c][k0 .. k0 + 16) = (G w[k] G^T)[e] for input channel c, vectorized over 16 output channels
  // (lanes past K compute zeros and are not stored); w transposed to [C, K, 3, 3], so the 16 filters are adjacent.
  // In float64, rounded once: in float32 the extra ulps raised resnet50's logit difference from torchvision (bench,
  // batch 1 and 8, both layouts) from 4.7-5.4e-7 of the largest logit to 6.1-8.8e-7.
  static constexpr double G[6][3] = {{1. / 4, 0., 0.},           {-1. / 6, -1. / 6, -1. / 6},
                                     {-1. / 6, 1. / 6, -1. / 6}, {1. / 24, 1. / 12, 1. / 6},
                                     {1. / 24, -1. / 12, 1. / 6}, {0., 0., 1.}};
};
#pragma GCC diagnostic pop

#undef RESNET_EXT_BT
#undef RESNET_EXT_AT

// ---- F(2x2, 3x3): float32 and bfloat16 -------------------------------------------------------------------------

// B^T d on four values (each row of the 4x4 tile, then each column), and A^T m, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]];
// on AVX-512 vectors through GCC's vector operators, in this order of operations (the results depend on it).
#define RESNET_EXT_BT2(d0, d1, d2, d3, o0, o1, o2, o3) \
  o0 = (d0) - (d2);                                    \
  o1 = (d1) + (d2);                                    \
  o2 = (d2) - (d1);                                    \
  o3 = (d1) - (d3);
#define RESNET_EXT_AT2(m0, m1, m2, m3, o0, o1) \
  o0 = ((m0) + (m1)) + (m2);                   \
  o1 = ((m1) - (m2)) - (m3);

constexpr double kG23[4][3] = {{1., 0., 0.}, {.5, .5, .5}, {.5, -.5, .5}, {0., 0., 1.}};

// Only on CPUs with AVX512-BF16 (check_args): the transforms are written for it, one tile's channels per call
// (written per 16 channels and cloned like F(4x4)'s, they took 2.5x the GEMMs' time).
// GCC 12 warns about the undefined vectors inside its own AVX-512 intrinsics (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
struct F23 {
  using T = bf16;
  static constexpr int64_t kTile = 2, kElems = 16, kDepth = 128, kPack = 2;
  static constexpr bool kAvx512Only = true;  // AVX512-BF16 (gemm_runs_here)
  static constexpr const char* kName = "bfloat16";
  static constexpr const double (&G)[4][3] = kG23;

#ifdef RESNET_EXT_AVX512_GEMM
  // Its values as fp32 vectors (exact), and fp32 vectors rounded to it (to nearest even).
  RESNET_EXT_BF16_TARGET [[gnu::always_inline]] static __m512 load(const bf16* p) {
    return resnet_ext::cpu_gemm::load_bf16(p);
  }
  RESNET_EXT_BF16_TARGET [[gnu::always_inline]] static void store(bf16* p, __m512 v) {
    resnet_ext::cpu_gemm::store_bf16(p, v);
  }
#define RESNET_EXT_F23_TARGET RESNET_EXT_BF16_TARGET
#include "winograd_f23.inc"
#undef RESNET_EXT_F23_TARGET
#endif
};

// F(2x2, 3x3) in float32 (AVX-512; the F(4x4) variant's GEMM tiles).
struct F23F32 {
  using T = float;
  static constexpr int64_t kTile = 2, kElems = 16, kDepth = 64, kPack = 1;
  static constexpr bool kAvx512Only = true;
  static constexpr const char* kName = "float32";
  static constexpr const double (&G)[4][3] = kG23;

#ifdef RESNET_EXT_AVX512_GEMM
  RESNET_EXT_F32_TARGET [[gnu::always_inline]] static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  RESNET_EXT_F32_TARGET [[gnu::always_inline]] static void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
#define RESNET_EXT_F23_TARGET RESNET_EXT_F32_TARGET
#include "winograd_f23.inc"
#undef RESNET_EXT_F23_TARGET
#endif
};
#pragma GCC diagnostic pop

// U = G w G^T for input channel c and output channels k0 .. k0 + 16 (lanes past K compute zeros and are not
// stored), w transposed to [C, K, 3, 3] so that the 16 filters are adjacent; in float64, rounded once to W::T.
// Stored [e][c][k] (float32) or, for the bf16 dot products, with channel pairs interleaved: [e][c / 2][k][c % 2].
template <class W>
RESNET_EXT_CLONES void weight_block(const float* w, typename W::T* u, int64_t c_in, int64_t k_out, int64_t c,
                                    int64_t k0) {
  constexpr int A = W::kTile + 2;
  double g[9][kVec], t[A][3][kVec];
  float o[A * A][kVec];
  for (int q = 0; q < kVec; ++q) {
    const int64_t k = k0 + q;
    const float* src = w + (c * k_out + std::min(k, k_out - 1)) * 9;
    for (int a = 0; a < 9; ++a) g[a][q] = k < k_out ? src[a] : 0.;
  }
  for (int i = 0; i < A; ++i)
    for (int j = 0; j < 3; ++j)
      for (int q = 0; q < kVec; ++q)
        t[i][j][q] = W::G[i][0] * g[j][q] + W::G[i][1] * g[3 + j][q] + W::G[i][2] * g[6 + j][q];
  for (int i = 0; i < A; ++i)
    for (int l = 0; l < A; ++l)
      for (int q = 0; q < kVec; ++q)
        o[i * A + l][q] = static_cast<float>(t[i][0][q] * W::G[l][0] + t[i][1][q] * W::G[l][1] +
                                             t[i][2][q] * W::G[l][2]);
  const int64_t lanes = std::min<int64_t>(kVec, k_out - k0);
  for (int e = 0; e < A * A; ++e) {
    typename W::T* dst = u + e * c_in * k_out + (c - c % W::kPack) * k_out + k0 * W::kPack + c % W::kPack;
    for (int q = 0; q < lanes; ++q) dst[q * W::kPack] = static_cast<typename W::T>(o[e][q]);
  }
}

#ifdef RESNET_EXT_AVX512_GEMM
// F(2x2, 3x3)'s U = G w G^T in float32 ([16, C, K]) for a float32 weight as it lies (NCHW or channels_last, any
// strides), C and K multiples of 16: the default mode transforms the live weight on every call, where
// weight_block's transposed copy and general G cost 0.55 ms (NCHW) and 1.06 ms (channels_last) for a 256 x 256
// weight and 4.6 / 8.5 ms for 512 x 512 (benchmarks/results/2026-12-05-cpu-default-winograd-weight/). Per block
// of 16 input by 16 output channels: the 16 x 16 x 9 values gathered into a local block by the weight's strides
// (the loop along its unit stride innermost), then G's rows (g0, 1/2 (g0 + g1 + g2), 1/2 (g0 - g1 + g2), g2) on
// both sides in float64 over 16 output channels, rounded once to float32: the sums of float32 values are exact in
// float64 (short of 29 binary orders between the terms), so for a finite weight U is the float64 G w G^T rounded once, as weight_block's (a non-finite value
// reaches only its own filter's elements; this skips G's zeros, weight_block multiplies by them: 0 * inf is NaN).
// GCC 12 warns about the undefined upper half inside its own _mm512_cvtps_pd / _mm512_cvtpd_ps (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// f23_weight_block writes G's rows out as adds and halves: G must be what they say.
static_assert(kG23[0][0] == 1. && kG23[0][1] == 0. && kG23[0][2] == 0. && kG23[1][0] == .5 && kG23[1][1] == .5 &&
                  kG23[1][2] == .5 && kG23[2][0] == .5 && kG23[2][1] == -.5 && kG23[2][2] == .5 &&
                  kG23[3][0] == 0. && kG23[3][1] == 0. && kG23[3][2] == 1.,
              "f23_weight_block hard-codes F(2x2, 3x3)'s G");
RESNET_EXT_F32_TARGET void f23_weight_block(const float* w, const std::array<int64_t, 4>& st, float* u,
                                            int64_t c_in, int64_t k_out, int64_t c0, int64_t k0, int i0, int i1) {
  alignas(64) float g[kVec][9][kVec];  // [input channel][tap][output channel]
  const float* base = w + k0 * st[0] + c0 * st[1];
  for (int64_t k = 0; k < kVec; ++k)
    if (st[1] == 1) {  // channels_last: 16 input channels of one tap lie together
      for (int a = 0; a < 9; ++a)
        for (int64_t c = 0; c < kVec; ++c) g[c][a][k] = base[k * st[0] + (a / 3) * st[2] + (a % 3) * st[3] + c];
    } else {
      for (int64_t c = 0; c < kVec; ++c)
        for (int a = 0; a < 9; ++a) g[c][a][k] = base[k * st[0] + c * st[1] + (a / 3) * st[2] + (a % 3) * st[3]];
    }
  const __m512d half = _mm512_set1_pd(0.5);
  for (int64_t c = 0; c < kVec; ++c) {
    for (int h = 0; h < 2; ++h) {  // output channels k0 + 8 h .. + 8
      __m512d t[4][3];
      for (int j = 0; j < 3; ++j) {  // column j: G's rows on the kernel's rows
        const __m512d g0 = _mm512_cvtps_pd(_mm256_load_ps(&g[c][j][8 * h]));
        const __m512d g1 = _mm512_cvtps_pd(_mm256_load_ps(&g[c][3 + j][8 * h]));
        const __m512d g2 = _mm512_cvtps_pd(_mm256_load_ps(&g[c][6 + j][8 * h]));
        const __m512d s = _mm512_add_pd(g0, g2);
        t[0][j] = g0;
        t[1][j] = _mm512_mul_pd(_mm512_add_pd(s, g1), half);
        t[2][j] = _mm512_mul_pd(_mm512_sub_pd(s, g1), half);
        t[3][j] = g2;
      }
      for (int i = i0; i < i1; ++i) {  // row i: G's rows on its columns
        const __m512d s = _mm512_add_pd(t[i][0], t[i][2]);
        const __m512d o[4] = {t[i][0], _mm512_mul_pd(_mm512_add_pd(s, t[i][1]), half),
                              _mm512_mul_pd(_mm512_sub_pd(s, t[i][1]), half), t[i][2]};
        for (int l = 0; l < 4; ++l)
          _mm256_storeu_ps(u + ((i * 4 + l) * c_in + c0 + c) * k_out + k0 + 8 * h, _mm512_cvtpd_ps(o[l]));
      }
    }
  }
}
#pragma GCC diagnostic pop

// The blocks in parallel, each thread writing the rows of U (the elements e) that the op's GEMMs will read on the
// same thread where the threads split them alike (gemm: e outermost): the op read U written on the other core 1.5x
// slower (resnet50's layer 3 at batch 1, 2 threads: 1.54 ms for the transform and the op, 1.04 ms for the two
// apart). Each of `groups` groups of rows gathers the weight's block again.
void f23_weight_f32(const float* w, const std::array<int64_t, 4>& st, float* u, int64_t c_in, int64_t k_out) {
  const int threads = at::get_num_threads();
  const int groups = threads >= 4 ? 4 : threads >= 2 ? 2 : 1, rows = 4 / groups;
  const int64_t kb = k_out / kVec, blocks = c_in / kVec * kb;
  at::parallel_for(0, groups * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item % blocks;
      const int i0 = static_cast<int>(item / blocks) * rows;
      f23_weight_block(w, st, u, c_in, k_out, b / kb * kVec, b % kb * kVec, i0, i0 + rows);
    }
  });
}
#endif

// Lines [lo, hi) of the 64-byte lines at base: one GEMM's share of the op's prefetch (cpu_gemm::Prefetch).
struct Lines {
  const void* base = nullptr;
  int64_t lo = 0, hi = 0;
};

// ---- The GEMMs -------------------------------------------------------------------------------------------------

#ifdef RESNET_EXT_AVX512_GEMM
// The GEMMs M[e] = V[e] U[e] (n_t x C by C x K) on AVX-512 register tiles (cpu_gemm.h): ATen's bmm goes to MKL,
// whose sgemm runs at about a quarter of AVX-512's peak on the AMD CPUs this was measured on. Each item of work is
// one e and one 64-channel panel of U (C x 64, reused from cache by every row of V[e]).
template <int R, int NV>
RESNET_EXT_F32_TARGET void gemm_tile(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                                     int64_t depth, bool accumulate, resnet_ext::cpu_gemm::Prefetch& pf) {
  __m512 acc[R][NV];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[r][j] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16 * j) : _mm512_setzero_ps();
  resnet_ext::cpu_gemm::dot_f32_pf<R, NV>(resnet_ext::cpu_gemm::Strided<float>{a, lda}, b, ldb, depth, acc, pf);
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(c + r * ldc + 16 * j, acc[r][j]);
}

template <int R, int NV>
RESNET_EXT_BF16_TARGET void gemm_tile_bf16(const bf16* a, int64_t lda, const bf16* b, int64_t ldb, float* c,
                                           int64_t ldc, int64_t depth, bool accumulate,
                                           resnet_ext::cpu_gemm::Prefetch& pf) {
  __m512 acc[R][NV];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[r][j] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16 * j) : _mm512_setzero_ps();
  resnet_ext::cpu_gemm::dot_bf16_pf<R, NV>(resnet_ext::cpu_gemm::Strided<bf16>{a, lda}, b, ldb, depth, acc, pf);
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(c + r * ldc + 16 * j, acc[r][j]);
}

template <class T>
using GemmTile = void (*)(const T*, int64_t, const T*, int64_t, float*, int64_t, int64_t, bool,
                          resnet_ext::cpu_gemm::Prefetch&);
#define RESNET_EXT_TILES(F, R) {&F<R, 1>, &F<R, 2>, &F<R, 3>, &F<R, 4>}
#define RESNET_EXT_TABLE(F) \
  {RESNET_EXT_TILES(F, 1), RESNET_EXT_TILES(F, 2), RESNET_EXT_TILES(F, 3), \
   RESNET_EXT_TILES(F, 4), RESNET_EXT_TILES(F, 5), RESNET_EXT_TILES(F, 6)}
constexpr GemmTile<float> kTilesF32[kRows][kPanelVecs] = RESNET_EXT_TABLE(gemm_tile);
constexpr GemmTile<bf16> kTilesBF16[kRows][kPanelVecs] = RESNET_EXT_TABLE(gemm_tile_bf16);
#undef RESNET_EXT_TABLE
#undef RESNET_EXT_TILES

const GemmTile<float> (&tiles_of(const F43&))[kRows][kPanelVecs] { return kTilesF32; }
const GemmTile<float> (&tiles_of(const F23F32&))[kRows][kPanelVecs] { return kTilesF32; }
const GemmTile<bf16> (&tiles_of(const F23&))[kRows][kPanelVecs] { return kTilesBF16; }

template <class W>
bool gemm_runs_here() {
  return W::kPack == 1 ? resnet_ext::cpu_gemm::runs_f32() : resnet_ext::cpu_gemm::runs_bf16();
}

// m[e] = v[e] u[e] for every e: v planes `plane` elements apart, rows of c; u [e][c][k] (in pairs of c for bf16);
// m [e][n_t][k]. kDepth: input channels summed in one chain before it is added to the product (for fp32, one chain
// over all 512 channels of layer4 doubled the op's rounding error: 1.2e-5 of the largest output vs MKL's 4.8e-6).
template <class W>
void gemm(const typename W::T* v, int64_t plane, const typename W::T* u, float* m, int64_t n_t, int64_t c,
          int64_t k, const Lines& pf) {
  const auto& tiles = tiles_of(W{});
  const int64_t panels = (k + kPanelVecs * kVec - 1) / (kPanelVecs * kVec);
  const int64_t items = W::kElems * panels, steps = (n_t + kRows - 1) / kRows * (c / W::kPack);
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t e = item / panels, k0 = (item % panels) * kPanelVecs * kVec;
      const int64_t vecs = std::min<int64_t>(kPanelVecs, (k - k0) / kVec);
      const typename W::T* a = v + e * plane;
      const typename W::T* b = u + e * c * k + k0 * W::kPack;
      float* out = m + e * n_t * k + k0;
      auto f = resnet_ext::cpu_gemm::Prefetch::share(pf.base, pf.lo, pf.hi, item, items, steps);
      resnet_ext::cpu_gemm::for_each_tile(0, n_t, [&](int64_t t, int64_t rows) {
        const auto tile = tiles[rows - 1][vecs - 1];
        for (int64_t i = 0; i < c; i += W::kDepth)
          tile(a + t * c + i, c, b + i * k, k, out + t * k, k, std::min<int64_t>(W::kDepth, c - i), i > 0, f);
      });
    }
  });
}

#else
template <class W>
bool gemm_runs_here() { return false; }
template <class W>
void gemm(const typename W::T*, int64_t, const typename W::T*, float*, int64_t, int64_t, int64_t, const Lines&) {}
#endif

// ---- The op ----------------------------------------------------------------------------------------------------

// The calling thread's workspace (input and product planes of one chunk), kept between calls: freshly mapped
// pages of a new allocation on every call would cost more than the transforms.
void* workspace(int64_t bytes) {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Free> buffer;
  thread_local int64_t capacity = 0;
  if (capacity < bytes) {
    buffer.reset();
    capacity = 0;
    void* p = nullptr;
    if (posix_memalign(&p, 64, static_cast<size_t>(bytes)) != 0) {
      resnet_ext::cpu_memory::empty_cache();  // the memory reuse's kept blocks back first, as its own allocations do
      TORCH_CHECK(posix_memalign(&p, 64, static_cast<size_t>(bytes)) == 0,
                  "winograd3x3: could not allocate a workspace of ", bytes, " bytes");
    }
    buffer.reset(p);
    capacity = bytes;
  }
  return buffer.get();
}

// The transformed weight's shape for C input and K output channels: [36, C, K] (float32) or [16, C / 2, K, 2]
// (bfloat16, channel pairs interleaved).
template <class W>
std::vector<int64_t> u_shape(int64_t c, int64_t k) {
  if (W::kPack == 1) return {W::kElems, c, k};
  return {W::kElems, c / W::kPack, k, W::kPack};
}

template <class W>
void check_args(const Tensor& x, const Tensor& u, const Tensor& bias, const std::optional<Tensor>& residual) {
  const int64_t c = x.size(1);
  TORCH_CHECK(u.dim() >= 3 && u.sizes() == at::IntArrayRef(u_shape<W>(c, u.size(2))) &&
                  u.scalar_type() == x.scalar_type() && u.is_contiguous(),
              "winograd3x3: u must be the contiguous ", W::kName, " transformed weight ",
              W::kPack == 1 ? "[36, C, K] or [16, C, K]" : "[16, C / 2, K, 2]", " of a ", W::kName,
              " weight (ops.winograd_weight) for C=", c, " input channels, got ", u.scalar_type(), " ", u.sizes(),
              " strides ", u.strides());
  const int64_t k = u.size(2);
  TORCH_CHECK(c % kVec == 0 && k % kVec == 0 && c > 0 && k > 0,
              "winograd3x3: the input and output channels must be positive multiples of 16, got C=", c, ", K=", k);
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == k &&
                  (bias.scalar_type() == at::kFloat || bias.scalar_type() == x.scalar_type()),
              "winograd3x3: bias must be a ", W::kPack == 1 ? "float32" : "float32 or bfloat16", " vector of the ", k,
              " output channels, got ",
              bias.scalar_type(), " ", bias.sizes());
  if (residual.has_value()) {
    const Tensor& r = *residual;
    const std::vector<int64_t> shape{x.size(0), k, x.size(2), x.size(3)};
    TORCH_CHECK(r.device().is_cpu() && r.scalar_type() == x.scalar_type() && r.sizes() == at::IntArrayRef(shape) &&
                    r.is_contiguous(at::MemoryFormat::ChannelsLast),
                "winograd3x3: residual must be a channels_last ", W::kName, " CPU tensor of the output's shape ",
                at::IntArrayRef(shape), ", got ", r.scalar_type(), " ", r.sizes(), " strides ", r.strides(), " on ",
                r.device());
  }
  TORCH_CHECK(!W::kAvx512Only || gemm_runs_here<W>(), "winograd3x3: ", W::kName, " F(2x2, 3x3) needs a CPU with ",
              W::kPack == 1 ? "AVX-512" : "AVX512-BF16", ", which this one lacks (use oneDNN's convolution)");
}

template <class W>
Tensor winograd3x3(const Tensor& x, const Tensor& u, const Tensor& bias, const std::optional<Tensor>& residual,
                   bool relu, int64_t prefetch_addr, int64_t prefetch_bytes) {
  using T = typename W::T;
  const void* pf_base = reinterpret_cast<const void*>(prefetch_addr);
  const int64_t pf_lines = resnet_ext::cpu_gemm::Prefetch::lines("winograd3x3", prefetch_addr, prefetch_bytes);
  check_args<W>(x, u, bias, residual);
  constexpr int64_t tile = W::kTile;
  const Geometry g{x.size(0), x.size(2), x.size(3), x.size(1), u.size(2), (x.size(2) + tile - 1) / tile,
                   (x.size(3) + tile - 1) / tile};
  Tensor y = at::empty({g.n, g.k, g.h, g.w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  const Tensor b = bias.to(at::kFloat).contiguous();
  const T* xp = x.const_data_ptr<T>();
  const float* bp = b.const_data_ptr<float>();
  const T* rp = residual.has_value() ? residual->const_data_ptr<T>() : nullptr;
  T* yp = y.mutable_data_ptr<T>();

  const int64_t tiles = g.tiles();
  const int64_t per_tile =
      W::kElems * (g.c * static_cast<int64_t>(sizeof(T)) + g.k * static_cast<int64_t>(sizeof(float)));
  const int64_t u_bytes = u.numel() * static_cast<int64_t>(sizeof(T));
  const int64_t pad = kPlanePadBytes / static_cast<int64_t>(sizeof(T));
  const int64_t grain = std::max<int64_t>(1, 2048 / g.c);
  // Tiles t0 .. t0 + n_t through the three steps, in the calling thread's workspace (its parallel loops run inline
  // where the caller is itself one of a parallel loop's threads).
  // Each chunk's GEMM prefetches its share of the lines, by the tiles it covers.
  auto run_chunk = [&](int64_t t0, int64_t n_t, int64_t chunk) {
    const Lines pf{pf_base, pf_lines * t0 / tiles, pf_lines * (t0 + n_t) / tiles};
    const int64_t v_bytes = W::kElems * (chunk * g.c + pad) * static_cast<int64_t>(sizeof(T));
    char* ws = static_cast<char*>(workspace(v_bytes + W::kElems * chunk * g.k * static_cast<int64_t>(sizeof(float))));
    T* v = reinterpret_cast<T*>(ws);
    float* m = reinterpret_cast<float*>(ws + v_bytes);  // 64-byte aligned: C is a multiple of 16
    const int64_t plane = n_t * g.c + pad;
    at::parallel_for(t0, t0 + n_t, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) W::input_tile(xp, v, g, plane, t, t0);
    });
    if (gemm_runs_here<W>()) {
      gemm<W>(v, plane, u.const_data_ptr<T>(), m, n_t, g.c, g.k, pf);
    } else {  // float32 only (check_args)
      const Tensor vt = at::from_blob(v, {W::kElems, n_t, g.c}, {plane, g.c, 1}, x.options());
      Tensor mt = at::from_blob(m, {W::kElems, n_t, g.k}, x.options());
      at::bmm_out(mt, vt, u);
    }
    at::parallel_for(t0, t0 + n_t, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) W::output_tile(m, bp, rp, yp, g, n_t, t, t0, relu);
    });
  };
  // bf16 with u of 1 MiB or more and all tiles' planes within 2 MiB (resnet50's layer 3 at batch 1: u 2 MiB, 49
  // tiles) runs as one shared chunk: in blocks each thread read all of u for every 10 tiles, 545 -> 356 us per call
  // inside the forward, the forward 1.03-1.05x faster (benchmarks/results/2026-12-05-cpu-conv1x1/). fp32's layer 2
  // at batch 1 (u 2.3 MiB, 49 tiles) measured level (0.96-1.02x) and stays in blocks.
  const bool one_chunk = W::kPack == 2 && u_bytes >= (1 << 20) && tiles * per_tile <= (2 << 20);
  if (u_bytes < kSharedMinUBytes && !one_chunk) {
    // A small u (resnet50's layers 1-2, and layer 3 in bf16) stays in each core's cache: each thread takes its own
    // blocks of tiles through all three steps, in its own workspace, so that the planes stay in its core's cache.
    // Measured on a 2-core AVX-512 machine (resnet50's 3x3 convs, batch 1 and 8, interleaved in one process,
    // against chunks of 4 MiB whose every step is split between the threads; medians per shape, two runs): fp32
    // 1.00-1.35x, bf16 0.96-1.40x (layer 2 level); where u is larger (fp32 layers 3-4), 0.1-0.75x.
    // As many blocks for every thread, of near-equal tiles (784 tiles in blocks of up to 42 made 10 blocks for
    // one thread and 9 for the other).
    const int64_t threads = at::get_num_threads(), most = std::max<int64_t>(1, kBlockBytes / per_tile);
    const int64_t blocks = std::min(tiles, ((tiles + most - 1) / most + threads - 1) / threads * threads);
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t t0 = tiles * i / blocks;
        run_chunk(t0, tiles * (i + 1) / blocks - t0, (tiles + blocks - 1) / blocks);
      }
    });
    return y;
  }
  // A large u is read once for as many tiles as the workspace bound allows, every step split between the threads.
  const int64_t chunk = std::max<int64_t>(1, std::min(tiles, kChunkBytes / per_tile));
  for (int64_t t0 = 0; t0 < tiles; t0 += chunk) run_chunk(t0, std::min(chunk, tiles - t0), chunk);
  return y;
}

Tensor winograd3x3_cpu(const Tensor& x, const Tensor& u, const Tensor& bias, const std::optional<Tensor>& residual,
                       bool relu, int64_t prefetch_addr, int64_t prefetch_bytes) {
  TORCH_CHECK(x.device().is_cpu() && u.device().is_cpu() && bias.device().is_cpu(),
              "winograd3x3: x, u and bias must be CPU tensors, got ", x.device(), ", ", u.device(), ", ",
              bias.device());
  TORCH_CHECK(x.dim() == 4 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "winograd3x3: x must be a 4-d float32 or bfloat16 tensor (N, C, H, W), got ", x.dim(), "-d ",
              x.scalar_type());
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "winograd3x3: x must be channels_last contiguous, got strides ", x.strides());
  const int64_t pa = prefetch_addr, pb = prefetch_bytes;
  if (x.scalar_type() != at::kFloat) return winograd3x3<F23>(x, u, bias, residual, relu, pa, pb);
  // float32: the variant u was made for (its first dimension: 36 or 16 elements per tile).
  return u.dim() == 3 && u.size(0) == F23F32::kElems ? winograd3x3<F23F32>(x, u, bias, residual, relu, pa, pb)
                                                     : winograd3x3<F43>(x, u, bias, residual, relu, pa, pb);
}

template <class W>
Tensor winograd_weight(const Tensor& w) {
  const int64_t k_out = w.size(0), c_in = w.size(1);
  TORCH_CHECK(c_in % W::kPack == 0, "winograd_weight: a ", W::kName,
              " weight needs an even number of input channels, got ", c_in);
  Tensor u = at::empty(u_shape<W>(c_in, k_out), w.options().memory_format(at::MemoryFormat::Contiguous));
  if (u.numel() == 0) return u;
#ifdef RESNET_EXT_AVX512_GEMM
  if constexpr (std::is_same_v<W, F23F32>) {
    if (w.scalar_type() == at::kFloat && c_in % kVec == 0 && k_out % kVec == 0 && resnet_ext::cpu_gemm::runs_f32()) {
      f23_weight_f32(w.const_data_ptr<float>(), {w.stride(0), w.stride(1), w.stride(2), w.stride(3)},
                     u.mutable_data_ptr<float>(), c_in, k_out);
      return u;
    }
  }
#endif
  // [C, K, 3, 3]: read in place, the 16 filters of a block lie 18 KiB apart (C = 512) and every input channel
  // walks all K of them, 13 ms for a 512x512 weight (TLB misses); transposed first, 1.3 ms.
  const Tensor wc = w.to(at::kFloat).transpose(0, 1).contiguous();
  const float* wp = wc.const_data_ptr<float>();
  typename W::T* up = u.mutable_data_ptr<typename W::T>();
  at::parallel_for(0, c_in, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      for (int64_t k0 = 0; k0 < k_out; k0 += kVec) weight_block<W>(wp, up, c_in, k_out, c, k0);
  });
  return u;
}

Tensor winograd_weight_cpu(const Tensor& w, int64_t m) {
  TORCH_CHECK(w.device().is_cpu() && (w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16) &&
                  w.dim() == 4 && w.size(2) == 3 && w.size(3) == 3,
              "winograd_weight: w must be a float32 or bfloat16 CPU weight [K, C, 3, 3], got ", w.scalar_type(), " ",
              w.sizes(), " on ", w.device());
  const bool fp32 = w.scalar_type() == at::kFloat;
  TORCH_CHECK(m == 0 || m == 2 || (m == 4 && fp32), "winograd_weight: m (the output tile's side) must be 0 (the ",
              "dtype's default: 4 for float32, 2 for bfloat16), 2, or 4 for float32, got ", m, " for ",
              w.scalar_type());
  if (!fp32) return winograd_weight<F23>(w);
  return m == 2 ? winograd_weight<F23F32>(w) : winograd_weight<F43>(w);
}

// Whether the CPU has AMX-BF16 and the OS keeps its tile state (XCR0 bits 17 and 18): oneDNN's bf16
// convolutions then run on the tiles, faster than this file's AVX512-BF16 dot products.
bool cpu_amx_bf16() {
#ifdef RESNET_EXT_AVX512_GEMM
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22))) return false;  // CPUID.7.0:EDX[22] AMX-BF16
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;             // OSXSAVE: XGETBV works
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & (3u << 17)) == (3u << 17);
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(resnet_ext, m) {
  // y = relu?(conv3x3(x, w, stride 1, padding 1) + bias (+ residual)) by Winograd (F(4x4, 3x3) or F(2x2, 3x3) for
  // float32, as u was made, F(2x2, 3x3) for bfloat16), with u the transformed weight of ops.winograd_weight. CPU,
  // channels_last; the flat CPU forward's 3x3 units.
  m.def("winograd3x3(Tensor x, Tensor u, Tensor bias, Tensor? residual, bool relu, int prefetch_addr=0, "
        "int prefetch_bytes=0) -> Tensor");
  // u = G w G^T for a weight of x's dtype and output tiles of m x m (0: the dtype's default): [36, C, K] (float32,
  // m 4), [16, C, K] (float32, m 2) or [16, C / 2, K, 2] (bfloat16, m 2).
  m.def("winograd_weight(Tensor w, int m=0) -> Tensor");
  // Whether this CPU runs the bfloat16 variant (AVX512-BF16), and float32's F(2x2, 3x3) (AVX-512).
  m.def("winograd_bf16_supported() -> bool", [] { return gemm_runs_here<F23>(); });
  m.def("winograd_f23_supported() -> bool", [] { return gemm_runs_here<F23F32>(); });
  // Whether this CPU has AMX-BF16 tiles the OS keeps (the frozen bf16 plan leaves its 3x3 convs to oneDNN there).
  m.def("cpu_amx_bf16() -> bool", [] { return cpu_amx_bf16(); });
}

TORCH_LIBRARY_IMPL(resnet_ext, CPU, m) {
  m.impl("winograd3x3", &winograd3x3_cpu);
  m.impl("winograd_weight", &winograd_weight_cpu);
}
