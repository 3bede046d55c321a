#!/usr/bin/env bash
# tests/bench/backup.sh -- `make bench`, backup and restore: moatctl backup
# and restore of a state with BACKUP_MESSAGES mailbox messages (10,000) and
# BACKUP_HELD held ones (1,000), plain and encrypted, beside GNU tar + gzip
# (tar czf / tar xzf of the same state_dir, the floor any archive of these
# files pays), in the same run. The issue's target: backup under 30 s, and
# restore as long. The messages are scan-corpus.sh's (plain and HTML mail,
# a few KB to 20 KB); held mail is the same bytes in quarantine/ (backup
# copies files whole, it does not parse them). No Redis: its part is a few
# DUMPs and not what grows with the mail.
# Environment: BACKUP_MESSAGES [10000], BACKUP_HELD [1000], BENCH_OUT [build/bench].
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/tests/bench/lib.sh"
shared=$(cd "$top/../shared/bench" 2>/dev/null && pwd) || { echo "bench: ../shared/bench not found" >&2; exit 2; }
out=${BENCH_OUT:-$top/build/bench}/backup
count=${BACKUP_MESSAGES:-10000}
held=${BACKUP_HELD:-1000}
PY=/usr/bin/python3
ctl=$top/build/moatctl
mkdir -p "$out"

bench_setup backupbench
echo "== setup: $count messages in 10 mailboxes, $held held"
"$shared/scan-corpus.sh" "$work/corpus" "$count" 4242 "plain=70,html=30" > /dev/null
cat > "$work/moatd.conf" <<CONF
hostname = "mx.bench.invalid";
state_dir = "$work/state";
user = "$user";
listen { smtp = [ "127.0.0.1:2547" ]; }
domains { example.com { delivery = "local"; } }
CONF
for i in 0 1 2 3 4 5 6 7 8 9; do
    echo "bench password" | "$ctl" -c "$work/moatd.conf" user add "u$i@example.com" > /dev/null
done
"$PY" - "$work/corpus/files.txt" "$work/state" "$held" <<'PYEOF'
import os, sys
names = [l.strip() for l in open(sys.argv[1]) if l.strip()]
state, held = sys.argv[2], int(sys.argv[3])
for i, n in enumerate(names):
    data = open(n, "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    box = os.path.join(state, "mail", "example.com", "u%d" % (i % 10), "cur")
    os.makedirs(box, exist_ok=True)
    t = 1764000000 + i
    open(os.path.join(box, "%d.M%06dP1Q%d.bench,S=%d:2,S" % (t, i, i, len(data))), "wb").write(data)
    if i < held:
        q = os.path.join(state, "quarantine")
        os.makedirs(q, exist_ok=True)
        open(os.path.join(q, "%020X" % (0x06B0000000000000000 + i)), "wb").write(data)
PYEOF
chown -R "$user" "$work/state"
openssl genpkey -algorithm X25519 -out "$work/backup.key" 2>/dev/null
openssl pkey -in "$work/backup.key" -pubout -out "$work/backup.pub"
bytes=$(du -sb "$work/state" | cut -f1)

secs() { local t0=$EPOCHREALTIME; "$@" > /dev/null; awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
fresh() { rm -rf "$work/state"; }
cp -a "$work/state" "$work/state.orig"

echo "== backup and restore of $count messages + $held held ($bytes bytes)"
r_tar_c=$(secs tar -C "$work" -czf "$work/tar.tar.gz" state)
r_b=$(secs "$ctl" -c "$work/moatd.conf" backup "$work/moat.tar.gz")
r_be=$(secs "$ctl" -c "$work/moatd.conf" backup --encrypt-to "$work/backup.pub" "$work/moat.tar.gz.enc")
fresh; r_tar_x=$(secs tar -C "$work" -xzf "$work/tar.tar.gz")
fresh; r_r=$(secs "$ctl" -c "$work/moatd.conf" restore "$work/moat.tar.gz")
diff -r "$work/state.orig" "$work/state" > /dev/null || { echo "bench: the restored state differs" >&2; exit 1; }
fresh; r_re=$(secs "$ctl" -c "$work/moatd.conf" restore --decrypt-key "$work/backup.key" "$work/moat.tar.gz.enc")
size() { stat -c %s "$1"; }
{
    printf '%-34s %10s %14s\n' "" "seconds" "archive bytes"
    printf '%-34s %10.2f %14s\n' "moatctl backup" "$r_b" "$(size "$work/moat.tar.gz")"
    printf '%-34s %10.2f %14s\n' "moatctl backup --encrypt-to" "$r_be" "$(size "$work/moat.tar.gz.enc")"
    printf '%-34s %10.2f %14s\n' "tar czf (GNU tar, gzip)" "$r_tar_c" "$(size "$work/tar.tar.gz")"
    printf '%-34s %10.2f\n' "moatctl restore" "$r_r"
    printf '%-34s %10.2f\n' "moatctl restore --decrypt-key" "$r_re"
    printf '%-34s %10.2f\n' "tar xzf" "$r_tar_x"
} | tee "$out/results.txt"
