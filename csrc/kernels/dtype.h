// The element types of the CUDA kernels' launchers (bn_act_kernels.h, experimental/max_pool_kernels.h): one enum, no ATen.
#pragma once

namespace resnet_ext {

enum class KernelDType { Float32, Float16, BFloat16 };

}  // namespace resnet_ext
