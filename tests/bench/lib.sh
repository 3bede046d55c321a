# tests/bench/lib.sh -- what the bench scripts share (sourced).
#
#   bench_setup NAME   a private work directory $work (/tmp/moat-NAME-*), the
#                      daemon's user $user (moat, made if missing; else nobody),
#                      $pids for background processes; on exit bench_cleanup
#                      stops moatd ($work/state/moatd.pid), runs the script's
#                      bench_stop hook if it has one, kills $pids and removes
#                      $work.
bench_setup() {
    work=$(mktemp -d "/tmp/moat-$1-XXXXXX")
    chmod 755 "$work"
    user=moat
    id "$user" >/dev/null 2>&1 ||
        useradd --system --no-create-home --shell /usr/sbin/nologin "$user" 2>/dev/null || user=nobody
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    [ -s "$work/state/moatd.pid" ] && kill "$(cat "$work/state/moatd.pid")" 2>/dev/null || true
    if declare -F bench_stop >/dev/null; then bench_stop; fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
