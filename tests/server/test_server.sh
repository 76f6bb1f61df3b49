#!/usr/bin/env bash
# Server tests with a real HTTP client (tests/server/client.py, Python standard library):
# `ternpipe serve` on one rank and on three (mpirun): streamed and non-streamed completions and
# chat give the same text (greedy and seeded), 64 concurrent streams, stop strings across
# tokens, clients that disconnect get their KV freed, every error path answers with its status
# and an OpenAI-style JSON body, API keys, 429 when full, and SIGTERM: in-flight requests finish,
# new ones get 503, every rank exits (mpirun too). Every server is killed on exit; every wait is
# bounded.
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}"
model=${TERN_SERVER_MODEL:-$TERN_SOURCE_DIR/models/tinystories-bitnet.gguf}
[ -f "$model" ] || model=${TERN_FIXTURES:-$TERN_SOURCE_DIR/../shared/fixtures}/reference/tiny-2b4t/model.gguf
[ -f "$model" ] || { echo "no model: set TERN_SERVER_MODEL"; exit 1; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
client() { timeout 300 python3 "$here/client.py" "$@"; }
tmp=$(mktemp -d)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_hwloc_base_binding_policy=none
# Open MPI keeps allocations until exit; leak checking is for the unit tests
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0

groups=() # process groups of the servers started here (each its own session)
cleanup() {
  for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  sleep 0.5
  for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start NAME NP ARGS...: a server in its own session; sets url, lead (the group) and pid0
# (rank 0's process, from its "serving ... (pid N" log line)
start() {
  local name=$1 np=$2
  shift 2
  local port
  port=$(free_port)
  url=http://127.0.0.1:$port
  local cmd=("$TERNPIPE" serve -m "$model" --threads 1 --port "$port" "$@")
  if [ "$np" -gt 0 ]; then
    cmd=(mpirun --oversubscribe --bind-to none -np "$np" "${cmd[@]}")
  fi
  setsid "${cmd[@]}" >"$tmp/$name.log" 2>&1 &
  lead=$!
  groups+=("$lead")
  local t
  for t in $(seq 1 120); do
    client wait "$url" 1 >/dev/null && break
    if ! kill -0 "$lead" 2>/dev/null || [ "$t" -eq 120 ]; then
      echo "FAIL $name: not healthy (exited or 120 s)"
      cat "$tmp/$name.log"
      exit 1
    fi
  done
  pid0=$(sed -n 's/.*serving .* (pid \([0-9]*\),.*/\1/p' "$tmp/$name.log" | head -1)
  [ -n "$pid0" ] || { echo "FAIL $name: no pid in the log"; cat "$tmp/$name.log"; exit 1; }
  echo "started $name: $url (np $np, rank 0 pid $pid0)"
}

# stop_and_wait NAME PID SIGNAL: signal PID, then the launcher must exit with status 0
stop_and_wait() {
  local name=$1 pid=$2 sig=$3 want=${4:-0}
  kill "-$sig" "$pid" 2>/dev/null || true
  local rc=0
  for _ in $(seq 1 600); do
    kill -0 "$lead" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$lead" 2>/dev/null; then
    echo "FAIL $name: still running 60 s after SIG$sig"
    cat "$tmp/$name.log"
    exit 1
  fi
  wait "$lead" || rc=$?
  if [ "$want" = any ] || [ "$rc" -eq "$want" ]; then
    echo "ok $name: exited ($rc) after SIG$sig"
  else
    echo "FAIL $name: exit status $rc after SIG$sig, expected $want"
    cat "$tmp/$name.log"
    exit 1
  fi
  # no rank of it may be left behind
  if pgrep -g "$lead" >/dev/null 2>&1; then
    echo "FAIL $name: processes left in its group: $(pgrep -g "$lead" | tr '\n' ' ')"
    exit 1
  fi
}

run() { # NAME CHECK ARGS...: one client check, with the server's log on failure
  local name=$1
  shift
  client "$@" || { echo "FAIL $name: client $1"; tail -20 "$tmp/$name.log"; exit 1; }
}

echo "model: $model"

# one process: everything, then a graceful SIGTERM
start np1 0
run np1 basic "$url"
run np1 concurrent "$url" 64
run np1 cancel "$url"
run np1 logprobs "$url" "$TERNPIPE" "$model" 1
run np1 choices "$url"
run np1 json "$url" "$tmp/json1.json"
run np1 prefix "$url"
stop_and_wait np1 "$pid0" TERM
grep -q "stopped serving" "$tmp/np1.log" || { echo "FAIL np1: no 'stopped serving'"; exit 1; }

# three ranks under mpirun: the same answers through the pipeline, then SIGTERM to rank 0
start np3 3
run np3 basic "$url"
run np3 concurrent "$url" 64
run np3 cancel "$url"
run np3 logprobs "$url" "$TERNPIPE" "$model" 3
run np3 choices "$url"
run np3 json "$url" "$tmp/json3.json" "$tmp/json1.json"
run np3 prefix "$url"
stop_and_wait np3 "$pid0" TERM

# API key, a full queue, and draining on SIGTERM (one slot, one queue place)
key=test-key-$$
start small 0 --api-key "$key" --max-seqs 1 --max-queue 1 --grace 60
run small auth "$url" "$key"
run small flood "$url" "$key"
run small drain "$url" "$pid0" "$key"
stop_and_wait small "$pid0" TERM

# a base model (SentencePiece, no chat template): chat is refused, completions are served
base=${TERN_FIXTURES:-$TERN_SOURCE_DIR/../shared/fixtures}/reference/tiny-large-hf
if [ -d "$base" ]; then
  saved=$model
  model=$base
  start base 0
  run base basemodel "$url"
  stop_and_wait base "$pid0" TERM
  model=$saved
else
  echo "SKIP base model check: fixture $base is missing"
fi

# SIGTERM to mpirun itself ends every rank quickly (Open MPI aborts the job: any status)
start np2 2
stop_and_wait np2 "$lead" TERM any

echo "server: all passed"
