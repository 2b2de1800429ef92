"""Training BN(+add)+ReLU forward+backward: the fused op against the stock sequence (F.batch_norm in train mode,
add, relu), per distinct ResNet-50 activation shape. Skips until the resnet_ext::bn_act_train op exists."""
import pytest
import torch
import torch.nn.functional as F

import resnet_ext  # noqa: F401  (registers the ops)
from conftest import bench_config, rotation_count, run_benchmark
from resnet_ext.shapes import activation_shapes

HAVE_OP = hasattr(torch.ops.resnet_ext, "bn_act_train")


def _shapes():
    cfg = bench_config()
    shapes = activation_shapes("resnet50", cfg.batch)
    return shapes[1:3] if cfg.smoke else shapes


@pytest.mark.skipif(not HAVE_OP, reason="resnet_ext::bn_act_train is not implemented yet")
@pytest.mark.parametrize("impl", ["stock", "resnet_ext"])
@pytest.mark.parametrize("shape", _shapes(), ids=lambda s: f"n{s[0]}_c{s[1]}_{s[2]}x{s[3]}{'+res' if s[4] else ''}")
def test_bn_act_train_fwd_bwd(benchmark, cfg, ceilings, shape, impl):
    n, c, h, w, residual = shape
    benchmark.group = f"bn_act_train_n{n}_c{c}_{h}x{w}{'+res' if residual else ''}"
    elem = torch.finfo(cfg.dtype).bits // 8

    def make():
        x = torch.randn(n, c, h, w, device=cfg.device, dtype=cfg.dtype).contiguous(memory_format=torch.channels_last)
        r = torch.randn_like(x).requires_grad_() if residual else None
        g = torch.randn_like(x)
        return x.requires_grad_(), r, g

    sets = [make() for _ in range(rotation_count(cfg, 4 * n * c * h * w * elem))]
    weight = torch.ones(c, device=cfg.device, requires_grad=True)
    bias = torch.zeros(c, device=cfg.device, requires_grad=True)
    rm, rv = torch.zeros(c, device=cfg.device), torch.ones(c, device=cfg.device)

    # The stock peer as AMP runs it: bf16/fp16 activations with fp32 BN parameters (CUDA's batch_norm takes
    # them mixed; the CPU kernel wants one dtype).
    w_stock, b_stock = (weight, bias) if cfg.cuda else (weight.to(cfg.dtype), bias.to(cfg.dtype))

    def fn(x, r, g):
        if impl == "stock":
            y = F.batch_norm(x, rm, rv, w_stock, b_stock, True, 0.1, 1e-5)
            y = F.relu(y + r if r is not None else y)
        else:
            y = torch.ops.resnet_ext.bn_act_train(x, r, weight, bias, rm, 1e-5, True)[0]
        # autograd.grad, not backward(): nothing accumulates into .grad across rounds (that added an extra pass
        # over every input to both columns).
        inputs = [t for t in (x, r, weight, bias) if t is not None]
        torch.autograd.grad(y, inputs, g)

    nbytes = n * c * h * w * elem * (7 if residual else 5)  # fwd: x, [r], y; bwd: g, x|y, dx, [dr]
    run_benchmark(benchmark, cfg, fn, sets, dict(kind="bn_act_train", impl=impl, path=impl, shape=benchmark.group,
                                                 flops=0, min_bytes=nbytes,
                                                 roofline_s=nbytes / ceilings["peak_bytes_per_s"], **ceilings))
