// The Python module resnet_ext._C: build facts, which path a call takes, path counters, debug switches.
// The ops themselves are registered with the dispatcher (TORCH_LIBRARY) when this module is imported.
#include <torch/extension.h>

#include "conv_bn_act.h"
#ifdef RESNET_EXT_WITH_CUDA
#include "autotune.h"
#endif

namespace resnet_ext {
std::unordered_map<std::string, int64_t> path_counts();
void reset_path_counts();
#ifdef RESNET_EXT_WITH_CUDA
extern std::atomic<bool> g_poison_outputs;
#endif
}  // namespace resnet_ext

namespace {

pybind11::dict build_info() {
  pybind11::dict d;
#ifdef RESNET_EXT_WITH_CUDA
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
  d["cuda_archs"] = std::string(RESNET_EXT_CUDA_ARCHS);
  d["torch_version"] = std::string(RESNET_EXT_TORCH_VERSION);
  pybind11::list kernels;
  for (const auto& k : resnet_ext::fused_kernel_registry()) kernels.append(k.name);
  d["fused_kernels"] = kernels;
  return d;
}

std::pair<std::string, std::string> explain(const at::Tensor& x, const at::Tensor& weight,
                                            const std::optional<at::Tensor>& bias,
                                            const std::optional<at::Tensor>& residual, std::vector<int64_t> stride,
                                            std::vector<int64_t> padding, std::vector<int64_t> dilation, bool relu,
                                            int64_t groups) {
  auto c = resnet_ext::choose_path(x, weight, bias, residual, stride, padding, dilation, relu, groups);
  return {c.fused() ? "fused:" + c.kernel : "stock", c.reason};
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "resnet_ext compiled core";
  m.def("build_info", &build_info, "How this extension was built");
  m.def("explain", &explain, "Which path conv_bn_act takes for these arguments, and why");
  m.def("path_counts", &resnet_ext::path_counts, "How often each conv_bn_act path ran");
  m.def("reset_path_counts", &resnet_ext::reset_path_counts);
#ifdef RESNET_EXT_WITH_CUDA
  m.def("set_poison_outputs", [](bool on) { resnet_ext::g_poison_outputs = on; },
        "Fill fused outputs with NaN before each launch (tests)");
  m.def("set_autotune", &resnet_ext::set_autotune_enabled);
  m.def("autotune_enabled", &resnet_ext::autotune_enabled);
  m.def("clear_autotune_cache", &resnet_ext::clear_autotune_cache);
#else
  m.def("set_poison_outputs", [](bool) {});
  m.def("set_autotune", [](bool) {});
  m.def("autotune_enabled", []() { return false; });
  m.def("clear_autotune_cache", []() {});
#endif
}
