"""The CPU engine: a stock model's eval forward as its recorded units (`structure.Structure`) in one flat sequence
of calls (`run`), each unit as the plan for this input says. Two plan policies: the default mode (every BN read
afresh and applied unfolded, as torchvision computes it; a channels_last 1x1 or 3x3 conv whose weight outweighs its
output as one GEMM, an fp32 3x3 stride-1 conv of many tiles by F(2x2) Winograd on its live weight) and the frozen
mode (BN folded once, weights prepacked for oneDNN per input size, 3x3 stride-1 convs by Winograd where it pays).
Also the memory reuse every CPU forward of the engine runs inside.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import operator
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._prims_common import suggest_memory_format

from .. import ops
from .._C_loader import _C
from ..switches import (cpu_conv1x1, cpu_direct, cpu_onednn_graph, cpu_prefetch, cpu_replay, cpu_stem,
                        cpu_winograd)
from . import state as _state
from . import onednn_graph, replay, structure, units
from .structure import Unit

_DTYPES = (torch.float32, torch.bfloat16)
CACHE_LIMIT = 8   # plans (per input shape, dtype and layout) kept per model


@contextlib.contextmanager
def reused_memory(on: bool = True):
    """Inside: this thread's tensor allocations of 64 KiB and more reuse blocks kept from earlier forwards
    (csrc/ops/cpu_memory.cpp: fresh blocks cost a page fault per 4 KiB on first touch; reuse made resnet50's frozen
    forward 1.11x and the default 1.18x faster at batch 8 on a 2-core VM). Every CPU forward of the engine runs
    inside; what outlives a forward (the frozen mode's packed and transformed weights, frozen.py) is made outside
    (`on=False`), so that a dropped model's weights are not kept."""
    was = _C.cpu_memory_scope(on)
    try:
        yield
    finally:
        _C.cpu_memory_scope(was)


REUSE_PIXELS = 128 * 128  # inputs of fewer pixels (N*H*W) run without the memory reuse (`reuse_pays`)


def reuse_pays(x: Tensor) -> bool:
    """Whether a forward of `x` runs inside `reused_memory`: from `REUSE_PIXELS` input pixels. Below, glibc keeps
    the activations' blocks itself (no page faults to save), and the reuse, which only hands a block back for the
    same size, spreads a forward over more memory: the default mode interleaved with and without it (2-core Zen 5,
    fp32 unless said, time with / without): resnet18 NCHW at batch 1 32x32 1.01-1.04, 64x64 1.02-1.06, 80x80
    0.98-1.01, 128x128 0.96-0.99; at batch 8 32x32 1.03-1.05, 48x48 0.93-1.02, 64x64 0.89-0.94; resnet50 NCHW
    batch 1 112x112 1.00-1.02, resnet50 bf16 channels_last 32x32 1.01; at 224x224 it made resnet50 1.07-1.29x
    faster (benchmarks/results/2026-12-03-cpu-memory-reuse/). An unbatched (C, H, W) input counts H*W."""
    return x.dim() >= 3 and x.numel() // max(1, x.shape[-3]) >= REUSE_PIXELS


_IN_MODEL: contextvars.ContextVar[bool] = contextvars.ContextVar("resnet_ext_cpu_model_forward", default=False)


@contextlib.contextmanager
def model_memory(x: Tensor):
    """A model's CPU forward: inside `reused_memory` where `reuse_pays(x)`; marks it under way (`in_model`)."""
    token = _IN_MODEL.set(True)
    reuse = reuse_pays(x)
    if reuse:
        _C.cpu_memory_next_forward()  # blocks of sizes the last forwards did not ask for again are freed
    try:
        with reused_memory(reuse):
            yield
    finally:
        _IN_MODEL.reset(token)


def in_model() -> bool:
    """Whether a model's CPU forward is under way in this context (`model_memory`)."""
    return _IN_MODEL.get()


def set_memory_limit(nbytes: int) -> None:
    """Keep at most `nbytes` of freed CPU blocks for the next forwards (default 1 GiB; 0 keeps none, every block
    is freed as before), the least recently kept freed first. Lowering it frees what is kept beyond it."""
    try:
        if isinstance(nbytes, bool):
            raise TypeError
        nbytes = operator.index(nbytes)
    except TypeError:
        raise TypeError(f"set_cpu_memory_limit: nbytes must be an int, got {type(nbytes).__name__}") from None
    if not 0 <= nbytes < 2 ** 63:
        raise ValueError(f"set_cpu_memory_limit: nbytes must be >= 0 and < 2**63, got {nbytes}")
    _C.set_cpu_memory_limit(nbytes)


def empty_cache() -> None:
    """Frees the CPU blocks kept for reuse (those in use stay, and are kept again when freed)."""
    _C.empty_cpu_cache()


def memory_stats() -> dict:
    """{"kept_bytes": freed blocks kept for reuse, "limit": the most kept, "blocks": blocks made in the engine's
    forwards and not freed, "installed": whether the reusing allocator is in front of PyTorch's CPU allocator
    (false before the first CPU forward, or where another allocator of higher priority is installed)}."""
    return dict(_C.cpu_memory_stats())


def _out_size(conv: nn.Conv2d, x: Tensor) -> Tuple[int, int]:
    """The conv's output height and width for x, from its attributes (numeric padding)."""
    return ops.conv_out_size(x, conv.kernel_size, conv)


def gemm_pays(u: Unit, x: Tensor) -> bool:
    """Whether a 1x1 conv (a 3x3 one: `gemm3x3_pays`) runs faster as `gemm_unit` than through ATen's convolution
    (oneDNN, which reorders the weight on every call) for a channels_last input. Not for a conv with a bias (the
    unit's shift is BN's alone: the bias belongs to the conv's output). On NCHW inputs oneDNN runs these convs
    without the reorder and the GEMM loses (0.66 -> 0.87 ms, measured with torch.mm). Measured on 2 threads, per
    shape (benchmarks/cpu_gemm_small_maps.py, cpu_gemm_units.py) and on whole models against the rule before
    2026-12-04, the first fp32 condition alone for both dtypes (benchmarks/cpu_gemm_rule_ab.py); results in
    benchmarks/results/2026-12-03-cpu-gemm-units/ (2-core AMD) and 2026-12-04-cpu-default-sweep/ (2-core AMX Xeon):
    - float32 (oneDNN's matmul): where the weight outweighs the output, the input channels at least twice the output
      pixels: resnet50's such shapes 1.24-3.83x faster at batch 1 at 224x224 (layer4's 2048 -> 512: 1.56 -> 0.42 ms,
      AMD) and 1.40-1.50x at batch 8. But not below 16 output pixels (a small input's late layers), where oneDNN
      runs the convolution without the reorder and the GEMM is 1.1-5x slower; below 49 pixels only for a weight of
      512K elements or more (4x4: 1024 -> 256 0.81x, 1024 -> 512 1.61x); below 100 pixels only from 512 input
      channels (7x7: 256 -> 1024 0.86x, 512 -> 128 1.43x; 10x10: see gemm_small_maps.txt). On whole models at
      batch 1, against the first condition alone: 1.06-1.24x faster at 32x32, 1.04-1.07x at 64x64, level
      (0.97-1.01x) from 112x112 up.
    - bfloat16 (torch.mm) on CPUs with AMX tiles (`AMX_BF16`): every such conv. ATen's bf16 convolution reorders
      the weight to the tiles' blocked format on every call; over resnet50's twelve 1x1 shapes the GEMM was
      1.1-4.9x faster at batch 1 on 1x1 to 14x14 maps and 1.2-1.5x on 56x56 (0.76-2.4x on 28x28), 1.0-2.4x at
      batch 8 on 7x7 to 28x28 (0.73-1.3x on 56x56). Whole models (resnet18/50/101, batch 1 to 8, 32x32 to
      224x224) against the first fp32 condition: 0.96-1.07x in one run, 0.97-1.08x in another (rotated rounds,
      in which identical configurations differ by up to 3%): level or slightly faster. Elsewhere that condition:
      on a Zen 5 without AMX every bf16 1x1 up to 400 output pixels as a GEMM was 1.1-9.8x faster per conv on
      small maps but whole models level with this rule (0.97-1.05x; 2026-12-05-cpu-gemm3x3/)."""
    conv = u.conv
    if conv.groups != 1 or conv.bias is not None or not ops.wants_channels_last(x) or not _gemm_fits(conv, x):
        return False
    if x.dtype == torch.float32 and not fp32_matmul_exact():
        return False
    if conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.dilation == (1, 1):
        return gemm3x3_pays(conv, x)
    if conv.kernel_size != (1, 1) or conv.padding != (0, 0):
        return False
    if x.dtype == torch.bfloat16 and AMX_BF16:
        return True
    c, k = conv.in_channels, conv.out_channels
    h, w = _out_size(conv, x)
    pixels = x.shape[0] * h * w
    if c < 2 * pixels:
        return False
    return x.dtype != torch.float32 or (pixels >= 16 and (pixels >= 49 or c * k >= 1 << 19)
                                        and (pixels >= 100 or c >= 512))


def fp32_matmul_exact() -> bool:
    """False where oneDNN's fp32 matmuls may round their operands (`torch.set_float32_matmul_precision("medium")`
    or `torch.backends.mkldnn.matmul.fp32_precision = "bf16"`: bf16 products on CPUs with AMX) while the
    convolutions keep theirs: no fp32 GEMM unit then stands in for a convolution (the default plans' key holds it)."""
    return torch.backends.mkldnn.matmul.fp32_precision in ("none", "ieee")


def gemm3x3_pays(conv: nn.Conv2d, x: Tensor) -> bool:
    """`gemm_pays` for a 3x3 conv (padding 1, stride 1 or 2), channels_last input: where oneDNN's per-call reorder
    of a large weight outweighs the work, i.e. up to a number of output pixels P (all images) proportional to the
    weight's W elements. Measured per shape on a 2-core AMD Zen 5 (no AMX), batch 1, 1x1 to 28x28 maps
    (benchmarks/cpu_gemm3x3.py; results in benchmarks/results/2026-12-05-cpu-gemm3x3/), conv / GEMM:
    - float32, weight as constructed (contiguous): P <= W / 16K from 256K elements (256 -> 256: 1.18-1.70x at
      P 4-16, 0.93x at 49; 512 -> 512: 1.3-3.1x at P 4-196); smaller weights lose (0.2-0.9x). A channels_last
      weight (the model converted) is reordered faster and the GEMM pays only for W >= 1M at 16 <= P <= 196,
      P >= 49 below 2M (512 -> 512: 1.04-2.45x, 0.75-0.99x at P 1-4; 256 -> 512: 1.17x at 49, 0.65-0.96x below).
    - bfloat16 without AMX tiles: P <= W / 24K for a contiguous weight (1.17-5.4x; 0.64-0.99x just beyond), and
      W >= 256K with P <= W / 12K for a channels_last one (1.04-2.3x; 0.73-1.0x for 64 and 128 channels).
      With AMX (`AMX_BF16`) ATen's convolution runs on the tiles: not measured, left to it.
    Never beyond 196 pixels (the largest measured)."""
    k, c = conv.out_channels, conv.in_channels
    w = k * c * 9
    oh, ow = _out_size(conv, x)
    p = x.shape[0] * oh * ow
    if p > 196:
        return False
    contiguous = conv.weight.is_contiguous()
    if x.dtype == torch.float32:
        if contiguous:
            return w >= 1 << 18 and p << 14 <= w
        return w >= 1 << 20 and p >= 16 and (p >= 49 or w >= 1 << 21)
    if x.dtype == torch.bfloat16 and not AMX_BF16:
        return p * 24576 <= w if contiguous else w >= 1 << 18 and p * 12288 <= w
    return False


WINOGRAD_MIN_TILES = 16  # F(4x4) output tiles, fp32; see winograd_pays
WINOGRAD_MIN_TILES_BF16 = 32  # F(2x2) output tiles, bf16
AMX_BF16 = ops.cpu_amx_bf16()  # see winograd_pays and conv1x1_pays (those stay on oneDNN there) and gemm_pays


def winograd_pays(u: Unit, x: Tensor) -> bool:
    """Whether a frozen unit runs as `ops.winograd3x3` rather than oneDNN's direct convolution: a 3x3 stride-1 conv
    with padding 1 on a channels_last input, channels multiples of 16. `resnet_ext.cpu_winograd(False)` turns it
    off. Measured on a 2-core AVX-512 machine against oneDNN on prepacked weights:
    - float32, F(4x4, 3x3) (4x fewer multiplies): at least 16 output tiles of 4x4 (N * ceil(H/4) * ceil(W/4)),
      below which the GEMMs only stream the transformed weight (4x the weight's size); F(2x2, 3x3) instead where
      few tiles share a large weight (`winograd_tile`). resnet50's 3x3 convs
      1.6-2.2x faster at batch 1 (layers 1-3; layer 4 has 4 tiles and runs 2.5x slower) and 1.2-2.2x at batch 8.
    - bfloat16, F(2x2, 3x3) (2.25x fewer multiplies; CPUs with AVX512-BF16): resnet50's 3x3 convs 1.06-1.82x
      faster at batch 1 (layer 4 the least) and 1.08-1.70x at batch 8 (benchmarks/results/
      2026-12-03-cpu-winograd-bf16/), 1.3-1.8x down to 4 tiles and level at a single one, one layer's call at a
      time. Inside a forward each layer's weight comes cold from memory and the transformed one is 16/9 its
      bytes: at batch 1 resnet50's layer-4 calls took 780 us against oneDNN's 530-550. From 32 tiles of 2x2
      (N * ceil(H/2) * ceil(W/2); layer 4 at batch 1 has 16) whole models ran 1.01-1.035x faster than with
      every 3x3 as Winograd (resnet50 and resnet101 at batch 1, 224x224, Zen 5;
      benchmarks/cpu_winograd_min_tiles_ab.py). Not on CPUs with AMX-BF16 (`AMX_BF16`): on a 2-core AMX Xeon
      oneDNN's bf16 convs on the tiles were 1.4-5.9x faster than the op per layer and the frozen bf16 resnet50
      2.1x (batch 8) and 1.7x (batch 1) faster without it (benchmarks/results/2026-12-04-cpu-amx/)."""
    conv = u.conv
    if (not cpu_winograd.on or conv.kernel_size != (3, 3) or u.geometry != ((1, 1), (1, 1), (1, 1), 1)
            or conv.in_channels % 16 or conv.out_channels % 16):
        return False
    if x.dtype == torch.bfloat16:  # the op's own precondition: a 1x1 map (either layout) counts as channels_last
        return (x.is_contiguous(memory_format=torch.channels_last) and ops.winograd_bf16_supported()
                and not AMX_BF16 and _tiles(x, 2) >= WINOGRAD_MIN_TILES_BF16)
    return x.dtype == torch.float32 and ops.wants_channels_last(x) and _tiles(x, 4) >= WINOGRAD_MIN_TILES


WINOGRAD_F23_MAX_EXTRA = 256  # winograd_tile: F(2x2)'s extra multiplies per weight element that its lighter weight pays


def winograd_tile(u: Unit, x: Tensor) -> int:
    """The output tile side m of a Winograd unit (`winograd_pays`): 2 for bf16; for fp32 F(4x4, 3x3) (m 4) unless
    F(2x2, 3x3) (m 2; CPUs with AVX-512) pays. Per element of the conv's weight, F(2x2) multiplies 16 times per 2x2
    tile and F(4x4) 36 times per 4x4 tile, but F(4x4)'s transformed weight is 36 floats to F(2x2)'s 16, streamed
    from memory on every call: F(2x2) where its extra multiplies, 16 * tiles(2) - 36 * tiles(4), stay within
    WINOGRAD_F23_MAX_EXTRA (about what the 80 bytes cost at a 2-core Zen 5's ratio of multiply rate to memory
    bandwidth: ~200 GFLOP/s to ~11-15 GB/s, layer 4's 16.8 MB F(2x2) weight took 1.5 ms a call at batch 1).
    Measured there per layer inside resnet50's forward: layer 3 at batch 1 (16 tiles of 4x4, 49 of 2x2: 208)
    1.19-1.27x faster by F(2x2); layer 2 at batch 1 (1372) 0.79-0.83x, layer 1
    0.72-0.79x; every layer at batch 8 0.72-0.97x. Whole models at batch 1 with layer 3 by F(2x2), per-round medians
    of six runs in two processes: resnet101 1.005-1.06x, resnet50 0.997-1.014x; at batch 2 (layer 3: 416) resnet101
    0.98-1.03x, hence the bound (benchmarks/cpu_winograd_f23_ab.py;
    benchmarks/results/2026-12-05-cpu-bench-settled/)."""
    if x.dtype != torch.float32:
        return 2
    extra = 16 * _tiles(x, 2) - 36 * _tiles(x, 4)
    return 2 if extra <= WINOGRAD_F23_MAX_EXTRA and ops.winograd_f23_supported() else 4


def _fold_as_declared(conv: nn.Conv2d, weight: Tensor, x: Tensor) -> bool:
    """Whether a frozen fold's weight is what the conv's attributes say (shape, groups 1) and of x's dtype and
    channels: `winograd_pays` and `conv1x1_pays` read the attributes, and a `.data` swap before `freeze` (channel
    pruning, another kernel size) leaves a weight they do not describe, which oneDNN's convolution takes as
    torchvision's does and resnet_ext's own ops would not."""
    return (conv.groups == 1 and weight.dtype == x.dtype and x.dim() == 4
            and tuple(weight.shape) == (conv.out_channels, conv.in_channels, *conv.kernel_size)
            and weight.shape[1] == x.shape[1])


def _tiles(x: Tensor, m: int) -> int:
    """How many m x m output tiles a padded 3x3 stride-1 conv of x has: N * ceil(H/m) * ceil(W/m)."""
    return x.shape[0] * (-(-x.shape[2] // m)) * (-(-x.shape[3] // m))


# conv1x1_pays: the most multiply-adds (N * OH * OW * C * K) of a 1x1 conv that runs as `ops.conv1x1`, per dtype.
CONV1X1_MAX_MACS = {torch.bfloat16: 1 << 28, torch.float32: 1 << 26}


def conv1x1_pays(u: Unit, x: Tensor) -> bool:
    """Whether a frozen 1x1 unit runs as `ops.conv1x1` (one GEMM on resnet_ext's AVX-512 tiles with the bias,
    residual and ReLU in its stores, no call into ATen's oneDNN convolution) rather than oneDNN's convolution: a 1x1
    conv, no padding, equal strides, channels_last input, output channels a multiple of 64 (bf16: even input
    channels), on a CPU that runs the op and has no AMX tiles, up to CONV1X1_MAX_MACS multiply-adds.
    `resnet_ext.cpu_conv1x1(False)` turns it off. ATen's oneDNN call costs 30-45 us whatever the work, which the
    op saves; on larger problems oneDNN's kernels are the faster. Measured on a 2-core Zen 5 (no AMX), resnet50 at
    224x224, frozen copies with every 1x1 on oneDNN against the op's units, interleaved
    (benchmarks/cpu_conv1x1_ab.py; benchmarks/results/2026-12-05-cpu-conv1x1/):
    - bfloat16 (the op's sums are the same dot products in the same order as oneDNN's avx512_core_bf16 kernels:
      the logits came out bitwise equal): every 1x1 at batch 1 (51-103M multiply-adds) 1.06-1.07x faster
      (resnet101 1.08-1.09x), at batch 2 1.01-1.03x, at batch 4 this rule's 30 units 0.99-1.02x (every 1x1,
      51-411M, 1.00-1.02x); at batch 8 every 1x1 (103-822M) 0.95-1.00x.
    - float32: batch 1 1.02-1.03x (resnet101 1.04-1.05x); batch 2 (103M and up) 0.98-1.00x.
    - small inputs at batch 1: resnet50 at 32x32 1.32-1.34x (both dtypes), at 64x64 1.26-1.28x bf16, 1.20x fp32.
    Not on CPUs with AMX: oneDNN's bf16 convolutions run on the tiles there, and a plain AVX-512 1x1 kernel
    measured 0.44-0.55x oneDNN's fp32 speed per shape on a 2-core AMX Xeon (2026-12-04-cpu-onednn-graph/)."""
    conv = u.conv
    if (not cpu_conv1x1.on or AMX_BF16 or conv.kernel_size != (1, 1) or u.geometry[0] != (0, 0)
            or u.geometry[2] != (1, 1) or u.geometry[3] != 1 or conv.stride[0] != conv.stride[1]
            or conv.out_channels % 64 or x.dtype not in CONV1X1_MAX_MACS
            or (x.dtype == torch.bfloat16 and conv.in_channels % 2)
            or not x.is_contiguous(memory_format=torch.channels_last) or not ops.conv1x1_supported(x.dtype)):
        return False
    oh, ow = _out_size(conv, x)
    return x.shape[0] * oh * ow * conv.in_channels * conv.out_channels <= CONV1X1_MAX_MACS[x.dtype]


STEM_MAX_RUN = 32  # stem_pays: the most values in one kernel row of the input (KW * C)
STEM_DTYPES = (torch.bfloat16,)  # stem_pays: the dtypes measured faster than oneDNN in whole models


def stem_pays(u: Unit, x: Tensor) -> bool:
    """Whether a frozen unit runs as `ops.conv_stem` rather than oneDNN's convolution: a conv of a kernel larger
    than 1x1 on few input channels (a kernel row's KW * C values at most STEM_MAX_RUN: resnet's 7x7 stem on RGB),
    numeric padding, dilation 1, one group, output channels a multiple of 64, on a CPU that runs the op and has no
    AMX tiles, input in either layout. `resnet_ext.cpu_stem(False)` turns it off. Measured on a 2-core Zen 5: the
    stem's 7x7 conv alone, 2 threads, bf16: 1.27-1.33x oneDNN on prepacked weights at batch 1 and 8, either layout
    (0.61 against 0.81 ms at batch 1; 83% of the machine's dot-product peak); fp32 level (0.96-1.02x);
    benchmarks/results/2026-12-05-cpu-stem/."""
    conv = u.conv
    pad, _, dilation, groups = u.geometry
    return (cpu_stem.on and not AMX_BF16 and x.dtype in STEM_DTYPES and conv.kernel_size != (1, 1)
            and isinstance(pad, tuple) and dilation == (1, 1) and groups == 1 and conv.out_channels % 64 == 0
            and conv.kernel_size[1] * conv.in_channels <= STEM_MAX_RUN and ops.conv1x1_supported(x.dtype))


DIRECT_DTYPES = (torch.bfloat16,)  # direct_pays: the dtypes measured faster on the op than on oneDNN in whole models
DIRECT_STRIDES = (1, 2)  # direct_pays: the strides of the convs measured faster on the op than on oneDNN or conv1x1
DIRECT_1X1 = True  # direct_pays: strided 1x1 convs too (the op reads their pixels in place; conv1x1 copies them)
DIRECT_MIN_CHANNELS = 16  # direct_pays: the fewest input channels (each tap's depth; the stem's 3 are too few)
DIRECT_MAX_MACS = 1 << 27  # direct_pays: the most multiply-adds (N * OH * OW * C * K * KH * KW) of a conv on the op


def direct_pays(u: Unit, x: Tensor) -> bool:
    """Whether a frozen unit runs as `ops.conv_direct` rather than oneDNN's convolution or `ops.conv1x1` (asked after
    Winograd's and the stem's rules, before conv1x1's): a kxk conv, or a strided 1x1 conv without padding
    (DIRECT_1X1: the op reads its pixels in place where conv1x1 copies them; a 1x1 of stride 1 stays conv1x1's,
    whose tails add their residual in place), in a dtype of DIRECT_DTYPES with equal strides in DIRECT_STRIDES,
    numeric padding, dilation 1, one group, output channels a multiple of 64, an even number of input channels
    (DIRECT_MIN_CHANNELS or more), channels_last input, at most DIRECT_MAX_MACS multiply-adds, on a CPU that runs
    the op and has no AMX tiles. `resnet_ext.cpu_direct(False)` turns it off.
    Measured on a 2-core Zen 5 (benchmarks/results/2026-12-06-cpu-direct/): resnet50's 3x3 stride-2 convs in bf16 at
    batch 1, alone, 1.07-1.13x oneDNN's speed with warm caches and 1.09-1.20x cold; inside whole forwards 0.79-0.89x
    oneDNN's time per unit (ATen's call around oneDNN included; resnet101's 0.83-0.90x), the downsample after each
    0.89-0.96x, but layer 4's first stride-1 3x3, then the forward's first oneDNN call, 1.13-1.19x slower; resnet50's
    sum of units 1.6-2.3% less. The stride-2 1x1 downsamples then 0.84-0.96x conv1x1's time per unit, sums 0.2-1.4%
    less. At batch 2 (231M multiply-adds) the 3x3s ran 0.89-0.97x oneDNN's speed warm, at batch 8 0.92-0.99x: hence
    the bound. Stride 1 (the 3x3 convs Winograd leaves to oneDNN: too few tiles): layer 4's at 224x224 0.86-0.88x
    (the first, against its slowed oneDNN time) and 1.06-1.08x (the second) per unit, sums of units 0.4-1.3% less in
    eight runs; whole forwards on smaller inputs 0.80-0.96x (resnet18/34/50 at 32 to 112), where no oneDNN call is
    left. In fp32 the stride-2 convs ran 1.02-1.06x alone but layer 4's 1.07-1.13x slower inside the forward: oneDNN
    keeps them."""
    conv = u.conv
    pad, _, dilation, groups = u.geometry
    return (cpu_direct.on and not AMX_BF16 and x.dtype in DIRECT_DTYPES
            and (conv.kernel_size != (1, 1) or (DIRECT_1X1 and pad == (0, 0) and conv.stride[0] > 1))
            and conv.stride[0] == conv.stride[1] and conv.stride[0] in DIRECT_STRIDES and isinstance(pad, tuple)
            and dilation == (1, 1) and groups == 1 and conv.out_channels % 64 == 0
            and conv.in_channels >= DIRECT_MIN_CHANNELS and conv.in_channels % 2 == 0
            and x.is_contiguous(memory_format=torch.channels_last) and ops.conv1x1_supported(x.dtype)
            and x.shape[0] * math.prod(_out_size(conv, x)) * conv.in_channels * conv.out_channels
            * math.prod(conv.kernel_size) <= DIRECT_MAX_MACS)


CL_PIXELS = 150_000  # NCHW inputs with at least this many pixels (N*H*W) run channels_last inside


def internal_layout(x: Tensor) -> Tensor:
    """The layout the flat forward runs in: the input's, except that a large NCHW input runs channels_last (one
    copy of the input; nothing inside is visible to anyone, and the logits have no layout). Measured on resnet50
    in the default mode (2-core AVX-512 machine, fp32, 224x224 NCHW input and weights): batch 1 0.97x -> 0.76x
    torchvision, batch 2 1.19x -> 1.12x, batch 4 1.13x -> 1.34x, batch 8 0.97x -> 1.40x: oneDNN's channels_last
    convolutions are faster, but reorder NCHW weights on every call, which only a large batch amortizes. With the
    default mode's own units (2026-12-05) channels_last also pays at batch 1 and 2 at 224x224 (resnet50 at batch 1
    1.04-1.36x -> 1.11-1.48x torchvision), but it leaves torchvision's bits: then resnet101's and deeper models'
    logits at 1x3x224x224 (torchvision's FX test: random init, BN as identity) differ from the traced modules' by
    more than torch.testing's fp32 tolerances (up to 1.9e-4 relative), so a small NCHW input keeps torchvision's
    convolutions (benchmarks/results/2026-12-05-cpu-nchw-units/)."""
    if x.shape[0] * x.shape[2] * x.shape[3] >= CL_PIXELS and not ops.wants_channels_last(x):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def usable(x: Tensor) -> bool:
    """Eager CPU inference on a 4-d fp32/bf16 input that needs no gradient."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype in _DTYPES and x.numel() > 0
            and not (torch.is_grad_enabled() and x.requires_grad) and not torch.jit.is_tracing()
            and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


# --------------------------------------------------------------------------------------------------------------
# Running a plan
# --------------------------------------------------------------------------------------------------------------

def _gemm_fits(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether the conv's weight, as it is now, is what a GEMM unit assumes: x's dtype and channels, the conv's
    kernel size (a weight swapped through `.data` can change any of them; ATen's convolution then gives its error,
    where a GEMM would give another one, or reshape the wrong weight into a silently wrong answer)."""
    w = conv.weight
    return (w.dtype == x.dtype and w.dim() == 4 and w.shape[1] == x.shape[1]
            and tuple(w.shape[2:]) == conv.kernel_size)


def gemm_rows(x: Tensor, conv: nn.Conv2d) -> Tuple[Tensor, Tensor]:
    """A conv as a GEMM: (rows, weight) with conv(x) == rows @ weight.T as (N*OH*OW, K), in NHWC order, for a
    channels_last x. A 1x1 conv's rows are x's pixels (strided: every s-th); a larger kernel's the im2col of x,
    its columns in the order of the weight's own memory ((c, kh, kw) for a contiguous weight, (kh, kw, c) for a
    channels_last one), so that the weight is used as it lies, never copied or reordered."""
    sh, sw = conv.stride
    k, c, kh, kw = conv.weight.shape
    if (kh, kw) == (1, 1):
        xs = x if (sh, sw) == (1, 1) else x[:, :, ::sh, ::sw]
        return xs.permute(0, 2, 3, 1).reshape(-1, c), conv.weight.reshape(k, c)
    ph, pw = conv.padding
    patches = F.pad(x, (pw, pw, ph, ph)).unfold(2, kh, sh).unfold(3, kw, sw)  # (N, C, OH, OW, KH, KW), a view
    if conv.weight.is_contiguous():
        return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw), conv.weight.view(k, -1)
    w = conv.weight.permute(0, 2, 3, 1)  # channels_last: (K, KH, KW, C) in memory
    return patches.permute(0, 2, 3, 4, 5, 1).reshape(-1, kh * kw * c), w.reshape(k, -1)


def gemm_unit(u: Unit, x: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor]) -> Tensor:
    """relu?(bn(conv(x)) (+ residual)) as one GEMM on the conv's own weight (`gemm_rows`), BN as the per-channel
    scale and shift on the output: no weight copy at all, where oneDNN would reorder the whole weight on every
    call. Channels_last input and output."""
    if not _gemm_fits(u.conv, x) or u.conv.weight.shape[0] != scale.numel():
        # The weight changed since the plan chose a GEMM: the stock conv, torchvision's answer or its error.
        return ops.unfolded_unit(u.conv, u.bn, x, scale, shift, u.relu or residual is not None, residual)
    rows, wm = gemm_rows(x, u.conv)
    conv = u.conv
    n, k = x.shape[0], wm.shape[0]
    h, w = _out_size(conv, x)
    if rows.dtype == torch.float32:
        # oneDNN's matmul on the plain weight: 1.6-2.9x torch.mm (MKL's sgemm) on resnet50's 1x1 shapes here
        # (200-400 vs 120-185 GFLOP/s, 2-core AVX-512 AMD; benchmarks/results/2026-12-03-cpu-gemm-units/).
        out = torch.ops.mkldnn._linear_pointwise.default(rows, wm.contiguous(), None, "none", [], "")
    else:
        out = torch.mm(rows, wm.t())
    return _bn_epilogue(u, out.view(n, h, w, k).permute(0, 3, 1, 2), scale, shift, residual)


def _bn_epilogue(u: Unit, y: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor]) -> Tensor:
    """relu?(y * scale + shift (+ residual)) in place on a unit's channels_last conv output y: BN as ATen computes
    it, the add and the ReLU in one pass, or, for a residual of other strides (or where ATen's BN rounds twice:
    `ops.ROUNDS_AS_ATENS_BN`), as torchvision's ops do it."""
    relu = u.relu or residual is not None
    same = residual is None or (residual.shape == y.shape and residual.stride() == y.stride())
    if same and ops.ROUNDS_AS_ATENS_BN:
        return ops.scale_shift_act_(y, scale, shift, residual, relu)  # BN as ATen computes it, add, ReLU: one pass
    if y.dtype == torch.float32:
        y.mul_(scale.view(-1, 1, 1)).add_(shift.view(-1, 1, 1))
    else:  # in fp32, rounded once, as ATen's reduced-precision batch norm
        y.copy_(y.float().mul_(scale.view(-1, 1, 1)).add_(shift.view(-1, 1, 1)))
    if residual is not None:
        y.add_(residual)  # as torchvision's `out += identity`, its broadcasting and its error
    if relu:
        y.relu_()
    return y


WINOGRAD_DEFAULT_MIN_TILES = 196  # winograd_default_pays: 2x2 output tiles (N * ceil(H/2) * ceil(W/2)) at least,
WINOGRAD_DEFAULT_WEIGHT_PER_TILE = 256  # and at least one per this many of C * K (the transform's cost per call)


def winograd_default_pays(u: Unit, x: Tensor) -> bool:
    """Whether a default-mode unit runs as `winograd_unit`: an fp32 3x3 stride-1 conv with padding 1, no bias, one
    group, channels multiples of 16, on a channels_last input (not an (N, C, 1, 1) map, dense in both layouts), on
    a CPU with AVX-512 (`cpu_winograd` on), with at least WINOGRAD_DEFAULT_MIN_TILES output tiles of 2x2 and one
    per WINOGRAD_DEFAULT_WEIGHT_PER_TILE of C * K. F(2x2, 3x3) rounds as the direct convolution does (2-6e-7 of the
    largest output per layer), where F(4x4)'s 5-10x would leave torchvision's numbers; its weight is transformed on
    every call from the live weight (the default mode reads weights afresh), so it pays only where enough tiles
    share the transform. Per call on a 2-core Zen 5 against ATen's convolution (which reorders a channels_last
    weight on every call): layer 1 at batch 1 (784 tiles) 1.12 -> 0.69 ms, layer 2 (196) 1.10 -> 0.88, layer 3
    (49) 1.08 -> 1.77; at batch 8 layers 1-3 8.3-8.7 -> 4.7-7.5 ms, layer 4 (128) 9.7 -> 15.2. Since the transform
    got faster (layers 3 and 4's channels_last weights 1.06 -> 0.47 and 8.5 -> 4.0 ms; benchmarks/results/
    2026-12-05-cpu-default-winograd-weight/) layer 3 pays per conv from batch 1 (49 tiles: 1.21-1.37x, the
    weight hot in cache), but in whole models that bound measured level or slower (resnet50 and resnet101 at
    batch 1, channels_last: 0.96-0.99x, where the transformed weight goes to memory and back), so the bound stays;
    layer 4 (512 x 512: 1024 tiles under this bound, batch 64 at 224x224) paid per conv from 512 (1.03-1.16x)."""
    conv = u.conv
    return (cpu_winograd.on and x.dtype == torch.float32 and conv.kernel_size == (3, 3) and conv.bias is None
            and u.geometry == ((1, 1), (1, 1), (1, 1), 1) and conv.in_channels % 16 == 0
            and conv.out_channels % 16 == 0 and ops.wants_channels_last(x)
            and _tiles(x, 2) >= max(WINOGRAD_DEFAULT_MIN_TILES,
                                    conv.in_channels * conv.out_channels / WINOGRAD_DEFAULT_WEIGHT_PER_TILE)
            and ops.winograd_f23_supported())


def winograd_unit(u: Unit, x: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor]) -> Tensor:
    """relu?(bn(conv(x)) (+ residual)) with the conv by F(2x2, 3x3) Winograd on the conv's weight as it is now
    (transformed on this call), BN as the per-channel scale and shift on its output (`_bn_epilogue`)."""
    w = u.conv.weight
    if (not _gemm_fits(u.conv, x) or w.shape[0] != scale.numel() or w.shape[0] % 16 or x.shape[1] % 16
            or w.device.type != "cpu" or not ops.wants_channels_last(x) or u.conv.bias is not None):
        # The weight changed since the plan chose this (its shape, dtype, device, or its layout and with it the
        # maps' between layers): the stock conv, torchvision's answer or its error.
        return ops.unfolded_unit(u.conv, u.bn, x, scale, shift, u.relu or residual is not None, residual)
    y = ops.winograd3x3(x, ops.winograd_weight(w, 2), x.new_zeros(w.shape[0]), None, False)
    return _bn_epilogue(u, y, scale, shift, residual)


NCHW_UNIT_WEIGHT_RATIO = 4  # nchw_unit_pays: weight elements per element of the unit's input, at least
NCHW_UNIT_GEMM_PIXELS = 16  # nchw_unit_pays: below this many output pixels a GEMM unit that pays goes first


def nchw_unit_pays(u: Unit, x: Tensor) -> bool:
    """Whether a default-mode unit on a channels_last fp32 input runs its conv in NCHW (`nchw_unit`): a conv larger
    than 1x1 whose weight is NCHW (as constructed) and has at least NCHW_UNIT_WEIGHT_RATIO times the elements of the
    input. ATen's convolution of a channels_last input copies such a weight to channels_last on every call before
    oneDNN reorders it; in NCHW it reorders the input and output instead, which is cheaper where the weight is the
    larger. Per 3x3 conv on a 2-core Zen 5 (fp32, batch 1-4, resnet's 3x3 shapes and small maps; ATen's time
    channels_last / NCHW with the two copies of the maps; benchmarks/cpu_nchw_units_shapes.py): 0.87-3.8x where
    this picks NCHW (24 of 26 shapes 1.02x or more), 0.68-0.99x at weight/input ratios of 2.9 and under. Against a
    GEMM unit (`gemm3x3_pays`) on such a weight: the GEMM took 0.81-1.41x the NCHW unit's time from 16 output
    pixels up (14 shapes), 0.22-1.09x below (6), hence NCHW_UNIT_GEMM_PIXELS
    (benchmarks/results/2026-12-05-cpu-nchw-units/)."""
    w = u.conv.weight
    if not (x.dtype == torch.float32 and w.dim() == 4 and w.shape[2:] != (1, 1) and w.is_contiguous()
            and not w.is_contiguous(memory_format=torch.channels_last) and ops.wants_channels_last(x)
            and w.numel() >= NCHW_UNIT_WEIGHT_RATIO * x.numel()):
        return False
    h, w_out = _out_size(u.conv, x) if isinstance(u.conv.padding, tuple) else x.shape[2:]
    return x.shape[0] * h * w_out >= NCHW_UNIT_GEMM_PIXELS or not gemm_pays(u, x)


def nchw_unit(u: Unit, x: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor]) -> Tensor:
    """relu?(bn(conv(x)) (+ residual)) as `ops.unfolded_unit` on NCHW copies of x (and the residual), the output
    copied back to channels_last for the next unit: the conv as torchvision runs it on an NCHW input."""
    residual = None if residual is None else residual.contiguous()
    y = ops.unfolded_unit(u.conv, u.bn, x.contiguous(), scale, shift, u.relu or residual is not None, residual)
    return y.contiguous(memory_format=torch.channels_last)


# A unit's `wb`: (folded weight, bias), run by oneDNN (prepacked for the input size: frozen mode); or (GEMM,
# WINO_UNFOLDED, NCHW_UNFOLDED or UNFOLDED, scale, shift) (default mode); or (WINO, transformed weight, bias),
# (CONV1X1, packed weight, bias), (STEM, packed weight, bias) or (DIRECT, packed weight, bias): resnet_ext's own ops
# (frozen mode).
GEMM, UNFOLDED, WINO, CONV1X1, STEM = "gemm", "unfolded", "winograd", "conv1x1", "conv_stem"
DIRECT = "conv_direct"
WINO_UNFOLDED = "winograd_unfolded"  # default mode: F(2x2) on the live weight, then BN unfolded (winograd_unit)
NCHW_UNFOLDED = "unfolded_nchw"  # default mode: a unit of a channels_last forward run in NCHW (nchw_unit)
WINO_F23 = "winograd_f23"  # path_counts: of the frozen mode's fp32 Winograd units, those on F(2x2) (winograd_tile)
HEAD = "pool_linear"  # path_counts: frozen forwards whose average pool and fc ran as one op (head_fits)
PREFETCHED = "prefetch"  # path_counts: of the frozen mode's units on resnet_ext's own ops, those that fetched the next
# unit's weight (prefetch_pays)
OWN = (WINO, CONV1X1, STEM, DIRECT)
REPLAYS = "cpu_replays"  # path_counts: frozen CPU forwards whose plan ran as its recorded program (`replay`)


def _is_own(wb) -> bool:
    """Whether a unit's `wb` is for one of resnet_ext's own ops (by identity: a oneDNN unit's is a tensor)."""
    k = wb[0]
    return k is WINO or k is CONV1X1 or k is STEM or k is DIRECT


def _prefetch_of(wb):
    """The next unit's weight that an own-op unit fetches as it computes (`with_prefetch`), or None."""
    return wb[3] if len(wb) > 3 else None


def _own(u: Unit, x: Tensor, wb, residual: Optional[Tensor], relu: bool) -> Tensor:
    """A unit on resnet_ext's own op (`OWN`); STEM and DIRECT take no residual. wb[3], where there is one: the next
    unit's weight, which the op fetches into cache as it computes (`with_prefetch`)."""
    if wb[0] is WINO:
        return ops.winograd3x3(x, wb[1], wb[2], residual, relu, _prefetch_of(wb))
    if wb[0] is STEM:
        return ops.conv_stem(x, wb[1], wb[2], relu, u.conv.kernel_size, u.conv.stride, u.conv.padding)
    if wb[0] is DIRECT:
        return ops.conv_direct(x, wb[1], wb[2], relu, u.conv.kernel_size, u.conv.stride, u.conv.padding,
                               _prefetch_of(wb))
    return ops.conv1x1(x, wb[1], wb[2], residual, relu, u.conv.stride[0], _prefetch_of(wb))


def _conv(u: Unit, x: Tensor, wb) -> Tensor:
    """relu?(bn(conv(x)))."""
    if _is_own(wb):
        return _own(u, x, wb, None, u.relu)
    if wb[0] is UNFOLDED:
        return ops.unfolded_unit(u.conv, u.bn, ops.nchw_1x1(x), wb[1], wb[2], u.relu)
    if wb[0] is GEMM:
        return gemm_unit(u, x, wb[1], wb[2], None)
    if wb[0] is WINO_UNFOLDED:
        return winograd_unit(u, x, wb[1], wb[2], None)
    if wb[0] is NCHW_UNFOLDED:
        return nchw_unit(u, x, wb[1], wb[2], None)
    return torch.ops.mkldnn._convolution_pointwise.default(x, wb[0], wb[1], *u.args, "relu" if u.relu else "none",
                                                           [], "")


CONV1X1_IN_PLACE = True  # _tail: a 1x1 tail on the op writes its sum over the residual (ops.conv1x1_add_)


def _tail(u: Unit, y: Tensor, residual: Tensor, wb) -> Tensor:
    """relu(bn(conv(y)) + residual); a oneDNN one is written into `residual` (which only this forward holds)."""
    if _is_own(wb):
        # The ops take a channels_last residual of the output's shape (a no-op where it is one: the model's own
        # are); an identity that torchvision's `out += identity` broadcasts is added after the op, as there (and
        # after STEM and DIRECT, which take none).
        if (wb[0] is STEM or wb[0] is DIRECT
                or residual.shape != ops.conv_out_shape(y, wb[2].shape[0], u.conv.kernel_size, u.conv)):
            return ops.add_act_(_own(u, y, wb, None, False), residual, True)
        residual = residual.contiguous(memory_format=torch.channels_last)
        if wb[0] is CONV1X1 and CONV1X1_IN_PLACE:  # the sum written over the residual
            return ops.conv1x1_add_(residual, y, wb[1], wb[2], True, u.conv.stride[0], _prefetch_of(wb))
        return _own(u, y, wb, residual, True)
    if wb[0] is UNFOLDED:
        return ops.unfolded_unit(u.conv, u.bn, ops.nchw_1x1(y), wb[1], wb[2], True, residual)
    if wb[0] is GEMM:
        return gemm_unit(u, y, wb[1], wb[2], residual)
    if wb[0] is WINO_UNFOLDED:
        return winograd_unit(u, y, wb[1], wb[2], residual)
    if wb[0] is NCHW_UNFOLDED:
        return nchw_unit(u, y, wb[1], wb[2], residual)
    if not ops.onednn_add_fuses(y, wb[0], residual, u.conv):
        out = torch.ops.mkldnn._convolution_pointwise.default(y, wb[0], wb[1], *u.args, "none", [], "")
        return ops.add_act_(out, residual, True)
    return torch.ops.mkldnn._convolution_pointwise_.binary(residual, y, wb[0], wb[1], *u.args, "add", 1.0, "relu",
                                                            [], "")


def run(model: nn.Module, s: structure.Structure, x: Tensor, wb, fc_dtype: Optional[torch.dtype] = None,
        onednn_fc: bool = False, layout: Optional[torch.memory_format] = None) -> Tensor:
    """The forward, with `wb(unit, x)` giving each unit's `wb` (see `_conv`), in the order of `s.units`; then the
    average pool and the fc in `fc_dtype` if given (`logits`, with `onednn_fc`) (freeze(dtype=torch.bfloat16): the
    average pool and fc in the model's fp32, the bf16 features cast before the pool or pooled with fp32 sums by
    `ops.pool_linear`; pooled in bf16, they would be rounded to bf16, 2.6-2.9e-3 of the largest); `layout`:
    `head_layout`'s."""
    return logits(model, features(model, s, x, wb), onednn_fc, fc_dtype, layout)


def features(model: nn.Module, s: structure.Structure, x: Tensor, wb) -> Tensor:
    """The last block's output: `run` without the head."""
    x = ops.max_pool(model.maxpool, _conv(s.stem, x, wb(s.stem, x)))
    for head, ds, tail in s.blocks:
        y = x
        for u in head:
            y = _conv(u, y, wb(u, y))
        residual = x if ds is None else _conv(ds, x, wb(ds, x))
        x = _tail(tail, y, residual, wb(tail, y))
        del y, residual  # free the block's buffers now, for the next block's allocations (hot in cache)
    return x


HEAD_MAX_BATCH = 8  # head_fits: pool_linear's GEMV for batches up to this, oneDNN's GEMM beyond


def head_layout(model: nn.Module, s: structure.Structure, x: Tensor) -> Optional[torch.memory_format]:
    """None where the head is plain (`structure.head_plain`); else the layout of torchvision's last block output for
    input x, in which the head's modules (their hooks) then see the features: channels_last where x's or a main-path
    conv weight's strides suggest it (ATen's convolution then gives channels_last, and each later layer keeps it),
    else NCHW."""
    if structure.head_plain(model):
        return None
    cl = any(suggest_memory_format(t) == torch.channels_last for t in [x] + [u.conv.weight for u in s.main])
    return torch.channels_last if cl else torch.contiguous_format


def logits(model: nn.Module, features: Tensor, onednn_fc: bool = False,
           fc_dtype: Optional[torch.dtype] = None, layout: Optional[torch.memory_format] = None) -> Tensor:
    """The logits from the last block's output (cast to `fc_dtype` if given): the model's own average pool and fc,
    read live. `onednn_fc` (the frozen mode; the default mode keeps nn.Linear's bits): the pool and an fp32 fc as one
    op, `ops.pool_linear`, where `head_fits`; else the fc as oneDNN's linear on its weight as it lies, where
    nn.Linear runs MKL's addmm: resnet50's 2048 -> 1000 fc alone 1.7-1.9x faster (batch 1: 82-85 against 144-150 us;
    batch 8: 340-347 against 598-610), the whole frozen resnet50 0.98-1.03x per run, level within the noise (2-core
    Zen 5; benchmarks/cpu_fc_ab.py, benchmarks/results/2026-12-05-cpu-bench-settled/). A `layout` (`head_layout`:
    hooks on the head) runs the modules on the features in that layout, as torchvision's forward calls them."""
    if onednn_fc and torch.is_grad_enabled() and _fc_wants_grad(model.fc):
        onednn_fc = False  # a computed fast weight, no Parameter (those leave the frozen path): the module's autograd
    if layout is None and onednn_fc and head_fits(model, features, fc_dtype):
        units.count(HEAD)
        return ops.pool_linear(features, model.fc.weight, model.fc.bias)
    if fc_dtype is not None:
        features = features.to(fc_dtype)
    if layout is not None:  # a 1x1 map as BN hands it on (NCHW strides in either layout)
        return structure.head(model, ops.nchw_1x1(features.contiguous(memory_format=layout)))
    pooled = torch.flatten(model.avgpool(features), 1)
    fc = model.fc  # after the pool: its hook may replace the fc
    if onednn_fc and type(fc) is nn.Linear and _onednn_fc_fits(fc.weight, fc.bias, pooled):
        return torch.ops.mkldnn._linear_pointwise.default(pooled, fc.weight, fc.bias, "none", [], "")
    return fc(pooled)


def _fc_wants_grad(fc: nn.Module) -> bool:
    return any(isinstance(t, Tensor) and t.requires_grad
               for t in (getattr(fc, "weight", None), getattr(fc, "bias", None)))


def head_fits(model: nn.Module, features: Tensor, fc_dtype: Optional[torch.dtype]) -> bool:
    """Whether the frozen mode's head runs as `ops.pool_linear`: an average pool to 1x1 and an fp32 fc that take the
    features (fp32, or bf16 cast to fp32 for the fc) as the modules would, at most HEAD_MAX_BATCH rows, on a CPU
    with AVX-512 (F, BW, VL: `ops.pool_linear_supported`; elsewhere the op is ATen's ops). At batch 1 the forward's
    code run once per forward is fetched from memory (the weights streamed through the L3 evict it): ATen's cast,
    pool and oneDNN's linear took 0.56 ms there, the op 0.22-0.28 ms (resnet50, 2-core Zen 5;
    benchmarks/cpu_forward_segments.py, benchmarks/results/2026-12-05-cpu-head/; batch 8 level). Anything else (an
    fc weight of another dtype, shape or device, another pool size, a larger batch) keeps the modules' path, with
    their errors; a weight swapped for one of the same dtype and shape is read as it lies now."""
    pool, fc = model.avgpool, model.fc
    if (features.shape[0] > HEAD_MAX_BATCH or type(pool) is not nn.AdaptiveAvgPool2d
            or pool.output_size not in (1, (1, 1)) or type(fc) is not nn.Linear
            or (fc_dtype or features.dtype) != torch.float32 or features.dim() != 4
            or not ops.pool_linear_supported()):
        return False
    w, b = fc.weight, fc.bias
    return (w.dtype == torch.float32 and w.dim() == 2 and w.shape[1] == features.shape[1] and w.device.type == "cpu"
            and w.layout == torch.strided and (b is None or (b.dtype == torch.float32 and b.shape == (w.shape[0],)
                                                             and b.device.type == "cpu")))


def _onednn_fc_fits(w: Tensor, b: Optional[Tensor], x: Tensor) -> bool:
    """Whether oneDNN's linear takes this fc as nn.Linear would (anything else, a weight swapped through `.data`
    included, runs the module: its answer or its error)."""
    return (x.dtype == torch.float32 and x.dim() == 2 and x.is_contiguous() and w.dtype == torch.float32
            and w.dim() == 2 and w.device.type == "cpu" and w.is_contiguous() and w.shape[1] == x.shape[1]
            and (b is None or (b.dtype == torch.float32 and b.device.type == "cpu" and b.dim() == 1
                               and b.shape[0] == w.shape[0] and b.is_contiguous())))


PACKED_LIMIT = 8  # distinct prepacked weights kept per frozen unit (each a whole copy of the weight)
PACKED_KEYS = 32  # input shapes and geometries remembered per frozen unit (those of one format share its copy)


def _packed_format(w: Tensor) -> Optional[Tensor]:
    """A prepacked weight's oneDNN memory descriptor (serialized), or None where this torch cannot tell it."""
    md = getattr(torch.ops.mkldnn, "_get_mkldnn_serialized_md", None)
    return None if md is None else md(w)


def packed_weight(fold, conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A frozen fold's weight prepacked for oneDNN for this input shape and the conv's geometry (packed once, kept
    in the fold's `packed`). The batch size is part of the key: oneDNN may pick another weight format for it
    (resnet50's 256 -> 1024 1x1 conv at 14x14: Acdb64a at batch 1, Acdb48a at batch 2 on a 2-core AMX Xeon), and a
    weight packed for another batch size is reordered again on every call (7 of resnet50's convs, 6.8 ms each:
    batch 2 after batch 1 ran 1.8x slower). Shapes whose packed formats are the same share one copy."""
    key = (tuple(x.shape), conv.padding, conv.stride, conv.dilation, conv.groups)
    w = fold.packed.get(key)
    if w is None:
        if fold.weight.shape[1] * conv.groups != x.shape[1]:  # a weight of other in-channels (a `.data` swap):
            F.conv2d(x, fold.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)  # ATen's error
        with torch.inference_mode(False), torch.no_grad(), reused_memory(False):  # kept with the model
            w = torch.ops.mkldnn._reorder_convolution_weight(fold.weight, *ops.onednn_args(conv), list(x.shape))
        fmt = _packed_format(w)
        if fmt is not None:
            for kept in {id(v): v for v in fold.packed.values()}.values():
                if torch.equal(_packed_format(kept), fmt):  # the same weight in the same format: the same bytes
                    w = kept
                    break
        distinct = {id(v) for v in fold.packed.values()}
        if len(fold.packed) >= PACKED_KEYS or (id(w) not in distinct and len(distinct) >= PACKED_LIMIT):
            fold.packed.clear()
        fold.packed[key] = w
    return w


PREFETCH_PIXELS = 224 * 224  # prefetch_pays: forward inputs of at most this many pixels (N * H * W)


def prefetch_pays(x: Tensor) -> bool:
    """Whether the frozen plan's Winograd, 1x1 and direct units fetch the next unit's weight into cache as they
    compute (`with_prefetch`): forward inputs of at most PREFETCH_PIXELS pixels, where each weight is read for few
    pixels and the forward waits on memory at the start of every unit. `resnet_ext.cpu_prefetch(False)` turns it off.
    Measured on a 2-core Zen 5 (frozen plan with and without, interleaved, per-run medians of three runs;
    benchmarks/cpu_prefetch_ab.py, benchmarks/results/2026-12-05-cpu-prefetch/): batch 1 at 224x224 resnet50
    1.01-1.04x (fp32 and bf16, both layouts), resnet101 1.02-1.05x; batches 2 and 4 0.97-1.00x, batch 8 level
    (the compute per weight byte grows with the batch), hence the bound. Bitwise the same logits."""
    # (on a CPU without AVX-512 the ops' GEMMs are not resnet_ext's tiles, which issue the prefetches)
    return (cpu_prefetch.on and x.shape[0] * x.shape[2] * x.shape[3] <= PREFETCH_PIXELS
            and ops.conv1x1_supported(torch.float32))


PREFETCH_FC = True  # with_prefetch: the last unit fetches the fc's weight (a switch for benchmarks/cpu_prefetch_ab.py)


def with_prefetch(program: list, fc: nn.Module) -> list:
    """The plan (unit wbs in the order they run) with each Winograd, 1x1 and direct unit's wb given the next unit's
    weight (the op's `prefetch`: resnet_ext's packed one or the oneDNN-packed tensor, as its `ops.prefetch_range`) to
    fetch into cache as it computes; the last unit, the fc's weight (`fc_prefetch`)."""
    out, tail = [], fc_prefetch(fc) if PREFETCH_FC else None
    for wb, nxt in zip(program, program[1:] + [None]):
        if wb[0] is WINO or wb[0] is CONV1X1 or wb[0] is DIRECT:
            if nxt is not None:
                wb = (*wb[:3], ops.prefetch_range(nxt[1] if _is_own(nxt) else nxt[0]))  # the plan holds nxt's weight
            elif tail is not None:
                wb = (*wb[:3], tail)
        out.append(wb)
    return out


def fc_prefetch(fc: nn.Module) -> Optional[tuple]:
    """(address, bytes) of the fc's weight as it lies now, for the last unit to fetch into cache (at batch 1 the head
    took 0.37 ms inside a resnet50 fp32 forward without it, 0.24-0.29 ms with it; benchmarks/results/
    2026-12-05-cpu-head/); None for an fc that is not an nn.Linear (a custom head's `weight` may be computed, by a
    parametrization or a property: torchvision never reads it) or without a strided CPU weight. A contiguous
    weight's own bytes (not its storage's: it may be a view into a larger buffer). Only the address is kept, not
    the tensor: after a swap of the fc's weight the plan prefetches a stale range, which never faults and changes no
    value (the next freeze(), or a new input size, refreshes it)."""
    w = fc._parameters.get("weight") if type(fc) is nn.Linear else None
    if not isinstance(w, Tensor) or w.device.type != "cpu" or w.layout != torch.strided:
        return None
    if w.is_contiguous():
        return w.data_ptr(), w.numel() * w.element_size()
    return ops.prefetch_range(w)


# The frozen forward's inputs: finite and below 2^64 in magnitude, else it runs unfolded (torchvision's answer).
# oneDNN's fused ReLU and the plan's own ops turn NaN into 0, and Winograd's transforms overflow before a direct
# convolution does: a finite input near the float range gave finite logits far from torchvision's (2x3x64x64 at
# 1e37: -0.02 where torchvision's were 8e36). 2^64 leaves ~1e19 for the network's gain on the way to overflow.
FROZEN_INPUT_LOG2 = 64


def frozen_input_ok(x: Tensor) -> bool:
    """Whether a floating-point CPU `x` may run the frozen folds (above): one pass over the exponent bits in
    resnet_ext's own code (`_C.all_bounded`; ATen's isfinite and abs for what it does not take). It runs before
    every frozen CPU forward, where ATen's sum, the check before, ran on cold code (the forward's weights stream
    through the L3): the frozen resnet50's entry at 1x3x224x224 took 0.04-0.07 ms less in bf16 and 0.10-0.13 ms less
    in fp32 with this pass (benchmarks/cpu_forward_segments.py, benchmarks/results/2026-12-05-cpu-head/); since
    2026-12-06 the pass vectorizes (84 -> 6-11 us alone on that input in cache, benchmarks/cpu_entry_alone.py;
    88-100 -> 24-29 us inside the forward, benchmarks/cpu_entry_split.py; benchmarks/results/2026-12-06-cpu-entry/)."""
    return _C.all_bounded(x, FROZEN_INPUT_LOG2)


NOT_FINITE = object()  # forward_frozen: not frozen_input_ok(x), before anything ran


def forward_frozen(model: nn.Module, x: Tensor, folds: Dict[nn.Module, object]) -> Optional[Tensor]:
    """The frozen model's forward on prepacked weights; None where the flat forward does not apply, NOT_FINITE (before
    anything ran) where x is not all finite."""
    if not usable(x):
        return None
    s = structure.of(model, x.dtype, x.shape[1])
    if s is None:
        return None
    st = _state.of(model)
    cached = st.programs  # (folds, structure, {input key: (unit wbs, own-op counts, oneDNN graph or None)})
    if cached is None or cached[0] is not folds or cached[1] is not s:
        # The folds must belong to these modules (a conv or weight replaced since `freeze` has none).
        own = all(u.conv in folds and folds[u.conv].belongs_to(u.conv, u.bn) for u in s.units)
        cached = st.programs = (folds, s, {} if own else None)
    dtype = folds[s.stem.conv].weight.dtype if cached[2] is not None else None
    fc_dtype = None
    if dtype != x.dtype:
        if dtype != torch.bfloat16 or x.dtype != torch.float32:
            return None
        # freeze(dtype=torch.bfloat16): convolutions in bf16, pool and fc in fp32. The cast checks the input as it
        # reads it (one pass over the cold input, not a check's and then ATen's cast): resnet50's frozen bf16
        # entry at batch 1, channels_last, 0.423-0.487 -> 0.368-0.393 ms (benchmarks/cpu_forward_segments.py).
        given = x
        fc_dtype, x = x.dtype, _C.bounded_bfloat16(x, FROZEN_INPUT_LOG2)
        if x is None:
            return NOT_FINITE
        if type(given) is not Tensor:  # a plain subclass (units.overrides): the class a torch function returns
            cls = type(Tensor.to(Tensor.__getitem__(given, slice(0, 0)), torch.bfloat16))  # (not its own methods)
            if cls is not Tensor:
                x = x.as_subclass(cls)
    elif not frozen_input_ok(x):
        return NOT_FINITE
    programs = cached[2]
    planned = False
    pool = model.maxpool  # read live by the per-unit plan; a graph holds its parameters
    key = (tuple(x.shape), x.dtype, x.stride(), cpu_winograd.on, cpu_conv1x1.on, cpu_stem.on, cpu_direct.on,
           cpu_onednn_graph.on, cpu_prefetch.on, CONV1X1_IN_PLACE,  # the latter read by _tail, frozen by a replay
           structure.pool_key(pool))
    layout = head_layout(model, s, x)
    x = internal_layout(x)
    # (unit wbs, {kind: units on resnet_ext's own op}, the oneDNN graph or None, [its replay: None until recorded,
    # then the program or False])
    entry = programs.get(key)
    if entry is None and cpu_onednn_graph.on and onednn_graph.pays(x):
        with reused_memory(False):  # the graph's compiled partitions and packed weights are kept with the model
            graph = onednn_graph.build(model, s, folds, x, fc_dtype)
        if graph is not None:
            if len(programs) >= CACHE_LIMIT:
                programs.clear()
            entry = programs[key] = (None, {}, graph, [False])
    if entry is not None and entry[2] is not None:
        out = logits(model, entry[2](x), True, layout=layout)
        units.count("onednn_graph")
    elif entry is None:  # first call of this input: pack each unit's weight for its input size
        if len(programs) >= CACHE_LIMIT:
            programs.clear()
        program = []

        def wb(u, y):
            fold = folds[u.conv]
            own = _fold_as_declared(u.conv, fold.weight, y)  # else only oneDNN's convolution
            if own and winograd_pays(u, y):  # the ops' bias in fp32 (a bf16 fold's is converted here once)
                program.append((WINO, fold.winograd_weight(winograd_tile(u, y)), fold.bias.float()))
            elif own and stem_pays(u, y):
                program.append((STEM, fold.stem_weight(), fold.bias.float()))
            elif own and direct_pays(u, y):  # before conv1x1: the strided 1x1s
                program.append((DIRECT, fold.direct_weight(), fold.bias.float()))
            elif own and conv1x1_pays(u, y):
                program.append((CONV1X1, fold.conv1x1_weight(), fold.bias.float()))
            else:
                program.append((packed_weight(fold, u.conv, y), fold.bias))
            return program[-1]

        out = run(model, s, x, wb, fc_dtype, True, layout)
        if prefetch_pays(x):  # from the next call on: this one ran without
            program = with_prefetch(program, model.fc)
            planned = True
        own = {kind: sum(w[0] is kind for w in program) for kind in OWN}
        own[PREFETCHED] = sum(len(w) > 3 for w in program if _is_own(w))
        own[WINO_F23] = sum(w[0] is WINO and w[1].dim() == 3 and w[1].shape[0] == 16 for w in program)  # fp32 F(2x2)
        entry = programs[key] = (program, own, None, [None])
    elif entry[3][0] and cpu_replay.on and replay.replayable(x):
        out = logits(model, entry[3][0].run(x), True, fc_dtype, layout)
        units.count(REPLAYS)
    else:
        it = iter(entry[0])

        def plan(t):
            return features(model, s, t, lambda u, y: next(it))

        if entry[3][0] is None and cpu_replay.on and replay.replayable(x):  # the plan is settled: record it
            weights = (t for wb in entry[0] for t in wb if isinstance(t, Tensor))
            program, feats = replay.record(plan, x, weights)
            entry[3][0] = program if program is not None else False
        else:
            feats = plan(x)
        out = logits(model, feats, True, fc_dtype, layout)
    if entry[2] is None:
        own = entry[1]  # units on resnet_ext's own ops, per kind, and how many of the Winograd ones ran F(2x2) in fp32
        units.count("onednn_prepacked", len(s.units) - sum(own[kind] for kind in OWN))
        for kind, n in own.items():
            if n and not (planned and kind is PREFETCHED):
                units.count(kind, n)
    units.count("flat_forwards")
    return out


def forward_default(model: nn.Module, x: Tensor) -> Optional[Tensor]:
    """The default mode's forward, every BN read afresh and applied as torchvision applies it, unfolded: each unit
    is the stock conv then BN (its fp32 scale and shift, all units' in one batch), residual add and ReLU in one
    pass (`ops.unfolded_unit`), or, for a channels_last 1x1 or 3x3 conv whose weight outweighs its output, one GEMM
    on the unreordered weight (`gemm_pays`), or an fp32 3x3 stride-1 conv by F(2x2) Winograd
    (`winograd_default_pays`), or, in a channels_last forward, a conv whose NCHW weight outweighs its input on NCHW
    copies of its maps (`nchw_unit_pays`); None where the flat forward does not apply (a gradient may be needed,
    ...)."""
    if not usable(x) or torch.is_grad_enabled():
        return None
    s = structure.of(model, x.dtype, x.shape[1])
    if s is None:
        return None
    st = _state.of(model)
    plans = st.flat_plans  # per input, each unit's kind (from shapes and weight layouts; see state.ExtState)
    key = (tuple(x.shape), x.dtype, x.stride(), cpu_winograd.on, x.dtype != torch.float32 or fp32_matmul_exact())
    with reused_memory(False):  # the memo lives with the model, not in the forwards' reused memory
        affine = ops.bn_affine_pairs([(u.conv, u.bn) for u in s.units], conv_bias=False, input_dtype=x.dtype,
                                     memo=st.memo)
    if affine is None:  # a BN whose dtypes ATen's batch norm refuses: its error comes from the module path
        return None
    layout = head_layout(model, s, x)
    x = internal_layout(x)
    scales, shifts = affine
    affine = {id(u): (sc, sh) for u, sc, sh in zip(s.units, scales, shifts)}
    plan = plans.get(key)
    if plan is None or plan[0] is not s:  # learn on this call how each unit runs, from its input's shape
        if len(plans) >= CACHE_LIMIT:
            plans.clear()
        kinds = {}

        def wb(u, y):
            kinds[id(u)] = (WINO_UNFOLDED if winograd_default_pays(u, y) else NCHW_UNFOLDED if nchw_unit_pays(u, y)
                            else GEMM if gemm_pays(u, y) else UNFOLDED)
            return (kinds[id(u)], *affine[id(u)])

        out = run(model, s, x, wb, layout=layout)
        plan = plans[key] = (s, kinds)
    else:
        kinds = plan[1]
        out = run(model, s, x, lambda u, y: (kinds[id(u)], *affine[id(u)]), layout=layout)
    units.count("flat_forwards")
    for kind in (GEMM, WINO_UNFOLDED, NCHW_UNFOLDED, UNFOLDED):
        n = sum(k == kind for k in plan[1].values())
        if n:
            units.count(kind, n)
    return out
