"""Where a hooked model's module path (NCHW, small input) loses against torchvision: the same tensors run as
torchvision's model (`to_torchvision`), with `engine.enabled` patched off, through the engine with torchvision's
body in place of `module_path` ("wrap_tv"), the same with `ops.max_pool` ("wrap_pool"), and as is ("ours").
timeit, interleaved rounds of 30 calls, median us per forward.

    python benchmarks/cpu_engine_overhead.py SIZE ROUNDS
"""
import statistics
import sys
import timeit

import torch

import resnet_ext
from resnet_ext import engine, ops


def body(model, x, pool):
    """torchvision's ResNet body, with `pool(model, map)` as the max pool."""
    x = pool(model, model.relu(model.bn1(model.conv1(x))))
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
    return model.fc(torch.flatten(model.avgpool(x), 1))


def patched(name, value, fn):
    """fn() with engine.<name> replaced by value."""
    def run():
        real = getattr(engine, name)
        setattr(engine, name, value)
        try:
            return fn()
        finally:
            setattr(engine, name, real)
    return run


def main():
    torch.set_num_threads(2)
    size, rounds = int(sys.argv[1]), int(sys.argv[2])
    m = resnet_ext.resnet18(num_classes=10).eval()
    m.layer4.register_forward_hook(lambda *a: None)
    tvm = resnet_ext.to_torchvision(m)
    x = torch.randn(1, 3, size, size)
    fns = {
        "tv": lambda: tvm(x),
        "off": patched("enabled", lambda *a: False, lambda: m(x)),
        "wrap_tv": patched("module_path", lambda model, x: body(model, x, lambda mm, y: mm.maxpool(y)), lambda: m(x)),
        "wrap_pool": patched("module_path", lambda model, x: body(model, x, lambda mm, y: ops.max_pool(mm.maxpool, y)),
                             lambda: m(x)),
        "ours": lambda: m(x),
    }
    res = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(rounds):
            for k, f in fns.items():
                res[k].append(timeit.timeit(f, number=30) / 30 * 1e6)
    for k in fns:
        print(f"resnet18 1x3x{size}x{size}, hook on layer4, {k}: {statistics.median(res[k]):.1f} us")


if __name__ == "__main__":
    main()
