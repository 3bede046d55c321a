#!/usr/bin/env bash
# tests/bench/chain.sh -- `make bench`, the filter chain: messages per second
# and the latency of the end of data through moatd with no filters, with the
# antivirus filter, and with the whole chain (spf dkim dmarc antivirus
# attachment), side by side in the same run with clamd scanning the same
# kind of messages over its socket and a tiny in-process libclamav loop (the
# limit), all with the same 300k-signature database (../shared/bench).
#
# The corpus (../shared/bench/scan-corpus.sh): plain text, HTML, PDF and zip
# attachments, 6% infected. Every run uses a corpus of its own (ClamAV keeps
# a cache of clean results). Moat is measured end to end -- SMTP, PROXY
# header, the filters, the queue file fsynced -- from the last byte of the
# message to the 250 (or the 550 for a virus); clamd and libclamav scan only.
# The chain's DNS (SPF, DKIM key, DMARC record) comes from a local test DNS
# server, cached by moatd's resolver after the warm-up.
# Environment: CHAIN_COUNT [300] messages per run, CHAIN_CONC [1,2,4],
# BENCH_OUT [build/bench], CHAIN_RUNS [none antivirus chain chain-noav] the
# moatd configurations to measure, CHAIN_MOATD [build/moatd] the binary
# (CHAIN_BEFORE=path also measures that binary's antivirus, "antivirus-before"),
# CHAIN_SCAN_ARGS [] more scan_bench.py options for the peers (on a busy
# machine: "--retries 0 --quiet-wait 5", and compare the CPU per message),
# CHAIN_PROFILE [chain] the run whose first concurrency perf records (every
# moatd process, DWARF call graphs, 99 Hz; "" for none): $out/profile.txt
# has the top entries, $out/profile.folded the stacks folded for a flame
# graph (flamegraph.pl, speedscope, or read it: one stack and its count a line).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/tests/bench/lib.sh"
shared=$(cd "$top/../shared/bench" 2>/dev/null && pwd) || { echo "bench: ../shared/bench not found" >&2; exit 2; }
out=${BENCH_OUT:-$top/build/bench}/chain
count=${CHAIN_COUNT:-300}
moatd=${CHAIN_MOATD:-$top/build/moatd}
conc=${CHAIN_CONC:-1,2,4}
PY=/usr/bin/python3
MOAT_PORT=2545 SINK_PORT=2556 DNS_PORT=2557
export SB_DIR=$out/scan
mkdir -p "$out" "$SB_DIR"
csv=$out/results.csv
rm -f "$out/moat.jsonl"
# CHAIN_MOAT_ONLY=1: keep the peers' figures of the last run, measure Moat again
[ -n "${CHAIN_MOAT_ONLY:-}" ] && [ -s "$csv" ] || rm -f "$csv"

echo "== setup: scanner tools, corpora, signature databases"
"$shared/scan-bench.sh" build >/dev/null
"$shared/scan-bench.sh" corpora "$count" 20 >/dev/null
[ -d "$SB_DIR/db-300k" ] || "$shared/scan-db.sh" "$SB_DIR" >/dev/null

if [ ! -s "$csv" ]; then
echo "== libclamav in process (the limit) and clamd over its socket"
"$shared/scan-bench.sh" run --label libclamav --kind libclamav --db "$SB_DIR/db-300k" \
    --conc "$conc" --count "$count" --repeat 1 --warmup 0 --corpus-start 0 --unique --csv "$csv" ${CHAIN_SCAN_ARGS:-}
"$shared/scan-peers.sh" clamd start "$SB_DIR/db-300k" >/dev/null
"$shared/scan-bench.sh" run --label clamd --kind clamd --server "$SB_DIR/clamd/clamd.sock" \
    --pid "$("$shared/scan-peers.sh" clamd pid)" --db "$SB_DIR/db-300k" --conc "$conc" \
    --count "$count" --repeat 1 --warmup 100 --corpus-start 3 --unique --csv "$csv" ${CHAIN_SCAN_ARGS:-}
"$shared/scan-peers.sh" clamd stop >/dev/null
fi
# the limit for one clean 20 KB HTML message: libclamav alone, one at a time
grep html "$SB_DIR/corpora/c19/files.txt" | head -60 > "$out/html20k.txt"
"$SB_DIR/bin/scan-libclamav" -d "$SB_DIR/db-300k" "$out/html20k.txt" | tail -n 1 > "$out/html20k_limit.json"
cat "$out/html20k_limit.json"

# ------------------------------------------------------------------ moatd
bench_setup chain

# the sender's DKIM key, its DNS record, signed copies of the chain's corpora
keydir=$top/../shared/testdata/dkim/dkimpy
dkim_txt=$(tr -s ' \n\t' ' ' < "$keydir/test.txt" | sed 's/^ *//; s/ *$//')
"$PY" "$top/tests/bench/chain_dns.py" "$DNS_PORT" "$dkim_txt" > "$work/dns.log" 2>&1 & pids+=($!)
smtp-sink -u nobody 127.0.0.1:$SINK_PORT 1000 & pids+=($!)

# the flame graph's input and the top entries, into $out
profile_report() { # perf.data title
    { echo "perf profile of moatd (all processes): $2"
      perf report -i "$1" --stdio --no-children --sort dso,symbol -g none 2>/dev/null \
          | grep -v '^#' | grep -v '^$' | head -40
    } > "$out/profile.txt"
    perf script -i "$1" 2>/dev/null | "$PY" -c '
import collections, sys
stacks, frames = collections.Counter(), []
for line in sys.stdin:
    line = line.rstrip("\n")
    if not line.strip():
        if frames:
            stacks[";".join(reversed(frames))] += 1
        frames = []
    elif line.startswith(("\t", " ")):
        parts = line.split(None, 1)
        f = parts[1] if len(parts) > 1 else "?"
        name, _, dso = f.partition(" (")
        name = name.split("+0x")[0]
        if name == "[unknown]":
            dso = dso.rstrip(")").rsplit("/", 1)[-1]
            name = dso if dso.startswith("[") else "[" + dso + "]"
        frames.append(name)
for st, n in stacks.most_common():
    print(st, n)
' > "$out/profile.folded"
    echo "profile: $out/profile.txt, $out/profile.folded ($(wc -l < "$out/profile.folded") stacks)"
}

moat_run() { # label filters first-corpus [concurrencies]
    local label=$1 filters=$2 sections="" concs=${4:-$conc}
    [[ $filters == *antivirus* ]] && sections+="antivirus { database = \"$SB_DIR/db-300k\"; }"$'\n'
    [[ $filters == *spf* ]] && sections+='spf { fail = "continue"; }'$'\n'
    cat > "$work/moatd.conf" <<CONF
hostname = "mx.bench.invalid";
state_dir = "$work/state";
user = "$user";
listen { smtp = [ { address = "127.0.0.1:$MOAT_PORT"; proxy_protocol = true; } ]; }
domains { example.com { delivery = "relay"; relay_to = "127.0.0.1:$SINK_PORT"; } }
limits { connections = 2000; connections_per_ip = 2000; message_size = 50mb; }
dns { forwarder = "127.0.0.1:$DNS_PORT"; timeout = 5s; }
filters = [ $filters ];
$sections
CONF
    rm -rf "$work/state"
    "${5:-$moatd}" -c "$work/moatd.conf"
    local i
    for i in $(seq 600); do
        (exec 3<>/dev/tcp/127.0.0.1/$MOAT_PORT) 2>/dev/null && break; sleep 0.1
    done
    # the antivirus engine loads before the smtp role takes connections
    "$PY" "$top/tests/bench/chain_load.py" --port $MOAT_PORT --files "$SB_DIR/corpora/cw/files.txt" \
        --conc 2 --count 100 --label warmup > /dev/null
    local c ci=$3
    for c in ${concs//,/ }; do
        local list=$SB_DIR/corpora/$(printf c%02d "$ci")/files.txt
        if [[ $label == chain* ]]; then
            "$PY" "$top/tests/bench/chain_sign.py" "$keydir/test.private" "$(dirname "$list")" \
                "$work/signed-$ci"
            list=$work/signed-$ci/files.txt
        fi
        local perfpid=""
        if [[ $label == "${CHAIN_PROFILE-chain}" && $c == "${conc%%,*}" ]] && command -v perf >/dev/null; then
            perf record -q -F 99 --call-graph dwarf,16384 -o "$work/perf.data" \
                -p "$(pgrep -d, -f "moatd -c $work/moatd.conf")" 2>/dev/null & perfpid=$!
        fi
        "$PY" "$top/tests/bench/chain_load.py" --port $MOAT_PORT --files "$list" --conc "$c" \
            --pid "$(cat "$work/state/moatd.pid")" --label "$label" | tee -a "$out/moat.jsonl"
        if [ -n "$perfpid" ]; then
            kill -INT "$perfpid"; wait "$perfpid" || true
            profile_report "$work/perf.data" "$label, concurrency $c"
        fi
        ci=$((ci + 1))
    done
    # the latency a user notices: clean 20 KB HTML messages, one at a time
    local list=$SB_DIR/corpora/$(printf c%02d "$ci")/files.txt
    if [[ $label == chain* ]]; then
        "$PY" "$top/tests/bench/chain_sign.py" "$keydir/test.private" "$(dirname "$list")" "$work/signed-$ci"
        list=$work/signed-$ci/files.txt
    fi
    "$PY" "$top/tests/bench/chain_load.py" --port $MOAT_PORT --files "$list" --conc 1 --kind html \
        --label "$label-html20k" | tee -a "$out/moat.jsonl"
    ps -o rss= -p "$(pgrep -d, -f "moatd -c $work/moatd.conf")" | awk '{s+=$1} END {printf "{\"label\": \"'"$label"'-rss\", \"rss_mb\": %.1f}\n", s/1024}' \
        | tee -a "$out/moat.jsonl"
    kill "$(cat "$work/state/moatd.pid")"
    for i in $(seq 100); do [ -e "$work/state/moatd.pid" ] || break; sleep 0.1; done
}

echo "== moatd: no filters, antivirus, the whole chain"
runs=" ${CHAIN_RUNS:-none antivirus chain chain-noav} "
[[ $runs == *" none "* ]] && moat_run none '' 6
[[ $runs == *" antivirus "* ]] && moat_run antivirus '"antivirus"' 10
# the same corpora through an older binary: before and after in one run
[ -n "${CHAIN_BEFORE:-}" ] && moat_run antivirus-before '"antivirus"' 10 "$conc" "$CHAIN_BEFORE"
[[ $runs == *" chain "* ]] && moat_run chain '"spf", "dkim", "dmarc", "antivirus", "attachment"' 14
# the chain without the virus scanner: what Moat's own code adds
[[ $runs == *" chain-noav "* ]] && moat_run chain-noav '"spf", "dkim", "dmarc", "attachment"' 18 1

"$PY" - "$csv" "$out/moat.jsonl" <<'PYEOF' | tee "$out/summary.md"
import csv, json, sys
scan = {}
rows = list(csv.DictReader(open(sys.argv[1])))
for r in rows:     # a quiet run when there is one, else the last noisy one
    if r.get("noisy") not in ("1", "True", "true"):
        scan.setdefault((r["label"], int(r["conc"])), r)
for r in rows:
    if (r["label"], int(r["conc"])) not in scan or scan[(r["label"], int(r["conc"]))].get("noisy") == "1":
        scan[(r["label"], int(r["conc"]))] = r
moat = {}
for line in open(sys.argv[2]):
    d = json.loads(line)
    moat[(d["label"], d.get("conc"))] = d
concs = sorted({c for (_, c) in scan} | {c for (l, c) in moat if c and "html" not in l})
before = any(l == "antivirus-before" for (l, _) in moat)
print("| conc | libclamav msg/s | clamd msg/s | Moat none | Moat antivirus | Moat chain | av / clamd | av / libclamav |"
      + (" av before / clamd |" if before else ""))
print("|---|---|---|---|---|---|---|---|" + ("---|" if before else ""))
for c in concs:
    lib = float(scan.get(("libclamav", c), {}).get("msgs_s", 0) or 0)
    cd = float(scan.get(("clamd", c), {}).get("msgs_s", 0) or 0)
    none = moat.get(("none", c), {}).get("msgs_per_s", 0)
    av = moat.get(("antivirus", c), {}).get("msgs_per_s", 0)
    ch = moat.get(("chain", c), {}).get("msgs_per_s", 0)
    r1 = "%.2fx" % (av / cd) if cd else "-"
    r2 = "%.0f%%" % (100 * av / lib) if lib else "-"
    avb = moat.get(("antivirus-before", c), {}).get("msgs_per_s", 0)
    r3 = (" %.2fx (%.0f) |" % (avb / cd, avb) if cd else " - |") if before else ""
    print(f"| {c} | {lib:.0f} | {cd:.0f} | {none:.0f} | {av:.0f} | {ch:.0f} | {r1} | {r2} |{r3}")
print()
print("Server CPU per message (ms; steadier than msg/s on a loaded machine; Moat: the whole moatd)")
print()
print("| conc | libclamav | clamd | Moat none | Moat antivirus | Moat chain |" + (" Moat antivirus before |" if before else ""))
print("|---|---|---|---|---|---|" + ("---|" if before else ""))
for c in concs:
    f = lambda l: moat.get((l, c), {}).get("server_cpu_ms", "-")
    g = lambda l: scan.get((l, c), {}).get("server_cpu_ms", "-")
    print(f"| {c} | {g('libclamav')} | {g('clamd')} | {f('none')} | {f('antivirus')} | {f('chain')} |"
          + (f" {f('antivirus-before')} |" if before else ""))
print()
print("| clean 20 KB HTML, one at a time | p50 ms | p99 ms |")
print("|---|---|---|")
for l in ("none", "antivirus", "antivirus-before", "chain", "chain-noav"):
    d = moat.get((l + "-html20k", 1), {})
    if not d:
        continue
    print(f"| Moat {l} | {d.get('p50_ms')} | {d.get('p99_ms')} |")
n = moat.get(("none-html20k", 1), {})
for l, what in (("chain", "The whole chain"), ("chain-noav", "spf, dkim, dmarc and attachment")):
    ch = moat.get((l + "-html20k", 1), {})
    if n.get("p50_ms") is not None and ch.get("p50_ms") is not None:
        print(f"\n{what} adds {ch['p50_ms'] - n['p50_ms']:.2f} ms median and "
              f"{ch['p99_ms'] - n['p99_ms']:.2f} ms p99 to a clean 20 KB message.")
print("\nlibclamav alone, in process, on the same kind of 20 KB HTML message: see html20k_limit.json")
rss = {l: moat.get((l + "-rss", None), {}).get("rss_mb") for l in ("none", "antivirus", "chain", "chain-noav")}
print("RSS of moatd (all processes): " + ", ".join(f"{l} {v} MB" for l, v in rss.items()))
PYEOF
