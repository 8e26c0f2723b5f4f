#!/usr/bin/env bash
# format.sh - clang-format every tracked C/CUDA source with the repo's .clang-format.
#   tools/format.sh          rewrite files in place
#   tools/format.sh --check  list files that differ and fail (CI)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CF="${CLANG_FORMAT:-clang-format}"
mapfile -t files < <(git ls-files '*.c' '*.h' '*.cu' '*.cuh')
if [ "${1:-}" = "--check" ]; then
    bad=0
    for f in "${files[@]}"; do
        if ! "$CF" --style=file "$f" | cmp -s - "$f"; then
            echo "format: $f is not clang-formatted (run tools/format.sh)"
            bad=1
        fi
    done
    [ "$bad" = 0 ] && echo "format: ${#files[@]} files clean"
    exit "$bad"
fi
"$CF" --style=file -i "${files[@]}"
