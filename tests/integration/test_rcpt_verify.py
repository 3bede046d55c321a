"""Recipient verification for relay domains (verify = "static" | "callout"):
unknown recipients refused at RCPT with 550 5.1.1, so the gateway never
takes mail its next hop would refuse and never bounces it (backscatter);
the callout's answers cached in Redis; a next hop that is down or answers
4xx means 451, never 550."""
import json
import os
import signal

from conftest import RawSMTP, free_port, wait_for

MSG = b"From: a@sender.example\r\nTo: x\r\nSubject: verify\r\n\r\nhello\r\n.\r\n"


def session(port, rcpts, data=True, sender="a@sender.example"):
    """One transaction: the replies to each RCPT and to DATA's end (or None)."""
    c = RawSMTP(port)
    assert c.cmd("EHLO client.test")[0] == 250
    assert c.cmd("MAIL FROM:<%s>" % sender)[0] == 250
    got = [c.cmd("RCPT TO:<%s>" % r) for r in rcpts]
    final = None
    if data and any(code == 250 for code, _ in got):
        assert c.cmd("DATA")[0] == 354
        c.send(MSG)
        final = c.reply()
    c.cmd("QUIT")
    c.close()
    return got, final


def no_bounce(m, sink, n):
    """The queue is empty and the sink holds only the n messages sent."""
    wait_for(lambda: not m.queue_files(), what="an empty queue")
    assert sink.count() == n
    assert "non-delivery notification" not in m.log()


def trace_events(redis, addr):
    ids = redis.cli("ZRANGE", "moat:trace:i:to:" + addr, 0, -1).split()
    out = []
    for i in ids:
        out += [json.loads(x) for x in redis.cli("LRANGE", "moat:trace:m:" + i, 0, -1).splitlines()
                if x.startswith("{")]
    return out


def test_static_list_refuses_unknown_recipients_at_rcpt(moat_factory, sink, redis):
    dom = ('corp.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; verify = "static";\n'
           '  verify_addresses = [ "alice@corp.example", "Bob@Corp.Example" ]; }' % sink.port)
    m = moat_factory(sink, domains=dom,
                     extra='redis { address = "%s"; }' % redis.address).start()
    unknown = ["nosuch%d@corp.example" % i for i in range(5)]
    got, final = session(m.port, ["alice@corp.example"] + unknown + ["bob@corp.example"])
    assert got[0][0] == 250 and got[-1][0] == 250
    for code, text in got[1:-1]:
        assert code == 550 and "5.1.1" in text, (code, text)
    assert final[0] == 250
    (_, to, _), = sink.wait(1)
    assert sorted(to) == ["alice@corp.example", "bob@corp.example"]  # 0 unknown accepted
    no_bounce(m, sink, 1)                                              # 0 bounces
    ev = wait_for(lambda: trace_events(redis, "nosuch0@corp.example"), what="the trace")
    assert any(e.get("event") == "rejected" and e.get("reason") == "unknown_user" for e in ev), ev


def test_static_file_is_read_again_on_sighup(moat_factory, sink, tmp_path):
    f = tmp_path / "valid.txt"
    f.write_text("# the company's users\nalice@corp.example\n")
    os.chmod(tmp_path, 0o755)
    dom = ('corp.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; verify = "static";\n'
           '  verify_file = "%s"; }' % (sink.port, f))
    m = moat_factory(sink, domains=dom).start()
    got, _ = session(m.port, ["carol@corp.example", "alice@corp.example"], data=False)
    assert got[0][0] == 550 and got[1][0] == 250
    f.write_text("alice@corp.example\ncarol@corp.example  # new this morning\n")
    old = m.role_pid("smtp")
    m.proc.send_signal(signal.SIGHUP)
    m.wait_takeover(old)
    got, final = session(m.port, ["carol@corp.example"])
    assert got[0][0] == 250 and final[0] == 250
    (_, to, _), = sink.wait(1)
    assert to == ["carol@corp.example"]


def test_static_verify_config_errors_name_file_line_and_key(moat_factory, sink, tmp_path):
    from conftest import MOATD
    import subprocess
    dom = ('corp.example { delivery = "relay"; relay_to = "127.0.0.1:%d";\n'
           '  verify = "static"; verify_file = "%s/missing"; }\n'
           'other.example { delivery = "relay"; verify = "callout"; }' % (sink.port, tmp_path))
    m = moat_factory(sink, domains=dom)
    r = subprocess.run([MOATD, "-t", "-c", m.conf], capture_output=True, text=True)
    assert r.returncode != 0
    assert "domains.corp.example.verify_file: %s/missing: No such file" % tmp_path in r.stderr
    assert "domains.other.example.verify: \"callout\" needs relay_to" in r.stderr


def callout_moat(moat_factory, sink, redis, relay_port, smtp=""):
    # greylist (off) is there for its RCPT hook: the chain takes the
    # session over from the callout
    dom = ('corp.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; verify = "callout"; }'
           % relay_port)
    return moat_factory(sink, domains=dom, smtp="callout_timeout = 3s;" + smtp,
                        extra='redis { address = "%s"; timeout = 500ms; }\n'
                              'filters = [ "greylist" ];\ngreylist { enabled = false; }\n'
                              % redis.address).start()


def test_callout_asks_the_next_hop_once_then_the_cache(moat_factory, sink, redis):
    sink.handler.perm_rcpts.add("ghost@corp.example")
    m = callout_moat(moat_factory, sink, redis, sink.port)
    got, _ = session(m.port, ["ghost@corp.example", "alice@corp.example"], data=False)
    assert got[0][0] == 550 and "5.1.1" in got[0][1], got
    assert got[1][0] == 250, got
    assert sorted(sink.handler.rcpt_log) == ["alice@corp.example", "ghost@corp.example"]
    # the second attempt is answered from the cache: the next hop sees no RCPT
    got, final = session(m.port, ["ghost@corp.example", "alice@corp.example"])
    assert got[0][0] == 550 and got[1][0] == 250 and final[0] == 250
    (_, to, _), = sink.wait(1)
    assert to == ["alice@corp.example"]
    # one callout RCPT each, then alice's delivery
    assert sink.handler.rcpt_log.count("ghost@corp.example") == 1
    assert sink.handler.rcpt_log.count("alice@corp.example") == 2
    assert redis.cli("TTL", "moat:callout:ghost@corp.example") not in ("", "-2")
    no_bounce(m, sink, 1)


def redis_calls(redis, cmd):
    """How often Redis ran cmd since its stats were reset."""
    for line in redis.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_%s:calls=" % cmd):
            return int(line.split("=", 1)[1].split(",")[0])
    return 0


def test_callout_cached_answers_are_kept_in_memory_too(moat_factory, sink, own_redis):
    # the relay bench's load: one recipient RCPT after RCPT. Once Redis
    # holds the answer the role keeps a copy: no Redis round trip per RCPT
    sink.handler.perm_rcpts.add("ghost@corp.example")
    m = callout_moat(moat_factory, sink, own_redis, sink.port)
    got, _ = session(m.port, ["alice@corp.example", "ghost@corp.example"], data=False)
    assert got[0][0] == 250 and got[1][0] == 550, got
    own_redis.cli("CONFIG", "RESETSTAT")
    for _ in range(5):
        got, _ = session(m.port, ["Alice@corp.example", "ghost@corp.example"], data=False)
        assert got[0][0] == 250 and got[1][0] == 550 and "5.1.1" in got[1][1], got
    assert redis_calls(own_redis, "get") == 0
    assert sink.handler.rcpt_log.count("alice@corp.example") == 1
    assert sink.handler.rcpt_log.count("ghost@corp.example") == 1


def test_callout_copy_in_memory_never_outlives_the_redis_entry(moat_factory, sink, redis):
    m = callout_moat(moat_factory, sink, redis, sink.port, smtp="callout_positive_ttl = 1s;")
    assert session(m.port, ["alice@corp.example"], data=False)[0][0][0] == 250
    wait_for(lambda: redis.cli("EXISTS", "moat:callout:alice@corp.example") == "0",
             what="the cached answer to expire")
    assert session(m.port, ["alice@corp.example"], data=False)[0][0][0] == 250
    assert sink.handler.rcpt_log.count("alice@corp.example") == 2     # asked anew


def test_callout_next_hop_down_or_4xx_is_451_never_550(moat_factory, sink, redis):
    dead = free_port()                  # nothing listens there
    m = callout_moat(moat_factory, sink, redis, dead)
    got, _ = session(m.port, ["alice@corp.example"], data=False)
    assert got[0][0] == 451 and "4.4." in got[0][1], got
    # a next hop that answers 450: 451 too, and not cached (asked again)
    sink.handler.temp_rcpts.add("bob@corp.example")
    m2 = callout_moat(moat_factory, sink, redis, sink.port)
    for _ in range(2):
        got, _ = session(m2.port, ["bob@corp.example"], data=False)
        assert got[0][0] == 451 and "4.4." in got[0][1], got
    assert sink.handler.rcpt_log.count("bob@corp.example") == 2
    assert sink.count() == 0


def test_callout_of_an_8bit_address_asks_with_smtputf8(moat_factory, sink, redis):
    m = callout_moat(moat_factory, sink, redis, sink.port)
    c = RawSMTP(m.port)
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<a@sender.example> SMTPUTF8")[0] == 250
    code, text = c.send("RCPT TO:<jösé@corp.example>\r\n".encode()) or c.reply()
    assert code == 250, (code, text)
    assert "jösé@corp.example" in sink.handler.rcpt_log
    c.close()
