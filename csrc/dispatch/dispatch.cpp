#include "dispatch/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>

#ifndef RESNET_EXT_CUDA_IMAGES
#define RESNET_EXT_CUDA_IMAGES ""
#endif

namespace resnet_ext {

// ---- Images ------------------------------------------------------------------------------------------------------

std::vector<CudaImage> parse_cuda_images(const std::string& list) {
  std::vector<CudaImage> out;
  std::string token;
  auto flush = [&] {
    if (token.empty()) return;
    std::string t = token;
    token.clear();
    if (t.rfind("sm_", 0) == 0 || t.rfind("compute_", 0) == 0) {  // sm_90a, compute_80
      CudaImage img;
      img.ptx = t[0] == 'c';
      std::string digits = t.substr(t.find('_') + 1);
      img.arch_specific = !digits.empty() && (digits.back() == 'a' || digits.back() == 'f');
      if (img.arch_specific) digits.pop_back();
      img.sm = std::atoi(digits.c_str());
      if (img.sm > 0) out.push_back(img);
      return;
    }
    // TORCH_CUDA_ARCH_LIST style: 8.0, 9.0a, 8.6+PTX
    const bool ptx = t.size() > 4 && t.compare(t.size() - 4, 4, "+PTX") == 0;
    if (ptx) t.resize(t.size() - 4);
    const bool specific = !t.empty() && (t.back() == 'a' || t.back() == 'f');
    if (specific) t.pop_back();
    const auto dot = t.find('.');
    if (dot == std::string::npos) return;
    const int sm = std::atoi(t.substr(0, dot).c_str()) * 10 + std::atoi(t.substr(dot + 1).c_str());
    if (sm <= 0) return;
    out.push_back({sm, specific, false});
    if (ptx) out.push_back({sm, specific, true});
  };
  for (char c : list) {
    if (c == ';' || c == ',' || c == ' ') {
      flush();
    } else {
      token += c;
    }
  }
  flush();
  return out;
}

std::string cuda_images_string(const std::vector<CudaImage>& images) {
  std::string s;
  for (const auto& i : images)
    s += (s.empty() ? "" : " ") + std::string(i.ptx ? "compute_" : "sm_") + std::to_string(i.sm) +
         (i.arch_specific ? "a" : "");
  return s.empty() ? "none" : s;
}

const std::vector<CudaImage>& compiled_cuda_images() {
  static const std::vector<CudaImage> images = parse_cuda_images(RESNET_EXT_CUDA_IMAGES);
  return images;
}

bool image_loads_on(const CudaImage& image, int sm) {
  if (image.arch_specific) return sm == image.sm;  // sm_90a / compute_90a: that arch only
  if (image.ptx) return sm >= image.sm;            // PTX is JIT-compiled for the device's arch
  return sm / 10 == image.sm / 10 && sm >= image.sm;  // machine code: same major, same or later minor
}

std::string image_rejection(const FusedKernelInfo& k, int sm, const std::vector<CudaImage>& images) {
  for (const auto& img : images) {
    if (img.sm < k.image.image_sm) continue;  // compiled for an older arch: the kernel is a stub there
    if (k.image.arch_specific && !img.arch_specific) continue;
    if (image_loads_on(img, sm)) return "";
  }
  return "no image of it in this build loads on sm_" + std::to_string(sm) + " (built: " +
         cuda_images_string(images) + (k.image.arch_specific ? "; it needs sm_" + std::to_string(k.image.image_sm) + "a" : "") +
         ")";
}

// ---- Checks ------------------------------------------------------------------------------------------------------

const char* choice_source_name(ChoiceSource s) {
  switch (s) {
    case ChoiceSource::Heuristic: return "heuristic";
    case ChoiceSource::Forced: return "forced";
    case ChoiceSource::Autotuned: return "autotuned";
    case ChoiceSource::Table: return "table";
  }
  return "?";
}

namespace {

struct OperandSpec {
  const char* name;
  const Operand* o;
  bool required;
  int dim;
  int64_t sizes[4];
  const char* layout;  // what dense means for it
};

std::string operand_rejection(const ConvProblem& p) {
  const int64_t cg = p.groups > 0 ? p.C / p.groups : p.C;
  const char* nhwc = "channels_last (NHWC) contiguous";
  const OperandSpec specs[] = {
      {"x", &p.x, true, 4, {p.N, p.C, p.H, p.W}, nhwc},
      {"weight", &p.w, true, 4, {p.K, cg, p.R, p.S}, "KRSC (channels_last) contiguous"},
      {"bias", &p.bias, true, 1, {p.K, 0, 0, 0}, "contiguous (unit stride)"},
      {"residual", &p.residual, p.has_residual, 4, {p.N, p.K, p.P, p.Q}, nhwc},
      {"y", &p.y, true, 4, {p.N, p.K, p.P, p.Q}, nhwc},
      {"scale", &p.scale, p.has_scale_shift, 1, {p.K, 0, 0, 0}, "contiguous (unit stride)"},
      {"shift", &p.shift, p.has_scale_shift, 1, {p.K, 0, 0, 0}, "contiguous (unit stride)"},
  };
  for (const OperandSpec& s : specs) {
    const Operand& o = *s.o;
    if (o.present != s.required)
      return std::string(s.name) + (s.required ? " is missing (the fused kernels need it)" : " is given but unused");
    if (!o.present) continue;
    bool same = o.dim == s.dim;
    for (int i = 0; same && i < s.dim; ++i) same = o.sizes[i] == s.sizes[i];
    if (!same) return std::string(s.name) + " has shape " + o.describe() + ", not the problem's";
    const bool dense = o.dim == 1 ? o.dense_vector() : o.nhwc_dense();
    if (!dense) return std::string(s.name) + " is not " + s.layout + ": " + o.describe();
    if (!o.aligned(16)) return std::string(s.name) + "'s data pointer is not 16-byte aligned";
  }
  // CUTLASS 2.x conv iterators index with 32-bit offsets.
  if (p.max_operand_bytes() >= (int64_t(1) << 31)) return "a tensor is 2 GiB or larger (32-bit indexing)";
  return "";
}

}  // namespace

std::string common_rejection(const ConvProblem& p) {
  if (p.dtype == ScalarKind::Float64 || p.dtype == ScalarKind::Other)
    return std::string("dtype ") + scalar_kind_name(p.dtype) + " has no fused kernel";
  if (p.dtype == ScalarKind::Float32 && !p.allow_tf32)
    return "float32 with torch.backends.cudnn.allow_tf32=False needs full fp32 precision (fallback path)";
  if (p.groups != 1) return "grouped convolution (groups=" + std::to_string(p.groups) + ") runs the stock path";
  if (p.N == 0) return "empty batch";
  if (p.C == 0) return "x has no channels (C = 0)";
  if (p.P <= 0 || p.Q <= 0) return "empty output";
  return operand_rejection(p);
}

std::string kernel_rejection(const FusedKernelInfo& k, const ConvProblem& p, const std::vector<CudaImage>& images,
                             bool require_verified) {
  if (k.dtype != p.dtype) return std::string("a ") + scalar_kind_name(k.dtype) + " kernel";
  if (p.has_scale_shift && !k.scale_shift) return "no fp32 scale/shift epilogue";
  if (p.sm <= 0) return "the device's arch is unknown";
  if (p.sm < k.min_sm || p.sm > k.max_sm)
    return "written for sm_" + std::to_string(k.min_sm) + " to sm_" + std::to_string(k.max_sm);
  std::string why = image_rejection(k, p.sm, images);
  if (!why.empty()) return why;
  if (require_verified && !k.verified_on(p.sm))
    return "not verified on sm_" + std::to_string(p.sm) + " (opt-in: force_kernel or the autotuner)";
  why = common_rejection(p);
  if (!why.empty()) return why;
  return k.can_implement ? k.can_implement(p) : "no can_implement";
}

const FusedKernelInfo* find_kernel(const std::vector<FusedKernelInfo>& registry, const std::string& name) {
  for (const auto& k : registry)
    if (k.name == name) return &k;
  return nullptr;
}

// ---- The dispatcher ----------------------------------------------------------------------------------------------

namespace {

Decision fallback(const ConvProblem& p, std::string reason, ChoiceSource source) {
  Decision d;
  d.path = fallback_path(p);
  d.reason = std::move(reason);
  d.source = source;
  return d;
}

Decision use(const FusedKernelInfo& k, const ConvProblem& p, std::string reason, ChoiceSource source) {
  Decision d;
  d.kernel = &k;
  d.path = "fused:" + k.name;
  d.reason = std::move(reason);
  d.source = source;
  d.workspace_bytes = k.workspace_bytes ? k.workspace_bytes(p) : 0;
  return d;
}

Decision heuristic(const ConvProblem& p, const DispatchInputs& in) {
  const auto& registry = *in.registry;
  std::string common = common_rejection(p);
  if (!common.empty()) return fallback(p, common, ChoiceSource::Heuristic);
  // Measured on an H100 (benchmarks/results/2026-11-28-h100-run3.md): cuDNN's fused conv+bias+ReLU(+add) beat the
  // sm80 CUTLASS kernels on every ReLU layer of ResNet-50 (ours: 0.5-1.0x), while ours won on the ReLU-free
  // downsample convs (1.2-3.0x). Until verified Hopper (wgmma) kernels exist, ReLU layers go to cuDNN on sm_90+.
  if (p.sm >= 90 && p.relu && p.cudnn_fused_ok && p.prefer_cudnn)
    return fallback(p,
                    "sm_" + std::to_string(p.sm) + ": cuDNN's fused conv+bias+ReLU is faster than the sm80 CUTLASS "
                    "kernels for ReLU layers on Hopper (resnet_ext.prefer_cudnn(False) forces CUTLASS)",
                    ChoiceSource::Heuristic);
  const FusedKernelInfo* best = nullptr;
  int best_score = std::numeric_limits<int>::min();
  std::string rejections;
  for (const auto& k : registry) {
    if (k.dtype != p.dtype) continue;
    std::string why = kernel_rejection(k, p, *in.images, /*require_verified=*/true);
    if (!why.empty()) {
      if (rejections.size() < 600) rejections += (rejections.empty() ? "" : "; ") + k.name + ": " + why;
      continue;
    }
    const int s = k.score ? k.score(p) : 0;
    if (s > best_score) {
      best = &k;
      best_score = s;
    }
  }
  if (best) return use(*best, p, "heuristic choice among the verified kernels that can run the problem",
                       ChoiceSource::Heuristic);
  if (rejections.empty())
    return fallback(p, std::string("no fused kernel for dtype ") + scalar_kind_name(p.dtype) + " in this build",
                    ChoiceSource::Heuristic);
  return fallback(p, "no fused kernel accepts the problem (" + rejections + ")", ChoiceSource::Heuristic);
}

}  // namespace

Decision dispatch_conv(const ConvProblem& p, const DispatchInputs& in) {
  if (in.registry == nullptr || in.registry->empty())
    return fallback(p, "no fused CUDA kernels are compiled into this build", ChoiceSource::Heuristic);
  const auto& images = *in.images;
  std::string notes;  // why an earlier source was passed over
  auto recorded = [&](const std::string& what, const std::string& name, bool require_verified,
                      std::string* why) -> const FusedKernelInfo* {
    const FusedKernelInfo* k = find_kernel(*in.registry, name);
    *why = k ? kernel_rejection(*k, p, images, require_verified) : "not in this build";
    if (why->empty()) return k;
    notes += what + " kernel " + name + " cannot run this call (" + *why + "); ";
    return nullptr;
  };
  std::string why;
  if (!in.forced.empty()) {
    if (const auto* k = recorded("forced", in.forced, false, &why))
      return use(*k, p, "forced by resnet_ext._C.force_kernel", ChoiceSource::Forced);
  }
  if (in.tuned.has_value()) {
    if (in.tuned->kernel.empty()) return fallback(p, in.tuned->reason, ChoiceSource::Autotuned);
    if (const auto* k = recorded("autotuned", in.tuned->kernel, false, &why))
      return use(*k, p, in.tuned->reason, ChoiceSource::Autotuned);
  }
  if (in.table.has_value()) {
    if (in.table->kernel.empty()) return fallback(p, in.table->reason, ChoiceSource::Table);
    if (const auto* k = recorded("measured-table", in.table->kernel, true, &why))
      return use(*k, p, in.table->reason, ChoiceSource::Table);
  }
  Decision d = heuristic(p, in);
  if (in.tuning_pending) notes += "autotune: not tuned yet (the next call times the candidates); ";
  d.reason = notes + d.reason;
  return d;
}

std::vector<const FusedKernelInfo*> tuning_candidates(const ConvProblem& p, const DispatchInputs& in) {
  std::vector<const FusedKernelInfo*> out;
  if (in.registry == nullptr) return out;
  for (const auto& k : *in.registry)
    if (kernel_rejection(k, p, *in.images, /*require_verified=*/false).empty()) out.push_back(&k);
  return out;
}

// ---- State -------------------------------------------------------------------------------------------------------

namespace {

std::mutex g_forced_mutex;
std::string g_forced;

std::atomic<bool> g_autotune{false};  // set from Python only (resnet_ext.autotune)
std::mutex g_cache_mutex;
std::map<std::string, KernelChoice> g_cache;

DispatchInputs build_inputs(const ConvProblem& p) {
  DispatchInputs in;
  in.registry = &fused_kernel_registry();
  in.images = &compiled_cuda_images();
  in.forced = forced_kernel();
  if (autotune_enabled()) {
    in.tuned = tuned_choice(p);
    in.tuning_pending = !in.tuned.has_value();
  }
  return in;
}

}  // namespace

void force_kernel(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_forced_mutex);
  g_forced = name;
}

std::string forced_kernel() {
  std::lock_guard<std::mutex> lock(g_forced_mutex);
  return g_forced;
}

bool autotune_enabled() { return g_autotune.load(std::memory_order_relaxed); }
void set_autotune_enabled(bool on) { g_autotune = on; }

void clear_autotune_cache() {
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  g_cache.clear();
}

size_t autotune_cache_size() {
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  return g_cache.size();
}

std::optional<KernelChoice> tuned_choice(const ConvProblem& p) {
  if (!autotune_enabled()) return std::nullopt;
  const std::string key = p.key();
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  auto it = g_cache.find(key);
  if (it == g_cache.end()) return std::nullopt;
  return it->second;
}

void store_tuned_choice(const ConvProblem& p, const KernelChoice& choice) {
  const std::string key = p.key();
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  g_cache[key] = choice;
}

Decision dispatch_conv(const ConvProblem& p) { return dispatch_conv(p, build_inputs(p)); }

std::vector<const FusedKernelInfo*> tuning_candidates(const ConvProblem& p) {
  return tuning_candidates(p, build_inputs(p));
}

}  // namespace resnet_ext
