#!/usr/bin/env bash
# A lost host (issue 11): three emulated hosts (cluster/netns: network namespaces on a bridge),
# one rank each over TCP, served by a supervisor in the root namespace. While 16 streams run,
# one host's link goes down: rank 0's step deadline fails the job, the supervisor tears it
# down, probes the hosts, drops the dead one and relaunches on the other two (the layers
# re-planned over 2 ranks); every stream completes with exactly the unfaulted text. Skipped
# (exit 77) where network namespaces cannot be made.
set -euo pipefail
source "$(dirname "$0")/faults.sh"
model=$(readlink -f "${TERN_FAULT_MODEL:-$TERN_SOURCE_DIR/models/tinystories-bitnet.gguf}")
net=$TERN_SOURCE_DIR/cluster/netns
tmp=$(mktemp -d)
export TERN_NETNS_HOSTFILE=$tmp/hosts
sv=
cleanup() {
  ip -n tp2 link set eth0 up 2>/dev/null || true
  [ -n "$sv" ] && kill -KILL -- "-$sv" 2>/dev/null || true
  # every process of the job carries the address: ranks and mpirun as "--supervisor ADDR", the
  # daemons (orted) as "--mca ternpipe_supervisor ADDR"
  [ -n "${addr:-}" ] && pkill -KILL -f -- " $addr( |\$)" 2>/dev/null || true
  "$net/down" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
if ! ip netns add tpprobe 2>"$tmp/probe.err"; then
  echo "SKIP: cannot create network namespaces here: $(head -1 "$tmp/probe.err")"
  exit 77
fi
ip netns del tpprobe
"$net/down" >/dev/null 2>&1 || true
"$net/up" 3 >/dev/null
eos=$("$TERNPIPE" info "$model" | sed -n 's/.* eos \([0-9]*\).*/\1/p')
N=16 M=96
# what cluster/netns/mpirun passes (and why), as the supervisor's launcher arguments
margs=()
for a in --map-by node --bind-to none --mca plm_rsh_agent "$net/rsh" --mca plm_rsh_no_tree_spawn 1 \
  --mca btl self,tcp --mca btl_tcp_if_include 10.213.0.0/24 --mca oob_tcp_if_include 10.213.0.0/24 \
  --mca rtc_hwloc_vmhole none; do
  margs+=(--mpirun-arg "$a")
done
for v in OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM ASAN_OPTIONS UBSAN_OPTIONS; do
  [ -n "${!v:-}" ] && margs+=(--mpirun-arg -x --mpirun-arg "$v")
done
log=$tmp/sv.log
start_sv "$log" -m "$model" --threads 1 --hostfile "$TERN_NETNS_HOSTFILE" --engine-host 10.213.0.254 \
  --split even --step-timeout 3 --heartbeat-timeout 5 --start-timeout 120 "${margs[@]}"
grep -q "plan (3 ranks" "$log" || { echo "FAIL: no 3-rank plan"; cat "$log"; exit 1; }
echo "started over 3 namespaces: $url (engine at $addr)"
streams run "$url" "$N" "$tmp/ref.json" --tokens "$M" --eos "$eos"
streams run "$url" "$N" "$tmp/down.json" --tokens "$M" --eos "$eos" --after 12 \
  --fault "ip -n tp2 link set eth0 down" || { tail -40 "$log"; exit 1; }
streams compare "$tmp/ref.json" "$tmp/down.json" || { tail -40 "$log"; exit 1; }
grep -q "host 'tp2 slots=1' failed its probe" "$log" || { echo "FAIL: tp2 not dropped"; tail -30 "$log"; exit 1; }
grep -q "plan (2 ranks" "$log" || { echo "FAIL: no 2-rank plan after the drop"; tail -30 "$log"; exit 1; }
dropped=$(curl -s "$url/metrics" | sed -n 's/^ternpipe_supervisor_hosts_dropped_total \([0-9]*\)$/\1/p')
[ "$dropped" = 1 ] || { echo "FAIL: hosts_dropped_total is '$dropped', expected 1"; exit 1; }
rec=$(grep "recovered: first token" "$log" | tail -1 | sed -n 's/.*token \([0-9.]*\) s after.*/\1/p')
echo "ok link of tp2 down: job back on 2 hosts, 16 streams exact; first replayed token $rec s after detection"
ip -n tp2 link set eth0 up
kill -TERM "$sv"
for _ in $(seq 1 300); do kill -0 "$sv" 2>/dev/null || break; sleep 0.1; done
kill -0 "$sv" 2>/dev/null && { echo "FAIL: supervisor still running after SIGTERM"; exit 1; }
sv=
no_orphans
echo "fault netns: all passed"
