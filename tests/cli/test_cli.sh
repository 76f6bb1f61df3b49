#!/usr/bin/env bash
# The CLI contract as a new user meets it: convert, tokenize (all 46 llama.cpp vectors, read
# from stdin as a whole), detokenize round trip, info, and one-line errors with a non-zero
# exit for bad input (missing file, corrupt GGUF, bad ids, unsupported architecture).
set -uo pipefail
: "${TERNPIPE:?}" "${TERN_FIXTURES:?}"
# every case below reads the shared fixtures (vocab, vectors, reference model)
if [ ! -r "$TERN_FIXTURES/tokenizer/llama3.tiktoken" ]; then
  echo "SKIP: fixtures missing at $TERN_FIXTURES (set TERN_FIXTURES to the shared fixtures folder)"
  exit 77
fi
# commands that run a model start MPI, and Open MPI keeps allocations until exit: leak checking
# is for the unit tests
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
ok() { echo "ok $1"; }
bad() { echo "FAIL $1"; fail=1; }

"$TERNPIPE" convert --tiktoken "$TERN_FIXTURES/tokenizer/llama3.tiktoken" -o "$tmp/v.gguf" && ok convert || bad convert
"$TERNPIPE" info "$tmp/v.gguf" | grep -q "128256 tokens, 280147 merges" && ok info-vocab || bad info-vocab

# the 46 vectors through the CLI (the separator splits tests; each may contain newlines)
python3 - "$TERN_FIXTURES/tokenizer" "$tmp" <<'PY' || fail=1
import sys, os
d, tmp = sys.argv[1], sys.argv[2]
inp = open(os.path.join(d, "llama-bpe.inp"), "rb").read().split(b"\n__ggml_vocab_test__\n")[:-1]
for i, t in enumerate(inp):
    open(os.path.join(tmp, "case%02d.txt" % i), "wb").write(t)
print(len(inp))
PY
n=0; good=0
while IFS= read -r want; do
  f=$(printf "%s/case%02d.txt" "$tmp" "$n")
  got=$("$TERNPIPE" tokenize -m "$tmp/v.gguf" --no-bos < "$f" | sed 's/^/ /; s/^ $//')
  [ "$got" = "$want" ] && good=$((good + 1)) || echo "case $n: got '$got' expected '$want'"
  # round trip through detokenize
  "$TERNPIPE" tokenize -m "$tmp/v.gguf" --no-bos < "$f" | "$TERNPIPE" detokenize -m "$tmp/v.gguf" > "$tmp/back"
  cmp -s "$f" "$tmp/back" || { echo "case $n: detokenize round trip differs"; good=$((good - 1000)); }
  n=$((n + 1))
done < "$TERN_FIXTURES/tokenizer/llama-bpe.out"
[ "$n" -eq 46 ] && [ "$good" -eq 46 ] && ok "tokenize 46/46" || bad "tokenize $good/$n"
printf 'x' | "$TERNPIPE" tokenize -m "$tmp/v.gguf" | grep -qx "128000 87" && ok bos || bad bos
printf '<|eot_id|>' | "$TERNPIPE" tokenize -m "$tmp/v.gguf" --no-bos --parse-special | grep -qx "128009" && ok parse-special || bad parse-special

expect_err() { # name, pattern, command...
  local name=$1 pat=$2; shift 2
  "$@" > "$tmp/out" 2> "$tmp/err" < /dev/null
  local rc=$?
  if [ $rc -ne 0 ] && [ "$(wc -l < "$tmp/err")" -ge 1 ] && grep -q -- "$pat" "$tmp/err" && [ $rc -lt 128 ]; then ok "$name"; else bad "$name (rc $rc): $(head -3 "$tmp/err")"; fi
}
expect_err missing-file "gguf: $tmp/nope.gguf: open" "$TERNPIPE" info "$tmp/nope.gguf"
head -c 1000 "$TERN_FIXTURES/gguf/ggml-vocab-gpt-2.gguf" > "$tmp/trunc.gguf"
expect_err truncated "gguf: $tmp/trunc.gguf: .*got .*expected" "$TERNPIPE" info "$tmp/trunc.gguf"
printf 'GGUF\x07\0\0\0' > "$tmp/ver.gguf"; head -c 64 /dev/zero >> "$tmp/ver.gguf"
expect_err version "version: got 7, expected 2 or 3" "$TERNPIPE" info "$tmp/ver.gguf"
echo "5 999999" > "$tmp/ids"
expect_err detok-bad-id "expected an id 0..128255" sh -c "\"$TERNPIPE\" detokenize -m \"$tmp/v.gguf\" < \"$tmp/ids\""
expect_err unsupported-arch "architecture: got 'llama'" "$TERNPIPE" logits -m "$tmp/v.gguf" --ids "1 2" --out "$tmp/l.f32"
m="$TERN_FIXTURES/reference/tiny-2b4t/model.gguf"
expect_err ids-vocab "got id 5000, expected 0..1023" "$TERNPIPE" logits -m "$m" --ids "1 5000" --out "$tmp/l.f32"
expect_err ids-context "expected at most 256" "$TERNPIPE" logits -m "$m" --ids "$(seq -s ' ' 1 300)" --out "$tmp/l.f32"
expect_err ids-syntax "expected non-negative integers" "$TERNPIPE" logits -m "$m" --ids "1 x2" --out "$tmp/l.f32"
"$TERNPIPE" logits -m "$m" --ids "$(cat "$TERN_FIXTURES/reference/tiny-2b4t/ids.txt")" --out "$tmp/l.f32" 2>/dev/null \
  && [ "$(stat -c %s "$tmp/l.f32")" -eq 196608 ] && ok logits-size || bad logits-size
# the fixture's vocab (llama-bpe, 1024 tokens) tokenizes as bitnet.cpp did (fixture README)
printf 'First Citizen: Before we proceed any further, hear me speak.' | "$TERNPIPE" tokenize -m "$m" \
  | grep -qx "1014 460 572 58 32 715 546 323 928 309 319 950 278 350 629 44 667 332 642 46" && ok fixture-tokens || bad fixture-tokens
# synth writes the official layout and passes info; a generate run on it streams and stops
TERN_FIXTURES="$TERN_FIXTURES" "$TERNPIPE" synth --shape tiny --seed 5 -o "$tmp/s.gguf" 2>/dev/null && \
  "$TERNPIPE" info "$tmp/s.gguf" > "$tmp/info" && grep -q "blk.1.ffn_down.weight *I2_S *{768, 256}" "$tmp/info" && \
  grep -q "token_embd.weight *F16 *{256, 128256}" "$tmp/info" && grep -q "128256 tokens, 280147 merges" "$tmp/info" && ok synth-info || bad synth-info
"$TERNPIPE" generate -m "$tmp/s.gguf" -p "Hello" -n 5 > "$tmp/gen" 2> "$tmp/gen.err" && grep -q "decode: 5 tokens" "$tmp/gen.err" && ok generate || bad generate
[ $fail -eq 0 ] && echo "cli: all passed"
exit $fail
