#!/usr/bin/python3
"""IMAP benchmark driver (tests/bench/imap.sh): the same measurements,
with the same client, against an IMAP server given by port and the pids of
its process tree:

  logins per second (LOGIN + LOGOUT, one connection each, 4 at a time),
  FETCH of 1,000 messages (headers; full bodies), SEARCH over the folder
  (a header key, a body key, flags), APPEND and EXPUNGE latency (p50, p95)
  with 10 clients on one shared folder, each with it selected (so each
  change is told to the 9 others), and memory per idle logged-in
  connection (summed PSS of the server's processes, before and after).

  imap_bench.py --label moat --port 2643 --pid 1234 --user u --password p
Prints one JSON object."""
import argparse
import imaplib
import json
import re
import threading
import time

from procstat import pss_kb


def timed(fn, repeat=3):
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        d = time.perf_counter() - t
        best = d if best is None or d < best else best
    return best


def percentile(v, p):
    if not v:
        return None
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


MESSAGE = ("From: Bench Sender <sender@bench.invalid>\r\nTo: bench@example.com\r\n"
           "Subject: latency %d.%d\r\nMessage-ID: <lat.%d.%d@bench.invalid>\r\n"
           "Date: Sat, 05 Dec 2026 10:00:00 +0000\r\n\r\n" + "a line of the body, 40 bytes of text..\r\n" * 50)


def latency(a, login, res):
    """APPEND, then UID EXPUNGE of one message each (UIDPLUS, the message
    marked \\Deleted first, not timed), by a.clients sessions at once for
    a.seconds each on one shared folder that every one has selected: what
    imaptest's stress run does, with each command's time kept."""
    folder = "BenchLatency"
    c = login()
    c.delete(folder)
    typ, data = c.create(folder)
    assert typ == "OK", data
    c.logout()
    sessions = []
    for _ in range(a.clients):
        x = login()
        typ, data = x.select(folder)
        assert typ == "OK", data
        sessions.append(x)
    lat = {"append": [], "expunge": []}
    errors = []
    uids = [[] for _ in sessions]
    lock = threading.Lock()

    def phase(name, body):
        start = threading.Barrier(len(sessions))

        def run(k):
            x = sessions[k]
            start.wait()
            end = time.perf_counter() + a.seconds
            n = 0
            mine = []
            try:
                while time.perf_counter() < end:
                    d = body(k, x, n)
                    if d is None:
                        break
                    mine.append(d)
                    n += 1
            except Exception as e:      # noqa: BLE001 -- counted, reported
                errors.append("%s: %s" % (name, e))
            with lock:
                lat[name].extend(mine)
        ths = [threading.Thread(target=run, args=(k,)) for k in range(len(sessions))]
        for th in ths:
            th.start()
        for th in ths:
            th.join()

    def append(k, x, n):
        msg = (MESSAGE % (k, n, k, n)).encode()
        t = time.perf_counter()
        typ, data = x.append(folder, None, None, msg)
        d = time.perf_counter() - t
        if typ != "OK":
            raise RuntimeError("APPEND %s %s" % (typ, data))
        m = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
        if m:
            uids[k].append(m.group(1).decode())
        return d

    def expunge(k, x, n):
        if n >= len(uids[k]):
            return None
        uid = uids[k][n]
        typ, data = x.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")
        if typ != "OK":
            raise RuntimeError("STORE %s %s" % (typ, data))
        t = time.perf_counter()
        typ, data = x.uid("EXPUNGE", uid)
        d = time.perf_counter() - t
        if typ != "OK":
            raise RuntimeError("UID EXPUNGE %s %s" % (typ, data))
        return d

    phase("append", append)
    phase("expunge", expunge)
    for x in sessions:
        try:
            x.logout()
        except Exception:               # noqa: BLE001
            pass
    res["latency_clients"] = a.clients
    for name in ("append", "expunge"):
        v = lat[name]
        res["%s_count" % name] = len(v)
        res["%s_p50_ms" % name] = round(percentile(v, 50) * 1000, 1) if v else None
        res["%s_p95_ms" % name] = round(percentile(v, 95) * 1000, 1) if v else None
    res["latency_errors"] = len(errors)
    if errors:
        res["latency_first_error"] = errors[0][:200]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", required=True, help="comma-separated top pids of the server")
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--logins", type=int, default=400)
    ap.add_argument("--idle", type=int, default=300)
    ap.add_argument("--clients", type=int, default=10, help="sessions for APPEND/EXPUNGE latency")
    ap.add_argument("--seconds", type=float, default=20, help="each of APPEND and EXPUNGE runs this long")
    a = ap.parse_args()
    pids = [int(x) for x in a.pid.split(",")]
    res = {"label": a.label}

    def login():
        c = imaplib.IMAP4("127.0.0.1", a.port)
        c.login(a.user, a.password)
        return c

    # warm-up: the server builds whatever index it keeps
    c = login()
    typ, data = c.select("INBOX")
    n = int(data[0])
    c.fetch("1:*", "(FLAGS)")
    c.search(None, "FROM", "nobody-at-all")
    res["messages"] = n

    # logins per second, 4 connections at a time
    left = [a.logins]
    lock = threading.Lock()
    errors = []

    def worker():
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            try:
                x = login()
                x.logout()
            except Exception as e:      # noqa: BLE001 -- counted, reported
                errors.append(str(e))
                return
    t = time.perf_counter()
    ths = [threading.Thread(target=worker) for _ in range(4)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    res["logins_per_s"] = round(a.logins / (time.perf_counter() - t), 1)
    res["login_errors"] = len(errors)

    # FETCH of 1,000 messages
    top = min(1000, n)
    res["fetch1000_headers_s"] = round(timed(lambda: c.fetch("1:%d" % top, "(BODY.PEEK[HEADER])")), 3)
    res["fetch1000_full_s"] = round(timed(lambda: c.fetch("1:%d" % top, "(BODY.PEEK[])")), 3)
    res["fetch1000_flags_size_s"] = round(timed(lambda: c.fetch("1:%d" % top, "(FLAGS RFC822.SIZE UID)")), 3)

    # SEARCH over the whole folder
    def count(*crit):
        typ, data = c.search(None, *crit)
        assert typ == "OK", data
        return len(data[0].split())
    res["search_from_hits"] = count("FROM", "sender7")
    res["search_from_s"] = round(timed(lambda: count("FROM", "sender7")), 3)
    res["search_subject_s"] = round(timed(lambda: count("SUBJECT", "quarter")), 3)
    res["search_body_hits"] = count("BODY", "invoice")
    res["search_body_s"] = round(timed(lambda: count("BODY", "invoice"), repeat=2), 3)
    res["search_unseen_s"] = round(timed(lambda: count("UNSEEN")), 3)
    c.logout()

    latency(a, login, res)

    # memory per idle logged-in connection
    time.sleep(1)
    before = pss_kb(pids)
    conns = []
    for _ in range(a.idle):
        x = login()
        x.select("INBOX")
        conns.append(x)
    time.sleep(2)
    after = pss_kb(pids)
    res["idle_conns"] = a.idle
    res["pss_before_mb"] = round(before / 1024, 1)
    res["pss_after_mb"] = round(after / 1024, 1)
    res["kb_per_idle_conn"] = round((after - before) / a.idle, 1)
    for x in conns:
        try:
            x.logout()
        except Exception:               # noqa: BLE001
            pass
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
