#!/usr/bin/env bash
# Installs what building and testing Parlance needs on a fresh Debian/Ubuntu machine:
# cmake and clang for llama.cpp; with --test also PostgreSQL, Redis, Chromium and the
# Python packages for the end-to-end tests.
set -euo pipefail
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v clang >/dev/null || need+=(clang)
[ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang*.so >/dev/null 2>&1 || need+=(libclang-dev)
command -v unzip >/dev/null || need+=(unzip)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} ..." >&2
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "${1:-}" = "--test" ]; then
  # The replica tests start their own PostgreSQL and Redis (no system services).
  need=()
  [ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  command -v redis-server >/dev/null || need+=(redis-server)
  # The web console's tests drive Debian's headless Chromium (no browser download).
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} ..." >&2
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  python3 -c "import openai, pytest, requests, jsonschema, langchain_openai, gigachat, anthropic, google.genai, selenium, gguf, PIL, ollama, aiosmtpd" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check openai pytest requests jsonschema langchain-openai gigachat anthropic google-genai selenium gguf pillow ollama aiosmtpd
  # The single sign-on tests run a real OpenID Connect provider: the certified npm
  # package `oidc-provider` under node, kept outside the clone.
  oidc_dir="${XDG_CACHE_HOME:-$HOME/.cache}/parlance/oidc"
  if [ ! -f "$oidc_dir/node_modules/oidc-provider/package.json" ]; then
    command -v npm >/dev/null || { echo "installing nodejs and npm ..." >&2; DEBIAN_FRONTEND=noninteractive ${sudo_cmd:-} apt-get install -y -qq nodejs npm >/dev/null; }
    mkdir -p "$oidc_dir"
    (cd "$oidc_dir" && npm install --silent --no-audit --no-fund oidc-provider@8 >/dev/null)
  fi
fi
