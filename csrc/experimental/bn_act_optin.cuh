// The opt-in training-BN kernels, unverified on a GPU until a GPU run passes the BN tests with them: included
// into bn_act_kernels.cu (inside its anonymous namespace, after the helpers they use) only in a
// RESNET_EXT_EXPERIMENTAL=1 build, and run there only after set_optin(true).
#pragma once

// The same sums, opt-in until verified on a GPU (set_optin): the kernel above gives each (which, c) one
// thread looping over up to kMaxRowBlocks partials, latency-bound (an H200 profile: 64 us a call, 6.8 ms of a
// 65 ms resnet50 training step). Here kRedY threads share a channel's rows (coalesced across channels), then
// combine their fp64 sums in a fixed order: deterministic, like the serial kernel.
constexpr int kRedX = 32, kRedY = 16;
__global__ void __launch_bounds__(kRedX * kRedY)
    reduce_partials_parallel_kernel(const float* __restrict__ partials, int64_t blocks, int64_t C,
                                    float* __restrict__ sums) {
  __shared__ double sh[kRedY][kRedX];
  const int64_t c = int64_t(blockIdx.x) * kRedX + threadIdx.x;
  const int64_t which = blockIdx.y;
  double acc = 0.0;
  if (c < C)
    for (int64_t b = threadIdx.y; b < blocks; b += kRedY) acc += partials[(b * 2 + which) * C + c];
  sh[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    double total = 0.0;
#pragma unroll
    for (int r = 0; r < kRedY; ++r) total += sh[r][threadIdx.x];
    sums[which * C + c] = float(total);
  }
}

// The same two passes, opt-in until verified on a GPU (set_optin): NHWC-vectorized only, on a grid whose stride is
// a multiple of C, so each thread keeps the same VEC channels for its whole loop and reads their parameters once
// (the kernels above recompute the channel with a 64-bit modulo and reload four or five per-channel values for
// every vector: an H200 profile had them at 27% and 42% of the copy bandwidth, 9.9 + 12.9 ms of a 65 ms
// resnet50 training step). kUnroll vectors are loaded before the first is used. Same arithmetic as above.
constexpr int kUnroll = 4;

template <typename T, int VEC>
__global__ void __launch_bounds__(256)
    apply_forward_stationary_kernel(const T* __restrict__ x, const T* __restrict__ residual,
                                    const float* __restrict__ weight, const float* __restrict__ bias,
                                    const float* __restrict__ mean, const float* __restrict__ invstd, bool relu,
                                    T* __restrict__ y, int64_t total, int64_t C) {
  const int64_t first = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x * VEC;  // a multiple of C (see stationary_blocks)
  const int64_t c0 = first % C;
  float mu[VEC], scale[VEC], beta[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    mu[i] = mean[c0 + i];
    scale[i] = invstd[c0 + i] * weight[c0 + i];
    beta[i] = bias[c0 + i];
  }
  for (int64_t base = first; base < total; base += kUnroll * stride) {
    uint4 xr[kUnroll], rr[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t e = base + u * stride;
      if (e < total) {
        xr[u] = *reinterpret_cast<const uint4*>(x + e);
        if (residual) rr[u] = *reinterpret_cast<const uint4*>(residual + e);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t e = base + u * stride;
      if (e >= total) break;
      float xv[VEC], rv[VEC], out[VEC];
      unpack<T, VEC>(xr[u], xv);
      if (residual) unpack<T, VEC>(rr[u], rv);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        float v = (xv[i] - mu[i]) * scale[i] + beta[i];
        if (residual) v += rv[i];
        out[i] = relu ? fmaxf(v, 0.f) : v;
      }
      store<T, VEC>(y + e, out);
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(256)
    backward_apply_stationary_kernel(const T* __restrict__ dy, const T* __restrict__ y, const T* __restrict__ x,
                                     const float* __restrict__ weight, const float* __restrict__ mean,
                                     const float* __restrict__ invstd, const float* __restrict__ sums,
                                     float inv_count, bool relu, T* __restrict__ dx, T* __restrict__ dres,
                                     int64_t total, int64_t C) {
  const int64_t first = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x * VEC;  // a multiple of C (see stationary_blocks)
  const int64_t c0 = first % C;
  float mu[VEC], is[VEC], wi[VEC], s0[VEC], s1[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    mu[i] = mean[c0 + i];
    is[i] = invstd[c0 + i];
    wi[i] = weight[c0 + i] * invstd[c0 + i];
    s0[i] = sums[c0 + i] * inv_count;
    s1[i] = sums[C + c0 + i];
  }
  for (int64_t base = first; base < total; base += kUnroll * stride) {
    uint4 gr[kUnroll], yr[kUnroll], xr[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t e = base + u * stride;
      if (e < total) {
        gr[u] = *reinterpret_cast<const uint4*>(dy + e);
        xr[u] = *reinterpret_cast<const uint4*>(x + e);
        if (relu) yr[u] = *reinterpret_cast<const uint4*>(y + e);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t e = base + u * stride;
      if (e >= total) break;
      float g[VEC], yv[VEC], xv[VEC], out[VEC];
      unpack<T, VEC>(gr[u], g);
      unpack<T, VEC>(xr[u], xv);
      if (relu) unpack<T, VEC>(yr[u], yv);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        if (relu && !(yv[i] > 0.f)) g[i] = 0.f;
        const float xhat = (xv[i] - mu[i]) * is[i];
        out[i] = wi[i] * (g[i] - s0[i] - xhat * s1[i] * inv_count);
      }
      store<T, VEC>(dx + e, out);
      if (dres) store<T, VEC>(dres + e, g);
    }
  }
}

// Blocks of 256 threads for the stationary kernels: about elementwise_blocks' count, rounded to a multiple of the
// q that makes blocks * 256 * vec a multiple of C (each thread then keeps its channels). 0 if no such grid fits.
unsigned stationary_blocks(const Layout& l, int vec) {
  const int64_t vectors_per_row = l.C / vec;
  if (vectors_per_row <= 0 || l.M() <= 0) return 0u;  // empty: the other kernels (no division by zero here)
  const int64_t q = vectors_per_row / std::gcd<int64_t>(vectors_per_row, 256);
  const int64_t want = std::max<int64_t>(elementwise_blocks(l, l.M() * l.C / vec), q);
  const int64_t blocks = want / q * q;
  return blocks <= (int64_t(1) << 30) ? unsigned(blocks) : 0u;
}

