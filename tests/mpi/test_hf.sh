#!/usr/bin/env bash
# Hugging Face directories through the whole engine (-m DIR): reference/tiny-large-hf gives
# bitwise equal logits on 1..4 ranks (even and auto splits, head split over ranks), its
# `ternpipe convert --hf` GGUF gives the directory's logits bitwise, and reference/tiny-2b4t-hf
# gives the logits of reference/tiny-2b4t/model.gguf bitwise on 1..4 ranks; on every run each
# rank converts only the checkpoint tensors of its slice (reads_ok).
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

# Each rank converts only its own tensors: its "model: DIR: read ..." line names exactly the
# layers of its slice (the engine's --verbose line), the embedding only on rank 0 (every row)
# or on a head rank (its rows), output_norm only where the final norm or the head runs, and
# counts the layer's tensors (11, or 18 with the packed weights' scales) plus those.
reads_ok() { # name, stderr file, ranks, vocab, layers, checkpoint tensors per layer
  local name=$1 err=$2 np=$3 nv=$4 layers=$5 per=$6 r
  for ((r = 0; r < np; r++)); do
    local eng rd l0 l1 v0 v1 want n
    eng=$(grep -m1 -E "^\[r$r\] layers \[[0-9]+,[0-9]+\), head rows" "$err") ||
      { echo "FAIL $name: no verbose slice line for rank $r"; cat "$err"; exit 1; }
    rd=$(grep -m1 "^\[r$r\] model: .*: read " "$err") ||
      { echo "FAIL $name: no reads line for rank $r"; cat "$err"; exit 1; }
    read -r l0 l1 v0 v1 < <(sed -E 's/.*layers \[([0-9]+),([0-9]+)\), head rows \[([0-9]+),([0-9]+)\).*/\1 \2 \3 \4/' <<<"$eng")
    n=$((per * (l1 - l0)))
    if [ "$l0" = "$l1" ]; then want="layers none"; else want="layers [$l0,$l1)"; fi
    if [ "$r" = 0 ]; then want+=", model.embed_tokens.weight rows [0,$nv)"; n=$((n + 1))
    elif [ "$v1" -gt "$v0" ]; then want+=", model.embed_tokens.weight rows [$v0,$v1)"; n=$((n + 1)); fi
    # output_norm: the head ranks and the rank of the last layer
    if [ "$v1" -gt "$v0" ] || { [ "$l1" = "$layers" ] && [ "$l1" -gt "$l0" ]; }; then
      want+=", model.norm.weight"; n=$((n + 1))
    fi
    case "$rd" in
      *": read $n of "*": $want; "*" s") ;;
      *) echo "FAIL $name: rank $r read outside its slice: '$rd', expected 'read $n of ...: $want'"; exit 1 ;;
    esac
  done
  echo "ok $name: each rank read only its own tensors"
}
ids=$(cat "$large/ids.txt")
same() { # name, file
  cmp -s "$tmp/ref.f32" "$2" || { echo "FAIL $1: logits differ from the one-process run"; exit 1; }
  echo "ok $1"
}
"$TERNPIPE" logits -m "$large" --ids "$ids" --threads 1 --out "$tmp/ref.f32" 2>"$tmp/err" ||
  { cat "$tmp/err"; exit 1; }
[ "$(stat -c %s "$tmp/ref.f32")" -eq $((39 * 2002 * 4)) ] || { echo "FAIL: size"; exit 1; }
for n in 1 2 3 4; do
  mpirun_ -np "$n" "$TERNPIPE" logits -m "$large" --ids "$ids" --split even --verbose \
    --out "$tmp/np$n.f32" 2>"$tmp/err" || { cat "$tmp/err"; exit 1; }
  same "large np$n-even" "$tmp/np$n.f32"
  reads_ok "large np$n-even" "$tmp/err" "$n" 2002 3 11
done
mpirun_ -np 3 "$TERNPIPE" logits -m "$large" --ids "$ids" --split auto --verbose \
  --out "$tmp/auto.f32" 2>"$tmp/err" || { cat "$tmp/err"; exit 1; }
same "large np3-auto" "$tmp/auto.f32"
reads_ok "large np3-auto" "$tmp/err" 3 2002 3 11
# the head split over two workers: each converts only its rows of the tied embedding
mpirun_ -np 4 "$TERNPIPE" logits -m "$large" --ids "$ids" --split 1,3,3:0,512,1024 --verbose \
  --out "$tmp/head.f32" 2>"$tmp/err" || { cat "$tmp/err"; exit 1; }
same "large np4 head split" "$tmp/head.f32"
reads_ok "large np4 head split" "$tmp/err" 4 2002 3 11

"$TERNPIPE" convert --hf "$large" -o "$tmp/large.gguf" >"$tmp/conv.out" 2>"$tmp/err" ||
  { cat "$tmp/err"; exit 1; }
grep -q "bitwise equal" "$tmp/conv.out" || { echo "FAIL convert: $(cat "$tmp/conv.out")"; exit 1; }
"$TERNPIPE" logits -m "$tmp/large.gguf" --ids "$ids" --out "$tmp/conv.f32" 2>/dev/null
same "large convert --hf round trip" "$tmp/conv.f32"
# --type f16: trits in F16 and an F32 .scale per projection, exact too (2 ranks)
"$TERNPIPE" convert --hf "$large" -o "$tmp/large16.gguf" --type f16 >"$tmp/conv.out" 2>"$tmp/err" ||
  { cat "$tmp/err"; exit 1; }
grep -q "bitwise equal" "$tmp/conv.out" || { echo "FAIL convert f16: $(cat "$tmp/conv.out")"; exit 1; }
mpirun_ -np 2 "$TERNPIPE" logits -m "$tmp/large16.gguf" --ids "$ids" --out "$tmp/conv16.f32" \
  2>"$tmp/err" || { cat "$tmp/err"; exit 1; }
same "large convert --hf --type f16 round trip, np2" "$tmp/conv16.f32"

ids2=$(cat "$TERN_FIXTURES/reference/tiny-2b4t/ids.txt")
"$TERNPIPE" logits -m "$gg2b" --ids "$ids2" --out "$tmp/ref.f32" 2>/dev/null
for n in 1 2 3 4; do
  mpirun_ -np "$n" "$TERNPIPE" logits -m "$hf2b" --ids "$ids2" --split even --verbose \
    --out "$tmp/hf2b.f32" 2>"$tmp/err" || { cat "$tmp/err"; exit 1; }
  same "tiny-2b4t-hf np$n = tiny-2b4t model.gguf" "$tmp/hf2b.f32"
  reads_ok "tiny-2b4t-hf np$n" "$tmp/err" "$n" 1024 3 18
done
echo "test_hf: all ok"
