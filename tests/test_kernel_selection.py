"""The dispatcher without a GPU. With fake kernels (every build, CPU-only included): each source of a choice --
heuristic, forced, autotuned, measured table -- is re-checked against the compiled images, the per-arch verified
flag, every operand's layout/strides/alignment, the TF32 flag, can_implement and the workspace. With this build's
real kernels (CUDA builds): for every conv of resnet50/101/152 (and the dilated variant) the heuristic picks a
kernel whose CUTLASS can_implement accepts the problem, or states why a fallback runs."""
import re

import pytest

import resnet_ext
from conftest import requires_experimental
from resnet_ext._C_loader import _C
from resnet_ext.shapes import conv_shapes

pytestmark = requires_experimental  # select_kernel: a test hook
cuda_build = pytest.mark.skipif(not resnet_ext.build_info()["cuda"], reason="built without CUDA kernels")
BUILT_IMAGES = resnet_ext.build_info()["cuda_images"].split()
# The tests below that simulate an sm_80 device with this build's real kernels need an image that loads there (the
# default arch list "8.0;9.0a" has one; gpu_check.sh's "9.0a" build does not): else they simulate sm_90.
SIM_SM = 80 if "sm_80" in BUILT_IMAGES else 90

MODELS = [("resnet50", {}), ("resnet101", {}), ("resnet152", {}),
          ("resnet50", {"replace_stride_with_dilation": [False, True, True]})]
TAG = {"bfloat16": "bf16", "float16": "f16", "float32": "tf32"}


def problem(s, dtype, sm, **over):
    # cudnn=False: cuDNN's fused ops out of the picture, so every kernel of ours is looked at.
    d = dict(N=s.N, C=s.C, H=s.H, W=s.W, K=s.K, R=s.R, S=s.S, stride=s.stride, padding=s.padding,
             dilation=s.dilation, groups=s.groups, residual=s.residual, relu=s.relu, dtype=dtype, sm=sm, cudnn=False)
    d.update(over)
    return d


# ---- the dispatcher on fake kernels (CPU-only builds too) ----------------------------------------------------------

LAYER = dict(N=8, C=64, H=56, W=56, K=64, R=3, padding=1, dtype="bfloat16", sm=90, cudnn=False)
VERIFIED = dict(name="v_bf16", score=1, verified=[80, 90], workspace=256)
BETTER = dict(name="w_bf16", score=2, verified=[80, 90], reject="")
UNVERIFIED = dict(name="sm90a_bf16", score=9, min_sm=90, max_sm=90, image_sm=90, arch_specific=True, verified=[])
IMAGES = "sm_80;sm_90a"


def choose(d=None, kernels=(VERIFIED, BETTER, UNVERIFIED), images=IMAGES, **kw):
    kernel, reason, path, source, workspace = _C.select_kernel({**LAYER, **(d or {})}, list(kernels), images, **kw)
    return kernel, reason, path, source, workspace


def test_heuristic_picks_the_best_verified_kernel_and_reports_its_workspace():
    assert choose(kernels=(VERIFIED,)) == ("v_bf16", choose(kernels=(VERIFIED,))[1], "fused:v_bf16", "heuristic", 256)
    assert choose()[0] == "w_bf16"  # the unverified kernel scores higher but is never the dispatcher's own choice


def test_unverified_kernels_are_opt_in_even_when_every_verified_kernel_rejects():
    rejecting = [dict(VERIFIED, reject="tile too wide"), UNVERIFIED]
    kernel, reason, path, source, _ = choose(kernels=rejecting)
    assert kernel == "" and path == "stock" and "tile too wide" in reason and "not verified on sm_90" in reason
    # Forcing it is the opt-in (tests), as is the autotuner, which checks its output.
    assert choose(kernels=rejecting, forced="sm90a_bf16")[:2] == ("sm90a_bf16", "forced by resnet_ext._C.force_kernel")
    assert choose(kernels=rejecting, tuned="sm90a_bf16")[0] == "sm90a_bf16"
    # A measured-table entry must be verified, like the heuristic.
    kernel, reason, *_ = choose(table="sm90a_bf16")
    assert kernel == "w_bf16" and "measured-table kernel sm90a_bf16 cannot run this call" in reason
    assert choose(table="v_bf16")[:4:3] == ("v_bf16", "table")


@pytest.mark.parametrize("over,why", [
    (dict(channels_last=False), "x is not channels_last"),
    (dict(misaligned="x"), "x's data pointer is not 16-byte aligned"),
    (dict(misaligned="weight"), "weight's data pointer"),
    (dict(bias_stride=2), "bias is not contiguous"),
    (dict(residual=True, residual_channels_last=False), "residual is not channels_last"),
    (dict(residual=True, misaligned="residual"), "residual's data pointer"),
    (dict(x_strides=[64 * 56 * 56 + 64, 1, 56 * 64, 64]), "x is not channels_last"),  # a padded batch stride
    (dict(dtype="float32", allow_tf32=False), "allow_tf32"),
    (dict(groups=2), "grouped"),
    (dict(sm=100), "no image of it in this build loads on sm_100"),
])
def test_autotuned_and_forced_choices_are_rechecked_on_every_call(over, why):
    """A tuned (cache hit) or forced kernel runs only if it can run this very call: an NCHW, misaligned, strided
    or otherwise different call of a tuned shape falls back instead of running the kernel on the wrong memory."""
    kernels = [dict(VERIFIED, dtype=over.get("dtype", "bfloat16"))]
    name = kernels[0]["name"]
    # The same shape, dtype and epilogue with packed, aligned operands: the recorded kernel runs.
    same_shape = {k: v for k, v in over.items() if k in ("dtype", "residual")}
    assert choose(same_shape, kernels=kernels, tuned=name)[0] == name
    for source in ("tuned", "forced"):
        kernel, reason, path, *_ = choose(over, kernels=kernels, **{source: name})
        assert kernel == "", (source, reason)
        assert why in reason, (source, reason)
        assert path in ("stock", "cudnn_fused")


def test_images_decide_which_archs_a_kernel_runs_on():
    # The default build (sm_80 + sm_90a images): nothing loads on Blackwell, so no fused kernel there.
    assert choose(dict(sm=100))[0] == ""
    assert choose(dict(sm=86), kernels=(dict(VERIFIED, verified=[86]),))[0] == "v_bf16"  # sm_80 code on sm_86
    # A PTX image loads on later archs; the kernel is still unverified there, so only the autotuner may use it.
    kernel, reason, *_ = choose(dict(sm=100), images="sm_80;compute_80")
    assert kernel == "" and "not verified on sm_100" in reason
    assert choose(dict(sm=100), images="sm_80;compute_80", tuned="v_bf16")[0] == "v_bf16"
    # The sm_90a kernel needs an sm_90a image: an sm_90 (not arch-specific) image holds only CUTLASS's stubs.
    assert choose(forced="sm90a_bf16")[0] == "sm90a_bf16"
    kernel, reason, *_ = choose(images="sm_80;sm_90", forced="sm90a_bf16")
    assert kernel == "w_bf16" and "needs sm_90a" in reason
    assert _C.parse_cuda_images("8.0;9.0a;8.6+PTX") == "sm_80 sm_90a sm_86 compute_86"


def test_scale_shift_problems_take_only_kernels_with_that_epilogue():
    """#24 item 2: a call with fp32 scale and shift runs a kernel whose epilogue takes them, by no other source
    either (forced, tuned, table); cuDNN's fused op has no per-channel scale, so the fallback is cuDNN's graph with
    that epilogue where it may run (16-bit NHWC, groups and dilation 1), else the stock path."""
    epi = dict(VERIFIED, name="e_bf16", scale_shift=True, score=0)
    kernel, reason, path, *_ = choose(dict(scale_shift=True))
    assert kernel == "" and path == "stock" and "no fp32 scale/shift epilogue" in reason
    assert choose(dict(scale_shift=True), kernels=(VERIFIED, BETTER, epi))[0] == "e_bf16"
    assert choose(dict(scale_shift=True, cudnn=True, relu=True), kernels=(VERIFIED,))[2] == "cudnn_graph"
    assert choose(dict(scale_shift=True, cudnn=True, relu=False), kernels=(VERIFIED,))[2] == "cudnn_graph"
    for over in (dict(dtype="float32"), dict(channels_last=False), dict(groups=2), dict(dilation=2), dict(cudnn=False)):
        assert choose({**dict(scale_shift=True, cudnn=True), **over}, kernels=(VERIFIED,))[2] == "stock", over
    for source in ("forced", "tuned", "table"):
        kernel, reason, *_ = choose(dict(scale_shift=True), **{source: "w_bf16"})
        assert kernel == "" and "no fp32 scale/shift epilogue" in reason, source
    # The scale and shift operands are checked like every other.
    for over, why in ((dict(misaligned="scale"), "scale's data pointer"), (dict(misaligned="shift"), "shift's")):
        assert why in choose(dict(scale_shift=True, **over), kernels=(epi,))[1], over
    assert choose(kernels=(epi,))[0] == "e_bf16"  # and the kernel takes plain problems too


def test_autotune_cache_key_covers_the_whole_problem():
    base = _C.problem_key(LAYER)
    for over in (dict(channels_last=False), dict(misaligned="x"), dict(bias_stride=2), dict(allow_tf32=False),
                 dict(sm=80), dict(sm_count=66), dict(device=1), dict(relu=False), dict(residual=True),
                 dict(scale_shift=True)):
        assert _C.problem_key({**LAYER, **over}) != base, over
    assert _C.problem_key(dict(LAYER)) == base


def test_output_size_formula_agrees_with_shapes_py():
    s = conv_shapes("resnet50")[0]
    assert (s.P, s.Q) == (112, 112)
    assert resnet_ext.ops.conv_output_size(1, 2, 2) == 0  # C++ truncation would have said 1


# ---- this build's kernels (CUDA builds) ----------------------------------------------------------------------------

def _kernels(prefix):
    return [k for k in resnet_ext.build_info()["fused_kernels"] if k.startswith(prefix)]


@cuda_build
def test_kernel_names_say_tile_stages_and_alignment():
    names = resnet_ext.build_info()["fused_kernels"]
    assert len(names) == len(set(names))
    # The sm_90a GEMMs of 1x1 stride-1 convs (experimental/gemm_sm90.h's table, registered opt-in) name their cluster
    # shape and schedule too; every other kernel is a conv kernel named by kernels.h's kernel_name.
    gemms = [n for n in names if n.startswith("sm90_gemm_")]
    convs = [n for n in names if not n.startswith("sm90_gemm_")]
    assert len(gemms) == 6 and len(convs) >= 16, (len(gemms), len(convs))
    for name in gemms:
        assert re.fullmatch(r"sm90_gemm_(f16|bf16)_\d+x\d+x\d+_c\d+x\d+_(coop|pingpong)_\d+st_a8", name), name
    for name in convs:
        assert re.fullmatch(r"sm\d+(c4)?_(f16|bf16|tf32)_[a-z_]+_\d+x\d+x\d+_\d+st_a\d+", name), name
    assert "sm80_f16_bias_act_128x128x64_3st_a8" in names and "sm80_tf32_residual_relu_128x64x32_4st_a4" in names
    # An image for each entry of the arch list it was built for ("8.0;9.0a" -> "sm_80 sm_90a").
    archs = resnet_ext.build_info()["cuda_archs"]
    assert all("sm_" + a.replace(".", "").replace("+PTX", "") in BUILT_IMAGES for a in archs), (BUILT_IMAGES, archs)


@cuda_build
@pytest.mark.parametrize("arch,kwargs", MODELS, ids=["resnet50", "resnet101", "resnet152", "resnet50-dilated"])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("sm", [80, 90])
def test_every_resnet_conv_gets_an_implementable_kernel_or_a_reason(arch, kwargs, batch, dtype, sm):
    if sm == 80 and SIM_SM != 80:
        pytest.skip(f"no image of this build loads on sm_80 (built: {' '.join(BUILT_IMAGES)})")
    for s in conv_shapes(arch, batch, **kwargs):
        d = problem(s, dtype, sm)
        kernel, reason, *_ = _C.select_kernel(d)
        assert reason, s.name
        if kernel:
            assert _C.kernel_can_implement(kernel, d) == "", (s.name, kernel)
            assert f"_{TAG[dtype]}_" in kernel and kernel.startswith("sm80_")
            assert ("residual" in kernel) == s.residual, (s.name, kernel)
        if s.C == 3:  # the stem: 3 input channels are below the kernels' 16-byte vector width
            assert not kernel and "not a multiple" in reason, (s.name, reason)
        else:  # every other ResNet conv must run fused
            assert kernel, (s.name, reason)


@cuda_build
def test_fallback_reasons():
    s = conv_shapes("resnet50", 8)[2]  # 3x3 conv of layer1
    assert _C.select_kernel(problem(s, "bfloat16", 90, groups=32, C=64))[1].startswith("grouped convolution")
    assert "float64" in _C.select_kernel(problem(s, "float64", 90))[1]
    assert "allow_tf32" in _C.select_kernel(problem(s, "float32", 90, allow_tf32=False))[1]
    assert "channels_last" in _C.select_kernel(problem(s, "bfloat16", 90, channels_last=False))[1]
    assert "2 GiB" in _C.select_kernel(problem(s, "bfloat16", 90, N=8192))[1]
    assert "bias is not contiguous" in _C.select_kernel(problem(s, "bfloat16", 90, bias_stride=2))[1]
    assert "not 16-byte aligned" in _C.select_kernel(problem(s, "bfloat16", 90, misaligned="x"))[1]
    kernel, reason, *_ = _C.select_kernel(problem(s, "bfloat16", 90, residual=True, relu=False))
    assert not kernel and "residual without ReLU" in reason
    kernel, reason, *_ = _C.select_kernel(problem(s, "bfloat16", 90, C=60))
    assert not kernel and "not a multiple of 8" in reason
    # No image of the default build loads on Blackwell.
    kernel, reason, *_ = _C.select_kernel(problem(s, "bfloat16", 100))
    assert not kernel and "no image" in reason


@cuda_build
def test_tile_heuristic_uses_the_devices_sm_count():
    s = conv_shapes("resnet50", 64)[2]  # 3x3, K=64: narrow either way
    wide = [x for x in conv_shapes("resnet50", 32) if x.K >= 256 and x.H <= 14 and not x.residual][0]
    small_gpu = _C.select_kernel(problem(wide, "bfloat16", SIM_SM, sm_count=8))[0]
    big_gpu = _C.select_kernel(problem(wide, "bfloat16", SIM_SM, sm_count=1000))[0]
    assert "_128x128x" in small_gpu and "_128x64x" in big_gpu, (small_gpu, big_gpu)
    assert "_128x64x" in _C.select_kernel(problem(s, "bfloat16", SIM_SM, sm_count=8))[0]


@cuda_build
def test_hopper_relu_layers_go_to_cudnn_unless_told_otherwise():
    shapes = conv_shapes("resnet50", 64)
    for s in shapes[1:]:
        kernel, reason, *_ = _C.select_kernel(problem(s, "bfloat16", 90, cudnn=True))
        if s.relu:
            assert not kernel and "cuDNN" in reason, s.name
        else:  # the downsample convs, where ours won on the H100
            assert kernel, s.name
        if SIM_SM == 80:
            assert _C.select_kernel(problem(s, "bfloat16", 80, cudnn=True))[0], s.name  # sm80: ours
    resnet_ext.prefer_cudnn(False)
    try:
        assert all(_C.select_kernel(problem(s, "bfloat16", 90, cudnn=True))[0] for s in shapes[1:])
    finally:
        resnet_ext.prefer_cudnn(True)


@cuda_build
@pytest.mark.parametrize("arch,kwargs", MODELS, ids=["resnet50", "resnet101", "resnet152", "resnet50-dilated"])
def test_hopper_kernels_accept_every_resnet_conv_but_are_not_chosen_yet(arch, kwargs):
    for s in conv_shapes(arch, 64, **kwargs)[1:]:  # all but the 3-channel stem
        for dtype, tag in (("bfloat16", "bf16"), ("float16", "f16")):
            for residual in (False, True):
                relu = residual or s.relu
                d = problem(s, dtype, 90, residual=residual, relu=relu)
                [name] = _kernels(f"sm90_{tag}_{'relu' if relu else 'linear'}_")
                assert _C.kernel_can_implement(name, d) == "", (s.name, name)
                # Unverified on a GPU so far: the heuristic keeps the sm80 kernels; forcing it is the opt-in.
                assert _C.select_kernel(d)[0].startswith("sm80_"), s.name
                assert _C.select_kernel(d, forced=name)[0] == name, s.name
                [other] = _kernels(f"sm90_{tag}_{'linear' if relu else 'relu'}_")
                assert _C.kernel_can_implement(other, d) != ""


@cuda_build
@pytest.mark.parametrize("arch,kwargs", MODELS, ids=["resnet50", "resnet101", "resnet152", "resnet50-dilated"])
def test_few_channel_kernels_take_convs_on_fewer_than_4_channels_only_and_are_opt_in(arch, kwargs):
    """#24.1: the sm80c4 kernels (x and weight padded to 4 channels in the workspace) accept the 3-channel stem and
    other convs on 1-3 channels of odd sizes, no other ResNet conv; unverified, so only by force."""
    shapes = conv_shapes(arch, 64, **kwargs)
    stem = shapes[0]
    assert stem.C == 3
    for dtype, tag in (("bfloat16", "bf16"), ("float16", "f16")):
        names = _kernels(f"sm80c4_{tag}_")
        assert len(names) == 2, names
        for sm in sorted({SIM_SM, 90}):
            d = problem(stem, dtype, sm)
            assert not _C.select_kernel(d)[0]  # the heuristic never picks an unverified kernel
            for name in names:
                assert _C.kernel_can_implement(name, d) == "", name
                kernel, _, path, _, workspace = _C.select_kernel(d, forced=name)
                assert kernel == name and path == f"fused:{name}"
                # the padded x (N*H*W*4 values) and weight (K*R*S*4) live in the workspace
                assert workspace >= (d["N"] * d["H"] * d["W"] + d["K"] * 7 * 7) * 4 * 2, workspace
                for c, h, w in ((1, 97, 61), (2, 33, 35)):
                    assert _C.kernel_can_implement(name, {**d, "C": c, "H": h, "W": w}) == "", (name, c)
                for over, why in ((dict(C=4), "fewer than 4"), (dict(C=8), "fewer than 4"),
                                  (dict(residual=True, relu=True), "residual"), (dict(K=60), "multiple of 8")):
                    assert why in _C.kernel_can_implement(name, {**d, **over}), (name, over)
            for s in shapes[1:]:
                assert _C.kernel_can_implement(names[0], problem(s, dtype, sm)) != "", s.name


@cuda_build
def test_sm90_gemms_are_the_only_kernels_with_the_scale_shift_epilogue():
    """Of this build's kernels only the sm90 GEMMs take a scale/shift problem (1x1 stride 1), by force only
    (unverified); every other kernel refuses it, so without force it runs the stock composition."""
    layer = [s for s in conv_shapes("resnet50", 64) if s.R == 1 and s.stride == 1 and s.C == 256][0]
    for dtype, tag in (("bfloat16", "bf16"), ("float16", "f16")):
        d = problem(layer, dtype, 90, scale_shift=True)
        kernel, reason, path, *_ = _C.select_kernel(d)
        assert kernel == "" and path == "stock", reason
        gemms = _kernels(f"sm90_gemm_{tag}_")
        assert gemms
        for name in gemms:
            assert _C.select_kernel(d, forced=name)[0] == name
        for name in _kernels(f"sm80_{tag}_"):
            assert _C.select_kernel(d, forced=name)[0] == ""


@cuda_build
def test_unknown_kernel_name_is_an_error():
    with pytest.raises(RuntimeError, match="no fused kernel named nope"):
        _C.kernel_can_implement("nope", problem(conv_shapes("resnet50")[1], "bfloat16", 90))
