// The fused training decomposition's ops (#23; see ops/fused_train.h): schemas, argument checks, and the ATen
// compositions that serve every device (experimental/cudnn_graphs.cpp registers CUDA kernels built from cuDNN
// graphs over them), and bn_finalize's CPU kernel.
#include "ops/fused_train.h"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace resnet_ext {
namespace fused_train {

using at::Tensor;

namespace {

at::ScalarType acc_type(const Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }
const std::vector<int64_t> kChannel{1, -1, 1, 1};
const std::vector<int64_t> kReduce{0, 2, 3};

Tensor per_channel(const Tensor& v, at::ScalarType t) { return v.to(t).view(kChannel); }

void check_4d(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be a 4-D (N, C, H, W) tensor, got shape ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be floating-point, got ", t.scalar_type());
}

void check_same(const Tensor& ref, const Tensor& t, const char* op, const char* ref_name, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on ", ref_name, "'s device (", ref.device(),
              "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have ", ref_name, "'s dtype (",
              ref.scalar_type(), "), got ", t.scalar_type());
}

void check_vec(const Tensor& t, int64_t c, const Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == c, op, ": ", name, " must have shape [", c, "] (one per channel), got ",
              t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device (", x.device(), "), got ",
              t.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be floating-point, got ", t.scalar_type());
}

void check_scale_shift(const OptTensor& scale, const OptTensor& shift, int64_t c, const Tensor& x, const char* op) {
  TORCH_CHECK(scale.has_value() == shift.has_value(), op, ": scale and shift must be given together");
  if (scale.has_value()) {
    check_vec(*scale, c, x, op, "scale");
    check_vec(*shift, c, x, op, "shift");
  }
}

// The conv output size for input x and weight [K, C, R, S]; errors name stride and padding.
std::vector<int64_t> conv_out(at::IntArrayRef x, at::IntArrayRef w, at::IntArrayRef stride, at::IntArrayRef padding,
                              const char* op) {
  TORCH_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, op, ": stride must be two positive ints, got ",
              stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, op,
              ": padding must be two non-negative ints, got ", padding);
  const int64_t p = (x[2] + 2 * padding[0] - w[2]) / stride[0] + 1, q = (x[3] + 2 * padding[1] - w[3]) / stride[1] + 1;
  TORCH_CHECK(x[2] + 2 * padding[0] >= w[2] && x[3] + 2 * padding[1] >= w[3] && p > 0 && q > 0, op,
              ": the padded input ", x, " is smaller than the kernel ", w);
  return {x[0], w[0], p, q};
}

}  // namespace

Tensor prologue(const Tensor& x, const OptTensor& scale, const OptTensor& shift) {
  if (!scale.has_value()) return x;
  const auto acc = acc_type(x);
  return at::relu(x.to(acc) * per_channel(*scale, acc) + per_channel(*shift, acc))
      .to(x.scalar_type())
      .contiguous(x.suggest_memory_format());
}

void check_conv_stats(const Tensor& x, const Tensor& w, const OptTensor& scale, const OptTensor& shift,
                      at::IntArrayRef stride, at::IntArrayRef padding) {
  const char* op = "fused_conv_stats";
  check_4d(x, op, "x");
  check_4d(w, op, "weight");
  check_same(x, w, op, "x", "weight");
  TORCH_CHECK(w.size(1) == x.size(1), op, ": weight must have x's ", x.size(1), " input channels, got ", w.sizes());
  check_scale_shift(scale, shift, x.size(1), x, op);
  conv_out(x.sizes(), w.sizes(), stride, padding, op);
}

std::tuple<Tensor, Tensor> conv_stats_composite(const Tensor& x, const Tensor& w, const OptTensor& scale,
                                                const OptTensor& shift, at::IntArrayRef stride,
                                                at::IntArrayRef padding) {
  // Outputs in x's layout on every backend (ATen's CPU convolution may pick another one).
  Tensor y = at::convolution(prologue(x, scale, shift), w, std::nullopt, stride, padding, {1, 1}, false, {0, 0}, 1)
                 .contiguous(x.suggest_memory_format());
  Tensor ya = y.to(acc_type(y));
  return {y, at::stack({ya.sum(kReduce), ya.square().sum(kReduce)})};
}

void check_dgrad_drelu_dbn(const Tensor& dy, const Tensor& w, const Tensor& y, const Tensor& scale,
                           const Tensor& shift, const Tensor& mean, const Tensor& invstd, at::IntArrayRef stride,
                           at::IntArrayRef padding) {
  const char* op = "fused_dgrad_drelu_dbn";
  check_4d(dy, op, "grad");
  check_4d(w, op, "weight");
  check_4d(y, op, "y");
  check_same(y, dy, op, "y", "grad");
  check_same(y, w, op, "y", "weight");
  TORCH_CHECK(w.size(1) == y.size(1), op, ": weight must have y's ", y.size(1), " input channels, got ", w.sizes());
  const auto out = conv_out(y.sizes(), w.sizes(), stride, padding, op);
  TORCH_CHECK(dy.sizes() == at::IntArrayRef(out), op, ": grad must have the conv's output shape ", out, ", got ",
              dy.sizes());
  for (auto [t, name] : {std::pair{&scale, "scale"}, {&shift, "shift"}, {&mean, "mean"}, {&invstd, "invstd"}})
    check_vec(*t, y.size(1), y, op, name);
}

std::tuple<Tensor, Tensor> dgrad_drelu_dbn_composite(const Tensor& dy, const Tensor& w, const Tensor& y,
                                                     const Tensor& scale, const Tensor& shift, const Tensor& mean,
                                                     const Tensor& invstd, at::IntArrayRef stride,
                                                     at::IntArrayRef padding) {
  auto grads = at::convolution_backward(dy, y, w, std::nullopt, stride, padding, {1, 1}, false, {0, 0}, 1,
                                        {true, false, false});
  const auto acc = acc_type(y);
  Tensor ya = y.to(acc);
  // The ReLU's mask recomputed from y by the forward's prologue (a NaN input masks, as threshold_backward does).
  Tensor pre = ya * per_channel(scale, acc) + per_channel(shift, acc);
  Tensor g = at::where(pre > 0, std::get<0>(grads), at::zeros({}, dy.options())).contiguous(y.suggest_memory_format());
  Tensor ga = g.to(acc);
  Tensor xhat = (ya - per_channel(mean, acc)) * per_channel(invstd, acc);
  return {g, at::stack({ga.sum(kReduce), (ga * xhat).sum(kReduce)})};
}

void check_wgrad(const Tensor& dy, const Tensor& x, const OptTensor& scale, const OptTensor& shift,
                 at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  const char* op = "fused_wgrad";
  check_4d(dy, op, "grad");
  check_4d(x, op, "x");
  check_same(x, dy, op, "x", "grad");
  TORCH_CHECK(weight_size.size() == 4 && weight_size[1] == x.size(1) && weight_size[0] > 0 && weight_size[2] > 0 &&
                  weight_size[3] > 0,
              op, ": weight_size must be [K, ", x.size(1), ", R, S] with positive K, R, S, got ", weight_size);
  check_scale_shift(scale, shift, x.size(1), x, op);
  const auto out = conv_out(x.sizes(), weight_size, stride, padding, op);
  TORCH_CHECK(dy.sizes() == at::IntArrayRef(out), op, ": grad must have the conv's output shape ", out, ", got ",
              dy.sizes());
}

Tensor wgrad_composite(const Tensor& dy, const Tensor& x, const OptTensor& scale, const OptTensor& shift,
                       at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  Tensor w = at::empty(weight_size, x.options().memory_format(x.suggest_memory_format()));  // only its shape is read
  auto grads = at::convolution_backward(dy, prologue(x, scale, shift), w, std::nullopt, stride, padding, {1, 1}, false,
                                        {0, 0}, 1, {false, true, false});
  return std::get<1>(grads).contiguous(x.suggest_memory_format());
}

void check_finalize(const Tensor& sums, const Tensor& count, const Tensor& weight, const Tensor& bias,
                    const OptTensor& running_mean, const OptTensor& running_var) {
  const char* op = "bn_finalize";
  TORCH_CHECK(sums.dim() == 2 && sums.size(0) == 2, op, ": sums must have shape [2, C] (sum, sum of squares), got ",
              sums.sizes());
  TORCH_CHECK(sums.scalar_type() == at::kFloat || sums.scalar_type() == at::kDouble, op,
              ": sums must be float32 or float64, got ", sums.scalar_type());
  TORCH_CHECK(count.numel() == 1 && at::isFloatingType(count.scalar_type()) && count.device() == sums.device(), op,
              ": count must be a one-element floating-point tensor on the sums' device, got ", count.sizes(), " ",
              count.scalar_type(), " on ", count.device());
  // On the CPU only: on CUDA the check would wait for the device (the callers ensure it there).
  if (count.is_cpu())
    TORCH_CHECK(count.item<double>() > 1, op, ": count must be more than 1 value per channel when training, got ",
                count.item<double>());
  const int64_t c = sums.size(1);
  check_vec(weight, c, sums, op, "weight");
  check_vec(bias, c, sums, op, "bias");
  TORCH_CHECK(running_mean.has_value() == running_var.has_value(), op,
              ": running_mean and running_var must be given together");
  if (running_mean.has_value()) {
    check_vec(*running_mean, c, sums, op, "running_mean");
    check_vec(*running_var, c, sums, op, "running_var");
  }
}

namespace {

std::tuple<Tensor, Tensor> conv_stats_cpu(const Tensor& x, const Tensor& w, const OptTensor& scale,
                                          const OptTensor& shift, at::IntArrayRef stride, at::IntArrayRef padding) {
  check_conv_stats(x, w, scale, shift, stride, padding);
  return conv_stats_composite(x, w, scale, shift, stride, padding);
}

std::tuple<Tensor, Tensor> dgrad_drelu_dbn_cpu(const Tensor& dy, const Tensor& w, const Tensor& y, const Tensor& scale,
                                               const Tensor& shift, const Tensor& mean, const Tensor& invstd,
                                               at::IntArrayRef stride, at::IntArrayRef padding) {
  check_dgrad_drelu_dbn(dy, w, y, scale, shift, mean, invstd, stride, padding);
  return dgrad_drelu_dbn_composite(dy, w, y, scale, shift, mean, invstd, stride, padding);
}

Tensor wgrad_cpu(const Tensor& dy, const Tensor& x, const OptTensor& scale, const OptTensor& shift,
                 at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  check_wgrad(dy, x, scale, shift, weight_size, stride, padding);
  return wgrad_composite(dy, x, scale, shift, weight_size, stride, padding);
}

template <typename T>
void finalize_loop(const Tensor& sums, const Tensor& count, const Tensor& w, const Tensor& b, Tensor* rm,
                   Tensor* rv, double momentum, double eps, const std::vector<Tensor>& out) {
  const T* s = sums.data_ptr<T>();
  const T n = T(count.data_ptr<double>()[0]);
  const int64_t c = sums.size(1);
  T* m = rm ? rm->data_ptr<T>() : nullptr;
  T* v = rv ? rv->data_ptr<T>() : nullptr;
  for (int64_t i = 0; i < c; ++i)
    finalize_channel<T>(s[i], s[c + i], n, w.data_ptr<T>()[i], b.data_ptr<T>()[i], T(eps), T(momentum),
                        out[0].data_ptr<T>() + i, out[1].data_ptr<T>() + i, out[2].data_ptr<T>() + i,
                        out[3].data_ptr<T>() + i, m ? m + i : nullptr, v ? v + i : nullptr);
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> finalize_with(const Tensor& sums_in, const Tensor& count_in,
                                                         const Tensor& weight,
                                                         const Tensor& bias, const OptTensor& running_mean,
                                                         const OptTensor& running_var, const FinalizeRun& run) {
  check_finalize(sums_in, count_in, weight, bias, running_mean, running_var);
  const auto t = sums_in.scalar_type();
  Tensor sums = sums_in.contiguous(), w = weight.to(t).contiguous(), b = bias.to(t).contiguous();
  Tensor count = count_in.to(at::kDouble).contiguous();
  std::vector<Tensor> out;
  for (int i = 0; i < 4; ++i) out.push_back(at::empty({sums.size(1)}, sums.options()));
  Tensor rm, rv;
  if (running_mean.has_value()) {
    rm = running_mean->to(t).contiguous();
    rv = running_var->to(t).contiguous();
  }
  run(sums, count, w, b, running_mean.has_value() ? &rm : nullptr, running_mean.has_value() ? &rv : nullptr, out);
  if (running_mean.has_value()) {
    if (!rm.is_same(*running_mean)) running_mean->copy_(rm);
    if (!rv.is_same(*running_var)) running_var->copy_(rv);
  }
  return {out[0], out[1], out[2], out[3]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> finalize_cpu(const Tensor& sums, const Tensor& count,
                                                        const Tensor& weight, const Tensor& bias,
                                                        const OptTensor& running_mean, const OptTensor& running_var,
                                                        double momentum, double eps) {
  return finalize_with(sums, count, weight, bias, running_mean, running_var,
                       [&](const Tensor& s, const Tensor& n, const Tensor& w, const Tensor& b, Tensor* rm,
                           Tensor* rv, const std::vector<Tensor>& out) {
                         if (s.scalar_type() == at::kDouble)
                           finalize_loop<double>(s, n, w, b, rm, rv, momentum, eps, out);
                         else
                           finalize_loop<float>(s, n, w, b, rm, rv, momentum, eps, out);
                       });
}

}  // namespace fused_train

TORCH_LIBRARY_FRAGMENT(resnet_ext, m) {
  // (y, sums): y = conv2d(relu(x * scale + shift) or x, weight) in x's dtype; sums [2, K] = (sum y, sum y^2) over
  // N, H, W in fp32 (fp64 for fp64 x). scale and shift (one per input channel) are the previous BN's.
  m.def("fused_conv_stats(Tensor x, Tensor weight, Tensor? scale, Tensor? shift, int[2] stride, int[2] padding) "
        "-> (Tensor, Tensor)");
  // (g, sums): g = dgrad(grad, weight) where y * scale + shift > 0, else 0 (the gradient at the previous BN's
  // output, through its ReLU); sums [2, C] = (sum g, sum g * (y - mean) * invstd): that BN's bias and weight grads.
  m.def("fused_dgrad_drelu_dbn(Tensor grad, Tensor weight, Tensor y, Tensor scale, Tensor shift, Tensor mean, "
        "Tensor invstd, int[2] stride, int[2] padding) -> (Tensor, Tensor)");
  // The weight gradient of conv2d(relu(x * scale + shift) or x, weight), in x's dtype.
  m.def("fused_wgrad(Tensor grad, Tensor x, Tensor? scale, Tensor? shift, int[] weight_size, int[2] stride, "
        "int[2] padding) -> Tensor");
  // (scale, shift, mean, invstd) of a training BN from sums [2, C] over `count` values per channel (a one-element
  // tensor on the sums' device: a cross-process count stays there), in the sums' dtype; the running statistics,
  // when given, updated in place as nn.BatchNorm2d does (unbiased variance).
  m.def("bn_finalize(Tensor sums, Tensor count, Tensor weight, Tensor bias, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, float momentum, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(resnet_ext, CompositeExplicitAutograd, m) {
  m.impl("fused_conv_stats", &fused_train::conv_stats_cpu);
  m.impl("fused_dgrad_drelu_dbn", &fused_train::dgrad_drelu_dbn_cpu);
  m.impl("fused_wgrad", &fused_train::wgrad_cpu);
}

TORCH_LIBRARY_IMPL(resnet_ext, CPU, m) { m.impl("bn_finalize", &fused_train::finalize_cpu); }

}  // namespace resnet_ext
