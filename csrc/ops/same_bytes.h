// resnet_ext._C.same_bytes (same_bytes.cpp): whether CPU tensors are, byte for byte, what a snapshot recorded;
// resnet_ext._C.allocated: whether tensors' storages still hold their elements; resnet_ext._C.all_bounded and
// bounded_bfloat16.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace resnet_ext {

// True where every tensor (dtype, shape and bytes; absent where absent) is what `snapshot` (1-d uint8, CPU)
// recorded at the last call; else false, and the snapshot rewritten to record them now (emptied where one is not a
// dense CPU tensor, so that no later call matches).
bool same_bytes(const std::vector<std::optional<at::Tensor>>& tensors, at::Tensor& snapshot);

// Copies of the `count` tensors the snapshot recorded (None where absent), or an empty list where it is empty: the
// values a caller computes from after `same_bytes` said they changed, so that its result belongs to the recorded
// bytes even where another thread writes the live tensors meanwhile.
std::vector<std::optional<at::Tensor>> snapshot_tensors(const at::Tensor& snapshot, int64_t count);

// False where a strided tensor's storage no longer holds all its elements (freed by resizing it, as FSDP-style
// code does): ATen's own kernels read such a tensor out of bounds; its modules raise a clean error.
bool allocated(const std::vector<std::optional<at::Tensor>>& tensors);

// Whether every element of a floating-point CPU tensor is finite and below 2^log2_bound in magnitude (a bound past
// the dtype's range: finite): for a dense float32, bfloat16, float16 or float64 one pass over the exponent bits
// (no sum, so no overflow), else ATen's isfinite and abs.
bool all_bounded(const at::Tensor& x, int64_t log2_bound);

// x.to(torch.bfloat16) where `all_bounded(x, log2_bound)`, else an undefined tensor (None): one pass that checks and
// rounds a dense float32 CPU x (the frozen bf16 mode's input), `all_bounded` and ATen's cast for anything else.
at::Tensor bounded_bfloat16(const at::Tensor& x, int64_t log2_bound);

}  // namespace resnet_ext
