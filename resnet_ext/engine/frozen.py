"""The explicit frozen mode, resnet_ext's counterpart of torch.compile's freezing or torch.jit.freeze.

`freeze(model)` puts a resnet_ext ResNet in eval mode and folds every conv + BatchNorm once (on the CPU the folded
weights are also prepacked for oneDNN on the first forward of each input size). The folds are recomputed by
resnet_ext itself after `.to()`/`.cuda()`/`.half()`, `load_state_dict`, `train()` and unpickling, and on the next
frozen forward after any conv or BN tensor was written (an optimizer step in eval mode, `copy_`, `fill_`, `nn.init`,
BN statistics in train mode, `p.data = q`, `swap_tensors`): `_C.FoldSources`, checked on every frozen forward.
Not seen until the next `freeze(model)`: writes that move no version counter of these tensors (through `.data`,
numpy, or another tensor on the same storage). A model with tensors in shared memory, which other processes may
write, runs unfolded (`_refold`). Module swaps, hooks and tensors replaced by other objects are
always seen: such a unit runs the default (always-correct) path. The default, unfrozen mode needs none of this:
it folds on every forward.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from .. import ops
from .._C_loader import _C
from . import cpu
from . import state as _state
from . import units


class FrozenUnit:
    """The frozen fold of one (conv, bn): the weight and bias, per input size the oneDNN-prepacked weight
    (`packed`, filled by `cpu.packed_weight`), and the weight as the frozen plan's own ops take it (`winograd`,
    `gemm`, `stem`, `direct`: made on first use)."""

    __slots__ = ("bn", "param", "bias_param", "eps", "bn_tensors", "sources", "weight", "bias", "packed", "winograd",
                 "gemm", "stem", "direct")

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, weight: Tensor, bias: Tensor):
        self.bn, self.param, self.bias_param, self.weight, self.bias = bn, conv.weight, conv.bias, weight, bias
        self.eps = bn.eps
        self.bn_tensors = units.bn_tensors(bn)
        self.sources = units.bn_sources(bn, conv)  # for the module path: a hook's write during the forward
        self.packed: Dict[tuple, Tensor] = {}
        self.winograd: Dict[int, Tensor] = {}  # per output tile side m
        self.gemm: Optional[Tensor] = None
        self.stem: Optional[Tensor] = None
        self.direct: Optional[Tensor] = None

    def winograd_weight(self, m: int) -> Tensor:
        """The folded weight transformed for `ops.winograd3x3` with output tiles of m x m (made once per m)."""
        u = self.winograd.get(m)
        if u is None:  # kept with the model: not from the forwards' reused memory
            with torch.inference_mode(False), torch.no_grad(), cpu.reused_memory(False):
                u = self.winograd[m] = ops.winograd_weight(self.weight, m)
        return u

    def conv1x1_weight(self) -> Tensor:
        """The folded 1x1 weight packed for `ops.conv1x1` (made once)."""
        if self.gemm is None:
            with torch.inference_mode(False), torch.no_grad(), cpu.reused_memory(False):
                self.gemm = ops.conv1x1_weight(self.weight)
        return self.gemm

    def stem_weight(self) -> Tensor:
        """The folded weight packed for `ops.conv_stem` (made once)."""
        if self.stem is None:
            with torch.inference_mode(False), torch.no_grad(), cpu.reused_memory(False):
                self.stem = ops.conv_stem_weight(self.weight)
        return self.stem

    def direct_weight(self) -> Tensor:
        """The folded weight packed for `ops.conv_direct` (made once)."""
        if self.direct is None:
            with torch.inference_mode(False), torch.no_grad(), cpu.reused_memory(False):
                self.direct = ops.conv_direct_weight(self.weight)
        return self.direct

    def belongs_to(self, conv: nn.Module, bn: nn.Module) -> bool:
        """Whether this fold is of these modules, tensor objects (a replaced weight, bias or running statistic has
        none; writes into them are `_C.FoldSources`') and the BN's eps."""
        return (bn is self.bn and conv.weight is self.param and conv.bias is self.bias_param
                and bn.eps == self.eps and all(a is b for a, b in zip(units.bn_tensors(bn), self.bn_tensors)))

    def run(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor, relu: bool,
            residual: Optional[Tensor]) -> Optional[Tensor]:
        """The unit's output from the frozen fold (the module path), or None where the fold no longer belongs to
        these modules or they were written since it was made: a hook or an inserted module earlier in this forward
        may have written into them, and torchvision's modules, called after that, read the new values (the next
        forward folds again)."""
        if (not self.belongs_to(conv, bn) or not units.unchanged(self.sources, bn, conv)
                or x.dtype != self.weight.dtype or x.dtype != conv.weight.dtype):
            return None  # another fold, or an input the model's own conv refuses (a bf16 one in a bf16-frozen model)
        if not (ops.wants_channels_last(x) or ops.wants_channels_last(conv.weight)):
            # The folds are channels_last, so would be this output; torchvision's is NCHW here, and a hook or an
            # inserted module may see it (`.view`, dropout's mask): the stock conv and BN, unfolded.
            return None
        if ops.onednn_ok(x, self.weight, self.bias, residual):
            w = cpu.packed_weight(self, conv, x)
            units.count("onednn_prepacked")
            return ops.onednn_conv(x, w, self.bias, conv, relu, residual)
        return ops.conv_bn_act(x, self.weight, self.bias, residual, conv.stride, conv.padding, conv.dilation,
                                  relu, conv.groups)


def freeze(model: nn.Module, *, dtype: Optional[torch.dtype] = None, cuda_graphs: bool = False) -> nn.Module:
    """Puts `model` (a resnet_ext ResNet) in eval mode and freezes it in place: BN folded once, weights prepacked
    for oneDNN on the CPU; folded again on the next forward after a write into a folded tensor. Call it again after
    a write that moves no version counter (through `.data`, numpy or another tensor on the same storage). Returns
    `model`.

    `dtype=torch.bfloat16` (CPU, fp32 model): the frozen convolutions run in bf16 (folded in fp32, then rounded),
    for CPUs with native bf16 (AVX512-BF16, AMX); inputs and outputs stay fp32, the average pool and the fc layer
    run in fp32. A bf16 model (`model.to(torch.bfloat16)`) on a CPU where oneDNN has no bf16 (AVX2 only) runs the
    default mode's forward: ATen's own kernels, as torchvision's model does there. Where the flat forward does not
    apply (hooks, swapped modules, gradients) the model runs in fp32 as unfrozen; so do traced, exported and
    compiled programs of it (the frozen state is eager only: they record torchvision's graph, or fold in their own,
    in the model's dtype).

    `cuda_graphs=True` (CUDA; opt-in until verified on a GPU): each input signature's frozen forward is captured in
    a CUDA graph on its first call and replayed after (`engine.cuda`)."""
    _check_model("freeze", model)
    if not isinstance(cuda_graphs, bool):
        raise TypeError(f"freeze: cuda_graphs must be True or False, got {cuda_graphs!r}")
    if dtype is not None and dtype != model.conv1.weight.dtype:
        _check_compute_dtype(model, dtype)
    else:
        dtype = None
    model.eval()
    st = _state.of(model)
    with st.lock:
        st.invalidate()
        st.frozen = dtype if dtype is not None else True
        st.cuda_graphs = cuda_graphs
        _refold(model, st)
    return model


def _check_compute_dtype(model: nn.Module, dtype) -> None:
    w = model.conv1.weight
    if dtype != torch.bfloat16:
        raise ValueError(f"freeze: dtype must be None (the model's own) or torch.bfloat16, got {dtype}")
    if w.device.type != "cpu" or w.dtype != torch.float32:
        raise ValueError(f"freeze: dtype=torch.bfloat16 is for fp32 models on the CPU; this one is {w.dtype} on "
                         f"{w.device.type} (convert it instead: model.to(torch.bfloat16))")
    if not ops.onednn_takes(torch.bfloat16):
        raise ValueError("freeze: dtype=torch.bfloat16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this one "
                         "has none, and emulated bf16 is slower than fp32")


def compute_dtype(model: nn.Module) -> Optional[torch.dtype]:
    """The dtype `freeze(model, dtype=...)` asked for, or None (the model's own)."""
    st = _state.peek(model)
    return st.frozen if st is not None and isinstance(st.frozen, torch.dtype) else None


def _check_model(fn: str, model) -> None:
    if not _state.is_model(model):
        kind = type(model)
        hint = (" (resnet_ext.from_torchvision(model) converts a torchvision one)"
                if kind.__module__.startswith("torchvision.") else "")
        raise TypeError(f"{fn}: model must be a resnet_ext ResNet{hint}, got {kind.__module__}.{kind.__qualname__}")


def unfreeze(model: nn.Module) -> nn.Module:
    """Back to the default mode (every forward reads the live parameters). Returns `model`."""
    _check_model("unfreeze", model)
    st = _state.peek(model)
    if st is not None:
        st.frozen = st.cuda_graphs = False
        st.invalidate()
    return model


def is_frozen(model: nn.Module) -> bool:
    """Whether `model` is frozen (`freeze`); False for any other module."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"is_frozen: model must be an nn.Module, got {type(model).__name__}")
    st = _state.peek(model)
    return st is not None and bool(st.frozen)


def invalidate(model: nn.Module) -> None:
    """Drops the folds (and the programs on their packed weights); a frozen model refolds on its next eval
    forward."""
    st = _state.peek(model)
    if st is not None:
        st.invalidate()


def folds_of(model: nn.Module) -> Optional[Dict[nn.Module, FrozenUnit]]:
    """The frozen folds of `model`, or None if it is not frozen. Folded again now where they were dropped or a
    tensor they were made from was written since (`_C.FoldSources`); None where a unit's tensors do not fit each
    other (`_consistent`) or a fold is not finite (`_fold`): the forward then runs unfolded, meeting torchvision's
    answer or error."""
    st = _state.peek(model)
    if st is None or not st.frozen:
        return None
    # Read once: another thread's `.to()` or `freeze` may invalidate the state between two reads. Sources first:
    # `_refold` stores its folds after its sources, so folds read after sources are never older than them.
    sources = st.sources
    folds = st.folds
    if folds is not None:
        if sources is not None and sources.holds():
            return folds
        st.invalidate()  # the programs and graphs made on the folds go with them
    elif sources is not None and sources.holds() and (st.shared or not _consistent(units.model_pairs(model))):
        return None  # the last fold was refused on these same tensors: still shared, or still not fitting
    with st.lock:  # not over a concurrent freeze's folds (another compute dtype) or another forward's
        if st.folds is not None and st.sources is not None and st.sources.holds():
            return st.folds if st.frozen else None
        if not st.frozen:
            return None
        return _refold(model, st)


def _refold(model: nn.Module, st) -> Optional[Dict[nn.Module, FrozenUnit]]:
    """Records the sources, then folds (with `st.lock` held). Another process's writes into tensors in shared
    memory (a Hogwild worker's optimizer step) move no counter in this one: no fold of them could be trusted, so
    such a model runs unfolded, reading its tensors on every forward, until they are replaced."""
    st.folds = None  # first: no forward may pair the old folds with the new sources
    tensors = _source_tensors(model)
    sources = _C.FoldSources(tensors)  # before the fold: a write during it is seen on the next forward
    # num_batches_tracked is watched for its counter only: no fold reads its value.
    shared = any(t.device.type == "cpu" and t.layout == torch.strided and t.is_floating_point()
                 and t.untyped_storage().is_shared() for t in tensors)
    if shared:
        warnings.warn("resnet_ext frozen model: its tensors are in shared memory (share_memory(), or sent to "
                      "another process), where another process's writes cannot be seen: it runs unfolded, as "
                      "unfrozen (copy.deepcopy the model to freeze a private copy)", stacklevel=3)
    folds = None if shared else _fold(model)
    st.sources, st.shared = sources, shared
    st.folds = folds  # last: folds seen imply these sources
    return folds


def _source_tensors(model: nn.Module) -> list:
    """The tensors the folds read, as `_C.FoldSources` watches them: each conv's weight and bias, each BN's weight,
    bias and running statistics, and its num_batches_tracked, whose counter a train-mode BN moves where it writes
    the statistics without; of every unit, folded or not (a BN in train mode now has its fold made when it is back
    in eval mode and its count moved). Which objects they are is `FrozenUnit.belongs_to`'s. From the first call on,
    fused optimizer steps and DDP's buffer broadcast move the counters of what they write (`_around_step`,
    `_watch_ddp_buffer_sync`)."""
    _watch_unversioned_writes()
    return [t for conv, bn in units.model_pairs(model, foldable_only=False)
            for t in (getattr(conv, "weight", None), getattr(conv, "bias", None),
                      *(units.bn_tensors(bn) if isinstance(bn, nn.Module) else ()),
                      getattr(bn, "num_batches_tracked", None))
            if isinstance(t, Tensor)]


_watching = False


def _watch_unversioned_writes() -> None:
    """Writes into folded tensors that keep their version counters: fused optimizer steps, DDP's buffer broadcast."""
    global _watching
    if not _watching:  # before and after: a forward in another step hook may come before or after ours
        register_optimizer_step_pre_hook(_around_step)
        register_optimizer_step_post_hook(_around_step)
        _watch_ddp_buffer_sync()
        _watching = True


def _watch_ddp_buffer_sync() -> None:
    """DistributedDataParallel's forward first broadcasts rank 0's buffers (broadcast_buffers=True) into every
    rank's BN running statistics, keeping their version counters (`_unsafe_preserve_version_counter`): a frozen
    model evaluated through DDP ran the folds of its own rank's statistics, not the broadcast ones torchvision's
    BNs read (helper-55). Its buffer sync is wrapped to move the counters of what a frozen model folded. (A
    private method: where a torch version has none, nothing is wrapped, and tests/test_bn_act.py fails.)"""
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP
    except ImportError:  # a torch without torch.distributed
        return
    sync = getattr(DDP, "_sync_buffers", None)
    if sync is None or getattr(sync, "_resnet_ext_moves_versions", False):
        return

    def _sync_buffers(self, *args, **kwargs):
        out = sync(self, *args, **kwargs)
        for b in getattr(self, "modules_buffers", ()):
            if isinstance(b, Tensor) and _C.FoldSources.folded(b):
                torch.autograd.graph.increment_version(b)
        return out

    _sync_buffers._resnet_ext_moves_versions = True
    DDP._sync_buffers = _sync_buffers


def _around_step(optimizer, *args) -> None:
    """Before and after an optimizer step: PyTorch's fused kernels (`fused=True`) write the parameters that have a
    gradient without moving their version counters, which every other implementation moves; move them for the
    tensors a frozen model folded."""
    for group in optimizer.param_groups:
        if group.get("fused"):
            for p in group["params"]:
                if isinstance(p, Tensor) and p.grad is not None and _C.FoldSources.folded(p):
                    torch.autograd.graph.increment_version(p)


def _consistent(pairs) -> bool:
    """Whether every unit's tensors fit each other as torchvision's forward needs them: 4-D conv weights of one
    dtype and device, and a conv bias and BN tensors of the weight's output channels, in its dtype (BN's also in
    fp32 under 16-bit convs, which ATen's batch norm takes). Else a fold could compute what torchvision refuses (a
    float64 BN weight promotes the fold) or fail elsewhere than it does: unfolded, the forward meets torchvision's
    answer or error. (The modules' attributes may be stale: channel pruning writes `.data` only.)"""
    if not pairs:  # no BN in eval mode: nothing to fold
        return True
    w0 = pairs[0][0].weight
    if not isinstance(w0, Tensor):
        return False
    bn_dtypes = (w0.dtype, torch.float32) if w0.dtype in (torch.bfloat16, torch.float16) else (w0.dtype,)
    for conv, bn in pairs:
        w = conv.weight
        if (not isinstance(w, Tensor) or w.layout != torch.strided or w.dim() != 4 or w.dtype != w0.dtype
                or w.device != w0.device):
            return False
        n = w.shape[0]
        if conv.bias is not None and not _vector(conv.bias, n, (w0.dtype,), w0.device):
            return False
        ts = [t for t in units.bn_tensors(bn) if t is not None]
        if len({getattr(t, "dtype", None) for t in ts}) > 1 or not all(_vector(t, n, bn_dtypes, w0.device) for t in ts):
            return False
    return True


def _vector(t, n: int, dtypes, device) -> bool:
    return (isinstance(t, Tensor) and t.layout == torch.strided and t.dtype in dtypes and t.device == device
            and tuple(t.shape) == (n,))


def _fold(model: nn.Module) -> Optional[Dict[nn.Module, FrozenUnit]]:
    """The folds, or None where a unit's tensors do not fit each other (`_consistent`) or a fold is not finite (a
    NaN weight of a diverged run, a negative variance): oneDNN's fused ReLU, and the frozen plan's own ops, turn
    NaN into 0, so the folds gave finite logits where torchvision's are NaN; unfolded, the forward propagates it.
    None on the meta device too (no values to check; the unfolded forward gives torchvision's shapes there)."""
    pairs = units.model_pairs(model)
    if not _consistent(pairs) or any(conv.weight.is_meta for conv, _ in pairs):
        return None
    dtype = compute_dtype(model)
    # Never inference tensors (folds made under inference_mode), which a later forward with gradients cannot use.
    with torch.inference_mode(False), torch.no_grad():
        folded = ops.fold_pairs(pairs, channels_last=True)
        if dtype is not None:
            folded = [(w.to(dtype), b.to(dtype)) for w, b in folded]
    if not all(_C.all_bounded(w) and _C.all_bounded(b) for w, b in folded):
        return None
    return {conv: FrozenUnit(conv, bn, w, b) for (conv, bn), (w, b) in zip(pairs, folded)}
