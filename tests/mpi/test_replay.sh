#!/usr/bin/env bash
# A sequence resumes from its token history alone (what recovery by replay needs): the prompt
# plus the first K generated tokens, submitted again with `resumed` = K, the same seed and the
# remaining budget, continues with exactly the tokens and log-probabilities of the first run,
# greedy and sampled with presence/frequency/repetition penalties, on 1 and 3 ranks (head split).
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}"
model=${TERN_PIPELINE_MODEL:-$TERN_SOURCE_DIR/models/tinystories-bitnet.gguf}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "${BASH_SOURCE[0]}")/mpi-env.sh"
prompt=$(printf 'One day, a little bird found a shiny stone.' | "$TERNPIPE" tokenize -m "$model" 2>/dev/null)
sampled=(--temp 0.9 --top-k 50 --top-p 0.95 --presence-penalty 0.4 --frequency-penalty 0.3 --repeat-penalty 1.15 --seed 12 --logprobs 2)
greedy=(--temp 0 --frequency-penalty 0.5)
run() { # np, out prefix, args...
  local np=$1 out=$2; shift 2
  if [ "$np" = 1 ]; then "$TERNPIPE" logits -m "$model" --threads 1 "$@" --out-ids "$out.ids" --out-logprobs "$out.lp" 2>"$out.err"
  else timeout 300 mpirun --oversubscribe --bind-to none -np 3 "$TERNPIPE" logits -m "$model" --threads 1 --split 3,6:16,1024 "$@" \
    --out-ids "$out.ids" --out-logprobs "$out.lp" 2>"$out.err"; fi || { echo "FAIL: $*"; cat "$out.err"; exit 1; }
}
for np in 1 3; do
  for mode in greedy sampled; do
    declare -n opts=$mode
    run "$np" "$tmp/full" --ids "$prompt" -n 40 "${opts[@]}"
    read -r -a gen < "$tmp/full.ids"
    [ "${#gen[@]}" -eq 40 ] || { echo "FAIL: expected 40 tokens, got ${#gen[@]}"; exit 1; }
    for k in 1 15 39; do
      run "$np" "$tmp/rest" --ids "$prompt ${gen[*]:0:k}" -n $((40 - k)) --resumed "$k" "${opts[@]}"
      want=$(echo "${gen[*]:k}")
      got=$(cat "$tmp/rest.ids")
      [ "$got" = "$want" ] || { echo "FAIL np$np $mode: resumed after $k tokens: got '$got', expected '$want'"; exit 1; }
      wlp=$(tr ' ' '\n' < "$tmp/full.lp" | tail -n $((40 - k)) | tr '\n' ' ' | sed 's/ $//')
      glp=$(tr ' ' '\n' < "$tmp/rest.lp" | tr '\n' ' ' | sed 's/ $//')
      [ "$glp" = "$wlp" ] || { echo "FAIL np$np $mode: log-probabilities differ after resuming at $k"; exit 1; }
    done
    echo "ok np$np $mode: resumed at 1, 15 and 39 tokens, the rest is the first run's"
  done
done
# without `resumed` the penalties would count the replayed tokens as prompt: the text differs
run 1 "$tmp/full" --ids "$prompt" -n 40 "${sampled[@]}"
read -r -a gen < "$tmp/full.ids"
run 1 "$tmp/naive" --ids "$prompt ${gen[*]:0:15}" -n 25 "${sampled[@]}"
[ "$(cat "$tmp/naive.ids")" != "$(echo "${gen[*]:15}")" ] || echo "note: the naive replay happened to agree"
echo "replay: all passed"
