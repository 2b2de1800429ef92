// Hopper (sm_90a) GEMMs for ResNet's 1x1 stride-1 convolutions, which in NHWC are plain GEMMs:
//
//   D[m, n] = act( scale[n] * sum_k A[m, k] * B[n, k]  +  shift[n]  +  bias[n]  (+ R[m, n]) )
//                                                                        act = ReLU or identity
//
//   A    [M, K] row-major, row stride lda   the NHWC activation: M = N*H*W rows of K = C channels
//   B    [N, K] row-major, row stride ldb   the folded 1x1 weight [K_out, C] (OHWI / KRSC, channels_last), i.e. the
//                                           GEMM's B operand column-major
//   bias [N]                                per output channel (per GEMM column); null: no bias
//   scale, shift [N]  fp32                  per output channel; null: 1 and 0. With the weight unfolded, BN's
//                                           scale and shift applied to the fp32 sum (#24: folding the scale into
//                                           16-bit weights costs 1.3-1.6x torchvision's 16-bit error, the fp32
//                                           epilogue 0.9-1.1x; benchmarks/results/2026-12-03-fold-precision)
//   R    [M, N] row-major, row stride ldr   optional residual; null: none (then it is never read)
//   D    [M, N] row-major, row stride ldd   the NHWC output
//
// fp16 or bf16 in and out (one dtype for A, B, bias, R and D; scale and shift fp32), fp32 accumulation and
// epilogue arithmetic. The ReLU
// propagates NaN (as torch.relu does). The kernels are CUTLASS 3 persistent TMA warp-specialized GEMMs (cooperative
// or ping-pong, built by the CollectiveBuilder) with an epilogue visitor tree; ReLU and the residual are runtime
// switches of one kernel (no residual: the TMA loads of R are skipped, not just multiplied by zero).
//
// This header is plain C++ (no CUDA, no torch): the configuration table and the host-side checks below are
// usable and testable without a GPU or the CUDA toolkit. gemm_sm90.cu implements the functions declared at the end.
// Nothing in the API throws: every function is noexcept and reports through Status (and a static reason string).
#pragma once

#include <cstddef>
#include <cstdint>

namespace resnet_ext {
namespace gemm_sm90 {

enum class DType : int { Float16 = 0, BFloat16 = 1 };
enum class Schedule : int { Cooperative = 0, Pingpong = 1 };

enum class Status : int {
  kSuccess = 0,
  kInvalidProblem,      // sizes, leading dimensions, missing pointers, overlapping output
  kMisaligned,          // a pointer or leading dimension is not 16-byte aligned
  kUnknownConfig,       // index out of range, or a dtype other than the config's
  kUnsupportedDevice,   // the current device is not sm_90, or this binary carries no sm_90 image of the kernel
  kWorkspaceTooSmall,
  kCutlassError,        // CUTLASS's can_implement / initialize / run failed
  kCudaError,           // a CUDA runtime call or the launch failed
  kInternalError,       // anything else (an exception caught at the API boundary)
};

inline const char* status_string(Status s) noexcept {
  switch (s) {
    case Status::kSuccess: return "success";
    case Status::kInvalidProblem: return "invalid problem";
    case Status::kMisaligned: return "misaligned operand";
    case Status::kUnknownConfig: return "unknown configuration";
    case Status::kUnsupportedDevice: return "unsupported device";
    case Status::kWorkspaceTooSmall: return "workspace too small";
    case Status::kCutlassError: return "CUTLASS error";
    case Status::kCudaError: return "CUDA error";
    case Status::kInternalError: return "internal error";
  }
  return "unknown status";
}

struct Problem {
  DType dtype = DType::BFloat16;
  int64_t m = 0, n = 0, k = 0;     // GEMM sizes: rows (N*H*W), output channels, input channels
  const void* a = nullptr;          // [m, k]
  int64_t lda = 0;                  // elements between rows of A (>= k)
  const void* b = nullptr;          // [n, k]
  int64_t ldb = 0;                  // (>= k)
  const void* bias = nullptr;       // [n] or null
  const float* scale = nullptr;     // [n] fp32 or null (1)
  const float* shift = nullptr;     // [n] fp32 or null (0)
  const void* residual = nullptr;   // [m, n] or null
  int64_t ldr = 0;                  // (>= n when residual is given)
  void* d = nullptr;                // [m, n]
  int64_t ldd = 0;                  // (>= n)
  bool relu = true;
  int device = 0;                   // the CUDA device the launch runs on (the caller makes it current)
  int sm_count = 0;                 // its multiprocessor count; 0: queried at launch
};

// One compiled kernel. The table below is the single source of truth: gemm_sm90.cu instantiates each entry from
// these very fields, and static_asserts that the pipeline depth CUTLASS derives equals `stages`.
struct Config {
  const char* name;  // sm90_gemm_<dtype>_<tile M>x<N>x<K>_c<cluster M>x<N>_<coop|pingpong>_<stages>st_a<alignment>
  DType dtype;
  int tile_m, tile_n, tile_k;
  int cluster_m, cluster_n;
  Schedule schedule;
  int stages;
  int alignment;  // elements (16 bytes): every leading dimension and A/B/R/D pointer
};

// Chosen for ResNet's 1x1 layers (M = batch*56*56 .. batch*7*7; C, K_out in {64, ..., 2048}):
//   128x256 coop, 2x1 cluster: large M with K_out >= 256 (B multicast to the two CTAs of a cluster); 3 stages
//                              since the epilogue's fp32 scale and shift rows took the 2 KB the 4th one needed
//                              (230,400 of 232,448 bytes of shared memory before)
//   128x128 coop, 2x1 cluster: the general case
//   64x128 ping-pong, no cluster: small M (batch 1, layer 3/4), where bigger tiles leave most SMs idle
inline constexpr Config kConfigs[] = {
    {"sm90_gemm_bf16_128x256x64_c2x1_coop_3st_a8", DType::BFloat16, 128, 256, 64, 2, 1, Schedule::Cooperative, 3, 8},
    {"sm90_gemm_bf16_128x128x64_c2x1_coop_6st_a8", DType::BFloat16, 128, 128, 64, 2, 1, Schedule::Cooperative, 6, 8},
    {"sm90_gemm_bf16_64x128x64_c1x1_pingpong_8st_a8", DType::BFloat16, 64, 128, 64, 1, 1, Schedule::Pingpong, 8, 8},
    {"sm90_gemm_f16_128x256x64_c2x1_coop_3st_a8", DType::Float16, 128, 256, 64, 2, 1, Schedule::Cooperative, 3, 8},
    {"sm90_gemm_f16_128x128x64_c2x1_coop_6st_a8", DType::Float16, 128, 128, 64, 2, 1, Schedule::Cooperative, 6, 8},
    {"sm90_gemm_f16_64x128x64_c1x1_pingpong_8st_a8", DType::Float16, 64, 128, 64, 1, 1, Schedule::Pingpong, 8, 8},
};
inline constexpr int kNumConfigs = int(sizeof(kConfigs) / sizeof(kConfigs[0]));

inline const Config* config(int index) noexcept {
  return index >= 0 && index < kNumConfigs ? &kConfigs[index] : nullptr;
}

inline bool same_name(const char* x, const char* y) noexcept {
  if (!x || !y) return false;
  while (*x && *x == *y) ++x, ++y;
  return *x == *y;
}

// Index of the configuration called `name`, or -1.
inline int find_config(const char* name) noexcept {
  for (int i = 0; i < kNumConfigs; ++i)
    if (same_name(kConfigs[i].name, name)) return i;
  return -1;
}

namespace detail {

constexpr int64_t kElementBytes = 2;
constexpr int64_t kMaxInt32 = 2147483647;

// Bytes from the first to one past the last element of a [rows, cols] row-major matrix with row stride ld.
inline uint64_t extent_bytes(int64_t rows, int64_t cols, int64_t ld) noexcept {
  return uint64_t(((rows - 1) * ld + cols) * kElementBytes);
}

inline bool overlap(const void* p, uint64_t p_bytes, const void* q, uint64_t q_bytes) noexcept {
  if (!p || !q) return false;
  const uint64_t a = uint64_t(reinterpret_cast<uintptr_t>(p)), b = uint64_t(reinterpret_cast<uintptr_t>(q));
  return a < b + q_bytes && b < a + p_bytes;
}

}  // namespace detail

// The host-side part of can_implement: everything except CUTLASS's own check (which gemm_sm90.cu adds). Returns
// Status::kSuccess, or the failure with a static reason in *reason. Needs no CUDA.
inline Status check_problem(const Config& c, const Problem& p, const char** reason = nullptr) noexcept {
  auto fail = [&](Status s, const char* why) {
    if (reason) *reason = why;
    return s;
  };
  if (reason) *reason = "";
  if (p.dtype != c.dtype) return fail(Status::kUnknownConfig, "the problem's dtype is not the kernel's");
  if (p.m <= 0 || p.n <= 0 || p.k <= 0) return fail(Status::kInvalidProblem, "m, n and k must be positive");
  if (p.m > detail::kMaxInt32 || p.n > detail::kMaxInt32 || p.k > detail::kMaxInt32)
    return fail(Status::kInvalidProblem, "m, n and k must fit in 32 bits");
  if (p.k % c.alignment || p.n % c.alignment)
    return fail(Status::kMisaligned, "k (input channels) and n (output channels) must be multiples of 8");
  if (!p.a || !p.b || !p.d) return fail(Status::kInvalidProblem, "a, b and d must be given");
  if (p.lda < p.k || p.ldb < p.k || p.ldd < p.n || (p.residual && p.ldr < p.n))
    return fail(Status::kInvalidProblem, "a leading dimension is smaller than its row (lda, ldb >= k; ldd, ldr >= n)");
  // TMA: 16-byte aligned base addresses and row strides, strides below 2^40 bytes.
  if (p.lda % c.alignment || p.ldb % c.alignment || p.ldd % c.alignment || (p.residual && p.ldr % c.alignment))
    return fail(Status::kMisaligned, "leading dimensions must be multiples of 8 elements (16 bytes)");
  const int64_t max_ld = int64_t(1) << 38;  // elements: 2^39 bytes, under TMA's 2^40 stride limit
  if (p.lda >= max_ld || p.ldb >= max_ld || p.ldd >= max_ld || (p.residual && p.ldr >= max_ld))
    return fail(Status::kInvalidProblem, "a leading dimension exceeds TMA's stride limit");
  const int64_t align_bytes = c.alignment * detail::kElementBytes;
  auto misaligned = [&](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % uintptr_t(align_bytes) != 0; };
  if (misaligned(p.a) || misaligned(p.b) || misaligned(p.d) || (p.residual && misaligned(p.residual)))
    return fail(Status::kMisaligned, "a, b, residual and d must be 16-byte aligned");
  if (p.bias && reinterpret_cast<uintptr_t>(p.bias) % uintptr_t(detail::kElementBytes))
    return fail(Status::kMisaligned, "bias must be aligned to its element size");
  if ((p.scale && reinterpret_cast<uintptr_t>(p.scale) % alignof(float)) ||
      (p.shift && reinterpret_cast<uintptr_t>(p.shift) % alignof(float)))
    return fail(Status::kMisaligned, "scale and shift must be aligned to 4 bytes");
  // The output must not overlap what the kernel reads (tiles are read and written in no particular order).
  const uint64_t d_bytes = detail::extent_bytes(p.m, p.n, p.ldd);
  if (detail::overlap(p.d, d_bytes, p.a, detail::extent_bytes(p.m, p.k, p.lda)) ||
      detail::overlap(p.d, d_bytes, p.b, detail::extent_bytes(p.n, p.k, p.ldb)) ||
      detail::overlap(p.d, d_bytes, p.bias, uint64_t(p.n * detail::kElementBytes)) ||
      detail::overlap(p.d, d_bytes, p.scale, uint64_t(p.n * sizeof(float))) ||
      detail::overlap(p.d, d_bytes, p.shift, uint64_t(p.n * sizeof(float))) ||
      detail::overlap(p.d, d_bytes, p.residual, p.residual ? detail::extent_bytes(p.m, p.n, p.ldr) : 0))
    return fail(Status::kInvalidProblem, "d overlaps an input");
  return Status::kSuccess;
}

// A rough preference among configurations that can run a problem (higher is better): minus the estimated time in
// arbitrary units, from the tile count, the waves over `sm_count` SMs (132 when unknown) and an assumed relative
// per-SM throughput of each tile shape. An unmeasured model for ordering candidates, not a measurement.
inline int64_t heuristic_score(const Config& c, int64_t m, int64_t n, int64_t k, int sm_count) noexcept {
  if (m <= 0 || n <= 0 || k <= 0) return INT64_MIN;
  const int64_t sms = sm_count > 0 ? sm_count : 132;
  const int64_t cluster = int64_t(c.cluster_m) * c.cluster_n;
  int64_t tiles_m = (m + c.tile_m - 1) / c.tile_m, tiles_n = (n + c.tile_n - 1) / c.tile_n;
  tiles_m = (tiles_m + c.cluster_m - 1) / c.cluster_m * c.cluster_m;  // clusters launch whole
  tiles_n = (tiles_n + c.cluster_n - 1) / c.cluster_n * c.cluster_n;
  const int64_t tiles = tiles_m * tiles_n;
  const int64_t slots = sms / cluster * cluster;  // CTAs resident at once (one per SM)
  const int64_t waves = (tiles + slots - 1) / slots;
  // Relative MMA throughput per SM, percent (larger tiles amortize loads and the epilogue better).
  const int64_t tile_area = int64_t(c.tile_m) * c.tile_n;
  const int64_t efficiency = tile_area >= 128 * 256 ? 100 : tile_area >= 128 * 128 ? 90 : 75;
  // Time of one wave ~ tile MACs / efficiency; k enters every configuration alike but keeps the units honest.
  const int64_t wave_time = tile_area * k / efficiency;
  return -(waves * wave_time);
}

// ---- Implemented in gemm_sm90.cu --------------------------------------------------------------------------------

// check_problem, then CUTLASS's can_implement for the kernel's arguments. No CUDA call.
Status can_implement(int index, const Problem& p, const char** reason = nullptr) noexcept;
// Device workspace the launch needs, in bytes (0 for these kernels today, but call it). No CUDA call.
size_t workspace_size(int index, const Problem& p) noexcept;
// Launches configuration `index` on `stream` (a cudaStream_t) on the current device: can_implement, a check that
// the device is sm_90 and that this binary holds an sm_90 image of the kernel, then CUTLASS's initialize and run.
// `workspace` must hold workspace_size() bytes (may be null when that is 0). Asynchronous; on failure *reason
// names the step (a static string, or the CUDA error's).
Status launch(int index, const Problem& p, void* workspace, size_t workspace_bytes, void* stream,
              const char** reason = nullptr) noexcept;
// Whether this translation unit was compiled with CUTLASS's sm90 kernels enabled (CUTLASS_ARCH_MMA_SM90_SUPPORTED
// on the host side: a CUDA 12+ toolkit); false means every launch fails with kUnsupportedDevice.
bool compiled() noexcept;

}  // namespace gemm_sm90
}  // namespace resnet_ext
