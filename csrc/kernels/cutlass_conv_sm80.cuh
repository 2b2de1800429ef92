// Implicit-GEMM conv2d fprop kernels (CUTLASS 2.x, sm80 tensor cores; they also run on Hopper) with the
// conv_bn_act epilogue computed in fp32 registers and stored once:
//   BiasAct:      y = max(threshold, acc + bias[k])            threshold 0 = ReLU, -FLT_MAX = none
//   ResidualRelu: y = relu(acc + bias[k] + residual)           the bottleneck tail
// Activations and output NHWC, filter KRSC, all of one dtype. Included by one .cu file per dtype, so the
// instantiations compile in parallel; this header needs no ATen.
#pragma once

#include <cfloat>
#include <string>
#include <vector>

#include "cutlass/conv/conv2d_problem_size.h"
#include "cutlass/conv/device/implicit_gemm_convolution.h"
#include "cutlass/conv/kernel/default_conv2d_fprop.h"
#include "cutlass/conv/kernel/default_conv2d_fprop_with_broadcast.h"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/thread/activation.h"
#include "cutlass/epilogue/thread/linear_combination_relu.h"
#include "cutlass/epilogue/thread/linear_combination_residual_block.h"
#include "cutlass/functional.h"
#include "dispatch/conv_problem.h"
#include "kernels/kernels.h"

namespace resnet_ext {
namespace sm80 {

using LayoutNHWC = cutlass::layout::TensorNHWC;

// Tile configuration: threadblock (M = N*P*Q rows, N = K output channels, K = reduction) and warp tiles.
template <int TbM, int TbN, int TbK, int WM, int WN, int WK, int Stages_>
struct Tile {
  using Threadblock = cutlass::gemm::GemmShape<TbM, TbN, TbK>;
  using Warp = cutlass::gemm::GemmShape<WM, WN, WK>;
  static constexpr int kStages = Stages_;
  static constexpr int kM = TbM, kN = TbN, kK = TbK;
};

template <typename Element>
struct Mma {  // 16-bit inputs: m16n8k16
  using Instruction = cutlass::gemm::GemmShape<16, 8, 16>;
  static constexpr int kAlignment = 8;
};
template <>
struct Mma<float> {  // fp32 inputs run as TF32: m16n8k8
  using Instruction = cutlass::gemm::GemmShape<16, 8, 8>;
  static constexpr int kAlignment = 4;
};

inline cutlass::conv::Conv2dProblemSize to_cutlass(const ConvProblem& p) {
  return cutlass::conv::Conv2dProblemSize(int(p.N), int(p.H), int(p.W), int(p.C), int(p.K), int(p.R), int(p.S),
                                          int(p.P), int(p.Q), int(p.pad_h), int(p.pad_w), int(p.stride_h),
                                          int(p.stride_w), int(p.dil_h), int(p.dil_w),
                                          cutlass::conv::Mode::kCrossCorrelation, 1, 1);
}

inline std::string status_string(cutlass::Status s) { return cutlass::cutlassGetStatusString(s); }

// A packed NHWC (or KRSC) operand of the implicit GEMM: A = x, B = the filter, C = the output (and a residual).
template <typename Element>
cutlass::TensorRef<Element, LayoutNHWC> packed_ref(const void* data, const cutlass::conv::Conv2dProblemSize& ps,
                                                   char operand) {
  using cutlass::conv::Operator;
  const auto extent = operand == 'A'   ? cutlass::conv::implicit_gemm_tensor_a_extent(Operator::kFprop, ps)
                      : operand == 'B' ? cutlass::conv::implicit_gemm_tensor_b_extent(Operator::kFprop, ps)
                                       : cutlass::conv::implicit_gemm_tensor_c_extent(Operator::kFprop, ps);
  return {static_cast<Element*>(const_cast<void*>(data)), LayoutNHWC::packed(extent)};
}

// Requirements of our kernels beyond CUTLASS's own can_implement (the dispatcher checks the operands' layout and
// alignment for every kernel).
inline std::string our_requirements(const ConvProblem& p, int alignment, bool residual_kernel) {
  if (p.groups != 1) return "groups != 1";
  if (p.C % alignment != 0) return "C=" + std::to_string(p.C) + " is not a multiple of " + std::to_string(alignment);
  if (p.K % alignment != 0) return "K=" + std::to_string(p.K) + " is not a multiple of " + std::to_string(alignment);
  if (residual_kernel && !p.has_residual) return "no residual";
  if (!residual_kernel && p.has_residual) return "has a residual";
  if (residual_kernel && !p.relu) return "residual without ReLU";
  return "";
}

// can_implement / launch shared by both kernel families (Conv provides Op, arguments() and kResidual).
template <typename Conv>
struct ConvRunner {
  static std::string can_implement(const ConvProblem& p) {
    std::string why = our_requirements(p, Conv::kAlignment, Conv::kResidual);
    if (!why.empty()) return why;
    ConvLaunchArgs a;
    a.problem = p;
    auto s = Conv::Op::can_implement(Conv::arguments(a));
    return s == cutlass::Status::kSuccess ? "" : "CUTLASS: " + status_string(s);
  }

  static size_t workspace_bytes(const ConvProblem& p) {
    ConvLaunchArgs a;
    a.problem = p;
    return Conv::Op::get_workspace_size(Conv::arguments(a));
  }

  static std::string launch(const ConvLaunchArgs& a) {
    typename Conv::Op op;
    auto args = Conv::arguments(a);
    const size_t needed = Conv::Op::get_workspace_size(args);
    if (a.workspace_bytes < needed)
      return "workspace of " + std::to_string(a.workspace_bytes) + " bytes, the kernel needs " + std::to_string(needed);
    auto stream = static_cast<cudaStream_t>(a.stream);
    cutlass::Status s = op.initialize(args, needed ? a.workspace : nullptr, stream);
    if (s == cutlass::Status::kSuccess) s = op(stream);
    if (s != cutlass::Status::kSuccess) return "CUTLASS: " + status_string(s);
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? "" : std::string("CUDA: ") + cudaGetErrorString(e);
  }
};

// Algo and AlignmentAB: the activation/filter iterators and their access width in elements (the defaults are
// the verified kernels'; the experimental few-channel stem kernels use kFixedChannels with 4).
template <typename Element, typename TileT,
          cutlass::conv::IteratorAlgorithm Algo = cutlass::conv::IteratorAlgorithm::kOptimized,
          int AlignmentAB = Mma<Element>::kAlignment>
struct BiasActConv {
  using Accumulator = float;
  using EpilogueOp = cutlass::epilogue::thread::LinearCombinationRelu<
      Element, 128 / cutlass::sizeof_bits<Element>::value, Accumulator, float,
      cutlass::epilogue::thread::ScaleType::NoBetaScaling>;  // alpha * acc + C, C = bias broadcast (stride 0)
  using Kernel = typename cutlass::conv::kernel::DefaultConv2dFprop<
      Element, LayoutNHWC, Element, LayoutNHWC, Element, LayoutNHWC, Accumulator, cutlass::arch::OpClassTensorOp,
      cutlass::arch::Sm80, typename TileT::Threadblock, typename TileT::Warp, typename Mma<Element>::Instruction,
      EpilogueOp, cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<4>, TileT::kStages,
      cutlass::arch::OpMultiplyAdd, Algo, cutlass::conv::StrideSupport::kUnity, AlignmentAB, AlignmentAB>::Kernel;
  using Op = cutlass::conv::device::ImplicitGemmConvolution<Kernel>;
  static constexpr int kAlignment = AlignmentAB;
  static constexpr bool kResidual = false;
  static constexpr const char* kEpilogue = "bias_act";

  static typename Op::Arguments arguments(const ConvLaunchArgs& a) {
    const auto ps = to_cutlass(a.problem);
    auto* b = static_cast<Element*>(const_cast<void*>(a.bias));
    const float threshold = a.problem.relu ? 0.f : -FLT_MAX;
    return typename Op::Arguments(ps, packed_ref<Element>(a.x, ps, 'A'), packed_ref<Element>(a.w, ps, 'B'),
                                  {b, LayoutNHWC::Stride(0)}, packed_ref<Element>(a.y, ps, 'C'),
                                  {1.f, 0.f, threshold});
  }

};

template <typename Element, typename TileT>
struct ResidualReluConv {
  using Accumulator = float;
  // relu(identity(acc + bias) + residual): ActivationOp = Identity, BinaryOp = plus, UnaryOp = ReLu.
  using EpilogueOp = cutlass::epilogue::thread::LinearCombinationResidualBlock<
      Element, Accumulator, float, Element, 128 / cutlass::sizeof_bits<Element>::value,
      cutlass::epilogue::thread::Identity, cutlass::plus, cutlass::epilogue::thread::ReLu>;
  using Kernel = typename cutlass::conv::kernel::DefaultConv2dFpropWithBroadcast<
      Element, LayoutNHWC, Element, LayoutNHWC, Element, LayoutNHWC, Accumulator, cutlass::arch::OpClassTensorOp,
      cutlass::arch::Sm80, typename TileT::Threadblock, typename TileT::Warp, typename Mma<Element>::Instruction,
      EpilogueOp, cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<4>, TileT::kStages,
      cutlass::arch::OpMultiplyAdd, cutlass::conv::IteratorAlgorithm::kOptimized>::Kernel;
  using Op = cutlass::conv::device::ImplicitGemmConvolution<Kernel>;
  static constexpr int kAlignment = Mma<Element>::kAlignment;
  static constexpr bool kResidual = true;
  static constexpr const char* kEpilogue = "residual_relu";

  static typename Op::Arguments arguments(const ConvLaunchArgs& a) {
    const auto ps = to_cutlass(a.problem);
    return typename Op::Arguments(ps, packed_ref<Element>(a.x, ps, 'A'), packed_ref<Element>(a.w, ps, 'B'),
                                  packed_ref<Element>(a.residual, ps, 'C'), packed_ref<Element>(a.y, ps, 'C'),
                                  {1.f, 1.f}, cutlass::conv::SplitKMode::kSerial, const_cast<void*>(a.bias), nullptr,
                                  0, 0);
  }

};

// Heuristic: a 64-wide N tile for narrow layers (K <= 64) or when the 128x128 grid would not fill the device's
// multiprocessors twice.
template <int TileN>
int tile_score(const ConvProblem& p) {
  const int64_t sms = p.sm_count > 0 ? p.sm_count : 108;  // unknown (host-side tests): an A100's count
  const int64_t m = p.N * p.P * p.Q;
  const int64_t ctas_128 = ((m + 127) / 128) * ((p.K + 127) / 128);
  const bool narrow = p.K <= 64 || ctas_128 < 2 * sms;
  return (TileN == 64) == narrow ? 1 : 0;
}

template <typename Conv, typename TileT>
FusedKernelInfo make_info(const char* dtype_tag, ScalarKind dtype) {
  FusedKernelInfo k;
  k.name = kernel_name("sm80", dtype_tag, Conv::kEpilogue, TileT::kM, TileT::kN, TileT::kK, TileT::kStages,
                       Conv::kAlignment);
  k.dtype = dtype;
  k.min_sm = 80;
  k.max_sm = 1000;
  k.image = {80, false};  // plain sm80 code: any image from sm_80 up carries it
  // Checked on an H100 (every ResNet conv shape, benchmarks/results/); sm_8x is the arch these CUTLASS
  // configurations are written for. Other archs (Blackwell through a PTX image) only by force or the autotuner.
  k.verified_sms = {80, 86, 89, 90};
  k.can_implement = &ConvRunner<Conv>::can_implement;
  k.score = &tile_score<TileT::kN>;
  k.workspace_bytes = &ConvRunner<Conv>::workspace_bytes;
  k.launch = &ConvRunner<Conv>::launch;
  return k;
}

// Registers the four kernels of one dtype: {bias+act, bias+residual+relu} x {wide, narrow tile}.
template <typename Element, typename TileWide, typename TileNarrow>
void append_kernels(std::vector<FusedKernelInfo>& out, const char* dtype_tag, ScalarKind dtype) {
  out.push_back(make_info<BiasActConv<Element, TileWide>, TileWide>(dtype_tag, dtype));
  out.push_back(make_info<BiasActConv<Element, TileNarrow>, TileNarrow>(dtype_tag, dtype));
  out.push_back(make_info<ResidualReluConv<Element, TileWide>, TileWide>(dtype_tag, dtype));
  out.push_back(make_info<ResidualReluConv<Element, TileNarrow>, TileNarrow>(dtype_tag, dtype));
}

}  // namespace sm80
}  // namespace resnet_ext
