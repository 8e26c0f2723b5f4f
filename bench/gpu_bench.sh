#!/usr/bin/env bash
# The GPU engine benchmark in one go, for a session on a borrowed GPU machine (no internet):
# bandwidth, random-weight models, llama.cpp's tools, then bench/bench_engine.py --device cuda.
#
#   bench/gpu_bench.sh --tandem build/api/tandem [--only STEPS] [--layers N] [--reps R]
#                      [--prompt-tokens P] [--gen G] [--batches 1,16] [--models smollm2,qwen3]
#                      [--models-dir DIR] [--device cuda|cpu] [-- more bench_engine.py options]
# (--device cpu: the same flow on a CPU machine with llama-bin-cpu.tar.xz, to try it out)
#
# Steps (--only env,bw,models,llama,bench; default all, in this order):
#   env     nvidia-smi, tandem --version, room; and always first: when `import gguf` fails,
#           build-bench/wheels/*.whl (gguf-0.19.0; PyYAML, its import, is in the image)
#           unpacked onto PYTHONPATH (no pip or network needed)
#   bw      bench/gpu_membw.py -> RES/membw.json
#   models  tools/make_bench_model.py: smollm2-135m (Q4_1) and qwen3-30b-a3b (Q4_K_M, --layers N,
#           default 48: 18.6 GB) into MODELS_DIR (default /dev/shm/tandem-bench when that tmpfs
#           has room, so every process loads from memory, else build-bench/models); kept
#           when already there
#   llama   llama-bench + llama-batched-bench from build-llamacpp/llama-bin-cuda.tar.xz (made by
#           bench/build_llamacpp.sh --cuda; 22 MiB), else built from build-llamacpp/llama-src.tar.xz
#           (bench/build_llamacpp.sh --pack-src; 6 MB, about 4-5 minutes on 16 cores);
#           libcudart/libcublas from torch's nvidia wheels when the loader misses them
#   bench   bench/bench_engine.py --device cuda -> RES/engine.md, RES/engine.json
# RES is $OUT/gpu-bench when $OUT is set (the device runner's result folder), else
# build-bench/gpu-results. Every step prints its wall time. Each step can run as its own
# command (--only), as long as the machine (and /dev/shm) is still the same.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TANDEM=$ROOT/build/api/tandem
ONLY=env,bw,models,llama,bench
LAYERS=48
REPS=2
DEVICE=cuda
PROMPT=512
GEN=128
BATCHES=1,16
MODELS=smollm2,qwen3
MODELS_DIR=${MODELS_DIR:-}
RES=${OUT:+$OUT/gpu-bench}
RES=${RES:-$ROOT/build-bench/gpu-results}
EXTRA=()

while [ $# -gt 0 ]; do
    case $1 in
        --tandem) TANDEM=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --layers) LAYERS=$2; shift ;;
        --reps) REPS=$2; shift ;;
        --prompt-tokens) PROMPT=$2; shift ;;
        --gen) GEN=$2; shift ;;
        --batches) BATCHES=$2; shift ;;
        --models) MODELS=$2; shift ;;
        --models-dir) MODELS_DIR=$2; shift ;;
        --device) DEVICE=$2; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_bench: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$MODELS_DIR" ]; then
    # tmpfs when it has room for the 30B model (every Tandem process then loads from memory;
    # a container's /dev/shm is often 64 MB), else the disk
    need=$((20 * 1024 * 1024 * 1024 * LAYERS / 48 + (1 << 30)))
    have=$(df --output=avail -B1 /dev/shm 2>/dev/null | tail -1 || echo 0)
    if [ "${have:-0}" -gt "$need" ] 2>/dev/null; then MODELS_DIR=/dev/shm/tandem-bench
    else MODELS_DIR=$ROOT/build-bench/models; fi
fi
mkdir -p "$RES" "$MODELS_DIR"
has() { [[ ",$ONLY," == *",$1,"* ]]; }
T_ALL=$(date +%s)
step() { echo "== $1 ($(($(date +%s) - T_ALL)) s since start)"; }
PY=${PYTHON:-python3}
LLAMA_DIR=$RES/llama-bin
KIND=cuda; [ "$DEVICE" = cpu ] && KIND=cpu  # which llama.cpp build to unpack
SMOL=$MODELS_DIR/bench-smollm2-135m.Q4_1.gguf
if [ "$LAYERS" = 48 ]; then Q3=$MODELS_DIR/bench-qwen3-30b-a3b.Q4_K_M.gguf
else Q3=$MODELS_DIR/bench-qwen3-30b-a3b-${LAYERS}l.Q4_K_M.gguf; fi

# always: the Python path (cheap), so that later steps find gguf
if ! $PY -c 'import gguf' 2>/dev/null; then
    PYLIB=$RES/pylib
    if [ ! -d "$PYLIB/gguf" ]; then
        step "env: unpacking wheels into $PYLIB"
        mkdir -p "$PYLIB"
        for w in "$ROOT"/build-bench/wheels/*.whl; do
            [ -f "$w" ] && $PY -m zipfile -e "$w" "$PYLIB"
        done
    fi
    export PYTHONPATH=$PYLIB${PYTHONPATH:+:$PYTHONPATH}
    $PY -c 'import gguf' || { echo "gpu_bench: no gguf package (carry build-bench/wheels)"; exit 1; }
fi

if has env; then
    step env
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv || true
    "$TANDEM" --version || echo "gpu_bench: no tandem at $TANDEM (--tandem PATH)"
    df -h "$MODELS_DIR" | tail -1
    nproc; free -g | head -2
fi

if has bw; then
    step "bw: bench/gpu_membw.py"
    $PY bench/gpu_membw.py --json > "$RES/membw.json" && cat "$RES/membw.json"
fi

if has models; then
    step "models into $MODELS_DIR"
    if [[ ",$MODELS," == *",smollm2,"* ]] && [ ! -f "$SMOL" ]; then
        $PY tools/make_bench_model.py --shape smollm2-135m --out "$SMOL" || exit 1
    fi
    if [[ ",$MODELS," == *",qwen3,"* ]] && [ ! -f "$Q3" ]; then
        $PY tools/make_bench_model.py --shape qwen3-30b-a3b --layers "$LAYERS" --out "$Q3" \
            || exit 1
    fi
    ls -la "$MODELS_DIR"
fi

# llama.cpp's CUDA tools link libcudart/libcublas(Lt).so.13 (RUNPATH /usr/local/cuda/lib);
# when the loader misses them, take them from torch's nvidia-* wheels
fix_ld() {
    [ -x "$LLAMA_DIR/llama-bench" ] || return 0
    ldd "$LLAMA_DIR/llama-bench" | grep -Eq 'lib(cudart|cublas).*not found' || return 0
    local extra
    extra=$($PY - <<'PYEOF'
import glob, os, site
dirs = set()
for s in site.getsitepackages() + [site.getusersitepackages()]:
    for pat in ("nvidia/**/libcublas*.so.*", "nvidia/**/libcudart.so.*"):
        dirs.update(os.path.dirname(p) for p in glob.glob(os.path.join(s, pat), recursive=True))
print(":".join(sorted(dirs)))
PYEOF
)
    [ -n "$extra" ] && export LD_LIBRARY_PATH=$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    ldd "$LLAMA_DIR/llama-bench" | grep -E 'cu|not found'
}

if has llama; then
    step "llama: llama-bench into $LLAMA_DIR"
    mkdir -p "$LLAMA_DIR"
    if [ -f "$ROOT/build-llamacpp/llama-bin-$KIND.tar.xz" ]; then
        # Python's tarfile: the image may have no xz program
        $PY -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
            "$ROOT/build-llamacpp/llama-bin-$KIND.tar.xz" "$LLAMA_DIR"
        cat "$LLAMA_DIR/llama-build-info.txt" 2>/dev/null
    elif [ -f "$ROOT/build-llamacpp/llama-src.tar.xz" ]; then
        bench/build_llamacpp.sh --$KIND --arch 90 --src "$ROOT/build-llamacpp/llama-src.tar.xz" \
            --out "$RES/llama-build" --jobs "$(nproc)" && cp "$RES/llama-build/bin-$KIND/"* "$LLAMA_DIR/"
    else
        echo "gpu_bench: neither build-llamacpp/llama-bin-$KIND.tar.xz nor llama-src.tar.xz"
    fi
    fix_ld
    "$LLAMA_DIR/llama-bench" --list-devices 2>&1 | tail -5 || true
fi

if has bench; then
    step "bench: bench/bench_engine.py --device $DEVICE"
    fix_ld
    M=()
    [[ ",$MODELS," == *",smollm2,"* ]] && M+=("$SMOL")
    [[ ",$MODELS," == *",qwen3,"* ]] && M+=("$Q3")
    ARGS=(--device "$DEVICE" --tandem "$TANDEM" --models "$(IFS=,; echo "${M[*]}")"
          --batches "$BATCHES" --prompt-tokens "$PROMPT" --gen "$GEN" --reps "$REPS"
          --md "$RES/engine.md" --json "$RES/engine.json")
    [ -x "$LLAMA_DIR/llama-bench" ] && ARGS+=(--llama-bench "$LLAMA_DIR/llama-bench")
    [ -s "$RES/membw.json" ] && ARGS+=(--bandwidth-json "$RES/membw.json")
    $PY bench/bench_engine.py "${ARGS[@]}" "${EXTRA[@]}" 2>&1 | tee "$RES/engine.log"
fi
step done
