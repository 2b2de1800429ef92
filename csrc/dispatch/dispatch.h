// The one dispatcher of resnet_ext::conv_bn_act's CUDA path. Every kernel choice -- a kernel forced by a test, the
// autotuner's cached winner, the measured per-shape table, the heuristic -- passes through dispatch_conv(), which
// re-checks on every path (cache hits included) that the chosen kernel can run this very call:
//   - this binary holds an image of the kernel that loads on the device (compiled archs, arch-specific sm_90a),
//   - the kernel is verified on the device's arch (the dispatcher's own choices; forced/autotuned may opt in),
//   - dtype, the TF32 flag, groups, empty problems,
//   - sizes, layout (NHWC / KRSC density, strides), 16-byte alignment and 32-bit extent of every operand,
//   - the kernel's can_implement, and its workspace size (returned with the decision).
// `explain()` and the op both call dispatch_conv(), so what explain says is what runs. No ATen here: the choice is
// testable on the CPU with fake registries (tests/cpp, tests/test_kernel_selection.py).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "dispatch/conv_problem.h"

namespace resnet_ext {

// ---- The CUDA images compiled into the binary ------------------------------------------------------------------

struct CudaImage {
  int sm = 0;                  // 80 for sm_80 / compute_80
  bool arch_specific = false;  // sm_90a: runs only on exactly that arch
  bool ptx = false;            // compute_XX (JIT-compiled by the driver) rather than sm_XX machine code
};

// Parses "sm_80;sm_90a;compute_90" (what setup.py passes) or TORCH_CUDA_ARCH_LIST style "8.0;9.0a;8.6+PTX".
std::vector<CudaImage> parse_cuda_images(const std::string& list);
std::string cuda_images_string(const std::vector<CudaImage>& images);
// This build's images (empty in a CPU-only build).
const std::vector<CudaImage>& compiled_cuda_images();
// Whether the driver can load `image` on a device of compute capability `sm`.
bool image_loads_on(const CudaImage& image, int sm);
// "" when some image of `images` carries kernel `k`'s code and loads on sm, else why not.
std::string image_rejection(const FusedKernelInfo& k, int sm, const std::vector<CudaImage>& images);

// ---- The decision ------------------------------------------------------------------------------------------------

enum class ChoiceSource { Heuristic, Forced, Autotuned, Table };
const char* choice_source_name(ChoiceSource s);

// A recorded choice (the autotuner's cache, the measured table): a kernel name, or "" for the fallback path.
struct KernelChoice {
  std::string kernel;
  std::string reason;
};

struct Decision {
  const FusedKernelInfo* kernel = nullptr;  // the fused kernel to launch; null: the fallback path runs
  std::string path;                         // "fused:<kernel>", "cudnn_fused", "cudnn_graph" or "stock"
  std::string reason;
  ChoiceSource source = ChoiceSource::Heuristic;
  size_t workspace_bytes = 0;  // device workspace the kernel needs for this problem
  bool fused() const { return kernel != nullptr; }
};

// Everything besides the problem that a decision depends on.
struct DispatchInputs {
  const std::vector<FusedKernelInfo>* registry = nullptr;
  const std::vector<CudaImage>* images = nullptr;
  std::string forced;                  // force_kernel(): may name a kernel not verified on this arch
  std::optional<KernelChoice> tuned;   // the autotuner's cache entry for problem.key(): may be unverified
  bool tuning_pending = false;         // the autotuner is on and has not seen problem.key() yet
  std::optional<KernelChoice> table;   // a measured per-shape table's entry: must be verified, like the heuristic
};

// The fallback a problem without a fused kernel takes: cuDNN's fused conv+bias+ReLU(+add) where it applies, for a
// scale/shift problem the cuDNN graph with that epilogue where it may, else the stock composition (conv, epilogue).
inline const char* fallback_path(const ConvProblem& p) {
  return p.cudnn_fused_ok ? "cudnn_fused" : p.cudnn_graph_ok ? "cudnn_graph" : "stock";
}

// Reasons that rule out every fused kernel: dtype, TF32 flag, groups, empty problems, the operands' sizes, layout,
// alignment and extent. "" when there are none.
std::string common_rejection(const ConvProblem& p);

// Why kernel `k` cannot run `p` in this binary on p's device ("" when it can): the check of every path.
std::string kernel_rejection(const FusedKernelInfo& k, const ConvProblem& p, const std::vector<CudaImage>& images,
                             bool require_verified);

Decision dispatch_conv(const ConvProblem& p, const DispatchInputs& in);
// With this build's registry and images, the forced kernel and the autotuner's cache.
Decision dispatch_conv(const ConvProblem& p);

// The kernels the autotuner may time for `p`: all that pass kernel_rejection, verified or not.
std::vector<const FusedKernelInfo*> tuning_candidates(const ConvProblem& p, const DispatchInputs& in);
std::vector<const FusedKernelInfo*> tuning_candidates(const ConvProblem& p);

const FusedKernelInfo* find_kernel(const std::vector<FusedKernelInfo>& registry, const std::string& name);

// ---- Dispatcher state --------------------------------------------------------------------------------------------

// Pins one kernel by name where it can run ("" to unpin): tests, and opting in to unverified kernels.
void force_kernel(const std::string& name);
std::string forced_kernel();

// The autotuner's switch (resnet_ext.autotune) and its cache, keyed on ConvProblem::key().
bool autotune_enabled();
void set_autotune_enabled(bool on);
void clear_autotune_cache();
size_t autotune_cache_size();
std::optional<KernelChoice> tuned_choice(const ConvProblem& p);  // nullopt: autotuner off, or shape not tuned
void store_tuned_choice(const ConvProblem& p, const KernelChoice& choice);

}  // namespace resnet_ext
