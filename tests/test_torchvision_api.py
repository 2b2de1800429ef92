"""What torchvision's own model tests (pytorch/vision test/test_models.py, test_extended_models.py) check of a
builder, asked of resnet_ext's builders (issue #29): isinstance against torchvision's classes, the weights enum
torchvision reads off a builder's annotation, the builders' signatures, and eager vs FX-traced outputs."""
import copy
import inspect

import pytest
import torch
import torchvision
from torchvision.models import resnet as tv

import resnet_ext

BUILDERS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
            "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_models_and_blocks_are_instances_of_torchvisions_classes(name):
    model = getattr(resnet_ext, name)(num_classes=10)
    assert isinstance(model, torchvision.models.ResNet) and isinstance(model, tv.ResNet)
    block_type = tv.BasicBlock if name == "resnet18" else tv.Bottleneck
    blocks = [b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
    assert blocks and all(isinstance(b, block_type) for b in blocks)
    assert issubclass(resnet_ext.BasicBlock, tv.BasicBlock) and issubclass(resnet_ext.Bottleneck, tv.Bottleneck)
    # Still our classes, with our forward: the fused path runs.
    assert type(model) is resnet_ext.ResNet and type(model).forward is not tv.ResNet.forward
    resnet_ext.reset_path_counts()
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 32, 32))
    assert resnet_ext.path_counts().get("flat_forwards") == 1


@pytest.mark.parametrize("name", BUILDERS)
def test_get_model_weights_and_signature_match_torchvisions_builder(name):
    ours, theirs = getattr(resnet_ext, name), torchvision.models.get_model_builder(name)
    enum = torchvision.models.get_model_weights(name)
    assert torchvision.models.get_model_weights(ours) is enum
    assert hasattr(enum, "DEFAULT") and ours.__name__ == name
    ps, pt = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
    assert [(p.name, p.kind, p.default) for p in ps.values()] == [(p.name, p.kind, p.default) for p in pt.values()]
    # torchvision's annotation is Optional[Enum]; ours admits names, paths and state dicts besides.
    assert set(typing_args(pt["weights"].annotation)) <= set(typing_args(ps["weights"].annotation))


def typing_args(annotation):
    import typing

    return typing.get_args(annotation)


def test_weights_entry_of_another_architecture_is_refused():
    with pytest.raises(ValueError, match="weights for another architecture"):
        resnet_ext.resnet18(weights=tv.ResNet50_Weights.IMAGENET1K_V1)


def _outcome(build):
    """(what a builder call gave: its model's shape facts or the exception's type and text, the warnings' texts)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            m = build()
            got = ("ok", m.groups, m.base_width, tuple(m.fc.weight.shape), sum(p.numel() for p in m.parameters()))
        except Exception as e:  # noqa: BLE001 (compared with torchvision's)
            got = (isinstance(e, KeyError), isinstance(e, ValueError),
                   str(e) if not isinstance(e, KeyError) else None)
    return got, [str(w.message) for w in caught]


@pytest.mark.parametrize("name,args,kwargs", [
    ("resnext50_32x4d", (), dict(groups=8)), ("resnext101_64x4d", (), dict(width_per_group=8)),
    ("wide_resnet50_2", (), dict(width_per_group=64)), ("resnext50_32x4d", (), dict(groups=32)),
    ("resnet18", (), dict(pretrained=False)), ("resnet18", (None, True), {}), ("resnet18", (False,), {}),
    ("resnet18", (), dict(weights="FOO")), ("resnet18", (), dict(weights="IMAGENET1K_V1", num_classes=10)),
    ("resnet50", (), dict(weights=tv.ResNet50_Weights.DEFAULT, num_classes=10))])
def test_builder_arguments_as_torchvisions(name, args, kwargs):
    """The builders' argument rules, warnings and errors: an argument the architecture or its weights fix
    (groups, width_per_group, num_classes) given another value is torchvision's ValueError (it was used, or the
    download started); `pretrained=` and positional weights/progress are its legacy interface (TypeError before);
    an unknown weights name is a KeyError too."""
    ours = _outcome(lambda: getattr(resnet_ext, name)(*args, **kwargs))
    theirs = _outcome(lambda: getattr(torchvision.models, name)(*args, **kwargs))
    if theirs[0][0] is True:  # a KeyError: ours says more than the key
        assert ours[0][0] is True and ours[1] == theirs[1]
    else:
        assert ours == theirs


def test_state_dict_weights_pass_the_legacy_interface():
    sd = resnet_ext.resnet18(num_classes=10).state_dict()
    for model in (resnet_ext.resnet18(sd, num_classes=10), resnet_ext.resnet18(weights=sd, num_classes=10)):
        assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------------------------
# Eager vs FX vs torchvision (torchvision's _check_fx_compatible): the CPU default mode applies BN unfolded, as
# torchvision computes it, so its fp32 answer is torchvision's bits where the convolutions are the same primitive
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BUILDERS)
def test_eager_fx_and_torchvision_agree_at_fp32(name):
    torch.manual_seed(0)  # torchvision's setup: random init (BN as identity), 50 classes, eval, one 224x224 image
    ours = getattr(resnet_ext, name)(num_classes=50).eval()
    with torch.device("meta"):  # torchvision's own random init: seconds for the wide models, then overwritten
        theirs = getattr(torchvision.models, name)(num_classes=50)
    theirs.load_state_dict({k: v.clone() for k, v in ours.state_dict().items()}, assign=True)  # not ours' tensors
    theirs.eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        resnet_ext.reset_path_counts()
        eager = ours(x)
        assert resnet_ext.path_counts().get("flat_forwards") == 1
        traced = torch.fx.symbolic_trace(ours)(x)
        ref = theirs(x)
    torch.testing.assert_close(eager, traced)  # torch.testing's default fp32 tolerances, as torchvision's test
    assert torch.equal(eager, ref) and torch.equal(traced, ref)


def _bn_randomized(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.0, generator=g)
                m.bias.uniform_(-0.1, 0.1, generator=g)
    return model


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("path", ["flat", "modules", "grad"])
def test_default_mode_numerical_contract(layout, path):
    """NCHW inputs below the channels_last switch: torchvision's bits on every path (the flat forward, the module
    path a hook leaves, a forward with gradients). channels_last inputs: the 1x1 convs that run as a GEMM
    (`engine.cpu.gemm_pays`) sum in another order: within 2e-6 of the largest logit."""
    torch.manual_seed(0)
    ours = _bn_randomized(resnet_ext.resnet50(num_classes=10)).eval()
    theirs = torchvision.models.resnet50(num_classes=10).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 96, 96)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        ours.to(memory_format=torch.channels_last), theirs.to(memory_format=torch.channels_last)
    if path == "modules":
        ours.layer3[1].register_forward_pre_hook(lambda m, a: None)
        theirs.layer3[1].register_forward_pre_hook(lambda m, a: None)
    with torch.set_grad_enabled(path == "grad"):
        resnet_ext.reset_path_counts()
        y, ref = ours(x), theirs(x)
        counts = resnet_ext.path_counts()
    assert "onednn" not in counts and "fused:" not in str(counts), counts  # nothing folded
    if path == "flat":
        assert counts["flat_forwards"] == 1
    if layout == "nchw" or path != "flat":
        assert torch.equal(y, ref)
    else:
        assert counts.get("gemm", 0) > 0
        err = ((y - ref).abs().max() / ref.abs().max()).item()
        assert 0 < err < 2e-6, err


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("path", ["flat", "modules"])
def test_default_mode_bf16_model(layout, path):
    """A bf16 model (`model.bfloat16()`): each unit's BN, residual add and ReLU in one pass that rounds where
    torchvision's ops round (after BN, after the add): NCHW inputs below the channels_last switch get torchvision's
    bits; channels_last inputs' GEMM units sum in another order: within torchvision's own bf16 error."""
    torch.manual_seed(0)
    ours = _bn_randomized(resnet_ext.resnet50(num_classes=10)).eval()
    theirs = torchvision.models.resnet50(num_classes=10).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref64 = copy.deepcopy(theirs).double()(x.double())
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        ours.to(memory_format=torch.channels_last), theirs.to(memory_format=torch.channels_last)
    ours.bfloat16(), theirs.bfloat16()
    x = x.bfloat16()
    if path == "modules":
        ours.layer3[1].register_forward_pre_hook(lambda m, a: None)
    with torch.no_grad():
        ref = theirs(x)
        resnet_ext.reset_path_counts()
        y = ours(x)
        counts = resnet_ext.path_counts()
    assert y.dtype == torch.bfloat16
    if path == "modules" and layout == "nchw":  # NCHW maps and weights on the module path: torchvision's blocks
        assert counts == {"modules": 1, "stock_blocks": 16}, counts
    else:  # every unit's BN applied by the one-pass op, not by torch's batch norm
        assert counts.get("modules", 0) == 0, counts
        assert counts.get("unfolded", 0) > 0 and counts.get("flat_forwards", 0) == (path == "flat")
    if layout == "nchw" or path != "flat":
        assert torch.equal(y, ref)
    else:
        assert counts.get("gemm", 0) > 0
        tv_err = ((ref.double() - ref64).abs().max() / ref64.abs().max()).item()
        err = ((y.double() - ref64).abs().max() / ref64.abs().max()).item()
        assert err < 2 * tv_err, (err, tv_err)
