#!/usr/bin/env python3
"""client.py: checks of a running `ternpipe serve` with a real HTTP client (standard library only).

Usage: client.py COMMAND URL [args]
  wait URL SECONDS          poll /health until 200 (exit 1 on timeout)
  basic URL                 routes, streamed == non-streamed, seeds, chat, stop strings, errors, metrics
  concurrent URL N          N simultaneous streams, each equal to its non-streamed reference
  cancel URL                clients that disconnect mid-stream get their sequence cancelled, KV freed
  auth URL KEY              --api-key: 401 without or with a wrong key, 200 with it
  flood URL [KEY]           a server with --max-seqs 1 --max-queue 1 answers 429 when full
  drain URL PID [KEY]       SIGTERM to PID while streams run: they finish, new requests get 503
  choices URL               n > 1: each choice equals a request with seed + i, streamed and not
  json URL OUT [REF]        response_format: 50 constrained answers parse and follow their schema
  prefix URL                the prefix cache: hits give bitwise the cold run's answers, counted
Every wait is bounded; any failed check exits non-zero with a line saying what differed.
"""
import http.client
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse

TIMEOUT = float(os.environ.get("TERN_CLIENT_TIMEOUT", "120"))
KEY = None  # API key sent with every request when set


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


def conn_for(url, timeout=TIMEOUT):
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)


def request(url, method, path, body=None, headers=None, timeout=TIMEOUT):
    """-> (status, headers dict (lower-case names), body bytes)"""
    c = conn_for(url, timeout)
    h = dict(headers or {})
    if KEY and "Authorization" not in h:
        h["Authorization"] = "Bearer " + KEY
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        h.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode()
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def post(url, path, obj, **kw):
    st, h, data = request(url, "POST", path, obj, **kw)
    try:
        j = json.loads(data) if data else None
    except ValueError:
        raise Fail(f"POST {path}: status {st}, body is not JSON: {data[:200]!r}")
    return st, h, j


def stream(url, path, obj, first_only=False):
    """POST with stream: true -> (status, events (parsed JSON), done_seen, headers)"""
    obj = dict(obj, stream=True)
    c = conn_for(url)
    h = {"Content-Type": "application/json"}
    if KEY:
        h["Authorization"] = "Bearer " + KEY
    try:
        c.request("POST", path, body=json.dumps(obj), headers=h)
        r = c.getresponse()
        hd = {k.lower(): v for k, v in r.getheaders()}
        if r.status != 200:
            return r.status, [json.loads(r.read() or b"null")], False, hd
        check(hd.get("content-type", "").startswith("text/event-stream"),
              f"stream content-type: got {hd.get('content-type')}, expected text/event-stream")
        events, done = [], False
        while True:
            line = r.readline()
            if not line:
                break
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            check(line.startswith(b"data: "), f"SSE line: got {line[:80]!r}, expected 'data: '")
            payload = line[6:]
            if payload == b"[DONE]":
                done = True
                break
            events.append(json.loads(payload))
            if first_only:
                break
        return 200, events, done, hd
    finally:
        c.close()


def joined(events, chat):
    out = []
    for e in events:
        for ch in e.get("choices", []):
            if chat:
                out.append(ch.get("delta", {}).get("content") or "")
            else:
                out.append(ch.get("text") or "")
    return "".join(out)


def finish_of(events):
    f = [ch.get("finish_reason") for e in events for ch in e.get("choices", [])
         if ch.get("finish_reason")]
    return f[-1] if f else None


def usage_of(events):
    u = [e["usage"] for e in events if e.get("usage")]
    return u[-1] if u else None


def metrics(url):
    st, _, data = request(url, "GET", "/metrics")
    check(st == 200, f"/metrics: got {st}, expected 200")
    vals = {}
    for line in data.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, v = line.rpartition(" ")
        vals[name] = float(v)
    return vals


def metric_sum(vals, prefix):
    return sum(v for k, v in vals.items() if k == prefix or k.startswith(prefix + "{"))


def model_info(url):
    st, _, j = request(url, "GET", "/v1/models")
    check(st == 200, f"/v1/models: got {st}, expected 200")
    j = json.loads(j)
    check(j["object"] == "list" and len(j["data"]) == 1, f"/v1/models: {j}")
    return j["data"][0]


def expect_error(url, method, path, body, status, param=None, contains=None, headers=None):
    st, h, data = request(url, method, path, body, headers=headers)
    what = f"{method} {path} {str(body)[:60]!r}"
    check(st == status, f"{what}: got status {st}, expected {status}: {data[:300]!r}")
    try:
        j = json.loads(data)
    except ValueError:
        raise Fail(f"{what}: error body is not JSON: {data[:200]!r}")
    e = j.get("error") if isinstance(j, dict) else None
    check(isinstance(e, dict) and isinstance(e.get("message"), str) and e["message"],
          f"{what}: got {j}, expected {{error: {{message, type, param, code}}}}")
    check("type" in e and "param" in e and "code" in e, f"{what}: error fields: got {sorted(e)}")
    if status == 400:
        check(e["type"] == "invalid_request_error", f"{what}: type: got {e['type']}")
    if param == "":
        check(e["param"] is None, f"{what}: param: got {e['param']!r}, expected null")
    elif param is not None:
        check(e["param"] == param, f"{what}: param: got {e['param']!r}, expected {param!r}")
    if contains is not None:
        for c in ([contains] if isinstance(contains, str) else contains):
            check(c in e["message"], f"{what}: message {e['message']!r} lacks {c!r}")
    return h, e


# ------------------------------------------------------------------ commands

def cmd_wait(url, seconds):
    end = time.time() + float(seconds)
    last = None
    while time.time() < end:
        try:
            st, _, data = request(url, "GET", "/health", timeout=2)
            if st == 200:
                check(json.loads(data) == {"status": "ok"}, f"/health body: {data!r}")
                return
            last = f"{st} {data[:80]!r}"
            check(st == 503 and json.loads(data)["status"] in ("loading", "stopping"),
                  f"/health while starting: got {last}, expected 503 loading")
        except (OSError, http.client.HTTPException) as e:
            last = repr(e)
        time.sleep(0.1)
    raise Fail(f"/health: no 200 within {seconds} s (last: {last})")


def complete(url, chat, body):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    st, _, j = post(url, path, body)
    check(st == 200, f"{path}: got {st}: {j}")
    ch = j["choices"][0]
    text = ch["message"]["content"] if chat else ch["text"]
    check(j["object"] == ("chat.completion" if chat else "text_completion"), f"object: {j['object']}")
    check(j["id"] and isinstance(j["created"], int) and j["model"], f"envelope: {j}")
    return text, ch["finish_reason"], j["usage"]


def streamed(url, chat, body):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    st, ev, done, _ = stream(url, path, dict(body, stream_options={"include_usage": True}))
    check(st == 200, f"{path} stream: got {st}: {ev}")
    check(done, f"{path} stream: no [DONE]")
    check(all(e["object"] == ("chat.completion.chunk" if chat else "text_completion") for e in ev),
          f"stream objects: {[e['object'] for e in ev]}")
    check(len({e["id"] for e in ev}) == 1, "stream: chunk ids differ")
    return joined(ev, chat), finish_of(ev), usage_of(ev)


def same(url, chat, body, what):
    a = complete(url, chat, body)
    b = streamed(url, chat, body)
    check(a == b, f"{what}: streamed {b!r} != non-streamed {a!r}")
    u = a[2]
    check(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], f"usage sums: {u}")
    mt = body.get("max_tokens")
    if mt is not None:
        check(u["completion_tokens"] <= mt, f"{what}: {u['completion_tokens']} tokens > max {mt}")
        if a[1] == "length":
            check(u["completion_tokens"] == mt, f"{what}: length but {u['completion_tokens']} != {mt}")
    return a


def check_stop_strings(url):
    """A stop string that starts inside one token and ends in a later one."""
    base = {"prompt": "Once upon a time", "temperature": 0}
    full, fin, u = complete(url, False, dict(base, max_tokens=24))
    n = u["completion_tokens"]
    # token boundaries from the greedy prefixes (same text for every max_tokens)
    ends = []
    for k in range(1, n + 1):
        t, _, _ = complete(url, False, dict(base, max_tokens=k))
        check(full.startswith(t), f"greedy prefix {k}: {t!r} not a prefix of {full!r}")
        ends.append(len(t))
    stop = None
    starts = [0] + ends
    for j in range(len(ends) - 1):
        a, b = starts[j], ends[j]  # token j spans [a, b)
        if b - a >= 2 and ends[j + 1] > b:
            s = full[a + 1:b + 1]  # from inside token j into token j+1
            if full.find(s) == a + 1 and s.strip():
                stop = s
                break
    if stop is None:
        print(f"note: no stop string spanning tokens in {full!r}; using a suffix check only")
        return
    want = full[:full.find(stop)]
    for chat in (False,):
        body = dict(base, max_tokens=24, stop=[stop, "\u2603never"])
        text, fr, uu = same(url, chat, body, f"stop {stop!r}")
        check(text == want and fr == "stop",
              f"stop {stop!r}: got {text!r} ({fr}), expected {want!r} (stop)")
        check(uu["completion_tokens"] < n, f"stop: {uu['completion_tokens']} tokens, expected < {n}")
    text, fr, _ = complete(url, False, dict(base, max_tokens=24, stop=stop))
    check(text == want and fr == "stop", f"stop as a string: got {text!r}")
    print(f"ok stop string {stop!r} across tokens -> {want!r}")


def cmd_basic(url):
    cmd_wait(url, 5)
    info = model_info(url)
    n_ctx, n_vocab = info["meta"]["n_ctx"], info["meta"]["n_vocab"]
    greedy = {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}
    text, fr, u = same(url, False, greedy, "greedy completion")
    check(u["prompt_tokens"] > 0 and fr in ("stop", "length"), f"greedy: {fr} {u}")
    again = complete(url, False, greedy)
    check(again[0] == text, "greedy: two runs differ")
    print(f"ok completion greedy: {text!r} ({fr}, {u})")
    seeded = {"prompt": "The little dog", "max_tokens": 16, "temperature": 0.9, "top_p": 0.95,
              "top_k": 40, "min_p": 0.01, "seed": 1234}
    t1 = same(url, False, seeded, "seeded completion")
    t2 = complete(url, False, seeded)
    check(t1 == t2, f"seeded: two runs differ: {t1} vs {t2}")
    print(f"ok completion seeded: {t1[0]!r}")
    chat = {"messages": [{"role": "system", "content": "You tell short stories."},
                         {"role": "user", "content": "Tell me about a cat."}],
            "max_tokens": 12, "temperature": 0}
    c = same(url, True, chat, "chat greedy")
    parts = dict(chat, messages=[{"role": "user", "content": [{"type": "text", "text": "Tell me "},
                                                               {"type": "text", "text": "about a cat."}]}])
    same(url, True, parts, "chat with content parts")
    same(url, True, dict(chat, seed=7, temperature=0.8), "chat seeded")
    st, ev, done, _ = stream(url, "/v1/chat/completions", chat)
    check(ev[0]["choices"][0]["delta"].get("role") == "assistant", f"chat: first delta {ev[0]}")
    check("usage" not in ev[0], "stream without include_usage has usage fields")
    print(f"ok chat: {c[0]!r}")
    ids = complete(url, False, {"prompt": [1, 2, 3, 4], "max_tokens": 4, "temperature": 0})
    check(ids[2]["prompt_tokens"] == 4, f"token-id prompt usage: {ids[2]}")
    expect_error(url, "POST", "/v1/completions", {"prompt": [1, n_vocab + 5]}, 400, "prompt",
                 str(n_vocab + 5))
    print("ok token-id prompt")
    zero = complete(url, False, {"prompt": "x", "max_tokens": 0})
    check(zero[0] == "" and zero[2]["completion_tokens"] == 0, f"max_tokens 0: {zero}")
    check_stop_strings(url)

    # errors: status, OpenAI-style body, the offending parameter
    P = "/v1/completions"
    C = "/v1/chat/completions"
    expect_error(url, "POST", P, '{"prompt": "x",', 400, "", "invalid JSON")
    expect_error(url, "POST", P, '{"prompt": "x"} trailing', 400)
    expect_error(url, "POST", P, "[1, 2]", 400, None, "expected a JSON object")
    expect_error(url, "POST", P, "", 400)
    expect_error(url, "POST", P, {"max_tokens": 3}, 400, "prompt", "missing")
    expect_error(url, "POST", P, {"prompt": 5}, 400, "prompt")
    expect_error(url, "POST", P, {"prompt": "x", "temperature": "hot"}, 400, "temperature",
                 "got string")
    expect_error(url, "POST", P, {"prompt": "x", "max_tokens": 1.5}, 400, "max_tokens")
    expect_error(url, "POST", P, {"prompt": "x", "max_tokens": -1}, 400, "max_tokens")
    expect_error(url, "POST", P, {"prompt": "x", "stream": "yes"}, 400, "stream")
    expect_error(url, "POST", P, {"prompt": "x", "stop": 5}, 400, "stop")
    expect_error(url, "POST", P, {"prompt": "x", "stop": ["a", 3]}, 400, "stop")
    expect_error(url, "POST", P, {"prompt": "x", "top_p": 1.5}, 400, "top_p")
    expect_error(url, "POST", P, {"prompt": "x", "top_k": -2}, 400, "top_k")
    expect_error(url, "POST", P, {"prompt": "x", "seed": "abc"}, 400, "seed")
    expect_error(url, "POST", P, {"prompt": "x", "n": 17}, 400, "n")
    expect_error(url, "POST", P, {"prompt": "x", "stream_options": 1}, 400, "stream_options")
    expect_error(url, "POST", C, {"messages": "hi"}, 400, "messages")
    expect_error(url, "POST", C, {"messages": []}, 400, "messages")
    expect_error(url, "POST", C, {"messages": [{"role": "robot", "content": "x"}]}, 400,
                 "messages[0].role")
    expect_error(url, "POST", C, {"messages": [{"role": "user", "content": 3}]}, 400,
                 "messages[0].content")
    deep = '{"prompt": "x", "extra": ' + "[" * 100 + "]" * 100 + "}"
    expect_error(url, "POST", P, deep, 400, "", "nested")
    ok_depth = '{"prompt": "x", "max_tokens": 1, "extra": ' + "[" * 60 + "]" * 60 + "}"
    st, _, _ = request(url, "POST", P, ok_depth)
    check(st == 200, f"60 levels of nesting: got {st}, expected 200")
    big = '{"prompt": "' + "a" * (1536 * 1024) + '"}'
    expect_error(url, "POST", P, big, 413, None, "bytes")
    over = n_ctx
    expect_error(url, "POST", P, {"prompt": "Once upon a time", "max_tokens": over}, 400,
                 "max_tokens", [str(over), str(n_ctx)])
    expect_error(url, "POST", P, {"prompt": list(range(1, 3)) * (n_ctx // 2 + 1)}, 400, "prompt",
                 str(n_ctx))
    expect_error(url, "GET", "/v1/nothing", None, 404)
    expect_error(url, "GET", P, None, 405)
    expect_error(url, "POST", "/health", "{}", 405)
    # OpenAI's penalties and logit_bias are implemented; out of range they are refused
    expect_error(url, "POST", P, {"prompt": "x", "frequency_penalty": 2.5}, 400, "frequency_penalty")
    expect_error(url, "POST", P, {"prompt": "x", "logit_bias": {"5": 200}}, 400, "logit_bias")
    # a +100 bias on one token makes greedy text that token alone
    biased = complete(url, False, {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0,
                                   "logit_bias": {"46": 100}})
    plain = complete(url, False, {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0})
    check(biased[0] != plain[0], f"logit_bias changed nothing: {biased[0]!r}")
    pen = complete(url, False, {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0,
                                "frequency_penalty": 2, "presence_penalty": 2})
    plain = complete(url, False, {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0})
    check(pen[0] != plain[0], f"penalties changed nothing: {pen[0]!r}")
    # unknown fields are ignored, null is "not given"
    ok = complete(url, False, {"prompt": "x", "max_tokens": 2, "foo": {"bar": [1, None]},
                               "temperature": None, "stop": None, "user": "me",
                               "frequency_penalty": 0, "logprobs": None})
    check(ok[2]["completion_tokens"] <= 2, f"unknown fields: {ok}")
    # default max_tokens fits the context whatever the prompt length
    long_ids = [1] * (n_ctx - 3)
    d = complete(url, False, {"prompt": long_ids, "temperature": 0})
    check(d[2]["completion_tokens"] <= 3, f"default max_tokens near the context: {d[2]}")
    print("ok errors (400/404/405/413, JSON bodies, params)")

    m = metrics(url)
    for name in ("ternpipe_http_requests_total", "ternpipe_prompt_tokens_total",
                 "ternpipe_generation_tokens_total", "ternpipe_time_to_first_token_seconds_count",
                 "ternpipe_inter_token_latency_seconds_count", "ternpipe_queue_depth",
                 "ternpipe_running_sequences", "ternpipe_kv_blocks_used",
                 "ternpipe_kv_blocks_free", "ternpipe_stage_busy_fraction",
                 "ternpipe_hop_latency_seconds"):
        check(metric_sum(m, name) >= 0 and any(k == name or k.startswith(name + "{") for k in m),
              f"/metrics lacks {name}")
    check(m.get('ternpipe_http_requests_total{route="/v1/completions",code="400"}', 0) >= 10,
          "metrics: 400s not counted")
    check(m.get('ternpipe_http_requests_total{route="/v1/completions",code="413"}', 0) >= 1,
          "metrics: 413 not counted")
    check(metric_sum(m, "ternpipe_generation_tokens_total") > 0, "metrics: no tokens counted")
    check(m["ternpipe_time_to_first_token_seconds_count"] > 0, "metrics: no TTFT samples")
    stages = int(m["ternpipe_pipeline_stages"])
    check(sum(1 for k in m if k.startswith("ternpipe_kv_blocks_used{")) == stages,
          "metrics: KV per stage")
    cmd_wait(url, 5)
    print(f"ok metrics ({stages} stages); healthy")


def cmd_concurrent(url, n):
    n = int(n)
    prompts = ["Once upon a time", "The big red ball", "Lily and Tom went", "One day a bird"]
    refs = [complete(url, False, {"prompt": p, "max_tokens": 24, "temperature": 0}) for p in prompts]
    results = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        try:
            barrier.wait(timeout=TIMEOUT)
            results[i] = streamed(url, False, {"prompt": prompts[i % 4], "max_tokens": 24,
                                               "temperature": 0})
        except Exception as e:  # reported below
            results[i] = e

    t0 = time.time()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(TIMEOUT)
    check(not any(t.is_alive() for t in ts), f"concurrent: threads still running after {TIMEOUT} s")
    for i, r in enumerate(results):
        check(not isinstance(r, Exception), f"concurrent stream {i}: {r!r}")
        check(r == refs[i % 4], f"concurrent stream {i}: got {r}, expected {refs[i % 4]}")
    print(f"ok {n} concurrent streams equal their references ({time.time() - t0:.2f} s)")


def kv_used(url):
    m = metrics(url)
    return metric_sum(m, "ternpipe_kv_blocks_used"), m


def cmd_cancel(url):
    n_ctx = model_info(url)["meta"]["n_ctx"]
    before = metrics(url).get('ternpipe_requests_finished_total{reason="client_gone"}', 0)
    body = {"prompt": "Once", "max_tokens": n_ctx - 8, "temperature": 0.8, "seed": 3,
            "stream": True}
    # 8 clients start long streams and hang up after their first token
    socks = []
    for i in range(8):
        s = socket.create_connection((urllib.parse.urlsplit(url).hostname,
                                      urllib.parse.urlsplit(url).port), timeout=TIMEOUT)
        data = json.dumps(dict(body, seed=i)).encode()
        hdr = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\n")
        if KEY:
            hdr += f"Authorization: Bearer {KEY}\r\n"
        s.sendall(hdr.encode() + b"\r\n" + data)
        socks.append(s)
    for s in socks:
        got = b""
        while b"data: {" not in got:
            chunk = s.recv(4096)
            check(chunk, "cancel: the stream ended before its first token")
            got += chunk
        check(got.startswith(b"HTTP/1.1 200"), f"cancel: {got[:60]!r}")
    for s in socks:
        s.close()
    end = time.time() + 20
    while True:
        used, m = kv_used(url)
        if used == 0 and m["ternpipe_requests_in_flight"] == 0:
            break
        check(time.time() < end, f"cancel: KV blocks used {used}, in flight "
              f"{m['ternpipe_requests_in_flight']} 20 s after the clients left")
        time.sleep(0.05)
    gone = m.get('ternpipe_requests_finished_total{reason="client_gone"}', 0) - before
    check(gone >= 1, "cancel: no sequence was cancelled (all finished before the clients left?)")
    cmd_wait(url, 5)
    free0 = m.get('ternpipe_kv_blocks_free{stage="0"}', 0)
    print(f"ok cancel: {int(gone)} of 8 streams cancelled by disconnect, KV back to 0 "
          f"({free0:.0f} blocks free on stage 0)")


def cmd_choices(url):
    """n > 1: choice i equals a separate request with seed + i (text and logprobs), streamed
    chunks carry each choice's index and add up to the same texts, usage counts the prompt once;
    a client leaving mid-stream cancels every choice's sequence."""
    base = {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.9, "seed": 100,
            "n": 4, "logprobs": 1}
    st, _, j = post(url, "/v1/completions", base)
    check(st == 200, f"choices: status {st}: {j}")
    ch = sorted(j["choices"], key=lambda c: c["index"])
    check([c["index"] for c in ch] == [0, 1, 2, 3], f"choices: indexes {[c['index'] for c in ch]}")
    for i in range(4):
        st1, _, one = post(url, "/v1/completions", dict(base, n=1, seed=100 + i))
        o = one["choices"][0]
        check(o["text"] == ch[i]["text"], f"choice {i}: {ch[i]['text']!r}, seed+{i} alone: {o['text']!r}")
        check(o["logprobs"]["token_logprobs"] == ch[i]["logprobs"]["token_logprobs"],
              f"choice {i}: logprobs differ from seed+{i} alone")
    check(len({c["text"] for c in ch}) > 1, "choices: 4 sampled choices all equal")
    u = j["usage"]
    check(u["prompt_tokens"] == one["usage"]["prompt_tokens"] and u["completion_tokens"] == 4 * 16,
          f"choices: usage {u}")
    code, events, done, _ = stream(url, "/v1/completions",
                                   dict(base, stream_options={"include_usage": True}))
    texts, fins = [""] * 4, [None] * 4
    for e in events:
        for c in e.get("choices", []):
            texts[c["index"]] += c.get("text") or ""
            fins[c["index"]] = c.get("finish_reason") or fins[c["index"]]
    check(done and texts == [c["text"] for c in ch] and fins == ["length"] * 4,
          f"choices stream: {texts} {fins} done={done}")
    check(usage_of(events) == u, f"choices stream usage {usage_of(events)} != {u}")
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "n": 3,
            "temperature": 1.0, "seed": 5}
    st, _, cj = post(url, "/v1/chat/completions", chat)
    code, events, done, _ = stream(url, "/v1/chat/completions", chat)
    ctexts, roles = [""] * 3, [0] * 3
    for e in events:
        for c in e.get("choices", []):
            d = c.get("delta", {})
            roles[c["index"]] += d.get("role") == "assistant"
            ctexts[c["index"]] += d.get("content") or ""
    want = [c["message"]["content"] for c in sorted(cj["choices"], key=lambda c: c["index"])]
    check(done and roles == [1, 1, 1] and ctexts == want, f"chat choices: {ctexts} vs {want}, roles {roles}")
    # a client that leaves cancels all of them
    n_ctx = model_info(url)["meta"]["n_ctx"]
    before = metrics(url).get('ternpipe_requests_finished_total{reason="client_gone"}', 0)
    s = socket.create_connection((urllib.parse.urlsplit(url).hostname,
                                  urllib.parse.urlsplit(url).port), timeout=TIMEOUT)
    data = json.dumps(dict(base, max_tokens=n_ctx - 16, stream=True)).encode()
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    got = b""
    while got.count(b"data: {") < 2:
        chunk = s.recv(4096)
        check(chunk, "choices cancel: the stream ended early")
        got += chunk
    s.close()
    end = time.time() + 20
    while True:
        used, m = kv_used(url)
        if used == 0 and m["ternpipe_requests_in_flight"] == 0:
            break
        check(time.time() < end, f"choices cancel: KV used {used} 20 s after the client left")
        time.sleep(0.05)
    gone = m.get('ternpipe_requests_finished_total{reason="client_gone"}', 0) - before
    check(gone == 4, f"choices cancel: {gone} sequences cancelled, expected 4")
    # a long prompt is prefilled once: choices 1..3 share its blocks (the prefix cache)
    story = ("Once upon a time, there was a big dog named Max. Max liked to run and jump in "
             "the garden with his ball. ") * 3
    h0 = metrics(url).get("ternpipe_prefix_cache_hits_total", 0)
    st, _, lj = post(url, "/v1/completions", dict(base, prompt=story, n=4))
    check(st == 200, f"choices long prompt: {st}")
    end = time.time() + 5
    while metrics(url).get("ternpipe_prefix_cache_hits_total", 0) - h0 < 3 and time.time() < end:
        time.sleep(0.2)
    shared = metrics(url).get("ternpipe_prefix_cache_hits_total", 0) - h0
    check(shared >= 3, f"choices: {shared} of 3 other choices shared the prompt's blocks")
    lch = sorted(lj["choices"], key=lambda c: c["index"])
    for i in (0, 3):
        st1, _, one = post(url, "/v1/completions", dict(base, prompt=story, n=1, seed=100 + i))
        check(one["choices"][0]["text"] == lch[i]["text"], f"choice {i} of the shared prefill differs")
    print(f"ok choices: n=4 equals seeds 100..103 alone (text, logprobs), streamed the same with "
          f"indexes, usage {u}; chat n=3; a client leaving cancels all 4; a long prompt's "
          f"prefill shared by the other 3 choices")


SCHEMAS = [
    {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog", "bird"]}, "maxItems": 3},
        "happy": {"type": "boolean"}, "height": {"type": ["number", "null"]}},
     "required": ["name", "age"]},
    {"type": "object", "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 30},
        "hero": {"type": "object", "properties": {"kind": {"enum": ["cat", "girl", 7, None]},
                                                  "brave": {"type": "boolean"}}},
        "moral": {"const": "be kind"}}},
    {"type": "array", "items": {"type": "object", "properties": {
        "word": {"type": "string", "maxLength": 12}, "n": {"type": "integer"}}},
     "minItems": 1, "maxItems": 4},
    {"enum": ["yes", "no", "maybe"]},
]


def valid(v, sc):
    """the JSON-schema subset of include/ternpipe/grammar.h, checked independently"""
    if "enum" in sc:
        return any(v == e and type(v) is type(e) for e in sc["enum"])
    if "const" in sc:
        return v == sc["const"]
    ts = sc.get("type")
    if ts is None:
        return True
    for t in ts if isinstance(ts, list) else [ts]:
        if t == "object" and isinstance(v, dict):
            props = sc.get("properties", {})
            if props and list(v) != list(props):
                continue  # every property, in the schema's order
            if all(valid(v[k], props[k]) for k in props) and all(k in v for k in sc.get("required", [])):
                return True
        elif t == "array" and isinstance(v, list):
            if sc.get("minItems", 0) <= len(v) <= sc.get("maxItems", 1 << 30) and \
                    all(valid(x, sc.get("items", {})) for x in v):
                return True
        elif t == "string" and isinstance(v, str):
            if sc.get("minLength", 0) <= len(v) <= sc.get("maxLength", 1 << 30):
                return True
        elif t == "integer" and isinstance(v, int) and not isinstance(v, bool):
            return True
        elif t == "number" and isinstance(v, (int, float)) and not isinstance(v, bool):
            return True
        elif t == "boolean" and isinstance(v, bool):
            return True
        elif t == "null" and v is None:
            return True
    return False


def cmd_json(url, out, ref=None):
    """response_format: 50 seeded requests (40 json_schema over 4 schemas, 10 json_object,
    completions and chat) all end with "stop" in documents that parse and validate; streamed
    equals not; n = 2; an unsupported keyword is a 400; texts saved to OUT (and equal to REF's,
    another rank count's, when given)."""
    texts = {}
    for i in range(50):
        chat = i % 2 == 1
        sc = SCHEMAS[i % 4] if i < 40 else None
        rf = {"type": "json_schema", "json_schema": {"name": f"s{i % 4}", "schema": sc}} if sc \
            else {"type": "json_object"}
        body = {"max_tokens": 400, "temperature": 0.9, "seed": 1000 + i, "response_format": rf}
        if chat:
            body["messages"] = [{"role": "user", "content": "Answer in JSON."}]
        else:
            body["prompt"] = "Once upon a time"
        t, fin, _ = complete(url, chat, body)
        check(fin == "stop", f"json {i}: finish {fin}: {t[:120]!r}")
        try:
            v = json.loads(t)
        except ValueError as e:
            raise Fail(f"json {i}: does not parse ({e}): {t[:200]!r}")
        check(valid(v, sc) if sc else isinstance(v, dict), f"json {i}: {t[:200]!r} does not follow {sc}")
        texts[str(i)] = t
        if i % 17 == 0:
            check(streamed(url, chat, body)[0] == t, f"json {i}: streamed text differs")
    st, _, j = post(url, "/v1/completions", {"prompt": "Once", "max_tokens": 200, "n": 2, "seed": 9,
                                             "temperature": 1.0, "response_format": {"type": "json_object"}})
    check(st == 200 and all(isinstance(json.loads(c["text"]), dict) for c in j["choices"]),
          f"json n=2: {j}")
    expect_error(url, "POST", "/v1/completions",
                 {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {
                     "schema": {"anyOf": [{"type": "string"}]}}}}, 400, "response_format", "anyOf")
    json.dump(texts, open(out, "w"))
    same = ""
    if ref:
        want = json.load(open(ref))
        check(want == texts, "json: texts differ from the other rank count's: " +
              str([k for k in texts if texts[k] != want.get(k)][:5]))
        same = ", equal to the other rank count's"
    print(f"ok json: 50 of 50 constrained answers parse and validate (40 json_schema over 4 "
          f"schemas, 10 json_object), streamed == not, n=2, anyOf refused{same}")


def cmd_prefix(url):
    """the prefix cache: a prompt that starts like an earlier one shares its KV blocks and
    gives bitwise the same text and log-probabilities as the cold run; /metrics counts the
    hits and the tokens not prefilled"""
    def m(name):
        return metrics(url).get(name, 0)
    story = ("Once upon a time, there was a little girl named Lily. She loved to play outside "
             "in the park with her friends. One day, she saw a big red ball under a tree. ") * 2
    hits0, toks0 = m("ternpipe_prefix_cache_hits_total"), m("ternpipe_prefix_cache_tokens_total")
    results = {}
    for k, (end, chat) in enumerate([("Lily said", False), ("Tom said", False), ("Lily said", False),
                                      ("Tell me more.", True), ("Tell me more.", True)]):
        body = {"max_tokens": 24, "temperature": 0.9, "seed": 7, "logprobs": 2}
        if chat:
            body.update(messages=[{"role": "system", "content": story}, {"role": "user", "content": end}],
                        logprobs=True, top_logprobs=2)
        else:
            body["prompt"] = story + end
        st, _, j = post(url, "/v1/chat/completions" if chat else "/v1/completions", body)
        check(st == 200, f"prefix {k}: {st} {j}")
        c = j["choices"][0]
        results.setdefault((end, chat), []).append((c.get("text") or c["message"]["content"], c["logprobs"]))
        if k == 0:  # the reference is a cold run: nothing before used this story
            check(m("ternpipe_prefix_cache_hits_total") == hits0, "prefix: the first run was not cold")
    for key, runs in results.items():
        for r in runs[1:]:
            check(r == runs[0], f"prefix {key}: the cached run differs from the cold one")
    end = time.time() + 5  # supervised, rank 0 reports its counters once a second
    while True:
        hits = m("ternpipe_prefix_cache_hits_total") - hits0
        toks = m("ternpipe_prefix_cache_tokens_total") - toks0
        if (hits >= 3 and toks >= 96) or time.time() > end:
            break
        time.sleep(0.2)
    check(hits >= 3 and toks >= 3 * 32, f"prefix: {hits} hits, {toks} tokens reused, expected >= 3 and >= 96")
    print(f"ok prefix cache: {hits:.0f} hits of 5 requests, {toks:.0f} prompt tokens not prefilled; "
          f"cached runs bitwise equal to cold ones (text and logprobs, completions and chat)")


def cmd_auth(url, key):
    global KEY
    KEY = None
    expect_error(url, "GET", "/v1/models", None, 401)
    expect_error(url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1}, 401)
    h, e = expect_error(url, "GET", "/v1/models", None, 401,
                        headers={"Authorization": "Bearer wrong-" + key})
    check(e["type"] == "authentication_error", f"401 type: {e}")
    expect_error(url, "GET", "/v1/models", None, 401, headers={"Authorization": key})
    st, _, _ = request(url, "GET", "/health")
    check(st == 200, f"/health needs no key: got {st}")
    st, _, _ = request(url, "GET", "/metrics")
    check(st == 200, f"/metrics needs no key: got {st}")
    KEY = key
    model_info(url)
    complete(url, False, {"prompt": "x", "max_tokens": 2})
    print("ok auth: 401 without or with a wrong key, 200 with it")


def cmd_flood(url, key=None):
    global KEY
    KEY = key
    n_ctx = model_info(url)["meta"]["n_ctx"]
    for attempt in range(3):
        n = 8
        results = [None] * n
        conns = [conn_for(url) for _ in range(n)]
        for c in conns:
            c.connect()
        barrier = threading.Barrier(n)

        def run(i):
            try:
                barrier.wait(timeout=TIMEOUT)
                body = json.dumps({"prompt": "Once", "max_tokens": n_ctx - 8, "stream": True,
                                   "temperature": 0.8, "seed": i})
                h = {"Content-Type": "application/json"}
                if KEY:
                    h["Authorization"] = "Bearer " + KEY
                conns[i].request("POST", "/v1/completions", body=body, headers=h)
                r = conns[i].getresponse()
                data = r.read()
                results[i] = (r.status, r.getheader("Retry-After"), data)
            except Exception as e:
                results[i] = e
            finally:
                conns[i].close()

        ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(TIMEOUT)
        for r in results:
            check(not isinstance(r, Exception) and r is not None, f"flood: {r!r}")
        codes = sorted(r[0] for r in results)
        check(set(codes) <= {200, 429}, f"flood: statuses {codes}, expected 200 and 429")
        for st, ra, data in results:
            if st == 429:
                check(ra == "1", f"429 Retry-After: got {ra!r}, expected '1'")
                e = json.loads(data)["error"]
                check(e["type"] == "rate_limit_error" and e["message"], f"429 body: {e}")
            else:
                check(data.rstrip().endswith(b"data: [DONE]"), f"flood: 200 stream cut: {data[-80:]!r}")
        if 429 in codes:
            print(f"ok flood: {codes.count(429)} x 429 (Retry-After: 1), {codes.count(200)} x 200 complete")
            cmd_wait(url, 5)
            return
    raise Fail("flood: 8 simultaneous long requests on 1 slot + 1 queue place never got a 429")


def cmd_drain(url, pid, key=None):
    global KEY
    KEY = key
    pid = int(pid)
    n_ctx = model_info(url)["meta"]["n_ctx"]
    n = 2  # with --max-seqs 1 --max-queue 1: one runs, one waits
    results = [None] * n
    started = threading.Event()

    def run(i):
        try:
            body = {"prompt": "Once", "max_tokens": n_ctx - 8, "temperature": 0.8, "seed": 10 + i}
            path = "/v1/completions"
            c = conn_for(url)
            h = {"Content-Type": "application/json"}
            if KEY:
                h["Authorization"] = "Bearer " + KEY
            c.request("POST", path, body=json.dumps(dict(body, stream=True)), headers=h)
            r = c.getresponse()
            evs, done = [], False
            while True:
                line = r.readline()
                if not line:
                    break
                line = line.strip()
                if line == b"data: [DONE]":
                    done = True
                    break
                if line.startswith(b"data: "):
                    evs.append(json.loads(line[6:]))
                    started.set()
            results[i] = (r.status, finish_of(evs), done, evs)
        except Exception as e:
            results[i] = e

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
        time.sleep(0.05)
    check(started.wait(TIMEOUT), "drain: no stream started")
    os.kill(pid, signal.SIGTERM)
    # while the streams finish, the server refuses new work
    seen = None
    end = time.time() + 10
    while time.time() < end and seen is None:
        try:
            st, _, data = request(url, "GET", "/health", timeout=5)
            if st == 503:
                check(json.loads(data)["status"] == "stopping", f"/health draining: {data!r}")
                expect_error(url, "POST", "/v1/completions", {"prompt": "x"}, 503)
                seen = True
        except (OSError, http.client.HTTPException):
            seen = False  # already gone
    for t in ts:
        t.join(TIMEOUT)
    for r in results:
        check(not isinstance(r, Exception) and r is not None, f"drain stream: {r!r}")
        st, fr, done, evs = r
        check(st == 200 and done and fr in ("length", "stop"),
              f"drain: in-flight stream got status {st}, finish {fr}, [DONE] {done}: {evs[-1:]}")
    check(seen, "drain: the server never answered 503 while draining")
    print("ok drain: in-flight streams finished after SIGTERM; new requests got 503")


def cmd_logprobs(url, ternpipe, model, np_):
    """logprobs of /v1/completions (ids prompt, greedy and seeded sampling, streamed and not)
    and of chat equal what `ternpipe logits --out-logprobs` computes for the same request: the
    chosen token's log-softmax and the top alternatives, to the bit"""
    import subprocess, tempfile
    ids = [4094, 426, 448, 258, 400, 44]
    for extra in ({"temperature": 0}, {"temperature": 0.8, "top_k": 40, "seed": 21}):
        body = dict({"prompt": ids, "max_tokens": 6, "logprobs": 3}, **extra)
        _, _, j = post(url, "/v1/completions", body)
        lp = j["choices"][0]["logprobs"]
        check(len(lp["tokens"]) == 6 and len(lp["token_logprobs"]) == 6 and
              len(lp["top_logprobs"]) == 6 and len(lp["text_offset"]) == 6, f"shape: {lp}")
        with tempfile.TemporaryDirectory() as d:
            cmd = [ternpipe, "logits", "-m", model, "--ids", " ".join(map(str, ids)), "-n", "6",
                   "--threads", "1", "--logprobs", "3", "--out-logprobs", d + "/lp",
                   "--temp", str(extra["temperature"])]
            if "top_k" in extra:
                cmd += ["--top-k", str(extra["top_k"]), "--seed", str(extra["seed"])]
            if int(np_) > 1:
                cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", np_] + cmd
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=240)
            ref = open(d + "/lp").read().split()
        check(len(ref) == 6, f"reference: {ref}")
        for i, tok in enumerate(ref):
            parts = tok.split("|")
            want = float.fromhex(parts[0].split(":")[1])
            got = lp["token_logprobs"][i]
            check(got == want, f"token {i}: logprob {got!r}, expected {want!r} ({extra})")
            tops = sorted(lp["top_logprobs"][i].values(), reverse=True)
            wtops = [float.fromhex(p.split(":")[1]) for p in parts[1:]]
            check(len(tops) <= 3 and all(a == b for a, b in zip(tops, wtops)),
                  f"token {i}: top {tops}, expected {wtops}")
        # streamed: the same numbers, chunk by chunk
        st, _, data = request(url, "POST", "/v1/completions",
                              json.dumps(dict(body, stream=True)).encode())
        got = []
        for line in data.decode().splitlines():
            if line.startswith("data: {"):
                c = json.loads(line[6:])["choices"]
                if c and c[0].get("logprobs"):
                    got += c[0]["logprobs"]["token_logprobs"]
        check(got == lp["token_logprobs"], f"streamed logprobs {got}, expected {lp['token_logprobs']}")
    # chat: logprobs true with top_logprobs
    _, _, j = post(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                 "max_tokens": 3, "temperature": 0,
                                                 "logprobs": True, "top_logprobs": 2})
    content = j["choices"][0]["logprobs"]["content"]
    check(len(content) == 3 and all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 and
                                    bytes(t["bytes"]).decode("utf-8", "replace") for t in content),
          f"chat logprobs: {content}")
    check(content[0]["top_logprobs"][0]["logprob"] == content[0]["logprob"],
          "greedy: the chosen token is the most likely")
    # echo: the prompt's text, then the completion (streamed too)
    plain = complete(url, False, {"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0})
    echoed = complete(url, False, {"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0,
                                   "echo": True})
    check(echoed[0] == "Once upon a time" + plain[0], f"echo: {echoed[0]!r}")
    check(streamed(url, False, {"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0,
                                "echo": True})[0] == echoed[0], "echo streamed")
    ids_echo = complete(url, False, {"prompt": [426, 448], "max_tokens": 2, "temperature": 0, "echo": True})
    check(ids_echo[0].startswith("Once upon"), f"echo of ids: {ids_echo[0]!r}")
    st, _, j = post(url, "/v1/completions", {"prompt": "x", "echo": True, "logprobs": 1})
    check(st == 400 and j["error"]["param"] == "echo", f"echo with logprobs: {st} {j}")
    # llama-server's extras: /tokenize, /detokenize round trip; /props shows the plan
    _, _, t = post(url, "/tokenize", {"content": "Once upon a time, a cat", "with_pieces": True})
    pieces = t["tokens"]
    check("".join(p["piece"] for p in pieces) == "Once upon a time, a cat", f"pieces: {pieces}")
    _, _, d = post(url, "/detokenize", {"tokens": [p["id"] for p in pieces]})
    check(d["content"] == "Once upon a time, a cat", f"detokenize: {d}")
    st, _, d = post(url, "/detokenize", {"tokens": [1, -4]})
    check(st == 400 and d["error"]["param"] == "tokens", f"bad ids: {st} {d}")
    st, _, pr = request(url, "GET", "/props")
    pr = json.loads(pr)
    check(st == 200 and pr["n_ranks"] == int(np_) and len(pr["plan"]) == int(np_) and
          pr["plan"][-1]["layers"][1] >= 1, f"props: {pr}")
    print(f"ok logprobs: completions (greedy, sampled, streamed) equal ternpipe logits on {np_} rank(s); chat shape; tokenize/detokenize/props")


def cmd_basemodel(url):
    """a base model without a chat template: chat is refused with a clear 400, completions work"""
    st, _, j = post(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                  "max_tokens": 2})
    check(st == 400 and "chat template" in j["error"]["message"], f"chat on a base model: {st} {j}")
    _, _, j = post(url, "/v1/completions", {"prompt": "Hello", "max_tokens": 3, "temperature": 0})
    check(j["usage"]["completion_tokens"] == 3, f"completions on a base model: {j}")
    print("ok basemodel: chat refused (no template), completions served")


def main(argv):
    global KEY
    if len(argv) < 3:
        print(__doc__)
        return 2
    cmd, url, rest = argv[1], argv[2], argv[3:]
    KEY = os.environ.get("TERN_TEST_API_KEY") or None
    fn = {"wait": cmd_wait, "basic": cmd_basic, "concurrent": cmd_concurrent, "cancel": cmd_cancel,
          "auth": cmd_auth, "flood": cmd_flood, "drain": cmd_drain,
          "logprobs": cmd_logprobs, "basemodel": cmd_basemodel, "choices": cmd_choices,
          "json": cmd_json, "prefix": cmd_prefix}.get(cmd)
    if not fn:
        print(__doc__)
        return 2
    try:
        fn(url, *rest)
    except Fail as e:
        print(f"FAIL {cmd}: {e}")
        return 1
    except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
        print(f"FAIL {cmd}: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
