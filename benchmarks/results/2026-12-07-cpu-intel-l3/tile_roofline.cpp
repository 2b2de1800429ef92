// One core's fp32 FMA rate on the 6 x 64 register tile of csrc/ops/cpu_gemm.h (the same loop): B's panel in L1
// (depth 64) or streamed from L2 (depth 1024-2048), and depth-blocked (KB: parts of KB channels, sums through memory).
// g++ -O3 -mavx512f -o tile tile_roofline.cpp && ./tile DEPTH ROWS KB
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cstring>
// ACC: the partial sums start from y (depth-blocked: each part adds to the sums through memory).
template <bool ACC>
__attribute__((noinline)) void tile(const float* a, long lda, const float* b, long depth, float* y) {
  __m512 acc[6][4];
  for (int r = 0; r < 6; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = ACC ? _mm512_loadu_ps(y + r * 64 + 16 * j) : _mm512_setzero_ps();
  for (long i = 0; i < depth; ++i) {
    __m512 bv[4];
    for (int j = 0; j < 4; ++j) bv[j] = _mm512_loadu_ps(b + i * 64 + 16 * j);
    for (int r = 0; r < 6; ++r) {
      __m512 av = _mm512_set1_ps(a[r * lda + i]);
      for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_fmadd_ps(av, bv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < 6; ++r) for (int j = 0; j < 4; ++j) _mm512_storeu_ps(y + r * 64 + 16 * j, acc[r][j]);
}
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
int main(int argc, char** argv) {
  const long C = atol(argv[1]), P = atol(argv[2]), KB = atol(argv[3]);  // depth, rows, depth block (0: none)
  const int panels = 4;
  std::vector<float> A(P * C, 0.01f), B(panels * C * 64, 0.02f), Y(P * 64 * panels, 0.f);
  double best = 1e9;
  for (int rep = 0; rep < 200; ++rep) {
    double t = now();
    for (int k = 0; k < panels; ++k) {
      const float* b = B.data() + k * C * 64;
      if (KB == 0) {
        for (long r = 0; r + 6 <= P; r += 6)
          tile<false>(A.data() + r * C, C, b, C, Y.data() + r * 64 * panels + k * 64);
      } else {
        for (long d = 0; d < C; d += KB)
          for (long r = 0; r + 6 <= P; r += 6)
            tile<true>(A.data() + r * C + d, C, b + d * 64, KB, Y.data() + r * 64 * panels + k * 64);
      }
    }
    t = now() - t;
    if (t < best) best = t;
  }
  const double fl = 2.0 * (P / 6 * 6) * C * 64 * panels;
  printf("C=%ld P=%ld KB=%ld: %.1f us, %.1f GFLOP/s\n", C, P, KB, best * 1e6, fl / best / 1e9);
}
