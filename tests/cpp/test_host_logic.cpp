// Host-side logic without Python or a GPU: argument checks name the argument, the stock composition computes
// relu(conv + bias + residual), the output-size formula, and the dispatcher -- every source of a choice
// (heuristic, forced, autotuned, table) re-checked against compiled images, verification, operand layout and
// alignment, can_implement and workspace -- on fake kernel registries.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <functional>
#include <string>

#include "dispatch/dispatch.h"
#include "ops/conv_bn_act.h"

using namespace resnet_ext;

static int failures = 0;
#define EXPECT(cond)                                                 \
  do {                                                               \
    if (!(cond)) {                                                   \
      std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
      ++failures;                                                    \
    }                                                                \
  } while (0)

static bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

static void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    std::printf("FAILED: expected an error containing '%s'\n", needle.c_str());
    ++failures;
  } catch (const c10::Error& e) {
    if (!contains(e.what(), needle)) {
      std::printf("FAILED: error '%s' does not contain '%s'\n", e.what(), needle.c_str());
      ++failures;
    }
  }
}

static void test_checks() {
  auto x = at::randn({2, 8, 9, 9});
  auto w = at::randn({16, 8, 3, 3});
  auto b = at::randn({16});
  auto c = check_conv_bn_act_args(x, w, b, std::nullopt, {1, 1}, {1, 1}, {1, 1}, 1);
  EXPECT((c.out_size == std::vector<int64_t>{2, 16, 9, 9}));
  // One entry means both, as in F.conv2d.
  c = check_conv_bn_act_args(x, w, b, std::nullopt, {2}, {1}, {1}, 1);
  EXPECT((c.stride == std::vector<int64_t>{2, 2}) && (c.out_size == std::vector<int64_t>{2, 16, 5, 5}));
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
  expect_error([&] { check_conv_bn_act_args(x, w, b, std::nullopt, {1, 1, 1}, {1, 1}, {1, 1}, 1); },
               "expected stride to be a single integer value or a list of 2 values");
  expect_error([&] { check_conv_bn_act_args(x, w, b, std::nullopt, {0, 1}, {1, 1}, {1, 1}, 1); },
               "non-positive stride");
  expect_error([&] { check_conv_bn_act_args(x, w, b, std::nullopt, {1, 1}, {1, 1}, {1, 1}, 0); },
               "non-positive groups");
  // Too small, including where C++'s truncating division would have made the output size 1.
  expect_error([&] {
    check_conv_bn_act_args(at::randn({1, 8, 1, 1}), at::randn({4, 8, 2, 2}), std::nullopt, std::nullopt, {2, 2},
                           {0, 0}, {1, 1}, 1);
  }, "too small");
}

static void test_output_size() {
  for (int64_t in = 0; in < 12; ++in)
    for (int64_t k = 1; k < 5; ++k)
      for (int64_t s = 1; s < 4; ++s)
        for (int64_t p = 0; p < 3; ++p)
          for (int64_t d = 1; d < 3; ++d) {
            const int64_t num = in + 2 * p - d * (k - 1) - 1;
            const int64_t floor_div = num >= 0 ? num / s : -((-num + s - 1) / s);
            const int64_t expected = std::max<int64_t>(floor_div + 1, 0);
            EXPECT(conv_output_size(in, k, s, p, d) == expected);
          }
}

static void test_stock() {
  auto x = at::randn({2, 8, 9, 9}, at::kDouble);
  auto w = at::randn({16, 8, 3, 3}, at::kDouble);
  auto b = at::randn({16}, at::kDouble);
  auto r = at::randn({2, 16, 5, 5}, at::kDouble);
  auto c = check_conv_bn_act_args(x, w, b, r, {2, 2}, {1, 1}, {1, 1}, 1);
  auto y = conv_bn_act_stock(x, w, b, r, c, true);
  auto ref = at::relu(at::conv2d(x, w, b, {2, 2}, {1, 1}) + r);
  EXPECT(at::allclose(y, ref, 1e-12, 1e-12));
  auto xcl = x.contiguous(at::MemoryFormat::ChannelsLast);
  EXPECT(conv_bn_act_stock(xcl, w, b, r, c, true).is_contiguous(at::MemoryFormat::ChannelsLast));
  // No input channels: relu(bias + residual), with the weight's K output channels.
  auto x0 = at::randn({2, 0, 9, 9}, at::kDouble);
  auto w0 = at::randn({16, 0, 3, 3}, at::kDouble);
  auto c0 = check_conv_bn_act_args(x0, w0, b, r, {2, 2}, {1, 1}, {1, 1}, 1);
  auto y0 = conv_bn_act_stock(x0, w0, b, r, c0, true);
  EXPECT((y0.sizes() == at::IntArrayRef{2, 16, 5, 5}) && at::allclose(y0, at::relu(b.view({1, -1, 1, 1}) + r)));
  // Empty batch: at::empty's strides, like the fake kernel.
  auto xe = at::randn({0, 8, 9, 9}, at::kDouble);
  auto ye = conv_bn_act_stock(xe, w, b, std::nullopt, check_conv_bn_act_args(xe, w, b, std::nullopt, {1, 1}, {1, 1},
                                                                             {1, 1}, 1),
                              true);
  EXPECT(ye.strides() == at::IntArrayRef(output_strides(ye.sizes(), output_format(xe))));
}

// ---- the dispatcher -------------------------------------------------------------------------------------------

static FusedKernelInfo fake(const std::string& name, ScalarKind dtype, int min_sm, int max_sm, int score,
                            std::vector<int> verified, std::string reject = "", ImageRequirement image = {80, false},
                            size_t workspace = 0) {
  FusedKernelInfo k;
  k.name = name;
  k.dtype = dtype;
  k.min_sm = min_sm;
  k.max_sm = max_sm;
  k.image = image;
  k.verified_sms = std::move(verified);
  k.can_implement = [reject](const ConvProblem&) { return reject; };
  k.score = [score](const ConvProblem&) { return score; };
  k.workspace_bytes = [workspace](const ConvProblem&) { return workspace; };
  k.launch = [](const ConvLaunchArgs&) { return std::string("not launched in this test"); };
  return k;
}

static ConvProblem resnet_problem(int sm = 90) {
  ConvProblem p;
  p.N = 64, p.H = 56, p.W = 56, p.C = 64, p.K = 64, p.R = 3, p.S = 3, p.pad_h = 1, p.pad_w = 1;
  p.dtype = ScalarKind::BFloat16;
  p.sm = sm;
  p.sm_count = 132;
  p.device = 0;
  EXPECT(p.compute_output_size() && p.P == 56 && p.Q == 56);
  p.set_packed_operands();
  p.x.address = 1 << 20, p.w.address = 2 << 20, p.bias.address = 3 << 20;
  return p;
}

static const std::vector<CudaImage> kDefaultImages = parse_cuda_images("sm_80;sm_90a");

static Decision run(const ConvProblem& p, const std::vector<FusedKernelInfo>& reg,
                    const std::vector<CudaImage>& images = kDefaultImages, const std::string& forced = "",
                    std::optional<KernelChoice> tuned = std::nullopt, std::optional<KernelChoice> table = std::nullopt) {
  DispatchInputs in;
  in.registry = &reg;
  in.images = &images;
  in.forced = forced;
  in.tuned = std::move(tuned);
  in.table = std::move(table);
  return dispatch_conv(p, in);
}

static void test_images() {
  EXPECT(cuda_images_string(parse_cuda_images("sm_80;sm_90a")) == "sm_80 sm_90a");
  EXPECT(cuda_images_string(parse_cuda_images("8.0;9.0a;8.6+PTX")) == "sm_80 sm_90a sm_86 compute_86");
  const CudaImage sm80{80, false, false}, sm90a{90, true, false}, ptx80{80, false, true};
  EXPECT(image_loads_on(sm80, 80) && image_loads_on(sm80, 86) && image_loads_on(sm80, 89));
  EXPECT(!image_loads_on(sm80, 90) && !image_loads_on(sm80, 100) && !image_loads_on(sm80, 75));
  EXPECT(image_loads_on(sm90a, 90) && !image_loads_on(sm90a, 100));
  EXPECT(image_loads_on(ptx80, 100) && image_loads_on(ptx80, 120) && !image_loads_on(ptx80, 75));
  const auto k80 = fake("k80", ScalarKind::BFloat16, 80, 1000, 1, {80, 90});
  const auto k90 = fake("k90", ScalarKind::BFloat16, 90, 90, 1, {90}, "", {90, true});
  EXPECT(image_rejection(k80, 90, kDefaultImages).empty());     // runs from the sm_90a image on Hopper
  EXPECT(!image_rejection(k80, 100, kDefaultImages).empty());   // Blackwell: no image of the default build loads
  EXPECT(image_rejection(k80, 100, parse_cuda_images("sm_80;compute_80")).empty());
  EXPECT(image_rejection(k90, 90, kDefaultImages).empty());
  EXPECT(!image_rejection(k90, 90, parse_cuda_images("sm_80;sm_90")).empty());  // sm_90 holds only stubs of it
  EXPECT(!image_rejection(k90, 90, parse_cuda_images("sm_80;compute_80")).empty());
}

static void test_dispatcher() {
  ConvProblem p = resnet_problem();
  EXPECT(!run(p, {}).fused() && contains(run(p, {}).reason, "no fused CUDA kernels"));
  std::vector<FusedKernelInfo> reg = {
      fake("a_bf16", ScalarKind::BFloat16, 80, 1000, 1, {80, 90}),
      fake("b_bf16", ScalarKind::BFloat16, 80, 1000, 2, {80, 90}, "", {80, false}, 4096),
      fake("c_f16", ScalarKind::Float16, 80, 1000, 2, {80, 90}),
      fake("d_bf16_sm100", ScalarKind::BFloat16, 100, 1000, 3, {100}),
      fake("e_bf16_rejects", ScalarKind::BFloat16, 80, 1000, 2, {80, 90}, "too narrow"),
      fake("f_bf16_unverified", ScalarKind::BFloat16, 90, 90, 5, {}, "", {90, true}),
  };
  Decision d = run(p, reg);
  EXPECT(d.fused() && d.kernel->name == "b_bf16" && d.source == ChoiceSource::Heuristic);  // best verified score
  EXPECT(d.workspace_bytes == 4096 && d.path == "fused:b_bf16");
  p.dtype = ScalarKind::Float16;
  EXPECT(run(p, reg).kernel->name == "c_f16");
  p.dtype = ScalarKind::Float64;
  EXPECT(!run(p, reg).fused());

  // Generic reasons, including every operand's layout and alignment.
  auto reason_of = [&](const std::function<void(ConvProblem&)>& change) {
    ConvProblem q = resnet_problem();
    change(q);
    Decision r = run(q, reg);
    return r.fused() ? std::string("FUSED ") + r.kernel->name : r.reason;
  };
  EXPECT(contains(reason_of([](ConvProblem& q) { q.groups = 32; q.w.sizes[1] = 2; }), "grouped"));
  EXPECT(contains(reason_of([](ConvProblem& q) { q.x.strides[1] = q.H * q.W, q.x.strides[2] = q.W, q.x.strides[3] = 1,
                                                 q.x.strides[0] = q.C * q.H * q.W; }), "x is not channels_last"));
  EXPECT(contains(reason_of([](ConvProblem& q) { q.bias.strides[0] = 2; }), "bias is not contiguous"));
  EXPECT(contains(reason_of([](ConvProblem& q) { q.x.address += 2; }), "x's data pointer is not 16-byte aligned"));
  EXPECT(contains(reason_of([](ConvProblem& q) { q.w.address += 8; }), "weight's data pointer"));
  EXPECT(contains(reason_of([](ConvProblem& q) { q.bias.present = false; }), "bias is missing"));
  EXPECT(contains(reason_of([](ConvProblem& q) { q.y.strides[2] = 1; }), "y is not channels_last"));
  EXPECT(contains(reason_of([](ConvProblem& q) { q.has_residual = true; }), "residual is missing"));
  EXPECT(contains(reason_of([](ConvProblem& q) {
    q.has_residual = true;
    q.residual = packed_nhwc_operand(q.N, q.K, q.P, q.Q, 4 << 20);
    q.residual.strides[0] += 8;  // a padded batch stride
  }), "residual is not channels_last"));
  EXPECT(contains(reason_of([](ConvProblem& q) { q.x.sizes[1] = 32; }), "x has shape"));
  EXPECT(contains(reason_of([](ConvProblem& q) { q.N = 8192; q.set_packed_operands(); }), "2 GiB"));
  EXPECT(contains(reason_of([](ConvProblem& q) { q.dtype = ScalarKind::Float32; q.allow_tf32 = false; }),
                  "allow_tf32"));
  EXPECT(contains(reason_of([](ConvProblem& q) { q.sm = 100; }), "no fused kernel accepts"));  // no image loads

  // Unverified kernels are opt-in: even when every verified kernel rejects, the heuristic falls back.
  std::vector<FusedKernelInfo> only_unverified_accepts = {reg[4], reg[5]};
  d = run(resnet_problem(), only_unverified_accepts);
  EXPECT(!d.fused() && contains(d.reason, "too narrow") && contains(d.reason, "not verified"));
  // ... a forced kernel may be unverified, but must still pass every other check.
  d = run(resnet_problem(), reg, kDefaultImages, "f_bf16_unverified");
  EXPECT(d.fused() && d.kernel->name == "f_bf16_unverified" && d.source == ChoiceSource::Forced);
  ConvProblem nchw = resnet_problem();
  nchw.x.strides[1] = nchw.H * nchw.W, nchw.x.strides[2] = nchw.W, nchw.x.strides[3] = 1;
  nchw.x.strides[0] = nchw.C * nchw.H * nchw.W;
  d = run(nchw, reg, kDefaultImages, "f_bf16_unverified");
  EXPECT(!d.fused() && contains(d.reason, "forced kernel f_bf16_unverified cannot run this call"));
  d = run(resnet_problem(), reg, parse_cuda_images("sm_80;sm_90"), "f_bf16_unverified");  // no sm_90a image
  EXPECT(d.fused() && d.kernel->name == "b_bf16" && contains(d.reason, "no image"));

  // Autotuned choices are re-checked on every hit: layout, alignment, the TF32 flag, images, can_implement.
  const KernelChoice tuned{"a_bf16", "autotuned: fastest"};
  d = run(resnet_problem(), reg, kDefaultImages, "", tuned);
  EXPECT(d.fused() && d.kernel->name == "a_bf16" && d.source == ChoiceSource::Autotuned);
  d = run(nchw, reg, kDefaultImages, "", tuned);
  EXPECT(!d.fused() && contains(d.reason, "autotuned kernel a_bf16 cannot run this call") &&
         contains(d.reason, "channels_last"));
  ConvProblem misaligned = resnet_problem();
  misaligned.x.address += 4;
  EXPECT(!run(misaligned, reg, kDefaultImages, "", tuned).fused());
  d = run(resnet_problem(), reg, kDefaultImages, "", KernelChoice{"e_bf16_rejects", "tuned"});
  EXPECT(d.fused() && d.kernel->name == "b_bf16" && contains(d.reason, "too narrow"));
  EXPECT(!run(resnet_problem(), reg, kDefaultImages, "", KernelChoice{"", "autotuned: stock fastest"}).fused());
  // ... and an autotuned unverified kernel is allowed (the autotuner checked its output), a table entry is not.
  d = run(resnet_problem(), reg, kDefaultImages, "", KernelChoice{"f_bf16_unverified", "tuned"});
  EXPECT(d.fused() && d.kernel->name == "f_bf16_unverified");
  d = run(resnet_problem(), reg, kDefaultImages, "", std::nullopt, KernelChoice{"f_bf16_unverified", "table"});
  EXPECT(d.fused() && d.kernel->name == "b_bf16" && contains(d.reason, "not verified"));
  d = run(resnet_problem(), reg, kDefaultImages, "", std::nullopt, KernelChoice{"a_bf16", "table"});
  EXPECT(d.fused() && d.kernel->name == "a_bf16" && d.source == ChoiceSource::Table);

  // The autotuner's candidates: verified or not, but never one that cannot run the call.
  DispatchInputs in;
  in.registry = &reg;
  in.images = &kDefaultImages;
  std::vector<std::string> names;
  for (const auto* k : tuning_candidates(resnet_problem(), in)) names.push_back(k->name);
  EXPECT((names == std::vector<std::string>{"a_bf16", "b_bf16", "f_bf16_unverified"}));
  EXPECT(tuning_candidates(nchw, in).empty());

  // The cache key covers the whole problem: layout and alignment classes, settings, device, arch.
  const std::string key = resnet_problem().key();
  EXPECT(nchw.key() != key && misaligned.key() != key);
  ConvProblem other = resnet_problem();
  other.x.address += 1 << 20;  // another address of the same alignment: the same key
  EXPECT(other.key() == key);
  other.device = 1;
  EXPECT(other.key() != key);
}

int main() {
  test_checks();
  test_output_size();
  test_stock();
  test_images();
  test_dispatcher();
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
