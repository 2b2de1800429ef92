"""resnet_ext::conv_direct (CPU): relu?(conv(x) + bias) for any kernel, stride and padding on channels_last maps,
each output pixel's kernel taps read in place (a run of zeros for taps in the padding) by conv1x1's AVX-512 register
tiles; the frozen bf16 flat forward's 3x3 stride-2 convs. Against a float64 reference on fresh random inputs:
resnet's 3x3 stride-2 shapes at batch 1 (layer 4's fp32 weight summed in groups of taps through a buffer), odd sizes
(tiles across output rows and images, fewer rows than one tile), other kernels, strides and paddings, batch 1 and 3;
float32 and bfloat16 (judged on torch's own bf16 convolution's error); outputs poisoned (MALLOC_PERTURB_); NaN and
inf as the direct convolution; every bad argument a clear error; opcheck; and in the model: which units take it,
the switch, the rule's conditions, and torchvision's answer."""
import copy

import pytest
import torch
import torch.nn.functional as F

import resnet_ext
from resnet_ext import ops
from resnet_ext.engine import cpu, units
from conftest import frozen_pair, randomize_bn, rel_err, run_poisoned, tv_model

f32_only = pytest.mark.skipif(not ops.conv1x1_supported(torch.float32), reason="this CPU has no AVX-512")
bf16_only = pytest.mark.skipif(not ops.conv1x1_supported(torch.bfloat16), reason="this CPU has no AVX512-BF16")

TOL = 2e-5  # fp32: one chain of fused multiply-adds per output (about 1e-6 measured); a wrong tap is far off


def make(n, c, k, h, w, ks, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    wt = torch.randn(k, c, *ks, generator=g) * (2 / (c * ks[0] * ks[1])) ** 0.5
    b = torch.randn(k, generator=g) * 0.1
    return x.to(dtype), wt.to(dtype), b


# (N, C, K, H, W, kernel, stride, padding): resnet50's three 3x3 stride-2 convs at batch 1 (the last with a 1.2 MB
# fp32 panel: summed in groups of taps), layer 4's 3x3 stride 1, and 640 channels (a 737 KB bf16 panel: groups of 8
# taps and 1, fp32 4, 4 and 1); odd maps (output widths 1 to 7 and 13, rows that
# end inside a tile), batch 3 (tiles across images), other kernels (5x5, 1x1 stride 2, 2x3), strides (3, 1x2) and
# paddings (0, 2, asymmetric), C 2 to 64, K 64 and 192.
SHAPES = [(1, 128, 128, 56, 56, (3, 3), (2, 2), (1, 1)), (1, 256, 256, 28, 28, (3, 3), (2, 2), (1, 1)),
          (1, 512, 512, 14, 14, (3, 3), (2, 2), (1, 1)), (1, 512, 512, 7, 7, (3, 3), (1, 1), (1, 1)),
          (1, 640, 64, 7, 7, (3, 3), (2, 2), (1, 1)),
          (3, 32, 64, 13, 9, (3, 3), (2, 2), (1, 1)), (2, 16, 192, 5, 3, (3, 3), (1, 1), (1, 1)),
          (1, 64, 64, 1, 1, (3, 3), (2, 2), (1, 1)), (3, 18, 128, 11, 8, (5, 5), (2, 2), (2, 2)),
          (2, 64, 64, 9, 9, (1, 1), (2, 2), (0, 0)), (1, 2, 64, 10, 17, (2, 3), (1, 2), (0, 1)),
          (2, 24, 64, 12, 7, (3, 3), (3, 3), (0, 2))]
IDS = ["x".join(map(str, s[:5])) + f"_k{s[5][0]}{s[5][1]}s{s[6][0]}{s[6][1]}p{s[7][0]}{s[7][1]}" for s in SHAPES]


def reference(x, w, b, stride, padding, relu):
    out = F.conv2d(x.double(), w.double(), b.double(), stride, padding)
    return torch.relu(out) if relu else out


def run(x, w, b, shape, relu):
    *_, ks, stride, padding = shape
    return ops.conv_direct(x, ops.conv_direct_weight(w), b, relu, ks, stride, padding)


@f32_only
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("relu", [False, True])
def test_matches_float64(shape, relu):
    x, w, b = make(*shape[:5], shape[5], seed=sum(shape[:5]))
    y = run(x, w, b, shape, relu)
    ref = reference(x, w, b, shape[6], shape[7], relu)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, ref) < TOL


@bf16_only
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("relu", [False, True])
def test_bf16_matches_float64_within_torchs_bf16_error(shape, relu):
    """bf16 operands, fp32 sums of their exact products, rounded to bf16 once: no worse than torch's own bf16
    convolution against float64 on the same operands."""
    x, w, b = make(*shape[:5], shape[5], seed=sum(shape[:5]), dtype=torch.bfloat16)
    y = run(x, w, b, shape, relu)
    ref = reference(x, w, b, shape[6], shape[7], relu)
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    stock = F.conv2d(x, w, b.bfloat16(), shape[6], shape[7])
    stock = torch.relu(stock) if relu else stock
    err, torch_err = rel_err(y, ref), rel_err(stock, ref)
    assert err < 1e-2 and err <= 1.5 * torch_err + 1e-3, (err, torch_err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_packing(dtype):
    """The KH * KW taps' C values one after another ((kh, kw, c) order), in conv1x1's panels of 64 output channels;
    a 1x1 weight packs as conv1x1's."""
    k, c, kh, kw = 128, 4, 2, 3
    w = torch.randn(k, c, kh, kw).to(dtype)
    p = ops.conv_direct_weight(w)
    assert p.dtype == dtype and p.is_contiguous()
    depth = kh * kw * c
    if dtype == torch.float32:
        assert p.shape == (2, depth, 64)
        at = lambda o, i, j, ch: p[o // 64, (i * kw + j) * c + ch, o % 64]  # noqa: E731
    else:
        assert p.shape == (2, depth // 2, 64, 2)
        at = lambda o, i, j, ch: p[o // 64, ((i * kw + j) * c + ch) // 2, o % 64, ch % 2]  # noqa: E731
    for o, i, j, ch in [(0, 0, 0, 0), (127, 1, 2, 3), (70, 1, 0, 1), (5, 0, 2, 2)]:
        assert torch.equal(at(o, i, j, ch), w[o, ch, i, j])
    assert torch.equal(ops.conv_direct_weight(w.contiguous(memory_format=torch.channels_last)), p)
    w1 = torch.randn(64, 6, 1, 1).to(dtype)
    assert torch.equal(ops.conv_direct_weight(w1), ops.conv1x1_weight(w1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c, where", [(64, [(1, 5, 5), (7, 0, 11)]),   # a NaN inside, an inf on the padded edge
                                      (512, [(300, 13, 13), (0, 0, 0)])])  # fp32: summed in groups of taps
def test_nan_and_inf_as_the_direct_convolution(dtype, c, where):
    """A NaN input makes every output pixel whose window holds it NaN (ReLU too), an inf gives +-inf or NaN there,
    exactly where the direct convolution has them; the padding's zeros never meet them."""
    if not ops.conv1x1_supported(dtype):
        pytest.skip("this CPU does not run the op for this dtype")
    x, w, b = make(1, c, 64, 14, 14, (3, 3), seed=3, dtype=dtype)
    for (ch, i, j), v in zip(where, (float("nan"), float("inf"))):
        x[0, ch, i, j] = v
    y = ops.conv_direct(x, ops.conv_direct_weight(w), b, True, 3, 2, 1)
    ref = F.conv2d(x.float(), w.float(), b, 2, 1).relu()
    assert ref.isnan().any() and not ref.isnan().all()  # the test means something
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 3])
def test_any_number_of_threads(dtype, threads):
    if not ops.conv1x1_supported(dtype):
        pytest.skip("this CPU does not run the op for this dtype")
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in SHAPES[2:6]:
            x, w, b = make(*shape[:5], shape[5], seed=shape[4], dtype=dtype)
            ref = reference(x, w, b, shape[6], shape[7], True)
            assert rel_err(run(x, w, b, shape, True), ref) < (TOL if dtype == torch.float32 else 1e-2)
    finally:
        torch.set_num_threads(prev)


_POISON_SCRIPT = r"""
import torch
from resnet_ext import ops
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    if not ops.conv1x1_supported(dtype):
        continue
    for n, c, k, h, w, s in [(1, 128, 128, 56, 56, 2), (1, 512, 512, 14, 14, 2), (3, 32, 192, 9, 13, 1)]:
        x = torch.randn(n, c, h, w).to(dtype).contiguous(memory_format=torch.channels_last)
        wt = (torch.randn(k, c, 3, 3) * (2 / (9 * c)) ** 0.5).to(dtype)
        b = torch.randn(k)
        y = ops.conv_direct(x, ops.conv_direct_weight(wt), b, False, 3, s, 1)
        ref = torch.nn.functional.conv2d(x.double(), wt.double(), b.double(), stride=s, padding=1)
        err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
        assert torch.isfinite(y).all() and err < 1e-2, err
print("ok")
"""


@f32_only
def test_every_output_written_under_poisoned_allocations():
    """glibc fills every fresh heap allocation with a byte pattern (MALLOC_PERTURB_): an output element the op did
    not write would show in the error bound (blocks glibc maps anew come zeroed instead, which fails it too: the
    outputs have no ReLU). The op's own buffers (the partial sums, the zero run) are zero-filled by construction."""
    run_poisoned(_POISON_SCRIPT)


def _args(dtype=torch.float32, **kw):
    x, w, b = make(1, 16, 64, 9, 9, (3, 3), seed=1, dtype=dtype)
    a = dict(x=x, w=ops.conv_direct_weight(w), bias=b, kernel_size=[3, 3], stride=[2, 2], padding=[1, 1])
    a.update(kw)
    return a


def _call(a):
    return torch.ops.resnet_ext.conv_direct(a["x"], a["w"], a["bias"], True, a["kernel_size"], a["stride"],
                                            a["padding"])


@f32_only
@pytest.mark.parametrize("change, needle", [
    (lambda: dict(x=torch.randn(16, 9, 9)), "x must be a 4-d float32 or bfloat16"),
    (lambda: dict(x=torch.randn(1, 16, 9, 9).double()), "x must be a 4-d float32 or bfloat16"),
    (lambda: dict(x=torch.randn(1, 16, 9, 9)), "x must be channels_last contiguous"),
    (lambda: dict(x=torch.randn(1, 0, 9, 9).contiguous(memory_format=torch.channels_last)),
     "x must have a positive number of channels"),
    (lambda: dict(x=torch.randn(1, 8, 9, 9).contiguous(memory_format=torch.channels_last)),
     r"w must be the contiguous packed float32 weight \[1, 72, 64\]"),
    (lambda: dict(w=torch.randn(1, 144, 64).bfloat16()), "w must be the contiguous packed float32"),
    (lambda: dict(w=torch.randn(1, 64, 144).transpose(1, 2)), "w must be the contiguous packed"),
    (lambda: dict(kernel_size=[3, 1]), r"\[1, 48, 64\]"),
    (lambda: dict(kernel_size=[0, 3]), "kernel_size must be two positive ints"),
    (lambda: dict(stride=[2, 0]), "stride must be two positive ints"),
    (lambda: dict(padding=[-1, 1]), "padding must be two non-negative ints"),
    (lambda: dict(bias=torch.randn(63)), "bias must be a float32 vector of the output channels, a positive multi"),
    (lambda: dict(bias=torch.randn(64).double()), "bias must be a float32 vector"),
    (lambda: dict(x=torch.randn(1, 16, 1, 9).contiguous(memory_format=torch.channels_last), padding=[0, 1]),
     r"padded input \(1 x 11\) is smaller than the kernel"),
    (lambda: dict(x=torch.randn(1, 16, 0, 9).contiguous(memory_format=torch.channels_last), padding=[2, 1]),
     "x must have height and width"),
    (lambda: dict(kernel_size=[1 << 32, 1 << 32]), "kernel_size and padding must be at most 2"),
    (lambda: dict(padding=[1, 1 << 40]), "kernel_size and padding must be at most 2"),
])
def test_bad_arguments_are_clear_errors(change, needle):
    with pytest.raises(RuntimeError, match=needle):
        _call(_args(**change()))


@bf16_only
@pytest.mark.parametrize("change, needle", [
    (lambda: dict(w=ops.conv_direct_weight(torch.randn(64, 16, 3, 3))), "w must be the contiguous packed bfloat16"),
    (lambda: dict(x=torch.randn(1, 15, 9, 9).bfloat16().contiguous(memory_format=torch.channels_last)),
     "x must have a positive, even number of channels"),
    (lambda: dict(bias=torch.randn(64).half()), "bias must be a float32 or bfloat16 vector"),
])
def test_bf16_bad_arguments_are_clear_errors(change, needle):
    with pytest.raises(RuntimeError, match=needle):
        _call(_args(torch.bfloat16, **change()))


def test_prefetch_range_is_checked():
    if not ops.conv1x1_supported(torch.float32):
        pytest.skip("this CPU has no AVX-512")
    a = _args()
    with pytest.raises(RuntimeError, match="prefetch_bytes must be in"):
        torch.ops.resnet_ext.conv_direct(a["x"], a["w"], a["bias"], True, [3, 3], [2, 2], [1, 1], 0, 64)
    y = ops.conv_direct(a["x"], a["w"], a["bias"], True, 3, 2, 1, prefetch=a["w"])  # a prefetch changes no value
    assert torch.equal(y, _call(a))


@pytest.mark.skipif(ops.conv1x1_supported(torch.float32), reason="this CPU has AVX-512")
def test_without_avx512_is_a_clear_error():
    with pytest.raises(RuntimeError, match="needs a CPU with AVX-512"):
        _call(_args())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    if not ops.conv1x1_supported(dtype):
        pytest.skip("this CPU does not run the op for this dtype")
    a = _args(dtype)
    torch.library.opcheck(torch.ops.resnet_ext.conv_direct.default,
                          (a["x"], a["w"], a["bias"], True, a["kernel_size"], a["stride"], a["padding"]))


# ---- In the frozen model -------------------------------------------------------------------------------------


@bf16_only
@pytest.mark.parametrize("arch, shape, layout, n, n1x1", [("resnet50", (1, 3, 224, 224), "cl", 8, 33),
                                                          ("resnet18", (2, 3, 64, 80), "nchw", 12, 0),
                                                          ("resnet34", (1, 3, 33, 47), "cl", 35, 0)])
def test_frozen_bf16_stride2_convs_take_the_op_and_match_it_off(arch, shape, layout, n, n1x1, no_amx):
    """freeze(dtype=torch.bfloat16): n units on the op (the 3x3 stride-2 convs, the 1x1 downsamples, and the 3x3
    stride-1 convs on maps too small for Winograd: layer 4's at 224x224, layers 3-4's of resnet18 at 64x80, every
    3x3 of resnet34 at 33x47; conv1x1 the other n1x1 1x1s) against the same model with the switch off (on oneDNN
    and conv1x1: the downsamples back on conv1x1), both against float64: within torchvision's own bf16 error;
    record and replay. Two bf16 computations differ by up to the sum of their errors: the op against the switch off
    within twice torchvision's error (within it alone failed 2 of 10 seeds on resnet34, up to 1.19x; torch seeds
    each process at random, so the test is seeded)."""
    torch.manual_seed(0)
    ours, tv = frozen_pair(arch, torch.bfloat16)
    x = torch.randn(*shape)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = copy.deepcopy(tv).double()(x.double())
        tv_err = rel_err(copy.deepcopy(tv).bfloat16()(x.bfloat16()), ref)
        out = {}
        for on in (True, False):
            assert resnet_ext.cpu_direct(on) is True
            try:
                for _ in range(2):
                    units.reset_path_counts()
                    out[on] = ours(x)
                    counts = resnet_ext.path_counts()
                    assert counts.get("conv_direct", 0) == (n if on else 0)
                    assert counts.get("conv1x1", 0) == (n1x1 if on else n1x1 + 3), counts
            finally:
                resnet_ext.cpu_direct(True)
    assert rel_err(out[True], ref) <= 2 * tv_err, (rel_err(out[True], ref), tv_err)
    assert rel_err(out[False], ref) <= 2 * tv_err, (rel_err(out[False], ref), tv_err)
    assert rel_err(out[True], out[False]) <= 2 * tv_err, (rel_err(out[True], out[False]), tv_err)


@f32_only
def test_frozen_fp32_stays_on_onednn(no_amx):
    """fp32: the op was no faster than oneDNN inside whole forwards, which keeps those convs (DIRECT_DTYPES)."""
    ours, tv = frozen_pair("resnet18")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        units.reset_path_counts()
        y = ours(x)
    assert "conv_direct" not in resnet_ext.path_counts() and rel_err(y, tv(x)) < 1e-4


@bf16_only
def test_a_weight_pruned_through_data_stays_on_onednn(no_amx):
    """layer2[0].conv1 (3x3 stride 2) cut to 96 output channels through `.data`, with bn1's and conv2's matching
    channels (out_channels and in_channels still say 128): torchvision runs it, and so does the frozen model, those
    two units on oneDNN (the plan's ops take only folds their conv's attributes describe), the other 13 of resnet18's
    kxk and strided units at 64x64 that Winograd leaves on the op."""
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    b = tv.layer2[0]
    with torch.no_grad():
        b.conv1.weight.data = b.conv1.weight.data[:96].clone()
        for t in (b.bn1.weight, b.bn1.bias, b.bn1.running_mean, b.bn1.running_var):
            t.data = t.data[:96].clone()
        b.conv2.weight.data = b.conv2.weight.data[:, :96].clone()
    ours = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)), dtype=torch.bfloat16)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = copy.deepcopy(tv).double()(x.double())
        tv_err = rel_err(copy.deepcopy(tv).bfloat16()(x.bfloat16()), ref)
        units.reset_path_counts()
        y = ours(x)
    counts = resnet_ext.path_counts()
    assert counts.get("conv_direct", 0) == 13 and counts.get("onednn_prepacked", 0) == 2, counts
    assert rel_err(y, ref) <= 2 * tv_err


@bf16_only
def test_direct_rule_leaves_what_the_op_does_not_take(no_amx):
    """The rule's conditions, on layer 2's 3x3 stride-2 unit (stride 1 taken too): stride 3, unequal strides, a
    dilated or grouped conv, output channels not a multiple of 64, odd or few input channels, an NCHW input, a 1x1
    kernel of stride 1 or with padding (a strided 1x1 without is the op's, unless DIRECT_1X1 is off), an fp32 input,
    more than DIRECT_MAX_MACS multiply-adds, the switch off, an AMX CPU: each stays off the op."""
    ours, _ = frozen_pair("resnet18", torch.bfloat16)
    from resnet_ext.engine import structure
    u = next(v for v in structure.of(ours, torch.float32, 3).units if v.conv.stride == (2, 2)
             and v.conv.kernel_size == (3, 3))
    conv = u.conv
    x = torch.randn(1, conv.in_channels, 16, 16, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    assert cpu.direct_pays(u, x)

    class U:  # a unit with another geometry
        def __init__(self, **kw):
            c = copy.deepcopy(conv)
            for k, v in kw.items():
                setattr(c, k, v)
            self.conv, self.geometry = c, (c.padding, c.stride, c.dilation, c.groups)

    assert cpu.direct_pays(U(stride=(1, 1)), x)
    for kw in [dict(stride=(3, 3)), dict(stride=(2, 1)), dict(dilation=(2, 2)), dict(groups=2),
               dict(out_channels=96), dict(in_channels=15), dict(in_channels=8),
               dict(kernel_size=(1, 1), stride=(1, 1), padding=(0, 0)), dict(kernel_size=(1, 1)),
               dict(padding="same")]:
        assert not cpu.direct_pays(U(**kw), x), kw
    strided_1x1 = U(kernel_size=(1, 1), padding=(0, 0))
    assert cpu.direct_pays(strided_1x1, x)
    cpu.DIRECT_1X1 = False
    try:
        assert not cpu.direct_pays(strided_1x1, x)
    finally:
        cpu.DIRECT_1X1 = True
    assert not cpu.direct_pays(u, x.contiguous())
    assert not cpu.direct_pays(u, x.float())

    def big(n):
        return torch.empty(n, 64, 56, 56, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)

    assert conv.in_channels == 64 and cpu.direct_pays(u, big(2)) and not cpu.direct_pays(u, big(3))  # 116M, 173M
    prev = resnet_ext.cpu_direct(False)
    try:
        assert not cpu.direct_pays(u, x)
    finally:
        resnet_ext.cpu_direct(prev)
    was = cpu.AMX_BF16
    cpu.AMX_BF16 = True
    try:
        assert not cpu.direct_pays(u, x)
    finally:
        cpu.AMX_BF16 = was
