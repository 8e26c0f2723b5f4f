#!/usr/bin/env bash
# run.sh - set up, build and run Tandem on the default model (SmolLM2-135M-Instruct):
# the README's "run" command.
#
#   tools/run.sh [extra options for the command it runs]
#
# It runs `tandem serve` (OpenAI-compatible endpoint on 127.0.0.1:8080). Until this build
# has a `serve` command it says so plainly and falls back to the most complete thing the
# build can do with the model (generate, else inspect).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
tools/setup.sh
tools/build.sh >/dev/null
TANDEM="$ROOT/build/api/tandem"
MODEL="$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf"

has_cmd() { "$TANDEM" --help | grep -q "^  $1 "; }

if has_cmd serve; then
    exec "$TANDEM" serve --model "$MODEL" "$@"
fi
echo "tandem: this build has no 'serve' command yet (the serving issue adds it)." >&2
if has_cmd generate; then
    echo "tandem: running 'tandem generate' on the default model instead." >&2
    exec "$TANDEM" generate --model "$MODEL" --chat "${1:-Hello! Who are you?}"
fi
if has_cmd inspect; then
    echo "tandem: no 'generate' either; showing 'tandem inspect' of the default model." >&2
    exec "$TANDEM" inspect --no-tensors "$MODEL"
fi
echo "tandem: nothing to run on the model yet; here is what this build is:" >&2
exec "$TANDEM" --version
