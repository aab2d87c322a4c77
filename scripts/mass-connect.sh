#!/usr/bin/env bash
# Presence at scale: N clients (default 10,000) connect at once to a server with default flags
# and must all stay connected, with nothing closed unexpectedly.
#
# Usage: scripts/mass-connect.sh [N]
#   N          clients connecting at once [default: 10000]
#   -h, --help print this help
# Builds the release binaries, starts chatloop on 127.0.0.1:0 with its defaults, runs
# `chatload --mode idle --conns N`, and exits 0 when every client was held, 1 when not,
# 2 on bad usage.
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
n=
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -*) echo "mass-connect: unknown flag '$1' (see --help)" >&2; exit 2 ;;
    *)
      [ -z "$n" ] || { echo "mass-connect: one N only, got '$n' and '$1' (see --help)" >&2; exit 2; }
      n=$1; shift ;;
  esac
done
n=${n:-10000}
[[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "mass-connect: N must be a whole number above 0, not '$n'" >&2; exit 2; }
cd "$(dirname "$0")/.."

timeout 1800 cargo build --release --quiet --bin chatloop --bin chatload </dev/null
tmp=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

RUST_LOG=warn target/release/chatloop --addr 127.0.0.1:0 >"$tmp/out" 2>"$tmp/err" </dev/null &
pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$tmp/out" 2>/dev/null && break; sleep 0.05; done
addr=$(sed -n 's#^listening on http://##p' "$tmp/out")
[ -n "$addr" ] || { echo "mass-connect: the server did not start" >&2; cat "$tmp/err" >&2; exit 1; }

# --connect-concurrency N: every client's handshake is in flight at once.
status=0
timeout 120 target/release/chatload --addr "$addr" --pid "$pid" --mode idle --conns "$n" \
  --connect-concurrency "$n" --duration 2 </dev/null >"$tmp/load" 2>&1 || status=$?
tail -1 "$tmp/load"
if [ "$status" -ne 0 ] || ! grep -q ' ready='"$n"' ' "$tmp/load"; then
  echo "mass-connect: FAILED (chatload exit $status)" >&2
  tail -5 "$tmp/load" >&2
  exit 1
fi
kill -0 "$pid" || { echo "mass-connect: the server died" >&2; exit 1; }
echo "mass-connect: PASSED: $n clients connected at once and all stayed"
