"""Frozen resnet50 on this CPU: Winograd on vs off (bf16 and fp32), interleaved rounds in one process."""
import copy, statistics, sys
import torch, torchvision, resnet_ext
from resnet_ext.cli import time_interleaved
torch.manual_seed(0)
torch.set_num_threads(2)
tv = torchvision.models.resnet50().eval()
ours = resnet_ext.from_torchvision(tv)
fz16 = resnet_ext.freeze(copy.deepcopy(ours), dtype=torch.bfloat16)
fz32 = resnet_ext.freeze(copy.deepcopy(ours))
for n in [int(a) for a in sys.argv[1:]] or [1, 8]:
    x = torch.randn(n, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    def run(model, on):
        return lambda x: (resnet_ext.cpu_winograd(on), model(x))[1]
    fns = {"bf16 wino": run(fz16, True), "bf16 onednn": run(fz16, False),
           "fp32 wino": run(fz32, True), "fp32 onednn": run(fz32, False)}
    with torch.no_grad():
        t, _ = time_interleaved(fns, x, 8, {k: 2 for k in fns})
    resnet_ext.cpu_winograd(True)
    med = {k: statistics.median(v) for k, v in t.items()}
    for d in ("bf16", "fp32"):
        r = [a / b for a, b in zip(t[f"{d} onednn"], t[f"{d} wino"])]
        print(f"batch {n} {d}: wino {med[d+' wino']*1e3:.1f} ms, onednn {med[d+' onednn']*1e3:.1f} ms, onednn/wino per round median {statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})", flush=True)
