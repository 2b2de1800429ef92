"""What the default mode's per-forward BN fold (`ops.bn_affine_pairs`, every BN read afresh) costs inside a whole
forward at small inputs: torchvision, the default mode ("ours": the fold reused where every BN tensor's bytes are
unchanged), the fold computed afresh on every call ("fresh": the default mode before that reuse), and the fold
computed once and reused unchecked ("memo": an upper bound, not a valid mode: it would miss a BN changed through
`.data`). Channels_last model and input, interleaved rotated rounds, ratios per round (median).
Usage: python benchmarks/cpu_fold_cost.py [ARCH] [SIZE] [DTYPE]   (2 threads; default resnet18 32 float32)."""
import copy
import statistics
import sys

import torch
import torchvision

import resnet_ext
from resnet_ext import ops
from resnet_ext.cli import time_interleaved
from cpu_gemm_rule_ab import patched  # run as a script: benchmarks/ is on the path

ORIG = ops.bn_affine_pairs


def with_fold(model, fold):
    return patched(model, ops, "bn_affine_pairs", fold)


def main() -> None:
    torch.set_num_threads(2)
    arch = sys.argv[1] if len(sys.argv) > 1 else "resnet18"
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    dtype = getattr(torch, sys.argv[3]) if len(sys.argv) > 3 else torch.float32
    unchecked = {}

    def memoized(pairs, conv_bias=True, input_dtype=None, memo=None):
        key = (id(pairs[0][1]), len(pairs), conv_bias, input_dtype)
        if key not in unchecked:
            unchecked[key] = ORIG(pairs, conv_bias, input_dtype)
        return unchecked[key]

    def fresh(pairs, conv_bias=True, input_dtype=None, memo=None):
        return ORIG(pairs, conv_bias, input_dtype)

    print(f"torch {torch.__version__}, {arch} {str(dtype)[6:]} batch 1 {size}x{size}, channels_last")
    for _ in range(5):
        tv = getattr(torchvision.models, arch)().eval().to(dtype=dtype, memory_format=torch.channels_last)
        ours = getattr(resnet_ext, arch)().eval().to(dtype=dtype, memory_format=torch.channels_last)
        ours.load_state_dict(tv.state_dict())
        # Every contender a deep copy, made one after another: where a model's tensors lie moved its time by 2-3%
        # (the constructed model against its own deep copy, resnet18 32x32).
        fns = {"tv": copy.deepcopy(tv), "ours": copy.deepcopy(ours), "fresh": with_fold(copy.deepcopy(ours), fresh),
               "memo": with_fold(copy.deepcopy(ours), memoized)}
        x = torch.randn(1, 3, size, size, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            t, _ = time_interleaved(fns, x, 100, {k: 10 for k in fns})

        def r(a, b):
            return statistics.median(p / q for p, q in zip(t[a], t[b]))
        print("ms " + " ".join(f"{k} {1e3 * statistics.median(v):.2f}" for k, v in t.items())
              + f"; tv/ours {r('tv', 'ours'):.3f} tv/fresh {r('tv', 'fresh'):.3f} tv/memo {r('tv', 'memo'):.3f}"
              + f" ours/memo {r('ours', 'memo'):.3f}", flush=True)


if __name__ == "__main__":
    main()
