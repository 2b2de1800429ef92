// The finalize kernel's launch interface (experimental/bn_finalize.cu), free of ATen so that nvcc compiles it alone.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace resnet_ext {
namespace fused_train {

// Device pointers, all of the sums' type (float or double), one entry per channel; sums holds [2, channels];
// out: scale, shift, mean, invstd; running statistics null when not tracked; count: one double.
struct FinalizeArgs {
  const void* sums;
  const void* weight;
  const void* bias;
  void* out[4];
  void* running_mean;
  void* running_var;
  const double* count;
  int64_t channels;
  double eps, momentum;
};

// "" on success, else the CUDA error.
std::string launch_finalize(const FinalizeArgs& args, bool fp64, cudaStream_t stream);

}  // namespace fused_train
}  // namespace resnet_ext
