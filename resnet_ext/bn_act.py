"""Training-mode BatchNorm(+residual add)+ReLU as one fused op (one pass to normalise, add and clamp; one fused
pass back), with running statistics kept exactly as nn.BatchNorm2d keeps them, and a cross-process variant that
gathers the per-process moments like nn.SyncBatchNorm (also on CPU tensors with gloo).

    y = bn_act(x, bn, residual=None, relu=True)   # bn: a train-mode BatchNorm2d; updates its running stats
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ._C_loader import _C  # noqa: F401  (registers the ops)
from .ops import bn_dtypes_ok, bool_arg
from .ops import memory_format_of as _fmt

ops = torch.ops.resnet_ext


# ---------------------------------------------------------------------------------------------------------------
# Fake kernels
# ---------------------------------------------------------------------------------------------------------------



def _stat_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.register_fake("resnet_ext::bn_act_train")
def _(x, residual, weight, bias, running_mean, eps, relu):
    torch._check(x.dim() in (2, 4), lambda: "bn_act_train: x must be 4-D or 2-D")
    c = x.shape[1]
    stat = x.new_empty((c,), dtype=_stat_dtype(x))
    return torch.empty_like(x, memory_format=_fmt(x)), stat, torch.empty_like(stat), torch.empty_like(stat)


@torch.library.register_fake("resnet_ext::bn_act_train_backward")
def _(grad_y, y, x, weight, mean, invstd, relu, residual_grad):
    dres = torch.empty_like(x, memory_format=_fmt(x)) if residual_grad else x.new_empty((0,))
    return torch.empty_like(x, memory_format=_fmt(x)), torch.empty_like(weight), torch.empty_like(weight), dres


@torch.library.register_fake("resnet_ext::bn_stats")
def _(x, shift):
    return x.new_empty((2, x.shape[1]), dtype=_stat_dtype(x))


@torch.library.register_fake("resnet_ext::bn_act_apply")
def _(x, residual, weight, bias, mean, invstd, relu):
    return torch.empty_like(x, memory_format=_fmt(x))


@torch.library.register_fake("resnet_ext::bn_act_backward_reduce")
def _(grad_y, y, x, mean, invstd, relu):
    return x.new_empty((2, x.shape[1]), dtype=_stat_dtype(x))


@torch.library.register_fake("resnet_ext::bn_act_backward_apply")
def _(grad_y, y, x, weight, mean, invstd, sums, count, relu, residual_grad):
    dres = torch.empty_like(x, memory_format=_fmt(x)) if residual_grad else x.new_empty((0,))
    return torch.empty_like(x, memory_format=_fmt(x)), dres


# ---------------------------------------------------------------------------------------------------------------
# Autograd of the one-process op: the backward is itself an op, so the whole step stays traceable
# ---------------------------------------------------------------------------------------------------------------

def mask_source(y: Tensor, x: Tensor, relu: bool) -> Tensor:
    """What backward keeps in the output's place: the output itself with a ReLU (its mask; the next conv saves it
    anyway, so no extra activation is kept), else x, which the backward kernels then never read as y. Without a
    ReLU the output is not saved, so a caller may change it in place (`out += identity`, an in-place ReLU after
    the BN), as after nn.BatchNorm2d, which saves only its input."""
    return y if relu else x


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, running_mean, eps, relu = inputs
    y, mean, invstd, _ = output
    ctx.relu, ctx.eps = relu, eps
    ctx.has_residual = residual is not None
    ctx.save_for_backward(x, weight, mask_source(y, x, relu), mean, invstd)


def _backward_differentiable(grad_y: Tensor, y: Tensor, x: Tensor, weight: Tensor, eps: float, relu: bool):
    """(dx, dweight, dbias, dresidual) for a backward that is itself differentiated (`create_graph=True`: gradient
    penalties), through ATen's batch norm, whose double backward ATen implements: the normalisation recomputed
    from x under autograd, its gradient taken with create_graph (the batch statistics depend on x there)."""
    g = grad_y * (y > 0) if relu else grad_y  # the ReLU mask is piecewise constant
    with torch.enable_grad():
        xs = x if x.requires_grad else x.detach().requires_grad_()
        ws = weight if weight.requires_grad else weight.detach().requires_grad_()
        normed = F.batch_norm(xs, None, None, ws.to(xs.dtype), None, training=True, eps=eps)
        dx, dw = torch.autograd.grad(normed, (xs, ws), g, create_graph=True)
    db = g.sum([0, 2, 3] if x.dim() == 4 else [0]).to(weight.dtype)
    return dx, dw, db, g


def _grads(grad_y, y, x, weight, mean, invstd, eps, relu, residual_grad, fmt):
    """(dx, dweight, dbias, dresidual) of the one-process op; `fmt`: x's memory format."""
    if torch.is_grad_enabled():  # create_graph=True: the op's backward kernels have no derivative
        return _backward_differentiable(grad_y, y, x, weight, eps, relu)
    try:
        grad_y = grad_y.contiguous(memory_format=fmt)
    except RuntimeError:  # a batched grad_y (is_grads_batched's vmap) cannot be asked for channels_last: ATen's BN
        return _backward_differentiable(grad_y, y, x, weight, eps, relu)
    return ops.bn_act_train_backward(grad_y, y, x, weight, mean, invstd, relu, residual_grad)


def _backward(ctx, grad_y, _gm, _gi, _gv):
    x, weight, y, mean, invstd = ctx.saved_tensors
    need = ctx.needs_input_grad
    res_grad = ctx.has_residual and need[1]
    dx, dw, db, dres = _grads(grad_y, y, x, weight, mean, invstd, ctx.eps, ctx.relu, res_grad, _fmt(x))
    return (dx, dres if res_grad else None, dw if need[2] else None, db if need[3] else None,
            None, None, None)


torch.library.register_autograd("resnet_ext::bn_act_train", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# The models' call: running statistics inside forward; cross-process statistics (SyncBN) from the same kernels
# ---------------------------------------------------------------------------------------------------------------

def all_reduce(t: Tensor, group) -> Tensor:
    dist.all_reduce(t, group=group)
    return t


def all_reduce_sums(sums: Tensor, count: Tensor, group) -> Tuple[Tensor, Tensor]:
    """Per-channel BN sums [2, C] and their count per channel (a one-element float64 tensor) summed across `group`
    in one float64 all-reduce: the count stays exact (to 2^53) and on the device, so no layer waits for the host.
    Returns (sums in their dtype, the count as a 0-d float64 tensor). (`fused_train`'s sums, taken by its conv.)"""
    packed = all_reduce(torch.cat([sums.reshape(-1).double(), count.reshape(1).double()]), group)
    return packed[:-1].reshape(sums.shape).to(sums.dtype), packed[-1]


def gathered_moments(x: Tensor, group) -> Tuple[Tensor, Tensor, Tensor]:
    """The batch's per-channel mean and biased variance over every process of `group` (float64 0-d count too), in one
    collective and without a host sync. Each process takes its own mean and M2 in two passes, the sums of d and d^2
    about 0, then about that first mean (no shift chosen before seeing the data keeps the fp32 sums free of
    cancellation: about a stale running mean a channel of mean/std 100 lost 8e-4 of its output, about a process's
    first value an outlier there lost 1.5e-3); then the processes' (count, mean, M2) are gathered and combined in
    float64 (Chan et al.'s pairwise formula), as nn.SyncBatchNorm gathers per-process moments. Returns (mean, var)
    in the statistics' dtype and the count."""
    c, stat = x.shape[1], _stat_dtype(x)
    if x.numel() == 0:  # an empty rank adds nothing (the ops refuse an empty x)
        local = x.new_zeros((2 * c + 1,), dtype=torch.float64)
    else:
        n = x.numel() // c
        first = ops.bn_stats(x, None)[0] / n
        s1, s2 = ops.bn_stats(x, first).double()
        # A non-finite first mean stays (inf - inf in the second pass is NaN): torch's mean is that inf.
        mean = torch.where(first.isfinite(), first.double() + s1 / n, first.double())
        count = torch.full((1,), n, dtype=torch.float64, device=x.device)
        local = torch.cat([count, mean, (s2 - s1 * s1 / n).clamp_min(0)])
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local, group=group)
    g = torch.stack(parts)
    n, means, m2 = g[:, :1], g[:, 1:1 + c], g[:, 1 + c:]
    total = n.sum()
    mean = (n * means).sum(0) / total
    var = (m2 + n * (means - mean) ** 2).sum(0) / total
    return mean.to(stat), var.to(stat), total


class _BnActTrain(torch.autograd.Function):
    """The fused op as the models call it, one-process or cross-process (`group`), with the running statistics
    updated inside forward, before autograd packs what backward saves: a caller that stops right after the
    packing (a non-reentrant checkpoint's recompute) has seen the update, as with ATen's batch norm."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, running_mean, running_var, momentum, eps, relu, group):
        if group is None:
            y, mean, invstd, var_unbiased = ops.bn_act_train(x, residual, weight, bias, running_mean, eps, relu)
            n = None
        else:  # the same kernels in pieces, with the per-channel moments gathered in between
            mean, var, n = gathered_moments(x, group)
            invstd = torch.rsqrt(var + eps)
            y = (torch.empty_like(x) if x.numel() == 0
                 else ops.bn_act_apply(x, residual, weight, bias, mean, invstd, relu))
            var_unbiased = var * (n / (n - 1))
        if running_mean is not None:  # running = (1 - momentum) * running + momentum * batch, in one launch
            torch._foreach_lerp_([running_mean, running_var], [mean.to(running_mean.dtype),
                                                               var_unbiased.to(running_var.dtype)], momentum)
        # The layout read here: dynamo's strict mode for a traced backward bans reading it there.
        ctx.relu, ctx.eps, ctx.group, ctx.fmt = relu, eps, group, _fmt(x)
        ctx.has_residual = residual is not None
        ctx.save_for_backward(x, weight, mask_source(y, x, relu), mean, invstd, n)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, y, mean, invstd, n = ctx.saved_tensors
        need_res = ctx.has_residual and ctx.needs_input_grad[1]
        if ctx.group is None:
            dx, dw, db, dres = _grads(grad_y, y, x, weight, mean, invstd, ctx.eps, ctx.relu, need_res, ctx.fmt)
        elif torch.is_grad_enabled():
            raise NotImplementedError("bn_act: a second derivative through cross-process BatchNorm statistics")
        else:
            grad_y = grad_y.contiguous(memory_format=ctx.fmt)
            empty = x.numel() == 0
            local = (x.new_zeros((2, x.shape[1]), dtype=_stat_dtype(x)) if empty
                     else ops.bn_act_backward_reduce(grad_y, y, x, mean, invstd, ctx.relu))
            total = all_reduce(local.clone(), ctx.group)
            # The op divides the sums by `count`; dividing them here by the device-side count (and passing 1)
            # keeps the backward free of host syncs too.
            dx, dres = ((torch.zeros_like(x), torch.zeros_like(x)) if empty else
                        ops.bn_act_backward_apply(grad_y, y, x, weight, mean, invstd, (total / n).to(total.dtype),
                                                  1.0, ctx.relu, need_res))
            # weight/bias gradients stay local sums: DDP averages them, as it does nn.SyncBatchNorm's.
            dw, db = local[1].to(weight.dtype), local[0].to(weight.dtype)
        return dx, dres if need_res else None, dw, db, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------------------------
# The module-facing function
# ---------------------------------------------------------------------------------------------------------------

def group_of(bn: nn.Module):
    """The process group whose statistics a train-mode `bn` computes (converted by `convert_sync_batchnorm`, or an
    nn.SyncBatchNorm, with torch.distributed initialised and more than one process), else None."""
    if not (isinstance(bn, (_Synced, nn.SyncBatchNorm)) and dist.is_available() and dist.is_initialized()):
        return None
    group = bn.process_group or dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def syncs_in_op(bn: nn.Module, x: Tensor) -> bool:
    """Whether a train-mode `bn`'s cross-process statistics for `x` come from `bn_act`'s op: one converted by
    `convert_sync_batchnorm` (its own forward calls it too), or an nn.SyncBatchNorm on CPU tensors (its forward
    takes GPU tensors only; on CUDA it is the stock path)."""
    if not isinstance(bn, (_Synced, nn.SyncBatchNorm)):  # asked of every BN of a train-mode block per forward
        return False
    return bn.training and (isinstance(bn, _Synced) or x.device.type == "cpu") and group_of(bn) is not None


def count_batch(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """What a train-mode `bn(x)` does first: counts the batch in `num_batches_tracked` (where it tracks one) and
    returns the factor by which the running statistics move (the momentum; for momentum None, the cumulative
    average's 1 / num_batches_tracked, read back from the counter as nn.BatchNorm2d does)."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:  # nn.BatchNorm2d's order
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            factor = 1.0 / float(bn.num_batches_tracked)
    return factor


def bn_act(x: Tensor, bn: nn.modules.batchnorm._BatchNorm, residual: Optional[Tensor] = None,
           relu: bool = True) -> Tensor:
    """relu?(bn(x) + residual) with bn's own semantics. For a train-mode BatchNorm (batch statistics) in one fused
    op that updates bn's running statistics and num_batches_tracked exactly as bn(x) would, in the same order
    (the counter first; the statistics inside the op, after everything that can fail); cross-process statistics
    when bn was converted with `convert_sync_batchnorm` (or is an nn.SyncBatchNorm) and torch.distributed is
    initialised. For an eval-mode BatchNorm (running statistics, or batch statistics when it tracks none) it
    computes bn(x) with the stock op and changes no state."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"bn_act: bn must be a BatchNorm module, got {type(bn).__name__}")
    relu = bool_arg("bn_act", "relu", relu)
    if not isinstance(x, Tensor):
        raise TypeError(f"bn_act: x must be a Tensor, got {type(x).__name__}")
    if residual is not None and not isinstance(residual, Tensor):
        raise TypeError(f"bn_act: residual must be a Tensor or None, got {type(residual).__name__}")
    bn._check_input_dim(x)  # the module's ValueError first, its counter untouched, as bn(x)
    group = group_of(bn)
    tensors = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    if ((not bn.training and bn.running_mean is not None) or (x.numel() == 0 and group is None)
            or not x.is_floating_point()
            or not bn_dtypes_ok(x.dtype, {t.dtype for t in tensors if t is not None})):
        # Eval semantics, the empty batch as BatchNorm handles it, and BN tensors whose dtypes ATen's batch norm
        # refuses for x (its "mixed dtype" error) all as bn(x). An empty rank of a cross-process BN takes the
        # fused op: it joins the all-reduces with a count of zero, as nn.SyncBatchNorm's empty ranks do.
        if residual is not None and residual.shape != x.shape:  # the train op's error (no broadcasting)
            raise RuntimeError(f"bn_act: residual must have x's shape {list(x.shape)}, got {list(residual.shape)}")
        out = super(_Synced, bn).forward(x) if isinstance(bn, _Synced) else bn(x)  # (no recursion, hooks once)
        if residual is not None:
            out = out + residual
        return torch.relu(out) if relu else out
    weight = bn.weight if bn.weight is not None else torch.ones(x.shape[1], device=x.device, dtype=x.dtype)
    bias = bn.bias if bn.bias is not None else torch.zeros(x.shape[1], device=x.device, dtype=x.dtype)
    factor = count_batch(bn)
    if group is None:  # F.batch_norm's ValueError, after the counter as there; nn.SyncBatchNorm checks none
        F._verify_batch_size(x.size())  # with more than one process
    track = bn.track_running_stats and bn.running_mean is not None
    running = (bn.running_mean, bn.running_var) if track else (None, None)
    shape = x.shape
    if x.dim() not in (2, 4):  # BatchNorm1d's (N, C, L), BatchNorm3d's (N, C, D, H, W): the same per-channel op
        x = x.reshape(shape[0], shape[1], -1, 1)
        residual = residual.reshape(x.shape) if residual is not None else None
    return _BnActTrain.apply(x, residual, weight, bias, *running, factor, bn.eps, relu, group).reshape(shape)


class _Synced:
    """A BatchNorm converted by `convert_sync_batchnorm`: the same module object, its class swapped for this
    subclass of its own, whose training statistics are cross-process wherever its forward runs (hooks of its own,
    a model resnet_ext does not run, an FX graph), on CUDA and CPU tensors, through `bn_act`'s op; in eval mode or
    without a group of more than one process it is its base class. Not torch's nn.SyncBatchNorm, which DDP
    refuses for CPU modules."""

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):  # FX tracing: a leaf module, as torch's own BatchNorms are
            return input.tracer.create_proxy("call_module", input.tracer.path_of_module(self), (input,), {})
        if self.training and group_of(self) is not None:
            return bn_act(input, self, relu=False)
        return super().forward(input)


class SyncBatchNorm1d(_Synced, nn.BatchNorm1d):
    """nn.BatchNorm1d with cross-process training statistics (`convert_sync_batchnorm`)."""


class SyncBatchNorm2d(_Synced, nn.BatchNorm2d):
    """nn.BatchNorm2d with cross-process training statistics (`convert_sync_batchnorm`)."""


class SyncBatchNorm3d(_Synced, nn.BatchNorm3d):
    """nn.BatchNorm3d with cross-process training statistics (`convert_sync_batchnorm`)."""


_SYNCED = {nn.BatchNorm1d: SyncBatchNorm1d, nn.BatchNorm2d: SyncBatchNorm2d, nn.BatchNorm3d: SyncBatchNorm3d}


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Like torch.nn.SyncBatchNorm.convert_sync_batchnorm: every BatchNorm of `module` computes its training
    statistics across `process_group` (default: the world), on CUDA (NCCL) and CPU tensors (gloo). In place for
    BatchNorm1d/2d/3d (the same objects, with their parameters, buffers, hooks and optimizer entries; `_Synced`),
    nn.SyncBatchNorm and converted BNs (their group set); another BatchNorm class is replaced by torch's converter,
    as it would be. Returns `module` (the replacement where `module` itself is one)."""
    if type(module) in _SYNCED:
        module.__class__ = _SYNCED[type(module)]  # a subclass with no state of its own
    if isinstance(module, (_Synced, nn.SyncBatchNorm)):
        module.process_group = process_group
        return module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, process_group)
        if converted is not child:
            module.add_module(name, converted)
    return module


def upgrade_marks(module: nn.Module) -> None:
    """A model pickled when `convert_sync_batchnorm` marked its BatchNorms (`_resnet_ext_sync`) instead of converting
    them: converted now, with the group it kept."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if child.__dict__.pop("_resnet_ext_sync", False):
                converted = convert_sync_batchnorm(child, child.__dict__.pop("process_group", None))
                if converted is not child:
                    parent.add_module(name, converted)
