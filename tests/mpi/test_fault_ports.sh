#!/usr/bin/env bash
# Open ports (issue 10, item 7): a single in-process `ternpipe serve --no-supervise` listens on
# its HTTP port on 127.0.0.1 and nothing else (no MPI at all: no orted child, no TCP transport);
# supervised (the default) it adds one loopback port for its engine job, whose one process
# listens on nothing; the
# ranks of `mpirun -np 3 ternpipe serve` on one host open no MPI listener either (shared
# memory between them, the TCP transport dropped), whatever the --mca btl list with vader in
# it. Listening sockets are read from /proc (tests/server/faults.py listeners). Bounded waits;
# every process started here is killed on exit.
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}"
model=${TERN_PIPELINE_MODEL:-$TERN_SOURCE_DIR/models/tinystories-bitnet.gguf}
[ -f "$model" ] || { echo "SKIP: no model $model"; exit 77; }
faults=$TERN_SOURCE_DIR/tests/server/faults.py
tmp=$(mktemp -d)
. "$(dirname "${BASH_SOURCE[0]}")/mpi-env.sh"
pids=()
cleanup() { # mpirun kills its ranks on SIGTERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 2
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# stop PID: SIGTERM (rank 0 drains), then wait up to 30 s for it to go
stop() {
  kill -TERM "$1" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  echo "FAIL: pid $1 still running 30 s after SIGTERM"; exit 1
}

# 1. one process, no launcher, in-process (--no-supervise)
port=$(free_port)
"$TERNPIPE" serve -m "$model" --threads 1 --port "$port" --no-supervise >"$tmp/single.log" 2>&1 &
pid=$!
pids+=("$pid")
python3 "$faults" wait "http://127.0.0.1:$port" 60 || { cat "$tmp/single.log"; exit 1; }
got=$(python3 "$faults" listeners "$pid" | awk '{print $2}')
if [ "$got" != "127.0.0.1:$port" ]; then
  echo "FAIL single: listening on:"; echo "$got"; echo "expected only 127.0.0.1:$port"; exit 1
fi
kids=$(pgrep -P "$pid" || true)
[ -z "$kids" ] || { echo "FAIL single: child processes $(ps -o pid=,comm= -p $kids | tr '\n' ' ')"; exit 1; }
stop "$pid"
echo "ok single: only 127.0.0.1:$port, no child process"

# 1b. the same supervised (the default): the supervisor listens on its HTTP port and on one
# loopback port for its own engine job; the job (one rank, no launcher) listens on nothing
port=$(free_port)
"$TERNPIPE" serve -m "$model" --threads 1 --port "$port" >"$tmp/sup.log" 2>&1 &
pid=$!
pids+=("$pid")
python3 "$faults" wait "http://127.0.0.1:$port" 60 || { cat "$tmp/sup.log"; exit 1; }
eport=$(sed -n 's/.*rank 0 reports to 127.0.0.1:\([0-9]*\)).*/\1/p' "$tmp/sup.log")
got=$(python3 "$faults" listeners "$pid" | awk '{print $2}' | sort | tr '\n' ' ')
want=$(printf '%s\n' "127.0.0.1:$port" "127.0.0.1:$eport" | sort | tr '\n' ' ')
[ -n "$eport" ] && [ "$got" = "$want" ] || { echo "FAIL supervised: listening on '$got', expected '$want'"; exit 1; }
kids=$(pgrep -P "$pid" || true)
[ "$(echo "$kids" | wc -w)" -eq 1 ] && [ "$(cat "/proc/$kids/comm")" = ternpipe ] ||
  { echo "FAIL supervised: children '$kids', expected the one engine process"; exit 1; }
got=$(python3 "$faults" listeners "$kids" | awk '{print $2}')
[ -z "$got" ] || { echo "FAIL supervised: the engine process listens on $got"; exit 1; }
stop "$pid"
echo "ok supervised: 127.0.0.1:$port and the engine's loopback port $eport; the engine listens on nothing"

# 2. three ranks on this host, with the transport lists users write
for btl in "self,vader,tcp" "" "^openib"; do
  port=$(free_port)
  if [ -n "$btl" ]; then export OMPI_MCA_btl=$btl; else unset OMPI_MCA_btl; fi
  mpirun --oversubscribe --bind-to none -np 3 \
    "$TERNPIPE" serve -m "$model" --threads 1 --port "$port" >"$tmp/np3.log" 2>&1 &
  mpid=$!
  pids+=("$mpid")
  python3 "$faults" wait "http://127.0.0.1:$port" 120 || { cat "$tmp/np3.log"; exit 1; }
  ranks=$(pgrep -P "$mpid" -x ternpipe || true)
  [ "$(echo "$ranks" | wc -w)" -eq 3 ] || { echo "FAIL np3: ranks '$ranks'"; exit 1; }
  # a request crosses every rank, so the transports are up by now
  python3 - "$port" <<'PY'
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
c.request("POST", "/v1/completions", json.dumps({"prompt": "Once", "max_tokens": 4}))
r = c.getresponse()
assert r.status == 200, (r.status, r.read())
PY
  got=$(python3 "$faults" listeners $ranks | awk '{print $2}')
  if [ "$got" != "127.0.0.1:$port" ]; then
    echo "FAIL np3 btl='$btl': the ranks listen on:"; python3 "$faults" listeners $ranks
    echo "expected only rank 0's 127.0.0.1:$port"; exit 1
  fi
  r0=$(echo "$ranks" | head -1)
  for r in $ranks; do python3 "$faults" listeners "$r" | grep -q ":$port\$" && r0=$r; done
  stop "$r0"
  wait "$mpid" || { echo "FAIL np3: mpirun exit $?"; cat "$tmp/np3.log"; exit 1; }
  echo "ok np3 btl='${btl:-unset}': ranks listen only on 127.0.0.1:$port"
done
