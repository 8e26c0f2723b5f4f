#!/usr/bin/env bash
# test.sh - set up and run every test: the README's test command, and what CI runs.
#
#   1. tools/setup.sh (packages, .venv, default model)
#   2. Release build (with CUDA kernels when nvcc is found) and the whole ctest suite:
#      cmocka unit tests + the pytest suite driving the real binary
#   3. ASan+UBSan build of the unit tests, run; a short soak of the ASan+UBSan server
#   4. clang-format check
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
JOBS="${JOBS:-$(nproc)}"
step() { printf '\n\033[1m==== %s\033[0m\n' "$*"; }

step "setup"
tools/setup.sh

step "release build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTANDEM_WERROR=ON
cmake --build build -j "$JOBS"

step "tests (release)"
ctest --test-dir build --output-on-failure -j "$JOBS"

step "sanitizer build (ASan + UBSan)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DTANDEM_SANITIZE=address,undefined \
    -DTANDEM_CUDA=OFF -DTANDEM_WERROR=ON
cmake --build build-asan -j "$JOBS"

step "unit tests under ASan + UBSan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan -L unit --output-on-failure -j "$JOBS"

step "soak under ASan + UBSan (short; bench/soak.py)"
.venv/bin/python bench/soak.py --tandem build-asan/api/tandem --streams 8 --duration 30 \
    --sample 5 --warmup 15 --rss-tolerance 0.10 --asan >build-asan/soak.json ||
    { cat build-asan/soak.json; exit 1; }
echo "soak: $(.venv/bin/python -c 'import json; d = json.load(open("build-asan/soak.json")); print(d["requests"], "requests, ok:", d["ok"])')"

step "format check"
tools/format.sh --check

step "all tests passed"
