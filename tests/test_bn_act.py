"""The training BN(+add)+ReLU ops on the CPU: numbers and running statistics against nn.BatchNorm2d, gradcheck,
opcheck, errors, autocast, and cross-process statistics with two gloo processes."""
import contextlib
import copy
import functools
import os
import sys
import time
import traceback

import pytest
import torch
import torch.nn.functional as F

import resnet_ext
from conftest import hard_bn_batches, rel_err, tv_model
from resnet_ext.bn_act import bn_act

ops = torch.ops.resnet_ext

# (N, C, H, W): odd sizes, batch 1 with H*W > 1, 1x1 maps, a ResNet-like shape.
SHAPES = [(3, 5, 7, 6), (1, 8, 3, 5), (6, 16, 1, 1), (2, 64, 14, 14)]


def reference(x, bn, residual, relu):
    y = bn(x)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


def make_bn(c, dtype, momentum=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm2d(c, momentum=momentum).to(dtype).train()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.rand(c, generator=g) - 0.5)
        bn.running_mean.copy_(torch.rand(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_matches_batchnorm_forward_backward_and_running_stats(shape, residual, relu, channels_last, momentum):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).contiguous(memory_format=fmt)
    r = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt) if residual else None
    ours, ref = make_bn(shape[1], torch.float64, momentum), make_bn(shape[1], torch.float64, momentum)
    gy = torch.randn(shape, dtype=torch.float64)
    outs, grads = [], []
    for bn, fn in ((ours, lambda a, b: bn_act(a, ours, b, relu)), (ref, lambda a, b: reference(a, ref, b, relu))):
        xa = x.clone().requires_grad_()
        ra = r.clone().requires_grad_() if residual else None
        for _ in range(2):  # two steps: the running statistics compound
            y = fn(xa, ra)
        y.backward(gy)
        outs.append(y)
        grads.append([xa.grad, bn.weight.grad, bn.bias.grad] + ([ra.grad] if residual else []))
    assert rel_err(outs[0], outs[1]) < 1e-12
    for a, b in zip(*grads):
        assert rel_err(a, b) < 1e-10
    assert rel_err(ours.running_mean, ref.running_mean) < 1e-12
    assert rel_err(ours.running_var, ref.running_var) < 1e-12
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 2


@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
def test_gradcheck_float64(shape):
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    r = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(shape[1], dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)

    def f(x, r, w, b):
        return ops.bn_act_train(x, r, w, b, None, 1e-5, True)[0]

    # Keep pre-activations off the ReLU kink, where finite differences are meaningless.
    with torch.no_grad():
        pre = F.batch_norm(x, None, None, w, b, True, 0.0, 1e-5) + r
        r.add_(torch.where(pre.abs() < 1e-2, 0.1, 0.0))
    assert torch.autograd.gradcheck(f, (x, r, w, b))


@pytest.mark.parametrize("via", ["op", "bn_act"])
def test_gradgradcheck_float64(via):
    """Second derivatives (gradient penalties): the op's registered backward and the models' bn_act both compute a
    backward under create_graph in differentiable ops."""
    torch.manual_seed(2)
    shape = (3, 4, 3, 2)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    r = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    bn = torch.nn.BatchNorm2d(4, track_running_stats=False).double().train()

    with torch.no_grad():
        bn.weight.copy_(w)
        bn.bias.copy_(b)
        pre = F.batch_norm(x, None, None, w, b, True, 0.0, 1e-5) + r  # pre-activations off the ReLU kink
        r.add_(torch.where(pre.abs() < 1e-2, 0.1, 0.0))
    if via == "op":
        assert torch.autograd.gradgradcheck(lambda *a: ops.bn_act_train(*a, None, 1e-5, True)[0], (x, r, w, b))
    else:  # the BN's own weight and bias take part as parameters
        assert torch.autograd.gradgradcheck(lambda x, r: bn_act(x, bn, r), (x, r))


@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_every_op(channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    n, c, h, w = 3, 8, 5, 4
    x = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
    r = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
    wt, b, rm = torch.rand(c) + 0.5, torch.randn(c), torch.randn(c)
    for residual in (None, r):
        for relu in (True, False):
            args = (x.clone().requires_grad_(), None if residual is None else residual.clone().requires_grad_(),
                    wt.clone().requires_grad_(), b.clone().requires_grad_(), rm, 1e-5, relu)
            torch.library.opcheck(ops.bn_act_train.default, args)
    y, mean, invstd, _ = ops.bn_act_train(x, r, wt, b, rm, 1e-5, True)
    gy = torch.randn_like(y)
    torch.library.opcheck(ops.bn_act_train_backward.default, (gy, y, x, wt, mean, invstd, True, True))
    torch.library.opcheck(ops.bn_act_train_backward.default, (gy, y, x, wt, mean, invstd, False, False))
    torch.library.opcheck(ops.bn_stats.default, (x, rm))
    torch.library.opcheck(ops.bn_stats.default, (x, None))
    torch.library.opcheck(ops.bn_act_apply.default, (x, r, wt, b, mean, invstd, True))
    torch.library.opcheck(ops.bn_act_backward_reduce.default, (gy, y, x, mean, invstd, True))
    sums = ops.bn_act_backward_reduce(gy, y, x, mean, invstd, True)
    torch.library.opcheck(ops.bn_act_backward_apply.default, (gy, y, x, wt, mean, invstd, sums, float(n * h * w),
                                                              True, True))


def test_pieces_compose_to_the_fused_op():
    torch.manual_seed(2)
    x, r = torch.randn(4, 6, 5, 5, dtype=torch.float64), torch.randn(4, 6, 5, 5, dtype=torch.float64)
    w, b, rm = torch.rand(6, dtype=torch.float64) + 0.5, torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    y, mean, invstd, var_unb = ops.bn_act_train(x, r, w, b, rm, 1e-5, True)
    sums = ops.bn_stats(x, rm)
    n = 4 * 25
    mu = sums[0] / n
    assert rel_err(rm + mu, mean) < 1e-12
    var = sums[1] / n - mu * mu
    assert rel_err(torch.rsqrt(var + 1e-5), invstd) < 1e-12
    assert rel_err(var * n / (n - 1), var_unb) < 1e-10
    assert rel_err(ops.bn_act_apply(x, r, w, b, mean, invstd, True), y) < 1e-12
    gy = torch.randn_like(y)
    dx, dw, db, dres = ops.bn_act_train_backward(gy, y, x, w, mean, invstd, True, True)
    s = ops.bn_act_backward_reduce(gy, y, x, mean, invstd, True)
    assert rel_err(s[0], db) < 1e-12 and rel_err(s[1], dw) < 1e-12
    dx2, dres2 = ops.bn_act_backward_apply(gy, y, x, w, mean, invstd, s, float(n), True, True)
    assert rel_err(dx2, dx) < 1e-10 and rel_err(dres2, dres) < 1e-12


def test_one_value_per_channel_is_the_same_error_as_torch():
    bn = make_bn(4, torch.float32)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn(torch.randn(1, 4, 1, 1))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn_act(torch.randn(1, 4, 1, 1), bn)
    with pytest.raises(RuntimeError, match="Expected more than 1 value per channel when training"):
        ops.bn_act_train(torch.randn(1, 4, 1, 1), None, bn.weight, bn.bias, None, 1e-5, True)


def _same_error(f, g):
    """f and g raise the same exception type with the same message, or neither raises."""
    errs = []
    for call in (f, g):
        try:
            call()
            errs.append(None)
        except Exception as e:  # noqa: BLE001 (compared below)
            errs.append((type(e), str(e)))
    assert errs[0] == errs[1], errs
    return errs[0]


@pytest.mark.parametrize("case", ["2d_on_bn2d", "3d_on_bn2d", "5d_on_bn2d", "bn64_x32", "stats64_x32", "x64_bn32",
                                  "int_x"])
def test_bn_act_checks_its_input_as_the_module(case):
    """bn_act(x, bn) raises the module's error (and leaves its counter as the module does) where bn(x) raises:
    the input's dimensions and ATen's "mixed dtype" rule; it computed an answer before."""
    x = {"2d_on_bn2d": torch.randn(4, 4), "3d_on_bn2d": torch.randn(4, 4, 5),
         "5d_on_bn2d": torch.randn(2, 4, 3, 3, 3), "int_x": torch.randint(0, 3, (2, 4, 3, 3)),
         "x64_bn32": torch.randn(2, 4, 3, 3, dtype=torch.float64)}.get(case, torch.randn(2, 4, 3, 3))
    bns = [make_bn(4, torch.float32) for _ in range(2)]
    for bn in bns:
        if case == "bn64_x32":
            bn.double()
        elif case == "stats64_x32":
            bn.running_mean.data = bn.running_mean.double()
            bn.running_var.data = bn.running_var.double()
    assert _same_error(lambda: torch.relu(bns[0](x)), lambda: bn_act(x, bns[1])) is not None
    assert bns[0].num_batches_tracked.item() == bns[1].num_batches_tracked.item()
    assert torch.equal(bns[0].running_mean, bns[1].running_mean)


@pytest.mark.parametrize("cls,shape", [(torch.nn.BatchNorm1d, (4, 6, 7)), (torch.nn.BatchNorm3d, (2, 6, 3, 4, 5)),
                                       (torch.nn.BatchNorm1d, (5, 6))])
def test_bn_act_takes_what_the_module_takes(cls, shape):
    """A BatchNorm1d's (N, C, L) and a BatchNorm3d's 5-D input: the module's answer and running statistics (the op
    takes them as (N, C, -1, 1)); bn_act raised before."""
    torch.manual_seed(0)
    ref, bn = cls(6).double(), cls(6).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    r = torch.randn(*shape, dtype=torch.float64)
    y_ref, y = torch.relu(ref(x) + r), bn_act(x, bn, r)
    assert y.shape == y_ref.shape and rel_err(y, y_ref) < 1e-12
    g_ref, = torch.autograd.grad(y_ref.square().sum(), x)
    g, = torch.autograd.grad(y.square().sum(), x)
    assert rel_err(g, g_ref) < 1e-10
    assert rel_err(bn.running_var, ref.running_var) < 1e-12 and rel_err(bn.running_mean, ref.running_mean) < 1e-12


@pytest.mark.parametrize("over,match", [
    (dict(weight=torch.ones(3)), r"weight must have shape \[4\]"),
    (dict(residual=torch.randn(2, 4, 3, 2)), r"residual must have x's shape"),
    (dict(residual=torch.randn(2, 4, 3, 3, dtype=torch.float64)), r"residual must have x's dtype"),
    (dict(x=torch.randint(0, 3, (2, 4, 3, 3))), r"x must be a floating-point tensor"),
    (dict(x=torch.randn(2, 4, 3)), r"x must be a 4-D"),
])
def test_bad_input_names_the_argument(over, match):
    a = dict(x=torch.randn(2, 4, 3, 3), residual=None, weight=torch.ones(4), bias=torch.zeros(4), running_mean=None,
             eps=1e-5, relu=True)
    a.update(over)
    with pytest.raises(RuntimeError, match=match):
        ops.bn_act_train(*a.values())


@pytest.mark.parametrize("training", [False, True])
def test_bn_act_checks_relu_and_residual_in_either_mode(training):
    """relu="no" read as True and a broadcastable residual were taken in eval mode, refused in train mode."""
    bn, x = torch.nn.BatchNorm2d(8).train(training), torch.randn(2, 8, 5, 5)
    with pytest.raises(TypeError, match="bn_act: relu must be True or False, got 'no'"):
        bn_act(x, bn, relu="no")
    with pytest.raises(RuntimeError, match=r"residual must have x's shape"):
        bn_act(x, bn, torch.randn(1, 8, 1, 1))
    with pytest.raises(TypeError, match="bn_act: residual must be a Tensor or None, got float"):
        bn_act(x, bn, 1.0)
    with pytest.raises(TypeError, match="bn_act: x must be a Tensor, got list"):
        bn_act([1.0], bn)


@pytest.mark.parametrize("residual", [False, True])
def test_an_output_without_relu_may_be_changed_in_place(residual):
    """As after nn.BatchNorm2d (which saves its input): bn_act(relu=False) kept its output for backward, so an
    in-place ReLU or add on it failed there ("modified by an inplace operation")."""
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 8, 5, 5, dtype=torch.float64) if residual else None
    ref_bn, bn = make_bn(8, torch.float64), make_bn(8, torch.float64)
    ref = ref_bn(x) + r if residual else ref_bn(x)
    y = bn_act(x, bn, r, relu=False)
    ref.relu_(), y.relu_()
    g_ref, = torch.autograd.grad(ref.square().sum(), x)
    g, = torch.autograd.grad(y.square().sum(), x)
    assert rel_err(y, ref) < 1e-12 and rel_err(g, g_ref) < 1e-10


def test_explain_train_names_a_bad_argument():
    """explain_train(None) raised AttributeError from inside; a block that is no module was taken."""
    with pytest.raises(TypeError, match="explain_train: x must be a Tensor, got NoneType"):
        resnet_ext.explain_train(None)
    with pytest.raises(TypeError, match="explain_train: block must be an nn.Module or None, got str"):
        resnet_ext.explain_train(torch.randn(2, 64, 8, 8), "layer1")


@pytest.mark.parametrize("mode", ["auto", "fused", "stock"])
def test_model_train_mode_runs_the_chosen_bn(monkeypatch, mode):
    calls = []
    real = resnet_ext.engine.units.bn_act
    monkeypatch.setattr(resnet_ext.engine.units, "bn_act", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = resnet_ext.resnet50(num_classes=10).train()
    x = torch.randn(2, 3, 64, 64)
    previous = resnet_ext.train_bn(mode)
    try:
        path, reason = resnet_ext.explain_train(x)
        resnet_ext.reset_path_counts()
        model(x).sum().backward()
        counts = resnet_ext.path_counts()
    finally:
        resnet_ext.train_bn(previous)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # On the CPU "auto" is the stock composition: the fused op is ATen's own composition there, no faster.
    expected = "fused" if mode == "fused" else "stock"
    assert path == expected and ("cpu" in reason or mode in reason), (path, reason)
    assert counts == {f"train_{expected}": n_bn}, counts
    assert len(calls) == (n_bn if expected == "fused" else 0)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 128, 128)], ids=["small", "reuse"])
def test_stock_training_runs_torchvisions_code(monkeypatch, shape):
    """A train-mode forward whose BNs all train stock runs torchvision's block code, not the engine's units (on the
    CPU the ResNet's own forward enters where the memory reuse pays, `cpu.reuse_pays`: the stem is then its one
    unit); a block with a BN in eval mode (a frozen BN in fine-tuning) hands over to the engine, which folds that
    unit; the numbers stay torchvision's."""

    calls = []
    real = resnet_ext.engine.units.unit
    monkeypatch.setattr(resnet_ext.engine.units, "unit", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = resnet_ext.resnet18(num_classes=10).train()
    tv = tv_model("resnet18", num_classes=10).train()
    tv.load_state_dict(model.state_dict())
    x = torch.randn(shape)
    stem = int(resnet_ext.engine.cpu.reuse_pays(x))
    assert stem == (shape[0] * shape[2] * shape[3] >= 128 * 128)
    resnet_ext.reset_path_counts()
    torch.testing.assert_close(model(x), tv(x), rtol=0, atol=0)
    assert len(calls) == stem and resnet_ext.path_counts() == {"train_stock": 20}, (calls, resnet_ext.path_counts())
    for m in (model, tv):
        m.layer2[0].bn1.eval()
    calls.clear()
    torch.testing.assert_close(model(x), tv(x), rtol=1e-5, atol=1e-5)
    assert len(calls) == stem + 3, calls  # (the stem and) layer2[0]'s three units (downsample included)


def test_train_bn_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="train_bn: mode must be one of"):
        resnet_ext.train_bn("fast")
    assert resnet_ext.train_bn() == "auto"


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
@pytest.mark.parametrize("block", ["BasicBlock", "Bottleneck"])
def test_batched_backward_in_train_mode_matches_torchvision(train_mode, block, fmt):
    """A batched backward (torch.autograd.grad's is_grads_batched, as vectorized jacobians run it) through train-mode
    BNs: the fused op's backward asked the vmapped gradient for channels_last, which vmap refuses (helper-43)."""
    import torchvision.models.resnet as tvr

    torch.manual_seed(0)
    tv = tvr.ResNet(getattr(tvr, block), [1, 1, 1, 1], num_classes=10).double().train()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv)).train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=fmt)
    eye = torch.eye(20, dtype=torch.float64).view(20, 2, 10)
    grads = []
    for m in (ours, tv):
        xi = x.clone().requires_grad_()
        grads.append(torch.autograd.grad(m(xi), xi, eye, is_grads_batched=True)[0])
    assert rel_err(grads[0], grads[1]) < 1e-10


def test_autocast_bf16_train_step_matches_torchvision(train_mode):
    """One Bottleneck per stage (every kind of unit, downsamples included; resnet50's 16 took 8.5 s per mode)."""
    import torchvision
    torch.manual_seed(0)
    tv = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10)
    ours = resnet_ext.ResNet(resnet_ext.Bottleneck, [1, 1, 1, 1], num_classes=10)
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(4, 3, 64, 64)
    outs = []
    for m in (ours, tv):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        out.float().sum().backward()
        outs.append(out.float())
    assert rel_err(outs[0], outs[1]) < 3e-2
    assert rel_err(ours.fc.weight.grad, tv.fc.weight.grad) < 3e-2
    assert rel_err(ours.layer1[0].bn1.running_mean, tv.layer1[0].bn1.running_mean) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_constant_channel_never_gets_a_negative_variance(dtype):
    """A channel of one value (e.g. pruned to zero) has variance 0; recovered as 1/invstd^2 - eps it rounded to
    either side of 0 (helper-39: running_var -1.8e-12 after 1000 steps where nn.BatchNorm2d keeps 5.6e-45)."""
    x = torch.zeros(2, 1, 3, 3, dtype=dtype) + torch.arange(1, 4, dtype=dtype).view(1, 1, 1, 3)
    x = torch.cat([x, torch.full((2, 1, 3, 3), 0.7, dtype=dtype)], 1).repeat(1, 8, 1, 1)  # channels 1, 3, ...: constant
    w, b = torch.ones(16, dtype=dtype), torch.zeros(16, dtype=dtype)
    for eps in (1e-5, 3e-5, 1e-3, 0.1, 0.3, 0.7):
        _, _, _, var = ops.bn_act_train(x, None, w, b, None, eps, True)
        assert (var >= 0).all(), (eps, var.min())
        assert (var[1::2] < 1e-6).all() and (var[0::2] > 0.5).all()


# ---------------------------------------------------------------------------------------------------------------
# Two gloo processes, each with half the batch, against one process with all of it (float64)
# ---------------------------------------------------------------------------------------------------------------

def _small_model():
    torch.manual_seed(0)
    return resnet_ext.ResNet(resnet_ext.Bottleneck, [1, 1, 1, 1], num_classes=10).double().train()


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 10, (4,), generator=g)


def _step(model, x, target, steps=2):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        F.cross_entropy(out, target).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        opt.step()
    return out.detach(), grads


@contextlib.contextmanager
def _gloo(rank, world, store_path):
    """A worker's gloo process group (one thread each), destroyed on the way out."""
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        yield
    finally:
        dist.destroy_process_group()


def _ddp_scenario(rank, fused):
    from torch.nn.parallel import DistributedDataParallel as DDP

    previous = resnet_ext.fused_train(fused)  # the Bottlenecks as the fused decomposition, its sums all-reduced
    resnet_ext.reset_path_counts()
    try:
        model = resnet_ext.convert_sync_batchnorm(_small_model())
        ddp = DDP(model)
        x, target = _batch()
        half = slice(2 * rank, 2 * rank + 2)
        # No host sync inside the cross-process BN: count .item() calls made from bn_act.py (and fused_train.py).
        syncs, real_item = [], torch.Tensor.item

        def item(t):
            if sys._getframe(1).f_code.co_filename.endswith(("bn_act.py", "fused_train.py")):
                syncs.append(1)
            return real_item(t)

        torch.Tensor.item = item
        try:
            out, grads = _step(ddp, x[half], target[half])
        finally:
            torch.Tensor.item = real_item
        state = {k: v.clone() for k, v in model.state_dict().items()}
        return {"out": out, "grads": {k.removeprefix("module."): v for k, v in grads.items()}, "state": state,
                "syncs": len(syncs), "graph_units": resnet_ext.path_counts().get("train_graph", 0)}
    finally:
        resnet_ext.fused_train(previous)


def _gloo_worker(rank, world, store_path, out_dir):
    """Every cross-process scenario in one pair of processes (each spawn costs seconds): each rank saves each
    scenario's results, or the traceback that stopped it (the scenarios after it are then not run)."""
    with _gloo(rank, world, store_path):
        for name, scenario in GLOO_SCENARIOS.items():
            try:
                found = scenario(rank)
            except Exception:  # noqa: BLE001 (reported by the scenario's test)
                torch.save({"error": traceback.format_exc()}, os.path.join(out_dir, f"{name}-rank{rank}.pt"))
                return
            torch.save(found, os.path.join(out_dir, f"{name}-rank{rank}.pt"))


@pytest.fixture(scope="module")
def gloo_ranks(tmp_path_factory):
    """ranks(name): both ranks' results of scenario `name`, from one run of _gloo_worker in two gloo processes."""
    import torch.multiprocessing as mp

    out_dir = tmp_path_factory.mktemp("gloo")
    ctx = mp.start_processes(_gloo_worker, args=(2, str(out_dir / "store"), str(out_dir)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.time() + 240
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two gloo processes did not finish within 240 s")

    def ranks(name):
        found = []
        for r in range(2):
            path = out_dir / f"{name}-rank{r}.pt"
            if not path.exists():
                pytest.fail(f"{name}: not run, an earlier scenario failed")
            found.append(torch.load(path))
            if "error" in found[-1]:
                pytest.fail(f"{name} failed on rank {r}:\n{found[-1]['error']}")
        return found

    return ranks


def _small_batches_scenario(rank):
    x, _ = _batch()
    found = {}
    for case, mine in (("one_each", x[rank:rank + 1]), ("empty_rank", x[:2] if rank == 0 else x[:0])):
        model = resnet_ext.convert_sync_batchnorm(_small_model())
        out = model(mine)
        (out * _loss_weights(out.shape)).sum().backward()
        found[case] = {"out": out.detach(), "state": dict(model.state_dict()),
                       "grads": {k: p.grad.clone() for k, p in model.named_parameters()}}
    return found


def _loss_weights(shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(shape[0]), dtype=torch.float64)


def test_cross_process_bn_with_one_value_per_channel_per_rank_or_an_empty_rank(gloo_ranks):
    """As nn.SyncBatchNorm: one value per channel on each of two ranks (a 1x1 map, batch 1 each) is two in all, not
    the one-process error; a rank with an empty batch joins the all-reduces with a count of zero (it skipped them
    and the other rank hung)."""
    ranks = gloo_ranks("small_batches")
    x, _ = _batch()
    for case, whole in (("one_each", x[:2]), ("empty_rank", x[:2])):
        model = _small_model()
        out = model(whole)
        outs = [r[case]["out"] for r in ranks]
        # each rank's loss weights are drawn for its own rows: the one-process loss is their sum
        (out * torch.cat([_loss_weights(o.shape) for o in outs if o.shape[0]])).sum().backward()
        assert rel_err(torch.cat(outs), out.detach()) < 1e-10, case
        for k, p in model.named_parameters():
            assert rel_err(ranks[0][case]["grads"][k] + ranks[1][case]["grads"][k], p.grad) < 1e-8, (case, k)
        for r in ranks:
            for k, v in model.state_dict().items():
                assert rel_err(r[case]["state"][k].double(), v.double()) < 1e-10, (case, k)


@pytest.mark.parametrize("fused", [False, True], ids=["bn_act", "fused_train"])
def test_two_gloo_processes_match_one_process(gloo_ranks, fused):
    ranks = gloo_ranks("fused_train" if fused else "bn_act")
    x, target = _batch()
    model = _small_model()
    out, grads = _step(model, x, target)
    assert [r["syncs"] for r in ranks] == [0, 0]  # the SyncBN forward and backward never wait for the host
    assert [r["graph_units"] for r in ranks] == ([2 * 4 * 4] * 2 if fused else [0, 0])  # 2 steps, 4 blocks
    assert rel_err(torch.cat([r["out"] for r in ranks]), out) < 1e-10
    for r in ranks:
        for k, g in grads.items():
            assert rel_err(r["grads"][k], g) < 1e-8, k
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                assert rel_err(r["state"][k], v) < 1e-10, k
            else:
                assert torch.equal(r["state"][k], v), k


def _hard_scenario(rank):
    found = {}
    for case, x in hard_bn_batches().items():
        bn = resnet_ext.convert_sync_batchnorm(torch.nn.BatchNorm2d(x.shape[1])).train()  # fresh statistics
        out = bn(x[4 * rank:4 * rank + 4])
        found[case] = {"out": out.detach(), "mean": bn.running_mean.clone(), "var": bn.running_var.clone()}
    return found


def test_cross_process_bn_in_fp32_is_as_precise_as_batchnorm_on_the_whole_batch(gloo_ranks):
    """Sums about a stale running mean lost 8.4e-4 of the output (mean/std 100, fresh statistics; helper-39), sums
    about a rank's first value 1.5e-3 where it is an outlier and NaN running means for an infinite one (helper-42),
    where nn.BatchNorm2d on the whole batch stays within 2e-6 and gives +-inf."""
    ranks = gloo_ranks("hard")
    for case, x in hard_bn_batches().items():
        c = x.shape[1]
        ref_mean, ref_var = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
        ref = F.batch_norm(x.double(), ref_mean, ref_var, training=True, momentum=0.1)
        if case == "inf":
            for r in ranks:
                assert torch.equal(r[case]["mean"].isnan(), ref_mean.isnan()), r[case]["mean"]
                assert torch.equal(r[case]["mean"].isinf(), ref_mean.isinf()), r[case]["mean"]
            continue
        torch_err = rel_err(torch.nn.BatchNorm2d(c).train()(x).detach(), ref)
        assert rel_err(torch.cat([r[case]["out"] for r in ranks]), ref) < 10 * torch_err + 1e-6, case
        for r in ranks:
            assert rel_err(r[case]["mean"], ref_mean) < 1e-6 and rel_err(r[case]["var"], ref_var) < 1e-6, case


OWN_FORWARD_CASES = ("hooked_bn", "torchvision", "bn1d_head")


def _own_forward_model(case):
    """A model whose converted BNs run their own module forward: a hook on a BN, a torchvision model, a BatchNorm1d
    in a custom head."""
    import torchvision

    model = _small_model()
    if case == "hooked_bn":
        model.layer1[0].bn2.register_forward_hook(lambda m, i, o: None)
    elif case == "torchvision":
        tv = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10)
        tv.load_state_dict(model.state_dict())
        model = tv.double().train()
    else:
        torch.manual_seed(1)
        model.fc = torch.nn.Sequential(torch.nn.Linear(2048, 16), torch.nn.BatchNorm1d(16),
                                       torch.nn.Linear(16, 10)).double()
    return model


def _own_forward_scenario(rank):
    x, _ = _batch()
    found = {}
    for case in OWN_FORWARD_CASES:
        model = resnet_ext.convert_sync_batchnorm(_own_forward_model(case))
        out = model(x[2 * rank:2 * rank + 2])
        (out * _loss_weights(out.shape)).sum().backward()  # through in-place ReLUs and adds on BN outputs
        found[case] = {"state": {k: v.clone() for k, v in model.state_dict().items()},
                       "grads": {k: p.grad.clone() for k, p in model.named_parameters()}}
    return found


def _one_rank_hooked_scenario(rank):
    """A hook on rank 0's layer2[0].bn3 only (logging, say): that rank runs the block's modules, the other its
    fused units; the downsample BN has bn3's width, so all-reduces paired out of order mix the two silently."""
    x, _ = _batch()
    model = resnet_ext.convert_sync_batchnorm(_small_model())
    if rank == 0:
        model.layer2[0].bn3.register_forward_hook(lambda m, i, o: None)
    out = model(x[2 * rank:2 * rank + 2])
    (out * _loss_weights(out.shape)).sum().backward()
    return {"out": out.detach(), "state": {k: v.clone() for k, v in model.state_dict().items()},
            "grads": {k: p.grad.clone() for k, p in model.named_parameters()}}


def _frozen_through_ddp_scenario(rank):
    """A model trained a step under DDP (its BN statistics differ by rank), frozen, then called through DDP, which
    broadcasts rank 0's statistics first without moving their version counters: both ranks must answer with
    rank 0's statistics, as torchvision's BNs read them."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    x, target = _batch()
    x, model = x.float(), _small_model().float()  # (the frozen mode folds fp32 models; float64 ones run unfolded)
    ddp = DDP(model)
    _step(ddp, x[2 * rank:2 * rank + 2], target[2 * rank:2 * rank + 2])
    resnet_ext.freeze(model)
    own = model.bn1.running_mean.clone()  # this rank's, before the broadcast
    with torch.no_grad():
        return {"out": ddp(x), "own_stats": own}


GLOO_SCENARIOS = {"bn_act": functools.partial(_ddp_scenario, fused=False),
                  "fused_train": functools.partial(_ddp_scenario, fused=True),
                  "small_batches": _small_batches_scenario, "hard": _hard_scenario,
                  "own_forward": _own_forward_scenario, "one_rank_hooked": _one_rank_hooked_scenario,
                  "frozen_through_ddp": _frozen_through_ddp_scenario}


def test_cross_process_bn_with_a_hook_on_one_rank_pairs_its_all_reduces(gloo_ranks):
    """The fused unit all-reduces bn3's statistics before the downsample BN's, in torchvision's order, which a rank
    running the modules (a hook on its bn3) follows (helper-55: 0.8-1.3 of the outputs off, no error). (Under DDP
    the ranks' gradients still differ: README, cross-process BN.)"""
    ranks = gloo_ranks("one_rank_hooked")
    x, _ = _batch()
    model = _small_model()
    out = model(x)
    (out * torch.cat([_loss_weights((2, 10))] * 2)).sum().backward()
    assert rel_err(torch.cat([r["out"] for r in ranks]), out.detach()) < 1e-10
    for r in ranks:
        for k, v in model.state_dict().items():
            assert rel_err(r["state"][k].double(), v.double()) < 1e-10, k
    for k, p in model.named_parameters():
        torch.testing.assert_close(ranks[0]["grads"][k] + ranks[1]["grads"][k], p.grad, rtol=1e-8, atol=1e-12, msg=k)


def test_a_frozen_model_called_through_ddp_reads_the_broadcast_statistics(gloo_ranks):
    ranks = gloo_ranks("frozen_through_ddp")
    assert rel_err(ranks[1]["own_stats"], ranks[0]["own_stats"]) > 1e-3  # the ranks' statistics differed
    assert rel_err(ranks[1]["out"], ranks[0]["out"]) < 1e-6  # and both answered with rank 0's


def test_cross_process_bn_syncs_where_it_runs_its_own_forward(gloo_ranks):
    """A converted BN that runs its own module forward (hooks of its own, a torchvision model, a BatchNorm1d in a
    custom head) computes cross-process statistics there too (it computed per-process ones, silently, when the
    converter only marked BNs for resnet_ext's fused op), and trains through the in-place ReLU or add after it."""
    ranks = gloo_ranks("own_forward")
    x, _ = _batch()
    for case in OWN_FORWARD_CASES:
        model = _own_forward_model(case)
        out = model(x)
        (out * torch.cat([_loss_weights((2, 10))] * 2)).sum().backward()
        for r in ranks:
            for k, v in model.state_dict().items():
                assert rel_err(r[case]["state"][k].double(), v.double()) < 1e-10, (case, k)
        for k, p in model.named_parameters():  # (atol: a bias before a BN has a gradient of zero, up to rounding)
            torch.testing.assert_close(ranks[0][case]["grads"][k] + ranks[1][case]["grads"][k], p.grad, rtol=1e-8,
                                       atol=1e-12, msg=f"{case}: {k}")


def test_convert_sync_batchnorm_converts_in_place_and_keeps_the_engine(train_mode):
    """BatchNorm1d/2d/3d are converted as the same objects (hooks, optimizer entries kept), another BN class is
    replaced as torch's converter replaces it; the state_dict keys stay; FX traces a converted BN as a leaf, as
    torch's BNs; without a process group the model computes torchvision's numbers on the engine's paths (a train
    step in float64; eval: the flat default forward, bitwise); a pickled copy keeps the conversion."""
    import pickle

    import torchvision
    from resnet_ext.bn_act import SyncBatchNorm2d

    class MyBN(torch.nn.BatchNorm2d):
        pass

    model = _small_model()
    tv = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10)
    tv.load_state_dict(model.state_dict())
    tv = tv.double()
    bn, seen = model.layer2[0].bn1, []
    handle = bn.register_forward_pre_hook(lambda m, i: seen.append(1))
    model.layer3[0].bn1, tv.layer3[0].bn1 = MyBN(256).double(), MyBN(256).double()
    keys = list(model.state_dict())
    assert resnet_ext.convert_sync_batchnorm(model) is model
    assert model.layer2[0].bn1 is bn and type(bn) is SyncBatchNorm2d and bn.process_group is None
    assert type(model.layer3[0].bn1) is torch.nn.SyncBatchNorm and list(model.state_dict()) == keys
    assert isinstance(bn, torch.nn.BatchNorm2d)
    x0 = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model(x0), tv.train()(x0)
    assert seen == [1]
    handle.remove()
    graph = torch.fx.symbolic_trace(model).graph
    assert [n.target for n in graph.nodes if n.op == "call_module"].count("layer2.0.bn1") == 1
    x, target = _batch()
    out, grads = _step(model, x, target, steps=1)
    tv_out, tv_grads = _step(tv, x, target, steps=1)
    assert rel_err(out, tv_out) < 1e-10
    for k, g in tv_grads.items():
        assert rel_err(grads[k], g) < 1e-8, k
    model.eval().float(), tv.eval().float()
    xe = torch.randn(2, 3, 40, 40)
    resnet_ext.reset_path_counts()
    with torch.no_grad():
        assert torch.equal(model(xe), tv(xe))
    assert resnet_ext.path_counts().get("flat_forwards") == 1
    loaded = pickle.loads(pickle.dumps(model))
    assert type(loaded.layer2[0].bn1) is SyncBatchNorm2d


def test_a_model_pickled_with_marked_bns_loads_converted():
    """Earlier versions marked BNs (`_resnet_ext_sync`) instead of converting them: such a pickle loads with the
    BNs converted, so that every path syncs them, each keeping its process group."""
    import pickle

    from resnet_ext.bn_act import SyncBatchNorm2d

    model = _small_model()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m._resnet_ext_sync, m.process_group = True, None
    model.layer1[0].bn1.process_group = "group"  # a stand-in: the attribute is carried over as it is
    loaded = pickle.loads(pickle.dumps(model))
    bns = [m for m in loaded.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(type(m) is SyncBatchNorm2d and "_resnet_ext_sync" not in m.__dict__ for m in bns)
    assert loaded.layer1[0].bn1.process_group == "group"


def test_three_sgd_steps_of_resnet50_match_torchvision_float64(train_mode):

    torch.manual_seed(0)
    tv = tv_model("resnet50", num_classes=10).double().train()
    ours = resnet_ext.resnet50(num_classes=10).double().train()
    ours.load_state_dict(tv.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4) for m in (ours, tv)]
    g = torch.Generator().manual_seed(3)
    for step in range(3):
        x = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64)  # layer4 on a 1x1 map (64x64: 2x the time)
        target = torch.randint(0, 10, (4,), generator=g)
        outs = []
        for m, opt in zip((ours, tv), opts):
            opt.zero_grad()
            out = m(x)
            F.cross_entropy(out, target).backward()
            outs.append(out.detach())
        assert rel_err(outs[0], outs[1]) < 1e-7, f"step {step}: outputs"
        tv_params = dict(tv.named_parameters())
        for name, p in ours.named_parameters():
            assert rel_err(p.grad, tv_params[name].grad) < 1e-7, f"step {step}: grad of {name}"
        for opt in opts:
            opt.step()
    tv_state = tv.state_dict()
    for k, v in ours.state_dict().items():
        if v.is_floating_point():
            assert rel_err(v, tv_state[k]) < 1e-7, k
        else:
            assert torch.equal(v, tv_state[k]), k


def test_bn_optin_switch():
    """bn_optin: a bool, the previous setting back; a default build refuses to turn on what it lacks."""
    with pytest.raises(TypeError, match="enabled"):
        resnet_ext.bn_optin(1)
    assert resnet_ext.bn_optin() is False
    if not resnet_ext.ops.EXPERIMENTAL:
        with pytest.raises(RuntimeError, match="RESNET_EXT_EXPERIMENTAL=1"):
            resnet_ext.bn_optin(True)
    assert resnet_ext.bn_optin(False) is False  # turning it off is always allowed
    assert resnet_ext.bn_optin() is False
