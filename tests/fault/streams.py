#!/usr/bin/env python3
"""streams.py: concurrent streaming requests against a (supervised) `ternpipe serve`, with a
fault injected while they run (standard library only; helpers from tests/server/client.py).

Usage:
  streams.py run URL N OUT.json [--tokens M] [--eos ID] [--after K] [--fault CMD]
      N streams at once (completions and chat, greedy and seeded-sampled in turn), each asking
      for M tokens with the end-of-text id ID biased away, so every one runs its full length.
      With --fault, CMD runs in a shell once every stream has K tokens (or has ended); its
      start time is saved. OUT.json gets each stream's text, finish, usage, [DONE] and errors.
  streams.py compare REF.json GOT.json
      every stream of GOT has exactly the text of REF's (same request), finish "length", M
      completion tokens, one [DONE] and no error: nothing lost, nothing sent twice.
  streams.py failed GOT.json
      every stream ended with an in-band error event and [DONE] (no hang, no silent end).
Every wait is bounded (TERN_CLIENT_TIMEOUT, default 120 s).
"""
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
import client  # noqa: E402

TIMEOUT = client.TIMEOUT


def body(i, tokens, eos):
    chat = i % 4 >= 2
    b = {"max_tokens": tokens, "logit_bias": {str(eos): -100},
         "stream_options": {"include_usage": True}}
    if i % 2:
        b.update(temperature=0.9, top_p=0.95, seed=1000 + i)
    else:
        b.update(temperature=0)
    if chat:
        b["messages"] = [{"role": "user", "content": f"Tell me story number {i}."}]
    else:
        b["prompt"] = f"Once upon a time, in story {i},"
    return chat, b


def one(url, i, tokens, eos, res, progress):
    chat, b = body(i, tokens, eos)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    out = {"i": i, "chat": chat, "text": "", "events": 0, "done": False, "errors": [],
           "finish": None, "usage": None, "status": None}
    c = client.conn_for(url)
    try:
        c.request("POST", path, body=json.dumps(dict(b, stream=True)),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        out["status"] = r.status
        if r.status != 200:
            out["errors"].append(r.read().decode("utf-8", "replace")[:300])
            return
        while True:
            line = r.readline()
            if not line:
                break
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            if not line.startswith(b"data: "):
                out["errors"].append(f"bad SSE line {line[:80]!r}")
                break
            p = line[6:]
            if p == b"[DONE]":
                if out["done"]:
                    out["errors"].append("[DONE] twice")
                out["done"] = True
                continue
            e = json.loads(p)
            if "error" in e:
                out["errors"].append(e["error"].get("message", "?"))
                continue
            if e.get("usage"):
                out["usage"] = e["usage"]
            for ch in e.get("choices", []):
                piece = (ch.get("delta", {}).get("content") if chat else ch.get("text")) or ""
                out["text"] += piece
                if ch.get("finish_reason"):
                    out["finish"] = ch["finish_reason"]
            out["events"] += 1
            progress[i] = out["events"]
    except Exception as ex:  # a dropped connection is a result to report, not a crash
        out["errors"].append(f"client: {type(ex).__name__}: {ex}")
    finally:
        c.close()
        progress[i] = 1 << 30
        res[i] = out


def cmd_run(url, n, path, args):
    tokens, eos, after, fault = 64, 0, 8, None
    k = 0
    while k < len(args):
        a, v = args[k], args[k + 1]
        if a == "--tokens":
            tokens = int(v)
        elif a == "--eos":
            eos = int(v)
        elif a == "--after":
            after = int(v)
        elif a == "--fault":
            fault = v
        else:
            raise SystemExit(f"streams.py: unknown option {a}")
        k += 2
    res, progress = [None] * n, [0] * n
    ts = [threading.Thread(target=one, args=(url, i, tokens, eos, res, progress), daemon=True)
          for i in range(n)]
    t0 = time.time()
    for t in ts:
        t.start()
    fault_at = None
    if fault:
        while time.time() - t0 < TIMEOUT and min(progress) < after:
            time.sleep(0.005)
        fault_at = time.time()
        subprocess.run(fault, shell=True, check=False, timeout=60)
    for t in ts:
        t.join(max(0.1, TIMEOUT - (time.time() - t0)))
    hung = [i for i, r in enumerate(res) if r is None]
    json.dump({"tokens": tokens, "fault_at": fault_at, "t0": t0, "t1": time.time(),
               "hung": hung, "streams": res}, open(path, "w"))
    if hung:
        print(f"FAIL: streams {hung} still running after {TIMEOUT:.0f} s")
        return 1
    got = sum(r["events"] for r in res)
    print(f"ok {n} streams ended in {time.time() - t0:.2f} s ({got} events)"
          + (f"; fault at {fault_at - t0:.2f} s" if fault else ""))
    return 0


def cmd_compare(ref_path, got_path):
    ref, got = json.load(open(ref_path)), json.load(open(got_path))
    bad = 0
    for a, b in zip(ref["streams"], got["streams"]):
        i = a["i"]
        why = []
        if b["errors"]:
            why.append(f"errors {b['errors'][:2]}")
        if not b["done"]:
            why.append("no [DONE]")
        if b["finish"] != "length":
            why.append(f"finish {b['finish']}")
        u = b.get("usage") or {}
        if u.get("completion_tokens") != got["tokens"]:
            why.append(f"completion_tokens {u.get('completion_tokens')}, expected {got['tokens']}")
        if b["text"] != a["text"]:
            n = next((k for k in range(min(len(a["text"]), len(b["text"])))
                      if a["text"][k] != b["text"][k]), min(len(a["text"]), len(b["text"])))
            why.append(f"text differs at char {n}: {b['text'][n:n + 30]!r} vs "
                       f"{a['text'][n:n + 30]!r} ({len(b['text'])} vs {len(a['text'])} chars)")
        if why:
            bad += 1
            print(f"FAIL stream {i} ({'chat' if a['chat'] else 'completion'}): " + "; ".join(why))
    if len(ref["streams"]) != len(got["streams"]):
        print("FAIL: stream counts differ")
        bad += 1
    if bad:
        return 1
    print(f"ok {len(got['streams'])} streams: full length, one [DONE], no error, texts equal to "
          f"the unfaulted run")
    return 0


def cmd_failed(got_path):
    got = json.load(open(got_path))
    bad = [s["i"] for s in got["streams"] if not (s["errors"] and (s["done"] or s["status"] != 200))]
    if bad:
        print(f"FAIL: streams {bad} ended without an error event and [DONE]: "
              f"{[got['streams'][i] for i in bad[:2]]}")
        return 1
    print(f"ok {len(got['streams'])} streams ended with an error and [DONE]: "
          f"{got['streams'][0]['errors'][0][:140]}")
    return 0


def main(argv):
    if len(argv) >= 5 and argv[1] == "run":
        return cmd_run(argv[2], int(argv[3]), argv[4], argv[5:])
    if len(argv) == 4 and argv[1] == "compare":
        return cmd_compare(argv[2], argv[3])
    if len(argv) == 3 and argv[1] == "failed":
        return cmd_failed(argv[2])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
