import torch, time, statistics, resnet_ext
from resnet_ext import ops
import onnxruntime as ort, numpy as np
torch.set_num_threads(2)
for (c, k, s) in [(1024, 256, 14), (2048, 512, 7), (512, 128, 28), (256, 1024, 14)]:
    x = torch.randn(1, c, s, s).contiguous(memory_format=torch.channels_last)
    wt = torch.randn(k, c, 1, 1) * 0.05; b = torch.randn(k)
    wp = ops.conv1x1_weight(wt)
    f_ours = lambda: ops.conv1x1(x, wp, b, None, True)
    wcl = wt.contiguous(memory_format=torch.channels_last)
    f_dnn = lambda: torch.relu_(torch.nn.functional.conv2d(x, wcl, b))
    # ORT single conv+relu node
    import onnx
    from onnx import helper, TensorProto, numpy_helper
    g = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, s, s])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k, s, s])],
        [numpy_helper.from_array(wt.numpy(), "w"), numpy_helper.from_array(b.numpy(), "b")])
    mdl = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    sess = ort.InferenceSession(mdl.SerializeToString(), so, providers=["CPUExecutionProvider"])
    xn = x.contiguous().numpy()
    f_ort = lambda: sess.run(None, {"x": xn})
    ref = torch.relu(torch.nn.functional.conv2d(x, wt, b))
    print(c, k, s, "err ours", (f_ours() - ref).abs().max().item(), "dnn", (f_dnn() - ref).abs().max().item())
    ts = {"ours": [], "onednn": [], "ort(nchw in/out)": []}
    for r in range(30):
        for name, f in (("ours", f_ours), ("onednn", f_dnn), ("ort(nchw in/out)", f_ort)):
            f(); t = time.perf_counter()
            for _ in range(5): f()
            ts[name].append((time.perf_counter() - t) / 5 * 1e6)
    fl = 2 * s * s * c * k
    print("   " + "  ".join(f"{n} {statistics.median(v):7.1f} us ({fl/statistics.median(v)/1e3:5.0f} GF/s)" for n, v in ts.items()))
