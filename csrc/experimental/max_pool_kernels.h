// Launcher of the NHWC max pool without indices (max_pool_kernels.cu). No ATen here: max_pool.cpp passes raw
// device pointers. Returns "" or the CUDA error.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/dtype.h"
#include "ops/pool_problem.h"

namespace resnet_ext {
namespace max_pool {

using DType = KernelDType;

using Problem = PoolProblem;

// Elements per 16-byte vector of a dtype: the kernel needs C a multiple of it and 16-byte aligned pointers.
int vector_elements(DType t);

// y[n, p, q, c] = max over the window of x (NaN wins, as torch's max pool); windows clipped to the input.
std::string forward(DType t, const Problem& p, const void* x, void* y, void* stream);

}  // namespace max_pool
}  // namespace resnet_ext
