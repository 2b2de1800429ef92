"""The default mode is torchvision's answer under every way a user can change weights, modules or hooks, and the
model traces, scripts and exports like torchvision's; the frozen mode keeps its stated contract.

Every comparison runs our model and a torchvision model holding the same Parameter and buffer objects
(`from_torchvision` shares them), after the fused path has run once (so any cache would be warm)."""
import copy
import io
import os
import pickle
import re
import subprocess
import sys
import threading
import warnings

import pytest
import torch
import torchvision
import torch.nn.functional as F
from torch import nn
from torch.utils._device import DeviceContext
from torch.utils._python_dispatch import TorchDispatchMode

import resnet_ext
from resnet_ext.engine import state, units
from conftest import randomize_bn, rel_err, tv_model

TOL = 1e-4


def pair(arch="resnet50", train=False, **kw):
    tv = randomize_bn(tv_model(arch, num_classes=10, **kw))
    ours = resnet_ext.from_torchvision(tv)
    return ours.train(train), tv.train(train)


def x_(n=2, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def same(ours, tv, x, tol=TOL):
    with torch.no_grad():
        y, ref = ours(x), tv(x)
    assert rel_err(y, ref) < tol, rel_err(y, ref)
    return y


def warm(ours, x):
    with torch.no_grad():
        ours(x)


# ------------------------------------------------------------------------------------------------------------
# Weight and buffer changes, including those that bypass version counters
# ------------------------------------------------------------------------------------------------------------

def _params(m):
    return [p for p in m.parameters()]


MUTATIONS = {
    "data_inplace": lambda m: [p.data.mul_(1.5) for p in _params(m)],
    "data_assign_twice": lambda m: [setattr(p, "data", p.data * 1.25) for p in _params(m) for _ in range(2)],
    "numpy_write": lambda m: [b.numpy().__imul__(2.0) for n, b in m.named_buffers() if n.endswith("running_var")],
    "copy_no_grad": lambda m: [p.copy_(p * 0.5) for p in _params(m)],
    "apply_init": lambda m: m.apply(lambda mod: mod.weight.data.normal_(0, 0.05) if isinstance(mod, nn.Conv2d)
                                    else None),
    "vector_to_parameters_then_edit": lambda m: (
        torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector(m.parameters()) * 1.1,
                                            m.parameters()),
        [p.data.add_(0.01) for p in _params(m)]),
    "running_mean_data": lambda m: [b.data.add_(0.3) for n, b in m.named_buffers() if n.endswith("running_mean")],
    "eps": lambda m: [setattr(b, "eps", 0.5) for b in m.modules() if isinstance(b, nn.BatchNorm2d)],
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_eval_sees_every_weight_change(name):
    ours, tv = pair()
    x = x_()
    warm(ours, x)
    with torch.no_grad():
        MUTATIONS[name](ours)
        if name == "eps":
            MUTATIONS[name](tv)  # eps is a module attribute, not shared
    same(ours, tv, x)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=False),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=True),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, fused=True),
    lambda p: torch.optim.Adam(p, lr=1e-2, fused=True),
    lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True),
], ids=["sgd_loop", "sgd_foreach", "sgd_fused", "adam_fused", "adamw_fused"])
def test_eval_after_optimizer_steps_with_frozen_bn(make_opt):
    # Fine-tuning with BN in eval mode: the folded path must see every step, including fused optimizers,
    # which do not bump version counters.
    ours, tv = pair("resnet18")
    x = x_()
    opt = make_opt(ours.parameters())
    for _ in range(2):
        opt.zero_grad()
        ours(x).square().mean().backward()
        opt.step()
        same(ours, tv, x)


def test_load_state_dict_in_place_and_assign():
    ours, tv = pair("resnet18")
    other = randomize_bn(tv_model("resnet18", num_classes=10), seed=3)
    x = x_()
    warm(ours, x)
    ours.load_state_dict(other.state_dict())  # in place: tv shares the tensors
    same(ours, tv, x)
    ours.load_state_dict(randomize_bn(tv_model("resnet18", num_classes=10), seed=4).state_dict(),
                         assign=True)
    ref = tv_model("resnet18", num_classes=10).eval()
    ref.load_state_dict(ours.state_dict())
    same(ours, ref, x)


def test_dtype_conversion_and_functional_call():
    ours, tv = pair("resnet18")
    x = x_()
    warm(ours, x)
    ours.double(), tv.double()
    same(ours, tv, x.double(), tol=1e-10)
    params = {k: v * 1.1 for k, v in ours.state_dict().items() if v.is_floating_point()}
    with torch.no_grad():
        y = torch.func.functional_call(ours, params, (x.double(),))
        ref = torch.func.functional_call(tv, params, (x.double(),))
    assert rel_err(y, ref) < 1e-10


@pytest.mark.parametrize("model_dtype, bn_dtype", [(torch.float32, torch.bfloat16), (torch.float32, torch.float64),
                                                     (torch.bfloat16, torch.float32), (torch.bfloat16, torch.float64)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("path", ["flat", "modules"])
def test_a_bn_in_another_dtype_gives_torchvisions_answer_or_error(model_dtype, bn_dtype, layout, path):
    """ATen's batch norm takes BN tensors of the input's dtype, or float32 ones for a bf16 input, and refuses any
    other ("mixed dtype"); the default mode, which applies BN itself, must refuse the same (it answered before)."""
    ours, tv = pair("resnet18")
    x = x_(1, 40)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    warm(ours, x)
    for m in (ours, tv):  # both: .to() replaces the buffers of the module it is called on
        m.to(model_dtype)
        m.layer2[0].bn1.to(bn_dtype)
    if path == "modules":  # a hook elsewhere: the flat forward declines, each unit decides on its own
        ours.layer4.register_forward_hook(lambda m, i, o: None)
    x = x.to(model_dtype)
    with torch.no_grad():
        try:
            ref = tv(x)
        except RuntimeError as e:
            with pytest.raises(RuntimeError, match=re.escape(str(e)[:40])):
                ours(x)
            return
        out = ours(x)
    assert bn_dtype == torch.float32 and torch.equal(out, ref)  # bf16 conv with fp32 BN: ATen's mixed case


# ------------------------------------------------------------------------------------------------------------
# Module swaps, parametrizations, hooks
# ------------------------------------------------------------------------------------------------------------

class DoubledBN(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x) * 2


class OffsetConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) + 0.25


def _swap_relu(cls):
    def swap(m):
        for blk in list(m.layer1) + list(m.layer3):
            blk.relu = cls()
        m.relu = cls()
    return swap


def _swap_bn(m):
    old = m.layer2[0].bn2
    new = DoubledBN(old.num_features)
    new.load_state_dict(old.state_dict())
    m.layer2[0].bn2 = new
    ds = m.layer2[0].downsample
    new_ds = DoubledBN(ds[1].num_features)
    new_ds.load_state_dict(ds[1].state_dict())
    ds[1] = new_ds


def _swap_conv(m):
    old = m.layer3[1].conv1
    new = OffsetConv(old.in_channels, old.out_channels, 1, bias=False)
    new.weight = old.weight
    m.layer3[1].conv1 = new


SWAPS = {
    "relu_identity": _swap_relu(nn.Identity),
    "relu_leaky": _swap_relu(lambda: nn.LeakyReLU(0.1)),
    "relu6": _swap_relu(nn.ReLU6),
    "bn_subclass": _swap_bn,
    "conv_subclass": _swap_conv,
    "parametrized_weight_norm": lambda m: torch.nn.utils.parametrizations.weight_norm(m.layer1[0].conv2),
    "legacy_weight_norm": lambda m: torch.nn.utils.weight_norm(m.layer1[1].conv1),
    "legacy_spectral_norm": lambda m: torch.nn.utils.spectral_norm(m.layer2[1].conv3),
    "downsample_replaced": lambda m: m.layer2[0].__setattr__("downsample", nn.Sequential(
        nn.AvgPool2d(2), nn.Conv2d(256, 512, 1, bias=False), nn.BatchNorm2d(512)).eval()),
}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(SWAPS))
def test_swapped_submodules_run_as_torchvision(name, train):
    tv = randomize_bn(tv_model("resnet50", num_classes=10))
    torch.manual_seed(0)
    SWAPS[name](tv)
    tv.double().train(train)
    ours = resnet_ext.from_torchvision(tv).train(train)
    x = x_().double()
    if name.startswith("legacy_spectral"):  # its power iteration updates u in train mode: compare in eval
        tv.eval(), ours.eval()
    if train:
        y, ref = ours(x), tv(x)
    else:
        with torch.no_grad():
            y, ref = ours(x), tv(x)
    assert rel_err(y, ref) < 1e-10


def test_swap_after_the_fused_path_ran():
    ours, tv = pair()
    x = x_()
    warm(ours, x)
    for m in (ours, tv):
        _swap_relu(nn.Identity)(m)
        _swap_conv(m)
    same(ours, tv, x)


STEM_AND_HEAD_SWAPS = {  # after a forward recorded the model; small-image variants replace the max pool
    "maxpool_identity": lambda m: setattr(m, "maxpool", nn.Identity()),
    "maxpool_avg": lambda m: setattr(m, "maxpool", nn.AvgPool2d(3, 2, 1)),
    "maxpool_2x2": lambda m: setattr(m, "maxpool", nn.MaxPool2d(2, 2)),
    "stem_3x3_no_pool": lambda m: (setattr(m, "conv1", nn.Conv2d(3, 64, 3, 1, 1, bias=False)),
                                   setattr(m, "maxpool", nn.Identity())),
    "avgpool_max": lambda m: setattr(m, "avgpool", nn.AdaptiveMaxPool2d(1)),
    "fc_identity": lambda m: setattr(m, "fc", nn.Identity()),
}


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
@pytest.mark.parametrize("swap", list(STEM_AND_HEAD_SWAPS))
def test_stem_pool_and_head_swaps_after_a_forward(swap, frozen):
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    if frozen:
        resnet_ext.freeze(ours)
    x = x_(1, 32)
    same(ours, tv, x)
    torch.manual_seed(0)
    STEM_AND_HEAD_SWAPS[swap](tv)
    torch.manual_seed(0)
    STEM_AND_HEAD_SWAPS[swap](ours)
    for _ in range(2):
        same(ours, tv, x)


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_an_expanded_bn_buffer_runs_as_in_torchvision(frozen):
    """A BN statistic that is an expanded scalar (stride 0: one element in its storage) holds all its elements."""
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    for m in (tv, ours):
        m.layer3[1].bn1.running_var = torch.tensor(1.5).expand(256)
    if frozen:
        resnet_ext.freeze(ours)
    for _ in range(2):
        same(ours, tv, x_(1, 32))


class _ScaledConvs(torch.overrides.TorchFunctionMode):
    """A function mode that changes what every F.conv2d computes (as observers and debugging tools may)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        return out * 1.01 if func is torch.nn.functional.conv2d else out


@pytest.mark.parametrize("mode", ["default", "default_cl_model", "frozen"])
def test_a_torch_function_mode_sees_torchvisions_calls(mode):
    tv = randomize_bn(tv_model("resnet50", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    x = x_(1, 64)
    if mode == "default_cl_model":
        tv, ours = tv.to(memory_format=torch.channels_last), ours.to(memory_format=torch.channels_last)
    if mode == "frozen":
        resnet_ext.freeze(ours)
        x = x.contiguous(memory_format=torch.channels_last)
    same(ours, tv, x)
    with _ScaledConvs():
        y = same(ours, tv, x)
    assert rel_err(y, tv(x).detach()) > 0.01  # the mode changed the answer
    fresh = resnet_ext.from_torchvision(copy.deepcopy(tv))
    with torch.device("cpu"):  # a default-device context on the input's device changes nothing: the engine runs
        for m in (ours, fresh):  # recorded before, or first recorded inside it
            resnet_ext.reset_path_counts()
            same(m, tv, x)
            assert resnet_ext.path_counts().get("flat_forwards", 0) == 1
    if mode != "frozen":
        ours = resnet_ext.from_torchvision(copy.deepcopy(tv))  # nothing cached yet: a first forward under it
    with torch.device("meta"):  # another device: torchvision's code (the engine's own tensors would go there)
        same(ours, tv, x)
    with _ScaledDevice("cpu"), _ScaledDispatch():  # a subclass of the device context; a dispatch mode
        y = same(ours, tv, x)
    assert rel_err(y, tv(x).detach()) > 0.01


class _ScaledDevice(DeviceContext):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs)
        return out * 1.01 if func is torch.nn.functional.conv2d else out


class _ScaledDispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        return out * 1.01 if func is torch.ops.aten.convolution.default else out


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
@pytest.mark.parametrize("cls, name", [(nn.BatchNorm2d, "forward"), (nn.Conv2d, "_conv_forward"),
                                       (nn.ReLU, "forward"), (nn.Linear, "forward"), (nn.Identity, "forward"),
                                       (F, "conv2d"), (F, "batch_norm"), ("block", "forward")])
def test_a_module_class_method_replaced_is_honoured(cls, name, frozen, monkeypatch):
    """A stock module class's method, the functional op it calls (flop profilers wrap them) or resnet_ext's block
    class's forward, replaced: torchvision's code runs, which calls the replacement."""
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    if cls is nn.Identity:
        tv.maxpool = nn.Identity()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    if frozen:
        resnet_ext.freeze(ours)
    x = x_(1, 32).contiguous(memory_format=torch.channels_last)
    same(ours, tv, x)
    if cls == "block":  # each BasicBlock class (ours subclasses torchvision's) wrapped alike
        tv_cls, cls = type(tv.layer1[0]), type(ours.layer1[0])
        tv_stock = tv_cls.forward
        monkeypatch.setattr(tv_cls, name, lambda *a, **k: tv_stock(*a, **k) * 1.5 - 0.1)
    stock = getattr(cls, name)
    monkeypatch.setattr(cls, name, lambda *a, **k: stock(*a, **k) * 1.5 - 0.1)
    y = same(ours, tv, x)
    monkeypatch.undo()
    assert rel_err(y, tv(x).detach()) > 0.01  # the patch changed the answer
    resnet_ext.reset_path_counts()
    same(ours, tv, x)
    assert resnet_ext.path_counts().get("flat_forwards", 0) == 1


class _Scaled(torch.Tensor):
    """A tensor subclass whose __torch_function__ changes what F.conv2d computes."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        return out * 1.01 if func is F.conv2d else out


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
@pytest.mark.parametrize("where", ["input", "weight"])
def test_tensor_subclasses_with_torch_function_are_honoured(where, frozen):
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    x = x_(1, 32).contiguous(memory_format=torch.channels_last)
    if frozen:
        resnet_ext.freeze(ours)
    before = same(ours, tv, x)
    if where == "input":
        x = x.as_subclass(_Scaled)
    else:
        for m in (tv, ours):
            m.layer2[0].conv1.weight = nn.Parameter(m.layer2[0].conv1.weight.detach().as_subclass(_Scaled))
    for _ in range(2):
        y = same(ours, tv, x)
    assert rel_err(y.as_subclass(torch.Tensor), before) > 1e-3  # the subclass changed the answer


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_mkldnn_and_sparse_inputs_run_as_in_torchvision(frozen):
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    if frozen:
        resnet_ext.freeze(ours)
    x = x_(1, 32)
    with torch.no_grad():
        y, ref = ours(x.to_mkldnn()), tv(x.to_mkldnn())
        assert y.layout == ref.layout == torch._mkldnn and rel_err(y.to_dense(), ref.to_dense()) < TOL
        errors = []
        for m in (tv, ours):
            with pytest.raises(RuntimeError) as e:
                m(x.to_sparse())
            errors.append(str(e.value))
        assert errors[0] == errors[1]


def _record(model, log, train):
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)) and name.startswith(("layer2.0", "conv1", "bn1",
                                                                                       "relu")):
            handles.append(m.register_forward_pre_hook(lambda mod, a, n=name: log.append(("pre", n))))
            handles.append(m.register_forward_hook(
                lambda mod, a, out, n=name: log.append(("fwd", n, round(out.double().sum().item(), 3)))))
    return handles


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_module_hooks_run_as_in_torchvision(train):
    ours, tv = pair(train=train)
    x = x_().double()
    ours.double(), tv.double()
    logs = {}
    for label, m in (("ours", ours), ("tv", tv)):
        logs[label] = []
        _record(m, logs[label], train)
        with torch.set_grad_enabled(train):
            m(x)
    assert logs["ours"] == logs["tv"] and len(logs["tv"]) > 10


def test_hook_that_changes_the_output_is_honoured():
    ours, tv = pair()
    x = x_()
    warm(ours, x)
    for m in (ours, tv):
        m.layer3[0].bn1.register_forward_hook(lambda mod, a, out: out * 0.5)
        m.layer4[0].conv2.register_forward_pre_hook(lambda mod, a: (a[0] + 1.0,))
    same(ours, tv, x)


def test_global_module_hooks_see_every_module_call():
    ours, tv = pair("resnet18")
    x = x_()
    counts = {}
    for label, m in (("ours", ours), ("tv", tv)):
        calls = []
        h = torch.nn.modules.module.register_module_forward_hook(lambda mod, a, out: calls.append(type(mod)))
        try:
            with torch.no_grad():
                m(x)
        finally:
            h.remove()
        counts[label] = [c.__name__ for c in calls]
    assert counts["ours"] == counts["tv"]
    same(ours, tv, x)


# ------------------------------------------------------------------------------------------------------------
# Tracing, scripting, export, functorch
# ------------------------------------------------------------------------------------------------------------

def test_jit_trace_bakes_in_no_weights():
    ours, tv = pair("resnet18")
    x = x_()
    with torch.no_grad():
        traced = torch.jit.trace(ours, x)
        for p in ours.parameters():
            p.data.mul_(1.3)
        assert rel_err(traced(x), tv(x)) < TOL


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_jit_trace_records_torchvisions_graph(grad, layout, train):
    """torch.jit.trace checks its graph by tracing again under no_grad: with grad mode on, the engine's paths (which
    depend on whether a gradient is wanted) failed that check. A trace records torchvision's module graph."""
    ours, tv = pair("resnet18", train=train)
    x = x_()
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.set_grad_enabled(grad):
        traced, theirs = torch.jit.trace(ours, x), torch.jit.trace(tv, x)
    assert [n.kind() for n in traced.inlined_graph.nodes()] == [n.kind() for n in theirs.inlined_graph.nodes()]
    with torch.no_grad():
        assert torch.equal(traced(x), theirs(x))


def test_jit_script_matches_torchvision():
    ours, tv = pair("resnet18")
    scripted = torch.jit.script(ours)
    x = x_()
    with torch.no_grad():
        assert rel_err(scripted(x), tv(x)) < TOL


def test_fx_trace_and_feature_extraction_like_torchvision():
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    ours, tv = pair()
    assert get_graph_node_names(ours) == get_graph_node_names(tv)
    gm_ours, gm_tv = torch.fx.symbolic_trace(ours), torch.fx.symbolic_trace(tv)
    assert [n.name for n in gm_ours.graph.nodes] == [n.name for n in gm_tv.graph.nodes]
    nodes = ["layer1.0.relu_2", "layer2.1.add", "layer4"]
    fe_ours, fe_tv = create_feature_extractor(ours, nodes), create_feature_extractor(tv, nodes)
    x = x_()
    with torch.no_grad():
        f_ours, f_tv = fe_ours(x), fe_tv(x)
    for n in nodes:
        assert rel_err(f_ours[n], f_tv[n]) < TOL


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript_exporter", "dynamo_exporter"])
def test_onnx_export_runs_in_onnxruntime_like_torchvision(dynamo, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    ours, tv = pair("resnet18")
    x = x_()
    path = tmp_path / "m.onnx"
    torch.onnx.export(ours, (x,), str(path), dynamo=dynamo, input_names=["x"])
    model = onnx.load(str(path))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}  # standard ONNX ops only
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert rel_err(torch.from_numpy(y), tv(x)) < 1e-4


def test_torch_func_grad_of_the_eval_model():
    ours, tv = pair("resnet18")
    ours.double(), tv.double()
    x = x_().double()
    params = {k: v.detach() for k, v in ours.named_parameters()}

    def loss(model):
        return lambda p: torch.func.functional_call(model, p, (x,)).square().sum()

    g, ref = torch.func.grad(loss(ours))(params), torch.func.grad(loss(tv))(params)
    for k in ref:
        assert rel_err(g[k], ref[k]) < 1e-8, k


@pytest.mark.parametrize("batch", [2, 9], ids=["pool_linear", "onednn_linear"])
def test_a_computed_fc_weight_of_a_frozen_model_gets_its_gradient(batch):
    """A frozen backbone (requires_grad_(False)) whose fc weight is a computed tensor, no Parameter (MAML's fast
    weights, a hypernetwork's head): the gradient reaches the tensor it was computed from, as in torchvision (the
    frozen head's own ops have no autograd)."""
    ours, tv = pair("resnet18")
    resnet_ext.freeze(ours)
    weight, bias = tv.fc.weight.detach().clone(), tv.fc.bias.detach().clone()
    grads = []
    for m in (ours, tv):
        m.requires_grad_(False)
        w0 = weight.clone().requires_grad_()
        m.fc = nn.Linear(512, 10)
        del m.fc.weight
        m.fc.weight, m.fc.bias = w0 * 1.0, nn.Parameter(bias, requires_grad=False)
        m(x_(batch, 32)).square().sum().backward()
        grads.append(w0.grad)
    assert grads[0] is not None and grads[1] is not None and rel_err(*grads) < TOL


@pytest.mark.parametrize("x_grad", [False, True])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
def test_a_bn_statistic_requiring_grad_in_a_frozen_model_gets_torchvisions_error(fmt, x_grad):
    """A frozen model whose parameters need no gradient but a BN statistic requires grad: ATen's batch norm raises
    that it is not differentiable, at the forward, as in torchvision (the folds, constants, ignored it)."""
    ours, tv = pair("resnet18")
    resnet_ext.freeze(ours)
    x = x_(2, 32).to(memory_format=fmt).requires_grad_(x_grad)
    tv.requires_grad_(False)
    tv.layer1[0].bn1.running_var.requires_grad_()  # shared with ours
    with pytest.raises(RuntimeError) as ref:
        tv(x)
    with pytest.raises(RuntimeError, match=re.escape(str(ref.value)[:80])):
        ours(x)

@pytest.mark.parametrize("frozen", [False, True])
def test_forward_mode_ad_gives_torchvisions_tangent(frozen):
    """Dual tensors (torch.autograd.forward_ad) set no requires_grad: resnet_ext's ops, which have no forward-mode
    formula, dropped the tangent (None) in eval forwards and in train mode with BN in eval."""
    import torch.autograd.forward_ad as fwAD
    ours, tv = pair("resnet18")
    x, v = x_(), x_(seed=1)
    if frozen:
        resnet_ext.freeze(ours)
    for train_bn_eval in (False, True):
        for m in (ours, tv):
            m.train(train_bn_eval)
            for bn in m.modules():
                if isinstance(bn, nn.BatchNorm2d):
                    bn.eval()
        for grad, params in ((False, True), (True, False), (True, True)):
            for cl in (False, True):
                xx, vv = (t.contiguous(memory_format=torch.channels_last) if cl else t for t in (x, v))
                out = []
                for m in (ours, tv):
                    m.requires_grad_(params)
                    with torch.set_grad_enabled(grad), fwAD.dual_level():
                        out.append(fwAD.unpack_dual(m(fwAD.make_dual(xx, vv))))
                (y, t), (ref_y, ref_t) = out
                where = (train_bn_eval, grad, params, cl)
                assert t is not None, where
                assert rel_err(t, ref_t) < (1e-4 if frozen else 1e-6), where
                assert rel_err(y, ref_y) < (1e-4 if frozen else 1e-6), where
    ours.requires_grad_(True)


def test_running_statistics_that_require_grad_give_torchvisions_error():
    """BN buffers passed with requires_grad (functional_call): ATen's batch norm is not differentiable in them;
    resnet_ext's eval units on a train-mode model with frozen BNs ran and returned an output with no graph."""
    ours, tv = pair("resnet18")
    x = x_()
    for train in (False, True):
        for xx in (x, x.contiguous(memory_format=torch.channels_last)):
            errors = []
            for m in (ours, tv):
                m.train(train)
                for bn in m.modules():
                    if isinstance(bn, nn.BatchNorm2d):
                        bn.eval()
                params = {k: v.detach() for k, v in m.named_parameters()}
                bufs = {k: v.detach().clone().requires_grad_() if v.is_floating_point() else v
                        for k, v in m.named_buffers()}
                with pytest.raises(RuntimeError, match="not differentiable with respect to argument") as e:
                    torch.func.functional_call(m, (params, bufs), (xx,))
                errors.append(str(e.value))
            assert errors[0] == errors[1]


def test_train_forward_with_an_empty_batch(train_mode):
    ours, tv = pair("resnet18", train=True)
    x = torch.randn(0, 3, 32, 32)
    y, ref = ours(x), tv(x)
    assert y.shape == ref.shape == (0, 10)
    assert ours.bn1.num_batches_tracked.item() == 2  # shared buffer: one increment each, as torchvision


def test_from_torchvision_keeps_a_replaced_head():
    tv = randomize_bn(tv_model("resnet18", num_classes=10))
    tv.fc = nn.Sequential(nn.Dropout(0.3), nn.Linear(512, 3))
    tv.eval()
    ours = resnet_ext.from_torchvision(tv).eval()
    assert ours.fc[1].weight is tv.fc[1].weight
    same(ours, tv, x_())
    back = ours.to_torchvision().eval()
    assert type(back) is torchvision.models.ResNet and back.fc[1].weight is tv.fc[1].weight
    with pytest.raises(TypeError, match="expected a torchvision"):
        resnet_ext.from_torchvision(nn.Linear(2, 2))


def _pickled_size(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    return len(buf.getvalue())


def test_pickled_size_is_torchvisions_in_both_modes():
    ours, tv = pair("resnet18")
    warm(ours, x_())
    size = _pickled_size(tv)
    assert _pickled_size(ours) < size * 1.01
    resnet_ext.freeze(ours)
    warm(ours, x_())
    assert _pickled_size(ours) < size * 1.01
    again = pickle.loads(pickle.dumps(ours))
    assert resnet_ext.is_frozen(again)
    same(again, tv, x_())


# ------------------------------------------------------------------------------------------------------------
# bn_act misuse
# ------------------------------------------------------------------------------------------------------------

def test_bn_act_with_an_eval_bn_has_eval_semantics_and_changes_no_state():
    bn = randomize_bn(nn.BatchNorm2d(8)).eval()
    x = torch.randn(2, 8, 5, 5)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    y = resnet_ext.bn_act(x, bn)
    assert rel_err(y, torch.relu(bn(x))) < 1e-6
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_failed_bn_act_call_counts_like_batchnorm_and_keeps_the_statistics():
    bn = nn.BatchNorm2d(8).train()
    x = torch.randn(2, 8, 5, 5)
    with pytest.raises(RuntimeError):
        resnet_ext.bn_act(x, bn, residual=torch.randn(2, 8, 4, 4))
    # nn.BatchNorm2d counts the batch before anything can fail (its batch-size ValueError comes after); the
    # running statistics change only when the call succeeds.
    assert bn.num_batches_tracked.item() == 1
    assert torch.equal(bn.running_mean, torch.zeros(8)) and torch.equal(bn.running_var, torch.ones(8))


# ------------------------------------------------------------------------------------------------------------
# The frozen mode's contract, and which path ran
# ------------------------------------------------------------------------------------------------------------

def test_default_mode_runs_every_conv_unfolded():
    ours, tv = pair()
    n_convs = sum(isinstance(m, nn.Conv2d) for m in ours.modules())
    for x in (x_(n=2, size=64), x_(n=1, size=96), x_(n=2, size=64).contiguous(memory_format=torch.channels_last)):
        for _ in range(2):  # the first forward of a shape learns which 1x1 convs run as a GEMM, the second reuses it
            resnet_ext.reset_path_counts()
            same(ours, tv, x)
            counts = resnet_ext.path_counts()
            assert counts.pop("flat_forwards") == 1, counts  # the whole forward as one flat sequence
            assert set(counts) <= {"unfolded", "gemm", "unfolded_nchw"} and sum(counts.values()) == n_convs, counts
            assert ("gemm" in counts) == (not x.is_contiguous())  # GEMMs for channels_last 1x1 convs only
            # and large NCHW 3x3 weights in NCHW inside a channels_last forward (cpu.nchw_unit_pays)
            assert ("unfolded_nchw" in counts) == (not x.is_contiguous())


@pytest.mark.parametrize("bad", ["nan_weight", "inf_weight", "negative_variance"])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_a_frozen_model_with_a_non_finite_fold_gives_torchvisions_nan(bad, dtype):
    """A NaN weight (a diverged run) gave finite logits in the frozen mode: oneDNN's fused ReLU and resnet_ext's
    own ops turn NaN into 0. Such folds are refused: the forward runs unfolded, NaN where torchvision's is."""
    if dtype is not None and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("no native bf16")
    ours, tv = pair()
    with torch.no_grad():
        for m in (ours, tv):
            if bad == "negative_variance":
                m.layer2[0].bn1.running_var[3] = -1.0
            else:
                m.layer3[1].conv2.weight[2, 1, 1, 1] = float("nan" if bad == "nan_weight" else "inf")
    resnet_ext.freeze(ours, dtype=dtype)
    for x in (x_(), x_().contiguous(memory_format=torch.channels_last)):
        for hooked in (False, True):
            handle = ours.layer4.register_forward_hook(lambda *a: None) if hooked else None
            with torch.no_grad():
                y, ref = ours(x), tv(x)
            if handle is not None:
                handle.remove()
            assert torch.equal(y.isnan(), ref.isnan()) and ref.isnan().any(), (bad, hooked)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_a_frozen_model_on_an_input_near_the_float_range_gives_torchvisions_answer(dtype):
    """A finite input of 1e37 (torchvision's logits 8e36, finite): the folds' Winograd overflowed, the fused ReLUs
    turned the NaN into 0, and the frozen logits came out near 0. Inputs from 2^64 on run unfolded."""
    if dtype is not None and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("no native bf16")
    ours, tv = pair("resnet18")
    resnet_ext.freeze(ours, dtype=dtype)
    x = x_(size=64) * 1e37
    with torch.no_grad():
        y, ref = ours(x), tv(x)
    assert ref.isfinite().all() and rel_err(y, ref) < 1e-5


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_frozen_model_on_the_meta_device_gives_torchvisions_shapes(when):
    """freeze() of a model on the meta device, or a frozen model moved there, runs a shape-only forward as
    torchvision's does (the folds' finiteness check read values: "item() cannot be called on meta tensors")."""
    import torchvision

    ours = resnet_ext.resnet18()
    if when == "before":
        ours = resnet_ext.freeze(ours.to("meta"))
    else:
        ours = resnet_ext.freeze(ours).to("meta")
    x = torch.empty(2, 3, 64, 64, device="meta")
    with torch.no_grad():
        y = ours(x)
    ref = torchvision.models.resnet18().to("meta").eval()(x)
    assert y.device.type == "meta" and y.shape == ref.shape and y.dtype == ref.dtype



@pytest.mark.parametrize("mode", ["default", "frozen"])
@pytest.mark.parametrize("where", ["meta_input", "cpu_input_meta_model"])
def test_an_input_on_another_device_than_the_model_gets_torchvisions_error(where, mode):
    """A meta input to a CPU model (and the reverse): ATen's device error, as torchvision's convolution raises it,
    not resnet_ext's op's own argument check."""
    ours, tv = pair("resnet18")
    if mode == "frozen":
        resnet_ext.freeze(ours)
    x = x_(size=64)
    if where == "meta_input":
        x = x.to("meta")
    else:
        ours, tv = ours.to("meta"), tv.to("meta")
    with torch.no_grad(), pytest.raises(Exception) as ref:
        tv(x)
    with torch.no_grad(), pytest.raises(type(ref.value), match=re.escape(str(ref.value).splitlines()[0])):
        ours(x)


BN_VIEWS = {
    "strided": lambda t: torch.stack([t, t], 1)[:, 0],
    "expanded": lambda t: t[:1].expand(t.shape[0]),
}


@pytest.mark.parametrize("path", ["flat", "module"])
@pytest.mark.parametrize("name", ["running_var", "weight"])
@pytest.mark.parametrize("view", list(BN_VIEWS))
def test_a_non_contiguous_bn_tensor_gives_torchvisions_bits(view, name, path):
    """ATen's eval batch norm computes (x - mean) * invstd * weight + bias where a statistic or affine vector is not
    contiguous, x * scale + shift where all are: the default mode's bitwise contract (the flat forward of an NCHW
    input below the channels_last switch, the module path) holds for such a BN too (a view assigned to it, or
    loaded with `assign=True`)."""
    ours, tv = pair("resnet18")
    x = x_(size=64)
    warm(ours, x)
    bn = tv.layer1[0].bn1
    t = getattr(bn, name)
    new = BN_VIEWS[view](t.detach() if name == "weight" else t)
    for m in (ours, tv):
        if name == "weight":
            m.layer1[0].bn1.weight = nn.Parameter(new, requires_grad=False)
        else:
            m.layer1[0].bn1.running_var = new
    if path == "module":  # a hook elsewhere: the module path, bitwise in either layout (channels_last: its units)
        x = x.to(memory_format=torch.channels_last)
        for m in (ours, tv):
            m.to(memory_format=torch.channels_last).layer2[0].conv1.register_forward_hook(lambda mod, i, out: None)
    with torch.no_grad():
        y, ref = ours(x), tv(x)
    assert torch.equal(y, ref), (y - ref).abs().max()
@pytest.mark.parametrize("mode", ["default", "frozen", "train"])
def test_a_dropped_model_is_freed_by_reference_counting(mode):
    """As torchvision's: the last reference gone, the model and what the engine keeps for it (folds, prepacked
    weights, plans) are freed at once. The recorded structure held the model, a cycle through its own state object:
    a service reloading its model kept old ones until the cycle collector ran (RSS +180 MB per frozen resnet18)."""
    import gc
    import weakref

    model = resnet_ext.resnet18(num_classes=10)
    if mode == "frozen":
        resnet_ext.freeze(model)
    model.train(mode == "train")
    for size in (64, 128, 64):  # a plan per shape, the replay recorded on the second forward of one
        with torch.set_grad_enabled(mode == "train"):
            out = model(x_(n=2, size=size))
        if mode == "train":
            out.sum().backward()
    ref = weakref.ref(model)
    gc.disable()
    try:
        del model, out
        assert ref() is None
    finally:
        gc.enable()


def test_frozen_mode_contract():
    ours, tv = pair()
    x = x_()
    resnet_ext.freeze(ours)
    for graph in (False, True):  # the per-unit plan; one oneDNN Graph where this torch can make it
        was = resnet_ext.switches.cpu_onednn_graph(graph)
        try:
            resnet_ext.reset_path_counts()
            same(ours, tv, x)
        finally:
            resnet_ext.switches.cpu_onednn_graph(was)
        counts = resnet_ext.path_counts()
        # the head (average pool and fc) as one op where this CPU runs its loops (batch 2: within HEAD_MAX_BATCH)
        assert counts.pop("pool_linear", 0) == int(resnet_ext.ops.pool_linear_supported()), counts
        if graph and resnet_ext.engine.onednn_graph.supported():
            assert counts == {"onednn_graph": 1, "flat_forwards": 1}
        else:  # every conv on oneDNN's prepacked weights or one of resnet_ext's own CPU ops
            # ("winograd_f23" and "prefetch" count some of the units already counted by their path)
            paths = {k: v for k, v in counts.items() if k not in ("flat_forwards", "winograd_f23", "prefetch")}
            assert set(paths) <= {"onednn_prepacked", "winograd", "conv1x1"}, counts
            assert counts["flat_forwards"] == 1
            assert sum(paths.values()) == sum(isinstance(m, nn.Conv2d) for m in ours.modules()), counts
    with torch.no_grad():
        for p in ours.parameters():
            p.data.mul_(1.2)  # the documented exception: a write through .data is not seen until freeze() again
        assert rel_err(ours(x), tv(x)) > 1e-3
    resnet_ext.freeze(ours)
    same(ours, tv, x)
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(0.9)  # in place: seen (version counters), the next forward refolds
    same(ours, tv, x)
    # What resnet_ext can see refolds by itself: conversions, loads, train/eval, module swaps and hooks.
    ours.double()
    tv = ours.to_torchvision().eval()  # .double() gave each model new buffers: share ours' again
    same(ours, tv, x.double(), tol=1e-10)
    state = randomize_bn(tv_model("resnet50", num_classes=10), seed=7).double().state_dict()
    ours.load_state_dict(state)
    same(ours, tv, x.double(), tol=1e-10)
    ours.train()
    ours(x.double()[:2]).sum().backward()  # a train step changes running statistics
    ours.eval(), tv.eval()
    same(ours, tv, x.double(), tol=1e-10)
    for m in (ours, tv):
        _swap_relu(nn.ReLU6)(m)
        m.layer2[1].bn2.register_forward_hook(lambda mod, a, out: out + 1)
    same(ours, tv, x.double(), tol=1e-10)
    resnet_ext.unfreeze(ours)
    assert not resnet_ext.is_frozen(ours)
    for fn in (resnet_ext.freeze, resnet_ext.unfreeze):  # unfreeze took any object (AttributeError for None)
        with pytest.raises(TypeError, match=rf"{fn.__name__}: model must be a resnet_ext ResNet \(resnet_ext\."
                                            r"from_torchvision\(model\) converts a torchvision one\), got "
                                            r"torchvision.models.resnet.ResNet"):
            fn(tv)
        with pytest.raises(TypeError, match=rf"{fn.__name__}: model must be a resnet_ext ResNet, got builtins"):
            fn(None)
    assert resnet_ext.is_frozen(tv) is False
    with pytest.raises(TypeError, match="is_frozen: model must be an nn.Module, got str"):
        resnet_ext.is_frozen("resnet18")


WEIGHT_SWAPS = {  # conv.weight.data = ...: the Parameter object stays, so the flat forward's plan stays too
    "dtype": lambda w: w.to(torch.float32 if w.dtype == torch.bfloat16 else torch.bfloat16),
    "in_channels": lambda w: torch.randn(w.shape[0], w.shape[1] // 2, *w.shape[2:]).to(w.dtype),
    "out_channels": lambda w: torch.randn(w.shape[0] // 2, *w.shape[1:]).to(w.dtype),
    "kernel": lambda w: torch.randn(*w.shape[:2], *((3, 3) if w.shape[2] == 1 else (1, 1))).to(w.dtype),
    "channels_last": lambda w: (torch.randn(w.shape) * 0.05).to(w.dtype).contiguous(memory_format=torch.channels_last),
    "contiguous": lambda w: (torch.randn(w.shape) * 0.05).to(w.dtype),
    "view": lambda w: w.transpose(2, 3) if w.shape[2] > 1 else w.transpose(0, 1)[:, :w.shape[1] // 2].transpose(0, 1),
    "kernel_view": lambda w: w[:, :, :1, :1] if w.shape[2] > 1 else w[::2],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("unit", ["layer4.0.conv2", "layer4.1.conv1", "layer3.0.downsample.0"])
@pytest.mark.parametrize("swap", list(WEIGHT_SWAPS))
def test_a_weight_swapped_under_a_gemm_unit_gives_torchvisions_answer_or_error(dtype, unit, swap):
    """A conv the default mode runs as a GEMM (planned on the first call) whose weight is then replaced through
    `.data` by one of another dtype, shape, kernel or layout: torchvision's output or its exact error, never a GEMM's
    own error or a reshaped weight's silently wrong answer."""
    ours, tv = pair("resnet18")
    ours.eval().to(dtype)
    tv.eval().to(dtype)
    x = x_(1, 64).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        resnet_ext.reset_path_counts()
        ours(x)  # the plan: the GEMM units, from this input's shapes
        assert resnet_ext.path_counts().get("gemm", 0) > 0
        conv = tv.get_submodule(unit)
        torch.manual_seed(1)
        conv.weight.data = WEIGHT_SWAPS[swap](conv.weight.data)  # the same Parameter in both models
        answer_or_error(ours, tv, x, TOL if dtype == torch.float32 else 2e-2)


def answer_or_error(ours, tv, x, tol):
    """torchvision's output within tol (finite, its dtype), or its exception type and first line."""
    try:
        ref = tv(x)
    except Exception as e:  # noqa: BLE001 (whatever torchvision raises, ours must raise alike)
        with pytest.raises(type(e)) as got:
            ours(x)
        assert str(got.value).split("\n")[0] == str(e).split("\n")[0]
        return
    y = ours(x)
    assert y.dtype == ref.dtype and torch.isfinite(y).all()
    assert rel_err(y.float(), ref.float()) < tol, rel_err(y.float(), ref.float())


# ------------------------------------------------------------------------------------------------------------
# Frozen models see writes into the tensors they folded
# ------------------------------------------------------------------------------------------------------------

def _bf16_ok():
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


FROZEN_DTYPES = [None, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(not _bf16_ok(), reason="no native bf16"))]


def _sgd_step_in_eval(m):  # fine-tuning with BN frozen (eval mode), as on a frozen model by mistake
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    with torch.enable_grad():
        m(x_(2, 32, seed=3)).square().mean().backward()
    opt.step()


def _fused_adamw_step(m):  # PyTorch's fused kernels move no version counter: resnet_ext's optimizer hook does
    torch.manual_seed(2)
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    torch.optim.AdamW(m.parameters(), lr=0.05, fused=True).step()


def _bn_recalibration(m):  # AdaBN-style: BNs alone in train mode (ATen moves no counter of the running statistics)
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    for b in bns:
        b.train()
    for seed in range(2):
        m(x_(4, 32, seed=seed) * 2 + 1)
    for b in bns:
        b.eval()


def _swap_on_load(m):  # load_state_dict swapping in new tensors (torch.utils.swap_tensors) instead of copying
    bn = m.layer1[0].bn2
    state = {k: v * 1.5 if v.is_floating_point() else v for k, v in bn.state_dict().items()}
    was = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        bn.load_state_dict(state)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(was)


FROZEN_WRITES = {  # (change, whether it writes the folded tensors themselves, in place or through `.data = `: the
    # refolded forward then equals a fresh freeze bit for bit; else it replaces them and that unit runs unfolded)
    "sgd_step_in_eval": (_sgd_step_in_eval, True),
    "fused_adamw_step": (_fused_adamw_step, True),
    "bn_recalibration": (_bn_recalibration, True),
    "swap_on_load": (_swap_on_load, True),
    "data_view": (lambda m: setattr(m.layer1[0].conv1.weight, "data", m.layer1[0].conv1.weight.data.transpose(2, 3)),
                  True),
    "mul_no_grad": (lambda m: [p.mul_(0.8) for p in m.parameters()], True),
    "running_var_fill": (lambda m: m.layer1[0].bn1.running_var.fill_(3.0), True),
    "state_dict_copy": (lambda m: [v.copy_(v * 0.5) for k, v in m.state_dict().items() if k.endswith("weight")],
                        True),
    "nn_init": (lambda m: [nn.init.normal_(c.weight, 0, 0.05) for c in m.modules() if isinstance(c, nn.Conv2d)],
                True),
    "vector_to_parameters": (lambda m: torch.nn.utils.vector_to_parameters(
        torch.nn.utils.parameters_to_vector(m.parameters()) * 1.1, m.parameters()), True),
    "bn_weight_replaced": (lambda m: setattr(m.layer2[0].bn2, "weight", nn.Parameter(torch.full((128,), 2.0))),
                           False),
    "running_mean_replaced": (lambda m: setattr(m.layer3[1].bn1, "running_mean", torch.full((256,), 0.5)), False),
    "conv_weight_replaced": (lambda m: setattr(m.layer1[1].conv2, "weight",
                                               nn.Parameter(m.layer1[1].conv2.weight.detach() * -1)), False),
}


@pytest.mark.parametrize("dtype", FROZEN_DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("write", list(FROZEN_WRITES))
def test_a_frozen_model_sees_writes_into_its_tensors(dtype, write):
    """After recorded and replayed forwards, an optimizer step (fused too), an in-place write (copy_, fill_,
    nn.init, a state_dict value, BN statistics in train mode), `p.data = q` (a view included), a swapped tensor or a
    replaced one (a new parameter or buffer) changes the frozen model's output as it changes torchvision's; writes
    refold (the same bits as freezing afresh, still the flat frozen forward), replaced tensors run that unit
    unfolded."""
    change, refolds = FROZEN_WRITES[write]
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    resnet_ext.freeze(ours, dtype=dtype)
    x = x_(2, 40)
    with torch.no_grad():
        before = [ours(x) for _ in range(3)][-1]  # recorded, then replayed
        ref_before = tv(x)
    for m in (ours, tv):
        torch.manual_seed(0)
        with torch.no_grad():
            change(m)
    with torch.no_grad():
        ref = tv(x)
        resnet_ext.reset_path_counts()
        y = ours(x)
        counts = resnet_ext.path_counts()
        assert rel_err(ref, ref_before) > 1e-2  # the write matters: a stale fold would be caught
        assert rel_err(y, ref) < (TOL if dtype is None else 2e-2), rel_err(y, ref)
        assert not torch.equal(y, before)
        if refolds:
            assert counts.get("flat_forwards") == 1, counts
            fresh = resnet_ext.freeze(copy.deepcopy(ours), dtype=dtype)
            assert torch.equal(y, fresh(x))
            assert torch.equal(ours(x), y)  # and the forwards after


def _double_a_bn_weight(model):
    with torch.no_grad():
        model.layer1[0].bn1.weight.mul_(2)  # 64 values: no OpenMP in the forked child


@pytest.mark.parametrize("dtype", FROZEN_DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("part", ["model", "layer1"])
def test_a_frozen_model_in_shared_memory_sees_another_processs_writes(dtype, part):
    """`share_memory()` of the model or of a part (which moves the part's bytes without the model's `_apply`)
    after recorded and replayed frozen forwards, then another process writes into a tensor (a Hogwild worker's
    step; this process's version counters do not move): the frozen model says it runs unfolded and gives
    torchvision's answer, there and when frozen again."""
    import multiprocessing

    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)), dtype=dtype)
    x = x_(2, 40)
    with torch.no_grad():
        [ours(x) for _ in range(3)]
    for m in (ours, tv):
        (m if part == "model" else m.layer1).share_memory()
    with torch.no_grad(), pytest.warns(UserWarning, match="shared memory"):
        assert torch.equal(ours(x), tv(x))  # unfolded: torchvision's bits at this size
    for m in (ours, tv):
        child = multiprocessing.get_context("fork").Process(target=_double_a_bn_weight, args=(m,))
        child.start()
        child.join(60)
        assert child.exitcode == 0
    with torch.no_grad():
        ref = tv(x)
        resnet_ext.reset_path_counts()
        assert torch.equal(ours(x), ref)
        assert "onednn_prepacked" not in resnet_ext.path_counts()
        with pytest.warns(UserWarning, match="shared memory"):
            resnet_ext.freeze(ours, dtype=dtype)
        assert torch.equal(ours(x), ref)


def test_a_frozen_model_whose_only_shared_tensors_are_batch_counts_stays_folded():
    """num_batches_tracked is watched for its counter, its value folded nowhere: shared alone (what stays shared
    after `share_memory()` and a cast), the model keeps its folds, without a warning."""
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)))
    for m in ours.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.num_batches_tracked.share_memory_()
    x = x_(2, 40)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        resnet_ext.reset_path_counts()
        same(ours, tv, x)
    assert "unfolded" not in resnet_ext.path_counts(), resnet_ext.path_counts()


@pytest.mark.parametrize("dtype", FROZEN_DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("unit", ["conv1", "layer1.0.conv1", "layer4.0.conv2", "layer3.0.downsample.0"])
@pytest.mark.parametrize("swap", list(WEIGHT_SWAPS))
def test_a_weight_swapped_under_a_frozen_unit_gives_torchvisions_answer_or_error(dtype, unit, swap):
    """`conv.weight.data = w` of another dtype, shape, kernel or layout, or a view of the weight itself, after frozen
    forwards: torchvision's output or its exact error, never the old fold's answer, a fold's promoted answer or
    oneDNN's own error."""
    tv = tv_model("resnet18", num_classes=10).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    resnet_ext.freeze(ours, dtype=dtype)
    x = x_(1, 64)
    with torch.no_grad():
        ours(x), ours(x)
        for m in (ours, tv):  # each its own weight: a view of it where the swap is one
            torch.manual_seed(1)
            conv = m.get_submodule(unit)
            conv.weight.data = WEIGHT_SWAPS[swap](conv.weight.data)
        answer_or_error(ours, tv, x, TOL if dtype is None else 2e-2)


def test_a_frozen_model_sees_each_of_many_data_assignments():
    """`p.data = q` twice between forwards, again and again: the storage freed by the first may come back at the
    old address (the check keeps it from being reused while recorded)."""
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)))
    x = x_(1, 64)
    with torch.no_grad():
        ours(x), ours(x)
        for i in range(8):
            for m in (ours, tv):
                rv = m.layer1[0].bn1.running_var
                rv.data = torch.full((64,), 1.0 + i)
                rv.data = torch.full((64,), 2.0 + i)
            same(ours, tv, x)


@pytest.mark.parametrize("swap", ["dtype", "length", "length_view"])
@pytest.mark.parametrize("name", ["weight", "running_var"])
def test_a_bn_tensor_swapped_under_a_frozen_model_gives_torchvisions_error(swap, name):
    tv = tv_model("resnet18", num_classes=10).eval()
    ours = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)))
    x = x_(1, 64)
    with torch.no_grad():
        ours(x), ours(x)
        for m in (ours, tv):
            t = getattr(m.layer2[0].bn1, name)
            t.data = {"dtype": t.data.double(), "length": t.data[:64].clone(), "length_view": t.data[:64]}[swap]
        with pytest.raises(RuntimeError) as want:
            tv(x)
        with pytest.raises(RuntimeError) as got:
            ours(x)
    assert str(got.value).split("\n")[0] == str(want.value).split("\n")[0]


GEOMETRY_CHANGES = {  # after recorded forwards; each leaves a block's output and its identity of different sizes
    "padding": lambda m: setattr(m.layer2[0].conv1, "padding", (0, 0)),
    "dilation": lambda m: setattr(m.layer1[0].conv2, "dilation", (2, 2)),
    "downsample_stride": lambda m: setattr(m.layer3[0].downsample[0], "stride", (1, 1)),
    "kernel_through_data": lambda m: setattr(m.layer4[1].conv2.weight, "data",
                                             m.layer4[1].conv2.weight.data[:, :, 1:2, 1:2].clone()),
}


@pytest.mark.parametrize("mode", ["default", "frozen", "frozen_bf16"])
@pytest.mark.parametrize("change", list(GEOMETRY_CHANGES))
def test_a_change_that_breaks_the_residual_add_gives_torchvisions_error(mode, change):
    """torchvision's `out += identity` raises its own message (or broadcasts); a fused residual add (oneDNN's sum
    post-op) must not raise its own instead."""
    if mode == "frozen_bf16" and not _bf16_ok():
        pytest.skip("no native bf16")
    tv = tv_model("resnet18", num_classes=10).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv)).eval()
    if mode != "default":
        resnet_ext.freeze(ours, dtype=torch.bfloat16 if mode == "frozen_bf16" else None)
    x = x_(1, 64)
    with torch.no_grad():
        ours(x), ours(x)
        for m in (ours, tv):
            GEOMETRY_CHANGES[change](m)
        with pytest.raises(RuntimeError) as want:
            tv(x)
        with pytest.raises(RuntimeError) as got:
            ours(x)
    assert str(got.value).split("\n")[0] == str(want.value).split("\n")[0]


def _frozen_pair(seed=0):
    tv = randomize_bn(tv_model("resnet18", num_classes=10), seed=seed).eval()
    return tv, resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)))


def test_a_fused_step_that_leaves_the_frozen_backbone_alone_keeps_its_folds():
    """A fused optimizer over a frozen backbone (run without gradients) and a trained head writes only the head:
    the backbone keeps its folds and replayed program (no refold on every step)."""
    _, ours = _frozen_pair()
    head = nn.Linear(10, 3)
    opt = torch.optim.AdamW(list(ours.parameters()) + list(head.parameters()), lr=0.1, fused=True)
    x = x_(2, 64)
    with torch.no_grad():
        ours(x), ours(x)
    folds = state.of(ours).folds
    for _ in range(2):
        with torch.no_grad():
            feats = ours(x)
        head(feats).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert state.of(ours).folds is folds


def test_a_forward_in_an_optimizer_step_hook_sees_the_fused_step():
    """Per-optimizer step hooks run before the global ones: the fused step's writes must already be seen there."""
    tv, ours = _frozen_pair()
    x = x_(1, 64)
    seen = {}
    for m in (ours, tv):
        for p in m.parameters():
            p.grad = torch.full_like(p, 0.01)
        opt = torch.optim.SGD(m.parameters(), lr=1.0, fused=True)
        opt.register_step_post_hook(lambda *a, m=m: seen.__setitem__(m, m(x)))
        with torch.no_grad():
            m(x), m(x)
            opt.step()
    assert rel_err(seen[ours], seen[tv]) < TOL


@pytest.mark.parametrize("swap", ["int32_view", "neg_view"])
def test_a_dtype_or_neg_view_assigned_through_data_is_seen(swap):
    tv, ours = _frozen_pair()
    x = x_(1, 64)
    with torch.no_grad():
        ours(x), ours(x)
        for m in (ours, tv):
            if swap == "int32_view":
                rv = m.layer2[0].bn1.running_var
                rv.data = rv.data.view(torch.int32)
            else:
                w = m.layer1[0].conv1.weight
                w.data = torch._neg_view(w.data)
        answer_or_error(ours, tv, x, TOL)  # int32: torchvision's error; neg: its answer


def test_a_bn_slot_holding_no_module_after_a_refold_gives_torchvisions_error():
    tv, ours = _frozen_pair()
    x = x_(1, 64)
    with torch.no_grad():
        ours(x), ours(x)
        for m in (ours, tv):
            m.layer1[0].bn1 = None
            m.layer2[0].bn2.running_var.fill_(2.0)  # a write elsewhere: the next forward refolds
        with pytest.raises(TypeError) as want:
            tv(x)
        with pytest.raises(TypeError) as got:
            ours(x)
    assert str(got.value) == str(want.value)


def test_a_refused_fold_fixed_with_a_new_tensor_folds_again():
    """A BN statistic of another dtype: torchvision's error, the fold refused; replaced by a fitting new tensor, the
    model folds again (not unfolded until the next freeze)."""
    tv, ours = _frozen_pair()
    x = x_(1, 64)
    with torch.no_grad():
        ours(x), ours(x)
        for m in (ours, tv):
            rv = m.layer2[0].bn1.running_var
            rv.data = rv.data.double()
        with pytest.raises(RuntimeError):
            ours(x)
        assert state.of(ours).folds is None
        for m in (ours, tv):
            m.layer2[0].bn1.running_var = m.layer2[0].bn1.running_var.float()
        same(ours, tv, x)
        assert state.of(ours).folds is not None


# ------------------------------------------------------------------------------------------------------------
# Found in review (2026-12-06): what hooks and inserted modules see, bf16 inputs to a bf16-frozen model, custom heads
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FROZEN_DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_hooks_and_inserted_modules_see_torchvisions_layouts(frozen, dtype):
    """A forward hook doing `out.view(n, -1)` on layer4 and a module inserted into layer1 see the maps in
    torchvision's layout (the frozen folds are channels_last: an NCHW input's units ran them and handed
    channels_last maps on, so `.view` raised), and a train-mode Dropout inserted there draws torchvision's mask."""
    if dtype is not None and not frozen:
        pytest.skip("bf16 is a frozen-mode variant")
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    if frozen:
        resnet_ext.freeze(ours, dtype=dtype)
    seen = {}
    for name, m in (("tv", tv), ("ours", ours)):
        m.layer4.register_forward_hook(lambda mod, a, out, name=name: seen.__setitem__(name, out.stride()))
        m.layer1[0].register_forward_hook(  # an NCHW map viewed flat, as feature-extraction code does
            lambda mod, a, out: seen.__setitem__("viewed", out.view(out.shape[0], -1).shape)
            if out.is_contiguous() else None)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = x_(2, 64).contiguous(memory_format=fmt)
        with torch.no_grad():
            same(ours, tv, x, TOL if dtype is None else 2e-2)
        assert seen["ours"] == seen["tv"], (fmt, seen)
    for m in (tv, ours):
        m.layer1.append(nn.Dropout(0.5).train())
    x = x_(2, 64)
    with torch.no_grad():
        torch.manual_seed(3)
        ref = tv(x)
        torch.manual_seed(3)
        y = ours(x)
    assert rel_err(y, ref) < (TOL if dtype is None else 2e-2), rel_err(y, ref)


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_a_hook_sees_torchvisions_pooled_map(frozen):
    """The stem's max pool of an NCHW map runs through channels_last and back (ATen's NCHW pool is 2-6x slower):
    a pre-hook on layer1 sees torchvision's values and strides, a 1x1 pooled map (4x4 input) too, whose
    channels_last strides would differ."""
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    if frozen:
        resnet_ext.freeze(ours)
    seen = {}
    for name, m in (("tv", tv), ("ours", ours)):
        m.layer1.register_forward_pre_hook(lambda mod, a, name=name: seen.__setitem__(name, a[0].clone()) or
                                           seen.__setitem__(name + " strides", a[0].stride()))
    for size in (64, 33, 4):
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = x_(2, size).contiguous(memory_format=fmt)
            with torch.no_grad():
                same(ours, tv, x)
            assert seen["ours strides"] == seen["tv strides"], (size, fmt, seen["ours strides"], seen["tv strides"])
            assert rel_err(seen["ours"], seen["tv"]) < TOL


@pytest.mark.skipif(not _bf16_ok(), reason="no native bf16")
@pytest.mark.parametrize("head", ["fc", "identity"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
def test_a_bf16_input_to_a_bf16_frozen_fp32_model_gets_torchvisions_error(head, fmt):
    """freeze(dtype=torch.bfloat16) keeps the fp32 model's interface: a bf16 input raises torchvision's dtype
    error (it ran the bf16 folds and failed in the fc with another message, or answered where the fc is gone)."""
    tv = tv_model("resnet18", num_classes=10).eval()
    ours = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)), dtype=torch.bfloat16)
    if head == "identity":
        tv.fc, ours.fc = nn.Identity(), nn.Identity()
    x = x_(1, 64).bfloat16().contiguous(memory_format=fmt)
    with torch.no_grad():
        for _ in range(2):
            answer_or_error(ours, tv, x, 2e-2)


@pytest.mark.parametrize("dtype", FROZEN_DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_a_custom_fc_keeps_the_flat_forward(frozen, dtype):
    """A fine-tuned head (`fc = Sequential(Dropout, Linear)`) runs as a module on the pooled features, after the
    flat forward of the body (before, it sent the whole model down the module path); its Dropout in train mode
    draws torchvision's mask."""
    if dtype is not None and not frozen:
        pytest.skip("bf16 is a frozen-mode variant")
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    tv.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(512, 7)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    if frozen:
        resnet_ext.freeze(ours, dtype=dtype)
    tol = TOL if dtype is None else 2e-2
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = x_(2, 64).contiguous(memory_format=fmt)
        with torch.no_grad():
            for _ in range(3):
                resnet_ext.reset_path_counts()
                same(ours, tv, x, tol)
                assert resnet_ext.path_counts().get("flat_forwards") == 1, resnet_ext.path_counts()
            for m in (tv, ours):
                m.fc.train()
            torch.manual_seed(5)
            ref = tv(x)
            torch.manual_seed(5)
            y = ours(x)
            assert rel_err(y, ref) < tol and ((y == 0) == (ref == 0)).all()
            for m in (tv, ours):
                m.fc.eval()


@pytest.mark.parametrize("dtype", FROZEN_DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_the_small_image_stem_keeps_the_flat_forward(arch, frozen, dtype):
    """torchvision's ResNets for small images (CIFAR: a 3x3 stride-1 stem conv, the max pool an nn.Identity) run
    the flat forward (the module path measured 0.89x torchvision on resnet18 at 1x3x32x32), with its answers;
    swapping the pool back, or hooking the Identity, is seen."""
    if dtype is not None and not frozen:
        pytest.skip("bf16 is a frozen-mode variant")
    tv = randomize_bn(tv_model(arch, num_classes=10))
    tv.conv1, tv.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    tv.eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    if frozen:
        resnet_ext.freeze(ours, dtype=dtype)
    tol = TOL if dtype is None else 2e-2
    for n, size, fmt in ((1, 32, torch.contiguous_format), (2, 32, torch.channels_last),
                         (3, 17, torch.contiguous_format)):
        x = x_(n, size).contiguous(memory_format=fmt)
        for _ in range(2):
            resnet_ext.reset_path_counts()
            same(ours, tv, x, tol)
            assert resnet_ext.path_counts().get("flat_forwards") == 1, resnet_ext.path_counts()
    x = x_(1, 32)
    handle = ours.maxpool.register_forward_hook(lambda m, a, out: out * 2)
    tv.maxpool.register_forward_hook(lambda m, a, out: out * 2)
    resnet_ext.reset_path_counts()
    same(ours, tv, x, tol)
    assert "flat_forwards" not in resnet_ext.path_counts()
    handle.remove()
    tv.maxpool._forward_hooks.clear()
    for m in (tv, ours):
        m.maxpool = nn.MaxPool2d(3, 2, 1)
    same(ours, tv, x, tol)


@pytest.mark.parametrize("dtype", FROZEN_DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_hooks_on_the_head_keep_the_flat_forward(frozen, dtype):
    """Hooks on the average pool (a feature extractor's), inside a custom fc and on the model itself leave the body
    on the flat forward; the head then runs through its modules, which see what torchvision's see: the features'
    values, dtype and layout (channels_last for a channels_last input or model), the pooled values; a hook that
    replaces the pool's output is honoured. A ReLU the fc shares with the stem is the body's too: its hook fires
    at both calls, as in torchvision (the module path)."""
    if dtype is not None and not frozen:
        pytest.skip("bf16 is a frozen-mode variant")
    tol = TOL if dtype is None else 2e-2
    for model_fmt in (torch.contiguous_format, torch.channels_last):
        tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval().to(memory_format=model_fmt)
        tv.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(512, 7)).eval()
        ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
        if frozen:
            resnet_ext.freeze(ours, dtype=dtype)
        seen = {}
        for name, m in (("tv", tv), ("ours", ours)):
            def pool_hook(mod, a, out, name=name):
                seen[name] = (a[0].clone(), a[0].stride(), a[0].dtype, out.stride())
                return out * 2
            m.avgpool.register_forward_hook(pool_hook)
            m.fc[1].register_forward_pre_hook(lambda mod, a, name=name: seen.__setitem__(name + " fc", a[0].clone()))
            m.register_forward_hook(lambda mod, a, out, name=name: seen.__setitem__(name + " model", out.clone()))
        cropped = x_(2, 40).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)[:, :, 2:34, 3:35]  # NHWC, not dense
        for size, fmt in ((64, torch.contiguous_format), (64, torch.channels_last), (32, torch.contiguous_format),
                          (32, torch.channels_last), (None, None)):
            x = cropped if size is None else x_(2, size).contiguous(memory_format=fmt)
            with torch.no_grad():
                resnet_ext.reset_path_counts()
                same(ours, tv, x, tol)
                assert resnet_ext.path_counts().get("flat_forwards") == 1, resnet_ext.path_counts()
            where = (model_fmt, size, fmt)  # 32x32: a 1x1 last map, whose strides BN makes NCHW in either layout
            assert seen["ours"][1:] == seen["tv"][1:], (where, seen["ours"][1:], seen["tv"][1:])
            assert rel_err(seen["ours"][0], seen["tv"][0]) < tol, where
            assert rel_err(seen["ours fc"], seen["tv fc"]) < tol, where
            assert rel_err(seen["ours model"], seen["tv model"]) < tol, where
    # A ReLU shared by the stem and the fc: the body calls it, so its hook must fire there too.
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    tv.fc = nn.Sequential(tv.relu, nn.Linear(512, 7))
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    if frozen:
        resnet_ext.freeze(ours, dtype=dtype)
    calls = {"tv": 0, "ours": 0}
    for name, m in (("tv", tv), ("ours", ours)):
        m.relu.register_forward_hook(lambda mod, a, out, name=name: calls.__setitem__(name, calls[name] + 1))
    with torch.no_grad():
        same(ours, tv, x_(2, 64), tol)
    assert calls["ours"] == calls["tv"] == 2, calls
    if frozen:  # a CUDA graph would not rerun the head's hooks
        ours = resnet_ext.freeze(resnet_ext.resnet18(num_classes=10), dtype=dtype)
        ours.avgpool.register_forward_hook(lambda *a: None)
        with torch.no_grad():
            assert resnet_ext.engine.cuda.eager_reason(ours, x_(2, 64)) == "hooks on the average pool or the fc"


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_an_avgpool_hook_that_replaces_the_fc_is_honoured(frozen):
    """torchvision's forward reads `self.fc` after the pool ran: a pool hook that swaps the fc gets the new one, on
    the flat forward and on the module path."""
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    if frozen:
        resnet_ext.freeze(ours)
    new = {}
    for name, m in (("tv", tv), ("ours", ours)):
        m.avgpool.register_forward_hook(lambda mod, a, out, m=m, name=name: setattr(m, "fc", new[name]))
    for layer in (None, "layer3"):
        if layer:  # a hook in the body: the module path
            for m in (tv, ours):
                getattr(m, layer).register_forward_hook(lambda *a: None)
        tv.fc, ours.fc = nn.Linear(512, 10), nn.Linear(512, 10)
        new["tv"] = nn.Linear(512, 3)
        new["ours"] = copy.deepcopy(new["tv"])
        with torch.no_grad():
            y, ref = ours(x_(2, 64)), tv(x_(2, 64))
        assert y.shape == ref.shape == (2, 3) and rel_err(y, ref) < TOL, layer


DOWNSAMPLE_RETURNS = {
    "float64": lambda o: o.double(),
    "float16": lambda o: o.half(),
    "number": lambda o: 0.5,
    "tuple": lambda o: (o,),  # torchvision's TypeError from `out += identity`
}


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "input_grad"])
@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
@pytest.mark.parametrize("ret", list(DOWNSAMPLE_RETURNS))
def test_a_downsample_hook_that_replaces_the_shortcut_gets_torchvisions_add(ret, frozen, grad):
    """A forward hook on a downsample may return anything torchvision's `out += identity` takes (another float
    dtype, a number) or refuses: the unit adds it as torchvision does, or raises its error."""
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval().requires_grad_(False)
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    if frozen:
        resnet_ext.freeze(ours)
    for m in (tv, ours):
        m.layer2[0].downsample.register_forward_hook(lambda mod, a, out: DOWNSAMPLE_RETURNS[ret](out))
    x = x_(2, 64).to(memory_format=torch.channels_last).requires_grad_(grad)
    try:
        ref = tv(x)
    except TypeError as e:
        with pytest.raises(TypeError, match=re.escape(str(e))):
            ours(x)
        return
    y = ours(x)
    assert rel_err(y, ref) < TOL
    if grad:
        g, g_ref = torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0]
        assert rel_err(g, g_ref) < TOL

@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_module_path_blocks_hand_on_bns_strides_for_1x1_maps(frozen):
    """On the module path (hooks on the blocks) a Bottleneck's output on a 1x1 map has torchvision's NCHW strides
    (BN's output, dense in both layouts), not the channels_last ones of the 1x1 conv before it."""
    tv = randomize_bn(tv_model("resnet50", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    if frozen:
        resnet_ext.freeze(ours)
    seen = {"tv": [], "ours": []}
    for name, m in (("tv", tv), ("ours", ours)):
        for layer in (m.layer3, m.layer4):
            for b in layer:
                b.register_forward_hook(lambda mod, a, out, name=name: seen[name].append(out.stride()))
    for n, size, fmt in ((1, 16, torch.channels_last), (2, 32, torch.channels_last), (2, 32, torch.contiguous_format)):
        for v in seen.values():
            v.clear()
        with torch.no_grad():
            same(ours, tv, x_(n, size).contiguous(memory_format=fmt))
        assert seen["ours"] == seen["tv"], (n, size, fmt)


@pytest.mark.parametrize("path", ["unfolded", "folded", "frozen"])
@pytest.mark.parametrize("write", ["in_place", "assigned", "data", "eps", "conv"])
def test_a_hook_that_changes_a_later_unit_mid_forward_is_seen_there(write, path, monkeypatch):
    """The module path computes all units' BN scales (CPU) or folds (CUDA's default mode, forced here on the CPU) in
    one batch at the start of the forward, and a frozen model's folds are older still; a hook that changes a later
    BN or conv before it runs (in place, a new tensor, `.data =`, eps) makes that unit read it again, as
    torchvision's modules do when they are called."""
    if path == "folded":
        monkeypatch.setattr(units, "unfolds", lambda x: False)
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    # A channels_last input: the units run (NCHW maps and weights run torchvision's blocks), a frozen one its folds.
    x = x_(1, 64).contiguous(memory_format=torch.channels_last)
    if path == "frozen":
        resnet_ext.freeze(ours)

    def change(m):
        bn = m.layer3[0].bn1
        if write == "conv":
            with torch.no_grad():
                m.layer3[0].conv1.weight.mul_(-1)
        elif write == "in_place":
            with torch.inference_mode(False):
                bn.running_var.mul_(2)
        elif write == "assigned":
            bn.running_var = bn.running_var * 2
        elif write == "data":
            bn.running_var.data = bn.running_var.data * 2
        else:
            bn.eps = 0.5
    for m in (tv, ours):
        m.layer2.register_forward_hook(lambda mod, a, out, m=m: change(m))
    with torch.no_grad():
        for _ in range(2):
            same(ours, tv, x)


def test_legacy_weight_norm_is_not_recorded_anew_on_every_forward():
    """Legacy weight_norm computes a new weight object in a forward pre-hook on every call: such a model is not
    recorded (a record would be stale on each forward and made again, ~0.8 ms on resnet50); its answers are
    torchvision's."""
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    for m in (tv, ours):
        torch.nn.utils.weight_norm(m.layer2[0].conv1)
    with torch.no_grad():
        for _ in range(3):
            same(ours, tv, x_(1, 64))
            assert state.of(ours).structure is None


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_a_hooked_nchw_model_runs_torchvisions_blocks(frozen, monkeypatch):
    """On the module path (a hook in the body) NCHW maps and weights run torchvision's stem modules and block code
    (`engine._nchw`: the units would run its convolutions and BN arithmetic anyway, at more Python per unit), and no
    batch of BN scales is made for them; a channels_last input keeps the units (a frozen model's folds), which take
    their BN scales and shifts from one batch per forward where a fold does not apply."""
    from resnet_ext import ops
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    if frozen:
        resnet_ext.freeze(ours)
    for m in (tv, ours):
        m.layer4.register_forward_hook(lambda mod, a, out: None)
    calls = []
    real = ops.bn_affine_pairs
    monkeypatch.setattr(ops, "bn_affine_pairs", lambda pairs, *a, **k: calls.append(len(pairs)) or real(pairs, *a, **k))
    x = x_(1, 64)
    with torch.no_grad():
        resnet_ext.reset_path_counts()
        assert torch.equal(ours(x), tv(x))
        assert resnet_ext.path_counts() == {"modules": 1, "stock_blocks": 8}, resnet_ext.path_counts()
        assert calls == []
        resnet_ext.reset_path_counts()
        same(ours, tv, x.contiguous(memory_format=torch.channels_last))
        assert "stock_blocks" not in resnet_ext.path_counts()
        assert calls == [20], calls


class _Evaluations(nn.Module):
    """A parametrization that counts how often the weight is computed."""
    n = 0

    def forward(self, w):
        _Evaluations.n += 1
        return w


@pytest.mark.parametrize("dtype", FROZEN_DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_a_custom_fc_weight_is_computed_as_often_as_in_torchvision(frozen, dtype):
    """A parametrized fc (spectral norm in train mode advances its power iteration each time the weight is
    computed) is evaluated once per forward, as torchvision's: the frozen plan's prefetch of the fc's weight reads
    only an nn.Linear's parameter, never a computed `weight`."""
    if dtype is not None and not frozen:
        pytest.skip("bf16 is a frozen-mode variant")
    import torch.nn.utils.parametrize as parametrize
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    parametrize.register_parametrization(tv.fc, "weight", _Evaluations())
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    if frozen:
        resnet_ext.freeze(ours, dtype=dtype)
    x = x_(2, 64)
    with torch.no_grad():
        for _ in range(3):  # planned, recorded, replayed
            _Evaluations.n = 0
            y = ours(x)
            assert _Evaluations.n == 1
            assert rel_err(y, tv(x)) < (TOL if dtype is None else 2e-2)


def test_a_frozen_forward_survives_state_dropped_by_another_thread():
    """Another thread's `.to()` or `freeze` may drop the write check's state between two reads of it (seen as an
    AttributeError on None in a race): the next forward refolds."""
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)))
    x = x_(1, 64)
    with torch.no_grad():
        same(ours, tv, x)
        state.of(ours).sources = None  # as another thread's invalidate() leaves it, folds still set
        same(ours, tv, x)


@pytest.mark.skipif(not _bf16_ok(), reason="no native bf16")
def test_a_freeze_during_another_threads_refold_is_not_lost(monkeypatch):
    """`freeze(model)` (fp32) called while another thread's forward refolds a bf16-frozen model (its first forward
    after a write): the forward's bf16 folds must not be stored over freeze's, which every later forward would
    run (5e-3 off where fp32 is 1e-6)."""
    from resnet_ext.engine import frozen

    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)), dtype=torch.bfloat16)
    x = x_(1, 64)
    warm(ours, x)
    with torch.no_grad():
        ours.layer4[1].bn2.running_var.mul_(1.0)  # a write: the next forward refolds
    fold, started, done = frozen._fold, threading.Event(), threading.Event()

    def folding(model):  # the other thread's freeze runs once this forward has folded (or waits for it to store)
        folds = fold(model)
        if not started.is_set():
            started.set()
            threading.Thread(target=lambda: (resnet_ext.freeze(ours), done.set()), daemon=True).start()
            done.wait(0.5)
        return folds

    monkeypatch.setattr(frozen, "_fold", folding)
    warm(ours, x)
    assert done.wait(10)
    monkeypatch.setattr(frozen, "_fold", fold)
    assert frozen.compute_dtype(ours) is None
    same(ours, tv, x, tol=1e-5)


FORK_DURING_A_FREEZE = """
import os, sys, threading, time, torch, resnet_ext
from resnet_ext.engine import onednn_graph, state
torch.set_num_threads(1)  # a fork after a parallel region hangs ATen's OpenMP pool, torchvision's too
m = resnet_ext.freeze(resnet_ext.resnet18(num_classes=10).eval())
x = torch.randn(1, 3, 32, 32)
with torch.no_grad():
    want = m(x)
held, release = threading.Event(), threading.Event()
def hold():  # another thread inside a freeze or a refold when the process forks
    with state.of(m).lock, onednn_graph._lock:
        held.set()
        release.wait()
t = threading.Thread(target=hold)
t.start()
held.wait()
pid = os.fork()
if pid == 0:
    with torch.no_grad():
        m.layer1[0].conv1.weight.mul_(1.0)  # a write: this forward refolds, under the model's lock
        same = torch.equal(m(x), want)
    graph_lock = onednn_graph._lock.acquire(timeout=10)  # (building a graph here would take seconds)
    os._exit(0 if same and graph_lock else 3)
release.set()
t.join()
for _ in range(600):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("child", os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.1)
else:
    os.kill(pid, 9)
    print("child hung")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_fork_while_another_thread_freezes_gives_a_working_child():
    """A process forked while another of its threads held a frozen model's lock (inside `freeze` or a refold; or
    the oneDNN Graph builder's): the child's copy of the lock stays held, and its first forward that refolded waited
    forever (helper-50). The child gets fresh locks (`os.register_at_fork`) and the same answer."""
    out = subprocess.run([sys.executable, "-c", FORK_DURING_A_FREEZE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == ["child 0"], (out.stdout, out.stderr[-2000:])


ATEN_DEFAULT_KERNELS = """
import copy, torch, torchvision, resnet_ext
from conftest import randomize_bn
assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
torch.set_num_threads(1)
torch.manual_seed(0)
tv = randomize_bn(torchvision.models.resnet18()).eval()
ours = resnet_ext.resnet18().eval()
ours.load_state_dict(tv.state_dict())
x = torch.randn(1, 3, 64, 64)
with torch.no_grad():
    for dtype in (torch.float32, torch.bfloat16):
        a, b = copy.deepcopy(tv).to(dtype), copy.deepcopy(ours).to(dtype)
        assert torch.equal(a(x.to(dtype)), b(x.to(dtype))), ("flat", dtype)
        # the module path (a hook elsewhere) in channels_last: its units, torchvision's bits too
        for m in (a, b):
            m.to(memory_format=torch.channels_last).layer2[0].conv1.register_forward_hook(lambda mod, i, o: None)
        xc = x.to(dtype).contiguous(memory_format=torch.channels_last)
        assert torch.equal(a(xc), b(xc)), ("module", dtype)
# channels_last forwards on GEMM units (small maps, large weights): torchvision's answer within its rounding
tv = randomize_bn(torchvision.models.resnet50()).eval()
ours = resnet_ext.resnet50().eval()
ours.load_state_dict(tv.state_dict())
xc = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
with torch.no_grad():
    for _ in range(2):  # the plan, then the settled forward
        y, ref = ours(xc), tv(xc)
        assert (y - ref).abs().max() <= 1e-5 * ref.abs().max(), ("gemm", (y - ref).abs().max())
print("ok")
"""


def test_atens_non_vectorized_kernels_keep_torchvisions_bits():
    """ATen's eval batch norm rounds x * scale + shift once (a fused multiply-add) in its AVX2 and AVX-512 kernels,
    twice in its non-vectorized ones (`ATEN_CPU_CAPABILITY=default`, a CPU without AVX2): the default mode's BN pass
    gives torchvision's bits under either (a fresh interpreter: ATen picks its kernels once per process)."""
    path = [os.path.dirname(os.path.abspath(__file__))] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default", PYTHONPATH=os.pathsep.join(p for p in path if p))
    out = subprocess.run([sys.executable, "-c", ATEN_DEFAULT_KERNELS], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("setting", ["torch.set_default_dtype(torch.float64)", "torch.set_default_device('meta')"])
def test_import_after_a_default_dtype_or_device_is_set(setting):
    """The import-time check of ATen's batch norm (`ops.ROUNDS_AS_ATENS_BN`) makes its tensors in fp32 on the CPU
    whatever the defaults (a float64 default dtype made it raise "mixed dtype", a meta default device
    NotImplementedError, so `import resnet_ext` failed)."""
    out = subprocess.run([sys.executable, "-c", f"import torch; {setting}; import resnet_ext; "
                          "print(resnet_ext.ops.ROUNDS_AS_ATENS_BN)"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() in ("True", "False"), out.stderr[-2000:]


def test_the_gemm_units_bn_where_aten_rounds_twice_is_atens(monkeypatch):
    """A GEMM unit's BN where `scale_shift_act_` is not ATen's arithmetic: x * scale, then + shift, each rounded in
    fp32 and a bf16 output rounded once at the end, as ATen's non-vectorized batch norm computes it (a bf16 output
    was rounded to bf16 after the multiply too)."""
    from resnet_ext.engine import cpu
    from resnet_ext.engine.structure import Unit

    monkeypatch.setattr(resnet_ext.ops, "ROUNDS_AS_ATENS_BN", False)
    g = torch.Generator().manual_seed(0)
    unit = Unit(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), False)
    scale, shift = torch.rand(16, generator=g) * 3, torch.randn(16, generator=g) * 5
    for dtype in (torch.float32, torch.bfloat16):
        y = (torch.randn(2, 16, 3, 5, generator=g) * 7).to(dtype).contiguous(memory_format=torch.channels_last)
        want = ((y.float() * scale.view(-1, 1, 1)) + shift.view(-1, 1, 1)).to(dtype)
        assert torch.equal(cpu._bn_epilogue(unit, y.clone(), scale, shift, None), want), dtype


@pytest.mark.parametrize("setting", ["matmul_precision", "mkldnn_matmul"])
def test_fp32_matmuls_that_round_put_no_gemm_unit_in_a_convs_place(setting):
    """`torch.set_float32_matmul_precision("medium")` (a common setting for CUDA's TF32) lets oneDNN round fp32
    matmul operands to bf16 on CPUs with AMX while torchvision's convolutions keep fp32: the default mode's fp32 GEMM
    units (channels_last, small maps) give way to the stock convolutions under it, and return when it is undone."""
    ours, tv = pair()
    x = x_(n=1, size=64).contiguous(memory_format=torch.channels_last)
    old = torch.get_float32_matmul_precision(), torch.backends.mkldnn.matmul.fp32_precision

    def gemms():
        resnet_ext.reset_path_counts()
        same(ours, tv, x)
        return resnet_ext.path_counts().get("gemm", 0)

    assert gemms() > 0
    try:
        if setting == "matmul_precision":
            torch.set_float32_matmul_precision("medium")
        else:
            torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        assert gemms() == 0
    finally:
        torch.set_float32_matmul_precision(old[0])
        torch.backends.mkldnn.matmul.fp32_precision = old[1]
    assert gemms() > 0
