#!/usr/bin/env bash
# run.sh - set up, build and run Tandem on the default model (SmolLM2-135M-Instruct):
# the README's "run" command.
#
#   tools/run.sh [extra options for the command it runs]
#
# It runs `tandem serve` (OpenAI-compatible endpoint on 127.0.0.1:8080); extra options go
# to it (e.g. --port 9000 --api-key KEY).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
tools/setup.sh
tools/build.sh >/dev/null
TANDEM="$ROOT/build/api/tandem"
MODEL="$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf"

echo "tandem: serving $MODEL on http://127.0.0.1:8080/v1 (Ctrl-C stops it)" >&2
exec "$TANDEM" serve --model "$MODEL" "$@"
