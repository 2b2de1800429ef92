// Launchers of the fused training BatchNorm(+residual add)+ReLU kernels (bn_act_kernels.cu). No ATen here: the
// ATen-facing ops (ops/bn_act.cpp) pass raw device pointers. Every launcher returns "" or the CUDA error.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/dtype.h"

namespace resnet_ext {
namespace bn_act {

using DType = KernelDType;

struct Layout {
  int64_t N = 0, C = 0, HW = 0;  // x is [N, C, H, W]; HW = H * W
  bool channels_last = true;     // NHWC-dense, else NCHW-dense
  bool vectorized = false;       // channels_last, C a multiple of the 16-byte vector, pointers 16-byte aligned
  int sm_count = 0;              // the device's multiprocessors: grids are sized to fill them (0: unknown)
  int64_t M() const { return N * HW; }  // values per channel
};

#ifdef RESNET_EXT_EXPERIMENTAL
// The opt-in kernels (experimental/bn_act_optin.cuh), unverified on a GPU until a GPU run passes the BN tests with
// them (resnet_ext.ops.bn_optin(True)): the per-channel sums' final pass with a block of threads per 32 channels
// (instead of one thread per channel; both fp64 in a fixed order), and NHWC-vectorized apply passes whose threads
// keep their channels (instead of recomputing them per vector). Off, the verified kernels run.
bool optin();
void set_optin(bool on);
#endif

// Scratch floats the sums kernels need for their per-block partials.
int64_t partials_floats(const Layout& l, int64_t element_size);

// sums[0][c] = sum(x - shift[c]), sums[1][c] = sum((x - shift[c])^2) over the N*H*W values of channel c.
std::string channel_stats(DType t, const Layout& l, const void* x, const float* shift, float* partials, float* sums,
                          void* stream);

// mean = shift + S1/M (shift itself where it is not finite), invstd = 1/sqrt(var + eps),
// var_unbiased = var * M / (M - 1), with var = S2/M - (S1/M)^2
// (sums may hold all-reduced sums over several processes: `count` is then their total M).
std::string stats_from_sums(int64_t C, const float* sums, const float* shift, double count, double eps, float* mean,
                            float* invstd, float* var_unbiased, void* stream);

// y = relu?((x - mean) * invstd * weight + bias (+ residual)); weight/bias fp32.
std::string apply_forward(DType t, const Layout& l, const void* x, const void* residual, const float* weight,
                          const float* bias, const float* mean, const float* invstd, bool relu, void* y, void* stream);

// g = relu ? dy * (y > 0) : dy; sums[0][c] = sum(g), sums[1][c] = sum(g * (x - mean) * invstd).
std::string backward_sums(DType t, const Layout& l, const void* dy, const void* y, const void* x, const float* mean,
                          const float* invstd, bool relu, float* partials, float* sums, void* stream);

// dx = weight * invstd * (g - sums[0]/count - xhat * sums[1]/count); dresidual = g (if dres is not null).
std::string backward_apply(DType t, const Layout& l, const void* dy, const void* y, const void* x, const float* weight,
                           const float* mean, const float* invstd, const float* sums, double count, bool relu,
                           void* dx, void* dres, void* stream);

}  // namespace bn_act
}  // namespace resnet_ext
