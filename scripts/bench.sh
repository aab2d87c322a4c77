#!/usr/bin/env bash
# Benchmarks for the README: prints one markdown table (and saves it to artifacts/).
#
# Usage: [RUNS=N] scripts/bench.sh [--quick] [--cluster] [--attack] [--rooms] [--targets]
#                                  [--baseline PATH] [--rt]
#   RUNS=N     runs per measurement; the table shows the median of each number [default: 3]
#   --quick    one run each, 2 s windows, fewer connections for the idle and
#              most-connections rows: a smoke test of the script, not numbers to publish
#   --cluster  only the rows the cluster is compared with (1 node at 100k/s and 500k/s
#              room, 100k/s private) and the cluster rows
#   --attack   only the "under attack" block (with --cluster: both)
#   --rooms    only the rooms block: the one-room rows at 100k/s and 500k/s and the same
#              loads over 100 rooms of 10 and 10 rooms of 100, and idle RSS with and
#              without a room membership (with --cluster or --attack: those too)
#   --targets  only the issue-26 target rows: 20k, 200k and 500k deliveries/s offered, in one
#              room of 1,000 (10 senders) and in 100 rooms of 10 (100 senders, one a room):
#              server CPU per delivery, p50 / p99 / p99.9, lost; chatloop beside the
#              uWebSockets peer (scripts/uws-peer.sh: its one-topic room chat, and for the
#              rooms a topic per ?room=, chatload --proto raw --rooms; skipped, saying so,
#              where its sources are absent) and the --baseline binary,
#              one run of each in turn per round, with the ratios
#   --baseline PATH  another chatloop binary (an older build) measured alternately with this
#              one in every chatloop row: each run of a row is followed by the same run
#              against PATH (same chatload), and the table gets a column with its figures
#              and this build's ratio to them (the attack rows excepted)
#   --rt       run every server and chatload at real-time priority (chrt -f 10; needs root
#              or CAP_SYS_NICE), so that other work on the two CPUs cannot preempt them: for a
#              machine that cannot be made quiet (a shared one). Compare runs made alike.
#   -h, --help this help
#   --peers    chatloop beside other servers instead: runs scripts/peers.sh (see its --help)
#              with the other flags
#
# Each run starts a fresh release server (--addr 127.0.0.1:0 --rate-limit 0) pinned to CPU 0
# with taskset and drives it with chatload pinned to CPU 1, then stops it. Rows:
#   - stripped size of target/release/chatloop (a stripped copy)
#   - idle RSS per connection: (RSS with N idle connections - RSS before connecting) / N
#   - RSS at start-up
#   - room fan-out, 1,000 clients, 10 senders at 10, 50, 100, 200 msg/s each
#     (100k, 500k, 1M, 2M deliveries/s offered): deliveries/s, p50, p99, server CPU per delivery
#   - the 500k/s row again with a 40 ms flush window, to show what the window trades
#   - private messages, 5,000 pairs each sending at 5 and 10 msg/s (each message is
#     delivered twice: to the partner and echoed to the sender)
#   - most connections held: 19,000 clients with a room message a second from 2 senders
#   - rooms (chatload --rooms): 1,000 clients in 100 rooms of 10 and in 10 rooms of 100, each
#     client in lobby and its room, 100 senders (the first 100 clients) sending to their own
#     room, at the 100k/s and 500k/s the one-room rows offer, next to those rows and run
#     interleaved with them, one run of each in turn (every
#     client receives as many messages a second as in the one-room row; the server reads
#     100 or 10 times as many); then idle RSS per connection at 10,000 connections in lobby
#     only and in lobby + 1 room (rooms of 100, and of 10), and the difference per membership
#   - cluster (skipped without redis-server): 2 nodes sharing one port (--reuse-port) and
#     Redis, all three pinned to CPU 0 like the single server, at the 100k/s and 500k/s room
#     loads and the 100k/s private load; CPU per delivery sums both nodes and Redis
#   - under attack: the room fan-out at 200k deliveries/s (1,000 clients, 10 senders × 20
#     msg/s) against a server with its default --rate-limit (20), once alone and once while
#     `chatload --attack KIND` runs against the same server for the same window, for each of
#     ping-flood, fragments, private-flood (its target one of the fan-out's receivers) and
#     ping-noread; p99, lost and unexpected closes of the fan-out, and what the attacker got
#     (frames sent, close codes, errors). The attacker shares CPU 1 with the fan-out's chatload.
# Latency is send to arrival at the receiving client's socket (kernel receive stamps, per
# frame); chatload's own read delay, which that leaves out, is in the runs log
# (read_delay_p99_us) and, for --targets, in the table.
# Loopback only. Needs taskset (util-linux) and 2 or more CPUs.
set -euo pipefail

runs=${RUNS:-3}
# --peers: a script of its own, with every flag passed on.
case " $* " in *" --peers "*) exec bash "$(dirname "$0")/peers.sh" "$@" ;; esac
quick=0 sel_cluster=0 sel_attack=0 sel_rooms=0 sel_targets=0 baseline="" rt=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --cluster) sel_cluster=1 ;;
    --attack) sel_attack=1 ;;
    --rooms) sel_rooms=1 ;;
    --targets) sel_targets=1 ;;
    --rt) rt=(chrt -f 10) ;;
    --baseline)
      [ $# -ge 2 ] || { echo "bench.sh: --baseline needs the path of a chatloop binary" >&2; exit 2; }
      baseline=$2
      shift
      ;;
    --baseline=*) baseline=${1#--baseline=} ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "${#rt[@]}" -gt 0 ] && ! chrt -f 10 true 2>/dev/null; then
  echo "bench.sh: --rt: cannot run at real-time priority here (chrt -f 10 failed: needs root or CAP_SYS_NICE)" >&2
  exit 2
fi
if [ -n "$baseline" ]; then
  [ -f "$baseline" ] && [ -x "$baseline" ] || { echo "bench.sh: --baseline $baseline: not an executable file" >&2; exit 2; }
  baseline=$(cd "$(dirname "$baseline")" && pwd)/$(basename "$baseline")
fi
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: RUNS must be a whole number above 0" >&2; exit 2; }
# Which blocks run: everything by default; --cluster and --attack pick theirs. "full" is every
# single-server row; "single" is the single-server rows the cluster is compared with.
full=1 single=1 cluster_block=1 attack_block=1 rooms_block=1 targets_block=0
if [ "$sel_cluster$sel_attack$sel_rooms$sel_targets" != 0000 ]; then
  full=0 single=$sel_cluster cluster_block=$sel_cluster attack_block=$sel_attack rooms_block=$sel_rooms
  targets_block=$sel_targets
fi
dur=5 idle_big=10000 max_conns=19000
if [ "$quick" = 1 ]; then
  runs=1 dur=2 idle_big=5000 max_conns=5000
fi
command -v taskset >/dev/null || { echo "bench.sh: taskset is needed (util-linux)" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "bench.sh: needs 2 CPUs to pin server and load apart" >&2; exit 2; }

cd "$(dirname "$0")/.."
mkdir -p artifacts
out="artifacts/bench-$(date +%Y%m%d-%H%M%S).md"
runs_log="${out%.md}-runs.log"
# One benchmark at a time on this machine: two at once measure each other (a session's runs
# taken beside another's benchmark showed p99s of seconds for every server).
exec 9>"${TMPDIR:-/tmp}/chatloop-bench.lock"
if ! flock -n 9; then
  echo "bench.sh: another benchmark is running; waiting for it (${TMPDIR:-/tmp}/chatloop-bench.lock)" >&2
  flock 9
fi
tmp=$(mktemp -d)
server_pid=""
cluster_pids=()
fan_pid="" atk_pid=""
cleanup() {
  for p in $atk_pid $fan_pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  for p in "${cluster_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "bench: building release binaries" >&2
cargo build --release --quiet --bin chatloop --bin chatload || { echo "bench.sh: build failed" >&2; exit 2; }
bin=${CARGO_TARGET_DIR:-target}/release
server_bin=$bin/chatloop # the chatloop that start_chatloop runs (the baseline's, for its runs)
baseline_name=""
[ -z "$baseline" ] || baseline_name="\`$(basename "$baseline")\`, $("$baseline" --version 2>/dev/null | head -1)"

# Starts chatloop on CPU 0 with the given flags and the rate limit off unless they set one
# (chatloop refuses a flag given twice), output to $tmp/NAME.*; waits until it listens; sets
# started_pid and addr.
start_chatloop() {
  local name=$1 i attempt status rate=(--rate-limit 0)
  shift
  case " $* " in *" --rate-limit "*) rate=() ;; esac
  for attempt in 1 2 3; do
    RUST_LOG=warn "${rt[@]}" taskset -c 0 "$server_bin" "${rate[@]}" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    started_pid=$!
    # Up to 20 s: on a busy shared machine a start pinned to a loaded CPU 0 can take seconds.
    for i in $(seq 400); do
      grep -q '^listening on ' "$tmp/$name.out" 2>/dev/null && break
      kill -0 "$started_pid" 2>/dev/null || break
      sleep 0.05
    done
    addr=$(sed -n 's#^listening on http://##p' "$tmp/$name.out")
    [ -z "$addr" ] || return 0
    # It exited before listening (once in a few hundred starts on a shared machine, with
    # nothing on stderr): say how, and try again.
    status=0
    kill "$started_pid" 2>/dev/null || true
    wait "$started_pid" 2>/dev/null || status=$?
    echo "bench.sh: $name did not start (attempt $attempt, exit status $status)" >&2
    cat "$tmp/$name.err" >&2
  done
  exit 2
}

server_args=() # extra server flags for the next measurement
start_server() {
  start_chatloop server --addr 127.0.0.1:0 "${server_args[@]}"
  server_pid=$started_pid
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# One measurement on a fresh server: prints chatload's summary line (or "summary failed=1").
load() {
  start_server
  local line
  line=$(timeout 150 "${rt[@]}" taskset -c 1 "$bin/chatload" --addr "$addr" --pid "$server_pid" --id-prefix "b$$-" "$@" \
    2>>"$tmp/load.err" | tail -1) || true
  stop_server
  case "$line" in summary*) echo "$line" ;; *) echo "summary failed=1" ;; esac
}

get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

median() {
  sort -g | awk '{ a[NR] = $1 } END {
    if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# Runs a measurement $runs times; leaves one file per key with a value a line in $tmp/m.
measure() { measure_with load "$@"; }

# The same with a given load function (load or cluster_load).
measure_with() {
  local fn=$1
  shift
  rm -rf "$tmp/m"
  mkdir -p "$tmp/m"
  rm -rf "$tmp/mb" && mkdir -p "$tmp/mb"
  local r line
  for r in $(seq "$runs"); do
    line=$("$fn" "$@")
    echo "bench:   run $r: ${line#summary }" | cut -c1-220 >&2
    record "$line" "$tmp/m"
    [ -n "$baseline" ] || continue
    line=$(server_bin=$baseline && "$fn" "$@")
    echo "bench:   run $r, baseline: ${line#summary }" | cut -c1-220 >&2
    record "$line" "$tmp/mb" baseline
  done
}

# Keeps one run's summary line: in the runs log (with " server=LABEL" when given), and its
# values a file per key in DIR.
record() {
  local line=$1 dir=$2 k v
  echo "$line${3:+ server=$3}" >>"$runs_log" # every run's whole summary (and whose), next to the table
  for k in sent expected delivered lost unexpected_closes connect_errors ready deliveries_per_sec p50_us p99_us \
    p999_us read_delay_p99_us max_us server_cpu_s server_cpu_us_per_delivery server_rss_kb server_rss_start_kb failed misrouted; do
    v=$(get "$k" "$line")
    if [ -n "$v" ]; then echo "$v" >>"$dir/$k"; fi
  done
  # chatload's own CPU over the window, in % of one core: near 100 means the load
  # generator, not the server, set the pace.
  v=$(awk -v c="$(get load_cpu_s "$line")" -v w="$(get window_s "$line")" 'BEGIN { if (w > 0) printf "%.0f", 100 * c / w }')
  if [ -n "$v" ]; then echo "$v" >>"$dir/load_pct"; fi
}

# Several measurements compared with each other, interleaved: $runs rounds, each running every
# one once (each argument is one measurement's chatload flags), so that a machine whose speed
# drifts between minutes skews them alike. `use_m I` then makes the I-th one current.
measure_interleaved() {
  local n=$# i r spec line
  for i in $(seq "$n"); do rm -rf "$tmp/m.$i" "$tmp/mb.$i" && mkdir -p "$tmp/m.$i" "$tmp/mb.$i"; done
  for r in $(seq "$runs"); do
    i=0
    for spec in "$@"; do
      i=$((i + 1))
      # shellcheck disable=SC2086 # a spec is flags without spaces in their values
      line=$(load $spec)
      echo "bench:   round $r, #$i ($spec): ${line#summary }" | cut -c1-220 >&2
      record "$line" "$tmp/m.$i"
      [ -n "$baseline" ] || continue
      # shellcheck disable=SC2086
      line=$(server_bin=$baseline && load $spec)
      echo "bench:   round $r, #$i, baseline: ${line#summary }" | cut -c1-220 >&2
      record "$line" "$tmp/mb.$i" baseline
    done
  done
}
use_m() { rm -rf "$tmp/m" "$tmp/mb" && cp -r "$tmp/m.$1" "$tmp/m" && cp -r "$tmp/mb.$1" "$tmp/mb"; }

med() { if [ -f "$tmp/m/$1" ]; then median <"$tmp/m/$1"; else echo nan; fi; }
medb() { if [ -f "$tmp/mb/$1" ]; then median <"$tmp/mb/$1"; else echo nan; fi; }
# a / b to two places, or n/a.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.e+-]+$/ && b ~ /^[0-9.e+-]+$/ && b > 0) printf "%.2f×", a / b; else print "n/a" }'; }
total() { if [ -f "$tmp/m/$1" ]; then awk '{ s += $1 } END { print s + 0 }' "$tmp/m/$1"; else echo 0; fi; }

# Human formats.
rate() { awk -v x="$1" 'BEGIN { if (x !~ /^-?[0-9]+([.][0-9]*)?(e[+-]?[0-9]+)?$/) print "n/a"; else if (x >= 1e6) printf "%.2fM", x / 1e6; else if (x >= 1e3) printf "%.1fk", x / 1e3; else printf "%d", x }'; }
lat() { awk -v x="$1" 'BEGIN { if (x !~ /^-?[0-9]+([.][0-9]*)?(e[+-]?[0-9]+)?$/) print "n/a"; else if (x >= 1e6) printf "%.2f s", x / 1e6; else if (x >= 1e3) printf "%.1f ms", x / 1e3; else printf "%d µs", x }'; }
cpu() { awk -v x="$1" 'BEGIN { if (x !~ /^-?[0-9]+([.][0-9]*)?(e[+-]?[0-9]+)?$/) print "n/a"; else printf "%.2f µs", x }'; }
num() { awk -v x="$1" 'BEGIN { if (x !~ /^-?[0-9]+([.][0-9]*)?(e[+-]?[0-9]+)?$/) { print "n/a"; exit } s = sprintf("%d", x)
  while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s); print s }'; }

rows=()
# With --baseline, an 8th column: the baseline's figures for the row ($8).
row() {
  if [ -n "$baseline" ]; then rows+=("| $1 | $2 | $3 | $4 | $5 | $6 | $7 | ${8:-} |"); else rows+=("| $1 | $2 | $3 | $4 | $5 | $6 | $7 |"); fi
}
# Idle RSS per connection that got in, of the last measurement's runs in DIR (m or mb), median.
idle_per() {
  paste -d' ' "$tmp/$1/server_rss_kb" "$tmp/$1/server_rss_start_kb" "$tmp/$1/ready" 2>/dev/null |
    awk '$3 > 0 { print ($1 - $2) * 1024 / $3 }' | median
}
# The baseline's idle RSS per connection for the last measurement, and this build's ratio.
base_idle() {
  [ -n "$baseline" ] || return 0
  local b
  b=$(idle_per mb)
  echo "$(awk -v b="$b" 'BEGIN { if (b !~ /^-?[0-9.]+$/) print "n/a"; else printf "%.0f B", b }'); this build $(ratio "$(idle_per m)" "$b")"
}
# The baseline's CPU per delivery and p99 for the last measurement, and this build's ratios.
base_speed() {
  [ -n "$baseline" ] || return 0
  local c p
  c=$(medb server_cpu_us_per_delivery) p=$(medb p99_us)
  echo "$(cpu "$c"), p99 $(lat "$p"); this build: CPU $(ratio "$(med server_cpu_us_per_delivery)" "$c"), p99 $(ratio "$(med p99_us)" "$p")"
}
# A row of the last measurement's deliveries/s, latency, CPU per delivery and problems.
speed_row() {
  row "$1" "$(rate "$(med deliveries_per_sec)") deliveries/s" "$(lat "$(med p50_us)")" "$(lat "$(med p99_us)")" \
    "$(cpu "$(med server_cpu_us_per_delivery)")" "$(pct "$(med load_pct)")" "$(problems)" "$(base_speed)"
}
pct() { awk -v x="$1" 'BEGIN { if (x !~ /^-?[0-9]+([.][0-9]*)?(e[+-]?[0-9]+)?$/) print "n/a"; else printf "%d%%", x }'; }
# The problems column: losses, unexpected closes and connect errors summed over every run
# (and, with --rooms, messages that arrived outside their room).
problems() {
  local l u c f m
  l=$(total lost) u=$(total unexpected_closes) c=$(total connect_errors) f=$(total failed) m=$(total misrouted)
  if [ "$l$u$c$f$m" = "00000" ]; then echo "none"; else
    echo "lost $l, unexpected closes $u, connect errors $c$([ "$f" != 0 ] && echo ", $f runs failed")$([ "$m" != 0 ] && echo ", misrouted $m")"
  fi
}

if [ "$single" = 1 ]; then
# 1. Binary size.
cp "$bin/chatloop" "$tmp/chatloop.stripped"
strip "$tmp/chatloop.stripped"
size=$(stat -c %s "$tmp/chatloop.stripped")
base_size=""
if [ -n "$baseline" ]; then
  cp "$baseline" "$tmp/baseline.stripped"
  strip "$tmp/baseline.stripped"
  b=$(stat -c %s "$tmp/baseline.stripped")
  base_size="$(awk -v s="$b" 'BEGIN { printf "%.0f KiB", s / 1024 }'); this build $(ratio "$size" "$b")"
fi
row "Stripped binary (\`target/release/chatloop\`)" "$(awk -v s="$size" 'BEGIN { printf "%.0f KiB", s / 1024 }')" "" "" "" "" "" "$base_size"

# 2. Idle RSS per connection (and at start-up, before any connection).
idle_sizes=(1000 "$idle_big")
[ "$full" = 1 ] || idle_sizes=()
for n in "${idle_sizes[@]}"; do
  echo "bench: idle RSS with $n connections" >&2
  measure --mode idle --conns "$n" --duration 1
  per=$(paste -d' ' "$tmp/m/server_rss_kb" "$tmp/m/server_rss_start_kb" 2>/dev/null |
    awk -v n="$n" '{ print ($1 - $2) * 1024 / n }' | median)
  row "Idle RSS per connection, $(num "$n") connections" "$(awk -v b="$per" 'BEGIN { if (b !~ /^-?[0-9]+([.][0-9]*)?(e[+-]?[0-9]+)?$/) print "n/a"; else printf "%.2f KiB", b / 1024 }')" \
    "" "" "" "" "$(problems)" "$(base_idle)"
done
[ "$full" = 1 ] && row "RSS at start-up" "$(awk -v x="$(med server_rss_start_kb)" 'BEGIN { printf "%.2f MiB", x / 1024 }')" "" "" "" "" ""

fi # single

# 3. Room fan-out, up to 2M deliveries/s offered; with the rooms block, the 100k/s and 500k/s
# rows again over 100 rooms of 10 and 10 rooms of 100, right after the one-room row.
room_rates=()
[ "$single$rooms_block" != 00 ] && room_rates=(10 50)
[ "$full" = 1 ] && room_rates=(10 50 100 200)
rooms_cmp=() # the comparison table's rows
for r in "${room_rates[@]}"; do
  offered=$((10 * r * 1000))
  one_spec="--mode room --conns 1000 --senders 10 --rate $r --duration $dur"
  if [ "$rooms_block" = 1 ] && [ "$r" -le 50 ]; then
    # The same deliveries/s over rooms: 100 senders, each to its own room, of 10 at 10 × r
    # msg/s (one sender a room) or of 100 at r msg/s (ten a room); every client still
    # receives 10 × r messages a second, as in the one-room row. Interleaved with it.
    echo "bench: room fan-out at $(rate $offered)/s: 1 room of 1000 (10 senders at $r/s), 100 rooms of 10" \
      "(100 senders at $((10 * r))/s), 10 rooms of 100 (100 senders at $r/s), interleaved" >&2
    measure_interleaved "$one_spec" \
      "--mode room --conns 1000 --rooms 100 --senders 100 --rate $((10 * r)) --duration $dur" \
      "--mode room --conns 1000 --rooms 10 --senders 100 --rate $r --duration $dur"
    use_m 1
  else
    echo "bench: room fan-out, 1000 clients, 10 senders at $r/s" >&2
    # shellcheck disable=SC2086
    measure $one_spec
  fi
  speed_row "Room fan-out: 1,000 clients, 10 senders × $r msg/s ($(rate $offered) deliveries/s offered)"
  [ "$rooms_block" = 1 ] && [ "$r" -le 50 ] || continue
  one_cpu=$(med server_cpu_us_per_delivery)
  cmp="| $(rate $offered)/s | $(rate "$(med deliveries_per_sec)")/s, $(lat "$(med p99_us)"), $(cpu "$one_cpu")"
  for spec in "2 100 10 $((10 * r))" "3 10 100 $r"; do
    set -- $spec
    use_m "$1"
    speed_row "Rooms: 1,000 clients in $2 rooms of $3, 100 senders × $4 msg/s to their room ($(rate $offered) deliveries/s offered)"
    ratio=$(awk -v a="$(med server_cpu_us_per_delivery)" -v b="$one_cpu" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "n/a" }')
    cmp+=" | $(rate "$(med deliveries_per_sec)")/s, $(lat "$(med p99_us)"), $(cpu "$(med server_cpu_us_per_delivery)") ($ratio×)"
  done
  rooms_cmp+=("$cmp |")
done

# 3c. What a room membership costs: idle RSS per connection in lobby only, and in lobby + 1
# room (rooms of 100, and of 10).
rooms_mem=()
if [ "$rooms_block" = 1 ]; then
  lobby_per=""
  for nrooms in 0 $((idle_big / 100)) $((idle_big / 10)); do
    if [ "$nrooms" = 0 ]; then
      echo "bench: idle RSS, $idle_big connections in lobby only" >&2
      measure --mode idle --conns "$idle_big" --duration 1
      what="lobby only"
    else
      echo "bench: idle RSS, $idle_big connections in lobby + 1 of $nrooms rooms" >&2
      measure --mode idle --conns "$idle_big" --rooms "$nrooms" --duration 1
      what="lobby + 1 room ($(num "$nrooms") rooms of $((idle_big / nrooms)))"
    fi
    # Per connection that got in (a run where some did not shows in the problems column).
    per=$(paste -d' ' "$tmp/m/server_rss_kb" "$tmp/m/server_rss_start_kb" "$tmp/m/ready" 2>/dev/null |
      awk '$3 > 0 { print ($1 - $2) * 1024 / $3 }' | median)
    if [ "$nrooms" = 0 ]; then lobby_per=$per extra="(the base)"; else
      extra=$(awk -v a="$per" -v b="$lobby_per" 'BEGIN { if (a ~ /^-?[0-9.]+$/ && b ~ /^-?[0-9.]+$/) printf "%+.0f B", a - b; else print "n/a" }')
    fi
    row "Idle RSS per connection, $(num "$idle_big") connections, $what" \
      "$(awk -v b="$per" 'BEGIN { if (b !~ /^-?[0-9]+([.][0-9]*)?(e[+-]?[0-9]+)?$/) print "n/a"; else printf "%.2f KiB", b / 1024 }')" \
      "" "" "" "" "$(problems)" "$(base_idle)"
    rooms_mem+=("| $what | $(awk -v b="$per" 'BEGIN { if (b !~ /^-?[0-9.]+$/) print "n/a"; else printf "%.0f B (%.2f KiB)", b, b / 1024 }') | $extra | $(problems) |")
  done
fi

if [ "$single" = 1 ]; then

# 3b. The flush window's trade: the 500k/s row again with a 40 ms window instead of 5 ms.
if [ "$full" = 1 ]; then
echo "bench: room fan-out at 500k/s with --flush-interval 0.04" >&2
server_args=(--flush-interval 0.04)
measure --mode room --conns 1000 --senders 10 --rate 50 --duration "$dur"
server_args=()
speed_row "Room fan-out at 500k/s offered, \`--flush-interval 0.04\` (default 0.005)"
fi

# 4. Private messages.
private_rates=(5 10)
[ "$full" = 1 ] || private_rates=(5)
for r in "${private_rates[@]}"; do
  offered=$((10000 * r * 2))
  echo "bench: private, 5000 pairs at $r/s each" >&2
  measure --mode private --conns 10000 --rate "$r" --duration "$dur"
  speed_row "Private: 5,000 pairs, each client × $r msg/s ($(rate $offered) deliveries/s offered)"
done

# 5. Most connections held, with light traffic.
if [ "$full" = 1 ]; then
echo "bench: $max_conns connections with light room traffic" >&2
measure --mode room --conns "$max_conns" --senders 2 --rate 1 --duration "$dur" --connect-concurrency 512
row "Connections held: $(num "$max_conns") clients, 2 room messages/s to all" \
  "$(num "$(med ready)") held, $(awk -v x="$(med server_rss_kb)" 'BEGIN { printf "%.1f MiB", x / 1024 }') RSS" \
  "$(lat "$(med p50_us)")" "$(lat "$(med p99_us)")" \
  "$(cpu "$(med server_cpu_us_per_delivery)")" "$(pct "$(med load_pct)")" "$(problems)" "$(base_speed)"
fi

fi # single

# 6. Cluster: two nodes and Redis on CPU 0 (the single server's CPU), the load on CPU 1.
start_cluster() {
  local port i
  for i in $(seq 20); do
    port=$((20000 + RANDOM % 20000))
    "${rt[@]}" taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$tmp" >"$tmp/redis.out" 2>&1 &
    redis_pid=$!
    sleep 0.3
    if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then break; fi
    kill "$redis_pid" 2>/dev/null || true
    redis_pid=""
  done
  [ -n "$redis_pid" ] || { echo "bench.sh: redis-server did not start" >&2; exit 2; }
  local url="redis://127.0.0.1:$port"
  cluster_pids=("$redis_pid")
  start_chatloop node-a --addr 127.0.0.1:0 --reuse-port --redis "$url"
  node_a=$started_pid
  cluster_pids+=("$node_a")
  start_chatloop node-b --addr "$addr" --reuse-port --redis "$url"
  node_b=$started_pid
  cluster_pids+=("$node_b")
  sleep 0.5 # both nodes subscribe and exchange rosters
}

stop_cluster() {
  local p
  for p in "${cluster_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  cluster_pids=()
}

# One cluster measurement: like `load`, with CPU and RSS summed over both nodes and Redis.
cluster_load() {
  start_cluster
  local line
  line=$(timeout 150 "${rt[@]}" taskset -c 1 "$bin/chatload" --addr "$addr" --pid "$node_a" --pid "$node_b" \
    --pid "$redis_pid" --id-prefix "k$$-" "$@" 2>>"$tmp/load.err" | tail -1) || true
  stop_cluster
  case "$line" in summary*) echo "$line" ;; *) echo "summary failed=1" ;; esac
}

if [ "$cluster_block" = 0 ]; then
  :
elif command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
  for spec in "room 10" "room 50" "private 5"; do
    set -- $spec
    echo "bench: cluster, $1 at $2/s" >&2
    if [ "$1" = room ]; then
      measure_with cluster_load --mode room --conns 1000 --senders 10 --rate "$2" --duration "$dur"
      what="Cluster (2 nodes + Redis on CPU 0): room, 1,000 clients, 10 senders × $2 msg/s ($(rate $((10 * $2 * 1000))) offered)"
    else
      measure_with cluster_load --mode private --conns 10000 --rate "$2" --duration "$dur"
      what="Cluster (2 nodes + Redis on CPU 0): private, 5,000 pairs × $2 msg/s ($(rate $((10000 * $2 * 2))) offered)"
    fi
    speed_row "$what"
  done
else
  echo "bench: no redis-server: cluster rows skipped" >&2
fi

# 7. Under attack: the fan-out at 200k deliveries/s alone, then while each attack runs.
attack_kinds=(none ping-flood fragments private-flood ping-noread)
victim="b$$-m999" # a receiver of the fan-out (its senders are m0..m9)

# One fan-out measurement on a fresh server with its default rate limit; with an attack kind,
# `chatload --attack KIND` starts against the same server once the fan-out's clients are in and
# runs for the same window. Prints the fan-out's summary; the attacker's goes to $tmp/atk/KIND.
attack_load() {
  local kind=$1 line i
  shift
  server_args=(--rate-limit 20)
  start_server
  server_args=()
  : >"$tmp/fan.out"
  timeout 150 "${rt[@]}" taskset -c 1 "$bin/chatload" --addr "$addr" --pid "$server_pid" --id-prefix "b$$-" "$@" \
    >"$tmp/fan.out" 2>>"$tmp/load.err" </dev/null &
  fan_pid=$!
  if [ "$kind" != none ]; then
    # Up to 60 s for the 1,000 clients to connect; the window opens right after.
    for i in $(seq 1200); do
      grep -q '^connected ' "$tmp/fan.out" 2>/dev/null && break
      kill -0 "$fan_pid" 2>/dev/null || break
      sleep 0.05
    done
    local target=()
    [ "$kind" = private-flood ] && target=(--target "$victim")
    timeout $((dur + 30)) "${rt[@]}" taskset -c 1 "$bin/chatload" --addr "$addr" --id-prefix "x$$-" --attack "$kind" \
      "${target[@]}" --duration "$dur" >"$tmp/atk.out" 2>>"$tmp/load.err" </dev/null &
    atk_pid=$!
  fi
  wait "$fan_pid" 2>/dev/null || true
  fan_pid=""
  if [ -n "$atk_pid" ]; then
    wait "$atk_pid" 2>/dev/null || true
    atk_pid=""
    mkdir -p "$tmp/atk"
    tail -1 "$tmp/atk.out" >>"$tmp/atk/$kind"
  fi
  stop_server
  line=$(tail -1 "$tmp/fan.out")
  case "$line" in summary*) echo "$line" ;; *) echo "summary failed=1" ;; esac
}

attack_rows=()
if [ "$attack_block" = 1 ]; then
  base_p99=""
  for kind in "${attack_kinds[@]}"; do
    echo "bench: under attack: room fan-out at 200k/s, attack: $kind" >&2
    # Not against --baseline: the attack table has no column for it.
    kept=$baseline baseline=""
    measure_with attack_load "$kind" --mode room --conns 1000 --senders 10 --rate 20 --duration "$dur"
    baseline=$kept
    p99=$(med p99_us)
    [ "$kind" = none ] && base_p99=$p99
    ratio=$(awk -v a="$p99" -v b="$base_p99" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f×", a / b; else print "n/a" }')
    if [ "$kind" = none ]; then
      what="no attack (baseline)" got=""
    else
      what="\`--attack $kind\`"
      if [ "$kind" = private-flood ]; then what+=" to one receiver"; fi
      # What the attacker achieved in its last run.
      a=$(tail -1 "$tmp/atk/$kind" 2>/dev/null || true)
      case "$a" in
        summary*) got="$(num "$(get frames_sent "$a")") frames sent, $(num "$(get pongs "$a")") pongs, $(num "$(get echoes "$a")") private echoes; errors: $(get error_codes "$a"); closed: $(get close_codes "$a"); write errors: $(get write_errors "$a")" ;;
        *) got="the attacker did not finish (no summary)" ;;
      esac
    fi
    attack_rows+=("| $what | $(rate "$(med deliveries_per_sec)") deliveries/s | $(lat "$p99") | $ratio | $(num "$(total lost)") | $(problems) | $got |")
  done
fi

# 8. The issue-26 targets: chatloop beside uWebSockets (and the --baseline build), one run of
# each in turn per round, at 20k, 200k and 500k deliveries/s, in one room and in rooms of 10.
uws_bin="" uws_rooms_bin="" uws_why=""
free_port() {
  local p i
  for i in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  return 1
}
# One measurement of the uWebSockets peer BIN on a fresh start (chatload --proto raw).
uws_load() {
  local peer=$1 port line i
  shift
  port=$(free_port) || { echo "summary failed=1"; return; }
  "${rt[@]}" taskset -c 0 "$peer" "$port" >"$tmp/uws.out" 2>"$tmp/uws.err" &
  server_pid=$!
  for i in $(seq 200); do
    grep -q '^listening on ' "$tmp/uws.out" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.05
  done
  if ! grep -q '^listening on ' "$tmp/uws.out" 2>/dev/null; then
    echo "bench.sh: the uWebSockets peer did not start" >&2
    cat "$tmp/uws.err" >&2
    stop_server
    echo "summary failed=1"
    return
  fi
  line=$(timeout 150 "${rt[@]}" taskset -c 1 "$bin/chatload" --addr "127.0.0.1:$port" --pid "$server_pid" --proto raw \
    --id-prefix "b$$-" "$@" 2>>"$tmp/load.err" | tail -1) || true
  stop_server
  case "$line" in summary*) echo "$line" ;; *) echo "summary failed=1" ;; esac
}
# One measurement of KIND (chatloop, uws, baseline) with chatload's FLAGS.
kind_load() {
  local kind=$1
  shift
  case "$kind" in
    chatloop) load "$@" ;;
    baseline) server_bin=$baseline && load "$@" ;;
    uws) uws_load "$uws_bin" "$@" ;;
    uws-rooms) uws_load "$uws_rooms_bin" "$@" ;;
  esac
}
# $runs rounds, each running every KIND once (KINDS comma-separated) with the same chatload
# flags; leaves each kind's runs in $tmp/t.KIND.
measure_kinds() {
  local kinds=$1 k r line
  shift
  for k in ${kinds//,/ }; do rm -rf "$tmp/t.$k" && mkdir -p "$tmp/t.$k"; done
  for r in $(seq "$runs"); do
    for k in ${kinds//,/ }; do
      line=$(kind_load "$k" "$@")
      echo "bench:   round $r, $k: ${line#summary }" | cut -c1-220 >&2
      record "$line" "$tmp/t.$k" "$k"
    done
  done
}
# KIND's cell: CPU per delivery; p50 / p99 / p99.9; what went wrong.
target_cell() {
  rm -rf "$tmp/m" && cp -r "$tmp/t.$1" "$tmp/m"
  local c p
  c="$(cpu "$(med server_cpu_us_per_delivery)"); $(lat "$(med p50_us)") / $(lat "$(med p99_us)") / $(lat "$(med p999_us)")"
  p=$(problems)
  [ "$p" = none ] || c+="; $p"
  # chatload near its whole core (the chatload column is chatloop's runs): say so here.
  if [ "$1" != chatloop ] && awk -v x="$(med load_pct)" 'BEGIN { exit !(x >= 90) }'; then
    c+="; chatload at $(med load_pct)% of its CPU"
  fi
  echo "$c"
}
# KIND's median of KEY.
tmed() { if [ -f "$tmp/t.$1/$2" ]; then median <"$tmp/t.$1/$2"; else echo nan; fi; }
# This build's CPU and p99 as multiples of KIND's.
versus() {
  echo "CPU $(ratio "$(tmed chatloop server_cpu_us_per_delivery)" "$(tmed "$1" server_cpu_us_per_delivery)"), p99 $(ratio "$(tmed chatloop p99_us)" "$(tmed "$1" p99_us)")"
}
target_rows=()
if [ "$targets_block" = 1 ]; then
  if uws_bin=$(bash scripts/uws-peer.sh) && uws_rooms_bin=$(bash scripts/uws-peer.sh --rooms); then :; else
    uws_bin="" uws_rooms_bin=""
    uws_why="not measured: the uWebSockets peer's sources (shared/peers/uws, outside this repository) are absent or did not build (scripts/uws-peer.sh --help)"
    echo "bench: $uws_why" >&2
  fi
  for r in 2 20 50; do
    offered=$((10 * r * 1000))
    for shape in one tens; do
      kinds=chatloop
      if [ "$shape" = one ]; then
        spec=(--mode room --conns 1000 --senders 10 --rate "$r" --duration "$dur")
        what="1 room of 1,000, 10 senders × $r/s"
        [ -z "$uws_bin" ] || kinds+=,uws
      else
        spec=(--mode room --conns 1000 --rooms 100 --senders 100 --rate $((10 * r)) --duration "$dur")
        what="100 rooms of 10, 100 senders × $((10 * r))/s"
        [ -z "$uws_rooms_bin" ] || kinds+=,uws-rooms
      fi
      [ -z "$baseline" ] || kinds+=,baseline
      echo "bench: targets: $(rate $offered)/s offered, $what: $kinds, alternately" >&2
      measure_kinds "$kinds" "${spec[@]}"
      row_t="| $(rate $offered)/s | $what | $(target_cell chatloop) | $(pct "$(tmed chatloop load_pct)"), $(lat "$(tmed chatloop read_delay_p99_us)")"
      if [[ ",$kinds," == *,uws,* ]]; then
        row_t+=" | $(target_cell uws) | $(versus uws)"
      elif [[ ",$kinds," == *,uws-rooms,* ]]; then
        row_t+=" | $(target_cell uws-rooms) | $(versus uws-rooms)"
      else
        row_t+=" | ${uws_why} | "
      fi
      if [ -n "$baseline" ]; then row_t+=" | $(target_cell baseline) | $(versus baseline)"; fi
      target_rows+=("$row_t |")
    done
  done
fi

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
{
  echo "chatloop $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)') on $(date -u +%Y-%m-%d), $(nproc) CPUs ($cpu), Linux $(uname -r)."
  echo "Server pinned to CPU 0, chatload to CPU 1, loopback$([ "${#rt[@]}" -gt 0 ] && echo ', both at real-time priority (--rt)'); median of $runs run(s)$([ "$quick" = 1 ] && echo ', --quick: 2 s windows, smaller connection counts');"
  echo "each room/private window ${dur} s. Latency is from the send to the frame's arrival at the receiving client's socket"
  echo "(kernel receive stamps), over every delivery."
  echo "Load average before: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews these numbers)."
  echo
  if [ "${#rows[@]}" -gt 0 ]; then
    if [ -n "$baseline" ]; then
      echo "| Measure | Result | p50 | p99 | Server CPU per delivery | chatload CPU | Lost / unexpected closes / connect errors | Baseline ($baseline_name), alternately |"
      echo "|---|---|---|---|---|---|---|---|"
    else
      echo "| Measure | Result | p50 | p99 | Server CPU per delivery | chatload CPU | Lost / unexpected closes / connect errors |"
      echo "|---|---|---|---|---|---|---|"
    fi
    printf '%s\n' "${rows[@]}"
  fi
  if [ "${#target_rows[@]}" -gt 0 ]; then
    [ "${#rows[@]}" -gt 0 ] && echo
    echo "The targets of issue 26: 1,000 clients, server CPU per delivery and latency p50 / p99 / p99.9 (send to arrival"
    echo "at the receiving socket), medians of $runs; each round runs every server once, in turn. \"chatload\": its own CPU"
    echo "and its read delay p99, which the latency leaves out (the harness's floor)."
    echo
    if [ -n "$baseline" ]; then
      echo "| Offered | Rooms | chatloop | chatload | uWebSockets | chatloop vs uWebSockets | baseline ($baseline_name) | chatloop vs baseline |"
      echo "|---|---|---|---|---|---|---|---|"
    else
      echo "| Offered | Rooms | chatloop | chatload | uWebSockets | chatloop vs uWebSockets |"
      echo "|---|---|---|---|---|---|"
    fi
    printf '%s\n' "${target_rows[@]}"
  fi
  if [ "${#attack_rows[@]}" -gt 0 ]; then
    [ "${#rows[@]}" -gt 0 ] && echo
    echo "Under attack: room fan-out, 1,000 clients, 10 senders × 20 msg/s (200k deliveries/s offered), server"
    echo "with its default --rate-limit 20; each attack runs for the same ${dur} s window against the same server."
    echo
    echo "| Attack | Fan-out result | p99 | p99 vs baseline | Lost | Lost / unexpected closes / connect errors | What the attacker got (last run) |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s\n' "${attack_rows[@]}"
  fi
  if [ "${#rooms_cmp[@]}" -gt 0 ]; then
    echo
    echo "Rooms against one room at the same deliveries/s (1,000 clients; deliveries/s, p99, server CPU per delivery,"
    echo "and that CPU as a multiple of the one-room row's):"
    echo
    echo "| Offered | 1 room of 1,000, 10 senders | 100 rooms of 10, 100 senders | 10 rooms of 100, 100 senders |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rooms_cmp[@]}"
  fi
  if [ "${#rooms_mem[@]}" -gt 0 ]; then
    echo
    echo "What a room membership costs: idle RSS per connection, $(num "$idle_big") connections (each joins its room after its welcome):"
    echo
    echo "| Connections in | RSS per connection | vs lobby only (per membership) | Lost / unexpected closes / connect errors |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rooms_mem[@]}"
  fi
} | tee "$out"
echo "bench: saved $out (every run's summary line: $runs_log)" >&2
