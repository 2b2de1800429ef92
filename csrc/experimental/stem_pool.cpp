// resnet_ext::stem_pool(x, weight, scale, shift) == max_pool2d(relu(conv2d(x, weight, stride 2, padding 3) * scale
// + shift), 3, 2, 1): a ResNet stem (conv 7x7/2 + BN + ReLU + max pool 3x3/2) in one op, BN as fp32 scale and shift
// per output channel (#24 item 1). On CUDA a channels_last fp16/bf16 x with 3 channels and 64 output channels on
// sm_80+ runs experimental/stem_pool_kernels.cu (unverified until a GPU run); everything else, and the CPU, runs the
// composition: the conv in x's dtype, the epilogue in fp32, the pool, one rounding back to x's dtype.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#ifdef RESNET_EXT_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "experimental/stem_pool_kernels.h"
#include "ops/conv_bn_act.h"
#include "ops/kernel_dtype.h"
#endif

namespace resnet_ext {
namespace {

using at::Tensor;

void check_args(const Tensor& x, const Tensor& w, const Tensor& scale, const Tensor& shift) {
  TORCH_CHECK(x.dim() == 4 && at::isFloatingType(x.scalar_type()), "stem_pool: x must be a floating-point 4-D "
              "(N, C, H, W) tensor, got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(w.dim() == 4 && w.size(1) == x.size(1) && w.size(2) == 7 && w.size(3) == 7,
              "stem_pool: weight must be [K, ", x.size(1), ", 7, 7], got ", w.sizes());
  TORCH_CHECK(w.scalar_type() == x.scalar_type() && w.device() == x.device(),
              "stem_pool: weight must have x's dtype and device");
  for (auto [t, name] : {std::pair{&scale, "scale"}, {&shift, "shift"}})
    TORCH_CHECK(t->dim() == 1 && t->size(0) == w.size(0) && at::isFloatingType(t->scalar_type()) &&
                    t->device() == x.device(),
                "stem_pool: ", name, " must be a floating-point [", w.size(0), "] tensor on x's device, got ",
                t->sizes());
}

Tensor stem_pool_composite(const Tensor& x, const Tensor& w, const Tensor& scale, const Tensor& shift) {
  check_args(x, w, scale, shift);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor y = at::conv2d(x, w, {}, 2, 3).to(acc) * scale.to(acc).view({1, -1, 1, 1}) + shift.to(acc).view({1, -1, 1, 1});
  return at::max_pool2d(at::relu(y), 3, 2, 1).to(x.scalar_type()).contiguous(x.suggest_memory_format());
}

#ifdef RESNET_EXT_WITH_CUDA
Tensor stem_pool_cuda(const Tensor& x, const Tensor& w, const Tensor& scale, const Tensor& shift) {
  check_args(x, w, scale, shift);
  KernelDType t;
  const bool takes = kernel_dtype(x, &t) && t != KernelDType::Float32 && x.size(1) == 3 &&
                     w.size(0) == stem_pool::kChannels && x.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                     at::cuda::getDeviceProperties(x.get_device())->major >= 8 && x.numel() > 0;
  if (!takes) return stem_pool_composite(x, w, scale, shift);
  c10::cuda::CUDAGuard guard(x.device());
  stem_pool::Problem p;
  p.N = x.size(0), p.H = x.size(2), p.W = x.size(3);
  p.OH = (p.H - 1) / 2 + 1, p.OW = (p.W - 1) / 2 + 1;  // (H + 2*3 - 7) / 2 + 1
  p.PH = (p.OH - 1) / 2 + 1, p.PW = (p.OW - 1) / 2 + 1;  // (OH + 2*1 - 3) / 2 + 1
  // The weight as the GEMM's B: row (r * 7 + s) * 3 + c, zero rows up to kKPad.
  Tensor b = at::zeros({stem_pool::kKPad, stem_pool::kChannels}, w.options());
  b.narrow(0, 0, 147).copy_(w.permute({2, 3, 1, 0}).reshape({147, stem_pool::kChannels}));
  Tensor sc = scale.to(at::kFloat).contiguous(), sh = shift.to(at::kFloat).contiguous();
  Tensor y = at::empty({p.N, stem_pool::kChannels, p.PH, p.PW},
                       x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (poison_outputs()) y.fill_(std::numeric_limits<float>::quiet_NaN());  // a pixel the kernel skips shows
  const std::string err = stem_pool::forward(t, p, x.data_ptr(), b.data_ptr(), sc.data_ptr<float>(),
                                             sh.data_ptr<float>(), y.data_ptr(),
                                             at::cuda::getDeviceProperties(x.get_device())->multiProcessorCount,
                                             at::cuda::getCurrentCUDAStream(x.get_device()).stream());
  TORCH_CHECK(err.empty(), "stem_pool: CUDA kernel launch failed: ", err);
  return y;
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(resnet_ext, m) {
  m.def("stem_pool(Tensor x, Tensor weight, Tensor scale, Tensor shift) -> Tensor", {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(resnet_ext, CPU, m) { m.impl("stem_pool", &stem_pool_composite); }

TORCH_LIBRARY_IMPL(resnet_ext, CUDA, m) {
#ifdef RESNET_EXT_WITH_CUDA
  m.impl("stem_pool", &stem_pool_cuda);
#else
  m.impl("stem_pool", &stem_pool_composite);
#endif
}

}  // namespace resnet_ext
