// bn_finalize's formula for one channel, written once for the host (ops/fused_train.cpp) and the device
// (experimental/bn_finalize.cu); no ATen here, so CUDA files include it.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define RESNET_EXT_HD __host__ __device__
#else
#define RESNET_EXT_HD
#endif

namespace resnet_ext {
namespace fused_train {

// Batch mean and biased variance from the sums over n values, BN as y * scale + shift, and the running statistics
// (when not null) moved by `momentum` towards the batch mean and the unbiased variance, as nn.BatchNorm2d does.
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

}  // namespace fused_train
}  // namespace resnet_ext
