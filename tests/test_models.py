"""The models against torchvision on the CPU: same keys, same numbers in eval and train, folded weights never
stale, compile, weights loading."""
import copy
import inspect

import pytest
import torch
import torchvision

import resnet_ext
from conftest import randomize_bn, rel_err, tv_model

ARCHS = ["resnet50", "resnet101", "resnet152"]


def pair(arch, seed=0, dtype=torch.float32, **kwargs):
    torch.manual_seed(seed)  # the test's draws after it
    tv = randomize_bn(tv_model(arch, seed, **kwargs), seed)
    with torch.device("meta"):  # the builder's structure without its random init (seconds for the large ones)
        ours = getattr(resnet_ext, arch)(**kwargs)
    ours.load_state_dict({k: v.clone() for k, v in tv.state_dict().items()}, assign=True)
    return ours.to(dtype), tv.to(dtype)


@pytest.mark.parametrize("arch,kwargs", [(a, {}) for a in ARCHS] + [
    ("resnet50", {"replace_stride_with_dilation": [False, True, True]}),
    ("resnet50", {"zero_init_residual": True, "num_classes": 10}),
    ("resnext50_32x4d", {}), ("wide_resnet50_2", {}), ("resnet18", {}),
])
def test_eval_matches_torchvision(arch, kwargs):
    ours, tv = pair(arch, **kwargs)
    ours.eval(), tv.eval()
    x = torch.randn(2, 3, 64, 64)
    resnet_ext.reset_path_counts()
    with torch.no_grad():
        y, ref = ours(x), tv(x)
        y_cl = ours(x.contiguous(memory_format=torch.channels_last))
    assert rel_err(y, ref) < 1e-4
    assert rel_err(y_cl, ref) < 1e-4
    # Every conv of the network ran on the flat forward's unfolded paths, none through the modules.
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in ours.modules())
    counts = resnet_ext.path_counts()
    assert counts.pop("flat_forwards") == 2, counts  # both forwards as one flat sequence of calls
    assert set(counts) <= {"unfolded", "gemm", "unfolded_nchw"} and sum(counts.values()) == 2 * n_convs, counts


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "wide_resnet101_2"])
def test_builders_carry_torchvisions_docstring(arch):
    """help(resnet_ext.resnet50) was empty; torchvision's builders document their arguments and weights."""
    doc = getattr(resnet_ext, arch).__doc__
    assert doc.startswith(f"torchvision.models.{arch} as a resnet_ext model")
    assert doc.endswith("\n\n" + inspect.cleandoc(getattr(torchvision.models, arch).__doc__))


def test_state_dict_keys_strict_both_ways():
    ours, tv = pair("resnet101")
    assert list(ours.state_dict().keys()) == list(tv.state_dict().keys())
    tv2 = torchvision.models.resnet101()
    tv2.load_state_dict(ours.state_dict(), strict=True)
    for k, v in tv2.state_dict().items():
        assert torch.equal(v, ours.state_dict()[k]), k


@pytest.mark.parametrize("arch,kwargs", [(a, {}) for a in ARCHS] + [
    ("resnet50", {"replace_stride_with_dilation": [False, False, True]})])
def test_train_step_matches_torchvision_float64(arch, kwargs, train_mode):
    ours, tv = pair(arch, dtype=torch.float64, **kwargs)
    ours.train(), tv.train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    target = torch.randint(0, 1000, (2,))
    outs = []
    for m in (ours, tv):
        out = m(x)
        torch.nn.functional.cross_entropy(out, target).backward()
        outs.append(out)
    assert rel_err(outs[0], outs[1]) < 1e-10
    named_tv = dict(tv.named_parameters())
    for name, p in ours.named_parameters():
        assert rel_err(p.grad, named_tv[name].grad) < 1e-7, name
    bufs_tv = dict(tv.named_buffers())
    for name, b in ours.named_buffers():
        if b.is_floating_point():
            assert rel_err(b, bufs_tv[name]) < 1e-10, name
        else:
            assert torch.equal(b, bufs_tv[name]), name


def _eval_out(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_folded_weights_are_never_stale():
    ours, tv = pair("resnet50")
    x = torch.randn(2, 3, 64, 64)
    assert rel_err(_eval_out(ours, x), _eval_out(tv, x)) < 1e-4  # fills the fold cache

    # 1. an optimizer step
    for m in (ours, tv):
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        torch.manual_seed(1)
        m(torch.randn(4, 3, 64, 64)).mean().backward()
        opt.step()
    # (the train forward also updated the running statistics: the train/eval toggle case)
    assert rel_err(_eval_out(ours, x), _eval_out(tv, x)) < 1e-4

    # 2. load_state_dict
    randomize_bn(tv, seed=5)
    ours.load_state_dict(tv.state_dict())
    assert rel_err(_eval_out(ours, x), _eval_out(tv, x)) < 1e-4

    # 3. in-place edits of a single BN buffer and of a conv weight
    with torch.no_grad():
        for m in (ours, tv):
            m.layer2[0].bn2.running_var.mul_(3)
            m.layer3[1].conv1.weight.mul_(-1)
    assert rel_err(_eval_out(ours, x), _eval_out(tv, x)) < 1e-4

    # 4. dtype round trips: .double(), .half() then .float()
    ours.double(), tv.double()
    assert rel_err(_eval_out(ours, x.double()), _eval_out(tv, x.double())) < 1e-10
    ours.half().float(), tv.half().float()
    assert rel_err(_eval_out(ours, x), _eval_out(tv, x)) < 1e-4

    # 5. .data swapped under the parameter
    with torch.no_grad():
        for m in (ours, tv):
            m.conv1.weight.data = m.conv1.weight.data * 0.5
    assert rel_err(_eval_out(ours, x), _eval_out(tv, x)) < 1e-4


def test_model_converted_inside_inference_mode():
    # Its parameters are inference tensors, which have no version counter: the fold cache must not rely on one.
    ours, tv = pair("resnet50")
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.inference_mode():
        ours, tv = ours.eval().to(torch.float64), tv.eval().to(torch.float64)
        y1, ref = ours(x), tv(x)
        for m in (ours, tv):
            m.layer1[0].bn1.running_mean.add_(1.0)  # in-place, untracked: still never stale
        y2, ref2 = ours(x), tv(x)
    assert rel_err(y1, ref) < 1e-10 and rel_err(y2, ref2) < 1e-10


def test_eval_gradients_flow_through_folded_bn():
    ours, tv = pair("resnet50")
    ours.eval(), tv.eval()
    x = torch.randn(2, 3, 64, 64)
    for m in (ours, tv):
        m(x).square().mean().backward()
    named_tv = dict(tv.named_parameters())
    for name, p in ours.named_parameters():
        assert rel_err(p.grad, named_tv[name].grad) < 1e-3, name


def test_compile_matches_eager():
    torch.manual_seed(0)
    model = randomize_bn(resnet_ext.ResNet(resnet_ext.Bottleneck, [1, 1, 1, 1], num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, fullgraph=True)(x)
    assert rel_err(out, ref) < 1e-4


def test_weights_from_path_state_dict_and_enum(tmp_path):
    ours, tv = pair("resnet50")
    path = tmp_path / "rn50.pt"
    torch.save(tv.state_dict(), path)
    for w in (str(path), tv.state_dict(), {"model": tv.state_dict()}):
        if isinstance(w, dict) and "model" in w:
            torch.save(w, tmp_path / "ckpt.pt")
            w = str(tmp_path / "ckpt.pt")
        m = resnet_ext.resnet50(weights=w)
        for k, v in m.state_dict().items():
            assert torch.equal(v, tv.state_dict()[k])
    with pytest.raises(ValueError, match="unknown weights 'NOPE' for resnet50"):
        resnet_ext.resnet50(weights="NOPE")
    with pytest.raises(RuntimeError, match="Missing key"):
        resnet_ext.resnet101(weights=str(path))
    # An enum entry sets num_classes from its metadata (loading it needs the network: not done here).
    enum = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    assert resnet_ext.weights.resolve_weights("resnet50", "IMAGENET1K_V2") is enum


def test_weights_never_load_a_renamed_or_nested_key_over_a_real_one(tmp_path, monkeypatch):
    """Only a prefix every key has is removed, a "model" entry unwraps only a checkpoint without tensors of its own,
    and a weights name is read as torchvision reads it, whatever file of that name exists (helper-52: each of these
    once loaded the wrong weights without an error)."""
    _, tv = pair("resnet18")
    sd = tv.state_dict()
    zeros = {k: torch.zeros_like(v) for k, v in sd.items()}
    for wrapped in ({"module." + k: v for k, v in sd.items()}, {"_orig_mod." + k: v for k, v in sd.items()},
                    {"model": {"module._orig_mod." + k: v for k, v in sd.items()}, "step": 3,
                     "rng_cpu": torch.get_rng_state()},  # examples/train.py's checkpoint holds a tensor too
                    {"model": sd, "epoch": torch.tensor(3)}):
        m = resnet_ext.resnet18(weights=wrapped)
        assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    with pytest.raises(RuntimeError, match='Unexpected key.*"module.fc.weight"'):
        resnet_ext.resnet18(weights={**sd, "module.fc.weight": zeros["fc.weight"]})
    with pytest.raises(RuntimeError, match="Unexpected key"):  # torchvision's error for the same dict
        torchvision.models.resnet18().load_state_dict({**sd, "module.fc.weight": zeros["fc.weight"]})
    with pytest.raises(ValueError, match="entry 'model' is a dict, not a tensor"):
        resnet_ext.resnet18(weights={**sd, "model": zeros})
    monkeypatch.chdir(tmp_path)
    torch.save(zeros, tmp_path / "IMAGENET1K_V1")
    enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert resnet_ext.weights.resolve_weights("resnet18", "IMAGENET1K_V1") is enum
    assert resnet_ext.weights.resolve_weights("resnet18", "./IMAGENET1K_V1") == "./IMAGENET1K_V1"
    torch.save(sd, tmp_path / "ResNet50_Weights.pth")  # a file named like another arch's qualified entry loads
    m = resnet_ext.resnet18(weights="ResNet50_Weights.pth")
    assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    with pytest.raises(ValueError, match="weights for another architecture"):
        resnet_ext.resnet18(weights="ResNet50_Weights.IMAGENET1K_V2")


def test_weights_without_torchvision_are_paths(tmp_path, monkeypatch):
    """Without torchvision a string can only be a checkpoint path: a file loads, anything else is a clear error."""
    _, tv = pair("resnet18")
    torch.save(tv.state_dict(), tmp_path / "w.pt")
    monkeypatch.setitem(__import__("sys").modules, "torchvision.models", None)  # `from torchvision.models` fails
    assert resnet_ext.weights.resolve_weights("resnet18", str(tmp_path / "w.pt")) == str(tmp_path / "w.pt")
    with pytest.raises(resnet_ext.weights.WeightsFileNotFound):
        resnet_ext.weights.resolve_weights("resnet18", str(tmp_path / "missing.pt"))
    with pytest.raises(ImportError, match="a weights name needs torchvision installed"):
        resnet_ext.weights.resolve_weights("resnet18", "IMAGENET1K_V1")


def test_deepcopy_and_pickle_keep_working():
    ours, _ = pair("resnet50")
    x = torch.randn(1, 3, 64, 64)
    y = _eval_out(ours, x)
    clone = copy.deepcopy(ours)
    assert torch.equal(_eval_out(clone, x), y)
