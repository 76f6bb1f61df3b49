#!/usr/bin/env bash
# Supervised serving survives a lost rank (issue 11). A 3-rank supervised `ternpipe serve` on
# the default model runs 16 concurrent streams (completions and chat, greedy and seeded
# sampling, end-of-text biased away so each runs its full length) through four faults: kill -9
# of a worker, kill -9 of rank 0, SIGSTOP of a worker (rank 0's step deadline) and SIGSTOP of
# rank 0 (the supervisor's heartbeat). After each, every stream must end with its full token
# count, one [DONE], no error and exactly the text of the unfaulted run. Then past the retry
# limit (the model file gone): every stream gets an in-band error and [DONE], /health says
# "failed", the supervisor exits non-zero and no process of the job is left.
set -euo pipefail
source "$(dirname "$0")/faults.sh"
model=${TERN_FAULT_MODEL:-$TERN_SOURCE_DIR/models/tinystories-bitnet.gguf}
tmp=$(mktemp -d)
svs=()
cleanup() {
  for p in "${svs[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  [ -n "${addr:-}" ] && pkill -KILL -f -- "--supervisor $addr" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
eos=$("$TERNPIPE" info "$model" | sed -n 's/.* eos \([0-9]*\).*/\1/p')
[ -n "$eos" ] || { echo "FAIL: no eos id for $model"; exit 1; }
N=16 M=96 AFTER=12
log=$tmp/sv.log
start_sv "$log" -m "$model" --threads 1 --ranks 3 --step-timeout 3 --heartbeat-timeout 3
svs+=("$sv")
echo "started supervised server $url (supervisor pid $sv, engine at $addr)"
streams run "$url" "$N" "$tmp/ref.json" --tokens "$M" --eos "$eos"

ups=1
round() { # NAME SIGNAL PID
  local name=$1 sig=$2 pid=$3
  streams run "$url" "$N" "$tmp/$name.json" --tokens "$M" --eos "$eos" --after "$AFTER" \
    --fault "bash $here/inject.sh $log $sig $pid $tmp/$name.detect" || {
    echo "FAIL $name"; tail -40 "$log"; exit 1; }
  streams compare "$tmp/ref.json" "$tmp/$name.json" || { echo "FAIL $name"; tail -40 "$log"; exit 1; }
  ups=$((ups + 1))
  wait_ready "$log" "$ups"
  local rec
  rec=$(grep "recovered: first token" "$log" | tail -1 | sed -n 's/.*token \([0-9.]*\) s after.*/\1/p')
  echo "ok $name: detected in $(cat "$tmp/$name.detect") s, first replayed token ${rec:-?} s later"
}
round worker-kill9 KILL "$(worker_of "$log")"
round rank0-kill9 KILL "$(rank0_of "$log")"
w=$(worker_of "$log")
round worker-sigstop STOP "$w"
d=$(cat "$tmp/worker-sigstop.detect")
awk -v d="$d" 'BEGIN { exit !(d != "never" && d <= 3 + 5) }' ||
  { echo "FAIL: a stopped worker detected after $d s, expected about the 3 s step deadline"; exit 1; }
round rank0-sigstop STOP "$(rank0_of "$log")"
d=$(cat "$tmp/rank0-sigstop.detect")
awk -v d="$d" 'BEGIN { exit !(d != "never" && d <= 3 + 5) }' ||
  { echo "FAIL: a stopped rank 0 detected after $d s, expected about the 3 s heartbeat limit"; exit 1; }
m=$(curl -s "$url/metrics")
for k in restarts_total requests_replayed_total tokens_reprefilled_total; do
  v=$(echo "$m" | sed -n "s/^ternpipe_supervisor_$k \([0-9]*\)$/\1/p")
  [ -n "$v" ] && [ "$v" -ge 4 ] || { echo "FAIL: ternpipe_supervisor_$k is '$v', expected >= 4"; exit 1; }
done
echo "ok metrics: $(echo "$m" | grep -E '^ternpipe_supervisor_(restarts|requests_replayed|tokens_reprefilled)_total' | tr '\n' ' ')"
kill -TERM "$sv"
rc=0
for _ in $(seq 1 300); do kill -0 "$sv" 2>/dev/null || break; sleep 0.1; done
wait "$sv" || rc=$?
[ "$rc" -eq 0 ] || { echo "FAIL: supervisor exit $rc after SIGTERM"; tail -20 "$log"; exit 1; }
no_orphans
echo "ok SIGTERM: the supervisor drained and exited 0, no process of the job left"

# past the retry limit: the model disappears, rank 0 dies, every relaunch fails to load
cp "$model" "$tmp/gone.gguf"
log=$tmp/sv2.log
start_sv "$log" -m "$tmp/gone.gguf" --threads 1 --ranks 3 --restarts 2 --heartbeat-timeout 3
svs+=("$sv")
( for _ in $(seq 1 400); do
    curl -s "$url/health" 2>/dev/null | sed -n 's/.*"status":"\([a-z]*\)".*/\1/p'
    echo
    sleep 0.05
  done >"$tmp/health.seen" ) &
poller=$!
# one non-streamed request in flight too: it must get a 503 with an OpenAI-style error. It is
# sent with the fault, 0.1 s before the kill (its 400 tokens take longer, among the streams):
# sent before the streams, it could end while their client starts (seen: a 200)
cat >"$tmp/plain.sh" <<EOF
curl -s --max-time 120 -o "$tmp/plain.json" -w '%{http_code}' "$url/v1/completions" \\
  -d '{"prompt":"Once upon a time","max_tokens":400,"logit_bias":{"$eos":-100}}' >"$tmp/plain.code"
EOF
streams run "$url" "$N" "$tmp/gone.json" --tokens "$M" --eos "$eos" --after "$AFTER" \
  --fault "bash $tmp/plain.sh & sleep 0.1; rm -f $tmp/gone.gguf; kill -KILL $(rank0_of "$log")" ||
  { tail -30 "$log"; exit 1; }
streams failed "$tmp/gone.json" || { tail -30 "$log"; exit 1; }
for _ in $(seq 1 600); do [ -s "$tmp/plain.code" ] && break; sleep 0.1; done
[ "$(cat "$tmp/plain.code")" = 503 ] && grep -q '"error":{"message":"supervisor: .*giving up' "$tmp/plain.json" ||
  { echo "FAIL: the non-streamed request got $(cat "$tmp/plain.code"): $(head -c 300 "$tmp/plain.json")"; exit 1; }
echo "ok the non-streamed request: 503 $(head -c 160 "$tmp/plain.json")" 
rc=0
for _ in $(seq 1 300); do kill -0 "$sv" 2>/dev/null || break; sleep 0.1; done
kill -0 "$sv" 2>/dev/null && { echo "FAIL: the supervisor still runs after giving up"; exit 1; }
wait "$sv" || rc=$?
kill "$poller" 2>/dev/null || true
wait "$poller" 2>/dev/null || true
[ "$rc" -ne 0 ] || { echo "FAIL: the supervisor exited 0 after giving up"; exit 1; }
grep -q "giving up" "$log" || { echo "FAIL: no 'giving up' in the log"; tail -20 "$log"; exit 1; }
grep -qx recovering "$tmp/health.seen" || { echo "FAIL: /health never said recovering"; sort -u "$tmp/health.seen"; exit 1; }
grep -qx failed "$tmp/health.seen" || { echo "FAIL: /health never said failed"; sort -u "$tmp/health.seen"; exit 1; }
no_orphans
echo "ok past the retry limit: in-band errors, /health recovering then failed, exit $rc, no process left"
echo "fault: all passed"
