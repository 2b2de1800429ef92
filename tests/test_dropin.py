"""Drop-in cases a new user hits (issue #26): each is compared with torchvision doing the same thing."""
import copy
import io
import pickle

import pytest
import torch

import resnet_ext
from resnet_ext import ops
from resnet_ext.engine import state as ext_state
from conftest import randomize_bn, rel_err, tv_model


def pair(arch="resnet18", **kw):
    torch.manual_seed(0)  # each test (and each call) the same model and random draws after, whatever ran before
    tv = randomize_bn(tv_model(arch, seed=0, num_classes=10, **kw))
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))  # own parameters: state changes are compared, not shared
    return ours, tv


# ------------------------------------------------------------------------------------------------------------
# The per-model state: one object, never carried into a conversion, a pickle or a copy
# ------------------------------------------------------------------------------------------------------------

def _private_keys(m):
    return [k for mod in m.modules() for k in mod.__dict__ if k.startswith("_resnet_ext")]


@pytest.mark.parametrize("mode", ["default", "frozen", "frozen_bf16_fallback"])
def test_to_torchvision_and_pickle_after_cpu_forwards_carry_no_cache(mode):
    ours, _ = pair("resnet18")
    ours.eval()
    if mode != "default":
        resnet_ext.freeze(ours)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        ours(x)
        ours(x.contiguous(memory_format=torch.channels_last))
    if mode == "frozen_bf16_fallback":  # a forward with gradients runs the module path, which has its own plans
        ours(x).sum().backward()
    st = ext_state.peek(ours)
    assert st is not None and st.structure is not None  # the flat forward recorded the model
    assert _private_keys(ours) == [ext_state.KEY]  # everything under one key
    tv = ours.to_torchvision()
    assert _private_keys(tv) == []
    buf = io.BytesIO()
    torch.save(tv, buf)
    assert b"resnet_ext" not in buf.getvalue()
    again = pickle.loads(pickle.dumps(ours))
    st2 = ext_state.peek(again)
    assert st2.frozen == st.frozen and st2.folds is None and st2.structure is None and st2.programs is None
    assert not st2.flat_plans
    with torch.no_grad():
        assert torch.equal(again(x), ours(x))


# ------------------------------------------------------------------------------------------------------------
# A bf16 model on the CPU with an NCHW input (torch 2.14's oneDNN add post-op has no NCHW bf16 kernel)
# ------------------------------------------------------------------------------------------------------------

SIZES = [(1, 224), (2, 64), (4, 64), (3, 37)]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("mode", ["default", "frozen", "modules", "frozen_modules"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_cpu_eval_every_size_and_layout(arch, mode, dtype):
    ours, tv = pair(arch)
    ours.to(dtype).eval(), tv.to(dtype).eval()
    ref_model = copy.deepcopy(tv).double()
    if mode.startswith("frozen"):
        resnet_ext.freeze(ours)
    if mode.endswith("modules"):  # a hook on one unit's BN: that unit runs through its modules, the rest fused
        for m in (ours, tv, ref_model):
            m.layer1[0].bn1.register_forward_hook(lambda mod, a, out: out * 1.0)
    # Where oneDNN has no bf16 (AVX2 only), bf16 runs ATen's reference kernels everywhere, torchvision's included
    # (a 224x224 resnet50 NCHW forward took 5.6 s on a Zen 3): the small sizes there.
    emulated = dtype == torch.bfloat16 and not ops.onednn_takes(dtype)
    for n, size in SIZES:
        if size == 224 and (emulated or (arch == "resnet50" and n > 1)):
            continue
        x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            ref = ref_model(x.double())
            tv_err = rel_err(tv(x.to(dtype)), ref)
            for fmt in (torch.contiguous_format, torch.channels_last):
                xi = x.to(dtype).contiguous(memory_format=fmt)
                resnet_ext.reset_path_counts()
                y = ours(xi)
                counts = resnet_ext.path_counts()
                assert y.dtype == dtype and y.shape == (n, 10)
                # Within twice torchvision's own error plus one bf16 rounding of the largest logit (2^-8): one
                # sample's error varies by 2x from model to model, torchvision's too.
                assert rel_err(y, ref) <= 2 * tv_err + (2 ** -8 if dtype == torch.bfloat16 else 1e-5), \
                    (n, size, fmt, rel_err(y, ref), tv_err)
                if mode.endswith("modules"):
                    assert counts.get("modules") == 1 and "flat_forwards" not in counts, counts
                    if mode == "frozen_modules" and fmt == torch.channels_last:  # the other units from the folds
                        assert counts.get("onednn_prepacked" if ops.onednn_takes(dtype) else "stock:cpu", 0) > 0, counts
                    elif mode == "frozen_modules":  # the folds' channels_last outputs would show: torchvision's
                        assert "onednn_prepacked" not in counts and counts.get("stock_blocks", 0) > 0, counts
                else:
                    assert counts.get("flat_forwards") == 1, counts


def test_frozen_bf16_model_where_onednn_has_no_bf16(monkeypatch):
    """oneDNN's bf16 convolution needs AVX512-BW/VL/DQ or AVX-NE-CONVERT (ATen raises elsewhere, a Zen 3 say, where
    torchvision's bf16 model runs ATen's own kernels): a frozen bf16 model there runs the default mode's forward,
    with a hook the modules on the stock conv, never oneDNN."""
    monkeypatch.setattr(ops, "_ONEDNN_DTYPES", (torch.float32,))
    ours, tv = pair("resnet18")
    ours.bfloat16().eval(), tv.bfloat16().eval()
    default = copy.deepcopy(ours)
    resnet_ext.freeze(ours)
    x = torch.randn(2, 3, 64, 64).bfloat16().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        resnet_ext.reset_path_counts()
        y = ours(x)
        assert resnet_ext.path_counts().get("flat_forwards") == 1 and "onednn_prepacked" not in resnet_ext.path_counts()
        assert torch.equal(y, default(x))
        ours.layer1[0].bn1.register_forward_hook(lambda mod, a, out: out * 1.0)
        resnet_ext.reset_path_counts()
        y = ours(x)
        counts = resnet_ext.path_counts()
        assert counts.get("modules") == 1 and counts.get("stock:cpu", 0) > 0 and "onednn_prepacked" not in counts
        assert rel_err(y.double(), tv(x).double()) < 2 ** -6


# ------------------------------------------------------------------------------------------------------------
# Training: double backward, non-reentrant checkpointing, a batch of one on a 1x1 map (both train-mode paths)
# ------------------------------------------------------------------------------------------------------------

def _train_pair(arch="resnet18"):
    ours, tv = pair(arch)
    return ours.double().train(), tv.double().train()


def _assert_same_state(ours, tv, tol=1e-10):
    theirs = tv.state_dict()
    for k, v in ours.state_dict().items():
        if v.is_floating_point():
            assert rel_err(v, theirs[k]) < tol, k
        else:
            assert torch.equal(v, theirs[k]), (k, v, theirs[k])


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_double_backward_gradient_penalty_matches_torchvision(train_mode, train):
    ours, tv = _train_pair()
    ours.train(train), tv.train(train)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grads = []
    for m in (ours, tv):
        xi = x.clone().requires_grad_()
        g, = torch.autograd.grad(m(xi).square().sum(), xi, create_graph=True)
        (g.norm() + m(xi).sum() * 0).backward()  # WGAN-GP / R1: the penalty's gradient reaches the parameters
        grads.append({k: p.grad.clone() for k, p in m.named_parameters()})
        assert grads[-1]["conv1.weight"].abs().sum() > 0
    for k, g in grads[1].items():
        assert rel_err(grads[0][k], g) < 1e-8, k
    _assert_same_state(ours, tv)


def test_checkpointed_layers_update_running_statistics_like_torchvision(train_mode):
    from torch.utils.checkpoint import checkpoint

    ours, tv = _train_pair()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for m in (ours, tv):
        y = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
            y = checkpoint(layer, y, use_reentrant=False)
        m.fc(torch.flatten(m.avgpool(y), 1)).sum().backward()
    assert int(tv.layer1[1].bn2.num_batches_tracked) == 2  # torchvision updates again in the recompute
    _assert_same_state(ours, tv)
    for (k, p), q in zip(ours.named_parameters(), tv.parameters()):
        assert rel_err(p.grad, q.grad) < 1e-8, k


def test_batch_of_one_on_a_1x1_map_raises_like_torchvision(train_mode):
    ours, tv = _train_pair()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    errors = []
    for m in (ours, tv):
        with pytest.raises(ValueError) as e:
            m(x)
        errors.append(str(e.value))
    assert errors[0] == errors[1]
    _assert_same_state(ours, tv)


@pytest.mark.parametrize("mode", ["train", "eval", "frozen"])
@pytest.mark.parametrize("bad", ["x", None, 3.0, "list"])
def test_an_input_that_is_no_tensor_raises_like_torchvision(mode, bad):
    ours, tv = pair("resnet50")
    bad = [torch.randn(1, 3, 32, 32)] if bad == "list" else bad
    for m in (ours, tv):
        m.train(mode == "train")
    if mode == "frozen":
        resnet_ext.freeze(ours)
    for call in (lambda m: m, lambda m: m.layer1[0]):  # the model and a block alone
        errors = []
        for m in (ours, tv):
            with pytest.raises(TypeError) as e:
                call(m)(bad)
            errors.append(str(e.value))
        assert errors[0] == errors[1]


# ------------------------------------------------------------------------------------------------------------
# The module path's batched BN scale/shift must not change what a mixed model does
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mix", ["dtype_mismatch", "bf16_tail_fed_bf16"])
def test_module_path_on_a_mixed_model_is_torchvisions(mix):
    """A hook puts the model on the module path, where every unit's BN scale and shift are computed in one batch;
    a model whose layers differ in dtype must still give torchvision's error, or its answer."""
    ours, tv = pair()
    x = torch.randn(2, 3, 40, 40)
    for m in (ours, tv):
        m.eval()
        m.layer1.register_forward_hook(lambda mod, i, o: None)
        m.layer4.to(torch.bfloat16)
        if mix == "bf16_tail_fed_bf16":  # a pre-hook casts layer4's input: then it runs, in bf16
            m.layer4.register_forward_pre_hook(lambda mod, args: (args[0].to(torch.bfloat16),))
            m.avgpool.register_forward_pre_hook(lambda mod, args: (args[0].float(),))
    with torch.no_grad():
        if mix == "dtype_mismatch":
            with pytest.raises(RuntimeError) as theirs:
                tv(x)
            with pytest.raises(RuntimeError) as mine:
                ours(x)
            assert str(mine.value) == str(theirs.value)
        else:
            assert rel_err(ours(x), tv(x)) < 1e-2
