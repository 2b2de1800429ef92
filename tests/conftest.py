import copy
import functools
import os
import subprocess
import sys

import pytest
import torch
import torchvision

import resnet_ext
from resnet_ext.shapes import norm_err, rel_err  # noqa: F401  (the tests import them from here)


def pytest_addoption(parser):
    parser.addoption("--bn-optin", action="store_true",
                     help="run with resnet_ext.bn_optin(True): the opt-in training-BN CUDA kernels (experimental "
                          "build; gpu_check.sh's tests_bn_optin step)")


def pytest_configure(config):
    if config.getoption("--bn-optin"):
        resnet_ext.bn_optin(True)


def run_poisoned(script: str, byte: str = "128") -> None:
    """Runs `script` in a fresh interpreter with glibc filling every fresh heap allocation with `byte`
    (MALLOC_PERTURB_; 128: 0x7f bytes, 3.4e38 in fp32 and bf16, far off any output) and asserts it printed "ok": an
    output element an op did not write then shows in the script's error bound."""
    env = dict(os.environ, MALLOC_PERTURB_=byte)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@functools.lru_cache(maxsize=16)  # 16 resnet50s: 1.6 GB
def _initial_state(arch: str, seed: int, kw: tuple) -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return getattr(torchvision.models, arch)(**dict(kw)).state_dict()


_builds_in_this_test = [0]


@pytest.fixture(autouse=True)
def _count_builds_per_test():
    _builds_in_this_test[0] = 0


def tv_model(arch: str, seed: int | None = None, **kw) -> torch.nn.Module:
    """torchvision.models.ARCH(**kw) as the builder makes it after torch.manual_seed(seed), without paying for its
    random init each time (0.15 s for resnet18, 2 s for wide_resnet101_2): the first one's tensors, kept, are
    copied into a model built on the meta device. Without a seed, a test's n-th model is seed n's, so two models
    built in one test differ as two builds would (a module-scoped fixture, set up before the count is reset, passes
    its own). The global RNG is left alone."""
    if seed is None:
        seed = _builds_in_this_test[0]
        _builds_in_this_test[0] += 1
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items()))
    state = _initial_state(arch, seed, key)
    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(**kw)
    model.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)
    return model


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so folding bugs show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
    return model


def hard_bn_batches() -> dict:
    """fp32 batches whose statistics one-pass fp32 sums get wrong about a shift chosen before seeing the data:
    every channel's mean 100 times its std (a stale running mean as the shift); an outlier as the first value of
    the batch and of its second half, each of two ranks' first value (that value as the shift); and +-inf first
    values (torch's running mean is then +-inf)."""
    g = torch.Generator().manual_seed(2)
    offset = torch.randn(8, 16, 8, 8, generator=g) + 100.0
    outlier = torch.randn(8, 16, 8, 8, generator=g)
    outlier[0, :, 0, 0] = outlier[4, :, 0, 0] = 1e4  # ranks 0 and 1: x[4 * rank, c, 0, 0]
    inf = torch.randn(8, 3, 4, 4, generator=g)
    inf[0, 0, 0, 0], inf[4, 2, 0, 0] = float("inf"), float("-inf")
    return {"offset": offset, "outlier": outlier, "inf": inf}


def change_fc(models, change) -> None:
    """The same change to each model's fc (resnet18's, 512 -> 10), as a user might make it after freeze: None, "no
    bias", or its weight swapped through `.data` for a "strided weight", a "float64 weight" or one of "other
    in_features"."""
    w = torch.randn(10, 256 if change == "other in_features" else 512, generator=torch.Generator().manual_seed(0))
    for m in models:
        if change == "no bias":
            m.fc.bias = None
        elif change is not None:
            m.fc.weight.data = {"strided weight": w.t().contiguous().t(), "float64 weight": w.double()}.get(change, w)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# The unverified kernels and the test hooks (poisoned outputs, failing launches, kernel selection on fake registries)
# are only in a build made with RESNET_EXT_EXPERIMENTAL=1 (gpu_check.sh, CI's experimental build).
requires_experimental = pytest.mark.skipif(not resnet_ext.ops.EXPERIMENTAL,
                                           reason="needs a RESNET_EXT_EXPERIMENTAL=1 build")


@pytest.fixture(params=["auto", "fused"])
def train_mode(request):
    """Runs a model-level training test under each train-mode BN path (`resnet_ext.train_bn`): the default
    ("auto": the stock composition wherever the fused op is not measured faster) and the fused op, forced."""
    import resnet_ext

    previous = resnet_ext.train_bn(request.param)
    yield request.param
    resnet_ext.train_bn(previous)


def frozen_pair(arch: str, dtype=None, **kw):
    """(resnet_ext's frozen copy, torchvision's model): torchvision's ARCH with 10 classes and randomized BN (`kw`
    to its builder), frozen in `dtype` (None: the model's fp32)."""
    tv = randomize_bn(tv_model(arch, num_classes=10, **kw)).eval()
    return resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)), dtype=dtype), tv


@pytest.fixture
def no_amx(monkeypatch):
    """The CPU plan as on a CPU without AMX tiles (with them, the bf16 rules leave convs to oneDNN's AMX kernels)."""
    from resnet_ext.engine import cpu
    monkeypatch.setattr(cpu, "AMX_BF16", False)
