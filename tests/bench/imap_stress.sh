#!/usr/bin/env bash
# tests/bench/imap_stress.sh -- `make bench` (run by imap.sh), the mail store
# under Dovecot's imaptest in its own stress mode, beside Dovecot: the same
# imaptest binary (build/imaptest/imaptest), the same settings for both
# servers (clients, users whose mailboxes several sessions share, seconds,
# seed, command mix) and the same mbox of messages (made by
# scan-corpus.sh, seed 4242), run against moatd and then a private Dovecot
# (Debian's dovecot-imapd) in the same run, one after the other, each on
# the same mailboxes. Three mixes: imaptest's default (every session logs
# in, does a round of commands and logs out, so logins weigh much),
# logout=0 (sessions stay logged in and keep working on the shared
# mailboxes) and that with SEARCH, SORT and THREAD added (each 50%). Written to BENCH_OUT/imap/: stress-SERVER-MIX.txt (imaptest's
# own output), stress-MIX.json and stress_summary.md (per mix, a table of
# each command's count, Moat / Dovecot, the protocol errors, and the CPU
# each server's processes used).
# Environment: IMAP_STRESS_SECS [30], IMAP_STRESS_CLIENTS [10],
# IMAP_STRESS_USERS [2] (so 5 sessions a mailbox), IMAP_STRESS_MIXES
# ["default logout=0 logout=0,search=50,sort=50,thread=50"] (each word
# imaptest arguments, commas between them), IMAP_STRESS_MESSAGES
# [200] (the mbox imaptest APPENDs from), IMAP_STRESS_SEED [4242],
# IMAPTEST [build/imaptest/imaptest], BENCH_OUT [build/bench].
# A quick check that it works (not a measure): IMAP_STRESS_SECS=3
# IMAP_STRESS_MESSAGES=20 tests/bench/imap_stress.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/tests/bench/lib.sh"
shared=$(cd "$top/../shared/bench" 2>/dev/null && pwd) || { echo "bench: ../shared/bench not found" >&2; exit 2; }
out=${BENCH_OUT:-$top/build/bench}/imap
secs=${IMAP_STRESS_SECS:-30}
clients=${IMAP_STRESS_CLIENTS:-10}
users=${IMAP_STRESS_USERS:-2}
count=${IMAP_STRESS_MESSAGES:-200}
seed=${IMAP_STRESS_SEED:-4242}
mixes=${IMAP_STRESS_MIXES:-default logout=0 logout=0,search=50,sort=50,thread=50}
imaptest=${IMAPTEST:-$top/build/imaptest/imaptest}
[ -x "$imaptest" ] || { echo "bench: no imaptest at $imaptest (make build/imaptest/imaptest)" >&2; exit 2; }
PY=/usr/bin/python3
MOAT_SMTP=2547 MOAT_IMAP=2644 DOVECOT_IMAP=10144
PASS="stress password 2026"
mkdir -p "$out"

bench_setup imapstress
bench_stop() {
    [ -s "$work/dovecot/run/master.pid" ] && kill "$(cat "$work/dovecot/run/master.pid")" 2>/dev/null || true
    sleep 1
}

echo "== imaptest stress: $clients clients on $users mailboxes, $secs s, seed $seed, $count messages"
"$shared/scan-corpus.sh" "$work/corpus" "$count" 4242 "plain=70,html=30" > /dev/null
"$PY" - "$work/corpus/files.txt" "$work/stress.mbox" <<'PYEOF'
import sys
with open(sys.argv[2], "wb") as box:
    for n in (l.strip() for l in open(sys.argv[1])):
        if not n:
            continue
        data = open(n, "rb").read().replace(b"\r\n", b"\n")
        lines = [b">" + l if l.startswith(b"From ") else l for l in data.split(b"\n")]
        box.write(b"From sender@example.net Thu Jan  1 00:00:00 2026\n" + b"\n".join(lines).rstrip(b"\n") + b"\n\n")
PYEOF
imap_moatd_conf
for i in $(seq "$users"); do
    echo "$PASS" | "$top/build/moatctl" -c "$work/moatd.conf" user add "u$i@example.com" > /dev/null
done
chown -R "$user" "$work/state"
# Dovecot: the same users with the same hashes, a Maildir each
mkdir -p "$work/dovecot/run" "$work/dovecot/state" "$work/dovecot/home"
chown nobody:nogroup "$work/dovecot/home"
awk '$1 == "user" { print $2 ":{CRYPT}" $3 }' "$work/state/accounts" > "$work/dovecot/passwd"
imap_servers_start "maildir:~/Maildir" "$work/dovecot/home/%u"
versions="$(dovecot --version | sed 's/^/dovecot /'), $("$top/build/moatd" -v)"
echo "$versions"

cputree() { # pid: CPU seconds of the process and its descendants (reaped ones included)
    "$PY" - "$1" <<'PYEOF'
import os, sys
hz = os.sysconf("SC_CLK_TCK")
kids, cpu = {}, {}
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        f = open("/proc/%s/stat" % p).read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    kids.setdefault(int(f[1]), []).append(int(p))
    cpu[int(p)] = sum(int(x) for x in f[11:15])
todo, total = [int(sys.argv[1])], 0
while todo:
    p = todo.pop()
    total += cpu.get(p, 0)
    todo += kids.get(p, [])
print("%.2f" % (total / hz))
PYEOF
}

run() { # label port pid mix
    local before after log=$out/stress-$1-$4.txt
    before=$(cputree "$3")
    echo "== $1 $4: load $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$log"
    local extra=()
    [ "$4" = default ] || IFS=, read -ra extra <<< "$4"
    timeout -k 5 $((secs + 60)) "$imaptest" host=127.0.0.1 port="$2" user="u%d@example.com" \
        pass="$PASS" users="1-$users" clients="$clients" secs="$secs" seed="$seed" \
        mbox="$work/stress.mbox" "${extra[@]}" >> "$log" 2>&1 || echo "imaptest ended with $?" >> "$log"
    after=$(cputree "$3")
    echo "cpu_s $before $after" >> "$log"
    tail -n 2 "$log"
}
rm -f "$out/stress_summary.md"
for mix in $mixes; do
    run moat $MOAT_IMAP "$(cat "$work/state/moatd.pid")" "$mix"
    run dovecot $DOVECOT_IMAP "$(cat "$work/dovecot/run/master.pid")" "$mix"
    "$PY" "$top/tests/bench/imap_stress.py" --versions "$versions" --clients "$clients" --users "$users" \
        --secs "$secs" --mix "$mix" --out "$out" "$out/stress-moat-$mix.txt" "$out/stress-dovecot-$mix.txt" |
        tee -a "$out/stress_summary.md"
done
cp "$work/dovecot/dovecot.log" "$out/stress-dovecot.log" 2>/dev/null || true
