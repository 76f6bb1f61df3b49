#!/usr/bin/env bash
# A hung rank (issue 10, item 1): SIGSTOP one worker of `mpirun -np 3 ternpipe serve` while
# streamed and non-streamed requests run. Within the step deadline (--step-timeout 3) every
# client holds an error (streams: an error event, then [DONE]; the others: a JSON error),
# /health answers 503 "failed" with the reason, and every rank is gone (non-zero exit) within
# a bound. Then: SIGTERM to rank 0 while the pipeline hangs with requests in flight, and while
# it hangs idle, both end the job within a bound too. Every wait is bounded; every process
# started here is killed on exit.
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}"
model=${TERN_PIPELINE_MODEL:-$TERN_SOURCE_DIR/models/tinystories-bitnet.gguf}
[ -f "$model" ] || { echo "SKIP: no model $model"; exit 77; }
faults=$TERN_SOURCE_DIR/tests/server/faults.py
tmp=$(mktemp -d)
. "$(dirname "${BASH_SOURCE[0]}")/mpi-env.sh"
export OMPI_MCA_btl=self,vader,tcp
export TERN_FAULT_WAIT=40
STEP=3    # --step-timeout
BOUND=15  # seconds from the fault to every rank gone
pids=()
stopped=()
cleanup() {
  for p in "${stopped[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
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

# start NAME: mpirun -np 3 serve; sets mp (mpirun), ranks (r0 r1 r2 in rank order), url
start() {
  local port
  port=$(free_port)
  url=http://127.0.0.1:$port
  mpirun --oversubscribe --bind-to none -np 3 "$TERNPIPE" serve -m "$model" --threads 1 \
    --port "$port" --step-timeout $STEP >"$tmp/$1.log" 2>&1 &
  mp=$!
  pids+=("$mp")
  python3 "$faults" wait "$url" 120 || { cat "$tmp/$1.log"; exit 1; }
  ranks=()
  local p
  for p in $(pgrep -P "$mp" -x ternpipe); do # rank order from the launcher's variable
    local r
    r=$(tr '\0' '\n' <"/proc/$p/environ" | sed -n 's/^OMPI_COMM_WORLD_RANK=//p')
    ranks[$r]=$p
  done
  [ "${#ranks[@]}" -eq 3 ] || { echo "FAIL $1: ranks ${ranks[*]}"; exit 1; }
}

# gone NAME T0: every rank and mpirun exit within BOUND s of T0, mpirun non-zero
gone() {
  local i rc=0
  for ((i = 0; i < BOUND * 10; i++)); do kill -0 "$mp" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$mp" 2>/dev/null; then
    echo "FAIL $1: mpirun still running $BOUND s after the fault"; cat "$tmp/$1.log"; exit 1
  fi
  wait "$mp" || rc=$?
  local dt
  dt=$(echo "$(now) - $2" | bc)
  [ "$rc" -ne 0 ] || { echo "FAIL $1: exit 0 after a failed engine"; cat "$tmp/$1.log"; exit 1; }
  for p in "${ranks[@]}"; do # mpirun has gone; a killed rank may take a moment to be reaped
    for ((i = 0; i < 50; i++)); do
      [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] || break
      sleep 0.1
    done
    if [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]; then
      echo "FAIL $1: rank pid $p left behind: $(ps -o stat=,args= -p "$p")"; exit 1
    fi
  done
  echo "ok $1: every rank gone $dt s after the fault (exit $rc)"
}

# 0. idle workers sleep in their test loops instead of spinning in MPI_Wait (issue 10: ~37% of
# a core each before)
start hang
python3 - "$url" <<'PY'
import http.client, json, sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
c.request("POST", "/v1/completions", json.dumps({"prompt": "Once", "max_tokens": 8}))
assert c.getresponse().status == 200
PY
sleep 0.5
for r in 1 2; do
  cpu=$(python3 "$faults" cpu "${ranks[$r]}" 3)
  echo "idle rank $r: $cpu% of a core"
  awk -v c="$cpu" 'BEGIN {exit !(c < 10)}' || { echo "FAIL idle: rank $r busy at $cpu% while idle, expected < 10%"; exit 1; }
done

# 1. streams and non-streamed requests in flight, a worker stopped
out=$tmp/clients
python3 "$faults" streams "$url" 4 "$out" &
cl=$!
pids+=("$cl")
for ((i = 0; i < 600; i++)); do [ -f "$out.ready" ] && break; sleep 0.05; done
[ -f "$out.ready" ] || { echo "FAIL hang: the streams never started"; exit 1; }
kill -STOP "${ranks[1]}"
stopped+=("${ranks[1]}")
t0=$(now)
python3 -c 'import time; print(time.time())' >"$out.mark"
health=""
for ((i = 0; i < BOUND * 10; i++)); do
  h=$(python3 "$faults" health "$url")
  case $h in 200*) sleep 0.1 ;; *) health=$h; break ;; esac
done
for ((i = 0; i < 600; i++)); do kill -0 "$cl" 2>/dev/null || break; sleep 0.1; done
wait "$cl" || true
echo "health after the fault: $health"
case $health in
  503*'"status":"failed"'*'"reason":"engine: step '*'a rank stopped answering'*) ;;
  *) echo "FAIL hang: /health: got '$health', expected 503 failed with the reason"; exit 1 ;;
esac
python3 - "$out" $STEP <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
step = float(sys.argv[2])
bad = []
errors = 0
for r in recs:
    if r.get("end") == "done" and r.get("after_s", 0) < 0:
        continue  # finished before the fault
    if r.get("end") != "error" or "a rank stopped answering" not in (r.get("error") or ""):
        bad.append(r)
        continue
    if r["kind"] == "plain" and r.get("status") != 503:
        bad.append(r)
        continue
    errors += 1
if bad or errors == 0:
    print("FAIL hang: clients without the error:", json.dumps(bad or recs))
    sys.exit(1)
worst = max(r["after_s"] for r in recs if r.get("end") == "error")
print(f"ok hang: {errors} of {len(recs)} clients hold the error (streams: event then [DONE]), "
      f"the last {worst:.2f} s after SIGSTOP")
if worst > step + 5:
    print(f"FAIL hang: the last error came {worst:.2f} s after the fault, expected <= {step + 5}")
    sys.exit(1)
PY
gone hang "$t0"
grep -q "a rank stopped answering" "$tmp/hang.log" || { echo "FAIL hang: nothing logged"; exit 1; }

# 2. SIGTERM to rank 0 while the last rank hangs with requests in flight
start term-busy
python3 "$faults" streams "$url" 2 "$tmp/c2" >/dev/null 2>&1 &
pids+=("$!")
for ((i = 0; i < 600; i++)); do [ -f "$tmp/c2.ready" ] && break; sleep 0.05; done
kill -STOP "${ranks[2]}"
stopped+=("${ranks[2]}")
kill -TERM "${ranks[0]}"
gone term-busy "$(now)"

# 3. SIGTERM to rank 0 while a worker hangs and nothing runs: the shutdown step cannot pass
start term-idle
kill -STOP "${ranks[1]}"
stopped+=("${ranks[1]}")
t0=$(now)
kill -TERM "${ranks[0]}"
gone term-idle "$t0"
grep -q "shutdown step" "$tmp/term-idle.log" || { echo "FAIL term-idle: log:"; cat "$tmp/term-idle.log"; exit 1; }
