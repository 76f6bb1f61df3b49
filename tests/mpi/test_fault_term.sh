#!/usr/bin/env bash
# SIGTERM to the job (issue 10, item 2), what systemd, Slurm and Kubernetes send, with streamed
# and non-streamed requests in flight on 3 ranks:
# 1. to cluster/launch (the supervisor-less way to run a job): it becomes SIGUSR2 to mpirun,
#    forwarded to every rank: rank 0 drains, every request completes, exit 0;
# 2. the same with --grace 1: requests still running after a second end with an error event
#    and [DONE], exit 0, quickly;
# 3. straight to mpirun with odls_base_sigkill_timeout 3 and --grace 1: the workers outlive
#    Open MPI's SIGTERM, rank 0 drains in time, every stream ends with [DONE] before the
#    SIGKILL, and every rank is gone within the bound (mpirun's status is 1 there).
# Every wait is bounded; every process started here is killed on exit.
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}"
model=${TERN_PIPELINE_MODEL:-$TERN_SOURCE_DIR/models/tinystories-bitnet.gguf}
[ -f "$model" ] || { echo "SKIP: no model $model"; exit 77; }
faults=$TERN_SOURCE_DIR/tests/server/faults.py
tmp=$(mktemp -d)
. "$(dirname "${BASH_SOURCE[0]}")/mpi-env.sh"
export TERN_FAULT_WAIT=90 TERN_FAULT_TOKENS=500
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
now() { date +%s.%N; }
echo "localhost slots=3" >"$tmp/hosts"

# run NAME BOUND ALLOW_ERRORS WANT_RC CMD...: starts CMD (a job serving on $port), $n streams
# and $n non-streamed requests, SIGTERM to CMD's process once every stream has its first token;
# checks every request ended (with [DONE] for streams), CMD's exit status and that every rank
# is gone within BOUND s
run() {
  local name=$1 bound=$2 allow=$3 want=$4
  shift 4
  "$@" >"$tmp/$name.log" 2>&1 &
  local job=$!
  pids+=("$job")
  python3 "$faults" wait "http://127.0.0.1:$port" 120 || { cat "$tmp/$name.log"; exit 1; }
  local ranks
  local p ranks=""
  for p in $(pgrep -f -- "--port $port" || true); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = ternpipe ] && ranks+=" $p"
  done
  [ "$(echo $ranks | wc -w)" -eq 3 ] || { echo "FAIL $name: ranks '$ranks'"; exit 1; }
  local out=$tmp/$name.clients
  python3 "$faults" streams "http://127.0.0.1:$port" "$n" "$out" &
  local cl=$!
  pids+=("$cl")
  local i
  for ((i = 0; i < 600; i++)); do [ -f "$out.ready" ] && break; sleep 0.05; done
  [ -f "$out.ready" ] || { echo "FAIL $name: the streams never started"; exit 1; }
  python3 -c 'import time; print(time.time())' >"$out.mark"
  local t0
  t0=$(now)
  kill -TERM "$job"
  for ((i = 0; i < bound * 10; i++)); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$job" 2>/dev/null; then
    echo "FAIL $name: still running $bound s after SIGTERM"; cat "$tmp/$name.log"; exit 1
  fi
  local rc=0
  wait "$job" || rc=$?
  local dt
  dt=$(echo "$(now) - $t0" | bc)
  for ((i = 0; i < 100; i++)); do kill -0 "$cl" 2>/dev/null || break; sleep 0.1; done
  wait "$cl" || true
  for p in $ranks; do
    for ((i = 0; i < 50; i++)); do
      [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] || break
      sleep 0.1
    done
    if [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]; then
      echo "FAIL $name: rank pid $p left behind"; exit 1
    fi
  done
  python3 - "$out" "$allow" "$name" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
allow, name = sys.argv[2] == "1", sys.argv[3]
ok = ("done", "error") if allow else ("done",)
bad = [r for r in recs if r.get("end") not in ok
       or (r.get("end") == "error" and "shutting down" not in (r.get("error") or ""))]
if bad:
    print(f"FAIL {name}: requests that did not end as expected ({'/'.join(ok)}):", json.dumps(bad))
    sys.exit(1)
n = {k: sum(1 for r in recs if r["end"] == k) for k in ok}
last = max(r.get("after_s", 0) for r in recs)
print(f"ok {name}: {n} of {len(recs)} requests (streams ended with [DONE]), the last {last:.2f} s after SIGTERM")
PY
  if [ "$want" != any ] && [ "$rc" -ne "$want" ]; then
    echo "FAIL $name: exit $rc, expected $want"; cat "$tmp/$name.log"; exit 1
  fi
  echo "ok $name: exit $rc $dt s after SIGTERM"
}

launch=(env TERNPIPE="$TERNPIPE" TERN_BIND="--bind-to none --oversubscribe"
  "$TERN_SOURCE_DIR/cluster/launch" "$tmp/hosts" 3)
n=8
port=$(free_port)
# short requests and a long grace: they all finish (sanitizer builds are ten times slower)
TERN_FAULT_TOKENS=150 run launch-drain 150 0 0 "${launch[@]}" serve -m "$model" --threads 1 \
  --port "$port" --grace 120
port=$(free_port)
run launch-grace 30 1 0 "${launch[@]}" serve -m "$model" --threads 1 --port "$port" --grace 1
n=16 # enough to be running still when Open MPI's SIGTERM comes (3 s)
port=$(free_port)
run mpirun-term 20 1 any mpirun --oversubscribe --bind-to none -np 3 --mca odls_base_sigkill_timeout 3 \
  "$TERNPIPE" serve -m "$model" --threads 1 --port "$port" --grace 1
