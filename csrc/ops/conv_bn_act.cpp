// Schema, argument checks, the stock composition and the CPU kernel of resnet_ext::conv_bn_act. The CUDA kernel is
// in conv_bn_act_cuda.cpp; resnet_ext/ops.py holds the fake kernel and autograd.
#include "ops/conv_bn_act.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <atomic>
#include <mutex>

namespace resnet_ext {
namespace {

std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }

// F.conv2d's reading of an int[2] argument: one entry means both.
std::vector<int64_t> expand_pair(at::IntArrayRef v, const char* name) {
  TORCH_CHECK(v.size() == 1 || v.size() == 2, "conv_bn_act: expected ", name,
              " to be a single integer value or a list of 2 values to match the convolution dimensions, but got ",
              name, "=", v);
  return v.size() == 1 ? std::vector<int64_t>{v[0], v[0]} : std::vector<int64_t>{v[0], v[1]};
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

std::atomic<bool> g_prefer_cudnn{true};

}  // namespace

ConvParams check_conv_bn_act_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                  const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift) {
  ConvParams c;
  c.stride = expand_pair(stride, "stride");
  c.padding = expand_pair(padding, "padding");
  c.dilation = expand_pair(dilation, "dilation");
  c.groups = groups;
  TORCH_CHECK(c.stride[0] > 0 && c.stride[1] > 0, "conv_bn_act: non-positive stride is not supported, got stride=",
              c.stride);
  TORCH_CHECK(c.padding[0] >= 0 && c.padding[1] >= 0,
              "conv_bn_act: negative padding is not supported, got padding=", c.padding);
  TORCH_CHECK(c.dilation[0] > 0 && c.dilation[1] > 0,
              "conv_bn_act: non-positive dilation is not supported, got dilation=", c.dilation);
  TORCH_CHECK(groups > 0, "conv_bn_act: non-positive groups is not supported, got groups=", groups);
  TORCH_CHECK(x.dim() == 4, "conv_bn_act: x must be a 4-D tensor (N, C, H, W), got shape ", shape_str(x));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "conv_bn_act: x must be a floating-point tensor, got ",
              x.scalar_type());
  TORCH_CHECK(weight.dim() == 4, "conv_bn_act: weight must be a 4-D tensor (K, C/groups, R, S), got shape ",
              shape_str(weight));
  check_like_x(x, weight, "weight");
  const int64_t C = x.size(1), K = weight.size(0);
  TORCH_CHECK(K > 0 && weight.size(2) > 0 && weight.size(3) > 0, "conv_bn_act: weight must not be empty, got shape ",
              shape_str(weight));
  TORCH_CHECK(C % groups == 0 && K % groups == 0, "conv_bn_act: groups=", groups,
              " must divide x's channels (", C, ") and weight's output channels (", K, ")");
  TORCH_CHECK(weight.size(1) * groups == C, "conv_bn_act: channel mismatch: x has ", C,
              " channels but weight of shape ", shape_str(weight), " expects ", weight.size(1) * groups,
              " (weight.size(1) * groups=", groups, ")");
  if (bias.has_value()) {
    check_like_x(x, *bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == K, "conv_bn_act: bias must have shape [", K,
                "] (one per output channel), got ", shape_str(*bias));
  }
  TORCH_CHECK(scale.has_value() == shift.has_value(),
              "conv_bn_act: scale and shift must be given together (the per-channel fp32 epilogue), got only ",
              scale.has_value() ? "scale" : "shift");
  for (const auto& [t, name] : {std::pair{&scale, "scale"}, std::pair{&shift, "shift"}}) {
    if (!t->has_value()) continue;
    const at::Tensor& v = **t;
    TORCH_CHECK(v.device() == x.device(), "conv_bn_act: ", name, " must be on x's device (", x.device(), "), got ",
                v.device());
    TORCH_CHECK(v.scalar_type() == at::kFloat, "conv_bn_act: ", name,
                " must be float32 (applied to the fp32 sum), got ", v.scalar_type());
    TORCH_CHECK(v.dim() == 1 && v.size(0) == K, "conv_bn_act: ", name, " must have shape [", K,
                "] (one per output channel), got ", shape_str(v));
  }
  const int64_t P = conv_output_size(x.size(2), weight.size(2), c.stride[0], c.padding[0], c.dilation[0]);
  const int64_t Q = conv_output_size(x.size(3), weight.size(3), c.stride[1], c.padding[1], c.dilation[1]);
  TORCH_CHECK(P > 0 && Q > 0, "conv_bn_act: x's spatial size (", x.size(2), ", ", x.size(3),
              ") is too small for a ", weight.size(2), "x", weight.size(3), " kernel with padding ", c.padding,
              " and dilation ", c.dilation);
  c.out_size = {x.size(0), K, P, Q};
  if (residual.has_value()) {
    check_like_x(x, *residual, "residual");
    TORCH_CHECK(residual->sizes() == at::IntArrayRef(c.out_size),
                "conv_bn_act: residual must have the output's shape ", at::IntArrayRef(c.out_size), ", got ",
                shape_str(*residual));
  }
  return c;
}

at::MemoryFormat output_format(const at::Tensor& x) { return x.suggest_memory_format(); }

std::vector<int64_t> output_strides(at::IntArrayRef sizes, at::MemoryFormat fmt) {
  // at::empty's own stride rule, without allocating.
  return at::empty(sizes, at::TensorOptions().device(at::kMeta).memory_format(fmt)).strides().vec();
}

at::Tensor in_output_layout(const at::Tensor& y, at::MemoryFormat fmt) {
  if (y.strides() == at::IntArrayRef(output_strides(y.sizes(), fmt))) return y;
  return at::empty(y.sizes(), y.options().memory_format(fmt)).copy_(y);
}

at::Tensor conv_bn_act_stock(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& residual, const ConvParams& c, bool relu,
                             const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift) {
  // The output takes x's memory format whatever the backend prefers, so the fake kernel can promise it.
  const auto fmt = output_format(x);
  // With scale and shift the bias comes after the scaling: the convolution runs without it.
  const std::optional<at::Tensor> conv_bias = scale.has_value() ? std::nullopt : bias;
  at::Tensor y;
  if (x.size(1) == 0) {
    // No input channels: the convolution is the empty sum. (ATen's convolution returns 0 output channels here,
    // which would contradict the weight's K, the bias and the residual.)
    y = at::zeros(c.out_size, x.options().memory_format(fmt));
    if (conv_bias.has_value()) y.add_(conv_bias->view({1, -1, 1, 1}));
  } else {
    // Dilation along a 1-tap kernel dimension changes nothing, and passing it on crashes oneDNN's CPU convolution
    // for some strides (PyTorch 2.14: a segfault with a 1-wide kernel, dilation 3 and stride 3; found by
    // tests/test_fuzz.py): it is not passed on.
    std::vector<int64_t> dilation = c.dilation;
    for (int i = 0; i < 2; ++i)
      if (weight.size(2 + i) == 1) dilation[i] = 1;
    y = in_output_layout(at::convolution(x, weight, conv_bias, c.stride, c.padding, dilation,
                                         /*transposed=*/false, /*output_padding=*/{0, 0}, c.groups),
                         fmt);
  }
  if (scale.has_value()) {
    // The epilogue in at least fp32 on the convolution's output (rounded to x's dtype once there, as a stock BN
    // reads it): y * scale + shift + bias + residual, then the ReLU, rounded once.
    const auto acc_type = at::promote_types(y.scalar_type(), at::kFloat);
    at::Tensor acc = y.scalar_type() == acc_type ? y : y.to(acc_type);
    acc.mul_(scale->view({1, -1, 1, 1})).add_(shift->view({1, -1, 1, 1}));
    if (bias.has_value()) acc.add_(bias->view({1, -1, 1, 1}));
    if (residual.has_value()) acc.add_(*residual);
    if (relu) acc.relu_();
    return acc.scalar_type() == x.scalar_type() ? acc : in_output_layout(acc.to(x.scalar_type()), fmt);
  }
  if (residual.has_value()) y.add_(*residual);
  if (relu) y.relu_();
  return y;
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

PathChoice choose_path(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, bool relu, int64_t groups, const std::optional<at::Tensor>& scale,
                       const std::optional<at::Tensor>& shift) {
  const ConvParams c =
      check_conv_bn_act_args(x, weight, bias, residual, stride, padding, dilation, groups, scale, shift);
  if (!x.is_cuda()) {
    const std::string parts = std::string("conv2d") + (scale.has_value() ? ", scale and shift" : "") +
                              (residual.has_value() ? ", residual add" : "") + (relu ? ", relu" : "");
    return {"stock", "device " + x.device().str() + ": stock ATen composition (" + parts + ")"};
  }
#ifdef RESNET_EXT_WITH_CUDA
  // The same operands, problem and dispatcher call as the CUDA kernel itself.
  const Decision d =
      choose_cuda_path(describe_cuda_call(launch_operands(x, weight, bias, residual, scale, shift), c, relu));
  return {d.path, d.reason};
#else
  return {"stock", "resnet_ext was built without CUDA kernels: stock ATen composition"};
#endif
}

namespace {

at::Tensor conv_bn_act_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, bool relu, int64_t groups,
                           const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift) {
  const ConvParams c =
      check_conv_bn_act_args(x, weight, bias, residual, stride, padding, dilation, groups, scale, shift);
  at::Tensor y = conv_bn_act_stock(x, weight, bias, residual, c, relu, scale, shift);
  count_path("stock:" + x.device().str());  // counted once it ran: a failed call changes no state
  return y;
}

}  // namespace

TORCH_LIBRARY(resnet_ext, m) {
  m.def(
      "conv_bn_act(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, int[2] stride, int[2] padding, "
      "int[2] dilation, bool relu, int groups=1, Tensor? scale=None, Tensor? shift=None) -> Tensor",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(resnet_ext, CPU, m) { m.impl("conv_bn_act", &conv_bn_act_cpu); }

#ifndef RESNET_EXT_WITH_CUDA
// A build without CUDA kernels still serves CUDA tensors (with a CUDA torch) through the stock composition.
TORCH_LIBRARY_IMPL(resnet_ext, CUDA, m) { m.impl("conv_bn_act", &conv_bn_act_cpu); }
#endif

}  // namespace resnet_ext
