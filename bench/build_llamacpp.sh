#!/usr/bin/env bash
# Builds llama.cpp's native `llama-bench` and `llama-batched-bench` (and optionally
# `llama-server` and `llama-quantize`) from the llama.cpp
# vendored in llama-cpp-python's PyPI source distribution: the same llama.cpp as the Python peer
# in bench/bench_engine.py and bench/serve_compare.py.
#
#   bench/build_llamacpp.sh --cpu                      # GGML_NATIVE=ON (AMX off), for this machine
#   bench/build_llamacpp.sh --cuda --arch 90           # GGML_CUDA=ON, SASS for sm_90 (H100/H200)
#   bench/build_llamacpp.sh --cuda --arch 90 --server  # also llama-server
#   bench/build_llamacpp.sh --cpu --quantize           # also llama-quantize (bench models)
#   bench/build_llamacpp.sh --pack-src FILE.tar.xz     # only write a trimmed source archive
#
# Options:
#   --cpu | --cuda       backend (default --cpu)
#   --arch A[,B]         CUDA architectures (default 90); a bare number N means N-real (SASS
#                        only, no PTX: smaller); write 90-real,90-virtual to keep PTX too
#   --server             build llama-server too
#   --quantize           build llama-quantize too (tools/make_bench_model.py --mix f16 writes
#                        the F16 file it quantizes, as users' files are made)
#   --fa-all-quants      GGML_CUDA_FA_ALL_QUANTS=ON (every K/V type pair for FlashAttention;
#                        much longer build, bigger binary; default OFF)
#   --amx                --cpu on a CPU with AMX: GGML_NATIVE=ON all the same (by default such
#                        a CPU gets its instruction sets by name, AMX left out: ggml's AMX
#                        kernels crashed on the development VM)
#   --no-strip           keep symbols
#   --src PATH           llama-cpp-python sdist (.tar.gz), an extracted sdist, a llama.cpp tree,
#                        or a trimmed archive written by --pack-src (.tar.xz)
#   --version V          llama-cpp-python version to fetch when no --src (default 0.3.36)
#   --out DIR            work folder (default <repo>/build-llamacpp); binaries go to
#                        DIR/bin-cpu or DIR/bin-cuda
#   --jobs N             parallel jobs (default nproc)
#   --pack-src FILE      write a trimmed llama.cpp source archive (what the build needs, a few
#                        MB) to FILE and exit; carry it to a machine without internet and build
#                        there with --src FILE
#
# Without --src: the tree an existing DIR/build-<mode> was configured from (an incremental
# build, e.g. adding --quantize), else the sdist in DIR, else one fetched with
# `pip download --no-binary :all: --no-deps llama-cpp-python==V` (needs PyPI).
# Static libraries (BUILD_SHARED_LIBS=OFF), so each tool is one binary; a CUDA build links
# libcudart.so.13 and libcublas(Lt).so.13 dynamically (present wherever CUDA 13 or torch's
# nvidia-* wheels are: set LD_LIBRARY_PATH to their lib folder if the loader does not find them).
# Prints the build time and the binaries' sizes, raw and xz -9 compressed, and writes
# DIR/llama-bin-<mode>.tar.xz with the stripped tools (what to carry to a GPU machine).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=cpu
ARCH=90
SERVER=0
QUANTIZE=0
FA_ALL=OFF
AMX=0
NATIVE_NOTE=
STRIP=1
SRC=
VERSION=0.3.36
OUT=$ROOT/build-llamacpp
JOBS=$(nproc)
PACK=
ARCHS=

die() { echo "build_llamacpp: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --cpu) MODE=cpu ;;
        --cuda) MODE=cuda ;;
        --arch) ARCH=$2; shift ;;
        --server) SERVER=1 ;;
        --quantize) QUANTIZE=1 ;;
        --fa-all-quants) FA_ALL=ON ;;
        --amx) AMX=1 ;;
        --no-strip) STRIP=0 ;;
        --src) SRC=$2; shift ;;
        --version) VERSION=$2; shift ;;
        --out) OUT=$2; shift ;;
        --jobs) JOBS=$2; shift ;;
        --pack-src) PACK=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# ---- locate the llama.cpp sources -------------------------------------------------------------
find_tree() {  # $1: a folder; prints the llama.cpp tree inside it
    local d
    for d in "$1" "$1/vendor/llama.cpp" "$1"/llama_cpp_python-*/vendor/llama.cpp "$1/llama.cpp"; do
        if [ -f "$d/CMakeLists.txt" ] && [ -d "$d/ggml" ] && [ -d "$d/tools/llama-bench" ]; then
            echo "$d"; return 0
        fi
    done
    return 1
}

extract() {  # $1: archive; extracts under $OUT/src-<name> once
    local a=$1 name dest
    name=$(basename "$a"); name=${name%%.tar*}
    dest=$OUT/src-$name
    if [ ! -e "$dest/.extracted" ]; then
        rm -rf "$dest"; mkdir -p "$dest"
        echo "extracting $a" >&2
        tar xf "$a" -C "$dest"
        touch "$dest/.extracted"
    fi
    find_tree "$dest" || die "no llama.cpp tree in $a"
}

PREV=
if [ -z "$SRC" ] && [ -f "$OUT/build-$MODE/CMakeCache.txt" ]; then
    # a build folder configured from another tree (an earlier --src): build there again
    # (cmake refuses a second source folder for one build folder)
    PREV=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$OUT/build-$MODE/CMakeCache.txt")
    if [ -n "$PREV" ] && find_tree "$PREV" >/dev/null; then
        echo "build folder $OUT/build-$MODE was configured from $PREV: using that tree" >&2
    else
        PREV=
    fi
fi
if [ -n "$PREV" ]; then
    LLAMA=$PREV
elif [ -n "$SRC" ]; then
    if [ -d "$SRC" ]; then
        LLAMA=$(find_tree "$(cd "$SRC" && pwd)") || die "no llama.cpp tree under $SRC"
    elif [ -f "$SRC" ]; then
        LLAMA=$(extract "$(cd "$(dirname "$SRC")" && pwd)/$(basename "$SRC")")
    else
        die "--src $SRC does not exist"
    fi
else
    SDIST=$OUT/llama_cpp_python-$VERSION.tar.gz
    if [ ! -f "$SDIST" ]; then
        PIP="$ROOT/.venv/bin/pip"; [ -x "$PIP" ] || PIP="python3 -m pip"
        echo "fetching llama-cpp-python==$VERSION source distribution" >&2
        $PIP download --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$OUT" >&2 \
            || die "pip download failed (no internet? pass --src)"
    fi
    LLAMA=$(extract "$SDIST")
fi
echo "llama.cpp sources: $LLAMA" >&2
COMMIT=$(cat "$LLAMA/.commit" 2>/dev/null \
    || GIT_CEILING_DIRECTORIES=$(dirname "$LLAMA") git -C "$LLAMA" rev-parse --short=12 HEAD 2>/dev/null \
    || echo unknown)

# ---- --pack-src: a trimmed source archive ------------------------------------------------------
if [ -n "$PACK" ]; then
    # what configuring llama.cpp with tools on and building llama-bench / llama-server needs:
    # every CMakeLists that the top level adds, ggml's CPU and CUDA backends, the vendored
    # headers, tools/ (its web UI sources included: the server build adds the folder); not
    # models/ (test vocabularies, 75 MB), docs/, tests/, examples/, the other backends
    PACKDIR=$(mktemp -d)
    T=$PACKDIR/llama.cpp
    mkdir -p "$T"
    (cd "$LLAMA" && tar cf - --exclude='*.gguf' \
        CMakeLists.txt LICENSE cmake include src common vendor tools licenses \
        ggml/cmake ggml/include ggml/src/ggml-cpu ggml/src/ggml-cuda ggml/src/ggml-blas \
        $(find ggml -maxdepth 1 -type f) $(find ggml/src -maxdepth 1 -type f) \
        $(find scripts -maxdepth 1 -name "*.cmake")) | tar xf - -C "$T"
    # backends that ggml/src/CMakeLists.txt names but that are off: empty folders are enough
    for d in "$LLAMA"/ggml/src/ggml-*/; do
        b=$(basename "$d"); [ -d "$T/ggml/src/$b" ] || mkdir -p "$T/ggml/src/$b"
    done
    echo "$COMMIT" > "$T/.commit"
    # the tests/examples folders are not needed: the build passes LLAMA_BUILD_TESTS/EXAMPLES=OFF
    rm -rf "$T/tools/ui/node_modules"
    tar cf - -C "$PACKDIR" llama.cpp | xz -9 -T0 > "$PACK"
    rm -rf "$PACKDIR"
    echo "wrote $PACK ($(stat -c %s "$PACK") bytes)"
    exit 0
fi

# ---- configure and build -----------------------------------------------------------------------
BUILD=$OUT/build-$MODE
BIN=$OUT/bin-$MODE
CMAKE_ARGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON
    -DLLAMA_BUILD_SERVER=$([ $SERVER = 1 ] && echo ON || echo OFF)
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF
    -DGGML_CCACHE=OFF
)
if command -v ninja >/dev/null; then CMAKE_ARGS+=(-G Ninja); fi
if [ $MODE = cuda ]; then
    NVCC=$(command -v nvcc || true)
    [ -n "$NVCC" ] || NVCC=/usr/local/cuda/bin/nvcc
    [ -x "$NVCC" ] || die "nvcc not found (PATH or /usr/local/cuda/bin)"
    ARCHS=
    IFS=',;' read -ra A <<< "$ARCH"
    for a in "${A[@]}"; do
        case $a in *-*) ;; *) a=$a-real ;; esac
        ARCHS=${ARCHS:+$ARCHS;}$a
    done
    CMAKE_ARGS+=(
        -DGGML_CUDA=ON -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="$ARCHS"
        -DGGML_CUDA_FA_ALL_QUANTS=$FA_ALL -DGGML_CUDA_NCCL=OFF
        # the CPU side only feeds the GPU with -ngl 99: a portable x86-64-v3 build, ggml's own
        # thread pool instead of OpenMP (no libgomp needed where the tools are carried to)
        -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF
    )
    if [ "$(uname -m)" = x86_64 ]; then
        CMAKE_ARGS+=(-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
                     -DGGML_BMI2=ON)
    fi
elif [ $AMX = 0 ] && grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
    # GGML_NATIVE=ON would build ggml's AMX kernels (-march=native on an AMX CPU), and they
    # crash (SIGSEGV in ggml_backend_amx_mul_mat, llama.cpp 0c1e570) on the development VM
    # (a Xeon that reports amx_int8); Tandem has no AMX kernels either. Every other
    # instruction set of this CPU, by name.
    NATIVE_NOTE="GGML_NATIVE=OFF + this CPU's flags without AMX (--amx: native)"
    CMAKE_ARGS+=(-DGGML_NATIVE=OFF)
    for f in sse4_2:SSE42 avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI \
             avx512f:AVX512 avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
        if grep -qw "${f%%:*}" /proc/cpuinfo; then CMAKE_ARGS+=("-DGGML_${f##*:}=ON")
        else CMAKE_ARGS+=("-DGGML_${f##*:}=OFF"); fi
    done
else
    CMAKE_ARGS+=(-DGGML_NATIVE=ON)
fi

TARGETS=(llama-bench llama-batched-bench)
[ $SERVER = 1 ] && TARGETS+=(llama-server)
[ $QUANTIZE = 1 ] && TARGETS+=(llama-quantize)

T0=$(date +%s)
# llama.cpp names its build after `git rev-parse HEAD` in its folder: keep git from finding
# an enclosing repository (this one) when the tree has no .git of its own
GIT_CEILING_DIRECTORIES=$(dirname "$LLAMA") \
cmake -S "$LLAMA" -B "$BUILD" "${CMAKE_ARGS[@]}" > "$OUT/configure-$MODE.log" 2>&1 \
    || { tail -40 "$OUT/configure-$MODE.log" >&2; die "configure failed ($OUT/configure-$MODE.log)"; }
T1=$(date +%s)
echo "building ${TARGETS[*]} ($JOBS jobs; log: $OUT/build-$MODE.log)" >&2
cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" > "$OUT/build-$MODE.log" 2>&1 \
    || { grep -E -A5 'error|FAILED' "$OUT/build-$MODE.log" | head -40 >&2; die "build failed"; }
T2=$(date +%s)

mkdir -p "$BIN"
for t in "${TARGETS[@]}"; do
    f=$(find "$BUILD" -name "$t" -type f -perm -u+x | head -1)
    [ -n "$f" ] || die "no $t built"
    cp "$f" "$BIN/$t.unstripped"
    cp "$f" "$BIN/$t"
    [ $STRIP = 1 ] && strip --strip-unneeded "$BIN/$t"
done

echo "llama.cpp $COMMIT ($MODE$([ $MODE = cuda ] && echo ", archs $ARCHS, FA_ALL_QUANTS=$FA_ALL")${NATIVE_NOTE:+, $NATIVE_NOTE}), $JOBS jobs on $(nproc) CPUs"
echo "configure $((T1 - T0)) s, build $((T2 - T1)) s"
for t in "${TARGETS[@]}"; do
    raw=$(stat -c %s "$BIN/$t")
    unst=$(stat -c %s "$BIN/$t.unstripped")
    xzs=$(xz -9 -T0 -c "$BIN/$t" | wc -c)
    awk -v f="$BIN/$t" -v r="$raw" -v u="$unst" -v x="$xzs" 'BEGIN {
        printf "%s: %d bytes (%.1f MiB; unstripped %.1f MiB), xz -9: %d bytes (%.1f MiB)\n",
               f, r, r / 1048576, u / 1048576, x, x / 1048576 }'
done
{
    echo "llama.cpp $COMMIT (vendored in llama-cpp-python $VERSION's sdist unless --src said otherwise)"
    echo "mode $MODE${ARCHS:+, CUDA archs $ARCHS, GGML_CUDA_FA_ALL_QUANTS=$FA_ALL}${NATIVE_NOTE:+, $NATIVE_NOTE}"
    echo "built $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -m) by bench/build_llamacpp.sh"
} > "$BIN/llama-build-info.txt"
TARGETS_AND_INFO=("${TARGETS[@]}" llama-build-info.txt)
# one archive of the stripped tools, to carry to another machine (xz's 64 MiB window at -9e
# keeps the code the tools share once)
TAR=$OUT/llama-bin-$MODE.tar.xz
tar cf - -C "$BIN" "${TARGETS_AND_INFO[@]}" | xz -9e -T1 > "$TAR"
echo "archive $TAR: $(stat -c %s "$TAR") bytes ($(awk -v x="$(stat -c %s "$TAR")" 'BEGIN { printf "%.1f", x / 1048576 }') MiB); unpack with tar xJf, or where there is no xz program: python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' $(basename "$TAR") DIR"
if [ $MODE = cuda ]; then
    echo "dynamic libraries:"; ldd "$BIN/llama-bench" 2>/dev/null | grep -E 'cuda|cublas|nccl|not found' || true
fi
