#!/usr/bin/env bash
# The scaling-study harness on a tiny grid (default model, 1..3 ranks, 2 stream counts, each
# point also simulated): JSON lines, plots and report are produced, every figure in them is a
# finite number, and a rerun skips the points already done.
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_hwloc_base_binding_policy=none
out=$tmp/study
timeout 900 python3 "$TERN_SOURCE_DIR/scripts/scaling" --ternpipe "$TERNPIPE" --out "$out" \
  --ranks 1,2,3 --streams 1,4 --npp 8 --ntg 8 --threads 1 --simulate --point-timeout 240 >"$tmp/run1.log" 2>&1 || {
  echo "FAIL: the harness failed"; cat "$tmp/run1.log"; exit 1; }
cat "$tmp/run1.log"
python3 - "$out" <<'PY'
import json, math, os, sys
out = sys.argv[1]
pts = [json.loads(l) for l in open(os.path.join(out, "points.jsonl")) if l.strip()]
assert len(pts) == 6, f"expected 6 points, got {len(pts)}"
def numbers(x, path):
    if isinstance(x, bool):
        return
    if isinstance(x, (int, float)):
        assert math.isfinite(x), f"{path} is not a finite number: {x}"
    elif isinstance(x, dict):
        for k, v in x.items():
            numbers(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            numbers(v, f"{path}[{i}]")
for p in pts:
    assert "error" not in p, f"point failed: {p.get('error')}"
    m, s = p["measured"], p["simulated"]
    for k in ("tok_s", "decode_tok_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms",
              "bubble", "hop_p50_ms"):
        assert isinstance(m[k], (int, float)), f"measured {k} missing"
    assert m["tok_s"] > 0 and s["tok_s"] > 0
    assert len(m["busy"]) == p["ranks"] == len(m["peak_rss_bytes"]) == len(s["busy"])
    assert all(r > 0 for r in m["peak_rss_bytes"])
    assert p["machine"]["cores"] >= 1 and p["machine"]["read_bandwidth_gbs"] > 0
    numbers(p, "point")
report = open(os.path.join(out, "report.md")).read()
rows = [l for l in report.splitlines() if l.startswith("| ") and l[2].isdigit()]
assert len(rows) == 6, f"report has {len(rows)} rows"
for r in rows:
    for cell in r.strip("|").split("|")[6:9]:
        cell = cell.strip().rstrip("%")
        float(cell)  # every figure a number
for png in ("throughput_vs_ranks.png", "efficiency_vs_ranks.png", "throughput_vs_streams.png",
            "latency_vs_streams.png", "busy.png"):
    data = open(os.path.join(out, png), "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, f"{png} is not a plot"
    assert png in report, f"report does not show {png}"
print("ok: 6 points, report and 5 plots, every figure a number")
PY
timeout 300 python3 "$TERN_SOURCE_DIR/scripts/scaling" --ternpipe "$TERNPIPE" --out "$out" \
  --ranks 1,2,3 --streams 1,4 --npp 8 --ntg 8 --threads 1 --simulate >"$tmp/run2.log" 2>&1
[ "$(grep -c 'done before, skipped' "$tmp/run2.log")" -eq 6 ] || { echo "FAIL: the rerun did not skip the done points"; cat "$tmp/run2.log"; exit 1; }
[ "$(wc -l < "$out/points.jsonl")" -eq 6 ] || { echo "FAIL: the rerun added points"; exit 1; }
echo "ok: resumed, 6 points skipped"
echo "scaling: all passed"
