// fp16 conv_bn_act kernels (fp32 accumulation and epilogue).
#include "kernels/cutlass_conv_sm80.cuh"

namespace resnet_ext {
void append_cutlass_sm80_f16_kernels(std::vector<FusedKernelInfo>& out) {
  using namespace sm80;
  append_kernels<cutlass::half_t, Tile<128, 128, 64, 64, 64, 64, 3>, Tile<128, 64, 64, 64, 32, 64, 4>>(
      out, "f16", ScalarKind::Float16);
}
}  // namespace resnet_ext
