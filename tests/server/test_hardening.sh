#!/usr/bin/env bash
# Hardening of the HTTP front end (issue 10) with raw sockets (tests/server/hardening.py): empty
# or blank API keys refused at start-up and auth logged, unsupported fields and unknown models
# refused, NUL in a prompt kept, non-streamed requests of departed clients cancelled, protocol
# errors as JSON, a header deadline, per-address and total connection limits. One process (no
# mpirun); every server is killed on exit; every wait is bounded.
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}"
model=${TERN_SERVER_MODEL:-$TERN_SOURCE_DIR/models/tinystories-bitnet.gguf}
[ -f "$model" ] || { echo "SKIP: no model $model (set TERN_SERVER_MODEL)"; exit 77; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tmp=$(mktemp -d)
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# refused NAME ARGS...: `serve` must exit 2 within 20 s with one line naming the problem
refused() {
  local name=$1 want=$2
  shift 2
  local rc=0
  timeout 20 "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" || rc=$?
  if [ "$rc" -ne 2 ] || [ "$(wc -l <"$tmp/$name.err")" -ne 1 ] || ! grep -q -- "$want" "$tmp/$name.err"; then
    echo "FAIL $name: exit $rc (expected 2, 124 means it served), stderr:"
    cat "$tmp/$name.err"
    exit 1
  fi
  echo "ok $name: $(cat "$tmp/$name.err")"
}

serve=("$TERNPIPE" serve -m "$model" --threads 1 --port "$(free_port)")
refused key-empty "--api-key: got an empty key" "${serve[@]}" --api-key ""
refused key-blank "--api-key: got a blank key" "${serve[@]}" --api-key "   "
refused key-padded "--api-key: got white space" "${serve[@]}" --api-key " k3y"
refused key-env-empty "TERNPIPE_API_KEY: got an empty key" env TERNPIPE_API_KEY= "${serve[@]}"

# start NAME ARGS...: sets url and pid once /health answers 200
start() {
  local name=$1
  shift
  local port
  port=$(free_port)
  url=http://127.0.0.1:$port
  "$TERNPIPE" serve -m "$model" --threads 1 --port "$port" "$@" >"$tmp/$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 300); do
    if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)' "$url" 2>/dev/null; then
      echo "started $name: $url"
      return
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "FAIL $name: not healthy"
  cat "$tmp/$name.log"
  exit 1
}

run() { # NAME CHECK ARGS...
  local name=$1
  shift
  timeout 120 python3 "$here/hardening.py" "$@" || { echo "FAIL $name: $1"; tail -20 "$tmp/$name.log"; exit 1; }
}

key=hardening-key-$$
start keyed --api-key "$key"
grep -q "API key authentication on" "$tmp/keyed.log" || { echo "FAIL: no 'authentication on' in the log"; cat "$tmp/keyed.log"; exit 1; }
if grep -q -- "$key" "$tmp/keyed.log"; then echo "FAIL: the API key is in the log"; exit 1; fi
kill -TERM "$pid"
echo "ok auth on logged, key not logged"

start open
grep -q "API key authentication off" "$tmp/open.log" || { echo "FAIL: no 'authentication off' in the log"; cat "$tmp/open.log"; exit 1; }
run open fields "$url"
run open nul "$url"
run open gone "$url"

# small limits, so the test can reach them: 8 per address, 40 in all, 3 s per request
start gated --max-conns 40 --max-conns-per-ip 8 --request-timeout 3
run gated protocol "$url"
run gated slow "$url" 3
run gated fields "$url"

# the same connection limits with a long request deadline: the held connections must outlive
# the whole check (with 3 s they could be closed by the deadline midway, freeing places)
start limited --max-conns 40 --max-conns-per-ip 8 --request-timeout 60
run limited limits "$url" 8 40

echo "server hardening: all passed"
