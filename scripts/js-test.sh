#!/usr/bin/env bash
# The JavaScript client's tests (clients/js): the library against the real stack, then the
# web app in headless Chromium. Installs what is missing and says so: Debian's `chromium`
# (apt-get, as root) and the npm packages pinned in clients/js/package-lock.json (npm ci).
# Expects `cargo build --bins` to have run (just test does): the stack is natter-js-harness.
# Screenshots go to $NATTER_JS_TEST_OUT (default target/js-test/).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "js-test: node (>= 20) and npm are needed" >&2; exit 1
fi
if [ ! -x /usr/bin/chromium ] && [ -z "${NATTER_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "js-test: installing Debian's chromium (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "js-test: /usr/bin/chromium is missing: sudo apt-get install chromium" >&2; exit 1
  fi
fi
if [ ! -x target/debug/natter-js-harness ] && [ -z "${NATTER_JS_HARNESS:-}" ]; then
  cargo build --bins
fi

cd clients/js
lock_sum="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ ! -f node_modules/.natter-lock ] || [ "$(cat node_modules/.natter-lock)" != "$lock_sum" ]; then
  echo "js-test: npm ci (clients/js)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_sum" > node_modules/.natter-lock
fi

# One file at a time (each starts its own stack); node's summary ends the output.
exec node --test --test-concurrency=1 --test-timeout=120000 --test-reporter=spec test/unit.test.js test/client.test.js test/auth.test.js test/browser.test.js
