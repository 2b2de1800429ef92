"""resnet_ext::conv_stem (CPU): relu?(conv(x) + bias) for a conv on few input channels (the stem's 7x7 on RGB), each
output pixel's kernel rows read in place from a zero-padded NHWC copy of x, on conv1x1's AVX-512 register tiles; the
frozen bf16 flat forward's stem. Against a float64 reference on fresh random inputs: the stem at batch 1 and 3, odd
sizes (output rows not a multiple of the tile's six, fewer than one tile), other kernels, strides, paddings and
channel counts (odd runs of a kernel row: bf16's padded pair), both input layouts; float32 and bfloat16 (judged on
torch's own bf16 convolution's error); outputs poisoned (MALLOC_PERTURB_); NaN and inf as the direct convolution;
every bad argument a clear error; opcheck; and in the model: which unit takes it, the switch, and torchvision's
answer."""
import copy

import pytest
import torch
import torch.nn.functional as F

import resnet_ext
from resnet_ext import ops
from resnet_ext.engine import cpu, units
from conftest import frozen_pair, rel_err, run_poisoned

f32_only = pytest.mark.skipif(not ops.conv1x1_supported(torch.float32), reason="this CPU has no AVX-512")
bf16_only = pytest.mark.skipif(not ops.conv1x1_supported(torch.bfloat16), reason="this CPU has no AVX512-BF16")

TOL = 2e-5  # fp32: one chain of fused multiply-adds per output (1e-7 to 6e-7 measured); a wrong tap is far off


def make(n, c, k, h, w, ks, seed, dtype=torch.float32, layout="cl"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # neither layout: a slice of a wider tensor
        x = torch.randn(n, c, h, w + 3, generator=g)[..., 1:-2]
    wt = torch.randn(k, c, *ks, generator=g) * (2 / (c * ks[0] * ks[1])) ** 0.5
    b = torch.randn(k, generator=g) * 0.1
    return x.to(dtype), wt.to(dtype), b


# (N, C, K, H, W, kernel, stride, padding): the stem at 224x224 (batch 1 and 3) and on small and odd inputs (output
# widths 1 to 5, 7, 13: rows of fewer than one tile, a tile and a rest), other kernels (3x3, 5x5, 1x7, 2x2), strides
# (1, 3, 2x1) and paddings (0, asymmetric), 1 to 4 input channels, K 64 and 192.
SHAPES = [(1, 3, 64, 224, 224, (7, 7), (2, 2), (3, 3)), (3, 3, 64, 224, 224, (7, 7), (2, 2), (3, 3)),
          (1, 3, 64, 32, 32, (7, 7), (2, 2), (3, 3)), (2, 3, 64, 25, 13, (7, 7), (2, 2), (3, 3)),
          (1, 3, 128, 1, 1, (7, 7), (2, 2), (3, 3)), (1, 3, 64, 9, 3, (7, 7), (2, 2), (3, 3)),
          (1, 3, 64, 9, 9, (3, 3), (1, 1), (1, 1)), (1, 1, 64, 5, 7, (5, 5), (1, 1), (0, 0)),
          (2, 4, 192, 11, 8, (2, 2), (3, 3), (2, 2)), (1, 2, 64, 10, 17, (1, 7), (2, 1), (0, 3)),
          (1, 3, 64, 12, 12, (3, 5), (1, 2), (2, 0))]


def reference(x, w, b, stride, padding, relu):
    out = F.conv2d(x.double(), w.double(), b.double(), stride, padding)
    return torch.relu(out) if relu else out


def run(x, w, b, shape, relu):
    *_, ks, stride, padding = shape
    return ops.conv_stem(x, ops.conv_stem_weight(w), b, relu, ks, stride, padding)


@f32_only
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + f"_k{s[5]}s{s[6]}p{s[7]}")
@pytest.mark.parametrize("layout", ["cl", "nchw", "strided"])
@pytest.mark.parametrize("relu", [False, True])
def test_matches_float64(shape, layout, relu):
    x, w, b = make(*shape[:5], shape[5], seed=sum(shape[:5]), layout=layout)
    y = run(x, w, b, shape, relu)
    ref = reference(x, w, b, shape[6], shape[7], relu)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, ref) < TOL


@bf16_only
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + f"_k{s[5]}s{s[6]}p{s[7]}")
@pytest.mark.parametrize("layout", ["cl", "nchw"])
@pytest.mark.parametrize("relu", [False, True])
def test_bf16_matches_float64_within_torchs_bf16_error(shape, layout, relu):
    """bf16 operands, fp32 sums of their exact products, rounded to bf16 once: no worse than torch's own bf16
    convolution against float64 on the same operands."""
    x, w, b = make(*shape[:5], shape[5], seed=sum(shape[:5]), dtype=torch.bfloat16, layout=layout)
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
    """Each kernel row's KW * C values in NHWC order ((kw, c), zero-padded to an even count for bf16), the rows one
    after another, in conv1x1's panels of 64 output channels."""
    k, c, kh, kw = 128, 3, 2, 3
    w = torch.randn(k, c, kh, kw).to(dtype)
    p = ops.conv_stem_weight(w)
    run_len = kw * c + (1 if dtype == torch.bfloat16 else 0)
    assert p.dtype == dtype and p.is_contiguous()
    if dtype == torch.float32:
        assert p.shape == (2, kh * run_len, 64)
        at = lambda o, i, j, ch: p[o // 64, i * run_len + j * c + ch, o % 64]  # noqa: E731
    else:
        assert p.shape == (2, kh * run_len // 2, 64, 2)
        at = lambda o, i, j, ch: p[o // 64, (i * run_len + j * c + ch) // 2, o % 64, (j * c + ch) % 2]  # noqa: E731
        assert (p[:, run_len // 2 - 1, :, 1] == 0).all() and (p[:, run_len - 1, :, 1] == 0).all()  # the pads
    for o, i, j, ch in [(0, 0, 0, 0), (127, 1, 2, 2), (70, 1, 0, 1), (5, 0, 2, 0)]:
        assert torch.equal(at(o, i, j, ch), w[o, ch, i, j])
    assert torch.equal(ops.conv_stem_weight(w.contiguous(memory_format=torch.channels_last)), p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c, ks, stride, padding, where", [
    (3, 7, 2, 3, [(1, 5, 5), (0, 2, 11)]),  # the stem: a NaN inside, an inf in the last column
    (3, 7, 2, 3, [(0, 5, 4), (0, 9, 6)]),   # channel 0 right after a kernel row's 21 values: bf16's padded pair
    (1, 3, 1, 1, [(0, 3, 2), (0, 0, 7)]),   # C = 1, an odd run of 3: every pixel follows some window's run
])
def test_nan_and_inf_as_the_direct_convolution(dtype, c, ks, stride, padding, where):
    """A NaN input makes every output pixel whose window holds it NaN (ReLU too), an inf gives +-inf or NaN there,
    exactly where the direct convolution has them: in bf16 a kernel row's odd run of KW * C values is padded with a
    zero weight, which must not meet the value after the run (0 * inf is NaN)."""
    if not ops.conv1x1_supported(dtype):
        pytest.skip("this CPU does not run the op for this dtype")
    x, w, b = make(1, c, 64, 12, 12, (ks, ks), seed=3, dtype=dtype)
    for (ch, i, j), v in zip(where, (float("nan"), float("inf"))):
        x[0, ch, i, j] = v
    y = ops.conv_stem(x, ops.conv_stem_weight(w), b, True, ks, stride, padding)
    ref = F.conv2d(x.float(), w.float(), b, stride, padding).relu()
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
            assert rel_err(run(x, w, b, shape, True), reference(x, w, b, shape[6], shape[7], True)) < \
                (TOL if dtype == torch.float32 else 1e-2)
    finally:
        torch.set_num_threads(prev)


_POISON_SCRIPT = r"""
import torch
from resnet_ext import ops
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    if not ops.conv1x1_supported(dtype):
        continue
    for n, c, k, h, w in [(1, 3, 64, 224, 224), (2, 3, 128, 31, 17), (1, 1, 64, 9, 9)]:
        x = torch.randn(n, c, h, w).to(dtype)
        wt = (torch.randn(k, c, 7, 7) * (2 / (49 * c)) ** 0.5).to(dtype)
        b = torch.randn(k)
        y = ops.conv_stem(x, ops.conv_stem_weight(wt), b, False, 7, 2, 3)
        ref = torch.nn.functional.conv2d(x.double(), wt.double(), b.double(), stride=2, padding=3)
        err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
        assert torch.isfinite(y).all() and err < 1e-2, err
print("ok")
"""


@f32_only
def test_every_output_written_under_poisoned_allocations():
    """glibc fills every fresh heap allocation with a byte pattern (MALLOC_PERTURB_): an output element the op did
    not write, or a padding zero it did not write, would show in the error bound (blocks glibc maps anew, like the
    224x224 output, come zeroed instead, which fails it too: the outputs have no ReLU)."""
    run_poisoned(_POISON_SCRIPT)


def _args(dtype=torch.float32, **kw):
    x, w, b = make(1, 3, 64, 16, 16, (7, 7), seed=1, dtype=dtype)
    a = dict(x=x, w=ops.conv_stem_weight(w), bias=b, kernel_size=[7, 7], stride=[2, 2], padding=[3, 3])
    a.update(kw)
    return a


def _call(a):
    return torch.ops.resnet_ext.conv_stem(a["x"], a["w"], a["bias"], True, a["kernel_size"], a["stride"],
                                          a["padding"])


@f32_only
@pytest.mark.parametrize("change, needle", [
    (lambda: dict(x=torch.randn(3, 16, 16)), "x must be a 4-d float32 or bfloat16"),
    (lambda: dict(x=torch.randn(1, 3, 16, 16).double()), "x must be a 4-d float32 or bfloat16"),
    (lambda: dict(x=torch.randn(1, 0, 16, 16)), "x must have channels, height and width"),
    (lambda: dict(x=torch.randn(1, 3, 0, 8), padding=[4, 4]), "x must have channels, height and width"),
    (lambda: dict(x=torch.randn(1, 4, 16, 16)), r"w must be the contiguous packed float32 weight \[1, 196, 64\]"),
    (lambda: dict(w=torch.randn(1, 147, 64).bfloat16()), "w must be the contiguous packed float32"),
    (lambda: dict(w=torch.randn(1, 64, 147).transpose(1, 2)), "w must be the contiguous packed"),
    (lambda: dict(kernel_size=[7, 5]), r"\[1, 105, 64\]"),
    (lambda: dict(kernel_size=[0, 7]), "kernel_size must be two positive ints"),
    (lambda: dict(stride=[2, 0]), "stride must be two positive ints"),
    (lambda: dict(padding=[-1, 3]), "padding must be two non-negative ints"),
    (lambda: dict(bias=torch.randn(63)), "bias must be a float32 vector of the output channels, a positive multi"),
    (lambda: dict(bias=torch.randn(64).double()), "bias must be a float32 vector"),
    (lambda: dict(x=torch.randn(1, 3, 2, 16), padding=[0, 3]), r"padded input \(2 x 22\) is smaller than the kern"),
])
def test_bad_arguments_are_clear_errors(change, needle):
    with pytest.raises(RuntimeError, match=needle):
        _call(_args(**change()))


@bf16_only
@pytest.mark.parametrize("change, needle", [
    (lambda: dict(w=ops.conv_stem_weight(torch.randn(64, 3, 7, 7))), "w must be the contiguous packed bfloat16"),
    (lambda: dict(w=torch.zeros(1, 73, 64, 2, dtype=torch.bfloat16)), r"weight \[1, 77, 64, 2\]"),
    (lambda: dict(bias=torch.randn(64).half()), "bias must be a float32 or bfloat16 vector"),
])
def test_bf16_bad_arguments_are_clear_errors(change, needle):
    with pytest.raises(RuntimeError, match=needle):
        _call(_args(torch.bfloat16, **change()))


@pytest.mark.skipif(ops.conv1x1_supported(torch.float32), reason="this CPU has AVX-512")
def test_without_avx512_is_a_clear_error():
    with pytest.raises(RuntimeError, match="needs a CPU with AVX-512"):
        _call(_args())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    if not ops.conv1x1_supported(dtype):
        pytest.skip("this CPU does not run the op for this dtype")
    a = _args(dtype)
    torch.library.opcheck(torch.ops.resnet_ext.conv_stem.default,
                          (a["x"], a["w"], a["bias"], True, a["kernel_size"], a["stride"], a["padding"]))


# ---- In the frozen model -------------------------------------------------------------------------------------


@bf16_only
@pytest.mark.parametrize("arch, shape, layout", [("resnet50", (1, 3, 224, 224), "cl"),
                                                 ("resnet18", (2, 3, 64, 80), "nchw"),
                                                 ("resnet18", (1, 3, 33, 47), "cl")])
def test_frozen_bf16_stem_takes_the_op_and_matches_it_off(arch, shape, layout, no_amx):
    """freeze(dtype=torch.bfloat16): the stem on the op (one unit) against the same model with the switch off (the
    stem on oneDNN), both against float64: within torchvision's own bf16 error; record and replay."""
    ours, tv = frozen_pair(arch, torch.bfloat16)
    x = torch.randn(*shape)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = copy.deepcopy(tv).double()(x.double())
        tv_err = rel_err(copy.deepcopy(tv).bfloat16()(x.bfloat16()), ref)
        out = {}
        for on in (True, False):
            assert resnet_ext.cpu_stem(on) is True
            try:
                for _ in range(2):
                    units.reset_path_counts()
                    out[on] = ours(x)
                    assert resnet_ext.path_counts().get("conv_stem", 0) == (1 if on else 0)
            finally:
                resnet_ext.cpu_stem(True)
    assert rel_err(out[True], ref) <= 2 * tv_err, (rel_err(out[True], ref), tv_err)
    assert rel_err(out[True], out[False]) <= tv_err


@f32_only
def test_frozen_fp32_stem_stays_on_onednn(no_amx):
    """fp32: the op measured level with oneDNN on the stem, which keeps it (STEM_DTYPES)."""
    ours, tv = frozen_pair("resnet18")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        units.reset_path_counts()
        y = ours(x)
    assert "conv_stem" not in resnet_ext.path_counts() and rel_err(y, tv(x)) < 1e-4


@bf16_only
def test_stem_rule_leaves_what_the_op_does_not_take(no_amx):
    """The rule's conditions, on the stem's unit: a dilated or grouped stem, output channels not a multiple of 64,
    a wide input (a kernel row of more than STEM_MAX_RUN values), a 1x1 kernel, an AMX CPU: each stays on oneDNN."""
    ours, _ = frozen_pair("resnet18", torch.bfloat16)
    from resnet_ext.engine import structure
    x = torch.randn(1, 3, 64, 64, dtype=torch.bfloat16)
    u = structure.of(ours, torch.float32, 3).stem
    assert cpu.stem_pays(u, x)
    conv = u.conv

    class U:  # a unit with another geometry
        def __init__(self, **kw):
            c = copy.deepcopy(conv)
            for k, v in kw.items():
                setattr(c, k, v)
            self.conv, self.geometry = c, (c.padding, c.stride, c.dilation, c.groups)

    assert not cpu.stem_pays(U(dilation=(2, 2)), x)
    assert not cpu.stem_pays(U(groups=3), x)
    assert not cpu.stem_pays(U(out_channels=96), x)
    assert not cpu.stem_pays(U(in_channels=5), x)  # 7 x 5 = 35 values
    assert not cpu.stem_pays(U(kernel_size=(1, 1)), x)
    assert not cpu.stem_pays(U(padding="same"), x)
    assert not cpu.stem_pays(u, x.float())  # fp32: STEM_DTYPES
    cpu.AMX_BF16 = True
    assert not cpu.stem_pays(u, x)
