"""Reads the output of imaptest's stress mode for Moat and for Dovecot
(tests/bench/imap_stress.sh) and prints a Markdown table: each command's
count, Moat / Dovecot, the last window's average ms per command, the
protocol errors, the CPU seconds each server used. Writes stress.json."""
import argparse
import json
import os
import re
import sys


def parse(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    lines = text.splitlines()
    errors = [ln for ln in lines if ln.startswith("Error:") or "Panic" in ln]
    r = {"errors": len(errors), "first_errors": errors[:5], "counts": {}, "ms": {}, "cpu_s": None,
         "load": None, "finished": "Totals:" in text}
    m = re.search(r"^== \S+ \S+: load (.*)$", text, re.M)
    if m:
        r["load"] = m.group(1)
    m = re.search(r"^cpu_s ([\d.]+) ([\d.]+)$", text, re.M)
    if m:
        r["cpu_s"] = round(float(m.group(2)) - float(m.group(1)), 2)
    if not r["finished"]:
        return r
    head, tail = text.rsplit("Totals:", 1)
    tl = [ln.split() for ln in tail.strip().splitlines()]
    names = tl[0]
    counts = [ln for ln in tl[1:] if len(ln) == len(names) and all(x.isdigit() for x in ln)]
    if counts:
        r["counts"] = dict(zip(names, (int(x) for x in counts[-1])))
    # the average of each 10 s window imaptest printed, over the windows
    # in which the command ran
    ms = [[int(x) for x in ln.split()[:len(names)]] for ln in head.splitlines()
          if ln.endswith("ms/cmd avg")]
    for i, name in enumerate(names):
        w = [row[i] for row in ms if len(row) > i and row[i]]
        r["ms"][name] = round(sum(w) / len(w)) if w else 0
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", default="")
    ap.add_argument("--clients", type=int)
    ap.add_argument("--users", type=int)
    ap.add_argument("--secs", type=int)
    ap.add_argument("--mix", default="default")
    ap.add_argument("--out")
    ap.add_argument("moat")
    ap.add_argument("dovecot")
    a = ap.parse_args()
    m, d = parse(a.moat), parse(a.dovecot)
    print("imaptest stress, mix %s, %d clients on %d mailboxes, %d s each, %s; load before: "
          "Moat %s, Dovecot %s\n" % (a.mix, a.clients, a.users, a.secs, a.versions, m["load"],
                                     d["load"]))
    print("| command | Moat | Dovecot | Moat / Dovecot | ms/cmd Moat / Dovecot |")
    print("|---|---|---|---|---|")
    below = []
    for name in d["counts"] or m["counts"]:
        a_, b_ = m["counts"].get(name, 0), d["counts"].get(name, 0)
        ratio = "%.2f" % (a_ / b_) if b_ else "-"
        # with logout=0 a client logs in and selects once: more of them
        # on one side are reconnections after an error, not speed
        kept = "logout=0" in a.mix and name in ("Logi", "Sele")
        if b_ and a_ < b_ and not kept:
            below.append("%s %.2f" % (name, a_ / b_))
        print("| %s | %d | %d | %s | %s / %s |" % (name, a_, b_, ratio, m["ms"].get(name, "-"),
                                                  d["ms"].get(name, "-")))
    print("| protocol errors | %d | %d | | |" % (m["errors"], d["errors"]))
    print("| CPU s, server processes | %s | %s | | |" % (m["cpu_s"], d["cpu_s"]))
    print()
    for label, r in (("Moat", m), ("Dovecot", d)):
        if not r["finished"]:
            print("%s: imaptest did not finish (no totals)" % label)
        for e in r["first_errors"]:
            print("%s: %s" % (label, e[:200]))
    # a side whose commands mostly failed measured nothing: say so, and fail
    void = [label for label, r in (("Moat", m), ("Dovecot", d))
            if r["errors"] * 100 > max(1, sum(r["counts"].values()))]
    if void:
        print("comparison void: %s failed (protocol errors over 1%% of commands)\n"
              % " and ".join(void))
    else:
        print("below Dovecot: %s\n" % (", ".join(below) if below else "none"))
    if a.out:
        with open(os.path.join(a.out, "stress-%s.json" % a.mix), "w") as f:
            json.dump({"moat": m, "dovecot": d, "clients": a.clients, "users": a.users,
                       "secs": a.secs, "mix": a.mix, "versions": a.versions}, f, indent=1)
    return 1 if void else 0


if __name__ == "__main__":
    sys.exit(main())
