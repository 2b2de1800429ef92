#!/usr/bin/env bash
# The one GPU check: build for this card, run the CUDA tests, memcheck a forward, run the benchmarks, and write
# the results (JSON, markdown table, PNG) under $OUT. Made to finish in under 8 minutes on an H100.
#
#   bash benchmarks/gpu_check.sh [--quick] [--dry-run]
#
# Needs: a CUDA torch, nvcc, and CUTLASS headers: pip's nvidia-cutlass, $CUTLASS_PATH, or the wheel in .whl/
# (download it where pip works: see README "GPU check"). --quick: CUDA tests, a smaller CUDA fuzz run and conv
# benchmarks only.
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0
DRY=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --dry-run) DRY=1 ;;
    *) echo "usage: $0 [--quick] [--dry-run]"; exit 2 ;;
  esac
done
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
START=$(date +%s)
declare -a SUMMARY=()
PY="${PYTHON:-python3}"

step() {  # step NAME TIMEOUT_S COMMAND...: run with a time limit, log everything, keep going on failure
  local name="$1" limit="$2"; shift 2
  echo "=== [$(( $(date +%s) - START ))s] $name: $*" | tee -a "$LOG"
  if [ "$DRY" = 1 ]; then SUMMARY+=("$name: (dry run)"); return 0; fi
  if declare -F "$1" > /dev/null; then  # a function of this script: timeout needs a program, so run it via bash
    timeout "$limit" bash -c "$*" 2>&1 | tee -a "$LOG"
  else
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  fi
  local rc=${PIPESTATUS[0]}
  SUMMARY+=("$name: rc=$rc ($(( $(date +%s) - START ))s)")
  return "$rc"
}

info() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -n 2
  git log -1 --format='commit %H %cd' 2>/dev/null || echo "commit ${RESNET_EXT_COMMIT:-unknown (no .git here)}"
  date -u
}

cutlass() {  # headers only, from the carried wheel, unless CUTLASS is already importable or CUTLASS_PATH is set
  if [ -n "${CUTLASS_PATH:-}" ] || "$PY" -c "import cutlass_library" 2>/dev/null; then echo "CUTLASS present"; return 0; fi
  local whl
  whl=$(ls .whl/nvidia_cutlass-*.whl 2>/dev/null | head -n 1)
  [ -n "$whl" ] || { echo "no CUTLASS: pip install nvidia-cutlass, set CUTLASS_PATH, or carry .whl/"; return 1; }
  "$PY" - "$whl" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
names = [n for n in z.namelist() if n.startswith(("cutlass_library/source/include/", "cutlass_library/source/tools/util/include/"))]
z.extractall("/tmp/cutlass", names)
print(f"extracted {len(names)} CUTLASS headers")
PY
}

build() {
  local arch
  arch=$("$PY" -c "import torch; M, m = torch.cuda.get_device_capability(); print(f'{M}.{m}' + ('a' if M == 9 else ''))")
  echo "TORCH_CUDA_ARCH_LIST=$arch"
  TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" RESNET_EXT_PTXAS_VERBOSE=1 \
    "$PY" -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1
  local rc=$?
  tail -n 3 "$OUT/build.log"
  echo "ptxas entries: $(grep -c 'bytes spill stores' "$OUT/build.log"), with spills: $(grep 'bytes spill stores' "$OUT/build.log" | grep -vc ' 0 bytes spill stores, 0 bytes spill loads')"
  "$PY" -c "import resnet_ext, json; print(json.dumps(resnet_ext.build_info()))"
  return $rc
}

export -f info cutlass build
export PY OUT
[ -d /tmp/cutlass/cutlass_library/source ] && export CUTLASS_PATH="${CUTLASS_PATH:-/tmp/cutlass/cutlass_library/source}"
step info 30 info
step cutlass 60 cutlass && export -f info cutlass build
export PY OUT
[ -d /tmp/cutlass/cutlass_library/source ] && export CUTLASS_PATH=/tmp/cutlass/cutlass_library/source
step build 300 build
export PYTHONUNBUFFERED=1
if [ "$QUICK" = 1 ]; then
  step cuda_tests 200 "$PY" -m pytest tests/test_cuda_bn_act.py tests/test_kernel_selection.py tests/test_cuda.py tests/test_cuda_gemm_sm90.py -q -rfE \
    -p no:cacheprovider -k "not compile"
  RESNET_EXT_FUZZ_SCALE=0.3 step fuzz_cuda 90 "$PY" -m pytest tests/test_fuzz.py -q -rfE -p no:cacheprovider -k cuda -s
else
  step cuda_tests 270 "$PY" -m pytest tests/test_cuda_bn_act.py tests/test_kernel_selection.py tests/test_cuda.py tests/test_cuda_gemm_sm90.py -q -rfE \
    --tb=short -p no:cacheprovider -s
  rc=$?
  if [ "$rc" -ge 128 ] && [ "$rc" != 137 ] && command -v cuda-gdb > /dev/null; then  # a crash: get the C++ stack
    step crash_backtrace 100 cuda-gdb -q -batch -ex run -ex bt --args "$PY" -m pytest tests/test_cuda.py -q -x \
      -p no:cacheprovider -k "autotuner"
  fi
  # The seeded fuzz generator of the CPU tests, on CUDA: random shapes, layouts, dtypes through the dispatcher.
  step fuzz_cuda 150 "$PY" -m pytest tests/test_fuzz.py -q -rfE --tb=short -p no:cacheprovider -k cuda -s
  step memcheck 120 compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" benchmarks/sanitize_forward.py
fi
BENCH_ARGS=(benchmarks -q -p no:cacheprovider --benchmark-only --benchmark-json="$OUT/bench.json" --benchmark-columns=min,median,rounds)
[ "$QUICK" = 1 ] && BENCH_ARGS=(benchmarks/test_conv_bn_act.py "${BENCH_ARGS[@]:1}")
step benchmarks 300 "$PY" -m pytest "${BENCH_ARGS[@]}"
step report 60 "$PY" -m resnet_ext report "$OUT/bench.json" --out "$OUT/report"

echo
echo "=== summary ($(( $(date +%s) - START ))s)" | tee -a "$LOG"
printf '%s\n' "${SUMMARY[@]}" | tee -a "$LOG"
[ -f "$OUT/report.md" ] && grep -E "^(Device|Geomean)|^### " "$OUT/report.md"
