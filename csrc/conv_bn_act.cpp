// Schema, argument checks, the stock composition and the CPU kernel of resnet_ext::conv_bn_act.
#include "conv_bn_act.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <atomic>
#include <mutex>
#include <unordered_map>

namespace resnet_ext {
namespace {

std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }

void check_pair(at::IntArrayRef v, const char* name, int64_t min_value) {
  TORCH_CHECK(v.size() == 2, "conv_bn_act: ", name, " must have 2 entries (h, w), got ", v.size());
  TORCH_CHECK(v[0] >= min_value && v[1] >= min_value, "conv_bn_act: ", name, " entries must be >= ", min_value,
              ", got ", v);
}

void check_like_x(const at::Tensor& x, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == x.device(), "conv_bn_act: ", name, " must be on x's device (", x.device(), "), got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "conv_bn_act: ", name, " must have x's dtype (",
              x.scalar_type(), "), got ", t.scalar_type());
}

std::mutex counts_mutex;
std::unordered_map<std::string, int64_t>& counts() {
  static std::unordered_map<std::string, int64_t> c;
  return c;
}

}  // namespace

std::vector<int64_t> check_conv_bn_act_args(const at::Tensor& x, const at::Tensor& weight,
                                            const std::optional<at::Tensor>& bias,
                                            const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(x.dim() == 4, "conv_bn_act: x must be a 4-D tensor (N, C, H, W), got shape ", shape_str(x));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "conv_bn_act: x must be a floating-point tensor, got ",
              x.scalar_type());
  TORCH_CHECK(weight.dim() == 4, "conv_bn_act: weight must be a 4-D tensor (K, C/groups, R, S), got shape ",
              shape_str(weight));
  check_like_x(x, weight, "weight");
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  TORCH_CHECK(groups >= 1, "conv_bn_act: groups must be >= 1, got ", groups);
  const int64_t C = x.size(1), K = weight.size(0);
  TORCH_CHECK(C % groups == 0 && K % groups == 0, "conv_bn_act: groups=", groups,
              " must divide x's channels (", C, ") and weight's output channels (", K, ")");
  TORCH_CHECK(weight.size(1) * groups == C, "conv_bn_act: channel mismatch: x has ", C,
              " channels but weight of shape ", shape_str(weight), " expects ", weight.size(1) * groups,
              " (weight.size(1) * groups=", groups, ")");
  TORCH_CHECK(K > 0 && weight.size(2) > 0 && weight.size(3) > 0, "conv_bn_act: weight must not be empty, got shape ",
              shape_str(weight));
  if (bias.has_value()) {
    check_like_x(x, *bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == K, "conv_bn_act: bias must have shape [", K,
                "] (one per output channel), got ", shape_str(*bias));
  }
  const int64_t P = (x.size(2) + 2 * padding[0] - dilation[0] * (weight.size(2) - 1) - 1) / stride[0] + 1;
  const int64_t Q = (x.size(3) + 2 * padding[1] - dilation[1] * (weight.size(3) - 1) - 1) / stride[1] + 1;
  TORCH_CHECK(P > 0 && Q > 0, "conv_bn_act: x's spatial size (", x.size(2), ", ", x.size(3),
              ") is too small for a ", weight.size(2), "x", weight.size(3), " kernel with padding ", padding,
              " and dilation ", dilation);
  std::vector<int64_t> out{x.size(0), K, P, Q};
  if (residual.has_value()) {
    check_like_x(x, *residual, "residual");
    TORCH_CHECK(residual->sizes() == at::IntArrayRef(out), "conv_bn_act: residual must have the output's shape ",
                at::IntArrayRef(out), ", got ", shape_str(*residual));
  }
  return out;
}

at::Tensor conv_bn_act_stock(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, bool relu, int64_t groups) {
  // The output takes x's memory format whatever the backend prefers, so the fake kernel can promise it.
  at::Tensor y = at::convolution(x, weight, bias, stride, padding, dilation, /*transposed=*/false,
                                 /*output_padding=*/{0, 0}, groups)
                     .contiguous(x.suggest_memory_format());
  if (residual.has_value()) y.add_(*residual);
  if (relu) y.relu_();
  return y;
}

ConvProblem make_conv_problem(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, bool relu, int64_t groups) {
  ConvProblem p;
  p.N = x.size(0);
  p.C = x.size(1);
  p.H = x.size(2);
  p.W = x.size(3);
  p.K = weight.size(0);
  p.R = weight.size(2);
  p.S = weight.size(3);
  p.stride_h = stride[0];
  p.stride_w = stride[1];
  p.pad_h = padding[0];
  p.pad_w = padding[1];
  p.dil_h = dilation[0];
  p.dil_w = dilation[1];
  p.groups = groups;
  p.compute_output_size();
  switch (x.scalar_type()) {
    case at::kFloat: p.dtype = ScalarKind::Float32; break;
    case at::kHalf: p.dtype = ScalarKind::Float16; break;
    case at::kBFloat16: p.dtype = ScalarKind::BFloat16; break;
    case at::kDouble: p.dtype = ScalarKind::Float64; break;
    default: p.dtype = ScalarKind::Other;
  }
  p.has_bias = bias.has_value();
  p.has_residual = residual.has_value();
  p.relu = relu;
  p.x_channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast);
  p.residual_channels_last = !residual.has_value() || residual->is_contiguous(at::MemoryFormat::ChannelsLast);
  p.allow_tf32 = at::globalContext().allowTF32CuDNN();
  p.prefer_cudnn = prefer_cudnn();
  p.cudnn_fused_ok = x.is_cuda() && relu && at::globalContext().userEnabledCuDNN() &&
                     (x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf ||
                      x.scalar_type() == at::kBFloat16);
  const int64_t elem = x.element_size();
  int64_t biggest = std::max({x.numel(), weight.numel(), p.N * p.K * p.P * p.Q}) * elem;
  p.max_tensor_bytes = biggest;
  auto aligned = [](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  // A weight that is not channels_last is copied to a fresh (aligned) KRSC tensor before launch.
  p.pointers_aligned = aligned(x) && (!weight.is_contiguous(at::MemoryFormat::ChannelsLast) || aligned(weight)) &&
                       (!bias.has_value() || aligned(*bias)) && (!residual.has_value() || aligned(*residual));
  return p;
}

namespace {
std::atomic<bool> g_prefer_cudnn{true};
}
bool prefer_cudnn() { return g_prefer_cudnn.load(std::memory_order_relaxed); }
void set_prefer_cudnn(bool on) { g_prefer_cudnn = on; }

void count_path(const std::string& path) {
  std::lock_guard<std::mutex> lock(counts_mutex);
  ++counts()[path];
}

std::unordered_map<std::string, int64_t> path_counts() {
  std::lock_guard<std::mutex> lock(counts_mutex);
  return counts();
}

void reset_path_counts() {
  std::lock_guard<std::mutex> lock(counts_mutex);
  counts().clear();
}

#ifdef RESNET_EXT_WITH_CUDA
KernelChoice choose_cuda_path(const ConvProblem& p, const at::Tensor& x);  // conv_bn_act_cuda.cpp
#endif

KernelChoice choose_path(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& residual, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, bool relu, int64_t groups) {
  check_conv_bn_act_args(x, weight, bias, residual, stride, padding, dilation, groups);
  if (!x.is_cuda()) return {"", "device " + x.device().str() + ": stock ATen composition (conv, add, relu)"};
#ifdef RESNET_EXT_WITH_CUDA
  return choose_cuda_path(make_conv_problem(x, weight, bias, residual, stride, padding, dilation, relu, groups), x);
#else
  return {"", "resnet_ext was built without CUDA kernels: stock ATen composition"};
#endif
}

namespace {

at::Tensor conv_bn_act_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, bool relu, int64_t groups) {
  check_conv_bn_act_args(x, weight, bias, residual, stride, padding, dilation, groups);
  count_path("stock:" + x.device().str());
  return conv_bn_act_stock(x, weight, bias, residual, stride, padding, dilation, relu, groups);
}

}  // namespace

TORCH_LIBRARY(resnet_ext, m) {
  m.def(
      "conv_bn_act(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, int[2] stride, int[2] padding, "
      "int[2] dilation, bool relu, int groups=1) -> Tensor",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(resnet_ext, CPU, m) { m.impl("conv_bn_act", &conv_bn_act_cpu); }

#ifndef RESNET_EXT_WITH_CUDA
// A build without CUDA kernels still serves CUDA tensors (with a CUDA torch) through the stock composition.
TORCH_LIBRARY_IMPL(resnet_ext, CUDA, m) { m.impl("conv_bn_act", &conv_bn_act_cpu); }
#endif

}  // namespace resnet_ext
