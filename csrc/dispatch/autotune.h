// Opt-in per-shape autotuner for conv_bn_act's fused kernels (resnet_ext.autotune(True), `bench --autotune`).
// On the first call for a problem it times the fallback path and every kernel the dispatcher lets it try
// (tuning_candidates: verified or not), rejects any whose launch fails or whose output differs from the stock
// result, and stores the winner in the dispatcher's cache under the problem's full key. The dispatcher re-checks
// the cached choice on every later call. CUDA builds only.
#pragma once

#ifdef RESNET_EXT_WITH_CUDA

#include "ops/conv_bn_act.h"

namespace resnet_ext {

// Runs the tuning for one problem with the call's real operands and stores the result (store_tuned_choice).
KernelChoice autotune_problem(const ConvProblem& p, const ConvOperands& ops, const ConvParams& c, bool relu);

}  // namespace resnet_ext

#endif  // RESNET_EXT_WITH_CUDA
