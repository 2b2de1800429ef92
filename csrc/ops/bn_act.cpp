// Training BatchNorm(+residual add)+ReLU ops:
//   bn_act_train / bn_act_train_backward      the fused op and its backward (one process)
//   bn_stats, bn_act_apply,                   the pieces a cross-process (SyncBN) forward is made of:
//   bn_act_backward_reduce, bn_act_backward_apply   sums are all-reduced between them (resnet_ext/bn_act.py)
// CPU kernels are stock ATen compositions; CUDA kernels are in kernels/bn_act_kernels.cu (stock fallback for fp64
// and layouts they do not take).
#include <ATen/ATen.h>
#include <torch/library.h>

#ifdef RESNET_EXT_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/bn_act_kernels.h"
#include "ops/kernel_dtype.h"
#endif

namespace resnet_ext {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

std::vector<int64_t> channel_dims(const Tensor& x) { return x.dim() == 4 ? std::vector<int64_t>{0, 2, 3} : std::vector<int64_t>{0}; }
std::vector<int64_t> channel_view(const Tensor& x) {
  std::vector<int64_t> v(x.dim(), 1);
  v[1] = -1;
  return v;
}
at::ScalarType acc_type(const Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_input(const Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 4 || x.dim() == 2, op, ": x must be a 4-D (N, C, H, W) or 2-D (N, C) tensor, got shape ",
              x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be a floating-point tensor, got ", x.scalar_type());
}

// The one-process op's batch holds all of the statistics' values; the cross-process pieces' local one need not
// (nn.SyncBatchNorm counts the values across its processes).
void check_whole_batch(const Tensor& x) {
  const int64_t per_channel = x.numel() / std::max<int64_t>(x.size(1), 1);
  TORCH_CHECK(per_channel > 1, "Expected more than 1 value per channel when training, got input size ", x.sizes());
}

void check_channel_vec(const Tensor& x, const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(1), op, ": ", name, " must have shape [", x.size(1),
              "] (one per channel), got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device (", x.device(), "), got ",
              t.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be floating-point, got ", t.scalar_type());
}

void check_like(const Tensor& x, const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.sizes() == x.sizes(), op, ": ", name, " must have x's shape ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device (", x.device(), "), got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype (", x.scalar_type(),
              "), got ", t.scalar_type());
}

Tensor as_x_layout(const Tensor& t, const Tensor& x) { return t.contiguous(x.suggest_memory_format()); }

// ---------------------------------------------------------------------------------------------------------------
// CPU (and fp64 / odd-layout CUDA) kernels: stock compositions
// ---------------------------------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor> bn_act_train_stock(const Tensor& x, const OptTensor& residual,
                                                              const Tensor& weight, const Tensor& bias,
                                                              const OptTensor& /*shift*/, double eps, bool relu) {
  // Parameters in the accumulation type: ATen's CPU batch norm takes no other mix (an fp64 x with fp32 parameters
  // threw), and the statistics come back in it, as the CUDA kernels and the fake kernel have them.
  const auto acc = acc_type(x);
  auto [y, mean, invstd] = at::native_batch_norm(x, weight.to(acc), bias.to(acc), {}, {}, /*training=*/true, 0.0, eps);
  y = as_x_layout(y, x);
  if (residual.has_value()) y.add_(*residual);
  if (relu) y.relu_();
  const double n = double(x.numel() / x.size(1));
  // Clamped: for a constant channel 1/invstd^2 - eps rounds to either side of 0, and a variance is never negative.
  Tensor var_unbiased = (invstd.pow(-2) - eps).clamp_min(0) * (n / (n - 1));
  return {y, mean, invstd, var_unbiased};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> bn_act_train_backward_stock(const Tensor& grad_y, const Tensor& y,
                                                                       const Tensor& x, const Tensor& weight,
                                                                       const Tensor& mean, const Tensor& invstd,
                                                                       bool relu, bool residual_grad) {
  const auto acc = acc_type(x);
  Tensor g = relu ? at::threshold_backward(grad_y, y, 0) : grad_y;
  auto [dx, dw, db] = at::native_batch_norm_backward(g, x, weight.to(acc), {}, {}, mean.to(acc), invstd.to(acc),
                                                     /*train=*/true, 0.0, {true, true, true});
  return {as_x_layout(dx, x), dw.to(weight.scalar_type()), db.to(weight.scalar_type()),
          residual_grad ? as_x_layout(g, x) : at::empty({0}, x.options())};
}

Tensor bn_stats_stock(const Tensor& x, const OptTensor& shift) {
  Tensor d = x.to(acc_type(x));
  if (shift.has_value()) d = d - shift->to(acc_type(x)).view(channel_view(x));
  return at::stack({d.sum(channel_dims(x)), d.square().sum(channel_dims(x))});
}

Tensor bn_act_apply_stock(const Tensor& x, const OptTensor& residual, const Tensor& weight, const Tensor& bias,
                          const Tensor& mean, const Tensor& invstd, bool relu) {
  const auto acc = acc_type(x);
  auto v = channel_view(x);
  Tensor scale = (invstd.to(acc) * weight.to(acc)).view(v);
  Tensor y = (x.to(acc) - mean.to(acc).view(v)) * scale + bias.to(acc).view(v);
  if (residual.has_value()) y.add_(*residual);
  if (relu) y.relu_();
  return as_x_layout(y.to(x.scalar_type()), x);
}

Tensor bn_act_backward_reduce_stock(const Tensor& grad_y, const Tensor& y, const Tensor& x, const Tensor& mean,
                                    const Tensor& invstd, bool relu) {
  const auto acc = acc_type(x);
  auto v = channel_view(x);
  Tensor g = (relu ? at::threshold_backward(grad_y, y, 0) : grad_y).to(acc);
  Tensor xhat = (x.to(acc) - mean.to(acc).view(v)) * invstd.to(acc).view(v);
  return at::stack({g.sum(channel_dims(x)), (g * xhat).sum(channel_dims(x))});
}

std::tuple<Tensor, Tensor> bn_act_backward_apply_stock(const Tensor& grad_y, const Tensor& y, const Tensor& x,
                                                       const Tensor& weight, const Tensor& mean,
                                                       const Tensor& invstd, const Tensor& sums, double count,
                                                       bool relu, bool residual_grad) {
  const auto acc = acc_type(x);
  auto v = channel_view(x);
  Tensor g = relu ? at::threshold_backward(grad_y, y, 0) : grad_y;
  Tensor xhat = (x.to(acc) - mean.to(acc).view(v)) * invstd.to(acc).view(v);
  Tensor s = sums.to(acc);
  Tensor dx = (weight.to(acc) * invstd.to(acc)).view(v) *
              (g.to(acc) - (s[0] / count).view(v) - xhat * (s[1] / count).view(v));
  return {as_x_layout(dx.to(x.scalar_type()), x), residual_grad ? as_x_layout(g, x) : at::empty({0}, x.options())};
}

// ---------------------------------------------------------------------------------------------------------------
// Argument checks shared by every backend
// ---------------------------------------------------------------------------------------------------------------

void check_train_args(const Tensor& x, const OptTensor& residual, const Tensor& weight, const Tensor& bias,
                      const OptTensor& shift) {
  check_input(x, "bn_act_train");
  check_channel_vec(x, weight, "bn_act_train", "weight");
  check_channel_vec(x, bias, "bn_act_train", "bias");
  if (shift.has_value()) check_channel_vec(x, *shift, "bn_act_train", "running_mean");
  if (residual.has_value()) check_like(x, *residual, "bn_act_train", "residual");
}

void check_backward_args(const Tensor& grad_y, const Tensor& y, const Tensor& x, const Tensor& mean,
                         const Tensor& invstd, const char* op) {
  check_input(x, op);
  check_like(x, grad_y, op, "grad_y");
  check_like(x, y, op, "y");
  check_channel_vec(x, mean, op, "mean");
  check_channel_vec(x, invstd, op, "invstd");
}

#ifdef RESNET_EXT_WITH_CUDA
// ---------------------------------------------------------------------------------------------------------------
// CUDA kernels
// ---------------------------------------------------------------------------------------------------------------

bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// The kernels take dense NCHW or NHWC tensors (others all share x's layout); anything else takes the stock path.
bool kernel_layout(const Tensor& x, std::initializer_list<const Tensor*> others, bn_act::Layout* l) {
  if (x.dim() != 4) return false;
  const bool cl = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  const bool nchw = x.is_contiguous();
  if (!cl && !nchw) return false;
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  for (const Tensor* t : others)
    if (t && t->defined() && !t->is_contiguous(fmt)) return false;
  l->N = x.size(0);
  l->C = x.size(1);
  l->HW = x.size(2) * x.size(3);
  l->channels_last = cl || (x.size(2) * x.size(3) == 1);  // a 1x1 map is NHWC and NCHW at once
  const int64_t vec = 16 / x.element_size();
  bool ok = l->channels_last && x.size(1) % vec == 0 && aligned16(x);
  for (const Tensor* t : others)
    if (t && t->defined()) ok = ok && aligned16(*t);
  l->vectorized = ok;
  l->sm_count = at::cuda::getDeviceProperties(x.get_device())->multiProcessorCount;
  return true;
}

void* stream_of(const Tensor& x) {
  return static_cast<void*>(at::cuda::getCurrentCUDAStream(x.get_device()).stream());
}

#define RESNET_EXT_CHECK_LAUNCH(expr, what)                                     \
  do {                                                                          \
    std::string err_ = (expr);                                                  \
    TORCH_CHECK(err_.empty(), what, ": CUDA kernel launch failed: ", err_);     \
  } while (0)

Tensor f32(const Tensor& t) { return t.to(at::kFloat).contiguous(); }

Tensor sums_cuda(const Tensor& x, const bn_act::Layout& l, bn_act::DType t, const Tensor& shift32) {
  Tensor partials = at::empty({bn_act::partials_floats(l, x.element_size())}, x.options().dtype(at::kFloat));
  Tensor sums = at::empty({2, l.C}, x.options().dtype(at::kFloat));
  RESNET_EXT_CHECK_LAUNCH(bn_act::channel_stats(t, l, x.data_ptr(), shift32.data_ptr<float>(),
                                                partials.data_ptr<float>(), sums.data_ptr<float>(), stream_of(x)),
                          "bn_stats");
  return sums;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> bn_act_train_cuda(const Tensor& x_in, const OptTensor& residual_in,
                                                             const Tensor& weight, const Tensor& bias,
                                                             const OptTensor& shift, double eps, bool relu) {
  check_train_args(x_in, residual_in, weight, bias, shift);
  check_whole_batch(x_in);
  bn_act::DType t;
  bn_act::Layout l;
  if (!kernel_dtype(x_in, &t) || x_in.numel() == 0)
    return bn_act_train_stock(x_in, residual_in, weight, bias, shift, eps, relu);
  Tensor x = x_in;
  OptTensor residual = residual_in;
  if (!kernel_layout(x, {residual ? &*residual : nullptr}, &l)) {
    // A strided, offset or 2-D x (or a residual in another layout): the kernels on dense copies. ATen's batch norm
    // is no fallback for these: for a non-contiguous 16-bit x it returned statistics rounded to 16 bits (H200:
    // mean errors of 3e-4).
    auto dense = [&](const Tensor& v) {
      return v.dim() == 2 ? v.contiguous().view({v.size(0), v.size(1), 1, 1})
                          : v.contiguous(x_in.suggest_memory_format());
    };
    if (x.dim() == 2 || x.dim() == 4) {
      x = dense(x_in);
      if (residual) residual = dense(*residual);
    }
    if (!kernel_layout(x, {residual ? &*residual : nullptr}, &l))
      return bn_act_train_stock(x_in, residual_in, weight, bias, shift, eps, relu);
  }
  c10::cuda::CUDAGuard guard(x.device());
  // Two passes, as gathered_moments: the sums about 0 give a first mean, the sums about it the statistics. A shift
  // chosen before seeing the data leaves E[d^2] - E[d]^2 to cancel in fp32: about no shift or a stale running
  // mean, mean-3 std-0.1 data lost 1e-4 on an H200; about a channel's first value, an outlier there (1e4 among
  // N(0, 1)), these sums emulated on the CPU lost 5e-6 of the output where torch's BN loses 7e-8 (two passes: 7e-8).
  auto opts = x.options().dtype(at::kFloat);
  Tensor shift32 = sums_cuda(x, l, t, at::zeros({l.C}, opts))[0].div(double(l.M()));
  Tensor sums = sums_cuda(x, l, t, shift32);
  Tensor mean = at::empty({l.C}, opts), invstd = at::empty({l.C}, opts), var_unbiased = at::empty({l.C}, opts);
  RESNET_EXT_CHECK_LAUNCH(bn_act::stats_from_sums(l.C, sums.data_ptr<float>(), shift32.data_ptr<float>(),
                                                  double(l.M()), eps, mean.data_ptr<float>(),
                                                  invstd.data_ptr<float>(), var_unbiased.data_ptr<float>(),
                                                  stream_of(x)),
                          "bn_act_train");
  Tensor y = at::empty_like(x);
  RESNET_EXT_CHECK_LAUNCH(bn_act::apply_forward(t, l, x.data_ptr(), residual ? residual->data_ptr() : nullptr,
                                                f32(weight).data_ptr<float>(), f32(bias).data_ptr<float>(),
                                                mean.data_ptr<float>(), invstd.data_ptr<float>(), relu, y.data_ptr(),
                                                stream_of(x)),
                          "bn_act_train");
  return {x_in.dim() == 2 ? y.view(x_in.sizes()) : y, mean, invstd, var_unbiased};
}

Tensor bn_act_backward_reduce_cuda(const Tensor& grad_y, const Tensor& y, const Tensor& x, const Tensor& mean,
                                   const Tensor& invstd, bool relu);
std::tuple<Tensor, Tensor> bn_act_backward_apply_cuda(const Tensor& grad_y, const Tensor& y, const Tensor& x,
                                                      const Tensor& weight, const Tensor& mean,
                                                      const Tensor& invstd, const Tensor& sums, double count,
                                                      bool relu, bool residual_grad);

// The one-process backward is the two pieces back to back: per-channel sums, then the elementwise pass.
std::tuple<Tensor, Tensor, Tensor, Tensor> bn_act_train_backward_cuda(const Tensor& grad_y, const Tensor& y,
                                                                      const Tensor& x, const Tensor& weight,
                                                                      const Tensor& mean, const Tensor& invstd,
                                                                      bool relu, bool residual_grad) {
  check_backward_args(grad_y, y, x, mean, invstd, "bn_act_train_backward");
  Tensor sums = bn_act_backward_reduce_cuda(grad_y, y, x, mean, invstd, relu);
  auto [dx, dres] = bn_act_backward_apply_cuda(grad_y, y, x, weight, mean, invstd, sums,
                                               double(x.numel() / x.size(1)), relu, residual_grad);
  return {dx, sums[1].to(weight.scalar_type(), false, /*copy=*/true),
          sums[0].to(weight.scalar_type(), false, /*copy=*/true), dres};
}

Tensor bn_stats_cuda(const Tensor& x, const OptTensor& shift) {
  check_input(x, "bn_stats");
  if (shift.has_value()) check_channel_vec(x, *shift, "bn_stats", "shift");
  bn_act::DType t;
  bn_act::Layout l;
  if (!kernel_dtype(x, &t) || !kernel_layout(x, {}, &l)) return bn_stats_stock(x, shift);
  c10::cuda::CUDAGuard guard(x.device());
  return sums_cuda(x, l, t, shift.has_value() ? f32(*shift) : at::zeros({l.C}, x.options().dtype(at::kFloat)));
}

Tensor bn_act_apply_cuda(const Tensor& x, const OptTensor& residual, const Tensor& weight, const Tensor& bias,
                         const Tensor& mean, const Tensor& invstd, bool relu) {
  check_train_args(x, residual, weight, bias, std::nullopt);
  check_channel_vec(x, mean, "bn_act_apply", "mean");
  check_channel_vec(x, invstd, "bn_act_apply", "invstd");
  bn_act::DType t;
  bn_act::Layout l;
  const Tensor* r = residual.has_value() ? &*residual : nullptr;
  if (!kernel_dtype(x, &t) || !kernel_layout(x, {r}, &l))
    return bn_act_apply_stock(x, residual, weight, bias, mean, invstd, relu);
  c10::cuda::CUDAGuard guard(x.device());
  Tensor y = at::empty_like(x);
  RESNET_EXT_CHECK_LAUNCH(bn_act::apply_forward(t, l, x.data_ptr(), r ? r->data_ptr() : nullptr,
                                                f32(weight).data_ptr<float>(), f32(bias).data_ptr<float>(),
                                                f32(mean).data_ptr<float>(), f32(invstd).data_ptr<float>(), relu,
                                                y.data_ptr(), stream_of(x)),
                          "bn_act_apply");
  return y;
}

Tensor bn_act_backward_reduce_cuda(const Tensor& grad_y, const Tensor& y, const Tensor& x, const Tensor& mean,
                                   const Tensor& invstd, bool relu) {
  check_backward_args(grad_y, y, x, mean, invstd, "bn_act_backward_reduce");
  bn_act::DType t;
  bn_act::Layout l;
  if (!kernel_dtype(x, &t) || !kernel_layout(x, {&grad_y, &y}, &l))
    return bn_act_backward_reduce_stock(grad_y, y, x, mean, invstd, relu);
  c10::cuda::CUDAGuard guard(x.device());
  Tensor mean32 = f32(mean), invstd32 = f32(invstd);
  Tensor partials = at::empty({bn_act::partials_floats(l, x.element_size())}, x.options().dtype(at::kFloat));
  Tensor sums = at::empty({2, l.C}, x.options().dtype(at::kFloat));
  RESNET_EXT_CHECK_LAUNCH(bn_act::backward_sums(t, l, grad_y.data_ptr(), y.data_ptr(), x.data_ptr(),
                                                mean32.data_ptr<float>(), invstd32.data_ptr<float>(), relu,
                                                partials.data_ptr<float>(), sums.data_ptr<float>(), stream_of(x)),
                          "bn_act_backward_reduce");
  return sums;
}

std::tuple<Tensor, Tensor> bn_act_backward_apply_cuda(const Tensor& grad_y, const Tensor& y, const Tensor& x,
                                                      const Tensor& weight, const Tensor& mean,
                                                      const Tensor& invstd, const Tensor& sums, double count,
                                                      bool relu, bool residual_grad) {
  check_backward_args(grad_y, y, x, mean, invstd, "bn_act_backward_apply");
  bn_act::DType t;
  bn_act::Layout l;
  if (!kernel_dtype(x, &t) || !kernel_layout(x, {&grad_y, &y}, &l))
    return bn_act_backward_apply_stock(grad_y, y, x, weight, mean, invstd, sums, count, relu, residual_grad);
  c10::cuda::CUDAGuard guard(x.device());
  Tensor dx = at::empty_like(x);
  Tensor dres = residual_grad ? at::empty_like(x) : at::empty({0}, x.options());
  RESNET_EXT_CHECK_LAUNCH(bn_act::backward_apply(t, l, grad_y.data_ptr(), y.data_ptr(), x.data_ptr(),
                                                 f32(weight).data_ptr<float>(), f32(mean).data_ptr<float>(),
                                                 f32(invstd).data_ptr<float>(), f32(sums).data_ptr<float>(), count,
                                                 relu, dx.data_ptr(), residual_grad ? dres.data_ptr() : nullptr,
                                                 stream_of(x)),
                          "bn_act_backward_apply");
  return {dx, dres};
}
#endif  // RESNET_EXT_WITH_CUDA

// CPU entry points: checks, then the stock composition.
std::tuple<Tensor, Tensor, Tensor, Tensor> bn_act_train_cpu(const Tensor& x, const OptTensor& residual,
                                                            const Tensor& weight, const Tensor& bias,
                                                            const OptTensor& shift, double eps, bool relu) {
  check_train_args(x, residual, weight, bias, shift);
  check_whole_batch(x);
  return bn_act_train_stock(x, residual, weight, bias, shift, eps, relu);
}
std::tuple<Tensor, Tensor, Tensor, Tensor> bn_act_train_backward_cpu(const Tensor& grad_y, const Tensor& y,
                                                                     const Tensor& x, const Tensor& weight,
                                                                     const Tensor& mean, const Tensor& invstd,
                                                                     bool relu, bool residual_grad) {
  check_backward_args(grad_y, y, x, mean, invstd, "bn_act_train_backward");
  return bn_act_train_backward_stock(grad_y, y, x, weight, mean, invstd, relu, residual_grad);
}
Tensor bn_stats_cpu(const Tensor& x, const OptTensor& shift) {
  check_input(x, "bn_stats");
  if (shift.has_value()) check_channel_vec(x, *shift, "bn_stats", "shift");
  return bn_stats_stock(x, shift);
}
Tensor bn_act_apply_cpu(const Tensor& x, const OptTensor& residual, const Tensor& weight, const Tensor& bias,
                        const Tensor& mean, const Tensor& invstd, bool relu) {
  check_train_args(x, residual, weight, bias, std::nullopt);
  return bn_act_apply_stock(x, residual, weight, bias, mean, invstd, relu);
}
Tensor bn_act_backward_reduce_cpu(const Tensor& grad_y, const Tensor& y, const Tensor& x, const Tensor& mean,
                                  const Tensor& invstd, bool relu) {
  check_backward_args(grad_y, y, x, mean, invstd, "bn_act_backward_reduce");
  return bn_act_backward_reduce_stock(grad_y, y, x, mean, invstd, relu);
}
std::tuple<Tensor, Tensor> bn_act_backward_apply_cpu(const Tensor& grad_y, const Tensor& y, const Tensor& x,
                                                     const Tensor& weight, const Tensor& mean, const Tensor& invstd,
                                                     const Tensor& sums, double count, bool relu,
                                                     bool residual_grad) {
  check_backward_args(grad_y, y, x, mean, invstd, "bn_act_backward_apply");
  return bn_act_backward_apply_stock(grad_y, y, x, weight, mean, invstd, sums, count, relu, residual_grad);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(resnet_ext, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  // y = relu?(batchnorm_train(x) (+ residual)); also returns the batch mean, invstd and unbiased variance from
  // which the caller updates its running statistics (the op stays functional). running_mean, when given, only
  // shifts the sums for accuracy.
  m.def("bn_act_train(Tensor x, Tensor? residual, Tensor weight, Tensor bias, Tensor? running_mean, float eps, "
        "bool relu) -> (Tensor, Tensor, Tensor, Tensor)", tags);
  // (dx, dweight, dbias, dresidual) from grad_y and the saved output y (its ReLU mask), x, mean and invstd.
  // dresidual is an empty tensor unless residual_grad.
  m.def("bn_act_train_backward(Tensor grad_y, Tensor y, Tensor x, Tensor weight, Tensor mean, Tensor invstd, "
        "bool relu, bool residual_grad) -> (Tensor, Tensor, Tensor, Tensor)", tags);
  m.def("bn_stats(Tensor x, Tensor? shift) -> Tensor", tags);
  m.def("bn_act_apply(Tensor x, Tensor? residual, Tensor weight, Tensor bias, Tensor mean, Tensor invstd, "
        "bool relu) -> Tensor", tags);
  m.def("bn_act_backward_reduce(Tensor grad_y, Tensor y, Tensor x, Tensor mean, Tensor invstd, bool relu) -> Tensor",
        tags);
  m.def("bn_act_backward_apply(Tensor grad_y, Tensor y, Tensor x, Tensor weight, Tensor mean, Tensor invstd, "
        "Tensor sums, float count, bool relu, bool residual_grad) -> (Tensor, Tensor)", tags);
}

namespace {
// The stock compositions: the CPU kernels, and the CUDA ones of a build without CUDA kernels.
void register_stock(torch::Library& m) {
  m.impl("bn_act_train", &bn_act_train_cpu);
  m.impl("bn_act_train_backward", &bn_act_train_backward_cpu);
  m.impl("bn_stats", &bn_stats_cpu);
  m.impl("bn_act_apply", &bn_act_apply_cpu);
  m.impl("bn_act_backward_reduce", &bn_act_backward_reduce_cpu);
  m.impl("bn_act_backward_apply", &bn_act_backward_apply_cpu);
}
}  // namespace

TORCH_LIBRARY_IMPL(resnet_ext, CPU, m) { register_stock(m); }

TORCH_LIBRARY_IMPL(resnet_ext, CUDA, m) {
#ifdef RESNET_EXT_WITH_CUDA
  m.impl("bn_act_train", &bn_act_train_cuda);
  m.impl("bn_act_train_backward", &bn_act_train_backward_cuda);
  m.impl("bn_stats", &bn_stats_cuda);
  m.impl("bn_act_apply", &bn_act_apply_cuda);
  m.impl("bn_act_backward_reduce", &bn_act_backward_reduce_cuda);
  m.impl("bn_act_backward_apply", &bn_act_backward_apply_cuda);
#else  // a build without CUDA kernels serves CUDA tensors with the stock compositions
  register_stock(m);
#endif
}

}  // namespace resnet_ext
