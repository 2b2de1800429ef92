"""The default mode's BN scale and shift are reused from one CPU forward to the next only where every BN tensor is,
byte for byte, what it was (`ops.bn_affine_pairs(memo=...)`, `_C.same_bytes`): writes through `.data` or numpy
leave version counters as they were, so after each such change the output must be the one a model that never ran
gives (bitwise) and torchvision's, or torchvision's error."""
import copy

import pytest
import torch

import resnet_ext
from resnet_ext import ops
from resnet_ext._C_loader import _C
from resnet_ext.engine import state
from conftest import randomize_bn, rel_err, tv_model

CL = torch.channels_last


def _pair(dtype, layout):
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval().to(dtype)
    if layout == "channels_last":
        tv = tv.to(memory_format=CL)
    return resnet_ext.from_torchvision(tv), tv  # the same Parameter and buffer objects


def _bn(m):
    return m.layer3[0].bn2


MUTATIONS = {  # each on tv's BN objects, which ours shares; none bumps a version counter
    "mean_elements": lambda b: b.running_mean.data[:16].add_(3),
    "var_copy": lambda b: b.running_var.data.copy_(b.running_var * 3),
    "var_numpy": lambda b: b.running_var.numpy().__imul__(2.0) if b.running_var.dtype == torch.float32
    else b.running_var.data.mul_(2),
    "weight_new_storage": lambda b: setattr(b.weight, "data", -b.weight.data),
    "bias_nan": lambda b: b.bias.data.__setitem__(7, float("nan")),
    "eps": lambda b: setattr(b, "eps", 0.25),
    "weight_none": lambda b: setattr(b, "weight", None),
    "var_float64": lambda b: setattr(b.running_var, "data", b.running_var.data.double()),
    "mean_as_row": lambda b: setattr(b.running_mean, "data", b.running_mean.data.view(1, -1)),
    "bias_longer": lambda b: setattr(b.bias, "data", torch.zeros(b.num_features + 1, dtype=b.bias.dtype)),
    "var_storage_freed": lambda b: b.running_var.untyped_storage().resize_(0),  # as FSDP-style code frees it
    "mean_zero_tensor": lambda b: setattr(b, "running_mean", torch._efficientzerotensor(
        b.num_features, dtype=b.running_mean.dtype)),
    "all_bns_doubled": None,  # every BN's bias through .data (the whole concatenation changes)
}


def _run(m, x):
    with torch.no_grad():
        try:
            return m(x)
        except RuntimeError as e:
            return e


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("path", ["flat", "modules"])
@pytest.mark.parametrize("name", list(MUTATIONS))
def test_a_bn_changed_behind_autograd_is_seen(name, path, layout, dtype):
    ours, tv = _pair(dtype, layout)
    if path == "modules":  # a hook: the flat forward declines, the module path keeps its own reuse
        ours.layer4.register_forward_hook(lambda m, i, o: None)
    x = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(1)).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    before = _run(ours, x)
    assert not isinstance(before, Exception)
    # Reuse is armed, but where torchvision's blocks run (NCHW maps and weights on the module path: no batch).
    assert ("bn_affine" in state.of(ours).memo) != (path == "modules" and layout == "nchw")
    with torch.no_grad():
        if MUTATIONS[name] is None:
            for m in tv.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.bias.data.mul_(2)
        else:
            MUTATIONS[name](_bn(tv))
            if name in ("eps", "weight_none", "mean_zero_tensor"):  # module attributes, not shared tensors
                MUTATIONS[name](_bn(ours))
    out, ref = _run(ours, x), _run(tv, x)
    if isinstance(ref, Exception):
        assert isinstance(out, RuntimeError) and str(out) == str(ref), (out, ref)
        return
    assert not isinstance(out, Exception), out
    state.of(ours).memo.clear()
    fresh = _run(ours, x)  # computed afresh
    assert torch.equal(out.isnan(), fresh.isnan()) and torch.equal(out.nan_to_num(), fresh.nan_to_num())
    assert not torch.equal(out.nan_to_num(), before.nan_to_num())  # the change shows: a stale reuse would not
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert torch.equal(out.isnan(), ref.isnan()) and rel_err(out.nan_to_num(), ref.nan_to_num()) < tol


def test_an_unchanged_model_reuses_its_scale_and_shift():
    ours, tv = _pair(torch.float32, "channels_last")
    x = torch.randn(1, 3, 32, 32).contiguous(memory_format=CL)
    first = _run(ours, x)
    kept = state.of(ours).memo["bn_affine"][2]
    second = _run(ours, x)
    assert state.of(ours).memo["bn_affine"][2] is kept and torch.equal(first, second)
    with torch.no_grad():
        _bn(tv).running_mean.data[0] += 1  # one element of one BN
    _run(ours, x)
    assert state.of(ours).memo["bn_affine"][2] is not kept


def test_inference_mode_then_a_plain_forward_of_another_dtype():
    """The snapshot made under inference_mode is resized in place by a later call outside it (found in review: an
    inference tensor there raised 'Inplace update to inference tensor outside InferenceMode')."""
    ours, tv = _pair(torch.float32, "nchw")
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        ours(x)
    for m in (ours, tv):
        m.bfloat16()
    with torch.no_grad():
        assert torch.equal(ours(x.bfloat16()), copy.deepcopy(ours)(x.bfloat16()))
        assert rel_err(ours(x.bfloat16()), tv(x.bfloat16())) < 3e-2


def test_a_trace_reads_bn_afresh_not_a_reused_result():
    ours, _ = _pair(torch.float32, "nchw")
    x = torch.randn(1, 3, 32, 32)
    _run(ours, x)  # reuse armed
    traced = torch.jit.trace(ours, x, check_trace=False)
    with torch.no_grad():
        _bn(ours).running_var.data.mul_(4)
        assert rel_err(traced(x), copy.deepcopy(ours)(x)) < 1e-4


def test_a_trace_of_the_fold_records_it_not_the_memo():
    """A model's trace no longer reaches the engine; the memo's guard still holds for the op traced on its own."""
    ours, _ = _pair(torch.float32, "nchw")
    pairs = [(ours.layer3[0].conv2.requires_grad_(False), _bn(ours).requires_grad_(False))]  # trace constants
    memo = {}
    with torch.no_grad():
        ops.bn_affine_pairs(pairs, conv_bias=False, memo=memo)  # armed: the next call with these bytes reuses

        def scale(t):
            return t * ops.bn_affine_pairs(pairs, conv_bias=False, memo=memo)[0][0]
        t = torch.ones(256)
        traced = torch.jit.trace(scale, t, check_trace=False)
        _bn(ours).running_var.data.mul_(4)
        assert torch.equal(traced(t), ops.bn_affine_pairs(pairs, conv_bias=False)[0][0])


def test_same_bytes():
    snap = torch.empty(0, dtype=torch.uint8)
    a, b = torch.arange(6.0), torch.ones(3, dtype=torch.bfloat16)
    assert not _C.same_bytes([a, None, b], snap)  # first call: records
    assert _C.same_bytes([a, None, b], snap)
    assert not _C.same_bytes([a, b, None], snap)  # where the None is
    assert _C.same_bytes([a, b, None], snap)
    assert not _C.same_bytes([a.view(2, 3), b, None], snap)  # same bytes, another shape
    assert not _C.same_bytes([a.view(torch.int32).view(2, 3), b, None], snap)  # same bytes, another dtype
    a[5] = -0.0
    c = a.clone()
    assert not _C.same_bytes([c, b], snap) and _C.same_bytes([c, b], snap)
    c[5] = 0.0  # == -0.0, other bytes
    assert not _C.same_bytes([c, b], snap)
    c[5] = float("nan")
    assert not _C.same_bytes([c, b], snap) and _C.same_bytes([c, b], snap)  # a NaN is its bytes
    strided = torch.arange(8.0)[::2]
    assert not _C.same_bytes([strided], snap) and not _C.same_bytes([strided], snap)  # never comparable
    assert snap.numel() == 0
    z = torch.randn(3, dtype=torch.complex64)
    assert not _C.same_bytes([z], snap) and _C.same_bytes([z], snap)
    assert not _C.same_bytes([z.conj()], snap) and not _C.same_bytes([z.conj()], snap)  # a lazy conjugate
    zero = torch._efficientzerotensor(4)
    assert not _C.same_bytes([zero], snap) and not _C.same_bytes([zero], snap)  # no memory to compare
    freed = torch.ones(4)
    assert not _C.same_bytes([freed], snap) and _C.same_bytes([freed], snap)
    freed.untyped_storage().resize_(0)  # the tensor still says 4 elements
    assert not _C.same_bytes([freed], snap) and not _C.same_bytes([freed], snap) and snap.numel() == 0
    with pytest.raises(RuntimeError, match="snapshot must be a 1-d contiguous uint8 CPU tensor"):
        _C.same_bytes([a], torch.empty(0))


def test_allocated():
    """Whether a storage holds every element a tensor's sizes and strides reach, whatever the strides."""
    freed = torch.ones(4)
    freed.untyped_storage().resize_(0)
    tail = torch.ones(8)[4:]
    tail.untyped_storage().resize_(6 * 4)  # offset 4 + 4 elements need 8
    assert _C.allocated([torch.ones(3), None, torch.tensor(1.5).expand(256), torch.arange(8.0)[::2],
                         torch.ones(4, 6).t(), torch.empty(0)])
    assert not _C.allocated([torch.ones(3), freed]) and not _C.allocated([tail])
    assert _C.allocated([tail[:2]])


def test_snapshot_tensors_are_the_recorded_values():
    snap = torch.empty(0, dtype=torch.uint8)
    a, b = torch.randn(5), torch.randn(2, 3).to(torch.bfloat16)
    assert _C.snapshot_tensors(snap, 3) == []  # nothing recorded
    _C.same_bytes([a, None, b], snap)
    recorded = a.clone()
    a.add_(1)  # the live tensor moves on; the copies are what was recorded
    got = _C.snapshot_tensors(snap, 3)
    assert torch.equal(got[0], recorded) and got[1] is None and torch.equal(got[2], b) and got[2].dtype == b.dtype
    with pytest.raises(RuntimeError, match="do not fill"):
        _C.snapshot_tensors(snap, 2)


@pytest.mark.parametrize("write", ["in_place", "data"])
def test_a_write_racing_with_the_scale_computation_is_not_kept(monkeypatch, write):
    """Another thread writes a BN (A -> B -> A, e.g. weights swapped in and out; in place, or through `.data`, which
    moves no version counter) while a forward computes the batch's scale and shift: the bytes the memo recorded are
    A's, the live values B's. Once the write is over, the next forward must give A's answer (it did not, for every
    later forward, while the bytes stayed A's): the batch is computed from the recorded bytes."""
    ours, tv = _pair(torch.float32, "nchw")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    bn = _bn(tv)
    a = bn.running_var.detach().clone()
    compute = ops._affine_vectors

    def racing(*args, **kwargs):  # the other thread's write lands between the check and the computation
        var = bn.running_var if write == "in_place" else bn.running_var.data
        with torch.no_grad():
            var.mul_(4)
        try:
            return compute(*args, **kwargs)
        finally:
            with torch.no_grad():
                var.copy_(a)

    monkeypatch.setattr(ops, "_affine_vectors", racing)
    _run(ours, x)
    monkeypatch.setattr(ops, "_affine_vectors", compute)
    assert torch.equal(bn.running_var, a)
    assert torch.equal(_run(ours, x), _run(tv, x))
