// resnet_ext::winograd3x3: y = relu?(conv3x3(x, w) + bias (+ residual)), stride 1, padding 1, on the CPU, by
// Winograd's minimal filtering F(4x4, 3x3): each 4x4 output tile is computed from its 6x6 input tile as
// A^T [(G w G^T) . (B^T d B)] A, so the 3x3 convolution becomes 36 GEMMs of (tiles x C) by (C x K), 4x fewer
// multiplies than the direct convolution. The transformed weight U = G w G^T ([36, C, K], winograd_weight below) is
// made once per frozen fold; winograd3x3 transforms the input tiles (B^T d B), runs the 36 GEMMs (gemm36 below on
// AVX-512 CPUs, else ATen's bmm), and transforms the products back (A^T m A) with the bias, residual and ReLU
// fused. fp32, channels_last, C and K multiples of 16 (one AVX-512 vector of channels per step). The frozen CPU
// plan picks it per layer where it is faster than oneDNN's direct convolution (engine/cpu.py, winograd_pays).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <ATen/ATen.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RESNET_EXT_AVX512_GEMM 1
#endif

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "cpu_clones.h"

namespace {

using at::Tensor;

constexpr int64_t kVec = 16;              // channels per step
constexpr int64_t kTile = 4;              // output tile side; the input tile is kTile + 2
constexpr int64_t kElems = 36;            // (kTile + 2)^2 transformed elements per tile
constexpr int64_t kPlanePad = 16;         // floats between the 36 input planes: without it their common stride is a
                                          // multiple of 4 KiB and the 36 write streams share one L1 set (up to 3x slower)
constexpr int64_t kSmallChunkBytes = 4 << 20;   // input and product planes per chunk of tiles (see below); the
constexpr int64_t kLargeChunkBytes = 64 << 20;  // larger one bounds the workspace

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
    const float a_ = m1 + m2, b_ = m1 - m2, c_ = m3 + m4, d_ = m3 - m4; \
    o0 = m0 + a_ + c_;                                        \
    o1 = b_ + 2.f * d_;                                       \
    o2 = a_ + 4.f * c_;                                       \
    o3 = b_ + 8.f * d_ + m5;                                  \
  }

struct Geometry {
  int64_t n, h, w, c, k, tiles_h, tiles_w;
  int64_t tiles() const { return n * tiles_h * tiles_w; }
};

// V[e][t - t0][c0 .. c0 + 16) = (B^T d B)[e] of tile t's 6x6 input patch (zero outside the image: padding 1).
RESNET_EXT_CLONES void input_tile(const float* x, float* v, const Geometry& g, int64_t plane, int64_t t,
                                  int64_t t0, int64_t c0) {
  const int64_t tn = t / (g.tiles_h * g.tiles_w), th = (t / g.tiles_w) % g.tiles_h, tw = t % g.tiles_w;
  float d[6][6][kVec], r[6][6][kVec];
  for (int i = 0; i < 6; ++i) {
    const int64_t h = th * kTile - 1 + i;
    for (int j = 0; j < 6; ++j) {
      const int64_t w = tw * kTile - 1 + j;
      if (h < 0 || h >= g.h || w < 0 || w >= g.w) {
        for (int q = 0; q < kVec; ++q) d[i][j][q] = 0.f;
      } else {
        const float* p = x + ((tn * g.h + h) * g.w + w) * g.c + c0;
        for (int q = 0; q < kVec; ++q) d[i][j][q] = p[q];
      }
    }
  }
  for (int j = 0; j < 6; ++j)
    for (int q = 0; q < kVec; ++q) {
      RESNET_EXT_BT(d[0][j][q], d[1][j][q], d[2][j][q], d[3][j][q], d[4][j][q], d[5][j][q],
                    r[0][j][q], r[1][j][q], r[2][j][q], r[3][j][q], r[4][j][q], r[5][j][q])
    }
  for (int i = 0; i < 6; ++i) {
    float o[6][kVec];  // staged: stores through six pointers that may alias do not vectorize
    for (int q = 0; q < kVec; ++q) {
      RESNET_EXT_BT(r[i][0][q], r[i][1][q], r[i][2][q], r[i][3][q], r[i][4][q], r[i][5][q],
                    o[0][q], o[1][q], o[2][q], o[3][q], o[4][q], o[5][q])
    }
    for (int j = 0; j < 6; ++j) {
      float* dst = v + (i * 6 + j) * plane + (t - t0) * g.c + c0;
      for (int q = 0; q < kVec; ++q) dst[q] = o[j][q];
    }
  }
}

// y[tile t, channels k0 .. k0 + 16) = relu?(A^T M A + bias (+ residual)), the tile's in-image pixels only.
RESNET_EXT_CLONES void output_tile(const float* m, const float* bias, const float* res, float* y, const Geometry& g,
                                   int64_t chunk_tiles, int64_t t, int64_t t0, int64_t k0, bool relu) {
  const int64_t tn = t / (g.tiles_h * g.tiles_w), th = (t / g.tiles_w) % g.tiles_h, tw = t % g.tiles_w;
  const int64_t plane = chunk_tiles * g.k;
  float b[kVec];
  for (int q = 0; q < kVec; ++q) b[q] = bias[k0 + q];
  float r[4][6][kVec];
  for (int j = 0; j < 6; ++j) {
    const float* p[6];
    for (int i = 0; i < 6; ++i) p[i] = m + (i * 6 + j) * plane + (t - t0) * g.k + k0;
    for (int q = 0; q < kVec; ++q) {
      RESNET_EXT_AT(p[0][q], p[1][q], p[2][q], p[3][q], p[4][q], p[5][q], r[0][j][q], r[1][j][q], r[2][j][q],
                    r[3][j][q])
    }
  }
  for (int i = 0; i < kTile; ++i) {
    const int64_t h = th * kTile + i;
    if (h >= g.h) break;
    float out[kTile][kVec];
    for (int q = 0; q < kVec; ++q) {
      RESNET_EXT_AT(r[i][0][q], r[i][1][q], r[i][2][q], r[i][3][q], r[i][4][q], r[i][5][q], out[0][q], out[1][q],
                    out[2][q], out[3][q])
    }
    for (int j = 0; j < kTile; ++j) {
      const int64_t w = tw * kTile + j;
      if (w >= g.w) break;
      const int64_t at = ((tn * g.h + h) * g.w + w) * g.k + k0;
      // Computed in a local row, then stored: arithmetic through pointers that may alias does not vectorize.
      float row[kVec];
      for (int q = 0; q < kVec; ++q) row[q] = out[j][q] + b[q];
      if (res)
        for (int q = 0; q < kVec; ++q) row[q] += res[at + q];
      if (relu)
        for (int q = 0; q < kVec; ++q) row[q] = row[q] < 0.f ? 0.f : row[q];  // NaN stays NaN, as torch.relu
      float* yo = y + at;
      for (int q = 0; q < kVec; ++q) yo[q] = row[q];
    }
  }
}

#undef RESNET_EXT_BT
#undef RESNET_EXT_AT

// U[e][c][k0 .. k0 + 16) = (G w[k] G^T)[e] for input channel c, vectorized over 16 output channels
// (lanes past K compute zeros and are not stored); w transposed to [C, K, 3, 3], so the 16 filters are adjacent.
// In float64, rounded once: in float32 the extra ulps raised resnet50's logit difference from torchvision (bench,
// batch 1 and 8, both layouts) from 4.7-5.4e-7 of the largest logit to 6.1-8.8e-7.
RESNET_EXT_CLONES void weight_block(const float* w, float* u, int64_t c_in, int64_t k_out, int64_t c, int64_t k0) {
  constexpr double G[6][3] = {{1. / 4, 0., 0.},           {-1. / 6, -1. / 6, -1. / 6},
                              {-1. / 6, 1. / 6, -1. / 6}, {1. / 24, 1. / 12, 1. / 6},
                              {1. / 24, -1. / 12, 1. / 6}, {0., 0., 1.}};
  double g[9][kVec], t[6][3][kVec];
  float o[36][kVec];
  for (int q = 0; q < kVec; ++q) {
    const int64_t k = k0 + q;
    const float* src = w + (c * k_out + std::min(k, k_out - 1)) * 9;
    for (int a = 0; a < 9; ++a) g[a][q] = k < k_out ? src[a] : 0.;
  }
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 3; ++j)
      for (int q = 0; q < kVec; ++q) t[i][j][q] = G[i][0] * g[j][q] + G[i][1] * g[3 + j][q] + G[i][2] * g[6 + j][q];
  for (int i = 0; i < 6; ++i)
    for (int l = 0; l < 6; ++l)
      for (int q = 0; q < kVec; ++q)
        o[i * 6 + l][q] = static_cast<float>(t[i][0][q] * G[l][0] + t[i][1][q] * G[l][1] + t[i][2][q] * G[l][2]);
  const int64_t lanes = std::min<int64_t>(kVec, k_out - k0);
  for (int e = 0; e < kElems; ++e) {
    float* dst = u + (e * c_in + c) * k_out + k0;
    for (int q = 0; q < lanes; ++q) dst[q] = o[e][q];
  }
}

#ifdef RESNET_EXT_AVX512_GEMM
// The 36 GEMMs M[e] = V[e] U[e] (n_t x C by C x K, e = 0 .. 35) on AVX-512: ATen's bmm goes to MKL, whose sgemm
// runs at about a quarter of AVX-512's peak on the AMD CPUs this was measured on. Register tiles of R tiles by NV
// vectors of 16 output channels (6 x 64: 24 accumulators), kDepth input channels at a time: per channel NV loads
// of U's row, R broadcasts of V, R * NV fused multiply-adds. Each item of work is one e and one 64-channel panel
// of U (C x 64, reused from cache by every row of V[e]).
template <int R, int NV>
__attribute__((target("avx512f"))) void gemm_tile(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                                                  int64_t ldc, int64_t depth, bool accumulate) {
  __m512 acc[R][NV];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[r][j] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16 * j) : _mm512_setzero_ps();
  for (int64_t i = 0; i < depth; ++i) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = _mm512_loadu_ps(b + i * ldb + 16 * j);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_fmadd_ps(av, bv[j], acc[r][j]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(c + r * ldc + 16 * j, acc[r][j]);
}

using GemmTile = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t, bool);
// kDepth: input channels summed in one chain of multiply-adds before it is added to the product: one chain over
// all 512 channels of layer4 doubled the op's rounding error (1.2e-5 of the largest output vs MKL's 4.8e-6).
constexpr int64_t kRows = 6, kPanelVecs = 4, kDepth = 64;
#define RESNET_EXT_TILES(R) {&gemm_tile<R, 1>, &gemm_tile<R, 2>, &gemm_tile<R, 3>, &gemm_tile<R, 4>}
constexpr GemmTile kGemmTiles[kRows][kPanelVecs] = {RESNET_EXT_TILES(1), RESNET_EXT_TILES(2), RESNET_EXT_TILES(3),
                                                    RESNET_EXT_TILES(4), RESNET_EXT_TILES(5), RESNET_EXT_TILES(6)};
#undef RESNET_EXT_TILES

bool gemm36_runs_here() {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512;
}

// m[e] = v[e] u[e] for e = 0 .. 35: v planes `plane` floats apart, rows of c; u [36, c, k]; m [36, n_t, k].
void gemm36(const float* v, int64_t plane, const float* u, float* m, int64_t n_t, int64_t c, int64_t k) {
  const int64_t panels = (k + kPanelVecs * kVec - 1) / (kPanelVecs * kVec);
  at::parallel_for(0, kElems * panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t e = item / panels, k0 = (item % panels) * kPanelVecs * kVec;
      const int64_t vecs = std::min<int64_t>(kPanelVecs, (k - k0) / kVec);
      const float* a = v + e * plane;
      const float* b = u + e * c * k + k0;
      float* out = m + e * n_t * k + k0;
      for (int64_t t = 0; t < n_t; t += kRows) {
        const GemmTile tile = kGemmTiles[std::min<int64_t>(kRows, n_t - t) - 1][vecs - 1];
        for (int64_t i = 0; i < c; i += kDepth)
          tile(a + t * c + i, c, b + i * k, k, out + t * k, k, std::min<int64_t>(kDepth, c - i), i > 0);
      }
    }
  });
}

#else
bool gemm36_runs_here() { return false; }
void gemm36(const float*, int64_t, const float*, float*, int64_t, int64_t, int64_t) {}
#endif

// The calling thread's workspace (input and product planes of one chunk), kept between calls: freshly mapped
// pages of a new allocation on every call would cost more than the transforms.
float* workspace(int64_t floats) {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<float, Free> buffer;
  thread_local int64_t capacity = 0;
  if (capacity < floats) {
    buffer.reset();
    capacity = 0;
    void* p = nullptr;
    TORCH_CHECK(posix_memalign(&p, 64, static_cast<size_t>(floats) * sizeof(float)) == 0,
                "winograd3x3: could not allocate a workspace of ", floats * sizeof(float), " bytes");
    buffer.reset(static_cast<float*>(p));
    capacity = floats;
  }
  return buffer.get();
}

void check_args(const Tensor& x, const Tensor& u, const Tensor& bias, const std::optional<Tensor>& residual) {
  TORCH_CHECK(x.device().is_cpu() && u.device().is_cpu() && bias.device().is_cpu(),
              "winograd3x3: x, u and bias must be CPU tensors, got ", x.device(), ", ", u.device(), ", ", bias.device());
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat, "winograd3x3: x must be a 4-d float32 tensor (N, C, H, W), got ",
              x.dim(), "-d ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "winograd3x3: x must be channels_last contiguous, got strides ", x.strides());
  const int64_t c = x.size(1);
  TORCH_CHECK(u.dim() == 3 && u.size(0) == kElems && u.size(1) == c && u.scalar_type() == at::kFloat &&
                  u.is_contiguous(),
              "winograd3x3: u must be the contiguous float32 transformed weight [36, C=", c,
              ", K] (ops.winograd_weight), got ", u.scalar_type(), " ", u.sizes(), " strides ", u.strides());
  const int64_t k = u.size(2);
  TORCH_CHECK(c % kVec == 0 && k % kVec == 0 && c > 0 && k > 0,
              "winograd3x3: the input and output channels must be positive multiples of 16, got C=", c, ", K=", k);
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == k && bias.scalar_type() == at::kFloat,
              "winograd3x3: bias must be a float32 vector of the ", k, " output channels, got ", bias.scalar_type(), " ",
              bias.sizes());
  if (residual.has_value()) {
    const Tensor& r = *residual;
    const std::vector<int64_t> shape{x.size(0), k, x.size(2), x.size(3)};
    TORCH_CHECK(r.device().is_cpu() && r.scalar_type() == at::kFloat && r.sizes() == at::IntArrayRef(shape) &&
                    r.is_contiguous(at::MemoryFormat::ChannelsLast),
                "winograd3x3: residual must be a channels_last float32 CPU tensor of the output's shape ", shape,
                ", got ", r.scalar_type(), " ", r.sizes(), " strides ", r.strides(), " on ", r.device());
  }
}

Tensor winograd3x3_cpu(const Tensor& x, const Tensor& u, const Tensor& bias, const std::optional<Tensor>& residual,
                       bool relu) {
  check_args(x, u, bias, residual);
  const Geometry g{x.size(0), x.size(2), x.size(3), x.size(1), u.size(2), (x.size(2) + kTile - 1) / kTile,
                   (x.size(3) + kTile - 1) / kTile};
  Tensor y = at::empty({g.n, g.k, g.h, g.w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  const Tensor b = bias.contiguous();
  const float* xp = x.const_data_ptr<float>();
  const float* bp = b.const_data_ptr<float>();
  const float* rp = residual.has_value() ? residual->const_data_ptr<float>() : nullptr;
  float* yp = y.mutable_data_ptr<float>();

  const int64_t tiles = g.tiles();
  const int64_t per_tile = kElems * (g.c + g.k) * static_cast<int64_t>(sizeof(float));
  // Each chunk's GEMMs read all of u: a small u (layers 1-2) is reread per chunk of tiles that stay in cache, a
  // large one is read once for as many tiles as the workspace bound allows. Measured on a 2-core AVX-512 machine
  // (resnet50's 3x3 convs, batch 1, 8 and 32): 4 MiB chunks 1.1-1.6x faster than 16-64 MiB ones where u is
  // smaller than 4 MiB, 1.4x slower where it is larger.
  const int64_t u_bytes = u.numel() * static_cast<int64_t>(sizeof(float));
  const int64_t chunk_bytes = u_bytes < kSmallChunkBytes ? kSmallChunkBytes : kLargeChunkBytes;
  const int64_t chunk = std::max<int64_t>(1, std::min(tiles, chunk_bytes / per_tile));
  const int64_t v_plane_max = chunk * g.c + kPlanePad;
  float* v = workspace(kElems * v_plane_max + kElems * chunk * g.k);
  float* m = v + kElems * v_plane_max;
  const int64_t grain = std::max<int64_t>(1, 2048 / g.c);
  for (int64_t t0 = 0; t0 < tiles; t0 += chunk) {
    const int64_t n_t = std::min(chunk, tiles - t0);
    const int64_t plane = n_t * g.c + kPlanePad;
    at::parallel_for(t0, t0 + n_t, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t)
        for (int64_t c0 = 0; c0 < g.c; c0 += kVec) input_tile(xp, v, g, plane, t, t0, c0);
    });
    if (gemm36_runs_here()) {
      gemm36(v, plane, u.const_data_ptr<float>(), m, n_t, g.c, g.k);
    } else {
      const Tensor vt = at::from_blob(v, {kElems, n_t, g.c}, {plane, g.c, 1}, x.options());
      Tensor mt = at::from_blob(m, {kElems, n_t, g.k}, x.options());
      at::bmm_out(mt, vt, u);
    }
    at::parallel_for(t0, t0 + n_t, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t)
        for (int64_t k0 = 0; k0 < g.k; k0 += kVec) output_tile(m, bp, rp, yp, g, n_t, t, t0, k0, relu);
    });
  }
  return y;
}

Tensor winograd_weight_cpu(const Tensor& w) {
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kFloat && w.dim() == 4 && w.size(2) == 3 &&
                  w.size(3) == 3,
              "winograd_weight: w must be a float32 CPU weight [K, C, 3, 3], got ", w.scalar_type(), " ", w.sizes(),
              " on ", w.device());
  const int64_t k_out = w.size(0), c_in = w.size(1);
  Tensor u = at::empty({kElems, c_in, k_out}, w.options().memory_format(at::MemoryFormat::Contiguous));
  if (u.numel() == 0) return u;
  // [C, K, 3, 3]: read in place, the 16 filters of a block lie 18 KiB apart (C = 512) and every input channel
  // walks all K of them, 13 ms for a 512x512 weight (TLB misses); transposed first, 1.3 ms.
  const Tensor wc = w.transpose(0, 1).contiguous();
  const float* wp = wc.const_data_ptr<float>();
  float* up = u.mutable_data_ptr<float>();
  at::parallel_for(0, c_in, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      for (int64_t k0 = 0; k0 < k_out; k0 += kVec) weight_block(wp, up, c_in, k_out, c, k0);
  });
  return u;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(resnet_ext, m) {
  // y = relu?(conv3x3(x, w, stride 1, padding 1) + bias (+ residual)) by Winograd F(4x4, 3x3), with u the
  // transformed weight of ops.winograd_weight. CPU, float32, channels_last; the flat CPU forward's 3x3 units.
  m.def("winograd3x3(Tensor x, Tensor u, Tensor bias, Tensor? residual, bool relu) -> Tensor");
  // u = G w G^T, [36, C, K]: the transformed weight winograd3x3 takes.
  m.def("winograd_weight(Tensor w) -> Tensor");
}

TORCH_LIBRARY_IMPL(resnet_ext, CPU, m) {
  m.impl("winograd3x3", &winograd3x3_cpu);
  m.impl("winograd_weight", &winograd_weight_cpu);
}
