"""A fine-tuned head (fc = Sequential(Dropout, Linear)): torchvision vs resnet_ext default and frozen, and the
same resnet_ext models with a no-op forward hook on layer4 (the module path), interleaved rounds in one process."""
import copy, statistics, sys, torch, torchvision, resnet_ext
from torch import nn
from resnet_ext.cli import time_interleaved
torch.set_num_threads(2)
arch, n, layout, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
tv = getattr(torchvision.models, arch)().eval()
tv.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(tv.fc.in_features, 10)).eval()
d = resnet_ext.from_torchvision(copy.deepcopy(tv)).eval()
f = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)))
dh = resnet_ext.from_torchvision(copy.deepcopy(tv)).eval(); dh.layer4.register_forward_hook(lambda m, a, o: None)
fh = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)))
fh.layer4.register_forward_hook(lambda m, a, o: None)
x = torch.randn(n, 3, 224, 224)
if layout == "cl":
    x = x.contiguous(memory_format=torch.channels_last)
fns = {"tv": tv, "default": d, "frozen": f, "default+hook": dh, "frozen+hook": fh}
with torch.no_grad():
    ref = tv(x)
    for k, m in fns.items():
        print(k, "rel err", float((m(x) - ref).abs().max() / ref.abs().max()))
    times, _ = time_interleaved(fns, x, rounds, {k: 3 for k in fns})
for k in fns:
    r = [a / b for a, b in zip(times["tv"], times[k])]
    print(f"{arch} b{n} {layout} {k}: median {statistics.median(times[k]) * 1e3:.1f} ms, torchvision / it "
          f"{statistics.median(r):.3f} ({min(r):.2f}-{max(r):.2f})")
