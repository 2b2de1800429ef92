import torch, copy, torchvision, resnet_ext, time, statistics, os, sys
import numpy as np
torch.manual_seed(0)
torch.set_num_threads(2)
n = int(sys.argv[1]); layout = sys.argv[2]; rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 10
tv = torchvision.models.resnet50().eval()
ours = resnet_ext.from_torchvision(tv)
fz = resnet_ext.freeze(copy.deepcopy(ours), dtype=torch.bfloat16)
fz32 = resnet_ext.freeze(copy.deepcopy(ours))
x = torch.randn(n,3,224,224)
if layout == "cl": x = x.contiguous(memory_format=torch.channels_last)
import openvino as ov
import tempfile
f = os.path.join(tempfile.gettempdir(), f"resnet_ext_r50_b{n}.onnx")
if not os.path.exists(f):
    torch.onnx.export(tv, x.contiguous(), f, dynamo=False, opset_version=17)
core = ov.Core()
cm = core.compile_model(core.read_model(f), "CPU", {"PERFORMANCE_HINT":"LATENCY","INFERENCE_PRECISION_HINT":"bf16", "INFERENCE_NUM_THREADS":"2"})
req = cm.create_infer_request(); xn = x.contiguous().numpy()
def wino_on(): resnet_ext.cpu_winograd(True); return fz(x)
def wino_off(): resnet_ext.cpu_winograd(False); return fz(x)
def ovr(): return req.infer({0: xn})
def f32_on(): resnet_ext.cpu_winograd(True); return fz32(x)
def f32_off(): resnet_ext.cpu_winograd(False); return fz32(x)
cont = {"bf16 wino": wino_on, "bf16 onednn": wino_off, "openvino bf16": ovr, "fp32 wino": f32_on, "fp32 onednn": f32_off}
times = {k: [] for k in cont}
with torch.no_grad():
    for k, fn in cont.items():
        for _ in range(3): fn()
    for r in range(rounds):
        for k, fn in cont.items():
            t = time.perf_counter(); fn(); fn(); times[k].append((time.perf_counter() - t) / 2)
resnet_ext.cpu_winograd(True)
med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
print(f"batch {n} {layout}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()))
for a, b in (("bf16 onednn", "bf16 wino"), ("openvino bf16", "bf16 wino"), ("fp32 onednn", "fp32 wino")):
    rs = sorted(x / y for x, y in zip(times[a], times[b]))
    print(f"   {a} / {b}: median {statistics.median(rs):.3f}x (range {rs[0]:.3f}-{rs[-1]:.3f})")
