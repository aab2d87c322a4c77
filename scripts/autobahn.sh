#!/usr/bin/env bash
# Autobahn WebSocket conformance: runs the Autobahn TestSuite cases (via kosoku, a Python 3
# runner of the Autobahn case files) against chatloop's `/echo` endpoint.
#
#   scripts/autobahn.sh                 # every case except 12.* and 13.* (permessage-deflate)
#   scripts/autobahn.sh -i '6.*'        # narrow the run: kosoku's -i/--include CASE,
#                                       # -x/--exclude CASE (globs, repeatable) and
#                                       # -p/--parallelism N pass through
#   scripts/autobahn.sh --help          # this help
#
# Every case must end OK, NON-STRICT or INFORMATIONAL (and its closing handshake OK or
# INFORMATIONAL); anything else, a server that died, or a run past the time limit fails.
# Reports (HTML + JSON per case, index.json) land in target/autobahn-report/.
#
# Needs python3 (with venv) and network access to PyPI on the first run only; the venv lives in
# target/autobahn-venv and is reused while it holds the pinned kosoku.
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
# Only kosoku's narrowing flags pass through; anything else is refused before any install.
kosoku_args=() narrowed=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -i|--include|-x|--exclude|-p|--parallelism)
      [ $# -ge 2 ] || { echo "autobahn.sh: $1 needs a value (see --help)" >&2; exit 2; }
      case "$1" in -p|--parallelism) ;; *) narrowed=1 ;; esac
      kosoku_args+=("$1" "$2"); shift 2 ;;
    *) echo "autobahn.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
set -- "${kosoku_args[@]}"
cd "$(dirname "$0")/.."

KOSOKU_VERSION=0.1.0
# What kosoku $KOSOKU_VERSION runs without 12.* and 13.*; a smaller count means cases vanished.
EXPECTED_CASES=301
RUN_TIMEOUT=${AUTOBAHN_TIMEOUT:-900}
VENV=target/autobahn-venv
OUT=target/autobahn-report
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1

say() { printf 'autobahn: %s\n' "$*"; }
die() { printf 'autobahn: FAIL: %s\n' "$*" >&2; exit 1; }

# --- kosoku in its own venv -------------------------------------------------------------------
have_kosoku() {
  [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" -c "import importlib.metadata as m, sys; \
sys.exit(m.version('kosoku') != '$KOSOKU_VERSION')" 2>/dev/null
}
if ! have_kosoku; then
  say "installing kosoku $KOSOKU_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  timeout 600 "$VENV/bin/python" -m pip install --quiet "kosoku==$KOSOKU_VERSION" </dev/null
  have_kosoku || die "kosoku $KOSOKU_VERSION did not install"
fi

# --- the server -------------------------------------------------------------------------------
say "building the release server"
timeout 1800 cargo build --release --bin chatloop </dev/null

rm -rf "$OUT"
mkdir -p "$OUT"
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

RUST_LOG=${RUST_LOG:-warn} target/release/chatloop --addr 127.0.0.1:0 --echo \
  --max-message 20000000 --queue-cap 67108864 --rate-limit 0 \
  >"$OUT/server.stdout" 2>"$OUT/server.log" </dev/null &
SERVER_PID=$!

ADDR=
for _ in $(seq 100); do
  ADDR=$(sed -n 's#^listening on http://\([^[:space:]]*\).*#\1#p' "$OUT/server.stdout" | head -n1)
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/server.log" >&2; die "server exited at start-up"; }
  sleep 0.1
done
[ -n "$ADDR" ] || die "server printed no 'listening on' line within 10 s"
say "server (pid $SERVER_PID) listening on $ADDR"

# --- the cases --------------------------------------------------------------------------------
say "running kosoku against ws://$ADDR/echo (all cases but 12.* and 13.*; limit ${RUN_TIMEOUT}s)"
set +e
timeout --kill-after=10 "$RUN_TIMEOUT" "$VENV/bin/kosoku" "ws://$ADDR/echo" \
  -x '12.*' -x '13.*' -o "$OUT" "$@" </dev/null >"$OUT/kosoku.log" 2>&1
KOSOKU_RC=$?
set -e
if [ "$KOSOKU_RC" -eq 124 ] || [ "$KOSOKU_RC" -eq 137 ]; then
  die "kosoku ran past ${RUN_TIMEOUT}s"
fi

SERVER_OK=1
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  SERVER_OK=0
  say "the server died during the run; last log lines:"
  tail -n 20 "$OUT/server.log" >&2
elif ! "$VENV/bin/python" -c "import urllib.request as u; \
assert u.urlopen('http://$ADDR/healthz', timeout=5).read() == b'ok\n'" 2>/dev/null; then
  SERVER_OK=0
  say "the server is up but no longer answers /healthz"
fi
if grep -q 'panicked' "$OUT/server.log"; then
  SERVER_OK=0
  say "the server logged a panic:"
  grep -m5 -A3 'panicked' "$OUT/server.log" >&2
fi

# --- verdict ----------------------------------------------------------------------------------
EXPECT=$EXPECTED_CASES
[ "$narrowed" -eq 0 ] || EXPECT=0 # a narrowed run has no fixed count
set +e
"$VENV/bin/python" - "$OUT" "$EXPECT" <<'PY'
import collections, json, os, sys

out, expect = sys.argv[1], int(sys.argv[2])
try:
    with open(os.path.join(out, "index.json")) as f:
        index = json.load(f)
except (OSError, ValueError) as e:
    print(f"autobahn: no usable index.json ({e}); see {out}/kosoku.log", file=sys.stderr)
    sys.exit(1)

cases = {}
for agent_cases in index.values():
    cases.update(agent_cases)

GOOD = {"OK", "NON-STRICT", "INFORMATIONAL"}
GOOD_CLOSE = {"OK", "INFORMATIONAL"}

def key(case_id):
    return [int(p) for p in case_id.split(".")]

def outcome(c):
    if c["behaviorClose"] in GOOD_CLOSE:
        return c["behavior"]
    # A case whose exchange passed but whose closing handshake did not fails on the close.
    return f"{c['behavior']} / close {c['behaviorClose']}"

counts = collections.Counter(outcome(c) for c in cases.values())
print(f"autobahn: {len(cases)} cases")
for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
    print(f"  {name:<24} {n}")

def detail(case_id):
    try:
        with open(os.path.join(out, cases[case_id]["reportfile"])) as f:
            return json.load(f)
    except (OSError, ValueError, KeyError):
        return {}

bad, notable = [], []
for case_id in sorted(cases, key=key):
    c = cases[case_id]
    if c["behavior"] in GOOD and c["behaviorClose"] in GOOD_CLOSE:
        if c["behavior"] != "OK":
            notable.append(case_id)
    else:
        bad.append(case_id)

def show(case_id):
    c, d = cases[case_id], detail(case_id)
    desc = " ".join(d.get("description", "").split())
    print(f"  {case_id}: {outcome(c)} (server close code {c.get('remoteCloseCode')})")
    if desc:
        print(f"      what: {desc[:300]}")
    for field in ("result", "resultClose"):
        if d.get(field):
            print(f"      {field}: {' '.join(str(d[field]).split())[:300]}")

if notable:
    print("autobahn: accepted but not OK:")
    for case_id in notable:
        print(f"  {case_id}: {cases[case_id]['behavior']}")
if bad:
    print("autobahn: FAILING cases:")
    for case_id in bad:
        show(case_id)
ok = not bad and len(cases) > 0
if expect and len(cases) != expect:
    print(f"autobahn: expected {expect} cases, got {len(cases)}", file=sys.stderr)
    ok = False
sys.exit(0 if ok else 1)
PY
VERDICT_RC=$?
set -e

[ "$SERVER_OK" -eq 1 ] || die "the server died or stopped answering during the run"
[ "$VERDICT_RC" -eq 0 ] || die "some cases failed (reports in $OUT/)"
if [ "$KOSOKU_RC" -ne 0 ]; then
  tail -n 20 "$OUT/kosoku.log" >&2
  die "kosoku exited $KOSOKU_RC (see $OUT/kosoku.log)"
fi
say "all cases OK, NON-STRICT or INFORMATIONAL (reports in $OUT/)"
