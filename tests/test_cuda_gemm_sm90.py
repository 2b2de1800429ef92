"""The Hopper (sm_90a) GEMM kernels of ResNet's 1x1 stride-1 convolutions (csrc/experimental/gemm_sm90.{h,cu}).

Without a GPU:
  - the header's host-side logic (configuration table, check_problem, heuristic_score), compiled with the system C++
    compiler against csrc/experimental/gemm_sm90.h alone (no CUDA, no torch) and driven with every 1x1 stride-1 shape of
    resnet50/101 and with bad problems;
  - in a CUDA build, the kernels as the dispatcher sees them: registered, accepted by can_implement for every such
    shape, rejected (with a reason) for every other conv, never chosen by the dispatcher itself (unverified), chosen
    when forced on an sm_90 device and only there.
On a Hopper GPU (pytest.mark.cuda; skipped elsewhere): every such shape of resnet50/101 x {bf16, fp16} x batch
{1, 7, 64} x {no residual, residual}, each GEMM kernel forced, outputs NaN-poisoned before each launch, against an
fp32 reference of stock ops; explain() and path_counts() name the forced kernel; the ReLU/identity x residual/none
epilogue variants; the fp32 scale/shift epilogue (#24) through conv_bn_act's scale and shift on every such shape."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import resnet_ext
from conftest import rel_err
from resnet_ext._C_loader import _C
from resnet_ext.shapes import conv_shapes

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "csrc" / "experimental" / "gemm_sm90.h"
PREFIX = "sm90_gemm_"
NAME_RE = r"sm90_gemm_(bf16|f16)_(\d+)x(\d+)x(\d+)_c(\d+)x(\d+)_(coop|pingpong)_(\d+)st_a(\d+)"
TAG = {"bfloat16": "bf16", "float16": "f16"}
TOL = {torch.float16: 3e-3, torch.bfloat16: 1e-2}
CL = torch.channels_last


def _is_gemm(s) -> bool:
    return s.R == 1 and s.S == 1 and s.stride == 1 and s.padding == 0 and s.groups == 1


# Every distinct 1x1 stride-1 conv of resnet50 and resnet101 (at batch 1; the tests set the batch).
GEMM_SHAPES = list(dict.fromkeys(s.with_batch(1) for s in conv_shapes("resnet50") + conv_shapes("resnet101")
                                 if _is_gemm(s)))
OTHER_SHAPES = list(dict.fromkeys(s.with_batch(1) for s in conv_shapes("resnet50") if not _is_gemm(s)))
BATCHES = [1, 7, 64]


def test_the_shape_list_covers_every_1x1_stride1_conv_of_the_models():
    import torchvision

    for arch in ("resnet50", "resnet101"):
        with torch.device("meta"):
            model = getattr(torchvision.models, arch)()
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        gemms = [m for m in convs if m.kernel_size == (1, 1) and m.stride == (1, 1)]
        assert {(m.in_channels, m.out_channels) for m in gemms} == {(s.C, s.K) for s in GEMM_SHAPES}
    assert all(s.C % 8 == 0 and s.K % 8 == 0 for s in GEMM_SHAPES)


# ---- the header's host-side logic, without CUDA -------------------------------------------------------------------

DRIVER = r"""
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include "experimental/gemm_sm90.h"
using namespace resnet_ext::gemm_sm90;
int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "configs") == 0) {
    for (int i = 0; i < kNumConfigs; ++i) {
      const Config& c = *config(i);
      std::printf("%s %d %d %d %d %d %d %d %d %d %d\n", c.name, int(c.dtype), c.tile_m, c.tile_n, c.tile_k,
                  c.cluster_m, c.cluster_n, int(c.schedule), c.stages, c.alignment, find_config(c.name));
    }
    std::printf("end %d %d %d\n", config(-1) == nullptr, config(kNumConfigs) == nullptr, find_config("nope"));
    for (int s = 0; s <= int(Status::kInternalError); ++s) std::printf("status %d %s\n", s, status_string(Status(s)));
    return 0;
  }
  // One problem per line: dtype m n k lda ldb ldr ldd a b bias r d relu sm_count scale shift (addresses as
  // integers, 0: null).
  int dtype, relu, sms;
  long long m, n, k, lda, ldb, ldr, ldd;
  unsigned long long a, b, bias, r, d, scale, shift;
  while (std::cin >> dtype >> m >> n >> k >> lda >> ldb >> ldr >> ldd >> a >> b >> bias >> r >> d >> relu >> sms >>
         scale >> shift) {
    Problem p;
    p.dtype = DType(dtype);
    p.m = m; p.n = n; p.k = k; p.lda = lda; p.ldb = ldb; p.ldr = ldr; p.ldd = ldd;
    p.a = reinterpret_cast<const void*>(uintptr_t(a));
    p.b = reinterpret_cast<const void*>(uintptr_t(b));
    p.bias = reinterpret_cast<const void*>(uintptr_t(bias));
    p.residual = reinterpret_cast<const void*>(uintptr_t(r));
    p.d = reinterpret_cast<void*>(uintptr_t(d));
    p.scale = reinterpret_cast<const float*>(uintptr_t(scale));
    p.shift = reinterpret_cast<const float*>(uintptr_t(shift));
    p.relu = relu != 0;
    p.sm_count = sms;
    for (int i = 0; i < kNumConfigs; ++i) {
      const char* why = nullptr;
      const Status s = check_problem(kConfigs[i], p, &why);
      std::printf("%d\t%lld\t%s\n", int(s), (long long)heuristic_score(kConfigs[i], m, n, k, sms), why ? why : "(null)");
    }
  }
  return 0;
}
"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("gemm_sm90_host")
    (d / "driver.cpp").write_text(DRIVER)
    exe = d / "driver"
    subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'csrc'}",
                    str(d / "driver.cpp"), "-o", str(exe)], check=True, capture_output=True, text=True)
    return exe


def configs(driver):
    out = subprocess.run([str(driver), "configs"], check=True, capture_output=True, text=True).stdout.splitlines()
    rows = [line.split() for line in out if not line.startswith(("end", "status"))]
    end = [line for line in out if line.startswith("end")][0]
    statuses = [line.split(" ", 2)[2] for line in out if line.startswith("status")]
    return rows, end, statuses


DTYPE = {"bf16": 1, "f16": 0}
ALIGNED = 1 << 32  # a 16-byte aligned stand-in address; operands are placed 2^40 bytes apart


def run_problems(driver, problems):
    """problems: dicts with m n k and optional overrides; returns per problem a list of (status, score, reason)
    for every configuration, in table order."""
    lines = []
    for p in problems:
        q = dict(dtype=1, lda=p["k"], ldb=p["k"], ldr=0, ldd=p["n"], a=1 << 40, b=2 << 40, bias=3 << 40, r=0,
                 d=5 << 40, relu=1, sms=132, scale=6 << 40, shift=7 << 40)
        q.update(p)
        if q["r"] and not q["ldr"]:
            q["ldr"] = q["n"]
        lines.append(" ".join(str(int(q[f])) for f in ("dtype", "m", "n", "k", "lda", "ldb", "ldr", "ldd", "a", "b",
                                                        "bias", "r", "d", "relu", "sms", "scale", "shift")))
    out = subprocess.run([str(driver)], input="\n".join(lines) + "\n", check=True, capture_output=True,
                         text=True).stdout.splitlines()
    rows, _, _ = configs(driver)
    per = len(rows)
    assert len(out) == per * len(problems)
    res = []
    for i in range(len(problems)):
        chunk = [line.split("\t") for line in out[i * per:(i + 1) * per]]
        res.append([(int(s), int(score), why) for s, score, why in chunk])
    return res


def test_config_table_names_say_what_is_compiled(driver):
    rows, end, statuses = configs(driver)
    names = [r[0] for r in rows]
    assert len(names) == len(set(names)) >= 4
    for i, (name, dtype, tm, tn, tk, cm, cn, sched, stages, align, found) in enumerate(rows):
        m = re.fullmatch(NAME_RE, name)
        assert m, name
        assert m.group(1) == ("bf16" if dtype == "1" else "f16")
        assert m.groups()[1:6] == (tm, tn, tk, cm, cn)
        assert m.group(7) == ("coop" if sched == "0" else "pingpong")
        assert (m.group(8), m.group(9)) == (stages, align) and align == "8"
        assert int(found) == i
        if m.group(7) == "coop":
            assert int(tm) >= 128  # two consumer warp groups split the tile's rows
    # every configuration exists for both dtypes
    assert sorted(n.replace("_bf16_", "_") for n in names if "_bf16_" in n) == \
        sorted(n.replace("_f16_", "_") for n in names if "_f16_" in n)
    assert end == "end 1 1 -1"
    assert statuses[0] == "success" and len(set(statuses)) == len(statuses)


@pytest.mark.parametrize("batch", BATCHES)
def test_host_check_accepts_every_resnet_1x1_layer(driver, batch):
    rows, _, _ = configs(driver)
    problems = []
    for s in GEMM_SHAPES:
        for dt in ("bf16", "f16"):
            for residual in (False, True):
                problems.append(dict(dtype=DTYPE[dt], m=batch * s.H * s.W, n=s.K, k=s.C, r=(4 << 40) if residual else 0,
                                     relu=1 if residual else int(s.relu)))
    for p, res in zip(problems, run_problems(driver, problems)):
        for row, (status, score, why) in zip(rows, res):
            if int(row[1]) == p["dtype"]:
                assert status == 0 and why == "", (p, row[0], why)
            else:
                assert status != 0 and "dtype" in why


def test_host_check_rejections(driver):
    base = dict(m=64 * 56 * 56, n=256, k=64)
    cases = [
        (dict(m=0), "positive"),
        (dict(k=60, lda=60, ldb=60), "multiples of 8"),
        (dict(n=250, ldd=250), "multiples of 8"),
        (dict(m=1 << 31), "32 bits"),
        (dict(lda=32), "leading dimension is smaller"),
        (dict(ldd=128), "leading dimension is smaller"),
        (dict(r=4 << 40, ldr=100), "leading dimension is smaller"),
        (dict(lda=68), "multiples of 8 elements"),
        (dict(a=(1 << 40) + 8), "16-byte aligned"),
        (dict(d=(5 << 40) + 2), "16-byte aligned"),
        (dict(r=(4 << 40) + 4), "16-byte aligned"),
        (dict(bias=(3 << 40) + 1), "bias must be aligned"),
        (dict(scale=(6 << 40) + 2), "scale and shift must be aligned"),
        (dict(shift=(7 << 40) + 1), "scale and shift must be aligned"),
        (dict(d=6 << 40), "overlaps"),                       # d is the scale vector
        (dict(a=0), "must be given"),
        (dict(d=1 << 40), "overlaps"),                       # d is a
        (dict(d=(1 << 40) + 64 * 56 * 56 * 64 * 2 - 16), "overlaps"),  # d starts in a's last row
        (dict(r=4 << 40, d=4 << 40), "overlaps"),            # in place on the residual
        (dict(lda=1 << 38), "stride limit"),
    ]
    results = run_problems(driver, [dict(base, **c) for c, _ in cases])
    rows, _, _ = configs(driver)
    for (case, needle), res in zip(cases, results):
        for row, (status, _, why) in zip(rows, res):
            if row[1] == "1":  # bf16 configurations (the problem's dtype)
                assert status != 0 and needle in why, (case, row[0], why)
    # Fine: residual absent with ldr 0, null bias, d right after a, padded leading dimensions.
    ok = [dict(base), dict(base, bias=0), dict(base, scale=0, shift=0), dict(base, scale=(6 << 40) + 4),
          dict(base, d=(1 << 40) + 64 * 56 * 56 * 64 * 2),
          dict(base, lda=72, ldb=128, ldd=264, r=4 << 40, ldr=512)]
    for res in run_problems(driver, ok):
        assert all(status == 0 for (status, _, _), row in zip(res, configs(driver)[0]) if row[1] == "1")


def test_heuristic_prefers_small_tiles_for_small_problems_and_big_ones_for_big(driver):
    rows, _, _ = configs(driver)
    names = [r[0] for r in rows]

    def best(m, n, k, sms=132):
        res = run_problems(driver, [dict(m=m, n=n, k=k, sms=sms)])[0]
        scores = [(score, name) for (status, score, _), name in zip(res, names) if "_bf16_" in name]
        return max(scores)[1]

    assert "_64x128x64_" in best(49, 2048, 512)             # batch 1, layer4: a handful of tiles
    assert "_128x256x64_" in best(64 * 14 * 14, 1024, 256)  # batch 64, layer3 conv3: many waves of big tiles
    # and the SM count matters: the same problem on a GPU with 8 SMs runs many waves of any tile
    assert "_64x128x64_" not in best(7 * 28 * 28, 512, 128, sms=8)


# ---- the kernels in this build, as the dispatcher sees them (no GPU needed) ---------------------------------------

def _gemm_kernels(tag=None):
    names = [k for k in resnet_ext.build_info()["fused_kernels"] if k.startswith(PREFIX)]
    return [k for k in names if tag is None or f"_{tag}_" in k]


# Registered with the dispatcher (kernels/registry.cpp) in every CUDA build, opt-in (no verified arch): these run
# host-side wherever _C has CUDA kernels compiled in (no GPU needed), and skip only in a CPU-only build.
# The registered kernels (and the select_kernel hook): a CUDA build made with RESNET_EXT_EXPERIMENTAL=1.
cuda_build = pytest.mark.skipif(not (resnet_ext.build_info()["cuda"] and resnet_ext.ops.EXPERIMENTAL),
                                reason="needs a CUDA build made with RESNET_EXT_EXPERIMENTAL=1")


def problem(s, dtype, sm=90, **over):
    d = dict(N=s.N, C=s.C, H=s.H, W=s.W, K=s.K, R=s.R, S=s.S, stride=s.stride, padding=s.padding,
             dilation=s.dilation, groups=s.groups, residual=s.residual, relu=s.relu, dtype=dtype, sm=sm, cudnn=False)
    d.update(over)
    return d


@cuda_build
def test_registered_kernels_are_the_header_table(driver):
    rows, _, _ = configs(driver)
    assert sorted(_gemm_kernels()) == sorted(r[0] for r in rows)
    assert "sm_90a" in resnet_ext.build_info()["cuda_images"]


@cuda_build
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_every_1x1_layer_is_implementable_but_opt_in(batch, dtype):
    mine, other = _gemm_kernels(TAG[dtype]), _gemm_kernels("f16" if dtype == "bfloat16" else "bf16")
    assert mine and other
    for s in GEMM_SHAPES:
        for residual in (False, True):
            d = problem(s.with_batch(batch), dtype, residual=residual, relu=residual or s.relu)
            for name in mine:
                assert _C.kernel_can_implement(name, d) == "", (s.name, name)
                kernel, reason, path, source, workspace = _C.select_kernel(d, forced=name)
                assert (kernel, path, source) == (name, f"fused:{name}", "forced"), (s.name, reason)
                assert workspace == 0
            for name in other:
                assert _C.kernel_can_implement(name, d) != ""
            # Unverified: the dispatcher's own choice is never one of them.
            assert not _C.select_kernel(d)[0].startswith(PREFIX), s.name
            # Not on other archs, even forced.
            for sm in (80, 100):
                kernel, reason, *_ = _C.select_kernel(dict(d, sm=sm), forced=mine[0])
                assert kernel != mine[0], (sm, reason)


@cuda_build
def test_other_convs_are_rejected_with_a_reason():
    for s in OTHER_SHAPES:
        if s.C % 8:
            continue  # the stem: rejected before any kernel is asked
        d = problem(s.with_batch(8), "bfloat16")
        for name in _gemm_kernels("bf16"):
            why = _C.kernel_can_implement(name, d)
            assert "1x1" in why, (s.name, why)
            assert _C.select_kernel(d, forced=name)[0] != name
    # A 1x1 stride-1 conv with padding is not a GEMM either.
    s = GEMM_SHAPES[0]
    assert "1x1" in _C.kernel_can_implement(_gemm_kernels("bf16")[0], problem(s, "bfloat16", padding=1))
    # Nor is a dilated one (the adapter asks for dilation 1), and the GEMM view needs NHWC (channels_last) operands
    # even when the kernel is asked directly, not through the dispatcher.
    assert "dilation" in _C.kernel_can_implement(_gemm_kernels("bf16")[0], problem(s, "bfloat16", dilation=2))
    assert "channels_last" in _C.kernel_can_implement(_gemm_kernels("bf16")[0],
                                                      problem(s, "bfloat16", channels_last=False))


@cuda_build
def test_host_side_rejections_through_the_dispatcher():
    s = [x for x in GEMM_SHAPES if x.C == 256 and x.K == 64][0].with_batch(8)
    name = _gemm_kernels("bf16")[0]
    kernel, reason, *_ = _C.select_kernel(problem(s, "bfloat16", misaligned="x"), forced=name)
    assert kernel != name and "16-byte" in reason
    kernel, reason, *_ = _C.select_kernel(problem(s, "bfloat16", C=60), forced=name)
    assert kernel != name


# ---- on a Hopper GPU ---------------------------------------------------------------------------------------------

def _hopper_reason():
    if not torch.cuda.is_available():
        return "needs a CUDA device"
    if torch.cuda.get_device_capability() != (9, 0):
        return "needs an sm_90 (Hopper) GPU"
    if not _gemm_kernels():
        return "this build has no sm90 GEMM kernels"
    return ""


requires_hopper = pytest.mark.skipif(bool(_hopper_reason()), reason=_hopper_reason() or "-")


@pytest.fixture
def gpu_env():
    _C.set_poison_outputs(True)
    resnet_ext.prefer_cudnn(False)
    yield
    _C.force_kernel("")
    _C.set_poison_outputs(False)
    resnet_ext.prefer_cudnn(True)


def make_inputs(s, dtype, residual, seed):
    return s.inputs(dtype, residual, seed=seed)


def run_forced(name, s, dtype, residual, relu, seed):
    x, w, b, r = make_inputs(s, dtype, residual, seed)
    _C.force_kernel(name)
    path, reason = resnet_ext.explain(x, w, b, r, 1, 0, 1, relu)
    assert path == f"fused:{name}", (s.name, path, reason)
    resnet_ext.reset_path_counts()
    y = resnet_ext.conv_bn_act(x, w, b, r, 1, 0, 1, relu)
    torch.cuda.synchronize()
    assert resnet_ext.path_counts().get(f"fused:{name}") == 1, resnet_ext.path_counts()
    err = rel_err(y, s.reference_fp32(x, w, b, r, relu))
    assert err <= TOL[dtype], f"{name} {s.name} {dtype} residual={residual} relu={relu}: rel err {err:.2e}"
    assert y.is_contiguous(memory_format=CL) or s.N * s.H * s.W == 1


@pytest.mark.cuda
@requires_hopper
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("s", GEMM_SHAPES, ids=lambda s: s.name)
def test_forced_gemm_kernels_match_fp32_reference(s, dtype, residual, batch, gpu_env):
    tag = "bf16" if dtype == torch.bfloat16 else "f16"
    for name in _gemm_kernels(tag):
        run_forced(name, s.with_batch(batch), dtype, residual, residual or s.relu, seed=batch)


@pytest.mark.cuda
@requires_hopper
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_epilogue_variants(dtype, residual, relu, gpu_env):
    # ReLU and the residual are runtime switches of one kernel: all four combinations, on a shape with a partial
    # M tile (7*28*28 = 5488 rows) and on one with a single partial tile (49 rows).
    shapes = [s for s in GEMM_SHAPES if (s.H, s.C, s.K) in ((28, 128, 512), (7, 512, 2048))]
    assert len(shapes) == 2
    tag = "bf16" if dtype == torch.bfloat16 else "f16"
    for s in shapes:
        for name in _gemm_kernels(tag):
            run_forced(name, s.with_batch(7 if s.H == 28 else 1), dtype, residual, relu, seed=3)


@pytest.mark.cuda
@requires_hopper
def test_relu_keeps_nan_like_torch(gpu_env):
    s = GEMM_SHAPES[0].with_batch(1)
    x, w, b, _ = make_inputs(s, torch.bfloat16, False, seed=0)
    x[0, :, 0, 0] = float("nan")  # one output pixel's dot products are NaN
    for name in _gemm_kernels("bf16"):
        _C.force_kernel(name)
        y = resnet_ext.conv_bn_act(x, w, b, None, 1, 0, 1, True)
        torch.cuda.synchronize()
        assert torch.isnan(y[0, :, 0, 0]).all() and not torch.isnan(y[0, :, 1:, :]).any(), name


# ---- the fp32 scale/shift epilogue (#24): conv_bn_act's scale and shift, each GEMM kernel forced ------------------

def _scale_shift_case(s, dtype, residual, with_bias, seed):
    """x (NHWC), the unfolded 1x1 weight, bias, fp32 scale and shift, residual of the layer `s`, and the fp32
    reference relu-less: conv(x, w) * scale + shift (+ bias) (+ residual)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(s.N, s.C, s.H, s.W, device="cuda", generator=g).to(dtype).contiguous(memory_format=CL)
    w = (torch.randn(s.K, s.C, 1, 1, device="cuda", generator=g) * s.C ** -0.5).to(dtype)
    scale = torch.rand(s.K, device="cuda", generator=g) * 1.5 + 0.25
    shift = torch.randn(s.K, device="cuda", generator=g) * 0.2
    bias = (torch.randn(s.K, device="cuda", generator=g) * 0.1).to(dtype) if with_bias else None
    r = torch.randn(s.N, s.K, s.H, s.W, device="cuda", generator=g).to(dtype).contiguous(memory_format=CL) \
        if residual else None
    ref = torch.nn.functional.conv2d(x.float(), w.float()) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    if bias is not None:
        ref = ref + bias.float().view(1, -1, 1, 1)
    if r is not None:
        ref = ref + r.float()
    return x, w, bias, scale, shift, r, ref


def _forced_scale_shift(name, x, w, bias, scale, shift, r, relu):
    _C.force_kernel(name)
    path, reason = resnet_ext.explain(x, w, bias, r, 1, 0, 1, relu, 1, scale, shift)
    assert path == f"fused:{name}", (path, reason)
    resnet_ext.reset_path_counts()
    y = resnet_ext.conv_bn_act(x, w, bias, r, 1, 0, 1, relu, scale=scale, shift=shift)
    torch.cuda.synchronize()
    assert resnet_ext.path_counts().get(f"fused:{name}") == 1, resnet_ext.path_counts()
    return y


@pytest.mark.cuda
@requires_hopper
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fp32_scale_shift_epilogue_matches_fp32_reference(dtype, residual, gpu_env):
    """act(conv(x, w) * scale + shift (+ R)) with fp32 scale and shift, every configuration, every 1x1 layer shape
    at batch 1 and 7 (partial tiles), the output NaN-filled before the launch (gpu_env)."""
    tag = "bf16" if dtype == torch.bfloat16 else "f16"
    for s in GEMM_SHAPES:
        for batch in (1, 7):
            x, w, bias, scale, shift, r, ref = _scale_shift_case(s.with_batch(batch), dtype, residual, False, batch)
            for name in _gemm_kernels(tag):
                for relu in (False, True):
                    y = _forced_scale_shift(name, x, w, None, scale, shift, r, relu)
                    want = torch.relu(ref) if relu else ref
                    assert not torch.isnan(y).any(), (name, s.name)
                    err = rel_err(y, want)
                    assert err <= TOL[dtype], f"{name} {s.name} b{batch} relu={relu}: rel err {err:.2e}"


@pytest.mark.cuda
@requires_hopper
def test_scale_shift_and_bias_compose_and_default_to_the_folded_epilogue(gpu_env):
    s = [t for t in GEMM_SHAPES if (t.H, t.C, t.K) == (28, 128, 512)][0].with_batch(7)
    x, w, bias, scale, shift, r, ref = _scale_shift_case(s, torch.bfloat16, True, True, 5)
    for name in _gemm_kernels("bf16"):
        y = _forced_scale_shift(name, x, w, bias, scale, shift, r, True)
        assert rel_err(y, torch.relu(ref)) <= TOL[torch.bfloat16], name
        # no scale and no shift: the folded epilogue, acc + bias (+ R)
        _C.force_kernel(name)
        y0 = resnet_ext.conv_bn_act(x, w, bias, r, 1, 0, 1, True)
        want0 = torch.relu(torch.nn.functional.conv2d(x.float(), w.float(), bias.float()) + r.float())
        assert rel_err(y0, want0) <= TOL[torch.bfloat16], name


@pytest.mark.cuda
@requires_hopper
def test_scale_shift_is_never_the_dispatchers_own_choice_nor_cudnns():
    """Unforced, a scale/shift call runs no unverified kernel and not cuDNN's fused op (it has no per-channel
    scale): cuDNN's graph with the fp32 epilogue (experimental/cudnn_graphs.cpp; the stock composition where cuDNN
    has no engine for it)."""
    s = [t for t in GEMM_SHAPES if (t.H, t.C, t.K) == (28, 128, 512)][0].with_batch(2)
    x, w, bias, scale, shift, r, ref = _scale_shift_case(s, torch.bfloat16, True, False, 1)
    path, reason = resnet_ext.explain(x, w, None, r, 1, 0, 1, True, 1, scale, shift)
    assert path == "cudnn_graph", (path, reason)
    resnet_ext.reset_path_counts()
    y = resnet_ext.conv_bn_act(x, w, None, r, 1, 0, 1, True, scale=scale, shift=shift)
    assert set(resnet_ext.path_counts()) <= {"cudnn_graph:cuda", "stock:cuda"}, resnet_ext.path_counts()
    assert rel_err(y, torch.relu(ref)) <= TOL[torch.bfloat16]
