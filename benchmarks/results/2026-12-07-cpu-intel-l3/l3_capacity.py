"""How much of this VM's L3 a repeated read keeps: sum() of a float32 tensor of each size, 2 threads, right after two
untimed sums of it (medians of 7). In-cache sizes read at L3 speed, larger ones at memory speed (a cyclic read of
more than the cache holds misses throughout)."""
import statistics
import time

import torch

torch.set_num_threads(2)
for mb in (4, 16, 32, 64, 72, 80, 88, 96, 104, 112, 128, 192, 256, 512):
    t = torch.ones(mb << 18)
    t.sum(); t.sum()
    v = []
    for _ in range(7):
        s = time.perf_counter(); t.sum(); v.append(time.perf_counter() - s)
    print(f"{mb:4d} MB: {mb / 1024 / statistics.median(v):6.1f} GB/s (repeated sum, 2 threads)")
