"""A mode's speed across versions of resnet_ext (issue #29: unfolding BN must not slow the default mode down; #27:
restructuring must not move the CPU figures). Absolute times drift between processes here, so each process times
the mode against torchvision interleaved and reports the ratio; run it under each version's checkout, alternating:

    for i in 1 2 3; do for v in OLD NEW; do
        PYTHONPATH=$v python benchmarks/default_mode_versions.py --mode default --tag $v
    done; done

Only public API (`resnet_ext.resnet50`, `resnet_ext.freeze`), so it runs on any version. 2 threads, resnet50 fp32
224x224, batch 1 and 8, NCHW and channels_last (model and input converted, as `bench` does unless --nchw). Modes:
`default` and `frozen` (eval, no_grad), `train` (one SGD-free training step: zero_grad, forward, backward)."""
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
    p.add_argument("--mode", choices=("default", "frozen", "train"), default="default")
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    for cl in (False, True):
        fmt = torch.channels_last if cl else torch.contiguous_format
        train = args.mode == "train"
        tv = torchvision.models.resnet50().train(train).to(memory_format=fmt)
        ours = resnet_ext.resnet50().train(train)
        ours.load_state_dict(tv.state_dict())
        ours = ours.to(memory_format=fmt)
        if args.mode == "frozen":
            resnet_ext.freeze(ours)
        for bs in (1, 8):
            x = torch.randn(bs, 3, 224, 224).contiguous(memory_format=fmt)
            stmt = "m.zero_grad(set_to_none=True); m(x).sum().backward()" if train else "m(x)"
            timers = {k: tb.Timer(stmt, globals={"m": m, "x": x}, num_threads=2)
                      for k, m in (("tv", tv), ("ours", ours))}
            with torch.set_grad_enabled(train):
                for t in timers.values():
                    t.timeit(2)
                ratios, times = [], {"tv": [], "ours": []}
                for _ in range(args.rounds):
                    for k, t in timers.items():
                        times[k].append(t.timeit(1 if train else 2 if bs == 8 else 8).median)
                    ratios.append(times["tv"][-1] / times["ours"][-1])
            tv_ms, ours_ms = (statistics.median(times[k]) * 1e3 for k in ("tv", "ours"))
            print(f"{args.tag} {args.mode} batch {bs} {'channels_last' if cl else 'NCHW'}: torchvision {tv_ms:.1f} ms, "
                  f"{args.mode} {ours_ms:.1f} ms, torchvision / {args.mode} {statistics.median(ratios):.3f}x "
                  f"({min(ratios):.2f}-{max(ratios):.2f})", flush=True)


if __name__ == "__main__":
    main()
