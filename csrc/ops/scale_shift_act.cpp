// resnet_ext::scale_shift_act_: y = relu?(y * scale[c] + shift[c] (+ residual)) in place, one pass over y, on the
// CPU. The eval BatchNorm (as the per-channel scale and shift of ops.bn_scale_shift), the residual add and the
// ReLU of a conv unit whose BN is not folded (the CPU default mode): one pass where torchvision's modules make up
// to three, with their arithmetic: y * scale + shift as one fused multiply-add (as ATen's vectorized batch norm
// computes it), then the residual added to that rounded value, then the ReLU; the same bits as BN, add, ReLU.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <ATen/ATen.h>

#include <cmath>

#include "cpu_clones.h"

namespace {

using at::Tensor;

// One channels_last row (the C values of one pixel), or one NCHW plane (the pixels of one channel).

RESNET_EXT_CLONES void row_cl(float* y, const float* r, const float* s, const float* b, int64_t c, bool relu) {
  if (r) {
    for (int64_t i = 0; i < c; ++i) y[i] = std::fma(y[i], s[i], b[i]) + r[i];
  } else {
    for (int64_t i = 0; i < c; ++i) y[i] = std::fma(y[i], s[i], b[i]);
  }
  if (relu)
    for (int64_t i = 0; i < c; ++i) y[i] = y[i] < 0.f ? 0.f : y[i];  // NaN stays NaN, as torch.relu
}

RESNET_EXT_CLONES void plane_nchw(float* y, const float* r, float s, float b, int64_t n, bool relu) {
  if (r) {
    for (int64_t i = 0; i < n; ++i) y[i] = std::fma(y[i], s, b) + r[i];
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = std::fma(y[i], s, b);
  }
  if (relu)
    for (int64_t i = 0; i < n; ++i) y[i] = y[i] < 0.f ? 0.f : y[i];  // NaN stays NaN, as torch.relu
}

void check_args(const Tensor& y, const Tensor& scale, const Tensor& shift, const std::optional<Tensor>& residual) {
  TORCH_CHECK(y.dim() == 4, "scale_shift_act_: y must be 4-d (N, C, H, W), got ", y.dim(), "-d");
  TORCH_CHECK(y.scalar_type() == at::kFloat, "scale_shift_act_: y must be float32, got ", y.scalar_type());
  TORCH_CHECK(y.is_contiguous() || y.is_contiguous(at::MemoryFormat::ChannelsLast),
              "scale_shift_act_: y must be contiguous (NCHW) or channels_last, got strides ", y.strides());
  const int64_t c = y.size(1);
  for (auto [t, name] : {std::pair{&scale, "scale"}, std::pair{&shift, "shift"}}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == c && t->scalar_type() == at::kFloat && t->device() == y.device(),
                "scale_shift_act_: ", name, " must be a float32 vector of y's ", c, " channels on ", y.device(),
                ", got ", t->scalar_type(), " ", t->sizes(), " on ", t->device());
  }
  if (residual.has_value()) {
    const Tensor& r = *residual;
    TORCH_CHECK(r.sizes() == y.sizes() && r.scalar_type() == y.scalar_type() && r.device() == y.device(),
                "scale_shift_act_: residual must match y (", y.sizes(), " ", y.scalar_type(), "), got ", r.sizes(),
                " ", r.scalar_type(), " on ", r.device());
    TORCH_CHECK(r.strides() == y.strides(), "scale_shift_act_: residual must have y's layout (strides ",
                y.strides(), "), got ", r.strides());
    TORCH_CHECK(!r.is_same(y), "scale_shift_act_: residual must not be y itself");
  }
}

void scale_shift_act_cpu(const Tensor& y, const Tensor& scale, const Tensor& shift,
                         const std::optional<Tensor>& residual, bool relu) {
  check_args(y, scale, shift, residual);
  if (y.numel() == 0) return;
  const Tensor s = scale.contiguous(), b = shift.contiguous();
  const float* sp = s.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float* rp = residual.has_value() ? residual->data_ptr<float>() : nullptr;
  const int64_t n = y.size(0), c = y.size(1), hw = y.size(2) * y.size(3);
  if (!y.is_contiguous()) {  // channels_last: a row of c values per pixel
    at::parallel_for(0, n * hw, std::max<int64_t>(1, 16384 / c), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) row_cl(yp + p * c, rp ? rp + p * c : nullptr, sp, bp, c, relu);
    });
  } else {  // NCHW: a plane of hw values per (image, channel)
    at::parallel_for(0, n * c, std::max<int64_t>(1, 16384 / hw), [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        const int64_t ch = q % c;
        plane_nchw(yp + q * hw, rp ? rp + q * hw : nullptr, sp[ch], bp[ch], hw, relu);
      }
    });
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(resnet_ext, m) {
  // In place: y = relu?(y * scale + shift (+ residual)), scale/shift per channel (float32). CPU only: the flat
  // CPU forward's unfolded units (resnet_ext/flat.py).
  // Returns nothing (a custom op may not return an alias of its input).
  m.def("scale_shift_act_(Tensor(a!) y, Tensor scale, Tensor shift, Tensor? residual, bool relu) -> ()");
}

TORCH_LIBRARY_IMPL(resnet_ext, CPU, m) { m.impl("scale_shift_act_", &scale_shift_act_cpu); }
