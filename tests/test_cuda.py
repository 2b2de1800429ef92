"""GPU proofs of the fused inference kernels (skipped without a CUDA device; run by benchmarks/gpu_check.sh).

Every distinct conv shape of resnet50/101 (and the dilated variant) x {fp16, bf16} x {no residual, residual}
x batch {1, 7, 64} against a float32 reference of stock ops, with outputs poisoned with NaN before each launch;
TF32 for fp32; whole models against torchvision; CUDA graphs; fallbacks; the autotuner. The dispatcher on the
GPU: explain() names the path each call takes for every layout variant (NCHW, misaligned, strided bias, NCHW
weight/residual) of tuned and untuned problems, with right results; a failing autotune candidate is rejected;
unverified kernels are never picked unforced; opcheck of every op on CUDA."""

from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

import resnet_ext
from conftest import randomize_bn, rel_err, requires_cuda, requires_experimental
from resnet_ext._C_loader import _C
from resnet_ext.shapes import ConvShape, conv_shapes

pytestmark = requires_cuda

TOL = {torch.float16: 3e-3, torch.bfloat16: 1e-2, torch.float32: 3e-3}
SHAPES = list(dict.fromkeys(
    [s.with_batch(1) for s in conv_shapes("resnet50") + conv_shapes("resnet101")
     + conv_shapes("resnet50", replace_stride_with_dilation=[False, True, True])]))
CL = torch.channels_last


@pytest.fixture(autouse=True)
def poison_outputs():
    """Fused outputs NaN-filled before each launch, where the build has the hook (RESNET_EXT_EXPERIMENTAL=1, as
    gpu_check.sh builds); a default build's tests run on fresh allocations."""
    if not resnet_ext.ops.EXPERIMENTAL:
        yield
        return
    _C.set_poison_outputs(True)
    yield
    _C.set_poison_outputs(False)


@pytest.fixture
def cutlass_only():
    """resnet_ext's own kernels on every layer they can run (no hand-over to cuDNN's fused ops)."""
    resnet_ext.prefer_cudnn(False)
    yield
    resnet_ext.prefer_cudnn(True)


def make_inputs(s, dtype, residual, seed=0):
    return s.inputs(dtype, residual, seed=seed)


def reference_fp32(x, w, b, r, s, relu):
    return s.reference_fp32(x, w, b, r, relu)


def check(s, dtype, residual, batch):
    s = s.with_batch(batch)
    relu = True if residual else s.relu
    x, w, b, r = make_inputs(s, dtype, residual, seed=batch)
    path, reason = resnet_ext.explain(x, w, b, r, s.stride, s.padding, s.dilation, relu)
    y = resnet_ext.conv_bn_act(x, w, b, r, s.stride, s.padding, s.dilation, relu)
    torch.cuda.synchronize()
    err = rel_err(y, reference_fp32(x, w, b, r, s, relu))
    assert err <= TOL[dtype], f"{s.name} {dtype} residual={residual}: rel err {err:.2e} via {path} ({reason})"
    if s.C % 8 == 0:
        assert path.startswith("fused:"), f"{s.name}: expected a fused kernel, got {path} ({reason})"
    assert y.is_contiguous(memory_format=CL) or s.N * s.P * s.Q == 1


@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("s", SHAPES, ids=lambda s: s.name)
def test_conv_bn_act_16bit_matches_fp32_reference(s, dtype, residual, batch, cutlass_only):
    check(s, dtype, residual, batch)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("s", SHAPES, ids=lambda s: s.name)
def test_conv_bn_act_tf32_matches_fp32_reference(s, residual, cutlass_only):
    assert torch.backends.cudnn.allow_tf32
    check(s, torch.float32, residual, 7)


@pytest.mark.parametrize("s", SHAPES, ids=lambda s: s.name)
def test_default_dispatch_matches_fp32_reference(s):
    """The default choice per layer (on Hopper: cuDNN's fused ops for ReLU layers, ours for the rest)."""
    sm = torch.cuda.get_device_capability()[0] * 10 + torch.cuda.get_device_capability()[1]
    s7 = s.with_batch(7)
    for residual in (False, True):
        relu = True if residual else s.relu
        x, w, b, r = make_inputs(s7, torch.bfloat16, residual)
        path, reason = resnet_ext.explain(x, w, b, r, s.stride, s.padding, s.dilation, relu)
        y = resnet_ext.conv_bn_act(x, w, b, r, s.stride, s.padding, s.dilation, relu)
        assert rel_err(y, reference_fp32(x, w, b, r, s7, relu)) <= 1e-2, (s.name, path)
        assert path != "stock", (s.name, reason)  # ours or cuDNN's fused op, never the unfused composition
        if sm >= 90 and relu and s.C % 8 == 0:
            assert path == "cudnn_fused", (s.name, path)
        elif s.C % 8 == 0:
            assert path.startswith("fused:"), (s.name, path)


# The sm_90a conv kernels (the 1x1-only GEMM kernels have their own tests: tests/test_cuda_gemm_sm90.py).
SM90_KERNELS = [k for k in resnet_ext.build_info()["fused_kernels"]
                if k.startswith("sm90_") and not k.startswith("sm90_gemm_")]


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                    reason="Hopper kernels need an sm_90 GPU")
@pytest.mark.parametrize("kernel", SM90_KERNELS)
@pytest.mark.parametrize("s", SHAPES, ids=lambda s: s.name)
def test_hopper_kernels_match_fp32_reference(s, kernel):
    dtype = torch.bfloat16 if "_bf16_" in kernel else torch.float16
    relu = "_relu_" in kernel
    if s.C % 8 or (not relu and s.residual):
        pytest.skip("kernel does not apply")
    _C.force_kernel(kernel)
    try:
        for batch, residual in ((1, False), (7, relu), (64, relu)):
            s_b = s.with_batch(batch)
            x, w, b, r = make_inputs(s_b, dtype, residual, seed=batch)
            path, reason = resnet_ext.explain(x, w, b, r, s.stride, s.padding, s.dilation, relu)
            assert path == f"fused:{kernel}", (s.name, path, reason)
            y = resnet_ext.conv_bn_act(x, w, b, r, s.stride, s.padding, s.dilation, relu)
            torch.cuda.synchronize()
            err = rel_err(y, reference_fp32(x, w, b, r, s_b, relu))
            assert err <= TOL[dtype], f"{kernel} {s_b.name} residual={residual}: rel err {err:.2e}"
    finally:
        _C.force_kernel("")


# The few-channel kernels (#24.1: the stem; x and weight padded to 4 channels in the workspace), opt-in until this
# passes on a GPU: the stem at batch 1/7/64/256, odd sizes, 1-2 channels, with and without ReLU.
STEM_KERNELS = [k for k in resnet_ext.build_info()["fused_kernels"] if k.startswith("sm80c4_")]
STEM = conv_shapes("resnet50")[0]
STEM_CASES = ([STEM.with_batch(n) for n in (1, 7, 64, 256)]
              + [ConvShape(**{**asdict(STEM), **over}) for over in (dict(N=3, H=97, W=61), dict(N=2, C=1, H=33, W=35),
                                                                      dict(N=5, C=2, H=40, W=41, relu=False))])


@requires_experimental  # the kernels and the poisoning hook
@pytest.mark.parametrize("kernel", STEM_KERNELS)
@pytest.mark.parametrize("s", STEM_CASES, ids=lambda s: f"{s.name}-N{s.N}-C{s.C}-{s.H}x{s.W}")
def test_stem_kernels_match_fp32_reference(s, kernel):
    dtype = torch.bfloat16 if "_bf16_" in kernel else torch.float16
    _C.force_kernel(kernel)
    try:
        x, w, b, r = make_inputs(s, dtype, False, seed=s.N)
        args = (x, w, b, None, s.stride, s.padding, s.dilation, s.relu)
        path, reason = resnet_ext.explain(*args)
        assert path == f"fused:{kernel}", (path, reason)
        y = resnet_ext.conv_bn_act(*args)
        torch.cuda.synchronize()
        err = rel_err(y, reference_fp32(x, w, b, None, s, s.relu))
        assert err <= TOL[dtype], f"{kernel} {s}: rel err {err:.2e}"  # NaN (a poisoned output left) fails too
        assert y.is_contiguous(memory_format=CL)
    finally:
        _C.force_kernel("")


def test_fp32_without_tf32_takes_a_fallback():
    s = SHAPES[2].with_batch(2)
    x, w, b, r = make_inputs(s, torch.float32, False)
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        path, reason = resnet_ext.explain(x, w, b, r, s.stride, s.padding, s.dilation, True)
    finally:
        torch.backends.cudnn.allow_tf32 = old
    assert path in ("stock", "cudnn_fused") and "allow_tf32" in reason


def test_fallbacks_are_correct_and_explained(cutlass_only):
    s = SHAPES[2].with_batch(3)
    x, w, b, r = make_inputs(s, torch.bfloat16, True)
    ref = reference_fp32(x, w, b, r, s, True)
    # NCHW input
    xn = x.contiguous()
    path, reason = resnet_ext.explain(xn, w, b, r, s.stride, s.padding, s.dilation, True)
    assert path == "cudnn_fused" and "channels_last" in reason
    assert rel_err(resnet_ext.conv_bn_act(xn, w, b, r, s.stride, s.padding, s.dilation, True), ref) <= 1e-2
    # A misaligned data pointer (a channels_last view one element into its storage)
    base = torch.empty(x.numel() + 1, dtype=x.dtype, device="cuda")[1:]
    xm = base.as_strided(x.shape, x.stride()).copy_(x)
    path, reason = resnet_ext.explain(xm, w, b, r, s.stride, s.padding, s.dilation, True)
    assert path == "cudnn_fused" and "aligned" in reason
    assert rel_err(resnet_ext.conv_bn_act(xm, w, b, r, s.stride, s.padding, s.dilation, True), ref) <= 1e-2
    # An NCHW weight is converted to KRSC and still runs fused
    path, _ = resnet_ext.explain(x, w.contiguous(), b, r, s.stride, s.padding, s.dilation, True)
    assert path.startswith("fused:")
    assert rel_err(resnet_ext.conv_bn_act(x, w.contiguous(), b, r, s.stride, s.padding, s.dilation, True),
                   ref) <= 1e-2
    # No bias
    y = resnet_ext.conv_bn_act(x, w, None, r, s.stride, s.padding, s.dilation, True)
    assert rel_err(y, reference_fp32(x, w, torch.zeros_like(b), r, s, True)) <= 1e-2


def _model_pair(arch, dtype):
    import torchvision

    torch.manual_seed(0)
    tv = randomize_bn(getattr(torchvision.models, arch)())
    ours = getattr(resnet_ext, arch)()
    ours.load_state_dict(tv.state_dict())
    tv = tv.cuda().to(dtype).to(memory_format=CL).eval()
    ours = ours.cuda().to(dtype).to(memory_format=CL).eval()
    return ours, tv


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
def test_model_eval_matches_torchvision(arch, dtype):
    ours, tv = _model_pair(arch, dtype)
    x = torch.randn(256, 3, 224, 224, device="cuda").to(dtype).contiguous(memory_format=CL)
    resnet_ext.reset_path_counts()
    with torch.inference_mode():
        y, ref = ours(x).float(), tv(x).float()
        ref32 = _fp32_reference(tv, x).float()  # fp32 without TF32
    counts = resnet_ext.path_counts()
    ours_err, tv_err = rel_err(y, ref32), rel_err(ref, ref32)
    agree = (y.argmax(1) == ref.argmax(1)).float().mean().item()
    norm = (y - ref32).norm().item() / (ref - ref32).norm().item()  # the ratio with ||.|| instead of max |.|
    print(f"\n{arch} {dtype}: ours vs fp32 {ours_err:.2e}, torchvision {dtype} vs its fp32 {tv_err:.2e} "
          f"(ratio {ours_err / tv_err:.3f}; with norms {norm:.3f}); ours vs torchvision {rel_err(y, ref):.2e}; "
          f"top-1 agreement {agree:.4f} (information only); paths {counts}")
    # Every conv ran one fused kernel: ours or cuDNN's fused conv+bias+ReLU(+add); never the unfused composition.
    assert "stock:cuda" not in counts and sum(counts.values()) == sum(
        isinstance(m, torch.nn.Conv2d) for m in ours.modules())
    # Judged against torchvision's own error in this dtype (random weights give tiny logit margins, so top-1
    # agreement between two 16-bit runs is noise, not a criterion).
    assert ours_err <= 1.25 * tv_err, (ours_err, tv_err)


def test_cuda_graph_capture_of_a_model_forward():
    ours, _ = _model_pair("resnet50", torch.bfloat16)
    x = torch.randn(8, 3, 224, 224, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=CL)
    with torch.inference_mode():
        eager = ours(x).clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                ours(x)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = ours(x)
        x.copy_(torch.randn_like(x))
        graph.replay()
        fresh = ours(x)
        torch.cuda.synchronize()
    # The replay computed the new input: it matches an eager forward of it, and differs from the old output far
    # more than from that (a random-init ResNet's outputs differ little between random inputs: 6e-3 on an H200).
    assert rel_err(out, fresh) <= 1e-3
    assert rel_err(out, eager) > max(10 * rel_err(out, fresh), 1e-3), (rel_err(out, eager), rel_err(out, fresh))


def _fp32_reference(model, x):
    """The same model and input in fp32 without TF32: the yardstick for eager and compiled bf16 runs alike (the
    compiled graph folds BN in its own kernels, so its bf16 weights may round differently from eager's)."""
    import copy

    ref_model = copy.deepcopy(model).float()
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            return ref_model(x.float())
    finally:
        torch.backends.cudnn.allow_tf32 = old


def test_compile_of_cuda_model_matches_eager():
    ours, _ = _model_pair("resnet50", torch.bfloat16)
    x = torch.randn(4, 3, 224, 224, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=CL)
    with torch.no_grad():
        eager = ours(x)
        out = torch.compile(ours, fullgraph=True)(x)
    ref = _fp32_reference(ours, x)
    print(f"\ncompile: rel err vs eager {rel_err(out, eager):.2e}, vs fp32 {rel_err(out, ref):.2e} "
          f"(eager vs fp32 {rel_err(eager, ref):.2e})")
    assert rel_err(out, ref) <= max(2 * rel_err(eager, ref), 1e-2)


def test_compile_fullgraph_amp_training_step_matches_eager(train_mode):
    """resnet50 training on CUDA under torch.compile(fullgraph=True): the fused BN(+add)+ReLU ops in the graph,
    AMP bf16, channels_last; outputs, gradients and running statistics against the same step run eagerly."""
    torch.manual_seed(0)
    eager = resnet_ext.resnet50(num_classes=100)
    compiled = resnet_ext.resnet50(num_classes=100)
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(8, 3, 128, 128, device="cuda").contiguous(memory_format=CL)
    target = torch.randint(0, 100, (8,), device="cuda")
    results = []
    for model, fn in ((eager, None), (compiled, "compile")):
        model.cuda().to(memory_format=CL).train()
        fwd = torch.compile(model, fullgraph=True) if fn else model
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fwd(x)
            loss = F.cross_entropy(out, target)
        loss.backward()
        results.append(out.float())
    print(f"\ncompiled train step: out rel err {rel_err(results[1], results[0]):.2e}, conv1 grad "
          f"{rel_err(compiled.conv1.weight.grad, eager.conv1.weight.grad):.2e}")
    assert rel_err(results[1], results[0]) <= 2e-2
    assert rel_err(compiled.fc.weight.grad, eager.fc.weight.grad) <= 3e-2
    assert rel_err(compiled.conv1.weight.grad, eager.conv1.weight.grad) <= 5e-2
    assert rel_err(compiled.layer2[0].bn2.running_var, eager.layer2[0].bn2.running_var) <= 1e-3
    assert int(compiled.layer2[0].bn2.num_batches_tracked) == 1


def test_compile_reduce_overhead_cuda_graphs_match_eager():
    ours, _ = _model_pair("resnet50", torch.bfloat16)
    x = torch.randn(8, 3, 224, 224, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=CL)
    with torch.no_grad():
        ref = ours(x).clone()
        graphed = torch.compile(ours, mode="reduce-overhead")
        for _ in range(3):  # warm-up, record, replay
            out = graphed(x)
        out = out.clone()
    ref32 = _fp32_reference(ours, x)
    print(f"\nreduce-overhead: rel err vs eager {rel_err(out, ref):.2e}, vs fp32 {rel_err(out, ref32):.2e}")
    assert rel_err(out, ref32) <= max(2 * rel_err(ref, ref32), 1e-2)


# Last: the one test that synchronises inside the op (timing runs).
def test_autotuner_checks_and_caches(cutlass_only):
    s = SHAPES[5].with_batch(16)
    x, w, b, r = make_inputs(s, torch.float16, s.residual)
    _C.clear_autotune_cache()
    resnet_ext.autotune(True)
    try:
        y = resnet_ext.conv_bn_act(x, w, b, r, s.stride, s.padding, s.dilation, s.relu)
        path, reason = resnet_ext.explain(x, w, b, r, s.stride, s.padding, s.dilation, s.relu)
    finally:
        resnet_ext.autotune(False)
    assert "autotuned" in reason, reason
    assert rel_err(y, reference_fp32(x, w, b, r, s, s.relu)) <= 3e-3


# ---- the dispatcher on the GPU: every choice re-checked, explain agrees with the launch (issue #11) ----------------

def _path_taken(fn):
    """The one path a single eager conv_bn_act call took, as explain() names it."""
    resnet_ext.reset_path_counts()
    y = fn()
    torch.cuda.synchronize()
    counts = resnet_ext.path_counts()
    assert sum(counts.values()) == 1, counts
    [key] = counts
    return y, key[:-len(":cuda")] if key.endswith(":cuda") else key


def _variants(s, dtype):
    """The same problem with its operands in layouts the fused kernels must not (or may) be run on."""
    x, w, b, r = make_inputs(s, dtype, s.residual)
    base = torch.empty(x.numel() + 1, dtype=x.dtype, device="cuda")[1:]
    misaligned = base.as_strided(x.shape, x.stride()).copy_(x)
    wide_b = torch.zeros(2 * b.numel(), dtype=b.dtype, device="cuda")
    wide_b[::2] = b
    yield "channels_last", (x, w, b, r)
    yield "nchw", (x.contiguous(), w, b, r)
    yield "misaligned", (misaligned, w, b, r)
    yield "strided_bias", (x, w, wide_b[::2], r)
    yield "nchw_weight", (x, w.contiguous(), b, r)
    yield "no_bias", (x, w, None, r)
    if r is not None:
        yield "nchw_residual", (x, w, b, r.contiguous())


@pytest.mark.parametrize("autotune", [False, True], ids=["heuristic", "autotuned"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "tf32"])
def test_explain_agrees_with_the_path_taken_and_results_are_right(dtype, autotune, cutlass_only):
    """For every layout variant of tuned and untuned shapes: explain() names the path the call then takes, and the
    output matches the fp32 reference (an NCHW or misaligned call of a tuned shape, or a strided bias, used to run
    the NHWC kernel on the wrong memory)."""
    resnet_ext.autotune(autotune)
    _C.clear_autotune_cache()
    try:
        for s in [SHAPES[2].with_batch(4), next(s for s in SHAPES if s.residual).with_batch(4)]:
            relu = True if s.residual else s.relu
            for name, (x, w, b, r) in _variants(s, dtype):
                # Tune the packed channels_last call first, then the variants hit (or miss) its cache entry.
                args = (x, w, b, r, s.stride, s.padding, s.dilation, relu)
                resnet_ext.conv_bn_act(*args)
                path, reason = resnet_ext.explain(*args)
                y, taken = _path_taken(lambda: resnet_ext.conv_bn_act(*args))
                assert taken == path, (s.name, name, path, taken, reason)
                ref = reference_fp32(x, w, torch.zeros_like(w[:, 0, 0, 0]) if b is None else b, r, s, relu)
                assert rel_err(y, ref) <= TOL[dtype], (s.name, name, path)
                if name in ("nchw", "misaligned", "nchw_residual"):
                    assert not path.startswith("fused:"), (s.name, name, path, reason)
                if name in ("channels_last", "strided_bias", "nchw_weight", "no_bias") and not autotune:
                    assert path.startswith("fused:"), (s.name, name, path, reason)  # copied operands: still fused
    finally:
        resnet_ext.autotune(False)
        _C.clear_autotune_cache()


def test_strided_bias_is_right_on_cuda(cutlass_only):
    s = SHAPES[2].with_batch(2)
    x, w, b, _ = make_inputs(s, torch.float16, False)
    wide = torch.randn(2 * s.K, device="cuda", dtype=torch.float16)
    path, reason = resnet_ext.explain(x, w, wide[::2], None, s.stride, s.padding, s.dilation, True)
    assert path.startswith("fused:"), (path, reason)  # the bias is copied dense: still our kernel, now right
    y = resnet_ext.conv_bn_act(x, w, wide[::2], None, s.stride, s.padding, s.dilation, True)
    assert rel_err(y, reference_fp32(x, w, wide[::2], None, s, True)) <= TOL[torch.float16]


@requires_experimental  # set_failing_kernel: a test hook
def test_autotune_candidate_whose_launch_fails_is_rejected_not_thrown(cutlass_only):
    s = SHAPES[5].with_batch(8)
    x, w, b, r = make_inputs(s, torch.float16, s.residual)
    args = (x, w, b, r, s.stride, s.padding, s.dilation, s.relu)
    resnet_ext.reset_path_counts()
    heuristic = resnet_ext.explain(*args)[0]
    assert heuristic.startswith("fused:")
    _C.set_failing_kernel(heuristic[len("fused:"):])
    _C.clear_autotune_cache()
    resnet_ext.autotune(True)
    try:
        y = resnet_ext.conv_bn_act(*args)  # tunes: the failing candidate is rejected, the call goes on
        path, reason = resnet_ext.explain(*args)
    finally:
        resnet_ext.autotune(False)
        _C.set_failing_kernel("")
        _C.clear_autotune_cache()
    assert heuristic[len("fused:"):] in reason and "launch failed" in reason, reason
    assert path != heuristic
    assert rel_err(y, reference_fp32(x, w, b, r, s, s.relu)) <= TOL[torch.float16]


def test_dispatcher_never_picks_an_unverified_kernel_on_its_own(cutlass_only):
    sm = torch.cuda.get_device_capability()
    sm = sm[0] * 10 + sm[1]
    for s in SHAPES:
        for dtype in (torch.bfloat16, torch.float16):
            x, w, b, r = make_inputs(s.with_batch(2), dtype, s.residual)
            path, reason = resnet_ext.explain(x, w, b, r, s.stride, s.padding, s.dilation, True)
            assert not path.startswith("fused:sm90_"), (s.name, path, reason)
            if sm not in (80, 86, 89, 90):  # no verified kernel for this arch (e.g. Blackwell): a fallback
                assert not path.startswith("fused:"), (s.name, path, reason)


def test_build_images_load_on_this_device():
    """The fused kernels run here only if an image of them loads on this arch; explain says so otherwise."""
    major, minor = torch.cuda.get_device_capability()
    images = resnet_ext.build_info()["cuda_images"].split()
    s = SHAPES[2].with_batch(2)
    x, w, b, r = make_inputs(s, torch.bfloat16, False)
    path, reason = resnet_ext.explain(x, w, b, r, s.stride, s.padding, s.dilation, False)
    loads = any((i == f"sm_{major}{minor}a") or (i.startswith("sm_") and not i.endswith("a") and
                                                int(i[3:]) // 10 == major and int(i[3:]) <= major * 10 + minor) or
                (i.startswith("compute_") and not i.endswith("a") and int(i[8:]) <= major * 10 + minor)
                for i in images)
    if not loads:
        assert not path.startswith("fused:") and "no image" in reason, (images, path, reason)


def test_opcheck_every_op_on_cuda():
    ops = torch.ops.resnet_ext
    # conv_bn_act: the fused path (bf16, channels_last, aligned), cuDNN's fused fallback (NCHW) and stock (fp64).
    s = SHAPES[2].with_batch(2)
    for dtype, fmt in ((torch.bfloat16, CL), (torch.float32, torch.contiguous_format), (torch.float64, CL)):
        x, w, b, r = make_inputs(s, dtype, True)
        x, r = x.contiguous(memory_format=fmt), r.contiguous(memory_format=fmt)
        for residual, relu in ((None, False), (r, True)):
            args = (x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_(),
                    None if residual is None else residual.clone().requires_grad_(),
                    [s.stride] * 2, [s.padding] * 2, [s.dilation] * 2, relu, 1)
            torch.library.opcheck(ops.conv_bn_act.default, args)
    # The training BN ops: the vectorized NHWC, NCHW and fp64 (stock) paths.
    n, c, h, w_ = 3, 16, 5, 4
    for dtype, fmt in ((torch.bfloat16, CL), (torch.float32, torch.contiguous_format), (torch.float64, CL)):
        x = torch.randn(n, c, h, w_, device="cuda").to(dtype).contiguous(memory_format=fmt)
        r = torch.randn(n, c, h, w_, device="cuda").to(dtype).contiguous(memory_format=fmt)
        wt, b, rm = (torch.rand(c, device="cuda") + 0.5, torch.randn(c, device="cuda"), torch.randn(c, device="cuda"))
        for residual in (None, r):
            args = (x.clone().requires_grad_(), None if residual is None else residual.clone().requires_grad_(),
                    wt.clone().requires_grad_(), b.clone().requires_grad_(), rm, 1e-5, True)
            torch.library.opcheck(ops.bn_act_train.default, args)
        y, mean, invstd, _ = ops.bn_act_train(x, r, wt, b, rm, 1e-5, True)
        gy = torch.randn_like(y)
        torch.library.opcheck(ops.bn_act_train_backward.default, (gy, y, x, wt, mean, invstd, True, True))
        torch.library.opcheck(ops.bn_stats.default, (x, rm))
        torch.library.opcheck(ops.bn_act_apply.default, (x, r, wt, b, mean, invstd, True))
        torch.library.opcheck(ops.bn_act_backward_reduce.default, (gy, y, x, mean, invstd, True))
        sums = ops.bn_act_backward_reduce(gy, y, x, mean, invstd, True)
        torch.library.opcheck(ops.bn_act_backward_apply.default,
                              (gy, y, x, wt, mean, invstd, sums, float(n * h * w_), True, True))
