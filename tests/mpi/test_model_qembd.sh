#!/usr/bin/env bash
# token_embd as ggml Q8_0 and Q6_K (issue 14 item 5): a synth tiny model written with
# --embd-type gives logits and greedy tokens bitwise equal on 1 and 3 ranks for several head
# splits; with --head-type q8_0 (the table as int8 rows for lookup and head, int8 activations)
# too, whichever rank holds which rows. Exactness against the dequantized table is checked in
# test_model (an independent scalar path).
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}"
tmp=$(mktemp -d)
trap '[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
. "$(dirname "${BASH_SOURCE[0]}")/mpi-env.sh"
export OMPI_MCA_btl=self,vader,tcp
mpirun_() { timeout 600 mpirun --oversubscribe --bind-to none "$@"; }
export TERN_FIXTURES=${TERN_FIXTURES:-$TERN_SOURCE_DIR/../shared/fixtures}
# synth writes the Llama-3 vocabulary from the fixtures
[ -f "$TERN_FIXTURES/tokenizer/llama3.tiktoken" ] ||
  { echo "SKIP: no $TERN_FIXTURES/tokenizer/llama3.tiktoken (../shared/fixtures)"; exit 77; }

common=(--ids "1 2 3 400 5" --ids "9000 17 65000 128255" --ids "42" -n 7,3,9 --batch 8 --threads 1)
# --head-type q8_0 on 3 ranks over head splits: the bits of one rank ($tmp/h8.*)
h8_splits() { # TYPE MODEL
  local type=$1 model=$2 sp
  for sp in "even" "1,2:16,1024" "2,2:160,64000"; do
    mpirun_ -np 3 "$TERNPIPE" logits -m "$model" "${common[@]}" --head-type q8_0 --split "$sp" \
      --out "$tmp/h3.f32" --out-ids "$tmp/h3.ids" 2>"$tmp/h3.err" ||
      { echo "FAIL $type --head-type q8_0 np 3 split $sp"; cat "$tmp/h3.err"; exit 1; }
    cmp -s "$tmp/h8.f32" "$tmp/h3.f32" && cmp -s "$tmp/h8.ids" "$tmp/h3.ids" ||
      { echo "FAIL $type --head-type q8_0 np 3 split $sp: logits differ from 1 rank"; exit 1; }
    echo "ok $type --head-type q8_0 np 3 split $sp: bitwise equal to 1 rank"
  done
}
for type in q8_0 q6_k; do
  model=$tmp/tiny-$type.gguf
  "$TERNPIPE" synth --shape tiny --seed 11 --embd-type "$type" -o "$model" 2>"$tmp/synth.err" ||
    { echo "FAIL synth $type"; cat "$tmp/synth.err"; exit 1; }
  "$TERNPIPE" info "$model" | grep -q "token_embd.weight *${type^^}" ||
    { echo "FAIL: $model has no ${type^^} token_embd"; "$TERNPIPE" info "$model" | grep token_embd; exit 1; }
  "$TERNPIPE" logits -m "$model" "${common[@]}" --out "$tmp/ref.f32" --out-ids "$tmp/ref.ids" 2>"$tmp/ref.err" ||
    { echo "FAIL $type 1 rank"; cat "$tmp/ref.err"; exit 1; }
  "$TERNPIPE" logits -m "$model" "${common[@]}" --head-type q8_0 --out "$tmp/h8.f32" --out-ids "$tmp/h8.ids" 2>"$tmp/h8.err" ||
    { echo "FAIL $type --head-type q8_0"; cat "$tmp/h8.err"; exit 1; }
  cmp -s "$tmp/ref.f32" "$tmp/h8.f32" &&
    { echo "FAIL $type: --head-type q8_0 gave the float head's logits bit for bit"; exit 1; }
  h8_splits "$type" "$model"
  for sp in "even" "1,2:even" "1,2:16,1024" "2,2:160,64000"; do
    mpirun_ -np 3 "$TERNPIPE" logits -m "$model" "${common[@]}" --split "$sp" --out "$tmp/g3.f32" --out-ids "$tmp/g3.ids" 2>"$tmp/g3.err" ||
      { echo "FAIL $type np 3 split $sp"; cat "$tmp/g3.err"; exit 1; }
    cmp -s "$tmp/ref.f32" "$tmp/g3.f32" && cmp -s "$tmp/ref.ids" "$tmp/g3.ids" ||
      { echo "FAIL $type np 3 split $sp: logits differ from 1 rank"; exit 1; }
    echo "ok $type np 3 split $sp: logits and tokens bitwise equal to 1 rank"
  done
done
# an F16 table with --head-type q8_0 (lookup from the F16 table on rank 0, the int8 head rows
# wherever the split puts them): every split gives the bits of one rank
model=$tmp/tiny-f16.gguf
"$TERNPIPE" synth --shape tiny --seed 11 -o "$model" 2>"$tmp/synth.err" ||
  { echo "FAIL synth f16"; cat "$tmp/synth.err"; exit 1; }
"$TERNPIPE" logits -m "$model" "${common[@]}" --head-type q8_0 --out "$tmp/h8.f32" --out-ids "$tmp/h8.ids" 2>"$tmp/h8.err" ||
  { echo "FAIL f16 --head-type q8_0"; cat "$tmp/h8.err"; exit 1; }
h8_splits f16 "$model"
echo "quantized token_embd: all passed"
