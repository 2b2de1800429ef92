"""The flat CPU eval forward (resnet_ext.engine: structure, cpu): one sequence of oneDNN calls with each block's residual added in
place. It must give torchvision's answer, run only where nothing can see the in-place writes, and leave the
module-by-module path whenever the model stops being the stock structure it recorded."""
import copy
import pickle

import pytest
import torch
from torch import nn

import resnet_ext
from resnet_ext import engine, ops, switches
from resnet_ext.engine import cpu, cuda, state, units
from conftest import change_fc, randomize_bn, rel_err, tv_model

TOL = 1e-4


def pair(arch="resnet18", frozen=False):
    tv = randomize_bn(tv_model(arch, num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(tv).eval()
    if frozen:
        resnet_ext.freeze(ours)
    return ours, tv


BF16_SLACK = 2 ** -8  # bf16's unit roundoff: the largest error of one sample varies by 2x and more between two
# equally accurate computations (resnet50's bf16 logits, ours / torchvision's over 24 seeds: 0.67-1.92; one test
# order 2.5 with torchvision's error 2.5e-3), so twice torchvision's error alone is no bound for a small one


def assert_like_torchvision(y, ref, ref64, dtype):
    """fp32: torchvision's output within TOL; bf16: no further from float64 than twice torchvision's own bf16 error
    (plus BF16_SLACK)."""
    assert y.dtype == dtype and torch.isfinite(y).all()
    if dtype == torch.float32:
        assert rel_err(y, ref) < TOL, rel_err(y, ref)
    else:
        tv_err = rel_err(ref.double(), ref64)
        assert rel_err(y.double(), ref64) < 2 * tv_err + BF16_SLACK, (rel_err(y.double(), ref64), tv_err)


def recorded_and_replayed_like_torchvision(ours, tv, x, dtype):
    """Both models in `dtype`; ours run twice on x (the first call records the plan, the second replays it), each
    output `assert_like_torchvision`; yields each call's path counts for the caller's own checks."""
    with torch.no_grad():
        ref64 = copy.deepcopy(tv).double()(x.double())
        ref = tv.to(dtype)(x.to(dtype))
        ours.to(dtype)
        for _ in range(2):
            y, counts = counts_of(lambda: ours(x.to(dtype)))
            assert_like_torchvision(y, ref, ref64, dtype)
            yield counts


def counts_of(fn):
    units.reset_path_counts()
    out = fn()
    return out, resnet_ext.path_counts()


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(1, 3, 67, 93), (3, 3, 32, 32)])
def test_flat_matches_torchvision(frozen, arch, layout, shape):
    ours, tv = pair(arch, frozen)
    x = torch.randn(*shape)
    if layout == "channels_last":
        ours, tv, x = (t.to(memory_format=torch.channels_last) for t in (ours, tv, x))
    x0 = x.clone()
    with torch.no_grad():
        ref = tv(x)
        for _ in range(2):  # the first call records, the second replays
            y, counts = counts_of(lambda: ours(x))
            assert counts.get("flat_forwards") == 1, counts
            assert rel_err(y, ref) < TOL, rel_err(y, ref)
    assert torch.equal(x, x0)  # the caller's input is never written


def test_hook_on_a_block_leaves_the_flat_path_and_sees_its_own_output():
    """A block's output is the next block's residual, written in place on the flat path: a hook that keeps it
    must make the forward take the module path, and the kept tensor must stay what the block returned."""
    ours, tv = pair("resnet18")
    x = torch.randn(2, 3, 32, 32)
    kept, kept_tv = [], []
    with torch.no_grad():
        ours(x)  # recorded once without the hook
        ours.layer1[0].register_forward_hook(lambda m, i, o: kept.append(o))
        tv.layer1[0].register_forward_hook(lambda m, i, o: kept_tv.append(o.clone()))
        y, counts = counts_of(lambda: ours(x))
        ref = tv(x)
    assert "flat_forwards" not in counts
    assert rel_err(y, ref) < TOL and rel_err(kept[0], kept_tv[0]) < TOL


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
@pytest.mark.parametrize("change", ["leaky_relu", "new_conv", "new_weight", "bn_train", "identity_downsample_bn",
                                    "pre_hook_on_layer"])
def test_changes_after_recording(frozen, change):
    ours, tv = pair("resnet50", frozen)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        ours(x)
        for m in (ours, tv):
            if change == "leaky_relu":
                m.layer2[1].relu = nn.LeakyReLU(0.1)
            elif change == "new_conv":
                torch.manual_seed(1)
                m.layer3[0].conv2 = nn.Conv2d(256, 256, 3, 2, 1, bias=False)
            elif change == "new_weight":
                torch.manual_seed(2)
                m.layer1[0].conv1.weight = nn.Parameter(torch.randn_like(m.layer1[0].conv1.weight) * 0.1)
            elif change == "bn_train":
                m.layer4[0].bn1.train()
            elif change == "identity_downsample_bn":
                m.layer2[0].downsample[1] = nn.Identity()
            elif change == "pre_hook_on_layer":
                m.layer3.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
        if change == "new_conv":
            ours.layer3[0].conv2.load_state_dict(tv.layer3[0].conv2.state_dict())
        if change == "new_weight":
            ours.layer1[0].conv1.weight = tv.layer1[0].conv1.weight
        y, counts = counts_of(lambda: ours(x))
        ref = tv(x)
    assert rel_err(y, ref) < TOL, rel_err(y, ref)
    if change in ("leaky_relu", "bn_train", "identity_downsample_bn", "pre_hook_on_layer"):
        assert "flat_forwards" not in counts, counts  # no longer the stock structure
    if change in ("new_conv", "new_weight"):  # still stock: the default mode refolds; frozen has no fold for it
        assert ("flat_forwards" in counts) == (not frozen), counts


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
@pytest.mark.parametrize("change", ["weight", "bias", "running_var"])
def test_instance_attribute_shadowing_a_parameter_or_buffer(frozen, change):
    """The per-forward check reads parameters and buffers where attribute lookup finds them; a plain attribute of
    the same name (set after deleting the parameter or buffer, as reparametrizations do) is what the module
    computes with, and the flat forward must too (frozen: a unit whose conv weight or BN tensor is not the one
    folded runs unfolded)."""
    ours, tv = pair("resnet50", frozen)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        ours(x)
        for m in (ours, tv):
            conv, bn = m.layer2[1].conv2, m.layer2[1].bn2
            if change == "weight":
                w = conv.weight.detach() * 0.5
                del conv.weight
                conv.weight = w
            elif change == "bias":
                del conv.bias
                conv.bias = torch.full((conv.out_channels,), 0.25)
            else:
                v = bn.running_var * 4
                del bn.running_var
                bn.running_var = v
            assert change in conv.__dict__ or change in bn.__dict__
        for _ in range(2):  # the first call records the new structure, the second replays it
            y = ours(x)
            assert rel_err(y, tv(x)) < TOL, rel_err(y, tv(x))
        s = state.of(ours).structure
        assert s is None or s.matches(ours)  # recorded as it is, not recorded anew on every forward


class _BN(nn.BatchNorm2d):
    pass


def _shadow(module, name, value):
    """A parameter or buffer replaced by a plain attribute of the same name (as reparametrizations do)."""
    delattr(module, name)
    setattr(module, name, value)


_CHANGES = {  # every difference Structure.matches (`_C.structure_state`) must see, one model change each
    "forward_hook": lambda m: m.layer1[0].conv1.register_forward_hook(lambda *a: None),
    "forward_hook_kwargs": lambda m: m.layer4[2].conv3.register_forward_hook(lambda *a: None, with_kwargs=True),
    "forward_pre_hook": lambda m: m.layer2.register_forward_pre_hook(lambda *a: None),
    "backward_hook": lambda m: m.layer3[1].bn2.register_full_backward_hook(lambda *a: None),
    "backward_pre_hook": lambda m: m.maxpool.register_full_backward_pre_hook(lambda *a: None),
    "instance_forward": lambda m: setattr(m.layer4[0], "forward", m.layer4[0].forward),
    "instance_conv_forward": lambda m: setattr(m.conv1, "_conv_forward", m.conv1._conv_forward),
    "child_replaced": lambda m: setattr(m.layer1[1], "relu", nn.ReLU()),
    "child_removed": lambda m: m.layer2.__delitem__(1),
    "child_added": lambda m: setattr(m, "extra", nn.Identity()),
    "class_changed": lambda m: setattr(m.layer3[0].bn1, "__class__", _BN),
    "weight_parameter": lambda m: setattr(m.layer1[0].conv2, "weight", nn.Parameter(m.layer1[0].conv2.weight * 1)),
    "weight_shadowed": lambda m: _shadow(m.layer2[0].conv1, "weight", m.layer2[0].conv1.weight.detach().clone()),
    # an instance attribute beside the parameter (attribute lookup finds it first): read before the store
    "weight_in_instance_dict": lambda m: m.layer1[1].conv1.__dict__.__setitem__(
        "weight", m.layer1[1].conv1.weight.detach().clone()),
    "bias_added": lambda m: setattr(m.layer4[1].conv1, "bias", nn.Parameter(torch.zeros(512))),
    "padding_mode": lambda m: setattr(m.layer1[0].conv2, "padding_mode", "reflect"),
    "padding": lambda m: setattr(m.layer1[0].conv2, "padding", (2, 2)),
    "stride": lambda m: setattr(m.layer3[0].downsample[0], "stride", (1, 1)),
    "dilation": lambda m: setattr(m.layer4[0].conv2, "dilation", (2, 2)),
    "groups": lambda m: setattr(m.layer4[0].conv2, "groups", 2),
    "bn_train": lambda m: m.bn1.train(),
    "bn_eps": lambda m: setattr(m.layer2[1].bn3, "eps", 1e-3),
    "running_mean_none": lambda m: setattr(m.layer3[2].bn1, "running_mean", None),
    "running_var_shadowed_none": lambda m: _shadow(m.layer1[2].bn2, "running_var", None),
    "max_pool_indices": lambda m: setattr(m.maxpool, "return_indices", True),
    "max_pool_replaced": lambda m: setattr(m, "maxpool", nn.Identity()),
}


@pytest.mark.parametrize("change", list(_CHANGES))
def test_structure_sees_every_change(change):
    """The per-forward check (C code since 2026-12-06) against each change a user can make; a hook removed again
    leaves the model as recorded."""
    from resnet_ext.engine import structure
    ours = resnet_ext.resnet50().eval()
    s = structure.Structure(ours)
    assert s.matches(ours)
    out = _CHANGES[change](ours)
    assert not s.matches(ours)
    # Hooks and instance forwards alone: HOOKED (the module path, on the recorded units); anything else CHANGED.
    hooked = "hook" in change or change.startswith("instance")
    assert s.state(ours) == (structure.HOOKED if hooked else structure.CHANGED)
    if hasattr(out, "remove"):  # a hook's handle
        out.remove()
        assert s.matches(ours)


def test_a_hooked_model_is_recorded_once_and_told_apart_by_the_c_check():
    """A model hooked before its first forward is recorded all the same (HOOKED: the module path runs, found by the
    C check, not by walking every module on each forward); the hook removed, the same record runs flat; a hook
    together with another change is CHANGED (the C check goes on past the hook)."""
    from resnet_ext.engine import structure
    ours, tv = pair("resnet18")
    handle = ours.layer4.register_forward_hook(lambda *a: None)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = tv(x)
        for _ in range(2):
            resnet_ext.reset_path_counts()
            assert torch.equal(ours(x), ref)
            assert "flat_forwards" not in resnet_ext.path_counts()
        s = state.of(ours).structure
        assert s is not None and s.state(ours) == structure.HOOKED
        handle.remove()
        resnet_ext.reset_path_counts()
        assert torch.equal(ours(x), ref) and resnet_ext.path_counts()["flat_forwards"] == 1
        assert state.of(ours).structure is s
        ours.layer4.register_forward_hook(lambda *a: None)
        ours.layer1[0].bn1.train()
        assert s.state(ours) == structure.CHANGED


def test_deleted_bias_raises_like_torchvision():
    ours, tv = pair("resnet18")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours(x)
        for m in (ours, tv):
            del m.layer1[0].conv1.bias
        with pytest.raises(AttributeError):
            tv(x)
        with pytest.raises(AttributeError):
            ours(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_frozen_input_ok(dtype):
    """The input check before oneDNN's fused ReLUs (which turn NaN into 0) and Winograd (which overflows before a
    direct convolution): one NaN, inf or value of 2^64 or more makes it false; the largest value below that (whose
    sum would overflow) keeps it true."""
    from resnet_ext.engine import frozen_input_ok
    x = torch.randn(2, 3, 17, 19).to(dtype)
    assert frozen_input_ok(x)
    bound = 2.0 ** cpu.FROZEN_INPUT_LOG2
    for bad in (float("nan"), float("inf"), -float("inf"), bound, -bound * 3):
        y = x.clone()
        y[1, 2, 16, 0] = bad
        assert not frozen_input_ok(y), bad  # (in float16 the bound is inf)
    below = bound * (1 - torch.finfo(dtype).eps) if dtype != torch.float16 else torch.finfo(dtype).max
    big = torch.full((64,), below, dtype=dtype)  # its sum overflows even in the wider dtype
    assert frozen_input_ok(big) and not frozen_input_ok(torch.cat([big, torch.tensor([float("nan")], dtype=dtype)]))


def test_frozen_programs_follow_load_state_dict_and_dtype():
    ours, tv = pair("resnet18", frozen=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours(x)
        tv2 = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
        ours.load_state_dict(tv2.state_dict())
        assert rel_err(ours(x), tv2(x)) < TOL
        ours.double()  # fp64 is not oneDNN's: the module path, in fp64
        y, counts = counts_of(lambda: ours(x.double()))
        assert "flat_forwards" not in counts and y.dtype == torch.float64
        assert rel_err(y, tv2.double()(x.double())) < 1e-10


def test_default_mode_sees_weight_changes_between_flat_forwards():
    ours, tv = pair("resnet50")
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        ours(x)
        for p in tv.parameters():  # shared objects: .data writes bypass version counters
            p.data.mul_(1.1)
        for n, b in tv.named_buffers():
            if n.endswith("running_mean"):
                b.numpy()[...] += 0.05
        y, counts = counts_of(lambda: ours(x))
        assert counts.get("flat_forwards") == 1
        assert rel_err(y, tv(x)) < TOL


def test_grad_mode_and_training_leave_the_flat_path():
    ours, tv = pair("resnet18")
    x = torch.randn(2, 3, 32, 32)
    y, counts = counts_of(lambda: ours(x))  # grad enabled, parameters require grad
    assert "flat_forwards" not in counts and y.requires_grad
    y.sum().backward()
    assert ours.conv1.weight.grad is not None
    frozen, _ = pair("resnet18", frozen=True)
    xg = x.clone().requires_grad_()
    y, counts = counts_of(lambda: frozen(xg))
    assert "flat_forwards" not in counts and y.requires_grad


def test_copies_and_pickles_carry_no_recorded_state():
    ours, tv = pair("resnet18", frozen=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours(x)
        twin = copy.deepcopy(ours)
        st = state.of(twin)
        assert st.frozen and st.structure is None and st.programs is None and st.folds is None
        assert not st.flat_plans
        for p in twin.parameters():
            p.data.mul_(0.5)
        resnet_ext.freeze(twin)
        assert rel_err(ours(x), tv(x)) < TOL  # the original is untouched by the copy's changes
        y, counts = counts_of(lambda: twin(x))
        assert counts.get("flat_forwards") == 1
        assert not torch.allclose(y, tv(x))


def test_bf16_error_within_torchvision_bf16_error():
    ours, tv = pair("resnet50", frozen=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = copy.deepcopy(tv).double()(x.double())
        tv_err = rel_err(tv.bfloat16()(x.bfloat16()).double(), ref)
        ours.bfloat16()
        resnet_ext.freeze(ours)
        y, counts = counts_of(lambda: ours(x.bfloat16()))
    assert counts.get("flat_forwards") == 1 and y.dtype == torch.bfloat16
    assert torch.isfinite(y).all()
    assert rel_err(y.double(), ref) < 2 * tv_err + BF16_SLACK, (rel_err(y.double(), ref), tv_err)


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_bad_inputs_give_torchvisions_errors(frozen):
    ours, tv = pair("resnet18", frozen)
    with torch.no_grad():
        for bad in (torch.randn(1, 1, 32, 32), torch.randn(3, 32, 32)):
            with pytest.raises((RuntimeError, ValueError)) as ref:
                tv(bad)
            with pytest.raises((RuntimeError, ValueError)) as got:
                ours(bad)
            assert type(got.value) is type(ref.value)
            assert str(got.value).split("\n")[0] == str(ref.value).split("\n")[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 57, 71)])
def test_gemm_units_match_torchvision(dtype, shape):
    """The default mode's 1x1 convs whose weight outweighs the output (layer3/4 here, with and without a
    residual, with the strided downsample) run as a GEMM on the unreordered weight, in channels_last."""
    ours, tv = pair("resnet50")
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    ours, tv = ours.to(memory_format=torch.channels_last), tv.to(memory_format=torch.channels_last)
    for counts in recorded_and_replayed_like_torchvision(ours, tv, x, dtype):
        # fp32 leaves layer4's smallest maps to oneDNN (gemm_pays): 6 units at these sizes, bf16 on AMX all.
        assert counts.get("gemm", 0) >= 6 and counts.get("flat_forwards") == 1, counts


def test_freeze_bf16_option():
    """freeze(dtype=torch.bfloat16) on an fp32 CPU model: bf16 convolutions behind an fp32 interface, within
    torchvision-bf16's own error; anything that leaves the flat path is fp32 and exact; the option is pickled."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    ours, tv = pair("resnet50")
    resnet_ext.freeze(ours, dtype=torch.bfloat16)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref64 = copy.deepcopy(tv).double()(x.double())
        tv_err = rel_err(copy.deepcopy(tv).bfloat16()(x.bfloat16()).double(), ref64)
        for _ in range(2):
            y, counts = counts_of(lambda: ours(x))
            assert counts.get("flat_forwards") == 1 and y.dtype == torch.float32, counts
            assert torch.isfinite(y).all()
            assert rel_err(y.double(), ref64) < 2 * tv_err + BF16_SLACK, (rel_err(y.double(), ref64), tv_err)
        assert rel_err(y, tv(x)) > 1e-4  # it did run in bf16
        twin = pickle.loads(pickle.dumps(ours))
        assert resnet_ext.is_frozen(twin) and torch.equal(twin(x), y)
        handle = ours.layer2.register_forward_hook(lambda m, i, o: None)
        assert rel_err(ours(x), tv(x)) < TOL  # the module path: fp32
        handle.remove()


@pytest.mark.parametrize("head", ["modules", "op"])
def test_freeze_bf16_pools_and_classifies_in_fp32(head, monkeypatch):
    """freeze(dtype=torch.bfloat16): the last features go to fp32 before the average pool, not after (pooled in
    bf16 they would be rounded to bf16: 2.6-2.9e-3 of the largest), and fc runs in fp32: on the modules' path
    (HEAD_MAX_BATCH -1) ATen's pool and oneDNN's linear see fp32 inputs; as one op (`ops.pool_linear`, whose fp32
    sums tests/test_head.py checks) the op gets the bf16 features and the fp32 fc weight."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    if head == "modules":
        monkeypatch.setattr(cpu, "HEAD_MAX_BATCH", -1)
    elif not resnet_ext.ops.pool_linear_supported():
        pytest.skip("this CPU runs pool_linear as ATen's ops")
    from torch.utils._python_dispatch import TorchDispatchMode

    class Spy(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in ("mean", "_adaptive_avg_pool2d", "addmm", "linear", "mm", "_linear_pointwise"):
                self.dtypes.setdefault(name, set()).add(args[0].dtype if name != "addmm" else args[1].dtype)
            elif name == "pool_linear":
                self.dtypes.setdefault(name, set()).add((args[0].dtype, args[1].dtype))
            return func(*args, **(kwargs or {}))

    from resnet_ext.engine import units
    monkeypatch.setattr(units, "_dispatch_modes", lambda: False)  # the spy below is one: keep the engine on
    ours, _ = pair("resnet18")
    resnet_ext.freeze(ours, dtype=torch.bfloat16)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ours(x)  # record the plan
        spy = Spy()
        with spy:
            _, counts = counts_of(lambda: ours(x))
    assert counts.get("flat_forwards") == 1, counts
    if head == "op":
        assert counts.get("pool_linear") == 1 and spy.dtypes == {"pool_linear": {(torch.bfloat16, torch.float32)}}
        return
    pools = spy.dtypes.get("mean", set()) | spy.dtypes.get("_adaptive_avg_pool2d", set())
    assert pools == {torch.float32}, spy.dtypes
    fcs = ("addmm", "linear", "mm", "_linear_pointwise")  # the frozen mode's fc: oneDNN's linear (logits)
    assert set().union(*(spy.dtypes.get(k, set()) for k in fcs)) == {torch.float32}, spy.dtypes


def test_freeze_dtype_errors():
    ours, _ = pair("resnet18")
    with pytest.raises(ValueError, match="dtype must be None"):
        resnet_ext.freeze(ours, dtype=torch.float16)
    with pytest.raises(ValueError, match="fp32 models on the CPU"):
        resnet_ext.freeze(copy.deepcopy(ours).double(), dtype=torch.bfloat16)
    assert not resnet_ext.is_frozen(ours)
    resnet_ext.freeze(ours, dtype=torch.float32)  # the model's own dtype: the plain frozen mode
    assert resnet_ext.is_frozen(ours)


def test_freeze_bf16_needs_native_bf16(monkeypatch):
    ours, _ = pair("resnet18")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="native bf16"):
        resnet_ext.freeze(ours, dtype=torch.bfloat16)


NEEDS_AVX512 = {  # path_counts kinds of the ops that need AVX-512 (AVX512-BF16 in bf16), per mode
    "default": ("winograd_unfolded",),  # fp32 F(2x2); fp32 F(4x4) (`winograd` in fp32) runs on any x86-64
    None: ("conv1x1", "winograd_f23", "pool_linear", "prefetch"),
    torch.bfloat16: ("conv1x1", "winograd", "conv_stem", "conv_direct", "pool_linear", "prefetch"),
}


@pytest.mark.parametrize("mode", list(NEEDS_AVX512), ids=["default", "frozen_fp32", "frozen_bf16"])
def test_a_cpu_without_avx512_plans_none_of_the_ops_that_need_it(mode, monkeypatch):
    """Where this CPU lacks AVX-512 (or AVX512-BF16), the plans ask the ops and choose oneDNN or ATen instead of
    the ops that would refuse it, and answer as torchvision. (resnet50, 2x3x80x80: on an AVX-512 CPU each kind
    in NEEDS_AVX512 runs there.)"""
    if mode is torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("no native bf16")
    for name in ("winograd_bf16_supported", "winograd_f23_supported", "pool_linear_supported"):
        monkeypatch.setattr(ops, name, lambda: False)
    monkeypatch.setattr(ops, "conv1x1_supported", lambda dtype: False)
    tv = randomize_bn(tv_model("resnet50", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    if mode != "default":
        resnet_ext.freeze(ours, dtype=mode)
    x = torch.randn(2, 3, 80, 80).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = tv(x)
        for _ in range(3):  # planned, recorded, replayed
            y, counts = counts_of(lambda: ours(x))
            assert counts.get("flat_forwards") == 1 and not set(NEEDS_AVX512[mode]) & set(counts), counts
            assert rel_err(y, ref) < (2e-2 if mode is torch.bfloat16 else TOL), rel_err(y, ref)


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_large_nchw_input_runs_channels_last_inside(frozen):
    ours, tv = pair("resnet18", frozen)
    x = torch.randn(1, 3, 390, 390)  # >= cpu.CL_PIXELS pixels: channels_last inside, one copy of the input
    assert x.shape[0] * x.shape[2] * x.shape[3] >= cpu.CL_PIXELS
    x0 = x.clone()
    with torch.no_grad():
        ref = tv(x)
        for _ in range(2):
            y, counts = counts_of(lambda: ours(x))
            assert counts.get("flat_forwards") == 1 and rel_err(y, ref) < TOL, (counts, rel_err(y, ref))
            assert y.is_contiguous()
    assert torch.equal(x, x0)


def test_frozen_keeps_a_bounded_number_of_packed_weights():
    ours, tv = pair("resnet18", frozen=True)
    with torch.no_grad():
        for size in range(32, 32 + 12 * 8, 8):  # 12 input sizes
            x = torch.randn(1, 3, size, size)
            assert rel_err(ours(x), tv(x)) < TOL
    folds = resnet_ext.engine.frozen.folds_of(ours)
    assert max(len({id(w) for w in f.packed.values()}) for f in folds.values()) <= cpu.PACKED_LIMIT
    assert max(len(f.packed) for f in folds.values()) <= cpu.PACKED_KEYS


@pytest.mark.skipif(not hasattr(torch.ops.mkldnn, "_get_mkldnn_serialized_md"), reason="torch cannot tell formats")
def test_frozen_packs_each_batch_size_in_the_format_onednn_picks_for_it():
    """oneDNN may pack a conv's weight differently for another batch size (on a 2-core AMX Xeon: resnet50's layer2
    128 -> 512 1x1 conv at 12x12, fp32, batch 1 against 2); a forward on a weight packed for another batch size
    reorders it on every call. Batch 1, then 2, then 1: every prepacked unit of each forward runs on the format
    oneDNN picks for that forward's input shape, and shapes of the same format share one copy. (On a CPU where no
    format depends on the batch size this cannot fail; it did on the AMX Xeon before the key had the batch size.)"""
    ours, tv = pair("resnet50", frozen=True)
    was = resnet_ext.cpu_conv1x1(False)  # the 1x1 convs on oneDNN too: its packing is what this test is about
    try:
        _check_packing_per_batch_size(ours, tv)
    finally:
        resnet_ext.cpu_conv1x1(was)


def _check_packing_per_batch_size(ours, tv):
    fmt = torch.ops.mkldnn._get_mkldnn_serialized_md
    names = {m: n for n, m in ours.named_modules()}
    inputs = {}
    for n, m in tv.named_modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda m, a, out, n=n: inputs.__setitem__(n, a[0].shape[1:]))
    with torch.no_grad():
        for batch in (1, 2, 1):
            x = torch.randn(batch, 3, 96, 96)
            assert rel_err(ours(x), tv(x)) < TOL
            s, folds = resnet_ext.engine.structure.of(ours, x.dtype, 3), resnet_ext.engine.frozen.folds_of(ours)
            programs = state.of(ours).programs[2]
            (program, _, _, _), = [v for k, v in programs.items() if k[0] == tuple(x.shape)]
            checked = 0
            for u, wb in zip(s.units, program):
                if wb[0] is cpu.WINO:
                    continue
                expected = torch.ops.mkldnn._reorder_convolution_weight(
                    folds[u.conv].weight, *resnet_ext.ops.onednn_args(u.conv), [batch, *inputs[names[u.conv]]])
                assert torch.equal(fmt(wb[0]), fmt(expected)), (names[u.conv], batch)
                checked += 1
            assert checked > 20
    for f in resnet_ext.engine.frozen.folds_of(ours).values():
        by_format = {}
        for w in f.packed.values():
            by_format.setdefault(bytes(fmt(w).tolist()), set()).add(id(w))
        assert all(len(ids) == 1 for ids in by_format.values())  # one copy per format


# ------------------------------------------------------------------------------------------------------------
# Cases found in review: each gave a wrong answer or an error where torchvision runs
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_conv_with_bias(frozen, when):
    """A conv with a bias: the unfolded units once ran the conv with its bias and added the bias again in the shift;
    now the conv keeps its bias and the shift is BN's own, which gives torchvision's bits in the default mode."""
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)

    def add_bias(m):
        torch.manual_seed(3)
        m.conv1 = nn.Conv2d(3, 64, 7, 2, 3)  # bias=True by default
        m.layer4[0].conv1.bias = nn.Parameter(torch.randn(512) * 0.5)

    if when == "before":
        add_bias(tv)
    ours = resnet_ext.from_torchvision(tv).eval()
    if frozen:
        resnet_ext.freeze(ours)
    with torch.no_grad():
        ours(x)
        if when == "after":
            add_bias(tv)
            ours.conv1, ours.layer4[0].conv1.bias = tv.conv1, tv.layer4[0].conv1.bias
        for _ in range(2):
            assert rel_err(ours(x), tv(x)) < TOL
        if not frozen:  # the default mode: the conv with its bias, then BN's own scale and shift, as torchvision
            assert torch.equal(ours(x), tv(x))


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (8, 3, 96, 96)])
def test_one_conv_in_two_units_with_their_own_bns(shape):
    ours, tv = pair("resnet18")
    for m in (tv, ours):
        m.layer1[0].conv2 = m.layer1[0].conv1  # the same conv module, before bn1 and before bn2
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = tv(x)
        for _ in range(3):  # first call records, the others replay
            assert rel_err(ours(x), ref) < TOL
        handle = ours.layer2.register_forward_hook(lambda *a: None)  # the module path too
        for _ in range(2):
            assert rel_err(ours(x), ref) < TOL
        handle.remove()


@pytest.mark.parametrize("where", ["block", "layer", "conv"])
def test_instance_forward_overrides_are_honoured(where):
    """A forward set on an instance (accelerate's hooks, debugging tools) must run, as in torchvision."""
    ours, tv = pair("resnet18")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours(x)  # recorded without the override
        for m in (tv, ours):
            target = {"block": m.layer2[1], "layer": m.layer3, "conv": m.layer1[0].conv2}[where]
            orig = target.forward
            target.forward = lambda t, orig=orig: orig(t) * 0.5
        y, counts = counts_of(lambda: ours(x))
        assert "flat_forwards" not in counts and rel_err(y, tv(x)) < TOL


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cpu_autocast_runs_as_torchvision(frozen, layout):
    ours, tv = pair("resnet50", frozen)
    x = torch.randn(2, 3, 64, 64)
    if layout == "channels_last":
        ours, tv, x = (t.to(memory_format=torch.channels_last) for t in (ours, tv, x))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = tv(x)
        y, counts = counts_of(lambda: ours(x))
    assert y.dtype == ref.dtype == torch.bfloat16 and "flat_forwards" not in counts
    assert rel_err(y.float(), ref.float()) < 1e-2


def test_frozen_folds_made_under_inference_mode_serve_a_later_gradient():
    ours, tv = pair("resnet18", frozen=True)
    x = torch.randn(1, 3, 32, 32)
    ours.load_state_dict(tv.state_dict())  # drops the folds: the next forward refolds
    with torch.inference_mode():
        ours(x)
    xg = x.clone().requires_grad_()
    ours(xg).sum().backward()
    xt = x.clone().requires_grad_()
    tv(xt).sum().backward()
    assert rel_err(xg.grad, xt.grad) < TOL


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad_mode"])
@pytest.mark.parametrize("frozen", [False, True, torch.bfloat16], ids=["default", "frozen", "frozen_bf16"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_gives_torchvisions_non_finite_output(frozen, bad, grad):
    """oneDNN's fused ReLU turns NaN into 0; a non-finite input runs BN unfolded after the stock conv, as
    torchvision does, so NaN stays NaN (also in grad mode with frozen parameters, where the frozen folds apply;
    and for freeze(dtype=torch.bfloat16), whose cast of the input checks it: the fp32 default mode runs)."""
    if frozen is torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    ours, tv = pair("resnet50", frozen is True)
    if frozen is torch.bfloat16:
        resnet_ext.freeze(ours, dtype=torch.bfloat16)
    for p in ours.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 3, 64, 64)
    x[0, 1, 5, 7] = bad
    with torch.set_grad_enabled(grad):
        ref, y = tv(x), ours(x)
    assert torch.equal(ref.isnan(), y.isnan()) and torch.equal(ref.isinf(), y.isinf())
    assert rel_err(y[1], ref[1]) < TOL


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["frozen", "frozen_bf16"])
def test_frozen_plan_refuses_a_non_finite_input_before_it_runs(dtype):
    """forward_frozen checks its input itself (frozen_input_ok; for bf16 the check in the cast,
    _C.bounded_bfloat16) and answers NOT_FINITE before any unit runs; a finite input runs the plan."""
    if dtype is torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    ours, _ = pair("resnet18")
    resnet_ext.freeze(ours, dtype=dtype)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        folds = engine.frozen_folds(ours)
        assert isinstance(cpu.forward_frozen(ours, x, folds), torch.Tensor)
        for bad in (float("nan"), float("inf"), -float("inf"), -(2.0 ** cpu.FROZEN_INPUT_LOG2)):
            y = x.clone()
            y[0, 2, 31, 31] = bad
            units.reset_path_counts()
            assert cpu.forward_frozen(ours, y, folds) is cpu.NOT_FINITE
            assert resnet_ext.path_counts() == {}


def test_frozen_model_with_parameter_gradients_runs_as_default_mode():
    """The frozen folds are constants: a forward that may need parameter gradients runs as the default mode, so
    the convs' and BNs' gradients are torchvision's (they were silently absent); without gradients it is frozen."""
    ours, tv = pair("resnet18", frozen=True)
    x = torch.randn(2, 3, 32, 32)
    y, counts = counts_of(lambda: ours(x))  # grad mode on, parameters require grad
    assert "onednn_prepacked" not in counts
    y.sum().backward()
    grads = {n: p.grad.clone() for n, p in ours.named_parameters()}
    for p in tv.parameters():
        p.grad = None
    tv(x).sum().backward()
    for n, p in tv.named_parameters():
        assert rel_err(grads[n], p.grad) < 1e-3, n
    with torch.no_grad():
        _, counts = counts_of(lambda: ours(x))
    # 20 convs: the three stride-2 downsamples on resnet_ext's 1x1 GEMM where this CPU runs it, the rest oneDNN's
    own = 3 if resnet_ext.ops.conv1x1_supported(x.dtype) and not cpu.AMX_BF16 else 0
    assert counts.get("onednn_prepacked") == 20 - own and counts.get("conv1x1", 0) == own
    assert counts.get("flat_forwards") == 1


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_a_max_pool_returning_indices_fails_as_in_torchvision(frozen, layout):
    """Set after the first forward: the next conv gets the pool's (values, indices) tuple, and torchvision's
    conv2d raises TypeError (the flat forwards raised AttributeError from inside the engine)."""
    ours, tv = pair("resnet18", frozen)
    x = torch.randn(1, 3, 32, 32)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ours(x)
        for m in (ours, tv):
            m.maxpool.return_indices = True
        with pytest.raises(TypeError) as theirs:
            tv(x)
        with pytest.raises(TypeError) as mine:
            ours(x)
    assert str(mine.value) == str(theirs.value)


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_an_fc_of_another_dtype_fails_as_in_torchvision(frozen):
    ours, tv = pair("resnet18", frozen)
    for m in (ours, tv):
        m.fc = nn.Linear(512, 10).bfloat16()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        with pytest.raises(RuntimeError) as ref:
            tv(x)
        with pytest.raises(RuntimeError) as got:
            ours(x)
    assert str(got.value).split("\n")[0] == str(ref.value).split("\n")[0]


@pytest.mark.parametrize("change, fits", [
    (None, True), ("no bias", True), ("strided weight", False), ("float64 weight", False), ("other in_features", False)])
def test_frozen_fc_on_onednn_or_the_module(change, fits, monkeypatch):
    """The frozen mode's fc on the modules' path (the head as one op off: HEAD_MAX_BATCH -1; tests/test_head.py has
    the op's rule) runs as oneDNN's linear where that takes it as nn.Linear would (fp32, dense, shapes that fit),
    else as the module: torchvision's answer or its error either way, a weight swapped through `.data` after freeze
    included."""
    monkeypatch.setattr(cpu, "HEAD_MAX_BATCH", -1)
    ours, tv = pair("resnet18", frozen=True)
    change_fc((ours, tv), change)
    seen = []
    real = cpu._onednn_fc_fits
    monkeypatch.setattr(cpu, "_onednn_fc_fits", lambda *a: seen.append(real(*a)) or seen[-1])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        if change in ("float64 weight", "other in_features"):
            with pytest.raises(RuntimeError) as ref:
                tv(x)
            with pytest.raises(RuntimeError) as got:
                ours(x)
            assert str(got.value).split("\n")[0] == str(ref.value).split("\n")[0]
        else:
            assert rel_err(ours(x), tv(x)) < TOL
    assert seen == [fits]


# ---- the recorded sequence of fused units (cuda.forward_fused: the CUDA models' opt-in path) ----------------------
# On the CPU the op runs its stock composition, so every host-side decision is testable here; on CUDA the same
# sequence must give the module path's bits (same ops on the same folds).

@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_fused_sequence_matches_torchvision(frozen, arch, layout):
    ours, tv = pair(arch, frozen)
    x = torch.randn(2, 3, 45, 37)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    folds = resnet_ext.engine.frozen.folds_of(ours)
    with torch.no_grad():
        out, counts = counts_of(lambda: cuda.forward_fused(ours, x, folds))
        ref = tv(x)
    assert out is not None and counts.get("flat_forwards") == 1
    assert rel_err(out, ref) <= TOL


def test_fused_sequence_declines_what_the_module_path_must_run():
    ours, _ = pair("resnet18")
    x = torch.randn(1, 3, 32, 32)
    assert cuda.forward_fused(ours, x, None) is None  # gradients may be wanted: grad mode is on
    with torch.no_grad():
        assert cuda.forward_fused(ours, x.double(), None) is None  # not an fp32/fp16/bf16 input
        assert cuda.forward_fused(ours, x[:0], None) is None  # empty
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert cuda.forward_fused(ours, x, None) is None
        handle = ours.layer1[0].register_forward_hook(lambda m, i, o: None)
        assert cuda.forward_fused(ours, x, None) is None  # a hook: not the recorded structure
        handle.remove()
        assert cuda.forward_fused(ours, x, None) is not None
        bn = ours.layer2[0].bn1
        bn.running_var = bn.running_var.double()  # a BN dtype ATen's batch norm refuses: its error, from the modules
        assert cuda.forward_fused(ours, x, None) is None
        bn.running_var = bn.running_var.float()
        resnet_ext.freeze(ours)
        folds = resnet_ext.engine.frozen.folds_of(ours)
        ours.layer2[0].conv1.weight = nn.Parameter(ours.layer2[0].conv1.weight.detach().clone())
        assert cuda.forward_fused(ours, x, folds) is None  # a fold of a replaced weight does not belong to it
        ours.train()
        assert cuda.forward_fused(ours, x, None) is None  # train-mode BNs


def test_on_cuda_switch():
    assert switches.on_cuda() is False  # off by default until a GPU run verifies it
    with pytest.raises(TypeError, match="enabled must be True or False"):
        switches.on_cuda(1)
    previous = switches.on_cuda(True)
    try:
        assert previous is False and switches.on_cuda() is True
        ours, tv = pair("resnet18")
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)  # a CPU input keeps the CPU engine
    finally:
        switches.on_cuda(previous)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_on_cuda_gives_the_module_paths_bits(frozen, dtype):
    ours, _ = pair("resnet50")
    ours = ours.cuda().to(dtype)
    if frozen:
        resnet_ext.freeze(ours)
    x = torch.randn(3, 3, 96, 80, device="cuda", dtype=dtype)
    with torch.no_grad():
        ref, ref_counts = counts_of(lambda: ours(x))
        previous = switches.on_cuda(True)
        try:
            out, counts = counts_of(lambda: ours(x))
            handle = ours.layer3[1].register_forward_hook(lambda m, i, o: None)
            hooked, hooked_counts = counts_of(lambda: ours(x))
            handle.remove()
        finally:
            switches.on_cuda(previous)
    assert counts.get("flat_forwards") == 1 and "flat_forwards" not in ref_counts
    assert torch.equal(out, ref), (out - ref).abs().max()
    assert "flat_forwards" not in hooked_counts and torch.equal(hooked, ref)
    # Every unit took the same kernel path as through the module tree.
    assert {k: v for k, v in counts.items() if k != "flat_forwards"} == ref_counts


@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(64, 64, 3, 1, 1, 7), (64, 128, 3, 2, 1, 9), (3, 16, 7, 2, 3, 11),
                                   (48, 96, 1, 2, 0, 9), (37, 29, 3, 1, 1, 5), (8, 8, 3, 2, 1, 1)])
def test_gemm_rows_is_the_convolution_on_the_weight_as_it_lies(weight_layout, shape):
    """`gemm_rows`: rows @ weight.T is the convolution, in NHWC order, for any kernel, stride and weight layout,
    and the weight it returns is the conv's own memory (a view, never a copy or a reorder)."""
    c, k, ks, stride, pad, hw = shape
    conv = nn.Conv2d(c, k, ks, stride, pad, bias=False)
    if weight_layout == "channels_last":
        conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(2, c, hw, hw + 2).contiguous(memory_format=torch.channels_last)
    rows, wm = cpu.gemm_rows(x, conv)
    ref = conv(x).double()
    got = (rows.double() @ wm.double().t()).view(2, ref.shape[2], ref.shape[3], k).permute(0, 3, 1, 2)
    assert wm.data_ptr() == conv.weight.data_ptr()
    assert (got - ref).abs().max() < 1e-4


def test_gemm3x3_rule():
    """`gemm3x3_pays` picks what was measured to pay (benchmarks/results/2026-12-05-cpu-gemm3x3/): large 3x3
    weights on small maps, contiguous weights more readily than channels_last ones, never 64 channels in fp32
    nor beyond 196 output pixels; bf16 on an AMX CPU stays with oneDNN."""
    def pays(cin, cout, stride, hw, dtype=torch.float32, cl_weight=False, batch=1):
        conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        if cl_weight:
            conv = conv.to(memory_format=torch.channels_last)
        return cpu.gemm3x3_pays(conv, torch.empty(batch, cin, hw, hw, dtype=dtype))
    assert pays(512, 512, 1, 7) and pays(512, 512, 1, 7, cl_weight=True) and pays(256, 256, 1, 4)
    assert not pays(256, 256, 1, 7) and not pays(256, 256, 1, 4, cl_weight=True) and not pays(64, 64, 1, 2)
    assert pays(256, 512, 2, 14) and pays(256, 512, 2, 14, cl_weight=True) and not pays(256, 512, 2, 8, cl_weight=True)
    assert not pays(512, 512, 1, 14) and not pays(512, 512, 1, 7, batch=8)
    assert pays(128, 128, 1, 2, torch.bfloat16) != cpu.AMX_BF16
    saved = cpu.AMX_BF16
    try:
        cpu.AMX_BF16 = True
        assert not pays(512, 512, 1, 4, torch.bfloat16)
        cpu.AMX_BF16 = False
        assert pays(512, 512, 1, 4, torch.bfloat16) and not pays(64, 64, 1, 4, torch.bfloat16, cl_weight=True)
    finally:
        cpu.AMX_BF16 = saved


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cl_model", [False, True], ids=["model_nchw", "model_cl"])
def test_3x3_gemm_units_match_torchvision(dtype, cl_model, monkeypatch):
    """The default mode's 3x3 GEMM units (layer3/4 at a small input), with the model's weights as constructed or
    converted, give torchvision's answer (fp32: its tolerance; bf16: within torchvision's own bf16 error)."""
    monkeypatch.setattr(cpu, "AMX_BF16", False)  # the bf16 3x3 rule is for CPUs without AMX; the GEMM runs anywhere
    ours, tv = pair("resnet18")
    fmt = torch.channels_last if cl_model else torch.contiguous_format
    ours, tv = ours.to(memory_format=fmt), tv.to(memory_format=fmt)
    # An fp32 model as constructed runs its large 3x3 convs of 16 or more output pixels in NCHW (`nchw_unit_pays`):
    # at 64x64 layer 4's maps are 2x2.
    size = 64 if dtype == torch.float32 and not cl_model else 112
    x = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    kinds = {}
    real = cpu.gemm3x3_pays

    def spy(conv, x):
        kinds[conv] = real(conv, x)
        return kinds[conv]
    monkeypatch.setattr(cpu, "gemm3x3_pays", spy)
    for counts in recorded_and_replayed_like_torchvision(ours, tv, x, dtype):
        assert any(kinds.values()) and counts.get("gemm", 0) >= sum(kinds.values()), (kinds, counts)


def test_nchw_units_match_torchvision():
    """A model as constructed (NCHW weights) on a channels_last fp32 input: the large 3x3 convs (weight at least
    NCHW_UNIT_WEIGHT_RATIO times their input, 16 or more output pixels) run in NCHW, the rest channels_last;
    torchvision's answer, recorded and replayed. resnet18 at 2x112x112: layers 3 and 4's 3x3 convs (weights of
    5.9-144 times their input's elements), not layers 1 and 2's (0.4-2.9)."""
    ours, tv = pair("resnet18")
    x = torch.randn(2, 3, 112, 112).contiguous(memory_format=torch.channels_last)
    chosen = {}
    real = cpu.nchw_unit_pays

    def spy(u, y):
        chosen[u.conv] = real(u, y)
        return chosen[u.conv]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu, "nchw_unit_pays", spy)
        for counts in recorded_and_replayed_like_torchvision(ours, tv, x, torch.float32):
            assert counts.get("unfolded_nchw") == sum(chosen.values()) > 0, (counts, chosen)
    big = {c for c, yes in chosen.items() if yes}
    assert len(big) == 8 and all(c.kernel_size == (3, 3) and c.out_channels >= 256 for c in big), big
    # Converted to channels_last (which drops the plans), the same model runs no NCHW units.
    ours, tv = ours.to(memory_format=torch.channels_last), tv.to(memory_format=torch.channels_last)
    for counts in recorded_and_replayed_like_torchvision(ours, tv, x, torch.float32):
        assert "unfolded_nchw" not in counts, counts


def test_nchw_unit_rule():
    """`nchw_unit_pays`: fp32, channels_last input, an NCHW weight larger than 1x1 with at least
    NCHW_UNIT_WEIGHT_RATIO times the input's elements; below NCHW_UNIT_GEMM_PIXELS output pixels only where no
    GEMM unit pays."""
    def pays(cin, cout, ks, stride, hw, batch=1, dtype=torch.float32, cl_weight=False, cl_input=True):
        conv = nn.Conv2d(cin, cout, ks, stride, ks // 2, bias=False).to(dtype)
        if cl_weight:
            conv = conv.to(memory_format=torch.channels_last)
        x = torch.empty(batch, cin, hw, hw, dtype=dtype)
        if cl_input:
            x = x.contiguous(memory_format=torch.channels_last)
        u = type("U", (), {"conv": conv})()
        return cpu.nchw_unit_pays(u, x)
    assert pays(256, 256, 3, 1, 14) and pays(512, 512, 3, 1, 7, batch=4) and pays(256, 512, 3, 2, 14)
    assert not pays(128, 128, 3, 1, 28) and not pays(64, 64, 3, 1, 56)  # ratio 1.5 and 0.2
    assert not pays(512, 512, 3, 1, 7, cl_weight=True) and not pays(512, 512, 3, 1, 7, cl_input=False)
    assert not pays(512, 512, 3, 1, 7, dtype=torch.bfloat16) and not pays(1024, 2048, 1, 1, 2)
    assert not pays(512, 512, 3, 1, 2)  # 4 output pixels: the GEMM unit pays there
    assert pays(512, 512, 3, 1, 4)  # 16


f23_only = pytest.mark.skipif(not torch.ops.resnet_ext.winograd_f23_supported(), reason="this CPU has no AVX-512")


@f23_only
@pytest.mark.parametrize("cl_model", [False, True], ids=["model_nchw", "model_cl"])
def test_default_mode_winograd_units_match_torchvision(cl_model):
    """The default mode's fp32 3x3 stride-1 convs of 196 or more 2x2 tiles by F(2x2) on the live weight: resnet18
    at 4x112x112 has them in layers 1 (28x28: 784 tiles) and 2 (14x14: 196), not 3 (64); torchvision's answer,
    no further from float64 than torchvision is; cpu_winograd(False) turns them off from the next forward."""
    ours, tv = pair("resnet18")
    fmt = torch.channels_last if cl_model else torch.contiguous_format
    ours, tv = ours.to(memory_format=fmt), tv.to(memory_format=fmt)
    x = torch.randn(4, 3, 112, 112).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref64 = copy.deepcopy(tv).double()(x.double())
        ref = tv(x)
        for _ in range(2):  # record, replay
            y, counts = counts_of(lambda: ours(x))
            assert counts.get("winograd_unfolded") == 7, counts
            assert rel_err(y, ref) < TOL
            assert rel_err(y.double(), ref64) < 2 * rel_err(ref.double(), ref64) + 1e-7
        try:
            assert resnet_ext.cpu_winograd(False) is True
            y, counts = counts_of(lambda: ours(x))
            assert "winograd_unfolded" not in counts and rel_err(y, ref) < TOL
        finally:
            resnet_ext.cpu_winograd(True)
        _, counts = counts_of(lambda: ours(x))
        assert counts.get("winograd_unfolded") == 7


@f23_only
def test_default_mode_winograd_plan_after_the_weights_change_layout(monkeypatch):
    """A channels_last model's NCHW input: the stem hands layer 1 channels_last maps and the plan takes F(2x2)
    there; the weights made NCHW afterwards through `.data` (the same Parameters, so the same plan) hand NCHW maps
    instead, which the units then give to the stock conv: torchvision's answer, no error. Made NCHW through
    `model.to`, the plan is dropped and learned again."""
    ours, tv = pair("resnet18")
    ours, tv = ours.to(memory_format=torch.channels_last), tv.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 112, 112)
    calls = []
    real = ops.winograd3x3
    monkeypatch.setattr(ops, "winograd3x3", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        _, counts = counts_of(lambda: ours(x))
        assert counts.get("winograd_unfolded", 0) > 0 and len(calls) == counts["winograd_unfolded"], counts
        (key, plan), = state.of(ours).flat_plans.items()
        for m in (ours, tv):
            for conv in (c for c in m.modules() if isinstance(c, nn.Conv2d)):
                conv.weight.data = conv.weight.data.contiguous()
        calls.clear()
        assert rel_err(ours(x), tv(x)) < TOL
        assert state.of(ours).flat_plans.get(key) is plan and not calls  # the same plan, every unit on the stock conv
        ours.to(memory_format=torch.contiguous_format)  # _apply: the plans are dropped
        assert not state.of(ours).flat_plans
        assert rel_err(ours(x), tv(x)) < TOL and state.of(ours).flat_plans.get(key) is not plan


@f23_only
def test_default_mode_winograd_leaves_1x1_maps_of_nchw_inputs_to_the_stock_conv():
    """An NCHW input below the channels_last switch keeps torchvision's bits, also where a late layer's (N, C, 1, 1)
    maps (dense in both layouts) have 196 or more tiles: resnet18 at 256x3x16x16."""
    ours, tv = pair("resnet18")
    x = torch.randn(256, 3, 16, 16)
    with torch.no_grad():
        y, counts = counts_of(lambda: ours(x))
        assert "winograd_unfolded" not in counts and counts.get("flat_forwards") == 1, counts
        assert torch.equal(y, tv(x))


@f23_only
@pytest.mark.parametrize("change", ["kernel 1x1", "fewer input channels", "float64", "with bias"])
def test_default_mode_winograd_unit_after_a_weight_change(change):
    """A weight swapped through `.data` (or a bias added) after the plan chose F(2x2) for the unit: the stock conv
    runs it, torchvision's answer or its error."""
    ours, tv = pair("resnet18")
    x = torch.randn(4, 3, 112, 112).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        _, counts = counts_of(lambda: ours(x))
        assert counts.get("winograd_unfolded") == 7
        for m in (ours, tv):
            conv = m.layer1[1].conv1
            w = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(1)) * 0.05
            if change == "kernel 1x1":
                conv.weight.data = w[:, :, :1, :1].contiguous()
            elif change == "fewer input channels":
                conv.weight.data = w[:, :32].contiguous()
            elif change == "float64":
                conv.weight.data = w.double()
            else:
                conv.bias = nn.Parameter(torch.full((64,), 0.5))
        try:
            ref = tv(x)
        except RuntimeError as e:
            with pytest.raises(RuntimeError) as got:
                ours(x)
            assert str(got.value).split("\n")[0] == str(e).split("\n")[0]
            return
        assert rel_err(ours(x), ref) < TOL


@pytest.mark.parametrize("cl_model", [False, True], ids=["model_nchw", "model_cl"])
def test_1x1_maps_run_as_torchvision_runs_them(cl_model):
    """A 32x32 input leaves layer4 with 1x1 maps, dense in both layouts: the units hand ATen NCHW strides as
    torchvision's BN does (no per-call copy of layer4's weights), and every BN still runs in the one fused pass
    (no residual whose strides differ from the output's sends a unit to torchvision's BN module)."""
    ours, tv = pair("resnet18")
    fmt = torch.channels_last if cl_model else torch.contiguous_format
    ours, tv = ours.to(memory_format=fmt), tv.to(memory_format=fmt)
    x = torch.randn(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = tv(x)
        ours(x)
        with torch.profiler.profile(record_shapes=True) as prof:
            y = ours(x)
    ops_run = prof.key_averages(group_by_input_shape=True)
    assert not [e for e in ops_run if e.key == "aten::batch_norm"]
    assert not [e for e in ops_run if e.key == "aten::clone" and e.input_shapes[0] == [512, 512, 3, 3]]
    if cl_model:
        assert torch.equal(y, ref)  # the same convolutions in the same layouts: torchvision's bits
    else:
        assert rel_err(y, ref) < TOL


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("value", [2, [2, 2]], ids=["int", "list"])
def test_conv_geometry_set_to_an_int_or_a_list(frozen, when, value):
    """F.conv2d takes an int or a list stride; nn.Conv2d stores tuples. Set afterwards, an int raised TypeError in
    both modes and a list was unhashable in the frozen plan's keys (found in review): such a conv's unit now runs
    through its modules, with torchvision's answer."""
    ours, tv = pair("resnet50", frozen)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        if when == "after":
            ours(x)
        for m in (ours, tv):
            m.layer2[0].downsample[0].stride = value
            m.layer3[0].conv2.stride = value
            m.layer1[1].conv2.dilation = [1, 1]
        assert rel_err(ours(x), tv(x)) < TOL
        assert rel_err(ours(x), tv(x)) < TOL  # replayed


@pytest.mark.parametrize("when", ["before", "after"])
def test_frozen_bn_eps_changed_after_freeze(when):
    """eps is a module attribute, not a value behind the freeze contract: the frozen forward gives torchvision's
    answer with the new eps (it kept the folds' eps, 1.2e-2 off; found in review)."""
    ours, tv = pair("resnet50", frozen=True)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        if when == "after":
            ours(x)
        for m in (ours, tv):
            m.layer1[0].bn3.eps = 0.5
            m.layer2[0].downsample[1].eps = 0.25
        y = ours(x)
        assert rel_err(y, tv(x)) < TOL
        resnet_ext.freeze(ours)  # refolded with the new eps: the whole flat plan again
        units.reset_path_counts()
        assert rel_err(ours(x), tv(x)) < TOL
        assert resnet_ext.path_counts().get("flat_forwards") == 1
