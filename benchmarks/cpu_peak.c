// The machine's arithmetic peak per core and on all cores, for the roofline figures (cpu_roofline.py): a loop of
// N independent accumulators of vdpbf16ps (bf16 pairs into fp32, 64 flops per instruction) and of fp32 FMA (32),
// nothing but registers.
// Build and run: gcc -O2 -fopenmp benchmarks/cpu_peak.c -o /tmp/cpu_peak && OMP_NUM_THREADS=1 /tmp/cpu_peak &&
// OMP_NUM_THREADS=2 /tmp/cpu_peak   (x86-64 with AVX512-BF16; idle machine)
#include <immintrin.h>
#include <stdio.h>
#include <omp.h>
#define N 30
__attribute__((target("avx512f,avx512bf16"))) double run_bf16(long iters) {
  double t0 = omp_get_wtime();
  #pragma omp parallel
  {
    __m512 acc[N]; for (int i = 0; i < N; ++i) acc[i] = _mm512_setzero_ps();
    __m512i a = _mm512_set1_epi32(0x3f803f80), b = _mm512_set1_epi32(0x3f803f80);
    for (long it = 0; it < iters; ++it) {
      #pragma GCC unroll 30
      for (int i = 0; i < N; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)a, (__m512bh)b);
      __asm__ volatile("" : "+v"(a));
    }
    float s = 0; for (int i = 0; i < N; ++i) s += _mm512_reduce_add_ps(acc[i]);
    if (s == 1.2345f) printf("x");
  }
  return omp_get_wtime() - t0;
}
__attribute__((target("avx512f"))) double run_f32(long iters) {
  double t0 = omp_get_wtime();
  #pragma omp parallel
  {
    __m512 acc[N]; for (int i = 0; i < N; ++i) acc[i] = _mm512_setzero_ps();
    __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(1e-9f);
    for (long it = 0; it < iters; ++it) {
      #pragma GCC unroll 30
      for (int i = 0; i < N; ++i) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
      __asm__ volatile("" : "+v"(a));
    }
    float s = 0; for (int i = 0; i < N; ++i) s += _mm512_reduce_add_ps(acc[i]);
    if (s == 1.2345f) printf("x");
  }
  return omp_get_wtime() - t0;
}
int main() {
  long it = 20000000;
  int th = omp_get_max_threads();
  for (int r = 0; r < 3; ++r) {
    double t = run_bf16(it);
    printf("threads %d bf16 dp: %.0f GFLOP/s\n", th, th * (double)it * N * 64 / t / 1e9);
    t = run_f32(it);
    printf("threads %d fp32 fma: %.0f GFLOP/s\n", th, th * (double)it * N * 32 / t / 1e9);
  }
}
