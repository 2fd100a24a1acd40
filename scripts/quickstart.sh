#!/usr/bin/env bash
# Quick start: build, start the mock vLLM backend on 127.0.0.1:8001, and run the gateway on
# conf/gateway.toml (127.0.0.1:8000) in the foreground. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pingora's zlib-ng build needs cmake; jemalloc's build needs make.
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}"
fi
cargo build --release --workspace --bins

./target/release/mock-openai --listen 127.0.0.1:8001 --token-gap-ms 20 --tokens 32 &
mock=$!
trap 'kill $mock 2>/dev/null' EXIT
./target/release/inference-gateway run --config conf/gateway.toml
