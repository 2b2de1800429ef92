#!/usr/bin/env bash
# Before a GPU lease, on any machine where pip works (no GPU needed): build the experimental extension against the
# torch of the GPU machine's image (not this project's pin) and run, on the CPU, the test files gpu_check.sh runs
# there. The first H200 run of the experimental build failed at import on what this catches (torch 2.11 loads
# libnvrtc lazily), and torch 2.11's dynamo and oneDNN failed three CPU tests that torch 2.14.1 passes.
#
#   bash benchmarks/gpu_preflight.sh [TORCH_VERSION TORCHVISION_VERSION]   (default: the H200 image's, 2.11.0 0.26.0)
#
# It keeps its venv and build under ${PREFLIGHT_DIR:-/tmp/resnet_ext_preflight} (a rerun rebuilds only what
# changed): about 3 GB and, on 2 cores, 12 minutes the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
TV="${1:-2.11.0}"
TVV="${2:-0.26.0}"
D="${PREFLIGHT_DIR:-/tmp/resnet_ext_preflight}"
mkdir -p "$D"
if [ ! -x "$D/venv/bin/python" ] || ! "$D/venv/bin/python" -c "import torch, sys; sys.exit(not torch.__version__.startswith('$TV'))"; then
  python3 -m venv --clear "$D/venv"
  "$D/venv/bin/pip" install -q "torch==$TV" "torchvision==$TVV" "setuptools>=77" ninja pybind11 \
    nvidia-cutlass==4.2.0.0 nvidia-cudnn-frontend==1.32.0 pytest pytest-benchmark pillow onnx onnxscript onnxruntime
fi
PY="$D/venv/bin/python"
"$PY" -c "import torch, torchvision; print('preflight: torch', torch.__version__, 'torchvision', torchvision.__version__)"
# Out of tree: the checkout's own extension (built against the pinned torch) stays as it is.
RESNET_EXT_EXPERIMENTAL=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" setup.py -q build --build-base "$D/build" \
  --build-lib "$D/lib" > "$D/build.log" 2>&1 || { tail -n 30 "$D/build.log"; exit 1; }
# The package as it is now (the build copies it only when setup.py runs) with the extension just built.
rm -rf "$D/pkg" && mkdir -p "$D/pkg" && cp -r resnet_ext "$D/pkg/" && rm -f "$D/pkg/resnet_ext/"_C*.so
cp "$D/lib/resnet_ext/"_C*.so "$D/pkg/resnet_ext/"
cd "$D"  # not the checkout: `import resnet_ext` must find the package built here
PYTHONPATH="$D/pkg" "$PY" -c "import resnet_ext, json; i = resnet_ext.build_info(); assert i['experimental']; print('preflight: import ok', json.dumps({k: i[k] for k in ('torch_version', 'cuda_images')}))"
T="$OLDPWD/tests"
PYTHONPATH="$D/pkg" "$PY" -m pytest -q -p no:cacheprovider "$T/test_cuda_bn_act.py" "$T/test_kernel_selection.py" \
  "$T/test_cuda.py" "$T/test_cuda_gemm_sm90.py" "$T/test_graphs.py" "$T/test_max_pool.py" "$T/test_flat.py" \
  "$T/test_fused_train.py" "$T/test_stem_pool.py" "$T/test_unfolded_bn.py" "$T/test_ops.py" "$T/test_models.py" \
  "$T/test_e2e.py" -k "not predict and not stale_installed"  # these two import from a checkout (csrc/, the cwd)
