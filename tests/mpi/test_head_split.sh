#!/usr/bin/env bash
# The LM head split by vocabulary rows, and sampling that no split can change (issue 9):
# - logits of every position and greedy tokens bitwise equal for N = 1..5 ranks with the head
#   on rank 0 and split over 2..N ranks;
# - seeded sampling (temperature 0.8, top-k 40, top-p 0.9, min-p 0.05, repetition penalty 1.1;
#   and presence/frequency penalties with a logit bias)
#   gives bitwise identical tokens and log-probabilities (chosen + top 20) for N = 1..5, every
#   head split, and for a request run alone or among 63 others;
# - a wide nucleus (temperature 1.5, top-p 0.995, no top-k) takes the full-row path and is
#   still identical across splits;
# - --max-seqs 4096 with more than 1024 sequences in one micro-batch on 1 and 3 ranks equals
#   the same sequences run in small batches.
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}"
model=${TERN_PIPELINE_MODEL:-$TERN_SOURCE_DIR/models/tinystories-bitnet.gguf}
tmp=$(mktemp -d)
trap '[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
. "$(dirname "${BASH_SOURCE[0]}")/mpi-env.sh"
export OMPI_MCA_btl=self,vader,tcp
mpirun_() { timeout 600 mpirun --oversubscribe --bind-to none "$@"; }
layers=$("$TERNPIPE" info "$model" | awk -F' = ' '/\.block_count/ {print $2}')
[ "$layers" = 6 ] || { echo "this test's splits are written for a 6-layer model, got '$layers'"; exit 1; }

# 6 prompts (ids below 1000 from a fixed LCG), different generation lengths
ids=()
seed=777
for len in 4 29 11 17 6 23; do
  s=""
  for ((i = 0; i < len; i++)); do seed=$(( (seed * 1103515245 + 12345) % 2147483648 )); s+="$(( seed % 1000 )) "; done
  ids+=(--ids "$s")
done
common=("${ids[@]}" -n 9,14,3,20,6,11 --batch 16 --threads 1)
sampled=(--temp 0.8 --top-k 40 --top-p 0.9 --min-p 0.05 --repeat-penalty 1.1 --seed 4242 --logprobs 20)
wide=(--temp 1.5 --top-p 0.995 --seed 99 --logprobs 2)
penal=(--temp 0.8 --top-k 40 --presence-penalty 0.5 --frequency-penalty 0.3 --repeat-penalty 1.2 \
  --logit-bias "11:2.5,300:-5,46:1" --seed 5 --logprobs 5)

same() { # name, reference prefix, candidate prefix, extensions...
  local name=$1 ref=$2 got=$3; shift 3
  for ext in "$@"; do
    cmp -s "$ref.$ext" "$got.$ext" || { echo "FAIL $name: $ext differs from the single-process run"; exit 1; }
  done
  echo "ok $name"
}
run() { # name, np, split, extra args... (writes $tmp/name.{f32,ids,lp})
  local name=$1 np=$2 split=$3; shift 3
  local cmd=("$TERNPIPE" logits -m "$model" "$@")
  [ -n "$split" ] && cmd+=(--split "$split")
  if [ "$np" = 1 ]; then "${cmd[@]}" 2>"$tmp/$name.err" || { echo "FAIL $name"; cat "$tmp/$name.err"; exit 1; }
  else mpirun_ -np "$np" "${cmd[@]}" 2>"$tmp/$name.err" || { echo "FAIL $name (np $np, split $split)"; cat "$tmp/$name.err"; exit 1; }
  fi
}

# splits per rank count: the head on rank 0, then on 2..N ranks
declare -A splits
splits[2]="even 0:even 6:0"
splits[3]="even 3,6:even 2,4:even 3,6:16,1024"
splits[4]="even 2,4,6:even 3,6,6:16,32,48 6,6,6:1024,1024,1024"
splits[5]="even 2,4,5,6:even 3,6,6,6:16,32,48,64 6,6,6,6:512,512,1024,1024"

run ref 1 "" "${common[@]}" --out "$tmp/ref.f32" --out-ids "$tmp/ref.ids"
run sref 1 "" "${common[@]}" "${sampled[@]}" --out-ids "$tmp/sref.ids" --out-logprobs "$tmp/sref.lp"
run wref 1 "" "${common[@]}" "${wide[@]}" --out-ids "$tmp/wref.ids" --out-logprobs "$tmp/wref.lp"
grep -q "rows drawn again from their full logits" "$tmp/wref.err" || { echo "FAIL: the wide nucleus never took the full-row path"; cat "$tmp/wref.err"; exit 1; }
[ "$(wc -l < "$tmp/sref.lp")" -eq 6 ] || { echo "FAIL: expected 6 logprob lines"; exit 1; }
awk '{ for (i = 1; i <= NF; i++) if (split($i, a, "|") != 21) { print "FAIL: token " i " of line " NR " has " length(a) - 1 " alternatives"; exit 1 } }' "$tmp/sref.lp"
for np in 2 3 4 5; do
  for sp in ${splits[$np]}; do
    run "g$np" "$np" "$sp" "${common[@]}" --out "$tmp/g$np.f32" --out-ids "$tmp/g$np.ids"
    same "np$np split $sp greedy logits+tokens" "$tmp/ref" "$tmp/g$np" f32 ids
    run "s$np" "$np" "$sp" "${common[@]}" "${sampled[@]}" --out-ids "$tmp/s$np.ids" --out-logprobs "$tmp/s$np.lp"
    same "np$np split $sp sampled tokens+logprobs" "$tmp/sref" "$tmp/s$np" ids lp
  done
done
run pref 1 "" "${common[@]}" "${penal[@]}" --out-ids "$tmp/pref.ids" --out-logprobs "$tmp/pref.lp"
cmp -s "$tmp/pref.ids" "$tmp/sref.ids" && { echo "FAIL: the penalties changed nothing"; exit 1; }
for sp in "3,6:16,1024" "2,4:even"; do
  run p3 3 "$sp" "${common[@]}" "${penal[@]}" --out-ids "$tmp/p3.ids" --out-logprobs "$tmp/p3.lp"
  same "np3 split $sp presence/frequency/repetition penalties and logit bias" "$tmp/pref" "$tmp/p3" ids lp
done
run w3 3 "3,6:16,1024" "${common[@]}" "${wide[@]}" --out-ids "$tmp/w3.ids" --out-logprobs "$tmp/w3.lp"
same "np3 wide nucleus (full-row path)" "$tmp/wref" "$tmp/w3" ids lp
run w5 5 "6,6,6,6:512,512,1024,1024" "${common[@]}" "${wide[@]}" --out-ids "$tmp/w5.ids" --out-logprobs "$tmp/w5.lp"
same "np5 wide nucleus (full-row path)" "$tmp/wref" "$tmp/w5" ids lp

# alone vs among 63 others: sequence k uses seed 4242 + k, so the first line is the same request
crowd=(--ids "${ids[1]}")
for ((k = 1; k < 64; k++)); do
  s=""; for ((i = 0; i < 3 + k % 20; i++)); do seed=$(( (seed * 1103515245 + 12345) % 2147483648 )); s+="$(( seed % 1000 )) "; done
  crowd+=(--ids "$s")
done
run alone 1 "" --ids "${ids[1]}" -n 20 --threads 1 "${sampled[@]}" --out-ids "$tmp/alone.ids" --out-logprobs "$tmp/alone.lp"
head -1 "$tmp/alone.ids" > "$tmp/alone1.ids"; head -1 "$tmp/alone.lp" > "$tmp/alone1.lp"
for np in 1 3; do
  run crowd$np "$np" "$([ "$np" = 3 ] && echo 3,6:16,1024)" "${crowd[@]}" -n 20 --batch 48 --threads 1 "${sampled[@]}" \
    --out-ids "$tmp/crowd$np.ids" --out-logprobs "$tmp/crowd$np.lp"
  head -1 "$tmp/crowd$np.ids" > "$tmp/first.ids"; head -1 "$tmp/crowd$np.lp" > "$tmp/first.lp"
  same "np$np request alone vs among 63 others" "$tmp/alone1" "$tmp/first" ids lp
done

# --max-seqs 4096: 1100 sequences in one micro-batch (the old engine kept 1024)
many=()
for ((k = 0; k < 1100; k++)); do many+=(--ids "$(( k % 997 )) $(( (k * 7) % 991 ))"); done
run mref 1 "" "${many[@]}" -n 2 --batch 64 --max-seqs 256 --out-ids "$tmp/mref.ids"
run m1 1 "" "${many[@]}" -n 2 --batch 4096 --max-seqs 4096 --ctx 64 --out-ids "$tmp/m1.ids"
same "1 rank, --max-seqs 4096, 1100 sequences in one micro-batch" "$tmp/mref" "$tmp/m1" ids
run m3 3 "3,6:16,1024" "${many[@]}" -n 2 --batch 4096 --max-seqs 4096 --ctx 64 --out-ids "$tmp/m3.ids"
same "3 ranks, --max-seqs 4096, 1100 sequences in one micro-batch" "$tmp/mref" "$tmp/m3" ids
set +e
"$TERNPIPE" logits -m "$model" --ids "1 2" --out-ids "$tmp/x.ids" --max-seqs 5000 2>"$tmp/big.err"
rc=$?
set -e
[ $rc -ne 0 ] && grep -q -- "--max-seqs: got 5000, expected 1..4096" "$tmp/big.err" || { echo "FAIL: --max-seqs 5000 not refused clearly"; cat "$tmp/big.err"; exit 1; }
echo "ok --max-seqs 5000 refused: $(grep -- --max-seqs "$tmp/big.err")"
echo "head split: all passed"
