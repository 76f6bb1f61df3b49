#!/usr/bin/env bash
# Hugging Face directories through the whole engine (-m DIR): reference/tiny-large-hf gives
# bitwise equal logits on 1..4 ranks (even and auto splits, head split over ranks), its
# `ternpipe convert --hf` GGUF gives the directory's logits bitwise, and reference/tiny-2b4t-hf
# gives the logits of reference/tiny-2b4t/model.gguf bitwise.
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_FIXTURES:?}"
large=$TERN_FIXTURES/reference/tiny-large-hf
hf2b=$TERN_FIXTURES/reference/tiny-2b4t-hf
gg2b=$TERN_FIXTURES/reference/tiny-2b4t/model.gguf
for f in "$large/model.safetensors" "$hf2b/model.safetensors" "$gg2b"; do
  [ -e "$f" ] || { echo "SKIP: fixture $f is missing"; exit 77; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "${BASH_SOURCE[0]}")/mpi-env.sh"
export OMPI_MCA_btl=self,vader,tcp
mpirun_() { timeout 600 mpirun --oversubscribe --bind-to none "$@"; }

ids=$(cat "$large/ids.txt")
same() { # name, file
  cmp -s "$tmp/ref.f32" "$2" || { echo "FAIL $1: logits differ from the one-process run"; exit 1; }
  echo "ok $1"
}
"$TERNPIPE" logits -m "$large" --ids "$ids" --threads 1 --out "$tmp/ref.f32" 2>"$tmp/err" ||
  { cat "$tmp/err"; exit 1; }
[ "$(stat -c %s "$tmp/ref.f32")" -eq $((39 * 2002 * 4)) ] || { echo "FAIL: size"; exit 1; }
for n in 1 2 3 4; do
  mpirun_ -np "$n" "$TERNPIPE" logits -m "$large" --ids "$ids" --split even \
    --out "$tmp/np$n.f32" 2>"$tmp/err" || { cat "$tmp/err"; exit 1; }
  same "large np$n-even" "$tmp/np$n.f32"
done
mpirun_ -np 3 "$TERNPIPE" logits -m "$large" --ids "$ids" --split auto --out "$tmp/auto.f32" \
  2>"$tmp/err" || { cat "$tmp/err"; exit 1; }
same "large np3-auto" "$tmp/auto.f32"

"$TERNPIPE" convert --hf "$large" -o "$tmp/large.gguf" >"$tmp/conv.out" 2>"$tmp/err" ||
  { cat "$tmp/err"; exit 1; }
grep -q "bitwise equal" "$tmp/conv.out" || { echo "FAIL convert: $(cat "$tmp/conv.out")"; exit 1; }
"$TERNPIPE" logits -m "$tmp/large.gguf" --ids "$ids" --out "$tmp/conv.f32" 2>/dev/null
same "large convert --hf round trip" "$tmp/conv.f32"

ids2=$(cat "$TERN_FIXTURES/reference/tiny-2b4t/ids.txt")
"$TERNPIPE" logits -m "$gg2b" --ids "$ids2" --out "$tmp/ref.f32" 2>/dev/null
mpirun_ -np 2 "$TERNPIPE" logits -m "$hf2b" --ids "$ids2" --out "$tmp/hf2b.f32" 2>"$tmp/err" ||
  { cat "$tmp/err"; exit 1; }
same "tiny-2b4t-hf np2 = tiny-2b4t model.gguf" "$tmp/hf2b.f32"
echo "test_hf: all ok"
