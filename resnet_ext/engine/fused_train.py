"""A Bottleneck's training forward and backward as NVIDIA's MLPerf ResNet-50 computes it (#23), opt-in
(`switches.fused_train`):

    forward   y1, sums1 = conv1(x)                          each conv writes its output's per-channel sums
              scale1, shift1 = finalize(sums1)              (and moves bn1's running statistics)
              y2, sums2 = conv2(relu(y1 * scale1 + shift1)) the previous BN + ReLU applied as the conv loads
              y3, sums3 = conv3(relu(y2 * scale2 + shift2))
              out = relu(bn3(y3) + (bn_d(conv_d(x)) or x))  the training BN ops (bn_act.py's kernels)
    backward  the tail through the training BN ops; then per conv: wgrad on the input recomputed by the same
              prologue, dgrad fused with the previous ReLU's mask and that BN's weight gradients (dbn), and the BN
              backward applied from those sums.

It saves x, y1, y2, y3 (and the downsample's output) and the block's output: not the ReLU outputs torchvision
keeps. A BN converted by `convert_sync_batchnorm` all-reduces its sums and count between the conv and the finalize
(and its backward sums), on the device. The ops (`fused_conv_stats`, `bn_finalize`, `fused_dgrad_drelu_dbn`,
`fused_wgrad`; csrc/ops/fused_train.cpp) run cuDNN graphs on CUDA in an experimental build
(csrc/experimental/cudnn_graphs.cpp; unverified until a GPU run: `benchmarks/gpu_check.sh --only fusedtrain`) and
their ATen compositions elsewhere, which is how the CPU tests check this decomposition against torchvision's block
in float64 (slower than the stock path: for tests, not for use).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .._C_loader import _C
from ..bn_act import all_reduce, all_reduce_sums, count_batch, group_of
from ..ops import conv_output_size, memory_format_of
from . import units

ops = torch.ops.resnet_ext
_CL = torch.channels_last


def _conv_ok(conv: nn.Module) -> bool:
    return (units._plain_conv(conv) and conv.bias is None and conv.groups == 1 and tuple(conv.dilation) == (1, 1)
            and len(conv.stride) == 2 and len(conv.padding) == 2)


def _bn_ok(bn: nn.Module) -> bool:
    # A cross-process BN (`convert_sync_batchnorm`) is one too: its statistics are all-reduced between the ops.
    return (units.train_fusable(bn) and bn.affine and bn.track_running_stats
            and bn.running_mean is not None and bn.weight is not None and bn.bias is not None)


def _pairs(b: nn.Module) -> Optional[List[Tuple[nn.Module, nn.Module]]]:
    """conv1..3 with their BNs, then the downsample's pair: or None where the block is not the stock Bottleneck."""
    if not (units.is_block(b) and hasattr(b, "conv3") and units.plain_relu(b.relu) and b.relu is not None):
        return None
    pairs = units.unit_pairs(b)
    ds = b.downsample
    if ds is not None:
        if not (type(ds) is nn.Sequential and len(ds) == 2 and units.hookless(ds)):
            return None
        pairs.append((ds[0], ds[1]))
    return pairs


def why_not(b: nn.Module, x: Tensor) -> Optional[str]:
    """None where `b`'s train-mode forward on `x` can run the fused decomposition, else why not."""
    pairs = _pairs(b)
    if pairs is None:
        return "not the stock Bottleneck (a BasicBlock, a subclass, a swapped module or a hook)"
    if not all(_conv_ok(c) and _bn_ok(n) for c, n in pairs):
        return "a conv or BN that is not the stock train-mode one (bias, groups, dilation, hooks, no affine)"
    if not (isinstance(x, Tensor) and x.dim() == 4 and x.is_floating_point() and x.shape[1] == b.conv1.in_channels
            and x.numel() > 0):
        return "an input the block's convs would reject (torchvision's error comes from its own path)"
    convs = [c.weight for c, _ in pairs]
    tensors = convs + [t for _, n in pairs for t in (n.weight, n.bias, n.running_mean, n.running_var)]
    if any(t.device != x.device for t in tensors):
        return "parameters on another device than x (torchvision's error comes from its own path)"
    if torch.is_autocast_enabled(x.device.type):  # autocast casts fp32 (and its own dtype), nothing else
        ok = (all(t.dtype == torch.float32 for t in tensors)
              and x.dtype in (torch.float32, torch.get_autocast_dtype(x.device.type)))
    else:
        ok = all(t.dtype == x.dtype for t in tensors)
    if not ok:
        return "mixed dtypes (torchvision's answer or error comes from its own path)"
    if x.is_cuda and not hasattr(_C, "cudnn_graph_probe"):
        return "CUDA needs the cuDNN graphs of an experimental CUDA build (RESNET_EXT_EXPERIMENTAL=1)"
    # Shapes torchvision's own path rejects (a residual of another shape, one value per channel: its ValueError)
    # go there.
    def out_hw(conv, hw):
        return [conv_output_size(hw[i], conv.kernel_size[i], conv.stride[i], conv.padding[i], conv.dilation[i])
                for i in (0, 1)]
    hws = [list(x.shape[2:])]  # each conv's input size: conv1, conv2, conv3 chained; the downsample reads x
    for conv, _ in pairs[:3]:
        hws.append(out_hw(conv, hws[-1]))
    sizes = hws[1:] + ([out_hw(pairs[3][0], hws[0])] if b.downsample is not None else [])
    hws = hws[:3] + hws[:1]
    chain = [c.in_channels for c, _ in pairs[1:3]] == [c.out_channels for c, _ in pairs[:2]]
    shortcut = (pairs[3][0].in_channels == x.shape[1] and pairs[3][0].out_channels == b.conv3.out_channels
                and sizes[3] == sizes[2]) if b.downsample is not None else \
        (x.shape[1] == b.conv3.out_channels and list(x.shape[2:]) == sizes[2])
    if not (chain and shortcut) or any(min(s) <= 0 or x.shape[0] * s[0] * s[1] <= 1 for s in sizes):
        return "shapes that torchvision's block rejects"
    if x.is_cuda:
        return _graphs_missing(pairs, hws, x)
    return None


_GRAPH_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}
_ready: dict = {}  # (device, dtype, graphs) -> None, or the first graph cuDNN has no plan for and why


def _graphs_missing(pairs, hws, x: Tensor) -> Optional[str]:
    """On CUDA: None where cuDNN builds every graph this block's step runs (each built on the first ask and cached
    with the ops), else which one it lacks: such a block runs unfused, not on the ops' slower compositions."""
    dt = _GRAPH_DTYPES.get(compute_dtype(x))
    if dt is None:
        return "no cuDNN graphs for a float32 step (TF32 convs: the stock path)"
    graphs = []
    for i, ((conv, _), hw) in enumerate(zip(pairs, hws)):
        geo = ((x.shape[0], conv.in_channels, *hw), tuple(conv.weight.shape), tuple(conv.stride), tuple(conv.padding))
        prologue = i in (1, 2)  # conv2 and conv3 read the previous BN's output
        graphs.append(("conv_stats", *geo, prologue))
        if prologue:
            graphs += [("dgrad_drelu_dbn", *geo, True), ("wgrad", *geo, True)]
    key = (x.device, dt, tuple(graphs))
    if key not in _ready:
        with torch.cuda.device(x.device):
            _ready[key] = next((f"cuDNN has no plan for {g[0]} on x {g[1]}, weight {g[2]}: {why[:160]}"
                                for g in graphs if (why := _C.cudnn_graph_probe(*g, dt, True))), None)
    return _ready[key]


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the block computes in: autocast's where it is on for x's device (the convs' inputs cast as
    autocast casts them), else x's."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class _Block(torch.autograd.Function):
    """The block's forward and backward (module docstring). `spec`: per conv (stride, padding); per BN (running
    mean, running var, momentum factor, eps, process group or None); the compute dtype; the parameters' dtypes."""

    @staticmethod
    def forward(ctx, spec, x, *params):
        convs, bns, dt, ctx.param_dtypes = spec
        ws = [p.to(dt).contiguous(memory_format=_CL) for p in params[0::3]]
        gammas, betas = params[1::3], params[2::3]
        xin = x.to(dt).contiguous(memory_format=_CL)
        ys, stats, norms, counts = [], [], [], []
        inp, scale, shift = xin, None, None
        for i, (stride, padding) in enumerate(convs):
            src, pro = (xin, (None, None)) if i == 3 else (inp, (scale, shift))  # the downsample reads x
            y, sums = ops.fused_conv_stats(src, ws[i], *pro, stride, padding)
            rm, rv, factor, eps, group = bns[i]
            count = torch.full((1,), y.numel() // y.shape[1], dtype=torch.float64, device=y.device)
            if group is not None:  # SyncBN: the statistics over every process's batch
                sums, count = all_reduce_sums(sums, count, group)
            sc, sh, mean, invstd = ops.bn_finalize(sums, count, gammas[i], betas[i], rm, rv, factor, eps)
            ys.append(y)
            stats.append((sc, sh))
            norms.append((mean, invstd))
            counts.append(count.reshape(1))
            inp, scale, shift = y, sc, sh
        if len(convs) == 4:
            residual = ops.bn_act_apply(ys[3], None, gammas[3], betas[3], *norms[3], False)
        else:
            residual = xin
        out = ops.bn_act_apply(ys[2], residual, gammas[2], betas[2], *norms[2], True)
        ctx.convs, ctx.groups, ctx.x_dtype = convs, [b[4] for b in bns], x.dtype
        ctx.save_for_backward(xin, out, *ys, *ws, *gammas, *[t for s in stats for t in s],
                              *[t for m in norms for t in m], *counts)
        return out

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            raise NotImplementedError("fused_train: a second derivative through the fused Bottleneck (turn "
                                      "resnet_ext.fused_train off for create_graph=True)")
        k = len(ctx.convs)
        saved = ctx.saved_tensors
        xin, out = saved[0], saved[1]
        ys, ws, gammas = saved[2:2 + k], saved[2 + k:2 + 2 * k], saved[2 + 2 * k:2 + 3 * k]
        flat = saved[2 + 3 * k:]
        stats = [flat[2 * i:2 * i + 2] for i in range(k)]
        norms = [flat[2 * k + 2 * i:2 * k + 2 * i + 2] for i in range(k)]
        counts = flat[4 * k:]
        dws, dgs, dbs = [None] * k, [None] * k, [None] * k

        def bn_back(i, g, y_out, relu, residual_grad, sums=None):
            """BN i's input gradient from the gradient at its output (through the ReLU mask of `y_out` when
            `relu`); `sums` (sum g, sum g * xhat), computed here unless the dgrad graph gave them. Its weight and
            bias gradients are the local sums (DDP averages them, as it does nn.SyncBatchNorm's)."""
            if sums is None:
                sums = ops.bn_act_backward_reduce(g, y_out, ys[i], *norms[i], relu)
            dgs[i], dbs[i] = sums[1], sums[0]
            total = sums if ctx.groups[i] is None else all_reduce(sums.clone(), ctx.groups[i])
            # The means over the (all-reduced) count, kept on the device: no host sync.
            return ops.bn_act_backward_apply(g, y_out, ys[i], gammas[i], *norms[i],
                                             (total / counts[i]).to(total.dtype), 1.0, relu, residual_grad)

        g = grad.to(out.dtype).contiguous(memory_format=_CL)
        # The tail: bn3 through the output's ReLU mask, the residual's gradient (the masked one) alongside.
        dy, dres = bn_back(2, g, out, True, True)
        if k == 4:
            dy_d, _ = bn_back(3, dres, ys[3], False, False)
        for i in (2, 1):  # conv i's input is relu(bn_{i-1}(y_{i-1})), recomputed by the prologue
            stride, padding = ctx.convs[i]
            prev = ys[i - 1]
            dws[i] = ops.fused_wgrad(dy, prev, *stats[i - 1], list(ws[i].shape), stride, padding)
            gp, sums = ops.fused_dgrad_drelu_dbn(dy, ws[i], prev, *stats[i - 1], *norms[i - 1], stride, padding)
            dy, _ = bn_back(i - 1, gp, prev, False, False, sums)
        heads = [(0, dy)] + ([(3, dy_d)] if k == 4 else [])
        dx = None if k == 4 else dres
        for i, d in heads:  # the convs that read x itself
            stride, padding = ctx.convs[i]
            dws[i] = ops.fused_wgrad(d, xin, None, None, list(ws[i].shape), stride, padding)
            if ctx.needs_input_grad[1]:
                part = torch.ops.aten.convolution_backward(d, xin, ws[i], None, stride, padding, [1, 1], False, [0, 0],
                                                           1, [True, False, False])[0]
                dx = part if dx is None else dx + part
        grads = []
        for i in range(k):
            grads += [dws[i], dgs[i], dbs[i]]
        dx = dx.to(ctx.x_dtype) if dx is not None and ctx.needs_input_grad[1] else None
        return (None, dx, *[gr.to(t) for gr, t in zip(grads, ctx.param_dtypes)])


def block(b: nn.Module, x: Tensor) -> Tensor:
    """`b(x)` for a train-mode stock Bottleneck (see `why_not`) through the fused decomposition, with each BN's
    counter and running statistics updated as torchvision's forward updates them."""
    pairs = _pairs(b)
    units.count("train_graph", len(pairs))
    bns = [(bn.running_mean, bn.running_var, count_batch(bn), bn.eps, group_of(bn)) for _, bn in pairs]
    convs = [(list(c.stride), list(c.padding)) for c, _ in pairs]
    params = []
    for conv, bn in pairs:
        params += [conv.weight, bn.weight, bn.bias]
    out = _Block.apply((convs, bns, compute_dtype(x), [p.dtype for p in params]), x, *params)
    # The ops compute channels_last; the block hands on the layout torchvision's convs would (ATen's rule:
    # channels_last where the input or a weight is): hooks and callers of the layers see the same strides.
    if all(memory_format_of(t) != _CL for t in (x, *params[0::3])):
        out = out.contiguous()
    return out


@torch.library.register_fake("resnet_ext::bn_finalize")
def _(sums, count, weight, bias, running_mean, running_var, momentum, eps):
    return tuple(sums.new_empty((sums.shape[1],)) for _ in range(4))
