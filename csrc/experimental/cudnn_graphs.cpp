// resnet_ext's cuDNN graphs, through cudnn-frontend's C++ API: unverified until a GPU run (gpu_check.sh --only
// fusedtrain,unfolded), hence experimental. The fused training decomposition's ops on CUDA (#23; ops/fused_train.h):
//   conv_stats        [scale * x + shift -> ReLU ->] conv_fprop -> y, genstats(y) -> sum, sum of squares
//   dgrad_drelu_dbn   conv_dgrad -> ReLU backward at (y * scale + shift) -> g, dbn_weight(g, y) -> dbias, dscale
//   wgrad             [scale * x + shift -> ReLU ->] conv_wgrad -> dw
// and conv_bn_act's fp32 scale/shift epilogue (#24 item 2: BN applied to the unfolded weight's fp32 sum):
//   conv_scale_shift  conv_fprop -> * scale -> + shift [-> + residual] [-> ReLU] -> y
// One graph per (pattern, device, dtypes, shape), built once (validate, operation graph, heuristics A then
// fallback, the first plan that builds) and cached with its workspace size. A problem the graphs do not take
// (not NHWC, not 16-bit) or one without an engine runs the op's ATen composition; path_counts() says which ran
// ("cudnn_graph:<pattern>" / "cudnn_graph_fallback:<pattern>"), `cudnn_graph_probe` why one has no graph.
#ifdef RESNET_EXT_WITH_CUDA
#include "experimental/cudnn_graphs.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cudnn/Handle.h>
#include <c10/cuda/CUDAGuard.h>
#include <cudnn_frontend.h>
#include <torch/library.h>

#include <limits>
#include <memory>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "experimental/bn_finalize_kernels.h"
#include "ops/conv_bn_act.h"
#include "ops/fused_train.h"

namespace resnet_ext {
namespace cudnn_graphs {

namespace fe = cudnn_frontend;
using at::Tensor;
using fused_train::OptTensor;
using Attr = std::shared_ptr<fe::graph::Tensor_attributes>;

enum class Pattern { ConvStats, DgradDreluDbn, Wgrad, ConvScaleShift };

const char* pattern_name(Pattern p) {
  switch (p) {
    case Pattern::ConvStats: return "conv_stats";
    case Pattern::DgradDreluDbn: return "dgrad_drelu_dbn";
    case Pattern::Wgrad: return "wgrad";
    case Pattern::ConvScaleShift: return "conv_scale_shift";
  }
  return "?";
}

// One graph's problem: x [n, c, h, w] (for dgrad: the conv's input, y), weight [k, c, r, s_], output [n, k, p, q].
struct Problem {
  Pattern pattern = Pattern::ConvStats;
  at::ScalarType dtype = at::kHalf;
  bool prologue = false;
  bool residual = false, relu = false;  // conv_scale_shift's epilogue
  int device = 0;
  int64_t n = 0, c = 0, h = 0, w = 0, k = 0, r = 0, s_ = 0, p = 0, q = 0;
  int64_t stride[2] = {1, 1}, pad[2] = {0, 0};

  std::string key() const {
    std::ostringstream s;
    s << pattern_name(pattern) << ':' << device << ':' << int(dtype) << ':' << prologue << residual << relu << ':'
      << n << ',' << c
      << ',' << h << ',' << w << ':' << k << ',' << r << ',' << s_ << ':' << stride[0] << ',' << stride[1] << ':'
      << pad[0] << ',' << pad[1];
    return s.str();
  }
};

namespace {

// An NHWC (channels_last) tensor's strides for dims [n, c, h, w].
std::vector<int64_t> nhwc(int64_t n, int64_t c, int64_t h, int64_t w) {
  (void)n;
  return {c * h * w, 1, c * w, c};
}

fe::DataType_t fe_type(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return fe::DataType_t::HALF;
    case at::kBFloat16: return fe::DataType_t::BFLOAT16;
    default: return fe::DataType_t::NOT_SET;  // fp32 runs the composition: ATen's convs, under torch's TF32 flags
  }
}

// The graph of a problem and the tensors a call binds, by name.
struct Built {
  std::shared_ptr<fe::graph::Graph> graph;
  std::unordered_map<std::string, Attr> t;
  int64_t workspace = 0;
  std::string error;  // why there is no plan; empty when there is one
};

Attr image(fe::graph::Graph& g, const char* name, std::vector<int64_t> d, fe::DataType_t type) {
  return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_dim(d).set_stride(nhwc(d[0], d[1], d[2], d[3]))
                      .set_data_type(type));
}

Attr channel_vec(fe::graph::Graph& g, const char* name, int64_t c) {
  return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_dim({1, c, 1, 1}).set_stride({c, 1, c, c})
                      .set_data_type(fe::DataType_t::FLOAT));
}

Attr pointwise(fe::graph::Graph& g, Attr a, Attr b, fe::PointwiseMode_t mode) {
  auto opts = fe::graph::Pointwise_attributes().set_mode(mode).set_compute_data_type(fe::DataType_t::FLOAT);
  return b ? g.pointwise(a, b, opts) : g.pointwise(a, opts);
}

// x * scale + shift, in fp32 (the graph's intermediate type); ReLU'd when `relu`.
Attr scale_shift(Built& b, Attr x, int64_t c, bool relu) {
  auto& g = *b.graph;
  b.t["scale"] = channel_vec(g, "scale", c);
  b.t["shift"] = channel_vec(g, "shift", c);
  Attr y = pointwise(g, pointwise(g, x, b.t["scale"], fe::PointwiseMode_t::MUL), b.t["shift"],
                     fe::PointwiseMode_t::ADD);
  return relu ? pointwise(g, y, nullptr, fe::PointwiseMode_t::RELU_FWD) : y;
}

// The nodes of a problem's graph (no handle, no GPU needed).
void describe(const Problem& p, Built& b) {
  b.graph = std::make_shared<fe::graph::Graph>();
  auto& g = *b.graph;
  const fe::DataType_t io = fe_type(p.dtype);
  g.set_io_data_type(io).set_intermediate_data_type(fe::DataType_t::FLOAT).set_compute_data_type(
      fe::DataType_t::FLOAT);
  const std::vector<int64_t> x_dim{p.n, p.c, p.h, p.w}, y_dim{p.n, p.k, p.p, p.q}, w_dim{p.k, p.c, p.r, p.s_};
  const std::vector<int64_t> stride{p.stride[0], p.stride[1]}, pad{p.pad[0], p.pad[1]}, dil{1, 1};
  switch (p.pattern) {
    case Pattern::ConvStats: {
      b.t["x"] = image(g, "x", x_dim, io);
      b.t["w"] = image(g, "w", w_dim, io);
      Attr in = p.prologue ? scale_shift(b, b.t["x"], p.c, true) : b.t["x"];
      Attr y = g.conv_fprop(in, b.t["w"],
                            fe::graph::Conv_fprop_attributes().set_padding(pad).set_stride(stride).set_dilation(dil));
      y->set_output(true).set_dim(y_dim).set_stride(nhwc(p.n, p.k, p.p, p.q)).set_data_type(io);
      auto [sum, sqsum] = g.genstats(y, fe::graph::Genstats_attributes());
      sum->set_output(true).set_data_type(fe::DataType_t::FLOAT).set_dim({1, p.k, 1, 1}).set_stride(
          {p.k, 1, p.k, p.k});
      sqsum->set_output(true).set_data_type(fe::DataType_t::FLOAT).set_dim({1, p.k, 1, 1}).set_stride(
          {p.k, 1, p.k, p.k});
      b.t["y"] = y, b.t["sum"] = sum, b.t["sqsum"] = sqsum;
      break;
    }
    case Pattern::DgradDreluDbn: {
      b.t["dy"] = image(g, "dy", y_dim, io);
      b.t["w"] = image(g, "w", w_dim, io);
      Attr dx = g.conv_dgrad(b.t["dy"], b.t["w"],
                             fe::graph::Conv_dgrad_attributes().set_padding(pad).set_stride(stride).set_dilation(dil));
      dx->set_dim(x_dim);
      b.t["y"] = image(g, "y", x_dim, io);
      Attr pre = scale_shift(b, b.t["y"], p.c, false);
      Attr gr = pointwise(g, dx, pre, fe::PointwiseMode_t::RELU_BWD);
      gr->set_output(true).set_stride(nhwc(p.n, p.c, p.h, p.w)).set_data_type(io);
      b.t["mean"] = channel_vec(g, "mean", p.c);
      b.t["invstd"] = channel_vec(g, "invstd", p.c);
      // dbn_weight's scale input only feeds its eq_* outputs, which the decomposition does not use.
      auto [dscale, dbias, eq_dy, eq_x, eq_b] =
          g.dbn_weight(gr, b.t["y"], b.t["mean"], b.t["invstd"], b.t["scale"], fe::graph::DBN_weight_attributes());
      for (auto& o : {dscale, dbias, eq_dy, eq_x, eq_b})
        o->set_output(true).set_data_type(fe::DataType_t::FLOAT).set_dim({1, p.c, 1, 1}).set_stride(
            {p.c, 1, p.c, p.c});
      b.t["g"] = gr, b.t["dscale"] = dscale, b.t["dbias"] = dbias;
      b.t["eq_dy"] = eq_dy, b.t["eq_x"] = eq_x, b.t["eq_b"] = eq_b;
      break;
    }
    case Pattern::Wgrad: {
      b.t["x"] = image(g, "x", x_dim, io);
      b.t["dy"] = image(g, "dy", y_dim, io);
      Attr in = p.prologue ? scale_shift(b, b.t["x"], p.c, true) : b.t["x"];
      Attr dw = g.conv_wgrad(b.t["dy"], in,
                             fe::graph::Conv_wgrad_attributes().set_padding(pad).set_stride(stride).set_dilation(dil));
      dw->set_output(true).set_dim(w_dim).set_stride(nhwc(p.k, p.c, p.r, p.s_)).set_data_type(io);
      b.t["dw"] = dw;
      break;
    }
    case Pattern::ConvScaleShift: {
      b.t["x"] = image(g, "x", x_dim, io);
      b.t["w"] = image(g, "w", w_dim, io);
      Attr acc = g.conv_fprop(b.t["x"], b.t["w"],
                              fe::graph::Conv_fprop_attributes().set_padding(pad).set_stride(stride).set_dilation(dil));
      acc->set_dim(y_dim);  // virtual: the fp32 accumulator the epilogue reads
      Attr y = scale_shift(b, acc, p.k, false);
      if (p.residual) {
        b.t["residual"] = image(g, "residual", y_dim, io);
        y = pointwise(g, y, b.t["residual"], fe::PointwiseMode_t::ADD);
      }
      if (p.relu) y = pointwise(g, y, nullptr, fe::PointwiseMode_t::RELU_FWD);
      y->set_output(true).set_dim(y_dim).set_stride(nhwc(p.n, p.k, p.p, p.q)).set_data_type(io);
      b.t["y"] = y;
      break;
    }
  }
}

std::string message(fe::error_t e) {  // get_message() is not const
  const std::string m = e.get_message();
  return m.empty() ? "cudnn-frontend error" : m;
}

// The frontend's steps up to a plan; "" or the first failure.
std::string build(Built& b, cudnnHandle_t handle) {
  auto& g = *b.graph;
  if (auto e = g.validate(); e.is_bad()) return "validate: " + message(e);
  if (auto e = g.build_operation_graph(handle); e.is_bad()) return "build_operation_graph: " + message(e);
  if (auto e = g.create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}); e.is_bad())
    return "create_execution_plans: " + message(e);
  if (auto e = g.check_support(handle); e.is_bad()) return "check_support (no engine): " + message(e);
  if (auto e = g.build_plans(handle, fe::BuildPlanPolicy_t::HEURISTICS_CHOICE); e.is_bad())
    return "build_plans: " + message(e);
  if (auto e = g.get_workspace_size(b.workspace); e.is_bad()) return "get_workspace_size: " + message(e);
  return "";
}

cudnnHandle_t stream_handle(const Tensor& like) {
  cudnnHandle_t handle = at::native::getCudnnHandle();
  TORCH_CHECK(cudnnSetStream(handle, at::cuda::getCurrentCUDAStream(like.get_device()).stream()) ==
                  CUDNN_STATUS_SUCCESS,
              "cudnn_graphs: cudnnSetStream failed");
  return handle;
}

// The cached graph of a problem, built on first use.
const Built& graph_for(const Problem& p, const Tensor& like) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::unique_ptr<Built>> cache;
  const std::string key = p.key();
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  auto b = std::make_unique<Built>();
  try {
    describe(p, *b);
    b->error = build(*b, stream_handle(like));
  } catch (const std::exception& e) {
    b->error = e.what();
  }
  return *cache.emplace(key, std::move(b)).first->second;
}

// Runs the graph on the named tensors' device pointers.
void execute(const Built& b, std::initializer_list<std::pair<const char*, void*>> named, const Tensor& like) {
  std::unordered_map<Attr, void*> pack;
  for (const auto& [name, ptr] : named) pack[b.t.at(name)] = ptr;
  Tensor ws = at::empty({std::max<int64_t>(b.workspace, 1)}, like.options().dtype(at::kByte));
  auto e = b.graph->execute(stream_handle(like), pack, ws.data_ptr());
  TORCH_CHECK(e.is_good(), "cudnn_graphs: executing a built cuDNN graph failed: ", message(e));
}

bool nhwc_dense(const Tensor& t) { return t.is_contiguous(at::MemoryFormat::ChannelsLast); }

Tensor f32(const Tensor& t) { return t.to(at::kFloat).contiguous(); }

// The problem of a call, or nullopt where the graphs do not take its operands (the composition runs them).
std::optional<Problem> problem(Pattern pattern, const Tensor& x, at::IntArrayRef w, at::IntArrayRef y, bool prologue,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               std::initializer_list<const Tensor*> images) {
  if (fe_type(x.scalar_type()) == fe::DataType_t::NOT_SET) return std::nullopt;
  for (const Tensor* t : images)
    if (!nhwc_dense(*t) || t->scalar_type() != x.scalar_type()) return std::nullopt;
  Problem p;
  p.pattern = pattern, p.dtype = x.scalar_type(), p.prologue = prologue, p.device = x.get_device();
  p.n = x.size(0), p.c = x.size(1), p.h = x.size(2), p.w = x.size(3);
  p.k = w[0], p.r = w[2], p.s_ = w[3], p.p = y[2], p.q = y[3];
  p.stride[0] = stride[0], p.stride[1] = stride[1], p.pad[0] = padding[0], p.pad[1] = padding[1];
  return p;
}

std::vector<int64_t> out_size(const Tensor& x, at::IntArrayRef w, at::IntArrayRef stride, at::IntArrayRef pad) {
  return {x.size(0), w[0], (x.size(2) + 2 * pad[0] - w[2]) / stride[0] + 1,
          (x.size(3) + 2 * pad[1] - w[3]) / stride[1] + 1};
}

// The graph of a call's problem where there is one with a plan; nullptr otherwise (counted as a fallback).
const Built* usable(const std::optional<Problem>& p, const Tensor& like) {
  if (p) {
    const Built& b = graph_for(*p, like);
    if (b.error.empty()) {
      count_path(std::string("cudnn_graph:") + pattern_name(p->pattern));
      return &b;
    }
  }
  return nullptr;
}

void count_fallback(Pattern p) { count_path(std::string("cudnn_graph_fallback:") + pattern_name(p)); }

std::tuple<Tensor, Tensor> conv_stats_cuda(const Tensor& x, const Tensor& w, const OptTensor& scale,
                                           const OptTensor& shift, at::IntArrayRef stride, at::IntArrayRef padding) {
  fused_train::check_conv_stats(x, w, scale, shift, stride, padding);
  c10::cuda::CUDAGuard guard(x.device());
  const auto y_size = out_size(x, w.sizes(), stride, padding);
  const Built* b = usable(problem(Pattern::ConvStats, x, w.sizes(), y_size, scale.has_value(), stride, padding,
                                  {&x, &w}), x);
  if (b == nullptr) {
    count_fallback(Pattern::ConvStats);
    return fused_train::conv_stats_composite(x, w, scale, shift, stride, padding);
  }
  Tensor y = at::empty(y_size, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  Tensor sums = at::empty({2, w.size(0)}, x.options().dtype(at::kFloat));
  if (scale.has_value()) {
    Tensor sc = f32(*scale), sh = f32(*shift);
    execute(*b, {{"x", x.data_ptr()}, {"w", w.data_ptr()}, {"y", y.data_ptr()}, {"sum", sums.data_ptr()},
                 {"sqsum", sums[1].data_ptr()}, {"scale", sc.data_ptr()}, {"shift", sh.data_ptr()}}, x);
  } else {
    execute(*b, {{"x", x.data_ptr()}, {"w", w.data_ptr()}, {"y", y.data_ptr()}, {"sum", sums.data_ptr()},
                 {"sqsum", sums[1].data_ptr()}}, x);
  }
  return {y, sums};
}

std::tuple<Tensor, Tensor> dgrad_drelu_dbn_cuda(const Tensor& dy, const Tensor& w, const Tensor& y,
                                                const Tensor& scale, const Tensor& shift, const Tensor& mean,
                                                const Tensor& invstd, at::IntArrayRef stride,
                                                at::IntArrayRef padding) {
  fused_train::check_dgrad_drelu_dbn(dy, w, y, scale, shift, mean, invstd, stride, padding);
  c10::cuda::CUDAGuard guard(y.device());
  const Built* b = usable(problem(Pattern::DgradDreluDbn, y, w.sizes(), dy.sizes(), true, stride, padding,
                                  {&dy, &w, &y}), y);
  if (b == nullptr) {
    count_fallback(Pattern::DgradDreluDbn);
    return fused_train::dgrad_drelu_dbn_composite(dy, w, y, scale, shift, mean, invstd, stride, padding);
  }
  const int64_t c = y.size(1);
  Tensor g = at::empty_like(y, y.options().memory_format(at::MemoryFormat::ChannelsLast));
  Tensor sums = at::empty({2, c}, y.options().dtype(at::kFloat));  // (dbias, dscale): the order of the op's sums
  Tensor eq = at::empty({3, c}, y.options().dtype(at::kFloat));
  Tensor sc = f32(scale), sh = f32(shift), mu = f32(mean), inv = f32(invstd);
  execute(*b, {{"dy", dy.data_ptr()}, {"w", w.data_ptr()}, {"y", y.data_ptr()}, {"scale", sc.data_ptr()},
               {"shift", sh.data_ptr()}, {"mean", mu.data_ptr()}, {"invstd", inv.data_ptr()}, {"g", g.data_ptr()},
               {"dbias", sums.data_ptr()}, {"dscale", sums[1].data_ptr()}, {"eq_dy", eq[0].data_ptr()},
               {"eq_x", eq[1].data_ptr()}, {"eq_b", eq[2].data_ptr()}}, y);
  return {g, sums};
}

Tensor wgrad_cuda(const Tensor& dy, const Tensor& x, const OptTensor& scale, const OptTensor& shift,
                  at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  fused_train::check_wgrad(dy, x, scale, shift, weight_size, stride, padding);
  c10::cuda::CUDAGuard guard(x.device());
  // Without a prologue this is a plain wgrad: ATen's (cuDNN's own) runs it.
  const Built* b = scale.has_value() ? usable(problem(Pattern::Wgrad, x, weight_size, dy.sizes(), true, stride,
                                                      padding, {&dy, &x}), x)
                                     : nullptr;
  if (b == nullptr) {
    if (scale.has_value()) count_fallback(Pattern::Wgrad);
    return fused_train::wgrad_composite(dy, x, scale, shift, weight_size, stride, padding);
  }
  Tensor dw = at::empty(weight_size, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  Tensor sc = f32(*scale), sh = f32(*shift);
  execute(*b, {{"x", x.data_ptr()}, {"dy", dy.data_ptr()}, {"scale", sc.data_ptr()}, {"shift", sh.data_ptr()},
               {"dw", dw.data_ptr()}}, x);
  return dw;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> finalize_cuda(const Tensor& sums, const Tensor& count,
                                                         const Tensor& weight, const Tensor& bias,
                                                         const OptTensor& running_mean, const OptTensor& running_var,
                                                         double momentum, double eps) {
  c10::cuda::CUDAGuard guard(sums.device());
  return fused_train::finalize_with(
      sums, count, weight, bias, running_mean, running_var,
      [&](const Tensor& s, const Tensor& n, const Tensor& w, const Tensor& b, Tensor* rm, Tensor* rv,
          const std::vector<Tensor>& out) {
        fused_train::FinalizeArgs a{s.data_ptr(), w.data_ptr(), b.data_ptr(), {}, rm ? rm->data_ptr() : nullptr,
                                    rv ? rv->data_ptr() : nullptr, n.data_ptr<double>(), s.size(1), eps, momentum};
        for (int i = 0; i < 4; ++i) a.out[i] = out[i].data_ptr();
        const std::string err = fused_train::launch_finalize(a, s.scalar_type() == at::kDouble,
                                                             at::cuda::getCurrentCUDAStream(s.get_device()).stream());
        TORCH_CHECK(err.empty(), "bn_finalize: CUDA kernel launch failed: ", err);
      });
}

}  // namespace

bool takes_scale_shift(const Tensor& x, const Tensor& w, const OptTensor& residual) {
  // Channels in multiples of 8 (16 bytes), what cuDNN's fusion engines need: the 3-channel stem runs stock.
  if (fe_type(x.scalar_type()) == fe::DataType_t::NOT_SET || x.numel() == 0 || w.size(0) % 8 || x.size(1) % 8 ||
      w.size(0) == 0)
    return false;
  for (const Tensor* t : {&x, &w, residual.has_value() ? &*residual : &x})
    if (!nhwc_dense(*t) || t->scalar_type() != x.scalar_type() || reinterpret_cast<uintptr_t>(t->data_ptr()) % 16)
      return false;
  return true;
}

std::optional<Tensor> conv_scale_shift(const Tensor& x, const Tensor& w, const OptTensor& bias,
                                       const OptTensor& residual, at::IntArrayRef stride, at::IntArrayRef padding,
                                       bool relu, const Tensor& scale, const Tensor& shift) {
  if (!takes_scale_shift(x, w, residual)) return std::nullopt;
  const auto y_size = out_size(x, w.sizes(), stride, padding);
  auto p = problem(Pattern::ConvScaleShift, x, w.sizes(), y_size, false, stride, padding, {&x, &w});
  p->residual = residual.has_value(), p->relu = relu;
  const Built& b = graph_for(*p, x);
  if (!b.error.empty()) return std::nullopt;
  Tensor y = at::empty(y_size, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (poison_outputs()) y.fill_(std::numeric_limits<float>::quiet_NaN());
  // conv * scale + shift + bias: the op's bias joins the shift, both fp32.
  Tensor sc = f32(scale), sh = bias.has_value() ? (f32(shift) + bias->to(at::kFloat)).contiguous() : f32(shift);
  if (residual.has_value())
    execute(b, {{"x", x.data_ptr()}, {"w", w.data_ptr()}, {"scale", sc.data_ptr()}, {"shift", sh.data_ptr()},
                {"residual", residual->data_ptr()}, {"y", y.data_ptr()}}, x);
  else
    execute(b, {{"x", x.data_ptr()}, {"w", w.data_ptr()}, {"scale", sc.data_ptr()}, {"shift", sh.data_ptr()},
                {"y", y.data_ptr()}}, x);
  return y;
}

std::string probe(const std::string& pattern, const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                  const std::vector<int64_t>& stride, const std::vector<int64_t>& padding, bool prologue,
                  const std::string& dtype, bool plans) {
  Problem p;
  if (pattern == "conv_stats") p.pattern = Pattern::ConvStats;
  else if (pattern == "dgrad_drelu_dbn") p.pattern = Pattern::DgradDreluDbn;
  else if (pattern == "wgrad") p.pattern = Pattern::Wgrad;
  else if (pattern.rfind("conv_scale_shift", 0) == 0) {
    const std::string tail = pattern.substr(16);
    TORCH_CHECK(tail.empty() || tail == "_relu" || tail == "_add_relu" || tail == "_add",
                "cudnn_graph_probe: conv_scale_shift takes the suffixes _add, _relu or _add_relu, got ", pattern);
    p.pattern = Pattern::ConvScaleShift;
    p.residual = tail.find("_add") != std::string::npos, p.relu = tail.find("_relu") != std::string::npos;
  } else {
    TORCH_CHECK(false, "cudnn_graph_probe: pattern must be conv_stats, dgrad_drelu_dbn, wgrad or conv_scale_shift"
                "[_add][_relu], got ", pattern);
  }
  TORCH_CHECK(x.size() == 4 && w.size() == 4 && w[1] == x[1], "cudnn_graph_probe: x must be [N, C, H, W] and w [K, C, "
              "R, S], got ", x, " and ", w);
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && stride[0] > 0 && stride[1] > 0 && padding[0] >= 0 &&
                  padding[1] >= 0,
              "cudnn_graph_probe: stride must be two positive ints and padding two non-negative ints, got ", stride,
              " and ", padding);
  if (dtype == "float16") p.dtype = at::kHalf;
  else if (dtype == "bfloat16") p.dtype = at::kBFloat16;
  else TORCH_CHECK(false, "cudnn_graph_probe: dtype must be float16 or bfloat16, got ", dtype);
  p.prologue = prologue || p.pattern == Pattern::DgradDreluDbn;
  p.n = x[0], p.c = x[1], p.h = x[2], p.w = x[3], p.k = w[0], p.r = w[2], p.s_ = w[3];
  p.stride[0] = stride[0], p.stride[1] = stride[1], p.pad[0] = padding[0], p.pad[1] = padding[1];
  TORCH_CHECK(p.h + 2 * p.pad[0] >= p.r && p.w + 2 * p.pad[1] >= p.s_, "cudnn_graph_probe: the padded input ", x,
              " is smaller than the kernel ", w);
  p.p = (p.h + 2 * p.pad[0] - p.r) / p.stride[0] + 1, p.q = (p.w + 2 * p.pad[1] - p.s_) / p.stride[1] + 1;
  if (plans) {  // the op's own cached graph (built now if it is the first ask), so an op call finds it built
    TORCH_CHECK(at::cuda::is_available(), "cudnn_graph_probe: plans=True needs a CUDA device");
    p.device = at::cuda::current_device();
    return graph_for(p, at::empty({1}, at::TensorOptions().device(at::kCUDA, p.device))).error;
  }
  Built b;
  try {
    describe(p, b);
    auto e = b.graph->validate();
    return e.is_good() ? "" : "validate: " + message(e);
  } catch (const std::exception& e) {
    return e.what();
  }
}

}  // namespace cudnn_graphs

TORCH_LIBRARY_IMPL(resnet_ext, CUDA, m) {
  m.impl("fused_conv_stats", &cudnn_graphs::conv_stats_cuda);
  m.impl("fused_dgrad_drelu_dbn", &cudnn_graphs::dgrad_drelu_dbn_cuda);
  m.impl("fused_wgrad", &cudnn_graphs::wgrad_cuda);
  m.impl("bn_finalize", &cudnn_graphs::finalize_cuda);
}

}  // namespace resnet_ext
#endif  // RESNET_EXT_WITH_CUDA
