"""The frozen CPU forward's recorded programs (`engine.replay`, `resnet_ext.cpu_replay`): the first forward of an
input plans, the second records its operator calls, later ones replay them from C++ -- bit for bit the plan's own
output -- while every change a forward would see (weights refrozen or reloaded, the fc, the max pool's attributes,
hooks, another input) is seen as before; a recording that cannot be proven replayable is not kept."""
import weakref

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import resnet_ext
from resnet_ext._C_loader import _C
from resnet_ext.engine import replay
from conftest import frozen_pair, tv_model

BF16 = [torch.bfloat16] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else []


def forwards(model, x, n):
    resnet_ext.reset_path_counts()
    with torch.no_grad():
        outs = [model(x) for _ in range(n)]
    return outs, resnet_ext.path_counts().get("cpu_replays", 0)


@pytest.mark.parametrize("dtype", [None] + BF16, ids=lambda d: "bf16" if d else "fp32")
@pytest.mark.parametrize("arch, shape", [("resnet18", (1, 3, 64, 64)), ("resnet50", (2, 3, 72, 56)),
                                         ("resnet50", (1, 3, 224, 224))])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_replays_give_the_plans_bits(dtype, arch, shape, layout):
    model, tv = frozen_pair(arch, dtype)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    before = x.clone()
    outs, replays = forwards(model, x, 4)
    assert replays == 2  # the first forward plans, the second records
    prev = resnet_ext.cpu_replay(False)
    try:
        ref, none = forwards(model, x, 1)
    finally:
        resnet_ext.cpu_replay(prev)
    assert none == 0
    for o in outs:
        assert torch.equal(o, ref[0])
    assert torch.equal(x, before)
    with torch.no_grad():
        want = tv(x)
    tol = 1e-4 if dtype is None else 5e-2
    assert (outs[-1] - want).abs().max() <= tol * want.abs().max()


def test_the_switch_turns_it_off_and_on():
    model, _ = frozen_pair("resnet18")
    x = torch.randn(1, 3, 64, 64)
    prev = resnet_ext.cpu_replay(False)
    try:
        assert forwards(model, x, 3)[1] == 0
    finally:
        assert resnet_ext.cpu_replay(prev) is False
    assert forwards(model, x, 3)[1] == 2  # recorded on the first forward with the switch on


def test_refreeze_load_state_dict_and_to_drop_the_program():
    model, tv = frozen_pair("resnet18")
    x = torch.randn(1, 3, 64, 64)
    assert forwards(model, x, 3)[1] == 1
    other = tv_model("resnet18", num_classes=10).eval()
    model.load_state_dict(other.state_dict())
    outs, replays = forwards(model, x, 3)
    assert replays == 1  # planned and recorded again on the new folds
    with torch.no_grad():
        want = other(x)
    for o in outs:
        assert (o - want).abs().max() <= 1e-4 * want.abs().max()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    resnet_ext.freeze(model)
    outs, replays = forwards(model, x, 3)
    assert replays == 1
    halved = tv_model("resnet18", num_classes=10).eval()
    halved.load_state_dict(model.state_dict())
    with torch.no_grad():
        want = halved(x)
    for o in outs:
        assert (o - want).abs().max() <= 1e-4 * want.abs().max()


def test_a_new_fc_and_max_pool_are_seen():
    model, tv = frozen_pair("resnet18")
    x = torch.randn(1, 3, 64, 64)
    forwards(model, x, 3)
    with torch.no_grad():  # the fc is read live (not behind the freeze contract): the head runs in Python
        for m in (model, tv):
            m.fc.weight.mul_(-2)
    outs, replays = forwards(model, x, 2)
    with torch.no_grad():
        want = tv(x)
    assert replays == 2 and (outs[-1] - want).abs().max() <= 1e-4 * want.abs().max()
    fc = torch.nn.Linear(512, 7)
    model.fc, tv.fc = fc, fc
    outs, replays = forwards(model, x, 3)
    assert replays == 1 and outs[-1].shape == (1, 7)  # another module: another structure, planned again
    with torch.no_grad():
        want = tv(x)
    assert (outs[-1] - want).abs().max() <= 1e-4 * want.abs().max()
    model.maxpool.kernel_size = tv.maxpool.kernel_size = 2
    outs, replays = forwards(model, x, 3)
    assert replays == 1  # another key: planned and recorded again
    with torch.no_grad():
        want = tv(x)
    assert (outs[-1] - want).abs().max() <= 1e-4 * want.abs().max()


def test_hooks_and_non_finite_inputs_run_as_before():
    model, tv = frozen_pair("resnet18")
    x = torch.randn(1, 3, 64, 64)
    forwards(model, x, 3)
    seen = []
    h = model.layer2.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        assert forwards(model, x, 2)[1] == 0 and len(seen) == 2
    finally:
        h.remove()
    bad = x.clone()
    bad[0, 0, 3, 3] = float("nan")
    outs, replays = forwards(model, bad, 1)
    with torch.no_grad():
        want = tv(bad)
    assert replays == 0 and torch.equal(outs[0].isnan(), want.isnan())


def test_no_replay_under_a_users_dispatch_mode():
    model, _ = frozen_pair("resnet18")
    x = torch.randn(1, 3, 64, 64)
    forwards(model, x, 3)

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        assert forwards(model, x, 1)[1] == 0
    assert Count.n > 20  # the mode saw the units' calls


def test_program_runs_calls_and_checks_its_arguments():
    p = _C.CpuProgram()
    p.add("aten::add", "Tensor", [None, None, 1], [0, 0, -1], 1)  # x + x
    p.add("aten::relu_", "", [None], [1], -1)                      # in place, no new slot
    p.add("aten::mul", "Tensor", [None, torch.tensor(3.0)], [1, -1], 2)
    with pytest.raises(RuntimeError, match="not finished"):
        p.run(torch.ones(2))
    p.finish(2)
    x = torch.tensor([-1.0, 2.0])
    assert torch.equal(p.run(x), torch.tensor([0.0, 12.0])) and torch.equal(x, torch.tensor([-1.0, 2.0]))
    assert p.calls == 3
    with pytest.raises(RuntimeError, match="finished"):
        p.finish(1)
    q = _C.CpuProgram()
    with pytest.raises(RuntimeError, match="takes 3 arguments"):
        q.add("aten::add", "Tensor", [None, None], [0, 0], 1)
    with pytest.raises(RuntimeError, match="cannot be slot 4"):
        q.add("aten::add", "Tensor", [None, None, 1], [0, 4, -1], 1)
    with pytest.raises(RuntimeError, match="next slot, 1"):
        q.add("aten::add", "Tensor", [None, None, 1], [0, 0, -1], 3)
    with pytest.raises(RuntimeError, match="result must be a slot"):
        q.finish(5)


def test_recordings_it_cannot_prove_are_not_kept():
    x = torch.randn(4, 8)
    outside = torch.randn(4, 8)  # made before the recording: not the input, no earlier call's output, not a constant
    prog, out = replay.record(lambda t: torch.relu(t) + outside, x, [])
    assert prog is None and torch.equal(out, torch.relu(x) + outside)
    prog, _ = replay.record(lambda t: torch.relu(t) + outside, x, [outside])
    assert prog is not None and torch.equal(prog.run(x), torch.relu(x) + outside)
    prog, _ = replay.record(lambda t: torch.cat([t, t]), x, [])  # a list of tensors
    assert prog is None
    prog, _ = replay.record(lambda t: t + torch.rand_like(t), x, [])  # another result on the verifying replay
    assert prog is None


def test_inputs_alternating_in_shape_and_layout_each_replay_their_own_program():
    model, _ = frozen_pair("resnet18")
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(1, 3, 64, 64, generator=g), torch.randn(2, 3, 48, 64, generator=g)]
    xs.append(xs[0].contiguous(memory_format=torch.channels_last))
    prev = resnet_ext.cpu_replay(False)
    try:
        with torch.no_grad():
            want = [model(x) for x in xs]
    finally:
        resnet_ext.cpu_replay(prev)
    resnet_ext.reset_path_counts()
    with torch.inference_mode():
        for _ in range(4):
            for x, w in zip(xs, want):
                assert torch.equal(model(x), w)
    assert resnet_ext.path_counts().get("cpu_replays") == 3 * len(xs)  # planned with the switch off; recorded once


def test_replays_read_the_input_they_are_given():
    """New values of the recorded shape, and the recorded tensor itself changed in place: the replay computes them."""
    model, tv = frozen_pair("resnet18")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 3, 64, 64, generator=g)
    forwards(model, x, 3)
    others = [torch.randn(1, 3, 64, 64, generator=g) for _ in range(2)]
    resnet_ext.reset_path_counts()
    with torch.no_grad():
        got = [model(o) for o in others]
        x.mul_(-1.5)
        got.append(model(x))
        want = [tv(o) for o in others + [x]]
    assert resnet_ext.path_counts().get("cpu_replays") == 3
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    assert not torch.equal(got[0], got[1])


def test_no_replay_under_a_function_mode_or_for_a_tensor_subclass():
    model, _ = frozen_pair("resnet18")
    x = torch.randn(1, 3, 64, 64)
    forwards(model, x, 3)

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Watch():
        assert forwards(model, x, 1)[1] == 0

    class Sub(torch.Tensor):
        pass

    assert forwards(model, x.as_subclass(Sub), 3)[1] == 0


@pytest.mark.parametrize("dtype", [None] + BF16, ids=lambda d: "bf16" if d else "fp32")
def test_a_plain_tensor_subclass_comes_back_as_torchvisions_does(dtype):
    """A subclass without a __torch_function__ of its own runs the frozen plan (not the replay) and comes back as
    the type torchvision's modules return: the input's class for a subclass, a plain tensor for a Parameter (the
    bf16 mode's own cast once returned a plain tensor for both)."""
    model, tv = frozen_pair("resnet18", dtype)

    class Sub(torch.Tensor):
        def __getitem__(self, index):  # its own methods are the user's: the mode must not call them
            raise TypeError("Sub: no indexing")

    x = torch.randn(1, 3, 64, 64)
    plain = forwards(model, x, 1)[0][0]
    for inp in (x.as_subclass(Sub), torch.nn.Parameter(x.clone(), requires_grad=False)):
        with torch.no_grad():
            want = type(tv(inp))
        outs, replays = forwards(model, inp, 3)
        assert want is (Sub if type(inp) is Sub else torch.Tensor)
        assert replays == 0 or (type(inp) is not Sub and dtype is not None)  # the bf16 cast's plain tensor replays
        for out in outs:
            assert type(out) is want and torch.equal(out.as_subclass(torch.Tensor), plain)


def test_a_failing_program_is_dropped_and_the_plan_runs(monkeypatch):
    real = _C.CpuProgram

    class Broken:
        def __init__(self):
            self.inner = real()

        def add(self, *a):
            self.inner.add(*a)

        def finish(self, r):
            self.inner.finish(r)

        def run(self, x):
            raise RuntimeError("boom")

    monkeypatch.setattr(replay._C, "CpuProgram", Broken)
    model, tv = frozen_pair("resnet18")
    x = torch.randn(1, 3, 64, 64)
    outs, replays = forwards(model, x, 4)
    assert replays == 0
    with torch.no_grad():
        want = tv(x)
    assert (outs[-1] - want).abs().max() <= 1e-4 * want.abs().max()


def test_the_recording_holds_no_intermediate():
    """An intermediate the forward drops is freed then, during the recording (the plan's own peak memory)."""
    x = torch.randn(64, 64)
    alive = []

    def fn(t):
        y = torch.relu(t)
        ref = weakref.ref(y)
        z = torch.sigmoid(y)
        del y
        alive.append(ref() is not None)
        return torch.add(z, z)

    prog, out = replay.record(fn, x, [])
    assert prog is not None and alive == [False]
    assert torch.equal(prog.run(x), out)


def test_recordings_leave_no_callbacks_on_the_tensors_they_saw():
    """Each recording registered a weakref.finalize on every tensor it saw and never dropped them: a service feeding
    long-lived input buffers of more sizes than a model keeps plans for (8) grew the registry by one entry per
    buffer and recording, without bound."""
    torch.manual_seed(0)
    model = resnet_ext.freeze(resnet_ext.resnet18(num_classes=10))
    buffers = [torch.randn(1, 3, 32 + 8 * k, 32) for k in range(10)]
    with torch.no_grad():
        for x in buffers:
            model(x), model(x)  # a plan, then its recording
        before = len(weakref.finalize._registry)
        for x in buffers:  # the plans were dropped when the cache filled: planned and recorded again
            model(x), model(x)
    assert len(weakref.finalize._registry) == before
