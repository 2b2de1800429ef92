"""The CPU engine's memory reuse (csrc/ops/cpu_memory.cpp, engine/cpu.py: reused_memory): a CPU forward's large
allocations reuse blocks kept from earlier forwards. A block in use is never handed out again, nothing changes
outside the engine's forwards, and the kept bytes stay within the limit the user sets."""
import gc
import os
import subprocess
import sys
import threading

import pytest
import torch

import resnet_ext
from resnet_ext.engine import cpu
from conftest import randomize_bn, tv_model

MiB = 1 << 20


@pytest.fixture(autouse=True)
def reuse_at_every_size(monkeypatch):
    """The allocator's own behaviour, on inputs small enough to be quick: the scope opens at any size here (where
    it opens by default, `cpu.reuse_pays`, is tested at the end)."""
    monkeypatch.setattr(cpu, "REUSE_PIXELS", 1)


@pytest.fixture
def limit():
    """Restores the default limit (and an empty cache) after a test that changes it."""
    yield
    resnet_ext.set_cpu_memory_limit(1 << 30)
    resnet_ext.empty_cpu_cache()


def pair(frozen):
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(tv).eval()
    if frozen:
        resnet_ext.freeze(ours)
    return ours, tv


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_forwards_reuse_blocks_and_give_torchvisions_answer(frozen, limit):
    ours, tv = pair(frozen)
    resnet_ext.empty_cpu_cache()  # no blocks of earlier tests: they would be freed by age during these forwards
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours(x)  # the first forward records the plan
        ours(x)
        stats = resnet_ext.cpu_memory_stats()
        assert stats["installed"] and stats["kept_bytes"] > 0
        blocks = stats["blocks"]
        outs = [ours(x) for _ in range(3)]
        ref = tv(x)
    assert resnet_ext.cpu_memory_stats()["blocks"] == blocks  # every block of these forwards was a kept one
    for out in outs:
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_a_kept_block_is_not_read():
    """A reused block holds an earlier forward's values; the answer must not depend on them."""
    ours, tv = pair(False)
    with torch.no_grad():
        for shape in [(1, 3, 64, 64), (1, 3, 64, 64), (3, 3, 48, 40), (1, 3, 64, 64)]:
            x = torch.randn(shape)
            torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-4)


def test_nothing_is_kept_outside_the_engines_forwards(limit):
    resnet_ext.resnet18(num_classes=10).eval()(torch.randn(1, 3, 32, 32))  # installs the allocator
    gc.collect()
    resnet_ext.empty_cpu_cache()
    before = resnet_ext.cpu_memory_stats()["blocks"]
    t = torch.empty(4 * MiB)
    del t
    tv = tv_model("resnet18", num_classes=10).eval()
    with torch.no_grad():
        tv(torch.randn(2, 3, 64, 64))  # oneDNN's raw buffers from the next allocator, freed through ours
    after = resnet_ext.cpu_memory_stats()
    assert (after["kept_bytes"], after["blocks"]) == (0, before)


@pytest.mark.parametrize("path", ["flat", "module"])
def test_frozen_weights_are_not_kept_when_the_model_goes(limit, path):
    """Packed and transformed weights are made outside the scope, on the flat path and on the module path (a hook
    on a block makes the frozen units run one by one)."""
    gc.collect()
    resnet_ext.empty_cpu_cache()
    ours, _ = pair(True)
    if path == "module":
        ours.layer1[0].register_forward_hook(lambda m, i, o: None)
    resnet_ext.reset_path_counts()
    with torch.no_grad():
        ours(torch.randn(2, 3, 64, 64))
    assert (resnet_ext.path_counts().get("flat_forwards", 0) > 0) == (path == "flat")
    kept = resnet_ext.cpu_memory_stats()["kept_bytes"]
    del ours, _
    gc.collect()
    assert resnet_ext.cpu_memory_stats()["kept_bytes"] == kept  # the model's weights went back to the system
    resnet_ext.empty_cpu_cache()
    assert resnet_ext.cpu_memory_stats()["blocks"] == 0


def test_scope_keeps_blocks_from_inside_only(limit):
    resnet_ext.set_cpu_memory_limit(1 << 30)
    resnet_ext.empty_cpu_cache()
    with cpu.reused_memory():
        t = torch.empty(MiB)
        small = torch.empty(1024)
    del t, small
    assert resnet_ext.cpu_memory_stats()["kept_bytes"] == 4 * MiB
    with cpu.reused_memory():
        first = torch.empty(MiB)  # the kept block
        second = torch.empty(MiB)  # a new one: the kept block is in use
        assert resnet_ext.cpu_memory_stats()["kept_bytes"] == 0
        assert second.data_ptr() != first.data_ptr()
        ptr = first.data_ptr()
        del first
        assert torch.empty(MiB).data_ptr() == ptr  # freed, kept, taken again


def test_limit_bounds_what_is_kept(limit):
    ours, _ = pair(False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours(x)
        resnet_ext.set_cpu_memory_limit(MiB)
        assert resnet_ext.cpu_memory_stats()["kept_bytes"] <= MiB
        ours(x)
        assert resnet_ext.cpu_memory_stats()["kept_bytes"] <= MiB
        resnet_ext.set_cpu_memory_limit(0)
        ours(x)
        assert resnet_ext.cpu_memory_stats()["kept_bytes"] == 0
        resnet_ext.set_cpu_memory_limit(1 << 30)
        ours(x)
    assert resnet_ext.cpu_memory_stats()["kept_bytes"] > 0
    resnet_ext.empty_cpu_cache()
    assert resnet_ext.cpu_memory_stats()["kept_bytes"] == 0


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), ("1G", TypeError), (True, TypeError),
                                        (2 ** 70, ValueError)])
def test_bad_limit_names_the_argument(bad, error):
    with pytest.raises(error, match="set_cpu_memory_limit: nbytes must be"):  # True was 1 byte, 2**70 pybind's
        resnet_ext.set_cpu_memory_limit(bad)


def test_threads_get_their_own_answers(limit):
    ours, tv = pair(True)
    xs = [torch.randn(2, 3, 64, 64) for _ in range(4)]
    with torch.no_grad():
        refs = [tv(x) for x in xs]
    results = [None] * len(xs)

    def work(i):
        with torch.no_grad():
            for _ in range(3):
                results[i] = ours(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out, ref in zip(results, refs):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_training_step_on_cpu_matches_torchvision(limit):
    """A training forward's saved tensors come from the scope and are freed in backward, outside it."""
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).double()
    ours = resnet_ext.from_torchvision(tv).double()
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    for _ in range(2):
        for m in (ours, tv):
            m.zero_grad()
            m(x).square().sum().backward()
    for (name, p), q in zip(ours.named_parameters(), tv.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_the_least_recently_kept_blocks_go_first(limit):
    """With the limit reached, a freed block evicts the oldest kept ones (sizes no longer asked for), not itself."""
    resnet_ext.empty_cpu_cache()
    resnet_ext.set_cpu_memory_limit(3 * MiB)
    sizes = [MiB, MiB + 4096, 2 * MiB]
    with cpu.reused_memory():
        blocks = [torch.empty(n, dtype=torch.uint8) for n in sizes]
    ptrs = [b.data_ptr() for b in blocks]
    for i in range(3):
        blocks[i] = None  # freed in order: the third evicts both others to fit
    assert resnet_ext.cpu_memory_stats()["kept_bytes"] == 2 * MiB
    with cpu.reused_memory():
        again = torch.empty(2 * MiB, dtype=torch.uint8)
        assert again.data_ptr() == ptrs[2]
        assert resnet_ext.cpu_memory_stats()["kept_bytes"] == 0
    del again
    resnet_ext.set_cpu_memory_limit(MiB)
    with cpu.reused_memory():
        big = torch.empty(2 * MiB, dtype=torch.uint8)  # over the limit on its own: freed, not kept
    del big
    assert resnet_ext.cpu_memory_stats()["kept_bytes"] == 0


def test_torch_profiler_sees_the_reused_blocks(limit):
    """Blocks handed out and taken back are reported as PyTorch's CPU allocator reports its own."""
    from torch.profiler import ProfilerActivity, profile
    ours, _ = pair(False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours(x)
        ours(x)  # from here on every large block is a kept one
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            ours(x)
    sizes = [e.cpu_memory_usage for e in prof.events()]  # allocations under the op that made them
    assert any(s >= 64 * 1024 for s in sizes) and any(s <= -64 * 1024 for s in sizes)


def test_reuse_pays_from_the_pixel_threshold():
    n = cpu.REUSE_PIXELS = 128 * 128  # (the autouse fixture restores its value)
    assert cpu.reuse_pays(torch.empty(1, 3, 128, 128)) and cpu.reuse_pays(torch.empty(4, 3, 64, 64))
    assert not cpu.reuse_pays(torch.empty(1, 3, 127, 128)) and not cpu.reuse_pays(torch.empty(8, 3, 32, 32))
    assert cpu.reuse_pays(torch.empty(3, 128, 128)) and not cpu.reuse_pays(torch.empty(3, 64, 64))  # unbatched
    assert not cpu.reuse_pays(torch.empty(n)) and not cpu.reuse_pays(torch.empty(0, 3, 128, 128))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_a_small_input_runs_outside_the_scope(train, limit):
    """Below the threshold no block is made or kept (glibc keeps such blocks itself); above it they are."""
    cpu.REUSE_PIXELS = 128 * 128
    ours, _ = pair(False)
    ours.train(train)
    resnet_ext.empty_cpu_cache()
    made = resnet_ext.cpu_memory_stats()["blocks"]
    with torch.set_grad_enabled(train):
        for _ in range(2):
            ours(torch.randn(2, 3, 64, 64))
        assert resnet_ext.cpu_memory_stats()["blocks"] == made and resnet_ext.cpu_memory_stats()["kept_bytes"] == 0
        ours(torch.randn(1, 3, 128, 128))
    assert resnet_ext.cpu_memory_stats()["kept_bytes"] > 0


def test_eval_blocks_called_on_their_own_run_torchvisions_code():
    """torchvision's IntermediateLayerGetter (detection backbones, feature extractors) calls the layers, not the
    model's forward: on the CPU in eval mode those blocks run torchvision's own code ("stock_blocks"; the engine's
    units measured 0.82-0.91x it there), with its bits; inside a model's forward (a hook in the body: the module
    path) the blocks run the engine's units where their maps or weights are channels_last."""
    from torchvision.models._utils import IntermediateLayerGetter
    ours, tv = pair(False)
    layers = {"layer1": "a", "layer4": "b"}
    g_ours, g_tv = IntermediateLayerGetter(ours, layers), IntermediateLayerGetter(tv, layers)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        resnet_ext.reset_path_counts()
        outs, refs = g_ours(x), g_tv(x)
        assert resnet_ext.path_counts() == {"stock_blocks": 8}, resnet_ext.path_counts()
        assert all(torch.equal(outs[k], refs[k]) for k in layers.values())
        ours.layer2.register_forward_hook(lambda *a: None)
        resnet_ext.reset_path_counts()
        ours(x.contiguous(memory_format=torch.channels_last))
        counts = resnet_ext.path_counts()
        assert "stock_blocks" not in counts and counts.get("modules", 0) + counts.get("unfolded", 0) == 20, counts


@pytest.mark.parametrize("frozen", [False, True])
def test_blocks_of_a_size_no_longer_asked_for_are_freed(frozen, limit):
    """A kept block not reused within a few model forwards is freed: with input sizes that keep changing, blocks
    of the old sizes filled the limit (a resnet18 service on random sizes kept 0.9 GB, RSS 1.7 GB where
    torchvision's stayed at 0.9). Inputs alternating in size keep theirs (steady state), and empty_cpu_cache()
    gives everything back."""
    ours, _ = pair(frozen)
    resnet_ext.empty_cpu_cache()
    b, a = torch.randn(2, 3, 48, 48), torch.randn(1, 3, 80, 72)
    with torch.no_grad():
        for _ in range(3):
            ours(b)
        steady = resnet_ext.cpu_memory_stats()["kept_bytes"]
        ours(a)
        with_a = resnet_ext.cpu_memory_stats()["kept_bytes"]
        for _ in range(2):  # alternating: a's blocks wait for it, b's are reused
            ours(b)
        assert resnet_ext.cpu_memory_stats()["kept_bytes"] == with_a
        for _ in range(4):
            ours(b)
    assert steady > 0 and with_a > steady
    assert resnet_ext.cpu_memory_stats()["kept_bytes"] == steady
    resnet_ext.empty_cpu_cache()
    assert resnet_ext.cpu_memory_stats()["kept_bytes"] == 0


OUTSIDE_A_FORWARD = r"""
import resource, torch, resnet_ext
model = resnet_ext.resnet18().eval()
with torch.no_grad():
    model(torch.randn(4, 3, 224, 224))
kept = resnet_ext.cpu_memory_stats()["kept_bytes"]
assert kept >= 32 << 20, kept
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) << 10
resource.setrlimit(resource.RLIMIT_AS, (vm + (16 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
big = torch.empty(kept // 2 + (16 << 20), dtype=torch.uint8)  # fits only where the kept blocks go back
big.fill_(1)
assert resnet_ext.cpu_memory_stats()["kept_bytes"] == 0
print("ok")
"""


def test_an_allocation_outside_a_forward_gets_the_kept_blocks_back():
    """Under a memory limit an allocation between forwards (the user's) fails where torchvision's process would have
    the memory: the blocks kept for reuse are given back and it is tried once more, as inside a forward (helper-56:
    a tensor allocated after a batch-64 forward failed). Every block of 64 KiB or more mmapped (glibc's threshold
    fixed), so that a freed one gives its address space back, which RLIMIT_AS counts."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", OUTSIDE_A_FORWARD], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
