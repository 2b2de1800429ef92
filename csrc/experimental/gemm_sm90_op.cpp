// resnet_ext::gemm_sm90(name, a, b, bias, scale, shift, residual, relu): one named sm_90a GEMM of
// experimental/gemm_sm90.h on 2-d CUDA tensors, D = act(scale * (A B^T) + shift + bias (+ R)). A test entry for the
// epilogue arguments no op passes yet (the fp32 scale and shift of #24); the output is NaN-filled before the launch
// so that an element the kernel skips shows. Experimental build, CUDA only; no fallback: a failure raises.
#include <ATen/ATen.h>
#include <torch/library.h>

#ifdef RESNET_EXT_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "experimental/gemm_sm90.h"
#endif

namespace resnet_ext {
namespace {

using at::Tensor;

#ifdef RESNET_EXT_WITH_CUDA
Tensor gemm_sm90_cuda(const std::string& name, const Tensor& a, const Tensor& b, const std::optional<Tensor>& bias,
                      const std::optional<Tensor>& scale, const std::optional<Tensor>& shift,
                      const std::optional<Tensor>& residual, bool relu) {
  const int index = gemm_sm90::find_config(name.c_str());
  TORCH_CHECK(index >= 0, "gemm_sm90: no configuration named '", name, "'");
  const gemm_sm90::Config& c = gemm_sm90::kConfigs[index];
  const auto dtype = c.dtype == gemm_sm90::DType::BFloat16 ? at::kBFloat16 : at::kHalf;
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1) && a.scalar_type() == dtype &&
                  b.scalar_type() == dtype && a.stride(1) == 1 && b.stride(1) == 1,
              "gemm_sm90: a [m, k] and b [n, k] must be row-major ", dtype, " matrices, got ", a.sizes(), " ",
              a.scalar_type(), " and ", b.sizes(), " ", b.scalar_type());
  const int64_t m = a.size(0), n = b.size(0);
  auto vector = [&](const std::optional<Tensor>& t, at::ScalarType type, const char* what) -> const void* {
    if (!t.has_value()) return nullptr;
    TORCH_CHECK(t->dim() == 1 && t->size(0) == n && t->scalar_type() == type && t->is_contiguous() &&
                    t->device() == a.device(),
                "gemm_sm90: ", what, " must be a contiguous ", type, " vector of ", n, " on ", a.device());
    return t->data_ptr();
  };
  gemm_sm90::Problem p;
  p.dtype = c.dtype;
  p.m = m, p.n = n, p.k = a.size(1);
  p.a = a.data_ptr(), p.lda = a.stride(0);
  p.b = b.data_ptr(), p.ldb = b.stride(0);
  p.bias = vector(bias, dtype, "bias");
  p.scale = static_cast<const float*>(vector(scale, at::kFloat, "scale"));
  p.shift = static_cast<const float*>(vector(shift, at::kFloat, "shift"));
  if (residual.has_value()) {
    TORCH_CHECK(residual->dim() == 2 && residual->size(0) == m && residual->size(1) == n &&
                    residual->scalar_type() == dtype && residual->stride(1) == 1,
                "gemm_sm90: residual must be a row-major ", dtype, " [", m, ", ", n, "] matrix");
    p.residual = residual->data_ptr(), p.ldr = residual->stride(0);
  }
  c10::cuda::CUDAGuard guard(a.device());
  Tensor d = at::full({m, n}, std::numeric_limits<float>::quiet_NaN(), a.options());
  p.d = d.data_ptr(), p.ldd = n;
  p.relu = relu;
  p.device = a.get_device();
  const size_t bytes = gemm_sm90::workspace_size(index, p);
  Tensor workspace = at::empty({int64_t(bytes)}, a.options().dtype(at::kByte));
  const char* why = nullptr;
  const auto s = gemm_sm90::launch(index, p, bytes ? workspace.data_ptr() : nullptr, bytes,
                                   at::cuda::getCurrentCUDAStream(a.get_device()).stream(), &why);
  TORCH_CHECK(s == gemm_sm90::Status::kSuccess, "gemm_sm90 ", name, ": ", gemm_sm90::status_string(s), ": ", why);
  return d;
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(resnet_ext, m) {
  m.def("gemm_sm90(str name, Tensor a, Tensor b, Tensor? bias, Tensor? scale, Tensor? shift, Tensor? residual, "
        "bool relu) -> Tensor");
}

#ifdef RESNET_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(resnet_ext, CUDA, m) { m.impl("gemm_sm90", &gemm_sm90_cuda); }
#endif

}  // namespace resnet_ext
