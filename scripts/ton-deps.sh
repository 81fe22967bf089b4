#!/usr/bin/env bash
# What the payment contract's tests need: Node.js 18+ with npm (Debian's
# packages when missing) and the pinned npm packages of contracts/
# (@ton/sandbox, @ton/core, @ton/crypto, @ton/tolk-js, @ton/ton, exact versions from
# package-lock.json). Installs only what is missing; the tests themselves
# need no network.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
node_major() { node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/'; }
# nodejs first: NodeSource's nodejs carries npm and conflicts with Debian's
# npm package, Debian's nodejs does not carry it.
if ! command -v node >/dev/null 2>&1 || [ "$(node_major)" -lt 18 ]; then
  log "installing nodejs (Debian)"
  apt_install nodejs
fi
if ! command -v npm >/dev/null 2>&1; then
  log "installing npm (Debian)"
  apt_install npm
fi
if [ "$(node_major)" -lt 18 ]; then
  echo "error: Node.js 18 or newer is needed for @ton/sandbox; found $(node --version)" >&2
  exit 69
fi
cd "$ROOT/contracts"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  log "npm ci in contracts/ (pinned @ton packages)"
  npm ci --no-audit --no-fund --loglevel=error
  touch node_modules
fi
echo "payment contract tools: node $(node --version), $(ls node_modules/@ton | tr '\n' ' ')"
