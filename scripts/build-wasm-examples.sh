#!/usr/bin/env bash
# Build the example WASM guests in examples/wasm for wasm32-unknown-unknown: the Rust ones with
# cargo (their own workspace), the C one with clang + wasm-ld. Idempotent, and quick when nothing
# changed. The .wasm files land in one directory, printed as the last line on stdout (the tests
# read it): ${FEEDLINE_WASM_TARGET:-${CARGO_TARGET_DIR:-target}/wasm-examples}/out.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target="${FEEDLINE_WASM_TARGET:-${CARGO_TARGET_DIR:-$root/target}/wasm-examples}"
out="$target/out"

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  echo "adding the wasm32-unknown-unknown target" >&2
  rustup target add wasm32-unknown-unknown >&2
fi

CARGO_TARGET_DIR="$target" cargo build --quiet --locked --release \
  --manifest-path examples/wasm/Cargo.toml --target wasm32-unknown-unknown >&2

mkdir -p "$out"
# Copy only what changed, atomically (tests in parallel may be reading).
publish() {
  if ! cmp -s "$1" "$out/$2"; then
    cp "$1" "$out/.$2.$$"
    mv -f "$out/.$2.$$" "$out/$2"
  fi
}
for f in "$target"/wasm32-unknown-unknown/release/*.wasm; do
  publish "$f" "$(basename "$f")"
done

# The non-Rust guest: C with no libc (Debian's clang and lld).
src=examples/wasm/c/namespace_filter.c
dst="$out/namespace_filter_c.wasm"
if command -v clang >/dev/null 2>&1 && command -v wasm-ld >/dev/null 2>&1; then
  if [ ! -f "$dst" ] || [ "$src" -nt "$dst" ]; then
    clang --target=wasm32 -O2 -nostdlib -Wall -Wextra -Werror \
      -Wl,--no-entry -Wl,--export-dynamic -o "$dst.$$" "$src"
    mv -f "$dst.$$" "$dst"
  fi
else
  echo "warning: clang/wasm-ld not found, the C guest is not built (scripts/install-system-deps.sh installs them)" >&2
fi

echo "$out"
