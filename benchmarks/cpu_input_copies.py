"""The copies a frozen bf16 forward may make of an NCHW fp32 input before its stem, alone (torch.utils.benchmark,
2 threads, caches warm): the cast to bf16, the channels_last copy of the bf16 input (`engine.cpu.internal_layout`,
which the stem's own op does not need: it reads any layout into its padded NHWC copy), and the two in one call.
Usage: python benchmarks/cpu_input_copies.py   (idle machine)."""
import torch
from torch.utils import benchmark


def main() -> None:
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, 2 threads; batch, ms, statement")
    for n in (1, 8):
        x = torch.randn(n, 3, 224, 224)
        xb = x.to(torch.bfloat16)
        for stmt in ("x.to(torch.bfloat16)", "xb.contiguous(memory_format=torch.channels_last)",
                     "x.to(torch.bfloat16, memory_format=torch.channels_last)"):
            t = benchmark.Timer(stmt, globals={"x": x, "xb": xb, "torch": torch},
                                num_threads=2).blocked_autorange(min_run_time=0.5).median
            print(f"{n} {t * 1e3:.3f} {stmt}")


if __name__ == "__main__":
    main()
