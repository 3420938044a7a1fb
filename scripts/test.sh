#!/usr/bin/env bash
# The whole test suite: formatting and lints, Rust unit and in-process HTTP tests, then
# the end-to-end suite that drives the real binary with the official SDKs and a browser,
# then the Vulkan (GPU offload) build and its tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
scripts/fetch-models.sh smollm2 qwen2.5-coder gemma3 minilm
cargo fmt --all --check
# The binary under test carries the engine's panic hooks (feature test-hooks); the same
# features for every command below, so nothing is built twice.
hooks=(--features parlance/test-hooks)
cargo build --release -p parlance "${hooks[@]}"
# --release shares the build with the binary above (llama.cpp is compiled once).
cargo clippy --release --workspace --all-targets "${hooks[@]}" -- -D warnings
cargo test --release --workspace "${hooks[@]}"
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# The console tests' screenshots land beside the build, e.g. for CI to keep.
export PARLANCE_SCREENSHOTS="${PARLANCE_SCREENSHOTS:-$target_dir/console-screenshots}"
PARLANCE_BIN="$target_dir/release/parlance" python3 -m pytest -q tests/e2e "$@"
echo "console screenshots: $PARLANCE_SCREENSHOTS"
# GPU offload through llama.cpp's Vulkan backend (software Vulkan without a GPU): its own
# build and target dir, ~10 minutes the first time. PARLANCE_SKIP_VULKAN=1 skips it.
if [ "${PARLANCE_SKIP_VULKAN:-0}" != 1 ]; then
  scripts/test-vulkan.sh
fi
