// What the CPU ops' small AVX-512 loops share (max_pool.cpp, pool_linear.cpp, scale_shift_act.cpp): the target they
// are compiled for (F for the arithmetic, BW and VL for 16-bit masked loads), the run-time check for it, and masked
// loads of 16 fp32 or bf16 values as fp32 lanes.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <c10/util/BFloat16.h>

#include <cstdint>

#define RESNET_EXT_AVX512_LANES 1
#define RESNET_EXT_LANES_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))

namespace resnet_ext::lanes {

// Whether this CPU runs code compiled for RESNET_EXT_LANES_TARGET (asked once).
inline bool supported() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl");
  return ok;
}

// The lanes of a vector that hold `left` more values (all 16 from 16 on, none from 0 down).
inline __mmask16 mask(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
}

RESNET_EXT_LANES_TARGET inline __m512 load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
RESNET_EXT_LANES_TARGET inline __m512 load(const c10::BFloat16* p, __mmask16 m) {  // exact: bf16 is fp32's top half
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

}  // namespace resnet_ext::lanes
#endif
