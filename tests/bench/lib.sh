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

# The imap benches (imap.sh, imap_stress.sh): moatd and a private Dovecot on
# loopback, the same connection limits, $MOAT_SMTP, $MOAT_IMAP, $DOVECOT_IMAP.
#   imap_moatd_conf              writes $work/moatd.conf (local delivery for
#                                example.com)
#   imap_servers_start LOC HOME  writes $work/dovecot/dovecot.conf (passwd-file
#                                $work/dovecot/passwd, mail_location LOC as
#                                maildir:PATH, the
#                                users' home HOME), starts moatd and Dovecot and
#                                waits until both answer
imap_moatd_conf() {
    cat > "$work/moatd.conf" <<CONF
hostname = "mx.bench.invalid";
state_dir = "$work/state";
user = "$user";
listen { smtp = [ "127.0.0.1:$MOAT_SMTP" ]; imap = [ "127.0.0.1:$MOAT_IMAP" ]; }
domains { example.com { delivery = "local"; } }
limits { connections = 5000; connections_per_ip = 5000; }
CONF
}

imap_servers_start() {
    cat > "$work/dovecot/dovecot.conf" <<CONF
protocols = imap
listen = 127.0.0.1
base_dir = $work/dovecot/run
state_dir = $work/dovecot/state
log_path = $work/dovecot/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = $1
passdb {
  driver = passwd-file
  args = $work/dovecot/passwd
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$2
}
default_process_limit = 5000
default_client_limit = 10000
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $DOVECOT_IMAP
  }
  inet_listener imaps {
    port = 0
  }
  service_count = 0
  process_min_avail = 2
}
service imap {
  process_limit = 5000
}
protocol imap {
  mail_max_userip_connections = 5000
}
service anvil {
  client_limit = 20000
}
service auth {
  client_limit = 20000
}
CONF
    "$top/build/moatd" -c "$work/moatd.conf"
    dovecot -c "$work/dovecot/dovecot.conf"
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/$MOAT_IMAP) 2>/dev/null &&
            (exec 3<>/dev/tcp/127.0.0.1/$DOVECOT_IMAP) 2>/dev/null && break
        sleep 0.1
    done
}
