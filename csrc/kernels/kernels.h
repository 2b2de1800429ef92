// The kernel files' contract with the registry (registry.cpp): each CUDA file appends the fused kernels it
// compiled. No ATen and no CUDA headers here.
#pragma once

#include <string>
#include <vector>

#include "dispatch/conv_problem.h"

namespace resnet_ext {

void append_cutlass_sm80_f16_kernels(std::vector<FusedKernelInfo>& out);   // cutlass_conv_sm80_f16.cu
void append_cutlass_sm80_bf16_kernels(std::vector<FusedKernelInfo>& out);  // cutlass_conv_sm80_bf16.cu
void append_cutlass_sm80_tf32_kernels(std::vector<FusedKernelInfo>& out);  // cutlass_conv_sm80_tf32.cu
// Unverified, built with RESNET_EXT_EXPERIMENTAL=1 only, registered with empty verified_sms (opt-in): sm_90a
// implicit-GEMM convs and GEMMs of 1x1 stride-1 convs.
void append_cutlass_sm90_kernels(std::vector<FusedKernelInfo>& out);       // experimental/cutlass_conv_sm90.cu
void append_cutlass_gemm_sm90_kernels(std::vector<FusedKernelInfo>& out);  // experimental/gemm_sm90.cu
// Unverified, experimental build only: convs on fewer than 4 input channels (the stem), sm80 code.
void append_cutlass_stem_sm80_kernels(std::vector<FusedKernelInfo>& out);  // experimental/cutlass_conv_stem_sm80.cu

// "<family>_<dtype>_<epilogue>_<M>x<N>x<K>_<stages>st_a<alignment>", e.g. sm80_f16_bias_act_128x128x64_3st_a8:
// built from the kernel's template parameters, so the name cannot drift from what was compiled.
inline std::string kernel_name(const char* family, const char* dtype, const char* epilogue, int tile_m, int tile_n,
                               int tile_k, int stages, int alignment) {
  using std::to_string;
  return std::string(family) + "_" + dtype + "_" + epilogue + "_" + to_string(tile_m) + "x" + to_string(tile_n) +
         "x" + to_string(tile_k) + "_" + to_string(stages) + "st_a" + to_string(alignment);
}

}  // namespace resnet_ext
