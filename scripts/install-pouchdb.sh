#!/usr/bin/env bash
# Installs pouchdb-server (a CouchDB-protocol server from npm, used by the CouchDB integration
# tests and `feedline-bench couchdb`) into a cache directory outside the clone. Reused when
# present. Needs node and npm. Prints the path of the executable on stdout.
set -euo pipefail
version=4.2.0
cache="${FEEDLINE_CACHE:-$HOME/.cache/feedline}"
root="$cache/pouchdb-server"
bin="$root/node_modules/.bin/pouchdb-server"
if [ ! -x "$bin" ] || ! grep -q "\"version\": \"$version\"" "$root/node_modules/pouchdb-server/package.json" 2>/dev/null; then
  command -v npm >/dev/null || { echo "npm is needed to install pouchdb-server (apt-get install npm)" >&2; exit 1; }
  echo "installing pouchdb-server $version into $root" >&2
  mkdir -p "$root"
  npm install --prefix "$root" --no-audit --no-fund --loglevel=error "pouchdb-server@$version" >&2
fi
echo "$bin"
