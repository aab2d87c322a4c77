#!/usr/bin/env bash
# Real-browser tests of the chat page: Debian's chromium, driven by playwright-core, against
# the real server binary. Installs what is missing, builds the server, runs tests/browser.
# Non-interactive (CI=true, no stdin), every step bounded in time, non-zero exit on failure.
# Screenshots land in artifacts/ at the repository root.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/browser-test.sh [--help]

Runs the page's tests (tests/browser/*.test.mjs) in headless Debian Chromium through
playwright-core, against the real server binary. Installs Chromium (apt) and the npm
packages in tests/browser if missing, builds the server, writes screenshots to artifacts/.
Takes no flags but --help.
USAGE
}
case "${1-}" in
  "") ;;
  -h | --help) usage; exit 0 ;;
  *) echo "browser-test.sh: unknown flag '$1' (try --help)" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
root=$PWD
export DEBIAN_FRONTEND=noninteractive
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo -n)
fi

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    timeout 600 "${sudo[@]}" apt-get update -qq </dev/null
    apt_updated=1
  fi
  timeout 1200 "${sudo[@]}" apt-get install -y -qq "$@" </dev/null
}

step() { printf '\n== %s\n' "$*"; }

if [ ! -x /usr/bin/chromium ]; then
  step "installing Debian's chromium"
  apt_install chromium
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  step "installing node and npm"
  apt_install nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "browser-test: node $(node --version) is too old: playwright-core needs node 20 or newer" >&2
  exit 1
fi

step "npm ci (tests/browser)"
(cd tests/browser && timeout 600 npm ci --no-audit --no-fund </dev/null)

step "cargo build --release --bin chatloop"
timeout 1800 cargo build --release --bin chatloop </dev/null
target_dir=${CARGO_TARGET_DIR:-$root/target}
export CHATLOOP_BIN=${CHATLOOP_BIN:-$target_dir/release/chatloop}
if [ ! -x "$CHATLOOP_BIN" ]; then
  echo "browser-test: no server binary at $CHATLOOP_BIN" >&2
  exit 1
fi

mkdir -p "$root/artifacts"
step "node --test (tests/browser)"
cd tests/browser
# timeout signals its whole process group, so the servers the tests started go with it.
timeout --kill-after=15 900 node --test --test-concurrency=1 chat.test.mjs signin.test.mjs </dev/null
