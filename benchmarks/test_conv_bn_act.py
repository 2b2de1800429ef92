"""conv_bn_act (one fused kernel on CUDA) against the stock sequence it replaces — conv, BN (eval), [add], ReLU —
and, on CUDA, against cuDNN's own fused ops (torch.cudnn_convolution_relu / torch.cudnn_convolution_add_relu).
One pytest-benchmark group per distinct ResNet conv shape."""

import pytest
import torch
import torch.nn.functional as F

import resnet_ext
from conftest import bench_config, rotation_count, run_benchmark
from resnet_ext.shapes import conv_shapes


def _shapes():
    cfg = bench_config()
    shapes = conv_shapes("resnet50", cfg.batch)
    if cfg.full:
        shapes += conv_shapes("resnet101", cfg.batch)
        shapes += conv_shapes("resnet50", cfg.batch, replace_stride_with_dilation=[False, True, True])
    shapes = list(dict.fromkeys(shapes))
    if cfg.smoke:
        shapes = [s.with_batch(1) for s in shapes[1:4]]
    return shapes


SHAPES = _shapes()
IMPLS = ["stock", "cudnn_fused", "resnet_ext", "resnet_ext_cutlass"]  # _cutlass: prefer_cudnn(False)


def make_set(s, cfg):
    dev, dt = cfg.device, cfg.dtype
    fmt = torch.channels_last
    x, w, _, r = s.inputs(dt, device=dev)
    bn = dict(mean=torch.randn(s.K, device=dev, dtype=dt) * 0.1, var=torch.rand(s.K, device=dev, dtype=dt) + 0.5,
              gamma=torch.rand(s.K, device=dev, dtype=dt) + 0.5, beta=torch.randn(s.K, device=dev, dtype=dt) * 0.1)
    wf, bf = resnet_ext.fold_bn_weights(w, None, bn["mean"], bn["var"], 1e-5, bn["gamma"], bn["beta"])
    return x, w, r, bn, wf.contiguous(memory_format=fmt), bf


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("s", SHAPES, ids=lambda s: s.name)
def test_conv_bn_act(benchmark, request, cfg, ceilings, s, impl):
    benchmark.group = s.name
    elem = torch.finfo(cfg.dtype).bits // 8
    per_set = s.min_bytes(elem)
    sets = [make_set(s, cfg) for _ in range(rotation_count(cfg, per_set))]
    st, pd, dl = s.stride, s.padding, s.dilation

    if impl == "stock":  # what torchvision's eval forward runs
        def fn(x, w, r, bn, wf, bf):
            y = F.conv2d(x, w, None, st, pd, dl)
            y = F.batch_norm(y, bn["mean"], bn["var"], bn["gamma"], bn["beta"], False, 0.0, 1e-5)
            if r is not None:
                y = y + r
            return F.relu(y) if s.relu else y
    elif impl == "cudnn_fused":
        if not cfg.cuda:
            pytest.skip("cuDNN fused ops need CUDA")
        if s.residual:
            def fn(x, w, r, bn, wf, bf):
                return torch.cudnn_convolution_add_relu(x, wf, r, 1.0, bf, [st, st], [pd, pd], [dl, dl], 1)
        elif s.relu:
            def fn(x, w, r, bn, wf, bf):
                return torch.cudnn_convolution_relu(x, wf, bf, [st, st], [pd, pd], [dl, dl], 1)
        else:  # downsample: no ReLU, cuDNN's conv with a bias is its fused form
            def fn(x, w, r, bn, wf, bf):
                return F.conv2d(x, wf, bf, st, pd, dl)
        try:
            fn(*sets[0])
        except RuntimeError as e:
            pytest.skip(f"cuDNN fused op unavailable for {cfg.dtype}: {str(e).splitlines()[0]}")
    else:
        def fn(x, w, r, bn, wf, bf):
            return resnet_ext.conv_bn_act(x, wf, bf, r, st, pd, dl, s.relu)

    resnet_ext.prefer_cudnn(impl != "resnet_ext_cutlass")
    request.addfinalizer(lambda: resnet_ext.prefer_cudnn(True))
    x, w, r, bn, wf, bf = sets[0]
    path = resnet_ext.explain(x, wf, bf, r, st, pd, dl, s.relu)[0] if impl.startswith("resnet_ext") else impl
    flops, nbytes = s.flops(), per_set
    roofline_s = max(flops / ceilings["peak_flops"], nbytes / ceilings["peak_bytes_per_s"])
    run_benchmark(benchmark, cfg, fn, sets, dict(
        kind="conv_bn_act", impl=impl, path=path, shape=s.name, flops=flops, min_bytes=nbytes,
        roofline_s=roofline_s, **ceilings))
