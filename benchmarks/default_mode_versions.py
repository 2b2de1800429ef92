"""The default mode's speed across versions of resnet_ext (issue #29's condition: unfolding BN must not slow the
default mode down). Absolute times drift between processes here, so each process times the default mode against
torchvision interleaved and reports the ratio; run it under each version's checkout, alternating:

    for i in 1 2 3; do for v in OLD NEW; do
        PYTHONPATH=$v python benchmarks/default_mode_versions.py --tag $v
    done; done

Only public API (`resnet_ext.resnet50`), so it runs on any version. 2 threads, resnet50 fp32 224x224, batch 1 and 8,
NCHW and channels_last (model and input converted, as `bench` does unless --nchw)."""
import argparse
import statistics

import torch
import torch.utils.benchmark as tb
import torchvision

import resnet_ext


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tag", default=resnet_ext.__file__, help="label printed on each line")
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    for cl in (False, True):
        fmt = torch.channels_last if cl else torch.contiguous_format
        tv = torchvision.models.resnet50().eval().to(memory_format=fmt)
        ours = resnet_ext.resnet50().eval()
        ours.load_state_dict(tv.state_dict())
        ours = ours.to(memory_format=fmt)
        for bs in (1, 8):
            x = torch.randn(bs, 3, 224, 224).contiguous(memory_format=fmt)
            timers = {k: tb.Timer("m(x)", globals={"m": m, "x": x}, num_threads=2)
                      for k, m in (("tv", tv), ("ours", ours))}
            with torch.no_grad():
                for m in (tv, ours):
                    m(x), m(x)
                ratios, times = [], {"tv": [], "ours": []}
                for _ in range(args.rounds):
                    for k, t in timers.items():
                        times[k].append(t.timeit(2 if bs == 8 else 8).median)
                    ratios.append(times["tv"][-1] / times["ours"][-1])
            tv_ms, ours_ms = (statistics.median(times[k]) * 1e3 for k in ("tv", "ours"))
            print(f"{args.tag} batch {bs} {'channels_last' if cl else 'NCHW'}: torchvision {tv_ms:.1f} ms, default "
                  f"{ours_ms:.1f} ms, torchvision / default {statistics.median(ratios):.3f}x "
                  f"({min(ratios):.2f}-{max(ratios):.2f})", flush=True)


if __name__ == "__main__":
    main()
