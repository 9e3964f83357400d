#!/usr/bin/env bash
# Debian packages the build needs (bundled librdkafka links the system OpenSSL and zlib; clang and
# lld build the C example WASM guest).
# Installs only what is missing; a no-op on a machine that has them.
set -euo pipefail
needed=(pkg-config libssl-dev zlib1g-dev make clang lld)
missing=()
for p in "${needed[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
