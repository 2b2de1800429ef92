// Hopper (sm_90a) GEMMs for ResNet's 1x1 stride-1 convolutions: D = act(A * B^T + bias (+ R)), see gemm_sm90.h.
//
// Each entry of gemm_sm90::kConfigs is one CUTLASS 3 kernel: the CollectiveBuilder's TMA warp-specialized mainloop
// (persistent cooperative or ping-pong, A and B both K-major) and a TMA warp-specialized epilogue whose fusion is
// an epilogue visitor tree computed in fp32:
//
//   D = max_nan( beta * R + ((scale[n] * acc + shift[n]) + bias[n]),  floor )
//                                                            beta = 1 with a residual, 0 without
//                                                            floor = 0 for ReLU, -inf for none
//
// beta = 0 makes CUTLASS skip the TMA loads of R altogether (Sm90TreeVisitor's homogeneous_multiply_add
// specialization asks the scalar whether it is zero), and max.NaN.f32 keeps NaN like torch.relu. A null bias,
// scale or shift is Sm90RowBroadcast's null default (0, 1, 0). So ReLU / identity, residual / none and folded
// (bias) / unfolded (fp32 scale and shift) BN are runtime arguments of one kernel, which keeps the kernel count
// (and compile time) at one per configuration.
//
// Compiled for every arch the extension targets, but only an sm_90a image holds real code (CUTLASS compiles the
// sm90 kernels' bodies only under __CUDA_ARCH_FEAT_SM90_ALL; other images hold stubs that trap). launch() checks
// the device and the loaded image before launching. No torch headers here: the API is gemm_sm90.h.
#include <cmath>
#include <exception>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/functional.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/kernel_hardware_info.hpp"
#include "cutlass/util/packed_stride.hpp"
#include "dispatch/conv_problem.h"
#include "experimental/gemm_sm90.h"
#include "kernels/kernels.h"

namespace resnet_ext {
namespace gemm_sm90 {
namespace {

using namespace cute;

template <class T>
using MaxNaN = cutlass::maximum_with_nan_propagation<T>;

constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

template <DType D>
using ElementOf = std::conditional_t<D == DType::BFloat16, cutlass::bfloat16_t, cutlass::half_t>;

// The kernel of kConfigs[I], built from that entry's fields.
template <int I>
struct Gemm {
  static constexpr Config kConfig = kConfigs[I];
  using Element = ElementOf<kConfig.dtype>;
  using Accumulator = float;
  using Compute = float;
  static constexpr int kAlign = kConfig.alignment;
  static_assert(kAlign * sizeof(Element) == 16, "TMA needs 16-byte aligned rows");

  using TileShape = Shape<Int<kConfig.tile_m>, Int<kConfig.tile_n>, Int<kConfig.tile_k>>;
  using ClusterShape = Shape<Int<kConfig.cluster_m>, Int<kConfig.cluster_n>, _1>;
  static constexpr bool kCoop = kConfig.schedule == Schedule::Cooperative;
  using MainloopSchedule = std::conditional_t<kCoop, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                                              cutlass::gemm::KernelTmaWarpSpecializedPingpong>;
  using EpilogueSchedule = std::conditional_t<kCoop, cutlass::epilogue::TmaWarpSpecializedCooperative,
                                              cutlass::epilogue::TmaWarpSpecialized>;

  using LayoutA = cutlass::layout::RowMajor;     // [M, K], K contiguous
  using LayoutB = cutlass::layout::ColumnMajor;  // [K, N] column-major = the weight [N, K] row-major
  using LayoutC = cutlass::layout::RowMajor;     // residual and output [M, N]

  // The epilogue visitor tree (children first, then the node's own operation).
  using Bias = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, Element, Compute, Stride<_0, _1, int64_t>>;
  using Fp32Row = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, Compute, Stride<_0, _1, int64_t>>;
  using ScaledAcc = cutlass::epilogue::fusion::Sm90EVT<  // scale * acc + shift
      cutlass::epilogue::fusion::Sm90Compute<cutlass::homogeneous_multiply_add, Compute, Compute, kRound>,
      Fp32Row, cutlass::epilogue::fusion::Sm90AccFetch, Fp32Row>;
  using AccPlusBias = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::plus, Compute, Compute, kRound>, ScaledAcc, Bias>;
  using PlusResidual = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::homogeneous_multiply_add, Compute, Compute, kRound>,
      cutlass::epilogue::fusion::Sm90ScalarBroadcast<Compute>,  // beta
      cutlass::epilogue::fusion::Sm90SrcFetch<Element>,          // R (TMA-loaded only when beta != 0)
      AccPlusBias>;
  using Fusion = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<MaxNaN, Element, Compute, kRound>,
      PlusResidual,
      cutlass::epilogue::fusion::Sm90ScalarBroadcast<Compute>>;  // floor: 0 (ReLU) or -inf

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, Accumulator, Compute, Element, LayoutC, kAlign, Element,
      LayoutC, kAlign, EpilogueSchedule, Fusion>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA, kAlign, Element, LayoutB, kAlign,
      Accumulator, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      MainloopSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue,
                                                      cutlass::gemm::PersistentScheduler>;
  using Op = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static constexpr int kStages = Mainloop::DispatchPolicy::Stages;
#ifndef RESNET_EXT_GEMM_SM90_PROBE
  static_assert(kStages == kConfig.stages, "kConfigs[].stages (and the name) must say the pipeline depth compiled");
#endif

  static typename Op::Arguments arguments(const Problem& p) {
    const int m = int(p.m), n = int(p.n), k = int(p.k);
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideC = typename Kernel::StrideC;
    using StrideD = typename Kernel::StrideD;
    // Packed strides for the shapes, then the leading dimensions the caller gave.
    StrideA stride_a = cutlass::make_cute_packed_stride(StrideA{}, cute::make_shape(m, k, 1));
    StrideB stride_b = cutlass::make_cute_packed_stride(StrideB{}, cute::make_shape(n, k, 1));
    StrideC stride_c = cutlass::make_cute_packed_stride(StrideC{}, cute::make_shape(m, n, 1));
    StrideD stride_d = cutlass::make_cute_packed_stride(StrideD{}, cute::make_shape(m, n, 1));
    get<0>(stride_a) = p.lda;
    get<0>(stride_b) = p.ldb;
    get<0>(stride_c) = p.residual ? p.ldr : p.ldd;
    get<0>(stride_d) = p.ldd;

    auto* d = static_cast<Element*>(p.d);
    // Without a residual beta is 0 and R is never loaded; D stands in so that the TMA descriptor is well formed.
    const auto* r = p.residual ? static_cast<const Element*>(p.residual) : d;

    typename Op::Arguments args{};
    args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
    args.problem_shape = {m, n, k, 1};
    args.mainloop = {static_cast<const Element*>(p.a), stride_a, static_cast<const Element*>(p.b), stride_b};
    args.epilogue.ptr_C = r;
    args.epilogue.dC = stride_c;
    args.epilogue.ptr_D = d;
    args.epilogue.dD = stride_d;

    // Each node's arguments hold its children's (op_0, op_1, ...) and then its own operation's.
    auto& root = args.epilogue.thread;          // max_nan(op_0: PlusResidual, op_1: floor)
    auto& plus_residual = root.op_0;           // multiply_add(op_0: beta, op_1: R, op_2: AccPlusBias)
    auto& acc_plus_bias = plus_residual.op_2;  // plus(op_0: ScaledAcc, op_1: bias)
    auto& scaled_acc = acc_plus_bias.op_0;      // multiply_add(op_0: scale, op_1: acc, op_2: shift)
    plus_residual.op_0.scalars[0] = p.residual ? 1.f : 0.f;
    acc_plus_bias.op_1.ptr_row = static_cast<const Element*>(p.bias);  // null: the null_default, zeros
    acc_plus_bias.op_1.null_default = Element(0.f);
    scaled_acc.op_0.ptr_row = p.scale;
    scaled_acc.op_0.null_default = 1.f;
    scaled_acc.op_2.ptr_row = p.shift;
    scaled_acc.op_2.null_default = 0.f;
    root.op_1.scalars[0] = p.relu ? 0.f : -std::numeric_limits<float>::infinity();

    args.hw_info.device_id = p.device;
    args.hw_info.sm_count = p.sm_count;  // 0: CUTLASS queries the device at launch (never in can_implement)
    return args;
  }

  static Status can_implement(const Problem& p, const char** reason) {
    Status s = check_problem(kConfig, p, reason);
    if (s != Status::kSuccess) return s;
    if (Op::can_implement(arguments(p)) != cutlass::Status::kSuccess) {
      if (reason) *reason = "CUTLASS's can_implement rejects the problem";
      return Status::kCutlassError;
    }
    return Status::kSuccess;
  }

  static size_t workspace_size(const Problem& p) { return Op::get_workspace_size(arguments(p)); }

  static Status launch(const Problem& p, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                       const char** reason) {
    auto fail = [&](Status s, const char* why) {
      if (reason) *reason = why;
      return s;
    };
    Status s = can_implement(p, reason);
    if (s != Status::kSuccess) return s;
    // The device must be an sm_90, and the image of the kernel the driver picked must be an sm_90 one: on an
    // sm_90 device an sm_80 image would load too, and hold only CUTLASS's trapping stub.
    int device = 0, major = 0, minor = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    if (e != cudaSuccess) return fail(Status::kCudaError, cudaGetErrorString(e));
    if (major != 9 || minor != 0) return fail(Status::kUnsupportedDevice, "the current device is not an sm_90");
    cudaFuncAttributes attr{};
    e = cudaFuncGetAttributes(&attr, cutlass::device_kernel<Kernel>);
    if (e != cudaSuccess) return fail(Status::kCudaError, cudaGetErrorString(e));
    if (attr.binaryVersion != 90) return fail(Status::kUnsupportedDevice, "no sm_90 image of the kernel in this binary");

    auto args = arguments(p);
    if (p.sm_count <= 0) {
      int sms = 0;
      e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
      if (e != cudaSuccess) return fail(Status::kCudaError, cudaGetErrorString(e));
      args.hw_info.sm_count = sms;
    }
    args.hw_info.device_id = device;
    const size_t needed = Op::get_workspace_size(args);
    if (workspace_bytes < needed || (needed && !workspace))
      return fail(Status::kWorkspaceTooSmall, "the workspace is smaller than workspace_size()");
    Op op;
    cutlass::Status cs = op.initialize(args, needed ? workspace : nullptr, stream);
    if (cs != cutlass::Status::kSuccess) return fail(Status::kCutlassError, "CUTLASS's initialize failed");
    cs = op.run(stream);
    if (cs != cutlass::Status::kSuccess) {
      e = cudaGetLastError();
      return fail(Status::kCutlassError, e != cudaSuccess ? cudaGetErrorString(e) : "CUTLASS's run failed");
    }
    e = cudaGetLastError();
    if (e != cudaSuccess) return fail(Status::kCudaError, cudaGetErrorString(e));
    return Status::kSuccess;
  }
};

#ifdef RESNET_EXT_GEMM_SM90_PROBE
template <int Stages, int SmemBytes>
struct ShowStagesAndSmem;
template <int I>
void probe() {
  ShowStagesAndSmem<Gemm<I>::kStages, int(sizeof(typename Gemm<I>::Kernel::SharedStorage))>{};
}
void probe_one() { probe<RESNET_EXT_GEMM_SM90_PROBE>(); }
#endif

// Calls f(Gemm<I>{}) for the I == index, by a compile-time unrolled search over the table.
template <int I = 0, class F>
auto visit(int index, F&& f) -> decltype(f(Gemm<0>{})) {
  if constexpr (I < kNumConfigs) {
    if (index == I) return f(Gemm<I>{});
    return visit<I + 1>(index, static_cast<F&&>(f));
  } else {
    return f(nullptr);
  }
}

}  // namespace

// f(Gemm<I>{}) for the configuration `index`, in the API's noexcept terms: kUnknownConfig where there is none, an
// exception as kInternalError with `what` as the reason.
template <class F>
Status call_config(int index, const char** reason, const char* what, F&& f) noexcept {
  try {
    if (!config(index)) {
      if (reason) *reason = "no such configuration";
      return Status::kUnknownConfig;
    }
    return visit(index, [&](auto g) -> Status {
      if constexpr (std::is_same_v<decltype(g), std::nullptr_t>) {
        return Status::kUnknownConfig;
      } else {
        return f(g);
      }
    });
  } catch (...) {
    if (reason) *reason = what;
    return Status::kInternalError;
  }
}

Status can_implement(int index, const Problem& p, const char** reason) noexcept {
  return call_config(index, reason, "exception in can_implement",
                     [&](auto g) { return decltype(g)::can_implement(p, reason); });
}

size_t workspace_size(int index, const Problem& p) noexcept {
  try {
    if (!config(index) || check_problem(*config(index), p) != Status::kSuccess) return 0;
    return visit(index, [&](auto g) -> size_t {
      if constexpr (std::is_same_v<decltype(g), std::nullptr_t>) {
        return 0;
      } else {
        return decltype(g)::workspace_size(p);
      }
    });
  } catch (...) {
    return 0;
  }
}

Status launch(int index, const Problem& p, void* workspace, size_t workspace_bytes, void* stream,
              const char** reason) noexcept {
  return call_config(index, reason, "exception in launch", [&](auto g) {
    return decltype(g)::launch(p, workspace, workspace_bytes, static_cast<cudaStream_t>(stream), reason);
  });
}

bool compiled() noexcept {
#if defined(CUTLASS_ARCH_MMA_SM90_SUPPORTED)
  return true;
#else
  return false;
#endif
}

}  // namespace gemm_sm90
}  // namespace resnet_ext


// ---- The dispatcher's view: these GEMMs as fused conv kernels (1x1, stride 1, no padding) ------------------------
//
// Registered opt-in: verified_sms is empty until the kernels have been checked on a Hopper GPU, so the dispatcher's
// own choices (heuristic, measured table) never use them; force_kernel(name) and the autotuner (which compares each
// candidate's output with the stock result) may. The conv's operands are already checked by the dispatcher
// (common_rejection: dense NHWC / KRSC, 16-byte aligned, under 2 GiB), so the GEMM view is
//   A = x [N*H*W, C] (lda = C), B = w [K, C] (ldb = C), R = residual and D = y [N*H*W, K] (ldr = ldd = K);
// the problem's fp32 scale and shift (conv_bn_act's scale/shift arguments) are the epilogue's.

namespace resnet_ext {
namespace {

// can_implement judges shapes and leading dimensions only: the operands' real addresses (checked for alignment by
// the dispatcher, and 0 for the output the op has not allocated yet) are replaced by distinct, aligned stand-ins
// far apart. The launch checks the real pointers again (alignment, and that y overlaps no input).
const void* stand_in(int slot) { return reinterpret_cast<const void*>(uintptr_t(slot) << 44); }

gemm_sm90::Problem gemm_problem(const ConvProblem& p, const void* x, const void* w, const void* bias,
                                const void* residual, void* y, const float* scale, const float* shift) {
  gemm_sm90::Problem g;
  g.dtype = p.dtype == ScalarKind::BFloat16 ? gemm_sm90::DType::BFloat16 : gemm_sm90::DType::Float16;
  g.m = p.N * p.H * p.W;
  g.n = p.K;
  g.k = p.C;
  g.a = x;
  g.lda = p.C;
  g.b = w;
  g.ldb = p.C;
  g.bias = bias;
  g.scale = scale;
  g.shift = shift;
  g.residual = residual;
  g.ldr = residual ? p.K : 0;
  g.d = y;
  g.ldd = p.K;
  g.relu = p.relu;
  g.device = p.device >= 0 ? p.device : 0;
  g.sm_count = p.sm_count;
  return g;
}

gemm_sm90::Problem gemm_problem(const ConvProblem& p) {
  const auto* scale = p.has_scale_shift ? static_cast<const float*>(stand_in(6)) : nullptr;
  const auto* shift = p.has_scale_shift ? static_cast<const float*>(stand_in(7)) : nullptr;
  return gemm_problem(p, stand_in(1), stand_in(2), stand_in(3), p.has_residual ? stand_in(4) : nullptr,
                      const_cast<void*>(stand_in(5)), scale, shift);
}

std::string conv_rejection(const ConvProblem& p) {
  if (p.dtype != ScalarKind::BFloat16 && p.dtype != ScalarKind::Float16) return "fp16 and bf16 only";
  if (p.groups != 1) return "groups != 1";
  if (p.R != 1 || p.S != 1 || p.stride_h != 1 || p.stride_w != 1 || p.pad_h != 0 || p.pad_w != 0 ||
      p.dil_h != 1 || p.dil_w != 1)
    return "a GEMM kernel: 1x1 convolutions with stride 1, no padding and dilation 1 only";
  if (p.P != p.H || p.Q != p.W) return "output size differs from the input's";
  // The GEMM view (lda = ldb = C, ldr = ldd = K) holds only for dense NHWC / KRSC operands. The dispatcher checks
  // this too (common_rejection), but the kernel must not rely on being asked in that order.
  if (!p.x.present || !p.x.nhwc_dense()) return "x is not channels_last (NHWC) contiguous";
  if (!p.w.present || !p.w.nhwc_dense()) return "weight is not KRSC (channels_last) contiguous";
  if (!p.y.present || !p.y.nhwc_dense()) return "y is not channels_last (NHWC) contiguous";
  if (p.has_residual && (!p.residual.present || !p.residual.nhwc_dense()))
    return "residual is not channels_last (NHWC) contiguous";
  if (p.bias.present && !p.bias.dense_vector()) return "bias is not contiguous";
  if (!p.x.aligned(16) || !p.w.aligned(16) || !p.y.aligned(16) || (p.has_residual && !p.residual.aligned(16)))
    return "x, weight, residual and y must be 16-byte aligned";
  if (p.bias.present && !p.bias.aligned(2)) return "bias must be aligned to its element size";
  return "";
}

template <int I>
struct GemmConvKernel {
  static std::string can_implement(const ConvProblem& p) {
    std::string why = conv_rejection(p);
    if (!why.empty()) return why;
    const char* reason = "";
    const gemm_sm90::Status s = gemm_sm90::can_implement(I, gemm_problem(p), &reason);
    if (s == gemm_sm90::Status::kSuccess) return "";
    return std::string(gemm_sm90::status_string(s)) + ": " + reason;
  }

  // 1 for the configuration gemm_sm90::heuristic_score prefers for this problem among those of its dtype (the first
  // in the table on a tie), else 0: the sm80 kernels' scale. An unmeasured model; it matters only once these kernels
  // are verified.
  static int score(const ConvProblem& p) {
    const gemm_sm90::Config& mine = gemm_sm90::kConfigs[I];
    const int64_t m = p.N * p.H * p.W;
    const int64_t my_score = gemm_sm90::heuristic_score(mine, m, p.K, p.C, p.sm_count);
    for (int j = 0; j < gemm_sm90::kNumConfigs; ++j) {
      const gemm_sm90::Config& c = gemm_sm90::kConfigs[j];
      if (j == I || c.dtype != mine.dtype) continue;
      const int64_t s = gemm_sm90::heuristic_score(c, m, p.K, p.C, p.sm_count);
      if (s > my_score || (s == my_score && j < I)) return 0;  // ties: the first in the table
    }
    return 1;
  }

  static size_t workspace_bytes(const ConvProblem& p) { return gemm_sm90::workspace_size(I, gemm_problem(p)); }

  static std::string launch(const ConvLaunchArgs& a) {
    const ConvProblem& p = a.problem;
    std::string why = conv_rejection(p);
    if (!why.empty()) return why;
    const char* reason = "";
    const gemm_sm90::Status s =
        gemm_sm90::launch(I, gemm_problem(p, a.x, a.w, a.bias, a.residual, a.y, a.scale, a.shift), a.workspace,
                          a.workspace_bytes, a.stream, &reason);
    if (s == gemm_sm90::Status::kSuccess) return "";
    return std::string(gemm_sm90::kConfigs[I].name) + ": " + gemm_sm90::status_string(s) + ": " + reason;
  }

  static FusedKernelInfo info() {
    const gemm_sm90::Config& c = gemm_sm90::kConfigs[I];
    FusedKernelInfo k;
    k.name = c.name;
    k.dtype = c.dtype == gemm_sm90::DType::BFloat16 ? ScalarKind::BFloat16 : ScalarKind::Float16;
    k.min_sm = 90;
    k.max_sm = 90;
    k.image = {90, true};  // wgmma/TMA: only in an sm_90a image
    k.scale_shift = true;  // the EVT epilogue's fp32 per-channel scale and shift
    k.verified_sms = {};   // not yet checked on a Hopper GPU: the dispatcher never picks them on its own
    k.can_implement = &can_implement;
    k.score = &score;
    k.workspace_bytes = &workspace_bytes;
    k.launch = &launch;
    return k;
  }
};

template <int... I>
void append_all(std::vector<FusedKernelInfo>& out, std::integer_sequence<int, I...>) {
  (out.push_back(GemmConvKernel<I>::info()), ...);
}

}  // namespace

void append_cutlass_gemm_sm90_kernels(std::vector<FusedKernelInfo>& out) {
  append_all(out, std::make_integer_sequence<int, gemm_sm90::kNumConfigs>{});
}

}  // namespace resnet_ext
