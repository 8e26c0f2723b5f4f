#!/usr/bin/env bash
# gpu-check.sh - the whole GPU verification as one command, on a borrowed GPU machine (one
# H100/H200, nvcc + Python with torch, none of our Debian packages, no network). Run from
# the repository root there, after tools/gpu-bundle.sh made .gpu/bundle.tar.xz here:
#
#   tools/gpu-check.sh [--out DIR] [--bundle FILE] [--quick] [--bench] [--no-serve]
#
# Steps, each logged to its own file in DIR (default ./gpu-check-out; on the lending tool,
# $OUT/gpu-check), with a line per step in DIR/summary.md:
#   1. devices    nvidia-smi, tandem --version
#   2. ops        the op test, CUDA against the CPU's scalar reference; then again with one K
#                 segment per product, where products must equal the CPU bit for bit
#   3. sanitizer  compute-sanitizer memcheck and racecheck on the op test (quick shapes)
#   4. models     tests/python/test_gpu.py: fixtures against HF and the CPU, batch
#                 invariance, CUDA graphs, two GPU shards, memory refusal
#   5. serve      the serving API suite with every server on --device cuda
#   6. bench      (--bench) bench/bench_engine.py --device cuda on generated models
# Exit status: 0 when every step that ran passed. Time: about 6 minutes without --bench.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTDIR="${OUT:+$OUT/gpu-check}"
OUTDIR="${OUTDIR:-$ROOT/gpu-check-out}"
BUNDLE="$ROOT/.gpu/bundle.tar.xz"
QUICK=0
BENCH=0
SERVE=1
while [ $# -gt 0 ]; do
    case "$1" in
    --out) OUTDIR="$2"; shift 2 ;;
    --bundle) BUNDLE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --bench) BENCH=1; shift ;;
    --no-serve) SERVE=0; shift ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown option $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUTDIR"
SUMMARY="$OUTDIR/summary.md"
: >"$SUMMARY"
FAILED=0
note() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }

COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"

# ---- the bundle: binaries, libraries, wheels ------------------------------------------------
T=/tmp/tandem-gpu
if [ -f "$BUNDLE" ]; then
    # Python's tarfile, not tar -J: the image may lack the xz program, never Python
    rm -rf "$T" && mkdir -p "$T" &&
        python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
            "$BUNDLE" "$T"
    BIN="$T/bin" # wrappers: our libraries on the path of our binaries only
    if ls "$T/wheels/"*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$T/site" "$T/wheels/"*.whl >"$OUTDIR/pip.log" 2>&1 ||
            WHEELS_FAILED=1
        export PYTHONPATH="$T/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
else
    # a machine with a normal build (a developer's GPU box)
    BIN="$ROOT/build/api"
    [ -x "$ROOT/build/tests/test_backend_ops" ] && ln -sf "$ROOT/build/tests/test_backend_ops" "$BIN/"
fi
export TANDEM_BIN="$BIN/tandem" TANDEM_SOURCE_DIR="$ROOT" TANDEM_BUILD_DIR="$ROOT/build"
if [ -f "$BUNDLE" ] && [ -f "$T/COMMIT" ]; then
    COMMIT="$(tr '\n' ' ' <"$T/COMMIT")"
fi
note "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), binaries of commit $COMMIT"
note ""
[ "${WHEELS_FAILED:-0}" = 1 ] && note "- wheels: install failed (see pip.log)"
PY="${PYTHON:-python3}"

# step NAME LOG TIMEOUT_S COMMAND...: runs, records pass/fail/time in the summary
step() {
    local name="$1" logf="$OUTDIR/$2" limit="$3"
    shift 3
    local t0=$SECONDS rc
    timeout --signal=KILL "$limit" "$@" >>"$logf" 2>&1
    rc=$?
    local dt=$((SECONDS - t0))
    if [ $rc -eq 0 ]; then
        note "- $name: pass (${dt} s)"
    elif [ $rc -eq 77 ]; then
        note "- $name: SKIPPED: no CUDA device (${dt} s)"
        FAILED=1
    else
        note "- $name: FAIL, exit $rc (${dt} s; $(basename "$logf"))"
        FAILED=1
    fi
    return $rc
}

{
    nvidia-smi -L
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$BIN/tandem" --version
} >"$OUTDIR/devices.log" 2>&1
note "$(grep -m1 '^cuda device 0' "$OUTDIR/devices.log" || echo 'no CUDA device visible to tandem')"
note ""

# ---- ops -------------------------------------------------------------------------------------
OPS="$BIN/test_backend_ops"
step "op test (CUDA vs CPU scalar reference)" ops.log 300 \
    env TANDEM_OPTEST_DEVICE=cuda "$OPS"
step "op test, one K segment: products bit-exact with the CPU" ops.log 300 \
    env TANDEM_OPTEST_DEVICE=cuda TANDEM_CUDA_SPLITK=1 TANDEM_OPTEST_EXACT=1 "$OPS"

# ---- sanitizer -------------------------------------------------------------------------------
CS="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
if [ -n "$CS" ]; then
    # the real binary under the sanitizer (not the wrapper script)
    REAL="$OPS"
    [ -x "$T/libexec/test_backend_ops" ] && REAL="$T/libexec/test_backend_ops"
    for tool in memcheck racecheck; do
        step "compute-sanitizer $tool (op test, quick shapes)" sanitizer.log 420 \
            env TANDEM_OPTEST_DEVICE=cuda TANDEM_OPTEST_QUICK=1 LD_LIBRARY_PATH="$T/lib" \
            "$CS" --tool "$tool" --error-exitcode 3 "$REAL"
        [ "$QUICK" = 1 ] && break
    done
else
    note "- compute-sanitizer: not found, skipped"
fi

# ---- models ------------------------------------------------------------------------------------
step "model level (tests/python/test_gpu.py)" models.log 600 \
    "$PY" -m pytest -q -rs -p no:cacheprovider tests/python/test_gpu.py
note "  $(grep -E '(passed|failed)' "$OUTDIR/models.log" | tail -1)"

# ---- serving -----------------------------------------------------------------------------------
if [ "$SERVE" = 1 ] && [ "$QUICK" = 0 ]; then
    step "serving suite on --device cuda" serve.log 600 \
        env TANDEM_TEST_DEVICE=cuda "$PY" -m pytest -q -rs -p no:cacheprovider \
        tests/python/test_serve.py tests/python/test_serve_errors.py \
        tests/python/test_serve_lifecycle.py tests/python/test_scripted_fixtures.py
    note "  $(grep -E '(passed|failed)' "$OUTDIR/serve.log" | tail -1)"
    grep -E "^SKIPPED" "$OUTDIR/serve.log" | sed 's/^/  /' | head -5 >>"$SUMMARY"
fi

# ---- benchmark ---------------------------------------------------------------------------------
if [ "$BENCH" = 1 ]; then
    step "benchmark (bench/gpu_bench.sh)" bench.log 600 bash bench/gpu_bench.sh --tandem "$BIN/tandem"
fi

note ""
if [ $FAILED = 0 ]; then
    note "all steps passed"
else
    note "some steps FAILED: see the logs in $OUTDIR"
fi
exit $FAILED
