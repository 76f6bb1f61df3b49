#!/usr/bin/env python3
"""faults.py: helpers of the fault tests (tests/mpi/test_fault_*.sh), standard library only.

Usage: faults.py COMMAND [args]
  listeners PID...          print "PID ADDR:PORT" for each TCP socket in LISTEN state the
                            processes hold (from /proc/PID/fd and /proc/net/tcp{,6})
  wait URL SECONDS          poll /health until 200 (exit 1 on timeout)
  streams URL N OUT         start N streamed and N non-streamed long requests, write "ready"
                            to OUT.ready once every stream has its first token, then wait (up
                            to TERN_FAULT_WAIT s) for each to end; OUT gets one JSON line per
                            request: kind, how it ended ("done", "error", "cut"), the error
                            message, the seconds from OUT.mark (written by the test at the
                            fault) to its end, and the HTTP status of non-streamed ones
  health URL                print the status code and body of GET /health on one line
  cpu PID SECONDS           print the CPU share of one core PID used over SECONDS
Every wait is bounded.
"""
import http.client
import json
import os
import socket
import sys
import threading
import time
import urllib.parse

WAIT = float(os.environ.get("TERN_FAULT_WAIT", "60"))


def listeners(pids):
    inodes = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    t = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if t.startswith("socket:["):
                    inodes[t[8:-1]] = pid
        except OSError:
            continue
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if len(f) < 10 or f[3] != "0A":  # LISTEN
                continue
            if f[9] not in inodes:
                continue
            addr, port = f[1].split(":")
            b = bytes.fromhex(addr)
            if len(b) == 4:
                a = socket.inet_ntop(socket.AF_INET, b[::-1])
            else:
                w = b"".join(b[i : i + 4][::-1] for i in range(0, 16, 4))
                a = "[" + socket.inet_ntop(socket.AF_INET6, w) + "]"
            out.append(f"{inodes[f[9]]} {a}:{int(port, 16)}")
    print("\n".join(sorted(out)))


def conn_for(url, timeout):
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)


def wait(url, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            c = conn_for(url, 2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return 0
        except OSError:
            pass
        time.sleep(0.1)
    print(f"wait: {url}/health: got no 200 within {seconds} s")
    return 1


def health(url):
    try:
        c = conn_for(url, 5)
        c.request("GET", "/health")
        r = c.getresponse()
        print(r.status, r.read().decode("utf-8", "replace").strip())
    except OSError as e:
        print("none", e)


def mark_time(out):
    try:
        return float(open(out + ".mark").read())
    except (OSError, ValueError):
        return None


BODY = {"prompt": "Once upon a time", "max_tokens": int(os.environ.get("TERN_FAULT_TOKENS", "500")), "temperature": 0}


def stream_one(url, out, results, i, first):
    rec = {"kind": "stream", "end": "cut", "error": None}
    try:
        c = conn_for(url, WAIT)
        body = dict(BODY, stream=True)
        c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        rec["status"] = r.status
        saw_error = False
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                rec["end"] = "error" if saw_error else "done"
                break
            j = json.loads(data)
            if "error" in j:
                saw_error = True
                rec["error"] = j["error"].get("message")
            else:
                first[i].set()
    except (OSError, ValueError, http.client.HTTPException) as e:
        rec["exc"] = str(e)
    first[i].set()
    rec["t"] = time.time()
    results[i] = rec


def plain_one(url, out, results, i):
    rec = {"kind": "plain", "end": "cut", "error": None}
    try:
        c = conn_for(url, WAIT)
        c.request("POST", "/v1/completions", json.dumps(BODY), {"Content-Type": "application/json"})
        r = c.getresponse()
        rec["status"] = r.status
        j = json.loads(r.read() or b"{}")
        if "error" in j:
            rec["end"] = "error"
            rec["error"] = j["error"].get("message")
        else:
            rec["end"] = "done"
    except (OSError, ValueError, http.client.HTTPException) as e:
        rec["exc"] = str(e)
    rec["t"] = time.time()
    results[i] = rec


def streams(url, n, out):
    results = [None] * (2 * n)
    first = [threading.Event() for _ in range(n)]
    ts = []
    for i in range(n):
        ts.append(threading.Thread(target=stream_one, args=(url, out, results, i, first), daemon=True))
    for i in range(n):
        ts.append(threading.Thread(target=plain_one, args=(url, out, results, n + i), daemon=True))
    for t in ts:
        t.start()
    end = time.monotonic() + WAIT
    for e in first:
        e.wait(max(0.0, end - time.monotonic()))
    time.sleep(0.3)  # the non-streamed ones are in the engine too by now
    open(out + ".ready", "w").write("ready\n")
    for t in ts:
        t.join(max(0.0, end - time.monotonic()))
    m = mark_time(out)
    with open(out, "w") as f:
        for rec in results:
            if rec is None:
                rec = {"end": "hung"}
            if m is not None and "t" in rec:
                rec["after_s"] = round(rec["t"] - m, 3)
            f.write(json.dumps(rec) + "\n")
    return 0


def cpu(pid, seconds):
    hz = os.sysconf("SC_CLK_TCK")

    def ticks():
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])  # utime + stime

    a, t0 = ticks(), time.monotonic()
    time.sleep(seconds)
    b, t1 = ticks(), time.monotonic()
    print(f"{100.0 * (b - a) / hz / (t1 - t0):.1f}")


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd = argv[1]
    if cmd == "listeners":
        listeners(argv[2:])
        return 0
    if cmd == "wait":
        return wait(argv[2], float(argv[3]))
    if cmd == "health":
        health(argv[2])
        return 0
    if cmd == "streams":
        return streams(argv[2], int(argv[3]), argv[4])
    if cmd == "cpu":
        cpu(argv[2], float(argv[3]))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
