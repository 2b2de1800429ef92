// The AVX-512 register-tile GEMM step shared by the CPU ops (winograd.cpp's GEMMs, conv1x1.cpp): a tile of R rows
// of A by NV vectors of 16 output channels (6 x 64 at most: 24 accumulators), `depth` input channels deep. Per
// input channel (fp32) or channel pair (bf16): NV loads of B's row, R broadcasts of A, R * NV fused multiply-adds
// (fp32) or dot products (bf16 pairs summed into fp32). Measured alone on one core of a Zen 5 (B's panel in cache):
// 83-91% of the core's dot-product peak in bf16 and 90-95% of its FMA peak in fp32. Each caller sets the
// accumulators up and stores them (its own epilogue).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RESNET_EXT_AVX512_GEMM 1
#define RESNET_EXT_F32_TARGET __attribute__((target("avx512f")))
#define RESNET_EXT_BF16_TARGET __attribute__((target("avx512f,avx512bf16")))
#else
#define RESNET_EXT_F32_TARGET
#define RESNET_EXT_BF16_TARGET
#endif

namespace resnet_ext::cpu_gemm {

using bf16 = c10::BFloat16;

constexpr int64_t kVec = 16;       // output channels per vector
constexpr int64_t kRows = 6;       // rows of A per register tile
constexpr int64_t kPanelVecs = 4;  // vectors of output channels per register tile (a 64-channel panel of B)

// Rows [r0, r1) as the fewest register tiles of at most kRows rows, of heights differing by at most one:
// fn(first row, rows). Filled from the top, 49 rows (a 7x7 map) would end in a 1-row tile, whose 4 accumulators
// each wait on the last dot product's latency (a 1-row fp32 tile took a third of a 6-row tile's time for a sixth
// of its rows). Each row's sums are the same whatever its tile's height.
template <class F>
[[gnu::always_inline]] inline void for_each_tile(int64_t r0, int64_t r1, const F& fn) {
  const int64_t n = r1 - r0, parts = (n + kRows - 1) / kRows;
  for (int64_t i = 0; i < parts; ++i) {
    const int64_t t = r0 + n * i / parts;
    fn(t, r0 + n * (i + 1) / parts - t);
  }
}

// Cache lines to fetch while a tile computes, one every `every` steps of its depth loop: the next unit's weight,
// which a forward at batch 1 would otherwise read from memory only when that unit starts (prefetcht0; see
// benchmarks/results/2026-12-05-cpu-prefetch/). Inactive (no lines, or once they are issued), the tiles run the
// loop without it.
struct Prefetch {
  const char* p = nullptr;
  const char* end = nullptr;
  int64_t every = 1;
  int64_t count = INT64_MAX;
  bool active() const { return count != INT64_MAX; }
  // The whole lines of an op's `prefetch_addr` and `prefetch_bytes` arguments (0, 0: none). Any address is safe: a
  // prefetch never faults, and one of memory not mapped is dropped.
  static int64_t lines(const char* op, int64_t addr, int64_t bytes) {
    TORCH_CHECK(bytes >= 0 && bytes <= (int64_t{1} << 47) && (addr != 0 || bytes == 0), op,
                ": prefetch_bytes must be in [0, 2^47], and 0 where prefetch_addr is 0, got prefetch_addr ", addr,
                ", prefetch_bytes ", bytes);
    return bytes / 64;
  }
  // Part i of n of lines [lo, hi) at `base` (each item of an op's work fetches its share), spread over the first
  // half of the item's `steps` depth steps where there are that many, else one a step until the steps run out.
  static Prefetch share(const void* base, int64_t lo, int64_t hi, int64_t i, int64_t n, int64_t steps) {
    Prefetch f;
    const int64_t first = lo + (hi - lo) * i / n, last = lo + (hi - lo) * (i + 1) / n;
    if (base == nullptr || last <= first || steps <= 0) return f;
    f.p = static_cast<const char*>(base) + first * 64;
    f.end = static_cast<const char*>(base) + last * 64;
    f.every = steps > 2 * (last - first) ? steps / (2 * (last - first)) : 1;
    f.count = f.every;
    return f;
  }
  [[gnu::always_inline]] inline void step() {
    if (--count == 0) {
#ifdef RESNET_EXT_AVX512_GEMM
      _mm_prefetch(p, _MM_HINT_T0);
#endif
      p += 64;
      count = p < end ? every : INT64_MAX;
    }
  }
};

#ifdef RESNET_EXT_AVX512_GEMM
// Whether this CPU runs the tiles: AVX-512 (fp32), and AVX512-BF16 for bf16 operands.
inline bool runs_f32() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}
inline bool runs_bf16() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  return ok;
}

// Operand A of a tile, value i of row r: R rows `lda` apart (the GEMMs), or at R addresses (conv_direct's pixels,
// each kernel tap's input read in place).
template <class T>
struct Strided {
  const T* a;
  int64_t lda;
  const T* at(int r, int64_t i) const { return a + r * lda + i; }
};
template <class T>
struct Gathered {
  const T* const* p;
  const T* at(int r, int64_t i) const { return p[r] + i; }
};

// acc[r][j] += sum over i < depth of a.at(r, i) * b[i * ldb + 16 j .. + 16).
// PF: one step of `pf` per depth step.
template <int R, int NV, bool PF = false, class Rows>
RESNET_EXT_F32_TARGET [[gnu::always_inline]] inline void dot_f32(const Rows& a, const float* b, int64_t ldb,
                                                                 int64_t depth, __m512 (&acc)[R][NV],
                                                                 Prefetch* pf = nullptr) {
  for (int64_t i = 0; i < depth; ++i) {
    if constexpr (PF) pf->step();
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = _mm512_loadu_ps(b + i * ldb + kVec * j);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(*a.at(r, i));
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_fmadd_ps(av, bv[j], acc[r][j]);
    }
  }
}

template <int R, int NV, bool PF = false>
RESNET_EXT_F32_TARGET [[gnu::always_inline]] inline void dot_f32(const float* a, int64_t lda, const float* b,
                                                                 int64_t ldb, int64_t depth, __m512 (&acc)[R][NV],
                                                                 Prefetch* pf = nullptr) {
  dot_f32<R, NV, PF>(Strided<float>{a, lda}, b, ldb, depth, acc, pf);
}

// The same on bf16 operands, depth even: b holds channel pairs interleaved (the pair of channels i, i + 1 is at
// b + i * ldb, ldb = K), and each step broadcasts one pair of a's channels. FirstOnly: each pair's second value is
// taken as +0 (a run of odd length padded with a zero weight, whose pad would pair with whatever value follows the
// run in a: 0 * inf is NaN).
template <int R, int NV, bool FirstOnly = false, bool PF = false, class Rows>
RESNET_EXT_BF16_TARGET [[gnu::always_inline]] inline void dot_bf16(const Rows& a, const bf16* b, int64_t ldb,
                                                                   int64_t depth, __m512 (&acc)[R][NV],
                                                                   Prefetch* pf = nullptr) {
  for (int64_t i = 0; i < depth; i += 2) {
    if constexpr (PF) pf->step();
    __m512i bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = _mm512_loadu_si512(b + i * ldb + 2 * kVec * j);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, a.at(r, i), sizeof(pair));
      if constexpr (FirstOnly) pair &= 0xffff;  // x86 is little-endian: the first value is the low half
      const __m512i av = _mm512_set1_epi32(pair);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], (__m512bh)av, (__m512bh)bv[j]);
    }
  }
}

template <int R, int NV, bool FirstOnly = false, bool PF = false>
RESNET_EXT_BF16_TARGET [[gnu::always_inline]] inline void dot_bf16(const bf16* a, int64_t lda, const bf16* b,
                                                                   int64_t ldb, int64_t depth,
                                                                   __m512 (&acc)[R][NV], Prefetch* pf = nullptr) {
  dot_bf16<R, NV, FirstOnly, PF>(Strided<bf16>{a, lda}, b, ldb, depth, acc, pf);
}

// dot_f32 / dot_bf16 advancing the tile's prefetch stream `pf` while it has lines left (a copy, so that it stays
// in registers through the loop), else the loop without it. `a`: rows as dot_f32 takes them.
template <int R, int NV, class Rows>
RESNET_EXT_F32_TARGET [[gnu::always_inline]] inline void dot_f32_pf(const Rows& a, const float* b, int64_t ldb,
                                                                    int64_t depth, __m512 (&acc)[R][NV],
                                                                    Prefetch& pf) {
  Prefetch f = pf;
  if (f.active())
    dot_f32<R, NV, true>(a, b, ldb, depth, acc, &f);
  else
    dot_f32<R, NV>(a, b, ldb, depth, acc);
  pf = f;
}

template <int R, int NV, class Rows>
RESNET_EXT_BF16_TARGET [[gnu::always_inline]] inline void dot_bf16_pf(const Rows& a, const bf16* b, int64_t ldb,
                                                                      int64_t depth, __m512 (&acc)[R][NV],
                                                                      Prefetch& pf) {
  Prefetch f = pf;
  if (f.active())
    dot_bf16<R, NV, false, true>(a, b, ldb, depth, acc, &f);
  else
    dot_bf16<R, NV>(a, b, ldb, depth, acc);
  pf = f;
}

// 16 bf16 values widened to fp32 (exact).
RESNET_EXT_BF16_TARGET inline __m512 load_bf16(const bf16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// 16 fp32 values rounded to bf16, to nearest even; a NaN stays a NaN.
RESNET_EXT_BF16_TARGET inline void store_bf16(bf16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
}
#else
inline bool runs_f32() { return false; }
inline bool runs_bf16() { return false; }
#endif

}  // namespace resnet_ext::cpu_gemm
