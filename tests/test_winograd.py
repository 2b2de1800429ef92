"""resnet_ext::winograd3x3 (CPU): relu?(conv3x3(x) + bias (+ residual)) by Winograd (F(4x4, 3x3) in float32,
F(2x2, 3x3) on bfloat16 operands), the frozen flat forward's 3x3 stride-1 units. Against a float64 reference on
fresh random inputs: every ResNet 3x3 stride-1 layer shape, batch 1, odd sizes (partial tiles), more tiles than
one block or chunk of the workspace; outputs poisoned (glibc's
MALLOC_PERTURB_) so an unwritten element shows; NaN passes through; every bad argument is a clear error; opcheck;
and in the model: which units take it, and torchvision's answer."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

import resnet_ext
from resnet_ext import ops
from resnet_ext.engine import cpu, state, units
from conftest import randomize_bn, rel_err, run_poisoned, tv_model

# F(4x4, 3x3) in fp32 rounds about 5-10x more than the direct convolution (1e-6): 7e-6 to 1e-5 of the largest
# output on these inputs; the bound leaves room for that and catches any wrong tap (errors of order 1e-1).
TOL = 5e-5


def reference(x, w, b, residual, relu):
    out = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    if residual is not None:
        out = out + residual.double()
    return torch.relu(out) if relu else out


def make(n, c, k, h, w, seed, with_residual=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    wt = torch.randn(k, c, 3, 3, generator=g) * (2 / (9 * c)) ** 0.5
    b = torch.randn(k, generator=g) * 0.1
    r = torch.randn(n, k, h, w, generator=g).contiguous(memory_format=torch.channels_last) if with_residual else None
    return x, wt, b, r


# (N, C, K, H, W): resnet18-152's 3x3 stride-1 shapes at 224x224 (batch 1 and 2), odd sizes with partial tiles,
# a single pixel, K != C, and 3000+ tiles (many of the threads' own blocks of tiles); for the AVX-512 GEMM's
# edges: K of 1 to 3 vectors past its 64-channel panels, C past its 64-channel depth chunks, tiles not a multiple
# of its 6 rows.
SHAPES = [(1, 64, 64, 56, 56), (2, 128, 128, 28, 28), (1, 256, 256, 14, 14), (2, 512, 512, 7, 7),
          (1, 16, 32, 13, 11), (3, 32, 16, 5, 9), (2, 16, 16, 1, 1), (1, 48, 64, 4, 4), (13, 64, 64, 56, 56),
          (1, 80, 112, 9, 7), (2, 144, 48, 6, 10), (1, 16, 80, 17, 5)]


f23_only = pytest.mark.skipif(not ops.winograd_f23_supported(), reason="this CPU has no AVX-512")
# The float32 variants by the output tile's side m: F(4x4, 3x3) and F(2x2, 3x3) (AVX-512 only).
M_FP32 = [4, pytest.param(2, marks=f23_only)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("m", M_FP32)
def test_matches_float64(shape, with_residual, relu, m):
    x, w, b, r = make(*shape, seed=sum(shape), with_residual=with_residual)
    y = ops.winograd3x3(x, ops.winograd_weight(w, m), b, r, relu)
    assert y.shape == (shape[0], shape[2], shape[3], shape[4])
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, reference(x, w, b, r, relu)) < TOL


@pytest.mark.parametrize("dtype, m, shape", [
    (torch.float32, 4, (6, 176, 176, 60, 60)),   # u 4.5 MB: 1350 tiles, 1323 per chunk
    pytest.param(torch.float32, 2, (1, 256, 256, 100, 100), marks=f23_only),  # u 4 MiB: 2500 tiles, 2048 per chunk
    (torch.bfloat16, 2, (1, 1024, 128, 82, 82)),  # u 4 MiB: 1681 tiles, 1638 per chunk
], ids=["fp32", "fp32-f23", "bf16"])
def test_more_tiles_than_one_shared_chunk(dtype, m, shape):
    """A transformed weight of 4 MiB or more is read once per chunk of up to 64 MiB of planes, every step split
    between the threads (below that each thread takes its own small blocks): here two chunks, the second short."""
    if dtype == torch.bfloat16 and not ops.winograd_bf16_supported():
        pytest.skip("this CPU has no AVX512-BF16")
    x, w, b, r = make(*shape, seed=7, with_residual=True)
    x, r = x.to(dtype), r.to(dtype)
    u = ops.winograd_weight(w.to(dtype), m)
    assert u.numel() * u.element_size() >= 4 << 20
    y = ops.winograd3x3(x, u, b, r, True)
    err = rel_err(y, reference(x.float(), w, b, r.float(), True))
    assert err < (TOL if dtype == torch.float32 else 2e-2), err


# The F(4x4, 3x3) matrices, written out here as the test's own oracle.
G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                   [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                  dtype=torch.float64)


def test_matrices_compute_the_convolution_in_float64():
    """A^T [(G w G^T) . (B^T d B)] A is the 3x3 correlation of a 6x6 tile, to float64 rounding: the oracle's
    matrices are right, so the op's agreement with them below means something."""
    d, w = torch.randn(6, 6, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    y = AT @ ((G @ w @ G.T) * (BT @ d @ BT.T)) @ AT.T
    direct = F.conv2d(d.view(1, 1, 6, 6), w.view(1, 1, 3, 3)).view(4, 4)
    assert torch.allclose(y, direct, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k, c", [(64, 64), (17, 5), (512, 256), (1, 1)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_weight_transform_matches_float64(k, c, layout):
    w = torch.randn(k, c, 3, 3)
    if layout == "channels_last":
        w = w.contiguous(memory_format=torch.channels_last)
    u = ops.winograd_weight(w)
    ref = torch.einsum("ai,kcij,bj->abck", G, w.double(), G).reshape(36, c, k)
    assert u.dtype == torch.float32 and u.shape == (36, c, k) and u.is_contiguous()
    assert rel_err(u, ref) < 1e-6


@pytest.mark.parametrize("k, c", [(64, 64), (17, 5), (512, 256), (1, 1), (32, 48), (16, 16)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "expanded", "channels_last_sliced"])
def test_f23_fp32_weight_transform_matches_float64(k, c, layout):
    """[16, C, K]: each element G w G^T of the weight for F(2x2, 3x3), computed in float64 and rounded once, for
    the weight as it lies (the AVX-512 path for channels multiples of 16, in either layout, strided or expanded:
    the default mode's live weights; the general one otherwise)."""
    if layout == "strided":
        w = torch.randn(k, 2 * c, 3, 3)[:, ::2]
    elif layout == "expanded":  # stride 0 along K: every filter the same
        w = torch.randn(1, c, 3, 3).expand(k, c, 3, 3)
    elif layout == "channels_last_sliced":  # a channels_last weight's first C of 2C input channels
        w = torch.randn(k, 2 * c, 3, 3).contiguous(memory_format=torch.channels_last)[:, :c]
    else:
        w = torch.randn(k, c, 3, 3)
    if layout == "channels_last":
        w = w.contiguous(memory_format=torch.channels_last)
    u = ops.winograd_weight(w, 2)
    ref = torch.einsum("ai,kcij,bj->abck", G2, w.double(), G2).reshape(16, c, k)
    assert u.dtype == torch.float32 and u.shape == (16, c, k) and u.is_contiguous()
    assert torch.equal(u, ref.float())


def test_f23_fp32_weight_transform_keeps_nan_and_inf():
    """A non-finite weight value makes its filter's transformed elements non-finite (which ones, NaN or inf, can
    differ between the AVX-512 path, which skips G's zeros, and the general one, where 0 * inf is NaN), and no other
    filter's: the rest is the float64 transform rounded once."""
    w = torch.randn(32, 32, 3, 3)
    w[3, 5, 1, 1], w[7, 2, 0, 2] = float("nan"), float("inf")
    u = ops.winograd_weight(w.contiguous(memory_format=torch.channels_last), 2)
    bad = torch.zeros(32, 32, dtype=torch.bool)  # [c, k]
    bad[5, 3] = bad[2, 7] = True
    assert not torch.isfinite(u[:, 5, 3]).all() and torch.isnan(u[:, 5, 3]).any()
    assert not torch.isfinite(u[:, 2, 7]).all() and torch.isinf(u[:, 2, 7]).any()
    clean = w.clone()
    clean[3, 5], clean[7, 2] = 0, 0
    ref = torch.einsum("ai,kcij,bj->abck", G2, clean.double(), G2).reshape(16, 32, 32).float()
    assert torch.equal(u[:, ~bad], ref[:, ~bad])


@pytest.mark.parametrize("dtype, m", [(torch.float32, 3), (torch.float32, -1), (torch.bfloat16, 4)])
def test_weight_transform_bad_tile_side(dtype, m):
    with pytest.raises(RuntimeError, match="m \\(the output tile's side\\) must be 0"):
        ops.winograd_weight(torch.randn(8, 8, 3, 3).to(dtype), m)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(), pytest.raises(RuntimeError, match="m \\(the output tile's side\\) must be 0"):
        ops.winograd_weight(torch.empty(8, 8, 3, 3, dtype=dtype), m)  # tracing refuses it as the op does


@pytest.mark.parametrize("m", M_FP32)
def test_nan_and_inf_propagate(m):
    """A NaN input reaches every output of its tiles' 3x3 neighbourhood (the GEMMs mix the tile), never leaves a
    finite value where the direct convolution has a NaN."""
    x, w, b, _ = make(1, 16, 16, 9, 9, seed=3)
    x[0, 5, 4, 4] = float("nan")
    y = ops.winograd3x3(x, ops.winograd_weight(w, m), b, None, True)
    ref = F.conv2d(x, w, b, padding=1).relu()
    assert (y.isnan() | ~ref.isnan()).all()  # NaN wherever the reference has one


_POISON_SCRIPT = r"""
import torch
from resnet_ext import ops
torch.manual_seed(0)
for (n, c, k, h, w), m in [((1, 16, 32, 13, 11), 4), ((2, 64, 64, 30, 30), 4), ((1, 16, 32, 13, 11), 2),
                           ((2, 64, 64, 29, 30), 2)]:
    if m == 2 and not ops.winograd_f23_supported():
        continue
    x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
    wt = torch.randn(k, c, 3, 3) * 0.1
    b = torch.randn(k)
    y = ops.winograd3x3(x, ops.winograd_weight(wt, m), b, None, False)
    ref = torch.nn.functional.conv2d(x.double(), wt.double(), b.double(), padding=1)
    err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    assert torch.isfinite(y).all() and err < 5e-5, err
print("ok")
"""


def test_every_output_written_under_poisoned_allocations():
    """glibc fills every fresh allocation with a byte pattern (MALLOC_PERTURB_): an output element the op did not
    write would keep it (0xa5a5a5a5 reads as -2.9e-16 in float32, so also a 'wrong value', not just NaN)."""
    run_poisoned(_POISON_SCRIPT, "90")


def _args(**kw):
    x, w, b, r = make(1, 16, 32, 6, 6, seed=1, with_residual=True)
    a = dict(x=x, u=ops.winograd_weight(w), bias=b, residual=r)
    a.update(kw)
    return a


@pytest.mark.parametrize("change, needle", [
    (lambda: dict(x=torch.randn(16, 6, 6)), "x must be a 4-d float32"),
    (lambda: dict(x=torch.randn(1, 16, 6, 6).double()), "x must be a 4-d float32"),
    (lambda: dict(x=torch.randn(1, 16, 6, 6)), "x must be channels_last"),
    (lambda: dict(u=torch.randn(36, 8, 32)), "u must be the contiguous float32 transformed weight"),
    (lambda: dict(u=torch.randn(32, 16, 36).transpose(0, 2)), "u must be the contiguous float32 transformed weight"),
    (lambda: dict(x=torch.randn(1, 12, 6, 6).contiguous(memory_format=torch.channels_last),
                  u=torch.randn(36, 12, 32)), "multiples of 16"),
    (lambda: dict(bias=torch.randn(31)), "bias must be a float32 vector of the 32 output channels"),
    (lambda: dict(residual=torch.randn(1, 32, 6, 5).contiguous(memory_format=torch.channels_last)),
     "residual must be a channels_last float32"),
    (lambda: dict(residual=torch.randn(1, 32, 6, 6)), "residual must be a channels_last float32"),
    (lambda: dict(u=torch.randn(16, 8, 32)), r"u must be the contiguous float32 transformed weight \[36, C, K\] or "
                                               r"\[16, C, K\]"),
])
def test_bad_arguments_are_clear_errors(change, needle):
    a = _args(**change())
    with pytest.raises(RuntimeError, match=needle):
        ops.winograd3x3(a["x"], a["u"], a["bias"], a["residual"], True)


@pytest.mark.parametrize("w", [torch.randn(8, 8, 1, 1), torch.randn(8, 8, 3, 3).double(), torch.randn(8, 3, 3),
                               torch.randn(8, 8, 3, 3).half()])
def test_weight_transform_bad_arguments(w):
    with pytest.raises(RuntimeError, match=r"w must be a float32 or bfloat16 CPU weight \[K, C, 3, 3\]"):
        ops.winograd_weight(w)


@pytest.mark.parametrize("with_residual", [False, True])
def test_opcheck(with_residual):
    a = _args()
    torch.library.opcheck(torch.ops.resnet_ext.winograd3x3.default,
                          (a["x"], a["u"], a["bias"], a["residual"] if with_residual else None, True))
    torch.library.opcheck(torch.ops.resnet_ext.winograd_weight.default, (torch.randn(32, 16, 3, 3),))
    if ops.winograd_f23_supported():
        u2 = ops.winograd_weight(torch.randn(32, 16, 3, 3), 2)
        torch.library.opcheck(torch.ops.resnet_ext.winograd3x3.default,
                              (a["x"], u2, a["bias"], a["residual"] if with_residual else None, True))
        torch.library.opcheck(torch.ops.resnet_ext.winograd_weight.default, (torch.randn(32, 16, 3, 3), 2))


def _frozen_pair(arch):
    tv = randomize_bn(tv_model(arch, num_classes=10)).eval()
    ours = resnet_ext.freeze(resnet_ext.from_torchvision(tv))
    return ours.to(memory_format=torch.channels_last), tv.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("arch, shape, expected, f23", [
    # layers 1-3 (16+ tiles of 4x4); layer 4's 7x7 has 4: oneDNN. Layer 3 (49 tiles of 2x2, 16 of 4x4:
    # 16 * 49 - 36 * 16 = 208 extra multiplies per weight element) by F(2x2)
    ("resnet50", (1, 3, 224, 224), 11, 5),
    ("resnet50", (2, 3, 224, 224), 11, 0),  # layer 3: 416, F(4x4)
    ("resnet50", (4, 3, 224, 224), 13, 0),  # all 13 stride-1 3x3 convs, by F(4x4)
    ("resnet18", (1, 3, 224, 224), 10, 3),  # layers 1-3; layer 3's three by F(2x2)
    ("resnet18", (2, 3, 64, 80), 4, 0),     # BasicBlock layer 1 (40 tiles), its tails with the residual; layer 2: 12
    ("resnet50", (1, 3, 32, 32), 0, 0),     # too few tiles anywhere
])
def test_frozen_model_takes_winograd_where_it_pays_and_matches_torchvision(arch, shape, expected, f23):
    """fp32 F(2x2) only on CPUs with AVX-512 (`winograd_tile`); elsewhere those units run F(4x4)."""
    ours, tv = _frozen_pair(arch)
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = tv(x)
        for _ in range(2):  # record, replay
            units.reset_path_counts()
            y = ours(x)
            counts = resnet_ext.path_counts()
            assert counts.get("winograd", 0) == expected, counts
            assert counts.get("winograd_f23", 0) == (f23 if ops.winograd_f23_supported() else 0), counts
            # the program's fp32 F(2x2) units are those with a [16, C, K] transformed weight
            program = list(state.of(ours).programs[2].values())[-1][0]
            assert sum(wb[0] is cpu.WINO and wb[1].shape[0] == 16 for wb in program) == counts.get("winograd_f23", 0)
            assert rel_err(y, ref) < 1e-5


def test_switch_off_and_on_again():
    """cpu_winograd(False) holds from the next forward of an input size already planned, and back on again."""
    ours, tv = _frozen_pair("resnet50")
    x = torch.randn(1, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = tv(x)
        ours(x)
        assert resnet_ext.cpu_winograd() is True
        try:
            assert resnet_ext.cpu_winograd(False) is True
            units.reset_path_counts()
            y = ours(x)
            assert "winograd" not in resnet_ext.path_counts() and rel_err(y, ref) < 1e-4
        finally:
            assert resnet_ext.cpu_winograd(True) is False
        units.reset_path_counts()
        ours(x)
        assert resnet_ext.path_counts().get("winograd", 0) > 0
    with pytest.raises(TypeError, match="enabled"):
        resnet_ext.cpu_winograd(0)


def test_concurrent_forwards_from_two_threads():
    """Each calling thread has its own workspace: two threads running the same frozen model at once (the op
    releases the GIL) each get their own input's answer."""
    import threading
    ours, _ = _frozen_pair("resnet18")
    xs = [torch.randn(2, 3, 96, 96).contiguous(memory_format=torch.channels_last) for _ in range(2)]
    units.reset_path_counts()
    with torch.no_grad():
        expected = [ours(x) for x in xs]
    assert resnet_ext.path_counts().get("winograd", 0) > 0
    results, errors = [[], []], []

    def run(i):
        try:
            with torch.no_grad():
                for _ in range(5):
                    results[i].append(ours(xs[i]))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(2):
        # Not bitwise: a GEMM may split its work differently on another thread.
        assert all(rel_err(y, expected[i]) < 1e-6 for y in results[i])


# ---- bfloat16: F(2x2, 3x3) on AVX512-BF16 ------------------------------------------------------------------------

bf16_only = pytest.mark.skipif(not ops.winograd_bf16_supported(), reason="this CPU has no AVX512-BF16")


def make_bf16(n, c, k, h, w, seed, with_residual=False):
    x, wt, b, r = make(n, c, k, h, w, seed, with_residual)
    return (x.relu().bfloat16(), wt.bfloat16().contiguous(memory_format=torch.channels_last), b,
            None if r is None else r.bfloat16())


def torch_bf16_error(x, w, b, r, relu, ref):
    """The error of torch's own bf16 convolution (bf16 weight, bf16 in and out, fp32 sums), as a bf16 model
    computes it: the scale a bf16 result is judged on."""
    out = F.conv2d(x, w.bfloat16(), b.bfloat16(), padding=1)
    if r is not None:
        out = out + r
    out = torch.relu(out) if relu else out
    return rel_err(out, ref), rel_norm_err(out, ref)


def rel_norm_err(a, b):
    """||a - b|| / ||b|| in float64 (inf where a has a NaN or inf)."""
    a64, b64 = a.detach().double(), b.detach().double()
    return ((a64 - b64).norm() / b64.norm()).item() if torch.isfinite(a64).all() else float("inf")


@bf16_only
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_bf16_matches_float64_within_torchs_bf16_error(shape, with_residual, relu):
    """Against float64 on the bf16 input and the fp32 weight (as a frozen bf16 model has them), judged on torch's
    own bf16 convolution's error on the same operands: by norm and by the largest element at most 3x (measured
    here 1.0-2.4x by norm, 0.7-2.3x by the largest element: the transformed tiles and weights are rounded to bf16
    where the direct convolution rounds only the weight and output; in a whole model the rounding of every
    activation dominates, see the model test below) and below 2e-2 of the largest output. A wrong tap or a missed
    tile is off by the output's own size."""
    x, w, b, r = make_bf16(*shape, seed=sum(shape), with_residual=with_residual)
    y = ops.winograd3x3(x, ops.winograd_weight(w.bfloat16()), b, r, relu)
    assert y.dtype == torch.bfloat16 and y.shape == (shape[0], shape[2], shape[3], shape[4])
    assert y.is_contiguous(memory_format=torch.channels_last)
    ref = reference(x.float(), w, b, None if r is None else r.float(), relu)
    err, norm_err = rel_err(y, ref), rel_norm_err(y, ref)
    torch_err, torch_norm_err = torch_bf16_error(x, w, b, r, relu, ref)
    assert err < 2e-2 and err < 3 * torch_err and norm_err < 3 * torch_norm_err, (err, torch_err, norm_err,
                                                                                    torch_norm_err)


@bf16_only
def test_bf16_bias_may_be_bf16():
    x, w, b, r = make_bf16(2, 32, 48, 9, 7, seed=5, with_residual=True)
    u = ops.winograd_weight(w.bfloat16())
    assert torch.equal(ops.winograd3x3(x, u, b.bfloat16(), r, True),
                       ops.winograd3x3(x, u, b.bfloat16().float(), r, True))


# The F(2x2, 3x3) matrices, written out here as the test's own oracle.
G2 = torch.tensor([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=torch.float64)
BT2 = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float64)
AT2 = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float64)


def test_f23_matrices_compute_the_convolution_in_float64():
    d, w = torch.randn(4, 4, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    y = AT2 @ ((G2 @ w @ G2.T) * (BT2 @ d @ BT2.T)) @ AT2.T
    direct = F.conv2d(d.view(1, 1, 4, 4), w.view(1, 1, 3, 3)).view(2, 2)
    assert torch.allclose(y, direct, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k, c", [(64, 64), (17, 6), (512, 256), (1, 2)])
def test_bf16_weight_transform_matches_float64(k, c):
    """[16, C / 2, K, 2]: channel pairs interleaved; each element G w G^T of the bf16 weight, rounded once."""
    w = torch.randn(k, c, 3, 3).bfloat16()
    u = ops.winograd_weight(w)
    assert u.dtype == torch.bfloat16 and u.shape == (16, c // 2, k, 2) and u.is_contiguous()
    ref = torch.einsum("ai,kcij,bj->abck", G2, w.double(), G2).reshape(16, c, k)
    unpacked = u.permute(0, 1, 3, 2).reshape(16, c, k)
    assert rel_err(unpacked, ref) < 2 ** -8
    assert torch.equal(unpacked, ref.bfloat16())  # rounded once, to nearest


def test_bf16_weight_needs_even_channels():
    with pytest.raises(RuntimeError, match="even number of input channels, got 5"):
        ops.winograd_weight(torch.randn(8, 5, 3, 3).bfloat16())


@bf16_only
def test_bf16_nan_and_inf_propagate():
    x, w, b, _ = make_bf16(1, 16, 16, 9, 9, seed=3)
    x[0, 5, 4, 4] = float("nan")
    x[0, 7, 1, 1] = float("inf")
    y = ops.winograd3x3(x, ops.winograd_weight(w.bfloat16()), b, None, True)
    ref = F.conv2d(x.float(), w.float(), b, padding=1).relu()
    assert (y.isnan() | ~ref.isnan()).all()  # NaN wherever the reference has one
    assert not torch.isfinite(y[0, :, 3:6, 3:6]).any()


@pytest.mark.skipif(ops.winograd_bf16_supported(), reason="this CPU has AVX512-BF16")
def test_bf16_without_avx512_bf16_is_a_clear_error():
    x, w, b, _ = make_bf16(1, 16, 16, 4, 4, seed=1)
    with pytest.raises(RuntimeError, match=r"bfloat16 F\(2x2, 3x3\) needs a CPU with AVX512-BF16"):
        ops.winograd3x3(x, ops.winograd_weight(w.bfloat16()), b, None, True)


@pytest.mark.skipif(ops.winograd_f23_supported(), reason="this CPU has AVX-512")
def test_f23_fp32_without_avx512_is_a_clear_error():
    x, w, b, _ = make(1, 16, 16, 4, 4, seed=1)
    with pytest.raises(RuntimeError, match=r"float32 F\(2x2, 3x3\) needs a CPU with AVX-512"):
        ops.winograd3x3(x, ops.winograd_weight(w, 2), b, None, True)


def _bf16_args(**kw):
    x, w, b, r = make_bf16(1, 16, 32, 6, 6, seed=1, with_residual=True)
    a = dict(x=x, u=ops.winograd_weight(w.bfloat16()), bias=b, residual=r)
    a.update(kw)
    return a


@bf16_only
@pytest.mark.parametrize("change, needle", [
    (lambda: dict(u=ops.winograd_weight(torch.randn(32, 16, 3, 3))), "u must be the contiguous bfloat16"),
    (lambda: dict(u=torch.zeros(16, 16, 32, 2, dtype=torch.bfloat16)), "u must be the contiguous bfloat16"),
    (lambda: dict(u=torch.zeros(16, 8, 32, 2, dtype=torch.bfloat16)[:, :, :, :1]), "u must be the contiguous"),
    (lambda: dict(bias=torch.randn(32).half()), "bias must be a float32 or bfloat16 vector of the 32"),
    (lambda: dict(residual=torch.randn(1, 32, 6, 6).contiguous(memory_format=torch.channels_last)),
     "residual must be a channels_last bfloat16"),
    (lambda: dict(x=torch.randn(1, 16, 6, 6).contiguous(memory_format=torch.channels_last)),
     "u must be the contiguous float32"),  # a float32 x takes the float32 weight
])
def test_bf16_bad_arguments_are_clear_errors(change, needle):
    a = _bf16_args(**change())
    with pytest.raises(RuntimeError, match=needle):
        ops.winograd3x3(a["x"], a["u"], a["bias"], a["residual"], True)


@bf16_only
@pytest.mark.parametrize("with_residual", [False, True])
def test_bf16_opcheck(with_residual):
    a = _bf16_args()
    torch.library.opcheck(torch.ops.resnet_ext.winograd3x3.default,
                          (a["x"], a["u"], a["bias"], a["residual"] if with_residual else None, True))
    torch.library.opcheck(torch.ops.resnet_ext.winograd_weight.default, (torch.randn(32, 16, 3, 3).bfloat16(),))


_POISON_SCRIPT_BF16 = r"""
import torch
from resnet_ext import ops
torch.manual_seed(0)
for n, c, k, h, w in [(1, 16, 32, 13, 11), (2, 64, 64, 30, 30), (1, 512, 512, 7, 7)]:
    x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last).bfloat16()
    wt = (torch.randn(k, c, 3, 3) * (2 / (9 * c)) ** 0.5).bfloat16()
    b = torch.randn(k)
    y = ops.winograd3x3(x, ops.winograd_weight(wt), b, None, False)
    ref = torch.nn.functional.conv2d(x.double(), wt.double(), b.double(), padding=1)
    err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    assert torch.isfinite(y).all() and err < 2e-2, err
print("ok")
"""


@bf16_only
def test_bf16_every_output_written_under_poisoned_allocations():
    run_poisoned(_POISON_SCRIPT_BF16, "90")


@bf16_only
@pytest.mark.parametrize("arch, shape, layout, expected", [
    ("resnet50", (1, 3, 224, 224), "channels_last", 11),   # layers 1-3; layer 4's 7x7 has 16 tiles of 2x2
    ("resnet50", (2, 3, 224, 224), "nchw", 13),            # every stride-1 3x3 conv: layer 4 has 32 tiles
    ("resnet18", (2, 3, 64, 80), "channels_last", 7),      # layers 1-2 (160 and 40 tiles), the tails too
    ("resnet50", (32, 3, 32, 32), "channels_last", 13),    # layer 4's 1x1 maps (either layout): a tile each
])
def test_frozen_bf16_model_takes_winograd_and_stays_within_torchvisions_bf16_error(arch, shape, layout, expected,
                                                                                  monkeypatch):
    """freeze(dtype=torch.bfloat16): every stride-1 3x3 conv of 32 or more 2x2 tiles by F(2x2, 3x3), and the logits'
    distance from float64 within 2x of torchvision's own model in bf16 and of the same frozen model on oneDNN
    alone. Measured over 4 seeds each (resnet18/50, 10 and 1000 classes, batch 2, 128x128): on average 0.71-0.86x
    torchvision bf16's error and 1.03-1.28x oneDNN's; single draws up to 1.6x and 1.8x. A wrong tap or tile would
    be off by the logits' own size."""
    monkeypatch.setattr(cpu, "AMX_BF16", False)  # on an AMX CPU the plan leaves them to oneDNN: the op still runs
    torch.manual_seed(sum(shape))  # fixed draws (errors 0.49-0.78x torchvision bf16's, 0.69-1.07x oneDNN's)
    tv = randomize_bn(getattr(torchvision.models, arch)(num_classes=10)).eval()  # the builder's draws, then x's
    x = torch.randn(*shape)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = copy.deepcopy(tv).double()(x.double())
        tv_err = rel_err(copy.deepcopy(tv).bfloat16()(x.bfloat16()), ref)
        errs = {}
        for on in (True, False):
            ours = resnet_ext.freeze(resnet_ext.from_torchvision(tv), dtype=torch.bfloat16)
            try:
                resnet_ext.cpu_winograd(on)
                for _ in range(2):  # record, replay
                    units.reset_path_counts()
                    y = ours(x)
                    assert y.dtype == torch.float32
                    assert resnet_ext.path_counts().get("winograd", 0) == (expected if on else 0)
            finally:
                resnet_ext.cpu_winograd(True)
            errs[on] = rel_err(y, ref)
    assert errs[True] <= 2 * tv_err and errs[True] <= 2 * errs[False], (errs, tv_err)


def test_cpu_amx_bf16_agrees_with_the_kernels_cpu_flags():
    """ops.cpu_amx_bf16 (cpuid and XCR0) against Linux's own view of the CPU, where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo")
    assert ops.cpu_amx_bf16() == ("amx_bf16" in flags and "amx_tile" in flags)


@bf16_only
def test_frozen_bf16_plan_leaves_3x3_convs_to_onednn_on_amx_cpus(monkeypatch):
    """Where oneDNN has AMX tiles its bf16 convolutions are faster than the op: the plan takes no Winograd unit."""
    monkeypatch.setattr(cpu, "AMX_BF16", True)
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.freeze(resnet_ext.from_torchvision(tv), dtype=torch.bfloat16)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        units.reset_path_counts()
        y = ours(x)
        assert "winograd" not in resnet_ext.path_counts(), resnet_ext.path_counts()
        assert rel_err(y, tv(x)) < 5e-2
