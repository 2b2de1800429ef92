// fp32 conv_bn_act kernels on TF32 tensor cores: chosen only while torch.backends.cudnn.allow_tf32 is true
// (PyTorch's default for convolutions), i.e. where the stock path would use TF32 as well.
#include "kernels/cutlass_conv_sm80.cuh"

namespace resnet_ext {
void append_cutlass_sm80_tf32_kernels(std::vector<FusedKernelInfo>& out) {
  using namespace sm80;
  append_kernels<float, Tile<128, 128, 32, 64, 64, 32, 3>, Tile<128, 64, 32, 64, 32, 32, 4>>(
      out, "tf32", ScalarKind::Float32);
}
}  // namespace resnet_ext
