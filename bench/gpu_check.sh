#!/usr/bin/env bash
# The GPU backend's whole check, in one run of at most 10 minutes on a machine
# with an NVIDIA GPU, CuPy, pybind11 and PyTorch (CUDA); no network needed.
# From the repository root:
#
#     bash bench/gpu_check.sh [--budget SECONDS] [--dry-run]
#
# Steps (each with a time cap; the whole run stays under GPU_CHECK_BUDGET
# seconds, default 560):
#   1. env        GPU, driver, CuPy, PyTorch, nvcc, compute-sanitizer
#   2. build      the cpu extension in place (setup.py build_ext --inplace)
#   3. compile    ptxas' registers / shared memory / spills of every kernel
#                 (bench/kernels/ptxas.py; + kernels/check_compile.sh with
#                 GPU_CHECK_NVCC=1)
#   4. tests      tests/backends/test_gpu_*.py and tests/gpu_emu/test_tuning.py on the
#                 GPU (DEEPID2_REQUIRE_GPU=1: a missing GPU fails)
#   5. memcheck   compute-sanitizer --tool memcheck over tests/backends/test_gpu_smoke.py
#   6. racecheck  compute-sanitizer --tool racecheck, the same run
#   7. sweep      bench/kernels/sweep.py: every variant of every op checked
#                 and timed at batches 512, 2048, 128 within --budget seconds
#                 (default 180; then it stops and keeps the best so far); the
#                 winners go to the tuning file $OUT/gpu_tuning.json
#   8. train      bench/bench_train_gpu.py: a whole training step with the
#                 tuned picks (and with the heuristics) at 128, 512, 2048 vs
#                 the PyTorch reference, fp32 and TF32 (our TF32 row where the
#                 backend has a precision switch, else "not available")
#   9. infer      bench/bench_infer_gpu.py: features at batch 1024, and the
#                 latency of batch 1 eager and as a CUDA graph (where the
#                 backend can capture one, else "not available")
#  10. synccheck  compute-sanitizer --tool synccheck (if time is left)
#  11. bench      bench/bench_gpu.py: every op vs PyTorch (if time is left)
#
# --dry-run: every step on the kernel emulator (tests/gpu_emu) at tiny
# shapes, no GPU, CuPy or PyTorch needed: build = the emulator's build of
# every kernel file; tests in the emulator; memcheck = the smoke tests with
# the emulated kernels built under AddressSanitizer; racecheck = the same in
# reverse thread order; the sweep, the training step and the inference at the
# emulator's shapes (PyTorch rows skipped, saying why). CI runs it
# (tests/gpu_emu/test_gpu_check.py) so that the script itself is tested.
#
# PyTorch baselines come from ../shared/reference, or $DEEPID2_REFERENCE_DIR,
# or .gpu_ref/ in the repository (an ignored copy carried to a GPU machine).
# Output: $OUT (the device tool's output folder) or /tmp/deepid2_gpu_check:
# gpu_check.log (everything), gpu_tuning.json (the tuning file: copy it to
# the machine's per-user location or point $DEEPID2_GPU_TUNING at it),
# sweep.json, bench_train_gpu.json, bench_infer_gpu.json, and last in the log
# a table of the steps and the tables of the sweep, the step and inference.
# Exit status: 0 when every step that ran passed; 2 on a bad argument.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
SWEEP_BUDGET=180
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --budget)
            if [ $# -lt 2 ] || ! [[ $2 =~ ^[0-9]+$ ]] || [ "$2" -lt 1 ]; then
                echo "gpu_check: --budget needs a positive number of seconds" >&2
                exit 2
            fi
            SWEEP_BUDGET=$2
            shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1' (--budget SECONDS, --dry-run)" >&2; exit 2 ;;
    esac
    shift
done
LOGDIR=${OUT:-/tmp/deepid2_gpu_check}
mkdir -p "$LOGDIR"
LOG=$LOGDIR/gpu_check.log
: >"$LOG"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-560}
TUNING=$LOGDIR/gpu_tuning.json
export PYTHONUNBUFFERED=1 DEEPID2_KERNELS_DIR=$ROOT/kernels OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/deepid2_cupy_cache}
if [ "$DRY" = 1 ]; then
    export DEEPID2_REQUIRE_GPU=0 DEEPID2_GPU_TEST_MODES=emu
    EMU=--emu
    SWEEP_BATCHES="2"
    [ "$SWEEP_BUDGET" = 180 ] && SWEEP_BUDGET=15
else
    export DEEPID2_REQUIRE_GPU=1 DEEPID2_GPU_TEST_MODES=cuda
    EMU=
    SWEEP_BATCHES="512 2048 128"
fi
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
    if [ "$DRY" = 1 ]; then
        echo "dry run: every step on the kernel emulator (tests/gpu_emu) at tiny shapes"
        g++ --version | head -1
    else
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    fi
    "$PY" - <<'EOF'
import sys, numpy
print("python", sys.version.split()[0], "numpy", numpy.__version__)
try:
    import cupy
    print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
          "devices", cupy.cuda.runtime.getDeviceCount())
except Exception as e:
    print("cupy: not usable:", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())
except ImportError as e:
    print("torch: not importable:", e)
EOF
    if command -v nvcc >/dev/null; then nvcc --version | tail -1; else echo "nvcc: not found"; fi
    echo "compute-sanitizer: ${SAN:-not found}"
}

build_emu() {  # the emulator's build of every kernel file (g++, in parallel, cached by source)
    "$PY" - <<'EOF'
import os, sys
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, "tests")
import gpu_support
from deepid2_core.backends import _kernel_src
g = gpu_support.load("emu")
build = lambda f: g.cp.RawModule(code=_kernel_src.source(f), options=_kernel_src.NVRTC_OPTIONS)
with ThreadPoolExecutor(os.cpu_count() or 2) as ex:
    for f, mod in zip(_kernel_src.FILES, ex.map(build, _kernel_src.FILES)):
        print(f"  emulator build ok: {f}.cu ({len(mod.bounds)} kernels)")
EOF
}

compile_info() {  # ptxas' figures of every kernel; the -Werror check on request
    if [ "${GPU_CHECK_NVCC:-0}" = 1 ]; then bash kernels/check_compile.sh || return 1; fi
    if command -v "${NVCC:-nvcc}" >/dev/null; then
        "$PY" bench/kernels/ptxas.py
    else
        echo "nvcc not found: no ptxas figures (the bench tables say so)"
    fi
}

sanitize() {  # sanitize TOOL: the smoke tests under compute-sanitizer (or the emulator's stand-in)
    if [ "$DRY" = 1 ]; then
        case $1 in
            memcheck)   # out-of-bounds accesses of the emulated kernels, caught by ASan
                export DEEPID2_EMU_CXXFLAGS="-fsanitize=address -fno-omit-frame-pointer -O0 -g0"
                export LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0
                build_emu && "$PY" -m pytest tests/backends/test_gpu_smoke.py -q -p no:cacheprovider ;;
            racecheck)  # a missing __syncthreads changes the result in reverse thread order
                EMU_ORDER=reverse "$PY" -m pytest tests/backends/test_gpu_smoke.py -q -p no:cacheprovider ;;
            synccheck)
                echo "synccheck: the emulator fails every launch with a divergent __syncthreads;" \
                     "the tests, memcheck and racecheck steps ran every kernel under it" ;;
        esac
        return
    fi
    if [ -z "$SAN" ]; then
        echo "compute-sanitizer not found"
        return 1
    fi
    DEEPID2_GPU_NO_POOL=1 "$SAN" --tool "$1" --error-exitcode 1 "${@:2}" \
        "$PY" -m pytest tests/backends/test_gpu_smoke.py -q -p no:cacheprovider
}

sweep() {  # sweep SECONDS: the autotuning sweep within that budget; 1/4 of it for TF32
    "$PY" bench/kernels/sweep.py $EMU --budget $(($1 * 3 / 4 > 0 ? $1 * 3 / 4 : 1)) --batches $SWEEP_BATCHES \
        --tuning "$TUNING" --json "$LOGDIR/sweep.json" || return 1
    "$PY" bench/kernels/sweep.py $EMU --budget $(($1 / 4 > 0 ? $1 / 4 : 1)) --batches $SWEEP_BATCHES \
        --precision tf32 --families lsconv_fwd lsconv_dx lsconv_dw lsconv_pool \
        --tuning "$TUNING" --json "$LOGDIR/sweep_tf32.json"
}

ops_vs_torch() {
    if [ "$DRY" = 1 ]; then
        echo "bench_gpu.py times the ops against PyTorch with CUDA events: not in a dry run" \
             "(the sweep step ran every variant of every op in the emulator)"
        return 0
    fi
    "$PY" bench/bench_gpu.py --json "$LOGDIR/bench_gpu.json"
}

export PY SAN DRY EMU BUDGET SWEEP_BUDGET SWEEP_BATCHES TUNING LOGDIR
export -f env_info build_emu compile_info sanitize sweep ops_vs_torch

step env 30 0 env_info
if [ "$DRY" = 1 ]; then
    step build 120 0 bash -c 'build_emu && echo "the cpu extension is not built in a dry run (no emulated step needs it)"'
else
    step build 120 0 "$PY" setup.py build_ext --inplace -j 16
fi
step compile 60 400 compile_info
if [ "$DRY" = 1 ]; then
    step tests 150 300 "$PY" -m pytest tests/backends/test_gpu_smoke.py tests/gpu_emu/test_tuning.py \
        -q -p no:cacheprovider -rfEs --tb=short --maxfail=25
else
    step tests 150 330 "$PY" -m pytest tests/backends/test_gpu_ops.py tests/backends/test_gpu_loss.py \
        tests/backends/test_gpu_errors.py tests/backends/test_gpu_smoke.py tests/backends/test_gpu_train.py \
        tests/gpu_emu/test_tuning.py -q -p no:cacheprovider -rfEs --tb=short --maxfail=25
fi
step memcheck 60 300 sanitize memcheck --leak-check no
step racecheck 60 260 sanitize racecheck --racecheck-report hazard
# the sweep's budget: --budget, or less so that 150 s stay for the steps after
# it; 60 s more for its last case's oracle and check before it looks at the time
SWEEP_LEFT=$((BUDGET - SECONDS - 150 - 60))
[ "$SWEEP_LEFT" -lt "$SWEEP_BUDGET" ] && SWEEP_BUDGET=$SWEEP_LEFT
if [ "$SWEEP_BUDGET" -ge 5 ]; then
    step sweep $((SWEEP_BUDGET + 60)) 150 sweep "$SWEEP_BUDGET"
else
    STATUS+=("$(printf '%-10s SKIPPED (out of time)' sweep)")
fi
step train 120 40 "$PY" bench/bench_train_gpu.py $EMU --tuning "$TUNING" \
    --json "$LOGDIR/bench_train_gpu.json"
step infer 45 0 "$PY" bench/bench_infer_gpu.py $EMU --json "$LOGDIR/bench_infer_gpu.json"
step synccheck 45 0 sanitize synccheck
step bench 90 0 ops_vs_torch

{
    echo
    echo "gpu_check: steps (${SECONDS}s in all; $([ "$DRY" = 1 ] && echo "dry run, emulator; ")logs in $LOGDIR; tuning file $TUNING)"
    for s in "${STATUS[@]}"; do echo "  $s"; done
    # the tables last: the sweep's picks, the training step, inference, the ops vs torch
    for head in "^sweep summary" "^bench_train_gpu summary" "^bench_infer_gpu summary" "^bench_gpu summary"; do
        if grep -q "$head" "$LOG"; then
            echo
            awk -v h="$head" '$0 ~ h {on=1} on && /^=== /{exit} on' "$LOG"
        fi
    done
} | tee -a "$LOG.summary"
cat "$LOG.summary" >>"$LOG"
rm -f "$LOG.summary"
exit "$FAILED"
