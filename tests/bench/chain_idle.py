#!/usr/bin/python3
"""Is the SMTP event loop ever held while the filters are busy? (issue 17:
"1,000 idle sessions and 50 sending ones while the antivirus is saturated
keep their command replies under 10 ms (p99)"; tests/bench/chain.sh runs
it as its `idle` part.)

Opens --idle sessions (each with a PROXY header and its greeting read) and
one probe session (EHLO), then starts chain_load.py with --senders
connections sending the corpus, which keeps every worker thread of the
antivirus busy; while that runs, the probe times the reply to each of its
commands, one cycle every --interval seconds: NOOP, MAIL FROM, RCPT TO and
RSET on the probe session, and NOOP on the next idle session in turn.
Prints one JSON line: p50, p99 and the largest reply time of each command
and of all of them, the probes made, the idle sessions still open at the
end, and the senders' own line (msgs/s, p50 of the end of data).

Bounded: the senders send the corpus once (--count), and the probe stops
when they are done or after --seconds, whichever comes first.

  chain_idle.py --port P --files corpus/files.txt [--idle 1000] [--senders 50]
"""
import argparse
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from idle_conns import open_idle  # noqa: E402


class Probe:
    """A session whose replies are timed, from the command's last byte sent
    to its reply's last line read."""

    def __init__(self, sock):
        self.s, self.buf = sock, b""

    def reply(self, deadline):
        while True:
            while b"\r\n" in self.buf:
                line, self.buf = self.buf.split(b"\r\n", 1)
                if line[3:4] != b"-":
                    return int(line[:3])
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.s], [], [], left)[0]:
                raise TimeoutError("no reply in time")
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def cmd(self, text, timeout=30):
        t0 = time.perf_counter()
        self.s.sendall(text + b"\r\n")
        code = self.reply(time.monotonic() + timeout)
        return code, time.perf_counter() - t0


def pct(xs, p):
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def summary(xs):
    xs = sorted(xs)
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50_ms": round(1000 * statistics.median(xs), 3),
            "p99_ms": round(1000 * pct(xs, 0.99), 3), "max_ms": round(1000 * xs[-1], 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--files", required=True, help="the senders' corpus (chain_load.py --files)")
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=50)
    ap.add_argument("--count", type=int, default=0, help="messages the senders send (0: the corpus)")
    ap.add_argument("--interval", type=float, default=0.01, help="seconds between probe cycles")
    ap.add_argument("--seconds", type=float, default=300, help="the probe stops by then")
    ap.add_argument("--pid", type=int, default=0)
    ap.add_argument("--label", default="idle")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.idle + 1000), hard))

    idle, greeted = open_idle(a.port, a.idle, proxy=True)
    ps, _ = open_idle(a.port, 1, proxy=True)
    probe = Probe(ps[0])
    if probe.cmd(b"EHLO probe.example.net")[0] != 250:
        raise SystemExit("chain_idle: EHLO refused")
    load = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "chain_load.py"),
            "--port", str(a.port), "--files", a.files, "--conc", str(a.senders),
            "--label", a.label + "-senders"]
    if a.count:
        load += ["--count", str(a.count)]
    if a.pid:
        load += ["--pid", str(a.pid)]
    senders = subprocess.Popen(load, stdout=subprocess.PIPE, text=True)

    took = {"NOOP": [], "MAIL": [], "RCPT": [], "RSET": [], "NOOP idle": []}
    bad, k = [], 0
    t_end = time.monotonic() + a.seconds
    while senders.poll() is None and time.monotonic() < t_end:
        t_cycle = time.monotonic()
        for verb, line, want in (("NOOP", b"NOOP", 250), ("MAIL", b"MAIL FROM:<probe@example.net>", 250),
                                 ("RCPT", b"RCPT TO:<user@example.com>", 250), ("RSET", b"RSET", 250)):
            code, dt = probe.cmd(line)
            took[verb].append(dt)
            if code != want:
                bad.append("%s: %d" % (verb, code))
        if idle:
            code, dt = Probe(idle[k % len(idle)]).cmd(b"NOOP")
            took["NOOP idle"].append(dt)
            if code != 250:
                bad.append("NOOP idle: %d" % code)
            k += 1
        left = a.interval - (time.monotonic() - t_cycle)
        if left > 0:
            time.sleep(left)
    if senders.poll() is None:
        senders.terminate()
    sent = senders.communicate(timeout=60)[0].strip()
    # an idle session that was closed meanwhile reads as readable (EOF)
    still = len(idle) - len(select.select(idle, [], [], 0)[0]) if idle else 0
    allt = [x for v in took.values() for x in v]
    out = {"label": a.label, "idle": a.idle, "greeted": greeted, "still_open": still,
           "senders": a.senders, "probes": len(allt), "all": summary(allt),
           "commands": {v: summary(x) for v, x in took.items()}, "bad_replies": bad[:5],
           "load": json.loads(sent) if sent.startswith("{") else sent}
    print(json.dumps(out))
    return 0 if greeted == a.idle and not bad and senders.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
