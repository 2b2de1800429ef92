// CUDA kernel of resnet_ext::conv_bn_act: picks a fused kernel for the problem (heuristic or autotuned),
// launches it on the current stream, and falls back to the stock composition for anything it cannot run.
#ifdef RESNET_EXT_WITH_CUDA

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <atomic>
#include <mutex>
#include <limits>

#include "conv_bn_act.h"
#include "autotune.h"

namespace resnet_ext {

std::atomic<bool> g_poison_outputs{false};

namespace {
int device_sm(const at::Tensor& x) {
  const auto* props = at::cuda::getDeviceProperties(x.get_device());
  return props->major * 10 + props->minor;
}
}  // namespace

// Tests pin one kernel by name (resnet_ext._C.force_kernel) to check it on every shape it accepts.
std::mutex g_forced_mutex;
std::string g_forced_kernel;

void force_kernel(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_forced_mutex);
  g_forced_kernel = name;
}

KernelChoice choose_cuda_path(const ConvProblem& problem, const at::Tensor& x) {
  ConvProblem p = problem;
  p.sm = device_sm(x);
  {
    std::lock_guard<std::mutex> lock(g_forced_mutex);
    if (!g_forced_kernel.empty()) {
      for (const auto& k : fused_kernel_registry())
        if (k.name == g_forced_kernel && k.dtype == p.dtype && p.sm >= k.min_sm && p.sm <= k.max_sm &&
            common_fallback_reason(p).empty() && k.can_implement(p).empty())
          return {k.name, "forced by resnet_ext._C.force_kernel"};
    }
  }
  KernelChoice tuned = autotuned_choice(p, x.get_device());
  if (tuned.fused() || !tuned.reason.empty()) return tuned;
  return select_conv_kernel(p);
}

namespace {

const FusedKernelInfo* find_kernel(const std::string& name) {
  for (const auto& k : fused_kernel_registry())
    if (k.name == name) return &k;
  return nullptr;
}

}  // namespace

void launch_fused(const FusedKernelInfo& kernel, const ConvProblem& p, const at::Tensor& x, const at::Tensor& w,
                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                  at::Tensor& y) {
  ConvLaunchArgs args;
  args.problem = p;
  args.x = x.data_ptr();
  args.w = w.data_ptr();
  args.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  args.residual = residual.has_value() ? residual->data_ptr() : nullptr;
  args.y = y.data_ptr();
  args.stream = static_cast<void*>(at::cuda::getCurrentCUDAStream(x.get_device()).stream());
  std::string err = kernel.launch(args);
  TORCH_CHECK(err.empty(), "conv_bn_act: fused kernel ", kernel.name, " failed for ", p.to_string(), ": ", err);
}

// cuDNN's own fused conv+bias+ReLU (+ residual add): the fallback for ReLU layers without a fused kernel of ours,
// and the choice on Hopper where it beats them.
at::Tensor conv_bn_act_cudnn_fused(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                   const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  at::Tensor y = residual.has_value()
                     ? at::cudnn_convolution_add_relu(x, weight, *residual, 1.0, bias, stride, padding, dilation, groups)
                     : at::cudnn_convolution_relu(x, weight, bias, stride, padding, dilation, groups);
  return y.contiguous(x.suggest_memory_format());
}

at::Tensor conv_bn_act_fallback(const ConvProblem& p, const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool relu,
                                int64_t groups) {
  if (p.cudnn_fused_ok) {
    count_path("cudnn_fused:cuda");
    // cuDNN's fused ops want the input's memory format on the residual too.
    std::optional<at::Tensor> r = residual;
    if (r.has_value()) r = r->contiguous(x.suggest_memory_format());
    return conv_bn_act_cudnn_fused(x, weight.contiguous(x.suggest_memory_format()), bias, r, stride, padding,
                                   dilation, groups);
  }
  count_path("stock:cuda");
  return conv_bn_act_stock(x, weight, bias, residual, stride, padding, dilation, relu, groups);
}

at::Tensor conv_bn_act_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, bool relu, int64_t groups) {
  auto out_size = check_conv_bn_act_args(x, weight, bias, residual, stride, padding, dilation, groups);
  c10::cuda::CUDAGuard guard(x.device());
  ConvProblem p = make_conv_problem(x, weight, bias, residual, stride, padding, dilation, relu, groups);
  p.sm = device_sm(x);  // part of the autotuner's cache key
  KernelChoice choice = choose_cuda_path(p, x);
  const FusedKernelInfo* kernel = choice.fused() ? find_kernel(choice.kernel) : nullptr;
  if (!kernel) return conv_bn_act_fallback(p, x, weight, bias, residual, stride, padding, dilation, relu, groups);
  // The kernels read KRSC filters: a channels_last weight is that layout already (the models cache it so).
  at::Tensor w = weight.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor b = bias.has_value() ? *bias : at::zeros({p.K}, x.options());
  // First call for this shape with the autotuner on: time the candidates now (never while a graph is captured,
  // where synchronising is not allowed: the heuristic choice stands then).
  if (autotune_enabled() && autotuned_choice(p, x.get_device()).reason.empty() &&
      c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None) {
    choice = autotune_problem(p, x, w, b, residual, stride, padding, dilation, relu, groups);
    kernel = choice.fused() ? find_kernel(choice.kernel) : nullptr;
    if (!kernel) return conv_bn_act_fallback(p, x, weight, bias, residual, stride, padding, dilation, relu, groups);
  }
  at::Tensor y = at::empty(out_size, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (g_poison_outputs.load(std::memory_order_relaxed)) y.fill_(std::numeric_limits<float>::quiet_NaN());
  launch_fused(*kernel, p, x, w, b, residual, y);
  count_path("fused:" + kernel->name);
  return y;
}

TORCH_LIBRARY_IMPL(resnet_ext, CUDA, m) { m.impl("conv_bn_act", &conv_bn_act_cuda); }

}  // namespace resnet_ext

#endif  // RESNET_EXT_WITH_CUDA
