#!/usr/bin/env python3
"""load.py: a small load client for `ternpipe serve` (Python standard library only).

For each concurrency level, that many client threads send streaming completions back to back
until --requests have finished, and the script reports:
  req/s            finished requests per second of wall time
  tok/s            generated tokens per second (usage.completion_tokens)
  TTFT p50/p99     request sent -> first text chunk received
  ITL p50/p99      per request, (last chunk - first chunk) / (tokens - 1): the decode pace a
                   client sees; chunk gaps p50/p99 are also shown (a chunk can carry several
                   tokens when the client or the server lags)
Example:
  scripts/load.py --url http://127.0.0.1:8080 --concurrency 1,16,64 --requests 64 --max-tokens 64
"""
import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def one(url, args, seed):
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=args.timeout)
    body = {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}
    if args.chat:
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": args.prompt}]
    else:
        path = "/v1/completions"
        body["prompt"] = args.prompt
    h = {"Content-Type": "application/json"}
    if args.api_key:
        h["Authorization"] = "Bearer " + args.api_key
    t0 = time.perf_counter()
    c.request("POST", path, body=json.dumps(body), headers=h)
    r = c.getresponse()
    if r.status != 200:
        data = r.read()
        c.close()
        return {"status": r.status, "error": data[:200]}
    chunks, tokens, err = [], 0, None
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        if line == b"data: [DONE]":
            break
        ev = json.loads(line[6:])
        if "error" in ev:
            err = ev["error"]
            break
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
        for ch in ev.get("choices", []):
            text = ch.get("delta", {}).get("content") if args.chat else ch.get("text")
            if text:
                chunks.append(time.perf_counter())
    c.close()
    return {"status": 200, "t0": t0, "chunks": chunks, "tokens": tokens, "error": err,
            "t_end": time.perf_counter()}


def level(url, args, conc):
    results, lock = [], threading.Lock()
    left = [args.requests]

    def worker(w):
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
                seed = left[0]
            try:
                res = one(url, args, seed)
            except Exception as e:  # counted as a failure
                res = {"status": -1, "error": repr(e)}
            with lock:
                results.append(res)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200 and not r.get("error") and r["chunks"]]
    ttft = [(r["chunks"][0] - r["t0"]) * 1e3 for r in ok]
    itl = [(r["chunks"][-1] - r["chunks"][0]) / (r["tokens"] - 1) * 1e3
           for r in ok if r["tokens"] > 1 and len(r["chunks"]) > 1]
    gaps = [(b - a) * 1e3 for r in ok for a, b in zip(r["chunks"], r["chunks"][1:])]
    toks = sum(r["tokens"] for r in ok)
    return {"concurrency": conc, "requests": len(results), "ok": len(ok),
            "failed": len(results) - len(ok), "wall_s": wall, "req_s": len(ok) / wall,
            "tok_s": toks / wall, "ttft_p50_ms": pct(ttft, 50), "ttft_p99_ms": pct(ttft, 99),
            "itl_p50_ms": pct(itl, 50), "itl_p99_ms": pct(itl, 99),
            "gap_p50_ms": pct(gaps, 50), "gap_p99_ms": pct(gaps, 99),
            "errors": sorted({str(r.get("error") or r["status"]) for r in results
                              if r not in ok})[:3]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--requests", type=int, default=64, help="requests per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--prompt", default="Once upon a time, there was a little")
    ap.add_argument("--chat", action="store_true")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", action="store_true", help="one JSON object per level")
    args = ap.parse_args()
    if not args.json:
        print(f"{'conc':>4} {'ok':>5} {'fail':>4} {'req/s':>7} {'tok/s':>8} "
              f"{'TTFT p50':>9} {'p99':>8} {'ITL p50':>8} {'p99':>7} {'gap p50':>8} {'p99':>7}  (ms)")
    failed = 0
    for conc in [int(x) for x in args.concurrency.split(",")]:
        r = level(args.url, args, conc)
        failed += r["failed"]
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{conc:>4} {r['ok']:>5} {r['failed']:>4} {r['req_s']:>7.2f} {r['tok_s']:>8.1f} "
                  f"{r['ttft_p50_ms']:>9.1f} {r['ttft_p99_ms']:>8.1f} {r['itl_p50_ms']:>8.2f} "
                  f"{r['itl_p99_ms']:>7.2f} {r['gap_p50_ms']:>8.2f} {r['gap_p99_ms']:>7.2f}"
                  + (f"  errors: {r['errors']}" if r["failed"] else ""))
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
