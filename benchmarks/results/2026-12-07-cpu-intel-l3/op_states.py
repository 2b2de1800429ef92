"""resnet_ext.ops.conv1x1 on resnet50's deep 1x1 shapes at batch 1 (2 threads), by where its operands are when it
starts: "hot" (the same call just before), "prev" (its input just rewritten by the previous 1x1, as in a forward:
each core writing half of every pixel's channels), "l2cold" (32 MB written: weight and input out of both 2 MB L2s,
still in L3), "memcold" (600 MB written: out of L3 too). Interleaved rounds, per-round medians of 5 calls (2 for
memcold). Usage: python op_states.py [ROUNDS]"""
import statistics, sys, time, torch, resnet_ext
from resnet_ext import ops
torch.set_num_threads(2)
junk_l2, junk_mem = torch.randn(8 << 20), torch.empty(150 << 20)
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
for (c, k, s, c0) in [(2048, 512, 7, 512), (1024, 256, 14, 256), (512, 2048, 7, 512), (256, 1024, 14, 256)]:
    x0 = torch.randn(1, c0, s, s).contiguous(memory_format=torch.channels_last)
    w0, b0 = ops.conv1x1_weight(torch.randn(c, c0, 1, 1) * 0.05), torch.randn(c)
    x = ops.conv1x1(x0, w0, b0, None, True)
    wp, b = ops.conv1x1_weight(torch.randn(k, c, 1, 1) * 0.05), torch.randn(k)
    states = {"hot": lambda: None, "prev": lambda: ops.conv1x1_add_(x, x0, w0, b0, True),
              "l2cold": lambda: junk_l2.mul_(1.0), "memcold": lambda: junk_mem.fill_(1.0)}
    ts = {n: [] for n in states}
    for r in range(rounds):
        for n, pre in states.items():
            v = []
            for _ in range(2 if n == "memcold" else 5):
                pre()
                t = time.perf_counter()
                ops.conv1x1(x, wp, b, None, True)
                v.append(time.perf_counter() - t)
            ts[n].append(statistics.median(v) * 1e6)
    fl = 2 * s * s * c * k
    print(f"{c:5d}->{k:5d} @{s:2d}: " + "  ".join(
        f"{n} {statistics.median(v):4.0f} us ({fl / statistics.median(v) / 1e3:3.0f} GF/s)" for n, v in ts.items()),
        flush=True)
