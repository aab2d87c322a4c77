#!/usr/bin/env bash
# The deploy recipes through the real thing: chatloop with the flags of deploy/chatloop.service,
# behind nginx with deploy/nginx.conf and behind Caddy with deploy/Caddyfile, each over real TLS
# on a loopback test port, checked as a browser would use them.
#
#   scripts/deploy-test.sh                  # nginx, then Caddy
#   scripts/deploy-test.sh --proxy nginx    # one of them (nginx or caddy)
#   scripts/deploy-test.sh --help           # this help
#
# Through each proxy: / and /app.js (200, their content types), /healthz (200 ok), a WebSocket
# chat round trip with the browser's Origin (the proxy's https origin: welcome, then a lobby
# message back to its sender and to a second user), a foreign Origin refused (403), and
# /metrics refused from outside (404; chatloop itself serves it on loopback), and a page and a
# WebSocket upgrade with ?token=SECRET&resume=SECRET: the proxy's access log must have both
# requests' lines (their paths) and never SECRET (tokens travel in the query). Then
# `systemd-analyze verify` on the unit where systemd-analyze exists.
#
# The recipes run as written except for these substitutions, each of which must match exactly
# as often as said, so a changed recipe fails here instead of being tested half:
#   unit:    /usr/local/bin/chatloop -> target/release/chatloop; --addr 127.0.0.1:8080 ->
#            127.0.0.1:0 (the port chatloop prints goes to the proxies); Environment= applied.
#   nginx:   "listen 443 ssl;" -> "listen 127.0.0.1:PORT ssl;"; the certificate directory
#            /etc/letsencrypt/live/chat.example.com/ -> a self-signed one (openssl req -x509);
#            127.0.0.1:8080 -> chatloop's port; /var/log/nginx/chatloop.access.log -> the temp
#            dir. The file is included in a minimal nginx.conf
#            (pid, logs and temp paths in a temp dir), run in the foreground.
#   Caddy:   "chat.example.com {" -> "chat.example.com:PORT {" plus "tls internal" and
#            "bind 127.0.0.1"; 127.0.0.1:8080 -> chatloop's port;
#            /var/log/caddy/chatloop.access.log -> the temp dir; a global options block first
#            (admin off, storage in the temp dir, skip_install_trust, no HTTP redirects).
# Clients connect to 127.0.0.1:PORT with SNI and Host chat.example.com:PORT and verify the
# certificate (the self-signed one, or Caddy's internal root). Run as root, the proxies run as
# nobody. Everything is on loopback; every wait is bounded; every process is killed at exit.
#
# Needs nginx and caddy (Debian's packages; each is skipped with a message if absent, except
# under CI=true, where .ci/run installs them and absence fails), openssl, python3 with venv and
# PyPI on the first run (the websockets package, in target/deploy-test-venv).
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
proxies=(nginx caddy)
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --proxy)
      case "${2:-}" in
        nginx|caddy) proxies=("$2"); shift 2 ;;
        *) echo "deploy-test.sh: --proxy takes nginx or caddy (see --help)" >&2; exit 2 ;;
      esac ;;
    *) echo "deploy-test.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
# nginx is in /usr/sbin, off the PATH of users other than root on Debian.
export PATH="$PATH:/usr/sbin"

UNIT=deploy/chatloop.service NGINX_SITE=deploy/nginx.conf CADDYFILE=deploy/Caddyfile
NAME=chat.example.com
VENV=target/deploy-test-venv
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1

say() { printf 'deploy-test: %s\n' "$*"; }
die() { printf 'deploy-test: FAIL: %s\n' "$*" >&2; exit 1; }

# replace FILE FROM TO COUNT: replaces the literal FROM with TO in FILE, which must hold FROM
# exactly COUNT times.
replace() {
  local n
  n=$(grep -cF -- "$2" "$1" || true)
  [ "$n" = "$4" ] || die "$1: expected '$2' $4 time(s), found it $n time(s): the recipe changed"
  FROM="$2" TO="$3" python3 -c 'import os, sys
p = sys.argv[1]; s = open(p).read()
open(p, "w").write(s.replace(os.environ["FROM"], os.environ["TO"]))' "$1"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT SECS PID: until 127.0.0.1:PORT accepts, PID is alive, SECS have not passed.
wait_port() {
  local i
  for i in $(seq $(($2 * 10))); do
    if { exec 8<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null; then exec 8<&-; return 0; fi
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

TMP=$(mktemp -d /tmp/chatloop-deploy-test.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Run as root, the proxies drop to nobody (they need no privilege on a test port).
as_proxy=()
if [ "$(id -u)" -eq 0 ]; then
  command -v setpriv >/dev/null || die "running as root needs setpriv (util-linux) to drop to nobody"
  as_proxy=(setpriv "--reuid=$(id -u nobody)" "--regid=$(id -g nobody)" --clear-groups --)
  chmod 755 "$TMP"
fi
own() { if [ ${#as_proxy[@]} -gt 0 ]; then chown -R nobody "$@"; fi; }

# --- which proxies ---------------------------------------------------------------------------
run=()
for p in "${proxies[@]}"; do
  if command -v "$p" >/dev/null; then
    run+=("$p")
  elif [ "${CI:-}" = true ]; then
    die "$p is not installed (CI=true: .ci/run installs it with apt)"
  else
    say "SKIP $p: not installed (Debian: apt-get install $p)"
  fi
done

# --- the client: websockets in its own venv ----------------------------------------------------
if [ ${#run[@]} -gt 0 ]; then
  if ! { [ -x "$VENV/bin/python3" ] && "$VENV/bin/python3" -c 'import websockets.sync.client' 2>/dev/null; }; then
    say "installing websockets into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    timeout 600 "$VENV/bin/python3" -m pip install --quiet websockets </dev/null
  fi
  say "websockets $("$VENV/bin/python3" -c 'import websockets; print(websockets.__version__)')"
fi

# --- chatloop with the unit's flags ----------------------------------------------------------
say "building the release server"
timeout 900 cargo build --release --quiet --bin chatloop </dev/null
exec_line=$(sed -n 's/^ExecStart=//p' "$UNIT")
[ "$(printf '%s\n' "$exec_line" | wc -l)" -eq 1 ] && [ -n "$exec_line" ] || die "$UNIT: expected one ExecStart="
case "$exec_line" in *[\"\'\\\$%]*) die "$UNIT: ExecStart uses quotes, \$ or % specifiers; this script splits it on spaces" ;; esac
read -ra argv <<<"$exec_line"
[ "${argv[0]}" = /usr/local/bin/chatloop ] || die "$UNIT: ExecStart runs '${argv[0]}', not /usr/local/bin/chatloop"
argv[0]=target/release/chatloop
addrs=0
for i in "${!argv[@]}"; do
  if [ "${argv[$i]}" = --addr ] && [ "${argv[$((i + 1))]:-}" = 127.0.0.1:8080 ]; then
    argv[i + 1]=127.0.0.1:0 addrs=$((addrs + 1))
  fi
done
[ "$addrs" -eq 1 ] || die "$UNIT: expected one '--addr 127.0.0.1:8080' in ExecStart"
unit_env=()
while IFS= read -r e; do unit_env+=("$e"); done < <(sed -n 's/^Environment=//p' "$UNIT")
say "chatloop: env ${unit_env[*]} ${argv[*]}"
env "${unit_env[@]}" "${argv[@]}" >"$TMP/chatloop.out" 2>"$TMP/chatloop.err" </dev/null &
chatloop=$!
pids+=("$chatloop")
up=
for _ in $(seq 100); do
  up=$(sed -n 's#^listening on http://127\.0\.0\.1:##p' "$TMP/chatloop.out")
  [ -n "$up" ] && break
  kill -0 "$chatloop" 2>/dev/null || break
  sleep 0.1
done
[ -n "$up" ] || { cat "$TMP/chatloop.err" >&2; die "chatloop did not print its address within 10 s"; }
say "chatloop on 127.0.0.1:$up"
# --log-timestamps off: lines start with the level, the journal adds the time.
first=$(head -n1 "$TMP/chatloop.err")
[[ $first == "[INFO "* ]] || die "chatloop's first log line is not '[INFO ...' without a time: $first"

# --- the checks, as a browser would do them ----------------------------------------------------
cat >"$TMP/check.py" <<'EOF'
"""check.py PROXY PORT CAFILE NAME UPSTREAM: the checks through one proxy."""
import http.client, json, os, socket, ssl, sys
import websockets.exceptions
from websockets.sync.client import connect

proxy, port, cafile, name, upstream = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
origin = f"https://{name}:{port}"
ctx = ssl.create_default_context(cafile=cafile)  # verifies the certificate and the name
failed = 0

def check(ok, what):
    global failed
    print(f"  {'ok  ' if ok else 'FAIL'} {proxy}: {what}", flush=True)
    failed += not ok

def tcp():
    return socket.create_connection(("127.0.0.1", port), timeout=10)

def tls_socket():
    return ctx.wrap_socket(tcp(), server_hostname=name)

def get(path):
    # Host is "chat.example.com:PORT", as a browser sends it for this origin.
    conn = http.client.HTTPSConnection(name, port, context=ctx, timeout=10)
    conn.sock = tls_socket()
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, r.getheader("Content-Type", ""), body

for path, ctype, needle in [("/", "text/html", b"<html"), ("/app.js", "text/javascript", b"WebSocket"),
                            ("/healthz", "text/plain", b"ok")]:
    status, got, body = get(path)
    check(status == 200 and got.startswith(ctype) and needle in body,
          f"GET {path}: {status} {got!r} ({len(body)} bytes)")

for path in ["/metrics", "/metrics?x=1"]:
    status, _, body = get(path)
    check(status == 404 and b"chatloop_" not in body, f"GET {path} from outside: {status}")
direct = http.client.HTTPConnection("127.0.0.1", upstream, timeout=10)
direct.request("GET", "/metrics")
r = direct.getresponse()
check(r.status == 200 and b"chatloop_websockets" in r.read(), f"GET /metrics on chatloop's loopback port itself: {r.status}")

def lines(ws, want, secs=10):
    """Lines (JSON) until `want` matches one; a frame may carry several, split on newline."""
    seen = []
    while True:
        for line in ws.recv(timeout=secs).split("\n"):
            m = json.loads(line)
            seen.append(m)
            if want(m):
                return m, seen

def url(user):
    return f"wss://{name}:{port}/ws?id={user}"

try:
    a_id, b_id = f"{proxy}-a", f"{proxy}-b"
    with connect(url(a_id), sock=tcp(), ssl=ctx, server_hostname=name, origin=origin, open_timeout=10) as a, \
         connect(url(b_id), sock=tcp(), ssl=ctx, server_hostname=name, origin=origin, open_timeout=10) as b:
        w, _ = lines(a, lambda m: m.get("type") == "welcome")
        check(w.get("id") == a_id, f"wss with Origin {origin}: welcome as {w.get('id')}")
        lines(b, lambda m: m.get("type") == "welcome")
        text = f"hello through {proxy}"
        a.send(json.dumps({"text": text}))
        for who, ws in [(a_id, a), (b_id, b)]:
            m, _ = lines(ws, lambda m: m.get("type") == "message")
            check(m.get("room") == "lobby" and m.get("from") == a_id and m.get("text") == text,
                  f"lobby message back to {who}: {json.dumps(m)}")
except Exception as e:  # noqa: BLE001 - report, do not trace
    check(False, f"WebSocket round trip: {type(e).__name__}: {e}")

try:
    with connect(url(f"{proxy}-x"), sock=tcp(), ssl=ctx, server_hostname=name,
                 origin="https://evil.example", open_timeout=10):
        check(False, "a foreign Origin was let in")
except websockets.exceptions.InvalidStatus as e:
    check(e.response.status_code == 403, f"wss with Origin https://evil.example: {e.response.status_code}")

# A token in the query, as a browser sends it: the access log must keep it out (checked by the
# script on the log once the proxy stopped; here only that the requests went through).
secret = os.environ["SECRET"]
status, _, _ = get(f"/app.js?token={secret}&v=1")
check(status == 200, f"GET /app.js?token=SECRET: {status}")
try:
    with connect(f"wss://{name}:{port}/ws?id={proxy}-t&token={secret}&resume={secret}", sock=tcp(),
                 ssl=ctx, server_hostname=name, origin=origin, open_timeout=10) as t:
        m, _ = lines(t, lambda m: m.get("type") in ("welcome", "error"))
        check(m.get("type") in ("welcome", "error"), f"wss /ws?token=SECRET: {m.get('type')}")
except Exception as e:  # noqa: BLE001 - report, do not trace
    check(False, f"wss /ws?token=SECRET: {type(e).__name__}: {e}")

sys.exit(1 if failed else 0)
EOF

failures=0
# A token-shaped secret, new each run, that no access log may hold.
SECRET="tok$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export SECRET

# no_query PROXY LOG PAGE_PATTERN WS_PATTERN: the access log has both test requests, never SECRET.
no_query() {
  local ok=1
  if [ ! -s "$2" ]; then
    say "FAIL $1: no access log at $2"
    failures=$((failures + 1))
    return
  fi
  if grep -qF -- "$SECRET" "$2"; then
    say "FAIL $1: the access log holds the token from the query:"
    grep -F -- "$SECRET" "$2" | head -n 3 >&2
    ok=0
  fi
  grep -qE -- "$3" "$2" || { say "FAIL $1: no access log line for the page request ($3)"; ok=0; }
  grep -qE -- "$4" "$2" || { say "FAIL $1: no access log line for the WebSocket request ($4)"; ok=0; }
  if [ "$ok" = 1 ]; then
    say "ok   $1: access log has the requests' lines, not the query's token"
  else
    tail -n 5 "$2" >&2
    failures=$((failures + 1))
  fi
}

through() { # through PROXY PORT CAFILE PID LOG
  if ! wait_port "$2" 20 "$4"; then
    cat "$5" >&2
    say "FAIL $1 did not listen on 127.0.0.1:$2 within 20 s"
    failures=$((failures + 1))
    return
  fi
  if ! timeout 120 "$VENV/bin/python3" "$TMP/check.py" "$1" "$2" "$3" "$NAME" "$up" </dev/null; then
    say "FAIL through $1; its log:"
    tail -n 30 "$5" >&2
    failures=$((failures + 1))
  fi
}

# stop PID: the proxy is stopped before the next one starts.
stop() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# --- nginx -----------------------------------------------------------------------------------
if [[ " ${run[*]} " == *" nginx "* ]]; then
  port=$(free_port)
  n="$TMP/nginx"
  mkdir -p "$n/tls"
  timeout 60 openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$NAME" \
    -addext "subjectAltName=DNS:$NAME" -keyout "$n/tls/privkey.pem" -out "$n/tls/fullchain.pem" 2>/dev/null
  cp "$NGINX_SITE" "$n/chatloop.conf"
  replace "$n/chatloop.conf" "listen 443 ssl;" "listen 127.0.0.1:$port ssl;" 1
  replace "$n/chatloop.conf" "/etc/letsencrypt/live/$NAME/" "$n/tls/" 2
  replace "$n/chatloop.conf" "127.0.0.1:8080" "127.0.0.1:$up" 3
  replace "$n/chatloop.conf" "/var/log/nginx/chatloop.access.log" "$n/access.log" 1
  cat >"$n/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $n/nginx.pid;
error_log $n/error.log warn;
events { worker_connections 64; }
http {
    access_log $n/access.log;
    client_body_temp_path $n/client_body;
    proxy_temp_path $n/proxy;
    fastcgi_temp_path $n/fastcgi;
    uwsgi_temp_path $n/uwsgi;
    scgi_temp_path $n/scgi;
    include $n/chatloop.conf;
}
EOF
  own "$n"
  nginx_cmd=("${as_proxy[@]}" nginx -p "$n/" -e "$n/error.log" -c "$n/nginx.conf")
  timeout 30 "${nginx_cmd[@]}" -t -q </dev/null || die "nginx -t refused the recipe"
  say "nginx $(nginx -v 2>&1 | sed 's#.*/##') on https://$NAME:$port (127.0.0.1)"
  "${nginx_cmd[@]}" >"$n/stdout.log" 2>&1 </dev/null &
  proxy=$!
  pids+=("$proxy")
  through nginx "$port" "$n/tls/fullchain.pem" "$proxy" "$n/error.log"
  stop "$proxy"
  no_query nginx "$n/access.log" '"GET /app\.js HTTP/1\.1" 200' '"GET /ws HTTP/1\.1" 101'
fi

# --- Caddy -----------------------------------------------------------------------------------
if [[ " ${run[*]} " == *" caddy "* ]]; then
  port=$(free_port)
  c="$TMP/caddy"
  mkdir -p "$c/data" "$c/home" "$c/config"
  cp "$CADDYFILE" "$c/site"
  replace "$c/site" "$NAME {" "$NAME:$port {
	tls internal
	bind 127.0.0.1" 1
  replace "$c/site" "127.0.0.1:8080" "127.0.0.1:$up" 2
  replace "$c/site" "/var/log/caddy/chatloop.access.log" "$c/access.log" 1
  {
    printf '{\n\tadmin off\n\tstorage file_system %s\n' "$c/data"
    printf '\tskip_install_trust\n\tauto_https disable_redirects\n}\n\n'
    cat "$c/site"
  } >"$c/Caddyfile"
  own "$c"
  caddy_cmd=(env "HOME=$c/home" "XDG_DATA_HOME=$c/data" "XDG_CONFIG_HOME=$c/config"
    "${as_proxy[@]}" caddy run --adapter caddyfile --config "$c/Caddyfile")
  say "caddy $(caddy version | cut -d' ' -f1) on https://$NAME:$port (127.0.0.1)"
  "${caddy_cmd[@]}" >"$c/caddy.log" 2>&1 </dev/null &
  proxy=$!
  pids+=("$proxy")
  root="$c/data/pki/authorities/local/root.crt"
  for _ in $(seq 200); do
    [ -s "$root" ] && break
    kill -0 "$proxy" 2>/dev/null || break
    sleep 0.1
  done
  if [ -s "$root" ]; then
    through caddy "$port" "$root" "$proxy" "$c/caddy.log"
    stop "$proxy"
    no_query caddy "$c/access.log" '"method":"GET".*"uri":"/app\.js"' '"method":"GET".*"uri":"/ws"'
  else
    tail -n 30 "$c/caddy.log" >&2
    say "FAIL caddy made no internal root certificate within 20 s"
    failures=$((failures + 1))
  fi
  stop "$proxy"
fi

# chatloop answered through both without a refusal: a 421 or 403 (other than the foreign
# Origin the checks send on purpose) would be logged at warn.
if grep -v 'evil\.example' "$TMP/chatloop.err" | grep -E 'refused (Host|Origin)'; then
  say "FAIL chatloop refused a request through a proxy (above)"
  failures=$((failures + 1))
fi

# --- the unit --------------------------------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
  # The binary must exist for verify: the unit is checked with ExecStart's path put in.
  sed "s#^ExecStart=/usr/local/bin/chatloop #ExecStart=$PWD/target/release/chatloop #" "$UNIT" >"$TMP/chatloop.service"
  if out=$(timeout 60 systemd-analyze verify "$TMP/chatloop.service" 2>&1) && [ -z "$out" ]; then
    say "ok   systemd-analyze verify $UNIT: clean"
  else
    printf '%s\n' "$out" >&2
    say "FAIL systemd-analyze verify $UNIT (above)"
    failures=$((failures + 1))
  fi
else
  say "SKIP systemd-analyze verify: systemd-analyze is not installed"
fi

[ "$failures" -eq 0 ] || die "$failures failure(s)"
say "passed: ${run[*]:-no proxy}"
