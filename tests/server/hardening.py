#!/usr/bin/env python3
"""hardening.py: checks of a running `ternpipe serve` against hostile or careless clients
(issue 10), with raw sockets and the standard library only.

Usage: hardening.py COMMAND URL [args]
  fields URL        unsupported fields get a 400 naming them; /v1/models/{id}; unknown models 404
  nul URL           "\\u0000" inside a prompt is part of it (the prompt is not cut there)
  gone URL          non-streamed requests whose client left are cancelled while tokens flow
  protocol URL      bad request lines, 414, 431, 505, GARBAGE and conflicting Content-Length
                    get JSON errors
  slow URL DEADLINE a client trickling its header is cut off DEADLINE s after connecting
  limits URL PER_IP TOTAL
                    past PER_IP connections from one address: 429; past TOTAL: 503 with
                    Retry-After (both JSON); other addresses and /health still get through
Every socket has a time-out and every loop a bound; any failed check exits 1 with a line
saying what differed.
"""
import http.client
import json
import socket
import sys
import time
import urllib.parse

TIMEOUT = 30.0


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


def addr(url):
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port


def connect(url, source="127.0.0.1", timeout=TIMEOUT):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(addr(url))
    return s


def read_response(s, limit=1 << 20):
    """-> (status, headers dict lower-case, body bytes) of one response with Content-Length
    (or up to EOF); None when the server closed or reset without answering."""
    data = b""
    try:
        while b"\r\n\r\n" not in data and len(data) < limit:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    if b"\r\n\r\n" not in data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdr = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdr[k.strip().lower()] = v.strip()
    n = int(hdr.get("content-length", "-1"))
    try:
        while (n < 0 or len(body) < n) and len(body) < limit:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return status, hdr, body[:n] if n >= 0 else body


def raw(url, data, source="127.0.0.1", timeout=10.0):
    s = connect(url, source, timeout)
    try:
        s.sendall(data)
        return read_response(s)
    finally:
        s.close()


def expect_json_error(resp, status, what, param=None, code=None):
    check(resp is not None, f"{what}: no answer (connection closed or reset), expected {status}")
    st, hdr, body = resp
    check(st == status, f"{what}: got status {st}, expected {status}: {body[:200]!r}")
    check(hdr.get("content-type", "").startswith("application/json"),
          f"{what}: content-type {hdr.get('content-type')!r}, expected application/json: "
          f"{body[:120]!r}")
    try:
        e = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        raise Fail(f"{what}: body is not an OpenAI-style JSON error: {body[:200]!r}")
    check(isinstance(e.get("message"), str) and e["message"] and "type" in e and "param" in e
          and "code" in e, f"{what}: error fields {e}")
    if param is not None:
        check(e["param"] == param, f"{what}: param {e['param']!r}, expected {param!r}")
    if code is not None:
        check(e["code"] == code, f"{what}: code {e['code']!r}, expected {code!r}")
    return hdr, e


def request(url, method, path, body=None, timeout=TIMEOUT):
    h, p = addr(url)
    c = http.client.HTTPConnection(h, p, timeout=timeout)
    try:
        hd = {}
        if body is not None:
            body = json.dumps(body).encode() if not isinstance(body, bytes) else body
            hd["Content-Type"] = "application/json"
        c.request(method, path, body=body, headers=hd)
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def post_json(url, path, body):
    st, hdr, data = request(url, "POST", path, body)
    try:
        return st, hdr, json.loads(data)
    except ValueError:
        raise Fail(f"POST {path}: status {st}, body is not JSON: {data[:200]!r}")


def metrics(url):
    st, _, data = request(url, "GET", "/metrics")
    check(st == 200, f"/metrics: got {st}")
    vals = {}
    for line in data.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, v = line.rpartition(" ")
            vals[name] = float(v)
    return vals


def model_id(url):
    st, _, data = request(url, "GET", "/v1/models")
    check(st == 200, f"/v1/models: got {st}")
    return json.loads(data)["data"][0]


# ------------------------------------------------------------------ commands

def cmd_fields(url):
    P, C = "/v1/completions", "/v1/chat/completions"
    msgs = [{"role": "user", "content": "hi"}]
    refused = {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto",
               "response_format": {"type": "json_schema", "json_schema": {"schema": {"anyOf": []}}},
               "suffix": "The end.", "best_of": 2, "top_logprobs": 3}
    for name, val in refused.items():
        for path, base in ((P, {"prompt": "Once"}), (C, {"messages": msgs})):
            st, _, j = post_json(url, path, dict(base, max_tokens=2, **{name: val}))
            check(st == 400, f"{path} {name}={val!r}: got {st}, expected 400: {j}")
            e = j["error"]
            check(e["param"] == name and (name in e["message"] or "anyOf" in e["message"]) and
                  e["type"] == "invalid_request_error", f"{path} {name}: error {e}")
    # what clients send by default is still accepted
    st, _, j = post_json(url, C, {"messages": msgs, "max_tokens": 2, "tools": [],
                                  "tool_choice": "none", "logit_bias": None, "logprobs": False,
                                  "response_format": {"type": "text"}})
    check(st == 200, f"chat with 'off' values: got {st}: {j}")
    info = model_id(url)
    mid = info["id"]
    st, _, data = request(url, "GET", "/v1/models/" + urllib.parse.quote(mid, safe=""))
    check(st == 200, f"GET /v1/models/{mid}: got {st}: {data[:200]!r}")
    j = json.loads(data)
    check(j["id"] == mid and j["object"] == "model", f"GET /v1/models/{mid}: {j}")
    resp = raw(url, b"GET /v1/models/gpt-4o HTTP/1.1\r\nHost: x\r\n\r\n")
    expect_json_error(resp, 404, "GET /v1/models/gpt-4o", "model", "model_not_found")
    for path, base in ((P, {"prompt": "Once"}), (C, {"messages": msgs})):
        st, _, j = post_json(url, path, dict(base, max_tokens=2, model="gpt-4o"))
        check(st == 404 and j["error"]["code"] == "model_not_found" and
              j["error"]["param"] == "model", f"{path} model gpt-4o: got {st}: {j}")
        for ok in (mid, "", None):
            st, _, j = post_json(url, path, dict(base, max_tokens=2, model=ok))
            check(st == 200 and j["model"] == mid, f"{path} model {ok!r}: got {st}: {j}")
    print(f"ok fields: {len(refused)} unsupported fields refused by name on both routes; "
          f"/v1/models/{mid} 200, unknown model 404 model_not_found")


def cmd_nul(url):
    P = "/v1/completions"
    base = {"max_tokens": 1, "temperature": 0}
    counts = []
    for prompt in ("Once upon", "Once upon\u0000 a time there was"):
        st, _, j = post_json(url, P, dict(base, prompt=prompt))
        check(st == 200, f"prompt {prompt!r}: got {st}: {j}")
        counts.append(j["usage"]["prompt_tokens"])
    check(counts[1] > counts[0] + 2,
          f"a prompt with \\u0000: {counts[1]} prompt tokens, expected more than the "
          f"{counts[0]} + 2 of the text before the NUL (was the prompt cut at the NUL?)")
    msgs = [{"role": "user", "content": "a\u0000b"}]
    st, _, j = post_json(url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 1})
    check(st == 400 and j["error"]["param"] == "messages[0].content",
          f"chat with \\u0000: got {st}: {j}")
    print(f"ok nul: the prompt keeps its text after \\u0000 ({counts[0]} -> {counts[1]} tokens); "
          "chat content with NUL is refused, not cut")


def cmd_gone(url):
    n_ctx = model_id(url)["meta"]["n_ctx"]
    key = 'ternpipe_requests_finished_total{reason="client_gone"}'
    before = metrics(url).get(key, 0)
    n = 4
    for i in range(n):
        s = connect(url)
        body = json.dumps({"prompt": "Once", "max_tokens": n_ctx - 8, "temperature": 1.5,
                           "seed": 100 + i}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        s.close()  # gone before the first token
    end = time.time() + 20
    while True:
        m = metrics(url)
        gone = m.get(key, 0) - before
        if gone >= n and m["ternpipe_requests_in_flight"] == 0:
            break
        check(time.time() < end,
              f"gone: {gone:.0f} of {n} non-streamed requests cancelled for client_gone 20 s "
              f"after their clients left (in flight {m['ternpipe_requests_in_flight']:.0f}); "
              f"finished: { {k: v for k, v in m.items() if 'finished_total' in k} }")
        time.sleep(0.05)
    print(f"ok gone: {n} non-streamed requests cancelled when their clients left")


def cmd_protocol(url):
    cases = [
        (b"GARBAGE\r\n\r\n", 400, "GARBAGE"),
        (b"GET\r\n\r\n", 400, "a request line without a URI"),
        (b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400, "a request line with 4 parts"),
        (b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505, "HTTP/2.0"),
        (b"GET /health HTTP/0.9\r\nHost: x\r\n\r\n", 505, "HTTP/0.9"),
        (b"GET /health HTTX/1.1\r\nHost: x\r\n\r\n", 400, "a bad protocol name"),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "a 20 kB URI"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 40000 + b"\r\n\r\n", 431,
         "a 40 kB header"),
        (b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(400)) +
         b"Host: x\r\n\r\n", 431, "400 header lines"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nBad header\r\n\r\n", 400, "a header without ':'"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400, "obsolete line folding"),
        (b"GET /health HTTP/1.1\r\n\r\n", 400, "HTTP/1.1 without Host"),
        # the first length alone is a valid request: a server using it would answer 200 and
        # read what follows as a second, smuggled request
        (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n"
         b"Content-Length: 60\r\n\r\n{\"prompt\": \"x\"}GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
         400, "conflicting Content-Length"),
        (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 60\r\n\r\n{}", 400,
         "a Content-Length list"),
        (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "Content-Length with chunked"),
        (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400,
         "a negative Content-Length"),
    ]
    for data, status, what in cases:
        resp = raw(url, data)
        expect_json_error(resp, status, what)
    # identical duplicates are harmless (RFC 9110 8.6) and still work
    body = b'{"prompt": "x", "max_tokens": 1}'
    cl = b"Content-Length: %d\r\n" % len(body)
    resp = raw(url, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + cl + cl + b"\r\n" + body)
    check(resp is not None and resp[0] == 200, f"identical Content-Length twice: {resp}")
    # blank lines before a request are allowed (RFC 9112 2.2); HTTP/1.0 needs no Host
    resp = raw(url, b"\r\nGET /health HTTP/1.0\r\n\r\n")
    check(resp is not None and resp[0] == 200, f"HTTP/1.0 after a blank line: {resp}")
    print(f"ok protocol: {len(cases)} malformed requests answered with JSON errors "
          "(400/414/431/505)")


def trickle(url, first, rest, deadline):
    """sends first at once, then rest one byte per 0.25 s -> (seconds until the server
    answered or closed, the answer's bytes)"""
    s = connect(url, timeout=deadline + 10)
    t0 = time.time()
    got, closed_at, i = b"", None, 0
    try:
        s.sendall(first)
        # an idle time-out that each byte restarts would never fire
        while time.time() - t0 < deadline + 8 and i < len(rest):
            try:
                s.sendall(rest[i:i + 1])
                i += 1
                s.settimeout(0.25)
                got = s.recv(4096)
                closed_at = time.time()
                break
            except socket.timeout:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.time()
                break
        if got:
            s.settimeout(2)
            try:
                while True:
                    c = s.recv(4096)
                    if not c:
                        break
                    got += c
            except (socket.timeout, ConnectionResetError):
                pass
    finally:
        s.close()
    return (None if closed_at is None else closed_at - t0), got


def cmd_slow(url, deadline):
    deadline = float(deadline)
    cases = [("header", b"", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 1000),
             ("body", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
              b"Content-Type: application/json\r\n\r\n", b'{"prompt": "' + b"z" * 990)]
    for what, first, rest in cases:
        took, got = trickle(url, first, rest, deadline)
        check(took is not None,
              f"slow {what}: trickled one byte per 0.25 s, still open after {deadline + 8} s, "
              f"expected it cut off after {deadline} s")
        check(deadline - 0.5 <= took <= deadline + 2.5,
              f"slow {what}: cut off after {took:.1f} s, expected about {deadline} s")
        head_, _, body = got.partition(b"\r\n\r\n")
        check(head_.startswith(b"HTTP/1.1 408"), f"slow {what}: answer {got[:80]!r}, expected a 408")
        e = json.loads(body)["error"]
        check(e["message"], f"slow {what}: {e}")
        print(f"ok slow {what}: answered 408 (JSON) and closed after {took:.1f} s "
              f"(deadline {deadline} s)")
    st, _, _ = request(url, "GET", "/health", timeout=5)
    check(st == 200, f"slow: /health after it: {st}")


def cmd_limits(url, per_ip, total):
    per_ip, total = int(per_ip), int(total)
    held = []
    try:
        # one address opens its share and sends nothing (a slowloris from one host)
        for _ in range(per_ip):
            held.append(connect(url, "127.0.0.1", 10))
        time.sleep(0.3)
        resp = raw(url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.1")
        hdr, e = expect_json_error(resp, 429, f"connection {per_ip + 1} from 127.0.0.1")
        check(hdr.get("retry-after"), f"429 for too many connections: no Retry-After: {hdr}")
        # another address is not affected
        resp = raw(url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.2")
        check(resp is not None and resp[0] == 200, f"/health from 127.0.0.2: {resp}")
        # the two probes must be gone from the server's count before the fill (a refused
        # connection is drained for up to 2 s): else one of them closing later frees a place
        # and a probe past the total is served
        time.sleep(2.5)
        # more addresses fill the server up to its total
        k = 3
        while len(held) < total:
            src = f"127.0.0.{k}"
            for _ in range(min(per_ip, total - len(held))):
                held.append(connect(url, src, 10))
            k += 1
        time.sleep(0.3)
        n_503 = 0
        for j in range(5):
            resp = raw(url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", f"127.0.1.{j + 1}")
            hdr, e = expect_json_error(resp, 503, f"a connection past the total of {total}")
            check(hdr.get("retry-after"), f"503 when full: no Retry-After: {hdr}")
            n_503 += 1
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    end = time.time() + 10
    while True:
        resp = raw(url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        if resp is not None and resp[0] == 200:
            break
        check(time.time() < end, f"limits: /health after the holders left: {resp}")
        time.sleep(0.1)
    print(f"ok limits: connection {per_ip + 1} from one address got 429, past {total} "
          f"connections {n_503} x 503 with Retry-After; other addresses and /health fine")


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    fn = {"fields": cmd_fields, "nul": cmd_nul, "gone": cmd_gone, "protocol": cmd_protocol,
          "slow": cmd_slow, "limits": cmd_limits}.get(argv[1])
    if not fn:
        print(__doc__)
        return 2
    try:
        fn(argv[2], *argv[3:])
    except Fail as e:
        print(f"FAIL {argv[1]}: {e}")
        return 1
    except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
        print(f"FAIL {argv[1]}: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
