#!/usr/bin/env bash
# Exact speculative decoding: with drafts (--spec 8, the default) tokens and log-probabilities
# are bitwise those of plain decoding (--spec 0), greedy and seeded sampling, on 1 and 3 ranks
# with the head split; the drafts were really used (accepted ones counted in the log).
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}"
model=${TERN_PIPELINE_MODEL:-$TERN_SOURCE_DIR/models/tinystories-bitnet.gguf}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "${BASH_SOURCE[0]}")/mpi-env.sh"
p1=$(printf 'Once upon a time, there was a little girl named Lily. She loved to play outside.' | "$TERNPIPE" tokenize -m "$model" 2>/dev/null)
p2=$(printf 'Tom and his dog went to the park. Tom said, "Let us play!"' | "$TERNPIPE" tokenize -m "$model" 2>/dev/null)
[ -n "$p1" ] && [ -n "$p2" ] || { echo "FAIL: tokenize"; exit 1; }
greedy=(--temp 0)
sampled=(--temp 0.7 --top-k 40 --top-p 0.95 --seed 31 --logprobs 3)
untruncated=(--temp 0.3 --seed 5)                    # Gumbel over every id
wide=(--temp 1.5 --top-p 0.995 --seed 5 --logprobs 2) # rows redrawn from their full logits
for np in 1 3; do
  for mode in greedy sampled untruncated wide; do
    declare -n opts=$mode
    for spec in 0 8; do
      cmd=("$TERNPIPE" logits -m "$model" --ids "$p1" --ids "$p2" -n 200,150 --threads 1 --spec "$spec"
           "${opts[@]}" --out-ids "$tmp/$np-$mode-$spec.ids" --out-logprobs "$tmp/$np-$mode-$spec.lp")
      if [ "$np" = 1 ]; then "${cmd[@]}" 2>"$tmp/$np-$mode-$spec.err"
      else timeout 300 mpirun --oversubscribe --bind-to none -np 3 "${cmd[@]}" --split 3,6:16,1024 2>"$tmp/$np-$mode-$spec.err"; fi
    done
    for ext in ids lp; do
      cmp -s "$tmp/$np-$mode-0.$ext" "$tmp/$np-$mode-8.$ext" || { echo "FAIL np$np $mode: $ext differ with drafts"; exit 1; }
    done
    acc=$(sed -n 's/.*speculative decoding: \([0-9]*\) of \([0-9]*\) drafts accepted.*/\1 \2/p' "$tmp/$np-$mode-8.err")
    [ -n "$acc" ] || { echo "FAIL np$np $mode: no drafts"; cat "$tmp/$np-$mode-8.err"; exit 1; }
    if [ "$mode" != wide ] && [ "${acc%% *}" -eq 0 ]; then echo "FAIL np$np $mode: no draft accepted"; exit 1; fi
    ! grep -q "speculative" "$tmp/$np-$mode-0.err" || { echo "FAIL: --spec 0 still drafted"; exit 1; }
    echo "ok np$np $mode: equal with drafts (${acc%% *} of ${acc#* } drafts accepted)"
  done
done
echo "speculative: all passed"
