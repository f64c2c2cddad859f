#!/usr/bin/env bash
# What `natter-bench peer` needs: Debian's redis-server and the pinned Socket.IO packages
# (npm ci from package-lock.json into bench/peer/node_modules, which git ignores).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v redis-server >/dev/null 2>&1; then
  apt-get install -y redis-server || { apt-get update && apt-get install -y redis-server; }
fi
command -v node >/dev/null 2>&1 || { echo "node is needed (apt-get install -y nodejs npm)" >&2; exit 1; }
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
