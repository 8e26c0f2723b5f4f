#!/usr/bin/env bash
# cross_test_arm64.sh - cross-builds the CPU kernel unit tests for arm64 and runs them under
# qemu-aarch64 (qemu's default "max" CPU has Advanced SIMD and dotprod, so both NEON
# levels are exercised against the scalar reference).
#
# Needs (Debian): gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user, and cmocka for
# arm64: dpkg --add-architecture arm64 && apt-get update && apt-get install libcmocka-dev:arm64
# (which brings the multiarch libc6:arm64 the binaries run with; qemu 7.2 hangs in
# pthread_create when the cross libc is used through QEMU_LD_PREFIX instead).
#
#   tools/cross_test_arm64.sh [build-dir]        (default: build-arm64)
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$SRC/build-arm64}
CC=${CC:-aarch64-linux-gnu-gcc}
QEMU=${QEMU:-qemu-aarch64}
mkdir -p "$OUT/obj" "$OUT/generated"
[ -f "$OUT/generated/tdm_build_config.h" ] ||
    sed -e 's/@[A-Za-z_]*@/0/g' "$SRC/common/build_config.h.in" >"$OUT/generated/tdm_build_config.h"

CFLAGS=(-std=c11 -O2 -g -Wall -Wextra -Wshadow -Wno-unused-parameter -Werror -D_GNU_SOURCE
        -I"$SRC" -I"$OUT/generated")
REF=(kernels/cpu/quant_ref.c kernels/cpu/dot_ref.c kernels/cpu/quant_k_ref.c)
LIB=(common/status.c common/log.c common/mem.c common/cpu_features.c model/tensor_types.c
     kernels/cpu/isa.c kernels/cpu/vec_ref.c kernels/cpu/vec_ops.c kernels/cpu/pool.c
     kernels/cpu/matmul.c kernels/cpu/types_cpu.c kernels/cpu/ops_attn.c kernels/cpu/ops_kv.c
     kernels/cpu/ops_elementwise.c kernels/cpu/arm/neon_vec.c
     kernels/cpu/arm/neon_quant.c)
objs=()
compile() { # src extra-flags...
    local src=$1; shift
    local o="$OUT/obj/$(echo "$src" | tr / _).o"
    "$CC" "${CFLAGS[@]}" "$@" -c "$SRC/$src" -o "$o"
    objs+=("$o")
}
for f in "${LIB[@]}"; do compile "$f"; done
for f in "${REF[@]}"; do compile "$f" -ffp-contract=off; done
compile kernels/cpu/arm/neondot_quant.c -march=armv8.2-a+dotprod

LIBDIRS=(-L/usr/lib/aarch64-linux-gnu)
rc=0
for t in test_kernels_types test_kernels_vec; do
    "$CC" "${CFLAGS[@]}" "$SRC/tests/unit/$t.c" "${objs[@]}" "${LIBDIRS[@]}" -lcmocka -lpthread -lm \
        -o "$OUT/$t"
    echo "== $t (qemu-aarch64)"
    TANDEM_SOURCE_DIR="$SRC" "$QEMU" "$OUT/$t" || rc=1
done
exit $rc
