// Launcher of the fused ResNet stem (stem_pool_kernels.cu, #24 item 1): conv 7x7 stride 2 padding 3 over 3 input
// channels, y = relu(conv * scale + shift) per output channel (BN applied in fp32 to the accumulator), then max
// pool 3x3 stride 2 padding 1, writing only the pooled map. No ATen here: stem_pool.cpp passes raw device pointers.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/dtype.h"

namespace resnet_ext {
namespace stem_pool {

constexpr int kChannels = 64;  // output channels the kernel computes (the ResNet stem's)
constexpr int kKPad = 160;     // the GEMM's K: 7 * 7 * 3 = 147 taps, zero-padded to ten 16-deep steps

struct Problem {
  int64_t N = 0, H = 0, W = 0;  // x: [N, H, W, 3], NHWC-dense
  int64_t OH = 0, OW = 0;       // the conv's output size
  int64_t PH = 0, PW = 0;       // y: [N, PH, PW, 64], NHWC-dense
};

// x NHWC [N, H, W, 3]; weight [kKPad, 64] (row k = (r * 7 + s) * 3 + c, rows 147.. zero) in x's dtype; scale and
// shift fp32 [64]; y NHWC [N, PH, PW, 64]. NaN propagates as in torch's relu and max pool. "" or the CUDA error.
std::string forward(KernelDType t, const Problem& p, const void* x, const void* weight, const float* scale,
                    const float* shift, void* y, int sm_count, void* stream);

}  // namespace stem_pool
}  // namespace resnet_ext
