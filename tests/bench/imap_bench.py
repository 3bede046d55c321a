#!/usr/bin/python3
"""IMAP benchmark driver (tests/bench/imap.sh): the same measurements,
with the same client, against an IMAP server given by port and the pids of
its process tree:

  logins per second (LOGIN + LOGOUT, one connection each, 4 at a time),
  FETCH of 1,000 messages (headers; full bodies), SEARCH over the folder
  (a header key, a body key, flags), and memory per idle logged-in
  connection (summed PSS of the server's processes, before and after).

  imap_bench.py --label moat --port 2643 --pid 1234 --user u --password p
Prints one JSON object."""
import argparse
import imaplib
import json
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", required=True, help="comma-separated top pids of the server")
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--logins", type=int, default=400)
    ap.add_argument("--idle", type=int, default=300)
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
