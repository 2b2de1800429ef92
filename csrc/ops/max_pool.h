// resnet_ext::max_pool_nhwc's host side shared by its CPU kernel (ops/max_pool.cpp) and its CUDA one
// (experimental/max_pool.cpp).
#pragma once

#include <ATen/ATen.h>

#include "ops/pool_problem.h"

namespace resnet_ext {

// ATen's max_pool2d (ceil_mode False): every fallback, and so the source of the op's errors.
at::Tensor max_pool_stock(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p,
                          at::IntArrayRef d);

// Fills `pr` for a non-empty channels_last-dense 4-d x with two-element arguments inside ATen's own rules (padding
// at most half the kernel: no window is empty) and a non-empty output whose NHWC order is that of torch's output
// layout (x's suggested one); false for anything else.
bool describe_pool(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d,
                   PoolProblem* pr);

}  // namespace resnet_ext
