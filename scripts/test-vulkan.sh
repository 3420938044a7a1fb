#!/usr/bin/env bash
# Builds Parlance with llama.cpp's Vulkan backend and runs the GPU-offload tests
# (tests/e2e/test_gpu.py: every layer offloaded with -ngl 99, partial offload from the
# catalog, -ngl 0). Without a GPU it runs on Mesa's software Vulkan driver (lavapipe):
# slow, but the same code path as a real GPU. The build has its own target dir, so it
# never replaces the CPU build the rest of the suite tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
need=()
command -v glslc >/dev/null || need+=(glslc)
command -v vulkaninfo >/dev/null || need+=(vulkan-tools)
[ -e /usr/include/vulkan/vulkan.h ] || need+=(libvulkan-dev)
ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
[ -e /usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake ] || need+=(spirv-headers)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} ..." >&2
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
# ggml-vulkan needs Vulkan headers >= 1.3.261 (VK_EXT_layer_settings); Debian 12 ships
# 1.3.239. Then the next Debian release's headers (libvulkan-dev, spirv-headers) are
# unpacked into the cache, not installed, from the mirror this machine's apt uses, and
# put first on the C++ include path. The loader and glslc stay the system's.
cache="${PARLANCE_CACHE:-$HOME/.cache/parlance}"
core=/usr/include/vulkan/vulkan_core.h
patch=$(sed -n 's/^#define VK_HEADER_VERSION \([0-9]*\).*/\1/p' "$core")
minor=$(sed -n 's/^#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, 1, \([0-9]*\),.*/\1/p' "$core")
if [ "${minor:-0}" -lt 3 ] || { [ "$minor" -eq 3 ] && [ "${patch:-0}" -lt 261 ]; }; then
  headers="$cache/vulkan-headers/include"
  if [ ! -f "$headers/vulkan/vulkan.hpp" ]; then
    # `|| true`: under pipefail a missing sources.list would end the script here.
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
      grep -oE '^(deb|URIs:) +[^ ]*debian[^ ]*' | awk '{print $NF}' | grep -v security | head -n1 || true)
    if [ -z "$mirror" ]; then
      echo "Vulkan headers >= 1.3.261 are needed and no Debian mirror is configured to fetch them from" >&2
      exit 1
    fi
    suite="${PARLANCE_VULKAN_SUITE:-trixie}"
    tmp=$(mktemp -d)
    echo "deb $mirror $suite main" > "$tmp/sources.list"
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
    apt_opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache")
    apt-get "${apt_opts[@]}" update -qq
    (cd "$tmp" && apt-get "${apt_opts[@]}" download libvulkan-dev spirv-headers >/dev/null 2>&1)
    mkdir -p "$tmp/root" "$cache/vulkan-headers"
    for d in "$tmp"/*.deb; do dpkg -x "$d" "$tmp/root"; done
    cp -r "$tmp/root/usr/include" "$cache/vulkan-headers/"
    rm -rf "$tmp"
  fi
  flags="${CXXFLAGS_x86_64_unknown_linux_gnu:--mno-amx-tile -mno-amx-int8 -mno-amx-bf16}"
  case "$(uname -m)" in
    x86_64) export CXXFLAGS_x86_64_unknown_linux_gnu="$flags -isystem $headers"
            export CFLAGS_x86_64_unknown_linux_gnu="$flags -isystem $headers" ;;
    *) export CXXFLAGS="${CXXFLAGS:-} -isystem $headers" CFLAGS="${CFLAGS:-} -isystem $headers" ;;
  esac
fi
scripts/fetch-models.sh smollm2
export CARGO_TARGET_DIR="${PARLANCE_VULKAN_TARGET:-$cache/target-vulkan}"
cargo build --release -p parlance --features vulkan
# ggml skips CPU-type Vulkan devices; when the software driver is all there is, name it.
if ! vulkaninfo --summary 2>/dev/null | grep deviceType | grep -qv PHYSICAL_DEVICE_TYPE_CPU; then
  export GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}"
fi
PARLANCE_GPU_TEST=vulkan PARLANCE_BIN="$CARGO_TARGET_DIR/release/parlance" \
  python3 -m pytest -q tests/e2e/test_gpu.py "$@"
