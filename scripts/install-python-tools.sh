#!/usr/bin/env bash
# Installs the Python tools the tests use as independent clients into a virtualenv outside the
# clone: the official Azure Cosmos DB SDK (`azure-cosmos`), which cross-checks the Cosmos test
# server's wire protocol and key signatures. Reused when present. Prints the interpreter's path.
set -euo pipefail
cosmos_version=4.17.1
cache="${FEEDLINE_CACHE:-$HOME/.cache/feedline}"
venv="$cache/pyenv"
python="$venv/bin/python"
stamp="$venv/.azure-cosmos-$cosmos_version"
if [ ! -f "$stamp" ]; then
  echo "installing azure-cosmos $cosmos_version into $venv" >&2
  command -v python3 >/dev/null || { echo "python3 is required (apt-get install python3 python3-venv)" >&2; exit 1; }
  python3 -m venv "$venv" >&2
  "$python" -m pip install --quiet --disable-pip-version-check "azure-cosmos==$cosmos_version" >&2
  touch "$stamp"
fi
echo "$python"
