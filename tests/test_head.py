"""The frozen CPU mode's head as one op: `ops.pool_linear` (F.linear(x.float().mean((2, 3)), weight, bias)) against a
float64 reference for every batch-row count of its GEMV blocks, both layouts, odd channel and class counts, NaN and
inf propagated, clear errors naming the argument; the plan's rule (`engine.cpu.head_fits`): where it runs, that it
answers as the modules' path does, and that anything it does not take (a swapped fc weight, another pool size,
batches above HEAD_MAX_BATCH) keeps the modules' answer or error. Also `_C.all_bounded`, the input check it sits
beside, on the inputs its own pass takes and the ones it hands to ATen."""
import copy
import os

import pytest
import torch
from torch import nn

import resnet_ext
from resnet_ext import ops
from resnet_ext._C_loader import _C
from resnet_ext.engine import cpu, units
from conftest import change_fc, frozen_pair, randomize_bn, rel_err, run_poisoned, tv_model

f32_only = pytest.mark.skipif(not ops.conv1x1_supported(torch.float32), reason="this CPU has no AVX-512")
own_loops = pytest.mark.skipif(not ops.pool_linear_supported(), reason="this CPU runs pool_linear as ATen's ops")


def _reference(x, w, b):
    return nn.functional.linear(x.double().mean((2, 3)), w.double(), None if b is None else b.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("c, h, w_, o", [(2048, 7, 7, 1000), (129, 2, 3, 33), (17, 1, 1, 7), (1, 4, 5, 3)],
                         ids=lambda v: str(v))
def test_pool_linear_matches_float64_for_every_row_count(dtype, layout, c, h, w_, o):
    """Batches 1 to 10: every GEMV block of 1..8 rows, and 8 + 2. The error is judged against ATen's own fp32 one
    (the same sums in another order) on the same data."""
    g = torch.Generator().manual_seed(c + o)
    for n in range(1, 11):
        x = torch.randn(n, c, h, w_, generator=g).to(dtype)
        if layout == "cl":
            x = x.contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(o, c, generator=g), torch.randn(o, generator=g)
        for bias in (b, None):
            ref = _reference(x, w, bias)
            got = ops.pool_linear(x, w, bias)
            assert got.dtype == torch.float32 and got.shape == (n, o)
            aten = nn.functional.linear(x.float().mean((2, 3)), w, bias)
            assert rel_err(got.double(), ref) <= 4 * rel_err(aten.double(), ref) + 1e-6, (n, bias is None)


def test_pool_linear_takes_any_strides_through_aten():
    """A view that is dense in neither layout (every other column) gives the same answer, by ATen's ops."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 64, 7, 14, generator=g)[..., ::2]
    w, b = torch.randn(10, 64, generator=g), torch.randn(10, generator=g)
    assert rel_err(ops.pool_linear(x, w, b).double(), _reference(x, w, b)) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_pool_linear_propagates_nan_and_inf(dtype, bad, layout):
    x = torch.randn(3, 48, 5, 5).to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    x[1, 40, 2, 3] = bad
    w = torch.rand(9, 48) + 0.1  # positive weights: an inf stays inf in every class
    y = ops.pool_linear(x, w, torch.zeros(9))
    ref = nn.functional.linear(x.float().mean((2, 3)), w)
    assert torch.isfinite(y[[0, 2]]).all()
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(torch.isinf(y), torch.isinf(ref))
    assert not torch.isfinite(y[1]).any()


def test_pool_linear_edges():
    """No rows (F.linear's empty answer), a strided bias and weight (read as their values), a 1x1 map and one
    channel (dense in both layouts)."""
    g = torch.Generator().manual_seed(4)
    w, b = torch.randn(5, 6, generator=g), torch.randn(10, generator=g)[::2]
    empty = ops.pool_linear(torch.randn(0, 6, 3, 3), w, b)
    assert empty.shape == (0, 5) and empty.dtype == torch.float32
    x = torch.randn(3, 6, 4, 4, generator=g)
    wt = torch.randn(6, 5, generator=g).t()
    assert rel_err(ops.pool_linear(x, wt, b).double(), _reference(x, wt, b)) < 1e-6
    for shape in ((2, 6, 1, 1), (2, 1, 3, 3)):
        x = torch.randn(shape, generator=g)
        w1 = torch.randn(5, shape[1], generator=g)
        assert rel_err(ops.pool_linear(x, w1, None).double(), _reference(x, w1, None)) < 1e-6


_POISON_SCRIPT = """
import torch
from torch import nn
from resnet_ext import ops
from resnet_ext.shapes import rel_err
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    for n in (1, 3, 8, 11):
        for cl in (False, True):
            x = torch.randn(n, 96, 7, 7).to(dtype)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            w, b = torch.randn(37, 96), torch.randn(37)
            ref = nn.functional.linear(x.double().mean((2, 3)), w.double(), b.double())
            assert rel_err(ops.pool_linear(x, w, b).double(), ref) < 1e-5, (dtype, n, cl)
print("ok")
"""


@own_loops
def test_every_output_written_under_poisoned_allocations():
    """glibc fills every fresh heap allocation with a byte pattern (MALLOC_PERTURB_): an output element the op did
    not write would keep it and fail the error bound (the pooled values' buffer starts zeroed: one left unwritten
    fails the bound too)."""
    run_poisoned(_POISON_SCRIPT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_pool_linear_opcheck(dtype, layout):
    x = torch.randn(2, 32, 3, 5).to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.resnet_ext.pool_linear.default, (x, torch.randn(7, 32), torch.randn(7)))
    torch.library.opcheck(torch.ops.resnet_ext.pool_linear.default, (x, torch.randn(7, 32), None))


@pytest.mark.parametrize("args, match", [
    (lambda: (torch.randn(2, 8, 3), torch.randn(4, 8), None), "x must be a 4-d"),
    (lambda: (torch.randn(2, 8, 3, 3).double(), torch.randn(4, 8), None), "x must be a 4-d float32 or bfloat16"),
    (lambda: (torch.randn(2, 8, 0, 3), torch.randn(4, 8), None), "x must have a height and width"),
    (lambda: (torch.randn(2, 8, 3, 3), torch.randn(4, 9), None), "weight must be a float32 matrix"),
    (lambda: (torch.randn(2, 8, 3, 3), torch.randn(4, 8).bfloat16(), None), "weight must be a float32 matrix"),
    (lambda: (torch.randn(2, 8, 3, 3), torch.randn(4, 8), torch.randn(5)), "bias must be a float32 vector of 4"),
    (lambda: (torch.randn(2, 8, 3, 3), torch.randn(4, 8), torch.randn(4).double()), "bias must be a float32"),
])
def test_pool_linear_errors_name_the_argument(args, match):
    with pytest.raises(RuntimeError, match=match):
        ops.pool_linear(*args())


# ---- In the frozen plan ------------------------------------------------------------------------------------------


@own_loops
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_frozen_head_runs_as_one_op_and_answers_as_the_modules(dtype, monkeypatch):
    """Batch 1 and HEAD_MAX_BATCH: counted `pool_linear` once per forward; the logits those of the modules' head
    (HEAD_MAX_BATCH -1) to fp32 rounding, and torchvision's (fp32) to the frozen mode's tolerance."""
    if dtype == torch.bfloat16 and not ops.conv1x1_supported(dtype):
        pytest.skip("this CPU has no AVX512-BF16")
    ours, tv = frozen_pair("resnet50", None if dtype == torch.float32 else dtype)
    for n in (1, cpu.HEAD_MAX_BATCH):
        x = torch.randn(n, 3, 64, 64).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            units.reset_path_counts()
            y = ours(x)
            assert resnet_ext.path_counts().get(cpu.HEAD) == 1
            with monkeypatch.context() as m:
                m.setattr(cpu, "HEAD_MAX_BATCH", -1)
                units.reset_path_counts()
                modules = ours(x)
                assert cpu.HEAD not in resnet_ext.path_counts()
            assert y.dtype == modules.dtype == torch.float32
            assert rel_err(y, modules) < 1e-5
            if dtype == torch.float32:
                assert rel_err(y, tv(x)) < 1e-4


@own_loops
def test_the_frozen_head_leaves_what_it_does_not_take_to_the_modules():
    """Above HEAD_MAX_BATCH, an fc weight swapped for a float64 one, and a pool to 2x2: the modules' path, with its
    answer or its error (torchvision's), never pool_linear."""
    ours, tv = frozen_pair("resnet18")
    with torch.no_grad():
        x = torch.randn(cpu.HEAD_MAX_BATCH + 1, 3, 32, 32)
        units.reset_path_counts()
        assert rel_err(ours(x), tv(x)) < 1e-4
        counts = resnet_ext.path_counts()
        assert counts.get("flat_forwards") == 1 and cpu.HEAD not in counts, counts
        x = x[:1]
        for m in (ours, tv):
            m.fc.weight = nn.Parameter(m.fc.weight.double())
        units.reset_path_counts()
        with pytest.raises(RuntimeError) as theirs:
            tv(x)
        with pytest.raises(type(theirs.value)):
            ours(x)
        assert cpu.HEAD not in resnet_ext.path_counts()
        for m in (ours, tv):
            m.fc.weight = nn.Parameter(m.fc.weight.float())
            m.avgpool.output_size = (2, 2)
        with pytest.raises(RuntimeError) as theirs:
            tv(x)
        with pytest.raises(type(theirs.value), match="shapes cannot be multiplied"):
            ours(x)
        for m in (ours, tv):
            m.avgpool.output_size = (1, 1)
        units.reset_path_counts()
        assert rel_err(ours(x), tv(x)) < 1e-4
        assert resnet_ext.path_counts().get(cpu.HEAD) == 1


@own_loops
@pytest.mark.parametrize("change, runs", [(None, True), ("no bias", True), ("strided weight", True),
                                          ("float64 weight", False), ("other in_features", False)])
def test_the_frozen_head_after_fc_changes(change, runs):
    """The fc changed after freeze (its bias dropped, its weight swapped through `.data`): the head runs as one op
    where it takes the fc as nn.Linear would (a strided weight read as its values), torchvision's answer; else the
    modules' path, torchvision's answer or its error."""
    ours, tv = frozen_pair("resnet18")
    change_fc((ours, tv), change)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        units.reset_path_counts()
        if runs:
            assert rel_err(ours(x), tv(x)) < 1e-4
        else:
            with pytest.raises(RuntimeError) as ref:
                tv(x)
            with pytest.raises(RuntimeError) as got:
                ours(x)
            assert str(got.value).split("\n")[0] == str(ref.value).split("\n")[0]
        assert resnet_ext.path_counts().get(cpu.HEAD, 0) == int(runs)


@f32_only
def test_the_last_unit_prefetches_the_fc_weight(no_amx):
    """Batch 1 (prefetch_pays): the plan's last unit, on resnet_ext's own op, is given the fc weight's range."""
    ours, _ = frozen_pair("resnet50")
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ours(x)
    program = next(iter(cpu._state.of(ours).programs[2].values()))[0]
    assert cpu._is_own(program[-1]) and program[-1][3] == ops.prefetch_range(ours.fc.weight)


@own_loops
def test_a_stale_fc_prefetch_after_a_weight_swap_changes_nothing(no_amx):
    """The plan keeps only the fc weight's address for the last unit's prefetch. After the weight is swapped (the old
    one, 8 MB with 1000 classes, freed and unmapped) the plan still holds the old range, the next forwards prefetch
    it, and they give torchvision's answer with the new weight."""
    tv = randomize_bn(tv_model("resnet50")).eval()
    ours = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)))
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ours(x)
        ours(x)  # planned, with the prefetch of the fc weight as it was
        program = next(iter(cpu._state.of(ours).programs[2].values()))[0]
        old = program[-1][3]
        assert old == cpu.fc_prefetch(ours.fc)
        w = torch.randn_like(tv.fc.weight)
        for m in (ours, tv):
            m.fc.weight = nn.Parameter(w.clone())
        for _ in range(2):
            units.reset_path_counts()
            assert rel_err(ours(x), tv(x)) < 1e-4
            assert resnet_ext.path_counts().get(cpu.HEAD) == 1
        program = next(iter(cpu._state.of(ours).programs[2].values()))[0]
        assert program[-1][3] == old != cpu.fc_prefetch(ours.fc)


def test_fc_prefetch_is_the_weights_own_bytes():
    """A contiguous fc weight that is a view into a larger buffer: its own address and bytes, not the buffer's."""
    fc = nn.Linear(16, 4)
    buf = torch.randn(200)
    fc.weight.data = buf[8:72].view(4, 16)
    assert cpu.fc_prefetch(fc) == (fc.weight.data_ptr(), 64 * 4) != ops.prefetch_range(buf)
    assert cpu.fc_prefetch(nn.Identity()) is None


def test_pool_linear_supported_agrees_with_the_cpu_flags():
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo")
    flags = open("/proc/cpuinfo").read().split()
    want = all(f in flags for f in ("avx512f", "avx512bw", "avx512vl"))
    assert ops.pool_linear_supported() == want


# ---- all_bounded --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_all_bounded_on_every_path(dtype):
    """Its own pass on dense tensors in any layout (one chunk, and chunks across threads; a view at an offset into
    its storage), ATen's for the rest (a strided view); each finds a NaN, inf or -inf at its first or last element
    (for the offset view, the storage's first element is outside it: only the last counts), and the largest finite
    value is finite (no sum to overflow); with a bound, the values from 2^bound on count as out of bounds."""
    all_finite = _C.all_bounded  # the default bound lies past every dtype's range
    views = {"dense": ((2, 3, 17, 19), lambda t: t), "large": (((1 << 19) + 5,), lambda t: t),
             "channels_last": ((2, 5, 4, 3), lambda t: t.permute(0, 3, 1, 2)),
             "transposed": ((7, 5), lambda t: t.t()), "strided": ((8, 9), lambda t: t[:, ::2]),
             "offset": ((40,), lambda t: t[3:])}
    for name, (shape, view) in views.items():
        assert all_finite(view(torch.randn(shape).to(dtype))), name
        for bad in (float("nan"), float("inf"), -float("inf")):
            for at in (0, -1):
                base = torch.randn(shape).to(dtype)
                base.view(-1)[at] = bad
                assert all_finite(view(base)) == (name == "offset" and at == 0), (name, bad, at)
    fi = torch.finfo(dtype)  # the extremes of the exponent field short of all ones: finite
    for v in (fi.max, -fi.max, fi.tiny, fi.tiny * fi.eps, -0.0):
        assert all_finite(torch.full((70000,), v, dtype=dtype)), v
    for log2 in (-3, 0, 5, 64):
        edge = 2.0 ** log2
        if edge >= fi.max:
            continue
        for name, (shape, view) in views.items():
            base = torch.rand(shape).to(dtype) * edge * 0.5
            assert _C.all_bounded(view(base), log2), (name, log2)
            base.view(-1)[-1] = -edge
            assert not _C.all_bounded(view(base), log2), (name, log2)
            base.view(-1)[-1] = edge * (1 - fi.eps)
            assert _C.all_bounded(view(base), log2), (name, log2)


def test_bounded_bfloat16_is_the_cast_or_none():
    """freeze(dtype=torch.bfloat16)'s input check and cast in one pass: bitwise x.to(torch.bfloat16) (ties to even,
    the largest fp32 values rounding to inf, subnormals, -0) with x's strides, or None for a NaN, inf or -inf at the
    first, a middle or the last element; dense tensors in either layout, across threads' chunks, an offset view, and
    a strided view (ATen's path)."""
    from resnet_ext._C_loader import _C
    bits = torch.tensor([0x3f808000, 0x3f818000, 0x3f80ffff, 0x00008000, 0x80018000, 0x7f7fffff, 0x7f7f8000,
                         0xff7fffff, 0x00000001, 0x80000000], dtype=torch.int64).to(torch.int32)
    views = {"ties": (lambda: bits.view(torch.float32).clone(), lambda t: t),
             "dense": (lambda: torch.randn(2, 3, 17, 19), lambda t: t),
             "wide": (lambda: torch.randn(70001) * 1e30, lambda t: t),
             "channels_last": (lambda: torch.randn(2, 5, 4, 3), lambda t: t.permute(0, 3, 1, 2)),
             "offset": (lambda: torch.randn(40), lambda t: t[3:]),
             "strided": (lambda: torch.randn(8, 9), lambda t: t[:, ::2]),
             "empty": (lambda: torch.randn(0, 3), lambda t: t)}
    for name, (make, view) in views.items():
        x = view(make())
        y = _C.bounded_bfloat16(x)
        assert y is not None and y.dtype == torch.bfloat16 and y.shape == x.shape, name
        assert torch.equal(y.view(torch.int16), x.to(torch.bfloat16).view(torch.int16)), name
        if name != "strided":
            assert y.stride() == x.stride(), name
        for bad in (float("nan"), float("inf"), -float("inf")):
            for at in {0, x.numel() // 2, x.numel() - 1} if x.numel() else ():
                if name == "offset":  # the bad value inside the view, the storage's first values outside it
                    base = make()
                    base[3 + at] = bad
                    z = view(base)
                else:
                    flat = x.contiguous().reshape(-1).clone()
                    flat[at] = bad
                    z = view_like(flat.reshape(x.shape), x)
                assert _C.bounded_bfloat16(z) is None, (name, bad, at)
    neg = torch._neg_view(torch.randn(5, 7))  # a lazy negation: the cast applies it
    assert neg.is_neg() and torch.equal(_C.bounded_bfloat16(neg), neg.to(torch.bfloat16))


def view_like(values, like):
    """A copy of `values` (like's shape) with like's strides, in a buffer as large as those strides reach."""
    span = 1 + sum((n - 1) * st for n, st in zip(like.shape, like.stride()))
    out = torch.empty(span).as_strided(like.shape, like.stride())
    out.copy_(values)
    return out
