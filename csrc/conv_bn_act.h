// resnet_ext::conv_bn_act: y = relu?(conv(x, weight) + bias (+ residual)), BN already folded into weight/bias.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "conv_problem.h"

namespace resnet_ext {

// Validates every argument with an error that names it; returns the output size [N, K, P, Q].
std::vector<int64_t> check_conv_bn_act_args(const at::Tensor& x, const at::Tensor& weight,
                                            const std::optional<at::Tensor>& bias,
                                            const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// The stock ATen composition (conv -> add -> relu). The reference and the fallback of every fused kernel.
at::Tensor conv_bn_act_stock(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, bool relu, int64_t groups);

// Describes a (checked) call as a ConvProblem for the selector.
ConvProblem make_conv_problem(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, bool relu, int64_t groups);

// Which path a call with these arguments takes on its device, and why (no kernel runs).
KernelChoice choose_path(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& residual, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, bool relu, int64_t groups);

// resnet_ext.prefer_cudnn(on): whether cuDNN's fused ops may take the layers they win (default on).
bool prefer_cudnn();
void set_prefer_cudnn(bool on);

// Counts how often each path ran, for `resnet_ext.path_counts()`.
void count_path(const std::string& path);

}  // namespace resnet_ext
