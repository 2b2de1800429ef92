"""resnet_ext::conv_bn_act on the CPU: numbers, opcheck, autograd, errors; fold_bn; build_info; explain."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import resnet_ext
from resnet_ext import conv_bn_act, fold_bn
from resnet_ext.ops import conv_output_size
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
    out_h = conv_output_size(h, r, s, p, d)
    out_w = conv_output_size(w, r, s, p, d)
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
        fold_bn(torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4, track_running_stats=False).eval())


def _args(**over):
    a = dict(x=torch.randn(2, 8, 9, 9), weight=torch.randn(16, 8, 3, 3), bias=torch.randn(16),
             residual=None, stride=[1, 1], padding=[1, 1], dilation=[1, 1], relu=True, groups=1)
    a.update(over)
    return a


BAD_INPUTS = [
    (dict(x=torch.randn(8, 9)), r"x must be a 4-D tensor"),
    (dict(weight=torch.randn(16, 8, 3)), r"weight must be a 4-D tensor"),
    (dict(weight=torch.randn(16, 4, 3, 3)), r"channel mismatch: x has 8 channels"),
    (dict(bias=torch.randn(15)), r"bias must have shape \[16\]"),
    (dict(residual=torch.randn(2, 16, 8, 9)), r"residual must have the output's shape"),
    (dict(weight=torch.randn(16, 8, 3, 3, dtype=torch.float64)), r"weight must have x's dtype"),
    (dict(residual=torch.randn(2, 16, 9, 9, dtype=torch.float16)), r"residual must have x's dtype"),
    (dict(x=torch.randint(0, 5, (2, 8, 9, 9)), weight=torch.randint(0, 5, (16, 8, 3, 3)), bias=None),
     r"x must be a floating-point tensor"),
    (dict(stride=[0, 1]), r"non-positive stride is not supported"),
    (dict(padding=[-1, 0]), r"negative padding is not supported"),
    (dict(dilation=[1, 0]), r"non-positive dilation is not supported"),
    (dict(stride=[1, 1, 1]), r"expected stride to be a single integer value or a list of 2 values"),
    (dict(groups=0), r"non-positive groups is not supported"),
    (dict(x=torch.randn(1, 8, 1, 1), weight=torch.randn(4, 8, 2, 2), bias=None, stride=[2, 2], padding=[0, 0]),
     r"too small for a 2x2 kernel"),
    (dict(groups=3), r"groups=3 must divide"),
    (dict(x=torch.randn(2, 8, 1, 1), padding=[0, 0]), r"too small for a 3x3 kernel"),
    (dict(bias=torch.randn(16, device="meta")), r"bias must be on x's device"),
]


@pytest.mark.parametrize("over,match", BAD_INPUTS)
def test_bad_input_names_the_argument(over, match):
    a = _args(**over)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.resnet_ext.conv_bn_act(*a.values())
    # explain() runs the same checks.
    with pytest.raises(RuntimeError, match=match):
        resnet_ext.explain(*a.values())


@pytest.mark.parametrize("name", ["x", "weight", "bias", "residual", "scale", "shift"])
@pytest.mark.parametrize("padding", [[1, 1], "same"])
def test_non_tensor_argument_is_named(name, padding):
    a = _args(padding=padding, **{name: "not a tensor"})
    kind = "Tensor" if name in ("x", "weight") else r"Optional\[Tensor\]"
    match = rf"Expected a value of type '{kind}' for argument '{name}' but instead found type 'str'"
    with pytest.raises(RuntimeError, match=match):
        resnet_ext.conv_bn_act(**a)
    with pytest.raises(RuntimeError, match=match):
        resnet_ext.explain(**a)


@pytest.mark.parametrize("relu", [None, 0, 1.0, "no"], ids=repr)
def test_a_relu_that_is_not_a_bool_is_named(relu):
    """conv_bn_act read relu=None/0/1.0/"no" as their truth value ("no": a ReLU); explain gave pybind11's dump."""
    a = _args(relu=relu)
    for fn in (resnet_ext.conv_bn_act, resnet_ext.explain):
        with pytest.raises(TypeError, match=rf"{fn.__name__}: relu must be True or False, got {relu!r}"):
            fn(**a)


def test_fold_bn_names_what_it_cannot_fold():
    conv = torch.nn.Conv2d(4, 8, 3)
    with pytest.raises(ValueError, match="fold_bn: bn is in training mode"):
        fold_bn(conv, torch.nn.BatchNorm2d(8).train())
    with pytest.raises(ValueError, match="fold_bn: bn has 16 features, conv 8 output channels"):
        fold_bn(conv, torch.nn.BatchNorm2d(16).eval())
    with pytest.raises(TypeError, match="fold_bn: conv must be an nn.Conv1d/2d/3d, got BatchNorm2d"):
        fold_bn(torch.nn.BatchNorm2d(8).eval(), conv)
    with pytest.raises(TypeError, match="fold_bn: conv must be an nn.Conv1d/2d/3d, got ConvTranspose2d"):
        fold_bn(torch.nn.ConvTranspose2d(8, 8, 3), torch.nn.BatchNorm2d(8).eval())
    nn = torch.nn
    for c, bn in ((nn.Conv1d(4, 8, 3), nn.BatchNorm1d(8)), (nn.Conv3d(4, 8, 3), nn.BatchNorm3d(8))):
        with torch.no_grad():
            bn.eval().running_var.uniform_(0.5, 2)
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(c.eval(), bn)
        w, b = fold_bn(c, bn)
        torch.testing.assert_close(w, fused.weight)
        torch.testing.assert_close(b, fused.bias)
    with pytest.raises(TypeError, match="fold_bn: bn must be a BatchNorm module, got Conv2d"):
        fold_bn(conv, conv)


def test_build_info_and_explain():
    info = resnet_ext.build_info()
    assert set(info) >= {"cuda", "cuda_archs", "torch_version", "fused_kernels"}
    assert info["torch_version"] == torch.__version__
    if info["cuda"]:
        assert info["cuda_archs"] and info["fused_kernels"]
    else:
        assert info["fused_kernels"] == []
    path, reason = resnet_ext.explain(*_args().values())
    assert path == "stock" and reason == "device cpu: stock ATen composition (conv2d, relu)"
    assert resnet_ext.explain(**_args(relu=False, residual=torch.randn(2, 16, 9, 9)))[1].endswith(
        "(conv2d, residual add)")


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


# ---- argument forms: accepted or rejected exactly as F.conv2d does ------------------------------------------------

_GOOD_INTS = [1, 2, (1,), (2,), [2], (1, 2), [2, 1], torch.Size([2, 1]), np.int64(2), torch.tensor(2),
              (np.int64(1), 2)]
_BAD = [1.0, (1.0, 1), True, None, "1", (1, 1, 1), (), (2, "a"), 0, -1, (0, 1), (1, -1), np.float32(2),
        torch.tensor(2.0), 1.5]
_FORMS = ([("stride", v) for v in _GOOD_INTS + _BAD] + [("dilation", v) for v in _GOOD_INTS + _BAD]
          + [("padding", v) for v in _GOOD_INTS + _BAD + ["same", "valid", "SAME", "foo", ""]]
          + [("groups", v) for v in [1, 2, np.int64(2), 2.0, True, 0, -2, 3, None, (2,)]])


def _outcome(fn):
    try:
        with torch.no_grad():
            return "ok", fn()
    except Exception as e:  # noqa: BLE001  (the type is what is compared)
        return "error", e


@pytest.mark.parametrize("name,value,extra", [(n, v, e) for n, v in _FORMS
                                              for e in ({}, {"dilation": 2}, {"stride": 2}) if n not in e],
                         ids=lambda v: repr(v)[:20])
def test_argument_forms_match_F_conv2d(name, value, extra):
    """Whatever F.conv2d accepts gives F.conv2d's result; whatever it rejects is rejected with the same exception
    type and a message naming the argument."""
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 4, 9, 8), torch.randn(6, 2, 3, 2), torch.randn(6)
    kw = {"stride": 1, "padding": 0, "dilation": 1, "groups": 2, **extra, name: value}
    if name == "groups":
        w = torch.randn(6, 4 // value if isinstance(value, int) and value in (1, 2) else 2, 3, 2)
    ref_kind, ref = _outcome(lambda: F.conv2d(x, w, b, **kw))
    kind, got = _outcome(lambda: conv_bn_act(x, w, b, None, relu=False, **kw))
    assert kind == ref_kind, (kw, ref, got)
    if kind == "ok":
        assert got.shape == ref.shape, kw
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    else:
        assert type(got) is type(ref), (kw, ref, got)
        assert name in str(got), (kw, str(got))
    # explain() reads the arguments the same way.
    assert _outcome(lambda: resnet_ext.explain(x, w, b, None, relu=False, **kw))[0] == ref_kind, kw


@pytest.mark.parametrize("k,dilation", [(3, 1), (2, 1), (4, 1), (2, 3), (3, 2), ((2, 3), (1, 2))])
def test_same_padding_matches_F_conv2d_with_gradients(k, dilation):
    torch.manual_seed(0)
    kh, kw_ = (k, k) if isinstance(k, int) else k
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, kh, kw_, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = conv_bn_act(x, w, b, None, 1, "same", dilation, relu=False)
    ref = F.conv2d(x, w, b, 1, "same", dilation)
    assert y.shape == ref.shape == (2, 5, 7, 6)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g))


def test_unbatched_input_like_F_conv2d():
    x, w, b, r = torch.randn(4, 9, 9), torch.randn(8, 4, 3, 3), torch.randn(8), torch.randn(8, 9, 9)
    y = conv_bn_act(x, w, b, r, 1, 1)
    assert y.shape == (8, 9, 9)
    torch.testing.assert_close(y, F.relu(F.conv2d(x, w, b, 1, 1) + r), rtol=1e-5, atol=1e-5)


def test_op_takes_one_entry_lists_like_aten():
    x, w = torch.randn(1, 4, 9, 9), torch.randn(8, 4, 3, 3)
    y = torch.ops.resnet_ext.conv_bn_act(x, w, None, None, [2], [1], [1], False)
    torch.testing.assert_close(y, F.conv2d(x, w, None, 2, 1), rtol=1e-5, atol=1e-5)


# ---- the fake kernel agrees with the real one --------------------------------------------------------------------

def _layouts(t, kind):
    if kind == "cl":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "view":  # a non-contiguous, offset view
        big = torch.randn(t.shape[0], t.shape[1], t.shape[2] + 1, t.shape[3] * 2 + 1, dtype=t.dtype)
        v = big[:, :, 1:, 1::2]
        return v.copy_(t)
    return t


def _fake_cases():
    rng = np.random.default_rng(0)
    cases = []
    for n, c, k, g in [(0, 4, 8, 1), (2, 0, 8, 1), (0, 0, 4, 1), (1, 4, 8, 1), (2, 6, 4, 2), (3, 1, 1, 1),
                       (2, 4, 8, 4), (1, 8, 16, 1), (2, 0, 4, 2)]:
        for layout in ("contiguous", "cl", "view"):
            for _ in range(14):
                h, w = rng.integers(1, 8, size=2)
                r, s = rng.integers(1, 4, size=2)
                cases.append(dict(n=n, c=c, k=k, g=g, h=int(h), w=int(w), r=int(r), s=int(s),
                                  stride=[int(v) for v in rng.integers(1, 4, size=2)],
                                  padding=[int(v) for v in rng.integers(0, 3, size=2)],
                                  dilation=[int(v) for v in rng.integers(1, 3, size=2)],
                                  layout=layout, bias=bool(rng.integers(2)), residual=bool(rng.integers(2)),
                                  relu=bool(rng.integers(2))))
    return cases


def _make_fake_case(case):
    x = _layouts(torch.randn(case["n"], case["c"], case["h"], case["w"]), case["layout"])
    wt = torch.randn(case["k"], case["c"] // case["g"], case["r"], case["s"])
    b = torch.randn(case["k"]) if case["bias"] else None
    p = conv_output_size(case["h"], case["r"], case["stride"][0], case["padding"][0], case["dilation"][0])
    q = conv_output_size(case["w"], case["s"], case["stride"][1], case["padding"][1], case["dilation"][1])
    r = None
    if case["residual"]:  # of the output's shape where there is one, else a wrong one (both must reject it)
        r = _layouts(torch.randn(case["n"], case["k"], max(p, 1), max(q, 1)), case["layout"])
    return (x, wt, b, r, case["stride"], case["padding"], case["dilation"], case["relu"], case["g"])


def test_fake_kernel_agrees_with_the_real_one_on_every_shape():
    """Output shape, strides and dtype -- or an error from both -- for zero-size batches, zero channels, groups,
    outputs too small to exist, contiguous/channels_last/strided-view inputs, with and without bias/residual."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = torch.ops.resnet_ext.conv_bn_act.default
    mode = FakeTensorMode()
    checked = errors = 0
    for case in _fake_cases():
        args = _make_fake_case(case)
        real_kind, real = _outcome(lambda: op(*args))
        fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        with mode:
            fake_kind, fake = _outcome(lambda: op(*fake_args))
        assert real_kind == fake_kind, (case, real, fake)
        if real_kind == "ok":
            assert (real.shape, real.stride(), real.dtype) == (fake.shape, fake.stride(), fake.dtype), case
        else:
            errors += 1
            assert type(real) is type(fake) and str(real).split(",")[0][:25] == str(fake).split(",")[0][:25], \
                (case, str(real), str(fake))
        checked += 1
    assert checked > 300 and 0 < errors < checked


def test_zero_channels_give_the_empty_sum_with_gradients():
    x = torch.randn(2, 0, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 0, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    y = conv_bn_act(x, w, b, r, 1, 0)
    torch.testing.assert_close(y, F.relu(b.view(1, -1, 1, 1) + r))
    g = torch.randn_like(y)
    gx, gw, gb, gr = torch.autograd.grad(y, (x, w, b, r), g)
    mask = g * (y > 0)
    assert gx.shape == x.shape and gw.shape == w.shape
    torch.testing.assert_close(gb, mask.sum((0, 2, 3)))
    torch.testing.assert_close(gr, mask)


@pytest.mark.parametrize("shape", [(0, 4, 6, 6), (2, 0, 6, 6)], ids=["empty-batch", "no-channels"])
def test_opcheck_empty_shapes(shape):
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, requires_grad=True)
    wt = torch.randn(8, c, 3, 3, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    r = torch.randn(n, 8, 6, 6, requires_grad=True)
    torch.library.opcheck(torch.ops.resnet_ext.conv_bn_act.default, (x, wt, b, r, [1, 1], [1, 1], [1, 1], True, 1))


# ---- a failed call changes no state --------------------------------------------------------------------------------

def _state(tensors):
    return (resnet_ext.path_counts(), [(t._version, t.clone() if t.device.type != "meta" else None)
                                       for t in tensors if isinstance(t, torch.Tensor)])


@pytest.mark.parametrize("over", [over for over, _ in BAD_INPUTS], ids=lambda o: ",".join(o))
def test_a_failed_call_changes_no_state(over):
    a = _args(**over)
    tensors = list(a.values())
    resnet_ext.conv_bn_act(*_args().values())  # some counts to keep
    before_counts, before = _state(tensors)
    for call in (torch.ops.resnet_ext.conv_bn_act, resnet_ext.explain, resnet_ext.conv_bn_act):
        with pytest.raises((RuntimeError, TypeError)):
            call(*a.values())
    after_counts, after = _state(tensors)
    assert after_counts == before_counts
    for (v0, t0), (v1, t1) in zip(before, after):
        assert v0 == v1 and (t0 is None or torch.equal(t0, t1))
    from resnet_ext._C_loader import _C
    assert _C.autotune_cache_size() == 0


# ---- the loader refuses a _C built from other sources ---------------------------------------------------------------

def test_loaded_extension_carries_its_build_id():
    from resnet_ext import _C_loader

    info = resnet_ext.build_info()
    assert info["build_id"] and info["build_id"] != "unknown"
    assert _C_loader.extension_build_id(_C_loader._C.__file__) == info["build_id"]


def test_loader_passes_over_builds_from_other_sources(tmp_path):
    from resnet_ext import _C_loader

    for name, build_id in (("a", "stale0000"), ("b", "fresh1111")):
        (tmp_path / name / "resnet_ext").mkdir(parents=True)
        (tmp_path / name / "resnet_ext" / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(
            b"\x7fELF junk RESNET_EXT_BUILD_ID=" + build_id.encode() + b"; more junk")
    here = str(tmp_path / "checkout" / "resnet_ext")
    search = [str(tmp_path / "a"), str(tmp_path / "b")]
    path, stale = _C_loader.find_other_build(here, search, "fresh1111")
    assert path.startswith(str(tmp_path / "b")) and [b for _, b in stale] == ["stale0000"]
    path, stale = _C_loader.find_other_build(here, search, "other2222")
    assert path is None and [b for _, b in stale] == ["stale0000", "fresh1111"]
    assert _C_loader.find_other_build(here, search, None)[0].startswith(str(tmp_path / "a"))


def test_source_build_id_follows_the_sources(tmp_path):
    from resnet_ext import _C_loader

    (tmp_path / "csrc" / "ops").mkdir(parents=True)
    (tmp_path / "csrc" / "ops" / "a.cpp").write_text("int a;")
    first = _C_loader.source_build_id(str(tmp_path))
    (tmp_path / "csrc" / ".a.cpp.swp").write_text("editor noise")
    assert _C_loader.source_build_id(str(tmp_path)) == first
    (tmp_path / "csrc" / "ops" / "a.cpp").write_text("int b;")
    assert _C_loader.source_build_id(str(tmp_path)) != first
    assert _C_loader.source_build_id(str(tmp_path / "nowhere")) is None


def test_import_from_a_checkout_refuses_a_stale_installed_extension(tmp_path):
    """A checkout without its own _C, with another resnet_ext on sys.path whose _C was built from other sources:
    the import fails and says why, instead of loading the stale binary."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(resnet_ext.__file__).resolve().parent.parent
    checkout = tmp_path / "checkout"
    shutil.copytree(root / "resnet_ext", checkout / "resnet_ext", ignore=shutil.ignore_patterns("_C.*", "__pycache__"))
    shutil.copytree(root / "csrc", checkout / "csrc")
    site = tmp_path / "site" / "resnet_ext"
    site.mkdir(parents=True)
    (site / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"RESNET_EXT_BUILD_ID=0123456789abcdef;")
    env = {**__import__("os").environ, "PYTHONPATH": f"{checkout}:{tmp_path / 'site'}"}
    out = subprocess.run([sys.executable, "-c", "import resnet_ext, sys; print(sys.modules['resnet_ext._C'].__file__)"],
                         cwd=checkout, env=env, capture_output=True, text=True)
    if out.returncode == 0:
        # A build of these very sources installed further down the path (CI's `pip install .`) is taken instead;
        # the stale one never is.
        assert str(site) not in out.stdout and "_C" in out.stdout, out.stdout
    else:
        assert "built from other sources (build id 0123456789abcdef" in out.stderr, out.stderr[-2000:]


# ---- the fp32 scale/shift epilogue: relu?(conv(x, w) * scale + shift + bias + residual) ---------------------------

def _scale_shift(k, dtype=torch.float32, requires_grad=False):
    scale = (torch.rand(k, dtype=dtype) * 1.5 + 0.25).requires_grad_(requires_grad)
    shift = (torch.randn(k, dtype=dtype) * 0.2).requires_grad_(requires_grad)
    return scale, shift


def scale_shift_reference(x, w, b, r, scale, shift, stride, padding, dilation, relu, groups):
    y = F.conv2d(x.double(), w.double(), None, stride, padding, dilation, groups)
    y = y * scale.double().view(1, -1, 1, 1) + shift.double().view(1, -1, 1, 1)
    if b is not None:
        y = y + b.double().view(1, -1, 1, 1)
    if r is not None:
        y = y + r.double()
    return F.relu(y) if relu else y


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("residual,relu,bias", [(False, True, False), (True, True, True), (True, False, False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_scale_shift_matches_float64_reference(case, residual, relu, bias, channels_last):
    (x, w, b, r), (s, p, d, g) = make_case(case, channels_last=channels_last, bias=bias, residual=residual)
    scale, shift = _scale_shift(w.shape[0])
    y = conv_bn_act(x, w, b, r, s, p, d, relu, g, scale=scale, shift=shift)
    ref = scale_shift_reference(x, w, b, r, scale, shift, s, p, d, relu, g)
    assert y.shape == ref.shape and rel_err(y, ref) < 1e-5
    fmt = torch.channels_last if channels_last and case[0] * case[2] * case[3] > 1 else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)
    # Not the folded epilogue: a scale of 2 doubles what the conv gives, not the bias.
    y2 = conv_bn_act(x, w, b, None, s, p, d, False, g, scale=torch.full_like(scale, 2.0), shift=torch.zeros_like(shift))
    want = 2 * F.conv2d(x.double(), w.double(), None, s, p, d, g) + (0 if b is None else b.double().view(1, -1, 1, 1))
    assert rel_err(y2, want) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_scale_shift_on_other_dtypes_keeps_x_dtype_and_computes_in_at_least_fp32(dtype):
    (x, w, b, r), (s, p, d, g) = make_case(CASES[3], dtype=dtype, residual=True)
    scale, shift = _scale_shift(w.shape[0])
    y = conv_bn_act(x, w, b, r, s, p, d, True, g, scale=scale, shift=shift)
    assert y.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-2  # float64: the epilogue in float64, not rounded to fp32
    assert rel_err(y, scale_shift_reference(x, w, b, r, scale, shift, s, p, d, True, g)) < tol


def test_scale_shift_gradients_float64():
    (x, w, b, r), (s, p, d, g) = make_case(CASES[4], dtype=torch.float64, residual=True, requires_grad=True)
    scale, shift = _scale_shift(w.shape[0], dtype=torch.float64, requires_grad=True)
    with torch.no_grad():  # keep pre-activations away from the ReLU kink
        pre = scale_shift_reference(x, w, b, r, scale, shift, s, p, d, False, g)
        r.add_(torch.where(pre.abs() < 1e-3, 0.1, 0.0))
    # float64 scale and shift are refused by the op (the epilogue is fp32): differentiate through a cast
    f = lambda x, w, b, r, sc, sh: conv_bn_act(x, w, b, r, s, p, d, True, g, scale=sc.float(), shift=sh.float())
    y = f(x, w, b, r, scale, shift)
    y.sum().backward()
    xs, ws, bs, rs, scs, shs = (t.detach().clone().requires_grad_() for t in (x, w, b, r, scale, shift))
    scale_shift_reference(xs, ws, bs, rs, scs.float().double(), shs.float().double(), s, p, d, True, g).sum().backward()
    for mine, ref in ((x, xs), (w, ws), (b, bs), (r, rs), (scale, scs), (shift, shs)):
        assert rel_err(mine.grad, ref.grad) < 1e-5


def test_scale_shift_opcheck():
    (x, w, b, r), (s, p, d, g) = make_case(CASES[1], residual=True, requires_grad=True)
    scale, shift = _scale_shift(w.shape[0], requires_grad=True)
    torch.library.opcheck(torch.ops.resnet_ext.conv_bn_act.default, (x, w, b, r, s, p, d, True, g, scale, shift))


@pytest.mark.parametrize("over,match", [
    (dict(scale=torch.ones(16)), r"scale and shift must be given together.*only scale"),
    (dict(shift=torch.ones(16)), r"scale and shift must be given together.*only shift"),
    (dict(scale=torch.ones(16, dtype=torch.float64), shift=torch.ones(16)), r"scale must be float32"),
    (dict(scale=torch.ones(16), shift=torch.ones(15)), r"shift must have shape \[16\]"),
    (dict(scale=torch.ones(16, device="meta"), shift=torch.ones(16)), r"scale must be on x's device"),
])
def test_scale_shift_bad_input_names_the_argument(over, match):
    a = {**_args(), "scale": None, "shift": None, **over}
    with pytest.raises(RuntimeError, match=match):
        torch.ops.resnet_ext.conv_bn_act(*a.values())
    with pytest.raises(RuntimeError, match=match):
        resnet_ext.explain(*a.values())
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode()
    fake = [mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for v in a.values()]
    with mode, pytest.raises(RuntimeError, match=match):
        torch.ops.resnet_ext.conv_bn_act(*fake)


def test_scale_shift_explain_on_cpu():
    (x, w, b, r), (s, p, d, g) = make_case(CASES[1])
    scale, shift = _scale_shift(w.shape[0])
    path, _ = resnet_ext.explain(x, w, b, r, s, p, d, True, g, scale, shift)
    assert path == "stock"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("hw", [1, 2, 5])
def test_onednn_conv_with_a_residual_equals_the_composition(dtype, channels_last, packed, hw):
    """The module path's oneDNN unit relu(conv(x) + b + residual), the weight plain or prepacked, on every layout,
    down to a 1x1 output (a 32x32 image's layer4): torch 2.11's fused add failed there ("could not create a
    memory")."""
    from resnet_ext import ops
    if not ops.onednn_takes(dtype):
        pytest.skip("oneDNN has no bf16 convolution on this CPU (no AVX512-BW/VL/DQ, no AVX-NE-CONVERT)")
    torch.manual_seed(hw)
    conv = torch.nn.Conv2d(32, 48, 3, 1, 1, bias=False)
    x, residual = torch.randn(2, 32, hw, hw), torch.randn(2, 48, hw, hw)
    w, b = conv.weight.detach(), torch.randn(48)
    want = torch.relu(F.conv2d(x, w, b, 1, 1) + residual)
    x, residual, w, b = (t.to(dtype) for t in (x, residual, w, b))
    if channels_last:
        x, residual, w = (t.contiguous(memory_format=torch.channels_last) for t in (x, residual, w))
    if packed:
        w = torch.ops.mkldnn._reorder_convolution_weight(w, *ops.onednn_args(conv), list(x.shape))
    with torch.no_grad():
        got = ops.onednn_conv(x, w, b, conv, True, residual)
    assert got.shape == want.shape and got.dtype == dtype
    assert rel_err(got.float(), want) < (1e-5 if dtype == torch.float32 else 2e-2)
