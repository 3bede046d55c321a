#!/usr/bin/env bash
# deploy/run-demo.sh -- `make run`: a working Moat on loopback.
#
# SMTP on 127.0.0.1:2525 (STARTTLS with a self-signed certificate made on
# first run), submission on 127.0.0.1:2587 and implicit TLS on 127.0.0.1:2465.
# Mail for demo.example is relayed to a local smtp-sink on 127.0.0.1:2555
# that writes each message it receives into demo/sink/. Mail for
# mail.demo is delivered into Moat's own store and read over IMAP on
# 127.0.0.1:2143 (implicit TLS 2993) and POP3 on 127.0.0.1:2110 (2995); the
# mailbox alice@mail.demo (password "demo password") is made on first run.
# Spam scoring runs on every message: lists, Bayes, SpamAssassin's rules
# and the score thresholds, with their state in a private redis-server on
# 127.0.0.1:2579 (data in demo/redis). The web UI is on
# http://127.0.0.1:2080/ (and https://127.0.0.1:2443/ with the self-signed
# certificate): sign in as admin@mail.demo (superadmin) or alice@mail.demo,
# both "demo password". State lives in demo/state. Ctrl-C stops everything.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
demo=$top/demo
mkdir -p "$demo/state" "$demo/sink" "$demo/redis"
user=moat
if [ "$(id -u)" = 0 ] && ! id "$user" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$user" 2>/dev/null || user=nobody
fi
[ "$(id -u)" = 0 ] || user=$(id -un)
if [ ! -f "$demo/cert.pem" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=localhost" \
        -keyout "$demo/key.pem" -out "$demo/cert.pem" 2>/dev/null
    chmod 600 "$demo/key.pem"
fi
if [ "$(id -u)" = 0 ]; then
    chmod 755 "$demo"
    chown -R "$user" "$demo/sink"
fi
cat > "$demo/moatd.conf" <<CONF
# Moat demo configuration (written by deploy/run-demo.sh)
hostname = "localhost";
state_dir = "$demo/state";
user = "$user";
listen {
  smtp = [ "127.0.0.1:2525" ];
  submission = [ "127.0.0.1:2587" ];
  smtps = [ "127.0.0.1:2465" ];
  imap = [ "127.0.0.1:2143" ];
  imaps = [ "127.0.0.1:2993" ];
  pop3 = [ "127.0.0.1:2110" ];
  pop3s = [ "127.0.0.1:2995" ];
  web = [ "127.0.0.1:2080" ];
  webs = [ "127.0.0.1:2443" ];
}
web { app_dir = "$top/build/webui"; base_url = "http://127.0.0.1:2080"; }
tls { cert = "$demo/cert.pem"; key = "$demo/key.pem"; }
domains {
  demo.example { delivery = "relay"; relay_to = "127.0.0.1:2555"; }
  mail.demo { delivery = "local"; junk = true; }
}
queue { min_backoff = 10s; max_backoff = 5min; }
redis { address = "127.0.0.1:2579"; }
filters = [ "lists", "bayes", "rules", "score" ];
bayes { min_learned = 10; }
score { tag = 4; quarantine = 6; reject = 20; }
CONF
"$top/build/moatd" -t -c "$demo/moatd.conf"
if ! "$top/build/moatctl" -c "$demo/moatd.conf" user list 2>/dev/null | grep -q '^alice@mail.demo'; then
    echo 'demo password' | "$top/build/moatctl" -c "$demo/moatd.conf" user add alice@mail.demo
fi
if ! "$top/build/moatctl" -c "$demo/moatd.conf" user list 2>/dev/null | grep -q '^admin@mail.demo'; then
    echo 'demo password' | "$top/build/moatctl" -c "$demo/moatd.conf" user add admin@mail.demo role=superadmin
fi

sinkpid= moatpid= redispid=
cleanup() {
    [ -n "$moatpid" ] && kill "$moatpid" 2>/dev/null && wait "$moatpid" 2>/dev/null
    [ -n "$sinkpid" ] && kill "$sinkpid" 2>/dev/null
    [ -n "$redispid" ] && kill "$redispid" 2>/dev/null
    true
}
trap cleanup EXIT
trap 'exit 0' INT TERM
if [ "$(id -u)" = 0 ]; then
    smtp-sink -u "$user" -d "$demo/sink/%Y%m%d%H%M." 127.0.0.1:2555 100 &
else
    smtp-sink -d "$demo/sink/%Y%m%d%H%M." 127.0.0.1:2555 100 &
fi
sinkpid=$!
redis-server --bind 127.0.0.1 --port 2579 --dir "$demo/redis" --save 60 1 --appendonly no \
    > "$demo/redis/redis.log" 2>&1 &
redispid=$!
for i in $(seq 50); do redis-cli -p 2579 ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done

cat <<MSG

  Moat is starting on loopback (Ctrl-C stops it).

  Send a message (it is relayed to the demo sink, which saves it in demo/sink/):
    swaks --server 127.0.0.1:2525 --from you@example.org --to user@demo.example --tls
  Try an open relay (refused with 554 5.7.1):
    swaks --server 127.0.0.1:2525 --from you@example.org --to victim@elsewhere.example
  Submission with a login:
    echo 'a long password' | build/moatctl -c demo/moatd.conf user add you@demo.example
    swaks --server 127.0.0.1:2587 --tls --auth-user you@demo.example --auth-password 'a long password' \\
          --from you@demo.example --to anyone@demo.example
  Deliver into the local store, then read it over IMAP or POP3 (alice@mail.demo, "demo password"):
    swaks --server 127.0.0.1:2525 --from you@example.org --to alice@mail.demo
    curl -s --user 'alice@mail.demo:demo password' 'imap://127.0.0.1:2143/INBOX;UID=1'
    curl -s --user 'alice@mail.demo:demo password' pop3://127.0.0.1:2110/1
  Spam: the GTUBE test message is refused (550), and the rules say why:
    swaks --server 127.0.0.1:2525 --from you@example.org --to alice@mail.demo \\
          --body 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X'
    build/moatctl -c demo/moatd.conf rules check | head
  Allow a sender for alice, teach Bayes:
    build/moatctl -c demo/moatd.conf allow add you@example.org alice@mail.demo
    build/moatctl -c demo/moatd.conf learn spam FILE-OR-MAILDIR
  Look at the queue:
    build/moatctl -c demo/moatd.conf queue list
  The web UI: http://127.0.0.1:2080/ as admin@mail.demo or alice@mail.demo ("demo password").
  A message the rules score high enough is held for review there:
    swaks --server 127.0.0.1:2525 --from you@example.org --to alice@mail.demo \\
          --header 'Subject: FREE VIAGRA!!! Cheap meds, act now' \\
          --body 'Dear friend, buy VIAGRA and CIALIS online without prescription.'
  Mail alice a digest of her held mail, with release links:
    build/moatctl -c demo/moatd.conf quarantine digest

MSG
"$top/build/moatd" -f -c "$demo/moatd.conf" &
moatpid=$!
wait "$moatpid"
