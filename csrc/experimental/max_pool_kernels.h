// Launcher of the NHWC max pool without indices (max_pool_kernels.cu). No ATen here: max_pool.cpp passes raw
// device pointers. Returns "" or the CUDA error.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/dtype.h"

namespace resnet_ext {
namespace max_pool {

using DType = KernelDType;

struct Problem {
  int64_t N = 0, H = 0, W = 0, C = 0, P = 0, Q = 0;  // input [N, H, W, C] and output [N, P, Q, C], both NHWC-dense
  int R = 0, S = 0, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;
};

// Elements per 16-byte vector of a dtype: the kernel needs C a multiple of it and 16-byte aligned pointers.
int vector_elements(DType t);

// y[n, p, q, c] = max over the window of x (NaN wins, as torch's max pool); windows clipped to the input.
std::string forward(DType t, const Problem& p, const void* x, void* y, void* stream);

}  // namespace max_pool
}  // namespace resnet_ext
