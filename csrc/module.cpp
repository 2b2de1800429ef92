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
void force_kernel(const std::string& name);
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
  if (c.fused()) return {"fused:" + c.kernel, c.reason};
  if (!x.is_cuda()) return {"stock", c.reason};
  auto p = resnet_ext::make_conv_problem(x, weight, bias, residual, stride, padding, dilation, relu, groups);
  return {resnet_ext::fallback_path(p), c.reason};
}

// A ConvProblem from a dict of shape facts, so kernel selection can be exercised without tensors or a GPU.
resnet_ext::ConvProblem problem_from_dict(const pybind11::dict& d) {
  auto get = [&](const char* k, int64_t dflt) { return d.contains(k) ? d[k].cast<int64_t>() : dflt; };
  resnet_ext::ConvProblem p;
  p.N = get("N", 1), p.C = get("C", 0), p.H = get("H", 0), p.W = get("W", 0);
  p.K = get("K", 0), p.R = get("R", 1), p.S = get("S", p.R);
  p.stride_h = p.stride_w = get("stride", 1);
  p.pad_h = p.pad_w = get("padding", 0);
  p.dil_h = p.dil_w = get("dilation", 1);
  p.groups = get("groups", 1);
  p.sm = static_cast<int>(get("sm", 90));
  const std::string dtype = d.contains("dtype") ? d["dtype"].cast<std::string>() : "bfloat16";
  using resnet_ext::ScalarKind;
  p.dtype = dtype == "float16"    ? ScalarKind::Float16
            : dtype == "bfloat16" ? ScalarKind::BFloat16
            : dtype == "float32"  ? ScalarKind::Float32
            : dtype == "float64"  ? ScalarKind::Float64
                                  : ScalarKind::Other;
  p.has_residual = d.contains("residual") && d["residual"].cast<bool>();
  p.relu = !d.contains("relu") || d["relu"].cast<bool>();
  p.allow_tf32 = !d.contains("allow_tf32") || d["allow_tf32"].cast<bool>();
  p.x_channels_last = !d.contains("channels_last") || d["channels_last"].cast<bool>();
  p.cudnn_fused_ok = p.relu && (!d.contains("cudnn") || d["cudnn"].cast<bool>());
  p.prefer_cudnn = resnet_ext::prefer_cudnn();
  TORCH_CHECK(p.compute_output_size(), "select_kernel: empty output for ", p.to_string());
  const int64_t elem = p.dtype == ScalarKind::Float32 ? 4 : 2;
  p.max_tensor_bytes = elem * std::max({p.N * p.C * p.H * p.W, p.N * p.K * p.P * p.Q, p.K * p.C * p.R * p.S});
  return p;
}

std::pair<std::string, std::string> select_kernel(const pybind11::dict& d) {
  auto c = resnet_ext::select_conv_kernel(problem_from_dict(d));
  return {c.kernel, c.reason};
}

std::string kernel_can_implement(const std::string& name, const pybind11::dict& d) {
  for (const auto& k : resnet_ext::fused_kernel_registry())
    if (k.name == name) return k.can_implement(problem_from_dict(d));
  TORCH_CHECK(false, "kernel_can_implement: no fused kernel named ", name);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "resnet_ext compiled core";
  m.def("build_info", &build_info, "How this extension was built");
  m.def("explain", &explain, "Which path conv_bn_act takes for these arguments, and why");
  m.def("select_kernel", &select_kernel, "Heuristic kernel choice for a problem given as a dict (no GPU needed)");
  m.def("kernel_can_implement", &kernel_can_implement, "'' if the named kernel accepts the problem, else why not");
  m.def("set_prefer_cudnn", &resnet_ext::set_prefer_cudnn);
  m.def("prefer_cudnn", &resnet_ext::prefer_cudnn);
  m.def("path_counts", &resnet_ext::path_counts, "How often each conv_bn_act path ran");
  m.def("reset_path_counts", &resnet_ext::reset_path_counts);
#ifdef RESNET_EXT_WITH_CUDA
  m.def("set_poison_outputs", [](bool on) { resnet_ext::g_poison_outputs = on; },
        "Fill fused outputs with NaN before each launch (tests)");
  m.def("force_kernel", &resnet_ext::force_kernel, "Pin the named fused kernel where it applies ('' to unpin; tests)");
  m.def("set_autotune", &resnet_ext::set_autotune_enabled);
  m.def("autotune_enabled", &resnet_ext::autotune_enabled);
  m.def("clear_autotune_cache", &resnet_ext::clear_autotune_cache);
#else
  m.def("set_poison_outputs", [](bool) {});
  m.def("force_kernel", [](const std::string&) {});
  m.def("set_autotune", [](bool) {});
  m.def("autotune_enabled", []() { return false; });
  m.def("clear_autotune_cache", []() {});
#endif
}
