// A convolution problem described without ATen -- shapes, dtype, epilogue, and the memory facts (sizes, strides,
// address) of every tensor a fused kernel would read or write -- and the contract of a fused kernel. Shared by the
// dispatcher (dispatch.h), the kernels (kernels/), the op's CUDA code (ops/) and the host-side tests (tests/cpp,
// tests/test_kernel_selection.py), none of which needs a GPU to build a problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace resnet_ext {

enum class ScalarKind { Float32, Float16, BFloat16, Float64, Other };

const char* scalar_kind_name(ScalarKind k);
int64_t scalar_kind_size(ScalarKind k);  // bytes per element (0 for Other)

// The one C++ copy of the convolution output-size formula (resnet_ext.ops.conv_output_size is the Python one):
// floor((in + 2*pad - dil*(k-1) - 1) / stride) + 1, or 0 when the padded input is shorter than the dilated kernel
// (F.conv2d rejects that; C++ integer division would round the negative numerator towards zero instead).
int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dil);

// One tensor as a kernel sees it: sizes and strides in elements (logical NCHW / KCRS order), data address.
struct Operand {
  bool present = false;
  int dim = 0;
  int64_t sizes[4] = {0, 0, 0, 0};
  int64_t strides[4] = {0, 0, 0, 0};
  uint64_t address = 0;  // data pointer; 0 for a tensor the op allocates itself (fresh allocations are aligned)

  int64_t numel() const;
  int64_t extent() const;  // elements from the first to one past the last addressed element (0 when empty)
  bool nhwc_dense() const;  // 4-D and densely packed channels-last (strides of size-1 dimensions ignored)
  bool dense_vector() const;  // 1-D with unit stride (or at most one element)
  bool aligned(int bytes) const { return address % uint64_t(bytes) == 0; }
  std::string describe() const;  // "[2, 64, 56, 56] strides [..]" for reasons
};

Operand packed_nhwc_operand(int64_t n, int64_t c, int64_t h, int64_t w, uint64_t address = 0);
Operand vector_operand(int64_t n, int64_t stride = 1, uint64_t address = 0);

struct ConvProblem {
  int64_t N = 0, H = 0, W = 0, C = 0;  // input
  int64_t K = 0, R = 0, S = 0;         // filter: K output channels, R x S taps
  int64_t P = 0, Q = 0;                // output spatial size
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;
  int64_t groups = 1;
  ScalarKind dtype = ScalarKind::Float32;
  bool has_residual = false;
  bool relu = true;
  // The epilogue scales the conv's fp32 sum per output channel before the bias: y = act(acc * scale + shift + bias
  // (+ residual)), scale and shift fp32 [K] (BN applied to the unfolded weight's sum, #24). Only kernels whose
  // FusedKernelInfo says `scale_shift` take such a problem.
  bool has_scale_shift = false;
  // The tensors a fused kernel would be launched on: x and residual NHWC, w KRSC (a channels_last [K, C, R, S]
  // tensor), bias [K] (the op passes zeros when the call has none), y NHWC (allocated by the op); scale and shift
  // dense fp32 [K] where has_scale_shift.
  Operand x, w, bias, residual, y, scale, shift;
  // Settings and the device.
  bool allow_tf32 = true;      // torch.backends.cudnn.allow_tf32
  bool cudnn_fused_ok = false;  // cuDNN's fused conv+bias+ReLU(+add) can run it (CUDA, cuDNN on, ReLU, non-empty)
  bool cudnn_graph_ok = false;  // a scale/shift problem the cuDNN graph conv_scale_shift may run (experimental
                                // build: cuDNN on, 16-bit NHWC operands, groups and dilation 1)
  bool prefer_cudnn = true;     // resnet_ext.prefer_cudnn(): let cuDNN's fused ops take layers they win
  int device = -1;              // CUDA device index (-1: none / a host-side test)
  int sm = 0;                   // compute capability of the device, e.g. 80, 90 (0: unknown)
  int sm_count = 0;             // its multiprocessor count (0: unknown)

  // P and Q from the other fields (returns false if the output would be empty).
  bool compute_output_size();
  // Fills the operands as the packed tensors of this shape (host-side tests; the op describes real tensors).
  void set_packed_operands();
  // Largest byte extent of any present operand (CUTLASS 2.x iterators index with 32-bit offsets).
  int64_t max_operand_bytes() const;
  // Shapes, dtype and epilogue: for messages.
  std::string to_string() const;
  // Everything the choice of a kernel may depend on -- shapes, dtype, epilogue, each operand's layout and
  // alignment class, settings, device and arch -- but no addresses: the autotuner's cache key.
  std::string key() const;
};

// Which compiled image a kernel's code lives in: images built for an arch below `image_sm` hold only stubs of it,
// and `arch_specific` kernels (sm_90a wgmma/TMA) exist only in arch-specific images (sm_90a, not sm_90).
struct ImageRequirement {
  int image_sm = 80;
  bool arch_specific = false;
};

// Everything a fused kernel needs to run one problem. Pointers are device pointers (see ConvProblem's operands).
struct ConvLaunchArgs {
  ConvProblem problem;
  const void* x = nullptr;
  const void* w = nullptr;
  const void* bias = nullptr;
  const void* residual = nullptr;  // may be null
  const float* scale = nullptr;    // [K] fp32 where problem.has_scale_shift, else null
  const float* shift = nullptr;
  void* y = nullptr;
  void* workspace = nullptr;  // workspace_bytes() of the kernel for this problem, on the device
  size_t workspace_bytes = 0;
  void* stream = nullptr;  // cudaStream_t
};

// One compiled fused kernel as the dispatcher sees it.
struct FusedKernelInfo {
  std::string name;  // says family, dtype, epilogue, tile, stages and alignment
  ScalarKind dtype = ScalarKind::Float32;
  int min_sm = 80, max_sm = 1000;  // device archs it is written for
  ImageRequirement image;
  // Whether its epilogue takes the fp32 per-channel scale and shift (ConvProblem::has_scale_shift).
  bool scale_shift = false;
  // Archs on which its output has been checked on a real GPU. The dispatcher's own choices (heuristic, measured
  // table) use a kernel only there; a forced kernel or the autotuner (which checks the output) may use it anywhere.
  std::vector<int> verified_sms;
  // "" when the kernel accepts the problem's shape, else the reason (its own requirements and CUTLASS's).
  std::function<std::string(const ConvProblem&)> can_implement;
  // Heuristic preference: higher wins among the kernels that can run a problem.
  std::function<int(const ConvProblem&)> score;
  // Device workspace the launch needs for this problem.
  std::function<size_t(const ConvProblem&)> workspace_bytes;
  // Launches on args.stream; "" on success, else the error (never prints and continues).
  std::function<std::string(const ConvLaunchArgs&)> launch;

  bool verified_on(int sm) const;
};

// The kernels compiled into this build (empty in a CPU-only build): kernels/registry.cpp.
const std::vector<FusedKernelInfo>& fused_kernel_registry();

}  // namespace resnet_ext
