#!/usr/bin/env bash
# chatloop beside other servers: builds the peers in bench/peers/ and measures them and
# chatloop the same way; prints one markdown table (and saves it to artifacts/).
#
# Usage: [RUNS=N] scripts/peers.sh [--quick] [--only NAME[,NAME..]] [--rt]
#        (also: scripts/bench.sh --peers [FLAGS])
#   RUNS=N       runs per measurement; the table shows the median of each number [default: 3]
#   --quick      one run each, 2 s windows, 2,000 idle connections: a smoke test of the
#                script, not numbers to publish
#   --only LIST  only these servers, of: chatloop, uws, gorilla, tokio, node [default: all]
#   --rt         every server and chatload at real-time priority (chrt -f 10; root or
#                CAP_SYS_NICE), out of reach of other work on the CPUs: for a shared machine
#   -h, --help   this help
#
# The servers:
#   chatloop  this repository's release build, driven with chatload's normal (JSON) protocol
#   uws       uWebSockets (C++) pub/sub, every socket subscribed to one topic: built by
#             scripts/uws-peer.sh from sources outside this repository (shared/peers/uws
#             beside or above it); skipped, saying so, where they are absent
#   gorilla   bench/peers/gorilla: Go on Debian's gorilla/websocket, the chat example's design
#             (hub goroutine, 256-message send channel per client, coalescing write pump)
#   tokio     bench/peers/tokio: tokio-tungstenite in its examples' style (its own Cargo
#             project and workspace: never built by cargo test)
#   node      bench/peers/node: Node's `ws`, its README's broadcast recipe
# The peers broadcast every text frame to every client, the sender included, and are driven
# with `chatload --proto raw`. What is missing is installed when this script runs (and only
# then; never by cargo test or .ci/run): golang-go, golang-github-gorilla-websocket-dev and
# nodejs/npm with apt-get, ws with npm, tokio-tungstenite with cargo. A peer that cannot be
# built is reported as such and skipped.
#
# Each run starts a fresh server pinned to CPU 0 with taskset and drives it with chatload
# pinned to CPU 1, then stops it. Measures, as scripts/bench.sh does (chatload --pid):
#   - idle RSS per connection: (RSS with 10,000 idle connections - RSS before connecting) / N
#   - room fan-out, 1,000 clients, 10 senders at 10, 20 and 50 msg/s each (100k, 200k and
#     500k deliveries/s offered): server CPU µs per delivery, p99 latency, deliveries/s
# Loopback only. Needs taskset (util-linux) and 2 or more CPUs.
set -euo pipefail

runs=${RUNS:-3}
quick=0 rt=()
only="chatloop,uws,gorilla,tokio,node"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --peers) ;; # from scripts/bench.sh --peers
    --rt) rt=(chrt -f 10) ;;
    --only)
      [ $# -ge 2 ] || { echo "peers.sh: --only needs a list (chatloop,uws,gorilla,tokio,node)" >&2; exit 2; }
      only=$2
      shift
      ;;
    --only=*) only=${1#--only=} ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "peers.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
servers=()
for s in ${only//,/ }; do
  case "$s" in
    chatloop|uws|gorilla|tokio|node) servers+=("$s") ;;
    *) echo "peers.sh: --only: unknown server '$s' (chatloop, uws, gorilla, tokio, node)" >&2; exit 2 ;;
  esac
done
[ "${#servers[@]}" -gt 0 ] || { echo "peers.sh: --only: no server named" >&2; exit 2; }
if [ "${#rt[@]}" -gt 0 ] && ! chrt -f 10 true 2>/dev/null; then
  echo "peers.sh: --rt: cannot run at real-time priority here (chrt -f 10 failed: needs root or CAP_SYS_NICE)" >&2
  exit 2
fi
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "peers.sh: RUNS must be a whole number above 0" >&2; exit 2; }
dur=5 idle_n=10000
if [ "$quick" = 1 ]; then
  runs=1 dur=2 idle_n=2000
fi
rates=(10 20 50) # per sender: × 10 senders × 1,000 receivers = 100k, 200k, 500k deliveries/s
command -v taskset >/dev/null || { echo "peers.sh: taskset is needed (util-linux)" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "peers.sh: needs 2 CPUs to pin server and load apart" >&2; exit 2; }

cd "$(dirname "$0")/.."
mkdir -p artifacts target/peers
out="artifacts/peers-$(date +%Y%m%d-%H%M%S).md"
# One benchmark at a time on this machine: two at once measure each other (a session's runs
# taken beside another's benchmark showed p99s of seconds for every server).
exec 9>"${TMPDIR:-/tmp}/chatloop-bench.lock"
if ! flock -n 9; then
  echo "peers.sh: another benchmark is running; waiting for it (${TMPDIR:-/tmp}/chatloop-bench.lock)" >&2
  flock 9
fi
tmp=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 2' INT TERM
# 10,000 connections need as many descriptors in the server (Go and chatloop raise their own
# limit; Node does not) and in chatload.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "peers: building chatloop and chatload (release)" >&2
cargo build --release --quiet --bin chatloop --bin chatload || { echo "peers.sh: build failed" >&2; exit 2; }
bin=${CARGO_TARGET_DIR:-target}/release

# ---- building the peers ---------------------------------------------------------------------

apt_updated=0
apt_install() {
  local sudo=()
  [ "$(id -u)" -ne 0 ] && sudo=(sudo -n)
  if [ "$apt_updated" = 0 ]; then
    timeout 600 "${sudo[@]}" apt-get update -qq </dev/null >&2 || return 1
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive timeout 1200 "${sudo[@]}" apt-get install -y -qq "$@" </dev/null >&2
}

declare -A why_not # server -> why it was not built
uws_bin=""
build_uws() {
  # Absent sources are not a failure of this script: the row says so and the rest runs.
  uws_bin=$(bash scripts/uws-peer.sh) && return 0
  why_not[uws]="not measured: its sources (shared/peers/uws, outside this repository) are absent or did not build (see scripts/uws-peer.sh --help)"
}
gocode=/usr/share/gocode
build_gorilla() {
  if ! command -v go >/dev/null || [ ! -d "$gocode/src/github.com/gorilla/websocket" ]; then
    echo "peers: installing golang-go and golang-github-gorilla-websocket-dev (apt-get)" >&2
    apt_install golang-go golang-github-gorilla-websocket-dev || return 1
  fi
  # Debian's Go libraries are a GOPATH tree, not modules: build in GOPATH mode against it,
  # offline (no module proxy).
  (cd bench/peers/gorilla && GO111MODULE=off GOPATH=$gocode GOFLAGS= go build -o ../../../target/peers/gorilla-room .) >&2
}
build_tokio() {
  cargo build --release --quiet --manifest-path bench/peers/tokio/Cargo.toml --target-dir target/peers >&2
}
build_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "peers: installing nodejs and npm (apt-get)" >&2
    apt_install nodejs npm || return 1
  fi
  if [ ! -f bench/peers/node/node_modules/ws/package.json ]; then
    echo "peers: installing ws (npm ci)" >&2
    (cd bench/peers/node && timeout 600 npm ci --no-audit --no-fund --loglevel=error) >&2 || return 1
  fi
}
for s in "${servers[@]}"; do
  [ "$s" = chatloop ] && continue
  echo "peers: building $s" >&2
  "build_$s" || why_not[$s]=${why_not[$s]:-"could not be built here (see the script's output)"}
done

# ---- starting and measuring -----------------------------------------------------------------

# A free loopback port (nothing answers on it), for the peers that take one.
free_port() {
  local p i
  for i in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  return 1
}

# Starts server NAME on CPU 0; waits (up to 10 s) for its "listening on" line; sets server_pid
# and addr.
start_server() {
  local name=$1 port i
  port=$(free_port) || { echo "peers.sh: no free port" >&2; exit 2; }
  case "$name" in
    chatloop) RUST_LOG=warn "${rt[@]}" taskset -c 0 "$bin/chatloop" --addr 127.0.0.1:0 --rate-limit 0 >"$tmp/s.out" 2>"$tmp/s.err" & ;;
    uws) "${rt[@]}" taskset -c 0 "$uws_bin" "$port" >"$tmp/s.out" 2>"$tmp/s.err" & ;;
    gorilla) "${rt[@]}" taskset -c 0 target/peers/gorilla-room "$port" >"$tmp/s.out" 2>"$tmp/s.err" & ;;
    tokio) "${rt[@]}" taskset -c 0 target/peers/release/tokio-room "$port" >"$tmp/s.out" 2>"$tmp/s.err" & ;;
    node) "${rt[@]}" taskset -c 0 node bench/peers/node/server.js "$port" >"$tmp/s.out" 2>"$tmp/s.err" & ;;
  esac
  server_pid=$!
  for i in $(seq 200); do
    grep -q '^listening on ' "$tmp/s.out" 2>/dev/null && break
    sleep 0.05
  done
  addr=$(sed -n 's#^listening on \(http://\)\{0,1\}##p' "$tmp/s.out" | head -1)
  [[ "$addr" =~ ^[0-9]+$ ]] && addr="127.0.0.1:$addr" # uwschat says only its port
  [ -n "$addr" ] || { echo "peers.sh: $name did not start" >&2; cat "$tmp/s.err" >&2; exit 2; }
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# One measurement of server NAME on a fresh start: prints chatload's summary line.
load() {
  local name=$1 line proto=()
  shift
  [ "$name" = chatloop ] || proto=(--proto raw)
  start_server "$name"
  line=$(timeout 150 "${rt[@]}" taskset -c 1 "$bin/chatload" --addr "$addr" --pid "$server_pid" --id-prefix "p$$-" \
    "${proto[@]}" "$@" 2>>"$tmp/load.err" | tail -1) || true
  stop_server
  case "$line" in summary*) echo "$line" ;; *) echo "summary failed=1" ;; esac
}

# The same helpers as scripts/bench.sh (kept apart so that script is not reshaped for this one).
get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
median() {
  sort -g | awk '{ a[NR] = $1 } END {
    if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
# Runs a measurement $runs times; leaves one file per key with a value a line in $tmp/m.
measure() {
  rm -rf "$tmp/m"
  mkdir -p "$tmp/m"
  local r line k v
  for r in $(seq "$runs"); do
    line=$(load "$@")
    echo "peers:   run $r: ${line#summary }" | cut -c1-220 >&2
    for k in delivered lost unexpected_closes connect_errors ready deliveries_per_sec p99_us \
      read_delay_p99_us server_cpu_us_per_delivery server_rss_kb server_rss_start_kb failed; do
      v=$(get "$k" "$line")
      if [ -n "$v" ]; then echo "$v" >>"$tmp/m/$k"; fi
    done
    v=$(get read_delay_p99_us "$line")
    if [ -n "$v" ]; then echo "$v" >>"$tmp/read_delays"; fi
    v=$(awk -v c="$(get load_cpu_s "$line")" -v w="$(get window_s "$line")" 'BEGIN { if (w > 0) printf "%.0f", 100 * c / w }')
    if [ -n "$v" ]; then echo "$v" >>"$tmp/m/load_pct"; fi
  done
}
med() { if [ -f "$tmp/m/$1" ]; then median <"$tmp/m/$1"; else echo nan; fi; }
total() { if [ -f "$tmp/m/$1" ]; then awk '{ s += $1 } END { print s + 0 }' "$tmp/m/$1"; else echo 0; fi; }
isnum='^-?[0-9]+([.][0-9]*)?(e[+-]?[0-9]+)?$'
rate() { awk -v x="$1" -v re="$isnum" 'BEGIN { if (x !~ re) print "n/a"; else if (x >= 1e6) printf "%.2fM", x / 1e6; else if (x >= 1e3) printf "%.0fk", x / 1e3; else printf "%d", x }'; }
lat() { awk -v x="$1" -v re="$isnum" 'BEGIN { if (x !~ re) print "n/a"; else if (x >= 1e6) printf "%.2f s", x / 1e6; else if (x >= 1e3) printf "%.1f ms", x / 1e3; else printf "%d µs", x }'; }
cpu() { awk -v x="$1" -v re="$isnum" 'BEGIN { if (x !~ re) print "n/a"; else printf "%.2f µs", x }'; }
bytes() { awk -v x="$1" -v re="$isnum" 'BEGIN { if (x !~ re) { print "n/a"; exit } s = sprintf("%d", x)
  while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s); print s " B" }'; }

# Problems of the last measurement, summed over its runs; empty when there were none.
problems() {
  local l u c f p=()
  l=$(total lost) u=$(total unexpected_closes) c=$(total connect_errors) f=$(total failed)
  [ "$l" = 0 ] || p+=("lost $l")
  [ "$u" = 0 ] || p+=("$u unexpected closes")
  [ "$c" = 0 ] || p+=("$c connect errors")
  [ "$f" = 0 ] || p+=("$f runs failed")
  local joined="" x
  for x in "${p[@]}"; do joined+="${joined:+, }$x"; done
  echo "$joined"
}

declare -A label=([chatloop]=chatloop [uws]="uWebSockets (C++, pub/sub, no TLS)" \
  [gorilla]="gorilla/websocket (Go), hub" [tokio]=tokio-tungstenite [node]="Node \`ws\`")
rows=()
for s in "${servers[@]}"; do
  if [ -n "${why_not[$s]:-}" ]; then
    echo "peers: $s: ${why_not[$s]}" >&2
    rows+=("| ${label[$s]} | ${why_not[$s]} | | | | | | | |")
    continue
  fi
  notes=()
  echo "peers: $s: idle RSS with $idle_n connections" >&2
  measure "$s" --mode idle --conns "$idle_n" --duration 1
  per=$(paste -d' ' "$tmp/m/server_rss_kb" "$tmp/m/server_rss_start_kb" 2>/dev/null |
    awk -v n="$idle_n" '{ print ($1 - $2) * 1024 / n }' | median)
  idle=$(bytes "$per")
  p=$(problems)
  [ -z "$p" ] || notes+=("idle: $p")
  cpus=() p99s=()
  for r in "${rates[@]}"; do
    offered=$((r * 10 * 1000))
    echo "peers: $s: room fan-out, 1000 clients, 10 senders at $r/s ($(rate $offered) deliveries/s)" >&2
    measure "$s" --mode room --conns 1000 --senders 10 --rate "$r" --duration "$dur"
    c=$(cpu "$(med server_cpu_us_per_delivery)")
    # It could not keep up (deliveries still missing when the drain ended): say how far it got.
    [ "$(total lost)" = 0 ] || c+=" (reached $(rate "$(med deliveries_per_sec)")/s)"
    cpus+=("$c")
    p99s+=("$(lat "$(med p99_us)")")
    p=$(problems)
    [ -z "$p" ] || notes+=("$(rate $offered)/s: $p")
    lp=$(med load_pct)
    if awk -v x="$lp" 'BEGIN { exit !(x >= 90) }'; then notes+=("$(rate $offered)/s: chatload at ${lp}% of its CPU"); fi
  done
  n=""
  for x in "${notes[@]}"; do n+="${n:+; }$x"; done
  rows+=("| ${label[$s]} | $idle | ${cpus[0]} | ${cpus[1]} | ${cpus[2]} | ${p99s[0]} | ${p99s[1]} | ${p99s[2]} | ${n:-none} |")
done

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
{
  echo "chatloop $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)') beside its peers on $(date -u +%Y-%m-%d), $(nproc) CPUs ($cpu_model), Linux $(uname -r)."
  echo "Server pinned to CPU 0, chatload to CPU 1, loopback$([ "${#rt[@]}" -gt 0 ] && echo ', both at real-time priority (--rt)'); median of $runs run(s)$([ "$quick" = 1 ] && echo ', --quick: 2 s windows, 2,000 idle connections');"
  echo "room fan-out: 1,000 clients, 10 senders, ${dur} s windows; chatloop with chatload's JSON protocol, the peers with --proto raw."
  echo "Latency: send to arrival at the receiving client's socket (kernel receive stamps, per frame); chatload's own read"
  echo "delay, which that leaves out, was at most $(lat "$(sort -g "$tmp/read_delays" 2>/dev/null | tail -1)") at p99 in any run."
  echo "Load average before: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews these numbers)."
  echo
  echo "| Server | Idle RSS per connection, $(bytes "$idle_n" | sed 's/ B$//') connections | CPU per delivery at 100k/s | at 200k/s | at 500k/s | p99 at 100k/s | at 200k/s | at 500k/s | Problems |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee "$out"
echo "peers: saved $out" >&2
