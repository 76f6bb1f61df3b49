#!/usr/bin/env bash
# inject.sh LOG SIGNAL PID OUT: sends SIGNAL to PID, then waits (at most 60 s) until the
# supervisor's LOG has one more "engine job failed" line, and writes the seconds it took (the
# detection latency) to OUT. Run by streams.py as the fault, while the streams go on.
set -u
log=$1 sig=$2 pid=$3 out=$4
before=$(grep -c "engine job failed" "$log" || true)
t0=$(date +%s.%N)
kill "-$sig" "$pid"
for _ in $(seq 1 6000); do
  now=$(grep -c "engine job failed" "$log" || true)
  [ "$now" -gt "$before" ] && break
  sleep 0.01
done
t1=$(date +%s.%N)
if [ "$now" -gt "$before" ]; then
  echo "$t0 $t1" | awk '{printf "%.2f\n", $2 - $1}' >"$out"
else
  echo "never" >"$out"
fi
