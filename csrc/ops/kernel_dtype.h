// The kernels' element type of an ATen tensor (the .cpp side of kernels/dtype.h).
#pragma once

#include <ATen/ATen.h>

#include "kernels/dtype.h"

namespace resnet_ext {

// Sets *t and returns true where a CUDA kernel takes x's dtype; false (the op falls back) elsewhere.
inline bool kernel_dtype(const at::Tensor& x, KernelDType* t) {
  switch (x.scalar_type()) {
    case at::kFloat: *t = KernelDType::Float32; return true;
    case at::kHalf: *t = KernelDType::Float16; return true;
    case at::kBFloat16: *t = KernelDType::BFloat16; return true;
    default: return false;
  }
}

}  // namespace resnet_ext
