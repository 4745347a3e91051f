#!/usr/bin/env bash
# Bounded-time fuzzing under ASan + UBSan, SECONDS for each target: the
# verifier file, the detector file, and the pipeline on hostile images.
#   cpp/fuzz/run_fuzz.sh [SECONDS=60] [BUILD_DIR=build/fuzz]
# DEEPID2_FUZZ_OPT=-O0 builds faster and runs slower (CI's smoke test); default -O1.
# With clang++ and libFuzzer: libFuzzer over cpp/fuzz/corpus plus valid
# models written at run time; otherwise the deterministic mutation driver
# (g++). Exits non-zero on any crash, leak or sanitizer report.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_TO_RUN=${1:-60}
BUILD=${2:-build/fuzz}
CXX_FOR_FUZZ=${CXX:-}
if [ -z "$CXX_FOR_FUZZ" ] && command -v clang++ >/dev/null 2>&1; then CXX_FOR_FUZZ=clang++; fi
configure() {
    cmake -S cpp -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDEEPID2_FUZZ=ON \
          -DDEEPID2_TESTS=OFF -DDEEPID2_EXAMPLES=OFF -DDEEPID2_FUZZ_OPT="${DEEPID2_FUZZ_OPT:--O1}" \
          ${1:+-DCMAKE_CXX_COMPILER=$1} >/dev/null
}
if ! configure "$CXX_FOR_FUZZ"; then
    # e.g. clang++ without an OpenMP runtime: the default compiler's mutation driver
    echo "configuring with ${CXX_FOR_FUZZ:-the default compiler} failed; trying the default"
    rm -rf "$BUILD"
    configure ""
fi
cmake --build "$BUILD" -j 2 --target deepid2_fuzz_model_reader deepid2_fuzz_detector_reader \
    deepid2_fuzz_pipeline >/dev/null
DETECTOR=deepid2_core/models/yunet.safetensors
export OMP_NUM_THREADS=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
if grep -q "DEEPID2_HAVE_LIBFUZZER:INTERNAL=1" "$BUILD/CMakeCache.txt"; then
    cmake --build "$BUILD" -j 2 --target deepid2_fuzz_seeds >/dev/null
    seeds=$(mktemp -d)
    "$BUILD/fuzz/deepid2_fuzz_seeds" --write-seeds "$seeds"
    work=$(mktemp -d)  # new inputs go here, the committed corpus stays as it is
    "$BUILD/fuzz/deepid2_fuzz_model_reader" -max_total_time="$SECONDS_TO_RUN" -max_len=300000 \
        -print_final_stats=1 "$work" cpp/fuzz/corpus "$seeds"
    dseeds=$(mktemp -d); cp "$DETECTOR" "$dseeds/"
    "$BUILD/fuzz/deepid2_fuzz_detector_reader" -max_total_time="$SECONDS_TO_RUN" -max_len=300000 \
        -print_final_stats=1 "$(mktemp -d)" "$dseeds"
    "$BUILD/fuzz/deepid2_fuzz_pipeline" -max_total_time="$SECONDS_TO_RUN" -max_len=65536 \
        -print_final_stats=1 "$(mktemp -d)"
else
    echo "libFuzzer not available: running the mutation driver (g++, ASan + UBSan)"
    echo "verifier file:"
    "$BUILD/fuzz/deepid2_fuzz_model_reader" --seconds "$SECONDS_TO_RUN" --corpus cpp/fuzz/corpus
    echo "detector file:"
    "$BUILD/fuzz/deepid2_fuzz_detector_reader" --seconds "$SECONDS_TO_RUN" --no-builtin-seeds \
        --seed-file "$DETECTOR"
    echo "pipeline on image views:"
    "$BUILD/fuzz/deepid2_fuzz_pipeline" --seconds "$SECONDS_TO_RUN" --no-builtin-seeds
fi
