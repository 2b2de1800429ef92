// Hopper (sm_90a) implicit-GEMM conv2d fprop on CUTLASS 3's conv CollectiveBuilder: TMA im2col loads and wgmma in
// a warp-specialized kernel (KernelImplicitTmaWarpSpecializedSm90), epilogue D = act(acc + beta * residual + bias[k])
// in fp32 registers (LinCombPerColBiasEltAct; GEMM M = N*P*Q, N = K, so the per-channel bias is per column).
// beta = 1 with a residual, 0 without (then C is not read). Compiled for every arch, but only an sm_90a image holds
// the real kernel (other passes get CUTLASS's empty stubs): the registry entry says so, and the dispatcher runs
// these kernels only where such an image loads. Not verified on a GPU yet: opt-in (force_kernel, the autotuner).
#include <cfloat>
#include <string>
#include <vector>

#include "cute/tensor.hpp"
#include "cutlass/kernel_hardware_info.hpp"
#include "cutlass/conv/collective/collective_builder.hpp"
#include "cutlass/conv/convnd_problem_shape.hpp"
#include "cutlass/conv/device/conv_universal_adapter.hpp"
#include "cutlass/conv/dispatch_policy.hpp"
#include "cutlass/conv/kernel/conv_universal.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "dispatch/conv_problem.h"
#include "kernels/kernels.h"

namespace resnet_ext {
namespace sm90 {

using namespace cute;

template <typename Element, template <class> class Act, typename TileShape>
struct Conv {
  static constexpr int kAlignment = 8;  // 16-byte TMA boxes
  static constexpr bool kRelu = std::is_same_v<Act<float>, cutlass::epilogue::thread::ReLu<float>>;
  using Layout = cutlass::layout::TensorNHWC;
  using ClusterShape = Shape<_1, _1, _1>;
  using Fusion = cutlass::epilogue::fusion::LinCombPerColBiasEltAct<Act, Element, float, Element, Element, float>;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, Element, Layout, kAlignment, Element, Layout,
      kAlignment, cutlass::epilogue::TmaWarpSpecialized, Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::conv::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cutlass::conv::Operator::kFprop, Element, Layout,
      kAlignment, Element, Layout, kAlignment, float, TileShape, ClusterShape,
      cutlass::conv::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;
  using ProblemShape = cutlass::conv::ConvProblemShape<cutlass::conv::Operator::kFprop, 2>;
  using Tile = TileShape;
  using Kernel = cutlass::conv::kernel::ConvUniversal<ProblemShape, Mainloop, Epilogue>;
  using Op = cutlass::conv::device::ConvUniversalAdapter<Kernel>;
  using StrideC = typename Kernel::StrideC;
  using StrideD = typename Kernel::StrideD;

  static constexpr int kStages = Mainloop::DispatchPolicy::Stages;

  static typename Op::Arguments arguments(const ConvLaunchArgs& a) {
    const ConvProblem& p = a.problem;
    ProblemShape shape(cutlass::conv::Mode::kCrossCorrelation, {int(p.N), int(p.H), int(p.W), int(p.C)},
                       {int(p.K), int(p.R), int(p.S), int(p.C)}, {int(p.pad_h), int(p.pad_w)},
                       {int(p.pad_h), int(p.pad_w)}, {int(p.stride_h), int(p.stride_w)},
                       {int(p.dil_h), int(p.dil_w)}, 1);
    StrideC stride_c;
    StrideD stride_d;
    cute::for_each(cute::make_seq<cute::rank<0>(StrideC{})>{}, [&](auto i) {
      cute::get<0, i>(stride_c) = shape.stride_C[ProblemShape::RankT - 2 - i];
    });
    cute::for_each(cute::make_seq<cute::rank<0>(StrideD{})>{}, [&](auto i) {
      cute::get<0, i>(stride_d) = shape.stride_C[ProblemShape::RankT - 2 - i];
    });
    auto* y = static_cast<Element*>(a.y);
    // Without a residual beta is 0 and C is never read; the output stands in for it so every pointer is valid.
    const auto* c = a.residual ? static_cast<const Element*>(a.residual) : y;
    typename Op::Arguments args{
        shape,
        {static_cast<const Element*>(a.x), static_cast<const Element*>(a.w)},
        {{}, c, stride_c, y, stride_d}};
    args.epilogue.thread.alpha = 1.f;
    args.epilogue.thread.beta = a.residual ? 1.f : 0.f;
    args.epilogue.thread.bias_ptr = static_cast<const Element*>(a.bias);
    // The device's SM count, so CUTLASS never queries the device itself (it would on a host-side check).
    args.hw_info.device_id = p.device >= 0 ? p.device : 0;
    args.hw_info.sm_count = p.sm_count;
    return args;
  }

  static std::string can_implement(const ConvProblem& p) {
    if (p.groups != 1) return "groups != 1";
    if (p.C % kAlignment || p.K % kAlignment) return "C and K must be multiples of 8";
    if (p.has_residual && !p.relu) return "residual without ReLU";
    if (p.relu != kRelu) return "other activation";
    ConvLaunchArgs a;
    a.problem = p;
    auto s = Op::can_implement(arguments(a));
    return s == cutlass::Status::kSuccess ? "" : std::string("CUTLASS: ") + cutlass::cutlassGetStatusString(s);
  }

  static size_t workspace_bytes(const ConvProblem& p) {
    ConvLaunchArgs a;
    a.problem = p;
    return Op::get_workspace_size(arguments(a));
  }

  static std::string launch(const ConvLaunchArgs& a) {
    Op op;
    auto args = arguments(a);
    const size_t needed = Op::get_workspace_size(args);
    if (a.workspace_bytes < needed)
      return "workspace of " + std::to_string(a.workspace_bytes) + " bytes, the kernel needs " + std::to_string(needed);
    auto stream = static_cast<cudaStream_t>(a.stream);
    cutlass::Status s = op.initialize(args, needed ? a.workspace : nullptr, stream);
    if (s == cutlass::Status::kSuccess) s = op.run(stream);
    if (s != cutlass::Status::kSuccess) return std::string("CUTLASS: ") + cutlass::cutlassGetStatusString(s);
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? "" : std::string("CUDA: ") + cudaGetErrorString(e);
  }
};

template <typename C>
FusedKernelInfo info(const char* dtype_tag, ScalarKind dtype) {
  FusedKernelInfo k;
  k.name = kernel_name("sm90", dtype_tag, C::kRelu ? "relu" : "linear", int(size<0>(typename C::Tile{})),
                       int(size<1>(typename C::Tile{})), int(size<2>(typename C::Tile{})), C::kStages, C::kAlignment);
  k.dtype = dtype;
  k.min_sm = 90;
  k.max_sm = 90;
  k.image = {90, true};  // wgmma/TMA: only in an sm_90a image
  k.verified_sms = {};   // not yet checked on a Hopper GPU: the dispatcher never picks them on its own
  k.can_implement = &C::can_implement;
  k.score = [](const ConvProblem&) { return 0; };
  k.workspace_bytes = &C::workspace_bytes;
  k.launch = &C::launch;
  return k;
}

using Tile128 = Shape<_128, _128, Shape<_64>>;

}  // namespace sm90

void append_cutlass_sm90_kernels(std::vector<FusedKernelInfo>& out) {
  using namespace sm90;
  using cutlass::epilogue::thread::Identity;
  using cutlass::epilogue::thread::ReLu;
  out.push_back(info<Conv<cutlass::bfloat16_t, ReLu, Tile128>>("bf16", ScalarKind::BFloat16));
  out.push_back(info<Conv<cutlass::bfloat16_t, Identity, Tile128>>("bf16", ScalarKind::BFloat16));
  out.push_back(info<Conv<cutlass::half_t, ReLu, Tile128>>("f16", ScalarKind::Float16));
  out.push_back(info<Conv<cutlass::half_t, Identity, Tile128>>("f16", ScalarKind::Float16));
}

}  // namespace resnet_ext
