#!/usr/bin/env bash
# gpu-bundle.sh - prepare, on a machine with the CUDA toolkit and our Debian packages, what
# tools/gpu-check.sh needs on a borrowed GPU machine that has neither our packages nor a
# network: one archive .gpu/bundle.tar.xz holding
#   bin/      wrappers that run libexec/'s binaries with lib/ on their library path only
#             (the image's own programs, Python and torch among them, keep theirs)
#   libexec/  tandem and the op test, built for the GPU's architecture
#   lib/      every shared library they load that a bare CUDA image lacks (the ldd closure
#             minus glibc and the CUDA driver), and UCX's transport modules (lib/ucx)
#   wheels/   the Python packages the tests import that the image lacks (gguf, openai,
#             anthropic and their dependencies), for Python 3.12 manylinux
#
#   tools/gpu-bundle.sh [--arch 90] [--no-wheels]
#
# The archive travels with the working tree (at most 64 MiB in all, the tree included):
# carry `.gpu` (git-ignored). docs/gpu.md has the whole procedure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ARCH=90
WHEELS=1
while [ $# -gt 0 ]; do
    case "$1" in
    --arch) ARCH="$2"; shift 2 ;;
    --no-wheels) WHEELS=0; shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu-bundle: unknown option $1" >&2; exit 2 ;;
    esac
done
log() { printf '\033[1m[gpu-bundle]\033[0m %s\n' "$*"; }

BUILD="$ROOT/build-gpu"
STAGE="$ROOT/.gpu/stage"
log "building for sm_$ARCH in $BUILD"
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DTANDEM_CUDA=ON \
    -DTANDEM_CUDA_ARCHS="${ARCH}-real" >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target tandem test_backend_ops >/dev/null

rm -rf "$STAGE"
mkdir -p "$STAGE/bin" "$STAGE/libexec" "$STAGE/lib/ucx" "$STAGE/wheels"
cp "$BUILD/api/tandem" "$BUILD/tests/test_backend_ops" "$STAGE/libexec/"
strip "$STAGE/libexec/"* 2>/dev/null || true
for b in tandem test_backend_ops; do
    {
        echo '#!/bin/sh'
        echo '# runs the real binary with the bundle'"'"'s libraries on its path, and only its'
        echo 'd="$(dirname "$(readlink -f "$0")")/.."'
        echo 'LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" UCX_MODULE_DIR="$d/lib/ucx" \'
        echo "    exec \"\$d/libexec/$b\" \"\$@\""
    } >"$STAGE/bin/$b"
    chmod +x "$STAGE/bin/$b"
done

# The shared libraries: all of ldd's answers but the C and C++ runtimes and the driver,
# which the GPU machine has in newer versions (backward compatible, so ours are not needed).
skip='^(libc|libm|libdl|librt|libpthread|libresolv|ld-linux-x86-64|libstdc\+\+|libgcc_s|libcuda|libnvidia)\.'
for bin in "$STAGE/libexec/"*; do
    ldd "$bin" | awk '/=> \//{print $3}'
done | sort -u | while read -r lib; do
    name="$(basename "$lib")"
    if ! [[ "$name" =~ $skip ]]; then
        cp -L "$lib" "$STAGE/lib/$name"
    fi
done
# UCX loads its transports (ib, rdmacm, cma) from <libucs dir>/ucx at run time; the
# checks point UCX_MODULE_DIR there.
UCXDIR="$(dirname "$(ldd "$STAGE/libexec/tandem" | awk '/libucs/{print $3}')")/ucx"
if [ -d "$UCXDIR" ]; then
    for f in "$UCXDIR"/*.so.0; do
        cp -L "$f" "$STAGE/lib/ucx/"
    done
    # their own dependencies (libibverbs, librdmacm, libnl)
    for f in "$STAGE/lib/ucx/"*; do
        ldd "$f" | awk '/=> \//{print $3}'
    done | sort -u | while read -r lib; do
        name="$(basename "$lib")"
        if ! [[ "$name" =~ $skip ]] && [ ! -e "$STAGE/lib/$name" ]; then
            cp -L "$lib" "$STAGE/lib/$name"
        fi
    done
fi

if [ "$WHEELS" = 1 ]; then
    # Python 3.12 on the GPU image (it has numpy, pytest, jinja2, httpx, tokenizers, torch;
    # see .library/device/KINDS.md); versions as tools/requirements.txt pins them.
    PIP=(.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12
         --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
         --platform manylinux2014_x86_64 --platform any -d "$STAGE/wheels")
    want=(gguf==0.19.0 openai==3.54.0 anthropic==2.12.0)
    # and their dependencies the image lacks, at the versions our venv resolved
    for dep in httpx2 httpcore2 truststore jiter pydantic pydantic-core annotated-types \
        typing-inspection sniffio distro docstring-parser opentelemetry-api \
        importlib-metadata; do
        v="$(.venv/bin/python -m pip show "$dep" 2>/dev/null | awk '/^Version:/{print $2}' || true)"
        if [ -n "$v" ]; then
            want+=("$dep==$v")
        fi
    done
    log "wheels: ${want[*]}"
    "${PIP[@]}" "${want[@]}"
fi

git rev-parse --short=12 HEAD >"$STAGE/COMMIT" 2>/dev/null || echo unknown >"$STAGE/COMMIT"
if ! git diff --quiet HEAD 2>/dev/null; then
    echo "+uncommitted changes" >>"$STAGE/COMMIT"
fi
mkdir -p .gpu
tar -C "$STAGE" -cJf .gpu/bundle.tar.xz .
log "$(du -h .gpu/bundle.tar.xz | cut -f1) in .gpu/bundle.tar.xz ($(ls "$STAGE/lib" | wc -l) libraries, $(ls "$STAGE/wheels" | wc -l) wheels)"
log "tracked tree: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes; the total sent must stay under 64 MiB"
