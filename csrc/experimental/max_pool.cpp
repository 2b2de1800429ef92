// resnet_ext::max_pool_nhwc on CUDA (the op and its CPU kernel: ops/max_pool.cpp): a channels_last-dense
// fp32/fp16/bf16 x with 16-byte aligned data and channels a multiple of the 16-byte vector runs
// experimental/max_pool_kernels.cu (one pass, no indices; opt-in from Python, unverified until a GPU run); everything
// else runs ATen's max_pool2d, which also gives its errors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops/max_pool.h"

#ifdef RESNET_EXT_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "experimental/max_pool_kernels.h"
#include "ops/kernel_dtype.h"
#endif

namespace resnet_ext {
namespace {

using at::Tensor;

#ifdef RESNET_EXT_WITH_CUDA
Tensor max_pool_cuda(const Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d) {
  max_pool::DType t;
  max_pool::Problem pr;
  if (!kernel_dtype(x, &t) || !describe_pool(x, k, s, p, d, &pr) ||
      reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0 || pr.C % max_pool::vector_elements(t) != 0)
    return max_pool_stock(x, k, s, p, d);
  c10::cuda::CUDAGuard guard(x.device());
  // torch's output layout (describe_pool: the NHWC order written is that layout's)
  Tensor y = at::empty({pr.N, pr.C, pr.P, pr.Q}, x.options().memory_format(x.suggest_memory_format()));
  const std::string err = max_pool::forward(t, pr, x.data_ptr(), y.data_ptr(),
                                            at::cuda::getCurrentCUDAStream(x.get_device()).stream());
  TORCH_CHECK(err.empty(), "max_pool_nhwc: CUDA kernel launch failed: ", err);
  return y;
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(resnet_ext, CUDA, m) {
#ifdef RESNET_EXT_WITH_CUDA
  m.impl("max_pool_nhwc", &max_pool_cuda);
#else
  m.impl("max_pool_nhwc", &max_pool_stock);
#endif
}

}  // namespace resnet_ext
