import torch, torchvision, resnet_ext, json, collections
import onnxruntime as ort
torch.set_num_threads(2)
tv = torchvision.models.resnet50().eval()
m = resnet_ext.freeze(resnet_ext.from_torchvision(__import__("copy").deepcopy(tv)))
x = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
from torch.profiler import profile, ProfilerActivity
with torch.inference_mode():
    for _ in range(5): m(x)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        for _ in range(10): m(x)
rows = collections.defaultdict(list)
for e in p.events():
    if e.name in ("mkldnn::_convolution_pointwise", "resnet_ext::winograd3x3", "resnet_ext::conv1x1", "resnet_ext::conv1x1_add_"):
        sh = e.input_shapes
        rows[(e.name.split("::")[1], str(sh[0]), str(sh[1]) if len(sh) > 1 else "")].append(e.cpu_time_total)
for k, v in sorted(rows.items(), key=lambda kv: -sum(kv[1])):
    print(f"{k[0]:24s} in {k[1]:22s} w {k[2]:22s} n/fwd {len(v)//10:2d} {sum(v)/10/1e3:6.2f} ms/fwd")
s = ort.InferenceSession("/tmp/w/r50.onnx", providers=["CPUExecutionProvider"])
so = ort.SessionOptions(); so.enable_profiling = True; so.intra_op_num_threads = 2; so.profile_file_prefix = "/tmp/w/ortprof2"
s = ort.InferenceSession("/tmp/w/r50.onnx", so, providers=["CPUExecutionProvider"])
xi = x.contiguous().numpy()
for _ in range(11): s.run(None, {"x": xi})
ev = json.load(open(s.end_profiling()))
per = collections.defaultdict(float); shp = {}
for e in ev:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["args"]["op_name"] == "Conv":
        per[e["name"]] += e["dur"]; shp[e["name"]] = (e["args"].get("input_type_shape"), e["args"].get("output_type_shape"))
for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:60]:
    ins = shp[k][0]; 
    print(f"ORT {k[:-12]:45s} {v/11/1e3:6.2f} ms  {json.dumps(ins)[:90]}")
