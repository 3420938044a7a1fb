#!/usr/bin/env bash
# Builds Parlance and serves the default model on 127.0.0.1:8080 (extra args go to `serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-models.sh smollm2
exec cargo run --release -p parlance -- serve "$@"
