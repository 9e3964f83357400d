#!/usr/bin/env bash
# The full test suite. Installs what the tests need into ${FEEDLINE_CACHE:-~/.cache/feedline}
# (reused when present), then runs every test. The test harness starts the real servers itself
# on free 127.0.0.1 ports and stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-system-deps.sh
FEEDLINE_TANSU="$(scripts/install-tansu.sh)"
export FEEDLINE_TANSU
scripts/build-wasm-examples.sh >/dev/null   # example WASM guests: fixtures of the wasm tests
FEEDLINE_POUCHDB="$(scripts/install-pouchdb.sh)"; export FEEDLINE_POUCHDB
FEEDLINE_PYTHON="$(scripts/install-python-tools.sh)"; export FEEDLINE_PYTHON   # azure-cosmos: Cosmos test-server cross-check
cargo test --workspace --locked --no-fail-fast "$@"
