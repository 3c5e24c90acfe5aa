#!/usr/bin/env bash
# Installs what the tests need: npm packages (ACP SDK, MCP SDK and
# server-everything, supergateway for the bench's mcp baseline, ws, playwright-core),
# Debian packages (chromium, websocketd), gopls. Idempotent; quiet when done.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v websocketd >/dev/null || need_apt+=(websocketd)
if ((${#need_apt[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  echo "test-deps: apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
GOBIN=${GOBIN:-$PWD/bin}
if [ ! -x "$GOBIN/gopls" ]; then
  echo "test-deps: go install gopls@v0.23.0"
  GOBIN=$GOBIN GOFLAGS=-mod=mod go install golang.org/x/tools/gopls@v0.23.0
fi
if [ -f test/node/package.json ]; then
  # supergateway is checked by name too: a node_modules from before it was
  # added may be newer than a lock file that git checked out earlier.
  if [ ! -d test/node/node_modules ] || [ test/node/package-lock.json -nt test/node/node_modules ] ||
    [ ! -x test/node/node_modules/.bin/supergateway ]; then
    echo "test-deps: npm ci in test/node"
    (cd test/node && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
echo "test-deps: ok"
