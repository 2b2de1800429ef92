// resnet_ext::max_pool_nhwc on CUDA (the op and its CPU kernel: ops/max_pool.cpp): a channels_last-dense
// fp32/fp16/bf16 x with 16-byte aligned data and channels a multiple of the 16-byte vector runs
// experimental/max_pool_kernels.cu (one pass, no indices; opt-in from Python, unverified until a GPU run); everything
// else runs ATen's max_pool2d, which also gives its errors.
#include <ATen/ATen.h>
#include <torch/library.h>

#ifdef RESNET_EXT_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "dispatch/conv_problem.h"
#include "experimental/max_pool_kernels.h"
#include "ops/kernel_dtype.h"
#endif

namespace resnet_ext {
namespace {

using at::Tensor;

Tensor max_pool_stock(const Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d) {
  return at::max_pool2d(x, k, s, p, d, /*ceil_mode=*/false);
}

#ifdef RESNET_EXT_WITH_CUDA
Tensor max_pool_cuda(const Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d) {
  max_pool::DType t;
  const bool shaped = x.dim() == 4 && k.size() == 2 && s.size() == 2 && p.size() == 2 && d.size() == 2;
  if (!shaped || !kernel_dtype(x, &t) || !x.is_contiguous(at::MemoryFormat::ChannelsLast) || x.numel() == 0 ||
      reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0 || x.size(1) % max_pool::vector_elements(t) != 0)
    return max_pool_stock(x, k, s, p, d);
  for (int i = 0; i < 2; ++i)  // ATen's own argument rules (padding at most half the kernel: no empty window)
    if (k[i] <= 0 || s[i] <= 0 || d[i] <= 0 || p[i] < 0 || 2 * p[i] > k[i]) return max_pool_stock(x, k, s, p, d);
  max_pool::Problem pr;
  pr.N = x.size(0), pr.C = x.size(1), pr.H = x.size(2), pr.W = x.size(3);
  pr.R = int(k[0]), pr.S = int(k[1]), pr.stride_h = int(s[0]), pr.stride_w = int(s[1]);
  pr.pad_h = int(p[0]), pr.pad_w = int(p[1]), pr.dil_h = int(d[0]), pr.dil_w = int(d[1]);
  pr.P = conv_output_size(pr.H, pr.R, pr.stride_h, pr.pad_h, pr.dil_h);
  pr.Q = conv_output_size(pr.W, pr.S, pr.stride_w, pr.pad_w, pr.dil_w);
  if (pr.P <= 0 || pr.Q <= 0) return max_pool_stock(x, k, s, p, d);
  c10::cuda::CUDAGuard guard(x.device());
  Tensor y = at::empty({pr.N, pr.C, pr.P, pr.Q}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
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
