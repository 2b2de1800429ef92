// The fused ResNet stem (#24 item 1; unverified until gpu_check.sh --only stempool): conv 7x7/2 (3 channels) +
// fp32 scale/shift + ReLU + max pool 3x3/2, one persistent CTA loop over tiles of 8x8 pooled outputs. Per tile the
// 17x17 conv outputs the pool reads (the overlap recomputed: 289 rows for 256 pooled pixels' worth) are an implicit
// GEMM [289 -> 304 rows] x [K = 160] x [64] on the tensor cores (WMMA 16x16x16, fp32 accumulate): the 39x39x3 input
// patch sits in shared memory and each 32-deep K chunk of the A operand is gathered from it, 8 taps (one 16-byte
// store) per step through a table of the taps' patch offsets (the index arithmetic once per CTA, not per element);
// the weight and that table stay in shared memory for the CTA's whole loop. The accumulators go to shared memory,
// and the pool reads them there with scale, shift and ReLU applied: the 112x112x64 conv map never reaches global
// memory.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <string>

#include "experimental/stem_pool_kernels.h"
#include "kernels/float_convert.cuh"

namespace resnet_ext {
namespace stem_pool {
namespace {

using namespace nvcuda;

constexpr int kTile = 8;                      // pooled outputs per tile side
constexpr int kConv = 2 * kTile + 1;          // conv outputs per tile side the pool reads: 17
constexpr int kRows = kConv * kConv;          // GEMM rows: 289
constexpr int kRowsPad = 304;                 // 19 tiles of 16
constexpr int kMTiles = kRowsPad / 16;
constexpr int kIn = 2 * (kConv - 1) + 7;      // input patch side: 39
constexpr int kTaps = 7 * 7 * 3;              // 147
constexpr int kChunk = 32;                    // K per gathered A chunk
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMPerWarp = (kMTiles + kWarps - 1) / kWarps;  // 3
constexpr int kNTiles = kChannels / 16;       // 4
// Shared-memory row pitches padded off multiples of 128 bytes, so that the rows a warp reads or writes at once fall
// in different banks: the A chunk (80 B a row), the weight (144 B), the fp32 accumulators (272 B).
constexpr int kChunkLd = kChunk + 8;
constexpr int kWeightLd = kChannels + 8;
constexpr int kAccLd = kChannels + 4;

// Shared memory: the GEMM phase (patch, weight, A chunk) and the pool phase (fp32 accumulators) share the region,
// but the weight stays put, so it sits after the larger of the two.
constexpr int kPatchBytes = ((kIn * kIn * 3 * 2 + 127) / 128) * 128;
constexpr int kChunkBytes = kRowsPad * kChunkLd * 2;
constexpr int kAccBytes = kRowsPad * kAccLd * 4;
constexpr int kPhaseBytes = (kPatchBytes + kChunkBytes > kAccBytes) ? kPatchBytes + kChunkBytes : kAccBytes;
constexpr int kWeightBytes = kKPad * kWeightLd * 2;
constexpr int kSmemBytes = kPhaseBytes + kWeightBytes + kKPad * 2;  // + the taps' offsets (int16)

template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    stem_pool_kernel(const T* __restrict__ x, const T* __restrict__ weight, const float* __restrict__ scale,
                     const float* __restrict__ shift, T* __restrict__ y, Problem p) {
  extern __shared__ __align__(128) unsigned char smem[];
  T* patch = reinterpret_cast<T*>(smem);                      // [kIn][kIn][3]
  T* chunk = reinterpret_cast<T*>(smem + kPatchBytes);        // [kRowsPad][kChunkLd]
  float* acc_s = reinterpret_cast<float*>(smem);              // [kRowsPad][kAccLd], after the GEMM
  T* w_s = reinterpret_cast<T*>(smem + kPhaseBytes);          // [kKPad][kWeightLd]
  int16_t* tap_at = reinterpret_cast<int16_t*>(smem + kPhaseBytes + kWeightBytes);  // [kKPad]
  const int tid = threadIdx.x, warp = tid / 32;

  for (int i = tid; i < kKPad * kChannels / 8; i += kThreads)  // the weight, once per CTA (16-byte copies)
    *reinterpret_cast<uint4*>(w_s + i / 8 * kWeightLd + i % 8 * 8) = reinterpret_cast<const uint4*>(weight)[i];
  for (int k = tid; k < kKPad; k += kThreads) {  // tap k = (r * 7 + s) * 3 + c sits at patch[r][s][c] from a row's base
    const int tap = k / 3, c = k % 3;
    tap_at[k] = k < kTaps ? int16_t(((tap / 7) * kIn + tap % 7) * 3 + c) : int16_t(0);
  }

  const int64_t tiles_w = (p.PW + kTile - 1) / kTile, tiles_h = (p.PH + kTile - 1) / kTile;
  const int64_t tiles = p.N * tiles_h * tiles_w;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t n = tile / (tiles_h * tiles_w);
    const int64_t ph0 = (tile / tiles_w) % tiles_h * kTile, pw0 = tile % tiles_w * kTile;
    const int64_t oh0 = 2 * ph0 - 1, ow0 = 2 * pw0 - 1;  // the tile's first conv output (the pool's padding)
    const int64_t ih0 = 2 * oh0 - 3, iw0 = 2 * ow0 - 3;  // and its first input pixel (the conv's padding)
    __syncthreads();  // the previous tile's pool has read acc_s (and the weight copy is done)
    for (int i = tid; i < kIn * kIn * 3; i += kThreads) {
      const int c = i % 3, col = i / 3 % kIn, row = i / 3 / kIn;
      const int64_t ih = ih0 + row, iw = iw0 + col;
      patch[i] = (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W) ? x[((n * p.H + ih) * p.W + iw) * 3 + c]
                                                              : from_float<T>(0.f);
    }
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kMPerWarp][kNTiles];
#pragma unroll
    for (int m = 0; m < kMPerWarp; ++m)
#pragma unroll
      for (int t = 0; t < kNTiles; ++t) wmma::fill_fragment(acc[m][t], 0.f);
    for (int k0 = 0; k0 < kKPad; k0 += kChunk) {
      __syncthreads();  // the patch is in; the previous chunk is consumed
      for (int i = tid; i < kRowsPad * (kChunk / 8); i += kThreads) {  // A[row][k .. k + 8) from the patch
        const int row = i / (kChunk / 8), k = k0 + i % (kChunk / 8) * 8;
        alignas(16) T v[8];
        if (row < kRows) {
          const T* base = patch + (2 * (row / kConv) * kIn + 2 * (row % kConv)) * 3;
          alignas(16) int16_t at[8];
          *reinterpret_cast<uint4*>(at) = *reinterpret_cast<const uint4*>(tap_at + k);
#pragma unroll
          for (int q = 0; q < 8; ++q) v[q] = k + q < kTaps ? base[at[q]] : from_float<T>(0.f);
        } else {
#pragma unroll
          for (int q = 0; q < 8; ++q) v[q] = from_float<T>(0.f);
        }
        *reinterpret_cast<uint4*>(chunk + row * kChunkLd + (k - k0)) = *reinterpret_cast<const uint4*>(v);
      }
      __syncthreads();
#pragma unroll
      for (int ks = 0; ks < kChunk; ks += 16) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b[kNTiles];
#pragma unroll
        for (int t = 0; t < kNTiles; ++t) wmma::load_matrix_sync(b[t], w_s + (k0 + ks) * kWeightLd + t * 16, kWeightLd);
#pragma unroll
        for (int m = 0; m < kMPerWarp; ++m) {
          const int mt = warp + m * kWarps;
          if (mt >= kMTiles) break;
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
          wmma::load_matrix_sync(a, chunk + mt * 16 * kChunkLd + ks, kChunkLd);
#pragma unroll
          for (int t = 0; t < kNTiles; ++t) wmma::mma_sync(acc[m][t], a, b[t], acc[m][t]);
        }
      }
    }
    __syncthreads();  // every warp is done with the chunk and the patch: acc_s may overwrite them
#pragma unroll
    for (int m = 0; m < kMPerWarp; ++m) {
      const int mt = warp + m * kWarps;
      if (mt >= kMTiles) break;
#pragma unroll
      for (int t = 0; t < kNTiles; ++t)
        wmma::store_matrix_sync(acc_s + mt * 16 * kAccLd + t * 16, acc[m][t], kAccLd, wmma::mem_row_major);
    }
    __syncthreads();
    // The pool: a thread per (pooled pixel, 8 channels); BN and ReLU on each conv output it reads; NaN wins.
    for (int i = tid; i < kTile * kTile * (kChannels / 8); i += kThreads) {
      const int g = i % (kChannels / 8), px = i / (kChannels / 8), pi = px / kTile, pj = px % kTile;
      const int64_t ph = ph0 + pi, pw = pw0 + pj;
      if (ph >= p.PH || pw >= p.PW) continue;
      float best[8], sc[8], sh[8];
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        best[q] = -__int_as_float(0x7f800000);  // -inf
        sc[q] = scale[g * 8 + q], sh[q] = shift[g * 8 + q];
      }
      for (int di = 0; di < 3; ++di)
        for (int dj = 0; dj < 3; ++dj) {
          const int ci = 2 * pi + di, cj = 2 * pj + dj;
          const int64_t oh = oh0 + ci, ow = ow0 + cj;
          if (oh < 0 || oh >= p.OH || ow < 0 || ow >= p.OW) continue;  // the pool's padding
          const float* row = acc_s + (ci * kConv + cj) * kAccLd + g * 8;
#pragma unroll
          for (int q = 0; q < 8; ++q) {
            float v = row[q] * sc[q] + sh[q];
            v = v < 0.f ? 0.f : v;                      // ReLU that keeps NaN
            best[q] = (v > best[q] || v != v) ? v : best[q];
          }
        }
      alignas(16) T out[8];
#pragma unroll
      for (int q = 0; q < 8; ++q) out[q] = from_float<T>(best[q]);
      *reinterpret_cast<uint4*>(y + ((n * p.PH + ph) * p.PW + pw) * kChannels + g * 8) =
          *reinterpret_cast<const uint4*>(out);
    }
  }
}

template <typename T>
std::string launch(const Problem& p, const void* x, const void* w, const float* scale, const float* shift, void* y,
                   int sm_count, cudaStream_t stream) {
  auto kernel = stem_pool_kernel<T>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  int per_sm = 0;  // persistent: as many CTAs as fit at once (registers and shared memory allow one or two an SM)
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, kSmemBytes);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const int64_t tiles = p.N * ((p.PH + kTile - 1) / kTile) * ((p.PW + kTile - 1) / kTile);
  const int64_t fit = int64_t(sm_count) * (per_sm > 0 ? per_sm : 1);
  const int64_t grid = tiles < fit ? tiles : fit;
  kernel<<<unsigned(grid), kThreads, kSmemBytes, stream>>>(static_cast<const T*>(x), static_cast<const T*>(w), scale,
                                                           shift, static_cast<T*>(y), p);
  err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace

std::string forward(KernelDType t, const Problem& p, const void* x, const void* weight, const float* scale,
                    const float* shift, void* y, int sm_count, void* stream) {
  if (p.N == 0 || p.PH == 0 || p.PW == 0) return "";
  auto s = static_cast<cudaStream_t>(stream);
  switch (t) {
    case KernelDType::BFloat16: return launch<__nv_bfloat16>(p, x, weight, scale, shift, y, sm_count, s);
    case KernelDType::Float16: return launch<__half>(p, x, weight, scale, shift, y, sm_count, s);
    default: return "stem_pool: the kernel takes float16 or bfloat16";
  }
}

}  // namespace stem_pool
}  // namespace resnet_ext
