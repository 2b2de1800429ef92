#!/usr/bin/env bash
# The one GPU check: build for this card (with RESNET_EXT_EXPERIMENTAL=1: the unverified kernels it verifies and the
# test hooks its tests use), run every CUDA test, memcheck, the per-layer and whole-model benchmarks
# with their peers, a kernel profile, and write the results under $OUT. Made to fit a 15-minute GPU lease with a
# rerun: the correctness steps run side by side (they do not time anything), the timed steps one at a time, and no
# step starts past the deadline (default 460 s from the start).
#
#   bash benchmarks/gpu_check.sh [--quick] [--dry-run] [--only STEP,STEP...] [--deadline SECONDS]
#
# Steps, in order: info cutlass build | tests (incl. tests_sm90, tests_bn_optin) graphs compile memcheck fuzz (side
# by side; maxpool and flatcuda too) | hopper profile models (incl. autotuned) train (incl. the opt-in BN reduce)
# latency fusedtrain unfolded stempool gemmepi maxpool flatcuda graphs layers.
# unfolded (opt-in switches.unfolded_bn, #24 item 2, unverified): tests/test_unfolded_bn.py on CUDA (each cuDNN
# conv + scale + shift graph against fp32 on every resnet50/101 conv shape; the plan within 1.25x torchvision's
# 16-bit error), then benchmarks/unfolded_check.py (accuracy per model and dtype against the folded plan, per layer
# and whole-model time against the folded default).
# stempool (the fused stem op resnet_ext::stem_pool, #24 item 1, unverified): tests/test_stem_pool.py on CUDA, then
# benchmarks/stem_pool_check.py (against the frozen mode's stem and torchvision's, batch 1/32/256).
# fusedtrain (opt-in switches.fused_train, #23, unverified): tests/test_fused_train.py on CUDA (each cuDNN graph
# against float64, blocks and a resnet50 step against torchvision), benchmarks/fused_train_check.py (which graphs
# cuDNN builds on this card; per block error and fwd+bwd time against torchvision), then the AMP train step with it
# (bench --train --fused-train). Its build needs cudnn-frontend's headers: nvidia-cudnn-frontend installed, or its
# wheel in .whl/ (any Python tag: only include/ is read), or $CUDNN_FRONTEND_PATH.
# maxpool (opt-in NHWC max pool kernel, unverified): tests/test_max_pool.py, then benchmarks/max_pool_check.py.
# gemmepi (the sm_90a GEMMs' fp32 scale/shift epilogue, unverified, reached through conv_bn_act's scale and shift
# with each GEMM forced; its tests run in tests_sm90): benchmarks/gemm_epilogue_check.py, against the folded
# epilogue and stock cuDNN + fp32 BN.
# flatcuda (opt-in switches.on_cuda, unverified): its tests in tests/test_flat.py (the module path's bits), then batch
# 1 and 32 latencies with and without it (bench --flat-cuda).
# The few-channel stem kernels (#24.1, sm80c4_*, unverified): their tests run in tests_sm90, their timing in hopper
# (one "verdict stem" line per kernel, against the default path and cuDNN): --only tests,hopper.
# graphs (opt-in CUDA graphs of the frozen mode, unverified): tests/test_graphs.py, then batch 1/8/32 latencies of
# freeze(model, cuda_graphs=True) against the eager frozen mode and torch.compile(mode="reduce-overhead"). --only runs the named ones (info always; build unless a carried .prebuilt/_C*.so matches these sources
# and this torch). --quick: the CUDA tests, a smaller CUDA fuzz run, the per-layer benchmarks.
# Needs: a CUDA torch, nvcc, and CUTLASS headers: pip's nvidia-cutlass, $CUTLASS_PATH, or the wheel in .whl/
# (download it where pip works: see README "GPU check").
# $OUT gets three files: gpu_check.log (everything), results.tar.gz (each step's log, JSON, markdown, PNG; packed
# after every step, so a run cut short still brings back what it did) and the stripped extension it built
# (carry it back as .prebuilt/ to skip the build when csrc/ is unchanged).
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0
DRY=0
ONLY=""
DEADLINE=460
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --dry-run) DRY=1 ;;
    --only) ONLY=",$2,"; shift ;;
    --deadline) DEADLINE="$2"; shift ;;
    *) echo "usage: $0 [--quick] [--dry-run] [--only STEP,...] [--deadline SECONDS]"; exit 2 ;;
  esac
  shift
done
OUT="${OUT:-$PWD/gpu-check-out}"
R="$(mktemp -d /tmp/gpu_check.XXXXXX)"  # the detailed results, packed into $OUT/results.tar.gz (not left in $OUT:
# the tool that runs this brings back at most 8 files)
mkdir -p "$OUT" "$R"
LOG="$OUT/gpu_check.log"
SUM="$R/summary_steps.txt"
: > "$LOG"
: > "$SUM"
START=$(date +%s)
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PY OUT R
elapsed() { echo $(( $(date +%s) - START )); }
wanted() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; }
pack() { tar czf "$OUT/results.tar.gz.tmp" -C "$R" . 2>/dev/null && mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"; }

run_step() {  # run_step NAME LIMIT COMMAND...: into $R/NAME.log, within the limit and the deadline
  local name="$1" limit="$2"; shift 2
  local left=$(( DEADLINE - $(elapsed) - 5 ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    echo "$name: skipped (deadline: $(elapsed)s of ${DEADLINE}s used)" >> "$SUM"
    return 0
  fi
  echo "=== [$(elapsed)s] $name (limit ${limit}s): $*" > "$R/$name.log"
  if [ "$DRY" = 1 ]; then echo "$name: (dry run)" >> "$SUM"; return 0; fi
  local t0; t0=$(date +%s)
  if declare -F "$1" > /dev/null; then  # a function of this script: timeout needs a program, so run it via bash
    timeout -k 10 "$limit" bash -c "$*" >> "$R/$name.log" 2>&1
  else
    timeout -k 10 "$limit" "$@" >> "$R/$name.log" 2>&1
  fi
  local rc=$?
  local why=""
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && why=" TIMED OUT"
  echo "$name: rc=$rc$why ($(( $(date +%s) - t0 ))s, done at $(elapsed)s)" >> "$SUM"
  return "$rc"
}

step() {  # in the foreground: run, then show its log
  run_step "$@"
  local rc=$?
  [ -f "$R/$1.log" ] && cat "$R/$1.log" >> "$LOG" && tail -n 5 "$R/$1.log"
  pack
  return "$rc"
}

info() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,temperature.gpu,power.draw --format=csv
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'torchvision', torchvision.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).multi_processor_count, 'SMs')"
  nvcc --version | tail -n 2
  # The device copy may carry a stale .git (the session-start snapshot): a commit given by the caller wins.
  if [ -n "${RESNET_EXT_COMMIT:-}" ]; then echo "commit $RESNET_EXT_COMMIT (given)"; else git log -1 --format="commit %H %cd" 2>/dev/null || echo "commit unknown (no .git here)"; fi
  date -u
  nproc
}

frontend() {  # cudnn-frontend's headers from a carried wheel, unless installed or CUDNN_FRONTEND_PATH is set
  if [ -n "${CUDNN_FRONTEND_PATH:-}" ] || "$PY" -c "import importlib.util as u, pathlib as p, sys; s = u.find_spec('cudnn'); sys.exit(not (s and (p.Path(s.origin).parent.parent / 'include' / 'cudnn_frontend.h').exists()))" 2>/dev/null; then
    echo "cudnn-frontend present"; return 0
  fi
  local whl
  whl=$(ls .whl/nvidia_cudnn_frontend-*.whl 2>/dev/null | head -n 1)
  [ -n "$whl" ] || { echo "no cudnn-frontend: pip install nvidia-cudnn-frontend, set CUDNN_FRONTEND_PATH, or carry .whl/"; return 1; }
  "$PY" - "$whl" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
names = [n for n in z.namelist() if n.startswith("include/")]
z.extractall("/tmp/cudnn_frontend", names)
print(f"extracted {len(names)} cudnn-frontend headers")
PY
}

cutlass() {  # headers only, from the carried wheel, unless CUTLASS is already importable or CUTLASS_PATH is set
  frontend || return 1
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

prebuilt() {  # a carried .prebuilt/_C*.so built from these sources against this torch: use it in place
  local so
  so=$(ls .prebuilt/_C.*.so 2>/dev/null | head -n 1)
  [ -n "$so" ] || return 1
  "$PY" - "$so" <<'PY' || return 1
import importlib.util, shutil, sys
spec = importlib.util.spec_from_file_location("resnet_ext_build_id_only", "resnet_ext/_C_loader.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
want, have = m.source_build_id("."), m.extension_build_id(sys.argv[1])
print(f"prebuilt {sys.argv[1]}: build id {have}, these sources {want}")
sys.exit(0 if want == have else 1)
PY
  # It must be an experimental build (the unverified kernels and test hooks this check runs).
  cp "$so" resnet_ext/ && "$PY" -c "import resnet_ext, json; i = resnet_ext.build_info(); assert i['experimental'], 'not an experimental build'; print('using the prebuilt extension:', json.dumps(i))" \
    || { rm -f resnet_ext/_C.*.so; return 1; }
}

build() {
  local arch
  arch=$("$PY" -c "import torch; M, m = torch.cuda.get_device_capability(); print(f'{M}.{m}' + ('a' if M == 9 else ''))")
  echo "TORCH_CUDA_ARCH_LIST=$arch"
  # RESNET_EXT_EXPERIMENTAL=1: the kernels awaiting verification and the test hooks (poisoned outputs, ...) too.
  TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" RESNET_EXT_PTXAS_VERBOSE=1 RESNET_EXT_EXPERIMENTAL=1 \
    "$PY" -m pip install --no-build-isolation --no-deps -v . > "$R/build_full.log" 2>&1
  local rc=$?
  tail -n 3 "$R/build_full.log"
  echo "ptxas entries: $(grep -c 'bytes spill stores' "$R/build_full.log"), with spills: $(grep 'bytes spill stores' "$R/build_full.log" | grep -vc ' 0 bytes spill stores, 0 bytes spill loads')"
  "$PY" -c "import resnet_ext, json; print(json.dumps(resnet_ext.build_info()))" || return 1
  # The stripped binary comes back with the results: carried as .prebuilt/, it spares a rerun this build.
  local so
  so=$("$PY" -c "import resnet_ext._C as c; print(c.__file__)" 2>/dev/null)
  [ -n "$so" ] && strip --strip-debug -o "$OUT/$(basename "$so")" "$so" 2>/dev/null && ls -la "$OUT/$(basename "$so")"
  # ... and stays in .prebuilt/ here (ignored, so kept on a warm machine): a next call made within the machine's
  # warm time skips the build too, so a lease can run `--only build` first and lose less if a later call dies.
  [ -n "$so" ] && mkdir -p .prebuilt && cp "$OUT/$(basename "$so")" .prebuilt/
  return $rc
}

export -f info frontend cutlass build prebuilt elapsed
export START DEADLINE
step info 30 info
[ -d /tmp/cutlass/cutlass_library/source ] && export CUTLASS_PATH="${CUTLASS_PATH:-/tmp/cutlass/cutlass_library/source}"
if prebuilt > "$R/prebuilt.log" 2>&1; then
  cat "$R/prebuilt.log" | tee -a "$LOG"
  echo "build: skipped (prebuilt extension matches these sources)" >> "$SUM"
else
  cat "$R/prebuilt.log" >> "$LOG"
  step cutlass 60 cutlass
  [ -d /tmp/cutlass/cutlass_library/source ] && export CUTLASS_PATH=/tmp/cutlass/cutlass_library/source
  [ -f /tmp/cudnn_frontend/include/cudnn_frontend.h ] && export CUDNN_FRONTEND_PATH=/tmp/cudnn_frontend
  step build 240 build || { echo "build failed: see $R/build_full.log"; tail -n 40 "$R/build_full.log"; }
fi

if [ "$DRY" = 0 ] && ! "$PY" -c "import resnet_ext" >> "$LOG" 2>&1; then  # nothing below can run: spare the lease
  echo "import resnet_ext failed: every later step skipped (the error is in gpu_check.log and build.log)" >> "$SUM"
  ONLY=",none,"
fi

TIMEOUT_ARGS=()
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT_ARGS=(--timeout=120 --timeout-method=thread)
PYTEST=("$PY" -m pytest -p no:cacheprovider -rfE --tb=short -s "${TIMEOUT_ARGS[@]}")
CUDA_TESTS=(tests/test_cuda_bn_act.py tests/test_kernel_selection.py tests/test_cuda.py tests/test_cuda_gemm_sm90.py)

# ---- correctness, side by side (nothing here is timed) ----------------------------------------------------------
pids=()
# At most $GPU_CHECK_JOBS (default 4) of them at once: the 2026-12-05 H100 call, nine side by side on a card with
# half the H200's memory, ended with the machine no longer answering and nothing brought back.
slot() { while [ "$(jobs -rp | wc -l)" -ge "${GPU_CHECK_JOBS:-4}" ]; do wait -n; done; }
if wanted tests; then  # the verified paths, and apart from them the sm_90a kernels (never run before: a hang or a
  # sticky CUDA error of theirs must not take the other tests down)
  slot
  run_step tests 260 "${PYTEST[@]}" -v "${CUDA_TESTS[@]:0:3}" -k "not compile and not hopper_kernels and not stem_kernels" &
  pids+=($!)
  slot
  run_step tests_sm90 200 "${PYTEST[@]}" -v tests/test_cuda.py tests/test_cuda_gemm_sm90.py \
    -k "hopper_kernels or gemm_sm90 or stem_kernels" &
  pids+=($!)
fi
if wanted tests; then  # the training-BN tests and fuzz again with the opt-in parallel final pass of the BN sums
  slot
  run_step tests_bn_optin 200 "${PYTEST[@]}" -q --bn-optin tests/test_cuda_bn_act.py \
    tests/test_fuzz.py -k "bn_act_train and cuda or test_cuda_bn_act" &
  pids+=($!)
fi
if wanted graphs; then
  slot
  run_step graphs 150 "${PYTEST[@]}" -v tests/test_graphs.py &
  pids+=($!)
fi
if wanted maxpool; then
  slot
  run_step maxpool_tests 120 "${PYTEST[@]}" -v tests/test_max_pool.py &
  pids+=($!)
fi
if wanted flatcuda; then  # the CUDA eval forward as the recorded sequence of fused units: the module path's bits
  slot
  run_step flatcuda_tests 120 "${PYTEST[@]}" -v tests/test_flat.py -k "fused or on_cuda" &
  pids+=($!)
fi
if wanted fusedtrain; then  # the fused training decomposition's cuDNN graphs against float64 and torchvision
  slot
  run_step fusedtrain_tests 150 "${PYTEST[@]}" -v tests/test_fused_train.py &
  pids+=($!)
fi
if wanted stempool; then
  slot
  run_step stempool_tests 120 "${PYTEST[@]}" -v tests/test_stem_pool.py &
  pids+=($!)
fi
if wanted unfolded; then
  slot
  run_step unfolded_tests 180 "${PYTEST[@]}" -v tests/test_unfolded_bn.py &
  pids+=($!)
fi
if wanted compile && [ "$QUICK" = 0 ]; then
  slot
  run_step compile 260 "${PYTEST[@]}" -v tests/test_cuda.py -k compile &
  pids+=($!)
fi
if [ "$QUICK" = 0 ] && { wanted memcheck || wanted fuzz; }; then
  slot
  (
    wanted memcheck && run_step memcheck 200 compute-sanitizer --tool memcheck --error-exitcode 1 \
      "$PY" benchmarks/sanitize_forward.py
    wanted fuzz && run_step fuzz 120 "${PYTEST[@]}" -q tests/test_fuzz.py -k cuda
  ) &
  pids+=($!)
elif [ "$QUICK" = 1 ] && wanted fuzz; then
  slot
  RESNET_EXT_FUZZ_SCALE=0.3 run_step fuzz 90 "${PYTEST[@]}" -q tests/test_fuzz.py -k cuda &
  pids+=($!)
fi
for p in "${pids[@]}"; do wait "$p"; done
for name in tests tests_sm90 tests_bn_optin graphs maxpool_tests flatcuda_tests fusedtrain_tests stempool_tests unfolded_tests compile memcheck fuzz; do [ -f "$R/$name.log" ] && cat "$R/$name.log" >> "$LOG"; done
pack

# ---- timed steps, one at a time ---------------------------------------------------------------------------------
[ "$QUICK" = 0 ] && wanted hopper && step hopper 90 "$PY" benchmarks/hopper_layers.py --json "$R/hopper_layers.json" \
  --md "$R/hopper_layers.md"
[ "$QUICK" = 0 ] && wanted profile && step profile 90 "$PY" benchmarks/profile_models.py --md "$R/profile.md" \
  --json "$R/profile.json"
bench() {  # bench NAME BATCH ITERS [ARGS...]: python -m resnet_ext bench on CUDA, its JSON and report kept
  local name="$1" batch="$2" iters="$3"; shift 3
  step "$name" 150 "$PY" -m resnet_ext bench --device cuda --batch-size "$batch" --iters "$iters" --quiet \
    --json "$R/$name.json" "$@"
  [ -f "$R/$name.json" ] && "$PY" -m resnet_ext report "$R/$name.json" --out "$R/report_$name" >> "$LOG" 2>&1
}
if [ "$QUICK" = 0 ]; then  # eval peers; "compile" is torch.compile(mode="default") with inductor freezing
  wanted models && bench models_bs256 256 15 --compile --compile-mode default
  # The autotuner times every candidate per layer (cuDNN's fused op, the sm80 and the opt-in sm_90a kernels) and
  # keeps the fastest: what routing each layer to its best kernel would give end to end.
  wanted models && bench models_bs256_autotuned 256 15 --autotune
  wanted train && bench train_bs256 256 10 --train
  wanted train && bench train_bs256_bn_optin 256 10 --train --bn-optin
  wanted latency && bench latency_bs32 32 30 --compile --compile-mode default
  wanted latency && bench latency_bs1 1 50 --compile --compile-mode default
fi
# The opt-in steps, the training ones first (what a user's model.train() runs), the compile-heavy graphs last: a
# lease's deadline skips the tail.
if wanted fusedtrain; then  # which graphs cuDNN builds here, per block error and time, then the whole AMP step
  step fusedtrain 150 "$PY" benchmarks/fused_train_check.py
  [ "$QUICK" = 0 ] && bench train_bs256_fused 256 10 --train --fused-train
fi
wanted unfolded && step unfolded 150 "$PY" benchmarks/unfolded_check.py
wanted stempool && step stempool 90 "$PY" benchmarks/stem_pool_check.py
wanted gemmepi && step gemmepi 90 "$PY" benchmarks/gemm_epilogue_check.py
wanted maxpool && step maxpool 90 "$PY" benchmarks/max_pool_check.py
if [ "$QUICK" = 0 ] && wanted flatcuda; then  # host time per forward: where the module tree costs most
  for b in 1 32; do bench "flatcuda_bs$b" "$b" 50 --flat-cuda; done
fi
if [ "$QUICK" = 0 ] && wanted graphs; then  # the CUDA graphs against compile's own CUDA graphs (with freezing)
  for b in 1 8 32; do bench "graphs_bs$b" "$b" 50 --cuda-graphs --compile --compile-mode default,reduce-overhead; done
fi
if wanted layers; then
  step layers 150 "$PY" -m pytest benchmarks/test_conv_bn_act.py benchmarks/test_bn_act_train.py -q \
    -p no:cacheprovider --benchmark-only --benchmark-json="$R/bench_layers.json" --benchmark-columns=min,median,rounds
  [ -f "$R/bench_layers.json" ] && "$PY" -m resnet_ext report "$R/bench_layers.json" --out "$R/report_layers" \
    >> "$LOG" 2>&1
fi

# ---- summary (the tool that runs this shows the last lines) -----------------------------------------------------
{
  echo
  echo "=== summary ($(elapsed)s)"
  head -n 4 "$R/info.log" 2>/dev/null | tail -n 3
  grep -h "ptxas entries\|using the prebuilt" "$R/build.log" "$R/prebuilt.log" 2>/dev/null
  grep -h -m1 "^ImportError" "$R/build.log" 2>/dev/null | cut -c1-300
  cat "$SUM"
  for name in tests tests_sm90 tests_bn_optin graphs maxpool_tests flatcuda_tests fusedtrain_tests stempool_tests unfolded_tests compile fuzz; do
    [ -f "$R/$name.log" ] || continue
    local_summary=$(grep -E '[0-9]+ (passed|failed|skipped|errors?|deselected).* in [0-9.]+s' "$R/$name.log" | tail -n 1)
    echo "--- $name: $local_summary"
    grep -E '^(FAILED|ERROR) ' "$R/$name.log" | cut -c1-230 | head -n 40
    grep -E "^Timeout|Fatal Python error|Segmentation fault|core dumped" "$R/$name.log" | head -n 5
    # pytest -v names each test before running it: after a crash, the last one named is the one that crashed
    if [ -z "$local_summary" ]; then
      echo "no pytest summary; last test started: $(grep -E '^tests/.*::' "$R/$name.log" | tail -n 1 | cut -c1-200)"
    fi
    grep -hE "ours vs fp32|compile: rel err|reduce-overhead: rel err|compiled train step|AMP step" "$R/$name.log" | cut -c1-260
  done
  [ -f "$R/memcheck.log" ] && { echo "--- memcheck"; grep -E "ERROR SUMMARY|paths:|train step ok|Error|Invalid" \
    "$R/memcheck.log" | cut -c1-300 | head -n 20; }
  [ -f "$R/hopper.log" ] && { echo "--- hopper (per layer, ms)"; grep -E "^\| n.*(sm90_|sm80c4_)|^sum over|^Traceback|Error" \
    "$R/hopper.log" | cut -c1-240 | head -n 30; grep -E "^verdict stem" "$R/hopper.log" | cut -c1-300; }
  for name in models_bs256 models_bs256_autotuned latency_bs32 latency_bs1 train_bs256 train_bs256_bn_optin; do
    [ -f "$R/$name.log" ] && { echo "--- $name"; grep -vE "^===|^\s*$" "$R/$name.log" | tail -n 16 | cut -c1-200; }
  done
  for name in train_bs256 train_bs256_bn_optin; do  # the training default per arch (engine.units.FUSED_TRAIN_DEVICES)
    [ -f "$R/$name.json" ] && "$PY" - "$R/$name.json" "$name" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["train"]["speedups"]
d, f = t["resnet_ext"]["median"], t["resnet_ext fused BN"]["median"]
print(f"verdict {sys.argv[2]}: default train step {d:.2f}x torchvision "
      f"({'not slower' if d >= 0.98 else 'SLOWER than torchvision: wrong default'}); fused BN {f:.2f}x torchvision, "
      f"{f / d:.2f}x the default: {'faster, add this arch to FUSED_TRAIN_DEVICES' if f > 1.02 * d else 'keep stock'}")
PY
  done
  [ -f "$R/maxpool.log" ] && grep -h "^verdict\|Error" "$R/maxpool.log"
  [ -f "$R/gemmepi.log" ] && grep -h "^verdict\|Error" "$R/gemmepi.log"
  [ -f "$R/stempool.log" ] && grep -h "^verdict\|Error" "$R/stempool.log"
  [ -f "$R/unfolded.log" ] && grep -h "^verdict\|Error" "$R/unfolded.log"
  [ -f "$R/fusedtrain.log" ] && grep -h "^verdict\|no graph\|Error" "$R/fusedtrain.log" | cut -c1-300 | head -n 40
  [ -f "$R/train_bs256_fused.json" ] && "$PY" - "$R/train_bs256_fused.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["train"]["models"]
tv, f = m["torchvision"], m["resnet_ext fused train"]
s = tv["median_s"] / f["median_s"]
mem = f.get("peak_mem_bytes", 0) / max(tv.get("peak_mem_bytes", 1), 1)
print(f"verdict fusedtrain step: {f['median_s'] * 1e3:.1f} ms, {f['img_per_s']:.0f} img/s, {s:.2f}x torchvision "
      f"({tv['median_s'] * 1e3:.1f} ms); peak memory {mem:.2f}x torchvision's; goal >= 1.6x (#23): "
      f"{'met' if s >= 1.6 and mem <= 1.0 else 'missed'}")
PY
  for b in 1 8 32; do  # one verdict per batch for the CUDA graphs (#25: resnet50 bs1 <= 0.8 ms, bs32 <= 1.6 ms)
    [ -f "$R/graphs_bs$b.json" ] && "$PY" - "$R/graphs_bs$b.json" "$b" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); e = r["eval"]; b = int(sys.argv[2])
g, f = (e[k]["median_s"] * 1e3 for k in ("resnet_ext frozen graphs", "resnet_ext frozen"))
c = min(v["median_s"] * 1e3 for k, v in e.items() if k.startswith("torchvision+compile"))  # the faster compile
goal = {1: 0.8, 32: 1.6}.get(b)
err = e["resnet_ext frozen graphs"]["rel_diff_vs_torchvision"]
print(f"verdict graphs bs{b}: {g:.3f} ms, {f / g:.2f}x the eager frozen mode ({f:.3f} ms), {c / g:.2f}x the faster of "
      f"compile default / reduce-overhead ({c:.3f} ms); rel diff vs torchvision {err:.1e}"
      + (f"; goal <= {goal} ms and >= 1.2x compile: {'met' if g <= goal and c / g >= 1.2 else 'missed'}" if goal else ""))
PY
  done
  for b in 1 32; do  # one verdict per batch for switches.on_cuda (opt-in until this says faster and the tests pass)
    [ -f "$R/flatcuda_bs$b.json" ] && "$PY" - "$R/flatcuda_bs$b.json" "$b" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); e = r["eval"]; s = r["eval_speedups"]
for flat, base in (("resnet_ext flat", "resnet_ext"), ("resnet_ext frozen flat", "resnet_ext frozen")):
    v = s[f"{flat} vs {base}"]
    same = e[flat]["max_abs_diff_vs_torchvision"] == e[base]["max_abs_diff_vs_torchvision"]
    print(f"verdict flatcuda bs{sys.argv[2]} {base}: {e[flat]['median_s'] * 1e3:.3f} vs {e[base]['median_s'] * 1e3:.3f} ms, "
          f"{v['median']:.2f}x ({v['min']:.2f}-{v['max']:.2f}); same diff vs torchvision: {same}; "
          f"{'faster: make it the default' if v['min'] > 1.0 else 'not faster in every round: keep it opt-in'}")
PY
  done
  [ -f "$R/report_layers.md" ] && { echo "--- layers"; grep -E "^Geomean" "$R/report_layers.md"; }
  [ -f "$R/profile.md" ] && { echo "--- profile (categories and stages)"; grep -E "^#### |^\| (conv|BN|maxpool|avgpool|GEMM|copies|optimizer|elementwise|other|stem|layer|head)" \
    "$R/profile.md" | cut -c1-160 | head -n 60; }
} > "$R/summary.txt" 2>&1
cat "$R/summary.txt" >> "$LOG"
pack
cat "$R/summary.txt"
