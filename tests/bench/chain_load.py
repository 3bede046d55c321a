#!/usr/bin/python3
"""Load driver for the filter-chain benchmark (tests/bench/chain.sh): sends
every message of a corpus through moatd over SMTP, one connection per
message with a PROXY header naming a remote client, at a given
concurrency, and reports messages per second and the latency of the end
of data (from the last byte sent to the final reply) as JSON.

  chain_load.py --port P --files corpus/files.txt --conc 2 --label moat-av

Replies 250 (queued) and 550 (refused: a virus, or spam past the reject
score) both count as done; any other reply or a broken connection is an
error and makes the run fail. "viruses" counts the 550s that name a virus.

With --rspamd the same messages go to rspamd instead (POST /checkv2 with
the envelope as rspamd's HTTP headers, one connection per message, as
spam_bench.py asks it), timed from the first byte of the request to the
whole answer; "viruses" then counts the answers with a CLAM_VIRUS symbol
(rspamd's antivirus module asking clamd), and "av_fail" the CLAM_VIRUS_FAIL
ones (clamd not answering in time). --pid may be given more than once
(rspamd and clamd: their CPU is summed)."""
import argparse
import http.client
import json
import os
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procstat import cpu_secs  # noqa: E402


def transact(port, data, client_ip):
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    f = s.makefile("rb")

    def reply():
        while True:
            line = f.readline()
            if not line:
                raise EOFError("connection closed")
            if line[3:4] != b"-":
                return int(line[:3]), line

    s.sendall(b"PROXY TCP4 %s 127.0.0.1 40000 25\r\n" % client_ip.encode())
    assert reply()[0] == 220
    s.sendall(b"EHLO mx0.example.net\r\nMAIL FROM:<sender0@example.net>\r\n"
              b"RCPT TO:<user@example.com>\r\nDATA\r\n")
    codes = [reply()[0] for _ in range(4)]
    if codes != [250, 250, 250, 354]:
        raise RuntimeError("transaction refused: %s" % codes)
    s.sendall(data)
    t0 = time.perf_counter()
    s.sendall(b".\r\n")
    code, line = reply()
    dt = time.perf_counter() - t0
    s.sendall(b"QUIT\r\n")
    s.close()
    return code, dt, b"Virus found" in line


def rspamd_transact(port, raw, client_ip):
    """One /checkv2 of the raw message: (550 for rspamd's reject else 250,
    seconds, a virus found, the antivirus failed)."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/checkv2", body=raw, headers={
        "IP": client_ip, "From": "sender0@example.net", "Rcpt": "user@example.com",
        "Helo": "mx0.example.net", "Content-Length": str(len(raw))})
    resp = c.getresponse()
    body = resp.read()
    dt = time.perf_counter() - t0
    c.close()
    if resp.status != 200:
        raise RuntimeError("rspamd: HTTP %d" % resp.status)
    r = json.loads(body)
    syms = r.get("symbols", {})
    return (550 if r.get("action") == "reject" else 250, dt,
            any(k.startswith("CLAM_VIRUS") and k != "CLAM_VIRUS_FAIL" for k in syms),
            "CLAM_VIRUS_FAIL" in syms)


def stuff(raw):
    """CRLF line ends and dot-stuffing, as an SMTP client sends a file."""
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    lines = raw.split(b"\r\n")
    return b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--files", required=True, help="a list of message files, one per line")
    ap.add_argument("--conc", type=int, default=1)
    ap.add_argument("--count", type=int, default=0, help="0: all the files")
    ap.add_argument("--kind", default="", help="only files whose name contains this")
    ap.add_argument("--client-ip", default="192.0.2.1")
    ap.add_argument("--label", default="moat")
    ap.add_argument("--pid", type=int, action="append", default=[],
                    help="the server's top process: report its tree's CPU ms per message "
                         "(again for more servers: summed)")
    ap.add_argument("--rspamd", action="store_true",
                    help="--port is rspamd's normal worker: ask it, not SMTP")
    a = ap.parse_args()
    base = os.path.dirname(a.files)
    names = [ln.strip() for ln in open(a.files) if ln.strip() and a.kind in ln]
    if a.count:
        names = names[:a.count]
    msgs = [open(n if os.path.isabs(n) else os.path.join(base, n), "rb").read() for n in names]
    if a.rspamd:
        msgs = [m.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for m in msgs]
    else:
        msgs = [stuff(m) for m in msgs]
    send = rspamd_transact if a.rspamd else transact
    lock = threading.Lock()
    nxt = [0]
    lat, codes, errors = [], {}, []
    found = {"viruses": 0, "av_fail": 0}

    def worker():
        while True:
            with lock:
                if nxt[0] >= len(msgs) or errors:
                    return
                i = nxt[0]
                nxt[0] += 1
            try:
                code, dt, virus, *fail = send(a.port, msgs[i], a.client_ip)
            except Exception as e:          # noqa: BLE001 -- reported, fails the run
                with lock:
                    errors.append("%s: %s" % (names[i], e))
                return
            with lock:
                lat.append(dt)
                codes[code] = codes.get(code, 0) + 1
                found["viruses"] += virus
                found["av_fail"] += bool(fail and fail[0])
                if code not in (250, 550):
                    errors.append("%s: reply %d" % (names[i], code))

    cpu0 = cpu_secs(a.pid) if a.pid else 0
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(a.conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = cpu_secs(a.pid) - cpu0 if a.pid else 0
    lat.sort()
    out = {
        "label": a.label, "conc": a.conc, "n": len(lat), "wall_s": round(wall, 3),
        "msgs_per_s": round(len(lat) / wall, 1) if wall else 0,
        "p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None,
        "bytes": sum(len(m) for m in msgs), "replies": codes, "errors": errors[:5],
        "viruses": found["viruses"],
    }
    if a.rspamd:
        out["av_fail"] = found["av_fail"]
    if a.pid and lat:
        out["server_cpu_ms"] = round(1000 * cpu / len(lat), 2)
    print(json.dumps(out))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
