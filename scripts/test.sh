#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests (which spawn the real binary), then the
# end-to-end tests with the official `openai` Python SDK (in a venv this script creates).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins
cargo test --workspace

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
.venv/bin/python -m pytest tests/e2e -q
