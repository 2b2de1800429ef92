// A max pool as resnet_ext's kernels see it (ceil_mode False, no indices); no ATen here, the CUDA kernel includes it.
#pragma once

#include <cstdint>

namespace resnet_ext {

struct PoolProblem {
  int64_t N = 0, H = 0, W = 0, C = 0, P = 0, Q = 0;  // input [N, H, W, C] and output [N, P, Q, C], both NHWC-dense
  int R = 0, S = 0, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;
};

}  // namespace resnet_ext
