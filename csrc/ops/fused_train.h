// The ops of the fused training decomposition (#23; resnet_ext/engine/fused_train.py): convolutions that apply the
// previous BN's scale + shift + ReLU to their input as they load it and write their output's per-channel sums, and
// the finalize that turns those sums into BN's scale and shift. ops/fused_train.cpp: schemas, argument checks and
// the ATen compositions (the CPU kernels, and the fallback of the cuDNN graphs in experimental/cudnn_train.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <functional>
#include <optional>
#include <tuple>
#include <vector>

#if defined(__CUDACC__)
#define RESNET_EXT_HD __host__ __device__
#else
#define RESNET_EXT_HD
#endif

namespace resnet_ext {
namespace fused_train {

// One channel's finalize, the only place its formula is written (the CPU loop and the CUDA kernel both call it):
// batch mean and biased variance from the sums over n values, BN as y * scale + shift, and the running statistics
// moved by `momentum` towards the batch mean and the unbiased variance, as nn.BatchNorm2d does.
template <typename T>
RESNET_EXT_HD inline void finalize_channel(T sum, T sqsum, T n, T gamma, T beta, T eps, T momentum, T* scale,
                                           T* shift, T* mean, T* invstd, T* running_mean, T* running_var) {
  using std::sqrt;
  const T mu = sum / n;
  T var = sqsum / n - mu * mu;
  var = var > T(0) ? var : T(0);  // the rounding of E[y^2] - E[y]^2 may go below zero
  const T inv = T(1) / sqrt(var + eps);
  *mean = mu;
  *invstd = inv;
  *scale = gamma * inv;
  *shift = beta - mu * gamma * inv;
  if (running_mean != nullptr) {
    *running_mean += momentum * (mu - *running_mean);
    *running_var += momentum * (var * n / (n - T(1)) - *running_var);
  }
}

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

// bn_finalize's frame, shared by its CPU and CUDA kernels: checks, the operands in the sums' dtype, the outputs
// (scale, shift, mean, invstd) allocated, `run(sums, weight, bias, running_mean, running_var, outputs)` (running
// statistics null when not given), and the running statistics written back where `run` got a converted copy.
using FinalizeRun = std::function<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor*,
                                       at::Tensor*, const std::vector<at::Tensor>&)>;
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> finalize_with(const at::Tensor& sums, double count,
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
void check_finalize(const at::Tensor& sums, double count, const at::Tensor& weight, const at::Tensor& bias,
                    const OptTensor& running_mean, const OptTensor& running_var);

}  // namespace fused_train
}  // namespace resnet_ext
