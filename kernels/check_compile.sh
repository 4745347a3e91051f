#!/usr/bin/env bash
# Compile every GPU kernel file without running it:
#   1. nvcc -arch=sm_90 -c each kernels/*.cu, all warnings as errors (device
#      and host side), printing ptxas' register / shared-memory / spill report;
#   2. NVRTC (as cupy.RawModule does it), through kernels/nvrtc_check.py,
#      when a libnvrtc is found (skipped with a note otherwise).
# Needs nvcc on PATH; no GPU. Exit status non-zero on any error or warning.
#
#   bash kernels/check_compile.sh            # both checks
#   ARCH=sm_80 bash kernels/check_compile.sh # another target for the nvcc pass
set -euo pipefail
cd "$(dirname "$0")"
ARCH=${ARCH:-sm_90}
NVCC=${NVCC:-nvcc}
if ! command -v "$NVCC" >/dev/null 2>&1; then
    echo "check_compile: $NVCC not found on PATH" >&2
    exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "check_compile: $("$NVCC" --version | tail -1), -arch=$ARCH"
fail=0
for f in *.cu; do
    log="$tmp/${f%.cu}.log"
    if "$NVCC" -arch="$ARCH" -std=c++17 -c -Werror all-warnings \
        -Xcompiler -Wall,-Wextra,-Werror -Xptxas -warn-spills,-warn-lmem-usage \
        --resource-usage -o "$tmp/${f%.cu}.o" "$f" >"$log" 2>&1; then
        echo "  ok   $f"
        # one line per kernel: name, registers, shared memory, stack / spills
        awk '/Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); k = substr($0, RSTART + 1, RLENGTH - 2) }
             /bytes stack frame/ { st = $0; sub(/^ +/, "", st) }
             /Used [0-9]+ registers/ { r = $0; sub(/.*Used /, "", r); printf "         %-24s %s; %s\n", k, r, st }' "$log"
    else
        echo "  FAIL $f"
        sed 's/^/         /' "$log"
        fail=1
    fi
done
if [ "$fail" != 0 ]; then
    echo "check_compile: nvcc FAILED"
    exit 1
fi
echo "check_compile: nvcc ok"

PY=${PYTHON:-python3}
set +e
"$PY" nvrtc_check.py
rc=$?
set -e
case $rc in
    0) echo "check_compile: nvrtc ok" ;;
    77) echo "check_compile: nvrtc not checked (no libnvrtc)" ;;
    *) echo "check_compile: nvrtc FAILED"; exit 1 ;;
esac
