#!/usr/bin/env bash
# tests/bench/relay.sh -- `make bench`: Moat beside Postfix as the same relay,
# in the same run, with the harness in ../shared/bench:
#   smtp-source -> server -> smtp-sink, 2 KB and 50 KB, concurrency 1/20/200,
#   messages per second counted at the sink, CPU and peak memory;
#   then the same relay with recipient verification on (moat-verify:
#   verify = "callout" for the relay domain, the next hop asked once and the
#   answer cached in a private Redis, so every later RCPT is a Redis GET);
#   then memory per idle connection with 5,000 idle connections to moatd.
# Moat runs with durability on (every 250 after fsync of file and directory).
# Environment: BENCH_COUNT [5000], BENCH_REPEAT [1], BENCH_SIZES [2k,50k],
# BENCH_CONC [1,20,200], BENCH_IDLE [5000], BENCH_WARMUP [500], BENCH_OUT [build/bench].
set -euo pipefail
if [ "${1:-}" = "--restart-moat" ]; then     # --before-run hook: a fresh moatd
    # --restart-moat WORK [NAME PORT]: $WORK/NAME.conf, state in $WORK/NAME/
    work=$2 name=${3:-state} port=${4:-2535} top=$(cd "$(dirname "$0")/../.." && pwd)
    conf=$work/moatd.conf; [ "$name" = state ] || conf=$work/$name.conf
    if [ -s "$work/$name/moatd.pid" ]; then
        p=$(cat "$work/$name/moatd.pid"); kill "$p" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "${work:?}/$name"
    "$top/build/moatd" -c "$conf"
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && exit 0; sleep 0.1; done
    exit 1
fi
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/tests/bench/lib.sh"
shared=$(cd "$top/../shared/bench" 2>/dev/null && pwd) || { echo "bench: ../shared/bench not found" >&2; exit 2; }
out=${BENCH_OUT:-$top/build/bench}
count=${BENCH_COUNT:-5000}
repeat=${BENCH_REPEAT:-1}
sizes=${BENCH_SIZES:-2k,50k}
conc=${BENCH_CONC:-1,20,200}
idle=${BENCH_IDLE:-5000}
MOAT_PORT=2535 VERIFY_PORT=2536 PF_PORT=2526 SINK_PORT=2555 REDIS_PORT=26390
mkdir -p "$out"
export RB_DIR=$out/peers PF_PORT SINK_PORT

bench_setup bench
cat > "$work/moatd.conf" <<CONF
hostname = "relay.bench.invalid";
state_dir = "$work/state";
user = "$user";
listen { smtp = [ "127.0.0.1:$MOAT_PORT" ]; }
domains { example.com { delivery = "relay"; relay_to = "127.0.0.1:$SINK_PORT"; } }
limits { connections = 20000; connections_per_ip = 20000; }
queue { concurrency = 200; min_backoff = 5s; max_backoff = 10s; }
CONF

# moat-verify: the same relay, recipients of example.com verified by callout
# to the next hop (the sink, which knows every address), cached in Redis
sed -e "s|^state_dir = .*|state_dir = \"$work/verify\";|; s|127.0.0.1:$MOAT_PORT|127.0.0.1:$VERIFY_PORT|" \
    -e 's|relay_to = "127.0.0.1:'"$SINK_PORT"'";|& verify = "callout";|' "$work/moatd.conf" \
    > "$work/verify.conf"
echo "redis { address = \"127.0.0.1:$REDIS_PORT\"; }" >> "$work/verify.conf"
grep -q 'verify = "callout"' "$work/verify.conf" || { echo "bench: verify.conf not made" >&2; exit 2; }
redis-server --bind 127.0.0.1 --port $REDIS_PORT --save "" --appendonly no --dir "$work" \
    > "$work/redis.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do redis-cli -p $REDIS_PORT ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done

moat_start() {
    rm -rf "$work/state"
    "$top/build/moatd" -c "$work/moatd.conf"
    for _ in $(seq 100); do [ -s "$work/state/moatd.pid" ] && (exec 3<>/dev/tcp/127.0.0.1/$MOAT_PORT) 2>/dev/null && break; sleep 0.1; done
}
moat_start
moat_stop() {
    [ -s "$work/state/moatd.pid" ] || return 0
    local p; p=$(cat "$work/state/moatd.pid")
    kill "$p" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
}
verify_stop() {
    [ -s "$work/verify/moatd.pid" ] && kill "$(cat "$work/verify/moatd.pid")" 2>/dev/null || true
}
# wait for moatd to be gone before Postfix's sink goes too
bench_stop() { moat_stop; verify_stop; "$shared/relay-peers.sh" postfix stop >/dev/null 2>&1 || true; }

echo "$(dpkg-query -W -f='postfix ${Version}' postfix), $("$top/build/moatd" -v)"
args=(--sink-port "$SINK_PORT" --sizes "$sizes" --conc "$conc" --count "$count" --repeat "$repeat"
      --warmup "${BENCH_WARMUP:-500}")

"$shared/relay-bench.sh" --label limit --target-port "$SINK_PORT" "${args[@]}" | tee "$out/limit.txt"
"$shared/relay-bench.sh" --label postfix --target-port "$PF_PORT" "${args[@]}" \
    --pid-cmd "$shared/relay-peers.sh postfix pid" --before-run "$shared/relay-peers.sh postfix restart" \
    | tee "$out/postfix.txt"
"$shared/relay-peers.sh" postfix stop
"$shared/relay-bench.sh" --label moat --target-port "$MOAT_PORT" "${args[@]}" \
    --pid-cmd "cat $work/state/moatd.pid" --before-run "$0 --restart-moat $work" \
    | tee "$out/moat.txt"
moat_stop
"$shared/relay-bench.sh" --label moat-verify --target-port "$VERIFY_PORT" "${args[@]}" \
    --pid-cmd "cat $work/verify/moatd.pid" --before-run "$0 --restart-moat $work verify $VERIFY_PORT" \
    | tee "$out/moat-verify.txt"
verify_stop
echo "callouts cached: $(redis-cli -p $REDIS_PORT --scan --pattern 'moat:callout:*' | wc -l)" \
    "(the first RCPT asked the sink; every later one was answered from Redis)"

echo
echo "## memory per idle connection"
moat_stop; moat_start
/usr/bin/python3 "$top/tests/bench/idle_conns.py" --port "$MOAT_PORT" --pid "$(cat "$work/state/moatd.pid")" \
    --count "$idle" --label moat | tee "$out/idle.txt"
"$shared/relay-peers.sh" postfix start >/dev/null
/usr/bin/python3 "$top/tests/bench/idle_conns.py" --port "$PF_PORT" --pid "$("$shared/relay-peers.sh" postfix pid)" \
    --count 200 --label "postfix (200: its smtpd process limit is 250)" | tee -a "$out/idle.txt" || true
