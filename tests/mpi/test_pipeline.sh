#!/usr/bin/env bash
# Pipeline equivalence: 8 concurrent sequences of different lengths (some longer than the
# token budget, more sequences than fit one micro-batch, different generation lengths so some
# finish while others continue) give bitwise identical logits at every position and identical
# greedy tokens for 1..5 ranks, even and uneven splits (with the default F16 KV cache; f32 and
# q8 on 3 ranks). Also: a handshake with a different model file, or a different KV type, on
# one rank ends every rank with one clear message, without hanging.
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}"
model=${TERN_PIPELINE_MODEL:-$TERN_SOURCE_DIR/models/tinystories-bitnet.gguf}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "${BASH_SOURCE[0]}")/mpi-env.sh"
export OMPI_MCA_btl=self,vader,tcp
mpirun_() { timeout 600 mpirun --oversubscribe --bind-to none "$@"; }

layers=$("$TERNPIPE" info "$model" | awk -F' = ' '/\.block_count/ {print $2}')
[ -n "$layers" ] || { echo "cannot read block_count of $model"; exit 1; }
echo "model: $model ($layers layers)"

# 8 prompts, lengths 5..41, ids from a fixed LCG (below 1000: valid in every vocab here)
args=()
seed=12345
for len in 5 41 17 9 33 12 26 7; do
  ids=""
  for ((i = 0; i < len; i++)); do
    seed=$(( (seed * 1103515245 + 12345) % 2147483648 ))
    ids+="$(( seed % 1000 )) "
  done
  args+=(--ids "$ids")
done
common=("${args[@]}" -n 12,3,20,1,8,15,5,10 --batch 24 --threads 1)

check() { # name, then the command's arguments
  local name=$1; shift
  "$@" --out "$tmp/$name.f32" --out-ids "$tmp/$name.ids" 2>"$tmp/$name.err" || {
    echo "FAIL $name: exit $?"; cat "$tmp/$name.err"; exit 1; }
  if ! cmp -s "$tmp/ref.f32" "$tmp/$name.f32" || ! cmp -s "$tmp/ref.ids" "$tmp/$name.ids"; then
    echo "FAIL $name: logits or tokens differ from the single-process run"; exit 1
  fi
  echo "ok $name"
}

"$TERNPIPE" logits -m "$model" "${common[@]}" --out "$tmp/ref.f32" --out-ids "$tmp/ref.ids"
[ "$(wc -l < "$tmp/ref.ids")" -eq 8 ] || { echo "FAIL: expected 8 id lines"; exit 1; }
awk 'BEGIN{want="12 3 20 1 8 15 5 10"; split(want,w," ")} {if (NF != w[NR]) {print "FAIL: sequence " NR " generated " NF " tokens, expected " w[NR]; exit 1}}' "$tmp/ref.ids"
# fewer tokens per micro-batch and fewer slots than sequences would change nothing either
check small-batch "$TERNPIPE" logits -m "$model" "${args[@]}" -n 12,3,20,1,8,15,5,10 --batch 7 --threads 2
for n in 1 2 3 4 5; do
  [ "$n" -le $((layers + 1)) ] || continue
  check "np$n-even" mpirun_ -np "$n" "$TERNPIPE" logits -m "$model" "${common[@]}" --split even
done
if [ "$layers" -ge 6 ]; then
  check np3-uneven mpirun_ -np 3 "$TERNPIPE" logits -m "$model" "${common[@]}" --split 1,5
  check np4-uneven mpirun_ -np 4 "$TERNPIPE" logits -m "$model" "${common[@]}" --split 2,3,5
fi
check np3-auto mpirun_ -np 3 "$TERNPIPE" logits -m "$model" "${common[@]}" --split auto
check np2-inflight4 mpirun_ -np 2 "$TERNPIPE" logits -m "$model" "${common[@]}" --inflight 4

# the other KV cache types are as deterministic: 3 ranks (auto split) equal 1 rank, bitwise
for kt in f32 q8; do
  "$TERNPIPE" logits -m "$model" "${common[@]}" --kv-type $kt --out "$tmp/ref-$kt.f32" \
    --out-ids "$tmp/ref-$kt.ids" 2>"$tmp/ref-$kt.err" || { echo "FAIL kv $kt"; cat "$tmp/ref-$kt.err"; exit 1; }
  if cmp -s "$tmp/ref.f32" "$tmp/ref-$kt.f32"; then echo "FAIL kv $kt: the same logits as f16"; exit 1; fi
  mpirun_ -np 3 "$TERNPIPE" logits -m "$model" "${common[@]}" --kv-type $kt --out "$tmp/np3-$kt.f32" \
    --out-ids "$tmp/np3-$kt.ids" 2>"$tmp/np3-$kt.err" || { echo "FAIL np3 kv $kt"; cat "$tmp/np3-$kt.err"; exit 1; }
  if ! cmp -s "$tmp/ref-$kt.f32" "$tmp/np3-$kt.f32" || ! cmp -s "$tmp/ref-$kt.ids" "$tmp/np3-$kt.ids"; then
    echo "FAIL np3 kv $kt: logits or tokens differ from the single-process run"; exit 1
  fi
  echo "ok np3-kv-$kt"
done
# ranks that disagree on the KV type end with one clear message, without hanging
set +e
timeout 120 mpirun --oversubscribe --bind-to none -np 1 "$TERNPIPE" logits -m "$model" --ids "1 2 3" --out "$tmp/x.f32" : \
  -np 1 "$TERNPIPE" logits -m "$model" --kv-type q8 --ids "1 2 3" --out "$tmp/x.f32" >"$tmp/kt.out" 2>&1
rc=$?
set -e
if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then echo "FAIL kv-type handshake: exit $rc"; cat "$tmp/kt.out"; exit 1; fi
grep -q "handshake: rank 1 KV type: got q8, expected f16" "$tmp/kt.out" || { echo "FAIL kv-type handshake message:"; cat "$tmp/kt.out"; exit 1; }
echo "ok kv-type handshake"

# handshake: rank 1 has a different model file (the same one with its last data byte changed)
other=$tmp/other.gguf
cp "$model" "$other"
size=$(stat -c %s "$other")
printf '\x5a' | dd of="$other" bs=1 seek=$((size - 1)) conv=notrunc status=none
cmp -s "$model" "$other" && printf '\xa5' | dd of="$other" bs=1 seek=$((size - 1)) conv=notrunc status=none
set +e
timeout 120 mpirun --oversubscribe --bind-to none -np 1 "$TERNPIPE" logits -m "$model" --ids "1 2 3" --out "$tmp/x.f32" : \
  -np 1 "$TERNPIPE" logits -m "$other" --ids "1 2 3" --out "$tmp/x.f32" >"$tmp/hs.out" 2>&1
rc=$?
set -e
if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then echo "FAIL handshake: exit $rc (0 = accepted, 124 = hang)"; cat "$tmp/hs.out"; exit 1; fi
grep -q "handshake: rank 1 model checksum" "$tmp/hs.out" || { echo "FAIL handshake message:"; cat "$tmp/hs.out"; exit 1; }
echo "ok handshake ($(grep -c . "$tmp/hs.out") lines: $(grep handshake "$tmp/hs.out" | head -1))"
echo "pipeline: all passed"
