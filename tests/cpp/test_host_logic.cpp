// Host-side logic without Python or a GPU: argument checks name the argument, the stock composition computes
// relu(conv + bias + residual), and the kernel selector honours can_implement, dtype, arch and fallbacks.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <functional>
#include <string>

#include "conv_bn_act.h"
#include "conv_problem.h"

using namespace resnet_ext;

static int failures = 0;
#define EXPECT(cond)                                                 \
  do {                                                               \
    if (!(cond)) {                                                   \
      std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
      ++failures;                                                    \
    }                                                                \
  } while (0)

static void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    std::printf("FAILED: expected an error containing '%s'\n", needle.c_str());
    ++failures;
  } catch (const c10::Error& e) {
    if (std::string(e.what()).find(needle) == std::string::npos) {
      std::printf("FAILED: error '%s' does not contain '%s'\n", e.what(), needle.c_str());
      ++failures;
    }
  }
}

static void test_checks() {
  auto x = at::randn({2, 8, 9, 9});
  auto w = at::randn({16, 8, 3, 3});
  auto b = at::randn({16});
  auto out = check_conv_bn_act_args(x, w, b, std::nullopt, {1, 1}, {1, 1}, {1, 1}, 1);
  EXPECT((out == std::vector<int64_t>{2, 16, 9, 9}));
  expect_error([&] { check_conv_bn_act_args(at::randn({8, 9, 9}), w, b, std::nullopt, {1, 1}, {1, 1}, {1, 1}, 1); },
               "x must be a 4-D tensor");
  expect_error([&] { check_conv_bn_act_args(x, at::randn({16, 4, 3, 3}), b, std::nullopt, {1, 1}, {1, 1}, {1, 1}, 1); },
               "channel mismatch");
  expect_error([&] { check_conv_bn_act_args(x, w, at::randn({3}), std::nullopt, {1, 1}, {1, 1}, {1, 1}, 1); },
               "bias must have shape");
  expect_error([&] { check_conv_bn_act_args(x, w, b, at::randn({2, 16, 9, 8}), {1, 1}, {1, 1}, {1, 1}, 1); },
               "residual must have the output's shape");
  expect_error([&] { check_conv_bn_act_args(x, w.to(at::kDouble), b, std::nullopt, {1, 1}, {1, 1}, {1, 1}, 1); },
               "weight must have x's dtype");
  expect_error([&] { check_conv_bn_act_args(x, w, b, std::nullopt, {1}, {1, 1}, {1, 1}, 1); },
               "stride must have 2 entries");
}

static void test_stock() {
  auto x = at::randn({2, 8, 9, 9}, at::kDouble);
  auto w = at::randn({16, 8, 3, 3}, at::kDouble);
  auto b = at::randn({16}, at::kDouble);
  auto r = at::randn({2, 16, 5, 5}, at::kDouble);
  auto y = conv_bn_act_stock(x, w, b, r, {2, 2}, {1, 1}, {1, 1}, true, 1);
  auto ref = at::relu(at::conv2d(x, w, b, {2, 2}, {1, 1}) + r);
  EXPECT(at::allclose(y, ref, 1e-12, 1e-12));
  auto xcl = x.contiguous(at::MemoryFormat::ChannelsLast);
  EXPECT(conv_bn_act_stock(xcl, w, b, r, {2, 2}, {1, 1}, {1, 1}, true, 1)
             .is_contiguous(at::MemoryFormat::ChannelsLast));
}

static std::string accept_all(const ConvProblem&) { return ""; }
static std::string reject_all(const ConvProblem&) { return "too narrow"; }
static int score_one(const ConvProblem&) { return 1; }
static int score_two(const ConvProblem&) { return 2; }
static std::string no_launch(const ConvLaunchArgs&) { return "not launched in this test"; }

static ConvProblem resnet_problem() {
  ConvProblem p;
  p.N = 64, p.H = 56, p.W = 56, p.C = 64, p.K = 64, p.R = 3, p.S = 3, p.pad_h = 1, p.pad_w = 1;
  p.dtype = ScalarKind::BFloat16;
  p.sm = 90;
  EXPECT(p.compute_output_size() && p.P == 56 && p.Q == 56);
  return p;
}

static void test_selector() {
  ConvProblem p = resnet_problem();
  EXPECT(!select_conv_kernel(p, {}).fused());
  EXPECT(select_conv_kernel(p, {}).reason.find("no fused CUDA kernels") != std::string::npos);
  std::vector<FusedKernelInfo> reg = {
      {"a_bf16", 80, 1000, ScalarKind::BFloat16, &accept_all, &score_one, &no_launch},
      {"b_bf16", 80, 1000, ScalarKind::BFloat16, &accept_all, &score_two, &no_launch},
      {"c_f16", 80, 1000, ScalarKind::Float16, &accept_all, &score_two, &no_launch},
      {"d_bf16_sm100", 100, 1000, ScalarKind::BFloat16, &accept_all, &score_two, &no_launch},
      {"e_bf16_rejects", 80, 1000, ScalarKind::BFloat16, &reject_all, &score_two, &no_launch},
  };
  EXPECT(select_conv_kernel(p, reg).kernel == "b_bf16");  // best score, right dtype and arch, can implement
  p.dtype = ScalarKind::Float16;
  EXPECT(select_conv_kernel(p, reg).kernel == "c_f16");
  p.dtype = ScalarKind::Float64;
  EXPECT(!select_conv_kernel(p, reg).fused());
  p = resnet_problem();
  p.groups = 32;
  EXPECT(select_conv_kernel(p, reg).reason.find("grouped") != std::string::npos);
  p = resnet_problem();
  p.x_channels_last = false;
  EXPECT(select_conv_kernel(p, reg).reason.find("channels_last") != std::string::npos);
  p = resnet_problem();
  p.max_tensor_bytes = int64_t(3) << 30;
  EXPECT(select_conv_kernel(p, reg).reason.find("2 GiB") != std::string::npos);
  p = resnet_problem();
  p.dtype = ScalarKind::Float32;
  p.allow_tf32 = false;
  EXPECT(select_conv_kernel(p, reg).reason.find("allow_tf32") != std::string::npos);
  std::vector<FusedKernelInfo> only_reject = {reg[4]};
  p = resnet_problem();
  EXPECT(select_conv_kernel(p, only_reject).reason.find("too narrow") != std::string::npos);
}

int main() {
  test_checks();
  test_stock();
  test_selector();
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
