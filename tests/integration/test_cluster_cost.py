"""Scale on paper: the Redis commands one message costs, counted on a real
redis-server (INFO commandstats, and MONITOR for which key each command
touched) while N messages go through lists, greylist, ratelimit, rules,
bayes and score on a real moatd. The table it prints (and writes to
build/test-output/redis-cost.txt) is the one in README's cluster section;
the test fails when a message costs more commands than the bound there."""
import collections
import os
import re
import shlex
import socket
import threading
import time


from conftest import wait_for
from test_spam import message, proxy_moat, rules_dir, transaction, write_rules  # noqa: F401

N = 20
BOUND = 68          # commands per message: the README's 63.5, with some room


def commandstats(redis):
    out = {}
    for line in redis.cli("INFO", "commandstats").splitlines():
        m = re.match(r"cmdstat_([a-z|]+):calls=(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def read_all(sock, out):
    while True:
        try:
            b = sock.recv(65536)
        except OSError:
            return
        if not b:
            return
        out.append(b)


def kind_of(args):
    """What a command is for: the family of the key it names."""
    cmd = args[0].upper()
    if cmd in ("EVAL", "EVALSHA") and len(args) > 3 and args[2] != "0":
        key = args[3]
    elif len(args) > 1:
        key = args[1]
    else:
        return "-"
    parts = key.split(":")
    return ":".join(parts[:2]) if key.startswith("moat:") else "(other)"


def test_redis_commands_per_message(moat_factory, sink, own_redis, rules_dir):
    # rules use no Redis: a small file of them keeps the start quick
    rules = write_rules(rules_dir, "body MOAT_CHEAP /\\bcheap watches\\b/i\n"
                                   "score MOAT_CHEAP 6.0\n")
    m = proxy_moat(moat_factory, sink, own_redis,
                   ("lists", "greylist", "ratelimit", "rules", "bayes", "score"),
                   extra='greylist { delay = 1s; }\nratelimit { sender = "100000/1h"; }\n'
                         'bayes { min_learned = 0; }\nnode { heartbeat = 1h; }\n'
                         'rules { files = "%s"; }\n' % rules)
    ip, frm, to = "198.51.100.9", "a@sender.test", ["bob@example.com"]
    # the triplet's first try is greylisted; its retry passes, as every later message
    assert transaction(m.port, ip, frm, to)[1][0][0] == 451
    time.sleep(1.1)
    assert transaction(m.port, ip, frm, to)[2][0] == 250
    sink.wait(1)
    wait_for(lambda: m.queue_files() == [], what="an empty queue")
    own_redis.cli("CONFIG", "RESETSTAT")
    mon = socket.create_connection(("127.0.0.1", own_redis.port), timeout=10)
    mon.sendall(b"MONITOR\r\n")
    got = []
    reader = threading.Thread(target=read_all, args=(mon, got))
    reader.start()
    try:
        wait_for(lambda: commandstats(own_redis).get("monitor") == 1, what="MONITOR")
        for i in range(N):
            raw = message(frm=frm, to=to[0], body="Message %d of the cost count.\n" % i)
            assert transaction(m.port, ip, frm, to, raw=raw)[2][0] == 250
        sink.wait(1 + N)
        wait_for(lambda: m.queue_files() == [], what="an empty queue")
        # the last deliveries' trace writes: until the count stops moving
        last = [None, time.time()]

        def settled():
            total = sum(v for k, v in commandstats(own_redis).items() if k != "info")
            if total != last[0]:
                last[:] = [total, time.time()]
            return time.time() - last[1] > 0.5
        wait_for(settled, timeout=10, what="Redis to go quiet")
        stats = commandstats(own_redis)
    finally:
        mon.shutdown(socket.SHUT_RDWR)
        reader.join(10)
        mon.close()
    lines = b"".join(got).decode("utf-8", "replace").split("\r\n")
    for k in ("info", "config|resetstat", "config", "monitor"):
        stats.pop(k, None)
    total = sum(stats.values())
    by_kind = collections.Counter()
    for line in lines:
        mm = re.match(r'^\+[\d.]+ \[\d+ [^\]]+\] (.*)$', line)
        if not mm:
            continue
        args = shlex.split(mm.group(1))
        if args and args[0].upper() not in ("INFO", "CONFIG", "MONITOR"):
            by_kind[(kind_of(args), args[0].upper())] += 1
    rows = ["| key family | command | per message |", "|---|---|---|"]
    for (kind, cmd), n in sorted(by_kind.items(), key=lambda kv: (kv[0][0], -kv[1])):
        rows.append("| `%s` | %s | %.2f |" % (kind, cmd, n / N))
    rows.append("| **all** | | **%.2f** |" % (total / N))
    table = "\n".join(rows)
    print(table)
    out = os.environ.get("MOAT_TEST_OUTPUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "redis-cost.txt"), "w") as f:
            f.write(table + "\n")
    # MONITOR saw what commandstats counted, and each plugin's state is there
    assert sum(by_kind.values()) == total, (by_kind, stats)
    kinds = {k for k, _ in by_kind}
    assert {"moat:grey", "moat:rl", "moat:bayes", "moat:list"} <= kinds, kinds
    assert 0 < total / N <= BOUND, table
