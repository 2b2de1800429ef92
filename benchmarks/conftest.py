"""Shared machinery of the benchmark suite: what to run (default / --full / smoke), the device's ceilings for the
roofline, and a timing loop that synchronises CUDA and rotates inputs so caches do not flatter small shapes.

    pytest benchmarks/ --benchmark-only                       # default set (CPU: < 5 min on 2 cores)
    pytest benchmarks/ --benchmark-only --full                # every shape of resnet50/101, batch 256
    RESNET_EXT_BENCH_SMOKE=1 pytest benchmarks/ --benchmark-only   # a few shapes, one round (CI)
Options: --bench-batch N, --bench-dtype {bf16,fp16,fp32}. Results: --benchmark-json=FILE, then
`python -m resnet_ext report FILE`.
"""
import math
import os
from dataclasses import dataclass

import pytest
import torch

from resnet_ext.cli import sync, timer  # the ones `python -m resnet_ext bench` uses

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pytest_addoption(parser):
    g = parser.getgroup("resnet_ext benchmarks")
    g.addoption("--full", action="store_true", default=os.environ.get("RESNET_EXT_BENCH_FULL") == "1",
                help="every conv/activation shape of resnet50/101 (+dilated), batch 256")
    g.addoption("--bench-batch", type=int, default=None)
    g.addoption("--bench-dtype", choices=sorted(DTYPES), default=None)


@dataclass
class BenchConfig:
    device: torch.device
    dtype: torch.dtype
    batch: int
    full: bool
    smoke: bool
    rounds: int

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def _config(pc) -> BenchConfig:
    cuda = torch.cuda.is_available()
    smoke = os.environ.get("RESNET_EXT_BENCH_SMOKE") == "1"
    full = pc.getoption("--full")
    dtype = DTYPES[pc.getoption("--bench-dtype") or ("bf16" if cuda else "fp32")]
    batch = pc.getoption("--bench-batch") or (256 if (cuda or full) else 1)
    rounds = 1 if smoke else (20 if cuda else 3)
    return BenchConfig(torch.device("cuda" if cuda else "cpu"), dtype, batch, full, smoke, rounds)


_CONFIG = None


def bench_config() -> BenchConfig:
    return _CONFIG


def pytest_configure(config):
    global _CONFIG
    _CONFIG = _config(config)


@pytest.fixture(scope="session")
def cfg() -> BenchConfig:
    return _CONFIG


@pytest.fixture(scope="session")
def ceilings(cfg):
    """The device's own limits, measured once in this process: a large matmul in the benchmark dtype (FLOP/s) and
    a large device-to-device copy (bytes/s, read + write)."""
    n = 8192 if cfg.cuda else 1024
    a = torch.randn(n, n, device=cfg.device, dtype=cfg.dtype)
    b = torch.randn(n, n, device=cfg.device, dtype=cfg.dtype)
    reps = 10 if cfg.cuda else 3
    a @ b
    peak_flops = 2 * n ** 3 / timer(torch.mm, a, b).timeit(reps).median
    nbytes = (1 << 30) if cfg.cuda else (1 << 27)
    src = torch.empty(nbytes, dtype=torch.uint8, device=cfg.device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    peak_bw = 2 * nbytes / timer(dst.copy_, src).timeit(reps).median
    del a, b, src, dst
    return {"peak_flops": peak_flops, "peak_bytes_per_s": peak_bw}


def rotation_count(cfg, bytes_per_set: int) -> int:
    """How many input sets to cycle through so their total exceeds twice the last-level cache."""
    if not cfg.cuda:
        return 1
    l2 = getattr(torch.cuda.get_device_properties(cfg.device), "L2_cache_size", 50 << 20)
    free = torch.cuda.mem_get_info(cfg.device)[0]
    want = math.ceil(2 * l2 / max(bytes_per_set, 1))
    return max(1, min(want, 16, int(free * 0.5 // max(bytes_per_set, 1))))


def run_benchmark(benchmark, cfg, fn, input_sets, extra_info: dict):
    """Time fn(*inputs) cycling through input_sets. On CUDA one round is `inner` launches followed by one
    synchronisation (so the sync's cost is amortised); extra_info['inner'] records it and the report divides."""
    state = {"i": 0}

    def one():
        inputs = input_sets[state["i"] % len(input_sets)]
        state["i"] += 1
        return fn(*inputs)

    one()
    sync(cfg.device)
    inner = 1
    if cfg.cuda:
        per_call = timer(one).timeit(3).median
        inner = max(1, min(200, int(2e-3 / max(per_call, 1e-7))))

    def round_():
        for _ in range(inner):
            one()
        sync(cfg.device)

    benchmark.extra_info.update(extra_info)
    benchmark.extra_info.update(inner=inner, device=torch.cuda.get_device_name(cfg.device) if cfg.cuda else "cpu",
                                dtype=str(cfg.dtype).replace("torch.", ""), torch=torch.__version__)
    benchmark.pedantic(round_, rounds=cfg.rounds, warmup_rounds=0 if cfg.smoke else 1, iterations=1)
