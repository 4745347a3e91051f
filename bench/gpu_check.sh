#!/usr/bin/env bash
# The GPU backend's whole check, in one run on a machine with an NVIDIA GPU,
# CuPy, pybind11 and PyTorch (CUDA) installed; no network needed. From the
# repository root:
#
#     bash bench/gpu_check.sh
#
# Steps (each with a time cap; the whole run stays under GPU_CHECK_BUDGET
# seconds, default 450, so under 8 minutes even with a slow build):
#   1. env        GPU, driver, CuPy, PyTorch, compute-sanitizer
#   2. build      the cpu extension in place (setup.py build_ext --inplace)
#   3. compile    kernels/check_compile.sh (nvcc -Werror, NVRTC)
#   4. tests      tests/test_gpu_*.py on the GPU (DEEPID2_REQUIRE_GPU=1: a
#                 missing GPU fails instead of skipping)
#   5. memcheck   compute-sanitizer --tool memcheck over tests/test_gpu_smoke.py
#                 (CuPy's memory pool off, so each array is its own allocation)
#   6. racecheck  compute-sanitizer --tool racecheck, the same run
#   7. bench      bench/bench_gpu.py: every op at batch 128 and 1024 vs PyTorch
#   8. train      bench/bench_train_gpu.py: a whole training step at batch
#                 128, 512 and 2048 vs the reference model in PyTorch
#   9. synccheck  compute-sanitizer --tool synccheck (if time is left)
# The nvcc compile check (kernels/check_compile.sh) runs in CI on every
# machine; GPU_CHECK_NVCC=1 runs it here too.
#
# PyTorch baselines come from ../shared/reference, or $DEEPID2_REFERENCE_DIR,
# or .gpu_ref/ in the repository (an ignored copy carried to a GPU machine).
# then a table of the steps and, last, the benchmark's table.
#
# Logs: $OUT (the device tool's output folder) or /tmp/deepid2_gpu_check:
# gpu_check.log (everything), bench_gpu.json. Exit status: 0 when every
# step that ran passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LOGDIR=${OUT:-/tmp/deepid2_gpu_check}
mkdir -p "$LOGDIR"
LOG=$LOGDIR/gpu_check.log
: >"$LOG"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-420}
export PYTHONUNBUFFERED=1 DEEPID2_REQUIRE_GPU=1 DEEPID2_GPU_TEST_MODES=cuda
export DEEPID2_KERNELS_DIR=$ROOT/kernels
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/deepid2_cupy_cache}
if [ -z "${DEEPID2_REFERENCE_DIR:-}" ] && [ ! -d ../shared/reference ] && [ -d .gpu_ref ]; then
    export DEEPID2_REFERENCE_DIR=$ROOT/.gpu_ref
fi
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1 || true)
SECONDS=0
STATUS=()
FAILED=0

# step NAME CAP RESERVE CMD...: run CMD with a timeout of CAP seconds, or less
# so that RESERVE seconds stay for the steps after it; skip if none is left.
step() {
    local name=$1 cap=$2 reserve=$3
    shift 3
    local left=$((BUDGET - SECONDS - reserve))
    local t=$((cap < left ? cap : left))
    if [ "$t" -lt 15 ]; then
        STATUS+=("$(printf '%-10s SKIPPED (out of time)' "$name")")
        echo "=== $name: skipped, out of time" | tee -a "$LOG"
        return 0
    fi
    echo "=== [${SECONDS}s] $name (cap ${t}s): $*" | tee -a "$LOG"
    local t0=$SECONDS rc steplog=$LOGDIR/.step.log
    # bash -c: the command may be one of the functions below (exported)
    timeout --kill-after=10 "$t" bash -c '"$@"' _ "$@" 2>&1 | tee "$steplog" | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    local what=ok
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        what="TIMEOUT after ${t}s"
    elif [ "$rc" != 0 ] && grep -q "Device not supported" "$steplog"; then
        what="UNSUPPORTED here"   # compute-sanitizer under gVisor: not a failure of ours
        rc=0
    elif [ "$rc" != 0 ]; then
        what="FAILED (exit $rc)"
    fi
    rm -f "$steplog"
    [ "$rc" = 0 ] || FAILED=1
    STATUS+=("$(printf '%-10s %-22s %4ds' "$name" "$what" $((SECONDS - t0)))")
}

env_info() {
    set -e
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    "$PY" - <<'EOF'
import sys, numpy
print("python", sys.version.split()[0], "numpy", numpy.__version__)
import cupy
print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
      "devices", cupy.cuda.runtime.getDeviceCount())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())
except ImportError as e:
    print("torch: not importable:", e)
EOF
    nvcc --version | tail -1
    echo "compute-sanitizer: ${SAN:-not found}"
}

sanitize() {  # sanitize TOOL: the smoke tests under compute-sanitizer
    if [ -z "$SAN" ]; then
        echo "compute-sanitizer not found"
        return 1
    fi
    DEEPID2_GPU_NO_POOL=1 "$SAN" --tool "$1" --error-exitcode 1 "${@:2}" \
        "$PY" -m pytest tests/test_gpu_smoke.py -q -p no:cacheprovider
}

export PY SAN
export -f env_info sanitize

step env 30 0 env_info
step build 120 0 "$PY" setup.py build_ext --inplace -j 16
if [ "${GPU_CHECK_NVCC:-0}" = 1 ]; then
    step compile 60 280 bash kernels/check_compile.sh
fi
step tests 150 120 "$PY" -m pytest tests/test_gpu_ops.py tests/test_gpu_loss.py \
    tests/test_gpu_errors.py tests/test_gpu_smoke.py tests/test_gpu_train.py \
    -q -p no:cacheprovider -rfEs --tb=short --maxfail=25
step memcheck 60 110 sanitize memcheck --leak-check no
step racecheck 60 90 sanitize racecheck --racecheck-report hazard
step bench 90 40 "$PY" bench/bench_gpu.py --json "$LOGDIR/bench_gpu.json"
step train 80 0 "$PY" bench/bench_train_gpu.py --fast --json "$LOGDIR/bench_train_gpu.json"
step synccheck 45 0 sanitize synccheck

{
    echo
    echo "gpu_check: steps (${SECONDS}s in all; logs in $LOGDIR)"
    for s in "${STATUS[@]}"; do echo "  $s"; done
    # the benchmark's table last
    if grep -q "^bench_gpu summary" "$LOG"; then
        echo
        sed -n '/^bench_gpu summary/,/^checks:/p' "$LOG"
    fi
    if grep -q "^bench_train_gpu summary" "$LOG"; then
        echo
        awk '/^bench_train_gpu summary/{on=1} on && /^=== /{exit} on' "$LOG"
    fi
} | tee -a "$LOG.summary"
cat "$LOG.summary" >>"$LOG"
rm -f "$LOG.summary"
exit "$FAILED"
