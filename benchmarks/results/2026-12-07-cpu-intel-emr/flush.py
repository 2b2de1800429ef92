"""resnet50 fp32 batch 1, our frozen mode and ONNX Runtime (torchvision's model exported as `bench` does) in one
process, each timed call right after an untimed one of its own, as is ("warm") or after 600 MB were written
("L3 flushed"); 16 interleaved rounds. The first run read
the same export from /tmp/w/r50.onnx; the script now makes its own."""
import os, tempfile
import torch, torchvision, resnet_ext, time, statistics, copy
import onnxruntime as ort
torch.set_num_threads(2)
tv = torchvision.models.resnet50().eval()
m = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)))
x = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
so = ort.SessionOptions(); so.intra_op_num_threads = 2
path = os.path.join(tempfile.mkdtemp(prefix="resnet_ext_bench_"), "r50.onnx")
with torch.no_grad():
    torch.onnx.export(copy.deepcopy(tv), (x.contiguous(),), path, input_names=["x"], output_names=["y"], dynamo=False)
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
os.remove(path)
xi = x.contiguous().numpy()
big = torch.empty(600 * 2**20 // 4)
def flush(): big.add_(1.0)
f = {"ours": lambda: m(x), "ort": lambda: s.run(None, {"x": xi})}
res = {(k, fl): [] for k in f for fl in (False, True)}
with torch.inference_mode():
    for k in f: f[k](); f[k]()
    for r in range(16):
        for k in f:
            for fl in (False, True):
                f[k]()
                if fl: flush()
                t = time.perf_counter(); f[k](); res[(k, fl)].append((time.perf_counter() - t) * 1e3)
for (k, fl), v in res.items():
    print(f"{k:5s} {'L3 flushed' if fl else 'warm      '} median {statistics.median(v):6.2f} ms  min {min(v):6.2f}")
