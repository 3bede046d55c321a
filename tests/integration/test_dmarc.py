"""DMARC through the gateway, end to end: spf and dkim run for real (SPF
records and DKIM keys served by the test DNS server, signatures made by
dkimpy, the client address given by PROXY), dmarc reads their results, and
the published policy decides the reply. Cases follow the evaluation and
policy-discovery vectors of ../shared/testdata/dmarc/dmarc-vectors.yml
(the RFC 7489 ones), plus overrides, pct and the aggregate report data."""
import os

import dkim
import pytest
import yaml

import spf_suite
from conftest import ROOT, RawSMTP, free_port
from test_dkim import DKIMPY, key_record, publish, read

VECTORS = os.path.join(ROOT, "..", "shared", "testdata", "dmarc", "dmarc-vectors.yml")
GOOD_IP, BAD_IP = "192.0.2.10", "198.51.100.66"


def dmarc_moat(moat_factory, sink, dmarc="", domain_extra=""):
    port = free_port()
    m = moat_factory(
        sink, listen='smtp = [ { address = "127.0.0.1:%d"; proxy_protocol = true; } ];' % port,
        domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; %s }' % (
            sink.port, domain_extra),
        extra='filters = [ "spf", "dkim", "dmarc" ];\nspf { fail = "continue"; }\n'
              'dmarc { %s }\n' % dmarc)
    m.port = port
    return m.start()


def spf_record(dns, domain):
    publish(dns, domain, "v=spf1 ip4:%s -all" % GOOD_IP)


def dkim_key(dns, domain):
    publish(dns, "test._domainkey." + domain, key_record(os.path.join(DKIMPY, "test.txt")))


def message(from_addr, d=None, broken=False):
    msg = ("From: %s\r\nTo: u@example.com\r\nSubject: dmarc\r\n"
           "Date: Tue, 01 Dec 2026 06:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nHello.\r\n"
           % from_addr).encode()
    if d:
        sig = dkim.sign(msg, b"test", d.encode(), read(DKIMPY, "test.private"))
        msg = sig + msg
        if broken:
            msg += b"tampered\r\n"
    return msg


def deliver(m, ip, mail_from, msg):
    """Returns the final reply (code, text)."""
    c = RawSMTP(m.port, greeting=False)
    c.send(spf_suite.proxy_line(ip))
    assert c.reply()[0] == 220
    c.cmd("EHLO client.example.net")
    assert c.cmd("MAIL FROM:<%s>" % mail_from)[0] == 250
    assert c.cmd("RCPT TO:<u@example.com>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(msg + b".\r\n")
    r = c.reply()
    c.close()
    return r


def authres(raw):
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    return " ".join(head.split("\r\n\tdmarc=", 1)[1].split()) if "\tdmarc=" in head else head


def load_vectors():
    with open(VECTORS) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("vec", load_vectors()["evaluation"], ids=lambda v: v["name"])
def test_evaluation_vectors(moat_factory, sink, dns, vec):
    """The mail-auth alignment vectors with real SPF and DKIM results."""
    for name, rec in vec["dns"].items():
        publish(dns, name, rec)
    mf = vec["mail_from_domain"]
    spf_record(dns, mf)
    d = vec["dkim"]["d"]
    dkim_key(dns, d)
    m = dmarc_moat(moat_factory, sink)
    ip = GOOD_IP if vec["spf"] == "pass" else BAD_IP
    msg = message("hello@example.org", d=d, broken=vec["dkim"]["result"] != "pass")
    code, text = deliver(m, ip, "bounce@" + mf, msg)
    aligned = vec["expect"]["dkim"] == "pass" or vec["expect"]["spf"] == "pass"
    if aligned:
        assert code == 250, text
        raw = sink.wait(1)[0][2]
        assert "dmarc=pass (p=reject dis=none) header.from=example.org" in raw.decode(), raw[:900]
    else:                       # p=reject applies
        assert code == 550 and "DMARC policy of example.org: reject" in text, text
        assert sink.count() == 0
        assert "dmarc=fail (p=reject dis=reject) header.from=example.org" in m.log()


def test_policy_discovery(moat_factory, sink, dns):
    """The author domain's own record gives p; a subdomain with a record only
    at its organizational domain gets sp; no record anywhere: dmarc=none."""
    publish(dns, "_dmarc.example.org", "v=DMARC1; p=reject; sp=quarantine")
    m = dmarc_moat(moat_factory, sink)
    code, text = deliver(m, BAD_IP, "x@example.org", message("hello@example.org"))
    assert code == 550, text
    code, text = deliver(m, BAD_IP, "x@sub.example.org", message("hello@sub.example.org"))
    assert code == 250                          # quarantined: the client sees 250
    assert sink.count() == 0
    ids = [w for w in m.ctl("quarantine", "list").stdout.split() if len(w) == 20]
    assert len(ids) == 1
    shown = m.ctl("quarantine", "show", ids[0]).stdout
    assert "DMARC policy of sub.example.org: quarantine" in shown, shown
    code, text = deliver(m, BAD_IP, "x@nothing.example.net", message("hello@nothing.example.net"))
    assert code == 250
    raw = sink.wait(1)[0][2]
    assert "dmarc=none header.from=nothing.example.net" in raw.decode()


def test_policy_none_and_overrides(moat_factory, sink, dns):
    """p=none is only reported; an admin can soften reject to quarantine
    globally and to tag for one domain's recipients."""
    publish(dns, "_dmarc.monitor.example.org", "v=DMARC1; p=none")
    publish(dns, "_dmarc.strict.example.org", "v=DMARC1; p=reject")
    m = dmarc_moat(moat_factory, sink, dmarc='reject = "quarantine";',
                   domain_extra='dmarc { reject = "tag"; }')
    code, _ = deliver(m, BAD_IP, "x@monitor.example.org", message("a@monitor.example.org"))
    assert code == 250
    raw = sink.wait(1)[0][2].decode()
    assert "dmarc=fail (p=none dis=none) header.from=monitor.example.org" in raw
    # example.com (the recipient domain) has its override: tagged, delivered
    code, _ = deliver(m, BAD_IP, "x@strict.example.org", message("a@strict.example.org"))
    assert code == 250
    raw = sink.wait(2)[1][2].decode()
    assert "dmarc=fail (p=reject dis=reject) header.from=strict.example.org" in raw
    assert "DMARC_REJECT" in m.log()


def test_pct_zero_applies_the_milder_policy(moat_factory, sink, dns):
    publish(dns, "_dmarc.sample.example.org", "v=DMARC1; p=reject; pct=0")
    m = dmarc_moat(moat_factory, sink)
    code, _ = deliver(m, BAD_IP, "x@sample.example.org", message("a@sample.example.org"))
    assert code == 250              # pct=0: quarantine instead of reject
    assert sink.count() == 0
    assert "dmarc=fail (p=reject dis=quarantine)" in m.log()


def test_aggregate_report_data_is_recorded(moat_factory, sink, dns):
    publish(dns, "_dmarc.example.org", "v=DMARC1; p=none; rua=mailto:agg@example.org")
    spf_record(dns, "example.org")
    dkim_key(dns, "example.org")
    m = dmarc_moat(moat_factory, sink)
    assert deliver(m, GOOD_IP, "b@example.org", message("a@example.org", d="example.org"))[0] == 250
    assert deliver(m, BAD_IP, "b@example.org", message("a@example.org"))[0] == 250
    path = os.path.join(m.state, "dmarc", "example.org.tsv")
    lines = [ln.split("\t") for ln in open(path).read().splitlines()]
    assert len(lines) == 2
    ok, bad = lines
    assert ok[1:9] == [GOOD_IP, "example.org", "example.org", "pass", "example.org",
                       "dkim_aligned", "spf_aligned", "none"], ok
    assert bad[1:9] == [BAD_IP, "example.org", "example.org", "fail", "-",
                        "dkim_unaligned", "spf_unaligned", "none"], bad
    assert ok[10:] == ["p=none", "sp=none", "pct=100", "adkim=r", "aspf=r", "mailto:agg@example.org"]


def test_multiple_authors_are_a_permerror(moat_factory, sink, dns):
    publish(dns, "_dmarc.example.org", "v=DMARC1; p=reject")
    m = dmarc_moat(moat_factory, sink)
    code, _ = deliver(m, BAD_IP, "x@example.org", message("a@example.org, b@other.example.net"))
    assert code == 250
    assert "dmarc=permerror (more than one author)" in sink.wait(1)[0][2].decode()
