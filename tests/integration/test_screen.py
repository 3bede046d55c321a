"""The connect-time screen of the smtp listeners (postscreen's tests,
gateway/smtp_screen.c): the pregreet test under smtp.greet_pause and its
greet_action, and the weighted DNSBL test (smtp.dnsbl_sites with weights
and answer filters, smtp.dnsbl_threshold, dnsbl_action), its Redis cache,
and the clients that skip it. Clients come through a PROXY listener so
that they can have the public addresses a blocklist names; the lists are
the test DNS server's zones."""
import time

from conftest import RawSMTP, free_port, wait_for
from spf_suite import proxy_line


def screen_moat(moat_factory, sink, redis=None, smtp="", listen_extra=""):
    port = free_port()
    extra = ""
    if redis is not None:
        extra = 'redis { address = "%s"; timeout = 500ms; }\n' % redis.address
    m = moat_factory(sink, extra=extra, smtp=smtp,
                     listen='smtp = [ { address = "127.0.0.1:%d"; proxy_protocol = true; %s } ];'
                     % (port, listen_extra))
    m.port = port
    return m.start()


def connect(m, ip):
    c = RawSMTP(m.port, greeting=False)
    c.send(proxy_line(ip))
    return c


def rcpt(c, to="b@example.com"):
    assert c.cmd("EHLO mail.sender.test")[0] == 250
    assert c.cmd("MAIL FROM:<a@sender.test>")[0] == 250
    return c.cmd("RCPT TO:<%s>" % to)


def bl_queries(dns, ip_rev):
    return [q for q in dns.resolver.queries if q[0].startswith(ip_rev + ".")]


# ------------------------------------------------------------------ pregreet
def test_pregreet_drop_and_enforce(sink, moat_factory):
    m = screen_moat(moat_factory, sink, smtp='greet_pause = 300ms; greet_action = "drop";')
    c = connect(m, "192.0.2.50")
    c.send(b"EHLO impatient.test\r\n")
    code, text = c.reply()
    assert code == 521 and "5.7.1" in text and "before the greeting" in text, text
    assert c.closed()
    patient = connect(m, "192.0.2.51")
    assert patient.reply()[0] == 220
    assert rcpt(patient)[0] == 250
    assert "reject: early talker [192.0.2.50] (greet_action=drop)" in m.log()
    m.stop()

    # enforce: it may talk on, and every RCPT is refused and logged
    m = screen_moat(moat_factory, sink, smtp='greet_pause = 300ms; greet_action = "enforce";')
    c = connect(m, "192.0.2.52")
    c.send(b"EHLO impatient.test\r\n")
    assert c.reply()[0] == 220
    assert c.reply()[0] == 250          # its EHLO, answered after the greeting
    assert c.cmd("MAIL FROM:<a@sender.test>")[0] == 250
    code, text = c.cmd("RCPT TO:<b@example.com>")
    assert code == 550 and "5.7.1" in text and "before the greeting" in text, text
    log = m.log()
    assert "pregreet: early talker [192.0.2.52] (greet_action=enforce)" in log
    assert "NOQUEUE: reject: RCPT from [192.0.2.52]: 550 5.7.1" in log and "to=<b@example.com>" in log
    patient = connect(m, "192.0.2.53")
    assert patient.reply()[0] == 220
    assert rcpt(patient)[0] == 250


def test_pregreet_skipped_for_mynetworks(sink, moat_factory):
    m = screen_moat(moat_factory, sink, smtp='greet_pause = 2s; mynetworks = "192.0.2.60";')
    c = connect(m, "192.0.2.60")
    t0 = time.monotonic()
    assert c.reply()[0] == 220
    assert time.monotonic() - t0 < 1.5      # no pause for the company's own server


# ------------------------------------------------------------------ pipelining
def test_pipelining_before_the_ehlo_reply(sink, moat_factory):
    m = screen_moat(moat_factory, sink, smtp="pipelining_test = true;")
    # a whole transaction fired before the EHLO reply: let on, refused at RCPT
    c = connect(m, "192.0.2.30")
    assert c.reply()[0] == 220
    rest = b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.com>\r\n"
    c.send(b"EHLO ratware.test\r\n" + rest)
    assert c.reply()[0] == 250 and c.reply()[0] == 250
    code, text = c.reply()
    assert code == 550 and "sent commands before the EHLO reply" in text, text
    assert ("screen: pipelining [192.0.2.30]: %d bytes before the HELO/EHLO reply "
            "(pipelining_action=enforce)" % len(rest)) in m.log()
    assert "to=<b@example.com>" in m.log()
    # one that waits for the EHLO reply may pipeline the rest (RFC 2920)
    c = connect(m, "192.0.2.31")
    assert c.reply()[0] == 220
    assert c.cmd("EHLO polite.test")[0] == 250
    c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
    c.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
    assert c.reply()[0] == 250
    sink.wait(1)
    m.stop()

    m = screen_moat(moat_factory, sink,
                    smtp='pipelining_test = true; pipelining_action = "drop";')
    c = connect(m, "192.0.2.32")
    assert c.reply()[0] == 220
    c.send(b"HELO ratware.test\r\nMAIL FROM:<a@sender.test>\r\n")
    code, text = c.reply()
    assert code == 521 and "5.7.1" in text, text
    assert c.closed()


# ------------------------------------------------------------------ DNSBL
SITES = ('dnsbl_sites = "zen.bl.example*3, list.bl.example=127.0.0.[2..4]*2, '
         'white.bl.example*-5";')


def test_weighted_dnsbl_refuses_over_threshold_serves_under(sink, moat_factory, dns, redis):
    dns.resolver.add("""
70.2.0.192.zen.bl.example. 0 IN A 127.0.0.2
70.2.0.192.list.bl.example. 0 IN A 127.0.0.3
71.2.0.192.zen.bl.example. 0 IN A 127.0.0.2
71.2.0.192.list.bl.example. 0 IN A 127.0.0.10
72.2.0.192.list.bl.example. 0 IN A 127.0.0.4
73.2.0.192.zen.bl.example. 0 IN A 127.0.0.2
73.2.0.192.list.bl.example. 0 IN A 127.0.0.2
73.2.0.192.white.bl.example. 0 IN A 127.0.0.5
""")
    m = screen_moat(moat_factory, sink, redis, smtp=SITES + " dnsbl_threshold = 5;")
    # on both weighted lists: 3 + 2 = 5, refused before any command
    c = connect(m, "192.0.2.70")
    code, text = c.reply()
    assert code == 554 and "5.7.1" in text, text
    assert "zen.bl.example" in text and "list.bl.example" in text, text
    assert c.closed()
    # list's answer 127.0.0.10 is outside its filter: 3, served
    c = connect(m, "192.0.2.71")
    assert c.reply()[0] == 220 and rcpt(c)[0] == 250
    # on one list only: 2, served
    c = connect(m, "192.0.2.72")
    assert c.reply()[0] == 220 and rcpt(c)[0] == 250
    # on both, and on an allow list with a negative weight: 0, served
    c = connect(m, "192.0.2.73")
    assert c.reply()[0] == 220 and rcpt(c)[0] == 250
    log = m.log()
    assert "reject: dnsbl [192.0.2.70] score 5 >= 5 (dnsbl_action=reject)" in log
    assert "dnsbl: [192.0.2.71] score 3 (zen.bl.example*3)" in log


def test_dnsbl_result_cached_in_redis(sink, moat_factory, dns, redis):
    dns.resolver.add("""
80.2.0.192.zen.bl.example. 0 IN A 127.0.0.2
80.2.0.192.list.bl.example. 0 IN A 127.0.0.2
""")
    m = screen_moat(moat_factory, sink, redis, smtp=SITES + " dnsbl_threshold = 5; dnsbl_ttl = 1h;")
    for ip, first in (("192.0.2.80", 554), ("192.0.2.81", 220)):
        c = connect(m, ip)
        assert c.reply()[0] == first
        c.close()
    zones = {"zen.bl.example.", "list.bl.example.", "white.bl.example."}
    assert {q[0].split(".", 4)[4] for q in bl_queries(dns, "80.2.0.192")} == zones
    assert {q[0].split(".", 4)[4] for q in bl_queries(dns, "81.2.0.192")} == zones
    assert redis.cli("GET", "moat:screen:192.0.2.80").startswith("5 ")
    assert int(redis.cli("TTL", "moat:screen:192.0.2.81")) > 3000
    # again: the answers come from the cache, not the DNS
    before = len(dns.resolver.queries)
    c = connect(m, "192.0.2.80")
    assert c.reply()[0] == 554
    c = connect(m, "192.0.2.81")
    assert c.reply()[0] == 220 and rcpt(c)[0] == 250
    assert len(dns.resolver.queries) == before
    assert "dnsbl: [192.0.2.80] score 5 (zen.bl.example*3 list.bl.example*2), cached" in m.log()


def test_dnsbl_outage_serves_and_is_not_cached(sink, moat_factory, dns, redis):
    dns.resolver.add("85.2.0.192.list.bl.example. 0 IN A 127.0.0.2\n")
    dns.resolver.fail("85.2.0.192.zen.bl.example")
    m = screen_moat(moat_factory, sink, redis, smtp=SITES + " dnsbl_threshold = 2;")
    c = connect(m, "192.0.2.85")
    code, _ = c.reply()
    assert code == 554              # list alone is over the threshold
    assert redis.cli("EXISTS", "moat:screen:192.0.2.85") == "0"
    dns.resolver.clear()
    # asked again (a cached 2 would refuse it), now not listed anywhere
    c = connect(m, "192.0.2.85")
    assert c.reply()[0] == 220 and rcpt(c)[0] == 250


def test_dnsbl_enforce_names_the_recipient_and_permit_skips(sink, moat_factory, dns, redis):
    dns.resolver.add("""
90.2.0.192.zen.bl.example. 0 IN A 127.0.0.2
91.2.0.192.zen.bl.example. 0 IN A 127.0.0.2
""")
    m = screen_moat(moat_factory, sink, redis,
                    smtp=SITES + ' dnsbl_threshold = 3; dnsbl_action = "enforce";'
                    ' screen_permit = "192.0.2.91";')
    c = connect(m, "192.0.2.90")
    assert c.reply()[0] == 220
    code, text = rcpt(c, "victim@example.com")
    assert code == 550 and "5.7.1" in text and "blocked using zen.bl.example" in text, text
    assert ("NOQUEUE: reject: RCPT from [192.0.2.90]: 550 5.7.1 Service unavailable; "
            "client [192.0.2.90] blocked using zen.bl.example; from=<a@sender.test> "
            "to=<victim@example.com>") in m.log()
    # listed, but permitted: not even looked up
    c = connect(m, "192.0.2.91")
    assert c.reply()[0] == 220 and rcpt(c)[0] == 250
    assert bl_queries(dns, "91.2.0.192") == []


def test_dnsbl_sites_config_errors(sink, moat_factory):
    import subprocess
    from conftest import MOATD
    m = moat_factory(sink, smtp='dnsbl_sites = "zen.bl.example*x, list.bl.example=127.0.0.[4..2]";')
    r = subprocess.run([MOATD, "-t", "-c", m.conf], capture_output=True, text=True)
    assert r.returncode != 0
    assert "smtp.dnsbl_sites: 'zen.bl.example*x' has a bad weight" in r.stderr, r.stderr
    assert "smtp.dnsbl_sites: 'list.bl.example=127.0.0.[4..2]' has a bad answer filter" in r.stderr
