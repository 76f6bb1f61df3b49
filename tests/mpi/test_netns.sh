#!/usr/bin/env bash
# Multi-host pipeline, emulated: three network namespaces joined by veth pairs and a bridge on
# a private subnet (cluster/netns/up), one rank per namespace, Open MPI over TCP only. The
# logits and greedy tokens of 3 concurrent sequences must equal the single-process run bit
# for bit. Skipped (exit 77) where the machine cannot create network namespaces.
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}"
model=${TERN_PIPELINE_MODEL:-$TERN_SOURCE_DIR/models/tinystories-bitnet.gguf}
net=$TERN_SOURCE_DIR/cluster/netns
tmp=$(mktemp -d)
export TERN_NETNS_HOSTFILE=$tmp/hosts
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
cleanup() { "$net/down" >/dev/null 2>&1 || true; rm -rf "$tmp"; }
trap cleanup EXIT

if ! ip netns add tpprobe 2>"$tmp/probe.err"; then
  echo "SKIP: cannot create network namespaces here: $(head -1 "$tmp/probe.err")"
  exit 77
fi
ip netns del tpprobe
"$net/down" >/dev/null 2>&1 || true
"$net/up" 3 >/dev/null

args=(--ids "1 17 300 42 9" --ids "5 6 7 8 9 10 11 12 13 14 15 16" --ids "900" -n 6,2,9 --threads 1)
"$TERNPIPE" logits -m "$model" "${args[@]}" --out "$tmp/ref.f32" --out-ids "$tmp/ref.ids" 2>"$tmp/ref.err" || {
  echo "FAIL single-process run"; cat "$tmp/ref.err"; exit 1; }
# the ranks run in other namespaces: give them absolute paths
timeout 300 "$net/mpirun" 3 "$TERNPIPE" logits -m "$(readlink -f "$model")" "${args[@]}" --split even \
  --out "$tmp/np3.f32" --out-ids "$tmp/np3.ids" >"$tmp/np3.log" 2>&1 || {
  echo "FAIL 3 namespaces: exit $?"; tail -20 "$tmp/np3.log"; exit 1; }
grep -q "plan (3 ranks" "$tmp/np3.log" || { echo "FAIL: no 3-rank plan in the log"; cat "$tmp/np3.log"; exit 1; }
cmp "$tmp/ref.f32" "$tmp/np3.f32" || { echo "FAIL: logits differ across namespaces"; exit 1; }
cmp "$tmp/ref.ids" "$tmp/np3.ids" || { echo "FAIL: tokens differ across namespaces"; exit 1; }
echo "ok np3 over TCP across 3 network namespaces: $(stat -c %s "$tmp/np3.f32") bytes of logits and $(wc -w < "$tmp/np3.ids") tokens identical"
