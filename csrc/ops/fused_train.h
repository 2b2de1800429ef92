// The ops of the fused training decomposition (#23; resnet_ext/engine/fused_train.py): convolutions that apply the
// previous BN's scale + shift + ReLU to their input as they load it and write their output's per-channel sums, and
// the finalize that turns those sums into BN's scale and shift. ops/fused_train.cpp: schemas, argument checks and
// the ATen compositions (the CPU kernels, and the fallback of the cuDNN graphs in experimental/cudnn_graphs.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <optional>
#include <tuple>
#include <vector>

#include "ops/bn_finalize.h"

namespace resnet_ext {
namespace fused_train {

using OptTensor = std::optional<at::Tensor>;

// relu(x * scale + shift) in the accumulation type, rounded back to x's dtype and layout; x itself without scale.
at::Tensor prologue(const at::Tensor& x, const OptTensor& scale, const OptTensor& shift);

// The compositions (see the schemas in fused_train.cpp).
std::tuple<at::Tensor, at::Tensor> conv_stats_composite(const at::Tensor& x, const at::Tensor& w,
                                                        const OptTensor& scale, const OptTensor& shift,
                                                        at::IntArrayRef stride, at::IntArrayRef padding);
std::tuple<at::Tensor, at::Tensor> dgrad_drelu_dbn_composite(const at::Tensor& dy, const at::Tensor& w,
                                                             const at::Tensor& y, const at::Tensor& scale,
                                                             const at::Tensor& shift, const at::Tensor& mean,
                                                             const at::Tensor& invstd, at::IntArrayRef stride,
                                                             at::IntArrayRef padding);
at::Tensor wgrad_composite(const at::Tensor& dy, const at::Tensor& x, const OptTensor& scale, const OptTensor& shift,
                           at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding);

// bn_finalize's frame, shared by its CPU and CUDA kernels: checks, the operands in the sums' dtype (the count in
// float64), the outputs (scale, shift, mean, invstd) allocated, `run(sums, count, weight, bias, running_mean,
// running_var, outputs)` (running statistics null when not given), and the running statistics written back where
// `run` got a converted copy.
using FinalizeRun = std::function<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       at::Tensor*, at::Tensor*, const std::vector<at::Tensor>&)>;
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> finalize_with(const at::Tensor& sums,
                                                                         const at::Tensor& count,
                                                                         const at::Tensor& weight,
                                                                         const at::Tensor& bias,
                                                                         const OptTensor& running_mean,
                                                                         const OptTensor& running_var,
                                                                         const FinalizeRun& run);

// Argument checks with errors that name the argument; every backend runs them first.
void check_conv_stats(const at::Tensor& x, const at::Tensor& w, const OptTensor& scale, const OptTensor& shift,
                      at::IntArrayRef stride, at::IntArrayRef padding);
void check_dgrad_drelu_dbn(const at::Tensor& dy, const at::Tensor& w, const at::Tensor& y, const at::Tensor& scale,
                           const at::Tensor& shift, const at::Tensor& mean, const at::Tensor& invstd,
                           at::IntArrayRef stride, at::IntArrayRef padding);
void check_wgrad(const at::Tensor& dy, const at::Tensor& x, const OptTensor& scale, const OptTensor& shift,
                 at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding);
void check_finalize(const at::Tensor& sums, const at::Tensor& count, const at::Tensor& weight, const at::Tensor& bias,
                    const OptTensor& running_mean, const OptTensor& running_var);

}  // namespace fused_train
}  // namespace resnet_ext
