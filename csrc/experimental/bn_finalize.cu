// bn_finalize on the device: one thread per channel through the formula in ops/bn_finalize.h (unverified on a GPU
// until gpu_check.sh's fusedtrain step runs). Launched by experimental/cudnn_graphs.cpp.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "experimental/bn_finalize_kernels.h"
#include "ops/bn_finalize.h"

namespace resnet_ext {
namespace fused_train {
namespace {

template <typename T>
__global__ void finalize_kernel(FinalizeArgs a) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.channels) return;
  const T* s = static_cast<const T*>(a.sums);
  T* out[4];
  for (int j = 0; j < 4; ++j) out[j] = static_cast<T*>(a.out[j]) + i;
  T* rm = a.running_mean ? static_cast<T*>(a.running_mean) + i : nullptr;
  T* rv = a.running_var ? static_cast<T*>(a.running_var) + i : nullptr;
  finalize_channel<T>(s[i], s[a.channels + i], T(*a.count), static_cast<const T*>(a.weight)[i],
                      static_cast<const T*>(a.bias)[i], T(a.eps), T(a.momentum), out[0], out[1], out[2], out[3], rm,
                      rv);
}

}  // namespace

std::string launch_finalize(const FinalizeArgs& a, bool fp64, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const unsigned blocks = unsigned((a.channels + kThreads - 1) / kThreads);
  if (fp64)
    finalize_kernel<double><<<blocks, kThreads, 0, stream>>>(a);
  else
    finalize_kernel<float><<<blocks, kThreads, 0, stream>>>(a);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace fused_train
}  // namespace resnet_ext
