#include "dispatch/conv_problem.h"

#include <algorithm>

namespace resnet_ext {

const char* scalar_kind_name(ScalarKind k) {
  switch (k) {
    case ScalarKind::Float32: return "float32";
    case ScalarKind::Float16: return "float16";
    case ScalarKind::BFloat16: return "bfloat16";
    case ScalarKind::Float64: return "float64";
    default: return "other";
  }
}

int64_t scalar_kind_size(ScalarKind k) {
  switch (k) {
    case ScalarKind::Float32: return 4;
    case ScalarKind::Float16:
    case ScalarKind::BFloat16: return 2;
    case ScalarKind::Float64: return 8;
    default: return 0;
  }
}

int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dil) {
  const int64_t padded = in + 2 * pad, span = dil * (kernel - 1) + 1;
  if (padded < span || stride <= 0) return 0;
  return (padded - span) / stride + 1;
}

int64_t Operand::numel() const {
  if (!present) return 0;
  int64_t n = 1;
  for (int i = 0; i < dim; ++i) n *= sizes[i];
  return n;
}

int64_t Operand::extent() const {
  if (numel() == 0) return 0;
  int64_t e = 1;
  for (int i = 0; i < dim; ++i) e += (sizes[i] - 1) * strides[i];
  return e;
}

bool Operand::nhwc_dense() const {
  if (!present || dim != 4) return false;
  if (numel() == 0) return true;
  // Logical order N, C, H, W; memory order N, H, W, C.
  const int order[4] = {1, 3, 2, 0};
  int64_t expected = 1;
  for (int i : order) {
    if (sizes[i] != 1 && strides[i] != expected) return false;
    expected *= sizes[i];
  }
  return true;
}

bool Operand::dense_vector() const { return present && dim == 1 && (sizes[0] <= 1 || strides[0] == 1); }

std::string Operand::describe() const {
  if (!present) return "absent";
  std::string s = "[", t = "[";
  for (int i = 0; i < dim; ++i) {
    s += (i ? ", " : "") + std::to_string(sizes[i]);
    t += (i ? ", " : "") + std::to_string(strides[i]);
  }
  return s + "] strides " + t + "]";
}

Operand packed_nhwc_operand(int64_t n, int64_t c, int64_t h, int64_t w, uint64_t address) {
  Operand o;
  o.present = true;
  o.dim = 4;
  o.sizes[0] = n, o.sizes[1] = c, o.sizes[2] = h, o.sizes[3] = w;
  o.strides[0] = h * w * c, o.strides[1] = 1, o.strides[2] = w * c, o.strides[3] = c;
  o.address = address;
  return o;
}

Operand vector_operand(int64_t n, int64_t stride, uint64_t address) {
  Operand o;
  o.present = true;
  o.dim = 1;
  o.sizes[0] = n;
  o.strides[0] = stride;
  o.address = address;
  return o;
}

bool FusedKernelInfo::verified_on(int sm) const {
  return std::find(verified_sms.begin(), verified_sms.end(), sm) != verified_sms.end();
}

bool ConvProblem::compute_output_size() {
  P = conv_output_size(H, R, stride_h, pad_h, dil_h);
  Q = conv_output_size(W, S, stride_w, pad_w, dil_w);
  return P > 0 && Q > 0;
}

void ConvProblem::set_packed_operands() {
  x = packed_nhwc_operand(N, C, H, W);
  w = packed_nhwc_operand(K, groups > 0 ? C / groups : C, R, S);
  bias = vector_operand(K);
  residual = has_residual ? packed_nhwc_operand(N, K, P, Q) : Operand{};
  y = packed_nhwc_operand(N, K, P, Q);
  scale = has_scale_shift ? vector_operand(K) : Operand{};
  shift = has_scale_shift ? vector_operand(K) : Operand{};
}

int64_t ConvProblem::max_operand_bytes() const {
  int64_t m = 0;
  for (const Operand* o : {&x, &w, &bias, &residual, &y}) m = std::max(m, o->extent());
  return m * scalar_kind_size(dtype);
}

// Built without iostreams: on the H100 image, std::ostringstream inside this library crashed (a libstdc++
// locale facet mismatch), and key() is built on every call while the autotuner is on.
std::string ConvProblem::to_string() const {
  using std::to_string;
  return "N=" + to_string(N) + " H=" + to_string(H) + " W=" + to_string(W) + " C=" + to_string(C) +
         " K=" + to_string(K) + " R=" + to_string(R) + " S=" + to_string(S) + " stride=" + to_string(stride_h) +
         "x" + to_string(stride_w) + " pad=" + to_string(pad_h) + "x" + to_string(pad_w) +
         " dil=" + to_string(dil_h) + "x" + to_string(dil_w) + " groups=" + to_string(groups) +
         " dtype=" + scalar_kind_name(dtype) + (has_residual ? " +residual" : "") +
         (has_scale_shift ? " +scale_shift" : "") + (relu ? " +relu" : "");
}

std::string ConvProblem::key() const {
  using std::to_string;
  auto facts = [](const Operand& o) -> std::string {
    if (!o.present) return "-";
    std::string s = o.describe();
    // The alignment class, not the address: 16, 8, 4, 2 or 1 bytes.
    int a = 16;
    while (a > 1 && !o.aligned(a)) a /= 2;
    return s + " a" + to_string(a);
  };
  return to_string(device) + "|sm" + to_string(sm) + "x" + to_string(sm_count) + "|" + this->to_string() +
         "|x " + facts(x) + "|w " + facts(w) + "|b " + facts(bias) + "|r " + facts(residual) + "|y " + facts(y) +
         "|s " + facts(scale) + "|t " + facts(shift) +
         "|tf32=" + to_string(allow_tf32) + " cudnn=" + to_string(cudnn_fused_ok) +
         " cudnn_graph=" + to_string(cudnn_graph_ok) +
         " prefer_cudnn=" + to_string(prefer_cudnn);
}

}  // namespace resnet_ext
