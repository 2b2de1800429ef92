"""The frozen CPU forward with its settled plan replayed from C++ (`resnet_ext.cpu_replay`, B) against the same plan
run by its Python (A): one frozen model, the switch flipped between contenders, rounds alternating which goes first
(torch.utils.benchmark's blocked_autorange per round, 2 threads); per case the median ratio B/A over rounds and its
range, after checking that both give the same logits, bit for bit.
Usage: python benchmarks/cpu_replay_ab.py [ROUNDS] [ARCH ...]   (default 8 rounds, resnet50 and resnet101; idle
machine)."""
import statistics
import sys

import torch
import torchvision
from torch.utils import benchmark

import resnet_ext


def main() -> None:
    torch.set_num_threads(2)
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    archs = sys.argv[2:] or ["resnet50", "resnet101"]
    print(f"torch {torch.__version__}, 2 threads, {rounds} rounds; B/A: replayed / run by Python")
    for arch in archs:
        tv = getattr(torchvision.models, arch)().eval()
        for dtype in (torch.bfloat16, None):
            for batch in (1, 8):
                for cl in (True, False):
                    model = resnet_ext.freeze(resnet_ext.from_torchvision(tv), dtype=dtype)
                    x = torch.randn(batch, 3, 224, 224)
                    if cl:
                        x = x.contiguous(memory_format=torch.channels_last)
                    outs = {}
                    with torch.no_grad():
                        for on in (False, True, True, True):  # plan, then record and replay
                            resnet_ext.cpu_replay(on)
                            outs[on] = model(x)
                        resnet_ext.reset_path_counts()
                        model(x)
                        assert resnet_ext.path_counts().get("cpu_replays") == 1, resnet_ext.path_counts()
                        ta, tb = [], []
                        for r in range(rounds):
                            for on in ((False, True) if r % 2 == 0 else (True, False)):
                                resnet_ext.cpu_replay(on)
                                t = benchmark.Timer("m(x)", globals=dict(m=model, x=x), num_threads=2)
                                t = t.blocked_autorange(min_run_time=1 if batch == 1 else 3).median
                                (tb if on else ta).append(t)
                    resnet_ext.cpu_replay(True)
                    rs = sorted(b / a for a, b in zip(ta, tb))
                    print(f"{arch} {'bf16' if dtype else 'fp32'} batch {batch} {'channels_last' if cl else 'NCHW'}: "
                          f"A {statistics.median(ta) * 1e3:.2f} ms, B {statistics.median(tb) * 1e3:.2f} ms, "
                          f"B/A {statistics.median(rs):.3f} ({rs[0]:.3f}-{rs[-1]:.3f}), same logits "
                          f"{torch.equal(outs[False], outs[True])}", flush=True)


if __name__ == "__main__":
    main()
