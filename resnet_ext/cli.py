"""What the command-line tools share (`python -m resnet_ext {bench,predict,report}`, examples/train.py): one-line
user errors, argparse types that name the range they want, device and output-path checks, a progress bar, and the
one timer every benchmark uses (`time_interleaved`, on torch.utils.benchmark.Timer)."""
from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import time

import logging

import torch


class UserError(Exception):
    """An error in what the user asked for: printed as one line, exit code 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """A bad argument is one line on stderr naming it and what was expected (argparse's message), exit code 2,
    instead of argparse's usage block followed by the message."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------------------------
# Argument checks (argparse `type=` functions: a bad value is one line, exit 2)
# ---------------------------------------------------------------------------------------------------------------

def number(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    """An argparse type: `kind` (int or float), finite, in the range; the error names the range."""
    def show(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    rng = (f"{'>' if lo_open else '>='} {show(lo)}" if hi is None else
           f"in {'(' if lo_open else '['}{show(lo)}, {show(hi)}{')' if hi_open else ']'}")
    want = f"{'an integer' if kind is int else 'a number'} {rng}"

    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if (lo is not None and (v <= lo if lo_open else v < lo)) or \
                (hi is not None and (v >= hi if hi_open else v > hi)) or not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text}")
        return v
    parse.__name__ = want
    return parse


def int_at_least(lo: int):
    return number(int, lo)


def check_device(spec: str) -> torch.device:
    """A device this machine has (cpu, cuda, cuda:N), else UserError naming what is available."""
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"{spec!r} is not a device (expected cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise UserError(f"{spec!r} is not available: {why}; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{spec!r} is not available: this machine has {torch.cuda.device_count()} CUDA "
                            f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif device.type != "cpu":
        raise UserError(f"{spec!r}: only cpu and cuda devices are supported")
    return device


def device_arg(spec: str) -> torch.device:
    try:
        return check_device(spec)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def default_device(device: torch.device | None) -> torch.device:
    return device if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_writable(path: str, what: str) -> None:
    """UserError unless file `path` can be written (tried now, so a long run does not fail at its end); leaves no
    file behind that was not there."""
    if os.path.isdir(path):
        raise UserError(f"{what} {path}: is a directory")
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise UserError(f"{what} {path}: cannot write ({e.strerror or type(e).__name__})") from None
    if not existed:
        os.remove(path)


def check_output_dir(path: str, what: str) -> None:
    """UserError unless directory `path` (created if needed) can be written to now, so an unwritable directory is
    not discovered after a long run."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path}: exists and is not a directory")
    probe = os.path.join(path, f".write-test.{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"x")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"{what} {path}: cannot write there ({e.strerror or type(e).__name__})") from None


def first_sentence(e, limit: int = 160) -> str:
    """An error's message for a one-line report: its first line, or where that is longer than `limit` characters
    its whole sentences within the limit (torch's messages run on for several), else the limit's worth and "..."."""
    line = (str(e).strip().splitlines() or [""])[0]
    if len(line) <= limit:
        return line
    end = line.rfind(". ", 0, limit)
    return line[:end + 1] if end > 0 else line[:limit - 3] + "..."


def memory_bytes(device: torch.device) -> int:
    """The memory a run on `device` can have at most: the GPU's, or this machine's physical memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_batch_fits(batch: int, image_size: int, device: torch.device, what: str, itemsize: int = 4) -> None:
    """UserError where one batch of images alone would not fit in `device`'s memory (`what` names the arguments),
    before any work: an allocation failing deep inside a model is not a message a user can act on."""
    need = batch * 3 * image_size * image_size * itemsize
    have = memory_bytes(device)
    if need > have:
        raise UserError(f"{what}: one batch of images alone is {need / 2 ** 30:.3g} GiB, more than the "
                        f"{have / 2 ** 30:.3g} GiB of {'this GPU' if device.type == 'cuda' else 'this machine'}")


def out_of_memory(e: BaseException) -> bool:
    """Whether `e` is an allocation that failed (CPU or GPU), which a command reports as one line."""
    return (isinstance(e, (MemoryError, torch.OutOfMemoryError))
            or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e)))


# ---------------------------------------------------------------------------------------------------------------
# Progress and timing
# ---------------------------------------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr (no dependency); silent when stderr is not a terminal or when disabled."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.enabled = enabled and total > 0 and sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = int(width * min(self.done, self.total) / self.total)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label:<28} "
                         f"{elapsed:5.1f}s")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        """A line on stderr that does not garble the bar."""
        if self.enabled and 0 < self.done < self.total:
            sys.stderr.write("\r\033[K")
        print(text, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(times: list[float]) -> dict:
    med = statistics.median(times)
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (med, med, med)
    return {"median_s": med, "min_s": min(times), "max_s": max(times), "q1_s": q1, "q3_s": q3,
            "times_s": list(times)}


@functools.lru_cache(maxsize=None)
def _benchmark():
    """torch.utils.benchmark, imported on first use: its import loads torch.utils.cpp_extension, which logs a
    warning on a machine with a CUDA toolkit but no CUDA runtime; a CLI's stderr is one line per error."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.benchmark as benchmark
    finally:
        log.setLevel(level)
    return benchmark


def clock() -> float:
    """torch.utils.benchmark's clock (what its Timer reads): synchronizes the accelerator, then the time."""
    return _benchmark().utils.timer.timer()


def timer(fn, *args):
    """torch.utils.benchmark's Timer of `fn(*args)` at this process's thread count (the Timer's own default is one
    thread); it synchronizes the accelerator around what it times. For repeated calls (`.timeit(n)` adds two
    warm-up calls of its own); `time_interleaved` times single calls on the same clock."""
    return _benchmark().Timer("fn(*args)", globals={"fn": fn, "args": args}, num_threads=torch.get_num_threads())


def time_interleaved(fns: dict, x, iters: int, warmup: dict, progress: Progress | None = None,
                     label: str = "", rotate: bool = True, settle: int = 0) -> tuple[dict, dict]:
    """Warm each contender up (`warmup[name]` calls, timed together as its warm-up: compilation happens there),
    then `iters` rounds of one timed call of each contender in turn, so that a machine that speeds up or slows
    down moves every contender alike, each round starting one contender later (A, B, C; B, C, A; C, A, B; ...):
    a contender's place matters (on a 2-core CPU a resnet_ext model timed right after torchvision's took 2-6%
    longer than an identical one timed after it: benchmarks/results/2026-12-04-cpu-default-sweep/); `rotate=False`
    keeps one order (A, B, C; A, B, C), as every timing before 2026-12-04 did. `settle`: untimed calls of the
    same contender right before each timed one, so that each timed call follows its own, as in a deployment that
    runs one model: a runtime with its own worker threads (ONNX Runtime's and OpenVINO's pools spin after a call)
    otherwise takes cores from whoever is timed next (on a 2-core CPU OpenVINO's fp32 resnet50 at batch 1 took
    59-61 ms timed right after ONNX Runtime's call and 38-41 ms after its own: benchmarks/results/
    2026-12-05-cpu-bench-settled/). On torch.utils.benchmark's clock, which synchronizes the accelerator. Returns
    ({name: per-round seconds}, {name: warm-up seconds})."""
    warm = {}
    for name, fn in fns.items():
        t0 = clock()
        for _ in range(warmup[name]):
            fn(x)
            if progress is not None:
                progress.step(f"{name} {label} warm-up")
        warm[name] = clock() - t0
    times: dict = {name: [] for name in fns}
    names = list(fns)
    for r in range(iters):
        k = r % len(names) if rotate else 0
        for name in names[k:] + names[:k]:
            fn = fns[name]
            t0 = clock()
            for _ in range(settle):
                fn(x)
            if r == 0:  # with no warm-up calls the first settling call is the first call: its cost is warm-up
                warm[name] += clock() - t0
            t0 = clock()
            fn(x)
            times[name].append(clock() - t0)
            if progress is not None:
                progress.step(f"{name} {label}")
    return times, warm


def cuda_event_ms(fn, calls: int = 1, repeats: int = 7, warmup: int = 3) -> float:
    """GPU time of fn() in ms by CUDA events, for kernel-level timing where the Timer's host-side synchronization
    would dominate: after `warmup` calls, the median over `repeats` of (event time of `calls` calls) / calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / calls)
    return statistics.median(out)


def ratio(base: list[float], other: list[float]) -> dict:
    """How many times faster `other` is than `base`: the median of the per-round ratios, and their min-max."""
    r = [b / o for b, o in zip(base, other)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r)}
