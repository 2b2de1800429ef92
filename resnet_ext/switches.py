"""The run-time switches, all in one place: process-wide on/off settings set through the Python API only (the
package reads no environment variable at run time, and the C++ side reads none). Each is called the same way:
`switch()` tells the setting, `switch(True)` / `switch(False)` sets it; both return the setting in force before the
call. The hot paths read `switch.on`.

    nhwc_max_pool  the models' CUDA inference max pool as resnet_ext's NHWC kernel (experimental build, opt-in)
    on_cuda        a stock model's CUDA eval forward as the recorded sequence of fused units (opt-in)
    fused_stem     in that sequence, the stem's conv+BN+ReLU and max pool as one op (experimental build, opt-in)
    unfolded_bn    in that sequence, BN as fp32 scale/shift on the unfolded weight's sum (experimental, opt-in)
    cpu_winograd   the CPU modes' 3x3 convs by Winograd where it pays (default on)
    cpu_conv1x1    the frozen CPU mode's 1x1 convs as resnet_ext's own GEMM where it pays (default on)
    cpu_stem       the frozen CPU mode's stem conv as resnet_ext's own op where it pays (default on)
    cpu_direct     the frozen CPU mode's strided convs as resnet_ext's own direct conv where it pays (default on)
    cpu_prefetch   the frozen CPU mode's own ops fetch the next unit's weight into cache where it pays (default on)
    cpu_replay     the frozen CPU mode's settled plans replayed from C++, without the Python (default on)
    cpu_onednn_graph  the frozen CPU mode's convolutions as one oneDNN Graph where it pays (opt-in)
    bn_optin       the training BN's opt-in CUDA kernels (experimental build, opt-in)
    fused_train    train-mode Bottlenecks as the fused conv+statistics decomposition (opt-in; CUDA: experimental)
    autotune       the conv kernels' per-shape autotuner (off)               } kept in C++, where the
    prefer_cudnn   cuDNN's fused ops on the layers where they win (on)      } dispatcher reads them
"""
from __future__ import annotations

from typing import Optional

from ._C_loader import _C

# Whether this build has csrc/experimental/ (RESNET_EXT_EXPERIMENTAL=1 at build time): the kernels no GPU run has
# verified yet and the test hooks. The default wheel has neither.
EXPERIMENTAL: bool = bool(_C.build_info().get("experimental", False))


def require_experimental(what: str) -> None:
    """Raises where this build lacks csrc/experimental/ (what `what` needs)."""
    if not EXPERIMENTAL:
        raise RuntimeError(f"{what} is unverified code, built only with RESNET_EXT_EXPERIMENTAL=1 "
                           "(e.g. `RESNET_EXT_EXPERIMENTAL=1 pip install .`); this build has none")


def switch(name: str, doc: str, default: bool = False, experimental: bool = False, native: Optional[tuple] = None):
    """A switch function `name(enabled=None) -> bool` whose setting the hot paths read as `name.on`.
    `experimental`: turning it on needs an experimental build (off is always allowed). `native`: the names of the
    getter and setter of a setting kept in C++, where the kernels read it (a build without them keeps it off)."""
    get, put = (getattr(_C, n, None) for n in native) if native else (None, None)

    def fn(enabled: Optional[bool] = None) -> bool:
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(f"{name}: enabled must be True or False, got {enabled!r}")
        if enabled and experimental:
            require_experimental(f"{name}(True)")
        previous = bool(get()) if get is not None else fn.on
        if enabled is not None:
            if put is not None:
                put(enabled)
            fn.on = enabled
        return previous

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    fn.on = default
    return fn


nhwc_max_pool = switch("nhwc_max_pool", experimental=True, doc="""Whether the models' max pool runs resnet_ext's NHWC
kernel on CUDA (`max_pool_nhwc`: no indices, one pass) for inference; returns the setting in force before the
call. Off by default and only in an experimental build: unverified on a GPU until `benchmarks/gpu_check.sh --only
maxpool` passes.""")

on_cuda = switch("on_cuda", doc="""Whether a stock model's CUDA eval forward runs as the recorded sequence of
`conv_bn_act` calls (engine/cuda.py) rather than through the module tree (`units.unit` per unit): the same ops on
the same folds, with less host time per forward. Returns the setting in force before the call. Off by default: not
yet run on a GPU (`benchmarks/gpu_check.sh --only flatcuda` checks it against the module path and times both).""")

fused_stem = switch("fused_stem", experimental=True, doc="""Whether the recorded sequence of fused units
(`on_cuda`, and the frozen mode's CUDA graphs) runs ResNet's stem -- conv 7x7/2 + BN + ReLU + max pool 3x3/2 -- as
one `stem_pool` call on a 16-bit input (its fused kernel on CUDA for channels_last inputs; #24 item 1) instead of
`conv_bn_act` and the max pool. Returns the setting in force before the call. Off by default and only in an
experimental build: unverified on a GPU until `benchmarks/gpu_check.sh --only stempool` passes.""")

unfolded_bn = switch("unfolded_bn", experimental=True, doc="""Whether the recorded sequence of fused units
(`on_cuda`, and the frozen mode's CUDA graphs) applies each BN on a 16-bit input as torchvision computes it: an
fp32 per-channel scale and shift on the convolution's fp32 sum over the unfolded weight (`conv_bn_act`'s `scale`
and `shift`; on CUDA one cuDNN graph per layer, conv + scale + shift (+ residual) (+ ReLU)), instead of folding
the scale into the 16-bit weight (#24 item 2: rounding weight * scale to 16 bits is what puts resnet101 fp16 over
the accuracy bound; and the default mode then folds no weight per forward, only the scales and shifts of all
units in one batched pass). Returns the setting in force before the call. Off by default and only in an
experimental build: unverified on a GPU until `benchmarks/gpu_check.sh --only unfolded` passes.""")

cpu_winograd = switch("cpu_winograd", default=True, doc="""Whether the CPU modes may run 3x3 convs by Winograd
where it pays (the frozen mode: `engine.cpu.winograd_pays`; the default mode, fp32 F(2x2) on the live weight:
`engine.cpu.winograd_default_pays`; default on); off, oneDNN runs every conv. Returns the setting in force before
the call; the next forward of each input size follows it.""")

cpu_conv1x1 = switch("cpu_conv1x1", default=True, doc="""Whether the frozen CPU mode may run 1x1 convs as
resnet_ext's own GEMM with a fused epilogue where it pays (`engine.cpu.conv1x1_pays`; default on); off, oneDNN runs
them. Returns the setting in force before the call; the next forward of each input size follows it.""")

cpu_stem = switch("cpu_stem", default=True, doc="""Whether the frozen CPU mode may run the stem's conv (few input
channels: the 7x7 on RGB) as resnet_ext's own op, `ops.conv_stem`, where it pays (`engine.cpu.stem_pays`; default
on); off, oneDNN runs it. Returns the setting in force before the call; the next forward of each input size follows
it.""")

cpu_direct = switch("cpu_direct", default=True, doc="""Whether the frozen CPU mode may run strided convs (resnet's
3x3 stride-2 convs and 1x1 downsamples) as resnet_ext's own direct convolution, `ops.conv_direct`, where it pays
(`engine.cpu.direct_pays`: bf16 at batch 1; default on); off, oneDNN runs the 3x3s and `ops.conv1x1` the 1x1s.
Returns the setting in force before the call; the next forward of each input size follows it.""")

cpu_prefetch = switch("cpu_prefetch", default=True, doc="""Whether the frozen CPU mode's Winograd, 1x1 and direct
units on resnet_ext's own ops fetch the next unit's weight into cache as they compute, where it pays
(`engine.cpu.prefetch_pays`: batch 1 at 224x224 and smaller inputs; default on); off, each unit's weight is read
from memory when that unit starts. It changes no value. Returns the setting in force before the call; the next
forward of each input size follows it.""")

cpu_replay = switch("cpu_replay", default=True, doc="""Whether the frozen CPU mode records, on the second forward of
each input shape (its plan settled by the first), the operator calls of its convolutions and max pool, and replays
them from C++ on later forwards (`engine.replay`; default on): the same calls on the same weights, the same bits,
without the Python that chose them (at batch 1 0.954-0.982x the time, at batch 8 0.93-1.04x: resnet50 and
resnet101, bf16 and fp32, 2-core Zen 5). The head (pool and fc) and every check a forward makes stay in Python; a forward that records no verified
program runs the plan as before. `path_counts()` counts `cpu_replays`. Returns the setting in force before the
call.""")

cpu_onednn_graph = switch("cpu_onednn_graph", doc="""Whether the frozen CPU mode runs its convolutions as one
oneDNN Graph per input shape where that was faster than its per-unit plan (`engine.onednn_graph`: bf16 always,
fp32 below 100,000 input pixels, i.e. batch 1 at 224x224; on a 2-core AMX Xeon resnet50 bf16 1.10-1.42x at batch
8 to 1, fp32 1.13-1.14x at batch 1; on a 2-core Zen 5 without AMX, since the plan runs small 1x1 convs on
resnet_ext's own GEMM, the graph is the slower: bf16 0.87-0.96x the plan, benchmarks/results/
2026-12-05-cpu-bench-conv1x1/). Off by default: PyTorch makes the graph through TorchScript, which keeps every
traced graph, with its weights and oneDNN's compiled partitions, until the process ends (pytorch/pytorch#35600), so
each frozen model and input shape run this way holds its memory for good -- fine for a process that freezes once
and serves, not for one that makes and drops models. Off, or where the graph cannot be made, the per-unit plan runs
(`path_counts()`: `onednn_graph` or `onednn_prepacked`/`winograd`/`conv1x1`/`conv_stem`/`conv_direct`). Returns the
setting in force before the call; the next forward of each input shape follows it.""")

bn_optin = switch("bn_optin", experimental=True, native=("bn_optin", "set_bn_optin"), doc="""Whether the training
BN runs its opt-in CUDA kernels (csrc/experimental/bn_act_optin.cuh: a parallel final pass of the BN sums, not yet
verified on a GPU; `bench --bn-optin`). Returns the setting in force before the call. Only an experimental build
has them: turning them on elsewhere raises.""")

fused_train = switch("fused_train", doc="""Whether a train-mode stock Bottleneck runs as the fused decomposition of
`engine/fused_train.py` (each conv writes its output's BN sums and applies the previous BN + ReLU as it loads its
input; backward fuses dgrad with the ReLU mask and BN's weight gradients): on CUDA through cuDNN graphs, which only
an experimental build has (elsewhere the block keeps the stock path), on the CPU through the ops' ATen compositions
(for tests: slower than the stock path). Returns the setting in force before the call. Off by default: not yet run
on a GPU (`benchmarks/gpu_check.sh --only fusedtrain`); `explain_train(x, block)` says what a block gets.""")

autotune = switch("autotune", native=("autotune_enabled", "set_autotune"), doc="""Whether the per-shape autotuner of
the fused conv kernels runs (`bench --autotune`): each new problem is then timed once against every candidate and
the stock path, candidates whose launch fails or whose output differs from the stock result are rejected, and the
winner is cached per device, arch and full problem. Off by default. Returns the setting in force before the
call.""")

prefer_cudnn = switch("prefer_cudnn", default=True, native=("prefer_cudnn", "set_prefer_cudnn"), doc="""Whether
cuDNN's fused conv+bias+ReLU(+add) takes the layers it runs faster than resnet_ext's kernels (default on; today
that is every ReLU layer on Hopper, see explain()); off, resnet_ext's own kernels run wherever they apply. Returns
the setting in force before the call.""")
