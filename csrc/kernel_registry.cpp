// Collects the fused kernels compiled into this build. The CUDA files each contribute a list; a CPU-only build
// (or the CMake host-logic test) has none, and every call takes the stock path.
#include "conv_problem.h"

namespace resnet_ext {

#ifdef RESNET_EXT_WITH_CUDA
// cutlass_conv_sm80_{f16,bf16,tf32}.cu
void append_cutlass_sm80_f16_kernels(std::vector<FusedKernelInfo>& out);
void append_cutlass_sm80_bf16_kernels(std::vector<FusedKernelInfo>& out);
void append_cutlass_sm80_tf32_kernels(std::vector<FusedKernelInfo>& out);
void append_cutlass_sm90_kernels(std::vector<FusedKernelInfo>& out);  // cutlass_conv_sm90.cu
#endif

const std::vector<FusedKernelInfo>& fused_kernel_registry() {
  static const std::vector<FusedKernelInfo> registry = [] {
    std::vector<FusedKernelInfo> v;
#ifdef RESNET_EXT_WITH_CUDA
    append_cutlass_sm80_f16_kernels(v);
    append_cutlass_sm80_bf16_kernels(v);
    append_cutlass_sm80_tf32_kernels(v);
    append_cutlass_sm90_kernels(v);
#endif
    return v;
  }();
  return registry;
}

}  // namespace resnet_ext
