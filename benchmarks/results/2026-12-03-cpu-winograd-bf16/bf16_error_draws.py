# Logit error vs float64 (max |diff| / max |ref|) of frozen bf16 models: w = Winograd on, o = oneDNN only,
# tv = torchvision.to(bfloat16); 4 seeds per line; run on 74ecfc0 (the transforms changed since, not the arithmetic).
# Usage: PYTHONPATH=. python bf16_error_draws.py   (from the repository root; imports tests/conftest.py)
import sys; sys.path.insert(0, "tests")
import torch, copy, torchvision, resnet_ext, statistics
from conftest import randomize_bn, rel_err
torch.set_num_threads(2)
for arch in ("resnet18", "resnet50"):
  for classes in (10, 1000):
    rows = []
    for seed in range(4):
        torch.manual_seed(seed)
        tv = randomize_bn(getattr(torchvision.models, arch)(num_classes=classes)).eval()
        x = torch.randn(2, 3, 128, 128).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            ref = copy.deepcopy(tv).double()(x.double())
            e_tv = rel_err(copy.deepcopy(tv).bfloat16()(x.bfloat16()), ref)
            e = {}
            for on in (True, False):
                resnet_ext.cpu_winograd(on)
                ours = resnet_ext.freeze(resnet_ext.from_torchvision(tv), dtype=torch.bfloat16)
                e[on] = rel_err(ours(x), ref)
            resnet_ext.cpu_winograd(True)
        rows.append((e[True], e[False], e_tv))
    print(arch, classes, " ".join(f"[w {a:.4f} o {b:.4f} tv {c:.4f}]" for a, b, c in rows),
          f"w/o {statistics.mean(a/b for a,b,c in rows):.2f} w/tv {statistics.mean(a/c for a,b,c in rows):.2f} o/tv {statistics.mean(b/c for a,b,c in rows):.2f}")
