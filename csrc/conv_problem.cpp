#include "conv_problem.h"

#include <limits>

namespace resnet_ext {

const char* scalar_kind_name(ScalarKind k) {
  switch (k) {
    case ScalarKind::Float32: return "float32";
    case ScalarKind::Float16: return "float16";
    case ScalarKind::BFloat16: return "bfloat16";
    case ScalarKind::Float64: return "float64";
    default: return "other";
  }
}

bool ConvProblem::compute_output_size() {
  P = (H + 2 * pad_h - dil_h * (R - 1) - 1) / stride_h + 1;
  Q = (W + 2 * pad_w - dil_w * (S - 1) - 1) / stride_w + 1;
  return P > 0 && Q > 0;
}

// Built without iostreams: on the H100 image, std::ostringstream inside this library crashed (a libstdc++
// locale facet mismatch), and this string is the autotuner's cache key, built on every tuned call.
std::string ConvProblem::to_string() const {
  using std::to_string;
  return "N=" + to_string(N) + " H=" + to_string(H) + " W=" + to_string(W) + " C=" + to_string(C) +
         " K=" + to_string(K) + " R=" + to_string(R) + " S=" + to_string(S) + " stride=" + to_string(stride_h) +
         "x" + to_string(stride_w) + " pad=" + to_string(pad_h) + "x" + to_string(pad_w) +
         " dil=" + to_string(dil_h) + "x" + to_string(dil_w) + " groups=" + to_string(groups) +
         " dtype=" + scalar_kind_name(dtype) + (has_residual ? " +residual" : "") + (relu ? " +relu" : "");
}

std::string common_fallback_reason(const ConvProblem& p) {
  if (p.dtype == ScalarKind::Float64 || p.dtype == ScalarKind::Other)
    return std::string("dtype ") + scalar_kind_name(p.dtype) + " has no fused kernel";
  if (p.dtype == ScalarKind::Float32 && !p.allow_tf32)
    return "float32 with torch.backends.cudnn.allow_tf32=False needs full fp32 precision (fallback path)";
  if (p.groups != 1) return "grouped convolution (groups=" + std::to_string(p.groups) + ") runs the stock path";
  if (p.N == 0) return "empty batch";
  if (!p.x_channels_last) return "x is not channels_last (NHWC) contiguous";
  if (p.has_residual && !p.residual_channels_last) return "residual is not channels_last (NHWC) contiguous";
  // CUTLASS 2.x conv iterators index with 32-bit offsets.
  if (p.max_tensor_bytes >= (int64_t(1) << 31)) return "a tensor is 2 GiB or larger (32-bit indexing)";
  return "";
}

KernelChoice select_conv_kernel(const ConvProblem& p, const std::vector<FusedKernelInfo>& registry) {
  if (registry.empty()) return {"", "no fused CUDA kernels are compiled into this build"};
  std::string common = common_fallback_reason(p);
  if (!common.empty()) return {"", common};
  // Measured on an H100 (benchmarks/results/2026-11-28-h100-run3.md): cuDNN's fused conv+bias+ReLU(+add) beat the
  // sm80 CUTLASS kernels on every ReLU layer of ResNet-50 (ours: 0.5-1.0x), while ours won on the ReLU-free
  // downsample convs (1.2-3.0x). Until Hopper (wgmma) kernels exist, ReLU layers go to cuDNN on sm_90+.
  if (p.sm >= 90 && p.relu && p.cudnn_fused_ok && p.prefer_cudnn)
    return {"", "sm_" + std::to_string(p.sm) + ": cuDNN's fused conv+bias+ReLU is faster than the sm80 CUTLASS "
                "kernels for ReLU layers on Hopper (resnet_ext.prefer_cudnn(False) forces CUTLASS)"};
  const FusedKernelInfo* best = nullptr;
  int best_score = std::numeric_limits<int>::min();
  std::string rejections;
  for (const auto& k : registry) {
    if (k.dtype != p.dtype) continue;
    if (p.sm != 0 && (p.sm < k.min_sm || p.sm > k.max_sm)) continue;
    std::string why = k.can_implement(p);
    if (!why.empty()) {
      if (rejections.size() < 400) rejections += (rejections.empty() ? "" : "; ") + k.name + ": " + why;
      continue;
    }
    int s = k.score(p);
    if (s > best_score) {
      best = &k;
      best_score = s;
    }
  }
  if (best) return {best->name, "heuristic choice among kernels that can implement the problem"};
  if (rejections.empty())
    return {"", std::string("no fused kernel for dtype ") + scalar_kind_name(p.dtype) + " on sm_" +
                    std::to_string(p.sm)};
  return {"", "no fused kernel accepts the problem (" + rejections + ")"};
}

KernelChoice select_conv_kernel(const ConvProblem& p) { return select_conv_kernel(p, fused_kernel_registry()); }

}  // namespace resnet_ext
