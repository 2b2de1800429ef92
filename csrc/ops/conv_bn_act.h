// resnet_ext::conv_bn_act: y = relu?(conv(x, weight) + bias (+ residual)), BN already folded into weight/bias; or,
// with the optional fp32 scale and shift, y = relu?(conv(x, weight) * scale + shift + bias (+ residual)): BN applied
// to the unfolded weight's sum (#24).
// The op's contract between its files: conv_bn_act.cpp (schema, checks, stock composition, CPU kernel, counters),
// conv_bn_act_cuda.cpp (CUDA kernel: operands -> dispatcher -> fused kernel or fallback), dispatch/autotune.cpp
// and module.cpp (explain, counters).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "dispatch/dispatch.h"

namespace resnet_ext {

// A call's convolution parameters after the checks: stride, padding and dilation with two entries each (a single
// entry means both, as in F.conv2d), and the output size [N, K, P, Q].
struct ConvParams {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1;
  std::vector<int64_t> out_size;
};

// Validates every argument with an error that names it (the fake kernel in resnet_ext/ops.py mirrors it).
ConvParams check_conv_bn_act_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                  const std::optional<at::Tensor>& scale = std::nullopt,
                                  const std::optional<at::Tensor>& shift = std::nullopt);

// The output's memory format: x's suggested one (ATen's Tensor::suggest_memory_format, which the fake kernel in
// ops.py reads as torch._prims_common.suggest_memory_format), with the strides at::empty gives it.
at::MemoryFormat output_format(const at::Tensor& x);
std::vector<int64_t> output_strides(at::IntArrayRef sizes, at::MemoryFormat fmt);
// y itself if it has those strides already, else a copy that has them (empty tensors and size-1 dimensions may
// come back from a convolution with other strides).
at::Tensor in_output_layout(const at::Tensor& y, at::MemoryFormat fmt);

// The stock ATen composition (conv -> add -> relu; with scale and shift the epilogue in at least fp32 after the
// conv) on checked arguments: the CPU kernel, the reference and the fallback of every fused kernel. Zero input channels give
// relu?(bias + residual), the empty sum.
at::Tensor conv_bn_act_stock(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& residual, const ConvParams& c, bool relu,
                             const std::optional<at::Tensor>& scale = std::nullopt,
                             const std::optional<at::Tensor>& shift = std::nullopt);

// Which path a call with these arguments takes on its device, and why (no kernel runs): `explain()`.
struct PathChoice {
  std::string path;  // "fused:<kernel>", "cudnn_fused" or "stock"
  std::string reason;
};
PathChoice choose_path(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, bool relu, int64_t groups, const std::optional<at::Tensor>& scale,
                       const std::optional<at::Tensor>& shift);

// resnet_ext.prefer_cudnn(on): whether cuDNN's fused ops may take the layers they win (default on).
bool prefer_cudnn();
void set_prefer_cudnn(bool on);

// How often each path ran (eager calls that returned), for `resnet_ext.path_counts()`.
void count_path(const std::string& path);
std::unordered_map<std::string, int64_t> path_counts();
void reset_path_counts();

#ifdef RESNET_EXT_WITH_CUDA
// ---- CUDA side (conv_bn_act_cuda.cpp) ----

// The tensors a fused kernel is launched on: x and residual as given; the weight as KRSC (channels_last), copied
// when it is not or its data pointer is misaligned; the bias dense and aligned (copied if strided or misaligned,
// zeros when the call has none); scale and shift dense and aligned (copied if not) where given.
struct ConvOperands {
  at::Tensor x, w, bias;
  std::optional<at::Tensor> residual, scale, shift;
};
ConvOperands launch_operands(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& scale,
                             const std::optional<at::Tensor>& shift);

// The problem a CUDA call poses, with the memory facts of its launch operands and the device's arch.
ConvProblem describe_cuda_call(const ConvOperands& ops, const ConvParams& c, bool relu);

// The choice for a CUDA call: what the op runs and explain() reports.
Decision choose_cuda_path(const ConvProblem& p);

// Runs `kernel` on the operands into y (NHWC, allocated by the caller) with a workspace of decision-size bytes.
// Returns "" or the kernel's error (the caller decides whether that throws).
std::string launch_fused(const FusedKernelInfo& kernel, const ConvProblem& p, const ConvOperands& ops, at::Tensor& y);

// cuDNN's fused conv+bias+ReLU(+add) where p.cudnn_fused_ok, else the stock composition; also the stock
// composition where cuDNN finds no engine for the problem. `ran`, if given, gets the path that ran.
at::Tensor conv_bn_act_fallback(const ConvProblem& p, const ConvOperands& ops, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, const ConvParams& c, bool relu,
                                std::string* ran = nullptr);

#ifdef RESNET_EXT_EXPERIMENTAL
// Test switches (resnet_ext._C, RESNET_EXT_EXPERIMENTAL=1 builds): NaN-fill fused outputs before each launch; make
// a named kernel's launch fail.
void set_poison_outputs(bool on);
bool poison_outputs();  // for the experimental ops' own outputs
void set_failing_kernel(const std::string& name);
#endif
#endif

}  // namespace resnet_ext
