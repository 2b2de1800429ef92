"""GPU check of resnet_ext's opt-in NHWC max pool (resnet_ext::max_pool_nhwc) against torch's channels_last max pool
on the stem's pooling (3x3, stride 2, padding 1 over 64 x 112 x 112) at batch 1, 32 and 256 in bf16 and fp16:
first equal to torch (NaN and inf included), then timed (torch.utils.benchmark), one verdict line per shape.
Usage: python benchmarks/max_pool_check.py   (CUDA)."""
import torch
import torch.nn.functional as F
from torch.utils import benchmark

import resnet_ext  # noqa: F401  (registers the op)

ARGS = ([3, 3], [2, 2], [1, 1], [1, 1])


def main() -> None:
    for dtype in (torch.bfloat16, torch.float16):
        for n in (1, 32, 256):
            x = torch.randn(n, 64, 112, 112, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
            x.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), float("-inf")], device="cuda", dtype=dtype)
            y = torch.ops.resnet_ext.max_pool_nhwc(x, *ARGS)
            ref = F.max_pool2d(x, *ARGS)
            ok = (torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(y.nan_to_num(), ref.nan_to_num())
                  and y.is_contiguous(memory_format=torch.channels_last))
            name = f"{str(dtype).replace('torch.', '')} n{n}"
            if not ok:
                print(f"verdict max_pool_nhwc {name}: WRONG against torch's max pool")
                continue
            ours = benchmark.Timer("op(x, *a)", globals={"op": torch.ops.resnet_ext.max_pool_nhwc, "x": x, "a": ARGS})
            stock = benchmark.Timer("F.max_pool2d(x, *a)", globals={"F": F, "x": x, "a": ARGS})
            t_ours, t_stock = ours.blocked_autorange(min_run_time=0.3).median, stock.blocked_autorange(
                min_run_time=0.3).median
            moved = (x.numel() + y.numel()) * x.element_size()
            print(f"verdict max_pool_nhwc {name}: {'faster' if t_ours < t_stock else 'SLOWER'} by "
                  f"{max(t_stock / t_ours, t_ours / t_stock):.2f}x ({t_ours * 1e3:.3f} vs torch {t_stock * 1e3:.3f} ms; "
                  f"{moved / t_ours / 1e12:.2f} TB/s over the bytes it must move)")


if __name__ == "__main__":
    main()
