#!/usr/bin/env bash
# tests/bench/tls_out.sh -- `make bench BENCH_PARTS=tls_out`: outbound delivery
# under TLS, the certificate verified (`tls = "verify"`) beside opportunistic
# TLS (`tls = "may"`) to the same next hop, in the same run, with the harness
# in ../shared/bench (relay-bench.sh):
#
#   smtp-source -> moatd (under test) -STARTTLS-> front moatd -> smtp-sink
#
# The next hop is a second moatd (the "front") that offers STARTTLS with a
# certificate from a CA made for the run (openssl; IP:127.0.0.1 in its
# subjectAltName); the moatd under test trusts that CA (queue.tls_ca_file).
# Both labels go through the same front, so what differs is the handshake
# and the check of the chain and the name: compare e2e msg/s, and CPU ms/msg
# of the moatd under test (its own process tree only, not the front's).
# Environment: BENCH_COUNT [5000], BENCH_REPEAT [1], BENCH_SIZES [2k,50k],
# BENCH_CONC [1,20,200], BENCH_WARMUP [500], BENCH_OUT [build/bench].
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/tests/bench/lib.sh"
shared=$(cd "$top/../shared/bench" 2>/dev/null && pwd) || { echo "bench: ../shared/bench not found" >&2; exit 2; }
out=${BENCH_OUT:-$top/build/bench}
count=${BENCH_COUNT:-5000}
repeat=${BENCH_REPEAT:-1}
sizes=${BENCH_SIZES:-2k,50k}
conc=${BENCH_CONC:-1,20,200}
TEST_PORT=2545 FRONT_PORT=2546 SINK_PORT=2555
mkdir -p "$out"

bench_setup tlsout

# the test CA and the front's certificate, valid for 127.0.0.1
(
    cd "$work"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=Moat Bench CA" \
        -keyout ca.key -out ca.pem
    openssl req -newkey rsa:2048 -nodes -subj "/CN=front.bench.invalid" -keyout front.key -out front.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:front.bench.invalid\n' > front.ext
    openssl x509 -req -in front.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile front.ext -out front.pem
    chmod 644 ./*.pem ./*.key
) > "$work/openssl.log" 2>&1 || { cat "$work/openssl.log" >&2; exit 2; }

conf() {    # conf NAME PORT DOMAIN-SETTINGS [EXTRA]
    cat > "$work/$1.conf" <<CONF
hostname = "$1.bench.invalid";
state_dir = "$work/$1";
user = "$user";
listen { smtp = [ "127.0.0.1:$2" ]; }
domains { example.com { delivery = "relay"; $3 } }
limits { connections = 20000; connections_per_ip = 20000; }
queue { concurrency = 200; min_backoff = 5s; max_backoff = 10s; tls_ca_file = "$work/ca.pem"; }
${4:-}
CONF
}
conf front "$FRONT_PORT" "relay_to = \"127.0.0.1:$SINK_PORT\"; tls = \"none\";" \
    "tls { cert = \"$work/front.pem\"; key = \"$work/front.key\"; }"
conf verify "$TEST_PORT" "relay_to = \"127.0.0.1:$FRONT_PORT\"; tls = \"verify\";"
conf may "$TEST_PORT" "relay_to = \"127.0.0.1:$FRONT_PORT\"; tls = \"may\";"

stop() {
    [ -s "$work/$1/moatd.pid" ] || return 0
    local p; p=$(cat "$work/$1/moatd.pid")
    kill "$p" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
}
bench_stop() { stop verify; stop may; stop front; }

"$top/tests/bench/relay.sh" --restart-moat "$work" front "$FRONT_PORT"
echo "$("$top/build/moatd" -v), $(openssl version)"
args=(--sink-port "$SINK_PORT" --sizes "$sizes" --conc "$conc" --count "$count" --repeat "$repeat"
      --warmup "${BENCH_WARMUP:-500}")
for mode in may verify; do
    "$shared/relay-bench.sh" --label "moat tls=$mode" --target-port "$TEST_PORT" "${args[@]}" \
        --pid-cmd "cat $work/$mode/moatd.pid" \
        --before-run "$top/tests/bench/relay.sh --restart-moat $work $mode $TEST_PORT" | tee "$out/tls_out-$mode.txt"
    stop "$mode"
done
