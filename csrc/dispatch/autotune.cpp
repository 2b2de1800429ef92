#ifdef RESNET_EXT_WITH_CUDA

#include "dispatch/autotune.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime_api.h>

#include <limits>

namespace resnet_ext {

namespace {

// Two warm-up launches, then the mean of `iters` timed ones on the current stream (CUDA events).
template <typename F>
float time_ms(F&& fn, int iters = 5) {
  for (int i = 0; i < 2; ++i) fn();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  cudaEvent_t start = nullptr, stop = nullptr;
  C10_CUDA_CHECK(cudaEventCreate(&start));
  C10_CUDA_CHECK(cudaEventCreate(&stop));
  C10_CUDA_CHECK(cudaEventRecord(start, stream));
  for (int i = 0; i < iters; ++i) fn();
  C10_CUDA_CHECK(cudaEventRecord(stop, stream));
  C10_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.f;
  C10_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  C10_CUDA_CHECK(cudaEventDestroy(start));
  C10_CUDA_CHECK(cudaEventDestroy(stop));
  return ms / iters;
}

double tolerance(ScalarKind k) { return k == ScalarKind::BFloat16 ? 1e-2 : 3e-3; }

}  // namespace

KernelChoice autotune_problem(const ConvProblem& p, const ConvOperands& ops, const ConvParams& c, bool relu) {
  const at::Tensor& x = ops.x;
  const auto candidates = tuning_candidates(p);
  KernelChoice best{"", std::string("autotuned: the ") + fallback_path(p) + " path was fastest"};
  if (candidates.empty()) {
    best.reason = std::string("autotuned: no fused kernel can run the problem, the ") + fallback_path(p) + " path runs";
    store_tuned_choice(p, best);
    return best;
  }
  at::Tensor ref = conv_bn_act_stock(x, ops.w, ops.bias, ops.residual, c, relu, ops.scale, ops.shift);
  at::Tensor ref32 = ref.to(at::kFloat);
  const double scale = std::max(ref32.abs().max().item<double>(), 1e-6);
  // The fallback (cuDNN's fused op where it applies, else the stock composition) is a candidate too.
  float best_ms = time_ms([&] { conv_bn_act_fallback(p, ops, ops.w, ops.bias, c, relu); });
  std::string rejected;
  at::Tensor y = at::empty(c.out_size, x.options().memory_format(output_format(x)));
  for (const FusedKernelInfo* k : candidates) {
    y.fill_(std::numeric_limits<float>::quiet_NaN());
    // A candidate whose launch fails is rejected, not thrown: the call goes on with the others.
    std::string err = launch_fused(*k, p, ops, y);
    if (err.empty()) {
      const double diff = (y.to(at::kFloat) - ref32).abs().max().item<double>() / scale;
      if (!(diff <= tolerance(p.dtype))) err = "wrong output";  // NaN fails too
    }
    if (!err.empty()) {
      rejected += (rejected.empty() ? "" : ", ") + k->name + " (" + err + ")";
      continue;
    }
    bool launch_ok = true;
    const float ms = time_ms([&] { launch_ok = launch_ok && launch_fused(*k, p, ops, y).empty(); });
    if (!launch_ok) {
      rejected += (rejected.empty() ? "" : ", ") + k->name + " (a timed launch failed)";
      continue;
    }
    if (ms < best_ms) {
      best_ms = ms;
      best = {k->name, "autotuned: fastest candidate that matches the stock result"};
    }
  }
  if (!rejected.empty()) best.reason += " (rejected: " + rejected + ")";
  store_tuned_choice(p, best);
  return best;
}

}  // namespace resnet_ext

#endif  // RESNET_EXT_WITH_CUDA
