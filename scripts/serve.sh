#!/usr/bin/env bash
# Builds Parlance and serves a local model on 127.0.0.1:8080; extra args go to `serve`.
#   scripts/serve.sh          SmolLM2-135M-Instruct: the smallest and fastest, English only
#   scripts/serve.sh --qwen   Qwen2.5-Coder-0.5B-Instruct: multilingual (Bulgarian, Russian
#                             and the seeds' other examples), native tool calls; ~3x slower
set -euo pipefail
cd "$(dirname "$0")/.."
model=smollm2
if [ "${1:-}" = "--qwen" ]; then
  model=qwen
  shift
fi
scripts/setup.sh
if [ "$model" = qwen ]; then
  scripts/fetch-models.sh qwen2.5-coder
  set -- -m models/qwen2.5-coder-0.5b-instruct.gguf --alias qwen2.5-coder-0.5b-instruct "$@"
else
  scripts/fetch-models.sh smollm2
fi
cargo build --release -p parlance
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
echo "binary: $target_dir/release/parlance" >&2
exec "$target_dir/release/parlance" serve "$@"
