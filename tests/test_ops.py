"""resnet_ext::conv_bn_act on the CPU: numbers, opcheck, autograd, errors; fold_bn; build_info; explain."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import resnet_ext
from resnet_ext import conv_bn_act, fold_bn
from conftest import rel_err

# (N, C, H, W, K, R, stride, padding, dilation, groups): odd sizes, batch 1, every ResNet conv kind.
CASES = [
    (1, 3, 17, 19, 8, 7, 2, 3, 1, 1),    # stem-like, odd spatial size, batch 1
    (2, 16, 9, 9, 32, 1, 1, 0, 1, 1),    # 1x1
    (3, 8, 11, 10, 16, 1, 2, 0, 1, 1),   # 1x1 stride 2 (downsample)
    (2, 8, 7, 7, 8, 3, 1, 1, 1, 1),      # 3x3
    (1, 8, 13, 12, 12, 3, 2, 1, 1, 1),   # 3x3 stride 2
    (2, 8, 9, 9, 8, 3, 1, 2, 2, 1),      # dilation 2
    (1, 8, 9, 11, 8, 3, 1, 4, 4, 1),     # dilation 4
    (2, 8, 7, 7, 16, 3, 1, 1, 1, 4),     # grouped (ResNeXt)
]


def reference(x, w, b, r, stride, padding, dilation, relu, groups):
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding, dilation, groups)
    if r is not None:
        y = y + r.double()
    return F.relu(y) if relu else y


def make_case(case, dtype=torch.float32, channels_last=False, bias=True, residual=False, requires_grad=False):
    n, c, h, w, k, r, s, p, d, g = case
    x = torch.randn(n, c, h, w, dtype=dtype)
    wt = torch.randn(k, c // g, r, r, dtype=dtype) / (c // g * r * r) ** 0.5
    b = torch.randn(k, dtype=dtype) if bias else None
    out_h = (h + 2 * p - d * (r - 1) - 1) // s + 1
    out_w = (w + 2 * p - d * (r - 1) - 1) // s + 1
    res = torch.randn(n, k, out_h, out_w, dtype=dtype) if residual else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        res = None if res is None else res.contiguous(memory_format=torch.channels_last)
    tensors = [x, wt, b, res]
    if requires_grad:
        for t in tensors:
            if t is not None:
                t.requires_grad_(True)
    return tensors, ([s, s], [p, p], [d, d], g)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("residual,relu,bias", [(False, True, True), (True, True, True), (False, False, True),
                                                (True, False, False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_float64_reference(case, residual, relu, bias, channels_last):
    (x, w, b, r), (s, p, d, g) = make_case(case, channels_last=channels_last, bias=bias, residual=residual)
    y = conv_bn_act(x, w, b, r, s, p, d, relu, g)
    assert y.shape == reference(x, w, b, r, s, p, d, relu, g).shape
    assert rel_err(y, reference(x, w, b, r, s, p, d, relu, g)) < 1e-5
    # The output keeps x's memory format (the fake kernel promises the same).
    fmt = torch.channels_last if channels_last and case[0] * case[2] * case[3] > 1 else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_floating_dtypes(dtype):
    (x, w, b, r), (s, p, d, g) = make_case(CASES[3], dtype=dtype, residual=True)
    y = conv_bn_act(x, w, b, r, s, p, d, True, g)
    assert y.dtype == dtype
    assert rel_err(y, reference(x, w, b, r, s, p, d, True, g)) < (1e-12 if dtype == torch.float64 else 2e-2)


@pytest.mark.parametrize("case", CASES[:6], ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(case, channels_last):
    for residual, relu in [(False, True), (True, True), (True, False)]:
        (x, w, b, r), (s, p, d, g) = make_case(case, channels_last=channels_last, residual=residual,
                                               requires_grad=True)
        torch.library.opcheck(torch.ops.resnet_ext.conv_bn_act.default, (x, w, b, r, s, p, d, relu, g))


def test_opcheck_no_bias_grouped_no_grad():
    (x, w, b, r), (s, p, d, g) = make_case(CASES[7], bias=False)
    torch.library.opcheck(torch.ops.resnet_ext.conv_bn_act.default, (x, w, None, None, s, p, d, True, g))


@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[5], CASES[7]], ids=lambda c: "x".join(map(str, c)))
def test_gradcheck_float64(case):
    (x, w, b, r), (s, p, d, g) = make_case(case, dtype=torch.float64, residual=True, requires_grad=True)
    # Keep pre-activations away from the ReLU kink, where finite differences are meaningless.
    with torch.no_grad():
        pre = F.conv2d(x, w, b, s, p, d, g) + r
        r.add_(torch.where(pre.abs() < 1e-3, 0.1, 0.0))
    assert torch.autograd.gradcheck(lambda *a: conv_bn_act(*a, s, p, d, True, g), (x, w, b, r))


def test_fold_bn_matches_stock_and_torch_helper():
    conv = torch.nn.Conv2d(8, 16, 3, padding=1, bias=True)
    bn = torch.nn.BatchNorm2d(16).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    w, b = fold_bn(conv, bn)
    ref_w, ref_b = torch.nn.utils.fusion.fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean,
                                                              bn.running_var, bn.eps, bn.weight, bn.bias)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(b, ref_b)
    x = torch.randn(2, 8, 10, 10)
    torch.testing.assert_close(conv_bn_act(x, w, b, None, 1, 1, 1, False), bn(conv(x)), rtol=1e-5, atol=1e-5)
    # Half weights are folded in fp32 and cast back.
    hw, hb = fold_bn(conv.half(), bn)
    assert hw.dtype == torch.float16 and hb.dtype == torch.float16
    torch.testing.assert_close(hw.float(), ref_w, rtol=1e-3, atol=1e-3)


def test_fold_bn_without_running_stats_is_an_error():
    with pytest.raises(ValueError, match="running statistics"):
        fold_bn(torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4, track_running_stats=False))


def _args(**over):
    a = dict(x=torch.randn(2, 8, 9, 9), weight=torch.randn(16, 8, 3, 3), bias=torch.randn(16),
             residual=None, stride=[1, 1], padding=[1, 1], dilation=[1, 1], relu=True, groups=1)
    a.update(over)
    return a


@pytest.mark.parametrize("over,match", [
    (dict(x=torch.randn(8, 9, 9)), r"x must be a 4-D tensor"),
    (dict(weight=torch.randn(16, 8, 3)), r"weight must be a 4-D tensor"),
    (dict(weight=torch.randn(16, 4, 3, 3)), r"channel mismatch: x has 8 channels"),
    (dict(bias=torch.randn(15)), r"bias must have shape \[16\]"),
    (dict(residual=torch.randn(2, 16, 8, 9)), r"residual must have the output's shape"),
    (dict(weight=torch.randn(16, 8, 3, 3, dtype=torch.float64)), r"weight must have x's dtype"),
    (dict(residual=torch.randn(2, 16, 9, 9, dtype=torch.float16)), r"residual must have x's dtype"),
    (dict(x=torch.randint(0, 5, (2, 8, 9, 9)), weight=torch.randint(0, 5, (16, 8, 3, 3)), bias=None),
     r"x must be a floating-point tensor"),
    (dict(stride=[0, 1]), r"stride entries must be >= 1"),
    (dict(padding=[-1, 0]), r"padding entries must be >= 0"),
    (dict(groups=3), r"groups=3 must divide"),
    (dict(x=torch.randn(2, 8, 1, 1), padding=[0, 0]), r"too small for a 3x3 kernel"),
    (dict(bias=torch.randn(16, device="meta")), r"bias must be on x's device"),
])
def test_bad_input_names_the_argument(over, match):
    a = _args(**over)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.resnet_ext.conv_bn_act(*a.values())
    # explain() runs the same checks.
    with pytest.raises(RuntimeError, match=match):
        resnet_ext.explain(*a.values())


def test_build_info_and_explain():
    info = resnet_ext.build_info()
    assert set(info) >= {"cuda", "cuda_archs", "torch_version", "fused_kernels"}
    assert info["torch_version"] == torch.__version__
    if info["cuda"]:
        assert info["cuda_archs"] and info["fused_kernels"]
    else:
        assert info["fused_kernels"] == []
    path, reason = resnet_ext.explain(*_args().values())
    assert path == "stock" and "cpu" in reason


def test_path_counts():
    resnet_ext.reset_path_counts()
    conv_bn_act(*_args().values())
    assert resnet_ext.path_counts() == {"stock:cpu": 1}


def test_compile_and_export_op():
    a = _args(residual=torch.randn(2, 16, 9, 9))

    def f(x, w, b, r):
        return conv_bn_act(x, w, b, r, 1, 1, 1, True)

    args = (a["x"], a["weight"], a["bias"], a["residual"])
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(*args), f(*args))

    class M(torch.nn.Module):
        def forward(self, x, w, b, r):
            return f(x, w, b, r)

    ep = torch.export.export(M(), args)
    torch.testing.assert_close(ep.module()(*args), f(*args))
