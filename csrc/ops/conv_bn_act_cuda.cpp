// CUDA kernel of resnet_ext::conv_bn_act: prepares the launch operands, describes the call to the dispatcher
// (dispatch/dispatch.h), and launches the fused kernel it returns on the current stream -- or runs the fallback
// (cuDNN's fused op, else the stock composition) for anything no kernel can run.
#ifdef RESNET_EXT_WITH_CUDA

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <atomic>
#include <limits>
#include <mutex>

#include "dispatch/autotune.h"
#include "ops/conv_bn_act.h"
#ifdef RESNET_EXT_EXPERIMENTAL
#include "experimental/cudnn_graphs.h"
#endif

namespace resnet_ext {

namespace {

#ifdef RESNET_EXT_EXPERIMENTAL  // test hooks, not in the default build
std::atomic<bool> g_poison_outputs{false};
std::mutex g_failing_mutex;
std::string g_failing_kernel;
#endif

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// A fresh copy of t in the given memory format (fresh allocations are aligned).
at::Tensor fresh_copy(const at::Tensor& t, at::MemoryFormat fmt) {
  return at::empty(t.sizes(), t.options().memory_format(fmt)).copy_(t);
}

Operand operand_of(const at::Tensor& t) {
  Operand o;
  o.present = true;
  o.dim = int(t.dim());
  for (int i = 0; i < o.dim && i < 4; ++i) {
    o.sizes[i] = t.size(i);
    o.strides[i] = t.stride(i);
  }
  o.address = reinterpret_cast<uint64_t>(t.data_ptr());
  return o;
}

ScalarKind scalar_kind(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ScalarKind::Float32;
    case at::kHalf: return ScalarKind::Float16;
    case at::kBFloat16: return ScalarKind::BFloat16;
    case at::kDouble: return ScalarKind::Float64;
    default: return ScalarKind::Other;
  }
}

}  // namespace

#ifdef RESNET_EXT_EXPERIMENTAL
void set_poison_outputs(bool on) { g_poison_outputs = on; }
bool poison_outputs() { return g_poison_outputs.load(std::memory_order_relaxed); }

void set_failing_kernel(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_failing_mutex);
  g_failing_kernel = name;
}
#endif

ConvOperands launch_operands(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& scale,
                             const std::optional<at::Tensor>& shift) {
  ConvOperands ops;
  ops.x = x;
  ops.residual = residual;
  // The kernels read KRSC filters: a channels_last weight is that layout already (the models cache it so).
  ops.w = weight.contiguous(at::MemoryFormat::ChannelsLast);
  if (!aligned16(ops.w)) ops.w = fresh_copy(ops.w, at::MemoryFormat::ChannelsLast);
  // The bias is K values: make it dense and aligned rather than give up the fused path (a strided b[::2] was
  // read as if dense before the dispatcher checked every operand).
  if (!bias.has_value()) {
    ops.bias = at::zeros({weight.size(0)}, x.options());
  } else if (!bias->is_contiguous() || !aligned16(*bias)) {
    ops.bias = fresh_copy(*bias, at::MemoryFormat::Contiguous);
  } else {
    ops.bias = *bias;
  }
  for (auto [from, to] : {std::pair{&scale, &ops.scale}, std::pair{&shift, &ops.shift}}) {
    if (!from->has_value()) continue;
    const at::Tensor& v = **from;
    *to = v.is_contiguous() && aligned16(v) ? v : fresh_copy(v, at::MemoryFormat::Contiguous);
  }
  return ops;
}

ConvProblem describe_cuda_call(const ConvOperands& ops, const ConvParams& c, bool relu) {
  const at::Tensor& x = ops.x;
  ConvProblem p;
  p.N = x.size(0);
  p.C = x.size(1);
  p.H = x.size(2);
  p.W = x.size(3);
  p.K = ops.w.size(0);
  p.R = ops.w.size(2);
  p.S = ops.w.size(3);
  p.stride_h = c.stride[0];
  p.stride_w = c.stride[1];
  p.pad_h = c.padding[0];
  p.pad_w = c.padding[1];
  p.dil_h = c.dilation[0];
  p.dil_w = c.dilation[1];
  p.groups = c.groups;
  p.P = c.out_size[2];
  p.Q = c.out_size[3];
  p.dtype = scalar_kind(x.scalar_type());
  p.has_residual = ops.residual.has_value();
  p.has_scale_shift = ops.scale.has_value();
  p.relu = relu;
  p.x = operand_of(x);
  p.w = operand_of(ops.w);
  p.bias = operand_of(ops.bias);
  if (ops.residual.has_value()) p.residual = operand_of(*ops.residual);
  if (p.has_scale_shift) {
    p.scale = operand_of(*ops.scale);
    p.shift = operand_of(*ops.shift);
  }
  // The op allocates y in x's suggested format (what the fake kernel promises): NHWC-dense for a channels_last x.
  p.y.present = true;
  p.y.dim = 4;
  const auto y_strides = output_strides(c.out_size, output_format(x));
  for (int i = 0; i < 4; ++i) {
    p.y.sizes[i] = c.out_size[i];
    p.y.strides[i] = y_strides[i];
  }
  p.allow_tf32 = at::globalContext().allowTF32CuDNN();
  p.prefer_cudnn = prefer_cudnn();
  // cuDNN's fused ops have no per-channel scale after the convolution.
  p.cudnn_fused_ok = relu && !p.has_scale_shift && at::globalContext().userEnabledCuDNN() && x.numel() > 0 &&
                     p.K > 0 &&
                     (p.dtype == ScalarKind::Float32 || p.dtype == ScalarKind::Float16 ||
                      p.dtype == ScalarKind::BFloat16);
#ifdef RESNET_EXT_EXPERIMENTAL
  p.cudnn_graph_ok = p.has_scale_shift && at::globalContext().userEnabledCuDNN() && p.groups == 1 && p.dil_h == 1 &&
                     p.dil_w == 1 && cudnn_graphs::takes_scale_shift(x, ops.w, ops.residual);
#endif
  p.device = x.get_device();
  const auto* props = at::cuda::getDeviceProperties(p.device);
  p.sm = props->major * 10 + props->minor;
  p.sm_count = props->multiProcessorCount;
  return p;
}

Decision choose_cuda_path(const ConvProblem& p) { return dispatch_conv(p); }

std::string launch_fused(const FusedKernelInfo& kernel, const ConvProblem& p, const ConvOperands& ops, at::Tensor& y) {
#ifdef RESNET_EXT_EXPERIMENTAL
  {
    std::lock_guard<std::mutex> lock(g_failing_mutex);
    if (!g_failing_kernel.empty() && g_failing_kernel == kernel.name) return "launch failed on purpose (test switch)";
  }
#endif
  ConvLaunchArgs args;
  args.problem = p;
  args.x = ops.x.data_ptr();
  args.w = ops.w.data_ptr();
  args.bias = ops.bias.data_ptr();
  args.residual = ops.residual.has_value() ? ops.residual->data_ptr() : nullptr;
  args.scale = ops.scale.has_value() ? ops.scale->data_ptr<float>() : nullptr;
  args.shift = ops.shift.has_value() ? ops.shift->data_ptr<float>() : nullptr;
  args.y = y.data_ptr();
  const size_t ws = kernel.workspace_bytes ? kernel.workspace_bytes(p) : 0;
  at::Tensor workspace;
  if (ws > 0) {
    workspace = at::empty({int64_t(ws)}, ops.x.options().dtype(at::kByte));
    args.workspace = workspace.data_ptr();
    args.workspace_bytes = ws;
  }
  args.stream = static_cast<void*>(at::cuda::getCurrentCUDAStream(ops.x.get_device()).stream());
  return kernel.launch(args);
}

// cuDNN's own fused conv+bias+ReLU (+ residual add): the fallback for ReLU layers without a fused kernel of ours,
// and the choice on Hopper where it beats them; for a scale/shift problem, the cuDNN graph with that epilogue
// (experimental build).
at::Tensor conv_bn_act_fallback(const ConvProblem& p, const ConvOperands& ops, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, const ConvParams& c, bool relu,
                                std::string* ran) {
  const at::Tensor& x = ops.x;
  const std::optional<at::Tensor>& residual = ops.residual;
  if (p.cudnn_fused_ok) {
    const auto fmt = output_format(x);
    // cuDNN's fused ops want the input's memory format on the weight and the residual too.
    const at::Tensor w = weight.contiguous(fmt);
    try {
      at::Tensor y = residual.has_value()
                         ? at::cudnn_convolution_add_relu(x, w, residual->contiguous(fmt), 1.0, bias, c.stride,
                                                          c.padding, c.dilation, c.groups)
                         : at::cudnn_convolution_relu(x, w, bias, c.stride, c.padding, c.dilation, c.groups);
      if (ran) *ran = "cudnn_fused";
      return in_output_layout(y, fmt);
    } catch (const c10::Error& e) {
      // Seen on an H200 (cuDNN 9.19) for some fuzzed problems: "GET was unable to find an engine". The fused op has
      // no other engine to try; the stock composition computes the same thing. Anything else is a real error.
      if (std::string(e.what()).find("unable to find an engine") == std::string::npos) throw;
    }
  }
#ifdef RESNET_EXT_EXPERIMENTAL
  if (p.cudnn_graph_ok) {  // none where cuDNN builds no plan for the graph: the stock composition then
    if (auto y = cudnn_graphs::conv_scale_shift(x, ops.w, bias, residual, c.stride, c.padding, relu, *ops.scale,
                                                *ops.shift)) {
      if (ran) *ran = "cudnn_graph";
      return *y;
    }
  }
#endif
  if (ran) *ran = "stock";
  return conv_bn_act_stock(x, weight, bias, residual, c, relu, ops.scale, ops.shift);
}

namespace {

at::Tensor conv_bn_act_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, bool relu, int64_t groups,
                            const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift) {
  const ConvParams c =
      check_conv_bn_act_args(x, weight, bias, residual, stride, padding, dilation, groups, scale, shift);
  c10::cuda::CUDAGuard guard(x.device());
  const ConvOperands ops = launch_operands(x, weight, bias, residual, scale, shift);
  const ConvProblem p = describe_cuda_call(ops, c, relu);
  // First call for this problem with the autotuner on: time the candidates now (never while a graph is captured,
  // where synchronising is not allowed: the dispatcher's other sources decide then).
  if (autotune_enabled() && !tuned_choice(p).has_value() &&
      c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None)
    autotune_problem(p, ops, c, relu);
  // The same call explain() makes; the tuned choice, if any, is re-checked there like every other.
  const Decision d = choose_cuda_path(p);
  if (!d.fused()) {
    // The fallbacks get the same dense, aligned bias a fused kernel would (not a strided view).
    const std::optional<at::Tensor> dense_bias = bias.has_value() ? std::optional<at::Tensor>(ops.bias) : std::nullopt;
    std::string ran;
    at::Tensor y = conv_bn_act_fallback(p, ops, weight, dense_bias, c, relu, &ran);
    count_path(ran + ":cuda");  // what ran: cuDNN may have found no engine for a problem explain() sent to it
    return y;
  }
  at::Tensor y = at::empty(c.out_size, x.options().memory_format(output_format(x)));  // as described to dispatch
#ifdef RESNET_EXT_EXPERIMENTAL
  if (g_poison_outputs.load(std::memory_order_relaxed)) y.fill_(std::numeric_limits<float>::quiet_NaN());
#endif
  const std::string err = launch_fused(*d.kernel, p, ops, y);
  TORCH_CHECK(err.empty(), "conv_bn_act: fused kernel ", d.kernel->name, " failed for ", p.to_string(), ": ", err);
  count_path(d.path);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(resnet_ext, CUDA, m) { m.impl("conv_bn_act", &conv_bn_act_cuda); }

}  // namespace resnet_ext

#endif  // RESNET_EXT_WITH_CUDA
