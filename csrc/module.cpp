// The Python module resnet_ext._C: build facts, which path a call takes (explain), path counters and the run-time
// switches; in a RESNET_EXT_EXPERIMENTAL=1 build also the test hooks (the dispatcher's host-side entry on fake
// registries, select_kernel: no GPU needed; poisoned outputs; failing launches; the opt-in BN kernels). The ops
// themselves are registered with PyTorch's dispatcher (TORCH_LIBRARY in ops/) when this module is imported.
#include <torch/extension.h>

#include "cpu_program.h"
#include "dispatch/dispatch.h"
#include "ops/cpu_memory.h"
#include "ops/conv_bn_act.h"
#include "ops/same_bytes.h"
#include "structure_check.h"
#ifdef RESNET_EXT_WITH_CUDA
#include "kernels/bn_act_kernels.h"
#ifdef RESNET_EXT_EXPERIMENTAL
#include "experimental/cudnn_graphs.h"
#endif
#endif

// setup.py generates this header (in its build directory) with the build id of the csrc/ sources.
#if __has_include("resnet_ext_build_id.h")
#include "resnet_ext_build_id.h"
#endif
#ifndef RESNET_EXT_BUILD_ID
#define RESNET_EXT_BUILD_ID "unknown"
#endif
#ifndef RESNET_EXT_CUDA_IMAGES
#define RESNET_EXT_CUDA_IMAGES ""
#endif

// The build id of the sources this binary was built from, findable in the file without loading it:
// resnet_ext/_C_loader.py reads it to refuse a _C built from other sources.
__attribute__((used)) static const char kBuildIdMarker[] = "RESNET_EXT_BUILD_ID=" RESNET_EXT_BUILD_ID ";";

namespace {

using resnet_ext::ConvProblem;
using resnet_ext::FusedKernelInfo;
using resnet_ext::ScalarKind;

pybind11::dict build_info() {
  pybind11::dict d;
#ifdef RESNET_EXT_WITH_CUDA
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
  d["cuda_archs"] = std::string(RESNET_EXT_CUDA_ARCHS);
  d["cuda_images"] = resnet_ext::cuda_images_string(resnet_ext::compiled_cuda_images());
  d["torch_version"] = std::string(RESNET_EXT_TORCH_VERSION);
  const std::string marker(kBuildIdMarker);  // "RESNET_EXT_BUILD_ID=<id>;"
  d["build_id"] = marker.substr(marker.find('=') + 1, marker.size() - marker.find('=') - 2);
  pybind11::list kernels;
  for (const auto& k : resnet_ext::fused_kernel_registry()) kernels.append(k.name);
  d["fused_kernels"] = kernels;
#ifdef RESNET_EXT_EXPERIMENTAL
  d["experimental"] = true;
#else
  d["experimental"] = false;
#endif
  return d;
}

std::pair<std::string, std::string> explain(const at::Tensor& x, const at::Tensor& weight,
                                            const std::optional<at::Tensor>& bias,
                                            const std::optional<at::Tensor>& residual, std::vector<int64_t> stride,
                                            std::vector<int64_t> padding, std::vector<int64_t> dilation, bool relu,
                                            int64_t groups, const std::optional<at::Tensor>& scale,
                                            const std::optional<at::Tensor>& shift) {
  auto c =
      resnet_ext::choose_path(x, weight, bias, residual, stride, padding, dilation, relu, groups, scale, shift);
  return {c.path, c.reason};
}

#ifdef RESNET_EXT_EXPERIMENTAL
ScalarKind scalar_kind_of(const std::string& dtype) {
  return dtype == "float16"    ? ScalarKind::Float16
         : dtype == "bfloat16" ? ScalarKind::BFloat16
         : dtype == "float32"  ? ScalarKind::Float32
         : dtype == "float64"  ? ScalarKind::Float64
                               : ScalarKind::Other;
}

// A ConvProblem from a dict of shape facts, so kernel selection can be exercised without tensors or a GPU.
// Operands are packed (NHWC/KRSC) at aligned addresses unless the dict says otherwise:
//   channels_last=False (x NCHW), residual_channels_last=False, bias_stride=2, misaligned="x"|"weight"|...,
//   scale_shift=True (the fp32 scale/shift epilogue),
//   x_strides=[...] (logical NCHW order), sm, sm_count, device.
ConvProblem problem_from_dict(const pybind11::dict& d) {
  auto get = [&](const char* k, int64_t dflt) { return d.contains(k) ? d[k].cast<int64_t>() : dflt; };
  auto flag = [&](const char* k, bool dflt) { return d.contains(k) ? d[k].cast<bool>() : dflt; };
  ConvProblem p;
  p.N = get("N", 1), p.C = get("C", 0), p.H = get("H", 0), p.W = get("W", 0);
  p.K = get("K", 0), p.R = get("R", 1), p.S = get("S", p.R);
  p.stride_h = p.stride_w = get("stride", 1);
  p.pad_h = p.pad_w = get("padding", 0);
  p.dil_h = p.dil_w = get("dilation", 1);
  p.groups = get("groups", 1);
  p.sm = static_cast<int>(get("sm", 90));
  p.sm_count = static_cast<int>(get("sm_count", p.sm >= 90 ? 132 : 108));
  p.device = static_cast<int>(get("device", 0));
  p.dtype = scalar_kind_of(d.contains("dtype") ? d["dtype"].cast<std::string>() : "bfloat16");
  p.has_residual = flag("residual", false);
  p.has_scale_shift = flag("scale_shift", false);
  p.relu = flag("relu", true);
  p.allow_tf32 = flag("allow_tf32", true);
  p.cudnn_fused_ok = p.relu && !p.has_scale_shift && flag("cudnn", true);  // as describe_cuda_call decides
  p.cudnn_graph_ok = p.has_scale_shift && flag("cudnn", true) && p.groups == 1 && p.dil_h == 1 &&
                     (p.dtype == ScalarKind::Float16 || p.dtype == ScalarKind::BFloat16) &&
                     flag("channels_last", true);  // as describe_cuda_call decides for aligned operands
  p.prefer_cudnn = d.contains("prefer_cudnn") ? d["prefer_cudnn"].cast<bool>() : resnet_ext::prefer_cudnn();
  TORCH_CHECK(p.compute_output_size(), "select_kernel: empty output for ", p.to_string());
  p.set_packed_operands();
  // Addresses: distinct, 256-byte aligned, as an allocator would give.
  uint64_t next = 1 << 20;
  for (resnet_ext::Operand* o : {&p.x, &p.w, &p.bias, &p.residual, &p.y, &p.scale, &p.shift})
    if (o->present && o != &p.y) o->address = (next += 1 << 30);
  auto nchw = [](resnet_ext::Operand& o) {
    o.strides[3] = 1, o.strides[2] = o.sizes[3], o.strides[1] = o.sizes[2] * o.sizes[3];
    o.strides[0] = o.sizes[1] * o.strides[1];
  };
  if (!flag("channels_last", true)) nchw(p.x);
  if (p.has_residual && !flag("residual_channels_last", true)) nchw(p.residual);
  if (d.contains("bias_stride")) p.bias.strides[0] = get("bias_stride", 1);
  if (d.contains("x_strides")) {
    auto s = d["x_strides"].cast<std::vector<int64_t>>();
    TORCH_CHECK(s.size() == 4, "select_kernel: x_strides needs 4 entries");
    for (int i = 0; i < 4; ++i) p.x.strides[i] = s[i];
  }
  if (d.contains("misaligned")) {
    const std::string which = d["misaligned"].cast<std::string>();
    resnet_ext::Operand* o = which == "x" ? &p.x : which == "weight" ? &p.w : which == "bias" ? &p.bias
                             : which == "residual" ? &p.residual : which == "y" ? &p.y
                             : which == "scale" ? &p.scale : which == "shift" ? &p.shift : nullptr;
    TORCH_CHECK(o != nullptr && o->present, "select_kernel: no operand ", which);
    o->address += 2;
  }
  return p;
}

// A fake kernel for dispatcher tests: {name, dtype, min_sm, max_sm, image_sm, arch_specific, verified (list of sm),
// reject (reason or ""), score, workspace, scale_shift}.
FusedKernelInfo fake_kernel(const pybind11::dict& d) {
  FusedKernelInfo k;
  k.name = d["name"].cast<std::string>();
  k.dtype = scalar_kind_of(d.contains("dtype") ? d["dtype"].cast<std::string>() : "bfloat16");
  k.min_sm = d.contains("min_sm") ? d["min_sm"].cast<int>() : 80;
  k.max_sm = d.contains("max_sm") ? d["max_sm"].cast<int>() : 1000;
  k.image.image_sm = d.contains("image_sm") ? d["image_sm"].cast<int>() : k.min_sm;
  k.image.arch_specific = d.contains("arch_specific") && d["arch_specific"].cast<bool>();
  k.scale_shift = d.contains("scale_shift") && d["scale_shift"].cast<bool>();
  k.verified_sms = d.contains("verified") ? d["verified"].cast<std::vector<int>>() : std::vector<int>{80, 86, 89, 90};
  const std::string reject = d.contains("reject") ? d["reject"].cast<std::string>() : "";
  const int score = d.contains("score") ? d["score"].cast<int>() : 0;
  const size_t workspace = d.contains("workspace") ? d["workspace"].cast<size_t>() : 0;
  k.can_implement = [reject](const ConvProblem&) { return reject; };
  k.score = [score](const ConvProblem&) { return score; };
  k.workspace_bytes = [workspace](const ConvProblem&) { return workspace; };
  k.launch = [](const resnet_ext::ConvLaunchArgs&) { return std::string("a fake kernel does not launch"); };
  return k;
}

// The dispatcher's decision for a problem given as a dict. By default with this build's kernels, images, forced
// kernel and autotune cache (what a CUDA call would get); tests may pass fake kernels, an image list, a forced
// kernel, a tuned or a table entry instead. Returns (kernel or "", reason, path, source, workspace bytes).
pybind11::tuple select_kernel(const pybind11::dict& d, std::optional<pybind11::list> kernels,
                              std::optional<std::string> images, std::optional<std::string> forced,
                              std::optional<std::string> tuned, std::optional<std::string> table) {
  const ConvProblem p = problem_from_dict(d);
  std::vector<FusedKernelInfo> fakes;
  if (kernels.has_value())
    for (auto item : *kernels) fakes.push_back(fake_kernel(item.cast<pybind11::dict>()));
  const std::vector<resnet_ext::CudaImage> image_list =
      images.has_value() ? resnet_ext::parse_cuda_images(*images) : resnet_ext::compiled_cuda_images();
  resnet_ext::DispatchInputs in;
  in.registry = kernels.has_value() ? &fakes : &resnet_ext::fused_kernel_registry();
  in.images = &image_list;
  in.forced = forced.has_value() ? *forced : resnet_ext::forced_kernel();
  if (tuned.has_value()) {
    in.tuned = resnet_ext::KernelChoice{*tuned, "autotuned (given)"};
  } else if (resnet_ext::autotune_enabled()) {
    in.tuned = resnet_ext::tuned_choice(p);
    in.tuning_pending = !in.tuned.has_value();
  }
  if (table.has_value()) in.table = resnet_ext::KernelChoice{*table, "measured table (given)"};
  const resnet_ext::Decision dec = resnet_ext::dispatch_conv(p, in);
  return pybind11::make_tuple(dec.fused() ? dec.kernel->name : std::string(), dec.reason, dec.path,
                              std::string(resnet_ext::choice_source_name(dec.source)), dec.workspace_bytes);
}

std::string kernel_can_implement(const std::string& name, const pybind11::dict& d) {
  for (const auto& k : resnet_ext::fused_kernel_registry())
    if (k.name == name) return k.can_implement(problem_from_dict(d));
  TORCH_CHECK(false, "kernel_can_implement: no fused kernel named ", name);
}

// A problem's autotune-cache key (tests: keys differ whenever the facts a choice depends on differ).
std::string problem_key(const pybind11::dict& d) { return problem_from_dict(d).key(); }

#endif  // RESNET_EXT_EXPERIMENTAL

}  // namespace

PYBIND11_MODULE(_C, m) {
  namespace py = pybind11;
  m.doc() = "resnet_ext compiled core";
  m.def("build_info", &build_info, "How this extension was built");
  m.def("explain", &explain, "Which path conv_bn_act takes for these arguments, and why");
  m.def("set_prefer_cudnn", &resnet_ext::set_prefer_cudnn);
  m.def("prefer_cudnn", &resnet_ext::prefer_cudnn);
  m.def("path_counts", &resnet_ext::path_counts, "How often each conv_bn_act path ran");
  m.def("reset_path_counts", &resnet_ext::reset_path_counts);
  m.def("force_kernel", &resnet_ext::force_kernel, "Pin the named fused kernel where it can run ('' to unpin)");
  m.def("forced_kernel", &resnet_ext::forced_kernel);
  m.def("set_autotune", &resnet_ext::set_autotune_enabled);
  m.def("autotune_enabled", &resnet_ext::autotune_enabled);
  m.def("clear_autotune_cache", &resnet_ext::clear_autotune_cache);
  m.def("autotune_cache_size", &resnet_ext::autotune_cache_size);
  m.def("cpu_memory_scope", &resnet_ext::cpu_memory::scope, "Open or close the CPU memory-reuse scope on this thread");
  m.def("cpu_memory_next_forward", &resnet_ext::cpu_memory::next_forward,
        "A model forward starts: free kept blocks not reused within the last few forwards");
  m.def("set_cpu_memory_limit", &resnet_ext::cpu_memory::set_limit);
  m.def("empty_cpu_cache", &resnet_ext::cpu_memory::empty_cache);
  m.def("same_bytes", &resnet_ext::same_bytes, "Whether CPU tensors are byte for byte what the snapshot recorded");
  m.def("snapshot_tensors", &resnet_ext::snapshot_tensors, py::arg("snapshot"), py::arg("count"),
        "Copies of the tensors a same_bytes snapshot recorded");
  m.def("allocated", &resnet_ext::allocated, "Whether every strided tensor's storage still holds its elements");
  m.def("all_bounded", &resnet_ext::all_bounded, py::arg("x"), py::arg("log2_bound") = 1 << 16,
        "Whether every element of a floating-point tensor is finite and below 2**log2_bound in magnitude");
  m.def("bounded_bfloat16", &resnet_ext::bounded_bfloat16, py::arg("x"), py::arg("log2_bound") = 1 << 16,
        "x.to(torch.bfloat16), or None where not all_bounded(x, log2_bound)");
  m.def("structure_state", &resnet_ext::structure_state,
        "Whether a model is still what its Structure recorded: 0 changed, 1 as recorded, 2 hooks added only");
  py::class_<resnet_ext::FoldSources>(m, "FoldSources", "The tensors a frozen model's folds were made from")
      .def(py::init<const py::list&>(), py::arg("tensors"))
      .def("holds", &resnet_ext::FoldSources::holds)
      .def_static("folded", &resnet_ext::FoldSources::folded, py::arg("tensor"))
      .def("__len__", &resnet_ext::FoldSources::size);
  py::class_<resnet_ext::CpuProgram>(m, "CpuProgram", "A recorded sequence of operator calls (engine/cpu.py)")
      .def(py::init<>())
      .def("add", &resnet_ext::CpuProgram::add, py::arg("name"), py::arg("overload"), py::arg("args"),
           py::arg("slots"), py::arg("out"))
      .def("finish", &resnet_ext::CpuProgram::finish, py::arg("result"))
      // Without the GIL, as each op called from Python runs: the program calls no Python (engine/replay.py).
      .def("run", &resnet_ext::CpuProgram::run, py::arg("x"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("calls", &resnet_ext::CpuProgram::calls);
  m.def("cpu_memory_stats", []() {
    const auto s = resnet_ext::cpu_memory::stats();
    pybind11::dict d;
    d["kept_bytes"] = s.kept_bytes;
    d["limit"] = s.limit;
    d["blocks"] = s.blocks;
    d["installed"] = s.installed;
    return d;
  });
#ifdef RESNET_EXT_EXPERIMENTAL
  m.def("select_kernel", &select_kernel, "The dispatcher's decision for a problem given as a dict (no GPU needed)",
        py::arg("problem"), py::arg("kernels") = py::none(), py::arg("images") = py::none(),
        py::arg("forced") = py::none(), py::arg("tuned") = py::none(), py::arg("table") = py::none());
  m.def("kernel_can_implement", &kernel_can_implement, "'' if the named kernel accepts the problem, else why not");
  m.def("problem_key", &problem_key, "The autotune-cache key of a problem given as a dict");
  m.def("parse_cuda_images", [](const std::string& s) {
    return resnet_ext::cuda_images_string(resnet_ext::parse_cuda_images(s));
  });
#ifdef RESNET_EXT_WITH_CUDA
  m.def("set_poison_outputs", &resnet_ext::set_poison_outputs, "Fill fused outputs with NaN before each launch");
  m.def("set_failing_kernel", &resnet_ext::set_failing_kernel, "Make the named kernel's launches fail ('' to stop)");
  m.def("set_bn_optin", &resnet_ext::bn_act::set_optin,
        "Training BN: the opt-in kernels (unverified on a GPU: parallel final pass of the sums, channel-stationary "
        "apply passes) instead of the verified ones");
  m.def("bn_optin", &resnet_ext::bn_act::optin);
  m.def("cudnn_graph_probe", &resnet_ext::cudnn_graphs::probe,
        "'' where cuDNN takes a fused training graph on a problem (plans=False: validate only, no GPU), else why not",
        py::arg("pattern"), py::arg("x"), py::arg("w"), py::arg("stride"), py::arg("padding"), py::arg("prologue"),
        py::arg("dtype"), py::arg("plans"));
#else  // a CPU build launches nothing: the switches have nothing to act on
  m.def("set_poison_outputs", [](bool) {});
  m.def("set_failing_kernel", [](const std::string&) {});
  m.def("set_bn_optin", [](bool) {});
  m.def("bn_optin", []() { return false; });
#endif
#endif
}
