// Opt-in per-shape autotuner for conv_bn_act's fused kernels (resnet_ext.autotune(True) or
// RESNET_EXT_AUTOTUNE=1). On the first call for a shape it times every compiled candidate that can implement
// the problem, rejects any whose output differs from the stock result, and caches the winner per device+shape.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "conv_problem.h"

namespace resnet_ext {

bool autotune_enabled();
void set_autotune_enabled(bool on);
void clear_autotune_cache();

// The cached decision for this problem on this device; an empty KernelChoice (no kernel, no reason) when the
// autotuner is off or has not seen the shape.
KernelChoice autotuned_choice(const ConvProblem& p, int device);

// Runs the tuning for one problem with the call's real tensors and caches the result.
KernelChoice autotune_problem(const ConvProblem& p, const at::Tensor& x, const at::Tensor& w_krsc,
                              const at::Tensor& bias, const std::optional<at::Tensor>& residual,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool relu,
                              int64_t groups);

}  // namespace resnet_ext
