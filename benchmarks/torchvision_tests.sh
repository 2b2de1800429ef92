#!/usr/bin/env bash
# torchvision's own model tests (pytorch/vision test/test_models.py and test/test_extended_models.py, the tag of
# the installed torchvision) run twice: on plain torchvision, then with its ten ResNet builders replaced by
# resnet_ext's (benchmarks/torchvision_swap.py). Selected: the CPU test_classification_model cases of the ten
# builders (eager vs FX-traced outputs, and outputs against expected values), test_resnet_dilation, and the
# non-download tests of the extended file about these builders (get_model, get_model_builder, get_model_weights,
# weights copyable and deserializable, naming conventions, transforms, list_models). The expected outputs are
# written from plain torchvision first (torchvision keeps them out of its wheel).
#
#   bash benchmarks/torchvision_tests.sh            # needs network to clone pytorch/vision (depth 1)
#   VISION_TESTS=/path/to/vision/test bash benchmarks/torchvision_tests.sh   # a checkout's test/ folder instead
#
# A third run, swapped with the builders' own `__module__` (RESNET_EXT_SWAP_MODULE=0), shows what list_models()
# needs of a builder in torchvision's registry (see torchvision_swap.py); it does not count towards the exit status,
# which is non-zero where a plain or swapped run has a failure.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if [ -n "${VISION_TESTS:-}" ]; then
  cp -r "$VISION_TESTS" "$WORK/test"
else
  tag="v$("$PY" -c 'import torchvision; print(torchvision.__version__.split("+")[0])')"
  git clone -q --depth 1 --branch "$tag" https://github.com/pytorch/vision "$WORK/vision" || exit 1
  cp -r "$WORK/vision/test" "$WORK/test"
fi
cd "$WORK/test" || exit 1
rm -rf expect && mkdir -p expect
export PYTHONPATH="$ROOT:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTORCH_TEST_WITH_EXTENDED=1
PYTEST=("$PY" -m pytest -p no:cacheprovider -q -rfE)
K_MODELS='(test_classification_model and cpu and (resnet or resnext)) or test_resnet_dilation'
TEN='resnet101 or resnet152 or resnet18_0 or resnet34 or resnet50_0 or resnext101_32x8d0 or resnext101_64x4d0 or resnext50_32x4d or wide_resnet101_2 or wide_resnet50_2'
K_EXT="((test_get_model or test_weights_copyable or test_weights_deserializable) and resnet50 and not retinanet and not quantized) or ((test_naming_conventions or test_transforms_jit) and ($TEN) and not fcn and not deeplab and not fpn) or test_list_models"
summary() { grep -E "[0-9]+ (passed|failed)" | tail -n 1; }

EXPECTTEST_ACCEPT=1 "${PYTEST[@]}" test_models.py -k "test_classification_model and cpu and (resnet or resnext)" \
  > "$WORK/accept.log" 2>&1
echo "expected outputs from plain torchvision: $(summary < "$WORK/accept.log")"
status=0
for run in plain swapped swapped_own_module; do
  case "$run" in
    plain) extra=() ;;
    swapped) extra=(-p torchvision_swap); export RESNET_EXT_SWAP_MODULE=1 ;;
    swapped_own_module) extra=(-p torchvision_swap); export RESNET_EXT_SWAP_MODULE=0 ;;
  esac
  for f in test_models.py test_extended_models.py; do
    k="$K_MODELS"; [ "$f" = test_extended_models.py ] && k="$K_EXT"
    "${PYTEST[@]}" "${extra[@]}" "$f" -k "$k" > "$WORK/$run.$f.log" 2>&1
    rc=$?
    [ "$run" != swapped_own_module ] && [ "$rc" != 0 ] && status=1
    echo "$run $f: $(summary < "$WORK/$run.$f.log")"
    grep -E "^FAILED" "$WORK/$run.$f.log" | cut -c1-200 | head -n 20
  done
done
exit $status
