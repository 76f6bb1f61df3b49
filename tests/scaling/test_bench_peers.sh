#!/usr/bin/env bash
# scripts/bench-peers end to end with stand-in peers: two checkouts whose tools print exactly
# the formats of llama-bench -o json and llama-batched-bench's table (as their sources write
# them) with figures that change per round, one checkout that is not one, and the real
# ternpipe on the default model. Checked: the medians over the rounds are the stand-ins'
# middle figures, the table has every engine's row and names the one that did not run, the
# JSON holds every run, ternpipe's figures and limits are finite and positive.
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
mkpeer() { # DIR PP TG LONG OPT: tools printing PP/TG/LONG times the round (1, 2, 3); the
  # long-context run (96 positions, 8 tokens) by OPT: -gp (ik_llama.cpp's) or -d (mainline's)
  local d=$1 bin=$1/build/bin
  mkdir -p "$bin"
  echo 'project(stand_in)' >"$d/CMakeLists.txt"
  cat >"$bin/llama-bench" <<EOF
#!/bin/sh
case " \$* " in
*" $5 "*)
  n=\$(cat "$d/round")
  if [ "$5" = -gp ]; then row='"n_prompt": 96, "n_gen": 8'; else row='"n_prompt": 0, "n_gen": 8, "n_depth": 96'; fi
  printf '[\n  {%s, "avg_ts": %d.125000, "stddev_ts": 0.1}\n]\n' "\$row" \$(($4 * n))
  exit 0 ;;
*" -gp "* | *" -d "*)
  echo "error: invalid parameter for argument" >&2
  exit 1 ;;
esac
n=\$(cat "$d/round" 2>/dev/null || echo 0); n=\$((n + 1)); echo \$n >"$d/round"
echo "build: stand-in" >&2
cat <<JSON
[
  {"n_prompt": 128, "n_gen": 0, "avg_ts": \$(($2 * n)).500000, "stddev_ts": 1.0},
  {"n_prompt": 0, "n_gen": 64, "avg_ts": \$(($3 * n)).250000, "stddev_ts": 0.5}
]
JSON
EOF
  cat >"$bin/llama-batched-bench" <<EOF
#!/bin/sh
n=\$(cat "$d/round")
printf '\nmain: n_kv_max = 8192, n_batch = 2048\n\n' >&2
printf '|%6s | %6s | %4s | %6s | %8s | %8s | %8s | %8s | %8s | %8s |\n' PP TG B N_KV "T_PP s" "S_PP t/s" "T_TG s" "S_TG t/s" "T s" "S t/s" >&2
for b in 1 2; do
  printf '|%6d | %6d | %4d | %6d | %8.3f | %8.2f | %8.3f | %8.2f | %8.3f | %8.2f |\n' 8 4 \$b 12 0.5 100 0.25 \$(($3 * b * n)) 0.75 50 >&2
done
EOF
  cat >"$bin/llama-quantize" <<'EOF'
#!/bin/sh
# stand-in: ... IN OUT TYPE THREADS end the arguments
eval "in=\${$(($# - 3))} out=\${$(($# - 2))}"
cp "$in" "$out"
EOF
  chmod +x "$bin"/*
}
mkpeer "$tmp/bitnet" 10 3 2 -d
mkpeer "$tmp/ik" 20 5 4 -gp
mkdir -p "$tmp/notapeer"
out=$tmp/out
timeout 900 python3 "$TERN_SOURCE_DIR/scripts/bench-peers" --out "$out" --ternpipe "$TERNPIPE" \
  --model "$TERN_SOURCE_DIR/models/tinystories-bitnet.gguf" --variants f16 --rounds 3 \
  --bitnet "$tmp/bitnet" --ik "$tmp/ik" --llama "$tmp/notapeer" --npp 8 --ntg 4 --npl 1,2 \
  --long 96,8 --threads 1 >"$tmp/run.log" 2>&1 || { echo "FAIL: bench-peers failed"; cat "$tmp/run.log"; exit 1; }
cat "$out/table.md"
python3 - "$out" <<'PY'
import json, math, os, sys
out = sys.argv[1]
r = json.load(open(os.path.join(out, "results.json")))
m = r["medians"]
# stand-ins: round n prints PP*n + .5 and TG*n + .25: the median of rounds 1..3 is round 2's
assert m["bitnet/f16"]["prefill_tok_s"] == 20.5, m["bitnet/f16"]
assert m["bitnet/f16"]["decode1_tok_s"] == 6.25, m["bitnet/f16"]
assert m["bitnet/f16"]["prefill_range"] == [10.5, 30.5]
assert m["ik/f16"]["prefill_tok_s"] == 40.5 and m["ik/f16"]["decode1_tok_s"] == 10.25
# batched: S_TG = TG * B * n: round 2's
assert m["ik/f16"]["decode_tok_s"] == {"1": 10.0, "2": 20.0} or \
    m["ik/f16"]["decode_tok_s"] == {1: 10.0, 2: 20.0}, m["ik/f16"]["decode_tok_s"]
# long context: round 2's LONG * 2 + .125, by -d in one stand-in and -gp in the other
assert m["bitnet/f16"]["decode_long_tok_s"] == 4.125, m["bitnet/f16"]
assert m["ik/f16"]["decode_long_tok_s"] == 8.125 and m["ik/f16"]["decode_long_range"] == [4.125, 12.125]
assert "llama/f16" in r["errors"] and "CMakeLists.txt" in r["errors"]["llama/f16"], r["errors"]
t = m["ternpipe/f16"]
assert t["rounds"] == 3
for k in ("prefill_tok_s", "decode1_tok_s", "decode_long_tok_s", "peak_rss_single_bytes",
          "peak_rss_batched_bytes"):
    assert isinstance(t[k], (int, float)) and math.isfinite(t[k]) and t[k] > 0, (k, t[k])
for s, v in t["decode_tok_s"].items():
    assert math.isfinite(v) and v > 0, (s, v)
for k in ("read_bandwidth_gbs", "roofline_tok_s", "int8_peak_gmacs", "fp32_peak_gmacs",
          "tgemm_gmacs", "prefill_ceiling_tok_s"):
    assert t["limits"][k] > 0, (k, t["limits"])
runs = [x for x in r["runs"] if x["engine"] == "ternpipe"]
assert len(runs) == 9, len(runs)
table = open(os.path.join(out, "table.md")).read()
for name in ("| ternpipe | F16 |", "| bitnet.cpp | F16 | 20.5 (10-30) | 6.2 (3.2-9.2)", "| ik_llama.cpp | F16 |",
             "| 8.1 (4.1-12.1) |", "decode at 96 positions tok/s",
             "| llama.cpp | f16 | not run:"):
    assert name in table, (name, table)
print("bench-peers: medians, table and JSON as expected")
PY
# --from-runs: the same medians and table again from runs.jsonl alone (failures included),
# running nothing; a line that is not a run record is refused by name
python3 "$TERN_SOURCE_DIR/scripts/bench-peers" --out "$tmp/again" --from-runs "$out/runs.jsonl" \
  --variants f16 --npl 1,2 --npp 8 --ntg 4 --long 96,8 --threads 1 >"$tmp/again.log" 2>&1 ||
  { echo "FAIL: --from-runs failed"; cat "$tmp/again.log"; exit 1; }
cmp "$out/table.md" "$tmp/again/table.md" ||
  { echo "FAIL: --from-runs table differs"; diff "$out/table.md" "$tmp/again/table.md"; exit 1; }
{ head -1 "$out/runs.jsonl"; echo '{"engine": "ternpipe"'; } >"$tmp/bad.jsonl"
if python3 "$TERN_SOURCE_DIR/scripts/bench-peers" --out "$tmp/bad" --from-runs "$tmp/bad.jsonl" \
  >"$tmp/bad.log" 2>&1; then
  echo "FAIL: a broken runs.jsonl was accepted"; exit 1
fi
grep -q "bad.jsonl:2: not a run record" "$tmp/bad.log" ||
  { echo "FAIL: no line number for the broken record"; cat "$tmp/bad.log"; exit 1; }
echo "bench-peers --from-runs: same table; a broken record refused"
