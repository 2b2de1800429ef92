// Collects the fused kernels compiled into this build. The CUDA files each contribute a list; a CPU-only build
// (or the CMake host-logic test) has none, and every call takes a fallback path.
#include "dispatch/conv_problem.h"

#ifdef RESNET_EXT_WITH_CUDA
#include "kernels/kernels.h"
#endif

namespace resnet_ext {

const std::vector<FusedKernelInfo>& fused_kernel_registry() {
  static const std::vector<FusedKernelInfo> registry = [] {
    std::vector<FusedKernelInfo> v;
#ifdef RESNET_EXT_WITH_CUDA
    append_cutlass_sm80_f16_kernels(v);
    append_cutlass_sm80_bf16_kernels(v);
    append_cutlass_sm80_tf32_kernels(v);
#ifdef RESNET_EXT_EXPERIMENTAL  // unverified on a GPU: only in a RESNET_EXT_EXPERIMENTAL=1 build
    append_cutlass_sm90_kernels(v);
    append_cutlass_gemm_sm90_kernels(v);
    append_cutlass_stem_sm80_kernels(v);
#endif
#endif
    return v;
  }();
  return registry;
}

}  // namespace resnet_ext
