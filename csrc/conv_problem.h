// A convolution problem described without ATen, so the kernel selector can be unit-tested in plain C++
// (tests/cpp) and shared by the CUDA dispatcher, `explain()` and the autotuner.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace resnet_ext {

enum class ScalarKind { Float32, Float16, BFloat16, Float64, Other };

const char* scalar_kind_name(ScalarKind k);

struct ConvProblem {
  int64_t N = 0, H = 0, W = 0, C = 0;  // input, NHWC
  int64_t K = 0, R = 0, S = 0;         // filter: K output channels, R x S taps
  int64_t P = 0, Q = 0;                // output spatial size
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;
  int64_t groups = 1;
  ScalarKind dtype = ScalarKind::Float32;
  bool has_bias = true;
  bool has_residual = false;
  bool relu = true;
  // Layout / placement facts the caller knows about the actual tensors.
  bool x_channels_last = true;         // x is NHWC-dense
  bool residual_channels_last = true;  // residual (if any) is NHWC-dense
  bool allow_tf32 = true;              // torch.backends.cudnn.allow_tf32
  int64_t max_tensor_bytes = 0;        // largest of x, weight, output, residual in bytes
  bool pointers_aligned = true;        // x, weight, bias, residual data pointers are 16-byte aligned
  bool cudnn_fused_ok = false;         // cuDNN's fused conv+bias+ReLU(+add) can run it (CUDA, cuDNN on, ReLU)
  bool prefer_cudnn = true;            // resnet_ext.prefer_cudnn(): let cuDNN's fused ops take layers they win
  int sm = 0;                          // compute capability of the device, e.g. 80, 90 (0: unknown)

  // Output spatial size from the other fields (returns false if it would be empty).
  bool compute_output_size();
  std::string to_string() const;
};

// Which implementation a conv_bn_act call takes, and why.
struct KernelChoice {
  std::string kernel;  // name of the fused kernel, empty when a fallback runs
  std::string reason;  // why this kernel, or why the fallback
  bool fused() const { return !kernel.empty(); }
};

// The fallback a problem without a fused kernel takes: cuDNN's fused conv+bias+ReLU(+add) where it applies, else
// the stock composition (conv, add, relu).
inline const char* fallback_path(const ConvProblem& p) { return p.cudnn_fused_ok ? "cudnn_fused" : "stock"; }

// Everything a fused kernel needs to run one problem. Pointers are device pointers: x, residual and y NHWC,
// w KRSC (a channels_last [K, C, R, S] tensor), bias [K]; all of the problem's dtype.
struct ConvLaunchArgs {
  ConvProblem problem;
  const void* x = nullptr;
  const void* w = nullptr;
  const void* bias = nullptr;
  const void* residual = nullptr;  // may be null
  void* y = nullptr;
  void* stream = nullptr;  // cudaStream_t
};

// One compiled fused kernel as the selector sees it: its name and a host-side "can this problem run?" test.
struct FusedKernelInfo {
  std::string name;
  int min_sm;             // first architecture it runs on
  int max_sm;             // last architecture it is chosen for
  ScalarKind dtype;
  // Returns an empty string when the kernel accepts the problem, else the reason it does not.
  std::string (*can_implement)(const ConvProblem&);
  // Heuristic preference: higher wins among kernels that can implement a problem.
  int (*score)(const ConvProblem&);
  // Launches on args.stream; returns an empty string on success, else the error (never prints and continues).
  std::string (*launch)(const ConvLaunchArgs&);
};

// The kernels compiled into this build (empty in a CPU-only build).
const std::vector<FusedKernelInfo>& fused_kernel_registry();

// Generic reasons that rule out every fused kernel, before looking at individual kernels.
std::string common_fallback_reason(const ConvProblem& p);

// Heuristic choice among the compiled kernels (the autotuner may override it per shape).
KernelChoice select_conv_kernel(const ConvProblem& p);
KernelChoice select_conv_kernel(const ConvProblem& p, const std::vector<FusedKernelInfo>& registry);

}  // namespace resnet_ext
