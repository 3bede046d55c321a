#!/usr/bin/env bash
# tests/bench/imap.sh -- `make bench`, the mail store: Moat's IMAP server
# beside Dovecot (Debian's dovecot-imapd, configured here privately on a
# copy of the same Maildir, high-performance login mode, the same yescrypt
# password hash), measured in the same run by the same client
# (tests/bench/imap_bench.py): logins per second, FETCH of 1,000 messages
# (headers, full bodies), SEARCH over 10,000 messages, APPEND and EXPUNGE
# latency (p50, p95) with 10 clients on one shared folder, memory per idle
# logged-in connection. Then imaptest's own stress mode beside Dovecot
# (tests/bench/imap_stress.sh, its IMAP_STRESS_* variables; IMAP_STRESS=0
# leaves it out).
# Environment: IMAP_MESSAGES [10000], IMAP_SECONDS [20] (each of the APPEND
# and EXPUNGE runs), IMAP_CLIENTS [10], IMAP_LOGINS [400], IMAP_IDLE [300],
# BENCH_OUT [build/bench]. A quick check that it works (not a measure):
# IMAP_MESSAGES=200 IMAP_SECONDS=2 IMAP_LOGINS=20 IMAP_IDLE=10
# IMAP_STRESS_SECS=3 IMAP_STRESS_MESSAGES=20.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/tests/bench/lib.sh"
shared=$(cd "$top/../shared/bench" 2>/dev/null && pwd) || { echo "bench: ../shared/bench not found" >&2; exit 2; }
out=${BENCH_OUT:-$top/build/bench}/imap
count=${IMAP_MESSAGES:-10000}
seconds=${IMAP_SECONDS:-20}
clients=${IMAP_CLIENTS:-10}
logins=${IMAP_LOGINS:-400}
idle=${IMAP_IDLE:-300}
PY=/usr/bin/python3
MOAT_SMTP=2546 MOAT_IMAP=2643 DOVECOT_IMAP=10143
PASS="bench password 2026"
mkdir -p "$out"
rm -f "$out/results.jsonl"

bench_setup imapbench
bench_stop() {
    [ -s "$work/dovecot/run/master.pid" ] && kill "$(cat "$work/dovecot/run/master.pid")" 2>/dev/null || true
    sleep 1
}

echo "== setup: $count messages in one Maildir, for both servers"
"$shared/scan-corpus.sh" "$work/corpus" "$count" 4242 "plain=70,html=30" > /dev/null
imap_moatd_conf
echo "$PASS" | "$top/build/moatctl" -c "$work/moatd.conf" user add bench@example.com > /dev/null
mbox=$work/state/mail/example.com/bench
mkdir -p "$mbox/cur" "$mbox/new" "$mbox/tmp"
"$PY" - "$work/corpus/files.txt" "$mbox/cur" <<'PYEOF'
import os, sys
names = [l.strip() for l in open(sys.argv[1]) if l.strip()]
for i, n in enumerate(names):
    data = open(n, "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    t = 1764000000 + i
    path = os.path.join(sys.argv[2], "%d.M%06dP1Q%d.bench,S=%d:2,%s" % (t, i, i, len(data), "S" if i % 3 else ""))
    open(path, "wb").write(data)
    os.utime(path, (t, t))
PYEOF
chown -R "$user" "$work/state"
# Dovecot: the same messages, the same hash
mkdir -p "$work/dovecot/run" "$work/dovecot/state" "$work/dovecot/home"
cp -a "$mbox" "$work/dovecot/Maildir"
chown -R nobody:nogroup "$work/dovecot/Maildir" "$work/dovecot/home"
hash=$(awk '$1 == "user" && $2 == "bench@example.com" { print $3 }' "$work/state/accounts")
echo "bench@example.com:{CRYPT}$hash" > "$work/dovecot/passwd"
imap_servers_start "maildir:$work/dovecot/Maildir" "$work/dovecot/home"
echo "$(dovecot --version | sed 's/^/dovecot /'), $("$top/build/moatd" -v)"

run() { # label port pid
    "$PY" "$top/tests/bench/imap_bench.py" --label "$1" --port "$2" --pid "$3" \
        --user bench@example.com --password "$PASS" --seconds "$seconds" --clients "$clients" \
        --logins "$logins" --idle "$idle" | tee -a "$out/results.jsonl"
}
run moat $MOAT_IMAP "$(cat "$work/state/moatd.pid")"
run dovecot $DOVECOT_IMAP "$(cat "$work/dovecot/run/master.pid")"

"$PY" - "$out/results.jsonl" <<'PYEOF' | tee "$out/summary.md"
import json, sys
r = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    r[d["label"]] = d
m, d = r["moat"], r["dovecot"]
rows = [
    ("logins per second (4 at a time)", "logins_per_s", True),
    ("FETCH 1,000 headers, s", "fetch1000_headers_s", False),
    ("FETCH 1,000 full bodies, s", "fetch1000_full_s", False),
    ("FETCH 1,000 FLAGS RFC822.SIZE UID, s", "fetch1000_flags_size_s", False),
    ("SEARCH FROM over %d, s" % m["messages"], "search_from_s", False),
    ("SEARCH SUBJECT, s", "search_subject_s", False),
    ("SEARCH BODY, s", "search_body_s", False),
    ("SEARCH UNSEEN, s", "search_unseen_s", False),
    ("APPEND p50, %d clients, ms" % m["latency_clients"], "append_p50_ms", False),
    ("APPEND p95, ms", "append_p95_ms", False),
    ("EXPUNGE p50, %d clients, ms" % m["latency_clients"], "expunge_p50_ms", False),
    ("EXPUNGE p95, ms", "expunge_p95_ms", False),
    ("memory per idle connection, KB", "kb_per_idle_conn", False),
]
print("| measure | Moat | Dovecot | Moat vs Dovecot |")
print("|---|---|---|---|")
for name, key, higher in rows:
    a, b = m[key], d[key]
    ratio = (a / b if higher else b / a) if a and b else float("nan")
    print(f"| {name} | {a} | {b} | {ratio:.2f}x {'faster' if key != 'kb_per_idle_conn' else 'less'} |")
print(f"\nsearch hits: FROM {m['search_from_hits']} / {d['search_from_hits']}, "
      f"BODY {m['search_body_hits']} / {d['search_body_hits']} (Moat / Dovecot)")
print(f"APPEND / EXPUNGE done: {m['append_count']} / {m['expunge_count']} (Moat), "
      f"{d['append_count']} / {d['expunge_count']} (Dovecot); errors {m['latency_errors']} / "
      f"{d['latency_errors']}")
PYEOF

# imaptest's stress mode, on servers of its own once these are stopped
trap - EXIT
bench_cleanup
[ "${IMAP_STRESS:-1}" = 0 ] || exec "$top/tests/bench/imap_stress.sh"
