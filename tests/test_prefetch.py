"""The CPU ops' `prefetch` argument (conv1x1, winograd3x3: the next unit's weight fetched into cache as the op
computes) and the frozen plan that passes it (`engine.cpu.prefetch_pays`, `with_prefetch`, the `cpu_prefetch`
switch). A prefetch changes no value: every output is bitwise the one without, whatever tensor is fetched (strided,
a oneDNN-packed weight, one line or many megabytes, an odd view); a tensor it cannot read is a clear error naming
`prefetch`; the plan passes each own-op unit the next unit's weight, only where it pays, and the switch turns it off."""
import pytest
import torch

import resnet_ext
from resnet_ext import ops
from resnet_ext.engine import cpu, units
from conftest import frozen_pair, rel_err

f32_only = pytest.mark.skipif(not ops.conv1x1_supported(torch.float32), reason="this CPU has no AVX-512")
bf16_ok = ops.conv1x1_supported(torch.bfloat16) and ops.winograd_bf16_supported()


def targets():
    """Tensors to prefetch: none, no element, one (no whole line), 16 MB, a strided view, a oneDNN-packed weight."""
    big = torch.randn(4 << 20)
    packed = torch.ops.mkldnn._reorder_convolution_weight(torch.randn(256, 64, 3, 3), [1, 1], [1, 1], [1, 1], 1,
                                                          [1, 64, 14, 14])
    return {"none": None, "empty": torch.empty(0), "one": torch.randn(1), "16MB": big, "view": big[17::3],
            "onednn": packed}


DTYPES = [torch.float32] + ([torch.bfloat16] if bf16_ok else [])


def _conv1x1_args(dtype, n=1, c=256, k=128, h=14, w=13, residual=True):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, h, w, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    wt = ops.conv1x1_weight((torch.randn(k, c, 1, 1, generator=g) / c ** 0.5).to(dtype))
    r = (torch.randn(n, k, h, w, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
         if residual else None)
    return x, wt, torch.randn(k, generator=g), r


@f32_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 256, 128, 14, 13, 1), (3, 64, 64, 5, 7, 1), (1, 16, 64, 1, 1, 1),
                                   (1, 128, 256, 15, 14, 2)], ids=lambda s: "x".join(map(str, s)))
def test_conv1x1_output_is_bitwise_the_same_with_any_prefetch(dtype, shape):
    n, c, k, h, w, stride = shape
    x, wt, b, r = _conv1x1_args(dtype, n, c, k, h, w, residual=stride == 1)
    want = ops.conv1x1(x, wt, b, r, True, stride)
    for name, t in targets().items():
        got = ops.conv1x1(x, wt, b, r, True, stride, t)
        assert torch.equal(got, want), name


@f32_only
@pytest.mark.parametrize("dtype, m", [(torch.float32, 4), (torch.float32, 2)] + [(torch.bfloat16, 2)] * bf16_ok)
@pytest.mark.parametrize("shape", [(1, 64, 64, 56, 56), (1, 256, 256, 14, 14), (2, 32, 48, 7, 9)],
                         ids=lambda s: "x".join(map(str, s)))
def test_winograd_output_is_bitwise_the_same_with_any_prefetch(dtype, m, shape):
    """Every path of the op: blocks of tiles per thread (small u), one shared chunk and chunks (large u)."""
    n, c, k, h, w = shape
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, c, h, w, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    u = ops.winograd_weight((torch.randn(k, c, 3, 3, generator=g) / (3 * c ** 0.5)).to(dtype), m)
    b = torch.randn(k, generator=g)
    want = ops.winograd3x3(x, u, b, None, True)
    for name, t in targets().items():
        assert torch.equal(ops.winograd3x3(x, u, b, None, True, t), want), name


@f32_only
def test_a_prefetch_it_cannot_read_is_a_clear_error():
    x, wt, b, r = _conv1x1_args(torch.float32)
    xw = torch.randn(1, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    u = ops.winograd_weight(torch.randn(64, 64, 3, 3))
    for bad in (torch.randn(8, 8).to_sparse(), torch.empty(10, device="meta"), [1, 2], (1, 2.0), 3):
        with pytest.raises(TypeError, match="prefetch must be a CPU tensor"):
            ops.conv1x1(x, wt, b, r, True, 1, bad)
        with pytest.raises(TypeError, match="prefetch must be a CPU tensor"):
            ops.winograd3x3(xw, u, torch.zeros(64), None, True, bad)
    # The ops' own arguments: a negative byte count, more than 2^47 bytes, or bytes at address 0.
    for addr, nbytes in ((1 << 20, -1), (1 << 20, (1 << 47) + 1), (0, 64)):
        with pytest.raises(RuntimeError, match=r"conv1x1: prefetch_bytes must be in \[0, 2\^47\]"):
            torch.ops.resnet_ext.conv1x1(x, wt, b, r, True, 1, addr, nbytes)
        with pytest.raises(RuntimeError, match=r"winograd3x3: prefetch_bytes must be in \[0, 2\^47\]"):
            torch.ops.resnet_ext.winograd3x3(xw, u, torch.zeros(64), None, True, addr, nbytes)


@f32_only
def test_any_address_is_safe():
    """A prefetch never faults: an unmapped address, the top of the address space and a freed tensor's memory give
    the same output."""
    x, wt, b, r = _conv1x1_args(torch.float32)
    want = ops.conv1x1(x, wt, b, r, True)
    gone = ops.prefetch_range(torch.randn(1 << 20))  # freed when the temporary goes
    for rng in ((64, 1 << 20), ((1 << 47) - (2 << 20), 1 << 20), gone):
        assert torch.equal(ops.conv1x1(x, wt, b, r, True, 1, rng), want)


@f32_only
def test_opcheck_with_a_prefetch():
    x, wt, b, r = _conv1x1_args(torch.float32, c=64, k=64, h=5, w=5)
    torch.library.opcheck(torch.ops.resnet_ext.conv1x1.default,
                          (x, wt, b, r, True, 1, *ops.prefetch_range(torch.randn(100))))
    xw = torch.randn(1, 32, 6, 6).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.resnet_ext.winograd3x3.default,
                          (xw, ops.winograd_weight(torch.randn(32, 32, 3, 3)), torch.zeros(32), None, True,
                           *ops.prefetch_range(torch.randn(100))))


# ---- In the frozen plan ------------------------------------------------------------------------------------------


@f32_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_plan_prefetches_each_next_weight_and_changes_no_bit(dtype, no_amx):
    """Batch 1 at 64x64 (within PREFETCH_PIXELS): each Winograd, 1x1 and direct unit is given the next unit's weight
    (its own op's packed one or the oneDNN-packed tensor; the last unit the fc's), counted "prefetch" from the call
    after the one that plans; the logits are bitwise those of the same frozen model with the switch off (a plan of
    its own)."""
    ours, tv = frozen_pair("resnet50", None if dtype == torch.float32 else dtype)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    out, counts = {}, {}
    with torch.no_grad():
        for on in (True, False, True):
            assert resnet_ext.cpu_prefetch(on) is True
            try:
                for _ in range(2):  # plan, replay
                    units.reset_path_counts()
                    out[on] = ours(x)
                    counts.setdefault(on, []).append(resnet_ext.path_counts().get(cpu.PREFETCHED, 0))
            finally:
                resnet_ext.cpu_prefetch(True)
    programs = [e[0] for e in cpu._state.of(ours).programs[2].values()]
    assert len(programs) == 2  # one plan per setting
    with_pf = [p for p in programs if any(len(wb) > 3 for wb in p)]
    assert len(with_pf) == 1
    program = with_pf[0]
    expected = [i for i, wb in enumerate(program) if wb[0] is cpu.WINO or wb[0] is cpu.CONV1X1 or wb[0] is cpu.DIRECT]
    assert expected and [i for i, wb in enumerate(program) if len(wb) > 3] == expected
    for i in expected:  # the last unit: the fc's weight (fc_prefetch)
        nxt = program[i + 1] if i + 1 < len(program) else None
        assert program[i][3] == (ops.prefetch_range(ours.fc.weight) if nxt is None
                                 else ops.prefetch_range(nxt[1] if cpu._is_own(nxt) else nxt[0]))
    assert expected[-1] == len(program) - 1
    if dtype == torch.float32:  # a oneDNN-packed weight prefetched (bf16's plan here has no oneDNN unit left)
        assert any(program[i + 1][0].is_mkldnn for i in expected[:-1] if not cpu._is_own(program[i + 1]))
    assert counts[True] == [0] + [len(expected)] * 3 and counts[False] == [0, 0]
    assert torch.equal(out[True], out[False])
    if dtype == torch.float32:
        assert rel_err(out[True], tv(x)) < 1e-4


@f32_only
def test_no_prefetch_above_the_bound(no_amx):
    """A forward input of more than PREFETCH_PIXELS pixels (batch 2 at 160x160: 51,200) plans no prefetch."""
    ours, tv = frozen_pair("resnet18")
    x = torch.randn(2, 3, 160, 160).contiguous(memory_format=torch.channels_last)
    assert 2 * 160 * 160 > cpu.PREFETCH_PIXELS
    with torch.no_grad():
        units.reset_path_counts()
        y = ours(x)
        counts = resnet_ext.path_counts()
        assert counts.get("winograd", 0) + counts.get("conv1x1", 0) > 0, counts
        assert counts.get(cpu.PREFETCHED, 0) == 0, counts
        assert rel_err(y, tv(x)) < 1e-4
