"""Whole models: torchvision eager (NCHW and channels_last), torch.compile of torchvision, and resnet_ext, in eval
and for one training step (SGD; AMP autocast for 16-bit dtypes on CUDA)."""
import pytest
import torch

from conftest import bench_config, run_benchmark
from resnet_ext.bench import seeded_model, train_step

ARCHS = ["resnet50", "resnet101"] if bench_config().full or bench_config().cuda else ["resnet50"]


def _peers(cfg, with_compile):
    peers = ["torchvision_nchw", "torchvision_cl", "resnet_ext"]
    if with_compile and (cfg.cuda or cfg.full):
        peers.append("torchvision_compile")  # compiling costs about a minute: one model, eval only
    return peers


def _model(arch, impl, cfg, train=False):
    m = seeded_model(arch, impl)
    fmt = torch.contiguous_format if impl == "torchvision_nchw" else torch.channels_last
    dtype = torch.float32 if train and cfg.dtype != torch.float32 else cfg.dtype  # AMP keeps fp32 master weights
    m = m.to(device=cfg.device, dtype=dtype, memory_format=fmt).train(train)
    if impl == "torchvision_compile":
        m = torch.compile(m)
    return m, fmt


def _input(cfg, fmt, batch, size):
    x = torch.randn(batch, 3, size, size, device=cfg.device)
    return x.contiguous(memory_format=fmt)


def _sizes(cfg):
    if cfg.smoke:
        return 1, 64
    return (cfg.batch, 224) if (cfg.cuda or cfg.full) else (2, 224)


@pytest.mark.parametrize("arch,impl", [(a, p) for i, a in enumerate(ARCHS) for p in _peers(bench_config(), i == 0)])
def test_model_eval(benchmark, cfg, arch, impl):
    benchmark.group = f"{arch}_eval"
    batch, size = _sizes(cfg)
    model, fmt = _model(arch, impl, cfg)
    x = _input(cfg, fmt, batch, size).to(cfg.dtype)

    def fn(inp):
        with torch.inference_mode():
            return model(inp)

    run_benchmark(benchmark, cfg, fn, [(x,)], dict(kind="model_eval", impl=impl, path=impl, shape=benchmark.group,
                                                   batch=batch, image_size=size))


@pytest.mark.parametrize("impl", ["torchvision_cl", "resnet_ext"])
@pytest.mark.parametrize("arch", ARCHS[:1])
def test_model_train_step(benchmark, cfg, arch, impl):
    benchmark.group = f"{arch}_train_step"
    batch, size = _sizes(cfg)
    model, fmt = _model(arch, impl, cfg, train=True)
    x = _input(cfg, fmt, batch, size)
    target = torch.randint(0, 1000, (batch,), device=cfg.device)
    amp = cfg.dtype if cfg.dtype != torch.float32 else None
    fn = train_step(model, model.parameters(), target, amp)

    if cfg.cuda:
        torch.cuda.reset_peak_memory_stats()
    run_benchmark(benchmark, cfg, fn, [(x,)], dict(kind="model_train", impl=impl, path=impl, shape=benchmark.group,
                                                   batch=batch, image_size=size))
    if cfg.cuda:
        benchmark.extra_info["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
