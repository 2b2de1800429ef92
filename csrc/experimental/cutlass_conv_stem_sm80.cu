// Convolutions on fewer than 4 input channels (the ResNet stem: 7x7/2 on 3) as a CUTLASS 2.x implicit GEMM with
// the fixed-channels iterators (sm80 tensor cores; they also run on Hopper), #24 item 1. The generic kernels load
// 16-byte vectors along C, which 3 channels cannot fill (the stem then takes cuDNN or the stock path: 1.71 ms of
// resnet50's 9.0 ms bf16 kernel time at batch 256 on an H200); here x and the weight are first copied into the
// launch's workspace padded to 4 channels with zeros (one 8-byte load per filter tap), then the conv_bn_act
// bias(+ReLU) epilogue runs on the padded problem, whose extra channel adds zeros only. Not verified on a GPU:
// registered with no verified arch (opt-in: force_kernel or the autotuner), experimental build only.
#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cutlass_conv_sm80.cuh"

namespace resnet_ext {
namespace sm80 {
namespace {

constexpr int kPadC = 4;
constexpr size_t kAlign = 256;  // each workspace part starts 256-byte aligned

size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// rows of c values -> rows of kPadC values (zeros after c): one row per thread, one 8-byte store for 16-bit T.
template <typename T>
__global__ void pad_channels(const T* __restrict__ src, T* __restrict__ dst, int64_t rows, int c) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows; i += int64_t(gridDim.x) * blockDim.x) {
    cutlass::AlignedArray<T, kPadC> v;
#pragma unroll
    for (int j = 0; j < kPadC; ++j) v[j] = j < c ? src[i * c + j] : T(0.f);
    *reinterpret_cast<cutlass::AlignedArray<T, kPadC>*>(dst + i * kPadC) = v;
  }
}

template <typename T>
std::string launch_pad(const void* src, void* dst, int64_t rows, int c, cudaStream_t stream) {
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((rows + threads - 1) / threads, int64_t(1) << 20);
  pad_channels<T><<<int(blocks), threads, 0, stream>>>(static_cast<const T*>(src), static_cast<T*>(dst), rows, c);
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? "" : std::string("CUDA: ") + cudaGetErrorString(e);
}

ConvProblem padded(const ConvProblem& p) {
  ConvProblem q = p;
  q.C = kPadC;
  return q;
}

// The padded x, then the padded weight, then CUTLASS's own workspace for the padded problem.
struct WorkspaceLayout {
  size_t x_bytes, w_bytes, total;
  WorkspaceLayout(const ConvProblem& p, size_t element_bytes, size_t cutlass_bytes) {
    x_bytes = round_up(size_t(p.N) * p.H * p.W * kPadC * element_bytes);
    w_bytes = round_up(size_t(p.K) * p.R * p.S * kPadC * element_bytes);
    total = x_bytes + w_bytes + cutlass_bytes;
  }
};

template <typename Element, typename TileT>
struct StemConv {
  using Conv = BiasActConv<Element, TileT, cutlass::conv::IteratorAlgorithm::kFixedChannels, kPadC>;

  static std::string can_implement(const ConvProblem& p) {
    if (p.groups != 1) return "groups != 1";
    if (p.C >= kPadC) return "C=" + std::to_string(p.C) + ": for fewer than 4 input channels only";
    if (p.K % 8 != 0) return "K=" + std::to_string(p.K) + " is not a multiple of 8";
    if (p.has_residual) return "has a residual";
    ConvLaunchArgs a;
    a.problem = padded(p);
    auto s = Conv::Op::can_implement(Conv::arguments(a));
    return s == cutlass::Status::kSuccess ? "" : "CUTLASS: " + status_string(s);
  }

  static size_t cutlass_workspace(const ConvProblem& p) {
    ConvLaunchArgs a;
    a.problem = padded(p);
    return Conv::Op::get_workspace_size(Conv::arguments(a));
  }

  static size_t workspace_bytes(const ConvProblem& p) {
    return WorkspaceLayout(p, sizeof(Element), cutlass_workspace(p)).total;
  }

  static std::string launch(const ConvLaunchArgs& a) {
    const ConvProblem& p = a.problem;
    const WorkspaceLayout ws(p, sizeof(Element), cutlass_workspace(p));
    if (a.workspace_bytes < ws.total || a.workspace == nullptr)
      return "workspace of " + std::to_string(a.workspace_bytes) + " bytes, the kernel needs " +
             std::to_string(ws.total);
    auto stream = static_cast<cudaStream_t>(a.stream);
    char* base = static_cast<char*>(a.workspace);
    ConvLaunchArgs q = a;
    q.problem = padded(p);
    q.x = base;
    q.w = base + ws.x_bytes;
    q.workspace = base + ws.x_bytes + ws.w_bytes;
    q.workspace_bytes = a.workspace_bytes - ws.x_bytes - ws.w_bytes;
    std::string why = launch_pad<Element>(a.x, const_cast<void*>(q.x), p.N * p.H * p.W, int(p.C), stream);
    if (why.empty()) why = launch_pad<Element>(a.w, const_cast<void*>(q.w), p.K * p.R * p.S, int(p.C), stream);
    return why.empty() ? ConvRunner<Conv>::launch(q) : why;
  }
};

template <typename Element, typename TileT>
FusedKernelInfo stem_info(const char* dtype_tag, ScalarKind dtype) {
  using Stem = StemConv<Element, TileT>;
  FusedKernelInfo k;
  k.name = kernel_name("sm80c4", dtype_tag, Stem::Conv::kEpilogue, TileT::kM, TileT::kN, TileT::kK, TileT::kStages,
                       kPadC);
  k.dtype = dtype;
  k.min_sm = 80;
  k.max_sm = 1000;
  k.image = {80, false};
  k.verified_sms = {};  // opt-in until gpu_check's stem tests and hopper_layers' stem row pass on a GPU
  k.can_implement = &Stem::can_implement;
  k.score = [](const ConvProblem&) { return 0; };
  k.workspace_bytes = &Stem::workspace_bytes;
  k.launch = &Stem::launch;
  return k;
}

// The stem's GEMM: M = N*P*Q (3.2M rows at batch 256), N = K = 64, K = 7*7*4 = 196 (padded to the tile's K).
using StemTileK64 = Tile<128, 64, 64, 64, 32, 64, 3>;  // 4 k-iterations (256: 31% of it padding)
using StemTileK32 = Tile<128, 64, 32, 64, 32, 32, 4>;  // 7 k-iterations (224: 13% padding)

}  // namespace
}  // namespace sm80

void append_cutlass_stem_sm80_kernels(std::vector<FusedKernelInfo>& out) {
  using namespace sm80;
  out.push_back(stem_info<cutlass::bfloat16_t, StemTileK64>("bf16", ScalarKind::BFloat16));
  out.push_back(stem_info<cutlass::bfloat16_t, StemTileK32>("bf16", ScalarKind::BFloat16));
  out.push_back(stem_info<cutlass::half_t, StemTileK64>("f16", ScalarKind::Float16));
  out.push_back(stem_info<cutlass::half_t, StemTileK32>("f16", ScalarKind::Float16));
}

}  // namespace resnet_ext
