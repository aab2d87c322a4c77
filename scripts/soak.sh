#!/usr/bin/env bash
# Soak test: room traffic plus connection churn against a release build of the server for a
# fixed time, sampling the server every second, then checking that nothing was lost, no client
# was closed unexpectedly, the server lived, and its RSS stopped growing after warm-up.
#
# Usage: scripts/soak.sh [--duration SECS] [--conns N] [--senders N] [--rate R] [--churn C]
#                        [--cluster [--chaos]] [--blip] [--attack [--max-rss MB] [--pace SPEC]]
#   --duration SECS  how long traffic runs [default: 20; 600 with --attack]
#   --conns N        clients held for the whole run [default: 500; 1000 with --attack]
#   --senders N      of them, how many send room messages [default: 10]
#   --rate R         messages per second per sender [default: 5]
#   --churn C        extra connections opened and closed per second [default: 20]
#   --cluster        two nodes sharing one port (--reuse-port) through a redis-server of
#                    its own on loopback (needs redis-server and redis-cli): every room
#                    message must reach the clients of both nodes; the samples are node A's;
#                    afterwards Redis must hold no ids (all released) and both nodes live
#   --chaos          with --cluster: while the load runs, Redis is stopped (SIGSTOP) or
#                    killed at random moments, for 0.3 to 3 s each time, then continued or
#                    restarted empty on its port (the log lists each event). chatload runs
#                    with --faults: every room message must reach every receiver or be
#                    named in one cluster_unavailable/cluster_unconfirmed error to its
#                    sender (unreported = 0), and none may arrive twice (duplicates = 0);
#                    losses so reported are the point, not a failure. The nodes run with
#                    --redis-ttl 10 (longer than any outage here), and ids released while
#                    Redis was away must expire within it after the run
#   --blip           every held client drops its connection without a close once, at a
#                    random moment (reset, FIN or left half-open, in turn), and resumes with
#                    its token (chatload --mode blip, no churn): no room message may be lost
#                    or doubled (counted by seq), every blip must resume, and no gap is
#                    allowed (the default --history 100 keeps far more than a blip misses)
#                    With --cluster, a resume may reach the other node, which takes the
#                    user over (README: "Resuming on another node")
#   --attack         the server with its default flags (rate limit on), twice: the room
#                    load alone for --duration, then the same load beside the attacks of
#                    issue 21 (chatload --mode abuse: history floods, filled holds,
#                    self-replacing resumes, max-rooms exhaustion, throwaway-id churn, and a
#                    well-behaved probe making a room a second). Fails if the server's RSS
#                    peak under attack passes --max-rss, the load's p99 under attack passes
#                    2x its p99 alone (or 10 ms, whichever is more), the load lost or doubled
#                    anything or had a client closed, the self-replacing id got more than
#                    20/s + one burst through, a probe was refused or unanswered, or
#                    the server died or stopped answering /healthz. A frozen server is killed
#                    (SIGKILL after 5 s of SIGTERM); the run takes about 2 x --duration + 30 s
#   --max-rss MB     with --attack: the RSS bound [default: 512]
#   --pace SPEC      with --attack: chatload --mode abuse's --pace (e.g. history=1000,holds=40)
#
# Output: artifacts/soak-STAMP.csv (t_s,rss_kb,cpu_s,cpu_pct,fds,conns, one row a second),
# artifacts/soak-STAMP.log (chatload's report and the server's log), and soak-STAMP.png when
# gnuplot is installed. Exit status 0 when every check passed, 1 when one failed, 2 on bad
# usage or a setup failure. Traffic goes to 127.0.0.1 only; the server is stopped on exit.
#
# RSS bound: the samples after warm-up (the first 25% of the run, at least 3 s) are cut into
# thirds; the median of the last third may exceed the median of the first by at most
# 20% + 2 MiB.
set -euo pipefail

duration=20 conns=500 senders=10 rate=5 churn=20 cluster=0 chaos=0 blip=0
attack=0 max_rss=512 pace="" duration_set=0 conns_set=0
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
# The value after flag $1, or exit 2 (bad usage) when there is none.
value() { [ $# -ge 2 ] || { echo "soak.sh: $1 needs a value (see --help)" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) value "$@"; duration=$2; duration_set=1; shift 2 ;;
    --conns) value "$@"; conns=$2; conns_set=1; shift 2 ;;
    --attack) attack=1; shift ;;
    --max-rss) value "$@"; max_rss=$2; shift 2 ;;
    --pace) value "$@"; pace=$2; shift 2 ;;
    --senders) value "$@"; senders=$2; shift 2 ;;
    --rate) value "$@"; rate=$2; shift 2 ;;
    --churn) value "$@"; churn=$2; shift 2 ;;
    --cluster) cluster=1; shift ;;
    --chaos) chaos=1; shift ;;
    --blip) blip=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "soak.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$attack" = 1 ]; then
  [ "$duration_set" = 1 ] || duration=600
  [ "$conns_set" = 1 ] || conns=1000
  [ "$cluster" = 0 ] && [ "$blip" = 0 ] || { echo "soak.sh: --attack runs one node without --blip" >&2; exit 2; }
else
  [ "$max_rss" = 512 ] && [ -z "$pace" ] || { echo "soak.sh: --max-rss and --pace need --attack" >&2; exit 2; }
fi
[[ "$pace" =~ ^[a-z0-9=.,]*$ ]] || { echo "soak.sh: --pace must look like history=100,holds=20" >&2; exit 2; }
for v in duration conns senders max_rss; do
  [[ "${!v}" =~ ^[0-9]+$ && "${!v}" -gt 0 ]] || { echo "soak.sh: --$v must be a whole number above 0" >&2; exit 2; }
done
[ "$chaos" = 0 ] || [ "$cluster" = 1 ] || { echo "soak.sh: --chaos needs --cluster" >&2; exit 2; }
[ "$blip" = 0 ] || [ "$chaos" = 0 ] || { echo "soak.sh: --blip and --chaos exclude each other" >&2; exit 2; }
for v in rate churn; do
  [[ "${!v}" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "soak.sh: --$v must be a number" >&2; exit 2; }
done

cd "$(dirname "$0")/.."
mkdir -p artifacts
stamp=$(date +%Y%m%d-%H%M%S)
csv="artifacts/soak-$stamp.csv"
log="artifacts/soak-$stamp.log"
png="artifacts/soak-$stamp.png"
tmp=$(mktemp -d)
server_pid="" load_pid="" sampler_pid="" node_b="" redis_pid="" chaos_pid="" abuse_pid=""
# Ends each of the given processes: SIGTERM, then SIGKILL for any still there 5 s later (a
# server whose loop is frozen ignores SIGTERM), and reaps them.
stop() {
  local p
  for p in "$@"; do
    kill -CONT "$p" 2>/dev/null || true
    kill "$p" 2>/dev/null || true
  done
  for _ in $(seq 50); do
    local alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
cleanup() {
  # Under --chaos, the current Redis may be one the chaos loop started (its pid in redis.pid),
  # and may be stopped: continue it so that it can die.
  [ -s "$tmp/redis.pid" ] && redis_pid=$(cat "$tmp/redis.pid")
  # shellcheck disable=SC2086 # the empty ones vanish
  stop $chaos_pid $sampler_pid $abuse_pid $load_pid $server_pid $node_b $redis_pid
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

echo "soak: building release binaries" >&2
cargo build --release --quiet --bin chatloop --bin chatload || { echo "soak.sh: build failed" >&2; exit 2; }
bin=${CARGO_TARGET_DIR:-target}/release

# With --cluster: a redis-server of our own on a free loopback port, and the nodes' flags.
node_args=()
# Starts redis-server on $1 and waits for its PONG; sets redis_pid (and writes it to
# $tmp/redis.pid); on failure, returns 1 with nothing left running.
redis_start() {
  redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" \
    >>"$tmp/redis.out" 2>&1 &
  redis_pid=$!
  for _ in $(seq 40); do
    redis-cli -p "$1" ping 2>/dev/null | grep -q PONG && { echo "$redis_pid" >"$tmp/redis.pid"; return 0; }
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.05
  done
  kill "$redis_pid" 2>/dev/null || true
  wait "$redis_pid" 2>/dev/null || true
  redis_pid=""
  return 1
}
if [ "$cluster" = 1 ]; then
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
    { echo "soak.sh: --cluster needs redis-server and redis-cli (apt-get install redis-server)" >&2; exit 2; }
  for _ in $(seq 20); do
    redis_port=$((20000 + RANDOM % 20000))
    redis_start "$redis_port" && break
  done
  [ -n "$redis_pid" ] || { echo "soak.sh: redis-server did not start" >&2; exit 2; }
  # Killed by the chaos loop, not by us: no job notice for it (cleanup still ends it by pid).
  [ "$chaos" = 1 ] && disown "$redis_pid"
  node_args=(--reuse-port --redis "redis://127.0.0.1:$redis_port")
  [ "$chaos" = 1 ] && node_args+=(--redis-ttl 10)
fi

# --chaos: from 2 s into the load until 3 s before its end, Redis fails after 1 to 3 s: a
# SIGSTOP, or a SIGKILL, for 0.3 to 3 s; then SIGCONT, or a new (empty) Redis on the same
# port. Each event goes to $tmp/chaos.log with its time since the load started.
rand_ms() { echo $(($1 + RANDOM % ($2 - $1 + 1))); }
chaos_loop() {
  local t0=$SECONDS end=$((SECONDS + duration)) pid out
  ms() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
  sleep 2
  # An event takes at most 6 s; the last one ends 3 s before the load stops sending.
  while [ $((SECONDS + 6 + 3)) -le "$end" ]; do
    sleep "$(ms "$(rand_ms 1000 3000)")"
    out=$(rand_ms 300 3000)
    pid=$(cat "$tmp/redis.pid")
    if [ $((RANDOM % 2)) = 0 ]; then
      echo "t=$((SECONDS - t0))s SIGSTOP Redis (pid $pid) for $(ms "$out") s"
      kill -STOP "$pid"
      sleep "$(ms "$out")"
      kill -CONT "$pid"
    else
      echo "t=$((SECONDS - t0))s SIGKILL Redis (pid $pid), restart after $(ms "$out") s"
      kill -KILL "$pid"
      wait "$pid" 2>/dev/null || true
      sleep "$(ms "$out")"
      for _ in $(seq 10); do redis_start "$redis_port" && break; sleep 0.2; done
      [ -n "$redis_pid" ] || { echo "t=$((SECONDS - t0))s Redis did not restart on port $redis_port"; return 1; }
    fi
  done
  echo "t=$((SECONDS - t0))s chaos over; Redis pid $(cat "$tmp/redis.pid") running"
}

# Starts a server on ADDR (rate limit off, so the offered load is what arrives), output to
# $tmp/NAME.*; waits until it listens; sets started_pid and addr.
start_server() {
  local name=$1
  RUST_LOG=${RUST_LOG:-warn} "$bin/chatloop" --addr "$2" "${server_flags[@]}" "${node_args[@]}" \
    >"$tmp/$name.out" 2>"$tmp/$name.err" &
  started_pid=$!
  for _ in $(seq 100); do
    grep -q '^listening on ' "$tmp/$name.out" 2>/dev/null && break
    kill -0 "$started_pid" 2>/dev/null || break
    sleep 0.05
  done
  addr=$(sed -n 's#^listening on http://##p' "$tmp/$name.out")
  [ -n "$addr" ] || { echo "soak.sh: $name did not start:" >&2; cat "$tmp/$name.err" >&2; exit 2; }
}

# The rate limit is off so that the offered load is what arrives, except under --attack,
# where the server runs with its defaults, as it would meet an attacker.
server_flags=(--rate-limit 0)
[ "$attack" = 1 ] && server_flags=()

# --attack: one server sample every 0.5 s of $1 while it lives: ms since start, RSS, CPU%.
rss_sampler() {
  local t0 now prev=-1 ticks rss pct
  t0=$(date +%s%N)
  echo "t_ms,rss_kb,cpu_pct"
  while kill -0 "$1" 2>/dev/null; do
    ticks=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null) || break
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || break
    now=$(date +%s%N)
    pct=0
    [ "$prev" -ge 0 ] && pct=$(((ticks - prev) * 200 / $(getconf CLK_TCK)))
    echo "$(((now - t0) / 1000000)),$rss,$pct"
    prev=$ticks
    sleep 0.5
  done
}

# --attack, one phase ($1: alone or attack): a fresh server with default flags, the room
# load for --duration (and beside it, for attack, chatload --mode abuse from the moment the
# load's clients are in), /healthz asked at the end, the server stopped whatever its state.
# Sets healthy_$1 and alive_$1; outputs in $tmp/load-$1.out, $tmp/abuse.out,
# artifacts/soak-STAMP-$1.csv.
attack_phase() {
  local name=$1 healthy=0 alive=1
  start_server "$name" 127.0.0.1:0
  server_pid=$started_pid
  echo "soak: attack: phase '$name': server pid $server_pid on $addr; $conns clients in lobby, $senders senders at $rate/s, $duration s" >&2
  rss_sampler "$server_pid" >"artifacts/soak-$stamp-$name.csv" &
  sampler_pid=$!
  # Every process is bounded twice: by its own deadline and by timeout (SIGKILL 5 s later).
  timeout -k 5 $((duration + 80)) "$bin/chatload" --addr "$addr" --mode room --conns "$conns" \
    --senders "$senders" --rate "$rate" --duration "$duration" --warmup 30 --drain 5 \
    --pid "$server_pid" --id-prefix "s$$$name-" >"$tmp/load-$name.out" 2>&1 &
  load_pid=$!
  if [ "$name" = attack ]; then
    for _ in $(seq 600); do
      grep -q '^connected ' "$tmp/load-$name.out" 2>/dev/null && break
      kill -0 "$load_pid" 2>/dev/null || break
      sleep 0.05
    done
    timeout -k 5 $((duration + 60)) "$bin/chatload" --mode abuse --addr "$addr" --duration "$duration" \
      --pid "$server_pid" --id-prefix "x$$-" ${pace:+--pace "$pace"} >"$tmp/abuse.out" 2>&1 &
    abuse_pid=$!
  fi
  wait "$load_pid" || true
  load_pid=""
  if [ -n "$abuse_pid" ]; then
    wait "$abuse_pid" || true
    abuse_pid=""
  fi
  kill -0 "$server_pid" 2>/dev/null || alive=0
  if timeout 5 bash -c "exec 3<>/dev/tcp/${addr%:*}/${addr##*:} &&
      printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 &&
      head -c 12 <&3" 2>/dev/null | grep -q ' 200'; then
    healthy=1
  fi
  stop "$server_pid"
  server_pid=""
  stop "$sampler_pid"
  sampler_pid=""
  printf -v "healthy_$name" %s "$healthy"
  printf -v "alive_$name" %s "$alive"
}

# --attack: both phases, then the checks; the exit status is the verdict.
attack_soak() {
  local base hit ab get peak_alone peak limit failures=() f
  attack_phase alone
  attack_phase attack
  {
    for f in alone attack; do
      echo "== chatload room load, $f"
      cat "$tmp/load-$f.out"
    done
    echo "== chatload --mode abuse"
    cat "$tmp/abuse.out" 2>/dev/null
    for f in alone attack; do
      echo "== server stderr, $f"
      cat "$tmp/$f.err"
    done
  } >"$log"
  base=$(grep '^summary ' "$tmp/load-alone.out" | tail -1 || true)
  hit=$(grep '^summary ' "$tmp/load-attack.out" | tail -1 || true)
  ab=$(grep '^summary ' "$tmp/abuse.out" | tail -1 || true)
  get() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
  peak_alone=$(awk -F, 'NR > 1 && $2 > m { m = $2 } END { print m + 0 }' "artifacts/soak-$stamp-alone.csv")
  peak=$(awk -F, 'NR > 1 && $2 > m { m = $2 } END { print m + 0 }' "artifacts/soak-$stamp-attack.csv")
  grep -e '^abuse ' -e '^server: ' "$tmp/abuse.out" 2>/dev/null | sed 's/^/soak: /' || true
  for f in alone attack; do
    local sum
    sum=$([ "$f" = alone ] && echo "$base" || echo "$hit")
    echo "soak: load $f: sent $(get "$sum" sent), delivered $(get "$sum" delivered) of $(get "$sum" expected)," \
      "lost $(get "$sum" lost), reordered $(get "$sum" reordered), unexpected closes $(get "$sum" unexpected_closes)" \
      "($(get "$sum" close_codes)), connect errors $(get "$sum" connect_errors); p50 $(get "$sum" p50_us) us," \
      "p99 $(get "$sum" p99_us) us, max $(get "$sum" max_us) us; server RSS peak" \
      "$([ "$f" = alone ] && echo "$peak_alone" || echo "$peak") kB"
    if [ -z "$sum" ] || [ -n "$(get "$sum" aborted)" ]; then
      failures+=("the load $f produced no summary (see $log)")
      continue
    fi
    [ "$(get "$sum" lost)" = 0 ] || failures+=("load $f: $(get "$sum" lost) of $(get "$sum" expected) deliveries lost")
    [ "$(get "$sum" reordered)" = 0 ] || failures+=("load $f: $(get "$sum" reordered) deliveries duplicated or out of order")
    [ "$(get "$sum" extra)" = 0 ] || failures+=("load $f: $(get "$sum" extra) deliveries more than expected")
    [ "$(get "$sum" unexpected_closes)" = 0 ] ||
      failures+=("load $f: $(get "$sum" unexpected_closes) clients closed (codes $(get "$sum" close_codes))")
    [ "$(get "$sum" connect_errors)" = 0 ] || failures+=("load $f: $(get "$sum" connect_errors) connect errors")
  done
  local p99_base p99_hit
  p99_base=$(get "$base" p99_us)
  p99_hit=$(get "$hit" p99_us)
  limit=$((2 * ${p99_base:-0}))
  [ "$limit" -ge 10000 ] || limit=10000
  if [ -n "$p99_hit" ] && [ -n "$p99_base" ] && [ "$p99_hit" -gt "$limit" ]; then
    failures+=("load p99 under attack ${p99_hit} us > ${limit} us (2 x ${p99_base} us alone, at least 10 ms)")
  fi
  [ "$peak" -le $((max_rss * 1024)) ] ||
    failures+=("server RSS peaked at $((peak / 1024)) MB under attack, above --max-rss ${max_rss} MB (alone: $((peak_alone / 1024)) MB)")
  if [ -z "$ab" ]; then
    failures+=("chatload --mode abuse produced no summary (see $log)")
  else
    # The server's default --rate-limit: 20/s and one burst of 40 for the whole run.
    [ "$(get "$ab" replace_through)" -le $((20 * duration + 40)) ] ||
      failures+=("the self-replacing id got $(get "$ab" replace_through) lobby messages through ($(get "$ab" replace_per_sec)/s), above the rate limit's $((20 * duration + 40)) (20/s + one burst of 40)")
    [ "$(get "$ab" probe_failed)" = 0 ] ||
      failures+=("$(get "$ab" probe_failed) of $(get "$ab" probes) well-behaved probes could not make a room and post in it (too_many_rooms $(get "$ab" probe_refused), p99 round trip $(get "$ab" probe_p99_us) us)")
  fi
  for f in alone attack; do
    local a h
    a="alive_$f" h="healthy_$f"
    if [ "${!a}" != 1 ]; then
      failures+=("the server died during the load $f (see $log)")
    elif [ "${!h}" != 1 ]; then
      failures+=("the server did not answer /healthz within 5 s after the load $f (frozen; killed)")
    fi
  done
  echo "soak: attack: summary duration_s=$duration conns=$conns rss_peak_kb=$peak rss_alone_peak_kb=$peak_alone" \
    "max_rss_kb=$((max_rss * 1024)) p99_alone_us=${p99_base:-?} p99_attack_us=${p99_hit:-?} p99_limit_us=$limit" \
    "lost_alone=$(get "$base" lost) lost_attack=$(get "$hit" lost) healthy=${healthy_attack:-0}" \
    "$(sed 's/^summary mode=abuse //; s/ window_s=.*//' <<<"$ab")"
  echo "soak: samples in artifacts/soak-$stamp-alone.csv and artifacts/soak-$stamp-attack.csv; log $log"
  if [ ${#failures[@]} -gt 0 ]; then
    for f in "${failures[@]}"; do echo "soak: FAIL: $f"; done
    echo "soak: FAILED (log: $log)"
    return 1
  fi
  echo "soak: PASSED"
}

[ "$attack" = 1 ] && { attack_soak; exit $?; }

start_server server 127.0.0.1:0
server_pid=$started_pid
port=${addr##*:}
if [ "$cluster" = 1 ]; then
  start_server node-b "$addr"
  node_b=$started_pid
  sleep 0.5 # both nodes connect to Redis and exchange rosters
  echo "soak: cluster: node A pid $server_pid and node B pid $node_b share $addr; Redis on port $redis_port" >&2
fi
echo "soak: server pid $server_pid on $addr; $conns clients, $senders senders at $rate/s, churn $churn/s, $duration s" >&2

# One row a second: time, RSS, cumulative CPU, CPU% over the last second, descriptors, and
# established server-side connections.
hz=$(getconf CLK_TCK)
sampler() {
  local t0 prev_ticks=-1 prev_t now t ticks rss fds cn pct
  t0=$(date +%s.%N)
  echo "t_s,rss_kb,cpu_s,cpu_pct,fds,conns"
  while kill -0 "$server_pid" 2>/dev/null; do
    now=$(date +%s.%N)
    t=$(awk -v a="$now" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')
    ticks=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$server_pid/stat" 2>/dev/null) || break
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$server_pid/status" 2>/dev/null) || break
    fds=$(ls "/proc/$server_pid/fd" 2>/dev/null | wc -l)
    cn=$(ss -Htn state established "( sport = :$port )" 2>/dev/null | wc -l)
    if [ "$prev_ticks" -ge 0 ]; then
      pct=$(awk -v d=$((ticks - prev_ticks)) -v hz="$hz" -v dt="$(awk -v a="$t" -v b="$prev_t" 'BEGIN { print a - b }')" \
        'BEGIN { printf "%.1f", (dt > 0 ? 100 * d / hz / dt : 0) }')
    else
      pct=0.0
    fi
    echo "$t,$rss,$(awk -v x="$ticks" -v hz="$hz" 'BEGIN { printf "%.2f", x / hz }'),$pct,$fds,$cn"
    prev_ticks=$ticks prev_t=$t
    sleep 1
  done
}
sampler >"$csv" &
sampler_pid=$!

# The load, for the whole duration; chatload bounds itself (warmup + duration + drain + 30 s)
# and the timeout bounds it again.
load_args=(--mode room --churn "$churn")
[ "$chaos" = 1 ] && load_args+=(--faults)
# --blip: no churn (its clients are not counted), and a longer drain for the last resumes.
[ "$blip" = 1 ] && load_args=(--mode blip --drain 10)
set +e
timeout $((duration + 90)) "$bin/chatload" --addr "$addr" --conns "$conns" --senders "$senders" \
  --rate "$rate" --duration "$duration" --warmup 30 --pid "$server_pid" \
  --id-prefix "soak$$-" "${load_args[@]}" >"$tmp/load.out" 2>"$tmp/load.err" &
load_pid=$!
if [ "$chaos" = 1 ]; then
  chaos_loop >"$tmp/chaos.log" 2>&1 &
  chaos_pid=$!
fi
wait "$load_pid"
load_status=$?
load_pid=""
if [ -n "$chaos_pid" ]; then
  wait "$chaos_pid"
  chaos_status=$?
  chaos_pid=""
  redis_pid=$(cat "$tmp/redis.pid")
fi
set -e
sleep 1.2 # one more sample with the clients gone
server_alive=1
kill -0 "$server_pid" 2>/dev/null || server_alive=0
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""

{
  echo "== chatload (exit $load_status)"
  cat "$tmp/load.out" "$tmp/load.err"
  if [ "$chaos" = 1 ]; then
    echo "== chaos"
    cat "$tmp/chaos.log"
  fi
  echo "== server stderr"
  cat "$tmp/server.err"
} >"$log"
cat "$tmp/load.out" | grep -v '^summary ' >&2 || true

summary=$(grep '^summary ' "$tmp/load.out" | tail -1 || true)
get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$summary"; }
failures=()
if [ -z "$summary" ] || [ "$(get aborted)" != "" ]; then
  failures+=("chatload produced no summary (exit $load_status)")
else
  if [ "$chaos" = 1 ]; then
    # Losses are expected; each must have been reported to its sender, and nothing doubled.
    [ "$(get unreported)" = 0 ] || failures+=("$(get unreported) room messages missed receivers with no error to their sender")
    [ "$(get overreported)" = 0 ] || failures+=("$(get overreported) cluster_unavailable errors about messages that arrived everywhere")
    [ "$(get duplicates)" = 0 ] || failures+=("$(get duplicates) deliveries duplicated")
  else
    [ "$(get lost)" = 0 ] || failures+=("$(get lost) of $(get expected) expected deliveries lost")
    [ "$(get reordered)" = 0 ] || failures+=("$(get reordered) deliveries duplicated or out of order")
  fi
  if [ "$blip" = 1 ]; then
    [ "$(get blip_lost)" = 0 ] || failures+=("$(get blip_lost) room messages (by seq) never reached a client that blipped")
    [ "$(get blip_duplicated)" = 0 ] || failures+=("$(get blip_duplicated) room messages (by seq) read twice")
    [ "$(get unasked)" = 0 ] || failures+=("$(get unasked) room lines before a resumed client asked (join)")
    [ "$(get gaps)" = 0 ] || failures+=("$(get gaps) gap lines ($(get gap_seqs) seqs no longer kept)")
    [ "$(get resume_failed)" = 0 ] || failures+=("$(get resume_failed) resumes failed")
    [ "$(get resumed)" = "$(get blips)" ] || failures+=("$(get resumed) resumes for $(get blips) blips")
    [ "$(get blips)" = "$conns" ] || failures+=("$(get blips) blips for $conns clients ($(get blips_skipped) skipped)")
  fi
  [ "$(get extra)" = 0 ] || failures+=("$(get extra) deliveries more than expected")
  [ "$(get unexpected_closes)" = 0 ] || failures+=("$(get unexpected_closes) unexpected closes (codes $(get close_codes))")
  [ "$(get connect_errors)" = 0 ] || failures+=("$(get connect_errors) connect errors")
  [ "$(get close_timeouts)" = 0 ] || failures+=("$(get close_timeouts) closes of ours the server never answered")
fi
[ "$server_alive" = 1 ] || failures+=("the server died (see $log)")
if [ "$cluster" = 1 ]; then
  kill -0 "$node_b" 2>/dev/null || failures+=("node B died (see $log)")
  # Every client has gone: every id must have been released in Redis (none left to expire).
  # Under --chaos a release may have been due while Redis was away: such ids expire within
  # the TTL (10 s), so wait for that long at most.
  ids_left=$(redis-cli -p "$redis_port" --scan --pattern 'chatloop:id:*' | wc -l)
  if [ "$chaos" = 1 ]; then
    [ "${chaos_status:-1}" = 0 ] || failures+=("the chaos loop failed (see $log)")
    for _ in $(seq 44); do
      [ "$ids_left" = 0 ] && break
      sleep 0.25
      ids_left=$(redis-cli -p "$redis_port" --scan --pattern 'chatloop:id:*' | wc -l)
    done
    echo "soak: chaos: $(grep -c -e SIGSTOP -e SIGKILL "$tmp/chaos.log" || true) Redis failures:" >&2
    sed 's/^/soak:   /' "$tmp/chaos.log" >&2
  fi
  [ "$ids_left" = 0 ] || failures+=("$ids_left ids still claimed in Redis after every client left")
  echo "soak: cluster: ids left in Redis after the run: $ids_left" >&2
  {
    echo "== node B stderr"
    cat "$tmp/node-b.err"
  } >>"$log"
fi

# RSS growth after warm-up: median of the last third vs the first third.
rss_check=$(awk -F, -v dur="$duration" '
  NR == 1 { next }
  { t[n] = $1; r[n] = $2; n++ }
  function median(lo, hi,    m, i, j, k, a, tmp) {
    m = 0
    for (i = lo; i < hi; i++) a[m++] = r[i]
    for (i = 1; i < m; i++) { tmp = a[i]; for (j = i - 1; j >= 0 && a[j] > tmp; j--) a[j + 1] = a[j]; a[j + 1] = tmp }
    return m % 2 ? a[int(m / 2)] : (a[m / 2 - 1] + a[m / 2]) / 2
  }
  END {
    warm = dur * 0.25; if (warm < 3) warm = 3
    end_t = dur # sampling starts as chatload connects, so [warm, dur] is under load
    s = -1; e = -1
    for (i = 0; i < n; i++) { if (s < 0 && t[i] >= warm) s = i; if (t[i] <= end_t) e = i }
    if (s < 0 || e - s + 1 < 3) { print "skip too few samples after warm-up"; exit }
    k = int((e - s + 1) / 3)
    first = median(s, s + k); last = median(e + 1 - k, e + 1)
    bound = first * 1.2 + 2048
    printf "%s %d %d %d\n", (last > bound ? "grew" : "ok"), first, last, bound
  }' "$csv")
read -r rss_verdict rss_first rss_last rss_bound <<<"$rss_check"
case "$rss_verdict" in
  grew) failures+=("RSS grew after warm-up: median ${rss_first} kB -> ${rss_last} kB, bound ${rss_bound} kB") ;;
  ok) ;;
  *) # Runs under 8 s have too few samples after warm-up; a dead server already failed.
    if [ "$duration" -ge 8 ] && [ "$server_alive" = 1 ]; then failures+=("RSS check impossible: ${rss_check#skip }"); fi ;;
esac
case "$rss_verdict" in
  ok|grew) rss_note="RSS after warm-up, median of first third ${rss_first} kB -> last third ${rss_last} kB (bound ${rss_bound} kB)" ;;
  *) rss_note="RSS not checked" ;;
esac

if command -v gnuplot >/dev/null 2>&1; then
  gnuplot <<EOF 2>/dev/null && echo "soak: plot $png" >&2 || echo "soak: gnuplot failed, no plot" >&2
set terminal png size 1000,600
set output "$png"
set datafile separator ","
set key outside below horizontal
set xlabel "seconds"
set ylabel "RSS (kB)"
set y2label "CPU %, connections / 10, fds / 10"
set y2tics
set ytics nomirror
set title "chatloop soak: $conns clients, $senders x $rate msg/s, churn $churn/s"
plot "$csv" using 1:2 with lines lw 2 title "RSS kB", \
     "" using 1:4 axes x1y2 with lines title "CPU %", \
     "" using 1:(\$6/10) axes x1y2 with lines title "connections / 10", \
     "" using 1:(\$5/10) axes x1y2 with lines dt 2 title "fds / 10"
EOF
fi

cpu_s=$(get server_cpu_s)
peak_conns=$(awk -F, 'NR > 1 && $6 > m { m = $6 } END { print m + 0 }' "$csv")
peak_fds=$(awk -F, 'NR > 1 && $5 > m { m = $5 } END { print m + 0 }' "$csv")
echo "soak: $(($(wc -l <"$csv") - 1)) samples in $csv; peak connections $peak_conns, peak fds $peak_fds; $rss_note"
[ "$blip" = 1 ] && echo "soak: blip: $(get blips) blips, resumed $(get resumed), failed $(get resume_failed);" \
  "room seqs 1..$(get final_seq): lost $(get blip_lost), duplicated $(get blip_duplicated), replayed $(get replayed)," \
  "gaps $(get gaps); resume p99 $(get resume_p99_us) us"
[ "$chaos" = 1 ] && echo "soak: chaos: $(get short) room messages missed receivers; senders told: $(get cluster_unavailable)" \
  "cluster_unavailable + $(get cluster_unconfirmed) cluster_unconfirmed; unreported $(get unreported)," \
  "over-reported $(get overreported), duplicates $(get duplicates)"
echo "soak: sent $(get sent), delivered $(get delivered) of $(get expected), lost $(get lost)," \
  "unexpected closes $(get unexpected_closes), connect errors $(get connect_errors)," \
  "churn $(get churn_completed) cycles, p99 $(get p99_us) us, server CPU ${cpu_s:-?} s"
if [ ${#failures[@]} -gt 0 ]; then
  for f in "${failures[@]}"; do echo "soak: FAIL: $f"; done
  echo "soak: FAILED (log: $log)"
  exit 1
fi
echo "soak: PASSED"
