"""The frozen mode's fc on oneDNN's linear (engine/cpu.py: logits with onednn_fc) inside whole models, against
nn.Linear (MKL's addmm; "module", the forward before). Deep copies of one frozen model, interleaved rotated
rounds, per-round ratios module / onednn (median, range); the logits' difference first. Also the fc alone (its weight in
cache).
Usage: python benchmarks/cpu_fc_ab.py [ARCH] [BATCH] [cl|nchw] [bf16|fp32] [SIZE]   (2 threads; idle machine)."""
import copy
import statistics
import sys

import torch

from resnet_ext.cli import time_interleaved, timer
from resnet_ext.engine import cpu
from cpu_gemm_rule_ab import frozen_setup, patched  # run as a script: benchmarks/ is on the path


def alone(fc: torch.nn.Linear, batch: int) -> None:
    x = torch.randn(batch, fc.in_features)
    fns = {"module": lambda: fc(x),
           "onednn": lambda: torch.ops.mkldnn._linear_pointwise.default(x, fc.weight, fc.bias, "none", [], "")}
    torch.testing.assert_close(fns["onednn"](), fns["module"]())
    for _ in range(2):
        hot = {k: timer(f).blocked_autorange(min_run_time=1).median for k, f in fns.items()}
        print(f"  fc {fc.in_features} -> {fc.out_features} alone, batch {batch}: "
              + " ".join(f"{k} {v * 1e6:.0f} us" for k, v in hot.items()), flush=True)


def main() -> None:
    torch.set_num_threads(2)
    title, base, x = frozen_setup(sys.argv)
    fns = {"module": patched(copy.deepcopy(base), cpu, "_onednn_fc_fits", lambda *a: False),
           "onednn": copy.deepcopy(base)}
    print(f"torch {torch.__version__}, {title}")
    with torch.no_grad():
        ref = fns["module"](x)
        d = (fns["onednn"](x) - ref).abs().max() / ref.abs().max()
        print(f"  logits: max |onednn - module| / max |module| {d.item():.1e}")
        alone(base.fc, x.shape[0])
        for _ in range(3):
            t, _ = time_interleaved(fns, x, 20 if x.shape[0] == 1 else 8, {k: 2 for k in fns})
            r = [a / b for a, b in zip(t["module"], t["onednn"])]
            print("  " + " ".join(f"{k} {1e3 * statistics.median(v):.2f}" for k, v in t.items())
                  + f" ms | module/onednn {statistics.median(r):.3f} [{min(r):.3f}-{max(r):.3f}]", flush=True)


if __name__ == "__main__":
    main()
