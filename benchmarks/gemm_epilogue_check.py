"""GPU check of the sm_90a GEMMs' fp32 scale/shift epilogue (#24 item 2; conv_bn_act's scale and shift with each
GEMM kernel forced, experimental build): on every 1x1 stride-1 layer of resnet50 at batch 256 in bf16, the unfolded
epilogue (16-bit weight, fp32 scale and shift) first against an fp32 reference, then timed against the same
kernel's folded epilogue (bias only) and against the stock unfolded composition (cuDNN's 1x1 conv, then BN's scale
and shift in fp32, as torchvision computes it), with the residual and ReLU where the layer has them. One verdict
line per layer and configuration. Usage: python benchmarks/gemm_epilogue_check.py   (an sm_90 GPU)."""
import torch
import torch.nn.functional as F
from torch.utils import benchmark

import resnet_ext
from resnet_ext._C_loader import _C
from resnet_ext.shapes import conv_shapes

TOL = 1e-2  # bf16 output: the tests' bound (tests/test_cuda_gemm_sm90.py)
CL = torch.channels_last


def main() -> None:
    names = [k for k in resnet_ext.build_info()["fused_kernels"] if k.startswith("sm90_gemm_bf16_")]
    shapes = list(dict.fromkeys(s.with_batch(256) for s in conv_shapes("resnet50")
                                if s.R == 1 and s.S == 1 and s.stride == 1 and s.groups == 1))
    g = torch.Generator(device="cuda").manual_seed(0)
    op = resnet_ext.conv_bn_act
    for s in shapes:
        x = torch.randn(s.N, s.C, s.H, s.W, device="cuda", generator=g).bfloat16().contiguous(memory_format=CL)
        w = (torch.randn(s.K, s.C, 1, 1, device="cuda", generator=g) * s.C ** -0.5).bfloat16()
        scale = torch.rand(s.K, device="cuda", generator=g) + 0.5
        shift = torch.randn(s.K, device="cuda", generator=g) * 0.2
        bias = shift.bfloat16()  # the folded epilogue's operand (timing only)
        r = torch.randn(s.N, s.K, s.H, s.W, device="cuda", generator=g).bfloat16().contiguous(memory_format=CL) \
            if s.residual else None
        relu = s.relu or r is not None
        ref = F.conv2d(x.float(), w.float()) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        ref = ref + (r.float() if r is not None else 0)
        ref = torch.relu(ref) if relu else ref

        def stock():  # cuDNN's conv, then BN's fp32 scale and shift, add, ReLU (torchvision's unfolded unit)
            y = F.conv2d(x, w).float() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
            if r is not None:
                y = y + r.float()
            return (torch.relu(y) if relu else y).bfloat16()

        t_stock = benchmark.Timer("f()", globals={"f": stock}).blocked_autorange(min_run_time=0.2).median
        for name in names:
            _C.force_kernel(name)
            try:
                path, why = resnet_ext.explain(x, w, None, r, 1, 0, 1, relu, 1, scale, shift)
                tag = f"{s.name} {name}"
                if path != f"fused:{name}":
                    print(f"verdict gemm_epilogue {tag}: NOT RUN ({path}: {why})")
                    continue
                y = op(x, w, None, r, 1, 0, 1, relu, scale=scale, shift=shift)
                err = ((y.float() - ref).norm() / ref.norm()).item()
                if not err <= TOL:
                    print(f"verdict gemm_epilogue {tag}: WRONG (rel err {err:.1e})")
                    continue
                t_unf = benchmark.Timer("op(x, w, None, r, 1, 0, 1, relu, scale=sc, shift=sh)", globals=dict(
                    op=op, x=x, w=w, sc=scale, sh=shift, r=r, relu=relu)).blocked_autorange(min_run_time=0.2).median
                t_fold = benchmark.Timer("op(x, w, b, r, 1, 0, 1, relu)", globals=dict(
                    op=op, x=x, w=w, b=bias, r=r, relu=relu)).blocked_autorange(min_run_time=0.2).median
            finally:
                _C.force_kernel("")
            print(f"verdict gemm_epilogue {tag}: {t_unf * 1e3:.3f} ms unfolded, {t_fold / t_unf:.2f}x the folded "
                  f"epilogue ({t_fold * 1e3:.3f} ms), {t_stock / t_unf:.2f}x stock cuDNN + fp32 BN "
                  f"({t_stock * 1e3:.3f} ms): {'faster' if t_unf < t_stock else 'SLOWER'} than stock; rel err {err:.1e}")


if __name__ == "__main__":
    main()
