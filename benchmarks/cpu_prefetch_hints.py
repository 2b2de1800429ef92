"""Which prefetch hint leaves a cold range readable fastest after a compute-bound loop: two threads run FMAs on
64 KB for ~0.5 ms while issuing one prefetch every EVERY steps over a cold target (1 or 4 MB, after a 64 MB
flush), then `target.sum()` is timed; "none" issues no prefetch. Also the plain cold and warm (L3) read rates of
1-16 MB. The choice behind cpu_gemm::Prefetch's prefetcht0 (benchmarks/results/2026-12-05-cpu-prefetch/).
Usage: python benchmarks/cpu_prefetch_hints.py   (2 threads; idle machine; compiles a small extension first)."""
import statistics
import time

import torch
from torch.utils.cpp_extension import load_inline

SRC = r'''
#include <torch/extension.h>
#include <immintrin.h>
#include <omp.h>
template <int H>
double run(torch::Tensor hot, torch::Tensor tgt, int64_t iters, int64_t every, bool pf) {
  const float* h = hot.data_ptr<float>();
  const char* t = reinterpret_cast<const char*>(tgt.data_ptr<float>());
  const int64_t lines = tgt.numel() * 4 / 64, n = hot.numel();
  double total = 0;
#pragma omp parallel num_threads(2) reduction(+ : total)
  {
    const int id = omp_get_thread_num();
    const char* p = t + (lines / 2) * id * 64;
    const char* end = p + (lines / 2) * 64;
    __m512 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm512_setzero_ps();
    int64_t cnt = every;
    for (int64_t it = 0; it < iters; ++it) {
      for (int64_t i = 0; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(h + i);
        for (int j = 0; j < 8; ++j) acc[j] = _mm512_fmadd_ps(v, v, acc[j]);
        if (pf && --cnt == 0) {
          if (p < end) {
            _mm_prefetch(p, (_mm_hint)H);
            p += 64;
          }
          cnt = every;
        }
      }
    }
    float s[16];
    __m512 a = acc[0];
    for (int j = 1; j < 8; ++j) a = _mm512_add_ps(a, acc[j]);
    _mm512_storeu_ps(s, a);
    total += s[0];
  }
  return total;
}
double go(torch::Tensor hot, torch::Tensor tgt, int64_t iters, int64_t every, int64_t hint) {
  switch (hint) {
    case 0: return run<_MM_HINT_T0>(hot, tgt, iters, every, true);
    case 1: return run<_MM_HINT_T1>(hot, tgt, iters, every, true);
    case 2: return run<_MM_HINT_T2>(hot, tgt, iters, every, true);
    case 3: return run<_MM_HINT_NTA>(hot, tgt, iters, every, true);
    default: return run<_MM_HINT_T0>(hot, tgt, iters, every, false);
  }
}
'''


def main() -> None:
    m = load_inline("resnet_ext_prefetch_hints", cpp_sources=SRC, functions=["go"],
                    extra_cflags=["-O3", "-mavx512f", "-fopenmp"], extra_ldflags=["-fopenmp"])
    torch.set_num_threads(2)
    hot = torch.randn(16 << 10)
    flush = torch.randn(64 << 18)
    for mb in (0.5, 1, 2, 4, 8, 16):
        t = torch.randn(int(mb * (1 << 18)))
        cold, warm = [], []
        for _ in range(15):
            flush.add_(1.0)
            t0 = time.perf_counter()
            t.sum()
            t1 = time.perf_counter()
            t.sum()
            t2 = time.perf_counter()
            cold.append(t1 - t0)
            warm.append(t2 - t1)
        c, w = statistics.median(cold), statistics.median(warm)
        print(f"read {mb} MB: cold {c * 1e6:.0f} us ({mb / 1024 / c:.1f} GB/s), warm {w * 1e6:.0f} us "
              f"({mb / 1024 / w:.1f} GB/s)")
    for mb in (1, 4):
        tgt = torch.randn(mb << 18)
        for hint, name in ((-1, "none"), (0, "T0"), (1, "T1"), (2, "T2"), (3, "NTA")):
            for every in ((1, 4, 8) if hint >= 0 else (1,)):
                cs, rs = [], []
                for _ in range(11):
                    flush.add_(1.0)
                    t0 = time.perf_counter()
                    m.go(hot, tgt, 200, every, hint)
                    t1 = time.perf_counter()
                    tgt.sum()
                    t2 = time.perf_counter()
                    cs.append(t1 - t0)
                    rs.append(t2 - t1)
                print(f"{mb} MB target, {name:4s} every {every}: compute {statistics.median(cs) * 1e6:5.0f} us, "
                      f"read after {statistics.median(rs) * 1e6:4.0f} us")


if __name__ == "__main__":
    main()
