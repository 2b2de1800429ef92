"""Whole models with and without the default mode's 3x3 GEMM units (`engine.cpu.gemm3x3_pays`): "new" (1x1 and 3x3
GEMM units as `gemm_pays` picks them) against "1x1" (the 3x3 rule off) and torchvision, channels_last input, the
model as constructed (NCHW weights) or converted to channels_last, interleaved rotated rounds in one process;
ratios per round, median (range).
Usage: python benchmarks/cpu_gemm3x3_ab.py [--archs resnet18,resnet50] [--dtypes float32,bfloat16]
       [--models nchw,cl] [--inputs 1x32,1x64,1x112,1x224,2x224] [--repeat 1]   (2 threads)."""
import argparse
import statistics

import torch
import torchvision

import resnet_ext
from resnet_ext.engine import cpu
from cpu_gemm_rule_ab import patched, ratio_text, time_with_units  # run as a script: benchmarks/ is on the path


def without_3x3(model):
    return patched(model, cpu, "gemm3x3_pays", lambda conv, x: False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="resnet18,resnet50")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--models", default="nchw,cl", help="the model's layouts: as constructed (nchw), converted (cl)")
    ap.add_argument("--inputs", default="1x32,1x64,1x112,1x224,2x224", help="BATCHxSIZE, each a configuration")
    ap.add_argument("--repeat", type=int, default=1, help="each configuration this many times, fresh models each")
    args = ap.parse_args()
    inputs = [tuple(int(v) for v in c.split("x")) for c in args.inputs.split(",")]
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, AMX_BF16 {cpu.AMX_BF16}")
    for arch in args.archs.split(","):
        for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
            for cl_model in [{"nchw": False, "cl": True}[m] for m in args.models.split(",")] * args.repeat:
                tv = getattr(torchvision.models, arch)().eval()
                models = {"tv": tv, "new": getattr(resnet_ext, arch)().eval(), "1x1": getattr(resnet_ext, arch)().eval()}
                for name, m in models.items():
                    if name != "tv":
                        m.load_state_dict(tv.state_dict())
                    m.to(dtype=dtype, memory_format=torch.channels_last if cl_model else torch.contiguous_format)
                fns = {"tv": tv, "new": models["new"], "1x1": without_3x3(models["1x1"])}
                for bs, size in inputs:
                    x = torch.randn(bs, 3, size, size, dtype=dtype).contiguous(memory_format=torch.channels_last)
                    rounds = 24 if size < 224 else 9
                    t, units = time_with_units(fns, x, rounds)

                    def ratio(a, b):
                        return ratio_text(t, a, b)
                    print(f"{arch} {str(dtype)[6:]} model {'CL' if cl_model else 'NCHW'} batch {bs} {size}x{size}: "
                          f"gemm units new {units['new']} 1x1 {units['1x1']}; ms "
                          + " ".join(f"{n} {statistics.median(t[n]) * 1e3:.2f}" for n in fns)
                          + f"; 1x1/new {ratio('1x1', 'new')}, tv/new {ratio('tv', 'new')}", flush=True)


if __name__ == "__main__":
    main()
