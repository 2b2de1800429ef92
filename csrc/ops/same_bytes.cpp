// resnet_ext._C.same_bytes: whether a list of (optional) CPU tensors is, byte for byte, what it was at the last call
// with the same snapshot, and the snapshot brought up to date where it is not. The default mode's BN scale and
// shift are reused only when this says every BN tensor is unchanged (ops.bn_affine_pairs): a write through `.data`
// leaves a parameter's version counter as it was, so the bytes are the only proof. One pass of memcmp, where
// the same check in Python (a cat of resnet18's 80 BN vectors, torch.equal, per-tensor checks) cost more than
// the fold it would save.
#include "ops/same_bytes.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <atomic>

#include <ATen/Parallel.h>

#include "ops/avx512_lanes.h"

namespace resnet_ext {
namespace {

// Compares `n` bytes at `src` with the snapshot at `*pos`; from the first difference on, copies instead.
inline void check_or_copy(uint8_t* snap, size_t* pos, const void* src, size_t n, bool* same) {
  if (n == 0) return;
  if (*same && std::memcmp(snap + *pos, src, n) != 0) *same = false;
  if (!*same) std::memcpy(snap + *pos, src, n);
  *pos += n;
}

// Whether t's values are its bytes, all of them there to read: a plain dense CPU tensor (not a Python subclass, a
// lazy negation/conjugation or a zero tensor without memory) whose storage holds every element (FSDP-style code
// frees a tensor's storage by resizing it to 0; reading it then would run past its end).
bool holds_its_elements(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  // The last element's place, whatever the strides (an expanded vector, stride 0, spans one element).
  int64_t last = t.storage_offset();
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const c10::Storage& st = t.storage();
  return st.data() != nullptr && st.nbytes() >= static_cast<size_t>(last + 1) * t.element_size();
}

bool comparable(const at::Tensor& t) {
  return t.layout() == at::kStrided && t.device().is_cpu() && !t.key_set().has(c10::DispatchKey::Python) &&
         !t._is_zerotensor() && t.has_storage() && t.is_contiguous() && !t.is_neg() && !t.is_conj() &&
         holds_its_elements(t);
}

}  // namespace

// The snapshot: a header (per tensor: -1 where absent, else its dtype, dim and sizes) then every tensor's bytes.
// A tensor that cannot be compared (`comparable`) makes the result false and empties the snapshot, so that no later
// call can match it.
bool same_bytes(const std::vector<std::optional<at::Tensor>>& tensors, at::Tensor& snapshot) {
  using at::Tensor;
  TORCH_CHECK(snapshot.scalar_type() == at::kByte && snapshot.dim() == 1 && snapshot.is_contiguous() &&
                  snapshot.device().is_cpu(),
              "same_bytes: snapshot must be a 1-d contiguous uint8 CPU tensor, got ", snapshot.scalar_type(), " ",
              snapshot.sizes(), " on ", snapshot.device());
  std::vector<int64_t> header;
  header.reserve(4 * tensors.size());
  std::vector<const Tensor*> present;
  present.reserve(tensors.size());
  size_t data_bytes = 0;
  for (const std::optional<Tensor>& o : tensors) {
    if (!o.has_value() || !o->defined()) {
      header.push_back(-1);
      continue;
    }
    const Tensor& t = *o;
    if (!comparable(t)) {
      snapshot.resize_({0});
      return false;
    }
    header.push_back(static_cast<int64_t>(t.scalar_type()));
    header.push_back(t.dim());
    for (int64_t s : t.sizes()) header.push_back(s);
    data_bytes += t.nbytes();
    present.push_back(&t);
  }
  const size_t header_bytes = header.size() * sizeof(int64_t);
  bool same = snapshot.numel() == static_cast<int64_t>(header_bytes + data_bytes);
  if (!same) snapshot.resize_({static_cast<int64_t>(header_bytes + data_bytes)});
  uint8_t* snap = snapshot.data_ptr<uint8_t>();
  size_t pos = 0;
  check_or_copy(snap, &pos, header.data(), header_bytes, &same);
  for (const Tensor* t : present) check_or_copy(snap, &pos, t->const_data_ptr(), t->nbytes(), &same);
  return same;
}

std::vector<std::optional<at::Tensor>> snapshot_tensors(const at::Tensor& snapshot, int64_t count) {
  std::vector<std::optional<at::Tensor>> out;
  if (snapshot.numel() == 0) return out;  // emptied: a tensor was not comparable
  TORCH_CHECK(snapshot.scalar_type() == at::kByte && snapshot.dim() == 1 && snapshot.is_contiguous() &&
                  snapshot.device().is_cpu(),
              "snapshot_tensors: snapshot must be a 1-d contiguous uint8 CPU tensor");
  const uint8_t* base = snapshot.const_data_ptr<uint8_t>();
  const size_t total = static_cast<size_t>(snapshot.numel());
  size_t pos = 0;
  auto next = [&]() {
    TORCH_CHECK(pos + sizeof(int64_t) <= total, "snapshot_tensors: the snapshot ends inside its header");
    int64_t v;
    std::memcpy(&v, base + pos, sizeof(v));
    pos += sizeof(v);
    return v;
  };
  for (int64_t i = 0; i < count; ++i) {  // the header, as same_bytes wrote it
    const int64_t kind = next();
    if (kind == -1) {
      out.emplace_back(std::nullopt);
      continue;
    }
    std::vector<int64_t> sizes(static_cast<size_t>(next()));
    for (int64_t& s : sizes) s = next();
    out.emplace_back(at::empty(sizes, at::TensorOptions().dtype(static_cast<at::ScalarType>(kind))));
  }
  for (std::optional<at::Tensor>& o : out) {  // then the bytes
    if (!o.has_value()) continue;
    const size_t n = o->nbytes();
    TORCH_CHECK(pos + n <= total, "snapshot_tensors: the snapshot ends inside its data");
    if (n > 0) std::memcpy(o->data_ptr(), base + pos, n);
    pos += n;
  }
  TORCH_CHECK(pos == total, "snapshot_tensors: ", count, " tensors do not fill the snapshot");
  return out;
}

bool allocated(const std::vector<std::optional<at::Tensor>>& tensors) {
  for (const std::optional<at::Tensor>& o : tensors) {
    if (!o.has_value() || !o->defined()) continue;
    const at::Tensor& t = *o;
    // Tensors whose elements are not bytes in a storage (a Python subclass, a zero tensor, meta, sparse) are
    // their own ops' business.
    if (t.layout() != at::kStrided || t.key_set().has(c10::DispatchKey::Python) || t._is_zerotensor() ||
        t.is_meta() || !t.has_storage())
      continue;
    if (!holds_its_elements(t)) return false;
  }
  return true;
}

namespace {

// The amount that, added to a value's masked exponent field (`exponent`, its lowest bit at `shift`, the sign bit
// right above it), carries into the sign bit exactly when the value is at least 2^log2_bound in magnitude, inf or
// NaN (the bound capped at the all-ones field, which is inf and NaN alone).
template <class U>
U carry_from(U exponent, int shift, int bias, int64_t log2_bound) {
  const int64_t full = int64_t(exponent >> shift);
  const int64_t first = std::min<int64_t>(full, bias + std::clamp<int64_t>(log2_bound, 1 - bias, full));
  return U(U(full + 1 - first) << shift);
}

// Whether any of n values is out of bounds (above). Adding `low` to the masked exponent carries into the sign bit
// exactly then, so one AND, ADD and OR per value (no compare or branch: the compiler vectorizes it with the baseline
// ISA) and a test of the accumulated top bit at the end. `bad |= (v & e) == e` stayed scalar: 84 us for a
// 1x3x224x224 fp32 input in cache, this 6-11 us (benchmarks/results/2026-12-06-cpu-entry/alone_42da709_vs_now.txt).
// Chunks of 2^16 values across the threads: the input usually comes cold from memory, where two cores read it
// faster.
template <class U>
bool any_out_of_bounds(const U* v, int64_t n, U exponent, U low) {
  const U top = U(U(1) << (sizeof(U) * 8 - 1));
  std::atomic<bool> found{false};
  at::parallel_for(0, n, int64_t(1) << 16, [&](int64_t begin, int64_t end) {
    U acc = 0;
    for (int64_t i = begin; i < end; ++i) acc |= U((v[i] & exponent) + low);
    if (acc & top) found = true;
  });
  return found;
}

// Whether x's elements are numel values from its data pointer on, in memory (not a zero tensor, a Python
// subclass or a storage resized away), with no lazy negation to apply: what the passes below may read directly.
bool dense_in_memory(const at::Tensor& x) {
  return x.device().is_cpu() && x.layout() == at::kStrided && !x.key_set().has(c10::DispatchKey::Python) &&
         !x._is_zerotensor() && x.has_storage() && !x.is_neg() && x.is_non_overlapping_and_dense() &&
         holds_its_elements(x);
}

constexpr uint32_t kF32Exponent = 0x7f800000;

#ifdef RESNET_EXT_AVX512_LANES
// y[i] = x[i] rounded to bf16 as c10::BFloat16 rounds a finite float (to nearest, ties to even: add 0x7fff plus the
// kept part's lowest bit, keep the top half); returns whether any x[i] was out of bounds (the carry test above).
RESNET_EXT_LANES_TARGET bool to_bf16_bounded(const uint32_t* x, uint16_t* y, int64_t n, uint32_t carry) {
  const __m512i exponent = _mm512_set1_epi32(kF32Exponent), low = _mm512_set1_epi32(int32_t(carry));
  const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7fff);
  __m512i acc = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = lanes::mask(n - i);
    const __m512i u = _mm512_maskz_loadu_epi32(m, x + i);
    acc = _mm512_or_si512(acc, _mm512_add_epi32(_mm512_and_si512(u, exponent), low));
    const __m512i bias = _mm512_add_epi32(half, _mm512_and_si512(_mm512_srli_epi32(u, 16), one));
    _mm256_mask_storeu_epi16(y + i, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_add_epi32(u, bias), 16)));
  }
  return _mm512_test_epi32_mask(acc, _mm512_set1_epi32(int32_t(0x80000000u))) != 0;
}
#endif

}  // namespace

at::Tensor bounded_bfloat16(const at::Tensor& x, int64_t log2_bound) {
#ifdef RESNET_EXT_AVX512_LANES
  if (lanes::supported() && x.scalar_type() == at::kFloat && dense_in_memory(x)) {
    // Same strides: the elements lie in the same order in both, numel values from each data pointer on.
    at::Tensor y = at::empty_strided(x.sizes(), x.strides(), x.options().dtype(at::kBFloat16));
    const uint32_t* xp = static_cast<const uint32_t*>(x.const_data_ptr());
    uint16_t* yp = static_cast<uint16_t*>(y.mutable_data_ptr());
    const uint32_t carry = carry_from<uint32_t>(kF32Exponent, 23, 127, log2_bound);
    std::atomic<bool> found{false};
    at::parallel_for(0, x.numel(), int64_t(1) << 16, [&](int64_t begin, int64_t end) {
      if (to_bf16_bounded(xp + begin, yp + begin, end - begin, carry)) found = true;
    });
    return found ? at::Tensor() : y;
  }
#endif
  return all_bounded(x, log2_bound) ? x.to(at::kBFloat16) : at::Tensor();
}

bool all_bounded(const at::Tensor& x, int64_t log2_bound) {
  if (dense_in_memory(x)) {
    const void* p = x.const_data_ptr();
    switch (x.scalar_type()) {
      case at::kFloat:
        return !any_out_of_bounds(static_cast<const uint32_t*>(p), x.numel(), kF32Exponent,
                                  carry_from<uint32_t>(kF32Exponent, 23, 127, log2_bound));
      case at::kBFloat16:
        return !any_out_of_bounds(static_cast<const uint16_t*>(p), x.numel(), uint16_t(0x7f80),
                                  carry_from<uint16_t>(0x7f80, 7, 127, log2_bound));
      case at::kHalf:
        return !any_out_of_bounds(static_cast<const uint16_t*>(p), x.numel(), uint16_t(0x7c00),
                                  carry_from<uint16_t>(0x7c00, 10, 15, log2_bound));
      case at::kDouble:
        return !any_out_of_bounds(static_cast<const uint64_t*>(p), x.numel(), uint64_t(0x7ff0000000000000ull),
                                  carry_from<uint64_t>(0x7ff0000000000000ull, 52, 1023, log2_bound));
      default:
        break;
    }
  }
  // NaN compares false; a bound past the dtype's range leaves isfinite's answer.
  return (at::isfinite(x) & (x.abs() < std::ldexp(1.0, int(std::min<int64_t>(log2_bound, 1024))))).all().item<bool>();
}

}  // namespace resnet_ext
