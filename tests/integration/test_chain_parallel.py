"""The chain runs at once the hooks that do not need each other's results
(struct filter_plugin's needs): with SPF and DKIM waiting on a slow DNS
server and a plugin that works for 0.6 s, the end of data waits for the
slowest, not the sum. The results are still taken in the config's order:
the headers read as they would one after another, and the first verdict
in config order wins even when a later plugin answered first."""
import itertools
import time

from conftest import RawSMTP, free_port
import dkim

from test_dkim import DKIMPY, read
from test_dmarc import BAD_IP, GOOD_IP, deliver, dkim_key, spf_record

SLOW_EXAMPLE, SLOW_SPF, SLOW_DKIM = 0.6, 0.2, 0.3   # seconds; DNS ones under unbound's first retry
_n = itertools.count()


def chain_moat(moat_factory, sink, plugin_dir, filters, spf=""):
    port = free_port()
    m = moat_factory(
        sink, listen='smtp = [ { address = "127.0.0.1:%d"; proxy_protocol = true; } ];' % port,
        extra='filters = [ %s ];\nfilter_dir = "%s";\nexample { tag = "parallel"; }\nspf { %s }\n'
              % (", ".join('"%s"' % f for f in filters), plugin_dir, spf))
    m.port = port
    return m.start()


def fresh_domain(dns):
    """A sender domain the resolver has not cached, with its SPF record and
    DKIM key, each answered only after a delay."""
    d = "par%d-%d.example.org" % (time.time_ns() % 10**9, next(_n))
    spf_record(dns, d)
    dkim_key(dns, d)
    dns.resolver.delay(d, SLOW_SPF)
    dns.resolver.delay("test._domainkey." + d, SLOW_DKIM)
    return d


def message(from_addr, subject, d=None):
    msg = ("From: %s\r\nTo: u@example.com\r\nSubject: %s\r\n"
           "Date: Tue, 01 Dec 2026 06:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nHello.\r\n"
           % (from_addr, subject)).encode()
    if d:
        msg = dkim.sign(msg, b"test", d.encode(), read(DKIMPY, "test.private")) + msg
    return msg


def test_end_of_data_waits_for_the_slowest_not_the_sum(moat_factory, sink, dns, plugin_dir):
    # example first: it finishes last, yet its results still come first
    m = chain_moat(moat_factory, sink, plugin_dir, ["example", "spf", "dkim", "dmarc"])
    d = fresh_domain(dns)
    msg = message("a@" + d, "SLOWME", d=d)
    t0 = time.monotonic()
    code, text = deliver(m, GOOD_IP, "a@" + d, msg)
    took = time.monotonic() - t0
    assert code == 250, text
    total = SLOW_EXAMPLE + SLOW_SPF + SLOW_DKIM
    assert SLOW_EXAMPLE <= took < 0.8 * total, "end of data took %.3f s (sum %.1f s)" % (took, total)
    (_, _, raw), = sink.wait(1)
    head = raw.split(b"\r\nReceived: ", 1)[0].decode()
    # the config's order: example, spf, dkim, dmarc, whoever finished first
    b = head.split("header.b=")[1][:8]
    assert head == ("Authentication-Results: mx.test.example;\r\n"
                    "\tx-example=pass header.from=example;\r\n"
                    "\tspf=pass smtp.mailfrom={d};\r\n"
                    "\tdkim=pass header.d={d} header.s=test header.b={b};\r\n"
                    "\tdmarc=none header.from={d}\r\n"
                    "X-Example: parallel\r\n"
                    "Received-SPF: pass (mx.test.example: domain of a@{d} designates {ip} as "
                    "permitted sender)\r\n"
                    "\tclient-ip={ip}; envelope-from=\"a@{d}\";\r\n"
                    "\thelo=client.example.net;\r\n"
                    "\treceiver=mx.test.example; identity=mailfrom;").format(d=d, b=b, ip=GOOD_IP), head
    log = m.log()
    # the symbols, too, in the config's order
    assert ("filter: verdict=continue score=0.30 symbols=[EXAMPLE_SEEN(0.50) SPF_PASS(-0.10) "
            "DKIM_VALID(-0.10)]") in log, log[-2000:]


def test_first_verdict_in_config_order_wins(moat_factory, sink, dns, plugin_dir):
    """spf (first) refuses after its slow DNS answer; example (second)
    wants the message held and answers at once: the reply is spf's 550 and
    nothing is quarantined."""
    m = chain_moat(moat_factory, sink, plugin_dir, ["spf", "example"], spf='fail = "reject";')
    d = fresh_domain(dns)
    msg = message("a@" + d, "HOLDME")
    code, text = deliver(m, BAD_IP, "a@" + d, msg)
    assert code == 550 and "SPF" in text.upper(), text
    log = m.log()
    assert "by=spf" in log and "by=example" not in log, log[-2000:]
    assert "Quarantine is empty" in m.ctl("quarantine", "list").stdout
    assert m.queue_files() == [] and sink.count() == 0
