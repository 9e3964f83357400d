#!/usr/bin/env bash
# Installs the tansu Kafka-protocol broker (used by the Kafka integration tests and benchmarks)
# into a cache directory outside the clone. Reused when present; a cold install takes ~14 min.
# Prints the path of the binary on stdout.
set -euo pipefail
version=0.6.0
cache="${FEEDLINE_CACHE:-$HOME/.cache/feedline}"
root="$cache/tansu-$version"
bin="$root/bin/tansu"
if [ ! -x "$bin" ]; then
  echo "installing tansu $version into $root (cold: ~14 min)" >&2
  mkdir -p "$root"
  CARGO_TARGET_DIR="$cache/tansu-build" cargo install tansu --version "$version" \
    --features dynostore --locked --root "$root" >&2
  rm -rf "$cache/tansu-build"
fi
echo "$bin"
